//! The IOVA bookkeeping of one IOAS: areas, allowed ranges, reserved regions, allocation.
//!
//! ## Unmap semantics
//! `unmap(range)` removes every area inside `range`. With [`UnmapMode::Cut`], an area that
//! `range` only partly covers is cut: the parts outside `range` stay mapped (as new areas),
//! and each HWPT splits its large pages at the cut. With [`UnmapMode::Exact`] such a range is
//! refused ([`Error::CutsArea`]) and nothing changes. A range with no area in it is
//! [`Error::NotMapped`]. Gaps between areas inside `range` are allowed.
//!
//! Concurrency: an operation first claims its range here (areas in flight are marked), then
//! calls the backends without holding the lock, then commits or aborts. Two operations on
//! overlapping ranges do not wait: the second gets [`Error::InFlight`].

use std::collections::BTreeMap;

use crate::addr::{Iova, IovaRange, PhysAddr, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::object::ObjectId;
use crate::prot::Prot;

/// How unmap treats an area that the range only partly covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmapMode {
    /// Refuse.
    Exact,
    /// Cut it; the parts outside the range stay mapped.
    Cut,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Live,
    Mapping,
    Unmapping,
}

/// One mapped area: `range` → `[pa, pa + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Area {
    /// IOVA range.
    pub range: IovaRange,
    /// Physical address of `range.start`.
    pub pa: PhysAddr,
    /// Permissions.
    pub prot: Prot,
    state: State,
}

impl Area {
    /// A live area.
    pub(crate) fn new(range: IovaRange, pa: PhysAddr, prot: Prot) -> Self {
        Self { range, pa, prot, state: State::Live }
    }

    /// The same mapping moved to `range` (same length), live.
    pub(crate) fn moved(&self, range: IovaRange) -> Self {
        Self { range, pa: self.pa, prot: self.prot, state: State::Live }
    }

    /// The part of the area inside `r`.
    pub fn clip(&self, r: &IovaRange) -> Option<Area> {
        let c = self.range.intersect(r)?;
        Some(Area { range: c, pa: PhysAddr(self.pa.0 + (c.start.0 - self.range.start.0)), ..*self })
    }
}

/// Where an IOAS may map, and how aligned every mapping must be (iommufd's
/// `IOMMU_IOAS_IOVA_RANGES`, with its `out_iova_alignment`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IovaRanges {
    /// The effective allowed ranges (user limits ∩ every attached device's aperture).
    pub ranges: Vec<IovaRange>,
    /// The IOVA, length and physical address of every mapping must be multiples of this: the
    /// largest of 4 KiB and the smallest page size of each HWPT that realises the IOAS.
    pub alignment: u64,
}

/// A reserved region and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The region.
    pub range: IovaRange,
    /// Why it is reserved (for messages).
    pub why: String,
    /// The object that brought it (a device), or `None` for the user's own.
    pub owner: Option<ObjectId>,
}

/// What an unmap will do, claimed but not yet done.
#[derive(Debug)]
pub struct UnmapPlan {
    /// The range asked for.
    pub range: IovaRange,
    /// Addresses where an area is cut (each HWPT splits there first).
    pub cuts: Vec<u64>,
    /// The parts that go (clipped to the range).
    pub gone: Vec<Area>,
    /// Start addresses of the areas involved.
    keys: Vec<u64>,
}

impl UnmapPlan {
    /// Bytes that go.
    pub fn bytes(&self) -> u64 {
        self.gone.iter().map(|a| a.range.len()).sum()
    }
}

/// The bookkeeping.
#[derive(Debug, Default)]
pub struct IovaMap {
    areas: BTreeMap<u64, Area>,
    allowed: Option<Vec<IovaRange>>,
    apertures: Vec<(ObjectId, IovaRange)>,
    reserved: Vec<Reservation>,
    /// Pages pinned by access objects, and the accesses of this IOAS.
    pub(crate) pins: crate::context::Pins,
}

