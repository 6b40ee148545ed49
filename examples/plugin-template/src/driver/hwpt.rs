//! HWPTs: the page table of acme spec §3 on the framework's walker ([`ioasis::pt`]), and the
//! blocking kind.

use std::sync::{Arc, Mutex};

use ioasis::abi::{CacheInvalidation, HwptInfo, HwptKind, PluginError, Translation};
use ioasis::plugin::HwptDriver;
use ioasis::pt::{self, Format, Geometry};
use ioasis::{Iova, IovaRange, PageSizes, PhysAddr, Prot, PtFormat};

use super::unit::Core;
use crate::error::{DriverError, Result};
use crate::layout::{cap, inv, pte, ADDR_MASK, FORMAT};

/// An acme-tiny page table.
pub type PageTable = pt::PageTable<AcmeFormat>;

/// The entries of §3, for the walker: 4 KiB leaves at level 0, table pointers above.
#[derive(Clone, Copy, Debug, Default)]
pub struct AcmeFormat;

impl Format for AcmeFormat {
    const ADDR: u64 = ADDR_MASK;

    fn present(&self, e: u64) -> bool {
        e & pte::P != 0
    }
    fn is_leaf(&self, _e: u64, level: u32) -> bool {
        level == 0
    }
    fn table(&self, table: u64) -> u64 {
        pte::P | table
    }
    fn leaf_attrs(&self, prot: Prot) -> u64 {
        pte::P | if prot.read() { pte::R } else { 0 } | if prot.write() { pte::W } else { 0 }
    }
    fn leaf(&self, attrs: u64, pa: u64, _level: u32) -> u64 {
        attrs | pa
    }
    fn attrs_of(&self, e: u64, _level: u32) -> u64 {
        e & !ADDR_MASK
    }
    fn leaf_addr(&self, e: u64, _level: u32) -> u64 {
        e & ADDR_MASK
    }
    fn leaf_prot(&self, e: u64) -> Prot {
        let r = if e & pte::R != 0 { Prot::READ } else { Prot::NONE };
        let w = if e & pte::W != 0 { Prot::WRITE } else { Prot::NONE };
        r | w
    }
    /// The unit sets D (§3), but the driver offers no dirty tracking: nothing to harvest.
    fn dirty_bits(&self) -> u64 {
        0
    }
}

/// The shape of every acme-tiny table.
pub fn geometry() -> Geometry {
    Geometry { levels: pte::LEVELS, sizes: PageSizes::SZ_4K, ias: cap::IAS_BITS }
}

/// A HWPT's state, shared with the unit while devices are attached to it.
pub struct HwptInner {
    pub(super) core: Arc<Core>,
    pub(super) kind: HwptKind,
    /// Unique per unit: the host's handle.
    pub(super) handle: u64,
    /// The domain id tagging its IOTLB entries (§2); 0 for blocking.
    pub(super) did: u16,
    /// The page table (paging), or none (blocking).
    pub(super) table: Option<PageTable>,
    /// Serialises changes to the page table.
    lock: Mutex<()>,
}

impl HwptInner {
    /// A paging HWPT: a domain id and an empty table.
    pub(super) fn paging(core: &Arc<Core>) -> Result<Self> {
        let did = core.alloc_did()?;
        match PageTable::new(&core.io, geometry(), AcmeFormat) {
            Ok(t) => Ok(Self::new(core, HwptKind::PAGING, did, Some(t))),
            Err(e) => {
                core.free_did(did);
                Err(e.into())
            }
        }
    }

    /// A blocking HWPT: attaching it clears the device's entry.
    pub(super) fn blocking(core: &Arc<Core>) -> Self {
        Self::new(core, HwptKind::BLOCKING, 0, None)
    }

    fn new(core: &Arc<Core>, kind: HwptKind, did: u16, table: Option<PageTable>) -> Self {
        Self { core: core.clone(), kind, handle: core.next_handle(), did, table, lock: Mutex::new(()) }
    }

