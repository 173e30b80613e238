//! [`CpusetSpec`]: cpusets described relative to the topology, resolved to CPU lists.

use crate::registry::TestTopology;

/// A cpuset described against the topology the guest sees.
#[derive(Debug, Clone, PartialEq)]
pub enum CpusetSpec {
    /// The CPUs of LLC `i`.
    Llc(usize),
    /// The CPUs of NUMA node `i`.
    Numa(usize),
    /// The usable CPUs from `floor(start_frac·n)` up to `ceil(end_frac·n)` (exclusive).
    Range {
        /// Start as a fraction of the usable CPUs, 0.0..1.0.
        start_frac: f64,
        /// End as a fraction, `start_frac`..=1.0.
        end_frac: f64,
    },
    /// The `index`-th of `of` equal disjoint slices of the usable CPUs.
    Disjoint {
        /// Which slice (0-based).
        index: usize,
        /// How many slices.
        of: usize,
    },
    /// The same slices widened on both sides by `frac` of a slice, so neighbours overlap.
    Overlap {
        /// Which slice.
        index: usize,
        /// How many slices.
        of: usize,
        /// Widening, as a fraction of one slice (0.0..=1.0).
        frac: f64,
    },
    /// Exactly these CPUs.
    Exact(Vec<u32>),
}

/// Why a cpuset does not resolve (the caller adds which cgroup and step).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpusetProblem {
    /// An LLC index the topology lacks.
    NoSuchLlc {
        /// Asked for.
        index: usize,
        /// LLCs there are.
        count: usize,
    },
    /// A NUMA node index the topology lacks.
    NoSuchNode {
        /// Asked for.
        index: usize,
        /// Nodes there are.
        count: usize,
    },
    /// It resolves to no CPU (or a CPU that does not exist).
    Empty(String),
}

impl std::fmt::Display for CpusetProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CpusetProblem::NoSuchLlc { index, count } => write!(
                f,
                "LLC {index} does not exist: the topology has {count} LLC(s) (0..{count})"
            ),
            CpusetProblem::NoSuchNode { index, count } => write!(
                f,
                "NUMA node {index} does not exist: the topology has {count} node(s) (0..{count})"
            ),
            CpusetProblem::Empty(why) => write!(f, "empty cpuset: {why}"),
        }
    }
}

/// Integer bounds of slice `index` of `of` over `n` CPUs: every CPU lands in exactly one
/// slice; a slice is empty only when there are fewer CPUs than slices.
fn slice_bounds(n: usize, index: usize, of: usize) -> (usize, usize) {
    (index * n / of, (index + 1) * n / of)
}

