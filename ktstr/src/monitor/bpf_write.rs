//! The host side of `bpf_map_write`: find a scheduler's BPF array map in guest memory and
//! write one u32 into its value, with no help from the guest. The kernel registers every map
//! in `map_idr` (an IDR, which is an xarray keyed by map id); we walk that xarray, read each
//! `struct bpf_map`'s type and name, and write at `bpf_array.value + offset` of the newest
//! array map whose name ends as asked. Every address and offset comes from the vmlinux's
//! symbols and BTF ([`MapLayout`]).

use serde::{Deserialize, Serialize};

use super::guest_ram::KernelMem;
use super::layout::MapLayout;
use crate::bpf_maps::{BpfMapWrite, MAP_TYPE_ARRAY};

/// What became of a test's `bpf_map_write` (in the monitor summary of its sidecar).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapWriteOutcome {
    /// The map written (its name as the kernel keeps it).
    pub map: Option<String>,
    /// Its id.
    pub map_id: Option<u64>,
    /// Byte offset and value written.
    pub offset: u32,
    /// The value.
    pub value: u32,
    /// When, in ms of the monitor's clock.
    pub at_ms: Option<u64>,
    /// Why it was not written, when it was not.
    pub error: Option<String>,
}

/// The outcome's error when the scheduler never reached `SCX_OPS_ENABLED` while sampled.
pub const NEVER_ENABLED: &str = "the scheduler was never seen enabled (SCX_OPS_ENABLED)";

/// An xarray's internal node entry: low bits `10` and above the reserved range.
fn is_node(entry: u64) -> bool {
    entry & 3 == 2 && entry > 4096
}

/// Nodes visited at most: a torn read of a changing xarray must not walk forever.
const MAX_NODES: usize = 4096;
/// Slots per xarray node (`XA_CHUNK_SIZE` with the default `CONFIG_BASE_SMALL=0`).
const SLOTS: u64 = 64;

/// Every (index, pointer) stored in the xarray whose root entry is `head`, by index.
/// `u64_at` and `u8_at` read guest kernel memory.
pub(crate) fn xa_entries(
    head: u64,
    node_shift: u64,
    node_slots: u64,
    u64_at: &dyn Fn(u64) -> Option<u64>,
    u8_at: &dyn Fn(u64) -> Option<u8>,
) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    if head == 0 {
        return out;
    }
    if !is_node(head) {
        if head & 3 == 0 {
            out.push((0, head));
        }
        return out;
    }
    // (node address, first index it covers)
    let mut stack = vec![(head - 2, 0u64)];
    let mut visited = 0;
    while let Some((node, base)) = stack.pop() {
        visited += 1;
        if visited > MAX_NODES {
            break;
        }
        let Some(shift) = u8_at(node + node_shift) else {
            continue;
        };
        if shift > 60 {
            continue;
        }
        for i in (0..SLOTS).rev() {
            let Some(e) = u64_at(node + node_slots + 8 * i) else {
                continue;
            };
            let index = base + (i << shift);
            if e == 0 {
                continue;
            }
            if is_node(e) {
                if shift > 0 {
                    stack.push((e - 2, index));
                }
            } else if e & 3 == 0 {
                out.push((index, e));
            }
        }
    }
    out.sort_unstable();
    out
}

/// One map as the host reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GuestMap {
    id: u64,
    addr: u64,
    map_type: u32,
    value_size: u32,
    name: String,
}

fn maps(k: &KernelMem, l: &MapLayout) -> Result<Vec<GuestMap>, String> {
    let head = k
        .u64(l.map_idr + l.idr_head)
        .ok_or("map_idr is not readable")?;
    let u8_at = |va: u64| {
        let mut b = [0u8; 1];
        k.read(va, &mut b).then_some(b[0])
    };
    let entries = xa_entries(head, l.node_shift, l.node_slots, &|va| k.u64(va), &u8_at);
    Ok(entries
        .into_iter()
        .map(|(id, addr)| {
            let mut name = [0u8; 16];
            let read = k.read(addr + l.map_name, &mut name);
            let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
            GuestMap {
                id,
                addr,
                map_type: k.u32(addr + l.map_type).unwrap_or(u32::MAX),
                value_size: k.u32(addr + l.map_value_size).unwrap_or(0),
                name: if read {
                    String::from_utf8_lossy(&name[..end]).into_owned()
                } else {
                    format!("<unreadable at {addr:#x}>")
                },
            }
        })
        .collect())
}

