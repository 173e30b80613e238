//! Negative suite: each case provokes a real failure (starvation, unfairness, an escape from
//! a cpuset, a stuck worker, constant migration, a crawling worker, uneven work rates,
//! irregular wake-ups, a worker that exits with an error or dies of a signal) and passes only if the assertions catch it with the right
//! diagnosis and no other: `expect_err = "Kind: text"` names the kind and
//! a piece of the evaluator's message, and the body turns "failed with another kind" or "did
//! not fail" into a pass, which then fails. A crash, a hang or a missing verdict never
//! satisfies it.

use std::sync::atomic::{AtomicBool, Ordering};

use ktstr::prelude::*;
use ktstr::scenario::{
    execute_defs, execute_scenario, AffinityKind, Backdrop, CgroupDef, CpusetSpec, HoldSpec, Op,
    SchedPolicy, Step, Work, WorkType,
};
use ktstr::workload::report::Recorder;
use ktstr::workload::WorkerReport;

/// Fails (so `expect_err` passes) only when `r` has a detail of `kind`.
fn expect_kind(r: AssertResult, kind: DetailKind) -> Result<AssertResult> {
    if r.has_kind(kind) {
        let first = r.details.iter().find(|d| d.kind == kind).unwrap();
        eprintln!("caught as expected: {:?}: {}", first.kind, first.message);
        Ok(AssertResult::fail(kind, first.message.clone()))
    } else {
        // A pass makes the expect_err case fail; keep what was measured (the sidecar's stats
        // and details) so the miss can be explained.
        eprintln!("expected a {kind:?} finding, got: {:?}", r.details);
        let mut miss = AssertResult::pass();
        miss.stats = r.stats;
        miss.details = r.details;
        miss.events = r.events;
        Ok(miss)
    }
}

/// Keeps the harness itself (PID 1) off CPU 0 while CPU 0 is monopolised.
fn pin_self_to(cpu: u32) {
    let _ = ktstr::workload::spawn::set_affinity(0, &[cpu]);
}

/// Runs the cgroup `def` for the full duration beside the `backdrop` load.
fn beside(ctx: &Ctx, backdrop: &Backdrop, def: CgroupDef) -> Result<AssertResult> {
    execute_scenario(
        ctx,
        backdrop,
        vec![Step::with_defs(vec![def], HoldSpec::FULL)],
    )
}

/// A SCHED_FIFO spinner (priority 50) pinned on CPU 0 with RT throttling disabled starves a
/// lower-priority SCHED_FIFO worker (priority 1) pinned on the same CPU. (A SCHED_OTHER victim
/// is not starved on kernels since 6.12: the fair deadline server reserves it 50 ms/s, and
/// only a SCHED_DEBUG kernel can switch that off.)
#[ktstr_test(llcs = 1, cores = 2, expect_err = "Starved: made no progress")]
fn starved_by_rt_spinner(ctx: &Ctx) -> Result<AssertResult> {
    std::fs::write("/proc/sys/kernel/sched_rt_runtime_us", "-1")?;
    pin_self_to(1);
    let backdrop = Backdrop::new().with_op(Op::spawn_host(
        Work::new(WorkType::SpinWait, 1)
            .sched_policy(SchedPolicy::Fifo(50))
            .affinity(AffinityKind::Exact(vec![0])),
    ));
    let r = beside(
        ctx,
        &backdrop,
        CgroupDef::named("victim")
            .workers(1)
            .sched_policy(SchedPolicy::Fifo(1))
            .affinity(AffinityKind::Exact(vec![0])),
    );
    let _ = std::fs::write("/proc/sys/kernel/sched_rt_runtime_us", "950000");
    expect_kind(r?, DetailKind::Starved)
}

/// A SCHED_IDLE and a SCHED_OTHER spinner share one CPU in one cgroup: their off-CPU
/// shares differ by far more than the spread limit.
#[ktstr_test(llcs = 1, cores = 2, expect_err = "Unfair: cgroup mixed spread")]
fn unfair_idle_vs_normal(ctx: &Ctx) -> Result<AssertResult> {
    pin_self_to(1);
    let r = execute_defs(
        ctx,
        vec![CgroupDef::named("mixed")
            .workers(1)
            .affinity(AffinityKind::Exact(vec![0]))
            .work(
                Work::new(WorkType::SpinWait, 1)
                    .sched_policy(SchedPolicy::Idle)
                    .affinity(AffinityKind::Exact(vec![0])),
            )],
    )?;
    expect_kind(r, DetailKind::Unfair)
}

