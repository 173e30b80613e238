//! Binary payloads: real programs (benchmarks, load generators) a test runs in the guest,
//! their metrics, and the checks that gate on them.
//!
//! A test declares the payloads it runs (`#[ktstr_test(payload = FIO, workloads = [..])]`) so the
//! host packs each binary, with its shared libraries, into the guest at `/bin/<file name>`. The
//! body runs one with `ctx.payload(&FIO).args([..]).run()` (or `.spawn()`); scenario ops start,
//! wait for and kill them too. Every finished run lands in the sidecar's `metrics`, and each
//! failed [`Check`] fails the case with a `Benchmark` detail.

mod metrics;
mod run;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub use metrics::{
    extract_metrics, failed_checks, repeated_hint, Check, MetricHint, OutputFormat, PayloadMetrics,
    Polarity,
};
pub use run::{PayloadError, PayloadHandle, PayloadLog, PayloadOutcome, PayloadRun};

/// The test binary itself, as the path of a built-in payload.
const SELF_EXE: &str = "/proc/self/exe";

/// A program a test can run: in the body ([`crate::registry::Ctx::payload`]) or by scenario
/// ops (`RunPayload`, `WaitPayload`, `KillPayload`).
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    /// Name used by `WaitPayload`/`KillPayload`, in reports and in the sidecar.
    pub name: &'static str,
    /// The program: a name looked up in the host's `PATH`, or a path on the host. In the
    /// guest it runs from `/bin/<file name>` when the test declared it (and so packed it),
    /// else as given. `/proc/self/exe` is the test binary itself ([`Payload::builtin`]).
    pub binary: &'static str,
    /// Arguments always passed first.
    pub default_args: &'static [&'static str],
    /// Extra environment variables.
    pub env: &'static [(&'static str, &'static str)],
    /// How it reports results.
    pub output: OutputFormat,
    /// Checks applied to every run unless the run gives its own.
    pub default_checks: &'static [Check],
    /// What its metrics mean (names unique).
    pub metrics: &'static [MetricHint],
    /// Host files it needs, packed under `/include-files/` like the `-i` files of a shell.
    pub include_files: &'static [&'static str],
    /// Stay in the caller's process group (default: a group of its own, so a kill reaches
    /// every process it forked).
    pub uses_parent_pgrp: bool,
}

impl Payload {
    /// A payload running `binary`.
    pub const fn binary(name: &'static str, binary: &'static str) -> Self {
        Payload {
            name,
            binary,
            default_args: &[],
            env: &[],
            output: OutputFormat::ExitCode,
            default_checks: &[],
            metrics: &[],
            include_files: &[],
            uses_parent_pgrp: false,
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
    /// Sets the output format.
    pub const fn output(mut self, o: OutputFormat) -> Self {
        self.output = o;
        self
    }
    /// Sets the checks every run gets unless it gives its own.
    pub const fn default_checks(mut self, c: &'static [Check]) -> Self {
        self.default_checks = c;
        self
    }
    /// Describes its metrics.
    pub const fn metrics(mut self, m: &'static [MetricHint]) -> Self {
        self.metrics = m;
        self
    }
    /// Host files to pack under `/include-files/`.
    pub const fn include_files(mut self, f: &'static [&'static str]) -> Self {
        self.include_files = f;
        self
    }
    /// Keeps it in the caller's process group.
    pub const fn uses_parent_pgrp(mut self, b: bool) -> Self {
        self.uses_parent_pgrp = b;
        self
    }

    /// The test binary itself as a payload that spins (`spin`) or sleeps (`sleep`) for `ms`
    /// milliseconds and exits 0 (see [`run_builtin_payload`]). Useful because a guest has
    /// no other programs unless the test packs them.
    pub const fn builtin(name: &'static str, env: &'static [(&'static str, &'static str)]) -> Self {
        Payload::binary(name, SELF_EXE).env(env)
    }

    /// Whether it is the test binary itself (nothing to pack).
    pub fn is_builtin(&self) -> bool {
        self.binary == SELF_EXE
    }

    /// The binary on the host, to pack: a path as given, or a name found in `PATH`. `None`
    /// for a built-in payload.
    pub fn host_binary(&self) -> Result<Option<PathBuf>, PayloadError> {
        if self.is_builtin() {
            return Ok(None);
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        find_program(self.binary, &path)
            .map(Some)
            .ok_or_else(|| PayloadError::NotOnHost {
                name: self.name.to_string(),
                binary: self.binary.to_string(),
            })
    }

    /// Where it runs from in this system: `/bin/<file name>` when packed there, else as given.
    pub fn program(&self) -> PathBuf {
        if self.is_builtin() {
            return PathBuf::from(SELF_EXE);
        }
        let packed = Path::new("/bin").join(Path::new(self.binary).file_name().unwrap_or_default());
        if packed.is_file() {
            packed
        } else {
            PathBuf::from(self.binary)
        }
    }

    /// Starts it in the cgroup directory `cgroup_dir` (joined before `exec`, so the payload
    /// never runs outside it), with stdout and stderr piped when `capture`, else discarded.
    pub(crate) fn start(
        &self,
        args: &[String],
        cgroup_dir: Option<PathBuf>,
        capture: bool,
    ) -> std::io::Result<Child> {
        use std::os::unix::process::CommandExt;
        let out = || {
            if capture {
                Stdio::piped()
            } else {
                Stdio::null()
            }
        };
        let mut cmd = Command::new(self.program());
        cmd.args(self.default_args)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out())
            .stderr(out());
        for (k, v) in self.env {
            cmd.env(k, v);
        }
        let own_group = !self.uses_parent_pgrp;
        if own_group || cgroup_dir.is_some() {
            let procs = cgroup_dir.map(|d| d.join("cgroup.procs"));
            // SAFETY: the closure only creates a process group and writes a file; both are
            // fine between fork and exec in a single-threaded child.
            unsafe {
                cmd.pre_exec(move || {
                    if own_group {
                        libc::setpgid(0, 0);
                    }
                    match &procs {
                        Some(p) => std::fs::write(p, b"0"),
                        None => Ok(()),
                    }
                });
            }
        }
        cmd.spawn()
    }
}

/// `name` as a file: a path (it has a `/`) if it exists, else the first match in `path_var`.
fn find_program(name: &str, path_var: &std::ffi::OsStr) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path_var)
        .map(|d| d.join(name))
        .find(|p| executable(p))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_binary_is_found_by_path_or_name() {
        let path = std::ffi::OsStr::new("/nonexistent:/bin:/usr/bin");
        let sh = find_program("sh", path).expect("sh is on every Linux host");
        assert!(sh.ends_with("sh"), "{sh:?}");
        assert_eq!(
            find_program("/bin/sh", path),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(find_program("no-such-program-ktstr", path), None);
        assert_eq!(find_program("/etc/hostname-not-a-program", path), None);
        // A file that is not executable is not a program.
        assert_eq!(find_program("/etc/passwd", path), None);
    }

    #[test]
    fn a_missing_payload_binary_says_what_to_do() {
        let p = Payload::binary("bench", "no-such-benchmark-ktstr");
        let e = p.host_binary().unwrap_err().to_string();
        assert!(
            e.contains("bench") && e.contains("no-such-benchmark-ktstr"),
            "{e}"
        );
        assert!(e.contains("PATH"), "{e}");
        let b = Payload::builtin("self", &[]);
        assert_eq!(b.host_binary().unwrap(), None);
        assert_eq!(b.program(), PathBuf::from("/proc/self/exe"));
    }
}
