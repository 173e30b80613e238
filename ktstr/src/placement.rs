//! Where a VM's threads run on the host, and the host locks that keep two ktstr runs on one
//! host from measuring each other's noise (library spec §9).
//!
//! - **Tier 1, performance** (a `performance_mode` test, perf mode on): whole host LLCs locked
//!   exclusively (`ktstr-llc-{N}.lock`, `LOCK_EX`), one per virtual LLC; vCPU *i* pinned to
//!   its own host CPU in its virtual LLC's host LLC; the VMM's other threads (devices,
//!   watchdog, monitor) on one more reserved CPU, the service CPU; vCPUs at `SCHED_FIFO` 1
//!   where permitted; guest RAM in 2 MiB hugepages where enough are free (else normal pages,
//!   with a note).
//! - **Tier 2, capped** (`--no-perf-mode`): [`crate::host_cpus::reserve_capped`].
//! - **Tier 3, default** (every other VM case): an exclusive window of min(vCPUs + 1, allowed)
//!   host CPUs (`ktstr-cpu-{C}.lock`, `LOCK_EX`) with shared locks on the LLCs it covers, as a
//!   soft affinity mask. The `+ 1` is our choice (the spec leaves the size open): the VMM's
//!   own threads (qemu's main loop, our device and monitor threads) need a CPU that is not a
//!   vCPU's, or a 1-vCPU TCG guest shares its only CPU with its console and timers and misses
//!   the deadlines a healthy scheduler meets. Two default VMs never share a host CPU; a
//!   tier-1 run's exclusive LLC lock keeps them off its LLCs and theirs keep it off theirs.
//! - `KTSTR_BYPASS_LLC_LOCKS=1`: no locks and no mask.
//!
//! **Waiting.** A VM whose CPUs or LLCs are held waits its turn (first come, first served:
//! [`Ticket`]), polling with backoff, for up to
//! `KTSTR_LOCK_WAIT_S` seconds (default [`DEFAULT_WAIT`]), then fails with "resource
//! contention". The wait counts toward nextest's slow-timeout: our profiles end a ktstr case
//! after 8 minutes, and 4 minutes of waiting plus a case's own VM budget (boot, scheduler,
//! workload: about 90 s at the default duration, a few minutes at most under a scaled TCG
//! watchdog) fit inside it, so a waiting case ends in our clear contention failure rather
//! than nextest's kill. (4 minutes: `-j 8` of the example suites on a 2-CPU TCG host queues
//! up to 2 minutes, measured; the first choice, 2 minutes, failed 2 of 22 cases there.) A
//! contention failure is an ordinary case failure, so nextest's `--retries` re-run it; a stop
//! signal (nextest's SIGTERM) ends the wait
//! at once. The wait is recorded in the sidecar (`placement.waited_ms`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::host_cpus::{CapError, HostCpus, Reservation};
use crate::topology::Topology;

/// How long a VM waits for held host CPUs or LLCs when `KTSTR_LOCK_WAIT_S` is unset.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(240);

/// The host isolation a VM gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Tier 1: exclusive LLCs, pinned vCPUs, RT, hugepages.
    Performance,
    /// Tier 2: `--no-perf-mode`, shared LLC locks on a capped plan.
    Capped,
    /// Tier 3: an exclusive window of host CPUs.
    Default,
    /// `KTSTR_BYPASS_LLC_LOCKS=1`: nothing reserved.
    Unlocked,
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tier::Performance => "performance",
            Tier::Capped => "capped",
            Tier::Default => "default",
            Tier::Unlocked => "unlocked",
        })
    }
}

/// A performance-mode VM's per-thread placement, for the backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinning {
    /// The host CPU of vCPU *i*.
    pub vcpus: Vec<u32>,
    /// The host CPU of every other VMM thread.
    pub service: u32,
    /// Whether vCPU threads get `SCHED_FIFO` 1.
    pub realtime: bool,
    /// Whether guest RAM should be 2 MiB hugepages (enough were free when placed; a backend
    /// that cannot get them after all falls back and says so).
    pub hugepages: bool,
}

