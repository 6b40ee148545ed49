//! A virtual IOMMU for a KVM guest (issue 5, item 2, first part).
//!
//! [`Viommu`] puts a hardware model ([`UnitModel`], e.g. the VT-d model, wired in by the VMM
//! so that this crate names no backend) at a guest-physical MMIO window. The VMM's vCPU run
//! loop hands it the guest's `KVM_EXIT_MMIO` accesses ([`Viommu::handle_mmio_read`],
//! [`Viommu::handle_mmio_write`]); the VMM's emulated DMA devices go through it
//! ([`Viommu::dma_write`], [`Viommu::dma_read`]), so the tables the guest wrote in its own
//! RAM decide where device DMA lands, and faults end up in the model's fault registers where
//! the guest reads them.
//!
//! The model sees guest-physical memory through [`GuestPhys`]: its table pointers and
//! translation outputs are guest-physical addresses, resolved through an access object on the
//! IOAS that mirrors the VM's memory slots (or a snapshot of the slots) to the machine's RAM.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ioasis::abi::{Fault, HostError};
use ioasis::context::MAX_RW_BYTES;
use ioasis::platform::{DmaRequest, PhysMemory, UnitModel};
use ioasis::{AccessId, AccessOps, Context, DeviceRef, IoasId, Iova, IovaRange, PhysAddr, Prot, PAGE_SIZE};
use ioasis_baremetal::Machine;

use crate::{MemorySlots, Slot};

/// Guest-physical memory as a [`PhysMemory`], as the vIOMMU model and the emulated devices'
/// DMA see it.
///
/// Two kinds of view:
/// - over a VM's [`MemorySlots`] ([`GuestPhys::of`]): an access object on the slots' IOAS
///   (IOVA = guest-physical). Byte reads and writes go through [`Context::access_read`] and
///   [`Context::access_write`], and 64-bit accesses pin their page for the duration
///   ([`Context::access_pin`]), so every access follows the slots as they are now: a slot
///   added, moved, resized or removed after the view was made is seen at once, and removing a
///   slot waits for a 64-bit access in flight on it (the access's unmap callback) instead of
///   pulling the memory from under it. The IOAS's permissions apply: a `KVM_MEM_READONLY` slot
///   is mapped read-only ([`Slot::prot`]).
/// - over a fixed list of slots ([`GuestPhys::new`]): a snapshot resolved straight to the
///   machine's RAM, which does not follow later changes.
///
/// Addresses outside every slot are [`HostError::BAD_ADDRESS`] (with the first such
/// guest-physical address). A byte access may span slots that are adjacent in guest-physical
/// space (each piece goes to its own slot's RAM); if any byte has no slot, nothing is read or
/// written (for a view over slots, up to [`ioasis::context::MAX_RW_BYTES`] per piece: longer
/// transfers are checked whole first, then copied in pieces). 64-bit accesses must be 8-byte
/// aligned, and so never cross a slot (slots are 4 KiB aligned). Writes to a
/// `KVM_MEM_READONLY` slot are refused like unbacked addresses.
///
/// A view over slots holds an access on their IOAS until its last clone is dropped: the IOAS
/// cannot be destroyed meanwhile.
#[derive(Clone)]
pub struct GuestPhys {
    machine: Arc<Machine>,
    /// Sorted by guest-physical start; non-overlapping. For a view over an IOAS, the layout
    /// when the view was made (informational).
    slots: Vec<Slot>,
    access: Option<Arc<SlotAccess>>,
}

impl std::fmt::Debug for GuestPhys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("GuestPhys");
        d.field("slots", &self.slots);
        if let Some(a) = &self.access {
            d.field("ioas", &a.ioas).field("access", &a.id);
        }
        d.finish_non_exhaustive()
    }
}

/// The access object of a view over a slots' IOAS; destroyed with the last clone of the view.
struct SlotAccess {
    ctx: Arc<Context>,
    ioas: IoasId,
    id: AccessId,
    inflight: Arc<InFlight>,
}

