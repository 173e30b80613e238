//! `auto_repro`: a case that failed runs once more with the host-side monitor sampling
//! [`RATE`] times as often. Both sidecars are kept and point at each other, and the failure
//! report says whether the failure came back and what the finer run saw. The first run's
//! verdict stands either way: a failure that does not reproduce is still a failure, now
//! marked intermittent.

use std::path::PathBuf;
use std::time::Duration;

use super::host::Booted;
use super::report::CaseVerdict;
use crate::registry::CaseSpec;
use crate::sidecar::{ReproLink, Sidecar};

/// How many times as often the monitor samples in the second run.
pub const RATE: u32 = 10;

/// Whether `verdict` of `case` calls for a second run: the test asks for it, the case failed
/// and the failure was not what the test expects (`expect_err` tests fail on purpose).
pub(super) fn wanted(case: &CaseSpec, verdict: &CaseVerdict) -> bool {
    case.test.auto_repro && !case.test.expect_err && !verdict.passed && verdict.skipped.is_none()
}

/// Links the first run and its re-run (`again`, or why it could not boot), writes both
/// sidecars with `write` and returns the first run's verdict with the re-run in its report.
pub(super) fn link(
    first: Booted,
    again: Result<Booted, String>,
    period: Duration,
    write: impl Fn(&Sidecar) -> Option<PathBuf>,
) -> CaseVerdict {
    let Booted {
        mut verdict,
        sidecar: mut first_sc,
    } = first;
    let monitor_period_ms = period.as_millis() as u64;
    let (link, second_path) = match again {
        Ok(mut b) => {
            b.sidecar.repro_of = Some(first_sc.file_name());
            let path = write(&b.sidecar);
            let link = ReproLink {
                sidecar: path.as_ref().map(|_| b.sidecar.file_name()),
                passed: b.verdict.passed,
                reasons: b.verdict.reason_lines(),
                monitor_period_ms,
                error: None,
            };
            (link, path)
        }
        Err(e) => (
            ReproLink {
                monitor_period_ms,
                error: Some(e),
                ..Default::default()
            },
            None,
        ),
    };
    let report = report(&link, RATE);
    first_sc.repro = Some(link);
    let first_path = write(&first_sc);
    verdict.report.push_str(&report);
    for (what, p) in [("first run", first_path), ("second run", second_path)] {
        if let Some(p) = p {
            verdict
                .report
                .push_str(&format!("  {what}'s sidecar: {}\n", p.display()));
        }
    }
    verdict
}

/// The failure report's account of the second run.
fn report(link: &ReproLink, rate: u32) -> String {
    let mut s = format!(
        "auto_repro: ran the case again with the host monitor every {} ms ({rate}x as often):\n",
        link.monitor_period_ms
    );
    match (&link.error, link.passed) {
        (Some(e), _) => s.push_str(&format!("  it could not run: {e}\n")),
        (None, true) => s.push_str("  it passed: the failure did not reproduce (intermittent)\n"),
        (None, false) => {
            s.push_str("  it failed again:\n");
            for r in &link.reasons {
                s.push_str(&format!("    {r}\n"));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assert::{AssertDetail, DetailKind};

    fn booted(passed: bool, test: &str, reason: &str) -> Booted {
        let mut verdict = CaseVerdict {
            passed,
            report: format!(
                "ktstr case '{test}' {}\n",
                if passed { "passed" } else { "failed" }
            ),
            ..Default::default()
        };
        if !passed {
            verdict
                .reasons
                .push(AssertDetail::new(DetailKind::Monitor, reason.to_string()));
        }
        let sidecar = Sidecar {
            test_name: test.into(),
            passed,
            ..Default::default()
        };
        Booted { verdict, sidecar }
    }

    /// Runs `link` with a writer that keeps what it was given.
    fn linked(again: Result<Booted, String>) -> (CaseVerdict, Vec<Sidecar>) {
        let written = std::cell::RefCell::new(Vec::new());
        let v = link(
            booted(false, "t", "CPU 1 stalled for 2400 ms"),
            again,
            Duration::from_millis(40),
            |s| {
                written.borrow_mut().push(s.clone());
                Some(PathBuf::from("/runs").join(s.file_name()))
            },
        );
        (v, written.into_inner())
    }

    #[test]
    fn a_failure_that_comes_back_links_both_sidecars_and_quotes_the_second_run() {
        let (v, written) = linked(Ok(booted(false, "t", "CPU 1 stalled for 2360 ms")));
        assert!(!v.passed);
        assert_eq!(v.reason_lines(), ["Monitor: CPU 1 stalled for 2400 ms"]);
        assert!(
            v.report.contains("host monitor every 40 ms (10x as often)")
                && v.report
                    .contains("it failed again:\n    Monitor: CPU 1 stalled for 2360 ms"),
            "{}",
            v.report
        );
        let [second, first] = &written[..] else {
            panic!("{written:?}")
        };
        assert_eq!(second.repro_of.as_deref(), Some(first.file_name().as_str()));
        assert!(second.file_name().ends_with(crate::sidecar::REPRO_SUFFIX));
        assert!(first.file_name().ends_with(".ktstr.json"));
        let l = first.repro.as_ref().unwrap();
        assert_eq!(l.sidecar.as_deref(), Some(second.file_name().as_str()));
        assert_eq!((l.passed, l.monitor_period_ms), (false, 40));
        assert!(v.report.contains(&format!(
            "second run's sidecar: /runs/{}",
            second.file_name()
        )));
        assert!(v
            .report
            .contains(&format!("first run's sidecar: /runs/{}", first.file_name())));
    }

    #[test]
    fn a_failure_that_does_not_come_back_still_fails_and_is_called_intermittent() {
        let (v, written) = linked(Ok(booted(true, "t", "")));
        assert!(!v.passed);
        assert!(
            v.report
                .contains("it passed: the failure did not reproduce"),
            "{}",
            v.report
        );
        assert!(written[1].repro.as_ref().unwrap().passed);
    }

    #[test]
    fn a_second_run_that_could_not_boot_says_why_and_keeps_the_first_sidecar() {
        let (v, written) = linked(Err("resolving the kernel: gone".into()));
        assert!(
            v.report
                .contains("it could not run: resolving the kernel: gone"),
            "{}",
            v.report
        );
        assert_eq!(written.len(), 1);
        let l = written[0].repro.as_ref().unwrap();
        assert_eq!(
            (l.sidecar.as_ref(), l.error.as_deref()),
            (None, Some("resolving the kernel: gone"))
        );
    }
}
