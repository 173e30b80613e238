//! The CPU layout scenarios resolve cpusets against: CPUs, LLCs and NUMA nodes as the guest
//! kernel sees them (sysfs), falling back to the declared VM topology.

use serde::{Deserialize, Serialize};

use crate::guest::topo::SysTopology;
use crate::topology::Topology;

/// CPUs grouped by LLC and by NUMA node, each list ascending.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestTopology {
    /// Every usable (online) CPU.
    pub cpus: Vec<u32>,
    /// CPUs of each LLC, by LLC index.
    pub llcs: Vec<Vec<u32>>,
    /// CPUs of each NUMA node, by node index.
    pub nodes: Vec<Vec<u32>>,
}

impl TestTopology {
    /// The layout the VM presents for `t` (canonical CPU numbering).
    pub fn from_topology(t: &Topology) -> Self {
        let mut llcs = vec![Vec::new(); t.llcs as usize];
        let mut nodes = vec![Vec::new(); t.numa_nodes as usize];
        for p in t.places() {
            llcs[p.llc as usize].push(p.cpu);
            nodes[p.node as usize].push(p.cpu);
        }
        TestTopology {
            cpus: (0..t.num_cpus()).collect(),
            llcs,
            nodes,
        }
    }

    /// The layout sysfs shows; `None` when sysfs has no usable LLC information (then the
    /// caller falls back to [`TestTopology::from_topology`]).
    pub fn from_sys(s: &SysTopology) -> Option<Self> {
        if s.online.is_empty() || s.cpus.iter().any(|c| c.llc.is_empty()) {
            return None;
        }
        let mut llcs: Vec<Vec<u32>> = Vec::new();
        for c in &s.cpus {
            if !llcs.contains(&c.llc) {
                llcs.push(c.llc.clone());
            }
        }
        llcs.sort();
        let mut nodes: Vec<Vec<u32>> = s.nodes.iter().map(|(_, c)| c.clone()).collect();
        if nodes.is_empty() {
            nodes.push(s.online.clone());
        }
        Some(TestTopology {
            cpus: s.online.clone(),
            llcs,
            nodes,
        })
    }

    /// The guest's own view (sysfs), else the declared topology.
    pub fn detect(declared: &Topology) -> Self {
        Self::from_sys(&SysTopology::current()).unwrap_or_else(|| Self::from_topology(declared))
    }

    /// NUMA nodes that hold at least one of `cpus`, ascending.
    pub fn nodes_of(&self, cpus: &[u32]) -> Vec<u32> {
        (0..self.nodes.len() as u32)
            .filter(|&n| self.nodes[n as usize].iter().any(|c| cpus.contains(c)))
            .collect()
    }

    /// The LLC index holding `cpu`.
    pub fn llc_of(&self, cpu: u32) -> Option<usize> {
        self.llcs.iter().position(|l| l.contains(&cpu))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_layout() {
        let t = Topology::new(2, 4, 2, 1).unwrap();
        let tt = TestTopology::from_topology(&t);
        assert_eq!(tt.cpus, (0..8).collect::<Vec<_>>());
        assert_eq!(tt.llcs[1], vec![2, 3]);
        assert_eq!(tt.nodes[1], vec![4, 5, 6, 7]);
        assert_eq!(tt.nodes_of(&[1, 5]), vec![0, 1]);
        assert_eq!(tt.llc_of(7), Some(3));
    }
}
