//! The harness's verdicts on cases that fail on purpose (each boots a VM).

mod common;

use std::process::Command;

fn kernel_available() -> bool {
    common::kernel_available("the VM verdict tests")
}

/// Runs one fixture case; returns (exit code, stdout + stderr).
fn case(name: &str) -> (Option<i32>, String) {
    case_with(name, &[])
}

/// [`case`] with extra environment variables.
fn case_with(name: &str, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    case_env(name, envs, &[])
}

/// Runs one fixture case with its sidecar written to a fresh directory; returns the exit
/// code, the output and the case's sidecar.
fn case_and_sidecar(name: &str, tag: &str) -> (Option<i32>, String, ktstr::sidecar::Sidecar) {
    let dir = std::env::temp_dir().join(format!("ktstr-{tag}-sidecar-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (code, out) = case_with(name, &[("KTSTR_SIDECAR_DIR", dir.to_str().unwrap())]);
    let run = ktstr::runs::load_run(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let sc = run.sidecars.into_iter().next().expect("one sidecar").1;
    (code, out, sc)
}

/// [`case`] with extra environment variables and some removed.
fn case_env(name: &str, envs: &[(&str, &str)], remove: &[&str]) -> (Option<i32>, String) {
    common::fixture(name, envs, remove)
}

#[test]
fn a_failing_body_fails_with_its_reason() {
    if !kernel_available() {
        return;
    }
    let (code, out) = case("failing_body/eevdf/1n1l1c1t");
    assert_eq!(code, Some(101), "{out}");
    assert!(out.contains("deliberate: spread 99% > 15%"), "{out}");
    assert!(out.contains("Unfair"), "{out}");
    assert!(
        !out.contains("auto_repro"),
        "no re-run without auto_repro: {out}"
    );
}

#[test]
fn expect_err_passes_only_when_the_case_fails() {
    if !kernel_available() {
        return;
    }
    let (code, out) = case("expected_failure/eevdf/1n1l1c1t");
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = case("unexpected_pass/eevdf/1n1l1c1t");
    assert_eq!(code, Some(101), "{out}");
    assert!(out.contains("expect_err"), "{out}");
}

/// A plain expect_err is not satisfied by a scheduler that never attached.
#[test]
fn expect_err_is_not_satisfied_by_a_scheduler_that_never_loads() {
    if !kernel_available() {
        return;
    }
    let (code, out) = case("expect_err_scheduler_never_loads/never-loads/1n1l1c1t");
    assert_eq!(code, Some(101), "{out}");
    assert!(out.contains("never attached"), "{out}");
    assert!(out.contains("scheduler failed to load"), "{out}");
}

#[test]
fn a_panicking_body_fails_with_the_panic_message() {
    if !kernel_available() {
        return;
    }
    let (code, out) = case("body_panics/eevdf/1n1l1c1t");
    assert_eq!(code, Some(101), "{out}");
    assert!(out.contains("deliberate body panic 4242"), "{out}");
}

#[test]
fn a_kernel_panic_fails_the_case_and_is_named() {
    if !kernel_available() {
        return;
    }
    let (code, out, sc) = case_and_sidecar("kernel_panics/eevdf/1n1l1c1t", "panic");
    assert_eq!(code, Some(101), "{out}");
    assert!(out.contains("guest kernel panic"), "{out}");
    assert!(
        out.contains("sysrq"),
        "the console tail shows the cause: {out}"
    );
    // The guest judged nothing, so the sidecar keeps the host's reason.
    assert_eq!(ktstr::runs::verdict(&sc), ktstr::runs::Verdict::Fail);
    assert!(
        sc.details
            .iter()
            .any(|d| d.kind == ktstr::assert::DetailKind::NoVerdict
                && d.message.contains("guest kernel panic")),
        "{:?}",
        sc.details
    );
}

/// Without a kernel (and outside CI) a case is skipped: the harness lists it as ignored (so
/// nextest never runs it into a pass), says why on stderr, and an `expect_err` case is not
/// turned into a pass by the failure to run.
/// Under CI the same case fails instead. Needs no VM, so it runs everywhere.
#[test]
fn a_case_without_a_kernel_is_skipped_outside_ci_and_fails_under_ci() {
    let run = |ci: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_verdict_fixtures"));
        let empty_cache = tempfile::tempdir().unwrap();
        cmd.args(["--exact", "expected_failure/eevdf/1n1l1c1t"])
            .env_remove("KTSTR_KERNEL")
            .env("KTSTR_CACHE_DIR", empty_cache.path())
            .env_remove("CI");
        if ci {
            cmd.env("CI", "true");
        }
        let o = cmd.output().expect("running the fixture binary");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.code(), text)
    };
    let (code, out) = run(false);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 ignored"), "not reported as ignored:\n{out}");
    assert!(
        out.contains("KTSTR_KERNEL is not set"),
        "no reason given:\n{out}"
    );
    assert!(out.contains("0 passed"), "{out}");
    assert!(!out.contains("failed as expected"), "{out}");
    let (code, out) = run(true);
    assert_eq!(code, Some(101), "{out}");
    assert!(out.contains("KTSTR_KERNEL"), "{out}");
}

/// Boot-to-init runs from the guest's start to init's hello on both backends: it holds the
/// kernel's own boot (its uptime when init started, from the hello) and fits in the total.
#[test]
fn boot_to_init_holds_the_kernels_own_boot() {
    if !kernel_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = case_with(
        "expected_failure/eevdf/1n1l1c1t",
        &[("KTSTR_SIDECAR_DIR", dir.path().to_str().unwrap())],
    );
    assert_eq!(code, Some(0), "{out}");
    let run = ktstr::runs::load_run(dir.path()).unwrap();
    let d = run.sidecars[0].1.durations;
    let guest = d
        .guest_boot_ms
        .expect("the hello carries the guest's uptime");
    assert!(guest > 0, "{d:?}");
    assert!(
        d.boot_ms >= guest,
        "boot_ms ends before init started: {d:?}"
    );
    assert!(d.boot_ms + d.run_ms <= d.total_ms, "{d:?}");
}

/// A teardown over the test's cleanup_budget_ms fails an otherwise passing case.
#[test]
fn a_teardown_over_budget_fails_the_case() {
    if !kernel_available() {
        return;
    }
    let (code, out) = case("over_cleanup_budget/eevdf/1n1l1c1t");
    assert_eq!(code, Some(101), "{out}");
    assert!(
        out.contains("over the test's cleanup_budget_ms of 1 ms"),
        "{out}"
    );
}

/// [`case_and_sidecar`] with strict-mode and perf-mode variables removed first.
fn plain_case_and_sidecar(
    name: &str,
    tag: &str,
    envs: &[(&str, &str)],
) -> (Option<i32>, String, Option<ktstr::sidecar::Sidecar>) {
    let dir = std::env::temp_dir().join(format!("ktstr-{tag}-sidecar-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut all = vec![("KTSTR_SIDECAR_DIR", dir.to_str().unwrap())];
    all.extend_from_slice(envs);
    let (code, out) = case_env(name, &all, &STRICT_AND_PERF);
    let sc = ktstr::runs::load_run(&dir)
        .ok()
        .and_then(|r| r.sidecars.into_iter().next().map(|(_, s)| s));
    let _ = std::fs::remove_dir_all(&dir);
    (code, out, sc)
}

const STRICT_AND_PERF: [&str; 3] = ["CI", "KTSTR_NO_SKIP_MODE", "KTSTR_NO_PERF_MODE"];

/// performance_mode gets tier-1 isolation where the host can give it: the one-vCPU case runs
/// with its vCPU pinned to a host CPU of its own, beside a separate service CPU, and the
/// sidecar says so (and what perf mode could not do here, such as hugepages).
#[test]
fn performance_mode_pins_the_vcpu_and_records_the_placement() {
    if !kernel_available() {
        return;
    }
    let allowed = ktstr::host_cpus::allowed_cpus().unwrap();
    if allowed.len() < 2 {
        eprintln!("one host CPU: performance mode cannot fit even one vCPU here");
        return;
    }
    let (code, out, sc) =
        plain_case_and_sidecar("performance_mode_case/eevdf/1n1l1c1t", "perf", &[]);
    assert_eq!(code, Some(0), "{out}");
    let p = sc
        .expect("a sidecar")
        .placement
        .expect("a placement record");
    assert_eq!(p.tier, "performance", "{p:?}");
    assert_eq!(p.vcpu_pins.len(), 1, "{p:?}");
    assert_eq!(
        p.host_cpus.len(),
        2,
        "the vCPU's CPU and the service CPU: {p:?}"
    );
    assert!(p.host_cpus.contains(&p.vcpu_pins[0]), "{p:?}");
    assert!(allowed.contains(&p.vcpu_pins[0]), "{p:?}");
    // RT as far as this host permits it (root usually; not where RT bandwidth is withheld),
    // and a note when not.
    assert_eq!(p.realtime, ktstr::placement::realtime_permitted(), "{p:?}");
    if !p.realtime {
        assert!(p.notes.iter().any(|n| n.contains("SCHED_FIFO")), "{p:?}");
    }
    let free = ktstr::placement::free_hugepages().unwrap_or(0);
    if free < ktstr::placement::hugepages_for(256) {
        assert!(!p.hugepages, "{p:?}");
        assert!(
            p.notes.iter().any(|n| n.contains("hugepages")),
            "without free hugepages the sidecar says so: {p:?}"
        );
    }
    // Under --no-perf-mode the same test runs capped, and says it was not isolated.
    let (code, out, sc) = plain_case_and_sidecar(
        "performance_mode_case/eevdf/1n1l1c1t",
        "perf-off",
        &[("KTSTR_NO_PERF_MODE", "1")],
    );
    assert_eq!(code, Some(0), "{out}");
    let p = sc
        .expect("a sidecar")
        .placement
        .expect("a placement record");
    assert_eq!(p.tier, "capped", "{p:?}");
    assert!(p.notes.iter().any(|n| n.contains("not isolated")), "{p:?}");
}

/// A performance_mode topology the host cannot isolate is listed as skipped (never passed),
/// and fails naming the host's size when run anyway or in strict mode.
#[test]
fn performance_mode_too_big_for_the_host_is_skipped_or_fails_with_the_reason() {
    if !kernel_available() {
        return;
    }
    let name = "performance_mode_too_big/eevdf/1n1l64c1t";
    let (code, out) = case_env(name, &[], &STRICT_AND_PERF);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 ignored"), "{out}");
    let run_anyway = Command::new(env!("CARGO_BIN_EXE_verdict_fixtures"))
        .args(["--exact", name, "--include-ignored", "--nocapture"])
        .env_remove("CI")
        .env_remove("KTSTR_NO_SKIP_MODE")
        .env_remove("KTSTR_NO_PERF_MODE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run_anyway.stdout).to_string()
        + &String::from_utf8_lossy(&run_anyway.stderr);
    assert_eq!(run_anyway.status.code(), Some(101), "{text}");
    assert!(
        text.contains("host too small for performance mode") && text.contains("--no-perf-mode"),
        "{text}"
    );
    let (code, out) = case_env(name, &[("KTSTR_NO_SKIP_MODE", "1")], &STRICT_AND_PERF);
    assert_eq!(code, Some(101), "{out}");
    assert!(out.contains("host too small for performance mode"), "{out}");
}

/// The evidence a sidecar carries besides the verdict: a scenario's phases (BASELINE, then
/// one entry per step, back to back, each with the workers that ran in it, their iterations
/// and CPU shares: 4 spinners on 2 CPUs in the second step get less of a CPU each than 2 did
/// in the first); the scheduler's BPF programs with verified instructions and run counts; and
/// on the KVM backend KVM's own exit counters (null under qemu, which does not share them).
#[test]
fn a_sidecar_records_phases_bpf_programs_and_kvm_exits() {
    if !kernel_available() {
        return;
    }
    // The verdict is not the point here (the second cgroup starts late, which the fairness
    // checks may or may not flag); the record is.
    let (_, out, sc) = case_and_sidecar("two_steps/scx-demo/1n1l2c1t", "evidence");
    let p = &sc.phases;
    let labels: Vec<&str> = p.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(labels, ["BASELINE", "Step[0]", "Step[1]"], "{out}");
    assert_eq!(
        p.iter().map(|p| p.step_index).collect::<Vec<_>>(),
        [0, 1, 2]
    );
    for w in p.windows(2) {
        assert_eq!(w[0].end_ms, w[1].start_ms, "phases are back to back: {p:?}");
    }
    assert_eq!(p[0].workers, 0, "{p:?}");
    assert_eq!((p[1].workers, p[2].workers), (2, 4), "{p:?}");
    assert!(p[1].iterations > 0 && p[2].iterations > 0, "{p:?}");
    assert!(p[1].iterations_per_s > 0.0, "{p:?}");
    assert!(
        p[2].mean_cpu_share_pct < p[1].mean_cpu_share_pct,
        "4 spinners on 2 CPUs get less each than 2 did: {p:?}"
    );
    assert!(
        p[1].mean_cpu_share_pct > 0.0 && p[1].mean_cpu_share_pct <= 100.0,
        "{p:?}"
    );

    let v = sc
        .verifier_stats
        .as_ref()
        .unwrap_or_else(|| panic!("no verifier_stats: {out}"));
    let progs = v["programs"].as_array().expect("a list of programs");
    assert!(
        progs
            .iter()
            .any(|p| p["prog_type"] == 27 && p["name"].as_str().is_some()),
        "scx_demo's struct_ops callbacks are listed: {v}"
    );
    assert!(v["total_verified_insns"].as_u64() > Some(0), "{v}");
    assert!(
        v["total_run_cnt"].as_u64() > Some(0),
        "the callbacks ran and were counted: {v}"
    );

    if sc.backend == "kvm" {
        let k = sc
            .kvm_stats
            .as_ref()
            .expect("KVM statistics on the KVM backend");
        assert!(k["vcpus"] == 2, "{k}");
        assert!(k["vcpu"]["exits"].as_u64() > Some(0), "{k}");
    } else {
        assert_eq!(sc.kvm_stats, None, "qemu has no KVM statistics to give");
    }
}

/// A payload's JSON metrics reach the sidecar: cyclictest's per-thread summary, as dotted
/// metrics, with its index and exit code.
#[test]
fn a_payloads_metrics_reach_the_sidecar() {
    if !kernel_available() {
        return;
    }
    let (code, out, sc) = case_and_sidecar("payload_metrics/eevdf/1n1l2c1t", "payload");
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(sc.metrics.len(), 1, "{:?}", sc.metrics);
    let m = &sc.metrics[0];
    assert_eq!(m["payload_index"], 0, "{m}");
    assert_eq!(m["name"], "cyclictest", "{m}");
    assert_eq!(m["exit_code"], 0, "{m}");
    assert!(m["metrics"]["thread.0.cycles"].as_f64() > Some(0.0), "{m}");
    assert!(m["metrics"]["thread.0.avg"].as_f64() > Some(0.0), "{m}");
}

/// A payload binary the host does not have fails the case before any VM boots, naming it.
#[test]
fn a_missing_payload_binary_fails_the_case_naming_it() {
    let (code, out) = case("payload_missing/eevdf/1n1l1c1t");
    assert_eq!(code, Some(101), "{out}");
    assert!(
        out.contains("payload nope: \"no-such-benchmark-ktstr\" is not a program on this host"),
        "{out}"
    );
}

/// `auto_repro`: a case that fails (CPU 1 stalls) runs once more with the monitor sampling 10x
/// as often; the report quotes the second run and names both sidecars, which point at each
/// other, and only the first is a run `stats` pools.
#[test]
fn a_failing_auto_repro_case_runs_again_with_a_finer_monitor() {
    if !kernel_available() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ktstr-repro-sidecar-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (code, out) = case_with(
        "cpu_stall_repro/scx-demo/1n1l2c1t",
        &[("KTSTR_SIDECAR_DIR", dir.to_str().unwrap())],
    );
    let run = ktstr::runs::load_run(&dir).unwrap();
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let repros: Vec<ktstr::sidecar::Sidecar> = files
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(ktstr::sidecar::REPRO_SUFFIX))
        .map(|p| ktstr::runs::read_sidecar(p).unwrap())
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(101), "{out}");
    assert!(
        out.contains("auto_repro: ran the case again with the host monitor every"),
        "{out}"
    );
    let again = out.split("auto_repro:").nth(1).unwrap();
    assert!(
        again.contains("it failed again:") && again.contains("Monitor: CPU 1 stalled"),
        "{out}"
    );
    assert_eq!(
        run.sidecars.len(),
        1,
        "stats sees one run of the case: {files:?}"
    );
    let first = &run.sidecars[0].1;
    let link = first
        .repro
        .as_ref()
        .expect("the first sidecar links the re-run");
    assert!(!link.passed, "{link:?}");
    let name = link.sidecar.as_deref().expect("the re-run's sidecar");
    assert!(name.ends_with(ktstr::sidecar::REPRO_SUFFIX), "{name}");
    let second_path = files.iter().find(|p| p.ends_with(name)).expect("written");
    assert!(
        out.contains(&format!("second run's sidecar: {}", second_path.display())),
        "{out}"
    );
    let [second] = &repros[..] else {
        panic!("one re-run sidecar: {files:?}")
    };
    assert_eq!(second.repro_of.as_deref(), Some(first.file_name().as_str()));
    let period =
        |s: &ktstr::sidecar::Sidecar| s.monitor.as_ref().unwrap()["period_ms"].as_u64().unwrap();
    assert_eq!(period(second) * 10, period(first), "10x the rate");
    assert_eq!(link.monitor_period_ms, period(second));
    eprintln!("{out}");
    assert!(
        second.monitor.as_ref().unwrap()["total_samples"].as_u64()
            > first.monitor.as_ref().unwrap()["total_samples"].as_u64(),
        "the re-run took more samples"
    );
}

/// A `bpf_map_write` the host cannot make (no such map) fails the case with the reason and
/// the maps the host found in guest memory.
#[test]
fn a_bpf_map_write_into_a_missing_map_fails_naming_the_maps_found() {
    if !kernel_available() {
        return;
    }
    let (code, out) = case("map_write_missing/scx-demo/1n1l2c1t");
    assert_eq!(code, Some(101), "{out}");
    assert!(
        out.contains(
            "Other: bpf_map_write was not applied: no BPF array map's name ends in \".no_such_map\" (loaded maps: "
        ),
        "{out}"
    );
    assert!(
        out.contains(".data.trig"),
        "scx_demo's maps are listed: {out}"
    );
}
