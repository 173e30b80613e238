use super::*;
use crate::assert::ScenarioStats;

fn row(test: &str, kernel: &str, topo: &str, gap: f64, passed: bool) -> (PathBuf, Sidecar) {
    let s = Sidecar {
        test_name: test.into(),
        scenario: "eevdf".into(),
        scheduler: "eevdf".into(),
        topology: topo.into(),
        kernel_version: kernel.into(),
        project_commit: "abc1234".into(),
        run_source: "local".into(),
        passed,
        stats: Some(ScenarioStats {
            worst_gap_ms: gap,
            total_iterations: 1000,
            ..Default::default()
        }),
        ..Default::default()
    };
    (
        PathBuf::from(format!("/runs/{kernel}/{test}-{topo}-{gap}")),
        s,
    )
}

fn filters(pairs: &[(Dim, &[&str])]) -> Filters {
    Filters(
        pairs
            .iter()
            .map(|(d, v)| (*d, v.iter().map(|s| s.to_string()).collect()))
            .collect(),
    )
}

fn request(pool: &[(PathBuf, Sidecar)], a: &[&str], b: &[&str]) -> Comparison {
    compare(&Request {
        pool,
        shared: Filters::default(),
        a: filters(&[(Dim::Kernel, a)]),
        b: filters(&[(Dim::Kernel, b)]),
        text: None,
        average: true,
        policy: Policy::default(),
    })
    .unwrap()
}

#[test]
fn kernel_series_and_strict_matching() {
    let k = Dim::Kernel;
    for (want, row, ok) in [
        ("6.12", "6.12", true),
        ("6.12", "6.12.5", true),
        ("6.12", "6.12-rc3", true),
        ("6.12", "6.1", false),
        ("6.12", "6.120", false),
        ("6.14.2", "6.14.2", true),
        ("6.14.2", "6.14.20", false),
        ("6.15-rc3", "6.15-rc3", true),
        ("6.15-rc3", "6.15", false),
    ] {
        assert_eq!(k.accepts(want, row), ok, "{want} vs {row}");
    }
    assert!(!Dim::ProjectCommit.accepts("abcdef1", "abcdef10"));
}

#[test]
fn per_side_filters_replace_shared_ones_and_nulls_never_match() {
    let shared = filters(&[(Dim::Kernel, &["6.14"]), (Dim::Scheduler, &["eevdf"])]);
    let a = Filters::effective(&shared, &filters(&[(Dim::Kernel, &["6.15"])]));
    let b = Filters::effective(&shared, &Filters::default());
    assert_eq!(a.0[&Dim::Kernel], ["6.15"]);
    assert_eq!(b.0[&Dim::Kernel], ["6.14"]);
    assert_eq!(a.0[&Dim::Scheduler], ["eevdf"]);
    let (_, mut s) = row("t", "6.15.1", "1n1l2c1t", 1.0, true);
    assert!(a.matches(&s));
    s.kernel_commit = None;
    assert!(!filters(&[(Dim::KernelCommit, &["deadbee"])]).matches(&s));
    s.kernel_version = "unknown".into();
    assert!(
        !a.matches(&s),
        "an unrecorded kernel never matches a kernel filter"
    );
}

