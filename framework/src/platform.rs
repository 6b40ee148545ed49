//! The machine under the framework: what a host adapter provides.
//!
//! A [`Platform`] owns physical memory (for table pages) and routes MMIO to units. The
//! framework wraps it into one [`crate::abi::HostServices`] object per unit, adding
//! allocation-failure injection ([`FailNth`]), a clock and logging. A hardware model (the
//! "model half" of a backend, [`UnitModel`]) reads what the plugin wrote, exactly as a unit
//! would; a host adapter that simulates a machine, or offers a vIOMMU to a guest, takes models
//! through this interface and never names a backend.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::abi::{Fault, HostError};
use crate::addr::{DeviceRef, Iova, Pasid, PhysAddr};
use crate::format::PtFormat;
use crate::prot::Prot;

/// Physical memory as a unit (or a plugin) sees it.
pub trait PhysMemory: Send + Sync {
    /// Reads `buf.len()` bytes at `pa`.
    fn read(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<(), HostError>;
    /// Writes `data` at `pa`.
    fn write(&self, pa: PhysAddr, data: &[u8]) -> Result<(), HostError>;
    /// Reads an aligned u64 atomically.
    fn read_u64(&self, pa: PhysAddr) -> Result<u64, HostError>;
    /// Writes an aligned u64 atomically.
    fn write_u64(&self, pa: PhysAddr, value: u64) -> Result<(), HostError>;
    /// Atomically ORs `bits` into the u64 at `pa` (how a unit sets A/D bits); returns the old value.
    fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> Result<u64, HostError>;
    /// Atomically ANDs `mask` into the u64 at `pa` (how a driver clears A/D bits without losing
    /// a bit the unit sets at the same moment); returns the old value.
    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> Result<u64, HostError>;
}

/// A machine: memory for table pages and the units' register windows.
pub trait Platform: PhysMemory {
    /// A zeroed 4 KiB page for hardware tables.
    fn alloc_table_page(&self) -> Result<PhysAddr, HostError>;
    /// Frees a page from [`Platform::alloc_table_page`].
    fn free_table_page(&self, page: PhysAddr) -> Result<(), HostError>;
    /// `count` zeroed, physically contiguous 4 KiB pages (tables larger than a page).
    fn alloc_table_pages(&self, count: u64) -> Result<PhysAddr, HostError>;
    /// Frees pages from [`Platform::alloc_table_pages`].
    fn free_table_pages(&self, first: PhysAddr, count: u64) -> Result<(), HostError>;
    /// Table pages allocated now (for leak checks).
    fn table_pages(&self) -> u64;
    /// Reads a register of the unit whose window starts at `base`.
    fn mmio_read(&self, base: PhysAddr, offset: u64, width: u8) -> Result<u64, HostError>;
    /// Writes a register of the unit whose window starts at `base`.
    fn mmio_write(&self, base: PhysAddr, offset: u64, width: u8, value: u64) -> Result<(), HostError>;
    /// Whether `[pa, pa+len)` may be mapped for devices: memory, not past the end of RAM and
    /// not the host's own table pages (a device writing there would rewrite the IOMMU's
    /// tables). The reason when not. A host that cannot tell answers `Ok`.
    fn check_dma_memory(&self, pa: PhysAddr, len: u64) -> Result<(), String> {
        let _ = (pa, len);
        Ok(())
    }
}

/// [`Platform::check_dma_memory`] for a host whose RAM is `ram` (ranges `(start, len)`) and
/// whose table pages come from `[pool, pool + pool_len)`.
pub fn check_dma_memory_in(ram: &[(u64, u64)], pool: (u64, u64), pa: PhysAddr, len: u64) -> Result<(), String> {
    let end = pa.raw().checked_add(len).ok_or_else(|| format!("{pa}+{len:#x} wraps around"))?;
    if !ram.iter().any(|&(start, n)| start <= pa.raw() && end - start <= n) {
        let ranges: Vec<String> = ram.iter().map(|(s, n)| format!("{s:#x}..{:#x}", s + n)).collect();
        return Err(format!("{pa}+{len:#x} is not inside RAM ({})", ranges.join(", ")));
    }
    let (base, n) = pool;
    if pa.raw() < base + n && base < end {
        return Err(format!("{pa}+{len:#x} overlaps the IOMMU table-page pool at {base:#x}..{:#x}", base + n));
    }
    Ok(())
}

/// One DMA access a device makes through a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaRequest {
    /// The requester.
    pub dev: DeviceRef,
    /// PASID prefix of the request, if any.
    pub pasid: Option<Pasid>,
    /// Address on the bus.
    pub iova: Iova,
    /// Read or write.
    pub access: Prot,
}

