//! Building a guest kernel into the cache: from a source tarball (Debian's `linux-source-*`),
//! a kernel tree or a git commit, configured with ktstr's fragment over `allnoconfig`.
//!
//! Phases: unpack (tarballs, once per tarball; git commits, once per commit: see
//! [`crate::kernel::git`]) → configure → build (`make bzImage`, output in
//! a log file) → strip (`objcopy`: a vmlinux without DWARF, its BTF) → store (atomic rename
//! into the cache). A tree with uncommitted changes, or outside git, is built but not cached.
//!
//! The unpacking and the build run `tar`, `make`, `git` and `objcopy`: a kernel build needs
//! them anyway, and driving them is simpler and faster than reimplementing any of them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::kernel::cache::{
    kconfig_tag, missing_required, now_s, CacheError, Entry, KernelCache, Metadata, Source, KCONFIG,
};

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildSource {
    /// A source tarball (`.tar.xz`, `.tar.gz`, `.tar.bz2`, `.tar`).
    Tarball(PathBuf),
    /// A kernel tree.
    Tree(PathBuf),
    /// A commit of a git repository (a path, `file://` or network URL, and a ref).
    Git {
        /// The repository.
        url: String,
        /// A branch, tag or commit.
        git_ref: String,
    },
}

/// How to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Rebuild even when the cache has the kernel.
    pub force: bool,
    /// `make mrproper` first (trees only).
    pub clean: bool,
    /// `--cpu-cap N`: build with `make -jN` confined to N of the CPUs this process may use
    /// (the rest stay free for whatever else runs). `None`: every allowed CPU.
    pub cpu_cap: Option<usize>,
}

/// What a build produced.
#[derive(Debug)]
pub enum Outcome {
    /// The cache already had it (no `--force`).
    Cached(Entry),
    /// Built and stored.
    Built(Entry),
    /// Built, but not cached (a dirty or non-git tree): the image stays in the tree.
    Uncached {
        /// The bootable image.
        image: PathBuf,
        /// Why it was not cached.
        why: String,
    },
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No source was given and none was found.
    #[error("no kernel source: {0}")]
    NoSource(String),
    /// A tool failed (the log's tail follows).
    #[error("{step} failed ({cmd}); full log: {log}\n--- last lines ---\n{tail}")]
    Step {
        /// The phase.
        step: &'static str,
        /// The command.
        cmd: String,
        /// The log file.
        log: PathBuf,
        /// Its last lines.
        tail: String,
    },
    /// A tool could not be started.
    #[error("{step}: cannot run {tool}: {source} (install it: apt-get install {package})")]
    Tool {
        /// The phase.
        step: &'static str,
        /// The program.
        tool: String,
        /// The Debian package that has it.
        package: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The configured kernel lacks what ktstr needs.
    #[error("the configured kernel lacks {missing:?} (see {config}); ktstr's fragment could not turn them on in this tree")]
    MissingOptions {
        /// The missing `CONFIG_...=y` lines.
        missing: Vec<&'static str>,
        /// The `.config`.
        config: PathBuf,
    },
    /// A file operation.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The cache.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// A git source.
    #[error(transparent)]
    Git(#[from] crate::kernel::git::GitError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_path_buf();
    move |source| BuildError::Io { what, path, source }
}

/// The newest `linux-source-*` tarball in `dir` (`/usr/src` on Debian).
pub fn find_tarball(dir: &Path) -> Result<PathBuf, BuildError> {
    let hint = "install one with `apt-get install linux-source-6.12` (it puts \
                /usr/src/linux-source-6.12.tar.xz there), or pass --source PATH";
    let rd = std::fs::read_dir(dir)
        .map_err(|e| BuildError::NoSource(format!("cannot read {}: {e}; {hint}", dir.display())))?;
    let mut found: Vec<(Vec<u64>, PathBuf)> = rd
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let rest = name.strip_prefix("linux-source-")?;
            let ver = ["tar.xz", "tar.gz", "tar.bz2", "tar"]
                .iter()
                .find_map(|ext| rest.strip_suffix(&format!(".{ext}")))?;
            let key = ver.split('.').map(|n| n.parse().unwrap_or(0)).collect();
            Some((key, p))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        BuildError::NoSource(format!(
            "no linux-source-*.tar.* in {}; {hint}",
            dir.display()
        ))
    })
}

