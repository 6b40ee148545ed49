//! Memory slots: KVM guest memory and an IOAS kept in step (IOVA = guest-physical address).
//!
//! Every operation is all or nothing. The IOAS is changed first (it is the side that refuses
//! most: reserved regions, apertures of attached devices, backend failures), then KVM; when KVM
//! refuses, the IOAS change is undone, so a refused operation leaves both as they were.

use std::collections::BTreeMap;
use std::sync::Arc;

use ioasis::{Context, IoasId, Iova, IovaRange, PhysAddr, Prot, UnmapMode, PAGE_SIZE};
use kvm_bindings::kvm_userspace_memory_region;

use crate::{KvmError, SlotError, Vm};

/// One guest memory slot: guest-physical `[gpa, gpa+len)` is machine RAM `[pa, pa+len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// KVM slot id.
    pub id: u32,
    /// Guest-physical start (also the IOVA of the IOAS mapping).
    pub gpa: u64,
    /// Machine-physical start in the simulated machine's RAM.
    pub pa: PhysAddr,
    /// Length in bytes (a multiple of 4 KiB).
    pub len: u64,
    /// KVM memory-region flags (`KVM_MEM_LOG_DIRTY_PAGES`, `KVM_MEM_READONLY`).
    pub flags: u32,
}

impl Slot {
    /// The guest-physical range (= IOVA range in the IOAS).
    pub fn range(&self) -> IovaRange {
        // Every stored slot passed `check_range`, so the range is non-empty and does not wrap.
        IovaRange::new(Iova(self.gpa), self.len).unwrap_or(IovaRange { start: Iova(self.gpa), last: Iova(self.gpa) })
    }
}

/// The VM's memory slots, and an IOAS that maps exactly those slots at IOVA = GPA.
///
/// Attach devices that DMA into guest memory to [`MemorySlots::ioas`]. Dropping this value
/// leaves the slots registered and mapped.
pub struct MemorySlots {
    vm: Arc<Vm>,
    ctx: Arc<Context>,
    ioas: IoasId,
    slots: BTreeMap<u32, Slot>,
    reserved: Vec<(IovaRange, String)>,
}

impl std::fmt::Debug for MemorySlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySlots")
            .field("ioas", &self.ioas)
            .field("slots", &self.slots)
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

fn undo<T>(what: &str, r: Result<T, impl std::fmt::Display>) {
    if let Err(e) = r {
        tracing::error!(error = %e, what, "rollback step failed; KVM and the IOAS may disagree");
    }
}

impl MemorySlots {
    /// Slots of `vm`, mirrored into `ioas` of `ctx` (which should have no other mappings in the
    /// guest-physical ranges the slots will use).
    pub fn new(vm: Arc<Vm>, ctx: Arc<Context>, ioas: IoasId) -> Self {
        Self { vm, ctx, ioas, slots: BTreeMap::new(), reserved: Vec::new() }
    }

    /// The IOAS kept in step with the slots.
    pub fn ioas(&self) -> IoasId {
        self.ioas
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<Vm> {
        &self.vm
    }

    /// The ioasis context of the IOAS.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The slots, by id.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots.values()
    }

    /// Slot `id`, if present.
    pub fn get(&self, id: u32) -> Option<&Slot> {
        self.slots.get(&id)
    }

    /// Reserves guest-physical `range` (e.g. a vIOMMU's MMIO window): no slot may overlap it,
    /// and the IOAS refuses mappings there too.
    pub fn reserve(&mut self, range: IovaRange, why: &str) -> Result<(), SlotError> {
        if let Some(s) = self.slots.values().find(|s| s.range().overlaps(&range)) {
            return Err(SlotError::Overlap { range, other: s.id });
        }
        self.ctx.add_reserved(self.ioas, range, why)?;
        tracing::debug!(%range, why, "guest-physical range reserved");
        self.reserved.push((range, why.to_owned()));
        Ok(())
    }

