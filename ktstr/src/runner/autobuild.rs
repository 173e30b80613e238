//! Building a declared scheduler before its first case: when the binary is missing or older
//! than its package's sources, and a package of the test's workspace builds it, `cargo build`
//! runs (once: cargo's own lock serialises concurrent cases, and later ones find it fresh).
//! So `cargo nextest run` on a clean checkout needs no manual build of the schedulers.
//!
//! Without cargo (the test binaries copied elsewhere, as the KVM lane does) or outside a
//! workspace, nothing happens and discovery reports what it finds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// Why a scheduler could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("building scheduler {name} failed (`{cmd}`):\n{tail}")]
pub struct AutoBuildError {
    /// The binary.
    pub name: String,
    /// The command.
    pub cmd: String,
    /// The end of cargo's output.
    pub tail: String,
}

/// The workspace package with a binary target `name`: (package name, its directory).
fn package_of(metadata: &serde_json::Value, name: &str) -> Option<(String, PathBuf)> {
    metadata["packages"].as_array()?.iter().find_map(|p| {
        let has = p["targets"].as_array()?.iter().any(|t| {
            t["name"] == name
                && t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "bin"))
        });
        let dir = Path::new(p["manifest_path"].as_str()?)
            .parent()?
            .to_path_buf();
        has.then(|| (p["name"].as_str().unwrap_or_default().to_string(), dir))
    })
}

/// The newest modification time of the files under `dir`, skipping `target/` and hidden
/// directories.
fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return newest;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        let t = if p.is_dir() {
            if name == "target" || name.starts_with('.') {
                continue;
            }
            newest_source(&p)
        } else {
            e.metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        newest = newest.max(t);
    }
    newest
}

/// `target/` and the cargo profile arguments of a test binary at `exe`
/// (`target/debug/deps/x` → (`target`, no flag); `target/release/deps/x` → `--release`).
fn profile_of(exe: &Path) -> Option<(PathBuf, PathBuf, Vec<String>)> {
    let deps = exe
        .parent()
        .filter(|d| d.file_name().is_some_and(|n| n == "deps"))?;
    let profile_dir = deps.parent()?;
    let target = profile_dir.parent()?.to_path_buf();
    let profile = profile_dir.file_name()?.to_string_lossy().into_owned();
    let args = match profile.as_str() {
        "debug" => vec![],
        "release" => vec!["--release".to_string()],
        other => vec!["--profile".to_string(), other.to_string()],
    };
    Some((target, profile_dir.to_path_buf(), args))
}

/// Whether the test binary's target directory is this workspace's: the one cargo builds into
/// (`target_directory`), or one inside the workspace (cargo-llvm-cov's
/// `target/llvm-cov-target`). A nextest archive extracted elsewhere (`--archive-file` with
/// `--workspace-remap`, another machine) is neither: its schedulers came in the archive, and
/// building them there would need a toolchain the far side may not have, and would race the
/// other partitions.
fn built_here(target: &Path, meta: &serde_json::Value, workspace_dir: &Path) -> bool {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let target = canon(target);
    let cargo_target = meta["target_directory"]
        .as_str()
        .map(|t| canon(Path::new(t)));
    cargo_target.as_deref() == Some(target.as_path()) || target.starts_with(canon(workspace_dir))
}

/// Builds scheduler binary `name` for the test binary `exe` when it is missing or stale and
/// the workspace (of `workspace_dir`) has it; returns whether it ran cargo. `cargo` is the
/// cargo to run (`$CARGO` under cargo and nextest).
pub fn refresh(
    name: &str,
    exe: &Path,
    workspace_dir: &Path,
    cargo: &str,
) -> Result<bool, AutoBuildError> {
    let Some((target, profile_dir, profile_args)) = profile_of(exe) else {
        return Ok(false);
    };
    let Ok(out) = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(workspace_dir)
        .output()
    else {
        return Ok(false); // no cargo here
    };
    if !out.status.success() {
        return Ok(false); // not a workspace
    }
    let Ok(meta) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Ok(false);
    };
    if !built_here(&target, &meta, workspace_dir) {
        return Ok(false);
    }
    let Some((package, dir)) = package_of(&meta, name) else {
        return Ok(false);
    };
    // Any profile's build that is newer than the sources will do (discovery takes the newest):
    // a fresh release build made by hand is not rebuilt in debug.
    let newest = newest_source(&dir);
    let builds: Vec<SystemTime> = [
        profile_dir.clone(),
        target.join("release"),
        target.join("debug"),
    ]
    .iter()
    .filter_map(|d| d.join(name).metadata().and_then(|m| m.modified()).ok())
    .collect();
    if builds.iter().any(|b| *b >= newest) {
        return Ok(false);
    }
    let built = builds.first();
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", &package, "--bin", name])
        .args(&profile_args)
        .arg("--target-dir")
        .arg(&target)
        .current_dir(workspace_dir);
    let shown = format!(
        "cargo build -p {package} --bin {name}{}",
        profile_args
            .iter()
            .map(|a| format!(" {a}"))
            .collect::<String>()
    );
    eprintln!(
        "ktstr: scheduler {name} is {}: {shown}",
        if built.is_some() {
            "older than its sources"
        } else {
            "not built yet"
        }
    );
    let o = cmd.output().map_err(|e| AutoBuildError {
        name: name.into(),
        cmd: shown.clone(),
        tail: e.to_string(),
    })?;
    if !o.status.success() {
        return Err(AutoBuildError {
            name: name.into(),
            cmd: shown,
            tail: crate::vm::tail_lines(&String::from_utf8_lossy(&o.stderr), 30),
        });
    }
    Ok(true)
}

