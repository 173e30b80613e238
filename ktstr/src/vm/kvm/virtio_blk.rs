//! A virtio block device on the virtio-mmio transport (version 2), for `shell --disk`: the
//! guest sees a raw disk at `/dev/vda` backed by a host file.
//!
//! Why virtio-mmio and not virtio-pci: the in-process VMM has no PCI bus (`pci=off`), and
//! virtio-mmio needs only a 4 KiB register window, one interrupt line and a kernel
//! command-line word (`virtio_mmio.device=4K@BASE:GSI`, which ktstr's kernels enable with
//! `VIRTIO_MMIO_CMDLINE_DEVICES`). The virtqueue itself is rust-vmm's `virtio-queue`; this
//! module adds the transport's registers and the block requests.
//!
//! Requests are served synchronously in the vCPU thread that writes QueueNotify: a shell's
//! disk is small and serial, and no I/O thread means nothing to stop at teardown.

use std::fs::File;
use std::os::unix::fs::FileExt;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};
use vm_superio::Trigger;

use super::devices::IrqLine;

/// Guest-physical base of the register window (in the 32-bit hole below the IOAPIC).
pub const MMIO_BASE: u64 = 0xD000_0000;
/// Size of the register window.
pub const MMIO_SIZE: u64 = 0x1000;
/// The device's interrupt (an ISA line no other device of the VMM uses).
pub const GSI: u32 = 5;

/// The kernel command-line word that declares the device.
pub fn cmdline_word() -> String {
    format!("virtio_mmio.device=4K@{MMIO_BASE:#x}:{GSI}")
}

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// The virtio-mmio version with modern (VERSION_1) semantics.
const VERSION: u32 = 2;
/// Virtio device type: block.
const DEVICE_BLOCK: u32 = 2;
/// "KTST".
const VENDOR: u32 = 0x5453_544B;
/// VIRTIO_F_VERSION_1.
const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_BLK_F_FLUSH.
const F_FLUSH: u64 = 1 << 9;
/// Largest queue the device offers.
const QUEUE_MAX: u16 = 256;
/// Bytes per sector in requests and the capacity field.
const SECTOR: u64 = 512;
/// The serial `GET_ID` returns (at most 20 bytes).
const DISK_ID: &[u8] = b"ktstr-disk";
/// Bytes copied between the file and guest memory at a time.
const COPY_CHUNK: usize = 64 << 10;

// Register offsets (virtio 1.2, §4.2.2).
const R_MAGIC: u64 = 0x000;
const R_VERSION: u64 = 0x004;
const R_DEVICE_ID: u64 = 0x008;
const R_VENDOR_ID: u64 = 0x00C;
const R_DEVICE_FEATURES: u64 = 0x010;
const R_DEVICE_FEATURES_SEL: u64 = 0x014;
const R_DRIVER_FEATURES: u64 = 0x020;
const R_DRIVER_FEATURES_SEL: u64 = 0x024;
const R_QUEUE_SEL: u64 = 0x030;
const R_QUEUE_NUM_MAX: u64 = 0x034;
const R_QUEUE_NUM: u64 = 0x038;
const R_QUEUE_READY: u64 = 0x044;
const R_QUEUE_NOTIFY: u64 = 0x050;
const R_INTERRUPT_STATUS: u64 = 0x060;
const R_INTERRUPT_ACK: u64 = 0x064;
const R_STATUS: u64 = 0x070;
const R_QUEUE_DESC_LOW: u64 = 0x080;
const R_QUEUE_DESC_HIGH: u64 = 0x084;
const R_QUEUE_DRIVER_LOW: u64 = 0x090;
const R_QUEUE_DRIVER_HIGH: u64 = 0x094;
const R_QUEUE_DEVICE_LOW: u64 = 0x0A0;
const R_QUEUE_DEVICE_HIGH: u64 = 0x0A4;
const R_CONFIG_GENERATION: u64 = 0x0FC;
const R_CONFIG: u64 = 0x100;

