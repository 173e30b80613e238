//! Forking workers: two-phase start (placed in their cgroup, pinned and given their policy
//! before they run a single iteration), stop through SIGUSR1, reports back over a pipe.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sched::CpuSet;
use nix::sys::signal::{kill, pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{setpgid, Pid};

use super::report::{ExitInfo, ProgressSlot, WorkerReport};
use super::types::{check_group_size, GroupSizeError, WorkType};
use super::worker::{self, GroupShared, PairPipes, WorkerCtx};

/// Where a worker may run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AffinityMode {
    /// Inherit (the cgroup's cpuset).
    #[default]
    None,
    /// Exactly these CPUs.
    Fixed(Vec<u32>),
    /// `count` CPUs drawn at random from `from`, per worker.
    Random {
        /// The pool.
        from: Vec<u32>,
        /// How many.
        count: usize,
    },
    /// One CPU.
    SingleCpu(u32),
}

/// A scheduling policy for workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedPolicy {
    /// SCHED_OTHER (EEVDF or sched_ext).
    #[default]
    Normal,
    /// SCHED_BATCH.
    Batch,
    /// SCHED_IDLE.
    Idle,
    /// SCHED_FIFO at a priority (1..=99).
    Fifo(u32),
    /// SCHED_RR at a priority (1..=99).
    RoundRobin(u32),
}

/// A set of identical workers.
#[derive(Debug, Clone, Default)]
pub struct WorkloadConfig {
    /// How many (a multiple of the work type's group size).
    pub num_workers: u32,
    /// What they do.
    pub work_type: WorkType,
    /// Where they may run.
    pub affinity: AffinityMode,
    /// Their policy.
    pub sched_policy: SchedPolicy,
    /// cgroup directory (absolute, under /sys/fs/cgroup) they are placed in before starting.
    pub cgroup: Option<PathBuf>,
    /// Raw `set_mempolicy(2)` mode (with flags) and node mask each worker applies to itself
    /// before its first iteration; a worker that cannot apply it exits with code 4.
    pub mem_policy: Option<(i32, Vec<u64>)>,
}

/// Why workers could not be started.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// Worker count vs. group size.
    #[error(transparent)]
    GroupSize(#[from] GroupSizeError),
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// errno.
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> WorkloadError {
    sys_errno(what, Errno::last())
}

fn sys_errno(what: impl Into<String>, e: Errno) -> WorkloadError {
    WorkloadError::Sys {
        what: what.into(),
        source: e.into(),
    }
}

struct Worker {
    pid: i32,
    /// Its cache line in the handle's progress mapping.
    slot: usize,
    release: Option<OwnedFd>,
    report: OwnedFd,
    reaped: bool,
}

/// Running (or ready) workers. Dropping it kills and reaps them all.
pub struct WorkloadHandle {
    workers: Vec<Worker>,
    groups: Vec<(*mut GroupShared, usize)>,
    /// One cache line per worker ([`PROGRESS_STRIDE`] bytes, so workers never share a line):
    /// each worker's live iteration count, read by [`WorkloadHandle::iterations`].
    progress: (*mut u8, usize),
    started: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

/// Bytes between two workers' progress slots: a cache line, so a worker's store never
/// bounces a line another worker writes.
const PROGRESS_STRIDE: usize = 64;
const _: () = assert!(std::mem::size_of::<ProgressSlot>() <= PROGRESS_STRIDE);

/// A zero-filled `MAP_SHARED` anonymous mapping of `len` bytes (shared with the children
/// forked after it).
fn shared_mapping(len: usize, what: &str) -> Result<*mut u8, WorkloadError> {
    // SAFETY: a fresh anonymous mapping: no existing memory is touched; checked for failure.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(sys(format!("mmap of {what}")));
    }
    Ok(p.cast())
}

extern "C" fn on_sigusr1(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn pipe() -> Result<(OwnedFd, OwnedFd), WorkloadError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| sys_errno("pipe2", e))
}

/// Pins `pid` to `cpus`.
pub fn set_affinity(pid: i32, cpus: &[u32]) -> Result<(), WorkloadError> {
    let mut set = CpuSet::new();
    for &c in cpus {
        // CPUs past the set's size are skipped, as `host_cpus::cpu_set` skips them.
        let _ = set.set(c as usize);
    }
    nix::sched::sched_setaffinity(Pid::from_raw(pid), &set)
        .map_err(|e| sys_errno(format!("sched_setaffinity({pid}, {cpus:?})"), e))
}

