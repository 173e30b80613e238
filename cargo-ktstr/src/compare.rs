//! `cargo ktstr stats compare`: two filtered slices of the recorded runs, paired and judged
//! metric by metric (the semantics live in `ktstr::compare`; this is flags and rendering).
//!

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use ktstr::compare::{self, Comparison, Dim, Filters, Policy, Request};

/// Arguments of `stats compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// Keep rows whose scenario, topology, scheduler and work type (joined) contain STR.
    #[arg(short = 'E', long = "filter", value_name = "STR")]
    filter: Option<String>,
    /// One relative gate in percent for every metric (instead of the registry's).
    #[arg(long, value_name = "PCT", conflicts_with = "policy")]
    threshold: Option<f64>,
    /// A JSON policy: {"default_percent": N, "per_metric_percent": {"metric": N}}.
    #[arg(long, value_name = "PATH")]
    policy: Option<PathBuf>,
    /// Another runs root (an archive); its rows count as run source `archive`.
    #[arg(long, value_name = "PATH")]
    dir: Option<PathBuf>,
    /// Keep every sidecar a separate row (two rows of one key on a side is an error).
    #[arg(long)]
    no_average: bool,

    /// Both sides: kernel version (`6.12` is the whole series).
    #[arg(long, value_name = "V")]
    kernel: Vec<String>,
    /// Both sides: project commit (7 hex, `-dirty` literal).
    #[arg(long, value_name = "C")]
    project_commit: Vec<String>,
    /// Both sides: kernel source commit.
    #[arg(long, value_name = "C")]
    kernel_commit: Vec<String>,
    /// Both sides: scheduler name.
    #[arg(long, value_name = "S")]
    scheduler: Vec<String>,
    /// Both sides: topology label (e.g. 1n2l4c2t).
    #[arg(long, value_name = "T")]
    topology: Vec<String>,
    /// Both sides: swept work type.
    #[arg(long, value_name = "W")]
    work_type: Vec<String>,
    /// Both sides: run source (local, ci, archive).
    #[arg(long, value_name = "R")]
    run_source: Vec<String>,

    /// Side A's kernel (replaces --kernel for A).
    #[arg(long, value_name = "V", help_heading = "Side A")]
    a_kernel: Vec<String>,
    /// Side A's project commit.
    #[arg(long, value_name = "C", help_heading = "Side A")]
    a_project_commit: Vec<String>,
    /// Side A's kernel commit.
    #[arg(long, value_name = "C", help_heading = "Side A")]
    a_kernel_commit: Vec<String>,
    /// Side A's scheduler.
    #[arg(long, value_name = "S", help_heading = "Side A")]
    a_scheduler: Vec<String>,
    /// Side A's topology.
    #[arg(long, value_name = "T", help_heading = "Side A")]
    a_topology: Vec<String>,
    /// Side A's work type.
    #[arg(long, value_name = "W", help_heading = "Side A")]
    a_work_type: Vec<String>,
    /// Side A's run source.
    #[arg(long, value_name = "R", help_heading = "Side A")]
    a_run_source: Vec<String>,

    /// Side B's kernel (replaces --kernel for B).
    #[arg(long, value_name = "V", help_heading = "Side B")]
    b_kernel: Vec<String>,
    /// Side B's project commit.
    #[arg(long, value_name = "C", help_heading = "Side B")]
    b_project_commit: Vec<String>,
    /// Side B's kernel commit.
    #[arg(long, value_name = "C", help_heading = "Side B")]
    b_kernel_commit: Vec<String>,
    /// Side B's scheduler.
    #[arg(long, value_name = "S", help_heading = "Side B")]
    b_scheduler: Vec<String>,
    /// Side B's topology.
    #[arg(long, value_name = "T", help_heading = "Side B")]
    b_topology: Vec<String>,
    /// Side B's work type.
    #[arg(long, value_name = "W", help_heading = "Side B")]
    b_work_type: Vec<String>,
    /// Side B's run source.
    #[arg(long, value_name = "R", help_heading = "Side B")]
    b_run_source: Vec<String>,

    /// Leave out the per-phase tables.
    #[arg(long, help_heading = "Phase rendering",
          conflicts_with_all = ["phases_only", "steps_only", "phase", "phase_threshold"])]
    no_phases: bool,
    /// Only the per-phase tables (and the host delta).
    #[arg(long, help_heading = "Phase rendering")]
    phases_only: bool,
    /// Hide the BASELINE bucket in phase tables.
    #[arg(long, help_heading = "Phase rendering", conflicts_with = "phase")]
    steps_only: bool,
    /// Show only phase bucket N (0 = BASELINE, k = step k).
    #[arg(long, value_name = "N", help_heading = "Phase rendering")]
    phase: Option<u16>,
    /// Hide phase rows changing by less than PCT percent.
    #[arg(long, value_name = "PCT", help_heading = "Phase rendering")]
    phase_threshold: Option<f64>,
}

