//! Intent negotiation: contracts, refusals with reasons, the shared-IOAS constraint.

mod common;

use common::{mock_plugin, Rig};
use ioasis::{ContractKind, DeviceDesc, Error, Intent, IntentItem, PtFormat, RequesterId, Target};
use ioasis_plugin_mock::format::cap;

fn everything() -> Intent {
    Intent::new([
        IntentItem::UntaggedDma,
        IntentItem::PasidDma { width: 20 },
        IntentItem::PasidIoas,
        IntentItem::Enqcmd,
        IntentItem::PageFaults,
        IntentItem::DirtyTracking,
        IntentItem::NestedStage1 { format: PtFormat::X86_64 },
        IntentItem::Coherency,
        IntentItem::Ats,
    ])
}

#[test]
fn full_unit_grants_everything_with_the_units_facts() {
    let rig = Rig::new();
    let dev = rig.device(1, 0);
    let c = rig.ctx.negotiate(dev, &everything()).unwrap();
    assert_eq!(c.kind, ContractKind::Nested);
    assert_eq!(c.format, PtFormat::MOCK);
    assert_eq!(c.stage1, Some(PtFormat::X86_64));
    assert_eq!(c.page_sizes.to_string(), "4K,2M,1G");
    assert_eq!(c.aperture.last.0, (1 << 48) - 1);
    assert_eq!(c.pasids, Some(1..=0xfffff));
    assert_eq!(c.grants.len(), 9);
    assert!(c.shared_ioas.is_none());
    assert_eq!(rig.ctx.contract(dev).unwrap(), Some(c));
}

#[test]
fn a_limited_unit_refuses_each_item_with_its_reason() {
    // 16-bit PASIDs, no dirty tracking, no PRI, no nesting, no ATS.
    let limited = (cap::FULL & !(cap::DIRTY | cap::PRI | cap::NEST | cap::ATS) & !(0x1f << cap::PASID_BITS_SHIFT))
        | (16 << cap::PASID_BITS_SHIFT);
    let rig = Rig::with_units(&[limited], &mock_plugin());
    let dev = rig.device(1, 0);
    let e = rig.ctx.negotiate(dev, &everything()).unwrap_err();
    let Error::Refused(r) = e else { panic!("expected a refusal, got {e}") };
    let reasons: Vec<(String, String)> =
        r.unmet.iter().map(|u| (u.item.map(|i| i.to_string()).unwrap_or_default(), u.reason.clone())).collect();
    let find = |needle: &str| reasons.iter().find(|(i, _)| i.contains(needle)).map(|(_, r)| r.clone());
    assert!(find("PASID-tagged").unwrap().contains("16-bit PASIDs, 20 asked"), "{reasons:?}");
    assert!(find("page faults").unwrap().contains("page request"), "{reasons:?}");
    assert!(find("dirty").unwrap().contains("dirty"), "{reasons:?}");
    assert!(find("nested").unwrap().contains("nested translation"), "{reasons:?}");
    assert!(find("ATS").unwrap().contains("ATS"), "{reasons:?}");
    assert_eq!(r.unmet.len(), 5, "{reasons:?}");
    assert_eq!(r.granted.len(), 4);
    assert!(rig.ctx.contract(dev).unwrap().is_none(), "a refusal leaves no contract");
    // Asking only what the unit has is granted, with 16-bit PASIDs.
    let c = rig.ctx.negotiate(dev, &Intent::new([IntentItem::PasidDma { width: 16 }])).unwrap();
    assert_eq!(c.pasids, Some(1..=0xffff));
}

#[test]
fn device_facts_refuse_what_the_device_cannot_do() {
    let rig = Rig::new();
    let plain = rig.ctx.bind_device(DeviceDesc::pci("plain", RequesterId::new(0, 0, 5, 0), "u0")).unwrap();
    let e = rig
        .ctx
        .negotiate(plain, &Intent::new([IntentItem::PageFaults, IntentItem::Ats, IntentItem::PasidIoas]))
        .unwrap_err();
    let Error::Refused(r) = e else { panic!() };
    let text = r.to_string();
    assert!(text.contains("no PRI capability"), "{text}");
    assert!(text.contains("no ATS capability"), "{text}");
    assert!(text.contains("no PASID capability"), "{text}");
}

