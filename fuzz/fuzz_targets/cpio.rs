//! The newc cpio reader (`cargo ktstr initramfs --list` and our own archive checks): any bytes
//! are refused or read into entries that lie within the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ktstr::fuzz_props::cpio(data));
