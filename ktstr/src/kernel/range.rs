//! Kernel versions and `START..END` ranges over the kernel cache.
//!
//! A range is inclusive at both ends and picks, for each `major.minor` series in it, the
//! newest patch release. ktstr never downloads, so a range expands against the cached
//! kernels only; [`Expansion::missing`] names the series a range covers that the cache lacks
//! (when both ends share a major, where the series in between are known) so the caller can
//! warn that the expansion is partial.

use crate::kernel::cache::{Entry, KernelCache};

/// A parsed kernel version: `6.12.57`, `6.12`, `6.15-rc3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch level; a release candidate sorts below the release (`-rcN` → patch 0, rc N).
    pub patch: u32,
    /// `u32::MAX` for a release; N for `-rcN` (so rc1 < rc2 < release).
    pub rc: u32,
}

impl Version {
    /// Parses `major.minor[.patch][-rcN]`; anything after a further `-` or `+` is ignored
    /// (`6.12.57-ktstr`). `None` when the first two parts are not numbers.
    pub fn parse(s: &str) -> Option<Version> {
        let (base, rc) = match s.split_once("-rc") {
            Some((b, r)) => {
                let n: String = r.chars().take_while(char::is_ascii_digit).collect();
                (b, n.parse().ok()?)
            }
            None => (s.split(['-', '+']).next().unwrap_or(s), u32::MAX),
        };
        let mut parts = base.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        let patch = match parts.next() {
            Some(p) => p.parse().ok()?,
            None => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Version {
            major,
            minor,
            patch,
            rc,
        })
    }

