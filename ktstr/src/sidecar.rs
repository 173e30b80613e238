//! Sidecars: one JSON file per case, written by the host after the VM ends, under
//! `{CARGO_TARGET_DIR or target}/ktstr/{kernel}-{project_commit}/` (or `KTSTR_SIDECAR_DIR`).
//!
//! Writes are atomic (temp file in the same directory, fsync, rename) and every case has its
//! own file name (`{test}-{variant_hash:016x}.ktstr.json`), so concurrent cases never
//! clobber each other.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::assert::StimulusEvent;
use crate::assert::{Assert, AssertDetail, ScenarioStats};

pub use crate::host_context::HostContext;

/// Wall-clock phases of one case, in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Durations {
    /// VM setup plus kernel boot up to the guest init.
    pub boot_ms: u64,
    /// Guest init to the guest's end (scheduler start, body, result).
    pub run_ms: u64,
    /// Host teardown after the guest ended.
    pub teardown_ms: u64,
    /// Everything.
    pub total_ms: u64,
    /// The guest kernel's own uptime when its init started (from init's hello): the part of
    /// `boot_ms` the kernel's clock saw. Absent in sidecars written before it existed.
    #[serde(default)]
    pub guest_boot_ms: Option<u64>,
}

/// One case's sidecar (library spec §6). Readers tolerate missing fields (they take their
/// defaults), so sidecars written before a field existed still load.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sidecar {
    /// Bare test function name.
    pub test_name: String,
    /// Full case name.
    pub case_name: String,
    /// Scenario label (`eevdf`, `scx-demo+llc`).
    pub scenario: String,
    /// Topology label.
    pub topology: String,
    /// Scheduler name.
    pub scheduler: String,
    /// Active flags.
    pub active_flags: Vec<String>,
    /// Swept work type, if any.
    pub work_type: Option<String>,
    /// Payload, if any.
    pub payload: Option<String>,
    /// Work types the scenario's cgroups ran (from the stats).
    pub work_types: Vec<String>,
    /// Verdict (before `expect_err` inversion).
    pub passed: bool,
    /// Skipped.
    pub skipped: bool,
    /// Inconclusive.
    pub inconclusive: bool,
    /// Whether the test expects failure.
    pub expect_err: bool,
    /// The diagnosis a failure must carry (`expect_err = "Kind: text"`), when named.
    #[serde(default)]
    pub expect_err_match: Option<String>,
    /// Reasons.
    pub details: Vec<AssertDetail>,
    /// What the scenario measured.
    pub stats: Option<ScenarioStats>,
    /// What each phase measured: 0 = BASELINE (before the first step), k = step k−1.
    pub phases: Vec<crate::assert::PhaseStats>,
    /// Payload metrics (not yet collected: empty).
    pub metrics: Vec<serde_json::Value>,
    /// Ops and step boundaries.
    pub stimulus_events: Vec<StimulusEvent>,
    /// Monitor summary (later).
    pub monitor: Option<serde_json::Value>,
    /// Verifier statistics (later).
    pub verifier_stats: Option<serde_json::Value>,
    /// KVM statistics (later).
    pub kvm_stats: Option<serde_json::Value>,
    /// Thresholds the case was judged with.
    pub thresholds: Assert,
    /// Applied sysctls (`key=value`).
    pub sysctls: Vec<String>,
    /// Kernel command-line additions.
    pub kargs: Vec<String>,
    /// Guest kernel release.
    pub kernel_version: String,
    /// Kernel source commit, when known.
    pub kernel_commit: Option<String>,
    /// Project commit (7 hex, `-dirty`), or `unknown`.
    pub project_commit: String,
    /// Scheduler commit (null for now).
    pub scheduler_commit: Option<String>,
    /// The scheduler binary that ran (null for EEVDF and kernel built-ins).
    #[serde(default)]
    pub scheduler_binary: Option<BinaryIdentity>,
    /// The ops name sched_ext reported attached (`/sys/kernel/sched_ext/root/ops`); null for
    /// EEVDF or when the scheduler never attached.
    #[serde(default)]
    pub scheduler_ops: Option<String>,
    /// Milliseconds from starting the scheduler to sched_ext reporting it enabled.
    #[serde(default)]
    pub scheduler_enable_ms: Option<u64>,
    /// RFC 3339 UTC.
    pub timestamp: String,
    /// Run marker.
    pub run_id: String,
    /// `local` or `ci`.
    pub run_source: String,
    /// The VM backend that ran the case (`kvm` or `qemu`), and qemu's accelerator.
    #[serde(default)]
    pub backend: String,
    /// Where the VM ran on the host: its tier (library spec §9), host CPUs, vCPU pins,
    /// hugepages, RT, how long it waited for locks, and what perf mode could not do.
    #[serde(default)]
    pub placement: Option<crate::placement::PlacementRecord>,
    /// Host teardown, ms.
    pub cleanup_duration_ms: u64,
    /// The test's `cleanup_budget_ms`, when it declares one (a teardown over it fails the case).
    pub cleanup_budget_ms: Option<u64>,
    /// Phase durations.
    pub durations: Durations,
    /// The host.
    pub host: Option<HostContext>,
    /// With `auto_repro`, on a failed case: its second run, sampled finer by the monitor.
    #[serde(default)]
    pub repro: Option<ReproLink>,
    /// On the sidecar of an `auto_repro` second run: the file name of the first run's sidecar
    /// (in the same directory).
    #[serde(default)]
    pub repro_of: Option<String>,
}

