//! Streaming `--list` over the lazy matrix, and the libtest filter rules it shares with the
//! run path.

use std::io::Write;

use ktstr::registry::matrix::{Matrix, MatrixError, ResolveError};
use libtest_mimic::Arguments;

/// Why listing failed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The registry cannot be expanded (the message names the test).
    #[error(transparent)]
    Matrix(#[from] MatrixError),
    /// Writing stdout failed.
    #[error("writing the test list: {0}")]
    Io(String),
}

/// libtest's selection rule for one case name (filter, `--exact`, `--skip`, `--ignored`).
pub fn selected(args: &Arguments, name: &str, ignored: bool) -> bool {
    if let Some(f) = &args.filter {
        let hit = if args.exact {
            name == f
        } else {
            name.contains(f.as_str())
        };
        if !hit {
            return false;
        }
    }
    let skipped = args.skip.iter().any(|s| {
        if args.exact {
            name == s
        } else {
            name.contains(s.as_str())
        }
    });
    !skipped && (!args.ignored || ignored)
}

/// Writes `name: test` for every selected case; returns how many. With `--exact NAME` only
/// that name is parsed and checked, whatever the size of the matrix.
pub fn write_list(
    matrix: &Matrix,
    args: &Arguments,
    out: &mut impl Write,
) -> Result<usize, ListError> {
    let io = |e: std::io::Error| ListError::Io(e.to_string());
    if let (true, Some(name)) = (args.exact, &args.filter) {
        return match matrix.resolve(name) {
            Ok(case) if selected(args, &case.name, case.ignored) => {
                writeln!(out, "{}: test", case.name).map_err(io)?;
                Ok(1)
            }
            Ok(_) | Err(ResolveError::UnknownTest(_)) | Err(ResolveError::NotACase { .. }) => Ok(0),
            Err(ResolveError::Invalid(e)) => Err(e.into()),
        };
    }
    let mut n = 0;
    let mut err = None;
    matrix.for_each_case(|c| {
        if err.is_some() || !selected(args, c.name, c.ignored) {
            return;
        }
        // `name: test`, written in pieces to avoid formatting machinery per case.
        let r = out
            .write_all(c.name.as_bytes())
            .and_then(|_| out.write_all(b": test\n"));
        match r {
            Ok(()) => n += 1,
            Err(e) => err = Some(io(e)),
        }
    })?;
    match err {
        Some(e) => Err(e),
        None => Ok(n),
    }
}

/// The cases `flagged` lists as ignored that `plain` (the same registry without the "cannot
/// run here" flags) would run, each with why: these are the cases that could not run.
pub fn unrunnable(
    plain: &Matrix,
    flagged: &Matrix,
    why: ktstr::unrunnable::Why,
) -> Result<Vec<ktstr::unrunnable::Unrunnable>, MatrixError> {
    let mut runnable = std::collections::HashSet::new();
    plain.for_each_case(|c| {
        if !c.ignored {
            runnable.insert(c.name.to_string());
        }
    })?;
    let mut out = Vec::new();
    flagged.for_each_case(|c| {
        if c.ignored && runnable.contains(c.name) {
            out.push(ktstr::unrunnable::Unrunnable {
                case: c.name.to_string(),
                why,
            });
        }
    })?;
    Ok(out)
}
