//! The linear boot recipe (vmm.md §1.5): open KVM, create the VM and its interrupt controllers
//! (in-kernel irqchip and PIT for xAPIC shapes; split irqchip, x2APIC API and a userspace IOAPIC
//! for x2APIC shapes, see [`IrqChip`]), back guest memory per NUMA range, write the boot structures, create one vCPU per CPU
//! with vcpu_id = APIC ID and its own CPUID, set the BSP's long-mode state, wire COM1's irqfd,
//! start the vCPU threads, then hand the run to the [`Session`] (watchdog, cancel flag, result
//! channel, console) through [`KvmMachine`], and tear everything down in order: vCPU fds, VM
//! fd, memory.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_enable_cap, kvm_irq_routing_entry, kvm_msi, kvm_msr_entry,
    kvm_pit_config, CpuId, KvmIrqRouting, Msrs, KVM_CAP_HALT_POLL, KVM_CAP_SIGNAL_MSI,
    KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X2APIC_API, KVM_IRQ_ROUTING_MSI, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY, KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK, KVM_X2APIC_API_USE_32BIT_IDS,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::boot::{self, gdt_bytes, page_tables};
use super::devices::{Devices, IrqLine, COM1_GSI};
use super::ioapic::{IoapicDevice, Msi, MsiSink, IOAPIC_PINS};
use super::layout::{
    GuestRange, MemoryLayout, ACPI_GPA, GDT_GPA, IDENTITY_MAP_GPA, LAPIC_GPA, TSS_GPA,
};
use super::vcpu::{self, Shared, VcpuContext};
use super::{acpi, cpuid, VmmError};
use crate::topology::Topology;
use crate::vm::session::{Machine, MonitorTarget, Session};
use crate::vm::{BackendKind, ConsoleMode, VmEnd, VmOutcome};

fn ioctl(name: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Ioctl {
        ioctl: name,
        source,
    }
}

/// Opens `/dev/kvm` and checks the API version and the capabilities the VMM relies on.
pub fn open_kvm() -> Result<Kvm, VmmError> {
    let kvm = Kvm::new().map_err(|source| match source.errno() {
        libc::EACCES | libc::EPERM => VmmError::KvmDenied,
        _ => VmmError::OpenKvm { source },
    })?;
    let v = kvm.get_api_version();
    if v != 12 {
        return Err(VmmError::KvmApiVersion(v));
    }
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
        // The vCPUs' CPUID advertises the TSC-deadline timer (cpuid::L1_ECX_TSC_DEADLINE).
        (Cap::TscDeadlineTimer, "KVM_CAP_TSC_DEADLINE_TIMER"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmmError::MissingCapability(name));
        }
    }
    Ok(kvm)
}

/// How the VM's interrupt controllers are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqChip {
    /// xAPIC shapes (APIC IDs up to 0xFE): KVM_CREATE_IRQCHIP (PIC, IOAPIC, LAPICs) and
    /// KVM_CREATE_PIT2; COM1 through an irqfd.
    InKernel,
    /// x2APIC shapes: LAPICs in KVM (`KVM_CAP_SPLIT_IRQCHIP`, 24 IOAPIC routes reserved),
    /// 32-bit x2APIC IDs in MSIs and IPIs (`KVM_CAP_X2APIC_API`), the IOAPIC in userspace
    /// ([`super::ioapic`]). No PIC and no PIT: KVM refuses KVM_CREATE_PIT2 without an
    /// in-kernel PIC, and Linux does not need one with kvmclock and the TSC-deadline timer.
    Split,
}

impl IrqChip {
    /// In-kernel for xAPIC shapes, split for shapes whose APIC IDs exceed 0xFE.
    pub fn for_topology(topo: &Topology) -> Self {
        if topo.needs_x2apic() {
            IrqChip::Split
        } else {
            IrqChip::InKernel
        }
    }
}

fn enable_cap(vm: &VmFd, cap: u32, arg0: u64, name: &'static str) -> Result<(), VmmError> {
    let mut c = kvm_enable_cap {
        cap,
        ..Default::default()
    };
    c.args[0] = arg0;
    vm.enable_cap(&c).map_err(ioctl(name))
}

