//! Checking a whole scenario against the topology before anything runs, so a bad scenario
//! fails with a message naming the problem and no worker is ever forked for it.

use std::collections::{BTreeMap, BTreeSet};

use super::cpuset::{resolve_cpuset, CpusetProblem};
use super::{AffinityKind, Backdrop, CgroupDef, CpusetSpec, HoldSpec, Op, Step, Work};
use crate::registry::Ctx;
use crate::workload::types::check_group_size;

/// What is wrong with a scenario, or what failed while running it.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// A cpuset does not resolve against the topology.
    #[error("{at}: cpuset of cgroup {cgroup:?} ({spec:?}): {problem}")]
    Cpuset {
        /// Where in the scenario.
        at: String,
        /// The cgroup.
        cgroup: String,
        /// The spec.
        spec: CpusetSpec,
        /// Why.
        problem: CpusetProblem,
    },
    /// Two cgroups given `Disjoint` cpusets in the same step share CPUs.
    #[error("{at}: cgroups {a:?} and {b:?} have Disjoint cpusets that overlap on CPUs {cpus}")]
    OverlappingDisjoint {
        /// Where.
        at: String,
        /// One cgroup.
        a: String,
        /// The other.
        b: String,
        /// Shared CPUs (cpulist).
        cpus: String,
    },
    /// An op names a cgroup that does not exist at that point.
    #[error("{at}: {op} names cgroup {name:?}, which does not exist at that point (existing: {existing})")]
    UnknownCgroup {
        /// Where.
        at: String,
        /// The op kind.
        op: &'static str,
        /// The name.
        name: String,
        /// Cgroups that exist then.
        existing: String,
    },
    /// A cgroup is created twice.
    #[error("{at}: cgroup {name:?} already exists")]
    DuplicateCgroup {
        /// Where.
        at: String,
        /// The name.
        name: String,
    },
    /// A cgroup name that cannot be a cgroup path.
    #[error("{at}: {name:?} is not a valid cgroup name (non-empty, relative, no `..`)")]
    BadName {
        /// Where.
        at: String,
        /// The name.
        name: String,
    },
    /// A worker count that does not fit the work type.
    #[error("{at}: cgroup {cgroup:?}: {cause}")]
    GroupSize {
        /// Where.
        at: String,
        /// The cgroup.
        cgroup: String,
        /// The mismatch.
        cause: crate::workload::types::GroupSizeError,
    },
    /// A pinning that cannot be applied.
    #[error("{at}: cgroup {cgroup:?}: {why}")]
    Affinity {
        /// Where.
        at: String,
        /// The cgroup.
        cgroup: String,
        /// Why.
        why: String,
    },
    /// A memory policy naming nodes outside the cgroup's cpuset.
    #[error("{at}: cgroup {cgroup:?}: memory policy nodes {nodes:?} are not all among the nodes its CPUs cover ({covered:?})")]
    MemPolicy {
        /// Where.
        at: String,
        /// The cgroup.
        cgroup: String,
        /// The policy's nodes.
        nodes: Vec<u32>,
        /// Nodes the cpuset covers.
        covered: Vec<u32>,
    },
    /// A payload op names a payload that is not running.
    #[error("{at}: {op} names payload {name:?}, which is not running at that point")]
    UnknownPayload {
        /// Where.
        at: String,
        /// The op kind.
        op: &'static str,
        /// The name.
        name: String,
    },
    /// A hold that is not a positive, finite time.
    #[error("{at}: hold {hold:?} is not a positive duration")]
    BadHold {
        /// Where.
        at: String,
        /// The hold.
        hold: HoldSpec,
    },
    /// No cgroup filesystem to run on.
    #[error("the context has no cgroup manager (Ctx::cgroups); scenarios run in the guest or with Ctx::builder")]
    NoCgroups,
    /// A cgroup operation failed while running.
    #[error("{at}: {cause}")]
    Cgroup {
        /// Where.
        at: String,
        /// The failure.
        cause: crate::cgroup::CgroupError,
    },
    /// Forking or placing workers failed while running.
    #[error("{at}: cgroup {cgroup:?}: {cause}")]
    Workload {
        /// Where.
        at: String,
        /// The cgroup.
        cgroup: String,
        /// The failure.
        cause: crate::workload::WorkloadError,
    },
    /// A payload could not be started or waited for.
    #[error("{at}: {cause}")]
    Payload {
        /// Where.
        at: String,
        /// The payload.
        name: String,
        /// The failure (it names the payload).
        cause: Box<crate::payload::PayloadError>,
    },
}

