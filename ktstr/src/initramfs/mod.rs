//! Initramfs construction: cpio newc archives with ELF dependency closures, include files and
//! busybox, cached across VMs.
//!
//! [`build`] turns an [`InitramfsSpec`] into one file the VMM loads as the initrd: a cached
//! base archive (the test binary as `/init` with its loader and shared libraries at their host
//! paths, extra binaries in `/bin`, busybox, `-i` files under `/include-files`) followed by a
//! small per-case archive whose last entry is [`SENTINEL_PATH`].
//!
//! Module map:
//! - [`cpio`]: newc writer and reader ([`read_newc`]);
//! - `tree`: the guest filesystem model (ordering, dedup, symlink-aware paths);
//! - [`elf_deps`]: loader and `DT_NEEDED` closure, resolved like ld.so;
//! - `cache`: keys, fingerprints, atomic writes, pruning;
//! - `builder`: the spec and [`build`].

mod builder;
mod cache;
pub mod cpio;
pub mod elf_deps;
mod error;
mod strip;
mod tree;

#[cfg(test)]
mod tests;

pub use builder::{build, Built, InitramfsSpec, BUSYBOX_PATHS, INCLUDE_DIR};
pub use cpio::{read_newc, CpioEntry, CpioWriter};
pub use elf_deps::{Closure, LibResolver, Placement};
pub use error::{CpioReadError, InitramfsError};
pub use strip::sweep_abandoned;

/// The guest path of the completion sentinel: an empty file that is the **last** entry of the
/// initramfs. The kernel silently stops unpacking when guest RAM runs out, so `/init` checks
/// that this file exists before trusting its root filesystem.
pub use crate::protocol::SENTINEL_PATH;
