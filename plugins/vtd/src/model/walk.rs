//! Paging-structure walks: second-stage (VT-d spec 9.8, 3.7) and first-stage x86-64 tables
//! (9.7, 3.6), and nested first-stage-through-second-stage (3.8).
//!
//! A walk reads at most one entry per level and at most five levels; every address is computed
//! with checked arithmetic, and any memory content gives a leaf or a fault, never a panic.

use ioasis::abi::Fault;
use ioasis::platform::PhysMemory;
use ioasis::{PhysAddr, Prot};

use crate::layout::fault::reason;
use crate::layout::tables::{fl, sl, ADDR};

/// Why a translation failed: the VT-d fault reason (Appendix A) and its ioasis class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Failure {
    /// VT-d fault reason code.
    pub vtd: u8,
    /// [`Fault`] reason constant.
    pub kind: u32,
}

impl Failure {
    pub const fn new(vtd: u8, kind: u32) -> Self {
        Self { vtd, kind }
    }
}

/// A not-present paging entry. VT-d reports it as a missing permission (Appendix A 0x5 for a
/// write, 0x6 for a read); ioasis calls it not-present.
pub(super) fn not_present(access: Prot) -> Failure {
    let vtd = if access.write() { reason::NO_WRITE } else { reason::NO_READ };
    Failure::new(vtd, Fault::NOT_PRESENT)
}

/// A paging entry with a reserved field set (Appendix A 0xc).
const RESERVED: Failure = Failure::new(reason::PAGING_RESERVED, Fault::BAD_ENTRY);
/// An unreadable paging entry (Appendix A 0x7).
const UNREADABLE: Failure = Failure::new(reason::PAGING_ENTRY_ERROR, Fault::BAD_ENTRY);

/// What a walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Leaf {
    /// Output address of the first byte of the page.
    pub base: u64,
    /// Page size.
    pub size: u64,
    /// Permissions (the AND of every level).
    pub prot: Prot,
    /// The leaf's D bit is set, or the table does not track dirtiness.
    pub dirty_done: bool,
}

impl Leaf {
    /// Output address of `input`, which lies in this leaf's page.
    pub fn output(&self, input: u64) -> u64 {
        self.base | (input & (self.size - 1))
    }
}

/// A second-stage table (9.8).
#[derive(Clone, Copy, Debug)]
pub(super) struct SsTable {
    /// Root table address.
    pub root: u64,
    /// Levels (3, 4 or 5).
    pub levels: u32,
    /// Input address width in bits (min of AGAW and MGAW).
    pub width: u32,
    /// SSADE: set A on walked entries and D on written leaves (9.8, 3.7.2).
    pub ad: bool,
    /// CAP.SLLPS (11.4.2): bit 0 = 2 MiB leaves, bit 1 = 1 GiB leaves.
    pub sllps: u32,
}

/// Reads a table entry.
fn read(mem: &dyn PhysMemory, pa: u64) -> Result<u64, Failure> {
    mem.read_u64(PhysAddr(pa)).map_err(|_| UNREADABLE)
}

/// Address of the entry for `input` at `level` in the table at `table`.
fn entry_addr(table: u64, input: u64, level: u32) -> Result<u64, Failure> {
    table.checked_add(sl::index(input, level) * 8).ok_or(UNREADABLE)
}

/// Checks an input address against a second-stage table before any lookup, cached or not: an
/// input above the address width (min of AGAW and MGAW, 3.7.1) faults with 0x4.
pub(super) fn check_ss_input(t: &SsTable, input: u64) -> Result<(), Failure> {
    if t.width < 64 && input >> t.width != 0 {
        return Err(Failure::new(reason::ADDRESS_BEYOND_AW, Fault::ADDRESS_SIZE));
    }
    if !(1..=5).contains(&t.levels) {
        return Err(Failure::new(reason::CONTEXT_INVALID, Fault::BAD_ENTRY));
    }
    Ok(())
}

/// Checks an input address against a first-stage table before any lookup, cached or not: a
/// non-canonical input (3.6.1: bits above the top translated bit repeat it) faults with 0x4.
pub(super) fn check_fs_input(t: &FsTable, input: u64) -> Result<(), Failure> {
    if !(4..=5).contains(&t.levels) {
        return Err(Failure::new(reason::PASID_ENTRY_INVALID, Fault::BAD_ENTRY));
    }
    let width = 12 + 9 * t.levels;
    let upper = (input as i64) >> (width - 1);
    if upper != 0 && upper != -1 {
        return Err(Failure::new(reason::ADDRESS_BEYOND_AW, Fault::ADDRESS_SIZE));
    }
    Ok(())
}

