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

use std::collections::BTreeMap;
use std::sync::Arc;

use ioasis::platform::{GuestMapping, ModelQueryError};
use ioasis::{Context, DeviceRef, IoasId, Iova, PhysAddr, Prot, UnmapMode};

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
    /// The host IOAS refused to unmap a mapping this shadow made (a backend failure).
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
        Self { ctx, ioas, mapped: BTreeMap::new() }
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
    pub fn sync(&mut self, viommu: &Viommu, slots: &MemorySlots, dev: DeviceRef) -> Result<SyncStats, ShadowError> {
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

    /// The shadow of guest mapping `g`, or `None` (logged) when its guest-physical page is not
    /// wholly inside one memory slot, or it would give no permission.
    fn convert(mem: &GuestPhys, g: &GuestMapping) -> Option<ShadowMapping> {
        let gpa = g.addr.raw();
        let Some(pa) = mem.to_machine(gpa, g.len) else {
            tracing::warn!(iova = %g.iova, gpa, len = g.len, "guest maps memory outside guest RAM; not shadowed");
            return None;
        };
        // `to_machine` succeeded, so a slot contains the page.
        let read_only = mem
            .slots()
            .iter()
            .any(|s| gpa.wrapping_sub(s.gpa) < s.len && s.flags & kvm_bindings::KVM_MEM_READONLY != 0);
        let prot = if read_only { Prot(g.prot.0 & Prot::READ.0) } else { g.prot };
        if prot == Prot::NONE {
            tracing::warn!(iova = %g.iova, gpa, "guest maps a read-only slot for writing only; not shadowed");
            return None;
        }
        Some(ShadowMapping { iova: g.iova, gpa, pa, len: g.len, prot })
    }
}
