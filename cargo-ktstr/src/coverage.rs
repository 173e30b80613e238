//! `cargo ktstr coverage` (`cargo llvm-cov nextest` with ktstr's kernels and modes) and
//! `cargo ktstr llvm-cov` (a raw `cargo llvm-cov` passthrough).
//!
//! The guest's share of the coverage (the test binary runs as PID 1 in every VM) comes back
//! over the result channel and lands beside the host's profiles (`ktstr::coverage`); this
//! module only makes sure the tools exist. cargo-llvm-cov wants LLVM tools that match rustc's
//! LLVM: the rustup `llvm-tools` component when installed, else a distribution's
//! `llvm-cov-N`/`llvm-profdata-N` of the same major version N (Debian's `llvm-22` for Rust
//! 1.95), which we find and export as `LLVM_COV`/`LLVM_PROFDATA`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::run_tests::{run_wrapped, TestArgs};

/// Arguments of `cargo ktstr llvm-cov` (no `--release`: pass cargo-llvm-cov's own flags).
#[derive(Debug, Args)]
pub struct LlvmCovArgs {
    /// A kernel to run every case on (as for `test`); repeat it to run each case per kernel.
    #[arg(long, value_name = "SPEC")]
    kernel: Vec<String>,
    /// Turn off performance-mode features (exports KTSTR_NO_PERF_MODE=1).
    #[arg(long)]
    no_perf_mode: bool,
    /// Make hardware-driven skips fail (exports KTSTR_NO_SKIP_MODE=1).
    #[arg(long)]
    no_skip_mode: bool,
    /// Everything else, passed verbatim to `cargo llvm-cov` (e.g. `report --lcov`).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "LLVM_COV_ARGS"
    )]
    args: Vec<String>,
}

/// LLVM tools for cargo-llvm-cov and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlvmTools {
    /// `LLVM_COV` and `LLVM_PROFDATA` are already set: cargo-llvm-cov uses them.
    FromEnv,
    /// rustup's `llvm-tools` component is installed: cargo-llvm-cov finds it itself.
    Rustup,
    /// Tools of rustc's LLVM major version found on this system.
    System {
        /// `llvm-cov`.
        cov: PathBuf,
        /// `llvm-profdata`.
        profdata: PathBuf,
        /// rustc's LLVM major version.
        major: u32,
    },
}

/// rustc's LLVM major version from `rustc -vV` output.
pub fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))?
        .split('.')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The first `name` in `dirs` that is a file.
