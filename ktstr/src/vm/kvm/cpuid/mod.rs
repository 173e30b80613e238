//! Per-vCPU CPUID: patches `KVM_GET_SUPPORTED_CPUID`'s table so Linux 6.12 derives exactly the
//! declared topology (spec `vmm.md` §2), and decodes a table the way Linux does to check it.
//!
//! The guest sees the host's vendor. On AMD (and Hygon) the package comes from the inserted
//! leaf 0xB and the LLC from 0x8000001D; on Intel the package comes from 0xB and the LLC from
//! leaf 4. Either way the sysfs ids come out as in §2.1.

mod decode;
mod fixtures;

#[cfg(test)]
mod tests;

pub use decode::{decode_linux_view, DecodedCpu};
pub use fixtures::synthetic_supported;
#[cfg(test)]
pub(crate) use fixtures::TEST_SHAPES;

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::topology::Topology;

/// Largest CPUID table handed to `KVM_SET_CPUID2`. Kernels before 5.x capped it at 80
/// (`KVM_MAX_CPUID_ENTRIES`); staying under that keeps every host working.
pub const MAX_CPUID_ENTRIES: usize = 80;

/// The CPU vendor the guest sees (taken from the supported table's leaf 0).
///
/// Hygon ("HygonGenuine") counts as [`CpuVendor::Other`] here, but is patched and decoded along
/// Linux's AMD path (Linux treats it as AMD for topology, with its own LLC rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuVendor {
    /// "AuthenticAMD".
    Amd,
    /// "GenuineIntel".
    Intel,
    /// Anything else (Hygon, Centaur, Zhaoxin, ...).
    Other,
}

impl CpuVendor {
    /// The vendor named by leaf 0 of `entries` (`Other` when leaf 0 is missing).
    pub fn of(entries: &[kvm_cpuid_entry2]) -> CpuVendor {
        match Flavor::of(entries) {
            Flavor::Amd => CpuVendor::Amd,
            Flavor::Intel => CpuVendor::Intel,
            Flavor::Hygon | Flavor::Other => CpuVendor::Other,
        }
    }
}

/// Vendor as Linux's topology code distinguishes it (finer than [`CpuVendor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Amd,
    Hygon,
    Intel,
    Other,
}

impl Flavor {
    pub(crate) fn of(entries: &[kvm_cpuid_entry2]) -> Flavor {
        let l0 = lookup(entries, 0, 0);
        let mut id = [0u8; 12];
        id[0..4].copy_from_slice(&l0.ebx.to_le_bytes());
        id[4..8].copy_from_slice(&l0.edx.to_le_bytes());
        id[8..12].copy_from_slice(&l0.ecx.to_le_bytes());
        match &id {
            b"AuthenticAMD" => Flavor::Amd,
            b"HygonGenuine" => Flavor::Hygon,
            b"GenuineIntel" => Flavor::Intel,
            _ => Flavor::Other,
        }
    }
    /// Linux parses topology and LLC through `topology_amd.c` for these.
    pub(crate) fn amd_like(self) -> bool {
        matches!(self, Flavor::Amd | Flavor::Hygon)
    }
}