/// What a sidecar records about where its VM ran.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementRecord {
    /// `performance`, `capped`, `default` or `unlocked`.
    pub tier: String,
    /// The host CPUs the VM's threads were confined to (all of them for tier 1: vCPUs and
    /// the service CPU).
    #[serde(default)]
    pub host_cpus: Vec<u32>,
    /// Tier 1: the host CPU of vCPU *i*.
    #[serde(default)]
    pub vcpu_pins: Vec<u32>,
    /// Tier 1: guest RAM in hugepages.
    #[serde(default)]
    pub hugepages: bool,
    /// Tier 1: vCPUs at `SCHED_FIFO`.
    #[serde(default)]
    pub realtime: bool,
    /// How long the VM waited for another run's locks.
    #[serde(default)]
    pub waited_ms: u64,
    /// What perf mode could not do here, and other remarks.
    #[serde(default)]
    pub notes: Vec<String>,
}

/// Why a VM could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The capped tier failed.
    #[error(transparent)]
    Capped(#[from] CapError),
    /// Tier 1 needs a service CPU besides one CPU per vCPU.
    #[error(
        "host too small for performance mode: {topology} has {vcpus} vCPUs, which need {need} \
         host CPUs (one each plus a service CPU), and this process may use {allowed}; run it \
         on a bigger host, or with --no-perf-mode (capped, not isolated)"
    )]
    TooFewCpus {
        /// The guest topology.
        topology: String,
        /// Its vCPUs.
        vcpus: u32,
        /// vCPUs + 1.
        need: usize,
        /// Allowed host CPUs.
        allowed: usize,
    },
    /// Tier 1 needs one host LLC per virtual LLC, each big enough.
    #[error(
        "host too small for performance mode: {topology} needs {llcs} host LLC(s) with at least \
         {per_llc} CPUs each (one per virtual LLC) plus a service CPU, and this host has {have}; \
         run it on a bigger host, or with --no-perf-mode (capped, not isolated)"
    )]
    TooFewLlcs {
        /// The guest topology.
        topology: String,
        /// Virtual LLCs.
        llcs: u32,
        /// vCPUs per virtual LLC.
        per_llc: u32,
        /// What the host has, in words.
        have: String,
    },
    /// Another run held what this VM needs for the whole wait.
    #[error(
        "resource contention: {what} stayed held by another ktstr run for {waited_s} s (see \
         `cargo ktstr locks`); nextest's --retries re-runs the case, or raise KTSTR_LOCK_WAIT_S"
    )]
    Contention {
        /// What was held.
        what: String,
        /// How long we waited.
        waited_s: u64,
    },
    /// A lock file could not be opened or locked.
    #[error("host lock {path}: {source}; check KTSTR_LOCK_DIR (default /tmp) is writable")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `KTSTR_LOCK_WAIT_S` is not a number.
    #[error(
        "KTSTR_LOCK_WAIT_S={0:?} is not a number of seconds; set it to a whole number, or unset it"
    )]
    BadWait(String),
    /// A stop signal arrived while waiting.
    #[error("interrupted by {0} while waiting for host CPUs")]
    Interrupted(String),
}

/// A VM's place on the host; dropping it releases the locks.
#[derive(Debug)]
pub struct Placement {
    /// The tier.
    pub tier: Tier,
    /// The soft affinity mask of the VM's threads (for tier 1, the service CPU: the vCPU
    /// threads are pinned one by one from [`Placement::pinning`]); `None`: no mask.
    pub cpus: Option<Vec<u32>>,
    /// Tier 1's per-vCPU placement.
    pub pinning: Option<Pinning>,
    /// What could not be done, in words (hugepages missing, no RT permission).
    pub notes: Vec<String>,
    /// How long the locks took.
    pub waited: Duration,
    _locks: Vec<File>,
    _capped: Option<Reservation>,
}

impl Placement {
    /// What the sidecar records.
    pub fn record(&self) -> PlacementRecord {
        let mut host_cpus = self.cpus.clone().unwrap_or_default();
        if let Some(p) = &self.pinning {
            host_cpus.extend(&p.vcpus);
            host_cpus.sort_unstable();
            host_cpus.dedup();
        }
        PlacementRecord {
            tier: self.tier.to_string(),
            host_cpus,
            vcpu_pins: self
                .pinning
                .as_ref()
                .map(|p| p.vcpus.clone())
                .unwrap_or_default(),
            hugepages: self.pinning.as_ref().is_some_and(|p| p.hugepages),
            realtime: self.pinning.as_ref().is_some_and(|p| p.realtime),
            waited_ms: self.waited.as_millis() as u64,
            notes: self.notes.clone(),
        }
    }
}

