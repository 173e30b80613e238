use ktstr::prelude::*;

declare_scheduler!(SCX_DEMO {
    name: "scx-demo",
    binary: "scx_demo",
    topology: (1, 2, 4, 1),
    flags: {
        llc: ["--llc"],
        steal: ["--steal"] requires [llc],
        spread: ["--spread"] excludes [steal],
        "no-wake": ["--no-wake"],
    },
    sched_args: ["--verbose"],
    sysctls: ["kernel.sched_x" = "1"],
    kargs: ["nohz_full=1-3"],
    cgroup_parent: "/ktstr",
    config_file: "demo.json",
    kernels: ["6.12"],
    assert: Assert::NO_OVERRIDES.max_gap_ms(3000),
    constraints: { max_llcs: 8, requires_smt: false },
    watchdog_arg: "--timeout-ms",
});

#[ktstr_test(
    numa_nodes = 1, llcs = 2, cores = 4, threads = 2, memory_mib = 4096,
    scheduler = SCX_DEMO, extra_sched_args = ["--extra"], duration_s = 5,
    workers_per_cgroup = 4, watchdog_timeout_s = 8,
    required_flags = [SCX_DEMO::LLC, "steal"], excluded_flags = [SCX_DEMO::NO_WAKE],
    not_starved = true, isolation = false, fail_on_stall = true, max_gap_ms = 2500,
    max_local_dsq_depth = 40, sustained_samples = 3, max_p99_wake_latency_ns = 1000000,
    max_spread_pct = 20.0, max_throughput_cv = 0.5, min_work_rate = 1.5,
    max_imbalance_ratio = 3.0, max_fallback_rate = 10.0, max_keep_last_rate = 5.0,
    max_wake_latency_cv = 0.9, min_iteration_rate = 100.0, max_migration_ratio = 0.2,
    min_page_locality = 0.8, max_cross_node_migration_ratio = 0.1, max_slow_tier_ratio = 0.3,
    min_llcs = 1, max_llcs = 8, min_cpus = 2, max_cpus = 64, min_numa_nodes = 1,
    max_numa_nodes = 1, requires_smt = true, performance_mode = false, expect_err = false,
    ignore = false, cleanup_budget_ms = 500,
)]
fn everything(ctx: &Ctx) -> Result<AssertResult> {
    ensure!(ctx.workers_per_cgroup == 4);
    Ok(AssertResult::pass())
}

#[ktstr_test(scheduler = SCX_DEMO, expect_err = "SchedulerDied: stall detected")]
fn expects_a_stall(_: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

#[ktstr_test(host_only = true)]
fn on_host(_: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

const BENCH: Payload = Payload::binary("bench", "bench").output(OutputFormat::Json);
const LOAD: Payload = Payload::binary("load", "stress-ng");

#[ktstr_test(payload = BENCH, workloads = [LOAD], extra_include_files = ["bench.json"],
    work_types = ["SpinWait", "Bursty"])]
fn with_payloads(_: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

fn main() {
    let t = ktstr::registry::find_test("everything").unwrap();
    assert_eq!(t.scheduler.name, "scx-demo");
    assert_eq!(t.required_flags, ["llc", "steal"]);
    assert_eq!(t.excluded_flags, ["no-wake"]);
    assert_eq!(t.merged_assert().max_gap_ms, Some(2500));
    assert_eq!(SCX_DEMO::NO_WAKE.name, "no-wake");
    assert!(ktstr::registry::find_scheduler("scx-demo").is_some());
    assert!(ktstr::registry::find_test("on_host").unwrap().host_only);
    let p = ktstr::registry::find_test("with_payloads").unwrap();
    assert_eq!(p.payload.map(|p| p.name), Some("bench"));
    assert_eq!(p.workloads.iter().map(|p| p.name).collect::<Vec<_>>(), ["load"]);
    assert_eq!(p.extra_include_files, ["bench.json"]);
    assert_eq!(p.work_types, ["SpinWait", "Bursty"]);
}
