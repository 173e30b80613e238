//! `cargo ktstr stats explain-sidecar`: which optional sidecar fields of a run are null, and
//! why (cli.md §2.9). Each optional field has a catalogue entry: whether null is expected or
//! something a different run would fill, the causes, and the fix when there is one.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use ktstr::sidecar::Sidecar;
use serde::Serialize;

/// Whether a null field can be recovered by running differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Classification {
    /// Null is normal for this case (or ktstr does not record it yet).
    Expected,
    /// Running differently would fill it.
    Actionable,
}

/// One optional field's catalogue entry.
struct FieldInfo {
    name: &'static str,
    is_set: fn(&Sidecar) -> bool,
    classification: Classification,
    causes: &'static [&'static str],
    fix: Option<&'static str>,
}

use Classification::{Actionable, Expected};

/// Every optional field of a sidecar.
static FIELDS: &[FieldInfo] = &[
    FieldInfo {
        name: "work_type",
        is_set: |s| s.work_type.is_some(),
        classification: Expected,
        causes: &["the test does not sweep work types; its cgroups' own work types are in `work_types`"],
        fix: None,
    },
    FieldInfo {
        name: "payload",
        is_set: |s| s.payload.is_some(),
        classification: Expected,
        causes: &["the test declares no `payload` (its `workloads`, if any, are in `metrics`)"],
        fix: None,
    },
    FieldInfo {
        name: "stats",
        is_set: |s| s.stats.is_some(),
        classification: Actionable,
        causes: &[
            "the case ended before the guest measured anything (boot failure, scheduler failed to load, guest panic)",
            "the test body returned without running a scenario",
        ],
        fix: Some("read the case's `details` for why it ended, fix that, and run it again"),
    },
    FieldInfo {
        name: "monitor",
        is_set: |s| s.monitor.is_some(),
        classification: Expected,
        causes: &[
            "the case ran on the host (host_only): there is no guest to watch",
            "the sidecar was written before ktstr had its host-side monitor; a VM case now always has one, whose `unavailable` says why it sampled nothing (no vmlinux beside the image, no BTF, KTSTR_MONITOR=off)",
        ],
        fix: None,
    },
    FieldInfo {
        name: "verifier_stats",
        is_set: |s| s.verifier_stats.is_some(),
        classification: Expected,
        causes: &[
            "the case ran EEVDF or a kernel built-in scheduler: no BPF program was loaded",
            "the scheduler died or never attached before the guest could list its programs",
            "the sidecar was written before ktstr collected verifier statistics",
        ],
        fix: Some("`cargo ktstr verifier` prints verified instructions per program and profile"),
    },
    FieldInfo {
        name: "placement",
        is_set: |s| s.placement.is_some(),
        classification: Expected,
        causes: &[
            "the case is host-only: no VM, so no host CPUs were placed",
            "the sidecar was written before ktstr recorded where a VM ran on the host",
        ],
        fix: None,
    },
    FieldInfo {
        name: "kvm_stats",
        is_set: |s| s.kvm_stats.is_some(),
        classification: Expected,
        causes: &[
            "the case ran on the qemu backend: KVM statistics are read from the in-process VMM's VM and vCPU fds, which qemu does not share",
            "the host kernel has no KVM binary statistics (before Linux 5.14)",
            "the sidecar was written before ktstr collected KVM statistics",
        ],
        fix: None,
    },
    FieldInfo {
        name: "kernel_commit",
        is_set: |s| s.kernel_commit.is_some(),
        classification: Expected,
        causes: &[
            "the kernel was built from a tarball (linux-source-*), which has no commit",
            "the kernel is a bare image path, not a kernel-cache entry whose metadata names its source",
        ],
        fix: None,
    },
    FieldInfo {
        name: "scheduler_commit",
        is_set: |s| s.scheduler_commit.is_some(),
        classification: Expected,
        causes: &["scheduler commits are not recorded yet"],
        fix: None,
    },
    FieldInfo {
        name: "scheduler_binary",
        is_set: |s| s.scheduler_binary.is_some(),
        classification: Expected,
        causes: &[
            "the case runs EEVDF or a kernel built-in scheduler (no binary)",
            "the sidecar was written before ktstr recorded the scheduler binary",
        ],
        fix: None,
    },
    FieldInfo {
        name: "scheduler_ops",
        is_set: |s| s.scheduler_ops.is_some(),
        classification: Expected,
        causes: &[
            "the case runs EEVDF (nothing attaches to sched_ext)",
            "the scheduler never attached (see the case's SchedulerDied detail)",
        ],
        fix: None,
    },
    FieldInfo {
        name: "scheduler_enable_ms",
        is_set: |s| s.scheduler_enable_ms.is_some(),
        classification: Expected,
        causes: &["as for scheduler_ops"],
        fix: None,
    },
    FieldInfo {
        name: "repro",
        is_set: |s| s.repro.is_some(),
        classification: Expected,
        causes: &[
            "the case passed, or failed as its expect_err declares: there was nothing to reproduce",
            "the test does not set `auto_repro = true`",
        ],
        fix: Some("set `auto_repro = true` on the test to re-run a failing case once with the monitor sampling 10x as often"),
    },
    FieldInfo {
        name: "repro_of",
        is_set: |s| s.repro_of.is_some(),
        classification: Expected,
        causes: &["this sidecar is a case's own run, not an auto_repro second run"],
        fix: None,
    },
    FieldInfo {
        name: "cleanup_budget_ms",
        is_set: |s| s.cleanup_budget_ms.is_some(),
        classification: Expected,
        causes: &["the test declares no `cleanup_budget_ms`: host teardown is not capped"],
        fix: None,
    },
    FieldInfo {
        name: "expect_err_match",
        is_set: |s| s.expect_err_match.is_some(),
        classification: Expected,
        causes: &[
            "the test expects no failure, or a plain `expect_err = true` (any failure of its own checks)",
        ],
        fix: None,
    },
    FieldInfo {
        name: "host",
        is_set: |s| s.host.is_some(),
        classification: Actionable,
        causes: &["the sidecar was written before ktstr recorded host context"],
        fix: Some("run the case again with this ktstr"),
    },
];

