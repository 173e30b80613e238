//! The host side of a case: resolve kernel and scheduler, build the initramfs, boot the VM on
//! the chosen backend, judge the outcome.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Once};
use std::time::Duration;

use super::case_file::{CaseFile, CASE_FILE};
use super::discover::discover_scheduler;
use super::report::{judge, CaseVerdict};
use crate::assert::{AssertDetail, AssertResult, DetailKind, ScenarioStats};
use crate::initramfs::InitramfsSpec;
use crate::monitor::{MonitorLimits, MonitorSpec, MonitorSummary};
use crate::registry::{CaseSpec, Ctx, SchedulerBinary};
use crate::sidecar::{self, HostContext, Sidecar};
use crate::vm;
use crate::vm::launch::{self, Launch, LaunchRequest};

static BACKEND_NOTE: Once = Once::new();

/// Builds scheduler binary `name` from the workspace when it is missing or stale, unless an
/// override variable names the binary to use.
fn build_if_needed(name: &str) -> Result<(), String> {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    if set(&super::discover::override_var(name)) || set("KTSTR_SCHEDULER") {
        return Ok(());
    }
    super::autobuild::refresh_for_this_binary(name)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Runs one case (boots its VM, or runs a `host_only` body on the host).
pub fn run_case(case: &CaseSpec) -> Result<CaseVerdict, String> {
    if case.host_only() {
        return run_host_only(case);
    }
    let cancel = crate::interrupt::install();
    let pick = launch::choose_backend(None).map_err(|e| e.to_string())?;
    BACKEND_NOTE.call_once(|| eprintln!("ktstr: {}", pick.note()));
    let (backend, scale) = (pick.kind, pick.time_scale);

    let sched_host: Option<PathBuf> = match case.scheduler.binary {
        SchedulerBinary::Eevdf => None,
        SchedulerBinary::Discover(name) => match build_if_needed(name)
            .and_then(|()| discover_scheduler(name).map_err(|e| e.to_string()))
        {
            Ok(p) => Some(p),
            // A verdict, not an infrastructure error, so the report names the fix.
            Err(e) => {
                return Ok(CaseVerdict::infra_failure(
                    &case.name,
                    AssertDetail::new(DetailKind::Other, e),
                ))
            }
        },
        SchedulerBinary::Path(p) => Some(PathBuf::from(p)),
        SchedulerBinary::KernelBuiltin { .. } => {
            return Err("kernel built-in schedulers are not supported yet".into())
        }
        #[allow(unreachable_patterns)]
        _ => return Err("unsupported scheduler binary kind".into()),
    };
    // Payload binaries and include files: a missing one is a verdict that names it.
    let packed = match packed_files(case) {
        Ok(p) => p,
        Err(e) => {
            return Ok(CaseVerdict::infra_failure(
                &case.name,
                AssertDetail::new(DetailKind::Other, e),
            ))
        }
    };
    let boot = Boot {
        backend,
        scale,
        sched_host,
        packed,
        cancel,
    };
    let first = boot_once(case, &boot, &Attempt::first(case, scale))?;
    stop_if_interrupted("the case was stopped after its VM ended")?;
    if !super::repro::wanted(case, &first.verdict) {
        write_sidecar(&first.sidecar, &case.name);
        return Ok(first.verdict);
    }
    let attempt = Attempt::repro(case, scale);
    eprintln!(
        "ktstr: auto_repro: case '{}' failed; running it once more with the monitor every {} ms",
        case.name,
        attempt.period.as_millis()
    );
    let again = boot_once(case, &boot, &attempt);
    stop_if_interrupted("the repro run was stopped")?;
    Ok(super::repro::link(first, again, attempt.period, |s| {
        write_sidecar(s, &case.name)
    }))
}

/// What every boot of one case shares: the backend and what the guest gets packed.
struct Boot {
    backend: vm::BackendKind,
    scale: f64,
    sched_host: Option<PathBuf>,
    packed: Packed,
    /// Set by a stop signal ([`crate::interrupt`]): the VM stops and nothing is recorded.
    cancel: Arc<AtomicBool>,
}

/// How one boot is watched: the monitor's period and the thresholds its findings are judged
/// with (a repro samples finer, over the same time windows).
pub(super) struct Attempt {
    /// The host-side monitor's sampling period.
    pub period: Duration,
    /// The thresholds (the case's own, `sustained_samples` scaled to the period).
    pub assert: crate::assert::Assert,
}

impl Attempt {
    fn first(case: &CaseSpec, scale: f64) -> Self {
        Attempt {
            period: crate::monitor::period_for(scale),
            assert: case.assert,
        }
    }

    /// [`super::repro::RATE`] times the sampling rate; a finding must still persist as long
    /// as in the first run.
    fn repro(case: &CaseSpec, scale: f64) -> Self {
        let rate = super::repro::RATE;
        let mut assert = case.assert;
        assert.sustained_samples = Some(assert.sustained_samples.unwrap_or(5) * u64::from(rate));
        Attempt {
            period: crate::monitor::period_for(scale) / rate,
            assert,
        }
    }
}

/// One booted run of a case: its verdict and its (unwritten) sidecar.
pub(super) struct Booted {
    pub verdict: CaseVerdict,
    pub sidecar: Sidecar,
}

/// Boots `case` once, judges it and builds its sidecar.
fn boot_once(case: &CaseSpec, boot: &Boot, attempt: &Attempt) -> Result<Booted, String> {
    let (backend, scale) = (boot.backend, boot.scale);
    let sched_host = boot.sched_host.as_ref();
    let cf = case_file(case, sched_host.map(PathBuf::as_path), scale);
    // A case that cannot find its kernel fails with the reason: a skip here would read as a
    // pass. (Without any kernel named, the harness lists VM cases as ignored instead.)
    progress(&case.name, "initramfs");
    let vm = launch::prepare(LaunchRequest {
        kernel: case.kernel.as_ref().map(|k| k.spec.as_str()),
        backend,
        topology: case.topology,
        initramfs: initramfs_spec(&cf, sched_host, &boot.packed)?,
        memory_mib: None,
        min_memory_mib: case.test.memory_mib as u64,
    })
    .map_err(|e| e.to_string())?;
    // `_archive` keeps the per-case initramfs until the VM is done.
    let Launch {
        mut spec,
        kernel,
        initramfs: _archive,
    } = vm;
    if let Some(why) = sched_ext_refusal(&kernel, sched_host.map(PathBuf::as_path)) {
        return Err(why);
    }
    let memory_mib = spec.memory_mib;
    spec.cmdline_extra = case.scheduler.kargs.iter().map(|s| s.to_string()).collect();
    let run_s = case.test.duration_s as f64 + 30.0;
    spec.timeout = vm_timeout(
        std::env::var("KTSTR_VM_TIMEOUT_S").ok().as_deref(),
        Duration::from_secs_f64(60.0 * scale + run_s * scale),
    )?;
    spec.cancel = Arc::clone(&boot.cancel);
    // The host tier's CPUs and locks (library spec §9), held until the VM is gone; taken
    // last, so a waiting case holds nothing while it builds.
    let placement = crate::placement::place(&case.topology, memory_mib, case.test.performance_mode)
        .map_err(|e| e.to_string())?;
    spec.host_cpus = placement.cpus.clone();
    spec.pinning = placement.pinning.clone();
    let monitor = crate::monitor::spec_for(&kernel, attempt.period).map(|mut m| {
        m.map_write = case.test.bpf_map_write.copied();
        m
    });
    spec.monitor = monitor.as_ref().ok().cloned();
    if progress_wanted() {
        spec.frame_sink = Some(progress_sink(&case.name, sched_host.is_some()));
    }
    stop_if_interrupted("before the VM started")?;
    progress(&case.name, "boot");
    let out = vm::run(backend, spec).map_err(|e| e.to_string())?;
    // Whatever the VM's end looks like, a stop signal during it makes it no result.
    stop_if_interrupted("the VM was stopped")?;
    progress(&case.name, "teardown");
    crate::coverage::deposit_for_case(&out.frames, &case.name);
    let diag = case_diagnostics(case, &kernel, &cf, memory_mib);
    let mut verdict = judge(&case.name, &diag, &out);
    let summary = monitor_summary(
        &monitor,
        out.monitor.as_ref(),
        &attempt.assert,
        case.test.bpf_map_write,
    );
    verdict.add_monitor(&case.name, &summary, &MonitorLimits::of(&attempt.assert));
    verdict.check_cleanup_budget(&case.name, out.times.teardown, case.test.cleanup_budget_ms);
    let kernel_commit = crate::kernel::cache::commit_of(&kernel.image);
    let mut sidecar = sidecar_of(
        case,
        &cf,
        &out,
        &verdict,
        &summary,
        sched_host.map(PathBuf::as_path),
        kernel_commit,
    );
    sidecar.thresholds = attempt.assert;
    let mut record = placement.record();
    record.notes.extend(out.placement_notes.iter().cloned());
    sidecar.placement = Some(record);
    drop(placement);
    Ok(Booted { verdict, sidecar })
}

/// Why `kernel` cannot run the sched_ext scheduler `sched` (none for EEVDF cases, or when the
/// kernel's configuration cannot be found): said before booting, instead of a scheduler
/// that fails to load in the guest for a reason the guest can only guess at.
fn sched_ext_refusal(kernel: &crate::kernel::Kernel, sched: Option<&Path>) -> Option<String> {
    let sched = sched?;
    let cfg = crate::kernel::config::KernelConfig::find(&kernel.image)?;
    let gaps = cfg.sched_ext_gaps();
    (!gaps.is_empty()).then(|| {
        format!(
            "kernel {} cannot run the sched_ext scheduler {}: its configuration ({}) lacks {}; \
             build a kernel with ktstr's configuration (`cargo ktstr kernel build --source \
             TREE`) and pass it with --kernel or KTSTR_KERNEL",
            kernel.image.display(),
            sched.file_name().unwrap_or_default().to_string_lossy(),
            cfg.source,
            gaps.join(", ")
        )
    })
}

/// `Err` (the case records nothing) when a stop signal arrived; `what` says what was done.
fn stop_if_interrupted(what: &str) -> Result<(), String> {
    match crate::interrupt::received() {
        Some(sig) => Err(format!(
            "interrupted by {}: {what}, nothing was recorded",
            crate::interrupt::name(sig)
        )),
        None => Ok(()),
    }
}

/// `KTSTR_PROGRESS=1`: say on stderr as each phase of a case begins.
fn progress_wanted() -> bool {
    std::env::var("KTSTR_PROGRESS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// One progress line (`ktstr: progress CASE PHASE`), when [`progress_wanted`].
fn progress(case: &str, phase: &str) {
    if progress_wanted() {
        eprintln!("ktstr: progress {case} {phase}");
    }
}

/// The guest-side phases as the result channel shows them: init's hello starts the scheduler
/// (or, without one, the workload), the scheduler's attach starts the workload, the verdict
/// starts the guest's teardown.
fn progress_sink(case: &str, has_scheduler: bool) -> vm::FrameSink {
    let case = case.to_string();
    Box::new(move |f: &crate::shm::Frame| {
        use crate::shm::FrameType;
        let phase = match f.kind {
            FrameType::Hello if has_scheduler => "scheduler",
            FrameType::Hello => "workload",
            FrameType::Telemetry if f.payload.starts_with(b"{\"scheduler_attached\"") => "workload",
            FrameType::Result => "guest-teardown",
            _ => return,
        };
        eprintln!("ktstr: progress {case} {phase}");
    })
}

/// The case file the guest reads: what to run, with the scheduler at its in-guest path.
pub(super) fn case_file(case: &CaseSpec, sched_host: Option<&Path>, scale: f64) -> CaseFile {
    // The guest has no kernel list: drop a kernel segment (the 4th) if the name has one.
    let guest_name = match case.name.match_indices('/').nth(2) {
        Some((i, _)) => case.name[..i].to_string(),
        None => case.name.clone(),
    };
    CaseFile {
        name: guest_name,
        scheduler: sched_host.map(|p| {
            format!(
                "/bin/{}",
                p.file_name().unwrap_or_default().to_string_lossy()
            )
        }),
        sched_argv: case.sched_argv(),
        sysctls: case
            .scheduler
            .sysctls
            .iter()
            .map(|s| (s.key.to_string(), s.value.to_string()))
            .collect(),
        time_scale: scale,
        ..Default::default()
    }
}

/// Host files a case packs besides the scheduler: its payloads' binaries (to `/bin`) and the
/// include files of its payloads and its `extra_include_files` (to `/include-files`).
#[derive(Debug, Default, PartialEq)]
pub(super) struct Packed {
    pub binaries: Vec<PathBuf>,
    pub include_files: Vec<PathBuf>,
}

/// The files `case` packs, or which one is missing and what to do.
pub(super) fn packed_files(case: &CaseSpec) -> Result<Packed, String> {
    let mut out = Packed::default();
    let payloads = case
        .test
        .payload
        .into_iter()
        .chain(case.test.workloads.iter().copied());
    let mut includes: Vec<&str> = case.test.extra_include_files.to_vec();
    for p in payloads {
        if let Some(bin) = p.host_binary().map_err(|e| e.to_string())? {
            if !out.binaries.contains(&bin) {
                out.binaries.push(bin);
            }
        }
        includes.extend(p.include_files);
    }
    for f in includes {
        let path = PathBuf::from(f);
        if !path.exists() {
            return Err(format!(
                "include file {f:?} does not exist on this host (paths are relative to the \
                 test's working directory, {})",
                std::env::current_dir().unwrap_or_default().display()
            ));
        }
        if !out.include_files.contains(&path) {
            out.include_files.push(path);
        }
    }
    Ok(out)
}

/// The initramfs: this test binary as init, the scheduler binary, the payloads and include
/// files, and the case file.
fn initramfs_spec(
    cf: &CaseFile,
    sched_host: Option<&PathBuf>,
    packed: &Packed,
) -> Result<InitramfsSpec, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the test binary: {e}"))?;
    Ok(InitramfsSpec {
        init: exe,
        binaries: sched_host
            .into_iter()
            .cloned()
            .chain(packed.binaries.iter().cloned())
            .collect(),
        include_files: packed.include_files.clone(),
        busybox: false,
        files: vec![(
            CASE_FILE.trim_start_matches('/').to_string(),
            serde_json::to_vec(cf).map_err(|e| e.to_string())?,
            0o644,
        )],
    })
}

/// The report's description of what ran: kernel, shape and scheduler with its arguments.
fn case_diagnostics(
    case: &CaseSpec,
    kernel: &crate::kernel::Kernel,
    cf: &CaseFile,
    memory_mib: u64,
) -> String {
    let topo = case.topology;
    format!(
        "kernel: {}\ntopology: {} ({} vCPUs), memory {memory_mib} MiB\nscheduler: {}{}",
        kernel.image.display(),
        topo,
        topo.num_cpus(),
        case.scenario(),
        if cf.sched_argv.is_empty() {
            String::new()
        } else {
            format!(" (args: {})", cf.sched_argv.join(" "))
        }
    )
}

/// The summary of what the monitor recorded (or why it recorded nothing).
fn monitor_summary(
    spec: &Result<MonitorSpec, String>,
    rec: Option<&crate::monitor::Recording>,
    a: &crate::assert::Assert,
    map_write: Option<&crate::bpf_maps::BpfMapWrite>,
) -> MonitorSummary {
    match (spec, rec) {
        (Ok(m), Some(r)) => crate::monitor::summarize(r, a.sustained_samples.unwrap_or(5), |v| {
            m.layout.enable_state_name(v)
        }),
        (Err(why), _) => MonitorSummary {
            unavailable: Some(why.clone()),
            // The host applies a bpf_map_write through its monitor: without one, say so.
            map_write: map_write.map(|w| crate::monitor::bpf_write::MapWriteOutcome {
                offset: w.offset,
                value: w.value,
                error: Some(format!(
                    "the host monitor that makes the write is not running: {why}"
                )),
                ..Default::default()
            }),
            ..Default::default()
        },
        (Ok(_), None) => MonitorSummary {
            unavailable: Some("monitor unavailable: the backend did not run it".into()),
            ..Default::default()
        },
    }
}

/// The case's sidecar (written by [`write_sidecar`]).
fn sidecar_of(
    case: &CaseSpec,
    cf: &CaseFile,
    out: &vm::VmOutcome,
    verdict: &CaseVerdict,
    monitor: &MonitorSummary,
    sched_host: Option<&std::path::Path>,
    kernel_commit: Option<String>,
) -> Sidecar {
    let passed = verdict.passed;
    use crate::shm::FrameType;
    let result = super::report::result_of(out).ok().flatten();
    let hello = out
        .frames
        .iter()
        .find(|f| f.kind == FrameType::Hello)
        .and_then(|f| serde_json::from_slice::<serde_json::Value>(&f.payload).ok());
    let kernel_version = hello
        .as_ref()
        .and_then(|v| v["kernel_release"].as_str().map(str::to_string))
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let commit = sidecar::project_commit(&std::env::current_dir().unwrap_or_default());
    let ms = |d: Duration| d.as_millis() as u64;
    let t = &out.times;
    let stats = result.as_ref().and_then(|r| r.stats.clone());
    let work_types = work_types_of(stats.as_ref());
    let mut sc = Sidecar {
        kernel_commit,
        test_name: case.test.name.to_string(),
        case_name: case.name.clone(),
        scenario: case.scenario(),
        topology: case.topology.label(),
        scheduler: case.scheduler.name.to_string(),
        active_flags: case.active_flags().map(|f| f.name.to_string()).collect(),
        work_type: case.work_type.map(|w| w.name().to_string()),
        payload: case.test.payload.map(|p| p.name.to_string()),
        work_types,
        passed,
        expect_err: case.test.expect_err,
        expect_err_match: case.test.expect_err_match.map(str::to_string),
        stats,
        thresholds: case.assert,
        sysctls: cf.sysctls.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        kargs: case.scheduler.kargs.iter().map(|s| s.to_string()).collect(),
        kernel_version,
        project_commit: commit.clone(),
        timestamp: sidecar::rfc3339(std::time::SystemTime::now()),
        run_id: sidecar::run_id(),
        run_source: sidecar::run_source(),
        backend: match (out.backend, cf.time_scale > 1.0) {
            (vm::BackendKind::Qemu, true) => "qemu-tcg".into(),
            (b, _) => b.to_string(),
        },
        cleanup_duration_ms: ms(t.teardown),
        cleanup_budget_ms: case.test.cleanup_budget_ms,
        durations: sidecar::Durations {
            boot_ms: ms(t.setup + t.boot_to_init.unwrap_or_default()),
            run_ms: ms(t.init_to_exit.unwrap_or_default()),
            teardown_ms: ms(t.teardown),
            total_ms: ms(t.total),
            guest_boot_ms: hello.as_ref().and_then(|v| v["uptime_ms"].as_u64()),
        },
        host: Some(HostContext::collect()),
        monitor: serde_json::to_value(monitor).ok(),
        kvm_stats: out.kvm_stats.clone(),
        ..Default::default()
    };
    sc.scheduler_binary = sched_host.and_then(|p| sidecar::BinaryIdentity::of(p).ok());
    add_outcome(&mut sc, out, result, verdict);
    sc
}

/// Writes `sc` into its run directory (a failure is said on stderr: the verdict stands).
fn write_sidecar(sc: &Sidecar, case_name: &str) -> Option<PathBuf> {
    let dir = sidecar::run_dir(&sc.kernel_version, &sc.project_commit);
    match sidecar::write_atomic(&dir, sc) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!(
                "ktstr: could not write the sidecar of {case_name} in {}: {e}; the verdict \
                 below stands, but stats, compare and replay will not see this run: make the \
                 directory writable (or free space there), or set KTSTR_SIDECAR_DIR to one that is",
                dir.display()
            );
            None
        }
    }
}

