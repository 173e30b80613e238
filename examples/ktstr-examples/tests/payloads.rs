//! Example suite for payloads: a real benchmark, cyclictest (Debian package rt-tests; ktstr's
//! `scripts/install-deps` installs it), packed into the guest and run under scx_demo. Its JSON
//! summary comes back as metrics, and a check on the mean wakeup latency gates the case: it
//! passes under the healthy scheduler, and fails with that check's diagnosis when scx_demo
//! holds every wakeup for 30 ms.

use ktstr::prelude::*;

declare_scheduler!(SCX_DEMO {
    name: "scx-demo",
    binary: "scx_demo",
    topology: (1, 2, 2, 1),
    watchdog_arg: "--timeout-ms",
});

/// Two cyclictest threads at normal priority (so the scheduler under test places them, not the
/// RT class), waking every millisecond for 2 s; `--json` to stdout gives per-thread `min`,
/// `avg`, `max` (µs) and `cycles`. The gate: a mean wakeup latency under 10 ms. Measured under
/// TCG: healthy means of 240 and 312 µs (max 5 ms); with scx_demo's 30 ms hold, 31 ms.
const CYCLICTEST: Payload = Payload::binary("cyclictest", "cyclictest")
    .default_args(&[
        "-q",
        "-t",
        "2",
        "-i",
        "1000",
        "-D",
        "2",
        "--json=/proc/self/fd/1",
    ])
    .output(OutputFormat::Json)
    .metrics(&[
        MetricHint {
            name: "thread.0.avg",
            polarity: Polarity::LowerBetter,
            unit: "us",
        },
        MetricHint {
            name: "thread.0.max",
            polarity: Polarity::LowerBetter,
            unit: "us",
        },
    ])
    .default_checks(&[
        Check::Min {
            metric: "thread.0.cycles",
            value: 1.0,
        },
        Check::Max {
            metric: "thread.0.avg",
            value: 10_000.0,
        },
        Check::Max {
            metric: "thread.1.avg",
            value: 10_000.0,
        },
    ]);

fn cyclictest(ctx: &Ctx) -> Result<AssertResult> {
    let m = ctx.payload(&CYCLICTEST).run()?;
    // The checks gate the case once the body returns; the body can read the metrics too.
    ensure!(
        m.metrics.contains_key("thread.1.max"),
        "cyclictest reported no second thread: {m:?}"
    );
    Ok(AssertResult::pass())
}

/// Healthy: cyclictest's wakeups under scx_demo pass the latency gate.
#[ktstr_test(scheduler = SCX_DEMO, payload = CYCLICTEST, duration_s = 2)]
fn cyclictest_wakeups(ctx: &Ctx) -> Result<AssertResult> {
    cyclictest(ctx)
}

/// Every user wakeup held for 30 ms: the payload's own latency check catches it.
#[ktstr_test(scheduler = SCX_DEMO, payload = CYCLICTEST, duration_s = 2,
    extra_sched_args = ["--slow-us", "30000"],
    expect_err = "Benchmark: payload cyclictest: thread.0.avg")]
fn cyclictest_catches_slow_wakeups(ctx: &Ctx) -> Result<AssertResult> {
    cyclictest(ctx)
}

fn main() {
    ktstr_harness::main()
}
