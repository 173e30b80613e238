//! Comparing two slices of the sidecar pool (`cargo ktstr stats compare`, cli.md §3).
//!
//! Each side has filters on seven dimensions. Dimensions where the sides' filters differ
//! are *slicing* dimensions (what is being compared, e.g. kernel 6.12 against 6.13); the
//! workload dimensions that do not slice (scheduler, topology, work type), together with
//! the test and scenario, form the *pairing key* that joins a row of A to a row of B.
//! Provenance dimensions that do not slice only filter. Rows with one key on one side are
//! folded into one (mean of the passing contributors' metrics, verdict by
//! Fail > Inconclusive > Skip > Pass). Each metric of a pair is judged by a dual gate: the
//! change must reach both the registry's absolute gate and the relative gate.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::host_context::HostContext;
use crate::metrics::{Metric, Polarity, METRICS, PHASE_METRICS};
use crate::sidecar::Sidecar;

/// A filterable dimension of a sidecar row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dim {
    /// `kernel_version` (a `major.minor` filter matches the series).
    Kernel,
    /// `project_commit`.
    ProjectCommit,
    /// `kernel_commit`.
    KernelCommit,
    /// `run_source`.
    RunSource,
    /// `scheduler`.
    Scheduler,
    /// `topology` label.
    Topology,
    /// `work_type`.
    WorkType,
}

impl Dim {
    /// All seven, in flag order.
    pub const ALL: [Dim; 7] = [
        Dim::Kernel,
        Dim::ProjectCommit,
        Dim::KernelCommit,
        Dim::RunSource,
        Dim::Scheduler,
        Dim::Topology,
        Dim::WorkType,
    ];

    /// The flag name (`--kernel`, `--a-project-commit`, ...).
    pub fn flag(self) -> &'static str {
        match self {
            Dim::Kernel => "kernel",
            Dim::ProjectCommit => "project-commit",
            Dim::KernelCommit => "kernel-commit",
            Dim::RunSource => "run-source",
            Dim::Scheduler => "scheduler",
            Dim::Topology => "topology",
            Dim::WorkType => "work-type",
        }
    }

    /// Workload dimensions join pairs when they do not slice; provenance ones only filter.
    pub fn is_workload(self) -> bool {
        matches!(self, Dim::Scheduler | Dim::Topology | Dim::WorkType)
    }

    /// The row's value (`None` for an unrecorded optional value).
    pub fn value(self, s: &Sidecar) -> Option<String> {
        let known = |v: &str| (!v.is_empty() && v != "unknown").then(|| v.to_owned());
        match self {
            Dim::Kernel => known(&s.kernel_version),
            Dim::ProjectCommit => known(&s.project_commit),
            Dim::KernelCommit => s.kernel_commit.clone(),
            Dim::RunSource => known(&s.run_source),
            Dim::Scheduler => Some(s.scheduler.clone()),
            Dim::Topology => Some(s.topology.clone()),
            Dim::WorkType => s.work_type.clone(),
        }
    }

    /// Whether the recorded `row` value satisfies the filter value `want`.
    fn accepts(self, want: &str, row: &str) -> bool {
        if self == Dim::Kernel && is_series(want) {
            // `6.12` is the series: 6.12, 6.12.5, 6.12-rc3; not 6.1 or 6.120.
            return row == want
                || row
                    .strip_prefix(want)
                    .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('-'));
        }
        row == want
    }
}

/// `major.minor`: exactly two numeric segments.
fn is_series(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 2
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Filter values per dimension; an empty list means any value. Repeated values OR.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(pub BTreeMap<Dim, Vec<String>>);

impl Filters {
    /// Whether a row passes every dimension's filter. An unrecorded value never passes a
    /// non-empty filter.
    pub fn matches(&self, s: &Sidecar) -> bool {
        self.0.iter().all(|(dim, want)| {
            want.is_empty()
                || dim
                    .value(s)
                    .is_some_and(|v| want.iter().any(|w| dim.accepts(w, &v)))
        })
    }

    /// `side`'s effective filters: its own list per dimension where given, else `shared`'s.
    pub fn effective(shared: &Filters, side: &Filters) -> Filters {
        Filters(
            Dim::ALL
                .iter()
                .map(|&d| {
                    let own = side.0.get(&d).filter(|v| !v.is_empty());
                    let vals = own
                        .or_else(|| shared.0.get(&d))
                        .cloned()
                        .unwrap_or_default();
                    (d, vals)
                })
                .filter(|(_, v)| !v.is_empty())
                .collect(),
        )
    }

    /// The values on `d`, as a set (order and duplicates do not matter).
    fn set(&self, d: Dim) -> std::collections::BTreeSet<&str> {
        self.0
            .get(&d)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }
}

impl std::fmt::Display for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(any)");
        }
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(d, v)| format!("{}={}", d.flag(), v.join("|")))
            .collect();
        f.write_str(&parts.join(" "))
    }
}

