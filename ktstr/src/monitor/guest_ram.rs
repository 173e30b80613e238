//! Reading guest RAM from the host, and turning guest-kernel virtual addresses into
//! guest-physical ones.
//!
//! Both backends give the host the guest's RAM: the in-process VMM owns its mapping
//! ([`vm_memory::GuestMemoryMmap`]); under qemu every NUMA node is a shared file
//! ([`FileRam`]). Every read is bounds-checked and copies: guest memory is hostile input and
//! changes under our feet.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::Symbols;

/// Guest-physical memory the host can read while the guest runs.
pub trait GuestRam: Send + Sync {
    /// Copies `buf.len()` bytes at guest-physical `gpa`; `false` when any of it is not RAM.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool;

    /// Copies `buf` to guest-physical `gpa` (for `bpf_map_write`); `false` when any of it is
    /// not RAM or the RAM is read-only to us.
    fn write(&self, _gpa: u64, _buf: &[u8]) -> bool {
        false
    }
}

impl GuestRam for GuestMemoryMmap {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.read_slice(buf, GuestAddress(gpa)).is_ok()
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> bool {
        self.write_slice(buf, GuestAddress(gpa)).is_ok()
    }
}

/// A run of guest-physical RAM backed by part of a file.
#[derive(Debug)]
pub struct FileRegion {
    /// First guest-physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// The backing file (qemu creates it; it is opened on first use).
    pub path: PathBuf,
    /// Where in the file `gpa` is.
    pub file_offset: u64,
    file: OnceLock<File>,
}

impl FileRegion {
    /// A region; the file is opened when first read.
    pub fn new(gpa: u64, len: u64, path: PathBuf, file_offset: u64) -> Self {
        FileRegion {
            gpa,
            len,
            path,
            file_offset,
            file: OnceLock::new(),
        }
    }
}

/// Guest RAM made of file-backed regions (qemu's `memory-backend-file`s).
#[derive(Debug, Default)]
pub struct FileRam {
    /// The regions, in any order, not overlapping.
    pub regions: Vec<FileRegion>,
}

impl FileRam {
    /// The region holding `len` bytes at `gpa`, its file open (read-write when we may: qemu
    /// maps the file shared, so a write reaches the guest), and the offset in that file.
    fn locate(&self, gpa: u64, len: usize) -> Option<(&File, u64)> {
        let r = self
            .regions
            .iter()
            .find(|r| gpa >= r.gpa && gpa - r.gpa + len as u64 <= r.len)?;
        let f = match r.file.get() {
            Some(f) => f,
            None => {
                let f = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&r.path)
                    .or_else(|_| File::open(&r.path))
                    .ok()?;
                r.file.get_or_init(|| f)
            }
        };
        Some((f, r.file_offset + (gpa - r.gpa)))
    }
}

impl GuestRam for FileRam {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        self.locate(gpa, buf.len())
            .is_some_and(|(f, at)| f.read_exact_at(buf, at).is_ok())
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> bool {
        self.locate(gpa, buf.len())
            .is_some_and(|(f, at)| f.write_all_at(buf, at).is_ok())
    }
}

/// x86-64's kernel-image mapping base (`__START_KERNEL_map`).
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// The direct map's size bound with 4-level paging (64 TiB); 5-level allows more.
const DIRECT_MAP_4L: u64 = 1 << 46;
const DIRECT_MAP_5L: u64 = 1 << 55;
const PTE_PRESENT: u64 = 1;
const PTE_HUGE: u64 = 1 << 7;
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Reads guest-kernel memory by virtual address.
pub struct KernelMem<'a> {
    ram: &'a dyn GuestRam,
    page_offset_base: u64,
    top_pgt: u64,
    five_level: bool,
}

/// Why guest-kernel memory cannot be read yet (or at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateError {
    /// `linux_banner` is not where the symbols say: the kernel is not at its link address.
    #[error("the guest kernel is not at its link address (linux_banner does not read \"Linux version\"): boot with nokaslr")]
    Relocated,
    /// Guest RAM could not be read at all (qemu has not created its files yet).
    #[error("guest RAM is not readable yet")]
    NoRam,
}

