//! `--kernel` selectors: versions, ranges and `git+URL#REF` sources are classified or
//! refused with a reason.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ktstr::fuzz_props::kernel_spec(data));
