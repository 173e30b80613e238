//! Host side of the probe: parse its frames (defensively: the guest is untrusted), compare
//! what it saw with the topology, and render a table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use kvm_bindings::kvm_cpuid_entry2;
use serde::Serialize;

use super::code::{IRQ_PIN, IRQ_RTE_LOW, LEAVES, MAX_SIGS, RECORD_DONE, RECORD_HEADER, RECORD_LEN};
use crate::shm::FrameType;
use crate::topology::{ApicLayout, Topology};
use crate::vm::kvm::boot::{
    BP_ACPI_RSDP_ADDR, BP_CMD_LINE_PTR, BP_E820_ENTRIES, BP_E820_TABLE, E820_MAX,
};
use crate::vm::kvm::cpuid::{decode_linux_view, CpuVendor};
use crate::vm::kvm::layout::{HOLE_END, HOLE_START};
use crate::vm::{PhaseTimes, VmOutcome};

/// One CPUID result as a vCPU saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProbeLeaf {
    /// EAX input.
    pub leaf: u32,
    /// ECX input.
    pub subleaf: u32,
    /// Outputs.
    pub eax: u32,
    /// Outputs.
    pub ebx: u32,
    /// Outputs.
    pub ecx: u32,
    /// Outputs.
    pub edx: u32,
}

/// What one vCPU reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeCpu {
    /// The LAPIC ID register (xAPIC: 0xFEE00020 bits 31:24; x2APIC: MSR 0x802).
    pub apic_id: u32,
    /// IA32_APIC_BASE bits 31:0 as the vCPU found it (BSP: at entry; APs: after INIT/SIPI).
    pub apic_base: u32,
    /// The CPUID leaves of [`LEAVES`], in that order.
    pub leaves: Vec<ProbeLeaf>,
}

impl ProbeCpu {
    /// The leaves as KVM CPUID entries (indexed), for the Linux-view decoder.
    pub fn cpuid_entries(&self) -> Vec<kvm_cpuid_entry2> {
        self.leaves
            .iter()
            .map(|l| kvm_cpuid_entry2 {
                function: l.leaf,
                index: l.subleaf,
                flags: 1, // KVM_CPUID_FLAG_SIGNIFICANT_INDEX
                eax: l.eax,
                ebx: l.ebx,
                ecx: l.ecx,
                edx: l.edx,
                ..Default::default()
            })
            .collect()
    }

    fn leaf(&self, leaf: u32, subleaf: u32) -> Option<&ProbeLeaf> {
        self.leaves
            .iter()
            .find(|l| l.leaf == leaf && l.subleaf == subleaf)
    }
}

/// The probe's IOAPIC interrupt test: COM1's pin, level-triggered, to the last MADT CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProbeIrq {
    /// The destination APIC ID the BSP programmed into RTE 4.
    pub dest: u32,
    /// The APIC ID of the vCPU whose handler ran, if one did.
    pub handled_by: Option<u32>,
    /// RTE 4's low half read back after the handler's EOI.
    pub rte_low: u32,
}

/// Everything the probe guest saw.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// One entry per vCPU that reported, in the order they reported (BSP first).
    pub cpus: Vec<ProbeCpu>,
    /// ACPI signatures found walking RSDP → XSDT (the XSDT itself first, the FADT's DSDT
    /// after the FADT).
    pub acpi_signatures: Vec<String>,
    /// APIC IDs of enabled MADT processor entries, in MADT order.
    pub madt_apic_ids: Vec<u32>,
    /// The IOAPIC interrupt test (`None` with one CPU: the BSP never takes interrupts).
    pub irq: Option<ProbeIrq>,
    /// The e820 map from boot_params: (addr, size, type).
    pub e820: Vec<(u64, u64, u32)>,
    /// boot_params.cmd_line_ptr.
    pub cmdline_ptr: u32,
    /// boot_params.acpi_rsdp_addr.
    pub rsdp: u64,
    /// Phase times of the probe VM (boot_to_init = first frame).
    pub times: PhaseTimes,
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A u32 count followed by up to `max` u32 values.
fn counted(b: &[u8], max: u32) -> Result<Vec<u32>, String> {
    let n = le32(b, 0).ok_or("short list frame")?;
    if n > max {
        return Err(format!("list claims {n} entries (max {max})"));
    }
    (0..n as usize)
        .map(|i| le32(b, 4 + 4 * i).ok_or_else(|| "truncated list frame".to_string()))
        .collect()
}

