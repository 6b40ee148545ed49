//! Dirty tracking for live migration (issue 5, item 3): for one memory slot, a single bitmap
//! that is the union of KVM's dirty log (pages a vCPU wrote) and the IOMMU dirty bits of every
//! HWPT through which a device writes the slot's memory (pages a device wrote), read and
//! cleared together.
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
//! **The device half.** Devices write the slots' memory through two kinds of HWPT, and the log
//! reads both:
//!
//! - the HWPTs realising the slots' IOAS (IOVA = guest-physical), including the stage-2
//!   parent of a nested passthrough ([`Passthrough`](crate::passthrough::Passthrough) in
//!   [`Mode::Nested`](crate::passthrough::Mode::Nested)), whose dirty bits the host unit sets
//!   for writes through the guest's stage-1 too;
//! - the HWPTs realising a shadow IOAS ([`Shadow`](crate::shadow::Shadow), IOVA = the guest's
//!   IOVA, output = machine address). A shadow registers itself with the slots it is synced
//!   with; the log reads the dirty bits of each of its writable mappings and reports them at
//!   the slot page of the machine page written. A passthrough made migratable
//!   ([`PassthroughConfig::dirty_tracking`](crate::passthrough::PassthroughConfig)) allocates
//!   every HWPT it uses with dirty tracking and turns tracking on before the device can use a
//!   HWPT allocated while a log runs, so its writes are reported exactly from the first one.
//!
//! Dirty bits that would be lost because a mapping goes away — a shadow mapping the guest
//! unmapped (dropped by [`Shadow::sync`](crate::shadow::Shadow::sync)), a passthrough closed
//! ([`Passthrough::close`](crate::passthrough::Passthrough::close)) — are read out first and
//! kept, by machine page, for the next [`DirtyLog::read_and_clear`] of the slot holding that
//! page.
//!
//! **Safe behaviour.** A HWPT of either kind that cannot track dirty pages (it was not
//! allocated with dirty tracking, e.g. the device's contract did not grant
//! `IntentItem::DirtyTracking`, or a passthrough not made migratable) would let device writes
//! go unreported, so it is an error ([`DirtyError::Untracked`]), never silently skipped. A HWPT
//! that starts realising the IOAS after [`DirtyLog::start`] without the log knowing (a device
//! attached meanwhile) gets tracking turned on at the next [`DirtyLog::read_and_clear`], and
//! since its writes before that are unknown, the next read of *every* logging slot reports the
//! whole slot dirty, once.
//!
//! **Granularity.** Bits are 4 KiB pages; a HWPT leaf larger than that (a 2 MiB stage-2 page)
//! has one dirty bit, so a write to it reports all its 4 KiB pages.
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
use std::sync::{Arc, Mutex, MutexGuard};

use ioasis::{Context, HwptId, IoasId, Iova};
use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;

use crate::{KvmError, MemorySlots, Slot, SlotError};

/// Granule of the merged bitmap: 4 KiB, the x86-64 host page size that KVM's dirty log uses.
pub const DIRTY_PAGE_SIZE: u64 = 4096;

