//! `cargo ktstr show-thresholds TEST`: the merged thresholds a test is judged by.

use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

use crate::test_bins::ktstr_test_binaries;

/// Prints the merged `Assert` of `name`: a bare `#[ktstr_test]` function name or one of its
/// case names (`test/scenario/topology`), with the limits in force on the backend a case would
/// run on now.
pub fn run(name: &str) -> Result<ExitCode> {
    let bins = ktstr_test_binaries()?;
    let bare = name.rsplit("::").next().unwrap_or(name);
    let test = name.split('/').next().unwrap_or(name);
    if let Some(bin) = bins.iter().find(|b| b.tests.iter().any(|t| t == test)) {
        let st = Command::new(&bin.path)
            .args(["--ktstr-show-thresholds", name])
            .status()
            .with_context(|| format!("running {}", bin.path.display()))?;
        use std::os::unix::process::ExitStatusExt;
        return Ok(if st.success() {
            ExitCode::SUCCESS
        } else if st.signal() == Some(libc::SIGPIPE) {
            // Our stdout was closed (`| head`): end as quietly as the child did.
            ExitCode::from(141)
        } else {
            ExitCode::from(1)
        });
    }
    let all = bins.iter().flat_map(|b| b.tests.iter().map(String::as_str));
    let e = ktstr::registry::UnknownTest::new(name, all);
    if bare != name {
        bail!("{e}\nhint: strip the `<binary>::` prefix: cargo ktstr show-thresholds {bare}");
    }
    bail!("{e}")
}
