use ktstr::prelude::*;


#[ktstr_test(scheduler = "scx-demo")]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
