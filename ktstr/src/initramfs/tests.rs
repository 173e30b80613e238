//! End-to-end tests of [`super::build`]: real host binaries, include trees, cache behaviour.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::*;

/// Follows symlinks inside the archive (as the guest kernel would) to the regular file at
/// `path`. Later entries override earlier ones, as when the kernel unpacks them in order.
fn resolve<'a>(entries: &'a [CpioEntry], path: &str) -> Option<&'a CpioEntry> {
    let by_name: HashMap<&str, &CpioEntry> = entries
        .iter()
        .filter(|e| !e.is_trailer())
        .map(|e| (e.name.as_str(), e))
        .collect();
    let mut queue: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
    let mut cur: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = queue.pop() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => cur.push(c),
        }
        let e = by_name.get(cur.join("/").as_str())?;
        if e.is_symlink() {
            hops += 1;
            assert!(hops < 40, "symlink loop at {path}");
            let target = String::from_utf8(e.data.clone()).unwrap();
            cur.pop();
            if target.starts_with('/') {
                cur.clear();
            }
            queue.extend(target.split('/').rev().map(str::to_owned));
        }
    }
    by_name
        .get(cur.join("/").as_str())
        .copied()
        .filter(|e| e.is_file())
}

fn include_tree(root: &Path) -> PathBuf {
    let d = root.join("payload");
    fs::create_dir_all(d.join("sub/deeper")).unwrap();
    fs::write(d.join("top.txt"), b"top").unwrap();
    fs::write(d.join("sub/deeper/x.cfg"), b"deep").unwrap();
    fs::write(d.join("sub/empty"), b"").unwrap();
    std::os::unix::fs::symlink("deeper/x.cfg", d.join("sub/link")).unwrap();
    d
}

fn spec_for(root: &Path, busybox: bool) -> InitramfsSpec {
    let single = root.join("single.sh");
    if !single.exists() {
        fs::write(&single, b"#!/bin/sh\necho single\n").unwrap();
    }
    InitramfsSpec {
        init: std::env::current_exe().unwrap(),
        binaries: vec![],
        include_files: vec![include_tree_once(root), single],
        busybox,
        files: vec![("/case/desc.json".into(), b"{\"case\":1}".to_vec(), 0o644)],
    }
}

fn include_tree_once(root: &Path) -> PathBuf {
    let d = root.join("payload");
    if d.exists() {
        d
    } else {
        include_tree(root)
    }
}

fn have_busybox() -> bool {
    BUSYBOX_PATHS.iter().any(|p| Path::new(p).is_file())
}

