use super::*;
use crate::monitor::sampler::CpuSample;

/// Samples every 100 ms; `cpus[i]` = (clock advance per sample, nr_running, local DSQ) of
/// CPU i, where an advance of 0 keeps the clock still.
fn run(samples: usize, cpu: impl Fn(usize, usize) -> (u64, u32, u32), ncpus: usize) -> Recording {
    let mut clocks = vec![1_000_000u64; ncpus];
    let samples = (0..samples)
        .map(|i| Sample {
            at_ms: i as u64 * 100,
            cpus: (0..ncpus)
                .map(|c| {
                    let (adv, nr, dsq) = cpu(i, c);
                    clocks[c] += adv + c as u64; // distinct clocks: initialized
                    if adv == 0 {
                        clocks[c] -= c as u64;
                    }
                    CpuSample {
                        clock: clocks[c],
                        nr_running: nr,
                        scx_nr_running: Some(nr),
                        local_dsq: Some(dsq),
                        host_wait_ns: Some(0),
                    }
                })
                .collect(),
            scx_state: Some(1),
            scx_exit_kind: None,
            jiffies: Some(1000 + 25 * i as u64),
        })
        .collect();
    Recording {
        period_ms: 100,
        samples,
        ..Default::default()
    }
}

fn name(v: u32) -> String {
    format!("S{v}")
}

const ALL: MonitorLimits = MonitorLimits {
    max_imbalance_ratio: Some(4.0),
    max_local_dsq_depth: Some(50),
    fail_on_stall: true,
};

#[test]
fn a_healthy_run_has_no_findings() {
    let mut r = run(30, |_, _| (100_000_000, 1, 0), 4);
    r.cpu_us = Some(30_000);
    r.ran_ms = 3000;
    let s = summarize(&r, 5, name);
    assert_eq!(s.total_samples, 30);
    assert!(!s.stall_detected && s.stalls.is_empty(), "{s:?}");
    assert_eq!(s.max_imbalance_ratio, Some(1.0));
    assert_eq!(s.max_local_dsq_depth, Some(0));
    assert_eq!(s.avg_nr_running, Some(1.0));
    assert_eq!(s.scx_state.as_deref(), Some("S1"));
    assert_eq!(
        (s.monitor_cpu_ms, s.monitor_cpu_pct),
        (Some(30.0), Some(1.0))
    );
    assert!(findings(&s, &ALL).is_empty());
}

#[test]
fn a_cpu_whose_clock_stands_still_with_runnable_tasks_is_a_stall() {
    // CPU 2's clock is not updated after sample 9, up to sample 20, with 3 tasks queued.
    let r = run(
        30,
        |i, c| match (c, i) {
            (2, 10..=20) => (0, 3, 0),
            _ => (100_000_000, 1, 0),
        },
        4,
    );
    let s = summarize(&r, 5, name);
    assert_eq!(
        s.stalls,
        [Stall {
            cpu: 2,
            duration_ms: 1100,
            samples: 11,
            from_ms: 900,
            nr_running: 3
        }]
    );
    assert_eq!((s.stall_count, s.stall_detected), (1, true));
    let f = findings(&s, &ALL);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].kind, DetailKind::Monitor);
    assert_eq!(
        f[0].message,
        "CPU 2 stalled: its runqueue clock stood still for 1.1 s (11 samples of 100 ms) with 3 runnable task(s), from 0.9 s into the run"
    );
    // fail_on_stall off: recorded, not a failure.
    let off = MonitorLimits {
        fail_on_stall: false,
        ..ALL
    };
    assert!(findings(&s, &off).is_empty());
}

#[test]
fn a_stall_shorter_than_the_sustained_window_is_not_one() {
    let r = run(
        30,
        |i, c| match (c, i) {
            (1, 10..=13) => (0, 2, 0), // 4 intervals standing: 9→10 … 12→13
            _ => (100_000_000, 1, 0),
        },
        2,
    );
    assert!(!summarize(&r, 5, name).stall_detected);
    assert!(
        summarize(&r, 4, name).stall_detected,
        "exactly at the bound"
    );
}

