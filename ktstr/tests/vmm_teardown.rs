//! Booting the probe many times in one process leaks no fds, threads or memory mappings.
//! Alone in its own test binary so no other test's threads or fds disturb the counts.

mod common;

use std::time::Duration;

use ktstr::vm::kvm::probe;
use ktstr::Topology;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn maps() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

#[test]
fn twenty_probe_boots_leak_nothing() {
    if !common::kvm_available("twenty_probe_boots_leak_nothing") {
        return;
    }
    let t = Topology::parse("1,1,2,1").unwrap();
    // A split-irqchip (x2APIC) VM, whose IOAPIC holds the last reference to the VM fd.
    let big = Topology::parse("1n9l17c1t").unwrap();
    // Warm-up boots: process-wide one-time state (signal handler, allocator arenas, and
    // glibc's cache of thread stacks, which keeps the big VM's 153 stacks mapped).
    probe::run_probe(&t, Duration::from_secs(20)).unwrap();
    probe::run_probe(&big, Duration::from_secs(60)).unwrap();
    let (fds, tasks, m) = (count("/proc/self/fd"), count("/proc/self/task"), maps());
    for i in 0..20 {
        let r = probe::run_probe(&t, Duration::from_secs(20)).unwrap();
        assert!(r.check(&t).is_empty(), "boot {i}");
    }
    // A hang torn down by the watchdog must not leak either.
    probe::run_code(&t, &[0xEB, 0xFE], &[], Duration::from_millis(300)).unwrap();
    // Nor the split-irqchip VM.
    let r = probe::run_probe(&big, Duration::from_secs(60)).unwrap();
    assert!(r.check(&big).is_empty());
    assert_eq!(count("/proc/self/fd"), fds, "fd leak");
    assert_eq!(count("/proc/self/task"), tasks, "thread leak");
    assert!(maps() <= m + 2, "mapping leak: {} → {}", m, maps());
}
