//! The unit's caches: an IOTLB and a configuration cache (device entries, PASID entries,
//! descriptors). Entries stay until a command of mock spec §1 drops them, however the tables in
//! memory change: that is what lets a suite catch a driver that forgets an invalidation.

use std::collections::HashMap;
use std::hash::Hash;

use ioasis::Prot;

use crate::format::{desc, pte, ADDR_MASK};

/// Most entries each cache holds; past it an arbitrary entry is evicted.
pub(super) const CAPACITY: usize = 4096;

/// Leaf sizes an IOTLB entry can have, smallest first (the lookup order).
const PAGE_SIZES: [u64; 3] = [pte::span(0), pte::span(1), pte::span(2)];

/// Level-2 device-table entry (mock spec §2), words 0 and 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DevEntry {
    pub w0: u64,
    pub w1: u64,
}

/// A HWPT descriptor's first four words (mock spec §4).
pub(super) type Descriptor = [u64; 4];

/// One cached translation: the `size`-aligned IOVA page maps to `pa..pa+size` with `prot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct IotlbEntry {
    /// Output address of the first byte of the page.
    pub pa: u64,
    /// Page size (4 KiB, 2 MiB or 1 GiB).
    pub size: u64,
    /// Permissions (for nested entries, the intersection of both stages).
    pub prot: Prot,
    /// Every D bit a write needs is already set (the walk was a write, or no stage tracks
    /// dirtiness). When false, a write hit re-walks the tables to set them.
    pub dirty_done: bool,
    /// The stage-2 descriptor of a nested entry.
    pub parent: Option<u64>,
}

/// Counters for tests and harnesses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// IOTLB entries held now.
    pub iotlb_entries: usize,
    /// Device entries held now.
    pub device_entries: usize,
    /// PASID entries held now.
    pub pasid_entries: usize,
    /// Descriptors held now.
    pub descriptor_entries: usize,
    /// Translations answered from the IOTLB.
    pub iotlb_hits: u64,
    /// Translations that walked the page tables.
    pub walks: u64,
}

/// Inserts into a map holding at most [`CAPACITY`] entries.
fn insert_bounded<K: Hash + Eq + Copy, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= CAPACITY && !map.contains_key(&key) {
        if let Some(victim) = map.keys().next().copied() {
            map.remove(&victim);
        }
    }
    map.insert(key, value);
}

/// All of the unit's caches.
#[derive(Debug, Default)]
pub(super) struct Caches {
    /// Keyed by (descriptor address, page-aligned IOVA, page size).
    iotlb: HashMap<(u64, u64, u64), IotlbEntry>,
    dev: HashMap<u32, DevEntry>,
    pasid: HashMap<(u32, u32), u64>,
    desc: HashMap<u64, Descriptor>,
    hits: u64,
    walks: u64,
}

