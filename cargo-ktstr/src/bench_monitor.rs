//! `cargo ktstr bench --monitor-overhead`: what the host-side monitor costs the guest. The
//! same VM runs the same CPU-bound guest workload with the monitor off and on, alternating
//! which goes first in each round so a drifting host does not favour one side, and the table
//! gives the guest's throughput both ways, their difference and the run-to-run spread.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use ktstr::guest::shell::ShellRequest;
use ktstr::shm::FrameType;
use ktstr::vm::{self, BackendKind, VmEnd};
use ktstr::Topology;

use crate::shell::BusyboxVm;

/// One loop per vCPU, all builtins of busybox ash (no fork per iteration, so the count is
/// CPU throughput, not fork cost): each does blocks of 100 increments until `secs` of the
/// guest's uptime (read in centiseconds, so every loop gets the same window) have passed; the
/// sum of the increments is printed as `ITER n`.
fn guest_workload(secs: u32) -> String {
    // `${f#0}`: ash reads "08" as a bad octal number.
    let now = "read -r u _ < /proc/uptime; f=${u#*.}; t=$(( ${u%.*} * 100 + ${f#0} ))";
    format!(
        "n=$(nproc); i=0; while [ $i -lt $n ]; do ( {now}; e=$(( t + {cs} )); c=0; \
         while {now}; [ $t -lt $e ]; do j=0; while [ $j -lt 100 ]; do j=$((j+1)); done; \
         c=$((c+j)); done; echo $c > /tmp/iter.$i ) & i=$((i+1)); done; wait; s=0; \
         for f in /tmp/iter.*; do read -r v < $f; s=$((s+v)); done; echo ITER $s",
        cs = secs * 100
    )
}

/// The `ITER n` line of the guest's stdout.
fn parse_iterations(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("ITER ")?.trim().parse().ok())
}

/// One run's figures.
struct Run {
    /// The guest's loop iterations, all vCPUs together.
    iterations: u64,
    /// Monitor samples taken (0 with the monitor off).
    samples: usize,
    /// Host CPU time of the monitor's thread, in µs.
    monitor_cpu_us: u64,
    /// How long the monitor ran, in ms.
    monitor_ran_ms: u64,
}

