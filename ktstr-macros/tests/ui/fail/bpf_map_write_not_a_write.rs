use ktstr::prelude::*;

const TRIGGER: u32 = 1;

#[ktstr_test(bpf_map_write = TRIGGER)]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
