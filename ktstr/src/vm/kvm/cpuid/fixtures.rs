//! Synthetic `KVM_GET_SUPPORTED_CPUID` tables for tests and diagnostics, modelled on spec §0
//! (this project's AMD Milan host) and on a typical Intel server host.

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use super::CpuVendor;

/// The topology shapes every table generator is tested against: the gauntlet presets plus the
/// shapes from the issue.
#[cfg(test)]
pub(crate) const TEST_SHAPES: &[&str] = &[
    // issue shapes
    "1n1l1c1t",
    "1n1l2c1t",
    "1n3l3c1t",
    "1n2l4c2t",
    "2n2l2c2t",
    "2n4l4c2t",
    "1n8l4c2t",
    // gauntlet presets
    "1n1l4c1t",
    "1n2l2c1t",
    "1n5l3c1t",
    "1n7l2c1t",
    "1n2l2c2t",
    "1n3l2c2t",
    "1n4l4c2t",
    "1n4l16c2t",
    "1n8l8c2t",
    "1n15l8c2t",
    "1n4l8c1t",
    "1n8l8c1t",
    "1n4l32c1t",
    "1n8l16c1t",
    "1n15l16c1t",
    "1n14l18c1t",
    "2n4l4c1t",
    "2n8l8c2t",
    "2n8l16c1t",
    "4n8l4c1t",
    "4n12l8c2t",
    "1n14l9c2t",
];