/// Boots one VM running the workload, with or without the monitor.
fn one_run(
    kernel: Option<&str>,
    backend: BackendKind,
    topo: Topology,
    secs: u32,
    monitor: Option<Duration>,
    timeout: Duration,
) -> Result<Run> {
    let req = ShellRequest {
        exec: Some(guest_workload(secs)),
        report_topology: false,
    };
    let mut vmb = BusyboxVm::prepare(kernel, backend, topo, &[], None, &req, &[])?;
    vmb.spec.timeout = timeout;
    if let Some(period) = monitor {
        let spec = ktstr::monitor::spec_for(&vmb.kernel, period).map_err(anyhow::Error::msg)?;
        vmb.spec.monitor = Some(spec);
    }
    let out = vm::run(backend, vmb.spec).context("running the VM")?;
    if out.end != (VmEnd::GuestExit { status: 0 }) {
        bail!("the guest did not finish: {}", out.end.describe());
    }
    let stdout: String = out
        .frames
        .iter()
        .filter(|f| f.kind == FrameType::Stdout)
        .map(|f| f.text())
        .collect();
    let iterations = parse_iterations(&stdout)
        .with_context(|| format!("the guest printed no ITER line: {stdout:?}"))?;
    let rec = out.monitor.unwrap_or_default();
    if monitor.is_some() && rec.samples.is_empty() {
        bail!(
            "the monitor took no sample: {}",
            rec.unavailable.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(Run {
        iterations,
        samples: rec.samples.len(),
        monitor_cpu_us: rec.cpu_us.unwrap_or(0),
        monitor_ran_ms: rec.ran_ms,
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Sample standard deviation as a percentage of the mean.
fn cv_pct(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64;
    100.0 * var.sqrt() / m
}

/// Runs `rounds` rounds (one VM without and one with the monitor each) per backend and vCPU
/// count and prints the figures. `period`: the monitor's (default: as tests sample).
pub fn run(
    kernel: Option<&str>,
    backends: &[BackendKind],
    cpus: &[u32],
    rounds: usize,
    secs: u32,
    period: Option<Duration>,
    timeout: Duration,
) -> Result<()> {
    println!(
        "{:<8} {:>5} {:>6} {:>14} {:>14} {:>8} {:>7} {:>7} {:>9} {:>12}",
        "backend",
        "vcpus",
        "rounds",
        "iter_off",
        "iter_on",
        "delta_%",
        "cv_off%",
        "cv_on%",
        "period_ms",
        "monitor_cpu%"
    );
    for &backend in backends {
        let period = period.unwrap_or_else(|| {
            let scale = vm::launch::time_scale(backend, &vm::backend::HostVirt::probe());
            ktstr::monitor::period_for(scale)
        });
        for &n in cpus {
            let topo = Topology::new(1, 1, n, 1).context("vCPU count")?;
            let (mut off, mut on) = (Vec::new(), Vec::new());
            let (mut cpu_us, mut ran_ms, mut samples) = (0u64, 0u64, 0usize);
            for r in 0..rounds.max(1) {
                let order = if r % 2 == 0 {
                    [false, true]
                } else {
                    [true, false]
                };
                for monitor in order {
                    let asked = monitor.then_some(period);
                    let run = one_run(kernel, backend, topo, secs, asked, timeout).with_context(
                        || {
                            format!(
                                "{backend} {n} vCPUs, monitor {}",
                                if monitor { "on" } else { "off" }
                            )
                        },
                    )?;
                    eprintln!(
                        "ktstr: bench: {backend} {n} vCPUs round {} monitor {}: {} iterations{}",
                        r + 1,
                        if monitor { "on " } else { "off" },
                        run.iterations,
                        if monitor {
                            format!(", {} samples", run.samples)
                        } else {
                            String::new()
                        }
                    );
                    if monitor {
                        on.push(run.iterations as f64);
                        cpu_us += run.monitor_cpu_us;
                        ran_ms += run.monitor_ran_ms;
                        samples += run.samples;
                    } else {
                        off.push(run.iterations as f64);
                    }
                }
            }
            let period_ms = ran_ms as f64 / samples.max(1) as f64;
            println!(
                "{:<8} {:>5} {:>6} {:>14.0} {:>14.0} {:>+8.2} {:>7.2} {:>7.2} {:>9.0} {:>12.3}",
                backend.to_string(),
                n,
                off.len(),
                mean(&off),
                mean(&on),
                100.0 * (mean(&on) - mean(&off)) / mean(&off),
                cv_pct(&off),
                cv_pct(&on),
                period_ms,
                100.0 * (cpu_us as f64 / 1e3) / (ran_ms.max(1) as f64)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_iteration_line_is_found_among_other_output() {
        assert_eq!(parse_iterations("boot noise\nITER 12345\n"), Some(12345));
        assert_eq!(parse_iterations("ITER x\n"), None);
        assert_eq!(parse_iterations(""), None);
    }

    #[test]
    fn the_workload_runs_for_the_asked_seconds() {
        let w = guest_workload(7);
        assert!(w.contains("e=$(( t + 700 ))"), "{w}");
        assert!(w.ends_with("echo ITER $s"), "{w}");
    }

    #[test]
    fn spread_is_a_percentage_of_the_mean() {
        assert_eq!(cv_pct(&[5.0]), 0.0);
        let c = cv_pct(&[90.0, 110.0]);
        assert!((c - 14.142).abs() < 0.01, "{c}");
        assert_eq!(mean(&[1.0, 3.0]), 2.0);
    }
}
