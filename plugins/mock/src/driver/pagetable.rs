//! The mock four-level page table (mock spec §5): map, unmap, split, walk, dirty harvest.
//!
//! Invariants: a table page is freed as soon as it holds no entry, so a present non-leaf entry
//! always leads to something mapped; every operation is all-or-nothing and leaves no table page
//! behind on error. Callers serialise operations on one table.

use ioasis::abi::{ErrorCode, PluginError};
use ioasis::{PageSizes, Prot};

use super::io::Io;
use super::unit::Defect;
use crate::format::{pte, ADDR_MASK};

const TOP: u32 = pte::LEVELS - 1;

/// A page table rooted at one page.
pub struct PageTable {
    /// Root table page.
    pub root: u64,
    /// Page sizes the unit supports (CAP).
    pub sizes: PageSizes,
    /// Input address width.
    pub ias: u8,
    /// A deliberate bug, for the conformance suite's self-test.
    pub defect: Option<Defect>,
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

/// What a map did, so that it can be undone.
#[derive(Default)]
struct MapUndo {
    /// Bytes mapped from the start of the request, in address order.
    done: u64,
    /// Tables allocated: (parent entry, table), in allocation order.
    tables: Vec<(u64, u64)>,
}

/// A split that can be reverted: (parent entry, old leaf value, new table).
pub type SplitRecord = (u64, u64, u64);

fn leaf_bits(prot: Prot) -> u64 {
    let mut v = pte::P;
    if prot.read() {
        v |= pte::R;
    }
    if prot.write() {
        v |= pte::W;
    }
    v
}

/// The permission bits of a leaf.
pub fn leaf_prot(e: u64) -> Prot {
    let mut p = Prot::NONE;
    if e & pte::R != 0 {
        p = p | Prot::READ;
    }
    if e & pte::W != 0 {
        p = p | Prot::WRITE;
    }
    p
}

impl PageTable {
    /// A table with a freshly allocated root.
    pub fn new(io: &Io, sizes: PageSizes, ias: u8, defect: Option<Defect>) -> Result<Self, PluginError> {
        Ok(Self { root: io.alloc()?, sizes, ias, defect })
    }

    fn check_range(&self, iova: u64, len: u64) -> Result<(), PluginError> {
        let end = iova.checked_add(len).ok_or_else(|| PluginError::invalid("range wraps around"))?;
        if len == 0 || iova % 4096 != 0 || len % 4096 != 0 {
            return Err(PluginError::invalid(format!("range {iova:#x}+{len:#x} is not 4 KiB granular")));
        }
        if self.ias < 64 && end > (1u64 << self.ias) {
            return Err(PluginError::new(
                ErrorCode::OUT_OF_RANGE,
                format!("range ends at {end:#x}, beyond the {}-bit input space", self.ias),
            ));
        }
        Ok(())
    }

