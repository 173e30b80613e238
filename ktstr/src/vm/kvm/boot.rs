//! Boot structures for the 64-bit Linux boot protocol (vmm.md §1.1–§1.4): kernel format
//! detection and loading, the kernel command line, boot_params ("zero page") with its e820 map,
//! identity page tables, the GDT and the BSP's long-mode register state.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use std::mem::offset_of;

use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{ByteValued, GuestAddress, GuestMemoryMmap};

use super::layout::{
    E820Entry, GuestRange, BOOT_PARAMS_GPA, BOOT_STACK, CMDLINE_GPA, CMDLINE_MAX, GDT_GPA,
    HIGH_MEM_START, IDENTITY_MAPPED_GIB, IDT_GPA, PDPT_GPA, PD_GPA, PML4_GPA,
};

/// Size of boot_params.
pub const BOOT_PARAMS_LEN: usize = std::mem::size_of::<boot_params>();

// boot_params offsets (Documentation/arch/x86/zero-page.rst), taken from linux-loader's bindgen
// structs rather than typed in; `boot_tests` pins them to the spec's numbers. The probe guest
// and the tests read fields back at these offsets.
/// acpi_rsdp_addr (u64).
pub const BP_ACPI_RSDP_ADDR: usize = offset_of!(boot_params, acpi_rsdp_addr);
/// e820_entries (u8).
pub const BP_E820_ENTRIES: usize = offset_of!(boot_params, e820_entries);
/// Start of the setup header.
pub const BP_SETUP_HEADER: usize = offset_of!(boot_params, hdr);
/// End of the setup header as of protocol 2.15 (kernel_info_offset ends here).
pub const BP_SETUP_HEADER_END: usize = BP_SETUP_HEADER + std::mem::size_of::<setup_header>();
/// setup_sects (u8).
pub const BP_SETUP_SECTS: usize = BP_SETUP_HEADER + offset_of!(setup_header, setup_sects);
/// boot_flag (u16) = 0xAA55.
pub const BP_BOOT_FLAG: usize = BP_SETUP_HEADER + offset_of!(setup_header, boot_flag);
/// header (u32) = "HdrS".
pub const BP_HEADER: usize = BP_SETUP_HEADER + offset_of!(setup_header, header);
/// version (u16).
pub const BP_VERSION: usize = BP_SETUP_HEADER + offset_of!(setup_header, version);
/// loadflags (u8).
pub const BP_LOADFLAGS: usize = BP_SETUP_HEADER + offset_of!(setup_header, loadflags);
/// cmd_line_ptr (u32).
pub const BP_CMD_LINE_PTR: usize = BP_SETUP_HEADER + offset_of!(setup_header, cmd_line_ptr);
/// xloadflags (u16).
pub const BP_XLOADFLAGS: usize = BP_SETUP_HEADER + offset_of!(setup_header, xloadflags);
/// cmdline_size (u32).
pub const BP_CMDLINE_SIZE: usize = BP_SETUP_HEADER + offset_of!(setup_header, cmdline_size);
/// pref_address (u64).
pub const BP_PREF_ADDRESS: usize = BP_SETUP_HEADER + offset_of!(setup_header, pref_address);
/// init_size (u32).
pub const BP_INIT_SIZE: usize = BP_SETUP_HEADER + offset_of!(setup_header, init_size);
/// e820_table: 128 packed 20-byte entries.
pub const BP_E820_TABLE: usize = offset_of!(boot_params, e820_table);
/// Entries e820_table holds.
pub const E820_MAX: usize = 128;

/// The zero page as linux-loader's bindgen struct, made [`ByteValued`] (the orphan rule keeps
/// us from implementing a vm-memory trait on a linux-loader type directly).
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);
// SAFETY: boot_params is repr(C, packed) and made only of integers and arrays of them (bindgen
// from the kernel's uapi header): no padding, no pointers, and every bit pattern is valid.
unsafe impl ByteValued for ZeroPage {}

/// A setup header read from a kernel image's bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct Header(setup_header);
// SAFETY: as for ZeroPage: a packed struct of integers, valid for any bytes.
unsafe impl ByteValued for Header {}

/// The setup header in the first bytes of a bzImage (`None` if `head` is too short).
pub fn setup_header_of(head: &[u8]) -> Option<setup_header> {
    let bytes = head.get(BP_SETUP_HEADER..BP_SETUP_HEADER_END)?;
    Header::from_slice(bytes).map(|h| h.0)
}

