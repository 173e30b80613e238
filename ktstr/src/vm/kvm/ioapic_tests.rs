use std::sync::Mutex;

use super::*;

/// Records what the IOAPIC sends; `refuse` makes every delivery fail (no LAPIC accepts).
#[derive(Default)]
struct Recorder {
    msis: Mutex<Vec<Msi>>,
    routes: Mutex<Vec<Vec<(u32, Msi)>>>,
    refuse: std::sync::atomic::AtomicBool,
}

impl MsiSink for Recorder {
    fn signal(&self, msi: Msi) -> bool {
        self.msis.lock().unwrap().push(msi);
        !self.refuse.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn set_routes(&self, routes: &[(u32, Msi)]) {
        self.routes.lock().unwrap().push(routes.to_vec());
    }
}

impl Recorder {
    fn take(&self) -> Vec<Msi> {
        std::mem::take(&mut *self.msis.lock().unwrap())
    }
}

/// Writes RTE `pin` through IOREGSEL/IOWIN, as Linux does (high half first).
fn program(io: &mut Ioapic, sink: &Recorder, pin: u32, rte: u64) {
    io.mmio_write(IOREGSEL, &(REG_REDTBL + 2 * pin + 1).to_le_bytes(), sink);
    io.mmio_write(IOWIN, &((rte >> 32) as u32).to_le_bytes(), sink);
    io.mmio_write(IOREGSEL, &(REG_REDTBL + 2 * pin).to_le_bytes(), sink);
    io.mmio_write(IOWIN, &(rte as u32).to_le_bytes(), sink);
}

fn read(io: &Ioapic, index: u32) -> u32 {
    let sink = Recorder::default();
    let mut io = io.clone();
    io.mmio_write(IOREGSEL, &index.to_le_bytes(), &sink);
    let mut b = [0u8; 4];
    io.mmio_read(IOWIN, &mut b);
    u32::from_le_bytes(b)
}

/// An RTE as Linux writes it in x2APIC physical mode with the extended destination ID.
fn rte(vector: u8, dest: u32, level: bool, masked: bool) -> u64 {
    let mut e = vector as u64 | ((dest as u64 & 0xFF) << 56) | (((dest as u64 >> 8) & 0x7F) << 49);
    if level {
        e |= RTE_LEVEL | RTE_ACTIVE_LOW;
    }
    if masked {
        e |= RTE_MASKED;
    }
    e
}

#[test]
fn registers_read_back() {
    let sink = Recorder::default();
    let mut io = Ioapic::new();
    assert_eq!(read(&io, REG_VER), 0x0017_0020, "24 entries, version 0x20");
    // Every entry starts masked.
    for pin in 0..IOAPIC_PINS as u32 {
        assert_eq!(read(&io, REG_REDTBL + 2 * pin), RTE_MASKED as u32);
        assert_eq!(read(&io, REG_REDTBL + 2 * pin + 1), 0);
    }
    io.mmio_write(IOREGSEL, &[REG_ID as u8], &sink);
    io.mmio_write(IOWIN, &0x0A00_0000u32.to_le_bytes(), &sink);
    assert_eq!(read(&io, REG_ID), 0x0A00_0000);
    assert_eq!(read(&io, REG_ARB), 0x0A00_0000);
    // The version is read-only.
    io.write_reg(REG_VER, 0, &sink);
    assert_eq!(read(&io, REG_VER), 0x0017_0020);
    // IOREGSEL reads back; a byte read of IOWIN returns the addressed byte.
    io.mmio_write(IOREGSEL, &[REG_VER as u8], &sink);
    let mut b = [0u8; 4];
    io.mmio_read(IOREGSEL, &mut b);
    assert_eq!(u32::from_le_bytes(b), REG_VER);
    let mut one = [0u8];
    io.mmio_read(IOWIN + 2, &mut one);
    assert_eq!(one[0], 0x17);
    // Unknown registers read 0 and ignore writes.
    io.write_reg(0x50, 7, &sink);
    assert_eq!(read(&io, 0x50), 0);
    assert!(sink.take().is_empty());

    let e = rte(0x31, 433, false, false) | RTE_DEST_LOGICAL;
    program(&mut io, &sink, 23, e);
    assert_eq!(io.rte(23), e);
    assert_eq!(read(&io, REG_REDTBL + 46), e as u32);
    assert_eq!(read(&io, REG_REDTBL + 47), (e >> 32) as u32);
}

#[test]
fn read_only_bits_survive_writes() {
    let sink = Recorder::default();
    let mut io = Ioapic::new();
    program(&mut io, &sink, 3, rte(0x40, 1, true, false));
    io.set_line(3, true, &sink);
    assert_ne!(io.rte(3) & RTE_REMOTE_IRR, 0);
    // The guest cannot clear remote IRR or set delivery status by writing the low half.
    io.write_reg(
        REG_REDTBL + 6,
        (rte(0x40, 1, true, false) | RTE_DELIVERY_STATUS) as u32,
        &sink,
    );
    assert_ne!(io.rte(3) & RTE_REMOTE_IRR, 0);
    assert_eq!(io.rte(3) & RTE_DELIVERY_STATUS, 0);
    // Switching the entry to edge clears remote IRR.
    io.write_reg(REG_REDTBL + 6, 0x40, &sink);
    assert_eq!(io.rte(3) & RTE_REMOTE_IRR, 0);
}

#[test]
fn msi_carries_the_extended_destination() {
    // dest 433 = 0x1B1: low byte 0xB1 in address_lo[19:12], 0x100 in address_hi[31:8].
    let m = Msi::from_rte(rte(0x31, 433, false, false));
    assert_eq!(m.address_lo, 0xFEEB_1000);
    assert_eq!(m.address_hi, 0x100);
    assert_eq!(m.data, 0x31);
    assert_eq!(m.dest(), 433);
    assert_eq!(m.vector(), 0x31);
    // The largest extended destination (15 bits).
    let m = Msi::from_rte(rte(0xEF, 0x7FFF, false, false));
    assert_eq!(m.dest(), 0x7FFF);
    assert_eq!(m.address_hi & 0xFF, 0, "KVM rejects address_hi[7:0] != 0");
    assert_eq!(m.address_lo & 0xFE0, 0, "bits 11:5 moved to address_hi");
    // xAPIC destinations leave address_hi zero.
    assert_eq!(Msi::from_rte(rte(0x30, 0xFE, false, false)).address_hi, 0);
    // Level, logical, fixed vs lowest priority.
    let m = Msi::from_rte(rte(0x41, 2, true, false) | RTE_DEST_LOGICAL | (1 << 8));
    assert_eq!(m.address_lo, 0xFEE0_2004);
    assert_eq!(
        m.data,
        0x41 | (1 << 8) | MSI_DATA_LEVEL | MSI_DATA_LEVEL_ASSERT
    );
    // NMI delivery mode carries over.
    assert_eq!(Msi::from_rte(4 << 8).data, 4 << 8);
}

#[test]
fn edge_pins_deliver_on_rising_edges_only_when_unmasked() {
    let sink = Recorder::default();
    let mut io = Ioapic::new();
    // Masked at reset: an edge is lost.
    io.pulse(4, &sink);
    assert!(sink.take().is_empty());
    program(&mut io, &sink, 4, rte(0x24, 300, false, false));
    // Unmasking does not replay the lost edge.
    assert!(sink.take().is_empty());
    io.pulse(4, &sink);
    io.pulse(4, &sink);
    let got = sink.take();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|m| m.dest() == 300 && m.vector() == 0x24));
    // A held line is one edge.
    io.set_line(4, true, &sink);
    io.set_line(4, true, &sink);
    assert_eq!(sink.take().len(), 1);
    io.set_line(4, false, &sink);
    // Edge entries never set remote IRR, and EOI does nothing for them.
    assert_eq!(io.rte(4) & RTE_REMOTE_IRR, 0);
    io.eoi(0x24, &sink);
    assert!(sink.take().is_empty());
    // Masked again: edges are dropped.
    program(&mut io, &sink, 4, rte(0x24, 300, false, true));
    io.pulse(4, &sink);
    assert!(sink.take().is_empty());
    // Out-of-range pins are ignored.
    io.pulse(IOAPIC_PINS, &sink);
    assert!(sink.take().is_empty());
}