pub use crate::runs::Verdict;

/// Folds a cohort's verdicts: any Fail, else any Inconclusive, else any Skip, else Pass.
fn fold_verdicts(vs: impl IntoIterator<Item = Verdict>) -> Verdict {
    let vs: Vec<Verdict> = vs.into_iter().collect();
    [Verdict::Fail, Verdict::Inconclusive, Verdict::Skip]
        .into_iter()
        .find(|v| vs.contains(v))
        .unwrap_or(Verdict::Pass)
}

/// The comparison policy (`--policy FILE`): relative gates in percent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Replaces every metric's registry `default_rel`.
    pub default_percent: Option<f64>,
    /// Per-metric overrides (keys must be `METRICS` names).
    #[serde(default)]
    pub per_metric_percent: BTreeMap<String, f64>,
}

/// Why a comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// The policy file could not be read or parsed.
    #[error("policy {path}: {why}")]
    Policy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A threshold below zero.
    #[error("{what} is negative ({value}): thresholds are percentages ≥ 0")]
    Negative {
        /// Which setting.
        what: String,
        /// Its value.
        value: f64,
    },
    /// A/B filters are identical: nothing is being compared.
    #[error("the A and B filters are the same, so there is nothing to compare\nhint: give a pair of per-side filters, e.g. --a-kernel 6.12 --b-kernel 6.13")]
    NoSlicing,
    /// One side matched no rows.
    #[error("no rows match filter {side} ({filters})\nhint: `cargo ktstr stats list-values` shows the values recorded (pass the same --dir)")]
    NoRows {
        /// `A` or `B`.
        side: char,
        /// Its effective filters.
        filters: String,
    },
    /// `--no-average` with two rows of one key on one side.
    #[error("side {side} has {} sidecars for {key}, so pairing is ambiguous without averaging: {}\nhint: drop --no-average, or narrow with more filters", paths.len(), paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// `A` or `B`.
        side: char,
        /// The pairing key.
        key: String,
        /// The clashing sidecars.
        paths: Vec<PathBuf>,
    },
}

impl Policy {
    /// `--threshold PCT`: one relative gate for every metric.
    pub fn uniform(pct: f64) -> Result<Policy, CompareError> {
        if pct < 0.0 {
            return Err(CompareError::Negative {
                what: "--threshold".into(),
                value: pct,
            });
        }
        Ok(Policy {
            default_percent: Some(pct),
            per_metric_percent: BTreeMap::new(),
        })
    }

    /// Reads and validates a policy file: no unknown fields, no negative values, and every
    /// per-metric key a registered metric.
    pub fn load(path: &std::path::Path) -> Result<Policy, CompareError> {
        let bad = |why: String| CompareError::Policy {
            path: path.to_path_buf(),
            why,
        };
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        Self::parse(&text).map_err(|e| match e {
            CompareError::Policy { why, .. } => bad(why),
            e => e,
        })
    }

    /// Parses and validates a policy file's text (see [`Policy::load`]); errors name no path.
    pub fn parse(text: &str) -> Result<Policy, CompareError> {
        let bad = |why: String| CompareError::Policy {
            path: std::path::PathBuf::new(),
            why,
        };
        let p: Policy = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if let Some(v) = p.default_percent.filter(|v| *v < 0.0) {
            return Err(CompareError::Negative {
                what: "default_percent".into(),
                value: v,
            });
        }
        for (k, &v) in &p.per_metric_percent {
            if crate::metrics::metric(k).is_none() {
                let near = crate::registry::UnknownTest::new(k, METRICS.iter().map(|m| m.name));
                let hint = if near.did_you_mean.is_empty() {
                    String::new()
                } else {
                    format!(" (did you mean {}?)", near.did_you_mean.join(", "))
                };
                return Err(bad(format!(
                    "per_metric_percent has an unknown metric {k:?}{hint}; \
                     `cargo ktstr stats list-metrics` lists them"
                )));
            }
            if v < 0.0 {
                return Err(CompareError::Negative {
                    what: format!("per_metric_percent.{k}"),
                    value: v,
                });
            }
        }
        Ok(p)
    }