/// Leaves its cgroup for the root cgroup (outside the cpuset) and pins itself to CPU 1.
fn escape_cpuset(stop: &AtomicBool) -> WorkerReport {
    let _ = std::fs::write("/sys/fs/cgroup/cgroup.procs", b"0");
    let _ = ktstr::workload::spawn::set_affinity(0, &[1]);
    let mut rec = Recorder::new();
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..1024 {
            std::hint::black_box(0u64);
        }
        rec.tick(1);
    }
    rec.finish()
}

/// A worker of a cgroup whose cpuset is CPU 0 escapes it and runs on CPU 1.
#[ktstr_test(llcs = 1, cores = 2, expect_err = "Isolation: outside its cpuset 0")]
fn isolation_escape(ctx: &Ctx) -> Result<AssertResult> {
    let r = execute_defs(
        ctx,
        vec![CgroupDef::named("fenced")
            .with_cpuset(CpusetSpec::Exact(vec![0]))
            .workers(1)
            .work_type(WorkType::Custom {
                name: "escape_cpuset",
                run: escape_cpuset,
            })],
    )?;
    expect_kind(r, DetailKind::Isolation)
}

/// Runs one cgroup `cgroup` with a single `Custom` worker `run` for the whole duration.
fn one_custom_worker(
    ctx: &Ctx,
    cgroup: &str,
    name: &'static str,
    run: fn(&AtomicBool) -> WorkerReport,
) -> Result<AssertResult> {
    execute_defs(
        ctx,
        vec![CgroupDef::named(cgroup)
            .workers(1)
            .work_type(WorkType::Custom { name, run })],
    )
}

/// A worker that makes progress only every 1.5 s.
fn stall_between_ticks(stop: &AtomicBool) -> WorkerReport {
    let mut rec = Recorder::new();
    while !stop.load(Ordering::Relaxed) {
        rec.tick(1);
        std::thread::sleep(std::time::Duration::from_millis(1500));
    }
    rec.tick(1);
    rec.finish()
}

/// A worker that goes 1.5 s without progress, against a gap limit of 200 ms (800 ms in force
/// under TCG): the gap check names it.
#[ktstr_test(
    llcs = 1,
    cores = 2,
    duration_s = 3,
    max_gap_ms = 200,
    expect_err = "Stuck: went"
)]
fn stuck_worker(ctx: &Ctx) -> Result<AssertResult> {
    one_custom_worker(ctx, "slow", "stall_between_ticks", stall_between_ticks)
}

/// A worker that moves itself to the other CPU every iteration.
fn hop_cpus(stop: &AtomicBool) -> WorkerReport {
    let mut rec = Recorder::new();
    let mut cpu = 0;
    while !stop.load(Ordering::Relaxed) {
        cpu = 1 - cpu;
        let _ = ktstr::workload::spawn::set_affinity(0, &[cpu]);
        for _ in 0..1024 {
            std::hint::black_box(0u64);
        }
        rec.tick(1);
    }
    rec.finish()
}

/// A worker migrating on nearly every iteration, against a limit of one migration per two
/// iterations: the migration check names it.
#[ktstr_test(
    llcs = 1,
    cores = 2,
    max_migration_ratio = 0.5,
    expect_err = "Migration: migrated"
)]
fn migrating_worker(ctx: &Ctx) -> Result<AssertResult> {
    one_custom_worker(ctx, "hopper", "hop_cpus", hop_cpus)
}

/// A worker that does one iteration per 100 ms.
fn crawl(stop: &AtomicBool) -> WorkerReport {
    let mut rec = Recorder::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(100));
        rec.tick(1);
    }
    rec.finish()
}

/// About 10 iterations per second against a floor of 1000: the rate check names it.
#[ktstr_test(
    llcs = 1,
    cores = 2,
    min_iteration_rate = 1000.0,
    expect_err = "Benchmark: iteration rate"
)]
fn slow_iteration_rate(ctx: &Ctx) -> Result<AssertResult> {
    one_custom_worker(ctx, "crawler", "crawl", crawl)
}