/// Applies a scheduling policy to `pid`.
pub fn set_policy(pid: i32, p: SchedPolicy) -> Result<(), WorkloadError> {
    let (pol, prio) = match p {
        SchedPolicy::Normal => (libc::SCHED_OTHER, 0),
        SchedPolicy::Batch => (libc::SCHED_BATCH, 0),
        SchedPolicy::Idle => (libc::SCHED_IDLE, 0),
        SchedPolicy::Fifo(n) => (libc::SCHED_FIFO, n as i32),
        SchedPolicy::RoundRobin(n) => (libc::SCHED_RR, n as i32),
    };
    let param = libc::sched_param {
        sched_priority: prio,
    };
    // SAFETY: `param` is a live sched_param the call only reads. (nix 0.31 has no
    // sched_setscheduler wrapper.)
    if unsafe { libc::sched_setscheduler(pid, pol, &param) } != 0 {
        return Err(sys(format!("sched_setscheduler({pid}, {p:?})")));
    }
    Ok(())
}

fn pick_random(from: &[u32], count: usize, seed: u64) -> Vec<u32> {
    let mut pool = from.to_vec();
    let mut rng = super::rng::XorShift64::new(seed | 1);
    let mut out = Vec::new();
    while out.len() < count.min(from.len()) {
        let i = rng.below(pool.len() as u64) as usize;
        out.push(pool.swap_remove(i));
    }
    out.sort_unstable();
    out
}

impl WorkloadHandle {
    /// Forks the workers; they wait until [`WorkloadHandle::start`].
    pub fn spawn(cfg: &WorkloadConfig) -> Result<WorkloadHandle, WorkloadError> {
        check_group_size(&cfg.work_type, cfg.num_workers)?;
        let gsize = cfg.work_type.group_size();
        let plen = (cfg.num_workers as usize * PROGRESS_STRIDE).max(4096);
        let mut h = WorkloadHandle {
            workers: Vec::new(),
            groups: Vec::new(),
            progress: (shared_mapping(plen, "worker progress counters")?, plen),
            started: false,
        };
        for g in 0..cfg.num_workers / gsize {
            let len = std::mem::size_of::<GroupShared>().max(4096);
            // Zero-filled is a valid GroupShared: all its fields are atomics.
            let shared = shared_mapping(len, "worker-group shared memory")?;
            h.groups.push((shared.cast(), len));
            // Pipes for pair exchanges: a→b and b→a.
            let pair_pipes = if matches!(
                cfg.work_type,
                WorkType::PipeIo { .. } | WorkType::CachePipe { .. }
            ) {
                Some((pipe()?, pipe()?))
            } else {
                None
            };
            for index in 0..gsize {
                let pipes = pair_pipes.as_ref().map(|(ab, ba)| {
                    if index == 0 {
                        (ba.0.as_fd(), ab.1.as_fd())
                    } else {
                        (ab.0.as_fd(), ba.1.as_fd())
                    }
                });
                let slot = h.workers.len();
                // SAFETY: `(slot + 1) * PROGRESS_STRIDE <= plen` (one slot per worker), and the
                // mapping is page-aligned, so the slot is in bounds and 8-aligned.
                let counter = unsafe { h.progress.0.add(slot * PROGRESS_STRIDE) };
                let mut w = fork_worker(cfg, index, shared.cast(), counter.cast(), pipes)?;
                w.slot = slot;
                let pid = w.pid;
                h.workers.push(w);
                place(cfg, pid, (g * gsize + index) as u64)?;
            }
        }
        Ok(h)
    }

