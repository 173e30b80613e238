//! Example ktstr suites. The tests live in `tests/`; `src/bin/verdict_fixtures.rs` holds
//! cases that must fail, driven by `tests/harness_verdicts.rs`.
