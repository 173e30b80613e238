use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// CPUs grouped by a key, as sorted sets (order-independent comparison of groupings).
fn groups<K: Ord>(keys: impl Iterator<Item = (u32, K)>) -> BTreeSet<BTreeSet<u32>> {
    let mut m: BTreeMap<K, BTreeSet<u32>> = BTreeMap::new();
    for (cpu, k) in keys {
        m.entry(k).or_default().insert(cpu);
    }
    m.into_values().collect()
}

fn decode_all(vendor: CpuVendor, topo: &Topology) -> Vec<DecodedCpu> {
    let sup = synthetic_supported(vendor);
    (0..topo.num_cpus())
        .map(|cpu| {
            let t = vcpu_cpuid(&sup, topo, cpu)
                .unwrap_or_else(|e| panic!("{topo} cpu {cpu} {vendor:?}: {e}"));
            assert!(t.len() <= MAX_CPUID_ENTRIES);
            decode_linux_view(&t).unwrap_or_else(|e| panic!("{topo} cpu {cpu} {vendor:?}: {e}"))
        })
        .collect()
}

/// The guest's view (decoded by Linux's rules) equals the topology (spec §2.1).
fn check_shape(vendor: CpuVendor, label: &str) {
    let topo = Topology::parse(label).unwrap();
    let d = decode_all(vendor, &topo);
    let ctx = format!("{label} {vendor:?}");
    for (cpu, v) in d.iter().enumerate() {
        let cpu = cpu as u32;
        let p = topo.place(cpu);
        assert_eq!(v.apic_id, topo.apic_id(cpu), "{ctx} cpu {cpu}: APIC ID");
        assert_eq!(v.topology_leaf, 0xB, "{ctx}: topology leaf");
        assert_eq!(
            (v.pkg_id, v.die_id),
            (p.node, p.node),
            "{ctx} cpu {cpu}: package"
        );
        assert_eq!(
            v.core_id,
            (p.llc_in_node << topo.apic_layout().core_bits) | p.core,
            "{ctx} cpu {cpu}: core_id"
        );
        assert_eq!(v.threads_per_core, topo.threads.next_power_of_two());
        assert_eq!(
            v.apic_id >> v.llc_shift,
            (p.node << topo.apic_layout().llc_bits) | p.llc_in_node,
            "{ctx} cpu {cpu}: cache/index3/id"
        );
        if vendor == CpuVendor::Amd {
            assert_eq!(v.amd_node_id, p.node);
        }
    }
    // Core ids unique within the package: one (pkg, core_id) per topology core.
    let cores = groups(
        d.iter()
            .enumerate()
            .map(|(c, v)| (c as u32, (v.pkg_id, v.core_id))),
    );
    let want_cores = groups((0..topo.num_cpus()).map(|c| (c, c / topo.threads)));
    assert_eq!(cores, want_cores, "{ctx}: cores");
    // SMT siblings as Linux's match_smt() finds them (AMD with TOPOEXT also needs equal node
    // and LLC ids).
    let smt = groups(d.iter().enumerate().map(|(c, v)| {
        let key = (v.pkg_id, v.die_id, v.core_id);
        let amd = if vendor == CpuVendor::Amd {
            (v.amd_node_id, v.llc_id)
        } else {
            (0, 0)
        };
        (c as u32, (key, amd))
    }));
    assert_eq!(smt, want_cores, "{ctx}: SMT siblings");
    let llcs = groups(d.iter().enumerate().map(|(c, v)| (c as u32, v.llc_id)));
    let want_llcs = groups(topo.places().map(|p| (p.cpu, p.llc)));
    assert_eq!(llcs, want_llcs, "{ctx}: LLC groups");
    let pkgs = groups(d.iter().enumerate().map(|(c, v)| (c as u32, v.pkg_id)));
    let want_pkgs = groups(topo.places().map(|p| (p.cpu, p.node)));
    assert_eq!(pkgs, want_pkgs, "{ctx}: packages");
}

