//! Where the monitor finds things in a guest kernel: symbol addresses from the vmlinux's ELF
//! symbol table and struct field offsets from its BTF. Nothing is hard-coded, so a kernel
//! whose `struct rq` moved a field still reads right, and a kernel without what we need gives a
//! [`LayoutError`] that says what is missing.

use std::path::Path;

use btf_rs::{Btf, Type};
use goblin::elf::Elf;

/// Why the monitor cannot read this kernel.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The vmlinux could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not an ELF file (a bzImage has no symbols).
    #[error("{0} is not an ELF vmlinux (the monitor needs the vmlinux beside the bzImage for its symbols and BTF)")]
    NotElf(String),
    /// No `.BTF` section.
    #[error("{0} has no .BTF section (build the kernel with CONFIG_DEBUG_INFO_BTF=y)")]
    NoBtf(String),
    /// The BTF did not parse.
    #[error("the BTF of {path} does not parse: {detail}")]
    BadBtf {
        /// The file.
        path: String,
        /// The parser's message.
        detail: String,
    },
    /// A symbol the monitor needs is not in the symbol table.
    #[error("symbol {0} is not in the vmlinux's symbol table (CONFIG_KALLSYMS_ALL, and an unstripped symbol table, are needed)")]
    MissingSymbol(&'static str),
    /// A struct or field the monitor needs is not in the BTF.
    #[error("BTF has no {0}")]
    MissingField(String),
}

/// Guest-virtual addresses of the kernel variables the monitor reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Symbols {
    /// `runqueues`: the per-CPU `struct rq` (an offset into each CPU's per-CPU area).
    pub runqueues: u64,
    /// `__per_cpu_offset[NR_CPUS]`.
    pub per_cpu_offset: u64,
    /// `page_offset_base`: start of the direct map.
    pub page_offset_base: u64,
    /// `phys_base`: how far the kernel image was moved from its link address.
    pub phys_base: u64,
    /// `init_top_pgt`: the kernel's top-level page table (for vmalloc addresses).
    pub init_top_pgt: u64,
    /// `__pgtable_l5_enabled`, when the kernel has 5-level paging support.
    pub pgtable_l5_enabled: Option<u64>,
    /// `linux_banner`: checks the address translation ("Linux version ...").
    pub linux_banner: u64,
    /// `jiffies_64`.
    pub jiffies: u64,
    /// `scx_ops_enable_state_var` (sched_ext's state), when the kernel has sched_ext.
    pub scx_enable_state: Option<u64>,
    /// `scx_exit_info` (a pointer to the exit record), when the kernel has sched_ext.
    pub scx_exit_info: Option<u64>,
}

/// Byte offsets of the fields the monitor reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `rq.nr_running` (u32).
    pub rq_nr_running: u64,
    /// `rq.clock` (u64).
    pub rq_clock: u64,
    /// `rq.scx.nr_running` (u32), with sched_ext.
    pub rq_scx_nr_running: Option<u64>,
    /// `rq.scx.local_dsq.nr` (u32), with sched_ext.
    pub rq_scx_local_dsq_nr: Option<u64>,
    /// `rq.scx.flags` (u32), with sched_ext.
    pub rq_scx_flags: Option<u64>,
    /// `scx_exit_info.kind` (u32), with sched_ext.
    pub exit_kind: Option<u64>,
    /// `scx_exit_info.reason` (a `const char *`), with sched_ext.
    pub exit_reason: Option<u64>,
    /// `scx_exit_info.msg` (a `char *`), with sched_ext.
    pub exit_msg: Option<u64>,
}

