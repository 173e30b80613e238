//! Everything a test file needs: `use ktstr::prelude::*;`.

pub use anyhow::{anyhow, bail, ensure, Context as _, Result};

pub use crate::assert::{Assert, AssertDetail, AssertResult, DetailKind};
pub use crate::bpf_maps::BpfMapWrite;
pub use crate::payload::{Check, MetricHint, OutputFormat, PayloadMetrics, Polarity};
pub use crate::registry::{
    Ctx, FlagDecl, FlagRef, Gates, KtstrTest, Scheduler, SchedulerBinary, Sysctl,
};
/// The canned scenarios (`scenarios::steady(ctx)`, ...).
pub use crate::scenario::canned as scenarios;
pub use crate::scenario::{
    execute_defs, execute_scenario, execute_scenario_with, execute_steps, execute_steps_with,
    AffinityKind, Backdrop, CgroupDef, CpusetSpec, HoldSpec, MemPolicy, MpolFlags, Op, Payload,
    SchedPolicy, Step, Work, WorkType,
};
pub use crate::topology::Topology;
pub use crate::workload::{Phase, WorkerReport};
pub use crate::{declare_scheduler, ktstr_test};
