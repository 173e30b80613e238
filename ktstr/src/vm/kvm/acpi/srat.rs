//! SRAT (revision 3), hand-written by ACPI spec offsets: the `acpi_tables` SRAT has no x86
//! (x2)APIC affinity structures.
//!
//! Every APIC ID gets an affinity entry (CPUs left out are spread round-robin by Linux), and
//! every RAM range a memory affinity entry, so SRAT covers all e820 RAM (spec §4).

use acpi_tables::sdt::Sdt;

use super::{NodeMemRange, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::topology::Topology;

/// SRAT header: the 36-byte SDT header, reserved u32 (= 1 for compatibility), 8 reserved bytes.
const SRAT_HEADER_LEN: u32 = 48;
/// Affinity/memory flags bit 0: the entry is enabled.
const ENABLED: u32 = 1;

const TYPE_LAPIC_AFFINITY: u8 = 0;
const TYPE_MEMORY_AFFINITY: u8 = 1;
const TYPE_X2APIC_AFFINITY: u8 = 2;

pub(super) fn build(topo: &Topology, mem: &[NodeMemRange]) -> Sdt {
    let mut t = Sdt::new(
        *b"SRAT",
        SRAT_HEADER_LEN,
        3,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.write_u32(36, 1);

    // Same rule as the MADT: x2APIC shapes describe every CPU with x2APIC structures.
    let x2apic = topo.needs_x2apic();
    let mut body = Vec::new();
    for p in topo.places() {
        let apic = topo.apic_id(p.cpu);
        let pxm = p.node;
        if x2apic {
            // Type 2, 24 bytes: type, len, reserved u16, proximity domain u32, x2APIC id,
            // flags, clock domain, reserved u32.
            body.extend_from_slice(&[TYPE_X2APIC_AFFINITY, 24, 0, 0]);
            body.extend_from_slice(&pxm.to_le_bytes());
            body.extend_from_slice(&apic.to_le_bytes());
            body.extend_from_slice(&ENABLED.to_le_bytes());
            body.extend_from_slice(&[0; 8]);
        } else {
            // Type 0, exactly 16 bytes: type, len, proximity domain [7:0], APIC id, flags,
            // local SAPIC EID, proximity domain [31:8], clock domain.
            let pxm_b = pxm.to_le_bytes();
            body.extend_from_slice(&[TYPE_LAPIC_AFFINITY, 16, pxm_b[0], apic as u8]);
            body.extend_from_slice(&ENABLED.to_le_bytes());
            body.extend_from_slice(&[0, pxm_b[1], pxm_b[2], pxm_b[3]]);
            body.extend_from_slice(&[0; 4]);
        }
    }
    for r in mem {
        // Type 1, 40 bytes: type, len, proximity domain u32, reserved u16, base (lo, hi),
        // length (lo, hi), reserved u32, flags, reserved u64.
        body.extend_from_slice(&[TYPE_MEMORY_AFFINITY, 40]);
        body.extend_from_slice(&r.node.to_le_bytes());
        body.extend_from_slice(&[0; 2]);
        body.extend_from_slice(&r.base.to_le_bytes());
        body.extend_from_slice(&r.len.to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&ENABLED.to_le_bytes());
        body.extend_from_slice(&[0; 8]);
    }
    t.append_slice(&body);
    t
}