fn range_of(iova: Iova, len: u64) -> Result<IovaRange> {
    if len == 0 {
        return Err(Error::ZeroLength);
    }
    for (what, v) in [("IOVA", iova.0), ("length", len)] {
        if v % PAGE_SIZE != 0 {
            return Err(Error::Unaligned { what, value: v, align: PAGE_SIZE });
        }
    }
    IovaRange::new(iova, len).ok_or(Error::Overflow { start: iova, len })
}

/// Refuses a range whose start lies above its last address.
fn check_not_inverted(r: &IovaRange) -> Result<()> {
    if r.start > r.last {
        return Err(Error::InvertedRange { start: r.start.0, last: r.last.0 });
    }
    Ok(())
}

/// Checks a range given by the user and builds it.
pub fn user_range(iova: Iova, len: u64) -> Result<IovaRange> {
    range_of(iova, len)
}

impl IovaMap {
    /// Every area (live or in flight), in address order.
    pub fn areas(&self) -> impl Iterator<Item = &Area> {
        self.areas.values()
    }

    /// Live areas overlapping `r`.
    pub fn live_in(&self, r: &IovaRange) -> Vec<Area> {
        self.overlapping(r).filter(|a| a.state == State::Live).copied().collect()
    }

    /// The areas covering `r` without a gap, clipped to it, in address order, each allowing
    /// `want`. The first problem in address order is the error: a gap is [`Error::NotMapped`]
    /// (its range starts at the first unmapped address), an area that does not allow `want` is
    /// [`Error::Denied`], an area being mapped (or being unmapped, unless `unmapping_ok`) is
    /// [`Error::InFlight`].
    pub(crate) fn covering(&self, r: &IovaRange, want: Prot, unmapping_ok: bool) -> Result<Vec<Area>> {
        let mut out: Vec<Area> = Vec::new();
        let mut cursor = r.start.0;
        for a in self.overlapping(r) {
            let c = a.clip(r).expect("overlapping");
            if c.range.start.0 != cursor {
                return Err(Error::NotMapped {
                    range: IovaRange { start: Iova(cursor), last: Iova(c.range.start.0 - 1) },
                });
            }
            if !(a.state == State::Live || (unmapping_ok && a.state == State::Unmapping)) {
                return Err(Error::InFlight { range: a.range });
            }
            if !a.prot.contains(want) {
                return Err(Error::Denied { range: c.range, area: a.range, prot: a.prot, want });
            }
            out.push(c);
            match c.range.last.0.checked_add(1) {
                Some(next) => cursor = next,
                None => return Ok(out),
            }
        }
        if out.last().map(|c| c.range.last) != Some(r.last) {
            return Err(Error::NotMapped { range: IovaRange { start: Iova(cursor), last: r.last } });
        }
        Ok(out)
    }

