use ktstr::prelude::*;

const BENCH: Payload = Payload::binary("bench", "bench");

#[ktstr_test(payload = BENCH, workloads = [BENCH])]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