fn find_in(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Picks LLVM tools for rustc's LLVM `major`: `llvm-cov-N`/`llvm-profdata-N` on `path_dirs`,
/// else `/usr/lib/llvm-N/bin` (how Debian and Ubuntu install them).
pub fn system_tools(major: u32, path_dirs: &[PathBuf], root: &Path) -> Option<LlvmTools> {
    let versioned = |tool: &str| find_in(path_dirs, &format!("{tool}-{major}"));
    let lib = [root.join(format!("usr/lib/llvm-{major}/bin"))];
    let (cov, profdata) = match (versioned("llvm-cov"), versioned("llvm-profdata")) {
        (Some(c), Some(p)) => (c, p),
        _ => (find_in(&lib, "llvm-cov")?, find_in(&lib, "llvm-profdata")?),
    };
    Some(LlvmTools::System {
        cov,
        profdata,
        major,
    })
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

fn rustc_output(args: &[&str]) -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(&rustc)
        .args(args)
        .output()
        .with_context(|| format!("running {} {}", rustc.to_string_lossy(), args.join(" ")))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Finds LLVM tools matching rustc's LLVM, or says how to get them.
pub fn llvm_tools() -> Result<LlvmTools> {
    if std::env::var_os("LLVM_COV").is_some() && std::env::var_os("LLVM_PROFDATA").is_some() {
        return Ok(LlvmTools::FromEnv);
    }
    let libdir = PathBuf::from(rustc_output(&["--print", "target-libdir"])?.trim());
    if let Some(bin) = libdir.parent().map(|p| p.join("bin")) {
        if bin.join("llvm-cov").is_file() && bin.join("llvm-profdata").is_file() {
            return Ok(LlvmTools::Rustup);
        }
    }
    let vv = rustc_output(&["-vV"])?;
    let Some(major) = llvm_major(&vv) else {
        bail!("cannot tell rustc's LLVM version from `rustc -vV`:\n{vv}");
    };
    system_tools(major, &path_dirs(), Path::new("/")).with_context(|| {
        format!(
            "no LLVM tools for rustc's LLVM {major}: neither rustup's llvm-tools component nor \
             llvm-cov-{major}/llvm-profdata-{major}\n\
             hint: `rustup component add llvm-tools-preview`, or install your distribution's \
             LLVM {major} (Debian: `apt-get install llvm-{major}`), or set LLVM_COV and \
             LLVM_PROFDATA"
        )
    })
}

/// Where cargo looks for `cargo-llvm-cov`: `PATH`, then `$CARGO_HOME/bin`.
fn cargo_llvm_cov_installed() -> bool {
    let mut dirs = path_dirs();
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    dirs.extend(home.map(|h| h.join("bin")));
    find_in(&dirs, "cargo-llvm-cov").is_some()
}

/// Fails with an install hint when cargo-llvm-cov is missing; else finds LLVM tools and
/// exports them for it.
fn prepare() -> Result<Vec<(&'static str, OsString)>> {
    if !cargo_llvm_cov_installed() {
        bail!(
            "cargo-llvm-cov is not installed (not on PATH nor in $CARGO_HOME/bin)\n\
             hint: cargo install cargo-llvm-cov --locked"
        );
    }
    Ok(match llvm_tools()? {
        LlvmTools::FromEnv | LlvmTools::Rustup => Vec::new(),
        LlvmTools::System {
            cov,
            profdata,
            major,
        } => {
            eprintln!(
                "ktstr: rustup's llvm-tools component is absent; using {} and {} (LLVM {major}, \
                 as rustc's)",
                cov.display(),
                profdata.display()
            );
            vec![
                ("LLVM_COV", cov.into_os_string()),
                ("LLVM_PROFDATA", profdata.into_os_string()),
            ]
        }
    })
}

/// cargo-llvm-cov's report flags that take a value (cargo-llvm-cov 0.9's list).
const REPORT_VALUE_FLAGS: &[&str] = &[
    "--output-path",
    "--output-dir",
    "--failure-mode",
    "--ignore-filename-regex",
    "--fail-under-functions",
    "--fail-under-lines",
    "--fail-under-file-lines",
    "--fail-under-regions",
    "--fail-uncovered-lines",
    "--fail-uncovered-regions",
    "--fail-uncovered-functions",
];
/// cargo-llvm-cov's report flags without a value.
const REPORT_BOOL_FLAGS: &[&str] = &[
    "--json",
    "--lcov",
    "--cobertura",
    "--codecov",
    "--text",
    "--html",
    "--open",
    "--summary-only",
    "--no-default-ignore-filename-regex",
    "--show-instantiations",
    "--show-missing-lines",
    "--include-build-script",
    "--skip-functions",
];
/// Flags both the run and the report need (how the run was built, where its binaries are).
const SHARED_BOOL_FLAGS: &[&str] = &["--branch", "--mcdc"];
/// Shared flags with a value; `--cargo-profile` is `--profile` to the report.
const SHARED_VALUE_FLAGS: &[&str] = &[
    "--target",
    "--manifest-path",
    "--target-dir",
    "--cargo-profile",
];

/// Which of cargo-llvm-cov's own flags `arg` is: `(shared, takes a separate value)`.
fn cov_flag(arg: &str) -> Option<(bool, bool)> {
    let (name, inline) = match arg.split_once('=') {
        Some((n, _)) => (n, true),
        None => (arg, false),
    };
    if REPORT_BOOL_FLAGS.contains(&arg) {
        Some((false, false))
    } else if SHARED_BOOL_FLAGS.contains(&arg) {
        Some((true, false))
    } else if REPORT_VALUE_FLAGS.contains(&name) {
        Some((false, !inline))
    } else if SHARED_VALUE_FLAGS.contains(&name) {
        Some((true, !inline))
    } else {
        None
    }
}

/// `args` in units, in order: a cargo-llvm-cov flag with its value (and whether the run needs
/// it too), or any other single argument (`None`).
fn units(args: &[String]) -> Vec<(Vec<String>, Option<bool>)> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some((shared, takes_value)) = cov_flag(a) else {
            out.push((vec![a.clone()], None));
            continue;
        };
        let mut unit = vec![a.clone()];
        if takes_value {
            unit.extend(it.next().cloned());
        }
        out.push((unit, Some(shared)));
    }
    out
}

