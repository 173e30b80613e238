//! The verdict of one case and the failure report a person reads.

use std::time::Duration;

use super::sched::SchedulerExit;
use crate::assert::{AssertDetail, AssertResult, DetailKind};
use crate::monitor::{MonitorLimits, MonitorSummary};
use crate::shm::{Frame, FrameType};
use crate::vm::{VmEnd, VmOutcome};

/// What running one case concluded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaseVerdict {
    /// Whether the case passed (before `expect_err` inversion, which the harness applies).
    pub passed: bool,
    /// Failure report or summary, printed by the harness.
    pub report: String,
    /// Every failure reason, host and guest alike (what `expect_err = "Kind: text"` is
    /// checked against, and what the sidecar records as its details).
    pub reasons: Vec<AssertDetail>,
    /// Why the scheduler went away, when it did.
    pub sched_exit: Option<SchedulerExit>,
    /// The case could not run at all (e.g. its scheduler binary is missing), or its guest gave
    /// no usable verdict (the VM crashed, hung or corrupted the result channel): a plain
    /// `expect_err = true` must not turn this into a pass.
    pub infra: bool,
    /// The case did not run, and why (no kernel outside CI). Neither a pass nor a failure:
    /// the harness reports it as ignored at run time, and `expect_err` is not applied.
    pub skipped: Option<String>,
}

impl CaseVerdict {
    /// The reasons as `Kind: message` lines, as reports print them.
    pub fn reason_lines(&self) -> Vec<String> {
        self.reasons.iter().map(AssertDetail::reason).collect()
    }

    /// A case that could not run, failing with `reason`.
    pub fn infra_failure(name: &str, reason: AssertDetail) -> Self {
        CaseVerdict {
            passed: false,
            report: format!("ktstr case '{name}' failed:\n  {}\n", reason.reason()),
            reasons: vec![reason],
            sched_exit: None,
            infra: true,
            skipped: None,
        }
    }

    /// Fails the case when the host's teardown took longer than the test's
    /// `cleanup_budget_ms`. Counted as infrastructure: `expect_err` does not cover it.
    pub fn check_cleanup_budget(&mut self, name: &str, teardown: Duration, budget_ms: Option<u64>) {
        let Some(budget) = budget_ms else { return };
        let took = teardown.as_millis() as u64;
        if took <= budget {
            return;
        }
        let reason = AssertDetail {
            kind: DetailKind::Other,
            message: format!(
                "host teardown took {took} ms, over the test's cleanup_budget_ms of {budget} ms"
            ),
        };
        let line = reason.reason();
        if self.passed {
            self.report = format!("ktstr case '{name}' failed:\n  {line}\n");
        } else {
            let at = self.report.find('\n').map_or(self.report.len(), |i| i + 1);
            self.report.insert_str(at, &format!("  {line}\n"));
        }
        self.passed = false;
        self.infra = true;
        self.reasons.push(reason);
    }
}

impl CaseVerdict {
    /// Adds the host-side monitor's findings against `limits`: each is a failure reason
    /// (`Monitor: ...`, a test failure, not an infrastructure one), and a failing case's
    /// report gains a `--- monitor ---` section with the summary (found something or not: it
    /// is evidence either way).
    pub fn add_monitor(&mut self, name: &str, summary: &MonitorSummary, limits: &MonitorLimits) {
        let found = crate::monitor::findings(summary, limits);
        if self.passed && found.is_empty() {
            return;
        }
        if self.passed {
            self.passed = false;
            self.report = format!("ktstr case '{name}' failed:\n");
        }
        let lines: String = found
            .iter()
            .map(|r| format!("  {}\n", r.reason()))
            .collect();
        let at = self
            .report
            .find("\n--- ")
            .map_or(self.report.len(), |i| i + 1);
        self.report.insert_str(at, &lines);
        self.reasons.extend(found);
        let mut sec = String::new();
        section(&mut sec, "monitor", &summary.describe());
        let at = self
            .report
            .find("--- console tail ---")
            .unwrap_or(self.report.len());
        self.report.insert_str(at, &sec);
    }
}

