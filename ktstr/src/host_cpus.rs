//! Capped runs (`--no-perf-mode` with `--cpu-cap N`, library spec §9 tier 2): a plan of N host
//! CPUs, chosen as whole LLCs where possible, that a VM's threads are confined to (a soft
//! affinity mask: no pinning of single vCPUs, no RT, no hugepages), and shared locks on the
//! LLCs of the plan so a performance-mode run knows they are in use.
//!
//! Choosing the plan: the allowed CPUs (`sched_getaffinity`) are grouped by host LLC. LLCs are
//! taken whole, fullest first, from one NUMA node before the next (the node with the most
//! allowed CPUs first), and the last one partially, so exactly N CPUs are used.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cgroup::{cpulist, parse_cpulist};

/// Why no plan or reservation could be made.
#[derive(Debug, thiserror::Error)]
pub enum CapError {
    /// N is 0 or more than the allowed CPUs.
    #[error(
        "--cpu-cap {asked}: must be between 1 and the {allowed} host CPUs this process may use"
    )]
    OutOfRange {
        /// What was asked for.
        asked: usize,
        /// How many CPUs this process may use.
        allowed: usize,
    },
    /// A cap together with `KTSTR_BYPASS_LLC_LOCKS=1`.
    #[error("--cpu-cap/KTSTR_CPU_CAP cannot be combined with KTSTR_BYPASS_LLC_LOCKS=1 (the cap is a reservation of LLC locks); unset one of them")]
    BypassedLocks,
    /// `KTSTR_CPU_CAP` is not a number.
    #[error("KTSTR_CPU_CAP={0:?} is not a CPU count; set it to a whole number ≥ 1, or unset it")]
    BadEnv(String),
    /// The allowed CPU set could not be read.
    #[error("reading this process's allowed CPUs: {0}")]
    Affinity(std::io::Error),
    /// A lock file could not be opened.
    #[error("opening the LLC lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A performance-mode run holds an LLC of the plan exclusively.
    #[error("resource contention: host LLC {llc} is held exclusively by another ktstr run (lock {path}) for more than {waited_s} s; wait for it, or lower --cpu-cap")]
    Contention {
        /// The host LLC.
        llc: u32,
        /// Its lock file.
        path: PathBuf,
        /// How long we waited.
        waited_s: u64,
    },
    /// The affinity could not be applied.
    #[error("confining the VM to host CPUs {cpus:?}: {source}")]
    Apply {
        /// The plan's CPUs.
        cpus: Vec<u32>,
        /// The OS error.
        source: std::io::Error,
    },
}

/// One host CPU this process may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostCpu {
    /// Its number.
    pub cpu: u32,
    /// Its last-level cache (the lowest CPU sharing it, a stable id).
    pub llc: u32,
    /// Its NUMA node.
    pub node: u32,
}

/// The host CPUs this process may use, with their LLCs and nodes.
#[derive(Debug, Clone)]
pub struct HostCpus {
    cpus: Vec<HostCpu>,
}

/// The CPUs a capped VM may use and the host LLCs they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuPlan {
    /// Host CPUs, ascending.
    pub cpus: Vec<u32>,
    /// Host LLC ids the plan touches, ascending.
    pub llcs: Vec<u32>,
}

/// The default cap when none is given: 30% of the allowed CPUs, at least 1.
pub fn default_cap(allowed: usize) -> usize {
    (allowed * 3 / 10).max(1)
}

/// `KTSTR_CPU_CAP`, if set.
pub fn cap_from_env() -> Result<Option<usize>, CapError> {
    match std::env::var("KTSTR_CPU_CAP") {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v.trim().parse().map(Some).map_err(|_| CapError::BadEnv(v)),
        Err(_) => Ok(None),
    }
}

/// Whether `KTSTR_BYPASS_LLC_LOCKS=1` asks for no host locks.
pub fn bypass_llc_locks() -> bool {
    std::env::var("KTSTR_BYPASS_LLC_LOCKS").as_deref() == Ok("1")
}

/// Whether perf mode is off (`KTSTR_NO_PERF_MODE` non-empty and not `0`).
pub fn no_perf_mode() -> bool {
    std::env::var_os("KTSTR_NO_PERF_MODE").is_some_and(|v| !v.is_empty() && v != "0")
}

