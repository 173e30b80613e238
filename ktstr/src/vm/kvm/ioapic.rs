//! A userspace IOAPIC for split-irqchip VMs (x2APIC shapes, vmm.md §0 and §12.4).
//!
//! With `KVM_CAP_SPLIT_IRQCHIP` the LAPICs stay in KVM but the IOAPIC (and PIC/PIT) do not:
//! the guest's MMIO accesses to 0xFEC00000 exit to the VMM, which keeps the 24 redirection
//! table entries (RTEs) here. A raised pin is turned into an MSI and injected with
//! `KVM_SIGNAL_MSI`; level-triggered pins keep their remote IRR until the guest's EOI, which
//! KVM reports as `KVM_EXIT_IOAPIC_EOI` (or the guest writes the EOI register, version 0x20).
//!
//! **Destinations above 255.** Linux programs APIC IDs up to 32767 without interrupt
//! remapping when the hypervisor advertises `KVM_FEATURE_MSI_EXT_DEST_ID`: bits 8..14 of the
//! destination go into RTE bits 55:49 (the same bits as MSI address bits 11:5). KVM itself
//! does not decode those bits; with `KVM_X2APIC_API_USE_32BIT_IDS` it takes destination bits
//! 31:8 from the MSI's `address_hi` bits 31:8 instead. [`Msi::from_rte`] does that translation.
//!
//! **Routes.** KVM learns which vectors need an EOI exit from the GSI routing table (its first
//! 24 MSI routes, `kvm_scan_ioapic_routes`), so every unmasked pin also gets an MSI route on
//! GSI = pin, pushed through [`MsiSink::set_routes`] whenever the set changes. Delivery itself
//! never uses the routes.
//!
//! [`Ioapic`] is the pure register/state machine; [`IoapicDevice`] puts it behind a lock with
//! its sink for the vCPU threads and the serial device.

use std::sync::{Arc, Mutex, MutexGuard};

/// Guest-physical base of the IOAPIC's MMIO window.
pub const IOAPIC_GPA: u64 = 0xFEC0_0000;
/// Size of the MMIO window the VMM claims.
pub const IOAPIC_MMIO_LEN: u64 = 0x1000;
/// Redirection entries (and GSIs 0..23 reserved with `KVM_CAP_SPLIT_IRQCHIP`).
pub const IOAPIC_PINS: usize = 24;
/// IOAPIC version: 0x20 has the EOI register at offset 0x40.
pub const IOAPIC_VERSION: u32 = 0x20;

/// MMIO offset of IOREGSEL (register index).
pub const IOREGSEL: u64 = 0x00;
/// MMIO offset of IOWIN (data window of the selected register).
pub const IOWIN: u64 = 0x10;
/// MMIO offset of the EOI register (version 0x20): writing a vector EOIs its level pins.
pub const IOEOI: u64 = 0x40;

/// Register index: IOAPIC ID (bits 27:24).
pub const REG_ID: u32 = 0x00;
/// Register index: version and max redirection entry.
pub const REG_VER: u32 = 0x01;
/// Register index: arbitration ID.
pub const REG_ARB: u32 = 0x02;
/// Register index of the first RTE's low half; RTE n is at 0x10 + 2n (low), 0x11 + 2n (high).
pub const REG_REDTBL: u32 = 0x10;

/// RTE bit 11: logical destination mode.
pub const RTE_DEST_LOGICAL: u64 = 1 << 11;
/// RTE bit 12: delivery status (read-only; always idle here, delivery is immediate).
pub const RTE_DELIVERY_STATUS: u64 = 1 << 12;
/// RTE bit 13: active low.
pub const RTE_ACTIVE_LOW: u64 = 1 << 13;
/// RTE bit 14: remote IRR (read-only): a level interrupt was delivered and awaits its EOI.
pub const RTE_REMOTE_IRR: u64 = 1 << 14;
/// RTE bit 15: level triggered.
pub const RTE_LEVEL: u64 = 1 << 15;
/// RTE bit 16: masked.
pub const RTE_MASKED: u64 = 1 << 16;
/// Bits the guest cannot write.
const RTE_READ_ONLY: u64 = RTE_DELIVERY_STATUS | RTE_REMOTE_IRR;
/// RTE bits 55:49: destination bits 14:8 (Linux's `virt_destid_8_14`).
const RTE_EXT_DEST_SHIFT: u32 = 49;
/// RTE bits 63:56: destination bits 7:0.
const RTE_DEST_SHIFT: u32 = 56;

