//! Unit tests of the matrix: naming, profiles, gates, kernels, `--exact` round trips.

use super::*;
use crate::assert::AssertResult;
use crate::registry::{Ctx, FlagDecl, Gates, KtstrTest, Scheduler, SchedulerBinary};

fn body(_: &Ctx) -> anyhow::Result<AssertResult> {
    Ok(AssertResult::pass())
}

static DEMO: Scheduler = Scheduler::new("scx-demo")
    .binary(SchedulerBinary::Discover("scx_demo"))
    .topology(1, 2, 4, 1)
    .flags(&[
        FlagDecl::new("llc", &["--llc"]),
        FlagDecl::new("steal", &["--steal"]).requires(&["llc"]),
        FlagDecl::new("spread", &["--spread"]).excludes(&["steal"]),
    ])
    .sched_args(&["--verbose"])
    .constraints(Gates::NONE.max_llcs(4));

static TESTS: [KtstrTest; 5] = [
    KtstrTest::new("two_cgroups", body),
    KtstrTest::new("demo_sched", body)
        .scheduler(&DEMO)
        .required_flags(&["llc"]),
    KtstrTest::new("sched_plain", body)
        .scheduler(&DEMO)
        .extra_sched_args(&["--extra"]),
    KtstrTest::new("host_check", body).host_only(true),
    KtstrTest::new("smt_only", body)
        .threads(2)
        .gates(Gates::NONE.requires_smt(true).max_cpus(16)),
];

fn matrix(kernels: KernelSet) -> Matrix {
    Matrix::new(&TESTS, kernels)
}

fn all(m: &Matrix) -> Vec<(String, bool)> {
    let mut v = Vec::new();
    m.for_each_case(|c| v.push((c.name.to_string(), c.ignored)))
        .unwrap();
    v
}

fn table(test: &'static KtstrTest) -> FlagTable {
    FlagTable::new(test).unwrap()
}

fn names(s: &Scheduler, masks: &[u32]) -> Vec<String> {
    masks
        .iter()
        .map(|&m| {
            let mut out = String::new();
            write_scenario(&mut out, s, m, None);
            out
        })
        .collect()
}

#[test]
fn default_gates_admit_15_presets() {
    let n = PRESETS
        .iter()
        .filter(|(_, t)| Gates::DEFAULTS.admits(t))
        .count();
    assert_eq!(n, 15);
    for (name, t) in PRESETS {
        assert!(
            Topology::new(t.numa_nodes, t.llcs, t.cores, t.threads).is_ok(),
            "{name}"
        );
    }
}

#[test]
fn base_case_names_and_ignored_flags() {
    let cases = all(&matrix(KernelSet::none()));
    let base: Vec<&str> = cases
        .iter()
        .filter(|(_, ig)| !ig)
        .map(|(n, _)| n.as_str())
        .collect();
    // demo_* tests are ignored even in their base case.
    assert_eq!(
        base,
        [
            "host_check/host",
            "sched_plain/scx-demo/1n2l4c1t",
            "smt_only/eevdf/1n1l2c2t",
            "two_cgroups/eevdf/1n1l2c1t",
        ]
    );
    assert!(cases.contains(&("demo_sched/scx-demo+llc/1n2l4c1t".into(), true)));
    assert!(cases.contains(&("demo_sched/scx-demo+llc+steal/1n4l8c1t".into(), true)));
    // two_cgroups: declared topology + 15 presets (its own shape is not a preset).
    let n = cases
        .iter()
        .filter(|(n, _)| n.starts_with("two_cgroups/"))
        .count();
    assert_eq!(n, 16);
    // requires_smt drops t=1 presets; max_cpus 16 leaves smt-2llc and smt-3llc.
    let smt: Vec<&str> = cases
        .iter()
        .filter(|(n, _)| n.starts_with("smt_only/"))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        smt,
        [
            "smt_only/eevdf/1n1l2c2t",
            "smt_only/eevdf/1n2l2c2t",
            "smt_only/eevdf/1n3l2c2t"
        ]
    );
}

