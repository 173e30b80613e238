//! Source coverage of code that runs inside the guest (`cargo ktstr coverage`).
//!
//! Under `cargo llvm-cov` the workspace is built with `-C instrument-coverage --cfg coverage`.
//! The host side of a test writes its profile (`*.profraw`) when it exits, as any program
//! does; the guest side never exits normally: PID 1 ends the VM through the exit port and
//! workers `_exit`. So in the guest:
//! - [`guest_init`] points PID 1's profile at [`GUEST_DIR`]`/1.profraw`;
//! - a forked worker calls [`forked_child`] (zero the counters it inherited, its own file) and
//!   [`flush`] before `_exit`;
//! - [`guest_profile_frames`], on the way out of the VM, writes PID 1's profile and packs every
//!   file of [`GUEST_DIR`] into gzipped [`FrameType::Profile`] frames, which the guest sends.
//!
//! On the host, [`deposit`] writes those profiles next to the host's own, in the directory of
//! `LLVM_PROFILE_FILE`, where cargo-llvm-cov merges every `*.profraw`. The profiles refer to
//! the very binary the host ran (the guest runs a copy of it), so they merge without mapping.
//! Without `cfg(coverage)` the guest functions do nothing and the guest sends no frames.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::shm::{Frame, FrameType};

/// Where guest processes write their profiles (the guest's tmpfs).
pub const GUEST_DIR: &str = "/tmp/ktstr-profraw";

/// Bytes of compressed profile per frame (the channel takes at most 4 MiB per frame).
const CHUNK: usize = 1 << 20;

/// Why guest profiles could not be written on the host.
#[derive(Debug, thiserror::Error)]
pub enum DepositError {
    /// A profile's frames did not decompress.
    #[error("guest profile {index} is corrupt (gzip): {source}")]
    Corrupt {
        /// Which profile of the VM.
        index: u32,
        /// The decoder's error.
        source: std::io::Error,
    },
    /// A frame is too short to carry its profile index.
    #[error("a profile frame of {0} bytes has no profile index")]
    Short(usize),
    /// Writing the file failed.
    #[error("writing guest profile {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

#[cfg(coverage)]
mod rt {
    //! The LLVM profile runtime that `-C instrument-coverage` links in (compiler-rt's
    //! InstrProfiling*.c, shipped in Rust's `profiler_builtins`).
    unsafe extern "C" {
        pub fn __llvm_profile_set_filename(name: *const std::ffi::c_char);
        pub fn __llvm_profile_write_file() -> std::ffi::c_int;
        pub fn __llvm_profile_reset_counters();
    }
}

/// Whether this process descends from a ktstr guest init that called [`guest_init`]
/// (inherited across fork; workers on the host keep the host's profile file).
#[cfg(coverage)]
static IN_GUEST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// When this process named its profile file (ns since the epoch): with the PID, a name no
/// later process with a recycled PID repeats. An atomic, not a lock: set in fresh children.
#[cfg(coverage)]
static STAMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// This process's profile in the guest: written as `.PID-STAMP.part`, renamed to
/// `PID-STAMP.profraw` once complete, so a writer killed mid-write leaves nothing that is
/// collected (a truncated profile would fail the whole merge on the host).
#[cfg(coverage)]
fn guest_file(complete: bool) -> String {
    let stamp = STAMP.load(std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id();
    if complete {
        format!("{GUEST_DIR}/{pid}-{stamp}.profraw")
    } else {
        format!("{GUEST_DIR}/.{pid}-{stamp}.part")
    }
}

/// Names a fresh profile file for this process in [`GUEST_DIR`].
#[cfg(coverage)]
fn name_guest_file() {
    STAMP.store(epoch_ns(), std::sync::atomic::Ordering::Relaxed);
    if let Ok(c) = std::ffi::CString::new(guest_file(false)) {
        // SAFETY: a valid NUL-terminated string; the runtime copies it.
        unsafe { rt::__llvm_profile_set_filename(c.as_ptr()) }
    }
}

/// In the guest's PID 1, after `/tmp` is mounted: profiles go to [`GUEST_DIR`].
pub fn guest_init() {
    #[cfg(coverage)]
    {
        let _ = std::fs::create_dir_all(GUEST_DIR);
        IN_GUEST.store(true, std::sync::atomic::Ordering::Relaxed);
        name_guest_file();
    }
}

/// In a freshly forked child that will `_exit`: forget the counts inherited from the parent
/// (the parent reports them) and, in the guest, write to a file of its own.
pub fn forked_child() {
    #[cfg(coverage)]
    {
        // SAFETY: zeroes the runtime's counter section; no other thread runs in a fresh child.
        unsafe { rt::__llvm_profile_reset_counters() };
        if IN_GUEST.load(std::sync::atomic::Ordering::Relaxed) {
            name_guest_file();
        }
    }
}

/// Writes this process's profile now (before an `_exit`, which skips the runtime's own
/// atexit write).
pub fn flush() {
    #[cfg(coverage)]
    {
        // SAFETY: the runtime writes its counters to the file named earlier; no arguments.
        let rc = unsafe { rt::__llvm_profile_write_file() };
        if rc == 0 && IN_GUEST.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = std::fs::rename(guest_file(false), guest_file(true));
        }
    }
}

/// In the guest's PID 1, just before the VM ends: writes PID 1's profile, then returns the
/// payloads of the [`FrameType::Profile`] frames that carry every profile in [`GUEST_DIR`]
/// home (`u32` profile index, then a piece of its gzip stream). Empty without
/// `cfg(coverage)`. (The guest module sends them: this module does not depend on it.)
pub fn guest_profile_frames() -> Vec<Vec<u8>> {
    if !cfg!(coverage) {
        return Vec::new();
    }
    flush();
    let Ok(dir) = std::fs::read_dir(GUEST_DIR) else {
        return Vec::new();
    };
    let mut frames = Vec::new();
    let mut index = 0u32;
    let complete = dir
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "profraw"));
    for entry in complete {
        let Ok(raw) = std::fs::read(entry.path()) else {
            continue;
        };
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if gz.write_all(&raw).is_err() {
            continue;
        }
        let Ok(gz) = gz.finish() else { continue };
        for piece in gz.chunks(CHUNK) {
            let mut payload = index.to_le_bytes().to_vec();
            payload.extend_from_slice(piece);
            frames.push(payload);
        }
        index += 1;
    }
    frames
}

