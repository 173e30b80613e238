//! `cargo ktstr` subcommands that do not boot VMs.

mod common;

use common::{ktstr, text};

#[test]
fn show_thresholds_prints_every_field_and_suggests_names() {
    let o = ktstr(&["show-thresholds", "spinners_progress"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("test: spinners_progress"), "{out}");
    assert!(out.contains("max_gap_ms: "), "{out}");
    assert!(out.contains("max_throughput_cv: none"), "{out}");
    // A threshold nothing checks yet does not pass for one that is checked.
    assert!(
        out.contains("max_fallback_rate: 200.0 (not evaluated yet"),
        "{out}"
    );
    assert!(out.contains("max_imbalance_ratio: 4.0\n"), "{out}");
    assert!(!out.contains("max_gap_ms: 3000 (not evaluated"), "{out}");
    // A case name works too; under TCG the time-based limits in force are scaled.
    let o = ktstr(
        &["show-thresholds", "spinners_progress/eevdf/1n1l2c1t"],
        &[("KTSTR_BACKEND", "qemu")],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("backend: qemu (TCG), time scale 4"), "{out}");
    assert!(out.contains("(in force: "), "{out}");
    let o = ktstr(&["show-thresholds", "spinner_progress"], &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("did you mean spinners_progress"), "{err}");
    let o = ktstr(&["show-thresholds", "eevdf::spinners_progress"], &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("strip the `<binary>::` prefix"), "{err}");
}

/// A cap the host cannot give, a malformed KTSTR_CPU_CAP, and a cap beside
/// KTSTR_BYPASS_LLC_LOCKS are refused before any kernel or initramfs is touched.
#[test]
fn impossible_cpu_caps_are_refused_up_front() {
    let shell = |extra: &[&str], envs: &[(&str, &str)]| {
        let mut args = vec!["shell", "--no-perf-mode", "--exec", "true"];
        args.extend_from_slice(extra);
        let o = ktstr(&args, envs);
        (o.status.code(), text(&o).1)
    };
    let (code, err) = shell(&["--cpu-cap", "100000"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--cpu-cap 100000: must be between 1 and the"),
        "{err}"
    );
    let (code, err) = shell(&[], &[("KTSTR_CPU_CAP", "lots")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("KTSTR_CPU_CAP=\"lots\" is not a CPU count"),
        "{err}"
    );
    let (code, err) = shell(&["--cpu-cap", "1"], &[("KTSTR_BYPASS_LLC_LOCKS", "1")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot be combined with KTSTR_BYPASS_LLC_LOCKS"),
        "{err}"
    );
}

#[test]
fn show_host_prints_the_live_host_context() {
    let o = ktstr(&["show-host"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for key in [
        "cpu: ",
        "memory: ",
        "transparent hugepages: ",
        "kernel: Linux ",
        "sched tunables (",
    ] {
        assert!(out.contains(key), "no {key:?} in:\n{out}");
    }
}

/// A lock a process holds in `KTSTR_LOCK_DIR` is listed with that holder, in text and JSON,
/// and `locks` itself takes nothing (the exclusive lock stays ours throughout).
#[test]
fn locks_lists_holders_without_taking_locks() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(dir.path().join("ktstr-llc-7.lock")).unwrap();
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(r, 0);
    let lock_dir = dir.path().to_str().unwrap();
    let cache_dir = cache.path().to_str().unwrap();
    let envs = [("KTSTR_LOCK_DIR", lock_dir), ("KTSTR_CACHE_DIR", cache_dir)];
    let o = ktstr(&["locks", "--json"], &envs);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let e = &v[0];
    assert_eq!(e["kind"], "llc", "{out}");
    assert_eq!(e["index"], 7, "{out}");
    assert_eq!(e["holders"][0]["pid"], std::process::id(), "{out}");
    assert_eq!(e["holders"][0]["mode"], "exclusive", "{out}");
    let o = ktstr(&["locks"], &envs);
    let (out, _) = text(&o);
    assert!(
        out.contains("exclusive") && out.contains("1 of 1 lock files held"),
        "{out}"
    );
    let o = ktstr(&["locks", "--watch", "soon"], &envs);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).1.contains("such as 100ms"));
}

#[test]
fn completions_cover_the_subcommands() {
    let o = ktstr(&["completions", "bash"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for sub in ["shell", "verifier", "locks", "show-thresholds"] {
        assert!(out.contains(sub), "no {sub} in the bash completions");
    }
    let o = ktstr(&["completions", "tcsh"], &[]);
    assert_eq!(o.status.code(), Some(2));
}

/// `test` hands its trailing arguments to `cargo nextest run` unchanged, exports the kernel,
/// and exits with nextest's status (128 + signal when it is killed). `CARGO` points at a
/// stand-in that reports what it was given.
#[test]
fn test_runs_nextest_with_the_kernel_and_passes_its_status_back() {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::tempdir().unwrap();
    let kdir = d.path().join("linux");
    std::fs::create_dir(&kdir).unwrap();
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    std::fs::write(kdir.join("vmlinux"), &elf).unwrap();
    let fake = d.path().join("cargo");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"args: $*\"\necho \"kernel: $KTSTR_KERNEL perf-off: $KTSTR_NO_PERF_MODE\"\n\
         [ \"$KTSTR_UNRUNNABLE_DIR\" ] && echo '[{\"case\":\"p/eevdf/1n1l2c1t\",\"why\":\"performance_mode\"}]' \
         > \"$KTSTR_UNRUNNABLE_DIR/suite.json\"\n\
         [ \"$FAKE_SIGNAL\" ] && kill -TERM $$\nexit 7\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let kd = kdir.to_str().unwrap();
    let args = [
        "test",
        "--kernel",
        kd,
        "--no-perf-mode",
        "--workspace",
        "--release",
    ];
    let o = ktstr(&args, &[("CARGO", fake.to_str().unwrap())]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(7), "{out}{err}");
    assert!(
        out.contains("args: nextest run --workspace --release\n"),
        "{out}"
    );
    // What the test binaries recorded as unable to run is summarised after the run.
    assert!(
        err.contains("ktstr: 1 case(s) of the listed test binaries could not run")
            && err.contains("1: performance_mode needs tier-1")
            && err.contains("--no-perf-mode"),
        "{err}"
    );
    let canon = kdir.canonicalize().unwrap();
    assert!(
        out.contains(&format!("kernel: {} perf-off: 1", canon.display())),
        "{out}"
    );
    let o = ktstr(
        &["nextest"],
        &[("CARGO", fake.to_str().unwrap()), ("FAKE_SIGNAL", "1")],
    );
    assert_eq!(o.status.code(), Some(128 + 15), "{}", text(&o).1);
    // A version the (empty) kernel cache does not have: refused, naming how to build it.
    let empty_cache = tempfile::tempdir().unwrap();
    let o = ktstr(
        &["test", "--kernel", "6.12"],
        &[("KTSTR_CACHE_DIR", empty_cache.path().to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert!(
        err.contains("not in the kernel cache (the cache is empty)")
            && err.contains("cargo ktstr kernel build 6.12"),
        "{err}"
    );
}

/// `--watch` writes one compact JSON document per interval and stops cleanly on SIGINT.
#[test]
fn locks_watch_emits_ndjson_until_interrupted() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    std::fs::File::create(dir.path().join("ktstr-cpu-3.lock")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-ktstr"))
        .args(["ktstr", "locks", "--json", "--watch", "50ms"])
        .env("KTSTR_LOCK_DIR", dir.path())
        .env("KTSTR_CACHE_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    for _ in 0..2 {
        let line = lines.next().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v[0]["kind"], "cpu", "{line}");
        assert_eq!(v[0]["index"], 3, "{line}");
    }
    // SAFETY: signalling our own child by its pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
}

/// Writes a sidecar for `stats` tests into `{root}/{key}/`.
fn record(root: &std::path::Path, key: &str, test: &str, topo: &str, passed: bool, host: bool) {
    let mut s = ktstr::sidecar::Sidecar::default();
    s.test_name = test.into();
    s.case_name = format!("{test}/eevdf/{topo}");
    s.topology = topo.into();
    s.scheduler = "eevdf".into();
    s.passed = passed;
    s.kernel_version = "6.12.117".into();
    s.project_commit = key.rsplit('-').next().unwrap().into();
    s.run_source = "local".into();
    if !passed {
        s.details = vec![ktstr::assert::AssertDetail {
            kind: ktstr::assert::DetailKind::Starved,
            message: "worker 1 starved for 2500 ms".into(),
        }];
    }
    s.host = host.then(ktstr::host_context::HostContext::collect);
    ktstr::sidecar::write_atomic(&root.join(key), &s).unwrap();
}

/// `stats` summarises the newest run (verdict counts, per topology, why cases failed),
/// `stats list` shows every run, `list-values` the distinct values (archived with --dir),
/// `show-host` a run's host; a bad sidecar is a warning, a missing run or root an error.
#[test]
fn stats_reads_recorded_runs() {
    let target = tempfile::tempdir().unwrap();
    let root = target.path().join("ktstr");
    let t = target.path().to_str().unwrap();
    let env = [("CARGO_TARGET_DIR", t)];
    let o = ktstr(&["stats"], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("run the tests first"), "{}", text(&o).1);

    record(
        &root,
        "6.12.117-aaaaaaa",
        "old_test",
        "1n1l2c1t",
        true,
        false,
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    record(&root, "6.12.117-bbbbbbb", "spin", "1n1l2c1t", true, true);
    record(&root, "6.12.117-bbbbbbb", "starve", "2n2l2c1t", false, true);
    std::fs::write(
        root.join("6.12.117-bbbbbbb/cut.ktstr.json"),
        "{\"test_name\":",
    )
    .unwrap();

    let o = ktstr(&["stats"], &env);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("run 6.12.117-bbbbbbb, nextest run"), "{out}");
    assert!(out.contains("(2 of the 2 cases in"), "{out}");
    assert!(out.contains("pass 1  fail 1  skip 0"), "{out}");
    assert!(
        out.contains("starve/eevdf/2n2l2c1t: worker 1 starved for 2500 ms"),
        "{out}"
    );
    assert!(
        err.contains("cut.ktstr.json is not a readable sidecar"),
        "{err}"
    );

    let o = ktstr(&["stats", "list"], &env);
    let out = text(&o).0;
    let (new, old) = (
        out.find("6.12.117-bbbbbbb").unwrap(),
        out.find("6.12.117-aaaaaaa").unwrap(),
    );
    assert!(new < old, "newest first: {out}");
    assert!(out.contains("old_test"), "{out}");

    let o = ktstr(&["stats", "list-values", "--json"], &env);
    let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["commit"], serde_json::json!(["aaaaaaa", "bbbbbbb"]));
    assert_eq!(v["kernel_commit"], serde_json::json!([null]));
    assert_eq!(v["source"], serde_json::json!(["local"]));
    assert_eq!(v["topology"], serde_json::json!(["1n1l2c1t", "2n2l2c1t"]));
    let o = ktstr(
        &[
            "stats",
            "list-values",
            "--json",
            "--dir",
            root.to_str().unwrap(),
        ],
        &[],
    );
    let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["source"], serde_json::json!(["archive"]));

    let o = ktstr(&["stats", "show-host", "--run", "6.12.117-bbbbbbb"], &env);
    assert!(o.status.success());
    assert!(text(&o).0.contains("kernel: Linux "), "{}", text(&o).0);
    let o = ktstr(&["stats", "show-host", "--run", "6.12.117-aaaaaaa"], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("predates host capture"),
        "{}",
        text(&o).1
    );
    let o = ktstr(&["stats", "show-host", "--run", "nope"], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("stats list"), "{}", text(&o).1);
}

/// `replay` prints one anchored regex per failed test (deduplicated over runs, `-E` narrows
/// by substring), runs nextest with it under `--exec`, and never starts nextest when nothing
/// failed.
#[test]
fn replay_selects_exactly_the_failed_tests() {
    use std::os::unix::fs::PermissionsExt;
    let target = tempfile::tempdir().unwrap();
    let root = target.path().join("ktstr");
    let env = [("CARGO_TARGET_DIR", target.path().to_str().unwrap())];
    record(
        &root,
        "6.12.117-aaaaaaa",
        "starve",
        "1n1l2c1t",
        false,
        false,
    );
    record(
        &root,
        "6.12.117-bbbbbbb",
        "starve",
        "2n2l2c1t",
        false,
        false,
    );
    record(&root, "6.12.117-bbbbbbb", "spin", "1n1l2c1t", true, false);
    record(
        &root,
        "6.12.117-bbbbbbb",
        "fault_stall",
        "1n1l2c1t",
        false,
        false,
    );
    let o = ktstr(&["replay"], &env);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out, "test(/^fault_stall\\//) | test(/^starve\\//)\n");
    let o = ktstr(&["replay", "-E", "fault"], &env);
    assert_eq!(text(&o).0, "test(/^fault_stall\\//)\n");

    let fake = target.path().join("cargo");
    std::fs::write(&fake, "#!/bin/sh\necho \"args: $*\"\nexit 3\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut env_exec = env.to_vec();
    env_exec.push(("CARGO", fake.to_str().unwrap()));
    let o = ktstr(&["replay", "--exec", "-E", "starve"], &env_exec);
    assert_eq!(o.status.code(), Some(3));
    assert_eq!(
        text(&o).0,
        "args: nextest run --run-ignored all -E test(/^starve\\//)\n"
    );
    let o = ktstr(&["replay", "--exec", "-E", "Starve"], &env_exec);
    assert!(o.status.success());
    assert_eq!(text(&o).0, "", "case-sensitive, and nextest is not started");
    assert!(text(&o).1.contains("nothing to replay"), "{}", text(&o).1);
}

#[test]
fn list_metrics_prints_the_registry() {
    let o = ktstr(&["stats", "list-metrics", "--json"], &[]);
    let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    let gap = v
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "worst_gap_ms")
        .unwrap();
    assert_eq!(gap["polarity"], "lower_is_better");
    assert_eq!(gap["default_abs"], 500.0);
    assert_eq!(gap["default_rel"], 0.5);
    assert_eq!(gap["unit"], "ms");
    let o = ktstr(&["stats", "list-metrics"], &[]);
    assert!(text(&o).0.contains("total_iterations"));
    assert!(text(&o).0.contains("per-phase metrics"));
    assert!(text(&o).0.contains("cpu_share_spread_pct"));
}

/// `explain-sidecar` names each null optional field with its classification, counts them in
/// JSON, lists unreadable files with a remedy, and fails only without sidecars.
#[test]
fn explain_sidecar_says_why_fields_are_null() {
    let target = tempfile::tempdir().unwrap();
    let root = target.path().join("ktstr");
    let env = [("CARGO_TARGET_DIR", target.path().to_str().unwrap())];
    record(&root, "6.12.117-aaaaaaa", "spin", "1n1l2c1t", true, true);
    record(&root, "6.12.117-aaaaaaa", "old", "1n1l2c1t", true, false);
    std::fs::write(
        root.join("6.12.117-aaaaaaa/cut.ktstr.json"),
        "{\"test_name\":",
    )
    .unwrap();
    let o = ktstr(
        &["stats", "explain-sidecar", "--run", "6.12.117-aaaaaaa"],
        &env,
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("walked 3 sidecar files, parsed 2"), "{out}");
    assert!(out.contains("host: null (actionable)"), "{out}");
    assert!(out.contains("corrupt sidecars (1):"), "{out}");
    assert!(out.contains("enriched: the file is cut short"), "{out}");
    let o = ktstr(
        &[
            "stats",
            "explain-sidecar",
            "--run",
            "6.12.117-aaaaaaa",
            "--json",
        ],
        &env,
    );
    let v: serde_json::Value = serde_json::from_str(&text(&o).0).unwrap();
    assert_eq!(v["_schema_version"], "1");
    assert_eq!(v["_walk"]["walked"], 3);
    assert_eq!(v["_walk"]["valid"], 2);
    assert_eq!(v["fields"]["host"]["none_count"], 1);
    assert_eq!(v["fields"]["host"]["some_count"], 1);
    assert_eq!(v["fields"]["host"]["classification"], "actionable");
    assert_eq!(v["fields"]["monitor"]["none_count"], 2);
    std::fs::create_dir(root.join("empty")).unwrap();
    let o = ktstr(&["stats", "explain-sidecar", "--run", "empty"], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("holds no .ktstr.json files"),
        "{}",
        text(&o).1
    );
}

/// Writes a passing sidecar with a kernel version and a longest gap.
fn record_gap(root: &std::path::Path, key: &str, kernel: &str, gap: f64) {
    let mut s = ktstr::sidecar::Sidecar::default();
    s.test_name = "spin".into();
    s.scenario = "eevdf".into();
    s.case_name = "spin/eevdf/1n1l2c1t".into();
    s.topology = "1n1l2c1t".into();
    s.scheduler = "eevdf".into();
    s.passed = true;
    s.kernel_version = kernel.into();
    s.project_commit = "abc1234".into();
    s.run_source = "local".into();
    let mut st = ktstr::assert::ScenarioStats::default();
    st.worst_gap_ms = gap;
    st.total_iterations = 1000;
    s.stats = Some(st);
    s.host = Some(ktstr::host_context::HostContext::collect());
    ktstr::sidecar::write_atomic(&root.join(key), &s).unwrap();
}

/// `stats compare` pairs the kernel slices, marks a worse gap as a REGRESSION and exits 1;
/// the other direction is an improvement (exit 0); identical sides, empty sides and a
/// policy with a misspelt metric are errors that say what to do; conflicting flags are usage
/// errors.
#[test]
fn stats_compare_flags_regressions() {
    let target = tempfile::tempdir().unwrap();
    let root = target.path().join("ktstr");
    let env = [("CARGO_TARGET_DIR", target.path().to_str().unwrap())];
    record_gap(&root, "6.12.5-abc1234", "6.12.5", 100.0);
    record_gap(&root, "6.13.0-abc1234", "6.13.0", 1500.0);
    let cmp = |extra: &[&str]| {
        let mut args = vec!["stats", "compare"];
        args.extend_from_slice(extra);
        let o = ktstr(&args, &env);
        let (out, err) = text(&o);
        (o.status.code(), out, err)
    };
    let (code, out, err) = cmp(&["--a-kernel", "6.12", "--b-kernel", "6.13"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("slicing: kernel"), "{out}");
    assert!(out.contains("REGRESSION"), "{out}");
    assert!(out.contains("1 pairs compared: 1 regressions"), "{out}");
    assert!(out.contains("host: the same on both sides"), "{out}");
    assert!(err.contains("1 metric regression(s)"), "{err}");
    let (code, out, _) = cmp(&["--a-kernel", "6.13", "--b-kernel", "6.12"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("improvement"), "{out}");
    let (code, _, err) = cmp(&["--kernel", "6.12"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("nothing to compare"), "{err}");
    let (code, _, err) = cmp(&["--a-kernel", "6.12", "--b-kernel", "6.14"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no rows match filter B"), "{err}");
    let policy = target.path().join("p.json");
    std::fs::write(&policy, r#"{"per_metric_percent": {"wrost_spread": 5}}"#).unwrap();
    let p = policy.to_str().unwrap();
    let (code, _, err) = cmp(&["--a-kernel", "6.12", "--b-kernel", "6.13", "--policy", p]);
    assert_eq!(code, Some(1));
    assert!(err.contains("did you mean worst_spread"), "{err}");
    let (code, _, _) = cmp(&[
        "--a-kernel",
        "6.12",
        "--b-kernel",
        "6.13",
        "--threshold",
        "5",
        "--policy",
        p,
    ]);
    assert_eq!(code, Some(2));
    let (code, _, _) = cmp(&[
        "--a-kernel",
        "6.12",
        "--b-kernel",
        "6.13",
        "--no-phases",
        "--phase",
        "1",
    ]);
    assert_eq!(code, Some(2));
}

/// `stats compare` renders a per-phase table for each pair from the sidecars' `phases`, and
/// `--phases-only`, `--steps-only`, `--phase N`, `--phase-threshold` and `--no-phases` choose
/// what shows; phase rows never change the exit code.
#[test]
fn stats_compare_renders_phase_tables() {
    let target = tempfile::tempdir().unwrap();
    let root = target.path().join("ktstr");
    let env = [("CARGO_TARGET_DIR", target.path().to_str().unwrap())];
    for (key, kernel, rate) in [
        ("6.12.5-abc1234", "6.12.5", 1000.0),
        ("6.13.0-abc1234", "6.13.0", 400.0),
    ] {
        record_gap(&root, key, kernel, 100.0);
        let dir = root.join(key);
        let file = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with(".ktstr.json"))
            .unwrap();
        let mut s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        s["phases"] = serde_json::json!([
            {"step_index": 0, "label": "BASELINE", "iterations_per_s": 100.0},
            {"step_index": 1, "label": "Step[0]", "iterations_per_s": rate},
            {"step_index": 2, "label": "Step[1]", "iterations_per_s": 1000.0, "mean_cpu_share_pct": 50.0},
        ]);
        std::fs::write(&file, serde_json::to_string(&s).unwrap()).unwrap();
    }
    let cmp = |extra: &[&str]| {
        let mut args = vec![
            "stats",
            "compare",
            "--a-kernel",
            "6.12",
            "--b-kernel",
            "6.13",
        ];
        args.extend_from_slice(extra);
        let o = ktstr(&args, &env);
        let (out, err) = text(&o);
        assert_eq!(o.status.code(), Some(0), "{out}{err}");
        out
    };
    let out = cmp(&[]);
    assert!(out.contains("phases of spin/eevdf"), "{out}");
    let regressed = out
        .lines()
        .find(|l| l.contains("1 Step[0]") && l.contains("iterations_per_s"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        regressed.contains("REGRESSION") && regressed.contains("-600"),
        "{regressed}"
    );
    assert!(
        out.contains("0 BASELINE") && out.contains("2 Step[1]"),
        "{out}"
    );
    assert!(
        out.contains("pairs compared"),
        "the scalar footer prints: {out}"
    );
    let only = cmp(&["--phases-only"]);
    assert!(
        only.contains("phases of") && !only.contains("pairs compared"),
        "{only}"
    );
    assert!(
        only.contains("host:"),
        "the host delta still prints: {only}"
    );
    let steps = cmp(&["--steps-only"]);
    assert!(
        !steps.contains("BASELINE") && steps.contains("Step[0]"),
        "{steps}"
    );
    let one = cmp(&["--phase", "2"]);
    assert!(
        one.contains("2 Step[1]") && !one.contains("Step[0]"),
        "{one}"
    );
    // Only step 0 changed (by 60%): a 50% phase threshold hides the unchanged rows.
    let big = cmp(&["--phase-threshold", "50"]);
    assert!(
        big.contains("1 Step[0]") && !big.contains("Step[1]"),
        "{big}"
    );
    let none = cmp(&["--phase", "9"]);
    assert!(none.contains("every phase row is filtered out"), "{none}");
    let no = cmp(&["--no-phases"]);
    assert!(
        !no.contains("phases of") && !no.contains("per-phase"),
        "{no}"
    );
}

/// `--a-project-commit HEAD~1 --b-project-commit HEAD` resolves in the repository around the
/// current directory to the short hashes sidecars record; a typo is an error that says so.
#[test]
fn stats_compare_resolves_commit_revisions() {
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let o = std::process::Command::new("git")
            .args(args)
            .current_dir(repo.path())
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .expect("git is installed (CI installs it)");
        assert!(o.status.success(), "git {args:?}: {}", text(&o).1);
        text(&o).0.trim().to_string()
    };
    git(&["init", "-q"]);
    let mut ids = Vec::new();
    for i in 0..2 {
        std::fs::write(repo.path().join("f"), i.to_string()).unwrap();
        git(&["add", "f"]);
        git(&["commit", "-q", "-m", "c"]);
        ids.push(git(&["rev-parse", "--short=7", "HEAD"]));
    }
    let target = tempfile::tempdir().unwrap();
    let root = target.path().join("ktstr");
    for (id, gap) in [(&ids[0], 100.0), (&ids[1], 1500.0)] {
        let key = format!("6.12.5-{id}");
        record_gap(&root, &key, "6.12.5", gap);
        let dir = root.join(&key);
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.to_string_lossy().ends_with(".ktstr.json") {
                let mut v: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                v["project_commit"] = serde_json::json!(id);
                std::fs::write(&path, v.to_string()).unwrap();
            }
        }
    }
    let cmp = |a: &str, b: &str| {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-ktstr"))
            .args([
                "ktstr",
                "stats",
                "compare",
                "--a-project-commit",
                a,
                "--b-project-commit",
                b,
            ])
            .current_dir(repo.path())
            .env("CARGO_TARGET_DIR", target.path())
            .output()
            .unwrap();
        let (out, err) = text(&o);
        (o.status.code(), out, err)
    };
    let (code, out, err) = cmp("HEAD~1", "HEAD");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("slicing: project-commit"), "{out}");
    assert!(
        out.contains(&format!("A: project-commit={}", ids[0])),
        "{out}"
    );
    assert!(out.contains("REGRESSION"), "{out}");
    let (code, out, err) = cmp("HAED~1", "HEAD");
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("--a-project-commit \"HAED~1\": not a revision"),
        "{err}"
    );
}

/// Every printing command ends quietly when its stdout is already closed (`| head`): killed by
/// SIGPIPE, exit 141 (a child was) or exit 0, never a "Broken pipe" panic (exit 101).
#[test]
fn a_closed_stdout_ends_commands_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let target = tempfile::tempdir().unwrap();
    let root = target.path().join("ktstr");
    record(&root, "6.12.117-aaaaaaa", "spin", "1n1l2c1t", true, true);
    let dir = target.path().to_str().unwrap();
    // (args, reads the temporary runs root): show-thresholds must see the real target dir, or
    // it would build every test binary again into the temporary one.
    let cases: [(&[&str], bool); 6] = [
        (&["stats", "list-metrics"], false),
        (&["show-host"], false),
        (
            &[
                "stats",
                "explain-sidecar",
                "--run",
                "6.12.117-aaaaaaa",
                "--json",
            ],
            true,
        ),
        (&["stats", "list"], true),
        (&["completions", "bash"], false),
        (&["show-thresholds", "spinners_progress"], false),
    ];
    for (args, temp_root) in cases {
        // The read end is closed before the command starts, so its first write fails.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-ktstr"));
        cmd.arg("ktstr").args(args).stdout(writer);
        if temp_root {
            cmd.env("CARGO_TARGET_DIR", dir);
        }
        let o = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            o.status.success()
                || o.status.signal() == Some(libc::SIGPIPE)
                || o.status.code() == Some(141),
            "{args:?}: {:?} {err}",
            o.status
        );
    }
}

/// `kernel list` and `kernel clean` over a cache with one good, one stale and one corrupt
/// entry: JSON flags, the table's states, keep/corrupt-only plans, and no removal without a
/// terminal unless --force. `kernel build` refuses what it cannot build, with hints.
#[test]
fn kernel_list_and_clean_over_a_cache() {
    use ktstr::kernel::cache::{kconfig_tag, KernelCache, Metadata, Source};
    let d = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(d.path());
    let add = |key: &str, tag: String, built_at: u64| {
        let s = cache.staging(key).unwrap();
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(s.join("bzImage"), bz).unwrap();
        let src = Source::Local {
            path: "/l".into(),
            commit: None,
        };
        let meta = Metadata {
            ktstr_kconfig_hash: tag,
            built_at,
            has_vmlinux: false,
            vmlinux_stripped: false,
            build_s: 1,
            ..Metadata::new("6.12.9", src)
        };
        cache.store(key, &s, &meta).unwrap();
    };
    add("good", kconfig_tag(), 200);
    add("old", "kc00000000".into(), 100);
    std::fs::create_dir_all(cache.dir().join("broken")).unwrap();
    let env = [("KTSTR_CACHE_DIR", d.path().to_str().unwrap())];
    let o = ktstr(&["kernel", "list", "--json"], &env);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["good", "old", "broken"]);
    assert_eq!(v[0]["usable"], true);
    assert_eq!(v[1]["stale"], true);
    assert!(v[2]["corrupt"].as_str().unwrap().contains("metadata.json"));
    let (out, _) = text(&ktstr(&["kernel", "list"], &env));
    assert!(
        out.contains("(stale kconfig)") && out.contains("corrupt:"),
        "{out}"
    );
    // No terminal: refused without --force, and nothing is removed.
    let o = ktstr(&["kernel", "clean", "--corrupt-only"], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("pass --force"), "{}", text(&o).1);
    assert_eq!(cache.list().len(), 3);
    let o = ktstr(&["kernel", "clean", "--corrupt-only", "--force"], &env);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(cache.list().len(), 2);
    let o = ktstr(&["kernel", "clean", "--keep", "1", "--force"], &env);
    assert!(o.status.success(), "{}", text(&o).1);
    let left: Vec<String> = cache.list().into_iter().map(|e| e.key).collect();
    assert_eq!(left, ["good"]);
    // What cannot be built says so.
    let o = ktstr(&["kernel", "build", "--source", "/nonexistent/linux"], &env);
    assert!(
        text(&o).1.contains("no such file or directory"),
        "{}",
        text(&o).1
    );
    let o = ktstr(
        &[
            "kernel",
            "build",
            "--git",
            "https://example.invalid/linux",
            "--ref",
            "v6.12",
        ],
        &env,
    );
    assert!(
        text(&o).1.contains("cannot reach example.invalid:443"),
        "{}",
        text(&o).1
    );
    let o = ktstr(&["kernel", "build", "1.0"], &env);
    assert!(
        text(&o).1.contains("apt-get install linux-source-1.0"),
        "{}",
        text(&o).1
    );
    let o = ktstr(&["kernel", "build", "6.12", "--source", "/x"], &env);
    assert_eq!(
        o.status.code(),
        Some(2),
        "clap refuses VERSION with --source"
    );
}

/// A real sidecar (scx_demo's cgroup_fairness under qemu) as `funify` input.
const SIDECAR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/cgroup_fairness.ktstr.json"
);

/// Every string leaf of `v` whose key is not allowlisted, with the key that holds it.
fn identifying_strings(key: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| identifying_strings(k, v, out)),
        serde_json::Value::Array(a) => a.iter().for_each(|e| identifying_strings(key, e, out)),
        serde_json::Value::String(s) if !ktstr::fun::Funifier::is_metric_passthrough(key) => {
            out.push((key.to_string(), s.clone()))
        }
        _ => {}
    }
}

