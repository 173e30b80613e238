//! The sched_ext scheduler inside the guest: start it, wait until sched_ext says it is
//! enabled, watch it, stop it, and say why it went away.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// sched_ext's state file ("enabled", "disabled", ...).
pub const SCX_STATE: &str = "/sys/kernel/sched_ext/state";
/// The name of the attached scheduler's ops.
pub const SCX_OPS: &str = "/sys/kernel/sched_ext/root/ops";
/// Where the scheduler's stdout and stderr go in the guest.
pub const SCHED_LOG: &str = "/tmp/ktstr-scheduler.log";

/// Why the scheduler is not (or no longer) running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SchedExit {
    /// It could not be started at all.
    SpawnFailed(String),
    /// It exited before sched_ext reported it enabled.
    ExitedBeforeEnable {
        /// Exit code, or 128 + signal.
        code: i32,
    },
    /// sched_ext did not report it enabled in time.
    EnableTimeout {
        /// The state file's last content.
        state: String,
    },
    /// It exited (or was kicked out) while the test ran.
    Died {
        /// Exit code, or 128 + signal, if the process is gone.
        code: Option<i32>,
        /// sched_ext's state at that moment.
        state: String,
    },
}

impl SchedExit {
    /// A one-line description.
    pub fn describe(&self) -> String {
        match self {
            SchedExit::SpawnFailed(e) => format!("scheduler failed to start: {e}"),
            SchedExit::ExitedBeforeEnable { code } => {
                format!("scheduler failed to load: it exited with code {code} before sched_ext reported it enabled")
            }
            SchedExit::EnableTimeout { state } => {
                format!("scheduler never became enabled (sched_ext state {state:?})")
            }
            SchedExit::Died {
                code: Some(c),
                state,
            } => {
                format!(
                    "scheduler exited with code {c} during the test (sched_ext state {state:?})"
                )
            }
            SchedExit::Died { code: None, state } => {
                format!("scheduler was kicked out of sched_ext during the test (state {state:?}); the process is still running")
            }
        }
    }
}

fn read_trim(p: &str) -> String {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn code_of(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// A running scheduler process.
pub struct SchedulerProcess {
    child: Child,
    /// The ops name sched_ext reported.
    pub ops: String,
}

impl SchedulerProcess {
    /// Starts `path argv...` and waits up to `timeout` for sched_ext to report it enabled.
    pub fn start(path: &str, argv: &[String], timeout: Duration) -> Result<Self, SchedExit> {
        let log = fs::File::create(SCHED_LOG).map_err(|e| SchedExit::SpawnFailed(e.to_string()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| SchedExit::SpawnFailed(e.to_string()))?;
        let mut child = Command::new(path)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| SchedExit::SpawnFailed(format!("{path}: {e}")))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(SchedExit::ExitedBeforeEnable { code: code_of(st) });
            }
            let state = read_trim(SCX_STATE);
            let ops = read_trim(SCX_OPS);
            if state == "enabled" && !ops.is_empty() {
                return Ok(SchedulerProcess { child, ops });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SchedExit::EnableTimeout { state });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The scheduler's PID.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `Ok` while the process runs and sched_ext still has it attached.
    pub fn check(&mut self) -> Result<(), SchedExit> {
        let state = read_trim(SCX_STATE);
        match self.child.try_wait() {
            Ok(Some(st)) => Err(SchedExit::Died {
                code: Some(code_of(st)),
                state,
            }),
            _ if state != "enabled" => Err(SchedExit::Died { code: None, state }),
            _ => Ok(()),
        }
    }

    /// Stops the scheduler (SIGINT, then SIGKILL after `grace`) and returns its exit code.
    pub fn stop(mut self, grace: Duration) -> Option<i32> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(code_of(st));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return self.child.wait().ok().map(code_of);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The scheduler log written so far (last `max` bytes).
pub fn log_tail(max: usize) -> String {
    let b = fs::read(SCHED_LOG).unwrap_or_default();
    String::from_utf8_lossy(&b[b.len().saturating_sub(max)..]).into_owned()
}

/// Writes `value` to the sysctl `key` (`kernel.sched_x` → `/proc/sys/kernel/sched_x`).
pub fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    fs::write(path, value)
}