/// The directory cargo-llvm-cov merges profiles from: that of `LLVM_PROFILE_FILE`, when set.
pub fn host_profile_dir() -> Option<PathBuf> {
    let f = std::env::var_os("LLVM_PROFILE_FILE")?;
    let dir = Path::new(&f).parent()?;
    Some(if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir.to_path_buf()
    })
}

/// Largest profile accepted from a guest once decompressed (the guest is untrusted: a small
/// gzip stream can claim gigabytes).
const MAX_PROFILE: u64 = 256 << 20;

/// Nanoseconds since the Unix epoch (0 if the clock is before it): part of file names that
/// must not repeat.
fn epoch_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// Writes the guest profiles carried by `frames` into `dir` as
/// `ktstr-guest-<tag>-<n>.profraw`; returns the files written and, apart, every profile that
/// could not be (one bad profile does not cost the others).
pub fn deposit(frames: &[Frame], dir: &Path, tag: &str) -> (Vec<PathBuf>, Vec<DepositError>) {
    deposit_limited(frames, dir, tag, MAX_PROFILE)
}

/// [`deposit`] with profiles limited to `max` bytes.
fn deposit_limited(
    frames: &[Frame],
    dir: &Path,
    tag: &str,
    max: u64,
) -> (Vec<PathBuf>, Vec<DepositError>) {
    let mut streams: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut errors = Vec::new();
    for f in frames.iter().filter(|f| f.kind == FrameType::Profile) {
        let Some((idx, piece)) = f.payload.split_first_chunk::<4>() else {
            errors.push(DepositError::Short(f.payload.len()));
            continue;
        };
        let idx = u32::from_le_bytes(*idx);
        match streams.iter_mut().find(|(i, _)| *i == idx) {
            Some((_, s)) => s.extend_from_slice(piece),
            None => streams.push((idx, piece.to_vec())),
        }
    }
    let mut written = Vec::new();
    for (index, gz) in streams {
        let mut raw = Vec::new();
        let read = flate2::read::GzDecoder::new(&gz[..])
            .take(max + 1)
            .read_to_end(&mut raw);
        let source = match read {
            Err(e) => e,
            Ok(n) if n as u64 > max => std::io::Error::other(format!("larger than {max} bytes")),
            Ok(_) => {
                let path = dir.join(format!("ktstr-guest-{tag}-{index}.profraw"));
                match std::fs::write(&path, &raw) {
                    Ok(()) => written.push(path),
                    Err(source) => errors.push(DepositError::Write { path, source }),
                }
                continue;
            }
        };
        errors.push(DepositError::Corrupt { index, source });
    }
    (written, errors)
}

