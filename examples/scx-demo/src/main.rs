//! `scx_demo`: an example sched_ext scheduler with fault-injection flags.
//!
//! It loads `src/bpf/scx_demo.bpf.c` (FIFO DSQs, global or per LLC), attaches
//! it as the system's sched_ext scheduler, prints `scx_demo: enabled`, and
//! waits until SIGINT/SIGTERM or until the kernel ejects it. It then prints
//! one `scx_demo: exit ...` line (see [`report`]) and exits with a code from
//! [`report::ExitCode`].
//!
//! The fault flags exist so a test harness can check that it notices each
//! kind of scheduler failure: stalls, BPF errors, unfairness, latency and
//! verifier rejections.

mod report;
mod topology;

use std::io::Write;
use std::mem::MaybeUninit;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{Link, OpenObject, PrintLevel};
use std::os::fd::AsFd;

use report::ExitCode;
use topology::LlcMap;

/// The generated libbpf-rs skeleton for `src/bpf/scx_demo.bpf.c`.
#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unused_imports,
    dead_code,
    missing_docs,
    unsafe_op_in_unsafe_fn
)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/scx_demo.skel.rs"));
}
use skel::*;

/// Must match `MAX_CPUS` in scx_demo.bpf.c (the length of `cpu_llc`).
const MAX_CPUS: usize = 1024;
/// Must match `MAX_LLCS` in scx_demo.bpf.c (DSQ ids 0..MAX_LLCS-1).
const MAX_LLCS: u32 = 64;
/// The kernel's upper bound for `sched_ext_ops.timeout_ms`.
const MAX_TIMEOUT_MS: u32 = 30_000;
/// How many verifier log lines to print when loading fails.
const VERIFIER_TAIL_LINES: usize = 25;
/// cgroup2 mount point, for relative `--degrade-cgroup` paths.
const CGROUP2_ROOT: &str = "/sys/fs/cgroup";

/// `enum scx_ops_flags`' SCX_OPS_ENQ_LAST.
const SCX_OPS_ENQ_LAST: u64 = 1 << 1;

/// Example sched_ext scheduler for ktstr, with fault-injection flags.
///
/// Status lines go to stderr: "scx_demo: enabled" once attached, and one
/// "scx_demo: exit kind=N kind_name=NAME code=N reason=\"..\" msg=\"..\"" line
/// at the end. Exit codes: 0 clean unregister (SIGINT/SIGTERM), 1 error exit
/// (kind >= 1024: BPF error, stall), 2 BPF load/verifier failure, 3 other
/// setup failure (e.g. attach), 64 bad command line.
#[derive(Debug, Parser)]
#[command(name = "scx_demo", version, about, long_about)]
pub struct Args {
    /// Use one DSQ per last-level cache (read from sysfs) instead of one global DSQ.
    #[arg(long)]
    pub llc: bool,

    /// Let CPUs with an empty LLC queue take tasks from other LLCs' queues.
    #[arg(long, requires = "llc")]
    pub steal: bool,

    /// Time slice in microseconds.
    #[arg(long, value_name = "US", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub slice_us: u64,

    /// sched_ext watchdog timeout: a task runnable this long without running
    /// gets the scheduler ejected (kernel maximum 30000).
    #[arg(long, value_name = "MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u32).range(1..=MAX_TIMEOUT_MS as i64))]
    pub timeout_ms: u32,

    /// FAULT: after SECS seconds, stop running one victim task (the first
    /// user task enqueued after the deadline, or --stall-pid), so the watchdog
    /// ejects the scheduler with a "runnable task stall" error.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, group = "stall_start")]
    pub stall_after: Option<Duration>,

    /// FAULT: like --stall-after, but the stall starts when a host writes a
    /// non-zero u32 at offset 0 of this scheduler's ".data.trig" map (ktstr's
    /// `bpf_map_write`), not after a time.
    #[arg(long, group = "stall_start")]
    pub stall_on_trigger: bool,

