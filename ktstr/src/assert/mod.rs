//! Assertion thresholds ([`Assert`]), their merge chain, and the result of a test body
//! ([`AssertResult`]).
//!
//! Thresholds come from three layers, merged last-`Some`-wins:
//! [`Assert::default_checks`] → the scheduler's `assert` → the test's keys. Every field is an
//! `Option`: `None` means "not checked" (or "inherit" while merging).
//!
//! **Slow backends.** Time-based thresholds (`max_gap_ms`, `max_p99_wake_latency_ns`) are
//! multiplied by `Ctx::time_scale` when judged (1.0 on KVM, 4.0 under qemu TCG), because an
//! emulated CPU stretches every gap and wake-up. Ratios (spread, starvation, migration ratio,
//! CVs) and rates are judged unscaled: doubling the spread limit under TCG (tried) let an
//! idle-policy worker's unfairness through. [`eval`] turns worker reports into statistics and
//! findings.
//!
//! **Who is compared for the spread.** Workers of one cgroup with the same work type *and*
//! the same CPU affinity (never set, or set once to the same CPUs); a worker re-pinned mid-run
//! is compared with nobody. Workers pinned to different CPUs face different competition, so
//! their gap in off-CPU time is placement, not unfairness (under TCG, randomised affinities
//! measured up to 31% with EEVDF, against the 35% debug limit). `YieldHeavy` workers are never
//! compared: a yielder's CPU time is whatever its neighbours leave it.
//!
//! **Across cgroups** (`max_cgroup_spread_pct`): sibling leaf cgroups that ran the same number
//! of workers of one work type with the same affinity and cpuset over the same time are
//! compared by their workers' mean off-CPU time, which catches a scheduler that shortchanges
//! a whole cgroup evenly (the in-cgroup spread cannot see that).

pub mod eval;
mod phase;
#[cfg(test)]
mod reference_doc;

use std::fmt;

use serde::{Deserialize, Serialize};

/// Threshold set for one case. All 20 fields are optional; see library spec §4
/// (`max_cgroup_spread_pct` is ours, beyond the spec's 19).
///
/// Build it with the const setters so it can live in `const`/`static` items:
/// `Assert::NO_OVERRIDES.max_gap_ms(3000).check_not_starved()`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Assert {
    /// Fail when some worker made no progress (`work_units == 0`).
    pub not_starved: Option<bool>,
    /// Fail when a worker ran on a CPU outside its cgroup's cpuset.
    pub isolation: Option<bool>,
    /// Longest allowed gap between a worker's iterations, in ms.
    pub max_gap_ms: Option<u64>,
    /// Largest allowed max − min off-CPU percentage across a cgroup's workers.
    pub max_spread_pct: Option<f64>,
    /// Largest allowed gap in mean off-CPU percentage between sibling leaf cgroups that
    /// competed on equal terms (same work type, number of workers, affinity and cpuset, over
    /// the same time).
    pub max_cgroup_spread_pct: Option<f64>,
    /// Largest allowed coefficient of variation of work rate across workers.
    pub max_throughput_cv: Option<f64>,
    /// Floor on work units per second per worker.
    pub min_work_rate: Option<f64>,
    /// Ceiling on the p99 wake latency, in ns.
    pub max_p99_wake_latency_ns: Option<u64>,
    /// Ceiling on the wake latency coefficient of variation.
    pub max_wake_latency_cv: Option<f64>,
    /// Floor on iterations per second.
    pub min_iteration_rate: Option<f64>,
    /// Ceiling on migrations per iteration.
    pub max_migration_ratio: Option<f64>,
    /// Ceiling on max(nr_running)/max(1, min) across CPUs, sustained (monitor).
    pub max_imbalance_ratio: Option<f64>,
    /// Ceiling on local DSQ depth, sustained (monitor).
    pub max_local_dsq_depth: Option<u64>,
    /// Fail when the monitor sees a stall.
    pub fail_on_stall: Option<bool>,
    /// Samples (~100 ms each) a monitor violation must persist.
    pub sustained_samples: Option<u64>,
    /// Ceiling on sched_ext fallback events per second.
    pub max_fallback_rate: Option<f64>,
    /// Ceiling on sched_ext keep-last events per second.
    pub max_keep_last_rate: Option<f64>,
    /// Floor on the share of a worker's pages on its own node.
    pub min_page_locality: Option<f64>,
    /// Ceiling on cross-node migrations per migration.
    pub max_cross_node_migration_ratio: Option<f64>,
    /// Ceiling on the share of pages on memory-only (slow tier) nodes.
    pub max_slow_tier_ratio: Option<f64>,
}

