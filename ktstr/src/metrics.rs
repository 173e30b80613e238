//! The `METRICS` registry: every run-level metric ktstr compares across runs, with its
//! polarity and default significance gates (library spec §6). One source of truth for
//! `cargo ktstr stats list-metrics`, comparison and policy keys.
//!
//! A metric reads its value from a sidecar. Monitor-derived metrics (imbalance, DSQ depth,
//! stalls, fallback and keep-last counts) and the NUMA ones read `None` until that
//! telemetry exists.

use serde::Serialize;

use crate::assert::PhaseStats;
use crate::sidecar::Sidecar;

/// Which direction is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Polarity {
    /// A larger value is better (e.g. iterations).
    HigherIsBetter,
    /// A smaller value is better (e.g. gaps, latencies).
    LowerIsBetter,
}

/// One registered metric, read from a sidecar (`S` = [`Sidecar`], the run-level registry
/// [`METRICS`]) or from one phase of it (`S` = [`PhaseStats`], [`PHASE_METRICS`]).
#[derive(Debug, Serialize)]
#[serde(bound = "")]
pub struct Metric<S: 'static = Sidecar> {
    /// The key (`stats compare`, policy `per_metric_percent`).
    pub name: &'static str,
    /// Which direction is better.
    pub polarity: Polarity,
    /// A change smaller than this (absolute) is never significant.
    pub default_abs: f64,
    /// A change smaller than this (relative to the baseline) is never significant.
    pub default_rel: f64,
    /// Display unit (empty for counts and ratios).
    pub unit: &'static str,
    /// One line for people.
    pub description: &'static str,
    /// Reads the value (`None`: not recorded).
    #[serde(skip)]
    pub value: fn(&S) -> Option<f64>,
}

// By hand: a derive would ask `S: Clone`, which a fn pointer over `&S` does not need.
impl<S> Clone for Metric<S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<S> Copy for Metric<S> {}

fn stat(s: &Sidecar, f: impl Fn(&crate::assert::ScenarioStats) -> Option<f64>) -> Option<f64> {
    s.stats.as_ref().and_then(f)
}

/// Monitor metrics come from the sidecar's `monitor` object once the monitor exists.
fn monitor(s: &Sidecar, key: &str) -> Option<f64> {
    s.monitor.as_ref()?.get(key)?.as_f64()
}

macro_rules! metric {
    ($name:literal, $pol:ident, $abs:expr, $rel:expr, $unit:literal, $desc:literal, $value:expr) => {
        Metric {
            name: $name,
            polarity: Polarity::$pol,
            default_abs: $abs,
            default_rel: $rel,
            unit: $unit,
            description: $desc,
            value: $value,
        }
    };
}

/// Every metric, in the spec's order.
pub static METRICS: &[Metric] = &[
    metric!(
        "worst_spread",
        LowerIsBetter,
        5.0,
        0.25,
        "%",
        "largest off-CPU spread between workers of one cgroup (same affinity)",
        |s| stat(s, |t| Some(t.worst_spread))
    ),
    metric!(
        "worst_gap_ms",
        LowerIsBetter,
        500.0,
        0.50,
        "ms",
        "longest time any worker went without progress",
        |s| stat(s, |t| Some(t.worst_gap_ms))
    ),
    metric!(
        "total_migrations",
        LowerIsBetter,
        10.0,
        0.30,
        "",
        "CPU migrations summed over all workers",
        |s| stat(s, |t| Some(t.total_migrations as f64))
    ),
    metric!(
        "worst_migration_ratio",
        LowerIsBetter,
        0.05,
        0.20,
        "",
        "largest migrations-per-iteration ratio of a cgroup",
        |s| stat(s, |t| Some(t.worst_migration_ratio))
    ),
    metric!(
        "max_imbalance_ratio",
        LowerIsBetter,
        1.0,
        0.25,
        "x",
        "largest max/min runqueue length ratio the monitor saw",
        |s| monitor(s, "max_imbalance_ratio")
    ),
    metric!(
        "max_dsq_depth",
        LowerIsBetter,
        10.0,
        0.50,
        "",
        "deepest local dispatch queue the monitor saw",
        |s| monitor(s, "max_local_dsq_depth")
    ),
    metric!(
        "stall_count",
        LowerIsBetter,
        1.0,
        0.50,
        "",
        "CPUs whose runqueue clock stopped advancing (monitor)",
        |s| monitor(s, "stall_count")
    ),
    metric!(
        "total_fallback",
        LowerIsBetter,
        5.0,
        0.30,
        "",
        "sched_ext fallback dispatches (monitor event counters)",
        |s| monitor(s, "total_fallback")
    ),
    metric!(
        "total_keep_last",
        LowerIsBetter,
        5.0,
        0.30,
        "",
        "sched_ext keep-last dispatches (monitor event counters)",
        |s| monitor(s, "total_keep_last")
    ),
    metric!(
        "worst_p99_wake_latency_us",
        LowerIsBetter,
        50.0,
        0.25,
        "us",
        "largest p99 wake-to-run latency of a cgroup",
        |s| stat(s, |t| t.worst_p99_wake_latency_us)
    ),
    metric!(
        "worst_median_wake_latency_us",
        LowerIsBetter,
        20.0,
        0.25,
        "us",
        "largest median wake-to-run latency of a cgroup",
        |s| stat(s, |t| t.worst_median_wake_latency_us)
    ),
    metric!(
        "worst_wake_latency_cv",
        LowerIsBetter,
        0.10,
        0.25,
        "",
        "largest coefficient of variation of wake latencies",
        |s| stat(s, |t| t.worst_wake_latency_cv)
    ),
    metric!(
        "total_iterations",
        HigherIsBetter,
        100.0,
        0.10,
        "",
        "work units completed by all workers",
        |s| stat(s, |t| Some(t.total_iterations as f64))
    ),
    metric!(
        "worst_mean_run_delay_us",
        LowerIsBetter,
        50.0,
        0.25,
        "us",
        "largest mean runqueue wait per run (schedstat) of a cgroup",
        |s| stat(s, |t| Some(t.worst_mean_run_delay_us))
    ),
    metric!(
        "worst_run_delay_us",
        LowerIsBetter,
        100.0,
        0.50,
        "us",
        "largest total runqueue wait (schedstat) of one worker",
        |s| stat(s, |t| Some(t.worst_run_delay_us))
    ),
    metric!(
        "worst_wake_latency_tail_ratio",
        LowerIsBetter,
        0.5,
        0.25,
        "x",
        "largest p99/median wake latency ratio",
        |s| stat(s, |t| t.worst_wake_latency_tail_ratio)
    ),
    metric!(
        "worst_iterations_per_worker",
        HigherIsBetter,
        10.0,
        0.10,
        "",
        "fewest work units any one worker completed",
        |s| stat(s, |t| Some(t.worst_iterations_per_worker as f64))
    ),
    metric!(
        "worst_page_locality",
        HigherIsBetter,
        0.05,
        0.10,
        "",
        "lowest share of a worker's pages on its own NUMA node",
        |s| stat(s, |t| t.worst_page_locality)
    ),
    metric!(
        "worst_cross_node_migration_ratio",
        LowerIsBetter,
        0.05,
        0.20,
        "",
        "largest share of migrations that crossed NUMA nodes",
        |s| stat(s, |t| t.worst_cross_node_migration_ratio)
    ),
];

