//! One radix page-table engine for every backend, as Linux's generic_pt: map, unmap, split,
//! translate, dirty read-and-clear and freeing, over table pages that a backend reaches through
//! [`crate::abi::HostServices`].
//!
//! A backend describes its entry encoding with [`Format`] (the bit layout itself stays in the
//! backend's layout module) and its memory access with [`Memory`]; [`PageTable`] does the rest.
//! Tables are 4 KiB pages of 512 little-endian 64-bit entries, 9 index bits per level above a
//! 4 KiB page (VT-d second stage, x86-64, Arm LPAE with the 4 KiB granule, AMD-Vi v1).
//! Levels count from 0 (4 KiB leaves) up to `levels - 1` (the root table).
//!
//! Guarantees:
//! - map uses the largest page that the alignment of IOVA and PA, the length and
//!   [`Geometry::sizes`] allow;
//! - a table page is unlinked as soon as it holds no entry, so a present non-leaf entry always
//!   leads to something mapped; unmap hands the unlinked pages back ([`Freed`]) for the
//!   backend to release after its invalidation, not before;
//! - every operation is all-or-nothing and leaves no table page behind on error (a split that
//!   fails is reverted, a map that fails is rolled back);
//! - unmap and dirty harvest tell the backend which range to invalidate, so that it flushes
//!   its IOTLB once per call;
//! - nothing is allocated on the heap per page: only per new table page (map's undo log) and
//!   per split large page.
//!
//! Callers serialise operations that change one table.

mod host;

pub use host::TABLE_ADDR;

use crate::abi::{ErrorCode, PluginError, Translation};
use crate::{PageSizes, PhysAddr, Prot};

/// Entries in one table page.
pub const ENTRIES: usize = 512;

/// Shift of the index at `level` (0 = 4 KiB pages).
pub const fn shift(level: u32) -> u32 {
    12 + 9 * level
}

/// Bytes covered by one entry at `level`.
pub const fn span(level: u32) -> u64 {
    1u64 << shift(level)
}

/// Byte offset of `iova`'s entry in its table at `level`.
pub const fn offset(iova: u64, level: u32) -> u64 {
    ((iova >> shift(level)) & 0x1ff) * 8
}

/// A backend's entry encoding. Implementations are small and `Copy`; every method is a few
/// bit operations, inlined into the walker.
pub trait Format {
    /// The output-address bits of a table pointer or leaf (4 KiB aligned).
    const ADDR: u64;

    /// The entry is present (it maps something or leads to a table).
    fn present(&self, e: u64) -> bool;
    /// A present entry at `level` is a leaf (level 0 entries always are).
    fn is_leaf(&self, e: u64, level: u32) -> bool;
    /// A non-leaf entry pointing at the table page `table`.
    fn table(&self, table: u64) -> u64;
    /// The table a present non-leaf entry points at.
    fn table_addr(&self, e: u64) -> u64 {
        e & Self::ADDR
    }
    /// The bits every leaf of a mapping with `prot` carries besides its address and its size
    /// bit (permissions, present bit, format-specific bits such as a snoop bit).
    fn leaf_attrs(&self, prot: Prot) -> u64;
    /// A leaf at `level` mapping `pa` with `attrs` (from [`Format::leaf_attrs`] or
    /// [`Format::attrs_of`]).
    fn leaf(&self, attrs: u64, pa: u64, level: u32) -> u64;
    /// The bits of a leaf at `level` that the smaller leaves of its split keep (everything but
    /// the address and the size bit: permissions, accessed and dirty bits, ...).
    fn attrs_of(&self, e: u64, level: u32) -> u64;
    /// The output address of a leaf at `level`.
    fn leaf_addr(&self, e: u64, level: u32) -> u64;
    /// The permissions of a leaf.
    fn leaf_prot(&self, e: u64) -> Prot;
    /// The bit(s) the unit sets in a leaf it writes through (dirty tracking); 0 without.
    fn dirty_bits(&self) -> u64;
    /// The entry holds nothing, so a table made only of such entries is freed. Default: not
    /// present.
    fn vacant(&self, e: u64) -> bool {
        !self.present(e)
    }

