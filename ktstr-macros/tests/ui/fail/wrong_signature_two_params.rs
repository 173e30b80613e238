use ktstr::prelude::*;

#[ktstr_test(llcs = 1)]
fn case(_ctx: &Ctx, _extra: u32) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
