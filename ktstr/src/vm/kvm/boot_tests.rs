//! Host unit tests of the boot structures; linux-loader's bindgen `boot_params` serves as an
//! independent parser of our bytes.

use super::*;
use crate::vm::kvm::layout::{MemoryLayout, E820_RAM};
use linux_loader::loader::bootparam::boot_params as BootParams;

fn parse(b: &[u8; BOOT_PARAMS_LEN]) -> BootParams {
    assert_eq!(std::mem::size_of::<BootParams>(), BOOT_PARAMS_LEN);
    // SAFETY: boot_params is a plain-old-data bindgen struct of exactly 4096 bytes, valid for
    // any bit pattern; read_unaligned copes with the byte buffer's alignment.
    unsafe { std::ptr::read_unaligned(b.as_ptr() as *const BootParams) }
}

fn layout() -> MemoryLayout {
    MemoryLayout::new(512, 2, 8 << 20).unwrap()
}

#[test]
fn offsets_are_the_specs() {
    // Documentation/arch/x86/zero-page.rst and boot.rst, protocol 2.15.
    assert_eq!(BOOT_PARAMS_LEN, 4096);
    assert_eq!(BP_ACPI_RSDP_ADDR, 0x070);
    assert_eq!(BP_E820_ENTRIES, 0x1E8);
    assert_eq!(BP_SETUP_HEADER, 0x1F1);
    assert_eq!(BP_SETUP_HEADER_END, 0x26C);
    assert_eq!(
        (BP_BOOT_FLAG, BP_HEADER, BP_VERSION, BP_LOADFLAGS),
        (0x1FE, 0x202, 0x206, 0x211)
    );
    assert_eq!(
        (BP_CMD_LINE_PTR, BP_XLOADFLAGS, BP_CMDLINE_SIZE),
        (0x228, 0x236, 0x238)
    );
    assert_eq!((BP_PREF_ADDRESS, BP_INIT_SIZE), (0x258, 0x260));
    assert_eq!(BP_E820_TABLE, 0x2D0);
}

#[test]
fn vmlinux_boot_params_at_spec_offsets() {
    let l = layout();
    let rd = GuestRange {
        base: 0x1000_0000,
        len: 12345,
    };
    let b = boot_params(&BootParamsInput {
        setup_header: None,
        initrd: Some(rd),
        rsdp: 0xE0000,
        e820: &l.e820,
    });
    let p = parse(&b);
    let h = p.hdr;
    assert_eq!({ h.boot_flag }, 0xAA55);
    assert_eq!({ h.header }, u32::from_le_bytes(*b"HdrS"));
    assert_eq!({ h.version }, 0x020F);
    assert_eq!({ h.loadflags }, 0x01);
    assert_eq!({ h.type_of_loader }, 0xFF);
    assert_eq!({ h.cmd_line_ptr }, 0x20000);
    assert_eq!({ h.cmdline_size }, 2047);
    assert_eq!({ h.ramdisk_image }, 0x1000_0000);
    assert_eq!({ h.ramdisk_size }, 12345);
    assert_eq!({ h.hardware_subarch }, 0);
    assert_eq!({ p.acpi_rsdp_addr }, 0xE0000);
    assert_eq!(p.sentinel, 0);
    assert_eq!({ p.ext_ramdisk_image }, 0);
    assert_eq!(p.e820_entries as usize, l.e820.len());
    for (i, e) in l.e820.iter().enumerate() {
        let t = p.e820_table[i];
        assert_eq!(
            ({ t.addr }, { t.size }, { t.type_ }),
            (e.addr, e.size, e.kind)
        );
    }
    // Raw offsets from the spec, too.
    assert_eq!(&b[0x202..0x206], b"HdrS");
    assert_eq!(b[0x210], 0xFF);
    assert_eq!(&b[0x228..0x22C], &0x20000u32.to_le_bytes());
    assert_eq!(&b[0x070..0x078], &0xE0000u64.to_le_bytes());
    assert_eq!(b[0x1E8] as usize, l.e820.len());
    assert_eq!(&b[0x2D0..0x2D8], &0u64.to_le_bytes());
    assert_eq!(&b[0x2D0 + 16..0x2D0 + 20], &E820_RAM.to_le_bytes());
}

