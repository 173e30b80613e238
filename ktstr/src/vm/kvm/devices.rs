//! Port-I/O devices (vmm.md §5, §7): the COM1 16550 (vm-superio; its IRQ goes through an irqfd
//! on GSI 4 with the in-kernel irqchip, or to pin 4 of the userspace IOAPIC with a split
//! irqchip), the exit port 0xF4, the i8042 reset line, and the all-ones answer for everything
//! else. With a split irqchip the IOAPIC's MMIO window is served here too. The console is kept
//! (its tail) for failure reports and scanned for kernel panics.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::ioapic::IoapicDevice;
use super::virtio_blk::VirtioBlk;
use crate::vm::console::Console;
use crate::vm::VmEnd;

/// COM1 base port.
pub const COM1_PORT: u16 = 0x3F8;
/// COM1's GSI.
pub const COM1_GSI: u32 = 4;
/// isa-debug-exit style port: a byte written here ends the VM with that status.
pub use crate::protocol::EXIT_PORT;
/// i8042 data port.
pub const I8042_DATA: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_CMD: u16 = 0x64;
/// i8042 command that pulses the CPU reset line.
pub const I8042_RESET: u8 = 0xFE;
/// 8259 master command port.
pub const PIC_MASTER: u16 = 0x20;
/// 8259 master data port (IMR).
pub const PIC_MASTER_IMR: u16 = 0x21;
/// 8259 slave command port.
pub const PIC_SLAVE: u16 = 0xA0;
/// 8259 slave data port (IMR).
pub const PIC_SLAVE_IMR: u16 = 0xA1;

/// How a device raises its (edge-triggered ISA) interrupt.
#[derive(Debug)]
pub enum IrqLine {
    /// An eventfd registered with KVM_IRQFD (in-kernel irqchip).
    Irqfd(EventFd),
    /// A pin of the userspace IOAPIC (split irqchip): an irqfd cannot reach it, so the
    /// device's own code path pulses the pin.
    Ioapic {
        /// The IOAPIC.
        ioapic: Arc<IoapicDevice>,
        /// Its input pin (= GSI).
        pin: usize,
    },
}

impl Trigger for IrqLine {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        match self {
            IrqLine::Irqfd(fd) => fd.write(1),
            IrqLine::Ioapic { ioapic, pin } => {
                ioapic.pulse(*pin);
                Ok(())
            }
        }
    }
}

/// The 16550 type used for COM1.
pub type Com1 = Serial<IrqLine, vm_superio::serial::NoEvents, Console>;

/// All emulated devices of a VM, shared by the vCPU threads.
#[derive(Debug)]
pub struct Devices {
    serial: Mutex<Com1>,
    console: Console,
    ioapic: Option<Arc<IoapicDevice>>,
    disk: Option<Mutex<VirtioBlk>>,
}

impl Devices {
    /// COM1 raising `irq` and writing to `console`; `ioapic` is the userspace IOAPIC of a
    /// split-irqchip VM (`None` with the in-kernel irqchip).
    pub fn new(irq: IrqLine, console: Console, ioapic: Option<Arc<IoapicDevice>>) -> Self {
        Devices {
            serial: Mutex::new(Serial::new(irq, console.clone())),
            console,
            ioapic,
            disk: None,
        }
    }

    /// Adds the virtio-mmio disk (`shell --disk`).
    pub fn with_disk(mut self, disk: VirtioBlk) -> Self {
        self.disk = Some(Mutex::new(disk));
        self
    }

