//! Example suite under the kernel's default scheduler (EEVDF): every case boots a VM with the
//! declared topology.

use std::time::Duration;

use ktstr::guest::topo::SysTopology;
use ktstr::prelude::*;
use ktstr::workload::{WorkType, WorkloadConfig, WorkloadHandle};

fn topology_result(ctx: &Ctx) -> AssertResult {
    let m = SysTopology::current().mismatches(&ctx.topology);
    if m.is_empty() {
        AssertResult::pass()
    } else {
        AssertResult::fail(DetailKind::Other, m.join("; "))
    }
}

/// The guest kernel sees exactly the declared LLCs, cores and SMT siblings.
#[ktstr_test(llcs = 2, cores = 2, threads = 2)]
fn topology_smt(ctx: &Ctx) -> Result<AssertResult> {
    Ok(topology_result(ctx))
}

/// Two NUMA nodes with two LLCs each.
#[ktstr_test(numa_nodes = 2, llcs = 4, cores = 2, threads = 1, max_numa_nodes = 2)]
fn topology_numa(ctx: &Ctx) -> Result<AssertResult> {
    Ok(topology_result(ctx))
}

/// Spinning workers, two per CPU, all make progress within the test's duration.
#[ktstr_test(llcs = 1, cores = 2, duration_s = 2)]
fn spinners_progress(ctx: &Ctx) -> Result<AssertResult> {
    let cfg = WorkloadConfig {
        num_workers: 2 * ctx.topology.num_cpus(),
        work_type: WorkType::SpinWait,
        ..Default::default()
    };
    let mut h = WorkloadHandle::spawn(&cfg)?;
    h.start();
    std::thread::sleep(ctx.duration);
    let reports = h.stop_and_collect(Duration::from_secs(5));
    let mut r = AssertResult::pass();
    for w in &reports {
        if w.work_units == 0 {
            r.push_failure(
                DetailKind::Starved,
                format!("worker {} made no progress", w.tid),
            );
        }
    }
    Ok(r)
}

/// A work-type sweep: one case per listed work type (`eevdf~SpinWait`, `eevdf~YieldHeavy`),
/// each running the same two cgroups with that work type in place of the default spinner. The
/// body checks the sweep reached the workers: every cgroup ran the case's work type.
#[ktstr_test(llcs = 1, cores = 2, duration_s = 2, work_types = ["SpinWait", "YieldHeavy"])]
fn swept_cgroups(ctx: &Ctx) -> Result<AssertResult> {
    let want = ctx
        .work_type_override
        .ok_or_else(|| anyhow!("a swept case has a work type"))?
        .name();
    let mut r = ktstr::scenario::execute_defs(
        ctx,
        vec![
            ktstr::scenario::CgroupDef::named("cg0").workers(2),
            ktstr::scenario::CgroupDef::named("cg1").workers(2),
        ],
    )?;
    let ran: Vec<String> = r
        .stats
        .iter()
        .flat_map(|s| s.cgroups.iter().map(|c| c.work_types.clone()))
        .collect();
    if ran.len() != 2 || ran.iter().any(|t| t != want) {
        r.push_failure(
            DetailKind::Other,
            format!("the sweep asked for {want}, the cgroups ran {ran:?}"),
        );
    }
    Ok(r)
}

fn main() {
    ktstr_harness::main()
}
