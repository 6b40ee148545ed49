//! A real vCPU and a mock-IOMMU DMA device share guest memory through `MemorySlots`.

mod common;

use common::{Rig, MB};
use ioasis::{Iova, IovaRange, PhysAddr};
use ioasis_kvm::{SlotError, Vcpu};
use kvm_ioctls::VcpuExit;

/// Where slot 0's guest memory lives in the machine's RAM.
const SLOT_PA: u64 = 4 * MB;
const SLOT_LEN: u64 = 64 << 10;
const CODE_GPA: u64 = 0x1000;
/// No guest program here needs more exits than this; a run loop never spins forever.
const MAX_EXITS: usize = 16;

/// `mov byte [0x2000], 0x42; mov al, [0x3000]; out 0x10, al; hlt` (16-bit real mode).
const PROGRAM: [u8; 11] = [
    0xc6, 0x06, 0x00, 0x20, 0x42, // mov byte [0x2000], 0x42
    0xa0, 0x00, 0x30, // mov al, [0x3000]
    0xe6, 0x10, // out 0x10, al
    0xf4, // hlt
];

/// Runs `vcpu` in real mode from `rip` (CS = DS = 0) until `hlt`; returns the bytes written to
/// port 0x10. Bounded by `MAX_EXITS`.
fn run_real_mode(vcpu: &mut Vcpu, rip: u64) -> Vec<u8> {
    let fd = vcpu.fd();
    let mut sregs = fd.get_sregs().expect("get sregs");
    for seg in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
        seg.base = 0;
        seg.selector = 0;
    }
    fd.set_sregs(&sregs).expect("set sregs");
    let regs = kvm_bindings::kvm_regs { rip, rflags: 2, ..Default::default() };
    fd.set_regs(&regs).expect("set regs");
    let mut out = Vec::new();
    for _ in 0..MAX_EXITS {
        match fd.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0x10, data) => out.extend_from_slice(data),
            VcpuExit::Hlt => return out,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    panic!("guest did not halt within {MAX_EXITS} exits (port 0x10 got {out:x?})");
}

#[test]
fn vcpu_and_dma_see_the_same_guest_memory() {
    let Some(mut rig) = Rig::new(64 * MB) else { return };
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, 0).expect("slot 0");
    let areas = rig.ctx.areas(rig.slots.ioas()).expect("areas");
    assert_eq!(areas.len(), 1);
    assert_eq!((areas[0].range, areas[0].pa), (IovaRange::new(Iova(0), SLOT_LEN).unwrap(), PhysAddr(SLOT_PA)));

    // The program goes into guest memory through the machine's RAM (the VMM's loader).
    rig.machine.ram().write(PhysAddr(SLOT_PA + CODE_GPA), &PROGRAM).expect("load program");
    // The device DMAs a byte to IOVA = GPA 0x3000 through the mock IOMMU.
    rig.dma_write(0x3000, &[0x99]).expect("DMA into guest memory");
    assert_eq!(rig.ram(SLOT_PA + 0x3000, 1), [0x99], "DMA landed at the slot's PA");

    let mut vcpu = rig.slots.vm().create_vcpu(0).expect("vCPU");
    let out = run_real_mode(&mut vcpu, CODE_GPA);
    assert_eq!(out, [0x99], "the guest read the DMA'd byte and sent it to port 0x10");
    assert_eq!(rig.ram(SLOT_PA + 0x2000, 1), [0x42], "the guest's write is in machine RAM at the slot's PA");
}

#[test]
fn moved_slot_is_seen_by_vcpu_and_device_at_the_new_address() {
    let Some(mut rig) = Rig::new(64 * MB) else { return };
    // Slot 1 starts at GPA 1 MiB, then moves to GPA 0 where the vCPU's code is fetched.
    rig.slots.add(1, MB, PhysAddr(SLOT_PA), SLOT_LEN, 0).expect("slot 1");
    rig.machine.ram().write(PhysAddr(SLOT_PA + CODE_GPA), &PROGRAM).expect("load program");
    rig.slots.move_slot(1, 0).expect("move");
    assert!(rig.dma_write(MB + 0x3000, &[1]).is_err(), "old IOVA no longer mapped");
    rig.dma_write(0x3000, &[0x77]).expect("DMA at the new IOVA");
    let mut vcpu = rig.slots.vm().create_vcpu(0).expect("vCPU");
    assert_eq!(run_real_mode(&mut vcpu, CODE_GPA), [0x77]);
    assert_eq!(rig.ram(SLOT_PA + 0x2000, 1), [0x42]);
}

#[test]
fn refused_slots_change_nothing() {
    let Some(mut rig) = Rig::new(64 * MB) else { return };
    let ioas = rig.slots.ioas();
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, 0).expect("slot 0");
    let before = rig.ctx.areas(ioas).unwrap();

    // A caller-declared reserved region (a vIOMMU's MMIO window, say).
    rig.slots.reserve(IovaRange::new(Iova(0xfed9_0000), 0x1000).unwrap(), "vIOMMU").expect("reserve");
    let e = rig.slots.add(1, 0xfed9_0000, PhysAddr(8 * MB), 0x1000, 0).unwrap_err();
    assert!(matches!(e, SlotError::Reserved { .. }), "{e}");
    // A slot over the x86 MSI window (platform-reserved): the IOAS (through the attached device) refuses it.
    let e = rig.slots.add(1, 0xfee0_0000, PhysAddr(8 * MB), 0x1000, 0).unwrap_err();
    assert!(matches!(e, SlotError::Ioas(_)), "{e}");
    // Overlap with slot 0, duplicate id, unknown id, bad alignment, not RAM.
    assert!(matches!(rig.slots.add(1, 0x8000, PhysAddr(8 * MB), 0x10000, 0), Err(SlotError::Overlap { other: 0, .. })));
    assert!(matches!(rig.slots.add(0, MB, PhysAddr(8 * MB), 0x1000, 0), Err(SlotError::SlotInUse(0))));
    assert!(matches!(rig.slots.remove(7), Err(SlotError::NoSuchSlot(7))));
    assert!(matches!(rig.slots.add(1, MB + 1, PhysAddr(8 * MB), 0x1000, 0), Err(SlotError::BadRange { .. })));
    assert!(matches!(rig.slots.add(1, MB, PhysAddr(64 * MB), 0x1000, 0), Err(SlotError::NotRam { .. })));
    assert!(matches!(rig.slots.resize(0, 128 * MB), Err(SlotError::NotRam { .. })));
    // KVM refuses a slot id beyond its limit: the IOAS mapping made first is rolled back.
    let bad_id = u32::try_from(rig.slots.vm().nr_memslots()).unwrap();
    let e = rig.slots.add(bad_id, MB, PhysAddr(8 * MB), 0x1000, 0).unwrap_err();
    assert!(matches!(e, SlotError::Kvm(ioasis_kvm::KvmError::Ioctl { .. })), "{e}");

    assert_eq!(rig.ctx.areas(ioas).unwrap(), before, "the IOAS is unchanged");
    assert_eq!(rig.slots.slots().count(), 1);
    assert!(rig.dma_write(MB, &[1]).is_err(), "nothing mapped at the refused slot");
    // The refused slot id is still free in KVM.
    rig.slots.add(1, MB, PhysAddr(8 * MB), 0x1000, 0).expect("slot 1 after refusals");
}
