//! Host-side tests: validation against a topology (no VM, no cgroupfs) and one end-to-end
//! run over a plain directory standing in for cgroupfs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::cgroup::{CgroupError, CgroupOps};
use crate::topology::Topology;

/// Records calls; never touches the system.
#[derive(Debug, Default)]
struct FakeCgroups {
    calls: Mutex<Vec<String>>,
}

impl CgroupOps for FakeCgroups {
    fn create(&self, rel: &str) -> Result<(), CgroupError> {
        self.calls.lock().unwrap().push(format!("create {rel}"));
        Ok(())
    }
    fn remove(&self, rel: &str) -> Result<(), CgroupError> {
        self.calls.lock().unwrap().push(format!("remove {rel}"));
        Ok(())
    }
    fn set_cpuset(&self, rel: &str, cpus: &[u32], _: &[u32]) -> Result<(), CgroupError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("cpuset {rel} {cpus:?}"));
        Ok(())
    }
    fn clear_cpuset(&self, rel: &str) -> Result<(), CgroupError> {
        self.calls.lock().unwrap().push(format!("clear {rel}"));
        Ok(())
    }
    fn move_task(&self, _: &str, _: i32) -> Result<(), CgroupError> {
        Ok(())
    }
    fn procs(&self, _: &str) -> Result<Vec<i32>, CgroupError> {
        Ok(Vec::new())
    }
    fn path(&self, rel: &str) -> std::path::PathBuf {
        std::path::PathBuf::from("/nonexistent").join(rel)
    }
}

fn ctx(n: u32, l: u32, c: u32) -> (Ctx, Arc<FakeCgroups>) {
    let fake = Arc::new(FakeCgroups::default());
    let topo = TestTopology::from_topology(&Topology::new(n, l, c, 1).unwrap());
    (Ctx::builder(fake.clone(), topo), fake)
}

fn err_of(ctx: &Ctx, steps: Vec<Step>) -> String {
    let e = validate(ctx, &Backdrop::new(), &steps).unwrap_err();
    e.to_string()
}

#[test]
fn missing_llc_or_node_is_named() {
    let (c, _) = ctx(1, 2, 2);
    let m = err_of(
        &c,
        vec![Step::with_defs(
            vec![CgroupDef::named("cg0").with_cpuset(CpusetSpec::Llc(2))],
            HoldSpec::FULL,
        )],
    );
    assert!(m.contains("cgroup \"cg0\""), "{m}");
    assert!(
        m.contains("LLC 2 does not exist: the topology has 2 LLC(s)"),
        "{m}"
    );
    let m = err_of(
        &c,
        vec![Step::new(
            vec![
                Op::add_cgroup("x"),
                Op::set_cpuset("x", CpusetSpec::Numa(1)),
            ],
            HoldSpec::FULL,
        )],
    );
    assert!(m.contains("step 0, op 1 (set_cpuset)"), "{m}");
    assert!(m.contains("NUMA node 1 does not exist"), "{m}");
}

#[test]
fn empty_and_overlapping_disjoint_cpusets() {
    let (c, _) = ctx(1, 1, 2);
    let m = err_of(
        &c,
        vec![Step::with_defs(
            vec![CgroupDef::named("a").with_cpuset(CpusetSpec::Disjoint { index: 0, of: 3 })],
            HoldSpec::FULL,
        )],
    );
    assert!(m.contains("empty cpuset"), "{m}");
    let m = err_of(
        &c,
        vec![Step::with_defs(
            vec![CgroupDef::named("a").with_cpuset(CpusetSpec::Exact(vec![]))],
            HoldSpec::FULL,
        )],
    );
    assert!(m.contains("empty cpuset"), "{m}");
    let same = CpusetSpec::Disjoint { index: 1, of: 2 };
    let m = err_of(
        &c,
        vec![Step::with_defs(
            vec![
                CgroupDef::named("a").with_cpuset(same.clone()),
                CgroupDef::named("b").with_cpuset(same),
            ],
            HoldSpec::FULL,
        )],
    );
    assert!(
        m.contains("\"a\" and \"b\" have Disjoint cpusets that overlap on CPUs 1"),
        "{m}"
    );
}

#[test]
fn unknown_cgroup_in_an_op() {
    let (c, _) = ctx(1, 1, 2);
    let m = err_of(
        &c,
        vec![
            Step::with_defs(vec![CgroupDef::named("cg0")], HoldSpec::Frac(0.5)),
            Step::new(vec![Op::move_all_tasks("cg0", "cg9")], HoldSpec::Frac(0.5)),
        ],
    );
    assert!(
        m.contains("step 1, op 0 (move_all_tasks): move_all_tasks names cgroup \"cg9\""),
        "{m}"
    );
    assert!(m.contains("existing: cg0"), "{m}");
    // Removed cgroups (and their children) are gone for later ops.
    let m = err_of(
        &c,
        vec![
            Step::with_defs(vec![CgroupDef::named("o/a")], HoldSpec::Frac(0.5)),
            Step::new(
                vec![
                    Op::add_cgroup("o"),
                    Op::remove_cgroup("o"),
                    Op::stop_cgroup("o/a"),
                ],
                HoldSpec::Frac(0.5),
            ),
        ],
    );
    assert!(m.contains("names cgroup \"o/a\""), "{m}");
    let m = err_of(
        &c,
        vec![Step::new(
            vec![Op::wait_payload("fio", None)],
            HoldSpec::FULL,
        )],
    );
    assert!(m.contains("payload \"fio\", which is not running"), "{m}");
}