/// After a VM of a test case ended: deposits its guest profiles where cargo-llvm-cov looks,
/// when this run collects coverage (`LLVM_PROFILE_FILE` set). A failure is reported on stderr
/// and never changes the verdict.
pub fn deposit_for_case(frames: &[Frame], case: &str) {
    if !frames.iter().any(|f| f.kind == FrameType::Profile) {
        return;
    }
    let Some(dir) = host_profile_dir() else {
        return;
    };
    // Unique per VM: the case, this host process and a clock reading.
    let tag = format!(
        "{}-{}-{}",
        crate::kernel::sanitize(case),
        std::process::id(),
        epoch_ns()
    );
    for e in deposit(frames, &dir, &tag).1 {
        eprintln!("ktstr: coverage of the guest is lost for {case}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: Vec<u8>) -> Frame {
        Frame {
            kind: FrameType::Profile,
            seq: 0,
            payload,
        }
    }

    fn gz(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    /// Pieces of two profiles, interleaved, come out as two files with the original bytes;
    /// other frames are ignored.
    #[test]
    fn deposit_reassembles_each_profile() {
        let d = tempfile::tempdir().unwrap();
        let a: Vec<u8> = (0..5000u32).flat_map(|i| i.to_le_bytes()).collect();
        let b = b"second profile".to_vec();
        let (ga, gb) = (gz(&a), gz(&b));
        let (a1, a2) = ga.split_at(ga.len() / 2);
        let piece = |i: u32, p: &[u8]| frame([&i.to_le_bytes()[..], p].concat());
        let frames = vec![
            piece(0, a1),
            Frame {
                kind: FrameType::Log,
                seq: 1,
                payload: b"x".to_vec(),
            },
            piece(1, &gb),
            piece(0, a2),
        ];
        let (files, errors) = deposit(&frames, d.path(), "t");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(files.len(), 2);
        assert_eq!(std::fs::read(&files[0]).unwrap(), a);
        assert_eq!(std::fs::read(&files[1]).unwrap(), b);
        assert!(files[0].ends_with("ktstr-guest-t-0.profraw"), "{files:?}");
    }

    /// Short frames and corrupt or oversized streams are reported; the good profile beside
    /// them is still written.
    #[test]
    fn deposit_refuses_corrupt_short_and_huge_profiles_but_keeps_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let bomb = gz(&[0u8; 4097]);
        let frames = [
            frame(vec![1, 2]),
            frame(vec![0, 0, 0, 0, 9, 9, 9]),
            frame([&1u32.to_le_bytes()[..], &gz(b"good")].concat()),
            frame([&2u32.to_le_bytes()[..], &bomb].concat()),
        ];
        let (files, errors) = deposit_limited(&frames, d.path(), "t", 4096);
        assert_eq!(files.len(), 1);
        assert_eq!(std::fs::read(&files[0]).unwrap(), b"good");
        let msgs: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(matches!(errors[0], DepositError::Short(2)), "{msgs:?}");
        assert!(msgs[1].contains("guest profile 0 is corrupt"), "{msgs:?}");
        assert!(msgs[2].contains("larger than"), "{msgs:?}");
    }
}
