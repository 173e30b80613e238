//! The kernel cache: `{cache root}/kernels/{key}/`, one directory per built kernel.
//!
//! An entry holds `bzImage`, a `vmlinux` stripped of DWARF (symbols and BTF kept; the KVM
//! backend boots it directly), `vmlinux.btf`, `.config` and `metadata.json`. Entries are built
//! in a staging directory beside them and renamed into place, so a reader never sees half an
//! entry; a per-entry lock (`{cache root}/.locks/kernel-{key}.lock`) keeps two builds of one
//! key from racing. An entry built with another version of ktstr's kconfig fragment is
//! *stale*: listed with a tag, never picked automatically.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::kernel::Kernel;

/// ktstr's kconfig fragment, applied over `make allnoconfig` (see `ktstr/kconfig/`).
pub const KCONFIG: &str = include_str!("../../kconfig/ktstr.kconfig");

/// Options a kernel must have for ktstr (a build without them fails; see [`missing_required`]).
pub const REQUIRED: &[&str] = &[
    "CONFIG_SCHED_CLASS_EXT=y",
    "CONFIG_DEBUG_INFO_BTF=y",
    "CONFIG_BPF_SYSCALL=y",
    "CONFIG_DEVMEM=y",
    "CONFIG_CGROUPS=y",
    "CONFIG_CPUSETS=y",
    "CONFIG_BLK_DEV_INITRD=y",
    "CONFIG_SERIAL_8250_CONSOLE=y",
];

/// `kc` + the CRC32 of [`KCONFIG`]: the suffix of every key built with it.
pub fn kconfig_tag() -> String {
    format!("kc{:08x}", crc32fast::hash(KCONFIG.as_bytes()))
}

/// The lines of [`REQUIRED`] a `.config` text lacks.
pub fn missing_required(config: &str) -> Vec<&'static str> {
    REQUIRED
        .iter()
        .copied()
        .filter(|want| !config.lines().any(|l| l.trim() == *want))
        .collect()
}

/// Where a cached kernel's source came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A source tarball (e.g. Debian's `linux-source-6.12`).
    Tarball {
        /// The tarball.
        path: PathBuf,
        /// Its size in bytes (with `mtime`, how a later build recognises it).
        size: u64,
        /// Its modification time, seconds since the epoch.
        mtime: u64,
    },
    /// A commit of a git repository.
    Git {
        /// The repository's URL or path, as given.
        url: String,
        /// The ref asked for.
        #[serde(rename = "ref")]
        git_ref: String,
        /// The commit it resolved to (full hex).
        commit: String,
    },
    /// A kernel tree on this machine.
    Local {
        /// The tree.
        path: PathBuf,
        /// Its git commit, when it is a clean git checkout.
        commit: Option<String>,
    },
}

/// `metadata.json` of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The kernel version (`make kernelversion`), e.g. `6.12.57`.
    pub version: String,
    /// Where it was built from.
    pub source: Source,
    /// Target architecture.
    pub arch: String,
    /// The boot image's file name in the entry.
    pub image_name: String,
    /// CRC32 of the `.config`, hex.
    pub config_hash: String,
    /// [`kconfig_tag`] at build time.
    pub ktstr_kconfig_hash: String,
    /// Build completion, seconds since the epoch.
    pub built_at: u64,
    /// Whether the entry has a vmlinux.
    pub has_vmlinux: bool,
    /// Whether that vmlinux had its DWARF stripped.
    pub vmlinux_stripped: bool,
    /// How long the build took, seconds.
    #[serde(default)]
    pub build_s: u64,
}

impl Metadata {
    /// The metadata of an x86_64 `bzImage` entry of `version` from `source`, built now with
    /// the current fragment, with a stripped vmlinux (config hash and build time zero); adjust
    /// the rest with struct update syntax.
    pub fn new(version: &str, source: Source) -> Self {
        Metadata {
            version: version.into(),
            source,
            arch: "x86_64".into(),
            image_name: "bzImage".into(),
            config_hash: "0".into(),
            ktstr_kconfig_hash: kconfig_tag(),
            built_at: now_s(),
            has_vmlinux: true,
            vmlinux_stripped: true,
            build_s: 0,
        }
    }
}

/// One directory of the cache.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its key (the directory name).
    pub key: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Its metadata, or why it is corrupt.
    pub meta: Result<Metadata, String>,
}