    /// Stall the tasks of this process (tgid) instead of the first one seen.
    #[arg(long, value_name = "TGID", requires = "stall_start",
          value_parser = clap::value_parser!(i32).range(1..))]
    pub stall_pid: Option<i32>,

    /// With --stall-after or --stall-on-trigger: stall this CPU instead of one task: it runs nothing
    /// (every task queued there is parked, kernel threads included) and
    /// wakeups are steered elsewhere, so it idles with runnable tasks.
    #[arg(
        long,
        value_name = "CPU",
        requires = "stall_start",
        conflicts_with = "stall_pid"
    )]
    pub stall_cpu: Option<u32>,

    /// FAULT: queue every task that may run on CPU (kernel threads too) in
    /// that CPU's local DSQ: one CPU runs them all while the others idle (an imbalance, and a
    /// deep local DSQ with enough tasks).
    #[arg(long, value_name = "CPU")]
    pub pile_cpu: Option<u32>,

    /// FAULT: after SECS seconds, fail with scx_bpf_error("scx_demo: injected crash ...").
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub crash_after: Option<Duration>,

    /// FAULT: shortchange one cgroup: its tasks get 1/10 of the slice and
    /// only every 8th dispatch (or an otherwise idle CPU). Unfair, but no
    /// stall. The cgroup is --degrade-cgroup, else the highest cgroup id seen.
    #[arg(long)]
    pub degrade: bool,

    /// The cgroup to degrade: a cgroup2 directory, absolute or relative to
    /// /sys/fs/cgroup. It must exist at startup. Implies --degrade.
    #[arg(long, value_name = "PATH")]
    pub degrade_cgroup: Option<PathBuf>,

    /// FAULT: hold every wakeup of a user task for at least US microseconds
    /// before it may run (kernel threads are not delayed).
    #[arg(long, value_name = "US",
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub slow_us: Option<u64>,

    /// FAULT: load a program variant with an out-of-bounds map access that
    /// the verifier rejects (exit code 2, verifier log on stderr).
    #[arg(long)]
    pub fail_verify: bool,

    /// Load (and so verify) every BPF program, print one
    /// `scx_demo: verified prog="NAME" insns=N` line per program with the
    /// kernel's verified-instruction count, then exit without attaching.
    /// Exit code 0 when everything loaded, 2 as for a normal load failure.
    #[arg(long)]
    pub verify_only: bool,

    /// With --verify-only: ask the verifier for its log (level 1 + stats) and
    /// print each program's raw log to stdout.
    #[arg(long, requires = "verify_only")]
    pub verify_log: bool,

    /// Echo all of libbpf's messages to stderr.
    #[arg(short, long)]
    pub verbose: bool,
}

/// Parses a non-negative number of seconds, fractions allowed ("1", "0.5").
fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("'{s}' is not a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// libbpf's messages since start. `libbpf_rs::set_print` takes a plain `fn`,
/// so the buffer has to be a global.
static LIBBPF_LOG: Mutex<String> = Mutex::new(String::new());
/// Whether to echo libbpf messages (`--verbose`).
static LIBBPF_ECHO: AtomicBool = AtomicBool::new(false);

fn libbpf_print(level: PrintLevel, msg: String) {
    if LIBBPF_ECHO.load(Ordering::Relaxed) || matches!(level, PrintLevel::Warn) {
        // The verifier log is printed as a tail on failure instead of in full.
        if LIBBPF_ECHO.load(Ordering::Relaxed) || !msg.contains("PROG LOAD LOG") {
            let _ = std::io::stderr().write_all(msg.as_bytes());
        }
    }
    if let Ok(mut log) = LIBBPF_LOG.lock() {
        log.push_str(&msg);
    }
}

fn libbpf_output() -> String {
    LIBBPF_LOG.lock().map(|l| l.clone()).unwrap_or_default()
}

/// Prints a `scx_demo: ` status line to stderr.
macro_rules! status {
    ($($arg:tt)*) => {
        eprintln!("scx_demo: {}", format_args!($($arg)*))
    };
}

fn main() {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            let code = if e.use_stderr() {
                ExitCode::Usage as i32
            } else {
                0
            };
            std::process::exit(code);
        }
    };
    std::process::exit(run(&args) as i32);
}