/// Every numeric leaf of `v` as (path, value).
fn numbers(path: &str, v: &serde_json::Value, out: &mut Vec<(String, serde_json::Value)>) {
    match v {
        serde_json::Value::Object(m) => m
            .iter()
            .for_each(|(k, v)| numbers(&format!("{path}/{k}"), v, out)),
        serde_json::Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, e)| numbers(&format!("{path}/{i}"), e, out)),
        serde_json::Value::Number(_) => out.push((path.to_string(), v.clone())),
        _ => {}
    }
}

fn metric_values(doc: &serde_json::Value) -> Vec<(String, Option<f64>)> {
    let s: ktstr::sidecar::Sidecar = serde_json::from_value(doc.clone()).unwrap();
    let mut v: Vec<(String, Option<f64>)> = ktstr::metrics::METRICS
        .iter()
        .map(|m| (m.name.to_string(), (m.value)(&s)))
        .collect();
    for (i, p) in s.phases.iter().enumerate() {
        for m in ktstr::metrics::PHASE_METRICS {
            v.push((format!("phase {i} {}", m.name), (m.value)(p)));
        }
    }
    v
}

#[test]
fn funify_is_deterministic_hides_identifiers_and_keeps_every_metric() {
    let run = |args: &[&str]| {
        let o = ktstr(args, &[]);
        assert!(o.status.success(), "{:?}", text(&o));
        o.stdout
    };
    let a = run(&["funify", "--seed", "s", SIDECAR]);
    assert_eq!(
        a,
        run(&["funify", "--seed", "s", SIDECAR]),
        "same seed, same bytes"
    );
    assert_eq!(a, run(&["costume", "--seed", "s", SIDECAR]), "the alias");
    assert_ne!(a, run(&["funify", "--seed", "t", SIDECAR]));
    assert_ne!(a, run(&["funify", SIDECAR]), "no seed: a fresh key");
    assert!(a.ends_with(b"}\n") && a.iter().filter(|&&b| b == b'\n').count() == 1);
    let pretty = run(&["funify", "--seed", "s", "--pretty", SIDECAR]);
    assert!(pretty.iter().filter(|&&b| b == b'\n').count() > 50);

    let input: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(SIDECAR).unwrap()).unwrap();
    let out_text = String::from_utf8(a).unwrap();
    let out: serde_json::Value = serde_json::from_str(&out_text).unwrap();
    // Test and case names, paths, the commit, run ids, CPU model...: none survives.
    for needle in [
        "cgroup_fairness",
        "/work/",
        "scx_demo",
        "c532cea",
        &input["run_id"].as_str().unwrap()[..8],
    ] {
        assert!(!out_text.contains(needle), "{needle} survived: {out_text}");
    }
    let mut ids = Vec::new();
    identifying_strings("", &input, &mut ids);
    assert!(ids.len() > 20, "{ids:?}");
    for (k, s) in ids.iter().filter(|(_, s)| s.len() > 3) {
        assert!(!out_text.contains(&format!("\"{s}\"")), "{k}: {s} survived");
    }
    // Every metric reads the same out of the funified document as out of the original: no
    // numeric leaf that funify changed feeds any metric (each is perturbed in the original to
    // see whether a metric moves).
    let base = metric_values(&input);
    assert!(
        base.iter().filter(|(_, v)| v.is_some()).count() > 10,
        "{base:?}"
    );
    let (mut before, mut after) = (Vec::new(), Vec::new());
    numbers("", &input, &mut before);
    numbers("", &out, &mut after);
    assert_eq!(before.len(), after.len());
    let mut changed = 0;
    for ((path, v), (_, w)) in before.iter().zip(&after) {
        if v == w {
            continue;
        }
        changed += 1;
        assert!(
            !v.is_f64(),
            "funify changed the float at {path}: {v} -> {w}"
        );
        let mut probe = input.clone();
        *probe.pointer_mut(path).unwrap() = match v.as_u64() {
            Some(u) => serde_json::json!(u + 1),
            None => serde_json::json!(v.as_i64().unwrap() - 1),
        };
        if let Ok(s) = std::panic::catch_unwind(|| metric_values(&probe)) {
            assert_eq!(s, base, "funify changed {path}, which a metric reads");
        }
    }
    assert!(
        changed > 0,
        "some integers are identifiers (pids, sizes...)"
    );
}

