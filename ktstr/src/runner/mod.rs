//! Running one case: the host side boots its VM and judges what came back ([`run_case`]); the
//! guest side, the same binary as PID 1, starts the scheduler and runs the body
//! ([`guest_main`]).

pub mod autobuild;
mod case_file;
mod discover;
mod export;
mod guest;
mod host;
mod report;
mod repro;
mod sched;

pub use case_file::{CaseFile, CASE_FILE};
pub use discover::{
    declared_binaries, discover_scheduler, discover_scheduler_for, override_var, DiscoverError,
};
pub use guest::guest_main;

/// Whether a case that cannot run must fail rather than be skipped: under CI (`CI` set and not
/// `0`) or `KTSTR_NO_SKIP_MODE=1` (`cargo ktstr test --no-skip-mode`). The harness and
/// `cargo ktstr test` both ask this, so they agree on what will happen.
pub fn strict_mode() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0");
    set("CI") || set("KTSTR_NO_SKIP_MODE")
}
pub use export::{bare_metal_main, plan as export_plan, ExportPlan, EXPORT_CASE_ENV};
pub use host::run_case;
pub use report::{sched_exit_of, CaseVerdict};
pub use repro::RATE as REPRO_RATE;
pub use sched::{diagnose, parse_kv, SchedExit, SchedulerExit, SchedulerProcess};
