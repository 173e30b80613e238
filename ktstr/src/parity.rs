//! Verdict parity between two sets of recorded cases, e.g. the KVM lane's sidecars against the
//! same cases under qemu: a scheduler's verdict must not depend on the backend that ran it.
//!
//! Two cases are the same case when their case names are equal (`test/scenario/topology`).
//! They agree when their [`Verdict`]s are equal and, for a case that failed or passed by
//! failing (`expect_err`), the kinds of their failing details are equal too: a fault case
//! that is diagnosed `SchedulerDied` on one backend and `Starved` on the other disagrees even
//! though both "pass".

use std::collections::{BTreeMap, BTreeSet};

use crate::assert::DetailKind;
use crate::runs::{verdict, Verdict};
use crate::sidecar::Sidecar;

/// What one side recorded for a case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseOutcome {
    /// The verdict, with `expect_err` applied.
    pub verdict: Verdict,
    /// The kinds of the details that recorded a failure (sorted, each once).
    pub failure_kinds: Vec<String>,
    /// The backend that ran it (shown, not compared).
    pub backend: String,
}

impl CaseOutcome {
    /// The outcome a sidecar records.
    pub fn of(s: &Sidecar) -> Self {
        // Kinds an `expect_err = "Kind: text; allow K1, K2"` pattern allows may or may not
        // appear (a stalled CPU starves the tasks parked on it if they had not run yet):
        // they are not part of the diagnosis compared.
        let allowed: Vec<&str> = s
            .expect_err_match
            .as_deref()
            .map(|p| crate::expect::Expectation::parse(p).allowed)
            .unwrap_or_default();
        let kinds: BTreeSet<String> = if s.passed {
            BTreeSet::new()
        } else {
            s.details
                .iter()
                .filter(|d| d.kind != DetailKind::Skip)
                .map(|d| format!("{:?}", d.kind))
                .filter(|k| !allowed.contains(&k.as_str()))
                .collect()
        };
        CaseOutcome {
            verdict: verdict(s),
            failure_kinds: kinds.into_iter().collect(),
            backend: s.backend.clone(),
        }
    }

    /// `pass`, or `fail [SchedulerDied]`, for tables.
    pub fn describe(&self) -> String {
        if self.failure_kinds.is_empty() {
            self.verdict.as_str().to_string()
        } else {
            format!(
                "{} [{}]",
                self.verdict.as_str(),
                self.failure_kinds.join(", ")
            )
        }
    }
}

/// One case compared across the two sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParityRow {
    /// The case name.
    pub case: String,
    /// Side A's outcome (`None`: A has no such case).
    pub a: Option<CaseOutcome>,
    /// Side B's outcome (`None`: B has no such case).
    pub b: Option<CaseOutcome>,
}

impl ParityRow {
    /// Both sides ran the case and agree (whatever backends ran them).
    pub fn agrees(&self) -> bool {
        matches!((&self.a, &self.b), (Some(a), Some(b))
            if a.verdict == b.verdict && a.failure_kinds == b.failure_kinds)
    }
}

/// Every case of side `a`, with side `b`'s outcome for it (cases only `b` has are left out:
/// `a` is the subset under test). When a side holds a case twice, the newest sidecar (by
/// timestamp) counts.
pub fn compare(a: &[Sidecar], b: &[Sidecar]) -> Vec<ParityRow> {
    let (ma, mb) = (newest_per_case(a), newest_per_case(b));
    ma.iter()
        .map(|(case, sa)| ParityRow {
            case: case.clone(),
            a: Some(CaseOutcome::of(sa)),
            b: mb.get(case).map(|sb| CaseOutcome::of(sb)),
        })
        .collect()
}

fn newest_per_case(side: &[Sidecar]) -> BTreeMap<String, &Sidecar> {
    let mut m: BTreeMap<String, &Sidecar> = BTreeMap::new();
    for s in side {
        let e = m.entry(s.case_name.clone()).or_insert(s);
        if s.timestamp > e.timestamp {
            *e = s;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assert::AssertDetail;

    fn case(name: &str, passed: bool, expect_err: bool, kinds: &[DetailKind], ts: &str) -> Sidecar {
        Sidecar {
            case_name: name.into(),
            passed,
            expect_err,
            timestamp: ts.into(),
            details: kinds
                .iter()
                .map(|&kind| AssertDetail {
                    kind,
                    message: "m".into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn equal_verdicts_and_diagnoses_agree() {
        let a = [
            case("base/s/1n1l2c1t", true, false, &[], "1"),
            case(
                "fault/s/1n1l2c1t",
                false,
                true,
                &[DetailKind::SchedulerDied],
                "1",
            ),
        ];
        let b: Vec<Sidecar> = a
            .iter()
            .map(|s| Sidecar {
                backend: "qemu-tcg".into(),
                ..s.clone()
            })
            .collect();
        let rows = compare(&a, &b);
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(ParityRow::agrees), "{rows:?}");
        assert_eq!(
            rows[1].a.as_ref().unwrap().describe(),
            "pass [SchedulerDied]"
        );
    }

    #[test]
    fn another_diagnosis_or_verdict_or_a_missing_case_disagrees() {
        let a = [
            case("fault/s/t", false, true, &[DetailKind::SchedulerDied], "1"),
            case("base/s/t", true, false, &[], "1"),
            case("only_a/s/t", true, false, &[], "1"),
        ];
        let b = [
            case("fault/s/t", false, true, &[DetailKind::Starved], "1"),
            case("base/s/t", false, false, &[DetailKind::Other], "1"),
        ];
        let rows = compare(&a, &b);
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| !r.agrees()), "{rows:?}");
        let missing = rows.iter().find(|r| r.case == "only_a/s/t").unwrap();
        assert_eq!(missing.b, None);
    }

    #[test]
    fn kinds_the_expectation_allows_are_not_compared() {
        let mut a = case(
            "f/s/t",
            false,
            true,
            &[DetailKind::Monitor, DetailKind::Starved],
            "1",
        );
        let mut b = case("f/s/t", false, true, &[DetailKind::Monitor], "1");
        assert!(!compare(std::slice::from_ref(&a), std::slice::from_ref(&b))[0].agrees());
        for s in [&mut a, &mut b] {
            s.expect_err_match =
                Some("Monitor: CPU 1 stalled; allow SchedulerDied, Starved".into());
        }
        let rows = compare(&[a.clone()], &[b]);
        assert!(rows[0].agrees(), "{rows:?}");
        assert_eq!(CaseOutcome::of(&a).failure_kinds, ["Monitor"]);
    }

    #[test]
    fn the_newest_sidecar_of_a_case_counts() {
        let a = [case("x/s/t", true, false, &[], "2026-01-02")];
        let b = [
            case("x/s/t", true, false, &[], "2026-01-03"),
            case("x/s/t", false, false, &[DetailKind::Stuck], "2026-01-01"),
        ];
        assert!(compare(&a, &b)[0].agrees());
        let b = [
            case("x/s/t", true, false, &[], "2026-01-01"),
            case("x/s/t", false, false, &[DetailKind::Stuck], "2026-01-03"),
        ];
        assert!(!compare(&a, &b)[0].agrees());
    }
}
