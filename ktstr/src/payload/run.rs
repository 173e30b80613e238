//! Running a payload: the builder a test body gets from `ctx.payload(..)`, the handle of a
//! running one, and the log that carries every finished run to the case's result.

use std::io::Read;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::metrics::{extract_metrics, failed_checks, repeated_hint, Check, PayloadMetrics};
use super::Payload;
use crate::cgroup::CgroupOps;

/// Why a payload could not be run.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The binary is neither a path nor a name in the host's `PATH`.
    #[error(
        "payload {name}: {binary:?} is not a program on this host (neither a path nor a name in \
         PATH); install it or give its path"
    )]
    NotOnHost {
        /// Payload name.
        name: String,
        /// What was looked for.
        binary: String,
    },
    /// Two of its metric hints share a name.
    #[error("payload {name}: metric hint {metric:?} is listed twice; hint names must be unique")]
    RepeatedHint {
        /// Payload name.
        name: String,
        /// The repeated name.
        metric: String,
    },
    /// It could not be started.
    #[error("payload {name}: could not start {program}: {cause}")]
    Start {
        /// Payload name.
        name: String,
        /// The program run.
        program: String,
        /// The OS error.
        cause: std::io::Error,
    },
    /// Waiting for it failed.
    #[error("payload {name}: waiting for it failed: {cause}")]
    Wait {
        /// Payload name.
        name: String,
        /// The OS error.
        cause: std::io::Error,
    },
}

/// A finished run: its metrics and why its checks failed (empty: they held).
#[derive(Debug, Clone, PartialEq)]
pub struct PayloadOutcome {
    /// What the sidecar records.
    pub metrics: PayloadMetrics,
    /// One message per failed check (`Benchmark` details of the case).
    pub failures: Vec<String>,
}

/// Every payload run of one case, in the order they finished; the case runner folds it into
/// the result after the body returns. Shared by the clones of a `Ctx`.
#[derive(Debug, Default)]
pub struct PayloadLog {
    next_index: AtomicUsize,
    done: Mutex<Vec<PayloadOutcome>>,
}

impl PayloadLog {
    /// Takes every outcome recorded so far.
    pub fn take(&self) -> Vec<PayloadOutcome> {
        std::mem::take(&mut *self.done.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn index(&self) -> usize {
        self.next_index.fetch_add(1, Ordering::Relaxed)
    }

    fn record(&self, o: PayloadOutcome) {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).push(o);
    }
}

/// One run of a payload being set up: `ctx.payload(&P).args([..]).checks([..]).in_cgroup("cg")`,
/// then [`PayloadRun::run`] or [`PayloadRun::spawn`].
pub struct PayloadRun<'a> {
    payload: &'a Payload,
    args: Vec<String>,
    checks: Option<Vec<Check>>,
    cgroup_dir: Option<PathBuf>,
    timeout: Duration,
    log: Arc<PayloadLog>,
    cgroups: Option<Arc<dyn CgroupOps>>,
}

impl<'a> PayloadRun<'a> {
    /// A run of `payload` recorded in `log`, stopped after `timeout` (what `ctx.payload` uses
    /// is the case's duration plus 30 s, times the backend's time scale).
    pub fn new(payload: &'a Payload, log: Arc<PayloadLog>, timeout: Duration) -> Self {
        PayloadRun {
            payload,
            args: Vec::new(),
            checks: None,
            cgroup_dir: None,
            timeout,
            log,
            cgroups: None,
        }
    }

    /// Resolves [`PayloadRun::in_cgroup`] names with this cgroup manager (the test's).
    pub fn with_cgroups(mut self, ops: Arc<dyn CgroupOps>) -> Self {
        self.cgroups = Some(ops);
        self
    }

    /// Runs it in the test cgroup `name` (one the scenario created).
    pub fn in_cgroup(self, name: &str) -> Self {
        let dir = match &self.cgroups {
            Some(ops) => ops.path(name),
            None => PathBuf::from(name),
        };
        self.in_cgroup_dir(dir)
    }

    /// Arguments after the payload's default ones.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Checks for this run, in place of the payload's default ones.
    pub fn checks<I: IntoIterator<Item = Check>>(mut self, checks: I) -> Self {
        self.checks = Some(checks.into_iter().collect());
        self
    }

    /// Runs it in this cgroup directory (`ctx.payload(..).in_cgroup(name)` resolves a test
    /// cgroup's name to it).
    pub fn in_cgroup_dir(mut self, dir: PathBuf) -> Self {
        self.cgroup_dir = Some(dir);
        self
    }

    /// Stops it (as a failure) if it runs longer than this.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Runs it to the end (or the timeout) and returns its metrics. Failed checks do not make
    /// this an error: they fail the case once the body returns.
    pub fn run(self) -> Result<PayloadMetrics, PayloadError> {
        self.spawn()?.wait()
    }

