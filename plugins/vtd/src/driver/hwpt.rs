//! VT-d HWPTs: a domain id (DID) and, for paging, a second-stage page table (VT-d spec 9.8).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use ioasis::abi::{CacheInvalidation, HwptFlags, HwptInfo, HwptKind, PluginError, Translation};
use ioasis::plugin::HwptDriver;
use ioasis::pt::Memory;
use ioasis::{Iova, IovaRange, PageSizes, PhysAddr, Prot, PtFormat};

use super::inv::Desc;
use super::pagetable::PageTable;
use super::unit::{Defect, UnitCore};
use crate::layout::qi;
use crate::layout::tables::pasid_entry;

/// What a HWPT translates with.
pub enum Table {
    /// A second-stage table of its own.
    Paging(PageTable),
    /// A guest x86-64 first stage over a paging parent (PGTT 011, 9.6).
    Nested {
        /// The second-stage parent.
        parent: Arc<HwptInner>,
        /// FSPTPTR: the stage-1 root, a parent IOVA (guest physical).
        s1_root: u64,
    },
    /// Identity or blocking: no table.
    Fixed,
}

/// One device (or PASID of it) that uses a HWPT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct User {
    /// Source id.
    pub sid: u16,
    /// The PASID its entry is for (scalable mode; 0 = RID_PASID), `None` in legacy mode.
    pub pasid: Option<u32>,
    /// The PASID-table entry (scalable) or context entry (legacy).
    pub entry: u64,
    /// The device-TLB is enabled for it (ATS).
    pub ats: bool,
}

/// The HWPT's state, shared with the unit while devices are attached.
pub struct HwptInner {
    pub(super) core: Arc<UnitCore>,
    /// Handle, unique per unit.
    pub handle: u64,
    /// Domain id (0 for blocking: it tags nothing).
    pub did: u16,
    pub(super) kind: HwptKind,
    pub(super) flags: HwptFlags,
    pub(super) table: Table,
    /// Serialises changes to the page table.
    pub(super) lock: Mutex<()>,
    /// SSADE wanted in the entries that use it.
    pub(super) dirty_on: AtomicBool,
    /// Entries that point at it.
    pub(super) users: Mutex<Vec<User>>,
    /// Nested HWPTs over this one, whose cached translations depend on this table.
    pub(super) children: Mutex<Vec<Weak<HwptInner>>>,
    /// The DID is a vIOMMU's, shared with it and its other nested HWPTs (freed by the last
    /// holder); `None`: the HWPT owns `did`.
    pub(super) shared_did: Option<Arc<SharedDid>>,
}

/// A domain id shared by a vIOMMU and the nested HWPTs allocated in it (the VM's tag, 3.4.2),
/// returned to the unit when the last of them is gone.
pub struct SharedDid {
    pub(super) core: Arc<UnitCore>,
    /// The domain id.
    pub did: u16,
}

