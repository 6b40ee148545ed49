//! Dirty tracking: DMA writes show up in read-and-clear, and are cleared.

use ioasis::abi::HwptFlags;
use ioasis::{Features, HwptId, HwptSpec, IntentItem, Iova, PhysAddr, Prot, PtFormat, Target, UnmapMode};

use super::nested::{stage1, G2H};
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
    // A device attached while tracking is on is tracked from its first write: its entry is
    // built with tracking on, not only the entries there were when it was turned on.
    let late = r.device(2, &[IntentItem::UntaggedDma, IntentItem::DirtyTracking])?;
    r.ctx.attach(late, None, Target::Hwpt(h)).map_err(e)?;
    r.write(2, None, 0x80_3008, b"late").map_err(e)?;
    let got = bits(0x80_0000, 0x4000, 4096)?;
    if got != [3] {
        return Err(format!("a device attached with tracking on wrote page 3; reported {got:?}"));
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
    done("writes reported once, reads never, cleared on read, each period starts clean, late attachments tracked")
}

pub(crate) fn needs_a_dirty_hwpt(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, _, h) = r.attached(1)?;
    if r.ctx.set_dirty_tracking(h, true).is_ok() {
        return Err("dirty tracking was turned on for a HWPT not allocated for it".into());
    }
    done("dirty tracking needs a HWPT allocated for it")
}

/// The pages of `h` in `[iova, iova + len)` reported dirty (indices of `page`-sized granules),
/// read without clearing when `keep`.
fn dirty_pages(r: &Rig, h: HwptId, iova: u64, len: u64, page: u64, keep: bool) -> Result<Vec<u64>, String> {
    let bm = r.ctx.read_dirty(h, Iova(iova), len, page, keep).map_err(e)?;
    Ok((0..len / page).filter(|i| bm[(*i / 64) as usize] & (1 << (i % 64)) != 0).collect())
}

/// Large pages written while tracking, then split by a cut: the written page is still dirty.
pub(crate) fn split_keeps_dirty_bits(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::DIRTY_TRACKING) {
        return skip("the unit has no dirty tracking");
    }
    let sizes: Vec<u64> = [2u64 << 20, 1 << 30].into_iter().filter(|s| r.caps.page_sizes.contains(*s)).collect();
    if sizes.is_empty() {
        return skip("the unit has no large pages to split");
    }
    let dev = r.device(1, &[IntentItem::UntaggedDma, IntentItem::DirtyTracking])?;
    let ioas = r.ctx.alloc_ioas();
    r.ctx.attach(dev, None, Target::Ioas(ioas)).map_err(e)?;
    let h = r.ctx.attached_hwpt(dev, None).map_err(e)?.ok_or("no HWPT")?;
    r.ctx.set_dirty_tracking(h, true).map_err(e)?;
    for &size in &sizes {
        // A 2 MiB page onto 0x400_0000; the 1 GiB page onto RAM from 0 (the machine's 1 GiB).
        let (iova, pa) = if size == 2 << 20 { (0x4000_0000u64, 0x400_0000u64) } else { (1u64 << 32, 0) };
        r.ctx.map(ioas, Some(Iova(iova)), PhysAddr(pa), size, Prot::RW).map_err(e)?;
        let t = r.ctx.translate(h, Iova(iova)).map_err(e)?.ok_or("no translation")?;
        if t.page_size != size {
            return Err(format!("a {size:#x}-aligned map gave a {:#x} page", t.page_size));
        }
        let written = 0x5000u64;
        r.lands(1, None, iova + written, pa + written, b"dirty")?;
        let hole = size / 2;
        r.ctx.unmap(ioas, Iova(iova + hole), 0x1000, UnmapMode::Cut).map_err(e)?;
        let got = dirty_pages(r, h, iova, size, 4096, false)?;
        if !got.contains(&(written / 4096)) {
            return Err(format!(
                "the page written in a {size:#x} page was not reported dirty after the page was split"
            ));
        }
        if got.contains(&(hole / 4096)) {
            return Err(format!("the page cut out of a {size:#x} page was reported dirty"));
        }
        if !dirty_pages(r, h, iova, size, 4096, false)?.is_empty() {
            return Err(format!("read-and-clear did not clear the split {size:#x} page"));
        }
        // The split pages track writes again.
        let again = 0x7000u64;
        r.lands(1, None, iova + again, pa + again, b"again")?;
        let got = dirty_pages(r, h, iova, size, 4096, false)?;
        // (A 1 GiB page splits into 2 MiB pages around the one split further for the hole.)
        let leaf = |p: u64| (p * 4096) >> 21;
        if !got.contains(&(again / 4096)) || got.iter().any(|p| leaf(*p) != leaf(again / 4096)) {
            return Err(format!("after the split of a {size:#x} page, one write reported as pages {got:?}"));
        }
    }
    r.ctx.set_dirty_tracking(h, false).map_err(e)?;
    done(format!("dirty bits of {} page(s) kept across a split", sizes.len()))
}

