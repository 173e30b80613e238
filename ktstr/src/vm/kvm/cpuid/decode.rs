//! Decodes a CPUID table the way Linux 6.12 derives topology
//! (`arch/x86/kernel/cpu/topology_{common,ext,amd}.c`, `cacheinfo.c`), independently of how
//! [`super::vcpu_cpuid`] writes it: it walks the extended topology leaves subleaf by subleaf,
//! propagates shifts upward like `topology_set_dom()`, and falls back to the legacy and AMD
//! leaves where Linux would.

use kvm_bindings::kvm_cpuid_entry2;

use super::{family_model, lookup, CpuVendor, CpuidError, Flavor};

/// Linux's topology domains, in order (`enum x86_topology_domains`).
const SMT: usize = 0;
const CORE: usize = 1;
const MODULE: usize = 2;
const TILE: usize = 3;
const DIE: usize = 4;
const DIEGRP: usize = 5;
const PKG: usize = 6;
const DOMAINS: usize = 7;

/// Subleaves walked at most per topology leaf (hardware has a handful; guards bad tables whose
/// entries lack SIGNIFICANT_INDEX and so answer every subleaf).
const MAX_SUBLEAVES: u32 = 16;

/// What Linux 6.12 concludes about one CPU from its CPUID table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedCpu {
    /// Vendor from leaf 0.
    pub vendor: CpuVendor,
    /// Family from leaf 1 (`x86_family()`).
    pub family: u32,
    /// Model from leaf 1 (`x86_model()`).
    pub model: u32,
    /// Initial APIC ID after every source Linux consults (leaf 1, then the topology leaf's
    /// subleaf 0 EDX, then 0x8000001E EAX where Linux takes it); all sources must agree.
    pub apic_id: u32,
    /// The leaf the domain shifts came from: 0x1F, 0x80000026, 0xB, 0x80000008 (AMD without
    /// extended leaves) or 1 (legacy leaf 1/4).
    pub topology_leaf: u32,
    /// `physical_package_id`: `apic >> package shift`.
    pub pkg_id: u32,
    /// `die_id`: `apic >> die-level shift`.
    pub die_id: u32,
    /// `core_id`: `(apic & package mask) >> smt_shift`.
    pub core_id: u32,
    /// SMT domain shift.
    pub smt_shift: u32,
    /// Package shift (the highest enumerated level's shift, propagated).
    pub pkg_shift: u32,
    /// `1 << smt_shift`, as Linux sizes the SMT domain.
    pub threads_per_core: u32,
    /// AMD node id (0x8000001E ECX\[7:0\]); 0 elsewhere. AMD SMT siblings must share it.
    pub amd_node_id: u32,
    /// Linux's `cpu_llc_id`: CPUs with equal values share the LLC. Its form is per vendor:
    /// AMD family >= 0x17 `apic >> llc_shift`, Zen1/Hygon `apic >> 3`, AMD < 0x17 the node id,
    /// Intel `apic & !((1 << llc_shift) - 1)`; the package id when nothing sets it.
    pub llc_id: u32,
    /// APIC-ID bits the LLC spans (`order(sharing)`), as in `cache/indexN/id = apic >> shift`.
    pub llc_shift: u32,
}

/// Linux's `topo_scan` shifts and counts.
struct Scan {
    shifts: [u32; DOMAINS],
    ncpus: [u32; DOMAINS],
}

impl Scan {
    /// `topology_set_dom()`: set a domain and propagate its shift to every higher one.
    fn set_dom(&mut self, dom: usize, shift: u32, ncpus: u32) {
        self.update_dom(dom, shift, ncpus);
        for d in dom + 1..DOMAINS {
            self.shifts[d] = shift;
        }
    }
    /// `topology_update_dom()`: set one domain only.
    fn update_dom(&mut self, dom: usize, shift: u32, ncpus: u32) {
        self.shifts[dom] = shift;
        self.ncpus[dom] = ncpus;
    }
}

