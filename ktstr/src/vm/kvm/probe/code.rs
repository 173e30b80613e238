//! The probe guest's machine code, generated with iced-x86's `code_asm` assembler.
//!
//! Why an assembler rather than hand-encoded bytes: the probe mixes 16-, 32- and 64-bit code
//! (real-mode AP trampoline, protected-mode AP body, long-mode BSP), 32-bit addressing inside
//! 64-bit code (so 0xFEE00000 is not sign-extended) and forward branches; iced encodes all of
//! that, resolves labels, and lets one Rust function emit the same per-CPU routine for 32- and
//! 64-bit mode. The bytes are generated at run time from this readable source.
//!
//! Low-memory map used by the probe (all below the 640 KiB RAM limit, clear of boot_params,
//! the boot stack, page tables and the command line):
//! - [`CRC_TABLE`]: the CRC-32 table the host supplies (the frame checksum of `crate::shm`);
//! - [`PD`]: parameters from the host and state shared between vCPUs (offsets `PD_*`);
//! - [`TRAMPOLINE`]: AP start-up code (SIPI vector [`SIPI_VECTOR`]);
//! - [`RECORDS`]: one [`RECORD_LEN`]-byte record per vCPU, written by that vCPU;
//! - [`AP_STACKS`]: one small stack per AP (the trampoline page also holds the APs' IDT and
//!   the IOAPIC test's interrupt handler).
//!
//! The same code also boots under qemu as a multiboot image ([`super::multiboot`]).

use iced_x86::code_asm::*;
use iced_x86::{Code, IcedError, Instruction};

use crate::shm::{FrameType, HEADER_LEN, MAGIC, VERSION};
use crate::vm::kvm::boot::selector;
use crate::vm::kvm::layout::{GDT_GPA, LAPIC_GPA};

/// CRC-32 (IEEE, reflected) lookup table, 256 × u32.
pub const CRC_TABLE: u64 = 0x5000;
/// Parameter/state block.
pub const PD: u64 = 0x6000;
/// u64: SHM base (host-written).
pub const PD_SHM_BASE: u64 = PD;
/// u64: SHM length (host-written).
pub const PD_SHM_LEN: u64 = PD + 0x08;
/// u64: TSC cycles the BSP waits for the APs (host-written).
pub const PD_WAIT_CYCLES: u64 = PD + 0x10;
/// u32: records claimed (lock xadd).
pub const PD_CLAIMED: u64 = PD + 0x18;
/// u32: records completed (lock inc).
pub const PD_DONE: u64 = PD + 0x1C;
/// u64: frame-area bytes in use.
pub const PD_WRITE_OFF: u64 = PD + 0x20;
/// u32: next frame sequence number.
pub const PD_SEQ: u64 = PD + 0x28;
/// u32 zero: the Exit frame's payload.
pub const PD_ZERO: u64 = PD + 0x2C;
/// u32: non-zero when the MADT lists x2APIC (type 9) processors; the BSP sets it before
/// starting the APs, and every vCPU then runs its LAPIC in x2APIC mode.
pub const PD_X2APIC: u64 = PD + 0x30;
/// IOAPIC interrupt test, reported as one Log frame of three u32: the APIC ID (+1) of the
/// vCPU whose handler ran (0: none), then RTE 4's low half read back after that handler's
/// EOI, then the destination APIC ID the BSP programmed.
pub const PD_IRQ: u64 = PD + 0x34;
/// u32: the handler's APIC ID + 1.
pub const PD_IRQ_SEEN: u64 = PD_IRQ;
/// u32: RTE 4 low half after the EOI.
pub const PD_IRQ_RTE: u64 = PD_IRQ + 4;
/// u32: the destination the BSP programmed.
pub const PD_IRQ_DEST: u64 = PD_IRQ + 8;
/// u32: AP stacks handed out (lock xadd).
pub const PD_STACKS: u64 = PD + 0x600;
/// u32 count, then up to [`MAX_SIGS`] u32 ACPI signatures found from the XSDT.
pub const PD_SIGS: u64 = PD + 0x40;
/// Signatures kept.
pub const MAX_SIGS: u32 = 31;
/// u32 count, then the APIC IDs of enabled MADT type-0 and type-9 entries (u32 each).
pub const PD_MADT: u64 = PD + 0xC0;
/// APIC IDs kept.
pub const MAX_MADT: u32 = 256;
/// AP trampoline (4 KiB aligned, below 1 MiB).
pub const TRAMPOLINE: u64 = 0x1_0000;
/// SIPI vector: the trampoline's page number.
pub const SIPI_VECTOR: u32 = (TRAMPOLINE >> 12) as u32;
/// Per-vCPU records.
pub const RECORDS: u64 = 0x4_0000;
/// AP stacks: [`AP_STACK_LEN`] bytes each, growing down from the end of the AP's slot.
pub const AP_STACKS: u64 = 0x8_0000;
/// Bytes of one AP stack (the interrupt frame needs 12).
pub const AP_STACK_LEN: u32 = 64;
/// Vector of the IOAPIC test interrupt (COM1, IOAPIC pin 4).
pub const IRQ_VECTOR: u8 = 0x40;
/// IOAPIC pin the test drives: COM1's.
pub const IRQ_PIN: u32 = 4;
/// RTE bits the BSP programs: level-triggered, active high, fixed, physical, unmasked.
pub const IRQ_RTE_LOW: u32 = 0x8000 | IRQ_VECTOR as u32;
/// Spurious-vector register value: APIC enabled, spurious vector [`IRQ_VECTOR`].
const SVR_ENABLE: u32 = 0x100 | IRQ_VECTOR as u32;
/// IOAPIC MMIO base.
const IOAPIC: u32 = 0xFEC0_0000;
/// Marker a vCPU writes at record offset 4 when its record is complete.
pub const RECORD_DONE: u32 = 0x600D;
/// The (leaf, subleaf) pairs each vCPU queries, in record order.
pub const LEAVES: [(u32, u32); 20] = [
    (0, 0),
    (1, 0),
    (0xB, 0),
    (0xB, 1),
    (0xB, 2),
    (4, 0),
    (4, 1),
    (4, 2),
    (4, 3),
    (0x1F, 0),
    (0x8000_0000, 0),
    (0x8000_0001, 0),
    (0x8000_0006, 0),
    (0x8000_0008, 0),
    (0x8000_001D, 0),
    (0x8000_001D, 1),
    (0x8000_001D, 2),
    (0x8000_001D, 3),
    (0x8000_001E, 0),
    (0x4000_0001, 0),
];
/// Record header: LAPIC ID u32 (xAPIC: 0xFEE00020 bits 31:24; x2APIC: MSR 0x802), done
/// marker u32, IA32_APIC_BASE (low half) as the vCPU found it u32, reserved u32.
pub const RECORD_HEADER: u32 = 16;
/// Record: the header, then eax/ebx/ecx/edx per leaf of [`LEAVES`].
pub const RECORD_LEN: u32 = RECORD_HEADER + 16 * LEAVES.len() as u32;