impl<'a> KernelMem<'a> {
    /// Checks the kernel sits at its link address and reads the direct map's base.
    pub fn new(ram: &'a dyn GuestRam, sym: &Symbols) -> Result<Self, TranslateError> {
        // Symbols of the kernel image are above START_KERNEL_MAP; a layout that says
        // otherwise cannot be this kernel's.
        let text = |va: u64| {
            va.checked_sub(START_KERNEL_MAP)
                .ok_or(TranslateError::Relocated)
        };
        let mut banner = [0u8; 13];
        if !ram.read(text(sym.linux_banner)?, &mut banner) {
            return Err(TranslateError::NoRam);
        }
        if &banner != b"Linux version" {
            return Err(TranslateError::Relocated);
        }
        let read_u64 = |gpa: u64| {
            let mut b = [0u8; 8];
            ram.read(gpa, &mut b).then(|| u64::from_le_bytes(b))
        };
        let page_offset_base =
            read_u64(text(sym.page_offset_base)?).ok_or(TranslateError::NoRam)?;
        let five_level = match sym.pgtable_l5_enabled {
            Some(a) => {
                let mut b = [0u8; 4];
                ram.read(text(a)?, &mut b) && u32::from_le_bytes(b) != 0
            }
            None => false,
        };
        Ok(KernelMem {
            ram,
            page_offset_base,
            top_pgt: text(sym.init_top_pgt)?,
            five_level,
        })
    }

    /// The guest-physical address of kernel virtual address `va`: kernel image, direct map,
    /// else a walk of the kernel's page tables (vmalloc, per-CPU areas outside the direct map).
    pub fn to_gpa(&self, va: u64) -> Option<u64> {
        if va >= START_KERNEL_MAP {
            return Some(va - START_KERNEL_MAP);
        }
        let span = if self.five_level {
            DIRECT_MAP_5L
        } else {
            DIRECT_MAP_4L
        };
        if va >= self.page_offset_base && va - self.page_offset_base < span {
            return Some(va - self.page_offset_base);
        }
        self.walk(va)
    }

    fn walk(&self, va: u64) -> Option<u64> {
        let shifts: &[u32] = if self.five_level {
            &[48, 39, 30, 21, 12]
        } else {
            &[39, 30, 21, 12]
        };
        let mut table = self.top_pgt;
        for (level, &shift) in shifts.iter().enumerate() {
            let entry = self.phys_u64(table + ((va >> shift) & 0x1ff) * 8)?;
            if entry & PTE_PRESENT == 0 {
                return None;
            }
            let last = level == shifts.len() - 1;
            // 1 GiB and 2 MiB pages end the walk early.
            if last || (entry & PTE_HUGE != 0 && (shift == 30 || shift == 21)) {
                let page_mask = (1u64 << shift) - 1;
                return Some((entry & PTE_ADDR & !page_mask) | (va & page_mask));
            }
            table = entry & PTE_ADDR;
        }
        None
    }

    fn phys_u64(&self, gpa: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.ram.read(gpa, &mut b).then(|| u64::from_le_bytes(b))
    }

    /// Copies kernel memory at `va` (one translation: `buf` must not cross a page boundary
    /// outside the kernel image and direct map).
    pub fn read(&self, va: u64, buf: &mut [u8]) -> bool {
        self.to_gpa(va).is_some_and(|g| self.ram.read(g, buf))
    }

    /// Copies `buf` to kernel memory at `va` (one translation, as [`Self::read`]).
    pub fn write(&self, va: u64, buf: &[u8]) -> bool {
        self.to_gpa(va).is_some_and(|g| self.ram.write(g, buf))
    }

    /// A little-endian u64 at `va`.
    pub fn u64(&self, va: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(va, &mut b).then(|| u64::from_le_bytes(b))
    }

    /// A little-endian u32 at `va`.
    pub fn u32(&self, va: u64) -> Option<u32> {
        let mut b = [0u8; 4];
        self.read(va, &mut b).then(|| u32::from_le_bytes(b))
    }

    /// A NUL-terminated string at `va`, at most `max` bytes, lossily decoded.
    pub fn c_string(&self, va: u64, max: usize) -> Option<String> {
        let mut out = Vec::new();
        let mut at = va;
        while out.len() < max {
            let mut chunk = [0u8; 64];
            // Stay inside one page per read.
            let n = ((0x1000 - (at & 0xfff)) as usize).min(chunk.len());
            if !self.read(at, &mut chunk[..n]) {
                return None;
            }
            if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                break;
            }
            out.extend_from_slice(&chunk[..n]);
            at = at.wrapping_add(n as u64);
        }
        out.truncate(max);
        Some(String::from_utf8_lossy(&out).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest RAM as one byte vector starting at guest-physical 0.
    struct VecRam(Vec<u8>);
    impl GuestRam for VecRam {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
            let s = gpa as usize;
            match self.0.get(s..s + buf.len()) {
                Some(src) => {
                    buf.copy_from_slice(src);
                    true
                }
                None => false,
            }
        }
    }

