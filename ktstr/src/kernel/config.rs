//! A kernel's build configuration (`.config`), found beside its image or embedded in it.
//!
//! ktstr reads it to refuse what the kernel cannot do before booting it, e.g. an x2APIC
//! topology for a kernel built without `CONFIG_X86_X2APIC` (such a kernel turns the APIC off
//! when it finds x2APIC enabled, and the guest hangs without a word on the console).
//!
//! Where the configuration comes from, in order:
//! 1. a `.config` or `config` file beside the image, or the `.config` at the root of the
//!    kernel build tree when the image is its `arch/<arch>/boot/bzImage`;
//! 2. the `IKCONFIG` copy embedded in an uncompressed image (a vmlinux built with
//!    `CONFIG_IKCONFIG`): a gzip stream between the `IKCFG_ST` and `IKCFG_ED` markers.
//!
//! A bzImage's embedded copy sits inside the compressed payload and is not read.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Where a [`KernelConfig`] was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A config file.
    File(PathBuf),
    /// The `IKCONFIG` copy inside this image.
    Embedded(PathBuf),
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Embedded(p) => write!(f, "the IKCONFIG copy in {}", p.display()),
        }
    }
}

/// The options of one kernel build.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    text: String,
    /// Where it was read from.
    pub source: ConfigSource,
}

/// Largest image we scan for an embedded configuration (vmlinux with debug info can be big;
/// the marker sits in .rodata, well inside this).
const MAX_SCAN_BYTES: u64 = 1 << 30;

/// What a BPF (sched_ext) scheduler needs from the kernel: the class itself, the BPF syscall,
/// and the kernel's BTF, which libbpf's CO-RE relocations read.
pub const SCHED_EXT_NEEDS: [&str; 3] = [
    "CONFIG_SCHED_CLASS_EXT",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_DEBUG_INFO_BTF",
];

impl KernelConfig {
    /// Parses configuration text (the `.config` format).
    pub fn from_text(text: String, source: ConfigSource) -> Self {
        KernelConfig { text, source }
    }

    /// Finds the configuration of the kernel `image`, or `None` when there is none to read.
    pub fn find(image: &Path) -> Option<Self> {
        let dir = image.parent()?;
        let mut candidates = vec![dir.join(".config"), dir.join("config")];
        // <tree>/arch/<arch>/boot/bzImage: the tree's root is three levels up.
        let arch_dir = dir
            .parent()
            .filter(|_| dir.file_name() == Some("boot".as_ref()));
        if let Some(root) = arch_dir
            .filter(|a| a.parent().and_then(Path::file_name) == Some("arch".as_ref()))
            .and_then(Path::parent)
            .and_then(Path::parent)
        {
            candidates.push(root.join(".config"));
        }
        for p in candidates {
            if let Some(text) = read_config_file(&p) {
                return Some(Self::from_text(text, ConfigSource::File(p)));
            }
        }
        let text = embedded_config(image)?;
        Some(Self::from_text(
            text,
            ConfigSource::Embedded(image.to_path_buf()),
        ))
    }

    /// Whether `option` (e.g. `CONFIG_X86_X2APIC`) is built in or a module; an option the
    /// configuration says is not set, or does not mention, is not enabled.
    pub fn is_enabled(&self, option: &str) -> bool {
        self.text.lines().any(|line| {
            line.trim()
                .strip_prefix(option)
                .and_then(|rest| rest.strip_prefix('='))
                .is_some_and(|v| v == "y" || v == "m")
        })
    }

    /// The options of [`SCHED_EXT_NEEDS`] this configuration lacks.
    pub fn sched_ext_gaps(&self) -> Vec<&'static str> {
        SCHED_EXT_NEEDS
            .into_iter()
            .filter(|o| !self.is_enabled(o))
            .collect()
    }
}

/// Reads `p` if it looks like a kernel configuration (not any file that happens to be named
/// `config`).
fn read_config_file(p: &Path) -> Option<String> {
    let meta = std::fs::metadata(p).ok()?;
    if !meta.is_file() || meta.len() > 16 << 20 {
        return None;
    }
    let text = std::fs::read_to_string(p).ok()?;
    text.lines()
        .any(|l| l.starts_with("CONFIG_") || l.starts_with("# CONFIG_"))
        .then_some(text)
}