/// Resolves `spec` against `topo` to an ascending, non-empty CPU list.
pub fn resolve_cpuset(spec: &CpusetSpec, topo: &TestTopology) -> Result<Vec<u32>, CpusetProblem> {
    let cpus = &topo.cpus;
    let n = cpus.len();
    let pick = |lo: usize, hi: usize| -> Vec<u32> {
        cpus.get(lo.min(n)..hi.min(n).max(lo.min(n)))
            .unwrap_or_default()
            .to_vec()
    };
    let out = match spec {
        CpusetSpec::Llc(i) => topo.llcs.get(*i).cloned().ok_or(CpusetProblem::NoSuchLlc {
            index: *i,
            count: topo.llcs.len(),
        })?,
        CpusetSpec::Numa(i) => topo
            .nodes
            .get(*i)
            .cloned()
            .ok_or(CpusetProblem::NoSuchNode {
                index: *i,
                count: topo.nodes.len(),
            })?,
        CpusetSpec::Range {
            start_frac,
            end_frac,
        } => {
            let ok = (0.0..=1.0).contains(start_frac)
                && (0.0..=1.0).contains(end_frac)
                && start_frac < end_frac;
            if !ok {
                return Err(CpusetProblem::Empty(format!(
                    "range {start_frac}..{end_frac} is not a non-empty sub-range of 0.0..1.0"
                )));
            }
            // Float noise must not add or drop a CPU at an exact boundary.
            let lo = (start_frac * n as f64 + 1e-9).floor() as usize;
            let hi = (end_frac * n as f64 - 1e-9).ceil() as usize;
            pick(lo, hi)
        }
        CpusetSpec::Disjoint { index, of } => {
            if *of == 0 || index >= of {
                return Err(CpusetProblem::Empty(format!(
                    "slice {index} of {of} does not exist"
                )));
            }
            let (lo, hi) = slice_bounds(n, *index, *of);
            pick(lo, hi)
        }
        CpusetSpec::Overlap { index, of, frac } => {
            if *of == 0 || index >= of || !(0.0..=1.0).contains(frac) {
                return Err(CpusetProblem::Empty(format!(
                    "overlap slice {index} of {of} widened by {frac} is not valid"
                )));
            }
            let (lo, hi) = slice_bounds(n, *index, *of);
            let w = ((hi - lo) as f64 * frac).ceil() as usize;
            pick(lo.saturating_sub(w), hi + w)
        }
        CpusetSpec::Exact(set) => {
            if let Some(bad) = set.iter().find(|c| !cpus.contains(c)) {
                return Err(CpusetProblem::Empty(format!(
                    "CPU {bad} is not a usable CPU (usable: {})",
                    crate::cgroup::cpulist(cpus)
                )));
            }
            let mut v = set.clone();
            v.sort_unstable();
            v.dedup();
            v
        }
    };
    if out.is_empty() {
        return Err(CpusetProblem::Empty(format!(
            "{spec:?} selects no CPU out of {n} usable CPU(s)"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;

    fn topo(n: u32, l: u32, c: u32) -> TestTopology {
        TestTopology::from_topology(&Topology::new(n, l, c, 1).unwrap())
    }

    #[test]
    fn llc_and_node() {
        let t = topo(2, 4, 2);
        assert_eq!(resolve_cpuset(&CpusetSpec::Llc(3), &t), Ok(vec![6, 7]));
        assert_eq!(
            resolve_cpuset(&CpusetSpec::Numa(1), &t),
            Ok(vec![4, 5, 6, 7])
        );
        let e = resolve_cpuset(&CpusetSpec::Llc(4), &t).unwrap_err();
        assert_eq!(e, CpusetProblem::NoSuchLlc { index: 4, count: 4 });
        assert!(e.to_string().contains("LLC 4 does not exist"), "{e}");
        assert!(matches!(
            resolve_cpuset(&CpusetSpec::Numa(2), &t),
            Err(CpusetProblem::NoSuchNode { index: 2, count: 2 })
        ));
    }

    #[test]
    fn slices() {
        let t = topo(1, 1, 8);
        let d = |i, of| resolve_cpuset(&CpusetSpec::Disjoint { index: i, of }, &t);
        assert_eq!(d(0, 2), Ok(vec![0, 1, 2, 3]));
        assert_eq!(d(1, 2), Ok(vec![4, 5, 6, 7]));
        assert_eq!(d(2, 3), Ok(vec![5, 6, 7]));
        assert!(d(2, 2).is_err());
        let o = resolve_cpuset(
            &CpusetSpec::Overlap {
                index: 0,
                of: 2,
                frac: 0.5,
            },
            &t,
        );
        assert_eq!(o, Ok(vec![0, 1, 2, 3, 4, 5]));
        let r = resolve_cpuset(
            &CpusetSpec::Range {
                start_frac: 0.25,
                end_frac: 0.5,
            },
            &t,
        );
        assert_eq!(r, Ok(vec![2, 3]));
        // Three slices of two CPUs: one of them is empty.
        let t2 = topo(1, 1, 2);
        assert!(resolve_cpuset(&CpusetSpec::Disjoint { index: 1, of: 3 }, &t2).is_ok());
        let e = resolve_cpuset(&CpusetSpec::Disjoint { index: 0, of: 3 }, &t2).unwrap_err();
        assert!(matches!(e, CpusetProblem::Empty(_)), "{e:?}");
    }

    #[test]
    fn exact() {
        let t = topo(1, 1, 4);
        assert_eq!(
            resolve_cpuset(&CpusetSpec::Exact(vec![3, 1, 1]), &t),
            Ok(vec![1, 3])
        );
        assert!(resolve_cpuset(&CpusetSpec::Exact(vec![9]), &t).is_err());
        assert!(resolve_cpuset(&CpusetSpec::Exact(vec![]), &t).is_err());
    }
}
