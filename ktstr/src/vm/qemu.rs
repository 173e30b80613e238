//! The qemu backend: `qemu-system-x86_64` as a child process, for hosts where KVM is missing or
//! only emulated (TCG), or where the user asks for it.
//!
//! It keeps the contract of the in-process VMM: the same kernel, initramfs and guest init, the
//! same topology (CPU numbering included), the same shared-memory result channel and the same
//! exit port.
//! - Topology: one socket per NUMA node and one die per LLC with an Intel CPU model, because
//!   Linux takes the LLC from CPUID leaf 4, which qemu shares per die; `-numa node` entries
//!   give each node its CPUs and memory. qemu numbers CPUs socket, die, core, thread: our
//!   canonical order.
//! - Guest RAM: every node's RAM is a `memory-backend-file` with `share=on` on a memfd that
//!   qemu inherits (`/proc/self/fd/N`), so nothing outlives the run. The result region, near the top of the last node, is
//!   reserved in the guest with `memmap=` and read by the host straight from the file; the
//!   host-side monitor reads guest kernel memory the same way.
//! - The run itself is a [`Session`], as for the in-process VMM: qemu's serial output is
//!   pumped into its console, and [`QemuMachine`] answers its questions.
//! - Exit: `isa-debug-exit` on port 0xF4; qemu's exit status is `status << 1 | 1`.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::console::Console;
use super::session::{Machine, MonitorTarget, Session};
use super::{BackendKind, ConsoleMode, VmEnd, VmOutcome, VmSpec};
use crate::monitor::guest_ram::{FileRam, FileRegion};
use crate::shm::FrameType;
use crate::topology::Topology;

/// The qemu binary ktstr runs.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// q35 keeps RAM below 4 GiB up to this size; above it, only the first 2 GiB stay low.
const Q35_LOWMEM_LIMIT: u64 = 0xB000_0000;
const Q35_LOWMEM_SPLIT: u64 = 0x8000_0000;
const GIB4: u64 = 1 << 32;

/// Room left between the result region and the top of RAM: SeaBIOS keeps its own tables
/// (and qemu's ACPI tables) in the last few hundred KiB of low RAM.
const FIRMWARE_RESERVE: u64 = 4 << 20;

/// Why the qemu backend could not run a VM.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// qemu is not installed.
    #[error("{QEMU_BINARY} not found on PATH: install Debian's qemu-system-x86 package (apt-get install -y qemu-system-x86) or use --backend kvm on a host with hardware KVM")]
    NotInstalled,
    /// The kernel or initramfs file is missing.
    #[error("{what} {path} does not exist or is not readable: {source}")]
    MissingInput {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The requested memory cannot hold the result channel plus a kernel.
    #[error("{memory_mib} MiB of guest memory across {nodes} NUMA node(s) is too small: each node needs at least 128 MiB")]
    MemoryTooSmall {
        /// Requested MiB.
        memory_mib: u64,
        /// NUMA nodes.
        nodes: u32,
    },
    /// The topology's APIC ids exceed 255, which qemu's TCG (7.2) cannot present.
    #[error("topology {0} needs APIC ids above 255 (x2APIC); qemu under TCG refuses such -smp configurations (\"requires kernel irqchip and X2APIC API support\"): run it with qemu on hardware KVM (KTSTR_QEMU_ACCEL=kvm), or pick a topology with at most 8 APIC-id bits")]
    X2apicUnderTcg(String),
    /// Host-side I/O failed (temporary files, spawning, pipes).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QemuError {
    let what = what.into();
    move |source| QemuError::Io { what, source }
}

/// Accelerator for qemu.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation.
    Tcg,
    /// Hardware KVM through qemu.
    Kvm,
}

impl Accel {
    /// `KTSTR_QEMU_ACCEL=kvm` asks for `-accel kvm` (only sensible on hardware KVM); TCG
    /// otherwise. The one reading of that variable (the backend and the time scale use it).
    pub fn from_env() -> Self {
        if std::env::var("KTSTR_QEMU_ACCEL").as_deref() == Ok("kvm") {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }
}

/// Guest memory placement under qemu's q35 machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuMemory {
    /// MiB per NUMA node, in node order.
    pub node_mib: Vec<u64>,
    /// Guest-physical base of the result region.
    pub shm_gpa: u64,
    /// Offset of the result region inside the last node's backing file.
    pub shm_file_offset: u64,
}

