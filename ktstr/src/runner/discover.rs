//! Finding a scheduler binary on the host: `KTSTR_SCHEDULER`, next to the test binary, the
//! parent of its `deps/` directory, `target/debug`, `target/release`.

use std::path::{Path, PathBuf};

/// No binary was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scheduler binary {name:?} not found (looked in: {}); build it first, e.g. `cargo build -p {name}` or `cargo build --bins`, or set KTSTR_SCHEDULER=/path/to/{name}", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
pub struct DiscoverError {
    /// The binary name.
    pub name: String,
    /// Where it looked.
    pub searched: Vec<PathBuf>,
}

/// Finds scheduler binary `name`.
pub fn discover_scheduler(name: &str) -> Result<PathBuf, DiscoverError> {
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
    let exe = std::env::current_exe().unwrap_or_default();
    discover_from(name, &exe, Path::new("target"))
}

fn discover_from(name: &str, exe: &Path, target: &Path) -> Result<PathBuf, DiscoverError> {
    let mut dirs = Vec::new();
    if let Some(d) = exe.parent() {
        dirs.push(d.to_path_buf());
        if d.file_name().is_some_and(|n| n == "deps") {
            if let Some(p) = d.parent() {
                dirs.push(p.to_path_buf());
            }
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.to_path_buf());
    dirs.push(target.join("debug"));
    dirs.push(target.join("release"));
    let searched: Vec<PathBuf> = dirs.iter().map(|d| d.join(name)).collect();
    searched
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or(DiscoverError {
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
        let e = discover_from("nope", &exe, d.path()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("cargo build -p nope"), "{msg}");
        assert!(msg.contains("KTSTR_SCHEDULER"), "{msg}");
    }
}
