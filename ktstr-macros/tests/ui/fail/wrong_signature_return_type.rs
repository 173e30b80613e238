use ktstr::prelude::*;

#[ktstr_test(llcs = 1)]
fn case(_ctx: &Ctx) -> Result<()> {
    Ok(())
}

fn main() {}
