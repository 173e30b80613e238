//! `cargo ktstr verifier`: BPF verifier statistics for every declared scheduler.
//!
//! For each `declare_scheduler!` found in the workspace's ktstr test binaries (they print their
//! declarations with the hidden `--ktstr-list-schedulers` argument), each kernel and each flag
//! profile (library spec §5.3), the scheduler's BPF programs are loaded inside a VM and the
//! kernel's verified-instruction count of every program is reported as a table (programs ×
//! profiles), or with `--raw` the verifier's own log.
//!
//! How the counts are obtained: by default the guest starts `BINARY <profile args>` as a test
//! would, waits until sched_ext reports it enabled, and reads every loaded program's
//! `bpf_prog_info.verified_insns` from the kernel (`cargo-ktstr ktstr bpf-progs`, run by the
//! guest script), so any scheduler works. A scheduler that never attaches fails its profile
//! with its own output. With `--verify-only` (implied by `--raw`) the scheduler's own option of
//! that name is used instead: load (and so verify) every program without attaching and print
//! one `NAME: verified prog="P" insns=N` line per program, with `--verify-log` the verifier
//! logs on stdout (examples/scx-demo implements both).
//!
//! Deviations from cli.md §2.14, chosen for what runs here: the command boots the VMs itself
//! instead of spawning `cargo nextest run -E 'test(/^verifier/)'`; it boots one VM per scheduler
//! × kernel on the scheduler's declared topology and runs every profile in it, rather than one
//! per gauntlet topology preset (the verifier's work does not depend on the CPU topology); the
//! counts come from the loader's report, not from reading guest memory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::shell::BusyboxVm;
use anyhow::{bail, Context, Result};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, Table};
use ktstr::guest::shell::ShellRequest;
use ktstr::shm::FrameType;
use ktstr::vm::{self, ConsoleMode, VmEnd};
use ktstr::Topology;
use serde_json::Value;

/// Flags of `cargo ktstr verifier`.
#[derive(Debug, clap::Args)]
pub struct VerifierArgs {
    /// Kernel spec (repeatable); replaces each scheduler's declared `kernels`. Default: the
    /// declared kernels, else KTSTR_KERNEL / the default kernel.
    #[arg(long = "kernel", value_name = "SPEC")]
    kernels: Vec<String>,
    /// Print the raw verifier output of every program, no table (implies --verify-only).
    #[arg(long)]
    raw: bool,
    /// Run the scheduler with its own `--verify-only` option instead of attaching it and
    /// reading the kernel's counts (for schedulers that implement that option).
    #[arg(long)]
    verify_only: bool,
    /// Only these schedulers (by declared name; repeatable).
    #[arg(long = "scheduler", value_name = "NAME")]
    schedulers: Vec<String>,
    /// Only these flag profiles (`scx-demo+llc`, or `llc` / `llc+steal` / `base`; repeatable).
    #[arg(long = "profile", value_name = "LABEL")]
    profiles: Vec<String>,
    /// Build and scan only these packages' test binaries (default: the whole workspace).
    #[arg(short = 'p', long = "package", value_name = "PKG")]
    packages: Vec<String>,
    /// Scan these test binaries instead of building (repeatable).
    #[arg(long = "test-bin", value_name = "PATH")]
    test_bins: Vec<PathBuf>,
    /// VM backend: kvm, qemu, or auto (default: KTSTR_BACKEND, else auto).
    #[arg(long)]
    backend: Option<String>,
}

/// A declared flag: name, args, requires, excludes.
type FlagSpec = (String, Vec<String>, Vec<String>, Vec<String>);

