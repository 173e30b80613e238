//! `cargo ktstr export TEST`: a self-extracting `.run` file that runs one test on the machine
//! it is started on, without a VM (cli.md §2.19, §5). It is a bash preamble that checks the
//! host (root, sched_ext when the test needs it, cgroup2, no other scheduler attached, enough
//! CPUs, LLCs, nodes and SMT for the test's topology), then a gzipped tarball: the test
//! binary, the scheduler, payload binaries, include files and the case file. The test binary
//! runs the case exactly as in a VM (`ktstr::runner::bare_metal_main`) and exits 0 or 1 by
//! verdict.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use ktstr::runner::ExportPlan;

use crate::test_bins::{ktstr_test_binaries_of, TestBinary};

/// Flags of `cargo ktstr export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The bare `#[ktstr_test]` function name (a `binary::` prefix is stripped).
    test: String,
    /// Where to write the `.run` file (default `./TEST.run`).
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Only look in this package's test binaries.
    #[arg(short, long)]
    package: Option<String>,
    /// Build (and bundle) the release profile's test binary.
    #[arg(long)]
    release: bool,
}

/// The line after which the tarball starts.
const MARKER: &str = "__KTSTR_BUNDLE_BELOW__";

/// Runs `export`.
pub fn run(a: ExportArgs) -> Result<ExitCode> {
    let name = a.test.rsplit("::").next().unwrap_or(&a.test).to_string();
    let mut args = vec!["build", "--tests"];
    match &a.package {
        Some(p) => args.extend(["--package", p.as_str()]),
        None => args.push("--workspace"),
    }
    if a.release {
        args.push("--release");
    }
    let mut bins = ktstr_test_binaries_of(&args)?;
    bins.sort_by(|x, y| x.path.cmp(&y.path));
    let bin = pick(&bins, &name, &a.test)?;
    let plan = ask_plan(&bin.path, &name)?;
    let out = a
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{name}.run")));
    let size = write_bundle(&out, &bin.path, &plan)?;
    println!(
        "wrote {} ({:.1} MiB): {} under {}; run it as root on the target: {} [--duration S] \
         [--watchdog-timeout S] [--quiet]",
        out.display(),
        size as f64 / (1 << 20) as f64,
        plan.case,
        plan.scheduler_host
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "EEVDF".into()),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The first binary (by path) that registers `name`; the others are named as shadowed. An
/// unknown name gets the did-you-mean of `show-thresholds`.
fn pick<'a>(bins: &'a [TestBinary], name: &str, asked: &str) -> Result<&'a TestBinary> {
    let mut hits = bins.iter().filter(|b| b.tests.iter().any(|t| t == name));
    let Some(first) = hits.next() else {
        let all = bins.iter().flat_map(|b| b.tests.iter().map(String::as_str));
        let e = ktstr::registry::UnknownTest::new(name, all);
        if name != asked {
            bail!("{e}\nhint: the `<binary>::` prefix is stripped: looked for {name}");
        }
        bail!("{e}");
    };
    let shadowed: Vec<String> = hits.map(|b| b.path.display().to_string()).collect();
    if !shadowed.is_empty() {
        eprintln!(
            "ktstr: warning: {name} is registered by several test binaries; exporting {} and \
             not {} (choose with -p PACKAGE)",
            first.path.display(),
            shadowed.join(", ")
        );
    }
    Ok(first)
}

