//! Map and unmap through the context, checked by DMA on the simulated machine.

mod common;

use common::{Rig, MB};
use ioasis::abi::{ErrorCode, Fault};
use ioasis::{Error, Iova, IovaRange, PhysAddr, Prot, Target, UnmapMode};
use ioasis_baremetal::DmaError;

fn fault_reason(r: Result<Vec<u8>, DmaError>) -> u32 {
    match r {
        Err(DmaError::Fault(f)) => f.reason,
        other => panic!("expected a fault, got {other:?}"),
    }
}

#[test]
fn dma_lands_where_the_ioas_maps_it() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    rig.ctx.map(ioas, Some(Iova(0x10_0000)), PhysAddr(0x40_0000), 0x3000, Prot::RW).unwrap();
    rig.dma_write(0, 1, None, 0x10_1ff8, b"0123456789abcdef").unwrap();
    assert_eq!(rig.ram(0x40_1ff8, 16), b"0123456789abcdef");
    assert_eq!(rig.dma_read(0, 1, None, 0x10_1ff8, 16).unwrap(), b"0123456789abcdef");
    // Just past the area: not present.
    assert_eq!(fault_reason(rig.dma_read(0, 1, None, 0x10_3000, 4)), Fault::NOT_PRESENT);
}

#[test]
fn permissions_are_enforced_by_the_unit() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(0x20_0000), 0x1000, Prot::READ).unwrap();
    rig.ctx.map(ioas, Some(Iova(0x1000)), PhysAddr(0x30_0000), 0x1000, Prot::WRITE).unwrap();
    assert_eq!(fault_reason(rig.dma_write(0, 1, None, 0x10, b"x").map(|_| vec![])), Fault::PERMISSION);
    rig.dma_read(0, 1, None, 0x10, 1).unwrap();
    rig.dma_write(0, 1, None, 0x1010, b"x").unwrap();
    assert_eq!(fault_reason(rig.dma_read(0, 1, None, 0x1010, 1)), Fault::PERMISSION);
}

#[test]
fn largest_page_is_used_and_partial_unmap_splits_it() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    let hwpt = rig.ctx.attached_hwpt(dev, None).unwrap().unwrap();
    // 2 MiB-aligned on both sides: 2 MiB pages. Shifted by 4 KiB: only 4 KiB pages.
    rig.ctx.map(ioas, Some(Iova(0x4000_0000)), PhysAddr(0x80_0000), 4 * MB, Prot::RW).unwrap();
    rig.ctx.map(ioas, Some(Iova(0x8000_0000)), PhysAddr(0x100_1000), 2 * MB, Prot::RW).unwrap();
    let t = rig.ctx.translate(hwpt, Iova(0x4000_0000 + 0x12345)).unwrap().unwrap();
    assert_eq!((t.pa, t.page_size), (PhysAddr(0x80_0000 + 0x12345), 2 * MB));
    let t = rig.ctx.translate(hwpt, Iova(0x8000_0000)).unwrap().unwrap();
    assert_eq!(t.page_size, 4096);
    // Warm the IOTLB with the 2 MiB page, then cut 4 KiB out of its middle.
    rig.dma_write(0, 1, None, 0x4000_5000, b"warm").unwrap();
    let gone = rig.ctx.unmap(ioas, Iova(0x4000_5000), 0x1000, UnmapMode::Cut).unwrap();
    assert_eq!(gone, 0x1000);
    assert_eq!(fault_reason(rig.dma_read(0, 1, None, 0x4000_5000, 4)), Fault::NOT_PRESENT);
    for probe in [0x4000_4000u64, 0x4000_6000, 0x401f_f000, 0x4020_0000] {
        rig.dma_write(0, 1, None, probe, b"ok").unwrap();
        assert_eq!(rig.ram(0x80_0000 + probe - 0x4000_0000, 2), b"ok", "{probe:#x}");
    }
    let t = rig.ctx.translate(hwpt, Iova(0x4000_4000)).unwrap().unwrap();
    assert_eq!(t.page_size, 4096);
    let t = rig.ctx.translate(hwpt, Iova(0x4020_0000)).unwrap().unwrap();
    assert_eq!(t.page_size, 2 * MB, "the untouched 2 MiB page stays whole");
    // The IOAS now holds two areas around the hole.
    let areas: Vec<(u64, u64)> = rig
        .ctx
        .areas(ioas)
        .unwrap()
        .iter()
        .map(|a| (a.range.start.0, a.range.len()))
        .filter(|a| a.0 < 0x8000_0000)
        .collect();
    assert_eq!(areas, vec![(0x4000_0000, 0x5000), (0x4000_6000, 4 * MB - 0x6000)]);
}