/// Splits `memory_mib` over the topology's nodes (128 MiB multiples, the Linux memory block
/// size, so every node gets whole sections) and places the result region near the top of the
/// last node: below the firmware's tables and below the initrd, which qemu's loader puts at
/// the top of low RAM (`initrd_bytes` is its size).
pub fn plan_memory(
    topo: &Topology,
    memory_mib: u64,
    shm_size: u64,
    initrd_bytes: u64,
) -> Result<QemuMemory, QemuError> {
    let nodes = topo.numa_nodes as u64;
    let per_node = (memory_mib / nodes) / 128 * 128;
    if per_node < 128 {
        return Err(QemuError::MemoryTooSmall {
            memory_mib,
            nodes: topo.numa_nodes,
        });
    }
    let node_mib = vec![per_node; nodes as usize];
    let total = (per_node * nodes) << 20;
    let below_4g = if total >= Q35_LOWMEM_LIMIT {
        Q35_LOWMEM_SPLIT
    } else {
        total
    };
    let top = if total > below_4g {
        GIB4 + (total - below_4g)
    } else {
        total
    };
    // The initrd sits at the top of RAM below 4 GiB; when RAM continues above 4 GiB the
    // region is at the top of that part instead, clear of the initrd.
    let below_top = if total > below_4g {
        0
    } else {
        initrd_bytes.div_ceil(1 << 20) << 20
    };
    let gap = FIRMWARE_RESERVE + below_top + shm_size;
    if gap + (64 << 20) > per_node << 20 {
        return Err(QemuError::MemoryTooSmall {
            memory_mib,
            nodes: topo.numa_nodes,
        });
    }
    Ok(QemuMemory {
        node_mib,
        shm_gpa: top - gap,
        shm_file_offset: (per_node << 20) - gap,
    })
}

/// The kernel command line the qemu backend boots with (before `VmSpec::cmdline_extra`).
pub fn base_cmdline(mem: &QemuMemory, shm_size: u64, console: ConsoleMode) -> Vec<String> {
    let loglevel = if console == ConsoleMode::Stderr {
        "loglevel=7"
    } else {
        "loglevel=1"
    };
    vec![
        "console=ttyS0".into(),
        loglevel.into(),
        "8250.nr_uarts=1".into(),
        "mitigations=off".into(),
        "panic=-1".into(),
        "reboot=t".into(),
        "nokaslr".into(),
        "rootfstype=ramfs".into(),
        "rdinit=/init".into(),
        "random.trust_cpu=on".into(),
        "numa_balancing=disable".into(),
        "rcupdate.rcu_cpu_stall_timeout=60".into(),
        // Linux checks that the IO-APIC timer fires within a few jiffies and panics
        // ("IO-APIC + timer doesn't work!") when it does not; a TCG vCPU starved by a
        // loaded host misses that window (seen in CI). The routing is qemu's own and
        // known good, so skip the check, as KVM guests do.
        "no_timer_check".into(),
        // qemu's TSC is the host clock on every vCPU, so Linux's per-CPU TSC warp test (up
        // to 3 × 20 ms of two vCPUs spinning against each other for each CPU brought up)
        // checks nothing; skipping it took a 16-vCPU boot's CPU bring-up from 566 ms to
        // 317 ms under TCG. It also keeps the clocksource watchdog from declaring the TSC
        // unstable when a loaded host delays a vCPU, which would move the guest to the HPET.
        "tsc=reliable".into(),
        format!("memmap={shm_size:#x}${:#x}", mem.shm_gpa),
        crate::protocol::shm_arg(shm_size, mem.shm_gpa),
    ]
}

/// The `-cpu` model: `requested` (from `KTSTR_QEMU_CPU`) when non-empty, else an Intel model
/// under either accelerator (Linux takes the LLC from leaf 4, which qemu shares per die).
/// `host` under KVM was tried and dropped: on a host whose KVM refuses some of the host's MSRs
/// qemu aborts ("failed to set MSR 0x10a"), and in the nested lane it fixed nothing (our init
/// still died with SIGSEGV under qemu -accel kvm, with `host` as with this model).
pub fn cpu_model(requested: Option<&str>) -> String {
    match requested.map(str::trim) {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => "Skylake-Server".into(),
    }
}

