//! From an [`InitramfsSpec`] to a cached, concatenated newc archive on disk.
//!
//! The result is two archives back to back:
//! 1. the **base**: `/init` and the other binaries with their loaders and libraries, busybox,
//!    the include files, and empty mount points. Expensive to write (the test binary alone may be
//!    tens of MB), identical for every case of a run, so it is cached in `cache_dir` as
//!    `base-<key>.cpio`;
//! 2. the **case part**: the spec's generated `files`, then [`SENTINEL_PATH`] as the very last
//!    entry, so a partially unpacked rootfs (out of memory during unpacking, which the kernel
//!    does not report) lacks it and `/init` can tell.
//!
//! Cache validity. The base key must cover every host file that went in, including libraries
//! found only by walking the ELF closure, but computing the closure means reading the binaries,
//! which is what the cache is meant to avoid. So there are two keys: the *shape key* hashes the
//! spec (paths, flags, the library search configuration) and names a small
//! `manifest-<shape>` file listing every host path the last build consulted; the *base key*
//! hashes the shape key plus a fingerprint (`lstat`: size, mtime, mode, inode) of each path in
//! that manifest. A lookup is therefore a few dozen `stat` calls. Any rebuilt binary, upgraded
//! library, or file added to an include directory (its directory's mtime changes) changes the
//! base key.
//!
//! Compression. None: the spec says to ship a few MB uncompressed, and the guest kernel copies
//! an uncompressed archive faster than it could decompress one (under emulation even more so),
//! while compressing would cost host time on every cold build. Legacy-LZ4 would only pay for an
//! archive of tens of MB on a memory-starved guest; the guest-RAM sizing already accounts for
//! the uncompressed size instead.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use super::cache::{self, KeyHasher, Retention};
use super::cpio::CpioWriter;
use super::elf_deps::{inspect, is_elf, LibResolver, Placement};
use super::error::InitramfsError;
use super::tree::{guest_components, OnConflict, Tree};
use super::SENTINEL_PATH;

/// Bump when the archive layout changes, so old cache entries are not reused.
const FORMAT_VERSION: u64 = 2;
/// Guest directory of the `-i` files.
pub const INCLUDE_DIR: &str = "/include-files";
/// Where the host busybox may be installed, in order of preference.
pub const BUSYBOX_PATHS: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];
/// Complete archives are memfds now; files that older versions left in the cache directory
/// go after this long.
const FINAL_RETENTION: Retention = Retention {
    max_age: Duration::from_secs(3600),
    max_bytes: u64::MAX,
};
/// Bases and manifests go when unused for a day, or beyond the newest 2 GiB (about twenty
/// debug test binaries' worth).
const BASE_RETENTION: Retention = Retention {
    max_age: Duration::from_secs(24 * 3600),
    max_bytes: 2 << 30,
};

/// What goes into a guest's initramfs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitramfsSpec {
    /// Host binary that becomes /init (mode 0755). Its PT_INTERP loader and whole DT_NEEDED
    /// closure are included at their host absolute paths (so it runs unchanged), unless it is
    /// static.
    pub init: PathBuf,
    /// Extra host binaries, placed at `/bin/<file name>` (mode 0755) with their library
    /// closures (e.g. a scheduler).
    pub binaries: Vec<PathBuf>,
    /// `-i` paths: each appears at `/include-files/<basename>`; directories recursively with
    /// their structure (symlinks inside kept as symlinks); dynamically linked ELFs among them get
    /// their libraries and loader included too. A missing path is an error.
    pub include_files: Vec<PathBuf>,
    /// Include the host's busybox (Debian's busybox-static) as /bin/busybox, plus a symlink
    /// `/bin/<applet> -> busybox` for each applet it lists, unless that name is already taken
    /// (for shell mode).
    pub busybox: bool,
    /// Small generated files (guest path, bytes, permission bits), e.g. a case description.
    /// They go into the per-case archive, after the cached part.
    pub files: Vec<(String, Vec<u8>, u32)>,
}

