//! Object lifecycle: ids, busy objects, replace, teardown leaving nothing behind.

mod common;

use common::{Rig, MB};
use ioasis::{Context, Error, HwptSpec, Iova, PhysAddr, Prot, Target, UnmapMode};

#[test]
fn context_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Context>();
}

#[test]
fn teardown_frees_every_table_page() {
    let rig = Rig::new();
    let base_pages = rig.ctx.table_pages();
    assert!(base_pages >= 2, "the unit holds its device table and fault queue");
    let dev = rig.paging_device(1, 0, &[ioasis::IntentItem::PasidIoas, ioasis::IntentItem::DirtyTracking]);
    let a = rig.ctx.alloc_ioas();
    let b = rig.ctx.alloc_ioas();
    rig.ctx.map(a, Some(Iova(0)), PhysAddr(0), 6 * MB + 0x3000, Prot::RW).unwrap();
    rig.ctx.map(b, Some(Iova(1 << 40)), PhysAddr(0), MB, Prot::READ).unwrap();
    rig.ctx.attach(dev, None, Target::Ioas(a)).unwrap();
    rig.ctx.attach(dev, Some(ioasis::Pasid(7)), Target::Ioas(b)).unwrap();
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let parent = rig.ctx.attached_hwpt(dev, None).unwrap().unwrap();
    let _nested = rig
        .ctx
        .alloc_hwpt(
            unit,
            HwptSpec::Nested {
                parent,
                format: ioasis::PtFormat::MOCK,
                root: Iova(0x1000),
                words: vec![],
                fault_queue: None,
            },
        )
        .unwrap();
    let q = rig.ctx.alloc_fault_queue();
    let _with_q = rig
        .ctx
        .alloc_hwpt(unit, HwptSpec::Paging { ioas: b, flags: Default::default(), fault_queue: Some(q) })
        .unwrap();
    assert!(rig.ctx.table_pages() > base_pages + 6);
    rig.ctx.teardown().unwrap();
    assert_eq!(rig.ctx.table_pages(), 0, "teardown left table pages allocated");
}

#[test]
fn dropping_the_context_tears_down() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[]);
    let a = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(a)).unwrap();
    rig.ctx.map(a, Some(Iova(0)), PhysAddr(0), 2 * MB, Prot::RW).unwrap();
    let Rig { machine, ctx, .. } = rig;
    drop(ctx);
    use ioasis::platform::Platform;
    assert_eq!(machine.table_pages(), 0);
}

#[test]
fn objects_in_use_cannot_be_destroyed() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let hwpt =
        rig.ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: Default::default(), fault_queue: None }).unwrap();
    rig.ctx.attach(dev, None, Target::Hwpt(hwpt)).unwrap();
    for id in [ioas.0, hwpt.0, dev.0, unit.0] {
        assert!(matches!(rig.ctx.destroy(id), Err(Error::Busy { .. })), "{id} destroyed while in use");
    }
    rig.ctx.detach(dev, None).unwrap();
    rig.ctx.destroy(hwpt).unwrap();
    rig.ctx.destroy(ioas).unwrap();
    rig.ctx.destroy(dev).unwrap();
    rig.ctx.destroy(unit).unwrap();
    assert_eq!(rig.ctx.table_pages(), 0);
    assert!(matches!(rig.ctx.destroy(ioas), Err(Error::NoSuchObject { .. })));
}

#[test]
fn attach_needs_a_contract_and_replace_is_atomic() {
    let rig = Rig::new();
    let dev = rig.device(1, 0);
    let a = rig.ctx.alloc_ioas();
    let b = rig.ctx.alloc_ioas();
    assert!(matches!(rig.ctx.attach(dev, None, Target::Ioas(a)), Err(Error::NoContract { .. })));
    rig.ctx.negotiate(dev, &ioasis::Intent::new([ioasis::IntentItem::UntaggedDma])).unwrap();
    rig.ctx.map(a, Some(Iova(0)), PhysAddr(0x10_0000), 0x1000, Prot::RW).unwrap();
    rig.ctx.map(b, Some(Iova(0)), PhysAddr(0x20_0000), 0x1000, Prot::RW).unwrap();
    rig.ctx.attach(dev, None, Target::Ioas(a)).unwrap();
    assert!(matches!(rig.ctx.attach(dev, None, Target::Ioas(b)), Err(Error::Busy { .. })));
    rig.dma_write(0, 1, None, 0, b"A").unwrap();
    rig.ctx.replace(dev, None, Target::Ioas(b)).unwrap();
    rig.dma_write(0, 1, None, 0, b"B").unwrap();
    assert_eq!(rig.ram(0x10_0000, 1), b"A");
    assert_eq!(rig.ram(0x20_0000, 1), b"B");
    // The automatic HWPT of `a` went with its last user.
    assert_eq!(rig.ctx.ioas_hwpts(a).unwrap().len(), 0);
    // Unmapping b's page: the device now faults.
    rig.ctx.unmap(b, Iova(0), 0x1000, UnmapMode::Exact).unwrap();
    assert!(rig.dma_write(0, 1, None, 0, b"C").is_err());
    rig.ctx.detach(dev, None).unwrap();
    assert!(matches!(rig.ctx.detach(dev, None), Err(Error::NotAttached { .. })));
}

#[test]
fn pasid_attach_uses_its_own_ioas() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[ioasis::IntentItem::PasidDma { width: 8 }]);
    let untagged = rig.ctx.alloc_ioas();
    let tagged = rig.ctx.alloc_ioas();
    rig.ctx.map(untagged, Some(Iova(0x1000)), PhysAddr(0x10_0000), 0x1000, Prot::RW).unwrap();
    rig.ctx.map(tagged, Some(Iova(0x1000)), PhysAddr(0x20_0000), 0x1000, Prot::RW).unwrap();
    rig.ctx.attach(dev, None, Target::Ioas(untagged)).unwrap();
    rig.ctx.attach(dev, Some(ioasis::Pasid(5)), Target::Ioas(tagged)).unwrap();
    assert_eq!(rig.ctx.attached_ioas(dev, None).unwrap(), Some(untagged));
    assert_eq!(rig.ctx.attached_ioas(dev, Some(ioasis::Pasid(5))).unwrap(), Some(tagged));
    assert_eq!(rig.ctx.attached_ioas(dev, Some(ioasis::Pasid(6))).unwrap(), None);
    rig.dma_write(0, 1, None, 0x1000, b"rid").unwrap();
    rig.dma_write(0, 1, Some(5), 0x1000, b"pasid").unwrap();
    assert_eq!(rig.ram(0x10_0000, 3), b"rid");
    assert_eq!(rig.ram(0x20_0000, 5), b"pasid");
    // PASID 6 is not attached; 0x100 is beyond the 8-bit contract.
    assert!(rig.dma_write(0, 1, Some(6), 0x1000, b"x").is_err());
    assert!(matches!(
        rig.ctx.attach(dev, Some(ioasis::Pasid(0x100)), Target::Ioas(tagged)),
        Err(Error::PasidOutOfRange { .. })
    ));
    rig.ctx.detach(dev, Some(ioasis::Pasid(5))).unwrap();
    assert!(rig.dma_write(0, 1, Some(5), 0x1000, b"x").is_err());
    rig.dma_write(0, 1, None, 0x1000, b"RID").unwrap();
}
