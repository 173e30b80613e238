//! Running a validated scenario: create cgroups, fork workers into them, apply ops, hold,
//! collect reports, judge. A [`Runner`] owns everything it created and tears it all down on
//! drop, so errors and panics leave no cgroup or worker behind.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::cpuset::resolve_cpuset;
use super::overrun::{overran, Steal};
use super::phases::{self, PhaseRecorder, WorkerSample};
use super::validate::{validate, ScenarioError};
use super::{
    AffinityKind, Backdrop, CgroupDef, CpusetSpec, HoldSpec, MemPolicy, Op, Payload, Step, Work,
};
use crate::assert::eval::{evaluate, CgroupRun, WorkerAffinity, WorkerRun};
pub use crate::assert::StimulusEvent;
use crate::assert::{Assert, AssertResult, DetailKind};
use crate::payload::PayloadHandle;
use crate::registry::Ctx;
use crate::workload::spawn::set_affinity;
use crate::workload::{WorkType, WorkerReport, WorkloadConfig, WorkloadHandle};

/// The work type a [`Work`] runs in `ctx` (a sweep replaces the default `SpinWait`).
pub(crate) fn effective_work_type(ctx: &Ctx, w: &Work) -> WorkType {
    match (ctx.work_type_override, w.work_type) {
        (Some(o), WorkType::SpinWait) => o,
        (_, t) => t,
    }
}

struct Group {
    cgroup: String,
    work_type: WorkType,
    handle: WorkloadHandle,
    /// Union of every cpuset the group lived under; `None` once it ran unconstrained.
    allowed: Option<BTreeSet<u32>>,
}

struct Finished {
    cgroup: String,
    work_type: WorkType,
    allowed: Option<BTreeSet<u32>>,
    reports: Vec<WorkerReport>,
}

struct RunningPayload {
    name: String,
    cgroup: Option<String>,
    handle: PayloadHandle,
}

struct Runner<'a> {
    ctx: &'a Ctx,
    start: Instant,
    created: Vec<String>,
    cpusets: BTreeMap<String, Option<Vec<u32>>>,
    groups: Vec<Group>,
    finished: Vec<Finished>,
    payloads: Vec<RunningPayload>,
    failures: AssertResult,
    events: Vec<StimulusEvent>,
    rng: crate::workload::rng::XorShift64,
    /// Each pinned worker's affinity history (absent: never pinned).
    affinities: BTreeMap<i32, WorkerAffinity>,
    /// Per-phase samples and closed phases (sidecar `phases`).
    phases: PhaseRecorder,
}

fn sys_err(at: &str, cgroup: &str, cause: crate::workload::WorkloadError) -> ScenarioError {
    ScenarioError::Workload {
        at: at.into(),
        cgroup: cgroup.into(),
        cause,
    }
}

fn mempolicy_raw(m: &MemPolicy, f: super::MpolFlags) -> Option<(i32, Vec<u64>)> {
    let (mode, nodes) = match m {
        MemPolicy::Default => return None,
        MemPolicy::Preferred(n) => (1, vec![*n]),
        MemPolicy::Bind(v) => (2, v.clone()),
        MemPolicy::Interleave(v) => (3, v.clone()),
        MemPolicy::Local => (4, Vec::new()),
        MemPolicy::PreferredMany(v) => (5, v.clone()),
        MemPolicy::WeightedInterleave(v) => (6, v.clone()),
    };
    let mut flags = 0;
    if f.static_nodes {
        flags |= 1 << 15;
    }
    if f.relative_nodes {
        flags |= 1 << 14;
    }
    // c_ulong is u64 on the 64-bit targets ktstr supports.
    let mask = super::build_nodemask(&nodes);
    Some((mode | flags, mask))
}

