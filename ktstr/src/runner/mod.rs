//! Running one case: the host side boots its VM and judges what came back ([`run_case`]); the
//! guest side, the same binary as PID 1, starts the scheduler and runs the body
//! ([`guest_main`]).

mod case_file;
mod discover;
mod guest;
mod host;
mod report;
mod sched;

pub use case_file::{CaseFile, CASE_FILE};
pub use discover::{
    declared_binaries, discover_scheduler, discover_scheduler_for, override_var, DiscoverError,
};
pub use guest::guest_main;
pub use host::{run_case, time_scale};
pub use report::{sched_exit_of, CaseVerdict};
pub use sched::{diagnose, parse_kv, SchedExit, SchedulerExit, SchedulerProcess};
