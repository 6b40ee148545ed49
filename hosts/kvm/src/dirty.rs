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
//!
//! **Slot changes between reads.** The log follows the slot set as it is at read time; bit `i`
//! is always page `i` of the slot's *backing* memory (its physical start does not change).
//! [`MemorySlots::move_slot`] and [`MemorySlots::resize`] first read and clear the slot's dirty
//! pages (KVM's log, which re-registering the slot would restart, and the tracked HWPTs' bits,
//! which unmapping the old range would drop) and keep them for the next read, so no write is
//! lost: the next read reports exactly what was written before and after the change. A
//! shrunk slot keeps the bits of the pages it still has. A removed slot's bits are dropped with
//! it (the memory left the guest). Writes that race with the change itself (a vCPU running or
//! a device doing DMA while the slot changes) can still be missed: pause them across it, as a
//! VMM does for a memory-map change anyway. Memory that joins the guest (a new slot, a grown
//! tail) is reported only where it is written: sending it whole is the VMM's choice.

use std::collections::{BTreeMap, BTreeSet};

use ioasis::{HwptId, IoasId, Iova};
use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;

use crate::{KvmError, MemorySlots, Slot, SlotError};

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
    /// The log was started on slots of another IOAS.
    #[error("this dirty log belongs to the slots of IOAS {log}, not {slots}")]
    WrongSlots {
        /// The IOAS of the slots the log was started on.
        log: IoasId,
        /// The IOAS of the slots given.
        slots: IoasId,
    },
}

/// Dirty-logging state kept in [`MemorySlots`], because slot changes must reach it.
#[derive(Debug, Default)]
pub(crate) struct DirtyState {
    /// HWPTs whose IOMMU dirty tracking a log turned on.
    tracked: BTreeSet<HwptId>,
    /// Per slot id: dirty bits read out of KVM and the HWPTs before a slot change (or by a read
    /// that then failed), in the slot's current page numbering, for the next read.
    pub(crate) carried: BTreeMap<u32, Vec<u64>>,
}

/// Words of a bitmap of `len` bytes in [`DIRTY_PAGE_SIZE`] pages.
fn words(len: u64) -> Result<usize, ioasis::Error> {
    usize::try_from((len / DIRTY_PAGE_SIZE).div_ceil(64))
        .map_err(|_| ioasis::Error::Invalid("slot bitmap too large".into()))
}

/// ORs `from` into `into` (up to the shorter of the two).
fn or_into(into: &mut [u64], from: &[u64]) {
    for (w, d) in into.iter_mut().zip(from) {
        *w |= d;
    }
}

/// Clears the bits past page `pages` in the last word.
fn mask_tail(bitmap: &mut [u64], pages: u64) {
    let rest = pages % 64;
    if let (Some(last), true) = (bitmap.last_mut(), rest != 0) {
        *last &= (1u64 << rest) - 1;
    }
}

/// Reads and clears `slot`'s dirty pages (KVM's log when the slot logs, and every tracked HWPT
/// still realising the IOAS) into the slot's carried bits. Called before `slot` changes; what
/// was read before a failure is kept too.
pub(crate) fn flush(slots: &MemorySlots, slot: &Slot) -> Result<(), SlotError> {
    let words = words(slot.len)?;
    let mut bits = vec![0u64; words];
    let mut state = slots.dirty_state();
    let result = read_into(slots, slot, &mut bits, &mut state.tracked);
    let carried = state.carried.entry(slot.id).or_insert_with(|| vec![0; words]);
    carried.resize(words, 0);
    or_into(carried, &bits);
    tracing::debug!(slot = slot.id, "dirty pages kept across a slot change");
    result.map_err(|e| match e {
        DirtyError::Kvm(k) => SlotError::Kvm(k),
        DirtyError::Ioas(i) => SlotError::Ioas(i),
        other => SlotError::Ioas(ioasis::Error::Invalid(other.to_string())),
    })
}

/// Fits slot `slot`'s carried bits to its (new) length after a resize.
pub(crate) fn fit_carried(slots: &MemorySlots, slot: &Slot) {
    let Ok(words) = words(slot.len) else { return };
    if let Some(c) = slots.dirty_state().carried.get_mut(&slot.id) {
        c.resize(words, 0);
        mask_tail(c, slot.len / DIRTY_PAGE_SIZE);
    }
}

/// ORs `slot`'s dirty pages into `bits` and clears them: KVM's log (when the slot logs), then
/// each HWPT of `tracked` still realising the IOAS (the others are removed from `tracked`).
/// Stops at the first failure, with what was read so far in `bits`.
fn read_into(
    slots: &MemorySlots,
    slot: &Slot,
    bits: &mut [u64],
    tracked: &mut BTreeSet<HwptId>,
) -> Result<(), DirtyError> {
    let ctx = slots.context();
    let current = ctx.ioas_hwpts(slots.ioas())?;
    tracked.retain(|h| current.contains(h));
    if slot.flags & KVM_MEM_LOG_DIRTY_PAGES != 0 {
        let size = usize::try_from(slot.len).map_err(|_| ioasis::Error::Invalid("slot too large".into()))?;
        let log = slots.vm().fd().get_dirty_log(slot.id, size).map_err(|e| KvmError::ioctl("KVM_GET_DIRTY_LOG", e))?;
        or_into(bits, &log);
    }
    for &hwpt in tracked.iter() {
        let dev = ctx.read_dirty(hwpt, Iova(slot.gpa), slot.len, DIRTY_PAGE_SIZE, false)?;
        or_into(bits, &dev);
    }
    Ok(())
}

