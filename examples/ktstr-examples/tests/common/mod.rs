//! Running the verdict fixtures, and what a case may leave behind (for the tests that stop
//! cases or feed the host a hostile guest): a case runs with its own sidecar, cache and lock
//! directories and a tag in its environment, which every process it starts (qemu, builds)
//! inherits.

// Each test binary that includes this module uses part of it.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A case's private directories and tag.
pub struct Sandbox {
    _tmp: tempfile::TempDir,
    pub sidecars: PathBuf,
    pub cache: Option<PathBuf>,
    pub locks: PathBuf,
    pub tag: String,
    shm_before: BTreeSet<String>,
}

impl Sandbox {
    /// Fresh directories; `tag` must be unique among running tests. With `fresh_cache` the
    /// case gets an empty cache (its initramfs is really built and written, and checked
    /// afterwards); without, it uses the usual one.
    pub fn new(tag: &str, fresh_cache: bool) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let s = Sandbox {
            sidecars: tmp.path().join("sidecars"),
            cache: fresh_cache.then(|| tmp.path().join("cache")),
            locks: tmp.path().join("locks"),
            tag: format!("{}-{tag}", std::process::id()),
            shm_before: shm_entries(),
            _tmp: tmp,
        };
        std::fs::create_dir_all(&s.locks).unwrap();
        s
    }

    /// `cmd` with this sandbox's environment: sidecars, the cache, the capped tier's host LLC
    /// locks in our lock directory, the tag.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("KTSTR_LEAK_TAG", &self.tag)
            .env("KTSTR_SIDECAR_DIR", &self.sidecars)
            .env("KTSTR_NO_PERF_MODE", "1")
            .env("KTSTR_LOCK_DIR", &self.locks);
        if let Some(c) = &self.cache {
            cmd.env("KTSTR_CACHE_DIR", c);
        }
    }

    /// Live processes started under this sandbox, except `but`.
    pub fn processes(&self, but: Option<i32>) -> Vec<i32> {
        tagged_processes(&self.tag)
            .into_iter()
            .filter(|&p| Some(p) != but)
            .collect()
    }

    /// Checks that nothing is left once the case's process has been reaped: no process, no
    /// temporary or partial file in the sidecar and cache directories, no held lock, nothing
    /// new in `/dev/shm`. Sidecars must be whole; `sidecar_allowed` says whether one may exist.
    /// `out` is the case's output, for the failure messages.
    pub fn assert_nothing_left(&self, sidecar_allowed: bool, out: &str) {
        assert!(
            self.processes(None).is_empty(),
            "leaked processes {:?}\n{out}",
            self.processes(None)
        );
        for f in files_under(&self.sidecars) {
            let name = f.to_string_lossy();
            assert!(
                name.ends_with(".json") && !name.starts_with('.'),
                "stray file {name} in the sidecar directory\n{out}"
            );
            if self.sidecars.join(&f).is_dir() {
                continue;
            }
            ktstr::runs::read_sidecar(&self.sidecars.join(&f))
                .unwrap_or_else(|e| panic!("sidecar {name} is not whole: {e}\n{out}"));
            assert!(sidecar_allowed, "a sidecar {name} was written\n{out}");
        }
        let cache = self.cache.clone().unwrap_or_default();
        for f in files_under(&cache) {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                !f.to_string_lossy().contains(".work-"),
                "objcopy's work directory {f:?} left in the cache\n{out}"
            );
            assert!(
                !name.contains(".tmp-"),
                "temporary file {f:?} left in the cache\n{out}"
            );
            assert!(
                !name.starts_with("initramfs-"),
                "a per-case archive {f:?} left in the cache\n{out}"
            );
            if name.starts_with("base-") && cache.join(&f).is_file() {
                let bytes = std::fs::read(cache.join(&f)).unwrap();
                ktstr::initramfs::read_newc(&bytes).unwrap_or_else(|e| {
                    panic!("cached base archive {f:?} is not whole: {e}\n{out}")
                });
            }
        }
        let table = std::fs::read_to_string("/proc/locks").unwrap();
        for l in ktstr::locks::list_locks_in(
            &self.locks,
            &cache.join(".locks"),
            &ktstr::locks::parse_proc_locks(&table),
            ktstr::locks::read_cmdline,
        ) {
            assert!(
                l.holders.is_empty(),
                "lock {:?} still held: {:?}\n{out}",
                l.path,
                l.holders
            );
        }
        let leaked: Vec<_> = shm_entries()
            .difference(&self.shm_before)
            .cloned()
            .collect();
        assert!(leaked.is_empty(), "left in /dev/shm: {leaked:?}\n{out}");
    }
}

/// PIDs of live processes whose environment holds `KTSTR_LEAK_TAG=tag`.
fn tagged_processes(tag: &str) -> Vec<i32> {
    let needle = format!("KTSTR_LEAK_TAG={tag}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // A zombie's environment reads empty, as does that of a process that is gone.
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Every file and directory under `dir`, relative to it.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

fn shm_entries() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ktstr"))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a kernel is there to boot; under CI its absence fails the test.
pub fn kernel_available(what: &str) -> bool {
    if std::env::var_os("KTSTR_KERNEL").is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("KTSTR_KERNEL is not set: VM tests need a kernel under CI");
    }
    eprintln!("\n!!! SKIPPED: set KTSTR_KERNEL to run {what}\n");
    false
}

/// Runs fixture case `name` of `verdict_fixtures` with `envs` set and `remove` unset; returns
/// its exit code and its stdout + stderr.
pub fn fixture(name: &str, envs: &[(&str, &str)], remove: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_verdict_fixtures"));
    for k in remove {
        cmd.env_remove(k);
    }
    let o = cmd
        .args(["--exact", name, "--nocapture"])
        .envs(envs.iter().copied())
        .output()
        .expect("running the fixture binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code(), text)
}
