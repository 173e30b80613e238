//! Machine-readable status lines and exit codes.
//!
//! Every line scx_demo prints about its own state starts with `scx_demo: ` and
//! goes to stderr, so it interleaves correctly with libbpf's messages:
//!
//! ```text
//! scx_demo: enabled
//! scx_demo: exit kind=1026 kind_name=ERROR_STALL code=0 reason="runnable task stall" msg="..."
//! scx_demo: load-failed prog="demo_dispatch" err="..."
//! ```
//!
//! String values are double-quoted with `\\`, `\"`, `\n`, `\t` and other
//! control characters escaped, so each status is exactly one line.

/// The process exit codes of scx_demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ExitCode {
    /// The scheduler was unregistered cleanly (SIGINT/SIGTERM, or a kernel
    /// unregister that is not an error).
    Clean = 0,
    /// sched_ext ejected the scheduler with an error exit (kind ≥ 1024):
    /// `scx_bpf_error()`, a runnable-task stall, ...
    SchedError = 1,
    /// The BPF object failed to load, e.g. the verifier rejected a program.
    LoadFailed = 2,
    /// Any other setup failure: opening the object, reading the topology,
    /// attaching (for example another sched_ext scheduler is active).
    SetupFailed = 3,
    /// Bad command line.
    Usage = 64,
}

/// The first `scx_exit_kind` value that denotes an error exit.
pub const SCX_EXIT_ERROR: i32 = 1024;

/// The kernel's name for an `enum scx_exit_kind` value, without `SCX_EXIT_`.
pub fn kind_name(kind: i32) -> &'static str {
    match kind {
        0 => "NONE",
        1 => "DONE",
        64 => "UNREG",
        65 => "UNREG_BPF",
        66 => "UNREG_KERN",
        67 => "SYSRQ",
        1024 => "ERROR",
        1025 => "ERROR_BPF",
        1026 => "ERROR_STALL",
        _ => "UNKNOWN",
    }
}

/// Exit code for a scheduler that exited with `kind`.
pub fn exit_code_for_kind(kind: i32) -> ExitCode {
    if kind >= SCX_EXIT_ERROR {
        ExitCode::SchedError
    } else {
        ExitCode::Clean
    }
}

/// Quotes `s` as one double-quoted, single-line token.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `scx_demo: exit ...` line for an exit record.
pub fn exit_line(kind: i32, code: i64, reason: &str, msg: &str) -> String {
    format!(
        "scx_demo: exit kind={kind} kind_name={} code={code} reason={} msg={}",
        kind_name(kind),
        quote(reason),
        quote(msg)
    )
}

/// Converts a NUL-terminated C char buffer (as the skeleton exposes it) to a
/// string, lossily.
pub fn c_buf_to_string(buf: &[i8]) -> String {
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Verifier log lines from libbpf's output: the lines between
/// `-- BEGIN PROG LOAD LOG --` and `-- END PROG LOAD LOG --` of the last
/// program whose load failed, at most `max` from the end.
pub fn verifier_log_tail(libbpf_output: &str, max: usize) -> Vec<String> {
    let mut current: Vec<&str> = Vec::new();
    let mut last: Vec<&str> = Vec::new();
    let mut inside = false;
    for line in libbpf_output.lines() {
        if line.contains("-- BEGIN PROG LOAD LOG --") {
            inside = true;
            current.clear();
        } else if line.contains("-- END PROG LOAD LOG --") {
            inside = false;
            last = std::mem::take(&mut current);
        } else if inside && !line.trim().is_empty() {
            current.push(line);
        }
    }
    // A log cut off without its END marker is still worth showing.
    if inside {
        last = current;
    }
    let skip = last.len().saturating_sub(max);
    last[skip..].iter().map(|s| s.to_string()).collect()
}

/// Every verifier log in libbpf's output, each under a `--- prog NAME ---`
/// header line (for `--verify-only --verify-log`).
pub fn prog_load_logs(libbpf_output: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in libbpf_output.lines() {
        if line.contains("-- BEGIN PROG LOAD LOG --") {
            inside = true;
            let name = line
                .find("prog '")
                .and_then(|i| {
                    let rest = &line[i + "prog '".len()..];
                    rest.find('\'').map(|j| &rest[..j])
                })
                .unwrap_or("?");
            out.push_str(&format!("--- prog {name} ---\n"));
        } else if line.contains("-- END PROG LOAD LOG --") {
            inside = false;
        } else if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The program named in libbpf's `prog 'NAME': BPF program load failed`.
pub fn failed_prog(libbpf_output: &str) -> Option<String> {
    libbpf_output
        .lines()
        .filter(|l| l.contains("BPF program load failed") || l.contains("failed to load"))
        .find_map(|l| {
            let start = l.find("prog '")? + "prog '".len();
            let len = l[start..].find('\'')?;
            Some(l[start..start + len].to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_logs_get_headers() {
        let out = "libbpf: prog 'a': -- BEGIN PROG LOAD LOG --\n0: r0 = 0\nprocessed 2 insns\n-- END PROG LOAD LOG --\nother\n";
        assert_eq!(
            prog_load_logs(out),
            "--- prog a ---\n0: r0 = 0\nprocessed 2 insns\n"
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code_for_kind(64), ExitCode::Clean);
        assert_eq!(exit_code_for_kind(0), ExitCode::Clean);
        assert_eq!(exit_code_for_kind(1025), ExitCode::SchedError);
        assert_eq!(exit_code_for_kind(1026), ExitCode::SchedError);
        assert_eq!(ExitCode::LoadFailed as i32, 2);
    }

    #[test]
    fn exit_line_is_one_quoted_line() {
        let l = exit_line(1026, 0, "runnable task stall", "sh[52] failed\n\"x\"");
        assert_eq!(
            l,
            "scx_demo: exit kind=1026 kind_name=ERROR_STALL code=0 \
             reason=\"runnable task stall\" msg=\"sh[52] failed\\n\\\"x\\\"\""
        );
        assert!(!l.contains('\n'));
    }

    #[test]
    fn c_strings() {
        let mut buf = [0i8; 8];
        for (d, s) in buf.iter_mut().zip(b"abc") {
            *d = *s as i8;
        }
        assert_eq!(c_buf_to_string(&buf), "abc");
        assert_eq!(c_buf_to_string(&[0i8; 4]), "");
    }

    #[test]
    fn verifier_tail_and_prog() {
        let out = "libbpf: prog 'demo_dispatch': BPF program load failed: Permission denied\n\
                   libbpf: prog 'demo_dispatch': -- BEGIN PROG LOAD LOG --\n\
                   0: R1=ctx() R10=fp0\n\
                   1: (b7) r2 = 0\n\
                   R1 unbounded memory access\n\
                   processed 10 insns\n\
                   -- END PROG LOAD LOG --\n\
                   libbpf: failed to load object 'scx_demo_bpf'\n";
        assert_eq!(
            verifier_log_tail(out, 2),
            vec!["R1 unbounded memory access", "processed 10 insns"]
        );
        assert_eq!(verifier_log_tail(out, 100).len(), 4);
        assert_eq!(failed_prog(out).as_deref(), Some("demo_dispatch"));
        assert!(verifier_log_tail("nothing", 5).is_empty());
    }
}
