//! Per-worker telemetry: what a worker measured about itself ([`WorkerReport`]) and the
//! recorder that measures it inside the worker's loop ([`Recorder`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Most wake-latency samples a worker keeps (a uniform reservoir over all samples).
pub const MAX_LATENCY_SAMPLES: usize = 100_000;

/// How a worker process ended, when it did not end normally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitInfo {
    /// Exited with a non-zero code.
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
    /// Its report could not be read.
    NoReport(String),
}

/// What one worker measured about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// The worker's PID (= TID: workers are single-threaded processes).
    pub tid: i32,
    /// Units of work done (the work type defines a unit).
    pub work_units: u64,
    /// Loop iterations (progress points).
    pub iterations: u64,
    /// The loop ran to its stop request (false if it died or never started).
    pub completed: bool,
    /// CPU time consumed.
    pub cpu_time_ns: u64,
    /// Wall time from release to the parent's stop request (to the end of the loop when no
    /// stop was requested).
    pub wall_time_ns: u64,
    /// From the parent's stop request to the end of the loop: how long the worker took to get
    /// a CPU and notice (not part of `wall_time_ns`).
    #[serde(default)]
    pub stop_lag_ns: u64,
    /// Wall time minus CPU time.
    pub off_cpu_ns: u64,
    /// Times the worker was seen on a different CPU than at its previous progress point.
    pub migration_count: u64,
    /// CPUs the worker was seen on, ascending.
    pub cpus_used: Vec<u32>,
    /// Longest time between two progress points.
    pub max_gap_ms: f64,
    /// CPU the worker resumed on after its longest gap.
    pub max_gap_cpu: u32,
    /// When the longest gap ended, since release.
    pub max_gap_at_ms: f64,
    /// Wake/resume latencies (reservoir sample).
    pub resume_latencies_ns: Vec<u64>,
    /// All wake-latency samples seen (the reservoir keeps at most [`MAX_LATENCY_SAMPLES`]).
    pub wake_sample_total: u64,
    /// schedstat: time spent waiting on a run queue.
    pub schedstat_run_delay_ns: u64,
    /// schedstat: times scheduled in.
    pub schedstat_run_count: u64,
    /// schedstat: CPU time.
    pub schedstat_cpu_time_ns: u64,
    /// Set by the parent when the worker did not end normally.
    pub exit_info: Option<ExitInfo>,
    /// In fan-out groups: this worker was the messenger.
    pub is_messenger: bool,
}

impl WorkerReport {
    /// Work units per second of wall time.
    pub fn work_rate(&self) -> f64 {
        if self.wall_time_ns == 0 {
            0.0
        } else {
            self.work_units as f64 / (self.wall_time_ns as f64 / 1e9)
        }
    }

    /// Off-CPU time as a percentage of wall time.
    pub fn off_cpu_pct(&self) -> f64 {
        if self.wall_time_ns == 0 {
            0.0
        } else {
            100.0 * self.off_cpu_ns as f64 / self.wall_time_ns as f64
        }
    }

    /// Migrations per iteration.
    pub fn migration_ratio(&self) -> f64 {
        if self.iterations == 0 {
            0.0
        } else {
            self.migration_count as f64 / self.iterations as f64
        }
    }
}

/// Measures progress inside a worker: call [`Recorder::tick`] at every progress point.
pub struct Recorder {
    start: Instant,
    last: Instant,
    last_cpu: u32,
    cpus: u128,
    extra_cpus: Vec<u32>,
    rng: super::rng::XorShift64,
    /// The process's CPU time when measuring began: only what it uses from then on counts
    /// (a worker forked long after its parent started, or a test binary, has used CPU before).
    cpu_at_start: u64,
    /// The report being filled.
    pub report: WorkerReport,
}

/// What a worker and its parent share, one per worker in a cache line of their own.
#[repr(C)]
#[derive(Debug, Default)]
pub struct ProgressSlot {
    /// The worker's live iteration count (the parent samples it at scenario step boundaries
    /// for per-phase throughput).
    pub iterations: AtomicU64,
    /// When the parent first asked the worker to stop (CLOCK_MONOTONIC ns; 0: not yet). The
    /// worker's wall time ends here, not when it got a CPU to notice: a worker its scheduler
    /// keeps waiting would otherwise count that wait as its own run, and the time it spent
    /// waiting after the stop as off-CPU time its peers never had the chance to accrue.
    pub stop_at_ns: AtomicU64,
}

