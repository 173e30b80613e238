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
