//! What a worker does in each iteration: [`WorkType`] and its parameters.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::report::WorkerReport;

/// One phase of a [`WorkType::Sequence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Spin on the CPU for the duration.
    Spin(Duration),
    /// Sleep for the duration.
    Sleep(Duration),
    /// Yield repeatedly for the duration.
    Yield(Duration),
    /// Synchronous writes for the duration.
    Io(Duration),
}

/// A user-supplied worker body (a function pointer: workers are forked, closures would not
/// survive the process boundary any better and could capture non-fork-safe state).
pub type CustomFn = fn(&AtomicBool) -> WorkerReport;

/// What each worker does. Parameters default as in [`WorkType::from_name`].
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub enum WorkType {
    /// Tight spin; the stop flag is checked every 1024 iterations.
    #[default]
    SpinWait,
    /// `sched_yield` every iteration.
    YieldHeavy,
    /// 1024 spins, then a yield.
    Mixed,
    /// Write 64 KiB to a private temporary file with `fdatasync`, then sleep 100 µs.
    IoSync,
    /// A CPU burst, then a sleep.
    Bursty {
        /// Burst length.
        burst_ms: u64,
        /// Sleep length.
        sleep_ms: u64,
    },
    /// Pairs: a burst, then a 1-byte ping-pong over a pipe with the partner.
    PipeIo {
        /// Spins per burst.
        burst_iters: u64,
    },
    /// Pairs: partners alternately wake each other through a shared futex.
    FutexPingPong {
        /// Spins between hand-offs.
        spin_iters: u64,
    },
    /// Strided read-modify-write over a private buffer.
    CachePressure {
        /// Buffer size.
        size_kb: u64,
        /// Stride in bytes.
        stride: u64,
    },
    /// One pass of [`WorkType::CachePressure`], then `sched_yield`.
    CacheYield {
        /// Buffer size.
        size_kb: u64,
        /// Stride in bytes.
        stride: u64,
    },
    /// Pairs: `burst_iters` cache lines of a private buffer touched, then a 1-byte ping-pong
    /// over a pipe with the partner (as [`WorkType::PipeIo`]).
    CachePipe {
        /// Buffer size.
        size_kb: u64,
        /// Cache lines touched per burst.
        burst_iters: u64,
    },
    /// Groups of `fan_out + 1`: one messenger wakes `fan_out` receivers, which record their
    /// wake latency.
    FutexFanOut {
        /// Receivers per messenger.
        fan_out: u32,
        /// Spins the messenger does between rounds.
        spin_iters: u64,
    },
    /// Groups of `fan_out + 1`: a messenger wakes `fan_out` receivers; each records its wake
    /// latency, then multiplies two square matrices sized so that all three fit
    /// `cache_footprint_kb`, `operations` times. The messenger waits for all of them, pauses
    /// `sleep_usec`, and posts the next round.
    FanOutCompute {
        /// Receivers per messenger.
        fan_out: u32,
        /// Memory of the three matrices together.
        cache_footprint_kb: u64,
        /// Matrix multiplies per wake-up.
        operations: u32,
        /// The messenger's pause between rounds.
        sleep_usec: u64,
    },
    /// Cycles through phases.
    Sequence {
        /// The first phase.
        first: Phase,
        /// The rest (at most 7).
        rest: [Option<Phase>; 7],
    },
    /// Fork a child that exits at once, and reap it.
    ForkExit,
    /// 512 spins, then step nice through −20..19, then yield.
    NiceSweep,
    /// Pin itself to a random CPU of its allowed set, then spin.
    AffinityChurn {
        /// Spins between moves.
        spin_iters: u64,
    },
    /// Cycle SCHED_OTHER / SCHED_BATCH / SCHED_IDLE between spins.
    PolicyChurn {
        /// Spins between policy changes.
        spin_iters: u64,
    },
    /// mmap a region without THP, touch pages, drop them with `MADV_DONTNEED`.
    PageFaultChurn {
        /// Region size.
        region_kb: u64,
        /// Pages touched per cycle.
        touches_per_cycle: u64,
        /// Spins between cycles.
        spin_iters: u64,
    },
    /// Groups of `contenders`: a CAS + futex lock convoy.
    MutexContention {
        /// Processes sharing one lock.
        contenders: u32,
        /// Spins inside the lock.
        hold_iters: u64,
        /// Spins outside the lock.
        work_iters: u64,
    },
    /// A user function.
    Custom {
        /// Name for reports.
        name: &'static str,
        /// The body.
        run: CustomFn,
    },
}

