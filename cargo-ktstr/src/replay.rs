//! `cargo ktstr replay`: a nextest filterset for the tests that failed in the recorded runs,
//! printed (dry run) or run with `--exec`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use ktstr::runs;

/// Arguments of `cargo ktstr replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The runs root to read (default: {CARGO_TARGET_DIR or target}/ktstr).
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Keep only failed tests whose name contains STR (case-sensitive).
    #[arg(short = 'E', long = "filter", value_name = "STR")]
    filter: Option<String>,
    /// Run `cargo nextest run -E <expression>` instead of printing the expression.
    #[arg(long)]
    exec: bool,
}

/// Runs `replay`.
pub fn run(a: ReplayArgs) -> Result<ExitCode> {
    let root = a.dir.clone().unwrap_or_else(ktstr::sidecar::runs_root);
    let mut failed = BTreeSet::new();
    for (_, s) in crate::pool::load_pool(a.dir)? {
        // `passed` is recorded before `expect_err` is applied; a test that failed as it
        // declared it would is not a failure to replay.
        let bad = runs::verdict(&s).is_failure();
        let wanted = a.filter.as_deref().is_none_or(|f| s.test_name.contains(f));
        if bad && wanted && !s.test_name.is_empty() {
            failed.insert(s.test_name);
        }
    }
    if failed.is_empty() {
        eprintln!(
            "ktstr: no failed tests recorded under {}{}; nothing to replay",
            root.display(),
            a.filter
                .as_deref()
                .map(|f| format!(" matching {f:?}"))
                .unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (expr, refused) = runs::replay_filterset(failed.iter().map(String::as_str));
    for name in &refused {
        eprintln!(
            "ktstr: warning: a sidecar names the test {name:?}, which is not a Rust identifier \
             and so not a ktstr test; not replaying it (is the sidecar corrupt or hand-edited?)"
        );
    }
    if expr.is_empty() {
        anyhow::bail!(
            "no failed test recorded under {} has a valid name",
            root.display()
        );
    }
    if !a.exec {
        println!("{expr}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("ktstr: replaying {} failed test(s): {expr}", failed.len());
    let st = crate::run_tests::cargo()
        // Gauntlet cells are listed as ignored: without this a failed cell would not run again.
        .args(["nextest", "run", "--run-ignored", "all", "-E", &expr])
        .status()
        .context("running `cargo nextest run`")?;
    Ok(ExitCode::from(crate::run_tests::exit_byte(st)))
}