/// Where a DMA access lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaTarget {
    /// Physical address of `iova`.
    pub pa: PhysAddr,
    /// Bytes from `pa` to the end of the translated page (the access may not cross it).
    pub remaining: u64,
}

/// The hardware half of a backend: a unit's registers and its translation of DMA.
pub trait UnitModel: Send + Sync {
    /// A register read.
    fn mmio_read(&self, mem: &dyn PhysMemory, offset: u64, width: u8) -> Result<u64, HostError>;
    /// A register write (may run commands: invalidations, page responses).
    fn mmio_write(&self, mem: &dyn PhysMemory, offset: u64, width: u8, value: u64) -> Result<(), HostError>;
    /// Translates one access as the unit would (caches, permission checks, A/D updates). On a
    /// fault the unit records it (fault registers or queue) and returns it.
    fn translate(&self, mem: &dyn PhysMemory, req: &DmaRequest) -> Result<DmaTarget, Fault>;

    /// What a VMM shadows: the leaves of the translation that device `dev` (with `pasid`, or
    /// untagged) has now, read from the tables in `mem` as the unit would walk them, but never
    /// from the unit's caches and without side effects (no A/D updates, no fault recording).
    ///
    /// One [`GuestMapping`] per leaf, in IOVA order, nothing merged. Tables are untrusted (a
    /// guest wrote them): the walk is bounded, and more than `limit` leaves is
    /// [`ModelQueryError::TooMany`]. A device whose requests are blocked (translation enabled,
    /// no present context) is [`ModelQueryError::Blocked`]; a translation mode the model cannot
    /// enumerate (pass-through included: it has no leaves) is [`ModelQueryError::Unsupported`].
    ///
    /// The default: [`ModelQueryError::Unsupported`].
    fn guest_mappings(
        &self,
        mem: &dyn PhysMemory,
        dev: DeviceRef,
        pasid: Option<Pasid>,
        limit: usize,
    ) -> Result<Vec<GuestMapping>, ModelQueryError> {
        let _ = (mem, dev, pasid, limit);
        Err(ModelQueryError::Unsupported)
    }

    /// The stage-1 format a guest programs in this unit that a host could nest (the format
    /// [`UnitModel::guest_stage1`] reports), or `None` when the unit offers none.
    ///
    /// The default: `None`.
    fn guest_stage1_format(&self) -> Option<PtFormat> {
        None
    }

    /// What a VMM nests: the stage-1 that device `dev` (with `pasid`, or untagged) is
    /// translated through now, as a host backend's nested HWPT takes it
    /// ([`crate::HwptSpec::Nested`]). Read from the structures in `mem` (not the unit's caches),
    /// without side effects; the structures are untrusted and every read is bounded.
    ///
    /// A unit that does not translate the device's requests (translation disabled,
    /// pass-through) is [`ModelQueryError::Untranslated`]; blocked requests are
    /// [`ModelQueryError::Blocked`]; a translation without a stage-1 a host can nest (for
    /// example second-stage-only tables, which a VMM shadows instead) is
    /// [`ModelQueryError::UnsupportedMode`] with the reason; malformed structures are
    /// [`ModelQueryError::BadEntry`].
    ///
    /// The default: [`ModelQueryError::Unsupported`].
    fn guest_stage1(
        &self,
        mem: &dyn PhysMemory,
        dev: DeviceRef,
        pasid: Option<Pasid>,
    ) -> Result<GuestStage1, ModelQueryError> {
        let _ = (mem, dev, pasid);
        Err(ModelQueryError::Unsupported)
    }

    /// The page responses the unit has received so far, oldest first, as the driver sent them
    /// (registers or command queue): for test benches that check that a driver answers the
    /// group it was asked. `None` when the model does not record them.
    ///
    /// The default: `None`.
    fn page_responses(&self) -> Option<Vec<PageResponseSeen>> {
        None
    }
}

/// A page response as the unit received it ([`UnitModel::page_responses`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageResponseSeen {
    /// The device, as the unit's tables index it ([`DeviceRef::table_index`]).
    pub source: u32,
    /// The PASID the response carries, if any.
    pub pasid: Option<Pasid>,
    /// The page request group it answers.
    pub group: u32,
    /// The response code, in the unit's encoding.
    pub code: u32,
}

