//! The BPF programs loaded in the running kernel, with the verifier's instruction counts
//! (`bpf_prog_info.verified_insns`): what `cargo ktstr verifier` reports for a scheduler that
//! is attached in the guest, whatever options that scheduler has.
//!
//! Hand-rolled over `bpf(2)` rather than libbpf-rs: three commands (next id, fd by id, info by
//! fd) do not justify building libbpf's C sources into every binary that runs as guest init.
//! The layouts below are the UAPI's (`union bpf_attr`, `struct bpf_prog_info` in
//! `linux/bpf.h`), which only ever grow at the end; the kernel fills as much of the info as the
//! length we pass.

use std::os::fd::{FromRawFd, OwnedFd};

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `BPF_PROG_TYPE_STRUCT_OPS`: the type of a sched_ext scheduler's callbacks.
pub const PROG_TYPE_STRUCT_OPS: u32 = 27;

/// `sizeof(union bpf_attr)` in Linux 6.12; the kernel accepts a shorter or longer attr as long
/// as the bytes it does not know are zero.
pub(crate) const ATTR_SIZE: usize = 144;
/// `struct bpf_prog_info` up to and including `verified_insns` (offset 216) and the two
/// attach fields after it.
const INFO_SIZE: usize = 232;
const INFO_TYPE: usize = 0;
const INFO_ID: usize = 4;
const INFO_NAME: usize = 64;
const INFO_NAME_LEN: usize = 16;
const INFO_RUN_TIME_NS: usize = 192;
const INFO_RUN_CNT: usize = 200;
const INFO_VERIFIED_INSNS: usize = 216;

/// Why the programs could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum BpfQueryError {
    /// A `bpf(2)` command failed (other than running out of programs).
    #[error("bpf({cmd}) failed: {source}")]
    Syscall {
        /// The command's name.
        cmd: &'static str,
        /// errno.
        source: std::io::Error,
    },
}

/// One loaded BPF program.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgInfo {
    /// Kernel program id.
    pub id: u32,
    /// `enum bpf_prog_type`.
    pub prog_type: u32,
    /// The program's name (at most 15 bytes: the kernel truncates).
    pub name: String,
    /// Instructions the verifier processed (0 on kernels before 5.16).
    pub verified_insns: u32,
    /// Times it ran, counted while `kernel.bpf_stats_enabled` is 1 (0 otherwise).
    pub run_cnt: u64,
    /// Time it ran, ns, counted while `kernel.bpf_stats_enabled` is 1.
    pub run_time_ns: u64,
}

pub(crate) fn bpf(cmd: libc::c_long, attr: &mut [u8; ATTR_SIZE]) -> std::io::Result<i64> {
    // SAFETY: `attr` is a live, writable buffer of ATTR_SIZE bytes laid out as the command's
    // part of `union bpf_attr` (zeros elsewhere), and the size passed is its length.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), ATTR_SIZE as u32) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

pub(crate) fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_ne_bytes(v)
}

/// Decodes the fields we use from a `struct bpf_prog_info`.
fn decode_info(info: &[u8; INFO_SIZE]) -> ProgInfo {
    let raw = &info[INFO_NAME..INFO_NAME + INFO_NAME_LEN];
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    ProgInfo {
        id: u32_at(info, INFO_ID),
        prog_type: u32_at(info, INFO_TYPE),
        name: String::from_utf8_lossy(&raw[..end]).into_owned(),
        verified_insns: u32_at(info, INFO_VERIFIED_INSNS),
        run_cnt: u64_at(info, INFO_RUN_CNT),
        run_time_ns: u64_at(info, INFO_RUN_TIME_NS),
    }
}

