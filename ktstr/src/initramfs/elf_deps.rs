//! ELF shared-library closure: which loader and libraries a dynamically linked binary needs,
//! found on the host the way glibc's `ld.so` would find them.
//!
//! Search order for a `DT_NEEDED` name requested by object O (ld.so(8)):
//! 1. a name containing `/` is a path;
//! 2. if O has no `DT_RUNPATH`: the `DT_RPATH`s of O, its loader, ... up to the executable;
//! 3. `LD_LIBRARY_PATH` (empty by default: the guest's `/init` runs without it);
//! 4. O's `DT_RUNPATH`;
//! 5. the system directories. Instead of parsing the binary `/etc/ld.so.cache` we read the
//!    directories it is built from: `/etc/ld.so.conf` (with its `include`s), then the
//!    multiarch and default directories.
//!
//! Candidates of the wrong ELF class or machine are skipped, as ld.so does (so a 32-bit
//! `/usr/lib32/libc.so.6` never satisfies a 64-bit binary). `$ORIGIN` is expanded twice: on the
//! host side to find the file, on the guest side (the binary's directory *in the guest*, e.g.
//! `/` for `/init`) to decide where it must go so the guest loader finds it.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use goblin::elf::Elf;

use super::error::InitramfsError;

/// Directories searched after `/etc/ld.so.conf`'s, as on Debian/Ubuntu/Fedora x86_64.
pub const STANDARD_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// The dynamic-linking facts of one ELF file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfInfo {
    /// `PT_INTERP`: the program loader, absent for static binaries and most libraries.
    pub interp: Option<String>,
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` directories (split at `:`), unexpanded.
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` directories (split at `:`), unexpanded.
    pub runpath: Vec<String>,
    /// `DT_SONAME`.
    pub soname: Option<String>,
    /// ELFCLASS64.
    pub is_64: bool,
    /// `e_machine`.
    pub machine: u16,
}

impl ElfInfo {
    /// Whether the file needs no loader and no libraries.
    pub fn is_static(&self) -> bool {
        self.interp.is_none() && self.needed.is_empty()
    }
}

/// Whether `path` starts with the ELF magic. Unreadable or short files are not ELF.
pub fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// Parses the dynamic-linking facts of `path`; `Ok(None)` if it is not an ELF file.
pub fn inspect(path: &Path) -> Result<Option<ElfInfo>, InitramfsError> {
    if !is_elf(path) {
        return Ok(None);
    }
    let bytes = fs::read(path).map_err(|e| InitramfsError::io("read", path, e))?;
    parse_elf(&bytes)
        .map(Some)
        .map_err(|reason| InitramfsError::BadElf {
            path: path.into(),
            reason,
        })
}

/// The dynamic-linking facts of an ELF image in memory (any bytes: binaries on the host are
/// outside input, and a malformed one must be an error, never a panic).
pub fn parse_elf(bytes: &[u8]) -> Result<ElfInfo, String> {
    let elf = Elf::parse(bytes).map_err(|e| e.to_string())?;
    let split = |v: &[&str]| -> Vec<String> {
        v.iter()
            .flat_map(|s| s.split(':'))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    Ok(ElfInfo {
        interp: elf.interpreter.map(str::to_owned),
        needed: elf.libraries.iter().map(|s| (*s).to_owned()).collect(),
        rpath: split(&elf.rpaths),
        runpath: split(&elf.runpaths),
        soname: elf.soname.map(str::to_owned),
        is_64: elf.is_64,
        machine: elf.header.e_machine,
    })
}

/// Reads class and machine from an ELF header without parsing the rest.
fn class_and_machine(path: &Path) -> Option<(bool, u16)> {
    let mut hdr = [0u8; 20];
    File::open(path).ok()?.read_exact(&mut hdr).ok()?;
    if hdr[..4] != *b"\x7fELF" {
        return None;
    }
    let machine = match hdr[5] {
        1 => u16::from_le_bytes([hdr[18], hdr[19]]),
        2 => u16::from_be_bytes([hdr[18], hdr[19]]),
        _ => return None,
    };
    Some((hdr[4] == 2, machine))
}

/// A file to put in the guest: its guest path and where its bytes are on the host. The two
/// are equal except for libraries found through `$ORIGIN` of a binary that moves (e.g. to
/// `/init`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placement {
    /// Absolute path in the guest.
    pub guest: PathBuf,
    /// Absolute (or cwd-relative) path on the host.
    pub host: PathBuf,
}