/// Why a per-vCPU CPUID table could not be built or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuidError {
    /// `cpu` is not a CPU of the topology.
    #[error("CPU {cpu} out of range: the topology has {cpus} CPUs")]
    CpuOutOfRange {
        /// The CPU asked for.
        cpu: u32,
        /// CPUs in the topology.
        cpus: u32,
    },
    /// A leaf the topology depends on is missing from the supported table.
    #[error("the host's supported CPUID table has no leaf {leaf:#x}, which the guest needs to see the topology")]
    MissingLeaf {
        /// The missing leaf.
        leaf: u32,
    },
    /// The host exposes no level-3 cache, so Linux would make the LLC the package (AMD) or the
    /// core (Intel) instead of the declared LLC.
    #[error(
        "the host's CPUID leaf {leaf:#x} describes no L3 cache, so the guest cannot be shown LLCs"
    )]
    NoL3Cache {
        /// The cache leaf that was searched.
        leaf: u32,
    },
    /// The shape needs x2APIC but the host's CPUID does not offer it.
    #[error("topology {topo} needs APIC IDs up to {max_apic_id} (> 0xFE, x2APIC), but the host's CPUID lacks the x2APIC bit")]
    X2apicUnsupported {
        /// Topology label.
        topo: String,
        /// Its largest APIC ID.
        max_apic_id: u32,
    },
    /// Zen1 (family 0x17, model <= 0x1F) and Hygon kernels hard-code `LLC id = APIC id >> 3`,
    /// ignoring 0x8000001D, so only shapes whose LLCs are exactly those 8-ID blocks come out right.
    #[error("{cpu} ({family:#x}/{model:#x}): Linux fixes the LLC as APIC ID >> 3 (8 IDs) on this CPU, but topology {topo} packs {llc_ids} APIC IDs per LLC; use a shape with 8 IDs per LLC (cores x threads rounded to powers of two = 8) or one LLC with at most 8 CPUs")]
    HardcodedLlc {
        /// "Zen1" or "Hygon".
        cpu: &'static str,
        /// CPU family.
        family: u32,
        /// CPU model.
        model: u32,
        /// Topology label.
        topo: String,
        /// APIC IDs per LLC in the topology's layout (`1 << llc_shift`).
        llc_ids: u32,
    },
    /// A field of a leaf cannot hold the topology's value.
    #[error("CPUID field {field} cannot hold {value}")]
    FieldOverflow {
        /// Which field.
        field: &'static str,
        /// The value that does not fit.
        value: u32,
    },
    /// The patched table would exceed [`MAX_CPUID_ENTRIES`].
    #[error("the per-vCPU CPUID table has {count} entries, more than KVM's limit of {max}")]
    TooManyEntries {
        /// Entries in the patched table.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// Decoding: two CPUID sources disagree on the initial APIC ID (Linux logs a FW_BUG).
    #[error("CPUID {which} says APIC ID {found:#x}, but the initial APIC ID is {initial:#x}")]
    ApicIdMismatch {
        /// The leaf/subleaf that disagrees.
        which: String,
        /// The APIC ID established so far.
        initial: u32,
        /// The APIC ID this source reports.
        found: u32,
    },
}

// Bits this module reads or writes.
const L1_EBX_APIC_SHIFT: u32 = 24;
const L1_ECX_X2APIC: u32 = 1 << 21;
/// Leaf 1 ECX bit 24: the LAPIC timer has TSC-deadline mode. KVM emulates it in its in-kernel
/// LAPIC (both [`super::machine::IrqChip`] modes have one) but never reports it in
/// KVM_GET_SUPPORTED_CPUID: the VMM must set it, as qemu does.
pub const L1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 ECX bit 31: running under a hypervisor. KVM_GET_SUPPORTED_CPUID leaves it clear;
/// without it Linux never reads leaf 0x4000_0000, so it finds neither kvmclock nor any other KVM
/// feature, cannot learn the TSC frequency (no PIT/HPET reference either) and runs on jiffies.
pub const L1_ECX_HYPERVISOR: u32 = 1 << 31;
const L1_EDX_HTT: u32 = 1 << 28;
/// Leaf 1 ECX bit 26: XSAVE/XRSTOR/XSETBV and XCR0.
pub const L1_ECX_XSAVE: u32 = 1 << 26;
const E1_ECX_CMP_LEGACY: u32 = 1 << 1;
const E1_ECX_TOPOEXT: u32 = 1 << 22;
/// 0x40000001 EDX bit 0: the vCPUs never get preempted. Wrong whenever vCPUs are overcommitted,
/// which a pure function cannot rule out, so it is always cleared.
const KVM_HINTS_REALTIME: u32 = 1 << 0;
/// 0x40000001 EAX bit 15 (KVM_FEATURE_MSI_EXT_DEST_ID): IOAPIC RTEs and MSIs may carry
/// destination bits 14:8 in address bits 11:5, so Linux runs x2APIC without interrupt
/// remapping for APIC IDs above 255. The VMM's userspace IOAPIC implements it; KVM never
/// reports it, since its in-kernel IOAPIC does not.
pub const KVM_FEATURE_MSI_EXT_DEST_ID: u32 = 1 << 15;
/// Leaf 0xB/0x1F ECX\[15:8\] level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Hides XSAVE from the guest: clears [`L1_ECX_XSAVE`] and zeroes leaf 0xD, so Linux manages FPU
/// state with FXSAVE and never writes XCR0 (its CPUID dependency table then drops AVX and every
/// other XSAVE-managed feature itself).
///
/// For nested hosts whose SVM is emulated without an XSETBV intercept (qemu TCG's): there, the
/// L1 KVM never learns the XCR0 its guest set, so the two disagree on which state XSAVE covers
/// (every such guest logs "XSAVE consistency problem") and the guest's FPU state is not
/// reliably saved. With XSAVE hidden the guest never sets XCR0 and the L1 KVM never swaps it.
pub fn hide_xsave(entries: &mut [kvm_cpuid_entry2]) {
    for e in entries.iter_mut() {
        match e.function {
            1 => e.ecx &= !L1_ECX_XSAVE,
            0xD => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            _ => {}
        }
    }
}

