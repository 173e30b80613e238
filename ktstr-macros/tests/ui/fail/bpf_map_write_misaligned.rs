use ktstr::prelude::*;

// A u32 write at a byte offset that is not a multiple of 4 is refused at compile time.
const TRIGGER: BpfMapWrite = BpfMapWrite::new(".bss", 2, 1);

#[ktstr_test(bpf_map_write = TRIGGER)]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
