//! The test binary's side of `cargo ktstr export`: what a test needs to run on bare metal
//! ([`plan`], asked for with `--ktstr-export-plan NAME`), and running it there
//! ([`bare_metal_main`], when `KTSTR_EXPORT_CASE` names the bundle's case file): the same
//! scheduler start, body and verdict as in a VM, on the machine the `.run` file was started
//! on, without a VM.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::case_file::CaseFile;
use crate::registry::matrix::{CaseSpec, KernelSet, Matrix};
use crate::registry::{KtstrTest, SchedulerBinary};
use crate::topology::Topology;

/// The environment variable the `.run` preamble sets to the extracted case file.
pub const EXPORT_CASE_ENV: &str = "KTSTR_EXPORT_CASE";

/// Everything `cargo ktstr export` bundles for one test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportPlan {
    /// The test.
    pub test: String,
    /// The case that runs (the base case: declared topology, base flag profile).
    pub case: String,
    /// The case file, its scheduler path relative to the bundle (`bin/NAME`), with the test's
    /// duration and watchdog (the defaults the `.run` options override).
    pub case_file: CaseFile,
    /// The scheduler binary on this host, if the test runs a sched_ext scheduler.
    pub scheduler_host: Option<PathBuf>,
    /// Payload binaries (bundled into `bin/`).
    pub binaries: Vec<PathBuf>,
    /// Include files (bundled into `include-files/`).
    pub include_files: Vec<PathBuf>,
    /// The topology the test declares (the preamble checks the host can hold it).
    pub topology: Topology,
}

/// The base case of `test`: its declared topology and base flag profile.
fn base_case(tests: &'static [KtstrTest], test: &str) -> Result<CaseSpec, String> {
    let mut found = None;
    Matrix::new(tests, KernelSet::none())
        .for_each_case(|c| {
            if found.is_none()
                && c.plan.test.name == test
                && (c.topology, c.profile, c.work_type) == (0, 0, 0)
            {
                found = Some(c.to_spec());
            }
        })
        .map_err(|e| e.to_string())?;
    found.ok_or_else(|| format!("test {test} has no case to run"))
}

/// What bundling `name` takes, or why it cannot be exported (v1 refuses `host_only` tests,
/// `bpf_map_write` and kernel built-in schedulers, each with its reason).
pub fn plan(tests: &'static [KtstrTest], name: &str) -> Result<ExportPlan, String> {
    let test = crate::registry::find_test_in(tests, name).map_err(|e| e.to_string())?;
    if test.host_only {
        return Err(format!(
            "{name} is host_only: its body drives cargo or VMs from the host itself, so there \
             is nothing to replay on bare metal; run it with cargo ktstr test"
        ));
    }
    if test.bpf_map_write.is_some() {
        return Err(format!(
            "{name} uses bpf_map_write, which the host makes through guest memory from outside \
             the VM; bare metal has no such outside: run it with cargo ktstr test"
        ));
    }
    let case = base_case(tests, name)?;
    let scheduler_host = match case.scheduler.binary {
        SchedulerBinary::Eevdf => None,
        SchedulerBinary::Discover(bin) => {
            Some(super::discover::discover_scheduler(bin).map_err(|e| e.to_string())?)
        }
        SchedulerBinary::Path(p) => Some(PathBuf::from(p)),
        SchedulerBinary::KernelBuiltin { .. } => {
            return Err(format!(
                "{name} runs a kernel built-in scheduler, whose enable and disable commands the \
                 .run preamble does not generate yet"
            ))
        }
        #[allow(unreachable_patterns)]
        _ => return Err("unsupported scheduler binary kind".into()),
    };
    let packed = super::host::packed_files(&case)?;
    let mut case_file = super::host::case_file(&case, scheduler_host.as_deref(), 1.0);
    case_file.duration_s = Some(test.duration_s);
    case_file.watchdog_timeout_s = Some(test.watchdog_timeout_s);
    // In the bundle, beside the case file.
    case_file.scheduler = scheduler_host.as_ref().map(|p| {
        format!(
            "bin/{}",
            p.file_name().unwrap_or_default().to_string_lossy()
        )
    });
    Ok(ExportPlan {
        test: name.to_string(),
        case: case.name.clone(),
        case_file,
        scheduler_host,
        binaries: packed.binaries,
        include_files: packed.include_files,
        topology: case.topology,
    })
}

