//! Dirty tracking: DMA writes show up in read-and-clear, and are cleared.

use ioasis::{Features, IntentItem, Iova, PhysAddr, Prot, Target};

use super::{done, e, skip};
use crate::rig::Rig;
use crate::Pass;

pub(crate) fn writes_reported_and_cleared(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::DIRTY_TRACKING) {
        return skip("the unit has no dirty tracking");
    }
    let dev = r.device(1, &[IntentItem::UntaggedDma, IntentItem::DirtyTracking])?;
    let ioas = r.ctx.alloc_ioas();
    r.ctx.attach(dev, None, Target::Ioas(ioas)).map_err(e)?;
    let h = r.ctx.attached_hwpt(dev, None).map_err(e)?.ok_or("no HWPT")?;
    r.ctx.map(ioas, Some(Iova(0)), PhysAddr(0x100_0000), 0x40_0000, Prot::RW).map_err(e)?;
    r.ctx.map(ioas, Some(Iova(0x80_0000)), PhysAddr(0x200_1000), 0x4000, Prot::RW).map_err(e)?;
    r.write(1, None, 0x3000, b"untracked").map_err(e)?;
    r.ctx.set_dirty_tracking(h, true).map_err(e)?;
    let bits = |iova: u64, len: u64, page: u64| -> Result<Vec<u64>, String> {
        let bm = r.ctx.read_dirty(h, Iova(iova), len, page, false).map_err(e)?;
        Ok((0..len / page).filter(|i| bm[(*i / 64) as usize] & (1 << (i % 64)) != 0).collect())
    };
    if !bits(0, 0x100_0000, 4096)?.is_empty() {
        return Err("pages written before tracking was on are reported".into());
    }
    r.write(1, None, 0x80_2000, b"dirty").map_err(e)?;
    r.read(1, None, 0x80_1000, 4).map_err(e)?;
    r.write(1, None, 0x20_0005, b"big").map_err(e)?;
    let got = bits(0x80_0000, 0x4000, 4096)?;
    if got != [2] {
        return Err(format!("4 KiB pages reported dirty {got:?}, expected [2] (a read is not a write)"));
    }
    let got = bits(0, 0x40_0000, 0x20_0000)?;
    if got != [1] {
        return Err(format!("2 MiB granules reported dirty {got:?}, expected [1]"));
    }
    if !bits(0, 0x100_0000, 4096)?.is_empty() {
        return Err("read-and-clear did not clear".into());
    }
    r.write(1, None, 0x80_2000, b"again").map_err(e)?;
    if bits(0x80_0000, 0x4000, 4096)? != [2] {
        return Err("a write after clearing (through a cached translation) was not reported".into());
    }
    r.ctx.set_dirty_tracking(h, false).map_err(e)?;
    r.write(1, None, 0x80_0000, b"off").map_err(e)?;
    if r.ctx.read_dirty(h, Iova(0x80_0000), 0x4000, 4096, false).is_ok() {
        return Err("dirty bits were read with tracking off".into());
    }
    r.ctx.set_dirty_tracking(h, true).map_err(e)?;
    if !bits(0x80_0000, 0x4000, 4096)?.is_empty() {
        return Err("writes with tracking off (or of an earlier period) are reported".into());
    }
    r.ctx.set_dirty_tracking(h, false).map_err(e)?;
    done("writes reported once, reads never, cleared on read, each period starts clean")
}

pub(crate) fn needs_a_dirty_hwpt(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, _, h) = r.attached(1)?;
    if r.ctx.set_dirty_tracking(h, true).is_ok() {
        return Err("dirty tracking was turned on for a HWPT not allocated for it".into());
    }
    done("dirty tracking needs a HWPT allocated for it")
}