    /// Adds slot `id`: guest-physical `[gpa, gpa+len)` backed by machine RAM `[pa, pa+len)`,
    /// registered with KVM (with `flags`) and mapped read-write in the IOAS at IOVA = `gpa`.
    pub fn add(&mut self, id: u32, gpa: u64, pa: PhysAddr, len: u64, flags: u32) -> Result<(), SlotError> {
        if self.slots.contains_key(&id) {
            return Err(SlotError::SlotInUse(id));
        }
        let range = self.check_range(gpa, pa, len)?;
        self.check_free(range, None)?;
        let slot = Slot { id, gpa, pa, len, flags };
        self.ctx.map(self.ioas, Some(Iova(gpa)), pa, len, Prot::RW)?;
        if let Err(e) = self.kvm_set(&slot) {
            undo("unmap new slot", self.ctx.unmap(self.ioas, Iova(gpa), len, UnmapMode::Exact));
            return Err(e);
        }
        tracing::info!(id, gpa, pa = pa.raw(), len, flags, "memory slot added");
        self.slots.insert(id, slot);
        Ok(())
    }

    /// Removes slot `id`: unmaps it from the IOAS and deletes it from KVM. Returns it.
    pub fn remove(&mut self, id: u32) -> Result<Slot, SlotError> {
        let slot = *self.slots.get(&id).ok_or(SlotError::NoSuchSlot(id))?;
        self.ctx.unmap(self.ioas, Iova(slot.gpa), slot.len, UnmapMode::Exact)?;
        if let Err(e) = self.kvm_delete(id, slot.flags) {
            undo("re-map removed slot", self.ctx.map(self.ioas, Some(Iova(slot.gpa)), slot.pa, slot.len, Prot::RW));
            return Err(e.into());
        }
        tracing::info!(id, gpa = slot.gpa, "memory slot removed");
        self.slots.remove(&id);
        Ok(slot)
    }

    /// Moves slot `id` to guest-physical `new_gpa` (same backing memory and length), in KVM
    /// (`KVM_MR_MOVE`) and in the IOAS. Devices cannot reach the slot during the move.
    pub fn move_slot(&mut self, id: u32, new_gpa: u64) -> Result<(), SlotError> {
        let old = *self.slots.get(&id).ok_or(SlotError::NoSuchSlot(id))?;
        if new_gpa == old.gpa {
            return Ok(());
        }
        let range = self.check_range(new_gpa, old.pa, old.len)?;
        self.check_free(range, Some(id))?;
        let new = Slot { gpa: new_gpa, ..old };
        // The old and new ranges may overlap, so unmap before mapping.
        self.ctx.unmap(self.ioas, Iova(old.gpa), old.len, UnmapMode::Exact)?;
        if let Err(e) = self.ctx.map(self.ioas, Some(Iova(new_gpa)), old.pa, old.len, Prot::RW) {
            undo("re-map slot at old place", self.ctx.map(self.ioas, Some(Iova(old.gpa)), old.pa, old.len, Prot::RW));
            return Err(e.into());
        }
        if let Err(e) = self.kvm_set(&new) {
            undo("unmap slot at new place", self.ctx.unmap(self.ioas, Iova(new_gpa), old.len, UnmapMode::Exact));
            undo("re-map slot at old place", self.ctx.map(self.ioas, Some(Iova(old.gpa)), old.pa, old.len, Prot::RW));
            return Err(e);
        }
        tracing::info!(id, from = old.gpa, to = new_gpa, "memory slot moved");
        self.slots.insert(id, new);
        Ok(())
    }

    /// Resizes slot `id` to `new_len` bytes at the same guest-physical and physical start.
    /// Shrinking unmaps the tail from the IOAS; growing maps the extension. KVM cannot resize a
    /// slot in place, so the KVM slot is deleted and registered again (its dirty log restarts,
    /// and a vCPU running meanwhile may see the slot missing).
    pub fn resize(&mut self, id: u32, new_len: u64) -> Result<(), SlotError> {
        let old = *self.slots.get(&id).ok_or(SlotError::NoSuchSlot(id))?;
        if new_len == old.len {
            return Ok(());
        }
        let range = self.check_range(old.gpa, old.pa, new_len)?;
        let new = Slot { len: new_len, ..old };
        if new_len < old.len {
            let tail = old.len - new_len;
            self.ctx.unmap(self.ioas, Iova(old.gpa + new_len), tail, UnmapMode::Cut)?;
            if let Err(e) = self.kvm_replace(&old, &new) {
                let (iova, pa) = (Iova(old.gpa + new_len), PhysAddr(old.pa.raw() + new_len));
                undo("re-map cut tail", self.ctx.map(self.ioas, Some(iova), pa, tail, Prot::RW));
                return Err(e);
            }
        } else {
            self.check_free(range, Some(id))?;
            let ext = new_len - old.len;
            let (iova, pa) = (Iova(old.gpa + old.len), PhysAddr(old.pa.raw() + old.len));
            self.ctx.map(self.ioas, Some(iova), pa, ext, Prot::RW)?;
            if let Err(e) = self.kvm_replace(&old, &new) {
                undo("unmap extension", self.ctx.unmap(self.ioas, iova, ext, UnmapMode::Exact));
                return Err(e);
            }
        }
        tracing::info!(id, from = old.len, to = new_len, "memory slot resized");
        self.slots.insert(id, new);
        Ok(())
    }

