//! The worker loops, run inside each forked worker process until the stop flag is set.

use std::hint::black_box;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags};
use nix::sched::CpuSet;
use nix::unistd::Pid;

use super::report::{clock_ns, Recorder, WorkerReport};
use super::rng::XorShift64;
use super::types::{Phase, WorkType};

/// Shared state of one worker group (pairs, fan-out groups, lock convoys), placed in a
/// `MAP_SHARED` anonymous mapping created before the fork so every member sees it.
#[repr(C)]
pub struct GroupShared {
    /// Futex word: whose turn it is (ping-pong) or the round number (fan-out).
    pub turn: AtomicU32,
    /// Futex word: the lock (0 free, 1 held, 2 held with waiters).
    pub lock: AtomicU32,
    /// Futex word: receivers done with the current round (fan-outs that join).
    pub done: AtomicU32,
    /// CLOCK_MONOTONIC ns at which the last wake-up was issued.
    pub wake_ns: AtomicU64,
}

/// Pipe ends of a pipe-exchanging pair member: (read from partner, write to partner).
pub type PairPipes<'a> = (BorrowedFd<'a>, BorrowedFd<'a>);

/// Everything a worker loop needs besides its work type.
pub struct WorkerCtx<'a> {
    /// When the parent released the workers: the start of the worker's wall clock.
    pub released_at: Instant,
    /// Set by SIGUSR1.
    pub stop: &'a AtomicBool,
    /// Index within its group.
    pub index: u32,
    /// The group's shared state, for group work types.
    pub group: Option<&'a GroupShared>,
    /// Pipes to the partner, for pipe work types.
    pub pipes: Option<PairPipes<'a>>,
}

/// CLOCK_MONOTONIC in ns (shared by all processes, unlike `Instant`'s opaque value).
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

fn spin(iters: u64) {
    let mut x = 0u64;
    for i in 0..iters {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    black_box(x);
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the futex word lives in a shared mapping valid for the worker's life; a
    // non-private futex op because partners are separate processes.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0,
        );
    }
}

fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: as in futex_wait.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n, 0, 0, 0);
    }
}

fn yield_now() {
    let _ = nix::sched::sched_yield();
}

/// Sleeps `d` and records how late the wake-up came.
fn sleep_measured(rec: &mut Recorder, d: Duration) {
    let t = Instant::now();
    std::thread::sleep(d);
    let over = t.elapsed().saturating_sub(d);
    rec.latency(over.as_nanos() as u64);
}

const POLL_SLICE: Duration = Duration::from_millis(50);

/// Runs `work` until `ctx.stop` is set; returns the report.
pub fn run(work: &WorkType, ctx: &WorkerCtx) -> WorkerReport {
    if let WorkType::Custom { run, .. } = work {
        return run(ctx.stop);
    }
    let mut rec = Recorder::starting_at(ctx.released_at);
    let stop = || ctx.stop.load(Ordering::Relaxed);
    match *work {
        WorkType::SpinWait => {
            while !stop() {
                spin(1024);
                rec.tick(1);
            }
        }
        WorkType::YieldHeavy => {
            while !stop() {
                yield_now();
                rec.tick(1);
            }
        }
        WorkType::Mixed => {
            while !stop() {
                spin(1024);
                yield_now();
                rec.tick(1);
            }
        }
        WorkType::IoSync => io_sync(&mut rec, ctx.stop, None),
        WorkType::Bursty { burst_ms, sleep_ms } => {
            while !stop() {
                let until = Instant::now() + Duration::from_millis(burst_ms);
                while Instant::now() < until && !stop() {
                    spin(1024);
                    rec.tick(1);
                }
                sleep_measured(&mut rec, Duration::from_millis(sleep_ms));
            }
        }
        WorkType::PipeIo { burst_iters } => pipe_io(&mut rec, ctx, || spin(burst_iters)),
        WorkType::CachePipe {
            size_kb,
            burst_iters,
        } => {
            let mut lines = CacheLines::new(size_kb, 64);
            pipe_io(&mut rec, ctx, || lines.touch(burst_iters))
        }
        WorkType::FutexPingPong { spin_iters } => ping_pong(&mut rec, ctx, spin_iters),
        WorkType::CachePressure { size_kb, stride } => {
            cache_passes(&mut rec, ctx.stop, size_kb, stride, false)
        }
        WorkType::CacheYield { size_kb, stride } => {
            cache_passes(&mut rec, ctx.stop, size_kb, stride, true)
        }
        WorkType::FutexFanOut {
            fan_out: _,
            spin_iters,
        } => {
            let pause = Duration::from_micros(200);
            fan_out(&mut rec, ctx, spin_iters, pause, None, |rec| {
                spin(spin_iters / 4);
                rec.tick(1);
            })
        }
        WorkType::FanOutCompute {
            fan_out: n,
            cache_footprint_kb,
            operations,
            sleep_usec,
        } => fan_out_compute(&mut rec, ctx, n, cache_footprint_kb, operations, sleep_usec),
        WorkType::Sequence { first, rest } => sequence(&mut rec, ctx.stop, first, rest),
        WorkType::ForkExit => fork_exit(&mut rec, ctx.stop),
        WorkType::NiceSweep => nice_sweep(&mut rec, ctx.stop),
        WorkType::AffinityChurn { spin_iters } => affinity_churn(&mut rec, ctx.stop, spin_iters),
        WorkType::PolicyChurn { spin_iters } => policy_churn(&mut rec, ctx.stop, spin_iters),
        WorkType::PageFaultChurn {
            region_kb,
            touches_per_cycle,
            spin_iters,
        } => page_fault_churn(&mut rec, ctx.stop, region_kb, touches_per_cycle, spin_iters),
        WorkType::MutexContention {
            contenders: _,
            hold_iters,
            work_iters,
        } => mutex_contention(&mut rec, ctx, hold_iters, work_iters),
        WorkType::Custom { .. } => unreachable!("handled above"),
    }
    rec.finish()
}

