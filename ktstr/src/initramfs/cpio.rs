//! The newc ("070701") cpio format: a streaming writer and a reader for concatenated archives.
//!
//! Layout of one entry: "070701", then 13 fields of 8 ASCII hex digits (ino, mode, uid, gid,
//! nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check), then the
//! NUL-terminated name; header+name is zero-padded to a multiple of 4, and so is the data. A
//! symlink's data is its target. An archive ends with the entry `TRAILER!!!`. The kernel accepts
//! several archives back to back, each starting 4-byte aligned after zero padding
//! (`linux:init/initramfs.c`); we pad every archive to 512 bytes, as cpio(1) does.
//!
//! The writer is deliberately low level: it writes what it is told in the order it is told.
//! Ordering (directories before their contents) and deduplication are the job of
//! the builder's guest-filesystem tree.

use std::io::{self, Read, Write};

use super::error::CpioReadError;

/// Magic of the newc format without checksums.
pub const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Magic of the newc format with checksums (accepted by the reader, never written).
pub const CRC_MAGIC: &[u8; 6] = b"070702";
/// Name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";
/// Bytes of a newc header before the name.
pub const HEADER_LEN: usize = 110;
/// Each archive we write is padded to a multiple of this.
pub const ARCHIVE_ALIGN: u64 = 512;

/// File type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170_000;
/// Directory.
pub const S_IFDIR: u32 = 0o040_000;
/// Regular file.
pub const S_IFREG: u32 = 0o100_000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120_000;

/// Streams newc entries into any [`Write`]. Call [`CpioWriter::finish`] to add the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive. Inode numbers count from 1; since every regular file has nlink 1,
    /// the kernel never tries to hard-link entries, even across concatenated archives.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
        }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self, align: u64) -> io::Result<()> {
        let rem = self.written % align;
        if rem != 0 {
            let zeros = vec![0u8; (align - rem) as usize];
            self.put(&zeros)?;
        }
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, filesize: u32) -> io::Result<()> {
        if name.as_bytes().contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry name {name:?} contains NUL"),
            ));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let namesize = name.len() as u32 + 1;
        // uid/gid 0 (everything belongs to root in the guest); mtime 0 so identical inputs give
        // identical bytes; no devices.
        let fields = [ino, mode, 0, 0, nlink, 0, filesize, 0, 0, 0, 0, namesize, 0];
        let mut hdr = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        hdr.extend_from_slice(NEWC_MAGIC);
        for f in fields {
            hdr.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        hdr.extend_from_slice(name.as_bytes());
        hdr.push(0);
        self.put(&hdr)?;
        self.pad(4)
    }

    /// Writes a directory entry. `perm` is the permission bits (the type bits are added).
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.header(name, S_IFDIR | (perm & 0o7777), 2, 0)
    }

    /// Writes a symbolic link `name` -> `target` (mode 0o120777, data = target).
    pub fn symlink(&mut self, name: &str, target: &str) -> io::Result<()> {
        self.header(name, S_IFLNK | 0o777, 1, target.len() as u32)?;
        self.put(target.as_bytes())?;
        self.pad(4)
    }

    /// Writes a regular file from memory.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| too_large(name))?;
        self.header(name, S_IFREG | (perm & 0o7777), 1, size)?;
        self.put(data)?;
        self.pad(4)
    }

    /// Writes a regular file of exactly `size` bytes streamed from `data`. Fails with
    /// [`io::ErrorKind::UnexpectedEof`] if `data` ends early (the file shrank); extra bytes are
    /// not read.
    pub fn file_from(
        &mut self,
        name: &str,
        perm: u32,
        size: u64,
        data: impl Read,
    ) -> io::Result<()> {
        let size32 = u32::try_from(size).map_err(|_| too_large(name))?;
        self.header(name, S_IFREG | (perm & 0o7777), 1, size32)?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        self.written += copied;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: expected {size} bytes, got {copied}"),
            ));
        }
        self.pad(4)
    }

    /// Writes the trailer, pads the archive to [`ARCHIVE_ALIGN`] bytes so another archive can
    /// follow, flushes, and returns the writer and the total size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.header(TRAILER, 0, 1, 0)?;
        self.pad(ARCHIVE_ALIGN)?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

fn too_large(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{name} is 4 GiB or larger, which newc cannot represent"),
    )
}

/// One entry read back from a newc archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    /// Index of the archive (0-based) within a concatenation.
    pub archive: usize,
    /// The name as stored (no leading slash for entries we write).
    pub name: String,
    /// Inode number.
    pub ino: u32,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time (seconds).
    pub mtime: u32,
    /// File contents, or the symlink target.
    pub data: Vec<u8>,
}