/// One threshold value, as printed by `show-thresholds`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdValue {
    /// Not set by any layer: not checked.
    Unset,
    /// A boolean switch.
    Bool(bool),
    /// An integer threshold.
    Int(u64),
    /// A floating-point threshold.
    Float(f64),
}

impl fmt::Display for ThresholdValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThresholdValue::Unset => f.write_str("none"),
            ThresholdValue::Bool(b) => write!(f, "{b}"),
            ThresholdValue::Int(i) => write!(f, "{i}"),
            ThresholdValue::Float(x) => write!(f, "{x:?}"),
        }
    }
}

/// Generates the const setters, the merge and the field listing from one field table so the
/// three can never drift apart.
macro_rules! assert_fields {
    ($( $field:ident : $ty:ident => $variant:ident ),* $(,)?) => {
        impl Assert {
            $(
                #[doc = concat!("Sets `", stringify!($field), "` (const, for `static` tables).")]
                pub const fn $field(mut self, v: $ty) -> Self {
                    self.$field = Some(v);
                    self
                }
            )*

            /// Overlays `over` on `self`: every field `over` sets wins, the rest stay.
            pub const fn merge(self, over: &Assert) -> Assert {
                Assert {
                    $( $field: match over.$field {
                        Some(v) => Some(v),
                        None => self.$field,
                    }, )*
                }
            }

            /// Every field with its name, in declaration order (for `show-thresholds`).
            pub fn fields(&self) -> Vec<(&'static str, ThresholdValue)> {
                vec![$(
                    (stringify!($field), match self.$field {
                        Some(v) => ThresholdValue::$variant(v.into()),
                        None => ThresholdValue::Unset,
                    }),
                )*]
            }

            /// The names of all threshold fields, in declaration order.
            pub const FIELD_NAMES: &'static [&'static str] = &[$(stringify!($field)),*];
        }
    };
}

assert_fields! {
    not_starved: bool => Bool,
    isolation: bool => Bool,
    max_gap_ms: u64 => Int,
    max_spread_pct: f64 => Float,
    max_cgroup_spread_pct: f64 => Float,
    max_throughput_cv: f64 => Float,
    min_work_rate: f64 => Float,
    max_p99_wake_latency_ns: u64 => Int,
    max_wake_latency_cv: f64 => Float,
    min_iteration_rate: f64 => Float,
    max_migration_ratio: f64 => Float,
    max_imbalance_ratio: f64 => Float,
    max_local_dsq_depth: u64 => Int,
    fail_on_stall: bool => Bool,
    sustained_samples: u64 => Int,
    max_fallback_rate: f64 => Float,
    max_keep_last_rate: f64 => Float,
    min_page_locality: f64 => Float,
    max_cross_node_migration_ratio: f64 => Float,
    max_slow_tier_ratio: f64 => Float,
}

impl Assert {
    /// No field set: the identity of [`Assert::merge`]. Start override chains from here.
    pub const NO_OVERRIDES: Assert = Assert {
        not_starved: None,
        isolation: None,
        max_gap_ms: None,
        max_spread_pct: None,
        max_cgroup_spread_pct: None,
        max_throughput_cv: None,
        min_work_rate: None,
        max_p99_wake_latency_ns: None,
        max_wake_latency_cv: None,
        min_iteration_rate: None,
        max_migration_ratio: None,
        max_imbalance_ratio: None,
        max_local_dsq_depth: None,
        fail_on_stall: None,
        sustained_samples: None,
        max_fallback_rate: None,
        max_keep_last_rate: None,
        min_page_locality: None,
        max_cross_node_migration_ratio: None,
        max_slow_tier_ratio: None,
    };