/// Runs `cmd`, its output appended to `log`; on failure, the log's tail in the error.
fn run_logged(step: &'static str, cmd: &mut Command, log: &Path) -> Result<(), BuildError> {
    use std::fs::OpenOptions;
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io("opening", log))?;
    let f2 = f.try_clone().map_err(io("opening", log))?;
    let shown = format!("{cmd:?}").replace('"', "");
    let tool = cmd.get_program().to_string_lossy().into_owned();
    let st = cmd
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .status()
        .map_err(|source| BuildError::Tool {
            step,
            package: package_of(&tool),
            tool,
            source,
        })?;
    if st.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    Err(BuildError::Step {
        step,
        cmd: shown,
        log: log.to_path_buf(),
        tail: last_lines(&text, 25),
    })
}

fn package_of(tool: &str) -> &'static str {
    match tool {
        "make" => "make",
        "tar" => "tar xz-utils",
        "objcopy" => "binutils",
        "git" => "git",
        _ => "build-essential",
    }
}

fn output(cmd: &mut Command) -> Option<String> {
    let o = cmd.stderr(Stdio::null()).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// A tree's git state: `Some(commit)` when it is a clean checkout, else why not.
fn git_state(tree: &Path) -> Result<String, String> {
    let commit =
        output(
            Command::new("git")
                .args(["-C"])
                .arg(tree)
                .args(["rev-parse", "--short=7", "HEAD"]),
        )
        .ok_or("not a git checkout")?;
    let dirty = output(Command::new("git").args(["-C"]).arg(tree).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))
    .ok_or("git status failed")?;
    if dirty.is_empty() {
        Ok(commit)
    } else {
        Err("it has uncommitted changes (commit or stash them to cache the build)".into())
    }
}

/// Unpacks `tarball` once under `src_root`; returns the tree.
fn unpack(
    tarball: &Path,
    src_root: &Path,
    size: u64,
    say: &mut dyn FnMut(&str),
) -> Result<PathBuf, BuildError> {
    let name = tarball
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.split(".tar").next().unwrap_or("linux").to_string();
    let tree = src_root.join(format!("{stem}-{size:x}"));
    if tree.join(".ktstr-unpacked").is_file() {
        return Ok(tree);
    }
    say(&format!(
        "unpack {} into {}",
        tarball.display(),
        tree.display()
    ));
    let tmp = src_root.join(format!(".unpack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io("creating", &tmp))?;
    let log = src_root.join(format!("{stem}-unpack.log"));
    run_logged(
        "unpack",
        Command::new("tar")
            .arg("xf")
            .arg(tarball)
            .arg("-C")
            .arg(&tmp),
        &log,
    )?;
    // The tarball holds one top-level directory.
    let top = std::fs::read_dir(&tmp)
        .map_err(io("reading", &tmp))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("Makefile").is_file())
        .ok_or_else(|| {
            BuildError::NoSource(format!("{} holds no kernel tree", tarball.display()))
        })?;
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::rename(&top, &tree).map_err(io("moving", &tree))?;
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::write(tree.join(".ktstr-unpacked"), b"").map_err(io("writing", &tree))?;
    Ok(tree)
}

/// Configures `tree` with ktstr's fragment unless its `.config` already has what ktstr needs
/// and came from this fragment (or is the user's own, with sched_ext).
fn configure(
    tree: &Path,
    ours: bool,
    log: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    let config = tree.join(".config");
    let marker = tree.join(".ktstr-kconfig");
    let current = std::fs::read_to_string(&config).unwrap_or_default();
    let fragment_applied =
        std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == kconfig_tag());
    let keep = if ours {
        fragment_applied && missing_required(&current).is_empty()
    } else {
        // A user's own configuration stays when it has sched_ext.
        !current.is_empty() && missing_required(&current).is_empty()
    };
    if !keep {
        say("configure: allnoconfig + ktstr.kconfig");
        let frag = tree.join(".ktstr.kconfig");
        std::fs::write(&frag, KCONFIG).map_err(io("writing", &frag))?;
        run_logged(
            "configure",
            Command::new("make")
                .arg("-C")
                .arg(tree)
                .arg("allnoconfig")
                .arg(format!("KCONFIG_ALLCONFIG={}", frag.display())),
            log,
        )?;
        std::fs::write(&marker, kconfig_tag()).map_err(io("writing", &marker))?;
    }
    let now = std::fs::read_to_string(&config).map_err(io("reading", &config))?;
    if !keep {
        let dropped = fragment_not_applied(KCONFIG, &now);
        if !dropped.is_empty() {
            say(&format!(
                "configure: these fragment options did not take effect (unmet dependencies): {}",
                dropped.join(" ")
            ));
        }
    }
    let missing = missing_required(&now);
    if !missing.is_empty() {
        return Err(BuildError::MissingOptions { missing, config });
    }
    Ok(())
}