/// `cpuid(function, index)` as KVM answers it from `entries`: an entry flagged
/// SIGNIFICANT_INDEX matches only its own index, others match any index; no match reads as
/// zeros (KVM's answer for a missing in-range leaf).
pub(crate) fn lookup(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
    entries
        .iter()
        .find(|e| {
            e.function == function
                && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index)
        })
        .copied()
        .unwrap_or_default()
}

/// (family, model) from leaf 1 EAX, as Linux's `x86_family()`/`x86_model()` compute them.
pub(crate) fn family_model(eax: u32) -> (u32, u32) {
    let mut family = (eax >> 8) & 0xf;
    if family == 0xf {
        family += (eax >> 20) & 0xff;
    }
    let mut model = (eax >> 4) & 0xf;
    if family >= 6 {
        model += ((eax >> 16) & 0xf) << 4;
    }
    (family, model)
}

/// `(1 << bits) - 1` written into a cache leaf's EAX\[25:14\] ("logical processors sharing - 1").
fn set_cache_sharing(eax: u32, bits: u32) -> u32 {
    let sharing = (1u32 << bits) - 1;
    (eax & !(0xfff << 14)) | ((sharing & 0xfff) << 14)
}

fn cache_type(eax: u32) -> u32 {
    eax & 0x1f
}

fn cache_level(eax: u32) -> u32 {
    (eax >> 5) & 0x7
}

