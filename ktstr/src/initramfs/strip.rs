//! Guest programs without their debug information.
//!
//! A debug test binary is ~90 MB, most of it DWARF that nothing in the guest reads; the kernel
//! copies every byte of the initramfs into its root file system at boot (slowly, under TCG),
//! and the host writes every byte of each archive. `objcopy --strip-debug` keeps the symbol
//! table (panic messages still name functions) and drops the rest; the copy is cached under
//! the initramfs cache, keyed by the original's identity, so it is made once per build of a
//! binary. Running binutils' `objcopy` is simpler and safer than rewriting ELF files here;
//! without it (or when it fails) the original is used as it is.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use super::cache::{self, KeyHasher};

/// A copy of `host` without debug sections, cached under `cache_dir/stripped/`; `host` itself
/// when stripping is not possible.
pub(crate) fn stripped_copy(host: &Path, cache_dir: &Path) -> PathBuf {
    let name = host
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bin".into());
    let mut h = KeyHasher::default();
    cache::fingerprint(&mut h, host);
    let dir = cache_dir.join("stripped");
    let out = dir.join(format!("{name}-{}", &h.hex()[..16]));
    if out.is_file() {
        cache::touch(&out);
        return out;
    }
    if std::fs::create_dir_all(&dir).is_err() {
        return host.to_path_buf();
    }
    sweep_abandoned(&dir, ABANDONED_AFTER);
    // objcopy writes its own temporary file beside its output, so it works in a directory of
    // its own, unique per call (threads of one process strip at once) and named after this
    // process, so that one left by a killed process is recognised and removed.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let work = dir.join(format!(
        "{WORK_PREFIX}{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = work.join(&name);
    let ok = std::fs::create_dir(&work).is_ok() && {
        let mut cmd = Command::new("objcopy");
        cmd.arg("--strip-debug")
            .arg(host)
            .arg(&tmp)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // objcopy dies with us instead of finishing a file nobody will use.
        crate::interrupt::die_with_parent(&mut cmd);
        run_unless_interrupted(cmd)
    };
    let ok = ok && std::fs::rename(&tmp, &out).is_ok();
    let _ = std::fs::remove_dir_all(&work);
    if !ok {
        return host.to_path_buf();
    }
    // Older copies of the same binary (earlier builds of it) are dead weight.
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let older = n
                .strip_prefix(&format!("{name}-"))
                .is_some_and(|k| k.len() == 16 && k.chars().all(|c| c.is_ascii_hexdigit()));
            if older && e.path() != out {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // Test binaries carry cargo's hash in their name, so each rebuild is a new name here.
    cache::prune(&dir, &[""], STRIPPED_RETENTION, &[&out]);
    out
}

/// Work directories are `.work-PID-SEQ`.
const WORK_PREFIX: &str = ".work-";

/// A work directory is only swept once this old as well as ownerless: a cache shared across
/// PID namespaces (a container and its host) may see a live process's PID as free.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Runs `cmd` to its end, unless a stop signal arrives ([`crate::interrupt`]): then it is
/// killed at once, so a stopped case leaves no objcopy running behind it.
fn run_unless_interrupted(mut cmd: Command) -> bool {
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.success(),
            Ok(None) if crate::interrupt::received().is_some() => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(_) => return false,
        }
    }
}

/// Removes, from `dir` (the initramfs cache's `stripped/`), the work directories of processes
/// that no longer exist and that are at least `min_age` old: killed while objcopy ran, nothing
/// else removes them. Every strip sweeps first (with a 10-minute minimum age).
pub fn sweep_abandoned(dir: &Path, min_age: std::time::Duration) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = n
            .strip_prefix(WORK_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill(2) with signal 0 only checks whether `pid` exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        if gone && old {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Stripped copies go when unused for a day or beyond the newest 1 GiB.
const STRIPPED_RETENTION: cache::Retention = cache::Retention {
    max_age: std::time::Duration::from_secs(24 * 3600),
    max_bytes: 1 << 30,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_with_debug_info_is_stripped_once_and_a_non_elf_passes_through() {
        let d = tempfile::tempdir().unwrap();
        // This test binary has debug information (tests build with it by default).
        let exe = std::env::current_exe().unwrap();
        let copy = d.path().join("suite");
        std::fs::copy(&exe, &copy).unwrap();
        let s = stripped_copy(&copy, d.path());
        assert_ne!(s, copy);
        let (before, after) = (
            std::fs::metadata(&copy).unwrap().len(),
            std::fs::metadata(&s).unwrap().len(),
        );
        assert!(after < before, "{after} < {before}");
        assert_eq!(stripped_copy(&copy, d.path()), s, "cached");
        let text = d.path().join("script");
        std::fs::write(&text, "#!/bin/sh\n").unwrap();
        assert_eq!(
            stripped_copy(&text, d.path()),
            text,
            "not an ELF: used as is"
        );
    }
}
