//! vm-memory's `GuestMemoryMmap` and the memory slots: a view of the slots over the same host
//! mapping (VMM, vCPU and device see the same bytes, and the view keeps the RAM alive), and
//! adopting a VMM's guest memory when its regions are machine RAM.

mod common;

use std::sync::Arc;

use common::{Asm, Rig, DEV, MB, UNIT_BASE};
use ioasis::{DeviceRef, Iova, IovaRange, PhysAddr, RequesterId};
use ioasis_kvm::{MemorySlots, SlotError, Vm, VmMemoryError};
use nix::sys::mman::{MapFlags, ProtFlags};
use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionCollectionError,
    GuestRegionMmap, MmapRegion,
};

const CODE_GPA: u64 = 0x1000;
const SLOT_LEN: u64 = 64 << 10;
const MAX_EXITS: usize = 16;

fn dma_read(rig: &Rig, gpa: u64, len: usize) -> Vec<u8> {
    let rid = DeviceRef::Rid(RequesterId::new(0, 0, DEV, 0));
    let mut buf = vec![0; len];
    rig.machine.dma_read(PhysAddr(UNIT_BASE), rid, None, Iova(gpa), &mut buf).expect("DMA read");
    buf
}

/// Slot 0: GPA 0 at machine RAM 4 MiB; slot 1: GPA 1 MiB at machine RAM 8 MiB.
fn two_slots() -> Option<Rig> {
    let mut rig = Rig::new(64 * MB)?;
    rig.slots.add(1, MB, PhysAddr(8 * MB), SLOT_LEN, 0).expect("slot 1");
    rig.slots.add(0, 0, PhysAddr(4 * MB), SLOT_LEN, 0).expect("slot 0");
    Some(rig)
}

#[test]
fn the_view_shares_bytes_with_vcpu_and_device() {
    let Some(rig) = two_slots() else { return };
    let view = rig.slots.guest_memory().expect("view");
    assert_eq!(view.num_regions(), 2);
    // One region per slot, in guest-physical order, over the very host range KVM was given.
    let ram = rig.machine.ram();
    let regions: Vec<_> = view.iter().map(|r| (r.start_addr().0, r.len(), r.as_ptr())).collect();
    let host = |pa, len| ram.host_range(PhysAddr(pa), len).unwrap().as_ptr();
    assert_eq!(regions, [(0, SLOT_LEN, host(4 * MB, SLOT_LEN)), (MB, SLOT_LEN, host(8 * MB, SLOT_LEN))]);
    assert!(view.iter().all(|r| r.file_offset().is_none()), "anonymous RAM has no file");

    // VMM → device: a write through the view is what the device DMAs at IOVA = GPA.
    view.write_slice(b"from the VMM", GuestAddress(MB + 0x3000)).expect("write_slice");
    assert_eq!(dma_read(&rig, MB + 0x3000, 12), b"from the VMM");
    // Device → VMM.
    let rid = DeviceRef::Rid(RequesterId::new(0, 0, DEV, 0));
    rig.machine.dma_write(PhysAddr(UNIT_BASE), rid, None, Iova(0x5000), b"dma").expect("DMA write");
    let mut buf = [0u8; 3];
    view.read_slice(&mut buf, GuestAddress(0x5000)).expect("read_slice");
    assert_eq!(&buf, b"dma");
    // vCPU → VMM: the program goes in through the view; the guest writes both slots.
    let mut asm = Asm::default();
    asm.store_abs(MB as u32 + 0x6000, 0xcafe_f00d).store_abs(0x7000, 0x600d_d00d).hlt();
    view.write_slice(&asm.0, GuestAddress(CODE_GPA)).expect("load program");
    let mut vcpu = rig.slots.vm().create_vcpu(0).expect("vCPU");
    common::run_protected(&mut vcpu, CODE_GPA, MAX_EXITS);
    assert_eq!(view.read_obj::<u32>(GuestAddress(MB + 0x6000)).unwrap(), 0xcafe_f00d);
    assert_eq!(view.read_obj::<u32>(GuestAddress(0x7000)).unwrap(), 0x600d_d00d);
    // Outside the slots is outside the view.
    assert!(view.write_slice(b"x", GuestAddress(2 * MB)).is_err());
    assert!(view.read_slice(&mut [0u8; 2], GuestAddress(SLOT_LEN - 1)).is_err(), "the gap after slot 0");
}

#[test]
fn the_view_keeps_machine_ram_alive() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<ioasis_kvm::SlotMemory>();
    let Some(rig) = two_slots() else { return };
    let view = rig.slots.guest_memory().expect("view");
    let region = view.find_region(GuestAddress(MB)).unwrap().get_mmap();
    assert!(Arc::ptr_eq(region.bitmap().machine(), &rig.machine));
    let machine = Arc::downgrade(&rig.machine);
    drop(rig);
    assert!(machine.upgrade().is_some(), "the view holds the machine");
    view.write_slice(b"still mapped", GuestAddress(0x100)).expect("write after the VM is gone");
    let clone = view.clone();
    drop(view);
    let mut buf = [0u8; 12];
    clone.read_slice(&mut buf, GuestAddress(0x100)).expect("read through a clone");
    assert_eq!(&buf, b"still mapped");
    drop(clone);
    assert!(machine.upgrade().is_some(), "a region taken out of the view holds it too");
    drop(region);
    assert!(machine.upgrade().is_none(), "the last holder gone, the machine (and its RAM) goes");
}