/// The wait for held locks: `KTSTR_LOCK_WAIT_S`, else [`DEFAULT_WAIT`].
pub fn lock_wait() -> Result<Duration, PlaceError> {
    match std::env::var("KTSTR_LOCK_WAIT_S") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| PlaceError::BadWait(v)),
        _ => Ok(DEFAULT_WAIT),
    }
}

/// Places a VM of `topo` with `memory_mib` of RAM: the tier from perf mode and the test's
/// `performance_mode`, then that tier's locks (waiting for them as the module docs say).
pub fn place(topo: &Topology, memory_mib: u64, performance: bool) -> Result<Placement, PlaceError> {
    if crate::host_cpus::no_perf_mode() {
        let r = crate::host_cpus::reserve_capped(None)?;
        let mut notes = Vec::new();
        if performance {
            notes.push(
                "performance_mode test run capped under --no-perf-mode: not isolated".to_string(),
            );
        }
        return Ok(Placement {
            tier: Tier::Capped,
            cpus: Some(r.plan.cpus.clone()),
            pinning: None,
            notes,
            waited: Duration::ZERO,
            _locks: Vec::new(),
            _capped: Some(r),
        });
    }
    if crate::host_cpus::bypass_llc_locks() {
        return Ok(Placement {
            tier: Tier::Unlocked,
            cpus: None,
            pinning: None,
            notes: vec!["KTSTR_BYPASS_LLC_LOCKS=1: no host CPUs reserved".into()],
            waited: Duration::ZERO,
            _locks: Vec::new(),
            _capped: None,
        });
    }
    let host = HostCpus::probe()?;
    let dir = crate::locks::lock_dir();
    crate::cache::warn_if_remote(&dir, "host lock directory", "KTSTR_LOCK_DIR");
    let wait = lock_wait()?;
    if performance {
        place_performance(topo, memory_mib, &host, &dir, wait)
    } else {
        place_window(topo.num_cpus() as usize + 1, &host, &dir, wait)
    }
}

/// Whether `topo` fits tier 1 on this host at all (ignoring other runs' locks): `Err` says
/// why not. Used to list such cases as skipped instead of failing them.
pub fn performance_fits(topo: &Topology, host: &HostCpus) -> Result<(), PlaceError> {
    plan_performance(topo, host, &BTreeSet::new()).map(|_| ())
}

/// Tier 1's choice of host CPUs, before locking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerfPlan {
    /// Host LLCs to lock exclusively.
    pub llcs: Vec<u32>,
    /// The host CPU of vCPU *i*.
    pub vcpus: Vec<u32>,
    /// The service CPU.
    pub service: u32,
}

/// Host CPUs of `host` by LLC (LLCs of one node together, nodes in id order).
fn llc_groups(host: &HostCpus) -> Vec<(u32, Vec<u32>)> {
    let mut by: BTreeMap<(u32, u32), Vec<u32>> = BTreeMap::new();
    for c in host.cpus() {
        by.entry((c.node, c.llc)).or_default().push(c.cpu);
    }
    by.into_iter()
        .map(|((_, llc), mut cpus)| {
            cpus.sort_unstable();
            (llc, cpus)
        })
        .collect()
}