impl<'a> Runner<'a> {
    fn new(ctx: &'a Ctx) -> Self {
        Runner {
            ctx,
            start: Instant::now(),
            created: Vec::new(),
            cpusets: BTreeMap::new(),
            groups: Vec::new(),
            finished: Vec::new(),
            payloads: Vec::new(),
            failures: AssertResult::pass(),
            events: Vec::new(),
            rng: crate::workload::rng::XorShift64::new(0x2545_F491_4F6C_DD1D),
            affinities: BTreeMap::new(),
            phases: PhaseRecorder::default(),
        }
    }

    fn elapsed_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1e3
    }

    /// Which workers a worker's CPU share in a phase is compared with: the same cgroup (the
    /// recorder adds it), work type and affinity; `None` for no one (as the scenario's
    /// spread decides, see `assert::eval`).
    fn peers(&self, work_type: WorkType, pid: i32) -> Option<String> {
        if crate::assert::eval::RESIDUAL_DEMAND.contains(&work_type.name()) {
            return None;
        }
        let affinity = match self.affinities.get(&pid) {
            None | Some(WorkerAffinity::Inherited) => "inherited".to_string(),
            Some(WorkerAffinity::Fixed(m)) => format!("cpus {}", crate::cgroup::cpulist(m)),
            Some(WorkerAffinity::Changed) => return None,
        };
        Some(format!("{} {affinity}", work_type.name()))
    }

    /// A sample of every worker of the groups `pred` selects.
    fn samples(&self, pred: impl Fn(&Group) -> bool) -> Vec<WorkerSample> {
        let at = self.elapsed_ms();
        self.groups
            .iter()
            .filter(|g| pred(g))
            .flat_map(|g| {
                g.handle
                    .iterations()
                    .into_iter()
                    .filter_map(move |(pid, it)| {
                        phases::sample(pid, &g.cgroup, self.peers(g.work_type, pid), it, at)
                    })
            })
            .collect()
    }

    /// Ends phase `index` (0 = BASELINE, k = step k−1) now.
    fn close_phase(&mut self, index: usize) {
        let all = self.samples(|_| true);
        self.phases.observe(all);
        let now = self.elapsed_ms();
        self.phases.close(index.min(u16::MAX as usize) as u16, now);
    }

    fn event(&mut self, label: &str, op_kind: &str, detail: String) {
        let total_iterations = self
            .finished
            .iter()
            .flat_map(|f| &f.reports)
            .map(|r| r.iterations)
            .sum();
        self.events.push(StimulusEvent {
            elapsed_ms: self.start.elapsed().as_millis() as u64,
            label: label.into(),
            op_kind: op_kind.into(),
            detail,
            total_iterations,
        });
    }

    fn next_rand(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// The cpuset in force for `cgroup`: its own, else the nearest ancestor's.
    fn effective(&self, cgroup: &str) -> Option<Vec<u32>> {
        let mut name = cgroup;
        loop {
            if let Some(Some(c)) = self.cpusets.get(name) {
                return Some(c.clone());
            }
            match name.rfind('/') {
                Some(i) => name = &name[..i],
                None => return None,
            }
        }
    }

    /// Widens every live group's allowed set by the cpuset now in force for it.
    fn refresh_allowed(&mut self) {
        let eff: Vec<Option<Vec<u32>>> = self
            .groups
            .iter()
            .map(|g| {
                if g.cgroup.is_empty() {
                    None
                } else {
                    self.effective(&g.cgroup)
                }
            })
            .collect();
        for (g, e) in self.groups.iter_mut().zip(eff) {
            match (&mut g.allowed, e) {
                (Some(a), Some(e)) => a.extend(e),
                (a, _) => *a = None,
            }
        }
    }

    fn create(
        &mut self,
        at: &str,
        name: &str,
        cpuset: Option<Vec<u32>>,
    ) -> Result<(), ScenarioError> {
        let ops = self.ctx.cgroups.clone();
        ops.create(name).map_err(|cause| ScenarioError::Cgroup {
            at: at.into(),
            cause,
        })?;
        self.created.push(name.to_string());
        self.cpusets.insert(name.to_string(), None);
        if let Some(c) = cpuset {
            self.write_cpuset(at, name, Some(c))?;
        }
        Ok(())
    }

    fn write_cpuset(
        &mut self,
        at: &str,
        name: &str,
        cpus: Option<Vec<u32>>,
    ) -> Result<(), ScenarioError> {
        let ops = self.ctx.cgroups.clone();
        let r = match &cpus {
            Some(c) => ops.set_cpuset(name, c, &self.ctx.topo.nodes_of(c)),
            None => ops.clear_cpuset(name),
        };
        r.map_err(|cause| ScenarioError::Cgroup {
            at: at.into(),
            cause,
        })?;
        self.cpusets.insert(name.to_string(), cpus);
        self.refresh_allowed();
        Ok(())
    }

    fn masks(&mut self, cgroup: &str, kind: &AffinityKind, n: usize) -> Vec<Option<Vec<u32>>> {
        let pool = if cgroup.is_empty() {
            None
        } else {
            self.effective(cgroup)
        }
        .unwrap_or_else(|| self.ctx.topo.cpus.clone());
        let llcs: Vec<Vec<u32>> = self
            .ctx
            .topo
            .llcs
            .iter()
            .map(|l| l.iter().copied().filter(|c| pool.contains(c)).collect())
            .filter(|l: &Vec<u32>| !l.is_empty())
            .collect();
        (0..n)
            .map(|i| match kind {
                AffinityKind::Inherit => None,
                AffinityKind::RandomSubset => {
                    let mut p = pool.clone();
                    let want = (p.len() / 2).max(1);
                    let mut out = Vec::new();
                    while out.len() < want {
                        let j = (self.next_rand() % p.len() as u64) as usize;
                        out.push(p.swap_remove(j));
                    }
                    out.sort_unstable();
                    Some(out)
                }
                AffinityKind::LlcAligned => Some(llcs[i % llcs.len()].clone()),
                AffinityKind::CrossCgroup => Some(self.ctx.topo.cpus.clone()),
                AffinityKind::SingleCpu => Some(vec![pool[i % pool.len()]]),
                AffinityKind::Exact(s) => Some(s.clone()),
            })
            .collect()
    }

    fn pin(
        &mut self,
        at: &str,
        cgroup: &str,
        kind: &AffinityKind,
        pids: &[i32],
        initial: bool,
    ) -> Result<(), ScenarioError> {
        let masks = self.masks(cgroup, kind, pids.len());
        for (pid, m) in pids.iter().zip(masks) {
            // Inherit on a re-pin widens back to every CPU (the cpuset still bounds it).
            let m = m.unwrap_or_else(|| self.ctx.topo.cpus.clone());
            set_affinity(*pid, &m).map_err(|e| sys_err(at, cgroup, e))?;
            self.record_affinity(*pid, m, initial);
        }
        Ok(())
    }

    /// Tracks a worker's affinity: the spread compares only workers pinned alike.
    fn record_affinity(&mut self, pid: i32, mask: Vec<u32>, initial: bool) {
        let all = mask == self.ctx.topo.cpus;
        let next = match self.affinities.get(&pid) {
            // Every CPU, at spawn or later (until then it ran on every CPU anyway).
            None if all => WorkerAffinity::Inherited,
            None if initial => WorkerAffinity::Fixed(mask),
            Some(WorkerAffinity::Fixed(old)) if *old == mask => return,
            Some(WorkerAffinity::Inherited) if all => return,
            _ => WorkerAffinity::Changed,
        };
        self.affinities.insert(pid, next);
    }

    /// Spawns `work`'s workers in `cgroup` and releases them.
    fn spawn(&mut self, at: &str, cgroup: &str, work: &Work) -> Result<(), ScenarioError> {
        let first = self.groups.len();
        self.spawn_held(at, cgroup, work)?;
        self.release(first);
        Ok(())
    }

    /// Releases every group from `first` on at once (their wall clocks start together, so
    /// cgroups added together are judged over the same window even when forking the later
    /// ones is slow on a loaded guest), and samples them for the phase record.
    fn release(&mut self, first: usize) {
        for g in &mut self.groups[first..] {
            g.handle.start();
        }
        let at = self.elapsed_ms();
        let mut started: Vec<WorkerSample> = Vec::new();
        for g in &self.groups[first..] {
            started.extend(g.handle.iterations().into_iter().filter_map(|(pid, it)| {
                phases::sample(pid, &g.cgroup, self.peers(g.work_type, pid), it, at)
            }));
        }
        self.phases.observe(started);
    }

    /// Spawns `work`'s workers in `cgroup`, placed and pinned but not released.
    fn spawn_held(&mut self, at: &str, cgroup: &str, work: &Work) -> Result<(), ScenarioError> {
        let work_type = effective_work_type(self.ctx, work);
        let cfg = WorkloadConfig {
            num_workers: work.count(self.ctx),
            work_type,
            sched_policy: work.sched_policy,
            cgroup: (!cgroup.is_empty()).then(|| self.ctx.cgroups.path(cgroup)),
            mem_policy: mempolicy_raw(&work.mem_policy, work.mpol_flags),
            ..Default::default()
        };
        let handle = WorkloadHandle::spawn(&cfg).map_err(|e| sys_err(at, cgroup, e))?;
        if work.affinity != AffinityKind::Inherit {
            let pids = handle.worker_pids();
            self.pin(at, cgroup, &work.affinity, &pids, true)?;
        }
        let allowed = if cgroup.is_empty() {
            None
        } else {
            self.effective(cgroup).map(|c| c.into_iter().collect())
        };
        self.groups.push(Group {
            cgroup: cgroup.to_string(),
            work_type,
            handle,
            allowed,
        });
        Ok(())
    }

    fn grace(&self) -> Duration {
        Duration::from_secs_f64(5.0 * self.ctx.time_scale.max(1.0))
    }

    /// Stops and collects the groups `pred` selects.
    fn finish(&mut self, pred: impl Fn(&str) -> bool) {
        let grace = self.grace();
        let last = self.samples(|g| pred(&g.cgroup));
        self.phases.retire(last);
        let (stop, keep): (Vec<Group>, Vec<Group>) =
            self.groups.drain(..).partition(|g| pred(&g.cgroup));
        self.groups = keep;
        // Signal every selected worker before collecting any, so they stop together.
        for g in &stop {
            g.handle.signal_stop();
        }
        let handles: Vec<_> = stop
            .into_iter()
            .map(|g| (g.cgroup, g.work_type, g.allowed, g.handle))
            .collect();
        for (cgroup, work_type, allowed, handle) in handles {
            let reports = handle.stop_and_collect(grace);
            self.finished.push(Finished {
                cgroup,
                work_type,
                allowed,
                reports,
            });
        }
    }

    fn add_defs(&mut self, at: &str, defs: &[CgroupDef]) -> Result<(), ScenarioError> {
        for d in defs {
            let cpus = match &d.cpuset {
                Some(s) => Some(resolve_cpuset(s, &self.ctx.topo).map_err(|problem| {
                    ScenarioError::Cpuset {
                        at: at.into(),
                        cgroup: d.name.clone(),
                        spec: s.clone(),
                        problem,
                    }
                })?),
                None => None,
            };
            self.create(at, &d.name, cpus)?;
        }
        // All cgroups exist before any worker starts, and all workers are released together.
        // On an error the groups already spawned are released too, so teardown finds them
        // running (a held worker would sit out the whole stop grace).
        let first = self.groups.len();
        let spawned = defs.iter().try_for_each(|d| {
            d.works
                .iter()
                .try_for_each(|w| self.spawn_held(at, &d.name, w))
        });
        self.release(first);
        spawned
    }

    /// Removes the running payload `name` (in `cgroup`, if given) for `op` to wait on or kill.
    fn take_payload(
        &mut self,
        at: &str,
        op: &Op,
        name: &str,
        cgroup: &Option<String>,
    ) -> Result<RunningPayload, ScenarioError> {
        let idx = self
            .payloads
            .iter()
            .position(|p| p.name == name && (cgroup.is_none() || p.cgroup == *cgroup))
            .ok_or_else(|| ScenarioError::UnknownPayload {
                at: at.into(),
                op: op.kind(),
                name: name.to_string(),
            })?;
        Ok(self.payloads.remove(idx))
    }

    fn start_payload(
        &mut self,
        at: &str,
        payload: &Payload,
        args: &[String],
        cgroup: Option<String>,
    ) -> Result<(), ScenarioError> {
        let mut run = self.ctx.payload(payload).args(args.iter().cloned());
        if let Some(c) = &cgroup {
            run = run.in_cgroup(c);
        }
        let handle = run.spawn().map_err(|cause| ScenarioError::Payload {
            at: at.into(),
            name: payload.name.into(),
            cause: Box::new(cause),
        })?;
        self.payloads.push(RunningPayload {
            name: payload.name.into(),
            cgroup,
            handle,
        });
        Ok(())
    }

    fn apply(&mut self, label: &str, i: usize, op: &Op) -> Result<(), ScenarioError> {
        let at = format!("{label}, op {i} ({})", op.kind());
        let at = at.as_str();
        let detail = match op {
            Op::AddCgroup { name } => {
                self.create(at, name, None)?;
                name.clone()
            }
            Op::RemoveCgroup { cgroup } => {
                self.remove_cgroup(at, cgroup)?;
                cgroup.clone()
            }
            Op::SetCpuset { cgroup, spec } => self.set_cpuset(at, cgroup, spec)?,
            Op::ClearCpuset { cgroup } => {
                self.write_cpuset(at, cgroup, None)?;
                cgroup.clone()
            }
            Op::SwapCpusets { a, b } => {
                let ca = self.cpusets.get(a).cloned().flatten();
                let cb = self.cpusets.get(b).cloned().flatten();
                // Widen first where both are set, so neither write leaves a cgroup empty of
                // CPUs it still has tasks on (cpusets need not be exclusive in v2).
                self.write_cpuset(at, a, cb)?;
                self.write_cpuset(at, b, ca)?;
                format!("{a} <-> {b}")
            }
            Op::Spawn { cgroup, work } => {
                self.spawn(at, cgroup, work)?;
                format!(
                    "{} x{} in {cgroup}",
                    effective_work_type(self.ctx, work).name(),
                    work.count(self.ctx)
                )
            }
            Op::StopCgroup { cgroup } => {
                self.finish(|c| c == cgroup);
                cgroup.clone()
            }
            Op::SetAffinity { cgroup, kind } => {
                let pids: Vec<i32> = self
                    .groups
                    .iter()
                    .filter(|g| g.cgroup == *cgroup)
                    .flat_map(|g| g.handle.worker_pids())
                    .collect();
                self.pin(at, cgroup, kind, &pids, false)?;
                format!("{cgroup}: {kind:?} on {} workers", pids.len())
            }
            Op::SpawnHost { work } => {
                self.spawn(at, "", work)?;
                format!(
                    "{} x{} outside the test cgroups",
                    effective_work_type(self.ctx, work).name(),
                    work.count(self.ctx)
                )
            }
            Op::MoveAllTasks { from, to } => self.move_all_tasks(at, from, to)?,
            Op::RunPayload {
                payload,
                args,
                cgroup,
            } => {
                self.start_payload(at, payload, args, cgroup.clone())?;
                payload.name.to_string()
            }
            Op::WaitPayload { name, cgroup } => self.wait_payload(at, op, name, cgroup)?,
            Op::KillPayload { name, cgroup } => {
                let mut p = self.take_payload(at, op, name, cgroup)?;
                let still_running = matches!(p.handle.try_wait(), Ok(None));
                if still_running {
                    let _ = p.handle.kill_outcome();
                }
                format!("{name} killed (was running: {still_running})")
            }
        };
        self.event(label, op.kind(), detail);
        Ok(())
    }

    /// `RemoveCgroup`: stops the workers and payloads in and below it, then removes it.
    fn remove_cgroup(&mut self, at: &str, cgroup: &str) -> Result<(), ScenarioError> {
        let prefix = format!("{cgroup}/");
        let inside = |c: &str| c == cgroup || c.starts_with(&prefix);
        self.finish(inside);
        let mut i = 0;
        while i < self.payloads.len() {
            if self.payloads[i].cgroup.as_deref().is_some_and(inside) {
                let _ = self.payloads.remove(i).handle.kill_outcome();
            } else {
                i += 1;
            }
        }
        self.ctx
            .cgroups
            .remove(cgroup)
            .map_err(|cause| ScenarioError::Cgroup {
                at: at.into(),
                cause,
            })?;
        self.cpusets.retain(|k, _| !inside(k));
        self.created.retain(|k| !inside(k));
        Ok(())
    }

    /// `SetCpuset`: resolves `spec` and writes it; returns the event's detail.
    fn set_cpuset(
        &mut self,
        at: &str,
        cgroup: &str,
        spec: &CpusetSpec,
    ) -> Result<String, ScenarioError> {
        let cpus =
            resolve_cpuset(spec, &self.ctx.topo).map_err(|problem| ScenarioError::Cpuset {
                at: at.into(),
                cgroup: cgroup.to_string(),
                spec: spec.clone(),
                problem,
            })?;
        let d = format!("{cgroup} -> {}", crate::cgroup::cpulist(&cpus));
        self.write_cpuset(at, cgroup, Some(cpus))?;
        Ok(d)
    }

    /// `MoveAllTasks`: moves every task of `from` into `to`; returns the event's detail.
    fn move_all_tasks(&mut self, at: &str, from: &str, to: &str) -> Result<String, ScenarioError> {
        let ops = self.ctx.cgroups.clone();
        let pids = ops.procs(from).map_err(|cause| ScenarioError::Cgroup {
            at: at.into(),
            cause,
        })?;
        for pid in &pids {
            ops.move_task(to, *pid)
                .map_err(|cause| ScenarioError::Cgroup {
                    at: at.into(),
                    cause,
                })?;
        }
        for g in self.groups.iter_mut().filter(|g| g.cgroup == *from) {
            g.cgroup = to.to_string();
        }
        for p in self
            .payloads
            .iter_mut()
            .filter(|p| p.cgroup.as_deref() == Some(from))
        {
            p.cgroup = Some(to.to_string());
        }
        self.refresh_allowed();
        Ok(format!("{} tasks {from} -> {to}", pids.len()))
    }

    /// `WaitPayload`: waits (bounded) for the payload; a failure unless it exits 0.
    fn wait_payload(
        &mut self,
        at: &str,
        op: &Op,
        name: &str,
        cgroup: &Option<String>,
    ) -> Result<String, ScenarioError> {
        // Its outcome (metrics, failed checks, a bad exit) reaches the case's result through
        // the context's payload log, like a run from the body.
        let p = self.take_payload(at, op, name, cgroup)?;
        let o = p
            .handle
            .wait_outcome()
            .map_err(|cause| ScenarioError::Payload {
                at: at.into(),
                name: name.into(),
                cause: Box::new(cause),
            })?;
        Ok(match o.metrics.exit_code {
            Some(c) => format!("{name} exited with code {c}"),
            None => format!("{name} did not exit normally"),
        })
    }

    fn hold(&mut self, label: &str, step: &Step, share: Duration) -> Result<(), ScenarioError> {
        match step.hold {
            HoldSpec::Frac(f) => std::thread::sleep(self.ctx.duration.mul_f64(f)),
            HoldSpec::Fixed(d) => std::thread::sleep(d),
            HoldSpec::Loop { interval } => {
                let end = Instant::now() + share;
                loop {
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    std::thread::sleep(interval.min(left));
                    if Instant::now() >= end {
                        break;
                    }
                    for (i, op) in step.ops.iter().enumerate() {
                        self.apply(label, i, op)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `Err(reason)` when the scheduler under test is gone.
    fn scheduler_alive(&self) -> Result<(), String> {
        let Some(pid) = self.ctx.sched_pid else {
            return Ok(());
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.trim_start().chars().next());
        if matches!(state, None | Some('Z') | Some('X')) {
            return Err(format!("scheduler (pid {pid}) exited during the scenario"));
        }
        let scx = std::fs::read_to_string("/sys/kernel/sched_ext/state").unwrap_or_default();
        if !scx.trim().is_empty() && scx.trim() != "enabled" {
            return Err(format!(
                "sched_ext state is {:?}: the scheduler was ejected during the scenario",
                scx.trim()
            ));
        }
        Ok(())
    }

    fn run(
        &mut self,
        backdrop: &Backdrop,
        steps: &[Step],
    ) -> Result<Option<String>, ScenarioError> {
        self.add_defs("backdrop", &backdrop.cgroups)?;
        for (p, args) in &backdrop.payloads {
            self.start_payload("backdrop", p, args, None)?;
        }
        for (i, op) in backdrop.ops.iter().enumerate() {
            self.apply("backdrop", i, op)?;
        }
        let share = self.ctx.duration / steps.len().max(1) as u32;
        for (i, step) in steps.iter().enumerate() {
            let label = format!("step {i}");
            // Phase i ends where step i begins (phase 0, BASELINE, is the backdrop's).
            self.close_phase(i);
            if let Err(e) = self.scheduler_alive() {
                return Ok(Some(e));
            }
            self.event(&label, "step_start", format!("{:?}", step.hold));
            let began = Instant::now();
            let steal_before = Steal::now();
            for (j, op) in step.ops.iter().enumerate() {
                self.apply(&label, j, op)?;
            }
            self.add_defs(&label, &step.setup.defs(self.ctx))?;
            self.hold(&label, step, share)?;
            let declared = match step.hold {
                HoldSpec::Frac(f) => self.ctx.duration.mul_f64(f),
                HoldSpec::Fixed(d) => d,
                HoldSpec::Loop { .. } => share,
            };
            let took = began.elapsed();
            let stolen = Steal::now().per_cpu_since(&steal_before);
            if overran(declared, took, stolen, self.ctx.time_scale) {
                self.failures.push_failure(
                    DetailKind::Stuck,
                    format!(
                        "{label} overran: declared {:.1} s, took {:.1} s, {:.1} s of it the \
                         host's (steal) (the guest or this test's own thread did not get the \
                         CPU in time)",
                        declared.as_secs_f64(),
                        took.as_secs_f64(),
                        stolen.as_secs_f64()
                    ),
                );
            }
            self.event(&label, "step_end", String::new());
        }
        self.close_phase(steps.len());
        if let Err(e) = self.scheduler_alive() {
            return Ok(Some(e));
        }
        self.finish(|_| true);
        // Payloads still running at the end are stopped and recorded (their metrics so far
        // reach the sidecar; the stop is ours, so their exit code is not judged).
        let payloads = self.payloads.len();
        for p in self.payloads.drain(..) {
            let _ = p.handle.kill_outcome();
        }
        self.event(
            "teardown",
            "collect",
            format!(
                "{} worker groups, {payloads} running payloads",
                self.finished.len()
            ),
        );
        Ok(None)
    }

    fn runs(&self) -> Vec<CgroupRun> {
        let mut by: BTreeMap<&str, CgroupRun> = BTreeMap::new();
        for f in &self.finished {
            if f.cgroup.is_empty() {
                continue; // SpawnHost load is competition, not under test.
            }
            let run = by.entry(&f.cgroup).or_insert_with(|| CgroupRun {
                name: f.cgroup.clone(),
                cpus: self
                    .effective(&f.cgroup)
                    .map_or(self.ctx.topo.cpus.len(), |c| c.len()),
                workers: Vec::new(),
            });
            for r in &f.reports {
                run.workers.push(WorkerRun {
                    report: r.clone(),
                    work_type: f.work_type.name().to_string(),
                    // A Custom body that records progress (a Recorder) is judged like the
                    // built-in work types; one that returns an empty report is not.
                    telemetry: f.work_type.has_telemetry() || r.iterations > 0,
                    allowed: f.allowed.as_ref().map(|a| a.iter().copied().collect()),
                    affinity: self.affinities.get(&r.tid).cloned().unwrap_or_default(),
                });
            }
        }
        by.into_values().collect()
    }
}

impl Drop for Runner<'_> {
    fn drop(&mut self) {
        // Dropping a handle kills and reaps its payload, unrecorded: the case ends anyway.
        self.payloads.clear();
        // Dropping the handles SIGKILLs and reaps every worker.
        self.groups.clear();
        for name in self.created.iter().rev() {
            let _ = self.ctx.cgroups.remove(name);
        }
    }
}

/// Runs `defs` as one step held for the full duration.
pub fn execute_defs(ctx: &Ctx, defs: Vec<CgroupDef>) -> anyhow::Result<AssertResult> {
    execute_steps(ctx, vec![Step::with_defs(defs, HoldSpec::FULL)])
}

/// Runs `steps` with the context's thresholds.
pub fn execute_steps(ctx: &Ctx, steps: Vec<Step>) -> anyhow::Result<AssertResult> {
    execute_scenario_with(ctx, &Backdrop::default(), steps, None)
}

/// Runs `steps`; `checks` (if any) is laid over the context's merged thresholds.
pub fn execute_steps_with(
    ctx: &Ctx,
    steps: Vec<Step>,
    checks: Option<&Assert>,
) -> anyhow::Result<AssertResult> {
    execute_scenario_with(ctx, &Backdrop::default(), steps, checks)
}

/// Runs a backdrop and steps with the context's thresholds.
pub fn execute_scenario(
    ctx: &Ctx,
    backdrop: &Backdrop,
    steps: Vec<Step>,
) -> anyhow::Result<AssertResult> {
    execute_scenario_with(ctx, backdrop, steps, None)
}

/// Validates, runs and judges a scenario; tears down every cgroup, worker and payload it
/// created on every path. Validation errors come back as `Err` before anything starts.
pub fn execute_scenario_with(
    ctx: &Ctx,
    backdrop: &Backdrop,
    steps: Vec<Step>,
    checks: Option<&Assert>,
) -> anyhow::Result<AssertResult> {
    validate(ctx, backdrop, &steps)?;
    if ctx.dry_run {
        return Ok(AssertResult::pass());
    }
    let assert = match checks {
        Some(c) => ctx.assert.merge(c),
        None => ctx.assert,
    };
    let mut runner = Runner::new(ctx);
    let died = runner.run(backdrop, &steps)?;
    let mut result = evaluate(&assert, &runner.runs(), ctx.time_scale);
    if let Some(reason) = died {
        result = result.merge(AssertResult::fail(DetailKind::SchedulerDied, reason));
    }
    let failures = std::mem::take(&mut runner.failures);
    result = result.merge(failures);
    result.events = std::mem::take(&mut runner.events);
    result.phases = std::mem::take(&mut runner.phases.phases);
    Ok(result)
}
