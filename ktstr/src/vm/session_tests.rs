//! The session loop against a scripted machine: a result region in a host buffer that a
//! script writes frames into between polls, and an end the script decides. (No VM boots
//! here; the same behaviours are proven on both real backends by
//! examples/ktstr-examples/tests/harness_verdicts.rs.)

use super::*;
use crate::shm::{FrameType, FrameWriter, FRAME_HEADER_LEN, HEADER_LEN};
use crate::topology::Topology;
use crate::vm::ConsoleMode;

/// One step of the scripted guest, taken at the poll with its index.
enum Step {
    Frame(FrameType, &'static [u8]),
    /// Bytes written straight into the frame area at the writer's offset, as a buggy or
    /// hostile guest would (not through the writer, so its offset does not move).
    Garbage,
    Console(&'static str),
    End(VmEnd),
}

struct Scripted {
    region: Vec<u64>,
    writer: FrameWriter,
    console: Console,
    script: Vec<(usize, Step)>,
    polls: usize,
    reads: usize,
    ended: Option<VmEnd>,
    stopped: Option<VmEnd>,
    halted: bool,
    /// Written during halt: the guest's last frame, only readable after the end.
    on_halt: Option<(FrameType, &'static [u8])>,
}

impl Scripted {
    fn new(console: &Console, script: Vec<(usize, Step)>) -> Box<Self> {
        let mut region = vec![0u64; 4096];
        let len = region.len() * 8;
        // SAFETY: the Vec's buffer is 8-byte aligned, `len` bytes long and lives in the same
        // box as the writer (moving a Vec does not move its buffer); only the writer writes.
        let writer = unsafe { FrameWriter::init(region.as_mut_ptr().cast(), len) }.unwrap();
        Box::new(Scripted {
            region,
            writer,
            console: console.clone(),
            script,
            polls: 0,
            reads: 0,
            ended: None,
            stopped: None,
            halted: false,
            on_halt: None,
        })
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the u64 buffer viewed as bytes, same length in bytes, no writer active now.
        unsafe { std::slice::from_raw_parts(self.region.as_ptr().cast(), self.region.len() * 8) }
    }

    fn step(&mut self) {
        let now = self.polls;
        self.polls += 1;
        let steps: Vec<Step> = {
            let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.script)
                .into_iter()
                .partition(|(at, _)| *at == now);
            self.script = rest;
            due.into_iter().map(|(_, s)| s).collect()
        };
        for s in steps {
            match s {
                Step::Frame(k, p) => self.writer.write(k, p).unwrap(),
                Step::Garbage => {
                    // A frame header with a bad checksum, published by moving write_off.
                    let off = u64::from_le_bytes(self.bytes()[24..32].try_into().unwrap());
                    let at = HEADER_LEN as usize + off as usize;
                    let mut fh = [0u8; FRAME_HEADER_LEN + 8];
                    fh[0..4].copy_from_slice(&2u32.to_le_bytes());
                    fh[8..12].copy_from_slice(&8u32.to_le_bytes());
                    fh[12..16].copy_from_slice(&0xdead_beefu32.to_le_bytes());
                    let region: &mut [u8] = bytemuck_mut(&mut self.region);
                    region[at..at + fh.len()].copy_from_slice(&fh);
                    region[24..32].copy_from_slice(&(off + fh.len() as u64).to_le_bytes());
                }
                Step::Console(t) => self.console.push(t.as_bytes()),
                Step::End(e) => self.ended = Some(e),
            }
        }
    }
}

fn bytemuck_mut(v: &mut [u64]) -> &mut [u8] {
    // SAFETY: u64 has no invalid bit patterns as bytes; same allocation, 8× the length.
    unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr().cast(), v.len() * 8) }
}

impl Machine for Scripted {
    fn read_channel(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.reads += 1;
        let o = offset as usize;
        buf.copy_from_slice(&self.bytes()[o..o + buf.len()]);
        Ok(())
    }
    fn ended(&mut self) -> Option<VmEnd> {
        self.ended.clone()
    }
    fn wait(&mut self, d: Duration) {
        std::thread::sleep(d.min(Duration::from_millis(2)));
        self.step();
    }
    fn stop(&mut self, why: &VmEnd) {
        self.stopped = Some(why.clone());
    }
    fn halt(&mut self, end: VmEnd) -> VmEnd {
        self.halted = true;
        if let Some((k, p)) = self.on_halt.take() {
            self.writer.write(k, p).unwrap();
        }
        end
    }
}

fn spec(timeout: Duration) -> VmSpec {
    let mut s = VmSpec::new(
        "k".into(),
        "i".into(),
        Topology::parse_label("1n1l1c1t").unwrap(),
    );
    s.timeout = timeout;
    s.shm_size = 4096 * 8;
    s.console = ConsoleMode::Capture;
    s
}

