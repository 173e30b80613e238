//! `cargo ktstr locks`: every ktstr lock file on this host and who holds it, once or on a
//! watch interval. Read-only: it never takes a lock.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use ktstr::locks::LockEntry;

/// Arguments of `cargo ktstr locks`.
#[derive(Debug, Args)]
pub struct LocksArgs {
    /// Print JSON (`[{path, kind, index, holders: [{pid, mode, cmdline}]}]`): pretty once,
    /// one compact line per interval under --watch.
    #[arg(long)]
    json: bool,
    /// Redraw every interval (e.g. 100ms, 1s, 5m) until interrupted.
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    watch: Option<Duration>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e} (write a duration such as 100ms, 1s, 5m)"))?;
    if d.is_zero() {
        return Err("the interval must be longer than zero".into());
    }
    Ok(d)
}

/// Runs `locks`.
pub fn run(a: LocksArgs) -> Result<ExitCode> {
    let Some(every) = a.watch else {
        let locks = list()?;
        let out = if a.json {
            serde_json::to_string_pretty(&locks)? + "\n"
        } else {
            render(&locks)
        };
        print!("{out}");
        return Ok(ExitCode::SUCCESS);
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing the signal handler")?;
    }
    let mut stdout = std::io::stdout();
    while !stop.load(Ordering::Relaxed) {
        let locks = list()?;
        let frame = if a.json {
            serde_json::to_string(&locks)? + "\n"
        } else {
            // Clear the screen and home the cursor, then draw the table in place.
            format!("\x1b[2J\x1b[H{}", render(&locks))
        };
        if stdout
            .write_all(frame.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break; // the reader went away (e.g. `| head`)
        }
        let until = Instant::now() + every;
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list() -> Result<Vec<LockEntry>> {
    ktstr::locks::list_locks().context("reading /proc/locks")
}

/// The human table: one row per holder, one row for a free lock file.
fn render(locks: &[LockEntry]) -> String {
    if locks.is_empty() {
        return format!(
            "no ktstr lock files in {} or {}\n",
            ktstr::locks::lock_dir().display(),
            ktstr::cache::root().join(".locks").display()
        );
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["lock", "kind", "index", "pid", "mode", "cmdline"]);
    let mut held = 0;
    for e in locks {
        let kind = e.kind.to_string();
        let index = e.index.map(|i| i.to_string()).unwrap_or_default();
        let path = e.path.display().to_string();
        if e.holders.is_empty() {
            t.add_row([path, kind, index, "-".into(), "free".into(), String::new()]);
            continue;
        }
        held += 1;
        for h in &e.holders {
            t.add_row([
                path.clone(),
                kind.clone(),
                index.clone(),
                h.pid.to_string(),
                h.mode.to_string(),
                h.cmdline.clone(),
            ]);
        }
    }
    format!("{t}\n{held} of {} lock files held\n", locks.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_interval("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_interval("0s")
            .unwrap_err()
            .contains("longer than zero"));
        assert!(parse_interval("soon")
            .unwrap_err()
            .contains("such as 100ms"));
    }
}