#[test]
fn funify_refuses_what_is_not_json_and_reads_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("notes.txt");
    std::fs::write(&bad, "not { json").unwrap();
    let o = ktstr(&["funify", bad.to_str().unwrap()], &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("notes.txt is not JSON") && err.contains("caused by: expected"),
        "{err}"
    );
    let o = ktstr(&["funify", "/nonexistent/x.json"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("reading /nonexistent/x.json"),
        "{:?}",
        text(&o)
    );
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-ktstr"));
    let mut child = c
        .args(["ktstr", "funify", "--seed", "k", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"comm":"scx_simple","pid":1234,"nr_running":7}"#)
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["nr_running"], 7);
    assert_ne!(v["comm"], "scx_simple");
}

#[test]
fn model_status_fetch_offline_and_clean_work_without_a_network() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().to_str().unwrap();
    let file = d.path().join("models/Phi-3-mini-4k-instruct-q4.gguf");
    let sha = ktstr::model::DEFAULT_MODEL.sha256;
    let env = [("KTSTR_CACHE_DIR", cache)];
    let o = ktstr(&["model", "status"], &env);
    let (out, _) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("path:   {}", file.display())),
        "{out}"
    );
    assert!(
        out.contains(sha) && out.contains("state:  not present"),
        "{out}"
    );
    // Offline: refused at once, with where the file goes and what it must hash to.
    let o = ktstr(&["model", "fetch"], &[env[0], ("KTSTR_MODEL_OFFLINE", "1")]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("KTSTR_MODEL_OFFLINE=1 forbids the network"),
        "{err}"
    );
    assert!(
        err.contains(&file.display().to_string()) && err.contains(sha),
        "{err}"
    );
    // A wrong file copied in by hand is named as such.
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"not the model").unwrap();
    let o = ktstr(&["model", "status"], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).0.contains("state:  WRONG FILE: it hashes to "),
        "{:?}",
        text(&o)
    );
    let o = ktstr(&["model", "clean"], &env);
    assert!(o.status.success());
    assert_eq!(text(&o).0, format!("removed {}\n", file.display()));
    let o = ktstr(&["model", "clean"], &env);
    assert!(
        text(&o).0.starts_with("nothing cached at "),
        "{:?}",
        text(&o)
    );
    // Without KTSTR_CACHE_DIR: XDG_CACHE_HOME/ktstr/models.
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_cargo-ktstr"));
    let o = c
        .args(["ktstr", "model", "status"])
        .env_remove("KTSTR_CACHE_DIR")
        .env("XDG_CACHE_HOME", cache)
        .output()
        .unwrap();
    assert!(
        text(&o).0.contains(&format!("{cache}/ktstr/models/")),
        "{:?}",
        text(&o)
    );
    let o = ktstr(&["model", "frob"], &env);
    assert_eq!(o.status.code(), Some(2));
}

