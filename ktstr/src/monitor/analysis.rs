//! From samples to a [`MonitorSummary`] and to findings against the `Assert` thresholds.
//!
//! "Sustained" means over `sustained_samples` consecutive samples: a value is sustained at
//! `v` when it stayed at `v` or above for that long (the best window's minimum). A runqueue
//! clock stall is a CPU with runnable tasks whose `rq->clock` did not move for that many
//! sample intervals; an interval in which the vCPU's host thread spent half or more of its time
//! waiting for a host CPU proves nothing and is skipped, as are samples taken before the guest
//! kernel set its runqueues up (all clocks equal, or an absurd queue depth).

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::sampler::CpuSample;
use super::sampler::{Recording, Sample, ScxExit};
use crate::assert::{AssertDetail, DetailKind};

/// A local DSQ deeper than this is not a real queue: the runqueues are not set up yet.
const UNINITIALIZED_DEPTH: u32 = 10_000;

/// Why the fallback and keep-last thresholds cannot be evaluated on the kernels we run.
pub const NO_EVENT_COUNTERS: &str =
    "needs sched_ext event counters (Linux 6.16 and later); not evaluated";

/// One CPU whose runqueue clock stood still while it had runnable tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stall {
    /// The CPU.
    pub cpu: u32,
    /// Host time the clock stood still, over the sampled intervals.
    pub duration_ms: u64,
    /// Sample intervals it stood still for.
    pub samples: u64,
    /// When it was first seen standing, in ms since the monitor started.
    pub from_ms: u64,
    /// Runnable tasks on the CPU at the end of the stall.
    pub nr_running: u32,
}

/// The monitor's findings over a whole run (the sidecar's `monitor`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MonitorSummary {
    /// Samples taken (readable ones only).
    pub total_samples: u64,
    /// The sampling period.
    pub period_ms: u64,
    /// The persistence the sustained values and stalls were judged over.
    pub sustained_samples: u64,
    /// Largest max/min ratio of the CPUs' loads ([`CpuSample::load`]), sustained.
    pub max_imbalance_ratio: Option<f64>,
    /// Largest ratio in any one sample.
    pub peak_imbalance_ratio: Option<f64>,
    /// Mean ratio over the samples.
    pub avg_imbalance_ratio: Option<f64>,
    /// Mean `nr_running` per CPU.
    pub avg_nr_running: Option<f64>,
    /// Deepest local DSQ of any CPU, sustained (sched_ext only).
    pub max_local_dsq_depth: Option<u64>,
    /// Deepest local DSQ in any one sample.
    pub peak_local_dsq_depth: Option<u64>,
    /// Mean local DSQ depth per CPU.
    pub avg_local_dsq_depth: Option<f64>,
    /// Whether any CPU stalled (see [`Stall`]).
    pub stall_detected: bool,
    /// How many CPUs stalled.
    pub stall_count: u64,
    /// The longest stall of each CPU that stalled.
    pub stalls: Vec<Stall>,
    /// CPU-intervals skipped because the vCPU's host thread was kept off the host CPUs half
    /// the interval or more, or because the whole guest stood still (its jiffies did not
    /// advance).
    pub preempted_intervals: u64,
    /// CPU-intervals judged in all (samples less one, times CPUs): the base of
    /// `preempted_intervals`.
    #[serde(default)]
    pub cpu_intervals: u64,
    /// Samples taken before the guest's runqueues were set up or before its init started
    /// (the kernel's boot is not judged).
    pub uninitialized_samples: u64,
    /// sched_ext's state in the last sample (`SCX_OPS_ENABLED`, ...).
    pub scx_state: Option<String>,
    /// sched_ext's exit record, when the scheduler exited.
    pub scx_exit: Option<ScxExit>,
    /// sched_ext fallback dispatches (event counters; null on kernels without them).
    pub total_fallback: Option<u64>,
    /// sched_ext keep-last dispatches (event counters; null on kernels without them).
    pub total_keep_last: Option<u64>,
    /// Host CPU time the monitor's thread used, in ms, and as a share of one host CPU over
    /// the run (what the monitor costs; the guest's vCPUs compete with it for host CPUs).
    pub monitor_cpu_ms: Option<f64>,
    /// `monitor_cpu_ms` over the run's length, in percent of one host CPU.
    pub monitor_cpu_pct: Option<f64>,
    /// Why some fields are null.
    pub notes: Vec<String>,
    /// Why nothing was sampled, when nothing was.
    pub unavailable: Option<String>,
    /// What became of the test's `bpf_map_write` (null: the test has none).
    #[serde(default)]
    pub map_write: Option<super::bpf_write::MapWriteOutcome>,
}

