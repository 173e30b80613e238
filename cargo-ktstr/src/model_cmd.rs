//! `cargo ktstr model fetch|status|clean`: the pinned GGUF model in the model cache
//! (cli.md §2.13, §10; the work is `ktstr::model`).

use std::process::ExitCode;

use anyhow::Result;
use ktstr::model::{ModelCache, ModelState};

/// `model`'s subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Download the pinned model and verify its SHA-256 (nothing to do when a verified copy
    /// is cached; KTSTR_MODEL_OFFLINE=1 refuses the network).
    Fetch,
    /// Print where the model belongs and whether a SHA-verified copy is there (offline;
    /// exit 1 when there is none).
    Status,
    /// Delete the cached model and its warm-check record (offline).
    Clean,
}

/// Runs a `model` subcommand on the default model's cache.
pub fn run(c: ModelCommand) -> Result<ExitCode> {
    let cache = ModelCache::default_model();
    let path = cache.path();
    match c {
        ModelCommand::Fetch => {
            let offline = std::env::var("KTSTR_MODEL_OFFLINE").is_ok_and(|v| v == "1");
            let got = cache.fetch(offline)?;
            println!(
                "{} {} at {} (SHA-256 {})",
                if got { "downloaded" } else { "already cached:" },
                cache.model.name,
                path.display(),
                cache.model.sha256
            );
            Ok(ExitCode::SUCCESS)
        }
        ModelCommand::Status => {
            let state = cache.state()?;
            println!("model:  {}", cache.model.name);
            println!("path:   {}", path.display());
            println!("sha256: {}", cache.model.sha256);
            let (line, ok) = match state {
                ModelState::Verified { warm: true } => (
                    "verified (mtime and size as when last hashed)".to_string(),
                    true,
                ),
                ModelState::Verified { warm: false } => ("verified (hashed now)".to_string(), true),
                ModelState::Missing => (
                    "not present (`cargo ktstr model fetch`, or copy the file to the path above)"
                        .to_string(),
                    false,
                ),
                ModelState::Mismatch { actual } => (
                    format!("WRONG FILE: it hashes to {actual}; delete it (`cargo ktstr model clean`) and fetch again"),
                    false,
                ),
            };
            println!("state:  {line}");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        ModelCommand::Clean => {
            let removed = cache.clean()?;
            if removed.is_empty() {
                println!("nothing cached at {}", cache.dir.display());
            }
            for p in removed {
                println!("removed {}", p.display());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
