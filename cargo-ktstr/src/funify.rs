//! `cargo ktstr funify` (alias `costume`): a JSON dump with every identifying value replaced
//! by a deterministic fake (cli.md §2.15, §4; the work is `ktstr::fun`).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use ktstr::fun::Funifier;

/// Flags of `cargo ktstr funify`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = allowlist_help())]
pub struct FunifyArgs {
    /// The JSON file to read; `-` or nothing: stdin.
    input: Option<PathBuf>,
    /// Fixes the output: the same seed and input always give the same result (without it,
    /// a fresh key per run).
    #[arg(long)]
    seed: Option<String>,
    /// Pretty-print the output.
    #[arg(long)]
    pretty: bool,
}

/// The help text's allowlist: the very tables the predicate reads.
fn allowlist_help() -> String {
    format!(
        "Values pass through unchanged under these keys (case-sensitive), under ktstr's own \
         metric names (`stats list-metrics`), and always for floats, booleans, null, 0 and \
         u64::MAX. Everything else becomes an adjective-animal petname (strings) or another \
         integer.\n\nExact keys:\n{}\n\nKeys ending in:\n{}",
        indent(ktstr::fun::ALLOWLIST_EXACT),
        indent(ktstr::fun::ALLOWLIST_SUFFIXES)
    )
}

fn indent(t: &str) -> String {
    t.lines()
        .map(|l| format!("  {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `funify`.
pub fn run(a: FunifyArgs) -> Result<ExitCode> {
    let (text, from) = match a.input.as_deref() {
        None => (read_stdin()?, "stdin".to_string()),
        Some(p) if p.as_os_str() == "-" => (read_stdin()?, "stdin".to_string()),
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            p.display().to_string(),
        ),
    };
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{from} is not JSON"))?;
    let f = match &a.seed {
        Some(s) => Funifier::with_seed(s),
        None => Funifier::random(),
    };
    let out = f.funify(doc);
    let mut s = if a.pretty {
        serde_json::to_string_pretty(&out)?
    } else {
        serde_json::to_string(&out)?
    };
    s.push('\n');
    std::io::stdout().lock().write_all(s.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

fn read_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading stdin")?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_help_lists_every_allowlisted_word() {
        let h = allowlist_help();
        for table in [ktstr::fun::ALLOWLIST_EXACT, ktstr::fun::ALLOWLIST_SUFFIXES] {
            for w in table
                .lines()
                .filter_map(|l| l.split_once(':'))
                .flat_map(|(_, w)| w.split_whitespace())
            {
                assert!(h.contains(w), "{w}");
            }
        }
    }
}
