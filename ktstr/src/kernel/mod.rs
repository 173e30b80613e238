//! Kernel resolution: from `--kernel SPEC` or `KTSTR_KERNEL` to a bootable image.
//!
//! A spec is a kernel image file (bzImage or ELF vmlinux), a directory holding one (a build
//! tree's `arch/x86/boot/bzImage`, or a directory with `bzImage`), a key of the kernel cache,
//! or a version found in the cache (`6.12` matches the newest cached `6.12.*`). With no spec
//! and no `KTSTR_KERNEL`, the newest usable cached kernel. The image's sibling `vmlinux` is
//! remembered so the KVM backend can boot it directly (no decompressor).

pub mod build;
pub mod cache;
pub mod config;
pub mod git;
pub mod range;

use std::path::{Path, PathBuf};

/// A kernel ready to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// What to boot by default (bzImage, or a vmlinux if that is all there is).
    pub image: PathBuf,
    /// The uncompressed ELF vmlinux, when known (booted directly by the KVM backend).
    pub vmlinux: Option<PathBuf>,
    /// A sanitized label (`[a-z0-9_]`) for test names and sidecar directories.
    pub label: String,
}

impl Kernel {
    /// The image to boot: the ELF vmlinux when `direct_elf` (the in-process VMM boots it
    /// directly, no decompressor) and there is one; else the image (qemu boots that).
    pub fn boot_image(&self, direct_elf: bool) -> PathBuf {
        match (direct_elf, &self.vmlinux) {
            (true, Some(v)) => v.clone(),
            _ => self.image.clone(),
        }
    }
}

/// Why no kernel could be resolved.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// Nothing was given and the cache is empty.
    #[error("no kernel given and none cached: build one with `cargo ktstr kernel build`, or pass --kernel PATH / set KTSTR_KERNEL to a bzImage, a vmlinux or a kernel build directory")]
    NotSpecified,
    /// A version or cache key the cache does not have.
    #[error("kernel {spec:?} is not a path and not in the kernel cache ({cached}); build it with `cargo ktstr kernel build {spec}` or pass a path")]
    NotCached {
        /// What was asked for.
        spec: String,
        /// What the cache has.
        cached: String,
    },
    /// A range where one kernel is needed (or the harness, which takes no ranges).
    #[error("kernel {0:?} is a range of kernels; this needs exactly one: pass a version or a cache key (ranges expand in `cargo ktstr test --kernel`)")]
    Range(String),
    /// A `git+URL#REF` source where only built kernels are taken.
    #[error("kernel {0:?} is a git source: build it first (`cargo ktstr kernel build --git URL --ref REF`) and pass the cache key it prints, or use `cargo ktstr test --kernel git+URL#REF`, which builds it")]
    GitSource(String),
    /// The path does not exist.
    #[error("kernel {0} does not exist")]
    Missing(PathBuf),
    /// A directory without a recognisable image.
    #[error("{0} holds no kernel image: expected arch/x86/boot/bzImage, bzImage or vmlinux in it (build the kernel first: make bzImage)")]
    NoImageInDir(PathBuf),
    /// The file is neither a bzImage nor an ELF.
    #[error("{path} is not a kernel image: {why}")]
    NotAnImage {
        /// The path.
        path: PathBuf,
        /// What was found instead.
        why: String,
    },
}

/// The kind of a kernel image, by its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageKind {
    /// x86 boot protocol image (`HdrS` at 0x202).
    BzImage,
    /// ELF (an uncompressed vmlinux).
    Elf,
}

