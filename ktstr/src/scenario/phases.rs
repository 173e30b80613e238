//! Per-phase metrics (sidecar `phases`): what the workers did between two step boundaries.
//!
//! Phase 0 (BASELINE) runs from the scenario's start to the first step (the backdrop's
//! settle window); phase k is step k−1. At every boundary, and when a worker is spawned or
//! stopped, the runner samples each live worker's iteration counter (shared memory its
//! `Recorder` writes) and its `/proc/PID/schedstat` (CPU time, run-queue delay, slices);
//! a phase's metrics come from the differences between its first and last sample of each
//! worker. Workers report in full only when they stop, so without these samples a
//! scenario's steps could not be told apart.

use std::collections::BTreeMap;

/// One worker at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSample {
    /// The worker's PID.
    pub pid: i32,
    /// Its cgroup (empty: `SpawnHost` load outside the test cgroups, left out of phases).
    pub cgroup: String,
    /// Which workers its CPU share may be compared with (same cgroup, work type and
    /// affinity); `None` when it is compared with no one (affinity changed, residual-demand
    /// work types).
    pub peers: Option<String>,
    /// Iterations so far.
    pub iterations: u64,
    /// schedstat: CPU time so far, ns.
    pub cpu_ns: u64,
    /// schedstat: run-queue wait so far, ns.
    pub delay_ns: u64,
    /// schedstat: times scheduled in so far.
    pub slices: u64,
    /// When, in ms since the scenario started.
    pub at_ms: f64,
}

pub use crate::assert::PhaseStats;

/// Shorter phases are not measured: a share or a rate over a few ms is noise.
const MIN_WORKER_MS: f64 = 1.0;

/// Collects samples and closes phases.
#[derive(Debug, Default)]
pub struct PhaseRecorder {
    /// Each worker's sample at the start of the current phase (or at its spawn).
    first: BTreeMap<i32, WorkerSample>,
    /// Each worker's newest sample.
    last: BTreeMap<i32, WorkerSample>,
    /// Workers stopped in the current phase: counted in it, then forgotten.
    retired: Vec<i32>,
    /// When the current phase began, ms.
    began_ms: f64,
    /// Closed phases.
    pub phases: Vec<PhaseStats>,
}

impl PhaseRecorder {
    /// Takes new samples (a worker seen for the first time starts its phase here).
    pub fn observe(&mut self, samples: impl IntoIterator<Item = WorkerSample>) {
        for s in samples {
            self.first.entry(s.pid).or_insert_with(|| s.clone());
            self.last.insert(s.pid, s);
        }
    }

    /// Takes the final samples of workers about to stop: they count in the current phase and
    /// in no later one.
    pub fn retire(&mut self, samples: impl IntoIterator<Item = WorkerSample>) {
        let samples: Vec<WorkerSample> = samples.into_iter().collect();
        self.retired.extend(samples.iter().map(|s| s.pid));
        self.observe(samples);
    }

    /// Closes phase `step_index` at `now_ms` (after the caller's final `observe` of it); the
    /// next phase starts from each live worker's newest sample.
    pub fn close(&mut self, step_index: u16, now_ms: f64) {
        let deltas: Vec<Delta> = self
            .last
            .iter()
            .filter_map(|(pid, l)| Delta::between(self.first.get(pid)?, l))
            .collect();
        self.phases
            .push(phase_stats(step_index, self.began_ms, now_ms, &deltas));
        for pid in self.retired.drain(..) {
            self.last.remove(&pid);
        }
        self.first = self.last.clone();
        self.began_ms = now_ms;
    }
}

/// One worker's change over a phase.
#[derive(Debug, Clone, PartialEq)]
struct Delta {
    cgroup: String,
    peers: Option<String>,
    iterations: u64,
    cpu_ns: u64,
    delay_ns: u64,
    slices: u64,
    ms: f64,
}

