//! The model cache behind `cargo ktstr model fetch|status|clean`: one pinned GGUF file (the
//! model `OutputFormat::LlmExtract` payloads will use) under `{cache root}/models/`
//! (`$KTSTR_CACHE_DIR/models`, `$XDG_CACHE_HOME/ktstr/models`, `~/.cache/ktstr/models`),
//! verified by SHA-256.
//!
//! Hashing 2.4 GB takes seconds, so a verified file gets a `.mtime-size` record beside it (its
//! mtime, size and the hash they were checked against): while those still match, `status`
//! trusts it without re-hashing (the warm check).
//!
//! Downloading runs `curl` rather than linking an HTTP and TLS stack into every ktstr binary
//! for one file; a missing `curl`, no network, or `KTSTR_MODEL_OFFLINE=1` fail at once with
//! the exact path, file name and SHA-256 to put a copy there by hand.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

/// A model ktstr pins: where it comes from and what it must hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedModel {
    /// What people call it.
    pub name: &'static str,
    /// The file name in the cache.
    pub file_name: &'static str,
    /// Where `fetch` downloads it from (a commit-pinned URL).
    pub url: &'static str,
    /// Its SHA-256, lower-case hex.
    pub sha256: &'static str,
}

/// The default model: Microsoft's Phi-3-mini-4k-instruct, 4-bit GGUF (about 2.4 GB, runs on a
/// CPU), at a pinned commit of its Hugging Face repository.
pub const DEFAULT_MODEL: PinnedModel = PinnedModel {
    name: "Phi-3-mini-4k-instruct (Q4 GGUF)",
    file_name: "Phi-3-mini-4k-instruct-q4.gguf",
    url: "https://huggingface.co/microsoft/Phi-3-mini-4k-instruct-gguf/resolve/c80d904a71b99a3eaeb8d3dbf164166384c09dc3/Phi-3-mini-4k-instruct-q4.gguf",
    sha256: "8a83c7fb9049a9b2e92266fa7ad04933bb53aa1e85136b7b30f1b8000ff2edef",
};

/// The model cache directory (not created).
pub fn models_dir() -> PathBuf {
    crate::cache::root().join("models")
}

/// Why a model operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The download could not happen or did not finish.
    #[error("could not download {name}: {why}\n{}", manual(.path, .file_name, .sha256, .url))]
    Download {
        /// The model's name.
        name: &'static str,
        /// Why.
        why: String,
        /// Where the file belongs.
        path: PathBuf,
        /// Its file name.
        file_name: &'static str,
        /// Its SHA-256.
        sha256: &'static str,
        /// Its URL.
        url: &'static str,
    },
    /// A downloaded file hashed wrong (it was not kept).
    #[error(
        "the download of {name} hashes to {actual}, not the pinned {expected}; it was not kept"
    )]
    Mismatch {
        /// The model's name.
        name: &'static str,
        /// What it hashed to.
        actual: String,
        /// The pin.
        expected: &'static str,
    },
}

fn manual(path: &Path, file_name: &str, sha256: &str, url: &str) -> String {
    format!(
        "hint: copy the file in by hand, then check it with `cargo ktstr model status`:\n  \
         path:    {}\n  file:    {file_name}\n  sha256:  {sha256}\n  from:    {url}",
        path.display()
    )
}

/// What the cache holds of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelState {
    /// No file.
    Missing,
    /// The file hashes to the pin; `warm`: known from the `.mtime-size` record, not re-hashed.
    Verified {
        /// Whether the warm record vouched for it.
        warm: bool,
    },
    /// The file hashes to something else.
    Mismatch {
        /// What it hashed to.
        actual: String,
    },
}

/// The cache of one model in one directory.
#[derive(Debug, Clone)]
pub struct ModelCache {
    /// The model.
    pub model: PinnedModel,
    /// The directory.
    pub dir: PathBuf,
}