/// `CachePressure` (and `CacheYield`, with a yield after each pass): strided passes over a
/// private buffer.
fn cache_passes(rec: &mut Recorder, stop: &AtomicBool, size_kb: u64, stride: u64, yields: bool) {
    let mut lines = CacheLines::new(size_kb, stride);
    while !stop.load(Ordering::Relaxed) {
        lines.pass();
        if yields {
            yield_now();
        }
        rec.tick(1);
    }
}

/// `FanOutCompute`: a joining fan-out whose receivers multiply matrices, with a progress
/// point per multiply (a round is `operations` of them).
fn fan_out_compute(
    rec: &mut Recorder,
    ctx: &WorkerCtx,
    receivers: u32,
    footprint_kb: u64,
    operations: u32,
    sleep_usec: u64,
) {
    let mut m = Matrices::fitting(footprint_kb);
    let pause = Duration::from_micros(sleep_usec);
    fan_out(rec, ctx, 0, pause, Some(receivers), |rec| {
        for _ in 0..operations {
            m.multiply();
            rec.tick(1);
        }
    })
}

/// A private buffer touched every `stride` bytes (`CachePressure`, `CacheYield`,
/// `CachePipe`).
struct CacheLines {
    buf: Vec<u8>,
    stride: usize,
    next: usize,
}

impl CacheLines {
    fn new(size_kb: u64, stride: u64) -> CacheLines {
        CacheLines {
            buf: vec![0u8; (size_kb.max(1) * 1024) as usize],
            stride: stride.max(1) as usize,
            next: 0,
        }
    }

    /// One read-modify-write pass over the whole buffer.
    fn pass(&mut self) {
        for i in (0..self.buf.len()).step_by(self.stride) {
            self.buf[i] = self.buf[i].wrapping_add(1);
        }
        black_box(&self.buf);
    }

    /// `n` strided read-modify-writes, carrying on where the last call stopped.
    fn touch(&mut self, n: u64) {
        for _ in 0..n {
            self.buf[self.next] = self.buf[self.next].wrapping_add(1);
            self.next = (self.next + self.stride) % self.buf.len();
        }
        black_box(&self.buf);
    }
}

/// Three square matrices of u64 that together fit a cache footprint (`FanOutCompute`).
/// Integers, not floats: under emulation (qemu TCG) every float op is a helper call, which
/// would make one multiply take seconds.
struct Matrices {
    n: usize,
    a: Vec<u64>,
    b: Vec<u64>,
    c: Vec<u64>,
}

