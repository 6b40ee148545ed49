//! An allocation failure injected at every allocation point of a scenario, one run each (as
//! Linux's fail_nth does): each leaves the state exactly as before, with nothing leaked.

use ioasis::{Context, Error, IoasId, Iova, PhysAddr, Prot, Target, UnmapMode};

use super::{done, e};
use crate::rig::Rig;
use crate::Pass;

/// Runs `step` with the n-th allocation failing, for n = 1, 2, ... until it succeeds; after
/// each failure `same` must hold. Returns how many allocation points there were.
fn every_point(
    ctx: &Context,
    mut step: impl FnMut() -> Result<(), Error>,
    mut same: impl FnMut(usize) -> Result<(), String>,
) -> Result<u64, String> {
    for n in 1..=256u64 {
        ctx.fail_nth().arm(n);
        let before = ctx.fail_nth().injected();
        let r = step();
        let hit = ctx.fail_nth().injected() > before;
        ctx.fail_nth().disarm();
        match r {
            Ok(()) if !hit => return Ok(n - 1),
            Ok(()) => return Err(format!("allocation {n} failed but the operation reported success")),
            Err(err) => {
                if !hit {
                    return Err(format!("failed without an injected failure: {err}"));
                }
                same(n as usize).map_err(|m| format!("after failing allocation {n} ({err}): {m}"))?;
            }
        }
    }
    Err("still allocating after 256 points".into())
}

/// A check that the table pages and the areas of `ioas` are as they are now, and that the page
/// at 0x1000 still translates.
fn unchanged_from_now(r: &Rig, ioas: IoasId) -> Result<impl FnMut(usize) -> Result<(), String> + '_, String> {
    let pages = r.table_pages();
    let areas = r.ctx.areas(ioas).map_err(e)?;
    Ok(move |_| {
        if r.table_pages() != pages {
            return Err(format!("{} table pages, {pages} before", r.table_pages()));
        }
        if r.ctx.areas(ioas).map_err(e)? != areas {
            return Err("the areas changed".into());
        }
        r.lands(1, None, 0x1000, 0x1000, b"intact")
    })
}

pub(crate) fn map_and_cut(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, _) = r.attached(1)?;
    r.ctx.map(ioas, Some(Iova(0)), PhysAddr(0), 4 << 20, Prot::RW).map_err(e)?;
    let (iova, len) = (0x3fe0_0000 - 0x1000, (6 << 20) + 0x1000);
    let map = || r.ctx.map(ioas, Some(Iova(iova)), PhysAddr(0x1000_0000 - 0x1000), len, Prot::RW).map(|_| ());
    let n_map = every_point(&r.ctx, map, unchanged_from_now(r, ioas)?)?;
    // The map went through on the last run: now a cut that needs splits.
    let cut = || r.ctx.unmap(ioas, Iova(0x1000), 0x1000, UnmapMode::Cut).map(|_| ());
    let n_cut = every_point(&r.ctx, cut, unchanged_from_now(r, ioas)?)?;
    if n_map == 0 {
        return Err("the map allocated nothing: the case proves nothing".into());
    }
    done(format!("{n_map} allocation points in the map, {n_cut} in the cut; each failure left no trace"))
}

pub(crate) fn attach_and_alloc(r: &Rig, _: u64) -> Result<Pass, String> {
    let dev = r.device(1, &[ioasis::IntentItem::UntaggedDma])?;
    let ioas = r.ctx.alloc_ioas();
    r.ctx.map(ioas, Some(Iova(0)), PhysAddr(0), 3 << 20, Prot::RW).map_err(e)?;
    // High in the input space, so that every level of the table is needed.
    let high = 1u64 << (r.caps.ias_bits.min(48) - 1);
    r.ctx.map(ioas, Some(Iova(high)), PhysAddr(0x40_0000), 0x5000, Prot::RW).map_err(e)?;
    let pages = r.table_pages();
    // Attaching makes a HWPT and replays both areas into it: many allocation points.
    let attach = || r.ctx.attach(dev, None, Target::Ioas(ioas));
    let unchanged = |_| -> Result<(), String> {
        if r.table_pages() != pages {
            return Err(format!("{} table pages, {pages} before", r.table_pages()));
        }
        if r.ctx.attachment(dev, None).map_err(e)?.is_some() {
            return Err("the device is attached".into());
        }
        if !r.ctx.ioas_hwpts(ioas).map_err(e)?.is_empty() {
            return Err("a HWPT was left on the IOAS".into());
        }
        Ok(())
    };
    let n = every_point(&r.ctx, attach, unchanged)?;
    r.lands(1, None, high + 0x4000, 0x40_4000, b"attached")?;
    done(format!("{n} allocation points in attach; each failure left no trace"))
}

