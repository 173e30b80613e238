//! Kernel sources from git: `kernel build --git URL --ref REF` and `--kernel git+URL#REF`.
//!
//! A local repository (a path or a `file://` URL) is read with `gix`: REF resolves to a
//! commit, and that commit's tree is written out once under `{cache}/src/git-{commit}`. No
//! `git` binary and no clone are needed, and the build never touches the user's work tree.
//! A network URL is first checked for reachability (a few seconds at most, so an offline
//! machine fails fast with the local alternatives), then fetched shallowly with `git fetch
//! --depth 1` into a bare repository and exported the same way. The fetch uses the `git`
//! binary rather than gix's network client: that client would compile an HTTP and TLS stack
//! into every build of ktstr for a path only used online.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where a repository lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitUrl {
    /// A repository on this machine (a path or a `file://` URL).
    Local(PathBuf),
    /// A repository behind the network: the URL, its host and port.
    Network {
        /// The URL as given.
        url: String,
        /// The host to reach.
        host: String,
        /// The port to reach.
        port: u16,
    },
}

/// Why a git source could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `git+URL#REF` without its parts.
    #[error("{0:?} is not a git kernel source: write git+URL#REF (e.g. git+file:///src/linux#v6.12 or git+/src/linux#HEAD)")]
    BadSpec(String),
    /// A URL whose form ktstr does not know.
    #[error("git URL {0:?}: expected a path, file://PATH, https://, http://, git:// or ssh:// URL, or user@host:path")]
    BadUrl(String),
    /// The network host cannot be reached.
    #[error("cannot reach {host}:{port} for {url} ({why}); without the network, clone the tree on a machine that has it and pass --source DIR, or a local path / file:// URL")]
    Unreachable {
        /// The URL.
        url: String,
        /// Its host.
        host: String,
        /// Its port.
        port: u16,
        /// What failed.
        why: String,
    },
    /// The repository cannot be opened.
    #[error("{path}: not a git repository ({why})")]
    Open {
        /// The path.
        path: PathBuf,
        /// What gix said.
        why: String,
    },
    /// REF names nothing in the repository.
    #[error("{git_ref:?} is not a commit of {url} ({why}); pass a branch, a tag or a commit id")]
    NoRef {
        /// The URL.
        url: String,
        /// The ref.
        git_ref: String,
        /// What gix said.
        why: String,
    },
    /// Reading or writing the tree failed.
    #[error("exporting {commit} into {dir}: {why}")]
    Export {
        /// The commit.
        commit: String,
        /// The target directory.
        dir: PathBuf,
        /// What failed.
        why: String,
    },
    /// `git fetch` failed.
    #[error("git fetch --depth 1 {url} {git_ref} failed: {why}")]
    Fetch {
        /// The URL.
        url: String,
        /// The ref.
        git_ref: String,
        /// git's stderr, or why it did not start.
        why: String,
    },
}

/// Splits `git+URL#REF` into its URL and REF.
pub fn parse_spec(spec: &str) -> Result<(String, String), GitError> {
    let rest = spec
        .strip_prefix("git+")
        .ok_or_else(|| GitError::BadSpec(spec.into()))?;
    match rest.rsplit_once('#') {
        Some((url, r)) if !url.is_empty() && !r.is_empty() => Ok((url.into(), r.into())),
        _ => Err(GitError::BadSpec(spec.into())),
    }
}

/// Classifies `url`.
pub fn classify(url: &str) -> Result<GitUrl, GitError> {
    if let Some(p) = url.strip_prefix("file://") {
        return Ok(GitUrl::Local(PathBuf::from(p)));
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        let port = match scheme {
            "https" => 443,
            "http" => 80,
            "git" => 9418,
            "ssh" => 22,
            _ => return Err(GitError::BadUrl(url.into())),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let authority = authority.rsplit('@').next().unwrap_or_default();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| GitError::BadUrl(url.into()))?,
            ),
            None => (authority.to_string(), port),
        };
        if host.is_empty() {
            return Err(GitError::BadUrl(url.into()));
        }
        return Ok(GitUrl::Network {
            url: url.into(),
            host,
            port,
        });
    }
    // scp-like `user@host:path` (ssh); anything else is a path.
    if let Some((left, _)) = url.split_once(':') {
        if !left.contains('/') && !Path::new(url).exists() {
            let host = left.rsplit('@').next().unwrap_or_default().to_string();
            if host.is_empty() {
                return Err(GitError::BadUrl(url.into()));
            }
            return Ok(GitUrl::Network {
                url: url.into(),
                host,
                port: 22,
            });
        }
    }
    Ok(GitUrl::Local(PathBuf::from(url)))
}

/// Fails within `timeout` when no address of `host:port` accepts a TCP connection.
pub fn check_reachable(
    url: &str,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(), GitError> {
    let unreachable = |why: String| GitError::Unreachable {
        url: url.into(),
        host: host.into(),
        port,
        why,
    };
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| unreachable(format!("name lookup failed: {e}")))?
        .collect();
    let mut last = "no address".to_string();
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(unreachable(last))
}

