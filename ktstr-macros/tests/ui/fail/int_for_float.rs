use ktstr::prelude::*;


#[ktstr_test(max_spread_pct = 20)]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