/// Where a failed `auto_repro` case's second run is, and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReproLink {
    /// The second run's sidecar file name, in the same directory (null: it could not boot;
    /// `error` says why).
    pub sidecar: Option<String>,
    /// Whether the second run passed (the failure did not reproduce).
    pub passed: bool,
    /// The second run's failure reasons, `Kind: message`.
    pub reasons: Vec<String>,
    /// The monitor's sampling period in the second run, in ms.
    pub monitor_period_ms: u64,
    /// Why the second run could not run, when it could not.
    pub error: Option<String>,
}

/// The file-name ending of an `auto_repro` second run's sidecar. Not [`crate::runs`]'
/// `.ktstr.json`: a re-run is evidence about one failure, not another run of the case for
/// `stats` to pool.
pub const REPRO_SUFFIX: &str = ".ktstr-repro.json";

/// Which file ran: its host path and the SHA-256 of its contents.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryIdentity {
    /// Host path.
    pub path: String,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
}

impl BinaryIdentity {
    /// Hashes the file at `path`.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        std::io::copy(&mut std::fs::File::open(path)?, &mut h)?;
        let sha256 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(BinaryIdentity {
            path: path.display().to_string(),
            sha256,
        })
    }
}

/// The project commit of the repository containing `dir`: HEAD's 7-hex id, `-dirty` when
/// tracked files differ from HEAD, `unknown` outside a repository.
///
/// HEAD comes from `gix`. The dirty check asks `git diff-index --quiet HEAD` when a `git`
/// binary is present (gix's full status walk is a large dependency for one bit); without
/// `git` the commit is reported clean.
pub fn project_commit(dir: &Path) -> String {
    let Ok(repo) = gix::discover(dir) else {
        return "unknown".into();
    };
    let Ok(id) = repo.head_id() else {
        return "unknown".into();
    };
    let hex = id.detach().to_hex_with_len(7).to_string();
    let workdir = repo
        .workdir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.to_path_buf());
    let dirty = std::process::Command::new("git")
        .args(["diff-index", "--quiet", "HEAD", "--"])
        .current_dir(&workdir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.code() == Some(1));
    if dirty {
        format!("{hex}-dirty")
    } else {
        hex
    }
}

/// `2026-11-28T06:42:18Z` for `t` (humantime's RFC 3339, whole seconds).
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// SipHash-1-3 with zero keys (the siphasher crate): a fixed algorithm, so variant hashes,
/// which name sidecar files, stay stable across Rust releases (std's `DefaultHasher` makes no
/// such promise).
pub fn siphash13(data: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0, 0);
    h.write(data);
    h.finish()
}

impl Sidecar {
    /// The stable hash of what distinguishes this case from its siblings.
    pub fn variant_hash(&self) -> u64 {
        let mut sysctls = self.sysctls.clone();
        sysctls.sort();
        let mut kargs = self.kargs.clone();
        kargs.sort();
        let key = [
            self.scenario.clone(),
            self.topology.clone(),
            self.kernel_version.clone(),
            self.scheduler.clone(),
            self.payload.clone().unwrap_or_default(),
            self.work_type.clone().unwrap_or_default(),
            self.active_flags.join("+"),
            sysctls.join(","),
            kargs.join(","),
        ]
        .join("\u{1f}");
        siphash13(key.as_bytes())
    }

    /// `{test}-{variant_hash:016x}.ktstr.json`; an `auto_repro` second run ends in
    /// [`REPRO_SUFFIX`] instead.
    pub fn file_name(&self) -> String {
        let safe: String = self
            .test_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let suffix = if self.repro_of.is_some() {
            REPRO_SUFFIX
        } else {
            ".ktstr.json"
        };
        format!("{safe}-{:016x}{suffix}", self.variant_hash())
    }
}

/// The runs root, the one rule both the sidecar writer and the commands that read runs
/// follow: `{CARGO_TARGET_DIR}/ktstr` when set; else the target directory the running binary
/// was built in (`<target>/<profile>/deps/<binary>`: cargo and nextest run a package's tests
/// from the package's directory, where a relative `target` would be the wrong place, and a
/// `cargo ktstr` built in the workspace reads what its tests wrote); else (an installed
/// `cargo-ktstr`) the nearest `target/ktstr` above the current directory; else `target/ktstr`.
pub fn runs_root() -> PathBuf {
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR").filter(|t| !t.is_empty()) {
        return PathBuf::from(t).join("ktstr");
    }
    let exe = std::env::current_exe().unwrap_or_default();
    if let Some(t) = target_of_exe(&exe) {
        return t.join("ktstr");
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    cwd.ancestors()
        .map(|d| d.join("target/ktstr"))
        .find(|d| d.is_dir())
        .unwrap_or_else(|| PathBuf::from("target/ktstr"))
}

