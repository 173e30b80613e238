//! The one way a Linux VM is prepared, whoever asks: a test case, `shell`, `probe --backend
//! qemu`, `bench` and `verifier`. Four steps in a fixed order: pick the backend, resolve the
//! kernel, build the initramfs, size guest memory. The caller then adjusts what only it
//! knows (watchdog, console, monitor) on [`Launch::spec`] and runs it with [`super::run`].

use std::path::PathBuf;

use super::backend::{select_backend, BackendChoice, BackendKind, BackendSelectError, HostVirt};
use super::VmSpec;
use crate::initramfs::{self, Built, InitramfsError, InitramfsSpec};
use crate::kernel::{Kernel, KernelError};
use crate::Topology;

/// The backend a VM will run on, why, and how fast it runs the guest.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendPick {
    /// The backend.
    pub kind: BackendKind,
    /// Why it was picked (for a note on stderr).
    pub reason: String,
    /// KVM without hardware virtualization: `/dev/kvm` emulates the guest kernel, and Linux
    /// rarely boots under it.
    pub emulated_kvm: bool,
    /// How much slower than hardware KVM the guest runs (see [`time_scale`]).
    pub time_scale: f64,
}

impl BackendPick {
    /// The one-line note every launcher prints: `backend qemu (auto: ...)`.
    pub fn note(&self) -> String {
        format!("backend {} ({})", self.kind, self.reason)
    }

    /// A warning to print as well, when the pick is unlikely to boot Linux.
    pub fn warning(&self) -> Option<String> {
        self.emulated_kvm.then(|| {
            "this host's /dev/kvm has no hardware virtualization (no vmx/svm): it emulates the \
             guest kernel, and Linux guests rarely boot under it"
                .to_string()
        })
    }
}

/// How much slower than hardware KVM a backend runs the guest: guest-side timeouts and the
/// host watchdog scale with it, so a slow emulator does not turn a healthy scheduler into a
/// false alarm. TCG is taken as 4× (measured: a 16-vCPU boot takes ~5 s under TCG on a 2-core
/// host, against well under 1 s on hardware KVM), and so is KVM on a host that is itself a
/// TCG guest (the nested KVM lane, slower still than plain TCG).
pub fn time_scale(backend: BackendKind, host: &HostVirt) -> f64 {
    match backend {
        BackendKind::Kvm if host.inside_emulator() => 4.0,
        BackendKind::Kvm => 1.0,
        BackendKind::Qemu if super::qemu::Accel::from_env() == super::qemu::Accel::Kvm => 1.0,
        BackendKind::Qemu => 4.0,
    }
}

/// Picks the backend: `choice` when given (a `--backend` flag), else `KTSTR_BACKEND`, else
/// `auto` (hardware KVM when usable, qemu otherwise).
pub fn choose_backend(choice: Option<BackendChoice>) -> Result<BackendPick, BackendSelectError> {
    let choice = match choice {
        Some(c) => c,
        None => BackendChoice::from_env()?,
    };
    let host = HostVirt::probe();
    let (kind, mut reason) = select_backend(choice, &host);
    if kind == BackendKind::Kvm && host.inside_emulator() {
        reason.push_str("; this host is itself a qemu TCG guest, so time limits are scaled 4x");
    }
    Ok(BackendPick {
        kind,
        reason,
        emulated_kvm: kind == BackendKind::Kvm && !host.hardware_virt,
        time_scale: time_scale(kind, &host),
    })
}

/// Guest memory in MiB: 64 MiB per vCPU, at least 256 MiB and `at_least_mib` (a test's ask),
/// and room to unpack the initramfs (the archive and its unpacked copy coexist during boot)
/// plus 320 MiB for the kernel and the workload; rounded up to whole 128 MiB per NUMA node so
/// every node gets the same share.
pub fn memory_mib(topology: &Topology, initramfs_bytes: u64, at_least_mib: u64) -> u64 {
    let nodes = topology.numa_nodes.max(1) as u64;
    (topology.num_cpus() as u64 * 64)
        .max(256)
        .max(at_least_mib)
        .max(2 * (initramfs_bytes >> 20) + 320)
        .div_ceil(128 * nodes)
        * 128
        * nodes
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct LaunchRequest<'a> {
    /// A kernel selector (`--kernel`, a test's `kernel =`), or `None` for `KTSTR_KERNEL` or
    /// the newest cached kernel.
    pub kernel: Option<&'a str>,
    /// The backend, already picked (its time scale often shapes the initramfs contents).
    pub backend: BackendKind,
    /// The guest's CPU topology.
    pub topology: Topology,
    /// What goes into the initramfs.
    pub initramfs: InitramfsSpec,
    /// Guest memory: `Some` is used as given (a `--memory-mib` flag); `None` sizes it with
    /// [`memory_mib`] from `min_memory_mib`.
    pub memory_mib: Option<u64>,
    /// The least memory the guest needs (a test's `memory_mib`); 0 for no ask.
    pub min_memory_mib: u64,
}