/// Per-vCPU CPUID: patch `KVM_GET_SUPPORTED_CPUID`'s entries for canonical CPU `cpu` of
/// `topo`, following spec §2.3:
///
/// - 0x1: EBX\[31:24\] = APIC ID (low byte), EBX\[23:16\] = min(255, 1 << pkg_shift), EDX.HTT iff a
///   package has > 1 CPU; ECX gets [`L1_ECX_HYPERVISOR`] and [`L1_ECX_TSC_DEADLINE`], which KVM
///   supports but does not report. Everything else (x2APIC included) is kept.
/// - 0x4 (Intel and other non-AMD vendors): L1/L2 shared by the core's threads, L3 by the LLC;
///   EAX\[31:26\] = (1 << (pkg_shift - smt_shift)) - 1, capped at 63.
/// - 0xB: replaced by subleaves 0 (SMT), 1 (core = package level) and 2 (invalid), all with
///   SIGNIFICANT_INDEX and EDX = APIC ID. Max basic leaf is raised to 0xB if lower.
/// - 0x1F and 0x80000026: zeroed if present, so Linux falls through to 0xB.
/// - 0x8000_0001 (AMD/Hygon): TOPOEXT and CmpLegacy set (6.12 reads 0xB on AMD only with
///   TOPOEXT).
/// - 0x8000_0008: ECX\[15:12\] = pkg_shift, ECX\[7:0\] = CPUs per package - 1.
/// - 0x8000_001D (AMD/Hygon): sharing as for leaf 4 (the host value gives wrong LLCs), sizes kept.
/// - 0x8000_001E (AMD/Hygon): EAX = APIC ID, EBX = core id (low 8 bits; Linux does not use it on
///   family >= 0x17) | (threads - 1) << 8, ECX = node (one node per package); inserted if absent.
/// - 0xA: zeroed (no PMU). 0x4000_0000/1: kept, except KVM_HINTS_REALTIME is cleared; for
///   x2APIC shapes 0x4000_0001 EAX gets [`KVM_FEATURE_MSI_EXT_DEST_ID`] (the split-irqchip
///   VM's userspace IOAPIC decodes it).
///
/// Errors: the CPU is out of range; the host lacks a leaf or an L3 the topology needs; the shape
/// needs x2APIC and the host lacks it (or lacks leaf 0x4000_0001); on Zen1/Hygon the hard-coded `apic >> 3` LLC rule would
/// give different LLCs than the topology (see [`CpuidError::HardcodedLlc`]); the result exceeds
/// [`MAX_CPUID_ENTRIES`].
pub fn vcpu_cpuid(
    supported: &[kvm_cpuid_entry2],
    topo: &Topology,
    cpu: u32,
) -> Result<Vec<kvm_cpuid_entry2>, CpuidError> {
    if cpu >= topo.num_cpus() {
        return Err(CpuidError::CpuOutOfRange {
            cpu,
            cpus: topo.num_cpus(),
        });
    }
    let flavor = Flavor::of(supported);
    let layout = topo.apic_layout();
    let (smt_shift, pkg_shift) = (layout.smt_shift(), layout.pkg_shift());
    let apic = topo.apic_id(cpu);
    let place = topo.place(cpu);
    let max_ext = lookup(supported, 0x8000_0000, 0).eax;
    check_supported(supported, topo, flavor)?;

    let mut out: Vec<kvm_cpuid_entry2> = supported
        .iter()
        .filter(|e| e.function != 0xB)
        .copied()
        .collect();
    let core_id = (apic & ((1 << pkg_shift) - 1)) >> smt_shift;
    patch_leaves(&mut out, flavor, topo, apic, core_id, place.node);
    insert_leaf_b(&mut out, topo, apic);

    if flavor.amd_like() {
        amd_checks(&mut out, max_ext, apic, core_id, topo, place.node)?;
    } else if flavor == Flavor::Intel && !has_l3(&out, 4) {
        return Err(CpuidError::NoL3Cache { leaf: 4 });
    }

    if out.len() > MAX_CPUID_ENTRIES {
        return Err(CpuidError::TooManyEntries {
            count: out.len(),
            max: MAX_CPUID_ENTRIES,
        });
    }
    Ok(out)
}

/// Rejects shapes the host's table cannot show before anything is patched: fields too narrow,
/// Zen1/Hygon's fixed LLC rule, and x2APIC shapes without x2APIC or leaf 0x4000_0001.
fn check_supported(
    supported: &[kvm_cpuid_entry2],
    topo: &Topology,
    flavor: Flavor,
) -> Result<(), CpuidError> {
    let pkg_shift = topo.apic_layout().pkg_shift();
    let leaf1 = lookup(supported, 1, 0);
    let (family, model) = family_model(leaf1.eax);
    if pkg_shift > 15 {
        return Err(CpuidError::FieldOverflow {
            field: "0x80000008 ECX[15:12] (package shift)",
            value: pkg_shift,
        });
    }
    check_hardcoded_llc(flavor, family, model, topo)?;
    if topo.needs_x2apic() && leaf1.ecx & L1_ECX_X2APIC == 0 {
        return Err(CpuidError::X2apicUnsupported {
            topo: topo.label(),
            max_apic_id: topo.max_apic_id(),
        });
    }
    if !supported.iter().any(|e| e.function == 1) {
        return Err(CpuidError::MissingLeaf { leaf: 1 });
    }
    if topo.needs_x2apic() && !supported.iter().any(|e| e.function == 0x4000_0001) {
        // Without KVM_FEATURE_MSI_EXT_DEST_ID Linux keeps APIC IDs above 255 offline.
        return Err(CpuidError::MissingLeaf { leaf: 0x4000_0001 });
    }
    Ok(())
}

