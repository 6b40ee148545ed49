//! Dirty tracking for live migration (issue 5, item 3): for one memory slot, a single bitmap
//! that is the union of KVM's dirty log (pages a vCPU wrote) and the IOMMU dirty bits of every
//! HWPT realising the slots' IOAS (pages a device wrote), read and cleared together.
//!
//! ```no_run
//! # use ioasis_kvm::MemorySlots;
//! use ioasis_kvm::dirty::DirtyLog;
//! # fn demo(slots: &MemorySlots) -> Result<(), Box<dyn std::error::Error>> {
//! // Slot 0 was added with `KVM_MEM_LOG_DIRTY_PAGES`; every HWPT of the IOAS tracks dirty pages.
//! let mut log = DirtyLog::start(slots)?;
//! loop {
//!     let bitmap = log.read_and_clear(slots, 0)?; // bit i = 4 KiB page i of slot 0
//!     if bitmap.iter().all(|w| *w == 0) {
//!         break; // converged: stop the vCPUs and devices, send the last round
//!     }
//!     // ... re-send the pages whose bits are set ...
//! }
//! log.stop(slots)?;
//! # Ok(()) }
//! ```
//!
//! **Safe behaviour.** A HWPT realising the IOAS that cannot track dirty pages (it was not
//! allocated with dirty tracking, e.g. the device's contract did not grant
//! `IntentItem::DirtyTracking`) would let device writes go unreported, so it is an error
//! ([`DirtyError::Untracked`]), never silently skipped. A HWPT that starts realising the IOAS
//! after [`DirtyLog::start`] (a device attached meanwhile) gets tracking turned on at the next
//! [`DirtyLog::read_and_clear`], and since its writes before that are unknown, that read reports
//! every page of the slot dirty.

use std::collections::BTreeSet;

use ioasis::{HwptId, Iova};
use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;

use crate::{KvmError, MemorySlots};

/// Granule of the merged bitmap: 4 KiB, the x86-64 host page size that KVM's dirty log uses.
pub const DIRTY_PAGE_SIZE: u64 = 4096;

/// Why dirty pages could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DirtyError {
    /// No slot with this id.
    #[error("no memory slot {0}")]
    NoSuchSlot(u32),
    /// The slot was not registered with `KVM_MEM_LOG_DIRTY_PAGES`, so KVM logs nothing for it.
    #[error("memory slot {0} was not registered with KVM_MEM_LOG_DIRTY_PAGES")]
    NotLogging(u32),
    /// `KVM_GET_DIRTY_LOG` failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A HWPT realising the slots' IOAS cannot track dirty pages: device writes through it would
    /// be missed.
    #[error("HWPT {hwpt} realising the slots' IOAS cannot track dirty pages: {source}")]
    Untracked {
        /// The HWPT.
        hwpt: HwptId,
        /// Why turning its dirty tracking on failed.
        source: ioasis::Error,
    },
    /// ioasis refused (listing HWPTs, reading their dirty bits).
    #[error("ioasis: {0}")]
    Ioas(#[from] ioasis::Error),
}

/// Dirty logging of a [`MemorySlots`]'s vCPU and device writes, per slot.
///
/// Holds the HWPTs whose IOMMU dirty tracking it turned on. KVM's half is the slot's
/// `KVM_MEM_LOG_DIRTY_PAGES` flag (set when the slot is added).
#[derive(Debug, Default)]
pub struct DirtyLog {
    tracked: BTreeSet<HwptId>,
}

impl DirtyLog {
    /// Turns IOMMU dirty tracking on for every HWPT realising `slots`' IOAS. Device writes from
    /// here on are reported. Fails with [`DirtyError::Untracked`] (and turns tracking back off
    /// where it turned it on) when a HWPT cannot track dirty pages.
    pub fn start(slots: &MemorySlots) -> Result<Self, DirtyError> {
        let mut log = Self::default();
        if let Err(e) = log.track_new(slots) {
            if let Err(undo) = log.stop(slots) {
                tracing::error!(error = %undo, "turning dirty tracking back off failed");
            }
            return Err(e);
        }
        tracing::info!(ioas = %slots.ioas(), hwpts = log.tracked.len(), "dirty logging started");
        Ok(log)
    }

