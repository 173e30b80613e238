//! Canned scenarios: complete test bodies (`fn(&Ctx) -> Result<AssertResult>`), each a
//! common scheduler situation judged with the context's thresholds.

use std::time::Duration;

use super::{
    execute_defs, execute_scenario, execute_steps, execute_steps_with, AffinityKind, Backdrop,
    CgroupDef, CpusetSpec, HoldSpec, Op, Step, Work,
};
use crate::assert::{Assert, AssertResult};
use crate::registry::Ctx;
use crate::workload::WorkType;

fn cpus(ctx: &Ctx) -> u32 {
    ctx.topo.cpus.len().max(1) as u32
}

fn halves() -> [CpusetSpec; 2] {
    [
        CpusetSpec::Disjoint { index: 0, of: 2 },
        CpusetSpec::Disjoint { index: 1, of: 2 },
    ]
}

/// Two cgroups of spinning workers, no cpusets, for the full duration: baseline fairness
/// and starvation.
pub fn steady(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    execute_defs(ctx, vec![CgroupDef::named("cg0"), CgroupDef::named("cg1")])
}

fn per_llc(ctx: &Ctx) -> Vec<CgroupDef> {
    (0..ctx.topo.llcs.len())
        .map(|i| CgroupDef::named(format!("llc{i}")).with_cpuset(CpusetSpec::Llc(i)))
        .collect()
}

/// One cgroup per LLC with that LLC as its cpuset.
pub fn steady_llc(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    execute_steps(ctx, vec![Step::with_factory(per_llc, HoldSpec::FULL)])
}

/// Several times more workers than CPUs (two cgroups, 2× CPUs each: 4× in total).
pub fn oversubscribed(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    let n = 2 * cpus(ctx);
    execute_defs(
        ctx,
        vec![
            CgroupDef::named("cg0").workers(n),
            CgroupDef::named("cg1").workers(n),
        ],
    )
}

/// Start unconstrained, then apply disjoint cpusets half-way.
pub fn cpuset_apply(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    let [a, b] = halves();
    execute_steps(
        ctx,
        vec![
            Step::with_defs(
                vec![CgroupDef::named("cg0"), CgroupDef::named("cg1")],
                HoldSpec::Frac(0.5),
            ),
            Step::new(
                vec![Op::set_cpuset("cg0", a), Op::set_cpuset("cg1", b)],
                HoldSpec::Frac(0.5),
            ),
        ],
    )
}

/// Start with disjoint cpusets, then clear them half-way.
pub fn cpuset_clear(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    let [a, b] = halves();
    execute_steps(
        ctx,
        vec![
            Step::with_defs(
                vec![
                    CgroupDef::named("cg0").with_cpuset(a),
                    CgroupDef::named("cg1").with_cpuset(b),
                ],
                HoldSpec::Frac(0.5),
            ),
            Step::new(
                vec![Op::clear_cpuset("cg0"), Op::clear_cpuset("cg1")],
                HoldSpec::Frac(0.5),
            ),
        ],
    )
}

/// Grow one cgroup's cpuset over its neighbour's, then shrink it back.
pub fn cpuset_resize(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    let range = |a, b| CpusetSpec::Range {
        start_frac: a,
        end_frac: b,
    };
    execute_steps(
        ctx,
        vec![
            Step::with_defs(
                vec![
                    CgroupDef::named("cg0").with_cpuset(range(0.0, 0.5)),
                    CgroupDef::named("cg1").with_cpuset(range(0.5, 1.0)),
                ],
                HoldSpec::Frac(0.34),
            ),
            Step::new(
                vec![Op::set_cpuset("cg0", range(0.0, 1.0))],
                HoldSpec::Frac(0.33),
            ),
            Step::new(
                vec![Op::set_cpuset("cg0", range(0.0, 0.5))],
                HoldSpec::Frac(0.33),
            ),
        ],
    )
}

/// Add a loaded cgroup half-way.
pub fn cgroup_add(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    execute_steps(
        ctx,
        vec![
            Step::with_defs(vec![CgroupDef::named("cg0")], HoldSpec::Frac(0.5)),
            Step::with_defs(vec![CgroupDef::named("cg1")], HoldSpec::Frac(0.5)),
        ],
    )
}

/// Remove loaded cgroups one after the other.
pub fn cgroup_remove(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    execute_steps(
        ctx,
        vec![
            Step::with_defs(
                vec![
                    CgroupDef::named("cg0"),
                    CgroupDef::named("cg1"),
                    CgroupDef::named("cg2"),
                ],
                HoldSpec::Frac(0.34),
            ),
            Step::new(vec![Op::remove_cgroup("cg2")], HoldSpec::Frac(0.33)),
            Step::new(vec![Op::remove_cgroup("cg1")], HoldSpec::Frac(0.33)),
        ],
    )
}