impl ProbeReport {
    /// Parses the probe's frames: Hello (boot_params), Log (signatures), Log (MADT IDs),
    /// Telemetry per vCPU, Exit.
    pub fn from_outcome(out: &VmOutcome) -> Result<Self, String> {
        if let Some(e) = &out.channel_error {
            return Err(format!("result channel: {e}"));
        }
        let kinds: Vec<FrameType> = out.frames.iter().map(|f| f.kind).collect();
        let bp = match out.frames.first() {
            Some(f) if f.kind == FrameType::Hello && f.payload.len() == 4096 => &f.payload,
            _ => {
                return Err(format!(
                    "expected a 4096-byte Hello frame first, got {kinds:?}"
                ))
            }
        };
        let n = (bp[BP_E820_ENTRIES] as usize).min(E820_MAX);
        let e820 = (0..n)
            .map(|i| {
                let at = BP_E820_TABLE + 20 * i;
                (
                    le64(bp, at).unwrap_or(0),
                    le64(bp, at + 8).unwrap_or(0),
                    le32(bp, at + 16).unwrap_or(0),
                )
            })
            .collect();
        let logs: Vec<&[u8]> = out
            .frames
            .iter()
            .filter(|f| f.kind == FrameType::Log)
            .map(|f| f.payload.as_slice())
            .collect();
        if logs.len() != 3 || logs[2].len() != 12 {
            return Err(format!("expected 3 Log frames, got {kinds:?}"));
        }
        let word = |i: usize| le32(logs[2], 4 * i).unwrap_or(0);
        let irq = (word(2) != 0 || word(0) != 0).then(|| ProbeIrq {
            dest: word(2),
            handled_by: word(0).checked_sub(1),
            rte_low: word(1),
        });
        let acpi_signatures = counted(logs[0], MAX_SIGS)?
            .into_iter()
            .map(|s| String::from_utf8_lossy(&s.to_le_bytes()).into_owned())
            .collect();
        let madt_apic_ids = counted(logs[1], 256)?;
        let mut cpus = Vec::new();
        for f in out.frames.iter().filter(|f| f.kind == FrameType::Telemetry) {
            let p = &f.payload;
            if p.len() != RECORD_LEN as usize || le32(p, 4) != Some(RECORD_DONE) {
                return Err(format!("malformed vCPU record of {} bytes", p.len()));
            }
            let leaves = LEAVES
                .iter()
                .enumerate()
                .map(|(k, (leaf, subleaf))| {
                    let at = RECORD_HEADER as usize + 16 * k;
                    ProbeLeaf {
                        leaf: *leaf,
                        subleaf: *subleaf,
                        eax: le32(p, at).unwrap_or(0),
                        ebx: le32(p, at + 4).unwrap_or(0),
                        ecx: le32(p, at + 8).unwrap_or(0),
                        edx: le32(p, at + 12).unwrap_or(0),
                    }
                })
                .collect();
            cpus.push(ProbeCpu {
                apic_id: le32(p, 0).unwrap_or(u32::MAX),
                apic_base: le32(p, 8).unwrap_or(0),
                leaves,
            });
        }
        if out.frames.last().map(|f| f.kind) != Some(FrameType::Exit) {
            return Err(format!(
                "the probe's frames do not end with Exit: {kinds:?}"
            ));
        }
        Ok(ProbeReport {
            cpus,
            acpi_signatures,
            madt_apic_ids,
            irq,
            e820,
            cmdline_ptr: le32(bp, BP_CMD_LINE_PTR).unwrap_or(0),
            rsdp: le64(bp, BP_ACPI_RSDP_ADDR).unwrap_or(0),
            times: out.times,
        })
    }

    /// The checks that hold under any hypervisor and firmware (the probe under qemu): the
    /// MADT lists exactly the topology's APIC IDs in canonical order, and every one of those
    /// vCPUs started and reported its own LAPIC ID once. One line per mismatch.
    pub fn check_apic_ids(&self, topo: &Topology) -> Vec<String> {
        let mut bad = Vec::new();
        let want: Vec<u32> = (0..topo.num_cpus()).map(|c| topo.apic_id(c)).collect();
        if self.madt_apic_ids != want {
            bad.push(format!(
                "MADT APIC IDs {:?}, expected {want:?} in canonical order",
                self.madt_apic_ids
            ));
        }
        let seen: BTreeSet<u32> = self.cpus.iter().map(|c| c.apic_id).collect();
        if seen.len() != self.cpus.len() {
            bad.push("two vCPUs report the same LAPIC ID".into());
        }
        if seen != want.iter().copied().collect() {
            bad.push(format!(
                "vCPUs that reported have LAPIC IDs {seen:?}, expected {want:?}"
            ));
        }
        bad
    }

