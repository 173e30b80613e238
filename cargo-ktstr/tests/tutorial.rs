//! Runs `doc/src/tutorial.md` as written: its `<!-- run -->` shell blocks and its
//! `<!-- file: PATH -->` files, in order, in a temporary directory, against this checkout. The
//! crate it makes lives outside the workspace, so this is also the "fresh crate" check: it
//! must build and pass its VM cases.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const PAGE: &str = include_str!("../../doc/src/tutorial.md");

/// One bash script: the run blocks as they are, the file blocks as here-documents written
/// under `$TUTORIAL_ROOT` (the shell's `cd`s do not move them), `/path/to/ktstr` as `repo`.
fn script(page: &str, repo: &Path) -> String {
    let mut out = String::from("set -euo pipefail\ncd \"$TUTORIAL_ROOT\"\n");
    let mut pending: Option<Option<String>> = None; // Some(None): run; Some(Some(p)): file
    let mut block: Option<Vec<&str>> = None;
    for line in page.lines() {
        if let Some(b) = block.as_mut() {
            if line.starts_with("```") {
                let body = b.join("\n");
                match pending.take() {
                    Some(None) => out.push_str(&format!("{body}\n")),
                    Some(Some(path)) => out.push_str(&format!(
                        "mkdir -p \"$(dirname \"$TUTORIAL_ROOT/{path}\")\"\ncat > \"$TUTORIAL_ROOT/{path}\" <<'KTSTR_TUTORIAL_EOF'\n{}\nKTSTR_TUTORIAL_EOF\n",
                        body.replace("/path/to/ktstr", &repo.display().to_string())
                    )),
                    None => {}
                }
                block = None;
            } else {
                b.push(line);
            }
            continue;
        }
        if line.trim() == "<!-- run -->" {
            pending = Some(None);
        } else if let Some(p) = line
            .trim()
            .strip_prefix("<!-- file: ")
            .and_then(|r| r.strip_suffix(" -->"))
        {
            pending = Some(Some(p.to_string()));
        } else if line.starts_with("```") {
            block = Some(Vec::new());
        }
    }
    out
}

#[test]
fn the_script_holds_every_step_in_order() {
    let s = script(PAGE, Path::new("/repo"));
    let at = |needle: &str| {
        s.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from:\n{s}"))
    };
    assert!(at("cargo new --lib my-sched-tests") < at("my-sched-tests/Cargo.toml"));
    assert!(at("my-sched-tests/Cargo.toml") < at("my-sched-tests/tests/my_sched.rs"));
    assert!(at("my-sched-tests/tests/my_sched.rs") < at("cargo nextest run"));
    assert!(s.contains("ktstr = { path = \"/repo/ktstr\" }"), "{s}");
    assert!(!s.contains("/path/to/ktstr"), "{s}");
}

#[test]
fn the_tutorial_builds_a_fresh_crate_and_passes_its_cases() {
    let (Some(kernel), true) = (common::kernel(), common::qemu()) else {
        return;
    };
    let repo: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let root = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("-c").arg(script(PAGE, &repo));
    // A clean environment for the inner cargo and nextest: none of the outer run's variables.
    for (k, _) in std::env::vars() {
        if k.starts_with("NEXTEST") || (k.starts_with("CARGO") && k != "CARGO_HOME") {
            cmd.env_remove(k);
        }
    }
    let o = cmd
        .env("TUTORIAL_ROOT", root.path())
        .env("KTSTR_DIR", &repo)
        .env("KTSTR_KERNEL", &kernel)
        // Reuse this checkout's build and its downloaded crates.
        .env("CARGO_TARGET_DIR", repo.join("target"))
        .env("CARGO_NET_OFFLINE", "true")
        .env("NEXTEST_HIDE_PROGRESS_BAR", "1")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    for case in ["steady/scx-demo/1n2l2c1t", "steady_baseline/eevdf/1n2l2c1t"] {
        let passed = text
            .lines()
            .any(|l| l.trim_start().starts_with("PASS") && l.ends_with(case));
        assert!(passed, "{case} did not pass:\n{text}");
    }
}
