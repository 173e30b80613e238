//! The case matrix: test × scenario (scheduler + active flags) × topology × kernel.
//!
//! Names are `{test}/{scenario}/{topology}[/{kernel}]` (host-only tests: `{test}/host`).
//! Listing walks the matrix lazily, one test at a time, writing names into a reused buffer;
//! [`Matrix::resolve`] parses one name and builds only that case, so dispatch cost does not
//! grow with the matrix. The guest uses the same resolver to find its case.

use std::fmt::Write as _;

use crate::assert::Assert;
use crate::registry::{FlagDecl, KtstrTest, Scheduler, SchedulerBinary, UnknownTest};
use crate::topology::Topology;
use crate::workload::WorkType;

/// The gauntlet's topology presets (library spec §5.1), in table order.
pub const PRESETS: [(&str, Topology); 24] = {
    const fn t(numa_nodes: u32, llcs: u32, cores: u32, threads: u32) -> Topology {
        Topology {
            numa_nodes,
            llcs,
            cores,
            threads,
        }
    }
    [
        ("tiny-1llc", t(1, 1, 4, 1)),
        ("tiny-2llc", t(1, 2, 2, 1)),
        ("odd-3llc", t(1, 3, 3, 1)),
        ("odd-5llc", t(1, 5, 3, 1)),
        ("odd-7llc", t(1, 7, 2, 1)),
        ("smt-2llc", t(1, 2, 2, 2)),
        ("smt-3llc", t(1, 3, 2, 2)),
        ("medium-4llc", t(1, 4, 4, 2)),
        ("medium-8llc", t(1, 8, 4, 2)),
        ("large-4llc", t(1, 4, 16, 2)),
        ("large-8llc", t(1, 8, 8, 2)),
        ("near-max-llc", t(1, 15, 8, 2)),
        ("medium-4llc-nosmt", t(1, 4, 8, 1)),
        ("medium-8llc-nosmt", t(1, 8, 8, 1)),
        ("large-4llc-nosmt", t(1, 4, 32, 1)),
        ("large-8llc-nosmt", t(1, 8, 16, 1)),
        ("near-max-llc-nosmt", t(1, 15, 16, 1)),
        ("max-cpu-nosmt", t(1, 14, 18, 1)),
        ("numa2-4llc", t(2, 4, 4, 1)),
        ("numa2-8llc", t(2, 8, 8, 2)),
        ("numa2-8llc-nosmt", t(2, 8, 16, 1)),
        ("numa4-8llc", t(4, 8, 4, 1)),
        ("numa4-12llc", t(4, 12, 8, 2)),
        ("max-cpu", t(1, 14, 9, 2)),
    ]
};

/// Warn when one test expands past this many cases.
pub const LARGE_TEST_WARNING: usize = 10_000;

/// Why the registry cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatrixError {
    /// A test's declaration is inconsistent with its scheduler.
    #[error("ktstr test {test:?}: {why}")]
    InvalidTest {
        /// The bare test name.
        test: String,
        /// What is wrong.
        why: String,
    },
    /// Two tests share a name.
    #[error("two ktstr tests are named {0:?}; test function names must be unique per binary")]
    DuplicateTest(String),
    /// `KTSTR_KERNEL_LIST` is malformed.
    #[error("KTSTR_KERNEL_LIST: {0}")]
    KernelList(String),
}

/// Why a case name does not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The first segment names no test.
    #[error(transparent)]
    UnknownTest(#[from] UnknownTest),
    /// The name is not a case of its test.
    #[error("{name:?} is not a ktstr case: {why}")]
    NotACase {
        /// The full name.
        name: String,
        /// Which segment is wrong.
        why: String,
    },
    /// The test itself is invalid.
    #[error(transparent)]
    Invalid(#[from] MatrixError),
}

/// One selected kernel: a sanitized label and the spec the runner resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelSel {
    /// `[a-z0-9_]` label, the 4th name segment when several kernels are selected.
    pub label: String,
    /// What the user gave: a path, version or cache key.
    pub spec: String,
}

/// The kernels a run covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSet {
    kernels: Vec<KernelSel>,
}

