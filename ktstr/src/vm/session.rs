//! One VM session, the same for both backends: from the moment a backend's guest runs until
//! its outcome is classified.
//!
//! A backend builds and starts its machine (the in-process VMM's vCPU threads, or a qemu child)
//! and hands it to [`Session::run`] as a [`Machine`]. The session then owns everything that
//! must not differ between backends:
//! - the result channel: read every [`POLL`] through [`Machine::read_channel`]; the first
//!   corrupt frame stops reading for good and is reported as the channel error;
//! - the phase clock: boot-to-init runs from the guest's start to init's `Hello` frame;
//! - the watchdog, the host's cancel flag, and a kernel panic seen on the [`Console`] (the
//!   guest gets [`PANIC_GRACE`] to reboot by itself before the session stops it);
//! - the host-side monitor's thread, started with the guest and finished once it is halted;
//! - the classification of the end: a reboot, triple fault or watchdog stop that follows a
//!   panic on the console is that panic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::console::Console;
use super::{BackendKind, ConsoleMode, FrameSink, PhaseTimes, VmEnd, VmOutcome, VmSpec};
use crate::monitor::guest_ram::GuestRam;
use crate::monitor::{MonitorSpec, Recording, VcpuThreads};
use crate::shm::{Frame, FrameReader, FrameType};

/// How often the session looks at the channel, the clock and the console.
pub const POLL: Duration = Duration::from_millis(20);
/// How long a panicked guest gets to reboot on its own before the session ends it.
pub const PANIC_GRACE: Duration = Duration::from_secs(2);

/// A started guest, as the session drives it. Each backend implements this.
pub trait Machine {
    /// Copies `buf.len()` bytes of the result region, from `offset`, out of guest memory.
    fn read_channel(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
    /// How the guest ended, once it has ended by itself (exit port, reboot, crash).
    fn ended(&mut self) -> Option<VmEnd>;
    /// Sleeps up to `d`, waking early when the guest ends.
    fn wait(&mut self, d: Duration);
    /// Ends the guest now, for `why` (watchdog, cancel, panic).
    fn stop(&mut self, why: &VmEnd);
    /// Makes sure no guest code runs any more (joins vCPU threads, reaps the child); returns
    /// the end, amended with what only the backend knows (vCPUs that would not stop, qemu's
    /// own error output).
    fn halt(&mut self, end: VmEnd) -> VmEnd;
}

/// What the session needs of the guest's memory to run the host-side monitor.
pub struct MonitorTarget {
    /// The guest's RAM.
    pub ram: Arc<dyn GuestRam>,
    /// How many vCPUs it has.
    pub cpus: usize,
    /// Where its vCPU threads are.
    pub threads: VcpuThreads,
}

/// The backend-neutral part of a [`VmSpec`], taken from it before the backend consumes the
/// rest.
pub struct Session {
    console: Console,
    mode: ConsoleMode,
    timeout: Duration,
    cancel: Arc<AtomicBool>,
    shm_size: u64,
    sink: Option<FrameSink>,
    monitor: Option<MonitorSpec>,
}

impl Session {
    /// A session for `spec` (takes its frame sink and monitor request).
    pub fn new(spec: &mut VmSpec) -> Self {
        Session {
            console: Console::new(spec.console),
            mode: spec.console,
            timeout: spec.timeout,
            cancel: spec.cancel.clone(),
            shm_size: spec.shm_size,
            sink: spec.frame_sink.take(),
            monitor: spec.monitor.take(),
        }
    }

    /// A session with a captured console, no frame sink and no monitor (the probe guest).
    pub fn bare(timeout: Duration, cancel: Arc<AtomicBool>, shm_size: u64) -> Self {
        Session {
            console: Console::new(ConsoleMode::Capture),
            mode: ConsoleMode::Capture,
            timeout,
            cancel,
            shm_size,
            sink: None,
            monitor: None,
        }
    }

    /// Where the console goes.
    pub fn console_mode(&self) -> ConsoleMode {
        self.mode
    }

    /// The console the backend feeds (its serial device or its output pump).
    pub fn console(&self) -> &Console {
        &self.console
    }