    /// `major.minor`.
    pub fn series(&self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

/// Why a range cannot be expanded.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// Not `START..END` with two versions.
    #[error("{0:?} is not a kernel range: write START..END with two versions, e.g. 6.12..6.14 or 6.12.10..6.12.57")]
    Malformed(String),
    /// START after END.
    #[error("kernel range {0:?} is empty: START is after END")]
    Reversed(String),
    /// Nothing cached falls in it.
    #[error("no cached kernel falls in {range} (cached: {cached}); build one with `cargo ktstr kernel build`")]
    NothingCached {
        /// The range.
        range: String,
        /// What the cache has.
        cached: String,
    },
}

/// What a range expanded to.
#[derive(Debug)]
pub struct Expansion {
    /// The newest cached patch of each series in the range, oldest series first.
    pub picked: Vec<Entry>,
    /// Series in the range the cache has nothing of (`6.13`), when they can be enumerated.
    pub missing: Vec<String>,
}

/// Whether `spec` has the shape of a range (`A..B`, no path separator).
pub fn is_range(spec: &str) -> bool {
    spec.contains("..") && !spec.contains('/')
}

/// Expands `spec` (`START..END`) against `cache`'s usable entries.
pub fn expand(spec: &str, cache: &KernelCache) -> Result<Expansion, RangeError> {
    let (a, b) = spec
        .split_once("..")
        .ok_or_else(|| RangeError::Malformed(spec.into()))?;
    let (Some(lo), Some(hi)) = (Version::parse(a.trim()), Version::parse(b.trim())) else {
        return Err(RangeError::Malformed(spec.into()));
    };
    // An end given as `major.minor` covers its whole series.
    let hi_is_series = b.trim().split('.').count() == 2 && !b.contains("-rc");
    let hi = if hi_is_series {
        Version {
            patch: u32::MAX,
            rc: u32::MAX,
            ..hi
        }
    } else {
        hi
    };
    let lo = if a.trim().split('.').count() == 2 && !a.contains("-rc") {
        Version { rc: 0, ..lo }
    } else {
        lo
    };
    if lo > hi {
        return Err(RangeError::Reversed(spec.into()));
    }
    let usable = cache.usable();
    let mut best: std::collections::BTreeMap<(u32, u32), (Version, Entry)> = Default::default();
    for e in &usable {
        let Some(v) = e
            .meta
            .as_ref()
            .ok()
            .and_then(|m| Version::parse(&m.version))
        else {
            continue;
        };
        if v < lo || v > hi {
            continue;
        }
        if best.get(&v.series()).is_none_or(|(old, _)| v > *old) {
            best.insert(v.series(), (v, e.clone()));
        }
    }
    if best.is_empty() {
        let cached: Vec<String> = usable
            .iter()
            .filter_map(|e| e.meta.as_ref().ok().map(|m| m.version.clone()))
            .collect();
        return Err(RangeError::NothingCached {
            range: spec.into(),
            cached: if cached.is_empty() {
                "nothing".into()
            } else {
                cached.join(", ")
            },
        });
    }
    let missing = if lo.major == hi.major {
        (lo.minor..=hi.minor)
            .filter(|m| !best.contains_key(&(lo.major, *m)))
            .map(|m| format!("{}.{m}", lo.major))
            .collect()
    } else {
        Vec::new()
    };
    Ok(Expansion {
        picked: best.into_values().map(|(_, e)| e).collect(),
        missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::cache::{Metadata, Source};

    fn cache_with(versions: &[&str]) -> (tempfile::TempDir, KernelCache) {
        let d = tempfile::tempdir().unwrap();
        let c = KernelCache::at(d.path());
        for (i, v) in versions.iter().enumerate() {
            let key = format!("k{i}");
            let s = c.staging(&key).unwrap();
            let mut bz = vec![0u8; 0x400];
            bz[0x202..0x206].copy_from_slice(b"HdrS");
            std::fs::write(s.join("bzImage"), bz).unwrap();
            std::fs::write(s.join("vmlinux"), b"\x7fELF").unwrap();
            let src = Source::Local {
                path: "/l".into(),
                commit: None,
            };
            let meta = Metadata {
                built_at: 100 - i as u64,
                ..Metadata::new(v, src)
            };
            c.store(&key, &s, &meta).unwrap();
        }
        (d, c)
    }

    fn versions(x: &Expansion) -> Vec<String> {
        x.picked
            .iter()
            .map(|e| e.meta.as_ref().unwrap().version.clone())
            .collect()
    }

    #[test]
    fn versions_parse_and_order() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("6.15-rc3") < v("6.15"));
        assert!(v("6.15-rc3") < v("6.15-rc10"));
        assert!(v("6.12.9") < v("6.12.10"));
        assert_eq!(v("6.12.57-ktstr"), v("6.12.57"));
        for bad in ["6", "x.1", "6.12.1.2", "", "6.x"] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_range_takes_the_newest_patch_of_each_cached_series_inclusively() {
        let (_d, c) = cache_with(&["6.12.10", "6.12.57", "6.14.2", "6.15-rc3", "6.11.1"]);
        // A series picks its highest patch, not its newest build (6.12.10 was built last).
        let v = |e: Option<Entry>| e.unwrap().meta.unwrap().version;
        assert_eq!(v(c.find_version("6.12")), "6.12.57");
        assert_eq!(v(c.find_version("6.12.10")), "6.12.10");
        let x = expand("6.12..6.14", &c).unwrap();
        assert_eq!(versions(&x), ["6.12.57", "6.14.2"]);
        assert_eq!(x.missing, ["6.13"]);
        // Full versions bound exactly.
        let x = expand("6.12.10..6.12.20", &c).unwrap();
        assert_eq!(versions(&x), ["6.12.10"]);
        // A release candidate is inside its series.
        assert_eq!(versions(&expand("6.15..6.15", &c).unwrap()), ["6.15-rc3"]);
        let e = expand("6.14..6.12", &c).unwrap_err().to_string();
        assert!(e.contains("START is after END"), "{e}");
        let e = expand("7.0..7.2", &c).unwrap_err().to_string();
        assert!(
            e.contains("no cached kernel falls in 7.0..7.2") && e.contains("6.12.57"),
            "{e}"
        );
        let e = expand("a..b", &c).unwrap_err().to_string();
        assert!(e.contains("START..END"), "{e}");
        assert!(is_range("6.12..6.14") && !is_range("../linux") && !is_range("6.12"));
    }
}