/// Dirty logging of a [`MemorySlots`]'s vCPU and device writes, per slot.
///
/// KVM's half is the slot's `KVM_MEM_LOG_DIRTY_PAGES` flag (set when the slot is added); the
/// IOMMU half is the dirty tracking this log turns on for every HWPT realising the slots' IOAS.
/// That state, and the dirty bits kept across slot changes, live in the [`MemorySlots`], so one
/// log at a time per slots (a second one started on the same slots shares the same state).
#[derive(Debug)]
pub struct DirtyLog {
    ioas: IoasId,
}

impl DirtyLog {
    /// Turns IOMMU dirty tracking on for every HWPT realising `slots`' IOAS. Device writes from
    /// here on are reported. Fails with [`DirtyError::Untracked`] (and turns tracking back off
    /// where it turned it on) when a HWPT cannot track dirty pages.
    pub fn start(slots: &MemorySlots) -> Result<Self, DirtyError> {
        let log = Self { ioas: slots.ioas() };
        let mut state = slots.dirty_state();
        if let Err(e) = track_new(slots, &mut state.tracked) {
            drop(state);
            if let Err(undo) = log.stop(slots) {
                tracing::error!(error = %undo, "turning dirty tracking back off failed");
            }
            return Err(e);
        }
        tracing::info!(ioas = %slots.ioas(), hwpts = state.tracked.len(), "dirty logging started");
        Ok(log)
    }

    /// The HWPTs whose dirty tracking this log turned on.
    pub fn tracked(&self, slots: &MemorySlots) -> Vec<HwptId> {
        slots.dirty_state().tracked.iter().copied().collect()
    }

    fn check(&self, slots: &MemorySlots) -> Result<(), DirtyError> {
        if slots.ioas() != self.ioas {
            return Err(DirtyError::WrongSlots { log: self.ioas, slots: slots.ioas() });
        }
        Ok(())
    }

    /// Reads and clears the dirty pages of slot `slot_id`: bit `i` of the result (word `i / 64`,
    /// bit `i % 64`) is 4 KiB page `i` of the slot, set when a vCPU (KVM's dirty log, cleared by
    /// `KVM_GET_DIRTY_LOG`) or a device through any HWPT of the IOAS (its dirty bits, cleared)
    /// wrote it since the previous read. Reads by either side never count.
    ///
    /// HWPTs are checked before anything is cleared. If reading the IOMMU dirty bits fails after
    /// KVM's log was read, what was read is kept for the next read: nothing is lost.
    ///
    /// Dirty pages read out before the slot was moved or resized ([`MemorySlots::move_slot`],
    /// [`MemorySlots::resize`]) are reported here too, so a slot change between two reads loses
    /// nothing (see the module docs).
    pub fn read_and_clear(&mut self, slots: &MemorySlots, slot_id: u32) -> Result<Vec<u64>, DirtyError> {
        self.check(slots)?;
        let slot = *slots.get(slot_id).ok_or(DirtyError::NoSuchSlot(slot_id))?;
        if slot.flags & KVM_MEM_LOG_DIRTY_PAGES == 0 {
            return Err(DirtyError::NotLogging(slot_id));
        }
        let mut state = slots.dirty_state();
        // Forget HWPTs that no longer realise the IOAS; start tracking new ones.
        let current = slots.context().ioas_hwpts(slots.ioas())?;
        state.tracked.retain(|h| current.contains(h));
        let fresh = track_new(slots, &mut state.tracked)?;

        let pages = slot.len / DIRTY_PAGE_SIZE;
        let mut bitmap = vec![0u64; words(slot.len)?];
        let result = read_into(slots, &slot, &mut bitmap, &mut state.tracked);
        if let Some(kept) = state.carried.remove(&slot_id) {
            or_into(&mut bitmap, &kept);
        }
        if let Err(e) = result {
            // Keep what was read (KVM's log is cleared by reading it) for the next read.
            state.carried.insert(slot_id, bitmap);
            return Err(e);
        }
        if fresh {
            // A HWPT's writes before its tracking started are unknown: the whole slot is dirty.
            tracing::warn!(slot = slot_id, "a HWPT started tracking this round: reporting the whole slot dirty");
            bitmap.fill(u64::MAX);
        }
        mask_tail(&mut bitmap, pages);
        Ok(bitmap)
    }

    /// Turns IOMMU dirty tracking off on the HWPTs this log turned it on for (those still alive).
    /// Dirty bits kept across slot changes stay for a later log (KVM keeps logging a slot
    /// added with `KVM_MEM_LOG_DIRTY_PAGES` anyway).
    pub fn stop(self, slots: &MemorySlots) -> Result<(), DirtyError> {
        self.check(slots)?;
        let ctx = slots.context();
        let current = ctx.ioas_hwpts(slots.ioas())?;
        let mut state = slots.dirty_state();
        let tracked = std::mem::take(&mut state.tracked);
        for hwpt in tracked.into_iter().filter(|h| current.contains(h)) {
            ctx.set_dirty_tracking(hwpt, false)?;
        }
        Ok(())
    }
}

/// Turns tracking on for HWPTs of the IOAS not in `tracked` yet; true when there were any.
fn track_new(slots: &MemorySlots, tracked: &mut BTreeSet<HwptId>) -> Result<bool, DirtyError> {
    let ctx = slots.context();
    let mut fresh = false;
    for hwpt in ctx.ioas_hwpts(slots.ioas())? {
        if tracked.contains(&hwpt) {
            continue;
        }
        ctx.set_dirty_tracking(hwpt, true).map_err(|source| DirtyError::Untracked { hwpt, source })?;
        tracing::debug!(%hwpt, "IOMMU dirty tracking on");
        tracked.insert(hwpt);
        fresh = true;
    }
    Ok(fresh)
}