#[test]
fn flag_profiles_respect_requires_excludes_and_test_flags() {
    let plain = table(&TESTS[2]);
    assert_eq!(
        names(&DEMO, &plain.profiles()),
        [
            "scx-demo",
            "scx-demo+llc",
            "scx-demo+spread",
            "scx-demo+llc+steal",
            "scx-demo+llc+spread"
        ]
    );
    assert_eq!(plain.base(), Some(0));
    let req = table(&TESTS[1]);
    assert_eq!(
        names(&DEMO, &req.profiles()),
        ["scx-demo+llc", "scx-demo+llc+steal", "scx-demo+llc+spread"]
    );
    static EXCL: KtstrTest = KtstrTest::new("x", body)
        .scheduler(&DEMO)
        .required_flags(&["steal"])
        .excluded_flags(&["spread"]);
    let t = table(&EXCL);
    assert_eq!(t.base(), Some(0b011));
    assert_eq!(names(&DEMO, &t.profiles()), ["scx-demo+llc+steal"]);
    static IMPOSSIBLE: KtstrTest = KtstrTest::new("y", body)
        .scheduler(&DEMO)
        .required_flags(&["steal"])
        .excluded_flags(&["llc"]);
    assert_eq!(table(&IMPOSSIBLE).base(), None);
    assert!(table(&IMPOSSIBLE).profiles().is_empty());
    assert!(matches!(
        TestPlan::new(&IMPOSSIBLE),
        Err(MatrixError::InvalidTest { .. })
    ));
}

/// The pruned search must find exactly the masks a brute-force filter keeps.
#[test]
fn profile_search_matches_brute_force() {
    let flag_names = ["a", "b", "c", "d", "e", "f", "g"];
    // Deterministic pseudo-random relation graphs.
    let mut seed = 0x9e37_79b9_u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for _ in 0..200 {
        let mut decls = Vec::new();
        for (i, n) in flag_names.iter().enumerate() {
            let pick = |r: u32| -> &'static [&'static str] {
                let v: Vec<&'static str> = flag_names
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i && r & (1 << j) != 0 && r % 3 == 0)
                    .map(|(_, s)| *s)
                    .collect();
                Box::leak(v.into_boxed_slice())
            };
            let (r, e) = (next(), next());
            decls.push(FlagDecl::new(n, &[]).requires(pick(r)).excludes(pick(e)));
        }
        let sched: &'static Scheduler = Box::leak(Box::new(
            Scheduler::new("s").flags(Box::leak(decls.into_boxed_slice())),
        ));
        let r = next();
        let req: &'static [&'static str] = if r % 4 == 0 { &["c"] } else { &[] };
        let exc: &'static [&'static str] = if r % 5 == 0 { &["e"] } else { &[] };
        let test: &'static KtstrTest = Box::leak(Box::new(
            KtstrTest::new("t", body)
                .scheduler(sched)
                .required_flags(req)
                .excluded_flags(exc),
        ));
        let t = FlagTable::new(test).unwrap();
        let mut brute: Vec<u32> = (0..1u32 << flag_names.len())
            .filter(|&m| t.is_valid(m))
            .collect();
        let mut found = t.profiles();
        assert_eq!(found.first().copied(), t.base(), "base must come first");
        brute.sort();
        found.sort();
        assert_eq!(found, brute);
    }
}

