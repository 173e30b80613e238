//! The `harness = false` runner for ktstr test binaries.
//!
//! A user's test target is one line:
//! ```ignore
//! fn main() { ktstr_harness::main() }
//! ```
//! It speaks the libtest protocol that `cargo test` and `cargo nextest` use:
//! `--list --format terse [--ignored]`, `--exact NAME`, substring filters, `--skip`,
//! `--ignored`, `--include-ignored`, `--nocapture`, `--test-threads`, exit code 101 on failure.
//!
//! **Why not hand everything to libtest-mimic:** `libtest_mimic::run` takes a `Vec<Trial>` built
//! up front, one boxed closure and name per case. A gauntlet matrix can have hundreds of
//! thousands of cases, and nextest runs the binary once per case with `--exact NAME`, so the
//! listing and the `--exact` paths are implemented here: listing streams names from the lazy
//! matrix, and `--exact` parses the name and builds a single trial. libtest-mimic still runs
//! whatever trials were selected (output format, threads, summary, exit code).
//!
//! Plain `cargo test` runs base cases one at a time (`--test-threads` defaults to 1 because
//! each case boots a VM). Under nextest, `.config/nextest.toml` puts every ktstr case (any name
//! containing `/`) in the `ktstr-vm` test group (one at a time) with a 60 s slow timeout,
//! terminated after 5 periods.
//!
//! Hidden arguments (for `cargo ktstr`): `--ktstr-list-schedulers` prints every declared
//! scheduler and its flags as JSON; `--ktstr-list-tests` prints the registered test names as
//! JSON; `--ktstr-show-thresholds TEST` prints a test's merged thresholds.

pub mod list;
mod run;

use std::io::Write;

use ktstr::registry::matrix::{KernelSet, Matrix};
use ktstr::registry::{KtstrTest, Scheduler};

pub use run::judge;

/// Entry point of a ktstr test binary. In the guest (PID 1) it runs the guest side of the
/// case; on the host it lists or runs cases and exits with libtest's exit code.
pub fn main() -> ! {
    if std::process::id() == 1 {
        ktstr::runner::guest_main();
    }
    // A scenario may start this binary as a built-in payload (see `Payload::builtin`).
    ktstr::scenario::run_builtin_payload();
    // An exported `.run` file's preamble starts this binary on bare metal with its case.
    if let Some(case) = std::env::var_os(ktstr::runner::EXPORT_CASE_ENV) {
        ktstr::runner::bare_metal_main(std::path::Path::new(&case));
    }
    // A closed stdout (`--list | head`, `cargo ktstr show-thresholds | head`) ends the process
    // quietly instead of a "Broken pipe" panic: Rust ignores SIGPIPE by default.
    // SAFETY: signal(2) with a valid signal and SIG_DFL, before this process starts threads.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args: Vec<String> = std::env::args().collect();
    let kernels = match KernelSet::from_env() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("ktstr: {e}");
            std::process::exit(101);
        }
    };
    let code = run_with(
        args,
        &ktstr::registry::KTSTR_TESTS,
        &ktstr::registry::KTSTR_SCHEDULERS,
        kernels,
    );
    std::process::exit(code)
}