    fn table(&self) -> Result<&PageTable> {
        self.table
            .as_ref()
            .ok_or_else(|| DriverError::Invalid(format!("a {} HWPT has no page table", self.kind.name())))
    }

    /// Drops the IOTLB entries of `[iova, iova+len)` (len 0: all) and waits for it (§4).
    fn flush(&self, iova: u64, len: u64) -> Result<()> {
        self.core.io.invalidate(inv::OP_IOTLB, self.did, iova, len)
    }

    fn map(&self, iova: u64, pa: u64, len: u64, prot: Prot) -> Result<()> {
        let t = self.table()?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // A map fills only entries that were not present, which the unit never caches (§4):
        // no invalidation.
        Ok(t.map(&self.core.io, iova, pa, len, prot)?)
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<u64> {
        let t = self.table()?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let done = t.unmap(&self.core.io, iova, len)?;
        // One invalidation for the whole range, and its completion waited for; the table
        // pages the unmap unlinked go back only after it.
        let flushed = match done.flush {
            Some((a, l)) => self.flush(a, l),
            None => Ok(()),
        };
        done.freed.release(&self.core.io);
        flushed?;
        Ok(done.bytes)
    }

    fn split(&self, iova: u64) -> Result<()> {
        let t = self.table()?;
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        // 4 KiB pages only: every address is a leaf boundary already.
        Ok(t.split(&self.core.io, iova)?)
    }
}

impl Drop for HwptInner {
    fn drop(&mut self) {
        if let Some(t) = &self.table {
            // No device uses the DID any more; drop what the unit cached under it before
            // the DID is given to another table.
            if let Err(e) = self.flush(0, 0) {
                self.core.io.log(ioasis::abi::LogLevel::Error, &format!("freeing DID {}: {e}", self.did));
            }
            t.destroy(&self.core.io);
            self.core.free_did(self.did);
        }
    }
}

/// The object handed to the host.
#[derive(Clone)]
pub struct AcmeHwpt(pub Arc<HwptInner>);

impl HwptDriver for AcmeHwpt {
    fn info(&self) -> HwptInfo {
        let h = &self.0;
        let (format, page_sizes) = match h.table {
            Some(_) => (FORMAT, PageSizes::SZ_4K),
            None => (PtFormat::NONE, PageSizes(0)),
        };
        HwptInfo {
            kind: h.kind,
            format,
            page_sizes,
            aperture: IovaRange { start: Iova(0), last: Iova((1u64 << cap::IAS_BITS) - 1) },
            handle: h.handle,
        }
    }

    fn map(&self, iova: Iova, pa: PhysAddr, len: u64, prot: Prot) -> Result<(), PluginError> {
        Ok(self.0.map(iova.0, pa.0, len, prot)?)
    }

    fn unmap(&self, iova: Iova, len: u64) -> Result<u64, PluginError> {
        Ok(self.0.unmap(iova.0, len)?)
    }

    fn split(&self, iova: Iova) -> Result<(), PluginError> {
        Ok(self.0.split(iova.0)?)
    }

    fn translate(&self, iova: Iova) -> Option<Translation> {
        let t = self.0.table().ok()?;
        t.translation(&self.0.core.io, iova.0)
    }

    fn set_dirty_tracking(&self, _enable: bool) -> Result<(), PluginError> {
        Err(DriverError::Unsupported("dirty tracking".into()).into())
    }

    fn read_and_clear_dirty(
        &self,
        _iova: Iova,
        _len: u64,
        _page_shift: u8,
        _bitmap: &mut [u64],
        _keep: bool,
    ) -> Result<(), PluginError> {
        Err(DriverError::Unsupported("dirty tracking".into()).into())
    }

    fn invalidate(&self, _reqs: &[CacheInvalidation]) -> Result<u32, PluginError> {
        Err(DriverError::Unsupported("nested translation".into()).into())
    }

    fn table_pages(&self) -> u64 {
        match &self.0.table {
            Some(t) => t.count_pages(&self.0.core.io).unwrap_or(0),
            None => 0,
        }
    }
}
