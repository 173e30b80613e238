//! `cargo ktstr funify`: a one-way, deterministic anonymiser for JSON dumps (sidecars, stats,
//! scheduler dumps) so they can be shown to someone, or to an LLM, without real identifiers.
//! Every value is replaced unless the key that holds it is on the metric allowlist
//! ([`Funifier::is_metric_passthrough`]); strings become `adjective-animal` petnames, integers
//! other integers, keyed by (key, value) so cross-references inside a dump still line up.
//! Floats, booleans, null and the sentinels 0 and `u64::MAX` pass through.
//!
//! The allowlist is the text [`ALLOWLIST_EXACT`] and [`ALLOWLIST_SUFFIXES`]: the predicate
//! parses it and `funify --help` prints it, so the two cannot drift apart. ktstr's own metric
//! names ([`crate::metrics::METRICS`], [`crate::metrics::PHASE_METRICS`]) pass too, so every
//! metric a sidecar carries survives unchanged.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

use serde_json::{Map, Number, Value};
use siphasher::sip::SipHasher13;

/// Keys whose values pass through unchanged, by exact name, one category per line.
pub const ALLOWLIST_EXACT: &str = "\
structural enums: schema version type kind status state result verdict outcome phase policy
position and lifecycle: size len length depth index idx level tier rank slot capacity epoch generation
top-level counts: nr_running nr_queued nr_failed nr_switches runqueue_depth
I/O: bytes_read bytes_written io_errors
scheduling: priority nice weight prio static_prio normal_prio nvcsw nivcsw signal_nvcsw signal_nivcsw nr_threads
per-rq SCX: flags ops_qseq kick_sync nr_immed rq_clock
DSQ: nr seq
NUMA: numa_hit numa_miss numa_foreign numa_interleave_hit numa_local numa_other
SCX exit-info events: select_cpu_fallback dispatch_local_dsq_offline dispatch_keep_last enq_skip_exiting enq_skip_migration_disabled reenq_immed reenq_local_repeat refill_slice_dfl bypass_duration bypass_dispatch bypass_activate insert_not_owned sub_bypass_dispatch
BPF program runtime: cnt nsecs misses verified_insns
hardware perf: cycles instructions cache_misses branch_misses";

/// Keys whose values pass through unchanged, by how the key ends, one category per line.
pub const ALLOWLIST_SUFFIXES: &str = "\
counts: _count _total _completed _dropped _failed _skipped _throttled
rates and ratios: _per_sec _per_ms _rate _hz _ratio _fraction _pct _percent
units: _ns _us _ms _sec _seconds _bytes _kb _mb _gb _pages
statistics: _min _max _mean _avg _stddev _p50 _p90 _p95 _p99
I/O: _read _written _errors
structural and position: _kind _type _state _status _phase _verdict _outcome _version _capacity _size _depth _len _length _weight _nice _priority _index _idx _offset _generation _epoch";

/// Adjectives of the petnames (part of the output contract: changing them changes output).
const ADJECTIVES: &[&str] = &[
    "able", "amber", "ample", "brave", "brisk", "calm", "civil", "clever", "cosmic", "crisp",
    "curly", "daring", "deft", "dusty", "eager", "early", "fancy", "fast", "fond", "fresh",
    "gentle", "giddy", "glad", "golden", "grand", "happy", "hardy", "honest", "humble", "jolly",
    "keen", "kind", "lively", "loyal", "lucky", "mellow", "merry", "mighty", "modest", "neat",
    "nimble", "noble", "plucky", "polite", "proud", "quick", "quiet", "rapid", "ready", "rosy",
    "rustic", "shiny", "silent", "sleek", "snowy", "solid", "sunny", "swift", "tidy", "tender",
    "vivid", "warm", "witty", "zesty",
];

