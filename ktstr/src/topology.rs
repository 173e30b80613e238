//! The CPU topology a test declares: NUMA nodes, LLCs, cores and SMT threads.
//!
//! Everything that shows a topology to a guest (per-vCPU CPUID, ACPI MADT/SRAT, qemu `-smp`
//! and `-numa` arguments) and everything that checks what the guest saw derives from this one
//! type, so the canonical CPU numbering lives here and nowhere else:
//! CPU index = node-major, then LLC, then core, then thread, so SMT siblings are adjacent.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Largest vCPU count a topology may ask for (the gauntlet's biggest preset is 252).
pub const MAX_VCPUS: u32 = 252;

/// Largest APIC ID that plain xAPIC can address (0xFF is the broadcast ID).
pub const MAX_XAPIC_ID: u32 = 0xFE;

/// Why a topology was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// The text was not four comma-separated positive integers (or a `1n2l4c2t` label).
    #[error("invalid topology {input:?}: {why}; expected NUMA_NODES,LLCS,CORES,THREADS such as 1,2,4,2 (LLCs in total, cores per LLC, threads per core) or the label form 1n2l4c2t")]
    Syntax {
        /// What the user wrote.
        input: String,
        /// What is wrong with it.
        why: String,
    },
    /// One of the four counts is zero.
    #[error("invalid topology: {field} must be at least 1")]
    Zero {
        /// The field that was zero.
        field: &'static str,
    },
    /// LLCs cannot be split evenly across NUMA nodes.
    #[error("invalid topology: {llcs} LLCs cannot be split evenly across {numa_nodes} NUMA nodes; make llcs a multiple of numa_nodes")]
    UnevenLlcs {
        /// LLCs in total.
        llcs: u32,
        /// NUMA nodes.
        numa_nodes: u32,
    },
    /// More vCPUs than ktstr supports.
    #[error("invalid topology: {cpus} vCPUs requested, at most {MAX_VCPUS} are supported")]
    TooManyCpus {
        /// vCPUs the topology would need.
        cpus: u64,
    },
}

/// A CPU topology: `numa_nodes` nodes, `llcs` LLCs in total, `cores` cores per LLC and
/// `threads` hardware threads per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Topology {
    /// NUMA nodes (one package each).
    pub numa_nodes: u32,
    /// Last-level caches in total, split evenly over the nodes.
    pub llcs: u32,
    /// Cores per LLC.
    pub cores: u32,
    /// Hardware threads per core.
    pub threads: u32,
}

/// Where one CPU sits in a [`Topology`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuPlace {
    /// Canonical CPU index (what the guest calls `cpuN`).
    pub cpu: u32,
    /// NUMA node (= package).
    pub node: u32,
    /// LLC index across the whole machine.
    pub llc: u32,
    /// LLC index within its node.
    pub llc_in_node: u32,
    /// Core index within its LLC.
    pub core: u32,
    /// Thread index within its core.
    pub thread: u32,
}

/// The bit layout of APIC IDs for a topology (see [`Topology::apic_layout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicLayout {
    /// Bits for the thread within a core (= SMT shift).
    pub thread_bits: u32,
    /// Bits for the core within an LLC.
    pub core_bits: u32,
    /// Bits for the LLC within a node.
    pub llc_bits: u32,
}

impl ApicLayout {
    /// Shift of the core field (the SMT level's shift).
    pub fn smt_shift(&self) -> u32 {
        self.thread_bits
    }
    /// Shift of the LLC field: CPUs whose IDs agree above it share an LLC.
    pub fn llc_shift(&self) -> u32 {
        self.thread_bits + self.core_bits
    }
    /// Shift of the package (node) field.
    pub fn pkg_shift(&self) -> u32 {
        self.thread_bits + self.core_bits + self.llc_bits
    }
}