/// The CRC-32 table (polynomial 0xEDB88320), as the host writes it at [`CRC_TABLE`].
pub fn crc_table() -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    for i in 0..256u32 {
        let mut c = i;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        out.extend_from_slice(&c.to_le_bytes());
    }
    out
}

/// IA32_APIC_BASE.
const MSR_APIC_BASE: u32 = 0x1B;
/// IA32_APIC_BASE bits 11 (enable) and 10 (x2APIC mode).
const APIC_BASE_EN_EXTD: u32 = 0xC00;
/// x2APIC ID register (MSR form of LAPIC offset 0x20).
const MSR_X2APIC_ID: u32 = 0x802;
/// x2APIC interrupt command register (64-bit: destination in the high half).
const MSR_X2APIC_ICR: u32 = 0x830;

/// Emits the per-vCPU routine (valid in 32- and 64-bit mode: only 32-bit registers and
/// addressing): claim a record slot, store the LAPIC ID and the CPUID leaves, mark it done.
/// If [`PD_X2APIC`] is set, the vCPU first switches its LAPIC to x2APIC mode and reads the
/// 32-bit ID from MSR 0x802 (the xAPIC ID register holds only 8 bits).
fn emit_record(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.mov(eax, 1u32)?;
    a.mov(edi, PD_CLAIMED as u32)?;
    a.lock().xadd(dword_ptr(edi), eax)?;
    a.imul_3(edi, eax, RECORD_LEN as i32)?;
    a.add(edi, RECORDS as u32)?;
    let mut xapic = a.create_label();
    let mut have_id = a.create_label();
    a.mov(ecx, MSR_APIC_BASE)?;
    a.rdmsr()?;
    a.mov(dword_ptr(edi + 8), eax)?;
    a.mov(esi, PD_X2APIC as u32)?;
    a.cmp(dword_ptr(esi), 0)?;
    a.je(xapic)?;
    a.mov(ecx, MSR_APIC_BASE)?;
    a.rdmsr()?;
    a.or(eax, APIC_BASE_EN_EXTD)?;
    a.wrmsr()?;
    a.mov(ecx, MSR_X2APIC_ID)?;
    a.rdmsr()?;
    a.mov(esi, eax)?;
    a.jmp(have_id)?;
    a.set_label(&mut xapic)?;
    a.mov(esi, (LAPIC_GPA + 0x20) as u32)?;
    a.mov(esi, dword_ptr(esi))?;
    a.shr(esi, 24)?;
    a.set_label(&mut have_id)?;
    a.mov(dword_ptr(edi), esi)?;
    for (k, (leaf, sub)) in LEAVES.iter().enumerate() {
        let at = (RECORD_HEADER + 16 * k as u32) as i32;
        a.mov(eax, *leaf)?;
        a.mov(ecx, *sub)?;
        a.cpuid()?;
        a.mov(dword_ptr(edi + at), eax)?;
        a.mov(dword_ptr(edi + (at + 4)), ebx)?;
        a.mov(dword_ptr(edi + (at + 8)), ecx)?;
        a.mov(dword_ptr(edi + (at + 12)), edx)?;
    }
    a.mov(dword_ptr(edi + 4), RECORD_DONE)?;
    a.mov(edi, PD_DONE as u32)?;
    a.lock().inc(dword_ptr(edi))?;
    Ok(())
}