/// Most bytes of IOVA read with one `read_dirty` call (1 GiB: a 32 KiB bitmap), so that a
/// large mapping never needs one huge bitmap.
const CHUNK: u64 = 1 << 30;

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
    /// A HWPT through which a device writes the slots' memory (realising the slots' IOAS or a
    /// shadow IOAS) cannot track dirty pages: device writes through it would be missed.
    #[error(
        "HWPT {hwpt} of IOAS {ioas}, through which a device writes guest memory, cannot track dirty pages: {source}"
    )]
    Untracked {
        /// The HWPT.
        hwpt: HwptId,
        /// The IOAS it realises (the slots' or a shadow's).
        ioas: IoasId,
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

/// Dirty-logging state kept in [`MemorySlots`], because slot changes must reach it, and
/// shared (through [`DirtyHandle`]) with the shadows and passthroughs that feed it.
#[derive(Debug, Default)]
pub(crate) struct DirtyState {
    /// A log runs (from [`DirtyLog::start`] to [`DirtyLog::stop`]).
    active: bool,
    /// HWPTs realising the slots' IOAS whose IOMMU dirty tracking a log turned on.
    tracked: BTreeSet<HwptId>,
    /// Shadow IOASes registered by [`crate::shadow::Shadow::sync`], each with the HWPTs
    /// realising it whose dirty tracking a log turned on.
    shadows: BTreeMap<IoasId, BTreeSet<HwptId>>,
    /// Per slot id: dirty bits read out of KVM and the HWPTs before a slot change (or by a read
    /// that then failed), in the slot's current page numbering, for the next read.
    pub(crate) carried: BTreeMap<u32, Vec<u64>>,
    /// Device writes read out of a HWPT before the mapping they went through went away, by
    /// machine page: key = page number / 64, bit = page number % 64. Taken by the next read of
    /// the slot backed by that page.
    kept: BTreeMap<u64, u64>,
    /// Slots whose next read reports every page: a HWPT started tracking in the middle of a
    /// round, and what it let devices write before is unknown.
    whole: BTreeSet<u32>,
}

/// The dirty state of one [`MemorySlots`], as shadows and passthroughs hold it.
pub(crate) type DirtyHandle = Arc<Mutex<DirtyState>>;

/// Locks a dirty state (a poisoned lock still holds consistent bitmaps: every update is a plain
/// OR, insert or replace).
pub(crate) fn lock(state: &Mutex<DirtyState>) -> MutexGuard<'_, DirtyState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
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

/// Sets bit `bit` of `bitmap` (ignored beyond its end).
fn set_bit(bitmap: &mut [u64], bit: u64) {
    if let Some(w) = usize::try_from(bit / 64).ok().and_then(|i| bitmap.get_mut(i)) {
        *w |= 1 << (bit % 64);
    }
}

/// Calls `f` with the index of every set bit of `bitmap`, in order.
fn for_each_bit(bitmap: &[u64], mut f: impl FnMut(u64)) {
    for (i, &word) in bitmap.iter().enumerate() {
        let mut w = word;
        while w != 0 {
            f(i as u64 * 64 + u64::from(w.trailing_zeros()));
            w &= w - 1;
        }
    }
}

/// Reads and clears `slot`'s dirty pages (KVM's log when the slot logs, and every tracked HWPT
/// still realising the slots' IOAS) into the slot's carried bits. Called before `slot` changes;
/// what was read before a failure is kept too. Shadow mappings need no flush: they point at
/// machine pages, which a slot change does not move.
pub(crate) fn flush(slots: &MemorySlots, slot: &Slot) -> Result<(), SlotError> {
    let words = words(slot.len)?;
    let mut bits = vec![0u64; words];
    let mut state = lock(slots.dirty_handle());
    let result = read_slot_sources(slots, slot, &mut bits, &mut state.tracked);
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

/// Fits slot `new`'s carried bits to its length after a resize from `old`; pages a shrink cut
/// off left the guest, so device writes kept for them are dropped.
pub(crate) fn fit_carried(slots: &MemorySlots, old: &Slot, new: &Slot) {
    let mut state = lock(slots.dirty_handle());
    if new.len < old.len {
        forget_ram(&mut state, new.pa.raw() + new.len, old.len - new.len);
    }
    let Ok(words) = words(new.len) else { return };
    if let Some(c) = state.carried.get_mut(&new.id) {
        c.resize(words, 0);
        mask_tail(c, new.len / DIRTY_PAGE_SIZE);
    }
}

/// Drops what a removed slot had kept: its memory left the guest.
pub(crate) fn forget_slot(slots: &MemorySlots, slot: &Slot) {
    let mut state = lock(slots.dirty_handle());
    state.carried.remove(&slot.id);
    state.whole.remove(&slot.id);
    forget_ram(&mut state, slot.pa.raw(), slot.len);
}

/// Drops kept device writes to machine pages `[pa, pa + len)`.
fn forget_ram(state: &mut DirtyState, pa: u64, len: u64) {
    let (first, end) = (pa / DIRTY_PAGE_SIZE, (pa + len) / DIRTY_PAGE_SIZE);
    if first >= end {
        return;
    }
    let keys: Vec<u64> = state.kept.range(first / 64..=(end - 1) / 64).map(|(k, _)| *k).collect();
    for key in keys {
        let Some(word) = state.kept.get_mut(&key) else { continue };
        for bit in 0..64 {
            let page = key * 64 + bit;
            if (first..end).contains(&page) {
                *word &= !(1 << bit);
            }
        }
        if *word == 0 {
            state.kept.remove(&key);
        }
    }
}

/// Moves kept device writes to `slot`'s machine pages into `bits` (slot page numbering).
fn take_kept(state: &mut DirtyState, slot: &Slot, bits: &mut [u64]) {
    let first = slot.pa.raw() / DIRTY_PAGE_SIZE;
    let end = first + slot.len / DIRTY_PAGE_SIZE;
    if first >= end || state.kept.is_empty() {
        return;
    }
    let mut emptied = Vec::new();
    for (key, word) in state.kept.range_mut(first / 64..=(end - 1) / 64) {
        for bit in 0..64 {
            let page = key * 64 + bit;
            if *word & (1 << bit) != 0 && (first..end).contains(&page) {
                set_bit(bits, page - first);
                *word &= !(1 << bit);
            }
        }
        if *word == 0 {
            emptied.push(*key);
        }
    }
    for key in emptied {
        state.kept.remove(&key);
    }
}

/// Reads and clears the dirty bits of `hwpt` for IOVA `[iova, iova + len)`, which maps machine
/// `[pa, pa + len)`, and keeps them by machine page for the next read of the slot holding them.
fn keep_range(
    ctx: &Context,
    kept: &mut BTreeMap<u64, u64>,
    hwpt: HwptId,
    iova: u64,
    pa: u64,
    len: u64,
) -> Result<(), ioasis::Error> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        let bits = ctx.read_dirty(hwpt, Iova(iova + done), n, DIRTY_PAGE_SIZE, false)?;
        let base = (pa + done) / DIRTY_PAGE_SIZE;
        for_each_bit(&bits, |b| {
            let page = base + b;
            *kept.entry(page / 64).or_default() |= 1 << (page % 64);
        });
        done += n;
    }
    Ok(())
}