/// A minimal bzImage: setup sectors with a 2.15 header, then a protected-mode payload.
fn fake_bzimage(version: u16, xloadflags: u16) -> Vec<u8> {
    let setup_sects = 4u8;
    let mut img = vec![0u8; (setup_sects as usize + 1) * 512 + 4096];
    img[BP_SETUP_SECTS] = setup_sects;
    img[BP_BOOT_FLAG..BP_BOOT_FLAG + 2].copy_from_slice(&0xAA55u16.to_le_bytes());
    img[BP_HEADER..BP_HEADER + 4].copy_from_slice(b"HdrS");
    img[BP_VERSION..BP_VERSION + 2].copy_from_slice(&version.to_le_bytes());
    img[BP_LOADFLAGS] = 0x01;
    img[0x214..0x218].copy_from_slice(&0x100000u32.to_le_bytes()); // code32_start
    img[BP_XLOADFLAGS..BP_XLOADFLAGS + 2].copy_from_slice(&xloadflags.to_le_bytes());
    img[BP_CMDLINE_SIZE..BP_CMDLINE_SIZE + 4].copy_from_slice(&2047u32.to_le_bytes());
    img[BP_PREF_ADDRESS..BP_PREF_ADDRESS + 8].copy_from_slice(&0x1000000u64.to_le_bytes());
    img[BP_INIT_SIZE..BP_INIT_SIZE + 4].copy_from_slice(&0x2395000u32.to_le_bytes());
    img
}

#[test]
fn bzimage_boot_params_copy_the_header_then_patch() {
    let img = fake_bzimage(0x020F, 0x7F);
    let b = boot_params(&BootParamsInput {
        setup_header: setup_header_of(&img),
        initrd: None,
        rsdp: 0xE0000,
        e820: &layout().e820,
    });
    let h = parse(&b).hdr;
    assert_eq!(h.setup_sects, 4);
    assert_eq!({ h.version }, 0x020F);
    assert_eq!({ h.xloadflags }, 0x7F);
    assert_eq!({ h.init_size }, 0x2395000);
    assert_eq!({ h.pref_address }, 0x1000000);
    assert_eq!({ h.type_of_loader }, 0xFF);
    assert_eq!({ h.cmd_line_ptr }, 0x20000);
    assert_eq!({ h.ramdisk_image }, 0);
}

#[test]
fn bzimage_loads_with_64bit_entry() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bzImage");
    std::fs::write(&p, fake_bzimage(0x020F, 0x1)).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let k = load_kernel(&mem, &p).unwrap();
    assert_eq!(k.kind, KernelKind::BzImage);
    assert_eq!(k.entry, 0x100200);
    assert_eq!(k.end, 0x1000000 + 0x2395000);
    assert_eq!(k.setup_header.unwrap().setup_sects, 4);
}

#[test]
fn kernel_format_detection() {
    let p = Path::new("k");
    let err = |b: &[u8]| detect_kernel(p, b).unwrap_err().to_string();
    assert!(err(b"").contains("empty"));
    let e = err(&[0x55u8; 4096]);
    assert!(
        e.contains("not an ELF x86-64 vmlinux") || e.contains("expected an ELF x86-64 vmlinux")
    );
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[18] = 62;
    assert_eq!(detect_kernel(p, &elf).unwrap(), KernelKind::Vmlinux);
    elf[18] = 183; // aarch64
    assert!(err(&elf).contains("another machine"));
    assert!(err(b"\x7fELF\x02").contains("truncated"));
    assert_eq!(
        detect_kernel(p, &fake_bzimage(0x020F, 1)).unwrap(),
        KernelKind::BzImage
    );
    assert!(matches!(
        detect_kernel(p, &fake_bzimage(0x020B, 1)),
        Err(KernelError::BzImageTooOld {
            version: 0x020B,
            ..
        })
    ));
    assert!(matches!(
        detect_kernel(p, &fake_bzimage(0x020F, 0)),
        Err(KernelError::BzImageTooOld { .. })
    ));
    let missing = probe_kernel_file(Path::new("/nonexistent/vmlinux")).unwrap_err();
    assert!(matches!(missing, KernelError::Read { .. }), "{missing}");
    assert!(missing.to_string().contains("/nonexistent/vmlinux"));
}

#[test]
fn corrupt_elf_fails_to_load_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vmlinux");
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2;
    elf[5] = 1;
    elf[18] = 62;
    std::fs::write(&p, &elf).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let e = load_kernel(&mem, &p).unwrap_err();
    assert!(matches!(e, KernelError::Load { .. }), "{e}");
}

