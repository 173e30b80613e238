//! Binary payloads started by scenario ops: a program run in the background in a cgroup.
//!
//! This is the minimal form the scenario ops need (name, binary, default arguments,
//! environment); output parsing into metrics is the payload subsystem's concern.

use std::process::{Child, Command, Stdio};

/// A program a scenario can start, wait for and kill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Name used by `WaitPayload`/`KillPayload` and in reports.
    pub name: &'static str,
    /// Path of the binary in the guest (`/proc/self/exe` runs the test binary itself).
    pub binary: &'static str,
    /// Arguments always passed first.
    pub default_args: &'static [&'static str],
    /// Extra environment variables.
    pub env: &'static [(&'static str, &'static str)],
}

impl Payload {
    /// A payload running `binary`.
    pub const fn binary(name: &'static str, binary: &'static str) -> Self {
        Payload {
            name,
            binary,
            default_args: &[],
            env: &[],
        }
    }
    /// Sets the default arguments.
    pub const fn default_args(mut self, a: &'static [&'static str]) -> Self {
        self.default_args = a;
        self
    }
    /// Sets extra environment variables.
    pub const fn env(mut self, e: &'static [(&'static str, &'static str)]) -> Self {
        self.env = e;
        self
    }

    /// The test binary itself as a payload that spins (`spin`) or sleeps (`sleep`) for `ms`
    /// milliseconds and exits 0 (see [`run_builtin_payload`]). Useful because a guest has
    /// no other programs unless the test packs them.
    pub const fn builtin(name: &'static str, env: &'static [(&'static str, &'static str)]) -> Self {
        Payload::binary(name, "/proc/self/exe").env(env)
    }

    /// Starts it in the cgroup directory `cgroup_dir` (joined before `exec`, so the payload
    /// never runs outside it).
    pub(crate) fn start(
        &self,
        args: &[String],
        cgroup_dir: Option<std::path::PathBuf>,
    ) -> std::io::Result<Child> {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(self.binary);
        cmd.args(self.default_args)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in self.env {
            cmd.env(k, v);
        }
        if let Some(dir) = cgroup_dir {
            let procs = dir.join("cgroup.procs");
            // SAFETY: the closure only writes a file and creates a process group; both are
            // fine between fork and exec in a single-threaded child.
            unsafe {
                cmd.pre_exec(move || {
                    libc::setpgid(0, 0);
                    std::fs::write(&procs, b"0")
                });
            }
        }
        cmd.spawn()
    }
}

/// Environment variable that turns the test binary into a built-in payload:
/// `spin:<ms>` or `sleep:<ms>`.
pub const BUILTIN_PAYLOAD_ENV: &str = "KTSTR_BUILTIN_PAYLOAD";

/// If [`BUILTIN_PAYLOAD_ENV`] is set, runs that built-in payload and exits the process;
/// otherwise returns. The harness calls it first thing.
pub fn run_builtin_payload() {
    let Ok(v) = std::env::var(BUILTIN_PAYLOAD_ENV) else {
        return;
    };
    let (kind, ms) = v.split_once(':').unwrap_or((v.as_str(), "1000"));
    let ms: u64 = ms.parse().unwrap_or(1000);
    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    match kind {
        "spin" => {
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        _ => std::thread::sleep(std::time::Duration::from_millis(ms)),
    }
    std::process::exit(0)
}
