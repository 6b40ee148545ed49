//! Behaviours that follow iommufd's uAPI (include/uapi/linux/iommufd.h): replace to the current
//! target, page requests abandoned with their device, dirty tracking state, allowed and
//! reserved ranges, unknown bits, and the IOVA alignment of an IOAS.

mod common;

use common::{mock_plugin, Rig, MB};
use ioasis::abi::{CacheInvalidation, HwptFlags, PageResponse};
use ioasis::{Error, HwptSpec, Iova, IovaRange, PhysAddr, Prot, Target};
use ioasis_plugin_mock::format::cap;

#[test]
fn replace_to_the_current_hwpt_changes_nothing() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let h =
        rig.ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: None }).unwrap();
    rig.ctx.attach(dev, None, Target::Hwpt(h)).unwrap();
    rig.ctx.map(ioas, Some(Iova(0x10_0000)), PhysAddr(0x100_0000), 0x1000, Prot::RW).unwrap();
    let reserved = rig.ctx.reserved(ioas).unwrap();
    let allowed = rig.ctx.allowed(ioas).unwrap();
    rig.ctx.replace(dev, None, Target::Hwpt(h)).unwrap();
    assert!(matches!(rig.ctx.destroy(h), Err(Error::Busy { .. })), "the device still uses the HWPT");
    assert_eq!(rig.ctx.attached_hwpt(dev, None).unwrap(), Some(h));
    assert_eq!(rig.ctx.reserved(ioas).unwrap(), reserved);
    assert_eq!(rig.ctx.allowed(ioas).unwrap(), allowed);
    rig.dma_write(0, 1, None, 0x10_0010, b"same").unwrap();
    assert_eq!(rig.ram(0x100_0010, 4), b"same");
}

#[test]
fn replace_to_the_current_ioas_keeps_its_auto_hwpt() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    let h = rig.ctx.attached_hwpt(dev, None).unwrap().unwrap();
    let reserved = rig.ctx.reserved(ioas).unwrap();
    rig.ctx.replace(dev, None, Target::Ioas(ioas)).unwrap();
    assert_eq!(rig.ctx.attached_hwpt(dev, None).unwrap(), Some(h));
    assert_eq!(rig.ctx.ioas_hwpts(ioas).unwrap(), vec![h], "the auto HWPT still realises the IOAS");
    assert!(matches!(rig.ctx.destroy(h), Err(Error::Busy { .. })));
    assert_eq!(rig.ctx.reserved(ioas).unwrap(), reserved);
    // A mapping made afterwards reaches the HWPT the device translates through.
    rig.ctx.map(ioas, Some(Iova(0x20_0000)), PhysAddr(0x100_0000), 0x1000, Prot::RW).unwrap();
    rig.dma_write(0, 1, None, 0x20_0020, b"auto").unwrap();
    assert_eq!(rig.ram(0x100_0020, 4), b"auto");
}

