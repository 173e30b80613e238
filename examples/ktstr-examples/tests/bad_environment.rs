//! A host that cannot give a case what it needs gets one clear message with the remedy, and
//! the case's verdict where there is one: a kernel without sched_ext (refused before any VM
//! boots), a sidecar directory that cannot be written (the verdict stands).

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
