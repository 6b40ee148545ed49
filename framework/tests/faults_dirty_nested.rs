//! Faults and page requests, dirty tracking, nested translation and its invalidation.

mod common;

use common::{Rig, MB};
use ioasis::abi::{CacheInvalidation, Fault, HwptFlags, PageResponse};
use ioasis::{HwptSpec, IntentItem, Iova, PhysAddr, Prot, PtFormat, Target};
use ioasis_baremetal::DmaError;
use ioasis_plugin_mock::format::pte;

#[test]
fn a_dma_fault_is_recorded_with_source_address_and_reason() {
    let rig = Rig::new();
    let dev = rig.paging_device(4, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    let e = rig.dma_write(0, 4, None, 0x1234_5000, b"x").unwrap_err();
    let DmaError::Fault(f) = e else { panic!("{e:?}") };
    assert_eq!(f.reason, Fault::NOT_PRESENT);
    assert_eq!(rig.ctx.poll_faults().unwrap(), 1);
    assert_eq!(rig.ctx.fault_log().len(), 1, "peeking does not drain");
    let log = rig.ctx.take_fault_log();
    assert!(rig.ctx.fault_log().is_empty());
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].dev, Rig::rid(4));
    assert_eq!(log[0].addr, Iova(0x1234_5000));
    assert_eq!(log[0].access, Prot::WRITE);
    assert_eq!(log[0].reason, Fault::NOT_PRESENT);
    assert!(!log[0].page_request);
}

#[test]
fn page_requests_reach_the_fault_queue_and_responses_reach_the_unit() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[IntentItem::PageFaults]);
    let ioas = rig.ctx.alloc_ioas();
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let q = rig.ctx.alloc_fault_queue();
    let h =
        rig.ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: Some(q) }).unwrap();
    rig.ctx.attach(dev, None, Target::Hwpt(h)).unwrap();
    assert!(rig.dma_read(0, 1, None, 0x8000, 4).is_err());
    rig.ctx.poll_faults().unwrap();
    let events = rig.ctx.read_faults(q).unwrap();
    assert_eq!(events.len(), 1);
    assert!(events[0].fault.page_request);
    assert_eq!(events[0].device, dev);
    // The handler maps the page and answers.
    rig.ctx.map(ioas, Some(Iova(0x8000)), PhysAddr(0x9000), 0x1000, Prot::RW).unwrap();
    rig.ctx.respond(q, events[0].cookie, PageResponse::SUCCESS).unwrap();
    let sent = rig.models[0].page_responses();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].group, events[0].fault.group);
    assert_eq!(sent[0].code, PageResponse::SUCCESS);
    rig.dma_read(0, 1, None, 0x8000, 4).unwrap();
    assert!(rig.ctx.respond(q, events[0].cookie, 0).is_err(), "a cookie is answered once");
}