    /// The relative gate of `m` as a fraction.
    pub fn rel_gate(&self, m: &Metric) -> f64 {
        self.per_metric_percent
            .get(m.name)
            .or(self.default_percent.as_ref())
            .map(|pct| pct / 100.0)
            .unwrap_or(m.default_rel)
    }
}

/// Rows of one side folded by pairing key.
#[derive(Debug, Clone)]
pub struct Row {
    /// Test, scenario and the non-slicing workload values, for display.
    pub key: String,
    /// The folded verdict.
    pub verdict: Verdict,
    /// Mean of each metric over the passing contributors.
    pub metrics: BTreeMap<&'static str, f64>,
    /// The contributing sidecars.
    pub paths: Vec<PathBuf>,
    /// A contributor's host, if any recorded one.
    pub host: Option<HostContext>,
    /// Per phase (by `step_index`): the mean of each phase metric over the passing
    /// contributors that recorded that phase.
    pub phases: BTreeMap<u16, PhaseRow>,
}

/// One phase of a [`Row`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseRow {
    /// `BASELINE` or `Step[k]`.
    pub label: String,
    /// Mean of each phase metric.
    pub metrics: BTreeMap<&'static str, f64>,
}

/// One metric of one pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The metric.
    pub metric: &'static str,
    /// A's value.
    pub a: f64,
    /// B's value.
    pub b: f64,
    /// `b - a`.
    pub delta: f64,
    /// `|delta| / |a|` (infinite when a is 0 and delta is not).
    pub rel: f64,
    /// The change passes both gates and goes the worse way.
    pub regression: bool,
    /// The change passes both gates and goes the better way.
    pub improvement: bool,
}

/// Judges every metric both rows recorded.
pub fn compare_rows(a: &Row, b: &Row, policy: &Policy) -> Vec<Finding> {
    METRICS
        .iter()
        .filter_map(|m| {
            let (&va, &vb) = (a.metrics.get(m.name)?, b.metrics.get(m.name)?);
            judge(m, va, vb, policy.rel_gate(m))
        })
        .collect()
}

/// One metric of one phase of a pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PhaseFinding {
    /// 0 = BASELINE, k = step k−1.
    pub step_index: u16,
    /// `BASELINE` or `Step[k]`.
    pub label: String,
    /// The metric's values and judgement (by [`PHASE_METRICS`]' own gates).
    pub finding: Finding,
}

/// Judges every phase metric of every phase both rows recorded, phase by phase.
pub fn compare_phases(a: &Row, b: &Row) -> Vec<PhaseFinding> {
    let mut out = Vec::new();
    for (idx, pa) in &a.phases {
        let Some(pb) = b.phases.get(idx) else {
            continue;
        };
        for m in PHASE_METRICS {
            let (Some(&va), Some(&vb)) = (pa.metrics.get(m.name), pb.metrics.get(m.name)) else {
                continue;
            };
            if let Some(finding) = judge(m, va, vb, m.default_rel) {
                out.push(PhaseFinding {
                    step_index: *idx,
                    label: pa.label.clone(),
                    finding,
                });
            }
        }
    }
    out
}

/// The dual gate: a change is significant when it reaches both the metric's absolute gate
/// and `rel_gate`; `None` when both values are zero (nothing to compare).
fn judge<S>(m: &Metric<S>, va: f64, vb: f64, rel_gate: f64) -> Option<Finding> {
    if va.abs() < 1e-9 && vb.abs() < 1e-9 {
        return None;
    }
    let delta = vb - va;
    let rel = if va == 0.0 {
        f64::INFINITY
    } else {
        delta.abs() / va.abs()
    };
    let significant = delta.abs() >= m.default_abs && rel >= rel_gate;
    let worse = match m.polarity {
        Polarity::LowerIsBetter => delta > 0.0,
        Polarity::HigherIsBetter => delta < 0.0,
    };
    Some(Finding {
        metric: m.name,
        a: va,
        b: vb,
        delta,
        rel,
        regression: significant && worse,
        improvement: significant && !worse,
    })
}