/// A built initramfs.
#[derive(Debug, Clone)]
pub struct Built {
    /// The complete archive (base followed by the case part), ready to load as the initrd:
    /// this build's own memfd ([`crate::memfd`]), freed when the last clone of this value
    /// drops, so keep the value alive until the VM has read it.
    pub path: PathBuf,
    /// Its size; the kernel unpacks it as is (no compression), so this is also what it costs
    /// in guest RAM, twice during unpacking.
    pub uncompressed_bytes: u64,
    /// Whether the expensive base archive came from the cache.
    pub cache_hit: bool,
    /// The cached base archive alone, which `path` starts with.
    pub base: PathBuf,
    _file: Arc<File>,
}

/// Builds (or reuses) the initramfs for `spec`, caching under `cache_dir` (created if
/// needed). Safe to call from many processes at once: every file is written to a temporary name
/// and renamed into place.
pub fn build(spec: &InitramfsSpec, cache_dir: &Path) -> Result<Built, InitramfsError> {
    crate::cache::warn_if_remote(cache_dir, "initramfs cache", "KTSTR_CACHE_DIR");
    fs::create_dir_all(cache_dir).map_err(|e| InitramfsError::io("create", cache_dir, e))?;
    let resolver = LibResolver::host();
    check_inputs(spec)?;
    let shape = shape_key(spec, &resolver)?;
    let case = case_archive(spec)?;
    // A concurrent build may delete the base it superseded between our lookup and our copy;
    // then the second attempt builds afresh.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (base, cache_hit) = base_archive(spec, &resolver, &shape, cache_dir, attempt > 1)?;
        match assemble(&base, &case) {
            Ok((file, uncompressed_bytes)) => {
                let manifest = manifest_path(cache_dir, &shape);
                // Complete archives were files here before they were memfds: remove old ones.
                cache::prune(cache_dir, &["initramfs-"], FINAL_RETENTION, &[]);
                cache::prune(
                    cache_dir,
                    &["base-", "manifest-"],
                    BASE_RETENTION,
                    &[&base, &manifest],
                );
                return Ok(Built {
                    path: crate::memfd::path_of(&file),
                    _file: Arc::new(file),
                    uncompressed_bytes,
                    cache_hit,
                    base,
                });
            }
            Err(InitramfsError::Io { source, .. })
                if source.kind() == io::ErrorKind::NotFound && attempt == 1 => {}
            Err(e) => return Err(e),
        }
    }
}

fn manifest_path(cache_dir: &Path, shape: &str) -> PathBuf {
    cache_dir.join(format!("manifest-{shape}"))
}

fn base_path(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join(format!("base-{key}.cpio"))
}

/// Checks that every named input exists and that `-i` names do not collide.
fn check_inputs(spec: &InitramfsSpec) -> Result<(), InitramfsError> {
    let missing = |what, p: &Path| InitramfsError::MissingInput {
        what,
        path: p.into(),
    };
    if !spec.init.is_file() {
        return Err(missing("init binary", &spec.init));
    }
    for b in &spec.binaries {
        if !b.is_file() {
            return Err(missing("binary", b));
        }
    }
    let mut names = std::collections::HashSet::new();
    for p in &spec.include_files {
        if !p.exists() {
            return Err(missing("include file", p));
        }
        let name = include_name(p)?;
        if !names.insert(name.clone()) {
            return Err(InitramfsError::PathConflict {
                path: format!("{}/{name}", &INCLUDE_DIR[1..]),
                first: format!("an -i path named {name}"),
                second: p.display().to_string(),
            });
        }
    }
    Ok(())
}

fn include_name(p: &Path) -> Result<String, InitramfsError> {
    p.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| InitramfsError::InvalidGuestPath {
            path: p.display().to_string(),
            reason: "an include path needs a UTF-8 file name (not `/` or `..`)",
        })
}

fn file_name(p: &Path) -> Result<String, InitramfsError> {
    include_name(p)
}