    /// Self-test hook (a deliberately broken walker for a conformance suite's self-test; real
    /// formats keep the default): a large leaf may be written at a PA that is not aligned to it.
    fn misaligned_large_leaves(&self) -> bool {
        false
    }
    /// Self-test hook: a failed map's rollback leaks the newest table page it allocated.
    fn leak_on_rollback(&self) -> bool {
        false
    }
    /// Self-test hook: the length an unmap clears, after splitting at the requested range's
    /// ends.
    fn unmap_len(&self, len: u64) -> u64 {
        len
    }
}

/// Table memory, as a backend reaches it through its host services.
pub trait Memory {
    /// Reads one entry.
    fn rd(&self, pa: u64) -> Result<u64, PluginError>;
    /// Writes one entry (one 8-byte store as the unit sees it).
    fn wr(&self, pa: u64, v: u64) -> Result<(), PluginError>;
    /// Clears bits of an entry atomically (the unit may set bits meanwhile); returns the old
    /// value.
    fn and(&self, pa: u64, mask: u64) -> Result<u64, PluginError>;
    /// A whole table page (little-endian entries), read in one host call.
    fn read_table(&self, table: u64, buf: &mut [u8; 4096]) -> Result<(), PluginError>;
    /// A zeroed table page.
    fn alloc(&self) -> Result<u64, PluginError>;
    /// Frees a table page.
    fn free(&self, table: u64);
}

/// The shape of one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Levels, root included.
    pub levels: u32,
    /// Page sizes the unit supports: a level may hold leaves when its span is one of them.
    pub sizes: PageSizes,
    /// Input address width; the aperture is `[0, 2^ias)`.
    pub ias: u8,
}

impl Geometry {
    fn beyond(&self, iova: u64) -> bool {
        self.ias < 64 && iova >> self.ias != 0
    }
}

/// One leaf found by a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The entry's address.
    pub entry_pa: u64,
    /// Its value.
    pub value: u64,
    /// Its level.
    pub level: u32,
    /// Bytes it maps.
    pub span: u64,
}

/// What an unmap did.
#[derive(Debug)]
pub struct Unmapped {
    /// Bytes that were mapped in the range.
    pub bytes: u64,
    /// The range `(iova, len)` whose cached translations the backend must invalidate, if any.
    pub flush: Option<(u64, u64)>,
    /// Table pages the unmap unlinked, to release once that invalidation has completed.
    pub freed: Freed,
}

/// Table pages an unmap unlinked. Until the backend's invalidation completes, the unit may
/// still reach them: through its paging-structure caches, or in a walk it began before the
/// unlink. Freed at once, a page could be handed to another table and the unit would
/// translate through that table's entries (Linux frees such pages only after the IOTLB sync,
/// for the same reason). [`Freed::release`] them after the invalidation; pages dropped
/// unreleased are leaked, never reused under the unit.
#[must_use = "release the pages once the invalidation has completed"]
#[derive(Debug, Default)]
pub struct Freed(Vec<u64>);

impl Freed {
    /// Returns the pages to the host.
    pub fn release(self, mem: &impl Memory) {
        for page in self.0 {
            mem.free(page);
        }
    }

    /// How many pages there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a map did, so that it can be undone.
#[derive(Default)]
struct MapUndo {
    /// Bytes mapped from the start of the request, in address order.
    done: u64,
    /// Tables allocated: (parent entry, table), in allocation order.
    tables: Vec<(u64, u64)>,
}

/// A split that can be reverted: (parent entry, old leaf value, new table).
type SplitRecord = (u64, u64, u64);

/// A page table rooted at one page.
pub struct PageTable<F> {
    /// Root table page.
    pub root: u64,
    /// Its shape.
    pub geometry: Geometry,
    /// Its entry encoding.
    pub format: F,
}

impl<F: Format> PageTable<F> {
    /// A table with a freshly allocated root.
    pub fn new(mem: &impl Memory, geometry: Geometry, format: F) -> Result<Self, PluginError> {
        Ok(Self { root: mem.alloc()?, geometry, format })
    }