impl Matrices {
    fn fitting(footprint_kb: u64) -> Matrices {
        // 3 n² u64s in the footprint; at least 2×2.
        let n = (((footprint_kb * 1024) as f64 / 24.0).sqrt() as usize).max(2);
        let fill = |seed: u64| (0..n * n).map(|i| seed + (i % 7) as u64).collect();
        Matrices {
            n,
            a: fill(1),
            b: fill(2),
            c: vec![0; n * n],
        }
    }

    /// c = a × b (wrapping), the naive triple loop.
    fn multiply(&mut self) {
        let n = self.n;
        for (i, out) in self.c.chunks_exact_mut(n).enumerate() {
            let row = &self.a[i * n..(i + 1) * n];
            for (j, cell) in out.iter_mut().enumerate() {
                *cell = row
                    .iter()
                    .zip(self.b[j..].iter().step_by(n))
                    .fold(0u64, |s, (x, y)| s.wrapping_add(x.wrapping_mul(*y)));
            }
        }
        black_box(&self.c);
    }
}

/// `Sequence`: runs its phases in order, round and round.
fn sequence(rec: &mut Recorder, stop: &AtomicBool, first: Phase, rest: [Option<Phase>; 7]) {
    let phases: Vec<Phase> = std::iter::once(first)
        .chain(rest.into_iter().flatten())
        .collect();
    while !stop.load(Ordering::Relaxed) {
        for p in &phases {
            run_phase(rec, stop, *p);
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
}

/// `ForkExit`: forks a child that exits at once, and reaps it.
fn fork_exit(rec: &mut Recorder, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: immediate exit without running destructors.
            unsafe { libc::_exit(0) };
        }
        if pid > 0 {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
        }
        rec.tick(1);
    }
}

/// `NiceSweep`: spins, steps its nice value through −20..19, yields; nice 0 again at the end.
fn nice_sweep(rec: &mut Recorder, stop: &AtomicBool) {
    let mut nice = -20;
    while !stop.load(Ordering::Relaxed) {
        spin(512);
        // SAFETY: integer arguments only; changes only this process's nice value. (nix 0.31
        // has no setpriority wrapper.)
        unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
        nice = if nice >= 19 { -20 } else { nice + 1 };
        yield_now();
        rec.tick(1);
    }
    // SAFETY: as above.
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 0) };
}

/// `PolicyChurn`: cycles through SCHED_OTHER, SCHED_BATCH and SCHED_IDLE, spinning between.
fn policy_churn(rec: &mut Recorder, stop: &AtomicBool, spin_iters: u64) {
    let policies = [libc::SCHED_OTHER, libc::SCHED_BATCH, libc::SCHED_IDLE];
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a live sched_param the call only reads; changes only this
        // process's policy. (nix 0.31 has no sched_setscheduler wrapper.)
        unsafe { libc::sched_setscheduler(0, policies[i % 3], &param) };
        i += 1;
        spin(spin_iters);
        rec.tick(1);
    }
}

fn run_phase(rec: &mut Recorder, stop: &AtomicBool, p: Phase) {
    match p {
        Phase::Spin(d) => {
            let until = Instant::now() + d;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                spin(1024);
                rec.tick(1);
            }
        }
        Phase::Sleep(d) => {
            sleep_measured(rec, d);
            rec.tick(1);
        }
        Phase::Yield(d) => {
            let until = Instant::now() + d;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                yield_now();
                rec.tick(1);
            }
        }
        Phase::Io(d) => io_sync(rec, stop, Some(Instant::now() + d)),
    }
}

fn io_sync(rec: &mut Recorder, stop: &AtomicBool, until: Option<Instant>) {
    let path = std::env::temp_dir().join(format!("ktstr-io-{}", std::process::id()));
    let Ok(mut f) = std::fs::File::create(&path) else {
        return;
    };
    let block = vec![0xA5u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) && until.is_none_or(|u| Instant::now() < u) {
        let _ = f.write_all(&block);
        let _ = f.sync_data();
        let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0));
        sleep_measured(rec, Duration::from_micros(100));
        rec.tick(1);
    }
    let _ = std::fs::remove_file(&path);
}