/// Identifies an image by its first bytes.
pub fn image_kind(path: &Path) -> Result<ImageKind, KernelError> {
    use std::io::Read;
    let mut head = [0u8; 0x210];
    let mut f = std::fs::File::open(path).map_err(|_| KernelError::Missing(path.to_path_buf()))?;
    let n = f.read(&mut head).map_err(|e| KernelError::NotAnImage {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    if n >= 4 && &head[..4] == b"\x7fELF" {
        return Ok(ImageKind::Elf);
    }
    if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
        return Ok(ImageKind::BzImage);
    }
    Err(KernelError::NotAnImage {
        path: path.to_path_buf(),
        why: if n == 0 {
            "the file is empty".into()
        } else {
            "no ELF magic and no x86 boot header (HdrS)".into()
        },
    })
}

/// Resolves `spec` (or `KTSTR_KERNEL` when `spec` is `None`, or the newest cached kernel).
pub fn resolve(spec: Option<&str>) -> Result<Kernel, KernelError> {
    resolve_in(spec, &crate::kernel::cache::KernelCache::open_default())
}

/// [`resolve`] against a given cache.
pub fn resolve_in(
    spec: Option<&str>,
    cache: &crate::kernel::cache::KernelCache,
) -> Result<Kernel, KernelError> {
    let s = match spec
        .map(str::to_string)
        .or_else(|| std::env::var("KTSTR_KERNEL").ok().filter(|s| !s.is_empty()))
    {
        Some(s) => s,
        None => {
            return cache
                .newest()
                .and_then(|e| e.kernel())
                .ok_or(KernelError::NotSpecified)
        }
    };
    if s.starts_with("git+") {
        return Err(KernelError::GitSource(s));
    }
    if crate::kernel::range::is_range(&s) {
        return Err(KernelError::Range(s));
    }
    let p = Path::new(&s);
    if p.exists() || s.contains('/') {
        return resolve_path(p);
    }
    let hit = cache
        .get(&s)
        .filter(|e| e.corrupt().is_none())
        .or_else(|| cache.find_version(&s));
    match hit.and_then(|e| e.kernel()) {
        Some(k) => Ok(k),
        None => {
            let usable = cache.usable();
            let cached = if usable.is_empty() {
                "the cache is empty".to_string()
            } else {
                let list: Vec<String> = usable
                    .iter()
                    .filter_map(|e| e.meta.as_ref().ok().map(|m| m.version.clone()))
                    .collect();
                format!("cached: {}", list.join(", "))
            };
            Err(KernelError::NotCached { spec: s, cached })
        }
    }
}

/// The newest usable cached kernel's key and version, if any (for runs that name no kernel).
pub fn newest_cached() -> Option<(String, String)> {
    crate::kernel::cache::KernelCache::open_default()
        .newest()
        .and_then(|e| Some((e.key.clone(), e.meta.ok()?.version)))
}

/// Resolves a path to an image or a directory holding one.
pub fn resolve_path(p: &Path) -> Result<Kernel, KernelError> {
    if !p.exists() {
        return Err(KernelError::Missing(p.to_path_buf()));
    }
    let p = p
        .canonicalize()
        .map_err(|_| KernelError::Missing(p.to_path_buf()))?;
    let (image, dir) = if p.is_dir() {
        let cands = ["arch/x86/boot/bzImage", "bzImage", "vmlinux"];
        let img = cands
            .iter()
            .map(|c| p.join(c))
            .find(|c| c.is_file())
            .ok_or_else(|| KernelError::NoImageInDir(p.clone()))?;
        (img, p.clone())
    } else {
        let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
        (p.clone(), dir)
    };
    let kind = image_kind(&image)?;
    let vmlinux = if kind == ImageKind::Elf {
        Some(image.clone())
    } else {
        let v = dir.join("vmlinux");
        (v.is_file() && matches!(image_kind(&v), Ok(ImageKind::Elf))).then_some(v)
    };
    Ok(Kernel {
        label: path_label(&image),
        image,
        vmlinux,
    })
}

/// `path_{basename}_{crc6}`: a short, stable, sanitized label for a kernel path.
pub fn path_label(p: &Path) -> String {
    let base = p
        .parent()
        .and_then(|d| d.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "kernel".into());
    let crc = crc32fast::hash(p.to_string_lossy().as_bytes()) & 0xFF_FFFF;
    format!("path_{}_{crc:06x}", sanitize(&base))
}

/// Lower-cases and maps everything outside `[a-z0-9_]` to `_`.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_missing_empty_and_garbage() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(
            resolve_path(&d.path().join("nope")),
            Err(KernelError::Missing(_))
        ));
        let empty = d.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let e = resolve_path(&empty).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let junk = d.path().join("junk");
        std::fs::write(&junk, vec![0x55u8; 4096]).unwrap();
        let e = resolve_path(&junk).unwrap_err().to_string();
        assert!(e.contains("HdrS"), "{e}");
        assert!(matches!(
            resolve_path(d.path()),
            Err(KernelError::NoImageInDir(_))
        ));
    }

    #[test]
    fn versions_and_keys_resolve_through_the_cache() {
        use crate::kernel::cache::{KernelCache, Metadata, Source};
        let d = tempfile::tempdir().unwrap();
        let c = KernelCache::at(d.path());
        let e = resolve_in(Some("6.12"), &c).unwrap_err().to_string();
        assert!(
            e.contains("the cache is empty") && e.contains("kernel build 6.12"),
            "{e}"
        );
        let s = c.staging("k1").unwrap();
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(s.join("bzImage"), bz).unwrap();
        std::fs::write(s.join("vmlinux"), b"\x7fELF").unwrap();
        let src = Source::Local {
            path: "/l".into(),
            commit: None,
        };
        let meta = Metadata::new("6.12.57", src);
        c.store("k1", &s, &meta).unwrap();
        for spec in ["6.12", "6.12.57", "k1"] {
            let k = resolve_in(Some(spec), &c).unwrap();
            assert!(k.image.ends_with("k1/bzImage"), "{spec}");
            assert!(k.vmlinux.as_ref().unwrap().ends_with("k1/vmlinux"));
            assert_eq!(k.label, "6_12_57");
        }
        let e = resolve_in(Some("6.1"), &c).unwrap_err().to_string();
        assert!(e.contains("cached: 6.12.57"), "{e}");
        let e = resolve_in(Some("6.12..6.14"), &c).unwrap_err().to_string();
        assert!(e.contains("needs exactly one"), "{e}");
        let e = resolve_in(Some("git+/src/linux#v6.12"), &c)
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernel build --git"), "{e}");
        // A path is a path even when it does not exist.
        assert!(matches!(
            resolve_in(Some("./nope"), &c),
            Err(KernelError::Missing(_))
        ));
    }

    #[test]
    fn finds_images_and_the_sibling_vmlinux() {
        let d = tempfile::tempdir().unwrap();
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        std::fs::write(d.path().join("bzImage"), &bz).unwrap();
        let k = resolve_path(d.path()).unwrap();
        assert!(k.image.ends_with("bzImage"));
        assert_eq!(k.vmlinux, None);
        std::fs::write(d.path().join("vmlinux"), b"\x7fELF\x02\x01\x01").unwrap();
        let k = resolve_path(&d.path().join("bzImage")).unwrap();
        assert!(k.vmlinux.unwrap().ends_with("vmlinux"));
        assert!(k.label.starts_with("path_"));
        assert!(k
            .label
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }
}