/// Writes `w` into the guest: the map's name and id, or why not.
pub fn apply(k: &KernelMem, l: &MapLayout, w: &BpfMapWrite) -> Result<(String, u64), String> {
    let all = maps(k, l)?;
    let Some(m) = all
        .iter()
        .rev()
        .find(|m| m.map_type == MAP_TYPE_ARRAY && m.name.ends_with(w.map_name_suffix))
    else {
        let names: Vec<String> = all
            .iter()
            .take(16)
            .map(|m| format!("{} (id {}, type {})", m.name, m.id, m.map_type))
            .collect();
        return Err(format!(
            "no BPF array map's name ends in {:?} (loaded maps: {})",
            w.map_name_suffix,
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ));
    };
    if u64::from(w.offset) + 4 > u64::from(m.value_size) {
        return Err(format!(
            "map {} has a {}-byte value: offset {} is past it",
            m.name, m.value_size, w.offset
        ));
    }
    let va = m.addr + l.array_value + u64::from(w.offset);
    if !k.write(va, &w.value.to_le_bytes()) {
        return Err(format!(
            "map {}'s value at {va:#x} is not writable guest RAM",
            m.name
        ));
    }
    Ok((m.name.clone(), m.id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A two-level xarray: the root node (shift 6) holds map 3 directly and, in slot 1, a
    /// leaf node (shift 0) covering ids 64..128 that holds maps 64 and 70; plus a retry entry
    /// and a value entry that are not maps.
    #[test]
    fn the_walk_finds_every_map_with_its_id() {
        let (shift, slots) = (0u64, 40u64);
        let mut mem: HashMap<u64, u64> = HashMap::new();
        let mut bytes: HashMap<u64, u8> = HashMap::new();
        let (root, leaf) = (0x1000_0000u64, 0x2000_0000u64);
        bytes.insert(root + shift, 6);
        bytes.insert(leaf + shift, 0);
        mem.insert(root + slots + 8, leaf + 2); // slot 1: a node
        mem.insert(root + slots + 8 * 2, 0x402); // a retry-like internal entry
        mem.insert(leaf + slots, 0xffff_8880_0000_1000); // id 64
        mem.insert(leaf + slots + 8 * 6, 0xffff_8880_0000_2000); // id 70
        mem.insert(leaf + slots + 8 * 7, 0x15); // a value entry (low bit set)
        let got = xa_entries(
            root + 2,
            shift,
            slots,
            &|va| Some(*mem.get(&va).unwrap_or(&0)),
            &|va| bytes.get(&va).copied(),
        );
        assert_eq!(
            got,
            [(64, 0xffff_8880_0000_1000), (70, 0xffff_8880_0000_2000)]
        );
    }

    #[test]
    fn a_single_entry_root_is_id_zero_and_an_empty_root_is_nothing() {
        let none = |_| None;
        assert_eq!(
            xa_entries(0xffff_8880_0000_1000, 0, 40, &none, &|_| None),
            [(0, 0xffff_8880_0000_1000)]
        );
        assert!(xa_entries(0, 0, 40, &none, &|_| None).is_empty());
    }

    /// A node that points back at itself (a torn read) ends the walk instead of looping.
    #[test]
    fn a_cyclic_xarray_ends() {
        let node = 0x1000_0000u64;
        let got = xa_entries(
            node + 2,
            0,
            40,
            &|va| (va == node + 40).then_some(node + 2),
            &|_| Some(6),
        );
        assert!(got.is_empty());
    }
}