/// `PipeIo` and `CachePipe`: a `burst`, then the byte goes to the partner.
fn pipe_io(rec: &mut Recorder, ctx: &WorkerCtx, mut burst: impl FnMut()) {
    let (Some((rd, wr)), Some(g)) = (ctx.pipes, ctx.group) else {
        return;
    };
    let mut my_turn = ctx.index == 0;
    let mut byte = [0u8; 1];
    while !ctx.stop.load(Ordering::Relaxed) {
        if my_turn {
            burst();
            g.wake_ns.store(mono_ns(), Ordering::Release);
            let _ = nix::unistd::write(wr, &byte);
            rec.tick(1);
            my_turn = false;
        } else {
            let mut pfd = [PollFd::new(rd, PollFlags::POLLIN)];
            if matches!(poll(&mut pfd, POLL_SLICE.as_millis() as u16), Ok(1))
                && matches!(nix::unistd::read(rd, &mut byte), Ok(1))
            {
                rec.latency(mono_ns().saturating_sub(g.wake_ns.load(Ordering::Acquire)));
                my_turn = true;
            }
        }
    }
}

fn ping_pong(rec: &mut Recorder, ctx: &WorkerCtx, spin_iters: u64) {
    let Some(g) = ctx.group else { return };
    let me = ctx.index;
    while !ctx.stop.load(Ordering::Relaxed) {
        let t = g.turn.load(Ordering::Acquire);
        if t != me {
            futex_wait(&g.turn, t, POLL_SLICE);
            continue;
        }
        rec.latency(mono_ns().saturating_sub(g.wake_ns.load(Ordering::Acquire)));
        spin(spin_iters);
        rec.tick(1);
        g.wake_ns.store(mono_ns(), Ordering::Release);
        g.turn.store(1 - me, Ordering::Release);
        futex_wake(&g.turn, 1);
    }
    // Hand the turn over so a partner still waiting is not left behind.
    g.turn.store(1 - me, Ordering::Release);
    futex_wake(&g.turn, 1);
}

/// `FutexFanOut` and `FanOutCompute`: the messenger spins `spin_iters`, wakes every receiver
/// and pauses; each receiver records its wake latency, then does its `work`.
/// With `join = Some(n)` the messenger waits for its `n` receivers to finish a round before
/// it pauses and posts the next (a fan-out/fan-in, as a pool of compute tasks).
fn fan_out(
    rec: &mut Recorder,
    ctx: &WorkerCtx,
    spin_iters: u64,
    pause: Duration,
    join: Option<u32>,
    mut work: impl FnMut(&mut Recorder),
) {
    let Some(g) = ctx.group else { return };
    let stop = || ctx.stop.load(Ordering::Relaxed);
    if ctx.index == 0 {
        rec.report.is_messenger = true;
        while !stop() {
            spin(spin_iters);
            g.done.store(0, Ordering::Release);
            g.wake_ns.store(mono_ns(), Ordering::Release);
            g.turn.fetch_add(1, Ordering::AcqRel);
            futex_wake(&g.turn, i32::MAX);
            rec.tick(1);
            if let Some(n) = join {
                loop {
                    let d = g.done.load(Ordering::Acquire);
                    if d >= n || stop() {
                        break;
                    }
                    futex_wait(&g.done, d, POLL_SLICE);
                }
            }
            std::thread::sleep(pause);
        }
    } else {
        // From the mapping's zero, not the turn now: a round posted before this receiver first
        // ran is still its to take (a joining messenger waits for it).
        let mut seen = 0;
        let mut waited = false;
        while !ctx.stop.load(Ordering::Relaxed) {
            let now = g.turn.load(Ordering::Acquire);
            if now == seen {
                futex_wait(&g.turn, seen, POLL_SLICE);
                waited = true;
                continue;
            }
            seen = now;
            // A round posted while this receiver was still working is no wake-up: the time
            // since it was posted is the receiver's own work, not the scheduler's latency.
            if waited {
                rec.latency(mono_ns().saturating_sub(g.wake_ns.load(Ordering::Acquire)));
            }
            waited = false;
            work(rec);
            if join.is_some() {
                g.done.fetch_add(1, Ordering::AcqRel);
                futex_wake(&g.done, 1);
            }
        }
    }
}

