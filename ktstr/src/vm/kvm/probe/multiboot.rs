//! The probe guest as a multiboot (v1) image, so qemu can boot the very same BSP program and
//! AP trampoline that the VMM runs (`qemu -kernel probe.mb`), for a side-by-side benchmark.
//!
//! qemu's multiboot loader (through SeaBIOS) enters a 32-bit stub in flat protected mode with
//! EBX = the multiboot information. The stub does what the VMM does before the first KVM_RUN:
//! 1. takes the result region from `ktstr_shm=<size>@<base>` on the multiboot command line
//!    (the qemu backend puts it there, as for Linux), or exits with status
//!    [`NO_SHM_STATUS`] without it; this comes first, as qemu's multiboot information sits
//!    at 0x9000, where the page tables go;
//! 2. copies the low-memory structures (GDT, CRC table, parameter block, zeroed boot_params,
//!    identity page tables for 4 GiB, AP trampoline) from the image to their addresses;
//! 3. finds the RSDP in the BIOS area (0xE0000..0xFFFFF) and stores it in boot_params;
//! 4. enables PAE, long mode and paging and jumps to the 64-bit BSP program with RSI =
//!    boot_params.
//!
//! Image layout (loaded at [`MB_LOAD`], the header's a.out-kludge addresses, so qemu needs no
//! ELF): header, GDT pointer, 32-bit stub, 64-bit entry at +[`ENTRY64_OFF`], BSP program at
//! +[`BSP_OFF`], then the low-memory blob at +[`LOW_OFF`] (a copy of guest-physical
//! [0, [`LOW_END`]), of which [`LOW_START`].. is copied).

use iced_x86::code_asm::*;
use iced_x86::{Code, IcedError, Instruction};

use super::code::{self, CRC_TABLE, PD, PD_SHM_BASE, PD_SHM_LEN, TRAMPOLINE};
use crate::vm::kvm::boot::{gdt, gdt_bytes, page_tables, selector, BP_ACPI_RSDP_ADDR};
use crate::vm::kvm::layout::{BOOT_PARAMS_GPA, BOOT_STACK, GDT_GPA, PML4_GPA};

/// Where qemu loads the image (1 MiB, like a kernel).
pub const MB_LOAD: u64 = 0x10_0000;
/// Image offset of the GDT pointer (limit u16, base u32) the stub loads.
const GDTR_OFF: u64 = 0x20;
/// Scratch words in the image (after the GDT pointer): the parsed SHM length and base.
const SCRATCH_LEN: u32 = (MB_LOAD + 0x28) as u32;
const SCRATCH_BASE: u32 = (MB_LOAD + 0x30) as u32;
/// Image offset of the 32-bit stub (the multiboot entry).
const STUB_OFF: u64 = 0x40;
/// Image offset of the 64-bit entry.
pub const ENTRY64_OFF: u64 = 0x800;
/// Image offset of the BSP program.
pub const BSP_OFF: u64 = 0x1000;
/// Image offset of the low-memory blob.
pub const LOW_OFF: u64 = 0x4000;
/// First guest-physical byte the stub copies (below: real-mode IVT and BIOS data).
pub const LOW_START: u64 = GDT_GPA;
/// End of the copied low memory: the trampoline's page.
pub const LOW_END: u64 = TRAMPOLINE + 0x1000;
/// Exit status when the command line lacks `ktstr_shm=`.
pub const NO_SHM_STATUS: u8 = 3;

/// Multiboot v1 header magic.
const MB_MAGIC: u32 = 0x1BAD_B002;
/// Header flags: bit 16, the load addresses are in the header (no ELF needed).
const MB_FLAGS: u32 = 1 << 16;
/// EFER MSR and its LME bit.
const MSR_EFER: u32 = 0xC000_0080;
const EFER_LME: u32 = 1 << 8;

fn le32(s: &[u8]) -> u32 {
    u32::from_le_bytes(s.try_into().unwrap_or([0; 4]))
}

/// Emits: parse a hexadecimal number (optional `0x`) at ESI into EDX:EAX, ESI past it.
/// Clobbers ECX.
fn emit_parse_hex(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut digits = a.create_label();
    let mut have = a.create_label();
    let mut done = a.create_label();
    a.xor(eax, eax)?;
    a.xor(edx, edx)?;
    a.cmp(word_ptr(esi), u16::from_le_bytes(*b"0x") as u32)?;
    a.jne(digits)?;
    a.add(esi, 2)?;
    a.set_label(&mut digits)?;
    a.movzx(ecx, byte_ptr(esi))?;
    a.sub(ecx, b'0' as i32)?;
    a.cmp(ecx, 9)?;
    a.jbe(have)?;
    a.movzx(ecx, byte_ptr(esi))?;
    a.or(ecx, 0x20)?; // lower case
    a.sub(ecx, b'a' as i32)?;
    a.cmp(ecx, 5)?;
    a.ja(done)?;
    a.add(ecx, 10)?;
    a.set_label(&mut have)?;
    a.shld(edx, eax, 4)?;
    a.shl(eax, 4)?;
    a.or(eax, ecx)?;
    a.inc(esi)?;
    a.jmp(digits)?;
    a.set_label(&mut done)?;
    Ok(())
}

