//! One host-side write into a scheduler's BPF map (the `bpf_map_write` test key): what to
//! write ([`BpfMapWrite`]), and the guest's view of whether it landed
//! ([`read_array_u32`], behind `Ctx::wait_for_map_write`).
//!
//! The host makes the write itself, through guest memory (`monitor::bpf_write`), once the
//! scheduler is enabled: a test can flip a scheduler's behaviour mid-run without the
//! scheduler's cooperation and without any guest process doing it. The guest reads the value
//! back over `bpf(2)` (hand-rolled like [`crate::bpf_progs`]: four commands), which is how a
//! body knows the write happened.

use std::os::fd::{AsRawFd, OwnedFd};

use crate::bpf_progs::{bpf, for_each_object, u32_at, BpfQueryError, ObjectKind, ATTR_SIZE};

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;
/// `BPF_MAP_TYPE_ARRAY`: the type of a BPF object's `.bss`/`.data` maps.
pub const MAP_TYPE_ARRAY: u32 = 2;
/// `struct bpf_map_info` up to and including `name` (UAPI offsets).
const INFO_SIZE: usize = 40;
const INFO_TYPE: usize = 0;
const INFO_ID: usize = 4;
const INFO_VALUE_SIZE: usize = 12;
const INFO_NAME: usize = 24;
const INFO_NAME_LEN: usize = 16;

/// One write of a u32 into entry 0 of a scheduler's BPF array map: the map whose name ends in
/// `map_name_suffix` (`".bss"`, `".data.trig"`; the kernel keeps 15 bytes of a map's name),
/// at byte `offset` of its value. Declared as a `const` and named by the test's
/// `bpf_map_write` key; the host applies it once the scheduler is enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BpfMapWrite {
    /// How the map's name ends.
    pub map_name_suffix: &'static str,
    /// Byte offset in the map's value (entry 0); a multiple of 4.
    pub offset: u32,
    /// The value written.
    pub value: u32,
}

impl BpfMapWrite {
    /// A write of `value` at byte `offset` of the array map whose name ends in `suffix`.
    /// A misaligned offset or an empty suffix fails to compile in a `const`.
    pub const fn new(suffix: &'static str, offset: u32, value: u32) -> Self {
        assert!(!suffix.is_empty(), "bpf_map_write: empty map name suffix");
        assert!(
            offset % 4 == 0,
            "bpf_map_write: the offset must be a multiple of 4"
        );
        BpfMapWrite {
            map_name_suffix: suffix,
            offset,
            value,
        }
    }
}

const MAPS: ObjectKind = ObjectKind {
    next_id: (BPF_MAP_GET_NEXT_ID, "BPF_MAP_GET_NEXT_ID"),
    fd_by_id: (BPF_MAP_GET_FD_BY_ID, "BPF_MAP_GET_FD_BY_ID"),
};

/// Why the guest could not read the map.
#[derive(Debug, thiserror::Error)]
pub enum MapReadError {
    /// A `bpf(2)` command failed.
    #[error(transparent)]
    Syscall(#[from] BpfQueryError),
    /// No loaded array map's name ends so.
    #[error("no loaded BPF array map's name ends in {0:?}")]
    NoMap(String),
    /// The offset is past the value.
    #[error("map {name} has a {size}-byte value: offset {offset} is past it")]
    PastValue {
        /// The map.
        name: String,
        /// Its value size.
        size: u32,
        /// The asked offset.
        offset: u32,
    },
}

/// Why `Ctx::wait_for_map_write` gave up.
#[derive(Debug, thiserror::Error)]
pub enum MapWaitError {
    /// The test has no `bpf_map_write` key.
    #[error("the test declares no bpf_map_write: there is nothing to wait for")]
    NotDeclared,
    /// The value never appeared.
    #[error(
        "bpf_map_write: after {waited_ms} ms the map ending {suffix:?} still does not hold {value} at offset {offset} ({last}); the host writes once sched_ext reports the scheduler enabled, and its monitor must be running (KTSTR_MONITOR on, a vmlinux beside the kernel image)"
    )]
    Timeout {
        /// How long it waited.
        waited_ms: u64,
        /// The map name suffix.
        suffix: &'static str,
        /// The offset.
        offset: u32,
        /// The value.
        value: u32,
        /// What the last read saw.
        last: String,
    },
}