/// Maps a kernel label to `[a-z0-9_]`: lowercase, other characters become `_`, runs of `_`
/// collapse and edges are trimmed (`6.15-rc3` → `6_15_rc3`).
pub fn sanitize_label(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '_'
        };
        if c == '_' && (out.is_empty() || out.ends_with('_')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

impl KernelSet {
    /// No kernel named: the runner picks its default; names carry no kernel segment.
    pub fn none() -> Self {
        KernelSet::default()
    }

    /// Reads `KTSTR_KERNEL_LIST`, else `KTSTR_KERNEL`, else the newest cached kernel.
    pub fn from_env() -> Result<Self, MatrixError> {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let set = Self::parse(
            get("KTSTR_KERNEL").as_deref(),
            get("KTSTR_KERNEL_LIST").as_deref(),
        )?;
        if !set.kernels.is_empty() {
            return Ok(set);
        }
        Ok(match crate::kernel::newest_cached() {
            Some((key, version)) => KernelSet {
                kernels: vec![KernelSel {
                    label: sanitize_label(&version),
                    spec: key,
                }],
            },
            None => set,
        })
    }

    /// `list` is `label=spec;label=spec` (a bare `spec` takes its basename as label); it wins
    /// over the single `kernel`.
    pub fn parse(kernel: Option<&str>, list: Option<&str>) -> Result<Self, MatrixError> {
        let mut kernels = Vec::new();
        if let Some(list) = list {
            for item in list.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                let (raw_label, spec) = match item.split_once('=') {
                    Some((l, s)) => (l.trim(), s.trim()),
                    None => (basename(item), item),
                };
                let label = sanitize_label(raw_label);
                if label.is_empty() || spec.is_empty() {
                    return Err(MatrixError::KernelList(format!(
                        "entry {item:?} needs a label and a kernel (label=path)"
                    )));
                }
                if kernels.iter().any(|k: &KernelSel| k.label == label) {
                    return Err(MatrixError::KernelList(format!(
                        "label {label:?} appears twice (after sanitizing to [a-z0-9_])"
                    )));
                }
                kernels.push(KernelSel {
                    label,
                    spec: spec.to_string(),
                });
            }
        } else if let Some(k) = kernel {
            kernels.push(KernelSel {
                label: sanitize_label(basename(k)),
                spec: k.to_string(),
            });
        }
        Ok(KernelSet { kernels })
    }

    /// The selected kernels.
    pub fn kernels(&self) -> &[KernelSel] {
        &self.kernels
    }

    /// Whether case names carry a kernel segment (more than one kernel).
    pub fn suffixed(&self) -> bool {
        self.kernels.len() > 1
    }
}

fn basename(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}

/// One test's flag relations, compiled to bit masks (bit i = declaration index i).
#[derive(Debug, Clone)]
struct FlagTable {
    n: usize,
    /// Transitive `requires` closure of each flag, including itself.
    closure: [u32; 32],
    /// Symmetric `excludes`.
    excludes: [u32; 32],
    required: u32,
    excluded: u32,
}

impl FlagTable {
    fn new(test: &KtstrTest) -> Result<Self, String> {
        let s = test.scheduler;
        let n = s.flags.len();
        if n >= 32 {
            return Err(format!(
                "scheduler {:?} declares {n} flags; at most 31 are supported",
                s.name
            ));
        }
        let idx = |name: &str, what: &str| {
            s.flag_index(name)
                .map(|i| 1u32 << i)
                .ok_or_else(|| format!("{what} {name:?} is not a flag of scheduler {:?}", s.name))
        };
        let mut requires = [0u32; 32];
        let mut excludes = [0u32; 32];
        for (i, f) in s.flags.iter().enumerate() {
            for r in f.requires {
                requires[i] |= idx(r, "required flag")?;
            }
            for e in f.excludes {
                let b = idx(e, "excluded flag")?;
                excludes[i] |= b;
                excludes[b.trailing_zeros() as usize] |= 1 << i;
            }
        }
        let mut closure = [0u32; 32];
        for (i, c) in closure.iter_mut().enumerate().take(n) {
            let mut m = 1u32 << i;
            loop {
                let next = bits(m).fold(m, |acc, j| acc | requires[j]);
                if next == m {
                    break;
                }
                m = next;
            }
            *c = m;
        }
        let mut required = 0;
        for r in test.required_flags {
            required |= idx(r, "required_flags entry")?;
        }
        let mut excluded = 0;
        for e in test.excluded_flags {
            excluded |= idx(e, "excluded_flags entry")?;
        }
        Ok(FlagTable {
            n,
            closure,
            excludes,
            required,
            excluded,
        })
    }

