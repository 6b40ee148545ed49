//! The mock four-level page table (mock spec §5) on the framework's walker ([`ioasis::pt`]):
//! the entry encoding, the deliberate defects of the conformance self-test, and table memory
//! through host services.

use ioasis::abi::PluginError;
use ioasis::pt::{self, Format, Geometry};
use ioasis::{PageSizes, Prot};

use super::io::Io;
use super::unit::Defect;
use crate::format::{pte, ADDR_MASK};

/// A mock page table.
pub type PageTable = pt::PageTable<MockFormat>;

/// The mock's entries (§5), and the defect the unit was told to have.
#[derive(Clone, Copy, Debug)]
pub struct MockFormat {
    /// A deliberate bug, for the conformance suite's self-test.
    pub defect: Option<Defect>,
}

/// A mock page table with a freshly allocated root.
pub fn new_table(io: &Io, sizes: PageSizes, ias: u8, defect: Option<Defect>) -> Result<PageTable, PluginError> {
    PageTable::new(io, Geometry { levels: pte::LEVELS, sizes, ias }, MockFormat { defect })
}

impl Format for MockFormat {
    const ADDR: u64 = ADDR_MASK;

    fn present(&self, e: u64) -> bool {
        e & pte::P != 0
    }
    fn is_leaf(&self, e: u64, level: u32) -> bool {
        pte::is_leaf(e, level)
    }
    fn table(&self, table: u64) -> u64 {
        pte::P | table
    }
    fn leaf_attrs(&self, prot: Prot) -> u64 {
        let prot = if self.defect == Some(Defect::IgnoreReadOnly) { prot | Prot::WRITE } else { prot };
        let mut v = pte::P;
        if prot.read() {
            v |= pte::R;
        }
        if prot.write() {
            v |= pte::W;
        }
        v
    }
    fn leaf(&self, attrs: u64, pa: u64, level: u32) -> u64 {
        attrs | if level > 0 { pte::LEAF } else { 0 } | pa
    }
    fn attrs_of(&self, e: u64, _level: u32) -> u64 {
        let lost = match self.defect {
            Some(Defect::SplitLosesDirty) => pte::D,
            Some(Defect::SplitLosesWrite) => pte::W,
            _ => 0,
        };
        e & !(ADDR_MASK | pte::LEAF | lost)
    }
    fn leaf_addr(&self, e: u64, _level: u32) -> u64 {
        e & ADDR_MASK
    }
    fn leaf_prot(&self, e: u64) -> Prot {
        Prot::new(e & pte::R != 0, e & pte::W != 0)
    }
    fn dirty_bits(&self) -> u64 {
        pte::D
    }
    fn vacant(&self, e: u64) -> bool {
        e == 0
    }
    fn misaligned_large_leaves(&self) -> bool {
        self.defect == Some(Defect::MisalignedLargePage)
    }
    fn leak_on_rollback(&self) -> bool {
        self.defect == Some(Defect::LeakOnError)
    }
    fn unmap_len(&self, len: u64) -> u64 {
        if self.defect == Some(Defect::UnmapOffByOne) && len > 4096 {
            len - 4096
        } else {
            len
        }
    }
}
