use ktstr::prelude::*;

declare_scheduler!(SCX_DEMO {
    name: "scx-demo",
    flags: { llc: ["--llc"], steal: ["--steal"] requires [llc] },
});

#[ktstr_test(required_flags = [SCX_DEMO::LLC])]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
