//! Round trips of the generated tables through independent parsers.
//!
//! RSDP, XSDT, FADT and MADT are parsed with the `acpi` crate (5.x, `default-features = false`:
//! its no-alloc API validates signatures and checksums, follows RSDP -> XSDT -> tables and
//! iterates MADT entries). It has no SRAT/SLIT types, so those two (and a byte-level re-check of
//! every checksum and the FADT/DSDT fields) use the minimal offset parser below, which reads only
//! by the ACPI spec's offsets and shares no code with the generator.

use std::ptr::NonNull;
use std::rc::Rc;

use acpi::fadt::Fadt;
use acpi::madt::{Madt, MadtEntry};
use acpi::sdt::{SdtHeader, Signature};
use acpi::{AcpiHandler, AcpiTable, PhysicalMapping};

use super::*;
use crate::vm::kvm::cpuid::TEST_SHAPES;

/// Maps "physical" addresses onto the generated buffer.
#[derive(Clone)]
struct BufHandler {
    base: usize,
    bytes: Rc<Vec<u8>>,
}

impl AcpiHandler for BufHandler {
    unsafe fn map_physical_region<T>(&self, pa: usize, size: usize) -> PhysicalMapping<Self, T> {
        let off = pa
            .checked_sub(self.base)
            .unwrap_or_else(|| panic!("address {pa:#x} below the tables"));
        assert!(
            off + size <= self.bytes.len(),
            "mapping {pa:#x}+{size} past the tables"
        );
        // SAFETY: `off + size` is within `bytes` (asserted above), so the pointer stays in the
        // buffer; the mapping keeps a clone of the Rc, so the buffer outlives it.
        unsafe {
            let ptr = NonNull::new(self.bytes.as_ptr().add(off) as *mut T).unwrap();
            PhysicalMapping::new(pa, ptr, size, size, self.clone())
        }
    }
    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

/// Only the header, so the `acpi` crate can find and checksum-validate tables it lacks types for.
#[repr(C, packed)]
struct RawSrat {
    header: SdtHeader,
}
// SAFETY: RawSrat is a packed header whose layout is the table's, and SIGNATURE is SRAT's.
unsafe impl AcpiTable for RawSrat {
    const SIGNATURE: Signature = Signature::SRAT;
    fn header(&self) -> &SdtHeader {
        &self.header
    }
}
#[repr(C, packed)]
struct RawSlit {
    header: SdtHeader,
}
// SAFETY: RawSlit is a packed header whose layout is the table's, and SIGNATURE is SLIT's.
unsafe impl AcpiTable for RawSlit {
    const SIGNATURE: Signature = Signature::SLIT;
    fn header(&self) -> &SdtHeader {
        &self.header
    }
}

// ---- minimal offset parser ----

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}
fn sum(b: &[u8]) -> u8 {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
}

/// The table at `gpa`, checked for signature, length and checksum.
fn table<'a>(t: &'a AcpiTables, gpa: u64, sig: &[u8; 4]) -> &'a [u8] {
    let off = (gpa - t.base_gpa) as usize;
    let b = &t.bytes[off..];
    assert_eq!(&b[0..4], sig, "signature at {gpa:#x}");
    let len = u32_at(b, 4) as usize;
    let tab = &b[..len];
    assert_eq!(sum(tab), 0, "{} checksum", String::from_utf8_lossy(sig));
    tab
}

/// XSDT entries by signature, via raw offsets.
fn xsdt_tables(t: &AcpiTables) -> Vec<([u8; 4], u64)> {
    let r = &t.bytes[(t.rsdp_gpa - t.base_gpa) as usize..];
    assert_eq!(&r[0..8], b"RSD PTR ");
    assert_eq!(r[15], 2, "RSDP revision");
    assert_eq!(sum(&r[..20]), 0, "RSDP checksum");
    assert_eq!(u32_at(r, 20), 36, "RSDP length");
    assert_eq!(sum(&r[..36]), 0, "RSDP extended checksum");
    let x = table(t, u64_at(r, 24), b"XSDT");
    (36..x.len())
        .step_by(8)
        .map(|o| {
            let gpa = u64_at(x, o);
            let off = (gpa - t.base_gpa) as usize;
            (t.bytes[off..off + 4].try_into().unwrap(), gpa)
        })
        .collect()
}