/// `cargo ktstr export TEST -p ktstr-examples -o DIR/TEST.run`; returns the file.
fn export(dir: &std::path::Path, test: &str) -> (std::process::Output, std::path::PathBuf) {
    let out = dir.join(format!("{test}.run"));
    let o = ktstr(&["export", test, "-o", out.to_str().unwrap()], &[]);
    (o, out)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn an_exported_eevdf_test_runs_on_this_host_and_options_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let (o, run) = export(d.path(), "spinners_progress");
    assert!(o.status.success(), "{:?}", text(&o));
    assert!(text(&o)
        .0
        .contains("spinners_progress/eevdf/1n1l2c1t under EEVDF"));
    let head = std::fs::read(&run).unwrap();
    assert!(head.starts_with(b"#!/bin/sh\n"));
    let r = std::process::Command::new(&run)
        .args(["--duration", "1"])
        .output()
        .unwrap();
    let (out, err) = text(&r);
    if is_root() {
        assert_eq!(r.status.code(), Some(0), "{out}{err}");
        assert!(
            out.contains("ktstr export: spinners_progress/eevdf/1n1l2c1t passed"),
            "{out}"
        );
        assert!(
            out.contains("; 1 s)"),
            "the duration override reached the test: {out}"
        );
    } else {
        assert_eq!(r.status.code(), Some(3), "{err}");
        assert!(err.contains("run it as root"), "{err}");
    }
    for (args, msg) in [
        (&["--cpus", "8"][..], "--cpus is fixed at export time"),
        (
            &["--topology=1,1,4,1"][..],
            "--topology is fixed at export time",
        ),
        (
            &["--duration", "0"][..],
            "0 is not a whole number of seconds",
        ),
        (
            &["--watchdog-timeout"][..],
            "--watchdog-timeout needs a number of seconds",
        ),
        (&["--frob"][..], "unknown option --frob"),
    ] {
        let r = std::process::Command::new(&run)
            .args(args)
            .output()
            .unwrap();
        assert_eq!(r.status.code(), Some(2), "{args:?}");
        assert!(text(&r).1.contains(msg), "{args:?}: {:?}", text(&r));
    }
}