fn affinity_churn(rec: &mut Recorder, stop: &AtomicBool, spin_iters: u64) {
    // If the query fails the set is empty and the loop never runs.
    let allowed = nix::sched::sched_getaffinity(Pid::from_raw(0)).unwrap_or_else(|_| CpuSet::new());
    let cpus: Vec<usize> = (0..CpuSet::count())
        .filter(|c| allowed.is_set(*c).unwrap_or(false))
        .collect();
    let mut rng = XorShift64::per_process(0x2545_F491_4F6C_DD1D);
    while !stop.load(Ordering::Relaxed) && !cpus.is_empty() {
        let cpu = cpus[rng.below(cpus.len() as u64) as usize];
        let mut set = CpuSet::new();
        // `cpu` came from the allowed set, so it is in range.
        let _ = set.set(cpu);
        let _ = nix::sched::sched_setaffinity(Pid::from_raw(0), &set);
        spin(spin_iters);
        rec.tick(1);
    }
}

fn page_fault_churn(
    rec: &mut Recorder,
    stop: &AtomicBool,
    region_kb: u64,
    touches: u64,
    spin_iters: u64,
) {
    let len = (region_kb * 1024).max(4096) as usize;
    // SAFETY: a fresh private anonymous mapping; checked for failure.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return;
    }
    // SAFETY: advice on our own mapping.
    unsafe { libc::madvise(p, len, libc::MADV_NOHUGEPAGE) };
    let pages = len / 4096;
    let mut rng = XorShift64::per_process(0x9E37_79B9);
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..touches {
            let page = rng.below(pages as u64) as usize;
            // SAFETY: page < pages, so the byte lies inside the mapping.
            unsafe { std::ptr::write_volatile((p as *mut u8).add(page * 4096), 1) };
        }
        // SAFETY: drops our own private pages (only raw-pointer writes reach them, no
        // references); later touches fault in zeroed pages.
        unsafe { libc::madvise(p, len, libc::MADV_DONTNEED) };
        spin(spin_iters);
        rec.tick(1);
    }
    // SAFETY: unmapping the mapping created above; `p` is not used afterwards.
    unsafe { libc::munmap(p, len) };
}

fn mutex_contention(rec: &mut Recorder, ctx: &WorkerCtx, hold_iters: u64, work_iters: u64) {
    let Some(g) = ctx.group else { return };
    while !ctx.stop.load(Ordering::Relaxed) {
        let t = mono_ns();
        // Lock: 0 → 1 fast path; otherwise mark contended (2) and sleep.
        if g.lock
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            let mut acquired = false;
            while !ctx.stop.load(Ordering::Relaxed) {
                if g.lock.swap(2, Ordering::Acquire) == 0 {
                    acquired = true;
                    break;
                }
                futex_wait(&g.lock, 2, POLL_SLICE);
            }
            if !acquired {
                break;
            }
        }
        rec.latency(mono_ns().saturating_sub(t));
        spin(hold_iters);
        if g.lock.swap(0, Ordering::Release) == 2 {
            futex_wake(&g.lock, 1);
        }
        spin(work_iters);
        rec.tick(1);
    }
}

#[cfg(test)]
mod kernel_tests {
    use super::*;

    #[test]
    fn matrices_fit_their_footprint_and_multiply() {
        let mut m = Matrices::fitting(256);
        assert_eq!(m.n, 104, "3 × 104² × 8 bytes ≤ 256 KiB < 3 × 105² × 8");
        assert!(3 * m.n * m.n * 8 <= 256 * 1024);
        m.multiply();
        // Row 0 of a is 1,2,..,7,1,..; column 0 of b is 2,3,..: one dot product by hand.
        let n = m.n;
        let want: u64 = (0..n).map(|k| m.a[k] * m.b[k * n]).sum();
        assert_eq!(m.c[0], want);
        let (i, j) = (3, 5);
        let want: u64 = (0..n).map(|k| m.a[i * n + k] * m.b[k * n + j]).sum();
        assert_eq!(m.c[i * n + j], want);
        assert_eq!(Matrices::fitting(0).n, 2);
    }

    #[test]
    fn cache_lines_wrap_around_the_buffer() {
        let mut l = CacheLines::new(1, 64); // 16 lines
        l.touch(20);
        assert_eq!(l.buf[0], 2, "line 0 touched twice");
        assert_eq!(l.buf[64 * 3], 2);
        assert_eq!(l.buf[64 * 4], 1);
        l.pass();
        assert_eq!(l.buf[64 * 4], 2);
        assert_eq!(l.buf[1], 0, "only the stride's bytes are touched");
    }
}