    fn check_range(&self, gpa: u64, pa: PhysAddr, len: u64) -> Result<IovaRange, SlotError> {
        let bad = SlotError::BadRange { gpa, pa: pa.raw(), len };
        if len == 0 || gpa % PAGE_SIZE != 0 || pa.raw() % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
            return Err(bad);
        }
        let range = IovaRange::new(Iova(gpa), len).ok_or(bad)?;
        if !self.vm.machine().ram().contains(pa, len) {
            return Err(SlotError::NotRam { pa: pa.raw(), len });
        }
        Ok(range)
    }

    /// Refuses a guest range that overlaps another slot (other than `except`) or a reserved
    /// region.
    fn check_free(&self, range: IovaRange, except: Option<u32>) -> Result<(), SlotError> {
        if let Some(s) = self.slots.values().find(|s| Some(s.id) != except && s.range().overlaps(&range)) {
            return Err(SlotError::Overlap { range, other: s.id });
        }
        if let Some((r, why)) = self.reserved.iter().find(|(r, _)| r.overlaps(&range)) {
            return Err(SlotError::Reserved { range, reserved: *r, why: why.clone() });
        }
        Ok(())
    }

    /// Registers (or moves) `slot` with KVM.
    fn kvm_set(&self, slot: &Slot) -> Result<(), SlotError> {
        let host = self
            .vm
            .machine()
            .ram()
            .host_range(slot.pa, slot.len)
            .ok_or(SlotError::NotRam { pa: slot.pa.raw(), len: slot.len })?;
        let region = kvm_userspace_memory_region {
            slot: slot.id,
            flags: slot.flags,
            guest_phys_addr: slot.gpa,
            memory_size: slot.len,
            userspace_addr: host.as_ptr() as u64,
        };
        // SAFETY: `[userspace_addr, +memory_size)` is a live part of the machine's RAM mapping
        // (bounds-checked by `host_range`). The `Vm` holds an `Arc<Machine>` and drops its VM fd
        // before it, and every `Vcpu` holds an `Arc<Machine>` too, so the mapping outlives every
        // way the guest can reach it. The mapping is never accessed through Rust references
        // (`Ram` uses raw copies and atomics only), so guest writes cannot violate aliasing.
        unsafe { self.vm.fd().set_user_memory_region(region) }
            .map_err(|e| KvmError::ioctl("KVM_SET_USER_MEMORY_REGION", e).into())
    }

    /// Deletes KVM slot `id` (memory size 0).
    fn kvm_delete(&self, id: u32, flags: u32) -> Result<(), KvmError> {
        let region =
            kvm_userspace_memory_region { slot: id, flags, guest_phys_addr: 0, memory_size: 0, userspace_addr: 0 };
        // SAFETY: a zero-sized region deletes the slot; it hands no memory to KVM, and after it
        // the guest can no longer reach the memory the slot had.
        unsafe { self.vm.fd().set_user_memory_region(region) }
            .map_err(|e| KvmError::ioctl("KVM_SET_USER_MEMORY_REGION(delete)", e))
    }

    /// Replaces KVM slot `old` by `new` (same id): delete, then register; on failure the old
    /// slot is registered again.
    fn kvm_replace(&self, old: &Slot, new: &Slot) -> Result<(), SlotError> {
        self.kvm_delete(old.id, old.flags)?;
        if let Err(e) = self.kvm_set(new) {
            undo("re-register old KVM slot", self.kvm_set(old));
            return Err(e);
        }
        Ok(())
    }
}