/// Tier 1's plan avoiding the LLCs in `busy`: virtual LLC *j* on the *j*-th host LLC (fullest
/// first) that has room for it, the service CPU on a spare CPU of a chosen LLC or else on one
/// more LLC.
pub fn plan_performance(
    topo: &Topology,
    host: &HostCpus,
    busy: &BTreeSet<u32>,
) -> Result<PerfPlan, PlaceError> {
    let vcpus = topo.num_cpus();
    if vcpus as usize + 1 > host.len() {
        return Err(PlaceError::TooFewCpus {
            topology: topo.label(),
            vcpus,
            need: vcpus as usize + 1,
            allowed: host.len(),
        });
    }
    let per = topo.cpus_per_llc() as usize;
    let groups = llc_groups(host);
    let too_few = || PlaceError::TooFewLlcs {
        topology: topo.label(),
        llcs: topo.llcs,
        per_llc: per as u32,
        have: groups
            .iter()
            .map(|(l, c)| format!("LLC {l}: {} CPUs", c.len()))
            .collect::<Vec<_>>()
            .join(", "),
    };
    let mut free: Vec<&(u32, Vec<u32>)> = groups
        .iter()
        .filter(|(l, c)| !busy.contains(l) && c.len() >= per)
        .collect();
    // Fullest first (a stable sort keeps node and id order among equals).
    free.sort_by_key(|(_, c)| std::cmp::Reverse(c.len()));
    if free.len() < topo.llcs as usize {
        return Err(too_few());
    }
    let chosen = &free[..topo.llcs as usize];
    let mut plan = PerfPlan {
        llcs: chosen.iter().map(|(l, _)| *l).collect(),
        vcpus: Vec::with_capacity(vcpus as usize),
        service: 0,
    };
    for (_, cpus) in chosen {
        plan.vcpus.extend(&cpus[..per]);
    }
    // The service CPU: a spare in the last chosen LLC first (the first LLC usually hosts the
    // boot CPU's housekeeping), else one more LLC.
    let spare = chosen.iter().rev().find_map(|(_, c)| c.get(per).copied());
    plan.service = match spare {
        Some(c) => c,
        None => {
            let (l, c) = free.get(topo.llcs as usize).ok_or_else(too_few)?;
            plan.llcs.push(*l);
            c[0]
        }
    };
    Ok(plan)
}

/// [`crate::locks::try_flock`], its error naming the lock file.
fn try_lock(path: &Path, mode: i32) -> Result<Option<File>, PlaceError> {
    crate::locks::try_flock(path, mode).map_err(|source| PlaceError::Lock {
        path: path.to_path_buf(),
        source,
    })
}

/// A place in the host's queue of VMs waiting for locks: a file `ktstr-queue/{seq}-{pid}` in
/// the lock directory, flock-held while its owner waits. Waiters try for their locks in
/// ticket order, so a case that has waited longest goes next: without the queue, whichever
/// poller happened to look first after a release would win, and with eight cases queued on
/// two CPUs an unlucky one could lose for minutes.
struct Ticket {
    dir: PathBuf,
    seq: u64,
    path: PathBuf,
    _held: File,
}

