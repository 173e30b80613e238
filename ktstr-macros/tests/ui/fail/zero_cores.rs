use ktstr::prelude::*;


#[ktstr_test(cores = 0)]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
