//! PASID attach: one PASID of a device to its own IOAS.

use ioasis::{Features, IntentItem, Iova, Pasid, PhysAddr, Prot, Target};

use super::{done, e, skip};
use crate::rig::{any_fault, rid, Rig};
use crate::Pass;

pub(crate) fn pasid_attach(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::PASID) {
        return skip("the unit has no PASID support");
    }
    let top = (1u32 << r.caps.pasid_bits.min(20)) - 1;
    let dev = r.device(1, &[IntentItem::UntaggedDma, IntentItem::PasidIoas])?;
    let untagged = r.ctx.alloc_ioas();
    let tagged = r.ctx.alloc_ioas();
    r.ctx.map(untagged, Some(Iova(0x1000)), PhysAddr(0x10_0000), 0x1000, Prot::RW).map_err(e)?;
    r.ctx.map(tagged, Some(Iova(0x1000)), PhysAddr(0x20_0000), 0x1000, Prot::RW).map_err(e)?;
    r.ctx.attach(dev, None, Target::Ioas(untagged)).map_err(e)?;
    for p in [1, 5, top] {
        r.ctx.attach(dev, Some(Pasid(p)), Target::Ioas(tagged)).map_err(e)?;
        r.lands(1, Some(p), 0x1008, 0x20_0008, &p.to_le_bytes())?;
    }
    r.lands(1, None, 0x1008, 0x10_0008, b"untagged")?;
    any_fault(r.write(1, Some(6), 0x1008, b"x"), "a PASID that is not attached")?;
    r.ctx.detach(dev, Some(Pasid(5))).map_err(e)?;
    any_fault(r.write(1, Some(5), 0x1008, b"x"), "a detached PASID")?;
    r.lands(1, Some(top), 0x1010, 0x20_0010, b"still")?;
    done(format!("PASIDs 1, 5 and {top:#x} translate through their own IOAS"))
}

pub(crate) fn pasid_fault_carries_pasid(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::PASID) {
        return skip("the unit has no PASID support");
    }
    let dev = r.device(2, &[IntentItem::PasidIoas])?;
    let ioas = r.ctx.alloc_ioas();
    r.ctx.attach(dev, Some(Pasid(9)), Target::Ioas(ioas)).map_err(e)?;
    let f = any_fault(r.write(2, Some(9), 0x5000, b"x"), "DMA with PASID 9 to nothing")?;
    if f.pasid.into_option() != Some(Pasid(9)) || f.dev != rid(2) {
        return Err(format!("fault names {} PASID {:?}, expected {} PASID 9", f.dev, f.pasid, rid(2)));
    }
    r.ctx.poll_faults().map_err(e)?;
    let log = r.ctx.take_fault_log();
    if log.first().map(|f| f.pasid.into_option()) != Some(Some(Pasid(9))) {
        return Err(format!("recorded fault {log:?} lacks PASID 9"));
    }
    done("the PASID is recorded with the fault")
}