#[test]
fn an_idle_cpu_or_a_preempted_vcpu_is_not_a_stall() {
    // Idle: nothing runnable, the tickless clock stands still.
    let idle = run(
        30,
        |_, c| {
            if c == 1 {
                (0, 0, 0)
            } else {
                (100_000_000, 1, 0)
            }
        },
        2,
    );
    assert!(!summarize(&idle, 5, name).stall_detected);
    // Runnable but the vCPU thread waited for a host CPU for the whole interval.
    let mut pre = run(
        30,
        |_, c| {
            if c == 1 {
                (0, 2, 0)
            } else {
                (100_000_000, 1, 0)
            }
        },
        2,
    );
    assert!(summarize(&pre, 5, name).stall_detected, "control");
    for (i, s) in pre.samples.iter_mut().enumerate() {
        s.cpus[1].host_wait_ns = Some(i as u64 * 60_000_000);
    }
    let s = summarize(&pre, 5, name);
    assert!(!s.stall_detected, "{s:?}");
    assert_eq!(s.preempted_intervals, 29);
}

#[test]
fn without_host_data_a_guest_frozen_as_a_whole_is_not_a_stall() {
    let mut r = run(20, |_, _| (0, 1, 0), 2);
    // Distinct but unmoving clocks: initialized, yet nothing advanced anywhere.
    for s in &mut r.samples {
        s.cpus[0].clock = 5;
        s.cpus[1].clock = 7;
        s.cpus.iter_mut().for_each(|c| c.host_wait_ns = None);
        s.jiffies = None;
    }
    let s = summarize(&r, 5, name);
    assert!(!s.stall_detected && s.preempted_intervals == 38, "{s:?}");
}

/// The KVM lane's false alarm: one vCPU's clock still for 0.7 s, its host thread never seen
/// waiting, because the nested hypervisor running the whole guest was itself descheduled.
/// The guest's jiffies stood still too: not a stall. With jiffies moving it is one.
#[test]
fn a_guest_whose_jiffies_stood_still_was_stopped_as_a_whole_not_stalled() {
    let mut r = run(
        30,
        |i, c| match (c, i) {
            (1, 10..=17) => (0, 1, 0),
            _ => (100_000_000, 0, 0),
        },
        4,
    );
    let frozen = r.clone();
    for (i, s) in r.samples.iter_mut().enumerate().skip(10).take(8) {
        s.jiffies = Some(1000 + 25 * 9 + (i as u64 == 17) as u64 * 200);
    }
    let s = summarize(&r, 5, name);
    assert!(!s.stall_detected, "{s:?}");
    assert_eq!(s.preempted_intervals, 4 * 7, "{s:?}");
    // Same clocks, jiffies moving: CPU 1 really stalled.
    let s = summarize(&frozen, 5, name);
    assert_eq!(s.stalls.len(), 1, "{s:?}");
    assert_eq!(s.stalls[0].cpu, 1);
}

/// The KVM lane's false alarm: during the kernel's boot (8 s there) a CPU's runqueue clock
/// stood still for 0.5-0.8 s with one task. Boot is not judged: only samples from init's hello.
#[test]
fn the_kernels_boot_is_not_judged() {
    let mut r = run(
        40,
        |i, c| match (c, i) {
            (1, 5..=14) => (0, 1, 0),
            _ => (100_000_000, 1, 0),
        },
        2,
    );
    assert!(summarize(&r, 5, name).stall_detected);
    // Init said hello at 1.5 s: the stall (0.5-1.4 s) was boot.
    r.judged_from_ms = Some(1500);
    let s = summarize(&r, 5, name);
    assert!(!s.stall_detected, "{s:?}");
    assert_eq!(s.uninitialized_samples, 15);
    assert!(
        s.describe().contains("15 before init started"),
        "{}",
        s.describe()
    );
}