    fn is_valid(&self, m: u32) -> bool {
        m & self.excluded == 0
            && m & self.required == self.required
            && bits(m).all(|i| self.closure[i] & !m == 0 && self.excludes[i] & m == 0)
    }

    /// The smallest valid profile: the `requires` closure of the required flags (every valid
    /// profile contains it, and conflicts only grow with supersets, so it is valid or nothing is).
    fn base(&self) -> Option<u32> {
        let m = bits(self.required).fold(self.required, |acc, i| acc | self.closure[i]);
        self.is_valid(m).then_some(m)
    }

    /// Every valid profile, ordered by size, then lexicographically by declaration index
    /// (so the base profile comes first).
    fn profiles(&self) -> Vec<u32> {
        let mut out = Vec::new();
        self.dfs(0, 0, 0, &mut out);
        out.sort_by_key(|&m| (m.count_ones(), !m.reverse_bits()));
        out
    }

    /// Decides flag `i` in or out; `forbid` = flags excluded by members. Each decision is
    /// checked against earlier ones so every leaf reached is valid.
    fn dfs(&self, i: usize, m: u32, forbid: u32, out: &mut Vec<u32>) {
        if i == self.n {
            out.push(m);
            return;
        }
        let bit = 1u32 << i;
        let decided = bit - 1;
        let needed = bits(m).fold(self.required, |acc, j| acc | self.closure[j]);
        if needed & bit == 0 {
            self.dfs(i + 1, m, forbid, out);
        }
        if m & bit == 0 {
            let c = self.closure[i];
            let conflicts = c & (forbid | self.excluded) != 0
                || bits(c).any(|j| self.excludes[j] & (m | c) != 0);
            let earlier_missing = c & decided & !m != 0;
            if !conflicts && !earlier_missing {
                self.dfs(i + 1, m | bit, forbid | self.excludes[i], out);
            }
        }
    }
}

fn bits(m: u32) -> impl Iterator<Item = usize> {
    (0..32).filter(move |i| m & (1 << i) != 0)
}

/// One test expanded: its topologies and flag profiles (shared by all its cases).
#[derive(Debug, Clone)]
pub struct TestPlan {
    /// The test.
    pub test: &'static KtstrTest,
    /// Declared topology first, then every gated preset that differs from it.
    pub topologies: Vec<Topology>,
    /// Valid flag profiles as declaration-index bit masks, base first.
    pub profiles: Vec<u32>,
    /// The swept work types in declaration order; `[None]` when the test sweeps none.
    pub work_types: Vec<Option<WorkType>>,
}

impl TestPlan {
    /// Validates `test` against its scheduler and expands its axes.
    pub fn new(test: &'static KtstrTest) -> Result<Self, MatrixError> {
        let invalid = |why: String| MatrixError::InvalidTest {
            test: test.name.to_string(),
            why,
        };
        let declared = test
            .declared_topology()
            .map_err(|e| invalid(e.to_string()))?;
        let table = FlagTable::new(test).map_err(invalid)?;
        let work_types = swept_work_types(test).map_err(invalid)?;
        if table.base().is_none() {
            return Err(invalid(format!(
                "no flag profile of scheduler {:?} satisfies required_flags {:?} and excluded_flags {:?}",
                test.scheduler.name, test.required_flags, test.excluded_flags
            )));
        }
        if test.bpf_map_write.is_some()
            && (test.host_only || matches!(test.scheduler.binary, SchedulerBinary::Eevdf))
        {
            return Err(invalid(
                "bpf_map_write writes into a sched_ext scheduler's BPF map: it needs a VM and \
                 a scheduler other than EEVDF"
                    .to_string(),
            ));
        }
        if test.host_only && test.auto_repro {
            return Err(invalid(
                "a host_only test boots no VM: auto_repro (a second run with a finer host \
                 monitor) does not apply"
                    .to_string(),
            ));
        }
        if test.host_only {
            return Ok(TestPlan {
                test,
                topologies: vec![declared],
                profiles: vec![table.base().unwrap_or(0)],
                work_types,
            });
        }
        let gates = test.effective_gates();
        let mut topologies = vec![declared];
        topologies.extend(
            PRESETS
                .iter()
                .map(|(_, t)| *t)
                .filter(|t| *t != declared && gates.admits(t)),
        );
        Ok(TestPlan {
            test,
            topologies,
            profiles: table.profiles(),
            work_types,
        })
    }

