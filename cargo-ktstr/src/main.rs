//! `cargo ktstr`: kernels, VM shells, probes and result tooling for ktstr.
//!
//! Cargo runs `cargo ktstr ARGS` as `cargo-ktstr ktstr ARGS`, so the top-level command has a
//! single subcommand, `ktstr`. The same binary is also the guest init of `shell` VMs: started
//! as PID 1 it runs the guest side instead of the CLI.

mod bench;
mod bench_monitor;
mod compare;
mod coverage;
mod explain;
mod export;
mod funify;
mod kernel_cmd;
mod kernel_spec;
mod locks;
mod model_cmd;
mod pool;
mod probe;
mod replay;
mod run_tests;
mod shell;
mod stats;
mod test_bins;
mod thresholds;
mod verifier;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// The top-level command as cargo invokes it.
#[derive(Debug, Parser)]
#[command(
    name = "cargo-ktstr",
    bin_name = "cargo",
    version,
    about = "ktstr: test Linux schedulers in VMs"
)]
enum Cargo {
    /// ktstr's commands.
    Ktstr(Ktstr),
}

#[derive(Debug, clap::Args)]
#[command(
    version,
    about = "ktstr: test Linux schedulers in VMs with exact CPU topologies"
)]
struct Ktstr {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the workspace's tests with `cargo nextest run`, each ktstr case in its own VM, on
    /// the --kernel(s) given (several: one case per kernel).
    #[command(visible_alias = "nextest")]
    Test(run_tests::TestArgs),
    /// Run the tests under `cargo llvm-cov nextest` (source coverage, including the code that
    /// ran inside the guests); flags as for `test`, trailing arguments to cargo-llvm-cov.
    Coverage(run_tests::TestArgs),
    /// `cargo llvm-cov ARGS…` with ktstr's kernels and modes (report, clean, show-env, …).
    LlvmCov(coverage::LlvmCovArgs),
    /// Build, list and clean guest kernels in the kernel cache.
    #[command(subcommand)]
    Kernel(kernel_cmd::KernelCommand),
    /// The pinned LLM model (GGUF) LlmExtract payloads will use: fetch, status, clean.
    #[command(subcommand)]
    Model(model_cmd::ModelCommand),
    /// Boot a busybox VM with an interactive shell, or run one command with --exec.
    Shell(shell::ShellArgs),
    /// Boot a VM of a topology and print what the guest sees per vCPU (exit 0 if it matches).
    Probe(probe::ProbeArgs),
    /// Measure VM lifecycle phases per backend and vCPU count (medians).
    Bench(bench::BenchArgs),
    /// Print a test's merged thresholds (defaults, then scheduler, then test).
    ShowThresholds {
        /// The bare #[ktstr_test] function name.
        test: String,
    },
    /// What recorded runs hold: the newest run's summary, or browse all runs.
    Stats(stats::StatsArgs),
    /// Print (or with --exec run) a nextest filterset for the tests that failed in the
    /// recorded runs.
    Replay(replay::ReplayArgs),
    /// Print the live host context (CPU, memory, hugepages, THP, kernel, sched tunables), the
    /// same record every sidecar keeps.
    ShowHost,
    /// BPF verifier statistics (verified instructions per program) for every declared
    /// scheduler and flag profile.
    Verifier(verifier::VerifierArgs),
    /// List every ktstr lock file on this host (LLC, CPU and cache locks) with its holders'
    /// PIDs, modes and command lines; never takes a lock. For --cpu-cap contention.
    Locks(locks::LocksArgs),
    /// (In a guest) print every loaded BPF program's verified instruction count, one
    /// `bpf: verified prog="NAME" insns=N` line each: what `verifier` reads.
    #[command(hide = true)]
    BpfProgs,
    /// Write TEST.run: a self-extracting file that runs the test on the machine it is started
    /// on, without a VM (bash preamble with host checks, then the bundled binaries).
    Export(export::ExportArgs),
    /// Replace every identifying value of a JSON dump (names, paths, ids) with a deterministic
    /// fake, keeping metrics, so it can be shared.
    #[command(visible_alias = "costume")]
    Funify(funify::FunifyArgs),
    /// Write a shell completion script for `cargo ktstr` to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
        /// The command name the completions are for.
        #[arg(long, default_value = "cargo")]
        binary: String,
    },
}

fn main() -> ExitCode {
    if ktstr::guest::is_guest_init() {
        ktstr::guest::shell::main();
    }
    restore_default_sigpipe();
    let Cargo::Ktstr(k) = Cargo::parse();
    let res = match k.command {
        Command::Test(a) => run_tests::run(a),
        Command::Coverage(a) => coverage::run_coverage(a),
        Command::LlvmCov(a) => coverage::run_llvm_cov(a),
        Command::Kernel(c) => kernel_cmd::run(c),
        Command::Model(c) => model_cmd::run(c),
        Command::Shell(a) => shell::run(a),
        Command::Probe(a) => probe::run(a),
        Command::Bench(a) => bench::run(a),
        Command::ShowThresholds { test } => thresholds::run(&test),
        Command::ShowHost => {
            print!("{}", ktstr::host_context::HostContext::collect());
            Ok(ExitCode::SUCCESS)
        }
        Command::Verifier(a) => verifier::run(a),
        Command::BpfProgs => verifier::print_loaded_programs(),
        Command::Locks(a) => locks::run(a),
        Command::Stats(a) => stats::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Funify(a) => funify::run(a),
        Command::Export(a) => export::run(a),
        Command::Completions { shell, binary } => {
            clap_complete::generate(shell, &mut Cargo::command(), binary, &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            ExitCode::from(1)
        }
    }
}

/// Makes a closed stdout end the process quietly, as for any Unix filter (`cargo ktstr stats
/// list-metrics | head`): Rust ignores SIGPIPE, so `println!` would panic on EPIPE instead.
/// Safe for the in-process VMM: nothing in the host process writes to a pipe whose reader may
/// go away except stdout and stderr themselves.
fn restore_default_sigpipe() {
    // SAFETY: plain signal(2) with a valid signal number and SIG_DFL, before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Prints `error: …`, the cause chain, then any `hint:` lines the error carries.
fn report(e: &anyhow::Error) {
    eprintln!("error: {e}");
    for cause in e.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Cargo, clap::Error> {
        let mut args = vec![
            "cargo",
            "ktstr",
            "stats",
            "compare",
            "--a-kernel",
            "6.12",
            "--b-kernel",
            "6.13",
        ];
        args.extend_from_slice(extra);
        Cargo::try_parse_from(args)
    }

    /// cli.md §3.7's conflict matrix of the phase-rendering flags, rule by rule.
    #[test]
    fn phase_flags_follow_the_conflict_matrix() {
        let e = parse(&["--no-phases", "--phases-only"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--no-phases") && e.contains("--phases-only"),
            "{e}"
        );
        for bad in [
            &["--no-phases", "--steps-only"][..],
            &["--no-phases", "--phase", "1"],
            &["--no-phases", "--phase-threshold", "5"],
            &["--steps-only", "--phase", "1"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be rejected");
        }
        for good in [
            &["--phases-only", "--steps-only", "--phase-threshold", "5"][..],
            &["--phases-only", "--phase", "1", "--phase-threshold", "5"],
            &["--no-phases"],
        ] {
            assert!(parse(good).is_ok(), "{good:?} must parse");
        }
        assert!(
            parse(&["--phase", "70000"]).is_err(),
            "a phase index is a u16"
        );
    }
}