/// About 10 work units per second against a floor of 1000: the work-rate check names it.
#[ktstr_test(
    llcs = 1,
    cores = 2,
    min_work_rate = 1000.0,
    expect_err = "Benchmark: work rate"
)]
fn slow_work_rate(ctx: &Ctx) -> Result<AssertResult> {
    one_custom_worker(ctx, "crawler", "crawl", crawl)
}

/// A SCHED_FIFO task (priority 50) on `cpu` that runs `burst_ms`, then sleeps `sleep_ms`.
fn fifo_bursts(cpu: u32, burst_ms: u64, sleep_ms: u64) -> Backdrop {
    Backdrop::new().with_op(Op::spawn_host(
        Work::new(WorkType::Bursty { burst_ms, sleep_ms }, 1)
            .sched_policy(SchedPolicy::Fifo(50))
            .affinity(AffinityKind::Exact(vec![cpu])),
    ))
}

/// Two spinners of one cgroup, one per CPU; a SCHED_FIFO task on CPU 1 runs 45 ms of every
/// 50, so the spinner there does about a tenth of the other's work: the work-rate CV of the
/// cgroup (0.84 measured under TCG) exceeds 0.3. The two spinners have different affinities,
/// so the spread check does not compare them, and the slowed one still runs every 50 ms (not
/// starved, no gap near the limit).
#[ktstr_test(
    llcs = 1,
    cores = 2,
    max_throughput_cv = 0.3,
    expect_err = "Benchmark: work-rate CV"
)]
fn uneven_work_rates(ctx: &Ctx) -> Result<AssertResult> {
    pin_self_to(0);
    let hog = fifo_bursts(1, 45, 5);
    let r = beside(
        ctx,
        &hog,
        CgroupDef::named("pair")
            .workers(1)
            .affinity(AffinityKind::Exact(vec![0]))
            .work(Work::new(WorkType::SpinWait, 1).affinity(AffinityKind::Exact(vec![1]))),
    )?;
    expect_kind(r, DetailKind::Benchmark)
}

/// A worker napping 2 ms at a time on CPU 0, where a SCHED_FIFO task bursts 30 ms of every
/// 200: most wake-ups are prompt, the one per burst waits for the burst to end, so the wake
/// latencies spread far past the limit of 1.5 (CV 5.7 measured under TCG; four healthy
/// nappers under scx_demo measured 0.86 and 1.22).
#[ktstr_test(
    llcs = 1,
    cores = 2,
    max_wake_latency_cv = 1.5,
    expect_err = "Benchmark: wake latency CV"
)]
fn irregular_wake_latency(ctx: &Ctx) -> Result<AssertResult> {
    pin_self_to(1);
    let hog = fifo_bursts(0, 30, 170);
    let nap = WorkType::sequence(&[Phase::Sleep(std::time::Duration::from_millis(2))])
        .expect("one phase");
    let r = beside(
        ctx,
        &hog,
        CgroupDef::named("nappers")
            .workers(1)
            .affinity(AffinityKind::Exact(vec![0]))
            .work_type(nap),
    )?;
    expect_kind(r, DetailKind::Benchmark)
}

/// A worker that exits with status 3 before it reports.
fn exit_early(_stop: &AtomicBool) -> WorkerReport {
    std::process::exit(3)
}

/// A worker process that dies with a non-zero status before it reports: named by its status,
/// not as a worker that merely did not report (which is how it was missed before).
#[ktstr_test(llcs = 1, cores = 2, expect_err = "Other: exited with code 3")]
fn worker_exits_nonzero(ctx: &Ctx) -> Result<AssertResult> {
    one_custom_worker(ctx, "quitter", "exit_early", exit_early)
}

/// A worker that kills itself with SIGABRT.
fn abort_now(_stop: &AtomicBool) -> WorkerReport {
    std::process::abort()
}

/// A worker killed by a signal: named with the signal.
#[ktstr_test(llcs = 1, cores = 2, expect_err = "Other: was killed by signal 6")]
fn worker_killed_by_signal(ctx: &Ctx) -> Result<AssertResult> {
    one_custom_worker(ctx, "crasher", "abort_now", abort_now)
}

fn main() {
    ktstr_harness::main()
}