#[test]
fn every_shape_decodes_to_the_topology_amd() {
    for label in TEST_SHAPES {
        check_shape(CpuVendor::Amd, label);
    }
}

#[test]
fn every_shape_decodes_to_the_topology_intel() {
    for label in TEST_SHAPES {
        check_shape(CpuVendor::Intel, label);
    }
}

#[test]
fn fixtures_are_what_the_spec_describes() {
    let amd = synthetic_supported(CpuVendor::Amd);
    assert_eq!(CpuVendor::of(&amd), CpuVendor::Amd);
    assert_eq!(lookup(&amd, 0, 0).eax, 0x10);
    assert_eq!(lookup(&amd, 0x8000_0000, 0).eax, 0x8000_0022);
    assert_eq!(family_model(lookup(&amd, 1, 0).eax), (0x19, 0x01));
    let b: Vec<_> = amd.iter().filter(|e| e.function == 0xB).collect();
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].eax, b[0].ebx, b[0].ecx, b[0].edx), (0, 0, 0, 0));
    assert_eq!(lookup(&amd, 0x8000_001D, 3).eax, 0x4163);
    assert_eq!(
        CpuVendor::of(&synthetic_supported(CpuVendor::Intel)),
        CpuVendor::Intel
    );
    assert_eq!(
        CpuVendor::of(&synthetic_supported(CpuVendor::Other)),
        CpuVendor::Other
    );
}

#[test]
fn the_unpatched_host_table_shows_the_known_pitfalls() {
    // The decoder is not a mirror of the patcher: on the raw Milan table it finds no 0xB
    // topology, falls back to 0x80000008/0x8000001E, and (KVM's zeroed 0x8000001E) gives every
    // CPU APIC ID 0 -- the pitfall from spec §0/§2.2.
    let d = decode_linux_view(&synthetic_supported(CpuVendor::Amd)).unwrap();
    assert_eq!(d.topology_leaf, 0x8000_0008);
    assert_eq!(d.apic_id, 0);
    // Intel's raw table: zero 0x1F and 0xB, so the legacy leaf 1/4 path.
    let d = decode_linux_view(&synthetic_supported(CpuVendor::Intel)).unwrap();
    assert_eq!(d.topology_leaf, 1);
}

#[test]
fn leaf_values_follow_the_spec_table() {
    let topo = Topology::parse("2n4l4c2t").unwrap(); // t=1, c=2, l=1: pkg_shift 4
    let cpu = 13; // node 0, llc 1, core 2, thread 1
    let apic = topo.apic_id(cpu);
    for vendor in [CpuVendor::Amd, CpuVendor::Intel] {
        let t = vcpu_cpuid(&synthetic_supported(vendor), &topo, cpu).unwrap();
        let l1 = lookup(&t, 1, 0);
        assert_eq!(l1.ebx >> 24, apic);
        assert_eq!((l1.ebx >> 16) & 0xff, 16);
        assert_ne!(l1.edx & L1_EDX_HTT, 0);
        assert_ne!(l1.ecx & (1 << 24), 0, "TSC-deadline kept");
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor kept");
        let b: Vec<_> = t.iter().filter(|e| e.function == 0xB).collect();
        assert_eq!(b.len(), 3);
        assert!(b
            .iter()
            .all(|e| e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX != 0));
        let regs: Vec<_> = b
            .iter()
            .map(|e| (e.index, e.eax, e.ebx, e.ecx, e.edx))
            .collect();
        assert_eq!(
            regs,
            [
                (0, 1, 2, 0x100, apic),
                (1, 4, 16, 0x201, apic),
                (2, 0, 0, 0x2, apic)
            ]
        );
        assert!(
            t.windows(2).all(|w| w[0].function <= w[1].function
                || w[1].function >= 0x4000_0000
                || w[0].function >= 0x8000_0000),
            "leaf order"
        );
        assert_eq!(lookup(&t, 0x8000_0008, 0).ecx & 0xf0ff, (4 << 12) | 15);
        assert_eq!(lookup(&t, 0xA, 0).eax, 0, "PMU hidden");
        assert_eq!(
            lookup(&t, 0x4000_0000, 0),
            lookup(&synthetic_supported(vendor), 0x4000_0000, 0)
        );
        if vendor == CpuVendor::Amd {
            let e1 = lookup(&t, 0x8000_0001, 0).ecx;
            assert_eq!(
                e1 & (E1_ECX_TOPOEXT | E1_ECX_CMP_LEGACY),
                E1_ECX_TOPOEXT | E1_ECX_CMP_LEGACY
            );
            let e = lookup(&t, 0x8000_001E, 0);
            assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (apic, (1 << 8) | 6, 0, 0));
            // L1/L2 per core (2 threads), L3 per LLC (8 ids); sizes kept.
            let sharing: Vec<u32> = (0..4)
                .map(|i| ((lookup(&t, 0x8000_001D, i).eax >> 14) & 0xfff) + 1)
                .collect();
            assert_eq!(sharing, [2, 2, 2, 8]);
            assert_eq!(lookup(&t, 0x8000_001D, 3).ebx, 0x03C0_003F);
        } else {
            let l4: Vec<(u32, u32)> = (0..4)
                .map(|i| {
                    let eax = lookup(&t, 4, i).eax;
                    (((eax >> 14) & 0xfff) + 1, (eax >> 26) + 1)
                })
                .collect();
            assert_eq!(l4, [(2, 8), (2, 8), (2, 8), (8, 8)]);
            let z = lookup(&t, 0x1F, 0);
            assert_eq!((z.eax, z.ebx, z.ecx, z.edx), (0, 0, 0, 0));
        }
    }
}

