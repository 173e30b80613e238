//! Keeps `doc/src/dsl.md` true: every op, cpuset, pinning, hold, policy, work type and canned
//! scenario has a row, each row's example is compiled here exactly as the page shows it, and
//! the work types' default parameters and group sizes are the code's.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::prelude::*;
use crate::scenario::canned;

const PAGE: &str = include_str!("../../../doc/src/dsl.md");

/// The cells of every table row on the page.
fn rows() -> Vec<Vec<&'static str>> {
    PAGE.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect()
}

fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Asserts a row `| `name` | `example` | ...` exists.
fn has_row(name: &str, example: &str) {
    let found = rows().iter().any(|r| {
        r.len() >= 2
            && r[0] == format!("`{name}`")
            && squash(r[1]) == squash(&format!("`{example}`"))
    });
    assert!(
        found,
        "doc/src/dsl.md has no row `{name}` with the example `{example}`"
    );
}

/// Pairs each example expression's text with a label computed from its value.
macro_rules! examples {
    ($label:expr; $($e:expr),* $(,)?) => {
        vec![$(($label(&$e), stringify!($e))),*]
    };
}

/// The variant name of a value's `Debug` form.
fn variant<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

#[test]
fn every_op_has_a_row_with_a_compiled_example() {
    // Exhaustive on purpose: a new op does not compile until it is listed here.
    let kind = |o: &Op| match o {
        Op::AddCgroup { .. }
        | Op::RemoveCgroup { .. }
        | Op::SetCpuset { .. }
        | Op::ClearCpuset { .. }
        | Op::SwapCpusets { .. }
        | Op::Spawn { .. }
        | Op::StopCgroup { .. }
        | Op::SetAffinity { .. }
        | Op::SpawnHost { .. }
        | Op::MoveAllTasks { .. }
        | Op::RunPayload { .. }
        | Op::WaitPayload { .. }
        | Op::KillPayload { .. } => o.kind().to_string(),
    };
    let ex = examples![kind;
        Op::add_cgroup("extra"),
        Op::remove_cgroup("cg1"),
        Op::set_cpuset("cg0", CpusetSpec::Llc(1)),
        Op::clear_cpuset("cg0"),
        Op::swap_cpusets("cg0", "cg1"),
        Op::spawn("extra", Work::new(WorkType::Mixed, 2)),
        Op::stop_cgroup("cg1"),
        Op::set_affinity("cg0", AffinityKind::SingleCpu),
        Op::spawn_host(Work::new(WorkType::SpinWait, 4)),
        Op::move_all_tasks("outer/a", "outer/b"),
        Op::run_payload(Payload::binary("stress", "/bin/stress"), &["--cpu", "2"], Some("cg0")),
        Op::wait_payload("stress", Some("cg0")),
        Op::kill_payload("stress", Some("cg0")),
    ];
    let mut kinds: Vec<&String> = ex.iter().map(|(k, _)| k).collect();
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds.len(), 13, "one example per op");
    for (k, e) in &ex {
        has_row(k, e);
    }
}

#[test]
fn every_cpuset_pinning_hold_and_policy_has_a_row() {
    let cpusets = examples![variant;
        CpusetSpec::Llc(0),
        CpusetSpec::Numa(1),
        CpusetSpec::Range { start_frac: 0.0, end_frac: 0.5 },
        CpusetSpec::Disjoint { index: 1, of: 3 },
        CpusetSpec::Overlap { index: 0, of: 2, frac: 0.25 },
        CpusetSpec::Exact(vec![0, 2]),
    ];
    let _exhaustive = |c: &CpusetSpec| match c {
        CpusetSpec::Llc(_)
        | CpusetSpec::Numa(_)
        | CpusetSpec::Range { .. }
        | CpusetSpec::Disjoint { .. }
        | CpusetSpec::Overlap { .. }
        | CpusetSpec::Exact(_) => 6,
    };
    let pinnings = examples![variant;
        AffinityKind::Inherit,
        AffinityKind::RandomSubset,
        AffinityKind::LlcAligned,
        AffinityKind::CrossCgroup,
        AffinityKind::SingleCpu,
        AffinityKind::Exact(vec![1]),
    ];
    let _exhaustive = |a: &AffinityKind| match a {
        AffinityKind::Inherit
        | AffinityKind::RandomSubset
        | AffinityKind::LlcAligned
        | AffinityKind::CrossCgroup
        | AffinityKind::SingleCpu
        | AffinityKind::Exact(_) => 6,
    };
    let holds = examples![variant;
        HoldSpec::Frac(0.5),
        HoldSpec::Fixed(Duration::from_millis(500)),
        HoldSpec::Loop { interval: Duration::from_millis(200) },
    ];
    let _exhaustive = |h: &HoldSpec| match h {
        HoldSpec::Frac(_) | HoldSpec::Fixed(_) | HoldSpec::Loop { .. } => 3,
    };
    let policies = examples![variant;
        SchedPolicy::Normal,
        SchedPolicy::Batch,
        SchedPolicy::Idle,
        SchedPolicy::Fifo(10),
        SchedPolicy::RoundRobin(10),
    ];
    let _exhaustive = |p: &SchedPolicy| match p {
        SchedPolicy::Normal
        | SchedPolicy::Batch
        | SchedPolicy::Idle
        | SchedPolicy::Fifo(_)
        | SchedPolicy::RoundRobin(_) => 5,
    };
    let mems = examples![variant;
        MemPolicy::Default,
        MemPolicy::Bind(vec![0]),
        MemPolicy::Preferred(1),
        MemPolicy::Interleave(vec![0, 1]),
        MemPolicy::Local,
        MemPolicy::PreferredMany(vec![0, 1]),
        MemPolicy::WeightedInterleave(vec![0, 1]),
    ];
    let _exhaustive = |m: &MemPolicy| match m {
        MemPolicy::Default
        | MemPolicy::Bind(_)
        | MemPolicy::Preferred(_)
        | MemPolicy::Interleave(_)
        | MemPolicy::Local
        | MemPolicy::PreferredMany(_)
        | MemPolicy::WeightedInterleave(_) => 7,
    };
    for (name, e) in [cpusets, pinnings, holds, policies, mems].concat() {
        has_row(&name, e);
    }
}

