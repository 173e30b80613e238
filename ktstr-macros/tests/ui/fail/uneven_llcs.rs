use ktstr::prelude::*;


#[ktstr_test(numa_nodes = 2, llcs = 3)]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
