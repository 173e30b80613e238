//! Finding the workspace's ktstr test binaries: build them with `cargo test --no-run` and ask
//! each one (through the harness's hidden arguments) what it registers.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A test binary that links ktstr-harness, with its registered test names.
pub struct TestBinary {
    /// The executable.
    pub path: PathBuf,
    /// Registered `#[ktstr_test]` names.
    pub tests: Vec<String>,
}

/// Builds the workspace's test targets and returns those that answer `--ktstr-list-tests`.
pub fn ktstr_test_binaries() -> Result<Vec<TestBinary>> {
    ktstr_test_binaries_of(&["test", "--workspace", "--no-run"])
}

/// Builds test targets with `cargo ARGS --message-format=json` and returns, in the order cargo
/// reported them, those that answer `--ktstr-list-tests`.
pub fn ktstr_test_binaries_of(args: &[&str]) -> Result<Vec<TestBinary>> {
    let shown = format!("cargo {}", args.join(" "));
    let out = crate::run_tests::cargo()
        .args(args)
        .arg("--message-format=json")
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {shown}"))?;
    if !out.status.success() {
        bail!("building the test binaries failed ({shown})");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        // Only harness = false targets can be ktstr binaries; ask, and skip those that fail.
        let Ok(o) = Command::new(exe)
            .arg("--ktstr-list-tests")
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        if !o.status.success() {
            continue;
        }
        if let Ok(tests) = serde_json::from_slice::<Vec<String>>(&o.stdout) {
            bins.push(TestBinary {
                path: PathBuf::from(exe),
                tests,
            });
        }
    }
    Ok(bins)
}