#[test]
fn full_build_has_everything_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let busybox = have_busybox();
    if !busybox {
        eprintln!("note: busybox not installed; building without it");
    }
    let spec = spec_for(tmp.path(), busybox);
    let built = build(&spec, &tmp.path().join("cache")).unwrap();
    let bytes = fs::read(&built.path).unwrap();
    assert_eq!(bytes.len() as u64, built.uncompressed_bytes);
    let e = read_newc(&bytes).unwrap();

    // Two archives, each ending in a trailer; the sentinel is the last entry before the last
    // trailer, and it lives in the second (per-case) archive.
    let trailers: Vec<usize> = (0..e.len()).filter(|&i| e[i].is_trailer()).collect();
    assert_eq!(trailers.len(), 2);
    assert_eq!(*trailers.last().unwrap(), e.len() - 1);
    let sentinel = &e[e.len() - 2];
    assert_eq!(sentinel.name, &SENTINEL_PATH[1..]);
    assert_eq!(sentinel.archive, 1);

    // /init is the test binary without its debug information, executable.
    let init = resolve(&e, "/init").unwrap();
    assert_eq!(init.mode, 0o100_755);
    let exe = fs::read(std::env::current_exe().unwrap()).unwrap();
    assert_eq!(&init.data[..4], b"\x7fELF");
    assert!(init.data.len() < exe.len(), "stripped of DWARF");

    // Loader and libc at host paths, with their real content.
    let loader = resolve(&e, "/lib64/ld-linux-x86-64.so.2").expect("loader");
    assert_eq!(
        loader.data,
        fs::read("/lib64/ld-linux-x86-64.so.2").unwrap()
    );
    let libc_host = LibResolver::host()
        .closure(&std::env::current_exe().unwrap(), Path::new("/init"))
        .unwrap()
        .libraries
        .into_iter()
        .find(|p| p.host.ends_with("libc.so.6"))
        .unwrap();
    let libc = resolve(&e, libc_host.host.to_str().unwrap()).expect("libc");
    assert_eq!(
        libc.data.len() as u64,
        fs::metadata(&libc_host.host).unwrap().len()
    );

    // Include files: the tree keeps its structure and its symlink.
    let inc = |p: &str| format!("{}/{p}", INCLUDE_DIR);
    assert_eq!(resolve(&e, &inc("payload/top.txt")).unwrap().data, b"top");
    assert_eq!(
        resolve(&e, &inc("payload/sub/deeper/x.cfg")).unwrap().data,
        b"deep"
    );
    assert!(resolve(&e, &inc("payload/sub/empty"))
        .unwrap()
        .data
        .is_empty());
    assert_eq!(resolve(&e, &inc("payload/sub/link")).unwrap().data, b"deep");
    assert_eq!(resolve(&e, &inc("single.sh")).unwrap().mode & 0o777, 0o644);

    // Case file in the second archive.
    let desc = resolve(&e, "/case/desc.json").unwrap();
    assert_eq!(desc.archive, 1);
    assert_eq!(desc.data, b"{\"case\":1}");

    // Every entry's parent directory came earlier (or the entry is top level).
    let mut seen: HashMap<(usize, &str), bool> = HashMap::new();
    for x in e.iter().filter(|x| !x.is_trailer()) {
        if let Some((parent, _)) = x.name.rsplit_once('/') {
            assert!(
                seen.get(&(x.archive, parent)).copied().unwrap_or(false),
                "{} before its directory",
                x.name
            );
        }
        seen.insert((x.archive, x.name.as_str()), x.is_dir());
    }

    if busybox {
        let bb = resolve(&e, "/bin/busybox").unwrap();
        assert_eq!(bb.mode & 0o777, 0o755);
        let sh = resolve(&e, "/bin/sh").expect("sh applet");
        assert_eq!(sh.ino, bb.ino, "/bin/sh resolves to busybox");
    }
}

#[test]
fn cache_hit_is_identical_and_inputs_invalidate() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let spec = spec_for(tmp.path(), false);
    let first = build(&spec, &cache).unwrap();
    assert!(!first.cache_hit);
    let first_bytes = fs::read(&first.path).unwrap();

    let second = build(&spec, &cache).unwrap();
    assert!(second.cache_hit);
    assert_eq!(second.base, first.base);
    assert_ne!(second.path, first.path, "each build owns its archive");
    assert_eq!(fs::read(&second.path).unwrap(), first_bytes);
    // The per-case archive goes with its owner; the cached base stays.
    // (The archive is a memfd: its /proc/self/fd path may name another file once dropped, so
    // compare the file's identity.)
    use std::os::unix::fs::MetadataExt;
    let id = |p: &std::path::Path| fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let second_id = id(&second.path);
    let second_path = second.path.clone();
    drop(second);
    assert_ne!(id(&second_path), second_id);
    assert!(first.path.exists() && first.base.exists());

    // A different case part reuses the base but yields a different final archive.
    let mut other = spec.clone();
    other.files[0].1 = b"{\"case\":2}".to_vec();
    let third = build(&other, &cache).unwrap();
    assert!(third.cache_hit);
    assert_eq!(third.base, first.base);
    assert_ne!(fs::read(&third.path).unwrap(), first_bytes);

    // Touching an include file changes the key: rebuilt, new base.
    let f = tmp.path().join("payload/top.txt");
    fs::File::options()
        .append(true)
        .open(&f)
        .unwrap()
        .set_modified(SystemTime::now() + Duration::from_secs(10))
        .unwrap();
    let fourth = build(&spec, &cache).unwrap();
    assert!(!fourth.cache_hit);
    assert_ne!(fourth.base, first.base);
    // The superseded base was removed.
    assert!(!first.base.exists());

    // A file added to an include directory is noticed too.
    fs::write(tmp.path().join("payload/sub/new"), b"new").unwrap();
    let fifth = build(&spec, &cache).unwrap();
    assert!(!fifth.cache_hit);
    let e = read_newc(&fs::read(&fifth.path).unwrap()).unwrap();
    assert!(resolve(&e, "/include-files/payload/sub/new").is_some());
}