/// The qemu arguments that present `topo` with memory `mem` on CPU model `cpu` (everything
/// topology-related).
pub fn topology_args(
    topo: &Topology,
    mem: &QemuMemory,
    nodes: &[PathBuf],
    cpu: &str,
) -> Vec<String> {
    let cpus = topo.num_cpus();
    let mut a = vec![
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        format!(
            "{cpus},sockets={},dies={},cores={},threads={}",
            topo.numa_nodes,
            topo.llcs_per_node(),
            topo.cores,
            topo.threads
        ),
        "-m".into(),
        format!("{}M", mem.node_mib.iter().sum::<u64>()),
    ];
    for (n, mib) in mem.node_mib.iter().enumerate() {
        // Every node is a shared file, so the host can read the result region (in the last
        // node) and the monitor can read the guest kernel's memory (anywhere).
        let backend = format!(
            "memory-backend-file,id=m{n},size={mib}M,mem-path={},share=on",
            nodes[n].display()
        );
        a.push("-object".into());
        a.push(backend);
        a.push("-numa".into());
        let per = topo.cpus_per_node();
        a.push(format!(
            "node,nodeid={n},cpus={}-{},memdev=m{n}",
            n as u32 * per,
            (n as u32 + 1) * per - 1
        ));
    }
    a
}

/// Guest RAM: one memfd per NUMA node ([`crate::memfd`]), so a killed test process leaves
/// no guest-sized file behind, as files in `/dev/shm` would.
fn node_memory(
    mem: &QemuMemory,
    create: fn(&str, u64) -> std::io::Result<File>,
) -> std::io::Result<Vec<File>> {
    mem.node_mib
        .iter()
        .enumerate()
        .map(|(n, mib)| create(&format!("ktstr-node{n}"), mib << 20))
        .collect()
}

/// [`node_memory`] in 2 MiB hugepages (performance mode); `Err` says why not, and the caller
/// falls back to ordinary pages.
fn node_hugepages(mem: &QemuMemory) -> Result<Vec<File>, String> {
    if let Some(mib) = mem.node_mib.iter().find(|m| *m % 2 != 0) {
        return Err(format!(
            "a NUMA node of {mib} MiB is not a whole number of hugepages"
        ));
    }
    node_memory(mem, crate::memfd::create_huge).map_err(|e| format!("hugepage memfd: {e}"))
}

/// Pins qemu's vCPU threads (named with `debug-threads=on`) as performance mode says; what
/// could not be done, as notes.
fn pin_qemu_vcpus(pid: u32, p: &crate::placement::Pinning) -> Vec<String> {
    let naming = crate::monitor::ThreadNaming::Qemu;
    match crate::placement::pin_vcpu_threads(pid, naming, p, Duration::from_secs(10)) {
        Ok(n) if n >= p.vcpus.len() => Vec::new(),
        Ok(n) => vec![format!(
            "only {n} of qemu's {} vCPU threads appeared in time to be pinned",
            p.vcpus.len()
        )],
        Err(e) => vec![format!("qemu's vCPU threads not pinned: {e}")],
    }
}

/// Where each node's file appears in guest-physical memory. qemu concatenates the nodes'
/// RAM and maps the first `below_4g` bytes at 0 and the rest at 4 GiB (q35's PCI hole).
pub fn ram_regions(mem: &QemuMemory, nodes: &[PathBuf]) -> Vec<FileRegion> {
    let total: u64 = mem.node_mib.iter().sum::<u64>() << 20;
    let below_4g = if total >= Q35_LOWMEM_LIMIT {
        Q35_LOWMEM_SPLIT
    } else {
        total
    };
    let mut out = Vec::new();
    let mut start = 0u64; // offset in the concatenation
    for (n, mib) in mem.node_mib.iter().enumerate() {
        let end = start + (mib << 20);
        let path = nodes[n].clone();
        if start < below_4g {
            let len = end.min(below_4g) - start;
            out.push(FileRegion::new(start, len, path.clone(), 0));
        }
        if end > below_4g {
            let from = start.max(below_4g);
            out.push(FileRegion::new(
                GIB4 + (from - below_4g),
                end - from,
                path,
                from - start,
            ));
        }
        start = end;
    }
    out
}

