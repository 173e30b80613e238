//! Initramfs construction: cpio newc archives with ELF dependency closures, include files and
//! busybox, cached across VMs.
