//! The sched_ext scheduler inside the guest: start it, wait until sched_ext says it is
//! enabled, watch it from a thread while the body runs, stop it, and say why it went away
//! ([`diagnose`] → [`SchedulerExit`]).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// sched_ext's state file ("enabled", "disabled", ...).
pub const SCX_STATE: &str = "/sys/kernel/sched_ext/state";
/// The name of the attached scheduler's ops.
pub const SCX_OPS: &str = "/sys/kernel/sched_ext/root/ops";
/// Where the scheduler's stdout and stderr go in the guest.
pub const SCHED_LOG: &str = "/tmp/ktstr-scheduler.log";
/// How often the watcher thread looks at the scheduler.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// First `scx_exit_kind` that is an error (`SCX_EXIT_ERROR`).
pub const SCX_EXIT_ERROR: i64 = 1024;

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
        /// How long the guest waited.
        waited: Duration,
    },
    /// It exited (or was kicked out) while the test ran.
    Died {
        /// Exit code, or 128 + signal, if the process is gone.
        code: Option<i32>,
        /// sched_ext's state when the watcher noticed.
        state: String,
        /// Time from "enabled" to the watcher noticing.
        after: Duration,
    },
}

impl SchedExit {
    /// A one-line description without the scheduler's own exit information (see
    /// [`diagnose`] for the full one).
    pub fn describe(&self) -> String {
        match self {
            SchedExit::SpawnFailed(e) => format!("scheduler failed to start: {e}"),
            SchedExit::ExitedBeforeEnable { code } => {
                format!("scheduler failed to load: it exited with code {code} before sched_ext reported it enabled")
            }
            SchedExit::EnableTimeout { state, waited } => format!(
                "scheduler failed to load: sched_ext did not report it enabled within {:.1} s (state {state:?})",
                waited.as_secs_f64()
            ),
            SchedExit::Died {
                code: Some(c),
                state,
                after,
            } => format!(
                "scheduler exited with code {c} {:.1} s after it was enabled (sched_ext state {state:?})",
                after.as_secs_f64()
            ),
            SchedExit::Died {
                code: None,
                state,
                after,
            } => format!(
                "scheduler was kicked out of sched_ext {:.1} s after it was enabled (state {state:?}); the process is still running",
                after.as_secs_f64()
            ),
        }
    }
}

/// Why the scheduler went away, as the host's verdict reports it: the guest's view
/// ([`SchedExit`]) combined with the scheduler's exit line and the kernel's sched_ext
/// messages. Travels to the host as a `SchedExit` frame (JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerExit {
    /// `"load"` (never got enabled) or `"run"` (went away during the test).
    pub phase: String,
    /// Process exit code (128 + signal), when it exited.
    pub code: Option<i32>,
    /// sched_ext exit kind (`enum scx_exit_kind`), when known.
    pub kind: Option<i64>,
    /// The kind's name (`ERROR_STALL`), when the scheduler printed it.
    pub kind_name: Option<String>,
    /// sched_ext's exit reason (`runnable task stall`, `scx_bpf_error`, ...).
    pub reason: Option<String>,
    /// sched_ext's exit message (which task stalled and for how long, the error text).
    pub msg: Option<String>,
    /// The BPF program the verifier rejected, for load failures.
    pub failed_prog: Option<String>,
    /// Tail of the verifier log, for load failures.
    pub verifier_tail: Vec<String>,
    /// Milliseconds from "enabled" until the watcher saw it go.
    pub died_after_ms: Option<u64>,
    /// The kernel's sched_ext lines (disable reason, message, backtrace).
    pub kernel_lines: Vec<String>,
    /// sched_ext's debug dump as the loader printed it (`NAME: dump: ` lines), if it did.
    #[serde(default)]
    pub dump: Vec<String>,
    /// The one-line diagnosis (the failure detail's message).
    pub summary: String,
}