/// The scheduler's exit diagnosis the guest sent, if any.
pub fn sched_exit_of(out: &VmOutcome) -> Option<SchedulerExit> {
    out.frames
        .iter()
        .rev()
        .find(|f| f.kind == FrameType::SchedExit)
        .and_then(|f| serde_json::from_slice(&f.payload).ok())
}

/// Lines kept per report section.
const SECTION_LINES: usize = 60;

fn section(out: &mut String, title: &str, body: &str) {
    let body = crate::vm::tail_lines(body.trim_end(), SECTION_LINES);
    if !body.trim().is_empty() {
        out.push_str(&format!("--- {title} ---\n{body}\n"));
    }
}

fn frames_text(frames: &[Frame], kind: FrameType) -> String {
    frames
        .iter()
        .filter(|f| f.kind == kind)
        .map(Frame::text)
        .collect::<Vec<_>>()
        .join("")
}

/// The guest's verdict, if it sent one.
pub fn result_of(out: &VmOutcome) -> Result<Option<AssertResult>, String> {
    match out
        .frames
        .iter()
        .rev()
        .find(|f| f.kind == FrameType::Result)
    {
        None => Ok(None),
        Some(f) => serde_json::from_slice(&f.payload)
            .map(Some)
            .map_err(|e| format!("the guest's result frame is not valid JSON: {e}")),
    }
}

/// Judges a finished VM: a deliberate exit with a passing result passes; anything else fails
/// with the reasons, scheduler log, diagnostics and console tail.
pub fn judge(name: &str, diagnostics: &str, out: &VmOutcome) -> CaseVerdict {
    let mut reasons: Vec<AssertDetail> = Vec::new();
    let result = result_of(out);
    let deliberate = matches!(out.end, VmEnd::GuestExit { .. });
    let passed = guest_verdict(out, &result, deliberate, &mut reasons);
    for p in out.frames.iter().filter(|f| f.kind == FrameType::Panic) {
        reasons.push(AssertDetail::new(DetailKind::GuestPanic, p.text()));
    }
    let sched_exit = sched_exit_of(out);
    // A corrupt result channel fails the case even after a passing verdict: frames after the
    // corruption (a later failure, a panic) may be lost.
    let passed = passed && out.channel_error.is_none();
    if let Some(e) = &out.channel_error {
        reasons.push(AssertDetail::new(DetailKind::ResultChannel, e.to_string()));
    }
    let gave_verdict = deliberate && matches!(result, Ok(Some(_))) && out.channel_error.is_none();
    let mut report = if passed {
        format!("ktstr case '{name}' passed\n")
    } else {
        format!("ktstr case '{name}' failed:\n")
    };
    for r in &reasons {
        report.push_str(&format!("  {}\n", r.reason()));
    }
    if !passed {
        failure_sections(&mut report, diagnostics, out, &reasons, sched_exit.as_ref());
    }
    CaseVerdict {
        passed,
        report,
        reasons,
        sched_exit,
        infra: !passed && !gave_verdict,
        skipped: None,
    }
}

/// Whether the guest's own verdict passes; only a deliberate exit with a result counts, so
/// anything else adds why there was no usable verdict to `reasons`.
fn guest_verdict(
    out: &VmOutcome,
    result: &Result<Option<AssertResult>, String>,
    deliberate: bool,
    reasons: &mut Vec<AssertDetail>,
) -> bool {
    match (result, deliberate) {
        (Ok(Some(r)), true) => {
            if !r.passed {
                reasons.extend(r.details.iter().cloned());
            }
            if r.skipped {
                reasons.push(AssertDetail::new(DetailKind::Skip, "skipped"));
            }
            r.passed
        }
        (Ok(Some(_)), false) | (Ok(None), _) => {
            reasons.push(AssertDetail::new(DetailKind::NoVerdict, out.end.describe()));
            false
        }
        (Err(e), _) => {
            reasons.push(AssertDetail::new(DetailKind::ResultChannel, e.clone()));
            false
        }
    }
}