impl PartialEq for WorkType {
    /// Equal when of the same kind with the same parameters; `Custom` bodies compare by name
    /// (function addresses are not unique).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (WorkType::Custom { name: a, .. }, WorkType::Custom { name: b, .. }) => a == b,
            (WorkType::Custom { .. }, _) | (_, WorkType::Custom { .. }) => false,
            _ => format!("{self:?}") == format!("{other:?}"),
        }
    }
}

/// `a == b` usable in const context.
pub const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

impl WorkType {
    /// Every name [`WorkType::from_name`] accepts.
    pub const ALL_NAMES: &'static [&'static str] = &[
        "SpinWait",
        "YieldHeavy",
        "Mixed",
        "IoSync",
        "Bursty",
        "PipeIo",
        "FutexPingPong",
        "CachePressure",
        "CacheYield",
        "CachePipe",
        "FutexFanOut",
        "FanOutCompute",
        "ForkExit",
        "NiceSweep",
        "AffinityChurn",
        "PolicyChurn",
        "PageFaultChurn",
        "MutexContention",
    ];

    /// Whether `name` is one of [`WorkType::ALL_NAMES`]; a `const fn`, so `#[ktstr_test(work_types
    /// = [..])]` rejects an unknown name at compile time.
    pub const fn is_name(name: &str) -> bool {
        let mut i = 0;
        while i < Self::ALL_NAMES.len() {
            if const_str_eq(Self::ALL_NAMES[i], name) {
                return true;
            }
            i += 1;
        }
        false
    }

    /// A work type by name, with default parameters (`Sequence` and `Custom` have no name).
    pub fn from_name(name: &str) -> Option<WorkType> {
        Some(match name {
            "SpinWait" => WorkType::SpinWait,
            "YieldHeavy" => WorkType::YieldHeavy,
            "Mixed" => WorkType::Mixed,
            "IoSync" => WorkType::IoSync,
            "Bursty" => WorkType::Bursty {
                burst_ms: 50,
                sleep_ms: 100,
            },
            "PipeIo" => WorkType::PipeIo { burst_iters: 1024 },
            "FutexPingPong" => WorkType::FutexPingPong { spin_iters: 1024 },
            "CachePressure" => WorkType::CachePressure {
                size_kb: 32,
                stride: 64,
            },
            "CacheYield" => WorkType::CacheYield {
                size_kb: 32,
                stride: 64,
            },
            "CachePipe" => WorkType::CachePipe {
                size_kb: 32,
                burst_iters: 1024,
            },
            "FutexFanOut" => WorkType::FutexFanOut {
                fan_out: 4,
                spin_iters: 1024,
            },
            "FanOutCompute" => WorkType::FanOutCompute {
                fan_out: 4,
                cache_footprint_kb: 256,
                operations: 5,
                sleep_usec: 100,
            },
            "ForkExit" => WorkType::ForkExit,
            "NiceSweep" => WorkType::NiceSweep,
            "AffinityChurn" => WorkType::AffinityChurn { spin_iters: 1024 },
            "PolicyChurn" => WorkType::PolicyChurn { spin_iters: 1024 },
            "PageFaultChurn" => WorkType::PageFaultChurn {
                region_kb: 4096,
                touches_per_cycle: 256,
                spin_iters: 64,
            },
            "MutexContention" => WorkType::MutexContention {
                contenders: 4,
                hold_iters: 256,
                work_iters: 1024,
            },
            _ => return None,
        })
    }

    /// The name used in reports and scenario labels.
    pub const fn name(&self) -> &'static str {
        match self {
            WorkType::SpinWait => "SpinWait",
            WorkType::YieldHeavy => "YieldHeavy",
            WorkType::Mixed => "Mixed",
            WorkType::IoSync => "IoSync",
            WorkType::Bursty { .. } => "Bursty",
            WorkType::PipeIo { .. } => "PipeIo",
            WorkType::FutexPingPong { .. } => "FutexPingPong",
            WorkType::CachePressure { .. } => "CachePressure",
            WorkType::CacheYield { .. } => "CacheYield",
            WorkType::CachePipe { .. } => "CachePipe",
            WorkType::FutexFanOut { .. } => "FutexFanOut",
            WorkType::FanOutCompute { .. } => "FanOutCompute",
            WorkType::Sequence { .. } => "Sequence",
            WorkType::ForkExit => "ForkExit",
            WorkType::NiceSweep => "NiceSweep",
            WorkType::AffinityChurn { .. } => "AffinityChurn",
            WorkType::PolicyChurn { .. } => "PolicyChurn",
            WorkType::PageFaultChurn { .. } => "PageFaultChurn",
            WorkType::MutexContention { .. } => "MutexContention",
            WorkType::Custom { name, .. } => name,
        }
    }

    /// Workers that must be started together: a cgroup's worker count must be a multiple.
    pub fn group_size(&self) -> u32 {
        match self {
            WorkType::PipeIo { .. }
            | WorkType::CachePipe { .. }
            | WorkType::FutexPingPong { .. } => 2,
            WorkType::FutexFanOut { fan_out, .. } | WorkType::FanOutCompute { fan_out, .. } => {
                fan_out + 1
            }
            WorkType::MutexContention { contenders, .. } => *contenders,
            _ => 1,
        }
    }

    /// Whether the framework measures this type (false for `Custom`).
    pub fn has_telemetry(&self) -> bool {
        !matches!(self, WorkType::Custom { .. })
    }

    /// A sequence of phases (at most 8).
    pub fn sequence(phases: &[Phase]) -> Option<WorkType> {
        let (first, rest) = phases.split_first()?;
        if rest.len() > 7 {
            return None;
        }
        let mut r = [None; 7];
        for (i, p) in rest.iter().enumerate() {
            r[i] = Some(*p);
        }
        Some(WorkType::Sequence {
            first: *first,
            rest: r,
        })
    }
}