/// Before shadow `ioas` unmaps IOVA `[iova, iova + len)` (machine `[pa, pa + len)`): reads and
/// clears the dirty bits the mapping collected in every HWPT of the shadow the running log
/// tracks, and keeps them for the next read. Nothing to do when no log runs.
pub(crate) fn keep_shadow_range(
    ctx: &Context,
    state: &mut DirtyState,
    ioas: IoasId,
    iova: u64,
    pa: u64,
    len: u64,
) -> Result<(), ioasis::Error> {
    if !state.active {
        return Ok(());
    }
    let DirtyState { shadows, kept, .. } = state;
    for &hwpt in shadows.get(&ioas).into_iter().flatten() {
        keep_range(ctx, kept, hwpt, iova, pa, len)?;
    }
    Ok(())
}

/// Before `hwpt` (realising `ioas`: the slots' or a registered shadow's) is destroyed: reads
/// and clears the dirty bits of every writable mapping of `ioas` in it and keeps them for the
/// next read. Nothing to do when no log runs or the log does not track `hwpt`.
pub(crate) fn keep_hwpt(
    ctx: &Context,
    state: &mut DirtyState,
    hwpt: HwptId,
    ioas: IoasId,
) -> Result<(), ioasis::Error> {
    let tracked = state.tracked.contains(&hwpt) || state.shadows.get(&ioas).is_some_and(|t| t.contains(&hwpt));
    if !state.active || !tracked {
        return Ok(());
    }
    for a in ctx.areas(ioas)?.iter().filter(|a| a.prot.write()) {
        keep_range(ctx, &mut state.kept, hwpt, a.range.start.raw(), a.pa.raw(), a.range.len())?;
    }
    state.tracked.remove(&hwpt);
    if let Some(t) = state.shadows.get_mut(&ioas) {
        t.remove(&hwpt);
    }
    Ok(())
}