/// Runs the harness over an explicit registry; returns the process exit code.
/// `args[0]` is the program name, as in `std::env::args()`.
pub fn run_with(
    mut args: Vec<String>,
    tests: &'static [KtstrTest],
    schedulers: &[Scheduler],
    kernels: KernelSet,
) -> i32 {
    if let Some(pos) = args.iter().position(|a| a == "--ktstr-list-schedulers") {
        args.remove(pos);
        return match serde_json::to_string_pretty(schedulers) {
            Ok(json) => {
                println!("{json}");
                0
            }
            Err(e) => {
                eprintln!("ktstr: cannot serialise schedulers: {e}");
                1
            }
        };
    }
    if let Some(pos) = args.iter().position(|a| a == "--ktstr-export-plan") {
        let Some(name) = args.get(pos + 1) else {
            eprintln!("ktstr: --ktstr-export-plan needs a test name");
            return 1;
        };
        return match ktstr::runner::export_plan(tests, name) {
            Ok(p) => {
                println!("{}", serde_json::to_string(&p).unwrap_or_default());
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        };
    }
    if args.iter().any(|a| a == "--ktstr-list-tests") {
        let names: Vec<&str> = tests.iter().map(|t| t.name).collect();
        println!("{}", serde_json::to_string(&names).unwrap_or_default());
        return 0;
    }
    if let Some(pos) = args.iter().position(|a| a == "--ktstr-show-thresholds") {
        let Some(name) = args.get(pos + 1) else {
            eprintln!("ktstr: --ktstr-show-thresholds needs a test name");
            return 1;
        };
        // A case name (`test/scenario/topology`) selects its test.
        let test_name = name.split('/').next().unwrap_or(name);
        return match ktstr::registry::find_test_in(tests, test_name) {
            Ok(t) => {
                let (backend, scale) = backend_and_scale();
                print!("{}", show_thresholds(t, &backend, scale));
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        };
    }
    let parsed = libtest_mimic::Arguments::from_iter(args);
    // No kernel named: VM cases cannot run. Listing them as ignored makes nextest report them
    // as skipped (never as passed); under CI or KTSTR_NO_SKIP_MODE they stay in and fail with
    // the reason, since there a skip means a misconfigured runner.
    let no_kernel = kernels.kernels().is_empty() && !ktstr::runner::strict_mode();
    if no_kernel && !parsed.ignored {
        eprintln!(
            "ktstr: no kernel (KTSTR_KERNEL is not set and none is cached): every case that \
             boots a VM is listed as ignored and will not run. Build one with `cargo ktstr \
             kernel build`, or set KTSTR_KERNEL to a bzImage, a vmlinux or a kernel build \
             directory."
        );
    }
    let matrix = Matrix::new(tests, kernels)
        .with_vm_cases_ignored(no_kernel)
        .with_performance_host(performance_host(tests));
    if parsed.list {
        if let Some(dir) = std::env::var_os(ktstr::unrunnable::DIR_ENV) {
            // The same registry without the "cannot run here" flags, to tell those cases apart.
            let plain = Matrix::new(tests, matrix.kernels().clone());
            record_unrunnable(std::path::Path::new(&dir), &plain, &matrix, no_kernel);
        }
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let res = list::write_list(&matrix, &parsed, &mut out)
            .and_then(|_| out.flush().map_err(|e| list::ListError::Io(e.to_string())));
        return match res {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("ktstr: {e}");
                101
            }
        };
    }
    run::run(&matrix, parsed)
}

/// The host that performance_mode cases are listed against: those whose topology it cannot
/// isolate (tier 1 needs vCPUs + 1 host CPUs and a host LLC per virtual LLC) are listed as
/// ignored. `None` lists them all: under --no-perf-mode they run capped, and in strict mode
/// they run and fail with the reason.
fn performance_host(tests: &[KtstrTest]) -> Option<ktstr::host_cpus::HostCpus> {
    // Every case process starts here: read the host's CPUs only for a binary that has
    // performance cases.
    let any = tests.iter().any(|t| t.performance_mode && !t.host_only);
    if !any || ktstr::host_cpus::no_perf_mode() || ktstr::runner::strict_mode() {
        None
    } else {
        ktstr::host_cpus::HostCpus::probe().ok()
    }
}

/// Records the cases this binary lists as ignored because they cannot run here, for
/// `cargo ktstr test`'s summary. Advisory: a failure to write is only reported.
fn record_unrunnable(dir: &std::path::Path, plain: &Matrix, flagged: &Matrix, no_kernel: bool) {
    use ktstr::unrunnable::Why;
    // Without a kernel every VM case is ignored for that reason, whatever else it asks for.
    let why = if no_kernel {
        Why::NoKernel
    } else {
        Why::PerformanceMode
    };
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "tests".into());
    let res = list::unrunnable(plain, flagged, why)
        .map_err(|e| e.to_string())
        .and_then(|cases| {
            ktstr::unrunnable::write(dir, &binary, &cases).map_err(|e| e.to_string())
        });
    if let Err(e) = res {
        eprintln!("ktstr: could not record the cases that cannot run: {e}");
    }
}

/// The text `show-thresholds` prints: the test, its scheduler, the backend's time scale, then
/// every merged threshold (`none` when no layer sets it). Time-based limits also show the value
/// in force when `scale` is above 1 (they are multiplied by it when judged); thresholds no
/// check reads yet ([`ktstr::assert::NOT_EVALUATED`]) say so.
pub fn show_thresholds(t: &KtstrTest, backend: &str, scale: f64) -> String {
    let mut out = format!(
        "test: {}\nscheduler: {}\nbackend: {backend}, time scale {scale}\n",
        t.name, t.scheduler.name
    );
    for (name, v) in ktstr::registry::merged_assert(t).fields() {
        let scaled = ktstr::assert::TIME_SCALED.contains(&name) && scale > 1.0;
        match v {
            ktstr::assert::ThresholdValue::Int(n) if scaled => out.push_str(&format!(
                "{name}: {n} (in force: {:.0}, × time scale {scale})\n",
                n as f64 * scale
            )),
            v if ktstr::assert::NOT_EVALUATED.contains(&name) => out.push_str(&format!(
                "{name}: {v} (not evaluated yet: recorded, but no check reads it)\n"
            )),
            v => out.push_str(&format!("{name}: {v}\n")),
        }
    }
    out
}

/// The backend a case would run on now, and its time scale (for `show_thresholds`).
fn backend_and_scale() -> (String, f64) {
    use ktstr::vm::{launch, BackendChoice, BackendKind};
    let pick = launch::choose_backend(None)
        .or_else(|_| launch::choose_backend(Some(BackendChoice::Auto)))
        .expect("auto always picks a backend");
    let label = match pick.kind {
        BackendKind::Qemu if pick.time_scale > 1.0 => "qemu (TCG)".into(),
        b => b.to_string(),
    };
    (label, pick.time_scale)
}

/// Compiles the README's "write your first test" example as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
