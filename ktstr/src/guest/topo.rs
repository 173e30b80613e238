//! What topology the guest kernel actually sees (from sysfs), and how it differs from the
//! one a test declared.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cgroup::parse_cpulist;
use crate::topology::Topology;

/// One CPU as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysCpu {
    /// CPU number.
    pub cpu: u32,
    /// `topology/physical_package_id`.
    pub package: i64,
    /// `topology/core_id`.
    pub core_id: i64,
    /// `topology/thread_siblings_list`.
    pub siblings: Vec<u32>,
    /// `cache/index3/shared_cpu_list` (empty if there is no L3 entry).
    pub llc: Vec<u32>,
}

/// The guest's view of its topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SysTopology {
    /// `cpu/online`.
    pub online: Vec<u32>,
    /// Per CPU.
    pub cpus: Vec<SysCpu>,
    /// `node*/cpulist`, by node number.
    pub nodes: Vec<(u32, Vec<u32>)>,
}

fn read(p: &Path) -> String {
    fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn list(p: &Path) -> Vec<u32> {
    parse_cpulist(&read(p)).unwrap_or_default()
}

impl SysTopology {
    /// Reads `/sys/devices/system` (or a copy of it rooted at `root`).
    pub fn read(root: &Path) -> SysTopology {
        let online = list(&root.join("cpu/online"));
        let cpus = online
            .iter()
            .map(|&c| {
                let d = root.join(format!("cpu/cpu{c}"));
                SysCpu {
                    cpu: c,
                    package: read(&d.join("topology/physical_package_id"))
                        .parse()
                        .unwrap_or(-1),
                    core_id: read(&d.join("topology/core_id")).parse().unwrap_or(-1),
                    siblings: list(&d.join("topology/thread_siblings_list")),
                    llc: list(&d.join("cache/index3/shared_cpu_list")),
                }
            })
            .collect();
        let mut nodes = Vec::new();
        if let Ok(rd) = fs::read_dir(root.join("node")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(n) = name
                    .strip_prefix("node")
                    .and_then(|n| n.parse::<u32>().ok())
                {
                    nodes.push((n, list(&e.path().join("cpulist"))));
                }
            }
        }
        nodes.sort();
        SysTopology {
            online,
            cpus,
            nodes,
        }
    }

    /// Reads the running kernel's view.
    pub fn current() -> SysTopology {
        Self::read(Path::new("/sys/devices/system"))
    }

    /// Every way this view differs from `topo` (empty when it matches).
    pub fn mismatches(&self, topo: &Topology) -> Vec<String> {
        let mut m = Vec::new();
        let n = topo.num_cpus();
        let want_online: Vec<u32> = (0..n).collect();
        if self.online != want_online {
            m.push(format!(
                "online CPUs {:?}, expected 0-{}",
                crate::cgroup::cpulist(&self.online),
                n - 1
            ));
        }
        let want_nodes: Vec<(u32, Vec<u32>)> = (0..topo.numa_nodes)
            .map(|node| {
                let per = topo.cpus_per_node();
                (node, (node * per..(node + 1) * per).collect())
            })
            .collect();
        if self.nodes != want_nodes {
            m.push(format!(
                "NUMA nodes {}, expected {}",
                fmt_nodes(&self.nodes),
                fmt_nodes(&want_nodes)
            ));
        }
        for c in &self.cpus {
            if c.cpu >= n {
                continue;
            }
            let p = topo.place(c.cpu);
            let sib: Vec<u32> = (c.cpu / topo.threads * topo.threads..)
                .take(topo.threads as usize)
                .collect();
            if c.siblings != sib {
                m.push(format!(
                    "cpu{} SMT siblings {:?}, expected {:?}",
                    c.cpu, c.siblings, sib
                ));
            }
            let per = topo.cpus_per_llc();
            let llc: Vec<u32> = (p.llc * per..(p.llc + 1) * per).collect();
            if c.llc != llc {
                m.push(format!("cpu{} LLC {:?}, expected {:?}", c.cpu, c.llc, llc));
            }
            if c.package != p.node as i64 {
                m.push(format!(
                    "cpu{} package {}, expected {}",
                    c.cpu, c.package, p.node
                ));
            }
        }
        // Core ids must be unique per package apart from SMT siblings.
        for a in &self.cpus {
            for b in &self.cpus {
                if a.cpu < b.cpu
                    && a.package == b.package
                    && a.core_id == b.core_id
                    && !a.siblings.contains(&b.cpu)
                {
                    m.push(format!(
                        "cpu{} and cpu{} share core id {} without being SMT siblings",
                        a.cpu, b.cpu, a.core_id
                    ));
                }
            }
        }
        m
    }
}

fn fmt_nodes(n: &[(u32, Vec<u32>)]) -> String {
    n.iter()
        .map(|(i, c)| format!("node{i}={}", crate::cgroup::cpulist(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a fake sysfs for `topo` (optionally with one LLC wrong).
    fn fake(topo: &Topology, break_llc: bool) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let n = topo.num_cpus();
        let w = |p: &str, s: String| {
            let p = r.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, s).unwrap();
        };
        w("cpu/online", format!("0-{}", n - 1));
        for c in 0..n {
            let p = topo.place(c);
            w(
                &format!("cpu/cpu{c}/topology/physical_package_id"),
                p.node.to_string(),
            );
            w(
                &format!("cpu/cpu{c}/topology/core_id"),
                ((p.llc_in_node << 4) | p.core).to_string(),
            );
            w(
                &format!("cpu/cpu{c}/topology/thread_siblings_list"),
                topo.sibling_cpulist(c),
            );
            let llc = if break_llc && c == 1 {
                "0-99".into()
            } else {
                topo.llc_cpulist(c)
            };
            w(&format!("cpu/cpu{c}/cache/index3/shared_cpu_list"), llc);
        }
        for node in 0..topo.numa_nodes {
            w(&format!("node/node{node}/cpulist"), topo.node_cpulist(node));
        }
        d
    }

    #[test]
    fn matching_view_has_no_mismatches() {
        for s in ["1,1,1,1", "1,3,3,1", "2,4,2,2", "1,2,4,2"] {
            let t = Topology::parse(s).unwrap();
            let d = fake(&t, false);
            let v = SysTopology::read(d.path());
            assert_eq!(v.mismatches(&t), Vec::<String>::new(), "{s}");
        }
    }

    #[test]
    fn a_wrong_llc_and_a_wrong_shape_are_reported() {
        let t = Topology::parse("1,2,2,1").unwrap();
        let v = SysTopology::read(fake(&t, true).path());
        let m = v.mismatches(&t);
        assert!(m.iter().any(|s| s.contains("cpu1 LLC")), "{m:?}");
        // The same view judged against a 2-node topology.
        let m = v.mismatches(&Topology::parse("2,2,2,1").unwrap());
        assert!(m.iter().any(|s| s.contains("NUMA nodes")), "{m:?}");
    }
}