#[test]
fn inverted_or_overlapping_ranges_are_refused_and_change_nothing() {
    let rig = Rig::new();
    let ioas = rig.ctx.alloc_ioas();
    let r = |a: u64, b: u64| IovaRange { start: Iova(a), last: Iova(b) };
    rig.ctx.set_allowed(ioas, Some(vec![r(0, 0xffff_ffff)])).unwrap();
    let before = rig.ctx.allowed(ioas).unwrap();
    let e = rig.ctx.set_allowed(ioas, Some(vec![r(0x2000, 0x1fff)])).unwrap_err();
    assert!(matches!(e, Error::InvertedRange { start: 0x2000, last: 0x1fff }), "{e}");
    let e = rig.ctx.set_allowed(ioas, Some(vec![r(0, 0x1_ffff), r(0x1_0000, 0x2_ffff)])).unwrap_err();
    assert!(matches!(e, Error::OverlappingRanges { .. }), "{e}");
    assert_eq!(rig.ctx.allowed(ioas).unwrap(), before);
    rig.ctx.add_reserved(ioas, r(0x10_0000, 0x1f_ffff), "firmware").unwrap();
    let e = rig.ctx.add_reserved(ioas, r(0x30_0000, 0x2f_ffff), "inverted").unwrap_err();
    assert!(matches!(e, Error::InvertedRange { .. }), "{e}");
    let e = rig.ctx.add_reserved(ioas, r(0x1f_f000, 0x20_0fff), "overlapping").unwrap_err();
    assert!(matches!(e, Error::OverlappingRanges { .. }), "{e}");
    assert_eq!(rig.ctx.reserved(ioas).unwrap().len(), 1);
    // Devices bring their own (the MSI window), which may overlap each other's.
    let a = rig.paging_device(1, 0, &[]);
    let b = rig.paging_device(2, 0, &[]);
    rig.ctx.add_reserved(ioas, r(0xfee0_0000, 0xfeef_ffff), "user's MSI").unwrap();
    rig.ctx.add_platform_reserved(r(0xfee0_0000, 0xfeef_ffff), "x86 MSI window");
    rig.ctx.attach(a, None, Target::Ioas(ioas)).unwrap();
    rig.ctx.attach(b, None, Target::Ioas(ioas)).unwrap();
    assert_eq!(rig.ctx.reserved(ioas).unwrap().len(), 4);
}

#[test]
fn dirty_tracking_starts_clean_and_is_read_only_while_on() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[ioasis::IntentItem::DirtyTracking]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    let hwpt = rig.ctx.attached_hwpt(dev, None).unwrap().unwrap();
    // 4 KiB leaves (the physical address is not 2 MiB aligned): one bit per written page.
    rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(0x100_1000), 4 * MB, Prot::RW).unwrap();
    let e = rig.ctx.read_dirty(hwpt, Iova(0), 4 * MB, 4096, false).unwrap_err();
    assert!(matches!(e, Error::DirtyTrackingOff { .. }), "{e}");
    rig.ctx.set_dirty_tracking(hwpt, true).unwrap();
    rig.ctx.set_dirty_tracking(hwpt, true).unwrap();
    rig.dma_write(0, 1, None, 0x5000, b"period one").unwrap();
    rig.ctx.set_dirty_tracking(hwpt, false).unwrap();
    rig.ctx.set_dirty_tracking(hwpt, false).unwrap();
    let e = rig.ctx.read_dirty(hwpt, Iova(0), 4 * MB, 4096, true).unwrap_err();
    assert!(matches!(e, Error::DirtyTrackingOff { .. }), "{e}");
    rig.ctx.set_dirty_tracking(hwpt, true).unwrap();
    let bm = rig.ctx.read_dirty(hwpt, Iova(0), 4 * MB, 4096, false).unwrap();
    assert!(bm.iter().all(|w| *w == 0), "a write of an earlier period is not reported: {bm:x?}");
    rig.dma_write(0, 1, None, 0x7000, b"period two").unwrap();
    let bm = rig.ctx.read_dirty(hwpt, Iova(0), 4 * MB, 4096, false).unwrap();
    assert_eq!(bm[0], 1 << 7);
    assert!(bm[1..].iter().all(|w| *w == 0));
}

/// A device with PRI on a HWPT with a fault queue: (rig, device, IOAS, HWPT, queue).
fn faulting_device(pasid: bool) -> (Rig, ioasis::DeviceId, ioasis::IoasId, ioasis::HwptId, ioasis::FaultQueueId) {
    let rig = Rig::new();
    let mut extra = vec![ioasis::IntentItem::PageFaults];
    if pasid {
        extra.push(ioasis::IntentItem::PasidIoas);
    }
    let dev = rig.paging_device(1, 0, &extra);
    let ioas = rig.ctx.alloc_ioas();
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let q = rig.ctx.alloc_fault_queue();
    let h =
        rig.ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: Some(q) }).unwrap();
    rig.ctx.attach(dev, None, Target::Hwpt(h)).unwrap();
    (rig, dev, ioas, h, q)
}