/// Registers shadow IOAS `ioas`: logs read the device writes through its HWPTs.
pub(crate) fn register_shadow(state: &mut DirtyState, ioas: IoasId) {
    state.shadows.entry(ioas).or_default();
}

/// Deregisters shadow IOAS `ioas`.
pub(crate) fn deregister_shadow(state: &mut DirtyState, ioas: IoasId) {
    state.shadows.remove(&ioas);
}

/// A HWPT realising `ioas` (the slots' IOAS, or a shadow's, which this registers) was just
/// allocated and no device uses it yet: when a log runs, its dirty tracking goes on now, so
/// that its very first write is reported (rather than the next read finding it and reporting
/// every page). Fails when the HWPT cannot track.
pub(crate) fn track_early(slots: &MemorySlots, ioas: IoasId, hwpt: HwptId) -> Result<(), ioasis::Error> {
    let mut state = lock(slots.dirty_handle());
    if ioas != slots.ioas() {
        register_shadow(&mut state, ioas);
    }
    if !state.active {
        return Ok(());
    }
    slots.context().set_dirty_tracking(hwpt, true)?;
    tracing::debug!(%hwpt, %ioas, "IOMMU dirty tracking on before first use");
    if ioas == slots.ioas() {
        state.tracked.insert(hwpt);
    } else {
        state.shadows.entry(ioas).or_default().insert(hwpt);
    }
    Ok(())
}

/// ORs the dirty pages of `slot` from its own sources into `bits` and clears them: KVM's log
/// (when the slot logs), then each HWPT of `tracked` still realising the slots' IOAS (the
/// others are removed from `tracked`). Stops at the first failure, with what was read so far
/// in `bits`.
fn read_slot_sources(
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

/// A run of shadow mappings contiguous in IOVA, each piece `(iova, machine address, len)`
/// inside one slot's memory.
struct Run<'a> {
    pieces: &'a [(u64, u64, u64)],
}

impl Run<'_> {
    /// Reads and clears the run's dirty bits in `hwpt`, and sets the slot page of each machine
    /// page written in `bits`.
    fn read(&self, ctx: &Context, hwpt: HwptId, slot: &Slot, bits: &mut [u64]) -> Result<(), ioasis::Error> {
        let (Some(first), Some(last)) = (self.pieces.first(), self.pieces.last()) else { return Ok(()) };
        let start = first.0;
        let len = last.0 + last.2 - start;
        let dirty = ctx.read_dirty(hwpt, Iova(start), len, DIRTY_PAGE_SIZE, false)?;
        // Bits come in IOVA order, and the pieces cover the run without gaps: one cursor.
        let mut at = 0;
        for_each_bit(&dirty, |b| {
            let iova = start + b * DIRTY_PAGE_SIZE;
            while self.pieces.get(at).is_some_and(|p| p.0 + p.2 <= iova) {
                at += 1;
            }
            if let Some(&(piova, pa, _)) = self.pieces.get(at).filter(|p| p.0 <= iova) {
                set_bit(bits, (pa + (iova - piova) - slot.pa.raw()) / DIRTY_PAGE_SIZE);
            }
        });
        Ok(())
    }
}

