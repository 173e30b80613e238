//! Guest-physical memory layout (vmm.md §1.2, §4, §6): fixed addresses of the boot structures,
//! RAM split per NUMA node in 128 MiB multiples around the [3 GiB, 4 GiB) hole, the result SHM
//! at the top of the last node (outside e820), the e820 map and the initrd placement.

use super::acpi::NodeMemRange;

/// GDT.
pub const GDT_GPA: u64 = 0x500;
/// Empty IDT (limit 0).
pub const IDT_GPA: u64 = 0x520;
/// boot_params ("zero page").
pub const BOOT_PARAMS_GPA: u64 = 0x7000;
/// Initial RSP/RBP.
pub const BOOT_STACK: u64 = 0x8FF0;
/// PML4; the PDPT follows at +0x1000 and the page directories at +0x2000.
pub const PML4_GPA: u64 = 0x9000;
/// PDPT.
pub const PDPT_GPA: u64 = 0xA000;
/// First page directory (four of them, one per GiB, up to 0xEFFF).
pub const PD_GPA: u64 = 0xB000;
/// GiB identity-mapped by the boot page tables. Linux needs 1; four also cover the LAPIC and
/// IOAPIC for the probe guest, and the extra page directories sit in otherwise unused low RAM.
pub const IDENTITY_MAPPED_GIB: u64 = 4;
/// Kernel command line.
pub const CMDLINE_GPA: u64 = 0x20000;
/// Largest command line (COMMAND_LINE_SIZE 2048 minus the NUL).
pub const CMDLINE_MAX: usize = 2047;
/// End of the low RAM e820 entry (EBDA, VGA and BIOS follow).
pub const LOW_RAM_END: u64 = 0x9_FC00;
/// Base of the ACPI tables (RSDP first).
pub const ACPI_GPA: u64 = 0xE_0000;
/// Start of "high" memory: protected-mode bzImage code, and the floor for any kernel.
pub const HIGH_MEM_START: u64 = 0x10_0000;
/// Start of the hole below 4 GiB that never gets a memslot.
pub const HOLE_START: u64 = 3 << 30;
/// End of that hole.
pub const HOLE_END: u64 = 4 << 30;
/// KVM TSS (3 pages; only VMX uses it).
pub const TSS_GPA: u64 = 0xFFFB_D000;
/// KVM identity-map page (only VMX uses it).
pub const IDENTITY_MAP_GPA: u64 = 0xFFFB_C000;
/// LAPIC MMIO base.
pub const LAPIC_GPA: u64 = 0xFEE0_0000;
/// Granule of per-node RAM: the x86_64 sparsemem section and memory block size.
pub const NODE_GRANULE: u64 = 128 << 20;
/// Page size.
pub const PAGE: u64 = 4096;
/// e820 RAM type.
pub const E820_RAM: u32 = 1;
/// The initrd ends at or below this (keeps it clear of every 32-bit address limit).
pub const INITRD_CEILING: u64 = 2 << 30;

/// One contiguous guest-physical range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRange {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

impl GuestRange {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base + self.len
    }
}

/// One e820 entry: {addr, size, type}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// Type (1 = RAM).
    pub kind: u32,
}

/// Why a memory layout cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Fewer than 128 MiB per node.
    #[error("{memory_mib} MiB of guest memory is too small for {nodes} NUMA node(s): each node needs at least 128 MiB (ask for at least {} MiB)", nodes * 128)]
    MemoryTooSmall {
        /// What was asked for.
        memory_mib: u64,
        /// NUMA nodes.
        nodes: u32,
    },
    /// The SHM size is not page aligned, zero, or does not fit the last node.
    #[error("result SHM of {shm_size:#x} bytes does not fit: it must be a non-zero multiple of 4 KiB and at most half of the last node's {node_bytes:#x} bytes")]
    BadShm {
        /// Requested SHM size.
        shm_size: u64,
        /// Bytes of the last node's top range.
        node_bytes: u64,
    },
    /// The initramfs does not fit between the kernel and the initrd ceiling.
    #[error("initramfs of {size} bytes does not fit in guest memory: {room} bytes are free between the kernel end ({kernel_end:#x}) and {ceiling:#x}; give the VM more memory")]
    InitrdTooLarge {
        /// Initramfs size.
        size: u64,
        /// Bytes available.
        room: u64,
        /// End of the loaded kernel.
        kernel_end: u64,
        /// Highest end the initrd may have.
        ceiling: u64,
    },
}

/// Where everything goes for one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Per-node ranges (for SRAT), in node order; a node crossing 3 GiB has two.
    pub nodes: Vec<NodeMemRange>,
    /// Ranges backed by memslots (one per node range).
    pub slots: Vec<GuestRange>,
    /// The result SHM, inside the last slot, outside e820.
    pub shm: GuestRange,
    /// The e820 map given to the guest.
    pub e820: Vec<E820Entry>,
}