#[test]
fn an_exported_sched_ext_test_refuses_a_host_without_sched_ext() {
    if std::path::Path::new("/sys/kernel/sched_ext").exists() || !is_root() {
        eprintln!("this host has sched_ext (or we are not root): the refusal is not testable here");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (o, run) = export(d.path(), "base_spinners");
    assert!(o.status.success(), "{:?}", text(&o));
    let r = std::process::Command::new(&run).output().unwrap();
    assert_eq!(r.status.code(), Some(3));
    assert!(
        text(&r).1.contains("this kernel has no sched_ext"),
        "{:?}",
        text(&r)
    );
}

#[test]
fn export_names_unknown_and_unexportable_tests() {
    let d = tempfile::tempdir().unwrap();
    let (o, _) = export(d.path(), "spinners_progres");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("did you mean spinners_progress?"),
        "{:?}",
        text(&o)
    );
    let (o, run) = export(d.path(), "eevdf::spinners_progress");
    assert!(
        o.status.success() && run.exists(),
        "the binary:: prefix is stripped: {:?}",
        text(&o)
    );
    let (o, _) = export(d.path(), "fault_cpu_stall_on_host_write");
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("uses bpf_map_write"), "{:?}", text(&o));
}

#[test]
fn shell_disk_sizes_are_checked_before_anything_boots() {
    for (size, says) in [
        ("64MB", "decimal units are not accepted"),
        ("0M", "positive whole number of MiB"),
        ("64", "give a unit"),
        ("lots", "expected a whole number"),
    ] {
        let o = ktstr(&["shell", "--disk", size, "--exec", "true"], &[]);
        assert_eq!(o.status.code(), Some(2), "{size}");
        assert!(text(&o).1.contains(says), "{size}: {:?}", text(&o));
    }
}

