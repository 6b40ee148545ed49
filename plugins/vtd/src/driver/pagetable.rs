//! Second-stage (second-level) page tables (VT-d spec 9.8, 3.7) on the framework's walker
//! ([`ioasis::pt`]): the entry encoding of [`crate::layout::tables::sl`].
//!
//! Levels count from 1 (4 KiB leaves) up to 3 (39-bit), 4 (48-bit) or 5 (57-bit) by SAGAW; the
//! walker counts them from 0. An entry is present when R or W is set; non-leaf entries carry
//! R|W so that their subtree's permissions decide. A 2 MiB or 1 GiB leaf has PS (bit 7) at
//! level 2 or 3, where CAP.SLLPS allows (the geometry's page sizes). With SSADE the unit sets D
//! (bit 9) in leaves it writes through.

use ioasis::abi::PluginError;
use ioasis::pt::{self, Format, Geometry};
use ioasis::{PageSizes, Prot};

use super::io::Io;
use crate::layout::tables::{sl, ADDR};

/// A second-stage page table.
pub type PageTable = pt::PageTable<SlFormat>;

/// Second-stage entries (9.8).
#[derive(Clone, Copy, Debug)]
pub struct SlFormat {
    /// Leaves carry SNP (bit 11), for enforced coherency with ECAP.SC.
    pub snoop: bool,
    /// Test-only defect: split leaves get R|W instead of the large leaf's permissions.
    pub split_loses_permissions: bool,
}

/// A second-stage table of `levels` (3 to 5) with a freshly allocated root.
pub fn new_table(
    io: &Io,
    levels: u32,
    sizes: PageSizes,
    ias: u8,
    snoop: bool,
    split_loses_permissions: bool,
) -> Result<PageTable, PluginError> {
    PageTable::new(io, Geometry { levels, sizes, ias }, SlFormat { snoop, split_loses_permissions })
}

impl Format for SlFormat {
    const ADDR: u64 = ADDR;

    fn present(&self, e: u64) -> bool {
        sl::present(e)
    }
    fn is_leaf(&self, e: u64, level: u32) -> bool {
        level == 0 || e & sl::PS != 0
    }
    fn table(&self, table: u64) -> u64 {
        sl::table(table)
    }
    fn leaf_attrs(&self, prot: Prot) -> u64 {
        sl::attrs(prot.read(), prot.write(), self.snoop)
    }
    fn leaf(&self, attrs: u64, pa: u64, level: u32) -> u64 {
        sl::leaf(attrs, pa, level > 0)
    }
    fn attrs_of(&self, e: u64, _level: u32) -> u64 {
        if self.split_loses_permissions {
            return sl::attrs_of(e) | sl::R | sl::W;
        }
        sl::attrs_of(e)
    }
    fn leaf_addr(&self, e: u64, level: u32) -> u64 {
        e & ADDR & !(pt::span(level) - 1)
    }
    fn leaf_prot(&self, e: u64) -> Prot {
        Prot::new(e & sl::R != 0, e & sl::W != 0)
    }
    fn dirty_bits(&self) -> u64 {
        sl::D
    }
}