impl Ticket {
    /// Takes the next ticket (the counter file `ktstr-queue.seq` is read and bumped under its
    /// own flock).
    fn take(lock_dir: &Path) -> Result<Ticket, PlaceError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| PlaceError::Lock { path, source }
        };
        let dir = lock_dir.join("ktstr-queue");
        std::fs::create_dir_all(&dir).map_err(err(&dir))?;
        // Sticky and open to all, like /tmp: every user's runs queue here.
        crate::locks::share_with_everyone(&dir, 0o1777);
        let counter = lock_dir.join("ktstr-queue.seq");
        let mut c = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&counter)
            .map_err(err(&counter))?;
        crate::locks::share_with_everyone(&counter, 0o666);
        // SAFETY: flock on a descriptor we own; blocks only for another taker's few syscalls.
        if unsafe { libc::flock(c.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(err(&counter)(std::io::Error::last_os_error()));
        }
        use std::io::{Read, Seek, Write};
        let mut text = String::new();
        c.read_to_string(&mut text).map_err(err(&counter))?;
        let seq = text.trim().parse::<u64>().unwrap_or(0) + 1;
        c.rewind()
            .and_then(|_| c.set_len(0))
            .and_then(|_| c.write_all(seq.to_string().as_bytes()))
            .map_err(err(&counter))?;
        let path = dir.join(format!("{seq:020}-{}", std::process::id()));
        let held = try_lock(&path, libc::LOCK_EX)?
            .ok_or_else(|| err(&path)(std::io::Error::other("a fresh ticket is locked")))?;
        drop(c);
        Ok(Ticket {
            dir,
            seq,
            path,
            _held: held,
        })
    }

    /// Whether no live ticket is older than this one. A ticket whose file nobody holds
    /// belongs to a waiter that died: it is removed.
    fn is_next(&self) -> bool {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return true;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.split('-').next())
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if seq >= self.seq {
                continue;
            }
            // Read-only: another user's ticket is not ours to write, but flock works on any
            // open descriptor.
            let Ok(f) = File::open(e.path()) else {
                continue;
            };
            // SAFETY: flock on a descriptor we own; no memory is involved.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                // Nobody holds it: its waiter is gone.
                let _ = std::fs::remove_file(e.path());
            } else {
                return false;
            }
        }
        true
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Calls `attempt` until it returns `Some`, in ticket order among the VMs waiting on this
/// host (see [`Ticket`]) and sleeping with backoff between tries, for at most `wait`; `what`
/// names the held resource in the contention error.
fn wait_for<T>(
    lock_dir: &Path,
    wait: Duration,
    mut attempt: impl FnMut() -> Result<Option<T>, PlaceError>,
    what: impl Fn() -> String,
) -> Result<(T, Duration), PlaceError> {
    let start = Instant::now();
    let ticket = Ticket::take(lock_dir)?;
    let mut pause = Duration::from_millis(20);
    loop {
        if ticket.is_next() {
            if let Some(v) = attempt()? {
                return Ok((v, start.elapsed()));
            }
        }
        if let Some(sig) = crate::interrupt::received() {
            return Err(PlaceError::Interrupted(crate::interrupt::name(sig)));
        }
        if start.elapsed() >= wait {
            return Err(PlaceError::Contention {
                what: what(),
                waited_s: start.elapsed().as_secs(),
            });
        }
        std::thread::sleep(pause.min(wait.saturating_sub(start.elapsed())));
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// Tier 1: plan, lock the plan's LLCs exclusively (re-planning around busy ones), then decide
/// RT and hugepages.
pub fn place_performance(
    topo: &Topology,
    memory_mib: u64,
    host: &HostCpus,
    dir: &Path,
    wait: Duration,
) -> Result<Placement, PlaceError> {
    // Fails now, not after the wait, when the host can never fit it.
    plan_performance(topo, host, &BTreeSet::new())?;
    let mut busy = BTreeSet::new();
    let ((plan, locks), waited) = wait_for(
        dir,
        wait,
        || {
            // Re-plan around each busy LLC found, until a plan locks or none is left.
            'plan: loop {
                let plan = match plan_performance(topo, host, &busy) {
                    Ok(p) => p,
                    // Every fitting LLC is busy: start over after the pause.
                    Err(_) => {
                        busy.clear();
                        return Ok(None);
                    }
                };
                let mut locks = Vec::new();
                for &l in &plan.llcs {
                    match try_lock(&crate::locks::llc_lock_path(dir, l), libc::LOCK_EX)? {
                        Some(f) => locks.push(f),
                        None => {
                            busy.insert(l);
                            continue 'plan;
                        }
                    }
                }
                return Ok(Some((plan, locks)));
            }
        },
        || format!("the host LLCs {topo} needs (exclusively)"),
    )?;
    let mut notes = Vec::new();
    let realtime = realtime_permitted();
    if !realtime {
        notes.push(
            "no SCHED_FIFO for vCPU threads: not permitted (needs CAP_SYS_NICE or RLIMIT_RTPRIO)"
                .to_string(),
        );
    }
    let hugepages = match free_hugepages() {
        Some(free) if free >= hugepages_for(memory_mib) => true,
        free => {
            notes.push(format!(
                "guest RAM in 4 KiB pages: {} free 2 MiB hugepages, {} needed (reserve them \
                 with `echo N > /proc/sys/vm/nr_hugepages`)",
                free.unwrap_or(0),
                hugepages_for(memory_mib)
            ));
            false
        }
    };
    Ok(Placement {
        tier: Tier::Performance,
        cpus: Some(vec![plan.service]),
        pinning: Some(Pinning {
            vcpus: plan.vcpus,
            service: plan.service,
            realtime,
            hugepages,
        }),
        notes,
        waited,
        _locks: locks,
        _capped: None,
    })
}

/// The candidate windows of `k` host CPUs: consecutive runs in (node, LLC, CPU) order, so a
/// window stays within as few LLCs as it can.
pub fn windows(host: &HostCpus, k: usize) -> Vec<Vec<u32>> {
    let order: Vec<u32> = llc_groups(host).into_iter().flat_map(|(_, c)| c).collect();
    let k = k.clamp(1, order.len().max(1));
    if order.is_empty() {
        return Vec::new();
    }
    (0..=order.len() - k)
        .map(|s| order[s..s + k].to_vec())
        .collect()
}

/// Tier 3: the first window of min(`cpus`, allowed) host CPUs whose CPU locks are free
/// (exclusively) and whose LLCs are not held exclusively (shared).
pub fn place_window(
    cpus: usize,
    host: &HostCpus,
    dir: &Path,
    wait: Duration,
) -> Result<Placement, PlaceError> {
    let llc_of: BTreeMap<u32, u32> = host.cpus().iter().map(|c| (c.cpu, c.llc)).collect();
    let candidates = windows(host, cpus.min(host.len()));
    let ((cpus, locks), waited) = wait_for(
        dir,
        wait,
        || {
            'window: for w in &candidates {
                let mut locks = Vec::new();
                for &c in w {
                    match try_lock(&crate::locks::cpu_lock_path(dir, c), libc::LOCK_EX)? {
                        Some(f) => locks.push(f),
                        None => continue 'window,
                    }
                }
                let llcs: BTreeSet<u32> = w.iter().filter_map(|c| llc_of.get(c).copied()).collect();
                for l in llcs {
                    match try_lock(&crate::locks::llc_lock_path(dir, l), libc::LOCK_SH)? {
                        Some(f) => locks.push(f),
                        None => continue 'window,
                    }
                }
                return Ok(Some((w.clone(), locks)));
            }
            Ok(None)
        },
        || {
            format!(
                "every window of {} host CPU(s)",
                cpus.min(host.len()).max(1)
            )
        },
    )?;
    Ok(Placement {
        tier: Tier::Default,
        cpus: Some(cpus),
        pinning: None,
        notes: Vec::new(),
        waited,
        _locks: locks,
        _capped: None,
    })
}