/// The distinct work types the scenario's cgroups ran, sorted (a cgroup may list several).
fn work_types_of(stats: Option<&ScenarioStats>) -> Vec<String> {
    let mut work_types: Vec<String> = stats
        .iter()
        .flat_map(|s| s.cgroups.iter())
        .flat_map(|c| c.work_types.split(',').map(str::to_string))
        .filter(|w| !w.is_empty())
        .collect();
    work_types.sort();
    work_types.dedup();
    work_types
}

/// Records what happened in the sidecar: scheduler attach, the guest's verdict and details,
/// and every reason the case failed on (the monitor's and the host's included).
fn add_outcome(
    sc: &mut Sidecar,
    out: &vm::VmOutcome,
    result: Option<AssertResult>,
    verdict: &CaseVerdict,
) {
    if let Some((ops, enable_ms)) = scheduler_attached(out) {
        sc.scheduler_ops = Some(ops);
        sc.scheduler_enable_ms = Some(enable_ms);
    }
    sc.verifier_stats = telemetry(out, "verifier_stats");
    if let Some(r) = result {
        sc.skipped = r.skipped;
        sc.inconclusive = r.inconclusive;
        sc.details = r.details;
        sc.stimulus_events = r.events;
        sc.phases = r.phases;
        sc.metrics = r
            .metrics
            .iter()
            .filter_map(|m| serde_json::to_value(m).ok())
            .collect();
    }
    // Every reason the verdict failed on, host-side ones (monitor, channel, no verdict,
    // teardown) included, so `stats` and `replay` judge from the same list the harness did.
    for r in &verdict.reasons {
        if !sc.details.contains(r) {
            sc.details.push(r.clone());
        }
    }
}

