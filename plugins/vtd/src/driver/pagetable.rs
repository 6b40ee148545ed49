//! Second-stage (second-level) page tables (VT-d spec 9.8, 3.7): map, unmap, split, walk,
//! dirty harvest.
//!
//! Levels count from 1 (4 KiB leaves) up to 3 (39-bit) or 4 (48-bit). An entry is present when
//! R or W is set; non-leaf entries carry R|W so that their subtree's permissions decide. A
//! 2 MiB or 1 GiB leaf has PS (bit 7) at level 2 or 3, where CAP.SLLPS allows.
//!
//! Invariants (as in the mock's reference tables): a table page is freed as soon as it holds no
//! entry; every operation is all-or-nothing and leaves no table page behind on error. Callers
//! serialise operations on one table.

use ioasis::abi::{ErrorCode, PluginError};
use ioasis::{PageSizes, Prot};

use super::io::Io;
use crate::layout::tables::{sl, ADDR};

/// A second-stage page table rooted at one page.
pub struct PageTable {
    /// Root table page (SLPTPTR / SSPTPTR).
    pub root: u64,
    /// Levels: 3 or 4.
    pub levels: u32,
    /// Page sizes the unit supports (4K + CAP.SLLPS).
    pub sizes: PageSizes,
    /// Input address width (the aperture), at most `12 + 9 * levels`.
    pub ias: u8,
    /// Extra leaf bits (SNP, bit 11, for enforced coherency with ECAP.SC).
    pub leaf_extra: u64,
}

/// One leaf found by a walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The entry's address.
    pub entry_pa: u64,
    /// Its value.
    pub value: u64,
    /// Bytes it maps.
    pub span: u64,
}

#[derive(Default)]
struct MapUndo {
    /// Bytes mapped from the start of the request, in address order.
    done: u64,
    /// Tables allocated: (parent entry, table), in allocation order.
    tables: Vec<(u64, u64)>,
}

/// A split that can be reverted: (parent entry, old leaf value, new table).
pub type SplitRecord = (u64, u64, u64);

/// Non-leaf entries: R|W and the next table (9.8).
const TABLE_BITS: u64 = sl::R | sl::W;

fn is_leaf(e: u64, level: u32) -> bool {
    level == 1 || e & sl::PS != 0
}

fn offset(iova: u64, level: u32) -> u64 {
    sl::index(iova, level) * 8
}

/// The permission bits of a leaf.
pub fn leaf_prot(e: u64) -> Prot {
    let mut p = Prot::NONE;
    if e & sl::R != 0 {
        p = p | Prot::READ;
    }
    if e & sl::W != 0 {
        p = p | Prot::WRITE;
    }
    p
}

/// The output address of a leaf at `span`.
pub fn leaf_addr(e: u64, span: u64) -> u64 {
    e & ADDR & !(span - 1)
}

impl PageTable {
    /// A table with a freshly allocated root.
    pub fn new(io: &Io, levels: u32, sizes: PageSizes, ias: u8, leaf_extra: u64) -> Result<Self, PluginError> {
        Ok(Self { root: io.alloc()?, levels, sizes, ias, leaf_extra })
    }

    fn check_range(&self, iova: u64, len: u64) -> Result<(), PluginError> {
        let end = iova.checked_add(len).ok_or_else(|| PluginError::invalid("range wraps around"))?;
        if len == 0 || iova % 4096 != 0 || len % 4096 != 0 {
            return Err(PluginError::invalid(format!("range {iova:#x}+{len:#x} is not 4 KiB granular")));
        }
        if end > (1u64 << self.ias) {
            return Err(PluginError::new(
                ErrorCode::OUT_OF_RANGE,
                format!("range ends at {end:#x}, beyond the {}-bit input space", self.ias),
            ));
        }
        Ok(())
    }

    fn leaf_bits(&self, prot: Prot) -> u64 {
        let mut v = self.leaf_extra;
        if prot.read() {
            v |= sl::R;
        }
        if prot.write() {
            v |= sl::W;
        }
        v
    }

