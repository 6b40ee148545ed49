//! Invalidation discipline: cached translations never outlive the mapping they came from.

use ioasis::abi::Fault;
use ioasis::{Iova, PhysAddr, Prot, Target, UnmapMode};

use super::{done, e, skip};
use crate::rig::{faulted, Rig};
use crate::Pass;

pub(crate) fn no_stale_iotlb(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, _) = r.attached(1)?;
    for (i, len) in [0x1000u64, 0x20_0000].iter().enumerate() {
        let at = 0x4000_0000 + (i as u64) * 0x4000_0000;
        r.ctx.map(ioas, Some(Iova(at)), PhysAddr(0x20_0000), *len, Prot::RW).map_err(e)?;
        r.lands(1, None, at + len - 8, 0x20_0000 + len - 8, b"warm up!")?;
        r.ctx.unmap(ioas, Iova(at), *len, UnmapMode::Exact).map_err(e)?;
        faulted(r.write(1, None, at + len - 8, b"stale"), Fault::NOT_PRESENT, "DMA after unmap")?;
        r.ctx.map(ioas, Some(Iova(at)), PhysAddr(0x60_0000), *len, Prot::READ).map_err(e)?;
        faulted(r.write(1, None, at, b"stale"), Fault::PERMISSION, "write after remapping read-only")?;
        r.put(0x60_0000, b"new page")?;
        if r.read(1, None, at, 8).map_err(e)? != b"new page" {
            return Err("after remap, DMA read the old page".into());
        }
    }
    done("unmap and remap take effect at once, for 4 KiB and 2 MiB mappings")
}

pub(crate) fn replace_takes_effect(r: &Rig, _: u64) -> Result<Pass, String> {
    let (dev, a, _) = r.attached(1)?;
    let b = r.ctx.alloc_ioas();
    r.ctx.map(a, Some(Iova(0)), PhysAddr(0x10_0000), 0x1000, Prot::RW).map_err(e)?;
    r.ctx.map(b, Some(Iova(0)), PhysAddr(0x20_0000), 0x1000, Prot::RW).map_err(e)?;
    r.lands(1, None, 0x10, 0x10_0010, b"A")?;
    r.ctx.replace(dev, None, Target::Ioas(b)).map_err(e)?;
    r.lands(1, None, 0x10, 0x20_0010, b"B")?;
    r.ctx.detach(dev, None).map_err(e)?;
    if r.write(1, None, 0x10, b"C").is_ok() {
        return Err("a detached device still translates through a cached entry".into());
    }
    done("replace and detach take effect at once")
}

pub(crate) fn cut_warm_large_page(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.page_sizes.contains(2 << 20) {
        return skip("the unit has no 2 MiB pages");
    }
    let (_, ioas, _) = r.attached(1)?;
    r.ctx.map(ioas, Some(Iova(0x4000_0000)), PhysAddr(0x400_0000), 0x20_0000, Prot::RW).map_err(e)?;
    r.lands(1, None, 0x4000_5000, 0x400_5000, b"warm")?;
    r.ctx.unmap(ioas, Iova(0x4000_5000), 0x1000, UnmapMode::Cut).map_err(e)?;
    faulted(r.write(1, None, 0x4000_5000, b"stale"), Fault::NOT_PRESENT, "cut-out page of a cached 2 MiB entry")?;
    r.lands(1, None, 0x4000_6000, 0x400_6000, b"kept")?;
    done("a cached large page is dropped when it is split")
}