impl MonitorSummary {
    /// The share of CPU-intervals lost to the host, when it is large enough to say so (a
    /// tenth or more): an overcommitted or nested host, whose scheduling the guest's own
    /// timings then contain.
    pub fn host_contention(&self) -> Option<f64> {
        let share = self.preempted_intervals as f64 / self.cpu_intervals.max(1) as f64;
        (self.cpu_intervals > 0 && share >= 0.1).then_some(share)
    }

    /// A few lines for a failure report's `--- monitor ---` section.
    pub fn describe(&self) -> String {
        if let Some(u) = &self.unavailable {
            return u.clone();
        }
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let i = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        let mut out = vec![
            format!(
                "{} samples every {} ms (sustained = {} samples); {} before init started (boot is not judged), {} CPU-intervals skipped as host-preempted; the monitor used {} ms of host CPU ({}% of one CPU)",
                self.total_samples,
                self.period_ms,
                self.sustained_samples,
                self.uninitialized_samples,
                self.preempted_intervals,
                f(self.monitor_cpu_ms),
                f(self.monitor_cpu_pct),
            ),
            format!(
                "imbalance (max/min tasks per CPU): sustained {}, peak {}, mean {}; mean nr_running {}",
                f(self.max_imbalance_ratio),
                f(self.peak_imbalance_ratio),
                f(self.avg_imbalance_ratio),
                f(self.avg_nr_running)
            ),
            format!(
                "local DSQ depth: sustained {}, peak {}, mean {}",
                i(self.max_local_dsq_depth),
                i(self.peak_local_dsq_depth),
                f(self.avg_local_dsq_depth)
            ),
        ];
        if let Some(share) = self.host_contention() {
            out.push(format!(
                "host contention: in {:.0}% of CPU-intervals a vCPU waited for a host CPU half the time or more, or the guest was stopped as a whole; latencies and gaps measured in the guest include that time, which is the host's, not the scheduler's",
                share * 100.0
            ));
        }
        for st in &self.stalls {
            out.push(format!(
                "stall: CPU {} clock still for {} ms ({} samples) from {} ms, {} runnable",
                st.cpu, st.duration_ms, st.samples, st.from_ms, st.nr_running
            ));
        }
        if let Some(state) = &self.scx_state {
            out.push(format!("sched_ext state at the end: {state}"));
        }
        if let Some(x) = &self.scx_exit {
            out.push(format!(
                "sched_ext exit: {} (reason {:?}, msg {:?})",
                x.kind, x.reason, x.msg
            ));
        }
        if let Some(w) = &self.map_write {
            out.push(match (&w.map, w.map_id, w.at_ms, &w.error) {
                (Some(m), Some(id), Some(at), _) => format!(
                    "bpf_map_write: wrote {} at offset {} of map {m} (id {id}) at {at} ms",
                    w.value, w.offset
                ),
                (_, _, _, e) => format!(
                    "bpf_map_write: not applied: {}",
                    e.as_deref().unwrap_or("no reason recorded")
                ),
            });
        }
        out.join("\n")
    }
}

fn initialized(s: &Sample) -> bool {
    let first = s.cpus.first().map(|c| c.clock);
    let all_same = s.cpus.iter().all(|c| Some(c.clock) == first);
    !s.cpus.is_empty()
        && !(all_same && (s.cpus.len() > 1 || first == Some(0)))
        && s.cpus
            .iter()
            .all(|c| c.local_dsq.unwrap_or(0) <= UNINITIALIZED_DEPTH)
}

fn imbalance(s: &Sample) -> f64 {
    // CPUs not brought up yet have a zero clock.
    let up = s.cpus.iter().filter(|c| c.clock != 0).map(|c| c.load());
    let (mut lo, mut hi) = (u32::MAX, 0);
    for n in up {
        lo = lo.min(n);
        hi = hi.max(n);
    }
    if hi == 0 {
        return 1.0;
    }
    hi as f64 / lo.max(1) as f64
}