/// "HdrS".
const HDRS: u32 = u32::from_le_bytes(*b"HdrS");
/// Boot protocol version we claim for a directly booted vmlinux.
const VMLINUX_PROTOCOL: u16 = 0x020F;
/// The oldest bzImage protocol with a 64-bit entry point (XLF_KERNEL_64).
const MIN_BZIMAGE_PROTOCOL: u16 = 0x020C;
/// loadflags.LOADED_HIGH.
const LOADED_HIGH: u8 = 0x01;
/// xloadflags.XLF_KERNEL_64: the image has the 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 0x01;
/// Offset of the 64-bit entry in the protected-mode part of a bzImage.
const BZIMAGE_ENTRY64: u64 = 0x200;

/// Why the kernel image cannot be booted.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The file could not be opened or read.
    #[error("cannot read kernel {path}: {source}")]
    Read {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is neither format.
    #[error("{path} is not a bootable kernel: {why}; expected an ELF x86-64 vmlinux or a bzImage with the HdrS magic at 0x202")]
    Unrecognized {
        /// The image path.
        path: PathBuf,
        /// What was found instead.
        why: String,
    },
    /// A bzImage whose boot protocol has no 64-bit entry point.
    #[error("{path}: bzImage boot protocol {version:#06x} is too old or lacks the 64-bit entry (need >= 2.12 with XLF_KERNEL_64)")]
    BzImageTooOld {
        /// The image path.
        path: PathBuf,
        /// The protocol version in the header.
        version: u16,
    },
    /// linux-loader refused the image.
    #[error("loading kernel {path} failed: {source}")]
    Load {
        /// The image path.
        path: PathBuf,
        /// The loader's error.
        source: linux_loader::loader::Error,
    },
}

/// Why the kernel command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// Longer than the kernel copies.
    #[error(
        "kernel command line is {len} bytes; the limit is {max} (the kernel would cut it silently)"
    )]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Contains a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    Nul,
}

/// The two image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// An uncompressed ELF vmlinux, entered directly at `startup_64`.
    Vmlinux,
    /// A bzImage, entered at its 64-bit entry point.
    BzImage,
}

/// Detects the format of `head` (the first bytes of an image, at least 0x270 for a bzImage).
pub fn detect_kernel(path: &Path, head: &[u8]) -> Result<KernelKind, KernelError> {
    let unrecognized = |why: String| KernelError::Unrecognized {
        path: path.to_path_buf(),
        why,
    };
    if head.is_empty() {
        return Err(unrecognized("the file is empty".into()));
    }
    if head.starts_with(b"\x7fELF") {
        // e_ident[EI_CLASS] = 2 (64-bit), EI_DATA = 1 (LE), e_machine = 62 (x86-64).
        if head.len() < 20 {
            return Err(unrecognized("truncated ELF header".into()));
        }
        let machine = u16::from_le_bytes([head[18], head[19]]);
        if head[4] != 2 || head[5] != 1 || machine != 62 {
            return Err(unrecognized(format!(
                "an ELF file for another machine (class {}, data {}, e_machine {machine})",
                head[4], head[5]
            )));
        }
        return Ok(KernelKind::Vmlinux);
    }
    if let Some(h) = setup_header_of(head).filter(|h| h.header == HDRS) {
        let version = h.version;
        if version < MIN_BZIMAGE_PROTOCOL || h.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(KernelError::BzImageTooOld {
                path: path.to_path_buf(),
                version,
            });
        }
        return Ok(KernelKind::BzImage);
    }
    Err(unrecognized(format!(
        "{} bytes without an ELF or HdrS magic",
        head.len()
    )))
}

/// A kernel loaded into guest memory.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// Format.
    pub kind: KernelKind,
    /// 64-bit entry point (RIP).
    pub entry: u64,
    /// First byte above everything the kernel occupies (decompression included).
    pub end: u64,
    /// bzImage: its setup header, to copy into boot_params.
    pub setup_header: Option<setup_header>,
}

/// Reads the first bytes of `path` and detects its format, before any guest memory exists.
pub fn probe_kernel_file(path: &Path) -> Result<KernelKind, KernelError> {
    let read_err = |source| KernelError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(read_err)?;
    let mut head = Vec::with_capacity(0x400);
    f.by_ref()
        .take(0x400)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    detect_kernel(path, &head)
}

