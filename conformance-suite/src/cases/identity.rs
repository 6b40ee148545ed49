//! Identity and blocking HWPTs: a device moved between a paging table, untranslated DMA and a
//! table that blocks everything.

use ioasis::abi::HwptFlags;
use ioasis::{DeviceId, Features, HwptId, HwptSpec, IntentItem, Iova, PhysAddr, Prot, Target};

use super::{done, e, skip};
use crate::bench::Need;
use crate::rig::{any_fault, Rig};
use crate::Pass;

/// Device 00:01.0 allowed paging DMA (and identity DMA when `identity`), attached to a paging
/// HWPT that maps IOVA 1 MiB to 4 MiB: (device, the paging HWPT).
fn paging_device(r: &Rig, identity: bool) -> Result<(DeviceId, HwptId), String> {
    let items: &[IntentItem] =
        if identity { &[IntentItem::UntaggedDma, IntentItem::Identity] } else { &[IntentItem::UntaggedDma] };
    let dev = r.device(1, items)?;
    let ioas = r.ctx.alloc_ioas();
    r.ctx.map(ioas, Some(Iova(0x10_0000)), PhysAddr(0x40_0000), 0x1000, Prot::RW).map_err(e)?;
    let spec = HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: None };
    let paging = r.ctx.alloc_hwpt(r.unit, spec).map_err(e)?;
    r.ctx.attach(dev, None, Target::Hwpt(paging)).map_err(e)?;
    r.lands(1, None, 0x10_0000, 0x40_0000, b"paged")?;
    Ok((dev, paging))
}

pub(crate) fn untranslated_dma(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::IDENTITY) {
        return skip("the unit has no identity translation");
    }
    let (dev, _) = paging_device(r, true)?;
    let identity = r.ctx.alloc_hwpt(r.unit, HwptSpec::Identity).map_err(e)?;
    r.ctx.replace(dev, None, Target::Hwpt(identity)).map_err(e)?;
    // The DMA lands at the address it carries, mapped in the old IOAS or not.
    r.lands(1, None, 0x50_0000, 0x50_0000, b"identity")?;
    r.lands(1, None, 0x10_0000, 0x10_0000, b"not paged")?;
    done("an identity HWPT leaves DMA untranslated, at once after a replace")
}

pub(crate) fn blocking_hwpt(r: &Rig, _: u64) -> Result<Pass, String> {
    let (dev, paging) = paging_device(r, false)?;
    let blocking = r.ctx.alloc_hwpt(r.unit, HwptSpec::Blocking).map_err(e)?;
    r.ctx.replace(dev, None, Target::Hwpt(blocking)).map_err(e)?;
    any_fault(r.write(1, None, 0x10_0000, b"x"), "a write through a blocking HWPT")?;
    any_fault(r.read(1, None, 0x10_0000, 4), "a read through a blocking HWPT")?;
    r.ctx.replace(dev, None, Target::Hwpt(paging)).map_err(e)?;
    r.lands(1, None, 0x10_0008, 0x40_0008, b"paged again")?;
    done("a blocking HWPT blocks at once, and the paging table is back after it")
}

pub(crate) fn leaving_identity(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::IDENTITY) {
        return skip("the unit has no identity translation");
    }
    let (dev, paging) = paging_device(r, true)?;
    let identity = r.ctx.alloc_hwpt(r.unit, HwptSpec::Identity).map_err(e)?;
    let blocking = r.ctx.alloc_hwpt(r.unit, HwptSpec::Blocking).map_err(e)?;
    r.ctx.replace(dev, None, Target::Hwpt(identity)).map_err(e)?;
    r.lands(1, None, 0x50_0000, 0x50_0000, b"identity")?;
    r.need(Need::LeaveIdentity)?;
    r.ctx.replace(dev, None, Target::Hwpt(blocking)).map_err(e)?;
    any_fault(r.write(1, None, 0x50_0000, b"x"), "DMA through a blocking HWPT that replaced an identity one")?;
    r.ctx.replace(dev, None, Target::Hwpt(identity)).map_err(e)?;
    r.lands(1, None, 0x60_0000, 0x60_0000, b"identity again")?;
    r.ctx.replace(dev, None, Target::Hwpt(paging)).map_err(e)?;
    r.lands(1, None, 0x10_0010, 0x40_0010, b"paged after identity")?;
    r.ctx.replace(dev, None, Target::Hwpt(identity)).map_err(e)?;
    r.ctx.detach(dev, None).map_err(e)?;
    any_fault(r.write(1, None, 0x60_0000, b"x"), "DMA after a detach from an identity HWPT")?;
    done("leaving an identity HWPT (to blocking, paging or detached) takes effect at once")
}