impl HostCpus {
    /// Reads the allowed CPUs and their LLCs and nodes from sysfs.
    pub fn probe() -> Result<Self, CapError> {
        Ok(Self::from_sysfs(
            Path::new("/sys/devices/system"),
            &allowed_cpus().map_err(CapError::Affinity)?,
        ))
    }

    /// Like [`HostCpus::probe`], from a sysfs tree rooted at `root` (`.../devices/system`).
    /// A CPU without an L3 entry counts as its own LLC; without a node, as node 0.
    pub fn from_sysfs(root: &Path, allowed: &[u32]) -> Self {
        let mut node_of = BTreeMap::new();
        if let Ok(dir) = std::fs::read_dir(root.join("node")) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(n) = name
                    .strip_prefix("node")
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let list = std::fs::read_to_string(e.path().join("cpulist")).unwrap_or_default();
                for c in parse_cpulist(&list).unwrap_or_default() {
                    node_of.insert(c, n);
                }
            }
        }
        let cpus = allowed
            .iter()
            .map(|&cpu| {
                let shared = root.join(format!("cpu/cpu{cpu}/cache/index3/shared_cpu_list"));
                let llc = std::fs::read_to_string(shared)
                    .ok()
                    .and_then(|l| parse_cpulist(&l)?.into_iter().min())
                    .unwrap_or(cpu);
                HostCpu {
                    cpu,
                    llc,
                    node: node_of.get(&cpu).copied().unwrap_or(0),
                }
            })
            .collect();
        HostCpus { cpus }
    }

    /// From known CPUs (tests, or callers with their own view of the host).
    pub fn from_cpus(cpus: Vec<HostCpu>) -> Self {
        HostCpus { cpus }
    }

    /// The CPUs, in the order they were read.
    pub fn cpus(&self) -> &[HostCpu] {
        &self.cpus
    }

    /// How many CPUs this process may use.
    pub fn len(&self) -> usize {
        self.cpus.len()
    }

    /// Whether there are none (never on a running system).
    pub fn is_empty(&self) -> bool {
        self.cpus.is_empty()
    }

    /// A plan of exactly `n` CPUs (see the module docs for the order).
    pub fn plan(&self, n: usize) -> Result<CpuPlan, CapError> {
        if n == 0 || n > self.cpus.len() {
            return Err(CapError::OutOfRange {
                asked: n,
                allowed: self.cpus.len(),
            });
        }
        // node -> llc -> cpus
        let mut by_node: BTreeMap<u32, BTreeMap<u32, Vec<u32>>> = BTreeMap::new();
        for c in &self.cpus {
            by_node
                .entry(c.node)
                .or_default()
                .entry(c.llc)
                .or_default()
                .push(c.cpu);
        }
        let mut nodes: Vec<(u32, BTreeMap<u32, Vec<u32>>)> = by_node.into_iter().collect();
        let size = |m: &BTreeMap<u32, Vec<u32>>| m.values().map(Vec::len).sum::<usize>();
        // Most allowed CPUs first; ties by node id (stable sort keeps the id order).
        nodes.sort_by_key(|(_, llcs)| std::cmp::Reverse(size(llcs)));
        let mut cpus = Vec::with_capacity(n);
        let mut llcs = Vec::new();
        'outer: for (_, node_llcs) in nodes {
            let mut ordered: Vec<(u32, Vec<u32>)> = node_llcs.into_iter().collect();
            ordered.sort_by_key(|(_, c)| std::cmp::Reverse(c.len()));
            for (llc, mut members) in ordered {
                members.sort_unstable();
                llcs.push(llc);
                for c in members {
                    cpus.push(c);
                    if cpus.len() == n {
                        break 'outer;
                    }
                }
            }
        }
        cpus.sort_unstable();
        llcs.sort_unstable();
        Ok(CpuPlan { cpus, llcs })
    }
}

impl CpuPlan {
    /// Takes a shared lock on each LLC of the plan (`$KTSTR_LOCK_DIR`, default `/tmp`,
    /// `ktstr-llc-{N}.lock`), waiting up to 30 s for an exclusive holder to finish. The
    /// locks are held until the returned [`Reservation`] is dropped.
    pub fn reserve(&self) -> Result<Reservation, CapError> {
        self.reserve_in(&crate::locks::lock_dir(), Duration::from_secs(30))
    }