/// The last telemetry value the guest sent under `key`.
fn telemetry(out: &vm::VmOutcome, key: &str) -> Option<serde_json::Value> {
    out.frames
        .iter()
        .filter(|f| f.kind == crate::shm::FrameType::Telemetry)
        .filter_map(|f| serde_json::from_slice::<serde_json::Value>(&f.payload).ok())
        .filter_map(|mut v| v.get_mut(key).map(serde_json::Value::take))
        .next_back()
}

/// The `scheduler_attached` telemetry the guest sends once sched_ext reports the scheduler
/// enabled: its ops name and the time it took.
fn scheduler_attached(out: &vm::VmOutcome) -> Option<(String, u64)> {
    let a = telemetry(out, "scheduler_attached")?;
    Some((a["ops"].as_str()?.to_string(), a["enable_ms"].as_u64()?))
}

fn run_host_only(case: &CaseSpec) -> Result<CaseVerdict, String> {
    let ctx = Ctx::for_case(case);
    let mut r = (case.test.func)(&ctx).map_err(|e| format!("{e:#}"))?;
    r.add_payload_outcomes(ctx.payloads.take());
    let mut report = format!(
        "ktstr case '{}' {}\n",
        case.name,
        if r.passed { "passed" } else { "failed:" }
    );
    for d in &r.details {
        report.push_str(&format!("  {:?}: {}\n", d.kind, d.message));
    }
    Ok(CaseVerdict {
        passed: r.passed,
        report,
        ..Default::default()
    })
}

