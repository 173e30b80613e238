//! Tests of [`super`]: statistics and findings from hand-built worker reports.

use super::*;

fn w(tid: i32, units: u64, off_pct: f64, cpus: &[u32]) -> WorkerRun {
    let wall = 2_000_000_000u64;
    WorkerRun {
        report: WorkerReport {
            tid,
            work_units: units,
            iterations: units,
            completed: true,
            wall_time_ns: wall,
            off_cpu_ns: (wall as f64 * off_pct / 100.0) as u64,
            cpu_time_ns: wall - (wall as f64 * off_pct / 100.0) as u64,
            cpus_used: cpus.to_vec(),
            max_gap_ms: 10.0,
            ..Default::default()
        },
        work_type: "SpinWait".into(),
        telemetry: true,
        allowed: None,
        affinity: WorkerAffinity::Inherited,
    }
}

fn run(workers: Vec<WorkerRun>) -> Vec<CgroupRun> {
    vec![CgroupRun {
        name: "cg0".into(),
        cpus: 2,
        workers,
    }]
}

fn cg(name: &str, workers: Vec<WorkerRun>) -> CgroupRun {
    CgroupRun {
        name: name.into(),
        cpus: 2,
        workers,
    }
}

#[test]
fn a_cgroup_shortchanged_as_a_whole_is_unfair_across_cgroups() {
    let a = Assert::NO_OVERRIDES.max_cgroup_spread_pct(20.0);
    let fair = cg("cg0", vec![w(1, 100, 10.0, &[0]), w(2, 100, 12.0, &[1])]);
    let short = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 92.0, &[1])]);
    let r = evaluate(&a, &[fair.clone(), short.clone()], 1.0);
    assert!(!r.passed);
    let d = &r.details[0];
    assert_eq!(d.kind, DetailKind::Unfair);
    assert_eq!(
        d.message,
        "cross-cgroup spread 80.0% > 20.0%: cgroup cg1 91.0% off-CPU, cgroup cg0 11.0% (SpinWait ×2 each on the same CPUs)"
    );
    // Within each cgroup the workers are even: the in-cgroup spread sees nothing.
    let inside = evaluate(
        &Assert::NO_OVERRIDES.max_spread_pct(20.0),
        &[fair, short],
        1.0,
    );
    assert!(inside.passed, "{inside:?}");
}

#[test]
fn cgroups_on_unequal_terms_are_not_compared() {
    let a = Assert::NO_OVERRIDES.max_cgroup_spread_pct(20.0);
    let base = cg("cg0", vec![w(1, 100, 10.0, &[0]), w(2, 100, 10.0, &[1])]);
    let judge = |other: CgroupRun| evaluate(&a, &[base.clone(), other], 1.0);
    // More workers: their share per worker is smaller under per-cgroup fairness.
    let more = cg(
        "cg1",
        vec![
            w(3, 9, 90.0, &[0]),
            w(4, 9, 90.0, &[1]),
            w(5, 9, 90.0, &[1]),
        ],
    );
    assert!(judge(more).passed);
    // Another work type.
    let mut yielding = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[1])]);
    for x in &mut yielding.workers {
        x.work_type = "Mixed".into();
    }
    assert!(judge(yielding).passed);
    // Another cpuset.
    let mut fenced = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[0])]);
    for x in &mut fenced.workers {
        x.allowed = Some(vec![0]);
    }
    assert!(judge(fenced).passed);
    // Another time (a later step): wall times 2 s against 1 s.
    let mut later = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[1])]);
    for x in &mut later.workers {
        x.report.wall_time_ns /= 2;
    }
    assert!(judge(later).passed);
    // Not siblings: under hierarchical fairness `outer/b` shares its parent's half.
    let nested = cg("outer/b", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[1])]);
    assert!(judge(nested).passed);
    // A cgroup whose child cgroups ran workers shares with them.
    let parent = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[1])]);
    let child = cg("cg1/x", vec![w(5, 9, 10.0, &[0])]);
    assert!(evaluate(&a, &[base.clone(), parent, child], 1.0).passed);
    // Siblings under one parent: compared.
    let sib_a = cg("outer/a", vec![w(3, 9, 10.0, &[0]), w(4, 9, 10.0, &[1])]);
    let sib_b = cg("outer/b", vec![w(5, 9, 90.0, &[0]), w(6, 9, 90.0, &[1])]);
    assert!(!evaluate(&a, &[sib_a, sib_b], 1.0).passed);
    // The same terms: compared, and caught.
    let same = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[1])]);
    assert!(!judge(same).passed);
}

