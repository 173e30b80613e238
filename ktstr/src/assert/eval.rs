//! Judging worker reports: per-cgroup statistics ([`CgroupStats`], [`ScenarioStats`]) and
//! the findings of every enabled check ([`evaluate`]).

use serde::{Deserialize, Serialize};

use super::{Assert, AssertResult, DetailKind};
use crate::cgroup::cpulist;
use crate::stats::{cv, percentile};
use crate::workload::{ExitInfo, WorkerReport};

/// One worker's report with what the judge needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerRun {
    /// What it measured.
    pub report: WorkerReport,
    /// Its work type's name.
    pub work_type: String,
    /// Whether the framework measured it (false for `Custom` bodies that may not).
    pub telemetry: bool,
    /// CPUs it was allowed by its cgroup's cpuset over its life; `None`: unconstrained at
    /// some point, so isolation is not checked for it.
    pub allowed: Option<Vec<u32>>,
    /// Its own CPU affinity over its life: only workers with the same affinity are
    /// compared for the fairness spread.
    pub affinity: WorkerAffinity,
}

/// A worker's own CPU affinity (sched_setaffinity) over its life, as far as the fairness
/// spread cares: workers confined to different CPUs face different competition, so their
/// off-CPU shares say nothing about the scheduler's fairness.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum WorkerAffinity {
    /// Never set: every CPU its cgroup allows.
    #[default]
    Inherited,
    /// Set once at spawn and never changed.
    Fixed(Vec<u32>),
    /// Changed while it ran (e.g. `Op::SetAffinity`): not compared with anyone.
    Changed,
}

/// The workers of one cgroup.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupRun {
    /// cgroup name.
    pub name: String,
    /// CPUs available to it at the end.
    pub cpus: usize,
    /// Its workers.
    pub workers: Vec<WorkerRun>,
}

/// What one cgroup's workers measured.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CgroupStats {
    /// cgroup name.
    pub name: String,
    /// Workers.
    pub workers: usize,
    /// CPUs available to it.
    pub cpus: usize,
    /// Work types, comma separated.
    pub work_types: String,
    /// Mean off-CPU % over its workers.
    pub avg_off_cpu_pct: f64,
    /// Lowest off-CPU %.
    pub min_off_cpu_pct: f64,
    /// Highest off-CPU %.
    pub max_off_cpu_pct: f64,
    /// Worst max − min off-CPU % among workers of one work type.
    pub spread: f64,
    /// Longest gap of any worker, ms.
    pub max_gap_ms: f64,
    /// CPU that gap ended on.
    pub max_gap_cpu: u32,
    /// Sum of migrations.
    pub total_migrations: u64,
    /// Migrations per iteration (all workers).
    pub migration_ratio: f64,
    /// p99 wake latency, µs (workers that record wake-ups).
    pub p99_wake_latency_us: Option<f64>,
    /// Median wake latency, µs.
    pub median_wake_latency_us: Option<f64>,
    /// Wake latency coefficient of variation.
    pub wake_latency_cv: Option<f64>,
    /// p99 / median wake latency.
    pub wake_latency_tail_ratio: Option<f64>,
    /// Sum of iterations.
    pub total_iterations: u64,
    /// Fewest iterations of one worker.
    pub min_iterations_per_worker: u64,
    /// Mean schedstat run-queue delay per scheduling, µs.
    pub mean_run_delay_us: f64,
    /// Largest total run-queue delay of one worker, µs.
    pub max_run_delay_us: f64,
    /// CV of work rate across workers.
    pub throughput_cv: Option<f64>,
    /// CPUs its workers were seen on.
    pub cpus_used: Vec<u32>,
}