    /// Watches `machine`, whose guest started at `started`, to its end; halts it; classifies
    /// the end. `monitor` is where the host-side monitor reads (when one was asked for).
    pub fn run(
        self,
        machine: &mut dyn Machine,
        started: Instant,
        monitor: Option<MonitorTarget>,
    ) -> Finished {
        let monitor_t0 = Instant::now();
        let monitor_run = self
            .monitor
            .as_ref()
            .zip(monitor)
            .map(|(spec, t)| crate::monitor::start(spec, t.ram, t.cpus, t.threads));
        let mut channel = Channel {
            reader: FrameReader::new(),
            frames: Vec::new(),
            hello_at: None,
            size: self.shm_size,
            sink: self.sink,
        };
        let deadline = started + self.timeout;
        let end = loop {
            channel.poll(machine);
            if let Some(end) = machine.ended() {
                break end;
            }
            let stop = if self.cancel.load(Ordering::SeqCst) {
                Some(VmEnd::Cancelled)
            } else if Instant::now() >= deadline {
                Some(VmEnd::Timeout {
                    after: self.timeout,
                })
            } else {
                match self.console.state().panic() {
                    Some((message, at)) if at.elapsed() >= PANIC_GRACE => {
                        Some(VmEnd::Panic { message })
                    }
                    _ => None,
                }
            };
            if let Some(why) = stop {
                machine.stop(&why);
                break why;
            }
            machine.wait(POLL);
        };
        let ended_at = Instant::now();
        let end = machine.halt(end);
        // No guest code runs now: read what it left in the channel, and the last sample.
        channel.poll(machine);
        let recording = monitor_run.map(crate::monitor::finish).map(|mut r| {
            r.judged_from_ms = channel
                .hello_at
                .map(|h| h.saturating_duration_since(monitor_t0).as_millis() as u64);
            r
        });
        let st = self.console.state();
        let end = classify(end, st.panic().map(|(m, _)| m));
        Finished {
            end,
            channel_error: channel.reader.error().map(|e| e.to_string()),
            frames: channel.frames,
            console_tail: st.tail(),
            monitor: recording,
            started,
            hello_at: channel.hello_at,
            ended_at,
        }
    }
}

/// A reboot, a triple fault or a watchdog stop after the console showed a kernel panic is that
/// panic: the guest panicked and then reset (`panic=-1`) or hung.
pub fn classify(end: VmEnd, panic: Option<String>) -> VmEnd {
    match (end, panic) {
        (VmEnd::Reboot | VmEnd::TripleFault { .. } | VmEnd::Timeout { .. }, Some(message)) => {
            VmEnd::Panic { message }
        }
        (end, _) => end,
    }
}

/// The result channel as the session reads it.
struct Channel {
    reader: FrameReader,
    frames: Vec<Frame>,
    hello_at: Option<Instant>,
    size: u64,
    sink: Option<FrameSink>,
}

impl Channel {
    fn poll(&mut self, machine: &mut dyn Machine) {
        if self.reader.error().is_some() {
            return;
        }
        // An I/O error (qemu's memory file not there yet) is tried again next time; a bad
        // frame poisons the reader, which the check above then honours.
        let Ok(frames) = self
            .reader
            .poll(self.size, |at, buf| machine.read_channel(at, buf))
        else {
            return;
        };
        for f in frames {
            if f.kind == FrameType::Hello && self.hello_at.is_none() {
                self.hello_at = Some(Instant::now());
            }
            if let Some(s) = self.sink.as_mut() {
                s(&f);
            }
            self.frames.push(f);
        }
    }
}

/// What a session saw; [`Finished::outcome`] turns it into a [`VmOutcome`] once the backend
/// has freed its resources.
pub struct Finished {
    /// How the guest ended, classified.
    pub end: VmEnd,
    /// Every valid frame, in order.
    pub frames: Vec<Frame>,
    /// The corrupt frame that stopped reading, if one did.
    pub channel_error: Option<String>,
    /// The console's tail.
    pub console_tail: String,
    /// The monitor's recording, when it ran.
    pub monitor: Option<Recording>,
    /// When the guest started.
    pub started: Instant,
    /// When init's `Hello` arrived.
    pub hello_at: Option<Instant>,
    /// When the session saw the end.
    pub ended_at: Instant,
}

impl Finished {
    /// The outcome of a VM whose backend began at `t0` and has just finished tearing down.
    pub fn outcome(self, backend: BackendKind, t0: Instant) -> VmOutcome {
        let done = Instant::now();
        VmOutcome {
            backend,
            end: self.end,
            frames: self.frames,
            channel_error: self.channel_error,
            console_tail: self.console_tail,
            monitor: self.monitor,
            kvm_stats: None,
            placement_notes: Vec::new(),
            times: PhaseTimes {
                setup: self.started.saturating_duration_since(t0),
                boot_to_init: self
                    .hello_at
                    .map(|h| h.saturating_duration_since(self.started)),
                init_to_exit: self
                    .hello_at
                    .map(|h| self.ended_at.saturating_duration_since(h)),
                teardown: done.saturating_duration_since(self.ended_at),
                total: done.saturating_duration_since(t0),
            },
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