// Block request types and statuses (virtio 1.2, §5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;

/// InterruptStatus bit: the used ring changed.
const INT_USED_RING: u32 = 1;

/// The device: transport registers, the one request queue, the backing file.
#[derive(Debug)]
pub struct VirtioBlk {
    file: File,
    capacity: u64,
    mem: GuestMemoryMmap,
    irq: IrqLine,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queue: Queue,
    interrupt_status: u32,
}

impl VirtioBlk {
    /// A disk of `file`'s size (whole sectors), raising `irq`, with requests in `mem`.
    pub fn new(file: File, mem: GuestMemoryMmap, irq: IrqLine) -> std::io::Result<Self> {
        let capacity = file.metadata()?.len() / SECTOR * SECTOR;
        Ok(VirtioBlk {
            file,
            capacity,
            mem,
            irq,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queue: Queue::new(QUEUE_MAX).expect("QUEUE_MAX is a power of two"),
            interrupt_status: 0,
        })
    }

    /// Whether `gpa` is in the register window.
    pub fn contains(gpa: u64) -> bool {
        (MMIO_BASE..MMIO_BASE + MMIO_SIZE).contains(&gpa)
    }

    fn features() -> u64 {
        F_VERSION_1 | F_FLUSH
    }

    /// virtio_blk_config: capacity in sectors, then fields the offered features do not
    /// enable (zero).
    fn config(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[..8].copy_from_slice(&(self.capacity / SECTOR).to_le_bytes());
        c
    }

