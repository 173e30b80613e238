//! Kernel `.config` text and the IKCONFIG copy inside a kernel image: any bytes are read or
//! refused, never a panic or an unbounded allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ktstr::fuzz_props::kconfig(data));
