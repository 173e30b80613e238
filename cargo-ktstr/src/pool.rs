//! The recorded runs a command reads (`stats`, `compare`, `replay`): where they are, and
//! loading them with a warning for every sidecar that does not parse.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ktstr::runs::{self, LoadedRun, RunsError};
// The runs root is the sidecar writer's own rule, so what a test run wrote is what these
// commands read.
use ktstr::sidecar::{runs_root, Sidecar};

/// The error for a runs root without runs, with what to do about it.
pub(crate) fn no_runs(e: RunsError) -> anyhow::Error {
    match e {
        RunsError::NoRuns(root) => anyhow::anyhow!(
            "no ktstr runs under {}\nhint: run the tests first (cargo ktstr test, or cargo \
             nextest run); set CARGO_TARGET_DIR if your target directory is elsewhere",
            root.display()
        ),
        e => e.into(),
    }
}

/// Loads a run and warns (stderr) about sidecars that did not parse.
pub(crate) fn load(dir: &Path) -> Result<LoadedRun> {
    let run = runs::load_run(dir)?;
    for (p, e) in &run.corrupt {
        eprintln!("warning: {} is not a readable sidecar: {e}", p.display());
    }
    Ok(run)
}

/// Every sidecar of every run under `dir` (default: the runs root). Rows from a root other
/// than the default are archived runs: their run source reads `archive`.
pub(crate) fn load_pool(dir: Option<PathBuf>) -> Result<Vec<(PathBuf, Sidecar)>> {
    let default = runs_root();
    let root = dir.clone().unwrap_or_else(|| default.clone());
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let archive = dir.is_some_and(|d| canon(&d) != canon(&default));
    let mut pool = Vec::new();
    for r in runs::list_runs(&root).map_err(no_runs)? {
        for (p, mut s) in load(&r.path)?.sidecars {
            if archive {
                s.run_source = "archive".into();
            }
            pool.push((p, s));
        }
    }
    Ok(pool)
}
