//! Shadow mappings for a passthrough device behind a vIOMMU (issue 5, item 2, shadow half).
//!
//! When the host cannot nest the guest's tables (stage-1) on its own paging (stage-2), a VMM
//! shadows them: it reads what the guest mapped in the vIOMMU ([`ioasis::platform::UnitModel::guest_mappings`],
//! guest-physical outputs), converts every guest-physical page to machine memory through the
//! VM's memory slots, and keeps a host IOAS — the one the passthrough device is attached to —
//! mapping exactly that: IOVA (as the guest sees it) → machine address.
//!
//! The VMM calls [`Shadow::sync`] after the guest invalidated (an MMIO write to the vIOMMU's
//! IOTLB or context-command register, or a queued invalidation wait): the guest's tables in
//! memory are then what the device may use. Between invalidations the host keeps the last
//! synced translation, as a real IOTLB would.
//!
//! Untrusted input: the guest controls its tables. The walk is bounded ([`Shadow::LIMIT`]); a
//! guest page outside every memory slot (or straddling slots) is never mapped (skipped with a
//! warning); a writable guest mapping of a read-only slot is mapped read-only; a mapping the
//! host IOAS refuses (e.g. an IOVA in the x86 MSI window) is skipped with a warning.
//!
//! **Dirty tracking.** A shadow registers itself with the memory slots it is synced with, so
//! that their [`DirtyLog`](crate::dirty::DirtyLog) reads what the device writes through the
//! shadow IOAS's HWPTs (at the slot page of the machine page written), and requires those
//! HWPTs to track dirty pages while it runs. Before a sync unmaps a mapping, and in
//! [`Shadow::release`], the dirty bits collected through it are read out and kept for the
//! log's next read: the unmap would drop them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use ioasis::platform::{GuestMapping, ModelQueryError};
use ioasis::{Context, DeviceRef, IoasId, Iova, PhysAddr, Prot, UnmapMode};

use crate::dirty::{self, DirtyHandle, DirtyState};
use crate::viommu::{GuestPhys, Viommu};
use crate::MemorySlots;

/// Why a [`Shadow::sync`] did not complete. After an error, [`Shadow::mappings`] still says
/// exactly what the host IOAS maps; a later `sync` continues from there.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    /// The vIOMMU could not list the device's mappings: its translation mode cannot be shadowed
    /// ([`ModelQueryError::Unsupported`]: e.g. translation disabled or pass-through, where the
    /// device belongs in the slots' IOAS instead), too many leaves, or broken structures.
    #[error("cannot read the guest's mappings: {0}")]
    Query(#[from] ModelQueryError),
    /// The host IOAS refused to unmap a mapping this shadow made (a backend failure), or the
    /// dirty bits of a mapping about to be unmapped could not be read out (it stays mapped).
    #[error("host IOAS refused to unmap a shadow mapping: {0}")]
    Ioas(#[from] ioasis::Error),
}

/// What one [`Shadow::sync`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Mappings added to the host IOAS.
    pub mapped: usize,
    /// Mappings removed from it (gone from, or changed in, the guest's tables).
    pub unmapped: usize,
    /// Mappings already in step.
    pub kept: usize,
    /// Guest mappings not shadowed (outside guest RAM, or refused by the host IOAS).
    pub skipped: usize,
}

/// One shadow mapping in the host IOAS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShadowMapping {
    /// The guest's IOVA (also the host IOVA).
    pub iova: Iova,
    /// The guest-physical page the guest mapped.
    pub gpa: u64,
    /// Its machine-physical address.
    pub pa: PhysAddr,
    /// Length (the guest's page size).
    pub len: u64,
    /// Permissions in the host IOAS.
    pub prot: Prot,
}

/// A host IOAS kept in step with one device's translation in a vIOMMU (see the module docs).
pub struct Shadow {
    ctx: Arc<Context>,
    ioas: IoasId,
    /// What the host IOAS maps now, by IOVA.
    mapped: BTreeMap<u64, ShadowMapping>,
    /// The dirty state of the memory slots last synced with, where this shadow is registered.
    dirty: Option<Weak<Mutex<DirtyState>>>,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow").field("ioas", &self.ioas).field("mapped", &self.mapped.len()).finish_non_exhaustive()
    }
}

impl Shadow {
    /// Most leaves read from the guest's tables in one sync (65536: 256 MiB of 4 KiB pages).
    pub const LIMIT: usize = 1 << 16;

    /// A shadow of `ioas` in `ctx`, which the passthrough device is (or will be) attached to,
    /// and which has no other mappings.
    pub fn new(ctx: Arc<Context>, ioas: IoasId) -> Self {
        Self { ctx, ioas, mapped: BTreeMap::new(), dirty: None }
    }

    /// The host IOAS.
    pub fn ioas(&self) -> IoasId {
        self.ioas
    }

    /// What the host IOAS maps now, by IOVA.
    pub fn mappings(&self) -> impl Iterator<Item = &ShadowMapping> {
        self.mapped.values()
    }