/// The `CONFIG_X=value` lines of `fragment` that `config` does not have.
fn fragment_not_applied<'a>(fragment: &'a str, config: &str) -> Vec<&'a str> {
    fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_"))
        .filter(|l| !config.lines().any(|c| c.trim() == *l))
        .collect()
}

/// The CPUs this process may run on, in order (every CPU when the kernel will not say).
fn allowed_cpus() -> Vec<u32> {
    crate::host_cpus::allowed_cpus().unwrap_or_else(|_| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (0..n as u32).collect()
    })
}

/// Makes `cmd` (and everything it starts) run only on `cpus`.
fn confine(cmd: &mut Command, cpus: &[u32]) {
    use std::os::unix::process::CommandExt;
    let set = crate::host_cpus::cpu_set(cpus);
    // SAFETY: the closure runs between fork and exec; it only makes one async-signal-safe
    // system call on a set built before the fork, and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Where sources ktstr unpacks or exports live: `{cache root}/src`.
fn source_root(cache: &KernelCache) -> Result<PathBuf, BuildError> {
    let root = cache.dir().parent().unwrap_or(cache.dir()).join("src");
    std::fs::create_dir_all(&root).map_err(io("creating", &root))?;
    Ok(root)
}

/// `{ref}-git-{short_hash}-{arch}-kc{h}` (library.md §8).
fn git_key(git_ref: &str, commit: &str, arch: &str, tag: &str) -> String {
    format!(
        "{}-git-{}-{arch}-{tag}",
        crate::kernel::git::ref_label(git_ref),
        &commit[..7.min(commit.len())]
    )
}

/// A source made ready: already in the cache, or a tree to build (and whether it may be cached).
enum Prepared {
    Cached(Entry),
    Tree {
        tree: PathBuf,
        source: Source,
        cacheable: Result<(), String>,
    },
}

/// Builds `src` into `cache` (or finds it there). `say` receives one line per phase.
pub fn build(
    src: &BuildSource,
    opts: &BuildOptions,
    cache: &KernelCache,
    say: &mut dyn FnMut(&str),
) -> Result<Outcome, BuildError> {
    let t0 = Instant::now();
    let tag = kconfig_tag();
    let arch = "x86_64";
    cache.sweep_staging();
    let prepared = match src {
        BuildSource::Tarball(t) => prepare_tarball(t, opts, cache, say)?,
        BuildSource::Git { url, git_ref } => {
            prepare_git(url, git_ref, opts, cache, arch, &tag, say)?
        }
        BuildSource::Tree(t) => prepare_tree(t)?,
    };
    let (tree, source, cacheable) = match prepared {
        Prepared::Cached(e) => return Ok(Outcome::Cached(e)),
        Prepared::Tree {
            tree,
            source,
            cacheable,
        } => (tree, source, cacheable),
    };
    let log = tree.join("ktstr-build.log");
    let _ = std::fs::remove_file(&log);
    if opts.clean {
        clean(src, &tree, &log, say)?;
    }
    // Sources ktstr unpacked itself always get its configuration; a user's tree keeps a
    // .config that already has what ktstr needs.
    configure(&tree, !matches!(src, BuildSource::Tree(_)), &log, say)?;
    let version = output(
        Command::new("make")
            .arg("-s")
            .arg("-C")
            .arg(&tree)
            .arg("kernelversion"),
    )
    .unwrap_or_else(|| "unknown".into());
    let key = cache_key(&source, &cacheable, &version, arch, &tag);
    if cacheable.is_ok() && !opts.force {
        if let Some(e) = cache
            .get(&key)
            .filter(|e| e.corrupt().is_none() && !e.stale())
        {
            return Ok(Outcome::Cached(e));
        }
    }
    let _lock = cache.lock(&key)?;
    make_bzimage(&tree, opts, &version, &log, say)?;
    let image = tree.join("arch/x86/boot/bzImage");
    if let Err(why) = cacheable {
        return Ok(Outcome::Uncached { image, why });
    }
    let stage = stage_artifacts(cache, &key, &tree, &image, &log, say)?;
    let config = std::fs::read(tree.join(".config")).unwrap_or_default();
    let meta = Metadata {
        version,
        source,
        arch: arch.into(),
        image_name: "bzImage".into(),
        config_hash: format!("{:08x}", crc32fast::hash(&config)),
        ktstr_kconfig_hash: tag,
        built_at: now_s(),
        has_vmlinux: true,
        vmlinux_stripped: true,
        build_s: t0.elapsed().as_secs(),
    };
    say(&format!("store as {key}"));
    Ok(Outcome::Built(cache.store(&key, &stage, &meta)?))
}

/// A tarball: found in the cache by its path, size and mtime, else unpacked.
fn prepare_tarball(
    t: &Path,
    opts: &BuildOptions,
    cache: &KernelCache,
    say: &mut dyn FnMut(&str),
) -> Result<Prepared, BuildError> {
    let md = std::fs::metadata(t).map_err(io("reading", t))?;
    let (size, mtime) = (
        md.len(),
        md.modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs()),
    );
    let source = Source::Tarball {
        path: t.canonicalize().unwrap_or_else(|_| t.to_path_buf()),
        size,
        mtime,
    };
    if !opts.force {
        if let Some(e) = cache
            .usable()
            .into_iter()
            .find(|e| e.meta.as_ref().is_ok_and(|m| m.source == source))
        {
            return Ok(Prepared::Cached(e));
        }
    }
    let src_root = source_root(cache)?;
    Ok(Prepared::Tree {
        tree: unpack(t, &src_root, size, say)?,
        source,
        cacheable: Ok(()),
    })
}

