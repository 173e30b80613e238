//! Errors of the initramfs builder. Each message says what is wrong and what to do about it.

use std::path::PathBuf;

use thiserror::Error;

/// A malformed newc archive, found by [`super::read_newc`].
#[derive(Debug, Error, PartialEq, Eq)]
#[error("malformed newc cpio at byte offset {offset}: {reason}")]
pub struct CpioReadError {
    /// Byte offset (in the whole, possibly concatenated, input) where parsing failed.
    pub offset: usize,
    /// What was wrong there.
    pub reason: String,
}

/// Everything that can go wrong while building an initramfs.
#[derive(Debug, Error)]
pub enum InitramfsError {
    /// A host file or directory could not be read, or a cache file could not be written.
    #[error("initramfs: cannot {op} {path}: {source}")]
    Io {
        /// What we were doing ("read", "stat", "write", ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An input named by the spec (init, a binary, or an `-i` path) does not exist.
    #[error("initramfs: {what} {path} does not exist; check the path (a relative path is taken from the current directory)")]
    MissingInput {
        /// Which spec field named it ("include file", "init binary", "binary").
        what: &'static str,
        /// The missing path.
        path: PathBuf,
    },
    /// A dynamically linked ELF needs a shared library that cannot be found on the host.
    #[error(
        "initramfs: {binary} needs shared library {library}, which was not found in {searched:?}; \
         install the package that provides it, or link the binary with a DT_RUNPATH that points at \
         it (the guest loader does not see the host's LD_LIBRARY_PATH)"
    )]
    MissingLibrary {
        /// The ELF object whose DT_NEEDED named the library.
        binary: PathBuf,
        /// The DT_NEEDED name.
        library: String,
        /// The directories that were searched, in order.
        searched: Vec<PathBuf>,
    },
    /// An ELF file could not be parsed.
    #[error("initramfs: {path} looks like an ELF file but cannot be parsed ({reason}); is it truncated or still being written?")]
    BadElf {
        /// The file.
        path: PathBuf,
        /// goblin's complaint.
        reason: String,
    },
    /// `busybox: true` but no busybox binary is installed on the host.
    #[error("initramfs: shell mode needs busybox, but neither /bin/busybox nor /usr/bin/busybox exists; install it with `apt-get install busybox-static`")]
    BusyboxMissing,
    /// The host busybox did not list its applets.
    #[error("initramfs: `{path} --list` failed ({reason}); is it a working busybox binary?")]
    BusyboxList {
        /// The busybox binary.
        path: PathBuf,
        /// What happened.
        reason: String,
    },
    /// A guest path given in the spec is not usable.
    #[error("initramfs: invalid guest path {path:?}: {reason}")]
    InvalidGuestPath {
        /// The path as given.
        path: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// Two inputs want the same guest path with different contents.
    #[error("initramfs: guest path /{path} is claimed twice ({first} and {second}); rename one of the inputs")]
    PathConflict {
        /// The guest path (without the leading slash).
        path: String,
        /// Description of the first claimant.
        first: String,
        /// Description of the second claimant.
        second: String,
    },
    /// A host file is neither a regular file, a directory nor a symlink.
    #[error("initramfs: {path} is a device, FIFO or socket; only regular files, directories and symlinks can be included")]
    UnsupportedFileType {
        /// The offending path.
        path: PathBuf,
    },
    /// A chain of symbolic links is too long (probably a loop).
    #[error("initramfs: too many levels of symbolic links while resolving {path}; check for a symlink loop")]
    SymlinkLoop {
        /// Where resolution started.
        path: String,
    },
    /// A host file changed size while it was being archived.
    #[error("initramfs: {path} changed size while being archived (expected {expected} bytes); retry once the build that writes it has finished")]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// Size recorded when the file was first seen.
        expected: u64,
    },
    /// A file is too large for the newc format (32-bit sizes).
    #[error("initramfs: {path} is {size} bytes; newc cpio cannot hold files of 4 GiB or more")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
    },
    /// Reading back an archive failed (cache corruption or a bug).
    #[error(transparent)]
    Cpio(#[from] CpioReadError),
}

impl InitramfsError {
    /// Wraps an I/O error with the operation and path it concerns.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        InitramfsError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
