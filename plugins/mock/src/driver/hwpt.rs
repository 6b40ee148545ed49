//! The mock HWPT: a descriptor (mock spec §4) and, for paging, a page table (§5).

use std::sync::{Arc, Mutex, Weak};

use ioasis::abi::{CacheInvalidation, ErrorCode, HwptFlags, HwptInfo, HwptKind, PluginError, Translation};
use ioasis::plugin::HwptDriver;
use ioasis::pt::Memory;
use ioasis::{Iova, IovaRange, PageSizes, PhysAddr, Prot, PtFormat};

use super::pagetable::PageTable;
use super::unit::{Defect, UnitCore};
use crate::format::{desc, reg};

/// What a HWPT translates with.
pub enum Table {
    /// A paging table of its own.
    Paging(PageTable),
    /// A guest stage-1 over a paging parent.
    Nested {
        /// The stage-2 parent.
        parent: Arc<HwptInner>,
        /// Stage-1 format.
        format: PtFormat,
    },
    /// Identity or blocking: nothing but the descriptor.
    Fixed,
}

/// The HWPT's state, shared with the unit while devices are attached.
pub struct HwptInner {
    pub(super) core: Arc<UnitCore>,
    /// Descriptor page; also the HWPT's handle and IOTLB tag.
    pub desc: u64,
    pub(super) kind: HwptKind,
    pub(super) flags: HwptFlags,
    pub(super) table: Table,
    /// Serialises changes to the page table.
    pub(super) lock: Mutex<()>,
    /// Nested HWPTs over this one, whose IOTLB entries depend on this table.
    pub(super) children: Mutex<Vec<Weak<HwptInner>>>,
}

impl HwptInner {
    fn paging(&self) -> Result<&PageTable, PluginError> {
        match &self.table {
            Table::Paging(t) => Ok(t),
            _ => Err(PluginError::invalid(format!("a {} HWPT has no page table", self.kind.name()))),
        }
    }

    /// Invalidates this HWPT's IOTLB entries in a range (size 0: all), and every nested
    /// HWPT's entries built on them.
    fn flush(&self, iova: u64, size: u64) -> Result<(), PluginError> {
        self.core.io.invalidate(reg::INV_IOTLB_RANGE, self.desc, iova, size)?;
        let children: Vec<Arc<HwptInner>> =
            self.children.lock().unwrap_or_else(|p| p.into_inner()).iter().filter_map(Weak::upgrade).collect();
        for c in children {
            self.core.io.invalidate(reg::INV_IOTLB_RANGE, c.desc, 0, 0)?;
        }
        Ok(())
    }

    fn maybe_panic(&self, op: &str) {
        if self.core.params.panic_on.as_deref() == Some(op) {
            panic!("mock: injected panic in {op} (params.panic_on)");
        }
    }
}

impl Drop for HwptInner {
    fn drop(&mut self) {
        // The descriptor page is the IOTLB tag: drop what the unit cached under it before
        // the page (and so the tag) goes to another HWPT, whose devices would hit them.
        if let Err(e) = self.core.io.invalidate(reg::INV_IOTLB_RANGE, self.desc, 0, 0) {
            let msg = format!("invalidating the IOTLB entries of freed HWPT {:#x}: {e}", self.desc);
            self.core.io.log(ioasis::abi::LogLevel::Error, &msg);
        }
        if let Table::Paging(t) = &self.table {
            t.destroy(&self.core.io);
        }
        self.core.io.free(self.desc);
    }
}

/// The object handed to the host.
#[derive(Clone)]
pub struct MockHwpt(pub Arc<HwptInner>);

impl HwptDriver for MockHwpt {
    fn info(&self) -> HwptInfo {
        let h = &self.0;
        let (format, page_sizes, ias) = match &h.table {
            Table::Paging(t) => (ioasis::PtFormat::MOCK, t.geometry.sizes, t.geometry.ias),
            // Stage-1 leaves above 4 KiB need the unit's page-size bits as stage-2 ones do
            // (mock spec §5): the parent's sizes.
            Table::Nested { format, parent } => {
                let sizes = parent.paging().map_or(PageSizes(1 << 12), |t| t.geometry.sizes);
                (*format, sizes, parent.paging().map_or(48, |t| t.geometry.ias))
            }
            Table::Fixed => (PtFormat::NONE, PageSizes(0), h.core.caps_ias()),
        };
        let last = if ias >= 64 { u64::MAX } else { (1u64 << ias) - 1 };
        HwptInfo {
            kind: h.kind,
            format,
            page_sizes,
            aperture: IovaRange { start: Iova(0), last: Iova(last) },
            handle: h.desc,
        }
    }

