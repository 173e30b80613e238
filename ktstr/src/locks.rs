//! Listing the host locks ktstr runs hold (`cargo ktstr locks`), without taking any.
//!
//! ktstr coordinates concurrent runs on one host with `flock(2)` on plain files: LLC locks
//! (`ktstr-llc-{N}.lock`) and CPU locks (`ktstr-cpu-{C}.lock`) in the lock directory, and
//! cache locks in `{cache root}/.locks/`. A held flock is visible in `/proc/locks` as the
//! file's device and inode with the holder's PID and mode, so matching the lock files'
//! `stat` against that table names every holder without touching the locks.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Where host LLC and CPU lock files live: `$KTSTR_LOCK_DIR`, default `/tmp`.
pub fn lock_dir() -> PathBuf {
    std::env::var_os("KTSTR_LOCK_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// The lock file of host LLC `llc` in `dir`.
pub fn llc_lock_path(dir: &Path, llc: u32) -> PathBuf {
    dir.join(format!("ktstr-llc-{llc}.lock"))
}

/// The lock file of host CPU `cpu` in `dir`.
pub fn cpu_lock_path(dir: &Path, cpu: u32) -> PathBuf {
    dir.join(format!("ktstr-cpu-{cpu}.lock"))
}

/// Takes `flock(mode | LOCK_NB)` on `path` (created if missing, and opened to every user):
/// `Ok(None)` when another holder conflicts.
pub fn try_flock(path: &Path, mode: i32) -> std::io::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    share_with_everyone(path, 0o666);
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), mode | libc::LOCK_NB) } == 0 {
        return Ok(Some(f));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Opens `path` to every user (best effort: only its owner may): the lock directory is shared
/// by every user's runs (`/tmp` by default), and a lock file root created must not lock
/// another user out of the host.
pub fn share_with_everyone(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o7777 != mode {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        }
    }
}

/// Which resource a lock file guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// A host last-level cache (`ktstr-llc-{N}.lock`).
    Llc,
    /// A host CPU (`ktstr-cpu-{C}.lock`).
    Cpu,
    /// A cache entry (`{cache root}/.locks/*.lock`).
    Cache,
}

/// How a holder holds a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// `LOCK_SH` (`/proc/locks` READ).
    Shared,
    /// `LOCK_EX` (`/proc/locks` WRITE).
    Exclusive,
}

impl std::fmt::Display for LockKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockKind::Llc => "llc",
            LockKind::Cpu => "cpu",
            LockKind::Cache => "cache",
        })
    }
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockMode::Shared => "shared",
            LockMode::Exclusive => "exclusive",
        })
    }
}

/// One process holding a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockHolder {
    /// The PID `/proc/locks` records (the process that took the lock).
    pub pid: i32,
    /// Shared or exclusive.
    pub mode: LockMode,
    /// The holder's command line, arguments joined by spaces (empty when it has exited or
    /// is not visible).
    pub cmdline: String,
}

/// One ktstr lock file and who holds it (no holders: free).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockEntry {
    /// The lock file.
    pub path: PathBuf,
    /// What it guards.
    pub kind: LockKind,
    /// The LLC or CPU number (`None` for cache locks).
    pub index: Option<u32>,
    /// Current holders (blocked waiters are not holders).
    pub holders: Vec<LockHolder>,
}

/// A held lock as `/proc/locks` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcLock {
    /// Device major number of the locked file's filesystem.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// The locked file's inode.
    pub inode: u64,
    /// The holder's PID.
    pub pid: i32,
    /// Its mode.
    pub mode: LockMode,
}