fn my_body(_stop: &AtomicBool) -> WorkerReport {
    WorkerReport::default()
}

#[test]
fn every_work_type_has_a_row_with_its_defaults_and_group() {
    let row = |name: &str| {
        rows()
            .into_iter()
            .find(|r| r[0] == format!("`{name}`") && r.len() == 4)
            .unwrap_or_else(|| panic!("doc/src/dsl.md has no work type row for {name}"))
    };
    for name in WorkType::ALL_NAMES {
        let t = WorkType::from_name(name).unwrap();
        let r = row(name);
        assert_eq!(r[1], format!("`{t:?}`"), "defaults of {name}");
        assert_eq!(r[2], t.group_size().to_string(), "group of {name}");
    }
    // The two without a name: their examples compile as shown.
    let extra = examples![|t: &Option<WorkType>| t.as_ref().map(|t| t.name().to_string()).unwrap_or_default();
        WorkType::sequence(&[Phase::Spin(Duration::from_millis(20)), Phase::Sleep(Duration::from_millis(5))]),
        Some(WorkType::Custom { name: "mine", run: my_body }),
    ];
    assert_eq!(extra[0].0, "Sequence");
    assert_eq!(
        squash(row("Sequence")[1]),
        squash(&format!("`{}`", extra[0].1))
    );
    assert_eq!(
        squash(row("Custom")[1]),
        squash("`WorkType::Custom { name: \"mine\", run: my_body }`")
    );
    // Exhaustive on purpose: a new work type does not compile until it is named here.
    let _named = |t: &WorkType| match t {
        WorkType::SpinWait
        | WorkType::YieldHeavy
        | WorkType::Mixed
        | WorkType::IoSync
        | WorkType::Bursty { .. }
        | WorkType::PipeIo { .. }
        | WorkType::FutexPingPong { .. }
        | WorkType::CachePressure { .. }
        | WorkType::CacheYield { .. }
        | WorkType::CachePipe { .. }
        | WorkType::FutexFanOut { .. }
        | WorkType::FanOutCompute { .. }
        | WorkType::ForkExit
        | WorkType::NiceSweep
        | WorkType::AffinityChurn { .. }
        | WorkType::PolicyChurn { .. }
        | WorkType::PageFaultChurn { .. }
        | WorkType::MutexContention { .. } => true,
        WorkType::Sequence { .. } | WorkType::Custom { .. } => false,
    };
    assert_eq!(WorkType::ALL_NAMES.len(), 18);
}

#[test]
fn every_canned_scenario_has_a_row() {
    let canned_rows: Vec<String> = rows()
        .into_iter()
        .filter(|r| r.len() == 2 && !r[1].starts_with('`'))
        .map(|r| r[0].trim_matches('`').to_string())
        .filter(|n| !n.contains('(') && n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    for (name, _) in canned::ALL {
        assert!(
            canned_rows.iter().any(|r| r == name),
            "doc/src/dsl.md has no row for the canned scenario {name}"
        );
    }
    for r in &canned_rows {
        assert!(
            canned::ALL.iter().any(|(n, _)| n == r),
            "doc/src/dsl.md lists a canned scenario {r} that does not exist"
        );
    }
}