/// The largest value `v` such that `series` stayed ≥ `v` for `n` consecutive entries.
fn sustained<T: Copy + PartialOrd>(series: &[T], n: usize) -> Option<T> {
    let n = n.max(1);
    series
        .windows(n)
        .map(|w| {
            w.iter()
                .copied()
                .fold(w[0], |m, x| if x < m { x } else { m })
        })
        .fold(None, |best: Option<T>, m| match best {
            Some(b) if b >= m => Some(b),
            _ => Some(m),
        })
}

fn mean(xs: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = xs.fold((0.0, 0u64), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Summarizes `rec`, judging persistence over `sustained_samples`; `state_name` names a
/// sched_ext state value.
pub fn summarize(
    rec: &Recording,
    sustained_samples: u64,
    state_name: impl Fn(u32) -> String,
) -> MonitorSummary {
    let n = sustained_samples.max(1) as usize;
    let mut out = MonitorSummary {
        total_samples: rec.samples.len() as u64,
        period_ms: rec.period_ms,
        sustained_samples: n as u64,
        scx_exit: rec.scx_exit.clone(),
        unavailable: rec.unavailable.clone(),
        map_write: rec.map_write.clone(),
        monitor_cpu_ms: rec.cpu_us.map(|us| us as f64 / 1000.0),
        monitor_cpu_pct: rec
            .cpu_us
            .filter(|_| rec.ran_ms > 0)
            .map(|us| us as f64 / 10.0 / rec.ran_ms as f64),
        notes: vec![format!(
            "total_fallback, total_keep_last: {NO_EVENT_COUNTERS}"
        )],
        ..Default::default()
    };
    let from = rec.judged_from_ms.unwrap_or(0);
    let valid: Vec<&Sample> = rec
        .samples
        .iter()
        .filter(|s| s.at_ms >= from && initialized(s))
        .collect();
    out.uninitialized_samples = (rec.samples.len() - valid.len()) as u64;
    out.scx_state = rec.samples.last().and_then(|s| s.scx_state).map(state_name);
    if valid.is_empty() {
        return out;
    }
    let ratios: Vec<f64> = valid.iter().map(|s| imbalance(s)).collect();
    out.max_imbalance_ratio = sustained(&ratios, n);
    out.peak_imbalance_ratio = ratios.iter().copied().reduce(f64::max);
    out.avg_imbalance_ratio = mean(ratios.iter().copied());
    out.avg_nr_running = mean(
        valid
            .iter()
            .flat_map(|s| s.cpus.iter().map(|c| c.nr_running as f64)),
    );
    let cpus = valid[0].cpus.len();
    if valid[0].cpus.iter().any(|c| c.local_dsq.is_some()) {
        let depth = |cpu: usize| -> Vec<u64> {
            valid
                .iter()
                .map(|s| s.cpus.get(cpu).and_then(|c| c.local_dsq).unwrap_or(0) as u64)
                .collect()
        };
        out.max_local_dsq_depth = (0..cpus).filter_map(|c| sustained(&depth(c), n)).max();
        out.peak_local_dsq_depth = (0..cpus).flat_map(depth).max();
        out.avg_local_dsq_depth = mean(
            valid
                .iter()
                .flat_map(|s| s.cpus.iter().map(|c| c.local_dsq.unwrap_or(0) as f64)),
        );
    }
    let (stalls, preempted) = stalls(&valid, n as u64);
    out.preempted_intervals = preempted;
    out.cpu_intervals = (valid.len().saturating_sub(1) * valid[0].cpus.len()) as u64;
    out.stall_count = stalls.len() as u64;
    out.stall_detected = !stalls.is_empty();
    out.stalls = stalls;
    out
}

/// Per CPU, the longest run of ≥ `n` intervals with runnable tasks and a clock standing still.
fn stalls(valid: &[&Sample], n: u64) -> (Vec<Stall>, u64) {
    let cpus = valid[0].cpus.len();
    let mut found = Vec::new();
    let mut preempted = 0;
    for cpu in 0..cpus {
        let mut run: Option<Stall> = None;
        let mut best: Option<Stall> = None;
        for w in valid.windows(2) {
            let (a, b) = (w[0], w[1]);
            let (Some(x), Some(y)) = (a.cpus.get(cpu), b.cpus.get(cpu)) else {
                continue;
            };
            let dt = b.at_ms.saturating_sub(a.at_ms);
            let waited = match (x.host_wait_ns, y.host_wait_ns) {
                (Some(p), Some(q)) => Some(q.saturating_sub(p) / 1_000_000),
                _ => None,
            };
            // A guest whose jiffies stood still did not run at all: its host stopped it as a
            // whole (a nested hypervisor descheduled, a host under load), which is no
            // scheduler's doing. A real stall of some CPUs leaves the others ticking, and
            // even a guest whose CPUs are all idle takes timer interrupts, which move jiffies.
            // Without jiffies or host data, every clock standing still says the same.
            let frozen = match (a.jiffies, b.jiffies) {
                (Some(p), Some(q)) => p == q,
                _ => {
                    waited.is_none() && a.cpus.iter().zip(&b.cpus).all(|(p, q)| p.clock == q.clock)
                }
            };
            if waited.is_some_and(|w| 2 * w >= dt) || frozen {
                preempted += 1;
                continue;
            }
            let standing = x.nr_running > 0 && y.nr_running > 0 && x.clock == y.clock;
            if standing {
                let r = run.get_or_insert(Stall {
                    cpu: cpu as u32,
                    duration_ms: 0,
                    samples: 0,
                    from_ms: a.at_ms,
                    nr_running: 0,
                });
                r.duration_ms += dt;
                r.samples += 1;
                r.nr_running = y.nr_running;
            } else if let Some(r) = run.take() {
                keep_longest(&mut best, r);
            }
        }
        if let Some(r) = run.take() {
            keep_longest(&mut best, r);
        }
        found.extend(best.filter(|s| s.samples >= n));
    }
    (found, preempted)
}

fn keep_longest(best: &mut Option<Stall>, s: Stall) {
    if best.as_ref().is_none_or(|b| s.duration_ms > b.duration_ms) {
        *best = Some(s);
    }
}

/// The `Assert` thresholds the monitor can judge, as the case merged them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MonitorLimits {
    /// `max_imbalance_ratio`.
    pub max_imbalance_ratio: Option<f64>,
    /// `max_local_dsq_depth`.
    pub max_local_dsq_depth: Option<u64>,
    /// `fail_on_stall`.
    pub fail_on_stall: bool,
}

impl MonitorLimits {
    /// The monitor's limits out of a merged `Assert`.
    pub fn of(a: &crate::assert::Assert) -> Self {
        MonitorLimits {
            max_imbalance_ratio: a.max_imbalance_ratio,
            max_local_dsq_depth: a.max_local_dsq_depth,
            fail_on_stall: a.fail_on_stall.unwrap_or(false),
        }
    }
}

/// The failures `s` shows against `limits` (kind [`DetailKind::Monitor`]).
pub fn findings(s: &MonitorSummary, limits: &MonitorLimits) -> Vec<AssertDetail> {
    let mut out = Vec::new();
    let secs = |ms: u64| ms as f64 / 1000.0;
    let detail = |message: String| AssertDetail {
        kind: DetailKind::Monitor,
        message,
    };
    if limits.fail_on_stall {
        for st in &s.stalls {
            out.push(detail(format!(
                "CPU {} stalled: its runqueue clock stood still for {:.1} s ({} samples of {} ms) with {} runnable task(s), from {:.1} s into the run",
                st.cpu,
                secs(st.duration_ms),
                st.samples,
                s.period_ms,
                st.nr_running,
                secs(st.from_ms)
            )));
        }
    }
    if let (Some(v), Some(lim)) = (s.max_imbalance_ratio, limits.max_imbalance_ratio) {
        if v > lim {
            out.push(detail(format!(
                "runqueue imbalance {v:.1} (max/min tasks per CPU) held for {} samples > {lim:.1}",
                s.sustained_samples
            )));
        }
    }
    if let (Some(v), Some(lim)) = (s.max_local_dsq_depth, limits.max_local_dsq_depth) {
        if v > lim {
            out.push(detail(format!(
                "a local DSQ held {v} or more tasks for {} samples > {lim}",
                s.sustained_samples
            )));
        }
    }
    // A declared write that failed although the scheduler ran: the test did not test what
    // it says. (A scheduler that never got enabled has its own reasons.)
    if let Some(e) = s.map_write.as_ref().and_then(|w| w.error.as_deref()) {
        if e != super::bpf_write::NEVER_ENABLED {
            out.push(AssertDetail {
                kind: DetailKind::Other,
                message: format!("bpf_map_write was not applied: {e}"),
            });
        }
    }
    out
}

#[cfg(test)]
#[path = "analysis_tests.rs"]
mod tests;