/// Bits needed to hold `n` distinct values (0 for n <= 1).
pub fn ceil_log2(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

impl Topology {
    /// Builds and validates a topology.
    pub fn new(
        numa_nodes: u32,
        llcs: u32,
        cores: u32,
        threads: u32,
    ) -> Result<Self, TopologyError> {
        for (field, v) in [
            ("numa_nodes", numa_nodes),
            ("llcs", llcs),
            ("cores", cores),
            ("threads", threads),
        ] {
            if v == 0 {
                return Err(TopologyError::Zero { field });
            }
        }
        if llcs % numa_nodes != 0 {
            return Err(TopologyError::UnevenLlcs { llcs, numa_nodes });
        }
        let cpus = llcs as u64 * cores as u64 * threads as u64;
        if cpus > MAX_VCPUS as u64 {
            return Err(TopologyError::TooManyCpus { cpus });
        }
        Ok(Topology {
            numa_nodes,
            llcs,
            cores,
            threads,
        })
    }

    /// Parses `N,L,C,T` (the CLI form) or `{n}n{l}l{c}c{t}t` (the label form).
    pub fn parse(s: &str) -> Result<Self, TopologyError> {
        let t = s.trim();
        if t.contains(',') {
            Self::parse_csv(t)
        } else {
            Self::parse_label(t)
        }
    }

    fn parse_csv(s: &str) -> Result<Self, TopologyError> {
        let syntax = |why: String| TopologyError::Syntax {
            input: s.to_string(),
            why,
        };
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if parts.len() != 4 {
            return Err(syntax(format!("found {} fields, need 4", parts.len())));
        }
        let mut v = [0u32; 4];
        for (i, p) in parts.iter().enumerate() {
            v[i] = p
                .parse::<u32>()
                .map_err(|_| syntax(format!("{p:?} is not a positive integer")))?;
        }
        Self::new(v[0], v[1], v[2], v[3])
    }

    /// Parses the label form `1n2l4c2t`.
    pub fn parse_label(s: &str) -> Result<Self, TopologyError> {
        let syntax = |why: &str| TopologyError::Syntax {
            input: s.to_string(),
            why: why.to_string(),
        };
        let mut vals = [0u32; 4];
        let mut rest = s;
        for (i, unit) in ['n', 'l', 'c', 't'].into_iter().enumerate() {
            let end = rest
                .find(unit)
                .ok_or_else(|| syntax("not of the form {n}n{l}l{c}c{t}t"))?;
            vals[i] = rest[..end]
                .parse()
                .map_err(|_| syntax("each count must be a positive integer"))?;
            rest = &rest[end + 1..];
        }
        if !rest.is_empty() {
            return Err(syntax("trailing characters after the thread count"));
        }
        Self::new(vals[0], vals[1], vals[2], vals[3])
    }

    /// The label used in test names, e.g. `1n2l4c2t`.
    pub fn label(&self) -> String {
        format!(
            "{}n{}l{}c{}t",
            self.numa_nodes, self.llcs, self.cores, self.threads
        )
    }

    /// Total vCPUs.
    pub fn num_cpus(&self) -> u32 {
        self.llcs * self.cores * self.threads
    }

    /// LLCs per NUMA node.
    pub fn llcs_per_node(&self) -> u32 {
        self.llcs / self.numa_nodes
    }

    /// CPUs per NUMA node.
    pub fn cpus_per_node(&self) -> u32 {
        self.num_cpus() / self.numa_nodes
    }

    /// CPUs per LLC.
    pub fn cpus_per_llc(&self) -> u32 {
        self.cores * self.threads
    }

    /// Where canonical CPU `cpu` sits. Panics if `cpu >= num_cpus()` (a caller bug).
    pub fn place(&self, cpu: u32) -> CpuPlace {
        assert!(cpu < self.num_cpus(), "cpu {cpu} out of range");
        let thread = cpu % self.threads;
        let core = (cpu / self.threads) % self.cores;
        let llc = cpu / self.cpus_per_llc();
        let node = llc / self.llcs_per_node();
        CpuPlace {
            cpu,
            node,
            llc,
            llc_in_node: llc % self.llcs_per_node(),
            core,
            thread,
        }
    }

    /// Every CPU in canonical order.
    pub fn places(&self) -> impl Iterator<Item = CpuPlace> + '_ {
        (0..self.num_cpus()).map(|c| self.place(c))
    }

    /// The APIC ID bit layout: `node << pkg_shift | llc_in_node << llc_shift | core << smt_shift | thread`.
    pub fn apic_layout(&self) -> ApicLayout {
        ApicLayout {
            thread_bits: ceil_log2(self.threads),
            core_bits: ceil_log2(self.cores),
            llc_bits: ceil_log2(self.llcs_per_node()),
        }
    }

    /// The APIC ID of canonical CPU `cpu`.
    pub fn apic_id(&self, cpu: u32) -> u32 {
        let p = self.place(cpu);
        let l = self.apic_layout();
        (p.node << l.pkg_shift())
            | (p.llc_in_node << l.llc_shift())
            | (p.core << l.smt_shift())
            | p.thread
    }

    /// The largest APIC ID any CPU gets.
    pub fn max_apic_id(&self) -> u32 {
        self.apic_id(self.num_cpus() - 1)
    }

    /// Whether the APIC IDs exceed what xAPIC can address, so the guest needs x2APIC.
    pub fn needs_x2apic(&self) -> bool {
        self.max_apic_id() > MAX_XAPIC_ID
    }

    /// The CPUs of `node` as a Linux cpulist (`8-15`).
    pub fn node_cpulist(&self, node: u32) -> String {
        let n = self.cpus_per_node();
        cpulist_range(node * n, node * n + n - 1)
    }

    /// The CPUs sharing canonical CPU `cpu`'s LLC as a Linux cpulist.
    pub fn llc_cpulist(&self, cpu: u32) -> String {
        let per = self.cpus_per_llc();
        let first = cpu / per * per;
        cpulist_range(first, first + per - 1)
    }

    /// The SMT siblings of canonical CPU `cpu` as a Linux cpulist.
    pub fn sibling_cpulist(&self, cpu: u32) -> String {
        let first = cpu / self.threads * self.threads;
        cpulist_range(first, first + self.threads - 1)
    }
}