/// Every summary field of one cgroup, from three workers with known numbers.
#[test]
fn cgroup_stats_summarises_its_workers() {
    let mut a = w(1, 100, 50.0, &[0]);
    let mut b = w(2, 300, 60.0, &[1]);
    let mut c = w(3, 200, 70.0, &[1, 2]);
    for (x, gap, gap_cpu, migr, lat, delay, count) in [
        (
            &mut a,
            40.0,
            1,
            10,
            vec![1000, 2000, 3000, 4000],
            4_000_000,
            2,
        ),
        (&mut b, 20.0, 0, 5, vec![5000], 2_000_000, 2),
        // The same longest gap as `a`, later: the first one found is reported.
        (&mut c, 40.0, 3, 0, vec![], 0, 0),
    ] {
        x.report.max_gap_ms = gap;
        x.report.max_gap_cpu = gap_cpu;
        x.report.migration_count = migr;
        x.report.resume_latencies_ns = lat;
        x.report.schedstat_run_delay_ns = delay;
        x.report.schedstat_run_count = count;
    }
    let st = cgroup_stats(&cg("cg0", vec![a, b, c.clone()]));
    assert_eq!(st.workers, 3);
    assert_eq!((st.max_gap_ms, st.max_gap_cpu), (40.0, 1));
    assert_eq!(st.total_migrations, 15);
    assert_eq!(st.total_iterations, 600);
    assert_eq!(st.min_iterations_per_worker, 100);
    assert!((st.migration_ratio - 0.025).abs() < 1e-9);
    assert!((st.avg_off_cpu_pct - 60.0).abs() < 1e-6);
    assert!((st.min_off_cpu_pct - 50.0).abs() < 1e-6);
    assert!((st.max_off_cpu_pct - 70.0).abs() < 1e-6);
    assert!((st.spread - 20.0).abs() < 1e-6);
    assert_eq!(st.cpus_used, vec![0, 1, 2]);
    // Latencies 1..5 µs: median 3, p99 5, CV sqrt(2)/3.
    assert_eq!(st.median_wake_latency_us, Some(3.0));
    assert_eq!(st.p99_wake_latency_us, Some(5.0));
    assert!((st.wake_latency_tail_ratio.unwrap() - 5.0 / 3.0).abs() < 1e-9);
    assert!((st.wake_latency_cv.unwrap() - 2f64.sqrt() / 3.0).abs() < 1e-9);
    // Run delay: 6 ms over 4 runs; the largest worker total 4 ms.
    assert!((st.mean_run_delay_us - 1500.0).abs() < 1e-9);
    assert!((st.max_run_delay_us - 4000.0).abs() < 1e-9);
    // Work rates 50, 150 and 100 per second.
    assert!((st.throughput_cv.unwrap() - (5000.0f64 / 3.0).sqrt() / 100.0).abs() < 1e-9);

    // One worker, no iterations, no runs, zero latencies: no ratios out of nothing.
    c.report.iterations = 0;
    c.report.resume_latencies_ns = vec![0, 0];
    let lone = cgroup_stats(&cg("cg1", vec![c]));
    assert_eq!(lone.migration_ratio, 0.0);
    assert_eq!(lone.mean_run_delay_us, 0.0);
    assert_eq!(lone.wake_latency_tail_ratio, None);
    assert_eq!(lone.throughput_cv, None);
}

#[test]
fn messengers_and_workers_without_telemetry_are_not_in_the_spread() {
    let mut m = w(3, 10, 90.0, &[0]);
    m.report.is_messenger = true;
    let mut quiet = w(4, 0, 95.0, &[1]);
    quiet.telemetry = false;
    let run = cg(
        "cg0",
        vec![w(1, 100, 10.0, &[0]), w(2, 100, 12.0, &[1]), m, quiet],
    );
    assert!((cgroup_stats(&run).spread - 2.0).abs() < 1e-6);
}