    fn top(&self) -> u32 {
        self.geometry.levels - 1
    }

    fn check_range(&self, iova: u64, len: u64) -> Result<(), PluginError> {
        let end = iova.checked_add(len).ok_or_else(|| PluginError::invalid("range wraps around"))?;
        if len == 0 || iova % 4096 != 0 || len % 4096 != 0 {
            return Err(PluginError::invalid(format!("range {iova:#x}+{len:#x} is not 4 KiB granular")));
        }
        let ias = self.geometry.ias;
        if ias < 64 && end > (1u64 << ias) {
            return Err(PluginError::new(
                ErrorCode::OUT_OF_RANGE,
                format!("range ends at {end:#x}, beyond the {ias}-bit input space"),
            ));
        }
        Ok(())
    }

    /// Maps `[iova, iova+len)` to `pa` with the largest pages alignment allows. All or nothing.
    pub fn map(&self, mem: &impl Memory, iova: u64, pa: u64, len: u64, prot: Prot) -> Result<(), PluginError> {
        self.check_range(iova, len)?;
        if pa % 4096 != 0 || pa.checked_add(len).is_none_or(|e| e > F::ADDR + 4096) {
            return Err(PluginError::invalid(format!("physical address {pa:#x} is not mappable")));
        }
        if prot.is_none() {
            return Err(PluginError::invalid("a mapping needs read or write permission"));
        }
        let mut undo = MapUndo::default();
        let attrs = self.format.leaf_attrs(prot);
        match self.map_in(mem, self.root, self.top(), iova, pa, len, attrs, &mut undo) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.undo_map(mem, iova, &undo);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn map_in(
        &self,
        mem: &impl Memory,
        table: u64,
        level: u32,
        iova: u64,
        pa: u64,
        len: u64,
        attrs: u64,
        undo: &mut MapUndo,
    ) -> Result<(), PluginError> {
        let f = &self.format;
        let span = span(level);
        for (va, entry_pa, chunk) in slots(table, level, iova, len) {
            let p = pa + (va - iova);
            let e = mem.rd(entry_pa)?;
            let present = f.present(e);
            if level == 0 {
                if present {
                    return Err(exists(va));
                }
                mem.wr(entry_pa, f.leaf(attrs, p, 0))?;
                undo.done += span;
            } else if !present
                && chunk == span
                && (p & (span - 1) == 0 || f.misaligned_large_leaves())
                && self.geometry.sizes.contains(span)
            {
                mem.wr(entry_pa, f.leaf(attrs, p, level))?;
                undo.done += span;
            } else {
                if present && f.is_leaf(e, level) {
                    return Err(exists(va));
                }
                let child = if present {
                    f.table_addr(e)
                } else {
                    let t = mem.alloc()?;
                    undo.tables.push((entry_pa, t));
                    mem.wr(entry_pa, f.table(t))?;
                    t
                };
                self.map_in(mem, child, level - 1, va, p, chunk, attrs, undo)?;
            }
        }
        Ok(())
    }

    fn undo_map(&self, mem: &impl Memory, iova: u64, undo: &MapUndo) {
        if undo.done > 0 {
            // Leaves we wrote are aligned to themselves: clearing them needs no split.
            let _ = self.clear_leaves(mem, self.root, self.top(), iova, undo.done);
        }
        let leak = usize::from(self.format.leak_on_rollback());
        for &(parent, table) in undo.tables.iter().rev().skip(leak) {
            let _ = mem.wr(parent, 0);
            mem.free(table);
        }
    }

    fn clear_leaves(&self, mem: &impl Memory, table: u64, level: u32, iova: u64, len: u64) -> Result<(), PluginError> {
        let f = &self.format;
        for (va, entry_pa, chunk) in slots(table, level, iova, len) {
            let e = mem.rd(entry_pa)?;
            if f.present(e) {
                if f.is_leaf(e, level) {
                    mem.wr(entry_pa, 0)?;
                } else {
                    self.clear_leaves(mem, f.table_addr(e), level - 1, va, chunk)?;
                }
            }
        }
        Ok(())
    }

    /// Splits every large leaf that straddles `iova` into leaves of identical translations, so
    /// that `iova` becomes a leaf boundary. All or nothing; never changes a translation.
    pub fn split(&self, mem: &impl Memory, iova: u64) -> Result<(), PluginError> {
        let mut log = Vec::new();
        self.split_at(mem, iova, &mut log).inspect_err(|_| self.revert_splits(mem, &log))
    }

    /// [`PageTable::split`] that records what it did in `log`; on error, what it did so far
    /// stays in `log` for [`PageTable::revert_splits`].
    fn split_at(&self, mem: &impl Memory, iova: u64, log: &mut Vec<SplitRecord>) -> Result<(), PluginError> {
        if self.geometry.beyond(iova) {
            return Ok(());
        }
        let f = &self.format;
        let mut table = self.root;
        for level in (1..=self.top()).rev() {
            let entry_pa = table + offset(iova, level);
            let e = mem.rd(entry_pa)?;
            if !f.present(e) || (iova & (span(level) - 1) == 0 && f.is_leaf(e, level)) {
                return Ok(());
            }
            if f.is_leaf(e, level) {
                let t = mem.alloc()?;
                let child_span = span(level - 1);
                let attrs = f.attrs_of(e, level);
                let base = f.leaf_addr(e, level);
                for i in 0..ENTRIES as u64 {
                    mem.wr(t + i * 8, f.leaf(attrs, base + i * child_span, level - 1))?;
                }
                // One 8-byte store swaps the large leaf for a table of identical translations.
                mem.wr(entry_pa, f.table(t))?;
                log.push((entry_pa, e, t));
                table = t;
            } else {
                table = f.table_addr(e);
            }
        }
        Ok(())
    }

    /// Undoes splits (newest first): the large leaf comes back, the table page is freed.
    fn revert_splits(&self, mem: &impl Memory, log: &[SplitRecord]) {
        for &(entry_pa, old, table) in log.iter().rev() {
            let _ = mem.wr(entry_pa, old);
            mem.free(table);
        }
    }

    /// Unmaps `[iova, iova+len)`, splitting large pages at its ends. Returns the bytes that
    /// were mapped and the range to invalidate. All or nothing.
    pub fn unmap(&self, mem: &impl Memory, iova: u64, len: u64) -> Result<Unmapped, PluginError> {
        self.check_range(iova, len)?;
        let mut log = Vec::new();
        let split = self.split_at(mem, iova, &mut log).and_then(|()| self.split_at(mem, iova + len, &mut log));
        if let Err(e) = split {
            self.revert_splits(mem, &log);
            return Err(e);
        }
        let mut freed = Freed::default();
        let (bytes, _) = self.unmap_in(mem, self.root, self.top(), iova, self.format.unmap_len(len), &mut freed)?;
        Ok(Unmapped { bytes, flush: (bytes > 0).then_some((iova, len)), freed })
    }

    /// Clears leaves inside the range (which no leaf straddles) and unlinks tables left empty
    /// into `freed`. Returns (bytes unmapped, table now empty).
    fn unmap_in(
        &self,
        mem: &impl Memory,
        table: u64,
        level: u32,
        iova: u64,
        len: u64,
        freed: &mut Freed,
    ) -> Result<(u64, bool), PluginError> {
        let f = &self.format;
        let span = span(level);
        let mut bytes = 0u64;
        let mut cleared = false;
        for (va, entry_pa, chunk) in slots(table, level, iova, len) {
            let e = mem.rd(entry_pa)?;
            if f.present(e) {
                if f.is_leaf(e, level) {
                    mem.wr(entry_pa, 0)?;
                    bytes += span;
                    cleared = true;
                } else {
                    let child = f.table_addr(e);
                    let (b, empty) = self.unmap_in(mem, child, level - 1, va, chunk, freed)?;
                    bytes += b;
                    if empty {
                        mem.wr(entry_pa, 0)?;
                        freed.0.push(child);
                        cleared = true;
                    }
                }
            }
        }
        let empty = cleared && level < self.top() && self.vacant(mem, table)?;
        Ok((bytes, empty))
    }

    /// The table page holds nothing.
    fn vacant(&self, mem: &impl Memory, table: u64) -> Result<bool, PluginError> {
        let mut buf = [0u8; 4096];
        mem.read_table(table, &mut buf)?;
        let vacant = entries(&buf).all(|e| self.format.vacant(e));
        Ok(vacant)
    }

    /// The leaf that maps `iova`, if any.
    pub fn walk(&self, mem: &impl Memory, iova: u64) -> Result<Option<Leaf>, PluginError> {
        if self.geometry.beyond(iova) {
            return Ok(None);
        }
        let f = &self.format;
        let mut table = self.root;
        for level in (0..=self.top()).rev() {
            let entry_pa = table + offset(iova, level);
            let e = mem.rd(entry_pa)?;
            if !f.present(e) {
                return Ok(None);
            }
            if f.is_leaf(e, level) {
                return Ok(Some(Leaf { entry_pa, value: e, level, span: span(level) }));
            }
            table = f.table_addr(e);
        }
        Ok(None)
    }

    /// The translation of `iova`: (output address, permissions, page size), if mapped.
    pub fn translate(&self, mem: &impl Memory, iova: u64) -> Result<Option<(u64, Prot, u64)>, PluginError> {
        let f = &self.format;
        Ok(self.walk(mem, iova)?.map(|l| {
            let base = f.leaf_addr(l.value, l.level) & !(l.span - 1);
            (base + (iova & (l.span - 1)), f.leaf_prot(l.value), l.span)
        }))
    }

    /// [`translate`](Self::translate) as a HWPT's answer to `translate`: `None` when `iova`
    /// is unmapped or its walk fails.
    pub fn translation(&self, mem: &impl Memory, iova: u64) -> Option<Translation> {
        let (pa, prot, page_size) = self.translate(mem, iova).ok()??;
        Some(Translation { pa: PhysAddr(pa), prot, page_size })
    }

    /// Calls `f` for every leaf overlapping `[iova, iova+len)`, with the leaf's first address.
    pub fn for_each_leaf(
        &self,
        mem: &impl Memory,
        iova: u64,
        len: u64,
        f: &mut dyn FnMut(u64, Leaf) -> Result<(), PluginError>,
    ) -> Result<(), PluginError> {
        self.check_range(iova, len)?;
        self.leaves_in(mem, self.root, self.top(), iova, len, f)
    }

    fn leaves_in(
        &self,
        mem: &impl Memory,
        table: u64,
        level: u32,
        iova: u64,
        len: u64,
        f: &mut dyn FnMut(u64, Leaf) -> Result<(), PluginError>,
    ) -> Result<(), PluginError> {
        let fmt = &self.format;
        let span = span(level);
        for (va, entry_pa, chunk) in slots(table, level, iova, len) {
            let e = mem.rd(entry_pa)?;
            if fmt.present(e) {
                if fmt.is_leaf(e, level) {
                    f(va & !(span - 1), Leaf { entry_pa, value: e, level, span })?;
                } else {
                    self.leaves_in(mem, fmt.table_addr(e), level - 1, va, chunk, f)?;
                }
            }
        }
        Ok(())
    }

    /// Reads the dirty bits of the leaves in `[iova, iova+len)` into `bitmap`, one bit per
    /// `2^page_shift` bytes from `iova`; a dirty large leaf marks every page it covers. Unless
    /// `keep`, clears them atomically (the unit may set other bits meanwhile). Returns the range
    /// to invalidate, if any bit was cleared: cached translations would not set them again.
    pub fn read_and_clear_dirty(
        &self,
        mem: &impl Memory,
        iova: u64,
        len: u64,
        page_shift: u8,
        bitmap: &mut [u64],
        keep: bool,
    ) -> Result<Option<(u64, u64)>, PluginError> {
        if !(12..=30).contains(&page_shift) {
            return Err(PluginError::invalid(format!("page shift {page_shift} out of 12..=30")));
        }
        let page = 1u64 << page_shift;
        let pages = len / page;
        if len % page != 0 || iova % page != 0 || (bitmap.len() as u64) * 64 < pages {
            return Err(PluginError::invalid("range or bitmap does not fit the page size"));
        }
        let d = self.format.dirty_bits();
        let mut any = false;
        self.for_each_leaf(mem, iova, len, &mut |leaf_va, leaf| {
            if leaf.value & d == 0 {
                return Ok(());
            }
            if !keep {
                mem.and(leaf.entry_pa, !d)?;
                any = true;
            }
            let first = leaf_va.max(iova);
            let last = (leaf_va + leaf.span).min(iova + len);
            let mut a = first & !(page - 1);
            while a < last {
                let bit = (a - iova) / page;
                if let Some(w) = bitmap.get_mut((bit / 64) as usize) {
                    *w |= 1 << (bit % 64);
                }
                a += page;
            }
            Ok(())
        })?;
        Ok(any.then_some((iova, len)))
    }

    /// Table pages in the tree (root included).
    pub fn count_pages(&self, mem: &impl Memory) -> Result<u64, PluginError> {
        self.count_in(mem, self.root, self.top())
    }

    fn count_in(&self, mem: &impl Memory, table: u64, level: u32) -> Result<u64, PluginError> {
        let mut n = 1;
        if level == 0 {
            return Ok(n);
        }
        let mut buf = [0u8; 4096];
        mem.read_table(table, &mut buf)?;
        for e in entries(&buf) {
            if self.format.present(e) && !self.format.is_leaf(e, level) {
                n += self.count_in(mem, self.format.table_addr(e), level - 1)?;
            }
        }
        Ok(n)
    }

    /// Frees every table page, root included.
    pub fn destroy(&self, mem: &impl Memory) {
        self.free_in(mem, self.root, self.top());
    }

    fn free_in(&self, mem: &impl Memory, table: u64, level: u32) {
        if level > 0 {
            let mut buf = [0u8; 4096];
            if mem.read_table(table, &mut buf).is_err() {
                buf = [0; 4096];
            }
            for e in entries(&buf) {
                if self.format.present(e) && !self.format.is_leaf(e, level) {
                    self.free_in(mem, self.format.table_addr(e), level - 1);
                }
            }
        }
        mem.free(table);
    }
}

/// The entries of one table at `level` that `[iova, iova+len)` touches: (first address, entry
/// address, bytes of the range under that entry), in address order.
fn slots(table: u64, level: u32, iova: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let span = span(level);
    let mut off = 0u64;
    std::iter::from_fn(move || {
        (off < len).then(|| {
            let va = iova + off;
            let chunk = (len - off).min(span - (va & (span - 1)));
            off += chunk;
            (va, table + offset(va, level), chunk)
        })
    })
}

/// The entries of a table page read with [`Memory::read_table`].
fn entries(buf: &[u8; 4096]) -> impl Iterator<Item = u64> + '_ {
    buf.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
}

fn exists(va: u64) -> PluginError {
    PluginError::new(ErrorCode::EXISTS, format!("IOVA {va:#x} is already mapped"))
}

#[cfg(test)]
mod tests;
