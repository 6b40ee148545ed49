//! Page sizes: the largest page alignment allows, split correctly on a partial unmap.

use ioasis::abi::Fault;
use ioasis::{Iova, PhysAddr, Prot, UnmapMode};

use super::{done, e, skip};
use crate::rig::{faulted, Rig};
use crate::Pass;

pub(crate) fn largest_page_and_split(r: &Rig, _: u64) -> Result<Pass, String> {
    let Some(big) = r.caps.page_sizes.iter().filter(|s| *s > 4096 && *s <= 1 << 30).min() else {
        return skip("the unit has only 4 KiB pages");
    };
    let (_, ioas, h) = r.attached(1)?;
    let (iova, pa) = (4 * big, 2 * big);
    r.ctx.map(ioas, Some(Iova(iova)), PhysAddr(pa), 2 * big, Prot::RW).map_err(e)?;
    for off in [0, big] {
        let t = r.ctx.translate(h, Iova(iova + off)).map_err(e)?.ok_or("no translation")?;
        if t.page_size != big || t.pa != PhysAddr(pa + off) {
            return Err(format!("a {big:#x}-aligned map gave {:#x} pages at {:#x}", t.page_size, t.pa.0));
        }
    }
    r.ctx.unmap(ioas, Iova(iova + 0x1000), 0x1000, UnmapMode::Cut).map_err(e)?;
    faulted(r.write(1, None, iova + 0x1000, b"gone"), Fault::NOT_PRESENT, "the cut-out page")?;
    for off in [0u64, 0x2000, big - 8, big, 2 * big - 8] {
        r.lands(1, None, iova + off, pa + off, b"kept")?;
    }
    let whole = r.ctx.translate(h, Iova(iova + big)).map_err(e)?.ok_or("no translation")?;
    if whole.page_size != big {
        return Err("the untouched large page was split too".into());
    }
    done(format!("{big:#x} pages used, and split around a 4 KiB hole"))
}

pub(crate) fn alignment_limits_page_size(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, h) = r.attached(1)?;
    // IOVA 2 MiB-aligned, physical address only 4 KiB-aligned: no large page may be used.
    let (iova, pa, len) = (0x4000_0000u64, 0x80_1000u64, 0x40_0000u64);
    r.ctx.map(ioas, Some(Iova(iova)), PhysAddr(pa), len, Prot::RW).map_err(e)?;
    for off in [0u64, 0x1000, 0x1f_f000, 0x20_0000, 0x3f_f000] {
        let t = r.ctx.translate(h, Iova(iova + off)).map_err(e)?.ok_or("no translation")?;
        if t.page_size != 4096 {
            return Err(format!("a {:#x} page maps a range whose physical side is only 4 KiB aligned", t.page_size));
        }
        r.lands(1, None, iova + off + 8, pa + off + 8, &off.to_le_bytes())?;
    }
    done("4 KiB pages where only 4 KiB alignment holds")
}

pub(crate) fn gigabyte_page(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.page_sizes.contains(1 << 30) {
        return skip("the unit has no 1 GiB pages");
    }
    let (_, ioas, h) = r.attached(1)?;
    // 1 GiB of IOVA onto physical 0 (the machine's RAM is 1 GiB): one leaf.
    r.ctx.map(ioas, Some(Iova(1 << 32)), PhysAddr(0), 1 << 30, Prot::RW).map_err(e)?;
    let t = r.ctx.translate(h, Iova((1 << 32) + 0x1234_5678)).map_err(e)?.ok_or("no translation")?;
    if t.page_size != 1 << 30 || t.pa != PhysAddr(0x1234_5678) {
        return Err(format!("got a {:#x} page to {}", t.page_size, t.pa));
    }
    r.lands(1, None, (1 << 32) + 0x2345_6780, 0x2345_6780, b"gigabyte")?;
    r.ctx.unmap(ioas, Iova((1 << 32) + 0x2000_0000), 0x1000, UnmapMode::Cut).map_err(e)?;
    faulted(r.write(1, None, (1 << 32) + 0x2000_0000, b"x"), Fault::NOT_PRESENT, "hole in a split 1 GiB page")?;
    r.lands(1, None, (1 << 32) + 0x2000_1000, 0x2000_1000, b"kept")?;
    // (The top 64 MiB of the machine's RAM hold the table pages: stay below them.)
    r.lands(1, None, (1 << 32) + 0x3bff_fff8, 0x3bff_fff8, b"top end!")?;
    done("a 1 GiB leaf, split down to 4 KiB around a hole")
}
