//! Sidecar JSON (stats, compare, replay read other runs' files): any bytes are refused or
//! accepted, and an accepted sidecar can be judged and written back.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ktstr::fuzz_props::sidecar(data));
