//! Shared helpers of the KVM integration tests.
#![allow(dead_code)]

/// Whether /dev/kvm can be opened; prints a loud note when not.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!(
                "\n!!!!!!!! NOTE: {test} SKIPPED: cannot open /dev/kvm ({e}); the KVM backend is untested here !!!!!!!!\n"
            );
            false
        }
    }
}

/// Whether the host CPU has hardware virtualisation (svm or vmx), without which Linux does
/// not boot under KVM in reasonable time (a software hypervisor emulates it).
pub fn hardware_kvm(test: &str) -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "svm" || f == "vmx"));
    if !hw {
        eprintln!(
            "\n!!!!!!!! NOTE: {test} SKIPPED: no svm/vmx in the host CPU flags; /dev/kvm here is a software hypervisor that cannot boot Linux !!!!!!!!\n"
        );
    }
    hw && kvm_available(test)
}
