//! Stopping a case at each of its phases (initramfs build, boot, scheduler start, workload,
//! teardown) with SIGTERM (what nextest sends on a timeout), SIGINT (^C) and SIGKILL: the VM
//! must be gone at once (within 1 s of SIGTERM/SIGINT) and nothing may be left behind: no
//! qemu or other process, no temporary or half-written file in the sidecar and cache
//! directories, no held lock. Each run boots a VM under the default backend.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The fixture case: scx_demo with two steps, so it has every phase.
const CASE: &str = "two_steps/scx-demo/1n1l2c1t";

fn kernel_available() -> bool {
    if std::env::var_os("KTSTR_KERNEL").is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("KTSTR_KERNEL is not set: VM tests need a kernel under CI");
    }
    eprintln!("\n!!! SKIPPED: set KTSTR_KERNEL to run the interruption tests\n");
    false
}

/// PIDs of live processes whose environment holds `KTSTR_LEAK_TAG=tag` (the case's process
/// and everything it started: qemu, builds).
fn tagged_processes(tag: &str) -> Vec<i32> {
    let needle = format!("KTSTR_LEAK_TAG={tag}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        // A zombie's environment reads empty; so does a process that is gone.
        if env.split(|&b| b == 0).any(|v| v == needle.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// Every file under `dir`, relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out
}

fn shm_entries() -> BTreeSet<String> {
    std::fs::read_dir("/dev/shm")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("ktstr"))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs [`CASE`], sends `sig` when the host reports `phase`, and checks what is left.
fn interrupt_at(phase: &str, sig: i32) {
    let tmp = tempfile::tempdir().unwrap();
    let (sidecars, cache, locks) = (
        tmp.path().join("sidecars"),
        tmp.path().join("cache"),
        tmp.path().join("locks"),
    );
    std::fs::create_dir_all(&locks).unwrap();
    let tag = format!("{}-{phase}-{sig}", std::process::id());
    let shm_before = shm_entries();
    let mut child = Command::new(env!("CARGO_BIN_EXE_verdict_fixtures"))
        .args(["--exact", CASE, "--nocapture"])
        .env("KTSTR_PROGRESS", "1")
        .env("KTSTR_LEAK_TAG", &tag)
        .env("KTSTR_SIDECAR_DIR", &sidecars)
        // A fresh cache: the initramfs phase then really builds (and writes) the base archive.
        .env("KTSTR_CACHE_DIR", &cache)
        // The capped tier takes host LLC locks: they must be released too.
        .env("KTSTR_NO_PERF_MODE", "1")
        .env("KTSTR_LOCK_DIR", &locks)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the fixture binary");
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
    let vm_procs: Vec<i32> = tagged_processes(&tag)
        .into_iter()
        .filter(|&p| p != pid)
        .collect();
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child's PID, which we have not reaped yet.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    // The VM (qemu and anything else the case started) must be gone within 1 s: after
    // SIGTERM/SIGINT the case stops it; after SIGKILL the kernel does (qemu dies with its
    // parent).
    let mut vm_gone_after = None;
    while sent.elapsed() < Duration::from_secs(10) {
        let left: Vec<i32> = tagged_processes(&tag)
            .into_iter()
            .filter(|&p| p != pid)
            .collect();
        if left.is_empty() {
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
            tagged_processes(&tag)
        )
    });
    eprintln!(
        "{phase}: signal {sig}: VM processes before {vm_procs:?}, all gone after {} ms; case exited {status:?}",
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
    assert!(tagged_processes(&tag).is_empty(), "leaked processes\n{out}");
    // Files: whole sidecars only (a case stopped before its end records none), whole cache
    // entries, nothing temporary.
    for f in files_under(&sidecars) {
        let name = f.to_string_lossy();
        assert!(
            name.ends_with(".json") && !name.starts_with('.'),
            "stray file {name} in the sidecar directory\n{out}"
        );
        ktstr::runs::read_sidecar(&sidecars.join(&f))
            .unwrap_or_else(|e| panic!("sidecar {name} is not whole: {e}\n{out}"));
        assert_eq!(
            phase, "teardown",
            "a sidecar written though stopped at {phase}\n{out}"
        );
    }
    // objcopy (stripping the test binary) works in a directory named after the process; one
    // that a SIGKILL interrupted is swept by the next strip. Sweep, as the next run would.
    let stripped = cache.join("initramfs/stripped");
    if sig == libc::SIGKILL {
        ktstr::initramfs::sweep_abandoned(&stripped);
    }
    for f in files_under(&cache) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !f.to_string_lossy().contains(".work-"),
            "objcopy's work directory {f:?} left in the cache\n{out}"
        );
        assert!(
            !name.contains(".tmp-"),
            "temporary file {f:?} left in the cache\n{out}"
        );
        assert!(
            !name.starts_with("initramfs-"),
            "a per-case archive {f:?} left in the cache\n{out}"
        );
        if name.starts_with("base-") {
            let bytes = std::fs::read(cache.join(&f)).unwrap();
            ktstr::initramfs::read_newc(&bytes)
                .unwrap_or_else(|e| panic!("cached base archive {f:?} is not whole: {e}\n{out}"));
        }
    }
    let table = std::fs::read_to_string("/proc/locks").unwrap();
    for l in ktstr::locks::list_locks_in(
        &locks,
        &cache.join(".locks"),
        &ktstr::locks::parse_proc_locks(&table),
        ktstr::locks::read_cmdline,
    ) {
        assert!(
            l.holders.is_empty(),
            "lock {:?} still held: {:?}\n{out}",
            l.path,
            l.holders
        );
    }
    let leaked: Vec<_> = shm_entries().difference(&shm_before).cloned().collect();
    assert!(leaked.is_empty(), "left in /dev/shm: {leaked:?}\n{out}");
}

fn every_signal_at(phase: &str) {
    if !kernel_available() {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGKILL] {
        interrupt_at(phase, sig);
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
}

#[test]
fn stopped_during_teardown() {
    every_signal_at("teardown");
}