/// The `-accel` value. TCG runs single-threaded by default: with multi-threaded TCG, Linux's
/// live code patching (`text_poke_bp`, used for static keys such as the one sched_clock flips
/// at boot and the ones sched_ext flips on attach) intermittently hits a stale `int3` and
/// oopses ("Oops: int3" in sched_clock_cpu, 1 boot in 4 at 16 vCPUs here); single-threaded
/// TCG was as fast on this 2-core host. `KTSTR_QEMU_TCG_THREAD=multi` opts back in.
fn accel_arg(accel: Accel) -> &'static str {
    match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg if std::env::var("KTSTR_QEMU_TCG_THREAD").as_deref() == Ok("multi") => {
            "tcg,thread=multi"
        }
        Accel::Tcg => "tcg,thread=single",
    }
}

/// Where Debian's `qemu-system-data` puts qboot, a minimal firmware that does what a direct
/// kernel boot needs (ACPI tables and the kernel from fw_cfg) and nothing else.
const QBOOT_ROM: &str = "/usr/share/qemu/qboot.rom";

/// The `-bios` image: `KTSTR_QEMU_FIRMWARE` when set (`seabios` means qemu's default), else
/// qboot where installed. qboot reaches the kernel about 200 ms sooner than SeaBIOS under TCG
/// (296 vs 528 ms from launch to the kernel's clock at 16 vCPUs, median of 5), on every boot.
/// `None` leaves qemu's default firmware (SeaBIOS).
pub fn firmware(requested: Option<&str>, qboot_installed: bool) -> Option<String> {
    match requested.map(str::trim) {
        Some("seabios") => None,
        Some(path) if !path.is_empty() => Some(path.to_string()),
        _ if qboot_installed => Some(QBOOT_ROM.to_string()),
        _ => None,
    }
}

/// Whether qemu is installed.
pub fn qemu_available() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(QEMU_BINARY).is_file()))
        .unwrap_or(false)
}

