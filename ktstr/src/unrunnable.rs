//! Cases a test binary listed as ignored because they cannot run here (no kernel, a host too
//! small for tier-1 isolation). The harness records them when `KTSTR_UNRUNNABLE_DIR` is set (one JSON file
//! per test binary); `cargo ktstr test` sets it and, after the run, says how many cases could
//! not run, why, and what to do. nextest itself only counts them among "skipped".

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The environment variable naming the directory the records go to.
pub const DIR_ENV: &str = "KTSTR_UNRUNNABLE_DIR";

/// Why a case could not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// No kernel was named, so no VM can boot.
    NoKernel,
    /// The test asks for performance mode, and this host is too small to isolate its topology.
    PerformanceMode,
}

impl Why {
    /// The reason, for a person.
    pub fn reason(self) -> &'static str {
        match self {
            Why::NoKernel => "no kernel (KTSTR_KERNEL unset, no --kernel): VM cases cannot boot",
            Why::PerformanceMode => {
                "performance_mode needs tier-1 host isolation: vCPUs + 1 host CPUs and a host LLC per virtual LLC, more than this host has"
            }
        }
    }

    /// What to do about it.
    pub fn remedy(self) -> &'static str {
        match self {
            Why::NoKernel => "pass --kernel DIR or set KTSTR_KERNEL to a bzImage or build tree",
            Why::PerformanceMode => "run them on a bigger host, or with --no-perf-mode on capped host CPUs (not isolated)",
        }
    }
}

/// One case that could not run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unrunnable {
    /// The case name.
    pub case: String,
    /// Why.
    pub why: Why,
}

/// Writes `cases` for the test binary `binary` under `dir` (replacing an earlier record).
pub fn write(dir: &Path, binary: &str, cases: &[Unrunnable]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec(cases).map_err(std::io::Error::other)?;
    std::fs::write(dir.join(format!("{binary}.json")), json)
}

/// Every record under `dir`; unreadable files are skipped (the summary is advisory).
pub fn read_all(dir: &Path) -> Vec<Unrunnable> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        if let Ok(bytes) = std::fs::read(e.path()) {
            if let Ok(mut v) = serde_json::from_slice::<Vec<Unrunnable>>(&bytes) {
                out.append(&mut v);
            }
        }
    }
    out
}

/// The end-of-run summary, `None` when every listed case could run.
pub fn summary(cases: &[Unrunnable]) -> Option<String> {
    if cases.is_empty() {
        return None;
    }
    let mut by_why: BTreeMap<Why, usize> = BTreeMap::new();
    for c in cases {
        *by_why.entry(c.why).or_default() += 1;
    }
    let mut s = format!(
        "ktstr: {} case(s) of the listed test binaries could not run and were reported as skipped:\n",
        cases.len()
    );
    for (why, n) in by_why {
        s.push_str(&format!("  {n}: {}; {}\n", why.reason(), why.remedy()));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_summarise_by_reason() {
        let d = tempfile::tempdir().unwrap();
        let c = |n: &str, why| Unrunnable {
            case: n.into(),
            why,
        };
        write(d.path(), "suite_a", &[c("a/eevdf/1n1l2c1t", Why::NoKernel)]).unwrap();
        write(
            d.path(),
            "suite_b",
            &[
                c("b/eevdf/1n1l2c1t", Why::NoKernel),
                c("p/eevdf/1n1l2c1t", Why::PerformanceMode),
            ],
        )
        .unwrap();
        std::fs::write(d.path().join("junk.json"), "not json").unwrap();
        let all = read_all(d.path());
        assert_eq!(all.len(), 3);
        let s = summary(&all).unwrap();
        assert!(s.starts_with("ktstr: 3 case(s)"), "{s}");
        assert!(
            s.contains("  2: no kernel") && s.contains("set KTSTR_KERNEL"),
            "{s}"
        );
        assert!(
            s.contains("  1: performance_mode") && s.contains("--no-perf-mode"),
            "{s}"
        );
        assert_eq!(summary(&[]), None);
        assert!(read_all(&d.path().join("missing")).is_empty());
    }
}