/// Creates the VM with its interrupt controllers (all before any vCPU, as KVM requires).
pub fn create_vm(kvm: &Kvm, vcpus: u32, chip: IrqChip) -> Result<VmFd, VmmError> {
    let vm = loop {
        match kvm.create_vm() {
            Err(e) if e.errno() == libc::EINTR => continue,
            r => break r.map_err(ioctl("KVM_CREATE_VM"))?,
        }
    };
    vm.set_tss_address(TSS_GPA as usize)
        .map_err(ioctl("KVM_SET_TSS_ADDR"))?;
    vm.set_identity_map_address(IDENTITY_MAP_GPA)
        .map_err(ioctl("KVM_SET_IDENTITY_MAP_ADDR"))?;
    match chip {
        IrqChip::InKernel => {
            vm.create_irq_chip().map_err(ioctl("KVM_CREATE_IRQCHIP"))?;
            vm.create_pit2(kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            })
            .map_err(ioctl("KVM_CREATE_PIT2"))?;
        }
        IrqChip::Split => {
            let x2_flags =
                (KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK) as i32;
            if vm.check_extension_raw(KVM_CAP_SPLIT_IRQCHIP as u64) <= 0 {
                return Err(VmmError::MissingCapability(
                    "KVM_CAP_SPLIT_IRQCHIP (needed for x2APIC shapes)",
                ));
            }
            // KVM answers with the flags it supports.
            if vm.check_extension_raw(KVM_CAP_X2APIC_API as u64) & x2_flags != x2_flags {
                return Err(VmmError::MissingCapability(
                    "KVM_CAP_X2APIC_API with 32-bit IDs (needed for x2APIC shapes)",
                ));
            }
            if vm.check_extension_raw(KVM_CAP_SIGNAL_MSI as u64) <= 0 {
                return Err(VmmError::MissingCapability(
                    "KVM_CAP_SIGNAL_MSI (needed for x2APIC shapes)",
                ));
            }
            enable_cap(
                &vm,
                KVM_CAP_SPLIT_IRQCHIP,
                IOAPIC_PINS as u64,
                "KVM_ENABLE_CAP(SPLIT_IRQCHIP)",
            )?;
            enable_cap(
                &vm,
                KVM_CAP_X2APIC_API,
                x2_flags as u64,
                "KVM_ENABLE_CAP(X2APIC_API)",
            )?;
        }
    }
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    if vcpus > host_cpus && vm.check_extension_raw(KVM_CAP_HALT_POLL as u64) > 0 {
        // Overcommitted: polling 200 µs per halt would steal the host cores from busy vCPUs.
        enable_cap(&vm, KVM_CAP_HALT_POLL, 0, "KVM_ENABLE_CAP(HALT_POLL)")?;
    }
    Ok(vm)
}

/// The userspace IOAPIC's way into KVM: `KVM_SIGNAL_MSI` to deliver, `KVM_SET_GSI_ROUTING`
/// so KVM knows which vectors need `KVM_EXIT_IOAPIC_EOI`. Both run on vCPU threads, where a
/// failure can only be reported (with `KTSTR_VMM_DEBUG`): the guest sees a lost interrupt.
pub struct KvmMsiSink(pub Arc<VmFd>);

fn debug_log(what: std::fmt::Arguments<'_>) {
    if std::env::var_os("KTSTR_VMM_DEBUG").is_some() {
        eprintln!("ktstr vmm: {what}");
    }
}

impl MsiSink for KvmMsiSink {
    fn signal(&self, m: Msi) -> bool {
        let msi = kvm_msi {
            address_lo: m.address_lo,
            address_hi: m.address_hi,
            data: m.data,
            ..Default::default()
        };
        match self.0.signal_msi(msi) {
            // 0: the guest blocked it (no such destination, or the APIC is disabled).
            Ok(0) => {
                debug_log(format_args!("MSI {m:x?} not delivered"));
                false
            }
            Ok(_) => true,
            Err(e) => {
                debug_log(format_args!("KVM_SIGNAL_MSI {m:x?}: {e}"));
                false
            }
        }
    }