/// Hash of everything that decides *which* files go in, but not their contents.
fn shape_key(spec: &InitramfsSpec, resolver: &LibResolver) -> Result<String, InitramfsError> {
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| InitramfsError::io("resolve", p, e));
    let mut h = KeyHasher::default();
    h.num(FORMAT_VERSION).path(&abs(&spec.init)?);
    h.num(spec.binaries.len() as u64);
    for b in &spec.binaries {
        h.path(&abs(b)?);
    }
    h.num(spec.include_files.len() as u64);
    for p in &spec.include_files {
        h.path(&abs(p)?);
    }
    h.num(spec.busybox as u64);
    for list in [&resolver.ld_library_path, &resolver.system_dirs] {
        h.num(list.len() as u64);
        for d in list {
            h.path(d);
        }
    }
    Ok(h.hex())
}

/// Hash of the shape plus the identity of every consulted host path.
fn base_key(shape: &str, inputs: &[PathBuf]) -> String {
    let mut h = KeyHasher::default();
    h.field(shape.as_bytes());
    for p in inputs {
        cache::fingerprint(&mut h, p);
    }
    h.hex()
}

/// Finds the cached base or builds it. Returns (path, cache hit).
fn base_archive(
    spec: &InitramfsSpec,
    resolver: &LibResolver,
    shape: &str,
    cache_dir: &Path,
    force: bool,
) -> Result<(PathBuf, bool), InitramfsError> {
    let manifest = manifest_path(cache_dir, shape);
    let previous = cache::read_manifest(&manifest);
    if let (false, Some(m)) = (force, &previous) {
        let key = base_key(shape, &m.inputs);
        let path = base_path(cache_dir, &key);
        if path.is_file() {
            cache::touch(&path);
            cache::touch(&manifest);
            return Ok((path, true));
        }
    }
    let tree = base_tree(spec, resolver, cache_dir)?;
    let inputs: Vec<PathBuf> = tree.host_inputs().iter().cloned().collect();
    // Fingerprint before reading contents: a file modified while we archive it gets a new key
    // on the next build instead of hiding behind this one.
    let key = base_key(shape, &inputs);
    let path = base_path(cache_dir, &key);
    if let Err(e) = cache::write_atomic(&path, |f| write_base(&tree, f)) {
        // A full or read-only cache costs reuse, not the case: the base goes to memory.
        return Ok((in_memory_base(&tree, &e)?, false));
    }
    let m = cache::Manifest {
        base_key: key.clone(),
        inputs,
    };
    if let Some(bytes) = cache::manifest_bytes(&m) {
        cache::write_atomic(&manifest, |f| {
            f.write_all(&bytes)
                .map_err(|e| InitramfsError::io("write", &manifest, e))
        })?;
    }
    // The base this one replaces (an older build of the same binaries) is dead weight.
    if let Some(prev) = previous.filter(|p| p.base_key != key) {
        let _ = fs::remove_file(base_path(cache_dir, &prev.base_key));
    }
    Ok((path, false))
}

/// Writes the base archive of `tree` into `f`.
fn write_base(tree: &Tree, f: &mut File) -> Result<(), InitramfsError> {
    let mut w = CpioWriter::new(BufWriter::with_capacity(1 << 20, f));
    tree.write_to(&mut w)?;
    w.finish()
        .map_err(|e| InitramfsError::io("write", "base archive", e))?;
    Ok(())
}

/// The base archive as a memfd kept open for the rest of the process (a per-case process
/// builds one initramfs), for when the cache cannot take it; says so once, with the remedy.
fn in_memory_base(tree: &Tree, why: &InitramfsError) -> Result<PathBuf, InitramfsError> {
    static KEPT: std::sync::Mutex<Vec<File>> = std::sync::Mutex::new(Vec::new());
    static SAID: std::sync::Once = std::sync::Once::new();
    SAID.call_once(|| {
        eprintln!(
            "ktstr: {why}; building the initramfs in memory instead (nothing is reused between \
             cases, so each builds it again): free space in the cache, or set KTSTR_CACHE_DIR \
             to a writable local directory"
        )
    });
    let mut f = crate::memfd::create("ktstr-initramfs-base", 0)
        .map_err(|e| InitramfsError::io("create", "an in-memory base archive", e))?;
    write_base(tree, &mut f)?;
    let path = crate::memfd::path_of(&f);
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(f);
    Ok(path)
}

