//! `cargo ktstr shell`: a busybox VM with an interactive shell or one `--exec` command.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ktstr::guest::shell::{ShellRequest, REQUEST_PATH};
use ktstr::initramfs::{self, InitramfsSpec};
use ktstr::shm::FrameType;
use ktstr::vm::launch::{self, LaunchRequest};
use ktstr::vm::{self, BackendChoice, BackendKind, ConsoleMode, VmEnd, VmSpec};
use ktstr::Topology;

/// Flags of `cargo ktstr shell`.
#[derive(Debug, clap::Args)]
pub struct ShellArgs {
    /// Kernel: a bzImage, a vmlinux, or a kernel build directory (default: KTSTR_KERNEL).
    #[arg(long)]
    kernel: Option<String>,
    /// NUMA_NODES,LLCS,CORES,THREADS (LLCs in total, cores per LLC, threads per core).
    #[arg(long, default_value = "1,1,1,1", value_parser = parse_topology)]
    topology: Topology,
    /// Files or directories to make available under /include-files/<name> in the guest.
    #[arg(short = 'i', long = "include-files")]
    include_files: Vec<PathBuf>,
    /// Guest memory in MiB (at least 128; estimated when absent).
    #[arg(long, value_parser = clap::value_parser!(u32).range(128..))]
    memory_mib: Option<u32>,
    /// Attach a raw disk of SIZE as /dev/vda (virtio-blk; e.g. 64M, 1GiB; whole MiB). Its
    /// sparse backing file is removed when the VM ends.
    #[arg(long, value_name = "SIZE", value_parser = ktstr::vm::parse_disk_size)]
    disk: Option<u64>,
    /// Stream the guest kernel console to stderr (and raise the log level).
    #[arg(long)]
    dmesg: bool,
    /// Run CMD in the guest instead of an interactive shell; its exit code becomes ours.
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// Turn off performance-mode features (pinning, hugepages, RT threads): the VM gets a
    /// capped plan of host CPUs instead (see --cpu-cap).
    #[arg(long)]
    no_perf_mode: bool,
    /// Reserve only N host CPUs for the VM, whole host LLCs first (default: KTSTR_CPU_CAP, else
    /// 30% of the allowed CPUs). Needs --no-perf-mode; KTSTR_NO_PERF_MODE does not count.
    #[arg(long, requires = "no_perf_mode")]
    cpu_cap: Option<usize>,
    /// VM backend: kvm (in-process VMM), qemu, or auto (default: KTSTR_BACKEND, else auto).
    #[arg(long, value_parser = parse_backend)]
    backend: Option<BackendChoice>,
}

pub fn parse_topology(s: &str) -> Result<Topology, String> {
    Topology::parse(s).map_err(|e| e.to_string())
}

pub fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    s.parse().map_err(|e: vm::BackendSelectError| e.to_string())
}

/// One line that spells out a topology, so nobody has to guess whether the LLC count is per
/// node or in total (it is in total, as in cli.md §6 and the gauntlet labels).
pub fn describe_topology(t: &Topology) -> String {
    let plural = |n: u32, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    format!(
        "topology {}: {} = {} × {} per node × {} per LLC × {} per core (LLCs count in total); node0 = CPUs {}",
        t.label(),
        plural(t.num_cpus(), "CPU"),
        plural(t.numa_nodes, "node"),
        plural(t.llcs_per_node(), "LLC"),
        plural(t.cores, "core"),
        plural(t.threads, "thread"),
        t.node_cpulist(0),
    )
}

/// A busybox VM with `cargo-ktstr` itself as its init: what `shell`, `probe --backend qemu`
/// and `bench` boot.
pub struct BusyboxVm {
    /// The VM spec (initramfs built, memory sized).
    pub spec: VmSpec,
    /// The kernel it boots (its vmlinux feeds the host-side monitor).
    pub kernel: ktstr::kernel::Kernel,
    /// Owns the per-VM archive `spec` names, which is deleted when this drops.
    _initramfs: initramfs::Built,
}