/// Runs one VM under qemu with the given accelerator.
pub fn run(mut spec: VmSpec, accel: Accel) -> Result<VmOutcome, QemuError> {
    let t0 = Instant::now();
    if !qemu_available() {
        return Err(QemuError::NotInstalled);
    }
    for (what, path) in [("kernel", &spec.kernel), ("initramfs", &spec.initramfs)] {
        File::open(path).map_err(|source| QemuError::MissingInput {
            what,
            path: path.clone(),
            source,
        })?;
    }
    let initrd_bytes = std::fs::metadata(&spec.initramfs)
        .map(|m| m.len())
        .unwrap_or(0);
    let mem = plan_memory(&spec.topology, spec.memory_mib, spec.shm_size, initrd_bytes)?;
    if accel == Accel::Tcg && spec.topology.needs_x2apic() {
        return Err(QemuError::X2apicUnderTcg(spec.topology.label()));
    }
    let mut notes = Vec::new();
    let huge = match &spec.pinning {
        Some(p) if p.hugepages => node_hugepages(&mem)
            .map_err(|why| notes.push(format!("guest RAM in 4 KiB pages: {why}")))
            .ok(),
        _ => None,
    };
    let node_files = match huge {
        Some(f) => f,
        None => node_memory(&mem, crate::memfd::create)
            .map_err(io_err("creating guest memory (memfd)"))?,
    };
    let nodes: Vec<PathBuf> = node_files.iter().map(crate::memfd::path_of).collect();
    let mut cmd = qemu_command(&spec, accel, &mem, &nodes);
    if let Some(cpus) = &spec.host_cpus {
        crate::host_cpus::confine_command(&mut cmd, cpus);
    }
    let mut inherited: Vec<&Path> = vec![&spec.kernel, &spec.initramfs];
    inherited.extend(nodes.iter().map(PathBuf::as_path));
    crate::memfd::inherit_in_child(&mut cmd, &inherited);
    crate::interrupt::die_with_parent(&mut cmd);
    if spec.console != ConsoleMode::Interactive {
        // A ^C at the terminal or a signal to our process group must reach us, not qemu: qemu
        // would exit 0 on it, which reads as a guest reboot. We stop qemu ourselves (and it
        // dies with us on SIGKILL). An interactive console keeps the terminal's group, which
        // it reads from.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    }
    let session = Session::new(&mut spec);
    let mut child = cmd.spawn().map_err(io_err("starting qemu-system-x86_64"))?;
    let started = Instant::now();
    // Performance mode: qemu starts on the service CPU; each vCPU thread moves to its own CPU
    // as soon as it exists (beside the boot, which it must not hold up).
    let pinner = spec.pinning.clone().map(|p| {
        let pid = child.id();
        std::thread::spawn(move || pin_qemu_vcpus(pid, &p))
    });

    let mut pumps: Vec<JoinHandle<()>> = Vec::new();
    if let Some(out) = child.stdout.take() {
        pumps.push(pump(out, session.console().clone()));
    }
    let qemu_stderr = Console::new(ConsoleMode::Capture);
    if let Some(err) = child.stderr.take() {
        pumps.push(pump(err, qemu_stderr.clone()));
    }
    let target = MonitorTarget {
        ram: Arc::new(FileRam {
            regions: ram_regions(&mem, &nodes),
        }),
        cpus: spec.topology.num_cpus() as usize,
        threads: crate::monitor::VcpuThreads {
            pid: child.id(),
            naming: crate::monitor::ThreadNaming::Qemu,
        },
    };
    let mut machine = QemuMachine {
        child,
        exited: None,
        pumps,
        stderr: qemu_stderr,
        shm_file: None,
        shm_path: nodes[nodes.len() - 1].clone(),
        shm_offset: mem.shm_file_offset,
    };
    let finished = session.run(&mut machine, started, Some(target));
    drop(machine);
    drop(node_files);
    if let Some(h) = pinner {
        notes.extend(h.join().unwrap_or_default());
    }
    Ok(VmOutcome {
        placement_notes: notes,
        ..finished.outcome(BackendKind::Qemu, t0)
    })
}

/// The qemu command line for `spec`, with guest RAM in the files `nodes`: machine, topology,
/// exit device, firmware, direct kernel boot and the serial console's plumbing, kept apart
/// from the run so the whole invocation reads in one place.
fn qemu_command(spec: &VmSpec, accel: Accel, mem: &QemuMemory, nodes: &[PathBuf]) -> Command {
    let mut cmdline = base_cmdline(mem, spec.shm_size, spec.console);
    cmdline.extend(spec.cmdline_extra.iter().cloned());

    let mut cmd = Command::new(QEMU_BINARY);
    cmd.args(["-accel", accel_arg(accel)])
        .args([
            "-M",
            "q35",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            // Names the vCPU threads ("CPU 1/KVM", "ALL CPUs/TCG") for the monitor.
            "-name",
            "ktstr,debug-threads=on",
        ])
        .args(topology_args(
            &spec.topology,
            mem,
            nodes,
            &cpu_model(std::env::var("KTSTR_QEMU_CPU").ok().as_deref()),
        ))
        .args([
            "-device",
            &format!(
                "isa-debug-exit,iobase={:#x},iosize=0x01",
                crate::protocol::EXIT_PORT
            ),
        ]);
    if let Some(bios) = firmware(
        std::env::var("KTSTR_QEMU_FIRMWARE").ok().as_deref(),
        Path::new(QBOOT_ROM).is_file(),
    ) {
        cmd.args(["-bios", &bios]);
    }
    if spec.pinning.is_some() && accel == Accel::Kvm {
        // Performance mode on hardware KVM: each vCPU owns its host CPU, so the guest may
        // idle and spin (HLT, PAUSE, MWAIT) without exiting.
        cmd.args(["-overcommit", "cpu-pm=on"]);
    }
    if let Some(disk) = &spec.disk {
        // virtio-blk on PCI: q35 has no slot for virtio-mmio devices.
        cmd.arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=ktstr-disk0",
                disk.display()
            ))
            .args(["-device", "virtio-blk-pci,drive=ktstr-disk0"]);
    }
    cmd.arg("-kernel")
        .arg(&spec.kernel)
        .arg("-initrd")
        .arg(&spec.initramfs)
        .arg("-append")
        .arg(cmdline.join(" "));
    if spec.console == ConsoleMode::Interactive {
        // qemu puts the terminal in raw mode itself; signal=off sends ^C to the guest.
        cmd.args([
            "-chardev",
            "stdio,id=con0,signal=off",
            "-serial",
            "chardev:con0",
        ])
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit());
    } else {
        cmd.args(["-serial", "stdio"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
    }
    cmd.stderr(Stdio::piped());
    cmd
}

/// A running qemu child as the session drives it.
struct QemuMachine {
    child: Child,
    /// How the child exited, once reaped.
    exited: Option<VmEnd>,
    pumps: Vec<JoinHandle<()>>,
    /// qemu's own messages (errors name themselves in a backend error).
    stderr: Console,
    /// The last node's memory file, which holds the result region (opened once qemu made it).
    shm_file: Option<File>,
    shm_path: PathBuf,
    shm_offset: u64,
}

impl Machine for QemuMachine {
    fn read_channel(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if self.shm_file.is_none() {
            self.shm_file = Some(File::open(&self.shm_path)?);
        }
        let f = self.shm_file.as_ref().expect("opened above");
        f.read_exact_at(buf, self.shm_offset + offset)
    }

    fn ended(&mut self) -> Option<VmEnd> {
        if self.exited.is_none() {
            self.exited = match self.child.try_wait() {
                Ok(Some(status)) => Some(classify_exit(status)),
                Ok(None) => None,
                Err(e) => Some(VmEnd::BackendError {
                    detail: format!("waiting for qemu: {e}"),
                }),
            };
        }
        self.exited.clone()
    }

    fn wait(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    fn stop(&mut self, _why: &VmEnd) {
        let _ = self.child.kill();
    }

    fn halt(&mut self, end: VmEnd) -> VmEnd {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The pipes close with qemu: the pumps have everything.
        for p in self.pumps.drain(..) {
            let _ = p.join();
        }
        let stderr = self.stderr.state().tail();
        match end {
            VmEnd::BackendError { detail } if !stderr.trim().is_empty() => VmEnd::BackendError {
                detail: format!("{detail}: {}", super::tail_lines(stderr.trim(), 5)),
            },
            e => e,
        }
    }
}

/// Maps qemu's exit status to how the guest ended.
fn classify_exit(status: std::process::ExitStatus) -> VmEnd {
    use std::os::unix::process::ExitStatusExt;
    match status.code() {
        // isa-debug-exit: (value << 1) | 1.
        Some(c) if c & 1 == 1 => VmEnd::GuestExit {
            status: (c >> 1) as u8,
        },
        // -no-reboot: a guest reset makes qemu exit 0.
        Some(0) => VmEnd::Reboot,
        Some(c) => VmEnd::BackendError {
            detail: format!("qemu exited with status {c}"),
        },
        None => VmEnd::BackendError {
            detail: format!("qemu killed by signal {}", status.signal().unwrap_or(0)),
        },
    }
}

/// Copies a pipe into a console until the pipe closes.
fn pump(mut from: impl Read + Send + 'static, to: Console) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => to.push(&buf[..n]),
            }
        }
    })
}