/// Where the guest kernel keeps its BPF maps, for the host-side `bpf_map_write`: the map id
/// registry (`map_idr`, an xarray) and the fields read on the way to an array map's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapLayout {
    /// `map_idr`'s address.
    pub map_idr: u64,
    /// `idr.idr_rt.xa_head`: the xarray's root entry.
    pub idr_head: u64,
    /// `xa_node.shift` (u8).
    pub node_shift: u64,
    /// `xa_node.slots` (64 entries).
    pub node_slots: u64,
    /// `bpf_map.name` (16 bytes).
    pub map_name: u64,
    /// `bpf_map.map_type` (u32).
    pub map_type: u64,
    /// `bpf_map.value_size` (u32).
    pub map_value_size: u64,
    /// `bpf_array.value`: where an array map's entries start, from the map's address.
    pub array_value: u64,
}

impl MapLayout {
    fn of(elf: &Elf, btf: &Btf) -> Result<Self, LayoutError> {
        let map_idr = elf
            .syms
            .iter()
            .find(|s| elf.strtab.get_at(s.st_name) == Some("map_idr"))
            .map(|s| s.st_value)
            .ok_or(LayoutError::MissingSymbol("map_idr"))?;
        Ok(MapLayout {
            map_idr,
            idr_head: field_offset(btf, "idr", &["idr_rt", "xa_head"])?,
            node_shift: field_offset(btf, "xa_node", &["shift"])?,
            node_slots: field_offset(btf, "xa_node", &["slots"])?,
            map_name: field_offset(btf, "bpf_map", &["name"])?,
            map_type: field_offset(btf, "bpf_map", &["map_type"])?,
            map_value_size: field_offset(btf, "bpf_map", &["value_size"])?,
            array_value: field_offset(btf, "bpf_array", &["value"])?,
        })
    }
}

/// Everything the monitor needs to know about one kernel build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLayout {
    /// Symbol addresses.
    pub symbols: Symbols,
    /// Field offsets.
    pub offsets: Offsets,
    /// Names of `enum scx_ops_enable_state`'s values, by value.
    pub enable_states: Vec<(u32, String)>,
    /// Names of `enum scx_exit_kind`'s values, by value.
    pub exit_kinds: Vec<(u32, String)>,
    /// Where BPF maps are (`Err`: why the host cannot write into them).
    pub maps: Result<MapLayout, String>,
}

impl Default for KernelLayout {
    fn default() -> Self {
        KernelLayout {
            symbols: Symbols::default(),
            offsets: Offsets::default(),
            enable_states: Vec::new(),
            exit_kinds: Vec::new(),
            maps: Err("no kernel layout read".into()),
        }
    }
}

impl KernelLayout {
    /// Reads symbols and BTF from the ELF vmlinux at `path`.
    pub fn from_vmlinux(path: &Path) -> Result<Self, LayoutError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| LayoutError::Read {
            path: shown.clone(),
            source,
        })?;
        let elf = Elf::parse(&bytes).map_err(|_| LayoutError::NotElf(shown.clone()))?;
        let symbols = symbols_of(&elf)?;
        let btf_bytes = section(&elf, &bytes, ".BTF").ok_or(LayoutError::NoBtf(shown.clone()))?;
        let btf = Btf::from_bytes(btf_bytes).map_err(|e| LayoutError::BadBtf {
            path: shown,
            detail: e.to_string(),
        })?;
        let mut offsets = Offsets {
            rq_nr_running: field_offset(&btf, "rq", &["nr_running"])?,
            rq_clock: field_offset(&btf, "rq", &["clock"])?,
            ..Default::default()
        };
        let mut layout = KernelLayout::default();
        if symbols.scx_enable_state.is_some() {
            offsets.rq_scx_nr_running = Some(field_offset(&btf, "rq", &["scx", "nr_running"])?);
            offsets.rq_scx_local_dsq_nr =
                Some(field_offset(&btf, "rq", &["scx", "local_dsq", "nr"])?);
            offsets.rq_scx_flags = Some(field_offset(&btf, "rq", &["scx", "flags"])?);
            offsets.exit_kind = Some(field_offset(&btf, "scx_exit_info", &["kind"])?);
            offsets.exit_reason = Some(field_offset(&btf, "scx_exit_info", &["reason"])?);
            offsets.exit_msg = Some(field_offset(&btf, "scx_exit_info", &["msg"])?);
            layout.enable_states = enum_values(&btf, "scx_ops_enable_state");
            layout.exit_kinds = enum_values(&btf, "scx_exit_kind");
        }
        layout.maps = MapLayout::of(&elf, &btf).map_err(|e| e.to_string());
        layout.symbols = symbols;
        layout.offsets = offsets;
        Ok(layout)
    }

    /// The name of sched_ext enable state `v` (`SCX_OPS_ENABLED`), or the number.
    pub fn enable_state_name(&self, v: u32) -> String {
        name_of(&self.enable_states, v)
    }

    /// The name of sched_ext exit kind `v` (`SCX_EXIT_ERROR_STALL`), or the number.
    pub fn exit_kind_name(&self, v: u32) -> String {
        name_of(&self.exit_kinds, v)
    }
}