/// Resolves `--degrade-cgroup` to a cgroup id (the cgroup2 directory's inode
/// number, which is what the kernel reports as the cgroup id).
fn cgroup_id(path: &Path) -> Result<u64> {
    let full = if path.is_absolute() && path.exists() {
        path.to_path_buf()
    } else {
        Path::new(CGROUP2_ROOT).join(path.strip_prefix("/").unwrap_or(path))
    };
    let md = std::fs::metadata(&full).with_context(|| format!("cgroup {}", full.display()))?;
    if !md.is_dir() {
        bail!("cgroup {} is not a directory", full.display());
    }
    Ok(md.ino())
}

fn secs_to_ns(d: Option<Duration>) -> u64 {
    // 0 means "off" on the BPF side; a zero delay still has to fire.
    d.map_or(0, |d| (d.as_nanos() as u64).max(1))
}

/// Loads, attaches and supervises the scheduler; returns the exit code.
fn run(args: &Args) -> ExitCode {
    LIBBPF_ECHO.store(args.verbose, Ordering::Relaxed);
    let t_start = Instant::now();
    libbpf_rs::set_print(Some((PrintLevel::Debug, libbpf_print)));

    let mut storage = MaybeUninit::<OpenObject>::uninit();
    let mut open = match open_skel(args, &mut storage) {
        Ok(s) => s,
        Err(e) => {
            status!("setup-failed err={}", report::quote(&format!("{e:#}")));
            return ExitCode::SetupFailed;
        }
    };
    // SAFETY: demo_ops points into the open object's struct_ops map value,
    // which the skeleton set up and which lives as long as `open`.
    unsafe { (*open.struct_ops.demo_ops).timeout_ms = args.timeout_ms };
    if args.stall_cpu.is_some() {
        // SCX_OPS_ENQ_LAST: without it the kernel keeps running the stalled CPU's last
        // task when dispatch finds nothing, and the CPU never idles.
        // SAFETY: as above.
        unsafe { (*open.struct_ops.demo_ops).flags |= SCX_OPS_ENQ_LAST };
    }
    if args.verify_log {
        for mut prog in open.open_object_mut().progs_mut() {
            // BPF_LOG_LEVEL1 | BPF_LOG_STATS; libbpf allocates the buffer and
            // hands the log to the print callback on success too.
            prog.set_log_level(1 | 4);
        }
    }

    let mut skel = match open.load() {
        Ok(s) => s,
        Err(e) => {
            let out = libbpf_output();
            let prog = report::failed_prog(&out).unwrap_or_else(|| "?".into());
            for line in report::verifier_log_tail(&out, VERIFIER_TAIL_LINES) {
                status!("verifier: {line}");
            }
            status!(
                "load-failed prog={} err={}",
                report::quote(&prog),
                report::quote(&e.to_string())
            );
            return ExitCode::LoadFailed;
        }
    };

    if args.verify_only {
        return verify_report(&skel, args.verify_log);
    }

    let link: Link = match skel.maps.demo_ops.attach_struct_ops() {
        Ok(l) => l,
        Err(e) => {
            status!(
                "attach-failed err={} (is another sched_ext scheduler loaded?)",
                report::quote(&e.to_string())
            );
            // A failing ops.init() also leaves an exit record behind.
            if let Some(bss) = skel.maps.bss_data.as_deref() {
                // SAFETY: the mmapped .bss; read volatile as the kernel wrote it.
                let uei = unsafe { std::ptr::read_volatile(&bss.uei) };
                if uei.kind != 0 {
                    eprintln!("{}", exit_line_of(&uei));
                }
            }
            return ExitCode::SetupFailed;
        }
    };
    // Load time matters under emulation (TCG), so report it.
    status!("enabled load_ms={}", t_start.elapsed().as_millis());

    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(sig, Arc::clone(&term)) {
            status!("warning: cannot handle signal {sig}: {e}");
        }
    }

    let bss = skel
        .maps
        .bss_data
        .as_deref_mut()
        .expect("scx_demo.bpf.c has a .bss");
    let started = Instant::now();
    loop {
        // SAFETY: `bss` is the mmapped .bss map; the BPF side writes uei.kind
        // asynchronously, so read it volatile to see updates.
        let kind = unsafe { std::ptr::read_volatile(&bss.uei.kind) };
        if kind != 0 || term.load(Ordering::Relaxed) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Detaching runs ops.exit synchronously if the kernel has not yet.
    drop(link);

    // SAFETY: as above; after detach the BPF side no longer writes.
    let uei = unsafe { std::ptr::read_volatile(&bss.uei) };
    // A detach that somehow left no record is an unregister by us.
    let kind = if uei.kind == 0 { 64 } else { uei.kind };
    status!(
        "stats runtime_ms={} enqueued={} direct={} dispatch={} kicked={} stolen={} stalled={} \
         stall_victim={} degraded={} degraded_run={} max_cgid={} slowed={}",
        started.elapsed().as_millis(),
        bss.nr_enqueued,
        bss.nr_direct,
        bss.nr_dispatch,
        bss.nr_kicked,
        bss.nr_stolen,
        bss.nr_stalled,
        bss.stall_victim,
        bss.nr_degraded,
        bss.nr_degraded_run,
        bss.max_cgid,
        bss.nr_slowed
    );
    let uei = types::demo_exit_info { kind, ..uei };
    // sched_ext's debug dump (error exits): one `scx_demo: dump: ` line per dump line,
    // before the exit line so a reader of the exit line has it all.
    for line in report::c_buf_to_string(&bss.uei_dump).lines() {
        status!("dump: {line}");
    }
    eprintln!("{}", exit_line_of(&uei));
    report::exit_code_for_kind(kind)
}