/// The worst type's spread is reported, and on a tie the first type (in name order).
#[test]
fn the_widest_spread_of_any_type_is_reported() {
    let typed = |t: &str, tid, off| {
        let mut x = w(tid, 100, off, &[0]);
        x.work_type = t.into();
        x
    };
    let narrow_first = cg(
        "cg0",
        vec![
            typed("Mixed", 1, 10.0),
            typed("Mixed", 2, 20.0),
            typed("SpinWait", 3, 10.0),
            typed("SpinWait", 4, 40.0),
        ],
    );
    let (s, lo, hi, t) = spread_by_type(&narrow_first).unwrap();
    assert_eq!((t.as_str(), lo.0, hi.0), ("SpinWait", 3, 4));
    assert!((s - 30.0).abs() < 1e-6);
    let wide_first = cg(
        "cg0",
        vec![
            typed("Mixed", 1, 10.0),
            typed("Mixed", 2, 40.0),
            typed("SpinWait", 3, 10.0),
            typed("SpinWait", 4, 20.0),
        ],
    );
    assert_eq!(spread_by_type(&wide_first).unwrap().3, "Mixed");
    let tie = cg(
        "cg0",
        vec![
            typed("Mixed", 1, 10.0),
            typed("Mixed", 2, 30.0),
            typed("SpinWait", 3, 10.0),
            typed("SpinWait", 4, 30.0),
        ],
    );
    assert_eq!(spread_by_type(&tie).unwrap().3, "Mixed");
}

/// Within a cgroup, workers are grouped by work type, affinity and cpuset before the
/// cgroups are compared; wall times within 20% count as the same time.
#[test]
fn cross_cgroup_spread_compares_like_with_like() {
    let pinned = |tid, off| {
        let mut x = w(tid, 100, off, &[0]);
        x.affinity = WorkerAffinity::Fixed(vec![0]);
        x
    };
    let cg0 = cg(
        "cg0",
        vec![
            w(1, 100, 10.0, &[0]),
            w(2, 100, 10.0, &[1]),
            pinned(3, 90.0),
            pinned(4, 90.0),
        ],
    );
    let mut cg1 = cg(
        "cg1",
        vec![
            w(5, 100, 10.0, &[0]),
            w(6, 100, 10.0, &[1]),
            pinned(7, 10.0),
            pinned(8, 10.0),
        ],
    );
    // 5% shorter: the same time for the comparison.
    for x in &mut cg1.workers {
        x.report.wall_time_ns = x.report.wall_time_ns / 20 * 19;
        x.report.off_cpu_ns = (x.report.wall_time_ns as f64 * 0.1) as u64;
    }
    let (s, lo, hi, t, n) = cross_cgroup_spread(&[cg0, cg1]).unwrap();
    assert!((s - 80.0).abs() < 1e-6, "{s}");
    assert_eq!(
        (lo.0.as_str(), hi.0.as_str(), t.as_str(), n),
        ("cg1", "cg0", "SpinWait", 2)
    );
}

/// Two cgroups on the same cpuset are not compared when a third cgroup's cpuset covers part of
/// it: which of them shares a CPU with the third is placement.
#[test]
fn cross_cgroup_spread_skips_a_cpuset_another_partly_overlaps() {
    let on = |tid, off, cpus: &[u32]| {
        let mut x = w(tid, 100, off, cpus);
        x.allowed = Some(cpus.to_vec());
        x
    };
    let llc = cg("llc", vec![on(1, 46.4, &[2, 3])]);
    let numa = cg("numa", vec![on(2, 6.6, &[2, 3])]);
    let exact = cg("exact", vec![on(3, 50.0, &[1, 3])]);
    let (s, ..) = cross_cgroup_spread(&[llc.clone(), numa.clone()]).unwrap();
    assert!(
        (s - 39.8).abs() < 1e-6,
        "alone on their CPUs they compare: {s}"
    );
    assert_eq!(cross_cgroup_spread(&[llc, numa, exact]), None);
}

/// PolicyChurn's share is set by its time as SCHED_IDLE: not compared.
#[test]
fn policy_churners_are_not_compared() {
    let churn = |tid, off| {
        let mut x = w(tid, 100, off, &[0]);
        x.work_type = "PolicyChurn".into();
        x
    };
    assert_eq!(
        spread_by_type(&run(vec![churn(1, 62.5), churn(2, 97.9)])[0]),
        None
    );
}

