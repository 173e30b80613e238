//! The verdict of one case and the failure report a person reads.

use crate::assert::AssertResult;
use crate::shm::{Frame, FrameType};
use crate::vm::{VmEnd, VmOutcome};

/// What running one case concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseVerdict {
    /// Whether the case passed (before `expect_err` inversion, which the harness applies).
    pub passed: bool,
    /// Failure report or summary, printed by the harness.
    pub report: String,
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
    let mut reasons: Vec<String> = Vec::new();
    let result = result_of(out);
    let deliberate = matches!(out.end, VmEnd::GuestExit { .. });
    let passed = match (&result, deliberate) {
        (Ok(Some(r)), true) => {
            for d in &r.details {
                if !r.passed {
                    reasons.push(format!("{:?}: {}", d.kind, d.message));
                }
            }
            if r.skipped {
                reasons.push("skipped".into());
            }
            r.passed
        }
        (Ok(Some(_)), false) | (Ok(None), _) => {
            reasons.push(format!("no verdict from the guest: {}", out.end.describe()));
            false
        }
        (Err(e), _) => {
            reasons.push(e.clone());
            false
        }
    };
    for p in out.frames.iter().filter(|f| f.kind == FrameType::Panic) {
        reasons.push(p.text());
    }
    if let Some(e) = &out.channel_error {
        reasons.push(format!("result channel: {e}"));
    }
    let mut report = if passed {
        format!("ktstr case '{name}' passed\n")
    } else {
        format!("ktstr case '{name}' failed:\n")
    };
    for r in &reasons {
        report.push_str(&format!("  {r}\n"));
    }
    if !passed {
        section(
            &mut report,
            "scheduler log",
            &frames_text(&out.frames, FrameType::Log),
        );
        let t = &out.times;
        let diag = format!(
            "{diagnostics}\nvm end: {}\nbackend: {}\ntimes: setup {:?}, boot to init {:?}, init to exit {:?}, teardown {:?}, total {:?}",
            out.end.describe(),
            out.backend,
            t.setup,
            t.boot_to_init,
            t.init_to_exit,
            t.teardown,
            t.total
        );
        section(&mut report, "diagnostics", &diag);
        let dmesg = frames_text(&out.frames, FrameType::Dmesg);
        let sched_ext: Vec<&str> = dmesg.lines().filter(|l| l.contains("sched_ext")).collect();
        section(&mut report, "sched_ext dump", &sched_ext.join("\n"));
        section(&mut report, "console tail", &out.console_tail);
    }
    CaseVerdict { passed, report }
}
