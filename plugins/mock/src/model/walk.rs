//! Page-table walks (mock spec §5, and x86-64 stage-1 tables for nesting).
//!
//! A walk reads at most one entry per level and at most four levels; every address is
//! computed with checked arithmetic, and any memory content gives a leaf or a fault reason,
//! never a panic.

use ioasis::abi::Fault;
use ioasis::platform::PhysMemory;
use ioasis::{PhysAddr, Prot};

use crate::format::{cap, pte, x86, ADDR_MASK};

/// Entry layout of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    /// Mock spec §5.
    Mock,
    /// x86-64 paging (stage-1 only).
    X86,
}

/// One table to walk.
#[derive(Clone, Copy, Debug)]
pub(super) struct Table {
    /// Root table (a physical address, or for a nested stage-1 an address in the stage-2
    /// input space).
    pub root: u64,
    /// Levels, 1..=4.
    pub levels: u32,
    /// Input address width in bits.
    pub ias: u32,
    /// Entry layout.
    pub format: Format,
    /// Set D on the leaf of a write.
    pub dirty: bool,
    /// Leaves must lie below `2^oas` (None: no check, the output is checked by a later stage).
    pub oas: Option<u32>,
}

/// What a walk found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Leaf {
    /// Output address of the first byte of the page.
    pub base: u64,
    /// Page size.
    pub size: u64,
    /// Permissions of the page.
    pub prot: Prot,
    /// The D bit a write needs is set (or not tracked).
    pub dirty_done: bool,
}

impl Leaf {
    /// The output address of `addr`, which lies in this leaf's page.
    pub fn output(&self, addr: u64) -> u64 {
        // `base` is `size`-aligned and below 2^52, so adding an offset below `size` is exact.
        self.base | (addr & (self.size - 1))
    }
}

/// Reason codes are [`Fault`] constants.
pub(super) type Reason = u32;

/// Walks `table` for `addr` with `access`, reading each entry at `locate(entry address)` (the
/// identity for physical tables; a stage-2 translation for a nested stage-1). Sets A on the leaf,
/// and D on a write when the table tracks dirtiness, once the access is allowed.
pub(super) fn walk(
    mem: &dyn PhysMemory,
    unit_cap: u64,
    table: &Table,
    addr: u64,
    access: Prot,
    locate: &mut dyn FnMut(u64) -> Result<u64, Reason>,
) -> Result<Leaf, Reason> {
    if !(1..=pte::LEVELS).contains(&table.levels) || !(12..=pte::shift(table.levels)).contains(&table.ias) {
        return Err(Fault::BAD_ENTRY);
    }
    if table.ias < 64 && addr >> table.ias != 0 {
        return Err(Fault::ADDRESS_SIZE);
    }
    let mut next = table.root;
    // x86: writable only if RW is set at every level.
    let mut x86_writable = true;
    for level in (0..table.levels).rev() {
        let entry_addr = next.checked_add(pte::offset(addr, level)).ok_or(Fault::BAD_ENTRY)?;
        let entry_pa = locate(entry_addr)?;
        let entry = mem.read_u64(PhysAddr(entry_pa)).map_err(|_| Fault::BAD_ENTRY)?;
        // Bit 0 is P in both formats.
        if entry & pte::P == 0 {
            return Err(Fault::NOT_PRESENT);
        }
        let out = entry & ADDR_MASK;
        let leaf = match table.format {
            Format::Mock => pte::is_leaf(entry, level),
            Format::X86 => {
                x86_writable &= entry & x86::RW != 0;
                level == 0 || entry & x86::PS != 0
            }
        };
        if !leaf {
            // Physical table pointers may not be 0; a stage-1 (guest) table may sit at 0.
            if out == 0 && table.oas.is_some() {
                return Err(Fault::BAD_ENTRY);
            }
            next = out;
            continue;
        }
        let size_ok = match level {
            0 => true,
            1 => unit_cap & cap::PS_2M != 0,
            2 => unit_cap & cap::PS_1G != 0,
            _ => false,
        };
        let size = pte::span(level);
        if !size_ok || out & (size - 1) != 0 {
            return Err(Fault::BAD_ENTRY);
        }
        if let Some(oas) = table.oas {
            if oas < 64 && (out + (size - 1)) >> oas != 0 {
                return Err(Fault::BAD_ENTRY);
            }
        }
        let (prot, a, d) = match table.format {
            Format::Mock => {
                let r = if entry & pte::R != 0 { Prot::READ } else { Prot::NONE };
                let w = if entry & pte::W != 0 { Prot::WRITE } else { Prot::NONE };
                (r | w, pte::A, pte::D)
            }
            Format::X86 => {
                let w = if x86_writable { Prot::WRITE } else { Prot::NONE };
                (Prot::READ | w, x86::A, x86::D)
            }
        };
        if !prot.contains(access) {
            return Err(Fault::PERMISSION);
        }
        let set_d = table.dirty && access.write();
        let bits = if set_d { a | d } else { a };
        if entry & bits != bits {
            mem.fetch_or_u64(PhysAddr(entry_pa), bits).map_err(|_| Fault::BAD_ENTRY)?;
        }
        return Ok(Leaf { base: out, size, prot, dirty_done: !table.dirty || set_d });
    }
    // Level 0 is always a leaf, so the loop returned; a zero-level table was refused above.
    Err(Fault::BAD_ENTRY)
}
