//! Shared helpers for the VM integration tests: locating the kernel and running the CLI.
#![allow(dead_code)] // each test file uses a different subset

use std::path::PathBuf;
use std::process::{Command, Output};

/// Whether we run under CI, where a missing kernel or backend must fail, not skip.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The kernel for VM tests: `KTSTR_KERNEL`, else `../shared/kernel/bzImage` beside the
/// repository. `None` (after a loud note) when there is none outside CI; a panic under CI.
pub fn kernel() -> Option<PathBuf> {
    if let Ok(k) = std::env::var("KTSTR_KERNEL") {
        if !k.is_empty() {
            return Some(PathBuf::from(k));
        }
    }
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/kernel/bzImage");
    if shared.is_file() {
        return Some(shared);
    }
    let msg =
        "no kernel for VM tests: set KTSTR_KERNEL to a bzImage (e.g. ../shared/kernel/bzImage)";
    if under_ci() {
        panic!("{msg}");
    }
    eprintln!("\n!!! SKIPPED: {msg}\n");
    None
}

/// Whether qemu is installed (panics under CI when it is not).
pub fn qemu() -> bool {
    if ktstr::vm::qemu::qemu_available() {
        return true;
    }
    let msg = "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)";
    if under_ci() {
        panic!("{msg}");
    }
    eprintln!("\n!!! SKIPPED: {msg}\n");
    false
}

/// Runs `cargo-ktstr ktstr ARGS`.
pub fn ktstr(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cargo-ktstr"));
    c.arg("ktstr").args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("running cargo-ktstr")
}

/// stdout and stderr as text, for assertion messages.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `shell --backend BACKEND --disk 64M`: /dev/vda has 64 MiB, takes an ext2 file system and
/// mounts; the sparse backing file is gone when the VM is.
pub fn shell_disk_works(backend: &str, kernel: &std::path::Path, envs: &[(&str, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    let mut envs = envs.to_vec();
    envs.push(("TMPDIR", tmp.path().to_str().unwrap()));
    let o = ktstr(
        &[
            "shell", "--backend", backend, "--kernel", kernel.to_str().unwrap(), "--disk", "64M",
            "--exec",
            "cat /sys/block/vda/size && mkfs.ext2 /dev/vda >/dev/null && mount /dev/vda /mnt && echo ok",
        ],
        &envs,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{backend}: {out}{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["131072", "ok"],
        "{backend}: {err}"
    );
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.iter()
            .all(|p| !p.to_string_lossy().contains("ktstr-disk-")),
        "{backend}: {left:?}"
    );
}