#[test]
fn exact_unmap_refuses_to_cut_and_changes_nothing() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(0), 2 * MB, Prot::RW).unwrap();
    let pages = rig.ctx.table_pages();
    let e = rig.ctx.unmap(ioas, Iova(0x1000), 0x1000, UnmapMode::Exact).unwrap_err();
    assert!(matches!(e, Error::CutsArea { .. }), "{e}");
    assert_eq!(rig.ctx.table_pages(), pages);
    rig.dma_write(0, 1, None, 0x1000, b"still").unwrap();
    assert_eq!(rig.ctx.unmap(ioas, Iova(0), 2 * MB, UnmapMode::Exact).unwrap(), 2 * MB);
}

#[test]
fn bad_maps_are_typed_errors_that_change_nothing() {
    let rig = Rig::new();
    rig.ctx.add_platform_reserved(IovaRange::inclusive(0xfee0_0000, 0xfeef_ffff).unwrap(), "x86 MSI window");
    let id = rig.device(1, 0);
    let mut desc_dev = rig.device(2, 0);
    let _ = &mut desc_dev;
    rig.ctx.negotiate(id, &ioasis::Intent::new([ioasis::IntentItem::UntaggedDma])).unwrap();
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(id, None, Target::Ioas(ioas)).unwrap();
    rig.ctx.map(ioas, Some(Iova(0x10_0000)), PhysAddr(0x10_0000), MB, Prot::RW).unwrap();
    let before_pages = rig.ctx.table_pages();
    let before_areas = rig.ctx.areas(ioas).unwrap();
    let cases: Vec<(&str, Result<Iova, Error>)> = vec![
        ("overlap", rig.ctx.map(ioas, Some(Iova(0x18_0000)), PhysAddr(0), MB, Prot::RW)),
        ("unaligned iova", rig.ctx.map(ioas, Some(Iova(0x20_0800)), PhysAddr(0), 0x1000, Prot::RW)),
        ("unaligned pa", rig.ctx.map(ioas, Some(Iova(0x20_0000)), PhysAddr(0x800), 0x1000, Prot::RW)),
        ("zero length", rig.ctx.map(ioas, Some(Iova(0x20_0000)), PhysAddr(0), 0, Prot::RW)),
        ("no permission", rig.ctx.map(ioas, Some(Iova(0x20_0000)), PhysAddr(0), 0x1000, Prot::NONE)),
        ("beyond aperture", rig.ctx.map(ioas, Some(Iova(1 << 48)), PhysAddr(0), 0x1000, Prot::RW)),
        ("reserved", rig.ctx.map(ioas, Some(Iova(0xfee0_0000)), PhysAddr(0), 0x1000, Prot::RW)),
        ("overflow", rig.ctx.map(ioas, Some(Iova(u64::MAX - 0xfff)), PhysAddr(0), 0x2000, Prot::RW)),
    ];
    for (name, r) in cases {
        let e = r.expect_err(name);
        let ok = match name {
            "overlap" => matches!(e, Error::Exists { .. }),
            "unaligned iova" | "unaligned pa" => matches!(e, Error::Unaligned { .. }),
            "zero length" => matches!(e, Error::ZeroLength),
            "no permission" => matches!(e, Error::Invalid(_)),
            "beyond aperture" => matches!(e, Error::OutOfAperture { .. }),
            "reserved" => matches!(e, Error::Reserved { .. }),
            "overflow" => matches!(e, Error::Overflow { .. }),
            _ => false,
        };
        assert!(ok, "{name}: unexpected {e}");
        assert_eq!(rig.ctx.areas(ioas).unwrap(), before_areas, "{name} changed the areas");
        assert_eq!(rig.ctx.table_pages(), before_pages, "{name} changed the table pages");
    }
    let e = rig.ctx.unmap(ioas, Iova(0x80_0000), 0x1000, UnmapMode::Cut).unwrap_err();
    assert!(matches!(e, Error::NotMapped { .. }));
}

