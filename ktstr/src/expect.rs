//! Named failure expectations: `expect_err = "Kind: text"`, judged the same way by the
//! harness (at run time) and by `stats`/`replay`/`compare` (from sidecars).
//!
//! A named expectation is met when some failure reason is of `Kind` and contains `text`, and
//! every other reason is of `Kind` too, or of a kind the pattern allows with
//! `"Kind: text; allow Kind2, Kind3"` (for a fault that really causes two findings). A case
//! that failed with the expected diagnosis *and* something unexpected has not proven that its
//! detector alone caught the fault. A pattern without a leading kind (`"stall detected"`)
//! matches any reason containing it and restricts nothing else.

/// A parsed `expect_err` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation<'a> {
    /// The expected kind, when the pattern names one.
    pub kind: Option<&'a str>,
    /// Text the matching reason's message must contain.
    pub text: &'a str,
    /// Other kinds allowed beside it.
    pub allowed: Vec<&'a str>,
}

use crate::assert::AssertDetail;

fn is_kind(k: &str) -> bool {
    !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric())
}

/// A reason's kind as patterns spell it (`Starved`, `SchedulerDied`).
fn kind_name(d: &AssertDetail) -> String {
    format!("{:?}", d.kind)
}

impl<'a> Expectation<'a> {
    /// Parses `Kind: text[; allow K1, K2]`.
    pub fn parse(pattern: &'a str) -> Self {
        let (main, allowed) = match pattern.split_once("; allow ") {
            Some((m, a)) => (
                m,
                a.split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .collect(),
            ),
            None => (pattern, Vec::new()),
        };
        match main.split_once(':') {
            Some((k, text)) if is_kind(k.trim()) => Expectation {
                kind: Some(k.trim()),
                text: text.trim(),
                allowed,
            },
            _ => Expectation {
                kind: None,
                text: main.trim(),
                allowed,
            },
        }
    }

    /// Whether `reasons` (every failure of the case) meet the expectation; the error says
    /// what was missing or what else failed.
    pub fn check(&self, reasons: &[AssertDetail]) -> Result<(), String> {
        let Some(kind) = self.kind else {
            return if reasons.iter().any(|r| r.reason().contains(self.text)) {
                Ok(())
            } else {
                Err(format!("no failure mentions {:?}", self.text))
            };
        };
        let hit = reasons
            .iter()
            .any(|r| kind_name(r) == kind && r.message.contains(self.text));
        if !hit {
            return Err(format!("no {kind} failure mentions {:?}", self.text));
        }
        let extra: Vec<&AssertDetail> = reasons
            .iter()
            .filter(|r| {
                let k = kind_name(r);
                k != kind && !self.allowed.contains(&k.as_str())
            })
            .collect();
        if extra.is_empty() {
            return Ok(());
        }
        let lines: Vec<String> = extra.iter().map(|r| r.reason()).collect();
        let mut kinds: Vec<String> = extra.iter().map(|r| kind_name(r)).collect();
        kinds.dedup();
        Err(format!(
            "it also failed with {} (if the fault really causes that too, allow its kind: \
             \"{kind}: {}; allow {}\")",
            lines.join(" | "),
            self.text,
            kinds.join(", ")
        ))
    }
}

/// Whether a failed case's `reasons` meet `pattern` (see the module docs).
pub fn check(pattern: &str, reasons: &[AssertDetail]) -> Result<(), String> {
    Expectation::parse(pattern).check(reasons)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reason from its `Kind: message` line.
    fn parse_reason(line: &str) -> AssertDetail {
        let (k, m) = line.split_once(": ").unwrap();
        AssertDetail {
            kind: serde_json::from_str(&format!("\"{k}\"")).unwrap(),
            message: m.to_string(),
        }
    }

    #[test]
    fn a_named_diagnosis_must_be_present_and_alone() {
        let r = |v: &[&str]| v.iter().map(|s| parse_reason(s)).collect::<Vec<_>>();
        let stall = "SchedulerDied: stall detected: sh[1] failed to run for 4.1s";
        let starved = "Starved: worker 3 made no progress";
        assert!(check("SchedulerDied: stall detected", &r(&[stall])).is_ok());
        assert!(check("Starved:", &r(&[starved])).is_ok());
        assert!(check("SchedulerDied: injected crash", &r(&[stall])).is_err());
        assert!(check("Unfair: stall detected", &r(&[stall])).is_err());
        assert!(check("anything", &[]).is_err());
        // The right diagnosis beside an unexpected one is not proof.
        let e = check("SchedulerDied: stall detected", &r(&[stall, starved])).unwrap_err();
        assert!(
            e.contains("also failed with Starved") && e.contains("; allow Starved"),
            "{e}"
        );
        // ... unless the pattern allows that kind.
        assert!(check(
            "SchedulerDied: stall detected; allow Starved, Stuck",
            &r(&[stall, starved])
        )
        .is_ok());
        // A reason without a kind (a panic, no verdict) is never allowed implicitly.
        let e = check("Starved:", &r(&[starved, "GuestPanic: Oops"])).unwrap_err();
        assert!(e.contains("GuestPanic: Oops"), "{e}");
        // A pattern without a kind matches text anywhere and restricts nothing else.
        assert!(check("failed to run for", &r(&[stall, starved])).is_ok());
        assert_eq!(
            Expectation::parse("Unfair: cg1; allow Stuck"),
            Expectation {
                kind: Some("Unfair"),
                text: "cg1",
                allowed: vec!["Stuck"]
            }
        );
    }
}