    /// Compares what the guest saw with `topo`: one line per mismatch, empty when it all
    /// matches. CPUID is decoded the way Linux 6.12 does (`cpuid::decode_linux_view`).
    pub fn check(&self, topo: &Topology) -> Vec<String> {
        // MADT order and the set of reported LAPIC IDs.
        let mut bad = self.check_apic_ids(topo);
        let want: Vec<u32> = (0..topo.num_cpus()).map(|c| topo.apic_id(c)).collect();
        self.check_boot_tables(&mut bad);
        self.check_irq(&want, &mut bad);
        let l = topo.apic_layout();
        let mut groups: [BTreeMap<(u32, u32), u32>; 3] = Default::default();
        for c in &self.cpus {
            let Some(idx) = want.iter().position(|a| *a == c.apic_id) else {
                continue;
            };
            check_cpu(c, idx, topo, &l, &mut groups, &mut bad);
        }
        check_groups(topo, &groups, &mut bad);
        bad
    }

    /// The ACPI tables, e820 map and command line the VMM hands the guest at boot.
    fn check_boot_tables(&self, bad: &mut Vec<String>) {
        for sig in ["XSDT", "FACP", "DSDT", "APIC", "SRAT"] {
            if !self.acpi_signatures.iter().any(|s| s == sig) {
                bad.push(format!(
                    "ACPI table {sig} not found ({:?})",
                    self.acpi_signatures
                ));
            }
        }
        if self.e820.len() < 2 {
            bad.push(format!(
                "e820 has {} entries (< 2 is ignored)",
                self.e820.len()
            ));
        }
        for (a, s, _) in &self.e820 {
            if *a < HOLE_END && a + s > HOLE_START {
                bad.push(format!("e820 entry {a:#x}+{s:#x} overlaps [3G, 4G)"));
            }
        }
        if self.cmdline_ptr != crate::vm::kvm::layout::CMDLINE_GPA as u32 {
            bad.push(format!("cmd_line_ptr {:#x}", self.cmdline_ptr));
        }
    }

    /// The IOAPIC interrupt test: it must run with more than one CPU, reach the last MADT
    /// CPU, and leave the RTE's remote IRR clear after the EOI.
    fn check_irq(&self, want: &[u32], bad: &mut Vec<String>) {
        match (&self.irq, want.len()) {
            (None, 1) => {}
            (None, _) => bad.push("the IOAPIC interrupt test did not run".into()),
            (Some(irq), _) => {
                let last = want.last().copied().unwrap_or(0);
                if irq.dest != last {
                    bad.push(format!(
                        "IOAPIC test aimed at APIC {}, expected {last}",
                        irq.dest
                    ));
                }
                if irq.handled_by != Some(irq.dest) {
                    bad.push(format!(
                        "IOAPIC pin {IRQ_PIN} to APIC {} was handled by {:?}",
                        irq.dest, irq.handled_by
                    ));
                }
                if irq.rte_low & 0x1_FFFF != IRQ_RTE_LOW {
                    bad.push(format!(
                        "RTE {IRQ_PIN} reads {:#x} after the EOI, expected {IRQ_RTE_LOW:#x} (remote IRR clear)",
                        irq.rte_low
                    ));
                }
            }
        }
    }

    /// A human-readable table: one row per vCPU (in APIC ID order) with the ids Linux would
    /// derive, then the ACPI tables and e820 map.
    pub fn render_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:>5} {:>5} {:>7} {:>4} {:>5} {:>5} {:>4} {:>10} {:>10} {:>10}",
            "LAPIC",
            "leaf1",
            "0xB.x2",
            "pkg",
            "core",
            "llc",
            "smt",
            "0xB.1 ebx",
            "1D.3 eax",
            "1E eax"
        );
        let mut cpus: Vec<&ProbeCpu> = self.cpus.iter().collect();
        cpus.sort_by_key(|c| c.apic_id);
        for c in cpus {
            let ids = decode_linux_view(&c.cpuid_entries())
                .map(|d| (d.pkg_id, d.core_id, d.llc_id, d.threads_per_core))
                .unwrap_or((u32::MAX, u32::MAX, u32::MAX, 0));
            let r = |leaf, sub, f: fn(&ProbeLeaf) -> u32| c.leaf(leaf, sub).map_or(0, f);
            let _ = writeln!(
                s,
                "{:>5} {:>5} {:>7} {:>4} {:>5} {:>5} {:>4} {:>#10x} {:>#10x} {:>#10x}",
                c.apic_id,
                r(1, 0, |l| l.ebx >> 24),
                r(0xB, 0, |l| l.edx),
                ids.0,
                ids.1,
                ids.2,
                ids.3,
                r(0xB, 1, |l| l.ebx),
                r(0x8000_001D, 3, |l| l.eax),
                r(0x8000_001E, 0, |l| l.eax),
            );
        }
        let _ = writeln!(s, "ACPI: {}", self.acpi_signatures.join(" "));
        let _ = writeln!(s, "MADT APIC IDs: {:?}", self.madt_apic_ids);
        if let Some(irq) = &self.irq {
            let _ = writeln!(
                s,
                "IOAPIC pin {IRQ_PIN} -> APIC {}: handled by {}, RTE after EOI {:#x}",
                irq.dest,
                irq.handled_by
                    .map_or("nobody".to_string(), |a| format!("APIC {a}")),
                irq.rte_low
            );
        }
        for (a, len, t) in &self.e820 {
            let _ = writeln!(s, "e820: {a:#014x}-{:#014x} type {t}", a + len);
        }
        s
    }
}

