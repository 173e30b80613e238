//! Running selected cases through libtest-mimic.

use ktstr::registry::matrix::{Matrix, ResolveError};
use ktstr::registry::CaseSpec;
use ktstr::runner::CaseVerdict;
use libtest_mimic::{Arguments, Completion, Failed, Trial};

use crate::list::selected;

/// Applies `expect_err` to a verdict: such a case passes only if the run failed, with the
/// declared diagnosis and nothing else when the test names one (`expect_err = "Kind: text"`,
/// see [`ktstr::expect`]). A case that could
/// not run at all never passes a plain `expect_err = true`.
pub fn judge(case: &CaseSpec, verdict: &CaseVerdict) -> Result<Completion, String> {
    if let Some(why) = &verdict.skipped {
        // Neither pass nor fail: an expect_err case that did not run proved nothing.
        return Ok(Completion::ignored_with(format!("skipped: {why}")));
    }
    if let (false, true, Some(pattern)) = (
        verdict.passed,
        case.test.expect_err,
        case.test.expect_err_match,
    ) {
        return match ktstr::expect::check(pattern, &verdict.reasons) {
            Ok(()) => Ok(Completion::Completed),
            Err(why) => Err(format!(
                "ktstr case '{}' failed, but not as expected by {pattern:?}: {why}; it failed with:\n{}",
                case.name, verdict.report
            )),
        };
    }
    match (verdict.passed, case.test.expect_err) {
        (false, true) if verdict.infra => Err(format!(
            "ktstr case '{}' could not run or gave no verdict (expect_err does not cover that)\n{}",
            case.name, verdict.report
        )),
        (false, true) if never_attached(verdict) => Err(format!(
            "ktstr case '{}': the scheduler never attached, which a plain expect_err = true does \
             not cover (it expects the test's checks to fail or the scheduler to die after it \
             attached); to expect a load failure, name it: expect_err = \"SchedulerDied: \
             scheduler failed to load\"\n{}",
            case.name, verdict.report
        )),
        (true, false) | (false, true) => Ok(Completion::Completed),
        (false, false) => Err(verdict.report.clone()),
        (true, true) => Err(format!(
            "ktstr case '{}' passed, but the test is declared expect_err = true\n{}",
            case.name, verdict.report
        )),
    }
}

/// Whether the case failed because its scheduler never got enabled (it failed to start or to
/// load): a broken setup rather than the failure a plain `expect_err` is about.
fn never_attached(verdict: &CaseVerdict) -> bool {
    verdict
        .sched_exit
        .as_ref()
        .is_some_and(|x| x.phase == "load")
}

/// For an `expect_err` case that completed, the line that shows which diagnosis satisfied
/// it; nothing for any other case.
fn satisfied_note(case: &CaseSpec, verdict: &CaseVerdict, completed: bool) -> Option<String> {
    (completed && case.test.expect_err).then(|| {
        format!(
            "ktstr case '{}' failed as expected: {}",
            case.name,
            verdict.reason_lines().join(" | ")
        )
    })
}

fn trial(case: CaseSpec) -> Trial {
    let ignored = case.ignored;
    let name = case.name.clone();
    Trial::ignorable_test(name, move || {
        match stop_if_interrupted(ktstr::runner::run_case(&case)) {
            Ok(v) => {
                let r = judge(&case, &v).map_err(Failed::from);
                if let Some(note) =
                    satisfied_note(&case, &v, matches!(r, Ok(Completion::Completed)))
                {
                    eprintln!("{note}");
                }
                r
            }
            // Infrastructure errors fail the case whatever `expect_err` says.
            Err(e) => Err(Failed::from(format!("ktstr case '{}': {e}", case.name))),
        }
    })
    .with_ignored_flag(ignored)
}

/// Passes `r` through, unless a stop signal arrived while the case ran: then the case has
/// released everything (the VM is stopped, its files are gone), so the process ends by that
/// signal instead of running further cases.
fn stop_if_interrupted<T>(r: T) -> T {
    if let Some(sig) = ktstr::interrupt::received() {
        eprintln!(
            "ktstr: stopped by {}: the VM and its files are gone; no further cases run",
            ktstr::interrupt::name(sig)
        );
        ktstr::interrupt::exit_as_signalled(sig);
    }
    r
}

/// Selects the cases `args` asks for, runs them and returns the exit code (101 on failure).
pub fn run(matrix: &Matrix, mut args: Arguments) -> i32 {
    // Each case boots a VM: default to one at a time unless the user asks for more.
    if args.test_threads.is_none() {
        args.test_threads = Some(1);
    }
    let mut trials = Vec::new();
    if let (true, Some(name)) = (args.exact, args.filter.clone()) {
        match matrix.resolve(&name) {
            Ok(case) => trials.push(trial(case)),
            // The test exists here but the rest of the name is wrong (say, a topology with 0
            // LLCs): running nothing and passing would hide the typo.
            Err(e @ (ResolveError::Invalid(_) | ResolveError::NotACase { .. })) => {
                eprintln!("ktstr: {e}");
                return 101;
            }
            // A test this binary does not have may be another binary's (`cargo test --
            // --exact NAME` runs every test binary): zero tests, as libtest does, with a note.
            Err(e @ ResolveError::UnknownTest(_)) => eprintln!("ktstr: {e}"),
        }
    } else {
        let res = matrix.for_each_case(|c| {
            if selected(&args, c.name, c.ignored) {
                trials.push(trial(c.to_spec()));
            }
        });
        if let Err(e) = res {
            eprintln!("ktstr: {e}");
            return 101;
        }
    }
    let failed = libtest_mimic::run(&args, trials).has_failed();
    // A signal that came after the last case's own check still ends us by that signal.
    stop_if_interrupted(());
    i32::from(failed) * 101
}

