//! Teardown: nothing left allocated; objects in use cannot be destroyed.

use ioasis::abi::HwptFlags;
use ioasis::{Features, HwptSpec, IntentItem, Iova, Pasid, PhysAddr, Prot, Target};

use super::{done, e};
use crate::rig::Rig;
use crate::Pass;

pub(crate) fn no_table_page_left(r: &Rig, _: u64) -> Result<Pass, String> {
    let pasid = r.caps.features.contains(Features::PASID);
    let items: &[IntentItem] =
        if pasid { &[IntentItem::UntaggedDma, IntentItem::PasidIoas] } else { &[IntentItem::UntaggedDma] };
    let dev = r.device(1, items)?;
    let a = r.ctx.alloc_ioas();
    let b = r.ctx.alloc_ioas();
    r.ctx.map(a, Some(Iova(0)), PhysAddr(0), 5 << 20, Prot::RW).map_err(e)?;
    r.ctx.map(a, Some(Iova(1 << 38)), PhysAddr(0), 0x3000, Prot::READ).map_err(e)?;
    r.ctx.map(b, Some(Iova(0x1000)), PhysAddr(0x1000), 0x1000, Prot::RW).map_err(e)?;
    r.ctx.attach(dev, None, Target::Ioas(a)).map_err(e)?;
    if pasid {
        r.ctx.attach(dev, Some(Pasid(3)), Target::Ioas(b)).map_err(e)?;
    }
    let spec = HwptSpec::Paging { ioas: b, flags: HwptFlags::default(), fault_queue: None };
    let h = r.ctx.alloc_hwpt(r.unit, spec).map_err(e)?;
    // The HWPT's own count follows its tables: a leak check that reads it sees leaks.
    let with = r.ctx.hwpt_table_pages(h).map_err(e)?;
    r.ctx.unmap(b, Iova(0x1000), 0x1000, ioasis::UnmapMode::Exact).map_err(e)?;
    let empty = r.ctx.hwpt_table_pages(h).map_err(e)?;
    if empty == 0 || with <= empty {
        return Err(format!(
            "the HWPT reports {with} table page(s) with a 4 KiB mapping and {empty} without: not its tables' count"
        ));
    }
    r.ctx.teardown().map_err(e)?;
    match r.table_pages() {
        0 => done("teardown freed every table page"),
        n => Err(format!("{n} table page(s) still allocated after teardown")),
    }
}

pub(crate) fn busy_objects_refused(r: &Rig, _: u64) -> Result<Pass, String> {
    let (dev, ioas, hwpt) = r.attached(1)?;
    for (what, id) in [("IOAS", ioas.0), ("HWPT", hwpt.0), ("device", dev.0), ("unit", r.unit.0)] {
        if r.ctx.destroy(id).is_ok() {
            return Err(format!("the {what} was destroyed while in use"));
        }
    }
    r.ctx.detach(dev, None).map_err(e)?;
    r.ctx.destroy(ioas).map_err(e)?;
    r.ctx.destroy(dev).map_err(e)?;
    r.ctx.destroy(r.unit).map_err(e)?;
    match r.table_pages() {
        0 => done("in-use objects refused; destroyed in order, nothing left"),
        n => Err(format!("{n} table page(s) left after destroying everything")),
    }
}
