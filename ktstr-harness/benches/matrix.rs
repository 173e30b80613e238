//! Matrix benchmark over synthetic registries of ~30,000 and ~300,000 cases.
//!
//! Run: `cargo bench -p ktstr-harness --bench matrix`. Prints medians for
//! (a) listing every name (`--list --format terse`), (b) `--exact NAME` resolution of one case.
//! Targets: listing ≤ 100 ms / ≤ 500 ms, exact ≤ 5 ms at both sizes.

use std::time::{Duration, Instant};

use ktstr::assert::AssertResult;
use ktstr::registry::matrix::{KernelSet, Matrix};
use ktstr::registry::{Ctx, FlagDecl, KtstrTest, Scheduler, SchedulerBinary};

fn body(_: &Ctx) -> anyhow::Result<AssertResult> {
    Ok(AssertResult::pass())
}

/// Four flags with one `requires` and one `excludes`: 10 valid profiles.
static SCHED: Scheduler = Scheduler::new("scx-bench")
    .binary(SchedulerBinary::Discover("scx_bench"))
    .topology(1, 2, 4, 1)
    .flags(&[
        FlagDecl::new("llc", &["--llc"]),
        FlagDecl::new("steal", &["--steal"]).requires(&["llc"]),
        FlagDecl::new("spread", &["--spread"]).excludes(&["steal"]),
        FlagDecl::new("numa", &["--numa"]),
    ]);

/// `n` synthetic tests on SCHED; each expands to 16 topologies × 10 profiles = 160 cases.
fn registry(n: usize) -> &'static [KtstrTest] {
    let v: Vec<KtstrTest> = (0..n)
        .map(|i| {
            let name: &'static str = Box::leak(format!("synthetic_test_{i:06}").into_boxed_str());
            KtstrTest::new(name, body).scheduler(&SCHED)
        })
        .collect();
    Box::leak(v.into_boxed_slice())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn args(list: &[&str]) -> libtest_mimic::Arguments {
    libtest_mimic::Arguments::from_iter(std::iter::once("bench").chain(list.iter().copied()))
}

fn bench(tests: usize) {
    let matrix = Matrix::new(registry(tests), KernelSet::none());
    let list_args = args(&["--list", "--format", "terse"]);
    let mut buf = Vec::with_capacity(64 << 20);
    let mut times = Vec::new();
    let mut cases = 0;
    for _ in 0..9 {
        buf.clear();
        let t = Instant::now();
        cases = ktstr_harness::list::write_list(&matrix, &list_args, &mut buf).unwrap();
        times.push(t.elapsed());
    }
    let list = median(times);

    // Names from the start, middle and end of the listing.
    let text = String::from_utf8(buf).unwrap();
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches(": test")).collect();
    let picks = [lines[0], lines[lines.len() / 2], lines[lines.len() - 1]];
    let mut times = Vec::new();
    for _ in 0..200 {
        for name in picks {
            let t = Instant::now();
            let a = args(&["--list", "--format", "terse", "--exact", name]);
            let mut out = Vec::new();
            let n = ktstr_harness::list::write_list(&matrix, &a, &mut out).unwrap();
            let spec = matrix.resolve(name).unwrap();
            times.push(t.elapsed());
            assert_eq!((n, spec.name.as_str()), (1, name));
        }
    }
    let exact = median(times);
    println!(
        "{tests:>5} tests, {cases:>7} cases: list (terse) median {:>8.2} ms | --exact (args + list + resolve) median {:>7.3} ms",
        list.as_secs_f64() * 1e3,
        exact.as_secs_f64() * 1e3
    );
}

fn main() {
    // 188 × 160 = 30,080 cases; 1,875 × 160 = 300,000 cases.
    bench(188);
    bench(1875);
}
