//! The scenario DSL: what a test declares (cgroups, their cpusets and workers, steps of ops)
//! and the machinery that makes it happen in the guest kernel.
//!
//! A scenario is a [`Backdrop`] (long-lived cgroups, payloads and ops set up before step 1)
//! and a list of [`Step`]s. Each step applies its [`Op`]s, then creates its [`Setup`]'s
//! cgroups and starts their workers, then holds ([`HoldSpec`]). At the end every worker is
//! stopped, its [`WorkerReport`](crate::workload::WorkerReport) collected, and the reports
//! are judged against the case's merged [`Assert`](crate::assert::Assert) thresholds.
//!
//! Everything is validated against the topology before the first cgroup is created or the
//! first worker forked ([`validate`]); a bad scenario fails with a [`ScenarioError`] naming
//! the problem. Every path, including errors and panics, tears down what it created.

pub mod canned;
mod cpuset;
mod exec;
mod overrun;
pub mod phases;
mod validate;

use std::time::Duration;

pub use crate::payload::{run_builtin_payload, Payload, BUILTIN_PAYLOAD_ENV};
pub use crate::registry::TestTopology;
pub use cpuset::{resolve_cpuset, CpusetSpec};
pub use exec::{
    execute_defs, execute_scenario, execute_scenario_with, execute_steps, execute_steps_with,
    StimulusEvent,
};
pub use validate::{validate, ScenarioError};

use crate::registry::Ctx;
pub use crate::workload::{SchedPolicy, WorkType};

/// How each worker of a [`Work`] group is pinned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AffinityKind {
    /// No mask of its own: the cgroup's cpuset.
    #[default]
    Inherit,
    /// A random half (at least one CPU) of the cgroup's CPUs, drawn per worker.
    RandomSubset,
    /// The CPUs of one LLC within the cgroup's CPUs, round-robin over those LLCs per worker.
    LlcAligned,
    /// Every usable CPU, spanning other cgroups' CPUs (the kernel intersects it with the
    /// cgroup's cpuset).
    CrossCgroup,
    /// One CPU per worker, round-robin over the cgroup's CPUs.
    SingleCpu,
    /// Exactly these CPUs.
    Exact(Vec<u32>),
}

/// A NUMA memory policy for a worker group (`set_mempolicy(2)`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MemPolicy {
    /// The system default.
    #[default]
    Default,
    /// Allocate only on these nodes.
    Bind(Vec<u32>),
    /// Prefer this node.
    Preferred(u32),
    /// Interleave over these nodes.
    Interleave(Vec<u32>),
    /// Allocate on the node of the CPU the task runs on.
    Local,
    /// Prefer these nodes.
    PreferredMany(Vec<u32>),
    /// Weighted interleave over these nodes.
    WeightedInterleave(Vec<u32>),
}

impl MemPolicy {
    /// The nodes this policy names (empty for `Default` and `Local`).
    pub fn nodes(&self) -> Vec<u32> {
        match self {
            MemPolicy::Default | MemPolicy::Local => Vec::new(),
            MemPolicy::Preferred(n) => vec![*n],
            MemPolicy::Bind(v)
            | MemPolicy::Interleave(v)
            | MemPolicy::PreferredMany(v)
            | MemPolicy::WeightedInterleave(v) => v.clone(),
        }
    }
}

/// Mode flags of a memory policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MpolFlags {
    /// `MPOL_F_STATIC_NODES`.
    pub static_nodes: bool,
    /// `MPOL_F_RELATIVE_NODES`.
    pub relative_nodes: bool,
}

/// A `nodemask` word array for `set_mempolicy`/`mbind` holding `nodes`.
pub fn build_nodemask(nodes: &[u32]) -> Vec<libc::c_ulong> {
    let bits = libc::c_ulong::BITS;
    let max = nodes.iter().copied().max().unwrap_or(0);
    let mut v = vec![0 as libc::c_ulong; (max / bits + 1) as usize];
    for &n in nodes {
        v[(n / bits) as usize] |= 1 << (n % bits);
    }
    v
}

/// One group of identical workers in a cgroup.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Work {
    /// What each worker does (`ctx.work_type_override` replaces the default `SpinWait`).
    pub work_type: WorkType,
    /// How many; `None` = `ctx.workers_per_cgroup`.
    pub workers: Option<u32>,
    /// Scheduling policy.
    pub sched_policy: SchedPolicy,
    /// Pinning.
    pub affinity: AffinityKind,
    /// NUMA memory policy.
    pub mem_policy: MemPolicy,
    /// Memory policy mode flags.
    pub mpol_flags: MpolFlags,
}

