//! Topology strings (`--topology`, case names): any text is refused with a reason or accepted,
//! and an accepted topology survives its own label and CLI forms.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ktstr::fuzz_props::topology(data));