/// Polls until the guest sees `w`'s value in its map, for at most `limit`.
pub fn wait_for(w: &BpfMapWrite, limit: std::time::Duration) -> Result<String, MapWaitError> {
    let t0 = std::time::Instant::now();
    loop {
        let last = match read_array_u32(w.map_name_suffix, w.offset) {
            Ok((name, v)) if v == w.value => return Ok(name),
            Ok((name, v)) => format!("{name} holds {v}"),
            Err(e) => e.to_string(),
        };
        if t0.elapsed() >= limit {
            return Err(MapWaitError::Timeout {
                waited_ms: t0.elapsed().as_millis() as u64,
                suffix: w.map_name_suffix,
                offset: w.offset,
                value: w.value,
                last,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A loaded map, as the guest kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MapInfo {
    id: u32,
    map_type: u32,
    value_size: u32,
    name: String,
}

fn decode_info(info: &[u8]) -> MapInfo {
    let raw = &info[INFO_NAME..INFO_NAME + INFO_NAME_LEN];
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    MapInfo {
        id: u32_at(info, INFO_ID),
        map_type: u32_at(info, INFO_TYPE),
        value_size: u32_at(info, INFO_VALUE_SIZE),
        name: String::from_utf8_lossy(&raw[..end]).into_owned(),
    }
}

/// The newest array map whose name ends in `suffix`, opened.
fn open_array(suffix: &str) -> Result<(OwnedFd, MapInfo), MapReadError> {
    let mut best: Option<(OwnedFd, MapInfo)> = None;
    for_each_object(&MAPS, INFO_SIZE, |fd, info| {
        let m = decode_info(info);
        if m.map_type == MAP_TYPE_ARRAY && m.name.ends_with(suffix) {
            best = Some((fd, m)); // ids grow: the last match is the newest
        }
    })?;
    best.ok_or_else(|| MapReadError::NoMap(suffix.to_string()))
}

/// The u32 at byte `offset` of entry 0 of the newest array map whose name ends in `suffix`,
/// with the map's name.
pub fn read_array_u32(suffix: &str, offset: u32) -> Result<(String, u32), MapReadError> {
    let (fd, m) = open_array(suffix)?;
    if offset.saturating_add(4) > m.value_size {
        return Err(MapReadError::PastValue {
            name: m.name,
            size: m.value_size,
            offset,
        });
    }
    let key = 0u32;
    let mut value = vec![0u8; m.value_size as usize];
    let mut attr = [0u8; ATTR_SIZE];
    attr[0..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    attr[8..16].copy_from_slice(&(&key as *const u32 as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(value.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr).map_err(|source| BpfQueryError::Syscall {
        cmd: "BPF_MAP_LOOKUP_ELEM",
        source,
    })?;
    Ok((m.name, u32_at(&value, offset as usize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_info_fields_are_read_at_their_uapi_offsets() {
        let mut info = [0u8; INFO_SIZE];
        info[INFO_TYPE..INFO_TYPE + 4].copy_from_slice(&MAP_TYPE_ARRAY.to_ne_bytes());
        info[INFO_ID..INFO_ID + 4].copy_from_slice(&7u32.to_ne_bytes());
        info[INFO_VALUE_SIZE..INFO_VALUE_SIZE + 4].copy_from_slice(&64u32.to_ne_bytes());
        info[INFO_NAME..INFO_NAME + 10].copy_from_slice(b".data.trig");
        assert_eq!(
            decode_info(&info),
            MapInfo {
                id: 7,
                map_type: MAP_TYPE_ARRAY,
                value_size: 64,
                name: ".data.trig".into()
            }
        );
    }

    #[test]
    fn a_missing_map_or_no_permission_is_a_clear_error() {
        match read_array_u32(".no-such-map-ktstr", 0) {
            Err(MapReadError::NoMap(s)) => assert_eq!(s, ".no-such-map-ktstr"),
            Err(e) => assert!(e.to_string().starts_with("bpf(BPF_MAP_GET_NEXT_ID)"), "{e}"),
            Ok(v) => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_write_is_a_const() {
        const W: BpfMapWrite = BpfMapWrite::new(".bss", 8, 1);
        assert_eq!((W.map_name_suffix, W.offset, W.value), (".bss", 8, 1));
    }
}
