//! The result channel as a hostile guest may leave it: any region is read into whole,
//! checked frames or stopped at the first bad one, with memory bounded by the region.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ktstr::fuzz_props::frames(data));