/// The loader and libraries one binary needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// `PT_INTERP` of the binary, a host path that must exist at the same path in the guest.
    pub interp: Option<PathBuf>,
    /// Every library of the transitive `DT_NEEDED` closure, deduplicated, breadth-first.
    pub libraries: Vec<Placement>,
}

impl Closure {
    /// Whether nothing is needed (a static binary, or not an ELF executable at all).
    pub fn is_empty(&self) -> bool {
        self.interp.is_none() && self.libraries.is_empty()
    }
}

/// A directory to search, as seen from the host and from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SearchDir {
    host: PathBuf,
    guest: PathBuf,
}

/// One ELF object in the closure walk.
struct Object {
    host: PathBuf,
    guest: PathBuf,
    info: ElfInfo,
    /// Effective `DT_RPATH`s of this object and its loaders up to the executable.
    rpath_chain: Vec<SearchDir>,
}

/// Finds shared libraries on the host. [`LibResolver::host`] is the configuration `build` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibResolver {
    /// Searched after `DT_RPATH` and before `DT_RUNPATH`, like `LD_LIBRARY_PATH`.
    pub ld_library_path: Vec<PathBuf>,
    /// Searched last, in order.
    pub system_dirs: Vec<PathBuf>,
}

impl LibResolver {
    /// The host's configuration: `/etc/ld.so.conf` directories then [`STANDARD_DIRS`], no
    /// `LD_LIBRARY_PATH` (the guest loader will not have one either).
    pub fn host() -> Self {
        let mut dirs = Vec::new();
        read_ld_so_conf(Path::new("/etc/ld.so.conf"), &mut dirs, 0);
        dirs.extend(STANDARD_DIRS.iter().map(PathBuf::from));
        let mut seen = HashSet::new();
        dirs.retain(|d| seen.insert(d.clone()));
        LibResolver {
            ld_library_path: Vec::new(),
            system_dirs: dirs,
        }
    }

    /// Computes the closure of host binary `host`, which will run in the guest as `guest`.
    /// Non-ELF files and static binaries give an empty closure. A library that cannot be found
    /// is an error naming the binary that needs it.
    pub fn closure(&self, host: &Path, guest: &Path) -> Result<Closure, InitramfsError> {
        let Some(info) = inspect(host)? else {
            return Ok(Closure::default());
        };
        let mut out = Closure::default();
        let mut loaded: HashSet<String> = HashSet::new();
        if let Some(interp) = &info.interp {
            let interp = PathBuf::from(interp);
            if !interp.exists() {
                return Err(InitramfsError::MissingLibrary {
                    binary: host.into(),
                    library: interp.display().to_string(),
                    searched: vec![],
                });
            }
            // The loader is already mapped when DT_NEEDED is processed, so a request for it
            // by name (libc needs ld-linux-x86-64.so.2) is satisfied without a search.
            if let Some(name) = interp.file_name() {
                loaded.insert(name.to_string_lossy().into_owned());
            }
            if let Some(soname) = inspect(&interp)?.and_then(|i| i.soname) {
                loaded.insert(soname);
            }
            out.interp = Some(interp);
        }
        // The executable's $ORIGIN on the host is its real directory (ld.so uses
        // /proc/self/exe); in the guest, the directory of its guest path.
        let real = fs::canonicalize(host).map_err(|e| InitramfsError::io("resolve", host, e))?;
        let mut placed: HashSet<PathBuf> = HashSet::new();
        let mut queue = std::collections::VecDeque::new();
        let root = Object {
            host: real,
            guest: guest.to_owned(),
            rpath_chain: Vec::new(),
            info,
        };
        queue.push_back(with_rpath(root));
        while let Some(obj) = queue.pop_front() {
            for name in &obj.info.needed {
                if loaded.contains(name) {
                    continue;
                }
                let p = self.find(&obj, name)?;
                loaded.insert(name.clone());
                if !placed.insert(p.guest.clone()) {
                    continue;
                }
                let info = inspect(&p.host)?.ok_or_else(|| InitramfsError::BadElf {
                    path: p.host.clone(),
                    reason: format!("needed as {name} but is not an ELF file"),
                })?;
                if let Some(s) = &info.soname {
                    loaded.insert(s.clone());
                }
                out.libraries.push(p.clone());
                queue.push_back(with_rpath(Object {
                    host: p.host,
                    guest: p.guest,
                    info,
                    rpath_chain: obj.rpath_chain.clone(),
                }));
            }
        }
        Ok(out)
    }