/// Of several comparable pairs the widest is reported; on a tie, the first found.
#[test]
fn cross_cgroup_spread_reports_the_widest_pair() {
    let two = |name: &str, off| cg(name, vec![w(1, 100, off, &[0]), w(2, 100, off, &[1])]);
    let (s, lo, hi, ..) =
        cross_cgroup_spread(&[two("cg0", 10.0), two("cg1", 50.0), two("cg2", 90.0)]).unwrap();
    assert!((s - 80.0).abs() < 1e-6, "{s}");
    assert_eq!((lo.0.as_str(), hi.0.as_str()), ("cg0", "cg2"));
    let (_, _, hi, ..) =
        cross_cgroup_spread(&[two("cg0", 10.0), two("cg1", 50.0), two("cg2", 50.0)]).unwrap();
    assert_eq!(hi.0, "cg1");
}

#[test]
fn scenario_stats_totals_and_worsts() {
    let mut a = w(1, 100, 10.0, &[0]);
    a.report.max_gap_ms = 30.0;
    a.report.migration_count = 3;
    let mut b = w(2, 200, 10.0, &[1]);
    b.report.max_gap_ms = 40.0;
    b.report.max_gap_cpu = 1;
    b.report.migration_count = 4;
    let mut c = w(3, 300, 10.0, &[1]);
    c.report.max_gap_ms = 40.0;
    c.report.max_gap_cpu = 3;
    let runs = [
        cg("cga", vec![a]),
        cg("cgb", vec![b]),
        cg("cgc", vec![c]),
        cg("empty", vec![]),
    ];
    let s = scenario_stats(&runs, 8);
    assert_eq!(s.total_cpus, 8);
    assert_eq!(s.total_workers, 3);
    assert_eq!(s.total_migrations, 7);
    assert_eq!(s.total_iterations, 600);
    // The empty cgroup has no worker to be the worst.
    assert_eq!(s.worst_iterations_per_worker, 100);
    // The longest gap, and of two equal ones the first.
    assert_eq!((s.worst_gap_ms, s.worst_gap_cpu), (40.0, 1));
}

#[test]
fn the_iteration_rate_is_per_second_of_wall_time() {
    // 100 iterations in 2 s.
    let run = cg("cg0", vec![w(1, 100, 10.0, &[0])]);
    assert!(
        evaluate(
            &Assert::NO_OVERRIDES.min_iteration_rate(49.0),
            std::slice::from_ref(&run),
            1.0
        )
        .passed
    );
    let r = evaluate(&Assert::NO_OVERRIDES.min_iteration_rate(51.0), &[run], 1.0);
    assert_eq!(
        r.details[0].message,
        "cgroup cg0: worker 1 iteration rate 50.0/s < 51/s"
    );
}

/// Workers the in-cgroup spread leaves out are left out across cgroups too.
#[test]
fn cross_cgroup_spread_skips_the_workers_the_spread_skips() {
    let a = Assert::NO_OVERRIDES.max_cgroup_spread_pct(20.0);
    let base = cg("cg0", vec![w(1, 100, 10.0, &[0]), w(2, 100, 10.0, &[1])]);
    let mark: [fn(&mut WorkerRun); 5] = [
        |x| x.affinity = WorkerAffinity::Changed,
        |x| x.work_type = "YieldHeavy".into(),
        |x| x.telemetry = false,
        |x| x.report.is_messenger = true,
        |x| x.report.exit_info = Some(ExitInfo::Code(1)),
    ];
    for (i, m) in mark.iter().enumerate() {
        let mut other = cg("cg1", vec![w(3, 9, 90.0, &[0]), w(4, 9, 90.0, &[1])]);
        for x in &mut other.workers {
            m(x);
        }
        // (An exit is its own failure; only the spread matters here.)
        let r = evaluate(&a, &[base.clone(), other], 1.0);
        assert!(
            !r.has_kind(DetailKind::Unfair),
            "filter {i}: {:?}",
            r.details
        );
    }
}