/// Faults `n` page requests as device 1 (untagged or with `pasid`) on pages `first..first+n`
/// from 8 MiB (a page with a request outstanding gets no second one), and polls them.
fn page_requests(rig: &Rig, pasid: Option<u32>, first: u64, n: u64) {
    for i in first..first + n {
        assert!(rig.dma_read(0, 1, pasid, 0x80_0000 + i * 0x1000, 4).is_err());
    }
    assert_eq!(rig.ctx.poll_faults().unwrap(), n as usize);
}

fn codes(rig: &Rig) -> Vec<(u32, u32)> {
    rig.models[0].page_responses().iter().map(|r| (r.group, r.code)).collect()
}

#[test]
fn detach_answers_read_requests_invalid_and_later_responses_are_refused() {
    let (rig, dev, _, _, q) = faulting_device(false);
    page_requests(&rig, None, 0, 1);
    let ev = rig.ctx.read_faults(q).unwrap();
    assert_eq!(ev.len(), 1);
    rig.ctx.detach(dev, None).unwrap();
    assert_eq!(codes(&rig), vec![(ev[0].fault.group, PageResponse::INVALID)]);
    let e = rig.ctx.respond(q, ev[0].cookie, PageResponse::SUCCESS).unwrap_err();
    assert!(matches!(e, Error::NoSuchPageRequest { cookie, .. } if cookie == ev[0].cookie), "{e}");
    assert_eq!(rig.models[0].page_responses().len(), 1, "the unit saw nothing more");
}

#[test]
fn detach_answers_undelivered_requests_and_drops_them_from_the_queue() {
    let (rig, dev, _, _, q) = faulting_device(false);
    page_requests(&rig, None, 0, 2);
    rig.ctx.detach(dev, None).unwrap();
    let sent = codes(&rig);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|(_, c)| *c == PageResponse::INVALID), "{sent:?}");
    assert!(rig.ctx.read_faults(q).unwrap().is_empty(), "nothing left to deliver");
}

#[test]
fn replace_answers_the_old_attachments_requests() {
    let (rig, dev, ioas, _, q) = faulting_device(false);
    page_requests(&rig, None, 0, 2);
    let ev = rig.ctx.read_faults(q).unwrap();
    assert_eq!(ev.len(), 2);
    page_requests(&rig, None, 2, 1);
    rig.ctx.replace(dev, None, Target::Ioas(ioas)).unwrap();
    let sent = codes(&rig);
    assert_eq!(sent.len(), 3, "read and undelivered alike: {sent:?}");
    assert!(sent.iter().all(|(_, c)| *c == PageResponse::INVALID), "{sent:?}");
    assert!(rig.ctx.read_faults(q).unwrap().is_empty());
    for e in &ev {
        assert!(matches!(rig.ctx.respond(q, e.cookie, PageResponse::SUCCESS), Err(Error::NoSuchPageRequest { .. })));
    }
    assert_eq!(rig.models[0].page_responses().len(), 3);
}

#[test]
fn detaching_a_pasid_answers_only_its_requests() {
    let (rig, dev, _, h, q) = faulting_device(true);
    rig.ctx.attach(dev, Some(ioasis::Pasid(7)), Target::Hwpt(h)).unwrap();
    page_requests(&rig, Some(7), 0, 1);
    page_requests(&rig, None, 0, 1);
    let ev = rig.ctx.read_faults(q).unwrap();
    assert_eq!(ev.len(), 2);
    rig.ctx.detach(dev, Some(ioasis::Pasid(7))).unwrap();
    let sent = rig.models[0].page_responses();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].pasid, Some(ioasis::Pasid(7)));
    assert_eq!(sent[0].code, PageResponse::INVALID);
    let untagged = ev.iter().find(|e| e.fault.pasid.is_none()).unwrap();
    rig.ctx.respond(q, untagged.cookie, PageResponse::SUCCESS).unwrap();
    assert_eq!(codes(&rig)[1], (untagged.fault.group, PageResponse::SUCCESS));
}

