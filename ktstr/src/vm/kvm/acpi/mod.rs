//! ACPI tables for the in-process VMM: RSDP, XSDT, FADT, DSDT, MADT, SRAT and SLIT, laid out
//! contiguously in the BIOS area below 1 MiB (spec `vmm.md` §3, §4, §12).
//!
//! Linux parses the MADT, SRAT and SLIT early and without the AML interpreter, so these static
//! tables are all the firmware the guest needs to see the declared topology: CPUs in canonical
//! order (MADT), CPU and memory proximity domains (SRAT) and node distances (SLIT).
//!
//! Crate use: the `acpi_tables` crate builds the RSDP, XSDT, FADT, SLIT and the generic
//! [`acpi_tables::sdt::Sdt`] (header + checksum) used for the DSDT. Its MADT type cannot set the
//! PCAT_COMPAT flag or revision 5, and its SRAT has only memory, generic-initiator and RISC-V
//! affinity structures (no x86 APIC/x2APIC affinity, revision fixed at 1), so the MADT and SRAT
//! bodies are hand-written here by ACPI spec offsets on top of its generic `Sdt`.

mod madt;
mod srat;

#[cfg(test)]
mod tests;

use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::slit::SLIT;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;

use crate::topology::Topology;

/// Guest-physical address of every CPU's local APIC (MADT header field).
pub const LAPIC_ADDR: u32 = 0xFEE0_0000;
/// Guest-physical address of the single IOAPIC.
pub const IOAPIC_ADDR: u32 = 0xFEC0_0000;
/// The tables must end at or below this address (the BIOS area ends at 1 MiB).
pub const ACPI_WINDOW_END: u64 = 0x10_0000;
/// The SCI interrupt in the FADT. Never 0: an ISO whose source equals SCI_INT would be taken as
/// the SCI override and turn IRQ0 level/active-low (spec §3).
pub const SCI_IRQ: u16 = 9;
/// FADT IAPC_BOOT_ARCH: VGA_NOT_PRESENT | MSI_NOT_SUPPORTED | CMOS_RTC_NOT_PRESENT. Bit 1 (8042)
/// stays clear: with FADT rev >= 2 Linux would mark the i8042 absent and skip its probe.
pub const IAPC_BOOT_ARCH: u16 = (1 << 2) | (1 << 3) | (1 << 5);

/// OEM id written into every table header (6 bytes, space padded).
pub(crate) const OEM_ID: [u8; 6] = *b"KTSTR ";
/// OEM table id written into every table header (8 bytes).
pub(crate) const OEM_TABLE_ID: [u8; 8] = *b"KTSTRVMM";
/// OEM revision written into every table header.
pub(crate) const OEM_REVISION: u32 = 1;

/// Every table starts 8-byte aligned; the RSDP additionally needs 16 (checked on `base_gpa`).
const TABLE_ALIGN: u64 = 8;
const RSDP_LEN: u64 = 36;
const HEADER_LEN: u64 = 36;
const FADT_LEN: u64 = 276;
/// FACP, APIC, SRAT, SLIT (the DSDT hangs off the FADT).
const XSDT_ENTRIES: u64 = 4;

/// One guest-physical RAM range belonging to a NUMA node (for SRAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeMemRange {
    /// NUMA node (= proximity domain) the range belongs to.
    pub node: u32,
    /// First guest-physical byte of the range.
    pub base: u64,
    /// Length in bytes (non-zero).
    pub len: u64,
}

/// The generated tables: `bytes` is to be copied to guest memory at `base_gpa`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// All tables, contiguous, starting with the RSDP.
    pub bytes: Vec<u8>,
    /// Guest-physical address of `bytes[0]`.
    pub base_gpa: u64,
    /// Guest-physical address of the RSDP (for `boot_params.acpi_rsdp_addr`); equals `base_gpa`.
    pub rsdp_gpa: u64,
}

