//! What one phase of a scenario measured (sidecar `phases`); `scenario::phases` records it.

use serde::{Deserialize, Serialize};

/// What one phase measured (an entry of sidecar `phases`).
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PhaseStats {
    /// 0 = BASELINE (before the first step), k = step k−1.
    pub step_index: u16,
    /// `BASELINE` or `Step[k]`.
    pub label: String,
    /// Since the scenario started, ms.
    pub start_ms: u64,
    /// Since the scenario started, ms.
    pub end_ms: u64,
    /// Workers seen running in this phase (for at least 1 ms).
    pub workers: usize,
    /// Iterations of all of them in this phase.
    pub iterations: u64,
    /// `iterations` per second of the phase.
    pub iterations_per_s: f64,
    /// Mean over workers of their CPU time over their time in the phase, %.
    pub mean_cpu_share_pct: f64,
    /// Largest gap between two comparable workers' CPU shares, %.
    pub cpu_share_spread_pct: f64,
    /// All run-queue wait over all slices, µs.
    pub mean_run_delay_us: f64,
    /// The largest per-worker mean run-queue wait per slice, µs.
    pub worst_worker_run_delay_us: f64,
}

impl PhaseStats {
    /// The bucket label for `step_index` (cli.md §3.7).
    pub fn label_of(step_index: u16) -> String {
        match step_index {
            0 => "BASELINE".into(),
            k => format!("Step[{}]", k - 1),
        }
    }
}