/// Linux's `get_count_order()`: ceil(log2(n)), 0 for n <= 1.
fn count_order(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// An LLC as Linux names it: (`cpu_llc_id`, APIC-ID bits it spans).
type Llc = (u32, u32);

struct Decoder<'a> {
    e: &'a [kvm_cpuid_entry2],
    flavor: Flavor,
    family: u32,
    model: u32,
    max_basic: u32,
    max_ext: u32,
    apic: u32,
    scan: Scan,
}

impl Decoder<'_> {
    fn cpuid(&self, f: u32, i: u32) -> kvm_cpuid_entry2 {
        lookup(self.e, f, i)
    }

    /// `parse_topology_leaf()` for 0xB, 0x1F or 0x80000026.
    fn parse_ext_leaf(&mut self, leaf: u32) -> Result<bool, CpuidError> {
        // Level type -> domain maps (`topo_domain_map_0b_1f`, `topo_domain_map_80000026`).
        let map: &[usize] = match leaf {
            0xB => &[0, SMT, CORE],
            0x1F => &[0, SMT, CORE, MODULE, TILE, DIE, DIEGRP],
            _ => &[0, SMT, CORE, TILE, DIE],
        };
        let mut last_dom = 0;
        let mut subleaf = 0;
        while subleaf < MAX_SUBLEAVES {
            let sl = self.cpuid(leaf, subleaf);
            let (shift, nproc, ltype) = (sl.eax & 0x1f, sl.ebx & 0xffff, (sl.ecx >> 8) & 0xff);
            if nproc == 0 || ltype == 0 {
                break;
            }
            let dom = if (ltype as usize) < map.len() {
                last_dom = map[ltype as usize];
                last_dom
            } else {
                // Unknown type: Linux puts it one above the last parsed level.
                (last_dom + 1).min(PKG)
            };
            if dom == SMT {
                self.apic = sl.edx;
            } else if self.apic != sl.edx {
                return Err(CpuidError::ApicIdMismatch {
                    which: format!("leaf {leaf:#x} subleaf {subleaf} EDX"),
                    initial: self.apic,
                    found: sl.edx,
                });
            }
            self.scan.set_dom(dom, shift, nproc);
            subleaf += 1;
        }
        if subleaf == 0 {
            return Ok(false);
        }
        // "shift 0 in subleaf 0 but 2 CPUs": Linux fixes the SMT shift up.
        if self.scan.shifts[SMT] == 0 && self.scan.ncpus[SMT] > 1 {
            let n = self.scan.ncpus[SMT];
            self.scan.update_dom(SMT, count_order(n), n);
        }
        Ok(true)
    }

    /// `cpu_parse_topology_ext()`: 0x1F, then 0x80000026, then 0xB. Returns the leaf used.
    fn parse_ext(&mut self) -> Result<Option<u32>, CpuidError> {
        if self.max_basic >= 0x1F && self.parse_ext_leaf(0x1F)? {
            return Ok(Some(0x1F));
        }
        if self.max_ext >= 0x8000_0026 && self.parse_ext_leaf(0x8000_0026)? {
            return Ok(Some(0x8000_0026));
        }
        if self.max_basic >= 0xB && self.parse_ext_leaf(0xB)? {
            return Ok(Some(0xB));
        }
        Ok(None)
    }

    /// `parse_legacy()`: cores from leaf 4 EAX\[31:26\], threads from leaf 1 EBX\[23:16\].
    fn parse_legacy(&mut self) {
        let l1 = self.cpuid(1, 0);
        let mut cores = if self.max_basic >= 4 {
            ((self.cpuid(4, 0).eax >> 26) & 0x3f) + 1
        } else {
            1
        };
        let mut core_shift = count_order(cores);
        let mut smt_shift = 0;
        if l1.edx & super::L1_EDX_HTT != 0 {
            let nproc_shift = count_order((l1.ebx >> 16) & 0xff);
            smt_shift = nproc_shift.saturating_sub(core_shift);
            core_shift += smt_shift;
            cores <<= smt_shift;
        }
        self.scan.set_dom(SMT, smt_shift, 1 << smt_shift);
        self.scan.set_dom(CORE, core_shift, cores);
    }

    /// `parse_8000_0008()`: the CORE shift from ECX, one thread per core until told otherwise.
    fn parse_8000_0008(&mut self) -> bool {
        if self.max_ext < 0x8000_0008 {
            return false;
        }
        let ecx = self.cpuid(0x8000_0008, 0).ecx;
        let nthreads = (ecx & 0xff) + 1;
        let mut sft = (ecx >> 12) & 0xf;
        if sft == 0 {
            sft = count_order(nthreads);
        }
        self.scan.update_dom(SMT, 0, 1);
        self.scan.set_dom(CORE, sft, nthreads);
        true
    }

    fn topoext(&self) -> bool {
        self.max_ext >= 0x8000_0001 && self.cpuid(0x8000_0001, 0).ecx & super::E1_ECX_TOPOEXT != 0
    }

    /// Linux's AMD/Hygon topology and LLC path (`topology_amd.c`, `cacheinfo.c`), kept apart
    /// because its APIC-ID and LLC rules differ from Intel's. Returns the topology leaf, the
    /// AMD node id and the LLC (id, shift) if one is set.
    fn parse_amd(&mut self) -> Result<(u32, u32, Option<Llc>), CpuidError> {
        let mut amd_node_id = 0;
        let mut llc: Option<Llc> = None;
        // 6.12 reads the extended leaves on AMD only with TOPOEXT.
        let ext = if self.topoext() {
            self.parse_ext()?
        } else {
            None
        };
        let topology_leaf = match ext {
            Some(l) => l,
            None if self.parse_8000_0008() => 0x8000_0008,
            None => 1,
        };
        if (ext.is_some() || topology_leaf == 0x8000_0008) && self.topoext() {
            // parse_8000_001e()
            let l = self.cpuid(0x8000_001E, 0);
            if ext.is_none() {
                self.apic = l.eax;
                if self.family >= 0x17 {
                    let n = ((l.ebx >> 8) & 0xff) + 1;
                    self.scan.update_dom(SMT, count_order(n), n);
                }
            } else if l.eax != self.apic {
                return Err(CpuidError::ApicIdMismatch {
                    which: "leaf 0x8000001e EAX".into(),
                    initial: self.apic,
                    found: l.eax,
                });
            }
            amd_node_id = l.ecx & 0xff;
            let has_l3 = self.max_ext >= 0x8000_0006 && self.cpuid(0x8000_0006, 0).edx != 0;
            llc = if self.flavor == Flavor::Hygon || (self.family == 0x17 && self.model <= 0x1F) {
                has_l3.then_some((self.apic >> 3, 3))
            } else if self.family < 0x17 {
                has_l3.then_some((amd_node_id, 0))
            } else if has_l3 {
                amd_llc_from_8000001d(self)
            } else {
                None
            };
        } else if topology_leaf != 1 {
            // legacy_set_llc(): the LLC is the die.
            let s = self.scan.shifts[CORE];
            llc = Some((self.apic >> s, s));
        }
        Ok((topology_leaf, amd_node_id, llc))
    }
}