/// MSI address base (0xFEE).
pub const MSI_ADDR_BASE: u32 = 0xFEE0_0000;
/// MSI data bit 14: assert (level-triggered messages).
pub const MSI_DATA_LEVEL_ASSERT: u32 = 1 << 14;
/// MSI data bit 15: level triggered.
pub const MSI_DATA_LEVEL: u32 = 1 << 15;

/// One message-signalled interrupt in KVM's x2APIC format (`KVM_X2APIC_API_USE_32BIT_IDS`):
/// destination bits 7:0 in `address_lo` bits 19:12, bits 31:8 in `address_hi` bits 31:8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Msi {
    /// 0xFEE00000 | dest\[7:0\] << 12 | logical << 2.
    pub address_lo: u32,
    /// dest\[31:8\] << 8 (bits 7:0 stay zero, or KVM rejects the message).
    pub address_hi: u32,
    /// vector | delivery mode << 8 | assert << 14 | level << 15.
    pub data: u32,
}

impl Msi {
    /// The message an RTE sends: destination = RTE\[63:56\] | RTE\[55:49\] << 8 (extended
    /// destination ID), vector, delivery mode, destination mode and trigger mode carried over.
    pub fn from_rte(rte: u64) -> Msi {
        let dest = ((rte >> RTE_DEST_SHIFT) & 0xFF) as u32
            | ((((rte >> RTE_EXT_DEST_SHIFT) & 0x7F) as u32) << 8);
        let logical = rte & RTE_DEST_LOGICAL != 0;
        let level = rte & RTE_LEVEL != 0;
        let mut data = (rte & 0x7FF) as u32; // vector and delivery mode
        if level {
            data |= MSI_DATA_LEVEL | MSI_DATA_LEVEL_ASSERT;
        }
        Msi {
            address_lo: MSI_ADDR_BASE | ((dest & 0xFF) << 12) | ((logical as u32) << 2),
            address_hi: dest & !0xFF,
            data,
        }
    }

    /// The destination APIC ID this message targets (KVM's reading of it).
    pub fn dest(&self) -> u32 {
        ((self.address_lo >> 12) & 0xFF) | (self.address_hi & !0xFF)
    }

    /// The vector.
    pub fn vector(&self) -> u8 {
        self.data as u8
    }
}

/// Where the IOAPIC's messages go: KVM (`KVM_SIGNAL_MSI`, `KVM_SET_GSI_ROUTING`) or, in unit
/// tests, a recorder.
pub trait MsiSink: Send + Sync {
    /// Injects one message now; returns whether a LAPIC accepted it.
    fn signal(&self, msi: Msi) -> bool;
    /// Replaces the GSI routing table: `(gsi, message)` per unmasked pin.
    fn set_routes(&self, routes: &[(u32, Msi)]);
}

/// The IOAPIC's registers and pin state.
#[derive(Debug, Clone)]
pub struct Ioapic {
    id: u32,
    ioregsel: u32,
    rte: [u64; IOAPIC_PINS],
    /// Bit n: pin n's input line is asserted.
    lines: u32,
    /// The routes last pushed to the sink.
    routes: Option<Vec<(u32, Msi)>>,
}

impl Default for Ioapic {
    fn default() -> Self {
        Self::new()
    }
}

