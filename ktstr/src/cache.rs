//! The ktstr cache root: `$KTSTR_CACHE_DIR`, else `$XDG_CACHE_HOME/ktstr`, else
//! `~/.cache/ktstr`. Kernels live in `kernels/`, initramfs archives in `initramfs/`, lock files
//! in `.locks/`.

use std::path::{Path, PathBuf};

/// The cache root (not created).
pub fn root() -> PathBuf {
    root_from(
        std::env::var_os("KTSTR_CACHE_DIR"),
        std::env::var_os("XDG_CACHE_HOME"),
        std::env::var_os("HOME"),
    )
}

fn root_from(
    ktstr: Option<std::ffi::OsString>,
    xdg: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    let nonempty = |v: Option<std::ffi::OsString>| v.filter(|s| !s.is_empty()).map(PathBuf::from);
    if let Some(p) = nonempty(ktstr) {
        return p;
    }
    if let Some(p) = nonempty(xdg) {
        return p.join("ktstr");
    }
    nonempty(home)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache")
        .join("ktstr")
}

/// Where built initramfs archives are kept.
pub fn initramfs_dir() -> PathBuf {
    root().join("initramfs")
}

/// The network (or otherwise remote) filesystem a `statfs` magic number names.
pub fn remote_filesystem_name(magic: u64) -> Option<&'static str> {
    Some(match magic {
        0x6969 => "NFS",
        0x517B => "SMB",
        0xFF53_4D42 => "CIFS",
        0xFE53_4D42 => "SMB2",
        0x00C3_6400 => "CephFS",
        0x0102_1997 => "9p",
        0x6573_5546 => "FUSE",
        0x5346_414F => "AFS",
        0x0116_1970 => "GFS2",
        0x0BD0_0BD0 => "Lustre",
        0x7461_636F => "OCFS2",
        _ => return None,
    })
}

/// The remote filesystem `path` (or its nearest existing ancestor) is on, if any.
pub fn remote_filesystem(path: &Path) -> Option<&'static str> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a zeroed statfs is a valid out-buffer; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and buffer pointers; the result is checked.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    remote_filesystem_name(st.f_type as u64)
}

/// Says once per process (per `what`) when `path` is on a remote filesystem: `flock` there
/// may not keep two hosts' runs apart (NFS emulates it with byte-range locks, some FUSE and
/// SMB mounts do not lock at all), and every cached archive crosses the network.
pub fn warn_if_remote(path: &Path, what: &str, variable: &str) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let Some(fs) = remote_filesystem(path) else {
        return;
    };
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if said.iter().any(|w| w == what) {
        return;
    }
    said.push(what.to_string());
    eprintln!("{}", remote_warning(path, what, variable, fs));
}

/// The text of [`warn_if_remote`].
pub fn remote_warning(path: &Path, what: &str, variable: &str, fs: &str) -> String {
    format!(
        "ktstr: warning: the {what} {} is on {fs}, a network filesystem: its locks may not \
         keep runs on different hosts apart and every read crosses the network; set {variable} \
         to a local directory",
        path.display()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn remote_filesystems_are_named_and_local_ones_are_not() {
        assert_eq!(remote_filesystem_name(0x6969), Some("NFS"));
        assert_eq!(remote_filesystem_name(0xFF53_4D42), Some("CIFS"));
        assert_eq!(remote_filesystem_name(0xEF53), None, "ext4");
        assert_eq!(remote_filesystem_name(0x0102_1994), None, "tmpfs");
        let d = tempfile::tempdir().unwrap();
        assert_eq!(remote_filesystem(d.path()), None);
        // A path that does not exist yet is judged by its nearest existing ancestor.
        assert_eq!(remote_filesystem(&d.path().join("a/b")), None);
        let w = remote_warning(Path::new("/n/cache"), "cache", "KTSTR_CACHE_DIR", "NFS");
        assert!(
            w.contains("/n/cache is on NFS") && w.contains("set KTSTR_CACHE_DIR to a local"),
            "{w}"
        );
    }

    use super::*;

    #[test]
    fn precedence() {
        let s = |v: &str| Some(std::ffi::OsString::from(v));
        assert_eq!(root_from(s("/k"), s("/x"), s("/h")), PathBuf::from("/k"));
        assert_eq!(root_from(None, s("/x"), s("/h")), PathBuf::from("/x/ktstr"));
        assert_eq!(
            root_from(s(""), None, s("/h")),
            PathBuf::from("/h/.cache/ktstr")
        );
    }
}
