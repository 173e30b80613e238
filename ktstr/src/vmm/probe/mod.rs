//! The probe guest: a few hundred bytes of x86-64 code, booted through the same VMM path as a
//! kernel, that reports what a guest sees (boot_params, ACPI tables, every vCPU's APIC ID and
//! topology CPUID leaves) through the SHM result channel.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use super::boot::{self, BootParamsInput};
use super::kvm::{run_machine, write_guest, MachineSpec};
use super::layout::{MemoryLayout, BOOT_PARAMS_GPA, CMDLINE_GPA, HIGH_MEM_START};
use super::VmmError;
use crate::topology::Topology;
use crate::vm::{ConsoleMode, VmEnd, VmOutcome};
mod report;

pub use report::{ProbeCpu, ProbeLeaf, ProbeReport};

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
    let layout = MemoryLayout::new(256 * topo.numa_nodes as u64, topo.numa_nodes, 1 << 20)?;
    run_code_with_layout(topo, layout, code, data, timeout)
}

fn run_code_with_layout(
    topo: &Topology,
    layout: MemoryLayout,
    code: &[u8],
    data: &[(u64, Vec<u8>)],
    timeout: Duration,
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
    run_machine(MachineSpec {
        topology: *topo,
        layout,
        timeout,
        console: ConsoleMode::Capture,
        frame_sink: None,
        cancel: Arc::new(AtomicBool::new(false)),
        load: Box::new(load),
    })
}

pub mod code;

/// Boots the probe guest on a VM of `topo` and returns what it saw. The probe reports its
/// boot_params, the ACPI signatures reachable from the XSDT, the MADT's APIC IDs and, after
/// starting every AP with INIT/SIPI/SIPI, each vCPU's LAPIC ID and topology CPUID leaves.
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
    let out = run_code_with_layout(topo, layout, &program, &data, timeout)?;
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