/// Parses `/proc/locks`, keeping granted `FLOCK` locks (ktstr only takes flocks); waiter
/// lines (`->`), other lock types and lines it cannot read are skipped.
///
/// A line reads `1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF`: the device is
/// `major:minor` in hex, the inode decimal.
pub fn parse_proc_locks(text: &str) -> Vec<ProcLock> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            f.next()?; // "N:"
            let ty = f.next()?;
            if ty != "FLOCK" {
                return None; // also "->" (a waiter)
            }
            f.next()?; // ADVISORY / MANDATORY
            let mode = match f.next()? {
                "READ" => LockMode::Shared,
                "WRITE" => LockMode::Exclusive,
                _ => return None,
            };
            let pid = f.next()?.parse().ok()?;
            let mut dev = f.next()?.split(':');
            let major = u32::from_str_radix(dev.next()?, 16).ok()?;
            let minor = u32::from_str_radix(dev.next()?, 16).ok()?;
            let inode = dev.next()?.parse().ok()?;
            Some(ProcLock {
                major,
                minor,
                inode,
                pid,
                mode,
            })
        })
        .collect()
}

/// Every ktstr lock file on this host with its holders: [`lock_dir`] and the cache root's
/// `.locks/`, matched against `/proc/locks`.
pub fn list_locks() -> std::io::Result<Vec<LockEntry>> {
    let table = std::fs::read_to_string("/proc/locks")?;
    Ok(list_locks_in(
        &lock_dir(),
        &crate::cache::root().join(".locks"),
        &parse_proc_locks(&table),
        read_cmdline,
    ))
}

/// [`list_locks`] over explicit directories, a parsed lock table and a cmdline lookup.
/// Missing directories hold no locks. Entries are sorted by kind, index, then path.
pub fn list_locks_in(
    lock_dir: &Path,
    cache_lock_dir: &Path,
    table: &[ProcLock],
    cmdline: impl Fn(i32) -> String,
) -> Vec<LockEntry> {
    let mut by_file: HashMap<(u32, u32, u64), Vec<&ProcLock>> = HashMap::new();
    for l in table {
        by_file
            .entry((l.major, l.minor, l.inode))
            .or_default()
            .push(l);
    }
    let mut entries = Vec::new();
    let mut scan = |dir: &Path, cache: bool| {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for de in rd.flatten() {
            let name = de.file_name();
            let classified = match name.to_str() {
                Some(n) if cache => n.ends_with(".lock").then_some((LockKind::Cache, None)),
                Some(n) => classify_host_lock(n),
                None => None,
            };
            let Some((kind, index)) = classified else {
                continue;
            };
            let path = de.path();
            // A file removed between readdir and stat is simply gone.
            let Ok(md) = std::fs::metadata(&path) else {
                continue;
            };
            let key = (libc::major(md.dev()), libc::minor(md.dev()), md.ino());
            let holders = by_file
                .get(&key)
                .map(|ls| {
                    ls.iter()
                        .map(|l| LockHolder {
                            pid: l.pid,
                            mode: l.mode,
                            cmdline: cmdline(l.pid),
                        })
                        .collect()
                })
                .unwrap_or_default();
            entries.push(LockEntry {
                path,
                kind,
                index,
                holders,
            });
        }
    };
    scan(lock_dir, false);
    scan(cache_lock_dir, true);
    entries.sort_by(|a, b| {
        (kind_rank(a.kind), a.index, &a.path).cmp(&(kind_rank(b.kind), b.index, &b.path))
    });
    entries
}

fn kind_rank(k: LockKind) -> u8 {
    match k {
        LockKind::Llc => 0,
        LockKind::Cpu => 1,
        LockKind::Cache => 2,
    }
}

/// `ktstr-llc-{N}.lock` / `ktstr-cpu-{C}.lock`; anything else in the (shared) lock
/// directory is not ours.
fn classify_host_lock(name: &str) -> Option<(LockKind, Option<u32>)> {
    let stem = name.strip_prefix("ktstr-")?.strip_suffix(".lock")?;
    let (kind, n) = if let Some(n) = stem.strip_prefix("llc-") {
        (LockKind::Llc, n)
    } else {
        (LockKind::Cpu, stem.strip_prefix("cpu-")?)
    };
    Some((kind, Some(n.parse().ok()?)))
}

