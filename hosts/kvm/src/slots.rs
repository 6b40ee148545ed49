//! Memory slots: KVM guest memory and an IOAS kept in step (IOVA = guest-physical address).
//!
//! Every operation is all or nothing. The IOAS is changed first (it is the side that refuses
//! most: reserved regions, apertures of attached devices, backend failures), then KVM; when KVM
//! refuses, the IOAS change is undone, so a refused operation leaves both as they were.
//!
//! Moving or resizing a slot first reads and clears its dirty pages (KVM's log, and the IOMMU
//! dirty bits of the HWPTs a [`DirtyLog`](crate::dirty::DirtyLog) tracks) and keeps them for the
//! next [`DirtyLog::read_and_clear`](crate::dirty::DirtyLog::read_and_clear): re-registering a
//! KVM slot restarts its log, and unmapping an IOVA range drops its dirty bits.
//!
//! vm-memory's [`GuestMemoryMmap`] is what rust-vmm VMMs pass around: [`MemorySlots::guest_memory`]
//! gives one over the slots (same host mapping, no copy), and [`MemorySlots::adopt`] turns a
//! VMM's `GuestMemoryMmap` into slots when its regions are the machine's RAM.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use ioasis::{Context, IoasId, Iova, IovaRange, PhysAddr, Prot, UnmapMode, PAGE_SIZE};
use ioasis_baremetal::Machine;
use kvm_bindings::kvm_userspace_memory_region;
use nix::sys::mman::{MapFlags, ProtFlags};
use vm_memory::bitmap::{Bitmap, WithBitmapSlice};
use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionCollectionError,
    GuestRegionMmap,
};

use crate::dirty::{self, DirtyHandle};
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
    /// What the IOAS mapping of the slot allows: read-only for a `KVM_MEM_READONLY` slot
    /// (device and emulated writes fail there, as the guest's do), read-write otherwise.
    pub fn prot(&self) -> Prot {
        if self.flags & kvm_bindings::KVM_MEM_READONLY != 0 {
            Prot::READ
        } else {
            Prot::RW
        }
    }

    /// The guest-physical range (= IOVA range in the IOAS).
    pub fn range(&self) -> IovaRange {
        // Every stored slot passed `check_range`, so the range is non-empty and does not wrap.
        IovaRange::new(Iova(self.gpa), self.len).unwrap_or(IovaRange { start: Iova(self.gpa), last: Iova(self.gpa) })
    }
}

/// The bitmap type of [`MemorySlots::guest_memory`]'s regions. It tracks nothing (vCPU and
/// device writes are [`DirtyLog`](crate::dirty::DirtyLog)'s job) and holds the [`Machine`], so
/// the RAM mapping the regions point into outlives every clone of the view and of its regions.
#[derive(Clone)]
pub struct MachineRam(Arc<Machine>);

impl MachineRam {
    /// The machine whose RAM the region shows.
    pub fn machine(&self) -> &Arc<Machine> {
        &self.0
    }
}

impl std::fmt::Debug for MachineRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MachineRam").finish_non_exhaustive()
    }
}

impl WithBitmapSlice<'_> for MachineRam {
    type S = ();
}

impl Bitmap for MachineRam {
    fn mark_dirty(&self, _offset: usize, _len: usize) {}
    fn dirty_at(&self, _offset: usize) -> bool {
        false
    }
    fn slice_at(&self, _offset: usize) {}
}

/// vm-memory's view of the slots ([`MemorySlots::guest_memory`]).
pub type SlotMemory = GuestMemoryMmap<MachineRam>;

