//! Backend selection: the in-process KVM VMM where hardware KVM is usable, qemu otherwise.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A VM backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// ktstr's own in-process VMM on `/dev/kvm`.
    Kvm,
    /// `qemu-system-x86_64` as a child process (TCG, or KVM when asked and available).
    Qemu,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Kvm => "kvm",
            BackendKind::Qemu => "qemu",
        })
    }
}

/// What the user asked for: a backend or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// Pick by probing the host.
    Auto,
    /// Use this one.
    Fixed(BackendKind),
}

/// A backend name that is not `kvm`, `qemu` or `auto`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown backend {0:?}: expected kvm, qemu or auto")]
pub struct BackendSelectError(pub String);

impl FromStr for BackendChoice {
    type Err = BackendSelectError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(BackendChoice::Auto),
            "kvm" => Ok(BackendChoice::Fixed(BackendKind::Kvm)),
            "qemu" => Ok(BackendChoice::Fixed(BackendKind::Qemu)),
            _ => Err(BackendSelectError(s.to_string())),
        }
    }
}

impl BackendChoice {
    /// Reads `KTSTR_BACKEND` (unset means `auto`).
    pub fn from_env() -> Result<Self, BackendSelectError> {
        match std::env::var("KTSTR_BACKEND") {
            Ok(v) => v.parse(),
            Err(_) => Ok(BackendChoice::Auto),
        }
    }
}

/// What to do when `/dev/kvm` exists but this user may not open it.
pub const KVM_DENIED_REMEDY: &str = "cannot open /dev/kvm: permission denied for this user; \
     add the user to the group that owns it (`sudo usermod -aG kvm $USER`, then log in again; \
     where /dev/kvm is root-only, `sudo chgrp kvm /dev/kvm && sudo chmod 0660 /dev/kvm`), or \
     use --backend qemu";

/// What the host offers for virtualization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVirt {
    /// `/dev/kvm` opens read-write.
    pub kvm_usable: bool,
    /// `/dev/kvm` exists but opening it was refused (EACCES/EPERM): a permission to fix.
    pub kvm_denied: bool,
    /// The CPU flags include `vmx` or `svm`, i.e. KVM runs guest code in hardware.
    pub hardware_virt: bool,
    /// The hypervisor this host itself runs under, by its CPUID signature (`KVMKVMKVM`,
    /// `TCGTCGTCGTCG`, ...); `None` on bare metal.
    pub outer_hypervisor: Option<String>,
}

impl HostVirt {
    /// Probes this host.
    pub fn probe() -> Self {
        let open = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm");
        let kvm_usable = open.is_ok();
        let kvm_denied = open
            .err()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied);
        let hardware_virt = std::fs::read_to_string("/proc/cpuinfo")
            .map(|s| cpuinfo_has_hw_virt(&s))
            .unwrap_or(false);
        HostVirt {
            kvm_usable,
            kvm_denied,
            hardware_virt,
            outer_hypervisor: outer_hypervisor(),
        }
    }

    /// Whether this host is itself a guest of an emulator (qemu TCG): its "hardware"
    /// virtualization is emulated too, so a KVM guest here runs about as slowly as under TCG
    /// (the nested KVM lane: a 4-vCPU boot takes ~20 s, against ~5 s under plain TCG).
    pub fn inside_emulator(&self) -> bool {
        self.outer_hypervisor.as_deref() == Some("TCGTCGTCGTCG")
    }

    /// Whether Linux guests can run fast on KVM here.
    pub fn hardware_kvm(&self) -> bool {
        self.kvm_usable && self.hardware_virt
    }
}

/// The hypervisor vendor signature (CPUID leaf 0x4000_0000), when CPUID says there is one.
#[cfg(target_arch = "x86_64")]
fn outer_hypervisor() -> Option<String> {
    use std::arch::x86_64::__cpuid;
    let leaf1 = __cpuid(1);
    if leaf1.ecx & (1 << 31) == 0 {
        return None;
    }
    // With the hypervisor bit set, leaf 0x4000_0000 is the hypervisor's.
    let h = __cpuid(0x4000_0000);
    Some(hypervisor_signature(h.ebx, h.ecx, h.edx))
}

#[cfg(not(target_arch = "x86_64"))]
fn outer_hypervisor() -> Option<String> {
    None
}