/// [`refresh`] for the running test binary: its workspace is where cargo and nextest run
/// tests (`CARGO_MANIFEST_DIR`, else the current directory), `$CARGO` or `cargo`.
pub fn refresh_for_this_binary(name: &str) -> Result<bool, AutoBuildError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().unwrap_or_default());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    refresh(name, &exe, &dir, &cargo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A workspace with package `demo` (binary `scx_d`) and a fake cargo that answers
    /// `metadata` and logs `build` calls, creating the binary.
    fn fixture() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let pkg = d.path().join("demo");
        std::fs::create_dir_all(pkg.join("src")).unwrap();
        std::fs::write(pkg.join("Cargo.toml"), "[package]").unwrap();
        std::fs::write(pkg.join("src/main.rs"), "fn main() {}").unwrap();
        let deps = d.path().join("target/debug/deps");
        std::fs::create_dir_all(&deps).unwrap();
        let meta = serde_json::json!({"packages": [
            {"name": "other", "manifest_path": d.path().join("o/Cargo.toml"),
             "targets": [{"name": "scx_d", "kind": ["test"]}]},
            {"name": "demo", "manifest_path": pkg.join("Cargo.toml"),
             "targets": [{"name": "scx_d", "kind": ["bin"]}]}]});
        let cargo = d.path().join("cargo");
        std::fs::write(
            &cargo,
            format!(
                "#!/bin/sh\ncase $1 in\nmetadata) echo '{meta}' ;;\n\
                 build) echo \"$*\" >> {log}; [ -f {fail} ] && {{ echo broken >&2; exit 1; }}; \
                 touch {bin} ;;\nesac\n",
                log = d.path().join("builds.log").display(),
                fail = d.path().join("fail").display(),
                bin = d.path().join("target/debug/scx_d").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
        (d, deps.join("suite-1"), cargo)
    }

    #[test]
    fn builds_when_missing_or_stale_and_not_when_fresh() {
        let (d, exe, cargo) = fixture();
        let cargo = cargo.to_str().unwrap();
        let builds = || std::fs::read_to_string(d.path().join("builds.log")).unwrap_or_default();
        assert!(
            refresh("scx_d", &exe, d.path(), cargo).unwrap(),
            "missing: built"
        );
        assert!(
            builds().contains("build -p demo --bin scx_d --target-dir"),
            "{}",
            builds()
        );
        assert!(
            !refresh("scx_d", &exe, d.path(), cargo).unwrap(),
            "fresh: not rebuilt"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.path().join("demo/src/main.rs"), "fn main() { }").unwrap();
        assert!(
            refresh("scx_d", &exe, d.path(), cargo).unwrap(),
            "stale: rebuilt"
        );
        assert_eq!(builds().lines().count(), 2);
        // Not a binary of the workspace, no cargo, not a deps/ test binary: nothing to do.
        assert!(!refresh("scx_other", &exe, d.path(), cargo).unwrap());
        assert!(!refresh("scx_d", &exe, d.path(), "/nonexistent/cargo").unwrap());
        assert!(!refresh("scx_d", &d.path().join("x"), d.path(), cargo).unwrap());
        // A fresh release build counts for a debug test binary.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(d.path().join("demo/src/main.rs"), "fn main() {}").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir_all(d.path().join("target/release")).unwrap();
        std::fs::write(d.path().join("target/release/scx_d"), b"").unwrap();
        assert!(!refresh("scx_d", &exe, d.path(), cargo).unwrap());
        assert_eq!(builds().lines().count(), 2);
    }

    #[test]
    fn an_extracted_archive_never_builds() {
        let (d, _, cargo) = fixture();
        // A test binary extracted from a nextest archive outside the workspace, whose own
        // target directory lacks the scheduler: it must not build one.
        let far = tempfile::tempdir().unwrap();
        let deps = far.path().join("target/debug/deps");
        std::fs::create_dir_all(&deps).unwrap();
        let exe = deps.join("suite-1");
        assert!(!refresh("scx_d", &exe, d.path(), cargo.to_str().unwrap()).unwrap());
        assert!(!d.path().join("builds.log").exists());
        // The target directory cargo reports (CARGO_TARGET_DIR elsewhere) is this workspace's.
        let meta = serde_json::json!({"target_directory": far.path().join("target")});
        assert!(built_here(&far.path().join("target"), &meta, d.path()));
        assert!(built_here(
            &d.path().join("target/llvm-cov-target"),
            &serde_json::json!({}),
            d.path()
        ));
        assert!(!built_here(
            &far.path().join("target"),
            &serde_json::json!({}),
            d.path()
        ));
    }

    #[test]
    fn a_failed_build_is_an_error_with_cargo_output() {
        let (d, exe, cargo) = fixture();
        std::fs::write(d.path().join("fail"), b"").unwrap();
        let e = refresh("scx_d", &exe, d.path(), cargo.to_str().unwrap()).unwrap_err();
        assert!(
            e.tail.contains("broken") && e.cmd.contains("-p demo"),
            "{e}"
        );
    }

    #[test]
    fn profiles() {
        let p = |s: &str| profile_of(Path::new(s)).map(|(_, _, a)| a);
        assert_eq!(p("/w/target/debug/deps/t-1"), Some(vec![]));
        assert_eq!(
            p("/w/target/release/deps/t-1"),
            Some(vec!["--release".into()])
        );
        assert_eq!(
            p("/w/target/bench/deps/t-1"),
            Some(vec!["--profile".into(), "bench".into()])
        );
        assert_eq!(p("/usr/bin/t"), None);
    }
}
