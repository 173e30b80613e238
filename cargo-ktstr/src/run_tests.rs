//! `cargo ktstr test` (alias `nextest`): resolve the kernels, export them and the run modes
//! to the environment, and hand everything else to `cargo nextest run`.
//!
//! The CLI stays thin (cli.md §1): test discovery, VM boot and verdicts belong to the
//! harness. This module only turns `--kernel` selectors into `KTSTR_KERNEL` (one kernel) or
//! `KTSTR_KERNEL_LIST` (several, one nextest case per test × kernel) and runs nextest with
//! the trailing arguments unchanged.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::Args;
use ktstr::kernel::{image_kind, ImageKind};

/// Arguments of `cargo ktstr test`.
#[derive(Debug, Args)]
#[command(after_help = "\
Thresholds are stricter with --release (longest gap 2000 ms instead of 3000, spread 15% \
instead of 35%): a test that barely passes in debug can fail in release.

ktstr's own flags must come first: from the first argument ktstr does not know (or after \
`--`), everything goes to the wrapped command (nextest; cargo llvm-cov nextest for coverage) \
unchanged, so `cargo ktstr test --workspace --release` passes --release to nextest, not to \
ktstr.")]
pub struct TestArgs {
    /// A kernel to run every case on: a kernel build tree or a directory holding a kernel
    /// and its vmlinux (e.g. ../shared/kernel). Repeat it to run each case once per kernel.
    #[arg(long, value_name = "SPEC")]
    pub(crate) kernel: Vec<String>,
    /// Turn off performance-mode features (exports KTSTR_NO_PERF_MODE=1).
    #[arg(long)]
    pub(crate) no_perf_mode: bool,
    /// Make hardware-driven skips (resource contention, a host too small) fail
    /// (exports KTSTR_NO_SKIP_MODE=1).
    #[arg(long)]
    pub(crate) no_skip_mode: bool,
    /// Build and run with the release profile (stricter thresholds, see below).
    #[arg(long)]
    pub(crate) release: bool,
    /// Everything else, passed verbatim to the wrapped command (`cargo nextest run`; `cargo
    /// llvm-cov nextest` for coverage).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "NEXTEST_ARGS"
    )]
    pub(crate) args: Vec<String>,
}

/// A kernel selected for the run: its label in case names and the path the harness boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedKernel {
    /// `[a-z0-9_]` label, unique within the run.
    pub label: String,
    /// The directory or image path exported to the harness.
    pub path: PathBuf,
}

/// Resolves the `--kernel` selectors (build trees, prebuilt directories, cached versions and
/// keys, `START..END` ranges over the cache, `git+URL#REF` sources, built on a miss),
/// deduplicated by the image they resolve to. Raw images get an error that says what to pass
/// instead.
pub fn select_kernels(specs: &[String]) -> Result<Vec<SelectedKernel>> {
    select_kernels_in(specs, &ktstr::kernel::cache::KernelCache::open_default())
}