/// What a whole scenario measured (sidecar `stats`).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScenarioStats {
    /// Per cgroup.
    pub cgroups: Vec<CgroupStats>,
    /// Workers judged.
    pub total_workers: usize,
    /// CPUs in the topology.
    pub total_cpus: usize,
    /// Sum of migrations.
    pub total_migrations: u64,
    /// Sum of iterations.
    pub total_iterations: u64,
    /// Largest cgroup spread.
    pub worst_spread: f64,
    /// Longest gap, ms.
    pub worst_gap_ms: f64,
    /// CPU of the longest gap.
    pub worst_gap_cpu: u32,
    /// Largest migration ratio.
    pub worst_migration_ratio: f64,
    /// Largest p99 wake latency, µs.
    pub worst_p99_wake_latency_us: Option<f64>,
    /// Largest median wake latency, µs.
    pub worst_median_wake_latency_us: Option<f64>,
    /// Largest wake latency CV.
    pub worst_wake_latency_cv: Option<f64>,
    /// Largest p99/median ratio.
    pub worst_wake_latency_tail_ratio: Option<f64>,
    /// Fewest iterations of any worker.
    pub worst_iterations_per_worker: u64,
    /// Largest mean run delay, µs.
    pub worst_mean_run_delay_us: f64,
    /// Largest run delay of one worker, µs.
    pub worst_run_delay_us: f64,
    /// Lowest page locality (needs NUMA telemetry; null for now).
    pub worst_page_locality: Option<f64>,
    /// Largest cross-node migration ratio (null for now).
    pub worst_cross_node_migration_ratio: Option<f64>,
}

fn fmax(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Statistics of one cgroup.
pub fn cgroup_stats(run: &CgroupRun) -> CgroupStats {
    let ws: Vec<&WorkerReport> = run.workers.iter().map(|w| &w.report).collect();
    let off: Vec<f64> = ws.iter().map(|r| r.off_cpu_pct()).collect();
    let mut types: Vec<&str> = run.workers.iter().map(|w| w.work_type.as_str()).collect();
    types.dedup();
    let lat: Vec<u64> = ws
        .iter()
        .flat_map(|r| r.resume_latencies_ns.iter().copied())
        .collect();
    let latf: Vec<f64> = lat.iter().map(|&x| x as f64).collect();
    let p99 = percentile(&lat, 99.0).map(|x| x as f64 / 1e3);
    let p50 = percentile(&lat, 50.0).map(|x| x as f64 / 1e3);
    let iters: u64 = ws.iter().map(|r| r.iterations).sum();
    let migr: u64 = ws.iter().map(|r| r.migration_count).sum();
    let (gap, gap_cpu) = ws
        .iter()
        .map(|r| (r.max_gap_ms, r.max_gap_cpu))
        .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a });
    let delay: u64 = ws.iter().map(|r| r.schedstat_run_delay_ns).sum();
    let count: u64 = ws.iter().map(|r| r.schedstat_run_count).sum();
    let mut cpus_used: Vec<u32> = ws.iter().flat_map(|r| r.cpus_used.clone()).collect();
    cpus_used.sort_unstable();
    cpus_used.dedup();
    let rates: Vec<f64> = run
        .workers
        .iter()
        .filter(|w| w.telemetry)
        .map(|w| w.report.work_rate())
        .collect();
    CgroupStats {
        name: run.name.clone(),
        workers: ws.len(),
        cpus: run.cpus,
        work_types: types.join(","),
        avg_off_cpu_pct: crate::stats::mean(&off).unwrap_or(0.0),
        min_off_cpu_pct: off.iter().cloned().fold(f64::INFINITY, f64::min).min(100.0),
        max_off_cpu_pct: off.iter().cloned().fold(0.0, f64::max),
        spread: spread_by_type(run).map_or(0.0, |s| s.0),
        max_gap_ms: gap,
        max_gap_cpu: gap_cpu,
        total_migrations: migr,
        migration_ratio: if iters == 0 {
            0.0
        } else {
            migr as f64 / iters as f64
        },
        p99_wake_latency_us: p99,
        median_wake_latency_us: p50,
        wake_latency_cv: cv(&latf),
        wake_latency_tail_ratio: match (p99, p50) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        },
        total_iterations: iters,
        min_iterations_per_worker: ws.iter().map(|r| r.iterations).min().unwrap_or(0),
        mean_run_delay_us: if count == 0 {
            0.0
        } else {
            delay as f64 / count as f64 / 1e3
        },
        max_run_delay_us: ws
            .iter()
            .map(|r| r.schedstat_run_delay_ns as f64 / 1e3)
            .fold(0.0, f64::max),
        throughput_cv: if rates.len() >= 2 { cv(&rates) } else { None },
        cpus_used,
    }
}

