//! Finding a scheduler binary on the host: `KTSTR_SCHEDULER`; next to the test binary; else
//! the newest of the target directory's profile builds (the parent of `deps/`, `release/`,
//! `debug/`, under the test binary's target dir and `$CARGO_TARGET_DIR` or `./target`).
//!
//! Deviation from the spec's fixed order (`deps/..` → `target/debug` → `target/release`): among
//! the profile directories the most recently built binary wins, so a fresh `cargo build
//! --release` (much faster to load under TCG) is used even when a stale debug build sits next to
//! the debug test binary, and vice versa.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Why no scheduler binary could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoverError {
    /// No binary was found.
    #[error("scheduler binary {name:?} not found (looked in: {}); build it first: `cargo build --release --bin {name}` (or `cargo build -p <its package>`), or set {}=/path/to/{name}", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "), override_var(.name))]
    NotFound {
        /// The binary name.
        name: String,
        /// Where it looked.
        searched: Vec<PathBuf>,
    },
    /// An override variable names a path that is not a file.
    #[error("{var}={} is not a file", .path.display())]
    OverrideMissing {
        /// The variable.
        var: String,
        /// Its value.
        path: PathBuf,
    },
    /// `KTSTR_SCHEDULER` was set while the test binary declares several schedulers.
    #[error("KTSTR_SCHEDULER={} would replace all {} schedulers this test binary declares ({}); set one variable per scheduler instead ({})", .path.display(), .declared.len(), .declared.join(", "), .declared.iter().map(|d| override_var(d)).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// Its value.
        path: PathBuf,
        /// The declared scheduler binaries.
        declared: Vec<String>,
    },
}

/// The variable that overrides scheduler binary `name` alone: `KTSTR_SCHEDULER_` and the name
/// in upper case with every other character than a letter or digit as `_`
/// (`scx_simple` → `KTSTR_SCHEDULER_SCX_SIMPLE`).
pub fn override_var(name: &str) -> String {
    let tail: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("KTSTR_SCHEDULER_{tail}")
}

