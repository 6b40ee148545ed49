//! Map, unmap and copy on an IOAS, kept in step across every HWPT that realises it.

use std::sync::Arc;

use crate::addr::{Iova, IovaRange, PhysAddr, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::ioas::{user_range, Area, IovaRanges, UnmapMode};
use crate::object::IoasId;
use crate::prot::Prot;

use super::{lock, plugin_err, Context, HwptObj, IoasObj};

/// The alignment an allocated IOVA gets: the largest page size (up to 1 GiB) that both the
/// length and the physical address allow, so that the backend can use large pages.
fn alloc_align(pa: PhysAddr, len: u64) -> u64 {
    let pa_align = if pa.0 == 0 { 1 << 30 } else { 1u64 << pa.0.trailing_zeros() };
    let len_align = 1u64 << (63 - len.leading_zeros());
    pa_align.min(len_align).min(1 << 30)
}

/// The alignment every mapping of an IOAS realised by `hwpts` keeps: 4 KiB, or the smallest
/// page of the HWPT whose smallest page is largest.
fn iova_alignment(hwpts: &[Arc<HwptObj>]) -> u64 {
    hwpts.iter().filter_map(|h| h.info.page_sizes.min()).fold(PAGE_SIZE, u64::max)
}

/// Refuses a mapping whose IOVA (when given), length or physical address breaks `align`.
fn check_alignment(iova: Option<Iova>, len: u64, pa: PhysAddr, align: u64) -> Result<()> {
    let values = [("IOVA", iova.map(|i| i.0)), ("length", Some(len)), ("physical address", Some(pa.0))];
    for (what, v) in values {
        if let Some(v) = v.filter(|v| v % align != 0) {
            return Err(Error::Unaligned { what, value: v, align });
        }
    }
    Ok(())
}

/// Maps `area` into every HWPT; on failure, unmaps it from those that succeeded.
fn map_everywhere(hwpts: &[Arc<HwptObj>], area: &Area) -> Result<()> {
    for (i, h) in hwpts.iter().enumerate() {
        let r = h.hw.map(area.range.start, area.pa, area.range.len(), area.prot).into_result();
        if let Err(e) = r {
            for done in &hwpts[..i] {
                if let Err(u) = done.hw.unmap(area.range.start, area.range.len()).into_result() {
                    tracing::error!(hwpt = %done.id, "rollback unmap of {} failed: {u}", area.range);
                }
            }
            return Err(plugin_err(&h.unit, "map", e));
        }
    }
    Ok(())
}

impl Context {
    /// Maps `[pa, pa+len)` at `iova`, or at an IOVA the IOAS allocates when `iova` is `None`.
    /// Returns the IOVA. All or nothing across every HWPT of the IOAS.
    pub fn map(&self, ioas: IoasId, iova: Option<Iova>, pa: PhysAddr, len: u64, prot: Prot) -> Result<Iova> {
        let ioas = self.ioas(ioas)?;
        let hwpts = ioas.hwpts.read().unwrap_or_else(|p| p.into_inner());
        let align = iova_alignment(&hwpts);
        check_alignment(iova, len, pa, align)?;
        self.platform.check_dma_memory(pa, len).map_err(|why| Error::NotDmaMemory { pa, len, why })?;
        let range = {
            let mut m = lock(&ioas.map);
            let at = match iova {
                Some(i) => i,
                None => m.find_free(len, alloc_align(pa, len).max(align))?,
            };
            m.claim_map(at, len, pa, prot)?
        };
        let area = Area::new(range, pa, prot);
        match map_everywhere(&hwpts, &area) {
            Ok(()) => {
                lock(&ioas.map).commit_map(&range);
                Ok(range.start)
            }
            Err(e) => {
                lock(&ioas.map).abort_map(&range);
                Err(e)
            }
        }
    }

    /// Unmaps `[iova, iova+len)`; see [`crate::ioas`] for what happens to areas it cuts.
    /// Returns the bytes unmapped. All or nothing across every HWPT of the IOAS.
    pub fn unmap(&self, ioas: IoasId, iova: Iova, len: u64, mode: UnmapMode) -> Result<u64> {
        let ioas = self.ioas(ioas)?;
        unmap_in(&ioas, user_range(iova, len)?, mode)
    }

    /// Unmaps everything; returns the bytes unmapped (0 when nothing was mapped).
    pub fn unmap_all(&self, ioas: IoasId) -> Result<u64> {
        let ioas = self.ioas(ioas)?;
        match unmap_in(&ioas, IovaRange::FULL, UnmapMode::Exact) {
            Err(Error::NotMapped { .. }) => Ok(0),
            other => other,
        }
    }

    /// Copies the mappings of `[src_iova, src_iova+len)` in `src` (which must be mapped
    /// without gaps) into `dst` at `dst_iova`, or at an IOVA `dst` allocates. Same physical
    /// pages, same permissions. Returns the IOVA in `dst`.
    pub fn copy(&self, src: IoasId, src_iova: Iova, len: u64, dst: IoasId, dst_iova: Option<Iova>) -> Result<Iova> {
        let r = user_range(src_iova, len)?;
        let src = self.ioas(src)?;
        let dst = self.ioas(dst)?;
        let pieces = lock(&src.map).live_in(&r);
        let mut cursor = r.start.0;
        let mut clipped = Vec::new();
        for a in &pieces {
            let c = a.clip(&r).expect("overlapping");
            if c.range.start.0 != cursor {
                return Err(Error::NotMapped { range: IovaRange { start: Iova(cursor), last: c.range.start } });
            }
            cursor = c.range.last.0.wrapping_add(1);
            clipped.push(c);
        }
        if clipped.is_empty() || (cursor != r.last.0.wrapping_add(1)) {
            return Err(Error::NotMapped { range: r });
        }
        let hwpts = dst.hwpts.read().unwrap_or_else(|p| p.into_inner());
        let align = iova_alignment(&hwpts);
        check_alignment(dst_iova, len, clipped[0].pa, align)?;
        for c in &clipped {
            check_alignment(Some(Iova(c.range.start.0 - r.start.0)), c.range.len(), c.pa, align)?;
        }
        let base = {
            let m = lock(&dst.map);
            match dst_iova {
                Some(i) => i,
                None => m.find_free(len, alloc_align(clipped[0].pa, len).max(align))?,
            }
        };
        let mut claimed: Vec<Area> = Vec::new();
        {
            let mut m = lock(&dst.map);
            for c in &clipped {
                let at =
                    Iova(base.0.checked_add(c.range.start.0 - r.start.0).ok_or(Error::Overflow { start: base, len })?);
                match m.claim_map(at, c.range.len(), c.pa, c.prot) {
                    Ok(range) => claimed.push(c.moved(range)),
                    Err(e) => {
                        for a in &claimed {
                            m.abort_map(&a.range);
                        }
                        return Err(e);
                    }
                }
            }
        }
        for (i, a) in claimed.iter().enumerate() {
            if let Err(e) = map_everywhere(&hwpts, a) {
                for done in &claimed[..i] {
                    for h in hwpts.iter() {
                        let _ = h.hw.unmap(done.range.start, done.range.len());
                    }
                }
                let mut m = lock(&dst.map);
                for a in &claimed {
                    m.abort_map(&a.range);
                }
                return Err(e);
            }
        }
        let mut m = lock(&dst.map);
        for a in &claimed {
            m.commit_map(&a.range);
        }
        Ok(base)
    }

    /// The areas of an IOAS, in address order.
    pub fn areas(&self, ioas: IoasId) -> Result<Vec<Area>> {
        Ok(lock(&self.ioas(ioas)?.map).areas().copied().collect())
    }

    /// The IOAS's effective allowed ranges (user limits ∩ every attached device's aperture).
    pub fn allowed(&self, ioas: IoasId) -> Result<Vec<IovaRange>> {
        Ok(lock(&self.ioas(ioas)?.map).allowed())
    }

    /// The IOAS's effective allowed ranges and the alignment every mapping into it must keep
    /// (iommufd's `IOMMU_IOAS_IOVA_RANGES`).
    pub fn iova_ranges(&self, ioas: IoasId) -> Result<IovaRanges> {
        let ioas = self.ioas(ioas)?;
        let hwpts = ioas.hwpts.read().unwrap_or_else(|p| p.into_inner());
        let alignment = iova_alignment(&hwpts);
        let ranges = lock(&ioas.map).allowed();
        Ok(IovaRanges { ranges, alignment })
    }

    /// Limits where the IOAS may map (`None`: anywhere the apertures allow).
    pub fn set_allowed(&self, ioas: IoasId, ranges: Option<Vec<IovaRange>>) -> Result<()> {
        lock(&self.ioas(ioas)?.map).set_allowed(ranges)
    }

    /// Reserves a region of an IOAS (nothing may be mapped there).
    pub fn add_reserved(&self, ioas: IoasId, range: IovaRange, why: &str) -> Result<()> {
        lock(&self.ioas(ioas)?.map).add_reserved(range, why, None)
    }

    /// The reserved regions of an IOAS: (range, why).
    pub fn reserved(&self, ioas: IoasId) -> Result<Vec<(IovaRange, String)>> {
        Ok(lock(&self.ioas(ioas)?.map).reserved().iter().map(|r| (r.range, r.why.clone())).collect())
    }

    /// What a software-table (mdev-like) driver uses instead of hardware translation: the
    /// physical pieces behind `[iova, iova+len)`, checked against the areas' permissions.
    pub fn access(&self, ioas: IoasId, iova: Iova, len: u64, want: Prot) -> Result<Vec<(PhysAddr, u64)>> {
        if want.0 & !Prot::RW.0 != 0 {
            return Err(Error::UnknownBits { what: "prot", bits: (want.0 & !Prot::RW.0).into() });
        }
        let r = IovaRange::new(iova, len).ok_or(if len == 0 {
            Error::ZeroLength
        } else {
            Error::Overflow { start: iova, len }
        })?;
        let ioas = self.ioas(ioas)?;
        let areas = lock(&ioas.map).live_in(&r);
        let mut out = Vec::new();
        let mut cursor = r.start.0;
        for a in areas {
            let c = a.clip(&r).expect("overlapping");
            if c.range.start.0 != cursor {
                return Err(Error::NotMapped { range: IovaRange { start: Iova(cursor), last: c.range.start } });
            }
            if !a.prot.contains(want) {
                return Err(Error::Invalid(format!("area {} is {}, {want} access asked", a.range, a.prot)));
            }
            out.push((c.pa, c.range.len()));
            cursor = c.range.last.0.wrapping_add(1);
        }
        if cursor != r.last.0.wrapping_add(1) || out.is_empty() {
            return Err(Error::NotMapped { range: r });
        }
        Ok(out)
    }
}

fn unmap_in(ioas: &IoasObj, range: IovaRange, mode: UnmapMode) -> Result<u64> {
    let mut hwpts = ioas.hwpts.read().unwrap_or_else(|p| p.into_inner());
    let (plan, pinned) = {
        let mut m = lock(&ioas.map);
        let plan = m.claim_unmap_range(range, mode)?;
        let pinned = m.pins.any_in(&plan.gone);
        (plan, pinned)
    };
    if pinned {
        // Access objects pinned pages here: their callbacks run without our locks (the claim
        // keeps new pins out meanwhile); pins left abort the claim before any backend call.
        drop(hwpts);
        super::access::unpin_for_unmap(ioas, &plan)?;
        hwpts = ioas.hwpts.read().unwrap_or_else(|p| p.into_inner());
    }
    // Phase 1: make each cut a leaf boundary. This may allocate, and changes no translation,
    // so a failure here leaves every HWPT translating exactly as before.
    for h in hwpts.iter() {
        for &cut in &plan.cuts {
            if let Err(e) = h.hw.split(Iova(cut)).into_result() {
                lock(&ioas.map).abort_unmap(&plan);
                return Err(plugin_err(&h.unit, "split", e));
            }
        }
    }
    // Phase 2: unmap each piece (not the whole range: a gap in it may be mapped meanwhile).
    for (i, h) in hwpts.iter().enumerate() {
        for (j, a) in plan.gone.iter().enumerate() {
            if let Err(e) = h.hw.unmap(a.range.start, a.range.len()).into_result() {
                // Should not happen after phase 1; put back what this operation took away.
                tracing::error!(hwpt = %h.id, "unmap of {} failed after split: {e}", a.range);
                let restore = |h: &HwptObj, a: &Area| {
                    if let Err(m) = h.hw.map(a.range.start, a.pa, a.range.len(), a.prot).into_result() {
                        tracing::error!(hwpt = %h.id, "restoring {} failed: {m}", a.range);
                    }
                };
                for done in &hwpts[..i] {
                    plan.gone.iter().for_each(|a| restore(done, a));
                }
                plan.gone[..j].iter().for_each(|a| restore(h, a));
                lock(&ioas.map).abort_unmap(&plan);
                return Err(plugin_err(&h.unit, "unmap", e));
            }
        }
    }
    lock(&ioas.map).commit_unmap(&plan);
    Ok(plan.bytes())
}

#[cfg(test)]
mod tests {
    use super::alloc_align;
    use crate::PhysAddr;

    #[test]
    fn allocated_iovas_keep_large_page_alignment() {
        assert_eq!(alloc_align(PhysAddr(0x4020_0000), 0x40_0000), 0x20_0000);
        assert_eq!(alloc_align(PhysAddr(0), 0x1000), 0x1000);
        assert_eq!(alloc_align(PhysAddr(0x8000_0000), 0x1_0000_0000), 1 << 30);
        assert_eq!(alloc_align(PhysAddr(0x1000), 0x20_0000), 0x1000);
    }
}
