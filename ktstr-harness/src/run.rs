//! Running selected cases through libtest-mimic.

use ktstr::registry::matrix::{Matrix, ResolveError};
use ktstr::registry::CaseSpec;
use ktstr::runner::CaseVerdict;
use libtest_mimic::{Arguments, Failed, Trial};

use crate::list::selected;

/// Applies `expect_err` to a verdict: such a case passes only if the run failed.
pub fn judge(case: &CaseSpec, verdict: &CaseVerdict) -> Result<(), String> {
    match (verdict.passed, case.test.expect_err) {
        (true, false) | (false, true) => Ok(()),
        (false, false) => Err(verdict.report.clone()),
        (true, true) => Err(format!(
            "ktstr case '{}' passed, but the test is declared expect_err = true\n{}",
            case.name, verdict.report
        )),
    }
}

fn trial(case: CaseSpec) -> Trial {
    let ignored = case.ignored;
    let name = case.name.clone();
    Trial::test(name, move || match ktstr::runner::run_case(&case) {
        Ok(v) => judge(&case, &v).map_err(Failed::from),
        // Infrastructure errors fail the case whatever `expect_err` says.
        Err(e) => Err(Failed::from(format!("ktstr case '{}': {e}", case.name))),
    })
    .with_ignored_flag(ignored)
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
            Err(ResolveError::Invalid(e)) => {
                eprintln!("ktstr: {e}");
                return 101;
            }
            // libtest runs zero tests for an unknown exact name; say why on stderr.
            Err(e) => eprintln!("ktstr: {e}"),
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
    i32::from(libtest_mimic::run(&args, trials).has_failed()) * 101
}