/// [`select_kernels`] against a given kernel cache (versions and keys are looked up there).
pub fn select_kernels_in(
    specs: &[String],
    cache: &ktstr::kernel::cache::KernelCache,
) -> Result<Vec<SelectedKernel>> {
    let mut out: Vec<SelectedKernel> = Vec::new();
    let mut images: Vec<PathBuf> = Vec::new();
    let specs = crate::kernel_spec::expand(specs, cache)?;
    for spec in &specs {
        let cached_dir;
        let mut path = Path::new(spec);
        if !path.exists() {
            let versionish = spec
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
                && !spec.contains('/');
            if !versionish {
                bail!(
                    "--kernel {spec}: no such file or directory\n\
                     hint: pass a kernel build tree, a directory with bzImage and vmlinux, a \
                     cached version or key (`cargo ktstr kernel list`), START..END or git+URL#REF"
                );
            }
            let k = ktstr::kernel::resolve_in(Some(spec), cache)
                .with_context(|| format!("--kernel {spec}"))?;
            cached_dir = k.image.parent().map(Path::to_path_buf).unwrap_or_default();
            path = &cached_dir;
        }
        if path.is_file() {
            if image_kind(path).is_ok() {
                bail!(
                    "--kernel {spec}: a raw kernel image is not enough for `test`: its cases need \
                     the matching vmlinux (BTF, probes) and the kernel's .config beside it\n\
                     hint: pass the directory that holds the image, its vmlinux and .config \
                     (e.g. --kernel {}), or the kernel build tree",
                    path.parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .unwrap_or(Path::new("."))
                        .display()
                );
            }
            bail!("--kernel {spec}: not a kernel image or a directory holding one");
        }
        let k = ktstr::kernel::resolve_path(path).with_context(|| format!("--kernel {spec}"))?;
        if k.vmlinux.is_none() && image_kind(&k.image).ok() != Some(ImageKind::Elf) {
            bail!(
                "--kernel {spec}: {} has no vmlinux beside it; sched_ext tests need the kernel's \
                 BTF (build the kernel tree fully: make, not only make bzImage)",
                k.image.display()
            );
        }
        if images.contains(&k.image) {
            continue; // two specs for one kernel: run it once
        }
        images.push(k.image.clone());
        let dir = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let base = dir
            .file_name()
            .map(|s| ktstr::kernel::sanitize(&s.to_string_lossy()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "kernel".into());
        let mut label = base.clone();
        let mut n = 2;
        while out.iter().any(|k| k.label == label) {
            label = format!("{base}_{n}");
            n += 1;
        }
        out.push(SelectedKernel { label, path: dir });
    }
    Ok(out)
}

/// The cargo that runs us (`$CARGO`), else `cargo` on PATH.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// `cargo SUBCOMMAND…` for `a` with `kernels` (not yet spawned): the profile, the trailing
/// arguments, and the kernels and modes in the environment.
pub fn cargo_command(subcommand: &[&str], a: &TestArgs, kernels: &[SelectedKernel]) -> Command {
    let mut cmd = cargo();
    cmd.args(subcommand);
    if a.release {
        cmd.args(["--cargo-profile", "release"]);
    }
    cmd.args(&a.args);
    match kernels {
        [] => {}
        [one] => {
            cmd.env("KTSTR_KERNEL", &one.path)
                .env_remove("KTSTR_KERNEL_LIST");
        }
        many => {
            let list = many
                .iter()
                .map(|k| format!("{}={}", k.label, k.path.display()))
                .collect::<Vec<_>>()
                .join(";");
            cmd.env("KTSTR_KERNEL_LIST", list)
                .env_remove("KTSTR_KERNEL");
        }
    }
    if a.no_perf_mode {
        cmd.env("KTSTR_NO_PERF_MODE", "1");
    }
    if a.no_skip_mode {
        cmd.env("KTSTR_NO_SKIP_MODE", "1");
    }
    cmd
}

/// Runs `test`: exits with nextest's status (128 + signal when it was killed).
pub fn run(a: TestArgs) -> Result<ExitCode> {
    run_wrapped(
        &a,
        &["nextest", "run"],
        "cargo nextest run",
        "cargo install cargo-nextest",
    )
}

/// Runs `cargo SUBCOMMAND` for `a` (named `what` in errors, `install` the hint when it cannot
/// be spawned) with the kernels and modes in its environment; its exit status is ours.
pub fn run_wrapped(
    a: &TestArgs,
    subcommand: &[&str],
    what: &str,
    install: &str,
) -> Result<ExitCode> {
    let kernels = select_kernels(&a.kernel)?;
    for k in &kernels {
        eprintln!("ktstr: kernel {} (label {})", k.path.display(), k.label);
    }
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let strict = a.no_skip_mode || ktstr::runner::strict_mode();
    if let Some(notice) = no_kernel_notice(
        kernels.is_empty(),
        env("KTSTR_KERNEL").is_some() || env("KTSTR_KERNEL_LIST").is_some(),
        strict,
    ) {
        eprintln!("{notice}");
    }
    let mut cmd = cargo_command(subcommand, a, &kernels);
    // The test binaries record the cases they list as ignored because they cannot run here.
    let records = tempfile::tempdir().context("creating a temporary directory")?;
    cmd.env(ktstr::unrunnable::DIR_ENV, records.path());
    let st = cmd
        .status()
        .with_context(|| format!("running `{what}` (install it: {install})"))?;
    if let Some(s) = ktstr::unrunnable::summary(&ktstr::unrunnable::read_all(records.path())) {
        eprint!("{s}");
    }
    Ok(ExitCode::from(exit_byte(st)))
}

/// What to tell the user before the run when no kernel is named: whether VM cases will be
/// skipped (listed as ignored) or, under CI / `--no-skip-mode`, fail; `None` with a kernel.
fn no_kernel_notice(no_flag: bool, env_kernel: bool, strict: bool) -> Option<String> {
    if !no_flag || env_kernel {
        return None;
    }
    Some(if strict {
        "ktstr: no kernel (no --kernel, KTSTR_KERNEL unset): every case that boots a VM will \
         fail (CI / --no-skip-mode). Pass --kernel DIR or set KTSTR_KERNEL."
            .into()
    } else {
        "ktstr: no kernel (no --kernel, KTSTR_KERNEL unset): every case that boots a VM is \
         listed as ignored and will be reported skipped, not run; only host-only cases run. \
         Pass --kernel DIR or set KTSTR_KERNEL."
            .into()
    })
}

/// The exit code of a finished child as a shell reports it.
pub fn exit_byte(st: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => (128 + sig) as u8,
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: TestArgs,
    }

    #[test]
    fn no_kernel_notice_says_skip_or_fail() {
        assert_eq!(no_kernel_notice(false, false, false), None);
        assert_eq!(no_kernel_notice(true, true, false), None);
        assert!(no_kernel_notice(true, false, false)
            .unwrap()
            .contains("listed as ignored"));
        assert!(no_kernel_notice(true, false, true)
            .unwrap()
            .contains("will fail"));
    }

    fn parse(args: &[&str]) -> TestArgs {
        T::try_parse_from(std::iter::once("test").chain(args.iter().copied()))
            .unwrap()
            .a
    }

    fn nextest_command(a: &TestArgs, kernels: &[SelectedKernel]) -> Command {
        cargo_command(&["nextest", "run"], a, kernels)
    }

    fn argv(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    fn env(c: &Command, key: &str) -> Option<Option<String>> {
        c.get_envs()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.map(|v| v.to_string_lossy().into_owned()))
    }

    #[test]
    fn own_flags_first_then_everything_to_nextest() {
        let a = parse(&[
            "--release",
            "--workspace",
            "--release",
            "-E",
            "test(/fault/)",
        ]);
        assert!(a.release);
        let c = nextest_command(&a, &[]);
        assert_eq!(
            argv(&c),
            [
                "nextest",
                "run",
                "--cargo-profile",
                "release",
                "--workspace",
                "--release",
                "-E",
                "test(/fault/)"
            ]
        );
        let a = parse(&["--", "--no-perf-mode"]);
        assert!(!a.no_perf_mode);
        assert_eq!(a.args, ["--no-perf-mode"]);
    }

    #[test]
    fn archive_and_partition_flags_reach_nextest_unchanged() {
        let a = parse(&[
            "--no-skip-mode",
            "--archive-file",
            "a.tar.zst",
            "--workspace-remap",
            "/src",
            "--partition",
            "count:2/3",
        ]);
        assert!(a.no_skip_mode);
        assert_eq!(
            argv(&nextest_command(&a, &[])),
            [
                "nextest",
                "run",
                "--archive-file",
                "a.tar.zst",
                "--workspace-remap",
                "/src",
                "--partition",
                "count:2/3"
            ]
        );
    }

    #[test]
    fn modes_and_kernels_reach_the_environment() {
        let a = parse(&["--no-perf-mode", "--no-skip-mode"]);
        let one = [SelectedKernel {
            label: "kernel".into(),
            path: "/k".into(),
        }];
        let c = nextest_command(&a, &one);
        assert_eq!(env(&c, "KTSTR_NO_PERF_MODE"), Some(Some("1".into())));
        assert_eq!(env(&c, "KTSTR_NO_SKIP_MODE"), Some(Some("1".into())));
        assert_eq!(env(&c, "KTSTR_KERNEL"), Some(Some("/k".into())));
        assert_eq!(env(&c, "KTSTR_KERNEL_LIST"), Some(None));
        let two = [
            one[0].clone(),
            SelectedKernel {
                label: "next".into(),
                path: "/n".into(),
            },
        ];
        let c = nextest_command(&parse(&[]), &two);
        assert_eq!(
            env(&c, "KTSTR_KERNEL_LIST"),
            Some(Some("kernel=/k;next=/n".into()))
        );
        assert_eq!(env(&c, "KTSTR_KERNEL"), Some(None));
        assert_eq!(env(&c, "KTSTR_NO_PERF_MODE"), None);
    }

    /// Directories resolve and deduplicate; raw images, versions, ranges, git sources and
    /// missing paths are refused with what to pass instead.
    #[test]
    fn kernel_selectors() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        std::fs::create_dir(&k).unwrap();
        // A minimal ELF header is enough for image detection.
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        std::fs::write(k.join("vmlinux"), &elf).unwrap();
        let ks = select_kernels_in(
            &[k.display().to_string(), format!("{}/.", k.display())],
            &ktstr::kernel::cache::KernelCache::at(&d.path().join("empty-cache")),
        )
        .unwrap();
        assert_eq!(ks.len(), 1, "{ks:?}");
        assert_eq!(ks[0].label, "k");
        let empty_cache = ktstr::kernel::cache::KernelCache::at(&d.path().join("empty-cache"));
        let err = |s: &str| {
            format!(
                "{:#}",
                select_kernels_in(&[s.to_string()], &empty_cache).unwrap_err()
            )
        };
        let raw = err(&k.join("vmlinux").display().to_string());
        assert!(raw.contains("raw kernel image is not enough"), "{raw}");
        assert!(raw.contains(&format!("--kernel {}", k.display())), "{raw}");
        let e = err("6.14.2");
        assert!(
            e.contains("not in the kernel cache") && e.contains("kernel build 6.14.2"),
            "{e}"
        );
        let e = err("6.12..6.14");
        assert!(e.contains("no cached kernel falls in 6.12..6.14"), "{e}");
        let e = err("git+https://127.0.0.1:1/linux#v6.12");
        assert!(e.contains("cannot reach 127.0.0.1:1"), "{e}");
        // A cached version selects its cache entry.
        let cache = ktstr::kernel::cache::KernelCache::at(&d.path().join("cache"));
        let stage = cache.staging("key1").unwrap();
        std::fs::write(stage.join("vmlinux"), &elf).unwrap();
        let src = ktstr::kernel::cache::Source::Local {
            path: "/l".into(),
            commit: None,
        };
        let meta = ktstr::kernel::cache::Metadata {
            image_name: "vmlinux".into(),
            ..ktstr::kernel::cache::Metadata::new("6.12.57", src)
        };
        cache.store("key1", &stage, &meta).unwrap();
        let ks = select_kernels_in(&["6.12".to_string()], &cache).unwrap();
        assert!(ks[0].path.ends_with("key1"), "{ks:?}");
        assert!(err("/no/such/dir").contains("no such file or directory"));
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(err(&empty.display().to_string()).contains("holds no kernel image"));
    }
}