/// The worst off-CPU spread among workers of one work type and one affinity within a cgroup
/// (messengers of fan-out groups excluded: they do a different job than their receivers;
/// workers whose affinity changed mid-run excluded: they have no peers), with the (min, max)
/// worker PIDs and percentages.
/// (spread, (pid, off-CPU %) of the lowest, of the highest, work type).
type Spread = (f64, (i32, f64), (i32, f64), String);

/// Work types whose CPU demand is whatever their neighbours leave: a `sched_yield` loop gives
/// its CPU to anything runnable beside it, so its off-CPU share measures the neighbours, not
/// the scheduler's fairness to it (CI, 1n2l2c1t with spin/yield/io/bursty cgroups under EEVDF:
/// a yielder beside a spinner 49.8% off-CPU, one alone 2.8%). Their starvation and gaps are
/// still judged.
///
/// `PolicyChurn` too: it cycles through SCHED_OTHER, SCHED_BATCH and SCHED_IDLE, so its share
/// is set by the time it spent as SCHED_IDLE (CI, `work_types_cpu` under EEVDF: two churners
/// at 62.5% and 97.9% off-CPU).
pub(crate) const RESIDUAL_DEMAND: &[&str] = &[
    crate::workload::WorkType::YieldHeavy.name(),
    crate::workload::WorkType::PolicyChurn { spin_iters: 0 }.name(),
];

/// Whether a worker's off-CPU share can be compared with a peer's, in or across cgroups: its
/// affinity did not change mid-run, its work type does not take only what neighbours leave,
/// it recorded progress, it was not a fan-out messenger, and it did not die.
fn comparable(w: &WorkerRun) -> bool {
    w.affinity != WorkerAffinity::Changed
        && !RESIDUAL_DEMAND.contains(&w.work_type.as_str())
        && w.telemetry
        && !w.report.is_messenger
        && w.report.exit_info.is_none()
}

fn spread_by_type(run: &CgroupRun) -> Option<Spread> {
    let mut peers: Vec<(&str, &WorkerAffinity)> = run
        .workers
        .iter()
        .filter(|w| comparable(w))
        .map(|w| (w.work_type.as_str(), &w.affinity))
        .collect();
    peers.sort_unstable();
    peers.dedup();
    let mut worst: Option<Spread> = None;
    for (t, aff) in peers {
        let ws: Vec<(i32, f64)> = run
            .workers
            .iter()
            .filter(|w| comparable(w) && w.work_type == t && w.affinity == *aff)
            .map(|w| (w.report.tid, w.report.off_cpu_pct()))
            .collect();
        if ws.len() < 2 {
            continue;
        }
        let lo = *ws.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        let hi = *ws.iter().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
        let s = hi.1 - lo.1;
        if worst.as_ref().is_none_or(|w| s > w.0) {
            worst = Some((s, lo, hi, t.to_string()));
        }
    }
    worst
}

/// The widest gap between cgroups that competed on equal terms, as
/// (spread, (cgroup, mean off-CPU %) lowest, highest, work type, workers each).
type CgroupSpread = (f64, (String, f64), (String, f64), String, usize);