    /// Starts it and returns at once.
    pub fn spawn(self) -> Result<PayloadHandle, PayloadError> {
        let p = self.payload;
        if let Some(m) = repeated_hint(p.metrics) {
            return Err(PayloadError::RepeatedHint {
                name: p.name.to_string(),
                metric: m.to_string(),
            });
        }
        let mut child = p
            .start(&self.args, self.cgroup_dir, true)
            .map_err(|cause| PayloadError::Start {
                name: p.name.to_string(),
                program: p.program().display().to_string(),
                cause,
            })?;
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        Ok(PayloadHandle {
            payload: p.clone(),
            index: self.log.index(),
            checks: self.checks.unwrap_or_else(|| p.default_checks.to_vec()),
            child,
            stdout,
            stderr,
            deadline: Instant::now() + self.timeout,
            log: self.log,
            done: false,
        })
    }
}

/// Reads a pipe to its end on a thread of its own, so a chatty payload never blocks on a full
/// pipe while the test waits for it.
fn drain<R: Read + Send + 'static>(mut r: R) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// A running payload. Dropping it kills it without recording a result.
pub struct PayloadHandle {
    payload: Payload,
    index: usize,
    checks: Vec<Check>,
    child: Child,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    deadline: Instant,
    log: Arc<PayloadLog>,
    done: bool,
}

impl PayloadHandle {
    /// The payload's name.
    pub fn name(&self) -> &'static str {
        self.payload.name
    }

    /// Waits for it to end (killing it, as a failure, at its timeout) and returns its metrics.
    pub fn wait(self) -> Result<PayloadMetrics, PayloadError> {
        Ok(self.wait_outcome()?.metrics)
    }

    /// Its metrics if it has ended, `None` if it still runs.
    pub fn try_wait(&mut self) -> Result<Option<PayloadMetrics>, PayloadError> {
        match self.child.try_wait() {
            Ok(Some(_)) => Ok(Some(self.finish(false, None)?.metrics)),
            Ok(None) => Ok(None),
            Err(cause) => Err(self.wait_error(cause)),
        }
    }

    /// Kills it (its process group, unless it shares ours) and returns what it reported.
    /// Its exit code is not judged: the stop was ours.
    pub fn kill(mut self) -> Result<PayloadMetrics, PayloadError> {
        self.signal_kill();
        Ok(self.finish(true, None)?.metrics)
    }

    /// [`PayloadHandle::wait`], returning the whole outcome (failures included).
    pub(crate) fn wait_outcome(mut self) -> Result<PayloadOutcome, PayloadError> {
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return self.finish(false, None),
                Ok(None) if Instant::now() < self.deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => {
                    self.signal_kill();
                    let why = format!(
                        "payload {}: still running at its timeout; killed",
                        self.payload.name
                    );
                    return self.finish(true, Some(why));
                }
                Err(cause) => return Err(self.wait_error(cause)),
            }
        }
    }

    /// [`PayloadHandle::kill`], returning the whole outcome.
    pub(crate) fn kill_outcome(mut self) -> Result<PayloadOutcome, PayloadError> {
        self.signal_kill();
        self.finish(true, None)
    }

    fn wait_error(&self, cause: std::io::Error) -> PayloadError {
        PayloadError::Wait {
            name: self.payload.name.to_string(),
            cause,
        }
    }

    fn signal_kill(&mut self) {
        if !self.payload.uses_parent_pgrp {
            // Its own process group (see `Payload::start`): reach whatever it forked.
            // SAFETY: kill(2) with a negative PID signals a process group; no memory involved.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        }
        let _ = self.child.kill();
    }

    /// Reaps it, reads its output, judges its checks and records the outcome.
    fn finish(
        &mut self,
        killed: bool,
        extra: Option<String>,
    ) -> Result<PayloadOutcome, PayloadError> {
        let status = self.child.wait().map_err(|cause| self.wait_error(cause))?;
        self.done = true;
        let stdout = self
            .stdout
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let name = self.payload.name;
        let mut failures: Vec<String> = extra.into_iter().collect();
        let metrics = match extract_metrics(self.payload.output, &stdout) {
            Ok(m) => m,
            Err(why) if !killed => {
                failures.push(format!("payload {name}: {why}"));
                Default::default()
            }
            Err(_) => Default::default(),
        };
        let run = PayloadMetrics {
            payload_index: self.index,
            name: name.to_string(),
            metrics,
            exit_code: status.code(),
        };
        failures.extend(failed_checks(&self.checks, &run, killed));
        if !failures.is_empty() && !stderr.is_empty() {
            let tail = String::from_utf8_lossy(&stderr);
            let tail: String = tail
                .trim_end()
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ");
            failures.push(format!("payload {name}: its stderr ends: {tail}"));
        }
        let outcome = PayloadOutcome {
            metrics: run,
            failures,
        };
        self.log.record(outcome.clone());
        Ok(outcome)
    }
}