#[test]
fn dirty_tracking_reports_device_writes_and_clears_them() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[IntentItem::DirtyTracking]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    let hwpt = rig.ctx.attached_hwpt(dev, None).unwrap().unwrap();
    rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(0x100_0000), 4 * MB, Prot::RW).unwrap();
    rig.ctx.map(ioas, Some(Iova(8 * MB)), PhysAddr(0x200_1000), 0x4000, Prot::RW).unwrap();
    // Writes before tracking is on are not reported.
    rig.dma_write(0, 1, None, 0x3000, b"early").unwrap();
    rig.ctx.set_dirty_tracking(hwpt, true).unwrap();
    assert_eq!(
        rig.ctx.read_dirty(hwpt, Iova(0), 16 * MB, 4096, false).unwrap().iter().map(|w| w.count_ones()).sum::<u32>(),
        0
    );
    rig.dma_write(0, 1, None, 8 * MB + 0x2000, b"dirty").unwrap();
    rig.dma_read(0, 1, None, 8 * MB + 0x1000, 4).unwrap();
    rig.dma_write(0, 1, None, 2 * MB + 5, b"big").unwrap();
    let bm = rig.ctx.read_dirty(hwpt, Iova(0), 16 * MB, 2 * MB, true).unwrap();
    assert_eq!(bm, vec![0b1_0010], "2 MiB granules 1 and 4 were written");
    let bm = rig.ctx.read_dirty(hwpt, Iova(8 * MB), 0x4000, 4096, false).unwrap();
    assert_eq!(bm, vec![0b0100], "only the written 4 KiB page, not the read one");
    let bm = rig.ctx.read_dirty(hwpt, Iova(8 * MB), 0x4000, 4096, false).unwrap();
    assert_eq!(bm, vec![0], "read-and-clear cleared it");
    // After clearing, a new write through a warm IOTLB is reported again.
    rig.dma_write(0, 1, None, 8 * MB + 0x2000, b"again").unwrap();
    assert_eq!(rig.ctx.read_dirty(hwpt, Iova(8 * MB), 0x4000, 4096, false).unwrap(), vec![0b0100]);
    rig.ctx.set_dirty_tracking(hwpt, false).unwrap();
    rig.dma_write(0, 1, None, 8 * MB, b"off").unwrap();
    let e = rig.ctx.read_dirty(hwpt, Iova(8 * MB), 0x4000, 4096, false).unwrap_err();
    assert!(matches!(e, ioasis::Error::DirtyTrackingOff { .. }), "{e}");
}

#[test]
fn dirty_tracking_needs_a_hwpt_allocated_for_it() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    let hwpt = rig.ctx.attached_hwpt(dev, None).unwrap().unwrap();
    assert!(rig.ctx.set_dirty_tracking(hwpt, true).is_err());
}

#[test]
fn nested_translation_walks_the_guest_stage1_through_the_stage2() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[IntentItem::NestedStage1 { format: PtFormat::MOCK }]);
    let ioas = rig.ctx.alloc_ioas();
    // Stage-2: guest physical [0, 16 MiB) is host physical [64 MiB, 80 MiB).
    let g2h = 64 * MB;
    rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(g2h), 16 * MB, Prot::RW).unwrap();
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let parent =
        rig.ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: None }).unwrap();
    common::write_stage1(&rig, g2h, 0x1000, 0x4000_0000, 0x10_0000, pte::R | pte::W);
    let nested = rig
        .ctx
        .alloc_hwpt(
            unit,
            HwptSpec::Nested { parent, format: PtFormat::MOCK, root: Iova(0x1000), words: vec![], fault_queue: None },
        )
        .unwrap();
    rig.ctx.attach(dev, None, Target::Hwpt(nested)).unwrap();
    rig.dma_write(0, 1, None, 0x4000_0010, b"nested").unwrap();
    assert_eq!(rig.ram(g2h + 0x10_0010, 6), b"nested");
    // The guest remaps its stage-1 entry to another page: stale until it invalidates.
    common::write_stage1(&rig, g2h, 0x1000, 0x4000_0000, 0x20_0000, pte::R | pte::W);
    rig.dma_write(0, 1, None, 0x4000_0020, b"stale").unwrap();
    assert_eq!(rig.ram(g2h + 0x10_0020, 5), b"stale");
    let inv = CacheInvalidation {
        scope: CacheInvalidation::RANGE,
        tag: 0,
        iova: Iova(0x4000_0000),
        len: 0x1000,
        leaf_only: true,
    };
    assert_eq!(rig.ctx.invalidate(nested, &[inv]).unwrap(), 1);
    rig.dma_write(0, 1, None, 0x4000_0030, b"fresh").unwrap();
    assert_eq!(rig.ram(g2h + 0x20_0030, 5), b"fresh");
    // Unmapping the stage-2 under it takes effect at once (the parent flushes its children).
    rig.ctx.unmap(ioas, Iova(0x20_0000), 0x1000, ioasis::UnmapMode::Cut).unwrap();
    assert!(rig.dma_write(0, 1, None, 0x4000_0030, b"gone").is_err());
    // Invalidation is for nested HWPTs only.
    assert!(rig.ctx.invalidate(parent, &[inv]).is_err());
}
