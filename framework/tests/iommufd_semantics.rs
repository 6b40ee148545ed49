//! Behaviours that follow iommufd's uAPI (include/uapi/linux/iommufd.h): replace to the current
//! target, page requests abandoned with their device, dirty tracking state, allowed and
//! reserved ranges, unknown bits, and the IOVA alignment of an IOAS.

mod common;

use common::Rig;
use ioasis::abi::HwptFlags;
use ioasis::{Error, HwptSpec, Iova, PhysAddr, Prot, Target};

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
