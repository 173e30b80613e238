//! The sampling thread: every period it reads each vCPU's runqueue and sched_ext's state out of
//! guest RAM, and each vCPU thread's host scheduling delay out of `/proc`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::bpf_write::{self, MapWriteOutcome};
use super::guest_ram::{GuestRam, KernelMem};
use super::layout::KernelLayout;
use crate::bpf_maps::BpfMapWrite;
use crate::workload::report::read_schedstat;

/// One CPU's runqueue at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuSample {
    /// `rq->clock` (ns of guest time at the runqueue's last update).
    pub clock: u64,
    /// `rq->nr_running`: runnable tasks of every class, the running one included.
    pub nr_running: u32,
    /// `rq->scx.nr_running`, with sched_ext.
    pub scx_nr_running: Option<u32>,
    /// `rq->scx.local_dsq.nr`: tasks waiting in the CPU's local dispatch queue.
    pub local_dsq: Option<u32>,
    /// Host nanoseconds this vCPU's thread has spent runnable but not running (cumulative,
    /// from `/proc/.../schedstat`), when known.
    pub host_wait_ns: Option<u64>,
}

impl CpuSample {
    /// The tasks this CPU itself must run: `nr_running`, except that sched_ext tasks count
    /// only when running or in the CPU's local DSQ. sched_ext accounts a task waiting in a
    /// shared DSQ to the runqueue it was enqueued on, though any CPU may take it; counting
    /// those made a healthy global-queue scheduler look 5× imbalanced (1,1,5,1 under
    /// scx_demo's spinners).
    pub fn load(&self) -> u32 {
        match (self.scx_nr_running, self.local_dsq) {
            (Some(scx), Some(local)) => {
                let others = self.nr_running.saturating_sub(scx);
                others + local.min(scx) + u32::from(scx > local)
            }
            _ => self.nr_running,
        }
    }
}

/// Everything read at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// Host milliseconds since the monitor started.
    pub at_ms: u64,
    /// One entry per vCPU.
    pub cpus: Vec<CpuSample>,
    /// `scx_ops_enable_state_var`, with sched_ext.
    pub scx_state: Option<u32>,
    /// `scx_exit_info->kind` once sched_ext has an exit record.
    pub scx_exit_kind: Option<u32>,
    /// `jiffies_64`: the guest's global tick count. It stands still only when no guest CPU
    /// ran at all (a guest whose host stopped it as a whole).
    #[serde(default)]
    pub jiffies: Option<u64>,
}

/// The sched_ext exit the monitor read out of the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScxExit {
    /// `SCX_EXIT_*` name.
    pub kind: String,
    /// `scx_exit_info->reason`.
    pub reason: String,
    /// `scx_exit_info->msg`.
    pub msg: String,
}

/// What a monitor run collected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    /// Sampling period.
    pub period_ms: u64,
    /// Samples, oldest first (only those taken once the guest kernel was readable).
    pub samples: Vec<Sample>,
    /// The first sched_ext exit with a non-zero kind, read when it appeared.
    pub scx_exit: Option<ScxExit>,
    /// Why nothing could be sampled, when nothing could.
    pub unavailable: Option<String>,
    /// Host CPU time the sampling thread used, in µs (its own cost to the host).
    pub cpu_us: Option<u64>,
    /// How long the monitor ran, in ms.
    pub ran_ms: u64,
    /// When the guest's init said hello, in ms of the monitor's clock: samples before it are
    /// the kernel's boot, which is not judged (a CPU being brought up, an initcall, is no
    /// scheduler's stall). `None`: init never started; everything is judged.
    #[serde(default)]
    pub judged_from_ms: Option<u64>,
    /// What became of the test's `bpf_map_write`, when it has one.
    #[serde(default)]
    pub map_write: Option<super::bpf_write::MapWriteOutcome>,
}

/// Where the host threads that run each vCPU are: `/proc/{pid}/task/*/comm` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuThreads {
    /// The process that owns them (ours for the in-process VMM, qemu's otherwise).
    pub pid: u32,
    /// Thread name → the vCPUs it runs (`None`: all of them, as qemu's single TCG thread).
    pub naming: ThreadNaming,
}

/// How a backend names its vCPU threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadNaming {
    /// `ktstr-vcpu{N}` (the in-process VMM).
    Ktstr,
    /// `CPU {N}/KVM`, `CPU {N}/TCG` or `ALL CPUs/TCG` (qemu with `debug-threads=on`).
    Qemu,
}

