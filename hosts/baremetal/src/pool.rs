//! The table-page pool: a range of RAM handed out 4 KiB at a time for hardware tables.
//!
//! The pool only does the bookkeeping (which pages are in use); the [`crate::Machine`] zeroes a
//! page in RAM before handing it out. Allocation and free are O(1): fresh pages come from a
//! high-water mark, freed pages from a stack, and a bitmap catches double and foreign frees.

use std::sync::Mutex;

use ioasis::abi::HostError;
use ioasis::{PhysAddr, PAGE_SIZE};

/// A pool of 4 KiB pages in `[base, base + pages * 4 KiB)`.
#[derive(Debug)]
pub struct TablePool {
    base: u64,
    pages: u64,
    inner: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    /// Pages freed since they were first handed out, reused first (LIFO, cache friendly).
    recycled: Vec<u64>,
    /// Pages at or above this index were never handed out.
    fresh: u64,
    /// One bit per page: allocated.
    bitmap: Vec<u64>,
    /// Pages allocated now.
    allocated: u64,
}

impl PoolState {
    fn is_set(&self, idx: u64) -> bool {
        let word = usize::try_from(idx / 64).ok().and_then(|w| self.bitmap.get(w));
        word.is_some_and(|w| w & (1 << (idx % 64)) != 0)
    }
    fn set(&mut self, idx: u64, on: bool) {
        if let Some(w) = usize::try_from(idx / 64).ok().and_then(|w| self.bitmap.get_mut(w)) {
            if on {
                *w |= 1 << (idx % 64);
            } else {
                *w &= !(1 << (idx % 64));
            }
        }
    }
}