#[test]
fn teardown_answers_outstanding_requests() {
    let (rig, _, _, _, q) = faulting_device(false);
    page_requests(&rig, None, 0, 2);
    let ev = rig.ctx.read_faults(q).unwrap();
    page_requests(&rig, None, 2, 1);
    rig.ctx.teardown().unwrap();
    let sent = codes(&rig);
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(sent.iter().all(|(_, c)| *c == PageResponse::INVALID), "{sent:?}");
    assert!(sent.iter().any(|(g, _)| *g == ev[0].fault.group));
}

#[test]
fn a_response_code_that_is_not_one_of_the_three_is_refused() {
    let (rig, _, _, _, q) = faulting_device(false);
    page_requests(&rig, None, 0, 1);
    let ev = rig.ctx.read_faults(q).unwrap();
    for code in [2, 0xe, 0x10, u32::MAX] {
        let e = rig.ctx.respond(q, ev[0].cookie, code).unwrap_err();
        assert!(matches!(e, Error::UnknownBits { .. }), "{e}");
    }
    assert!(rig.models[0].page_responses().is_empty(), "nothing reached the unit");
    rig.ctx.respond(q, ev[0].cookie, PageResponse::FAILURE).unwrap();
    assert_eq!(codes(&rig), vec![(ev[0].fault.group, PageResponse::FAILURE)]);
}

#[test]
fn unknown_bits_from_the_caller_are_refused() {
    let rig = Rig::new();
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let ioas = rig.ctx.alloc_ioas();
    let q = rig.ctx.alloc_fault_queue();
    let pages = rig.ctx.table_pages();
    for (flags, fault_queue) in
        [(HwptFlags(1 << 8), None), (HwptFlags(1 << 31), Some(q)), (HwptFlags::PAGE_FAULTS, None)]
    {
        let e = rig.ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags, fault_queue }).unwrap_err();
        assert!(matches!(e, Error::UnknownBits { .. }), "{e}");
    }
    assert!(rig.ctx.ioas_hwpts(ioas).unwrap().is_empty());
    assert_eq!(rig.ctx.table_pages(), pages, "no backend was asked");
    // PAGE_FAULTS along with the queue that sets it anyway is fine.
    let h = rig.ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: HwptFlags::PAGE_FAULTS, fault_queue: Some(q) });
    rig.ctx.destroy(h.unwrap()).unwrap();

    let dev = rig.paging_device(1, 0, &[]);
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    let pages = rig.ctx.table_pages();
    for prot in [Prot(4), Prot(Prot::RW.0 | 0x100), Prot(1 << 31)] {
        let e = rig.ctx.map(ioas, Some(Iova(0x10_0000)), PhysAddr(0x100_0000), 0x1000, prot).unwrap_err();
        assert!(matches!(e, Error::UnknownBits { what: "prot", .. }), "{e}");
        let e = rig.ctx.map(ioas, None, PhysAddr(0x100_0000), 0x1000, prot).unwrap_err();
        assert!(matches!(e, Error::UnknownBits { what: "prot", .. }), "{e}");
    }
    assert!(rig.ctx.areas(ioas).unwrap().is_empty());
    assert_eq!(rig.ctx.table_pages(), pages, "no backend was asked");
    rig.ctx.map(ioas, Some(Iova(0x10_0000)), PhysAddr(0x100_0000), 0x1000, Prot::READ).unwrap();
    let e = rig.ctx.access(ioas, Iova(0x10_0000), 0x1000, Prot(Prot::READ.0 | 4)).unwrap_err();
    assert!(matches!(e, Error::UnknownBits { what: "prot", .. }), "{e}");
}

