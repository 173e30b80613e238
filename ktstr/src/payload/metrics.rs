//! What a payload reports: its output format, the metrics read from it, and the checks that
//! gate on them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a payload reports its results.
///
/// (`LlmExtract`, metrics read from free text by a local model, is not available: it needs the
/// model cache, which ktstr does not have yet. Naming it fails to compile.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Only the exit code counts; no metrics.
    #[default]
    ExitCode,
    /// Stdout is a JSON document: each numeric leaf is a metric named by its dotted path
    /// (`jobs.0.read.iops`, `thread.1.max`).
    Json,
}

/// Which way a metric is better (for comparisons and reports).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Polarity {
    /// Larger is better (throughput).
    HigherBetter,
    /// Smaller is better (latency).
    LowerBetter,
    /// Closest to the value is best.
    TargetValue(f64),
    /// No preference.
    Unknown,
}

/// What a metric means: its name (a dotted path), polarity and unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricHint {
    /// Dotted path of the metric.
    pub name: &'static str,
    /// Which way is better.
    pub polarity: Polarity,
    /// Unit, for display (`"us"`, `"ops/s"`).
    pub unit: &'static str,
}

/// A gate on a payload's result; a failed one fails the case with a `Benchmark` detail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    /// The metric is at least `value`.
    Min {
        /// Dotted path.
        metric: &'static str,
        /// Lower bound (inclusive).
        value: f64,
    },
    /// The metric is at most `value`.
    Max {
        /// Dotted path.
        metric: &'static str,
        /// Upper bound (inclusive).
        value: f64,
    },
    /// The metric lies in `lo..=hi`.
    Range {
        /// Dotted path.
        metric: &'static str,
        /// Lower bound (inclusive).
        lo: f64,
        /// Upper bound (inclusive).
        hi: f64,
    },
    /// The metric was reported at all.
    Exists(&'static str),
    /// The payload exited with this code. Without one, a payload that was not killed must
    /// exit 0.
    ExitCodeEq(i32),
}

/// One finished payload run as the sidecar records it (`metrics`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PayloadMetrics {
    /// The run's position among the case's payload runs, in start order.
    pub payload_index: usize,
    /// The payload's name.
    pub name: String,
    /// Metrics by dotted path.
    pub metrics: BTreeMap<String, f64>,
    /// Its exit code; `None` when a signal ended it (a kill, a crash).
    pub exit_code: Option<i32>,
}

/// The metrics in a payload's stdout, or why there are none to read.
pub fn extract_metrics(
    format: OutputFormat,
    stdout: &[u8],
) -> Result<BTreeMap<String, f64>, String> {
    match format {
        OutputFormat::ExitCode => Ok(BTreeMap::new()),
        OutputFormat::Json => {
            let text = String::from_utf8_lossy(stdout);
            let doc = parse_json_document(&text)?;
            let mut out = BTreeMap::new();
            flatten(&doc, &mut String::new(), &mut out);
            Ok(out)
        }
    }
}

/// The JSON document in `text`: all of it, or else the span from the first `{` to the last
/// `}` (programs often print a banner before their JSON).
fn parse_json_document(text: &str) -> Result<serde_json::Value, String> {
    let whole = serde_json::from_str::<serde_json::Value>(text.trim());
    if let Ok(v) = whole {
        return Ok(v);
    }
    let span = text
        .find('{')
        .zip(text.rfind('}'))
        .filter(|(a, b)| a < b)
        .map(|(a, b)| &text[a..=b]);
    match span.map(serde_json::from_str::<serde_json::Value>) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(format!("its output is not JSON ({e})")),
        None if text.trim().is_empty() => Err("it printed nothing (JSON expected)".to_string()),
        None => Err(format!(
            "its output is not JSON (starts {:?})",
            text.chars().take(60).collect::<String>()
        )),
    }
}

fn flatten(v: &serde_json::Value, path: &mut String, out: &mut BTreeMap<String, f64>) {
    let mut descend = |key: &str, child: &serde_json::Value, path: &mut String| {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        flatten(child, path, out);
        path.truncate(len);
    };
    match v {
        serde_json::Value::Object(m) => {
            for (k, c) in m {
                descend(k, c, path);
            }
        }
        serde_json::Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                descend(&i.to_string(), c, path);
            }
        }
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.insert(path.clone(), x);
            }
        }
        _ => {}
    }
}