/// The report's spelling of a shared flag.
fn for_report(arg: &str) -> String {
    match arg.strip_prefix("--cargo-profile") {
        Some(rest) => format!("--profile{rest}"),
        None => arg.to_string(),
    }
}

/// Splits `args` into what `cargo llvm-cov report` needs (report flags, and shared ones) and
/// what the run needs (everything but report flags), each in its original order.
fn partition_report_flags(args: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut report, mut rest) = (Vec::new(), Vec::new());
    for (unit, cov) in units(args) {
        if cov.is_some() {
            report.extend(unit.iter().map(|a| for_report(a)));
        }
        if cov != Some(false) {
            rest.extend(unit);
        }
    }
    (report, rest)
}

/// Moves cargo-llvm-cov's report flags written after `--` (where nextest would hand them to
/// the test binaries, which reject them) in front of it, as `coverage -- --lcov --output-path
/// F` reads; drops a `--` left with nothing after it. Returns the flags moved.
pub fn hoist_report_flags(args: &mut Vec<String>) -> Vec<String> {
    let Some(dash) = args.iter().position(|a| a == "--") else {
        return Vec::new();
    };
    let tail = args.split_off(dash + 1);
    let (mut moved, mut rest) = (Vec::new(), Vec::new());
    for (unit, cov) in units(&tail) {
        if cov.is_some() {
            moved.extend(unit);
        } else {
            rest.extend(unit);
        }
    }
    args.pop(); // the `--`
    args.extend(moved.iter().cloned());
    if !rest.is_empty() {
        args.push("--".into());
        args.extend(rest);
    }
    moved
}

/// cargo-llvm-cov reports only the packages a run selects (`-p`, or the member directory it
/// runs in), which hides the library those tests exist to exercise: `-p ktstr-examples` would
/// report no line of `ktstr/`. So the run and the report are split: the nextest arguments
/// with `--no-report`, and cargo-llvm-cov's report flags for a `cargo llvm-cov report
/// --workspace`. `None` when the user asked for no report.
pub fn split_for_report(args: &[String]) -> Option<(Vec<String>, Vec<String>)> {
    let end = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let own = &args[..end];
    if own.iter().any(|a| a == "--no-report") {
        return None;
    }
    let (report, mut run) = partition_report_flags(own);
    run.push("--no-report".into());
    run.extend(args[end..].iter().cloned());
    Some((run, report))
}