#[test]
fn pairs_need_an_even_count() {
    let (c, _) = ctx(1, 1, 2);
    let m = err_of(
        &c,
        vec![Step::with_defs(
            vec![CgroupDef::named("pp")
                .work_type(WorkType::FutexPingPong { spin_iters: 1024 })
                .workers(3)],
            HoldSpec::FULL,
        )],
    );
    assert!(m.contains("cgroup \"pp\""), "{m}");
    assert!(
        m.contains("FutexPingPong workers come in groups of 2, but 3"),
        "{m}"
    );
}

#[test]
fn affinity_mempolicy_and_hold_checks() {
    let (c, _) = ctx(2, 2, 2);
    let m = err_of(
        &c,
        vec![Step::with_defs(
            vec![CgroupDef::named("a")
                .with_cpuset(CpusetSpec::Numa(0))
                .affinity(AffinityKind::Exact(vec![3]))],
            HoldSpec::FULL,
        )],
    );
    assert!(m.contains("shares no CPU"), "{m}");
    let m = err_of(
        &c,
        vec![Step::with_defs(
            vec![CgroupDef::named("a")
                .with_cpuset(CpusetSpec::Numa(0))
                .mem_policy(MemPolicy::Bind(vec![1]))],
            HoldSpec::FULL,
        )],
    );
    assert!(m.contains("memory policy nodes [1]"), "{m}");
    let m = err_of(&c, vec![Step::new(vec![], HoldSpec::Frac(0.0))]);
    assert!(m.contains("not a positive duration"), "{m}");
}

#[test]
fn bad_scenarios_touch_nothing() {
    let (c, fake) = ctx(1, 1, 2);
    let r = execute_steps(
        &c,
        vec![
            Step::with_defs(vec![CgroupDef::named("cg0")], HoldSpec::Frac(0.5)),
            Step::new(vec![Op::stop_cgroup("nope")], HoldSpec::Frac(0.5)),
        ],
    );
    assert!(r.is_err());
    assert!(fake.calls.lock().unwrap().is_empty());
}

#[test]
fn canned_scenarios_validate_on_small_and_numa_topologies() {
    for (n, l, cores) in [(1, 1, 2), (1, 2, 2), (2, 4, 2)] {
        let (c, fake) = ctx(n, l, cores);
        let c = c.with_dry_run();
        for (name, scenario) in crate::scenario::canned::ALL {
            let r = scenario(&c).unwrap_or_else(|e| panic!("{name} on {n}n{l}l{cores}c: {e:#}"));
            assert!(r.passed, "{name}: {r:?}");
        }
        // A dry run touches no cgroup.
        assert!(fake.calls.lock().unwrap().is_empty());
    }
    // And validation does run: a scenario that cannot fit the topology is refused.
    let (c, _) = ctx(1, 1, 2);
    let e = crate::scenario::execute_defs(
        &c.with_dry_run(),
        vec![CgroupDef::named("x").with_cpuset(CpusetSpec::Llc(3))],
    )
    .unwrap_err();
    assert!(format!("{e:#}").contains("Llc"), "{e:#}");
}

#[test]
fn end_to_end_over_a_plain_directory() {
    // Plain directories stand in for cgroupfs: creation, worker placement (a write to
    // cgroup.procs), ops and teardown all run; the kernel just enforces nothing.
    let d = tempfile::tempdir().unwrap();
    let fs = Arc::new(crate::cgroup::CgroupFs::lazy(d.path().join("ktstr")));
    let topo = TestTopology::from_topology(&Topology::new(1, 1, 2, 1).unwrap());
    let c = Ctx::builder(fs, topo)
        .with_duration(Duration::from_millis(400))
        .with_assert(crate::assert::Assert::NO_OVERRIDES.not_starved(true));
    let r = execute_steps(
        &c,
        vec![
            Step::with_defs(
                vec![CgroupDef::named("cg0"), CgroupDef::named("cg1").empty()],
                HoldSpec::Frac(0.5),
            ),
            Step::new(
                vec![
                    Op::spawn("cg1", Work::new(WorkType::YieldHeavy, 1)),
                    Op::set_affinity("cg0", AffinityKind::SingleCpu),
                ],
                HoldSpec::Frac(0.25),
            ),
            Step::new(
                vec![
                    Op::stop_cgroup("cg1"),
                    Op::run_payload(Payload::binary("true", "/bin/true"), &[], None),
                    Op::wait_payload("true", None),
                ],
                HoldSpec::Frac(0.25),
            ),
        ],
    )
    .unwrap();
    assert!(r.passed, "{:?}", r.details);
    let s = r.stats.unwrap();
    assert_eq!(s.total_workers, 3);
    assert_eq!(s.cgroups.len(), 2);
    assert!(r
        .events
        .iter()
        .any(|e| e.op_kind == "wait_payload" && e.detail.contains("exited with code 0")));
}