/// Lays out the fixed part. Host-mirrored paths (loaders, libraries) go in first, so that
/// host symlinked directories such as `/lib64 -> usr/lib64` are in place before synthetic
/// paths such as `/bin/busybox` are resolved through them.
fn base_tree(
    spec: &InitramfsSpec,
    resolver: &LibResolver,
    cache_dir: &Path,
) -> Result<Tree, InitramfsError> {
    let mut tree = Tree::default();
    let busybox = if spec.busybox {
        Some(find_busybox()?)
    } else {
        None
    };

    // (guest path, host path) of every binary whose closure is needed.
    let mut programs: Vec<(PathBuf, PathBuf)> = vec![("/init".into(), spec.init.clone())];
    for b in &spec.binaries {
        programs.push((Path::new("/bin").join(file_name(b)?), b.clone()));
    }
    if let Some(bb) = &busybox {
        programs.push(("/bin/busybox".into(), bb.clone()));
    }
    for p in &spec.include_files {
        let guest = Path::new(INCLUDE_DIR).join(include_name(p)?);
        for (g, h) in walk_files(&guest, p)? {
            if is_native_elf(&h)? {
                programs.push((g, h));
            }
        }
    }

    let mut moved: Vec<Placement> = Vec::new();
    for (guest, host) in &programs {
        let closure = resolver.closure(host, guest)?;
        if let Some(interp) = &closure.interp {
            tree.mirror_host_path(interp)?;
        }
        for lib in closure.libraries {
            if lib.guest == lib.host {
                tree.mirror_host_path(&lib.host)?;
            } else {
                moved.push(lib);
            }
        }
    }

    // Mount points for the guest's /init.
    for d in ["dev", "proc", "sys", "run"] {
        tree.mkdir(d, 0o755)?;
    }
    tree.mkdir("tmp", 0o1777)?;

    let stripped = |host: &Path| super::strip::stripped_copy(host, cache_dir);
    tree.add_derived_file("/init", &stripped(&spec.init), &spec.init, 0o755)?;
    for b in &spec.binaries {
        tree.add_derived_file(&format!("/bin/{}", file_name(b)?), &stripped(b), b, 0o755)?;
    }
    for lib in &moved {
        tree.add_host_file(&lib.guest.to_string_lossy(), &lib.host, None)?;
    }
    if !spec.include_files.is_empty() {
        tree.mkdir(INCLUDE_DIR, 0o755)?;
    }
    for p in &spec.include_files {
        let guest = format!("{INCLUDE_DIR}/{}", include_name(p)?);
        if p.is_dir() {
            tree.add_host_tree(&guest, p)?;
        } else {
            tree.add_host_file(&guest, p, None)?;
        }
    }
    if let Some(bb) = &busybox {
        tree.add_host_file("/bin/busybox", bb, Some(0o755))?;
        let applets = busybox_applets(bb)?;
        for applet in &applets {
            tree.add_symlink(
                &format!("/bin/{applet}"),
                "busybox",
                OnConflict::KeepExisting,
            )?;
        }
        // A mount point for `shell --disk`, and the usual name of busybox's ext2 mkfs, which
        // Debian's build lists only as mke2fs.
        tree.mkdir("mnt", 0o755)?;
        if applets.iter().any(|a| a == "mke2fs") && !applets.iter().any(|a| a == "mkfs.ext2") {
            let script = b"#!/bin/sh\nexec /bin/busybox mke2fs \"$@\"\n".to_vec();
            tree.add_bytes("/bin/mkfs.ext2", script, 0o755)?;
        }
    }
    Ok(tree)
}

