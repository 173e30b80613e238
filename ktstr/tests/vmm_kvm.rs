//! KVM backend tests that need /dev/kvm (each returns with a loud note without it): CPUID
//! round trips, the probe guest end to end, and how the VMM classifies guest ends.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{hardware_kvm, kvm_available};
use ktstr::vm::kvm::{self as vmm, probe, VmmError};
use ktstr::vm::{VmEnd, VmSpec};
use ktstr::Topology;

const SHAPES: [&str; 7] = [
    "1,1,1,1", "1,1,2,1", "1,3,3,1", "1,2,4,2", "2,2,2,2", "2,4,4,2", "1,8,4,2",
];

/// Leaves that carry the topology: these must read back exactly, on any KVM.
fn topology_leaf(function: u32) -> bool {
    matches!(
        function,
        1 | 4 | 0xB | 0x8000_0008 | 0x8000_001D | 0x8000_001E
    )
}

/// Bits KVM rewrites at run time from vCPU state (kvm_update_cpuid_runtime): leaf 1
/// ECX.OSXSAVE and EDX.APIC, leaf 7 ECX.OSPKE, leaf 0xD EBX (XSAVE size).
fn mask_runtime(mut e: kvm_bindings::kvm_cpuid_entry2) -> kvm_bindings::kvm_cpuid_entry2 {
    match e.function {
        1 => {
            e.ecx &= !(1 << 27);
            e.edx &= !(1 << 9);
        }
        7 => e.ecx &= !(1 << 4),
        0xD => e.ebx = 0,
        _ => {}
    }
    e
}

