//! The guest→host result channel: framed messages in a shared-memory region.
//!
//! The region lives in guest RAM that the guest kernel does not manage (left out of e820 by the
//! KVM VMM, reserved with `memmap=` under qemu) and is passed to the guest as
//! `ktstr_shm=<size>@<base>`. The guest maps it through `/dev/mem`; the host reads it straight
//! from guest memory (KVM) or from the memory-backend file (qemu). No VM exit per byte.
//!
//! Layout (little-endian):
//! - header, [`HEADER_LEN`] bytes: magic u64, version u32, header_len u32, capacity u64,
//!   write_off u64 (guest-owned, bytes of frame area in use), host_req u32, guest_state u32;
//! - frames from `header_len`: type u32, seq u32, len u32, crc32 u32 (over type|seq|len and the
//!   payload), then the payload padded to 8 bytes.
//!
//! The guest writes a frame, issues a release fence, then advances `write_off`. The host treats
//! everything in the region as hostile: it clamps `write_off`, bounds every length, and stops at
//! the first bad magic or CRC.

use std::mem::offset_of;
use std::sync::atomic::{fence, Ordering};

use serde::{Deserialize, Serialize};
use vm_memory::ByteValued;

/// "KTSTRSHM" as a little-endian u64.
pub const MAGIC: u64 = u64::from_le_bytes(*b"KTSTRSHM");
/// Protocol version.
pub const VERSION: u32 = 1;
/// Bytes of header before the first frame.
pub const HEADER_LEN: u32 = 64;
/// Bytes of frame header.
pub const FRAME_HEADER_LEN: usize = 16;
/// Largest payload the host accepts in one frame.
pub const MAX_PAYLOAD: u32 = 4 << 20;

#[cfg(not(target_endian = "little"))]
compile_error!("the result channel is little-endian and read in place");

/// The region header as it lies in memory (little-endian, as are all targets ktstr builds for).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct RegionHeader {
    magic: u64,
    version: u32,
    header_len: u32,
    capacity: u64,
    /// Guest-owned: bytes of frame area in use.
    write_off: u64,
    host_req: u32,
    guest_state: u32,
    _reserved: [u64; 3],
}
// SAFETY: repr(C) of integers only, laid out without padding (checked by the size assertion
// below): every bit pattern is a valid value.
unsafe impl ByteValued for RegionHeader {}
const _: () = assert!(std::mem::size_of::<RegionHeader>() == HEADER_LEN as usize);

/// A frame's header.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct FrameHeader {
    kind: u32,
    seq: u32,
    len: u32,
    /// CRC-32 over kind, seq, len and the payload.
    crc: u32,
}
// SAFETY: as for RegionHeader.
unsafe impl ByteValued for FrameHeader {}
const _: () = assert!(std::mem::size_of::<FrameHeader>() == FRAME_HEADER_LEN);

const OFF_MAGIC: usize = offset_of!(RegionHeader, magic);
const OFF_VERSION: usize = offset_of!(RegionHeader, version);
const OFF_HEADER_LEN: usize = offset_of!(RegionHeader, header_len);
const OFF_CAPACITY: usize = offset_of!(RegionHeader, capacity);
const OFF_WRITE_OFF: usize = offset_of!(RegionHeader, write_off);
const OFF_HOST_REQ: usize = offset_of!(RegionHeader, host_req);
const OFF_GUEST_STATE: usize = offset_of!(RegionHeader, guest_state);

/// Kinds of frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u32)]
pub enum FrameType {
    /// Guest init is up; payload: JSON describing the guest (kernel release, CPUs seen).
    Hello = 1,
    /// Bytes a guest command wrote to stdout.
    Stdout = 2,
    /// Bytes a guest command wrote to stderr.
    Stderr = 3,
    /// A test verdict (JSON).
    Result = 4,
    /// The guest's exit code (i32 LE); the last frame of a clean run.
    Exit = 5,
    /// Free-form log text from guest userspace.
    Log = 6,
    /// A kernel or init panic report (longer than serial would carry).
    Panic = 7,
    /// Telemetry (JSON).
    Telemetry = 8,
    /// A copy of the guest kernel log.
    Dmesg = 9,
    /// Why the sched_ext scheduler went away (JSON `runner::SchedulerExit`).
    SchedExit = 10,
    /// A piece of a guest process's coverage profile: `u32` profile index, then part of its
    /// gzip stream (see `coverage`).
    Profile = 11,
}