impl Drop for SharedDid {
    fn drop(&mut self) {
        self.core.free_did(self.did);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl HwptInner {
    pub(super) fn paging(&self) -> Result<&PageTable, PluginError> {
        match &self.table {
            Table::Paging(t) => Ok(t),
            _ => Err(PluginError::invalid(format!("a {} HWPT has no page table", self.kind.name()))),
        }
    }

    /// The users, copied.
    pub(super) fn users(&self) -> Vec<User> {
        lock(&self.users).clone()
    }

    pub(super) fn add_user(&self, u: User) {
        let mut users = lock(&self.users);
        users.retain(|x| x.entry != u.entry);
        users.push(u);
    }

    pub(super) fn remove_user(&self, entry: u64) {
        lock(&self.users).retain(|x| x.entry != entry);
    }

    fn children(&self) -> Vec<Arc<HwptInner>> {
        lock(&self.children).iter().filter_map(Weak::upgrade).collect()
    }

    /// SSADE for entries built on this second-stage table.
    pub(super) fn ssade(&self) -> bool {
        self.flags.contains(HwptFlags::DIRTY_TRACKING) && self.dirty_on.load(Ordering::SeqCst)
    }

    /// Invalidation descriptors for this domain's translations in a range (`None`: all): the
    /// IOTLB (6.5.2.3), in scalable mode the PASID-based IOTLB of each user (6.5.2.4), the
    /// device-TLB of ATS users (6.5.2.5), and every nested child's domain.
    pub(super) fn flush_descs(&self, range: Option<(u64, u64)>) -> Vec<Desc> {
        let c = &self.core;
        let mut b = match range {
            Some((iova, len)) => c.inv.iotlb_range(self.did, iova, len),
            None => vec![[qi::iotlb::q0(qi::iotlb::DOMAIN, self.did), 0]],
        };
        for u in self.users() {
            if let Some(p) = u.pasid {
                b.extend(c.inv.piotlb_range(self.did, p, range));
            }
            if u.ats {
                b.push(dev_tlb_all(u.sid));
            }
        }
        for child in self.children() {
            b.extend(child.flush_descs(None));
        }
        b
    }

    /// Flushes this domain's cached translations of a range (after a table change).
    pub(super) fn flush(&self, range: Option<(u64, u64)>) -> Result<(), PluginError> {
        self.core.write_buffer_flush()?;
        self.core.inv.submit(&self.core.io, &self.flush_descs(range))
    }
}

/// A device-TLB invalidation of the whole address space (6.5.2.5: S = 1 with address bits
/// 62:12 set).
pub fn dev_tlb_all(sid: u16) -> Desc {
    [qi::dev_tlb::q0(sid), qi::dev_tlb::ALL]
}

impl Drop for HwptInner {
    fn drop(&mut self) {
        if let Table::Paging(t) = &self.table {
            t.destroy(&self.core.io);
        }
        if self.did != 0 && self.shared_did.is_none() {
            self.core.free_did(self.did);
        }
    }
}

/// The object handed to the host.
#[derive(Clone)]
pub struct VtdHwpt(pub Arc<HwptInner>);

impl VtdHwpt {
    fn set_dirty(&self, enable: bool) -> Result<(), PluginError> {
        let h = &self.0;
        if !h.flags.contains(HwptFlags::DIRTY_TRACKING) {
            return Err(PluginError::unsupported("HWPT was not allocated with dirty tracking"));
        }
        let _g = lock(&h.lock);
        h.dirty_on.store(enable, Ordering::SeqCst);
        let c = &h.core;
        let mut batch = Vec::new();
        // 9.6: SSADE lives in qword 0 of each PASID entry that uses this second stage (its own
        // and its nested children's); one 8-byte store flips it, P stays set.
        let mut domains = vec![h.clone()];
        domains.extend(h.children());
        for d in &domains {
            for u in d.users() {
                let Some(p) = u.pasid else { continue };
                let q0 = c.io.rd(u.entry)?;
                let new = if enable { q0 | pasid_entry::SSADE } else { q0 & !pasid_entry::SSADE };
                if new != q0 {
                    c.io.wr(u.entry, new)?;
                    batch.push([qi::pc::q0(qi::pc::PASID, d.did, p), 0]);
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        for d in &domains {
            batch.extend(d.flush_descs(None));
        }
        c.inv.submit(&c.io, &batch)
    }

    fn dirty(&self, iova: u64, len: u64, page_shift: u8, bm: &mut [u64], keep: bool) -> Result<(), PluginError> {
        let h = &self.0;
        let t = h.paging()?;
        let _g = lock(&h.lock);
        // Atomic clears: the unit may set A/D in the same entry meanwhile.
        if let Some(range) = t.read_and_clear_dirty(&h.core.io, iova, len, page_shift, bm, keep)? {
            // Cached translations would not set D again: drop them for the range.
            if !h.core.bug(Defect::DirtyClearWithoutFlush) {
                h.flush(Some(range))?;
            }
        }
        Ok(())
    }

    fn nested_invalidate(&self, reqs: &[CacheInvalidation]) -> Result<u32, PluginError> {
        let h = &self.0;
        if h.kind != HwptKind::NESTED {
            return Err(PluginError::invalid("cache invalidation requests are for nested HWPTs"));
        }
        let c = &h.core;
        let mut batch = Vec::new();
        let users = h.users();
        let did = match &h.table {
            Table::Nested { parent, .. } if c.bug(Defect::NestedInvalidationParentDid) => parent.did,
            _ => h.did,
        };
        for (n, r) in reqs.iter().enumerate() {
            let range = match r.scope {
                CacheInvalidation::ALL | CacheInvalidation::PASID => None,
                CacheInvalidation::RANGE if r.len > 0 => Some((r.iova.0, r.len)),
                s => return Err(PluginError::invalid(format!("request {n}: unknown scope {s} or empty range"))),
            };
            // 6.5.2.4: first-stage translations are tagged by DID and PASID.
            for u in &users {
                batch.extend(c.inv.piotlb_range(did, u.pasid.unwrap_or(0), range));
                if u.ats {
                    batch.push(dev_tlb_all(u.sid));
                }
            }
        }
        c.inv.submit(&c.io, &batch)?;
        Ok(reqs.len() as u32)
    }
}

impl HwptDriver for VtdHwpt {
    fn info(&self) -> HwptInfo {
        let h = &self.0;
        let c = &h.core;
        let (format, page_sizes) = match &h.table {
            Table::Paging(t) => (PtFormat::VTD_SECOND_LEVEL, t.geometry.sizes),
            // 9.7: 1 GiB first-stage leaves only where CAP.FS1GP (bit 56) is set.
            Table::Nested { .. } if c.cap & crate::layout::regs::cap::FS1GP != 0 => {
                (PtFormat::X86_64, PageSizes::SZ_4K_2M_1G)
            }
            Table::Nested { .. } => (PtFormat::X86_64, PageSizes::SZ_4K_2M),
            Table::Fixed => (PtFormat::NONE, PageSizes(0)),
        };
        HwptInfo {
            kind: h.kind,
            format,
            page_sizes,
            aperture: IovaRange { start: Iova(0), last: Iova((1u64 << c.ias) - 1) },
            handle: h.handle,
        }
    }

    fn map(&self, iova: Iova, pa: PhysAddr, len: u64, prot: Prot) -> Result<(), PluginError> {
        let h = &self.0;
        let t = h.paging()?;
        if h.core.bug(Defect::ApertureLastPageRefused)
            && iova.0.checked_add(len).is_none_or(|end| end >= 1u64 << h.core.ias)
        {
            return Err(PluginError::new(
                ioasis::abi::ErrorCode::OUT_OF_RANGE,
                format!("{iova}+{len:#x} is beyond the {}-bit aperture", h.core.ias),
            ));
        }
        let _g = lock(&h.lock);
        t.map(&h.core.io, iova.0, pa.0, len, prot)?;
        if h.core.cap & crate::layout::regs::cap::CM != 0 {
            // 6.1: with caching mode, not-present entries may be cached: invalidate.
            h.flush(Some((iova.0, len)))
        } else {
            h.core.write_buffer_flush()
        }
    }

    fn unmap(&self, iova: Iova, len: u64) -> Result<u64, PluginError> {
        let h = &self.0;
        let t = h.paging()?;
        let _g = lock(&h.lock);
        let done = t.unmap(&h.core.io, iova.0, len)?;
        let flushed = if done.flush.is_some() { h.flush(done.flush) } else { Ok(()) };
        // Unlinked table pages go back only after the invalidation has completed.
        done.freed.release(&h.core.io);
        flushed?;
        Ok(done.bytes)
    }

    fn split(&self, iova: Iova) -> Result<(), PluginError> {
        let h = &self.0;
        let t = h.paging()?;
        let _g = lock(&h.lock);
        // Identical translations in smaller pages: a cached large page stays correct, and a
        // later page-selective invalidation covers it (6.5.2.3: entries overlapping the range).
        t.split(&h.core.io, iova.0)
    }

    fn translate(&self, iova: Iova) -> Option<Translation> {
        let h = &self.0;
        let t = h.paging().ok()?;
        t.translation(&h.core.io, iova.0)
    }

    fn set_dirty_tracking(&self, enable: bool) -> Result<(), PluginError> {
        self.set_dirty(enable)
    }

    fn read_and_clear_dirty(
        &self,
        iova: Iova,
        len: u64,
        page_shift: u8,
        bitmap: &mut [u64],
        keep: bool,
    ) -> Result<(), PluginError> {
        self.dirty(iova.0, len, page_shift, bitmap, keep)
    }

    fn invalidate(&self, reqs: &[CacheInvalidation]) -> Result<u32, PluginError> {
        self.nested_invalidate(reqs)
    }

    fn table_pages(&self) -> u64 {
        match &self.0.table {
            Table::Paging(t) => t.count_pages(&self.0.core.io).unwrap_or(0),
            _ => 0,
        }
    }
}