fn name_of(names: &[(u32, String)], v: u32) -> String {
    names
        .iter()
        .find(|(n, _)| *n == v)
        .map_or_else(|| v.to_string(), |(_, s)| s.clone())
}

fn section<'a>(elf: &Elf, bytes: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let sh = elf
        .section_headers
        .iter()
        .find(|sh| elf.shdr_strtab.get_at(sh.sh_name) == Some(name))?;
    let start = usize::try_from(sh.sh_offset).ok()?;
    let end = start.checked_add(usize::try_from(sh.sh_size).ok()?)?;
    bytes.get(start..end)
}

fn symbols_of(elf: &Elf) -> Result<Symbols, LayoutError> {
    let find = |name: &str| {
        elf.syms
            .iter()
            .find(|s| elf.strtab.get_at(s.st_name) == Some(name))
            .map(|s| s.st_value)
    };
    let need = |name: &'static str| find(name).ok_or(LayoutError::MissingSymbol(name));
    Ok(Symbols {
        runqueues: need("runqueues")?,
        per_cpu_offset: need("__per_cpu_offset")?,
        page_offset_base: need("page_offset_base")?,
        phys_base: need("phys_base")?,
        init_top_pgt: need("init_top_pgt")?,
        pgtable_l5_enabled: find("__pgtable_l5_enabled"),
        linux_banner: need("linux_banner")?,
        jiffies: need("jiffies_64")?,
        scx_enable_state: find("scx_ops_enable_state_var"),
        scx_exit_info: find("scx_exit_info"),
    })
}

/// The byte offset of `path` (`["scx", "local_dsq", "nr"]`) inside `struct outer`, following
/// embedded structs (typedefs and qualifiers resolved) and looking through anonymous structs
/// and unions (`bpf_array`'s `value` sits in an unnamed union of unnamed structs).
fn field_offset(btf: &Btf, outer: &str, path: &[&str]) -> Result<u64, LayoutError> {
    let shown = || format!("struct {outer}.{}", path.join("."));
    let mut ty = btf
        .resolve_types_by_name(outer)
        .ok()
        .and_then(|ts| ts.into_iter().find(|t| matches!(t, Type::Struct(_))))
        .ok_or_else(|| LayoutError::MissingField(shown()))?;
    let mut bits = 0u64;
    for name in path {
        let (at, next) =
            find_member(btf, ty, name, 0).ok_or_else(|| LayoutError::MissingField(shown()))?;
        bits += at;
        ty = next;
    }
    if bits % 8 != 0 {
        return Err(LayoutError::MissingField(format!(
            "{} (a bitfield)",
            shown()
        )));
    }
    Ok(bits / 8)
}