/// Decodes a CPUID table the way Linux 6.12 derives topology (spec §2.2): initial APIC ID,
/// package id, core id, SMT sibling shift, LLC id. For tests and the `probe` diagnostic.
///
/// Follows 6.12 with the stable fix that lets 0x8000001E EAX override the APIC ID only when no
/// extended topology leaf was parsed; unlike Linux (which only warns), any disagreement between
/// APIC-ID sources Linux reads — including 0x8000001E EAX, which unfixed 6.12 always reads — is
/// an error, so a table that passes decodes the same on both.
pub fn decode_linux_view(entries: &[kvm_cpuid_entry2]) -> Result<DecodedCpu, CpuidError> {
    if !entries.iter().any(|e| e.function == 1) {
        return Err(CpuidError::MissingLeaf { leaf: 1 });
    }
    let l1 = lookup(entries, 1, 0);
    let (family, model) = family_model(l1.eax);
    let mut d = Decoder {
        e: entries,
        flavor: Flavor::of(entries),
        family,
        model,
        max_basic: lookup(entries, 0, 0).eax,
        max_ext: lookup(entries, 0x8000_0000, 0).eax,
        apic: l1.ebx >> 24,
        scan: Scan {
            shifts: [0; DOMAINS],
            ncpus: [0; DOMAINS],
        },
    };
    let leaf1_apic = d.apic;

    let (topology_leaf, amd_node_id, llc) = match d.flavor {
        Flavor::Amd | Flavor::Hygon => d.parse_amd()?,
        Flavor::Intel => {
            let topology_leaf = match d.parse_ext()? {
                Some(l) => l,
                None => {
                    d.parse_legacy();
                    1
                }
            };
            (topology_leaf, 0, intel_llc_from_leaf4(&d))
        }
        Flavor::Other => {
            d.parse_legacy();
            (1, 0, intel_llc_from_leaf4(&d))
        }
    };
    if leaf1_apic != d.apic & 0xff {
        return Err(CpuidError::ApicIdMismatch {
            which: "leaf 0x1 EBX[31:24]".into(),
            initial: d.apic,
            found: leaf1_apic,
        });
    }

    let s = &d.scan.shifts;
    let pkg_id = d.apic >> s[PKG - 1];
    let die_id = d.apic >> s[DIE - 1];
    let core_id = (d.apic & ((1u32 << s[PKG]) - 1)) >> s[SMT];
    let (llc_id, llc_shift) = llc.unwrap_or((pkg_id, s[PKG - 1]));
    Ok(DecodedCpu {
        vendor: CpuVendor::of(entries),
        family,
        model,
        apic_id: d.apic,
        topology_leaf,
        pkg_id,
        die_id,
        core_id,
        smt_shift: s[SMT],
        pkg_shift: s[PKG - 1],
        threads_per_core: 1 << s[SMT],
        amd_node_id,
        llc_id,
        llc_shift,
    })
}

