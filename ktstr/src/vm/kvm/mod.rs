//! The in-process KVM VMM: boots a Linux kernel (ELF vmlinux or bzImage) plus an initramfs on
//! `/dev/kvm` with an exact CPU topology. See doc/ and ../shared/spec/vmm.md for the facts it
//! encodes.
//!
//! [`run`] is the backend entry point; `probe::run_probe` (cargo feature `probe`) boots a tiny
//! probe guest through the same machinery to show what a guest sees (e820, ACPI tables, APIC
//! IDs, CPUID) on any KVM, including software hypervisors that cannot run Linux.
//!
//! Code map: [`layout`] (GPAs, per-node RAM, SHM, e820, initrd placement), [`boot`] (kernel
//! formats, boot_params, command line, page tables, GDT, BSP registers), [`machine`] (the linear
//! setup recipe and the run monitor), [`vcpu`] (threads, kicks, teardown), [`devices`] (COM1,
//! exit port, i8042, MMIO), [`ioapic`] (the userspace IOAPIC of x2APIC shapes), [`stats`] (KVM's binary statistics), `perf` (performance mode: pinned RT vCPUs, hugepages, exits), [`acpi`] and
//! [`cpuid`] (topology tables), [`probe`] (the probe guest).
//!
//! Interrupt controllers: shapes whose APIC IDs fit xAPIC (up to 0xFE) use KVM's in-kernel
//! irqchip and PIT; larger (x2APIC) shapes use a split irqchip with 32-bit x2APIC IDs, a
//! userspace IOAPIC and KVM's extended destination ID feature ([`machine::IrqChip`]).

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod devices;
pub mod ioapic;
pub mod layout;
pub mod machine;
mod perf;
#[cfg(feature = "probe")]
pub mod probe;
mod run;
pub mod stats;
pub mod vcpu;
pub mod virtio_blk;

pub use run::run;

use std::path::PathBuf;

/// Why the KVM backend could not run a VM. Each variant names the step that failed; how a VM
/// that did run ended is a [`crate::vm::VmEnd`], not an error.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {source}; is KVM available and accessible to this user? (or use --backend qemu)")]
    OpenKvm {
        /// The OS error.
        source: kvm_ioctls::Error,
    },
    /// `/dev/kvm` exists but this user may not open it.
    #[error("{}", super::backend::KVM_DENIED_REMEDY)]
    KvmDenied,
    /// KVM's API version is not 12.
    #[error("KVM API version {0} is not supported (expected 12); use --backend qemu")]
    KvmApiVersion(i32),
    /// A capability the VMM needs is missing.
    #[error("KVM lacks {0}; use --backend qemu")]
    MissingCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("{ioctl} failed: {source}")]
    Ioctl {
        /// The ioctl's name.
        ioctl: &'static str,
        /// The OS error.
        source: kvm_ioctls::Error,
    },
    /// The kernel image is missing, unreadable or not bootable.
    #[error(transparent)]
    Kernel(#[from] boot::KernelError),
    /// The disk's backing file could not be opened.
    #[error("cannot open the disk file {path}: {source}")]
    Disk {
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The initramfs could not be read.
    #[error("cannot read initramfs {path}: {source}")]
    Initramfs {
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Memory too small, SHM misfit, or initramfs too large.
    #[error(transparent)]
    Layout(#[from] layout::LayoutError),
    /// The kernel command line is too long.
    #[error(transparent)]
    Cmdline(#[from] boot::CmdlineError),
    /// The ACPI tables could not be built.
    #[error("building ACPI tables: {0}")]
    Acpi(#[from] acpi::AcpiError),
    /// A vCPU's CPUID table could not be built.
    #[error("building the CPUID table of cpu {cpu}: {source}")]
    Cpuid {
        /// Canonical CPU index.
        cpu: u32,
        /// Why.
        source: cpuid::CpuidError,
    },
    /// Guest memory could not be mapped or written.
    #[error("{what}: {detail}")]
    GuestMemory {
        /// The step.
        what: &'static str,
        /// The error.
        detail: String,
    },
    /// A host resource (thread, eventfd) could not be created.
    #[error("{what}: {source}")]
    Host {
        /// The step.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The probe guest did not deliver its report.
    #[error("probe guest failed: {0}")]
    Probe(String),
}
