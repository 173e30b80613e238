//! The guest side of a case: PID 1 of the VM resolves its case, starts the scheduler, runs the
//! body, checks the scheduler survived, and sends the verdict.

use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use super::case_file::{CaseFile, CASE_FILE};
use super::sched::{self, SchedExit, SchedulerExit, SchedulerProcess};
use crate::assert::{AssertResult, DetailKind};
use crate::guest::{self, EXIT_SETUP_FAILED};
use crate::registry::matrix::{CaseSpec, KernelSet, Matrix};
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
    run_case_file(&cf)
}

/// Runs the case `cf` describes on this machine (a VM's guest, or bare metal for an exported
/// `.run`): sysctls, the scheduler, the body, the scheduler's fate.
pub(super) fn run_case_file(cf: &CaseFile) -> Result<AssertResult, String> {
    let case = Matrix::new(&KTSTR_TESTS, KernelSet::none())
        .resolve(&cf.name)
        .map_err(|e| format!("the guest cannot resolve case {:?}: {e}", cf.name))?;
    for (k, v) in &cf.sysctls {
        sched::write_sysctl(k, v).map_err(|e| format!("sysctl {k}={v}: {e}"))?;
    }
    let scale = cf.time_scale.max(1.0);
    let mut ctx = Ctx::for_case(&case);
    ctx.time_scale = scale;
    if let Some(d) = cf.duration_s {
        ctx.duration = Duration::from_secs(d.into());
    }
    let watchdog_s = cf
        .watchdog_timeout_s
        .unwrap_or(case.test.watchdog_timeout_s);
    ctx.topo = crate::scenario::TestTopology::detect(&case.topology);
    let mut scheduler = None;
    if let Some(path) = &cf.scheduler {
        // BPF run counters (`kernel.bpf_stats_enabled`) stay off unless the test's sysctls
        // turn them on: they add two clock reads to every callback, which on the nested KVM
        // lane slowed scx_demo enough to overrun a step.
        let mut argv = cf.sched_argv.clone();
        if let Some(arg) = case.scheduler.watchdog_arg {
            argv.push(arg.to_string());
            argv.push(watchdog_ms(watchdog_s, scale).to_string());
        }
        // Loading BPF under emulation takes seconds; the wait scales with the backend.
        let timeout = Duration::from_secs_f64(20.0 * scale);
        match SchedulerProcess::start(path, &argv, timeout) {
            Ok(p) => {
                ctx.sched_pid = Some(p.pid());
                let _ = guest::send(
                    FrameType::Log,
                    format!(
                        "ktstr guest: scheduler {} enabled after {} ms (pid {}, args: {})\n",
                        p.ops,
                        p.load_time.as_millis(),
                        p.pid(),
                        argv.join(" ")
                    )
                    .as_bytes(),
                );
                // Which scheduler really attached, for the sidecar.
                let attached = serde_json::json!({
                    "scheduler_attached": {
                        "ops": p.ops,
                        "enable_ms": p.load_time.as_millis() as u64,
                    }
                });
                let _ = guest::send(FrameType::Telemetry, attached.to_string().as_bytes());
                if !case.scheduler.ops_matches(&p.ops) {
                    let want = case.scheduler.ops_name.unwrap_or(case.scheduler.name);
                    return Ok(AssertResult::fail(
                        DetailKind::Other,
                        format!(
                            "the scheduler that attached is {:?}, not the declared {want:?}; \
                             if {:?} is the right ops name, declare it with ops_name: {:?}",
                            p.ops, p.ops, p.ops
                        ),
                    ));
                }
                scheduler = Some(p);
            }
            Err(e) => {
                let d = report_exit(&e);
                return Ok(AssertResult::fail(DetailKind::SchedulerDied, d.summary));
            }
        }
    }
    let mut result = run_body(&case, &ctx);
    if let Some(mut p) = scheduler {
        // While the scheduler's programs are still loaded.
        send_verifier_stats();
        let died = p.check();
        let code = p.stop(Duration::from_secs_f64(2.0 * scale));
        match died {
            Err(mut e) => {
                if let SchedExit::Died { code: c @ None, .. } = &mut e {
                    *c = code;
                }
                let d = report_exit(&e);
                // The scheduler's death is the cause: put it first.
                result = AssertResult::fail(DetailKind::SchedulerDied, d.summary).merge(result);
            }
            Ok(()) => send_sched_log(),
        }
    }
    Ok(result)
}

/// The watchdog timeout handed to the scheduler: the test's seconds, stretched on slow
/// backends (a healthy scheduler under TCG must not trip it), within sched_ext's 30 s cap.
fn watchdog_ms(timeout_s: u32, scale: f64) -> u64 {
    ((timeout_s as f64 * 1000.0 * scale) as u64).clamp(1, 30_000)
}

/// Diagnoses why the scheduler went away and sends the log, the diagnosis (`SchedExit`
/// frame) to the host.
fn report_exit(e: &SchedExit) -> SchedulerExit {
    let log = sched::log_tail(256 * 1024);
    let dmesg = String::from_utf8_lossy(&read_kmsg()).into_owned();
    let d = sched::diagnose(e, &log, &dmesg);
    send_sched_log();
    if let Ok(json) = serde_json::to_vec(&d) {
        let _ = guest::send(FrameType::SchedExit, &json);
    }
    d
}

/// Sends the loaded BPF programs (the scheduler's: nothing else loads BPF in the guest) with
/// their verified instructions and run counters, for the sidecar's `verifier_stats`.
fn send_verifier_stats() {
    let msg = match crate::bpf_progs::loaded_programs() {
        Ok(progs) => serde_json::json!({ "verifier_stats": verifier_stats(&progs) }),
        Err(e) => serde_json::json!({ "verifier_stats_error": e.to_string() }),
    };
    let _ = guest::send(FrameType::Telemetry, msg.to_string().as_bytes());
}

/// The sidecar's `verifier_stats`: every program, and the totals.
pub fn verifier_stats(progs: &[crate::bpf_progs::ProgInfo]) -> serde_json::Value {
    serde_json::json!({
        "programs": progs,
        "total_verified_insns": progs.iter().map(|p| u64::from(p.verified_insns)).sum::<u64>(),
        "total_run_cnt": progs.iter().map(|p| p.run_cnt).sum::<u64>(),
        "total_run_time_ns": progs.iter().map(|p| p.run_time_ns).sum::<u64>(),
    })
}

fn send_sched_log() {
    let log = sched::log_tail(256 * 1024);
    let _ = guest::send_chunked(FrameType::Log, log.as_bytes());
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
        // Only the message line: " KEY=value" dictionary lines may follow it.
        let text = match text.iter().position(|&b| b == b'\n') {
            Some(i) => &text[..=i],
            None => text,
        };
        out.extend_from_slice(text);
        if out.len() > 1 << 20 {
            break;
        }
    }
    out
}

/// Runs the test body: its result with the payload runs it made folded in, or a failure for
/// an error or a panic.
fn run_body(case: &CaseSpec, ctx: &Ctx) -> AssertResult {
    let func = case.test.func;
    let body = std::panic::catch_unwind(AssertUnwindSafe(|| func(ctx)));
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
    result.add_payload_outcomes(ctx.payloads.take());
    result
}

#[cfg(test)]
mod tests {
    use super::watchdog_ms;

    #[test]
    fn watchdog_scales_and_caps() {
        assert_eq!(watchdog_ms(4, 1.0), 4000);
        assert_eq!(watchdog_ms(1, 4.0), 4000);
        assert_eq!(watchdog_ms(20, 4.0), 30_000);
    }
}