    /// Cases per kernel.
    pub fn len(&self) -> usize {
        self.topologies.len() * self.profiles.len() * self.work_types.len()
    }

    /// Whether the plan has no cases (never true for a validated test).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The work types a test sweeps (`work_types = [..]`), or why a name is wrong; `[None]` for
/// a test that sweeps none.
fn swept_work_types(test: &KtstrTest) -> Result<Vec<Option<WorkType>>, String> {
    if test.work_types.is_empty() {
        return Ok(vec![None]);
    }
    if test.host_only {
        return Err("a host_only test runs once: work_types does not apply".to_string());
    }
    let mut out: Vec<Option<WorkType>> = Vec::new();
    for name in test.work_types {
        let w = WorkType::from_name(name).ok_or_else(|| {
            format!(
                "work_types lists {name:?}, which is not a work type (known: {})",
                WorkType::ALL_NAMES.join(", ")
            )
        })?;
        if out.contains(&Some(w)) {
            return Err(format!("work_types lists {name:?} twice"));
        }
        out.push(Some(w));
    }
    Ok(out)
}

/// Writes a scenario label: `{scheduler}`, `{scheduler}+a+b`, and `~WorkType` when the test
/// sweeps work types.
fn write_scenario(out: &mut String, s: &Scheduler, mask: u32, work: Option<WorkType>) {
    out.push_str(s.name);
    for i in bits(mask) {
        out.push('+');
        out.push_str(s.flags[i].name);
    }
    if let Some(w) = work {
        out.push('~');
        out.push_str(w.name());
    }
}

/// One case, fully identified. Shared between the harness (host) and the guest runtime.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct CaseSpec {
    /// Full case name.
    pub name: String,
    /// The registered test.
    pub test: &'static KtstrTest,
    /// Its scheduler.
    pub scheduler: &'static Scheduler,
    /// Active flags as a declaration-index bit mask.
    pub flag_mask: u32,
    /// The VM topology.
    pub topology: Topology,
    /// The kernel; `None` = the runner's default.
    pub kernel: Option<KernelSel>,
    /// Merged thresholds (defaults → scheduler → test).
    pub assert: Assert,
    /// Whether this is the test's base case (runs by default, not ignored).
    pub base: bool,
    /// Whether the case is listed as ignored.
    pub ignored: bool,
    /// The swept work type (`ctx.work_type_override`); `None` when the test sweeps none.
    pub work_type: Option<WorkType>,
}

impl CaseSpec {
    /// Active flags in declaration order.
    pub fn active_flags(&self) -> impl Iterator<Item = &'static FlagDecl> + '_ {
        bits(self.flag_mask).map(|i| &self.scheduler.flags[i])
    }

    /// The scenario label (`scx-demo+llc`, `eevdf~YieldHeavy`).
    pub fn scenario(&self) -> String {
        let mut s = String::new();
        write_scenario(&mut s, self.scheduler, self.flag_mask, self.work_type);
        s
    }

    /// Whether the body runs on the host without a VM.
    pub fn host_only(&self) -> bool {
        self.test.host_only
    }

    /// The scheduler's argv after the binary: config file, cgroup parent, `sched_args`, the
    /// test's `extra_sched_args`, then active flags' args in declaration order.
    pub fn sched_argv(&self) -> Vec<String> {
        let s = self.scheduler;
        let mut v = Vec::new();
        if let Some(cfg) = s.config_file {
            v.push("--config".to_string());
            v.push(format!("/include-files/{}", basename(cfg)));
        }
        if let Some(p) = s.cgroup_parent {
            v.push("--cell-parent-cgroup".to_string());
            v.push(p.to_string());
        }
        v.extend(s.sched_args.iter().map(|a| a.to_string()));
        v.extend(self.test.extra_sched_args.iter().map(|a| a.to_string()));
        for f in self.active_flags() {
            v.extend(f.args.iter().map(|a| a.to_string()));
        }
        v
    }
}

