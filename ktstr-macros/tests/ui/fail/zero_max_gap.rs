use ktstr::prelude::*;


#[ktstr_test(max_gap_ms = 0)]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
