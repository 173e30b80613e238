use ktstr::prelude::*;

#[ktstr_test(work_types = ["SpinWait", "SpinWiat"])]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
