//! Performance mode in the in-process VMM ([`crate::placement`] tier 1): each vCPU thread on
//! its own host CPU at `SCHED_FIFO`, guest RAM in 2 MiB hugepages (pre-faulted), HLT and
//! PAUSE exits left to the guest, and `KVM_HINTS_REALTIME` told to the guest. Every step that
//! the host refuses is skipped with a note for the sidecar; none fails the boot.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_enable_cap, KVM_CAP_X86_DISABLE_EXITS, KVM_X86_DISABLE_EXITS_HLT,
    KVM_X86_DISABLE_EXITS_PAUSE,
};
use kvm_ioctls::VmFd;
use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use super::layout::MemoryLayout;

/// 2 MiB: the hugepage size guest RAM uses.
const HUGE: u64 = 2 << 20;

/// `KVM_HINTS_REALTIME` (CPUID 0x40000001 EDX bit 0): vCPUs are never preempted, so the guest
/// may spin instead of yielding (PV spinlocks, idle polling).
const KVM_HINTS_REALTIME: u32 = 1;

/// Lets the guest execute HLT and PAUSE without exiting (a pinned vCPU owns its host CPU, so
/// an idle guest spinning there costs nobody). Before any vCPU is created, as KVM requires.
pub fn disable_exits(vm: &VmFd, notes: &mut Vec<String>) {
    let want = KVM_X86_DISABLE_EXITS_HLT | KVM_X86_DISABLE_EXITS_PAUSE;
    let have = vm.check_extension_raw(KVM_CAP_X86_DISABLE_EXITS as u64) as u32;
    if have & want != want {
        notes.push(format!(
            "HLT/PAUSE exits kept: KVM offers only disable-exits mask {have:#x}"
        ));
        return;
    }
    let mut c = kvm_enable_cap {
        cap: KVM_CAP_X86_DISABLE_EXITS,
        ..Default::default()
    };
    c.args[0] = want as u64;
    if let Err(e) = vm.enable_cap(&c) {
        notes.push(format!("HLT/PAUSE exits kept: KVM_ENABLE_CAP refused: {e}"));
    }
}

/// Sets `KVM_HINTS_REALTIME` in a vCPU's CPUID table (when it has the KVM leaf).
pub fn hint_realtime(entries: &mut [kvm_cpuid_entry2]) {
    if let Some(e) = entries.iter_mut().find(|e| e.function == 0x4000_0001) {
        e.edx |= KVM_HINTS_REALTIME;
    }
}

/// Guest RAM as `MAP_HUGETLB` mappings, pre-faulted; `Err` says why not (the caller falls
/// back to ordinary pages). A slot whose size or base is not 2 MiB aligned cannot be.
pub fn hugepage_memory(layout: &MemoryLayout) -> Result<GuestMemoryMmap, String> {
    let mut regions = Vec::with_capacity(layout.slots.len());
    for s in &layout.slots {
        if s.len % HUGE != 0 || s.base % HUGE != 0 {
            return Err(format!(
                "a memory slot at {:#x} of {:#x} bytes is not 2 MiB aligned",
                s.base, s.len
            ));
        }
        // Without MAP_NORESERVE the hugepages are reserved at mmap, so a host without enough
        // free ones fails here, not with SIGBUS in the middle of the run.
        let region = MmapRegion::build(
            None,
            s.len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_HUGETLB,
        )
        .map_err(|e| format!("mapping {} MiB of hugepages: {e}", s.len >> 20))?;
        // SAFETY: the region is a live private mapping of exactly `s.len` bytes that we own.
        let populated = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                s.len as usize,
                libc::MADV_POPULATE_WRITE,
            )
        };
        if populated != 0 {
            return Err(format!(
                "pre-faulting hugepages: {}",
                std::io::Error::last_os_error()
            ));
        }
        regions.push(
            GuestRegionMmap::new(region, GuestAddress(s.base))
                .ok_or_else(|| "a hugepage region overflows the guest address space".to_string())?,
        );
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| e.to_string())
}

/// Pins the calling vCPU thread to `cpu` and, when `realtime`, makes it `SCHED_FIFO` 1; what
/// failed, as a note.
pub fn pin_this_vcpu(index: u32, cpu: u32, realtime: bool) -> Option<String> {
    if let Err(e) = crate::host_cpus::confine_current_thread(&[cpu]) {
        return Some(format!("vCPU {index} not pinned to host CPU {cpu}: {e}"));
    }
    if realtime {
        if let Err(e) = crate::placement::make_realtime(0, 1) {
            return Some(format!("vCPU {index} not SCHED_FIFO: {e}"));
        }
    }
    None
}
