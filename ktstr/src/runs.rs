//! Reading recorded runs back: the run directories under the runs root
//! (`{target}/ktstr/{kernel}-{project_commit}/`) and the sidecars in them, for
//! `cargo ktstr stats`.
//!
//! Readers never give up on a run because one file is bad: a sidecar that does not parse is
//! reported beside the ones that do, with the file and the JSON error.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::sidecar::Sidecar;

/// Why runs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// The runs root has no run directories (or does not exist).
    #[error("no ktstr runs under {0}")]
    NoRuns(PathBuf),
    /// A named run directory does not exist.
    #[error("no run directory {0}")]
    MissingRun(PathBuf),
    /// A directory could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    /// Its name, the run key (`{kernel}-{project_commit}`).
    pub key: String,
    /// The directory.
    pub path: PathBuf,
    /// Its modification time (a sidecar written into it updates it).
    pub modified: SystemTime,
}

/// The sidecars of one run.
#[derive(Debug, Default)]
pub struct LoadedRun {
    /// Sidecars that parsed, in file-name order.
    pub sidecars: Vec<(PathBuf, Sidecar)>,
    /// Files that did not parse, with the error.
    pub corrupt: Vec<(PathBuf, String)>,
}

/// The file suffix of a sidecar.
pub const SIDECAR_SUFFIX: &str = ".ktstr.json";

/// The run directories under `root`, newest first (by modification time, then name).
/// Directories whose names start with `.` (lock directories) are not runs.
pub fn list_runs(root: &Path) -> Result<Vec<RunDir>, RunsError> {
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(RunsError::NoRuns(root.to_path_buf()))
        }
        Err(source) => {
            return Err(RunsError::Io {
                path: root.to_path_buf(),
                source,
            })
        }
    };
    let mut runs: Vec<RunDir> = rd
        .flatten()
        .filter_map(|de| {
            let key = de.file_name().to_str()?.to_owned();
            let md = de.metadata().ok()?;
            (md.is_dir() && !key.starts_with('.')).then(|| RunDir {
                key,
                path: de.path(),
                modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })
        })
        .collect();
    if runs.is_empty() {
        return Err(RunsError::NoRuns(root.to_path_buf()));
    }
    runs.sort_by(|a, b| b.modified.cmp(&a.modified).then_with(|| a.key.cmp(&b.key)));
    Ok(runs)
}

/// The run `key` under `root`.
pub fn find_run(root: &Path, key: &str) -> Result<RunDir, RunsError> {
    let path = root.join(key);
    let md = std::fs::metadata(&path).map_err(|_| RunsError::MissingRun(path.clone()))?;
    if !md.is_dir() {
        return Err(RunsError::MissingRun(path));
    }
    Ok(RunDir {
        key: key.to_owned(),
        modified: md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        path,
    })
}

/// Reads one sidecar file (a run's, or an `auto_repro` re-run's that its `repro` names);
/// `Err` says why it does not load.
pub fn read_sidecar(path: &Path) -> Result<Sidecar, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

/// Loads every `*.ktstr.json` in `dir`, verbatim.
pub fn load_run(dir: &Path) -> Result<LoadedRun, RunsError> {
    let io = |source| RunsError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .flatten()
        .map(|de| de.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(SIDECAR_SUFFIX))
        })
        .collect();
    files.sort();
    let mut run = LoadedRun::default();
    for f in files {
        match read_sidecar(&f) {
            Ok(s) => run.sidecars.push((f, s)),
            Err(e) => run.corrupt.push((f, e)),
        }
    }
    Ok(run)
}

/// A case's outcome, with `expect_err` applied (an expected failure that failed passes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It passed.
    Pass,
    /// It failed.
    Fail,
    /// It reached no verdict.
    Inconclusive,
    /// It did not run.
    Skip,
}

impl Verdict {
    /// One word: `pass`, `fail`, `inconclusive`, `skip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Skip => "skip",
        }
    }

    /// Not a pass and not a skip: something to look at or replay.
    pub fn is_failure(self) -> bool {
        matches!(self, Verdict::Fail | Verdict::Inconclusive)
    }
}

/// The verdict a sidecar records, judged as the harness judged it: an expected failure
/// with a named diagnosis passes only when its details meet it ([`crate::expect`]).
pub fn verdict(s: &Sidecar) -> Verdict {
    if s.skipped {
        Verdict::Skip
    } else if s.inconclusive {
        Verdict::Inconclusive
    } else if s.passed == s.expect_err {
        Verdict::Fail
    } else if let (false, Some(pattern)) = (s.passed, &s.expect_err_match) {
        if crate::expect::check(pattern, &s.details).is_ok() {
            Verdict::Pass
        } else {
            Verdict::Fail
        }
    } else {
        Verdict::Pass
    }
}

/// The nextest filterset that selects every case of `tests` (all scenarios, topologies and
/// kernels) and nothing else, for `replay`: case names are `{test}/…`, so `^{test}/` matches
/// exactly one test's cases. Test names come from sidecars, which are outside input: a name
/// that is not a Rust identifier (as every `#[ktstr_test]` function name is) could carry
/// filterset or regex syntax, so such names are refused and returned instead. Duplicates
/// collapse; an empty string means nothing was accepted.
pub fn replay_filterset<'a>(tests: impl IntoIterator<Item = &'a str>) -> (String, Vec<String>) {
    let mut terms = Vec::new();
    let mut refused = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for t in tests {
        if !is_identifier(t) {
            refused.push(t.to_string());
        } else if seen.insert(t) {
            terms.push(format!("test(/^{t}\\//)"));
        }
    }
    (terms.join(" | "), refused)
}

