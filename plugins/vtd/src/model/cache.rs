//! The unit's caches (VT-d spec 6.2): the context cache (6.2.1), the PASID cache (6.2.2) and
//! the IOTLB (6.2.3). Entries stay, however the tables in memory change, until an invalidation
//! (register-based, 6.5.1, or queued, 6.5.2) drops them: that is what catches a driver that
//! forgets one. Only valid entries are cached (CAP.CM is never acted on: a unit may always
//! decline to cache not-present entries), and no fault is ever cached.

use std::collections::HashMap;
use std::hash::Hash;

use ioasis::Prot;

use crate::layout::tables::sl;

/// Most entries the model keeps of other kinds (page responses).
pub(super) const CAPACITY: usize = super::config::CACHE_ENTRIES;

/// Leaf sizes an IOTLB entry can have, smallest first (the lookup order).
const PAGE_SIZES: [u64; 3] = [sl::span(1), sl::span(2), sl::span(3)];

/// A cached context entry (9.1/9.3 legacy, or 9.2/9.4 scalable), as read from memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CtxEntry {
    /// Read in scalable mode (RTADDR.TTM = 01): a 9.4 entry; else a 9.3 entry.
    pub scalable: bool,
    /// Lower qword (9.3) or qword 0 (9.4).
    pub lo: u64,
    /// Upper qword (9.3) or qword 1 (9.4).
    pub hi: u64,
}

impl CtxEntry {
    /// The domain id of a legacy entry (9.3, upper qword bits 23:8).
    fn did(&self) -> Option<u16> {
        (!self.scalable).then(|| crate::layout::tables::context::did_of(self.hi))
    }
}

/// A cached PASID-table entry (9.6), its first four qwords.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PasidEntry {
    /// Qwords 0..3 of the 512-bit entry.
    pub q: [u64; 4],
}

impl PasidEntry {
    /// Qword 1 DID bits 15:0 (9.6).
    pub fn did(&self) -> u16 {
        (self.q[1] & crate::layout::tables::pasid_entry::DID_MASK) as u16
    }
}

/// Which tables an IOTLB entry came from; it decides which invalidations reach it (6.5.2.3:
/// IOTLB invalidation covers second-stage and nested mappings; 6.5.2.4: PASID-based IOTLB
/// invalidation covers first-stage and nested mappings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Legacy second-level, or scalable PGTT = second-stage.
    Second,
    /// Scalable PGTT = first-stage.
    First,
    /// Scalable PGTT = nested (first-stage through second-stage).
    Nested,
}

/// One cached translation: the `size`-aligned input page maps to `pa..pa+size` with `prot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IotlbEntry {
    /// Output address of the first byte of the page.
    pub pa: u64,
    /// Page size (4 KiB, 2 MiB or 1 GiB).
    pub size: u64,
    /// Permissions (for nested entries, the intersection of both stages).
    pub prot: Prot,
    /// Every D bit a write needs is set (or no stage tracks dirtiness): a write hit needs no
    /// walk. When false, a write re-walks the tables to set D.
    pub dirty_done: bool,
    /// Which tables produced it.
    pub stage: Stage,
    /// The first stage's permissions in a nested entry (`prot` otherwise): a nested
    /// permission fault is the first stage's or the second stage's (Appendix A SGN.5/6, SSS.2).
    pub s1_prot: Prot,
}

/// IOTLB tag: DID, PASID (scalable mode; `None` in legacy mode), page-aligned input address,
/// page size.
type IotlbKey = (u16, Option<u32>, u64, u64);

/// Counters for tests and harnesses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Context-cache entries held now.
    pub context_entries: usize,
    /// PASID-cache entries held now.
    pub pasid_entries: usize,
    /// IOTLB entries held now.
    pub iotlb_entries: usize,
    /// Translations answered from the IOTLB.
    pub iotlb_hits: u64,
    /// Translations that walked the paging structures.
    pub walks: u64,
}

/// Inserts into a map holding at most `capacity` entries (none when 0).
fn insert_bounded<K: Hash + Eq + Copy, V>(map: &mut HashMap<K, V>, capacity: usize, key: K, value: V) {
    if capacity == 0 {
        return;
    }
    if map.len() >= capacity && !map.contains_key(&key) {
        if let Some(victim) = map.keys().next().copied() {
            map.remove(&victim);
        }
    }
    map.insert(key, value);
}

/// The SID bits a function mask (FM, 11.4.7 / 6.5.2.1) leaves out of a device-selective match.
pub(super) fn fm_ignore(fm: u64) -> u16 {
    match fm & 3 {
        0 => 0,
        1 => 0b100,
        2 => 0b110,
        _ => 0b111,
    }
}

/// All of the unit's caches.
#[derive(Debug)]
pub(super) struct Caches {
    capacity: usize,
    ctx: HashMap<u16, CtxEntry>,
    pasid: HashMap<(u16, u32), PasidEntry>,
    iotlb: HashMap<IotlbKey, IotlbEntry>,
    hits: u64,
    walks: u64,
}