/// Loads the kernel at `path` into `mem` (vmlinux: each PT_LOAD at p_paddr; bzImage: its
/// protected-mode part at 0x100000).
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, KernelError> {
    let kind = probe_kernel_file(path)?;
    let read_err = |source| KernelError::Read {
        path: path.to_path_buf(),
        source,
    };
    let load_err = |source| KernelError::Load {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(read_err)?;
    let high = Some(GuestAddress(HIGH_MEM_START));
    match kind {
        KernelKind::Vmlinux => {
            let r = Elf::load(mem, None, &mut f, high).map_err(load_err)?;
            Ok(LoadedKernel {
                kind,
                entry: r.kernel_load.0,
                end: r.kernel_end,
                setup_header: None,
            })
        }
        KernelKind::BzImage => {
            let r = BzImage::load(mem, None, &mut f, high).map_err(load_err)?;
            // linux-loader returns the image's setup header for every bzImage it loads.
            let h = r.setup_header.unwrap_or_default();
            // The decompressor writes up to pref_address + init_size.
            let decompressed_end = h.pref_address + h.init_size as u64;
            Ok(LoadedKernel {
                kind,
                entry: r.kernel_load.0 + BZIMAGE_ENTRY64,
                end: r.kernel_end.max(decompressed_end),
                setup_header: Some(h),
            })
        }
    }
}

/// The fast-boot base command line (vmm.md §9), without the SHM key. `loglevel=1`, not 0:
/// Linux's `console_verbose()` (called by `panic()`) raises the console level only when it is
/// non-zero, so under `loglevel=0` a guest panic reboots the VM without a word on the console.
pub const BASE_CMDLINE: &str = "console=ttyS0 loglevel=1 8250.nr_uarts=1 pci=off mitigations=off \
tsc=reliable clocksource=kvm-clock panic=-1 reboot=k rootfstype=ramfs swiotlb=noforce \
random.trust_cpu=on numa_balancing=disable rcupdate.rcu_cpu_stall_timeout=60 rdinit=/init";

/// The full command line: the base line, `nokaslr` for a bzImage, the SHM key
/// (`ktstr_shm=<size>@<base>`, dotless so it reaches init's environment) and `extra`.
pub fn kernel_cmdline(
    kind: KernelKind,
    shm: GuestRange,
    extra: &[String],
) -> Result<String, CmdlineError> {
    let mut s = String::from(BASE_CMDLINE);
    if kind == KernelKind::BzImage {
        s.push_str(" nokaslr");
    }
    s.push(' ');
    s.push_str(&crate::protocol::shm_arg(shm.len, shm.base));
    for w in extra {
        s.push(' ');
        s.push_str(w);
    }
    check_cmdline(&s)?;
    Ok(s)
}

/// Checks a command line against the kernel's limit.
pub fn check_cmdline(s: &str) -> Result<(), CmdlineError> {
    if s.as_bytes().contains(&0) {
        return Err(CmdlineError::Nul);
    }
    if s.len() > CMDLINE_MAX {
        return Err(CmdlineError::TooLong {
            len: s.len(),
            max: CMDLINE_MAX,
        });
    }
    Ok(())
}

/// Inputs of [`boot_params`].
#[derive(Debug, Clone)]
pub struct BootParamsInput<'a> {
    /// bzImage: its setup header; `None` builds a vmlinux header from zero.
    pub setup_header: Option<setup_header>,
    /// The initrd, if any.
    pub initrd: Option<GuestRange>,
    /// RSDP address.
    pub rsdp: u64,
    /// e820 map (at most 128 entries).
    pub e820: &'a [E820Entry],
}

/// Builds the 4 KiB zero page.
pub fn boot_params(input: &BootParamsInput<'_>) -> [u8; BOOT_PARAMS_LEN] {
    let mut page = ZeroPage::default();
    let bp = &mut page.0;
    match input.setup_header {
        Some(h) => bp.hdr = h,
        None => {
            bp.hdr.boot_flag = 0xAA55;
            bp.hdr.header = HDRS;
            bp.hdr.version = VMLINUX_PROTOCOL;
            bp.hdr.loadflags = LOADED_HIGH;
            bp.hdr.cmdline_size = CMDLINE_MAX as u32;
        }
    }
    bp.hdr.type_of_loader = 0xFF;
    bp.hdr.hardware_subarch = 0;
    bp.hdr.cmd_line_ptr = CMDLINE_GPA as u32;
    // Non-zero makes the kernel wipe most fields as written by a broken loader.
    bp.sentinel = 0;
    if let Some(rd) = input.initrd {
        bp.hdr.ramdisk_image = rd.base as u32;
        bp.hdr.ramdisk_size = rd.len as u32;
    }
    bp.acpi_rsdp_addr = input.rsdp;
    let n = input.e820.len().min(E820_MAX);
    bp.e820_entries = n as u8;
    for (slot, e) in bp.e820_table.iter_mut().zip(&input.e820[..n]) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.type_ = e.kind;
    }
    let mut out = [0u8; BOOT_PARAMS_LEN];
    out.copy_from_slice(page.as_slice());
    out
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[cfg(test)]
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Identity page tables: PML4 → PDPT → [`IDENTITY_MAPPED_GIB`] page directories of 2 MiB
/// pages. Returns (GPA, page) pairs.
pub fn page_tables() -> Vec<(u64, [u8; 4096])> {
    const PRESENT_RW: u64 = 0x3;
    const HUGE: u64 = 0x80;
    let mut pml4 = [0u8; 4096];
    put64(&mut pml4, 0, PDPT_GPA | PRESENT_RW);
    let mut pdpt = [0u8; 4096];
    let mut out = vec![(PML4_GPA, pml4)];
    let mut pds = Vec::new();
    for g in 0..IDENTITY_MAPPED_GIB {
        let pd_gpa = PD_GPA + g * 0x1000;
        put64(&mut pdpt, g as usize * 8, pd_gpa | PRESENT_RW);
        let mut pd = [0u8; 4096];
        for j in 0..512u64 {
            put64(
                &mut pd,
                j as usize * 8,
                (g << 30) | (j << 21) | PRESENT_RW | HUGE,
            );
        }
        pds.push((pd_gpa, pd));
    }
    out.push((PDPT_GPA, pdpt));
    out.extend(pds);
    out
}

