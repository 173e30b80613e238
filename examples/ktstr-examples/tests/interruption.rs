//! Stopping a case at each of its phases (initramfs build, boot, scheduler start, workload,
//! teardown) with SIGTERM (what nextest sends on a timeout), SIGINT (^C) and SIGKILL: the VM
//! must be gone within 1 s and nothing may be left behind (see `common`). Each run boots a VM
//! under the default backend.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Sandbox;

/// The fixture case: scx_demo with two steps, so it has every phase.
const CASE: &str = "two_steps/scx-demo/1n1l2c1t";

/// Runs [`CASE`], sends `sig` when the host reports `phase` (to the case's whole process
/// group with `to_group`, as a terminal's ^C or a group kill does), and checks what is left.
fn interrupt_at(phase: &str, sig: i32, to_group: bool) {
    let sandbox = Sandbox::new(&format!("{phase}-{sig}-{to_group}"), true);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_verdict_fixtures"));
    cmd.args(["--exact", CASE, "--nocapture"])
        .env("KTSTR_PROGRESS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group, so a group signal reaches it and not this test.
        .process_group(0);
    sandbox.apply(&mut cmd);
    let mut child = cmd.spawn().expect("starting the fixture binary");
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    let marker = format!("ktstr: progress {CASE} {phase}");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line == marker => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the case never reached phase {phase}:\n{}",
                    reader.join().unwrap()
                );
            }
        }
    }
    let vm_procs = sandbox.processes(Some(pid));
    let sent = Instant::now();
    let target = if to_group { -pid } else { pid };
    // SAFETY: kill(2) on our own child (or its process group), which we have not reaped yet.
    assert_eq!(unsafe { libc::kill(target, sig) }, 0);
    // The VM (qemu and anything else the case started) must be gone within 1 s: after
    // SIGTERM/SIGINT the case stops it; after SIGKILL the kernel does (qemu dies with its
    // parent).
    let mut vm_gone_after = None;
    while sent.elapsed() < Duration::from_secs(10) {
        if sandbox.processes(Some(pid)).is_empty() {
            vm_gone_after = Some(sent.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = child.wait().unwrap();
    let out = reader.join().unwrap();
    let vm_gone_after = vm_gone_after.unwrap_or_else(|| {
        panic!(
            "processes of the case still run 10 s after signal {sig} at {phase}: {:?}\n{out}",
            sandbox.processes(None)
        )
    });
    eprintln!(
        "{phase}: signal {sig}: VM processes before {vm_procs:?}, all gone after {} ms; case \
         exited {status:?}",
        vm_gone_after.as_millis()
    );
    assert!(
        vm_gone_after <= Duration::from_secs(1),
        "at {phase}, the VM outlived signal {sig} by {vm_gone_after:?}\n{out}"
    );
    if sig != libc::SIGKILL {
        assert!(out.contains("ktstr: stopped by"), "{out}");
    }
    assert_eq!(
        status.signal(),
        Some(sig),
        "the case must end by the signal it got, so nextest sees it: {status:?}\n{out}"
    );
    // objcopy (stripping the test binary) works in a directory named after the process; one
    // that a SIGKILL interrupted must be recognisably the dead process's, and is swept by the
    // next strip (once 10 minutes old). Sweep it now, as a later run would.
    if sig == libc::SIGKILL {
        let stripped = sandbox
            .cache
            .as_ref()
            .expect("a fresh cache")
            .join("initramfs/stripped");
        for f in common::files_under(&stripped) {
            let n = f.to_string_lossy();
            if n.starts_with(".work-") {
                assert!(
                    n.starts_with(&format!(".work-{pid}-")),
                    "work directory {n} is not the killed process's ({pid})\n{out}"
                );
            }
        }
        ktstr::initramfs::sweep_abandoned(&stripped, Duration::ZERO);
    }
    // A case stopped before its end records nothing; in teardown it may have finished.
    sandbox.assert_nothing_left(phase == "teardown", &out);
}

fn every_signal_at(phase: &str) {
    if !common::kernel_available("the interruption tests") {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGKILL] {
        interrupt_at(phase, sig, false);
    }
}

#[test]
fn stopped_while_building_the_initramfs() {
    every_signal_at("initramfs");
}

#[test]
fn stopped_while_the_vm_boots() {
    every_signal_at("boot");
}

#[test]
fn stopped_while_the_scheduler_starts() {
    every_signal_at("scheduler");
}

#[test]
fn stopped_during_the_workload() {
    every_signal_at("workload");
    // ^C at a terminal signals the whole foreground group: qemu must not take it as its own
    // (it would exit 0, which reads as a guest reboot) and the case must still stop cleanly.
    if common::kernel_available("the interruption tests") {
        interrupt_at("workload", libc::SIGINT, true);
    }
}

#[test]
fn stopped_during_teardown() {
    every_signal_at("teardown");
}
