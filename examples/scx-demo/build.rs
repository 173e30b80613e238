//! Compiles `src/bpf/scx_demo.bpf.c` with clang and generates the libbpf-rs
//! skeleton into `OUT_DIR`.
//!
//! The compiler is `$SCX_DEMO_CLANG`, else `$CLANG`, else the first of
//! `clang-19`, `clang` found on `PATH` (Debian installs clang-19 without the
//! unversioned name).

use std::env;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

const SRC: &str = "src/bpf/scx_demo.bpf.c";

fn find_clang() -> PathBuf {
    for var in ["SCX_DEMO_CLANG", "CLANG"] {
        if let Some(v) = env::var_os(var) {
            return PathBuf::from(v);
        }
    }
    let path = env::var_os("PATH").unwrap_or_default();
    for name in ["clang-19", "clang"] {
        for dir in env::split_paths(&path) {
            let cand = dir.join(name);
            if cand.is_file() {
                return cand;
            }
        }
    }
    // Let the builder report the missing compiler.
    PathBuf::from("clang")
}

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let skel = out.join("scx_demo.skel.rs");
    let bpf_dir = Path::new("src/bpf");

    SkeletonBuilder::new()
        .source(SRC)
        .clang(find_clang())
        .clang_args([
            "-I".as_ref(),
            bpf_dir.as_os_str(),
            "-Wall".as_ref(),
            "-Wno-unused-function".as_ref(),
        ])
        .build_and_generate(&skel)
        .unwrap_or_else(|e| panic!("building the BPF skeleton from {SRC}: {e:#}"));

    println!("cargo:rerun-if-changed=src/bpf");
    for var in ["SCX_DEMO_CLANG", "CLANG"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
}