/// Trampoline offset of the GDT pointer.
const GDTR_OFF: u64 = 0x80;
/// Trampoline offset of the IDT pointer.
const IDTR_OFF: u64 = 0x88;
/// Trampoline offset of the protected-mode code.
const PM32_OFF: u64 = 0x100;
/// Trampoline offset of the 32-bit IDT (gates 0..=[`IRQ_VECTOR`], only that one present).
const IDT_OFF: u64 = 0x800;
/// Trampoline offset of the interrupt handler.
const HANDLER_OFF: u64 = 0xC00;

/// The AP's interrupt handler (32-bit): read the UART's IIR (acknowledging it), EOI (with a
/// split irqchip, KVM reports it to the VMM's IOAPIC before the next instruction), then record its APIC ID + 1 and halt with
/// interrupts on (a re-delivered interrupt runs the handler again).
fn handler() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    let mut xapic = a.create_label();
    let mut store = a.create_label();
    // Acknowledge the UART first (reading IIR clears its THRE condition): qemu's 16550
    // holds its level line high until then, and an EOI with the line still high makes the
    // IOAPIC deliver again, endlessly once this handler waits with interrupts on.
    a.mov(dx, 0x3FAu32)?;
    a.in_(al, dx)?;
    a.mov(esi, PD_X2APIC as u32)?;
    a.cmp(dword_ptr(esi), 0)?;
    a.je(xapic)?;
    a.mov(ecx, 0x80Bu32)?; // x2APIC EOI
    a.xor(eax, eax)?;
    a.xor(edx, edx)?;
    a.wrmsr()?;
    a.mov(ecx, MSR_X2APIC_ID)?;
    a.rdmsr()?;
    a.jmp(store)?;
    a.set_label(&mut xapic)?;
    a.mov(esi, (LAPIC_GPA + 0xB0) as u32)?; // xAPIC EOI
    a.mov(dword_ptr(esi), 0)?;
    a.mov(esi, (LAPIC_GPA + 0x20) as u32)?;
    a.mov(eax, dword_ptr(esi))?;
    a.shr(eax, 24)?;
    a.set_label(&mut store)?;
    // A port write exits to the VMM, so the vCPU re-enters KVM_RUN, where KVM raises the
    // pending KVM_EXIT_IOAPIC_EOI. (On the software KVM this was written on, an emulated
    // guest that halts right after its EOI would keep that exit pending until it next woke;
    // hardware KVM exits on the EOI write itself.)
    a.mov(esi, eax)?;
    a.out(0x80u32, al)?;
    a.mov(eax, esi)?;
    a.inc(eax)?;
    a.mov(esi, PD_IRQ_SEEN as u32)?;
    a.mov(dword_ptr(esi), eax)?;
    // No iret: the software KVM this was written on cannot emulate it, and the AP has
    // nothing left to do. It waits with interrupts on: with the in-kernel irqchip, an
    // irqfd raises and lowers the line from a host worker, and an EOI that lands between
    // the two delivers the interrupt again (the level-triggered line is still high). Taking
    // it again (nested, a few bytes of stack each) EOIs it again, so remote IRR clears;
    // halting with interrupts off left it set for good (seen once in CI).
    let mut halt = a.create_label();
    a.set_label(&mut halt)?;
    a.sti()?;
    a.hlt()?;
    a.jmp(halt)?;
    a.assemble(TRAMPOLINE + HANDLER_OFF)
}