/// Missing tools get an install hint, not a spawn error; other llvm-cov actions are pointed
/// at `llvm-cov`; bare `llvm-cov` warns before it dispatches.
#[test]
fn coverage_says_what_is_missing_and_where_actions_go() {
    let empty = tempfile::tempdir().unwrap();
    let e = empty.path().to_str().unwrap();
    let env = [("PATH", e), ("CARGO_HOME", e), ("HOME", e)];
    let o = ktstr(&["coverage", "-E", "all()"], &env);
    assert_eq!(o.status.code(), Some(1), "{:?}", text(&o));
    let err = text(&o).1;
    assert!(
        err.contains("cargo-llvm-cov is not installed")
            && err.contains("hint: cargo install cargo-llvm-cov --locked"),
        "{err}"
    );
    let o = ktstr(&["llvm-cov"], &env);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o).1;
    assert!(
        err.contains("did you mean `cargo ktstr coverage`") && err.contains("cargo install"),
        "{err}"
    );
    let o = ktstr(&["coverage", "report", "--lcov"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).1.contains("hint: cargo ktstr llvm-cov report"),
        "{:?}",
        text(&o)
    );
    let o = ktstr(&["llvm-cov", "--release"], &env);
    assert_eq!(
        o.status.code(),
        Some(1),
        "--release is not an llvm-cov flag of ours: it passes through"
    );
}