/// The metric called `name`.
pub fn metric(name: &str) -> Option<&'static Metric> {
    METRICS.iter().find(|m| m.name == name)
}

/// What `stats compare` judges in each phase (sidecar `phases`). Phase rows are marked by
/// these gates alone (a `--policy` sets run-level gates only).
pub static PHASE_METRICS: &[Metric<PhaseStats>] = &[
    metric!(
        "iterations_per_s",
        HigherIsBetter,
        10.0,
        0.10,
        "/s",
        "iterations per second of all workers in the phase",
        |p| Some(p.iterations_per_s)
    ),
    metric!(
        "mean_cpu_share_pct",
        HigherIsBetter,
        2.0,
        0.10,
        "%",
        "mean share of its time in the phase a worker spent on a CPU",
        |p| Some(p.mean_cpu_share_pct)
    ),
    metric!(
        "cpu_share_spread_pct",
        LowerIsBetter,
        5.0,
        0.25,
        "%",
        "largest gap between CPU shares of comparable workers in the phase",
        |p| Some(p.cpu_share_spread_pct)
    ),
    metric!(
        "mean_run_delay_us",
        LowerIsBetter,
        50.0,
        0.25,
        "us",
        "run-queue wait per slice over all workers in the phase (schedstat)",
        |p| Some(p.mean_run_delay_us)
    ),
    metric!(
        "worst_worker_run_delay_us",
        LowerIsBetter,
        100.0,
        0.50,
        "us",
        "largest run-queue wait per slice of one worker in the phase (schedstat)",
        |p| Some(p.worst_worker_run_delay_us)
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_gates_positive() {
        let mut names: Vec<_> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        assert_eq!(METRICS.len(), 19);
        assert!(METRICS
            .iter()
            .all(|m| m.default_abs > 0.0 && m.default_rel > 0.0));
        assert_eq!(
            metric("total_iterations").unwrap().polarity,
            Polarity::HigherIsBetter
        );
        assert!(metric("nope").is_none());
    }

    #[test]
    fn phase_metrics_read_their_phase() {
        let p = PhaseStats {
            iterations_per_s: 5.0,
            cpu_share_spread_pct: 7.0,
            ..Default::default()
        };
        let names: Vec<&str> = PHASE_METRICS.iter().map(|m| m.name).collect();
        assert_eq!(
            names,
            [
                "iterations_per_s",
                "mean_cpu_share_pct",
                "cpu_share_spread_pct",
                "mean_run_delay_us",
                "worst_worker_run_delay_us"
            ]
        );
        assert!(PHASE_METRICS
            .iter()
            .all(|m| m.default_abs > 0.0 && m.default_rel > 0.0));
        assert_eq!((PHASE_METRICS[0].value)(&p), Some(5.0));
        assert_eq!((PHASE_METRICS[2].value)(&p), Some(7.0));
    }

    #[test]
    fn values_come_from_the_sidecar() {
        let mut s = Sidecar::default();
        let m = metric("worst_gap_ms").unwrap();
        assert_eq!((m.value)(&s), None, "no stats recorded");
        s.stats = Some(crate::assert::ScenarioStats {
            worst_gap_ms: 123.0,
            total_iterations: 9,
            ..Default::default()
        });
        assert_eq!((m.value)(&s), Some(123.0));
        assert_eq!((metric("total_iterations").unwrap().value)(&s), Some(9.0));
        assert_eq!((metric("stall_count").unwrap().value)(&s), None);
        s.monitor = Some(serde_json::json!({"stall_count": 2}));
        assert_eq!((metric("stall_count").unwrap().value)(&s), Some(2.0));
        let j = serde_json::to_value(m).unwrap();
        assert_eq!(j["polarity"], "lower_is_better");
        assert!(j.get("value").is_none());
    }
}