/// A commit of a repository, ready to export.
pub struct Resolved {
    repo: gix::Repository,
    /// The full commit id, hex.
    pub commit: String,
    tree: gix::ObjectId,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("commit", &self.commit)
            .field("tree", &self.tree)
            .finish_non_exhaustive()
    }
}

impl Resolved {
    /// The 7-hex short commit id.
    pub fn short(&self) -> &str {
        &self.commit[..7]
    }
}

/// Opens the repository at `path` and resolves `git_ref` to a commit.
pub fn resolve_local(path: &Path, git_ref: &str) -> Result<Resolved, GitError> {
    let repo = gix::open(path).map_err(|e| GitError::Open {
        path: path.into(),
        why: e.to_string(),
    })?;
    resolve_in_repo(repo, &path.display().to_string(), git_ref)
}

fn resolve_in_repo(repo: gix::Repository, url: &str, git_ref: &str) -> Result<Resolved, GitError> {
    let no_ref = |why: String| GitError::NoRef {
        url: url.into(),
        git_ref: git_ref.into(),
        why,
    };
    let (commit, tree) = {
        let id = repo
            .rev_parse_single(git_ref)
            .map_err(|e| no_ref(e.to_string()))?;
        let commit = id
            .object()
            .map_err(|e| no_ref(e.to_string()))?
            .peel_to_commit()
            .map_err(|e| no_ref(e.to_string()))?;
        let tree = commit
            .tree_id()
            .map_err(|e| no_ref(e.to_string()))?
            .detach();
        (commit.id.to_hex().to_string(), tree)
    };
    Ok(Resolved { repo, commit, tree })
}

/// Fetches `git_ref` of a network `url` shallowly into a bare repository under `src_root`
/// and resolves it there.
pub fn fetch(url: &str, git_ref: &str, src_root: &Path) -> Result<Resolved, GitError> {
    let fetch_err = |why: String| GitError::Fetch {
        url: url.into(),
        git_ref: git_ref.into(),
        why,
    };
    let bare = src_root.join(format!("git-fetch-{:08x}", crc32fast::hash(url.as_bytes())));
    if !bare.join("HEAD").is_file() {
        std::fs::create_dir_all(&bare).map_err(|e| fetch_err(e.to_string()))?;
        run_git(
            Command::new("git")
                .args(["init", "--bare", "-q"])
                .arg(&bare),
        )
        .map_err(fetch_err)?;
    }
    run_git(Command::new("git").arg("-C").arg(&bare).args([
        "fetch",
        "--depth",
        "1",
        "--no-tags",
        url,
        git_ref,
    ]))
    .map_err(fetch_err)?;
    let repo = gix::open(&bare).map_err(|e| GitError::Open {
        path: bare.clone(),
        why: e.to_string(),
    })?;
    resolve_in_repo(repo, url, "FETCH_HEAD")
}

fn run_git(cmd: &mut Command) -> Result<(), String> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run git: {e} (install it: apt-get install git)"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).trim().to_string())
    }
}

/// Writes the commit's tree under `src_root/git-{commit}` once (a finished export carries a
/// marker; an interrupted one is redone) and returns that directory and the number of files.
pub fn export(r: &Resolved, src_root: &Path) -> Result<(PathBuf, u64), GitError> {
    let dir = src_root.join(format!("git-{}", r.commit));
    let marker = dir.join(".ktstr-unpacked");
    let err = |why: String| GitError::Export {
        commit: r.commit.clone(),
        dir: dir.clone(),
        why,
    };
    if marker.is_file() {
        return Ok((dir, 0));
    }
    let tmp = src_root.join(format!(".export-{}-{}", r.short(), std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| err(e.to_string()))?;
    let files = write_tree(&r.repo, r.tree, &tmp).map_err(err)?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir).map_err(|e| err(e.to_string()))?;
    std::fs::write(&marker, r.commit.as_bytes()).map_err(|e| err(e.to_string()))?;
    Ok((dir, files))
}

/// Writes `tree` into `dir` (which exists): files with their executable bit, symlinks as
/// symlinks; submodules are left empty, as a plain checkout leaves them.
fn write_tree(repo: &gix::Repository, tree: gix::ObjectId, dir: &Path) -> Result<u64, String> {
    use gix::objs::tree::EntryKind;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::PermissionsExt;
    let tree = repo.find_tree(tree).map_err(|e| e.to_string())?;
    let mut files = 0;
    for entry in tree.iter() {
        let entry = entry.map_err(|e| e.to_string())?;
        let name: &[u8] = entry.filename();
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return Err(format!("refusing tree entry {:?}", entry.filename()));
        }
        let path = dir.join(std::ffi::OsStr::from_bytes(name));
        let id = entry.oid().to_owned();
        let io = |e: std::io::Error| format!("{}: {e}", path.display());
        match entry.mode().kind() {
            EntryKind::Tree => {
                std::fs::create_dir(&path).map_err(io)?;
                files += write_tree(repo, id, &path)?;
            }
            EntryKind::Blob | EntryKind::BlobExecutable => {
                let blob = repo.find_blob(id).map_err(|e| e.to_string())?;
                std::fs::write(&path, &blob.data).map_err(io)?;
                if entry.mode().kind() == EntryKind::BlobExecutable {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                        .map_err(io)?;
                }
                files += 1;
            }
            EntryKind::Link => {
                let blob = repo.find_blob(id).map_err(|e| e.to_string())?;
                std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&blob.data), &path)
                    .map_err(io)?;
                files += 1;
            }
            EntryKind::Commit => std::fs::create_dir(&path).map_err(io)?,
        }
    }
    Ok(files)
}

