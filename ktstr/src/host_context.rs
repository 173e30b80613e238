//! The host a case ran on ([`HostContext`]): recorded in every sidecar and printed by
//! `cargo ktstr show-host`, so drift between runs (a THP policy, a sched tunable, the kernel)
//! can be told apart from a scheduler change.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The host a case ran on.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostContext {
    /// `/proc/cpuinfo` model name.
    pub cpu_model: Option<String>,
    /// `/proc/cpuinfo` vendor_id.
    pub cpu_vendor: Option<String>,
    /// MemTotal.
    pub total_memory_kb: Option<u64>,
    /// HugePages_Total.
    pub hugepages_total: Option<u64>,
    /// HugePages_Free.
    pub hugepages_free: Option<u64>,
    /// Hugepagesize.
    pub hugepages_size_kb: Option<u64>,
    /// `transparent_hugepage/enabled` (the bracketed choice).
    pub thp_enabled: Option<String>,
    /// `transparent_hugepage/defrag`.
    pub thp_defrag: Option<String>,
    /// Every readable `/proc/sys/kernel/sched_*`.
    pub sched_tunables: BTreeMap<String, String>,
    /// `/sys/devices/system/cpu/online`.
    pub online_cpus: Option<String>,
    /// NUMA nodes.
    pub numa_nodes: Option<u32>,
    /// CPU 0's cpufreq governor.
    pub cpufreq_governor: Option<String>,
    /// uname sysname.
    pub kernel_name: Option<String>,
    /// uname release.
    pub kernel_release: Option<String>,
    /// uname machine.
    pub arch: Option<String>,
    /// `/proc/cmdline`.
    pub kernel_cmdline: Option<String>,
    /// Allocator statistics (not collected).
    pub heap_state: Option<String>,
}

fn read(p: &str) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.split(':').next().is_some_and(|k| k.trim() == key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim())
}

fn kb(text: &str, key: &str) -> Option<u64> {
    field(text, key)?.split_whitespace().next()?.parse().ok()
}

fn bracketed(s: Option<String>) -> Option<String> {
    let s = s?;
    Some(match (s.find('['), s.find(']')) {
        (Some(a), Some(b)) if a < b => s[a + 1..b].to_string(),
        _ => s,
    })
}

fn uname() -> (Option<String>, Option<String>, Option<String>) {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return (None, None, None);
    }
    let s = |f: &[libc::c_char]| {
        let b: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        Some(String::from_utf8_lossy(&b).into_owned())
    };
    (s(&u.sysname), s(&u.release), s(&u.machine))
}

impl HostContext {
    /// Collects the running host's context (missing files leave fields null).
    pub fn collect() -> Self {
        let cpuinfo = read("/proc/cpuinfo").unwrap_or_default();
        let meminfo = read("/proc/meminfo").unwrap_or_default();
        let mut sched_tunables = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir("/proc/sys/kernel") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("sched_") {
                    if let Some(v) = read(&e.path().to_string_lossy()) {
                        sched_tunables.insert(name, v);
                    }
                }
            }
        }
        let numa_nodes = std::fs::read_dir("/sys/devices/system/node")
            .ok()
            .map(|rd| {
                rd.flatten()
                    .filter(|e| {
                        let n = e.file_name();
                        let n = n.to_string_lossy();
                        n.starts_with("node") && n[4..].parse::<u32>().is_ok()
                    })
                    .count() as u32
            });
        let (kernel_name, kernel_release, arch) = uname();
        HostContext {
            cpu_model: field(&cpuinfo, "model name").map(str::to_string),
            cpu_vendor: field(&cpuinfo, "vendor_id").map(str::to_string),
            total_memory_kb: kb(&meminfo, "MemTotal"),
            hugepages_total: kb(&meminfo, "HugePages_Total"),
            hugepages_free: kb(&meminfo, "HugePages_Free"),
            hugepages_size_kb: kb(&meminfo, "Hugepagesize"),
            thp_enabled: bracketed(read("/sys/kernel/mm/transparent_hugepage/enabled")),
            thp_defrag: bracketed(read("/sys/kernel/mm/transparent_hugepage/defrag")),
            sched_tunables,
            online_cpus: read("/sys/devices/system/cpu/online"),
            numa_nodes,
            cpufreq_governor: read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
            kernel_name,
            kernel_release,
            arch,
            kernel_cmdline: read("/proc/cmdline"),
            heap_state: None,
        }
    }
}

impl fmt::Display for HostContext {
    /// One `key: value` line per field (missing ones as `-`), the sched tunables last.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn opt<T: fmt::Display>(v: &Option<T>) -> String {
            v.as_ref()
                .map_or_else(|| "-".to_string(), |v| v.to_string())
        }
        let kib = |v: &Option<u64>| v.map_or_else(|| "-".to_string(), |k| format!("{k} kB"));
        writeln!(
            f,
            "cpu: {} ({})",
            opt(&self.cpu_model),
            opt(&self.cpu_vendor)
        )?;
        writeln!(f, "online cpus: {}", opt(&self.online_cpus))?;
        writeln!(f, "numa nodes: {}", opt(&self.numa_nodes))?;
        writeln!(f, "cpufreq governor: {}", opt(&self.cpufreq_governor))?;
        writeln!(f, "memory: {}", kib(&self.total_memory_kb))?;
        writeln!(
            f,
            "hugepages: {} total, {} free, {} each",
            opt(&self.hugepages_total),
            opt(&self.hugepages_free),
            kib(&self.hugepages_size_kb)
        )?;
        writeln!(
            f,
            "transparent hugepages: enabled {}, defrag {}",
            opt(&self.thp_enabled),
            opt(&self.thp_defrag)
        )?;
        writeln!(
            f,
            "kernel: {} {} {}",
            opt(&self.kernel_name),
            opt(&self.kernel_release),
            opt(&self.arch)
        )?;
        writeln!(f, "kernel cmdline: {}", opt(&self.kernel_cmdline))?;
        writeln!(f, "sched tunables ({}):", self.sched_tunables.len())?;
        for (k, v) in &self.sched_tunables {
            writeln!(f, "  {k} = {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_field_and_marks_missing_ones() {
        let mut h = HostContext {
            cpu_model: Some("Model X".into()),
            cpu_vendor: Some("GenuineIntel".into()),
            total_memory_kb: Some(1024),
            ..Default::default()
        };
        h.sched_tunables
            .insert("sched_rt_runtime_us".into(), "950000".into());
        let text = h.to_string();
        assert!(text.contains("cpu: Model X (GenuineIntel)\n"), "{text}");
        assert!(text.contains("memory: 1024 kB\n"), "{text}");
        assert!(text.contains("numa nodes: -\n"), "{text}");
        assert!(
            text.contains("sched tunables (1):\n  sched_rt_runtime_us = 950000\n"),
            "{text}"
        );
    }

    #[test]
    fn the_live_host_has_the_basics() {
        let h = HostContext::collect();
        assert!(h.cpu_vendor.is_some() && h.kernel_release.is_some() && h.online_cpus.is_some());
        assert!(h.total_memory_kb.unwrap_or(0) > 0);
    }
}
