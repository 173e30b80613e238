//! Cache plumbing: content keys, host-file fingerprints, atomic writes and pruning.
//!
//! Keys are 128-bit FNV-1a over length-prefixed fields. That is not cryptographic, and need
//! not be: the inputs are our own files, and a collision only costs a wrong cache hit between
//! two of the user's own builds, at odds of about 2^-64. It is stable across Rust versions,
//! unlike `DefaultHasher`, so caches survive toolchain upgrades.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::error::InitramfsError;

const FNV_OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
const FNV_PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

/// Incremental 128-bit FNV-1a with length-prefixed fields (so `("ab","c")` and `("a","bc")`
/// differ).
#[derive(Debug, Clone)]
pub struct KeyHasher(u128);

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher(FNV_OFFSET)
    }
}

impl KeyHasher {
    fn raw(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u128;
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    /// Adds one field.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.raw(&(bytes.len() as u64).to_le_bytes());
        self.raw(bytes);
        self
    }

    /// Adds an integer field.
    pub fn num(&mut self, n: u64) -> &mut Self {
        self.field(&n.to_le_bytes())
    }

    /// Adds a path field.
    pub fn path(&mut self, p: &Path) -> &mut Self {
        self.field(p.as_os_str().as_bytes())
    }

    /// The key as 32 hex digits.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

/// Adds the identity of host path `p` to `h`: `lstat` (path, size, mtime in ns, mode, inode,
/// device), plus `stat` of the target for a symlink. A path that vanished hashes as such, so the
/// key changes. Rebuilding a file (cargo, apt) changes its mtime and usually its inode.
pub fn fingerprint(h: &mut KeyHasher, p: &Path) {
    h.path(p);
    for m in [fs::symlink_metadata(p), fs::metadata(p)] {
        match m {
            Ok(m) => {
                h.num(m.size())
                    .num(m.mtime() as u64)
                    .num(m.mtime_nsec() as u64)
                    .num(m.mode() as u64)
                    .num(m.ino())
                    .num(m.dev());
            }
            Err(_) => {
                h.field(b"missing");
            }
        }
    }
}

/// Writes `path` atomically: `fill` writes into a temporary file in the same directory, which
/// is then renamed over `path`. Concurrent writers of the same key produce the same bytes, so
/// whichever rename wins is fine, and readers never see a partial file.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut File) -> Result<(), InitramfsError>,
) -> Result<(), InitramfsError> {
    // The closure's own error is kept aside: atomic_file speaks io::Error.
    let mut inner = None;
    let r = crate::atomic_file::write(path, |f| {
        fill(f).map_err(|e| {
            inner = Some(e);
            std::io::Error::other("fill")
        })?;
        f.flush()
    });
    match (r, inner) {
        (_, Some(e)) => Err(e),
        (Err(e), None) => Err(InitramfsError::io("write", path, e)),
        (Ok(()), None) => Ok(()),
    }
}

/// Marks `path` as recently used (its mtime), so [`prune`] keeps it.
pub fn touch(path: &Path) {
    if let Ok(f) = File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// What [`prune`] keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Files unused for longer than this go.
    pub max_age: Duration,
    /// Of the rest, newest first, files go once the running total passes this many bytes:
    /// many test binaries (or many builds in scratch target directories, as cargo-mutants
    /// makes) each leave a base of ~100 MB, and a full disk fails everything else.
    pub max_bytes: u64,
}

/// Deletes files in `dir` whose name starts with one of `prefixes` that `keep_for` does not
/// retain, except `keep` (which still count towards the byte budget). Also removes temporary
/// files abandoned by crashed writers. Errors are ignored: pruning is housekeeping, and another
/// process may be pruning too.
pub fn prune(dir: &Path, prefixes: &[&str], keep_for: Retention, keep: &[&Path]) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let now = SystemTime::now();
    let mut ours = Vec::new();
    for entry in rd.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let abandoned = name.starts_with('.') && name.contains(".tmp-");
        if !abandoned && !prefixes.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        let age = meta
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .unwrap_or_default();
        ours.push((entry.path(), age, meta.len(), abandoned));
    }
    ours.sort_by_key(|&(_, age, _, _)| age);
    let mut total: u64 = keep
        .iter()
        .filter_map(|k| fs::metadata(k).ok())
        .map(|m| m.len())
        .sum();
    for (path, age, len, abandoned) in ours {
        if keep.contains(&path.as_path()) {
            continue;
        }
        total = total.saturating_add(len);
        let stale = age > keep_for.max_age || (abandoned && age > TMP_MAX_AGE);
        if stale || (!abandoned && total > keep_for.max_bytes) {
            let _ = fs::remove_file(&path);
        }
    }
}

/// A temporary file this old has no live writer (archives take seconds to write).
const TMP_MAX_AGE: Duration = Duration::from_secs(600);