/// One judged pair.
#[derive(Debug, Clone)]
pub struct Pair {
    /// A's row.
    pub a: Row,
    /// B's row.
    pub b: Row,
    /// Run-level findings.
    pub findings: Vec<Finding>,
    /// Per-phase findings (evidence: the exit code follows the run-level ones).
    pub phases: Vec<PhaseFinding>,
}

/// The result of a comparison.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Effective filters of A and B.
    pub filters: (Filters, Filters),
    /// Dimensions where A and B differ.
    pub slicing: Vec<Dim>,
    /// Workload dimensions that join pairs.
    pub pairing: Vec<Dim>,
    /// Judged pairs.
    pub pairs: Vec<Pair>,
    /// Pairs not judged because a side is not a real pass: (key, reason).
    pub excluded: Vec<(String, String)>,
    /// Keys found only in A / only in B.
    pub unpaired: (Vec<String>, Vec<String>),
}

impl Comparison {
    /// Run-level regressions over all pairs (phase rows do not count: a short phase is
    /// noisier than the run, and `--phases-only` must not change the exit code).
    pub fn regressions(&self) -> usize {
        self.pairs
            .iter()
            .flat_map(|p| &p.findings)
            .filter(|f| f.regression)
            .count()
    }
}

/// What to compare: the pool, filters, and how.
pub struct Request<'a> {
    /// Every loaded sidecar.
    pub pool: &'a [(PathBuf, Sidecar)],
    /// Shared filters.
    pub shared: Filters,
    /// A's own filters.
    pub a: Filters,
    /// B's own filters.
    pub b: Filters,
    /// `-E`: substring of scenario, topology, scheduler and work type joined.
    pub text: Option<String>,
    /// Fold rows with one key (default); `false` is `--no-average`.
    pub average: bool,
    /// Relative gates.
    pub policy: Policy,
}

/// Runs the comparison.
pub fn compare(req: &Request) -> Result<Comparison, CompareError> {
    let fa = Filters::effective(&req.shared, &req.a);
    let fb = Filters::effective(&req.shared, &req.b);
    let slicing: Vec<Dim> = Dim::ALL
        .into_iter()
        .filter(|&d| fa.set(d) != fb.set(d))
        .collect();
    if slicing.is_empty() {
        return Err(CompareError::NoSlicing);
    }
    let pairing: Vec<Dim> = Dim::ALL
        .into_iter()
        .filter(|d| d.is_workload() && !slicing.contains(d))
        .collect();
    let text_ok = |s: &Sidecar| {
        req.text.as_deref().is_none_or(|t| {
            let joined = [
                s.scenario.as_str(),
                s.topology.as_str(),
                s.scheduler.as_str(),
                s.work_type.as_deref().unwrap_or(""),
            ]
            .join(" ");
            joined.contains(t)
        })
    };
    let side = |name: char, f: &Filters| -> Result<BTreeMap<String, Row>, CompareError> {
        let mut groups: BTreeMap<String, Vec<&(PathBuf, Sidecar)>> = BTreeMap::new();
        for entry in req.pool.iter().filter(|(_, s)| f.matches(s) && text_ok(s)) {
            let s = &entry.1;
            let mut key = format!("{}/{}", s.test_name, s.scenario);
            for d in &pairing {
                key.push_str(&format!(
                    " {}={}",
                    d.flag(),
                    d.value(s).unwrap_or("-".into())
                ));
            }
            groups.entry(key).or_default().push(entry);
        }
        if groups.is_empty() {
            return Err(CompareError::NoRows {
                side: name,
                filters: f.to_string(),
            });
        }
        groups
            .into_iter()
            .map(|(key, members)| {
                if !req.average && members.len() > 1 {
                    return Err(CompareError::Ambiguous {
                        side: name,
                        key,
                        paths: members.iter().map(|(p, _)| p.clone()).collect(),
                    });
                }
                let row = fold(key.clone(), &members);
                Ok((key, row))
            })
            .collect()
    };
    let mut rows_a = side('A', &fa)?;
    let mut rows_b = side('B', &fb)?;
    let mut cmp = Comparison {
        slicing,
        pairing,
        ..Default::default()
    };
    let keys: Vec<String> = rows_a.keys().cloned().collect();
    for key in keys {
        let Some(b) = rows_b.remove(&key) else {
            continue;
        };
        let a = rows_a.remove(&key).expect("key listed from rows_a");
        if a.verdict != Verdict::Pass || b.verdict != Verdict::Pass {
            cmp.excluded.push((
                key,
                format!(
                    "A is {:?}, B is {:?}: only passing pairs are compared",
                    a.verdict, b.verdict
                ),
            ));
            continue;
        }
        let findings = compare_rows(&a, &b, &req.policy);
        let phases = compare_phases(&a, &b);
        cmp.pairs.push(Pair {
            a,
            b,
            findings,
            phases,
        });
    }
    cmp.unpaired = (rows_a.into_keys().collect(), rows_b.into_keys().collect());
    cmp.filters = (fa, fb);
    Ok(cmp)
}