/// Uninitialized samples: one CPU whose clock is 0, or several CPUs whose clocks are all the
/// same (the runqueues' static image), are not judged; one CPU with a clock is.
#[test]
fn a_single_cpu_is_initialized_once_its_clock_runs() {
    let one = |clock: u64| Sample {
        cpus: vec![CpuSample {
            clock,
            nr_running: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    assert!(!initialized(&one(0)));
    assert!(initialized(&one(5)));
    let two = |a: u64, b: u64| Sample {
        cpus: [a, b]
            .iter()
            .map(|&clock| CpuSample {
                clock,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    assert!(!initialized(&two(7, 7)));
    assert!(!initialized(&two(0, 0)));
    assert!(initialized(&two(7, 9)));
    assert!(initialized(&two(0, 9)));
}

/// The ratio is max over min (not a product), and the means are the samples' means.
#[test]
fn imbalance_is_a_ratio_and_means_are_means() {
    let r = run(
        10,
        |_, c| match c {
            0 => (100_000_000, 4, 3),
            _ => (100_000_000, 2, 1),
        },
        2,
    );
    let s = summarize(&r, 5, name);
    assert_eq!(s.max_imbalance_ratio, Some(2.0), "{s:?}");
    assert_eq!(s.avg_imbalance_ratio, Some(2.0), "{s:?}");
    assert_eq!(s.avg_nr_running, Some(3.0), "{s:?}");
    assert_eq!(s.avg_local_dsq_depth, Some(2.0), "{s:?}");
}

/// The summary carries the exit record and says why the event counters are null; the mean of
/// nothing is none.
#[test]
fn the_summary_keeps_the_exit_record_and_the_counters_note() {
    let mut r = run(10, |_, _| (100_000_000, 1, 0), 2);
    let exit = crate::monitor::sampler::ScxExit {
        kind: "SCX_EXIT_ERROR_STALL".into(),
        reason: "runnable task stall".into(),
        msg: "kworker/1:1 failed to run for 5s".into(),
    };
    r.scx_exit = Some(exit.clone());
    let s = summarize(&r, 5, name);
    assert_eq!(s.scx_exit, Some(exit));
    assert!(
        s.notes.iter().any(|n| n.contains(NO_EVENT_COUNTERS)),
        "{:?}",
        s.notes
    );
    assert!(s.describe().contains("SCX_EXIT_ERROR_STALL"));
    assert_eq!(mean(std::iter::empty()), None);
    assert_eq!(mean([1.0, 2.0].into_iter()), Some(1.5));
}

/// An interval counts toward a stall only when the CPU had tasks at both ends: one that
/// became runnable (or emptied) within it may not have ticked yet. Small host waits (under
/// half the interval, in ns) do not excuse a stall.
#[test]
fn a_stall_needs_tasks_at_both_ends_of_each_interval() {
    // CPU 1 still from sample 10 to 15; tasks at samples 11-15 (became runnable after 10).
    let rising = |i: usize, c: usize| match (c, i) {
        (1, 10) => (0, 0, 0),
        (1, 11..=15) => (0, 2, 0),
        _ => (100_000_000, 1, 0),
    };
    let mut r = run(30, rising, 2);
    for (i, s) in r.samples.iter_mut().enumerate() {
        s.cpus[1].host_wait_ns = Some(i as u64 * 10_000_000); // 10 ms per 100 ms interval
    }
    // 11→15 is 4 intervals with tasks at both ends: under 5.
    let s5 = summarize(&r, 5, name);
    assert!(!s5.stall_detected, "{:?}", s5.stalls);
    assert!(summarize(&r, 4, name).stall_detected);
    // Clock still from sample 10 to 15, tasks at 10-14, gone at 15: again 4.
    let falling = |i: usize, c: usize| match (c, i) {
        (1, 10) => (100_000_000, 2, 0),
        (1, 11..=14) => (0, 2, 0),
        (1, 15) => (0, 0, 0),
        _ => (100_000_000, 1, 0),
    };
    let r = run(30, falling, 2);
    assert!(!summarize(&r, 5, name).stall_detected);
    assert!(summarize(&r, 4, name).stall_detected);
}

/// With host data but no jiffies, every clock standing still with tasks queued is a stall of
/// every CPU (the host says the vCPUs were not kept waiting); the monitor's own CPU share
/// needs a run time to divide by.
#[test]
fn all_cpus_still_with_host_data_is_a_stall_of_each() {
    let mut r = run(
        20,
        |i, _| {
            if i >= 5 {
                (0, 2, 0)
            } else {
                (100_000_000, 2, 0)
            }
        },
        2,
    );
    for s in &mut r.samples {
        s.jiffies = None;
    }
    r.cpu_us = Some(5000);
    r.ran_ms = 0;
    let s = summarize(&r, 5, name);
    assert_eq!(s.stalls.len(), 2, "{s:?}");
    assert_eq!(s.monitor_cpu_pct, None);
    assert_eq!(s.monitor_cpu_ms, Some(5.0));
}

/// Two stalls of one CPU: the longer is reported, whichever came first (of two as long, the
/// earlier).
#[test]
fn of_two_stalls_of_a_cpu_the_longer_is_kept() {
    let episodes = |first: usize, second: usize| {
        move |i: usize, c: usize| {
            let (a, b) = (5..5 + first, 20..20 + second);
            if c == 1 && (a.contains(&i) || b.contains(&i)) {
                (0, 2, 0)
            } else {
                (100_000_000, 2, 0)
            }
        }
    };
    let s = summarize(&run(40, episodes(6, 9), 2), 5, name);
    assert_eq!(s.stalls.len(), 1, "{s:?}");
    assert_eq!(s.stalls[0].samples, 9);
    let s = summarize(&run(40, episodes(9, 6), 2), 5, name);
    assert_eq!(s.stalls[0].samples, 9, "{s:?}");
    // Of two as long, the first.
    let s = summarize(&run(40, episodes(6, 6), 2), 5, name);
    assert_eq!(s.stalls[0].from_ms, 400, "{s:?}");
}

#[test]
fn heavy_host_contention_is_named_in_the_report() {
    // CPU 0's host thread waits most of every other interval: 2 CPUs × 19 intervals, 10 lost.
    let mut r = run(20, |_, _| (100_000_000, 1, 0), 2);
    let mut wait = 0;
    for (i, s) in r.samples.iter_mut().enumerate() {
        if i % 2 == 1 && i < 20 {
            wait += 80_000_000;
        }
        s.cpus[0].host_wait_ns = Some(wait);
    }
    let s = summarize(&r, 5, name);
    assert_eq!((s.preempted_intervals, s.cpu_intervals), (10, 38), "{s:?}");
    let share = s.host_contention().expect("26% is named");
    assert!((share - 10.0 / 38.0).abs() < 1e-9);
    assert!(
        s.describe()
            .contains("host contention: in 26% of CPU-intervals"),
        "{}",
        s.describe()
    );
    // Under a tenth: not named.
    let quiet = summarize(&run(20, |_, _| (100_000_000, 1, 0), 2), 5, name);
    assert_eq!(quiet.host_contention(), None);
    assert!(!quiet.describe().contains("host contention"));
    // No interval measured: nothing to name, whatever the (inconsistent) lost count says.
    let mut none = quiet.clone();
    none.cpu_intervals = 0;
    none.preempted_intervals = 3;
    assert_eq!(none.host_contention(), None);
}

#[test]
fn samples_before_the_runqueues_exist_are_ignored() {
    let mut r = run(20, |_, _| (100_000_000, 1, 0), 2);
    for s in r.samples.iter_mut().take(5) {
        s.cpus.iter_mut().for_each(|c| {
            c.clock = 0;
            c.nr_running = 9;
        });
    }
    r.samples[6].cpus[0].local_dsq = Some(70_000);
    let s = summarize(&r, 5, name);
    assert_eq!(s.uninitialized_samples, 6);
    assert_eq!(s.peak_imbalance_ratio, Some(1.0));
}

#[test]
fn imbalance_and_dsq_depth_count_only_when_sustained() {
    // 8 tasks against 1 on two CPUs for 6 samples; a one-sample spike of 20.
    let r = run(
        30,
        |i, c| match (c, i) {
            (0, 5..=10) => (100_000_000, 8, 60),
            (0, 20) => (100_000_000, 20, 200),
            _ => (100_000_000, 1, 0),
        },
        2,
    );
    let s = summarize(&r, 5, name);
    assert_eq!(s.max_imbalance_ratio, Some(8.0));
    assert_eq!(s.peak_imbalance_ratio, Some(20.0));
    assert_eq!(s.max_local_dsq_depth, Some(60));
    assert_eq!(s.peak_local_dsq_depth, Some(200));
    let f: Vec<String> = findings(&s, &ALL).into_iter().map(|d| d.message).collect();
    assert_eq!(
        f,
        [
            "runqueue imbalance 8.0 (max/min tasks per CPU) held for 5 samples > 4.0",
            "a local DSQ held 60 or more tasks for 5 samples > 50"
        ]
    );
    // At the limits: nothing.
    let lim = MonitorLimits {
        max_imbalance_ratio: Some(8.0),
        max_local_dsq_depth: Some(60),
        fail_on_stall: true,
    };
    assert!(findings(&s, &lim).is_empty());
    // 7 samples required: the 6-sample episode no longer counts, only the baseline.
    let s7 = summarize(&r, 7, name);
    assert_eq!(s7.max_imbalance_ratio, Some(1.0));
}

#[test]
fn cpus_not_brought_up_do_not_count_toward_imbalance() {
    let mut r = run(10, |_, _| (100_000_000, 2, 0), 3);
    for s in &mut r.samples {
        s.cpus[2].clock = 0;
        s.cpus[2].nr_running = 0;
    }
    assert_eq!(summarize(&r, 5, name).max_imbalance_ratio, Some(1.0));
}

#[test]
fn nothing_sampled_says_why() {
    let r = Recording {
        period_ms: 100,
        unavailable: Some("monitor unavailable: no vmlinux".into()),
        ..Default::default()
    };
    let s = summarize(&r, 5, name);
    assert_eq!(s.total_samples, 0);
    assert_eq!(
        s.unavailable.as_deref(),
        Some("monitor unavailable: no vmlinux")
    );
    assert_eq!(s.max_imbalance_ratio, None);
    assert!(findings(&s, &ALL).is_empty());
}

#[test]
fn sustained_is_the_best_windows_minimum() {
    assert_eq!(sustained(&[1, 5, 6, 2, 9], 2), Some(5));
    assert_eq!(sustained(&[1, 5, 6, 2, 9], 1), Some(9));
    assert_eq!(sustained(&[1, 5], 3), None);
    assert_eq!(sustained::<u32>(&[], 1), None);
}

#[test]
fn limits_come_from_the_merged_thresholds() {
    let a = crate::assert::Assert {
        max_imbalance_ratio: Some(3.5),
        max_local_dsq_depth: Some(17),
        fail_on_stall: Some(true),
        ..Default::default()
    };
    assert_eq!(
        MonitorLimits::of(&a),
        MonitorLimits {
            max_imbalance_ratio: Some(3.5),
            max_local_dsq_depth: Some(17),
            fail_on_stall: true,
        }
    );
    // fail_on_stall unset is off.
    assert!(!MonitorLimits::of(&crate::assert::Assert::default()).fail_on_stall);
}