    /// Resolves one `DT_NEEDED` name requested by `obj`.
    fn find(&self, obj: &Object, name: &str) -> Result<Placement, InitramfsError> {
        let compatible = |p: &Path| {
            p.is_file() && class_and_machine(p) == Some((obj.info.is_64, obj.info.machine))
        };
        if name.contains('/') {
            let host = PathBuf::from(name);
            let guest = Path::new("/").join(name);
            if compatible(&host) {
                return Ok(Placement { guest, host });
            }
            return Err(self.missing(obj, name, vec![]));
        }
        let mut dirs: Vec<SearchDir> = Vec::new();
        if obj.info.runpath.is_empty() {
            dirs.extend(obj.rpath_chain.iter().cloned());
        }
        dirs.extend(self.ld_library_path.iter().map(|d| same(d)));
        dirs.extend(obj.info.runpath.iter().map(|d| expand(obj, d)));
        dirs.extend(self.system_dirs.iter().map(|d| same(d)));
        for d in &dirs {
            let host = d.host.join(name);
            if compatible(&host) {
                return Ok(Placement {
                    guest: normalize(&d.guest.join(name)),
                    host,
                });
            }
        }
        Err(self.missing(obj, name, dirs.into_iter().map(|d| d.host).collect()))
    }

    fn missing(&self, obj: &Object, name: &str, searched: Vec<PathBuf>) -> InitramfsError {
        InitramfsError::MissingLibrary {
            binary: obj.host.clone(),
            library: name.into(),
            searched,
        }
    }
}

fn same(d: &Path) -> SearchDir {
    SearchDir {
        host: d.to_owned(),
        guest: d.to_owned(),
    }
}

/// Prepends `obj`'s own effective `DT_RPATH` (ignored when it has a `DT_RUNPATH`) to its chain.
fn with_rpath(mut obj: Object) -> Object {
    if obj.info.runpath.is_empty() && !obj.info.rpath.is_empty() {
        let mut chain: Vec<SearchDir> = obj.info.rpath.iter().map(|d| expand(&obj, d)).collect();
        chain.append(&mut obj.rpath_chain);
        obj.rpath_chain = chain;
    }
    obj
}

/// Expands `$ORIGIN`, `$LIB` and `$PLATFORM` in a search directory of `obj`.
fn expand(obj: &Object, dir: &str) -> SearchDir {
    let sub = |origin: &Path| -> PathBuf {
        let origin = origin.to_string_lossy();
        let s = dir
            .replace("${ORIGIN}", &origin)
            .replace("$ORIGIN", &origin)
            // Debian's glibc value for x86_64.
            .replace("${LIB}", "lib/x86_64-linux-gnu")
            .replace("$LIB", "lib/x86_64-linux-gnu")
            .replace("${PLATFORM}", "x86_64")
            .replace("$PLATFORM", "x86_64");
        PathBuf::from(s)
    };
    let parent = |p: &Path| p.parent().map(Path::to_owned).unwrap_or_else(|| "/".into());
    SearchDir {
        host: sub(&parent(&obj.host)),
        guest: normalize(&sub(&parent(&obj.guest))),
    }
}