/// The worst cross-cgroup spread: for every work type, affinity and cpuset, sibling leaf
/// cgroups that ran the same number of such workers over about the same time (wall times
/// within 20%) are compared by their workers' mean off-CPU %. Siblings, equal numbers and
/// leaves keep the comparison neutral between per-task and hierarchical per-cgroup fairness
/// (both give such cgroups equal shares; CI saw `outer/b` at 49.6% off-CPU beside a top-level
/// `solo` at 5.8% under EEVDF, which is hierarchy, not unfairness); the DSL gives every cgroup
/// the same `cpu.weight`. Workers are filtered as for the in-cgroup spread. A cpuset that
/// another cgroup's cpuset partly overlaps is left out: who shares a CPU with the outsider is
/// placement, not fairness (CI, `every_cpuset_spec` on 2n2l2c1t under EEVDF: `llc` and `numa`
/// on CPUs 2-3 at 46.4% and 6.6% off-CPU, with `exact` on CPUs 1 and 3).
fn cross_cgroup_spread(runs: &[CgroupRun]) -> Option<CgroupSpread> {
    let cpusets: Vec<&Vec<u32>> = runs
        .iter()
        .flat_map(|r| r.workers.iter().filter_map(|w| w.allowed.as_ref()))
        .collect();
    let partly_shared = |s: &Option<Vec<u32>>| {
        s.as_ref().is_some_and(|s| {
            cpusets
                .iter()
                .any(|t| *t != s && t.iter().any(|c| s.contains(c)))
        })
    };
    let parent = |name: &str| name.rsplit_once('/').map_or("", |(p, _)| p).to_string();
    let has_children = |name: &str| {
        let prefix = format!("{name}/");
        runs.iter().any(|r| r.name.starts_with(&prefix))
    };
    type Terms<'a> = (&'a str, &'a WorkerAffinity, &'a Option<Vec<u32>>, usize);
    // (terms, cgroup, mean off-CPU %, mean wall time in s)
    let mut entries: Vec<(Terms, &str, f64, f64)> = Vec::new();
    for run in runs.iter().filter(|r| !has_children(&r.name)) {
        let peers = run.workers.iter().filter(|w| comparable(w));
        let mut groups: Vec<(&str, &WorkerAffinity, &Option<Vec<u32>>)> = peers
            .clone()
            .map(|w| (w.work_type.as_str(), &w.affinity, &w.allowed))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        for (t, aff, allowed) in groups.into_iter().filter(|g| !partly_shared(g.2)) {
            let ws: Vec<&WorkerReport> = peers
                .clone()
                .filter(|w| w.work_type == t && w.affinity == *aff && w.allowed == *allowed)
                .map(|w| &w.report)
                .collect();
            let n = ws.len() as f64;
            let off = ws.iter().map(|r| r.off_cpu_pct()).sum::<f64>() / n;
            let wall = ws.iter().map(|r| secs(r)).sum::<f64>() / n;
            entries.push(((t, aff, allowed, ws.len()), &run.name, off, wall));
        }
    }
    let mut worst: Option<CgroupSpread> = None;
    for (i, a) in entries.iter().enumerate() {
        for b in &entries[i + 1..] {
            let overlapped = (a.3 - b.3).abs() <= 0.2 * a.3.max(b.3);
            if a.0 != b.0 || a.1 == b.1 || parent(a.1) != parent(b.1) || !overlapped {
                continue;
            }
            let (lo, hi) = if a.2 <= b.2 { (a, b) } else { (b, a) };
            let s = hi.2 - lo.2;
            if worst.as_ref().is_none_or(|w| s > w.0) {
                worst = Some((
                    s,
                    (lo.1.to_string(), lo.2),
                    (hi.1.to_string(), hi.2),
                    a.0 .0.to_string(),
                    a.0 .3,
                ));
            }
        }
    }
    worst
}

/// Aggregates per-cgroup statistics.
pub fn scenario_stats(runs: &[CgroupRun], total_cpus: usize) -> ScenarioStats {
    let cgroups: Vec<CgroupStats> = runs.iter().map(cgroup_stats).collect();
    let mut s = ScenarioStats {
        total_workers: cgroups.iter().map(|c| c.workers).sum(),
        total_cpus,
        total_migrations: cgroups.iter().map(|c| c.total_migrations).sum(),
        total_iterations: cgroups.iter().map(|c| c.total_iterations).sum(),
        worst_iterations_per_worker: cgroups
            .iter()
            .filter(|c| c.workers > 0)
            .map(|c| c.min_iterations_per_worker)
            .min()
            .unwrap_or(0),
        ..Default::default()
    };
    for c in &cgroups {
        s.worst_spread = s.worst_spread.max(c.spread);
        if c.max_gap_ms > s.worst_gap_ms {
            s.worst_gap_ms = c.max_gap_ms;
            s.worst_gap_cpu = c.max_gap_cpu;
        }
        s.worst_migration_ratio = s.worst_migration_ratio.max(c.migration_ratio);
        s.worst_p99_wake_latency_us = fmax(s.worst_p99_wake_latency_us, c.p99_wake_latency_us);
        s.worst_median_wake_latency_us =
            fmax(s.worst_median_wake_latency_us, c.median_wake_latency_us);
        s.worst_wake_latency_cv = fmax(s.worst_wake_latency_cv, c.wake_latency_cv);
        s.worst_wake_latency_tail_ratio =
            fmax(s.worst_wake_latency_tail_ratio, c.wake_latency_tail_ratio);
        s.worst_mean_run_delay_us = s.worst_mean_run_delay_us.max(c.mean_run_delay_us);
        s.worst_run_delay_us = s.worst_run_delay_us.max(c.max_run_delay_us);
    }
    s.cgroups = cgroups;
    s
}