/// A device's stage-1 as a guest programmed it, in the terms of a host's nested HWPT
/// ([`crate::HwptSpec::Nested`], [`crate::abi::Stage1Config`]); see
/// [`UnitModel::guest_stage1`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GuestStage1 {
    /// The stage-1 format.
    pub format: PtFormat,
    /// Root of the stage-1 tables: an address in the model's memory (guest-physical for a
    /// vIOMMU), which is an IOVA of the host's stage-2.
    pub root: PhysAddr,
    /// Format-specific words, meaning what [`crate::abi::Stage1Config::words`] means for
    /// `format` (for [`PtFormat::X86_64`]: none, a 4-level table).
    pub words: Vec<u64>,
}

/// One leaf of a device's translation, as [`UnitModel::guest_mappings`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuestMapping {
    /// First IOVA of the page.
    pub iova: Iova,
    /// The output address the model's tables give (guest-physical for a vIOMMU).
    pub addr: PhysAddr,
    /// Page size in bytes.
    pub len: u64,
    /// Permissions (the AND of every level).
    pub prot: Prot,
}

/// Why [`UnitModel::guest_mappings`] gave no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelQueryError {
    /// The model (or the device's translation mode) cannot enumerate its mappings.
    #[error("the model cannot enumerate this translation")]
    Unsupported,
    /// The device's requests are blocked (no present root / context / PASID entry).
    #[error("the device's requests are blocked")]
    Blocked,
    /// More leaves than the caller's limit.
    #[error("more than {limit} mappings")]
    TooMany {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A translation structure is unreadable or malformed.
    #[error("bad translation structure at {addr:#x}")]
    BadEntry {
        /// Where (an address in the model's memory; 0 when not known).
        addr: u64,
    },
    /// The unit does not translate the device's requests: they reach the address they carry
    /// (translation disabled, or a pass-through entry). Reported by
    /// [`UnitModel::guest_stage1`].
    #[error("the unit does not translate the device's requests")]
    Untranslated,
    /// The device's translation is in a mode the query cannot express; the reason names the
    /// mode and the fields that decide it. Reported by [`UnitModel::guest_stage1`].
    #[error("the translation cannot be expressed: {reason}")]
    UnsupportedMode {
        /// Which mode, and why.
        reason: &'static str,
    },
}

/// Makes the n-th allocation fail, as Linux's fail_nth does: arm it with `n`, run a scenario,
/// and the n-th table-page allocation from then on reports no memory.
#[derive(Debug, Default)]
pub struct FailNth {
    countdown: AtomicU64,
    allocations: AtomicU64,
    injected: AtomicU64,
}

impl FailNth {
    /// Fails the `n`-th allocation from now (1 = the next one); 0 disarms.
    pub fn arm(&self, n: u64) {
        self.countdown.store(n, Ordering::SeqCst);
    }
    /// Disarms.
    pub fn disarm(&self) {
        self.countdown.store(0, Ordering::SeqCst);
    }
    /// Allocations attempted since the context was made.
    pub fn allocations(&self) -> u64 {
        self.allocations.load(Ordering::SeqCst)
    }
    /// Failures injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }
    /// Counts an allocation; true when this one must fail.
    pub fn should_fail(&self) -> bool {
        self.allocations.fetch_add(1, Ordering::SeqCst);
        let hit = self
            .countdown
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| (c > 0).then(|| c - 1))
            .is_ok_and(|prev| prev == 1);
        if hit {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }
}

/// Builds hardware models for hosts that simulate units (the bare-metal harness, a vIOMMU
/// offered to guests). Backends provide one beside their plugin; the binary or test wires the
/// concrete factories in, so that hosts never name a backend.
pub trait ModelFactory: Send + Sync {
    /// Name of the plugin whose units it models (`mock`, `vtd`, ...).
    fn plugin(&self) -> &str;
    /// Builds one unit's model from its TOML table (model-specific keys; empty: defaults).
    fn build(&self, config: &toml::Table) -> Result<std::sync::Arc<dyn UnitModel>, String>;
    /// The register window size of a unit.
    fn window(&self) -> u64 {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_nth_fails_exactly_the_nth() {
        let f = FailNth::default();
        f.arm(3);
        let fails: Vec<bool> = (0..5).map(|_| f.should_fail()).collect();
        assert_eq!(fails, vec![false, false, true, false, false]);
        assert_eq!(f.allocations(), 5);
        assert_eq!(f.injected(), 1);
        f.arm(0);
        assert!(!f.should_fail());
    }
}