/// One vCPU's CPUID and APIC base against its place in `topo` (vCPU `idx`); counts it into
/// `groups` (SMT siblings, LLC, package) so the group sizes can be checked after all CPUs.
fn check_cpu(
    c: &ProbeCpu,
    idx: usize,
    topo: &Topology,
    l: &ApicLayout,
    groups: &mut [BTreeMap<(u32, u32), u32>; 3],
    bad: &mut Vec<String>,
) {
    let p = topo.place(idx as u32);
    let d = match decode_linux_view(&c.cpuid_entries()) {
        Ok(d) => d,
        Err(e) => {
            bad.push(format!("cpu{idx}: CPUID does not decode: {e}"));
            return;
        }
    };
    let leaf1 = c.leaf(1, 0).map(|x| x.ebx >> 24);
    let mut expect = |what: &str, got: u32, exp: u32| {
        if got != exp {
            bad.push(format!(
                "cpu{idx} (APIC {}): {what} {got}, expected {exp}",
                c.apic_id
            ));
        }
    };
    expect(
        "leaf 0x1 initial APIC ID",
        leaf1.unwrap_or(u32::MAX),
        c.apic_id & 0xFF,
    );
    expect("decoded APIC ID", d.apic_id, c.apic_id);
    expect("package id", d.pkg_id, p.node);
    expect(
        "core id",
        d.core_id,
        (p.llc_in_node << l.core_bits) | p.core,
    );
    // Linux forms cpu_llc_id per vendor (arch/x86/kernel/cpu/cacheinfo.c): Intel masks
    // the APIC id, AMD (family >= 0x17) shifts it. Either way the shift must be ours.
    let llc_mask = !((1u32 << l.llc_shift()) - 1);
    let llc_exp = match d.vendor {
        CpuVendor::Intel | CpuVendor::Other => c.apic_id & llc_mask,
        CpuVendor::Amd => c.apic_id >> l.llc_shift(),
    };
    expect("LLC id", d.llc_id, llc_exp);
    expect("LLC shift", d.llc_shift, l.llc_shift());
    // Enabled at 0xFEE00000, BSP flag on APIC 0 only, x2APIC mode iff the shape
    // needs it (the VMM starts x2APIC shapes in x2APIC mode, as firmware would).
    let base = 0xFEE0_0800
        | if c.apic_id == 0 { 0x100 } else { 0 }
        | if topo.needs_x2apic() { 0x400 } else { 0 };
    expect("IA32_APIC_BASE", c.apic_base, base);
    if topo.needs_x2apic() {
        // Linux needs the x2APIC bit, and the extended destination ID to address
        // CPUs above 255 without interrupt remapping.
        let bit = |leaf, sub, f: fn(&ProbeLeaf) -> u32, b: u32| {
            c.leaf(leaf, sub).map_or(0, |x| (f(x) >> b) & 1)
        };
        expect("leaf 0x1 ECX.x2APIC", bit(1, 0, |x| x.ecx, 21), 1);
        expect(
            "leaf 0x40000001 EAX.MSI_EXT_DEST_ID",
            bit(0x4000_0001, 0, |x| x.eax, 15),
            1,
        );
    }
    expect("SMT shift", d.smt_shift, l.smt_shift());
    expect("threads per core", d.threads_per_core, topo.threads);
    *groups[0].entry((d.pkg_id, d.core_id)).or_default() += 1;
    *groups[1].entry((d.llc_id, 0)).or_default() += 1;
    *groups[2].entry((d.pkg_id, 0)).or_default() += 1;
}

/// Every SMT sibling group, LLC and package the guest derived holds as many CPUs as `topo`
/// gives it.
fn check_groups(topo: &Topology, groups: &[BTreeMap<(u32, u32), u32>; 3], bad: &mut Vec<String>) {
    for (i, (what, size)) in [
        ("SMT sibling group", topo.threads),
        ("LLC group", topo.cpus_per_llc()),
        ("package", topo.cpus_per_node()),
    ]
    .into_iter()
    .enumerate()
    {
        for (k, n) in &groups[i] {
            if *n != size {
                bad.push(format!("{what} {k:?} has {n} CPUs, expected {size}"));
            }
        }
    }
}
