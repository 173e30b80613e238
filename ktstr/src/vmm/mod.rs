//! The in-process KVM VMM: boots a Linux kernel (ELF vmlinux or bzImage) plus an initramfs on
//! `/dev/kvm` with an exact CPU topology. See doc/ and ../shared/spec/vmm.md for the facts it
//! encodes.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