/// `/proc/PID/cmdline` with NULs as spaces; empty when unreadable.
pub fn read_cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsRawFd;

    const TABLE: &str = "\
1: FLOCK  ADVISORY  WRITE 4242 00:2a:1234 0 EOF
1: -> FLOCK  ADVISORY  WRITE 4343 00:2a:1234 0 EOF
2: FLOCK  ADVISORY  READ 77 fd:01:99 0 EOF
3: POSIX  ADVISORY  WRITE 88 00:2a:5 0 EOF
4: OFDLCK ADVISORY  READ -1 00:2a:6 0 EOF
garbage
";

    #[test]
    fn proc_locks_keeps_granted_flocks_only() {
        let t = parse_proc_locks(TABLE);
        assert_eq!(
            t,
            vec![
                ProcLock {
                    major: 0,
                    minor: 0x2a,
                    inode: 1234,
                    pid: 4242,
                    mode: LockMode::Exclusive
                },
                ProcLock {
                    major: 0xfd,
                    minor: 1,
                    inode: 99,
                    pid: 77,
                    mode: LockMode::Shared
                },
            ]
        );
    }

    #[test]
    fn lock_names() {
        assert_eq!(
            classify_host_lock("ktstr-llc-3.lock"),
            Some((LockKind::Llc, Some(3)))
        );
        assert_eq!(
            classify_host_lock("ktstr-cpu-12.lock"),
            Some((LockKind::Cpu, Some(12)))
        );
        for other in [
            "ktstr-llc-x.lock",
            "ktstr-gpu-1.lock",
            "llc-1.lock",
            "ktstr-cpu-1",
        ] {
            assert_eq!(classify_host_lock(other), None, "{other}");
        }
    }

    fn flock(f: &File, op: i32) {
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) }, 0);
    }

    /// Real flocks taken here show up with this process as holder and the right modes; a
    /// lock file nobody holds is listed free; foreign files are ignored.
    #[test]
    fn held_locks_are_matched_to_their_holders() {
        let host = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let open = |p: PathBuf| {
            File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(p)
                .unwrap()
        };
        let llc = open(host.path().join("ktstr-llc-1.lock"));
        let cpu = open(host.path().join("ktstr-cpu-0.lock"));
        let _free = open(host.path().join("ktstr-llc-0.lock"));
        let _foreign = open(host.path().join("other.lock"));
        let entry = open(cache.path().join("6.12-tarball-x86_64-kc0.lock"));
        flock(&llc, libc::LOCK_SH);
        flock(&cpu, libc::LOCK_EX);
        flock(&entry, libc::LOCK_EX);
        let table = parse_proc_locks(&std::fs::read_to_string("/proc/locks").unwrap());
        let got = list_locks_in(host.path(), cache.path(), &table, read_cmdline);
        let me = std::process::id() as i32;
        let summary: Vec<_> = got
            .iter()
            .map(|e| {
                let holders: Vec<_> = e
                    .holders
                    .iter()
                    .filter(|h| h.pid == me)
                    .map(|h| h.mode)
                    .collect();
                (e.kind, e.index, holders)
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                (LockKind::Llc, Some(0), vec![]),
                (LockKind::Llc, Some(1), vec![LockMode::Shared]),
                (LockKind::Cpu, Some(0), vec![LockMode::Exclusive]),
                (LockKind::Cache, None, vec![LockMode::Exclusive]),
            ]
        );
        let h = &got[1].holders[0];
        assert!(!h.cmdline.is_empty(), "{h:?}");
        drop(llc);
        let table = parse_proc_locks(&std::fs::read_to_string("/proc/locks").unwrap());
        let got = list_locks_in(host.path(), cache.path(), &table, read_cmdline);
        assert!(got[1].holders.is_empty(), "released: {got:?}");
    }

    #[test]
    fn missing_directories_hold_nothing() {
        let d = tempfile::tempdir().unwrap();
        let none = d.path().join("absent");
        assert!(list_locks_in(&none, &none, &[], |_| String::new()).is_empty());
    }
}