/// What validation tracks per cgroup: its resolved cpuset.
type Known = BTreeMap<String, Option<Vec<u32>>>;

fn list(k: &Known) -> String {
    if k.is_empty() {
        "none".into()
    } else {
        k.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('/')
        && !n.ends_with('/')
        && n.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
}

fn resolve(
    ctx: &Ctx,
    at: &str,
    cgroup: &str,
    spec: &CpusetSpec,
) -> Result<Vec<u32>, ScenarioError> {
    resolve_cpuset(spec, &ctx.topo).map_err(|problem| ScenarioError::Cpuset {
        at: at.into(),
        cgroup: cgroup.into(),
        spec: spec.clone(),
        problem,
    })
}

fn check_work(
    ctx: &Ctx,
    at: &str,
    cgroup: &str,
    cpus: Option<&[u32]>,
    w: &Work,
) -> Result<(), ScenarioError> {
    let work_type = ctx.work_type_override.unwrap_or(w.work_type);
    check_group_size(&work_type, w.count(ctx)).map_err(|cause| ScenarioError::GroupSize {
        at: at.into(),
        cgroup: cgroup.into(),
        cause,
    })?;
    let pool = cpus.unwrap_or(&ctx.topo.cpus);
    if let AffinityKind::Exact(set) = &w.affinity {
        if !set.iter().any(|c| pool.contains(c)) {
            return Err(ScenarioError::Affinity {
                at: at.into(),
                cgroup: cgroup.into(),
                why: format!(
                    "affinity {} shares no CPU with the cgroup's CPUs {}",
                    crate::cgroup::cpulist(set),
                    crate::cgroup::cpulist(pool)
                ),
            });
        }
    }
    let nodes = w.mem_policy.nodes();
    if !nodes.is_empty() {
        let covered = ctx.topo.nodes_of(pool);
        if !nodes.iter().all(|n| covered.contains(n)) {
            return Err(ScenarioError::MemPolicy {
                at: at.into(),
                cgroup: cgroup.into(),
                nodes,
                covered,
            });
        }
    }
    Ok(())
}

fn add_defs(
    ctx: &Ctx,
    at: &str,
    defs: &[CgroupDef],
    known: &mut Known,
) -> Result<(), ScenarioError> {
    let mut disjoint: Vec<(&str, Vec<u32>)> = Vec::new();
    for d in defs {
        if !valid_name(&d.name) {
            return Err(ScenarioError::BadName {
                at: at.into(),
                name: d.name.clone(),
            });
        }
        if known.contains_key(&d.name) {
            return Err(ScenarioError::DuplicateCgroup {
                at: at.into(),
                name: d.name.clone(),
            });
        }
        let cpus = match &d.cpuset {
            Some(spec) => Some(resolve(ctx, at, &d.name, spec)?),
            None => None,
        };
        if let (Some(CpusetSpec::Disjoint { .. }), Some(c)) = (&d.cpuset, &cpus) {
            for (other, oc) in &disjoint {
                let shared: Vec<u32> = c.iter().copied().filter(|x| oc.contains(x)).collect();
                if !shared.is_empty() {
                    return Err(ScenarioError::OverlappingDisjoint {
                        at: at.into(),
                        a: other.to_string(),
                        b: d.name.clone(),
                        cpus: crate::cgroup::cpulist(&shared),
                    });
                }
            }
            disjoint.push((&d.name, c.clone()));
        }
        for w in &d.works {
            check_work(ctx, at, &d.name, cpus.as_deref(), w)?;
        }
        known.insert(d.name.clone(), cpus);
    }
    Ok(())
}

fn need<'a>(
    at: &str,
    op: &'static str,
    name: &str,
    known: &'a Known,
) -> Result<&'a Option<Vec<u32>>, ScenarioError> {
    known.get(name).ok_or_else(|| ScenarioError::UnknownCgroup {
        at: at.into(),
        op,
        name: name.into(),
        existing: list(known),
    })
}