impl Ioapic {
    /// An IOAPIC in its reset state: id 0, every entry masked.
    pub fn new() -> Self {
        Ioapic {
            id: 0,
            ioregsel: 0,
            rte: [RTE_MASKED; IOAPIC_PINS],
            lines: 0,
            routes: None,
        }
    }

    /// Redirection entry `pin` (tests and diagnostics).
    pub fn rte(&self, pin: usize) -> u64 {
        self.rte[pin]
    }

    /// Reads register `index` (the value IOWIN shows when IOREGSEL = index).
    pub fn read_reg(&self, index: u32) -> u32 {
        match index {
            REG_ID => self.id << 24,
            REG_VER => ((IOAPIC_PINS as u32 - 1) << 16) | IOAPIC_VERSION,
            REG_ARB => self.id << 24,
            i if (REG_REDTBL..REG_REDTBL + 2 * IOAPIC_PINS as u32).contains(&i) => {
                let e = self.rte[((i - REG_REDTBL) / 2) as usize];
                if i & 1 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    /// Writes register `index`. RTE writes keep the read-only bits, clear remote IRR when the
    /// entry becomes edge-triggered, refresh the routes, and deliver a level pin that is
    /// still asserted once it is unmasked.
    pub fn write_reg(&mut self, index: u32, value: u32, sink: &dyn MsiSink) {
        match index {
            REG_ID => self.id = (value >> 24) & 0xF,
            i if (REG_REDTBL..REG_REDTBL + 2 * IOAPIC_PINS as u32).contains(&i) => {
                let pin = ((i - REG_REDTBL) / 2) as usize;
                let old = self.rte[pin];
                let mut e = if i & 1 == 0 {
                    (old & !0xFFFF_FFFF) | (value as u64 & !RTE_READ_ONLY) | (old & RTE_READ_ONLY)
                } else {
                    (old & 0xFFFF_FFFF) | ((value as u64) << 32)
                };
                if e & RTE_LEVEL == 0 {
                    e &= !RTE_REMOTE_IRR;
                }
                self.rte[pin] = e;
                self.sync_routes(sink);
                if e & RTE_LEVEL != 0 {
                    self.service_level(pin, sink);
                }
            }
            // Version and arbitration are read-only; other indexes do not exist.
            _ => {}
        }
    }

    /// An MMIO read at `offset` into the window. Registers are 32 bits; narrower reads get
    /// the addressed bytes.
    pub fn mmio_read(&self, offset: u64, data: &mut [u8]) {
        let reg = offset & !3;
        let v = match reg {
            IOREGSEL => self.ioregsel,
            IOWIN => self.read_reg(self.ioregsel),
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        let start = (offset & 3) as usize;
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(start + i).copied().unwrap_or(0);
        }
    }

    /// An MMIO write at `offset`: IOREGSEL, IOWIN or the EOI register.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8], sink: &dyn MsiSink) {
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(b);
        match offset {
            IOREGSEL => self.ioregsel = v & 0xFF,
            IOWIN => self.write_reg(self.ioregsel, v, sink),
            IOEOI => self.eoi(v as u8, sink),
            _ => {}
        }
    }

    /// Sets pin `pin`'s input line. Edge-triggered pins deliver on a rising edge if unmasked
    /// (an edge on a masked pin is lost, as on the 82093AA); level-triggered pins deliver
    /// while asserted, unmasked and without a pending remote IRR.
    pub fn set_line(&mut self, pin: usize, asserted: bool, sink: &dyn MsiSink) {
        if pin >= IOAPIC_PINS {
            return;
        }
        let bit = 1u32 << pin;
        let was = self.lines & bit != 0;
        if asserted {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        let e = self.rte[pin];
        if e & RTE_LEVEL != 0 {
            self.service_level(pin, sink);
        } else if asserted && !was && e & RTE_MASKED == 0 {
            sink.signal(Msi::from_rte(e));
        }
    }

    /// Raises and lowers `pin`: one edge (how ISA devices such as the UART signal).
    pub fn pulse(&mut self, pin: usize, sink: &dyn MsiSink) {
        self.set_line(pin, true, sink);
        self.set_line(pin, false, sink);
    }

    /// The guest EOIed `vector`: clear remote IRR of the level entries with that vector and
    /// deliver again those whose line is still asserted.
    pub fn eoi(&mut self, vector: u8, sink: &dyn MsiSink) {
        for pin in 0..IOAPIC_PINS {
            let e = self.rte[pin];
            if e as u8 == vector && e & RTE_REMOTE_IRR != 0 {
                self.rte[pin] = e & !RTE_REMOTE_IRR;
                self.service_level(pin, sink);
            }
        }
    }

    /// Delivers an asserted, unmasked level pin without pending EOI. Remote IRR is set only
    /// if a LAPIC accepted the message (as KVM's in-kernel IOAPIC does): a message to a
    /// disabled or absent APIC must not block the pin forever.
    fn service_level(&mut self, pin: usize, sink: &dyn MsiSink) {
        let e = self.rte[pin];
        if self.lines & (1 << pin) != 0
            && e & (RTE_MASKED | RTE_REMOTE_IRR) == 0
            && sink.signal(Msi::from_rte(e))
        {
            self.rte[pin] = e | RTE_REMOTE_IRR;
        }
    }

    /// `(gsi, message)` for every unmasked pin, GSI = pin.
    pub fn routes(&self) -> Vec<(u32, Msi)> {
        (0..IOAPIC_PINS)
            .filter(|p| self.rte[*p] & RTE_MASKED == 0)
            .map(|p| (p as u32, Msi::from_rte(self.rte[p])))
            .collect()
    }

    fn sync_routes(&mut self, sink: &dyn MsiSink) {
        let r = self.routes();
        if self.routes.as_ref() != Some(&r) {
            sink.set_routes(&r);
            self.routes = Some(r);
        }
    }
}

/// An [`Ioapic`] shared by the vCPU threads (MMIO and EOI exits) and devices (pins).
pub struct IoapicDevice {
    state: Mutex<Ioapic>,
    sink: Box<dyn MsiSink>,
}

impl std::fmt::Debug for IoapicDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoapicDevice")
            .field("state", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl IoapicDevice {
    /// A reset IOAPIC delivering to `sink`.
    pub fn new(sink: Box<dyn MsiSink>) -> Arc<Self> {
        Arc::new(IoapicDevice {
            state: Mutex::new(Ioapic::new()),
            sink,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Ioapic> {
        // A poisoned lock still holds consistent registers: every update is a plain store.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `gpa` falls in the MMIO window.
    pub fn contains(gpa: u64) -> bool {
        (IOAPIC_GPA..IOAPIC_GPA + IOAPIC_MMIO_LEN).contains(&gpa)
    }

    /// MMIO read at guest-physical `gpa` (inside the window).
    pub fn mmio_read(&self, gpa: u64, data: &mut [u8]) {
        self.lock().mmio_read(gpa - IOAPIC_GPA, data);
    }

    /// MMIO write at guest-physical `gpa` (inside the window).
    pub fn mmio_write(&self, gpa: u64, data: &[u8]) {
        self.lock()
            .mmio_write(gpa - IOAPIC_GPA, data, self.sink.as_ref());
    }

    /// One edge on `pin`.
    pub fn pulse(&self, pin: usize) {
        self.lock().pulse(pin, self.sink.as_ref());
    }

    /// Sets `pin`'s line level.
    pub fn set_line(&self, pin: usize, asserted: bool) {
        self.lock().set_line(pin, asserted, self.sink.as_ref());
    }

    /// `KVM_EXIT_IOAPIC_EOI` for `vector`.
    pub fn eoi(&self, vector: u8) {
        self.lock().eoi(vector, self.sink.as_ref());
    }

    /// A copy of the registers.
    pub fn snapshot(&self) -> Ioapic {
        self.lock().clone()
    }
}

#[cfg(test)]
#[path = "ioapic_tests.rs"]
mod tests;