    /// The HWPTs whose dirty tracking this log turned on.
    pub fn tracked(&self) -> impl Iterator<Item = HwptId> + '_ {
        self.tracked.iter().copied()
    }

    /// Reads and clears the dirty pages of slot `slot_id`: bit `i` of the result (word `i / 64`,
    /// bit `i % 64`) is 4 KiB page `i` of the slot, set when a vCPU (KVM's dirty log, cleared by
    /// `KVM_GET_DIRTY_LOG`) or a device through any HWPT of the IOAS (its dirty bits, cleared)
    /// wrote it since the previous read. Reads by either side never count.
    ///
    /// HWPTs are checked before anything is cleared. If reading the IOMMU dirty bits fails after
    /// KVM's log was read, that round's vCPU pages are lost: the caller must then re-send the
    /// whole slot.
    pub fn read_and_clear(&mut self, slots: &MemorySlots, slot_id: u32) -> Result<Vec<u64>, DirtyError> {
        let slot = *slots.get(slot_id).ok_or(DirtyError::NoSuchSlot(slot_id))?;
        if slot.flags & KVM_MEM_LOG_DIRTY_PAGES == 0 {
            return Err(DirtyError::NotLogging(slot_id));
        }
        let ctx = slots.context();
        // Forget HWPTs that no longer realise the IOAS; start tracking new ones.
        let current = ctx.ioas_hwpts(slots.ioas())?;
        self.tracked.retain(|h| current.contains(h));
        let fresh = self.track_new(slots)?;

        let words = usize::try_from((slot.len / DIRTY_PAGE_SIZE).div_ceil(64))
            .map_err(|_| ioasis::Error::Invalid("slot bitmap too large".into()))?;
        let size = usize::try_from(slot.len).map_err(|_| ioasis::Error::Invalid("slot too large".into()))?;
        let mut bitmap =
            slots.vm().fd().get_dirty_log(slot.id, size).map_err(|e| KvmError::ioctl("KVM_GET_DIRTY_LOG", e))?;
        bitmap.resize(words, 0);
        for &hwpt in &self.tracked {
            let dev = ctx.read_dirty(hwpt, Iova(slot.gpa), slot.len, DIRTY_PAGE_SIZE, false)?;
            for (w, d) in bitmap.iter_mut().zip(dev) {
                *w |= d;
            }
        }
        if fresh {
            // A HWPT's writes before its tracking started are unknown: the whole slot is dirty.
            tracing::warn!(slot = slot_id, "a HWPT started tracking this round: reporting the whole slot dirty");
            bitmap.fill(u64::MAX);
            let rest = (slot.len / DIRTY_PAGE_SIZE) % 64;
            if let (Some(last), true) = (bitmap.last_mut(), rest != 0) {
                *last = (1u64 << rest) - 1;
            }
        }
        Ok(bitmap)
    }

    /// Turns IOMMU dirty tracking off on the HWPTs this log turned it on for (those still alive).
    pub fn stop(self, slots: &MemorySlots) -> Result<(), DirtyError> {
        let ctx = slots.context();
        let current = ctx.ioas_hwpts(slots.ioas())?;
        for hwpt in self.tracked.into_iter().filter(|h| current.contains(h)) {
            ctx.set_dirty_tracking(hwpt, false)?;
        }
        Ok(())
    }

    /// Turns tracking on for HWPTs of the IOAS not tracked yet; true when there were any.
    fn track_new(&mut self, slots: &MemorySlots) -> Result<bool, DirtyError> {
        let ctx = slots.context();
        let mut fresh = false;
        for hwpt in ctx.ioas_hwpts(slots.ioas())? {
            if self.tracked.contains(&hwpt) {
                continue;
            }
            ctx.set_dirty_tracking(hwpt, true).map_err(|source| DirtyError::Untracked { hwpt, source })?;
            tracing::debug!(%hwpt, "IOMMU dirty tracking on");
            self.tracked.insert(hwpt);
            fresh = true;
        }
        Ok(fresh)
    }
}