impl Work {
    /// `n` workers of `work_type`, everything else default.
    pub fn new(work_type: WorkType, n: u32) -> Self {
        Work {
            work_type,
            workers: Some(n),
            ..Default::default()
        }
    }
    /// Sets the worker count.
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = Some(n);
        self
    }
    /// Sets the work type.
    pub fn work_type(mut self, t: WorkType) -> Self {
        self.work_type = t;
        self
    }
    /// Sets the scheduling policy.
    pub fn sched_policy(mut self, p: SchedPolicy) -> Self {
        self.sched_policy = p;
        self
    }
    /// Sets the pinning.
    pub fn affinity(mut self, k: AffinityKind) -> Self {
        self.affinity = k;
        self
    }
    /// Sets the memory policy.
    pub fn mem_policy(mut self, m: MemPolicy) -> Self {
        self.mem_policy = m;
        self
    }
    /// Sets the memory policy flags.
    pub fn mpol_flags(mut self, f: MpolFlags) -> Self {
        self.mpol_flags = f;
        self
    }
    /// The worker count in `ctx`.
    pub fn count(&self, ctx: &Ctx) -> u32 {
        self.workers.unwrap_or(ctx.workers_per_cgroup)
    }
}

/// A test cgroup: name (relative to the test root, `/` nests), cpuset and worker groups.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupDef {
    /// Path relative to the test cgroup root, e.g. `cg0` or `outer/inner`.
    pub name: String,
    /// Its cpuset; `None` = the parent's.
    pub cpuset: Option<CpusetSpec>,
    /// Worker groups (the builder edits the first).
    pub works: Vec<Work>,
    /// Eligible for cpuset swap ops.
    pub swappable: bool,
}

impl CgroupDef {
    /// A cgroup with one default worker group (`SpinWait`, `ctx.workers_per_cgroup` workers).
    pub fn named(name: impl Into<String>) -> Self {
        CgroupDef {
            name: name.into(),
            cpuset: None,
            works: vec![Work::default()],
            swappable: false,
        }
    }
    fn first(&mut self) -> &mut Work {
        if self.works.is_empty() {
            self.works.push(Work::default());
        }
        &mut self.works[0]
    }
    /// Sets the cpuset.
    pub fn with_cpuset(mut self, s: CpusetSpec) -> Self {
        self.cpuset = Some(s);
        self
    }
    /// Sets the first group's worker count.
    pub fn workers(mut self, n: u32) -> Self {
        self.first().workers = Some(n);
        self
    }
    /// Sets the first group's work type.
    pub fn work_type(mut self, t: WorkType) -> Self {
        self.first().work_type = t;
        self
    }
    /// Sets the first group's policy.
    pub fn sched_policy(mut self, p: SchedPolicy) -> Self {
        self.first().sched_policy = p;
        self
    }
    /// Sets the first group's pinning.
    pub fn affinity(mut self, k: AffinityKind) -> Self {
        self.first().affinity = k;
        self
    }
    /// Sets the first group's memory policy.
    pub fn mem_policy(mut self, m: MemPolicy) -> Self {
        self.first().mem_policy = m;
        self
    }
    /// Sets the first group's memory policy flags.
    pub fn mpol_flags(mut self, f: MpolFlags) -> Self {
        self.first().mpol_flags = f;
        self
    }
    /// Marks it eligible for cpuset swaps.
    pub fn swappable(mut self, b: bool) -> Self {
        self.swappable = b;
        self
    }
    /// Adds another worker group.
    pub fn work(mut self, w: Work) -> Self {
        self.works.push(w);
        self
    }
    /// No workers at all (an empty cgroup, e.g. a move target).
    pub fn empty(mut self) -> Self {
        self.works.clear();
        self
    }
}

/// How long a step holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HoldSpec {
    /// A fraction of `ctx.duration`.
    Frac(f64),
    /// A fixed time.
    Fixed(Duration),
    /// Set up once, then re-apply the step's ops every `interval` until the step's share of
    /// the duration (`duration / steps`) ends.
    Loop {
        /// Time between re-applications.
        interval: Duration,
    },
}