/// Per-node RAM like the VMM lays it out: contiguous from 0, split around [3 GiB, 4 GiB).
fn node_mem(nodes: u32, per_node: u64) -> Vec<NodeMemRange> {
    const G3: u64 = 3 << 30;
    const G4: u64 = 4 << 30;
    let mut out = Vec::new();
    let mut ram = 0u64; // RAM offset, before skipping the hole
    for node in 0..nodes {
        let (mut start, end) = (ram, ram + per_node);
        while start < end {
            // Map RAM offset to a GPA: offsets >= 3G sit 1 GiB higher.
            let (gpa, chunk) = if start < G3 {
                (start, end.min(G3) - start)
            } else {
                (start + (G4 - G3), end - start)
            };
            out.push(NodeMemRange {
                node,
                base: gpa,
                len: chunk,
            });
            start += chunk;
        }
        ram = end;
    }
    out
}

fn check_shape(label: &str, mem: &[NodeMemRange]) {
    let topo = Topology::parse(label).unwrap();
    let t = build_acpi_tables(&topo, mem, 0xE0000).unwrap_or_else(|e| panic!("{label}: {e}"));
    assert_eq!(t.base_gpa, 0xE0000);
    assert_eq!(t.rsdp_gpa % 16, 0);
    assert!(t.rsdp_gpa >= 0xE0000 && t.base_gpa + t.bytes.len() as u64 <= 0x10_0000);

    // --- independent: the acpi crate ---
    let h = BufHandler {
        base: t.base_gpa as usize,
        bytes: Rc::new(t.bytes.clone()),
    };
    // SAFETY: the handler maps only addresses inside the built tables (it panics otherwise).
    let tables = unsafe { acpi::AcpiTables::from_rsdp(h, t.rsdp_gpa as usize) }
        .unwrap_or_else(|e| panic!("{label}: acpi crate rejected the RSDP/XSDT: {e:?}"));
    assert_eq!(tables.revision(), 2);
    let sigs: Vec<String> = tables
        .headers()
        .map(|h| h.signature.as_str().to_string())
        .collect();
    assert_eq!(
        sigs,
        ["FACP", "APIC", "SRAT", "SLIT"],
        "{label}: XSDT order"
    );

    let fadt = tables.find_table::<Fadt>().expect("FADT");
    fadt.validate().unwrap();
    assert_eq!({ fadt.sci_interrupt }, 9);
    let flags = { fadt.flags };
    assert!(flags.power_button_is_control_method() && flags.sleep_button_is_control_method());
    assert!(
        !flags.system_is_hw_reduced_acpi(),
        "{label}: HW_REDUCED set"
    );
    let boot = { fadt.iapc_boot_arch };
    assert!(!boot.motherboard_implements_8042(), "{label}: 8042 bit set");
    assert!(boot.dont_probe_vga() && boot.dont_enable_msi());
    let dsdt_gpa = fadt.dsdt_address().unwrap() as u64;
    drop(fadt);
    let dsdt = tables.dsdt().expect("DSDT");
    assert_eq!(dsdt.address as u64, dsdt_gpa + 36);
    assert_eq!(dsdt.length, 0, "{label}: DSDT has AML");

    let madt = tables.find_table::<Madt>().expect("MADT");
    let m = madt.get();
    assert_eq!({ m.local_apic_address }, 0xFEE0_0000);
    assert!(m.supports_8259(), "{label}: PCAT_COMPAT");
    assert_eq!({ m.header.revision }, 5);
    let x2 = topo.needs_x2apic();
    let mut cpus = Vec::new();
    let (mut ioapics, mut nmis, mut x2nmis) = (0, 0, 0);
    for e in m.entries() {
        match e {
            MadtEntry::LocalApic(l) => {
                assert!(!x2, "{label}: type 0 entry in an x2APIC MADT");
                assert_eq!({ l.flags }, 1);
                cpus.push((l.processor_id as u32, l.apic_id as u32));
            }
            MadtEntry::LocalX2Apic(l) => {
                assert!(x2, "{label}: type 9 entry in an xAPIC MADT");
                assert_eq!({ l.flags }, 1);
                cpus.push(({ l.processor_uid }, { l.x2apic_id }));
            }
            MadtEntry::IoApic(io) => {
                ioapics += 1;
                assert_eq!(io.io_apic_id, 0);
                assert_eq!({ io.io_apic_address }, 0xFEC0_0000);
                assert_eq!({ io.global_system_interrupt_base }, 0);
            }
            MadtEntry::LocalApicNmi(n) => {
                nmis += 1;
                assert_eq!((n.processor_id, n.nmi_line), (0xFF, 1));
            }
            MadtEntry::X2ApicNmi(n) => {
                x2nmis += 1;
                assert_eq!(({ n.processor_uid }, n.nmi_line), (u32::MAX, 1));
            }
            MadtEntry::InterruptSourceOverride(_) => panic!("{label}: unexpected ISO"),
            other => panic!("{label}: unexpected MADT entry {other:?}"),
        }
    }
    let want: Vec<(u32, u32)> = (0..topo.num_cpus()).map(|c| (c, topo.apic_id(c))).collect();
    assert_eq!(cpus, want, "{label}: MADT CPUs not canonical");
    assert_eq!((ioapics, nmis, x2nmis), (1, 1, x2 as i32));
    drop(madt);

    let srat_gpa = tables
        .find_table::<RawSrat>()
        .expect("SRAT")
        .physical_start() as u64;
    let slit_gpa = tables
        .find_table::<RawSlit>()
        .expect("SLIT")
        .physical_start() as u64;

    // --- independent: raw offsets ---
    let x = xsdt_tables(&t);
    let sig_of: Vec<[u8; 4]> = x.iter().map(|(s, _)| *s).collect();
    assert_eq!(sig_of, [*b"FACP", *b"APIC", *b"SRAT", *b"SLIT"]);
    let f = table(&t, x[0].1, b"FACP");
    assert_eq!((f.len(), f[8]), (276, 6), "{label}: FADT length/revision");
    assert_eq!(u16_at(f, 46), 9, "SCI_INT");
    assert_eq!(u16_at(f, 109), 0x2C, "IAPC_BOOT_ARCH");
    assert_eq!(u32_at(f, 112), (1 << 4) | (1 << 5), "FADT flags");
    assert_eq!(u32_at(f, 40) as u64, dsdt_gpa, "DSDT");
    assert_eq!(u64_at(f, 140), dsdt_gpa, "X_DSDT");
    assert_eq!(table(&t, dsdt_gpa, b"DSDT").len(), 36);
    for (sig, gpa) in &x {
        table(&t, *gpa, sig);
    }
    assert_eq!(x[2].1, srat_gpa);
    assert_eq!(x[3].1, slit_gpa);

    // SRAT: every APIC id in its node, memory ranges covering the RAM.
    let s = table(&t, srat_gpa, b"SRAT");
    assert_eq!(s[8], 3, "SRAT revision");
    assert_eq!(u32_at(s, 36), 1, "SRAT reserved u32");
    let (mut cpu_pxm, mut ranges) = (Vec::new(), Vec::new());
    let mut o = 48;
    while o < s.len() {
        let (ty, len) = (s[o], s[o + 1] as usize);
        let e = &s[o..o + len];
        match ty {
            0 => {
                assert_eq!(len, 16, "type 0 must be 16 bytes");
                assert!(!x2, "{label}: xAPIC affinity in an x2APIC SRAT");
                assert_eq!(u32_at(e, 4) & 1, 1);
                let pxm =
                    e[2] as u32 | (e[9] as u32) << 8 | (e[10] as u32) << 16 | (e[11] as u32) << 24;
                cpu_pxm.push((e[3] as u32, pxm));
            }
            2 => {
                assert_eq!(len, 24);
                assert!(x2, "{label}: x2APIC affinity in an xAPIC SRAT");
                assert_eq!(u32_at(e, 12) & 1, 1);
                cpu_pxm.push((u32_at(e, 8), u32_at(e, 4)));
            }
            1 => {
                assert_eq!(len, 40);
                assert_eq!(u32_at(e, 28) & 1, 1, "memory affinity enabled");
                ranges.push(NodeMemRange {
                    node: u32_at(e, 2),
                    base: u64_at(e, 8),
                    len: u64_at(e, 16),
                });
            }
            _ => panic!("{label}: unexpected SRAT type {ty}"),
        }
        o += len;
    }
    assert_eq!(o, s.len());
    let want: Vec<(u32, u32)> = topo
        .places()
        .map(|p| (topo.apic_id(p.cpu), p.node))
        .collect();
    assert_eq!(cpu_pxm, want, "{label}: SRAT CPU affinity");
    for r in mem {
        let covered: u64 = ranges
            .iter()
            .filter(|s| s.node == r.node && s.base < r.base + r.len && r.base < s.base + s.len)
            .map(|s| (s.base + s.len).min(r.base + r.len) - s.base.max(r.base))
            .sum();
        assert_eq!(covered, r.len, "{label}: SRAT does not cover {r:?}");
    }

    // SLIT: N, then the N x N matrix.
    let sl = table(&t, slit_gpa, b"SLIT");
    let n = topo.numa_nodes as usize;
    assert_eq!(u64_at(sl, 36), n as u64);
    assert_eq!(sl.len(), 44 + n * n);
    for i in 0..n {
        for j in 0..n {
            assert_eq!(sl[44 + i * n + j], if i == j { 10 } else { 20 });
        }
    }
}