    /// [`CpuPlan::reserve`] with an explicit lock directory and wait.
    pub fn reserve_in(&self, dir: &Path, wait: Duration) -> Result<Reservation, CapError> {
        let mut locks = Vec::new();
        for &llc in &self.llcs {
            let path = crate::locks::llc_lock_path(dir, llc);
            let start = Instant::now();
            let f = loop {
                match crate::locks::try_flock(&path, libc::LOCK_SH) {
                    Ok(Some(f)) => break f,
                    Ok(None) if start.elapsed() >= wait => {
                        return Err(CapError::Contention {
                            llc,
                            path,
                            waited_s: wait.as_secs(),
                        })
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                    Err(source) => return Err(CapError::Lock { path, source }),
                }
            };
            locks.push(f);
        }
        Ok(Reservation {
            plan: self.clone(),
            _locks: locks,
        })
    }

    /// A line for the user: which host CPUs and LLCs the VM gets.
    pub fn describe(&self) -> String {
        format!(
            "capped to {} host CPU{} {} (host LLC{} {})",
            self.cpus.len(),
            if self.cpus.len() == 1 { "" } else { "s" },
            cpulist(&self.cpus),
            if self.llcs.len() == 1 { "" } else { "s" },
            cpulist(&self.llcs),
        )
    }
}

/// Held LLC locks of a capped run; dropping it releases them.
#[derive(Debug)]
pub struct Reservation {
    /// The plan the locks cover.
    pub plan: CpuPlan,
    _locks: Vec<File>,
}

/// The capped tier's reservation (library spec §9): `flag` (`--cpu-cap`), else
/// `KTSTR_CPU_CAP`, else 30% of the allowed host CPUs, planned and locked. A cap cannot be
/// combined with `KTSTR_BYPASS_LLC_LOCKS=1`, since the cap is a reservation of LLC locks.
pub fn reserve_capped(flag: Option<usize>) -> Result<Reservation, CapError> {
    let cap = match flag {
        Some(n) => Some(n),
        None => cap_from_env()?,
    };
    if cap.is_some() && bypass_llc_locks() {
        return Err(CapError::BypassedLocks);
    }
    let host = HostCpus::probe()?;
    host.plan(cap.unwrap_or_else(|| default_cap(host.len())))?
        .reserve()
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> std::io::Result<Vec<u32>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and the kernel writes at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer and size; pid 0 is the calling thread.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: the index is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .map(|c| c as u32)
        .collect())
}

/// A `cpu_set_t` holding `cpus` (those below `CPU_SETSIZE`).
pub fn cpu_set(cpus: &[u32]) -> libc::cpu_set_t {
    // SAFETY: a zeroed cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if (c as usize) < libc::CPU_SETSIZE as usize {
            // SAFETY: the index is below CPU_SETSIZE.
            unsafe { libc::CPU_SET(c as usize, &mut set) };
        }
    }
    set
}

/// Confines the calling thread (and the threads it starts afterwards) to `cpus`.
pub fn confine_current_thread(cpus: &[u32]) -> Result<(), CapError> {
    confine_thread(0, cpus)
}