/// Animals of the petnames (part of the output contract).
const ANIMALS: &[&str] = &[
    "badger", "beaver", "bison", "bobcat", "camel", "caribou", "cheetah", "condor", "cougar",
    "coyote", "crane", "dingo", "dolphin", "eagle", "egret", "falcon", "ferret", "finch",
    "gazelle", "gecko", "gibbon", "heron", "hippo", "ibex", "impala", "jackal", "jaguar", "koala",
    "lemur", "leopard", "lynx", "magpie", "marmot", "marten", "mole", "moose", "narwhal", "newt",
    "ocelot", "orca", "osprey", "otter", "panda", "pelican", "puffin", "quail", "rabbit", "raven",
    "salmon", "seal", "shrew", "sloth", "stoat", "swan", "tapir", "tiger", "toucan", "turtle",
    "urchin", "viper", "walrus", "weasel", "wombat", "zebra",
];

/// The words after each `category:` of an allowlist text.
fn words(table: &'static str) -> impl Iterator<Item = &'static str> {
    table
        .lines()
        .filter_map(|l| l.split_once(':'))
        .flat_map(|(_, w)| w.split_whitespace())
}

/// Exact allowlisted keys: the spec's table and ktstr's own metric names.
fn exact() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        words(ALLOWLIST_EXACT)
            .chain(crate::metrics::METRICS.iter().map(|m| m.name))
            .chain(crate::metrics::PHASE_METRICS.iter().map(|m| m.name))
            .collect()
    })
}

/// Allowlisted key suffixes, parsed once.
fn suffixes() -> &'static [&'static str] {
    static LIST: OnceLock<Vec<&'static str>> = OnceLock::new();
    LIST.get_or_init(|| words(ALLOWLIST_SUFFIXES).collect())
}

/// Replaces values of a JSON document; see the module docs.
#[derive(Debug, Clone)]
pub struct Funifier {
    k0: u64,
    k1: u64,
}

impl Funifier {
    /// A funifier whose output depends only on `seed` and the input.
    pub fn with_seed(seed: &str) -> Self {
        let derive = |domain: &str| {
            let mut h = SipHasher13::new_with_keys(0x6b74_7374_725f_6675, 0x6e69_6679_5f76_3200);
            h.write(domain.as_bytes());
            h.write(&[0x1f]);
            h.write(seed.as_bytes());
            h.finish()
        };
        Funifier {
            k0: derive("k0"),
            k1: derive("k1"),
        }
    }

    /// A funifier with a key drawn fresh for this process (names change between runs).
    pub fn random() -> Self {
        let s = std::collections::hash_map::RandomState::new();
        Funifier {
            k0: s.hash_one(0u8),
            k1: s.hash_one(1u8),
        }
    }

    /// Whether values under `key` pass through: an exact allowlisted name, a key ending in an
    /// allowlisted suffix, or one of ktstr's metric names. Case-sensitive.
    pub fn is_metric_passthrough(key: &str) -> bool {
        exact().contains(key) || suffixes().iter().any(|s| key.ends_with(s))
    }