#[test]
fn all_shapes_parse_back() {
    for label in TEST_SHAPES {
        let topo = Topology::parse(label).unwrap();
        check_shape(label, &node_mem(topo.numa_nodes, 256 << 20));
    }
}

#[test]
fn node_split_around_the_pci_hole() {
    // 2 nodes x 2 GiB: node 1 is [2G, 3G) + [4G, 5G), two SRAT entries with the same PXM.
    let mem = node_mem(2, 2 << 30);
    assert_eq!(mem.len(), 3);
    assert_eq!((mem[1].node, mem[2].node, mem[2].base), (1, 1, 4 << 30));
    check_shape("2n4l4c2t", &mem);
    check_shape("4n8l4c1t", &node_mem(4, 1 << 30));
}

#[test]
fn x2apic_shapes_use_type9_only() {
    // 1n14l18c1t and 1n14l9c2t need 9 APIC-id bits.
    for label in ["1n14l18c1t", "1n14l9c2t"] {
        assert!(Topology::parse(label).unwrap().needs_x2apic());
        check_shape(label, &node_mem(1, 1 << 30));
    }
}

#[test]
fn rejects_bad_memory() {
    let topo = Topology::parse("2n2l2c2t").unwrap();
    let only0 = node_mem(1, 1 << 30);
    assert_eq!(
        build_acpi_tables(&topo, &only0, 0xE0000),
        Err(AcpiError::NodeWithoutMemory { node: 1 })
    );
    assert_eq!(
        build_acpi_tables(&topo, &[], 0xE0000),
        Err(AcpiError::NodeWithoutMemory { node: 0 })
    );
    let mut bad = node_mem(2, 1 << 30);
    bad[1].node = 5;
    assert!(matches!(
        build_acpi_tables(&topo, &bad, 0xE0000),
        Err(AcpiError::UnknownNode { node: 5, .. })
    ));
    let mut empty = node_mem(2, 1 << 30);
    empty[0].len = 0;
    assert!(matches!(
        build_acpi_tables(&topo, &empty, 0xE0000),
        Err(AcpiError::BadRange { .. })
    ));
    let mut overlap = node_mem(2, 1 << 30);
    overlap[1].base -= 4096;
    assert!(matches!(
        build_acpi_tables(&topo, &overlap, 0xE0000),
        Err(AcpiError::Overlap { .. })
    ));
}

#[test]
fn rejects_bad_window() {
    let topo = Topology::parse("1n14l18c1t").unwrap();
    let mem = node_mem(1, 1 << 30);
    let e = build_acpi_tables(&topo, &mem, 0xFF000).unwrap_err();
    assert!(
        matches!(e, AcpiError::TooLarge { base: 0xFF000, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("0x100000"), "{e}");
    assert!(matches!(
        build_acpi_tables(&topo, &mem, u64::MAX - 15),
        Err(AcpiError::TooLarge { .. })
    ));
    assert_eq!(
        build_acpi_tables(&topo, &mem, 0xE0008),
        Err(AcpiError::MisalignedBase { base: 0xE0008 })
    );
    // The largest shape still fits the real window with room to spare.
    let t = build_acpi_tables(&topo, &mem, 0xE0000).unwrap();
    assert!(t.bytes.len() < 16 << 10, "{}", t.bytes.len());
}