/// The cache key's `{ref}` part: the ref sanitized to `[A-Za-z0-9._-]`.
pub fn ref_label(git_ref: &str) -> String {
    git_ref
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let st = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "git {args:?}");
    }

    #[test]
    fn specs_and_urls_are_parsed() {
        assert_eq!(
            parse_spec("git+file:///src/linux#v6.12").unwrap(),
            ("file:///src/linux".into(), "v6.12".into())
        );
        assert_eq!(
            parse_spec("git+https://h/x.git#a#b").unwrap(),
            ("https://h/x.git#a".into(), "b".into())
        );
        for bad in ["git+/x", "git+#r", "git+/x#", "/x#r"] {
            let e = parse_spec(bad).unwrap_err().to_string();
            assert!(e.contains("git+URL#REF"), "{bad}: {e}");
        }
        assert_eq!(
            classify("file:///a/b").unwrap(),
            GitUrl::Local("/a/b".into())
        );
        assert_eq!(
            classify("../linux").unwrap(),
            GitUrl::Local("../linux".into())
        );
        let net = |u: &str| match classify(u).unwrap() {
            GitUrl::Network { host, port, .. } => (host, port),
            GitUrl::Local(p) => panic!("{u} classified local: {p:?}"),
        };
        assert_eq!(
            net("https://git.kernel.org/pub/x.git"),
            ("git.kernel.org".into(), 443)
        );
        assert_eq!(net("http://u@h:8080/x"), ("h".into(), 8080));
        assert_eq!(
            net("git@github.com:torvalds/linux.git"),
            ("github.com".into(), 22)
        );
        assert!(classify("ftp://h/x")
            .unwrap_err()
            .to_string()
            .contains("expected a path"));
        assert!(classify("https://h:port/x").is_err());
        assert_eq!(ref_label("refs/heads/for-next"), "refs_heads_for-next");
    }

    #[test]
    fn an_unreachable_host_fails_fast_with_the_local_alternatives() {
        // A port nobody listens on: connection refused at once.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let t0 = std::time::Instant::now();
        let e = check_reachable(
            "http://127.0.0.1/x",
            "127.0.0.1",
            port,
            Duration::from_secs(3),
        )
        .unwrap_err()
        .to_string();
        assert!(t0.elapsed() < Duration::from_secs(10));
        assert!(
            e.contains("cannot reach 127.0.0.1") && e.contains("--source DIR"),
            "{e}"
        );
        let e = check_reachable(
            "https://no.such.host.invalid/x",
            "no.such.host.invalid",
            443,
            Duration::from_secs(3),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("name lookup failed"), "{e}");
    }

    #[test]
    fn a_local_commit_exports_with_modes_and_links() {
        let d = tempfile::tempdir().unwrap();
        let repo = d.path().join("repo");
        std::fs::create_dir_all(repo.join("scripts/sub")).unwrap();
        std::fs::write(repo.join("Makefile"), "all:\n").unwrap();
        std::fs::write(repo.join("scripts/sub/run.sh"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(
            repo.join("scripts/sub/run.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("sub/run.sh", repo.join("scripts/link")).unwrap();
        git(&repo, &["init", "-q"]);
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "one"]);
        git(&repo, &["tag", "v1"]);
        std::fs::write(repo.join("Makefile"), "all: two\n").unwrap();
        git(&repo, &["commit", "-q", "-am", "two"]);

        let e = resolve_local(&repo, "nope").unwrap_err().to_string();
        assert!(e.contains("\"nope\" is not a commit"), "{e}");
        let e = resolve_local(&d.path().join("none"), "HEAD")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a git repository"), "{e}");

        let v1 = resolve_local(&repo, "v1").unwrap();
        let head = resolve_local(&repo, "HEAD").unwrap();
        assert_ne!(v1.commit, head.commit);
        assert_eq!(v1.commit.len(), 40);
        let src = d.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        let (dir, files) = export(&v1, &src).unwrap();
        assert_eq!(files, 3);
        assert_eq!(
            std::fs::read_to_string(dir.join("Makefile")).unwrap(),
            "all:\n"
        );
        let mode = std::fs::metadata(dir.join("scripts/sub/run.sh")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o111,
            0o111
        );
        assert_eq!(
            std::fs::read_link(dir.join("scripts/link")).unwrap(),
            Path::new("sub/run.sh")
        );
        // A second export of the same commit is the first one.
        let (again, n) = export(&v1, &src).unwrap();
        assert_eq!((again, n), (dir, 0));
        let (dir2, _) = export(&head, &src).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir2.join("Makefile")).unwrap(),
            "all: two\n"
        );
    }
}
