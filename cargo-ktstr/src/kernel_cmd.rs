//! `cargo ktstr kernel build|list|clean` (cli.md §2.12): the kernel cache from the command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ktstr::kernel::build::{self, BuildOptions, BuildSource, Outcome};
use ktstr::kernel::cache::{clean_plan, Entry, KernelCache};

/// `kernel` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KernelCommand {
    /// Build a guest kernel with ktstr's configuration into the cache (or find it there).
    /// With no source: the newest /usr/src/linux-source-*.tar.* (Debian's linux-source
    /// packages).
    Build(BuildArgs),
    /// List cached kernels, newest first.
    List {
        /// One JSON document instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove cached kernels.
    Clean(CleanArgs),
}

/// Flags of `kernel build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// A kernel version to build from the matching /usr/src/linux-source-VERSION tarball.
    #[arg(conflicts_with_all = ["source", "git"])]
    version: Option<String>,
    /// A kernel tree or a source tarball (.tar.xz, .tar.gz, .tar.bz2).
    #[arg(long, conflicts_with = "git")]
    source: Option<PathBuf>,
    /// A git repository to build from (with --ref): a path or file:// URL (read directly), or
    /// a network URL (fetched with `git fetch --depth 1`; fails fast when unreachable).
    #[arg(long, requires = "git_ref")]
    git: Option<String>,
    /// The branch, tag or commit of --git.
    #[arg(long = "ref", requires = "git")]
    git_ref: Option<String>,
    /// Rebuild even when the cache has this kernel.
    #[arg(long)]
    force: bool,
    /// Run `make mrproper` first (only with --source TREE).
    #[arg(long)]
    clean: bool,
    /// Build with `make -jN` confined to N of the CPUs this process may use (default: every
    /// allowed CPU).
    #[arg(long)]
    cpu_cap: Option<usize>,
}

/// Flags of `kernel clean`.
#[derive(Debug, clap::Args)]
pub struct CleanArgs {
    /// Keep the N newest valid kernels.
    #[arg(long, conflicts_with = "corrupt_only")]
    keep: Option<usize>,
    /// Do not ask.
    #[arg(long)]
    force: bool,
    /// Remove only corrupt entries.
    #[arg(long)]
    corrupt_only: bool,
}

/// Runs a `kernel` subcommand.
pub fn run(cmd: KernelCommand) -> Result<ExitCode> {
    let cache = KernelCache::open_default();
    match cmd {
        KernelCommand::Build(a) => build(a, &cache),
        KernelCommand::List { json } => {
            print!("{}", list(&cache.list(), json));
            Ok(ExitCode::SUCCESS)
        }
        KernelCommand::Clean(a) => clean(a, &cache),
    }
}

fn build(a: BuildArgs, cache: &KernelCache) -> Result<ExitCode> {
    let src = if let (Some(url), Some(git_ref)) = (&a.git, &a.git_ref) {
        BuildSource::Git {
            url: url.clone(),
            git_ref: git_ref.clone(),
        }
    } else if let Some(s) = &a.source {
        if s.is_dir() {
            BuildSource::Tree(s.clone())
        } else if s.is_file() {
            BuildSource::Tarball(s.clone())
        } else {
            bail!("--source {}: no such file or directory", s.display());
        }
    } else if let Some(v) = &a.version {
        let p = PathBuf::from(format!("/usr/src/linux-source-{v}.tar.xz"));
        if !p.is_file() {
            bail!(
                "no {}: install it with `apt-get install linux-source-{v}`, or pass --source \
                 PATH (downloading kernels is not supported)",
                p.display()
            );
        }
        BuildSource::Tarball(p)
    } else {
        BuildSource::Tarball(build::find_tarball(std::path::Path::new("/usr/src"))?)
    };
    let opts = BuildOptions {
        force: a.force,
        clean: a.clean,
        cpu_cap: a.cpu_cap,
    };
    let t0 = Instant::now();
    let mut say = |s: &str| eprintln!("ktstr: kernel [{:>4} s] {s}", t0.elapsed().as_secs());
    match build::build(&src, &opts, cache, &mut say)? {
        Outcome::Cached(e) => {
            eprintln!(
                "ktstr: kernel {} is cached (use --force to rebuild)",
                describe(&e)
            );
            println!("{}", e.dir.display());
        }
        Outcome::Built(e) => {
            eprintln!(
                "ktstr: kernel {} built in {} s",
                describe(&e),
                t0.elapsed().as_secs()
            );
            println!("{}", e.dir.display());
        }
        Outcome::Uncached { image, why } => {
            eprintln!("ktstr: built {}, not cached: {why}", image.display());
            println!("{}", image.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(e: &Entry) -> String {
    match &e.meta {
        Ok(m) => format!("{} ({})", m.version, e.key),
        Err(_) => e.key.clone(),
    }
}

/// The `kernel list` output.
fn list(entries: &[Entry], json: bool) -> String {
    if json {
        let v: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "key": e.key,
                    "path": e.dir,
                    "stale": e.stale(),
                    "usable": !e.stale() && e.corrupt().is_none(),
                    "corrupt": e.corrupt(),
                    "metadata": e.meta.as_ref().ok(),
                })
            })
            .collect();
        return serde_json::to_string_pretty(&v).unwrap_or_default() + "\n";
    }
    if entries.is_empty() {
        return "no cached kernels (build one: cargo ktstr kernel build)\n".into();
    }
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    t.set_header(["KEY", "VERSION", "BUILT", "STATE"]);
    for e in entries {
        let (version, built) = match &e.meta {
            Ok(m) => (
                m.version.clone(),
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(m.built_at),
                )
                .to_string(),
            ),
            Err(_) => ("-".into(), "-".into()),
        };
        let state = match (e.corrupt(), e.stale()) {
            (Some(why), _) => format!("corrupt: {why}"),
            (None, true) => "(stale kconfig)".into(),
            (None, false) => "ok".into(),
        };
        t.add_row([e.key.clone(), version, built, state]);
    }
    format!("{t}\n")
}

fn clean(a: CleanArgs, cache: &KernelCache) -> Result<ExitCode> {
    let entries = cache.list();
    let doomed = clean_plan(&entries, a.keep.unwrap_or(0), a.corrupt_only);
    if doomed.is_empty() {
        eprintln!("ktstr: nothing to remove");
        return Ok(ExitCode::SUCCESS);
    }
    for e in &doomed {
        eprintln!("  {}", describe(e));
    }
    if !a.force {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to remove {} kernel(s) without a terminal to ask on; pass --force",
                doomed.len()
            );
        }
        eprint!("remove these {} kernel(s)? [y/N] ", doomed.len());
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .context("reading the answer")?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            eprintln!("ktstr: nothing removed");
            return Ok(ExitCode::SUCCESS);
        }
    }
    for e in doomed {
        cache.remove(&e.key)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_cache_says_how_to_fill_it() {
        assert!(list(&[], false).contains("cargo ktstr kernel build"));
        assert_eq!(list(&[], true).trim(), "[]");
    }
}