#[test]
fn exact_round_trips_every_listed_name() {
    for kernels in [
        KernelSet::none(),
        KernelSet::parse(Some("/boot/linux-6.14.2"), None).unwrap(),
        KernelSet::parse(None, Some("6.14.2=/k/a;6.15-rc3=/k/b")).unwrap(),
    ] {
        let m = matrix(kernels.clone());
        let mut n = 0;
        m.for_each_case(|c| {
            n += 1;
            let spec = m
                .resolve(c.name)
                .unwrap_or_else(|e| panic!("{}: {e}", c.name));
            let listed = c.to_spec();
            assert_eq!(spec.name, c.name);
            assert_eq!(spec.ignored, c.ignored, "{}", c.name);
            assert_eq!(spec.base, listed.base, "{}", c.name);
            assert_eq!(spec.flag_mask, listed.flag_mask);
            assert_eq!(spec.topology, listed.topology);
            assert_eq!(spec.kernel, listed.kernel);
            if !spec.host_only() {
                assert_eq!(spec.scenario(), c.name.split('/').nth(1).unwrap_or(""));
            }
        })
        .unwrap();
        assert!(n > 50);
        if kernels.suffixed() {
            assert!(m.resolve("two_cgroups/eevdf/1n1l2c1t/6_15_rc3").is_ok());
            assert!(m.resolve("two_cgroups/eevdf/1n1l2c1t").is_err());
            assert!(m.resolve("host_check/host").is_ok());
        }
    }
}

#[test]
fn resolve_rejects_non_cases() {
    let m = matrix(KernelSet::none());
    for bad in [
        "sched_plain/scx-demo+steal+llc/1n2l4c1t", // not declaration order
        "sched_plain/scx-demo+steal/1n2l4c1t",     // steal requires llc
        "sched_plain/scx-demo+llc+llc/1n2l4c1t",   // repeated
        "sched_plain/scx-demo+nope/1n2l4c1t",      // unknown flag
        "sched_plain/eevdf/1n2l4c1t",              // wrong scheduler
        "sched_plain/scx-demo/1n8l8c2t",           // max_llcs 4
        "sched_plain/scx-demo/1n2l4c1t/extra",     // no kernels selected
        "sched_plain/scx-demo/01n2l4c1t",          // non-canonical label
        "demo_sched/scx-demo/1n2l4c1t",            // llc is required
        "host_check/eevdf/1n1l2c1t",               // host-only has one case
        "two_cgroups/eevdf/2n4l4c1t",              // numa gate
    ] {
        assert!(
            matches!(m.resolve(bad), Err(ResolveError::NotACase { .. })),
            "{bad}: {:?}",
            m.resolve(bad).map(|c| c.name)
        );
    }
    match m.resolve("two_cgroup/eevdf/1n1l2c1t") {
        Err(ResolveError::UnknownTest(e)) => assert_eq!(e.did_you_mean[0], "two_cgroups"),
        other => panic!("{:?}", other.map(|c| c.name)),
    }
}

#[test]
fn case_spec_argv_and_assert() {
    let m = matrix(KernelSet::none());
    let c = m
        .resolve("sched_plain/scx-demo+llc+spread/1n4l4c2t")
        .unwrap();
    assert_eq!(
        c.sched_argv(),
        ["--verbose", "--extra", "--llc", "--spread"]
    );
    assert!(c.ignored && !c.base);
    assert_eq!(c.assert, crate::assert::Assert::default_checks());
    let names: Vec<&str> = c.active_flags().map(|f| f.name).collect();
    assert_eq!(names, ["llc", "spread"]);
}

#[test]
fn kernel_labels_are_sanitized() {
    assert_eq!(sanitize_label("6.15-rc3"), "6_15_rc3");
    assert_eq!(sanitize_label("6.14.2"), "6_14_2");
    assert_eq!(sanitize_label("Git:Owner/Repo@Main"), "git_owner_repo_main");
    assert_eq!(sanitize_label("--x--"), "x");
    let k = KernelSet::parse(Some("ignored"), Some(" 6.14.2=/a ; /b/linux-6.15-rc3 ;")).unwrap();
    let labels: Vec<&str> = k.kernels().iter().map(|k| k.label.as_str()).collect();
    assert_eq!(labels, ["6_14_2", "linux_6_15_rc3"]);
    assert!(k.suffixed());
    let one = KernelSet::parse(None, Some("a=/x")).unwrap();
    assert!(!one.suffixed());
    assert!(KernelSet::parse(None, Some("6.14=/a;6_14=/b")).is_err());
    assert!(KernelSet::parse(None, Some("=/a")).is_err());
}