/// Lexically removes `.` and `..` from an absolute guest path (the guest tree resolves
/// symlinks itself; this only keeps names tidy).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            std::path::Component::Normal(n) => out.push(n),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// Appends the directories listed in an ld.so.conf-style file, following `include` globs.
/// Unreadable files are ignored, as ldconfig does for missing includes.
pub fn read_ld_so_conf(path: &Path, out: &mut Vec<PathBuf>, depth: u32) {
    if depth > 8 {
        return;
    }
    let Ok(text) = fs::read_to_string(path) else {
        return;
    };
    let base = path.parent().unwrap_or(Path::new("/"));
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with("hwcap") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("include") {
            if rest.starts_with(char::is_whitespace) {
                for pattern in rest.split_whitespace() {
                    for f in glob(&base.join(pattern)) {
                        read_ld_so_conf(&f, out, depth + 1);
                    }
                }
                continue;
            }
        }
        for dir in line.split([' ', '\t', ':', ',']).filter(|d| !d.is_empty()) {
            // Old syntax `dir=TYPE`.
            let dir = dir.split('=').next().unwrap_or(dir);
            out.push(PathBuf::from(dir));
        }
    }
}

/// Expands `*` and `?` in the last component of `pattern`, sorted.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (pattern.parent(), pattern.file_name()) else {
        return vec![];
    };
    let name = name.to_string_lossy();
    if !name.contains(['*', '?']) {
        return vec![pattern.to_owned()];
    }
    let Ok(rd) = fs::read_dir(dir) else {
        return vec![];
    };
    let mut hits: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .filter(|e| wildcard(name.as_bytes(), e.file_name().to_string_lossy().as_bytes()))
        .map(|e| e.path())
        .collect();
    hits.sort();
    hits
}