fn leaf(function: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

fn indexed(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

fn words(s: &[u8; 12]) -> [u32; 3] {
    [0, 4, 8].map(|i| u32::from_le_bytes(s[i..i + 4].try_into().unwrap()))
}

/// A vendor string as leaf 0's (EBX, ECX, EDX): the string runs EBX, EDX, ECX.
pub(crate) fn vendor_regs(s: &[u8; 12]) -> (u32, u32, u32) {
    let [b, d, c] = words(s);
    (b, c, d)
}

/// KVM's paravirt leaves: "KVMKVMKVM", and kvmclock, NOP_IO_DELAY, steal time, PV TLB flush,
/// PV sched_yield and friends in 0x40000001 EAX.
fn kvm_leaves() -> [kvm_cpuid_entry2; 2] {
    // Hypervisor leaves run EBX, ECX, EDX.
    let [b, c, d] = words(b"KVMKVMKVM\0\0\0");
    [
        leaf(0x4000_0000, 0x4000_0001, b, c, d),
        leaf(0x4000_0001, 0x0100_7afb, 0, 0, 0),
    ]
}

/// A synthetic supported-CPUID table for `vendor`, for tests and the `probe` diagnostic; not a
/// host's real table.
///
/// - `Amd`: Milan-like (family 0x19): max basic 0x10, max extended 0x80000022, leaf 0xB with
///   only an all-zero subleaf 0, 0x8000001E all zero, 0x8000001D with the host's caches
///   (L3 EAX = 0x4163: 2 threads share), TOPOEXT/CmpLegacy/x2APIC/TSC-deadline/hypervisor set.
/// - `Intel`: Skylake-server-like (family 6 model 0x55): max basic 0x1F with zero 0x1F and 0xB
///   subleaf 0, leaf 4 caches (L3 shared by 16), a PMU leaf 0xA.
/// - `Other`: the Intel table with a Centaur vendor string.
pub fn synthetic_supported(vendor: CpuVendor) -> Vec<kvm_cpuid_entry2> {
    match vendor {
        CpuVendor::Amd => amd_milan(),
        CpuVendor::Intel => intel_server(b"GenuineIntel"),
        CpuVendor::Other => intel_server(b"CentaurHauls"),
    }
}

// Leaf 1 ECX: SSE3, PCLMUL, SSSE3, FMA, CX16, SSE4.1/4.2, x2APIC(21), MOVBE, POPCNT,
// TSC-deadline(24), AES, XSAVE, AVX, F16C, RDRAND, hypervisor(31).
const L1_ECX: u32 = 0xF6F8_3203 | (1 << 21) | (1 << 24) | (1u32 << 31);
// Leaf 1 EDX: the usual FPU..SSE2 set plus HTT(28).
const L1_EDX: u32 = 0x178B_FBFF;

fn amd_milan() -> Vec<kvm_cpuid_entry2> {
    let (b, c, d) = vendor_regs(b"AuthenticAMD");
    let mut v = vec![
        leaf(0, 0x10, b, c, d),
        // Family 0xF+0xA = 0x19, model 0x01, stepping 1; EBX: CLFLUSH size 8, no APIC ID.
        leaf(1, 0x00A0_0F11, 0x0000_0800, L1_ECX, L1_EDX),
        leaf(5, 0, 0, 0x3, 0),
        leaf(6, 0x4, 0, 0, 0),
        indexed(7, 0, 0, 0x219C_07AB, 0x0040_068C, 0x10),
        // KVM's zero subleaf 0 of 0xB: no topology on purpose.
        indexed(0xB, 0, 0, 0, 0, 0),
        indexed(0xD, 0, 0x7, 0x340, 0x340, 0),
        indexed(0xD, 1, 0xF, 0x340, 0, 0),
        indexed(0xD, 2, 0x100, 0x240, 0, 0),
        leaf(0x8000_0000, 0x8000_0022, b, c, d),
        // ECX: LAHF, CmpLegacy(1), SVM off, ABM, SSE4A, MisAlignSSE, 3DNowPrefetch, TOPOEXT(22).
        leaf(0x8000_0001, 0x00A0_0F11, 0, 0x0040_01F3, 0x2FD3_FBFF),
        leaf(
            0x8000_0002,
            0x2044_4D41,
            0x43595045,
            0x3337_2D20,
            0x2033_3131,
        ),
        leaf(
            0x8000_0003,
            0x6F43_2D38,
            0x5020_6572,
            0x6563_6F72,
            0x726F_7373,
        ),
        leaf(
            0x8000_0004,
            0x2020_2020,
            0x2020_2020,
            0x2020_2020,
            0x0020_2020,
        ),
        leaf(
            0x8000_0005,
            0xFF40_FF40,
            0xFF40_FF40,
            0x2004_0140,
            0x2004_0140,
        ),
        // L2 512K, L3 present (EDX != 0).
        leaf(
            0x8000_0006,
            0x4800_2200,
            0x6800_4200,
            0x0200_6140,
            0x0100_9140,
        ),
        leaf(0x8000_0007, 0, 0, 0, 0x100),
        leaf(0x8000_0008, 0x0000_3030, 0x0100_D205, 0, 0),
        leaf(0x8000_000A, 0, 0, 0, 0),
        leaf(0x8000_0019, 0xF040_F040, 0xF040_0000, 0, 0),
        leaf(0x8000_001A, 0x6, 0, 0, 0),
        leaf(0x8000_001B, 0, 0, 0, 0),
        // The host's caches: L1d, L1i, L2 per core pair, L3 EAX=0x4163 (2 threads share).
        indexed(0x8000_001D, 0, 0x0000_4121, 0x01C0_003F, 0x3F, 0),
        indexed(0x8000_001D, 1, 0x0000_4122, 0x01C0_003F, 0x3F, 0),
        indexed(0x8000_001D, 2, 0x0000_4143, 0x01C0_003F, 0x3FF, 0x2),
        indexed(0x8000_001D, 3, 0x0000_4163, 0x03C0_003F, 0x7FFF, 0x1),
        indexed(0x8000_001D, 4, 0, 0, 0, 0),
        // KVM's all-zero 0x8000001E.
        leaf(0x8000_001E, 0, 0, 0, 0),
        leaf(0x8000_001F, 0, 0, 0, 0),
        leaf(0x8000_0021, 0x45, 0, 0, 0),
        leaf(0x8000_0022, 0, 0, 0, 0),
    ];
    v.extend(kvm_leaves());
    v
}

fn intel_server(vendor: &[u8; 12]) -> Vec<kvm_cpuid_entry2> {
    let (b, c, d) = vendor_regs(vendor);
    let mut v = vec![
        leaf(0, 0x1F, b, c, d),
        // Family 6, model 0x55, stepping 4.
        leaf(1, 0x0005_0654, 0x0000_0800, L1_ECX, L1_EDX),
        leaf(2, 0x0000_0001, 0, 0, 0x004C_0000),
        // Leaf 4: EAX[31:26] = 27 (28 cores), L1/L2 shared by 2 threads, L3 by 56.
        indexed(4, 0, 0x6C00_4121, 0x01C0_003F, 0x3F, 0),
        indexed(4, 1, 0x6C00_4122, 0x01C0_003F, 0x3F, 0),
        indexed(4, 2, 0x6C00_4143, 0x03C0_003F, 0x3FF, 0),
        indexed(4, 3, 0x6C0D_C163, 0x0280_003F, 0xB7FF, 0x4),
        indexed(4, 4, 0, 0, 0, 0),
        leaf(5, 0, 0, 0x3, 0),
        leaf(6, 0x4, 0, 0, 0),
        indexed(7, 0, 0, 0xD19F_4FBB, 0x0000_080C, 0xBC00_0400),
        // A PMU the guest must not see.
        leaf(0xA, 0x0730_0404, 0, 0, 0x603),
        indexed(0xB, 0, 0, 0, 0, 0),
        indexed(0xD, 0, 0x2E7, 0xA88, 0xA88, 0),
        indexed(0xD, 1, 0xF, 0xA08, 0, 0),
        indexed(0xD, 2, 0x100, 0x240, 0, 0),
        indexed(0x1F, 0, 0, 0, 0, 0),
        leaf(0x8000_0000, 0x8000_0008, 0, 0, 0),
        leaf(0x8000_0001, 0, 0, 0x121, 0x2C10_0800),
        leaf(0x8000_0006, 0, 0, 0x0400_6040, 0),
        leaf(0x8000_0007, 0, 0, 0, 0x100),
        leaf(0x8000_0008, 0x0000_302E, 0, 0, 0),
    ];
    v.extend(kvm_leaves());
    v
}