    /// Shorthand for `.not_starved(true)`.
    pub const fn check_not_starved(self) -> Self {
        self.not_starved(true)
    }

    /// Shorthand for `.isolation(true)`.
    pub const fn check_isolation(self) -> Self {
        self.isolation(true)
    }

    /// The built-in defaults (first layer of the merge chain). Gap and spread limits are looser
    /// in debug builds of the test binary, whose workers run slower.
    pub const fn default_checks() -> Assert {
        let (gap, spread) = if cfg!(debug_assertions) {
            (3000, 35.0)
        } else {
            (2000, 15.0)
        };
        Assert::NO_OVERRIDES
            .not_starved(true)
            .isolation(true)
            .max_gap_ms(gap)
            .max_spread_pct(spread)
            .max_cgroup_spread_pct(spread)
            .max_imbalance_ratio(4.0)
            .max_local_dsq_depth(50)
            .fail_on_stall(true)
            .sustained_samples(5)
            .max_fallback_rate(200.0)
            .max_keep_last_rate(100.0)
    }

    /// The full chain: `default_checks()` → `scheduler` → `test`.
    pub const fn merged(scheduler: &Assert, test: &Assert) -> Assert {
        Assert::default_checks().merge(scheduler).merge(test)
    }
}

impl fmt::Display for Assert {
    /// One `name: value` line per field; unset fields print `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, v) in self.fields() {
            writeln!(f, "{name}: {v}")?;
        }
        Ok(())
    }
}

/// Why a detail was recorded.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DetailKind {
    /// A worker made no progress.
    Starved,
    /// A worker went too long between iterations.
    Stuck,
    /// Off-CPU time spread too wide.
    Unfair,
    /// A worker ran outside its cpuset.
    Isolation,
    /// A throughput/latency/payload check failed.
    Benchmark,
    /// Too many migrations.
    Migration,
    /// Too few pages local to the worker's node.
    PageLocality,
    /// Too many cross-node migrations.
    CrossNodeMigration,
    /// Too many pages on slow-tier nodes.
    SlowTier,
    /// A monitor check failed.
    Monitor,
    /// The scheduler exited or was ejected.
    SchedulerDied,
    /// The case was skipped.
    Skip,
    /// The VM ended without a verdict from the guest (watchdog, crash, kernel panic, a guest
    /// that powered off early).
    NoVerdict,
    /// The result channel was corrupt or its verdict unreadable: frames may have been lost.
    ResultChannel,
    /// The test binary, running as the guest's init, panicked (in the body or around it).
    GuestPanic,
    /// Anything else.
    Other,
}

/// One reason attached to a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertDetail {
    /// What kind of finding this is.
    pub kind: DetailKind,
    /// Human-readable text, one line.
    pub message: String,
}

impl AssertDetail {
    /// A detail of `kind` saying `message`.
    pub fn new(kind: DetailKind, message: impl Into<String>) -> Self {
        AssertDetail {
            kind,
            message: message.into(),
        }
    }

    /// The failure reason line `Kind: message` (what `expect_err = "Kind: text"` matches).
    pub fn reason(&self) -> String {
        format!("{:?}: {}", self.kind, self.message)
    }
}

pub use eval::{CgroupStats, ScenarioStats};
pub use phase::PhaseStats;

/// The threshold fields that are multiplied by `Ctx::time_scale` when judged (see the module
/// docs); `show-thresholds` prints their values in force.
pub const TIME_SCALED: &[&str] = &["max_gap_ms", "max_p99_wake_latency_ns"];

/// Thresholds that merge and are recorded but that no evaluator reads yet: the monitor's
/// event-counter rates (sched_ext has event counters from Linux 6.16; our kernels are older)
/// and the NUMA memory ones. `show-thresholds` and the reference page say so, rather than
/// implying they are checked.
pub const NOT_EVALUATED: &[&str] = &[
    "max_fallback_rate",
    "max_keep_last_rate",
    "min_page_locality",
    "max_cross_node_migration_ratio",
    "max_slow_tier_ratio",
];