/// The 32-bit multiboot entry stub, assembled for `MB_LOAD + STUB_OFF`.
fn stub() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    let mut scan = a.create_label();
    let mut next = a.create_label();
    let mut no_shm = a.create_label();
    let mut parsed = a.create_label();
    let mut rsdp_scan = a.create_label();
    let mut rsdp_next = a.create_label();
    let mut rsdp_done = a.create_label();
    a.cli()?;
    a.cld()?;
    a.mov(ebp, ebx)?;
    // 2 first: qemu puts the multiboot information at 0x9000, where the page tables go.
    // "ktstr_shm=<size>@<base>" from the command line (multiboot info flags bit 2), kept in
    // the image's scratch words until the parameter block is in place.
    a.test(dword_ptr(ebp), 4)?;
    a.jz(no_shm)?;
    a.mov(esi, dword_ptr(ebp + 16))?;
    a.set_label(&mut scan)?;
    a.cmp(byte_ptr(esi), 0)?;
    a.je(no_shm)?;
    a.cmp(dword_ptr(esi), le32(b"ktst"))?;
    a.jne(next)?;
    a.cmp(dword_ptr(esi + 4), le32(b"r_sh"))?;
    a.jne(next)?;
    a.cmp(word_ptr(esi + 8), u16::from_le_bytes(*b"m=") as u32)?;
    a.jne(next)?;
    a.add(esi, 10)?;
    emit_parse_hex(&mut a)?;
    a.mov(dword_ptr(SCRATCH_LEN), eax)?;
    a.mov(dword_ptr(SCRATCH_LEN + 4), edx)?;
    a.cmp(byte_ptr(esi), b'@' as u32)?;
    a.jne(no_shm)?;
    a.inc(esi)?;
    emit_parse_hex(&mut a)?;
    a.mov(dword_ptr(SCRATCH_BASE), eax)?;
    a.mov(dword_ptr(SCRATCH_BASE + 4), edx)?;
    a.jmp(parsed)?;
    a.set_label(&mut next)?;
    a.inc(esi)?;
    a.jmp(scan)?;
    a.set_label(&mut no_shm)?;
    a.mov(al, NO_SHM_STATUS as u32)?;
    a.out(0xF4u32, al)?;
    let mut hang = a.create_label();
    a.set_label(&mut hang)?;
    a.hlt()?;
    a.jmp(hang)?;
    a.set_label(&mut parsed)?;
    // 1. Low memory, then the result region into its parameter block.
    a.mov(esi, (MB_LOAD + LOW_OFF + LOW_START) as u32)?;
    a.mov(edi, LOW_START as u32)?;
    a.mov(ecx, (LOW_END - LOW_START) as u32)?;
    a.rep().movsb()?;
    for (from, to) in [(SCRATCH_LEN, PD_SHM_LEN), (SCRATCH_BASE, PD_SHM_BASE)] {
        for half in [0, 4] {
            a.mov(eax, dword_ptr(from + half))?;
            a.mov(dword_ptr(to as u32 + half), eax)?;
        }
    }
    // 3. The RSDP: "RSD PTR " on a 16-byte boundary in the BIOS area.
    a.mov(esi, 0xE_0000u32)?;
    a.set_label(&mut rsdp_scan)?;
    a.cmp(dword_ptr(esi), le32(b"RSD "))?;
    a.jne(rsdp_next)?;
    a.cmp(dword_ptr(esi + 4), le32(b"PTR "))?;
    a.jne(rsdp_next)?;
    a.mov(
        dword_ptr((BOOT_PARAMS_GPA + BP_ACPI_RSDP_ADDR as u64) as u32),
        esi,
    )?;
    a.jmp(rsdp_done)?;
    a.set_label(&mut rsdp_next)?;
    a.add(esi, 16)?;
    a.cmp(esi, 0x10_0000)?;
    a.jb(rsdp_scan)?;
    a.set_label(&mut rsdp_done)?;
    // 4. Long mode: the boot GDT, PAE, CR3, EFER.LME, then paging.
    a.lgdt(ptr((MB_LOAD + GDTR_OFF) as u32))?;
    a.mov(eax, cr4)?;
    a.or(eax, 0x20)?;
    a.mov(cr4, eax)?;
    a.mov(eax, PML4_GPA as u32)?;
    a.mov(cr3, eax)?;
    a.mov(ecx, MSR_EFER)?;
    a.rdmsr()?;
    a.or(eax, EFER_LME)?;
    a.wrmsr()?;
    a.mov(eax, cr0)?;
    a.or(eax, 0x8000_0001u32 as i32)?;
    a.mov(cr0, eax)?;
    a.add_instruction(Instruction::with_far_branch(
        Code::Jmp_ptr1632,
        selector::CODE64,
        (MB_LOAD + ENTRY64_OFF) as u32,
    )?)?;
    a.assemble(MB_LOAD + STUB_OFF)
}