impl ProgressSlot {
    /// Records a stop request now, unless one was recorded already.
    pub fn request_stop(&self) {
        let now = super::worker::mono_ns();
        let _ = self
            .stop_at_ns
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// This worker process's slot, shared with the parent. Set once, in the forked worker.
static PROGRESS: OnceLock<&'static ProgressSlot> = OnceLock::new();

/// Publishes every [`Recorder::tick`] of this process to `slot` from now on, and ends its wall
/// time at the stop request the parent records there (the worker side of
/// [`crate::workload::WorkloadHandle::iterations`]). A second call is ignored.
pub fn publish_progress_to(slot: &'static ProgressSlot) {
    let _ = PROGRESS.set(slot);
}

/// The CPU this thread runs on (vDSO `getcpu`; cheap).
pub fn current_cpu() -> u32 {
    nix::sched::sched_getcpu().map_or(0, |c| c as u32)
}

impl Recorder {
    /// Starts measuring now.
    pub fn new() -> Self {
        Self::starting_at(Instant::now())
    }

    /// Starts measuring from `now` (e.g. the moment the worker was released, which may be
    /// before it first got a CPU: that wait counts as off-CPU time and as a gap).
    pub fn starting_at(now: Instant) -> Self {
        let cpu = current_cpu();
        let mut r = Recorder {
            start: now,
            last: now,
            last_cpu: cpu,
            cpus: 0,
            extra_cpus: Vec::new(),
            rng: super::rng::XorShift64::per_process(0x9E37_79B9_7F4A_7C15),
            cpu_at_start: process_cpu_time_ns(),
            report: WorkerReport {
                tid: nix::unistd::getpid().as_raw(),
                ..Default::default()
            },
        };
        r.note_cpu(cpu);
        r
    }

    fn note_cpu(&mut self, cpu: u32) {
        if cpu < 128 {
            self.cpus |= 1u128 << cpu;
        } else if !self.extra_cpus.contains(&cpu) {
            self.extra_cpus.push(cpu);
        }
    }

    /// A progress point after `units` units of work.
    pub fn tick(&mut self, units: u64) {
        let now = Instant::now();
        let cpu = current_cpu();
        let gap = now.duration_since(self.last).as_secs_f64() * 1e3;
        if gap > self.report.max_gap_ms {
            self.report.max_gap_ms = gap;
            self.report.max_gap_cpu = cpu;
            self.report.max_gap_at_ms = now.duration_since(self.start).as_secs_f64() * 1e3;
        }
        if cpu != self.last_cpu {
            self.report.migration_count += 1;
            self.last_cpu = cpu;
            self.note_cpu(cpu);
        }
        self.last = now;
        self.report.iterations += 1;
        self.report.work_units += units;
        if let Some(slot) = PROGRESS.get() {
            slot.iterations
                .store(self.report.iterations, Ordering::Relaxed);
        }
    }

    /// Records one wake latency sample (reservoir sampling keeps a uniform subset).
    pub fn latency(&mut self, ns: u64) {
        self.report.wake_sample_total += 1;
        let v = &mut self.report.resume_latencies_ns;
        if v.len() < MAX_LATENCY_SAMPLES {
            v.push(ns);
        } else {
            let j = self.rng.below(self.report.wake_sample_total);
            if (j as usize) < MAX_LATENCY_SAMPLES {
                v[j as usize] = ns;
            }
        }
    }

    /// Finishes the report: wall and CPU time, CPUs used, schedstat.
    pub fn finish(mut self) -> WorkerReport {
        let r = &mut self.report;
        r.completed = true;
        let stop_at = PROGRESS
            .get()
            .map_or(0, |s| s.stop_at_ns.load(Ordering::Relaxed));
        if stop_at != 0 {
            r.stop_lag_ns = super::worker::mono_ns().saturating_sub(stop_at);
        }
        r.wall_time_ns = (self.start.elapsed().as_nanos() as u64).saturating_sub(r.stop_lag_ns);
        r.cpu_time_ns = process_cpu_time_ns().saturating_sub(self.cpu_at_start);
        r.off_cpu_ns = r.wall_time_ns.saturating_sub(r.cpu_time_ns);
        let mut cpus: Vec<u32> = (0..128).filter(|c| self.cpus & (1u128 << c) != 0).collect();
        cpus.extend(self.extra_cpus.iter().copied());
        cpus.sort_unstable();
        r.cpus_used = cpus;
        if let Some((cpu, delay, count)) = read_schedstat("/proc/self/schedstat") {
            r.schedstat_cpu_time_ns = cpu;
            r.schedstat_run_delay_ns = delay;
            r.schedstat_run_count = count;
        }
        self.report
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

/// CPU time of this process.
pub fn process_cpu_time_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// Reads `clock` in ns.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    // A failed read counts as 0, as an untouched zeroed timespec did.
    nix::time::clock_gettime(nix::time::ClockId::from_raw(clock)).map_or(0, |ts| {
        ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
    })
}

/// Parses `/proc/<pid>/schedstat`: CPU time, run delay, timeslices.
pub fn read_schedstat(path: &str) -> Option<(u64, u64, u64)> {
    parse_schedstat(&std::fs::read_to_string(path).ok()?)
}

fn parse_schedstat(s: &str) -> Option<(u64, u64, u64)> {
    let mut it = s.split_whitespace().map(|w| w.parse::<u64>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker released 300 ms before it first ran (starved by a higher-priority task)
    /// reports that wait as off-CPU time and as a gap, not as a shorter life.
    #[test]
    fn the_wait_before_the_first_run_is_off_cpu() {
        let released = Instant::now() - std::time::Duration::from_millis(300);
        let mut r = Recorder::starting_at(released);
        r.tick(1);
        let rep = r.finish();
        assert!(rep.wall_time_ns >= 300_000_000, "{}", rep.wall_time_ns);
        assert!(rep.off_cpu_pct() > 50.0, "{}", rep.off_cpu_pct());
        assert!(rep.max_gap_ms >= 300.0, "{}", rep.max_gap_ms);
    }

    #[test]
    fn recorder_counts_and_gaps() {
        let mut r = Recorder::new();
        r.tick(10);
        std::thread::sleep(std::time::Duration::from_millis(20));
        r.tick(5);
        let rep = r.finish();
        assert_eq!(rep.iterations, 2);
        assert_eq!(rep.work_units, 15);
        assert!(rep.max_gap_ms >= 20.0, "{}", rep.max_gap_ms);
        assert!(rep.completed);
        assert!(!rep.cpus_used.is_empty());
        assert!(rep.wall_time_ns >= 20_000_000);
    }

    #[test]
    fn reservoir_is_bounded() {
        let mut r = Recorder::new();
        for i in 0..(MAX_LATENCY_SAMPLES as u64 + 5000) {
            r.latency(i);
        }
        assert_eq!(r.report.resume_latencies_ns.len(), MAX_LATENCY_SAMPLES);
        assert_eq!(
            r.report.wake_sample_total,
            MAX_LATENCY_SAMPLES as u64 + 5000
        );
    }

    #[test]
    fn schedstat_parsing() {
        assert_eq!(parse_schedstat("123 456 7\n"), Some((123, 456, 7)));
        assert_eq!(parse_schedstat("1 2"), None);
        assert_eq!(parse_schedstat("a b c"), None);
    }

    #[test]
    fn derived_rates() {
        let r = WorkerReport {
            work_units: 500,
            wall_time_ns: 2_000_000_000,
            off_cpu_ns: 500_000_000,
            iterations: 100,
            migration_count: 5,
            ..Default::default()
        };
        assert_eq!(r.work_rate(), 250.0);
        assert_eq!(r.off_cpu_pct(), 25.0);
        assert_eq!(r.migration_ratio(), 0.05);
    }
}