#[test]
fn level_pins_hold_remote_irr_until_eoi() {
    let sink = Recorder::default();
    let mut io = Ioapic::new();
    program(&mut io, &sink, 9, rte(0x59, 260, true, false));
    io.set_line(9, true, &sink);
    assert_eq!(sink.take().len(), 1);
    assert_ne!(io.rte(9) & RTE_REMOTE_IRR, 0);
    // Still asserted, but remote IRR blocks another delivery.
    io.set_line(9, true, &sink);
    assert!(sink.take().is_empty());
    // EOI of another vector changes nothing.
    io.eoi(0x58, &sink);
    assert!(sink.take().is_empty());
    assert_ne!(io.rte(9) & RTE_REMOTE_IRR, 0);
    // EOI while the line is still asserted: delivered again, remote IRR set again.
    io.eoi(0x59, &sink);
    let got = sink.take();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].data & MSI_DATA_LEVEL, MSI_DATA_LEVEL);
    assert_ne!(io.rte(9) & RTE_REMOTE_IRR, 0);
    // Deassert, then EOI through the EOI register: remote IRR clears, nothing is sent.
    io.set_line(9, false, &sink);
    io.mmio_write(IOEOI, &0x59u32.to_le_bytes(), &sink);
    assert!(sink.take().is_empty());
    assert_eq!(io.rte(9) & RTE_REMOTE_IRR, 0);
}