/// A manifest: the base key it was written for, and the host paths the build consulted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Key of the base archive built from these paths (to delete it once superseded).
    pub base_key: String,
    /// Every host path consulted, sorted.
    pub inputs: Vec<PathBuf>,
}

/// Reads a manifest: `#<base key>` then one host path per line.
pub fn read_manifest(path: &Path) -> Option<Manifest> {
    let bytes = fs::read(path).ok()?;
    let mut lines = bytes.split(|&b| b == b'\n');
    let base_key = std::str::from_utf8(lines.next()?.strip_prefix(b"#")?)
        .ok()?
        .to_owned();
    let inputs = lines
        .filter(|l| !l.is_empty())
        .map(|l| PathBuf::from(OsStr::from_bytes(l)))
        .collect();
    Some(Manifest { base_key, inputs })
}

/// Serialises a manifest (paths containing a newline cannot be cached and return `None`).
pub fn manifest_bytes(m: &Manifest) -> Option<Vec<u8>> {
    let mut out = format!("#{}\n", m.base_key).into_bytes();
    for p in &m.inputs {
        let b = p.as_os_str().as_bytes();
        if b.contains(&b'\n') {
            return None;
        }
        out.extend_from_slice(b);
        out.push(b'\n');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_fields_and_are_stable() {
        let a = KeyHasher::default().field(b"ab").field(b"c").hex();
        let b = KeyHasher::default().field(b"a").field(b"bc").hex();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        // Pinned so a change of the hash (which would orphan caches) is deliberate.
        assert_eq!(
            KeyHasher::default().hex(),
            "6c62272e07bb014262b821756295c58d"
        );
    }

    #[test]
    fn fingerprint_changes_with_mtime() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        fs::write(&f, b"x").unwrap();
        let fp = || {
            let mut h = KeyHasher::default();
            fingerprint(&mut h, &f);
            h.hex()
        };
        let before = fp();
        assert_eq!(before, fp());
        File::options()
            .append(true)
            .open(&f)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert_ne!(before, fp());
    }

    #[test]
    fn atomic_write_and_prune() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("base-1.cpio");
        write_atomic(&p, |f| {
            f.write_all(b"abc")
                .map_err(|e| InitramfsError::io("write", "t", e))
        })
        .unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"abc");
        // A failing fill leaves neither the target nor a temp file.
        let q = tmp.path().join("base-2.cpio");
        assert!(write_atomic(&q, |_| Err(InitramfsError::BusyboxMissing)).is_err());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
        // Old files go, fresh and kept ones stay.
        let old = tmp.path().join("base-old.cpio");
        fs::write(&old, b"").unwrap();
        File::options()
            .append(true)
            .open(&old)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(7200))
            .unwrap();
        let hour = Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: u64::MAX,
        };
        prune(tmp.path(), &["base-"], hour, &[]);
        assert!(!old.exists());
        assert!(p.exists());
    }

    #[test]
    fn prune_keeps_the_newest_within_the_byte_budget_and_the_kept_file() {
        let tmp = tempfile::tempdir().unwrap();
        let aged = |name: &str, secs_ago: u64| {
            let p = tmp.path().join(name);
            fs::write(&p, [0u8; 100]).unwrap();
            File::options()
                .append(true)
                .open(&p)
                .unwrap()
                .set_modified(SystemTime::now() - Duration::from_secs(secs_ago))
                .unwrap();
            p
        };
        let newest = aged("base-a", 10);
        let middle = aged("base-b", 20);
        let oldest = aged("base-c", 30);
        let kept = aged("base-k", 40);
        let other = aged("unrelated", 50);
        let budget = Retention {
            max_age: Duration::from_secs(3600),
            max_bytes: 250,
        };
        prune(tmp.path(), &["base-"], budget, &[&kept]);
        // kept (100) + newest (200) fit; middle would make 300.
        assert!(kept.exists() && newest.exists());
        assert!(!middle.exists() && !oldest.exists());
        assert!(other.exists(), "files without our prefixes are not ours");
    }

    #[test]
    fn manifest_round_trip() {
        let m = Manifest {
            base_key: "abc".into(),
            inputs: vec![PathBuf::from("/a b"), PathBuf::from("/c")],
        };
        let tmp = tempfile::NamedTempFile::new().unwrap();
        fs::write(tmp.path(), manifest_bytes(&m).unwrap()).unwrap();
        assert_eq!(read_manifest(tmp.path()).unwrap(), m);
        let bad = Manifest {
            base_key: "k".into(),
            inputs: vec![PathBuf::from("/x\ny")],
        };
        assert!(manifest_bytes(&bad).is_none());
        fs::write(tmp.path(), b"/no/key/line\n").unwrap();
        assert!(read_manifest(tmp.path()).is_none());
    }
}