impl CpioEntry {
    /// Whether this is the end-of-archive marker.
    pub fn is_trailer(&self) -> bool {
        self.name == TRAILER
    }
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & S_IFMT == S_IFREG
    }
    /// Whether this is a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.mode & S_IFMT == S_IFLNK
    }
}

fn align4(x: usize) -> usize {
    (x + 3) & !3
}

/// Parses one or more concatenated uncompressed newc archives, the way the kernel does: zero
/// padding between archives is skipped, each archive must start 4-byte aligned, and trailers are
/// returned as entries (so callers can see where each archive ends). Compressed members are
/// rejected with an error.
pub fn read_newc(bytes: &[u8]) -> Result<Vec<CpioEntry>, CpioReadError> {
    let err = |offset: usize, reason: String| CpioReadError { offset, reason };
    let mut entries = Vec::new();
    let mut pos = 0usize;
    let mut archive = 0usize;
    let mut in_archive = false;
    while pos < bytes.len() {
        if !in_archive {
            // Between archives: skip zero padding (the kernel skips it 4 bytes at a time).
            while pos < bytes.len() && bytes[pos] == 0 {
                pos += 1;
            }
            if pos == bytes.len() {
                break;
            }
            if pos % 4 != 0 {
                return Err(err(pos, "archive does not start 4-byte aligned".into()));
            }
            in_archive = true;
        }
        if bytes.len() - pos < HEADER_LEN {
            return Err(err(pos, "truncated header".into()));
        }
        let hdr = &bytes[pos..pos + HEADER_LEN];
        if &hdr[..6] != NEWC_MAGIC && &hdr[..6] != CRC_MAGIC {
            return Err(err(
                pos,
                format!(
                    "bad magic {:02x?} (compressed member or not newc)",
                    &hdr[..6]
                ),
            ));
        }
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let s = &hdr[6 + i * 8..14 + i * 8];
            let s =
                std::str::from_utf8(s).map_err(|_| err(pos, "non-ASCII header field".into()))?;
            *v = u32::from_str_radix(s, 16)
                .map_err(|_| err(pos + 6 + i * 8, format!("bad hex field {s:?}")))?;
        }
        let [ino, mode, uid, gid, nlink, mtime, filesize, _, _, _, _, namesize, _] = f;
        let name_start = pos + HEADER_LEN;
        let name_end = name_start + namesize as usize;
        if namesize == 0 || name_end > bytes.len() {
            return Err(err(pos, format!("bad namesize {namesize}")));
        }
        if bytes[name_end - 1] != 0 {
            return Err(err(name_start, "name is not NUL-terminated".into()));
        }
        let name = String::from_utf8_lossy(&bytes[name_start..name_end - 1]).into_owned();
        let data_start = align4(name_end);
        let data_end = data_start + filesize as usize;
        if data_end > bytes.len() {
            return Err(err(
                pos,
                format!("{name}: data runs past the end of the input"),
            ));
        }
        let entry = CpioEntry {
            archive,
            name,
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            data: bytes[data_start..data_end].to_vec(),
        };
        pos = align4(data_end);
        if entry.is_trailer() {
            in_archive = false;
            archive += 1;
        }
        entries.push(entry);
    }
    if in_archive {
        return Err(err(
            bytes.len(),
            "archive ends without a TRAILER!!! entry".into(),
        ));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("a", 0o755).unwrap();
        w.dir("a/bc", 0o700).unwrap();
        w.file("a/bc/empty", 0o644, b"").unwrap();
        w.file("a/odd", 0o755, b"12345").unwrap();
        w.file("a/xy", 0o600, b"four").unwrap();
        w.symlink("a/link", "bc/empty").unwrap();
        w.finish().unwrap().0
    }

    #[test]
    fn round_trip_and_padding() {
        let bytes = sample();
        assert_eq!(bytes.len() % 512, 0);
        let e = read_newc(&bytes).unwrap();
        let names: Vec<_> = e.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a",
                "a/bc",
                "a/bc/empty",
                "a/odd",
                "a/xy",
                "a/link",
                TRAILER
            ]
        );
        assert!(e[0].is_dir() && e[0].mode == 0o040_755 && e[0].nlink == 2);
        assert_eq!(e[1].mode, 0o040_700);
        assert!(e[2].is_file() && e[2].data.is_empty());
        assert_eq!(e[3].data, b"12345");
        assert_eq!(e[3].mode, 0o100_755);
        assert_eq!(e[4].data, b"four");
        assert!(e[5].is_symlink() && e[5].mode == 0o120_777);
        assert_eq!(e[5].data, b"bc/empty");
        assert!(e[6].is_trailer());
        // Inode numbers are unique.
        let mut inos: Vec<_> = e.iter().map(|e| e.ino).collect();
        inos.dedup();
        assert_eq!(inos.len(), e.len());
        // Every header starts 4-byte aligned: find each magic by scanning.
        let mut off = 0;
        for entry in &e {
            let at = bytes[off..]
                .windows(6)
                .position(|w| w == NEWC_MAGIC)
                .unwrap()
                + off;
            assert_eq!(at % 4, 0, "{} header at {at}", entry.name);
            off = at + 6;
        }
    }

    #[test]
    fn header_layout_is_exact() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("ab", 0o644, b"xyz").unwrap();
        let (bytes, _) = w.finish().unwrap();
        let hdr = std::str::from_utf8(&bytes[..HEADER_LEN]).unwrap();
        let fields = [
            "00000001", "000081a4", "00000000", "00000000", "00000001", "00000000", "00000003",
            "00000000", "00000000", "00000000", "00000000", "00000003", "00000000",
        ];
        assert_eq!(hdr, format!("070701{}", fields.concat()));
        // 110 + "ab\0" = 113 -> padded to 116, then 3 data bytes padded to 4.
        assert_eq!(&bytes[110..116], b"ab\0\0\0\0");
        assert_eq!(&bytes[116..120], b"xyz\0");
        assert_eq!(&bytes[120..126], NEWC_MAGIC);
    }

    #[test]
    fn names_of_every_length_mod_4() {
        let mut w = CpioWriter::new(Vec::new());
        let names = ["n", "nn", "nnn", "nnnn", "nnnnn"];
        for (i, n) in names.iter().enumerate() {
            w.file(n, 0o644, &vec![b'x'; i]).unwrap();
        }
        let (bytes, _) = w.finish().unwrap();
        let e = read_newc(&bytes).unwrap();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(e[i].name, *n);
            assert_eq!(e[i].data.len(), i);
        }
    }

    #[test]
    fn concatenation_reads_both() {
        let mut both = sample();
        let mut w = CpioWriter::new(Vec::new());
        w.file("second", 0o644, b"2").unwrap();
        both.extend(w.finish().unwrap().0);
        // Extra zero padding after the last archive is fine, as for the kernel.
        both.extend([0u8; 64]);
        let e = read_newc(&both).unwrap();
        let trailers: Vec<_> = e.iter().filter(|e| e.is_trailer()).collect();
        assert_eq!(trailers.len(), 2);
        let second = e.iter().find(|e| e.name == "second").unwrap();
        assert_eq!(second.archive, 1);
        assert_eq!(e.last().unwrap().archive, 1);
    }

    #[test]
    fn streaming_detects_short_input() {
        let mut w = CpioWriter::new(Vec::new());
        let err = w.file_from("f", 0o644, 10, &b"short"[..]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn reader_rejects_garbage() {
        let bytes = sample();
        assert!(read_newc(&bytes[..bytes.len() / 2]).is_err());
        let mut bad = bytes.clone();
        bad[0] = b'1';
        assert!(read_newc(&bad).unwrap_err().reason.contains("magic"));
        // A missing trailer is reported.
        let mut w = CpioWriter::new(Vec::new());
        w.file("x", 0o644, b"").unwrap();
        let partial = w.out;
        assert!(read_newc(&partial).unwrap_err().reason.contains("TRAILER"));
        // Misaligned second archive.
        let mut mis = bytes;
        mis.push(0);
        mis.push(0);
        mis.extend_from_slice(&sample());
        assert!(read_newc(&mis).unwrap_err().reason.contains("aligned"));
    }

    /// Cross-check with GNU cpio, if installed: it must list exactly what we wrote.
    #[test]
    fn gnu_cpio_lists_our_archive() {
        use std::process::{Command, Stdio};
        if Command::new("cpio").arg("--version").output().is_err() {
            eprintln!("note: GNU cpio not installed; skipping the cross-check");
            return;
        }
        let mut child = Command::new("cpio")
            .args(["-it", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(
            listed,
            ["a", "a/bc", "a/bc/empty", "a/odd", "a/xy", "a/link"]
        );
        // Verbose listing shows the symlink target and file sizes.
        let mut child = Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&sample()).unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("a/link -> bc/empty"), "{text}");
        assert!(text
            .lines()
            .any(|l| l.starts_with("drwx------") && l.ends_with("a/bc")));
        assert!(text
            .lines()
            .any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("a/odd")));
    }
}