    /// Maps `[iova, iova+len)` to `pa` with the largest pages alignment allows. All or nothing.
    pub fn map(&self, io: &Io, iova: u64, pa: u64, len: u64, prot: Prot) -> Result<(), PluginError> {
        self.check_range(iova, len)?;
        if pa % 4096 != 0 || pa.checked_add(len).is_none_or(|e| e > ADDR_MASK + 4096) {
            return Err(PluginError::invalid(format!("physical address {pa:#x} is not mappable")));
        }
        if prot.is_none() {
            return Err(PluginError::invalid("a mapping needs read or write permission"));
        }
        let mut undo = MapUndo::default();
        let prot = if self.defect == Some(Defect::IgnoreReadOnly) { prot | Prot::WRITE } else { prot };
        match self.map_in(io, self.root, TOP, iova, pa, len, leaf_bits(prot), &mut undo) {
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
        let span = pte::span(level);
        for (va, entry_pa, chunk) in slots(table, level, iova, len) {
            let p = pa + (va - iova);
            let e = io.rd(entry_pa)?;
            let present = e & pte::P != 0;
            if level == 0 {
                if present {
                    return Err(exists(va));
                }
                io.wr(entry_pa, bits | p)?;
                undo.done += span;
            } else if !present
                && chunk == span
                && (p & (span - 1) == 0 || self.defect == Some(Defect::MisalignedLargePage))
                && self.sizes.contains(span)
            {
                io.wr(entry_pa, bits | pte::LEAF | p)?;
                undo.done += span;
            } else {
                if present && pte::is_leaf(e, level) {
                    return Err(exists(va));
                }
                let child = if present {
                    e & ADDR_MASK
                } else {
                    let t = io.alloc()?;
                    undo.tables.push((entry_pa, t));
                    io.wr(entry_pa, pte::P | t)?;
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
            let _ = self.clear_leaves(io, self.root, TOP, iova, undo.done);
        }
        let leak = usize::from(self.defect == Some(Defect::LeakOnError));
        for &(parent, table) in undo.tables.iter().rev().skip(leak) {
            let _ = io.wr(parent, 0);
            io.free(table);
        }
    }

    fn clear_leaves(&self, io: &Io, table: u64, level: u32, iova: u64, len: u64) -> Result<(), PluginError> {
        for (va, entry_pa, chunk) in slots(table, level, iova, len) {
            let e = io.rd(entry_pa)?;
            if e & pte::P != 0 {
                if pte::is_leaf(e, level) {
                    io.wr(entry_pa, 0)?;
                } else {
                    self.clear_leaves(io, e & ADDR_MASK, level - 1, va, chunk)?;
                }
            }
        }
        Ok(())
    }

    /// Splits every large leaf that straddles `iova`, so that `iova` becomes a leaf boundary.
    /// Records what it did in `log`; on error, what it did so far stays in `log` for
    /// [`PageTable::revert_splits`].
    pub fn split_at(&self, io: &Io, iova: u64, log: &mut Vec<SplitRecord>) -> Result<(), PluginError> {
        let mut table = self.root;
        for level in (1..=TOP).rev() {
            let span = pte::span(level);
            let entry_pa = table + pte::offset(iova, level);
            let e = io.rd(entry_pa)?;
            if e & pte::P == 0 || (iova & (span - 1) == 0 && pte::is_leaf(e, level)) {
                return Ok(());
            }
            if pte::is_leaf(e, level) {
                let t = io.alloc()?;
                let child_span = pte::span(level - 1);
                let keep = e & !(ADDR_MASK | pte::LEAF);
                let leaf_flag = if level - 1 > 0 { pte::LEAF } else { 0 };
                let base = e & ADDR_MASK;
                for i in 0..512u64 {
                    io.wr(t + i * 8, keep | leaf_flag | (base + i * child_span))?;
                }
                // One 8-byte store swaps the large leaf for a table of identical translations.
                io.wr(entry_pa, pte::P | t)?;
                log.push((entry_pa, e, t));
                table = t;
            } else {
                table = e & ADDR_MASK;
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
        let split = self.split_at(io, iova, &mut log).and_then(|()| match iova.checked_add(len) {
            Some(end) if self.ias >= 64 || end < (1u64 << self.ias) => self.split_at(io, end, &mut log),
            _ => Ok(()),
        });
        if let Err(e) = split {
            self.revert_splits(io, &log);
            return Err(e);
        }
        let len = if self.defect == Some(Defect::UnmapOffByOne) && len > 4096 { len - 4096 } else { len };
        let (bytes, _) = self.unmap_in(io, self.root, TOP, iova, len)?;
        Ok(bytes)
    }

    /// Clears leaves inside the range (which no leaf straddles) and frees tables left empty.
    /// Returns (bytes unmapped, table now empty).
    fn unmap_in(&self, io: &Io, table: u64, level: u32, iova: u64, len: u64) -> Result<(u64, bool), PluginError> {
        let span = pte::span(level);
        let mut bytes = 0u64;
        let mut cleared = false;
        for (va, entry_pa, chunk) in slots(table, level, iova, len) {
            let e = io.rd(entry_pa)?;
            if e & pte::P != 0 {
                if pte::is_leaf(e, level) {
                    io.wr(entry_pa, 0)?;
                    bytes += span;
                    cleared = true;
                } else {
                    let child = e & ADDR_MASK;
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
        let empty = cleared && level < TOP && self.is_empty(io, table)?;
        Ok((bytes, empty))
    }

    fn is_empty(&self, io: &Io, table: u64) -> Result<bool, PluginError> {
        Ok(entries(io, table)?.iter().all(|e| *e == 0))
    }

    /// The leaf that maps `iova`, if any.
    pub fn walk(&self, io: &Io, iova: u64) -> Result<Option<Leaf>, PluginError> {
        if self.ias < 64 && iova >> self.ias != 0 {
            return Ok(None);
        }
        let mut table = self.root;
        for level in (0..=TOP).rev() {
            let entry_pa = table + pte::offset(iova, level);
            let e = io.rd(entry_pa)?;
            if e & pte::P == 0 {
                return Ok(None);
            }
            if pte::is_leaf(e, level) {
                return Ok(Some(Leaf { entry_pa, value: e, span: pte::span(level) }));
            }
            table = e & ADDR_MASK;
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
        self.leaves_in(io, self.root, TOP, iova, len, f)
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
        let span = pte::span(level);
        for (va, entry_pa, chunk) in slots(table, level, iova, len) {
            let e = io.rd(entry_pa)?;
            if e & pte::P != 0 {
                if pte::is_leaf(e, level) {
                    f(va & !(span - 1), Leaf { entry_pa, value: e, span })?;
                } else {
                    self.leaves_in(io, e & ADDR_MASK, level - 1, va, chunk, f)?;
                }
            }
        }
        Ok(())
    }

    /// Table pages in the tree (root included).
    pub fn count_pages(&self, io: &Io) -> Result<u64, PluginError> {
        self.count_in(io, self.root, TOP)
    }

    fn count_in(&self, io: &Io, table: u64, level: u32) -> Result<u64, PluginError> {
        let mut n = 1;
        if level == 0 {
            return Ok(n);
        }
        for e in entries(io, table)? {
            if e & pte::P != 0 && !pte::is_leaf(e, level) {
                n += self.count_in(io, e & ADDR_MASK, level - 1)?;
            }
        }
        Ok(n)
    }

    /// Frees every table page, root included.
    pub fn destroy(&self, io: &Io) {
        self.free_in(io, self.root, TOP);
    }

    fn free_in(&self, io: &Io, table: u64, level: u32) {
        if level > 0 {
            for e in entries(io, table).unwrap_or([0; 512]) {
                if e & pte::P != 0 && !pte::is_leaf(e, level) {
                    self.free_in(io, e & ADDR_MASK, level - 1);
                }
            }
        }
        io.free(table);
    }
}

/// The entries of one table at `level` that `[iova, iova+len)` touches: (first address, entry
/// address, bytes of the range under that entry), in address order.
fn slots(table: u64, level: u32, iova: u64, len: u64) -> impl Iterator<Item = (u64, u64, u64)> {
    let span = pte::span(level);
    let mut off = 0u64;
    std::iter::from_fn(move || {
        (off < len).then(|| {
            let va = iova + off;
            let chunk = (len - off).min(span - (va & (span - 1)));
            off += chunk;
            (va, table + pte::offset(va, level), chunk)
        })
    })
}

/// All 512 entries of a table page, read in one host call.
fn entries(io: &Io, table: u64) -> Result<[u64; 512], PluginError> {
    let mut buf = [0u8; 4096];
    io.read_table(table, &mut buf)?;
    let mut out = [0u64; 512];
    for (o, c) in out.iter_mut().zip(buf.chunks_exact(8)) {
        *o = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
    }
    Ok(out)
}

fn exists(va: u64) -> PluginError {
    PluginError::new(ErrorCode::EXISTS, format!("IOVA {va:#x} is already mapped"))
}