impl TablePool {
    /// A pool of `pages` pages starting at `base` (4 KiB aligned; the caller checked that the
    /// range is RAM).
    pub fn new(base: PhysAddr, pages: u64) -> Self {
        let words = usize::try_from(pages.div_ceil(64)).unwrap_or(0);
        Self {
            base: base.raw(),
            pages,
            inner: Mutex::new(PoolState { recycled: Vec::new(), fresh: 0, bitmap: vec![0; words], allocated: 0 }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A panic while holding the lock cannot leave the state inconsistent (every update is
        // a few plain assignments), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// First address of the pool.
    pub fn base(&self) -> PhysAddr {
        PhysAddr(self.base)
    }

    /// Pages in the pool.
    pub fn capacity(&self) -> u64 {
        self.pages
    }

    /// Pages allocated now.
    pub fn allocated(&self) -> u64 {
        self.state().allocated
    }

    /// Takes a page (not zeroed: the caller does that), or [`HostError::NO_MEMORY`].
    pub fn alloc(&self) -> Result<PhysAddr, HostError> {
        let mut st = self.state();
        let idx = match st.recycled.pop() {
            Some(idx) => idx,
            None if st.fresh < self.pages => {
                st.fresh += 1;
                st.fresh - 1
            }
            None => return Err(HostError::new(HostError::NO_MEMORY, 0)),
        };
        st.set(idx, true);
        st.allocated += 1;
        Ok(PhysAddr(self.base + idx * PAGE_SIZE))
    }

    /// Takes `count` contiguous pages (not zeroed), or [`HostError::NO_MEMORY`]. Fresh pages
    /// first; otherwise the lowest run of free pages (a scan: runs are rare, e.g. a VT-d PASID
    /// directory).
    pub fn alloc_run(&self, count: u64) -> Result<PhysAddr, HostError> {
        let none = HostError::new(HostError::NO_MEMORY, 0);
        if count <= 1 {
            return if count == 1 { self.alloc() } else { Err(none) };
        }
        let mut st = self.state();
        let start = if st.fresh.checked_add(count).is_some_and(|end| end <= self.pages) {
            st.fresh += count;
            st.fresh - count
        } else {
            let mut run = 0;
            let mut found = None;
            for idx in 0..st.fresh {
                run = if st.is_set(idx) { 0 } else { run + 1 };
                if run == count {
                    found = Some(idx + 1 - count);
                    break;
                }
            }
            let start = found.ok_or(none)?;
            st.recycled.retain(|i| *i < start || *i >= start + count);
            start
        };
        for idx in start..start + count {
            st.set(idx, true);
        }
        st.allocated += count;
        Ok(PhysAddr(self.base + start * PAGE_SIZE))
    }

    /// Gives back a run from [`TablePool::alloc_run`]; refused as a whole (nothing freed) when
    /// any of its pages is not allocated.
    pub fn free_run(&self, first: PhysAddr, count: u64) -> Result<(), HostError> {
        let not_allocated = HostError::new(HostError::NOT_ALLOCATED, first.raw());
        let off = first.raw().checked_sub(self.base).ok_or(not_allocated)?;
        let end = (off / PAGE_SIZE).checked_add(count).ok_or(not_allocated)?;
        if off % PAGE_SIZE != 0 || count == 0 || end > self.pages {
            return Err(not_allocated);
        }
        let mut st = self.state();
        if (off / PAGE_SIZE..end).any(|i| !st.is_set(i)) {
            return Err(not_allocated);
        }
        for idx in off / PAGE_SIZE..end {
            st.set(idx, false);
            st.recycled.push(idx);
        }
        st.allocated -= count;
        Ok(())
    }

    /// Gives back a page from [`TablePool::alloc`]; a page that is not allocated from this pool
    /// (double free, foreign or misaligned address) is [`HostError::NOT_ALLOCATED`].
    pub fn free(&self, page: PhysAddr) -> Result<(), HostError> {
        let not_allocated = HostError::new(HostError::NOT_ALLOCATED, page.raw());
        let off = page.raw().checked_sub(self.base).ok_or(not_allocated)?;
        if off % PAGE_SIZE != 0 || off / PAGE_SIZE >= self.pages {
            return Err(not_allocated);
        }
        let idx = off / PAGE_SIZE;
        let mut st = self.state();
        if !st.is_set(idx) {
            return Err(not_allocated);
        }
        st.set(idx, false);
        st.allocated -= 1;
        st.recycled.push(idx);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_free_and_count() {
        let pool = TablePool::new(PhysAddr(0x10_0000), 3);
        let a = pool.alloc().unwrap();
        let b = pool.alloc().unwrap();
        let c = pool.alloc().unwrap();
        assert_eq!([a.raw(), b.raw(), c.raw()], [0x10_0000, 0x10_1000, 0x10_2000]);
        assert_eq!(pool.allocated(), 3);
        assert_eq!(pool.alloc().unwrap_err().code, HostError::NO_MEMORY);
        pool.free(b).unwrap();
        assert_eq!(pool.allocated(), 2);
        assert_eq!(pool.alloc().unwrap(), b);
        assert_eq!(pool.capacity(), 3);
    }

    #[test]
    fn bad_frees_are_refused() {
        let pool = TablePool::new(PhysAddr(0x10_0000), 130);
        let a = pool.alloc().unwrap();
        pool.free(a).unwrap();
        let code = |r: Result<(), HostError>| r.unwrap_err().code;
        assert_eq!(code(pool.free(a)), HostError::NOT_ALLOCATED);
        assert_eq!(code(pool.free(PhysAddr(0))), HostError::NOT_ALLOCATED);
        assert_eq!(code(pool.free(PhysAddr(0x10_0800))), HostError::NOT_ALLOCATED);
        assert_eq!(code(pool.free(PhysAddr(0x10_0000 + 130 * PAGE_SIZE))), HostError::NOT_ALLOCATED);
        assert_eq!(code(pool.free(PhysAddr(u64::MAX))), HostError::NOT_ALLOCATED);
        // Never-allocated page inside the pool.
        assert_eq!(code(pool.free(PhysAddr(0x10_0000 + 129 * PAGE_SIZE))), HostError::NOT_ALLOCATED);
        assert_eq!(pool.allocated(), 0);
    }

    #[test]
    fn runs_are_contiguous_and_reuse_freed_space() {
        let pool = TablePool::new(PhysAddr(0x10_0000), 8);
        let a = pool.alloc().unwrap();
        let run = pool.alloc_run(4).unwrap();
        assert_eq!(run, PhysAddr(0x10_1000));
        assert_eq!(pool.allocated(), 5);
        // Only 3 fresh pages are left: a run of 4 must come from freed space.
        assert_eq!(pool.alloc_run(4).unwrap_err().code, HostError::NO_MEMORY);
        pool.free_run(run, 4).unwrap();
        assert_eq!(pool.free_run(run, 4).unwrap_err().code, HostError::NOT_ALLOCATED);
        assert_eq!(pool.alloc_run(4).unwrap(), run, "the freed run is found again");
        // A single page never comes from inside a live run.
        let b = pool.alloc().unwrap();
        assert!(b.raw() >= 0x10_5000, "{b:?}");
        pool.free(a).unwrap();
        assert_eq!(pool.free_run(PhysAddr(0x10_0000), 2).unwrap_err().code, HostError::NOT_ALLOCATED);
        assert_eq!(pool.allocated(), 5);
    }

    #[test]
    fn every_page_is_handed_out_once() {
        let pool = TablePool::new(PhysAddr(0), 200);
        let mut seen: Vec<u64> = (0..200).map(|_| pool.alloc().unwrap().raw()).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 200);
        assert!(pool.alloc().is_err());
    }
}