/// `--verify-only`: prints each loaded program's verified-instruction count
/// (and, with `--verify-log`, libbpf's copy of its verifier log on stdout).
fn verify_report(skel: &ScxDemoSkel<'_>, with_log: bool) -> ExitCode {
    use std::os::fd::AsRawFd;
    let mut failed = false;
    for prog in skel.object().progs() {
        let name = prog.name().to_string_lossy().into_owned();
        let mut info = libbpf_sys::bpf_prog_info::default();
        let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
        // SAFETY: `info` is a properly sized, writable bpf_prog_info and the fd
        // belongs to a loaded program that outlives the call.
        let ret = unsafe {
            libbpf_sys::bpf_obj_get_info_by_fd(
                prog.as_fd().as_raw_fd(),
                (&mut info as *mut libbpf_sys::bpf_prog_info).cast(),
                &mut len,
            )
        };
        if ret != 0 {
            failed = true;
            status!(
                "verify-failed prog={} err={}",
                report::quote(&name),
                report::quote(&std::io::Error::from_raw_os_error(-ret).to_string())
            );
            continue;
        }
        status!(
            "verified prog={} insns={}",
            report::quote(&name),
            info.verified_insns
        );
    }
    if with_log {
        print!("{}", report::prog_load_logs(&libbpf_output()));
    }
    if failed {
        ExitCode::SetupFailed
    } else {
        ExitCode::Clean
    }
}

/// The `scx_demo: exit ...` line for the BPF-side exit record.
fn exit_line_of(uei: &types::demo_exit_info) -> String {
    report::exit_line(
        uei.kind,
        uei.exit_code,
        &report::c_buf_to_string(&uei.reason),
        &report::c_buf_to_string(&uei.msg),
    )
}

