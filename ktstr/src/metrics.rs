//! The `METRICS` registry: every run-level metric ktstr compares across runs, with its
//! polarity and default significance gates (library spec §6). One source of truth for
//! `cargo ktstr stats list-metrics`, comparison and policy keys.
//!
//! A metric reads its value from a sidecar. Monitor-derived metrics (imbalance, DSQ depth,
//! stalls, fallback and keep-last counts) and the NUMA ones read `None` until that
//! telemetry exists.

use serde::Serialize;

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

/// One registered metric.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Metric {
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
    /// Reads the value from a sidecar (`None`: not recorded).
    #[serde(skip)]
    pub value: fn(&Sidecar) -> Option<f64>,
}

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
