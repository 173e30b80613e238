//! `cargo ktstr stats`: what recorded runs hold. No subcommand summarises the newest run;
//! `list`, `list-values` and `show-host` browse all of them.
//!

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use ktstr::runs::{self, Verdict};

use crate::pool::{load, load_pool, no_runs};
use ktstr::sidecar::runs_root;
use ktstr::sidecar::Sidecar;

/// Arguments of `cargo ktstr stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(subcommand)]
    sub: Option<StatsCommand>,
}

#[derive(Debug, Subcommand)]
enum StatsCommand {
    /// List the recorded runs, newest first: per run, one row per case with its topology,
    /// test, scheduler and verdict.
    List,
    /// The metrics runs are compared on: polarity, default significance gates, unit.
    ListMetrics {
        /// Print a JSON array (name, polarity, default_abs, default_rel, unit, description).
        #[arg(long)]
        json: bool,
    },
    /// The distinct values of each dimension `compare` can filter on, over every run.
    ListValues {
        /// Print one JSON object keyed by dimension.
        #[arg(long)]
        json: bool,
        /// Another runs root (e.g. one archived from CI); rows read from it count as
        /// run source `archive`.
        #[arg(long, value_name = "PATH")]
        dir: Option<PathBuf>,
    },
    /// Compare two slices of the recorded runs (e.g. --a-kernel 6.12 --b-kernel 6.13),
    /// paired by test, scenario, scheduler, topology and work type; exit 1 on a regression.
    Compare(Box<crate::compare::CompareArgs>),
    /// For each sidecar of a run, which optional fields are null and why.
    ExplainSidecar {
        /// The run key, as `stats list` shows it.
        #[arg(long, value_name = "KEY")]
        run: String,
        /// Another runs root.
        #[arg(long, value_name = "PATH")]
        dir: Option<PathBuf>,
        /// One JSON object over the whole run.
        #[arg(long)]
        json: bool,
    },
    /// Verdict parity: every case under --dir against the same case under --against (default:
    /// this workspace's runs), e.g. the KVM lane's sidecars against the qemu suite's. Cases
    /// agree when their verdicts and failure kinds are equal; exit 1 if any case disagrees or
    /// is missing from --against.
    Parity {
        /// The runs root (or one run directory) whose cases are checked.
        #[arg(long, value_name = "PATH")]
        dir: PathBuf,
        /// The runs root (or one run directory) they are checked against.
        #[arg(long, value_name = "PATH")]
        against: Option<PathBuf>,
    },
    /// Print the host context recorded with one run.
    ShowHost {
        /// The run key, as `stats list` shows it.
        #[arg(long, value_name = "KEY")]
        run: String,
        /// Another runs root.
        #[arg(long, value_name = "PATH")]
        dir: Option<PathBuf>,
    },
}

/// Runs `stats`.
pub fn run(a: StatsArgs) -> Result<ExitCode> {
    match a.sub {
        Some(StatsCommand::Compare(c)) => return crate::compare::run(*c),
        None => summary(),
        Some(StatsCommand::List) => list(),
        Some(StatsCommand::ListMetrics { json }) => list_metrics(json),
        Some(StatsCommand::ListValues { json, dir }) => list_values(json, dir),
        Some(StatsCommand::ShowHost { run, dir }) => show_host(&run, dir),
        Some(StatsCommand::Parity { dir, against }) => return parity(&dir, against),
        Some(StatsCommand::ExplainSidecar { run, dir, json }) => {
            crate::explain::run(&run, &find_run(dir, &run)?.path, json)
        }
    }?;
    Ok(ExitCode::SUCCESS)
}

/// The newest run's directory and key: `KTSTR_SIDECAR_DIR` names it directly.
fn newest() -> Result<(String, PathBuf)> {
    if let Some(d) = std::env::var_os("KTSTR_SIDECAR_DIR").filter(|d| !d.is_empty()) {
        let d = PathBuf::from(d);
        if !d.is_dir() {
            bail!("KTSTR_SIDECAR_DIR={} is not a directory", d.display());
        }
        let key = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok((key, d));
    }
    let run = runs::list_runs(&runs_root()).map_err(no_runs)?.remove(0);
    Ok((run.key, run.path))
}