#[test]
fn cpuid_read_back_equals_what_was_set() {
    if !kvm_available("cpuid_read_back_equals_what_was_set") {
        return;
    }
    let hw = common::hardware_kvm("cpuid feature-leaf equality (topology leaves still checked)");
    let key = |e: &kvm_bindings::kvm_cpuid_entry2| {
        (e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
    };
    let mut feature_diffs = std::collections::BTreeSet::new();
    // The shapes and every gauntlet preset (the 252-vCPU ones on a split irqchip).
    let presets = ktstr::registry::matrix::PRESETS.map(|(_, t)| t.label());
    let labels: Vec<String> = SHAPES
        .iter()
        .map(|s| s.to_string())
        .chain(presets)
        .collect();
    for s in &labels {
        let s = s.as_str();
        let t = Topology::parse(s).unwrap();
        let pairs = vmm::machine::cpuid_roundtrip(&t).unwrap();
        assert_eq!(pairs.len() as u32, t.num_cpus());
        for (cpu, (set, got)) in pairs.iter().enumerate() {
            let ids = |v: &[kvm_bindings::kvm_cpuid_entry2]| {
                let mut x: Vec<_> = v.iter().map(|e| (e.function, e.index)).collect();
                x.sort();
                x
            };
            assert_eq!(
                ids(set),
                ids(got),
                "{s} cpu{cpu}: different leaves read back"
            );
            for e in set {
                let g = got
                    .iter()
                    .find(|g| g.function == e.function && g.index == e.index)
                    .unwrap();
                if topology_leaf(e.function) {
                    let (a, b) = (mask_runtime(*e), mask_runtime(*g));
                    if e.function == 1 {
                        // Leaf 1 EBX: initial APIC ID and logical CPU count. (EDX.HTT is
                        // a feature bit some KVMs rewrite; it is compared below.)
                        assert_eq!(a.ebx, b.ebx, "{s} cpu{cpu} leaf 1");
                    } else {
                        assert_eq!(key(&a), key(&b), "{s} cpu{cpu} leaf {:#x}", e.function);
                    }
                }
                if key(&mask_runtime(*e)) != key(&mask_runtime(*g)) {
                    feature_diffs.insert((e.function, e.index));
                }
            }
        }
    }
    if !feature_diffs.is_empty() {
        let list: Vec<String> = feature_diffs
            .iter()
            .map(|(f, i)| format!("{f:#x}.{i}"))
            .collect();
        eprintln!(
            "\n!!!!!!!! NOTE: KVM_GET_CPUID2 returned other feature bits than were set for leaves {} (this KVM rewrites them) !!!!!!!!\n",
            list.join(" ")
        );
        assert!(!hw, "hardware KVM changed CPUID leaves {list:?}");
    }
}

#[test]
fn probe_sees_the_topology() {
    if !kvm_available("probe_sees_the_topology") {
        return;
    }
    for s in SHAPES {
        let t = Topology::parse(s).unwrap();
        let r =
            probe::run_probe(&t, Duration::from_secs(20)).unwrap_or_else(|e| panic!("{s}: {e}"));
        eprintln!("{s}: {:?}\n{}", r.times, r.render_table());
        assert_eq!(r.cpus.len() as u32, t.num_cpus(), "{s}");
        let bad = r.check(&t);
        assert!(bad.is_empty(), "{s}: {bad:#?}\n{}", r.render_table());
        if t.numa_nodes > 1 {
            assert!(r.acpi_signatures.iter().any(|x| x == "SLIT"), "{s}");
        }
        // The report serialises (for the CLI's JSON output).
        serde_json::to_string(&r).unwrap();
    }
}

#[test]
fn check_reports_a_wrong_topology() {
    if !kvm_available("check_reports_a_wrong_topology") {
        return;
    }
    let r = probe::run_probe(
        &Topology::parse("1,2,2,1").unwrap(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(r.check(&Topology::parse("1,2,2,1").unwrap()).is_empty());
    let bad = r.check(&Topology::parse("1,1,4,1").unwrap());
    assert!(!bad.is_empty());
    assert!(bad.iter().any(|b| b.contains("LLC")), "{bad:#?}");
}

fn one() -> Topology {
    Topology::new(1, 1, 1, 1).unwrap()
}

#[test]
fn guest_exit_port_status() {
    if !kvm_available("guest_exit_port_status") {
        return;
    }
    // mov al, 42; out 0xF4, al
    let o = probe::run_code(&one(), &[0xB0, 42, 0xE6, 0xF4], &[], Duration::from_secs(5)).unwrap();
    assert_eq!(o.end, VmEnd::GuestExit { status: 42 });
    assert!(o.frames.is_empty() && o.channel_error.is_none());
}

#[test]
fn triple_fault_is_named_with_registers() {
    if !kvm_available("triple_fault_is_named_with_registers") {
        return;
    }
    // ud2 with an empty IDT: #UD → #DF → triple fault → KVM_EXIT_SHUTDOWN.
    let o = probe::run_code(&one(), &[0x0F, 0x0B], &[], Duration::from_secs(5)).unwrap();
    match &o.end {
        VmEnd::TripleFault { detail } => {
            assert!(detail.starts_with("vCPU 0: RIP 0x"), "{detail}");
            assert!(detail.contains("CR0 0x"), "{detail}");
        }
        other => panic!("expected a triple fault, got {other:?}"),
    }
}

#[test]
fn i8042_reset_is_a_reboot() {
    if !kvm_available("i8042_reset_is_a_reboot") {
        return;
    }
    // mov al, 0xFE; out 0x64, al
    let o = probe::run_code(
        &one(),
        &[0xB0, 0xFE, 0xE6, 0x64],
        &[],
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(o.end, VmEnd::Reboot);
}

#[test]
fn hang_times_out_quickly() {
    if !kvm_available("hang_times_out_quickly") {
        return;
    }
    let t0 = Instant::now();
    // jmp $ on 4 vCPUs (APs never started: they sit in KVM_RUN waiting for SIPI).
    let t = Topology::new(1, 1, 4, 1).unwrap();
    let o = probe::run_code(&t, &[0xEB, 0xFE], &[], Duration::from_secs(1)).unwrap();
    assert_eq!(
        o.end,
        VmEnd::Timeout {
            after: Duration::from_secs(1)
        }
    );
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(o.times.teardown < Duration::from_secs(1), "{:?}", o.times);
}

#[test]
fn refused_instruction_is_an_emulation_failure() {
    if !kvm_available("refused_instruction_is_an_emulation_failure") {
        return;
    }
    // xgetbv with CR4.OSXSAVE clear: hardware KVM delivers #UD (→ triple fault, with no IDT);
    // a software hypervisor's emulator refuses it. Which one this host does is known from
    // its CPU flags, so each path is held to its own outcome.
    let o = probe::run_code(&one(), &[0x0F, 0x01, 0xD0], &[], Duration::from_secs(5)).unwrap();
    if ktstr::vm::backend::HostVirt::probe().hardware_virt {
        assert!(
            matches!(o.end, VmEnd::TripleFault { .. }),
            "hardware KVM: expected #UD → triple fault, got {:?}",
            o.end
        );
    } else {
        let VmEnd::EmulationFailure { detail } = &o.end else {
            panic!(
                "software KVM: expected an emulation failure, got {:?}",
                o.end
            );
        };
        assert!(detail.contains("suberror 1"), "{detail}");
        assert!(detail.contains("RIP 0x100000"), "{detail}");
        assert!(detail.contains("0f, 01, d0"), "{detail}");
    }
}

#[test]
fn cancel_flag_stops_promptly() {
    if !kvm_available("cancel_flag_stops_promptly") {
        return;
    }
    // A spinning guest; the host raises the cancel flag after 300 ms.
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let c2 = cancel.clone();
    let h = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let t0 = Instant::now();
    let o =
        probe::run_code_cancellable(&one(), &[0xEB, 0xFE], &[], Duration::from_secs(30), cancel)
            .unwrap();
    h.join().unwrap();
    assert_eq!(o.end, VmEnd::Cancelled);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
}

#[test]
fn bad_kernels_fail_before_any_vcpu() {
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("initramfs");
    std::fs::write(&rd, b"070701").unwrap();
    let spec = |k: PathBuf| VmSpec::new(k, rd.clone(), one());
    let missing = vmm::run(spec(dir.path().join("nope"))).unwrap_err();
    assert!(matches!(missing, VmmError::Kernel(_)), "{missing}");
    assert!(missing.to_string().contains("nope"), "{missing}");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    let e = vmm::run(spec(empty)).unwrap_err();
    assert!(e.to_string().contains("empty"), "{e}");
    let junk = dir.path().join("junk");
    std::fs::write(&junk, vec![0x42u8; 8192]).unwrap();
    let e = vmm::run(spec(junk)).unwrap_err();
    assert!(
        e.to_string()
            .contains("expected an ELF x86-64 vmlinux or a bzImage"),
        "{e}"
    );
    // Too much initramfs for the memory: refused as a layout error, also before any vCPU.
    if let Some(k) = kernel_path() {
        let mut s = VmSpec::new(k, rd.clone(), one());
        s.initramfs = dir.path().join("big");
        std::fs::File::create(&s.initramfs)
            .unwrap()
            .set_len(600 << 20)
            .unwrap();
        s.memory_mib = 256;
        if kvm_available("bad_kernels_fail_before_any_vcpu (initramfs part)") {
            let e = vmm::run(s).unwrap_err();
            assert!(e.to_string().contains("does not fit"), "{e}");
        }
    }
    let mut s = spec(dir.path().join("nope"));
    s.kernel = kernel_path().unwrap_or(s.kernel);
    s.cmdline_extra = vec!["x".repeat(3000)];
    if s.kernel.exists() {
        let e = vmm::run(s).unwrap_err();
        assert!(matches!(e, VmmError::Cmdline(_)), "{e}");
    }
}

/// x2APIC shapes (APIC IDs above 0xFE) run on a split irqchip with 32-bit x2APIC IDs: the
/// probe switches every LAPIC to x2APIC mode, starts the APs through the x2APIC ICR and
/// reads each 32-bit ID from MSR 0x802. The smallest-ish x2APIC shape (153 CPUs, IDs up to 272) and
/// the two 252-CPU gauntlet presets.
#[test]
fn probe_sees_x2apic_topologies() {
    if !kvm_available("probe_sees_x2apic_topologies") {
        return;
    }
    for s in ["1n9l17c1t", "1n14l9c2t", "1n14l18c1t"] {
        let t = Topology::parse(s).unwrap();
        assert!(t.needs_x2apic(), "{s}");
        let started = Instant::now();
        let r =
            probe::run_probe(&t, Duration::from_secs(120)).unwrap_or_else(|e| panic!("{s}: {e}"));
        eprintln!(
            "{s}: {} vCPUs, max APIC ID {} in {:?} ({:?})",
            r.cpus.len(),
            t.max_apic_id(),
            started.elapsed(),
            r.times
        );
        assert_eq!(r.cpus.len() as u32, t.num_cpus(), "{s}");
        let bad = r.check(&t);
        assert!(bad.is_empty(), "{s}: {bad:#?}\n{}", r.render_table());
        // COM1's IOAPIC pin reached the CPU with the largest APIC ID through the extended
        // destination ID, and its EOI cleared remote IRR in the userspace IOAPIC.
        let irq = r.irq.unwrap();
        assert_eq!(irq.handled_by, Some(t.max_apic_id()), "{s}");
        assert_eq!(irq.rte_low & (1 << 14), 0, "{s}");
    }
}

/// `measure_probe` boots every run (each checked against the topology) and its medians are
/// consistent: the phases of the median boot add up to no more than the median total. (The
/// figures themselves are `cargo ktstr bench`'s to report.)
#[test]
fn probe_phase_medians() {
    if !kvm_available("probe_phase_medians") {
        return;
    }
    for s in ["1,1,1,1", "1,1,2,1", "2,2,2,2"] {
        let t = Topology::parse(s).unwrap();
        let m = probe::measure_probe(&t, 3, Duration::from_secs(20)).unwrap();
        eprintln!("probe {s}: {m:?}");
        assert_eq!(m.runs, 3, "{s}");
        assert!(
            m.run > Duration::ZERO && m.total > Duration::ZERO,
            "{s}: {m:?}"
        );
        assert!(m.setup + m.teardown <= m.total, "{s}: {m:?}");
    }
}

fn kernel_path() -> Option<PathBuf> {
    let p = std::env::var_os("KTSTR_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/kernel/vmlinux")
        });
    p.exists().then_some(p)
}

/// A newc cpio with `entries` (path, mode, contents), directories first.
fn cpio(entries: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut push = |name: &str, mode: u32, data: &[u8], ino: u32| {
        let hdr = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
        );
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (i, (name, mode, data)) in entries.iter().enumerate() {
        push(name, *mode, data, i as u32 + 1);
    }
    push("TRAILER!!!", 0, &[], 0);
    out
}

#[test]
fn linux_boots_on_hardware_kvm() {
    if !hardware_kvm("linux_boots_on_hardware_kvm") {
        return;
    }
    let Some(kernel) = kernel_path() else {
        eprintln!("\n!!!!!!!! NOTE: linux_boots_on_hardware_kvm SKIPPED: no kernel (set KTSTR_KERNEL) !!!!!!!!\n");
        return;
    };
    let busybox = std::fs::read("/usr/bin/busybox").or_else(|_| std::fs::read("/bin/busybox"));
    let Ok(busybox) = busybox else {
        eprintln!(
            "\n!!!!!!!! NOTE: linux_boots_on_hardware_kvm SKIPPED: no static busybox !!!!!!!!\n"
        );
        return;
    };
    let init = b"#!/bin/busybox sh\n/bin/busybox mkdir -p /sys\n/bin/busybox mount -t sysfs sysfs /sys\n/bin/busybox echo NODE1_CPULIST=$(/bin/busybox cat /sys/devices/system/node/node1/cpulist)\n/bin/busybox reboot -f\n";
    let dir = tempfile::tempdir().unwrap();
    let rd = dir.path().join("initramfs.cpio");
    std::fs::write(
        &rd,
        cpio(&[
            ("bin", 0o40755, b""),
            ("bin/busybox", 0o100755, &busybox),
            ("init", 0o100755, init),
        ]),
    )
    .unwrap();
    let t = Topology::parse("2,2,2,2").unwrap();
    let mut spec = VmSpec::new(kernel, rd, t);
    spec.timeout = Duration::from_secs(60);
    spec.memory_mib = 512;
    let o = vmm::run(spec).unwrap();
    eprintln!("{:?} {:?}\n{}", o.end, o.times, o.console_lines(40));
    assert!(
        o.console_tail.contains("NODE1_CPULIST=4-7"),
        "{}",
        o.console_tail
    );
    assert_eq!(o.end, VmEnd::Reboot);
}

/// The same probe (BSP program, AP trampoline) boots under `qemu -accel kvm` as a multiboot
/// image, through the qemu backend's shared-memory result channel: the bench's comparison.
/// Two shapes: a small xAPIC one and a 252-CPU x2APIC preset (SeaBIOS enables x2APIC).
#[test]
fn probe_boots_under_qemu_kvm() {
    if !kvm_available("probe_boots_under_qemu_kvm") {
        return;
    }
    if !ktstr::vm::qemu::qemu_available() {
        eprintln!(
            "\n!!!!!!!! NOTE: probe_boots_under_qemu_kvm SKIPPED: no qemu-system-x86_64 !!!!!!!!\n"
        );
        return;
    }
    for s in ["2,2,2,2", "1,14,9,2"] {
        let t = Topology::parse(s).unwrap();
        let started = Instant::now();
        let r = probe::run_probe_qemu(&t, Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("{s}: {e}"));
        eprintln!(
            "qemu {s}: {} vCPUs in {:?}; IOAPIC test {:?}",
            r.cpus.len(),
            started.elapsed(),
            r.irq
        );
        let bad = r.check_apic_ids(&t);
        assert!(bad.is_empty(), "{s}: {bad:#?}\n{}", r.render_table());
        assert!(r.acpi_signatures.iter().any(|x| x == "APIC"), "{s}");
    }
}
