//! Procedural macros for ktstr. The generated code names only `::ktstr` paths.
//!
//! - [`macro@ktstr_test`] registers a test function in ktstr's test registry.
//! - [`declare_scheduler!`] declares a scheduler, its flags and typed flag constants.
//!
//! Every invalid declaration is rejected at compile time with a span on the offending token.

use proc_macro::TokenStream;

mod lits;
mod scheduler;
mod test_attr;

/// Registers `fn NAME(ctx: &Ctx) -> Result<AssertResult>` as a ktstr test.
///
/// ```ignore
/// #[ktstr_test(llcs = 2, cores = 4, scheduler = SCX_DEMO, required_flags = [SCX_DEMO::LLC],
///              max_spread_pct = 20.0, duration_s = 5)]
/// fn two_cgroups(ctx: &Ctx) -> Result<AssertResult> { /* ... */ }
/// ```
/// Keys (all optional): topology `numa_nodes`, `llcs`, `cores`, `threads`; `memory_mib`;
/// `scheduler`, `extra_sched_args`, `watchdog_timeout_s`; `required_flags`, `excluded_flags`;
/// `duration_s`, `workers_per_cgroup`; every `Assert` threshold (ints or float literals as the
/// field's type); gates `min_llcs`, `max_llcs`, `min_cpus`, `max_cpus`, `min_numa_nodes`,
/// `max_numa_nodes`, `requires_smt`; `performance_mode`, `expect_err`, `ignore`, `host_only`,
/// `auto_repro`, `cleanup_budget_ms`; `work_types`; `payload`, `workloads`,
/// `extra_include_files`.
///
/// `expect_err` takes a bool or a diagnosis string: `expect_err = "SchedulerDied: stall
/// detected"` passes only when the case fails with a detail of that kind whose message
/// contains the text (a string without a leading `Kind:` matches any failure reason).
#[proc_macro_attribute]
pub fn ktstr_test(attr: TokenStream, item: TokenStream) -> TokenStream {
    test_attr::expand(attr.into(), item.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Declares a scheduler and registers it:
///
/// ```ignore
/// declare_scheduler!(SCX_DEMO {
///     name: "scx-demo", binary: "scx_demo", topology: (1, 2, 4, 1),
///     flags: { llc: ["--llc"], steal: ["--steal"] requires [llc], spread: ["--spread"] excludes [steal] },
///     sched_args: ["--verbose"], sysctls: ["kernel.sched_x" = "1"], kargs: ["nohz_full=1-3"],
///     assert: Assert::NO_OVERRIDES.max_gap_ms(3000), constraints: { max_llcs: 8 },
///     watchdog_arg: "--timeout-ms",
/// });
/// ```
/// `watchdog_arg` names the scheduler's own option for the sched_ext watchdog timeout, in
/// milliseconds; the guest appends it with the test's `watchdog_timeout_s` (stretched on slow
/// backends such as TCG).
///
/// Generates `pub const SCX_DEMO: Scheduler` and a module `SCX_DEMO` holding one typed
/// [`FlagRef`](../ktstr/registry/struct.FlagRef.html) const per flag (`SCX_DEMO::LLC`).
#[proc_macro]
pub fn declare_scheduler(input: TokenStream) -> TokenStream {
    scheduler::expand(input.into())
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}
