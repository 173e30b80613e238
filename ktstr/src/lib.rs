//! ktstr: test Linux process schedulers (sched_ext BPF schedulers, and EEVDF as the baseline)
//! inside virtual machines that show the guest an exact CPU topology.
//!
//! See ARCHITECTURE.md at the repository root for the run path of one test case and a code map.

pub mod assert;
pub mod atomic_file;
pub mod bpf_maps;
pub mod bpf_progs;
pub mod cache;
pub mod cgroup;
pub mod compare;
pub mod coverage;
pub mod expect;
pub mod fun;
pub mod fuzz_props;
pub mod guest;
pub mod host_context;
pub mod host_cpus;
pub mod initramfs;
pub mod interrupt;
pub mod kernel;
pub mod locks;
pub mod memfd;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod parity;
pub mod payload;
pub mod placement;
pub mod prelude;
pub mod protocol;
pub mod registry;
pub mod revspec;
pub mod runner;
pub mod runs;
pub mod scenario;
pub use scenario::canned as scenarios;
pub mod shm;
pub mod sidecar;
pub mod stats;
pub mod topology;
pub mod unrunnable;
pub mod vm;
pub mod workload;

#[cfg(test)]
mod env_doc;

pub use topology::Topology;

pub use ktstr_macros::{declare_scheduler, ktstr_test};

/// Paths the ktstr macros expand to. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use anyhow;
    pub use linkme;

    pub use crate::registry::{KTSTR_SCHEDULERS, KTSTR_TESTS};
}