#[test]
fn healthy_passes_with_stats() {
    let r = evaluate(
        &Assert::default_checks(),
        &run(vec![w(1, 100, 50.0, &[0]), w(2, 90, 52.0, &[1])]),
        1.0,
    );
    assert!(r.passed, "{r:?}");
    let s = r.stats.unwrap();
    assert_eq!(s.total_workers, 2);
    assert!((s.worst_spread - 2.0).abs() < 1e-6, "{}", s.worst_spread);
    assert_eq!(s.total_iterations, 190);
    assert_eq!(s.worst_iterations_per_worker, 90);
}

#[test]
fn each_check_reports_its_kind() {
    let a = Assert::NO_OVERRIDES
        .not_starved(true)
        .isolation(true)
        .max_spread_pct(15.0)
        .max_gap_ms(100);
    let mut starved = w(1, 0, 100.0, &[]);
    starved.report.exit_info = Some(ExitInfo::NoReport("late".into()));
    let mut escaped = w(2, 50, 10.0, &[0, 3]);
    escaped.allowed = Some(vec![0, 1]);
    let mut stuck = w(3, 50, 60.0, &[1]);
    stuck.report.max_gap_ms = 150.0;
    let r = evaluate(&a, &run(vec![starved, escaped, stuck]), 1.0);
    assert!(!r.passed);
    for k in [
        DetailKind::Starved,
        DetailKind::Isolation,
        DetailKind::Stuck,
    ] {
        assert!(r.has_kind(k), "{k:?} missing: {:?}", r.details);
    }
    // Spread among reporting workers: 60 − 10 = 50 > 15.
    assert!(r.has_kind(DetailKind::Unfair), "{:?}", r.details);
    let iso = r
        .details
        .iter()
        .find(|d| d.kind == DetailKind::Isolation)
        .unwrap();
    assert!(
        iso.message.contains("CPU(s) 3 outside its cpuset 0-1"),
        "{}",
        iso.message
    );
    let unfair = r
        .details
        .iter()
        .find(|d| d.kind == DetailKind::Unfair)
        .unwrap();
    assert!(
        unfair
            .message
            .starts_with("cgroup cg0 spread 50.0% > 15.0%"),
        "{}",
        unfair.message
    );
}

#[test]
fn gap_limit_scales_with_time_scale() {
    let a = Assert::NO_OVERRIDES.max_gap_ms(100);
    let mut slow = w(1, 10, 0.0, &[0]);
    slow.report.max_gap_ms = 300.0;
    let r = evaluate(&a, &run(vec![slow.clone()]), 1.0);
    assert!(r.details[0].message.contains("(limit 100 ms)"), "{r:?}");
    assert!(evaluate(&a, &run(vec![slow.clone()]), 4.0).passed);
    slow.report.max_gap_ms = 500.0;
    let r = evaluate(&a, &run(vec![slow.clone()]), 4.0);
    assert!(
        r.details[0]
            .message
            .contains("(limit 100 × time scale 4 ms)"),
        "{r:?}"
    );
    // At the limit is within it.
    slow.report.max_gap_ms = 100.0;
    assert!(evaluate(&a, &run(vec![slow]), 1.0).passed);
}

#[test]
fn a_worker_that_died_is_named_with_its_exit() {
    let a = Assert::NO_OVERRIDES.check_not_starved();
    let died = |tid, units, e| {
        let mut x = w(tid, units, 0.0, &[0]);
        x.report.exit_info = Some(e);
        x
    };
    let r = evaluate(
        &a,
        &run(vec![
            died(1, 5, ExitInfo::Code(3)),
            died(2, 5, ExitInfo::Signal(6)),
            died(3, 0, ExitInfo::NoReport("eof".into())),
        ]),
        1.0,
    );
    let msgs: Vec<&str> = r.details.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        msgs[0],
        "cgroup cg0: worker 1 (SpinWait) exited with code 3"
    );
    assert_eq!(
        msgs[1],
        "cgroup cg0: worker 2 (SpinWait) was killed by signal 6"
    );
    assert!(
        msgs[2].starts_with("cgroup cg0: worker 3 (SpinWait) made no progress")
            && msgs[2].ends_with(" and did not report (eof)"),
        "{msgs:?}"
    );
    assert_eq!(msgs.len(), 3);
}

