use ktstr::prelude::*;


#[ktstr_test(lcs = 2)]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
