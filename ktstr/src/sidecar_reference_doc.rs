//! Keeps `doc/src/sidecar.md` true: each of its tables lists exactly the fields the code
//! writes for that object (top level, `durations`, `stats`).

use crate::assert::ScenarioStats;
use crate::sidecar::{Durations, Sidecar};

const PAGE: &str = include_str!("../../doc/src/sidecar.md");

/// The first-cell keys of the table rows under each `## ` heading.
fn sections() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in PAGE.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            out.push((h.trim(), Vec::new()));
        } else if let (Some(rest), Some(last)) = (line.strip_prefix("| `"), out.last_mut()) {
            if let Some((key, _)) = rest.split_once('`') {
                last.1.push(key);
            }
        }
    }
    out
}

fn keys_of<T: serde::Serialize>(v: &T) -> Vec<String> {
    let mut k: Vec<String> = serde_json::to_value(v)
        .unwrap()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn page_keys(headings: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = sections()
        .into_iter()
        .filter(|(h, _)| headings.contains(h))
        .flat_map(|(_, keys)| keys.into_iter().map(str::to_string))
        .collect();
    k.sort();
    k
}

#[test]
fn top_level_fields_match() {
    let page = page_keys(&[
        "The case",
        "The verdict",
        "The scheduler",
        "Where and when it ran",
    ]);
    assert_eq!(
        page,
        keys_of(&Sidecar::default()),
        "doc/src/sidecar.md vs Sidecar"
    );
}

#[test]
fn nested_fields_match() {
    assert_eq!(page_keys(&["`durations`"]), keys_of(&Durations::default()));
    assert_eq!(page_keys(&["`stats`"]), keys_of(&ScenarioStats::default()));
    assert_eq!(
        page_keys(&["`phases` entries"]),
        keys_of(&crate::assert::PhaseStats::default())
    );
}