    /// PIDs of the workers.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.workers.iter().map(|w| w.pid).collect()
    }

    /// Each worker's PID and its live iteration count (what its [`super::report::Recorder`]
    /// has ticked so far; 0 for a body that records no progress).
    pub fn iterations(&self) -> Vec<(i32, u64)> {
        self.workers
            .iter()
            .map(|w| (w.pid, self.slot(w).iterations.load(Ordering::Relaxed)))
            .collect()
    }

    /// `w`'s slot in the progress mapping.
    fn slot(&self, w: &Worker) -> &ProgressSlot {
        // SAFETY: the progress mapping lives until this handle drops, `w.slot` is in it (see
        // `spawn`: one PROGRESS_STRIDE line per worker, page-aligned, so 8-aligned), it was
        // zero-filled (a valid ProgressSlot), and its fields are atomics only.
        unsafe {
            &*self
                .progress
                .0
                .add(w.slot * PROGRESS_STRIDE)
                .cast::<ProgressSlot>()
        }
    }

    /// Releases every worker at once.
    pub fn start(&mut self) {
        // The release time goes with the release: a worker's wall clock starts here, not when
        // it first gets a CPU, so one that never runs before it is stopped counts as 100%
        // off-CPU rather than as 0 s of wall time.
        let at = super::worker::mono_ns().to_ne_bytes();
        for w in &mut self.workers {
            if let Some(fd) = w.release.take() {
                // 8 bytes: one atomic write (< PIPE_BUF). A worker already gone shows up at
                // collection.
                let _ = nix::unistd::write(&fd, &at);
            }
        }
        self.started = true;
    }

    /// Asks every worker to stop (SIGUSR1) without waiting. Signal all handles first, then
    /// collect each, so workers of different handles stop together and none runs on while
    /// another handle is being collected.
    /// The stop request is recorded in every worker's slot first (the first one counts).
    pub fn signal_stop(&self) {
        for w in &self.workers {
            self.slot(w).request_stop();
        }
        for w in &self.workers {
            let _ = kill(Pid::from_raw(w.pid), Signal::SIGUSR1);
        }
    }

    /// Stops every worker and collects its report. A worker that does not report within
    /// `grace` (e.g. because it never gets a CPU) is killed and reported with `exit_info`.
    pub fn stop_and_collect(mut self, grace: Duration) -> Vec<WorkerReport> {
        self.signal_stop();
        let deadline = Instant::now() + grace;
        let mut out = Vec::new();
        for w in &mut self.workers {
            let (bytes, err) = read_until(&w.report, deadline);
            let mut rep = match serde_json::from_slice::<WorkerReport>(&bytes) {
                Ok(r) => r,
                Err(e) => WorkerReport {
                    tid: w.pid,
                    exit_info: Some(ExitInfo::NoReport(
                        err.unwrap_or_else(|| format!("unreadable report: {e}")),
                    )),
                    ..Default::default()
                },
            };
            // Kill (no-op if it already exited) and reap our own child.
            let _ = kill(Pid::from_raw(w.pid), Signal::SIGKILL);
            let mut st = 0;
            // SAFETY: `st` is a live local the call writes the status word into. Raw waitpid,
            // not nix's: nix cannot decode a death by a real-time signal (it reaps the child,
            // then returns EINVAL), and that death must still be reported.
            unsafe { libc::waitpid(w.pid, &mut st, 0) };
            w.reaped = true;
            // How the process ended says more than a missing report: a worker that exited
            // with an error or died of a signal before reporting is named as such (not as
            // "did not report"). Our own SIGKILL above is not a death to report.
            if libc::WIFSIGNALED(st) && libc::WTERMSIG(st) != libc::SIGKILL {
                rep.exit_info = Some(ExitInfo::Signal(libc::WTERMSIG(st)));
            } else if libc::WIFEXITED(st) && libc::WEXITSTATUS(st) != 0 {
                rep.exit_info = Some(ExitInfo::Code(libc::WEXITSTATUS(st)));
            }
            out.push(rep);
        }
        out
    }
}

fn read_until(fd: &OwnedFd, deadline: Instant) -> (Vec<u8>, Option<String>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, Some("did not report before the stop deadline".into()));
        }
        let mut pfd = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
        if !matches!(nix::poll::poll(&mut pfd, timeout), Ok(n) if n > 0) {
            continue;
        }
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return (out, None),
            Ok(r) => out.extend_from_slice(&buf[..r]),
            Err(e) => return (out, Some(std::io::Error::from(e).to_string())),
        }
    }
}