/// Walks a second-stage table for `input` (9.8). The leaf is returned whatever its permissions;
/// the caller checks `access` against them.
pub(super) fn walk_ss(mem: &dyn PhysMemory, t: &SsTable, input: u64, access: Prot) -> Result<Leaf, Failure> {
    check_ss_input(t, input)?;
    let mut table = t.root;
    let (mut r, mut w) = (true, true);
    for level in (1..=t.levels).rev() {
        let at = entry_addr(table, input, level)?;
        let e = read(mem, at)?;
        if !sl::present(e) {
            return Err(not_present(access));
        }
        r &= e & sl::R != 0;
        w &= e & sl::W != 0;
        let large = level > 1 && e & sl::PS != 0;
        if large {
            // 9.8: PS is reserved at level 4 and above, and where CAP.SLLPS has no such size.
            let allowed = match level {
                2 => t.sllps & 1 != 0,
                3 => t.sllps & 2 != 0,
                _ => false,
            };
            if !allowed {
                return Err(RESERVED);
            }
        }
        let leaf = level == 1 || large;
        let size = sl::span(level);
        let addr = e & ADDR;
        // 9.8: in a large leaf the address bits below the page size are reserved. An entry with
        // a reserved field set is not used for translation, so the check comes before the A/D
        // update (3.7.2 sets A/D only in entries the translation uses).
        if leaf && addr & (size - 1) != 0 {
            return Err(RESERVED);
        }
        if t.ad {
            let mut bits = sl::A;
            if leaf && access.write() && w {
                bits |= sl::D;
            }
            if e & bits != bits {
                mem.fetch_or_u64(PhysAddr(at), bits).map_err(|_| UNREADABLE)?;
            }
        }
        if leaf {
            let prot = prot_of(r, w);
            let dirty_done = !t.ad || e & sl::D != 0 || (access.write() && w);
            return Ok(Leaf { base: addr, size, prot, dirty_done });
        }
        table = e & ADDR;
    }
    Err(UNREADABLE)
}

/// More present entries or leaves than [`leaves_ss`] was allowed to visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TooMany;

/// Every leaf of a second-stage table (9.8, 3.7) with at least one permission, in input-address
/// order, as `(input address, leaf)`: exactly the pages [`walk_ss`] translates without a fault.
///
/// Nothing is written (no A/D bits). Entries `walk_ss` would fault on are left out: not
/// present, PS where 9.8 reserves it, a misaligned large leaf, an unreadable table (its whole
/// span), inputs beyond the address width (a leaf that straddles the width is reported up to
/// it). The walk is bounded for untrusted tables: more than
/// `limit` leaves, or more than `5 * limit + 64` present entries visited (which covers any table
/// without empty subtrees), is [`TooMany`]; depth is at most `t.levels` (≤ 5).
pub(super) fn leaves_ss(mem: &dyn PhysMemory, t: &SsTable, limit: usize) -> Result<Vec<(u64, Leaf)>, TooMany> {
    let mut out = Vec::new();
    if !(1..=5).contains(&t.levels) {
        return Ok(out);
    }
    let mut budget = limit.saturating_mul(5).saturating_add(64);
    let mut walk = Enumerate { mem, t, limit, out: &mut out, budget: &mut budget };
    walk.table(t.root, t.levels, 0, true, true)?;
    Ok(out)
}

/// The state of [`leaves_ss`].
struct Enumerate<'a> {
    mem: &'a dyn PhysMemory,
    t: &'a SsTable,
    limit: usize,
    out: &'a mut Vec<(u64, Leaf)>,
    budget: &'a mut usize,
}