#[test]
fn cmdline_has_the_base_line_shm_key_and_limit() {
    let shm = GuestRange {
        base: 0x1F80_0000,
        len: 0x80_0000,
    };
    let s = kernel_cmdline(KernelKind::Vmlinux, shm, &["foo=1".into()]).unwrap();
    assert!(s.starts_with("console=ttyS0 loglevel=1 8250.nr_uarts=1 pci=off"));
    assert!(s.contains(" ktstr_shm=0x800000@0x1f800000 foo=1"));
    assert!(!s.contains("nokaslr"));
    assert!(kernel_cmdline(KernelKind::BzImage, shm, &[])
        .unwrap()
        .contains(" nokaslr"));
    let room = CMDLINE_MAX - kernel_cmdline(KernelKind::Vmlinux, shm, &[]).unwrap().len() - 1;
    assert_eq!(
        kernel_cmdline(KernelKind::Vmlinux, shm, &["x".repeat(room)])
            .unwrap()
            .len(),
        CMDLINE_MAX
    );
    assert_eq!(
        kernel_cmdline(KernelKind::Vmlinux, shm, &["x".repeat(room + 1)]),
        Err(CmdlineError::TooLong {
            len: 2048,
            max: 2047
        })
    );
    assert_eq!(check_cmdline("a\0b"), Err(CmdlineError::Nul));
}

#[test]
fn page_tables_identity_map_4g_with_2m_pages() {
    let pts = page_tables();
    let find = |gpa: u64| pts.iter().find(|(g, _)| *g == gpa).unwrap().1;
    let pml4 = find(PML4_GPA);
    assert_eq!(le64(&pml4, 0), PDPT_GPA | 3);
    assert!(pml4[8..].iter().all(|b| *b == 0));
    let pdpt = find(PDPT_GPA);
    // Walk like the MMU: every 2 MiB page maps to itself.
    for addr in [0u64, 0x1000000, 0x3FE0_0000, 0xC000_0000, LAPIC_TEST] {
        let pdpte = le64(&pdpt, ((addr >> 30) & 511) as usize * 8);
        assert_eq!(pdpte & 3, 3);
        let pd = find(pdpte & !0xFFF);
        let pde = le64(&pd, ((addr >> 21) & 511) as usize * 8);
        assert_eq!(pde & 0x83, 0x83, "{addr:#x}");
        assert_eq!(pde & !0x1F_FFFF, addr & !0x1F_FFFF);
    }
    assert_eq!(pts.len(), 2 + IDENTITY_MAPPED_GIB as usize);
}
const LAPIC_TEST: u64 = 0xFEE0_0000;

#[test]
fn gdt_entries_and_segments() {
    let g = gdt();
    assert_eq!(g[2], 0x00AF_9B00_0000_FFFF);
    assert_eq!(g[3], 0x00CF_9300_0000_FFFF);
    assert_eq!(g[4], 0x008F_8B00_0000_FFFF);
    assert_eq!(g[5], 0x00CF_9B00_0000_FFFF);
    let cs = segment(selector::CODE64, g[2]);
    assert_eq!(
        (
            cs.l,
            cs.db,
            cs.g,
            cs.present,
            cs.type_,
            cs.s,
            cs.limit,
            cs.unusable
        ),
        (1, 0, 1, 1, 0xB, 1, 0xFFFF_FFFF, 0)
    );
    let tr = segment(selector::TSS, g[4]);
    assert_eq!((tr.type_, tr.s, tr.present), (0xB, 0, 1), "busy TSS");
    assert_eq!(segment(0, 0).unusable, 1);
    assert_eq!(gdt_entry(0x808B, 0x1234_5678, 0x67), 0x1280_8B34_5678_0067);
    let s = long_mode_sregs(kvm_sregs {
        apic_base: 0xFEE0_0900,
        cr0: 0x6000_0010,
        ..Default::default()
    });
    assert_eq!(s.apic_base, 0xFEE0_0900, "KVM's apic_base is kept");
    assert_eq!(s.cr0, 0x8000_0001, "assigned, not ORed");
    assert_eq!((s.cr3, s.cr4, s.efer), (0x9000, 0x20, 0x500));
    assert_eq!(
        (s.cs.selector, s.ds.selector, s.gdt.base),
        (0x10, 0x18, 0x500)
    );
    let r = entry_regs(0x1000000);
    assert_eq!(
        (r.rip, r.rsi, r.rsp, r.rflags),
        (0x1000000, 0x7000, 0x8FF0, 2)
    );
}