pub(crate) fn pasid_attach(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(ioasis::Features::PASID) {
        return super::skip("the unit has no PASID support");
    }
    let dev = r.device(1, &[ioasis::IntentItem::UntaggedDma, ioasis::IntentItem::PasidIoas])?;
    let ioas = r.ctx.alloc_ioas();
    r.ctx.map(ioas, Some(Iova(0x1000)), PhysAddr(0x5000), 0x1000, Prot::RW).map_err(e)?;
    r.ctx.attach(dev, None, Target::Ioas(ioas)).map_err(e)?;
    let pages = r.table_pages();
    let top = ioasis::Pasid((1u32 << r.caps.pasid_bits.min(20)) - 1);
    let attach = || r.ctx.attach(dev, Some(top), Target::Ioas(ioas));
    let unchanged = |_| -> Result<(), String> {
        if r.table_pages() != pages {
            return Err(format!("{} table pages, {pages} before", r.table_pages()));
        }
        if r.ctx.attachment(dev, Some(top)).map_err(e)?.is_some() {
            return Err("the PASID is attached".into());
        }
        r.lands(1, None, 0x1000, 0x5000, b"untagged")
    };
    let n = every_point(&r.ctx, attach, unchanged)?;
    r.lands(1, Some(top.0), 0x1008, 0x5008, b"tagged")?;
    done(format!("{n} allocation points in a PASID attach; each failure left no trace"))
}

/// Every allocation point of a vIOMMU over a stage-2 and of a nested HWPT in it.
pub(crate) fn viommu_and_nested(r: &Rig, _: u64) -> Result<Pass, String> {
    use ioasis::abi::{ErrorCode, HwptFlags, ViommuFlags};
    use ioasis::HwptSpec;
    let Some(kind) = super::viommu::kind_of(r) else {
        return super::skip("the unit cannot make a vIOMMU: no kind for its paging format");
    };
    let Some(format) = r.caps.nested_formats.first().copied() else {
        return super::skip("the unit cannot nest a stage-1");
    };
    let (_, ioas, _) = r.attached(1)?;
    r.ctx.map(ioas, Some(Iova(0)), PhysAddr(0), 4 << 20, Prot::RW).map_err(e)?;
    let spec = HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: None };
    let parent = r.ctx.alloc_hwpt(r.unit, spec).map_err(e)?;
    // Probe once: a unit that refuses vIOMMUs is skipped, with its reason.
    match r.ctx.alloc_viommu(parent, kind, ViommuFlags::default()) {
        Ok(v) => r.ctx.destroy(v).map_err(e)?,
        Err(Error::Plugin { error, .. }) if error.code == ErrorCode::UNSUPPORTED => {
            return super::skip(format!("the unit cannot make a vIOMMU: {}", error.message))
        }
        Err(other) => return Err(other.to_string()),
    }
    let made = std::cell::Cell::new(None);
    let alloc = || {
        let v = r.ctx.alloc_viommu(parent, kind, ViommuFlags::default())?;
        made.set(Some(v));
        Ok(())
    };
    let n_viommu = every_point(&r.ctx, alloc, unchanged_from_now(r, ioas)?)?;
    let v = made.get().ok_or("no vIOMMU after the last run")?;
    let spec = HwptSpec::NestedIn { viommu: v, format, root: Iova(0x1000), words: vec![], fault_queue: None };
    let nested = || r.ctx.alloc_hwpt(r.unit, spec.clone()).map(|_| ());
    let n_nested = every_point(&r.ctx, nested, unchanged_from_now(r, ioas)?)?;
    done(format!(
        "{n_viommu} allocation points in a vIOMMU, {n_nested} in a nested HWPT in it; each failure left no trace"
    ))
}