    fn map(&self, iova: Iova, pa: PhysAddr, len: u64, prot: Prot) -> Result<(), PluginError> {
        let h = &self.0;
        h.maybe_panic("map");
        let t = h.paging()?;
        if h.core.params.defect == Some(Defect::LastPageRefused) {
            let top = 1u64 << t.geometry.ias.min(63);
            if iova.0.checked_add(len).is_none_or(|end| end >= top) {
                return Err(PluginError::new(ErrorCode::OUT_OF_RANGE, format!("{iova}+{len:#x} beyond the aperture")));
            }
        }
        let _g = h.lock.lock().unwrap_or_else(|p| p.into_inner());
        // A new mapping replaces only non-present entries, which the unit never caches:
        // no invalidation is needed (mock spec §1: faults are not cached).
        t.map(&h.core.io, iova.0, pa.0, len, prot)
    }

    fn unmap(&self, iova: Iova, len: u64) -> Result<u64, PluginError> {
        let h = &self.0;
        h.maybe_panic("unmap");
        let t = h.paging()?;
        let _g = h.lock.lock().unwrap_or_else(|p| p.into_inner());
        let done = t.unmap(&h.core.io, iova.0, len)?;
        let flushed = match done.flush {
            Some((a, l)) if h.core.params.defect != Some(Defect::SkipIotlbInvalidation) => h.flush(a, l),
            _ => Ok(()),
        };
        // Unlinked table pages go back only after the invalidation.
        done.freed.release(&h.core.io);
        flushed?;
        Ok(done.bytes)
    }

    fn split(&self, iova: Iova) -> Result<(), PluginError> {
        let h = &self.0;
        let t = h.paging()?;
        let _g = h.lock.lock().unwrap_or_else(|p| p.into_inner());
        t.split(&h.core.io, iova.0)
    }

    fn translate(&self, iova: Iova) -> Option<Translation> {
        let h = &self.0;
        let t = h.paging().ok()?;
        t.translation(&h.core.io, iova.0)
    }

    fn set_dirty_tracking(&self, enable: bool) -> Result<(), PluginError> {
        let h = &self.0;
        if !h.flags.contains(HwptFlags::DIRTY_TRACKING) {
            return Err(PluginError::unsupported("HWPT was not allocated with dirty tracking"));
        }
        let io = &h.core.io;
        let w0 = io.rd(h.desc)?;
        let new = if enable { w0 | desc::DIRTY_EN } else { w0 & !desc::DIRTY_EN };
        io.wr(h.desc, new)?;
        if h.core.params.defect == Some(Defect::DirtyEnableStaleDescriptor) {
            return h.flush(0, 0);
        }
        // The descriptor is cached per device: drop every cache.
        io.invalidate(reg::INV_ALL, 0, 0, 0)
    }

    fn read_and_clear_dirty(
        &self,
        iova: Iova,
        len: u64,
        page_shift: u8,
        bitmap: &mut [u64],
        keep: bool,
    ) -> Result<(), PluginError> {
        let h = &self.0;
        let t = h.paging()?;
        if let Some((a, l)) = t.read_and_clear_dirty(&h.core.io, iova.0, len, page_shift, bitmap, keep)? {
            if h.core.params.defect != Some(Defect::DirtyClearWithoutFlush) {
                h.flush(a, l)?;
            }
        }
        Ok(())
    }

    fn invalidate(&self, reqs: &[CacheInvalidation]) -> Result<u32, PluginError> {
        let h = &self.0;
        if h.kind != HwptKind::NESTED {
            return Err(PluginError::invalid("cache invalidation requests are for nested HWPTs"));
        }
        let mut n = 0;
        for r in reqs.iter() {
            match r.scope {
                CacheInvalidation::ALL | CacheInvalidation::PASID => {
                    h.core.io.invalidate(reg::INV_IOTLB_RANGE, h.desc, 0, 0)?
                }
                CacheInvalidation::RANGE if r.len > 0 => {
                    h.core.io.invalidate(reg::INV_IOTLB_RANGE, h.desc, r.iova.0, r.len)?
                }
                s => {
                    return Err(PluginError::new(
                        ErrorCode::INVALID,
                        format!("request {n}: unknown scope {s} or empty range"),
                    ))
                }
            }
            n += 1;
        }
        Ok(n)
    }

    fn table_pages(&self) -> u64 {
        let h = &self.0;
        match &h.table {
            Table::Paging(t) => 1 + t.count_pages(&h.core.io).unwrap_or(0),
            _ => 1,
        }
    }
}
