//! `cargo ktstr` subcommands that do not boot VMs.

mod common;

use common::{ktstr, text};

#[test]
fn show_thresholds_prints_every_field_and_suggests_names() {
    let o = ktstr(&["show-thresholds", "spinners_progress"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("test: spinners_progress"), "{out}");
    assert!(out.contains("max_gap_ms: "), "{out}");
    assert!(out.contains("max_throughput_cv: none"), "{out}");
    let o = ktstr(&["show-thresholds", "spinner_progress"], &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("did you mean spinners_progress"), "{err}");
    let o = ktstr(&["show-thresholds", "eevdf::spinners_progress"], &[]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("strip the `<binary>::` prefix"), "{err}");
}

/// A cap the host cannot give, a malformed KTSTR_CPU_CAP, and a cap beside
/// KTSTR_BYPASS_LLC_LOCKS are refused before any kernel or initramfs is touched.
#[test]
fn impossible_cpu_caps_are_refused_up_front() {
    let shell = |extra: &[&str], envs: &[(&str, &str)]| {
        let mut args = vec!["shell", "--no-perf-mode", "--exec", "true"];
        args.extend_from_slice(extra);
        let o = ktstr(&args, envs);
        (o.status.code(), text(&o).1)
    };
    let (code, err) = shell(&["--cpu-cap", "100000"], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--cpu-cap 100000: must be between 1 and the"),
        "{err}"
    );
    let (code, err) = shell(&[], &[("KTSTR_CPU_CAP", "lots")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("KTSTR_CPU_CAP=\"lots\" is not a CPU count"),
        "{err}"
    );
    let (code, err) = shell(&["--cpu-cap", "1"], &[("KTSTR_BYPASS_LLC_LOCKS", "1")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot be combined with KTSTR_BYPASS_LLC_LOCKS"),
        "{err}"
    );
}

#[test]
fn show_host_prints_the_live_host_context() {
    let o = ktstr(&["show-host"], &[]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    for key in [
        "cpu: ",
        "memory: ",
        "transparent hugepages: ",
        "kernel: Linux ",
        "sched tunables (",
    ] {
        assert!(out.contains(key), "no {key:?} in:\n{out}");
    }
}
