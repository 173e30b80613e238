use ktstr::prelude::*;


#[ktstr_test(min_llcs = 4, max_llcs = 2)]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