/// Appends the evidence a person needs to debug a failed case: scheduler log, diagnostics,
/// sched_ext dump and console tail, in that order.
fn failure_sections(
    report: &mut String,
    diagnostics: &str,
    out: &VmOutcome,
    reasons: &[AssertDetail],
    sched_exit: Option<&SchedulerExit>,
) {
    section(
        report,
        "scheduler log",
        &frames_text(&out.frames, FrameType::Log),
    );
    let diag = diagnostics_text(diagnostics, out, reasons, sched_exit);
    section(report, "diagnostics", &diag);
    let dump = sched_ext_dump(out, sched_exit);
    section(report, "sched_ext dump", &dump.join("\n"));
    section(report, "console tail", &out.console_tail);
}

/// The diagnostics section: the first reason with the scheduler's exit, the caller's
/// diagnostics, how the VM ended and its phase times.
fn diagnostics_text(
    diagnostics: &str,
    out: &VmOutcome,
    reasons: &[AssertDetail],
    sched_exit: Option<&SchedulerExit>,
) -> String {
    let t = &out.times;
    let mut verdict_why = reasons
        .first()
        .map(AssertDetail::reason)
        .unwrap_or_default();
    if let Some(x) = sched_exit {
        verdict_why.push_str(&format!(
            "\nscheduler exit: phase {}, exit code {}, kind {}{}, reason {:?}, msg {:?}{}",
            x.phase,
            x.code.map_or("-".into(), |c| c.to_string()),
            x.kind.map_or("-".into(), |k| k.to_string()),
            x.kind_name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            x.reason.as_deref().unwrap_or(""),
            x.msg.as_deref().unwrap_or(""),
            x.died_after_ms
                .map(|ms| format!(", noticed {ms} ms after enable"))
                .unwrap_or_default()
        ));
    }
    format!(
        "verdict: {verdict_why}\n{diagnostics}\nvm end: {}\nbackend: {}\ntimes: setup {:?}, boot to init {:?}, init to exit {:?}, teardown {:?}, total {:?}",
        out.end.describe(),
        out.backend,
        t.setup,
        t.boot_to_init,
        t.init_to_exit,
        t.teardown,
        t.total
    )
}

