//! A host that cannot give a case what it needs gets one clear message with the remedy, and
//! the case's verdict where there is one: a kernel without sched_ext (refused before any VM
//! boots), a sidecar directory that cannot be written or is full (the verdict stands), a full
//! cache directory (the case still runs), a `/dev/kvm` this user may not open (the remedy, and
//! qemu meanwhile).
//!
//! The full filesystems are real: a tiny tmpfs filled to the last byte, mounted in a private
//! mount namespace (`unshare -m`) that vanishes with the fixture process. That needs root, as
//! does dropping to another user for the `/dev/kvm` case; CI runs as root, and elsewhere those
//! tests say they cannot run and return.

mod common;

/// Runs fixture `case` with `envs` and `KTSTR_PROGRESS=1`; returns the exit code and output.
fn run(case: &str, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut all = vec![("KTSTR_PROGRESS", "1")];
    all.extend_from_slice(envs);
    common::fixture(case, &all, &[])
}

#[test]
fn a_kernel_without_sched_ext_is_refused_before_booting() {
    if !common::kernel_available("the bad-environment tests") {
        return;
    }
    let real = std::fs::canonicalize(std::env::var("KTSTR_KERNEL").unwrap()).unwrap();
    let image = if real.is_dir() {
        real.join("bzImage")
    } else {
        real
    };
    // The same image, beside a configuration without sched_ext or BTF (as a distribution
    // kernel of an older release would have).
    let d = tempfile::tempdir().unwrap();
    // A copy: kernel resolution follows symlinks, to the real image and its real config.
    std::fs::copy(&image, d.path().join("bzImage")).unwrap();
    std::fs::write(
        d.path().join(".config"),
        "CONFIG_BPF_SYSCALL=y\n# CONFIG_SCHED_CLASS_EXT is not set\n# CONFIG_DEBUG_INFO_BTF is not set\n",
    )
    .unwrap();
    let kernel = d.path().join("bzImage");
    let (code, out) = run(
        "two_steps/scx-demo/1n1l2c1t",
        &[("KTSTR_KERNEL", kernel.to_str().unwrap())],
    );
    assert_eq!(code, Some(101), "{out}");
    assert!(
        out.contains("cannot run the sched_ext scheduler scx_demo")
            && out.contains("lacks CONFIG_SCHED_CLASS_EXT, CONFIG_DEBUG_INFO_BTF")
            && out.contains("cargo ktstr kernel build"),
        "{out}"
    );
    assert!(
        !out.contains("progress two_steps/scx-demo/1n1l2c1t boot"),
        "a VM booted:\n{out}"
    );
    // An EEVDF case needs none of it and runs on that kernel.
    let (code, out) = run(
        "expected_failure/eevdf/1n1l1c1t",
        &[("KTSTR_KERNEL", kernel.to_str().unwrap())],
    );
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn an_unwritable_sidecar_directory_keeps_the_verdict_and_says_what_to_do() {
    if !common::kernel_available("the bad-environment tests") {
        return;
    }
    // Under /proc nothing can be created, whoever runs the test (root included).
    let (code, out) = run(
        "failing_body/eevdf/1n1l1c1t",
        &[("KTSTR_SIDECAR_DIR", "/proc/ktstr-sidecars")],
    );
    assert_eq!(code, Some(101), "{out}");
    assert!(
        out.contains("deliberate: spread 99% > 15%"),
        "the verdict is lost:\n{out}"
    );
    assert!(
        out.contains(
            "could not write the sidecar of failing_body/eevdf/1n1l1c1t in /proc/ktstr-sidecars"
        ) && out.contains("set KTSTR_SIDECAR_DIR"),
        "{out}"
    );
    let (code, out) = run(
        "expected_failure/eevdf/1n1l1c1t",
        &[("KTSTR_SIDECAR_DIR", "/proc/ktstr-sidecars")],
    );
    assert_eq!(code, Some(0), "a passing verdict stands too:\n{out}");
}

/// Whether this process may mount and change users (root); says so when not.
fn root_or_say(what: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("SKIPPED: {what} needs root (a private tmpfs, another user); CI runs it as root");
    }
    root
}

/// Runs fixture `case` inside a private mount namespace where `dir` is a 256 KiB tmpfs filled
/// to the last byte (`pre` is a shell snippet run after mounting, before filling).
fn run_on_full_tmpfs(
    case: &str,
    dir: &std::path::Path,
    pre: &str,
    envs: &[(&str, &str)],
) -> (Option<i32>, String) {
    let fixture = env!("CARGO_BIN_EXE_verdict_fixtures");
    let pre = if pre.is_empty() { ":;" } else { pre };
    let script = format!(
        "set -e; mount -t tmpfs -o size=256k,nr_inodes=64 ktstr-full \"$1\"; {pre} \
         dd if=/dev/zero of=\"$1/fill\" bs=4k 2>/dev/null || true; \
         ! echo x > \"$1/probe\" 2>/dev/null || {{ echo 'tmpfs not full' >&2; exit 97; }}; \
         shift; exec \"$@\""
    );
    let o = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
        .arg(dir)
        .args([fixture, "--exact", case, "--nocapture"])
        .envs(envs.iter().copied())
        .env("KTSTR_PROGRESS", "1")
        .output()
        .expect("running unshare");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_ne!(o.status.code(), Some(97), "{text}");
    (o.status.code(), text)
}

