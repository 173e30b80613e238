//! One interface over the two VM backends: the in-process KVM VMM ([`crate::vmm`]) and qemu
//! ([`qemu`]). A [`VmSpec`] says what to boot; a backend runs it to the end and returns a
//! [`VmOutcome`] that says how the VM ended, what the guest sent over the result channel, and
//! how long each phase took.

pub mod backend;
pub mod qemu;

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
        }
    }
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmEnd {
    /// The guest wrote `status` to the exit port (0xF4): a deliberate end.
    GuestExit {
        /// The byte the guest wrote.
        status: u8,
    },
    /// The guest rebooted (i8042 reset, triple fault after `reboot=t`, or a system event).
    Reboot,
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
    Kvm(#[from] crate::vmm::VmmError),
}

/// Runs `spec` on `backend`. For qemu, `KTSTR_QEMU_ACCEL=kvm` asks for `-accel kvm` (only
/// sensible on hardware KVM); TCG otherwise.
pub fn run(backend: BackendKind, spec: VmSpec) -> Result<VmOutcome, VmError> {
    match backend {
        BackendKind::Qemu => {
            let accel = if std::env::var("KTSTR_QEMU_ACCEL").as_deref() == Ok("kvm") {
                qemu::Accel::Kvm
            } else {
                qemu::Accel::Tcg
            };
            Ok(qemu::run(spec, accel)?)
        }
        BackendKind::Kvm => Ok(crate::vmm::run(spec)?),
    }
}
