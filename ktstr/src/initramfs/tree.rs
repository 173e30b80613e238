//! An in-memory model of the guest's root filesystem, serialised to newc in a valid order.
//!
//! Why a tree instead of writing entries straight away: several inputs share directories and
//! libraries, host paths run through symlinks (`/lib64 -> usr/lib64` on merged-/usr systems),
//! and the kernel unpacks entries strictly in order. The tree deduplicates, resolves guest paths
//! through the symlinks it already holds (so a later `/bin/x` lands in `usr/bin` if `/bin` is a
//! symlink, exactly as it would in the guest), detects conflicting claims, and emits entries
//! sorted by path: a directory's name is a prefix of its children's, so it always comes first.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use super::cpio::CpioWriter;
use super::error::InitramfsError;

/// Longest symlink chain followed, as the kernel's MAXSYMLINKS.
const MAX_HOPS: u32 = 40;

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// Read from the host when the archive is written.
    Host(PathBuf),
    /// Generated in memory.
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir {
        perm: u32,
    },
    File {
        source: Source,
        size: u64,
        perm: u32,
    },
    Symlink {
        target: String,
    },
}

impl Node {
    fn describe(&self) -> String {
        match self {
            Node::Dir { .. } => "a directory".into(),
            Node::File {
                source: Source::Host(p),
                ..
            } => format!("host file {}", p.display()),
            Node::File { .. } => "a generated file".into(),
            Node::Symlink { target } => format!("a symlink to {target}"),
        }
    }
}

/// What to do when a path is already taken by something different.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnConflict {
    /// Report [`InitramfsError::PathConflict`].
    Error,
    /// Keep what is there (used for busybox applet links, which yield to real binaries).
    KeepExisting,
}

/// The guest filesystem being assembled. Keys are paths without the leading slash.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    nodes: BTreeMap<String, Node>,
    /// Every host path consulted, for the cache fingerprint.
    host_inputs: BTreeSet<PathBuf>,
}

fn utf8(path: &Path) -> Result<&str, InitramfsError> {
    path.to_str()
        .ok_or_else(|| InitramfsError::InvalidGuestPath {
            path: path.to_string_lossy().into_owned(),
            reason: "not valid UTF-8",
        })
}

fn join(comps: &[String]) -> String {
    comps.join("/")
}

/// Splits a user-supplied guest path into components, rejecting `..` and empty paths.
pub(crate) fn guest_components(path: &str) -> Result<Vec<String>, InitramfsError> {
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(InitramfsError::InvalidGuestPath {
                    path: path.into(),
                    reason: "`..` is not allowed",
                })
            }
            c => out.push(c.to_owned()),
        }
    }
    if out.is_empty() {
        return Err(InitramfsError::InvalidGuestPath {
            path: path.into(),
            reason: "names the root directory",
        });
    }
    Ok(out)
}

impl Tree {
    /// Host paths consulted so far (files, directories and symlinks).
    pub(crate) fn host_inputs(&self) -> &BTreeSet<PathBuf> {
        &self.host_inputs
    }