/// A case during listing: its name (valid until the next case) and whether it is ignored.
pub struct CaseRef<'p> {
    /// The plan the case belongs to.
    pub plan: &'p TestPlan,
    /// Index into `plan.topologies`.
    pub topology: usize,
    /// Index into `plan.profiles`.
    pub profile: usize,
    /// Index into `plan.work_types`.
    pub work_type: usize,
    /// The kernel, when any is selected.
    pub kernel: Option<&'p KernelSel>,
    /// The full case name.
    pub name: &'p str,
    /// Listed as ignored.
    pub ignored: bool,
}

impl CaseRef<'_> {
    /// Builds the owned case description (only for cases that will run).
    pub fn to_spec(&self) -> CaseSpec {
        let t = self.plan.test;
        CaseSpec {
            name: self.name.to_string(),
            test: t,
            scheduler: t.scheduler,
            flag_mask: self.plan.profiles[self.profile],
            topology: self.plan.topologies[self.topology],
            kernel: self.kernel.cloned(),
            assert: t.merged_assert(),
            base: self.topology == 0 && self.profile == 0,
            ignored: self.ignored,
            work_type: self.plan.work_types[self.work_type],
        }
    }
}

/// The matrix over a registry slice and a kernel selection.
pub struct Matrix {
    tests: &'static [KtstrTest],
    kernels: KernelSet,
    vm_cases_ignored: bool,
    performance_host: Option<crate::host_cpus::HostCpus>,
}

impl Matrix {
    /// A matrix over `tests` (the global [`super::KTSTR_TESTS`] or a synthetic slice).
    pub fn new(tests: &'static [KtstrTest], kernels: KernelSet) -> Self {
        Matrix {
            tests,
            kernels,
            vm_cases_ignored: false,
            performance_host: None,
        }
    }

    /// Lists every case that boots a VM as ignored (host-only cases keep their state): for a
    /// harness that knows at list time that no VM case can run (no kernel), so that nextest
    /// reports them as skipped instead of running them into a pass or a failure.
    pub fn with_vm_cases_ignored(mut self, ignored: bool) -> Self {
        self.vm_cases_ignored = ignored;
        self
    }

    /// Lists the `performance_mode` cases whose topology cannot get tier-1 host isolation on
    /// `host` (vCPUs + 1 host CPUs, a host LLC per virtual LLC) as ignored, so that nextest
    /// reports them as skipped instead of failing them for the host's size. `None` (perf mode
    /// off, or strict mode, where they run and fail with the reason) lists them normally.
    pub fn with_performance_host(mut self, host: Option<crate::host_cpus::HostCpus>) -> Self {
        self.performance_host = host;
        self
    }

    /// Whether `test`'s case on `topo` is a performance case this host cannot isolate.
    fn performance_unfit(&self, test: &KtstrTest, topo: &Topology) -> bool {
        test.performance_mode
            && !test.host_only
            && self
                .performance_host
                .as_ref()
                .is_some_and(|h| crate::placement::performance_fits(topo, h).is_err())
    }

    /// Whether every case of `test` is listed as ignored.
    fn always_ignored(&self, test: &KtstrTest) -> bool {
        test.ignore || test.is_demo() || (self.vm_cases_ignored && !test.host_only)
    }

    /// The binary's registry and the kernels named in the environment.
    pub fn from_env() -> Result<Self, MatrixError> {
        Ok(Matrix::new(&super::KTSTR_TESTS, KernelSet::from_env()?))
    }

    /// The kernel selection.
    pub fn kernels(&self) -> &KernelSet {
        &self.kernels
    }

