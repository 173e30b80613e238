//! CPU → LLC mapping read from sysfs.
//!
//! The BPF side only needs a dense LLC index per CPU. A CPU's LLC is the
//! highest-level data/unified cache in `cpuN/cache/index*/`; two CPUs share
//! an LLC when that cache's `shared_cpu_list` is the same string, so no cpulist
//! parsing is needed. Indices are handed out in CPU order, so LLC 0 holds CPU 0.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// Where the kernel exposes per-CPU cache information.
pub const SYSFS_CPU_ROOT: &str = "/sys/devices/system/cpu";

/// Dense CPU → LLC assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlcMap {
    /// `cpu_llc[cpu]` is the LLC index of `cpu`, in `0..nr_llcs`.
    pub cpu_llc: Vec<u32>,
    /// Number of distinct LLCs found (at least 1).
    pub nr_llcs: u32,
}

impl LlcMap {
    /// Every CPU in one LLC: the map used without `--llc`.
    pub fn single(nr_cpus: usize) -> Self {
        LlcMap {
            cpu_llc: vec![0; nr_cpus],
            nr_llcs: 1,
        }
    }

    /// Reads the LLC of CPUs `0..nr_cpus` under `root` (normally
    /// [`SYSFS_CPU_ROOT`]). CPUs without cache information (offline, or a
    /// kernel without cacheinfo) join LLC 0.
    pub fn from_sysfs(root: &Path, nr_cpus: usize) -> Self {
        let mut ids: HashMap<String, u32> = HashMap::new();
        let mut cpu_llc = Vec::with_capacity(nr_cpus);
        for cpu in 0..nr_cpus {
            let llc = match llc_key(root, cpu) {
                Some(key) => {
                    let next = ids.len() as u32;
                    *ids.entry(key).or_insert(next)
                }
                None => 0,
            };
            cpu_llc.push(llc);
        }
        let nr_llcs = (ids.len() as u32).max(1);
        LlcMap { cpu_llc, nr_llcs }
    }

    /// Folds indices into `0..max` when there are more LLCs than the BPF side
    /// has queues for. Returns whether anything was folded.
    pub fn fold(&mut self, max: u32) -> bool {
        if self.nr_llcs <= max {
            return false;
        }
        for llc in &mut self.cpu_llc {
            *llc %= max;
        }
        self.nr_llcs = max;
        true
    }
}

/// Identifies the LLC of `cpu`: its highest-level non-instruction cache's
/// `shared_cpu_list`, prefixed with the level so different levels never match.
fn llc_key(root: &Path, cpu: usize) -> Option<String> {
    let dir = root.join(format!("cpu{cpu}/cache"));
    let mut best: Option<(u32, String)> = None;
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("index") {
            continue;
        }
        let p = entry.path();
        let read = |f: &str| {
            fs::read_to_string(p.join(f))
                .ok()
                .map(|s| s.trim().to_owned())
        };
        if read("type").as_deref() == Some("Instruction") {
            continue;
        }
        let Some(level) = read("level").and_then(|l| l.parse::<u32>().ok()) else {
            continue;
        };
        let Some(shared) = read("shared_cpu_list") else {
            continue;
        };
        if best.as_ref().is_none_or(|(l, _)| level > *l) {
            best = Some((level, shared));
        }
    }
    best.map(|(level, shared)| format!("L{level}:{shared}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(root: &Path, cpu: usize, index: u32, level: u32, ty: &str, shared: &str) {
        let d = root.join(format!("cpu{cpu}/cache/index{index}"));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("level"), format!("{level}\n")).unwrap();
        fs::write(d.join("type"), format!("{ty}\n")).unwrap();
        fs::write(d.join("shared_cpu_list"), format!("{shared}\n")).unwrap();
    }

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("scx-demo-topo-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn two_llcs_in_cpu_order() {
        let root = tmpdir("two");
        for cpu in 0..4 {
            cache(&root, cpu, 0, 1, "Data", &cpu.to_string());
            cache(&root, cpu, 1, 1, "Instruction", &cpu.to_string());
            let l3 = if cpu < 2 { "0-1" } else { "2-3" };
            cache(&root, cpu, 3, 3, "Unified", l3);
        }
        let m = LlcMap::from_sysfs(&root, 4);
        assert_eq!(m.cpu_llc, vec![0, 0, 1, 1]);
        assert_eq!(m.nr_llcs, 2);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn missing_cacheinfo_means_llc0() {
        let root = tmpdir("missing");
        cache(&root, 1, 0, 2, "Unified", "1");
        let m = LlcMap::from_sysfs(&root, 3);
        // CPU 1 is the first (and only) LLC seen, so it gets index 0 too.
        assert_eq!(m.cpu_llc, vec![0, 0, 0]);
        assert_eq!(m.nr_llcs, 1);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn fold_caps_llc_count() {
        let mut m = LlcMap {
            cpu_llc: vec![0, 1, 2, 3, 4],
            nr_llcs: 5,
        };
        assert!(m.fold(2));
        assert_eq!(m.cpu_llc, vec![0, 1, 0, 1, 0]);
        assert_eq!(m.nr_llcs, 2);
        assert!(!m.fold(2));
        assert_eq!(LlcMap::single(3).cpu_llc, vec![0, 0, 0]);
    }
}