impl ThreadNaming {
    /// Which vCPU a thread called `comm` runs: `Some(Some(n))` one, `Some(None)` all of them,
    /// `None` not a vCPU thread.
    pub fn vcpu_of(self, comm: &str) -> Option<Option<u32>> {
        let comm = comm.trim();
        match self {
            ThreadNaming::Ktstr => comm.strip_prefix("ktstr-vcpu")?.parse().ok().map(Some),
            ThreadNaming::Qemu => {
                if comm.starts_with("ALL CPUs/") {
                    return Some(None);
                }
                let rest = comm.strip_prefix("CPU ")?;
                let (n, accel) = rest.split_once('/')?;
                matches!(accel, "KVM" | "TCG").then_some(())?;
                n.parse().ok().map(Some)
            }
        }
    }
}

/// The run-queue wait (ns) of every vCPU thread of `t`, per vCPU (`None` where unknown).
fn host_waits(t: &VcpuThreads, cpus: usize) -> Vec<Option<u64>> {
    let mut out = vec![None; cpus];
    let Ok(dir) = std::fs::read_dir(format!("/proc/{}/task", t.pid)) else {
        return out;
    };
    for e in dir.flatten() {
        let p = e.path();
        let Ok(comm) = std::fs::read_to_string(p.join("comm")) else {
            continue;
        };
        let Some(which) = t.naming.vcpu_of(&comm) else {
            continue;
        };
        let Some((_, wait, _)) = read_schedstat(&p.join("schedstat").to_string_lossy()) else {
            continue;
        };
        match which {
            Some(n) if (n as usize) < cpus => out[n as usize] = Some(wait),
            Some(_) => {}
            None => out.iter_mut().for_each(|w| *w = Some(wait)),
        }
    }
    out
}

/// Reads one sample; `Err` says why the guest kernel is not readable (yet).
fn sample(
    layout: &KernelLayout,
    ram: &dyn GuestRam,
    cpus: usize,
    at_ms: u64,
) -> Result<Sample, String> {
    let k = KernelMem::new(ram, &layout.symbols).map_err(|e| e.to_string())?;
    let (s, o) = (&layout.symbols, &layout.offsets);
    let mut out = Sample {
        at_ms,
        cpus: Vec::with_capacity(cpus),
        ..Default::default()
    };
    for cpu in 0..cpus as u64 {
        let off = k
            .u64(s.per_cpu_offset + 8 * cpu)
            .ok_or("unreadable __per_cpu_offset")?;
        let rq = s.runqueues.wrapping_add(off);
        let field_u32 = |f: Option<u64>| f.and_then(|f| k.u32(rq.wrapping_add(f)));
        out.cpus.push(CpuSample {
            clock: k
                .u64(rq.wrapping_add(o.rq_clock))
                .ok_or("unreadable runqueue")?,
            nr_running: k
                .u32(rq.wrapping_add(o.rq_nr_running))
                .ok_or("unreadable runqueue")?,
            scx_nr_running: field_u32(o.rq_scx_nr_running),
            local_dsq: field_u32(o.rq_scx_local_dsq_nr),
            host_wait_ns: None,
        });
    }
    out.scx_state = s.scx_enable_state.and_then(|a| k.u32(a));
    out.jiffies = k.u64(s.jiffies);
    out.scx_exit_kind = exit_info(&k, layout).map(|(kind, _)| kind);
    Ok(out)
}

/// `scx_exit_info`'s kind and address, when the record exists.
fn exit_info(k: &KernelMem, layout: &KernelLayout) -> Option<(u32, u64)> {
    let ptr = k.u64(layout.symbols.scx_exit_info?)?;
    if ptr == 0 {
        return None;
    }
    Some((k.u32(ptr.wrapping_add(layout.offsets.exit_kind?))?, ptr))
}

fn read_exit(layout: &KernelLayout, ram: &dyn GuestRam) -> Option<ScxExit> {
    let k = KernelMem::new(ram, &layout.symbols).ok()?;
    let (kind, ei) = exit_info(&k, layout)?;
    let string = |field: Option<u64>| {
        let p = k.u64(ei.wrapping_add(field?))?;
        (p != 0).then(|| k.c_string(p, 1024)).flatten()
    };
    Some(ScxExit {
        kind: layout.exit_kind_name(kind),
        reason: string(layout.offsets.exit_reason).unwrap_or_default(),
        msg: string(layout.offsets.exit_msg).unwrap_or_default(),
    })
}

/// A running monitor; [`MonitorHandle::finish`] stops it and returns what it recorded.
pub struct MonitorHandle {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Recording>,
}

