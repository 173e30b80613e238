//! The guest ↔ host protocol's fixed names and numbers, in one place: what the host puts on
//! the kernel command line, how the guest knows its initramfs arrived whole, how it ends the VM
//! on purpose, and the result channel's frame types (the framing itself is [`crate::shm`]).

pub use crate::shm::{FrameType, FRAME_HEADER_LEN, HEADER_LEN, MAGIC, VERSION};

/// The last entry of every initramfs: the guest refuses to run a case without it (a guest that
/// ran out of memory while unpacking would otherwise run half a case).
pub const SENTINEL_PATH: &str = "/.ktstr-initramfs-complete";

/// The I/O port a guest writes its status byte to, to end the VM on purpose (qemu's
/// `isa-debug-exit` convention; the in-process VMM handles the port itself).
pub const EXIT_PORT: u16 = 0xF4;

/// The kernel command-line key that tells the guest where the result channel is
/// (`ktstr_shm=<size>@<base>`; dotless, so the kernel passes it to init's environment).
pub const SHM_KEY: &str = "ktstr_shm";

/// The command-line word for a result region of `size` bytes at guest-physical `base`.
pub fn shm_arg(size: u64, base: u64) -> String {
    format!("{SHM_KEY}={size:#x}@{base:#x}")
}

/// Parses `ktstr_shm=<size>@<base>` (hex with 0x or decimal) from a kernel command line.
pub fn parse_shm_arg(cmdline: &str) -> Result<(u64, u64), String> {
    let arg = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(SHM_KEY)?.strip_prefix('='))
        .ok_or_else(|| format!("{SHM_KEY}= not present"))?;
    let (size, base) = arg
        .split_once('@')
        .ok_or_else(|| format!("{arg:?} is not <size>@<base>"))?;
    let num = |s: &str| -> Result<u64, String> {
        match s.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => s.parse(),
        }
        .map_err(|_| format!("{s:?} is not a number"))
    };
    let (size, base) = (num(size)?, num(base)?);
    if size < 4096 || size % 4096 != 0 || base % 4096 != 0 {
        return Err(format!("size {size:#x} / base {base:#x} not page aligned"));
    }
    Ok((size, base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shm_word_round_trips() {
        let w = shm_arg(0x80_0000, 0x3f80_0000);
        assert_eq!(w, "ktstr_shm=0x800000@0x3f800000");
        assert_eq!(
            parse_shm_arg(&format!("console=ttyS0 {w} quiet")),
            Ok((0x80_0000, 0x3f80_0000))
        );
        assert!(parse_shm_arg("ktstr_shmx=1@2").is_err());
        assert!(parse_shm_arg("ktstr_shm=0x1000").is_err());
        assert!(parse_shm_arg("ktstr_shm=0x1001@0x1000").is_err());
    }

    #[test]
    fn shm_arg_parsing() {
        assert_eq!(
            parse_shm_arg("console=ttyS0 ktstr_shm=0x800000@0x3f800000 quiet"),
            Ok((0x800000, 0x3f800000))
        );
        assert_eq!(parse_shm_arg("ktstr_shm=8192@4096"), Ok((8192, 4096)));
        assert!(parse_shm_arg("quiet").unwrap_err().contains("not present"));
        assert!(parse_shm_arg("ktstr_shm=0x800000")
            .unwrap_err()
            .contains("<size>@<base>"));
        assert!(parse_shm_arg("ktstr_shm=0x801@0x1000")
            .unwrap_err()
            .contains("aligned"));
        assert!(parse_shm_arg("ktstr_shm=zz@0x1000")
            .unwrap_err()
            .contains("not a number"));
    }
}