    fn put(ram: &mut VecRam, gpa: u64, bytes: &[u8]) {
        ram.0[gpa as usize..gpa as usize + bytes.len()].copy_from_slice(bytes);
    }

    const POB: u64 = 0xffff_8880_0000_0000;

    fn fixture() -> (VecRam, Symbols) {
        let mut ram = VecRam(vec![0; 4 << 20]);
        let sym = Symbols {
            linux_banner: START_KERNEL_MAP + 0x1000,
            page_offset_base: START_KERNEL_MAP + 0x2000,
            init_top_pgt: START_KERNEL_MAP + 0x10000,
            ..Default::default()
        };
        put(&mut ram, 0x1000, b"Linux version 6.12");
        put(&mut ram, 0x2000, &POB.to_le_bytes());
        // A vmalloc address 0xffffc90000001000 → a 4 KiB page at 0x30000, through tables at
        // 0x11000 (PUD), 0x12000 (PMD), 0x13000 (PTE).
        let va: u64 = 0xffff_c900_0000_1000;
        let idx = |shift: u32| (va >> shift) & 0x1ff;
        put(
            &mut ram,
            0x10000 + idx(39) * 8,
            &(0x11000u64 | 1).to_le_bytes(),
        );
        put(
            &mut ram,
            0x11000 + idx(30) * 8,
            &(0x12000u64 | 1).to_le_bytes(),
        );
        put(
            &mut ram,
            0x12000 + idx(21) * 8,
            &(0x13000u64 | 1).to_le_bytes(),
        );
        put(
            &mut ram,
            0x13000 + idx(12) * 8,
            &(0x30000u64 | 1).to_le_bytes(),
        );
        put(&mut ram, 0x30010, b"vmalloc'd\0");
        (ram, sym)
    }

    #[test]
    fn translates_image_direct_map_and_vmalloc_addresses() {
        let (ram, sym) = fixture();
        let k = KernelMem::new(&ram, &sym).unwrap();
        assert_eq!(k.to_gpa(START_KERNEL_MAP + 0x1234), Some(0x1234));
        assert_eq!(k.to_gpa(POB + 0x5000), Some(0x5000));
        assert_eq!(k.to_gpa(0xffff_c900_0000_1010), Some(0x30010));
        assert_eq!(
            k.c_string(0xffff_c900_0000_1010, 100).as_deref(),
            Some("vmalloc'd")
        );
        assert_eq!(k.c_string(0xffff_c900_0000_1010, 3).as_deref(), Some("vma"));
        // Not mapped: the walk finds a non-present entry.
        assert_eq!(k.to_gpa(0xffff_c900_4000_0000), None);
        assert_eq!(k.u64(POB + (8 << 20)), None, "past the end of RAM");
    }

    #[test]
    fn a_relocated_kernel_is_refused() {
        let (mut ram, sym) = fixture();
        put(&mut ram, 0x1000, b"garbage here!");
        assert_eq!(
            KernelMem::new(&ram, &sym).err(),
            Some(TranslateError::Relocated)
        );
        let empty = VecRam(Vec::new());
        assert_eq!(
            KernelMem::new(&empty, &sym).err(),
            Some(TranslateError::NoRam)
        );
    }

    #[test]
    fn file_regions_map_guest_physical_ranges() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("node0"), d.path().join("node1"));
        std::fs::write(&a, [1u8; 4096]).unwrap();
        std::fs::write(&b, [2u8; 4096]).unwrap();
        let ram = FileRam {
            regions: vec![
                FileRegion::new(0, 4096, a, 0),
                FileRegion::new(1 << 32, 2048, b, 2048),
            ],
        };
        let mut buf = [0u8; 16];
        assert!(ram.read(4080, &mut buf) && buf == [1; 16]);
        assert!(!ram.read(4090, &mut buf), "crosses the end of a region");
        assert!(ram.read((1 << 32) + 100, &mut buf) && buf == [2; 16]);
        assert!(!ram.read(8192, &mut buf), "in the hole");
        let missing = FileRam {
            regions: vec![FileRegion::new(0, 4096, d.path().join("nope"), 0)],
        };
        assert!(!missing.read(0, &mut buf), "the file does not exist yet");
    }
}