/// A prepared VM: its spec, and what the spec refers to.
pub struct Launch {
    /// Ready to run; callers set the watchdog, console, monitor and so on.
    pub spec: VmSpec,
    /// The kernel it boots.
    pub kernel: Kernel,
    /// The initramfs. Owns the per-VM archive `spec.initramfs` names, which is deleted when
    /// this drops: keep the `Launch` (or this field) alive until the VM is done.
    pub initramfs: Built,
}

/// Why a VM could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// No kernel, or a kernel selector that names nothing usable.
    #[error("resolving the kernel: {0}")]
    Kernel(#[from] KernelError),
    /// The initramfs could not be built (a missing input, a full disk, ...).
    #[error("building the initramfs: {0}")]
    Initramfs(#[from] InitramfsError),
}

/// Resolves the kernel, builds the initramfs (cached under [`crate::cache::initramfs_dir`])
/// and sizes memory.
pub fn prepare(req: LaunchRequest<'_>) -> Result<Launch, LaunchError> {
    let kernel = crate::kernel::resolve(req.kernel)?;
    let built = initramfs::build(&req.initramfs, &crate::cache::initramfs_dir())?;
    let memory = req
        .memory_mib
        .unwrap_or_else(|| memory_mib(&req.topology, built.uncompressed_bytes, req.min_memory_mib));
    let image: PathBuf = kernel.boot_image(req.backend == BackendKind::Kvm);
    let mut spec = VmSpec::new(image, built.path.clone(), req.topology);
    spec.memory_mib = memory;
    Ok(Launch {
        spec,
        kernel,
        initramfs: built,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `N,L,C,T`: nodes, LLCs (in total), cores per LLC, threads per core.
    fn topo(s: &str) -> Topology {
        Topology::parse(s).unwrap()
    }

    #[test]
    fn memory_covers_cpus_the_ask_and_the_initramfs_in_whole_node_shares() {
        // Small VM, small archive: the 384 MiB floor of archive room (2×32 + 320 = 384).
        assert_eq!(memory_mib(&topo("1,1,2,1"), 32 << 20, 0), 384);
        // 16 CPUs: 64 MiB each.
        assert_eq!(memory_mib(&topo("1,2,4,2"), 0, 0), 1024);
        // The test's ask wins when larger, rounded up to 128 MiB.
        assert_eq!(memory_mib(&topo("1,1,2,1"), 0, 1000), 1024);
        // A big archive: twice its size plus 320.
        assert_eq!(memory_mib(&topo("1,1,2,1"), 400 << 20, 0), 1152);
        // Two nodes: a multiple of 256 so each node gets whole 128 MiB.
        let m = memory_mib(&topo("2,2,1,1"), 0, 300);
        assert_eq!(m % 256, 0);
        assert!(m >= 384, "{m}");
    }

    #[test]
    fn a_fixed_backend_is_taken_as_asked_with_its_scale() {
        let p = choose_backend(Some(BackendChoice::Fixed(BackendKind::Qemu))).unwrap();
        assert_eq!(p.kind, BackendKind::Qemu);
        assert_eq!(p.reason, "qemu requested");
        assert!(!p.emulated_kvm && p.warning().is_none());
        assert_eq!(p.note(), "backend qemu (qemu requested)");
        assert_eq!(p.time_scale, 4.0);
        let k = choose_backend(Some(BackendChoice::Fixed(BackendKind::Kvm))).unwrap();
        let host = HostVirt::probe();
        assert_eq!(k.time_scale, time_scale(BackendKind::Kvm, &host));
        assert_eq!(k.emulated_kvm, !host.hardware_virt);
        assert_eq!(k.warning().is_some(), k.emulated_kvm);
    }
}