/// Rows pair on test, scenario and the non-slicing workload dims; metrics are the mean of the
/// passing contributors; a worse gap beyond both gates is a regression.
#[test]
fn a_worse_gap_on_b_is_a_regression() {
    let pool = vec![
        row("spin", "6.12.1", "1n1l2c1t", 100.0, true),
        row("spin", "6.12.2", "1n1l2c1t", 300.0, true),
        row("spin", "6.12.3", "1n1l2c1t", 9999.0, false), // failed: left out of the mean
        row("spin", "6.13.0", "1n1l2c1t", 1200.0, true),
        row("spin", "6.12.1", "2n2l2c1t", 100.0, true), // only in A
    ];
    let c = request(&pool, &["6.12"], &["6.13"]);
    assert_eq!(c.slicing, [Dim::Kernel]);
    assert_eq!(c.pairing, [Dim::Scheduler, Dim::Topology, Dim::WorkType]);
    // The failing contributor makes A's fold a Fail for 1n1l2c1t: excluded, not judged.
    assert_eq!(c.pairs.len(), 0, "{c:?}");
    assert_eq!(c.excluded.len(), 1);
    assert!(c.excluded[0].1.contains("A is Fail"), "{:?}", c.excluded);
    assert_eq!(c.unpaired.0.len(), 1);
    assert!(c.unpaired.0[0].contains("topology=2n2l2c1t"));

    let pool: Vec<_> = pool.into_iter().filter(|(_, s)| s.passed).collect();
    let c = request(&pool, &["6.12"], &["6.13"]);
    let (a, findings) = (&c.pairs[0].a, &c.pairs[0].findings);
    assert_eq!(a.metrics["worst_gap_ms"], 200.0, "mean of 100 and 300");
    let gap = findings
        .iter()
        .find(|f| f.metric == "worst_gap_ms")
        .unwrap();
    assert_eq!((gap.a, gap.b, gap.delta), (200.0, 1200.0, 1000.0));
    assert!(gap.regression && !gap.improvement);
    let same = findings
        .iter()
        .find(|f| f.metric == "total_iterations")
        .unwrap();
    assert!(!same.regression && !same.improvement, "{same:?}");
    assert!(
        !findings.iter().any(|f| f.metric == "worst_spread"),
        "a metric that is 0 on both sides is skipped: {findings:?}"
    );
    assert_eq!(c.regressions(), 1);
    // The other way round it is an improvement.
    let c = request(&pool, &["6.13"], &["6.12"]);
    let gap = c.pairs[0]
        .findings
        .iter()
        .find(|f| f.metric == "worst_gap_ms")
        .unwrap();
    assert!(gap.improvement && !gap.regression);
    assert_eq!(c.regressions(), 0);
}

#[test]
fn both_gates_must_pass() {
    let mk = |gap: f64, iters: u64| Row {
        key: "k".into(),
        verdict: Verdict::Pass,
        metrics: [("worst_gap_ms", gap), ("total_iterations", iters as f64)]
            .into_iter()
            .collect(),
        paths: vec![],
        host: None,
        phases: BTreeMap::new(),
    };
    // +400 ms is 400% but under the 500 ms absolute gate.
    let f = compare_rows(&mk(100.0, 1000), &mk(500.0, 1000), &Policy::default());
    assert!(!f.iter().any(|f| f.regression), "{f:?}");
    // Iterations fall by 200 (≥ 100 abs, 20% ≥ 10% rel): higher is better, so a regression.
    let f = compare_rows(&mk(100.0, 1000), &mk(100.0, 800), &Policy::default());
    assert!(f
        .iter()
        .any(|f| f.metric == "total_iterations" && f.regression));
    // A 30% relative gate lets that through.
    let loose = Policy::uniform(30.0).unwrap();
    let f = compare_rows(&mk(100.0, 1000), &mk(100.0, 800), &loose);
    assert!(!f.iter().any(|f| f.regression), "{f:?}");
    assert!(Policy::uniform(-1.0).is_err());
}

fn phase(idx: u16, rate: f64, spread: f64) -> crate::assert::PhaseStats {
    crate::assert::PhaseStats {
        step_index: idx,
        label: crate::assert::PhaseStats::label_of(idx),
        iterations_per_s: rate,
        cpu_share_spread_pct: spread,
        ..Default::default()
    }
}

/// Phases pair by `step_index`, average over passing contributors, and are judged by the
/// phase registry's gates; they do not change the exit code.
#[test]
fn phases_are_compared_bucket_by_bucket() {
    let mut pool = vec![
        row("spin", "6.12.1", "1n1l2c1t", 100.0, true),
        row("spin", "6.12.2", "1n1l2c1t", 100.0, true),
        row("spin", "6.13.0", "1n1l2c1t", 100.0, true),
        row("spin", "6.13.1", "1n1l2c1t", 100.0, false),
    ];
    pool[0].1.phases = vec![
        phase(0, 0.0, 0.0),
        phase(1, 1000.0, 4.0),
        phase(2, 900.0, 2.0),
    ];
    pool[1].1.phases = vec![
        phase(0, 0.0, 0.0),
        phase(1, 1200.0, 6.0),
        phase(2, 900.0, 2.0),
    ];
    // B's step 0 runs half as fast and splits the CPU unevenly; it has no step 1.
    pool[2].1.phases = vec![phase(0, 0.0, 0.0), phase(1, 550.0, 30.0)];
    // A failing contributor's phases do not count.
    pool[3].1.phases = vec![phase(1, 1e9, 0.0)];
    let c = request(&pool, &["6.12"], &["6.13"]);
    assert_eq!(c.excluded.len(), 1, "the failing run makes B's fold a Fail");
    let pool: Vec<_> = pool.into_iter().filter(|(_, s)| s.passed).collect();
    let c = request(&pool, &["6.12"], &["6.13"]);
    let p = &c.pairs[0];
    assert_eq!(p.a.phases[&1].metrics["iterations_per_s"], 1100.0, "mean");
    assert_eq!(p.a.phases[&2].label, "Step[1]");
    let find = |idx: u16, m: &str| {
        p.phases
            .iter()
            .find(|f| f.step_index == idx && f.finding.metric == m)
            .map(|f| f.finding.clone())
    };
    let rate = find(1, "iterations_per_s").unwrap();
    assert_eq!((rate.a, rate.b), (1100.0, 550.0));
    assert!(rate.regression, "{rate:?}");
    assert!(find(1, "cpu_share_spread_pct").unwrap().regression);
    assert_eq!(
        p.phases.iter().find(|f| f.step_index == 1).unwrap().label,
        "Step[0]"
    );
    // BASELINE recorded nothing on either side; step 1 exists only in A.
    assert!(find(0, "iterations_per_s").is_none());
    assert!(find(2, "iterations_per_s").is_none());
    // The run-level metrics did not move: no regression for the exit code.
    assert_eq!(c.regressions(), 0);
}