impl ModelCache {
    /// The default model in the default directory.
    pub fn default_model() -> Self {
        ModelCache {
            model: DEFAULT_MODEL,
            dir: models_dir(),
        }
    }

    /// Where the model file is.
    pub fn path(&self) -> PathBuf {
        self.dir.join(self.model.file_name)
    }

    /// The warm-check record beside it.
    pub fn warm_record(&self) -> PathBuf {
        self.dir
            .join(format!("{}.mtime-size", self.model.file_name))
    }

    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ModelError {
        let path = path.to_path_buf();
        move |source| ModelError::Io { what, path, source }
    }

    /// The file's mtime (ns since the epoch) and size now.
    fn stamp(path: &Path) -> std::io::Result<(u128, u64)> {
        let m = std::fs::metadata(path)?;
        let mtime = m
            .modified()?
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        Ok((mtime, m.len()))
    }

    /// What the cache holds, hashing the file only when the warm record does not vouch for it
    /// (and writing the record when the hash matches).
    pub fn state(&self) -> Result<ModelState, ModelError> {
        let path = self.path();
        let Ok((mtime, size)) = Self::stamp(&path) else {
            return Ok(ModelState::Missing);
        };
        let expected = format!("{mtime} {size} {}", self.model.sha256);
        if std::fs::read_to_string(self.warm_record()).is_ok_and(|r| r.trim() == expected) {
            return Ok(ModelState::Verified { warm: true });
        }
        let actual = sha256_of(&path).map_err(Self::io("hashing", &path))?;
        if actual != self.model.sha256 {
            let _ = std::fs::remove_file(self.warm_record());
            return Ok(ModelState::Mismatch { actual });
        }
        // A record we cannot write only costs a re-hash next time.
        let _ = std::fs::write(self.warm_record(), format!("{expected}\n"));
        Ok(ModelState::Verified { warm: false })
    }

    /// Downloads the model unless a verified copy is there; `Ok(false)`: it already was.
    /// `offline` (`KTSTR_MODEL_OFFLINE=1`) refuses the network.
    pub fn fetch(&self, offline: bool) -> Result<bool, ModelError> {
        if matches!(self.state()?, ModelState::Verified { .. }) {
            return Ok(false);
        }
        let fail = |why: String| ModelError::Download {
            name: self.model.name,
            why,
            path: self.path(),
            file_name: self.model.file_name,
            sha256: self.model.sha256,
            url: self.model.url,
        };
        if offline {
            return Err(fail("KTSTR_MODEL_OFFLINE=1 forbids the network".into()));
        }
        std::fs::create_dir_all(&self.dir).map_err(Self::io("creating", &self.dir))?;
        let part = self.dir.join(format!("{}.part", self.model.file_name));
        // Fail fast without a network (10 s to connect) and on a stalled transfer (under
        // 1 KiB/s for 60 s); never retry silently.
        let out = Command::new("curl")
            .args(["-fsSL", "--connect-timeout", "10", "--speed-limit", "1024"])
            .args(["--speed-time", "60", "-o"])
            .arg(&part)
            .arg(self.model.url)
            .output()
            .map_err(|e| fail(format!("running curl: {e} (apt-get install curl)")))?;
        if !out.status.success() {
            let _ = std::fs::remove_file(&part);
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(fail(format!("curl: {}", err.trim())));
        }
        let actual = sha256_of(&part).map_err(Self::io("hashing", &part))?;
        if actual != self.model.sha256 {
            let _ = std::fs::remove_file(&part);
            return Err(ModelError::Mismatch {
                name: self.model.name,
                actual,
                expected: self.model.sha256,
            });
        }
        let path = self.path();
        std::fs::rename(&part, &path).map_err(Self::io("moving into place", &path))?;
        self.state()?;
        Ok(true)
    }