impl SchedulerExit {
    /// Whether sched_ext's watchdog ejected the scheduler for a runnable-task stall.
    pub fn is_stall(&self) -> bool {
        self.kind == Some(1026) || self.reason.as_deref().is_some_and(|r| r.contains("stall"))
    }
}

/// Parses `key=value key2="quoted \"value\""` pairs (the status-line format scx_demo and
/// similar loaders print).
pub fn parse_kv(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            it.next();
        }
        if key.is_empty() && it.peek().is_none() {
            return out;
        }
        if it.peek() != Some(&'=') {
            if it.peek().is_none() {
                return out;
            }
            continue;
        }
        it.next();
        let mut val = String::new();
        if it.peek() == Some(&'"') {
            it.next();
            while let Some(c) = it.next() {
                match c {
                    '"' => break,
                    '\\' => match it.next() {
                        Some('n') => val.push('\n'),
                        Some('t') => val.push('\t'),
                        Some(o) => val.push(o),
                        None => break,
                    },
                    c => val.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                val.push(c);
                it.next();
            }
        }
        out.push((key, val));
    }
}

fn kv<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The kernel's sched_ext lines from a dmesg text: every line naming sched_ext, plus the
/// indented backtrace lines that follow an error report.
pub fn sched_ext_kernel_lines(dmesg: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_report = false;
    for line in dmesg.lines() {
        if line.contains("sched_ext") {
            // The message line after "disabled (...)" keeps the report open for its backtrace.
            in_report |= line.contains("disabled");
            out.push(line.to_string());
        } else if in_report && line.starts_with(' ') {
            out.push(line.to_string());
        } else {
            in_report = false;
        }
    }
    out
}

/// Combines the guest's view of the exit with the scheduler log and dmesg into a
/// [`SchedulerExit`] with a one-line summary naming the cause.
pub fn diagnose(exit: &SchedExit, log: &str, dmesg: &str) -> SchedulerExit {
    let mut d = SchedulerExit {
        kernel_lines: sched_ext_kernel_lines(dmesg),
        ..Default::default()
    };
    read_loader_log(&mut d, log);
    if d.reason.is_none() {
        read_kernel_report(&mut d);
    }
    match exit {
        SchedExit::SpawnFailed(_) | SchedExit::EnableTimeout { .. } => {
            d.phase = "load".into();
            d.summary = exit.describe();
        }
        SchedExit::ExitedBeforeEnable { code } => {
            d.phase = "load".into();
            d.code = Some(*code);
            d.summary = load_failure_summary(&d, *code, log);
        }
        SchedExit::Died { code, state, after } => {
            d.phase = "run".into();
            d.code = *code;
            d.died_after_ms = Some(after.as_millis() as u64);
            d.summary = run_exit_summary(&d, exit, *code, state, *after);
        }
    }
    d
}

/// Fills `d` from the loader's output: its exit record, debug dump and verifier report are
/// the most precise account of why the scheduler went away.
fn read_loader_log(d: &mut SchedulerExit, log: &str) {
    // The loader's own exit record (`NAME: exit kind=.. reason=".." msg=".."`).
    for line in log.lines() {
        let Some(i) = line.find(": exit kind=") else {
            if let Some(i) = line.find(": dump: ") {
                d.dump.push(line[i + ": dump: ".len()..].to_string());
            } else if let Some(i) = line.find(": load-failed ") {
                let p = parse_kv(&line[i + ": load-failed ".len()..]);
                d.failed_prog = kv(&p, "prog").map(str::to_string);
            } else if let Some(i) = line.find(": verifier: ") {
                d.verifier_tail
                    .push(line[i + ": verifier: ".len()..].to_string());
            }
            continue;
        };
        let p = parse_kv(&line[i + 2..]);
        d.kind = kv(&p, "kind").and_then(|k| k.parse().ok());
        d.kind_name = kv(&p, "kind_name").map(str::to_string);
        d.reason = kv(&p, "reason").map(str::to_string);
        d.msg = kv(&p, "msg").filter(|m| !m.is_empty()).map(str::to_string);
    }
}

