//! Anonymous files that vanish with their last user: guest RAM under qemu and the per-case
//! initramfs.
//!
//! A file in `/dev/shm` or the cache directory outlives a process that is killed with SIGKILL
//! (no destructor runs), and guest RAM files are as large as the guest. A memfd has no name in
//! any directory: it is freed when the last process holding it (ours, and qemu, which
//! inherits it) exits, however that happens.
//!
//! A memfd is named by a path to its descriptor, `/proc/self/fd/N`: our own code opens that
//! like any file, and a child that inherits descriptor N (see [`inherit_in_child`]) sees the
//! same path refer to the same file.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::path::{Path, PathBuf};

const FD_PREFIX: &str = "/proc/self/fd/";

/// An anonymous file of `len` bytes (zero-filled; RAM is only used as it is written), closed
/// on exec unless [`inherit_in_child`] keeps it. `name` shows in `/proc/PID/fd` links.
pub fn create(name: &str, len: u64) -> std::io::Result<File> {
    create_with(name, len, libc::MFD_CLOEXEC)
}

/// Like [`create`], backed by 2 MiB hugepages (`len` must be a multiple of 2 MiB; fails when
/// the host has too few free, since sizing the file reserves them).
pub fn create_huge(name: &str, len: u64) -> std::io::Result<File> {
    create_with(
        name,
        len,
        libc::MFD_CLOEXEC | libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
    )
}

fn create_with(name: &str, len: u64, flags: libc::c_uint) -> std::io::Result<File> {
    let cname = CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: memfd_create with a NUL-terminated name and valid flags; the result is checked.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len)?;
    Ok(f)
}

/// The path that names `f` in this process (and in a child that inherits its descriptor).
pub fn path_of(f: &File) -> PathBuf {
    PathBuf::from(format!("{FD_PREFIX}{}", f.as_raw_fd()))
}

/// The descriptor `path` names, when it is a [`path_of`] path.
pub fn fd_of(path: &Path) -> Option<RawFd> {
    path.to_str()?.strip_prefix(FD_PREFIX)?.parse().ok()
}

/// Arranges for the descriptors behind every [`path_of`] path among `paths` to survive `cmd`'s
/// exec, so the child can open those paths too.
pub fn inherit_in_child(cmd: &mut std::process::Command, paths: &[&Path]) {
    use std::os::unix::process::CommandExt;
    let fds: Vec<RawFd> = paths.iter().filter_map(|p| fd_of(p)).collect();
    if fds.is_empty() {
        return;
    }
    // SAFETY: the closure runs in the child between fork and exec and only calls fcntl, which
    // is async-signal-safe; it allocates nothing (`fds` was built before the fork).
    unsafe {
        cmd.pre_exec(move || {
            for &fd in &fds {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_memfd_is_a_file_by_its_fd_path_and_in_a_child() {
        let mut f = create("ktstr-test", 0).unwrap();
        f.write_all(b"hello memfd").unwrap();
        let p = path_of(&f);
        assert_eq!(fd_of(&p), Some(f.as_raw_fd()));
        let mut s = String::new();
        File::open(&p).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello memfd");
        // Without inherit_in_child the child cannot open it (close-on-exec); with it, it can.
        let cat = |inherit: bool| {
            let mut cmd = std::process::Command::new("cat");
            cmd.arg(&p);
            if inherit {
                inherit_in_child(&mut cmd, &[&p]);
            }
            cmd.output().unwrap()
        };
        assert!(!cat(false).status.success());
        assert_eq!(cat(true).stdout, b"hello memfd");
        assert_eq!(fd_of(Path::new("/tmp/x")), None);
        assert_eq!(
            create("sized", 4096).unwrap().metadata().unwrap().len(),
            4096
        );
    }
}