    /// Deletes the model, its warm record and any partial download; returns what was removed.
    pub fn clean(&self) -> Result<Vec<PathBuf>, ModelError> {
        let part = self.dir.join(format!("{}.part", self.model.file_name));
        let mut removed = Vec::new();
        for p in [self.path(), self.warm_record(), part] {
            match std::fs::remove_file(&p) {
                Ok(()) => removed.push(p),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Self::io("removing", &p)(e)),
            }
        }
        Ok(removed)
    }
}

/// The SHA-256 of a file, lower-case hex.
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny "model" served from a file:// URL, with its real hash.
    fn fake(dir: &Path) -> ModelCache {
        let src = dir.join("src.gguf");
        std::fs::write(&src, b"GGUF not really a model").unwrap();
        let sha = sha256_of(&src).unwrap();
        let url: &'static str = Box::leak(format!("file://{}", src.display()).into_boxed_str());
        ModelCache {
            model: PinnedModel {
                name: "fake",
                file_name: "fake.gguf",
                url,
                sha256: Box::leak(sha.into_boxed_str()),
            },
            dir: dir.join("models"),
        }
    }

    fn have_curl() -> bool {
        Command::new("curl").arg("--version").output().is_ok()
    }

    #[test]
    fn fetch_verifies_records_a_warm_check_and_clean_removes_everything() {
        if !have_curl() {
            eprintln!("no curl: fetch test skipped");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let c = fake(d.path());
        assert_eq!(c.state().unwrap(), ModelState::Missing);
        assert!(c.fetch(false).unwrap(), "downloaded");
        assert_eq!(c.state().unwrap(), ModelState::Verified { warm: true });
        assert!(!c.fetch(false).unwrap(), "already there: nothing to do");
        // Touching the file invalidates the record: re-hashed, still fine.
        std::fs::write(c.path(), b"GGUF not really a model").unwrap();
        let r = std::fs::read_to_string(c.warm_record()).unwrap();
        std::fs::write(c.warm_record(), r.replace(' ', "0 ")).unwrap();
        assert_eq!(c.state().unwrap(), ModelState::Verified { warm: false });
        let removed = c.clean().unwrap();
        assert_eq!(removed, [c.path(), c.warm_record()]);
        assert!(c.clean().unwrap().is_empty(), "nothing left to clean");
    }

    #[test]
    fn a_hand_copied_wrong_file_is_a_mismatch_and_a_bad_download_is_not_kept() {
        let d = tempfile::tempdir().unwrap();
        let mut c = fake(d.path());
        std::fs::create_dir_all(&c.dir).unwrap();
        std::fs::write(c.path(), b"something else").unwrap();
        assert!(matches!(c.state().unwrap(), ModelState::Mismatch { .. }));
        if have_curl() {
            std::fs::remove_file(c.path()).unwrap();
            c.model.sha256 = "00";
            let e = c.fetch(false).unwrap_err().to_string();
            assert!(e.contains("not the pinned 00; it was not kept"), "{e}");
            assert!(!c.path().exists() && std::fs::read_dir(&c.dir).unwrap().next().is_none());
        }
    }

    #[test]
    fn offline_fetch_says_where_to_put_the_file() {
        let d = tempfile::tempdir().unwrap();
        let c = fake(d.path());
        let e = c.fetch(true).unwrap_err().to_string();
        assert!(
            e.contains("KTSTR_MODEL_OFFLINE=1 forbids the network"),
            "{e}"
        );
        assert!(e.contains(&c.path().display().to_string()), "{e}");
        assert!(e.contains(c.model.sha256) && e.contains("fake.gguf"), "{e}");
    }

    #[test]
    fn an_unreachable_url_fails_with_the_manual_route() {
        if !have_curl() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let mut c = fake(d.path());
        c.model.url = "file:///nonexistent/ktstr-model.gguf";
        let e = c.fetch(false).unwrap_err().to_string();
        assert!(e.starts_with("could not download fake: curl:"), "{e}");
        assert!(e.contains("hint: copy the file in by hand"), "{e}");
    }
}