/// A declared scheduler as a test binary describes it.
#[derive(Debug, Clone)]
struct Declared {
    name: String,
    binary: String,
    topology: Topology,
    flags: Vec<FlagSpec>,
    sched_args: Vec<String>,
    kernels: Vec<String>,
    /// The test binary that declared it (discovery starts from its directory).
    from: PathBuf,
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Parses `--ktstr-list-schedulers` output; schedulers without a userspace binary (EEVDF,
/// kernel built-ins) are dropped: there is nothing to verify.
fn parse_declared(json: &str, from: &Path) -> Result<Vec<Declared>> {
    let v: Value = serde_json::from_str(json).context("parsing --ktstr-list-schedulers")?;
    let mut out = Vec::new();
    for s in v.as_array().into_iter().flatten() {
        let binary = match (s["binary"]["kind"].as_str(), s["binary"]["value"].as_str()) {
            (Some("discover" | "path"), Some(b)) => b.to_string(),
            _ => continue,
        };
        let t = &s["topology"];
        let n = |k: &str| t[k].as_u64().unwrap_or(1) as u32;
        let flags = s["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| {
                (
                    f["name"].as_str().unwrap_or_default().to_string(),
                    strings(&f["args"]),
                    strings(&f["requires"]),
                    strings(&f["excludes"]),
                )
            })
            .collect();
        out.push(Declared {
            name: s["name"].as_str().unwrap_or_default().to_string(),
            binary,
            topology: Topology::new(n("numa_nodes"), n("llcs"), n("cores"), n("threads"))
                .context("declared topology")?,
            flags,
            sched_args: strings(&s["sched_args"]),
            kernels: strings(&s["kernels"]),
            from: from.to_path_buf(),
        });
    }
    Ok(out)
}

/// Flag profiles (library spec §5.3): every subset closed under `requires` with no `excludes`
/// conflict, in mask order; `(label, argv)`.
fn profiles(d: &Declared) -> Vec<(String, Vec<String>)> {
    let n = d.flags.len().min(31);
    let idx = |name: &str| d.flags.iter().position(|f| f.0 == name);
    let mut out = Vec::new();
    for mask in 0u32..(1 << n) {
        let on = |i: usize| mask & (1 << i) != 0;
        let ok = (0..n).filter(|&i| on(i)).all(|i| {
            d.flags[i].2.iter().all(|r| idx(r).is_some_and(on))
                && !d.flags[i].3.iter().any(|e| idx(e).is_some_and(on))
        });
        if !ok {
            continue;
        }
        let mut label = d.name.clone();
        let mut argv = d.sched_args.clone();
        for i in (0..n).filter(|&i| on(i)) {
            label.push('+');
            label.push_str(&d.flags[i].0);
            argv.extend(d.flags[i].1.iter().cloned());
        }
        out.push((label, argv));
    }
    out
}

/// Whether `label` is selected by the `--profile` filters.
fn profile_selected(filters: &[String], sched: &str, label: &str) -> bool {
    if filters.is_empty() {
        return true;
    }
    let short = label
        .strip_prefix(sched)
        .map(|r| r.trim_start_matches('+'))
        .unwrap_or(label);
    filters
        .iter()
        .any(|f| f == label || f == short || (f == "base" && short.is_empty()))
}

/// Test binaries of the workspace (or `-p` packages), built with `cargo test --no-run`.
fn build_test_bins(packages: &[String]) -> Result<Vec<PathBuf>> {
    let mut cmd = crate::run_tests::cargo();
    cmd.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    if packages.is_empty() {
        cmd.arg("--workspace");
    }
    for p in packages {
        cmd.args(["-p", p]);
    }
    eprintln!("ktstr: building test binaries: {cmd:?}");
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed ({})", out.status);
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["profile"]["test"] == true {
            if let Some(exe) = v["executable"].as_str() {
                bins.push(PathBuf::from(exe));
            }
        }
    }
    Ok(bins)
}

/// Keeps one declaration per scheduler name: the one with the most flags (so every profile a
/// test binary can run is verified; several test binaries often declare the same scheduler,
/// some with only the flags they use), the first on a tie.
fn keep_declared(seen: &mut BTreeMap<String, Declared>, d: Declared) {
    match seen.get(&d.name) {
        Some(old) if old.flags.len() >= d.flags.len() => {}
        _ => {
            seen.insert(d.name.clone(), d);
        }
    }
}

/// Every declared scheduler across `bins`, one per name (see [`keep_declared`]).
fn collect_declared(bins: &[PathBuf]) -> Vec<Declared> {
    let mut seen = BTreeMap::new();
    for b in bins {
        // Binaries that are not ktstr test binaries reject the argument: skip them.
        let Ok(out) = Command::new(b)
            .arg("--ktstr-list-schedulers")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
        else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        match parse_declared(&String::from_utf8_lossy(&out.stdout), b) {
            Ok(ds) => {
                for d in ds {
                    keep_declared(&mut seen, d);
                }
            }
            Err(e) => eprintln!("ktstr: {}: {e:#}", b.display()),
        }
    }
    seen.into_values().collect()
}