/// Regular files under `host` (or `host` itself), with the guest paths they will get under
/// `guest`. Symlinks are not followed (they are copied as links).
fn walk_files(guest: &Path, host: &Path) -> Result<Vec<(PathBuf, PathBuf)>, InitramfsError> {
    let meta = fs::metadata(host).map_err(|e| InitramfsError::io("stat", host, e))?;
    if meta.is_file() {
        return Ok(vec![(guest.to_owned(), host.to_owned())]);
    }
    let mut out = Vec::new();
    if meta.is_dir() {
        let rd = fs::read_dir(host).map_err(|e| InitramfsError::io("list directory", host, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| InitramfsError::io("list directory", host, e))?;
            let ft = entry
                .file_type()
                .map_err(|e| InitramfsError::io("stat", entry.path(), e))?;
            if ft.is_dir() || ft.is_file() {
                out.extend(walk_files(&guest.join(entry.file_name()), &entry.path())?);
            }
        }
    }
    Ok(out)
}

/// Whether `path` is an x86_64 ELF (whose libraries the guest could load). Foreign ELFs, such
/// as BPF objects, are copied but not resolved.
fn is_native_elf(path: &Path) -> Result<bool, InitramfsError> {
    if !is_elf(path) {
        return Ok(false);
    }
    Ok(inspect(path)?.is_some_and(|i| i.is_64 && i.machine == goblin::elf::header::EM_X86_64))
}

fn find_busybox() -> Result<PathBuf, InitramfsError> {
    BUSYBOX_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or(InitramfsError::BusyboxMissing)
}

/// Asks busybox for its applet names.
fn busybox_applets(bb: &Path) -> Result<Vec<String>, InitramfsError> {
    let fail = |reason: String| InitramfsError::BusyboxList {
        path: bb.into(),
        reason,
    };
    let out = Command::new(bb)
        .arg("--list")
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!("{}", out.status)));
    }
    let text = String::from_utf8(out.stdout).map_err(|_| fail("non-UTF-8 output".into()))?;
    let applets: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && !a.contains('/') && *a != "busybox")
        .map(str::to_owned)
        .collect();
    if applets.is_empty() {
        return Err(fail("it listed no applets".into()));
    }
    Ok(applets)
}

/// The per-case archive: generated files, then the sentinel, then the trailer.
fn case_archive(spec: &InitramfsSpec) -> Result<Vec<u8>, InitramfsError> {
    let sentinel = &SENTINEL_PATH[1..];
    let mut tree = Tree::default();
    for (path, data, perm) in &spec.files {
        if guest_components(path)? == [sentinel] {
            return Err(InitramfsError::InvalidGuestPath {
                path: path.clone(),
                reason: "reserved for the completion sentinel",
            });
        }
        tree.add_bytes(path, data.clone(), perm & 0o7777)?;
    }
    let mut w = CpioWriter::new(Vec::new());
    tree.write_to(&mut w)?;
    let wio = |e| InitramfsError::io("write", "case archive", e);
    w.file(sentinel, 0o444, b"").map_err(wio)?;
    Ok(w.finish().map_err(wio)?.0)
}

/// Concatenates base and case part into `initramfs-<key>.cpio`, reusing it if present.
fn assemble(base: &Path, case: &[u8]) -> Result<(File, u64), InitramfsError> {
    // A memfd: each build has its own, and it vanishes with the last process holding it, even
    // one killed by SIGKILL (a named file would stay behind in the cache directory).
    let mut out = crate::memfd::create("ktstr-initramfs", 0)
        .map_err(|e| InitramfsError::io("create", "memfd", e))?;
    let mut src = File::open(base).map_err(|e| InitramfsError::io("open", base, e))?;
    io::copy(&mut src, &mut out).map_err(|e| InitramfsError::io("copy", base, e))?;
    out.write_all(case)
        .map_err(|e| InitramfsError::io("write", "case archive", e))?;
    let len = out
        .metadata()
        .map_err(|e| InitramfsError::io("stat", "memfd", e))?
        .len();
    Ok((out, len))
}