/// `<target>` for an executable at `<target>/<profile>/deps/<name>` or
/// `<target>/<profile>/<name>`.
fn target_of_exe(exe: &Path) -> Option<PathBuf> {
    let mut dir = exe.parent()?;
    if dir.file_name()? == "deps" {
        dir = dir.parent()?;
    }
    let target = dir.parent()?;
    (target.join("CACHEDIR.TAG").is_file() || target.file_name()? == "target")
        .then(|| target.to_path_buf())
}

/// The directory this sidecar goes to: `KTSTR_SIDECAR_DIR`, else
/// `{runs_root}/{kernel}-{project_commit}`.
pub fn run_dir(kernel: &str, commit: &str) -> PathBuf {
    match std::env::var_os("KTSTR_SIDECAR_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let k: String = kernel
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || ".-_+".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            runs_root().join(format!(
                "{}-{commit}",
                if k.is_empty() { "unknown" } else { &k }
            ))
        }
    }
}

/// `KTSTR_RUN_ID`, else `NEXTEST_RUN_ID`, else the parent PID (one `cargo test`).
pub fn run_id() -> String {
    std::env::var("KTSTR_RUN_ID")
        .or_else(|_| std::env::var("NEXTEST_RUN_ID"))
        .unwrap_or_else(|_| format!("ppid-{}", std::os::unix::process::parent_id()))
}

/// `ci` when `KTSTR_CI` is set, else `local`.
pub fn run_source() -> String {
    if std::env::var_os("KTSTR_CI").is_some_and(|v| !v.is_empty()) {
        "ci".into()
    } else {
        "local".into()
    }
}

/// Writes `s` into `dir` atomically (temp file, fsync, rename); returns the final path.
pub fn write_atomic(dir: &Path, s: &Sidecar) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(s.file_name());
    crate::atomic_file::write(&path, |f| {
        let mut w = std::io::BufWriter::new(&mut *f);
        serde_json::to_writer_pretty(&mut w, s)?;
        w.write_all(b"\n")?;
        w.flush()?;
        drop(w);
        f.sync_all()
    })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn binary_identity_is_the_files_sha256() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("scx_x");
        std::fs::write(&f, b"abc").unwrap();
        let id = BinaryIdentity::of(&f).unwrap();
        assert_eq!(
            id.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(id.path, f.display().to_string());
        assert!(BinaryIdentity::of(&d.path().join("missing")).is_err());
    }

    #[test]
    fn target_dir_comes_from_the_test_binary() {
        assert_eq!(
            target_of_exe(Path::new("/w/target/debug/deps/suite-123")),
            Some(PathBuf::from("/w/target"))
        );
        assert_eq!(
            target_of_exe(Path::new("/w/target/release/cargo-ktstr")),
            Some(PathBuf::from("/w/target"))
        );
        assert_eq!(target_of_exe(Path::new("/usr/bin/x")), None);
    }

    #[test]
    fn siphash13_reference_vectors() {
        // Deterministic, length-sensitive, content-sensitive.
        assert_eq!(siphash13(b"abc"), siphash13(b"abc"));
        assert_ne!(siphash13(b"a"), siphash13(b"b"));
        assert_ne!(siphash13(&[0; 8]), siphash13(&[0; 7]));
        // The values the hand-written SipHash-1-3 gave before the siphasher crate replaced
        // it: sidecar file names carry them, so they must not change.
        let pinned: [(&[u8], u64); 5] = [
            (b"", 0xd1fb_a762_150c_532c),
            (b"abc", 0xc03b_c3a0_0426_30f2),
            (b"scenario|1n1l1c1t|6.12", 0x68ad_f211_f8c7_b43a),
            (&[0; 8], 0xbd60_acb6_58c7_9e45),
            (&[7; 15], 0xa183_affa_115b_bf42),
        ];
        for (data, want) in pinned {
            assert_eq!(siphash13(data), want, "{data:?}");
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn atomic_unique_files() {
        let d = tempfile::tempdir().unwrap();
        let mut a = Sidecar {
            test_name: "t".into(),
            topology: "1n1l2c1t".into(),
            ..Default::default()
        };
        let b = Sidecar {
            topology: "1n2l2c1t".into(),
            ..a.clone()
        };
        let pa = write_atomic(d.path(), &a).unwrap();
        let pb = write_atomic(d.path(), &b).unwrap();
        assert_ne!(pa, pb);
        a.passed = true;
        assert_eq!(write_atomic(d.path(), &a).unwrap(), pa);
        let back: Sidecar = serde_json::from_slice(&std::fs::read(&pa).unwrap()).unwrap();
        assert!(back.passed);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn host_context_and_commit() {
        let h = HostContext::collect();
        assert!(h.kernel_name.is_some());
        let c = project_commit(Path::new(env!("CARGO_MANIFEST_DIR")));
        assert!(c == "unknown" || c.len() >= 7, "{c}");
    }
}

#[cfg(test)]
#[path = "sidecar_reference_doc.rs"]
mod reference_doc;
