//! Keeps `doc/src/reference.md` true: every threshold key with the code's default (as this
//! debug test build sees it) and every failure kind has a row there.

use super::{Assert, DetailKind, ThresholdValue};

const PAGE: &str = include_str!("../../../doc/src/reference.md");

/// The page's table row for `key`, if any.
fn row(key: &str) -> Option<&'static str> {
    let prefix = format!("| `{key}` |");
    PAGE.lines().find(|l| l.starts_with(&prefix))
}

#[test]
fn every_threshold_has_a_row_with_its_default() {
    let defaults = Assert::default_checks();
    for (name, value) in defaults.fields() {
        let r = row(name).unwrap_or_else(|| panic!("doc/src/reference.md has no row for {name}"));
        let cell = r.split('|').nth(2).unwrap_or_default().trim();
        let want = match value {
            ThresholdValue::Unset => "none".to_string(),
            ThresholdValue::Bool(b) => b.to_string(),
            ThresholdValue::Int(n) => n.to_string(),
            ThresholdValue::Float(f) => format!("{f}"),
        };
        assert_eq!(cell, want, "doc/src/reference.md: default of {name}");
    }
    assert_eq!(Assert::FIELD_NAMES.len(), defaults.fields().len());
}

#[test]
fn the_page_and_the_code_agree_on_what_is_not_evaluated() {
    for name in Assert::FIELD_NAMES {
        let r = row(name).unwrap();
        assert_eq!(
            r.contains("not evaluated yet"),
            super::NOT_EVALUATED.contains(name),
            "doc/src/reference.md row of {name} vs assert::NOT_EVALUATED"
        );
    }
}

#[test]
fn every_failure_kind_has_a_row() {
    // Exhaustive on purpose: a new kind does not compile until it is listed here (and then the
    // page must have it).
    let name = |k: DetailKind| match k {
        DetailKind::Starved
        | DetailKind::Stuck
        | DetailKind::Unfair
        | DetailKind::Isolation
        | DetailKind::Benchmark
        | DetailKind::Migration
        | DetailKind::PageLocality
        | DetailKind::CrossNodeMigration
        | DetailKind::SlowTier
        | DetailKind::Monitor
        | DetailKind::SchedulerDied
        | DetailKind::Skip
        | DetailKind::NoVerdict
        | DetailKind::ResultChannel
        | DetailKind::GuestPanic
        | DetailKind::Other => format!("{k:?}"),
    };
    for k in [
        DetailKind::Starved,
        DetailKind::Stuck,
        DetailKind::Unfair,
        DetailKind::Isolation,
        DetailKind::Benchmark,
        DetailKind::Migration,
        DetailKind::PageLocality,
        DetailKind::CrossNodeMigration,
        DetailKind::SlowTier,
        DetailKind::Monitor,
        DetailKind::SchedulerDied,
        DetailKind::Skip,
        DetailKind::NoVerdict,
        DetailKind::ResultChannel,
        DetailKind::GuestPanic,
        DetailKind::Other,
    ] {
        let n = name(k);
        assert!(
            row(&n).is_some(),
            "doc/src/reference.md has no row for kind {n}"
        );
    }
}