impl Delta {
    fn between(a: &WorkerSample, b: &WorkerSample) -> Option<Delta> {
        if b.cgroup.is_empty() {
            return None; // competing load outside the test cgroups
        }
        Some(Delta {
            cgroup: b.cgroup.clone(),
            peers: b.peers.clone(),
            // A counter never goes backwards; saturate in case a sample failed (read 0).
            iterations: b.iterations.saturating_sub(a.iterations),
            cpu_ns: b.cpu_ns.saturating_sub(a.cpu_ns),
            delay_ns: b.delay_ns.saturating_sub(a.delay_ns),
            slices: b.slices.saturating_sub(a.slices),
            ms: b.at_ms - a.at_ms,
        })
    }

    fn share_pct(&self) -> f64 {
        (self.cpu_ns as f64 / 1e6 / self.ms * 100.0).min(100.0)
    }
}

fn phase_stats(step_index: u16, start_ms: f64, end_ms: f64, deltas: &[Delta]) -> PhaseStats {
    let ws: Vec<&Delta> = deltas.iter().filter(|d| d.ms >= MIN_WORKER_MS).collect();
    let phase_s = ((end_ms - start_ms) / 1e3).max(1e-3);
    let iterations: u64 = ws.iter().map(|d| d.iterations).sum();
    let shares: Vec<f64> = ws.iter().map(|d| d.share_pct()).collect();
    let mut peers: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for d in &ws {
        if let Some(p) = &d.peers {
            peers
                .entry((d.cgroup.as_str(), p.as_str()))
                .or_default()
                .push(d.share_pct());
        }
    }
    let spread = peers
        .values()
        .filter_map(|v| crate::stats::spread(v))
        .fold(0.0, f64::max);
    let (delay, slices) = ws
        .iter()
        .fold((0u64, 0u64), |(d, s), w| (d + w.delay_ns, s + w.slices));
    let per_slice_us = |delay: u64, slices: u64| {
        if slices == 0 {
            0.0
        } else {
            delay as f64 / slices as f64 / 1e3
        }
    };
    PhaseStats {
        step_index,
        label: PhaseStats::label_of(step_index),
        start_ms: start_ms.max(0.0) as u64,
        end_ms: end_ms.max(0.0) as u64,
        workers: ws.len(),
        iterations,
        iterations_per_s: iterations as f64 / phase_s,
        mean_cpu_share_pct: crate::stats::mean(&shares).unwrap_or(0.0),
        cpu_share_spread_pct: spread,
        mean_run_delay_us: per_slice_us(delay, slices),
        worst_worker_run_delay_us: ws
            .iter()
            .map(|w| per_slice_us(w.delay_ns, w.slices))
            .fold(0.0, f64::max),
    }
}