/// The test binary's export plan for `name`, or its reason for refusing.
fn ask_plan(bin: &Path, name: &str) -> Result<ExportPlan> {
    let o = Command::new(bin)
        .args(["--ktstr-export-plan", name])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !o.status.success() {
        bail!(
            "cannot export {name}: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    serde_json::from_slice(&o.stdout).context("reading the test binary's export plan")
}

/// Writes the preamble and the tarball to `out`, executable; returns its size.
fn write_bundle(out: &Path, test_bin: &Path, plan: &ExportPlan) -> Result<u64> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    {
        let mut tar = tar::Builder::new(&mut gz);
        tar.follow_symlinks(true);
        // Plain entries: busybox tar (a minimal target, our own shell guest) knows no GNU
        // sparse files.
        tar.sparse(false);
        let mut add = |src: &Path, dst: String| -> Result<()> {
            if src.is_dir() {
                tar.append_dir_all(&dst, src)
            } else {
                tar.append_path_with_name(src, &dst)
            }
            .with_context(|| format!("bundling {}", src.display()))
        };
        add(test_bin, "bin/ktstr-test".into())?;
        let bins: Vec<&PathBuf> = plan.scheduler_host.iter().chain(&plan.binaries).collect();
        for b in &bins {
            add(b, format!("bin/{}", file_name(b)))?;
        }
        for lib in libraries(std::iter::once(test_bin).chain(bins.iter().map(|b| b.as_path())))? {
            add(&lib, format!("lib/{}", file_name(&lib)))?;
        }
        for f in &plan.include_files {
            add(f, format!("include-files/{}", file_name(f)))?;
        }
        let case = serde_json::to_vec_pretty(&plan.case_file)?;
        let mut h = tar::Header::new_gnu();
        h.set_size(case.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, "case.json", case.as_slice())?;
        tar.finish()?;
    }
    let payload = gz.finish()?;
    let mut f =
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    f.write_all(preamble(plan).as_bytes())?;
    f.write_all(&payload)?;
    drop(f);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755))?;
    Ok(std::fs::metadata(out)?.len())
}