    fn set_routes(&self, routes: &[(u32, Msi)]) {
        let entries: Vec<kvm_irq_routing_entry> = routes
            .iter()
            .map(|(gsi, m)| {
                let mut e = kvm_irq_routing_entry {
                    gsi: *gsi,
                    type_: KVM_IRQ_ROUTING_MSI,
                    ..Default::default()
                };
                e.u.msi.address_lo = m.address_lo;
                e.u.msi.address_hi = m.address_hi;
                e.u.msi.data = m.data;
                e
            })
            .collect();
        let r = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| format!("{e:?}"))
            .and_then(|t| self.0.set_gsi_routing(&t).map_err(|e| e.to_string()));
        if let Err(e) = r {
            debug_log(format_args!("KVM_SET_GSI_ROUTING: {e}"));
        }
    }
}

/// Maps guest memory (one anonymous, unpopulated mapping per range; with `hugepages`, 2 MiB
/// pages pre-faulted, falling back with a note in `notes`) and registers a memslot for each.
pub fn create_memory(
    vm: &VmFd,
    layout: &MemoryLayout,
    hugepages: bool,
    notes: &mut Vec<String>,
) -> Result<GuestMemoryMmap, VmmError> {
    let huge = if hugepages {
        super::perf::hugepage_memory(layout)
            .map_err(|why| notes.push(format!("guest RAM in 4 KiB pages: {why}")))
            .ok()
    } else {
        None
    };
    let mem = match huge {
        Some(m) => m,
        None => {
            let ranges: Vec<(GuestAddress, usize)> = layout
                .slots
                .iter()
                .map(|s| (GuestAddress(s.base), s.len as usize))
                .collect();
            GuestMemoryMmap::from_ranges(&ranges).map_err(|e| VmmError::GuestMemory {
                what: "mapping guest memory",
                detail: e.to_string(),
            })?
        }
    };
    for (slot, s) in layout.slots.iter().enumerate() {
        let host =
            mem.get_host_address(GuestAddress(s.base))
                .map_err(|e| VmmError::GuestMemory {
                    what: "finding a memslot's host address",
                    detail: e.to_string(),
                })?;
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: s.base,
            memory_size: s.len,
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live mapping of exactly `s.len` bytes owned by `mem`, which
        // the caller drops only after the VM fd (the teardown order of §8).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(ioctl("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(mem)
}

/// Writes `bytes` at `gpa`, naming `what` on failure.
pub fn write_guest(
    mem: &GuestMemoryMmap,
    gpa: u64,
    bytes: &[u8],
    what: &'static str,
) -> Result<(), VmmError> {
    mem.write_slice(bytes, GuestAddress(gpa))
        .map_err(|e| VmmError::GuestMemory {
            what,
            detail: format!("{} bytes at {gpa:#x}: {e}", bytes.len()),
        })
}

/// Writes the structures every payload shares (GDT, page tables, ACPI); returns the RSDP.
pub fn write_common(
    mem: &GuestMemoryMmap,
    layout: &MemoryLayout,
    topo: &Topology,
) -> Result<u64, VmmError> {
    write_guest(mem, GDT_GPA, &gdt_bytes(), "writing the GDT")?;
    for (gpa, page) in page_tables() {
        write_guest(mem, gpa, &page, "writing the page tables")?;
    }
    let tables = acpi::build_acpi_tables(topo, &layout.nodes, ACPI_GPA)?;
    write_guest(
        mem,
        tables.base_gpa,
        &tables.bytes,
        "writing the ACPI tables",
    )?;
    Ok(tables.rsdp_gpa)
}

/// Whether `KTSTR_KVM_XSAVE=off` asks to hide XSAVE from guests (see [`cpuid::hide_xsave`]):
/// for nested hosts whose emulated SVM lacks the XSETBV intercept, such as the KVM lane's L1.
pub fn xsave_hidden() -> bool {
    std::env::var("KTSTR_KVM_XSAVE").is_ok_and(|v| v.eq_ignore_ascii_case("off"))
}

/// KVM_GET_SUPPORTED_CPUID, as a plain list.
pub fn supported_cpuid(kvm: &Kvm) -> Result<Vec<kvm_cpuid_entry2>, VmmError> {
    Ok(kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?
        .as_slice()
        .to_vec())
}

/// Creates vCPU `cpu` of `topo` (vcpu_id = its APIC ID) with its CPUID table, the boot MSRs,
/// x2APIC mode for x2APIC shapes, and the LAPIC's virtual-wire LINT0/LINT1. Returns the fd
/// and the table that was set.
pub fn create_vcpu(
    vm: &VmFd,
    supported: &[kvm_cpuid_entry2],
    topo: &Topology,
    cpu: u32,
    hint_realtime: bool,
) -> Result<(VcpuFd, Vec<kvm_cpuid_entry2>), VmmError> {
    let vcpu = vm
        .create_vcpu(topo.apic_id(cpu) as u64)
        .map_err(ioctl("KVM_CREATE_VCPU"))?;
    let mut entries = cpuid::vcpu_cpuid(supported, topo, cpu)
        .map_err(|source| VmmError::Cpuid { cpu, source })?;
    if hint_realtime {
        super::perf::hint_realtime(&mut entries);
    }
    let table = CpuId::from_entries(&entries).map_err(|e| VmmError::GuestMemory {
        what: "building the CPUID table",
        detail: format!("{} entries: {e:?}", entries.len()),
    })?;
    vcpu.set_cpuid2(&table).map_err(ioctl("KVM_SET_CPUID2"))?;
    let msrs: Vec<kvm_msr_entry> = boot::boot_msrs()
        .into_iter()
        .map(|(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&msrs).map_err(|e| VmmError::GuestMemory {
        what: "building the MSR list",
        detail: format!("{e:?}"),
    })?;
    let written = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
    if written < msrs.as_slice().len() && std::env::var_os("KTSTR_VMM_DEBUG").is_some() {
        // KVM stops at the first MSR it refuses; the rest are best effort (§1.4).
        eprintln!(
            "ktstr vmm: KVM_SET_MSRS wrote {written} of {} MSRs (stopped at {:#x})",
            msrs.as_slice().len(),
            msrs.as_slice()[written].index
        );
    }
    if topo.needs_x2apic() {
        enable_x2apic(&vcpu, cpu == 0)?;
    }
    let mut lapic = vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?;
    set_lapic_reg(&mut lapic.regs, 0x350, 0x700); // LVT0: ExtINT
    set_lapic_reg(&mut lapic.regs, 0x360, 0x400); // LVT1: NMI
    vcpu.set_lapic(&lapic).map_err(ioctl("KVM_SET_LAPIC"))?;
    Ok((vcpu, entries))
}

/// IA32_APIC_BASE.
pub const MSR_IA32_APICBASE: u32 = 0x1B;
/// IA32_APIC_BASE bits: BSP (8), x2APIC mode (10), global enable (11).
const APICBASE_BSP: u64 = 1 << 8;
const APICBASE_EXTD: u64 = 1 << 10;
const APICBASE_EN: u64 = 1 << 11;

/// The IA32_APIC_BASE value of an x2APIC-shape vCPU: enabled, in x2APIC mode.
pub fn x2apic_base(bsp: bool) -> u64 {
    LAPIC_GPA | APICBASE_EN | APICBASE_EXTD | if bsp { APICBASE_BSP } else { 0 }
}

/// Starts the LAPIC in x2APIC mode, as firmware does when APIC IDs exceed 0xFF (SeaBIOS
/// switches every CPU above 255 CPUs). Linux 6.12 picks its APIC driver before parsing the
/// MADT: in xAPIC mode that driver accepts IDs up to 0xFE only and drops every larger MADT
/// type-9 entry ("x2apic entry ignored"). INIT keeps APIC_BASE, so the APs stay in x2APIC
/// mode too. Needs the x2APIC CPUID bit, hence after KVM_SET_CPUID2.
fn enable_x2apic(vcpu: &VcpuFd, bsp: bool) -> Result<(), VmmError> {
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index: MSR_IA32_APICBASE,
        data: x2apic_base(bsp),
        ..Default::default()
    }])
    .map_err(|e| VmmError::GuestMemory {
        what: "building the APIC_BASE MSR list",
        detail: format!("{e:?}"),
    })?;
    match vcpu.set_msrs(&msrs) {
        Ok(1) => Ok(()),
        Ok(_) => Err(VmmError::Ioctl {
            ioctl: "KVM_SET_MSRS(IA32_APIC_BASE x2APIC)",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        }),
        Err(e) => Err(ioctl("KVM_SET_MSRS(IA32_APIC_BASE x2APIC)")(e)),
    }
}