/// What one profile's run in the guest produced.
#[derive(Debug, Default)]
struct ProfileRun {
    counts: Vec<(String, u64)>,
    raw: String,
    rc: Option<i32>,
    errors: Vec<String>,
}

/// Marker lines the guest script prints around each profile.
const MARK: &str = "@@ktstr-verifier";

/// How long the guest waits for a scheduler to attach, in 100 ms steps.
const ATTACH_STEPS: u32 = 600;

/// The guest script: each profile's run between marker lines. Attach mode (default): start
/// the scheduler, wait for sched_ext to report it enabled, print the kernel's counts, stop it.
/// `verify_only`: the scheduler's `--verify-only` run (and `--verify-log` for `raw`).
fn guest_script(
    bin: &str,
    profiles: &[(String, Vec<String>)],
    verify_only: bool,
    raw: bool,
) -> String {
    let q = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut script = String::new();
    for (label, argv) in profiles {
        let args: Vec<String> = argv.iter().map(|a| q(a)).collect();
        let args = args.join(" ");
        if verify_only {
            script.push_str(&format!(
                "echo '{MARK} begin {label}'; /bin/{bin} {args} --verify-only{} 2>&1; echo \"{MARK} rc $?\"; ",
                if raw { " --verify-log" } else { "" }
            ));
        } else {
            script.push_str(&format!(
                "echo '{MARK} begin {label}'; /bin/{bin} {args} >/tmp/sched.log 2>&1 & P=$!; i=0; \
                 while [ $i -lt {ATTACH_STEPS} ]; do s=$(cat /sys/kernel/sched_ext/state 2>/dev/null); \
                 [ \"$s\" = enabled ] && break; kill -0 $P 2>/dev/null || break; sleep 0.1; i=$((i+1)); done; \
                 if [ \"$s\" = enabled ]; then /init ktstr bpf-progs; rc=$?; kill -INT $P; wait $P; \
                 else echo '{MARK} not attached'; kill -KILL $P 2>/dev/null; wait $P; rc=$?; [ $rc = 0 ] && rc=1; cat /tmp/sched.log; fi; \
                 echo \"{MARK} rc $rc\"; "
            ));
        }
    }
    script
}