/// Why each of `checks` failed for `run` (empty: all held). `killed`: the run was stopped on
/// purpose, so its exit code is not judged.
pub fn failed_checks(checks: &[Check], run: &PayloadMetrics, killed: bool) -> Vec<String> {
    let mut out = Vec::new();
    let value = |m: &str| run.metrics.get(m).copied();
    let missing = |m: &str| format!("metric {m} was not reported");
    for c in checks {
        let problem = match *c {
            Check::Min { metric, value: min } => match value(metric) {
                None => Some(missing(metric)),
                Some(v) if v < min => Some(format!("{metric} = {v} < minimum {min}")),
                _ => None,
            },
            Check::Max { metric, value: max } => match value(metric) {
                None => Some(missing(metric)),
                Some(v) if v > max => Some(format!("{metric} = {v} > maximum {max}")),
                _ => None,
            },
            Check::Range { metric, lo, hi } => match value(metric) {
                None => Some(missing(metric)),
                Some(v) if v < lo || v > hi => Some(format!("{metric} = {v} outside {lo}..={hi}")),
                _ => None,
            },
            Check::Exists(metric) => value(metric).is_none().then(|| missing(metric)),
            Check::ExitCodeEq(want) if !killed && run.exit_code != Some(want) => Some(format!(
                "exit code {} (expected {want})",
                shown_exit(run.exit_code)
            )),
            Check::ExitCodeEq(_) => None,
        };
        out.extend(problem.map(|p| format!("payload {}: {p}", run.name)));
    }
    let judged_exit = checks.iter().any(|c| matches!(c, Check::ExitCodeEq(_)));
    if !killed && !judged_exit && run.exit_code != Some(0) {
        out.push(format!(
            "payload {}: exit code {}",
            run.name,
            shown_exit(run.exit_code)
        ));
    }
    out
}

fn shown_exit(code: Option<i32>) -> String {
    code.map_or("none (ended by a signal)".to_string(), |c| c.to_string())
}

/// The first metric name `hints` repeat, if any (hint names must be unique).
pub fn repeated_hint(hints: &[MetricHint]) -> Option<&'static str> {
    hints
        .iter()
        .enumerate()
        .find(|(i, h)| hints[..*i].iter().any(|o| o.name == h.name))
        .map(|(_, h)| h.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(metrics: &[(&str, f64)], exit_code: Option<i32>) -> PayloadMetrics {
        PayloadMetrics {
            payload_index: 0,
            name: "bench".into(),
            metrics: metrics.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            exit_code,
        }
    }

    #[test]
    fn json_numeric_leaves_become_dotted_metrics() {
        let out = br#"banner line
{"thread": {"0": {"max": 120, "avg": 7.5, "cpu": 1}}, "jobs": [{"iops": 3.5e3}],
 "name": "x", "ok": true, "none": null}"#;
        let m = extract_metrics(OutputFormat::Json, out).unwrap();
        let want: BTreeMap<String, f64> = [
            ("jobs.0.iops", 3500.0),
            ("thread.0.avg", 7.5),
            ("thread.0.cpu", 1.0),
            ("thread.0.max", 120.0),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect();
        assert_eq!(m, want);
        assert!(extract_metrics(OutputFormat::ExitCode, out)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn output_that_is_not_json_says_so() {
        let e = extract_metrics(OutputFormat::Json, b"Time: 0.123\n").unwrap_err();
        assert!(e.contains("not JSON") && e.contains("Time: 0.123"), "{e}");
        let e = extract_metrics(OutputFormat::Json, b"  \n").unwrap_err();
        assert!(e.contains("printed nothing"), "{e}");
        let e = extract_metrics(OutputFormat::Json, b"{\"a\": 1,}").unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
    }

    #[test]
    fn each_check_fails_with_the_metric_and_its_bound() {
        let r = run(&[("lat.max", 80.0), ("ops", 10.0)], Some(0));
        let all = [
            Check::Max {
                metric: "lat.max",
                value: 50.0,
            },
            Check::Min {
                metric: "ops",
                value: 20.0,
            },
            Check::Range {
                metric: "ops",
                lo: 1.0,
                hi: 5.0,
            },
            Check::Exists("lat.p99"),
            Check::ExitCodeEq(2),
        ];
        assert_eq!(
            failed_checks(&all, &r, false),
            [
                "payload bench: lat.max = 80 > maximum 50",
                "payload bench: ops = 10 < minimum 20",
                "payload bench: ops = 10 outside 1..=5",
                "payload bench: metric lat.p99 was not reported",
                "payload bench: exit code 0 (expected 2)",
            ]
        );
        let held = [
            Check::Max {
                metric: "lat.max",
                value: 80.0,
            },
            Check::Min {
                metric: "ops",
                value: 10.0,
            },
            Check::Range {
                metric: "ops",
                lo: 10.0,
                hi: 10.0,
            },
            Check::Exists("ops"),
        ];
        assert!(failed_checks(&held, &r, false).is_empty());
    }

    #[test]
    fn a_payload_must_exit_0_unless_a_check_says_otherwise_or_it_was_killed() {
        let crashed = run(&[], None);
        assert_eq!(
            failed_checks(&[], &crashed, false),
            ["payload bench: exit code none (ended by a signal)"]
        );
        assert!(failed_checks(&[], &crashed, true).is_empty());
        assert!(failed_checks(&[Check::ExitCodeEq(3)], &run(&[], Some(3)), false).is_empty());
        assert!(failed_checks(&[Check::ExitCodeEq(3)], &crashed, true).is_empty());
    }

    #[test]
    fn hint_names_must_be_unique() {
        let h = |name| MetricHint {
            name,
            polarity: Polarity::Unknown,
            unit: "",
        };
        assert_eq!(repeated_hint(&[h("a"), h("b")]), None);
        assert_eq!(repeated_hint(&[h("a"), h("b"), h("a")]), Some("a"));
    }
}