/// A kind of object the kernel numbers (programs, maps): its `*_GET_NEXT_ID` and
/// `*_GET_FD_BY_ID` commands, with their names for errors.
pub(crate) struct ObjectKind {
    /// `BPF_*_GET_NEXT_ID`.
    pub next_id: (libc::c_long, &'static str),
    /// `BPF_*_GET_FD_BY_ID`.
    pub fd_by_id: (libc::c_long, &'static str),
}

const PROGRAMS: ObjectKind = ObjectKind {
    next_id: (BPF_PROG_GET_NEXT_ID, "BPF_PROG_GET_NEXT_ID"),
    fd_by_id: (BPF_PROG_GET_FD_BY_ID, "BPF_PROG_GET_FD_BY_ID"),
};

/// Calls `f` with each loaded object of `kind`, in id order: an fd we own and the first
/// `info_len` bytes of its `bpf_*_info`. Objects unloaded while we walk are skipped.
pub(crate) fn for_each_object(
    kind: &ObjectKind,
    info_len: usize,
    mut f: impl FnMut(OwnedFd, &[u8]),
) -> Result<(), BpfQueryError> {
    let fail = |cmd, source| BpfQueryError::Syscall { cmd, source };
    let mut id = 0u32;
    loop {
        let mut attr = [0u8; ATTR_SIZE];
        attr[0..4].copy_from_slice(&id.to_ne_bytes()); // start_id
        match bpf(kind.next_id.0, &mut attr) {
            Ok(_) => id = u32_at(&attr, 4), // next_id
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(source) => return Err(fail(kind.next_id.1, source)),
        }
        let mut attr = [0u8; ATTR_SIZE];
        attr[0..4].copy_from_slice(&id.to_ne_bytes()); // prog_id / map_id
        let fd = match bpf(kind.fd_by_id.0, &mut attr) {
            Ok(fd) => fd as i32,
            // Unloaded between the two calls.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
            Err(source) => return Err(fail(kind.fd_by_id.1, source)),
        };
        // SAFETY: the kernel just returned `fd` as a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut info = vec![0u8; info_len];
        let mut attr = [0u8; ATTR_SIZE];
        attr[0..4].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&fd) as u32).to_ne_bytes());
        attr[4..8].copy_from_slice(&(info_len as u32).to_ne_bytes());
        attr[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
        bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
            .map_err(|source| fail("BPF_OBJ_GET_INFO_BY_FD", source))?;
        f(fd, &info);
    }
}

/// Every BPF program loaded now, in id order. Needs CAP_SYS_ADMIN (the guest runs as root).
pub fn loaded_programs() -> Result<Vec<ProgInfo>, BpfQueryError> {
    let mut out = Vec::new();
    for_each_object(&PROGRAMS, INFO_SIZE, |_, info| {
        let mut raw = [0u8; INFO_SIZE];
        raw.copy_from_slice(info);
        out.push(decode_info(&raw));
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_read_at_their_uapi_offsets() {
        let mut info = [0u8; INFO_SIZE];
        info[INFO_TYPE..INFO_TYPE + 4].copy_from_slice(&PROG_TYPE_STRUCT_OPS.to_ne_bytes());
        info[INFO_ID..INFO_ID + 4].copy_from_slice(&42u32.to_ne_bytes());
        info[INFO_NAME..INFO_NAME + 12].copy_from_slice(b"demo_enqueue");
        info[INFO_VERIFIED_INSNS..INFO_VERIFIED_INSNS + 4].copy_from_slice(&1234u32.to_ne_bytes());
        info[INFO_RUN_CNT..INFO_RUN_CNT + 8].copy_from_slice(&(5u64 << 32 | 7).to_ne_bytes());
        info[INFO_RUN_TIME_NS..INFO_RUN_TIME_NS + 8].copy_from_slice(&99_000u64.to_ne_bytes());
        assert_eq!(
            decode_info(&info),
            ProgInfo {
                id: 42,
                prog_type: PROG_TYPE_STRUCT_OPS,
                name: "demo_enqueue".into(),
                verified_insns: 1234,
                run_cnt: 5 << 32 | 7,
                run_time_ns: 99_000,
            }
        );
    }

    /// Without CAP_SYS_ADMIN (or with BPF disabled) the call fails with a named command; as
    /// root it lists whatever is loaded. Either way it does not panic.
    #[test]
    fn listing_either_works_or_names_the_failed_command() {
        match loaded_programs() {
            Ok(progs) => assert!(progs.windows(2).all(|w| w[0].id < w[1].id)),
            Err(e) => assert!(
                e.to_string().starts_with("bpf(BPF_PROG_GET_NEXT_ID)"),
                "{e}"
            ),
        }
    }
}
