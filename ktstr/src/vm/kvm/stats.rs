//! KVM's binary statistics (`KVM_GET_STATS_FD`, Linux 5.14+): exits by reason, halts, and the
//! rest of what KVM counts per vCPU and per VM, read once when the guest has ended (sidecar
//! `kvm_stats`).
//!
//! The stats file of a VM or vCPU is a header, an id string, descriptors (flags, size, offset,
//! name) and a data block of u64s (kernel `Documentation/virt/kvm/api.rst`, 4.133). kvm-ioctls
//! 0.24 has no wrapper for the ioctl, so it is issued here; the layout is kvm-bindings'
//! `kvm_stats_header` / `kvm_stats_desc`.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_bindings::{kvm_stats_desc, kvm_stats_header};
use serde_json::{json, Map, Value};

/// `KVM_GET_STATS_FD`: `_IO(KVMIO, 0xce)`, on a VM or a vCPU fd.
const KVM_GET_STATS_FD: libc::c_ulong = (0xAE << 8) | 0xce;
/// `KVM_STATS_TYPE_MASK` and `KVM_STATS_TYPE_CUMULATIVE`: counters that only grow.
const TYPE_MASK: u32 = 0xF;
const TYPE_CUMULATIVE: u32 = 0;
/// `KVM_STATS_TYPE_PEAK`: the highest value seen.
const TYPE_PEAK: u32 = 2;

/// An open stats file of one VM or vCPU.
#[derive(Debug)]
pub struct StatsFile(File);

impl StatsFile {
    /// Opens the stats of the VM or vCPU behind `fd`; `None` when KVM has no binary stats
    /// (before Linux 5.14) or refuses.
    pub fn open(fd: &impl AsRawFd) -> Option<StatsFile> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and only returns a new fd (or -1), which
        // we own from here on.
        let raw = unsafe { libc::ioctl(fd.as_raw_fd(), KVM_GET_STATS_FD as _) };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        Some(StatsFile(unsafe { File::from_raw_fd(raw) }))
    }

    /// Reads every statistic now.
    pub fn read(&mut self) -> Result<Vec<Stat>, String> {
        let mut buf = Vec::new();
        self.0
            .read_to_end(&mut buf)
            .map_err(|e| format!("reading KVM stats: {e}"))?;
        parse(&buf)
    }
}

/// One statistic.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    /// Its name (`exits`, `io_exits`, `halt_exits`, ...).
    pub name: String,
    /// KVM's flags (type, unit, base).
    pub flags: u32,
    /// Its values (one for scalars, buckets for histograms).
    pub values: Vec<u64>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

/// Parses a whole stats file.
pub fn parse(b: &[u8]) -> Result<Vec<Stat>, String> {
    let bad = |what: &str| format!("malformed KVM stats file: {what}");
    let hdr = std::mem::size_of::<kvm_stats_header>();
    if b.len() < hdr {
        return Err(bad("shorter than its header"));
    }
    // kvm_stats_header: flags, name_size, num_desc, id_offset, desc_offset, data_offset.
    let name_size = u32_at(b, 4).ok_or_else(|| bad("header"))? as usize;
    let num_desc = u32_at(b, 8).ok_or_else(|| bad("header"))? as usize;
    let desc_offset = u32_at(b, 16).ok_or_else(|| bad("header"))? as usize;
    let data_offset = u32_at(b, 20).ok_or_else(|| bad("header"))? as usize;
    // kvm_stats_desc: flags u32, exponent i16, size u16, offset u32, bucket_size u32, then
    // the name in `name_size` bytes.
    let stride = std::mem::size_of::<kvm_stats_desc>() + name_size;
    let mut out = Vec::with_capacity(num_desc);
    for i in 0..num_desc {
        let d = desc_offset + i * stride;
        let flags = u32_at(b, d).ok_or_else(|| bad("descriptor past the end"))?;
        let size = u16_at(b, d + 6).ok_or_else(|| bad("descriptor"))? as usize;
        let offset = u32_at(b, d + 8).ok_or_else(|| bad("descriptor"))? as usize;
        let name_at = d + std::mem::size_of::<kvm_stats_desc>();
        let raw = b
            .get(name_at..name_at + name_size)
            .ok_or_else(|| bad("name past the end"))?;
        let name =
            String::from_utf8_lossy(raw.split(|&c| c == 0).next().unwrap_or_default()).into_owned();
        let at = data_offset + offset;
        let values = (0..size)
            .map(|k| {
                b.get(at + 8 * k..at + 8 * k + 8)
                    .map(|v| u64::from_ne_bytes(v.try_into().expect("8 bytes")))
            })
            .collect::<Option<Vec<u64>>>()
            .ok_or_else(|| bad("data past the end"))?;
        out.push(Stat {
            name,
            flags,
            values,
        });
    }
    Ok(out)
}