/// Takes the reason and message from the kernel's report, for schedulers that print nothing.
fn read_kernel_report(d: &mut SchedulerExit) {
    // `sched_ext: BPF scheduler "NAME" disabled (REASON)` then `sched_ext: NAME: MSG`.
    for (n, line) in d.kernel_lines.iter().enumerate() {
        if let (Some(a), Some(b)) = (line.find(" disabled ("), line.rfind(')')) {
            if a < b {
                d.reason = Some(line[a + " disabled (".len()..b].to_string());
                d.msg = d.kernel_lines.get(n + 1).and_then(|next| {
                    let rest = &next[next.find("sched_ext: ")? + "sched_ext: ".len()..];
                    rest.split_once(": ").map(|(_, m)| m.to_string())
                });
            }
        }
    }
}

/// The summary of a scheduler that exited before it was enabled: the verifier's verdict if
/// it rejected a program, else the log's last failure line.
fn load_failure_summary(d: &SchedulerExit, code: i32, log: &str) -> String {
    if let Some(p) = &d.failed_prog {
        let last = d
            .verifier_tail
            .iter()
            .rev()
            .find(|l| !l.starts_with("processed ") && !l.trim().is_empty())
            .map(|l| format!(": {l}"))
            .unwrap_or_default();
        format!("scheduler failed to load: verifier rejected program {p}{last} (exit code {code})")
    } else {
        let why = log
            .lines()
            .rev()
            .find(|l| l.contains("failed") || l.contains("error"))
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        format!("scheduler failed to load: it exited with code {code} before sched_ext reported it enabled{why}")
    }
}