fn set_lapic_reg(regs: &mut [libc::c_char; 1024], off: usize, v: u32) {
    for (i, b) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *b as libc::c_char;
    }
}

/// Puts the BSP in 64-bit mode at `entry` with RSI = boot_params.
pub fn setup_bsp(vcpu: &VcpuFd, entry: u64) -> Result<(), VmmError> {
    let sregs = vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?;
    vcpu.set_sregs(&boot::long_mode_sregs(sregs))
        .map_err(ioctl("KVM_SET_SREGS"))?;
    vcpu.set_regs(&boot::entry_regs(entry))
        .map_err(ioctl("KVM_SET_REGS"))?;
    vcpu.set_fpu(&boot::entry_fpu())
        .map_err(ioctl("KVM_SET_FPU"))?;
    Ok(())
}

/// Writes a payload into guest memory; gets the RSDP address, returns the entry point.
pub type LoadFn<'a> =
    Box<dyn FnOnce(&GuestMemoryMmap, &MemoryLayout, u64) -> Result<u64, VmmError> + 'a>;

/// What to boot and how to watch it; the payload-specific loading is `load`.
pub struct MachineSpec<'a> {
    /// Topology.
    pub topology: Topology,
    /// Memory layout.
    pub layout: MemoryLayout,
    /// The session that watches the run (watchdog, cancel, console, channel, monitor).
    pub session: Session,
    /// Writes the payload into guest memory; gets the RSDP address, returns the entry point.
    pub load: LoadFn<'a>,
    /// The backing file of a virtio-mmio disk (opened read-write), if any; the command line
    /// must declare it ([`super::virtio_blk::cmdline_word`]).
    pub disk: Option<std::fs::File>,
    /// Performance mode's per-vCPU placement ([`super::perf`]), if any.
    pub pinning: Option<crate::placement::Pinning>,
}

