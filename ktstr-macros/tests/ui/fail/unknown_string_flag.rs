use ktstr::prelude::*;

declare_scheduler!(SCX_DEMO {
    name: "scx-demo",
    flags: { llc: ["--llc"], steal: ["--steal"] requires [llc] },
});

#[ktstr_test(scheduler = SCX_DEMO, required_flags = ["lcc"])]
fn case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {}