/// Member `name` of struct or union `ty` (or of an anonymous struct or union inside it): its
/// bit offset and type.
fn find_member(btf: &Btf, ty: Type, name: &str, depth: u32) -> Option<(u64, Type)> {
    let (Type::Struct(s) | Type::Union(s)) = strip(btf, ty) else {
        return None;
    };
    if depth > 8 {
        return None;
    }
    for m in &s.members {
        let member_name = btf.resolve_name(m).ok().unwrap_or_default();
        let mty = btf.resolve_chained_type(m).ok()?;
        if member_name == name {
            return Some((u64::from(m.bit_offset()), mty));
        }
        if member_name.is_empty() {
            if let Some((at, t)) = find_member(btf, mty, name, depth + 1) {
                return Some((u64::from(m.bit_offset()) + at, t));
            }
        }
    }
    None
}

/// Follows typedefs and qualifiers to the underlying type.
fn strip(btf: &Btf, mut ty: Type) -> Type {
    for _ in 0..16 {
        let next = match &ty {
            Type::Typedef(t) => btf.resolve_chained_type(t),
            Type::Volatile(t) | Type::Const(t) | Type::Restrict(t) => btf.resolve_chained_type(t),
            _ => return ty,
        };
        match next {
            Ok(n) => ty = n,
            Err(_) => return ty,
        }
    }
    ty
}

fn enum_values(btf: &Btf, name: &str) -> Vec<(u32, String)> {
    let Some(Type::Enum(e)) = btf
        .resolve_types_by_name(name)
        .ok()
        .and_then(|ts| ts.into_iter().find(|t| matches!(t, Type::Enum(_))))
    else {
        return Vec::new();
    };
    e.members
        .iter()
        .filter_map(|m| Some((m.val(), btf.resolve_name(m).ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel the suite boots, when there is one: `KTSTR_KERNEL`'s vmlinux, else the
    /// shared test kernel beside the repository.
    pub(crate) fn test_vmlinux() -> Option<std::path::PathBuf> {
        let k = crate::kernel::resolve(None).ok()?;
        k.vmlinux
    }

    #[test]
    fn reads_the_test_kernels_layout() {
        let Some(v) = test_vmlinux() else {
            eprintln!("no vmlinux (KTSTR_KERNEL unset, no cached kernel): layout test skipped");
            return;
        };
        let l = KernelLayout::from_vmlinux(&v).unwrap();
        // x86-64 link addresses: per-CPU symbols are offsets, the rest is kernel text/data.
        assert!(l.symbols.runqueues < 1 << 24, "{l:?}");
        assert!(l.symbols.per_cpu_offset >= 0xffff_ffff_8000_0000, "{l:?}");
        // struct rq starts with a lock then nr_running; clock is much further in.
        assert!(l.offsets.rq_nr_running > 0 && l.offsets.rq_nr_running < 64);
        assert!(l.offsets.rq_clock > l.offsets.rq_nr_running);
        let dsq = l.offsets.rq_scx_local_dsq_nr.expect("a sched_ext kernel");
        assert!(dsq < l.offsets.rq_scx_nr_running.unwrap());
        assert_eq!(
            l.enable_state_name(1),
            "SCX_OPS_ENABLED",
            "{:?}",
            l.enable_states
        );
        assert_eq!(
            l.exit_kind_name(1025),
            "SCX_EXIT_ERROR_BPF",
            "{:?}",
            l.exit_kinds
        );
        assert_eq!(l.exit_kind_name(77_777), "77777");
        let m = l.maps.as_ref().expect("map_idr and the map structs");
        assert!(m.map_idr >= 0xffff_ffff_8000_0000, "{m:?}");
        // bpf_array embeds bpf_map first; its entries come after the map and two u32s.
        assert!(
            m.array_value > m.map_value_size && m.array_value % 8 == 0,
            "{m:?}"
        );
        assert!(m.node_slots > m.node_shift, "{m:?}");
        eprintln!("{m:?}");
    }

    #[test]
    fn a_bzimage_or_garbage_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bzImage");
        std::fs::write(&p, b"MZ not an elf").unwrap();
        let e = KernelLayout::from_vmlinux(&p).unwrap_err().to_string();
        assert!(e.contains("is not an ELF vmlinux"), "{e}");
        let e = KernelLayout::from_vmlinux(&d.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("reading "), "{e}");
    }
}