/// The scheduler binaries the running test binary declares by name (for [`discover_scheduler`]).
pub fn declared_binaries() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = crate::registry::KTSTR_SCHEDULERS
        .iter()
        .filter_map(|s| match s.binary {
            crate::registry::SchedulerBinary::Discover(b) => Some(b),
            _ => None,
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Finds scheduler binary `name` for the running executable.
pub fn discover_scheduler(name: &str) -> Result<PathBuf, DiscoverError> {
    let exe = std::env::current_exe().unwrap_or_default();
    discover_scheduler_for(name, &exe, &declared_binaries())
}

/// Finds scheduler binary `name` as if the executable at `exe`, which declares the scheduler
/// binaries `declared`, were looking (`cargo ktstr` uses the test binaries' paths).
///
/// Order: `KTSTR_SCHEDULER_<NAME>`; `KTSTR_SCHEDULER`, only when `declared` holds at most
/// one binary (otherwise it would silently run one scheduler under every declared name);
/// then the build directories.
pub fn discover_scheduler_for(
    name: &str,
    exe: &Path,
    declared: &[&str],
) -> Result<PathBuf, DiscoverError> {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(p) = from_overrides(name, declared, get)? {
        return Ok(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    discover_from(name, exe, &target)
}

/// The override that applies to `name`, if any, with `get` reading the environment.
fn from_overrides(
    name: &str,
    declared: &[&str],
    get: impl Fn(&str) -> Option<String>,
) -> Result<Option<PathBuf>, DiscoverError> {
    let file = |var: String, p: String| {
        let path = PathBuf::from(p);
        if path.is_file() {
            Ok(Some(path))
        } else {
            Err(DiscoverError::OverrideMissing { var, path })
        }
    };
    let var = override_var(name);
    if let Some(p) = get(&var) {
        return file(var, p);
    }
    if let Some(p) = get("KTSTR_SCHEDULER") {
        let others = declared.iter().any(|d| *d != name);
        if others {
            return Err(DiscoverError::Ambiguous {
                path: PathBuf::from(p),
                declared: declared.iter().map(|d| d.to_string()).collect(),
            });
        }
        return file("KTSTR_SCHEDULER".into(), p);
    }
    Ok(None)
}

fn mtime(p: &Path) -> SystemTime {
    p.metadata()
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn discover_from(name: &str, exe: &Path, target: &Path) -> Result<PathBuf, DiscoverError> {
    let mut sibling = None;
    let mut profiles = Vec::new();
    if let Some(d) = exe.parent() {
        if d.file_name().is_some_and(|n| n == "deps") {
            if let Some(profile) = d.parent() {
                if let Some(root) = profile.parent() {
                    profiles.push(root.join("release"));
                }
                profiles.push(profile.to_path_buf());
            }
        } else {
            sibling = Some(d.join(name));
            // A binary in target/PROFILE/ (cargo-ktstr itself): its target dir too.
            if let Some(root) = d.parent() {
                profiles.push(root.join("release"));
                profiles.push(root.join("debug"));
            }
        }
    }
    profiles.push(target.join("release"));
    profiles.push(target.join("debug"));
    let mut searched: Vec<PathBuf> = sibling.iter().cloned().collect();
    for p in profiles.iter().map(|d| d.join(name)) {
        if !searched.contains(&p) {
            searched.push(p);
        }
    }
    // Newest build wins; on a tie the earlier candidate (the sibling, then release). The
    // sibling takes part like any build: a stale debug binary beside a bin-target test binary
    // must not shadow the fresh release build the autobuild accepted as current.
    let mut best: Option<(&PathBuf, SystemTime)> = None;
    for p in searched.iter().filter(|p| p.is_file()) {
        let t = mtime(p);
        if best.is_none_or(|(_, bt)| t > bt) {
            best = Some((p, t));
        }
    }
    best.map(|(p, _)| p.clone()).ok_or(DiscoverError::NotFound {
        name: name.into(),
        searched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_siblings_and_the_parent_of_deps() {
        let d = tempfile::tempdir().unwrap();
        let deps = d.path().join("debug/deps");
        std::fs::create_dir_all(&deps).unwrap();
        std::fs::write(d.path().join("debug/scx_x"), b"").unwrap();
        let exe = deps.join("suite-123");
        assert_eq!(
            discover_from("scx_x", &exe, d.path()).unwrap(),
            d.path().join("debug/scx_x")
        );
        // A newer release build wins over the debug one.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir_all(d.path().join("release")).unwrap();
        std::fs::write(d.path().join("release/scx_x"), b"").unwrap();
        assert_eq!(
            discover_from("scx_x", &exe, d.path()).unwrap(),
            d.path().join("release/scx_x")
        );
        // A binary outside deps/ (a bin target) finds its sibling, but not a stale one over
        // a newer build.
        let bin_exe = d.path().join("debug/fixtures");
        std::fs::write(d.path().join("debug/scx_y"), b"").unwrap();
        assert_eq!(
            discover_from("scx_y", &bin_exe, d.path()).unwrap(),
            d.path().join("debug/scx_y")
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.path().join("release/scx_y"), b"").unwrap();
        assert_eq!(
            discover_from("scx_y", &bin_exe, d.path()).unwrap(),
            d.path().join("release/scx_y")
        );
        let e = discover_from("nope", &exe, d.path()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cargo build --release --bin nope"), "{msg}");
        assert!(msg.contains("KTSTR_SCHEDULER_NOPE=/path/to/nope"), "{msg}");
    }

    #[test]
    fn overrides_apply_per_scheduler_and_the_global_one_only_alone() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("scx_qmap");
        std::fs::write(&bin, b"").unwrap();
        let path = bin.display().to_string();
        let env = |pairs: Vec<(&'static str, String)>| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        assert_eq!(
            override_var("scx-simple.v2"),
            "KTSTR_SCHEDULER_SCX_SIMPLE_V2"
        );
        // Nothing set: no override.
        assert_eq!(
            from_overrides("scx_a", &["scx_a"], env(vec![])).unwrap(),
            None
        );
        // The per-scheduler variable applies to its scheduler only.
        let e = env(vec![("KTSTR_SCHEDULER_SCX_A", path.clone())]);
        assert_eq!(
            from_overrides("scx_a", &["scx_a", "scx_b"], &e).unwrap(),
            Some(bin.clone())
        );
        assert_eq!(
            from_overrides("scx_b", &["scx_a", "scx_b"], &e).unwrap(),
            None
        );
        // KTSTR_SCHEDULER alone: fine with one declared scheduler, an error with two.
        let g = env(vec![("KTSTR_SCHEDULER", path.clone())]);
        assert_eq!(
            from_overrides("scx_a", &["scx_a"], &g).unwrap(),
            Some(bin.clone())
        );
        let err = from_overrides("scx_a", &["scx_a", "scx_b"], &g)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("KTSTR_SCHEDULER_SCX_A, KTSTR_SCHEDULER_SCX_B"),
            "{err}"
        );
        // The per-scheduler variable wins over the global one.
        let both = env(vec![
            ("KTSTR_SCHEDULER", "/nope".into()),
            ("KTSTR_SCHEDULER_SCX_B", path.clone()),
        ]);
        assert_eq!(
            from_overrides("scx_b", &["scx_a", "scx_b"], &both).unwrap(),
            Some(bin)
        );
        // A path that is not a file names the variable.
        let bad = env(vec![("KTSTR_SCHEDULER_SCX_A", "/no/such".into())]);
        let err = from_overrides("scx_a", &["scx_a"], &bad)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("KTSTR_SCHEDULER_SCX_A=/no/such"), "{err}");
    }
}
