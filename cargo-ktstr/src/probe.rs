//! `cargo ktstr probe`: boot a VM of a topology and print what the guest sees, per vCPU.
//! Exits 0 only when that matches the request.
//!
//! On the KVM backend it boots the probe guest (a few hundred bytes of 64-bit code that starts
//! every AP with INIT/SIPI and reports APIC ids and CPUID topology leaves); it runs on any
//! KVM, emulated or not. On qemu it boots Linux and reads the topology from sysfs.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ktstr::guest::shell::ShellRequest;
use ktstr::guest::topo::SysTopology;
use ktstr::shm::FrameType;
use ktstr::vm::{self, BackendChoice, BackendKind, VmEnd};
use ktstr::Topology;

use crate::shell::{choose_backend, failure_message, BusyboxVm};

/// Flags of `cargo ktstr probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// kvm (probe guest on /dev/kvm), qemu (Linux under qemu, reads sysfs), or auto.
    #[arg(long, value_parser = crate::shell::parse_backend)]
    backend: Option<BackendChoice>,
    /// NUMA_NODES,LLCS,CORES,THREADS.
    #[arg(long, default_value = "1,1,1,1", value_parser = crate::shell::parse_topology)]
    topology: Topology,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Kernel for the qemu backend (default: KTSTR_KERNEL).
    #[arg(long)]
    kernel: Option<String>,
}

/// Runs the probe; exit code 0 when the guest's view matches the topology.
pub fn run(a: ProbeArgs) -> Result<ExitCode> {
    let backend = match a.backend {
        // The probe guest runs on any KVM, so auto prefers KVM whenever /dev/kvm opens.
        None | Some(BackendChoice::Auto) => {
            if vm::backend::HostVirt::probe().kvm_usable {
                BackendKind::Kvm
            } else {
                BackendKind::Qemu
            }
        }
        Some(c) => choose_backend(Some(c))?,
    };
    let mismatches = match backend {
        BackendKind::Kvm => {
            let r = ktstr::vm::kvm::probe::run_probe(&a.topology, Duration::from_secs(60))
                .context("running the probe guest")?;
            let m = r.check(&a.topology);
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"backend": "kvm", "topology": a.topology.label(), "report": r, "mismatches": m})
                );
            } else {
                print!("{}", r.render_table());
            }
            m
        }
        BackendKind::Qemu => {
            let req = ShellRequest {
                exec: None,
                report_topology: true,
            };
            let mut vmb = BusyboxVm::prepare(
                a.kernel.as_deref(),
                backend,
                a.topology,
                &[],
                None,
                &req,
                &[],
            )?;
            vmb.spec.timeout = Duration::from_secs(300);
            let out = vm::run(backend, vmb.spec).context("running the VM")?;
            let Some(f) = out.frames.iter().find(|f| f.kind == FrameType::Result) else {
                bail!(failure_message(
                    backend,
                    &ktstr::vm::backend::HostVirt::probe(),
                    &out
                ));
            };
            if !matches!(out.end, VmEnd::GuestExit { status: 0 }) {
                bail!(failure_message(
                    backend,
                    &ktstr::vm::backend::HostVirt::probe(),
                    &out
                ));
            }
            let view: SysTopology =
                serde_json::from_slice(&f.payload).context("parsing the guest's topology view")?;
            let m = view.mismatches(&a.topology);
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"backend": "qemu", "topology": a.topology.label(), "view": view, "mismatches": m})
                );
            } else {
                let mut t = comfy_table::Table::new();
                t.load_preset(comfy_table::presets::NOTHING)
                    .set_header(["cpu", "package", "core_id", "siblings", "llc"]);
                for c in &view.cpus {
                    t.add_row([
                        c.cpu.to_string(),
                        c.package.to_string(),
                        c.core_id.to_string(),
                        ktstr::cgroup::cpulist(&c.siblings),
                        ktstr::cgroup::cpulist(&c.llc),
                    ]);
                }
                println!("{t}");
                for (n, cpus) in &view.nodes {
                    println!("node{n}: {}", ktstr::cgroup::cpulist(cpus));
                }
            }
            m
        }
    };
    if mismatches.is_empty() {
        eprintln!(
            "ktstr: probe on {backend}: the guest sees {} exactly",
            a.topology
        );
        Ok(ExitCode::SUCCESS)
    } else {
        for m in &mismatches {
            eprintln!("mismatch: {m}");
        }
        Ok(ExitCode::from(1))
    }
}
