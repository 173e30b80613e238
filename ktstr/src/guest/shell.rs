//! Shell mode (`cargo ktstr shell`): run one command under busybox and stream its output to
//! the host, or give the console an interactive shell.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{exit, send, FrameType, EXIT_SETUP_FAILED};

/// Where the host puts the shell request in the initramfs.
pub const REQUEST_PATH: &str = "/ktstr/shell.json";

/// What the host asks the guest shell to do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShellRequest {
    /// A command for `sh -c`; `None` means an interactive shell on the console.
    pub exec: Option<String>,
    /// Instead of a shell: send the guest's sysfs topology view (a
    /// [`super::topo::SysTopology`] as JSON) in a Result frame and exit 0. Used by
    /// `cargo ktstr probe --backend qemu`.
    #[serde(default)]
    pub report_topology: bool,
}

const BUSYBOX: &str = "/bin/busybox";
const PATH: &str = "/bin:/sbin:/usr/bin:/usr/sbin";

/// Entry point of the guest init in shell mode. Never returns: the VM ends with the shell's
/// exit code.
pub fn main() -> ! {
    if let Err(e) = super::boot() {
        eprintln!("ktstr guest: {e}");
        exit(EXIT_SETUP_FAILED as i32);
    }
    let req: ShellRequest = match std::fs::read(REQUEST_PATH)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("ktstr guest: cannot read {REQUEST_PATH}: {e}");
            eprintln!("{msg}");
            let _ = send(FrameType::Log, msg.as_bytes());
            exit(EXIT_SETUP_FAILED as i32);
        }
    };
    if req.report_topology {
        let view = super::topo::SysTopology::current();
        let _ = send(
            FrameType::Result,
            &serde_json::to_vec(&view).unwrap_or_default(),
        );
        exit(0);
    }
    let code = match req.exec {
        Some(cmd) => run_exec(&cmd),
        None => run_interactive(),
    };
    exit(code)
}

fn wait_code(st: std::process::ExitStatus) -> i32 {
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

/// Runs `sh -c cmd`, forwarding stdout and stderr as frames; returns its exit code.
fn run_exec(cmd: &str) -> i32 {
    let child = Command::new(BUSYBOX)
        .args(["sh", "-c", cmd])
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("ktstr guest: cannot start {BUSYBOX}: {e}\n");
            let _ = send(FrameType::Stderr, msg.as_bytes());
            return 127;
        }
    };
    let out = child.stdout.take().map(|s| forward(s, FrameType::Stdout));
    let err = child.stderr.take().map(|s| forward(s, FrameType::Stderr));
    for t in [out, err].into_iter().flatten() {
        let _ = t.join();
    }
    match child.wait() {
        Ok(st) => wait_code(st),
        Err(_) => 127,
    }
}

fn forward(mut from: impl Read + Send + 'static, kind: FrameType) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = send(kind, &buf[..n]);
                }
            }
        }
    })
}

/// An interactive busybox shell on the console with job control; returns its exit code.
fn run_interactive() -> i32 {
    // setsid + cttyhack give the shell a controlling terminal so ^C reaches its children.
    let st = Command::new(BUSYBOX)
        .args(["setsid", BUSYBOX, "cttyhack", BUSYBOX, "sh", "-l"])
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/")
        .env("TERM", "linux")
        .env("PS1", "ktstr# ")
        .current_dir("/")
        .status();
    match st {
        Ok(st) => wait_code(st),
        Err(e) => {
            eprintln!("ktstr guest: cannot start the shell: {e}");
            127
        }
    }
}
