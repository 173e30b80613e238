//! Runs the `fixture_suite` example (a user-like ktstr test binary) as a subprocess and checks
//! the libtest/nextest protocol. No VM is booted: only listing and registry queries run.

use std::path::PathBuf;
use std::process::Command;

/// The example binary, next to this test's `deps/` directory, built (or brought up to date)
/// once per test process: a stale one from an earlier build would test old code.
fn fixture() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir.join("examples").join("fixture_suite");
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-p", "ktstr-harness", "--example", "fixture_suite"])
            .status()
            .unwrap();
        assert!(st.success(), "building the fixture failed");
    });
    bin
}

/// A cache directory with nothing in it, shared by this process's runs.
fn empty_cache() -> &'static std::path::Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(fixture());
    // A kernel is named (it is never booted here) unless a test removes it; CI and
    // KTSTR_NO_SKIP_MODE would change what an unset kernel does.
    cmd.args(args)
        .env("KTSTR_KERNEL", "/nonexistent/bzImage")
        // An empty cache: a kernel cached on this machine must not stand in for "no kernel".
        .env("KTSTR_CACHE_DIR", empty_cache())
        .env_remove("KTSTR_KERNEL_LIST")
        .env_remove("CI")
        .env_remove("KTSTR_NO_SKIP_MODE");
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn names(stdout: &str) -> Vec<&str> {
    stdout
        .lines()
        .map(|l| {
            l.strip_suffix(": test")
                .unwrap_or_else(|| panic!("not a `name: test` line: {l:?}"))
        })
        .collect()
}

#[test]
fn terse_list_has_exactly_name_test_lines() {
    let (code, out, _) = run(&["--list", "--format", "terse"], &[]);
    assert_eq!(code, 0);
    let all = names(&out);
    for n in &all {
        let segs = n.split('/').count();
        assert!(segs == 3 || (segs == 2 && n.ends_with("/host")), "{n}");
    }
    for want in [
        "two_cgroups/eevdf/1n1l2c1t",
        "llc_steal/scx-demo+llc/1n2l4c1t",
        "llc_steal/scx-demo+llc+steal/1n3l3c1t",
        "host_probe/host",
        "demo_showcase/scx-demo/1n2l4c1t",
    ] {
        assert!(all.contains(&want), "{want} missing");
    }
    // excluded_flags = ["spread"] and scheduler max_llcs = 4 are honoured.
    assert!(!all
        .iter()
        .any(|n| n.starts_with("llc_steal/") && n.contains("spread")));
    assert!(!all
        .iter()
        .any(|n| n.contains("scx-demo") && n.contains("/1n8l")));
    // two_cgroups: declared shape + the 15 presets of the default gates.
    assert_eq!(
        all.iter().filter(|n| n.starts_with("two_cgroups/")).count(),
        16
    );
}

#[test]
fn ignored_list_is_everything_but_base_cases() {
    let (_, all, _) = run(&["--list", "--format", "terse"], &[]);
    let (code, ign, _) = run(&["--list", "--format", "terse", "--ignored"], &[]);
    assert_eq!(code, 0);
    let all = names(&all);
    let ign = names(&ign);
    let base: Vec<&&str> = all.iter().filter(|n| !ign.contains(n)).collect();
    assert_eq!(
        base,
        [
            &"host_probe/host",
            &"llc_steal/scx-demo+llc/1n2l4c1t",
            &"two_cgroups/eevdf/1n1l2c1t"
        ]
    );
    assert!(ign.iter().all(|n| all.contains(n)));
    assert!(ign
        .iter()
        .any(|n| n.starts_with("demo_showcase/scx-demo/1n2l4c1t")));
}