/// 2 MiB hugepages for `memory_mib` MiB.
pub fn hugepages_for(memory_mib: u64) -> u64 {
    memory_mib.div_ceil(2)
}

/// `HugePages_Free` when the default hugepage size is 2 MiB (`None` otherwise or unreadable).
pub fn free_hugepages() -> Option<u64> {
    parse_hugepages(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// [`free_hugepages`] from `/proc/meminfo` text.
pub fn parse_hugepages(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    (field("Hugepagesize:")? == 2048).then_some(())?;
    field("HugePages_Free:")
}

/// Whether this process may make a thread `SCHED_FIFO` (tried on a short-lived thread, so
/// nothing of ours keeps the policy).
pub fn realtime_permitted() -> bool {
    std::thread::spawn(|| make_realtime(0, 1).is_ok())
        .join()
        .unwrap_or(false)
}

/// Makes thread `tid` (0: the calling thread) `SCHED_FIFO` at `priority`.
pub fn make_realtime(tid: i32, priority: i32) -> std::io::Result<()> {
    let p = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `tid` is 0 or a thread id (a stale one fails with ESRCH); `p` is a valid
    // sched_param.
    if unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &p) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Pins thread `tid` to `cpu` and, when `realtime`, makes it `SCHED_FIFO` 1: for threads of
/// another process (qemu's vCPU threads).
pub fn pin_thread(tid: i32, cpu: u32, realtime: bool) -> std::io::Result<()> {
    crate::host_cpus::confine_thread(tid, &[cpu]).map_err(std::io::Error::other)?;
    if realtime {
        make_realtime(tid, 1)?;
    }
    Ok(())
}

/// Pins the vCPU threads of process `pid` (named as `naming` says) as `pinning` says, waiting
/// up to `within` for them to appear. Returns how many vCPUs were pinned; a thread that runs
/// all vCPUs (qemu's single-threaded TCG) goes on vCPU 0's CPU.
pub fn pin_vcpu_threads(
    pid: u32,
    naming: crate::monitor::ThreadNaming,
    pinning: &Pinning,
    within: Duration,
) -> std::io::Result<usize> {
    let start = Instant::now();
    let mut done = BTreeSet::new();
    loop {
        for e in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
            let Ok(tid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if done.contains(&tid) {
                continue;
            }
            let Ok(comm) = std::fs::read_to_string(e.path().join("comm")) else {
                continue;
            };
            let Some(which) = naming.vcpu_of(&comm) else {
                continue;
            };
            let (cpu, count) = match which {
                Some(n) => match pinning.vcpus.get(n as usize) {
                    Some(&c) => (c, 1),
                    None => continue,
                },
                None => (pinning.vcpus[0], pinning.vcpus.len()),
            };
            pin_thread(tid, cpu, pinning.realtime)?;
            done.insert(tid);
            if count > 1 || done.len() == pinning.vcpus.len() {
                return Ok(count.max(done.len()));
            }
        }
        if start.elapsed() >= within {
            return Ok(done.len());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests;