/// The shared libraries the bundled programs need, except glibc's own (which must match the
/// target's loader, so the target's are used): `lib/` in the bundle, on `LD_LIBRARY_PATH`.
fn libraries<'a>(programs: impl Iterator<Item = &'a Path>) -> Result<Vec<PathBuf>> {
    const GLIBC: &[&str] = &[
        "libc.so",
        "libm.so",
        "libpthread.so",
        "libdl.so",
        "librt.so",
        "libresolv.so",
        "libutil.so",
        "ld-linux",
    ];
    let resolver = ktstr::initramfs::LibResolver::host();
    let mut out: Vec<PathBuf> = Vec::new();
    for p in programs {
        let c = resolver
            .closure(p, p)
            .with_context(|| format!("finding the libraries of {}", p.display()))?;
        for l in c.libraries {
            let name = file_name(&l.host);
            if !GLIBC.iter().any(|g| name.starts_with(g))
                && !out.iter().any(|o| file_name(o) == name)
            {
                out.push(l.host);
            }
        }
    }
    Ok(out)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The bash preamble: options, the five host checks, extraction and the run.
fn preamble(plan: &ExportPlan) -> String {
    let t = plan.topology;
    let sched_ext = u8::from(plan.scheduler_host.is_some());
    format!(
        r##"#!/bin/sh
# ktstr export of {test} (case {case}): runs it on this machine, without a VM, and exits 0 if
# it passes, 1 if it fails (2: bad options, 3: this host cannot run it). POSIX sh: bash, dash
# and busybox ash all run it.
set -u
TOPO="{topo}" NEED_N={n} NEED_L={l} NEED_C={c} NEED_T={th} SCHED_EXT={sched_ext}
usage() {{
  echo "usage: $0 [--duration SECS] [--watchdog-timeout SECS] [--quiet]"
  echo "  {case}; default duration {dur} s, watchdog {wd} s"
}}
DURATION= WATCHDOG= QUIET=
while [ $# -gt 0 ]; do
  case $1 in
    --duration|--watchdog-timeout)
      [ $# -ge 2 ] || {{ echo "$0: $1 needs a number of seconds" >&2; exit 2; }}
      if [ "$1" = --duration ]; then DURATION=$2; else WATCHDOG=$2; fi; shift 2 ;;
    --duration=*) DURATION=${{1#*=}}; shift ;;
    --watchdog-timeout=*) WATCHDOG=${{1#*=}}; shift ;;
    --quiet) QUIET=1; shift ;;
    --cpus|--cpus=*|--topology|--topology=*|--affinity|--affinity=*)
      echo "$0: ${{1%%=*}} is fixed at export time (topology $TOPO, CPUs as the test declares): re-export to change this" >&2; exit 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "$0: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
for v in ${{DURATION:+"$DURATION"}} ${{WATCHDOG:+"$WATCHDOG"}}; do
  case $v in *[!0-9]*|0*) echo "$0: $v is not a whole number of seconds >= 1" >&2; exit 2 ;; esac
done
fail() {{ echo "$0: cannot run here: $*" >&2; exit 3; }}
[ "$(id -u)" = 0 ] || fail "run it as root (it starts the scheduler, creates cgroups and writes sysctls)"
if [ "$SCHED_EXT" = 1 ] && [ ! -d /sys/kernel/sched_ext ]; then
  fail "this kernel has no sched_ext (/sys/kernel/sched_ext is missing): boot one built with CONFIG_SCHED_CLASS_EXT=y"
fi
grep -qw cgroup2 /proc/mounts || fail "cgroup2 is not mounted (mount -t cgroup2 none /sys/fs/cgroup)"
if [ -r /sys/kernel/sched_ext/state ] && [ "$(cat /sys/kernel/sched_ext/state)" != disabled ]; then
  fail "a sched_ext scheduler is attached ($(cat /sys/kernel/sched_ext/root/ops 2>/dev/null || echo unknown)): stop it first"
fi
cpus=$(ls -d /sys/devices/system/cpu/cpu[0-9]* | wc -l)
nodes=$(ls -d /sys/devices/system/node/node[0-9]* 2>/dev/null | wc -l); [ "$nodes" -ge 1 ] || nodes=1
llcs=$(cat /sys/devices/system/cpu/cpu[0-9]*/cache/index3/shared_cpu_list 2>/dev/null | sort -u | wc -l); [ "$llcs" -ge 1 ] || llcs=1
smt=$(tr ',' '\n' < /sys/devices/system/cpu/cpu0/topology/thread_siblings_list 2>/dev/null | awk -F- '{{n += (NF == 2 ? $2 - $1 + 1 : 1)}} END {{print n + 0}}'); [ "$smt" -ge 1 ] || smt=1
need_cpus=$((NEED_L * NEED_C * NEED_T))
[ "$cpus" -ge "$need_cpus" ] && [ "$nodes" -ge "$NEED_N" ] && [ "$llcs" -ge "$NEED_L" ] && [ "$smt" -ge "$NEED_T" ] ||
  fail "the test's topology $TOPO needs $need_cpus CPUs in $NEED_L LLCs on $NEED_N NUMA nodes with $NEED_T threads per core; this host has $cpus CPUs, $llcs LLCs, $nodes nodes, $smt per core"
DIR=$(mktemp -d /tmp/ktstr-export.XXXXXX) || fail "mktemp failed"
trap 'rm -rf "$DIR"' EXIT
line=$(awk '/^{marker}$/ {{print NR + 1; exit}}' "$0")
tail -n +"$line" "$0" | tar xzf - -C "$DIR" || fail "the bundle does not extract (a truncated .run file?)"
[ -n "$QUIET" ] || echo "ktstr export: {case} (exported by ktstr {version})"
status=0
env PATH="$DIR/bin:$PATH" LD_LIBRARY_PATH="$DIR/lib${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" KTSTR_EXPORT_CASE="$DIR/case.json" \
  ${{DURATION:+KTSTR_EXPORT_DURATION_S=$DURATION}} ${{WATCHDOG:+KTSTR_EXPORT_WATCHDOG_S=$WATCHDOG}} \
  ${{QUIET:+KTSTR_EXPORT_QUIET=1}} "$DIR/bin/ktstr-test" || status=$?
exit $status
{marker}
"##,
        test = plan.test,
        case = plan.case,
        topo = t.label(),
        n = t.numa_nodes,
        l = t.llcs,
        c = t.cores,
        th = t.threads,
        dur = plan.case_file.duration_s.unwrap_or_default(),
        wd = plan.case_file.watchdog_timeout_s.unwrap_or_default(),
        marker = MARKER,
        version = env!("CARGO_PKG_VERSION"),
    )
}