impl FrameType {
    /// Decodes a wire value.
    pub fn from_u32(v: u32) -> Option<Self> {
        use FrameType::*;
        Some(match v {
            1 => Hello,
            2 => Stdout,
            3 => Stderr,
            4 => Result,
            5 => Exit,
            6 => Log,
            7 => Panic,
            8 => Telemetry,
            9 => Dmesg,
            10 => SchedExit,
            11 => Profile,
            _ => return None,
        })
    }
}

/// One message from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Kind.
    pub kind: FrameType,
    /// Sequence number (0, 1, 2, ... in write order).
    pub seq: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// The payload as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// What is wrong with a region or a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShmError {
    /// The region does not start with [`MAGIC`]: the guest never initialised it.
    #[error("result channel not initialised (bad magic {0:#x}); the guest init never started")]
    BadMagic(u64),
    /// Unknown protocol version.
    #[error("result channel version {0} is not supported (expected {VERSION})")]
    BadVersion(u32),
    /// Header fields out of bounds.
    #[error("result channel header is corrupt: {0}")]
    BadHeader(String),
    /// A frame at `offset` is malformed.
    #[error("corrupt frame at offset {offset}: {why}")]
    BadFrame {
        /// Offset into the frame area.
        offset: u64,
        /// What is wrong.
        why: String,
    },
    /// The region could not be read.
    #[error("reading the result channel failed: {0}")]
    Io(String),
    /// The guest ran out of room in the region.
    #[error("result channel full: frame of {need} bytes does not fit ({left} left)")]
    Full {
        /// Bytes the frame needed.
        need: u64,
        /// Bytes left.
        left: u64,
    },
}