#[test]
fn single_cpu_packages_clear_htt() {
    let topo = Topology::parse("1n1l1c1t").unwrap();
    let t = vcpu_cpuid(&synthetic_supported(CpuVendor::Amd), &topo, 0).unwrap();
    assert_eq!(lookup(&t, 1, 0).edx & L1_EDX_HTT, 0);
    assert_eq!((lookup(&t, 1, 0).ebx >> 16) & 0xff, 1);
}

#[test]
fn x2apic_shapes_put_full_ids_in_0xb_and_0x8000001e() {
    let topo = Topology::parse("1n14l18c1t").unwrap();
    let last = topo.num_cpus() - 1;
    let apic = topo.apic_id(last);
    assert!(apic > 0xFF);
    let t = vcpu_cpuid(&synthetic_supported(CpuVendor::Amd), &topo, last).unwrap();
    assert_eq!(lookup(&t, 0xB, 0).edx, apic);
    assert_eq!(lookup(&t, 0x8000_001E, 0).eax, apic);
    assert_eq!(lookup(&t, 1, 0).ebx >> 24, apic & 0xff);
    assert_eq!((lookup(&t, 1, 0).ebx >> 16) & 0xff, 255);
    assert_ne!(lookup(&t, 1, 0).ecx & L1_ECX_X2APIC, 0);
}

#[test]
fn msi_ext_dest_id_only_for_x2apic_shapes() {
    for vendor in [CpuVendor::Amd, CpuVendor::Intel] {
        let sup = synthetic_supported(vendor);
        assert_eq!(
            lookup(&sup, 0x4000_0001, 0).eax & KVM_FEATURE_MSI_EXT_DEST_ID,
            0
        );
        let big = Topology::parse("1n14l9c2t").unwrap();
        let t = vcpu_cpuid(&sup, &big, 5).unwrap();
        let kvm = lookup(&t, 0x4000_0001, 0);
        assert_ne!(kvm.eax & KVM_FEATURE_MSI_EXT_DEST_ID, 0);
        // The other PV features are kept.
        assert_eq!(
            kvm.eax & !KVM_FEATURE_MSI_EXT_DEST_ID,
            lookup(&sup, 0x4000_0001, 0).eax
        );
        let small = Topology::parse("2n2l2c2t").unwrap();
        let t = vcpu_cpuid(&sup, &small, 5).unwrap();
        assert_eq!(
            lookup(&t, 0x4000_0001, 0).eax & KVM_FEATURE_MSI_EXT_DEST_ID,
            0
        );
        // Without the KVM leaf an x2APIC shape cannot work.
        let no_kvm: Vec<_> = sup
            .iter()
            .copied()
            .filter(|e| e.function != 0x4000_0001)
            .collect();
        assert_eq!(
            vcpu_cpuid(&no_kvm, &big, 0),
            Err(CpuidError::MissingLeaf { leaf: 0x4000_0001 })
        );
        vcpu_cpuid(&no_kvm, &small, 0).unwrap();
    }
}