fn place(cfg: &WorkloadConfig, pid: i32, seed: u64) -> Result<(), WorkloadError> {
    if let Some(cg) = &cfg.cgroup {
        std::fs::write(cg.join("cgroup.procs"), pid.to_string()).map_err(|e| {
            WorkloadError::Sys {
                what: format!("moving worker {pid} into {}", cg.display()),
                source: e,
            }
        })?;
    }
    match &cfg.affinity {
        AffinityMode::None => {}
        AffinityMode::Fixed(c) => set_affinity(pid, c)?,
        AffinityMode::SingleCpu(c) => set_affinity(pid, &[*c])?,
        AffinityMode::Random { from, count } => set_affinity(
            pid,
            &pick_random(from, *count, seed.wrapping_mul(0x9E37) ^ pid as u64),
        )?,
    }
    if cfg.sched_policy != SchedPolicy::Normal {
        set_policy(pid, cfg.sched_policy)?;
    }
    Ok(())
}

fn fork_worker(
    cfg: &WorkloadConfig,
    index: u32,
    shared: *mut GroupShared,
    counter: *const ProgressSlot,
    pipes: Option<PairPipes<'_>>,
) -> Result<Worker, WorkloadError> {
    let (rel_r, rel_w) = pipe()?;
    let (rep_r, rep_w) = pipe()?;
    // SIGUSR1 stays blocked across the fork until the child has its handler: a stop that
    // arrives that early must set the flag, not kill the worker by the default action.
    let mut block = SigSet::empty();
    block.add(Signal::SIGUSR1);
    let mut old = SigSet::empty();
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&block), Some(&mut old));
    // SAFETY: the child runs only the worker loop and then _exits; it never returns into the
    // parent's code. glibc makes malloc usable after fork.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        child(cfg, index, shared, counter, pipes, rel_r, rep_w, &old);
    }
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    if pid < 0 {
        return Err(sys("fork of a worker"));
    }
    // Our child in its own process group (also done by the child; the double call closes the
    // race either way).
    let _ = setpgid(Pid::from_raw(pid), Pid::from_raw(pid));
    drop(rel_r);
    drop(rep_w);
    Ok(Worker {
        pid,
        slot: 0,
        release: Some(rel_w),
        report: rep_r,
        reaped: false,
    })
}

#[allow(clippy::too_many_arguments)] // the child's whole world, handed over at fork
fn child(
    cfg: &WorkloadConfig,
    index: u32,
    shared: *mut GroupShared,
    counter: *const ProgressSlot,
    pipes: Option<PairPipes<'_>>,
    release: OwnedFd,
    report: OwnedFd,
    old_mask: &SigSet,
) -> ! {
    // Async-signal-safe setup in the fresh child (thin wrappers, no allocation): own process
    // group, die with the parent, a SIGUSR1 handler, then the saved mask back.
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // SAFETY: `sa` is fully initialised (zeroed: empty mask, no flags) and names a handler
    // that only stores an atomic, which is async-signal-safe. (nix's sigaction is unsafe too.)
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigusr1 as *const () as usize;
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None);
    crate::coverage::forked_child();
    if let Some((mode, mask)) = &cfg.mem_policy {
        // SAFETY: set_mempolicy reads `mask.len() * 64` bits from a live buffer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_set_mempolicy,
                *mode,
                if mask.is_empty() {
                    std::ptr::null()
                } else {
                    mask.as_ptr()
                },
                (mask.len() * 64 + 1) as libc::c_ulong,
            )
        };
        if rc != 0 {
            // SAFETY: exit without running the parent's destructors.
            unsafe { libc::_exit(4) };
        }
    }
    let mut b = [0u8; 8];
    // Blocking read of the release time (8 bytes, written atomically); EOF means the parent
    // gave up.
    if !matches!(nix::unistd::read(&release, &mut b), Ok(8)) {
        // SAFETY: exit without running the parent's destructors.
        unsafe { libc::_exit(3) };
    }
    let waited = super::worker::mono_ns().saturating_sub(u64::from_ne_bytes(b));
    let now = std::time::Instant::now();
    let released_at = now.checked_sub(Duration::from_nanos(waited)).unwrap_or(now);
    // SAFETY: `shared` is the group's live MAP_SHARED mapping, inherited across fork.
    let group = unsafe { shared.as_ref() };
    // SAFETY: `counter` is this worker's aligned slot in the progress mapping, inherited across
    // fork and never unmapped in the child, which _exits without returning: 'static here.
    super::report::publish_progress_to(unsafe { &*counter });
    let ctx = WorkerCtx {
        released_at,
        stop: &STOP,
        index,
        group,
        pipes,
    };
    let rep = worker::run(&cfg.work_type, &ctx);
    let bytes = serde_json::to_vec(&rep).unwrap_or_default();
    let mut off = 0;
    while off < bytes.len() {
        match nix::unistd::write(&report, &bytes[off..]) {
            Ok(n) if n > 0 => off += n,
            _ => break,
        }
    }
    // _exit skips the profile runtime's own write (coverage builds only).
    crate::coverage::flush();
    // SAFETY: exit without running the parent's destructors or atexit handlers.
    unsafe { libc::_exit(0) }
}

