//! cgroup v2 management for test cgroups: create, remove, cpusets, task moves.
//!
//! [`CgroupOps`] is a trait so scenario logic can be unit-tested without a cgroup filesystem;
//! [`CgroupFs`] is the real implementation over `/sys/fs/cgroup`.

use std::fs;
use std::path::{Path, PathBuf};

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {op} on {path}: {source}")]
pub struct CgroupError {
    /// The operation.
    pub op: &'static str,
    /// The file or directory involved.
    pub path: PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

/// cgroup operations on paths relative to a test root (`"cg0"`, `"outer/inner"`).
pub trait CgroupOps: Send + Sync + std::fmt::Debug {
    /// Creates a cgroup (and its parents), with the cpuset and cpu controllers enabled for it.
    fn create(&self, rel: &str) -> Result<(), CgroupError>;
    /// Removes a cgroup and its children, moving any remaining tasks to the test root first.
    fn remove(&self, rel: &str) -> Result<(), CgroupError>;
    /// Restricts a cgroup to `cpus` and `mems`.
    fn set_cpuset(&self, rel: &str, cpus: &[u32], mems: &[u32]) -> Result<(), CgroupError>;
    /// Resets a cgroup's cpuset to its parent's.
    fn clear_cpuset(&self, rel: &str) -> Result<(), CgroupError>;
    /// Moves a task into a cgroup.
    fn move_task(&self, rel: &str, pid: i32) -> Result<(), CgroupError>;
    /// The tasks in a cgroup.
    fn procs(&self, rel: &str) -> Result<Vec<i32>, CgroupError>;
    /// The absolute directory of a cgroup.
    fn path(&self, rel: &str) -> PathBuf;
}

/// Formats CPUs as a Linux cpulist (`0-3,8`).
pub fn cpulist(cpus: &[u32]) -> String {
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// Parses a Linux cpulist (`0-3,8`); `None` if malformed.
pub fn parse_cpulist(s: &str) -> Option<Vec<u32>> {
    let s = s.trim();
    if s.is_empty() {
        return Some(Vec::new());
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if a > b {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// The real cgroup v2 filesystem, rooted at a test directory such as `/sys/fs/cgroup/ktstr`.
#[derive(Debug, Clone)]
pub struct CgroupFs {
    root: PathBuf,
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl CgroupFs {
    /// Uses (and creates) `root`, enabling cpuset and cpu for its children.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, CgroupError> {
        let root = root.into();
        let fs = CgroupFs { root };
        fs.ensure_dir(&fs.root.clone())?;
        Ok(fs)
    }

    /// Uses `root` without touching the filesystem: directories are created by the first
    /// [`CgroupOps::create`] (so a `Ctx` can be built on a host without cgroup access).
    pub fn lazy(root: impl Into<PathBuf>) -> Self {
        CgroupFs { root: root.into() }
    }

    /// The test root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ensure_dir(&self, dir: &Path) -> Result<(), CgroupError> {
        if let Some(parent) = dir.parent() {
            if !dir.exists() && parent != Path::new("/") {
                self.ensure_dir(parent)?;
            }
            // Enable controllers in the parent so `dir` gets cpuset/cpu files. Best effort:
            // the root may not offer a controller (e.g. cpu with RT tasks present).
            for c in ["+cpuset", "+cpu"] {
                let _ = fs::write(parent.join("cgroup.subtree_control"), c);
            }
        }
        if !dir.exists() {
            fs::create_dir(dir).map_err(err("mkdir", dir))?;
        }
        Ok(())
    }
}

impl CgroupOps for CgroupFs {
    fn create(&self, rel: &str) -> Result<(), CgroupError> {
        self.ensure_dir(&self.path(rel))
    }

    fn remove(&self, rel: &str) -> Result<(), CgroupError> {
        let dir = self.path(rel);
        if !dir.exists() {
            return Ok(());
        }
        // Children first.
        if let Ok(rd) = fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let child = format!("{rel}/{}", e.file_name().to_string_lossy());
                    self.remove(&child)?;
                }
            }
        }
        for pid in self.procs(rel).unwrap_or_default() {
            let _ = fs::write(self.root.join("cgroup.procs"), pid.to_string());
        }
        fs::remove_dir(&dir).map_err(err("rmdir", &dir))
    }

    fn set_cpuset(&self, rel: &str, cpus: &[u32], mems: &[u32]) -> Result<(), CgroupError> {
        let dir = self.path(rel);
        let f = dir.join("cpuset.cpus");
        fs::write(&f, cpulist(cpus)).map_err(err("write", &f))?;
        let f = dir.join("cpuset.mems");
        fs::write(&f, cpulist(mems)).map_err(err("write", &f))
    }

    fn clear_cpuset(&self, rel: &str) -> Result<(), CgroupError> {
        let dir = self.path(rel);
        for name in ["cpuset.cpus", "cpuset.mems"] {
            let f = dir.join(name);
            // An empty write means "the parent's", but the kernel refuses it (ENOSPC) while
            // the cgroup has tasks; writing the parent's effective set has the same effect.
            let parent = dir
                .parent()
                .and_then(|p| fs::read_to_string(p.join(format!("{name}.effective"))).ok())
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "\n".into());
            fs::write(&f, parent).map_err(err("write", &f))?;
        }
        Ok(())
    }

    fn move_task(&self, rel: &str, pid: i32) -> Result<(), CgroupError> {
        let f = self.path(rel).join("cgroup.procs");
        fs::write(&f, pid.to_string()).map_err(err("write", &f))
    }

    fn procs(&self, rel: &str) -> Result<Vec<i32>, CgroupError> {
        let f = self.path(rel).join("cgroup.procs");
        let s = fs::read_to_string(&f).map_err(err("read", &f))?;
        Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists_round_trip() {
        assert_eq!(cpulist(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(cpulist(&[5]), "5");
        assert_eq!(cpulist(&[]), "");
        assert_eq!(cpulist(&[3, 1, 2, 2]), "1-3");
        assert_eq!(
            parse_cpulist("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpulist("\n"), Some(vec![]));
        assert_eq!(parse_cpulist("3-1"), None);
        assert_eq!(parse_cpulist("a"), None);
    }

    #[test]
    fn plain_directories_stand_in_for_cgroupfs() {
        // Outside a cgroup filesystem the control files are ordinary files: the directory
        // logic (nesting, removal order) still runs.
        let d = tempfile::tempdir().unwrap();
        let fs = CgroupFs::new(d.path().join("ktstr")).unwrap();
        fs.create("outer/inner").unwrap();
        assert!(fs.path("outer/inner").is_dir());
        fs.set_cpuset("outer", &[0, 1], &[0]).unwrap();
        assert_eq!(
            std::fs::read_to_string(fs.path("outer").join("cpuset.cpus")).unwrap(),
            "0-1"
        );
        // Control files make rmdir of a plain directory fail; clean them as cgroupfs would.
        for f in ["cpuset.cpus", "cpuset.mems", "cgroup.subtree_control"] {
            let _ = std::fs::remove_file(fs.path("outer").join(f));
        }
        let _ = std::fs::remove_file(fs.path("outer/inner").join("cgroup.subtree_control"));
        fs.remove("outer").unwrap();
        assert!(!fs.path("outer").exists());
    }
}
