//! The ktstr cache root: `$KTSTR_CACHE_DIR`, else `$XDG_CACHE_HOME/ktstr`, else
//! `~/.cache/ktstr`. Kernels live in `kernels/`, initramfs archives in `initramfs/`, lock files
//! in `.locks/`.

use std::path::PathBuf;

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

#[cfg(test)]
mod tests {
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
