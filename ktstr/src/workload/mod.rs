//! Workers: forked processes that run a [`WorkType`] loop and measure themselves.
//!
//! Each worker is a `fork()`ed process in its own process group (cgroup membership is per
//! process). It blocks on a pipe until the parent has placed it in its cgroup and applied its
//! affinity and policy, so no iteration runs in the wrong place; SIGUSR1 stops it and it writes
//! its [`WorkerReport`] back over a second pipe.

pub mod report;
pub mod rng;
pub mod spawn;
pub mod types;
pub mod worker;

pub use report::{ExitInfo, WorkerReport};
pub use spawn::{AffinityMode, SchedPolicy, WorkloadConfig, WorkloadError, WorkloadHandle};
pub use types::{Phase, WorkType};