/// `cargo ktstr bpf-progs` (run in the guest by the attach-mode script).
pub fn print_loaded_programs() -> Result<ExitCode> {
    let progs = ktstr::bpf_progs::loaded_programs().context("listing BPF programs")?;
    let mut o = std::io::stdout().lock();
    for p in progs {
        writeln!(
            o,
            "bpf: verified prog=\"{}\" insns={} type={} id={}",
            p.name, p.verified_insns, p.prog_type, p.id
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Splits the guest's output into per-profile results.
fn parse_output(text: &str) -> BTreeMap<String, ProfileRun> {
    let mut out: BTreeMap<String, ProfileRun> = BTreeMap::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        if let Some(label) = line.strip_prefix(&format!("{MARK} begin ")) {
            cur = Some(label.to_string());
            out.entry(label.to_string()).or_default();
            continue;
        }
        let Some(run) = cur.as_ref().and_then(|c| out.get_mut(c)) else {
            continue;
        };
        if let Some(rc) = line.strip_prefix(&format!("{MARK} rc ")) {
            run.rc = rc.trim().parse().ok();
            cur = None;
        } else if let Some(i) = line.find(": verified ") {
            let kv = ktstr::runner::parse_kv(&line[i + ": verified ".len()..]);
            let get = |k: &str| kv.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
            if let (Some(p), Some(n)) = (get("prog"), get("insns").and_then(|n| n.parse().ok())) {
                run.counts.push((p, n));
            }
        } else if line.contains("load-failed")
            || line.contains("verify-failed")
            || line == format!("{MARK} not attached")
        {
            run.errors.push(line.to_string());
        } else if !line.starts_with("scx_") || !line.contains(": ") {
            run.raw.push_str(line);
            run.raw.push('\n');
        }
    }
    out
}

fn render_table(
    sched: &str,
    kernel: &str,
    runs: &BTreeMap<String, ProfileRun>,
    order: &[String],
) -> String {
    let mut progs: Vec<String> = Vec::new();
    for label in order {
        for (p, _) in runs
            .get(label)
            .map(|r| r.counts.as_slice())
            .unwrap_or_default()
        {
            if !progs.contains(p) {
                progs.push(p.clone());
            }
        }
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec![Cell::new("program")];
    header.extend(order.iter().map(Cell::new));
    t.set_header(header);
    let cell = |n: Option<u64>| {
        Cell::new(n.map_or("-".into(), |n| n.to_string())).set_alignment(CellAlignment::Right)
    };
    for p in &progs {
        let mut row = vec![Cell::new(p)];
        for label in order {
            let n = runs
                .get(label)
                .and_then(|r| r.counts.iter().find(|(q, _)| q == p))
                .map(|(_, n)| *n);
            row.push(cell(n));
        }
        t.add_row(row);
    }
    let mut total = vec![Cell::new("total")];
    for label in order {
        let s = runs
            .get(label)
            .map(|r| r.counts.iter().map(|(_, n)| n).sum::<u64>());
        total.push(cell(s.filter(|s| *s > 0)));
    }
    t.add_row(total);
    format!("scheduler {sched}, kernel {kernel}\n{t}\n")
}

/// Boots one VM running every selected profile of `d`; returns the guest's output text.
fn run_vm(
    d: &Declared,
    sched_bin: &Path,
    kernel_spec: Option<&str>,
    profiles: &[(String, Vec<String>)],
    a: &VerifierArgs,
) -> Result<String> {
    let choice = match &a.backend {
        Some(b) => Some(
            b.parse()
                .map_err(|e: vm::BackendSelectError| anyhow::anyhow!("{e}"))?,
        ),
        None => None,
    };
    let backend = ktstr::vm::launch::choose_backend(choice)
        .context("reading KTSTR_BACKEND")?
        .kind;
    let bin_name = sched_bin
        .file_name()
        .context("scheduler binary has no file name")?
        .to_string_lossy()
        .into_owned();
    let req = ShellRequest {
        exec: Some(guest_script(
            &bin_name,
            profiles,
            a.verify_only || a.raw,
            a.raw,
        )),
        report_topology: false,
    };
    let mut vmb = BusyboxVm::prepare(
        kernel_spec,
        backend,
        d.topology,
        &[],
        None,
        &req,
        &[sched_bin.to_path_buf()],
    )?;
    vmb.spec.console = ConsoleMode::Capture;
    vmb.spec.timeout = Duration::from_secs(120 + 60 * profiles.len() as u64);
    vmb.spec.cancel = Arc::new(AtomicBool::new(false));
    let out = vm::run(backend, vmb.spec).context("running the VM")?;
    let text: String = out
        .frames
        .iter()
        .filter(|f| matches!(f.kind, FrameType::Stdout | FrameType::Stderr))
        .map(|f| f.text())
        .collect();
    if !matches!(out.end, VmEnd::GuestExit { .. }) {
        bail!(
            "the VM did not finish: {}\n--- console tail ---\n{}",
            out.end.describe(),
            out.console_lines(30)
        );
    }
    Ok(text)
}

/// Runs `cargo ktstr verifier`.
pub fn run(a: VerifierArgs) -> Result<ExitCode> {
    let bins = if a.test_bins.is_empty() {
        build_test_bins(&a.packages)?
    } else {
        a.test_bins.clone()
    };
    let mut declared = collect_declared(&bins);
    if !a.schedulers.is_empty() {
        declared.retain(|d| a.schedulers.contains(&d.name));
    }
    if declared.is_empty() {
        bail!(
            "no declared sched_ext schedulers found in {} test binaries (declare_scheduler! with a binary)",
            bins.len()
        );
    }
    let mut failed = false;
    let stdout = std::io::stdout();
    for d in &declared {
        let Some(sched_bin) = scheduler_binary(d, &declared, &a, &mut failed) else {
            continue;
        };
        let profs: Vec<_> = profiles(d)
            .into_iter()
            .filter(|(l, _)| profile_selected(&a.profiles, &d.name, l))
            .collect();
        if profs.is_empty() {
            continue;
        }
        for k in &kernels_for(d, &a)? {
            let kname = k.clone().unwrap_or_else(|| "default".into());
            eprintln!(
                "ktstr: verifying {} ({}) on kernel {kname}: {} profile(s), topology {}",
                d.name,
                sched_bin.display(),
                profs.len(),
                d.topology
            );
            let text = match run_vm(d, &sched_bin, k.as_deref(), &profs, &a) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("ktstr: scheduler {} on kernel {kname}: {e:#}", d.name);
                    failed = true;
                    continue;
                }
            };
            let runs = parse_output(&text);
            let order: Vec<String> = profs.iter().map(|(l, _)| l.clone()).collect();
            failed |= report_failed_profiles(&a, &runs, &order);
            let mut o = stdout.lock();
            if a.raw {
                for label in &order {
                    let raw = runs.get(label).map(|r| r.raw.as_str()).unwrap_or("");
                    let _ = writeln!(o, "=== {label} (kernel {kname}) ===\n{raw}");
                }
            } else {
                let _ = write!(o, "{}", render_table(&d.name, &kname, &runs, &order));
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The binary of `d`, or `None` (reported, and a failure when asked for by name) if unbuilt.
fn scheduler_binary(
    d: &Declared,
    declared: &[Declared],
    a: &VerifierArgs,
    failed: &mut bool,
) -> Option<PathBuf> {
    // The scheduler binaries declared beside this one (KTSTR_SCHEDULER alone is refused
    // when there are several).
    let mut siblings: Vec<&str> = declared
        .iter()
        .filter(|o| o.from == d.from)
        .map(|o| o.binary.as_str())
        .collect();
    siblings.sort_unstable();
    siblings.dedup();
    match ktstr::runner::discover_scheduler_for(&d.binary, &d.from, &siblings) {
        Ok(p) => Some(p),
        // Scanning the workspace: an unbuilt scheduler is skipped with the build hint;
        // asked for by name, it is an error.
        Err(e) => {
            let asked = a.schedulers.contains(&d.name);
            eprintln!(
                "ktstr: {} scheduler {}: {e}",
                if asked { "error:" } else { "skipping" },
                d.name
            );
            *failed |= asked;
            None
        }
    }
}

/// The kernels to verify `d` on: `--kernel`, else its declared ones, else the default (`None`).
fn kernels_for(d: &Declared, a: &VerifierArgs) -> Result<Vec<Option<String>>> {
    let chosen = if a.kernels.is_empty() {
        &d.kernels
    } else {
        &a.kernels
    };
    Ok(if chosen.is_empty() {
        vec![None]
    } else {
        let cache = ktstr::kernel::cache::KernelCache::open_default();
        crate::kernel_spec::expand(chosen, &cache)?
            .into_iter()
            .map(Some)
            .collect()
    })
}

/// Reports every profile of `order` that failed or gave no counts; returns whether any did.
fn report_failed_profiles(
    a: &VerifierArgs,
    runs: &BTreeMap<String, ProfileRun>,
    order: &[String],
) -> bool {
    let mut failed = false;
    for label in order {
        match runs.get(label) {
            Some(r) if r.rc == Some(0) && !r.counts.is_empty() => {}
            Some(r) => {
                failed = true;
                let attached = !r.errors.iter().any(|e| e.ends_with("not attached"));
                let what = if a.verify_only || a.raw {
                    "verification failed (with --verify-only: does the scheduler have that option?)"
                } else if attached {
                    "no BPF programs were listed"
                } else {
                    "the scheduler did not attach (failed to load or verify)"
                };
                eprintln!(
                    "ktstr: {label}: {what} (exit {:?}){}{}",
                    r.rc,
                    r.errors
                        .iter()
                        .filter(|e| !e.ends_with("not attached"))
                        .map(|e| format!("\n  {e}"))
                        .collect::<String>(),
                    crate::verifier::tail(&r.raw, 15)
                );
            }
            None => {
                failed = true;
                eprintln!("ktstr: {label}: no output from the guest");
            }
        }
    }
    failed
}

/// The last `n` lines of `text`, indented, after a newline (empty for empty text).
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("\n  | {l}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Declared {
        let json = r#"[{"name":"scx-demo","binary":{"kind":"discover","value":"scx_demo"},
            "topology":{"numa_nodes":1,"llcs":2,"cores":2,"threads":1},
            "flags":[{"name":"llc","args":["--llc"],"requires":[],"excludes":[]},
                     {"name":"steal","args":["--steal"],"requires":["llc"],"excludes":[]},
                     {"name":"spread","args":["--spread"],"requires":[],"excludes":["steal"]}],
            "sched_args":["-v"],"kernels":[]},
            {"name":"eevdf","binary":{"kind":"eevdf"},"topology":{"numa_nodes":1,"llcs":1,"cores":2,"threads":1},"flags":[],"sched_args":[],"kernels":[]}]"#;
        let mut v = parse_declared(json, Path::new("/t/debug/deps/x")).unwrap();
        assert_eq!(v.len(), 1, "EEVDF has nothing to verify");
        v.remove(0)
    }

    #[test]
    fn the_declaration_with_the_most_flags_is_verified() {
        let mut seen = BTreeMap::new();
        let bare = Declared {
            flags: Vec::new(),
            ..demo()
        };
        keep_declared(&mut seen, bare.clone());
        keep_declared(&mut seen, demo());
        keep_declared(&mut seen, bare);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen["scx-demo"].flags.len(), demo().flags.len());
        assert!(!demo().flags.is_empty());
    }

    #[test]
    fn profiles_follow_requires_and_excludes() {
        let labels: Vec<String> = profiles(&demo()).into_iter().map(|p| p.0).collect();
        assert_eq!(
            labels,
            [
                "scx-demo",
                "scx-demo+llc",
                "scx-demo+llc+steal",
                "scx-demo+spread",
                "scx-demo+llc+spread"
            ]
        );
        let p = profiles(&demo());
        assert_eq!(p[2].1, ["-v", "--llc", "--steal"]);
        assert!(profile_selected(
            &["llc".into()],
            "scx-demo",
            "scx-demo+llc"
        ));
        assert!(profile_selected(&["base".into()], "scx-demo", "scx-demo"));
        assert!(!profile_selected(
            &["llc".into()],
            "scx-demo",
            "scx-demo+llc+steal"
        ));
    }

    #[test]
    fn guest_output_splits_per_profile() {
        let text = "@@ktstr-verifier begin a\nscx_demo: config cpus=4\n\
            scx_demo: verified prog=\"demo_enqueue\" insns=120\n\
            scx_demo: verified prog=\"demo_dispatch\" insns=300\n@@ktstr-verifier rc 0\n\
            @@ktstr-verifier begin a+b\n--- prog demo_enqueue ---\n0: r0 = 1\n\
            scx_demo: load-failed prog=\"demo_dispatch\" err=\"x\"\n@@ktstr-verifier rc 2\n";
        let r = parse_output(text);
        assert_eq!(
            r["a"].counts,
            [("demo_enqueue".into(), 120), ("demo_dispatch".into(), 300)]
        );
        assert_eq!(r["a"].rc, Some(0));
        assert_eq!(r["a+b"].rc, Some(2));
        assert_eq!(r["a+b"].errors.len(), 1);
        assert_eq!(r["a+b"].raw, "--- prog demo_enqueue ---\n0: r0 = 1\n");
        let t = render_table("s", "k", &r, &["a".into(), "a+b".into()]);
        assert!(
            t.contains("demo_dispatch") && t.contains("300") && t.contains("420"),
            "{t}"
        );
    }

    #[test]
    fn script_quotes_arguments() {
        let s = guest_script("scx_demo", &[("x".into(), vec!["it's".into()])], true, true);
        assert!(
            s.contains("/bin/scx_demo 'it'\\''s' --verify-only --verify-log 2>&1"),
            "{s}"
        );
    }

    #[test]
    fn attach_mode_waits_for_enabled_then_lists_the_kernels_counts() {
        let s = guest_script("scx_x", &[("x".into(), vec!["--a".into()])], false, false);
        assert!(
            s.contains("/bin/scx_x '--a' >/tmp/sched.log 2>&1 & P=$!"),
            "{s}"
        );
        assert!(s.contains("/sys/kernel/sched_ext/state"), "{s}");
        assert!(s.contains("/init ktstr bpf-progs"), "{s}");
        assert!(!s.contains("--verify-only"), "{s}");
        // A scheduler that never attached is a failure with its output.
        let text = "@@ktstr-verifier begin x\n@@ktstr-verifier not attached\n\
            scx_x: libbpf: prog 'x_enqueue': BPF program load failed\n@@ktstr-verifier rc 1\n\
            @@ktstr-verifier begin y\nbpf: verified prog=\"x_enqueue\" insns=77 type=27 id=9\n\
            @@ktstr-verifier rc 0\n";
        let r = parse_output(text);
        assert_eq!(r["x"].rc, Some(1));
        assert!(r["x"].counts.is_empty());
        assert_eq!(r["x"].errors.len(), 1);
        assert_eq!(r["y"].counts, [("x_enqueue".into(), 77)]);
    }
}
