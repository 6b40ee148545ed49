//! Lengths and counts from callers are checked against the aperture or a documented limit
//! before anything is allocated: a typed error, nothing changed, no abort.

mod common;

use common::Rig;
use ioasis::{Error, IntentItem, Iova, PhysAddr, Prot, Target};

#[test]
fn read_dirty_near_the_top_of_the_address_space_is_refused_before_allocating() {
    let rig = Rig::new();
    let dev = rig.paging_device(1, 0, &[IntentItem::DirtyTracking]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    let hwpt = rig.ctx.attached_hwpt(dev, None).unwrap().unwrap();
    rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(0x100_1000), 0x4000, Prot::RW).unwrap();
    rig.ctx.set_dirty_tracking(hwpt, true).unwrap();
    rig.dma_write(0, 1, None, 0x1000, b"d").unwrap();
    // 2^62 bytes: beyond the aperture (this used to abort on a 2^44-byte bitmap).
    let e = rig.ctx.read_dirty(hwpt, Iova(0), 1 << 62, 4096, false).unwrap_err();
    assert!(matches!(e, Error::OutOfAperture { .. }), "{e}");
    let e = rig.ctx.read_dirty(hwpt, Iova(0), !0xfff, 4096, false).unwrap_err();
    assert!(matches!(e, Error::OutOfAperture { .. } | Error::Overflow { .. }), "{e}");
    // Inside the aperture but more pages than one call reports on.
    let pages = ioasis::MAX_DIRTY_BITS + 1;
    let e = rig.ctx.read_dirty(hwpt, Iova(0), pages * 4096, 4096, false).unwrap_err();
    assert!(matches!(e, Error::TooLarge { len, max, .. } if len == pages && max == ioasis::MAX_DIRTY_BITS), "{e}");
    // Refusals changed nothing: the dirty bit is still there to read.
    assert_eq!(rig.ctx.read_dirty(hwpt, Iova(0), 0x4000, 4096, false).unwrap(), vec![0b10]);
}

#[test]
fn maps_of_memory_outside_ram_or_over_the_table_pool_are_refused() {
    let rig = Rig::new();
    let ioas = rig.ctx.alloc_ioas();
    let dev = rig.paging_device(1, 0, &[]);
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    let pages = rig.ctx.table_pages();
    let (pool, pool_len) = rig.machine.table_pool();
    for (pa, len, why) in [
        (pool.raw(), 0x1000, "table-page pool"),
        (pool.raw() - 0x1000, 0x2000, "table-page pool"),
        (pool.raw() + pool_len, 0x1000, "not inside RAM"),
        (1 << 40, 1 << 21, "not inside RAM"),
    ] {
        let e = rig.ctx.map(ioas, Some(Iova(0x10_0000)), PhysAddr(pa), len, Prot::RW).unwrap_err();
        assert!(matches!(&e, Error::NotDmaMemory { why: w, .. } if w.contains(why)), "{pa:#x}: {e}");
    }
    assert_eq!(rig.ctx.table_pages(), pages, "nothing was built");
    assert!(rig.ctx.areas(ioas).unwrap().is_empty());
    // The last page below the pool is fine.
    rig.ctx.map(ioas, Some(Iova(0x10_0000)), PhysAddr(pool.raw() - 0x1000), 0x1000, Prot::RW).unwrap();
}

#[test]
fn a_second_unit_at_the_same_registers_is_refused() {
    let rig = Rig::new();
    let e = rig.ctx.add_unit(&common::mock_plugin(), "again", PhysAddr(common::UNIT_BASE), 0, "").unwrap_err();
    assert!(matches!(&e, Error::WindowInUse { unit, .. } if unit == "u0"), "{e}");
    assert_eq!(rig.ctx.units().len(), 1);
}

#[test]
fn devices_with_impossible_dma_widths_are_refused() {
    let rig = Rig::new();
    for bits in [0u8, 11, 65, 200] {
        let mut d = ioasis::DeviceDesc::pci("d", ioasis::RequesterId::new(0, 0, 3, 0), "u0");
        d.dma_bits = bits;
        let e = rig.ctx.bind_device(d).unwrap_err();
        assert!(e.to_string().contains("DMA address width"), "{bits}: {e}");
    }
    let mut d = ioasis::DeviceDesc::pci("d", ioasis::RequesterId::new(0, 0, 3, 0), "u0");
    d.dma_bits = 12;
    rig.ctx.bind_device(d).expect("12 bits is the narrowest");
}