/// Rewrites the host's leaves in place for the vCPU with APIC ID `apic` (see [`vcpu_cpuid`]'s
/// list), so each one tells Linux this vCPU's place rather than the host CPU's.
fn patch_leaves(
    out: &mut [kvm_cpuid_entry2],
    flavor: Flavor,
    topo: &Topology,
    apic: u32,
    core_id: u32,
    node: u32,
) {
    let layout = topo.apic_layout();
    let (smt_shift, llc_shift, pkg_shift) =
        (layout.smt_shift(), layout.llc_shift(), layout.pkg_shift());
    let per_pkg = topo.cpus_per_node();
    for e in out.iter_mut() {
        match e.function {
            0 if e.eax < 0xB => e.eax = 0xB,
            1 => {
                let nproc = (1u32 << pkg_shift).min(255);
                e.ebx = (e.ebx & 0xffff) | (nproc << 16) | ((apic & 0xff) << L1_EBX_APIC_SHIFT);
                e.ecx |= L1_ECX_HYPERVISOR | L1_ECX_TSC_DEADLINE;
                if per_pkg > 1 {
                    e.edx |= L1_EDX_HTT;
                } else {
                    e.edx &= !L1_EDX_HTT;
                }
            }
            4 if !flavor.amd_like() && cache_type(e.eax) != 0 => {
                let bits = if cache_level(e.eax) >= 3 {
                    llc_shift
                } else {
                    smt_shift
                };
                let cores = ((1u32 << (pkg_shift - smt_shift)) - 1).min(63);
                e.eax = (set_cache_sharing(e.eax, bits) & !(0x3f << 26)) | (cores << 26);
            }
            0xA | 0x1F | 0x8000_0026 => (e.eax, e.ebx, e.ecx, e.edx) = (0, 0, 0, 0),
            0x4000_0001 => {
                e.edx &= !KVM_HINTS_REALTIME;
                if topo.needs_x2apic() {
                    e.eax |= KVM_FEATURE_MSI_EXT_DEST_ID;
                }
            }
            0x8000_0001 if flavor.amd_like() => e.ecx |= E1_ECX_TOPOEXT | E1_ECX_CMP_LEGACY,
            0x8000_0008 => e.ecx = (e.ecx & !0xf0ff) | (pkg_shift << 12) | (per_pkg - 1),
            0x8000_001D if flavor.amd_like() && cache_type(e.eax) != 0 => {
                let bits = if cache_level(e.eax) >= 3 {
                    llc_shift
                } else {
                    smt_shift
                };
                e.eax = set_cache_sharing(e.eax, bits);
            }
            0x8000_001E if flavor.amd_like() => {
                e.eax = apic;
                e.ebx = (core_id & 0xff) | ((topo.threads - 1) << 8);
                e.ecx = node & 0xff;
                e.edx = 0;
            }
            _ => {}
        }
    }
}