/// One op or step boundary, as it happened (sidecar `stimulus_events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StimulusEvent {
    /// Since the scenario started.
    pub elapsed_ms: u64,
    /// `step N` / `backdrop` / `teardown`.
    pub label: String,
    /// snake_case op kind, or `step_start` / `step_end`.
    pub op_kind: String,
    /// What it did.
    pub detail: String,
    /// Work iterations collected so far (workers report when they stop, so this counts
    /// stopped workers only).
    pub total_iterations: u64,
}

/// Outcome of a test body or an assertion pass.
///
/// `merge` folds results: fail > inconclusive > skip > pass; details accumulate.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssertResult {
    /// No enabled check failed.
    pub passed: bool,
    /// The case did not run (not enough resources, contention, ...).
    pub skipped: bool,
    /// Data an enabled check needed was missing.
    pub inconclusive: bool,
    /// Reasons, failing ones first is not guaranteed.
    pub details: Vec<AssertDetail>,
    /// What the scenario measured (set by `scenario::execute_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<ScenarioStats>,
    /// Ops and step boundaries as they happened (sidecar `stimulus_events`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<StimulusEvent>,
    /// What each phase measured (sidecar `phases`; set by `scenario::execute_*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<PhaseStats>,
    /// Every payload run's metrics (sidecar `metrics`; folded in by the case runner).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<crate::payload::PayloadMetrics>,
}

impl Default for AssertResult {
    fn default() -> Self {
        Self::pass()
    }
}