#[test]
fn no_slots_no_view() {
    let Some(rig) = Rig::new(64 * MB) else { return };
    let e = rig.slots.guest_memory().unwrap_err();
    assert!(matches!(e, VmMemoryError::Collection(GuestRegionCollectionError::NoMemoryRegion)), "{e}");
}

/// Slots for a second VM on the same machine, in a fresh IOAS of the same context.
fn second_vm(rig: &Rig) -> MemorySlots {
    let vm = Arc::new(Vm::new(rig.machine.clone()).expect("second VM"));
    MemorySlots::new(vm, rig.ctx.clone(), rig.ctx.alloc_ioas())
}

#[test]
fn a_view_is_adopted_back_and_foreign_memory_is_refused() {
    let Some(rig) = two_slots() else { return };
    let view = rig.slots.guest_memory().expect("view");
    let mut other = second_vm(&rig);
    assert_eq!(other.adopt(&view, 10, 0).expect("adopt"), [10, 11]);
    let got: Vec<_> = other.slots().map(|s| (s.id, s.gpa, s.pa, s.len)).collect();
    assert_eq!(got, [(10, 0, PhysAddr(4 * MB), SLOT_LEN), (11, MB, PhysAddr(8 * MB), SLOT_LEN)]);
    let areas: Vec<_> = rig.ctx.areas(other.ioas()).unwrap().iter().map(|a| (a.range.start.raw(), a.pa)).collect();
    assert_eq!(areas, [(0, PhysAddr(4 * MB)), (MB, PhysAddr(8 * MB))], "IOVA = GPA → the same machine RAM");

    // A region of the VMM's own anonymous memory is not machine RAM: refused, nothing added.
    let mut fresh = second_vm(&rig);
    let anon: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
    let e = fresh.adopt(&anon, 0, 0).unwrap_err();
    assert!(matches!(e, VmMemoryError::Foreign { gpa: 0, len: 0x1000 }), "{e}");
    // A raw region over machine RAM (unit bitmap) next to a foreign one: refused before any slot.
    let inside = raw_region(&rig, 4 * MB, GuestAddress(0));
    let outside = GuestRegionMmap::new(MmapRegion::new(0x1000).unwrap(), GuestAddress(MB)).unwrap();
    let mixed = GuestMemoryMmap::from_regions(vec![inside, outside]).unwrap();
    assert!(matches!(fresh.adopt(&mixed, 0, 0), Err(VmMemoryError::Foreign { gpa: MB, .. })));
    assert_eq!(fresh.slots().count(), 0);
    // A refusal after the first slot was added (the second region's GPA is reserved) removes it.
    fresh.reserve(IovaRange::new(Iova(MB), 0x1000).unwrap(), "vIOMMU").expect("reserve");
    let second = raw_region(&rig, 8 * MB, GuestAddress(MB));
    let both = GuestMemoryMmap::from_regions(vec![raw_region(&rig, 4 * MB, GuestAddress(0)), second]).unwrap();
    let e = fresh.adopt(&both, 0, 0).unwrap_err();
    assert!(matches!(e, VmMemoryError::Slot { gpa: MB, source: SlotError::Reserved { .. } }), "{e}");
    assert_eq!(fresh.slots().count(), 0, "the slot added first was removed again");
    assert!(rig.ctx.areas(fresh.ioas()).unwrap().is_empty());
    // Slot ids that run out.
    let e = fresh.adopt(&view, u32::MAX, 0).unwrap_err();
    assert!(matches!(e, VmMemoryError::NoSlotId { gpa: MB }), "{e}");
}

/// A 4 KiB raw vm-memory region over machine RAM at `pa`, at guest address `gpa`.
fn raw_region(rig: &Rig, pa: u64, gpa: GuestAddress) -> GuestRegionMmap {
    let host = rig.machine.ram().host_range(PhysAddr(pa), 0x1000).unwrap();
    let prot = (ProtFlags::PROT_READ | ProtFlags::PROT_WRITE).bits();
    let flags = (MapFlags::MAP_PRIVATE | MapFlags::MAP_ANONYMOUS).bits();
    // SAFETY: the 4 KiB at `host` are inside the machine's live RAM mapping, and the region is
    // dropped (at the end of the test that built it) before `rig` and its machine.
    let mapping = unsafe { MmapRegion::build_raw(host.as_ptr(), 0x1000, prot, flags) }.unwrap();
    GuestRegionMmap::new(mapping, gpa).unwrap()
}
