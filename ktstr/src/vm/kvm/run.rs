//! [`run`]: boot a Linux kernel + initramfs described by a [`VmSpec`].

use std::fs::File;
use std::io::Read;

use vm_memory::GuestMemoryMmap;

use super::boot::{self, BootParamsInput};
use super::layout::{MemoryLayout, BOOT_PARAMS_GPA, CMDLINE_GPA};
use super::machine::{run_machine, write_guest, MachineSpec};
use super::VmmError;
use crate::vm::session::Session;
use crate::vm::{VmOutcome, VmSpec};

/// Boots `spec.kernel` (ELF vmlinux entered at `startup_64`, or a bzImage at its 64-bit entry)
/// with `spec.initramfs` on `/dev/kvm` and runs it to its end.
///
/// Everything that can be checked without KVM (kernel format, initramfs, memory layout,
/// command line) is checked first, so a bad input fails before any VM or vCPU exists.
pub fn run(mut spec: VmSpec) -> Result<VmOutcome, VmmError> {
    // The disk first: a file that cannot be opened fails before anything is built.
    let disk = match &spec.disk {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|source| VmmError::Disk {
                    path: path.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    if disk.is_some() {
        spec.cmdline_extra.push(super::virtio_blk::cmdline_word());
    }
    let kind = boot::probe_kernel_file(&spec.kernel)?;
    let initramfs_len = std::fs::metadata(&spec.initramfs)
        .map_err(|source| VmmError::Initramfs {
            path: spec.initramfs.clone(),
            source,
        })?
        .len();
    let layout = MemoryLayout::new(spec.memory_mib, spec.topology.numa_nodes, spec.shm_size)?;
    let cmdline = boot::kernel_cmdline(kind, layout.shm, &spec.cmdline_extra)?;
    let kernel = spec.kernel.clone();
    let initramfs = spec.initramfs.clone();
    let load = move |mem: &GuestMemoryMmap, layout: &MemoryLayout, rsdp: u64| {
        let k = boot::load_kernel(mem, &kernel)?;
        debug_assert_eq!(k.kind, kind);
        let rd = layout.place_initrd(initramfs_len, k.end)?;
        let rd_err = |source| VmmError::Initramfs {
            path: initramfs.clone(),
            source,
        };
        let mut bytes = Vec::with_capacity(rd.len as usize);
        File::open(&initramfs)
            .and_then(|f| f.take(rd.len).read_to_end(&mut bytes))
            .map_err(rd_err)?;
        if bytes.len() as u64 != rd.len {
            return Err(rd_err(std::io::Error::other(
                "the file shrank while being read",
            )));
        }
        write_guest(mem, rd.base, &bytes, "writing the initramfs")?;
        let mut c = cmdline.into_bytes();
        c.push(0);
        write_guest(mem, CMDLINE_GPA, &c, "writing the command line")?;
        let bp = boot::boot_params(&BootParamsInput {
            setup_header: k.setup_header,
            initrd: Some(rd),
            rsdp,
            e820: &layout.e820,
        });
        write_guest(mem, BOOT_PARAMS_GPA, &bp, "writing boot_params")?;
        Ok(k.entry)
    };
    let pinning = spec.pinning.clone();
    run_machine(MachineSpec {
        topology: spec.topology,
        layout,
        session: Session::new(&mut spec),
        load: Box::new(load),
        disk,
        pinning,
    })
}
