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
pub mod bpf_write;
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
    /// The test's `bpf_map_write`, applied once the scheduler is enabled.
    pub map_write: Option<crate::bpf_maps::BpfMapWrite>,
}

/// The sampling period on a backend `scale` times slower than hardware KVM: 100 ms × scale.
pub fn period_for(scale: f64) -> Duration {
    DEFAULT_PERIOD.mul_f64(scale.max(1.0))
}

/// The monitor for a VM of `kernel`, sampling every `period`; `Err` says why there is none
/// (`KTSTR_MONITOR=off`, no ELF vmlinux, no BTF): the VM still runs, without it.
pub fn spec_for(kernel: &crate::kernel::Kernel, period: Duration) -> Result<MonitorSpec, String> {
    if disabled_by_env() {
        return Err("monitor off (KTSTR_MONITOR=off)".into());
    }
    let vmlinux = kernel.vmlinux.as_ref().ok_or_else(|| {
        format!(
            "monitor unavailable: no vmlinux beside {} (the monitor reads its symbols and BTF)",
            kernel.image.display()
        )
    })?;
    let layout =
        KernelLayout::from_vmlinux(vmlinux).map_err(|e| format!("monitor unavailable: {e}"))?;
    Ok(MonitorSpec {
        layout: Arc::new(layout),
        period,
        map_write: None,
    })
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
    let job = sampler::Job {
        layout: spec.layout.clone(),
        ram,
        cpus,
        threads,
        period: spec.period,
        map_write: spec.map_write,
    };
    sampler::start(job).map_err(|e| format!("monitor unavailable: could not start its thread: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monitor_says_why_it_cannot_run() {
        let k = crate::kernel::Kernel {
            image: "/k/bzImage".into(),
            vmlinux: None,
            label: "k".into(),
        };
        let e = spec_for(&k, period_for(4.0)).unwrap_err();
        assert_eq!(
            e,
            "monitor unavailable: no vmlinux beside /k/bzImage (the monitor reads its symbols and BTF)"
        );
        let bad = crate::kernel::Kernel {
            vmlinux: Some("/nonexistent/vmlinux".into()),
            ..k
        };
        let e = spec_for(&bad, period_for(1.0)).unwrap_err();
        assert!(
            e.starts_with("monitor unavailable: reading /nonexistent/vmlinux"),
            "{e}"
        );
    }

    #[test]
    fn the_monitor_samples_at_100_ms_times_the_time_scale() {
        let Some(v) = crate::kernel::resolve(None).ok().and_then(|k| k.vmlinux) else {
            eprintln!("no vmlinux: skipped");
            return;
        };
        let k = crate::kernel::Kernel {
            image: v.clone(),
            vmlinux: Some(v),
            label: "k".into(),
        };
        let m = spec_for(&k, period_for(4.0)).unwrap();
        assert_eq!(m.period, Duration::from_millis(400));
        assert_eq!(
            spec_for(&k, period_for(1.0)).unwrap().period,
            Duration::from_millis(100)
        );
    }
}