/// Why the ACPI tables could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcpiError {
    /// The RSDP goes first and must be 16-byte aligned for the BIOS-area scan.
    #[error("ACPI base address {base:#x} is not 16-byte aligned (the RSDP must be)")]
    MisalignedBase {
        /// The requested base.
        base: u64,
    },
    /// The tables would not end at or below 1 MiB.
    #[error("ACPI tables need {len} bytes at {base:#x}, which runs past {limit:#x}; use a lower base (0xE0000 leaves 128 KiB)")]
    TooLarge {
        /// The requested base.
        base: u64,
        /// Bytes the tables take.
        len: u64,
        /// The address they must end by.
        limit: u64,
    },
    /// A node has no RAM; Linux would drop or merge it.
    #[error("NUMA node {node} has no memory range; every node needs RAM in the SRAT")]
    NodeWithoutMemory {
        /// The node without memory.
        node: u32,
    },
    /// A memory range names a node the topology does not have.
    #[error(
        "memory range {base:#x}+{len:#x} is for node {node}, but the topology has {nodes} node(s)"
    )]
    UnknownNode {
        /// The node named.
        node: u32,
        /// Nodes in the topology.
        nodes: u32,
        /// Range base.
        base: u64,
        /// Range length.
        len: u64,
    },
    /// A memory range is empty or wraps past the end of the address space.
    #[error("memory range {base:#x}+{len:#x} for node {node} is empty or wraps around")]
    BadRange {
        /// The range's node.
        node: u32,
        /// Range base.
        base: u64,
        /// Range length.
        len: u64,
    },
    /// Two memory ranges overlap.
    #[error("memory ranges {a_base:#x}+{a_len:#x} and {b_base:#x}+{b_len:#x} overlap")]
    Overlap {
        /// First range's base.
        a_base: u64,
        /// First range's length.
        a_len: u64,
        /// Second range's base.
        b_base: u64,
        /// Second range's length.
        b_len: u64,
    },
}

/// Builds RSDP, XSDT, FADT, DSDT, MADT, SRAT and SLIT laid out contiguously from `base_gpa`
/// (the VMM uses 0xE0000). The RSDP comes first; every other table is 8-byte aligned and
/// checksummed so its bytes sum to 0.
///
/// MADT choices:
/// - CPUs appear in canonical order with ACPI UID = canonical index, so guest `cpuN` is
///   canonical CPU N even with sparse APIC IDs (Linux numbers CPUs in MADT order).
/// - If every APIC ID fits xAPIC (`!topo.needs_x2apic()`), one type-0 Local APIC entry per CPU.
///   Otherwise **all** CPUs get type-9 Local x2APIC entries and no type-0 entry at all: Linux
///   ignores x2APIC entries with IDs < 0xFF whenever any type-0 entry exists, so mixing the two
///   would lose the low CPUs, and a single type keeps the canonical order in one list.
/// - One IOAPIC (id 0 at 0xFEC00000, GSI base 0), a Local APIC NMI (UID 0xFF = all, LINT1) and,
///   for x2APIC shapes, also a Local x2APIC NMI (UID 0xFFFFFFFF = all, LINT1).
/// - **No interrupt source overrides.** KVM's default GSI routing is the identity (GSI n to
///   IOAPIC pin n), and with no ISO Linux uses the identity ISA map, so IRQ0 (the PIT) is GSI 0,
///   edge, active-high, matching KVM. The QEMU-style IRQ0->GSI2 override would need a custom
///   KVM_SET_GSI_ROUTING table, which this VMM does not install.
pub fn build_acpi_tables(
    topo: &Topology,
    mem: &[NodeMemRange],
    base_gpa: u64,
) -> Result<AcpiTables, AcpiError> {
    if base_gpa % 16 != 0 {
        return Err(AcpiError::MisalignedBase { base: base_gpa });
    }
    validate_memory(topo, mem)?;

    // Tables whose contents do not depend on addresses are built first; their sizes fix the
    // layout, and then the pointer-bearing ones (RSDP, XSDT, FADT) are built with final addresses.
    let dsdt = Sdt::new(
        *b"DSDT",
        HEADER_LEN as u32,
        2,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    let madt = to_bytes(&madt::build(topo));
    let srat = to_bytes(&srat::build(topo, mem));
    let slit = to_bytes(&build_slit(topo.numa_nodes));

    let sizes = [
        RSDP_LEN,
        HEADER_LEN + 8 * XSDT_ENTRIES,
        FADT_LEN,
        dsdt.len() as u64,
        madt.len() as u64,
        srat.len() as u64,
        slit.len() as u64,
    ];
    let mut offsets = [0u64; 7];
    let mut end = 0u64;
    for (off, size) in offsets.iter_mut().zip(sizes) {
        *off = end.next_multiple_of(TABLE_ALIGN);
        end = *off + size;
    }
    let too_large = AcpiError::TooLarge {
        base: base_gpa,
        len: end,
        limit: ACPI_WINDOW_END,
    };
    match base_gpa.checked_add(end) {
        Some(e) if e <= ACPI_WINDOW_END => {}
        _ => return Err(too_large),
    }
    let gpa = |i: usize| base_gpa + offsets[i];
    let [rsdp_at, xsdt_at, fadt_at, dsdt_at, madt_at, srat_at, slit_at] =
        [0, 1, 2, 3, 4, 5, 6].map(gpa);

    let fadt = to_bytes(&build_fadt(dsdt_at));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for addr in [fadt_at, madt_at, srat_at, slit_at] {
        xsdt.add_entry(addr);
    }
    let xsdt = to_bytes(&xsdt);
    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_at));

    let mut bytes = vec![0u8; end as usize];
    let parts: [&[u8]; 7] = [&rsdp, &xsdt, &fadt, dsdt.as_slice(), &madt, &srat, &slit];
    for ((part, off), size) in parts.into_iter().zip(offsets).zip(sizes) {
        debug_assert_eq!(part.len() as u64, size, "table size changed after layout");
        bytes[off as usize..off as usize + part.len()].copy_from_slice(part);
    }
    Ok(AcpiTables {
        bytes,
        base_gpa,
        rsdp_gpa: rsdp_at,
    })
}