#[test]
fn topoext_is_forced_on_amd() {
    // A host table without TOPOEXT would make 6.12 ignore 0xB on AMD.
    let mut sup = synthetic_supported(CpuVendor::Amd);
    for e in sup.iter_mut().filter(|e| e.function == 0x8000_0001) {
        e.ecx &= !E1_ECX_TOPOEXT;
    }
    check_decodes(&sup, "2n4l4c2t");
}

#[test]
fn missing_0x8000001e_is_inserted() {
    let sup: Vec<_> = synthetic_supported(CpuVendor::Amd)
        .into_iter()
        .filter(|e| e.function != 0x8000_001E)
        .collect();
    check_decodes(&sup, "2n2l2c2t");
}

fn check_decodes(sup: &[kvm_cpuid_entry2], label: &str) {
    let topo = Topology::parse(label).unwrap();
    for cpu in 0..topo.num_cpus() {
        let d = decode_linux_view(&vcpu_cpuid(sup, &topo, cpu).unwrap()).unwrap();
        let p = topo.place(cpu);
        assert_eq!((d.apic_id, d.pkg_id), (topo.apic_id(cpu), p.node));
        assert_eq!(
            d.apic_id >> d.llc_shift,
            p.llc_in_node | (p.node << topo.apic_layout().llc_bits)
        );
    }
}