impl Caches {
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            iotlb_entries: self.iotlb.len(),
            device_entries: self.dev.len(),
            pasid_entries: self.pasid.len(),
            descriptor_entries: self.desc.len(),
            iotlb_hits: self.hits,
            walks: self.walks,
        }
    }

    pub fn count_hit(&mut self) {
        self.hits = self.hits.wrapping_add(1);
    }

    pub fn count_walk(&mut self) {
        self.walks = self.walks.wrapping_add(1);
    }

    /// The cached translation of `iova` under descriptor `desc`, smallest page first.
    pub fn iotlb_lookup(&self, desc: u64, iova: u64) -> Option<IotlbEntry> {
        PAGE_SIZES.iter().find_map(|&size| self.iotlb.get(&(desc, iova & !(size - 1), size)).copied())
    }

    pub fn iotlb_insert(&mut self, desc: u64, iova: u64, entry: IotlbEntry) {
        // Replace what a previous walk of the same page cached, whatever its size.
        for size in PAGE_SIZES {
            self.iotlb.remove(&(desc, iova & !(size - 1), size));
        }
        insert_bounded(&mut self.iotlb, (desc, iova & !(entry.size - 1), entry.size), entry);
    }

    pub fn device(&self, id: u32) -> Option<DevEntry> {
        self.dev.get(&id).copied()
    }

    pub fn insert_device(&mut self, id: u32, entry: DevEntry) {
        insert_bounded(&mut self.dev, id, entry);
    }

    pub fn pasid(&self, id: u32, pasid: u32) -> Option<u64> {
        self.pasid.get(&(id, pasid)).copied()
    }

    pub fn insert_pasid(&mut self, id: u32, pasid: u32, entry: u64) {
        insert_bounded(&mut self.pasid, (id, pasid), entry);
    }

    pub fn descriptor(&self, addr: u64) -> Option<Descriptor> {
        self.desc.get(&addr).copied()
    }

    pub fn insert_descriptor(&mut self, addr: u64, d: Descriptor) {
        insert_bounded(&mut self.desc, addr, d);
    }

    /// §1 command 1: drops the entries of descriptor `tag` that overlap `[addr, addr+size)`
    /// (`size` 0: all of them). Nested entries whose stage-2 is `tag` are dropped whatever
    /// their IOVA, since the range is in the stage-2 input space and they are tagged by
    /// stage-1 IOVA.
    pub fn invalidate_iotlb_range(&mut self, tag: u64, addr: u64, size: u64) {
        let last = if size == 0 { u64::MAX } else { addr.saturating_add(size - 1) };
        let first = if size == 0 { 0 } else { addr };
        self.iotlb.retain(|&(d, page, psize), e| {
            if e.parent == Some(tag) {
                return false;
            }
            // `page` is `psize`-aligned and below 2^64, so `page + psize - 1` cannot overflow.
            let overlaps = page <= last && first <= page + (psize - 1);
            !(d == tag && overlaps)
        });
    }

    /// §1 command 2.
    pub fn invalidate_iotlb_all(&mut self) {
        self.iotlb.clear();
    }

    /// §1 command 3: the device entry of `id`, its PASID entries, and the descriptors they
    /// point to (with the stage-2 parents of nested ones). The IOTLB is left alone.
    pub fn invalidate_device(&mut self, id: u32) {
        let mut reached = Vec::new();
        if let Some(e) = self.dev.remove(&id) {
            reached.push(e.w0 & ADDR_MASK);
        }
        self.pasid.retain(|&(dev, _), entry| {
            if dev == id {
                reached.push(*entry & ADDR_MASK);
            }
            dev != id
        });
        for addr in reached {
            if let Some(d) = self.desc.remove(&addr) {
                if d[0] & desc::TYPE_MASK == desc::TYPE_NESTED {
                    self.desc.remove(&(d[2] & ADDR_MASK));
                }
            }
        }
    }

    /// §1 command 4.
    pub fn invalidate_all(&mut self) {
        self.iotlb.clear();
        self.dev.clear();
        self.pasid.clear();
        self.desc.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pa: u64, size: u64) -> IotlbEntry {
        IotlbEntry { pa, size, prot: Prot::RW, dirty_done: true, parent: None }
    }

    #[test]
    fn caches_are_bounded() {
        let mut c = Caches::default();
        for i in 0..(CAPACITY as u64 + 100) {
            c.iotlb_insert(0x1000, i << 12, entry(0, 4096));
            c.insert_device(i as u32, DevEntry { w0: 1, w1: 0 });
        }
        assert_eq!(c.stats().iotlb_entries, CAPACITY);
        assert_eq!(c.stats().device_entries, CAPACITY);
    }

    #[test]
    fn range_invalidation_hits_only_overlapping_entries_of_the_tag() {
        let mut c = Caches::default();
        c.iotlb_insert(0x1000, 0x20_0000, entry(0x40_0000, 2 << 20));
        c.iotlb_insert(0x1000, 0x1000, entry(0x9000, 4096));
        c.iotlb_insert(0x2000, 0x1000, entry(0x9000, 4096));
        c.invalidate_iotlb_range(0x1000, 0x3f_f000, 0x1000);
        assert!(c.iotlb_lookup(0x1000, 0x20_1234).is_none());
        assert!(c.iotlb_lookup(0x1000, 0x1000).is_some());
        c.invalidate_iotlb_range(0x1000, u64::MAX - 10, 100);
        assert!(c.iotlb_lookup(0x1000, 0x1000).is_some());
        c.invalidate_iotlb_range(0x1000, 0, 0);
        assert!(c.iotlb_lookup(0x1000, 0x1000).is_none());
        assert!(c.iotlb_lookup(0x2000, 0x1000).is_some());
    }
}