    /// Brings the host IOAS in step with what `dev` (requests without PASID) may reach
    /// through `viommu` now: reads the guest's tables (through the current memory `slots`),
    /// unmaps what the guest no longer maps (or maps differently), then maps what is new. A
    /// device the vIOMMU blocks ends up with nothing mapped.
    ///
    /// The shadow registers with `slots`' dirty state (see the module docs). A mapping about
    /// to be unmapped first has its dirty bits read out for a running
    /// [`DirtyLog`](crate::dirty::DirtyLog); if that fails the sync stops with the mapping
    /// still in place.
    pub fn sync(&mut self, viommu: &Viommu, slots: &MemorySlots, dev: DeviceRef) -> Result<SyncStats, ShadowError> {
        self.register(slots.dirty_handle());
        let mem = GuestPhys::of(slots);
        let guest = match viommu.model().guest_mappings(&mem, dev, None, Self::LIMIT) {
            Ok(v) => v,
            Err(ModelQueryError::Blocked) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut stats = SyncStats::default();
        let mut wanted: BTreeMap<u64, ShadowMapping> = BTreeMap::new();
        for g in guest {
            match Self::convert(&mem, &g) {
                Some(m) => {
                    wanted.insert(m.iova.raw(), m);
                }
                None => stats.skipped += 1,
            }
        }
        // Unmap first: a changed mapping is removed before its replacement goes in.
        let stale: Vec<ShadowMapping> =
            self.mapped.values().filter(|m| wanted.get(&m.iova.raw()) != Some(m)).copied().collect();
        for m in stale {
            self.keep_dirty(&m)?;
            self.ctx.unmap(self.ioas, m.iova, m.len, UnmapMode::Exact)?;
            self.mapped.remove(&m.iova.raw());
            stats.unmapped += 1;
        }
        for (iova, m) in wanted {
            if self.mapped.contains_key(&iova) {
                stats.kept += 1;
                continue;
            }
            match self.ctx.map(self.ioas, Some(m.iova), m.pa, m.len, m.prot) {
                Ok(_) => {
                    self.mapped.insert(iova, m);
                    stats.mapped += 1;
                }
                Err(e) => {
                    tracing::warn!(iova = %m.iova, gpa = m.gpa, len = m.len, error = %e, "guest mapping refused by the host IOAS; not shadowed");
                    stats.skipped += 1;
                }
            }
        }
        tracing::debug!(%dev, ?stats, "shadow synced");
        Ok(stats)
    }

    /// Unmaps everything, after reading out what the device wrote through the shadow since the
    /// last [`DirtyLog::read_and_clear`](crate::dirty::DirtyLog::read_and_clear) and keeping it
    /// for the next one, and leaves the slots' dirty state. Call it once the device no longer
    /// uses the shadow IOAS, before destroying the IOAS or its HWPTs. If reading fails nothing
    /// is unmapped.
    pub fn release(&mut self) -> Result<(), ShadowError> {
        if let Some(handle) = self.dirty.as_ref().and_then(Weak::upgrade) {
            let mut state = dirty::lock(&handle);
            for m in self.mapped.values().filter(|m| m.prot.write()) {
                dirty::keep_shadow_range(&self.ctx, &mut state, self.ioas, m.iova.raw(), m.pa.raw(), m.len)?;
            }
        }
        self.ctx.unmap_all(self.ioas)?;
        self.mapped.clear();
        self.deregister();
        Ok(())
    }

    /// Registers with the dirty state `handle` (leaving any other).
    fn register(&mut self, handle: &DirtyHandle) {
        if self.dirty.as_ref().and_then(Weak::upgrade).is_some_and(|h| Arc::ptr_eq(&h, handle)) {
            return;
        }
        self.deregister();
        dirty::register_shadow(&mut dirty::lock(handle), self.ioas);
        self.dirty = Some(Arc::downgrade(handle));
    }

    fn deregister(&mut self) {
        if let Some(handle) = self.dirty.take().and_then(|w| w.upgrade()) {
            dirty::deregister_shadow(&mut dirty::lock(&handle), self.ioas);
        }
    }

    /// Reads out and keeps the dirty bits of mapping `m`, about to be unmapped.
    fn keep_dirty(&self, m: &ShadowMapping) -> Result<(), ioasis::Error> {
        let Some(handle) = self.dirty.as_ref().and_then(Weak::upgrade) else { return Ok(()) };
        if !m.prot.write() {
            return Ok(());
        }
        let mut state = dirty::lock(&handle);
        dirty::keep_shadow_range(&self.ctx, &mut state, self.ioas, m.iova.raw(), m.pa.raw(), m.len)
    }

    /// The shadow of guest mapping `g`, or `None` (logged) when its guest-physical page is not
    /// wholly inside one memory slot, or it would give no permission.
    fn convert(mem: &GuestPhys, g: &GuestMapping) -> Option<ShadowMapping> {
        let gpa = g.addr.raw();
        let Some((pa, allowed)) = mem.resolve(gpa, g.len) else {
            tracing::warn!(iova = %g.iova, gpa, len = g.len, "guest maps memory outside guest RAM; not shadowed");
            return None;
        };
        // A read-only slot's memory allows reading only.
        let prot = Prot(g.prot.0 & allowed.0);
        if prot == Prot::NONE {
            tracing::warn!(iova = %g.iova, gpa, "guest maps a read-only slot for writing only; not shadowed");
            return None;
        }
        Some(ShadowMapping { iova: g.iova, gpa, pa, len: g.len, prot })
    }
}

impl Drop for Shadow {
    /// Leaves the slots' dirty state (see [`Shadow::release`] to keep what was written first).
    fn drop(&mut self) {
        self.deregister();
    }
}