/// Whether `cargo-llvm-cov` is installed (panics under CI when it is not).
fn cargo_llvm_cov() -> bool {
    let ok = std::process::Command::new("cargo")
        .args(["llvm-cov", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        let msg = "cargo-llvm-cov is not installed (cargo install cargo-llvm-cov --locked)";
        assert!(!common::under_ci(), "{msg}");
        eprintln!("\n!!! SKIPPED: {msg}\n");
    }
    ok
}

/// The 1-based line of `ktstr/src/<file>` that contains `needle`.
fn line_of(file: &str, needle: &str) -> usize {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../ktstr/src")
        .join(file);
    std::fs::read_to_string(&p)
        .unwrap()
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} is not in {}", p.display()))
        + 1
}

/// The execution count lcov records for `line` of the source file ending in `file`.
fn lcov_count(lcov: &str, file: &str, line: usize) -> Option<u64> {
    let mut in_file = false;
    for l in lcov.lines() {
        if let Some(sf) = l.strip_prefix("SF:") {
            in_file = sf.ends_with(file);
        } else if let (true, Some(da)) = (in_file, l.strip_prefix("DA:")) {
            let (n, count) = da.split_once(',')?;
            if n.parse() == Ok(line) {
                return count.split(',').next()?.parse().ok();
            }
        }
    }
    None
}

