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
    let e = rig.ctx.read_dirty(hwpt, Iova(0), u64::MAX & !0xfff, 4096, false).unwrap_err();
    assert!(matches!(e, Error::OutOfAperture { .. } | Error::Overflow { .. }), "{e}");
    // Inside the aperture but more pages than one call reports on.
    let pages = ioasis::MAX_DIRTY_BITS + 1;
    let e = rig.ctx.read_dirty(hwpt, Iova(0), pages * 4096, 4096, false).unwrap_err();
    assert!(matches!(e, Error::TooLarge { len, max, .. } if len == pages && max == ioasis::MAX_DIRTY_BITS), "{e}");
    // Refusals changed nothing: the dirty bit is still there to read.
    assert_eq!(rig.ctx.read_dirty(hwpt, Iova(0), 0x4000, 4096, false).unwrap(), vec![0b10]);
}