impl HoldSpec {
    /// The whole duration.
    pub const FULL: HoldSpec = HoldSpec::Frac(1.0);
}

/// The cgroups a step creates.
#[derive(Debug, Clone)]
pub enum Setup {
    /// These cgroups.
    Defs(Vec<CgroupDef>),
    /// Cgroups computed from the context (e.g. one per LLC).
    Factory(fn(&Ctx) -> Vec<CgroupDef>),
}

impl Setup {
    /// The definitions for `ctx`.
    pub fn defs(&self, ctx: &Ctx) -> Vec<CgroupDef> {
        match self {
            Setup::Defs(d) => d.clone(),
            Setup::Factory(f) => f(ctx),
        }
    }
}

/// One phase of a scenario: ops, then new cgroups, then a hold.
#[derive(Debug, Clone)]
pub struct Step {
    /// Cgroups created (and workers started) after the ops.
    pub setup: Setup,
    /// Ops applied first.
    pub ops: Vec<Op>,
    /// How long to hold.
    pub hold: HoldSpec,
}

impl Step {
    /// A step that only applies ops.
    pub fn new(ops: Vec<Op>, hold: HoldSpec) -> Self {
        Step {
            setup: Setup::Defs(Vec::new()),
            ops,
            hold,
        }
    }
    /// A step that creates cgroups.
    pub fn with_defs(defs: Vec<CgroupDef>, hold: HoldSpec) -> Self {
        Step {
            setup: Setup::Defs(defs),
            ops: Vec::new(),
            hold,
        }
    }
    /// A step whose cgroups come from a factory.
    pub fn with_factory(f: fn(&Ctx) -> Vec<CgroupDef>, hold: HoldSpec) -> Self {
        Step {
            setup: Setup::Factory(f),
            ops: Vec::new(),
            hold,
        }
    }
    /// Replaces the ops.
    pub fn set_ops(mut self, ops: Vec<Op>) -> Self {
        self.ops = ops;
        self
    }
}

/// A change applied at a step boundary.
#[derive(Debug, Clone)]
pub enum Op {
    /// Create an empty cgroup.
    AddCgroup {
        /// Its name.
        name: String,
    },
    /// Stop and collect its workers, then remove it (and its children).
    RemoveCgroup {
        /// Its name.
        cgroup: String,
    },
    /// Write a resolved CPU set (and the nodes covering it) to its cpuset.
    SetCpuset {
        /// Its name.
        cgroup: String,
        /// The set.
        spec: CpusetSpec,
    },
    /// Reset its cpuset to the parent's.
    ClearCpuset {
        /// Its name.
        cgroup: String,
    },
    /// Exchange two cgroups' cpusets.
    SwapCpusets {
        /// One cgroup.
        a: String,
        /// The other.
        b: String,
    },
    /// Fork a new worker group into an existing cgroup.
    Spawn {
        /// Its name.
        cgroup: String,
        /// The workers.
        work: Work,
    },
    /// Stop and collect its workers; the cgroup stays.
    StopCgroup {
        /// Its name.
        cgroup: String,
    },
    /// Re-apply a pinning to every worker in it.
    SetAffinity {
        /// Its name.
        cgroup: String,
        /// The pinning.
        kind: AffinityKind,
    },
    /// Fork workers in the test root, outside every test cgroup (competing load; not judged).
    SpawnHost {
        /// The workers.
        work: Work,
    },
    /// Move every task of one cgroup into another through `cgroup.procs`.
    MoveAllTasks {
        /// Source.
        from: String,
        /// Destination.
        to: String,
    },
    /// Start a binary payload in the background.
    RunPayload {
        /// The payload.
        payload: Payload,
        /// Arguments after its default ones.
        args: Vec<String>,
        /// The cgroup it runs in (`None`: the test root).
        cgroup: Option<String>,
    },
    /// Wait for a payload to exit and record its exit code.
    WaitPayload {
        /// The payload's name.
        name: String,
        /// The cgroup it was started in.
        cgroup: Option<String>,
    },
    /// Terminate a payload.
    KillPayload {
        /// The payload's name.
        name: String,
        /// The cgroup it was started in.
        cgroup: Option<String>,
    },
}

fn s(x: &str) -> String {
    x.to_string()
}