#[test]
fn zen1_and_hygon_accept_only_8_id_llcs() {
    let zen1 = |sup: &mut Vec<kvm_cpuid_entry2>| {
        for e in sup
            .iter_mut()
            .filter(|e| e.function == 1 || e.function == 0x8000_0001)
        {
            e.eax = 0x0080_0F12; // family 0x17, model 0x01
        }
    };
    let mut sup = synthetic_supported(CpuVendor::Amd);
    zen1(&mut sup);
    // 4 cores x 2 threads = 8 ids per LLC: fine, and Linux's apic>>3 rule agrees.
    let topo = Topology::parse("2n4l4c2t").unwrap();
    for cpu in 0..topo.num_cpus() {
        let d = decode_linux_view(&vcpu_cpuid(&sup, &topo, cpu).unwrap()).unwrap();
        assert_eq!(d.llc_id, topo.place(cpu).llc);
    }
    // A single small LLC lies within one 8-id block: fine too.
    vcpu_cpuid(&sup, &Topology::parse("1n1l2c1t").unwrap(), 0).unwrap();
    // 2-core LLCs would be merged by apic>>3: refused with a clear message.
    let e = vcpu_cpuid(&sup, &Topology::parse("1n2l2c1t").unwrap(), 0).unwrap_err();
    assert!(
        matches!(
            e,
            CpuidError::HardcodedLlc {
                cpu: "Zen1",
                llc_ids: 2,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("APIC ID >> 3"), "{e}");
    // Hygon: same rule whatever the model.
    let mut hygon = synthetic_supported(CpuVendor::Amd);
    let (b, c, d) = fixtures::vendor_regs(b"HygonGenuine");
    for e in hygon.iter_mut().filter(|e| e.function == 0) {
        (e.ebx, e.ecx, e.edx) = (b, c, d);
    }
    assert_eq!(CpuVendor::of(&hygon), CpuVendor::Other);
    let e = vcpu_cpuid(&hygon, &Topology::parse("1n4l16c2t").unwrap(), 0).unwrap_err();
    assert!(
        matches!(
            e,
            CpuidError::HardcodedLlc {
                cpu: "Hygon",
                llc_ids: 32,
                ..
            }
        ),
        "{e}"
    );
    let topo = Topology::parse("1n2l4c2t").unwrap();
    for cpu in 0..topo.num_cpus() {
        let d = decode_linux_view(&vcpu_cpuid(&hygon, &topo, cpu).unwrap()).unwrap();
        assert_eq!(d.llc_id, topo.place(cpu).llc);
    }
}

#[test]
fn errors() {
    let topo = Topology::parse("1n2l2c1t").unwrap();
    let amd = synthetic_supported(CpuVendor::Amd);
    assert_eq!(
        vcpu_cpuid(&amd, &topo, 4),
        Err(CpuidError::CpuOutOfRange { cpu: 4, cpus: 4 })
    );
    // No L3 on the host: Linux would make the LLC the package.
    let mut no_l3 = amd.clone();
    for e in no_l3.iter_mut().filter(|e| e.function == 0x8000_0006) {
        e.edx = 0;
    }
    assert_eq!(
        vcpu_cpuid(&no_l3, &topo, 0),
        Err(CpuidError::NoL3Cache { leaf: 0x8000_0006 })
    );
    let no_l3: Vec<_> = amd
        .iter()
        .copied()
        .filter(|e| !(e.function == 0x8000_001D && e.index == 3))
        .collect();
    assert_eq!(
        vcpu_cpuid(&no_l3, &topo, 0),
        Err(CpuidError::NoL3Cache { leaf: 0x8000_001D })
    );
    let intel_no_l3: Vec<_> = synthetic_supported(CpuVendor::Intel)
        .into_iter()
        .filter(|e| !(e.function == 4 && e.index == 3))
        .collect();
    assert_eq!(
        vcpu_cpuid(&intel_no_l3, &topo, 0),
        Err(CpuidError::NoL3Cache { leaf: 4 })
    );
    // x2APIC shapes need the x2APIC bit.
    let mut no_x2 = amd.clone();
    for e in no_x2.iter_mut().filter(|e| e.function == 1) {
        e.ecx &= !L1_ECX_X2APIC;
    }
    let big = Topology::parse("1n14l9c2t").unwrap();
    assert!(matches!(
        vcpu_cpuid(&no_x2, &big, 0),
        Err(CpuidError::X2apicUnsupported { .. })
    ));
    vcpu_cpuid(&no_x2, &topo, 0).unwrap();
    // Too many entries for KVM.
    let mut huge = amd.clone();
    huge.extend((0..60).map(|i| kvm_cpuid_entry2 {
        function: 0xD,
        index: 3 + i,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        ..Default::default()
    }));
    assert!(matches!(
        vcpu_cpuid(&huge, &topo, 0),
        Err(CpuidError::TooManyEntries { .. })
    ));
    // Decoding catches disagreeing APIC-ID sources.
    let mut t = vcpu_cpuid(&amd, &topo, 1).unwrap();
    for e in t.iter_mut().filter(|e| e.function == 0x8000_001E) {
        e.eax = 0;
    }
    assert!(matches!(
        decode_linux_view(&t),
        Err(CpuidError::ApicIdMismatch { .. })
    ));
    let mut t = vcpu_cpuid(&amd, &topo, 1).unwrap();
    for e in t.iter_mut().filter(|e| e.function == 0xB && e.index == 1) {
        e.edx = 7;
    }
    assert!(matches!(
        decode_linux_view(&t),
        Err(CpuidError::ApicIdMismatch { .. })
    ));
    assert_eq!(
        decode_linux_view(&[]),
        Err(CpuidError::MissingLeaf { leaf: 1 })
    );
}

#[test]
fn other_vendors_use_the_legacy_leaves() {
    // Centaur/Zhaoxin: Linux ignores 0xB and reads leaf 1 + leaf 4, which the patch also sets.
    for label in ["1n2l4c2t", "2n2l2c2t", "1n3l3c1t"] {
        let topo = Topology::parse(label).unwrap();
        let sup = synthetic_supported(CpuVendor::Other);
        for cpu in 0..topo.num_cpus() {
            let d = decode_linux_view(&vcpu_cpuid(&sup, &topo, cpu).unwrap()).unwrap();
            let p = topo.place(cpu);
            assert_eq!(d.topology_leaf, 1);
            assert_eq!(
                (d.pkg_id, d.smt_shift),
                (p.node, topo.apic_layout().smt_shift()),
                "{label} {cpu}"
            );
            assert_eq!(
                d.apic_id >> d.llc_shift,
                p.llc_in_node | (p.node << topo.apic_layout().llc_bits)
            );
        }
    }
}

/// KVM reports neither bit; without HYPERVISOR Linux never looks for kvmclock (it ran on
/// jiffies, and lost interrupts and clock ticks under nested KVM), without TSC-deadline it
/// calibrates the LAPIC timer against a reference it does not have.
#[test]
fn hypervisor_and_tsc_deadline_bits_are_set() {
    for vendor in [CpuVendor::Amd, CpuVendor::Intel] {
        let mut sup = synthetic_supported(vendor);
        for e in sup.iter_mut().filter(|e| e.function == 1) {
            e.ecx &= !(L1_ECX_HYPERVISOR | L1_ECX_TSC_DEADLINE);
        }
        for label in ["1n1l1c1t", "2n4l2c2t", "1n14l9c2t"] {
            let topo = Topology::parse(label).unwrap();
            let t = vcpu_cpuid(&sup, &topo, topo.num_cpus() - 1).unwrap();
            let ecx = lookup(&t, 1, 0).ecx;
            assert_ne!(ecx & L1_ECX_HYPERVISOR, 0, "{label} {vendor:?}");
            assert_ne!(ecx & L1_ECX_TSC_DEADLINE, 0, "{label} {vendor:?}");
            // Everything else in leaf 1 ECX is the host's.
            let host = lookup(&sup, 1, 0).ecx;
            assert_eq!(
                ecx & !(L1_ECX_HYPERVISOR | L1_ECX_TSC_DEADLINE),
                host,
                "{label}"
            );
        }
    }
}

#[test]
fn hide_xsave_clears_the_bit_and_leaf_0xd_and_keeps_the_topology() {
    for vendor in [CpuVendor::Amd, CpuVendor::Intel] {
        let mut sup = synthetic_supported(vendor);
        for e in sup.iter_mut().filter(|e| e.function == 1) {
            e.ecx |= L1_ECX_XSAVE;
        }
        let topo = Topology::parse("1n2l2c2t").unwrap();
        let mut t = vcpu_cpuid(&sup, &topo, 3).unwrap();
        assert_ne!(lookup(&t, 1, 0).ecx & L1_ECX_XSAVE, 0);
        let before = t.clone();
        hide_xsave(&mut t);
        let ecx = lookup(&t, 1, 0).ecx;
        assert_eq!(ecx & L1_ECX_XSAVE, 0, "{vendor:?}");
        assert_ne!(ecx & L1_ECX_HYPERVISOR, 0, "{vendor:?}");
        assert!(lookup(&before, 0xD, 0).eax != 0, "the fixture has leaf 0xD");
        for d in t.iter().filter(|e| e.function == 0xD) {
            assert_eq!((d.eax, d.ebx, d.ecx, d.edx), (0, 0, 0, 0), "{vendor:?}");
        }
        // Nothing but leaf 1 ECX bit 26 and leaf 0xD changed.
        for (a, b) in before.iter().zip(&t) {
            if a.function != 1 && a.function != 0xD {
                assert_eq!(
                    (a.eax, a.ebx, a.ecx, a.edx),
                    (b.eax, b.ebx, b.ecx, b.edx),
                    "{vendor:?} leaf {:#x}",
                    a.function
                );
            }
        }
    }
}