    /// Maps `[iova, iova+len)` to `pa` with the largest pages alignment allows. All or nothing.
    pub fn map(&self, io: &Io, iova: u64, pa: u64, len: u64, prot: Prot) -> Result<(), PluginError> {
        self.check_range(iova, len)?;
        if pa % 4096 != 0 || pa.checked_add(len).is_none_or(|e| e > ADDR + 4096) {
            return Err(PluginError::invalid(format!("physical address {pa:#x} is not mappable")));
        }
        if prot.is_none() {
            return Err(PluginError::invalid("a mapping needs read or write permission"));
        }
        let mut undo = MapUndo::default();
        match self.map_in(io, self.root, self.levels, iova, pa, len, self.leaf_bits(prot), &mut undo) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.undo_map(io, iova, &undo);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn map_in(
        &self,
        io: &Io,
        table: u64,
        level: u32,
        iova: u64,
        pa: u64,
        len: u64,
        bits: u64,
        undo: &mut MapUndo,
    ) -> Result<(), PluginError> {
        let span = sl::span(level);
        for (va, entry_pa, chunk) in slots(table, level, iova, len) {
            let p = pa + (va - iova);
            let e = io.rd(entry_pa)?;
            let present = sl::present(e);
            if level == 1 {
                if present {
                    return Err(exists(va));
                }
                io.wr(entry_pa, bits | p)?;
                undo.done += span;
            } else if !present && chunk == span && p & (span - 1) == 0 && self.sizes.contains(span) {
                io.wr(entry_pa, bits | sl::PS | p)?;
                undo.done += span;
            } else {
                if present && is_leaf(e, level) {
                    return Err(exists(va));
                }
                let child = if present {
                    e & ADDR
                } else {
                    let t = io.alloc()?;
                    undo.tables.push((entry_pa, t));
                    io.wr(entry_pa, TABLE_BITS | t)?;
                    t
                };
                self.map_in(io, child, level - 1, va, p, chunk, bits, undo)?;
            }
        }
        Ok(())
    }

    fn undo_map(&self, io: &Io, iova: u64, undo: &MapUndo) {
        if undo.done > 0 {
            // Leaves we wrote are aligned to themselves: clearing them needs no split.
            let _ = self.clear_leaves(io, self.root, self.levels, iova, undo.done);
        }
        for &(parent, table) in undo.tables.iter().rev() {
            let _ = io.wr(parent, 0);
            io.free(table);
        }
    }

    fn clear_leaves(&self, io: &Io, table: u64, level: u32, iova: u64, len: u64) -> Result<(), PluginError> {
        for (va, entry_pa, chunk) in slots(table, level, iova, len) {
            let e = io.rd(entry_pa)?;
            if sl::present(e) {
                if is_leaf(e, level) {
                    io.wr(entry_pa, 0)?;
                } else {
                    self.clear_leaves(io, e & ADDR, level - 1, va, chunk)?;
                }
            }
        }
        Ok(())
    }

    /// Splits every large leaf that straddles `iova`, so that `iova` becomes a leaf boundary.
    /// Records what it did in `log`; on error, what it did so far stays in `log` for
    /// [`PageTable::revert_splits`].
    pub fn split_at(&self, io: &Io, iova: u64, log: &mut Vec<SplitRecord>) -> Result<(), PluginError> {
        if iova >> self.ias != 0 {
            return Ok(());
        }
        let mut table = self.root;
        for level in (2..=self.levels).rev() {
            let span = sl::span(level);
            let entry_pa = table + offset(iova, level);
            let e = io.rd(entry_pa)?;
            if !sl::present(e) || (iova & (span - 1) == 0 && is_leaf(e, level)) {
                return Ok(());
            }
            if is_leaf(e, level) {
                let t = io.alloc()?;
                let child_span = sl::span(level - 1);
                let keep = e & !(ADDR | sl::PS);
                let ps = if level - 1 > 1 { sl::PS } else { 0 };
                let base = leaf_addr(e, span);
                for i in 0..512u64 {
                    io.wr(t + i * 8, keep | ps | (base + i * child_span))?;
                }
                // One 8-byte store swaps the large leaf for a table of identical translations.
                io.wr(entry_pa, TABLE_BITS | t)?;
                log.push((entry_pa, e, t));
                table = t;
            } else {
                table = e & ADDR;
            }
        }
        Ok(())
    }

    /// Undoes splits (newest first): the large leaf comes back, the table page is freed.
    pub fn revert_splits(&self, io: &Io, log: &[SplitRecord]) {
        for &(entry_pa, old, table) in log.iter().rev() {
            let _ = io.wr(entry_pa, old);
            io.free(table);
        }
    }

    /// Unmaps `[iova, iova+len)`, splitting large pages at its ends. Returns the bytes that
    /// were mapped. All or nothing.
    pub fn unmap(&self, io: &Io, iova: u64, len: u64) -> Result<u64, PluginError> {
        self.check_range(iova, len)?;
        let mut log = Vec::new();
        let split = self.split_at(io, iova, &mut log).and_then(|()| self.split_at(io, iova + len, &mut log));
        if let Err(e) = split {
            self.revert_splits(io, &log);
            return Err(e);
        }
        let (bytes, _) = self.unmap_in(io, self.root, self.levels, iova, len)?;
        Ok(bytes)
    }

    /// Clears leaves inside the range (which no leaf straddles) and frees tables left empty.
    /// Returns (bytes unmapped, table now empty).
    fn unmap_in(&self, io: &Io, table: u64, level: u32, iova: u64, len: u64) -> Result<(u64, bool), PluginError> {
        let span = sl::span(level);
        let mut bytes = 0u64;
        let mut cleared = false;
        for (va, entry_pa, chunk) in slots(table, level, iova, len) {
            let e = io.rd(entry_pa)?;
            if sl::present(e) {
                if is_leaf(e, level) {
                    io.wr(entry_pa, 0)?;
                    bytes += span;
                    cleared = true;
                } else {
                    let child = e & ADDR;
                    let (b, empty) = self.unmap_in(io, child, level - 1, va, chunk)?;
                    bytes += b;
                    if empty {
                        io.wr(entry_pa, 0)?;
                        io.free(child);
                        cleared = true;
                    }
                }
            }
        }
        let empty = cleared && level < self.levels && io.entries(table)?.iter().all(|e| !sl::present(*e));
        Ok((bytes, empty))
    }

    /// The leaf that maps `iova`, if any.
    pub fn walk(&self, io: &Io, iova: u64) -> Result<Option<Leaf>, PluginError> {
        if iova >> self.ias != 0 {
            return Ok(None);
        }
        let mut table = self.root;
        for level in (1..=self.levels).rev() {
            let entry_pa = table + offset(iova, level);
            let e = io.rd(entry_pa)?;
            if !sl::present(e) {
                return Ok(None);
            }
            if is_leaf(e, level) {
                return Ok(Some(Leaf { entry_pa, value: e, span: sl::span(level) }));
            }
            table = e & ADDR;
        }
        Ok(None)
    }

    /// Calls `f` for every leaf overlapping `[iova, iova+len)`, with the leaf's first address.
    pub fn for_each_leaf(
        &self,
        io: &Io,
        iova: u64,
        len: u64,
        f: &mut dyn FnMut(u64, Leaf) -> Result<(), PluginError>,
    ) -> Result<(), PluginError> {
        self.check_range(iova, len)?;
        self.leaves_in(io, self.root, self.levels, iova, len, f)
    }

    fn leaves_in(
        &self,
        io: &Io,
        table: u64,
        level: u32,
        iova: u64,
        len: u64,
        f: &mut dyn FnMut(u64, Leaf) -> Result<(), PluginError>,
    ) -> Result<(), PluginError> {
        let span = sl::span(level);
        for (va, entry_pa, chunk) in slots(table, level, iova, len) {
            let e = io.rd(entry_pa)?;
            if sl::present(e) {
                if is_leaf(e, level) {
                    f(va & !(span - 1), Leaf { entry_pa, value: e, span })?;
                } else {
                    self.leaves_in(io, e & ADDR, level - 1, va, chunk, f)?;
                }
            }
        }
        Ok(())
    }

    /// Table pages in the tree (root included).
    pub fn count_pages(&self, io: &Io) -> Result<u64, PluginError> {
        self.count_in(io, self.root, self.levels)
    }

    fn count_in(&self, io: &Io, table: u64, level: u32) -> Result<u64, PluginError> {
        let mut n = 1;
        if level == 1 {
            return Ok(n);
        }
        for e in io.entries(table)? {
            if sl::present(e) && !is_leaf(e, level) {
                n += self.count_in(io, e & ADDR, level - 1)?;
            }
        }
        Ok(n)
    }

    /// Frees every table page, root included.
    pub fn destroy(&self, io: &Io) {
        self.free_in(io, self.root, self.levels);
    }

    fn free_in(&self, io: &Io, table: u64, level: u32) {
        if level > 1 {
            for e in io.entries(table).unwrap_or([0; 512]) {
                if sl::present(e) && !is_leaf(e, level) {
                    self.free_in(io, e & ADDR, level - 1);
                }
            }
        }
        io.free(table);
    }
}

/// The entries of one table at `level` that `[iova, iova+len)` touches: (first address, entry
/// address, bytes of the range under that entry), in address order.
fn slots(table: u64, level: u32, iova: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let span = sl::span(level);
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

fn exists(va: u64) -> PluginError {
    PluginError::new(ErrorCode::EXISTS, format!("IOVA {va:#x} is already mapped"))
}