#[derive(Serialize)]
struct WalkError {
    path: PathBuf,
    error: String,
    enriched_message: Option<String>,
}

#[derive(Serialize)]
struct Walk {
    walked: usize,
    valid: usize,
    errors: Vec<WalkError>,
}

#[derive(Serialize)]
struct FieldSummary {
    none_count: usize,
    some_count: usize,
    classification: Classification,
    causes: &'static [&'static str],
    fix: Option<&'static str>,
}

/// A remediation for a known kind of unreadable sidecar, if one applies.
fn enrich(error: &str) -> Option<String> {
    if error.contains("EOF while parsing") {
        Some("the file is cut short: the writer was killed mid-write, or the disk filled; re-run the case".into())
    } else if error.contains("invalid type") {
        Some("a field has a type this ktstr does not read: the sidecar comes from an incompatible ktstr version".into())
    } else {
        None
    }
}

/// Runs `explain-sidecar` on the run directory `dir` (`key` names it in messages).
pub fn run(key: &str, dir: &Path, json: bool) -> Result<()> {
    let run = ktstr::runs::load_run(dir)?;
    let walked = run.sidecars.len() + run.corrupt.len();
    if walked == 0 {
        bail!(
            "run {key} ({}) holds no {} files",
            dir.display(),
            ktstr::runs::SIDECAR_SUFFIX
        );
    }
    let errors: Vec<WalkError> = run
        .corrupt
        .iter()
        .map(|(p, e)| WalkError {
            path: p.clone(),
            error: e.clone(),
            enriched_message: enrich(e),
        })
        .collect();
    if json {
        let fields: serde_json::Map<String, serde_json::Value> = FIELDS
            .iter()
            .map(|f| {
                let some = run.sidecars.iter().filter(|(_, s)| (f.is_set)(s)).count();
                let summary = FieldSummary {
                    none_count: run.sidecars.len() - some,
                    some_count: some,
                    classification: f.classification,
                    causes: f.causes,
                    fix: f.fix,
                };
                (f.name.to_owned(), serde_json::json!(summary))
            })
            .collect();
        let out = serde_json::json!({
            "_schema_version": "1",
            "_walk": Walk { walked, valid: run.sidecars.len(), errors },
            "fields": fields,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "run {key}: walked {walked} sidecar files, parsed {}",
        run.sidecars.len()
    );
    for (path, s) in &run.sidecars {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        println!("\n{name} ({})", s.case_name);
        for f in FIELDS.iter().filter(|f| !(f.is_set)(s)) {
            let class = match f.classification {
                Expected => "expected",
                Actionable => "actionable",
            };
            println!("  {}: null ({class}): {}", f.name, f.causes.join("; "));
            if let Some(fix) = f.fix {
                println!("    fix: {fix}");
            }
        }
    }
    if !errors.is_empty() {
        println!("\ncorrupt sidecars ({}):", errors.len());
        for e in &errors {
            println!("  {}: {}", e.path.display(), e.error);
            if let Some(m) = &e.enriched_message {
                println!("    enriched: {m}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `Option` field of `Sidecar` has a catalogue entry: a new optional field without
    /// one would be reported by nobody.
    #[test]
    fn the_catalogue_covers_every_optional_field() {
        let v = serde_json::to_value(Sidecar::default()).unwrap();
        let nulls: Vec<&str> = v
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.is_null())
            .map(|(k, _)| k.as_str())
            .collect();
        let mut names: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
        names.sort_unstable();
        let mut nulls = nulls;
        nulls.sort_unstable();
        assert_eq!(names, nulls);
    }

    #[test]
    fn known_corruptions_get_a_remedy() {
        assert!(enrich("EOF while parsing an object at line 1").is_some());
        assert!(enrich("expected value at line 1 column 1").is_none());
    }
}
