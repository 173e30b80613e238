//! One interface over the two VM backends: the in-process KVM VMM ([`kvm`]) and qemu
//! ([`qemu`]). A [`VmSpec`] says what to boot; a backend runs it to the end and returns a
//! [`VmOutcome`] that says how the VM ended, what the guest sent over the result channel, and
//! how long each phase took.

pub mod backend;
pub mod console;
pub mod kvm;
pub mod launch;
pub mod qemu;
pub mod session;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::shm::Frame;
use crate::topology::Topology;

pub use backend::{select_backend, BackendChoice, BackendKind, BackendSelectError};

/// Default size of the guest→host shared-memory result region.
pub const DEFAULT_SHM_SIZE: u64 = 8 << 20;

/// Where the guest's serial console goes while the VM runs (it is always kept, in part, for
/// failure reports).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleMode {
    /// Only captured (the last [`CONSOLE_TAIL_BYTES`] are kept).
    Capture,
    /// Captured and copied to the host's stderr as it arrives (`--dmesg`).
    Stderr,
    /// The host's terminal is the guest's console: stdin goes to the guest's serial port and
    /// the console comes to stdout (interactive `shell`).
    Interactive,
}

/// How much of the console is kept for failure reports.
pub const CONSOLE_TAIL_BYTES: usize = 64 * 1024;

/// Receives every result-channel frame as soon as the host sees it (e.g. to stream a guest
/// command's stdout). Called from a backend's monitor thread.
pub type FrameSink = Box<dyn FnMut(&Frame) + Send>;

/// What to boot.
pub struct VmSpec {
    /// Kernel image: an ELF vmlinux or a bzImage.
    pub kernel: PathBuf,
    /// The initramfs (a cpio newc archive, possibly several concatenated).
    pub initramfs: PathBuf,
    /// CPU topology the guest must see.
    pub topology: Topology,
    /// Guest RAM in MiB (split evenly across NUMA nodes by each backend).
    pub memory_mib: u64,
    /// Extra kernel command-line words, appended after the backend's base line.
    pub cmdline_extra: Vec<String>,
    /// Hard bound on the VM's run time (the watchdog).
    pub timeout: Duration,
    /// Where the console goes.
    pub console: ConsoleMode,
    /// Size of the shared-memory result region (4 KiB aligned).
    pub shm_size: u64,
    /// Optional live view of result frames.
    pub frame_sink: Option<FrameSink>,
    /// Set by the host (e.g. on SIGINT/SIGTERM) to tear the VM down promptly.
    pub cancel: Arc<AtomicBool>,
    /// Host CPUs the VM's threads are confined to ([`crate::placement`]); `None`: no
    /// constraint.
    pub host_cpus: Option<Vec<u32>>,
    /// Performance mode: each vCPU thread on its own host CPU (and RT, hugepages);
    /// [`VmSpec::host_cpus`] then holds the service CPU for every other thread.
    pub pinning: Option<crate::placement::Pinning>,
    /// Run the host-side monitor beside the guest (`None`: no monitor).
    pub monitor: Option<crate::monitor::MonitorSpec>,
    /// A raw disk image the guest sees as `/dev/vda` (virtio-blk); `None`: no disk.
    pub disk: Option<PathBuf>,
}

impl VmSpec {
    /// A spec with defaults for everything but kernel, initramfs and topology.
    pub fn new(kernel: PathBuf, initramfs: PathBuf, topology: Topology) -> Self {
        VmSpec {
            kernel,
            initramfs,
            topology,
            memory_mib: 512,
            cmdline_extra: Vec::new(),
            timeout: Duration::from_secs(120),
            console: ConsoleMode::Capture,
            shm_size: DEFAULT_SHM_SIZE,
            frame_sink: None,
            cancel: Arc::new(AtomicBool::new(false)),
            host_cpus: None,
            pinning: None,
            monitor: None,
            disk: None,
        }
    }
}

