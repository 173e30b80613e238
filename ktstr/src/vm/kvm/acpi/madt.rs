//! MADT ("APIC", revision 5), hand-written by ACPI spec offsets (see the module docs of
//! [`super`] for why, and [`super::build_acpi_tables`] for the entry choices).

use acpi_tables::sdt::Sdt;

use super::{IOAPIC_ADDR, LAPIC_ADDR, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::topology::Topology;

/// MADT header: the 36-byte SDT header, local APIC address (u32), flags (u32).
const MADT_HEADER_LEN: u32 = 44;
/// MADT flags bit 0: the system also has dual 8259 PICs (KVM's in-kernel irqchip does).
pub(super) const PCAT_COMPAT: u32 = 1;
/// Local APIC / x2APIC flags bit 0: the processor is enabled.
const ENABLED: u32 = 1;
/// NMI is wired to LINT1 on every CPU, as on PC hardware.
const NMI_LINT: u8 = 1;

/// Entry types used here.
const TYPE_LOCAL_APIC: u8 = 0;
const TYPE_IOAPIC: u8 = 1;
const TYPE_LOCAL_APIC_NMI: u8 = 4;
const TYPE_LOCAL_X2APIC: u8 = 9;
const TYPE_LOCAL_X2APIC_NMI: u8 = 0xA;

pub(super) fn build(topo: &Topology) -> Sdt {
    let mut t = Sdt::new(
        *b"APIC",
        MADT_HEADER_LEN,
        5,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    t.write_u32(36, LAPIC_ADDR);
    t.write_u32(40, PCAT_COMPAT);

    let x2apic = topo.needs_x2apic();
    let mut body = Vec::new();
    for cpu in 0..topo.num_cpus() {
        let apic = topo.apic_id(cpu);
        if x2apic {
            // Type 9, 16 bytes: type, len, reserved u16, x2APIC id, flags, ACPI UID.
            body.extend_from_slice(&[TYPE_LOCAL_X2APIC, 16, 0, 0]);
            body.extend_from_slice(&apic.to_le_bytes());
            body.extend_from_slice(&ENABLED.to_le_bytes());
            body.extend_from_slice(&cpu.to_le_bytes());
        } else {
            // Type 0, 8 bytes: type, len, ACPI UID (u8), APIC id (u8), flags. The topology caps
            // CPUs at 252 and xAPIC ids at 0xFE, so both fit a byte.
            body.extend_from_slice(&[TYPE_LOCAL_APIC, 8, cpu as u8, apic as u8]);
            body.extend_from_slice(&ENABLED.to_le_bytes());
        }
    }
    // Type 1, 12 bytes: type, len, IOAPIC id, reserved, address, GSI base.
    body.extend_from_slice(&[TYPE_IOAPIC, 12, 0, 0]);
    body.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    // Type 4, 6 bytes: type, len, ACPI UID 0xFF (all processors), flags u16 (0 = bus
    // conforming), LINT#.
    body.extend_from_slice(&[TYPE_LOCAL_APIC_NMI, 6, 0xFF, 0, 0, NMI_LINT]);
    if x2apic {
        // Type 0xA, 12 bytes: type, len, flags u16, ACPI UID u32 (0xFFFFFFFF = all), LINT#,
        // 3 reserved.
        body.extend_from_slice(&[TYPE_LOCAL_X2APIC_NMI, 12, 0, 0]);
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        body.extend_from_slice(&[NMI_LINT, 0, 0, 0]);
    }
    t.append_slice(&body);
    t
}
