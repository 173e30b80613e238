//! TEMP placeholder: the VM dispatch (`run_case`) and the guest entry (`guest_main`) are being
//! written separately and replace this file at merge.

use crate::registry::CaseSpec;

/// What running one case concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseVerdict {
    /// Whether the case passed (before `expect_err` inversion, which the harness applies).
    pub passed: bool,
    /// Failure report or summary, printed by the harness.
    pub report: String,
}

/// Runs one case (boots its VM, or runs a `host_only` body on the host).
pub fn run_case(case: &CaseSpec) -> Result<CaseVerdict, String> {
    let _ = case;
    Err("VM dispatch not wired yet".to_string())
}

/// Entry point of the test binary when it runs as PID 1 inside the guest.
pub fn guest_main() -> ! {
    std::process::exit(1)
}