/// Confines thread `tid` (0: the calling thread) to `cpus`.
pub fn confine_thread(tid: i32, cpus: &[u32]) -> Result<(), CapError> {
    let set = cpu_set(cpus);
    // SAFETY: valid set pointer and size; `tid` is 0 or a thread id (a stale one fails with
    // ESRCH).
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(CapError::Apply {
            cpus: cpus.to_vec(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Makes `cmd`'s process start confined to `cpus`. The mask is set between fork and exec, so
/// every thread the program starts inherits it (a mask set on the child's pid afterwards would
/// race with qemu starting its vCPU threads).
pub fn confine_command(cmd: &mut std::process::Command, cpus: &[u32]) {
    let set = cpu_set(cpus);
    // SAFETY: the closure runs between fork and exec and makes one syscall on a set prepared
    // before the fork: async-signal-safe, no allocation, no locks.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2 nodes × 2 LLCs × 4 CPUs: node n, LLC l holds CPUs 8n+4l .. 8n+4l+3.
    fn host(allowed: impl Fn(u32) -> bool) -> HostCpus {
        HostCpus::from_cpus(
            (0..16)
                .filter(|&c| allowed(c))
                .map(|cpu| HostCpu {
                    cpu,
                    llc: cpu / 4 * 4,
                    node: cpu / 8,
                })
                .collect(),
        )
    }

    #[test]
    fn whole_llcs_first_then_one_partial_within_one_node() {
        let h = host(|_| true);
        assert_eq!(h.plan(4).unwrap().cpus, vec![0, 1, 2, 3]);
        let p = h.plan(6).unwrap();
        assert_eq!((p.cpus, p.llcs), (vec![0, 1, 2, 3, 4, 5], vec![0, 4]));
        // The second node only once the first is used up.
        let p = h.plan(10).unwrap();
        assert_eq!(p.cpus, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(p.llcs, vec![0, 4, 8]);
    }

    #[test]
    fn fullest_node_and_llc_first() {
        // Node 0 has only CPUs 0 and 5 allowed; node 1 is whole: it goes first, and within it
        // the LLCs are equal, so the lower one.
        let h = host(|c| c == 0 || c == 5 || c >= 8);
        assert_eq!(h.plan(3).unwrap().cpus, vec![8, 9, 10]);
        // A fuller LLC beats a lower-numbered, emptier one.
        let h = host(|c| c == 0 || (4..8).contains(&c));
        assert_eq!(h.plan(2).unwrap().cpus, vec![4, 5]);
    }

    #[test]
    fn out_of_range_caps_are_refused_with_the_limit() {
        let h = host(|c| c < 2);
        let e = h.plan(3).unwrap_err().to_string();
        assert!(e.contains("between 1 and the 2 host CPUs"), "{e}");
        assert!(h.plan(0).is_err());
        assert_eq!(default_cap(16), 4);
        assert_eq!(default_cap(2), 1);
    }

    #[test]
    fn sysfs_tree_is_read() {
        let d = tempfile::tempdir().unwrap();
        for cpu in 0..4u32 {
            let c = d.path().join(format!("cpu/cpu{cpu}/cache/index3"));
            std::fs::create_dir_all(&c).unwrap();
            let list = if cpu < 2 { "0-1\n" } else { "2-3\n" };
            std::fs::write(c.join("shared_cpu_list"), list).unwrap();
        }
        std::fs::create_dir_all(d.path().join("node/node0")).unwrap();
        std::fs::write(d.path().join("node/node0/cpulist"), "0-3\n").unwrap();
        let h = HostCpus::from_sysfs(d.path(), &[1, 2, 3]);
        let p = h.plan(2).unwrap();
        assert_eq!((p.cpus, p.llcs), (vec![2, 3], vec![2]));
    }

    #[test]
    fn shared_locks_coexist_and_an_exclusive_holder_is_contention() {
        let d = tempfile::tempdir().unwrap();
        let plan = CpuPlan {
            cpus: vec![0, 1],
            llcs: vec![0],
        };
        let a = plan.reserve_in(d.path(), Duration::ZERO).unwrap();
        let b = plan.reserve_in(d.path(), Duration::ZERO).unwrap();
        drop((a, b));
        let f = File::open(d.path().join("ktstr-llc-0.lock")).unwrap();
        // SAFETY: flock on an fd we own.
        let r = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        assert_eq!(r, 0);
        let e = plan
            .reserve_in(d.path(), Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(e, CapError::Contention { llc: 0, .. }), "{e}");
    }

    #[test]
    fn a_confined_command_starts_with_the_mask() {
        let first = allowed_cpus().unwrap()[0];
        let mut cmd = std::process::Command::new("cat");
        cmd.arg("/proc/self/status");
        confine_command(&mut cmd, &[first]);
        let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
        let line = out
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .unwrap();
        assert_eq!(
            line.split_whitespace().nth(1),
            Some(first.to_string().as_str())
        );
    }

    #[test]
    fn confining_a_thread_shows_in_its_allowed_cpus() {
        let first = allowed_cpus().unwrap()[0];
        let got = std::thread::spawn(move || {
            confine_current_thread(&[first]).unwrap();
            allowed_cpus().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(got, vec![first]);
    }
}