#[test]
fn exact_filter_and_skip() {
    let (_, out, _) = run(
        &[
            "--list",
            "--format",
            "terse",
            "--exact",
            "llc_steal/scx-demo+llc+steal/1n3l3c1t",
        ],
        &[],
    );
    assert_eq!(names(&out), ["llc_steal/scx-demo+llc+steal/1n3l3c1t"]);
    let (_, out, _) = run(
        &[
            "--list",
            "--format",
            "terse",
            "--exact",
            "llc_steal/nope/1n1l1c1t",
        ],
        &[],
    );
    assert!(out.is_empty());
    let (_, out, _) = run(
        &["--list", "--format", "terse", "two_cgroups", "--skip", "2t"],
        &[],
    );
    let n = names(&out);
    assert!(
        !n.is_empty()
            && n.iter()
                .all(|x| x.starts_with("two_cgroups/") && !x.ends_with("2t"))
    );
    // Running an ignored case without --ignored reports it ignored, exit 0, no VM.
    let (code, out, _) = run(&["--exact", "llc_steal/scx-demo+llc+steal/1n3l3c1t"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("1 ignored"), "{out}");
}

#[test]
fn kernel_list_adds_sanitized_segment() {
    let env = [("KTSTR_KERNEL_LIST", "6.14.2=/k/a;6.15-rc3=/k/b")];
    let (_, out, _) = run(
        &["--list", "--format", "terse", "two_cgroups/eevdf/1n1l2c1t"],
        &env,
    );
    assert_eq!(
        names(&out),
        [
            "two_cgroups/eevdf/1n1l2c1t/6_14_2",
            "two_cgroups/eevdf/1n1l2c1t/6_15_rc3"
        ]
    );
    let (_, out, _) = run(&["--list", "--format", "terse", "host_probe"], &env);
    assert_eq!(names(&out), ["host_probe/host"]);
    let (_, out, _) = run(
        &[
            "--list",
            "--format",
            "terse",
            "--exact",
            "two_cgroups/eevdf/1n1l2c1t/6_15_rc3",
        ],
        &env,
    );
    assert_eq!(names(&out).len(), 1);
}

#[test]
fn hidden_queries() {
    let (code, out, _) = run(&["--ktstr-list-schedulers"], &[]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["name"], "scx-demo");
    assert_eq!(v[0]["flags"][1]["requires"][0], "llc");
    assert_eq!(v[0]["assert"]["max_gap_ms"], 5000);
    let (code, out, _) = run(&["--ktstr-show-thresholds", "two_cgroups"], &[]);
    assert_eq!(code, 0);
    assert!(out.contains("max_spread_pct: 20.0\n"), "{out}");
    assert!(
        out.contains("min_page_locality: none (not evaluated yet"),
        "{out}"
    );
    let (code, _, err) = run(&["--ktstr-show-thresholds", "fixture::two_cgroup"], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("did you mean two_cgroups"), "{err}");
    assert!(err.contains("strip the `<binary>::` prefix"), "{err}");
}

#[test]
fn without_a_kernel_vm_cases_are_ignored_and_never_pass() {
    let no_kernel = [("KTSTR_KERNEL", "")];
    // Listed as ignored (host-only cases are not), with the reason on stderr.
    let (code, out, err) = run(&["--list", "--format", "terse"], &no_kernel);
    assert_eq!(code, 0);
    assert!(err.contains("KTSTR_KERNEL is not set"), "{err}");
    assert!(names(&out).contains(&"two_cgroups/eevdf/1n1l2c1t"));
    let (_, out, _) = run(&["--list", "--format", "terse", "--ignored"], &no_kernel);
    let ignored = names(&out);
    assert!(ignored.contains(&"two_cgroups/eevdf/1n1l2c1t"), "{out}");
    assert!(!ignored.contains(&"host_probe/host"), "{out}");
    // Run directly: ignored, not passed.
    let (code, out, _) = run(&["--exact", "two_cgroups/eevdf/1n1l2c1t"], &no_kernel);
    assert_eq!(code, 0);
    assert!(
        out.contains("0 passed") && out.contains("1 ignored"),
        "{out}"
    );
    // Asked for anyway (nextest --run-ignored all), or under CI: it fails with the reason.
    for (args, env) in [
        (
            vec!["--ignored", "--exact", "two_cgroups/eevdf/1n1l2c1t"],
            vec![("KTSTR_KERNEL", "")],
        ),
        (
            vec!["--exact", "two_cgroups/eevdf/1n1l2c1t"],
            vec![("KTSTR_KERNEL", ""), ("CI", "true")],
        ),
    ] {
        let (code, out, err) = run(&args, &env);
        assert_eq!(code, 101, "{args:?} {env:?}: {out}{err}");
        assert!(
            format!("{out}{err}").contains("no kernel given"),
            "{args:?}: {out}{err}"
        );
    }
}

#[test]
fn exact_name_that_is_not_a_case_fails_but_an_unknown_test_does_not() {
    // A known test with an impossible topology: an error naming the segment, exit 101.
    let (code, out, err) = run(&["--exact", "two_cgroups/eevdf/1n0l2c1t"], &[]);
    assert_eq!(code, 101, "{out}{err}");
    assert!(err.contains("not a ktstr case"), "{err}");
    // A scheduler the test does not have.
    let (code, _, err) = run(&["--exact", "two_cgroups/nope/1n1l2c1t"], &[]);
    assert_eq!(code, 101, "{err}");
    // A test of another binary: zero tests, exit 0, with a note.
    let (code, out, err) = run(&["--exact", "not_in_this_binary/eevdf/1n1l1c1t"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("0 passed"), "{out}");
    assert!(!err.is_empty());
}

/// With `KTSTR_UNRUNNABLE_DIR` set, listing records the cases that cannot run here and why
/// (what `cargo ktstr test` summarises); with a kernel named, there are none.
#[test]
fn listing_records_the_cases_that_cannot_run() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    let (code, _, _) = run(
        &["--list", "--format", "terse"],
        &[("KTSTR_KERNEL", ""), ("KTSTR_UNRUNNABLE_DIR", dir)],
    );
    assert_eq!(code, 0);
    let cases = ktstr::unrunnable::read_all(d.path());
    assert!(
        cases
            .iter()
            .any(|c| c.case == "two_cgroups/eevdf/1n1l2c1t"
                && c.why == ktstr::unrunnable::Why::NoKernel),
        "{cases:?}"
    );
    assert!(
        !cases.iter().any(|c| c.case.ends_with("/host")),
        "{cases:?}"
    );
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    run(
        &["--list", "--format", "terse"],
        &[("KTSTR_UNRUNNABLE_DIR", dir)],
    );
    assert_eq!(ktstr::unrunnable::read_all(d.path()), vec![]);
}