impl BusyboxVm {
    /// Prepares the VM through [`ktstr::vm::launch`]: resolves the kernel, builds the
    /// initramfs for `req` and sizes memory (`memory_mib` overrides the sizing).
    pub fn prepare(
        kernel: Option<&str>,
        backend: BackendKind,
        topology: Topology,
        include_files: &[PathBuf],
        memory_mib: Option<u32>,
        req: &ShellRequest,
        binaries: &[PathBuf],
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the cargo-ktstr binary")?;
        let initramfs = InitramfsSpec {
            init: exe,
            binaries: binaries.to_vec(),
            include_files: include_files.to_vec(),
            busybox: true,
            files: vec![(
                REQUEST_PATH.trim_start_matches('/').to_string(),
                serde_json::to_vec(req)?,
                0o644,
            )],
        };
        let vm = launch::prepare(LaunchRequest {
            kernel,
            backend,
            topology,
            initramfs,
            memory_mib: memory_mib.map(u64::from),
            min_memory_mib: 0,
        })?;
        Ok(BusyboxVm {
            spec: vm.spec,
            kernel: vm.kernel,
            _initramfs: vm.initramfs,
        })
    }
}

/// Picks the backend from a flag or `KTSTR_BACKEND`, and says which and why on stderr (with
/// a warning where it is unlikely to boot Linux).
pub fn choose_backend(flag: Option<BackendChoice>) -> Result<BackendKind> {
    let pick = launch::choose_backend(flag).context("reading KTSTR_BACKEND")?;
    eprintln!("ktstr: {}", pick.note());
    if let Some(w) = pick.warning() {
        eprintln!("ktstr: warning: {w}; the watchdog is cut to {EMULATED_KVM_TIMEOUT_S} s");
    }
    Ok(pick.kind)
}

/// The watchdog for Linux on software-emulated KVM: long enough to see how far it gets, short
/// enough that nobody mistakes it for a hang.
const EMULATED_KVM_TIMEOUT_S: u64 = 60;

fn emulated_kvm(backend: BackendKind) -> bool {
    let host = vm::backend::HostVirt::probe();
    backend == BackendKind::Kvm && !host.hardware_virt
}

/// Runs the shell; returns the process exit code.
pub fn run(a: ShellArgs) -> Result<ExitCode> {
    if a.no_perf_mode {
        // cli.md §2.0: the flag is exported to child processes. Single-threaded here.
        std::env::set_var("KTSTR_NO_PERF_MODE", "1");
    }
    let backend = choose_backend(a.backend)?;
    eprintln!("ktstr: {}", describe_topology(&a.topology));
    // Checked before anything is built; held until the VM is gone.
    let reservation = if ktstr::host_cpus::no_perf_mode() {
        let r = ktstr::host_cpus::reserve_capped(a.cpu_cap)?;
        eprintln!("ktstr: no perf mode: {}", r.plan.describe());
        Some(r)
    } else {
        None
    };
    let req = ShellRequest {
        exec: a.exec.clone(),
        report_topology: false,
    };
    // `_archive` (not `_`) keeps the per-VM archive alive until the VM is done.
    let BusyboxVm {
        mut spec,
        _initramfs: _archive,
        ..
    } = BusyboxVm::prepare(
        a.kernel.as_deref(),
        backend,
        a.topology,
        &a.include_files,
        a.memory_mib,
        &req,
        &[],
    )?;
    spec.host_cpus = reservation.as_ref().map(|r| r.plan.cpus.clone());
    // Sparse: a large disk costs nothing until written. Removed when `_disk` drops.
    let _disk = match a.disk {
        Some(bytes) => {
            let f = tempfile::Builder::new()
                .prefix("ktstr-disk-")
                .suffix(".raw")
                .tempfile()
                .context("creating the disk's backing file")?;
            f.as_file()
                .set_len(bytes)
                .context("sizing the disk's backing file")?;
            spec.disk = Some(f.path().to_path_buf());
            Some(f)
        }
        None => None,
    };
    spec.console = match (&a.exec, a.dmesg) {
        (None, _) => ConsoleMode::Interactive,
        (Some(_), true) => ConsoleMode::Stderr,
        (Some(_), false) => ConsoleMode::Capture,
    };
    if a.dmesg {
        spec.cmdline_extra.push("loglevel=7".into());
    }
    spec.timeout = match (&a.exec, std::env::var("KTSTR_VM_TIMEOUT_S")) {
        (_, Ok(s)) => Duration::from_secs(s.parse().context("KTSTR_VM_TIMEOUT_S must be seconds")?),
        _ if emulated_kvm(backend) => Duration::from_secs(EMULATED_KVM_TIMEOUT_S),
        (Some(_), Err(_)) => Duration::from_secs(600),
        (None, Err(_)) => Duration::from_secs(24 * 3600),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, cancel.clone()).context("installing signal handlers")?;
    }
    spec.cancel = cancel;
    spec.frame_sink = Some(Box::new(|f| match f.kind {
        FrameType::Stdout => {
            let mut o = std::io::stdout().lock();
            let _ = o.write_all(&f.payload);
            let _ = o.flush();
        }
        FrameType::Stderr => {
            let _ = std::io::stderr().write_all(&f.payload);
        }
        FrameType::Panic => eprintln!("ktstr: guest init: {}", f.text()),
        _ => {}
    }));

    // qemu puts the terminal in raw mode itself; for the in-process VMM we do it.
    let _tty = (spec.console == ConsoleMode::Interactive && backend == BackendKind::Kvm)
        .then(TerminalMode::cbreak)
        .flatten();
    let out = vm::run(backend, spec).context("running the VM")?;
    drop(_tty);
    if let Some(code) = vm::qemu::exit_code(&out.frames) {
        if matches!(out.end, VmEnd::GuestExit { .. }) {
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
    }
    bail!(failure_message(
        backend,
        &vm::backend::HostVirt::probe(),
        &out
    ))
}

