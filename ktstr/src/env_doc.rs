//! Keeps `doc/src/environment.md` complete: every `KTSTR_*` variable the project's code reads
//! and every `KVM_LANE_*` variable the KVM lane reads has a row there.

use std::path::{Path, PathBuf};

const PAGE: &str = include_str!("../../doc/src/environment.md");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn files_under(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, ext, out);
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
}

/// Every maximal `PREFIX[A-Z0-9_]*` word in `text` that follows `lead`.
fn names(text: &str, lead: &str, prefix: &str) -> Vec<String> {
    let pat = format!("{lead}{prefix}");
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(&pat) {
        let tail = &rest[i + lead.len()..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        if end > prefix.len() {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

fn documented(name: &str) -> bool {
    PAGE.contains(&format!("| `{name}` |"))
}

#[test]
fn every_variable_the_code_reads_is_documented() {
    let mut sources = Vec::new();
    for d in [
        "ktstr/src",
        "cargo-ktstr/src",
        "ktstr-harness/src",
        "ktstr-macros/src",
    ] {
        files_under(&root().join(d), "rs", &mut sources);
    }
    assert!(sources.len() > 20, "found the sources");
    let mut missing = Vec::new();
    for f in &sources {
        let text = std::fs::read_to_string(f).unwrap();
        for n in names(&text, "\"", "KTSTR_") {
            // `KTSTR_SCHEDULER_<NAME>` is one documented family; unit tests use members of it.
            if !n.starts_with("KTSTR_SCHEDULER_") && !documented(&n) {
                missing.push(format!("{n} ({})", f.display()));
            }
        }
    }
    let lane = std::fs::read_to_string(root().join("scripts/kvm-lane")).unwrap();
    let lane_vars = names(&lane, "${", "KVM_LANE_");
    assert!(lane_vars.len() >= 5, "{lane_vars:?}");
    for n in lane_vars.iter().chain(&names(&lane, "${", "KTSTR_")) {
        if !documented(n) {
            missing.push(format!("{n} (scripts/kvm-lane)"));
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "doc/src/environment.md has no row for: {missing:?}"
    );
}