/// Opens the BPF object and fills in `.rodata` from the command line.
fn open_skel<'o>(
    args: &Args,
    storage: &'o mut MaybeUninit<OpenObject>,
) -> Result<OpenScxDemoSkel<'o>> {
    let nr_cpus = libbpf_rs::num_possible_cpus().context("counting possible CPUs")?;
    let mut llcs = if args.llc {
        LlcMap::from_sysfs(Path::new(topology::SYSFS_CPU_ROOT), nr_cpus)
    } else {
        LlcMap::single(nr_cpus)
    };
    if llcs.fold(MAX_LLCS) {
        status!("warning: more than {MAX_LLCS} LLCs; sharing queues");
    }
    if nr_cpus > MAX_CPUS {
        status!("warning: CPUs above {MAX_CPUS} all use LLC 0");
    }
    let degrade_cgid = match &args.degrade_cgroup {
        Some(p) => cgroup_id(p)?,
        None => 0,
    };

    let mut open = ScxDemoSkelBuilder::default()
        .open(storage)
        .context("opening the BPF object")?;
    let ro = open
        .maps
        .rodata_data
        .as_deref_mut()
        .context("scx_demo.bpf.c has no .rodata")?;
    ro.slice_ns = args.slice_us * 1000;
    // Degraded tasks get a tenth of the slice, but at least 100us.
    ro.degrade_slice_ns = (ro.slice_ns / 10).max(100_000).min(ro.slice_ns);
    ro.nr_llcs = llcs.nr_llcs;
    ro.steal = args.steal;
    for (dst, src) in ro.cpu_llc.iter_mut().zip(&llcs.cpu_llc) {
        *dst = *src;
    }
    ro.stall_after_ns = secs_to_ns(args.stall_after);
    ro.stall_on_trigger = args.stall_on_trigger;
    ro.stall_tgid = args.stall_pid.unwrap_or(0);
    if let Some(cpu) = args.stall_cpu {
        anyhow::ensure!(
            cpu < nr_cpus as u32 && nr_cpus > 1,
            "--stall-cpu {cpu}: the machine has CPUs 0-{} (and needs another one to run on)",
            nr_cpus - 1
        );
        ro.stall_cpu = cpu as i32;
        ro.stall_cpu_alt = ((cpu + 1) % nr_cpus as u32) as i32;
    }
    if let Some(cpu) = args.pile_cpu {
        anyhow::ensure!(
            cpu < nr_cpus as u32,
            "--pile-cpu {cpu}: the machine has CPUs 0-{}",
            nr_cpus - 1
        );
        ro.pile_cpu = cpu as i32;
    }
    ro.crash_after_ns = secs_to_ns(args.crash_after);
    ro.degrade = args.degrade || args.degrade_cgroup.is_some();
    ro.degrade_cgid = degrade_cgid;
    ro.slow_ns = args.slow_us.unwrap_or(0) * 1000;
    ro.fail_verify = args.fail_verify;
    ro.self_tgid = std::process::id() as i32;

    status!(
        "config cpus={nr_cpus} llcs={} steal={} slice_us={} timeout_ms={} stall_after_ms={} \
         crash_after_ms={} degrade={} degrade_cgid={} slow_us={} fail_verify={}",
        llcs.nr_llcs,
        args.steal,
        args.slice_us,
        args.timeout_ms,
        args.stall_after.map_or(0, |d| d.as_millis()),
        args.crash_after.map_or(0, |d| d.as_millis()),
        ro.degrade,
        degrade_cgid,
        args.slow_us.unwrap_or(0),
        args.fail_verify
    );
    Ok(open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn steal_requires_llc() {
        assert!(Args::try_parse_from(["scx_demo", "--steal"]).is_err());
        let a = Args::try_parse_from(["scx_demo", "--llc", "--steal"]).unwrap();
        assert!(a.llc && a.steal);
        assert_eq!(a.slice_us, 5000);
        assert_eq!(a.timeout_ms, 3000);
    }

    #[test]
    fn seconds_parse() {
        assert_eq!(parse_secs("1").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_secs("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("x").is_err());
        assert_eq!(secs_to_ns(Some(Duration::ZERO)), 1);
        assert_eq!(secs_to_ns(None), 0);
    }

    #[test]
    fn timeout_range() {
        assert!(Args::try_parse_from(["scx_demo", "--timeout-ms", "30001"]).is_err());
        assert!(Args::try_parse_from(["scx_demo", "--stall-pid", "5"]).is_err());
        assert!(Args::try_parse_from(["scx_demo", "--stall-cpu", "1"]).is_err());
        assert!(Args::try_parse_from([
            "scx_demo",
            "--stall-after",
            "1",
            "--stall-cpu",
            "1",
            "--stall-pid",
            "5"
        ])
        .is_err());
        let a =
            Args::try_parse_from(["scx_demo", "--stall-after", "1", "--stall-cpu", "1"]).unwrap();
        assert_eq!(a.stall_cpu, Some(1));
        assert_eq!(
            Args::try_parse_from(["scx_demo", "--pile-cpu", "0"])
                .unwrap()
                .pile_cpu,
            Some(0)
        );
    }
}
