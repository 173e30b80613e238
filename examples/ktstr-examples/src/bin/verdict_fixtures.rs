//! Cases whose verdicts the harness must get right: a failing body, `expect_err` both ways, a
//! panicking body and a panicking guest kernel, a hung body, a corrupt result channel and a
//! console flood; and a two-step scenario whose sidecar must record each phase.
//! `tests/harness_verdicts.rs` runs this binary
//! with `--exact NAME` and checks exit codes and reports; it is not a suite to run by itself.

use ktstr::prelude::*;

/// Returns a failing result: the case must fail and show the reason.
#[ktstr_test(llcs = 1, cores = 1)]
fn failing_body(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::fail(
        DetailKind::Unfair,
        "deliberate: spread 99% > 15%",
    ))
}

/// expect_err and a failing body: the case passes.
#[ktstr_test(llcs = 1, cores = 1, expect_err = true)]
fn expected_failure(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::fail(DetailKind::Other, "deliberate failure"))
}

/// expect_err and a passing body: the case fails.
#[ktstr_test(llcs = 1, cores = 1, expect_err = true)]
fn unexpected_pass(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

/// The body panics in the guest: the case fails with the panic message.
#[ktstr_test(llcs = 1, cores = 1)]
fn body_panics(_ctx: &Ctx) -> Result<AssertResult> {
    panic!("deliberate body panic 4242");
}

/// The guest kernel panics: the case fails naming the kernel panic.
#[ktstr_test(llcs = 1, cores = 1)]
fn kernel_panics(_ctx: &Ctx) -> Result<AssertResult> {
    std::fs::write("/proc/sys/kernel/sysrq", "1")?;
    std::fs::write("/proc/sysrq-trigger", "c")?;
    Ok(AssertResult::pass())
}

declare_scheduler!(NEVER_LOADS {
    name: "never-loads",
    // Exits 1 at once: the scheduler never attaches.
    binary: ktstr::registry::SchedulerBinary::Path("/bin/false"),
});

/// expect_err = true, but the scheduler never loads: a broken setup, not the expected
/// failure, so the case fails.
#[ktstr_test(scheduler = NEVER_LOADS, llcs = 1, cores = 1, expect_err = true)]
fn expect_err_scheduler_never_loads(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::fail(DetailKind::Other, "not reached"))
}