/// Runs `coverage`: `cargo llvm-cov nextest --no-report` with ktstr's kernels and modes, then
/// `cargo llvm-cov report --workspace` ([`split_for_report`]).
pub fn run_coverage(mut a: TestArgs) -> Result<ExitCode> {
    let moved = hoist_report_flags(&mut a.args);
    if !moved.is_empty() {
        eprintln!(
            "ktstr: passing {} to cargo-llvm-cov itself (after `--` nextest would give them to \
             the test binaries)",
            moved.join(" ")
        );
    }
    if let Some(action) = a
        .args
        .first()
        .filter(|s| ["report", "clean", "show-env", "run", "test"].contains(&s.as_str()))
    {
        bail!(
            "`coverage` runs `cargo llvm-cov nextest`; `{action}` is another cargo-llvm-cov \
             action\nhint: cargo ktstr llvm-cov {action} …"
        );
    }
    let env = prepare()?;
    let report_args = split_for_report(&a.args).map(|(run, report)| {
        a.args = run;
        report
    });
    let release = a.release;
    // `--no-report` keeps the profiles of earlier runs (so several runs can add up); ours is
    // one run, so start from none unless the user says `--no-clean`.
    let no_clean = a.args.iter().any(|s| s == "--no-clean");
    // cargo-llvm-cov refuses --no-clean beside --no-report: the flag is ours to honour.
    if report_args.is_some() {
        a.args.retain(|s| s != "--no-clean");
    }
    let clean = report_args.is_some() && !no_clean;
    with_env(&env, || {
        if clean {
            let st = crate::run_tests::cargo()
                .args(["llvm-cov", "clean", "--profraw-only"])
                .status()
                .context("running `cargo llvm-cov clean --profraw-only`")?;
            if !st.success() {
                bail!("`cargo llvm-cov clean --profraw-only` failed ({st})");
            }
        }
        let code = run_wrapped(
            &a,
            &["llvm-cov", "nextest"],
            "cargo llvm-cov nextest",
            "cargo install cargo-llvm-cov --locked",
        )?;
        let Some(report) = report_args else {
            return Ok(code);
        };
        let mut cmd = crate::run_tests::cargo();
        cmd.args(["llvm-cov", "report", "--workspace"]);
        if release {
            cmd.arg("--release");
        }
        let st = cmd
            .args(&report)
            .status()
            .context("running `cargo llvm-cov report`")?;
        // The tests' verdict first: a report of a failed run is still written.
        Ok(if code == ExitCode::SUCCESS {
            ExitCode::from(crate::run_tests::exit_byte(st))
        } else {
            code
        })
    })
}

/// Runs `llvm-cov`: `cargo llvm-cov ARGS…` with ktstr's kernels and modes.
pub fn run_llvm_cov(a: LlvmCovArgs) -> Result<ExitCode> {
    if a.args.is_empty() {
        eprintln!(
            "ktstr: warning: bare `cargo llvm-cov` runs `cargo test`, which does not run ktstr's \
             VM cases; did you mean `cargo ktstr coverage` or `cargo ktstr llvm-cov nextest`?"
        );
    }
    let env = prepare()?;
    let t = TestArgs {
        kernel: a.kernel,
        no_perf_mode: a.no_perf_mode,
        no_skip_mode: a.no_skip_mode,
        release: false,
        args: a.args,
    };
    with_env(&env, || {
        run_wrapped(
            &t,
            &["llvm-cov"],
            "cargo llvm-cov",
            "cargo install cargo-llvm-cov --locked",
        )
    })
}

