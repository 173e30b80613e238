//! The guest side of a case: PID 1 of the VM resolves its case, starts the scheduler, runs the
//! body, checks the scheduler survived, and sends the verdict.

use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use super::case_file::{CaseFile, CASE_FILE};
use super::sched::{self, SchedulerProcess};
use crate::assert::{AssertResult, DetailKind};
use crate::guest::{self, EXIT_SETUP_FAILED};
use crate::registry::matrix::{KernelSet, Matrix};
use crate::registry::{Ctx, KTSTR_TESTS};
use crate::shm::FrameType;

/// Entry point of the test binary when it runs as PID 1 inside the guest. Never returns: the
/// VM ends through the exit port with status 0 once a Result frame was sent.
pub fn guest_main() -> ! {
    if let Err(e) = guest::boot() {
        eprintln!("ktstr guest: {e}");
        let _ = guest::send(FrameType::Log, e.to_string().as_bytes());
        guest::exit(EXIT_SETUP_FAILED as i32);
    }
    let result = match run() {
        Ok(r) => r,
        Err(e) => AssertResult::fail(DetailKind::Other, e),
    };
    let _ = guest::send_chunked(FrameType::Dmesg, &read_kmsg());
    let json = serde_json::to_vec(&result).unwrap_or_default();
    let _ = guest::send(FrameType::Result, &json);
    guest::exit(0)
}

fn run() -> Result<AssertResult, String> {
    let bytes = std::fs::read(CASE_FILE).map_err(|e| format!("reading {CASE_FILE}: {e}"))?;
    let cf: CaseFile =
        serde_json::from_slice(&bytes).map_err(|e| format!("parsing {CASE_FILE}: {e}"))?;
    let case = Matrix::new(&KTSTR_TESTS, KernelSet::none())
        .resolve(&cf.name)
        .map_err(|e| format!("the guest cannot resolve case {:?}: {e}", cf.name))?;
    for (k, v) in &cf.sysctls {
        sched::write_sysctl(k, v).map_err(|e| format!("sysctl {k}={v}: {e}"))?;
    }
    let scale = cf.time_scale.max(1.0);
    let mut ctx = Ctx::for_case(&case);
    ctx.time_scale = scale;
    ctx.topo = crate::scenario::TestTopology::detect(&case.topology);
    let mut scheduler = None;
    if let Some(path) = &cf.scheduler {
        let timeout = Duration::from_secs_f64(10.0 * scale);
        match SchedulerProcess::start(path, &cf.sched_argv, timeout) {
            Ok(p) => {
                ctx.sched_pid = Some(p.pid());
                let _ = guest::send(
                    FrameType::Log,
                    format!("scheduler {} enabled (pid {})", p.ops, p.pid()).as_bytes(),
                );
                scheduler = Some(p);
            }
            Err(e) => {
                send_sched_log();
                return Ok(AssertResult::fail(DetailKind::SchedulerDied, e.describe()));
            }
        }
    }
    let func = case.test.func;
    let body = std::panic::catch_unwind(AssertUnwindSafe(|| func(&ctx)));
    let mut result = match body {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => AssertResult::fail(DetailKind::Other, format!("test body failed: {e:#}")),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic payload".into());
            AssertResult::fail(DetailKind::Other, format!("test body panicked: {msg}"))
        }
    };
    if let Some(mut p) = scheduler {
        if let Err(e) = p.check() {
            result = result.merge(AssertResult::fail(DetailKind::SchedulerDied, e.describe()));
        }
        let _ = p.stop(Duration::from_secs(2));
        send_sched_log();
    }
    Ok(result)
}

fn send_sched_log() {
    let log = sched::log_tail(256 * 1024);
    let _ = guest::send_chunked(
        FrameType::Log,
        format!("--- scheduler log ---\n{log}").as_bytes(),
    );
}

/// The kernel log so far, from `/dev/kmsg` (non-blocking), as plain text lines.
fn read_kmsg() -> Vec<u8> {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut rec = vec![0u8; 8192];
    // Each read returns one record "prio,seq,usec,flags;text\n"; EAGAIN ends the log.
    while let Ok(n) = f.read(&mut rec) {
        if n == 0 {
            break;
        }
        let line = &rec[..n];
        let text = line
            .iter()
            .position(|&b| b == b';')
            .map_or(line, |i| &line[i + 1..]);
        out.extend_from_slice(text);
        if out.len() > 1 << 20 {
            break;
        }
    }
    out
}