/// A passing body, but a host teardown budget no VM meets: the case fails naming the budget.
#[ktstr_test(llcs = 1, cores = 1, cleanup_budget_ms = 1)]
fn over_cleanup_budget(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

/// performance_mode on one vCPU: fits any host of 2 CPUs (the vCPU's and a service CPU), so
/// it runs with tier-1 isolation (pinned, exclusive LLC); capped under --no-perf-mode.
#[ktstr_test(llcs = 1, cores = 1, performance_mode = true)]
fn performance_mode_case(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

/// Four spinners of one cgroup on one vCPU, in performance mode. `scripts/perf-spread` runs it
/// repeatedly with and without perf mode beside a CPU hog and compares the spread of the
/// spinners' CPU shares (the sidecar's `stats.worst_spread`) across runs.
#[ktstr_test(llcs = 1, cores = 1, duration_s = 3, performance_mode = true)]
fn perf_fairness(ctx: &Ctx) -> Result<AssertResult> {
    ktstr::scenario::execute_defs(
        ctx,
        vec![ktstr::scenario::CgroupDef::named("cg0").workers(4)],
    )
}

/// performance_mode on 64 vCPUs: more than our hosts can isolate, so it is listed as skipped,
/// and fails naming the host's size when run anyway or in strict mode.
#[ktstr_test(llcs = 1, cores = 64, performance_mode = true)]
fn performance_mode_too_big(_ctx: &Ctx) -> Result<AssertResult> {
    Ok(AssertResult::pass())
}

/// The body never returns: the host's watchdog (`KTSTR_VM_TIMEOUT_S` in the test that runs
/// this) must stop the VM and fail the case naming the watchdog.
#[ktstr_test(llcs = 1, cores = 1)]
fn body_hangs(_ctx: &Ctx) -> Result<AssertResult> {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// Appends a frame with a wrong checksum to the result channel ([`forge_frame`]), then
/// passes: the case must fail on the corrupt channel all the same.
#[ktstr_test(llcs = 1, cores = 1)]
fn channel_corrupted(_ctx: &Ctx) -> Result<AssertResult> {
    // A frame header (kind 1, an out-of-order sequence number, 8 payload bytes) whose
    // checksum is wrong, then its payload.
    let mut frame = [0u8; ktstr::shm::FRAME_HEADER_LEN + 8];
    frame[0..4].copy_from_slice(&1u32.to_le_bytes());
    frame[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
    frame[8..12].copy_from_slice(&8u32.to_le_bytes());
    frame[12..16].copy_from_slice(&0xdead_beefu32.to_le_bytes());
    frame[16..24].copy_from_slice(b"garbage!");
    forge_frame(&frame)?;
    Ok(AssertResult::pass())
}

/// A hostile guest: a frame header that claims a payload larger than the host accepts
/// (`MAX_PAYLOAD` + 1 bytes), then passes. The host must refuse it without allocating it.
#[ktstr_test(llcs = 1, cores = 1)]
fn frame_oversized(_ctx: &Ctx) -> Result<AssertResult> {
    let mut frame = [0u8; ktstr::shm::FRAME_HEADER_LEN + 8];
    frame[0..4].copy_from_slice(&6u32.to_le_bytes());
    frame[8..12].copy_from_slice(&(ktstr::shm::MAX_PAYLOAD + 1).to_le_bytes());
    forge_frame(&frame)?;
    Ok(AssertResult::pass())
}

/// A hostile guest: a well-formed frame (valid checksum) whose sequence number wraps back to
/// 0 instead of following on, then passes. The host must stop reading at it.
#[ktstr_test(llcs = 1, cores = 1)]
fn sequence_wraps(_ctx: &Ctx) -> Result<AssertResult> {
    let payload = b"replayed";
    let mut frame = [0u8; ktstr::shm::FRAME_HEADER_LEN + 8];
    frame[0..4].copy_from_slice(&6u32.to_le_bytes());
    frame[4..8].copy_from_slice(&0u32.to_le_bytes());
    frame[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let sum = ktstr::shm::frame_checksum(6, 0, payload);
    frame[12..16].copy_from_slice(&sum.to_le_bytes());
    frame[16..24].copy_from_slice(payload);
    forge_frame(&frame)?;
    Ok(AssertResult::pass())
}

/// A hostile guest: reboots instead of reporting (`reboot(2)`, as a guest stuck in a reboot
/// loop would on its first round). The VM must end there, not boot again.
#[ktstr_test(llcs = 1, cores = 1)]
fn guest_reboots(_ctx: &Ctx) -> Result<AssertResult> {
    // SAFETY: reboot(2) with a valid command; PID 1's child may call it (CAP_SYS_BOOT in the
    // guest). It does not return on success.
    unsafe { libc::reboot(libc::RB_AUTOBOOT) };
    Err(anyhow!(
        "reboot(2) returned: {}",
        std::io::Error::last_os_error()
    ))
}

/// Appends `frame` to the result channel behind the guest writer's back, as a hostile guest
/// could: maps the region `ktstr_shm=SIZE@ADDR` names on the kernel command line through
/// `/dev/mem` (as the guest's own writer does: under the in-process VMM the region is not RAM,
/// and read/write on /dev/mem refuse it with EFAULT), publishes the frame, and waits for the
/// host to read it. The case must fail on the channel all the same.
fn forge_frame(frame: &[u8]) -> Result<()> {
    use std::os::fd::AsRawFd;
    let cmdline = std::fs::read_to_string("/proc/cmdline")?;
    let (size, base) = ktstr::protocol::parse_shm_arg(&cmdline).map_err(|e| anyhow!(e))?;
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mem")?;
    // SAFETY: a shared mapping of the result region, which the kernel does not manage; only
    // this function touches it through this mapping, and it is unmapped before returning.
    let region = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            mem.as_raw_fd(),
            base as libc::off_t,
        )
    };
    if region == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    let region = region.cast::<u8>();
    let header = ktstr::shm::HEADER_LEN as usize;
    // Header: write_off (u64) at byte 24; frames start after the header.
    // SAFETY: byte 24 of the mapped region, 8-byte aligned (the region is page aligned).
    let write_off = unsafe { std::ptr::read_volatile(region.add(24).cast::<u64>()) } as usize;
    if header + write_off + frame.len() > size as usize {
        return Err(anyhow!("the result region is full"));
    }
    for (i, b) in frame.iter().enumerate() {
        // SAFETY: within the mapped region (checked above).
        unsafe { std::ptr::write_volatile(region.add(header + write_off + i), *b) };
    }
    let published = (write_off + frame.len()) as u64;
    // SAFETY: the aligned write_off word of the mapped region, published after the frame.
    unsafe { std::ptr::write_volatile(region.add(24).cast::<u64>(), published) };
    // The host polls the region; give it time to read the bad frame before the guest's own
    // writer (which keeps its own offset) writes the result over it.
    std::thread::sleep(std::time::Duration::from_secs(2));
    // SAFETY: the mapping made above, no longer used.
    unsafe { libc::munmap(region.cast(), size as usize) };
    Ok(())
}

/// Lines [`console_flood`] writes: about 135 KiB, over twice the console tail the host
/// keeps ([`ktstr::vm::CONSOLE_TAIL_BYTES`]).
pub const FLOOD_LINES: usize = 3000;

/// Floods the serial console, waits until the line has drained, then fails deliberately: the
/// flood must cost neither the verdict nor the console's last line, on either backend.
#[ktstr_test(llcs = 1, cores = 1)]
fn console_flood(_ctx: &Ctx) -> Result<AssertResult> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut con = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/console")?;
    let pad = "x".repeat(32);
    let mut text = String::with_capacity(FLOOD_LINES * 48);
    for i in 0..FLOOD_LINES {
        text.push_str(&format!("flood {i:05} {pad}\n"));
    }
    text.push_str("flood done\n");
    con.write_all(text.as_bytes())?;
    // SAFETY: tcdrain on an fd this function owns; it only waits.
    if unsafe { libc::tcdrain(con.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(AssertResult::fail(
        DetailKind::Other,
        format!("deliberate: flooded the console with {} bytes", text.len()),
    ))
}

// BPF run counters are off unless a test turns them on (they cost two clock reads per
// callback); this fixture does, so its sidecar shows the callbacks were counted.
declare_scheduler!(SCX_DEMO {
    name: "scx-demo",
    binary: "scx_demo",
    sysctls: ["kernel.bpf_stats_enabled" = "1"],
});

/// Under scx_demo, two spinners for half the run, then two more in a second cgroup: the
/// sidecar must record the phases (BASELINE, Step[0] with 2 workers, Step[1] with 4 sharing
/// the same 2 CPUs), the scheduler's BPF programs, and on KVM the VM's exits.
#[ktstr_test(scheduler = SCX_DEMO, llcs = 1, cores = 2, duration_s = 4)]
fn two_steps(ctx: &Ctx) -> Result<AssertResult> {
    let spin = |name: &str| {
        CgroupDef::named(name)
            .workers(2)
            .work_type(WorkType::SpinWait)
    };
    execute_steps(
        ctx,
        vec![
            Step::with_defs(vec![spin("first")], HoldSpec::Frac(0.5)),
            Step::with_defs(vec![spin("second")], HoldSpec::Frac(0.5)),
        ],
    )
}

/// CPU 1 stops running anything 1 s after the scheduler starts (scx_demo's CPU stall), with
/// `auto_repro`: the case fails, runs once more with the monitor sampling 10x as often, and
/// both sidecars are kept and linked.
#[ktstr_test(scheduler = SCX_DEMO, llcs = 1, cores = 2, duration_s = 4, watchdog_timeout_s = 4,
    extra_sched_args = ["--stall-after", "1", "--stall-cpu", "1"], auto_repro = true)]
fn cpu_stall_repro(ctx: &Ctx) -> Result<AssertResult> {
    let spin = CgroupDef::named("spin")
        .workers(4)
        .work_type(WorkType::SpinWait);
    execute_steps(ctx, vec![Step::with_defs(vec![spin], HoldSpec::Frac(1.0))])
}

/// A `bpf_map_write` into a map the scheduler does not have: the host cannot make it, and
/// the case fails saying so, with the maps it did find.
const NO_SUCH_MAP: BpfMapWrite = BpfMapWrite::new(".no_such_map", 0, 1);

#[ktstr_test(scheduler = SCX_DEMO, llcs = 1, cores = 2, duration_s = 2,
    bpf_map_write = NO_SUCH_MAP)]