#[test]
fn concurrent_builds_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let spec = spec_for(tmp.path(), false);
    let results: Vec<Built> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| build(&spec, &cache).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let bytes = fs::read(&results[0].path).unwrap();
    for r in &results {
        assert_eq!(r.base, results[0].base, "one base for all");
        assert_eq!(fs::read(&r.path).unwrap(), bytes);
    }
    // No temporary files left behind.
    for e in fs::read_dir(&cache).unwrap() {
        let name = e.unwrap().file_name();
        assert!(!name.to_string_lossy().contains(".tmp-"), "{name:?}");
    }
}

#[test]
fn errors_are_specific() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let mut spec = spec_for(tmp.path(), false);
    spec.include_files.push(tmp.path().join("does-not-exist"));
    let err = build(&spec, &cache).unwrap_err();
    assert!(matches!(err, InitramfsError::MissingInput { .. }), "{err}");
    assert!(err.to_string().contains("does-not-exist"));

    let mut spec = spec_for(tmp.path(), false);
    spec.include_files
        .push(tmp.path().join("payload/sub/../top.txt"));
    spec.include_files.push(tmp.path().join("payload/top.txt"));
    let err = build(&spec, &cache).unwrap_err();
    assert!(matches!(err, InitramfsError::PathConflict { .. }), "{err}");

    let mut spec = spec_for(tmp.path(), false);
    spec.files.push((SENTINEL_PATH.into(), vec![], 0o644));
    assert!(matches!(
        build(&spec, &cache).unwrap_err(),
        InitramfsError::InvalidGuestPath { .. }
    ));

    let mut spec = spec_for(tmp.path(), false);
    spec.init = tmp.path().join("no-init");
    assert!(matches!(
        build(&spec, &cache).unwrap_err(),
        InitramfsError::MissingInput { .. }
    ));
}

#[test]
fn extra_binaries_land_in_bin_with_libraries() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = spec_for(tmp.path(), false);
    spec.binaries.push(PathBuf::from("/bin/ls"));
    if !spec.binaries[0].is_file() {
        return;
    }
    let built = build(&spec, &tmp.path().join("cache")).unwrap();
    let e = read_newc(&fs::read(&built.path).unwrap()).unwrap();
    let ls = resolve(&e, "/bin/ls").unwrap();
    assert_eq!(ls.data, fs::read("/bin/ls").unwrap());
    for lib in LibResolver::host()
        .closure(Path::new("/bin/ls"), Path::new("/bin/ls"))
        .unwrap()
        .libraries
    {
        assert!(
            resolve(&e, lib.guest.to_str().unwrap()).is_some(),
            "{lib:?}"
        );
    }
}

/// Reports build time and size for the test binary + busybox (run with --nocapture).
#[test]
fn report_build_time_and_size() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let spec = InitramfsSpec {
        init: std::env::current_exe().unwrap(),
        busybox: have_busybox(),
        files: vec![("/case.json".into(), b"{}".to_vec(), 0o644)],
        ..Default::default()
    };
    let t = Instant::now();
    let cold = build(&spec, &cache).unwrap();
    let cold_t = t.elapsed();
    let t = Instant::now();
    let warm = build(&spec, &cache).unwrap();
    let warm_t = t.elapsed();
    let mut case2 = spec.clone();
    case2.files[0].1 = b"{\"n\":2}".to_vec();
    let t = Instant::now();
    let new_case = build(&case2, &cache).unwrap();
    let new_case_t = t.elapsed();
    assert!(warm.cache_hit && new_case.cache_hit);
    // The layout, minus busybox applet links.
    for e in read_newc(&fs::read(&new_case.path).unwrap()).unwrap() {
        if !(e.is_symlink() && e.data == b"busybox") {
            let target = String::from_utf8_lossy(&e.data);
            let link = if e.is_symlink() {
                format!(" -> {target}")
            } else {
                String::new()
            };
            eprintln!(
                "  [{}] {:06o} {:>9} {}{link}",
                e.archive,
                e.mode,
                e.data.len(),
                e.name
            );
        }
    }
    eprintln!(
        "initramfs (test binary {} MB + busybox): {} bytes; cold {:?}, cached {:?}, cached base + new case {:?}",
        fs::metadata(&spec.init).unwrap().len() >> 20,
        cold.uncompressed_bytes,
        cold_t,
        warm_t,
        new_case_t
    );
}