/// Every range names a real node, is non-empty, does not wrap or overlap another, and every
/// node has at least one range (a node without memory is dropped by Linux).
fn validate_memory(topo: &Topology, mem: &[NodeMemRange]) -> Result<(), AcpiError> {
    for r in mem {
        if r.node >= topo.numa_nodes {
            return Err(AcpiError::UnknownNode {
                node: r.node,
                nodes: topo.numa_nodes,
                base: r.base,
                len: r.len,
            });
        }
        if r.len == 0 || r.base.checked_add(r.len).is_none() {
            return Err(AcpiError::BadRange {
                node: r.node,
                base: r.base,
                len: r.len,
            });
        }
    }
    for node in 0..topo.numa_nodes {
        if !mem.iter().any(|r| r.node == node) {
            return Err(AcpiError::NodeWithoutMemory { node });
        }
    }
    let mut sorted: Vec<&NodeMemRange> = mem.iter().collect();
    sorted.sort_by_key(|r| r.base);
    for w in sorted.windows(2) {
        if w[0].base + w[0].len > w[1].base {
            return Err(AcpiError::Overlap {
                a_base: w[0].base,
                a_len: w[0].len,
                b_base: w[1].base,
                b_len: w[1].len,
            });
        }
    }
    Ok(())
}

/// FADT revision 6 (276 bytes): not hardware-reduced (that would drop the legacy PIC, the ISA
/// IRQ identity map and PIT init), SCI on IRQ 9, no 8042 bit, power and sleep buttons as
/// (absent) control-method devices, DSDT in both the 32- and 64-bit fields.
fn build_fadt(dsdt_gpa: u64) -> acpi_tables::fadt::FADT {
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    // Both fields carry the same address (it is below 4 GiB), so ACPICA sees no mismatch.
    b.dsdt = (dsdt_gpa as u32).into();
    b.x_dsdt = dsdt_gpa.into();
    b.sci_int = SCI_IRQ.into();
    b.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    b.finalize()
}

/// SLIT: 10 on the diagonal, 20 elsewhere (Linux ignores a SLIT whose diagonal is not 10 or
/// whose other entries are not > 10).
fn build_slit(nodes: u32) -> SLIT {
    let mut slit = SLIT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, nodes);
    for a in 0..nodes as usize {
        for b in a + 1..nodes as usize {
            slit.set_distance(a, b, 20);
        }
    }
    slit
}

fn to_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}