#[test]
fn spread_is_unscaled_and_per_work_type() {
    let a = Assert::NO_OVERRIDES.max_spread_pct(15.0);
    let mut io = w(2, 10, 95.0, &[0]);
    io.work_type = "IoSync".into();
    // A spinner and an I/O worker differ by design: not a spread.
    assert!(evaluate(&a, &run(vec![w(1, 10, 0.0, &[0]), io]), 4.0).passed);
    let pair = |off: f64| run(vec![w(1, 10, 0.0, &[0]), w(2, 10, off, &[0])]);
    // The same limit on every backend: an emulator does not excuse unfairness.
    assert!(evaluate(&a, &pair(20.0), 1.0).has_kind(DetailKind::Unfair));
    assert!(evaluate(&a, &pair(20.0), 4.0).has_kind(DetailKind::Unfair));
}

#[test]
fn yielders_are_not_compared_for_the_spread() {
    let a = Assert::NO_OVERRIDES
        .max_spread_pct(15.0)
        .check_not_starved();
    let y = |tid, off| WorkerRun {
        work_type: "YieldHeavy".into(),
        ..w(tid, 10, off, &[0])
    };
    // A yielder beside a spinner gives its CPU away; one alone keeps it.
    assert!(evaluate(&a, &run(vec![y(1, 2.8), y(2, 49.8)]), 1.0).passed);
    // A yielder that never ran is still starved.
    let mut starved = y(3, 100.0);
    starved.report.work_units = 0;
    starved.report.iterations = 0;
    let r = evaluate(&a, &run(vec![y(1, 2.8), starved]), 1.0);
    assert!(r.has_kind(DetailKind::Starved), "{r:?}");
}

#[test]
fn spread_compares_only_workers_with_the_same_affinity() {
    let a = Assert::NO_OVERRIDES.max_spread_pct(15.0);
    let with = |tid, off, aff: WorkerAffinity| WorkerRun {
        affinity: aff,
        ..w(tid, 10, off, &[0])
    };
    let fixed = |cpus: &[u32]| WorkerAffinity::Fixed(cpus.to_vec());
    // Pinned to different CPUs: different competition, not a fairness question.
    let r = run(vec![with(1, 0.0, fixed(&[0])), with(2, 60.0, fixed(&[1]))]);
    assert!(evaluate(&a, &r, 1.0).passed);
    // Re-pinned mid-run: no peers at all.
    let r = run(vec![
        with(1, 0.0, WorkerAffinity::Changed),
        with(2, 60.0, WorkerAffinity::Changed),
    ]);
    assert!(evaluate(&a, &r, 1.0).passed);
    // The same pin (the SCHED_IDLE-vs-normal negative case) is still judged, and so
    // are peers beside a differently pinned worker.
    let r = run(vec![with(1, 0.0, fixed(&[0])), with(2, 99.0, fixed(&[0]))]);
    assert!(evaluate(&a, &r, 1.0).has_kind(DetailKind::Unfair));
    let r = run(vec![
        with(1, 0.0, WorkerAffinity::Inherited),
        with(2, 40.0, WorkerAffinity::Inherited),
        with(3, 0.0, fixed(&[1])),
    ]);
    let v = evaluate(&a, &r, 1.0);
    assert!(v.has_kind(DetailKind::Unfair), "{v:?}");
}

#[test]
fn wake_latency_and_migration() {
    let a = Assert::NO_OVERRIDES
        .max_p99_wake_latency_ns(1_000)
        .max_migration_ratio(0.1);
    let mut x = w(1, 100, 0.0, &[0, 1]);
    x.report.resume_latencies_ns = (1..=100).map(|i| i * 100).collect();
    x.report.migration_count = 50;
    let r = evaluate(&a, &run(vec![x.clone()]), 1.0);
    assert!(r.has_kind(DetailKind::Benchmark) && r.has_kind(DetailKind::Migration));
    let s = r.stats.unwrap();
    assert_eq!(s.worst_p99_wake_latency_us, Some(9.9));
    assert_eq!(s.worst_median_wake_latency_us, Some(5.0));
    // p99 9.9 µs is within 1 µs × 16.
    let r = evaluate(
        &Assert::NO_OVERRIDES.max_p99_wake_latency_ns(1_000),
        &run(vec![x]),
        16.0,
    );
    assert!(r.passed, "{:?}", r.details);
}