impl Drop for PayloadHandle {
    fn drop(&mut self) {
        if !self.done {
            self.signal_kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Check, OutputFormat};
    use super::*;

    fn sh(name: &'static str, script: &'static str) -> Payload {
        Payload::binary(name, "/bin/sh").default_args(Box::leak(Box::new(["-c", script])))
    }

    fn log() -> Arc<PayloadLog> {
        Arc::new(PayloadLog::default())
    }

    #[test]
    fn a_json_payloads_metrics_are_read_checked_and_logged() {
        let p = sh(
            "bench",
            r#"echo 'warming up'; echo '{"lat": {"max": 70, "avg": 5}}'"#,
        )
        .output(OutputFormat::Json);
        let l = log();
        let m = PayloadRun::new(&p, l.clone(), Duration::from_secs(10))
            .checks([Check::Max {
                metric: "lat.max",
                value: 50.0,
            }])
            .run()
            .unwrap();
        assert_eq!(m.exit_code, Some(0));
        assert_eq!(m.metrics["lat.max"], 70.0);
        assert_eq!(m.metrics["lat.avg"], 5.0);
        let out = l.take();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].metrics, m);
        assert_eq!(
            out[0].failures,
            ["payload bench: lat.max = 70 > maximum 50"]
        );
        assert!(l.take().is_empty(), "taken once");
    }

    #[test]
    fn runs_are_indexed_in_start_order_and_args_follow_the_defaults() {
        let p = sh("echo", r#"echo "{\"n\": $0}""#).output(OutputFormat::Json);
        let l = log();
        let a = PayloadRun::new(&p, l.clone(), Duration::from_secs(10))
            .args(["7"])
            .spawn()
            .unwrap();
        let b = PayloadRun::new(&p, l.clone(), Duration::from_secs(10))
            .args(["9"])
            .spawn()
            .unwrap();
        let (mb, ma) = (b.wait().unwrap(), a.wait().unwrap());
        assert_eq!((ma.payload_index, ma.metrics["n"]), (0, 7.0));
        assert_eq!((mb.payload_index, mb.metrics["n"]), (1, 9.0));
        assert!(l.take().iter().all(|o| o.failures.is_empty()));
    }

    #[test]
    fn a_failing_payload_fails_with_its_exit_code_and_stderr() {
        let p = sh("crash", "echo 'no such device' >&2; exit 3");
        let l = log();
        let m = PayloadRun::new(&p, l.clone(), Duration::from_secs(10))
            .run()
            .unwrap();
        assert_eq!(m.exit_code, Some(3));
        assert_eq!(
            l.take()[0].failures,
            [
                "payload crash: exit code 3",
                "payload crash: its stderr ends: no such device"
            ]
        );
    }

    #[test]
    fn a_killed_or_timed_out_payload_is_reaped_with_its_process_group() {
        let p = sh("sleeper", "sleep 30 & sleep 30; echo never");
        let l = log();
        let mut h = PayloadRun::new(&p, l.clone(), Duration::from_secs(10))
            .spawn()
            .unwrap();
        assert_eq!(h.try_wait().unwrap(), None);
        let started = Instant::now();
        let m = h.kill().unwrap();
        assert_eq!(m.exit_code, None);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(l.take()[0].failures.is_empty(), "a kill is not a failure");
        let t = PayloadRun::new(&p, l.clone(), Duration::from_millis(200))
            .run()
            .unwrap();
        assert_eq!(t.exit_code, None);
        assert_eq!(
            l.take()[0].failures,
            ["payload sleeper: still running at its timeout; killed"]
        );
    }

    #[test]
    fn a_missing_program_or_repeated_hint_is_an_error() {
        let l = log();
        let p = Payload::binary("gone", "/nonexistent/bench");
        let e = PayloadRun::new(&p, l.clone(), Duration::from_secs(1))
            .run()
            .unwrap_err()
            .to_string();
        assert!(e.contains("could not start /nonexistent/bench"), "{e}");
        let h = super::super::MetricHint {
            name: "x",
            polarity: super::super::Polarity::Unknown,
            unit: "",
        };
        let dup: &'static [super::super::MetricHint] = Box::leak(Box::new([h, h]));
        let p = Payload::binary("dup", "/bin/true").metrics(dup);
        let e = PayloadRun::new(&p, l, Duration::from_secs(1))
            .run()
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"x\" is listed twice"), "{e}");
    }
}