/// A frame's checksum: CRC-32 over its kind, sequence number, length and payload (public for
/// tests that forge frames as a hostile guest would).
pub fn frame_checksum(kind: u32, seq: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&kind.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn padded(len: usize) -> usize {
    (len + 7) & !7
}

/// Host side: reads frames incrementally from a region through a caller-supplied reader, so
/// the same code serves guest memory (KVM), a memory-backend file (qemu) and plain buffers.
#[derive(Debug, Default)]
pub struct FrameReader {
    /// Offset into the frame area of the next unread frame.
    next: u64,
    /// Capacity learnt from the header.
    capacity: Option<u64>,
    /// Sequence number expected next.
    seq: u32,
    /// Set once a bad frame was seen: nothing after it is trusted.
    poisoned: Option<ShmError>,
}

impl FrameReader {
    /// A reader at the start of the region.
    pub fn new() -> Self {
        Self::default()
    }

    /// The error that stopped reading, if any.
    pub fn error(&self) -> Option<&ShmError> {
        self.poisoned.as_ref()
    }

    /// Reads every complete frame published since the last call. `region_len` is the size of
    /// the whole region; `read_at(offset, buf)` fills `buf` from the region at `offset`.
    /// Returns `Ok(vec![])` while the guest has not initialised the header yet.
    pub fn poll(
        &mut self,
        region_len: u64,
        mut read_at: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> Result<Vec<Frame>, ShmError> {
        if let Some(e) = &self.poisoned {
            return Err(e.clone());
        }
        let mut hdr = RegionHeader::default();
        if region_len < HEADER_LEN as u64 {
            return Err(ShmError::BadHeader(format!(
                "region of {region_len} bytes is smaller than the header"
            )));
        }
        read_at(0, hdr.as_mut_slice()).map_err(|e| ShmError::Io(e.to_string()))?;
        if hdr.magic == 0 {
            return Ok(Vec::new());
        }
        let res = self.poll_inner(&hdr, region_len, &mut read_at);
        match &res {
            // Before the guest initialises the region it may hold anything (firmware data, a
            // boot loader's copy of the initrd): a wrong magic is "not yet", not poison.
            Err(ShmError::BadMagic(_)) if self.capacity.is_none() => {}
            Err(e) => self.poisoned = Some(e.clone()),
            Ok(_) => {}
        }
        res
    }

    fn poll_inner(
        &mut self,
        hdr: &RegionHeader,
        region_len: u64,
        read_at: &mut impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> Result<Vec<Frame>, ShmError> {
        if hdr.magic != MAGIC {
            return Err(ShmError::BadMagic(hdr.magic));
        }
        if hdr.version != VERSION {
            return Err(ShmError::BadVersion(hdr.version));
        }
        let header_len = hdr.header_len as u64;
        if header_len != HEADER_LEN as u64 {
            return Err(ShmError::BadHeader(format!("header_len {header_len}")));
        }
        let capacity = hdr.capacity;
        if capacity > region_len - header_len {
            return Err(ShmError::BadHeader(format!(
                "capacity {capacity} exceeds the region ({region_len} bytes)"
            )));
        }
        if let Some(c) = self.capacity {
            if c != capacity {
                return Err(ShmError::BadHeader(
                    "capacity changed during the run".into(),
                ));
            }
        }
        self.capacity = Some(capacity);
        let write_off = hdr.write_off;
        if write_off > capacity {
            return Err(ShmError::BadHeader(format!(
                "write_off {write_off} beyond capacity {capacity}"
            )));
        }
        let mut frames = Vec::new();
        while self.next < write_off {
            let at = self.next;
            let left = write_off - at;
            let bad = |why: String| ShmError::BadFrame { offset: at, why };
            if left < FRAME_HEADER_LEN as u64 {
                return Err(bad(format!("truncated frame header ({left} bytes)")));
            }
            let mut fh = FrameHeader::default();
            read_at(header_len + at, fh.as_mut_slice()).map_err(|e| ShmError::Io(e.to_string()))?;
            let FrameHeader {
                kind,
                seq,
                len,
                crc: sum,
            } = fh;
            if len > MAX_PAYLOAD {
                return Err(bad(format!("payload length {len} exceeds {MAX_PAYLOAD}")));
            }
            let total = (FRAME_HEADER_LEN + padded(len as usize)) as u64;
            if total > left {
                return Err(bad(format!(
                    "frame of {total} bytes runs past write_off ({left} left)"
                )));
            }
            let mut payload = vec![0u8; len as usize];
            read_at(header_len + at + FRAME_HEADER_LEN as u64, &mut payload)
                .map_err(|e| ShmError::Io(e.to_string()))?;
            if frame_checksum(kind, seq, &payload) != sum {
                return Err(bad("checksum mismatch".into()));
            }
            let kind = FrameType::from_u32(kind)
                .ok_or_else(|| bad(format!("unknown frame type {kind}")))?;
            if seq != self.seq {
                return Err(bad(format!("sequence {seq}, expected {}", self.seq)));
            }
            self.seq += 1;
            self.next += total;
            frames.push(Frame { kind, seq, payload });
        }
        Ok(frames)
    }

    /// Reads all frames of a complete region held in memory.
    pub fn read_all(region: &[u8]) -> (Vec<Frame>, Option<ShmError>) {
        let mut r = FrameReader::new();
        match r.poll(region.len() as u64, |off, buf| {
            let off = off as usize;
            let src = region.get(off..off + buf.len()).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past region")
            })?;
            buf.copy_from_slice(src);
            Ok(())
        }) {
            Ok(f) => (f, None),
            Err(e) => (Vec::new(), Some(e)),
        }
    }

    /// The host's request word, for backends that want to show it in diagnostics.
    pub fn host_req(region_header: &[u8]) -> u32 {
        let mut h = RegionHeader::default();
        let n = region_header.len().min(HEADER_LEN as usize);
        h.as_mut_slice()[..n].copy_from_slice(&region_header[..n]);
        h.host_req
    }
}

/// Guest side: appends frames to a mapped region. Single writer (the guest's PID 1 or one
/// thread holding the lock).
pub struct FrameWriter {
    base: *mut u8,
    len: usize,
    seq: u32,
    off: u64,
}

// SAFETY: the writer owns its mapping exclusively; callers serialise access with `&mut self`.
unsafe impl Send for FrameWriter {}

impl FrameWriter {
    /// Initialises the header of the region at `base` (of `len` bytes) and returns a writer.
    ///
    /// # Safety
    /// `base..base+len` must be a valid, writable mapping that lives as long as the writer and
    /// that nothing else in this process writes.
    pub unsafe fn init(base: *mut u8, len: usize) -> Result<Self, ShmError> {
        if (base as usize) % 8 != 0 {
            return Err(ShmError::BadHeader(format!(
                "region at {base:p} is not 8-byte aligned"
            )));
        }
        if len < HEADER_LEN as usize + 64 {
            return Err(ShmError::BadHeader(format!(
                "region of {len} bytes is too small"
            )));
        }
        let mut w = FrameWriter {
            base,
            len,
            seq: 0,
            off: 0,
        };
        let capacity = (len - HEADER_LEN as usize) as u64;
        w.put_u64(OFF_WRITE_OFF, 0);
        w.put(OFF_VERSION, &VERSION.to_le_bytes());
        w.put(OFF_HEADER_LEN, &HEADER_LEN.to_le_bytes());
        w.put_u64(OFF_CAPACITY, capacity);
        w.put(OFF_HOST_REQ, &0u32.to_le_bytes());
        w.put(OFF_GUEST_STATE, &0u32.to_le_bytes());
        fence(Ordering::Release);
        w.put_u64(OFF_MAGIC, MAGIC);
        Ok(w)
    }

    /// Stores a header word in one aligned 8-byte store, so the host never sees it half
    /// written (the magic and `write_off` publish everything else).
    fn put_u64(&mut self, at: usize, v: u64) {
        assert!(at % 8 == 0 && at + 8 <= self.len);
        // SAFETY: in bounds (checked above) and 8-byte aligned: `base` is page aligned (a
        // mapping) and `at` a multiple of 8; the mapping is valid per `init`'s contract.
        unsafe { std::ptr::write_volatile(self.base.add(at) as *mut u64, v.to_le()) }
    }

    fn put(&mut self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.len);
        // SAFETY: bounds checked above; the mapping is valid per `init`'s contract. Volatile
        // because the host reads the same memory concurrently.
        unsafe {
            for (i, b) in bytes.iter().enumerate() {
                std::ptr::write_volatile(self.base.add(at + i), *b);
            }
        }
    }

    /// Appends one frame and publishes it.
    pub fn write(&mut self, kind: FrameType, payload: &[u8]) -> Result<(), ShmError> {
        let total = (FRAME_HEADER_LEN + padded(payload.len())) as u64;
        let capacity = (self.len - HEADER_LEN as usize) as u64;
        if payload.len() as u64 > MAX_PAYLOAD as u64 || self.off + total > capacity {
            return Err(ShmError::Full {
                need: total,
                left: capacity - self.off,
            });
        }
        let at = HEADER_LEN as usize + self.off as usize;
        let k = kind as u32;
        let fh = FrameHeader {
            kind: k,
            seq: self.seq,
            len: payload.len() as u32,
            crc: frame_checksum(k, self.seq, payload),
        };
        self.put(at, fh.as_slice());
        self.put(at + FRAME_HEADER_LEN, payload);
        let pad = padded(payload.len()) - payload.len();
        self.put(at + FRAME_HEADER_LEN + payload.len(), &[0u8; 8][..pad]);
        fence(Ordering::Release);
        self.off += total;
        self.seq += 1;
        self.put_u64(OFF_WRITE_OFF, self.off);
        Ok(())
    }

    /// Bytes left for frames.
    pub fn remaining(&self) -> u64 {
        (self.len - HEADER_LEN as usize) as u64 - self.off
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A zeroed, 8-byte aligned region of bytes, as a page of guest memory is.
    #[derive(Clone)]
    struct Region(Vec<u64>);

    impl Region {
        fn new(len: usize) -> Self {
            Region(vec![0; len.div_ceil(8)])
        }
    }

    impl std::ops::Deref for Region {
        type Target = [u8];
        fn deref(&self) -> &[u8] {
            // SAFETY: a u64 buffer viewed as its bytes: same allocation, alignment 1 <= 8.
            unsafe { std::slice::from_raw_parts(self.0.as_ptr() as *const u8, self.0.len() * 8) }
        }
    }

    impl std::ops::DerefMut for Region {
        fn deref_mut(&mut self) -> &mut [u8] {
            // SAFETY: as in `deref`, borrowed mutably.
            unsafe {
                std::slice::from_raw_parts_mut(self.0.as_mut_ptr() as *mut u8, self.0.len() * 8)
            }
        }
    }

    fn region_with(frames: &[(FrameType, &[u8])], len: usize) -> Region {
        let mut buf = Region::new(len);
        // SAFETY: buf outlives the writer and nothing else touches it meanwhile.
        let mut w = unsafe { FrameWriter::init(buf.as_mut_ptr(), len) }.unwrap();
        for (k, p) in frames {
            w.write(*k, p).unwrap();
        }
        buf
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        // The module docs' layout, which guests of other builds write.
        assert_eq!(
            [
                OFF_MAGIC,
                OFF_VERSION,
                OFF_HEADER_LEN,
                OFF_CAPACITY,
                OFF_WRITE_OFF,
                OFF_HOST_REQ,
                OFF_GUEST_STATE
            ],
            [0, 8, 12, 16, 24, 32, 36]
        );
        let fh = FrameHeader {
            kind: 1,
            seq: 2,
            len: 3,
            crc: 4,
        };
        let b: Vec<u8> = [1u32, 2, 3, 4]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(fh.as_slice(), b.as_slice());
    }

    #[test]
    fn round_trip() {
        let buf = region_with(
            &[
                (FrameType::Hello, b"{}"),
                (FrameType::Stdout, b"hello world\n"),
                (FrameType::Exit, &3i32.to_le_bytes()),
            ],
            4096,
        );
        let (frames, err) = FrameReader::read_all(&buf);
        assert_eq!(err, None);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1].text(), "hello world\n");
        assert_eq!(frames[2].kind, FrameType::Exit);
        assert_eq!(frames[2].seq, 2);
    }

    #[test]
    fn incremental_poll_sees_only_new_frames() {
        let mut buf = Region::new(4096);
        let ptr = buf.as_mut_ptr();
        let mut r = FrameReader::new();
        let read = |b: &Region| {
            let b = b.clone();
            move |off: u64, out: &mut [u8]| {
                out.copy_from_slice(&b[off as usize..off as usize + out.len()]);
                Ok(())
            }
        };
        assert!(
            r.poll(4096, read(&buf)).unwrap().is_empty(),
            "uninitialised"
        );
        // SAFETY: buf lives for the whole test.
        let mut w = unsafe { FrameWriter::init(ptr, 4096) }.unwrap();
        w.write(FrameType::Log, b"a").unwrap();
        assert_eq!(r.poll(4096, read(&buf)).unwrap().len(), 1);
        w.write(FrameType::Log, b"b").unwrap();
        w.write(FrameType::Log, b"c").unwrap();
        let f = r.poll(4096, read(&buf)).unwrap();
        assert_eq!(f.iter().map(Frame::text).collect::<Vec<_>>(), ["b", "c"]);
    }

    #[test]
    fn corrupt_payload_stops_at_bad_crc() {
        let mut buf = region_with(
            &[(FrameType::Log, b"good"), (FrameType::Log, b"evil")],
            4096,
        );
        // Second frame's payload starts at 64 + 16 + 8 + 16.
        buf[64 + 24 + 16] ^= 0xff;
        let (frames, err) = FrameReader::read_all(&buf);
        assert!(frames.is_empty());
        assert!(
            matches!(err, Some(ShmError::BadFrame { offset: 24, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn hostile_header_is_bounded() {
        let mut buf = region_with(&[(FrameType::Log, b"x")], 4096);
        buf[OFF_WRITE_OFF..OFF_WRITE_OFF + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            FrameReader::read_all(&buf).1,
            Some(ShmError::BadHeader(_))
        ));
        let mut buf = region_with(&[(FrameType::Log, b"x")], 4096);
        buf[OFF_CAPACITY..OFF_CAPACITY + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            FrameReader::read_all(&buf).1,
            Some(ShmError::BadHeader(_))
        ));
        let mut buf = region_with(&[(FrameType::Log, b"x")], 4096);
        buf[0] ^= 1;
        assert!(matches!(
            FrameReader::read_all(&buf).1,
            Some(ShmError::BadMagic(_))
        ));
    }

    #[test]
    fn oversized_and_truncated_frames() {
        let mut buf = region_with(&[(FrameType::Log, b"x")], 4096);
        let len_at = HEADER_LEN as usize + 8;
        buf[len_at..len_at + 4].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert!(matches!(
            FrameReader::read_all(&buf).1,
            Some(ShmError::BadFrame { .. })
        ));
        let mut buf = region_with(&[(FrameType::Log, b"12345678")], 4096);
        // Claim write_off ends in the middle of the payload.
        buf[OFF_WRITE_OFF..OFF_WRITE_OFF + 8].copy_from_slice(&20u64.to_le_bytes());
        let (_, err) = FrameReader::read_all(&buf);
        assert!(matches!(err, Some(ShmError::BadFrame { .. })), "{err:?}");
    }

    #[test]
    fn writer_reports_full() {
        let mut buf = Region::new(256);
        // SAFETY: buf outlives the writer.
        let mut w = unsafe { FrameWriter::init(buf.as_mut_ptr(), 256) }.unwrap();
        assert!(matches!(
            w.write(FrameType::Log, &[0u8; 300]),
            Err(ShmError::Full { .. })
        ));
        w.write(FrameType::Log, &[0u8; 100]).unwrap();
    }

    #[test]
    fn writer_refuses_a_misaligned_region() {
        let mut buf = Region::new(256);
        // SAFETY: in bounds; init refuses before writing anything.
        let r = unsafe { FrameWriter::init(buf.as_mut_ptr().add(1), 200) };
        assert!(matches!(r, Err(ShmError::BadHeader(m)) if m.contains("aligned")));
    }
}