#[test]
fn aperture_of_a_32_bit_device_limits_the_ioas() {
    let rig = Rig::new();
    let mut d = ioasis::DeviceDesc::pci("dma32", ioasis::RequesterId::new(0, 0, 3, 0), "u0");
    d.dma_bits = 32;
    let id = rig.ctx.bind_device(d).unwrap();
    let c = rig.ctx.negotiate(id, &ioasis::Intent::new([ioasis::IntentItem::UntaggedDma])).unwrap();
    assert_eq!(c.aperture.last, Iova(0xffff_ffff));
    let ioas = rig.ctx.alloc_ioas();
    // Mapped above 4 GiB first: the device cannot join this IOAS.
    rig.ctx.map(ioas, Some(Iova(1 << 33)), PhysAddr(0), 0x1000, Prot::RW).unwrap();
    let e = rig.ctx.attach(id, None, Target::Ioas(ioas)).unwrap_err();
    assert!(matches!(e, Error::OutOfAperture { .. }), "{e}");
    assert!(rig.ctx.attachment(id, None).unwrap().is_none());
    rig.ctx.unmap_all(ioas).unwrap();
    rig.ctx.attach(id, None, Target::Ioas(ioas)).unwrap();
    assert!(matches!(
        rig.ctx.map(ioas, Some(Iova(1 << 32)), PhysAddr(0), 0x1000, Prot::RW),
        Err(Error::OutOfAperture { .. })
    ));
    assert_eq!(rig.ctx.allowed(ioas).unwrap(), vec![IovaRange::inclusive(0, 0xffff_ffff).unwrap()]);
}

#[test]
fn several_hwpts_stay_in_step_and_roll_back_together() {
    let rig = Rig::with_units(&[ioasis_plugin_mock::format::cap::FULL; 2], &common::mock_plugin());
    let a = rig.paging_device(1, 0, &[]);
    let b = rig.paging_device(2, 1, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(0x10_0000), 0x1000, Prot::RW).unwrap();
    rig.ctx.attach(a, None, Target::Ioas(ioas)).unwrap();
    rig.ctx.attach(b, None, Target::Ioas(ioas)).unwrap();
    assert_eq!(rig.ctx.ioas_hwpts(ioas).unwrap().len(), 2, "one paging HWPT per unit");
    // The area mapped before the second HWPT existed was replayed into it.
    rig.dma_write(1, 2, None, 0x10, b"replayed").unwrap();
    assert_eq!(rig.ram(0x10_0010, 8), b"replayed");
    // A fresh range needs 3 new table pages in each HWPT. Count them on one map...
    let n0 = rig.ctx.fail_nth().allocations();
    rig.ctx.map(ioas, Some(Iova(1 << 39)), PhysAddr(0x20_0000), 0x1000, Prot::RW).unwrap();
    let per_map = rig.ctx.fail_nth().allocations() - n0;
    assert_eq!(per_map, 6);
    // ...then make the first allocation of the second HWPT fail on another fresh range.
    let pages = rig.ctx.table_pages();
    rig.ctx.fail_nth().arm(per_map / 2 + 1);
    let e = rig.ctx.map(ioas, Some(Iova(2 << 39)), PhysAddr(0x30_0000), 0x1000, Prot::RW).unwrap_err();
    rig.ctx.fail_nth().disarm();
    assert_eq!(e.plugin_code(), Some(ErrorCode::NO_MEMORY), "{e}");
    assert_eq!(rig.ctx.table_pages(), pages, "the first HWPT rolled back and freed its tables");
    for h in rig.ctx.ioas_hwpts(ioas).unwrap() {
        assert!(rig.ctx.translate(h, Iova(2 << 39)).unwrap().is_none());
    }
    assert!(matches!(rig.dma_read(0, 1, None, 2 << 39, 1), Err(DmaError::Fault(_))));
    assert_eq!(rig.ctx.areas(ioas).unwrap().len(), 2);
}

