//! The case description the host packs into the initramfs for the guest.

use serde::{Deserialize, Serialize};

/// Where the case description lives in the guest.
pub const CASE_FILE: &str = "/ktstr/case.json";

/// What the guest needs to know about its case beyond what the registry says.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CaseFile {
    /// The case name without any kernel segment (the guest resolves it in its registry).
    pub name: String,
    /// The scheduler binary's path in the guest, if the case runs a sched_ext scheduler.
    pub scheduler: Option<String>,
    /// Its arguments.
    pub sched_argv: Vec<String>,
    /// sysctls written before the scheduler starts (`kernel.x` = `1`).
    pub sysctls: Vec<(String, String)>,
    /// How much slower than hardware KVM the backend runs (1.0 on KVM, more under TCG):
    /// timeouts in the guest scale with it.
    pub time_scale: f64,
    /// The test's duration in seconds, when overridden (an exported `.run --duration`).
    #[serde(default)]
    pub duration_s: Option<u32>,
    /// The sched_ext watchdog timeout in seconds, when overridden (`--watchdog-timeout`).
    #[serde(default)]
    pub watchdog_timeout_s: Option<u32>,
}