#[test]
fn duplicate_test_names_are_an_error() {
    static DUP: [KtstrTest; 2] = [KtstrTest::new("a", body), KtstrTest::new("a", body)];
    let m = Matrix::new(&DUP, KernelSet::none());
    assert!(matches!(
        m.for_each_case(|_| {}),
        Err(MatrixError::DuplicateTest(_))
    ));
}

static PERF_TESTS: [KtstrTest; 2] = [
    KtstrTest::new("plain", body),
    KtstrTest::new("isolated", body).performance_mode(true),
];

/// A host of `n` CPUs in one LLC.
fn one_llc_host(n: u32) -> crate::host_cpus::HostCpus {
    crate::host_cpus::HostCpus::from_cpus(
        (0..n)
            .map(|cpu| crate::host_cpus::HostCpu {
                cpu,
                llc: 0,
                node: 0,
            })
            .collect(),
    )
}

#[test]
fn performance_cases_are_listed_ignored_only_where_the_host_cannot_isolate_them() {
    let listed = |host: Option<crate::host_cpus::HostCpus>| {
        all(&Matrix::new(&PERF_TESTS, KernelSet::none()).with_performance_host(host))
    };
    let isolated_base = |v: &[(String, bool)]| -> bool {
        v.iter()
            .find(|(n, _)| n.starts_with("isolated/"))
            .map(|(_, i)| *i)
            .unwrap()
    };
    let vcpus = PERF_TESTS[1].declared_topology().unwrap().num_cpus();
    // Too small: vCPUs + 1 service CPU do not fit.
    let small = listed(Some(one_llc_host(vcpus)));
    assert!(isolated_base(&small), "{small:?}");
    assert!(
        small.iter().any(|(n, i)| n.starts_with("plain/") && !*i),
        "{small:?}"
    );
    // Big enough, or no host given (perf mode off, strict mode): listed normally.
    assert!(!isolated_base(&listed(Some(one_llc_host(vcpus + 1)))));
    assert!(!isolated_base(&listed(None)));
    // Resolving one case agrees with the listing.
    let m =
        Matrix::new(&PERF_TESTS, KernelSet::none()).with_performance_host(Some(one_llc_host(1)));
    let name = &small
        .iter()
        .find(|(n, _)| n.starts_with("isolated/"))
        .unwrap()
        .0;
    assert!(m.resolve(name).unwrap().ignored);
}

static SWEEPS: [KtstrTest; 4] = [
    KtstrTest::new("sweep", body).work_types(&["SpinWait", "YieldHeavy"]),
    KtstrTest::new("sweep_demo", body)
        .scheduler(&DEMO)
        .work_types(&["Bursty"]),
    KtstrTest::new("sweep_typo", body).work_types(&["SpinWiat"]),
    KtstrTest::new("sweep_host", body)
        .host_only(true)
        .work_types(&["SpinWait"]),
];

#[test]
fn a_work_type_sweep_lists_one_case_per_work_type_all_run_by_default() {
    let m = Matrix::new(&SWEEPS[..1], KernelSet::none());
    let cases = all(&m);
    let base: Vec<&str> = cases
        .iter()
        .filter(|(_, ignored)| !ignored)
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(
        base,
        [
            "sweep/eevdf~SpinWait/1n1l2c1t",
            "sweep/eevdf~YieldHeavy/1n1l2c1t"
        ]
    );
    // Gauntlet cells are swept too, and listed as ignored.
    assert!(
        cases
            .iter()
            .any(|(n, ig)| *ig && n.starts_with("sweep/eevdf~YieldHeavy/") && n != base[1]),
        "{cases:?}"
    );
    let plan = TestPlan::new(&SWEEPS[0]).unwrap();
    assert_eq!(cases.len(), plan.len());
    assert_eq!(plan.len(), plan.topologies.len() * 2);
}