/// Runs the case of the bundle's case file at `path` on this machine and exits 0 if it
/// passed, 1 if it failed (2: the bundle is broken). `KTSTR_EXPORT_DURATION_S` and
/// `KTSTR_EXPORT_WATCHDOG_S` override the test's duration and watchdog; `KTSTR_EXPORT_QUIET`
/// drops the banner.
pub fn bare_metal_main(path: &Path) -> ! {
    let quiet = std::env::var_os("KTSTR_EXPORT_QUIET").is_some();
    let cf = match read_case(path) {
        Ok(cf) => cf,
        Err(e) => {
            eprintln!("ktstr export: {e}");
            std::process::exit(2);
        }
    };
    if !quiet {
        println!(
            "ktstr export: running {} on this machine ({}; {} s)",
            cf.name,
            cf.scheduler.as_deref().unwrap_or("EEVDF"),
            cf.duration_s
                .map_or("the declared".to_string(), |d| d.to_string())
        );
    }
    let result = match super::guest::run_case_file(&cf) {
        Ok(r) => r,
        Err(e) => crate::assert::AssertResult::fail(crate::assert::DetailKind::Other, e),
    };
    let test = crate::registry::find_test_in(&crate::registry::KTSTR_TESTS, test_of(&cf.name)).ok();
    let (passed, report) = verdict(
        &cf.name,
        &result,
        test.map(|t| (t.expect_err, t.expect_err_match)),
    );
    print!("{report}");
    std::process::exit(if passed { 0 } else { 1 })
}

/// The test name of case `name` (`test/scenario/topology`).
fn test_of(name: &str) -> &str {
    name.split('/').next().unwrap_or(name)
}

/// Whether the run passed, with `expect_err` (and its diagnosis) applied as the harness
/// does, and the lines to print.
fn verdict(
    case: &str,
    r: &crate::assert::AssertResult,
    expect: Option<(bool, Option<&str>)>,
) -> (bool, String) {
    let reasons: String = r
        .details
        .iter()
        .map(|d| format!("  {}\n", d.reason()))
        .collect();
    match (r.passed, expect.unwrap_or((false, None))) {
        (true, (false, _)) => (true, format!("ktstr export: {case} passed\n")),
        (true, (true, _)) => (
            false,
            format!("ktstr export: {case} passed, but the test expects it to fail (expect_err)\n"),
        ),
        (false, (true, pattern)) => match pattern.map(|p| crate::expect::check(p, &r.details)) {
            Some(Err(why)) => (
                false,
                format!("ktstr export: {case} failed, but not as expected: {why}:\n{reasons}"),
            ),
            _ => (
                true,
                format!("ktstr export: {case} failed as expected (expect_err):\n{reasons}"),
            ),
        },
        (false, (false, _)) => (false, format!("ktstr export: {case} failed:\n{reasons}")),
    }
}

