//! The probe guest: a few hundred bytes of x86-64 code, booted through the same VMM path as a
//! kernel, that reports what a guest sees (boot_params, ACPI tables, every vCPU's APIC ID and
//! topology CPUID leaves) through the SHM result channel.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use super::boot::{self, BootParamsInput};
use super::layout::{MemoryLayout, BOOT_PARAMS_GPA, CMDLINE_GPA, HIGH_MEM_START};
use super::machine::{run_machine, write_guest, MachineSpec};
use super::VmmError;
use crate::topology::Topology;
use crate::vm::session::Session;
use crate::vm::{VmEnd, VmOutcome};
mod report;

pub use report::{ProbeCpu, ProbeIrq, ProbeLeaf, ProbeReport};

/// Where probe code is loaded and entered (in 64-bit mode, like a kernel).
pub const PROBE_ENTRY: u64 = HIGH_MEM_START;

/// Boots raw 64-bit `code` at [`PROBE_ENTRY`] on a VM of `topo` (256 MiB per node, 1 MiB SHM)
/// with boot_params, ACPI tables, page tables and `data` blobs at their GPAs, and runs it to
/// its end. The building block of [`run_probe`] and of the VMM's negative tests.
pub fn run_code(
    topo: &Topology,
    code: &[u8],
    data: &[(u64, Vec<u8>)],
    timeout: Duration,
) -> Result<VmOutcome, VmmError> {
    run_code_cancellable(topo, code, data, timeout, Arc::new(AtomicBool::new(false)))
}

/// [`run_code`] with a host cancel flag (set it to stop the VM with `VmEnd::Cancelled`).
pub fn run_code_cancellable(
    topo: &Topology,
    code: &[u8],
    data: &[(u64, Vec<u8>)],
    timeout: Duration,
    cancel: Arc<AtomicBool>,
) -> Result<VmOutcome, VmmError> {
    let layout = MemoryLayout::new(256 * topo.numa_nodes as u64, topo.numa_nodes, 1 << 20)?;
    run_code_with_layout(topo, layout, code, data, timeout, cancel)
}

fn run_code_with_layout(
    topo: &Topology,
    layout: MemoryLayout,
    code: &[u8],
    data: &[(u64, Vec<u8>)],
    timeout: Duration,
    cancel: Arc<AtomicBool>,
) -> Result<VmOutcome, VmmError> {
    let cmdline = boot::kernel_cmdline(boot::KernelKind::Vmlinux, layout.shm, &[])?;
    let code = code.to_vec();
    let data = data.to_vec();
    let load = move |mem: &GuestMemoryMmap, layout: &MemoryLayout, rsdp: u64| {
        write_guest(mem, PROBE_ENTRY, &code, "writing the probe code")?;
        for (gpa, bytes) in &data {
            write_guest(mem, *gpa, bytes, "writing probe data")?;
        }
        let mut c = cmdline.into_bytes();
        c.push(0);
        write_guest(mem, CMDLINE_GPA, &c, "writing the command line")?;
        let bp = boot::boot_params(&BootParamsInput {
            setup_header: None,
            initrd: None,
            rsdp,
            e820: &layout.e820,
        });
        write_guest(mem, BOOT_PARAMS_GPA, &bp, "writing boot_params")?;
        Ok(PROBE_ENTRY)
    };
    let session = Session::bare(timeout, cancel, layout.shm.len);
    run_machine(MachineSpec {
        topology: *topo,
        layout,
        session,
        load: Box::new(load),
        disk: None,
        pinning: None,
    })
}

pub mod code;
pub mod multiboot;

/// Boots the probe guest on a VM of `topo` and returns what it saw. The probe reports its
/// boot_params, the ACPI signatures reachable from the XSDT, the MADT's APIC IDs and, after
/// starting every AP with INIT/SIPI/SIPI (through the x2APIC ICR MSR when the MADT has
/// x2APIC entries), each vCPU's LAPIC ID, IA32_APIC_BASE and topology CPUID leaves, and the
/// outcome of an IOAPIC interrupt from COM1's pin to the CPU with the largest APIC ID.
/// Any end other than the probe's deliberate exit with status 0 is an error that carries the
/// end and the frames seen.
pub fn run_probe(topo: &Topology, timeout: Duration) -> Result<ProbeReport, VmmError> {
    let asm = |e: iced_x86::IcedError| VmmError::Probe(format!("assembling the probe: {e}"));
    let program = code::bsp_program(PROBE_ENTRY).map_err(asm)?;
    let trampoline = code::trampoline().map_err(asm)?;
    let layout = MemoryLayout::new(256 * topo.numa_nodes as u64, topo.numa_nodes, 1 << 20)?;
    // The BSP stops waiting for APs before the watchdog fires (assuming a TSC <= 4 GHz).
    let wait_cycles = (timeout.as_secs_f64() * 0.6 * 4e9) as u64;
    let mut params = Vec::new();
    params.extend_from_slice(&layout.shm.base.to_le_bytes());
    params.extend_from_slice(&layout.shm.len.to_le_bytes());
    params.extend_from_slice(&wait_cycles.to_le_bytes());
    let data = vec![
        (code::CRC_TABLE, code::crc_table()),
        (code::PD, params),
        (code::TRAMPOLINE, trampoline),
    ];
    let out = run_code_with_layout(
        topo,
        layout,
        &program,
        &data,
        timeout,
        Arc::new(AtomicBool::new(false)),
    )?;
    if out.end != (VmEnd::GuestExit { status: 0 }) {
        return Err(VmmError::Probe(format!(
            "{} ({} frames, channel error: {:?}, console: {:?})",
            out.end.describe(),
            out.frames.len(),
            out.channel_error,
            out.console_lines(5)
        )));
    }
    ProbeReport::from_outcome(&out).map_err(VmmError::Probe)
}