/// A Rust identifier as test names are: ASCII letter or `_`, then letters, digits, `_`
/// (not `_` alone); raw identifiers (`r#x`) are not test names.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    s != "_" && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {

    #[test]
    fn replay_filterset_anchors_each_identifier_and_refuses_the_rest() {
        assert_eq!(
            replay_filterset(["a"]),
            ("test(/^a\\//)".to_string(), vec![])
        );
        assert_eq!(
            replay_filterset(["fault_stall", "spin", "spin"]).0,
            "test(/^fault_stall\\//) | test(/^spin\\//)"
        );
        let (expr, refused) = replay_filterset(["ok", "a)|all()", "x/y", "", "_", "9a", "é"]);
        assert_eq!(expr, "test(/^ok\\//)");
        assert_eq!(refused, ["a)|all()", "x/y", "", "_", "9a", "é"]);
    }
    use super::*;

    fn sidecar(test: &str, passed: bool) -> Sidecar {
        Sidecar {
            test_name: test.into(),
            topology: "1n1l2c1t".into(),
            passed,
            ..Default::default()
        }
    }

    #[test]
    fn runs_are_listed_newest_first_and_corrupt_files_are_kept_apart() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(list_runs(root.path()), Err(RunsError::NoRuns(_))));
        assert!(matches!(
            list_runs(&root.path().join("absent")),
            Err(RunsError::NoRuns(_))
        ));
        let old = root.path().join("6.12-aaaaaaa");
        let new = root.path().join("6.12-bbbbbbb-dirty");
        std::fs::create_dir_all(root.path().join(".locks")).unwrap();
        crate::sidecar::write_atomic(&old, &sidecar("a", true)).unwrap();
        crate::sidecar::write_atomic(&new, &sidecar("b", false)).unwrap();
        std::fs::write(new.join("broken.ktstr.json"), "{ not json").unwrap();
        std::fs::write(new.join("notes.txt"), "not a sidecar").unwrap();
        let t = SystemTime::now();
        let past = std::fs::FileTimes::new().set_modified(t - std::time::Duration::from_secs(60));
        std::fs::File::open(&old).unwrap().set_times(past).unwrap();
        let runs = list_runs(root.path()).unwrap();
        let keys: Vec<_> = runs.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["6.12-bbbbbbb-dirty", "6.12-aaaaaaa"]);
        let run = load_run(&runs[0].path).unwrap();
        assert_eq!(run.sidecars.len(), 1);
        assert_eq!(run.sidecars[0].1.test_name, "b");
        assert_eq!(run.corrupt.len(), 1);
        assert!(run.corrupt[0].0.ends_with("broken.ktstr.json"));
        assert!(
            run.corrupt[0].1.contains("key must be a string"),
            "{:?}",
            run.corrupt
        );
        assert!(find_run(root.path(), "6.12-aaaaaaa").is_ok());
        assert!(matches!(
            find_run(root.path(), "nope"),
            Err(RunsError::MissingRun(_))
        ));
    }

    #[test]
    fn verdict_words() {
        let mut s = sidecar("t", true);
        assert_eq!(verdict(&s), Verdict::Pass);
        s.expect_err = true;
        assert_eq!(verdict(&s), Verdict::Fail);
        s.passed = false;
        assert_eq!(verdict(&s), Verdict::Pass);
        s.expect_err = false;
        assert_eq!(verdict(&s), Verdict::Fail);
        s.inconclusive = true;
        assert_eq!(verdict(&s), Verdict::Inconclusive);
        s.skipped = true;
        assert_eq!(verdict(&s), Verdict::Skip);
    }

    #[test]
    fn a_named_expectation_is_judged_from_the_details() {
        use crate::assert::{AssertDetail, DetailKind};
        let mut s = sidecar("fault", false);
        s.expect_err = true;
        s.expect_err_match = Some("Unfair: cgroup cg1".into());
        let d = |kind, m: &str| AssertDetail {
            kind,
            message: m.into(),
        };
        s.details = vec![d(DetailKind::Unfair, "cgroup cg1 got 26%")];
        assert_eq!(verdict(&s), Verdict::Pass);
        // Failed for another reason: the harness failed it, and so do stats and replay.
        s.details = vec![d(DetailKind::Stuck, "worker 3 stuck 4000 ms")];
        assert_eq!(verdict(&s), Verdict::Fail);
        // The right reason beside an unexpected one.
        s.details
            .insert(0, d(DetailKind::Unfair, "cgroup cg1 got 26%"));
        assert_eq!(verdict(&s), Verdict::Fail);
        // Host-side reasons carry their own kinds: a corrupt channel beside the expected
        // finding is another failure, not a match.
        s.details = vec![
            d(DetailKind::Unfair, "cgroup cg1 got 26%"),
            d(DetailKind::ResultChannel, "corrupt frame at offset 80"),
        ];
        assert_eq!(verdict(&s), Verdict::Fail);
        s.expect_err_match = Some("Unfair: cgroup cg1; allow ResultChannel".into());
        assert_eq!(verdict(&s), Verdict::Pass);
    }
}