#[test]
fn identical_sides_no_rows_and_ambiguity_are_errors() {
    let pool = vec![
        row("spin", "6.12.1", "1n1l2c1t", 100.0, true),
        row("spin", "6.12.2", "1n1l2c1t", 300.0, true),
        row("spin", "6.13.0", "1n1l2c1t", 100.0, true),
    ];
    let base = |a: &[&str], b: &[&str], average| Request {
        pool: &pool,
        shared: Filters::default(),
        a: filters(&[(Dim::Kernel, a)]),
        b: filters(&[(Dim::Kernel, b)]),
        text: None,
        average,
        policy: Policy::default(),
    };
    let e = compare(&base(&["6.12", "6.12"], &["6.12"], true)).unwrap_err();
    assert!(matches!(e, CompareError::NoSlicing), "{e}");
    let e = compare(&base(&["6.12"], &["7.0"], true)).unwrap_err();
    assert!(
        e.to_string()
            .contains("no rows match filter B (kernel=7.0)"),
        "{e}"
    );
    assert!(e.to_string().contains("stats list-values"), "{e}");
    let e = compare(&base(&["6.12"], &["6.13"], false)).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("side A has 2 sidecars for spin/eevdf"),
        "{msg}"
    );
    assert!(msg.contains("drop --no-average"), "{msg}");
    assert!(compare(&base(&["6.12.1"], &["6.13"], false)).is_ok());
}

#[test]
fn policy_files_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let load = |text: &str| {
        let p = d.path().join("policy.json");
        std::fs::write(&p, text).unwrap();
        Policy::load(&p)
    };
    let p = load(r#"{"default_percent": 10, "per_metric_percent": {"worst_spread": 5}}"#).unwrap();
    let spread = crate::metrics::metric("worst_spread").unwrap();
    let gap = crate::metrics::metric("worst_gap_ms").unwrap();
    assert_eq!(p.rel_gate(spread), 0.05);
    assert_eq!(p.rel_gate(gap), 0.10);
    assert_eq!(Policy::default().rel_gate(gap), 0.50);
    assert_eq!(load("{}").unwrap(), Policy::default());
    let e = load(r#"{"per_metric_percent": {"wrost_spread": 5}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown metric \"wrost_spread\" (did you mean worst_spread?)"),
        "{e}"
    );
    assert!(e.contains("stats list-metrics"), "{e}");
    let e = load(r#"{"default_percent": -1}"#).unwrap_err().to_string();
    assert!(e.contains("negative"), "{e}");
    let e = load(r#"{"default_pct": 1}"#).unwrap_err().to_string();
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn host_differences_are_listed_per_field() {
    let mut a = HostContext::default();
    let mut b = HostContext::default();
    a.kernel_release = Some("6.1.0".into());
    b.kernel_release = Some("6.12.0".into());
    a.sched_tunables
        .insert("sched_autogroup_enabled".into(), "1".into());
    b.sched_tunables
        .insert("sched_autogroup_enabled".into(), "0".into());
    let d = host_diff(&a, &b);
    assert_eq!(
        d,
        vec![
            ("kernel_release".into(), "6.1.0".into(), "6.12.0".into()),
            (
                "sched_tunables.sched_autogroup_enabled".into(),
                "1".into(),
                "0".into()
            ),
        ]
    );
    assert!(host_diff(&a, &a).is_empty());
}