impl Enumerate<'_> {
    /// Visits the 512 entries of the table at `table` (level `level`, first input `base`; `r` /
    /// `w`: the permissions of the levels above).
    fn table(&mut self, table: u64, level: u32, base: u64, r: bool, w: bool) -> Result<(), TooMany> {
        let size = sl::span(level);
        for i in 0..512u64 {
            // Cannot overflow: level ≤ 5, so i * size < 2^57, and base has no bits below size * 512.
            let input = base | (i * size);
            if self.t.width < 64 && input >> self.t.width != 0 {
                break;
            }
            let Some(e) = table.checked_add(i * 8).and_then(|at| self.mem.read_u64(PhysAddr(at)).ok()) else {
                // An unreadable table: every input under it faults (Appendix A 0x7).
                return Ok(());
            };
            if !sl::present(e) {
                continue;
            }
            *self.budget = self.budget.checked_sub(1).ok_or(TooMany)?;
            let (r, w) = (r && e & sl::R != 0, w && e & sl::W != 0);
            let large = level > 1 && e & sl::PS != 0;
            if large && !matches!((level, self.t.sllps & 1 != 0, self.t.sllps & 2 != 0), (2, true, _) | (3, _, true)) {
                continue; // 9.8: PS reserved here.
            }
            if level == 1 || large {
                let addr = e & ADDR;
                let prot = prot_of(r, w);
                if addr & (size - 1) != 0 || prot == Prot::NONE {
                    continue;
                }
                if self.out.len() >= self.limit {
                    return Err(TooMany);
                }
                // A leaf larger than the address width (MGAW below its page size's shift, so
                // `input` is 0) translates only the inputs below the width (3.7.1): report that
                // part. A/D are not tracked here: `dirty_done` is irrelevant to an enumeration.
                let len = if self.t.width < 64 { size.min(1 << self.t.width) } else { size };
                self.out.push((input, Leaf { base: addr, size: len, prot, dirty_done: true }));
            } else {
                self.table(e & ADDR, level - 1, input, r, w)?;
            }
        }
        Ok(())
    }
}

fn prot_of(r: bool, w: bool) -> Prot {
    match (r, w) {
        (true, true) => Prot::RW,
        (true, false) => Prot::READ,
        (false, true) => Prot::WRITE,
        (false, false) => Prot::NONE,
    }
}

/// A first-stage table (9.7, x86-64 paging).
#[derive(Clone, Copy, Debug)]
pub(super) struct FsTable {
    /// Root table address (for nested translation, a second-stage input address).
    pub root: u64,
    /// 4 or 5 levels (PASID entry FSPM, 9.6).
    pub levels: u32,
    /// CAP.FS1GP (11.4.2): 1 GiB leaves allowed.
    pub gp1: bool,
}

/// Walks a first-stage table for `input` (9.7). Every table address goes through `xlate` (the
/// identity for first-stage only, the second stage for nested), as a read to fetch the entry.
/// A is set on every entry walked and D on the leaf of a permitted write (x86-64 semantics,
/// 3.6.2). Setting them writes the entry's memory, so the address then goes through `xlate`
/// again as a write: in nested translation (3.8) that write is second-stage translated like any
/// other, needing write permission there and, with SSADE, setting the second-stage D of the
/// page holding the entry (3.7.2), so that the guest page the update changed is reported
/// dirty. Entries whose A/D are already set are only read. Reads need P; writes need RW at
/// every level. US is ignored (DMA requests are treated as supervisor-agnostic).
pub(super) fn walk_fs(
    mem: &dyn PhysMemory,
    t: &FsTable,
    input: u64,
    access: Prot,
    xlate: &mut dyn FnMut(u64, Prot) -> Result<u64, Failure>,
) -> Result<Leaf, Failure> {
    check_fs_input(t, input)?;
    let mut table = t.root;
    let mut w = true;
    for level in (1..=t.levels).rev() {
        let entry = entry_addr(table, input, level)?;
        let at = xlate(entry, Prot::READ)?;
        let e = read(mem, at)?;
        if e & fl::P == 0 {
            return Err(not_present(access));
        }
        w &= e & fl::RW != 0;
        let large = level > 1 && e & fl::PS != 0;
        if large && !(level == 2 || (level == 3 && t.gp1)) {
            return Err(RESERVED);
        }
        let leaf = level == 1 || large;
        let mut bits = fl::A;
        if leaf && access.write() && w {
            bits |= fl::D;
        }
        if e & bits != bits {
            let at = xlate(entry, Prot::WRITE)?;
            mem.fetch_or_u64(PhysAddr(at), bits).map_err(|_| UNREADABLE)?;
        }
        if leaf {
            let size = sl::span(level);
            // Bit 12 of a large leaf is PAT (9.7), not address.
            let base = e & ADDR & !(size - 1);
            let dirty_done = e & fl::D != 0 || (access.write() && w);
            return Ok(Leaf { base, size, prot: prot_of(true, w), dirty_done });
        }
        table = e & ADDR;
    }
    Err(UNREADABLE)
}