#[test]
fn every_allocation_failure_of_a_map_and_unmap_leaves_state_as_before() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(0), 4 * MB, Prot::RW).unwrap();
    // A map spanning 1 GiB + 2 MiB + 4 KiB pages needs several table pages.
    let scenario = |ctx: &ioasis::Context| -> ioasis::Result<()> {
        ctx.map(ioas, Some(Iova(0x3fe0_0000 - 0x1000)), PhysAddr(0x1000_0000 - 0x1000), MB * 6 + 0x1000, Prot::RW)?;
        ctx.unmap(ioas, Iova(0x1000), 0x1000, UnmapMode::Cut)?;
        Ok(())
    };
    let mut n = 1;
    loop {
        let pages = rig.ctx.table_pages();
        let areas = rig.ctx.areas(ioas).unwrap();
        rig.ctx.fail_nth().arm(n);
        let r = scenario(&rig.ctx);
        let injected = rig.ctx.fail_nth().injected();
        rig.ctx.fail_nth().disarm();
        match r {
            Ok(()) => break,
            Err(e) => {
                assert_eq!(e.plugin_code(), Some(ErrorCode::NO_MEMORY), "fail_nth={n}: {e}");
                // The map may have succeeded before the unmap failed: undo it to compare.
                if rig.ctx.areas(ioas).unwrap() != areas {
                    rig.ctx.unmap(ioas, Iova(0x3fe0_0000 - 0x1000), MB * 6 + 0x1000, UnmapMode::Exact).unwrap();
                }
                assert_eq!(rig.ctx.areas(ioas).unwrap(), areas, "fail_nth={n}");
                assert_eq!(rig.ctx.table_pages(), pages, "fail_nth={n} leaked a table page");
                rig.dma_write(0, 1, None, 0x1000, b"intact").unwrap();
            }
        }
        assert!(injected > 0 || n == 1);
        n += 1;
        assert!(n < 100, "scenario never succeeded");
    }
    assert!(n > 3, "the scenario allocated only {n} pages: not a real test");
}

#[test]
fn threads_map_and_unmap_disjoint_ranges_at_once() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let ctx = &rig.ctx;
            s.spawn(move || {
                for i in 0..64u64 {
                    let iova = (t << 32) | (i << 21);
                    let pa = PhysAddr(0x100_0000 + ((t * 64 + i) << 12));
                    ctx.map(ioas, Some(Iova(iova)), pa, 0x1000, Prot::RW).unwrap();
                    if i % 2 == 1 {
                        ctx.unmap(ioas, Iova(iova), 0x1000, UnmapMode::Exact).unwrap();
                    }
                }
            });
        }
    });
    let areas = rig.ctx.areas(ioas).unwrap();
    assert_eq!(areas.len(), 4 * 32);
    for a in areas {
        let tag = a.range.start.0.to_le_bytes();
        rig.dma_write(0, 1, None, a.range.start.0, &tag).unwrap();
        assert_eq!(rig.ram(a.pa.0, 8), tag);
    }
}

#[test]
fn iova_allocation_and_copy_between_ioases() {
    let rig = Rig::with_units(&[ioasis_plugin_mock::format::cap::FULL; 2], &common::mock_plugin());
    let a = rig.paging_device(1, 0, &[]);
    let b = rig.paging_device(2, 1, &[]);
    let src = rig.ctx.alloc_ioas();
    let dst = rig.ctx.alloc_ioas();
    rig.ctx.attach(a, None, Target::Ioas(src)).unwrap();
    rig.ctx.attach(b, None, Target::Ioas(dst)).unwrap();
    let i1 = rig.ctx.map(src, None, PhysAddr(0x60_0000), 2 * MB, Prot::RW).unwrap();
    assert_eq!(i1.0 % (2 * MB), 0, "allocated IOVA keeps 2 MiB alignment");
    let i2 = rig.ctx.map(src, Some(Iova(i1.0 + 2 * MB)), PhysAddr(0x90_0000), 0x1000, Prot::READ).unwrap();
    let copied = rig.ctx.copy(src, i1, 2 * MB + 0x1000, dst, None).unwrap();
    rig.dma_write(1, 2, None, copied.0 + 0x10, b"via copy").unwrap();
    assert_eq!(rig.ram(0x60_0010, 8), b"via copy");
    // Permissions travel with the copy.
    assert!(rig.dma_write(1, 2, None, copied.0 + 2 * MB, b"x").is_err());
    let _ = i2;
    // A source range with a hole is refused, and nothing lands in dst.
    let before = rig.ctx.areas(dst).unwrap();
    assert!(matches!(rig.ctx.copy(src, i1, 4 * MB, dst, None), Err(Error::NotMapped { .. })));
    assert_eq!(rig.ctx.areas(dst).unwrap(), before);
}
