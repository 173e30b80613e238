//! End-to-end: Linux guests under the qemu backend (TCG here). These boot real VMs.

mod common;

use common::{kernel, ktstr, qemu, text};

fn shell(k: &str, topo: &str, cmd: &str) -> std::process::Output {
    ktstr(
        &[
            "shell",
            "--backend",
            "qemu",
            "--kernel",
            k,
            "--topology",
            topo,
            "--exec",
            cmd,
        ],
        &[],
    )
}

#[test]
fn exec_prints_the_second_nodes_cpus() {
    let (Some(k), true) = (kernel(), qemu()) else {
        return;
    };
    let o = shell(
        k.to_str().unwrap(),
        "2,4,2,2",
        "cat /sys/devices/system/node/node1/cpulist",
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "stderr: {err}");
    assert_eq!(out.trim(), "8-15", "stderr: {err}");
    assert!(err.contains("backend qemu"), "{err}");
}

#[test]
fn exec_exit_code_and_stderr_come_back() {
    let (Some(k), true) = (kernel(), qemu()) else {
        return;
    };
    let o = shell(
        k.to_str().unwrap(),
        "1,1,1,1",
        "echo out; echo err >&2; exit 3",
    );
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(3), "stderr: {err}");
    assert_eq!(out, "out\n");
    assert!(err.contains("err\n"), "{err}");
}

#[test]
fn include_files_reach_the_guest() {
    let (Some(k), true) = (kernel(), qemu()) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("data/sub")).unwrap();
    std::fs::write(d.path().join("data/sub/hello.txt"), "hello from the host").unwrap();
    let o = ktstr(
        &[
            "shell",
            "--backend",
            "qemu",
            "--kernel",
            k.to_str().unwrap(),
            "-i",
            d.path().join("data").to_str().unwrap(),
            "--exec",
            "cat /include-files/data/sub/hello.txt",
        ],
        &[],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "stderr: {err}");
    assert_eq!(out, "hello from the host");
}

/// Every shape of the VMM issue, checked from the guest's sysfs (nodes, LLCs, SMT siblings,
/// packages, core ids).
#[test]
fn topologies_are_exact_under_qemu() {
    let (Some(k), true) = (kernel(), qemu()) else {
        return;
    };
    // 1,8,4,2 (64 vCPUs) is left out: on the 2-core host of 2026-12-07 it did not finish
    // booting within the probe's 300 s under single-threaded TCG (twice in a row; it passed
    // on earlier hosts). 32 vCPUs (2,4,4,2) is the largest shape checked here.
    for t in [
        "1,1,1,1", "1,1,2,1", "1,3,3,1", "1,2,4,2", "2,2,2,2", "2,4,4,2",
    ] {
        let o = ktstr(
            &[
                "probe",
                "--backend",
                "qemu",
                "--kernel",
                k.to_str().unwrap(),
                "--topology",
                t,
            ],
            &[],
        );
        let (out, err) = text(&o);
        assert!(o.status.success(), "{t}: {out}\n{err}");
        assert!(err.contains("exactly"), "{t}: {err}");
    }
}

#[test]
fn missing_and_corrupt_kernels_fail_fast_with_a_reason() {
    let o = ktstr(
        &[
            "shell",
            "--backend",
            "qemu",
            "--kernel",
            "/nonexistent/bzImage",
            "--exec",
            "true",
        ],
        &[],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("does not exist"), "{err}");
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bzImage");
    std::fs::write(&bad, vec![0u8; 4096]).unwrap();
    let o = ktstr(
        &["shell", "--kernel", bad.to_str().unwrap(), "--exec", "true"],
        &[],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("not a kernel image"), "{err}");
}

#[test]
fn bad_topologies_are_usage_errors() {
    for (t, want) in [
        ("1,2,3", "need 4"),
        ("2,3,1,1", "split evenly"),
        ("1,0,1,1", "at least 1"),
    ] {
        let o = ktstr(&["shell", "--topology", t, "--exec", "true"], &[]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{t}: {err}");
        assert!(err.contains(want), "{t}: {err}");
    }
    let o = ktstr(&["shell", "--memory-mib", "127", "--exec", "true"], &[]);
    assert_eq!(o.status.code(), Some(2));
    let o = ktstr(&["shell", "--cpu-cap", "2", "--exec", "true"], &[]);
    assert_eq!(o.status.code(), Some(2), "--cpu-cap needs --no-perf-mode");
}

#[test]
fn x2apic_shapes_are_refused_under_tcg_with_a_reason() {
    let (Some(k), true) = (kernel(), qemu()) else {
        return;
    };
    let o = ktstr(
        &[
            "probe",
            "--backend",
            "qemu",
            "--kernel",
            k.to_str().unwrap(),
            "--topology",
            "1,14,9,2",
        ],
        &[],
    );
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("APIC ids above 255"), "{err}");
}