impl Drop for SlotAccess {
    fn drop(&mut self) {
        match self.ctx.destroy(self.id) {
            // The context was torn down first: the access went with it.
            Ok(()) | Err(ioasis::Error::NoSuchObject { .. }) => {}
            Err(e) => tracing::warn!(access = %self.id, error = %e, "guest memory view: access not destroyed"),
        }
    }
}

/// The pages a view has pinned for a 64-bit access now. The unmap callback waits for those in
/// its range: such a pin lasts one atomic operation.
#[derive(Default)]
struct InFlight {
    pages: Mutex<Vec<u64>>,
    done: Condvar,
}

impl InFlight {
    /// Longest an unmap waits for 64-bit accesses in flight (it fails after that).
    const PATIENCE: Duration = Duration::from_secs(1);

    fn pages(&self) -> MutexGuard<'_, Vec<u64>> {
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl AccessOps for InFlight {
    fn unmap(&self, iova: Iova, len: u64) {
        let last = iova.raw().saturating_add(len.saturating_sub(1));
        let deadline = Instant::now() + Self::PATIENCE;
        let mut pages = self.pages();
        while pages.iter().any(|&p| p >= iova.raw() && p <= last) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                tracing::warn!(%iova, len, "guest memory view: a 64-bit access in flight outlasted the unmap's wait");
                return;
            };
            pages = self.done.wait_timeout(pages, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// The guest-physical address a framework error names, or `at`.
fn bad(at: u64, e: &ioasis::Error) -> HostError {
    let addr = match e {
        ioasis::Error::NotMapped { range } | ioasis::Error::Denied { range, .. } => range.start.raw().max(at),
        _ => at,
    };
    HostError::new(HostError::BAD_ADDRESS, addr)
}

impl GuestPhys {
    /// The guest-physical view of the slots of `slots`, through an access object on their IOAS
    /// (see the type's documentation). Should the access not be created (the IOAS was
    /// destroyed), a snapshot of the slots, with a warning ([`GuestPhys::try_of`] says why).
    pub fn of(slots: &MemorySlots) -> Self {
        Self::try_of(slots).unwrap_or_else(|e| {
            tracing::warn!(error = %e, ioas = %slots.ioas(), "no access on the slots' IOAS; guest memory view is a snapshot");
            Self::new(slots.vm().machine().clone(), slots.slots().copied())
        })
    }

    /// The guest-physical view of the slots of `slots`, through a new access object on their
    /// IOAS.
    pub fn try_of(slots: &MemorySlots) -> Result<Self, ioasis::Error> {
        let ctx = slots.context().clone();
        let inflight = Arc::new(InFlight::default());
        let id = ctx.create_access(slots.ioas(), inflight.clone())?;
        let mut view = Self::new(slots.vm().machine().clone(), slots.slots().copied());
        view.access = Some(Arc::new(SlotAccess { ctx, ioas: slots.ioas(), id, inflight }));
        Ok(view)
    }

    /// A guest-physical view of `slots` over `machine`'s RAM: a snapshot that does not follow
    /// later changes. The slots must not overlap in guest-physical space (as [`MemorySlots`]
    /// guarantees); an overlapping one is dropped with a warning.
    pub fn new(machine: Arc<Machine>, slots: impl IntoIterator<Item = Slot>) -> Self {
        let mut all: Vec<Slot> = slots.into_iter().collect();
        all.sort_by_key(|s| s.gpa);
        let mut kept: Vec<Slot> = Vec::with_capacity(all.len());
        for s in all {
            if kept.last().is_some_and(|p| p.range().overlaps(&s.range())) {
                tracing::warn!(id = s.id, gpa = s.gpa, len = s.len, "overlapping memory slot ignored by GuestPhys");
                continue;
            }
            kept.push(s);
        }
        Self { machine, slots: kept, access: None }
    }

    /// The slots of this view, by guest-physical address. For a view over a [`MemorySlots`]'
    /// IOAS, the slots when it was made: its reads and writes follow the IOAS instead.
    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    /// The access object of a view over a slots' IOAS.
    pub fn access(&self) -> Option<AccessId> {
        self.access.as_ref().map(|a| a.id)
    }

    /// The slot containing guest-physical `gpa`.
    fn slot_of(&self, gpa: u64) -> Option<&Slot> {
        let i = self.slots.partition_point(|s| s.gpa <= gpa);
        let s = self.slots.get(i.checked_sub(1)?)?;
        (gpa - s.gpa < s.len).then_some(s)
    }

    /// The machine-physical address of guest-physical `[gpa, gpa+len)` when the whole range
    /// is backed by one contiguous machine range (for a snapshot: lies in one slot; `len` ≥ 1),
    /// and what guest memory allows there ([`Prot::READ`] for a read-only slot).
    pub fn resolve(&self, gpa: u64, len: u64) -> Option<(PhysAddr, Prot)> {
        if let Some(a) = &self.access {
            let pieces = a.ctx.access(a.ioas, Iova(gpa), len, Prot::NONE).ok()?;
            let (first, _) = *pieces.first()?;
            let mut next = first.raw();
            for (pa, n) in &pieces {
                if pa.raw() != next {
                    return None;
                }
                next = next.checked_add(*n)?;
            }
            let writable = a.ctx.access(a.ioas, Iova(gpa), len, Prot::WRITE).is_ok();
            return Some((first, if writable { Prot::RW } else { Prot::READ }));
        }
        let s = self.slot_of(gpa)?;
        let off = gpa - s.gpa;
        (len >= 1 && len <= s.len - off).then(|| (PhysAddr(s.pa.raw() + off), s.prot()))
    }

    /// The machine-physical address of guest-physical `[gpa, gpa+len)` ([`GuestPhys::resolve`]).
    pub fn to_machine(&self, gpa: u64, len: u64) -> Option<PhysAddr> {
        self.resolve(gpa, len).map(|(pa, _)| pa)
    }

    /// Splits guest-physical `[gpa, gpa+len)` into (machine address, offset in the access,
    /// length) pieces, one per slot; refused (with the first unbacked address) unless every
    /// byte is in a slot, and not in a read-only slot when `write`.
    fn pieces(&self, gpa: u64, len: usize, write: bool) -> Result<Vec<(PhysAddr, usize, usize)>, HostError> {
        let mut out = Vec::new();
        let mut done = 0usize;
        while done < len {
            let at = gpa.checked_add(done as u64).ok_or(HostError::new(HostError::BAD_ADDRESS, gpa))?;
            let bad = HostError::new(HostError::BAD_ADDRESS, at);
            let s = self.slot_of(at).ok_or(bad)?;
            if write && s.flags & kvm_bindings::KVM_MEM_READONLY != 0 {
                return Err(bad);
            }
            let off = at - s.gpa;
            let n = usize::try_from(s.len - off).unwrap_or(usize::MAX).min(len - done);
            out.push((PhysAddr(s.pa.raw() + off), done, n));
            done += n;
        }
        Ok(out)
    }

    /// The machine address of the aligned u64 at `gpa` (snapshot view).
    fn u64_at(&self, gpa: PhysAddr, write: bool) -> Result<PhysAddr, HostError> {
        let bad = HostError::new(HostError::BAD_ADDRESS, gpa.raw());
        let s = self.slot_of(gpa.raw()).ok_or(bad)?;
        if write && s.flags & kvm_bindings::KVM_MEM_READONLY != 0 {
            return Err(bad);
        }
        self.to_machine(gpa.raw(), 8).ok_or(bad)
    }

    /// Runs `op` on the u64 at `gpa`: with its page pinned for the operation (view over
    /// slots), or resolved through the snapshot.
    fn u64_op(&self, gpa: PhysAddr, op: U64Op) -> Result<u64, HostError> {
        let Some(a) = &self.access else {
            return op.run(self.machine.as_ref(), self.u64_at(gpa, op.prot().write())?);
        };
        if gpa.raw() % 8 != 0 {
            return Err(HostError::new(HostError::BAD_ADDRESS, gpa.raw()));
        }
        let prot = op.prot();
        let page = gpa.raw() & !(PAGE_SIZE - 1);
        // Announced before the pin, so that an unmap's callback that finds the pin waits for it.
        a.inflight.pages().push(page);
        let result = match a.ctx.access_pin(a.id, Iova(page), PAGE_SIZE, prot) {
            Ok(pas) => {
                let pa = PhysAddr(pas[0].raw() + (gpa.raw() - page));
                let r = op.run(a.ctx.platform().as_ref(), pa);
                if let Err(e) = a.ctx.access_unpin(a.id, Iova(page), PAGE_SIZE) {
                    tracing::error!(gpa = gpa.raw(), error = %e, "guest memory view: unpin failed");
                }
                r
            }
            Err(e) => Err(bad(gpa.raw(), &e)),
        };
        let mut pages = a.inflight.pages();
        if let Some(i) = pages.iter().position(|&p| p == page) {
            pages.swap_remove(i);
        }
        drop(pages);
        a.inflight.done.notify_all();
        result
    }
}

/// A 64-bit operation of [`PhysMemory`].
#[derive(Clone, Copy)]
enum U64Op {
    Read,
    Write(u64),
    Or(u64),
    And(u64),
}

impl U64Op {
    /// What the page must allow.
    fn prot(self) -> Prot {
        match self {
            U64Op::Read => Prot::READ,
            U64Op::Write(_) => Prot::WRITE,
            U64Op::Or(_) | U64Op::And(_) => Prot::RW,
        }
    }

    /// Runs it on `mem` at machine address `pa`; the old value (0 for a write).
    fn run<M: PhysMemory + ?Sized>(self, mem: &M, pa: PhysAddr) -> Result<u64, HostError> {
        match self {
            U64Op::Read => mem.read_u64(pa),
            U64Op::Write(v) => mem.write_u64(pa, v).map(|()| 0),
            U64Op::Or(bits) => mem.fetch_or_u64(pa, bits),
            U64Op::And(mask) => mem.fetch_and_u64(pa, mask),
        }
    }
}

impl PhysMemory for GuestPhys {
    fn read(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<(), HostError> {
        let Some(a) = &self.access else {
            for (mpa, off, n) in self.pieces(pa.raw(), buf.len(), false)? {
                self.machine.ram().read(mpa, &mut buf[off..off + n])?;
            }
            return Ok(());
        };
        for (i, chunk) in buf.chunks_mut(MAX_RW_BYTES).enumerate() {
            let at = pa
                .raw()
                .checked_add((i * MAX_RW_BYTES) as u64)
                .ok_or(HostError::new(HostError::BAD_ADDRESS, pa.raw()))?;
            a.ctx.access_read(a.id, Iova(at), chunk).map_err(|e| bad(at, &e))?;
        }
        Ok(())
    }

    fn write(&self, pa: PhysAddr, data: &[u8]) -> Result<(), HostError> {
        let Some(a) = &self.access else {
            for (mpa, off, n) in self.pieces(pa.raw(), data.len(), true)? {
                self.machine.ram().write(mpa, &data[off..off + n])?;
            }
            return Ok(());
        };
        if data.len() > MAX_RW_BYTES {
            // Checked whole first, so that a refused long write writes nothing.
            a.ctx.access(a.ioas, Iova(pa.raw()), data.len() as u64, Prot::WRITE).map_err(|e| bad(pa.raw(), &e))?;
        }
        for (i, chunk) in data.chunks(MAX_RW_BYTES).enumerate() {
            let at = pa
                .raw()
                .checked_add((i * MAX_RW_BYTES) as u64)
                .ok_or(HostError::new(HostError::BAD_ADDRESS, pa.raw()))?;
            a.ctx.access_write(a.id, Iova(at), chunk).map_err(|e| bad(at, &e))?;
        }
        Ok(())
    }

    fn read_u64(&self, pa: PhysAddr) -> Result<u64, HostError> {
        self.u64_op(pa, U64Op::Read)
    }

    fn write_u64(&self, pa: PhysAddr, value: u64) -> Result<(), HostError> {
        self.u64_op(pa, U64Op::Write(value)).map(|_| ())
    }

    fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> Result<u64, HostError> {
        self.u64_op(pa, U64Op::Or(bits))
    }

    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> Result<u64, HostError> {
        self.u64_op(pa, U64Op::And(mask))
    }
}

/// Why an emulated device's DMA through a [`Viommu`] did not complete. Like real DMA, an access
/// is not atomic: the `done` bytes before the failing page have been transferred.
#[derive(Debug, thiserror::Error)]
pub enum ViommuDmaError {
    /// The vIOMMU refused the access; the model has recorded the fault as its spec says (e.g.
    /// in VT-d's fault-recording registers), where the guest can read it.
    #[error("DMA fault at {} ({}) for {} after {done:#x} bytes", .fault.addr, Fault::reason_name(.fault.reason), .fault.dev)]
    Fault {
        /// The fault the model returned.
        fault: Fault,
        /// Bytes transferred before it.
        done: usize,
    },
    /// The vIOMMU translated to a guest-physical address that is not guest RAM (a master abort
    /// on real hardware).
    #[error("DMA at {iova} reached guest-physical memory outside every slot after {done:#x} bytes: {source}")]
    Memory {
        /// The IOVA of the failing piece.
        iova: Iova,
        /// The guest memory error.
        #[source]
        source: HostError,
        /// Bytes transferred before it.
        done: usize,
    },
    /// The access runs past the end of the 64-bit IOVA space.
    #[error("DMA of {len:#x} bytes at {iova} wraps around the IOVA space")]
    Wraps {
        /// Start of the access.
        iova: Iova,
        /// Length of the access.
        len: usize,
    },
    /// The model returned a translation with no bytes left in the page (a model bug).
    #[error("the vIOMMU translated {0} to an empty page")]
    EmptyTranslation(Iova),
}

/// A virtual IOMMU unit at a guest-physical MMIO window, backed by a hardware model.
pub struct Viommu {
    base_gpa: u64,
    model: Arc<dyn UnitModel>,
    mem: GuestPhys,
}

impl std::fmt::Debug for Viommu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Viommu").field("base_gpa", &self.base_gpa).field("mem", &self.mem).finish_non_exhaustive()
    }
}

impl Viommu {
    /// Size of the register window (4 KiB).
    pub const WINDOW: u64 = 0x1000;

    /// A vIOMMU whose registers are at guest-physical `[base_gpa, base_gpa + 4 KiB)`, modelled
    /// by `model`, which sees guest memory through `mem`. Reserve the window in the VM's
    /// [`MemorySlots`] (`reserve(viommu.window(), ..)`) so no slot covers it and its accesses
    /// exit to the VMM as MMIO.
    pub fn new(base_gpa: u64, model: Arc<dyn UnitModel>, mem: GuestPhys) -> Self {
        Self { base_gpa, model, mem }
    }

    /// Guest-physical base of the register window.
    pub fn base_gpa(&self) -> u64 {
        self.base_gpa
    }

    /// The register window as a guest-physical range.
    pub fn window(&self) -> IovaRange {
        IovaRange::new(Iova(self.base_gpa), Self::WINDOW)
            .unwrap_or(IovaRange { start: Iova(self.base_gpa), last: Iova(u64::MAX) })
    }

    /// The model.
    pub fn model(&self) -> &Arc<dyn UnitModel> {
        &self.model
    }

    /// The guest memory the model sees.
    pub fn memory(&self) -> &GuestPhys {
        &self.mem
    }

    /// Replaces the guest memory view (after the VM's memory slots changed).
    pub fn set_memory(&mut self, mem: GuestPhys) {
        self.mem = mem;
    }

    /// The register offset of guest-physical `gpa`, when it is in the window.
    fn offset(&self, gpa: u64) -> Option<u64> {
        gpa.checked_sub(self.base_gpa).filter(|&o| o < Self::WINDOW)
    }

    /// Handles a guest MMIO read (`KVM_EXIT_MMIO`, not a write) of `data.len()` bytes at `gpa`:
    /// fills `data` (little-endian) and returns true, or returns false when `gpa` is not in
    /// the window. A read the model refuses (an unknown register, a width other than those it
    /// supports) reads as all ones and is logged.
    pub fn handle_mmio_read(&self, gpa: u64, data: &mut [u8]) -> bool {
        let Some(offset) = self.offset(gpa) else { return false };
        let value = match u8::try_from(data.len()) {
            Ok(width) if width <= 8 => self.model.mmio_read(&self.mem, offset, width),
            _ => Err(HostError::new(HostError::BAD_REGISTER, offset)),
        };
        let value = value.unwrap_or_else(|e| {
            tracing::warn!(offset, width = data.len(), error = %e, "vIOMMU register read refused; reads as all ones");
            u64::MAX
        });
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0xff);
        }
        true
    }