impl MonitorHandle {
    /// Stops sampling (after one last sample) and returns the recording.
    pub fn finish(self) -> Recording {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.thread().unpark();
        self.thread.join().unwrap_or_else(|_| Recording {
            unavailable: Some("the monitor thread panicked".into()),
            ..Default::default()
        })
    }
}

/// What one monitor thread watches, and how.
pub struct Job {
    /// The guest kernel's layout.
    pub layout: Arc<KernelLayout>,
    /// The guest's RAM.
    pub ram: Arc<dyn GuestRam>,
    /// vCPUs.
    pub cpus: usize,
    /// Their host threads.
    pub threads: VcpuThreads,
    /// Sampling period.
    pub period: Duration,
    /// A `bpf_map_write` to apply once the scheduler is enabled.
    pub map_write: Option<BpfMapWrite>,
}

/// The pending `bpf_map_write` of a monitor run: applied at the first sample that finds
/// sched_ext enabled, retried on later samples while the map is not found. The first failure
/// is the one reported: later ones may see the scheduler's maps going away at its exit.
struct PendingWrite {
    write: BpfMapWrite,
    first_error: Option<String>,
}

impl PendingWrite {
    /// Tries the write if `s` shows the scheduler enabled; `Some` once it is settled.
    fn try_apply(
        &mut self,
        layout: &KernelLayout,
        ram: &dyn GuestRam,
        s: &Sample,
    ) -> Option<MapWriteOutcome> {
        let enabled = layout
            .enable_states
            .iter()
            .find(|(_, n)| n == "SCX_OPS_ENABLED")
            .map(|(v, _)| *v);
        if enabled.is_none() || s.scx_state != enabled {
            return None;
        }
        let maps = match &layout.maps {
            Ok(m) => m,
            Err(e) => return Some(self.outcome(Err(format!("this kernel's layout: {e}")), s)),
        };
        let k = KernelMem::new(ram, &layout.symbols).ok()?;
        match bpf_write::apply(&k, maps, &self.write) {
            Ok(done) => Some(self.outcome(Ok(done), s)),
            Err(e) => {
                self.first_error.get_or_insert(e);
                None
            }
        }
    }

    fn outcome(&self, r: Result<(String, u64), String>, s: &Sample) -> MapWriteOutcome {
        let mut o = MapWriteOutcome {
            offset: self.write.offset,
            value: self.write.value,
            ..Default::default()
        };
        match r {
            Ok((name, id)) => {
                o.map = Some(name);
                o.map_id = Some(id);
                o.at_ms = Some(s.at_ms);
            }
            Err(e) => o.error = Some(e),
        }
        o
    }

    /// The outcome of a write never made by the end of the run.
    fn never(self) -> MapWriteOutcome {
        MapWriteOutcome {
            offset: self.write.offset,
            value: self.write.value,
            error: Some(
                self.first_error
                    .unwrap_or_else(|| bpf_write::NEVER_ENABLED.to_string()),
            ),
            ..Default::default()
        }
    }
}