/// Starts a thread per vCPU (pinned as performance mode says); stops at the first that fails
/// to start, returning the ones running and that error.
fn spawn_vcpus(
    vcpus: Vec<VcpuFd>,
    shared: &Arc<Shared>,
    devices: &Arc<Devices>,
    mem: &GuestMemoryMmap,
    pinning: &Option<crate::placement::Pinning>,
    notes: &Arc<std::sync::Mutex<Vec<String>>>,
) -> (Vec<vcpu::VcpuThread>, Option<std::io::Error>) {
    let mut threads = Vec::with_capacity(vcpus.len());
    for (i, fd) in vcpus.into_iter().enumerate() {
        let ctx = VcpuContext {
            shared: shared.clone(),
            devices: devices.clone(),
            mem: mem.clone(),
            pin: pinning
                .as_ref()
                .and_then(|p| Some((*p.vcpus.get(i)?, p.realtime))),
            notes: notes.clone(),
        };
        match vcpu::spawn(fd, i as u32, ctx) {
            Ok(t) => threads.push(t),
            Err(e) => return (threads, Some(e)),
        }
    }
    (threads, None)
}

/// Boots a machine and runs it to its end.
pub fn run_machine(spec: MachineSpec<'_>) -> Result<VmOutcome, VmmError> {
    let t0 = Instant::now();
    let topo = spec.topology;
    let chip = IrqChip::for_topology(&topo);
    let kvm = open_kvm()?;
    let vm = Arc::new(create_vm(&kvm, topo.num_cpus(), chip)?);
    let pinning = spec.pinning.clone();
    let mut notes = Vec::new();
    if pinning.is_some() {
        super::perf::disable_exits(&vm, &mut notes);
    }
    let hugepages = pinning.as_ref().is_some_and(|p| p.hugepages);
    let mem = create_memory(&vm, &spec.layout, hugepages, &mut notes)?;
    let rsdp = write_common(&mem, &spec.layout, &topo)?;
    let entry = (spec.load)(&mem, &spec.layout, rsdp)?;
    let mut supported = supported_cpuid(&kvm)?;
    if xsave_hidden() {
        cpuid::hide_xsave(&mut supported);
    }
    let mut vcpus = Vec::with_capacity(topo.num_cpus() as usize);
    for cpu in 0..topo.num_cpus() {
        vcpus.push(create_vcpu(&vm, &supported, &topo, cpu, pinning.is_some())?.0);
    }
    setup_bsp(&vcpus[0], entry)?;
    // Opened now: the vCPU fds move into their threads below.
    let kvm_stats = super::stats::Collector::open(&*vm, &vcpus);
    let (irq, ioapic) = serial_irq(&vm, chip)?;
    let session = spec.session;
    let mut devices = Devices::new(irq, session.console().clone(), ioapic.clone());
    if let Some(file) = spec.disk {
        let irq = irq_line(&vm, ioapic.as_ref(), super::virtio_blk::GSI)?;
        let disk = super::virtio_blk::VirtioBlk::new(file, mem.clone(), irq).map_err(|source| {
            VmmError::Host {
                what: "sizing the disk file",
                source,
            }
        })?;
        devices = devices.with_disk(disk);
    }
    let devices = Arc::new(devices);
    let shared = Arc::new(Shared::default());
    let notes = Arc::new(std::sync::Mutex::new(notes));

    let (threads, spawn_err) = spawn_vcpus(vcpus, &shared, &devices, &mem, &pinning, &notes);
    // From here on the guest runs: the watchdog starts now, not before setup.
    let started = Instant::now();
    let mut machine = KvmMachine {
        mem: mem.clone(),
        shm: spec.layout.shm,
        shared,
        threads,
        stopped_fds: Vec::new(),
    };
    if let Some(source) = spawn_err {
        machine.shared.finish(VmEnd::Cancelled);
        machine.halt(VmEnd::Cancelled);
        return Err(VmmError::Host {
            what: "starting a vCPU thread",
            source,
        });
    }
    let interactive = session.console_mode() == ConsoleMode::Interactive;
    let stdin = interactive.then(|| StdinForwarder::start(devices.clone()));
    let target = MonitorTarget {
        ram: Arc::new(mem.clone()),
        cpus: topo.num_cpus() as usize,
        threads: crate::monitor::VcpuThreads {
            pid: std::process::id(),
            naming: crate::monitor::ThreadNaming::Ktstr,
        },
    };
    let finished = session.run(&mut machine, started, Some(target));
    if let Some(s) = stdin {
        s.stop();
    }
    let kvm_stats = kvm_stats.collect(); // before teardown, while the counters are final
                                         // Teardown order (vmm.md §8): vCPU fds, then the VM fd (the userspace IOAPIC holds the
                                         // last reference to it with a split irqchip), then memory.
    drop(machine);
    drop(vm);
    drop(devices);
    drop(mem);
    drop(kvm);
    let placement_notes = std::mem::take(&mut *notes.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(VmOutcome {
        kvm_stats,
        placement_notes,
        ..finished.outcome(BackendKind::Kvm, t0)
    })
}

/// COM1's interrupt line, and the userspace IOAPIC (for the devices' MMIO) with a split
/// irqchip.
fn serial_irq(
    vm: &Arc<VmFd>,
    chip: IrqChip,
) -> Result<(IrqLine, Option<Arc<IoapicDevice>>), VmmError> {
    let ioapic = match chip {
        IrqChip::InKernel => None,
        IrqChip::Split => Some(IoapicDevice::new(Box::new(KvmMsiSink(vm.clone())))),
    };
    Ok((irq_line(vm, ioapic.as_ref(), COM1_GSI)?, ioapic))
}

/// A device's interrupt line on `gsi`: an irqfd into the in-kernel irqchip, or a pin of the
/// userspace IOAPIC with a split irqchip.
fn irq_line(
    vm: &Arc<VmFd>,
    ioapic: Option<&Arc<IoapicDevice>>,
    gsi: u32,
) -> Result<IrqLine, VmmError> {
    Ok(match ioapic {
        None => {
            let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VmmError::Host {
                what: "creating an interrupt eventfd",
                source,
            })?;
            vm.register_irqfd(&fd, gsi).map_err(ioctl("KVM_IRQFD"))?;
            IrqLine::Irqfd(fd)
        }
        Some(io) => IrqLine::Ioapic {
            ioapic: io.clone(),
            pin: gsi as usize,
        },
    })
}