impl AssertResult {
    /// A passing result with no details.
    pub fn pass() -> Self {
        AssertResult {
            passed: true,
            skipped: false,
            inconclusive: false,
            details: Vec::new(),
            stats: None,
            events: Vec::new(),
            phases: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// A failing result with one detail.
    pub fn fail(kind: DetailKind, message: impl Into<String>) -> Self {
        AssertResult {
            passed: false,
            skipped: false,
            inconclusive: false,
            details: vec![AssertDetail {
                kind,
                message: message.into(),
            }],
            stats: None,
            events: Vec::new(),
            phases: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// A skipped result (counts as passed for the verdict, recorded as a skip).
    pub fn skip(reason: impl Into<String>) -> Self {
        AssertResult {
            passed: true,
            skipped: true,
            inconclusive: false,
            details: vec![AssertDetail {
                kind: DetailKind::Skip,
                message: reason.into(),
            }],
            stats: None,
            events: Vec::new(),
            phases: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// An inconclusive result: an enabled check had no data.
    pub fn inconclusive(reason: impl Into<String>) -> Self {
        AssertResult {
            passed: true,
            skipped: false,
            inconclusive: true,
            details: vec![AssertDetail {
                kind: DetailKind::Other,
                message: reason.into(),
            }],
            stats: None,
            events: Vec::new(),
            phases: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// Adds a failing detail in place.
    pub fn push_failure(&mut self, kind: DetailKind, message: impl Into<String>) {
        self.passed = false;
        self.details.push(AssertDetail {
            kind,
            message: message.into(),
        });
    }

    /// Folds `other` into `self`: fail > inconclusive > skip > pass; details are concatenated.
    pub fn merge(mut self, other: AssertResult) -> AssertResult {
        self.passed &= other.passed;
        self.inconclusive |= other.inconclusive;
        // A skip only survives when both sides skipped or one side is an empty pass.
        self.skipped = match (self.skipped, other.skipped) {
            (true, true) => true,
            (true, false) => other.details.is_empty() && other.passed && !other.inconclusive,
            (false, true) => self.details.is_empty() && self.passed && !self.inconclusive,
            (false, false) => false,
        };
        if !self.passed {
            self.skipped = false;
            self.inconclusive = false;
        } else if self.inconclusive {
            self.skipped = false;
        }
        self.details.extend(other.details);
        if self.stats.is_none() {
            self.stats = other.stats;
        }
        self.events.extend(other.events);
        self.phases.extend(other.phases);
        self.metrics.extend(other.metrics);
        self
    }

    /// Folds in the payload runs of a case: their metrics, and a `Benchmark` failure for each
    /// failed check.
    pub fn add_payload_outcomes(&mut self, outcomes: Vec<crate::payload::PayloadOutcome>) {
        for o in outcomes {
            for f in o.failures {
                self.push_failure(DetailKind::Benchmark, f);
            }
            self.metrics.push(o.metrics);
        }
        self.metrics.sort_by_key(|m| m.payload_index);
    }

    /// Whether some detail has `kind` (negative tests use it to prove the failure's kind).
    pub fn has_kind(&self, kind: DetailKind) -> bool {
        self.details.iter().any(|d| d.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_chain_last_some_wins() {
        let sched = Assert::NO_OVERRIDES.max_gap_ms(5000).max_throughput_cv(0.5);
        let test = Assert::NO_OVERRIDES.max_gap_ms(1000).not_starved(false);
        let m = Assert::merged(&sched, &test);
        assert_eq!(m.max_gap_ms, Some(1000));
        assert_eq!(m.max_throughput_cv, Some(0.5));
        assert_eq!(m.not_starved, Some(false));
        assert_eq!(m.isolation, Some(true));
        assert_eq!(m.min_page_locality, None);
        assert_eq!(m.max_spread_pct, Assert::default_checks().max_spread_pct);
        assert_eq!(Assert::NO_OVERRIDES.merge(&m), m);
        assert_eq!(m.merge(&Assert::NO_OVERRIDES), m);
    }

    #[test]
    fn defaults_follow_build_profile() {
        let d = Assert::default_checks();
        if cfg!(debug_assertions) {
            assert_eq!((d.max_gap_ms, d.max_spread_pct), (Some(3000), Some(35.0)));
        } else {
            assert_eq!((d.max_gap_ms, d.max_spread_pct), (Some(2000), Some(15.0)));
        }
        assert_eq!(d.sustained_samples, Some(5));
        assert_eq!(d.max_fallback_rate, Some(200.0));
    }

    #[test]
    fn fields_list_all_twenty_and_print_none() {
        let f = Assert::NO_OVERRIDES.max_gap_ms(7).fields();
        assert_eq!(f.len(), 20);
        assert_eq!(Assert::FIELD_NAMES.len(), 20);
        let text = Assert::NO_OVERRIDES.max_gap_ms(7).to_string();
        assert!(text.contains("max_gap_ms: 7\n"));
        assert!(text.contains("max_spread_pct: none\n"));
    }

    #[test]
    fn result_merge_precedence() {
        let p = AssertResult::pass();
        let s = AssertResult::skip("no kvm");
        let i = AssertResult::inconclusive("no data");
        let f = AssertResult::fail(DetailKind::Unfair, "spread");
        assert!(p.clone().merge(s.clone()).skipped);
        let pi = s.clone().merge(i.clone());
        assert!(pi.inconclusive && !pi.skipped && pi.passed);
        let all = p.merge(s).merge(i).merge(f);
        assert!(!all.passed && !all.skipped && !all.inconclusive);
        assert_eq!(all.details.len(), 3);
    }

    /// A skip survives a merge only with an empty pass, from either side.
    #[test]
    fn a_skip_survives_only_an_empty_pass() {
        let s = AssertResult::skip("no kvm");
        assert!(s.clone().merge(AssertResult::pass()).skipped);
        assert!(AssertResult::pass().merge(s.clone()).skipped);
        // A pass that carries details (a note, a miss an expect_err case kept) is not empty.
        let mut noted = AssertResult::pass();
        noted.details.push(AssertDetail {
            kind: DetailKind::Other,
            message: "note".into(),
        });
        let a = s.clone().merge(noted.clone());
        assert!(a.passed && !a.skipped, "{a:?}");
        let b = noted.merge(s);
        assert!(b.passed && !b.skipped, "{b:?}");
    }

    #[test]
    fn has_kind_finds_only_details_of_that_kind() {
        assert!(!AssertResult::pass().has_kind(DetailKind::Starved));
        let f = AssertResult::fail(DetailKind::Unfair, "spread");
        assert!(f.has_kind(DetailKind::Unfair));
        assert!(!f.has_kind(DetailKind::Stuck));
    }
}
