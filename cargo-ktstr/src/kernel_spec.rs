//! `--kernel` selectors that stand for other selectors: `START..END` ranges (expanded against
//! the kernel cache, with a warning when the cache covers the range only partly) and
//! `git+URL#REF` sources (built into the cache on a miss, which takes minutes). Each becomes
//! the cache entry directories it names; every other selector passes through unchanged.

use anyhow::{Context, Result};
use ktstr::kernel::build::{self, BuildOptions, BuildSource, Outcome};
use ktstr::kernel::cache::KernelCache;
use ktstr::kernel::range;

/// Expands ranges and git sources in `specs` into cache entry directories.
pub fn expand(specs: &[String], cache: &KernelCache) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        if spec.starts_with("git+") {
            out.push(build_git(spec, cache).with_context(|| format!("--kernel {spec}"))?);
        } else if range::is_range(spec) && !std::path::Path::new(spec).exists() {
            let x = range::expand(spec, cache).with_context(|| format!("--kernel {spec}"))?;
            let picked: Vec<String> = x
                .picked
                .iter()
                .filter_map(|e| e.meta.as_ref().ok().map(|m| m.version.clone()))
                .collect();
            eprintln!(
                "ktstr: --kernel {spec} → {} (cached kernels only: ktstr does not download)",
                picked.join(", ")
            );
            if !x.missing.is_empty() {
                eprintln!(
                    "ktstr: warning: --kernel {spec} is partial: no cached {} (build with \
                     `cargo ktstr kernel build --source TREE`)",
                    x.missing.join(", ")
                );
            }
            out.extend(x.picked.iter().map(|e| e.dir.display().to_string()));
        } else {
            out.push(spec.clone());
        }
    }
    Ok(out)
}

/// Finds `git+URL#REF` in the cache or builds it there; returns the entry directory.
fn build_git(spec: &str, cache: &KernelCache) -> Result<String> {
    let (url, git_ref) = ktstr::kernel::git::parse_spec(spec)?;
    let opts = BuildOptions {
        force: false,
        clean: false,
        cpu_cap: None,
    };
    let t0 = std::time::Instant::now();
    let mut say = |s: &str| eprintln!("ktstr: kernel [{:>4} s] {s}", t0.elapsed().as_secs());
    let src = BuildSource::Git { url, git_ref };
    match build::build(&src, &opts, cache, &mut say)? {
        Outcome::Cached(e) | Outcome::Built(e) => Ok(e.dir.display().to_string()),
        // A git export is always clean, so this does not happen; say so if it ever does.
        Outcome::Uncached { image, why } => anyhow::bail!(
            "built {} but did not cache it ({why}); pass the tree instead",
            image.display()
        ),
    }
}