/// Inserts our own leaf 0xB (the host's was dropped): Linux derives the SMT and package
/// shifts from it on every vendor.
fn insert_leaf_b(out: &mut Vec<kvm_cpuid_entry2>, topo: &Topology, apic: u32) {
    let layout = topo.apic_layout();
    let (smt_shift, pkg_shift) = (layout.smt_shift(), layout.pkg_shift());
    let per_pkg = topo.cpus_per_node();
    // The three 0xB subleaves, in leaf order after the last leaf below 0xB.
    let sub = |index: u32, eax: u32, ebx: u32, ecx: u32| kvm_cpuid_entry2 {
        function: 0xB,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx: apic,
        ..Default::default()
    };
    let leaf_b = [
        // ECX = level type << 8 | level number (= subleaf).
        sub(0, smt_shift, topo.threads, LEVEL_TYPE_SMT << 8),
        sub(1, pkg_shift, per_pkg, (LEVEL_TYPE_CORE << 8) | 1),
        sub(2, 0, 0, 2),
    ];
    let pos = out
        .iter()
        .position(|e| e.function > 0xB)
        .unwrap_or(out.len());
    out.splice(pos..pos, leaf_b);
}

fn has_l3(entries: &[kvm_cpuid_entry2], leaf: u32) -> bool {
    entries
        .iter()
        .any(|e| e.function == leaf && cache_type(e.eax) != 0 && cache_level(e.eax) >= 3)
}

/// AMD/Hygon: the leaves Linux's AMD path needs must be there; 0x8000001E is inserted if the
/// host range covers it but the table lacks it.
fn amd_checks(
    out: &mut Vec<kvm_cpuid_entry2>,
    max_ext: u32,
    apic: u32,
    core_id: u32,
    topo: &Topology,
    node: u32,
) -> Result<(), CpuidError> {
    if max_ext < 0x8000_001E {
        return Err(CpuidError::MissingLeaf { leaf: 0x8000_001E });
    }
    if !out.iter().any(|e| e.function == 0x8000_0001) {
        return Err(CpuidError::MissingLeaf { leaf: 0x8000_0001 });
    }
    // Linux skips the AMD LLC id entirely (LLC = package) when 0x80000006 EDX reports no L3.
    if lookup(out, 0x8000_0006, 0).edx == 0 {
        return Err(CpuidError::NoL3Cache { leaf: 0x8000_0006 });
    }
    if !has_l3(out, 0x8000_001D) {
        return Err(CpuidError::NoL3Cache { leaf: 0x8000_001D });
    }
    if !out.iter().any(|e| e.function == 0x8000_001E) {
        let pos = out
            .iter()
            .position(|e| e.function > 0x8000_001E)
            .unwrap_or(out.len());
        out.insert(
            pos,
            kvm_cpuid_entry2 {
                function: 0x8000_001E,
                eax: apic,
                ebx: (core_id & 0xff) | ((topo.threads - 1) << 8),
                ecx: node & 0xff,
                ..Default::default()
            },
        );
    }
    Ok(())
}

/// Zen1 (AMD family 0x17, model <= 0x1F) and Hygon: Linux takes `apic >> 3` as the LLC id and
/// ignores 0x8000001D. Accept the shape only if those 8-ID blocks group the CPUs exactly as the
/// topology's LLCs (true when the LLC spans exactly 8 APIC IDs, or when there is a single LLC
/// whose IDs all lie below 8).
fn check_hardcoded_llc(
    flavor: Flavor,
    family: u32,
    model: u32,
    topo: &Topology,
) -> Result<(), CpuidError> {
    let cpu = match flavor {
        Flavor::Amd if family == 0x17 && model <= 0x1F => "Zen1",
        Flavor::Hygon => "Hygon",
        _ => return Ok(()),
    };
    let mut block_llc = std::collections::HashMap::new();
    let mut llc_block = std::collections::HashMap::new();
    let consistent = topo.places().all(|p| {
        let block = topo.apic_id(p.cpu) >> 3;
        *block_llc.entry(block).or_insert(p.llc) == p.llc
            && *llc_block.entry(p.llc).or_insert(block) == block
    });
    if consistent {
        Ok(())
    } else {
        Err(CpuidError::HardcodedLlc {
            cpu,
            family,
            model,
            topo: topo.label(),
            llc_ids: 1 << topo.apic_layout().llc_shift(),
        })
    }
}