/// Shell-style match of `*` and `?` (no character classes).
fn wildcard(pat: &[u8], s: &[u8]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => wildcard(&pat[1..], s) || (!s.is_empty() && wildcard(pat, &s[1..])),
        (Some(b'?'), Some(_)) => wildcard(&pat[1..], &s[1..]),
        (Some(p), Some(c)) if p == c => wildcard(&pat[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current_exe() -> PathBuf {
        std::env::current_exe().unwrap()
    }

    #[test]
    fn dynamic_host_binary_needs_loader_and_libc() {
        let r = LibResolver::host();
        for bin in [current_exe(), PathBuf::from("/bin/ls")] {
            if !bin.exists() {
                continue;
            }
            let c = r.closure(&bin, Path::new("/init")).unwrap();
            assert_eq!(
                c.interp.as_deref(),
                Some(Path::new("/lib64/ld-linux-x86-64.so.2")),
                "{}",
                bin.display()
            );
            let libc = c
                .libraries
                .iter()
                .find(|p| p.host.file_name().unwrap() == "libc.so.6")
                .unwrap_or_else(|| panic!("{}: no libc in {:?}", bin.display(), c.libraries));
            // System libraries keep their host absolute path.
            assert_eq!(libc.guest, libc.host);
            assert!(libc.host.is_absolute());
            // The loader is not searched for again when libc names it.
            assert!(!c
                .libraries
                .iter()
                .any(|p| p.host.file_name().unwrap() == "ld-linux-x86-64.so.2"));
        }
    }

    #[test]
    fn static_busybox_has_no_deps() {
        let bb = Path::new("/bin/busybox");
        if !bb.exists() {
            eprintln!("note: /bin/busybox missing; skipping");
            return;
        }
        let info = inspect(bb).unwrap().unwrap();
        if !info.is_static() {
            eprintln!("note: /bin/busybox is dynamically linked; skipping");
            return;
        }
        assert!(LibResolver::host()
            .closure(bb, Path::new("/bin/busybox"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn non_elf_has_no_deps() {
        let tmp = tempfile::NamedTempFile::new().unwrap();
        fs::write(tmp.path(), b"#!/bin/sh\necho hi\n").unwrap();
        assert!(inspect(tmp.path()).unwrap().is_none());
        assert!(LibResolver::host()
            .closure(tmp.path(), Path::new("/x"))
            .unwrap()
            .is_empty());
    }

    /// Patches the DT_NEEDED string of a copy of a real dynamic binary so it names a library
    /// that does not exist: resolving it must fail with both names in the message.
    #[test]
    fn missing_library_is_named() {
        let src = fs::read("/bin/ls")
            .or_else(|_| fs::read(current_exe()))
            .unwrap();
        let needle = b"libc.so.6\0";
        let at = src
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("binary names libc.so.6");
        let mut bytes = src.clone();
        bytes[at..at + 9].copy_from_slice(b"libzz.so9");
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake-bin");
        fs::write(&fake, &bytes).unwrap();
        let err = LibResolver::host()
            .closure(&fake, Path::new("/bin/fake-bin"))
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, InitramfsError::MissingLibrary { .. }),
            "{msg}"
        );
        assert!(msg.contains("libzz.so9"), "{msg}");
        assert!(msg.contains("fake-bin"), "{msg}");
    }

    #[test]
    fn origin_runpath_maps_to_guest_location() {
        // A fake object whose RUNPATH is $ORIGIN/../lib, placed at /init in the guest.
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir_all(tmp.path().join("bin")).unwrap();
        fs::create_dir_all(tmp.path().join("lib")).unwrap();
        let libc = LibResolver::host()
            .closure(Path::new("/bin/ls"), Path::new("/x"))
            .ok()
            .and_then(|c| {
                c.libraries
                    .into_iter()
                    .find(|p| p.host.ends_with("libc.so.6"))
            });
        let Some(libc) = libc else { return };
        fs::copy(&libc.host, tmp.path().join("lib/libc.so.6")).unwrap();
        let obj = Object {
            host: tmp.path().join("bin/tool"),
            guest: PathBuf::from("/init"),
            info: ElfInfo {
                needed: vec!["libc.so.6".into()],
                runpath: vec!["$ORIGIN/../lib".into()],
                is_64: true,
                machine: goblin::elf::header::EM_X86_64,
                ..Default::default()
            },
            rpath_chain: vec![],
        };
        let p = LibResolver::host().find(&obj, "libc.so.6").unwrap();
        assert_eq!(p.host, tmp.path().join("bin/../lib/libc.so.6"));
        assert_eq!(p.guest, PathBuf::from("/lib/libc.so.6"));
    }

    #[test]
    fn ld_so_conf_and_glob() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("conf.d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("b.conf"), "/opt/b # comment\n").unwrap();
        fs::write(d.join("a.conf"), "/opt/a:/opt/a2\nhwcap 0 x\n").unwrap();
        fs::write(d.join("skip.txt"), "/nope\n").unwrap();
        fs::write(
            tmp.path().join("main.conf"),
            "include conf.d/*.conf\n/opt/main\n",
        )
        .unwrap();
        let mut out = vec![];
        read_ld_so_conf(&tmp.path().join("main.conf"), &mut out, 0);
        let want: Vec<PathBuf> = ["/opt/a", "/opt/a2", "/opt/b", "/opt/main"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(out, want);
        assert!(wildcard(b"*.conf", b"x.conf"));
        assert!(!wildcard(b"*.conf", b"x.confx"));
        assert!(wildcard(b"a?c*", b"abcdef"));
    }
}
