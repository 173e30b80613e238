//! The ELF dependency walker's parser: host binaries are outside input; any bytes give the
//! dynamic-linking facts or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ktstr::fuzz_props::elf(data));