/// Parses a disk size (`shell --disk`): a whole, positive number of MiB written with a
/// case-insensitive binary suffix, `b`, `kib`/`k`, `mib`/`m` or `gib`/`g` (`64M`, `1GiB`,
/// `67108864b`). Decimal suffixes (`kb`, `mb`, `gb`) are refused: a disk of "64 MB" would
/// not be a whole number of MiB.
pub fn parse_disk_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "{s:?}: expected a whole number with a unit, e.g. 64M"
        ));
    }
    let mult: u64 = match unit {
        "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" | "mb" | "gb" => {
            return Err(format!(
                "{s:?}: decimal units are not accepted; use KiB, MiB or GiB (64MiB or 64M)"
            ))
        }
        "" => return Err(format!("{s:?}: give a unit: b, KiB, MiB or GiB (e.g. 64M)")),
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?}; use b, KiB, MiB or GiB"
            ))
        }
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a whole number with a unit, e.g. 64M"))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if bytes == 0 || bytes % (1 << 20) != 0 {
        return Err(format!(
            "{s:?}: the size must be a positive whole number of MiB"
        ));
    }
    Ok(bytes)
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmEnd {
    /// The guest wrote `status` to the exit port (0xF4): a deliberate end.
    GuestExit {
        /// The byte the guest wrote.
        status: u8,
    },
    /// The guest rebooted (i8042 reset, qemu's reset, or a KVM system event).
    Reboot,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN): the CPU reset itself without the kernel
    /// asking, so no panic line was printed. Linux's own `reboot=t` ends this way too, but
    /// the VMM boots it with `reboot=k`, so on the KVM backend this is a crash.
    TripleFault {
        /// Which vCPU, and its registers as KVM reported them at the exit.
        detail: String,
    },
    /// The guest kernel panicked (seen on the console or in a PANIC frame).
    Panic {
        /// The panic line.
        message: String,
    },
    /// The hypervisor could not run the guest's code (KVM emulation failure / internal error).
    EmulationFailure {
        /// What the hypervisor reported, with registers where known.
        detail: String,
    },
    /// KVM refused to enter the guest.
    FailEntry {
        /// The hardware reason.
        detail: String,
    },
    /// The watchdog fired.
    Timeout {
        /// The bound that was exceeded.
        after: Duration,
    },
    /// The host asked the VM to stop (signal or cancel flag).
    Cancelled,
    /// The backend process or thread died some other way.
    BackendError {
        /// What happened.
        detail: String,
    },
}

impl VmEnd {
    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        match self {
            VmEnd::GuestExit { status } => {
                format!("guest exited deliberately with status {status}")
            }
            VmEnd::Reboot => "guest rebooted without reporting a result".into(),
            VmEnd::TripleFault { detail } => {
                format!("guest triple-faulted without reporting a result: {detail}")
            }
            VmEnd::Panic { message } => format!("guest kernel panic: {message}"),
            VmEnd::EmulationFailure { detail } => {
                format!("hypervisor emulation failure: {detail}")
            }
            VmEnd::FailEntry { detail } => format!("KVM could not enter the guest: {detail}"),
            VmEnd::Timeout { after } => format!("watchdog: VM still running after {after:?}"),
            VmEnd::Cancelled => "cancelled by the host".into(),
            VmEnd::BackendError { detail } => format!("backend error: {detail}"),
        }
    }
}

/// Wall time of each phase of a VM's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseTimes {
    /// From `run` to the first guest instruction (VMM setup, or qemu start).
    pub setup: Duration,
    /// From the first guest instruction to the guest init's first frame (`boot to init`).
    pub boot_to_init: Option<Duration>,
    /// From init's first frame to the end of the guest (`init to exit`).
    pub init_to_exit: Option<Duration>,
    /// From the guest's end to all resources freed.
    pub teardown: Duration,
    /// Everything.
    pub total: Duration,
}

/// Everything a backend learned from one VM.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    /// Which backend ran it.
    pub backend: BackendKind,
    /// How it ended.
    pub end: VmEnd,
    /// Every valid frame the guest sent, in order.
    pub frames: Vec<Frame>,
    /// A problem found in the result channel after the valid frames (corrupt or truncated).
    pub channel_error: Option<String>,
    /// The last [`CONSOLE_TAIL_BYTES`] of the serial console.
    pub console_tail: String,
    /// Phase timings.
    pub times: PhaseTimes,
    /// What the host-side monitor recorded, when it ran.
    pub monitor: Option<crate::monitor::Recording>,
    /// KVM's statistics of the VM (in-process VMM only; sidecar `kvm_stats`).
    pub kvm_stats: Option<serde_json::Value>,
    /// What the backend could not do of the spec's [`VmSpec::pinning`] (no hugepages after
    /// all, a vCPU thread it could not pin), for the sidecar's placement notes.
    pub placement_notes: Vec<String>,
}

impl VmOutcome {
    /// The last `lines` lines of the console, for failure reports.
    pub fn console_lines(&self, lines: usize) -> String {
        tail_lines(&self.console_tail, lines)
    }
}