/// The AP trampoline, assembled for [`TRAMPOLINE`]: real mode → lgdt → protected mode (flat
/// 32-bit segments of the boot GDT, its own stack, an IDT with the test vector) → the
/// per-vCPU routine → `sti; hlt` forever, taking the IOAPIC test interrupt if it is the
/// target.
pub fn trampoline() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(16)?;
    a.cli()?;
    a.mov(ax, cs)?;
    a.mov(ds, ax)?;
    a.lgdt(ptr(GDTR_OFF))?;
    a.mov(eax, cr0)?;
    a.or(eax, 1)?;
    a.mov(cr0, eax)?;
    a.add_instruction(Instruction::with_far_branch(
        Code::Jmp_ptr1632,
        selector::CODE32,
        (TRAMPOLINE + PM32_OFF) as u32,
    )?)?;
    let mut out = a.assemble(0)?;
    assert!(out.len() <= GDTR_OFF as usize, "16-bit trampoline too long");
    out.resize(GDTR_OFF as usize, 0x90);
    let limit = (crate::vm::kvm::boot::gdt().len() * 8 - 1) as u16;
    out.extend_from_slice(&limit.to_le_bytes());
    out.extend_from_slice(&(GDT_GPA as u32).to_le_bytes());
    out.resize(IDTR_OFF as usize, 0);
    let idt_len = (IRQ_VECTOR as u16 + 1) * 8;
    out.extend_from_slice(&(idt_len - 1).to_le_bytes());
    out.extend_from_slice(&((TRAMPOLINE + IDT_OFF) as u32).to_le_bytes());
    out.resize(PM32_OFF as usize, 0);

    let mut a = CodeAssembler::new(32)?;
    a.mov(ax, selector::DATA as u32)?;
    a.mov(ds, ax)?;
    a.mov(es, ax)?;
    a.mov(ss, ax)?;
    // A stack of its own: slot n ends at AP_STACKS + (n + 1) * AP_STACK_LEN.
    a.mov(eax, 1u32)?;
    a.mov(edi, PD_STACKS as u32)?;
    a.lock().xadd(dword_ptr(edi), eax)?;
    a.inc(eax)?;
    a.imul_3(esp, eax, AP_STACK_LEN as i32)?;
    a.add(esp, AP_STACKS as u32)?;
    a.mov(edi, (TRAMPOLINE + IDTR_OFF) as u32)?;
    a.lidt(ptr(edi))?;
    emit_record(&mut a)?;
    // Software-enable the LAPIC (SVR bit 8; spurious vector = the test vector, whose
    // handler tolerates it): after INIT it accepts no fixed interrupts.
    let mut xapic = a.create_label();
    let mut halt = a.create_label();
    a.mov(esi, PD_X2APIC as u32)?;
    a.cmp(dword_ptr(esi), 0)?;
    a.je(xapic)?;
    a.mov(ecx, 0x80Fu32)?; // x2APIC SVR
    a.mov(eax, SVR_ENABLE)?;
    a.xor(edx, edx)?;
    a.wrmsr()?;
    a.jmp(halt)?;
    a.set_label(&mut xapic)?;
    a.mov(esi, (LAPIC_GPA + 0xF0) as u32)?;
    a.mov(dword_ptr(esi), SVR_ENABLE)?;
    a.set_label(&mut halt)?;
    a.sti()?;
    a.hlt()?;
    a.jmp(halt)?;
    out.extend(a.assemble(TRAMPOLINE + PM32_OFF)?);
    assert!(out.len() <= IDT_OFF as usize, "32-bit trampoline too long");
    out.resize(IDT_OFF as usize, 0);
    // Only the test vector's gate is present: 32-bit interrupt gate, DPL 0.
    let h = (TRAMPOLINE + HANDLER_OFF) as u32;
    let mut gate = Vec::with_capacity(8);
    gate.extend_from_slice(&(h as u16).to_le_bytes());
    gate.extend_from_slice(&selector::CODE32.to_le_bytes());
    gate.extend_from_slice(&0x8E00u16.to_le_bytes());
    gate.extend_from_slice(&((h >> 16) as u16).to_le_bytes());
    out.resize((IDT_OFF + IRQ_VECTOR as u64 * 8) as usize, 0);
    out.extend_from_slice(&gate);
    out.resize(HANDLER_OFF as usize, 0);
    out.extend(handler()?);
    assert!(out.len() <= 4096, "trampoline page overflows");
    Ok(out)
}

fn sig(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}

/// Sends one IPI to the APIC ID in R8D through the x2APIC ICR MSR (a single 64-bit write,
/// no delivery-status bit to poll).
fn emit_x2apic_ipi(a: &mut CodeAssembler, low: u32) -> Result<(), IcedError> {
    a.mov(ecx, MSR_X2APIC_ICR)?;
    a.mov(edx, r8d)?;
    a.mov(eax, low)?;
    a.wrmsr()?;
    Ok(())
}

/// Sends one IPI to the APIC ID in EAX[31:24] (left intact) via the xAPIC ICR, then waits
/// for the delivery-status bit to clear.
fn emit_ipi(a: &mut CodeAssembler, low: u32) -> Result<(), IcedError> {
    a.mov(edi, (LAPIC_GPA + 0x310) as u32)?;
    a.mov(dword_ptr(edi), eax)?;
    a.mov(edi, (LAPIC_GPA + 0x300) as u32)?;
    a.mov(dword_ptr(edi), low)?;
    let mut spin = a.create_label();
    a.set_label(&mut spin)?;
    a.test(dword_ptr(edi), 0x1000)?;
    a.jnz(spin)?;
    Ok(())
}