/// The 64-bit entry: data segments, the boot stack, RSI = boot_params, then the BSP program.
fn entry64() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    a.mov(ax, selector::DATA as u32)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    a.mov(rsp, BOOT_STACK)?;
    a.mov(rsi, BOOT_PARAMS_GPA)?;
    a.mov(rax, MB_LOAD + BSP_OFF)?;
    a.jmp(rax)?;
    a.assemble(MB_LOAD + ENTRY64_OFF)
}

fn put(img: &mut Vec<u8>, at: u64, bytes: &[u8]) {
    let at = at as usize;
    if img.len() < at + bytes.len() {
        img.resize(at + bytes.len(), 0);
    }
    img[at..at + bytes.len()].copy_from_slice(bytes);
}

/// The multiboot image of the probe. `wait_cycles` bounds the BSP's waits (TSC cycles), as
/// the VMM's parameter block does; the result region comes from the command line at boot.
pub fn image(wait_cycles: u64) -> Result<Vec<u8>, IcedError> {
    let bsp = code::bsp_program(MB_LOAD + BSP_OFF)?;
    let stub = stub()?;
    let e64 = entry64()?;
    assert!(STUB_OFF as usize + stub.len() <= ENTRY64_OFF as usize);
    assert!(BSP_OFF as usize + bsp.len() <= LOW_OFF as usize);
    let len = LOW_OFF + LOW_END;
    let mut img = vec![0u8; len as usize];
    let end = (MB_LOAD + len) as u32;
    let header = [
        MB_MAGIC,
        MB_FLAGS,
        0u32.wrapping_sub(MB_MAGIC.wrapping_add(MB_FLAGS)),
        MB_LOAD as u32, // header_addr
        MB_LOAD as u32, // load_addr
        end,            // load_end_addr
        end,            // bss_end_addr (no bss)
        (MB_LOAD + STUB_OFF) as u32,
    ];
    for (i, w) in header.iter().enumerate() {
        put(&mut img, 4 * i as u64, &w.to_le_bytes());
    }
    let limit = (gdt().len() * 8 - 1) as u16;
    put(&mut img, GDTR_OFF, &limit.to_le_bytes());
    put(&mut img, GDTR_OFF + 2, &(GDT_GPA as u32).to_le_bytes());
    put(&mut img, STUB_OFF, &stub);
    put(&mut img, ENTRY64_OFF, &e64);
    put(&mut img, BSP_OFF, &bsp);
    // Low memory, as the VMM writes it (boot_params stays zero but for the RSDP).
    put(&mut img, LOW_OFF + GDT_GPA, &gdt_bytes());
    put(&mut img, LOW_OFF + CRC_TABLE, &code::crc_table());
    put(&mut img, LOW_OFF + PD + 0x10, &wait_cycles.to_le_bytes());
    for (gpa, page) in page_tables() {
        put(&mut img, LOW_OFF + gpa, &page);
    }
    put(&mut img, LOW_OFF + TRAMPOLINE, &code::trampoline()?);
    assert_eq!(
        img.len() as u64,
        len,
        "a low-memory piece ends past LOW_END"
    );
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_layout() {
        let img = image(1000).unwrap();
        let w = |i: usize| u32::from_le_bytes(img[4 * i..4 * i + 4].try_into().unwrap());
        assert_eq!(w(0), MB_MAGIC);
        assert_eq!(w(0).wrapping_add(w(1)).wrapping_add(w(2)), 0, "checksum");
        assert_eq!(w(1) & 0xFFFF, 0, "no boot-loader services needed");
        assert_eq!(w(4), MB_LOAD as u32);
        assert_eq!(w(5) as u64, MB_LOAD + img.len() as u64);
        assert_eq!(w(7) as u64, MB_LOAD + STUB_OFF);
        // The page tables map 4 GiB (the SHM, LAPIC and IOAPIC), the trampoline is in place,
        // and the wait bound is in the parameter block.
        assert_eq!(
            &img[(LOW_OFF + TRAMPOLINE) as usize..][..16],
            &code::trampoline().unwrap()[..16]
        );
        assert_eq!(
            &img[(LOW_OFF + PD + 0x10) as usize..][..8],
            &1000u64.to_le_bytes()
        );
        let pml4 = u64::from_le_bytes(
            img[(LOW_OFF + PML4_GPA) as usize..][..8]
                .try_into()
                .unwrap(),
        );
        assert_eq!(pml4 & !0xFFF, PML4_GPA + 0x1000);
    }
}