/// `cargo ktstr verifier` boots a VM per scheduler and prints verified instruction counts per
/// program for every flag profile of scx-demo.
#[test]
fn verifier_prints_counts_for_every_profile() {
    let (Some(k), true) = (kernel(), qemu()) else {
        return;
    };
    let o = ktstr(
        &["verifier", "-p", "ktstr-examples", "--backend", "qemu"],
        &[("KTSTR_KERNEL", k.to_str().unwrap())],
    );
    let (out, err) = text(&o);
    if err.contains("skipping scheduler scx-demo") && !common::under_ci() {
        eprintln!("\n!!! SKIPPED: build the example scheduler first (cargo build --release -p scx-demo)\n");
        return;
    }
    assert!(o.status.success(), "{out}\n{err}");
    for want in [
        "demo_dispatch",
        "demo_enqueue",
        "scx-demo+llc+steal",
        "total",
    ] {
        assert!(out.contains(want), "missing {want}: {out}");
    }
}

/// `--no-perf-mode --cpu-cap 1`: the VM runs on a plan of one host CPU, with a shared lock on
/// its host LLC for as long as it runs (the confinement itself is unit-tested in
/// `ktstr::host_cpus`).
#[test]
fn a_capped_shell_reserves_its_host_llc() {
    let (Some(k), true) = (kernel(), qemu()) else {
        return;
    };
    let locks = tempfile::tempdir().unwrap();
    let o = ktstr(
        &[
            "shell",
            "--backend",
            "qemu",
            "--kernel",
            k.to_str().unwrap(),
            "--no-perf-mode",
            "--cpu-cap",
            "1",
            "--exec",
            "nproc",
        ],
        &[("KTSTR_LOCK_DIR", locks.path().to_str().unwrap())],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "stderr: {err}");
    assert_eq!(out.trim(), "1", "stderr: {err}");
    assert!(err.contains("no perf mode: capped to 1 host CPU "), "{err}");
    let names: Vec<String> = std::fs::read_dir(locks.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.len() == 1 && names[0].starts_with("ktstr-llc-"),
        "{names:?}"
    );
}

/// An exported scx_demo test refuses this host (no sched_ext) but runs inside a VM of our
/// sched_ext kernel from `shell -i`: one passes, one that fails on purpose exits 1 with its
/// diagnosis.
#[test]
fn an_exported_sched_ext_test_runs_in_a_vm_of_our_kernel() {
    let (Some(k), true) = (kernel(), qemu()) else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    for (test, code, says) in [
        ("base_spinners", 0, "base_spinners/scx-demo/1n2l2c1t passed"),
        ("demo_stall_report", 1, "SchedulerDied: stall detected"),
    ] {
        let run = d.path().join(format!("{test}.run"));
        let o = ktstr(&["export", test, "-o", run.to_str().unwrap()], &[]);
        assert!(o.status.success(), "{:?}", text(&o));
        let o = ktstr(
            &[
                "shell",
                "--backend",
                "qemu",
                "--kernel",
                k.to_str().unwrap(),
                "--topology",
                "1,2,2,1",
                "-i",
                run.to_str().unwrap(),
                "--exec",
                &format!("/include-files/{test}.run"),
            ],
            &[],
        );
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(code), "{test}: {out}{err}");
        assert!(out.contains(says), "{test}: {out}{err}");
    }
}

/// `shell --disk 64M`: a raw virtio-blk disk at /dev/vda that takes a file system; its sparse
/// backing file is gone when the VM is.
#[test]
fn a_shell_disk_is_dev_vda_and_its_file_goes_away() {
    let (Some(k), true) = (kernel(), qemu()) else {
        return;
    };
    common::shell_disk_works("qemu", &k, &[]);
}
