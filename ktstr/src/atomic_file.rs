//! Writing a file so that it appears whole or not at all, even if the writer is killed.
//!
//! The bytes go to an unnamed file in the target's directory (`O_TMPFILE`), which is given a
//! temporary name only once complete and then renamed over the target. A writer killed while
//! writing (SIGKILL from nextest, an OOM kill) leaves nothing: the unnamed file is freed with
//! its descriptor. Where the filesystem has no `O_TMPFILE` (some network and FUSE
//! filesystems) the file is written under a temporary name from the start instead; such
//! leftovers start with `.` and contain `.tmp-`, which cache pruning removes.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Writes `path` atomically: `fill` writes the content (it may `sync_all` for durability).
/// Concurrent writers of one path each produce a whole file; the last rename wins.
pub fn write(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = temp_name(path);
    match unnamed_in(dir) {
        Ok(mut f) => {
            fill(&mut f)?;
            if link_fd(&f, &tmp).is_err() {
                // No /proc (some sandboxes): copy the finished bytes to a named file.
                use std::io::{Seek, SeekFrom};
                f.seek(SeekFrom::Start(0))?;
                let r = File::create(&tmp).and_then(|mut out| std::io::copy(&mut f, &mut out));
                if let Err(e) = r {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        Err(e) if no_tmpfile_support(&e) => {
            let r = File::create(&tmp).and_then(|mut f| fill(&mut f));
            if let Err(e) = r {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
        Err(e) => return Err(e),
    }
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// `.NAME.tmp-PID-NANOS` beside `path`: unique per writer, hidden, recognisable as abandoned.
fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap_or(OsStr::new("file"));
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    // Unique per call too: threads of one process may write the same path at once.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!(
        ".{}.tmp-{}-{nanos:x}-{seq}",
        name.to_string_lossy(),
        std::process::id()
    ))
}

/// An unnamed regular file in `dir` (`O_TMPFILE`), mode 0644 before the umask.
fn unnamed_in(dir: &Path) -> io::Result<File> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: open(2) with a NUL-terminated path and a mode; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o644 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Errors that mean "this filesystem (or kernel) cannot make unnamed files".
fn no_tmpfile_support(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOENT)
    )
}

/// Gives the unnamed file `f` the name `to`. `linkat` of `/proc/self/fd/N` with
/// `AT_SYMLINK_FOLLOW` needs no privilege (`AT_EMPTY_PATH` would need CAP_DAC_READ_SEARCH).
fn link_fd(f: &File, to: &Path) -> io::Result<()> {
    let from =
        CString::new(format!("/proc/self/fd/{}", f.as_raw_fd())).map_err(io::Error::other)?;
    let to_c = CString::new(to.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: linkat(2) with NUL-terminated paths relative to the working directory.
    let r = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_whole_files_and_leaves_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write(&p, |f| f.write_all(b"one")).unwrap();
        write(&p, |f| f.write_all(b"two")).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(names(d.path()), ["a.json"]);
        // A writer that fails part-way leaves the old file and no temporary one.
        let e = write(&p, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("stopped"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "stopped");
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(names(d.path()), ["a.json"]);
        assert!(write(&d.path().join("missing/x"), |_| Ok(())).is_err());
    }

    #[test]
    fn temporary_names_are_hidden_and_recognisable() {
        let t = temp_name(Path::new("/r/sidecar.json"));
        let n = t.file_name().unwrap().to_string_lossy().into_owned();
        assert!(n.starts_with(".sidecar.json.tmp-"), "{n}");
        assert_eq!(t.parent(), Some(Path::new("/r")));
    }
}
