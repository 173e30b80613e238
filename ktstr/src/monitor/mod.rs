//! The host-side monitor: watches the guest kernel's scheduler state from outside the guest,
//! by reading guest RAM while the VM runs, so a wedged, starved or paused guest agent cannot
//! hide a stall.
//!
//! - [`layout`]: symbol addresses (ELF symbol table) and field offsets (BTF) of the vmlinux.
//! - [`guest_ram`]: reading guest-physical memory on both backends; kernel virtual → physical.
//! - [`sampler`]: the sampling thread (runqueue clock, `nr_running`, local DSQ depth, sched_ext
//!   state and exit record; each vCPU thread's host run-queue wait).
//! - [`analysis`]: samples → [`MonitorSummary`] → findings against the `Assert` thresholds.

pub mod analysis;
pub mod guest_ram;
pub mod layout;
pub mod sampler;

use std::sync::Arc;
use std::time::Duration;

pub use analysis::{findings, summarize, MonitorLimits, MonitorSummary, Stall};
pub use layout::{KernelLayout, LayoutError};
pub use sampler::{Recording, ThreadNaming, VcpuThreads};

/// The default sampling period on hardware-speed backends (scaled by the backend's time
/// scale, so a slow emulator is not sampled finer than it runs).
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(100);

/// What a backend needs to run the monitor beside a VM.
#[derive(Debug, Clone)]
pub struct MonitorSpec {
    /// The guest kernel's layout.
    pub layout: Arc<KernelLayout>,
    /// Sampling period.
    pub period: Duration,
}

/// Whether `KTSTR_MONITOR` turns the monitor off (`off`/`0`/`false`).
pub fn disabled_by_env() -> bool {
    matches!(
        std::env::var("KTSTR_MONITOR").as_deref().map(str::trim),
        Ok("off" | "0" | "false")
    )
}

/// Starts the monitor for a VM of `cpus` vCPUs whose RAM is `ram` and whose vCPU threads
/// `threads` names; `Err` says why it could not start (see [`finish`]).
pub fn start(
    spec: &MonitorSpec,
    ram: Arc<dyn guest_ram::GuestRam>,
    cpus: usize,
    threads: VcpuThreads,
) -> Result<sampler::MonitorHandle, String> {
    sampler::start(spec.layout.clone(), ram, cpus, threads, spec.period)
        .map_err(|e| format!("monitor unavailable: could not start its thread: {e}"))
}

/// Stops a monitor [`start`]ed for a VM and returns its recording (or why there is none).
pub fn finish(run: Result<sampler::MonitorHandle, String>) -> Recording {
    match run {
        Ok(h) => h.finish(),
        Err(why) => Recording {
            unavailable: Some(why),
            ..Default::default()
        },
    }
}
