//! `stats compare --policy FILE`: any text is refused with a reason or gives a policy whose
//! gates are never negative.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ktstr::fuzz_props::policy(data));