/// Whether a frame list ends with an exit code, and which.
pub fn exit_code(frames: &[crate::shm::Frame]) -> Option<i32> {
    frames
        .iter()
        .rev()
        .find(|f| f.kind == FrameType::Exit)
        .and_then(|f| f.payload.get(..4))
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_regions_follow_q35s_hole_below_4g() {
        let dir: Vec<PathBuf> = (0..2)
            .map(|n| PathBuf::from(format!("/d/node{n}")))
            .collect();
        let topo = |n: u32| Topology::new(n, n, 1, 1).unwrap();
        // 2 × 256 MiB, all below 4 GiB: node files back consecutive ranges.
        let r = ram_regions(&plan_memory(&topo(2), 512, 8 << 20, 0).unwrap(), &dir);
        let got: Vec<_> = r.iter().map(|r| (r.gpa, r.len, r.file_offset)).collect();
        assert_eq!(got, [(0, 256 << 20, 0), (256 << 20, 256 << 20, 0)]);
        assert_eq!(r[1].path, dir[1]);
        // 2 × 2 GiB: 2 GiB below the hole (node 0), node 1 from 4 GiB.
        let r = ram_regions(&plan_memory(&topo(2), 4096, 8 << 20, 0).unwrap(), &dir);
        let got: Vec<_> = r.iter().map(|r| (r.gpa, r.len, r.file_offset)).collect();
        assert_eq!(got, [(0, 2 << 30, 0), (GIB4, 2 << 30, 0)]);
        // 1 × 3 GiB: one node split by the hole.
        let r = ram_regions(&plan_memory(&topo(1), 3072, 8 << 20, 0).unwrap(), &dir);
        let got: Vec<_> = r.iter().map(|r| (r.gpa, r.len, r.file_offset)).collect();
        assert_eq!(got, [(0, 2 << 30, 0), (GIB4, 1 << 30, 2 << 30)]);
    }

    #[test]
    fn memory_plan_small_and_split() {
        let t = Topology::parse("2,4,2,2").unwrap();
        let m = plan_memory(&t, 1024, 8 << 20, (20 << 20) - 5).unwrap();
        assert_eq!(m.node_mib, vec![512, 512]);
        // Below 4 MiB of firmware room and the 20 MiB initrd.
        assert_eq!(m.shm_gpa, (1024 << 20) - (32 << 20));
        assert_eq!(m.shm_file_offset, (512 << 20) - (32 << 20));
        // 4 GiB total: 2 GiB low, 2 GiB from 4 GiB up.
        let m = plan_memory(&t, 4096, 8 << 20, 20 << 20).unwrap();
        assert_eq!(m.shm_gpa, GIB4 + (2u64 << 30) - (12 << 20));
        // Uneven memory is rounded down to 128 MiB per node.
        let m = plan_memory(&Topology::parse("4,4,1,1").unwrap(), 1000, 1 << 20, 0).unwrap();
        assert_eq!(m.node_mib, vec![128; 4]);
        assert!(matches!(
            plan_memory(&Topology::parse("4,4,1,1").unwrap(), 400, 1 << 20, 0),
            Err(QemuError::MemoryTooSmall { .. })
        ));
    }

    #[test]
    fn topology_args_one_socket_per_node_one_die_per_llc() {
        let t = Topology::parse("2,4,2,2").unwrap();
        let m = plan_memory(&t, 1024, 8 << 20, 0).unwrap();
        let nodes: Vec<PathBuf> = (0..2)
            .map(|n| PathBuf::from(format!("/x/node{n}")))
            .collect();
        let a = topology_args(&t, &m, &nodes, "Skylake-Server");
        let s = a.join(" ");
        assert!(
            s.contains("-smp 16,sockets=2,dies=2,cores=2,threads=2"),
            "{s}"
        );
        assert!(s.contains("node,nodeid=0,cpus=0-7,memdev=m0"), "{s}");
        assert!(s.contains("node,nodeid=1,cpus=8-15,memdev=m1"), "{s}");
        assert!(
            s.contains("memory-backend-file,id=m0,size=512M,mem-path=/x/node0,share=on"),
            "{s}"
        );
        assert!(
            s.contains("memory-backend-file,id=m1,size=512M,mem-path=/x/node1,share=on"),
            "{s}"
        );
    }

    #[test]
    fn cpu_model_is_intel_unless_requested() {
        assert_eq!(cpu_model(None), "Skylake-Server");
        assert_eq!(cpu_model(Some("  ")), "Skylake-Server");
        assert_eq!(cpu_model(Some("host,-xsave")), "host,-xsave");
    }

    #[test]
    fn firmware_prefers_qboot_and_honours_the_override() {
        assert_eq!(firmware(None, true).as_deref(), Some(QBOOT_ROM));
        assert_eq!(firmware(None, false), None);
        assert_eq!(firmware(Some(""), true).as_deref(), Some(QBOOT_ROM));
        assert_eq!(firmware(Some("seabios"), true), None);
        assert_eq!(
            firmware(Some("/x/bios.bin"), false).as_deref(),
            Some("/x/bios.bin")
        );
    }

    #[test]
    fn cmdline_reserves_the_result_region() {
        let t = Topology::parse("1,1,1,1").unwrap();
        let m = plan_memory(&t, 256, 1 << 20, 0).unwrap();
        let c = base_cmdline(&m, 1 << 20, ConsoleMode::Capture).join(" ");
        assert!(c.contains("memmap=0x100000$0xfb00000"), "{c}");
        assert!(c.contains("ktstr_shm=0x100000@0xfb00000"), "{c}");
        // A loaded host must not panic the guest in the IO-APIC timer check.
        assert!(c.split(' ').any(|w| w == "no_timer_check"), "{c}");
        // Nor spend a boot's CPU bring-up on TSC warp tests of one host clock.
        assert!(c.split(' ').any(|w| w == "tsc=reliable"), "{c}");
    }

    #[test]
    fn exit_statuses() {
        use std::os::unix::process::ExitStatusExt;
        let st = |code: i32| std::process::ExitStatus::from_raw(code << 8);
        assert_eq!(classify_exit(st(7)), VmEnd::GuestExit { status: 3 });
        assert_eq!(classify_exit(st(1)), VmEnd::GuestExit { status: 0 });
        assert_eq!(classify_exit(st(0)), VmEnd::Reboot);
        assert!(matches!(classify_exit(st(2)), VmEnd::BackendError { .. }));
    }
}