/// A git commit: resolved (fetched when remote), found in the cache by its key, else exported.
fn prepare_git(
    url: &str,
    git_ref: &str,
    opts: &BuildOptions,
    cache: &KernelCache,
    arch: &str,
    tag: &str,
    say: &mut dyn FnMut(&str),
) -> Result<Prepared, BuildError> {
    use crate::kernel::git::{self as git, GitUrl};
    let src_root = source_root(cache)?;
    let resolved = match git::classify(url)? {
        GitUrl::Local(p) => git::resolve_local(&p, git_ref)?,
        GitUrl::Network { url, host, port } => {
            git::check_reachable(&url, &host, port, std::time::Duration::from_secs(5))?;
            say(&format!("fetch {url} {git_ref} (git fetch --depth 1)"));
            git::fetch(&url, git_ref, &src_root)?
        }
    };
    let source = Source::Git {
        url: url.to_string(),
        git_ref: git_ref.to_string(),
        commit: resolved.commit.clone(),
    };
    if !opts.force {
        let key = git_key(git_ref, &resolved.commit, arch, tag);
        if let Some(e) = cache
            .get(&key)
            .filter(|e| e.corrupt().is_none() && !e.stale())
        {
            return Ok(Prepared::Cached(e));
        }
    }
    say(&format!(
        "export {git_ref} ({}) into {}",
        resolved.short(),
        src_root.display()
    ));
    let (tree, files) = git::export(&resolved, &src_root)?;
    if files > 0 {
        say(&format!("exported {files} files"));
    }
    Ok(Prepared::Tree {
        tree,
        source,
        cacheable: Ok(()),
    })
}

/// A kernel tree: built in place, cacheable only when it is a clean git checkout.
fn prepare_tree(t: &Path) -> Result<Prepared, BuildError> {
    if !t.join("Makefile").is_file() {
        return Err(BuildError::NoSource(format!(
            "{} is not a kernel tree (no Makefile)",
            t.display()
        )));
    }
    let tree = t.canonicalize().map_err(io("reading", t))?;
    let (commit, cacheable) = match git_state(&tree) {
        Ok(c) => (Some(c), Ok(())),
        Err(why) => (None, Err(why)),
    };
    let source = Source::Local {
        path: tree.clone(),
        commit,
    };
    Ok(Prepared::Tree {
        tree,
        source,
        cacheable,
    })
}

/// `--clean`: `make mrproper` on a user's tree; sources ktstr unpacked need none.
fn clean(
    src: &BuildSource,
    tree: &Path,
    log: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    match src {
        BuildSource::Tree(_) => {
            say("clean: make mrproper");
            run_logged(
                "clean",
                Command::new("make").arg("-C").arg(tree).arg("mrproper"),
                log,
            )?;
        }
        _ => say("--clean only applies to --source trees; ignored"),
    }
    Ok(())
}

/// The cache key: by version for tarballs, by commit for git and clean trees, else by path.
fn cache_key(
    source: &Source,
    cacheable: &Result<(), String>,
    version: &str,
    arch: &str,
    tag: &str,
) -> String {
    match (source, cacheable) {
        (Source::Tarball { .. }, _) => format!("{version}-tarball-{arch}-{tag}"),
        (
            Source::Git {
                git_ref, commit, ..
            },
            _,
        ) => git_key(git_ref, commit, arch, tag),
        (
            Source::Local {
                commit: Some(c), ..
            },
            Ok(()),
        ) => format!("local-{c}-{arch}-{tag}"),
        (Source::Local { path, .. }, _) => format!(
            "local-unknown-{:08x}-{arch}-{tag}",
            crc32fast::hash(path.to_string_lossy().as_bytes())
        ),
    }
}

