//! Everything a test file needs: `use ktstr::prelude::*;`.

pub use anyhow::{anyhow, bail, ensure, Context as _, Result};

pub use crate::assert::{Assert, AssertDetail, AssertResult, DetailKind};
pub use crate::registry::{
    Ctx, FlagDecl, FlagRef, Gates, KtstrTest, Scheduler, SchedulerBinary, Sysctl,
};
pub use crate::topology::Topology;
pub use crate::{declare_scheduler, ktstr_test};
