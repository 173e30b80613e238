//! Replays every input kept under `fuzz/corpus/<target>/` (seeds, what the fuzzer found
//! interesting, and former crashes) through the properties the fuzz targets check, on the
//! stable toolchain: the fuzzing of `bash scripts/fuzz` stays in force in every test run.

use std::path::PathBuf;

type Check = fn(&[u8]);

/// The ktstr package's directory: nextest's (remapped, for an archive run on another machine)
/// at run time, else where it was built.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

const TARGETS: &[(&str, Check)] = &[
    ("cpio", ktstr::fuzz_props::cpio),
    ("elf", ktstr::fuzz_props::elf),
    ("frames", ktstr::fuzz_props::frames),
    ("kconfig", ktstr::fuzz_props::kconfig),
    ("kernel_spec", ktstr::fuzz_props::kernel_spec),
    ("policy", ktstr::fuzz_props::policy),
    ("replay_filter", ktstr::fuzz_props::replay_filter),
    ("sidecar", ktstr::fuzz_props::sidecar),
    ("topology", ktstr::fuzz_props::topology),
];

#[test]
fn every_corpus_input_keeps_its_property() {
    let root = manifest_dir().join("../fuzz/corpus");
    let mut total = 0;
    for (name, check) in TARGETS {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("the corpus of fuzz target {name} ({}): {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "fuzz target {name} has no corpus in {}",
            dir.display()
        );
        for f in &files {
            // (A fuzzer running beside the test may replace inputs as it reduces them.)
            let Ok(data) = std::fs::read(f) else {
                continue;
            };
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(
                r.is_ok(),
                "fuzz target {name}: input {} breaks its property",
                f.display()
            );
        }
        total += files.len();
    }
    eprintln!(
        "replayed {total} corpus inputs of {} fuzz targets",
        TARGETS.len()
    );
}

#[test]
fn every_fuzz_target_is_replayed() {
    let dir = manifest_dir().join("../fuzz/fuzz_targets");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_string()
        })
        .collect();
    on_disk.sort();
    let listed: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(
        on_disk, listed,
        "fuzz/fuzz_targets and this test's TARGETS must agree"
    );
}