/// Per-worker rate and ratio limits: at the limit passes, past it fails with the numbers, and
/// a worker without telemetry is never judged.
#[test]
fn per_worker_limits_read_exactly_and_skip_workers_without_telemetry() {
    // 100 units and 100 iterations in 2 s; 10 migrations.
    let mut x = w(1, 100, 10.0, &[0]);
    x.report.migration_count = 10;
    let judged = |a: Assert, x: &WorkerRun| evaluate(&a, &run(vec![x.clone()]), 1.0);
    let n = Assert::NO_OVERRIDES;
    assert!(judged(n.min_work_rate(50.0), &x).passed);
    let r = judged(n.min_work_rate(50.5), &x);
    assert_eq!(
        r.details[0].message,
        "cgroup cg0: worker 1 work rate 50.0/s < 50.5/s"
    );
    assert!(judged(n.min_iteration_rate(50.0), &x).passed);
    assert!(judged(n.max_migration_ratio(0.1), &x).passed);
    let r = judged(n.max_migration_ratio(0.09), &x);
    assert_eq!(
        r.details[0].message,
        "cgroup cg0: worker 1 migrated 10 times in 100 iterations (ratio 0.1000 > 0.09)"
    );
    let mut quiet = x.clone();
    quiet.telemetry = false;
    quiet.report.max_gap_ms = 1e6;
    for a in [
        n.min_work_rate(1e6),
        n.min_iteration_rate(1e6),
        n.max_migration_ratio(0.0),
        n.max_gap_ms(1),
    ] {
        assert!(judged(a, &quiet).passed, "{a:?}");
    }
}

/// Per-cgroup limits: at the limit passes, past it fails with the numbers.
#[test]
fn cgroup_limits_read_exactly() {
    let n = Assert::NO_OVERRIDES;
    // Off-CPU 10% and 30%; work rates 50 and 150 per second; wake latencies 1..5 µs.
    let mut a = w(1, 100, 10.0, &[0]);
    a.report.resume_latencies_ns = vec![1000, 2000, 3000, 4000];
    let mut b = w(2, 300, 30.0, &[1]);
    b.report.resume_latencies_ns = vec![5000];
    let runs = run(vec![a, b]);
    let first = |x: Assert, scale: f64| {
        let r = evaluate(&x, &runs, scale);
        r.details.first().map(|d| d.message.clone())
    };
    assert_eq!(first(n.max_spread_pct(20.0), 1.0), None);
    assert!(first(n.max_spread_pct(19.9), 1.0)
        .unwrap()
        .starts_with("cgroup cg0 spread 20.0% > 19.9%"));
    assert_eq!(first(n.max_throughput_cv(0.5), 1.0), None);
    assert_eq!(
        first(n.max_throughput_cv(0.49), 1.0).unwrap(),
        "cgroup cg0: work-rate CV 0.500 > 0.49"
    );
    assert_eq!(first(n.max_p99_wake_latency_ns(5000), 1.0), None);
    assert_eq!(
        first(n.max_p99_wake_latency_ns(4999), 1.0).unwrap(),
        "cgroup cg0: p99 wake latency 5.0 µs > 4.999 µs"
    );
    assert_eq!(first(n.max_p99_wake_latency_ns(1250), 4.0), None);
    assert_eq!(
        first(n.max_p99_wake_latency_ns(1249), 4.0).unwrap(),
        "cgroup cg0: p99 wake latency 5.0 µs > 1.249 × time scale 4 µs"
    );
    let exact = crate::stats::cv(&[1000.0, 2000.0, 3000.0, 4000.0, 5000.0]).unwrap();
    assert_eq!(first(n.max_wake_latency_cv(exact), 1.0), None);
    assert_eq!(
        first(n.max_wake_latency_cv(0.47), 1.0).unwrap(),
        "cgroup cg0: wake latency CV 0.471 > 0.47"
    );
    // Across cgroups: 10% against 30%.
    let two = |name: &str, off| cg(name, vec![w(1, 100, off, &[0]), w(2, 100, off, &[1])]);
    let pair = [two("cg0", 10.0), two("cg1", 30.0)];
    assert!(evaluate(&n.max_cgroup_spread_pct(20.0), &pair, 1.0).passed);
    assert!(!evaluate(&n.max_cgroup_spread_pct(19.9), &pair, 1.0).passed);
}