    /// Tests sorted by name; fails on duplicate names.
    pub fn sorted_tests(&self) -> Result<Vec<&'static KtstrTest>, MatrixError> {
        let mut v: Vec<&'static KtstrTest> = self.tests.iter().collect();
        v.sort_unstable_by_key(|t| t.name);
        if let Some(w) = v.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(MatrixError::DuplicateTest(w[0].name.to_string()));
        }
        Ok(v)
    }

    /// Calls `f` for every case in listing order (tests by name, then topology, flag profile,
    /// kernel). Only one test's plan and one name buffer are alive at a time.
    pub fn for_each_case(&self, mut f: impl FnMut(&CaseRef<'_>)) -> Result<(), MatrixError> {
        let mut name = String::with_capacity(128);
        let kernels: Vec<Option<&KernelSel>> = if self.kernels.suffixed() {
            self.kernels.kernels.iter().map(Some).collect()
        } else {
            vec![self.kernels.kernels.first()]
        };
        for test in self.sorted_tests()? {
            let plan = TestPlan::new(test)?;
            let always_ignored = self.always_ignored(test);
            if test.host_only {
                name.clear();
                name.push_str(test.name);
                name.push_str("/host");
                f(&CaseRef {
                    plan: &plan,
                    topology: 0,
                    profile: 0,
                    work_type: 0,
                    kernel: None,
                    name: &name,
                    ignored: always_ignored,
                });
                continue;
            }
            if plan.len() * kernels.len() > LARGE_TEST_WARNING {
                eprintln!(
                    "ktstr: warning: test {:?} expands to {} cases; consider gates or excluded_flags",
                    test.name,
                    plan.len() * kernels.len()
                );
            }
            for (ti, topo) in plan.topologies.iter().enumerate() {
                for (pi, &mask) in plan.profiles.iter().enumerate() {
                    // Every swept work type of the base cell runs by default: the sweep is
                    // what the test asked for.
                    for (wi, &work) in plan.work_types.iter().enumerate() {
                        name.clear();
                        name.push_str(test.name);
                        name.push('/');
                        write_scenario(&mut name, test.scheduler, mask, work);
                        name.push('/');
                        let _ = write!(name, "{topo}");
                        let stem = name.len();
                        for k in &kernels {
                            name.truncate(stem);
                            if let (true, Some(k)) = (self.kernels.suffixed(), k) {
                                name.push('/');
                                name.push_str(&k.label);
                            }
                            f(&CaseRef {
                                plan: &plan,
                                topology: ti,
                                profile: pi,
                                work_type: wi,
                                kernel: *k,
                                name: &name,
                                ignored: always_ignored
                                    || ti != 0
                                    || pi != 0
                                    || self.performance_unfit(test, topo),
                            });
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Parses `name` and builds that one case without expanding the matrix.
    pub fn resolve(&self, name: &str) -> Result<CaseSpec, ResolveError> {
        let not_a_case = |why: String| ResolveError::NotACase {
            name: name.to_string(),
            why,
        };
        let segs: Vec<&str> = name.split('/').collect();
        let test = super::find_test_in(self.tests, segs[0])?;
        // Validate just this test (flags against its scheduler, topology).
        let table = FlagTable::new(test).map_err(|why| MatrixError::InvalidTest {
            test: test.name.to_string(),
            why,
        })?;
        let declared = test
            .declared_topology()
            .map_err(|e| MatrixError::InvalidTest {
                test: test.name.to_string(),
                why: e.to_string(),
            })?;
        let base_mask = table.base().ok_or_else(|| MatrixError::InvalidTest {
            test: test.name.to_string(),
            why: "no valid flag profile".to_string(),
        })?;
        let swept = swept_work_types(test).map_err(|why| MatrixError::InvalidTest {
            test: test.name.to_string(),
            why,
        })?;
        let always_ignored = self.always_ignored(test);
        let spec = |flag_mask, topology, kernel, base: bool, work_type| CaseSpec {
            name: name.to_string(),
            test,
            scheduler: test.scheduler,
            flag_mask,
            topology,
            kernel,
            assert: test.merged_assert(),
            base,
            ignored: always_ignored || !base || self.performance_unfit(test, &topology),
            work_type,
        };
        if test.host_only {
            if segs.len() != 2 || segs[1] != "host" {
                return Err(not_a_case(format!(
                    "host-only test {:?} has exactly one case, {}/host",
                    test.name, test.name
                )));
            }
            return Ok(spec(base_mask, declared, None, true, None));
        }
        let want = if self.kernels.suffixed() { 4 } else { 3 };
        if segs.len() != want {
            return Err(not_a_case(format!(
                "expected {want} '/'-separated segments (test/scenario/topology{})",
                if want == 4 { "/kernel" } else { "" }
            )));
        }
        let (scenario, work_type) =
            scenario_work_type(test, &swept, segs[1]).map_err(not_a_case)?;
        let mask = scenario_mask(test, &table, scenario).map_err(not_a_case)?;
        let topo = case_topology(test, declared, segs[2]).map_err(not_a_case)?;
        let kernel = if want == 4 {
            let k = self
                .kernels
                .kernels
                .iter()
                .find(|k| k.label == segs[3])
                .ok_or_else(|| {
                    not_a_case(format!("no selected kernel is labelled {:?}", segs[3]))
                })?;
            Some(k.clone())
        } else {
            self.kernels.kernels.first().cloned()
        };
        Ok(spec(
            mask,
            topo,
            kernel,
            mask == base_mask && topo == declared,
            work_type,
        ))
    }
}

/// Splits a scenario segment's `~WorkType` suffix off, checked against the test's sweep: a
/// test that sweeps work types needs one of them, a test that does not takes none.
fn scenario_work_type<'s>(
    test: &KtstrTest,
    swept: &[Option<WorkType>],
    seg: &'s str,
) -> Result<(&'s str, Option<WorkType>), String> {
    let (scenario, name) = match seg.split_once('~') {
        Some((s, n)) => (s, Some(n)),
        None => (seg, None),
    };
    match (name, swept.first().copied().flatten()) {
        (None, None) => Ok((scenario, None)),
        (None, Some(_)) => Err(format!(
            "test {:?} sweeps work types: the scenario needs a suffix, one of {}",
            test.name,
            test.work_types
                .iter()
                .map(|n| format!("~{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        (Some(n), None) => Err(format!(
            "test {:?} sweeps no work types, but the scenario ends in ~{n}",
            test.name
        )),
        (Some(n), Some(_)) => swept
            .iter()
            .flatten()
            .find(|w| w.name() == n)
            .map(|w| (scenario, Some(*w)))
            .ok_or_else(|| {
                format!(
                    "test {:?} does not sweep work type {n:?} (its work_types: {})",
                    test.name,
                    test.work_types.join(", ")
                )
            }),
    }
}

/// The flag mask of a case name's scenario segment (scheduler, then flags in order), or why not.
fn scenario_mask(test: &KtstrTest, table: &FlagTable, seg: &str) -> Result<u32, String> {
    let mut parts = seg.split('+');
    let sched = test.scheduler;
    if parts.next() != Some(sched.name) {
        return Err(format!(
            "scenario {seg:?} does not start with the test's scheduler {:?}",
            sched.name
        ));
    }
    let mut mask = 0u32;
    let mut last: Option<usize> = None;
    for flag in parts {
        let i = sched
            .flag_index(flag)
            .ok_or_else(|| format!("{flag:?} is not a flag of {:?}", sched.name))?;
        if last.is_some_and(|l| i <= l) {
            return Err("flags must appear once each, in declaration order".to_string());
        }
        last = Some(i);
        mask |= 1 << i;
    }
    if !table.is_valid(mask) {
        return Err(format!(
            "flag set {seg:?} violates requires/excludes or the test's flag constraints"
        ));
    }
    Ok(mask)
}

/// The topology of a case name's topology segment (canonical, listed for the test), or why not.
fn case_topology(test: &KtstrTest, declared: Topology, seg: &str) -> Result<Topology, String> {
    let topo = Topology::parse_label(seg).map_err(|e| e.to_string())?;
    if topo.label() != seg {
        return Err(format!("topology {seg:?} is not canonical"));
    }
    let gates = test.effective_gates();
    let listed = topo == declared || PRESETS.iter().any(|(_, p)| *p == topo && gates.admits(p));
    if !listed {
        return Err(format!(
            "topology {seg} is neither the declared one ({declared}) nor a preset admitted by the test's gates"
        ));
    }
    Ok(topo)
}

#[cfg(test)]
#[path = "matrix_tests.rs"]
mod tests;