/// A worker count that does not fit a work type's group size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{work} workers come in groups of {group}, but {workers} were asked for; use a multiple of {group}")]
pub struct GroupSizeError {
    /// Work type name.
    pub work: &'static str,
    /// Group size.
    pub group: u32,
    /// Requested workers.
    pub workers: u32,
}

/// Checks that `workers` is a positive multiple of `work`'s group size.
pub fn check_group_size(work: &WorkType, workers: u32) -> Result<(), GroupSizeError> {
    let group = work.group_size();
    if workers == 0 || workers % group != 0 {
        return Err(GroupSizeError {
            work: work.name(),
            group,
            workers,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert!(!WorkType::is_name("Spin") && !WorkType::is_name("SpinWaitX"));
        for n in WorkType::ALL_NAMES {
            assert!(WorkType::is_name(n), "{n}");
            assert_eq!(WorkType::from_name(n).unwrap().name(), *n);
        }
        assert!(WorkType::from_name("Nope").is_none());
    }

    #[test]
    fn group_sizes() {
        let pp = WorkType::from_name("PipeIo").unwrap();
        assert!(check_group_size(&pp, 4).is_ok());
        let e = check_group_size(&pp, 3).unwrap_err();
        assert!(e.to_string().contains("groups of 2"), "{e}");
        let fan = WorkType::from_name("FutexFanOut").unwrap();
        assert_eq!(fan.group_size(), 5);
        assert!(check_group_size(&WorkType::SpinWait, 0).is_err());
    }

    #[test]
    fn sequences_hold_up_to_eight_phases() {
        let p = Phase::Spin(Duration::from_millis(1));
        assert!(WorkType::sequence(&[p; 8]).is_some());
        assert!(WorkType::sequence(&[p; 9]).is_none());
        assert!(WorkType::sequence(&[]).is_none());
    }
}