/// Boots the same probe under `qemu -accel kvm` (q35, SeaBIOS, the multiboot image of
/// [`multiboot::image`]) through the qemu backend, which presents `topo` and reads the result
/// region from its shared memory file. Firmware and CPU model are qemu's, so only
/// [`ProbeReport::check_apic_ids`] is expected to hold; the IOAPIC test is reported, not
/// required (qemu's in-kernel IOAPIC has no extended destination ID).
pub fn run_probe_qemu(topo: &Topology, timeout: Duration) -> Result<ProbeReport, VmmError> {
    let err = |what: &str, e: &dyn std::fmt::Display| VmmError::Probe(format!("{what}: {e}"));
    let wait_cycles = (timeout.as_secs_f64() * 0.6 * 4e9) as u64;
    let image = multiboot::image(wait_cycles).map_err(|e| err("assembling the probe", &e))?;
    let dir = tempfile::tempdir().map_err(|e| err("creating a temporary directory", &e))?;
    let kernel = dir.path().join("probe.mb");
    let module = dir.path().join("module");
    std::fs::write(&kernel, &image).map_err(|e| err("writing the probe image", &e))?;
    // The qemu backend always passes an initramfs; under multiboot it is an unused module.
    std::fs::write(&module, b"ktstr probe\n").map_err(|e| err("writing the module", &e))?;
    let mut spec = crate::vm::VmSpec::new(kernel, module, *topo);
    spec.memory_mib = 256 * topo.numa_nodes as u64;
    spec.shm_size = 1 << 20;
    spec.timeout = timeout;
    let out =
        crate::vm::qemu::run(spec, crate::vm::qemu::Accel::Kvm).map_err(|e| err("qemu", &e))?;
    if out.end != (VmEnd::GuestExit { status: 0 }) {
        return Err(VmmError::Probe(format!(
            "under qemu: {} ({} frames, channel error: {:?}, console: {:?})",
            out.end.describe(),
            out.frames.len(),
            out.channel_error,
            out.console_lines(5)
        )));
    }
    ProbeReport::from_outcome(&out).map_err(VmmError::Probe)
}

/// Where [`measure_probe_on`] boots the probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeHost {
    /// ktstr's own VMM ([`run_probe`]); the full [`ProbeReport::check`] must hold.
    Vmm,
    /// `qemu -accel kvm` ([`run_probe_qemu`]); [`ProbeReport::check_apic_ids`] must hold.
    QemuKvm,
}

/// Median phase times of repeated probe boots (see [`measure_probe`]).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ProbeTimings {
    /// Boots measured.
    pub runs: usize,
    /// Median VMM setup (open KVM → vCPU threads started).
    pub setup: Duration,
    /// Median guest run (vCPU threads started → the probe's exit).
    pub run: Duration,
    /// Median teardown (exit → everything freed).
    pub teardown: Duration,
    /// Median total.
    pub total: Duration,
}

/// Boots the probe `runs` times on `topo` and returns the median of each phase. Every boot
/// must succeed and match the topology.
pub fn measure_probe(
    topo: &Topology,
    runs: usize,
    timeout: Duration,
) -> Result<ProbeTimings, VmmError> {
    measure_probe_on(ProbeHost::Vmm, topo, runs, timeout)
}

/// [`measure_probe`] on either host. Under qemu, "setup" is spawning qemu and "run" includes
/// its firmware (SeaBIOS) and multiboot loading.
pub fn measure_probe_on(
    host: ProbeHost,
    topo: &Topology,
    runs: usize,
    timeout: Duration,
) -> Result<ProbeTimings, VmmError> {
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let (r, bad) = match host {
            ProbeHost::Vmm => {
                let r = run_probe(topo, timeout)?;
                let bad = r.check(topo);
                (r, bad)
            }
            ProbeHost::QemuKvm => {
                let r = run_probe_qemu(topo, timeout)?;
                let bad = r.check_apic_ids(topo);
                (r, bad)
            }
        };
        if !bad.is_empty() {
            return Err(VmmError::Probe(bad.join("; ")));
        }
        samples.push(r.times);
    }
    let median = |f: &dyn Fn(&crate::vm::PhaseTimes) -> Duration| {
        let mut v: Vec<Duration> = samples.iter().map(f).collect();
        v.sort();
        v[v.len() / 2]
    };
    Ok(ProbeTimings {
        runs: samples.len(),
        setup: median(&|t| t.setup),
        run: median(&|t| t.total.saturating_sub(t.setup + t.teardown)),
        teardown: median(&|t| t.teardown),
        total: median(&|t| t.total),
    })
}