/// The case file at `path`, its overrides applied and a relative scheduler path resolved
/// against the file's directory.
fn read_case(path: &Path) -> Result<CaseFile, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut cf: CaseFile = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a case file: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Some(s) = cf.scheduler.as_mut() {
        if Path::new(s.as_str()).is_relative() {
            *s = dir.join(&*s).display().to_string();
        }
    }
    let secs = |var: &str| -> Result<Option<u32>, String> {
        match std::env::var(var) {
            Ok(v) => v
                .parse::<u32>()
                .ok()
                .filter(|&n| n > 0)
                .map(Some)
                .ok_or_else(|| format!("{var}={v:?}: expected whole seconds, at least 1")),
            Err(_) => Ok(None),
        }
    };
    cf.duration_s = secs("KTSTR_EXPORT_DURATION_S")?.or(cf.duration_s);
    cf.watchdog_timeout_s = secs("KTSTR_EXPORT_WATCHDOG_S")?.or(cf.watchdog_timeout_s);
    Ok(cf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assert::AssertResult;
    use crate::registry::{Ctx, Scheduler};

    fn body(_: &Ctx) -> anyhow::Result<AssertResult> {
        Ok(AssertResult::pass())
    }

    static W: crate::bpf_maps::BpfMapWrite = crate::bpf_maps::BpfMapWrite::new(".bss", 0, 1);
    static DEMO: Scheduler =
        Scheduler::new("scx-demo").binary(SchedulerBinary::Path("/opt/scx_demo"));
    static TESTS: [KtstrTest; 4] = [
        KtstrTest::new("plain", body).duration_s(3),
        KtstrTest::new("on_host", body).host_only(true),
        KtstrTest::new("writes_map", body)
            .scheduler(&DEMO)
            .bpf_map_write(&W),
        KtstrTest::new("demo", body).scheduler(&DEMO),
    ];

    #[test]
    fn an_eevdf_test_bundles_no_scheduler_and_keeps_its_shape() {
        let p = plan(&TESTS, "plain").unwrap();
        assert_eq!(p.case, "plain/eevdf/1n1l2c1t");
        assert_eq!(
            (p.scheduler_host.as_ref(), p.case_file.duration_s),
            (None, Some(3))
        );
        assert_eq!(p.case_file.watchdog_timeout_s, Some(4));
        assert_eq!(p.case_file.name, "plain/eevdf/1n1l2c1t");
        assert_eq!(p.case_file.scheduler, None);
    }

    #[test]
    fn a_sched_ext_test_runs_its_scheduler_from_the_bundle() {
        let p = plan(&TESTS, "demo").unwrap();
        assert_eq!(
            p.scheduler_host.as_deref(),
            Some(Path::new("/opt/scx_demo"))
        );
        assert_eq!(p.case_file.scheduler.as_deref(), Some("bin/scx_demo"));
    }

    #[test]
    fn v1_refusals_name_their_reason_and_unknown_tests_suggest() {
        let e = plan(&TESTS, "on_host").unwrap_err();
        assert!(e.contains("on_host is host_only"), "{e}");
        let e = plan(&TESTS, "writes_map").unwrap_err();
        assert!(e.contains("uses bpf_map_write"), "{e}");
        let e = plan(&TESTS, "plian").unwrap_err();
        assert!(e.contains("plain"), "did you mean: {e}");
    }

    #[test]
    fn the_verdict_applies_expect_err_like_the_harness() {
        use crate::assert::DetailKind;
        let ok = AssertResult::pass();
        let bad = AssertResult::fail(DetailKind::SchedulerDied, "stall detected: x");
        assert!(verdict("c", &ok, None).0);
        let (p, text) = verdict("c", &bad, None);
        assert!(
            !p && text.contains("c failed:\n  SchedulerDied: stall detected: x"),
            "{text}"
        );
        assert!(!verdict("c", &ok, Some((true, None))).0);
        assert!(verdict("c", &bad, Some((true, None))).0);
        assert!(verdict("c", &bad, Some((true, Some("SchedulerDied: stall")))).0);
        let (p, text) = verdict("c", &bad, Some((true, Some("Starved: x"))));
        assert!(!p && text.contains("not as expected"), "{text}");
    }

    #[test]
    fn the_case_file_takes_overrides_and_a_bundle_relative_scheduler() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("case.json");
        let cf = CaseFile {
            name: "demo/scx-demo/1n1l2c1t".into(),
            scheduler: Some("bin/scx_demo".into()),
            duration_s: Some(9),
            ..Default::default()
        };
        std::fs::write(&f, serde_json::to_vec(&cf).unwrap()).unwrap();
        let got = read_case(&f).unwrap();
        assert_eq!(
            got.scheduler,
            Some(d.path().join("bin/scx_demo").display().to_string())
        );
        assert_eq!(got.duration_s, Some(9));
        std::fs::write(&f, b"{").unwrap();
        assert!(read_case(&f).unwrap_err().contains("is not a case file"));
    }
}