/// Re-randomise every worker's affinity several times during the run.
pub fn affinity_change(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    let interval = (ctx.duration / 4).max(Duration::from_millis(100));
    execute_steps(
        ctx,
        vec![
            Step::with_defs(
                vec![
                    CgroupDef::named("cg0").affinity(AffinityKind::RandomSubset),
                    CgroupDef::named("cg1").affinity(AffinityKind::RandomSubset),
                ],
                HoldSpec::Fixed(Duration::from_millis(1)),
            ),
            Step::new(
                vec![
                    Op::set_affinity("cg0", AffinityKind::RandomSubset),
                    Op::set_affinity("cg1", AffinityKind::RandomSubset),
                ],
                HoldSpec::Loop { interval },
            ),
        ],
    )
}

/// Every worker pinned to one CPU (one worker per CPU, round-robin).
pub fn affinity_pinned(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    execute_defs(
        ctx,
        vec![CgroupDef::named("cg0")
            .workers(cpus(ctx))
            .affinity(AffinityKind::SingleCpu)],
    )
}

/// Test cgroups plus as many host-level spinners as CPUs competing with them.
pub fn host_contention(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    let backdrop =
        Backdrop::new().with_op(Op::spawn_host(Work::new(WorkType::SpinWait, cpus(ctx))));
    execute_scenario(
        ctx,
        &backdrop,
        vec![Step::with_defs(
            vec![CgroupDef::named("cg0"), CgroupDef::named("cg1")],
            HoldSpec::FULL,
        )],
    )
}

/// Cgroups with different work types side by side: spin, yield, I/O, bursty. Judged for
/// starvation, gaps and isolation, not for the spread: which worker of a type shares its CPU
/// with a spinner and which runs beside a sleeper is placement, and with four kinds of
/// neighbour that alone spreads two peers' off-CPU time apart (measured under TCG with EEVDF on
/// 1n2l2c1t: two I/O workers at 35.9% and 83.6%, two yielders at 2.8% and 49.8%).
pub fn mixed_workloads(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    let no_spread = Assert::NO_OVERRIDES.max_spread_pct(100.0);
    execute_steps_with(
        ctx,
        vec![Step::with_defs(
            vec![
                CgroupDef::named("spin").work_type(WorkType::SpinWait),
                CgroupDef::named("yield").work_type(WorkType::YieldHeavy),
                CgroupDef::named("io").work_type(WorkType::IoSync),
                CgroupDef::named("bursty").work_type(WorkType::Bursty {
                    burst_ms: 50,
                    sleep_ms: 100,
                }),
            ],
            HoldSpec::FULL,
        )],
        Some(&no_spread),
    )
}

/// A nested hierarchy: two leaves under one parent, workers only in the leaves.
pub fn nested_steady(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    execute_defs(
        ctx,
        vec![
            CgroupDef::named("outer/a"),
            CgroupDef::named("outer/b"),
            CgroupDef::named("solo"),
        ],
    )
}

/// Tasks moved between nested cgroups and back.
pub fn nested_task_move(ctx: &Ctx) -> anyhow::Result<AssertResult> {
    execute_steps(
        ctx,
        vec![
            Step::with_defs(
                vec![
                    CgroupDef::named("outer/a"),
                    CgroupDef::named("outer/b").empty(),
                ],
                HoldSpec::Frac(0.34),
            ),
            Step::new(
                vec![Op::move_all_tasks("outer/a", "outer/b")],
                HoldSpec::Frac(0.33),
            ),
            Step::new(
                vec![Op::move_all_tasks("outer/b", "outer/a")],
                HoldSpec::Frac(0.33),
            ),
        ],
    )
}

/// Every canned scenario by name.
pub const ALL: &[(&str, crate::registry::TestFn)] = &[
    ("steady", steady),
    ("steady_llc", steady_llc),
    ("oversubscribed", oversubscribed),
    ("cpuset_apply", cpuset_apply),
    ("cpuset_clear", cpuset_clear),
    ("cpuset_resize", cpuset_resize),
    ("cgroup_add", cgroup_add),
    ("cgroup_remove", cgroup_remove),
    ("affinity_change", affinity_change),
    ("affinity_pinned", affinity_pinned),
    ("host_contention", host_contention),
    ("mixed_workloads", mixed_workloads),
    ("nested_steady", nested_steady),
    ("nested_task_move", nested_task_move),
];