fn secs(r: &WorkerReport) -> f64 {
    r.wall_time_ns as f64 / 1e9
}

/// Judges `runs` against `a`; time-based limits are multiplied by `time_scale`. The result
/// carries the [`ScenarioStats`] and one detail per failed check, each naming the cgroup,
/// the worker and the numbers against the limit.
pub fn evaluate(a: &Assert, runs: &[CgroupRun], time_scale: f64) -> AssertResult {
    let scale = time_scale.max(1.0);
    let total_cpus = runs.iter().map(|r| r.cpus).max().unwrap_or(0);
    let mut res = AssertResult::pass();
    for run in runs {
        for w in &run.workers {
            check_worker_health(a, &run.name, w, &mut res);
            check_worker_limits(a, &run.name, w, scale, &mut res);
        }
        check_cgroup(a, run, scale, &mut res);
    }
    if let (Some(max), Some((s, lo, hi, t, n))) =
        (a.max_cgroup_spread_pct, cross_cgroup_spread(runs))
    {
        if s > max {
            res.push_failure(
                DetailKind::Unfair,
                format!(
                    "cross-cgroup spread {s:.1}% > {max:.1}%: cgroup {} {:.1}% off-CPU, cgroup {} {:.1}% ({t} ×{n} each on the same CPUs)",
                    hi.0, hi.1, lo.0, lo.1
                ),
            );
        }
    }
    res.stats = Some(scenario_stats(runs, total_cpus));
    res
}

/// A limit as shown in a message (`shown`, already formatted), with the time scale when one
/// applies.
fn scaled(shown: String, scale: f64) -> String {
    if scale > 1.0 {
        format!("{shown} × time scale {scale}")
    } else {
        shown
    }
}

/// The checks of one worker that need no limit: how it exited, starvation, isolation.
fn check_worker_health(a: &Assert, cg: &str, w: &WorkerRun, res: &mut AssertResult) {
    let r = &w.report;
    match &r.exit_info {
        Some(ExitInfo::Code(c)) => res.push_failure(
            DetailKind::Other,
            format!(
                "cgroup {cg}: worker {} ({}) exited with code {c}",
                r.tid, w.work_type
            ),
        ),
        Some(ExitInfo::Signal(s)) => res.push_failure(
            DetailKind::Other,
            format!(
                "cgroup {cg}: worker {} ({}) was killed by signal {s}",
                r.tid, w.work_type
            ),
        ),
        _ => {}
    }
    if a.not_starved == Some(true) && w.telemetry && r.work_units == 0 {
        let why = match &r.exit_info {
            Some(ExitInfo::NoReport(e)) => format!(" and did not report ({e})"),
            _ => String::new(),
        };
        res.push_failure(
            DetailKind::Starved,
            format!(
                "cgroup {cg}: worker {} ({}) made no progress in {:.1} s (0 work units, {:.1}% off-CPU){why}",
                r.tid,
                w.work_type,
                secs(r),
                r.off_cpu_pct()
            ),
        );
    }
    if a.isolation == Some(true) {
        if let Some(allowed) = &w.allowed {
            let out: Vec<u32> = r
                .cpus_used
                .iter()
                .copied()
                .filter(|c| !allowed.contains(c))
                .collect();
            if !out.is_empty() {
                res.push_failure(
                    DetailKind::Isolation,
                    format!(
                        "cgroup {cg}: worker {} ({}) ran on CPU(s) {} outside its cpuset {} (seen on {})",
                        r.tid,
                        w.work_type,
                        cpulist(&out),
                        cpulist(allowed),
                        cpulist(&r.cpus_used)
                    ),
                );
            }
        }
    }
}