/// The running in-process VM as the session drives it.
struct KvmMachine {
    mem: GuestMemoryMmap,
    shm: GuestRange,
    shared: Arc<Shared>,
    threads: Vec<vcpu::VcpuThread>,
    /// The fds of the vCPU threads that stopped, dropped with the machine (before the VM fd).
    stopped_fds: Vec<kvm_ioctls::VcpuFd>,
}

impl Machine for KvmMachine {
    /// Copies through vm-memory (never a reference into guest RAM).
    fn read_channel(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.mem
            .read_slice(buf, GuestAddress(self.shm.base + offset))
            .map_err(|e| std::io::Error::other(e.to_string()))
    }

    fn ended(&mut self) -> Option<VmEnd> {
        self.shared.end().map(|(end, _)| end)
    }

    fn wait(&mut self, d: Duration) {
        self.shared.wait(d);
    }

    fn stop(&mut self, why: &VmEnd) {
        self.shared.finish(why.clone());
    }

    fn halt(&mut self, end: VmEnd) -> VmEnd {
        let stopped = vcpu::stop_all(
            &self.shared,
            std::mem::take(&mut self.threads),
            vcpu::STOP_GRACE,
        );
        self.stopped_fds = stopped.fds;
        // A vCPU thread that died while stopping recorded a backend error only if nothing had
        // ended the VM before: `end` stands.
        if stopped.stuck.is_empty() {
            return end;
        }
        VmEnd::BackendError {
            detail: format!(
                "{}; then vCPU(s) {:?} did not leave KVM_RUN within {:?} of being kicked and were abandoned (the host kernel kept them in the guest)",
                end.describe(),
                stopped.stuck,
                vcpu::STOP_GRACE
            ),
        }
    }
}