    /// A register read of `data.len()` bytes at `gpa`.
    pub fn read(&self, gpa: u64, data: &mut [u8]) {
        let off = gpa - MMIO_BASE;
        if off >= R_CONFIG {
            let cfg = self.config();
            for (i, b) in data.iter_mut().enumerate() {
                *b = cfg.get((off - R_CONFIG) as usize + i).copied().unwrap_or(0);
            }
            return;
        }
        let v: u32 = match off {
            R_MAGIC => MAGIC,
            R_VERSION => VERSION,
            R_DEVICE_ID => DEVICE_BLOCK,
            R_VENDOR_ID => VENDOR,
            R_DEVICE_FEATURES => match self.device_features_sel {
                0 => Self::features() as u32,
                1 => (Self::features() >> 32) as u32,
                _ => 0,
            },
            R_QUEUE_NUM_MAX if self.queue_sel == 0 => QUEUE_MAX.into(),
            R_QUEUE_READY => u32::from(self.queue_sel == 0 && self.queue.ready()),
            R_INTERRUPT_STATUS => self.interrupt_status,
            R_STATUS => self.status,
            R_CONFIG_GENERATION => 0,
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(4);
        data.fill(0);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    /// A register write at `gpa`.
    pub fn write(&mut self, gpa: u64, data: &[u8]) {
        let off = gpa - MMIO_BASE;
        if off >= R_CONFIG {
            return; // the block config is read-only for the features offered
        }
        let mut b = [0u8; 4];
        let n = data.len().min(4);
        b[..n].copy_from_slice(&data[..n]);
        let v = u32::from_le_bytes(b);
        let q0 = self.queue_sel == 0;
        match off {
            R_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            R_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            R_DRIVER_FEATURES => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xFFFF_FFFF) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xFFFF_FFFF) | (u64::from(v) << 32)
                }
                _ => {}
            },
            R_QUEUE_SEL => self.queue_sel = v,
            // A size that does not fit 16 bits is invalid: leave the queue unusable.
            R_QUEUE_NUM if q0 => self.queue.set_size(u16::try_from(v).unwrap_or(0)),
            R_QUEUE_READY if q0 => self.queue.set_ready(v == 1),
            R_QUEUE_DESC_LOW if q0 => self.queue.set_desc_table_address(Some(v), None),
            R_QUEUE_DESC_HIGH if q0 => self.queue.set_desc_table_address(None, Some(v)),
            R_QUEUE_DRIVER_LOW if q0 => self.queue.set_avail_ring_address(Some(v), None),
            R_QUEUE_DRIVER_HIGH if q0 => self.queue.set_avail_ring_address(None, Some(v)),
            R_QUEUE_DEVICE_LOW if q0 => self.queue.set_used_ring_address(Some(v), None),
            R_QUEUE_DEVICE_HIGH if q0 => self.queue.set_used_ring_address(None, Some(v)),
            R_QUEUE_NOTIFY if v == 0 => self.process_queue(),
            R_INTERRUPT_ACK => self.interrupt_status &= !v,
            R_STATUS if v == 0 => self.reset(),
            R_STATUS => self.status = v,
            _ => {}
        }
    }

    fn reset(&mut self) {
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.queue.reset();
        self.interrupt_status = 0;
    }

    /// Serves every request in the available ring, then interrupts once.
    fn process_queue(&mut self) {
        if !self.queue.ready() || !self.queue.is_valid(&self.mem) {
            return;
        }
        let mut served = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            let written = self.serve(&descs);
            if self.queue.add_used(&self.mem, head, written).is_err() {
                break;
            }
            served = true;
        }
        if served && self.queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt_status |= INT_USED_RING;
            let _ = self.irq.trigger();
        }
    }

    /// Serves one request (header, data buffers, status byte); returns the bytes written to
    /// the guest's buffers, the status byte included.
    fn serve(&self, descs: &[virtio_queue::desc::split::Descriptor]) -> u32 {
        let (Some(hdr), Some(status)) = (descs.first(), descs.last()) else {
            return 0;
        };
        if descs.len() < 2
            || hdr.is_write_only()
            || hdr.len() < 16
            || !status.is_write_only()
            || status.len() == 0
        {
            return 0; // malformed: nothing sensible to answer
        }
        let mut h = [0u8; 16];
        if self.mem.read_slice(&mut h, hdr.addr()).is_err() {
            return 0;
        }
        let kind = u32::from_le_bytes(h[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(h[8..16].try_into().unwrap());
        let data = &descs[1..descs.len() - 1];
        let (st, written) = match kind {
            T_IN | T_OUT => self.transfer(kind == T_IN, sector, data),
            T_FLUSH => (
                if self.file.sync_data().is_ok() {
                    S_OK
                } else {
                    S_IOERR
                },
                0,
            ),
            T_GET_ID => match data.first() {
                Some(d) if d.is_write_only() => {
                    // The serial is a 20-byte field, NUL-padded.
                    let mut id = [0u8; 20];
                    id[..DISK_ID.len()].copy_from_slice(DISK_ID);
                    let n = id.len().min(d.len() as usize);
                    match self.mem.write_slice(&id[..n], d.addr()) {
                        Ok(()) => (S_OK, n as u32),
                        Err(_) => (S_IOERR, 0),
                    }
                }
                _ => (S_IOERR, 0),
            },
            _ => (S_UNSUPP, 0),
        };
        // The status is the last byte of the device-writable part.
        if let Some(at) = status.addr().checked_add(u64::from(status.len()) - 1) {
            let _ = self.mem.write_slice(&[st], at);
        }
        written.saturating_add(1)
    }

    /// Reads (`to_guest`) or writes the data buffers at `sector`; returns the status and the
    /// bytes written to the guest.
    fn transfer(
        &self,
        to_guest: bool,
        sector: u64,
        data: &[virtio_queue::desc::split::Descriptor],
    ) -> (u8, u32) {
        let total: u64 = data.iter().map(|d| u64::from(d.len())).sum();
        let Some(start) = sector.checked_mul(SECTOR) else {
            return (S_IOERR, 0);
        };
        // The used length is a u32 (with the status byte): refuse anything that could not be
        // reported, as well as anything past the end of the disk.
        if total >= u64::from(u32::MAX)
            || start
                .checked_add(total)
                .is_none_or(|end| end > self.capacity)
        {
            return (S_IOERR, 0);
        }
        // Bounded copies: a guest-chosen length never sizes a host allocation.
        let mut buf = vec![0u8; COPY_CHUNK.min(total as usize)];
        let mut at = start;
        let mut written = 0u32;
        for d in data {
            // A read fills device-writable buffers; a write drains driver-readable ones.
            if d.is_write_only() != to_guest {
                return (S_IOERR, written);
            }
            let mut done = 0u64;
            while done < u64::from(d.len()) {
                let n = (u64::from(d.len()) - done).min(buf.len() as u64) as usize;
                let Some(addr) = d.addr().checked_add(done) else {
                    return (S_IOERR, written);
                };
                let piece = &mut buf[..n];
                let ok = if to_guest {
                    self.file.read_exact_at(piece, at).is_ok()
                        && self.mem.write_slice(piece, addr).is_ok()
                } else {
                    self.mem.read_slice(piece, addr).is_ok()
                        && self.file.write_all_at(piece, at).is_ok()
                };
                if !ok {
                    return (S_IOERR, written);
                }
                if to_guest {
                    written += n as u32;
                }
                done += n as u64;
                at += n as u64;
            }
        }
        (S_OK, written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn device(disk_bytes: u64) -> (VirtioBlk, GuestMemoryMmap, tempfile::NamedTempFile) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(disk_bytes).unwrap();
        let irq = IrqLine::Irqfd(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let d = VirtioBlk::new(f.reopen().unwrap(), mem.clone(), irq).unwrap();
        (d, mem, f)
    }

    fn w32(d: &mut VirtioBlk, off: u64, v: u32) {
        d.write(MMIO_BASE + off, &v.to_le_bytes());
    }

    fn r32(d: &VirtioBlk, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(MMIO_BASE + off, &mut b);
        u32::from_le_bytes(b)
    }

    /// The driver's side of queue set-up, as Linux's virtio_mmio does it.
    fn set_up(d: &mut VirtioBlk) {
        w32(d, R_STATUS, 1 | 2);
        w32(d, R_DRIVER_FEATURES_SEL, 1);
        w32(d, R_DRIVER_FEATURES, 1);
        w32(d, R_STATUS, 1 | 2 | 8);
        w32(d, R_QUEUE_SEL, 0);
        w32(d, R_QUEUE_NUM, 8);
        w32(d, R_QUEUE_DESC_LOW, DESC as u32);
        w32(d, R_QUEUE_DRIVER_LOW, AVAIL as u32);
        w32(d, R_QUEUE_DEVICE_LOW, USED as u32);
        w32(d, R_QUEUE_READY, 1);
        w32(d, R_STATUS, 1 | 2 | 8 | 4);
    }

    /// Puts a three-descriptor request (header, one data buffer, status) in the ring as
    /// available entry `slot` and notifies.
    fn request(
        d: &mut VirtioBlk,
        mem: &GuestMemoryMmap,
        slot: u16,
        kind: u32,
        sector: u64,
        len: u32,
    ) {
        let hdr = 0x4000u64;
        let data = 0x10000u64;
        let status = 0xF0000u64;
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(hdr)).unwrap();
        let data_flags: u16 = if kind == T_IN { 1 | 2 } else { 1 };
        for (i, (addr, l, flags, next)) in [
            (hdr, 16u32, 1u16, 1u16),
            (data, len, data_flags, 2),
            (status, 1, 2, 0),
        ]
        .into_iter()
        .enumerate()
        {
            let at = DESC + 16 * i as u64;
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(l, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        }
        mem.write_obj(0u16, GuestAddress(AVAIL + 4 + 2 * u64::from(slot % 8)))
            .unwrap();
        mem.write_obj(slot + 1, GuestAddress(AVAIL + 2)).unwrap();
        w32(d, R_QUEUE_NOTIFY, 0);
    }

    /// Transfers larger than one host copy chunk arrive whole, in both directions.
    #[test]
    fn large_transfers_are_copied_in_bounded_pieces() {
        let (mut d, mem, _f) = device(1 << 20);
        set_up(&mut d);
        let len = 3 * COPY_CHUNK as u32 + 512;
        let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        mem.write_slice(&pattern, GuestAddress(0x10000)).unwrap();
        request(&mut d, &mem, 0, T_OUT, 8, len);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xF0000)).unwrap(), S_OK);
        mem.write_slice(&vec![0u8; len as usize], GuestAddress(0x10000))
            .unwrap();
        request(&mut d, &mem, 1, T_IN, 8, len);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xF0000)).unwrap(), S_OK);
        let mut back = vec![0u8; len as usize];
        mem.read_slice(&mut back, GuestAddress(0x10000)).unwrap();
        assert!(back == pattern, "the data came back changed");
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(USED + 4 + 8 + 4)).unwrap(),
            len + 1
        );
    }

    #[test]
    fn registers_identify_a_modern_block_device_of_the_files_size() {
        let (mut d, _, _) = device(64 << 20);
        assert_eq!(r32(&d, R_MAGIC), MAGIC);
        assert_eq!(r32(&d, R_VERSION), 2);
        assert_eq!(r32(&d, R_DEVICE_ID), 2);
        w32(&mut d, R_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r32(&d, R_DEVICE_FEATURES), 1, "VERSION_1");
        assert_eq!(r32(&d, R_QUEUE_NUM_MAX), 256);
        let lo = r32(&d, R_CONFIG);
        let hi = r32(&d, R_CONFIG + 4);
        assert_eq!(u64::from(lo) | u64::from(hi) << 32, (64 << 20) / 512);
        assert_eq!(cmdline_word(), "virtio_mmio.device=4K@0xd0000000:5");
    }

    /// A write lands in the file, a read brings it back, an access past the end fails with
    /// IOERR, an unknown request type gets UNSUPP; each completion interrupts.
    #[test]
    fn requests_read_and_write_the_backing_file() {
        let (mut d, mem, f) = device(1 << 20);
        set_up(&mut d);
        mem.write_slice(&[0xAB; 512], GuestAddress(0x10000))
            .unwrap();
        request(&mut d, &mem, 0, T_OUT, 3, 512);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xF0000)).unwrap(), S_OK);
        let mut back = [0u8; 512];
        f.as_file().read_exact_at(&mut back, 3 * 512).unwrap();
        assert_eq!(back, [0xAB; 512]);
        assert_eq!(r32(&d, R_INTERRUPT_STATUS), INT_USED_RING);
        w32(&mut d, R_INTERRUPT_ACK, INT_USED_RING);
        assert_eq!(r32(&d, R_INTERRUPT_STATUS), 0);

        mem.write_slice(&[0u8; 512], GuestAddress(0x10000)).unwrap();
        request(&mut d, &mem, 1, T_IN, 3, 512);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xF0000)).unwrap(), S_OK);
        let mut got = [0u8; 512];
        mem.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
        assert_eq!(got, [0xAB; 512]);
        // used ring: idx 2, second element's length = 512 data + 1 status
        assert_eq!(mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap(), 2);
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(USED + 4 + 8 + 4)).unwrap(),
            513
        );

        request(&mut d, &mem, 2, T_IN, 2048, 512);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xF0000)).unwrap(), S_IOERR);
        request(&mut d, &mem, 3, 77, 0, 512);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xF0000)).unwrap(), S_UNSUPP);
        w32(&mut d, R_STATUS, 0);
        assert_eq!(r32(&d, R_STATUS), 0);
        assert_eq!(r32(&d, R_QUEUE_READY), 0, "a reset un-readies the queue");
    }
}