/// Number of cache subleaves of `leaf` before the first with type 0 (`find_num_cache_leaves()`).
fn num_cache_leaves(d: &Decoder, leaf: u32) -> u32 {
    (0..MAX_SUBLEAVES)
        .find(|&i| d.cpuid(leaf, i).eax & 0x1f == 0)
        .unwrap_or(MAX_SUBLEAVES)
}

/// `cacheinfo_amd_init_llc_id()` for family >= 0x17 (not Zen1): the last cache subleaf's
/// sharing count gives the LLC shift.
fn amd_llc_from_8000001d(d: &Decoder) -> Option<(u32, u32)> {
    let n = num_cache_leaves(d, 0x8000_001D);
    if n == 0 {
        return None;
    }
    let eax = d.cpuid(0x8000_001D, n - 1).eax;
    if eax == 0 {
        return None;
    }
    let bits = count_order(((eax >> 14) & 0xfff) + 1);
    Some((d.apic >> bits, bits))
}

/// `init_intel_cacheinfo()` via leaf 4: the L3's sharing if there is one, else the L2's;
/// Linux keeps the id as the APIC ID with the low bits masked.
fn intel_llc_from_leaf4(d: &Decoder) -> Option<(u32, u32)> {
    if d.max_basic < 4 {
        return None;
    }
    let (mut l2, mut l3) = (None, None);
    for i in 0..num_cache_leaves(d, 4) {
        let eax = d.cpuid(4, i).eax;
        let bits = count_order(((eax >> 14) & 0xfff) + 1);
        match (eax >> 5) & 7 {
            2 => l2 = Some(bits),
            3 => l3 = Some(bits),
            _ => {}
        }
    }
    l3.or(l2).map(|bits| (d.apic & !((1u32 << bits) - 1), bits))
}