/// The issue's own command: the lcov report counts workload lines that only a forked worker
/// inside the guest executes (the case is a VM case; nothing on the host forks workers).
#[test]
fn coverage_counts_workload_lines_that_ran_only_in_the_guest() {
    let Some(kernel) = common::kernel() else {
        return;
    };
    if !common::qemu() || !cargo_llvm_cov() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let lcov = d.path().join("cov.info");
    let o = ktstr(
        &[
            "coverage",
            "-p",
            "ktstr-examples",
            "-E",
            "test(/spinners_progress/)",
            "--",
            "--lcov",
            "--output-path",
            lcov.to_str().unwrap(),
        ],
        &[("KTSTR_KERNEL", kernel.to_str().unwrap())],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    let report = std::fs::read_to_string(&lcov).unwrap();
    for (file, needle) in [
        (
            "workload/spawn.rs",
            "let rep = worker::run(&cfg.work_type, &ctx);",
        ),
        // (Not the forked_child() call itself: it zeroes the counters, its own line's too.)
        (
            "workload/spawn.rs",
            "let waited = super::worker::mono_ns().saturating_sub",
        ),
    ] {
        let line = line_of(file, needle);
        let count = lcov_count(&report, file, line);
        assert!(
            count.is_some_and(|c| c > 0),
            "{file}:{line} ({needle}) ran in the guest's workers but counts {count:?}\n{err}"
        );
    }
}

/// Without busybox on the host, `shell` says what to install before it builds or boots
/// anything. Busybox is hidden for real: in a private mount namespace (which needs root; CI
/// runs as root), `/dev/null` is bound over every place the shell looks for it.
#[test]
fn shell_without_busybox_says_what_to_install() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: hiding busybox needs a private mount namespace (root); CI runs it");
        return;
    }
    let Some(kernel) = common::kernel() else {
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let o = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(
            "for b in /bin/busybox /usr/bin/busybox; do \
               [ -e \"$b\" ] && mount --bind /dev/null \"$b\"; done; exec \"$@\"",
        )
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_cargo-ktstr"))
        .args([
            "ktstr",
            "shell",
            "--no-perf-mode",
            "--exec",
            "true",
            "--kernel",
        ])
        .arg(&kernel)
        .env("KTSTR_CACHE_DIR", cache.path())
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert_ne!(o.status.code(), Some(0), "{out}{err}");
    assert!(
        err.contains("shell mode needs busybox") && err.contains("apt-get install busybox-static"),
        "{out}{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
