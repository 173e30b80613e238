//! ktstr: test Linux process schedulers (sched_ext BPF schedulers, and EEVDF as the baseline)
//! inside virtual machines that show the guest an exact CPU topology.
//!
//! See ARCHITECTURE.md at the repository root for the run path of one test case and a code map.

pub mod cache;
pub mod cgroup;
pub mod guest;
pub mod initramfs;
pub mod kernel;
pub mod shm;
pub mod stats;
pub mod topology;
pub mod vm;
pub mod vmm;
pub mod workload;

pub use topology::Topology;