impl CompareArgs {
    fn filters(&self) -> (Filters, Filters, Filters) {
        let pick = |v: [&Vec<String>; 7]| {
            Filters(
                Dim::ALL
                    .into_iter()
                    .zip(v)
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(d, v)| (d, v.clone()))
                    .collect(),
            )
        };
        // Dim::ALL order: kernel, project commit, kernel commit, run source, scheduler,
        // topology, work type.
        (
            pick([
                &self.kernel,
                &self.project_commit,
                &self.kernel_commit,
                &self.run_source,
                &self.scheduler,
                &self.topology,
                &self.work_type,
            ]),
            pick([
                &self.a_kernel,
                &self.a_project_commit,
                &self.a_kernel_commit,
                &self.a_run_source,
                &self.a_scheduler,
                &self.a_topology,
                &self.a_work_type,
            ]),
            pick([
                &self.b_kernel,
                &self.b_project_commit,
                &self.b_kernel_commit,
                &self.b_run_source,
                &self.b_scheduler,
                &self.b_topology,
                &self.b_work_type,
            ]),
        )
    }
}

/// Runs `stats compare`: exit 0 without regressions, 1 with.
pub fn run(a: CompareArgs) -> Result<ExitCode> {
    let policy = match (&a.threshold, &a.policy) {
        (Some(t), _) => Policy::uniform(*t)?,
        (_, Some(p)) => Policy::load(p)?,
        _ => Policy::default(),
    };
    let pool = crate::pool::load_pool(a.dir.clone())?;
    for w in a
        .work_type
        .iter()
        .chain(&a.a_work_type)
        .chain(&a.b_work_type)
    {
        if !ktstr::workload::WorkType::ALL_NAMES.contains(&w.as_str()) {
            eprintln!("warning: --work-type {w:?} is not a work type ktstr knows");
        }
    }
    let (shared, fa, fb) = a.filters();
    let (shared, fa, fb) = (
        resolve_commits(shared, "")?,
        resolve_commits(fa, "a-")?,
        resolve_commits(fb, "b-")?,
    );
    let cmp = compare::compare(&Request {
        pool: &pool,
        shared,
        a: fa,
        b: fb,
        text: a.filter.clone(),
        average: !a.no_average,
        policy,
    })?;
    print!("{}", render(&cmp, &a));
    let n = cmp.regressions();
    if n > 0 {
        eprintln!("ktstr: {n} metric regression(s) from A to B");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Replaces each commit filter value by the short hashes it names (cli.md §3.4): project
/// commits in the repository around the current directory, kernel commits in the one at
/// `KTSTR_KERNEL`. `side` prefixes the flag in messages (`a-`, `b-` or nothing).
fn resolve_commits(mut f: Filters, side: &str) -> Result<Filters> {
    let cwd = std::env::current_dir()?;
    let kernel = std::env::var_os("KTSTR_KERNEL").map(PathBuf::from);
    for (dim, resolver) in [
        (Dim::ProjectCommit, ktstr::revspec::Resolver::project(&cwd)),
        (
            Dim::KernelCommit,
            ktstr::revspec::Resolver::kernel(kernel.as_deref()),
        ),
    ] {
        if let Some(values) = f.0.get_mut(&dim) {
            let flag = format!("{side}{}", dim.flag());
            let mut out = Vec::new();
            for v in values.iter() {
                out.extend(resolver.resolve(&flag, v)?);
            }
            *values = out;
        }
    }
    Ok(f)
}

fn names(dims: &[Dim]) -> String {
    if dims.is_empty() {
        return "-".into();
    }
    dims.iter().map(|d| d.flag()).collect::<Vec<_>>().join(", ")
}

fn num(v: f64) -> String {
    if v.is_infinite() {
        "inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// One table row: what it is about, the metric, A, B, delta, relative change, mark.
fn finding_row(about: String, f: &compare::Finding, mark: &str) -> [String; 7] {
    [
        about,
        f.metric.to_string(),
        num(f.a),
        num(f.b),
        num(f.delta),
        rel(f),
        mark.to_string(),
    ]
}

fn rel(f: &compare::Finding) -> String {
    if f.rel.is_infinite() {
        "inf".into()
    } else {
        format!("{:.1}%", f.rel * 100.0)
    }
}

/// Whether a phase row is shown under `--steps-only`, `--phase` and `--phase-threshold`.
fn phase_row_shown(f: &compare::PhaseFinding, a: &CompareArgs) -> bool {
    if a.steps_only && f.step_index == 0 {
        return false;
    }
    if a.phase.is_some_and(|n| n != f.step_index) {
        return false;
    }
    let pct = a.phase_threshold.unwrap_or(0.0);
    f.finding.delta.abs() / f.finding.a.abs().max(1.0) >= pct / 100.0
}

/// One table per pair with phases on both sides: phase, metric, A, B, delta, rel, mark.
fn phase_tables(c: &Comparison, a: &CompareArgs) -> String {
    let mut out = String::new();
    let mut recorded = false;
    for pair in &c.pairs {
        recorded |= !pair.phases.is_empty();
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_header(["phase", "metric", "A", "B", "delta", "rel", ""]);
        for p in pair.phases.iter().filter(|p| phase_row_shown(p, a)) {
            let f = &p.finding;
            let mark = if f.regression {
                "REGRESSION"
            } else if f.improvement {
                "improvement"
            } else {
                ""
            };
            t.add_row(finding_row(
                format!("{} {}", p.step_index, p.label),
                f,
                mark,
            ));
        }
        if t.row_count() > 0 {
            out.push_str(&format!("\nphases of {}:\n{t}\n", pair.a.key));
        }
    }
    if !recorded {
        out.push_str("\nper-phase tables: no phase was recorded on both sides of any pair\n");
    } else if out.is_empty() {
        out.push_str("\nper-phase tables: every phase row is filtered out (--steps-only, --phase, --phase-threshold)\n");
    }
    out
}

/// The report: header, scalar findings, phases, host delta, excluded and unpaired, footer.
fn render(c: &Comparison, a: &CompareArgs) -> String {
    let mut out = format!(
        "A: {}\nB: {}\nslicing: {}\npairing: test, scenario{}{}\n",
        c.filters.0,
        c.filters.1,
        names(&c.slicing),
        if c.pairing.is_empty() { "" } else { ", " },
        names(&c.pairing),
    );
    let (mut regressions, mut improvements) = (0, 0);
    if !a.phases_only {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_header(["pair", "metric", "A", "B", "delta", "rel", ""]);
        for pair in &c.pairs {
            for f in &pair.findings {
                let mark = if f.regression {
                    regressions += 1;
                    "REGRESSION"
                } else if f.improvement {
                    improvements += 1;
                    "improvement"
                } else {
                    ""
                };
                t.add_row(finding_row(pair.a.key.clone(), f, mark));
            }
        }
        if t.row_count() == 0 {
            out.push_str("\nno metric was recorded on both sides of any pair\n");
        } else {
            out.push_str(&format!("\n{t}\n"));
        }
    }
    if !a.no_phases {
        out.push_str(&phase_tables(c, a));
    }
    let host = |i: usize| {
        c.pairs.iter().find_map(|p| {
            if i == 0 {
                p.a.host.clone()
            } else {
                p.b.host.clone()
            }
        })
    };
    match (host(0), host(1)) {
        (Some(ha), Some(hb)) => {
            let diff = compare::host_diff(&ha, &hb);
            if diff.is_empty() {
                out.push_str("\nhost: the same on both sides\n");
            } else {
                let mut t = Table::new();
                t.load_preset(UTF8_FULL_CONDENSED)
                    .set_header(["host field", "A", "B"]);
                for (k, va, vb) in diff {
                    t.add_row([k, va, vb]);
                }
                out.push_str(&format!("\nhost delta:\n{t}\n"));
            }
        }
        _ => out.push_str("\nhost: not recorded on both sides\n"),
    }
    if !c.excluded.is_empty() {
        out.push_str("\nexcluded pairs:\n");
        for (k, why) in &c.excluded {
            out.push_str(&format!("  {k}: {why}\n"));
        }
    }
    for (side, keys) in [("A", &c.unpaired.0), ("B", &c.unpaired.1)] {
        if !keys.is_empty() {
            out.push_str(&format!("\nonly in {side}:\n"));
            for k in keys {
                out.push_str(&format!("  {k}\n"));
            }
        }
    }
    if !a.phases_only {
        out.push_str(&format!(
            "\n{} pairs compared: {regressions} regressions, {improvements} improvements; {} excluded, {} unpaired\n",
            c.pairs.len(),
            c.excluded.len(),
            c.unpaired.0.len() + c.unpaired.1.len()
        ));
    }
    out
}