/// The 12-byte vendor signature in EBX, ECX, EDX, without trailing NULs.
fn hypervisor_signature(ebx: u32, ecx: u32, edx: u32) -> String {
    let bytes: Vec<u8> = [ebx, ecx, edx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether a `/proc/cpuinfo` text lists the `vmx` or `svm` flag.
pub fn cpuinfo_has_hw_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// Resolves a choice to a backend and the reason, e.g. for a one-time stderr note.
pub fn select_backend(choice: BackendChoice, host: &HostVirt) -> (BackendKind, String) {
    match choice {
        BackendChoice::Fixed(k) => (k, format!("{k} requested")),
        BackendChoice::Auto if host.hardware_kvm() => (
            BackendKind::Kvm,
            "auto: /dev/kvm is usable and the CPU has hardware virtualization".into(),
        ),
        BackendChoice::Auto if host.kvm_usable => (
            BackendKind::Qemu,
            "auto: /dev/kvm exists but the CPU flags have no vmx/svm, so KVM would emulate the guest kernel; using qemu (TCG)".into(),
        ),
        BackendChoice::Auto if host.kvm_denied && host.hardware_virt => (
            BackendKind::Qemu,
            "auto: /dev/kvm exists but this user may not open it (permission denied), so using \
             qemu (TCG), several times slower; for KVM add the user to the group that owns \
             /dev/kvm (`sudo usermod -aG kvm $USER`, then log in again)"
                .into(),
        ),
        BackendChoice::Auto if host.kvm_denied => (
            BackendKind::Qemu,
            "auto: /dev/kvm exists but this user may not open it (permission denied); using \
             qemu (TCG)"
                .into(),
        ),
        BackendChoice::Auto => (
            BackendKind::Qemu,
            "auto: /dev/kvm is missing; using qemu (TCG)".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_choices() {
        assert_eq!(
            "auto".parse::<BackendChoice>().unwrap(),
            BackendChoice::Auto
        );
        assert_eq!(
            "KVM".parse::<BackendChoice>().unwrap(),
            BackendChoice::Fixed(BackendKind::Kvm)
        );
        let e = "xen".parse::<BackendChoice>().unwrap_err();
        assert!(e.to_string().contains("expected kvm, qemu or auto"));
    }

    #[test]
    fn a_denied_dev_kvm_says_which_group_to_join() {
        let denied = HostVirt {
            kvm_usable: false,
            kvm_denied: true,
            hardware_virt: true,
            outer_hypervisor: None,
        };
        let (k, why) = select_backend(BackendChoice::Auto, &denied);
        assert_eq!(k, BackendKind::Qemu);
        assert!(
            why.contains("permission denied") && why.contains("usermod -aG kvm"),
            "{why}"
        );
        assert!(KVM_DENIED_REMEDY.contains("--backend qemu"));
    }

    #[test]
    fn auto_prefers_hardware_kvm_only() {
        let hw = HostVirt {
            kvm_usable: true,
            kvm_denied: false,
            hardware_virt: true,
            outer_hypervisor: None,
        };
        let emu = HostVirt {
            kvm_usable: true,
            kvm_denied: false,
            hardware_virt: false,
            outer_hypervisor: None,
        };
        let none = HostVirt {
            kvm_usable: false,
            kvm_denied: false,
            hardware_virt: true,
            outer_hypervisor: None,
        };
        assert_eq!(select_backend(BackendChoice::Auto, &hw).0, BackendKind::Kvm);
        let (k, why) = select_backend(BackendChoice::Auto, &emu);
        assert_eq!(k, BackendKind::Qemu);
        assert!(why.contains("no vmx/svm"), "{why}");
        assert_eq!(
            select_backend(BackendChoice::Auto, &none).0,
            BackendKind::Qemu
        );
    }

    #[test]
    fn hypervisor_signatures_read_as_text() {
        // "KVMKVMKVM\0\0\0" and "TCGTCGTCGTCG", as EBX, ECX, EDX.
        let regs = |s: &[u8; 12]| {
            let w = |i: usize| u32::from_le_bytes(s[i..i + 4].try_into().unwrap());
            (w(0), w(4), w(8))
        };
        let (b, c, d) = regs(b"KVMKVMKVM\0\0\0");
        assert_eq!(hypervisor_signature(b, c, d), "KVMKVMKVM");
        let (b, c, d) = regs(b"TCGTCGTCGTCG");
        assert_eq!(hypervisor_signature(b, c, d), "TCGTCGTCGTCG");
        let tcg = HostVirt {
            kvm_usable: true,
            kvm_denied: false,
            hardware_virt: true,
            outer_hypervisor: Some("TCGTCGTCGTCG".into()),
        };
        assert!(tcg.inside_emulator());
        let cloud = HostVirt {
            outer_hypervisor: Some("KVMKVMKVM".into()),
            ..tcg
        };
        assert!(!cloud.inside_emulator());
    }

    #[test]
    fn cpuinfo_flags() {
        assert!(cpuinfo_has_hw_virt("flags\t\t: fpu vme svm lm\n"));
        assert!(!cpuinfo_has_hw_virt(
            "flags\t\t: fpu hypervisor topoext\nmodel name: svm\n"
        ));
    }
}