/// Why a vm-memory view could not be made, or a VMM's guest memory could not be adopted.
#[derive(Debug, thiserror::Error)]
pub enum VmMemoryError {
    /// There are no slots (vm-memory has no empty guest memory), or the regions overlap.
    #[error("no vm-memory view of these slots: {0}")]
    Collection(#[from] GuestRegionCollectionError),
    /// vm-memory refused a region over a slot's host range.
    #[error("vm-memory refused the region of slot {id}: {source}")]
    Region {
        /// The slot.
        id: u32,
        /// vm-memory's error.
        source: MmapRegionError,
    },
    /// A slot's range is not in the machine's RAM any more (cannot happen for slots this type
    /// added; reported rather than assumed).
    #[error("memory slot {0} is not in machine RAM")]
    NotRam(u32),
    /// The memfd behind RAM could not be duplicated for the regions' file offsets.
    #[error("cannot duplicate the RAM memfd: {0}")]
    Dup(std::io::Error),
    /// A region of the VMM's guest memory is not in the machine's RAM (neither inside its
    /// mapping nor a shared mapping of its memfd): KVM and the IOAS would see different bytes.
    #[error("guest memory at {gpa:#x}+{len:#x} is not the machine's RAM")]
    Foreign {
        /// Guest-physical start of the region.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// A region maps the machine's memfd privately: its writes would not reach the machine.
    #[error("guest memory at {gpa:#x} maps the RAM memfd privately (copy-on-write), not shared")]
    PrivateMapping {
        /// Guest-physical start of the region.
        gpa: u64,
    },
    /// There are more regions than slot ids from the first one.
    #[error("no slot id for the region at {gpa:#x}")]
    NoSlotId {
        /// Guest-physical start of the region.
        gpa: u64,
    },
    /// Adding the region's slot was refused; the regions adopted before it were removed again.
    #[error("guest memory at {gpa:#x}: {source}")]
    Slot {
        /// Guest-physical start of the region.
        gpa: u64,
        /// Why.
        source: SlotError,
    },
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
    /// Dirty logging: the HWPTs tracked, the shadows registered and the dirty bits kept across
    /// slot and mapping changes (shared with the shadows that feed it).
    dirty: DirtyHandle,
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
        Self { vm, ctx, ioas, slots: BTreeMap::new(), reserved: Vec::new(), dirty: Arc::new(Mutex::default()) }
    }

    /// The dirty-logging state, which shadows and passthroughs synced with these slots share.
    pub(crate) fn dirty_handle(&self) -> &DirtyHandle {
        &self.dirty
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
    /// registered with KVM (with `flags`) and mapped in the IOAS at IOVA = `gpa` (read-write, or
    /// read-only for a `KVM_MEM_READONLY` slot: [`Slot::prot`]).
    pub fn add(&mut self, id: u32, gpa: u64, pa: PhysAddr, len: u64, flags: u32) -> Result<(), SlotError> {
        if self.slots.contains_key(&id) {
            return Err(SlotError::SlotInUse(id));
        }
        let range = self.check_range(gpa, pa, len)?;
        self.check_free(range, None)?;
        let slot = Slot { id, gpa, pa, len, flags };
        self.ctx.map(self.ioas, Some(Iova(gpa)), pa, len, slot.prot())?;
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
            undo("re-map removed slot", self.ctx.map(self.ioas, Some(Iova(slot.gpa)), slot.pa, slot.len, slot.prot()));
            return Err(e.into());
        }
        tracing::info!(id, gpa = slot.gpa, "memory slot removed");
        self.slots.remove(&id);
        // The memory left the guest: dirty bits kept for it describe nothing any more.
        dirty::forget_slot(self, &slot);
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
        // The IOAS unmap below drops the IOMMU dirty bits of the old range: keep them first.
        dirty::flush(self, &old)?;
        // The old and new ranges may overlap, so unmap before mapping.
        self.ctx.unmap(self.ioas, Iova(old.gpa), old.len, UnmapMode::Exact)?;
        if let Err(e) = self.ctx.map(self.ioas, Some(Iova(new_gpa)), old.pa, old.len, old.prot()) {
            undo("re-map slot at old place", self.ctx.map(self.ioas, Some(Iova(old.gpa)), old.pa, old.len, old.prot()));
            return Err(e.into());
        }
        if let Err(e) = self.kvm_set(&new) {
            undo("unmap slot at new place", self.ctx.unmap(self.ioas, Iova(new_gpa), old.len, UnmapMode::Exact));
            undo("re-map slot at old place", self.ctx.map(self.ioas, Some(Iova(old.gpa)), old.pa, old.len, old.prot()));
            return Err(e);
        }
        tracing::info!(id, from = old.gpa, to = new_gpa, "memory slot moved");
        self.slots.insert(id, new);
        Ok(())
    }

    /// Resizes slot `id` to `new_len` bytes at the same guest-physical and physical start.
    /// Shrinking unmaps the tail from the IOAS; growing maps the extension. KVM cannot resize a
    /// slot in place, so the KVM slot is deleted and registered again: its dirty log restarts
    /// (the pages it held are read out first and kept for the next
    /// [`DirtyLog::read_and_clear`](crate::dirty::DirtyLog::read_and_clear)), and a vCPU running
    /// meanwhile may see the slot missing.
    pub fn resize(&mut self, id: u32, new_len: u64) -> Result<(), SlotError> {
        let old = *self.slots.get(&id).ok_or(SlotError::NoSuchSlot(id))?;
        if new_len == old.len {
            return Ok(());
        }
        let range = self.check_range(old.gpa, old.pa, new_len)?;
        if new_len > old.len {
            self.check_free(range, Some(id))?;
        }
        let new = Slot { len: new_len, ..old };
        // Re-registering the KVM slot restarts its dirty log: keep what it holds first.
        dirty::flush(self, &old)?;
        if new_len < old.len {
            let tail = old.len - new_len;
            self.ctx.unmap(self.ioas, Iova(old.gpa + new_len), tail, UnmapMode::Cut)?;
            if let Err(e) = self.kvm_replace(&old, &new) {
                let (iova, pa) = (Iova(old.gpa + new_len), PhysAddr(old.pa.raw() + new_len));
                undo("re-map cut tail", self.ctx.map(self.ioas, Some(iova), pa, tail, old.prot()));
                return Err(e);
            }
        } else {
            let ext = new_len - old.len;
            let (iova, pa) = (Iova(old.gpa + old.len), PhysAddr(old.pa.raw() + old.len));
            self.ctx.map(self.ioas, Some(iova), pa, ext, old.prot())?;
            if let Err(e) = self.kvm_replace(&old, &new) {
                undo("unmap extension", self.ctx.unmap(self.ioas, iova, ext, UnmapMode::Exact));
                return Err(e);
            }
        }
        tracing::info!(id, from = old.len, to = new_len, "memory slot resized");
        self.slots.insert(id, new);
        dirty::fit_carried(self, &old, &new);
        Ok(())
    }

    /// vm-memory's view of the current slots: one region per slot at its guest-physical address,
    /// over the same host mapping KVM uses (no copy). Writes through it are seen by vCPUs and
    /// devices, and theirs through it.
    ///
    /// It is a snapshot of the slot layout: take a new one after slots change. Each region's
    /// bitmap ([`MachineRam`]) holds the machine, so the view (and any clone of it or of its
    /// regions) can never point into unmapped memory. For memfd-backed RAM each region also
    /// carries its [`FileOffset`] (a duplicate of the memfd, offset = physical address), which
    /// is what a vhost-user frontend sends to its backend.
    pub fn guest_memory(&self) -> Result<SlotMemory, VmMemoryError> {
        let machine = self.vm.machine();
        let ram = machine.ram();
        let file = match ram.memfd() {
            Some(fd) => Some(Arc::new(File::from(fd.try_clone_to_owned().map_err(VmMemoryError::Dup)?))),
            None => None,
        };
        let prot = (ProtFlags::PROT_READ | ProtFlags::PROT_WRITE).bits();
        let flags = if file.is_some() {
            MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE
        } else {
            MapFlags::MAP_PRIVATE | MapFlags::MAP_ANONYMOUS | MapFlags::MAP_NORESERVE
        }
        .bits();
        let mut slots: Vec<&Slot> = self.slots.values().collect();
        slots.sort_by_key(|s| s.gpa);
        let mut regions = Vec::with_capacity(slots.len());
        for s in slots {
            let not_ram = || VmMemoryError::NotRam(s.id);
            let host = ram.host_range(s.pa, s.len).ok_or_else(not_ram)?;
            let size = usize::try_from(s.len).map_err(|_| not_ram())?;
            let mut builder = MmapRegionBuilder::new_with_bitmap(size, MachineRam(machine.clone()))
                .with_mmap_prot(prot)
                .with_mmap_flags(flags);
            if let Some(file) = &file {
                builder = builder.with_file_offset(FileOffset::from_arc(file.clone(), s.pa.raw()));
            }
            // SAFETY: `[host, host+size)` lies inside the machine's live RAM mapping (checked by
            // `host_range`), which was made with exactly these protection bits and flags. The
            // region never unmaps it (vm-memory marks raw regions as not owned), and its bitmap
            // holds an `Arc<Machine>`, so the mapping outlives the region and every clone of it.
            // vm-memory reaches the bytes through volatile copies and raw pointers only, never
            // Rust references, which is what `Ram` requires of every user of its mapping.
            let builder = unsafe { builder.with_raw_mmap_pointer(host.as_ptr()) };
            let mapping = builder.build().map_err(|source| VmMemoryError::Region { id: s.id, source })?;
            regions.push(GuestRegionMmap::new(mapping, GuestAddress(s.gpa)).ok_or_else(not_ram)?);
        }
        Ok(GuestMemoryMmap::from_regions(regions)?)
    }

    /// Adds one slot per region of a VMM's `mem` (ids `first_id`, `first_id + 1`, ... in
    /// guest-physical order, each with `flags`), all or nothing. Returns the ids.
    ///
    /// A region is accepted only when its bytes *are* machine RAM, so that KVM, the IOAS and
    /// the VMM see the same memory: either its host range lies inside the machine's RAM mapping
    /// (physical address = offset in the mapping; e.g. a view from
    /// [`MemorySlots::guest_memory`]), or it maps the machine's memfd shared (physical address =
    /// file offset; e.g. a VMM that mapped [`ioasis_baremetal::Ram::memfd`] itself). Any other
    /// region is refused with [`VmMemoryError::Foreign`] and nothing is added.
    pub fn adopt<B: Bitmap>(
        &mut self,
        mem: &GuestMemoryMmap<B>,
        first_id: u32,
        flags: u32,
    ) -> Result<Vec<u32>, VmMemoryError> {
        let mut plan = Vec::new();
        for (n, region) in mem.iter().enumerate() {
            let gpa = region.start_addr().0;
            let len = region.len();
            let id = u32::try_from(n).ok().and_then(|n| first_id.checked_add(n));
            let id = id.ok_or(VmMemoryError::NoSlotId { gpa })?;
            plan.push((id, gpa, self.machine_pa(region, gpa, len)?, len));
        }
        let mut added = Vec::with_capacity(plan.len());
        for (id, gpa, pa, len) in plan {
            if let Err(source) = self.add(id, gpa, pa, len, flags) {
                for done in added.iter().rev() {
                    undo("remove adopted slot", self.remove(*done));
                }
                return Err(VmMemoryError::Slot { gpa, source });
            }
            added.push(id);
        }
        tracing::info!(slots = added.len(), "guest memory adopted");
        Ok(added)
    }

    /// The machine-physical address of a VMM region's bytes (see [`MemorySlots::adopt`]).
    fn machine_pa<B: Bitmap>(
        &self,
        region: &GuestRegionMmap<B>,
        gpa: u64,
        len: u64,
    ) -> Result<PhysAddr, VmMemoryError> {
        let ram = self.vm.machine().ram();
        if let Some(pa) = ram.phys_addr_of(region.as_ptr(), len) {
            return Ok(pa);
        }
        let file = region.file_offset().ok_or(VmMemoryError::Foreign { gpa, len })?;
        let pa =
            ram.memfd_phys_addr(file.file().as_fd(), file.start(), len).ok_or(VmMemoryError::Foreign { gpa, len })?;
        if region.flags() & MapFlags::MAP_SHARED.bits() == 0 {
            return Err(VmMemoryError::PrivateMapping { gpa });
        }
        Ok(pa)
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