    fn overlapping<'a>(&'a self, r: &IovaRange) -> impl Iterator<Item = &'a Area> + 'a {
        let r = *r;
        // The area that starts before r.start may reach into it.
        let before = self.areas.range(..r.start.0).next_back().map(|(_, a)| a).filter(move |a| a.range.overlaps(&r));
        before.into_iter().chain(self.areas.range(r.start.0..=r.last.0).map(|(_, a)| a))
    }

    /// The effective allowed ranges: the user's, cut down to every aperture.
    pub fn allowed(&self) -> Vec<IovaRange> {
        let mut out = self.allowed.clone().unwrap_or_else(|| vec![IovaRange::FULL]);
        for (_, ap) in &self.apertures {
            out = out.iter().filter_map(|r| r.intersect(ap)).collect();
        }
        out
    }

    /// Reserved regions.
    pub fn reserved(&self) -> &[Reservation] {
        &self.reserved
    }

    fn check_allowed(&self, r: &IovaRange) -> Result<()> {
        let allowed = self.allowed();
        if allowed.iter().any(|a| a.contains_range(r)) {
            return Ok(());
        }
        let shown: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
        Err(Error::OutOfAperture { range: *r, allowed: format!("[{}]", shown.join(", ")) })
    }

    fn check_free(&self, r: &IovaRange) -> Result<()> {
        self.check_allowed(r)?;
        if let Some(res) = self.reserved.iter().find(|x| x.range.overlaps(r)) {
            return Err(Error::Reserved { range: *r, region: res.range, why: res.why.clone() });
        }
        if let Some(a) = self.overlapping(r).next() {
            return Err(Error::Exists { range: *r, area: a.range });
        }
        Ok(())
    }

    /// Claims `[iova, iova+len)` for a new area; the caller then maps it and commits or aborts.
    pub fn claim_map(&mut self, iova: Iova, len: u64, pa: PhysAddr, prot: Prot) -> Result<IovaRange> {
        let r = range_of(iova, len)?;
        if pa.0 % PAGE_SIZE != 0 {
            return Err(Error::Unaligned { what: "physical address", value: pa.0, align: PAGE_SIZE });
        }
        if pa.0.checked_add(len - 1).is_none() {
            return Err(Error::Overflow { start: Iova(pa.0), len });
        }
        if prot.0 & !Prot::RW.0 != 0 {
            return Err(Error::UnknownBits { what: "prot", bits: (prot.0 & !Prot::RW.0).into() });
        }
        if prot.is_none() {
            return Err(Error::Invalid("a mapping needs read or write permission".into()));
        }
        self.check_free(&r)?;
        self.areas.insert(r.start.0, Area { range: r, pa, prot, state: State::Mapping });
        Ok(r)
    }

    /// The claimed area is mapped everywhere.
    pub fn commit_map(&mut self, r: &IovaRange) {
        if let Some(a) = self.areas.get_mut(&r.start.0) {
            a.state = State::Live;
        }
    }

    /// The claimed area could not be mapped.
    pub fn abort_map(&mut self, r: &IovaRange) {
        self.areas.remove(&r.start.0);
    }

    /// Finds a free range of `len` bytes aligned to `align` (a power of two) inside the allowed
    /// ranges, avoiding areas and reserved regions. Lowest address first.
    pub fn find_free(&self, len: u64, align: u64) -> Result<Iova> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let align = align.max(PAGE_SIZE);
        let mut busy: Vec<IovaRange> = self.areas.values().map(|a| a.range).collect();
        busy.extend(self.reserved.iter().map(|r| r.range));
        busy.sort_by_key(|r| r.start);
        for window in self.allowed() {
            let mut cur = window.start.0;
            while let Some(start) = cur.checked_add(align - 1).map(|v| v & !(align - 1)) {
                let Some(last) = start.checked_add(len - 1) else { break };
                if last > window.last.0 {
                    break;
                }
                let cand = IovaRange { start: Iova(start), last: Iova(last) };
                match busy.iter().find(|b| b.overlaps(&cand)) {
                    None => return Ok(Iova(start)),
                    Some(b) => match b.last.0.checked_add(1) {
                        Some(next) => cur = next,
                        None => break,
                    },
                }
            }
        }
        Err(Error::NoSpace { len })
    }

    /// Claims the areas that an unmap of `[iova, iova+len)` removes.
    pub fn claim_unmap(&mut self, iova: Iova, len: u64, mode: UnmapMode) -> Result<UnmapPlan> {
        self.claim_unmap_range(range_of(iova, len)?, mode)
    }

    /// [`IovaMap::claim_unmap`] of a range already checked (the whole space, for instance).
    pub fn claim_unmap_range(&mut self, r: IovaRange, mode: UnmapMode) -> Result<UnmapPlan> {
        let hit: Vec<Area> = self.overlapping(&r).copied().collect();
        if hit.is_empty() {
            return Err(Error::NotMapped { range: r });
        }
        if hit.iter().any(|a| a.state != State::Live) {
            return Err(Error::InFlight { range: r });
        }
        let mut cuts = Vec::new();
        for a in &hit {
            if !r.contains_range(&a.range) {
                if mode == UnmapMode::Exact {
                    return Err(Error::CutsArea { range: r, area: a.range });
                }
                if a.range.start < r.start {
                    cuts.push(r.start.0);
                }
                if a.range.last > r.last {
                    cuts.push(r.last.0 + 1);
                }
            }
        }
        let gone = hit.iter().filter_map(|a| a.clip(&r)).collect();
        let keys: Vec<u64> = hit.iter().map(|a| a.range.start.0).collect();
        for k in &keys {
            if let Some(a) = self.areas.get_mut(k) {
                a.state = State::Unmapping;
            }
        }
        Ok(UnmapPlan { range: r, cuts, gone, keys })
    }

    /// The plan is done in every HWPT: drop the areas, keep the parts outside the range.
    pub fn commit_unmap(&mut self, plan: &UnmapPlan) {
        for k in &plan.keys {
            let Some(a) = self.areas.remove(k) else { continue };
            if a.range.start < plan.range.start {
                let left = IovaRange { start: a.range.start, last: Iova(plan.range.start.0 - 1) };
                self.areas.insert(left.start.0, Area { range: left, state: State::Live, ..a });
            }
            if a.range.last > plan.range.last {
                let start = plan.range.last.0 + 1;
                let right = IovaRange { start: Iova(start), last: a.range.last };
                let pa = PhysAddr(a.pa.0 + (start - a.range.start.0));
                self.areas.insert(start, Area { range: right, pa, prot: a.prot, state: State::Live });
            }
        }
    }

    /// The plan failed: the areas are live again, unchanged.
    pub fn abort_unmap(&mut self, plan: &UnmapPlan) {
        for k in &plan.keys {
            if let Some(a) = self.areas.get_mut(k) {
                a.state = State::Live;
            }
        }
    }

    /// Adds a reserved region; refused if something is mapped there, if it is inverted, or
    /// (for the user's own, `owner` `None`) if it overlaps another of the user's. Regions
    /// devices bring may overlap each other (every device brings the MSI window).
    pub fn add_reserved(&mut self, range: IovaRange, why: &str, owner: Option<ObjectId>) -> Result<()> {
        check_not_inverted(&range)?;
        if owner.is_none() {
            if let Some(other) = self.reserved.iter().find(|r| r.owner.is_none() && r.range.overlaps(&range)) {
                return Err(Error::OverlappingRanges { first: other.range, second: range });
            }
        }
        if let Some(a) = self.overlapping(&range).next() {
            return Err(Error::Exists { range, area: a.range });
        }
        self.reserved.push(Reservation { range, why: why.to_string(), owner });
        Ok(())
    }

    /// Drops the reserved regions an object brought.
    pub fn remove_reserved(&mut self, owner: ObjectId) {
        self.reserved.retain(|r| r.owner != Some(owner));
    }

    /// Narrows the allowed ranges to an object's aperture; refused if an area lies outside.
    pub fn add_aperture(&mut self, owner: ObjectId, ap: IovaRange) -> Result<()> {
        if let Some(a) = self.areas.values().find(|a| !ap.contains_range(&a.range)) {
            return Err(Error::OutOfAperture { range: a.range, allowed: format!("[{ap}]") });
        }
        self.apertures.push((owner, ap));
        Ok(())
    }

    /// Drops an object's aperture.
    pub fn remove_aperture(&mut self, owner: ObjectId) {
        self.apertures.retain(|(o, _)| *o != owner);
    }

    /// Sets the user's allowed ranges (`None`: everything); refused if a range is inverted,
    /// if two overlap, or if an area lies outside.
    pub fn set_allowed(&mut self, ranges: Option<Vec<IovaRange>>) -> Result<()> {
        if let Some(list) = &ranges {
            list.iter().try_for_each(check_not_inverted)?;
            let mut sorted = list.clone();
            sorted.sort_by_key(|r| r.start);
            if let Some(w) = sorted.windows(2).find(|w| w[0].overlaps(&w[1])) {
                return Err(Error::OverlappingRanges { first: w[0], second: w[1] });
            }
        }
        let old = std::mem::replace(&mut self.allowed, ranges);
        for a in self.areas.values() {
            if let Err(e) = self.check_allowed(&a.range) {
                self.allowed = old;
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn map(m: &mut IovaMap, iova: u64, len: u64, pa: u64) -> Result<IovaRange> {
        let r = m.claim_map(Iova(iova), len, PhysAddr(pa), Prot::RW)?;
        m.commit_map(&r);
        Ok(r)
    }

    #[test]
    fn map_edge_cases_are_typed_errors() {
        let mut m = IovaMap::default();
        assert!(matches!(map(&mut m, 0x1000, 0, 0), Err(Error::ZeroLength)));
        assert!(matches!(map(&mut m, 0x1001, 0x1000, 0), Err(Error::Unaligned { what: "IOVA", .. })));
        assert!(matches!(map(&mut m, 0x1000, 0x1800, 0), Err(Error::Unaligned { what: "length", .. })));
        assert!(matches!(map(&mut m, 0x1000, 0x1000, 0x10), Err(Error::Unaligned { .. })));
        assert!(matches!(map(&mut m, u64::MAX - 0xfff, 0x2000, 0), Err(Error::Overflow { .. })));
        let e = m.claim_map(Iova(0x1000), 0x1000, PhysAddr(0), Prot(Prot::RW.0 | 8)).unwrap_err();
        assert!(matches!(e, Error::UnknownBits { what: "prot", bits: 8 }), "{e}");
        // The very last page of the space is fine.
        map(&mut m, u64::MAX - 0xfff, 0x1000, 0).unwrap();
        map(&mut m, 0x10000, 0x4000, 0).unwrap();
        assert!(matches!(map(&mut m, 0xf000, 0x2000, 0), Err(Error::Exists { .. })));
        assert!(matches!(map(&mut m, 0x13000, 0x1000, 0), Err(Error::Exists { .. })));
        assert_eq!(m.areas().count(), 2);
    }

    #[test]
    fn reserved_and_aperture_are_enforced() {
        let mut m = IovaMap::default();
        let msi = IovaRange::inclusive(0xfee0_0000, 0xfeef_ffff).unwrap();
        m.add_reserved(msi, "x86 MSI window", None).unwrap();
        assert!(matches!(map(&mut m, 0xfee0_0000, 0x1000, 0), Err(Error::Reserved { .. })));
        m.add_aperture(ObjectId(9), IovaRange::inclusive(0, (1 << 39) - 1).unwrap()).unwrap();
        assert!(matches!(map(&mut m, 1 << 39, 0x1000, 0), Err(Error::OutOfAperture { .. })));
        map(&mut m, (1 << 39) - 0x1000, 0x1000, 0).unwrap();
        // A narrower aperture that would strand the area is refused.
        let narrow = IovaRange::inclusive(0, (1 << 32) - 1).unwrap();
        assert!(m.add_aperture(ObjectId(10), narrow).is_err());
        m.remove_aperture(ObjectId(9));
        map(&mut m, 1 << 40, 0x1000, 0).unwrap();
        // Reserving over a mapping is refused.
        assert!(m.add_reserved(IovaRange::inclusive(1 << 40, (1 << 40) + 0xfff).unwrap(), "x", None).is_err());
    }

    #[test]
    fn inverted_and_overlapping_ranges_are_refused() {
        let mut m = IovaMap::default();
        let r = |a: u64, b: u64| IovaRange { start: Iova(a), last: Iova(b) };
        let good = vec![r(0x10_0000, 0x1f_ffff)];
        m.set_allowed(Some(good.clone())).unwrap();
        let e = m.set_allowed(Some(vec![r(0x40_0000, 0x3f_ffff)])).unwrap_err();
        assert!(matches!(e, Error::InvertedRange { start: 0x40_0000, last: 0x3f_ffff }), "{e}");
        let e = m.set_allowed(Some(vec![r(0x40_0000, 0x4f_ffff), r(0x10_0000, 0x40_0000)])).unwrap_err();
        assert!(matches!(e, Error::OverlappingRanges { .. }), "{e}");
        assert_eq!(m.allowed(), good, "nothing changed");
        // Touching is not overlapping.
        m.set_allowed(Some(vec![r(0x20_0000, 0x2f_ffff), r(0x10_0000, 0x1f_ffff)])).unwrap();

        let e = m.add_reserved(r(0x9000, 0x8000), "x", None).unwrap_err();
        assert!(matches!(e, Error::InvertedRange { .. }), "{e}");
        let e = m.add_reserved(r(0x9000, 0x8000), "x", Some(ObjectId(3))).unwrap_err();
        assert!(matches!(e, Error::InvertedRange { .. }), "{e}");
        m.add_reserved(r(0x1_0000, 0x1_ffff), "mine", None).unwrap();
        let e = m.add_reserved(r(0x1_f000, 0x2_ffff), "mine too", None).unwrap_err();
        assert!(matches!(e, Error::OverlappingRanges { .. }), "{e}");
        assert_eq!(m.reserved().len(), 1, "nothing changed");
        // Devices' regions may overlap each other and the user's.
        m.add_reserved(r(0x1_f000, 0x2_ffff), "dev 3", Some(ObjectId(3))).unwrap();
        m.add_reserved(r(0x1_f000, 0x2_ffff), "dev 4", Some(ObjectId(4))).unwrap();
        m.add_reserved(r(0x3_0000, 0x3_ffff), "mine", None).unwrap();
        assert_eq!(m.reserved().len(), 4);
    }

    #[test]
    fn unmap_exact_and_cut() {
        let mut m = IovaMap::default();
        map(&mut m, 0, 4 * MB, 0x1000_0000).unwrap();
        let e = m.claim_unmap(Iova(MB), MB, UnmapMode::Exact).unwrap_err();
        assert!(matches!(e, Error::CutsArea { .. }));
        let plan = m.claim_unmap(Iova(MB), MB, UnmapMode::Cut).unwrap();
        assert_eq!(plan.cuts, vec![MB, 2 * MB]);
        assert_eq!(plan.bytes(), MB);
        // While in flight, another operation on it is refused.
        assert!(matches!(m.claim_unmap(Iova(0), MB, UnmapMode::Cut), Err(Error::InFlight { .. })));
        m.commit_unmap(&plan);
        let areas: Vec<_> = m.areas().map(|a| (a.range.start.0, a.range.len(), a.pa.0)).collect();
        assert_eq!(areas, vec![(0, MB, 0x1000_0000), (2 * MB, 2 * MB, 0x1000_0000 + 2 * MB)]);
        assert!(matches!(m.claim_unmap(Iova(MB), MB, UnmapMode::Cut), Err(Error::NotMapped { .. })));
        // One range over both areas and the gap between them.
        let plan = m.claim_unmap(Iova(0), 4 * MB, UnmapMode::Exact).unwrap();
        assert_eq!(plan.bytes(), 3 * MB);
        m.commit_unmap(&plan);
        assert_eq!(m.areas().count(), 0);
    }

    #[test]
    fn aborted_unmap_changes_nothing() {
        let mut m = IovaMap::default();
        map(&mut m, 0, 2 * MB, 0).unwrap();
        let before: Vec<Area> = m.areas().copied().collect();
        let plan = m.claim_unmap(Iova(0x1000), 0x1000, UnmapMode::Cut).unwrap();
        m.abort_unmap(&plan);
        assert_eq!(m.areas().copied().collect::<Vec<_>>(), before);
    }

    #[test]
    fn allocation_skips_areas_and_reserved() {
        let mut m = IovaMap::default();
        m.set_allowed(Some(vec![IovaRange::inclusive(0x10_0000, 0x7f_ffff).unwrap()])).unwrap();
        map(&mut m, 0x20_0000, 0x20_0000, 0).unwrap();
        m.add_reserved(IovaRange::inclusive(0x10_0000, 0x1f_ffff).unwrap(), "r", None).unwrap();
        assert_eq!(m.find_free(0x20_0000, 0x20_0000).unwrap(), Iova(0x40_0000));
        assert_eq!(m.find_free(0x1000, 0x1000).unwrap(), Iova(0x40_0000));
        assert!(matches!(m.find_free(0x80_0000, 0x1000), Err(Error::NoSpace { .. })));
        assert!(m.set_allowed(Some(vec![IovaRange::inclusive(0, 0xfff).unwrap()])).is_err());
    }
}