/// The summary of a scheduler that went away while the test ran: a stall, an error exit, a
/// non-error exit, or a bare process exit, most specific first.
fn run_exit_summary(
    d: &SchedulerExit,
    exit: &SchedExit,
    code: Option<i32>,
    state: &str,
    after: Duration,
) -> String {
    let code_note = |c: Option<i32>| c.map(|c| format!(", exit code {c}")).unwrap_or_default();
    let when = format!("{:.1} s after it was enabled", after.as_secs_f64());
    let msg = d.msg.clone().unwrap_or_default();
    let reason = d.reason.clone().unwrap_or_default();
    if d.is_stall() {
        format!(
            "stall detected: {msg} (sched_ext watchdog ejected the scheduler: {reason}; {when}{})",
            code_note(code)
        )
    } else if d.kind.is_some_and(|k| k >= SCX_EXIT_ERROR)
        || (d.kind.is_none() && !reason.is_empty())
    {
        // Without the loader's record, a kernel "disabled (REASON)" report is an error.
        let name = d
            .kind_name
            .clone()
            .or(d.kind.map(|k| k.to_string()))
            .unwrap_or_else(|| "?".into());
        format!(
            "scheduler exited with error {name} ({reason}): {msg} ({when}{})",
            code_note(code)
        )
    } else if !reason.is_empty() {
        // A non-error exit while the test ran (unregistered, SysRq, ...).
        let name = d.kind_name.clone().unwrap_or_default();
        format!(
            "scheduler exited during the test: {name} ({reason}) ({when}{})",
            code_note(code)
        )
    } else {
        match code {
            Some(c) => {
                format!("scheduler exited with code {c} {when} (sched_ext state {state:?})")
            }
            None => exit.describe(),
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

/// What the watcher saw when the scheduler went away.
#[derive(Debug, Clone)]
struct Death {
    code: Option<i32>,
    state: String,
    after: Duration,
}

/// A running scheduler process with a watcher thread.
pub struct SchedulerProcess {
    child: Arc<Mutex<Child>>,
    pid: i32,
    /// The ops name sched_ext reported.
    pub ops: String,
    /// When sched_ext reported it enabled.
    pub enabled_at: Instant,
    /// How long loading took (spawn → enabled).
    pub load_time: Duration,
    death: Arc<Mutex<Option<Death>>>,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
}

impl SchedulerProcess {
    /// Starts `path argv...` and waits up to `timeout` for sched_ext to report it enabled
    /// with a non-empty `root/ops`; then starts the watcher.
    pub fn start(path: &str, argv: &[String], timeout: Duration) -> Result<Self, SchedExit> {
        let log = fs::File::create(SCHED_LOG).map_err(|e| SchedExit::SpawnFailed(e.to_string()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| SchedExit::SpawnFailed(e.to_string()))?;
        let t0 = Instant::now();
        let mut child = Command::new(path)
            .args(argv)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| SchedExit::SpawnFailed(format!("{path}: {e}")))?;
        let deadline = t0 + timeout;
        let ops = loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(SchedExit::ExitedBeforeEnable { code: code_of(st) });
            }
            let state = read_trim(SCX_STATE);
            let ops = read_trim(SCX_OPS);
            if state == "enabled" && !ops.is_empty() {
                break ops;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(SchedExit::EnableTimeout {
                    state,
                    waited: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let enabled_at = Instant::now();
        let pid = child.id() as i32;
        let child = Arc::new(Mutex::new(child));
        let death = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (child, death, stop) = (child.clone(), death.clone(), stop.clone());
            std::thread::Builder::new()
                .name("ktstr-sched-watch".into())
                .spawn(move || watch(&child, &death, &stop, enabled_at))
                .ok()
        };
        Ok(SchedulerProcess {
            child,
            pid,
            ops,
            enabled_at,
            load_time: enabled_at - t0,
            death,
            stop,
            watcher,
        })
    }

    /// The scheduler's PID.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// `Ok` while the process runs and sched_ext still has it attached; otherwise what the
    /// watcher saw (with the exit code if the process has exited since).
    pub fn check(&mut self) -> Result<(), SchedExit> {
        let seen = self.death.lock().ok().and_then(|d| d.clone());
        let seen = seen.or_else(|| {
            // The watcher may not have run since the last change: look now.
            let mut c = self.child.lock().ok()?;
            let state = read_trim(SCX_STATE);
            let code = c.try_wait().ok().flatten().map(code_of);
            (code.is_some() || state != "enabled").then(|| Death {
                code,
                state,
                after: self.enabled_at.elapsed(),
            })
        });
        match seen {
            None => Ok(()),
            Some(mut d) => {
                if d.code.is_none() {
                    // Give an ejected loader a moment to print its exit record and exit.
                    let until = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < until {
                        if let Some(st) = self
                            .child
                            .lock()
                            .ok()
                            .and_then(|mut c| c.try_wait().ok().flatten())
                        {
                            d.code = Some(code_of(st));
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                Err(SchedExit::Died {
                    code: d.code,
                    state: d.state,
                    after: d.after,
                })
            }
        }
    }

    /// Stops the watcher and the scheduler (SIGINT, then SIGKILL after `grace`); returns its
    /// exit code.
    pub fn stop(mut self, grace: Duration) -> Option<i32> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        let Ok(mut child) = self.child.lock() else {
            return None;
        };
        if let Ok(Some(st)) = child.try_wait() {
            return Some(code_of(st));
        }
        // SAFETY: signalling our own, not yet reaped child.
        unsafe { libc::kill(self.pid, libc::SIGINT) };
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(code_of(st));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok().map(code_of);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The watcher: every [`WATCH_INTERVAL`], is the process alive and sched_ext enabled? The
/// first time either fails it records when, and keeps polling for the exit code.
fn watch(
    child: &Mutex<Child>,
    death: &Mutex<Option<Death>>,
    stop: &AtomicBool,
    enabled_at: Instant,
) {
    while !stop.load(Ordering::Relaxed) {
        let code = child
            .lock()
            .ok()
            .and_then(|mut c| c.try_wait().ok().flatten())
            .map(code_of);
        let state = read_trim(SCX_STATE);
        if let Ok(mut d) = death.lock() {
            match d.as_mut() {
                None if code.is_some() || state != "enabled" => {
                    *d = Some(Death {
                        code,
                        state,
                        after: enabled_at.elapsed(),
                    });
                }
                Some(seen) if seen.code.is_none() && code.is_some() => seen.code = code,
                Some(seen) if seen.code.is_some() => return,
                _ => {}
            }
        }
        std::thread::sleep(WATCH_INTERVAL);
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

#[cfg(test)]
mod tests {
    use super::*;

    const STALL_LOG: &str = "scx_demo: enabled load_ms=2318\n\
        scx_demo: stats runtime_ms=5000 enqueued=10\n\
        scx_demo: dump: Dumping sched_ext state\n\
        scx_demo: exit kind=1026 kind_name=ERROR_STALL code=0 reason=\"runnable task stall\" msg=\"sh[235] failed to run for 3.599s\"\n";

    #[test]
    fn kv_pairs_with_quotes() {
        let p = parse_kv(r#"kind=1025 reason="scx_bpf_error" msg="a \"b\" c" x"#);
        assert_eq!(kv(&p, "kind"), Some("1025"));
        assert_eq!(kv(&p, "msg"), Some("a \"b\" c"));
    }

    #[test]
    fn stall_names_task_and_time() {
        let e = SchedExit::Died {
            code: Some(1),
            state: "disabled".into(),
            after: Duration::from_millis(5300),
        };
        let d = diagnose(&e, STALL_LOG, "");
        assert!(d.is_stall());
        assert_eq!(d.kind, Some(1026));
        assert!(
            d.summary
                .starts_with("stall detected: sh[235] failed to run for 3.599s"),
            "{}",
            d.summary
        );
        assert!(d.summary.contains("5.3 s after"), "{}", d.summary);
        assert_eq!(d.dump, ["Dumping sched_ext state"]);
    }

    #[test]
    fn error_exit_from_dmesg_only() {
        let dmesg = "foo\nsched_ext: BPF scheduler \"x\" disabled (scx_bpf_error)\n\
                     sched_ext: x: injected crash\n   scx_bpf_error_bstr+0x1/0x2\nbar\n";
        let e = SchedExit::Died {
            code: None,
            state: "disabled".into(),
            after: Duration::from_secs(1),
        };
        let d = diagnose(&e, "", dmesg);
        assert_eq!(d.kernel_lines.len(), 3);
        assert_eq!(d.reason.as_deref(), Some("scx_bpf_error"));
        assert_eq!(d.msg.as_deref(), Some("injected crash"));
        assert!(
            d.summary
                .starts_with("scheduler exited with error ? (scx_bpf_error): injected crash"),
            "{}",
            d.summary
        );
    }

    #[test]
    fn non_error_exit_is_not_called_an_error() {
        let log = "x: exit kind=64 kind_name=UNREG code=0 reason=\"unregistered from user space\" msg=\"\"\n";
        let e = SchedExit::Died {
            code: Some(0),
            state: "disabled".into(),
            after: Duration::from_secs(2),
        };
        let d = diagnose(&e, log, "");
        assert_eq!(
            d.summary,
            "scheduler exited during the test: UNREG (unregistered from user space) (2.0 s after it was enabled, exit code 0)"
        );
    }

    #[test]
    fn verifier_rejection_names_the_program() {
        let log = "scx_demo: verifier: 12: (79) r1 = *(u64 *)(r0 +0)\n\
                   scx_demo: verifier: R0 unbounded memory access\n\
                   scx_demo: verifier: processed 40 insns\n\
                   scx_demo: load-failed prog=\"demo_dispatch\" err=\"Permission denied\"\n";
        let d = diagnose(&SchedExit::ExitedBeforeEnable { code: 2 }, log, "");
        assert_eq!(d.failed_prog.as_deref(), Some("demo_dispatch"));
        assert_eq!(d.verifier_tail.len(), 3);
        assert_eq!(
            d.summary,
            "scheduler failed to load: verifier rejected program demo_dispatch: R0 unbounded memory access (exit code 2)"
        );
    }
}