/// DMA through a nested HWPT sets the dirty bits of its parent (the stage-2).
pub(crate) fn through_a_nested_hwpt(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::DIRTY_TRACKING) {
        return skip("the unit has no dirty tracking");
    }
    if !r.caps.nested_formats.contains(&PtFormat::X86_64) {
        return skip("the unit cannot nest an x86-64 stage-1");
    }
    let dev = r.device(1, &[IntentItem::NestedStage1 { format: PtFormat::X86_64 }, IntentItem::DirtyTracking])?;
    let (parent, nested) = dirty_parent_and_nested(r)?;
    r.ctx.attach(dev, None, Target::Hwpt(nested)).map_err(e)?;
    check_nested_dirty(r, parent, 1, None)?;
    done("a write through a nested HWPT marks its guest page dirty in the parent, a read does not")
}

/// A stage-2 of 16 MiB of guest memory with dirty tracking on, and an x86-64 stage-1 over it
/// mapping IOVA 0x4000_0000 to guest 1 MiB (writable) and 0x4000_1000 to guest 2 MiB.
pub(crate) fn dirty_parent_and_nested(r: &Rig) -> Result<(HwptId, HwptId), String> {
    let ioas = r.ctx.alloc_ioas();
    r.ctx.map(ioas, Some(Iova(0)), PhysAddr(G2H), 16 << 20, Prot::RW).map_err(e)?;
    let spec = HwptSpec::Paging { ioas, flags: HwptFlags::DIRTY_TRACKING, fault_queue: None };
    let parent = r.ctx.alloc_hwpt(r.unit, spec).map_err(e)?;
    r.ctx.set_dirty_tracking(parent, true).map_err(e)?;
    stage1(r, 0x1000, 0x4000_0000, 0x10_0000, true)?;
    stage1(r, 0x1000, 0x4000_1000, 0x20_0000, true)?;
    let spec =
        HwptSpec::Nested { parent, format: PtFormat::X86_64, root: Iova(0x1000), words: vec![], fault_queue: None };
    let nested = r.ctx.alloc_hwpt(r.unit, spec).map_err(e)?;
    Ok((parent, nested))
}

/// Device `dev` (with `pasid`) writes through the nested HWPT at 0x4000_0000 and reads at
/// 0x4000_1000: the parent reports guest page 0x100 dirty and not 0x200, then clears.
pub(crate) fn check_nested_dirty(r: &Rig, parent: HwptId, dev: u8, pasid: Option<u32>) -> Result<(), String> {
    // Whatever the setup wrote (the guest's tables) is not what is checked: start clean.
    dirty_pages(r, parent, 0, 16 << 20, 4096, false)?;
    r.lands(dev, pasid, 0x4000_0010, G2H + 0x10_0010, b"nested")?;
    r.read(dev, pasid, 0x4000_1010, 4).map_err(|x| format!("a read through the nested HWPT: {x}"))?;
    let got = dirty_pages(r, parent, 0, 16 << 20, 4096, false)?;
    if !got.contains(&0x100) {
        return Err(format!("a write through the nested HWPT to guest page 0x100: the parent reports {got:#x?}"));
    }
    if got.contains(&0x200) {
        return Err("a read through the nested HWPT marked its guest page dirty in the parent".into());
    }
    if dirty_pages(r, parent, 0x10_0000, 0x1000, 4096, false)?.contains(&0) {
        return Err("the parent's dirty bits were not cleared".into());
    }
    r.lands(dev, pasid, 0x4000_0020, G2H + 0x10_0020, b"again")?;
    if !dirty_pages(r, parent, 0x10_0000, 0x1000, 4096, false)?.contains(&0) {
        return Err("a second write through the nested HWPT (after the clear) was not reported".into());
    }
    Ok(())
}