/// Runs `f` with `vars` set in this process's environment (the wrapped cargo inherits them).
fn with_env<T>(vars: &[(&str, OsString)], f: impl FnOnce() -> T) -> T {
    for (k, v) in vars {
        // SAFETY: single-threaded CLI at this point: nothing reads the environment concurrently.
        unsafe { std::env::set_var(k, v) };
    }
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// clap keeps a `--` that follows passthrough arguments, so the hoist sees it.
    #[test]
    fn dashes_after_nextest_arguments_reach_the_hoist() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: TestArgs,
        }
        let t = T::try_parse_from(["coverage", "-p", "x", "--", "--lcov"]).unwrap();
        assert_eq!(t.a.args, strings(&["-p", "x", "--", "--lcov"]));
    }

    #[test]
    fn report_flags_after_dashes_move_in_front() {
        let mut a = strings(&["-p", "x", "--", "--lcov", "--output-path", "c.info"]);
        assert_eq!(
            hoist_report_flags(&mut a),
            strings(&["--lcov", "--output-path", "c.info"])
        );
        assert_eq!(
            a,
            strings(&["-p", "x", "--lcov", "--output-path", "c.info"])
        );
        let mut a = strings(&["--", "--html", "--output-dir=o", "--nocapture"]);
        hoist_report_flags(&mut a);
        assert_eq!(
            a,
            strings(&["--html", "--output-dir=o", "--", "--nocapture"])
        );
        let mut a = strings(&["-E", "all()", "--lcov"]);
        assert!(hoist_report_flags(&mut a).is_empty());
        assert_eq!(a, strings(&["-E", "all()", "--lcov"]));
    }

    #[test]
    fn a_package_selection_splits_the_run_from_a_workspace_report() {
        let a = strings(&[
            "-p",
            "x",
            "-E",
            "all()",
            "--lcov",
            "--output-path",
            "c",
            "--",
            "--nocapture",
        ]);
        let (run, report) = split_for_report(&a).unwrap();
        assert_eq!(
            run,
            strings(&["-p", "x", "-E", "all()", "--no-report", "--", "--nocapture"])
        );
        assert_eq!(report, strings(&["--lcov", "--output-path", "c"]));
        let (_, report) = split_for_report(&strings(&["--package=x", "--html"])).unwrap();
        assert_eq!(report, strings(&["--html"]));
        // Build-and-report flags go to both; the report spells the nextest profile --profile.
        let (run, report) = split_for_report(&strings(&[
            "--branch",
            "--cargo-profile",
            "ci",
            "--fail-under-file-lines=50",
        ]))
        .unwrap();
        assert_eq!(
            run,
            strings(&["--branch", "--cargo-profile", "ci", "--no-report"])
        );
        assert_eq!(
            report,
            strings(&["--branch", "--profile", "ci", "--fail-under-file-lines=50"])
        );
        let (run, report) = split_for_report(&strings(&["-E", "all()", "--lcov"])).unwrap();
        assert_eq!(
            (run, report),
            (
                strings(&["-E", "all()", "--no-report"]),
                strings(&["--lcov"])
            )
        );
        assert!(split_for_report(&strings(&["-p", "x", "--no-report"])).is_none());
    }

    #[test]
    fn llvm_major_reads_rustc_vv() {
        let vv = "rustc 1.95.0 (59807616e 2026-04-14)\nbinary: rustc\nLLVM version: 22.1.2\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.95.0\n"), None);
        assert_eq!(llvm_major("LLVM version: x.1\n"), None);
    }

    /// Versioned tools on PATH win; else /usr/lib/llvm-N/bin; a different major never counts.
    #[test]
    fn system_tools_match_the_major_version() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for f in ["llvm-cov-19", "llvm-profdata-19", "llvm-cov"] {
            std::fs::write(bin.join(f), "").unwrap();
        }
        assert_eq!(system_tools(22, std::slice::from_ref(&bin), d.path()), None);
        let lib = d.path().join("usr/lib/llvm-22/bin");
        std::fs::create_dir_all(&lib).unwrap();
        for f in ["llvm-cov", "llvm-profdata"] {
            std::fs::write(lib.join(f), "").unwrap();
        }
        assert_eq!(
            system_tools(22, std::slice::from_ref(&bin), d.path()),
            Some(LlvmTools::System {
                cov: lib.join("llvm-cov"),
                profdata: lib.join("llvm-profdata"),
                major: 22
            })
        );
        for f in ["llvm-cov-22", "llvm-profdata-22"] {
            std::fs::write(bin.join(f), "").unwrap();
        }
        assert_eq!(
            system_tools(22, std::slice::from_ref(&bin), d.path()),
            Some(LlvmTools::System {
                cov: bin.join("llvm-cov-22"),
                profdata: bin.join("llvm-profdata-22"),
                major: 22
            })
        );
    }
}