/// Maps an offset into "RAM space" (RAM counted from 0 without holes) to the guest-physical
/// ranges it occupies: everything at or above 3 GiB moves up past the hole.
fn place_ram(start: u64, len: u64) -> Vec<GuestRange> {
    let end = start + len;
    let mut out = Vec::new();
    if start < HOLE_START {
        let e = end.min(HOLE_START);
        out.push(GuestRange {
            base: start,
            len: e - start,
        });
    }
    if end > HOLE_START {
        let s = start.max(HOLE_START);
        out.push(GuestRange {
            base: s + (HOLE_END - HOLE_START),
            len: end - s,
        });
    }
    out
}

impl MemoryLayout {
    /// Splits `memory_mib` evenly over `nodes` nodes (each a multiple of 128 MiB, rounded
    /// down) and puts `shm_size` bytes of SHM at the top of the last node.
    pub fn new(memory_mib: u64, nodes: u32, shm_size: u64) -> Result<Self, LayoutError> {
        let nodes = nodes.max(1);
        let per_node = (memory_mib << 20) / nodes as u64 / NODE_GRANULE * NODE_GRANULE;
        if per_node == 0 {
            return Err(LayoutError::MemoryTooSmall { memory_mib, nodes });
        }
        let mut ranges = Vec::new();
        for n in 0..nodes {
            for r in place_ram(n as u64 * per_node, per_node) {
                ranges.push(NodeMemRange {
                    node: n,
                    base: r.base,
                    len: r.len,
                });
            }
        }
        let last = *ranges.last().expect("at least one node range");
        if shm_size == 0 || shm_size % PAGE != 0 || shm_size > last.len / 2 {
            return Err(LayoutError::BadShm {
                shm_size,
                node_bytes: last.len,
            });
        }
        let shm = GuestRange {
            base: last.base + last.len - shm_size,
            len: shm_size,
        };
        let slots: Vec<GuestRange> = ranges
            .iter()
            .map(|r| GuestRange {
                base: r.base,
                len: r.len,
            })
            .collect();
        // RAM in e820: merge adjacent slots, then cut the legacy hole and the SHM.
        let mut ram: Vec<GuestRange> = Vec::new();
        for s in &slots {
            match ram.last_mut() {
                Some(r) if r.end() == s.base => r.len += s.len,
                _ => ram.push(*s),
            }
        }
        let mut e820 = Vec::new();
        for r in ram {
            let mut pieces = vec![r];
            if r.base < HIGH_MEM_START {
                pieces = vec![
                    GuestRange {
                        base: r.base,
                        len: LOW_RAM_END - r.base,
                    },
                    GuestRange {
                        base: HIGH_MEM_START,
                        len: r.end() - HIGH_MEM_START,
                    },
                ];
            }
            for p in pieces {
                let end = if p.end() == shm.end() {
                    shm.base
                } else {
                    p.end()
                };
                if end > p.base {
                    e820.push(E820Entry {
                        addr: p.base,
                        size: end - p.base,
                        kind: E820_RAM,
                    });
                }
            }
        }
        Ok(MemoryLayout {
            nodes: ranges,
            slots,
            shm,
            e820,
        })
    }

    /// Total bytes of memslots.
    pub fn total_bytes(&self) -> u64 {
        self.slots.iter().map(|s| s.len).sum()
    }

    /// Highest end the initrd may have: the end of RAM below 3 GiB, the SHM base, 2 GiB.
    pub fn initrd_ceiling(&self) -> u64 {
        let low_end = self
            .slots
            .iter()
            .filter(|s| s.base < HOLE_START)
            .map(|s| s.end())
            .max()
            .unwrap_or(0);
        low_end.min(self.shm.base).min(INITRD_CEILING) & !(PAGE - 1)
    }

