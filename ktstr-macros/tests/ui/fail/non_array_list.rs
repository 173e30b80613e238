use ktstr::prelude::*;


#[ktstr_test(extra_sched_args = "--x")]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