/// Folds the sidecars of one key into one row.
fn fold(key: String, members: &[&(PathBuf, Sidecar)]) -> Row {
    let verdict = fold_verdicts(members.iter().map(|(_, s)| crate::runs::verdict(s)));
    let passing: Vec<&Sidecar> = members
        .iter()
        .map(|(_, s)| s)
        .filter(|s| crate::runs::verdict(s) == Verdict::Pass)
        .collect();
    let metrics = METRICS
        .iter()
        .filter_map(|m| {
            let vals: Vec<f64> = passing.iter().filter_map(|s| (m.value)(s)).collect();
            (!vals.is_empty()).then(|| (m.name, vals.iter().sum::<f64>() / vals.len() as f64))
        })
        .collect();
    Row {
        key,
        verdict,
        metrics,
        paths: members.iter().map(|(p, _)| p.clone()).collect(),
        host: members.iter().find_map(|(_, s)| s.host.clone()),
        phases: fold_phases(&passing),
    }
}

/// The mean of each phase metric per `step_index` over `sidecars`. A body that ran several
/// scenarios has several phases of one index; the first counts.
fn fold_phases(sidecars: &[&Sidecar]) -> BTreeMap<u16, PhaseRow> {
    let mut sums: BTreeMap<u16, (String, BTreeMap<&'static str, Vec<f64>>)> = BTreeMap::new();
    for s in sidecars {
        let mut seen = std::collections::BTreeSet::new();
        for p in s.phases.iter().filter(|p| seen.insert(p.step_index)) {
            let entry = sums
                .entry(p.step_index)
                .or_insert_with(|| (p.label.clone(), BTreeMap::new()));
            for m in PHASE_METRICS {
                if let Some(v) = (m.value)(p) {
                    entry.1.entry(m.name).or_default().push(v);
                }
            }
        }
    }
    sums.into_iter()
        .map(|(idx, (label, vals))| {
            let metrics = vals
                .into_iter()
                .map(|(k, v)| (k, v.iter().sum::<f64>() / v.len() as f64))
                .collect();
            (idx, PhaseRow { label, metrics })
        })
        .collect()
}

/// Host fields that differ between `a` and `b`: (field, a's value, b's value), with each
/// sched tunable as its own field.
pub fn host_diff(a: &HostContext, b: &HostContext) -> Vec<(String, String, String)> {
    let flat = |h: &HostContext| -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(h) {
            for (k, v) in m {
                match v {
                    serde_json::Value::Object(inner) => {
                        for (ik, iv) in inner {
                            out.insert(format!("{k}.{ik}"), show(&iv));
                        }
                    }
                    v => {
                        out.insert(k, show(&v));
                    }
                }
            }
        }
        out
    };
    fn show(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            v => v.to_string(),
        }
    }
    let (fa, fb) = (flat(a), flat(b));
    let mut keys: Vec<&String> = fa.keys().chain(fb.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let va = fa.get(k).cloned().unwrap_or_else(|| "-".into());
            let vb = fb.get(k).cloned().unwrap_or_else(|| "-".into());
            (va != vb).then(|| (k.clone(), va, vb))
        })
        .collect()
}

#[cfg(test)]
mod tests;