/// The gzip stream between `IKCFG_ST` and `IKCFG_ED` in an uncompressed image.
fn embedded_config(image: &Path) -> Option<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(image)
        .ok()?
        .take(MAX_SCAN_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    extract_ikconfig(&bytes)
}

/// Decodes the `IKCONFIG` block in `bytes`, if there is one.
pub fn extract_ikconfig(bytes: &[u8]) -> Option<String> {
    const START: &[u8] = b"IKCFG_ST";
    const END: &[u8] = b"IKCFG_ED";
    let start = find(bytes, START)? + START.len();
    let len = find(&bytes[start..], END)?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[start..start + len])
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {

    #[test]
    fn sched_ext_gaps_name_what_is_missing() {
        let c = |t: &str| KernelConfig::from_text(t.into(), ConfigSource::File("x".into()));
        let full = c("CONFIG_SCHED_CLASS_EXT=y\nCONFIG_BPF_SYSCALL=y\nCONFIG_DEBUG_INFO_BTF=y\n");
        assert!(full.sched_ext_gaps().is_empty());
        let tiny = c("# CONFIG_SCHED_CLASS_EXT is not set\nCONFIG_BPF_SYSCALL=y\n");
        assert_eq!(
            tiny.sched_ext_gaps(),
            ["CONFIG_SCHED_CLASS_EXT", "CONFIG_DEBUG_INFO_BTF"]
        );
    }
    use super::*;
    use std::io::Write;

    const TEXT: &str = "#\n# Automatically generated file\nCONFIG_SMP=y\nCONFIG_IKCONFIG=m\n# CONFIG_X86_X2APIC is not set\nCONFIG_X86_X2APIC_EXTRA=y\n";

    fn cfg(text: &str) -> KernelConfig {
        KernelConfig::from_text(text.into(), ConfigSource::File("x".into()))
    }

    #[test]
    fn options_parse_as_enabled_disabled_or_absent() {
        let c = cfg(TEXT);
        assert!(c.is_enabled("CONFIG_SMP"));
        assert!(c.is_enabled("CONFIG_IKCONFIG"));
        // "not set", and not confused with an option that shares its prefix.
        assert!(!c.is_enabled("CONFIG_X86_X2APIC"));
        assert!(!c.is_enabled("CONFIG_NUMA"));
    }

    #[test]
    fn found_beside_the_image_or_at_the_build_tree_root() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("arch/x86/boot");
        std::fs::create_dir_all(&boot).unwrap();
        let image = boot.join("bzImage");
        std::fs::write(&image, b"not a kernel").unwrap();
        assert!(KernelConfig::find(&image).is_none());
        // Only the build tree's root counts, not any directory above the image.
        std::fs::write(dir.path().join("arch/.config"), TEXT).unwrap();
        assert!(KernelConfig::find(&image).is_none());
        std::fs::write(dir.path().join(".config"), TEXT).unwrap();
        let c = KernelConfig::find(&image).unwrap();
        assert_eq!(c.source, ConfigSource::File(dir.path().join(".config")));
        // A file named config that is not a kernel configuration is ignored.
        std::fs::write(boot.join("config"), "just some notes\n").unwrap();
        let c = KernelConfig::find(&image).unwrap();
        assert_eq!(c.source, ConfigSource::File(dir.path().join(".config")));
    }

    #[test]
    fn embedded_ikconfig_is_decoded() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(TEXT.as_bytes()).unwrap();
        let mut image = b"\x7fELF....IKCFG_ST".to_vec();
        image.extend(gz.finish().unwrap());
        image.extend(b"IKCFG_ED....");
        assert_eq!(extract_ikconfig(&image).as_deref(), Some(TEXT));
        assert_eq!(extract_ikconfig(b"no markers here"), None);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vmlinux");
        std::fs::write(&p, &image).unwrap();
        let c = KernelConfig::find(&p).unwrap();
        assert_eq!(c.source, ConfigSource::Embedded(p));
        assert!(c.is_enabled("CONFIG_SMP"));
    }

    #[test]
    fn the_shared_kernel_has_x2apic() {
        let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/kernel/bzImage");
        if !image.exists() {
            eprintln!("shared kernel not found at {}; skipping", image.display());
            return;
        }
        let c = KernelConfig::find(&image).expect("the shared kernel's config");
        assert!(c.is_enabled("CONFIG_X86_X2APIC"));
        assert!(c.is_enabled("CONFIG_SCHED_CLASS_EXT"));
    }
}