/// The sidecar's `kvm_stats`: `vcpus` (how many were read), `vcpu` (each scalar counter
/// summed over the vCPUs, each peak the largest), `vm` (the VM's own scalars).
pub fn summary(vm: &[Stat], vcpus: &[Vec<Stat>]) -> Value {
    let scalars = |stats: &[Stat], into: &mut Map<String, Value>| {
        for s in stats.iter().filter(|s| s.values.len() == 1) {
            let v = s.values[0];
            let entry = into.entry(s.name.clone()).or_insert(json!(0u64));
            let old = entry.as_u64().unwrap_or(0);
            *entry = json!(match s.flags & TYPE_MASK {
                TYPE_CUMULATIVE => old.saturating_add(v),
                TYPE_PEAK => old.max(v),
                // Instant values (e.g. pages in use) of the last vCPU read say little
                // summed; keep the largest.
                _ => old.max(v),
            });
        }
    };
    let mut per_vcpu = Map::new();
    for v in vcpus {
        scalars(v, &mut per_vcpu);
    }
    let mut vm_map = Map::new();
    scalars(vm, &mut vm_map);
    json!({ "vcpus": vcpus.len(), "vcpu": per_vcpu, "vm": vm_map })
}

/// The stats files of one VM, opened while its fds exist and read after the guest ended.
#[derive(Debug, Default)]
pub struct Collector {
    vm: Option<StatsFile>,
    vcpus: Vec<StatsFile>,
}

impl Collector {
    /// Opens the stats of the VM and of each vCPU (call before the vCPU fds move to their
    /// threads); those KVM refuses are left out.
    pub fn open(vm: &impl AsRawFd, vcpus: &[impl AsRawFd]) -> Collector {
        Collector {
            vm: StatsFile::open(vm),
            vcpus: vcpus.iter().filter_map(StatsFile::open).collect(),
        }
    }

    /// Reads everything now; `None` when KVM gave no stats at all.
    pub fn collect(mut self) -> Option<Value> {
        let vm = self
            .vm
            .as_mut()
            .and_then(|f| f.read().ok())
            .unwrap_or_default();
        let vcpus: Vec<Vec<Stat>> = self
            .vcpus
            .iter_mut()
            .filter_map(|f| f.read().ok())
            .collect();
        if vm.is_empty() && vcpus.is_empty() {
            return None;
        }
        Some(summary(&vm, &vcpus))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stats file as KVM lays it out: header, id, descriptors, data.
    fn file(stats: &[(&str, u32, &[u64])]) -> Vec<u8> {
        let name_size = 48usize;
        let hdr = std::mem::size_of::<kvm_stats_header>();
        let desc = std::mem::size_of::<kvm_stats_desc>() + name_size;
        let id_offset = hdr;
        let desc_offset = id_offset + name_size;
        let data_offset = desc_offset + desc * stats.len();
        let mut b = Vec::new();
        for v in [
            0u32,
            name_size as u32,
            stats.len() as u32,
            id_offset as u32,
            desc_offset as u32,
            data_offset as u32,
        ] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.resize(desc_offset, 0); // the id string
        let mut data = Vec::new();
        for (name, flags, values) in stats {
            b.extend_from_slice(&flags.to_ne_bytes());
            b.extend_from_slice(&0i16.to_ne_bytes()); // exponent
            b.extend_from_slice(&(values.len() as u16).to_ne_bytes());
            b.extend_from_slice(&(data.len() as u32 * 8).to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes()); // bucket size
            let mut n = name.as_bytes().to_vec();
            n.resize(name_size, 0);
            b.extend_from_slice(&n);
            data.extend_from_slice(values);
        }
        for v in data {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b
    }

    #[test]
    fn a_stats_file_parses_into_named_values() {
        let b = file(&[
            ("exits", 0, &[1234]),
            ("halt_poll_hist", 3 | 0x100, &[1, 2, 3]),
        ]);
        let s = parse(&b).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].name.as_str(), s[0].values.as_slice()),
            ("exits", &[1234u64][..])
        );
        assert_eq!(s[1].values, [1, 2, 3]);
        assert_eq!(s[1].flags & TYPE_MASK, 3);
        // Cut anywhere: an error that says so, never a panic.
        for cut in [0, 10, b.len() - 1] {
            let e = parse(&b[..cut]).unwrap_err();
            assert!(e.contains("malformed KVM stats file"), "{e}");
        }
    }

    #[test]
    fn counters_sum_over_vcpus_and_peaks_take_the_largest() {
        let v0 = parse(&file(&[
            ("exits", 0, &[10]),
            ("halt_wait_max", 2, &[7]),
            ("h", 3, &[1, 1]),
        ]))
        .unwrap();
        let v1 = parse(&file(&[("exits", 0, &[32]), ("halt_wait_max", 2, &[5])])).unwrap();
        let vm = parse(&file(&[("remote_tlb_flush", 0, &[3])])).unwrap();
        let j = summary(&vm, &[v0, v1]);
        assert_eq!(j["vcpus"], 2);
        assert_eq!(j["vcpu"]["exits"], 42);
        assert_eq!(j["vcpu"]["halt_wait_max"], 7);
        assert!(j["vcpu"].get("h").is_none(), "histograms are left out");
        assert_eq!(j["vm"]["remote_tlb_flush"], 3);
    }
}