/// The last `n` lines of `s`.
pub fn tail_lines(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// Why a VM could not be run at all (as opposed to running and failing, see [`VmEnd`]).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The qemu backend failed.
    #[error(transparent)]
    Qemu(#[from] qemu::QemuError),
    /// The KVM backend failed.
    #[error("KVM backend: {0}")]
    Kvm(#[from] crate::vm::kvm::VmmError),
    /// The VM could not be confined to its host CPUs.
    #[error(transparent)]
    HostCpus(#[from] crate::host_cpus::CapError),
    /// The topology needs x2APIC (APIC ids above 254) and the kernel was built without it: such
    /// a kernel disables its APIC when it finds x2APIC on, and hangs silently.
    #[error("topology {topology} needs x2APIC (APIC ids up to {max_apic_id}), but {kernel} was built without CONFIG_X86_X2APIC (per {config}); rebuild the kernel with CONFIG_X86_X2APIC=y or pick a topology whose APIC ids stay at or below 254")]
    KernelLacksX2apic {
        /// The topology label.
        topology: String,
        /// Its largest APIC id.
        max_apic_id: u32,
        /// The kernel image.
        kernel: String,
        /// Where its configuration was read.
        config: String,
    },
}

/// Refuses an x2APIC topology for a kernel whose configuration (when one can be found) lacks
/// `CONFIG_X86_X2APIC`. Without a configuration the boot goes ahead.
pub fn check_kernel_supports(spec: &VmSpec) -> Result<(), VmError> {
    if !spec.topology.needs_x2apic() {
        return Ok(());
    }
    match crate::kernel::config::KernelConfig::find(&spec.kernel) {
        Some(cfg) if !cfg.is_enabled("CONFIG_X86_X2APIC") => Err(VmError::KernelLacksX2apic {
            topology: spec.topology.label(),
            max_apic_id: spec.topology.max_apic_id(),
            kernel: spec.kernel.display().to_string(),
            config: cfg.source.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Runs `spec` on `backend`. For qemu, `KTSTR_QEMU_ACCEL=kvm` asks for `-accel kvm` (only
/// sensible on hardware KVM); TCG otherwise.
pub fn run(backend: BackendKind, spec: VmSpec) -> Result<VmOutcome, VmError> {
    check_kernel_supports(&spec)?;
    match backend {
        BackendKind::Qemu => Ok(qemu::run(spec, qemu::Accel::from_env())?),
        BackendKind::Kvm => {
            // vCPU and device threads inherit the calling thread's mask; put it back after.
            let _restore = match &spec.host_cpus {
                Some(cpus) => Some(AffinityRestore::confine(cpus)?),
                None => None,
            };
            Ok(kvm::run(spec)?)
        }
    }
}

/// Confines the calling thread to some CPUs and restores its previous mask when dropped.
struct AffinityRestore(Vec<u32>);

impl AffinityRestore {
    fn confine(cpus: &[u32]) -> Result<Self, crate::host_cpus::CapError> {
        let old = crate::host_cpus::allowed_cpus().map_err(crate::host_cpus::CapError::Affinity)?;
        crate::host_cpus::confine_current_thread(cpus)?;
        Ok(AffinityRestore(old))
    }
}

impl Drop for AffinityRestore {
    fn drop(&mut self) {
        let _ = crate::host_cpus::confine_current_thread(&self.0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn disk_sizes_take_binary_units_only_in_whole_mib() {
        assert_eq!(super::parse_disk_size("64M"), Ok(64 << 20));
        assert_eq!(super::parse_disk_size("64MiB"), Ok(64 << 20));
        assert_eq!(super::parse_disk_size("1gib"), Ok(1 << 30));
        assert_eq!(super::parse_disk_size("2048K"), Ok(2 << 20));
        assert_eq!(super::parse_disk_size("1048576b"), Ok(1 << 20));
        for (bad, says) in [
            ("64MB", "decimal units"),
            ("64", "give a unit"),
            ("0M", "positive whole number of MiB"),
            ("1000K", "positive whole number of MiB"),
            ("-1M", "expected a whole number"),
            ("64X", "unknown unit"),
            ("99999999999999G", "too large"),
        ] {
            let e = super::parse_disk_size(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    use super::*;
    use std::path::Path;

    /// The prebuilt kernels in ../shared/kernel (the sched_ext one has X86_X2APIC, the tiny
    /// one does not). Missing outside CI: say so and skip; under CI: fail.
    fn shared_kernel(rel: &str) -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/kernel")
            .join(rel);
        if p.exists() {
            return Some(p);
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "{} is missing under CI",
            p.display()
        );
        eprintln!("!!! SKIPPED: {} not found", p.display());
        None
    }

    #[test]
    fn an_x2apic_shape_is_refused_for_a_kernel_without_x2apic() {
        let (Some(tiny), Some(full)) = (shared_kernel("tiny/bzImage"), shared_kernel("bzImage"))
        else {
            return;
        };
        let x2 = Topology::parse_label("1n14l9c2t").unwrap();
        assert!(x2.needs_x2apic());
        // Refused before any backend starts: no KVM, qemu or initramfs needed.
        let spec = VmSpec::new(tiny.clone(), "/nonexistent/initramfs".into(), x2);
        let e = run(BackendKind::Kvm, spec).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, VmError::KernelLacksX2apic { .. }), "{msg}");
        assert!(
            msg.contains("1n14l9c2t")
                && msg.contains("CONFIG_X86_X2APIC")
                && msg.contains("tiny/config"),
            "{msg}"
        );
        // The same kernel with an xAPIC shape, and the full kernel with the x2APIC shape, pass.
        let small = Topology::parse_label("2n4l4c2t").unwrap();
        assert!(check_kernel_supports(&VmSpec::new(tiny, "x".into(), small)).is_ok());
        assert!(check_kernel_supports(&VmSpec::new(full, "x".into(), x2)).is_ok());
    }
}