/// Forwards host stdin to the guest's serial port (interactive console).
struct StdinForwarder {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl StdinForwarder {
    fn start(devices: Arc<Devices>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let fd = std::io::stdin().as_raw_fd();
            let mut pending: Vec<u8> = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                if !pending.is_empty() {
                    let n = devices.serial_input(&pending);
                    pending.drain(..n);
                }
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; a 50 ms timeout bounds how long stop() waits.
                let r = unsafe { libc::poll(&mut pfd, 1, 50) };
                if r <= 0 || pending.len() > 4096 {
                    continue;
                }
                let mut buf = [0u8; 256];
                // SAFETY: reading into a local buffer of the stated length.
                let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n as usize]);
            }
        });
        StdinForwarder { stop, handle }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.handle.join();
    }
}

/// For each CPU of `topo`: the CPUID table the VMM sets and what KVM_GET_CPUID2 reads back,
/// on a VM that never runs. Proves the per-vCPU tables reach KVM unchanged.
#[allow(clippy::type_complexity)]
pub fn cpuid_roundtrip(
    topo: &Topology,
) -> Result<Vec<(Vec<kvm_cpuid_entry2>, Vec<kvm_cpuid_entry2>)>, VmmError> {
    let kvm = open_kvm()?;
    let vm = create_vm(&kvm, topo.num_cpus(), IrqChip::for_topology(topo))?;
    let supported = supported_cpuid(&kvm)?;
    let mut out = Vec::new();
    for cpu in 0..topo.num_cpus() {
        let (fd, set) = create_vcpu(&vm, &supported, topo, cpu, false)?;
        let got = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(ioctl("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        out.push((set, got));
    }
    Ok(out)
}