    /// Handles a guest MMIO write (`KVM_EXIT_MMIO` with `is_write`) of `data` (little-endian)
    /// at `gpa`; returns false when `gpa` is not in the window. A write the model refuses is
    /// ignored and logged.
    pub fn handle_mmio_write(&self, gpa: u64, data: &[u8]) -> bool {
        let Some(offset) = self.offset(gpa) else { return false };
        let result = match u8::try_from(data.len()) {
            Ok(width) if width <= 8 => {
                let mut bytes = [0u8; 8];
                bytes[..data.len()].copy_from_slice(data);
                self.model.mmio_write(&self.mem, offset, width, u64::from_le_bytes(bytes))
            }
            _ => Err(HostError::new(HostError::BAD_REGISTER, offset)),
        };
        if let Err(e) = result {
            tracing::warn!(offset, width = data.len(), error = %e, "vIOMMU register write refused; ignored");
        }
        true
    }

    /// Runs `copy(gpa, offset in the buffer, len)` on every translated piece of `len` bytes
    /// from `iova`.
    fn dma(
        &self,
        dev: DeviceRef,
        iova: u64,
        len: usize,
        access: Prot,
        mut copy: impl FnMut(PhysAddr, usize, usize) -> Result<(), HostError>,
    ) -> Result<(), ViommuDmaError> {
        if len > 0 && iova.checked_add(len as u64 - 1).is_none() {
            return Err(ViommuDmaError::Wraps { iova: Iova(iova), len });
        }
        let mut done = 0usize;
        while done < len {
            // Cannot wrap: checked above.
            let here = Iova(iova + done as u64);
            let req = DmaRequest { dev, pasid: None, iova: here, access };
            let target = self.model.translate(&self.mem, &req).map_err(|fault| {
                tracing::debug!(%dev, iova = %here, reason = Fault::reason_name(fault.reason), "vIOMMU DMA fault");
                ViommuDmaError::Fault { fault, done }
            })?;
            if target.remaining == 0 {
                return Err(ViommuDmaError::EmptyTranslation(here));
            }
            let chunk = usize::try_from(target.remaining).unwrap_or(usize::MAX).min(len - done);
            copy(target.pa, done, chunk).map_err(|source| ViommuDmaError::Memory { iova: here, source, done })?;
            done += chunk;
        }
        Ok(())
    }

    /// An emulated device `dev` writes `data` to `iova` (guest memory ← device), translated
    /// page by page through the vIOMMU with [`Prot::WRITE`]. Not atomic: when a later page
    /// faults, the pages before it have been written.
    pub fn dma_write(&self, dev: DeviceRef, iova: u64, data: &[u8]) -> Result<(), ViommuDmaError> {
        self.dma(dev, iova, data.len(), Prot::WRITE, |gpa, off, n| self.mem.write(gpa, &data[off..off + n]))
    }

    /// An emulated device `dev` reads `buf.len()` bytes at `iova` (guest memory → device),
    /// translated page by page through the vIOMMU with [`Prot::READ`]. When a later page
    /// faults, the start of `buf` has been filled.
    pub fn dma_read(&self, dev: DeviceRef, iova: u64, buf: &mut [u8]) -> Result<(), ViommuDmaError> {
        let len = buf.len();
        self.dma(dev, iova, len, Prot::READ, |gpa, off, n| self.mem.read(gpa, &mut buf[off..off + n]))
    }
}