/// The IOAPIC test (BSP, 64-bit, after the APs reported; clobbers R14): route pin 4
/// (COM1) level-triggered to [`IRQ_VECTOR`] on the last MADT CPU (with an x2APIC MADT, the
/// largest APIC ID: destination bits 14:8 go in RTE bits 55:49, the extended destination
/// ID), make the UART raise THRE (IER = 2, then a byte), wait for that CPU's handler, and
/// poll RTE 4 until its remote IRR is clear again after the EOI (the report holds the last
/// value read). Skipped on one CPU (the BSP never enables interrupts).
fn emit_irq_test(a: &mut CodeAssembler) -> Result<(), IcedError> {
    let mut skip = a.create_label();
    let mut wait = a.create_label();
    let mut done = a.create_label();
    a.mov(eax, dword_ptr(PD_MADT))?;
    a.cmp(eax, 2)?;
    a.jb(skip)?;
    a.mov(r8d, dword_ptr(rax * 4 + PD_MADT))?; // the last entry
    a.mov(dword_ptr(PD_IRQ_DEST), r8d)?;
    a.mov(edi, IOAPIC)?;
    a.mov(dword_ptr(edi), 0x11 + 2 * IRQ_PIN)?;
    a.mov(eax, r8d)?;
    a.shl(eax, 24)?;
    a.mov(edx, r8d)?;
    a.shr(edx, 8)?;
    a.and(edx, 0x7F)?;
    a.shl(edx, 17)?;
    a.or(eax, edx)?;
    a.mov(dword_ptr(edi + 0x10), eax)?;
    a.mov(dword_ptr(edi), 0x10 + 2 * IRQ_PIN)?;
    a.mov(dword_ptr(edi + 0x10), IRQ_RTE_LOW)?;
    // Its own, shorter bound (1/16 of the records' wait, from now): under qemu, whose
    // IOAPIC is not ours, an EOI that never clears remote IRR must not eat the watchdog.
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(rdx, qword_ptr(PD_WAIT_CYCLES))?;
    a.shr(rdx, 4)?;
    a.add(rax, rdx)?;
    a.mov(r14, rax)?;
    a.mov(dx, 0x3F9u32)?;
    a.mov(al, 2u32)?;
    a.out(dx, al)?;
    a.mov(dx, 0x3F8u32)?;
    a.mov(al, b'!' as u32)?;
    a.out(dx, al)?;
    a.set_label(&mut wait)?;
    a.cmp(dword_ptr(PD_IRQ_SEEN), 0)?;
    a.jne(done)?;
    a.pause()?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.cmp(rax, r14)?;
    a.jb(wait)?;
    // Read RTE 4 until its remote IRR clears (the EOI reached the IOAPIC) or the deadline.
    let mut poll = a.create_label();
    let mut read_done = a.create_label();
    a.set_label(&mut done)?;
    a.mov(edi, IOAPIC)?;
    a.set_label(&mut poll)?;
    a.mov(dword_ptr(edi), 0x10 + 2 * IRQ_PIN)?;
    a.mov(esi, dword_ptr(edi + 0x10))?;
    a.test(esi, 1 << 14)?;
    a.jz(read_done)?;
    a.pause()?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.cmp(rax, r14)?;
    a.jb(poll)?;
    a.set_label(&mut read_done)?;
    a.mov(dword_ptr(PD_IRQ_RTE), esi)?;
    a.set_label(&mut skip)?;
    Ok(())
}