fn cpulist_range(a: u32, b: u32) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

impl Default for Topology {
    /// 1 node, 1 LLC, 2 cores, 1 thread: the default for tests that declare nothing.
    fn default() -> Self {
        Topology {
            numa_nodes: 1,
            llcs: 1,
            cores: 2,
            threads: 1,
        }
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

impl FromStr for Topology {
    type Err = TopologyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Topology::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_forms() {
        let t = Topology::parse("2,4,4,2").unwrap();
        assert_eq!(t, Topology::new(2, 4, 4, 2).unwrap());
        assert_eq!(t.label(), "2n4l4c2t");
        assert_eq!(Topology::parse("2n4l4c2t").unwrap(), t);
        assert_eq!(t.num_cpus(), 32);
    }

    #[test]
    fn rejects_bad_input_with_reasons() {
        for bad in [
            "",
            "1,2,3",
            "1,2,3,4,5",
            "a,1,1,1",
            "1,-1,1,1",
            "1n2l",
            "1n2l3c4tx",
        ] {
            let e = Topology::parse(bad).unwrap_err();
            assert!(matches!(e, TopologyError::Syntax { .. }), "{bad}: {e}");
            assert!(e.to_string().contains("expected NUMA_NODES,LLCS"), "{e}");
        }
        assert_eq!(
            Topology::parse("1,0,1,1").unwrap_err(),
            TopologyError::Zero { field: "llcs" }
        );
        assert!(matches!(
            Topology::parse("2,3,1,1").unwrap_err(),
            TopologyError::UnevenLlcs { .. }
        ));
        assert!(matches!(
            Topology::parse("1,16,16,1").unwrap_err(),
            TopologyError::TooManyCpus { cpus: 256 }
        ));
    }

    #[test]
    fn canonical_numbering_matches_the_spec_example() {
        // LLCs are counted in total: 2,4,2,2 is 16 CPUs, node1 = CPUs 8-15, cpu0's LLC = 0-3,
        // cpu5's siblings = 4-5; 2,2,2,2 is 8 CPUs with node1 = 4-7.
        assert_eq!(Topology::parse("2,2,2,2").unwrap().node_cpulist(1), "4-7");
        let t = Topology::parse("2,4,2,2").unwrap();
        assert_eq!(t.node_cpulist(1), "8-15");
        assert_eq!(t.llc_cpulist(0), "0-3");
        assert_eq!(t.sibling_cpulist(5), "4-5");
        let p = t.place(13);
        assert_eq!(
            (p.node, p.llc, p.llc_in_node, p.core, p.thread),
            (1, 3, 1, 0, 1)
        );
    }

    #[test]
    fn apic_ids_pack_fields() {
        let t = Topology::parse("2,4,2,2").unwrap();
        let l = t.apic_layout();
        assert_eq!((l.smt_shift(), l.llc_shift(), l.pkg_shift()), (1, 2, 3));
        let ids: Vec<u32> = (0..t.num_cpus()).map(|c| t.apic_id(c)).collect();
        assert_eq!(ids, (0..16).collect::<Vec<_>>());
        // Odd counts leave gaps, as on hardware.
        let t = Topology::parse("1,3,3,1").unwrap();
        let ids: Vec<u32> = (0..t.num_cpus()).map(|c| t.apic_id(c)).collect();
        assert_eq!(ids, vec![0, 1, 2, 4, 5, 6, 8, 9, 10]);
        // 1n14l9c2t needs 9 bits: x2APIC.
        let t = Topology::parse("1n14l9c2t").unwrap();
        assert!(t.needs_x2apic());
        assert!(!Topology::parse("2n8l8c2t").unwrap().needs_x2apic());
    }

    #[test]
    fn ceil_log2_edges() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(ceil_log2), [0, 1, 2, 2, 3, 3, 4]);
    }
}
