//! `replay`'s nextest filterset from sidecar test names: whatever the names, every term of the
//! expression is `test(/^NAME\//)` for an identifier NAME, so a hostile name cannot widen or
//! change the selection.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ktstr::fuzz_props::replay_filter(data));
