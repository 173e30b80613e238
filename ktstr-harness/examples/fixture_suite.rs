//! A tiny user-like ktstr test suite: what a scheduler author writes. The integration tests
//! run this binary to check the libtest/nextest protocol (it never boots a VM there).

use ktstr::prelude::*;

declare_scheduler!(SCX_DEMO {
    name: "scx-demo",
    binary: "scx_demo",
    topology: (1, 2, 4, 1),
    flags: {
        llc: ["--llc"],
        steal: ["--steal"] requires [llc],
        spread: ["--spread"] excludes [steal],
    },
    sched_args: ["--verbose"],
    sysctls: ["kernel.sched_x" = "1"],
    assert: Assert::NO_OVERRIDES.max_gap_ms(5000),
    constraints: { max_llcs: 4, requires_smt: false },
});

/// Two cgroups under EEVDF on the smallest topology.
#[ktstr_test(llcs = 1, cores = 2, duration_s = 3, max_spread_pct = 20.0)]
fn two_cgroups(ctx: &Ctx) -> Result<AssertResult> {
    ensure!(ctx.workers_per_cgroup > 0, "no workers");
    Ok(AssertResult::pass())
}

/// Needs the llc flag; typed flag const.
#[ktstr_test(scheduler = SCX_DEMO, required_flags = [SCX_DEMO::LLC], excluded_flags = ["spread"])]
fn llc_steal(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

/// Runs on the host only.
#[ktstr_test(host_only = true)]
fn host_probe(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

/// A demo: always listed as ignored.
#[ktstr_test(scheduler = SCX_DEMO, max_llcs = 2)]
fn demo_showcase(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {
    ktstr_harness::main()
}