/// The run `key` under `dir` (default: the runs root), or an error pointing at `stats list`.
fn find_run(dir: Option<PathBuf>, key: &str) -> Result<runs::RunDir> {
    let root = dir.unwrap_or_else(runs_root);
    runs::find_run(&root, key).map_err(|e| {
        anyhow::anyhow!("{e}\nhint: `cargo ktstr stats list` shows the recorded run keys")
    })
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    t
}

/// `stats`: the newest run's cases by verdict, and per topology.
fn summary() -> Result<()> {
    let (key, dir) = newest()?;
    let run = load(&dir)?;
    // A run directory collects every run with one kernel and commit: the summary is the newest
    // nextest run's (its sidecars share `run_id`, NEXTEST_RUN_ID).
    let (mut run_id, cases) = newest_nextest_run(&run.sidecars);
    if run_id.is_empty() {
        run_id = "(no run id recorded)".into();
    }
    println!(
        "run {key}, nextest run {run_id} ({} of the {} cases in {})",
        cases.len(),
        run.sidecars.len(),
        dir.display()
    );
    let cases = &cases;
    let count = |v: Verdict| cases.iter().filter(|(_, s)| runs::verdict(s) == v).count();
    println!(
        "pass {}  fail {}  skip {}  inconclusive {}",
        count(Verdict::Pass),
        count(Verdict::Fail),
        count(Verdict::Skip),
        count(Verdict::Inconclusive)
    );
    println!("\ngauntlet (cases per topology):");
    let mut by_topo: BTreeMap<&str, [usize; 3]> = BTreeMap::new();
    for (_, s) in cases {
        let slot = match runs::verdict(s) {
            Verdict::Pass => 0,
            Verdict::Skip => 2,
            _ => 1,
        };
        by_topo.entry(&s.topology).or_default()[slot] += 1;
    }
    let mut t = table(&["topology", "pass", "fail", "skip"]);
    for (topo, [p, f, s]) in &by_topo {
        t.add_row([
            topo.to_string(),
            p.to_string(),
            f.to_string(),
            s.to_string(),
        ]);
    }
    println!("{t}");
    let failed: Vec<&Sidecar> = cases
        .iter()
        .map(|(_, s)| s)
        .filter(|s| runs::verdict(s).is_failure())
        .collect();
    if !failed.is_empty() {
        println!("\nfailed cases:");
        for s in failed {
            let why = s
                .details
                .first()
                .map(|d| d.message.as_str())
                .unwrap_or("(no details recorded)");
            println!("  {}: {why}", s.case_name);
        }
    }
    let kvm: Vec<&Sidecar> = cases
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.kvm_stats.is_some())
        .collect();
    if !kvm.is_empty() {
        println!("\nKVM exits (in-process VMM, summed over vCPUs):");
        println!("{}", kvm_table(&kvm));
    }
    for (name, has) in [
        (
            "BPF verifier stats",
            cases.iter().any(|(_, s)| s.verifier_stats.is_some()),
        ),
        (
            "callback profile",
            cases.iter().any(|(_, s)| s.monitor.is_some()),
        ),
        (
            "KVM stats",
            cases.iter().any(|(_, s)| s.kvm_stats.is_some()),
        ),
    ] {
        if !has {
            println!("\n{name}: none recorded in this run");
        }
    }
    Ok(())
}

/// One row per case with KVM statistics: its exits by reason.
fn kvm_table(cases: &[&Sidecar]) -> Table {
    const COLS: [&str; 6] = [
        "exits",
        "io_exits",
        "mmio_exits",
        "halt_exits",
        "irq_exits",
        "signal_exits",
    ];
    let mut header = vec!["case", "vcpus"];
    header.extend(COLS);
    let mut t = table(&header);
    for s in cases {
        let k = s.kvm_stats.as_ref().expect("filtered on kvm_stats");
        let mut row = vec![s.case_name.clone(), k["vcpus"].to_string()];
        row.extend(COLS.iter().map(|c| {
            k["vcpu"][*c]
                .as_u64()
                .map_or("-".to_string(), |v| v.to_string())
        }));
        t.add_row(row);
    }
    t
}