#[test]
fn a_swept_case_resolves_to_its_work_type_and_back() {
    let m = Matrix::new(&SWEEPS[..2], KernelSet::none());
    let spec = m.resolve("sweep/eevdf~YieldHeavy/1n1l2c1t").unwrap();
    assert_eq!(spec.work_type, Some(WorkType::YieldHeavy));
    assert_eq!(spec.scenario(), "eevdf~YieldHeavy");
    assert!(spec.base && !spec.ignored);
    assert_eq!(
        Ctx::for_case(&spec).work_type_override,
        Some(WorkType::YieldHeavy)
    );
    // Flags come before the work type.
    let demo = m
        .resolve("sweep_demo/scx-demo+llc~Bursty/1n2l4c1t")
        .unwrap();
    assert_eq!(demo.scenario(), "scx-demo+llc~Bursty");
    assert!(demo.work_type.is_some());
    // Every listed name round-trips through --exact.
    m.for_each_case(|c| {
        let spec = m.resolve(c.name).unwrap();
        assert_eq!(spec.name, c.name);
        assert_eq!(spec.work_type, c.to_spec().work_type, "{}", c.name);
    })
    .unwrap();
}

#[test]
fn a_wrong_work_type_suffix_says_which_ones_the_test_sweeps() {
    let m = Matrix::new(&SWEEPS[..1], KernelSet::none());
    let err = |n: &str| m.resolve(n).unwrap_err().to_string();
    let e = err("sweep/eevdf/1n1l2c1t");
    assert!(e.contains("~SpinWait, ~YieldHeavy"), "{e}");
    let e = err("sweep/eevdf~Bursty/1n1l2c1t");
    assert!(e.contains("does not sweep work type \"Bursty\""), "{e}");
    let plain = matrix(KernelSet::none());
    let e = plain
        .resolve("two_cgroups/eevdf~SpinWait/1n1l2c1t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("sweeps no work types"), "{e}");
}

#[test]
fn an_unknown_or_host_only_sweep_is_an_invalid_test() {
    let e = TestPlan::new(&SWEEPS[2]).unwrap_err().to_string();
    assert!(e.contains("\"SpinWiat\", which is not a work type"), "{e}");
    assert!(e.contains("SpinWait, YieldHeavy"), "{e}");
    let e = TestPlan::new(&SWEEPS[3]).unwrap_err().to_string();
    assert!(e.contains("host_only"), "{e}");
}

static HOST_REPRO: KtstrTest = KtstrTest::new("host_repro", body)
    .host_only(true)
    .auto_repro(true);

#[test]
fn auto_repro_on_a_host_only_test_is_an_invalid_test() {
    let e = TestPlan::new(&HOST_REPRO).unwrap_err().to_string();
    assert!(e.contains("host_only test boots no VM: auto_repro"), "{e}");
}

static MAP_WRITE: crate::bpf_maps::BpfMapWrite = crate::bpf_maps::BpfMapWrite::new(".bss", 0, 1);
static EEVDF_MAP_WRITE: KtstrTest =
    KtstrTest::new("eevdf_map_write", body).bpf_map_write(&MAP_WRITE);

#[test]
fn bpf_map_write_needs_a_sched_ext_scheduler() {
    let e = TestPlan::new(&EEVDF_MAP_WRITE).unwrap_err().to_string();
    assert!(
        e.contains("bpf_map_write writes into a sched_ext scheduler's BPF map"),
        "{e}"
    );
    static DEMO_MAP_WRITE: KtstrTest = KtstrTest::new("demo_map_write", body)
        .scheduler(&DEMO)
        .bpf_map_write(&MAP_WRITE);
    assert!(TestPlan::new(&DEMO_MAP_WRITE).is_ok());
}