/// The per-worker limits: longest gap, work and iteration rates, migration ratio.
fn check_worker_limits(a: &Assert, cg: &str, w: &WorkerRun, scale: f64, res: &mut AssertResult) {
    let r = &w.report;
    if let Some(limit) = a.max_gap_ms {
        let lim = limit as f64 * scale;
        if w.telemetry && r.max_gap_ms > lim {
            res.push_failure(
                DetailKind::Stuck,
                format!(
                    "cgroup {cg}: worker {} ({}) went {:.0} ms without progress (limit {} ms), resuming on CPU {} at {:.0} ms",
                    r.tid,
                    w.work_type,
                    r.max_gap_ms,
                    scaled(format!("{:.0}", limit as f64), scale),
                    r.max_gap_cpu,
                    r.max_gap_at_ms
                ),
            );
        }
    }
    if let Some(min) = a.min_work_rate {
        if w.telemetry && r.work_rate() < min {
            res.push_failure(
                DetailKind::Benchmark,
                format!(
                    "cgroup {cg}: worker {} work rate {:.1}/s < {min}/s",
                    r.tid,
                    r.work_rate()
                ),
            );
        }
    }
    if let Some(min) = a.min_iteration_rate {
        let rate = if r.wall_time_ns == 0 {
            0.0
        } else {
            r.iterations as f64 / secs(r)
        };
        if w.telemetry && rate < min {
            res.push_failure(
                DetailKind::Benchmark,
                format!(
                    "cgroup {cg}: worker {} iteration rate {rate:.1}/s < {min}/s",
                    r.tid
                ),
            );
        }
    }
    if let Some(max) = a.max_migration_ratio {
        if w.telemetry && r.migration_ratio() > max {
            res.push_failure(
                DetailKind::Migration,
                format!(
                    "cgroup {cg}: worker {} migrated {} times in {} iterations (ratio {:.4} > {max})",
                    r.tid,
                    r.migration_count,
                    r.iterations,
                    r.migration_ratio()
                ),
            );
        }
    }
}

/// The checks of one cgroup as a whole: spread, work-rate CV, wake latency p99 and CV.
fn check_cgroup(a: &Assert, run: &CgroupRun, scale: f64, res: &mut AssertResult) {
    let cg = &run.name;
    let st = cgroup_stats(run);
    if let (Some(max), Some((s, lo, hi, t))) = (a.max_spread_pct, spread_by_type(run)) {
        if s > max {
            res.push_failure(
                DetailKind::Unfair,
                format!(
                    "cgroup {cg} spread {s:.1}% > {max:.1}% ({t}: worker {} {:.1}% off-CPU, worker {} {:.1}% off-CPU)",
                    lo.0, lo.1, hi.0, hi.1
                ),
            );
        }
    }
    if let (Some(max), Some(c)) = (a.max_throughput_cv, st.throughput_cv) {
        if c > max {
            res.push_failure(
                DetailKind::Benchmark,
                format!("cgroup {cg}: work-rate CV {c:.3} > {max}"),
            );
        }
    }
    if let (Some(max), Some(p99)) = (a.max_p99_wake_latency_ns, st.p99_wake_latency_us) {
        let lim = max as f64 * scale / 1e3;
        if p99 > lim {
            res.push_failure(
                DetailKind::Benchmark,
                // Both sides in µs: the limit is set in ns, the latency kept in µs.
                format!(
                    "cgroup {cg}: p99 wake latency {p99:.1} µs > {} µs",
                    scaled(format!("{}", max as f64 / 1e3), scale)
                ),
            );
        }
    }
    if let (Some(max), Some(c)) = (a.max_wake_latency_cv, st.wake_latency_cv) {
        if c > max {
            res.push_failure(
                DetailKind::Benchmark,
                format!("cgroup {cg}: wake latency CV {c:.3} > {max}"),
            );
        }
    }
}

#[cfg(test)]
#[path = "eval_tests.rs"]
mod tests;