/// The sidecars of the newest nextest run among `all` (the run id of the newest timestamp),
/// with that id.
fn newest_nextest_run(all: &[(PathBuf, Sidecar)]) -> (String, Vec<(PathBuf, Sidecar)>) {
    let Some(newest) = all.iter().max_by(|a, b| a.1.timestamp.cmp(&b.1.timestamp)) else {
        return (String::new(), Vec::new());
    };
    let id = newest.1.run_id.clone();
    let cases = all
        .iter()
        .filter(|(_, s)| s.run_id == id)
        .cloned()
        .collect();
    (id, cases)
}

/// `stats list`.
fn list() -> Result<()> {
    let runs = runs::list_runs(&runs_root()).map_err(no_runs)?;
    for r in runs {
        let run = load(&r.path)?;
        println!("{} ({} cases)", r.key, run.sidecars.len());
        let mut t = table(&["topology", "test", "scheduler", "flags", "verdict"]);
        for (_, s) in &run.sidecars {
            let flags = if s.active_flags.is_empty() {
                "-".to_string()
            } else {
                s.active_flags.join("+")
            };
            t.add_row([
                s.topology.as_str(),
                s.test_name.as_str(),
                s.scheduler.as_str(),
                flags.as_str(),
                runs::verdict(s).as_str(),
            ]);
        }
        println!("{t}\n");
    }
    Ok(())
}

/// The sidecars of a runs root, or of one run directory when `dir` holds sidecars itself.
fn load_root_or_run(dir: &Path) -> Result<Vec<Sidecar>> {
    let own = load(dir)?;
    let sidecars = if own.sidecars.is_empty() {
        load_pool(Some(dir.to_path_buf()))?
    } else {
        own.sidecars
    };
    Ok(sidecars.into_iter().map(|(_, s)| s).collect())
}

