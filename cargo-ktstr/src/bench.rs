//! `cargo ktstr bench`: medians of a VM's whole lifecycle (`--exec true`) split into phases,
//! per backend and vCPU count, on the same kernel and initramfs. Also the probe guest on KVM:
//! on ktstr's VMM and, booted as a multiboot image, under `qemu -accel kvm`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use ktstr::guest::shell::ShellRequest;
use ktstr::vm::kvm::probe::{measure_probe_on, ProbeHost};
use ktstr::vm::{self, BackendKind, PhaseTimes, VmEnd};
use ktstr::Topology;

use crate::shell::BusyboxVm;

/// Flags of `cargo ktstr bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Kernel (default: KTSTR_KERNEL).
    #[arg(long)]
    kernel: Option<String>,
    /// Boots per cell.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// vCPU counts to measure (each as one NUMA node, one LLC).
    #[arg(long, value_delimiter = ',', default_value = "2,16")]
    cpus: Vec<u32>,
    /// Backends to measure.
    #[arg(long, value_delimiter = ',', default_value = "kvm,qemu")]
    backends: Vec<String>,
    /// Watchdog per boot in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// Instead of boot phases, measure the host-side monitor's cost to the guest: a CPU-bound
    /// guest workload's throughput with the monitor off and on (`--runs` rounds of both).
    #[arg(long)]
    monitor_overhead: bool,
    /// Seconds the guest workload runs per boot (with `--monitor-overhead`).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=600))]
    work_s: u32,
    /// The monitor's sampling period in ms (with `--monitor-overhead`; default: 100 ms × the
    /// backend's time scale, as in tests). A short one exaggerates the cost to make it visible.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    monitor_period_ms: Option<u64>,
}

fn parse_backend(b: &str) -> Result<BackendKind> {
    match b {
        "kvm" => Ok(BackendKind::Kvm),
        "qemu" => Ok(BackendKind::Qemu),
        other => anyhow::bail!("unknown backend {other:?}: expected kvm or qemu"),
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

/// The backend as the table names it: `qemu-kvm` when `KTSTR_QEMU_ACCEL=kvm` puts qemu on KVM.
fn backend_label(backend: BackendKind) -> String {
    match backend {
        BackendKind::Qemu if std::env::var("KTSTR_QEMU_ACCEL").as_deref() == Ok("kvm") => {
            "qemu-kvm".into()
        }
        b => b.to_string(),
    }
}

/// `ok`, or how many of `runs` boots failed and the first failure's first line.
fn result_column(runs: usize, failures: &[String]) -> String {
    match failures.first() {
        None => "ok".into(),
        Some(first) => format!(
            "{} of {runs} failed: {}",
            failures.len(),
            first.lines().next().unwrap_or("")
        ),
    }
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort();
    Some(v[v.len() / 2])
}

/// `--monitor-overhead`: the monitor's cost instead of boot phases.
fn monitor_overhead(a: &BenchArgs) -> Result<ExitCode> {
    let backends = a
        .backends
        .iter()
        .map(|b| parse_backend(b))
        .collect::<Result<Vec<_>>>()?;
    crate::bench_monitor::run(
        a.kernel.as_deref(),
        &backends,
        &a.cpus,
        a.runs,
        a.work_s,
        a.monitor_period_ms.map(Duration::from_millis),
        Duration::from_secs(a.timeout_s),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the benchmark and prints one line per cell.
///
/// The lines are formatted by hand, not with comfy-table as elsewhere: each is printed as soon
/// as its cell finishes (a cell is several VM boots, a whole run takes minutes), and a table
/// crate lays a table out only once it has every row.
pub fn run(a: BenchArgs) -> Result<ExitCode> {
    if a.monitor_overhead {
        return monitor_overhead(&a);
    }
    println!(
        "{:<8} {:>5} {:>5} {:>9} {:>12} {:>12} {:>11} {:>9}  result",
        "backend",
        "vcpus",
        "runs",
        "setup_ms",
        "boot_init_ms",
        "init_exit_ms",
        "teardown_ms",
        "total_ms"
    );
    for b in &a.backends {
        let backend = parse_backend(b)?;
        for &n in &a.cpus {
            let topo = Topology::new(1, 1, n, 1).context("vCPU count")?;
            let req = ShellRequest {
                exec: Some("true".into()),
                report_topology: false,
            };
            let mut times: Vec<PhaseTimes> = Vec::new();
            // Every boot runs even after a failure: on a flaky host (the nested KVM lane) the
            // figures of the boots that worked still count, and the failure rate is a figure too.
            let mut failures: Vec<String> = Vec::new();
            for _ in 0..a.runs.max(1) {
                let mut vmb =
                    BusyboxVm::prepare(a.kernel.as_deref(), backend, topo, &[], None, &req, &[])?;
                vmb.spec.timeout = Duration::from_secs(a.timeout_s);
                match vm::run(backend, vmb.spec) {
                    Ok(out) if out.end == (VmEnd::GuestExit { status: 0 }) => times.push(out.times),
                    Ok(out) => failures.push(out.end.describe()),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            let result = result_column(a.runs.max(1), &failures);
            let col = |f: &dyn Fn(&PhaseTimes) -> Option<Duration>| {
                ms(median(times.iter().filter_map(f).collect()))
            };
            println!(
                "{:<8} {:>5} {:>5} {:>9} {:>12} {:>12} {:>11} {:>9}  {}",
                backend_label(backend),
                n,
                times.len(),
                col(&|t| Some(t.setup)),
                col(&|t| t.boot_to_init),
                col(&|t| t.init_to_exit),
                col(&|t| Some(t.teardown)),
                col(&|t| Some(t.total)),
                result
            );
        }
    }
    if vm::backend::HostVirt::probe().kvm_usable {
        // The same probe guest on ktstr's VMM and, as a multiboot image, under
        // `qemu -accel kvm` (firmware included); for the kvm,qemu backend list alike.
        let hosts: Vec<(&str, ProbeHost)> = a
            .backends
            .iter()
            .filter_map(|b| match b.as_str() {
                "kvm" => Some(("kvm", ProbeHost::Vmm)),
                "qemu" if vm::qemu::qemu_available() => Some(("qemu-kvm", ProbeHost::QemuKvm)),
                _ => None,
            })
            .collect();
        for &n in &a.cpus {
            let topo = Topology::new(1, 1, n, 1).context("vCPU count")?;
            for (name, host) in &hosts {
                let timeout = Duration::from_secs(a.timeout_s);
                match measure_probe_on(*host, &topo, a.runs.max(1), timeout) {
                    Ok(t) => println!(
                        "{:<8} {:>5} {:>5} {:>9} {:>12} {:>12} {:>11} {:>9}  probe guest",
                        name,
                        n,
                        t.runs,
                        ms(Some(t.setup)),
                        "-",
                        ms(Some(t.run)),
                        ms(Some(t.teardown)),
                        ms(Some(t.total))
                    ),
                    Err(e) => println!("{:<8} {:>5} probe guest failed: {e}", name, n),
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_column_counts_failures_and_keeps_the_first_line_of_the_first() {
        assert_eq!(result_column(3, &[]), "ok");
        let f = vec!["triple fault\nRIP=0".to_string(), "hang".to_string()];
        assert_eq!(result_column(5, &f), "2 of 5 failed: triple fault");
    }

    #[test]
    fn median_of_nothing_is_none_and_of_three_is_the_middle() {
        assert_eq!(median(vec![]), None);
        let d = |ms| Duration::from_millis(ms);
        assert_eq!(median(vec![d(30), d(10), d(20)]), Some(d(20)));
    }
}
