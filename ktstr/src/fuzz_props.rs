//! The properties our fuzz targets check (`fuzz/`, run with `bash scripts/fuzz`), one function
//! per parser of outside input. They live here, not in the fuzz crate, so that the stable test
//! suite replays every corpus entry through the same checks (`tests/fuzz_corpus.rs`): a crash
//! the fuzzer once found stays a regression test without nightly. Each function must not panic
//! for any input except on a broken property.

/// The newc cpio reader (`cargo ktstr initramfs --list` and our own archive checks): any bytes
/// are refused or read into entries that lie within the input.
pub fn cpio(data: &[u8]) {
    if let Ok(entries) = crate::initramfs::read_newc(data) {
        let total: usize = entries.iter().map(|e| e.data.len()).sum();
        assert!(total <= data.len());
    }
}

/// The ELF dependency walker's parser: host binaries are outside input; any bytes give the
/// dynamic-linking facts or an error.
pub fn elf(data: &[u8]) {
    if let Ok(info) = crate::initramfs::elf_deps::parse_elf(data) {
        for n in &info.needed {
            assert!(!n.contains('\0'));
        }
    }
}

/// The result channel as a hostile guest may leave it: any region is read into whole,
/// checked frames or stopped at the first bad one, with memory bounded by the region.
pub fn frames(data: &[u8]) {
    use crate::shm::{FrameReader, FRAME_HEADER_LEN};
    let (frames, err) = FrameReader::read_all(data);
    // Frames are only returned when the whole region read cleanly.
    assert!(frames.is_empty() || err.is_none());
    let payload: usize = frames
        .iter()
        .map(|f| FRAME_HEADER_LEN + f.payload.len())
        .sum();
    assert!(payload <= data.len());
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(f.seq as usize, i);
    }
    // Reading in two polls (the host polls while the guest writes) sees the same frames.
    let mut r = FrameReader::new();
    let read = |off: u64, buf: &mut [u8]| -> std::io::Result<()> {
        let off = off as usize;
        let src = data
            .get(off..off.saturating_add(buf.len()))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    };
    let mut again = r.poll(data.len() as u64, read).unwrap_or_default();
    again.extend(r.poll(data.len() as u64, read).unwrap_or_default());
    if err.is_none() {
        assert_eq!(again.len(), frames.len());
    }
}

/// Kernel `.config` text and the IKCONFIG copy inside a kernel image: any bytes are read or
/// refused, never a panic or an unbounded allocation.
pub fn kconfig(data: &[u8]) {
    use crate::kernel::config::{extract_ikconfig, ConfigSource, KernelConfig};
    if let Some(text) = extract_ikconfig(data) {
        assert!(text.len() <= 64 << 20);
        let _ = KernelConfig::from_text(text, ConfigSource::Embedded("fuzz".into()));
    }
    let text = String::from_utf8_lossy(data).into_owned();
    let c = KernelConfig::from_text(text, ConfigSource::File("fuzz".into()));
    for opt in [
        "CONFIG_SCHED_CLASS_EXT",
        "CONFIG_DEBUG_INFO_BTF",
        "CONFIG_BPF",
    ] {
        let _ = c.is_enabled(opt);
    }
}

/// `--kernel` selectors: versions, ranges and `git+URL#REF` sources are classified or
/// refused with a reason.
pub fn kernel_spec(data: &[u8]) {
    use crate::kernel::{git, range};
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = range::Version::parse(s);
    let _ = range::is_range(s);
    match git::parse_spec(s) {
        Ok((url, r)) => {
            assert!(!r.is_empty());
            let _ = git::classify(&url);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let _ = git::classify(s);
}

/// `stats compare --policy FILE`: any text is refused with a reason or gives a policy whose
/// gates are never negative.
pub fn policy(data: &[u8]) {
    use crate::compare::Policy;
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match Policy::parse(s) {
        Ok(p) => {
            for m in crate::metrics::METRICS {
                let g = p.rel_gate(m);
                assert!(g >= 0.0 || g.is_nan(), "{} gate {g}", m.name);
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// `replay`'s nextest filterset from sidecar test names: whatever the names, every term of the
/// expression is `test(/^NAME\//)` for an identifier NAME, so a hostile name cannot widen or
/// change the selection.
pub fn replay_filter(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let names: Vec<&str> = s.split('\n').collect();
    let (expr, refused) = crate::runs::replay_filterset(names.iter().copied());
    let terms: Vec<&str> = if expr.is_empty() {
        vec![]
    } else {
        expr.split(" | ").collect()
    };
    for t in &terms {
        let name = t
            .strip_prefix("test(/^")
            .and_then(|r| r.strip_suffix("\\//)"))
            .unwrap_or_else(|| panic!("malformed term {t:?}"));
        assert!(crate::runs::is_identifier(name), "{name:?}");
        assert!(names.contains(&name));
    }
    for r in &refused {
        assert!(!crate::runs::is_identifier(r));
    }
    assert!(terms.len() + refused.len() <= names.len());
}

/// Sidecar JSON (stats, compare, replay read other runs' files): any bytes are refused or
/// accepted, and an accepted sidecar can be judged and written back.
pub fn sidecar(data: &[u8]) {
    use crate::sidecar::Sidecar;
    if let Ok(s) = serde_json::from_slice::<Sidecar>(data) {
        let _ = crate::runs::verdict(&s);
        let text = serde_json::to_string(&s).expect("a parsed sidecar serialises");
        let back: Sidecar = serde_json::from_str(&text).expect("and parses again");
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }
}

/// Topology strings (`--topology`, case names): any text is refused with a reason or accepted,
/// and an accepted topology survives its own label and CLI forms.
pub fn topology(data: &[u8]) {
    use crate::Topology;
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [Topology::parse(s), Topology::parse_label(s)] {
        match parsed {
            Ok(t) => {
                assert!(t.num_cpus() >= 1);
                assert_eq!(Topology::parse(&t.label()).as_ref(), Ok(&t));
                let csv = format!("{},{},{},{}", t.numa_nodes, t.llcs, t.cores, t.threads);
                assert_eq!(Topology::parse(&csv).as_ref(), Ok(&t));
                for cpu in 0..t.num_cpus() {
                    let _ = t.place(cpu);
                    let _ = t.apic_id(cpu);
                }
            }
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