/// The BSP's program, assembled for `ip` and entered in 64-bit mode with RSI = boot_params.
///
/// 1. Initialise the SHM header (as the guest side of `crate::shm` does).
/// 2. Hello frame: the 4 KiB boot_params the guest received.
/// 3. Walk RSDP → XSDT (or RSDT); keep each table's signature (and the FADT's DSDT); from the MADT keep
///    every enabled type-0 and type-9 APIC ID (a type-9 entry selects x2APIC mode, see
///    [`PD_X2APIC`]). Log frames: the signatures, the APIC IDs.
/// 4. Its own record; then INIT assert, INIT deassert, SIPI, SIPI to every other MADT APIC ID
///    through the LAPIC ICR (xAPIC MMIO, or the x2APIC ICR MSR with a 32-bit destination),
///    as Linux does.
/// 5. Wait (bounded by the TSC) until every MADT CPU completed its record; the IOAPIC test
///    ([`PD_IRQ`]); a Telemetry frame per completed record; a Log frame with the IOAPIC test;
///    an Exit frame; `out 0xF4` with status 0.
pub fn bsp_program(ip: u64) -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut emit_frame = a.create_label();
    let mut crc_update = a.create_label();
    let mut add_sig = a.create_label();

    a.mov(r15, rsi)?;
    // 1. SHM header.
    a.mov(rbx, qword_ptr(PD_SHM_BASE))?;
    a.mov(rax, qword_ptr(PD_SHM_LEN))?;
    a.sub(rax, HEADER_LEN as i32)?;
    a.mov(qword_ptr(rbx + 16), rax)?;
    a.mov(dword_ptr(rbx + 8), VERSION)?;
    a.mov(dword_ptr(rbx + 12), HEADER_LEN)?;
    a.mov(qword_ptr(rbx + 24), 0)?;
    a.mfence()?;
    a.mov(rax, MAGIC)?;
    a.mov(qword_ptr(rbx), rax)?;
    // 2. Hello: boot_params.
    a.mov(eax, FrameType::Hello as u32)?;
    a.mov(rsi, r15)?;
    a.mov(ecx, 4096u32)?;
    a.call(emit_frame)?;

    // 3. ACPI walk: r12 = XSDT, r13d = entries left, r14 = entry pointer, rbp = table.
    let mut walk_done = a.create_label();
    let mut entry_loop = a.create_label();
    let mut next_entry = a.create_label();
    let mut not_facp = a.create_label();
    let mut have_dsdt = a.create_label();
    let mut madt_loop = a.create_label();
    let mut madt_next = a.create_label();
    // The root is the XSDT (8-byte entries) from an ACPI 2.0+ RSDP, else the RSDT (4-byte
    // entries; qemu's firmware may offer only that). r9d = entry size.
    let mut have_xsdt = a.create_label();
    let mut have_root = a.create_label();
    let mut wide_entry = a.create_label();
    a.mov(rax, qword_ptr(r15 + 0x70))?;
    a.test(rax, rax)?;
    a.jz(walk_done)?;
    a.mov(r9d, 8u32)?;
    a.cmp(byte_ptr(rax + 15), 2)?; // RSDP revision
    a.jae(have_xsdt)?;
    a.mov(r9d, 4u32)?;
    a.mov(r12d, dword_ptr(rax + 16))?; // RsdtAddress
    a.jmp(have_root)?;
    a.set_label(&mut have_xsdt)?;
    a.mov(r12, qword_ptr(rax + 24))?; // XsdtAddress
    a.set_label(&mut have_root)?;
    a.mov(eax, dword_ptr(r12))?;
    a.call(add_sig)?;
    a.mov(eax, dword_ptr(r12 + 4))?;
    a.sub(eax, 36)?;
    a.xor(edx, edx)?;
    a.div(r9d)?;
    a.mov(r13d, eax)?;
    a.lea(r14, qword_ptr(r12 + 36))?;
    a.set_label(&mut entry_loop)?;
    a.test(r13d, r13d)?;
    a.jz(walk_done)?;
    a.mov(rbp, qword_ptr(r14))?;
    a.cmp(r9d, 8)?;
    a.je(wide_entry)?;
    a.mov(ebp, ebp)?; // 4-byte entry: zero-extend
    a.set_label(&mut wide_entry)?;
    a.mov(eax, dword_ptr(rbp))?;
    a.call(add_sig)?;
    a.mov(eax, dword_ptr(rbp))?;
    a.cmp(eax, sig(b"FACP"))?;
    a.jne(not_facp)?;
    a.mov(rax, qword_ptr(rbp + 140))?; // X_DSDT
    a.test(rax, rax)?;
    a.jnz(have_dsdt)?;
    a.mov(eax, dword_ptr(rbp + 40))?; // DSDT
    a.set_label(&mut have_dsdt)?;
    a.test(rax, rax)?;
    a.jz(next_entry)?;
    a.mov(eax, dword_ptr(rax))?;
    a.call(add_sig)?;
    a.jmp(next_entry)?;
    a.set_label(&mut not_facp)?;
    a.cmp(eax, sig(b"APIC"))?;
    a.jne(next_entry)?;
    // MADT: rsi walks the entries from offset 44 to rdx = table end; each entry must fit.
    // Type 0 (Local APIC, 8 bytes): flags at 4, APIC ID byte at 3. Type 9 (Local x2APIC, 16
    // bytes): x2APIC ID at 4, flags at 8; any such entry switches the probe to x2APIC.
    let mut try_x2 = a.create_label();
    let mut madt_store = a.create_label();
    a.mov(ecx, dword_ptr(rbp + 4))?;
    a.lea(rdx, qword_ptr(rbp + rcx))?;
    a.lea(rsi, qword_ptr(rbp + 44))?;
    a.set_label(&mut madt_loop)?;
    a.lea(rax, qword_ptr(rsi + 2))?;
    a.cmp(rax, rdx)?;
    a.ja(next_entry)?;
    a.movzx(ecx, byte_ptr(rsi + 1))?;
    a.cmp(ecx, 2)?;
    a.jb(next_entry)?;
    a.lea(rax, qword_ptr(rsi + rcx))?;
    a.cmp(rax, rdx)?;
    a.ja(next_entry)?;
    a.cmp(byte_ptr(rsi), 0)?;
    a.jne(try_x2)?;
    a.cmp(ecx, 8)?;
    a.jb(madt_next)?;
    a.test(byte_ptr(rsi + 4), 1)?;
    a.jz(madt_next)?;
    a.movzx(edi, byte_ptr(rsi + 3))?;
    a.jmp(madt_store)?;
    a.set_label(&mut try_x2)?;
    a.cmp(byte_ptr(rsi), 9)?;
    a.jne(madt_next)?;
    a.cmp(ecx, 16)?;
    a.jb(madt_next)?;
    a.test(byte_ptr(rsi + 8), 1)?;
    a.jz(madt_next)?;
    a.mov(edi, dword_ptr(rsi + 4))?;
    a.mov(dword_ptr(PD_X2APIC), 1)?;
    a.set_label(&mut madt_store)?;
    a.mov(eax, dword_ptr(PD_MADT))?;
    a.cmp(eax, MAX_MADT)?;
    a.jae(madt_next)?;
    a.mov(dword_ptr(rax * 4 + (PD_MADT + 4)), edi)?;
    a.inc(dword_ptr(PD_MADT))?;
    a.set_label(&mut madt_next)?;
    a.add(rsi, rcx)?;
    a.jmp(madt_loop)?;
    a.set_label(&mut next_entry)?;
    a.add(r14, r9)?;
    a.dec(r13d)?;
    a.jmp(entry_loop)?;
    a.set_label(&mut walk_done)?;
    a.mov(eax, FrameType::Log as u32)?;
    a.mov(esi, PD_SIGS as u32)?;
    a.mov(ecx, 4 + 4 * MAX_SIGS)?;
    a.call(emit_frame)?;
    a.mov(eax, FrameType::Log as u32)?;
    a.mov(esi, PD_MADT as u32)?;
    a.mov(ecx, dword_ptr(PD_MADT))?;
    a.lea(ecx, dword_ptr(rcx * 4 + 4))?;
    a.call(emit_frame)?;

    // 4. Own record (the first one claimed, so its ID is at RECORDS), then wake every other
    //    MADT CPU. r12d = own APIC ID, r13d = index.
    emit_record(&mut a)?;
    let mut sipi_loop = a.create_label();
    let mut sipi_next = a.create_label();
    let mut sipi_x2 = a.create_label();
    let mut wait = a.create_label();
    a.mov(r12d, dword_ptr(RECORDS))?;
    a.xor(r13d, r13d)?;
    a.set_label(&mut sipi_loop)?;
    a.cmp(r13d, dword_ptr(PD_MADT))?;
    a.jae(wait)?;
    a.mov(eax, dword_ptr(r13 * 4 + (PD_MADT + 4)))?;
    a.cmp(eax, r12d)?;
    a.je(sipi_next)?;
    a.cmp(dword_ptr(PD_X2APIC), 0)?;
    a.jne(sipi_x2)?;
    a.shl(eax, 24)?;
    emit_ipi(&mut a, 0xC500)?; // INIT, level, assert
    emit_ipi(&mut a, 0x8500)?; // INIT, level, deassert
    emit_ipi(&mut a, 0x0600 | SIPI_VECTOR)?; // STARTUP
    emit_ipi(&mut a, 0x0600 | SIPI_VECTOR)?; // STARTUP again
    a.jmp(sipi_next)?;
    // x2APIC: the AP is still in xAPIC mode after INIT; KVM's 32-bit-ID API matches it by
    // its full x2APIC ID anyway when the ID exceeds 0xFF.
    a.set_label(&mut sipi_x2)?;
    a.mov(r8d, eax)?;
    emit_x2apic_ipi(&mut a, 0xC500)?;
    emit_x2apic_ipi(&mut a, 0x8500)?;
    emit_x2apic_ipi(&mut a, 0x0600 | SIPI_VECTOR)?;
    emit_x2apic_ipi(&mut a, 0x0600 | SIPI_VECTOR)?;
    a.set_label(&mut sipi_next)?;
    a.inc(r13d)?;
    a.jmp(sipi_loop)?;

    // 5. Wait until PD_DONE reaches the MADT count, or the TSC passes r14.
    let mut wait_loop = a.create_label();
    let mut report = a.create_label();
    a.set_label(&mut wait)?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.add(rax, qword_ptr(PD_WAIT_CYCLES))?;
    a.mov(r14, rax)?;
    a.mov(r13d, dword_ptr(PD_MADT))?;
    a.set_label(&mut wait_loop)?;
    a.mov(eax, dword_ptr(PD_DONE))?;
    a.cmp(eax, r13d)?;
    a.jae(report)?;
    a.pause()?;
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.cmp(rax, r14)?;
    a.jb(wait_loop)?;
    a.set_label(&mut report)?;
    emit_irq_test(&mut a)?;
    let mut rec_loop = a.create_label();
    let mut rec_next = a.create_label();
    let mut finish = a.create_label();
    a.xor(r13d, r13d)?;
    a.set_label(&mut rec_loop)?;
    a.cmp(r13d, dword_ptr(PD_CLAIMED))?;
    a.jae(finish)?;
    a.imul_3(esi, r13d, RECORD_LEN as i32)?;
    a.add(esi, RECORDS as u32)?;
    a.cmp(dword_ptr(rsi + 4), RECORD_DONE)?;
    a.jne(rec_next)?;
    a.mov(eax, FrameType::Telemetry as u32)?;
    a.mov(ecx, RECORD_LEN)?;
    a.call(emit_frame)?;
    a.set_label(&mut rec_next)?;
    a.inc(r13d)?;
    a.jmp(rec_loop)?;
    a.set_label(&mut finish)?;
    a.mov(eax, FrameType::Log as u32)?;
    a.mov(esi, PD_IRQ as u32)?;
    a.mov(ecx, 12u32)?;
    a.call(emit_frame)?;
    a.mov(eax, FrameType::Exit as u32)?;
    a.mov(esi, PD_ZERO as u32)?;
    a.mov(ecx, 4u32)?;
    a.call(emit_frame)?;
    a.xor(eax, eax)?;
    a.out(0xF4u32, al)?;
    let mut hang = a.create_label();
    a.set_label(&mut hang)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(hang)?;

    // add_sig: append EAX to the signature list (bounded).
    let mut sig_ret = a.create_label();
    a.set_label(&mut add_sig)?;
    a.mov(ecx, dword_ptr(PD_SIGS))?;
    a.cmp(ecx, MAX_SIGS)?;
    a.jae(sig_ret)?;
    a.mov(dword_ptr(rcx * 4 + (PD_SIGS + 4)), eax)?;
    a.inc(dword_ptr(PD_SIGS))?;
    a.set_label(&mut sig_ret)?;
    a.ret()?;

    // emit_frame: EAX = type, RSI = payload, ECX = length. Writes the frame header and payload,
    // the CRC-32 over type|seq|len|payload, then publishes it by advancing write_off.
    let mut frame_ret = a.create_label();
    a.set_label(&mut emit_frame)?;
    a.mov(rbx, qword_ptr(PD_SHM_BASE))?;
    a.mov(rdi, qword_ptr(PD_WRITE_OFF))?;
    // Room check: write_off + 16 + len + 8 must fit in the capacity.
    a.lea(rdx, qword_ptr(rdi + rcx + 24))?;
    a.mov(r8, qword_ptr(PD_SHM_LEN))?;
    a.sub(r8, HEADER_LEN as i32)?;
    a.cmp(rdx, r8)?;
    a.ja(frame_ret)?;
    a.lea(rdi, qword_ptr(rbx + rdi + HEADER_LEN as i32))?;
    a.mov(dword_ptr(rdi), eax)?;
    a.mov(edx, dword_ptr(PD_SEQ))?;
    a.mov(dword_ptr(rdi + 4), edx)?;
    a.mov(dword_ptr(rdi + 8), ecx)?;
    a.mov(r11, rdi)?;
    a.mov(r10d, ecx)?;
    a.add(rdi, 16)?;
    a.rep().movsb()?;
    a.mov(eax, 0xFFFF_FFFFu32)?;
    a.mov(rsi, r11)?;
    a.mov(edx, 12u32)?;
    a.call(crc_update)?;
    a.lea(rsi, qword_ptr(r11 + 16))?;
    a.mov(edx, r10d)?;
    a.call(crc_update)?;
    a.not(eax)?;
    a.mov(dword_ptr(r11 + 12), eax)?;
    a.lea(ecx, dword_ptr(r10 + 7))?;
    a.and(ecx, -8)?;
    a.add(ecx, 16)?;
    a.mfence()?;
    a.mov(rax, qword_ptr(PD_WRITE_OFF))?;
    a.add(rax, rcx)?;
    a.mov(qword_ptr(PD_WRITE_OFF), rax)?;
    a.inc(dword_ptr(PD_SEQ))?;
    a.mov(qword_ptr(rbx + 24), rax)?;
    a.set_label(&mut frame_ret)?;
    a.ret()?;

    // crc_update: EAX = running CRC, RSI = bytes, EDX = count.
    let mut crc_loop = a.create_label();
    let mut crc_ret = a.create_label();
    a.set_label(&mut crc_update)?;
    a.test(edx, edx)?;
    a.jz(crc_ret)?;
    a.set_label(&mut crc_loop)?;
    a.movzx(r8d, byte_ptr(rsi))?;
    a.xor(r8d, eax)?;
    a.and(r8d, 0xFF)?;
    a.mov(r9d, dword_ptr(r8 * 4 + CRC_TABLE))?;
    a.shr(eax, 8)?;
    a.xor(eax, r9d)?;
    a.inc(rsi)?;
    a.dec(edx)?;
    a.jnz(crc_loop)?;
    a.set_label(&mut crc_ret)?;
    a.ret()?;

    a.assemble(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_table_matches_crc32fast() {
        let t = crc_table();
        let table = |i: usize| u32::from_le_bytes(t[i * 4..i * 4 + 4].try_into().unwrap());
        let data = b"ktstr probe";
        let mut c = 0xFFFF_FFFFu32;
        for b in data {
            c = table(((c ^ *b as u32) & 0xFF) as usize) ^ (c >> 8);
        }
        assert_eq!(!c, crc32fast::hash(data));
    }

    #[test]
    fn code_assembles_and_fits() {
        let t = trampoline().unwrap();
        assert!(t.len() < 4096);
        assert_eq!(&t[0x80..0x82], &((6 * 8 - 1) as u16).to_le_bytes());
        assert_eq!(&t[0x82..0x86], &0x500u32.to_le_bytes());
        let b = bsp_program(0x100000).unwrap();
        assert!(b.len() < 8192, "{}", b.len());
        assert!((RECORDS + 252 * RECORD_LEN as u64) < AP_STACKS);
        assert!(AP_STACKS + 253 * AP_STACK_LEN as u64 <= 0x9_FC00);
        // The IDT gate of the test vector points at the handler, a 32-bit interrupt gate.
        let gate = &t[(IDT_OFF + IRQ_VECTOR as u64 * 8) as usize..][..8];
        let h = (TRAMPOLINE + HANDLER_OFF) as u32;
        assert_eq!(&gate[0..2], &(h as u16).to_le_bytes());
        assert_eq!(&gate[2..4], &selector::CODE32.to_le_bytes());
        assert_eq!(&gate[4..6], &0x8E00u16.to_le_bytes());
        assert_eq!(&gate[6..8], &((h >> 16) as u16).to_le_bytes());
        assert_eq!(&t[0x88..0x8A], &(IRQ_VECTOR as u16 * 8 + 7).to_le_bytes());
        const { assert!(PD_IRQ + 12 <= PD_SIGS && PD_X2APIC + 4 <= PD_IRQ) };
        assert!(PD_STACKS >= PD_MADT + 4 + 4 * MAX_MADT as u64);
        assert!(PD_MADT + 4 + 4 * MAX_MADT as u64 <= 0x7000);
    }
}