    fn hash(&self, key: &str, kind: u8, value: &str) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(key.as_bytes());
        h.write(&[0x1f, kind]);
        h.write(value.as_bytes());
        h.finish()
    }

    /// The petname for string `value` under `key`.
    pub fn petname(&self, key: &str, value: &str) -> String {
        let h = self.hash(key, b's', value);
        let a = ADJECTIVES[(h % ADJECTIVES.len() as u64) as usize];
        let b = ANIMALS[((h >> 32) % ANIMALS.len() as u64) as usize];
        format!("{a}-{b}")
    }

    fn integer(&self, key: &str, n: &Number) -> Number {
        if let Some(u) = n.as_u64() {
            if u == 0 || u == u64::MAX {
                return n.clone();
            }
            let mut h = self.hash(key, b'u', &u.to_string());
            if h == 0 || h == u64::MAX {
                h = 1; // never forge a sentinel
            }
            return Number::from(h);
        }
        match n.as_i64() {
            // Negative stays negative.
            Some(i) => Number::from(-((self.hash(key, b'i', &i.to_string()) >> 1) as i64) - 1),
            None => n.clone(),
        }
    }

    /// Funifies `v`; a top-level scalar counts as held by the empty key.
    pub fn funify(&self, v: Value) -> Value {
        self.walk("", v)
    }

    fn walk(&self, key: &str, v: Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.into_iter()
                    .map(|(k, v)| {
                        let v = self.walk(&k, v);
                        (k, v)
                    })
                    .collect::<Map<String, Value>>(),
            ),
            // Elements take the key of the array that holds them.
            Value::Array(a) => Value::Array(a.into_iter().map(|e| self.walk(key, e)).collect()),
            _ if !key.is_empty() && Self::is_metric_passthrough(key) => v,
            Value::String(s) => Value::String(self.petname(key, &s)),
            Value::Number(n) if n.is_f64() => Value::Number(n),
            Value::Number(n) => Value::Number(self.integer(key, &n)),
            other => other, // booleans and null
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_specs_example() {
        let f = Funifier::with_seed("s");
        let out = f.funify(json!({"comm": "scx_simple", "pid": 1234, "nr_running": 7}));
        let comm = out["comm"].as_str().unwrap();
        let (adj, animal) = comm.split_once('-').unwrap();
        assert!(
            ADJECTIVES.contains(&adj) && ANIMALS.contains(&animal),
            "{comm}"
        );
        assert_ne!(out["pid"], 1234);
        assert!(out["pid"].is_u64());
        assert_eq!(out["nr_running"], 7);
    }

    #[test]
    fn same_seed_same_output_and_another_seed_differs() {
        let doc = json!({"host": {"hostname": "box-17", "pid": 99}, "tags": ["a", "b"]});
        let a = Funifier::with_seed("s").funify(doc.clone());
        assert_eq!(a, Funifier::with_seed("s").funify(doc.clone()));
        assert_ne!(a, Funifier::with_seed("t").funify(doc.clone()));
        assert_ne!(Funifier::random().funify(doc.clone()), doc);
    }

    #[test]
    fn the_same_value_under_the_same_key_maps_the_same_everywhere() {
        let f = Funifier::with_seed("x");
        let out = f.funify(json!({"a": {"comm": "bash"}, "b": [{"comm": "bash"}], "c": "bash"}));
        assert_eq!(out["a"]["comm"], out["b"][0]["comm"]);
        assert_ne!(out["a"]["comm"], "bash");
    }

    #[test]
    fn passthrough_values_and_sentinels_survive() {
        let f = Funifier::with_seed("x");
        let doc = json!({
            "ratio": 0.75, "flag": true, "none": null, "kthread": 0, "unset": u64::MAX,
            "run_ms": 1234, "spread_pct": 12, "wait_p99": 5, "kind": "Starved", "nr": 3,
            "neg": -5, "list_len": 3, "work_type": "SpinWait"
        });
        let out = f.funify(doc.clone());
        for k in [
            "ratio",
            "flag",
            "none",
            "kthread",
            "unset",
            "run_ms",
            "spread_pct",
            "wait_p99",
            "kind",
            "nr",
            "list_len",
            "work_type",
        ] {
            assert_eq!(out[k], doc[k], "{k}");
        }
        assert!(out["neg"].as_i64().unwrap() < 0);
        assert_ne!(out["neg"], -5);
    }

    #[test]
    fn the_allowlist_text_is_what_the_predicate_reads() {
        for w in words(ALLOWLIST_EXACT) {
            assert!(Funifier::is_metric_passthrough(w), "{w}");
        }
        for s in words(ALLOWLIST_SUFFIXES) {
            assert!(Funifier::is_metric_passthrough(&format!("x{s}")), "{s}");
        }
        assert!(!Funifier::is_metric_passthrough("hostname"));
        assert!(!Funifier::is_metric_passthrough("Kind"), "case-sensitive");
        for m in crate::metrics::METRICS {
            assert!(Funifier::is_metric_passthrough(m.name), "{}", m.name);
        }
    }

    #[test]
    fn a_top_level_scalar_is_funified() {
        let f = Funifier::with_seed("x");
        assert_ne!(f.funify(json!("secret")), json!("secret"));
        assert_ne!(f.funify(json!(42)), json!(42));
    }
}