fn apply_ops(
    ctx: &Ctx,
    step: &str,
    ops: &[Op],
    known: &mut Known,
    payloads: &mut BTreeSet<String>,
) -> Result<(), ScenarioError> {
    let mut disjoint: Vec<(String, Vec<u32>)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let at = format!("{step}, op {i} ({})", op.kind());
        let at = at.as_str();
        match op {
            Op::AddCgroup { name } => {
                add_defs(ctx, at, &[CgroupDef::named(name.clone()).empty()], known)?;
            }
            Op::RemoveCgroup { cgroup } => {
                need(at, op.kind(), cgroup, known)?;
                let prefix = format!("{cgroup}/");
                known.retain(|k, _| k != cgroup && !k.starts_with(&prefix));
            }
            Op::SetCpuset { cgroup, spec } => {
                need(at, op.kind(), cgroup, known)?;
                let c = resolve(ctx, at, cgroup, spec)?;
                if matches!(spec, CpusetSpec::Disjoint { .. }) {
                    for (other, oc) in &disjoint {
                        let shared: Vec<u32> =
                            c.iter().copied().filter(|x| oc.contains(x)).collect();
                        if !shared.is_empty() && other != cgroup {
                            return Err(ScenarioError::OverlappingDisjoint {
                                at: at.into(),
                                a: other.clone(),
                                b: cgroup.clone(),
                                cpus: crate::cgroup::cpulist(&shared),
                            });
                        }
                    }
                    disjoint.push((cgroup.clone(), c.clone()));
                }
                known.insert(cgroup.clone(), Some(c));
            }
            Op::ClearCpuset { cgroup } => {
                need(at, op.kind(), cgroup, known)?;
                known.insert(cgroup.clone(), None);
            }
            Op::SwapCpusets { a, b } => {
                let ca = need(at, op.kind(), a, known)?.clone();
                let cb = need(at, op.kind(), b, known)?.clone();
                known.insert(a.clone(), cb);
                known.insert(b.clone(), ca);
            }
            Op::Spawn { cgroup, work } => {
                let cpus = need(at, op.kind(), cgroup, known)?.clone();
                check_work(ctx, at, cgroup, cpus.as_deref(), work)?;
            }
            Op::StopCgroup { cgroup } => {
                need(at, op.kind(), cgroup, known)?;
            }
            Op::SetAffinity { cgroup, kind } => {
                let cpus = need(at, op.kind(), cgroup, known)?.clone();
                let probe = Work {
                    affinity: kind.clone(),
                    workers: Some(1),
                    ..Default::default()
                };
                check_work(ctx, at, cgroup, cpus.as_deref(), &probe)?;
            }
            Op::SpawnHost { work } => check_work(ctx, at, "(test root)", None, work)?,
            Op::MoveAllTasks { from, to } => {
                need(at, op.kind(), from, known)?;
                need(at, op.kind(), to, known)?;
            }
            Op::RunPayload {
                payload, cgroup, ..
            } => {
                if let Some(cg) = cgroup {
                    need(at, op.kind(), cg, known)?;
                }
                payloads.insert(payload.name.to_string());
            }
            Op::WaitPayload { name, cgroup } | Op::KillPayload { name, cgroup } => {
                if let Some(cg) = cgroup {
                    need(at, op.kind(), cg, known)?;
                }
                if !payloads.remove(name) {
                    return Err(ScenarioError::UnknownPayload {
                        at: at.into(),
                        op: op.kind(),
                        name: name.clone(),
                    });
                }
            }
        }
    }
    Ok(())
}

fn check_hold(at: &str, hold: &HoldSpec) -> Result<(), ScenarioError> {
    let ok = match hold {
        HoldSpec::Frac(f) => f.is_finite() && *f > 0.0,
        HoldSpec::Fixed(d) => !d.is_zero(),
        HoldSpec::Loop { interval } => !interval.is_zero(),
    };
    if ok {
        Ok(())
    } else {
        Err(ScenarioError::BadHold {
            at: at.into(),
            hold: *hold,
        })
    }
}

/// Checks a whole scenario against `ctx`'s topology without touching the system: cpusets
/// resolve (LLC/node indices exist, no empty set, `Disjoint` sets of one step do not
/// overlap), every op names a cgroup (or payload) that exists at that point, worker counts
/// fit their work types, pinnings and memory policies fit the cpusets, holds are positive.
pub fn validate(ctx: &Ctx, backdrop: &Backdrop, steps: &[Step]) -> Result<(), ScenarioError> {
    let mut known = Known::new();
    let mut payloads = BTreeSet::new();
    add_defs(ctx, "backdrop", &backdrop.cgroups, &mut known)?;
    for (p, _) in &backdrop.payloads {
        payloads.insert(p.name.to_string());
    }
    apply_ops(ctx, "backdrop", &backdrop.ops, &mut known, &mut payloads)?;
    for (i, step) in steps.iter().enumerate() {
        let at = format!("step {i}");
        check_hold(&at, &step.hold)?;
        apply_ops(ctx, &at, &step.ops, &mut known, &mut payloads)?;
        add_defs(ctx, &at, &step.setup.defs(ctx), &mut known)?;
    }
    Ok(())
}