    fn disk_at(&self, gpa: u64) -> Option<MutexGuard<'_, VirtioBlk>> {
        let d = self.disk.as_ref().filter(|_| VirtioBlk::contains(gpa))?;
        Some(d.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Handles an MMIO read exit: the disk's registers, the IOAPIC window if there is a
    /// userspace IOAPIC, else all ones (nothing is there).
    pub fn mmio_read(&self, gpa: u64, data: &mut [u8]) {
        if let Some(d) = self.disk_at(gpa) {
            return d.read(gpa, data);
        }
        match &self.ioapic {
            Some(io) if IoapicDevice::contains(gpa) => io.mmio_read(gpa, data),
            _ => data.fill(0xFF),
        }
    }

    /// Handles an MMIO write exit (dropped outside the disk's and the IOAPIC's windows).
    pub fn mmio_write(&self, gpa: u64, data: &[u8]) {
        if let Some(mut d) = self.disk_at(gpa) {
            return d.write(gpa, data);
        }
        if let Some(io) = &self.ioapic {
            if IoapicDevice::contains(gpa) {
                io.mmio_write(gpa, data);
            }
        }
    }

    /// Handles `KVM_EXIT_IOAPIC_EOI` (split irqchip only).
    pub fn ioapic_eoi(&self, vector: u8) {
        if let Some(io) = &self.ioapic {
            io.eoi(vector);
        }
    }

    /// The console sink.
    pub fn console(&self) -> &Console {
        &self.console
    }

    fn serial(&self) -> MutexGuard<'_, Com1> {
        self.serial.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds host input to the guest's serial port; returns how many bytes fitted.
    pub fn serial_input(&self, bytes: &[u8]) -> usize {
        self.serial().enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Handles an IO_IN exit. Every byte of `data` is written (stale `kvm_run` bytes would
    /// otherwise reach the guest).
    pub fn io_in(&self, port: u16, data: &mut [u8]) {
        match port {
            COM1_PORT..=0x3FF if data.len() == 1 => {
                data[0] = self.serial().read((port - COM1_PORT) as u8);
            }
            // Reads as "no data, input buffer empty", so kb_wait() on the reboot path returns.
            I8042_DATA | I8042_CMD => data.fill(0),
            // Split irqchip: there is no 8259. An IMR that does not read back the 0xFF Linux
            // wrote makes probe_8259A() pick the NULL legacy PIC, so no ISA IRQ is routed or
            // acked through a PIC that is not there (all 0xFF would look like a PIC with
            // every IRQ pending).
            PIC_MASTER..=PIC_MASTER_IMR | PIC_SLAVE..=PIC_SLAVE_IMR if self.ioapic.is_some() => {
                data.fill(0)
            }
            _ => data.fill(0xFF),
        }
    }

    /// Handles an IO_OUT exit; returns how the VM ends if this write ends it.
    pub fn io_out(&self, port: u16, data: &[u8]) -> Option<VmEnd> {
        match port {
            COM1_PORT..=0x3FF if data.len() == 1 => {
                // A failed IRQ trigger is not fatal: the guest sees a missing interrupt.
                let _ = self.serial().write((port - COM1_PORT) as u8, data[0]);
                None
            }
            EXIT_PORT => Some(VmEnd::GuestExit {
                status: data.first().copied().unwrap_or(0),
            }),
            I8042_CMD if data.first() == Some(&I8042_RESET) => Some(VmEnd::Reboot),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::kvm::ioapic::{Msi, MsiSink, IOAPIC_GPA, IOWIN};
    use crate::vm::{ConsoleMode, CONSOLE_TAIL_BYTES};
    use std::io::Write;

    fn devices() -> Devices {
        Devices::new(
            IrqLine::Irqfd(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            Console::new(ConsoleMode::Capture),
            None,
        )
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Msi>>);
    impl MsiSink for Arc<Recorder> {
        fn signal(&self, msi: Msi) -> bool {
            self.0.lock().unwrap().push(msi);
            true
        }
        fn set_routes(&self, _: &[(u32, Msi)]) {}
    }

    #[test]
    fn serial_interrupts_reach_the_userspace_ioapic() {
        let rec = Arc::new(Recorder::default());
        let io = IoapicDevice::new(Box::new(rec.clone()));
        let d = Devices::new(
            IrqLine::Ioapic {
                ioapic: io.clone(),
                pin: COM1_GSI as usize,
            },
            Console::new(ConsoleMode::Capture),
            Some(io.clone()),
        );
        // Pin 4 -> vector 0x24 on APIC 433, as Linux programs it (destination bits 14:8 in
        // RTE bits 55:49), through the MMIO window.
        let rte: u64 = 0x24 | (0xB1 << 56) | (1 << 49);
        for (index, value) in [(0x19u32, (rte >> 32) as u32), (0x18, rte as u32)] {
            d.mmio_write(IOAPIC_GPA, &index.to_le_bytes());
            d.mmio_write(IOAPIC_GPA + IOWIN, &value.to_le_bytes());
        }
        let mut v = [0u8; 4];
        d.mmio_read(IOAPIC_GPA + IOWIN, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x24);
        // IER = THRE interrupt, then a byte: vm-superio raises THRE.
        d.io_out(COM1_PORT + 1, &[0x02]);
        d.io_out(COM1_PORT, b"x");
        let got = rec.0.lock().unwrap().clone();
        assert!(!got.is_empty());
        assert!(got.iter().all(|m| m.dest() == 433 && m.vector() == 0x24));
        // Outside the window: all ones, writes dropped.
        let mut b = [0u8; 2];
        d.mmio_read(0xC000_0000, &mut b);
        assert_eq!(b, [0xFF; 2]);
        d.ioapic_eoi(0x24);
        // Without an IOAPIC, its window reads all ones too.
        let mut b = [0u8; 4];
        devices().mmio_read(IOAPIC_GPA, &mut b);
        assert_eq!(b, [0xFF; 4]);
        // No PIC with the split irqchip: the IMR does not read back 0xFF.
        for port in [PIC_MASTER_IMR, PIC_SLAVE_IMR, PIC_MASTER] {
            d.io_out(port, &[0xFF]);
            let mut v = [7u8];
            d.io_in(port, &mut v);
            assert_eq!(v, [0], "port {port:#x}");
        }
    }

    #[test]
    fn ports() {
        let d = devices();
        let mut b = [7u8; 4];
        d.io_in(0x80, &mut b);
        assert_eq!(b, [0xFF; 4]);
        let mut b = [7u8; 1];
        d.io_in(I8042_CMD, &mut b);
        assert_eq!(b, [0]);
        d.io_in(I8042_DATA, &mut b);
        assert_eq!(b, [0]);
        assert_eq!(
            d.io_out(EXIT_PORT, &[3]),
            Some(VmEnd::GuestExit { status: 3 })
        );
        assert_eq!(d.io_out(I8042_CMD, &[I8042_RESET]), Some(VmEnd::Reboot));
        assert_eq!(d.io_out(I8042_CMD, &[0xAD]), None);
        assert_eq!(d.io_out(0x80, &[1]), None);
        // LSR: transmitter empty once the UART exists.
        let mut lsr = [0u8];
        d.io_in(COM1_PORT + 5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
    }

    #[test]
    fn console_keeps_the_tail_and_spots_panics() {
        let d = devices();
        for b in b"hello\n[ 1.0] Kernel panic - not syncing: Attempted to kill init!\nmore" {
            d.io_out(COM1_PORT, &[*b]);
        }
        let st = d.console().state();
        assert!(st.tail().starts_with("hello\n"));
        assert_eq!(
            st.panic().unwrap().0,
            "Kernel panic - not syncing: Attempted to kill init!"
        );
        drop(st);
        let mut w = d.console().clone();
        w.write_all(&vec![b'x'; CONSOLE_TAIL_BYTES + 10]).unwrap();
        let tail = d.console().state().tail();
        assert_eq!(tail.len(), CONSOLE_TAIL_BYTES);
        assert!(tail.chars().all(|c| c == 'x'));
    }
}