#[test]
fn refused_level_messages_leave_remote_irr_clear() {
    let sink = Recorder::default();
    sink.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut io = Ioapic::new();
    program(&mut io, &sink, 5, rte(0x45, 300, true, false));
    io.set_line(5, true, &sink);
    assert_eq!(sink.take().len(), 1);
    assert_eq!(
        io.rte(5) & RTE_REMOTE_IRR,
        0,
        "nobody accepted it: no EOI will come"
    );
}

#[test]
fn masked_level_pins_deliver_on_unmask() {
    let sink = Recorder::default();
    let mut io = Ioapic::new();
    program(&mut io, &sink, 10, rte(0x5A, 7, true, true));
    io.set_line(10, true, &sink);
    assert!(sink.take().is_empty());
    assert_eq!(io.rte(10) & RTE_REMOTE_IRR, 0);
    // Unmask (low half write) while asserted: delivered once.
    io.write_reg(REG_REDTBL + 20, rte(0x5A, 7, true, false) as u32, &sink);
    let got = sink.take();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].dest(), 7);
}

#[test]
fn routes_follow_unmasked_entries() {
    let sink = Recorder::default();
    let mut io = Ioapic::new();
    program(&mut io, &sink, 4, rte(0x24, 433, false, false));
    program(&mut io, &sink, 9, rte(0x59, 1, true, false));
    let pushes = sink.routes.lock().unwrap().clone();
    let last = pushes.last().unwrap();
    assert_eq!(
        last,
        &vec![
            (4, Msi::from_rte(rte(0x24, 433, false, false))),
            (9, Msi::from_rte(rte(0x59, 1, true, false))),
        ]
    );
    // Rewriting the same values pushes nothing new.
    let n = pushes.len();
    program(&mut io, &sink, 9, rte(0x59, 1, true, false));
    assert_eq!(sink.routes.lock().unwrap().len(), n);
    // Masking drops the route.
    program(&mut io, &sink, 4, rte(0x24, 433, false, true));
    assert_eq!(
        sink.routes.lock().unwrap().last().unwrap(),
        &vec![(9, Msi::from_rte(rte(0x59, 1, true, false)))]
    );
}

#[test]
fn device_maps_the_mmio_window() {
    struct Shared(Arc<Recorder>);
    impl MsiSink for Shared {
        fn signal(&self, msi: Msi) -> bool {
            self.0.signal(msi)
        }
        fn set_routes(&self, routes: &[(u32, Msi)]) {
            self.0.set_routes(routes)
        }
    }
    let rec = Arc::new(Recorder::default());
    let dev = IoapicDevice::new(Box::new(Shared(rec.clone())));
    assert!(IoapicDevice::contains(IOAPIC_GPA + IOWIN));
    assert!(!IoapicDevice::contains(IOAPIC_GPA + IOAPIC_MMIO_LEN));
    let e = rte(0x33, 300, false, false);
    dev.mmio_write(IOAPIC_GPA, &(REG_REDTBL + 9).to_le_bytes());
    dev.mmio_write(IOAPIC_GPA + IOWIN, &((e >> 32) as u32).to_le_bytes());
    dev.mmio_write(IOAPIC_GPA, &(REG_REDTBL + 8).to_le_bytes());
    dev.mmio_write(IOAPIC_GPA + IOWIN, &(e as u32).to_le_bytes());
    let mut b = [0u8; 4];
    dev.mmio_read(IOAPIC_GPA + IOWIN, &mut b);
    assert_eq!(u32::from_le_bytes(b), e as u32);
    dev.pulse(4);
    dev.set_line(4, true);
    dev.eoi(0x33);
    assert_eq!(rec.take().len(), 2);
    assert_eq!(dev.snapshot().rte(4), e);
}