fn run(
    timeout: Duration,
    script: Vec<(usize, Step)>,
    on_halt: Option<(FrameType, &'static [u8])>,
) -> (Finished, Box<Scripted>) {
    let mut sp = spec(timeout);
    let session = Session::new(&mut sp);
    let mut m = Scripted::new(session.console(), script);
    m.on_halt = on_halt;
    let f = session.run(m.as_mut(), Instant::now(), None);
    (f, m)
}

fn kinds(f: &Finished) -> Vec<FrameType> {
    f.frames.iter().map(|f| f.kind).collect()
}

#[test]
fn boot_to_init_starts_at_hello_not_at_the_first_frame() {
    let (f, m) = run(
        Duration::from_secs(30),
        vec![
            (2, Step::Frame(FrameType::Stdout, b"early")),
            (6, Step::Frame(FrameType::Hello, b"{}")),
            (8, Step::End(VmEnd::GuestExit { status: 0 })),
        ],
        Some((FrameType::Exit, &[0, 0, 0, 0])),
    );
    assert_eq!(f.end, VmEnd::GuestExit { status: 0 });
    // The frame written while halting is read after the end.
    assert!(m.halted);
    assert_eq!(
        kinds(&f),
        [FrameType::Stdout, FrameType::Hello, FrameType::Exit]
    );
    let hello = f.hello_at.expect("hello seen");
    assert!(hello > f.started && hello <= f.ended_at);
    // A guest that never says hello has no boot-to-init time, whatever else it sent.
    let (f, _) = run(
        Duration::from_secs(30),
        vec![
            (1, Step::Frame(FrameType::Stdout, b"x")),
            (3, Step::End(VmEnd::Reboot)),
        ],
        None,
    );
    assert!(f.hello_at.is_none());
    let o = f.outcome(BackendKind::Qemu, Instant::now() - Duration::from_millis(1));
    assert_eq!(o.times.boot_to_init, None);
    assert_eq!(o.end, VmEnd::Reboot);
}

#[test]
fn a_corrupt_frame_stops_reading_and_is_reported() {
    let (f, m) = run(
        Duration::from_secs(30),
        vec![
            (1, Step::Frame(FrameType::Hello, b"{}")),
            (3, Step::Garbage),
            (20, Step::End(VmEnd::GuestExit { status: 0 })),
        ],
        None,
    );
    assert_eq!(kinds(&f), [FrameType::Hello]);
    let err = f.channel_error.expect("the corrupt frame is reported");
    assert!(err.contains("checksum") || err.contains("frame"), "{err}");
    // Reading stopped at the bad frame: the reads of ~5 polls, not of all ~21.
    assert!(
        m.reads < 20,
        "{} reads after the channel was poisoned",
        m.reads
    );
    assert_eq!(f.end, VmEnd::GuestExit { status: 0 });
}

#[test]
fn a_panic_on_the_console_ends_a_guest_that_does_not_reboot() {
    let t0 = Instant::now();
    let (f, m) = run(
        Duration::from_secs(60),
        vec![(
            1,
            Step::Console("[ 3.1] Kernel panic - not syncing: sysrq triggered crash\n"),
        )],
        None,
    );
    let want = VmEnd::Panic {
        message: "Kernel panic - not syncing: sysrq triggered crash".into(),
    };
    assert_eq!(f.end, want);
    assert_eq!(m.stopped, Some(want));
    assert!(t0.elapsed() >= PANIC_GRACE && t0.elapsed() < Duration::from_secs(30));
    assert!(f.console_tail.contains("sysrq triggered crash"));
}

#[test]
fn a_reboot_after_a_panic_is_the_panic_and_the_watchdog_stops_a_hang() {
    let (f, m) = run(
        Duration::from_secs(60),
        vec![
            (1, Step::Console("Kernel panic - not syncing: oops\n")),
            (2, Step::End(VmEnd::Reboot)),
        ],
        None,
    );
    assert!(matches!(&f.end, VmEnd::Panic { message } if message.ends_with("oops")));
    assert_eq!(m.stopped, None, "the guest ended by itself");
    let (f, m) = run(Duration::from_millis(150), vec![], None);
    let want = VmEnd::Timeout {
        after: Duration::from_millis(150),
    };
    assert_eq!(f.end, want);
    assert_eq!(m.stopped, Some(want));
    assert!(m.halted);
}

#[test]
fn the_cancel_flag_stops_the_guest() {
    let mut sp = spec(Duration::from_secs(60));
    let cancel = sp.cancel.clone();
    let session = Session::new(&mut sp);
    let mut m = Scripted::new(session.console(), vec![]);
    cancel.store(true, Ordering::SeqCst);
    let f = session.run(m.as_mut(), Instant::now(), None);
    assert_eq!(f.end, VmEnd::Cancelled);
    assert_eq!(m.stopped, Some(VmEnd::Cancelled));
}

#[test]
fn classify_only_turns_crash_like_ends_into_the_panic() {
    let p = || Some("Kernel panic - not syncing: x".to_string());
    let panic = VmEnd::Panic {
        message: "Kernel panic - not syncing: x".into(),
    };
    assert_eq!(classify(VmEnd::Reboot, p()), panic);
    assert_eq!(
        classify(
            VmEnd::TripleFault {
                detail: "cpu 0".into()
            },
            p()
        ),
        panic
    );
    assert_eq!(
        classify(
            VmEnd::Timeout {
                after: Duration::from_secs(1)
            },
            p()
        ),
        panic
    );
    assert_eq!(
        classify(VmEnd::GuestExit { status: 0 }, p()),
        VmEnd::GuestExit { status: 0 }
    );
    assert_eq!(classify(VmEnd::Cancelled, p()), VmEnd::Cancelled);
    assert_eq!(classify(VmEnd::Reboot, None), VmEnd::Reboot);
}

#[test]
fn frames_reach_the_sink_as_they_arrive() {
    let mut sp = spec(Duration::from_secs(30));
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    sp.frame_sink = Some(Box::new(move |f: &Frame| {
        s2.lock().unwrap().push(f.kind);
    }));
    let session = Session::new(&mut sp);
    let mut m = Scripted::new(
        session.console(),
        vec![
            (1, Step::Frame(FrameType::Hello, b"{}")),
            (2, Step::Frame(FrameType::Stdout, b"a")),
            (3, Step::End(VmEnd::GuestExit { status: 1 })),
        ],
    );
    let f = session.run(m.as_mut(), Instant::now(), None);
    assert_eq!(*seen.lock().unwrap(), kinds(&f));
    assert_eq!(f.frames.len(), 2);
}