#[test]
fn a_full_sidecar_directory_keeps_the_verdict_and_says_what_to_do() {
    if !common::kernel_available("the bad-environment tests") || !root_or_say("a full disk") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let sidecars = d.path().join("sidecars");
    let (code, out) = run_on_full_tmpfs(
        "failing_body/eevdf/1n1l1c1t",
        d.path(),
        "",
        &[("KTSTR_SIDECAR_DIR", sidecars.to_str().unwrap())],
    );
    assert_eq!(code, Some(101), "{out}");
    assert!(
        out.contains("deliberate: spread 99% > 15%"),
        "the verdict is lost:\n{out}"
    );
    assert!(
        out.contains("could not write the sidecar of failing_body/eevdf/1n1l1c1t")
            && out.contains("No space left on device")
            && out.contains("free space there"),
        "{out}"
    );
    // Nothing half-written was left behind (the tmpfs is gone with its namespace; what the
    // writer could reach is the directory it made there, so the check is the message).
    assert!(!out.contains("panicked"), "{out}");
}

#[test]
fn a_full_cache_directory_still_runs_the_case_and_says_so() {
    if !common::kernel_available("the bad-environment tests") || !root_or_say("a full disk") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let sidecars = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let (code, out) = run_on_full_tmpfs(
        "expected_failure/eevdf/1n1l1c1t",
        d.path(),
        "",
        &[
            ("KTSTR_CACHE_DIR", cache.to_str().unwrap()),
            ("KTSTR_SIDECAR_DIR", sidecars.path().to_str().unwrap()),
        ],
    );
    assert_eq!(
        code,
        Some(0),
        "a full cache must not cost the verdict:\n{out}"
    );
    assert!(
        out.contains("No space left on device") && out.contains("KTSTR_CACHE_DIR"),
        "the full cache is said, with the remedy:\n{out}"
    );
}

#[test]
fn a_dev_kvm_this_user_may_not_open_names_the_remedy_and_qemu_runs_meanwhile() {
    if !common::kernel_available("the bad-environment tests")
        || !root_or_say("another user's view of /dev/kvm")
    {
        return;
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: no /dev/kvm on this host: nothing to be denied");
        return;
    }
    // Everything the case reads or writes is in a directory the unprivileged user owns: a
    // checkout under /root would be out of its reach.
    let home = tempfile::tempdir().unwrap();
    let nobody = "65534";
    let fixture = home.path().join("verdict_fixtures");
    std::fs::copy(env!("CARGO_BIN_EXE_verdict_fixtures"), &fixture).unwrap();
    let real = std::fs::canonicalize(std::env::var("KTSTR_KERNEL").unwrap()).unwrap();
    let image = if real.is_dir() {
        real.join("bzImage")
    } else {
        real
    };
    let kernel = home.path().join("bzImage");
    std::fs::copy(&image, &kernel).unwrap();
    let own = std::process::Command::new("chown")
        .args([
            "-R",
            &format!("{nobody}:{nobody}"),
            home.path().to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(own.success());
    let sub = |name: &str| home.path().join(name).to_str().unwrap().to_string();
    // `args` run as the unprivileged user, without supplementary groups.
    let setpriv = |args: &[&str]| {
        let mut c = std::process::Command::new("setpriv");
        c.args([
            &format!("--reuid={nobody}"),
            &format!("--regid={nobody}"),
            "--clear-groups",
        ])
        .args(args);
        c
    };
    let as_nobody = |backend: &str| {
        let o = setpriv(&[
            fixture.to_str().unwrap(),
            "--exact",
            "expected_failure/eevdf/1n1l1c1t",
            "--nocapture",
        ])
        .env("HOME", home.path())
        .env("KTSTR_KERNEL", &kernel)
        .env("KTSTR_CACHE_DIR", sub("cache"))
        .env("KTSTR_SIDECAR_DIR", sub("sidecars"))
        .env("KTSTR_LOCK_DIR", home.path())
        .env("KTSTR_BACKEND", backend)
        .output()
        .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr),
        )
    };
    let opened_anyway = setpriv(&["sh", "-c", "exec 3<>/dev/kvm"])
        .status()
        .unwrap()
        .success();
    if opened_anyway {
        eprintln!("SKIPPED: /dev/kvm is open to every user here: nothing to be denied");
        return;
    }
    // Asked for KVM: one message with the remedy, no VM.
    let (code, out) = as_nobody("kvm");
    assert_eq!(code, Some(101), "{out}");
    assert!(
        out.contains("cannot open /dev/kvm: permission denied for this user")
            && out.contains("usermod -aG kvm")
            && out.contains("--backend qemu"),
        "{out}"
    );
    // Left to choose: qemu runs the case, and the note says why and how to get KVM.
    let (code, out) = as_nobody("auto");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("may not open it (permission denied)"), "{out}");
}
