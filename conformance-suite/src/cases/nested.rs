//! Nested translation: a guest's x86-64 stage-1 walked through the paging stage-2.

use ioasis::abi::{CacheInvalidation, HwptFlags};
use ioasis::{Features, HwptSpec, IntentItem, Iova, Pasid, PhysAddr, Prot, PtFormat, Target, UnmapMode};

use super::{done, e, skip};
use crate::bench::Need;
use crate::rig::{any_fault, Rig};
use crate::Pass;

/// x86-64 paging entry bits (Intel SDM vol. 3 4.5; VT-d spec 9.7 first-stage).
const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
/// Page size: a leaf above the 4 KiB level.
const PS: u64 = 1 << 7;

/// Where guest physical 0 really is.
pub(crate) const G2H: u64 = 64 << 20;

/// Writes a 4-level x86-64 chain in guest memory (tables at `root`, +0x1000, +0x2000, +0x3000)
/// mapping `iova` to guest physical `out`.
pub(crate) fn stage1(r: &Rig, root: u64, iova: u64, out: u64, write: bool) -> Result<(), String> {
    for level in (0..4u32).rev() {
        let table = root + (3 - level as u64) * 0x1000;
        let index = (iova >> (12 + 9 * level)) & 0x1ff;
        let entry = if level == 0 { out | P | US | if write { RW } else { 0 } } else { (table + 0x1000) | P | RW | US };
        r.put(G2H + table + index * 8, &entry.to_le_bytes())?;
    }
    Ok(())
}

/// Device 00:01.0 with an x86-64 nested-stage-1 contract, and a stage-2 (paging HWPT of a new
/// IOAS) that maps the guest's first 16 MiB at [`G2H`]: (device, IOAS, stage-2 HWPT). `None`
/// when the unit cannot nest an x86-64 stage-1.
fn guest(r: &Rig) -> Result<Option<(ioasis::DeviceId, ioasis::IoasId, ioasis::HwptId)>, String> {
    if !r.caps.nested_formats.contains(&PtFormat::X86_64) {
        return Ok(None);
    }
    let dev = r.device(1, &[IntentItem::NestedStage1 { format: PtFormat::X86_64 }])?;
    let ioas = r.ctx.alloc_ioas();
    r.ctx.map(ioas, Some(Iova(0)), PhysAddr(G2H), 16 << 20, Prot::RW).map_err(e)?;
    let spec = HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: None };
    let parent = r.ctx.alloc_hwpt(r.unit, spec).map_err(e)?;
    Ok(Some((dev, ioas, parent)))
}

pub(crate) fn x86_64_stage1_over_stage2(r: &Rig, _: u64) -> Result<Pass, String> {
    let Some((dev, ioas, parent)) = guest(r)? else {
        return skip("the unit cannot nest an x86-64 stage-1");
    };
    stage1(r, 0x1000, 0x4000_0000, 0x10_0000, true)?;
    let spec =
        HwptSpec::Nested { parent, format: PtFormat::X86_64, root: Iova(0x1000), words: vec![], fault_queue: None };
    let nested = r.ctx.alloc_hwpt(r.unit, spec).map_err(e)?;
    r.ctx.attach(dev, None, Target::Hwpt(nested)).map_err(e)?;
    r.lands(1, None, 0x4000_0010, G2H + 0x10_0010, b"nested")?;
    // The guest points its entry elsewhere, read-only, and invalidates that page.
    stage1(r, 0x1000, 0x4000_0000, 0x20_0000, false)?;
    let inv = CacheInvalidation {
        scope: CacheInvalidation::RANGE,
        tag: 0,
        iova: Iova(0x4000_0000),
        len: 0x1000,
        leaf_only: true,
    };
    // An empty range is no request (iommufd refuses npages = 0).
    if r.ctx.invalidate(nested, &[CacheInvalidation { len: 0, ..inv }]).is_ok() {
        return Err("a cache invalidation of an empty range was accepted".into());
    }
    r.ctx.invalidate(nested, &[inv]).map_err(e)?;
    any_fault(r.write(1, None, 0x4000_0020, b"ro"), "write through a read-only stage-1 entry")?;
    r.put(G2H + 0x20_0020, b"fresh")?;
    if r.read(1, None, 0x4000_0020, 5).map_err(e)? != b"fresh" {
        return Err("after the guest's invalidation, DMA still used the old stage-1 entry".into());
    }
    // The host takes the stage-2 page away: the nested translation must stop at once.
    r.ctx.unmap(ioas, Iova(0x20_0000), 0x1000, UnmapMode::Cut).map_err(e)?;
    any_fault(r.read(1, None, 0x4000_0020, 4), "DMA after its stage-2 page was unmapped")?;
    done("stage-1 walked through stage-2; guest and host invalidations honoured")
}