impl Drop for WorkloadHandle {
    fn drop(&mut self) {
        for w in &self.workers {
            if !w.reaped {
                // Kill our child's process group and the child, then reap it.
                let _ = kill(Pid::from_raw(-w.pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(w.pid), Signal::SIGKILL);
                let _ = waitpid(Pid::from_raw(w.pid), None);
            }
        }
        for (p, len) in self.groups.drain(..) {
            // SAFETY: unmapping our own mapping; every worker using it is dead.
            unsafe { libc::munmap(p.cast(), len) };
        }
        // SAFETY: as above: our own mapping, its users dead, unmapped once (Drop runs once).
        unsafe { libc::munmap(self.progress.0.cast(), self.progress.1) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(work: WorkType, n: u32, ms: u64) -> Vec<WorkerReport> {
        let cfg = WorkloadConfig {
            num_workers: n,
            work_type: work,
            ..Default::default()
        };
        let mut h = WorkloadHandle::spawn(&cfg).unwrap();
        assert_eq!(h.worker_pids().len(), n as usize);
        h.start();
        std::thread::sleep(Duration::from_millis(ms));
        h.stop_and_collect(Duration::from_secs(5))
    }

    #[test]
    fn every_named_work_type_makes_progress() {
        for name in WorkType::ALL_NAMES {
            let w = WorkType::from_name(name).unwrap();
            let n = w.group_size().max(2) / w.group_size() * w.group_size();
            let reps = run(w, n, 300);
            for r in &reps {
                assert!(r.exit_info.is_none(), "{name}: {r:?}");
                assert!(r.completed, "{name}");
                // Fan-out receivers and lock waiters may legitimately do little; all must report.
                assert!(r.wall_time_ns > 0, "{name}");
            }
            let total: u64 = reps.iter().map(|r| r.work_units).sum();
            assert!(total > 0, "{name}: no progress");
        }
    }

    #[test]
    fn the_parent_sees_each_workers_live_iterations() {
        let cfg = WorkloadConfig {
            num_workers: 4, // two pairs: counters of group members must not be mixed up
            work_type: WorkType::from_name("FutexPingPong").unwrap(),
            ..Default::default()
        };
        let mut h = WorkloadHandle::spawn(&cfg).unwrap();
        let before = h.iterations();
        assert_eq!(before.len(), 4);
        assert!(before.iter().all(|&(_, n)| n == 0), "{before:?}");
        h.start();
        std::thread::sleep(Duration::from_millis(300));
        let mid = h.iterations();
        std::thread::sleep(Duration::from_millis(200));
        let late = h.iterations();
        let pids = h.worker_pids();
        let reps = h.stop_and_collect(Duration::from_secs(5));
        for (((pid, m), (_, l)), r) in mid.iter().zip(&late).zip(&reps) {
            assert!(pids.contains(pid));
            assert!(*m > 0 && l >= m, "worker {pid}: {m} then {l}");
            // The live count never runs ahead of what the worker finally reports.
            assert!(
                *l <= r.iterations,
                "worker {pid}: live {l} > final {}",
                r.iterations
            );
        }
    }

    #[test]
    fn a_worker_that_notices_its_stop_late_counts_the_wait_as_stop_lag() {
        let cfg = WorkloadConfig {
            num_workers: 2,
            work_type: WorkType::SpinWait,
            ..Default::default()
        };
        let mut h = WorkloadHandle::spawn(&cfg).unwrap();
        h.start();
        std::thread::sleep(Duration::from_millis(300));
        // The first worker cannot run (as if its scheduler held it) from just before the stop
        // request until 600 ms after it.
        let held = h.worker_pids()[0];
        kill(Pid::from_raw(held), Signal::SIGSTOP).unwrap();
        h.signal_stop();
        std::thread::sleep(Duration::from_millis(600));
        kill(Pid::from_raw(held), Signal::SIGCONT).unwrap();
        let reps = h.stop_and_collect(Duration::from_secs(5));
        let (late, prompt) = (&reps[0], &reps[1]);
        assert!(late.stop_lag_ns >= 600_000_000, "{late:?}");
        assert!(prompt.stop_lag_ns < 500_000_000, "{prompt:?}");
        // Both ran from the release to the stop request: the held worker's wait after the
        // request is not part of its wall time (it would make it 900 ms, not 300).
        for r in &reps {
            assert!(
                (250_000_000..600_000_000).contains(&r.wall_time_ns),
                "{r:?}"
            );
        }
    }

    #[test]
    fn latency_work_types_record_wakeups() {
        // FanOutCompute's default round (5 multiplies of 104×104) takes most of the window
        // in an unoptimised build: a small one shows the mechanism.
        let small_compute = WorkType::FanOutCompute {
            fan_out: 2,
            cache_footprint_kb: 16,
            operations: 1,
            sleep_usec: 100,
        };
        for w in ["FutexPingPong", "PipeIo", "CachePipe", "FutexFanOut"]
            .map(|n| WorkType::from_name(n).unwrap())
            .into_iter()
            .chain([small_compute])
        {
            let reps = run(w, w.group_size(), 400);
            let samples: u64 = reps.iter().map(|r| r.wake_sample_total).sum();
            assert!(samples > 0, "{}: no wake-latency samples", w.name());
            if matches!(w, WorkType::FanOutCompute { .. }) {
                // The messenger waits for every receiver each round: they keep in step.
                let rounds: Vec<u64> = reps[1..].iter().map(|r| r.iterations).collect();
                let (lo, hi) = (rounds.iter().min().unwrap(), rounds.iter().max().unwrap());
                assert!(*lo > 0 && hi - lo <= 1, "receivers out of step: {rounds:?}");
            }
        }
    }

    #[test]
    fn affinity_is_applied_before_start() {
        let cfg = WorkloadConfig {
            num_workers: 1,
            work_type: WorkType::SpinWait,
            affinity: AffinityMode::SingleCpu(0),
            ..Default::default()
        };
        let mut h = WorkloadHandle::spawn(&cfg).unwrap();
        h.start();
        std::thread::sleep(Duration::from_millis(100));
        let r = h.stop_and_collect(Duration::from_secs(5));
        assert_eq!(r[0].cpus_used, vec![0]);
        assert_eq!(r[0].migration_count, 0);
    }

    #[test]
    fn a_stuck_worker_is_reported_not_waited_for() {
        fn hang(_: &AtomicBool) -> WorkerReport {
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let cfg = WorkloadConfig {
            num_workers: 1,
            work_type: WorkType::Custom {
                name: "hang",
                run: hang,
            },
            ..Default::default()
        };
        let mut h = WorkloadHandle::spawn(&cfg).unwrap();
        h.start();
        let t = Instant::now();
        let r = h.stop_and_collect(Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(
            matches!(r[0].exit_info, Some(ExitInfo::NoReport(_))),
            "{:?}",
            r[0]
        );
        assert!(!r[0].completed);
    }

    #[test]
    fn a_worker_that_dies_before_reporting_is_named_by_how_it_died() {
        fn quit(_: &AtomicBool) -> WorkerReport {
            std::process::exit(3)
        }
        fn abort(_: &AtomicBool) -> WorkerReport {
            std::process::abort()
        }
        for (run, want) in [
            (quit as fn(&AtomicBool) -> WorkerReport, ExitInfo::Code(3)),
            (abort, ExitInfo::Signal(libc::SIGABRT)),
        ] {
            let cfg = WorkloadConfig {
                num_workers: 1,
                work_type: WorkType::Custom { name: "die", run },
                ..Default::default()
            };
            let mut h = WorkloadHandle::spawn(&cfg).unwrap();
            h.start();
            let r = h.stop_and_collect(Duration::from_secs(5));
            assert_eq!(r[0].exit_info, Some(want), "{:?}", r[0]);
        }
    }

    #[test]
    fn odd_pairs_are_refused() {
        let cfg = WorkloadConfig {
            num_workers: 3,
            work_type: WorkType::from_name("FutexPingPong").unwrap(),
            ..Default::default()
        };
        assert!(matches!(
            WorkloadHandle::spawn(&cfg),
            Err(WorkloadError::GroupSize(_))
        ));
    }
}