#[test]
fn an_unknown_invalidation_scope_is_refused() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[ioasis::IntentItem::NestedStage1 { format: ioasis::PtFormat::MOCK }]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(64 * MB), 16 * MB, Prot::RW).unwrap();
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let parent =
        rig.ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: None }).unwrap();
    let spec = HwptSpec::Nested {
        parent,
        format: ioasis::PtFormat::MOCK,
        root: Iova(0x1000),
        words: vec![],
        fault_queue: None,
    };
    let nested = rig.ctx.alloc_hwpt(unit, spec).unwrap();
    rig.ctx.attach(dev, None, Target::Hwpt(nested)).unwrap();
    let inv = |scope| CacheInvalidation { scope, tag: 0, iova: Iova(0), len: 0x1000, leaf_only: false };
    for scope in [0, 4, 0x8000_0001] {
        let e = rig.ctx.invalidate(nested, &[inv(CacheInvalidation::ALL), inv(scope)]).unwrap_err();
        assert!(matches!(e, Error::UnknownBits { what: "cache invalidation scope", .. }), "{e}");
    }
    for scope in [CacheInvalidation::ALL, CacheInvalidation::RANGE, CacheInvalidation::PASID] {
        assert_eq!(rig.ctx.invalidate(nested, &[inv(scope)]).unwrap(), 1);
    }
}

/// A machine whose unit maps with 2 MiB pages at least (no 4 KiB pages in its CAP).
fn rig_2m() -> Rig {
    Rig::with_units(&[cap::FULL & !cap::PS_4K], &mock_plugin())
}

#[test]
fn the_ioas_reports_and_enforces_its_hwpts_smallest_page() {
    let rig = rig_2m();
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let ioas = rig.ctx.alloc_ioas();
    let before = rig.ctx.iova_ranges(ioas).unwrap();
    assert_eq!(before.alignment, 4096);
    assert_eq!(before.ranges, rig.ctx.allowed(ioas).unwrap());
    let h =
        rig.ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: None }).unwrap();
    assert_eq!(rig.ctx.hwpt_info(h).unwrap().page_sizes.min(), Some(2 * MB));
    assert_eq!(rig.ctx.iova_ranges(ioas).unwrap().alignment, 2 * MB);
    let pages = (rig.ctx.table_pages(), rig.ctx.hwpt_table_pages(h).unwrap());
    let refused = [
        (Some(Iova(0x20_0000)), PhysAddr(0x40_0000), 0x1000),
        (Some(Iova(0x20_1000)), PhysAddr(0x40_0000), 2 * MB),
        (Some(Iova(0x20_0000)), PhysAddr(0x40_1000), 2 * MB),
        (None, PhysAddr(0x40_0000), 0x1000),
        (None, PhysAddr(0x40_1000), 2 * MB),
    ];
    for (iova, pa, len) in refused {
        let e = rig.ctx.map(ioas, iova, pa, len, Prot::RW).unwrap_err();
        assert!(matches!(e, Error::Unaligned { align, .. } if align == 2 * MB), "{iova:?} {pa} {len:#x}: {e}");
    }
    assert!(rig.ctx.areas(ioas).unwrap().is_empty());
    assert_eq!((rig.ctx.table_pages(), rig.ctx.hwpt_table_pages(h).unwrap()), pages, "no backend call");
    rig.ctx.map(ioas, Some(Iova(0x20_0000)), PhysAddr(0x40_0000), 2 * MB, Prot::RW).unwrap();
    assert_eq!(rig.ctx.translate(h, Iova(0x20_1000)).unwrap().unwrap().page_size, 2 * MB);
    let at = rig.ctx.map(ioas, None, PhysAddr(0x80_0000), 4 * MB, Prot::RW).unwrap();
    assert_eq!(at.0 % (2 * MB), 0);

    // Copying 4 KiB pieces into it is refused as well, before any backend call.
    let src = rig.ctx.alloc_ioas();
    rig.ctx.map(src, Some(Iova(0x1000)), PhysAddr(0x100_0000), 0x1000, Prot::RW).unwrap();
    rig.ctx.map(src, Some(Iova(0x40_0000)), PhysAddr(0x100_1000), 2 * MB, Prot::RW).unwrap();
    let areas = rig.ctx.areas(ioas).unwrap();
    for (from, len, to) in [(0x1000, 0x1000, None), (0x40_0000, 2 * MB, Some(Iova(0x100_0000)))] {
        let e = rig.ctx.copy(src, Iova(from), len, ioas, to).unwrap_err();
        assert!(matches!(e, Error::Unaligned { .. }), "{e}");
    }
    assert_eq!(rig.ctx.areas(ioas).unwrap(), areas);
}

