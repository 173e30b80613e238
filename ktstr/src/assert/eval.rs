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
const RESIDUAL_DEMAND: &[&str] = &[crate::workload::WorkType::YieldHeavy.name()];

fn spread_by_type(run: &CgroupRun) -> Option<Spread> {
    let mut peers: Vec<(&str, &WorkerAffinity)> = run
        .workers
        .iter()
        .filter(|w| w.affinity != WorkerAffinity::Changed)
        .filter(|w| !RESIDUAL_DEMAND.contains(&w.work_type.as_str()))
        .map(|w| (w.work_type.as_str(), &w.affinity))
        .collect();
    peers.sort_unstable();
    peers.dedup();
    let mut worst: Option<Spread> = None;
    for (t, aff) in peers {
        let ws: Vec<(i32, f64)> = run
            .workers
            .iter()
            .filter(|w| w.work_type == t && w.affinity == *aff)
            .filter(|w| w.telemetry && !w.report.is_messenger)
            .filter(|w| w.report.exit_info.is_none())
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
/// the same `cpu.weight`. Workers are filtered as for the in-cgroup spread.
fn cross_cgroup_spread(runs: &[CgroupRun]) -> Option<CgroupSpread> {
    let parent = |name: &str| name.rsplit_once('/').map_or("", |(p, _)| p).to_string();
    let has_children = |name: &str| {
        let prefix = format!("{name}/");
        runs.iter().any(|r| r.name.starts_with(&prefix))
    };
    type Terms<'a> = (&'a str, &'a WorkerAffinity, &'a Option<Vec<u32>>, usize);
    // (terms, cgroup, mean off-CPU %, mean wall time in s)
    let mut entries: Vec<(Terms, &str, f64, f64)> = Vec::new();
    for run in runs.iter().filter(|r| !has_children(&r.name)) {
        let peers = run.workers.iter().filter(|w| {
            w.affinity != WorkerAffinity::Changed
                && !RESIDUAL_DEMAND.contains(&w.work_type.as_str())
                && w.telemetry
                && !w.report.is_messenger
                && w.report.exit_info.is_none()
        });
        let mut groups: Vec<(&str, &WorkerAffinity, &Option<Vec<u32>>)> = peers
            .clone()
            .map(|w| (w.work_type.as_str(), &w.affinity, &w.allowed))
            .collect();
        groups.sort_unstable();
        groups.dedup();
        for (t, aff, allowed) in groups {
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
    let scaled = |limit: f64| {
        if scale > 1.0 {
            format!("{limit:.0} × time scale {scale}")
        } else {
            format!("{limit:.0}")
        }
    };
    for run in runs {
        let cg = &run.name;
        for w in &run.workers {
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
                            scaled(limit as f64),
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
                    format!(
                        "cgroup {cg}: p99 wake latency {p99:.1} µs > {} ns",
                        scaled(max as f64)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn w(tid: i32, units: u64, off_pct: f64, cpus: &[u32]) -> WorkerRun {
        let wall = 2_000_000_000u64;
        WorkerRun {
            report: WorkerReport {
                tid,
                work_units: units,
                iterations: units,
                completed: true,
                wall_time_ns: wall,
                off_cpu_ns: (wall as f64 * off_pct / 100.0) as u64,
                cpu_time_ns: wall - (wall as f64 * off_pct / 100.0) as u64,
                cpus_used: cpus.to_vec(),
                max_gap_ms: 10.0,
                ..Default::default()
            },
            work_type: "SpinWait".into(),
            telemetry: true,
            allowed: None,
            affinity: WorkerAffinity::Inherited,
        }
    }

    fn run(workers: Vec<WorkerRun>) -> Vec<CgroupRun> {
        vec![CgroupRun {
            name: "cg0".into(),
            cpus: 2,
            workers,
        }]
    }

    fn cg(name: &str, workers: Vec<WorkerRun>) -> CgroupRun {
        CgroupRun {
            name: name.into(),
            cpus: 2,
            workers,
        }
    }

    #[test]
    fn a_cgroup_shortchanged_as_a_whole_is_unfair_across_cgroups() {
        let a = Assert::NO_OVERRIDES.max_cgroup_spread_pct(20.0);
        let fair = cg("cg0", vec![w(1, 100, 10.0, &[0]), w(2, 100, 12.0, &[1])]);
        let short = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 92.0, &[1])]);
        let r = evaluate(&a, &[fair.clone(), short.clone()], 1.0);
        assert!(!r.passed);
        let d = &r.details[0];
        assert_eq!(d.kind, DetailKind::Unfair);
        assert_eq!(
            d.message,
            "cross-cgroup spread 80.0% > 20.0%: cgroup cg1 91.0% off-CPU, cgroup cg0 11.0% (SpinWait ×2 each on the same CPUs)"
        );
        // Within each cgroup the workers are even: the in-cgroup spread sees nothing.
        let inside = evaluate(
            &Assert::NO_OVERRIDES.max_spread_pct(20.0),
            &[fair, short],
            1.0,
        );
        assert!(inside.passed, "{inside:?}");
    }

    #[test]
    fn cgroups_on_unequal_terms_are_not_compared() {
        let a = Assert::NO_OVERRIDES.max_cgroup_spread_pct(20.0);
        let base = cg("cg0", vec![w(1, 100, 10.0, &[0]), w(2, 100, 10.0, &[1])]);
        let judge = |other: CgroupRun| evaluate(&a, &[base.clone(), other], 1.0);
        // More workers: their share per worker is smaller under per-cgroup fairness.
        let more = cg(
            "cg1",
            vec![
                w(3, 9, 90.0, &[0]),
                w(4, 9, 90.0, &[1]),
                w(5, 9, 90.0, &[1]),
            ],
        );
        assert!(judge(more).passed);
        // Another work type.
        let mut yielding = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[1])]);
        for x in &mut yielding.workers {
            x.work_type = "Mixed".into();
        }
        assert!(judge(yielding).passed);
        // Another cpuset.
        let mut fenced = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[0])]);
        for x in &mut fenced.workers {
            x.allowed = Some(vec![0]);
        }
        assert!(judge(fenced).passed);
        // Another time (a later step): wall times 2 s against 1 s.
        let mut later = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[1])]);
        for x in &mut later.workers {
            x.report.wall_time_ns /= 2;
        }
        assert!(judge(later).passed);
        // Not siblings: under hierarchical fairness `outer/b` shares its parent's half.
        let nested = cg("outer/b", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[1])]);
        assert!(judge(nested).passed);
        // A cgroup whose child cgroups ran workers shares with them.
        let parent = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[1])]);
        let child = cg("cg1/x", vec![w(5, 9, 10.0, &[0])]);
        assert!(evaluate(&a, &[base.clone(), parent, child], 1.0).passed);
        // Siblings under one parent: compared.
        let sib_a = cg("outer/a", vec![w(3, 9, 10.0, &[0]), w(4, 9, 10.0, &[1])]);
        let sib_b = cg("outer/b", vec![w(5, 9, 90.0, &[0]), w(6, 9, 90.0, &[1])]);
        assert!(!evaluate(&a, &[sib_a, sib_b], 1.0).passed);
        // The same terms: compared, and caught.
        let same = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[1])]);
        assert!(!judge(same).passed);
    }

    /// Every summary field of one cgroup, from three workers with known numbers.
    #[test]
    fn cgroup_stats_summarises_its_workers() {
        let mut a = w(1, 100, 50.0, &[0]);
        let mut b = w(2, 300, 60.0, &[1]);
        let mut c = w(3, 200, 70.0, &[1, 2]);
        for (x, gap, gap_cpu, migr, lat, delay, count) in [
            (
                &mut a,
                40.0,
                1,
                10,
                vec![1000, 2000, 3000, 4000],
                4_000_000,
                2,
            ),
            (&mut b, 20.0, 0, 5, vec![5000], 2_000_000, 2),
            // The same longest gap as `a`, later: the first one found is reported.
            (&mut c, 40.0, 3, 0, vec![], 0, 0),
        ] {
            x.report.max_gap_ms = gap;
            x.report.max_gap_cpu = gap_cpu;
            x.report.migration_count = migr;
            x.report.resume_latencies_ns = lat;
            x.report.schedstat_run_delay_ns = delay;
            x.report.schedstat_run_count = count;
        }
        let st = cgroup_stats(&cg("cg0", vec![a, b, c.clone()]));
        assert_eq!(st.workers, 3);
        assert_eq!((st.max_gap_ms, st.max_gap_cpu), (40.0, 1));
        assert_eq!(st.total_migrations, 15);
        assert_eq!(st.total_iterations, 600);
        assert_eq!(st.min_iterations_per_worker, 100);
        assert!((st.migration_ratio - 0.025).abs() < 1e-9);
        assert!((st.avg_off_cpu_pct - 60.0).abs() < 1e-6);
        assert!((st.min_off_cpu_pct - 50.0).abs() < 1e-6);
        assert!((st.max_off_cpu_pct - 70.0).abs() < 1e-6);
        assert!((st.spread - 20.0).abs() < 1e-6);
        assert_eq!(st.cpus_used, vec![0, 1, 2]);
        // Latencies 1..5 µs: median 3, p99 5, CV sqrt(2)/3.
        assert_eq!(st.median_wake_latency_us, Some(3.0));
        assert_eq!(st.p99_wake_latency_us, Some(5.0));
        assert!((st.wake_latency_tail_ratio.unwrap() - 5.0 / 3.0).abs() < 1e-9);
        assert!((st.wake_latency_cv.unwrap() - 2f64.sqrt() / 3.0).abs() < 1e-9);
        // Run delay: 6 ms over 4 runs; the largest worker total 4 ms.
        assert!((st.mean_run_delay_us - 1500.0).abs() < 1e-9);
        assert!((st.max_run_delay_us - 4000.0).abs() < 1e-9);
        // Work rates 50, 150 and 100 per second.
        assert!((st.throughput_cv.unwrap() - (5000.0f64 / 3.0).sqrt() / 100.0).abs() < 1e-9);

        // One worker, no iterations, no runs, zero latencies: no ratios out of nothing.
        c.report.iterations = 0;
        c.report.resume_latencies_ns = vec![0, 0];
        let lone = cgroup_stats(&cg("cg1", vec![c]));
        assert_eq!(lone.migration_ratio, 0.0);
        assert_eq!(lone.mean_run_delay_us, 0.0);
        assert_eq!(lone.wake_latency_tail_ratio, None);
        assert_eq!(lone.throughput_cv, None);
    }

    #[test]
    fn messengers_and_workers_without_telemetry_are_not_in_the_spread() {
        let mut m = w(3, 10, 90.0, &[0]);
        m.report.is_messenger = true;
        let mut quiet = w(4, 0, 95.0, &[1]);
        quiet.telemetry = false;
        let run = cg(
            "cg0",
            vec![w(1, 100, 10.0, &[0]), w(2, 100, 12.0, &[1]), m, quiet],
        );
        assert!((cgroup_stats(&run).spread - 2.0).abs() < 1e-6);
    }

    /// The worst type's spread is reported, and on a tie the first type (in name order).
    #[test]
    fn the_widest_spread_of_any_type_is_reported() {
        let typed = |t: &str, tid, off| {
            let mut x = w(tid, 100, off, &[0]);
            x.work_type = t.into();
            x
        };
        let narrow_first = cg(
            "cg0",
            vec![
                typed("Mixed", 1, 10.0),
                typed("Mixed", 2, 20.0),
                typed("SpinWait", 3, 10.0),
                typed("SpinWait", 4, 40.0),
            ],
        );
        let (s, lo, hi, t) = spread_by_type(&narrow_first).unwrap();
        assert_eq!((t.as_str(), lo.0, hi.0), ("SpinWait", 3, 4));
        assert!((s - 30.0).abs() < 1e-6);
        let wide_first = cg(
            "cg0",
            vec![
                typed("Mixed", 1, 10.0),
                typed("Mixed", 2, 40.0),
                typed("SpinWait", 3, 10.0),
                typed("SpinWait", 4, 20.0),
            ],
        );
        assert_eq!(spread_by_type(&wide_first).unwrap().3, "Mixed");
        let tie = cg(
            "cg0",
            vec![
                typed("Mixed", 1, 10.0),
                typed("Mixed", 2, 30.0),
                typed("SpinWait", 3, 10.0),
                typed("SpinWait", 4, 30.0),
            ],
        );
        assert_eq!(spread_by_type(&tie).unwrap().3, "Mixed");
    }

    /// Within a cgroup, workers are grouped by work type, affinity and cpuset before the
    /// cgroups are compared; wall times within 20% count as the same time.
    #[test]
    fn cross_cgroup_spread_compares_like_with_like() {
        let pinned = |tid, off| {
            let mut x = w(tid, 100, off, &[0]);
            x.affinity = WorkerAffinity::Fixed(vec![0]);
            x
        };
        let cg0 = cg(
            "cg0",
            vec![
                w(1, 100, 10.0, &[0]),
                w(2, 100, 10.0, &[1]),
                pinned(3, 90.0),
                pinned(4, 90.0),
            ],
        );
        let mut cg1 = cg(
            "cg1",
            vec![
                w(5, 100, 10.0, &[0]),
                w(6, 100, 10.0, &[1]),
                pinned(7, 10.0),
                pinned(8, 10.0),
            ],
        );
        // 5% shorter: the same time for the comparison.
        for x in &mut cg1.workers {
            x.report.wall_time_ns = x.report.wall_time_ns / 20 * 19;
            x.report.off_cpu_ns = (x.report.wall_time_ns as f64 * 0.1) as u64;
        }
        let (s, lo, hi, t, n) = cross_cgroup_spread(&[cg0, cg1]).unwrap();
        assert!((s - 80.0).abs() < 1e-6, "{s}");
        assert_eq!(
            (lo.0.as_str(), hi.0.as_str(), t.as_str(), n),
            ("cg1", "cg0", "SpinWait", 2)
        );
    }

    /// Of several comparable pairs the widest is reported; on a tie, the first found.
    #[test]
    fn cross_cgroup_spread_reports_the_widest_pair() {
        let two = |name: &str, off| cg(name, vec![w(1, 100, off, &[0]), w(2, 100, off, &[1])]);
        let (s, lo, hi, ..) =
            cross_cgroup_spread(&[two("cg0", 10.0), two("cg1", 50.0), two("cg2", 90.0)]).unwrap();
        assert!((s - 80.0).abs() < 1e-6, "{s}");
        assert_eq!((lo.0.as_str(), hi.0.as_str()), ("cg0", "cg2"));
        let (_, _, hi, ..) =
            cross_cgroup_spread(&[two("cg0", 10.0), two("cg1", 50.0), two("cg2", 50.0)]).unwrap();
        assert_eq!(hi.0, "cg1");
    }

    #[test]
    fn scenario_stats_totals_and_worsts() {
        let mut a = w(1, 100, 10.0, &[0]);
        a.report.max_gap_ms = 30.0;
        a.report.migration_count = 3;
        let mut b = w(2, 200, 10.0, &[1]);
        b.report.max_gap_ms = 40.0;
        b.report.max_gap_cpu = 1;
        b.report.migration_count = 4;
        let mut c = w(3, 300, 10.0, &[1]);
        c.report.max_gap_ms = 40.0;
        c.report.max_gap_cpu = 3;
        let runs = [
            cg("cga", vec![a]),
            cg("cgb", vec![b]),
            cg("cgc", vec![c]),
            cg("empty", vec![]),
        ];
        let s = scenario_stats(&runs, 8);
        assert_eq!(s.total_cpus, 8);
        assert_eq!(s.total_workers, 3);
        assert_eq!(s.total_migrations, 7);
        assert_eq!(s.total_iterations, 600);
        // The empty cgroup has no worker to be the worst.
        assert_eq!(s.worst_iterations_per_worker, 100);
        // The longest gap, and of two equal ones the first.
        assert_eq!((s.worst_gap_ms, s.worst_gap_cpu), (40.0, 1));
    }

    #[test]
    fn the_iteration_rate_is_per_second_of_wall_time() {
        // 100 iterations in 2 s.
        let run = cg("cg0", vec![w(1, 100, 10.0, &[0])]);
        assert!(
            evaluate(
                &Assert::NO_OVERRIDES.min_iteration_rate(49.0),
                &[run.clone()],
                1.0
            )
            .passed
        );
        let r = evaluate(&Assert::NO_OVERRIDES.min_iteration_rate(51.0), &[run], 1.0);
        assert_eq!(
            r.details[0].message,
            "cgroup cg0: worker 1 iteration rate 50.0/s < 51/s"
        );
    }

    /// Workers the in-cgroup spread leaves out are left out across cgroups too.
    #[test]
    fn cross_cgroup_spread_skips_the_workers_the_spread_skips() {
        let a = Assert::NO_OVERRIDES.max_cgroup_spread_pct(20.0);
        let base = cg("cg0", vec![w(1, 100, 10.0, &[0]), w(2, 100, 10.0, &[1])]);
        let mark: [fn(&mut WorkerRun); 5] = [
            |x| x.affinity = WorkerAffinity::Changed,
            |x| x.work_type = "YieldHeavy".into(),
            |x| x.telemetry = false,
            |x| x.report.is_messenger = true,
            |x| x.report.exit_info = Some(ExitInfo::Code(1)),
        ];
        for (i, m) in mark.iter().enumerate() {
            let mut other = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[1])]);
            for x in &mut other.workers {
                m(x);
            }
            // (An exit is its own failure; only the spread matters here.)
            let r = evaluate(&a, &[base.clone(), other], 1.0);
            assert!(
                !r.has_kind(DetailKind::Unfair),
                "filter {i}: {:?}",
                r.details
            );
        }
    }

    #[test]
    fn healthy_passes_with_stats() {
        let r = evaluate(
            &Assert::default_checks(),
            &run(vec![w(1, 100, 50.0, &[0]), w(2, 90, 52.0, &[1])]),
            1.0,
        );
        assert!(r.passed, "{r:?}");
        let s = r.stats.unwrap();
        assert_eq!(s.total_workers, 2);
        assert!((s.worst_spread - 2.0).abs() < 1e-6, "{}", s.worst_spread);
        assert_eq!(s.total_iterations, 190);
        assert_eq!(s.worst_iterations_per_worker, 90);
    }

    #[test]
    fn each_check_reports_its_kind() {
        let a = Assert::NO_OVERRIDES
            .not_starved(true)
            .isolation(true)
            .max_spread_pct(15.0)
            .max_gap_ms(100);
        let mut starved = w(1, 0, 100.0, &[]);
        starved.report.exit_info = Some(ExitInfo::NoReport("late".into()));
        let mut escaped = w(2, 50, 10.0, &[0, 3]);
        escaped.allowed = Some(vec![0, 1]);
        let mut stuck = w(3, 50, 60.0, &[1]);
        stuck.report.max_gap_ms = 150.0;
        let r = evaluate(&a, &run(vec![starved, escaped, stuck]), 1.0);
        assert!(!r.passed);
        for k in [
            DetailKind::Starved,
            DetailKind::Isolation,
            DetailKind::Stuck,
        ] {
            assert!(r.has_kind(k), "{k:?} missing: {:?}", r.details);
        }
        // Spread among reporting workers: 60 − 10 = 50 > 15.
        assert!(r.has_kind(DetailKind::Unfair), "{:?}", r.details);
        let iso = r
            .details
            .iter()
            .find(|d| d.kind == DetailKind::Isolation)
            .unwrap();
        assert!(
            iso.message.contains("CPU(s) 3 outside its cpuset 0-1"),
            "{}",
            iso.message
        );
        let unfair = r
            .details
            .iter()
            .find(|d| d.kind == DetailKind::Unfair)
            .unwrap();
        assert!(
            unfair
                .message
                .starts_with("cgroup cg0 spread 50.0% > 15.0%"),
            "{}",
            unfair.message
        );
    }

    #[test]
    fn gap_limit_scales_with_time_scale() {
        let a = Assert::NO_OVERRIDES.max_gap_ms(100);
        let mut slow = w(1, 10, 0.0, &[0]);
        slow.report.max_gap_ms = 300.0;
        assert!(!evaluate(&a, &run(vec![slow.clone()]), 1.0).passed);
        assert!(evaluate(&a, &run(vec![slow]), 4.0).passed);
    }

    #[test]
    fn spread_is_unscaled_and_per_work_type() {
        let a = Assert::NO_OVERRIDES.max_spread_pct(15.0);
        let mut io = w(2, 10, 95.0, &[0]);
        io.work_type = "IoSync".into();
        // A spinner and an I/O worker differ by design: not a spread.
        assert!(evaluate(&a, &run(vec![w(1, 10, 0.0, &[0]), io]), 4.0).passed);
        let pair = |off: f64| run(vec![w(1, 10, 0.0, &[0]), w(2, 10, off, &[0])]);
        // The same limit on every backend: an emulator does not excuse unfairness.
        assert!(evaluate(&a, &pair(20.0), 1.0).has_kind(DetailKind::Unfair));
        assert!(evaluate(&a, &pair(20.0), 4.0).has_kind(DetailKind::Unfair));
    }

    #[test]
    fn yielders_are_not_compared_for_the_spread() {
        let a = Assert::NO_OVERRIDES
            .max_spread_pct(15.0)
            .check_not_starved();
        let y = |tid, off| WorkerRun {
            work_type: "YieldHeavy".into(),
            ..w(tid, 10, off, &[0])
        };
        // A yielder beside a spinner gives its CPU away; one alone keeps it.
        assert!(evaluate(&a, &run(vec![y(1, 2.8), y(2, 49.8)]), 1.0).passed);
        // A yielder that never ran is still starved.
        let mut starved = y(3, 100.0);
        starved.report.work_units = 0;
        starved.report.iterations = 0;
        let r = evaluate(&a, &run(vec![y(1, 2.8), starved]), 1.0);
        assert!(r.has_kind(DetailKind::Starved), "{r:?}");
    }

    #[test]
    fn spread_compares_only_workers_with_the_same_affinity() {
        let a = Assert::NO_OVERRIDES.max_spread_pct(15.0);
        let with = |tid, off, aff: WorkerAffinity| WorkerRun {
            affinity: aff,
            ..w(tid, 10, off, &[0])
        };
        let fixed = |cpus: &[u32]| WorkerAffinity::Fixed(cpus.to_vec());
        // Pinned to different CPUs: different competition, not a fairness question.
        let r = run(vec![with(1, 0.0, fixed(&[0])), with(2, 60.0, fixed(&[1]))]);
        assert!(evaluate(&a, &r, 1.0).passed);
        // Re-pinned mid-run: no peers at all.
        let r = run(vec![
            with(1, 0.0, WorkerAffinity::Changed),
            with(2, 60.0, WorkerAffinity::Changed),
        ]);
        assert!(evaluate(&a, &r, 1.0).passed);
        // The same pin (the SCHED_IDLE-vs-normal negative case) is still judged, and so
        // are peers beside a differently pinned worker.
        let r = run(vec![with(1, 0.0, fixed(&[0])), with(2, 99.0, fixed(&[0]))]);
        assert!(evaluate(&a, &r, 1.0).has_kind(DetailKind::Unfair));
        let r = run(vec![
            with(1, 0.0, WorkerAffinity::Inherited),
            with(2, 40.0, WorkerAffinity::Inherited),
            with(3, 0.0, fixed(&[1])),
        ]);
        let v = evaluate(&a, &r, 1.0);
        assert!(v.has_kind(DetailKind::Unfair), "{v:?}");
    }

    #[test]
    fn wake_latency_and_migration() {
        let a = Assert::NO_OVERRIDES
            .max_p99_wake_latency_ns(1_000)
            .max_migration_ratio(0.1);
        let mut x = w(1, 100, 0.0, &[0, 1]);
        x.report.resume_latencies_ns = (1..=100).map(|i| i * 100).collect();
        x.report.migration_count = 50;
        let r = evaluate(&a, &run(vec![x.clone()]), 1.0);
        assert!(r.has_kind(DetailKind::Benchmark) && r.has_kind(DetailKind::Migration));
        let s = r.stats.unwrap();
        assert_eq!(s.worst_p99_wake_latency_us, Some(9.9));
        assert_eq!(s.worst_median_wake_latency_us, Some(5.0));
        // p99 9.9 µs is within 1 µs × 16.
        let r = evaluate(
            &Assert::NO_OVERRIDES.max_p99_wake_latency_ns(1_000),
            &run(vec![x]),
            16.0,
        );
        assert!(r.passed, "{:?}", r.details);
    }
}