/// The VM watchdog: `KTSTR_VM_TIMEOUT_S` (whole seconds, at least 1) when set, else `default`.
fn vm_timeout(env: Option<&str>, default: Duration) -> Result<Duration, String> {
    match env.map(str::trim) {
        None | Some("") => Ok(default),
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Duration::from_secs(n)),
            _ => Err(format!(
                "KTSTR_VM_TIMEOUT_S={s:?} is not a whole number of seconds above 0; unset it for the default ({} s here)",
                default.as_secs()
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::{Frame, FrameType};

    #[test]
    fn a_monitor_that_could_not_run_says_why_in_the_summary() {
        let e = "monitor unavailable: no vmlinux beside /k/bzImage".to_string();
        let a = crate::assert::Assert::default_checks();
        let s = monitor_summary(&Err(e.clone()), None, &a, None);
        assert_eq!(s.unavailable, Some(e.clone()));
        let json = serde_json::to_value(&s).unwrap();
        assert!(
            json["unavailable"].is_string() && json["total_samples"] == 0,
            "{json}"
        );
        assert!(s.map_write.is_none());
        // A test's bpf_map_write cannot happen without the monitor: the summary says so.
        let w = crate::bpf_maps::BpfMapWrite::new(".data", 4, 1);
        let s = monitor_summary(&Err(e), None, &a, Some(&w));
        let mw = s.map_write.unwrap();
        assert_eq!((mw.offset, mw.value), (4, 1));
        assert!(mw
            .error
            .unwrap()
            .contains("monitor that makes the write is not running"),);
    }

    #[test]
    fn vm_timeout_takes_the_override_or_the_default() {
        let d = Duration::from_secs(364);
        assert_eq!(vm_timeout(None, d), Ok(d));
        assert_eq!(vm_timeout(Some(" "), d), Ok(d));
        assert_eq!(vm_timeout(Some("20"), d), Ok(Duration::from_secs(20)));
        for bad in ["0", "-3", "1.5", "soon"] {
            let e = vm_timeout(Some(bad), d).unwrap_err();
            assert!(
                e.contains("KTSTR_VM_TIMEOUT_S") && e.contains("364 s"),
                "{e}"
            );
        }
    }

    #[test]
    fn scheduler_attached_reads_the_guests_telemetry() {
        let frame = |kind, payload: &str| Frame {
            kind,
            seq: 0,
            payload: payload.as_bytes().to_vec(),
        };
        let mut out = vm::VmOutcome {
            backend: vm::BackendKind::Qemu,
            end: vm::VmEnd::GuestExit { status: 0 },
            frames: vec![
                frame(FrameType::Log, "scheduler_attached"),
                frame(FrameType::Telemetry, "{\"other\":1}"),
                frame(
                    FrameType::Telemetry,
                    "{\"scheduler_attached\":{\"ops\":\"demo\",\"enable_ms\":812}}",
                ),
            ],
            channel_error: None,
            console_tail: String::new(),
            times: Default::default(),
            monitor: None,
            kvm_stats: None,
            placement_notes: Vec::new(),
        };
        assert_eq!(scheduler_attached(&out), Some(("demo".into(), 812)));
        assert_eq!(telemetry(&out, "verifier_stats"), None);
        out.frames.push(frame(
            FrameType::Telemetry,
            "{\"verifier_stats\":{\"total_verified_insns\":321}}",
        ));
        assert_eq!(
            telemetry(&out, "verifier_stats").unwrap()["total_verified_insns"],
            321
        );
        out.frames.pop();
        out.frames.pop();
        assert_eq!(scheduler_attached(&out), None);
    }
}