/// GDT selectors.
pub mod selector {
    /// 64-bit kernel code (`__BOOT_CS`).
    pub const CODE64: u16 = 0x10;
    /// Flat data (`__BOOT_DS`).
    pub const DATA: u16 = 0x18;
    /// The TSS KVM needs in TR.
    pub const TSS: u16 = 0x20;
    /// 32-bit flat code, used only by the probe guest's AP trampoline.
    pub const CODE32: u16 = 0x28;
}

/// One GDT descriptor from access/flags (`0xA09B` style: flags nibble << 12 | access byte),
/// base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xFF00_0000) << 32)
        | ((base as u64 & 0x00FF_FFFF) << 16)
        | (limit as u64 & 0xFFFF)
        | ((limit as u64 & 0xF_0000) << 32)
        | ((flags as u64 & 0xF0FF) << 40)
}

/// The GDT at [`GDT_GPA`]: null, null, code64, data, TSS, code32.
pub fn gdt() -> [u64; 6] {
    [
        0,
        0,
        gdt_entry(0xA09B, 0, 0xFFFFF),
        gdt_entry(0xC093, 0, 0xFFFFF),
        gdt_entry(0x808B, 0, 0xFFFFF),
        gdt_entry(0xC09B, 0, 0xFFFFF),
    ]
}

/// The GDT as bytes.
pub fn gdt_bytes() -> Vec<u8> {
    gdt().iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// The `kvm_segment` a selector loads from descriptor `entry`.
pub fn segment(sel: u16, entry: u64) -> kvm_segment {
    let g = ((entry >> 55) & 1) as u8;
    let raw_limit = ((entry & 0xFFFF) | ((entry >> 32) & 0xF_0000)) as u32;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xFF_FFFF) | ((entry >> 32) & 0xFF00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xFFF
        } else {
            raw_limit
        },
        selector: sel,
        type_: ((entry >> 40) & 0xF) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: (present == 0) as u8,
        padding: 0,
    }
}

const CR0_PE: u64 = 1;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Long-mode special registers, starting from KVM's own (which keep `apic_base`).
pub fn long_mode_sregs(mut s: kvm_sregs) -> kvm_sregs {
    let g = gdt();
    s.cs = segment(selector::CODE64, g[2]);
    let data = segment(selector::DATA, g[3]);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = segment(selector::TSS, g[4]);
    s.gdt.base = GDT_GPA;
    s.gdt.limit = (g.len() * 8 - 1) as u16;
    s.idt.base = IDT_GPA;
    s.idt.limit = 0;
    s.cr0 = CR0_PE | CR0_PG;
    s.cr3 = PML4_GPA;
    s.cr4 = CR4_PAE;
    s.efer = EFER_LME | EFER_LMA;
    s
}

/// General registers of the BSP at the entry point.
pub fn entry_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsi: BOOT_PARAMS_GPA,
        rflags: 0x2,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        ..Default::default()
    }
}

/// FPU state after reset as Linux expects it.
pub fn entry_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37F,
        mxcsr: 0x1F80,
        ..Default::default()
    }
}

/// MSRs set on every vCPU: (index, value).
pub fn boot_msrs() -> Vec<(u32, u64)> {
    vec![
        (0x174, 0),       // SYSENTER_CS
        (0x175, 0),       // SYSENTER_ESP
        (0x176, 0),       // SYSENTER_EIP
        (0xC000_0081, 0), // STAR
        (0xC000_0082, 0), // LSTAR
        (0xC000_0083, 0), // CSTAR
        (0xC000_0102, 0), // KERNEL_GS_BASE
        (0xC000_0084, 0), // SFMASK
        (0x1A0, 1),       // MISC_ENABLE = FAST_STRING
        (0x2FF, 0x806),   // MTRR_DEF_TYPE: enabled, write-back (keeps the SHM cached)
    ]
}

#[cfg(test)]
#[path = "boot_tests.rs"]
mod tests;