/// The host terminal switched to character-at-a-time input without local echo (the guest's
/// shell echoes), restored on drop. ISIG stays on, so ^C still reaches ktstr and tears the VM
/// down: the escape hatch from a hung guest.
struct TerminalMode {
    saved: libc::termios,
}

impl TerminalMode {
    fn cbreak() -> Option<TerminalMode> {
        // SAFETY: isatty/tcgetattr/tcsetattr on fd 0 with a valid termios buffer; failures
        // (not a terminal) leave the terminal untouched.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !(libc::ICANON | libc::ECHO);
            t.c_iflag &= !libc::ICRNL;
            t.c_cc[libc::VMIN] = 1;
            t.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(TerminalMode { saved })
        }
    }
}

impl Drop for TerminalMode {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `cbreak` on the same fd.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.saved) };
    }
}

/// Explains a VM that did not end with the guest's exit code, with the console tail and, on
/// the KVM backend, the hint to use qemu.
/// The hint appears only where the CPU flags really lack vmx/svm: on a host with hardware
/// virtualization a failed KVM run is a bug to report, not a reason to switch backends.
pub fn failure_message(
    backend: BackendKind,
    host: &vm::backend::HostVirt,
    out: &vm::VmOutcome,
) -> String {
    let mut msg = format!("the VM did not finish the command: {}", out.end.describe());
    if let Some(e) = &out.channel_error {
        msg.push_str(&format!("\nresult channel: {e}"));
    }
    let tail = out.console_lines(40);
    if !tail.trim().is_empty() {
        msg.push_str(&format!("\n--- console tail ---\n{tail}"));
    }
    if backend == BackendKind::Kvm && !host.hardware_virt {
        msg.push_str("\nhint: this host's KVM may not run Linux guests (no hardware virtualization); use --backend qemu");
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_description_spells_out_the_llc_count() {
        let t = ktstr::Topology::parse("2,2,2,2").unwrap();
        assert_eq!(
            describe_topology(&t),
            "topology 2n2l2c2t: 8 CPUs = 2 nodes × 1 LLC per node × 2 cores per LLC × 2 threads per core (LLCs count in total); node0 = CPUs 0-3"
        );
    }

    #[test]
    fn the_qemu_hint_needs_a_host_without_hardware_virtualization() {
        let out = vm::VmOutcome {
            backend: BackendKind::Kvm,
            end: vm::VmEnd::Reboot,
            frames: vec![],
            channel_error: None,
            console_tail: "[    1.0] booting\n".into(),
            times: Default::default(),
            monitor: None,
            kvm_stats: None,
            placement_notes: Vec::new(),
        };
        let host = |hardware_virt| vm::backend::HostVirt {
            kvm_usable: true,
            kvm_denied: false,
            hardware_virt,
            outer_hypervisor: None,
        };
        let emulated = failure_message(BackendKind::Kvm, &host(false), &out);
        assert!(emulated.contains("use --backend qemu"), "{emulated}");
        assert!(emulated.contains("guest rebooted"), "{emulated}");
        let hardware = failure_message(BackendKind::Kvm, &host(true), &out);
        assert!(!hardware.contains("hint:"), "{hardware}");
        assert!(hardware.contains("booting"), "{hardware}");
        let qemu = failure_message(BackendKind::Qemu, &host(false), &out);
        assert!(!qemu.contains("hint:"), "{qemu}");
    }
}