#[test]
fn conflicting_and_empty_intents_are_refused() {
    let rig = Rig::new();
    let dev = rig.device(1, 0);
    let e = rig.ctx.negotiate(dev, &Intent::new([IntentItem::Identity, IntentItem::DirtyTracking])).unwrap_err();
    assert!(e.to_string().contains("identity DMA has no page table"), "{e}");
    assert!(matches!(rig.ctx.negotiate(dev, &Intent::default()), Err(Error::Refused(_))));
}

#[test]
fn software_table_and_identity_contracts() {
    let rig = Rig::new();
    let mdev = rig.device(1, 0);
    let c = rig.ctx.negotiate(mdev, &Intent::new([IntentItem::SoftwareTable])).unwrap();
    assert_eq!(c.kind, ContractKind::Software);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(mdev, None, Target::Ioas(ioas)).unwrap();
    assert_eq!(rig.ctx.ioas_hwpts(ioas).unwrap().len(), 0, "no hardware table for an mdev");
    rig.ctx.map(ioas, Some(ioasis::Iova(0x1000)), ioasis::PhysAddr(0x5000), 0x2000, ioasis::Prot::READ).unwrap();
    let pieces = rig.ctx.access(ioas, ioasis::Iova(0x1800), 0x1000, ioasis::Prot::READ).unwrap();
    assert_eq!(pieces, vec![(ioasis::PhysAddr(0x5800), 0x1000)]);
    assert!(rig.ctx.access(ioas, ioasis::Iova(0x1800), 0x10, ioasis::Prot::WRITE).is_err());
    // The device is blocked in hardware: its DMA faults.
    assert!(rig.dma_read(0, 1, None, 0x1000, 4).is_err());

    let trusted = rig.device(2, 0);
    let c = rig.ctx.negotiate(trusted, &Intent::new([IntentItem::Identity])).unwrap();
    assert_eq!(c.kind, ContractKind::Identity);
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let id = rig.ctx.alloc_hwpt(unit, ioasis::HwptSpec::Identity).unwrap();
    assert!(matches!(rig.ctx.attach(trusted, None, Target::Ioas(ioas)), Err(Error::Invalid(_))));
    rig.ctx.attach(trusted, None, Target::Hwpt(id)).unwrap();
    rig.dma_write(0, 2, None, 0x7000, b"identity").unwrap();
    assert_eq!(rig.ram(0x7000, 8), b"identity");
    // A device without the identity grant cannot use that HWPT.
    let other = rig.paging_device(3, 0, &[]);
    assert!(matches!(rig.ctx.attach(other, None, Target::Hwpt(id)), Err(Error::NotGranted { .. })));
}

#[test]
fn devices_without_acs_must_share_one_ioas() {
    let rig = Rig::new();
    let mk = |dev: u8| {
        let mut d = DeviceDesc::pci(&format!("fn{dev}"), RequesterId::new(0, 1, 0, dev), "u0");
        d.no_acs_below = Some("0000:00:1c.0".into());
        let id = rig.ctx.bind_device(d).unwrap();
        (id, rig.ctx.negotiate(id, &Intent::new([IntentItem::UntaggedDma])).unwrap())
    };
    let (a, _) = mk(0);
    let (b, cb) = mk(1);
    let shared = cb.shared_ioas.clone().expect("contract states the constraint");
    assert_eq!(shared.boundary, "0000:00:1c.0");
    assert_eq!(shared.peers.iter().map(|p| p.0).collect::<Vec<_>>(), vec![a]);
    assert!(cb.to_string().contains("must share one IOAS"));
    let one = rig.ctx.alloc_ioas();
    let two = rig.ctx.alloc_ioas();
    rig.ctx.attach(a, None, Target::Ioas(one)).unwrap();
    let e = rig.ctx.attach(b, None, Target::Ioas(two)).unwrap_err();
    assert!(matches!(e, Error::MustShareIoas { .. }), "{e}");
    assert!(e.to_string().contains("no ACS below 0000:00:1c.0"), "{e}");
    assert!(rig.ctx.attachment(b, None).unwrap().is_none());
    rig.ctx.attach(b, None, Target::Ioas(one)).unwrap();
    // Moving one of them alone is refused too; blocking is always allowed.
    assert!(matches!(rig.ctx.replace(a, None, Target::Ioas(two)), Err(Error::MustShareIoas { .. })));
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let block = rig.ctx.alloc_hwpt(unit, ioasis::HwptSpec::Blocking).unwrap();
    rig.ctx.replace(a, None, Target::Hwpt(block)).unwrap();
    // An isolated device is free to go anywhere.
    let free = rig.paging_device(9, 0, &[]);
    rig.ctx.attach(free, None, Target::Ioas(two)).unwrap();
}