    /// Resolves `comps` as a directory path through the tree's symlinks, creating missing
    /// directories (mode 0755). Returns the symlink-free path.
    fn resolve_dir(&mut self, comps: &[String]) -> Result<Vec<String>, InitramfsError> {
        let mut cur: Vec<String> = Vec::new();
        let mut queue: VecDeque<String> = comps.iter().cloned().collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            cur.push(c);
            let key = join(&cur);
            match self.nodes.get(&key) {
                Some(Node::Dir { .. }) => {}
                None => {
                    self.nodes.insert(key, Node::Dir { perm: 0o755 });
                }
                Some(Node::Symlink { target }) => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(InitramfsError::SymlinkLoop { path: join(comps) });
                    }
                    let target = target.clone();
                    cur.pop();
                    if target.starts_with('/') {
                        cur.clear();
                    }
                    for (i, t) in target.split('/').enumerate() {
                        queue.insert(i, t.to_owned());
                    }
                }
                Some(other) => {
                    return Err(InitramfsError::PathConflict {
                        path: key,
                        first: other.describe(),
                        second: "a directory".into(),
                    })
                }
            }
        }
        Ok(cur)
    }

    /// Puts `node` at the symlink-free `key`, deduplicating identical claims.
    fn put(&mut self, key: String, node: Node, policy: OnConflict) -> Result<(), InitramfsError> {
        match self.nodes.get_mut(&key) {
            None => {
                self.nodes.insert(key, node);
                Ok(())
            }
            Some(Node::Dir { perm }) if matches!(node, Node::Dir { .. }) => {
                // A directory auto-created earlier takes the explicit mode.
                if let Node::Dir { perm: p } = node {
                    *perm = p;
                }
                Ok(())
            }
            Some(existing) if *existing == node || policy == OnConflict::KeepExisting => Ok(()),
            Some(existing) => Err(InitramfsError::PathConflict {
                path: key,
                first: existing.describe(),
                second: node.describe(),
            }),
        }
    }

    /// Places `node` at guest path `path` (parents resolved through symlinks and created).
    fn insert(&mut self, path: &str, node: Node, policy: OnConflict) -> Result<(), InitramfsError> {
        let comps = guest_components(path)?;
        let (last, parents) = comps.split_last().expect("non-empty");
        let mut key = self.resolve_dir(parents)?;
        key.push(last.clone());
        self.put(join(&key), node, policy)
    }

    /// Creates directory `path` (and its parents).
    pub(crate) fn mkdir(&mut self, path: &str, perm: u32) -> Result<(), InitramfsError> {
        self.insert(path, Node::Dir { perm }, OnConflict::Error)
    }

    /// Adds a generated regular file.
    pub(crate) fn add_bytes(
        &mut self,
        path: &str,
        data: Vec<u8>,
        perm: u32,
    ) -> Result<(), InitramfsError> {
        let size = data.len() as u64;
        let node = Node::File {
            source: Source::Bytes(data),
            size,
            perm,
        };
        self.insert(path, node, OnConflict::Error)
    }

    /// Adds a symbolic link.
    pub(crate) fn add_symlink(
        &mut self,
        path: &str,
        target: &str,
        policy: OnConflict,
    ) -> Result<(), InitramfsError> {
        let node = Node::Symlink {
            target: target.to_owned(),
        };
        self.insert(path, node, policy)
    }

    /// Adds the content of host file `host` (symlinks followed) at guest path `guest`, with the
    /// host file's permission bits, or `perm` if given.
    pub(crate) fn add_host_file(
        &mut self,
        guest: &str,
        host: &Path,
        perm: Option<u32>,
    ) -> Result<(), InitramfsError> {
        let meta = fs::metadata(host).map_err(|e| InitramfsError::io("stat", host, e))?;
        if !meta.is_file() {
            return Err(InitramfsError::UnsupportedFileType { path: host.into() });
        }
        self.host_inputs.insert(host.to_owned());
        let node = Node::File {
            source: Source::Host(host.to_owned()),
            size: meta.len(),
            perm: perm.unwrap_or(meta.permissions().mode() & 0o7777),
        };
        self.insert(guest, node, OnConflict::Error)
    }

    /// Adds `content`, a copy of host file `identity` derived from it (e.g. stripped of debug
    /// information), at guest path `guest`. The cache fingerprints `identity`, so a change to
    /// the original rebuilds the archive.
    pub(crate) fn add_derived_file(
        &mut self,
        guest: &str,
        content: &Path,
        identity: &Path,
        perm: u32,
    ) -> Result<(), InitramfsError> {
        let meta = fs::metadata(content).map_err(|e| InitramfsError::io("stat", content, e))?;
        self.host_inputs.insert(identity.to_owned());
        let node = Node::File {
            source: Source::Host(content.to_owned()),
            size: meta.len(),
            perm,
        };
        self.insert(guest, node, OnConflict::Error)
    }

    /// Copies host directory `host` recursively to guest directory `guest`, keeping its
    /// structure. Symlinks inside are kept as symlinks with their targets unchanged (like
    /// `cp -a`), so relative links within the tree keep working. Returns the (guest, host)
    /// pairs of the regular files added, so callers can look for ELF binaries among them.
    pub(crate) fn add_host_tree(
        &mut self,
        guest: &str,
        host: &Path,
    ) -> Result<Vec<(String, PathBuf)>, InitramfsError> {
        let mut files = Vec::new();
        self.add_host_tree_inner(guest, host, &mut files)?;
        Ok(files)
    }

    fn add_host_tree_inner(
        &mut self,
        guest: &str,
        host: &Path,
        files: &mut Vec<(String, PathBuf)>,
    ) -> Result<(), InitramfsError> {
        let meta = fs::metadata(host).map_err(|e| InitramfsError::io("stat", host, e))?;
        self.host_inputs.insert(host.to_owned());
        self.mkdir(guest, meta.permissions().mode() & 0o7777)?;
        let mut entries: Vec<_> = fs::read_dir(host)
            .map_err(|e| InitramfsError::io("list directory", host, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| InitramfsError::io("list directory", host, e))?;
        entries.sort();
        for path in entries {
            let name = utf8(Path::new(
                path.file_name().expect("read_dir entries have names"),
            ))?;
            let child = format!("{guest}/{name}");
            let lmeta =
                fs::symlink_metadata(&path).map_err(|e| InitramfsError::io("stat", &path, e))?;
            let ft = lmeta.file_type();
            if ft.is_symlink() {
                let target =
                    fs::read_link(&path).map_err(|e| InitramfsError::io("read link", &path, e))?;
                self.host_inputs.insert(path.clone());
                self.add_symlink(&child, utf8(&target)?, OnConflict::Error)?;
            } else if ft.is_dir() {
                self.add_host_tree_inner(&child, &path, files)?;
            } else if ft.is_file() {
                self.add_host_file(&child, &path, None)?;
                files.push((child, path));
            } else {
                return Err(InitramfsError::UnsupportedFileType { path });
            }
        }
        Ok(())
    }

    /// Reproduces host path `host` in the guest at the same absolute path: every symlink met
    /// on the way (directories such as `/lib64 -> usr/lib64`, or library links) becomes the
    /// same symlink in the guest, real directories become directories with the host mode, and
    /// the final regular file is added with its content. The guest thus resolves the path
    /// exactly as the host does, and a file reached through several paths is stored once.
    /// Returns the symlink-free host path of the file.
    pub(crate) fn mirror_host_path(&mut self, host: &Path) -> Result<PathBuf, InitramfsError> {
        let mut hops = 0;
        self.mirror(host, &mut hops, true)
    }

    fn mirror(
        &mut self,
        host: &Path,
        hops: &mut u32,
        want_file: bool,
    ) -> Result<PathBuf, InitramfsError> {
        let comps: Vec<Component> = host.components().collect();
        let mut cur = PathBuf::from("/");
        for (i, comp) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            match comp {
                Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
                // `cur` is symlink-free, so a lexical pop is the real parent.
                Component::ParentDir => {
                    cur.pop();
                    continue;
                }
                Component::Normal(name) => {
                    let next = cur.join(name);
                    let meta = fs::symlink_metadata(&next)
                        .map_err(|e| InitramfsError::io("stat", &next, e))?;
                    let key = utf8(&next)?.trim_start_matches('/').to_owned();
                    if meta.file_type().is_symlink() {
                        *hops += 1;
                        if *hops > MAX_HOPS {
                            return Err(InitramfsError::SymlinkLoop {
                                path: host.display().to_string(),
                            });
                        }
                        let target = fs::read_link(&next)
                            .map_err(|e| InitramfsError::io("read link", &next, e))?;
                        self.host_inputs.insert(next.clone());
                        let node = Node::Symlink {
                            target: utf8(&target)?.to_owned(),
                        };
                        self.put(key, node, OnConflict::Error)?;
                        let abs = cur.join(&target); // join keeps `target` if it is absolute
                        cur = self.mirror(&abs, hops, want_file && last)?;
                    } else if meta.is_dir() {
                        let node = Node::Dir {
                            perm: meta.permissions().mode() & 0o7777,
                        };
                        self.put(key, node, OnConflict::Error)?;
                        cur = next;
                    } else if meta.is_file() && last && want_file {
                        self.host_inputs.insert(next.clone());
                        let node = Node::File {
                            source: Source::Host(next.clone()),
                            size: meta.len(),
                            perm: meta.permissions().mode() & 0o7777,
                        };
                        self.put(key, node, OnConflict::Error)?;
                        cur = next;
                    } else if meta.is_file() {
                        return Err(InitramfsError::io(
                            "resolve",
                            host,
                            io::Error::from_raw_os_error(libc::ENOTDIR),
                        ));
                    } else {
                        return Err(InitramfsError::UnsupportedFileType { path: next });
                    }
                }
            }
        }
        Ok(cur)
    }

    /// Writes every entry (without a trailer) in path order, which puts each directory before
    /// its contents.
    pub(crate) fn write_to<W: Write>(&self, w: &mut CpioWriter<W>) -> Result<(), InitramfsError> {
        let wio = |e| InitramfsError::io("write", "initramfs archive", e);
        for (name, node) in &self.nodes {
            match node {
                Node::Dir { perm } => w.dir(name, *perm).map_err(wio)?,
                Node::Symlink { target } => w.symlink(name, target).map_err(wio)?,
                Node::File {
                    source: Source::Bytes(b),
                    perm,
                    ..
                } => w.file(name, *perm, b).map_err(wio)?,
                Node::File {
                    source: Source::Host(p),
                    size,
                    perm,
                } => {
                    if *size >= 1 << 32 {
                        return Err(InitramfsError::TooLarge {
                            path: p.display().to_string(),
                            size: *size,
                        });
                    }
                    let f = File::open(p).map_err(|e| InitramfsError::io("open", p, e))?;
                    let changed = || InitramfsError::FileChanged {
                        path: p.clone(),
                        expected: *size,
                    };
                    let now = f
                        .metadata()
                        .map_err(|e| InitramfsError::io("stat", p, e))?
                        .len();
                    if now != *size {
                        return Err(changed());
                    }
                    w.file_from(name, *perm, *size, BufReader::with_capacity(1 << 20, f))
                        .map_err(|e| match e.kind() {
                            io::ErrorKind::UnexpectedEof => changed(),
                            _ => InitramfsError::io("read", p, e),
                        })?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::cpio::read_newc;
    use super::*;
    use std::os::unix::fs::symlink;

    fn archive(t: &Tree) -> Vec<super::super::cpio::CpioEntry> {
        let mut w = CpioWriter::new(Vec::new());
        t.write_to(&mut w).unwrap();
        read_newc(&w.finish().unwrap().0).unwrap()
    }

    #[test]
    fn parents_first_and_deduplicated() {
        let mut t = Tree::default();
        t.add_bytes("/x/y/z", b"1".to_vec(), 0o644).unwrap();
        t.add_bytes("x/y/w", b"2".to_vec(), 0o600).unwrap();
        t.add_bytes("/x.b", b"3".to_vec(), 0o644).unwrap();
        let e = archive(&t);
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["x", "x.b", "x/y", "x/y/w", "x/y/z", "TRAILER!!!"]);
        // Identical claims are fine; different ones conflict.
        t.add_bytes("x/y/z", b"1".to_vec(), 0o644).unwrap();
        assert!(matches!(
            t.add_bytes("x/y/z", b"other".to_vec(), 0o644),
            Err(InitramfsError::PathConflict { .. })
        ));
        assert!(t.add_bytes("..", vec![], 0o644).is_err());
        assert!(t.add_bytes("/", vec![], 0o644).is_err());
    }

    #[test]
    fn guest_paths_resolve_through_symlinks() {
        let mut t = Tree::default();
        t.mkdir("usr/bin", 0o755).unwrap();
        t.add_symlink("bin", "usr/bin", OnConflict::Error).unwrap();
        t.add_bytes("/bin/tool", b"t".to_vec(), 0o755).unwrap();
        let e = archive(&t);
        assert!(e.iter().any(|e| e.name == "usr/bin/tool"));
        assert!(!e.iter().any(|e| e.name == "bin/tool"));
        // Loops are reported.
        t.add_symlink("loop", "loop", OnConflict::Error).unwrap();
        assert!(matches!(
            t.add_bytes("loop/x", vec![], 0o644),
            Err(InitramfsError::SymlinkLoop { .. })
        ));
    }

    #[test]
    fn mirror_reproduces_host_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("real/lib")).unwrap();
        fs::write(root.join("real/lib/libz.so.1.2"), b"ELF").unwrap();
        symlink("libz.so.1.2", root.join("real/lib/libz.so.1")).unwrap();
        symlink("real/lib", root.join("lib")).unwrap();
        let mut t = Tree::default();
        let real = t.mirror_host_path(&root.join("lib/libz.so.1")).unwrap();
        assert_eq!(real, root.join("real/lib/libz.so.1.2"));
        let e = archive(&t);
        let key = |p: &Path| p.to_str().unwrap().trim_start_matches('/').to_owned();
        let find = |n: String| e.iter().find(|e| e.name == n).unwrap().clone();
        assert_eq!(find(key(&root.join("lib"))).data, b"real/lib");
        assert_eq!(
            find(key(&root.join("real/lib/libz.so.1"))).data,
            b"libz.so.1.2"
        );
        assert_eq!(find(key(&root.join("real/lib/libz.so.1.2"))).data, b"ELF");
        assert!(t.host_inputs().contains(&root.join("lib")));
    }
}