impl Caches {
    /// Empty caches of `capacity` entries each.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, ctx: HashMap::new(), pasid: HashMap::new(), iotlb: HashMap::new(), hits: 0, walks: 0 }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            context_entries: self.ctx.len(),
            pasid_entries: self.pasid.len(),
            iotlb_entries: self.iotlb.len(),
            iotlb_hits: self.hits,
            walks: self.walks,
        }
    }

    pub fn count_hit(&mut self) {
        self.hits = self.hits.saturating_add(1);
    }

    pub fn count_walk(&mut self) {
        self.walks = self.walks.saturating_add(1);
    }

    /// The context entry of `sid` read in the current mode, if cached.
    pub fn context(&self, sid: u16, scalable: bool) -> Option<CtxEntry> {
        self.ctx.get(&sid).copied().filter(|e| e.scalable == scalable)
    }

    pub fn insert_context(&mut self, sid: u16, e: CtxEntry) {
        insert_bounded(&mut self.ctx, self.capacity, sid, e);
    }

    pub fn pasid(&self, sid: u16, pasid: u32) -> Option<PasidEntry> {
        self.pasid.get(&(sid, pasid)).copied()
    }

    pub fn insert_pasid(&mut self, sid: u16, pasid: u32, e: PasidEntry) {
        insert_bounded(&mut self.pasid, self.capacity, (sid, pasid), e);
    }

    /// Looks `addr` up for `did`/`pasid`, smallest page size first.
    pub fn iotlb_lookup(&self, did: u16, pasid: Option<u32>, addr: u64) -> Option<IotlbEntry> {
        PAGE_SIZES.iter().find_map(|&size| self.iotlb.get(&(did, pasid, addr & !(size - 1), size)).copied())
    }

    pub fn iotlb_insert(&mut self, did: u16, pasid: Option<u32>, addr: u64, e: IotlbEntry) {
        if !e.size.is_power_of_two() {
            return;
        }
        // A new entry replaces any other size cached for the same address (a re-walk after a
        // write hit on a read-made entry, or a stale entry of another size).
        for size in PAGE_SIZES {
            self.iotlb.remove(&(did, pasid, addr & !(size - 1), size));
        }
        insert_bounded(&mut self.iotlb, self.capacity, (did, pasid, addr & !(e.size - 1), e.size), e);
    }

    /// Context-cache global invalidation (6.5.1.1 / 6.5.2.1 G = 01).
    pub fn cc_global(&mut self) {
        self.ctx.clear();
    }

    /// Context-cache domain-selective invalidation: legacy entries of `did`. Scalable-mode
    /// context entries carry no DID (9.4), so every scalable entry is dropped.
    pub fn cc_domain(&mut self, did: u16) {
        self.ctx.retain(|_, e| e.did().is_some_and(|d| d != did));
    }

    /// Context-cache device-selective invalidation of `sid` (low SID bits in `ignore` masked,
    /// FM); the PASID-cache entries of those devices go too.
    pub fn cc_device(&mut self, sid: u16, ignore: u16) {
        let keep = |s: u16| s & !ignore != sid & !ignore;
        self.ctx.retain(|&s, _| keep(s));
        self.pasid.retain(|&(s, _), _| keep(s));
    }

    /// PASID-cache invalidation (6.5.2.2): all entries of `did` (`pasid` None) or one PASID.
    pub fn pc_invalidate(&mut self, did: u16, pasid: Option<u32>) {
        self.pasid.retain(|&(_, p), e| !(e.did() == did && pasid.is_none_or(|q| q == p)));
    }

    /// PASID-cache global invalidation.
    pub fn pc_global(&mut self) {
        self.pasid.clear();
    }

    /// IOTLB global invalidation.
    pub fn iotlb_global(&mut self) {
        self.iotlb.clear();
    }

    /// IOTLB domain-selective invalidation (6.5.2.3): second-stage and nested entries of `did`.
    pub fn iotlb_domain(&mut self, did: u16) {
        self.iotlb.retain(|&(d, ..), e| !(d == did && e.stage != Stage::First));
    }

    /// IOTLB page-selective invalidation (6.5.2.3): second-stage entries of `did` overlapping
    /// `[addr, addr + 2^am pages)`, and every nested entry of `did` (their input addresses are
    /// first-stage addresses that a second-stage range cannot be compared with).
    pub fn iotlb_pages(&mut self, did: u16, addr: u64, am: u32) {
        let (start, len) = range(addr, am);
        self.iotlb.retain(|&(d, _, base, size), e| {
            !(d == did && (e.stage == Stage::Nested || (e.stage == Stage::Second && overlaps(base, size, start, len))))
        });
    }

    /// PASID-based IOTLB invalidation (6.5.2.4): first-stage and nested entries of
    /// `did`/`pasid`, all (`pages` None) or those overlapping `(addr, am)`.
    pub fn piotlb(&mut self, did: u16, pasid: u32, pages: Option<(u64, u32)>) {
        self.iotlb.retain(|&(d, p, base, size), e| {
            let hit = d == did
                && p == Some(pasid)
                && e.stage != Stage::Second
                && pages.is_none_or(|(addr, am)| {
                    let (start, len) = range(addr, am);
                    overlaps(base, size, start, len)
                });
            !hit
        });
    }
}

/// The naturally aligned range of `2^am` 4 KiB pages holding `addr` (6.5.2.3 AM); `len` 0
/// stands for the whole 64-bit space.
fn range(addr: u64, am: u32) -> (u64, u64) {
    let shift = 12u32.saturating_add(am);
    if shift >= 64 {
        return (0, 0);
    }
    let len = 1u64 << shift;
    (addr & !(len - 1), len)
}

/// `[base, base+size)` meets `[start, start+len)` (`len` 0: everything).
fn overlaps(base: u64, size: u64, start: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    let last = base.saturating_add(size - 1);
    let rlast = start.saturating_add(len - 1);
    base <= rlast && start <= last
}