/// `make bzImage`, on the capped CPUs when `--cpu-cap` is given.
fn make_bzimage(
    tree: &Path,
    opts: &BuildOptions,
    version: &str,
    log: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<(), BuildError> {
    let tb = Instant::now();
    let allowed = allowed_cpus();
    let cpus: Vec<u32> = match opts.cpu_cap {
        Some(n) => allowed.iter().copied().take(n.max(1)).collect(),
        None => allowed,
    };
    let jobs = cpus.len().max(1);
    say(&format!(
        "build {version} with make -j{jobs} bzImage{} (takes minutes; log: {})",
        if opts.cpu_cap.is_some() {
            format!(" on CPUs {cpus:?}")
        } else {
            String::new()
        },
        log.display()
    ));
    let mut make = Command::new("make");
    make.arg("-C")
        .arg(tree)
        .arg(format!("-j{jobs}"))
        .arg("bzImage")
        .arg("KCFLAGS=-Wno-error");
    if opts.cpu_cap.is_some() {
        confine(&mut make, &cpus);
    }
    run_logged("build", &mut make, log)?;
    say(&format!("built in {} s", tb.elapsed().as_secs()));
    Ok(())
}

/// Stages the stripped vmlinux, its BTF, the image and the `.config` for `key`; returns the dir.
fn stage_artifacts(
    cache: &KernelCache,
    key: &str,
    tree: &Path,
    image: &Path,
    log: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<PathBuf, BuildError> {
    say("strip: vmlinux without DWARF (symbols and BTF kept), vmlinux.btf");
    let stage = cache.staging(key)?;
    let vmlinux = tree.join("vmlinux");
    run_logged(
        "strip",
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&vmlinux)
            .arg(stage.join("vmlinux")),
        log,
    )?;
    run_logged(
        "strip",
        Command::new("objcopy")
            .args(["-O", "binary", "--only-section=.BTF"])
            .arg(&vmlinux)
            .arg(stage.join("vmlinux.btf")),
        log,
    )?;
    for (from, to) in [(image, "bzImage"), (&tree.join(".config"), ".config")] {
        std::fs::copy(from, stage.join(to)).map_err(io("copying", from))?;
    }
    Ok(stage)
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_source_tarball_is_found() {
        let d = tempfile::tempdir().unwrap();
        let e = find_tarball(d.path()).unwrap_err().to_string();
        assert!(e.contains("apt-get install linux-source-6.12"), "{e}");
        for n in [
            "linux-source-6.1.tar.xz",
            "linux-source-6.12.tar.xz",
            "linux-source-6.9.tar.gz",
            "linux-config-6.12",
            "linux-source-6.13.txt",
        ] {
            std::fs::write(d.path().join(n), b"").unwrap();
        }
        assert!(find_tarball(d.path())
            .unwrap()
            .ends_with("linux-source-6.12.tar.xz"));
    }

    #[test]
    fn a_failing_step_names_its_log_and_tail() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("x.log");
        let e = run_logged(
            "build",
            Command::new("sh").args(["-c", "echo first; echo boom >&2; exit 3"]),
            &log,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("build failed") && e.contains("boom"), "{e}");
        assert!(e.contains(&log.display().to_string()), "{e}");
        let e = run_logged("build", &mut Command::new("/nonexistent/make"), &log)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot run"), "{e}");
    }

    #[test]
    fn fragment_lines_that_did_not_take_effect_are_named() {
        let frag = "# c\nCONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n";
        assert_eq!(fragment_not_applied(frag, "CONFIG_A=y\n"), ["CONFIG_B=y"]);
        assert!(fragment_not_applied(frag, "CONFIG_B=y\nCONFIG_A=y").is_empty());
    }

    #[test]
    fn a_capped_build_runs_on_that_many_cpus() {
        let allowed = allowed_cpus();
        assert!(!allowed.is_empty());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "grep Cpus_allowed_list /proc/self/status"]);
        confine(&mut cmd, &allowed[..1]);
        let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
        assert_eq!(
            out.split_whitespace().last(),
            Some(allowed[0].to_string().as_str()),
            "{out}"
        );
    }

    #[test]
    fn a_directory_without_a_makefile_is_not_a_tree() {
        let d = tempfile::tempdir().unwrap();
        let c = KernelCache::at(d.path());
        let opts = BuildOptions {
            force: false,
            clean: false,
            cpu_cap: Some(1),
        };
        let e = build(&BuildSource::Tree(d.path().into()), &opts, &c, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a kernel tree"), "{e}");
    }
}