/// A guest's 2 MiB and 1 GiB stage-1 leaves translate exactly when the nested HWPT says its
/// stage-1 has those page sizes (VT-d: 1 GiB only with CAP.FS1GP, 9.7); a leaf of a size it
/// does not have faults.
pub(crate) fn stage1_page_sizes(r: &Rig, _: u64) -> Result<Pass, String> {
    let Some((dev, _, parent)) = guest(r)? else {
        return skip("the unit cannot nest an x86-64 stage-1");
    };
    // Guest tables at 0x1000 (level 3), 0x2000 (level 2), 0x3000 (level 1). IOVA 2 GiB: a
    // 1 GiB leaf at level 2 to guest 0. IOVA 0x4020_0000: a 2 MiB leaf at level 1 to guest
    // 2 MiB, below a level-2 entry for 1 GiB.
    let (root, l2, l1) = (0x1000u64, 0x2000u64, 0x3000u64);
    let put = |table: u64, index: u64, v: u64| r.put(G2H + table + index * 8, &v.to_le_bytes());
    put(root, 0, l2 | P | RW | US)?;
    put(l2, 1, l1 | P | RW | US)?;
    put(l1, 1, (2 << 20) | PS | P | RW | US)?;
    put(l2, 2, PS | P | RW | US)?;
    let spec =
        HwptSpec::Nested { parent, format: PtFormat::X86_64, root: Iova(root), words: vec![], fault_queue: None };
    let nested = r.ctx.alloc_hwpt(r.unit, spec).map_err(e)?;
    let sizes = r.ctx.hwpt_info(nested).map_err(e)?.page_sizes;
    r.ctx.attach(dev, None, Target::Hwpt(nested)).map_err(e)?;
    let mut seen = Vec::new();
    for (size, iova, guest) in
        [(2u64 << 20, 0x4020_0000u64 + 0x1230, (2u64 << 20) + 0x1230), (1 << 30, 0x8000_1230, 0x1230)]
    {
        let name = if size == 2 << 20 { "2 MiB" } else { "1 GiB" };
        if sizes.contains(size) {
            r.lands(1, None, iova, G2H + guest, b"leaf")
                .map_err(|why| format!("the nested HWPT has {name} stage-1 pages, but: {why}"))?;
            seen.push(name);
        } else {
            any_fault(
                r.write(1, None, iova, b"leaf"),
                &format!("DMA through a {name} stage-1 leaf, a size the nested HWPT does not have ({sizes})"),
            )?;
        }
    }
    done(format!("stage-1 leaves of the sizes the nested HWPT has ({sizes}) translate, others fault; {seen:?}"))
}

pub(crate) fn needs_its_grant_and_faults(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.nested_formats.contains(&PtFormat::X86_64) {
        return skip("the unit cannot nest an x86-64 stage-1");
    }
    let (plain, ioas, parent) = r.attached(2)?;
    r.ctx.map(ioas, Some(Iova(0)), PhysAddr(G2H), 16 << 20, Prot::RW).map_err(e)?;
    stage1(r, 0x1000, 0x4000_0000, 0x10_0000, true)?;
    let spec =
        HwptSpec::Nested { parent, format: PtFormat::X86_64, root: Iova(0x1000), words: vec![], fault_queue: None };
    let nested = r.ctx.alloc_hwpt(r.unit, spec).map_err(e)?;
    if r.ctx.replace(plain, None, Target::Hwpt(nested)).is_ok() {
        return Err("a device without a nested grant was attached to a nested HWPT".into());
    }
    let dev = r.device(3, &[IntentItem::NestedStage1 { format: PtFormat::X86_64 }])?;
    r.ctx.attach(dev, None, Target::Hwpt(nested)).map_err(e)?;
    any_fault(r.write(3, None, 0x5000_0000, b"x"), "an address the stage-1 does not map")?;
    // A stage-1 output outside the stage-2 must fault too.
    stage1(r, 0x1000, 0x4000_0000, 0x800_0000_0000, true)?;
    let inv = CacheInvalidation { scope: CacheInvalidation::ALL, tag: 0, iova: Iova(0), len: 0, leaf_only: false };
    r.ctx.invalidate(nested, &[inv]).map_err(e)?;
    any_fault(r.write(3, None, 0x4000_0000, b"x"), "a stage-1 output the stage-2 does not map")?;
    done("nested HWPTs need the grant; stage-1 and stage-2 holes fault")
}

/// PASID, nesting and dirty tracking at once: the widest PASID attached to a nested HWPT whose
/// parent tracks dirty pages.
pub(crate) fn pasid_nested_with_dirty_parent(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::PASID) {
        return skip("the unit has no PASID support");
    }
    if !r.caps.features.contains(Features::DIRTY_TRACKING) {
        return skip("the unit has no dirty tracking");
    }
    if !r.caps.nested_formats.contains(&PtFormat::X86_64) {
        return skip("the unit cannot nest an x86-64 stage-1");
    }
    r.need(Need::PasidDma)?;
    let top = (1u32 << r.caps.pasid_bits.min(20)) - 1;
    let dev = r.device(
        1,
        &[IntentItem::PasidIoas, IntentItem::NestedStage1 { format: PtFormat::X86_64 }, IntentItem::DirtyTracking],
    )?;
    let (parent, nested) = super::dirty::dirty_parent_and_nested(r)?;
    r.ctx.attach(dev, Some(Pasid(top)), Target::Hwpt(nested)).map_err(e)?;
    super::dirty::check_nested_dirty(r, parent, 1, Some(top))?;
    any_fault(r.write(1, None, 0x4000_0010, b"x"), "untagged DMA of a device attached only at a PASID")?;
    any_fault(r.write(1, Some(top - 1), 0x4000_0010, b"x"), "DMA with a PASID next to the attached one")?;
    r.ctx.set_dirty_tracking(parent, false).map_err(e)?;
    done(format!("PASID {top:#x} through a nested HWPT; its writes dirty the parent"))
}
