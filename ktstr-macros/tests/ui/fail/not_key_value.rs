use ktstr::prelude::*;


#[ktstr_test(llcs = 2, ignore)]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