impl Entry {
    /// Built with another kconfig fragment than this ktstr's.
    pub fn stale(&self) -> bool {
        self.meta
            .as_ref()
            .is_ok_and(|m| m.ktstr_kconfig_hash != kconfig_tag())
    }

    /// Unreadable metadata or a missing image.
    pub fn corrupt(&self) -> Option<String> {
        match &self.meta {
            Err(e) => Some(e.clone()),
            Ok(m) if !self.dir.join(&m.image_name).is_file() => {
                Some(format!("{} is missing", m.image_name))
            }
            Ok(_) => None,
        }
    }

    /// The entry as a bootable kernel (its vmlinux beside the image).
    pub fn kernel(&self) -> Option<Kernel> {
        let m = self.meta.as_ref().ok()?;
        let vmlinux = self.dir.join("vmlinux");
        Some(Kernel {
            image: self.dir.join(&m.image_name),
            vmlinux: vmlinux.is_file().then_some(vmlinux),
            label: crate::kernel::sanitize(&m.version),
        })
    }

    fn built_at(&self) -> u64 {
        self.meta.as_ref().map_or(0, |m| m.built_at)
    }
}

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file operation failed.
    #[error("kernel cache: {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CacheError {
    let path = path.to_path_buf();
    move |source| CacheError::Io { what, path, source }
}

/// The kernel cache under one root.
#[derive(Debug, Clone)]
pub struct KernelCache {
    root: PathBuf,
    locks: PathBuf,
}

/// An exclusive lock on one key, released on drop.
#[derive(Debug)]
pub struct KeyLock {
    _file: File,
}

impl KernelCache {
    /// The cache under ktstr's cache root ([`crate::cache::root`]).
    pub fn open_default() -> Self {
        Self::at(&crate::cache::root())
    }

    /// The cache under `cache_root` (its `kernels/` directory; locks in `.locks/`).
    pub fn at(cache_root: &Path) -> Self {
        KernelCache {
            root: cache_root.join("kernels"),
            locks: cache_root.join(".locks"),
        }
    }