/// `stats parity`: see [`StatsCommand::Parity`].
fn parity(dir: &Path, against: Option<PathBuf>) -> Result<ExitCode> {
    let against = against.unwrap_or_else(runs_root);
    let a = load_root_or_run(dir).with_context(|| format!("reading {}", dir.display()))?;
    let b = load_root_or_run(&against).with_context(|| format!("reading {}", against.display()))?;
    if a.is_empty() {
        bail!("no sidecars under {}: nothing to check", dir.display());
    }
    let rows = ktstr::parity::compare(&a, &b);
    let mut t = table(&["case", "A", "B", "parity"]);
    let mut bad = 0;
    for r in &rows {
        let side = |o: &Option<ktstr::parity::CaseOutcome>| match o {
            Some(o) => format!("{} ({})", o.describe(), o.backend),
            None => "missing".into(),
        };
        let ok = r.agrees();
        bad += usize::from(!ok);
        t.add_row([
            r.case.clone(),
            side(&r.a),
            side(&r.b),
            if ok { "same" } else { "DIFFERENT" }.to_string(),
        ]);
    }
    println!("{t}");
    println!(
        "parity: {} cases, {} same, {bad} different or missing (A = {}, B = {})",
        rows.len(),
        rows.len() - bad,
        dir.display(),
        against.display()
    );
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `stats list-values`: the distinct values of each dimension `compare` filters on, under
/// the JSON keys of cli.md §2.7.
fn list_values(json: bool, dir: Option<PathBuf>) -> Result<()> {
    use ktstr::compare::Dim;
    let key = |d: Dim| match d {
        Dim::Kernel => "kernel",
        Dim::ProjectCommit => "commit",
        Dim::KernelCommit => "kernel_commit",
        Dim::RunSource => "source",
        Dim::Scheduler => "scheduler",
        Dim::Topology => "topology",
        Dim::WorkType => "work_type",
    };
    let mut values: BTreeMap<Dim, BTreeSet<Option<String>>> = BTreeMap::new();
    for (_, s) in load_pool(dir)? {
        for d in Dim::ALL {
            values.entry(d).or_default().insert(d.value(&s));
        }
    }
    if json {
        let obj: serde_json::Map<String, serde_json::Value> = values
            .iter()
            .map(|(d, vs)| (key(*d).to_owned(), serde_json::json!(vs)))
            .collect();
        println!("{}", serde_json::to_string_pretty(&obj)?);
        return Ok(());
    }
    for (d, vs) in &values {
        println!("{}:", key(*d));
        for v in vs {
            println!("  {}", v.as_deref().unwrap_or("unknown"));
        }
    }
    Ok(())
}

/// `stats show-host --run KEY`.
fn show_host(key: &str, dir: Option<PathBuf>) -> Result<()> {
    let run = find_run(dir, key)?;
    let loaded = load(&run.path).with_context(|| format!("reading run {key}"))?;
    match loaded.sidecars.iter().find_map(|(_, s)| s.host.as_ref()) {
        Some(h) => {
            print!("{h}");
            Ok(())
        }
        None => bail!(
            "no sidecar of run {key} records its host ({} sidecars read); the run probably \
             predates host capture",
            loaded.sidecars.len()
        ),
    }
}

/// `stats list-metrics`: the run-level registry (policy keys), then the per-phase metrics of
/// `stats compare`'s phase tables. `--json` prints the run-level registry.
fn list_metrics(json: bool) -> Result<()> {
    use ktstr::metrics::{METRICS, PHASE_METRICS};
    if json {
        println!("{}", serde_json::to_string_pretty(METRICS)?);
        return Ok(());
    }
    println!("{}", metrics_table(METRICS));
    println!("\nper-phase metrics (stats compare's phase tables):");
    println!("{}", metrics_table(PHASE_METRICS));
    Ok(())
}

fn metrics_table<S>(metrics: &[ktstr::metrics::Metric<S>]) -> comfy_table::Table {
    use ktstr::metrics::Polarity;
    let mut t = table(&["metric", "better", "abs", "rel", "unit", "description"]);
    for m in metrics {
        t.add_row([
            m.name.to_string(),
            match m.polarity {
                Polarity::HigherIsBetter => "higher",
                Polarity::LowerIsBetter => "lower",
            }
            .into(),
            m.default_abs.to_string(),
            m.default_rel.to_string(),
            m.unit.into(),
            m.description.into(),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_exits_are_tabled_per_case() {
        let mut s = Sidecar::default();
        s.case_name = "spin/eevdf/1n1l2c1t".into();
        s.kvm_stats = Some(serde_json::json!({
            "vcpus": 2, "vcpu": {"exits": 4242, "io_exits": 17}, "vm": {}
        }));
        let t = kvm_table(&[&s]).to_string();
        assert!(t.contains("spin/eevdf/1n1l2c1t"), "{t}");
        assert!(t.contains("4242") && t.contains("17"), "{t}");
        assert!(
            t.contains('-'),
            "a counter KVM did not report shows as -: {t}"
        );
    }

    #[test]
    fn the_summary_covers_the_newest_nextest_run_only() {
        let sc = |run: &str, ts: &str| {
            let mut s = Sidecar::default();
            s.run_id = run.into();
            s.timestamp = ts.into();
            (PathBuf::from(format!("{run}-{ts}")), s)
        };
        let all = vec![
            sc("a", "2026-12-01T10:00:00Z"),
            sc("b", "2026-12-02T10:00:00Z"),
            sc("b", "2026-12-02T10:00:05Z"),
            sc("a", "2026-12-01T10:00:09Z"),
        ];
        let (id, cases) = newest_nextest_run(&all);
        assert_eq!(id, "b");
        assert_eq!(cases.len(), 2);
        assert!(newest_nextest_run(&[]).1.is_empty());
    }
}