#[cfg(test)]
mod tests {
    use super::*;
    use ktstr::prelude::*;
    use ktstr::registry::matrix::{KernelSet, Matrix};
    use ktstr::registry::KtstrTest;
    use ktstr::runner::SchedulerExit;

    fn body(_: &Ctx) -> Result<AssertResult> {
        Ok(AssertResult::pass())
    }

    static TESTS: [KtstrTest; 3] = [
        KtstrTest::new("plain", body),
        KtstrTest::new("expects", body).expect_err(true),
        KtstrTest::new("named", body)
            .expect_err(true)
            .expect_err_match("Unfair: spread"),
    ];
    const PLAIN: &str = "plain";
    const EXPECTS: &str = "expects";
    const NAMED: &str = "named";

    fn spec(test: &str) -> CaseSpec {
        Matrix::new(&TESTS, KernelSet::none())
            .resolve(&format!("{test}/eevdf/1n1l2c1t"))
            .unwrap()
    }

    fn verdict(passed: bool, reasons: &[&str]) -> CaseVerdict {
        CaseVerdict {
            passed,
            report: format!("REPORT passed={passed}"),
            reasons: reasons
                .iter()
                .map(|r| {
                    let (k, message) = r.split_once(": ").unwrap();
                    ktstr::assert::AssertDetail {
                        kind: serde_json::from_str(&format!("\"{k}\"")).unwrap(),
                        message: message.into(),
                    }
                })
                .collect(),
            sched_exit: None,
            infra: false,
            skipped: None,
        }
    }

    fn completed(r: Result<Completion, String>) -> bool {
        matches!(r, Ok(Completion::Completed))
    }

    /// The failure message; panics on any completion.
    fn err(r: Result<Completion, String>) -> String {
        match r {
            Err(e) => e,
            Ok(Completion::Completed) => panic!("completed"),
            Ok(Completion::Ignored { reason }) => panic!("ignored: {reason:?}"),
        }
    }

    #[test]
    fn a_plain_case_passes_or_fails_with_its_report() {
        assert!(completed(judge(&spec(PLAIN), &verdict(true, &[]))));
        let e = err(judge(&spec(PLAIN), &verdict(false, &["Unfair: x"])));
        assert_eq!(e, "REPORT passed=false");
    }

    #[test]
    fn a_skipped_case_is_ignored_whatever_it_expects() {
        for t in [PLAIN, EXPECTS, NAMED] {
            let mut v = verdict(false, &[]);
            v.skipped = Some("no kernel".into());
            match judge(&spec(t), &v) {
                Ok(Completion::Ignored { reason }) => {
                    assert_eq!(reason.as_deref(), Some("skipped: no kernel"))
                }
                r => panic!("not ignored: {}", err(r)),
            }
        }
    }

    #[test]
    fn plain_expect_err_needs_a_real_failure() {
        assert!(completed(judge(
            &spec(EXPECTS),
            &verdict(false, &["Unfair: x"])
        )));
        let e = err(judge(&spec(EXPECTS), &verdict(true, &[])));
        assert!(
            e.contains("passed, but the test is declared expect_err"),
            "{e}"
        );
        let mut infra = verdict(false, &["Other: no verdict"]);
        infra.infra = true;
        let e = err(judge(&spec(EXPECTS), &infra));
        assert!(e.contains("could not run or gave no verdict"), "{e}");
        assert!(e.contains("REPORT"), "{e}");
        let mut unloaded = verdict(false, &["SchedulerDied: scheduler failed to load"]);
        unloaded.sched_exit = Some(SchedulerExit {
            phase: "load".into(),
            ..Default::default()
        });
        let e = err(judge(&spec(EXPECTS), &unloaded));
        assert!(e.contains("never attached"), "{e}");
        // A scheduler that died while running is a real failure.
        let mut died = unloaded.clone();
        died.sched_exit.as_mut().unwrap().phase = "run".into();
        assert!(completed(judge(&spec(EXPECTS), &died)));
    }

    #[test]
    fn only_a_completed_expect_err_case_says_what_satisfied_it() {
        let v = verdict(false, &["Unfair: spread 40%", "Stuck: went"]);
        assert_eq!(
            satisfied_note(&spec(EXPECTS), &v, true).as_deref(),
            Some("ktstr case 'expects/eevdf/1n1l2c1t' failed as expected: Unfair: spread 40% | Stuck: went")
        );
        assert_eq!(satisfied_note(&spec(EXPECTS), &v, false), None);
        assert_eq!(
            satisfied_note(&spec(PLAIN), &verdict(true, &[]), true),
            None
        );
    }

    #[test]
    fn a_named_expectation_needs_that_diagnosis_and_no_other() {
        let n = spec(NAMED);
        assert!(completed(judge(
            &n,
            &verdict(false, &["Unfair: spread 40% > 15%"])
        )));
        let e = err(judge(&n, &verdict(false, &["Stuck: went 900 ms"])));
        assert!(e.contains("not as expected by \"Unfair: spread\""), "{e}");
        assert!(e.contains("REPORT"), "{e}");
        let e = err(judge(
            &n,
            &verdict(false, &["Unfair: spread 40% > 15%", "Stuck: went 900 ms"]),
        ));
        assert!(e.contains("not as expected"), "{e}");
        let e = err(judge(&n, &verdict(true, &[])));
        assert!(e.contains("declared expect_err"), "{e}");
    }
}