/// ORs the device writes through every registered shadow into `slot`'s `bits` and clears them:
/// for each writable mapping whose machine pages lie in the slot's memory, the dirty bits of
/// every tracked HWPT of the shadow, at the slot page of the machine page written. Mappings
/// contiguous in IOVA are read together (one bitmap per run of at most [`CHUNK`] bytes); the
/// parts of mappings outside the slot are neither read nor cleared. Shadows whose IOAS is
/// gone are deregistered.
fn read_shadows(ctx: &Context, slot: &Slot, bits: &mut [u64], state: &mut DirtyState) -> Result<(), DirtyError> {
    let (lo, hi) = (slot.pa.raw(), slot.pa.raw() + slot.len);
    let mut pieces: Vec<(u64, u64, u64)> = Vec::new();
    let mut gone = Vec::new();
    for (&ioas, tracked) in &state.shadows {
        if tracked.is_empty() {
            continue;
        }
        let areas = match ctx.areas(ioas) {
            Ok(a) => a,
            Err(ioasis::Error::NoSuchObject { .. }) => {
                gone.push(ioas);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        pieces.clear();
        let mut run_len = 0;
        for a in areas.iter().filter(|a| a.prot.write()) {
            let (pa, end) = (a.pa.raw().max(lo), (a.pa.raw() + a.range.len()).min(hi));
            if pa >= end {
                continue;
            }
            let piece = (a.range.start.raw() + (pa - a.pa.raw()), pa, end - pa);
            let joins = pieces.last().is_some_and(|p| p.0 + p.2 == piece.0) && run_len + piece.2 <= CHUNK;
            if !joins && !pieces.is_empty() {
                for &h in tracked {
                    Run { pieces: &pieces }.read(ctx, h, slot, bits)?;
                }
                pieces.clear();
                run_len = 0;
            }
            pieces.push(piece);
            run_len += piece.2;
        }
        for &h in tracked {
            Run { pieces: &pieces }.read(ctx, h, slot, bits)?;
        }
    }
    for ioas in gone {
        state.shadows.remove(&ioas);
    }
    Ok(())
}

/// Dirty logging of a [`MemorySlots`]'s vCPU and device writes, per slot.
///
/// KVM's half is the slot's `KVM_MEM_LOG_DIRTY_PAGES` flag (set when the slot is added); the
/// IOMMU half is the dirty tracking this log turns on for every HWPT realising the slots' IOAS
/// or a shadow IOAS synced with the slots. That state, and the dirty bits kept across slot and
/// mapping changes, live in the [`MemorySlots`], so one log at a time per slots (a second one
/// started on the same slots shares the same state).
#[derive(Debug)]
pub struct DirtyLog {
    ioas: IoasId,
}

impl DirtyLog {
    /// Turns IOMMU dirty tracking on for every HWPT realising `slots`' IOAS or a shadow IOAS
    /// registered with them. Device writes from here on are reported. Fails with
    /// [`DirtyError::Untracked`] (and turns tracking back off where it turned it on) when a HWPT
    /// cannot track dirty pages.
    pub fn start(slots: &MemorySlots) -> Result<Self, DirtyError> {
        let log = Self { ioas: slots.ioas() };
        let mut state = lock(slots.dirty_handle());
        state.active = true;
        state.whole.clear();
        if let Err(e) = track_all(slots, &mut state) {
            drop(state);
            if let Err(undo) = log.stop(slots) {
                tracing::error!(error = %undo, "turning dirty tracking back off failed");
            }
            return Err(e);
        }
        let shadows: usize = state.shadows.values().map(BTreeSet::len).sum();
        tracing::info!(ioas = %slots.ioas(), hwpts = state.tracked.len(), shadows, "dirty logging started");
        Ok(log)
    }

    /// The HWPTs whose dirty tracking this log turned on: those realising the slots' IOAS,
    /// then those of the registered shadows.
    pub fn tracked(&self, slots: &MemorySlots) -> Vec<HwptId> {
        let state = lock(slots.dirty_handle());
        state.tracked.iter().chain(state.shadows.values().flatten()).copied().collect()
    }

    fn check(&self, slots: &MemorySlots) -> Result<(), DirtyError> {
        if slots.ioas() != self.ioas {
            return Err(DirtyError::WrongSlots { log: self.ioas, slots: slots.ioas() });
        }
        Ok(())
    }

    /// Reads and clears the dirty pages of slot `slot_id`: bit `i` of the result (word `i / 64`,
    /// bit `i % 64`) is 4 KiB page `i` of the slot, set when a vCPU (KVM's dirty log, cleared by
    /// `KVM_GET_DIRTY_LOG`) or a device through any HWPT of the slots' IOAS or of a registered
    /// shadow (its dirty bits, cleared) wrote it since the previous read. Reads by either side
    /// never count. This is the one call per slot and migration round.
    ///
    /// HWPTs are checked before anything is cleared. If reading the IOMMU dirty bits fails after
    /// KVM's log was read, what was read is kept for the next read: nothing is lost.
    ///
    /// Dirty pages read out before the slot was moved or resized ([`MemorySlots::move_slot`],
    /// [`MemorySlots::resize`]), or before a shadow mapping or a passthrough went away, are
    /// reported here too, so such a change between two reads loses nothing (see the module
    /// docs).
    pub fn read_and_clear(&mut self, slots: &MemorySlots, slot_id: u32) -> Result<Vec<u64>, DirtyError> {
        self.check(slots)?;
        let slot = *slots.get(slot_id).ok_or(DirtyError::NoSuchSlot(slot_id))?;
        if slot.flags & KVM_MEM_LOG_DIRTY_PAGES == 0 {
            return Err(DirtyError::NotLogging(slot_id));
        }
        let mut state = lock(slots.dirty_handle());
        // Forget HWPTs that are gone; start tracking new ones.
        if track_all(slots, &mut state)? {
            // Their writes before tracking started are unknown: every logging slot, whole.
            tracing::warn!("a HWPT started tracking in the middle of a round: reporting every slot whole, once");
            let logging = slots.slots().filter(|s| s.flags & KVM_MEM_LOG_DIRTY_PAGES != 0).map(|s| s.id);
            state.whole.extend(logging);
        }

        let pages = slot.len / DIRTY_PAGE_SIZE;
        let mut bitmap = vec![0u64; words(slot.len)?];
        let mut result = read_slot_sources(slots, &slot, &mut bitmap, &mut state.tracked);
        if result.is_ok() {
            result = read_shadows(slots.context(), &slot, &mut bitmap, &mut state);
        }
        if let Some(kept) = state.carried.remove(&slot_id) {
            or_into(&mut bitmap, &kept);
        }
        take_kept(&mut state, &slot, &mut bitmap);
        if let Err(e) = result {
            // Keep what was read (KVM's log is cleared by reading it) for the next read.
            mask_tail(&mut bitmap, pages);
            state.carried.insert(slot_id, bitmap);
            return Err(e);
        }
        if state.whole.remove(&slot_id) {
            bitmap.fill(u64::MAX);
        }
        mask_tail(&mut bitmap, pages);
        Ok(bitmap)
    }

    /// Turns IOMMU dirty tracking off on the HWPTs this log turned it on for (those still alive).
    /// Dirty bits kept across slot and mapping changes stay for a later log (KVM keeps logging
    /// a slot added with `KVM_MEM_LOG_DIRTY_PAGES` anyway).
    pub fn stop(self, slots: &MemorySlots) -> Result<(), DirtyError> {
        self.check(slots)?;
        let ctx = slots.context();
        let mut state = lock(slots.dirty_handle());
        state.active = false;
        let mut off = vec![(slots.ioas(), std::mem::take(&mut state.tracked))];
        off.extend(state.shadows.iter_mut().map(|(i, t)| (*i, std::mem::take(t))));
        for (ioas, tracked) in off {
            let Ok(current) = ctx.ioas_hwpts(ioas) else { continue };
            for hwpt in tracked.into_iter().filter(|h| current.contains(h)) {
                ctx.set_dirty_tracking(hwpt, false)?;
            }
        }
        Ok(())
    }
}

/// Brings the tracked sets in step with the HWPTs realising the slots' IOAS and each registered
/// shadow's: forgets HWPTs that are gone, deregisters shadows whose IOAS is gone, and turns
/// tracking on for new HWPTs. True when there were new ones.
fn track_all(slots: &MemorySlots, state: &mut DirtyState) -> Result<bool, DirtyError> {
    let ctx = slots.context();
    let current = ctx.ioas_hwpts(slots.ioas())?;
    let mut fresh = track_new(ctx, slots.ioas(), &current, &mut state.tracked)?;
    let mut gone = Vec::new();
    for (&ioas, tracked) in state.shadows.iter_mut() {
        match ctx.ioas_hwpts(ioas) {
            Ok(current) => fresh |= track_new(ctx, ioas, &current, tracked)?,
            Err(ioasis::Error::NoSuchObject { .. }) => gone.push(ioas),
            Err(e) => return Err(e.into()),
        }
    }
    for ioas in gone {
        state.shadows.remove(&ioas);
    }
    Ok(fresh)
}

/// Forgets the HWPTs of `tracked` not in `current` (those realising `ioas` now) and turns
/// tracking on for those of `current` not tracked yet; true when there were any.
fn track_new(
    ctx: &Context,
    ioas: IoasId,
    current: &[HwptId],
    tracked: &mut BTreeSet<HwptId>,
) -> Result<bool, DirtyError> {
    tracked.retain(|h| current.contains(h));
    let mut fresh = false;
    for &hwpt in current {
        if tracked.contains(&hwpt) {
            continue;
        }
        ctx.set_dirty_tracking(hwpt, true).map_err(|source| DirtyError::Untracked { hwpt, ioas, source })?;
        tracing::debug!(%hwpt, %ioas, "IOMMU dirty tracking on");
        tracked.insert(hwpt);
        fresh = true;
    }
    Ok(fresh)
}

#[cfg(test)]
mod tests {
    use ioasis::PhysAddr;

    use super::*;

    fn keep_pages(state: &mut DirtyState, pages: &[u64]) {
        for p in pages {
            *state.kept.entry(p / 64).or_default() |= 1 << (p % 64);
        }
    }

    fn kept_pages(state: &DirtyState) -> Vec<u64> {
        let mut out = Vec::new();
        for (k, w) in &state.kept {
            for_each_bit(&[*w], |b| out.push(k * 64 + b));
        }
        out
    }

    #[test]
    fn kept_machine_pages_go_to_the_slot_holding_them_whatever_the_alignment() {
        // Machine pages 5..75 (not 64-page aligned) are the slot's pages 0..70.
        let slot =
            Slot { id: 3, gpa: 0x10_0000, pa: PhysAddr(5 * DIRTY_PAGE_SIZE), len: 70 * DIRTY_PAGE_SIZE, flags: 0 };
        let mut state = DirtyState::default();
        keep_pages(&mut state, &[4, 5, 63, 64, 74, 75, 200]);
        let mut bits = vec![0u64; words(slot.len).unwrap()];
        take_kept(&mut state, &slot, &mut bits);
        let mut got = Vec::new();
        for_each_bit(&bits, |b| got.push(b));
        assert_eq!(got, [0, 58, 59, 69]);
        assert_eq!(kept_pages(&state), [4, 75, 200], "pages outside the slot stay");
        forget_ram(&mut state, 75 * DIRTY_PAGE_SIZE, 200 * DIRTY_PAGE_SIZE);
        assert_eq!(kept_pages(&state), [4]);
        forget_ram(&mut state, 0, 5 * DIRTY_PAGE_SIZE);
        assert!(state.kept.is_empty(), "empty words are dropped");
    }

    #[test]
    fn bitmap_helpers() {
        let mut b = vec![0u64; 2];
        for bit in [0, 63, 64, 127, 128, u64::MAX] {
            set_bit(&mut b, bit); // beyond the end: ignored
        }
        let mut got = Vec::new();
        for_each_bit(&b, |x| got.push(x));
        assert_eq!(got, [0, 63, 64, 127]);
        mask_tail(&mut b, 65);
        assert_eq!(b, [1 | 1 << 63, 1]);
    }
}