    /// The `kernels/` directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Every entry, newest first (corrupt ones last).
    pub fn list(&self) -> Vec<Entry> {
        let Ok(rd) = fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut v: Vec<Entry> = rd
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| {
                let key = e.file_name().to_string_lossy().into_owned();
                // Staging directories of builds in progress (or killed).
                (!key.starts_with('.')).then(|| self.read_entry(&key))
            })
            .collect();
        v.sort_by(|a, b| b.built_at().cmp(&a.built_at()).then(a.key.cmp(&b.key)));
        v
    }

    fn read_entry(&self, key: &str) -> Entry {
        let dir = self.root.join(key);
        let meta = fs::read(dir.join("metadata.json"))
            .map_err(|e| format!("metadata.json: {e}"))
            .and_then(|b| {
                serde_json::from_slice::<Metadata>(&b).map_err(|e| format!("metadata.json: {e}"))
            });
        Entry {
            key: key.to_string(),
            dir,
            meta,
        }
    }

    /// The entry `key`, if present.
    pub fn get(&self, key: &str) -> Option<Entry> {
        self.root.join(key).is_dir().then(|| self.read_entry(key))
    }

    /// Usable entries (neither stale nor corrupt), newest first.
    pub fn usable(&self) -> Vec<Entry> {
        self.list()
            .into_iter()
            .filter(|e| !e.stale() && e.corrupt().is_none())
            .collect()
    }

    /// The newest usable entry (what a run that names no kernel boots).
    pub fn newest(&self) -> Option<Entry> {
        self.usable().into_iter().next()
    }

    /// The usable entry whose version is `version`, or the highest patch release of the
    /// series `version` names (`6.12` matches `6.12.57` before `6.12.9`); among equal
    /// versions the newest build.
    pub fn find_version(&self, version: &str) -> Option<Entry> {
        use crate::kernel::range::Version;
        self.usable()
            .into_iter()
            .filter(|e| {
                e.meta.as_ref().is_ok_and(|m| {
                    m.version == version || m.version.starts_with(&format!("{version}."))
                })
            })
            .enumerate()
            // `usable` is newest build first: the lower index wins a tie.
            .max_by_key(|(i, e)| {
                let v = e
                    .meta
                    .as_ref()
                    .ok()
                    .and_then(|m| Version::parse(&m.version));
                (v, std::cmp::Reverse(*i))
            })
            .map(|(_, e)| e)
    }

    /// Takes the lock of `key`, waiting for another build of it to finish.
    pub fn lock(&self, key: &str) -> Result<KeyLock, CacheError> {
        use std::os::fd::AsRawFd;
        fs::create_dir_all(&self.locks).map_err(io("creating", &self.locks))?;
        crate::cache::warn_if_remote(&self.locks, "kernel cache", "KTSTR_CACHE_DIR");
        let path = self.locks.join(format!("kernel-{key}.lock"));
        let f = File::create(&path).map_err(io("creating", &path))?;
        // SAFETY: flock on a valid fd we own; blocks until the other holder is done.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io("locking", &path)(std::io::Error::last_os_error()));
        }
        Ok(KeyLock { _file: f })
    }

    /// A fresh staging directory for building `key` (renamed into place by [`Self::store`]).
    pub fn staging(&self, key: &str) -> Result<PathBuf, CacheError> {
        fs::create_dir_all(&self.root).map_err(io("creating", &self.root))?;
        let d = self
            .root
            .join(format!(".staging-{key}-{}", std::process::id()));
        if d.exists() {
            fs::remove_dir_all(&d).map_err(io("removing", &d))?;
        }
        fs::create_dir(&d).map_err(io("creating", &d))?;
        Ok(d)
    }

    /// Writes `meta` into `staged` and moves it into place as `key`, replacing an older entry.
    /// The caller holds [`Self::lock`] of `key`.
    pub fn store(&self, key: &str, staged: &Path, meta: &Metadata) -> Result<Entry, CacheError> {
        let m = staged.join("metadata.json");
        let json = serde_json::to_vec_pretty(meta).expect("metadata serialises");
        fs::write(&m, json).map_err(io("writing", &m))?;
        let dst = self.root.join(key);
        if dst.exists() {
            let old = self.root.join(format!(".old-{key}-{}", std::process::id()));
            fs::rename(&dst, &old).map_err(io("moving aside", &dst))?;
            fs::rename(staged, &dst).map_err(io("storing", &dst))?;
            let _ = fs::remove_dir_all(&old);
        } else {
            fs::rename(staged, &dst).map_err(io("storing", &dst))?;
        }
        Ok(self.read_entry(key))
    }

    /// Removes the entry `key`.
    pub fn remove(&self, key: &str) -> Result<(), CacheError> {
        let d = self.root.join(key);
        fs::remove_dir_all(&d).map_err(io("removing", &d))
    }

    /// Removes leftover staging directories of builds that are no longer running.
    pub fn sweep_staging(&self) {
        let Ok(rd) = fs::read_dir(&self.root) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(".staging-")
                .or_else(|| name.strip_prefix(".old-"))
                .and_then(|r| r.rsplit_once('-'))
                .and_then(|(_, p)| p.parse::<u32>().ok());
            if let Some(pid) = pid {
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

/// The git commit of the source a cached kernel image was built from, when it was a clean git
/// tree or a git commit (`None` for tarballs and for images outside the cache). Always the
/// 7-hex short form, as `kernel_commit` in sidecars.
pub fn commit_of(image: &Path) -> Option<String> {
    let meta = fs::read(image.parent()?.join("metadata.json")).ok()?;
    match serde_json::from_slice::<Metadata>(&meta).ok()?.source {
        Source::Local { commit, .. } => commit,
        Source::Git { commit, .. } => Some(commit.chars().take(7).collect()),
        Source::Tarball { .. } => None,
    }
}

/// Seconds since the epoch, now.
pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Which entries `kernel clean` removes: all but the `keep` newest valid ones (corrupt entries
/// never use a keep slot), or only the corrupt ones.
pub fn clean_plan(entries: &[Entry], keep: usize, corrupt_only: bool) -> Vec<&Entry> {
    if corrupt_only {
        return entries.iter().filter(|e| e.corrupt().is_some()).collect();
    }
    let mut kept = 0;
    entries
        .iter()
        .filter(|e| {
            if e.corrupt().is_some() {
                return true;
            }
            kept += 1;
            kept > keep
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(version: &str, built_at: u64, kc: &str) -> Metadata {
        let src = Source::Local {
            path: "/src/linux".into(),
            commit: None,
        };
        Metadata {
            ktstr_kconfig_hash: kc.into(),
            built_at,
            has_vmlinux: false,
            vmlinux_stripped: false,
            build_s: 1,
            ..Metadata::new(version, src)
        }
    }

    fn add(c: &KernelCache, key: &str, m: &Metadata) -> Entry {
        let _l = c.lock(key).unwrap();
        let s = c.staging(key).unwrap();
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        fs::write(s.join("bzImage"), bz).unwrap();
        c.store(key, &s, m).unwrap()
    }

    #[test]
    fn store_list_find_and_stale() {
        let d = tempfile::tempdir().unwrap();
        let c = KernelCache::at(d.path());
        assert!(c.list().is_empty());
        let tag = kconfig_tag();
        add(&c, "6.12.1-a", &meta("6.12.1", 100, &tag));
        add(&c, "6.12.2-a", &meta("6.12.2", 200, &tag));
        add(&c, "6.13.0-old", &meta("6.13.0", 300, "kc00000000"));
        fs::create_dir(c.dir().join("broken")).unwrap();
        let keys: Vec<String> = c.list().into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["6.13.0-old", "6.12.2-a", "6.12.1-a", "broken"]);
        assert!(c.get("6.13.0-old").unwrap().stale());
        assert!(c.get("broken").unwrap().corrupt().is_some());
        // Stale and corrupt entries are never picked.
        assert_eq!(c.usable()[0].key, "6.12.2-a");
        assert_eq!(c.find_version("6.12").unwrap().key, "6.12.2-a");
        assert_eq!(c.find_version("6.12.1").unwrap().key, "6.12.1-a");
        assert!(c.find_version("6.1").is_none(), "6.1 is not 6.12");
        assert!(c.find_version("6.13").is_none(), "stale");
        let k = c.get("6.12.1-a").unwrap().kernel().unwrap();
        assert!(k.image.ends_with("6.12.1-a/bzImage") && k.vmlinux.is_none());
        assert_eq!(commit_of(&k.image), None, "no commit recorded");
        let mut m = meta("6.12.9", 50, &tag);
        m.source = Source::Local {
            path: "/src/linux".into(),
            commit: Some("abc1234".into()),
        };
        let e = add(&c, "git-k", &m);
        assert_eq!(
            commit_of(&e.kernel().unwrap().image).as_deref(),
            Some("abc1234")
        );
        c.remove("git-k").unwrap();
        // Replacing an entry keeps one directory.
        add(&c, "6.12.1-a", &meta("6.12.1", 400, &tag));
        assert_eq!(c.list()[0].key, "6.12.1-a");
        assert_eq!(c.list().len(), 4);
    }

    #[test]
    fn clean_keeps_the_newest_valid_and_counts_no_corrupt_entry() {
        let d = tempfile::tempdir().unwrap();
        let c = KernelCache::at(d.path());
        let tag = kconfig_tag();
        add(&c, "a", &meta("1", 300, &tag));
        add(&c, "b", &meta("2", 200, &tag));
        add(&c, "c", &meta("3", 100, &tag));
        fs::create_dir(c.dir().join("zz-corrupt")).unwrap();
        let list = c.list();
        let keys = |v: Vec<&Entry>| v.into_iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(clean_plan(&list, 1, false)), ["b", "c", "zz-corrupt"]);
        assert_eq!(keys(clean_plan(&list, 3, false)), ["zz-corrupt"]);
        assert_eq!(keys(clean_plan(&list, 0, true)), ["zz-corrupt"]);
    }

    #[test]
    fn required_options_are_checked_line_by_line() {
        let all = REQUIRED.join("\n");
        assert!(missing_required(&all).is_empty());
        let without = all.replace(
            "CONFIG_SCHED_CLASS_EXT=y",
            "# CONFIG_SCHED_CLASS_EXT is not set",
        );
        assert_eq!(missing_required(&without), ["CONFIG_SCHED_CLASS_EXT=y"]);
        // Our own fragment asks for every required option.
        for r in REQUIRED {
            assert!(
                KCONFIG.lines().any(|l| l == *r),
                "{r} is not in ktstr.kconfig"
            );
        }
    }

    #[test]
    fn leftover_staging_of_dead_builds_is_swept() {
        let d = tempfile::tempdir().unwrap();
        let c = KernelCache::at(d.path());
        fs::create_dir_all(c.dir().join(".staging-k-999999999")).unwrap();
        let mine = c.staging("k").unwrap();
        c.sweep_staging();
        assert!(!c.dir().join(".staging-k-999999999").exists());
        assert!(mine.exists(), "a live build's staging stays");
    }
}