/// Starts sampling `job.cpus` vCPUs of the kernel described by `job.layout` every
/// `job.period`.
pub fn start(job: Job) -> std::io::Result<MonitorHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let Job {
        layout,
        ram,
        cpus,
        threads,
        period,
        map_write,
    } = job;
    let thread = std::thread::Builder::new()
        .name("ktstr-monitor".into())
        .spawn(move || {
            let t0 = Instant::now();
            let mut rec = Recording {
                period_ms: period.as_millis() as u64,
                ..Default::default()
            };
            let mut pending = map_write.map(|write| PendingWrite {
                write,
                first_error: None,
            });
            let mut last_err = None;
            loop {
                let last = flag.load(Ordering::SeqCst);
                let at_ms = t0.elapsed().as_millis() as u64;
                match sample(&layout, ram.as_ref(), cpus, at_ms) {
                    Ok(mut s) => {
                        for (c, w) in s.cpus.iter_mut().zip(host_waits(&threads, cpus)) {
                            c.host_wait_ns = w;
                        }
                        if rec.scx_exit.is_none() && s.scx_exit_kind.is_some_and(|k| k != 0) {
                            rec.scx_exit = read_exit(&layout, ram.as_ref());
                        }
                        if let Some(p) = pending.as_mut() {
                            if let Some(done) = p.try_apply(&layout, ram.as_ref(), &s) {
                                rec.map_write = Some(done);
                                pending = None;
                            }
                        }
                        rec.samples.push(s);
                    }
                    Err(e) => last_err = Some(e),
                }
                if last {
                    break;
                }
                // Sleep to the next period boundary (not `period` after a slow sample).
                let next = period * (at_ms / period.as_millis().max(1) as u64 + 1) as u32;
                let now = t0.elapsed();
                if next > now {
                    std::thread::park_timeout(next - now);
                }
            }
            if let Some(p) = pending {
                rec.map_write = Some(p.never());
            }
            rec.ran_ms = t0.elapsed().as_millis() as u64;
            rec.cpu_us = read_schedstat("/proc/thread-self/schedstat").map(|(ns, ..)| ns / 1000);
            if rec.samples.is_empty() {
                rec.unavailable = Some(format!(
                    "monitor unavailable: {}",
                    last_err.unwrap_or_else(|| "no sample taken".into())
                ));
            }
            rec
        })?;
    Ok(MonitorHandle { stop, thread })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_counts_sched_ext_tasks_only_when_running_or_local() {
        let c = |nr, scx, local| CpuSample {
            nr_running: nr,
            scx_nr_running: scx,
            local_dsq: local,
            ..Default::default()
        };
        assert_eq!(c(5, None, None).load(), 5, "no sched_ext: nr_running");
        assert_eq!(
            c(5, Some(5), Some(0)).load(),
            1,
            "one running, four in a shared DSQ"
        );
        assert_eq!(c(5, Some(5), Some(3)).load(), 4, "one running, three local");
        assert_eq!(c(3, Some(3), Some(3)).load(), 3, "all local, none running");
        assert_eq!(
            c(2, Some(0), Some(0)).load(),
            2,
            "two tasks of other classes"
        );
        assert_eq!(c(0, Some(0), Some(0)).load(), 0);
    }

    #[test]
    fn vcpu_thread_names_of_both_backends() {
        use ThreadNaming::*;
        assert_eq!(Ktstr.vcpu_of("ktstr-vcpu12\n"), Some(Some(12)));
        assert_eq!(Ktstr.vcpu_of("ktstr-monitor"), None);
        assert_eq!(Qemu.vcpu_of("CPU 3/KVM"), Some(Some(3)));
        assert_eq!(Qemu.vcpu_of("CPU 0/TCG"), Some(Some(0)));
        assert_eq!(Qemu.vcpu_of("ALL CPUs/TCG"), Some(None));
        assert_eq!(Qemu.vcpu_of("CPU 1/XYZ"), None);
        assert_eq!(Qemu.vcpu_of("qemu-system-x86"), None);
    }

    #[test]
    fn our_own_threads_have_a_host_wait() {
        let h = std::thread::Builder::new()
            .name("ktstr-vcpu1".into())
            .spawn(|| std::thread::sleep(Duration::from_millis(300)))
            .unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let w = host_waits(
            &VcpuThreads {
                pid: std::process::id(),
                naming: ThreadNaming::Ktstr,
            },
            2,
        );
        h.join().unwrap();
        assert_eq!(w[0], None, "no thread runs vCPU 0");
        // schedstat exists on hosts with CONFIG_SCHED_INFO (Debian's kernels).
        if std::path::Path::new("/proc/self/schedstat").exists() {
            assert!(w[1].is_some(), "{w:?}");
        }
    }

    #[test]
    fn an_unreadable_guest_is_reported_not_sampled() {
        struct NoRam;
        impl GuestRam for NoRam {
            fn read(&self, _: u64, _: &mut [u8]) -> bool {
                false
            }
        }
        let mut layout = KernelLayout::default();
        layout.symbols.linux_banner = 0xffff_ffff_8100_0000;
        let t = std::time::Instant::now();
        let h = start(Job {
            layout: Arc::new(layout),
            ram: Arc::new(NoRam),
            cpus: 1,
            threads: VcpuThreads {
                pid: std::process::id(),
                naming: ThreadNaming::Ktstr,
            },
            period: Duration::from_millis(10),
            map_write: Some(BpfMapWrite::new(".bss", 0, 1)),
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let r = h.finish();
        assert!(r.samples.is_empty());
        // The thread's own clock: within the test's, and running (a loaded host may start
        // the thread late, so no lower bound beyond that).
        assert!(
            r.ran_ms > 0 && r.ran_ms as u128 <= t.elapsed().as_millis(),
            "{r:?}"
        );
        if std::path::Path::new("/proc/thread-self/schedstat").exists() {
            assert!(r.cpu_us.is_some(), "{r:?}");
        }
        assert_eq!(
            r.unavailable.as_deref(),
            Some("monitor unavailable: guest RAM is not readable yet")
        );
        let w = r.map_write.expect("a declared write always has an outcome");
        assert_eq!(
            w.error.as_deref(),
            Some("the scheduler was never seen enabled (SCX_OPS_ENABLED)")
        );
    }
}