#[test]
fn a_hwpt_whose_smallest_page_does_not_fit_the_areas_is_refused() {
    let rig = rig_2m();
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.map(ioas, Some(Iova(0x20_0000)), PhysAddr(0x40_0000), 2 * MB, Prot::RW).unwrap();
    rig.ctx.map(ioas, Some(Iova(0x60_1000)), PhysAddr(0x80_0000), 0x1000, Prot::RW).unwrap();
    let pages = rig.ctx.table_pages();
    let spec = HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: None };
    let e = rig.ctx.alloc_hwpt(unit, spec.clone()).unwrap_err();
    assert!(matches!(e, Error::AreaUnaligned { align, .. } if align == 2 * MB), "{e}");
    assert!(rig.ctx.ioas_hwpts(ioas).unwrap().is_empty());
    assert_eq!(rig.ctx.table_pages(), pages, "the HWPT was freed, nothing replayed");
    assert_eq!(rig.ctx.iova_ranges(ioas).unwrap().alignment, 4096);
    // Attaching a device makes the same HWPT: refused the same way, nothing changed.
    let dev = rig.paging_device(1, 0, &[]);
    let reserved = rig.ctx.reserved(ioas).unwrap();
    let e = rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap_err();
    assert!(matches!(e, Error::AreaUnaligned { .. }), "{e}");
    assert_eq!(rig.ctx.attachment(dev, None).unwrap(), None);
    assert_eq!(rig.ctx.reserved(ioas).unwrap(), reserved);
    assert_eq!(rig.ctx.table_pages(), pages);
    // Without the 4 KiB area, both work.
    rig.ctx.unmap(ioas, Iova(0x60_1000), 0x1000, ioasis::UnmapMode::Exact).unwrap();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    rig.dma_write(0, 1, None, 0x20_0010, b"2m").unwrap();
    assert_eq!(rig.ram(0x40_0010, 2), b"2m");
    rig.ctx.alloc_hwpt(unit, spec).unwrap();
}

#[test]
fn enabling_dirty_tracking_clears_areas_larger_than_one_chunk() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[ioasis::IntentItem::DirtyTracking]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    let hwpt = rig.ctx.attached_hwpt(dev, None).unwrap().unwrap();
    // 3 GiB and a page: cleared in 1 GiB steps and a 4 KiB tail.
    let len = (3 << 30) + 0x1000;
    rig.ctx.map(ioas, Some(Iova(1 << 30)), PhysAddr(0), len, Prot::RW).unwrap();
    rig.ctx.set_dirty_tracking(hwpt, true).unwrap();
    rig.dma_write(0, 1, None, (1 << 30) + 0x10, b"first").unwrap();
    rig.ctx.set_dirty_tracking(hwpt, false).unwrap();
    rig.ctx.set_dirty_tracking(hwpt, true).unwrap();
    let bm = rig.ctx.read_dirty(hwpt, Iova(1 << 30), 4 << 30, 1 << 30, false).unwrap();
    assert_eq!(bm, vec![0]);
    rig.dma_write(0, 1, None, (1 << 30) + 0x10, b"second").unwrap();
    assert_eq!(rig.ctx.read_dirty(hwpt, Iova(1 << 30), 4 << 30, 1 << 30, false).unwrap(), vec![1]);
}
