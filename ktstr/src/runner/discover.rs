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

/// No binary was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scheduler binary {name:?} not found (looked in: {}); build it first: `cargo build --release --bin {name}` (or `cargo build -p <its package>`), or set KTSTR_SCHEDULER=/path/to/{name}", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
pub struct DiscoverError {
    /// The binary name.
    pub name: String,
    /// Where it looked.
    pub searched: Vec<PathBuf>,
}

/// Finds scheduler binary `name` for the running executable.
pub fn discover_scheduler(name: &str) -> Result<PathBuf, DiscoverError> {
    let exe = std::env::current_exe().unwrap_or_default();
    discover_scheduler_for(name, &exe)
}

/// Finds scheduler binary `name` as if the executable at `exe` were looking (`cargo ktstr`
/// uses the test binaries' paths).
pub fn discover_scheduler_for(name: &str, exe: &Path) -> Result<PathBuf, DiscoverError> {
    if let Ok(p) = std::env::var("KTSTR_SCHEDULER") {
        if !p.is_empty() {
            let p = PathBuf::from(p);
            if p.is_file() {
                return Ok(p);
            }
            return Err(DiscoverError {
                name: name.into(),
                searched: vec![p],
            });
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    discover_from(name, exe, &target)
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
    if let Some(s) = sibling.filter(|s| s.is_file()) {
        return Ok(s);
    }
    // Newest build wins; on a tie the earlier candidate (release first).
    let mut best: Option<(&PathBuf, SystemTime)> = None;
    for p in searched.iter().filter(|p| p.is_file()) {
        let t = mtime(p);
        if best.is_none_or(|(_, bt)| t > bt) {
            best = Some((p, t));
        }
    }
    best.map(|(p, _)| p.clone()).ok_or(DiscoverError {
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
        let e = discover_from("nope", &exe, d.path()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cargo build --release --bin nope"), "{msg}");
        assert!(msg.contains("KTSTR_SCHEDULER"), "{msg}");
    }
}