impl Op {
    /// [`Op::AddCgroup`].
    pub fn add_cgroup(name: &str) -> Op {
        Op::AddCgroup { name: s(name) }
    }
    /// [`Op::RemoveCgroup`].
    pub fn remove_cgroup(cgroup: &str) -> Op {
        Op::RemoveCgroup { cgroup: s(cgroup) }
    }
    /// [`Op::SetCpuset`].
    pub fn set_cpuset(cgroup: &str, spec: CpusetSpec) -> Op {
        Op::SetCpuset {
            cgroup: s(cgroup),
            spec,
        }
    }
    /// [`Op::ClearCpuset`].
    pub fn clear_cpuset(cgroup: &str) -> Op {
        Op::ClearCpuset { cgroup: s(cgroup) }
    }
    /// [`Op::SwapCpusets`].
    pub fn swap_cpusets(a: &str, b: &str) -> Op {
        Op::SwapCpusets { a: s(a), b: s(b) }
    }
    /// [`Op::Spawn`].
    pub fn spawn(cgroup: &str, work: Work) -> Op {
        Op::Spawn {
            cgroup: s(cgroup),
            work,
        }
    }
    /// [`Op::StopCgroup`].
    pub fn stop_cgroup(cgroup: &str) -> Op {
        Op::StopCgroup { cgroup: s(cgroup) }
    }
    /// [`Op::SetAffinity`].
    pub fn set_affinity(cgroup: &str, kind: AffinityKind) -> Op {
        Op::SetAffinity {
            cgroup: s(cgroup),
            kind,
        }
    }
    /// [`Op::SpawnHost`].
    pub fn spawn_host(work: Work) -> Op {
        Op::SpawnHost { work }
    }
    /// [`Op::MoveAllTasks`].
    pub fn move_all_tasks(from: &str, to: &str) -> Op {
        Op::MoveAllTasks {
            from: s(from),
            to: s(to),
        }
    }
    /// [`Op::RunPayload`].
    pub fn run_payload(payload: Payload, args: &[&str], cgroup: Option<&str>) -> Op {
        Op::RunPayload {
            payload,
            args: args.iter().map(|a| s(a)).collect(),
            cgroup: cgroup.map(s),
        }
    }
    /// [`Op::WaitPayload`].
    pub fn wait_payload(name: &str, cgroup: Option<&str>) -> Op {
        Op::WaitPayload {
            name: s(name),
            cgroup: cgroup.map(s),
        }
    }
    /// [`Op::KillPayload`].
    pub fn kill_payload(name: &str, cgroup: Option<&str>) -> Op {
        Op::KillPayload {
            name: s(name),
            cgroup: cgroup.map(s),
        }
    }
    /// snake_case kind, for stimulus events and error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::AddCgroup { .. } => "add_cgroup",
            Op::RemoveCgroup { .. } => "remove_cgroup",
            Op::SetCpuset { .. } => "set_cpuset",
            Op::ClearCpuset { .. } => "clear_cpuset",
            Op::SwapCpusets { .. } => "swap_cpusets",
            Op::Spawn { .. } => "spawn",
            Op::StopCgroup { .. } => "stop_cgroup",
            Op::SetAffinity { .. } => "set_affinity",
            Op::SpawnHost { .. } => "spawn_host",
            Op::MoveAllTasks { .. } => "move_all_tasks",
            Op::RunPayload { .. } => "run_payload",
            Op::WaitPayload { .. } => "wait_payload",
            Op::KillPayload { .. } => "kill_payload",
        }
    }
}

/// Long-lived setup applied before step 1 and kept until the end.
#[derive(Debug, Clone, Default)]
pub struct Backdrop {
    /// Cgroups (with workers).
    pub cgroups: Vec<CgroupDef>,
    /// Payloads started in the test root: (payload, extra args).
    pub payloads: Vec<(Payload, Vec<String>)>,
    /// Ops applied after the cgroups are created.
    pub ops: Vec<Op>,
}

impl Backdrop {
    /// Nothing.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a cgroup.
    pub fn with_cgroup(mut self, d: CgroupDef) -> Self {
        self.cgroups.push(d);
        self
    }
    /// Adds a payload.
    pub fn with_payload(mut self, p: Payload, args: &[&str]) -> Self {
        self.payloads
            .push((p, args.iter().map(|a| a.to_string()).collect()));
        self
    }
    /// Adds an op.
    pub fn with_op(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
    /// Adds ops.
    pub fn with_ops(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.ops.extend(ops);
        self
    }
}

#[cfg(test)]
mod reference_doc;
#[cfg(test)]
mod tests;
