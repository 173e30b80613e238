//! "Did you mean" suggestions for unknown test names.

use std::fmt;

/// A test name that is not registered, with the closest registered names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct UnknownTest {
    /// What was asked for.
    pub name: String,
    /// Closest registered names by edit distance, best first (at most 3).
    pub did_you_mean: Vec<String>,
    /// Set when `name` looked like `binary::test` (copied from nextest output): the bare name.
    pub stripped: Option<String>,
}

impl UnknownTest {
    /// Builds the error, ranking `known` names by edit distance to `name`.
    pub fn new<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Self {
        let stripped = name
            .rsplit_once("::")
            .map(|(_, bare)| bare.to_string())
            .filter(|b| !b.is_empty());
        let probe = stripped.as_deref().unwrap_or(name);
        // Only suggest names that are plausibly typos: within a third of the length (min 2).
        let limit = (probe.chars().count() / 3).max(2);
        let mut scored: Vec<(usize, &str)> = known
            .into_iter()
            .map(|k| (edit_distance(probe, k), k))
            .filter(|&(d, _)| d <= limit)
            .collect();
        scored.sort();
        scored.dedup();
        UnknownTest {
            name: name.to_string(),
            did_you_mean: scored.iter().take(3).map(|(_, k)| k.to_string()).collect(),
            stripped,
        }
    }
}

impl fmt::Display for UnknownTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no ktstr test named {:?}", self.name)?;
        if let Some(bare) = &self.stripped {
            write!(
                f,
                "; test names are bare function names: strip the `<binary>::` prefix and use {bare:?}"
            )?;
        }
        if !self.did_you_mean.is_empty() {
            write!(f, "; did you mean {}?", self.did_you_mean.join(", "))?;
        }
        write!(f, " (list test names with `cargo nextest list`)")
    }
}

/// Levenshtein distance over chars (strsim's).
pub fn edit_distance(a: &str, b: &str) -> usize {
    strsim::levenshtein(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn suggests_closest_and_strips_prefix() {
        let known = [
            "two_cgroups",
            "three_cgroups",
            "steady_llc",
            "unrelated_thing",
        ];
        let e = UnknownTest::new("two_cgroup", known);
        assert_eq!(e.did_you_mean[0], "two_cgroups");
        assert!(!e.did_you_mean.contains(&"unrelated_thing".to_string()));
        assert!(e.to_string().contains("did you mean two_cgroups"));
        let e = UnknownTest::new("ktstr::steady_llc", known);
        assert_eq!(e.stripped.as_deref(), Some("steady_llc"));
        assert_eq!(e.did_you_mean[0], "steady_llc");
        assert!(e.to_string().contains("strip the `<binary>::` prefix"));
        let e = UnknownTest::new("zzzzzzzzzzzz", known);
        assert!(e.did_you_mean.is_empty());
    }
}