/// The sched_ext dump section's lines: the kernel's sched_ext lines (from the scheduler's
/// exit, else from dmesg), the verifier log tail, and the head of the debug dump first.
fn sched_ext_dump(out: &VmOutcome, sched_exit: Option<&SchedulerExit>) -> Vec<String> {
    let mut dump = match sched_exit {
        Some(x) => x.kernel_lines.clone(),
        None => super::sched::sched_ext_kernel_lines(&frames_text(&out.frames, FrameType::Dmesg)),
    };
    if let Some(x) = sched_exit.filter(|x| !x.verifier_tail.is_empty()) {
        dump.push(format!(
            "verifier log tail ({}):",
            x.failed_prog.as_deref().unwrap_or("?")
        ));
        dump.extend(x.verifier_tail.iter().map(|l| format!("  {l}")));
    }
    if let Some(x) = sched_exit.filter(|x| !x.dump.is_empty()) {
        // The section keeps its last lines: put the head of a long dump before the
        // kernel's exit lines so both stay visible.
        const DUMP_HEAD: usize = 30;
        let mut head = vec![format!("debug dump ({} lines):", x.dump.len())];
        head.extend(x.dump.iter().take(DUMP_HEAD).map(|l| format!("  {l}")));
        if x.dump.len() > DUMP_HEAD {
            head.push(format!(
                "  ... {} more lines in the scheduler log",
                x.dump.len() - DUMP_HEAD
            ));
        }
        head.append(&mut dump);
        dump = head;
    }
    dump
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assert::DetailKind;
    use crate::vm::{BackendKind, PhaseTimes};

    fn outcome(
        end: VmEnd,
        result: Option<&AssertResult>,
        channel_error: Option<&str>,
    ) -> VmOutcome {
        let frames = result
            .map(|r| Frame {
                kind: FrameType::Result,
                seq: 0,
                payload: serde_json::to_vec(r).unwrap(),
            })
            .into_iter()
            .collect();
        VmOutcome {
            backend: BackendKind::Qemu,
            end,
            frames,
            channel_error: channel_error.map(str::to_string),
            console_tail: String::new(),
            times: PhaseTimes::default(),
            monitor: None,
            kvm_stats: None,
            placement_notes: Vec::new(),
        }
    }

    const EXIT: VmEnd = VmEnd::GuestExit { status: 0 };

    #[test]
    fn a_passing_verdict_passes() {
        let v = judge("c", "", &outcome(EXIT, Some(&AssertResult::pass()), None));
        assert!(v.passed && !v.infra, "{v:?}");
    }

    #[test]
    fn a_failing_verdict_is_a_test_failure_not_infrastructure() {
        let r = AssertResult::fail(DetailKind::Unfair, "spread 99%");
        let v = judge("c", "", &outcome(EXIT, Some(&r), None));
        assert!(!v.passed && !v.infra, "{v:?}");
        assert_eq!(v.reason_lines(), ["Unfair: spread 99%"]);
    }

    #[test]
    fn a_teardown_over_the_cleanup_budget_fails_the_case() {
        let pass = judge("c", "", &outcome(EXIT, Some(&AssertResult::pass()), None));
        let mut v = pass.clone();
        v.check_cleanup_budget("c", Duration::from_millis(900), Some(1000));
        assert_eq!(v, pass, "within budget: unchanged");
        v.check_cleanup_budget("c", Duration::from_millis(900), None);
        assert_eq!(v, pass, "no budget: unchanged");
        v.check_cleanup_budget("c", Duration::from_millis(1500), Some(1000));
        assert!(!v.passed && v.infra, "{v:?}");
        assert_eq!(
            v.reason_lines(),
            ["Other: host teardown took 1500 ms, over the test's cleanup_budget_ms of 1000 ms"]
        );
        assert!(v
            .report
            .starts_with("ktstr case 'c' failed:\n  Other: host teardown took"));
        // A failing case keeps its own reasons first and gains this one.
        let r = AssertResult::fail(DetailKind::Unfair, "spread 99%");
        let mut v = judge("c", "", &outcome(EXIT, Some(&r), None));
        v.check_cleanup_budget("c", Duration::from_millis(1500), Some(1000));
        assert_eq!(v.reasons.len(), 2);
        // The budget's reason goes right under the first line, above the case's own.
        let lines: Vec<&str> = v.report.lines().take(3).collect();
        assert_eq!(lines[0], "ktstr case 'c' failed:");
        assert!(
            lines[1].starts_with("  Other: host teardown took 1500 ms"),
            "{lines:?}"
        );
        assert_eq!(lines[2], "  Unfair: spread 99%");
    }

    #[test]
    fn an_infrastructure_failure_carries_its_reason() {
        let v = CaseVerdict::infra_failure("c", AssertDetail::new(DetailKind::Other, "no kernel"));
        assert!(!v.passed && v.infra && v.skipped.is_none() && v.sched_exit.is_none());
        assert_eq!(v.reason_lines(), ["Other: no kernel"]);
        assert_eq!(v.report, "ktstr case 'c' failed:\n  Other: no kernel\n");
    }

    /// A failure report: reasons, then the scheduler log, the verdict with the scheduler's
    /// exit, the head of its debug dump before the kernel's lines, and the console tail; a
    /// section with nothing in it is left out.
    #[test]
    fn a_failure_report_has_every_section() {
        let exit = SchedulerExit {
            phase: "run".into(),
            code: Some(1),
            kind: Some(1024),
            kind_name: Some("ERROR".into()),
            msg: Some("injected".into()),
            dump: (0..35).map(|i| format!("dump {i}")).collect(),
            kernel_lines: vec!["sched_ext: disabled".into()],
            ..Default::default()
        };
        let r = AssertResult::fail(DetailKind::SchedulerDied, "scheduler exited");
        let mut out = outcome(EXIT, Some(&r), None);
        out.frames.push(Frame {
            kind: FrameType::Log,
            seq: 1,
            payload: b"sched says hi\n".to_vec(),
        });
        out.frames.push(Frame {
            kind: FrameType::SchedExit,
            seq: 2,
            payload: serde_json::to_vec(&exit).unwrap(),
        });
        out.console_tail = "last console line\n".into();
        let v = judge("c", "DIAG", &out);
        assert_eq!(v.sched_exit.as_ref(), Some(&exit));
        let rep = &v.report;
        let at = |needle: &str| {
            rep.find(needle)
                .unwrap_or_else(|| panic!("no {needle:?} in:\n{rep}"))
        };
        assert!(
            at("  SchedulerDied: scheduler exited") < at("--- scheduler log ---\nsched says hi")
        );
        assert!(at("sched says hi") < at("--- diagnostics ---\nverdict: SchedulerDied"));
        at("scheduler exit: phase run, exit code 1, kind 1024 (ERROR), reason \"\", msg \"injected\"");
        at("DIAG");
        assert!(at("debug dump (35 lines):\n  dump 0") < at("  dump 29\n  ... 5 more lines"));
        assert!(at("5 more lines in the scheduler log") < at("sched_ext: disabled"));
        at("--- console tail ---\nlast console line");
        assert!(!rep.contains("dump 30"), "{rep}");

        // No log, no dump, no console: no empty sections.
        let bare = judge("c", "", &outcome(EXIT, Some(&r), None));
        for s in ["scheduler log", "sched_ext dump", "console tail"] {
            assert!(
                !bare.report.contains(&format!("--- {s} ---")),
                "{}",
                bare.report
            );
        }
        assert!(bare.sched_exit.is_none());
    }

    /// A load failure shows the verifier's last lines under the failed program's name; a
    /// dump that fits whole gets no "more lines" note.
    #[test]
    fn a_load_failure_shows_the_verifier_tail() {
        let exit = SchedulerExit {
            phase: "load".into(),
            failed_prog: Some("demo_dispatch".into()),
            verifier_tail: vec!["R1 invalid mem access 'scalar'".into()],
            dump: (0..30).map(|i| format!("dump {i}")).collect(),
            ..Default::default()
        };
        let r = AssertResult::fail(DetailKind::SchedulerDied, "scheduler failed to load");
        let mut out = outcome(EXIT, Some(&r), None);
        out.frames.push(Frame {
            kind: FrameType::SchedExit,
            seq: 1,
            payload: serde_json::to_vec(&exit).unwrap(),
        });
        let rep = judge("c", "", &out).report;
        assert!(
            rep.contains("verifier log tail (demo_dispatch):\n  R1 invalid mem access 'scalar'"),
            "{rep}"
        );
        assert!(
            rep.contains("  dump 29\n") && !rep.contains("more lines"),
            "{rep}"
        );
    }

    #[test]
    fn no_verdict_is_infrastructure() {
        let v = judge("c", "", &outcome(VmEnd::Reboot, None, None));
        assert!(!v.passed && v.infra, "{v:?}");
        assert!(
            v.reasons[0].kind == DetailKind::NoVerdict
                && v.reasons[0].message == VmEnd::Reboot.describe(),
            "{v:?}"
        );
    }

    #[test]
    fn a_corrupt_channel_fails_even_a_passing_verdict() {
        let v = judge(
            "c",
            "",
            &outcome(
                EXIT,
                Some(&AssertResult::pass()),
                Some("bad CRC in frame 3"),
            ),
        );
        assert!(!v.passed && v.infra, "{v:?}");
        assert!(
            v.reason_lines()
                .iter()
                .any(|r| r == "ResultChannel: bad CRC in frame 3"),
            "{v:?}"
        );
    }

    fn stalled() -> MonitorSummary {
        MonitorSummary {
            total_samples: 40,
            period_ms: 100,
            sustained_samples: 5,
            stall_detected: true,
            stall_count: 1,
            stalls: vec![crate::monitor::Stall {
                cpu: 3,
                duration_ms: 1200,
                samples: 12,
                from_ms: 2000,
                nr_running: 2,
            }],
            ..Default::default()
        }
    }

    const ON: MonitorLimits = MonitorLimits {
        max_imbalance_ratio: Some(4.0),
        max_local_dsq_depth: Some(50),
        fail_on_stall: true,
    };

    #[test]
    fn a_monitor_finding_fails_a_passing_case_with_its_section() {
        let mut v = judge("c", "", &outcome(EXIT, Some(&AssertResult::pass()), None));
        let quiet = v.clone();
        v.add_monitor("c", &MonitorSummary::default(), &ON);
        assert_eq!(v, quiet, "nothing found: unchanged");
        v.add_monitor("c", &stalled(), &ON);
        assert!(!v.passed && !v.infra, "a finding is a test failure: {v:?}");
        assert_eq!(v.reasons.len(), 1);
        assert!(
            v.reason_lines()[0].starts_with("Monitor: CPU 3 stalled"),
            "{v:?}"
        );
        let lines: Vec<&str> = v.report.lines().collect();
        assert_eq!(lines[0], "ktstr case 'c' failed:");
        assert!(
            lines[1].starts_with("  Monitor: CPU 3 stalled"),
            "{lines:?}"
        );
        assert_eq!(lines[2], "--- monitor ---");
        assert!(lines[3].starts_with("40 samples every 100 ms"), "{lines:?}");
        assert!(
            v.report.contains("stall: CPU 3 clock still for 1200 ms"),
            "{}",
            v.report
        );
        // fail_on_stall off: recorded, not judged.
        let mut off = quiet.clone();
        off.add_monitor(
            "c",
            &stalled(),
            &MonitorLimits {
                fail_on_stall: false,
                ..ON
            },
        );
        assert_eq!(off, quiet);
    }

    #[test]
    fn a_failing_case_gains_the_monitor_reason_and_section_before_the_console() {
        let r = AssertResult::fail(DetailKind::Starved, "worker 7 made no progress");
        let mut out = outcome(EXIT, Some(&r), None);
        out.console_tail = "[ 1.0] console line".into();
        let mut v = judge("c", "", &out);
        v.add_monitor("c", &stalled(), &ON);
        assert_eq!(v.reason_lines()[0], "Starved: worker 7 made no progress");
        assert!(
            v.reason_lines()[1].starts_with("Monitor: CPU 3 stalled"),
            "{v:?}"
        );
        let at = |needle: &str| v.report.find(needle).unwrap_or(usize::MAX);
        assert!(
            at("  Starved: worker 7") < at("  Monitor: CPU 3"),
            "{}",
            v.report
        );
        assert!(
            at("  Monitor: CPU 3") < at("--- scheduler log ---").min(at("--- diagnostics ---"))
        );
        // The reason is a line of its own, right after the guest's reasons.
        assert!(
            v.report
                .contains("  Starved: worker 7 made no progress\n  Monitor: CPU 3 stalled"),
            "{}",
            v.report
        );
        assert!(
            at("--- monitor ---") < at("--- console tail ---"),
            "{}",
            v.report
        );
        assert!(at("--- console tail ---") < usize::MAX);
        // A failing case shows the monitor's summary even when it found nothing: it is
        // evidence (here, that it was unavailable and why).
        let mut plain = judge("c", "", &out);
        let none = MonitorSummary {
            unavailable: Some("monitor unavailable: no vmlinux".into()),
            ..Default::default()
        };
        plain.add_monitor("c", &none, &ON);
        assert_eq!(plain.reasons.len(), 1, "{plain:?}");
        assert!(
            plain
                .report
                .contains("--- monitor ---\nmonitor unavailable: no vmlinux\n"),
            "{}",
            plain.report
        );
    }
}