/// Reads one worker's sample now (`None` once it is gone).
pub fn sample(
    pid: i32,
    cgroup: &str,
    peers: Option<String>,
    iterations: u64,
    at_ms: f64,
) -> Option<WorkerSample> {
    let (cpu_ns, delay_ns, slices) =
        crate::workload::report::read_schedstat(&format!("/proc/{pid}/schedstat"))?;
    Some(WorkerSample {
        pid,
        cgroup: cgroup.to_string(),
        peers,
        iterations,
        cpu_ns,
        delay_ns,
        slices,
        at_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(
        pid: i32,
        cg: &str,
        it: u64,
        cpu_ms: u64,
        delay_us: u64,
        slices: u64,
        at: f64,
    ) -> WorkerSample {
        WorkerSample {
            pid,
            cgroup: cg.into(),
            peers: Some("SpinWait inherited".into()),
            iterations: it,
            cpu_ns: cpu_ms * 1_000_000,
            delay_ns: delay_us * 1000,
            slices,
            at_ms: at,
        }
    }

    #[test]
    fn a_phase_is_the_difference_between_its_first_and_last_samples() {
        let mut r = PhaseRecorder::default();
        // BASELINE: nobody runs.
        r.close(0, 100.0);
        // Step[0]: two workers spawned at 100 ms, one gets 3/4 of a CPU, the other 1/4.
        r.observe([s(1, "a", 0, 0, 0, 0, 100.0), s(2, "a", 0, 0, 0, 0, 100.0)]);
        r.observe([
            s(1, "a", 300, 750, 1000, 10, 1100.0),
            s(2, "a", 100, 250, 3000, 10, 1100.0),
        ]);
        r.close(1, 1100.0);
        // Step[1]: worker 2 stops half-way; worker 1 runs alone at full speed.
        r.retire([s(2, "a", 150, 300, 3000, 12, 1600.0)]);
        r.observe([s(1, "a", 700, 1750, 1000, 11, 2100.0)]);
        r.close(2, 2100.0);
        let p = &r.phases;
        assert_eq!(p.len(), 3);
        assert_eq!((p[0].label.as_str(), p[0].workers), ("BASELINE", 0));
        assert_eq!(
            (p[1].label.as_str(), p[1].start_ms, p[1].end_ms),
            ("Step[0]", 100, 1100)
        );
        assert_eq!(p[1].workers, 2);
        assert_eq!(p[1].iterations, 400);
        assert!((p[1].iterations_per_s - 400.0).abs() < 1e-9);
        assert!((p[1].mean_cpu_share_pct - 50.0).abs() < 1e-9);
        assert!((p[1].cpu_share_spread_pct - 50.0).abs() < 1e-9);
        // 4000 µs of waiting over 20 slices; the worst worker waited 300 µs a slice.
        assert!((p[1].mean_run_delay_us - 200.0).abs() < 1e-9);
        assert!((p[1].worst_worker_run_delay_us - 300.0).abs() < 1e-9);
        // Step[1] counts worker 2's last half second (50 iterations, 50 ms of CPU in 500 ms)
        // and worker 1's whole second.
        assert_eq!(p[2].label, "Step[1]");
        assert_eq!(p[2].workers, 2);
        assert_eq!(p[2].iterations, 450);
        assert!((p[2].mean_cpu_share_pct - (100.0 + 10.0) / 2.0).abs() < 1e-9);
        assert!((p[2].cpu_share_spread_pct - 90.0).abs() < 1e-9);
        // A retired worker is not carried into the next phase.
        r.observe([s(1, "a", 800, 1850, 1000, 12, 2200.0)]);
        r.close(3, 2200.0);
        assert_eq!(r.phases[3].workers, 1);
    }

    #[test]
    fn only_comparable_workers_make_the_spread() {
        let mut r = PhaseRecorder::default();
        let mut other = s(2, "a", 0, 0, 0, 0, 0.0);
        other.peers = Some("SpinWait cpus 1".into()); // pinned alike with no one
        let mut churn = s(3, "a", 0, 0, 0, 0, 0.0);
        churn.peers = None;
        let host = s(4, "", 0, 0, 0, 0, 0.0);
        r.observe([
            s(1, "a", 0, 0, 0, 0, 0.0),
            other.clone(),
            churn.clone(),
            host.clone(),
        ]);
        let at = |mut w: WorkerSample, cpu_ms: u64| {
            w.cpu_ns = cpu_ms * 1_000_000;
            w.at_ms = 1000.0;
            w
        };
        r.observe([
            at(s(1, "a", 0, 0, 0, 0, 0.0), 900),
            at(other, 100),
            at(churn, 0),
            at(host, 1000),
        ]);
        r.close(0, 1000.0);
        let p = &r.phases[0];
        // Competing load outside the test cgroups is not a worker of the phase.
        assert_eq!(p.workers, 3);
        assert_eq!(p.cpu_share_spread_pct, 0.0, "{p:?}");
        assert!((p.mean_cpu_share_pct - 1000.0 / 3.0 / 10.0).abs() < 1e-9);
    }

    #[test]
    fn labels_follow_the_bucket_numbering() {
        assert_eq!(PhaseStats::label_of(0), "BASELINE");
        assert_eq!(PhaseStats::label_of(1), "Step[0]");
        assert_eq!(PhaseStats::label_of(12), "Step[11]");
    }

    #[test]
    fn this_process_can_be_sampled() {
        let me = std::process::id() as i32;
        match sample(me, "a", None, 7, 1.0) {
            Some(w) => assert_eq!((w.pid, w.iterations), (me, 7)),
            // Kernels without CONFIG_SCHED_INFO have no schedstat file.
            None => assert!(!std::path::Path::new("/proc/self/schedstat").exists()),
        }
        assert_eq!(sample(-1, "a", None, 0, 0.0), None);
    }
}