    /// Where an initrd of `size` bytes goes: page aligned, as high as allowed, above
    /// `kernel_end`.
    pub fn place_initrd(&self, size: u64, kernel_end: u64) -> Result<GuestRange, LayoutError> {
        let ceiling = self.initrd_ceiling();
        let floor = (kernel_end + PAGE - 1) & !(PAGE - 1);
        let room = ceiling.saturating_sub(floor);
        let aligned = (size + PAGE - 1) & !(PAGE - 1);
        if aligned > room {
            return Err(LayoutError::InitrdTooLarge {
                size,
                room,
                kernel_end,
                ceiling,
            });
        }
        Ok(GuestRange {
            base: ceiling - aligned,
            len: size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn overlaps(a: GuestRange, b: GuestRange) -> bool {
        a.base < b.end() && b.base < a.end()
    }

    #[test]
    fn one_node_small() {
        let l = MemoryLayout::new(512, 1, 8 * MIB).unwrap();
        assert_eq!(
            l.slots,
            vec![GuestRange {
                base: 0,
                len: 512 * MIB
            }]
        );
        assert_eq!(
            l.shm,
            GuestRange {
                base: 504 * MIB,
                len: 8 * MIB
            }
        );
        assert_eq!(
            l.e820,
            vec![
                E820Entry {
                    addr: 0,
                    size: LOW_RAM_END,
                    kind: 1
                },
                E820Entry {
                    addr: HIGH_MEM_START,
                    size: 504 * MIB - HIGH_MEM_START,
                    kind: 1
                },
            ]
        );
        assert_eq!(l.initrd_ceiling(), 504 * MIB);
    }

    #[test]
    fn nodes_are_128m_multiples_and_split_at_the_hole() {
        for (mib, nodes) in [
            (512, 2),
            (1000, 3),
            (4096, 2),
            (6144, 3),
            (8192, 4),
            (3500, 1),
        ] {
            let l = MemoryLayout::new(mib, nodes, 16 * MIB).unwrap();
            let mut per_node = vec![0u64; nodes as usize];
            for r in &l.nodes {
                per_node[r.node as usize] += r.len;
                // No memslot touches [3G, 4G).
                assert!(!overlaps(
                    GuestRange {
                        base: r.base,
                        len: r.len
                    },
                    GuestRange {
                        base: HOLE_START,
                        len: HOLE_END - HOLE_START
                    }
                ));
            }
            for b in &per_node {
                assert_eq!(b % NODE_GRANULE, 0, "{mib} MiB / {nodes}");
                assert_eq!(*b, per_node[0]);
                assert!(*b > 0);
            }
            assert!(per_node.iter().sum::<u64>() <= mib * MIB);
            // Node 0 starts at 0, nodes are contiguous in RAM order.
            assert_eq!(l.nodes[0].base, 0);
            // e820 + SHM + legacy hole = RAM.
            let e820: u64 = l.e820.iter().map(|e| e.size).sum();
            assert_eq!(
                e820 + l.shm.len + (HIGH_MEM_START - LOW_RAM_END),
                l.total_bytes()
            );
            for e in &l.e820 {
                let r = GuestRange {
                    base: e.addr,
                    len: e.size,
                };
                assert!(!overlaps(r, l.shm));
                assert!(!overlaps(
                    r,
                    GuestRange {
                        base: HOLE_START,
                        len: 1 << 30
                    }
                ));
                let covered: u64 = l
                    .slots
                    .iter()
                    .map(|s| s.end().min(r.end()).saturating_sub(s.base.max(r.base)))
                    .sum();
                assert_eq!(covered, r.len, "e820 RAM must be backed by memslots");
            }
            // The SHM is inside the last node's last range, at its top.
            let last = l.nodes.last().unwrap();
            assert_eq!(last.node, nodes - 1);
            assert_eq!(l.shm.end(), last.base + last.len);
            assert!(l.e820.len() >= 2);
        }
    }

    #[test]
    fn node_crossing_3g_gets_two_ranges() {
        let l = MemoryLayout::new(4096, 2, 8 * MIB).unwrap();
        // Node 1 covers RAM [2G, 4G): [2G, 3G) and [4G, 5G).
        let n1: Vec<_> = l.nodes.iter().filter(|r| r.node == 1).collect();
        assert_eq!(n1.len(), 2);
        assert_eq!((n1[0].base, n1[0].len), (2 << 30, 1 << 30));
        assert_eq!((n1[1].base, n1[1].len), (4 << 30, 1 << 30));
        assert_eq!(l.shm.end(), 5 << 30);
        assert_eq!(l.initrd_ceiling(), 2 << 30);
    }

    #[test]
    fn errors() {
        assert!(matches!(
            MemoryLayout::new(200, 2, 8 * MIB),
            Err(LayoutError::MemoryTooSmall { .. })
        ));
        assert!(matches!(
            MemoryLayout::new(256, 1, 4097),
            Err(LayoutError::BadShm { .. })
        ));
        assert!(matches!(
            MemoryLayout::new(128, 1, 128 * MIB),
            Err(LayoutError::BadShm { .. })
        ));
        let l = MemoryLayout::new(256, 1, 8 * MIB).unwrap();
        let r = l.place_initrd(100 * MIB, 0x3030000).unwrap();
        assert_eq!(r.base % PAGE, 0);
        assert!(r.base >= 0x3030000 && r.end() <= l.shm.base);
        let e = l.place_initrd(300 * MIB, 0x3030000).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}