fn map_write_missing(ctx: &Ctx) -> Result<AssertResult> {
    std::thread::sleep(ctx.duration.mul_f64(ctx.time_scale.max(1.0)));
    Ok(AssertResult::pass())
}

/// A real benchmark as a payload: cyclictest (Debian's rt-tests), one thread for 1 s, JSON to
/// stdout; the sidecar must carry its metrics.
const CYCLICTEST: Payload = Payload::binary("cyclictest", "cyclictest")
    .default_args(&[
        "-q",
        "-t",
        "1",
        "-i",
        "1000",
        "-D",
        "1",
        "--json=/proc/self/fd/1",
    ])
    .output(OutputFormat::Json);

#[ktstr_test(llcs = 1, cores = 2, payload = CYCLICTEST)]
fn payload_metrics(ctx: &Ctx) -> Result<AssertResult> {
    ctx.payload(&CYCLICTEST).run()?;
    Ok(AssertResult::pass())
}

/// A payload whose binary is on no host: the case fails before booting, naming it.
const MISSING: Payload = Payload::binary("nope", "no-such-benchmark-ktstr");

#[ktstr_test(llcs = 1, cores = 1, payload = MISSING)]
fn payload_missing(ctx: &Ctx) -> Result<AssertResult> {
    ctx.payload(&MISSING).run()?;
    Ok(AssertResult::pass())
}

fn main() {
    ktstr_harness::main()
}
