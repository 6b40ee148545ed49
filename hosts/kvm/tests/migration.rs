//! Migration dirty log: a real vCPU's writes (KVM_GET_DIRTY_LOG) and a mock-IOMMU device's DMA
//! writes (HWPT dirty bits) merge into one per-slot bitmap, exactly, read and cleared together,
//! also when the slot is resized, moved or removed between two reads.

mod common;

use std::sync::Arc;

use common::{vm_or_skip, Asm, Rig, DEV, MB, UNIT_BASE};
use ioasis::loader::Registry;
use ioasis::{Context, DeviceDesc, DeviceId, DeviceRef, Intent, IntentItem, Iova, PhysAddr, RequesterId, Target};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_kvm::dirty::{DirtyError, DirtyLog};
use ioasis_kvm::{MemorySlots, Vcpu};
use ioasis_plugin_mock::format::cap;
use ioasis_plugin_mock::model::MockModel;
use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
use kvm_ioctls::VcpuExit;

const SLOT_PA: u64 = 4 * MB;
const SLOT_LEN: u64 = 64 << 10;
const PAGE: u64 = 4096;
/// `errno` of an interrupted system call.
const EINTR: i32 = 4;
/// No guest program here needs more exits than this; a run loop never spins forever.
const MAX_EXITS: usize = 16;

/// At GPA 0x1000: `mov byte [0x2000], 0x11; mov byte [0x3000], 0x22; mov byte [0x4000], 0x33;
/// mov al, [0x9000]; hlt` (16-bit real mode). Writes pages 2, 3, 4; reads pages 1 (fetch) and 9.
const PROGRAM_1: [u8; 19] = [
    0xc6, 0x06, 0x00, 0x20, 0x11, // mov byte [0x2000], 0x11
    0xc6, 0x06, 0x00, 0x30, 0x22, // mov byte [0x3000], 0x22
    0xc6, 0x06, 0x00, 0x40, 0x33, // mov byte [0x4000], 0x33
    0xa0, 0x00, 0x90, // mov al, [0x9000]
    0xf4, // hlt
];
const PROGRAM_1_GPA: u64 = 0x1000;
/// At GPA 0x1100: `mov byte [0x2008], 0x44; hlt` — writes page 2 again.
const PROGRAM_2: [u8; 6] = [0xc6, 0x06, 0x08, 0x20, 0x44, 0xf4];
const PROGRAM_2_GPA: u64 = 0x1100;

/// A machine with a mock unit, device 00:03.0 whose contract grants untagged DMA and dirty
/// tracking, attached to the slots' IOAS, and a KVM VM. `None` when KVM is unusable.
struct DirtyRig {
    machine: Arc<Machine>,
    device: DeviceId,
    slots: MemorySlots,
}

impl DirtyRig {
    fn new() -> Option<Self> {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let machine =
            Arc::new(Machine::new(MachineConfig { ram_bytes: 64 * MB, table_pool_bytes: 16 * MB }).expect("machine"));
        let vm = vm_or_skip(machine.clone())?;
        let ctx = Arc::new(Context::new(machine.clone()));
        let model = Arc::new(MockModel::new(cap::FULL));
        machine.add_unit(PhysAddr(UNIT_BASE), 0x1000, model).expect("unit window");
        let plugin = Registry::with_builtins().expect("built-ins").get("mock").expect("mock is built in");
        ctx.add_unit(&plugin, "u0", PhysAddr(UNIT_BASE), 0, "").expect("probe");
        let device = ctx.bind_device(DeviceDesc::pci("nic", RequesterId::new(0, 0, DEV, 0), "u0")).expect("bind");
        let intent = Intent::new(vec![IntentItem::UntaggedDma, IntentItem::DirtyTracking]);
        ctx.negotiate(device, &intent).expect("contract");
        let ioas = ctx.alloc_ioas();
        ctx.attach(device, None, Target::Ioas(ioas)).expect("attach");
        Some(Self { machine, device, slots: MemorySlots::new(vm, ctx, ioas) })
    }

    fn dma_write(&self, gpa: u64, data: &[u8]) {
        let rid = DeviceRef::Rid(RequesterId::new(0, 0, DEV, 0));
        self.machine.dma_write(PhysAddr(UNIT_BASE), rid, None, Iova(gpa), data).expect("DMA write");
    }

    fn dma_read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let rid = DeviceRef::Rid(RequesterId::new(0, 0, DEV, 0));
        let mut buf = vec![0; len];
        self.machine.dma_read(PhysAddr(UNIT_BASE), rid, None, Iova(gpa), &mut buf).expect("DMA read");
        buf
    }

    fn ram(&self, gpa: u64) -> u8 {
        let mut b = [0u8];
        self.machine.ram().read(PhysAddr(SLOT_PA + gpa), &mut b).expect("ram read");
        b[0]
    }
}

/// Runs `vcpu` in real mode from `rip` (CS = DS = 0) until `hlt`, bounded by `MAX_EXITS`.
fn run_real_mode(vcpu: &mut Vcpu, rip: u64) {
    let fd = vcpu.fd();
    let mut sregs = fd.get_sregs().expect("get sregs");
    for seg in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
        seg.base = 0;
        seg.selector = 0;
    }
    fd.set_sregs(&sregs).expect("set sregs");
    let regs = kvm_bindings::kvm_regs { rip, rflags: 2, ..Default::default() };
    fd.set_regs(&regs).expect("set regs");
    for _ in 0..MAX_EXITS {
        match fd.run() {
            Ok(VcpuExit::Hlt) => return,
            // A signal interrupted KVM_RUN (EINTR): run again.
            Err(e) if e.errno() == EINTR => continue,
            Ok(other) => panic!("unexpected exit {other:?}"),
            Err(e) => panic!("KVM_RUN: {e}"),
        }
    }
    panic!("guest did not halt within {MAX_EXITS} exits");
}

/// Loads a protected-mode program that stores a dword at each of `gpas`, then halts, at slot
/// offset `at` (through the machine's RAM: not a guest write).
fn load_stores(rig: &DirtyRig, at: u64, gpas: &[u64]) {
    let mut asm = Asm::default();
    for (i, gpa) in gpas.iter().enumerate() {
        asm.store_abs(u32::try_from(*gpa).unwrap(), 0x1000 + i as u32);
    }
    asm.hlt();
    rig.machine.ram().write(PhysAddr(SLOT_PA + at), &asm.0).expect("load program");
}

/// The one-word bitmap (the slot has 16 pages) with bits `pages` set.
fn bits(pages: &[u64]) -> Vec<u64> {
    vec![pages.iter().fold(0u64, |w, p| w | 1 << p)]
}

#[test]
fn merged_bitmap_is_exactly_vcpu_plus_device_writes() {
    let Some(mut rig) = DirtyRig::new() else { return };
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, KVM_MEM_LOG_DIRTY_PAGES).expect("slot 0");
    // The VMM's loader writes the programs through the machine's RAM: not a guest write.
    rig.machine.ram().write(PhysAddr(SLOT_PA + PROGRAM_1_GPA), &PROGRAM_1).expect("load program 1");
    rig.machine.ram().write(PhysAddr(SLOT_PA + PROGRAM_2_GPA), &PROGRAM_2).expect("load program 2");
    // A device write before logging starts is not reported.
    rig.dma_write(0xf000, &[1]);

    let mut log = DirtyLog::start(&rig.slots).expect("start dirty logging");
    let ctx = rig.slots.context().clone();
    assert_eq!(log.tracked(&rig.slots), ctx.ioas_hwpts(rig.slots.ioas()).unwrap(), "every HWPT tracked");
    assert_eq!(log.tracked(&rig.slots).len(), 1);
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[]), "nothing written yet");

    // Device: writes pages 3 (the guest writes it too), 5 and 6 (two pages in one DMA); reads 8.
    rig.dma_write(0x3800, &[0xaa]);
    rig.dma_write(0x5ffe, &[0xbb; 4]);
    assert_eq!(rig.dma_read(0x8000, 16), vec![0; 16]);
    // vCPU: writes pages 2, 3, 4; fetches from page 1 and reads page 9.
    let mut vcpu = rig.slots.vm().create_vcpu(0).expect("vCPU");
    run_real_mode(&mut vcpu, PROGRAM_1_GPA);
    assert_eq!([rig.ram(0x2000), rig.ram(0x3000), rig.ram(0x4000)], [0x11, 0x22, 0x33], "guest writes landed");
    assert_eq!([rig.ram(0x3800), rig.ram(0x5ffe), rig.ram(0x6001)], [0xaa, 0xbb, 0xbb], "DMA writes landed");

    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[2, 3, 4, 5, 6]), "exactly the union");
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[]), "read-and-clear cleared both halves");

    // A cleared page written again by the device shows up again (warm IOTLB) ...
    rig.dma_write(0x5000, &[0xcc]);
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[5]));
    // ... and so does one written again by the vCPU (KVM write-protected it again on clear).
    run_real_mode(&mut vcpu, PROGRAM_2_GPA);
    assert_eq!(rig.ram(0x2008), 0x44);
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[2]));
    // Both at once, on the same page and on another.
    rig.dma_write(0x2010, &[0xdd]);
    rig.dma_write(0xa000, &[0xee]);
    run_real_mode(&mut vcpu, PROGRAM_2_GPA);
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[2, 10]));
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[]));

    log.stop(&rig.slots).expect("stop");
    rig.dma_write(0x7000, &[1]);
    let hwpt = ctx.ioas_hwpts(rig.slots.ioas()).unwrap()[0];
    assert!(
        matches!(ctx.read_dirty(hwpt, Iova(0), SLOT_LEN, PAGE, false), Err(ioasis::Error::DirtyTrackingOff { .. })),
        "tracking is off"
    );
}

#[test]
fn refused_reads_are_typed() {
    let Some(mut rig) = DirtyRig::new() else { return };
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, KVM_MEM_LOG_DIRTY_PAGES).expect("slot 0");
    rig.slots.add(1, MB, PhysAddr(8 * MB), SLOT_LEN, 0).expect("slot 1 (not logging)");
    let mut log = DirtyLog::start(&rig.slots).expect("start");
    assert!(matches!(log.read_and_clear(&rig.slots, 7), Err(DirtyError::NoSuchSlot(7))));
    assert!(matches!(log.read_and_clear(&rig.slots, 1), Err(DirtyError::NotLogging(1))));
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[]));
}

#[test]
fn a_hwpt_without_dirty_tracking_is_refused_not_skipped() {
    // The shared rig's device was granted untagged DMA only: its HWPT cannot track dirty pages,
    // so device writes through it would be missed.
    let Some(mut rig) = Rig::new(64 * MB) else { return };
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, KVM_MEM_LOG_DIRTY_PAGES).expect("slot 0");
    let hwpts = rig.ctx.ioas_hwpts(rig.slots.ioas()).unwrap();
    let e = DirtyLog::start(&rig.slots).unwrap_err();
    assert!(matches!(e, DirtyError::Untracked { hwpt, .. } if hwpt == hwpts[0]), "{e}");
    // A log started before the device attached meets the HWPT at its next read: refused too.
    let Some(mut rig) = Rig::new(64 * MB) else { return };
    rig.ctx.detach(rig.device, None).expect("detach");
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, KVM_MEM_LOG_DIRTY_PAGES).expect("slot 0");
    let mut log = DirtyLog::start(&rig.slots).expect("start with no HWPT");
    rig.ctx.attach(rig.device, None, Target::Ioas(rig.slots.ioas())).expect("attach");
    let e = log.read_and_clear(&rig.slots, 0).unwrap_err();
    assert!(matches!(e, DirtyError::Untracked { .. }), "{e}");
}

#[test]
fn a_hwpt_arriving_mid_round_makes_the_whole_slot_dirty_once() {
    let Some(mut rig) = DirtyRig::new() else { return };
    let ctx = rig.slots.context().clone();
    let device = rig.device;
    ctx.detach(device, None).expect("detach");
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, KVM_MEM_LOG_DIRTY_PAGES).expect("slot 0");
    let mut log = DirtyLog::start(&rig.slots).expect("start with no HWPT");
    assert_eq!(log.tracked(&rig.slots).len(), 0);
    // The device attaches mid-round: what it wrote before its HWPT's tracking started is unknown.
    ctx.attach(device, None, Target::Ioas(rig.slots.ioas())).expect("attach");
    rig.dma_write(0x3000, &[1]);
    let all: Vec<u64> = bits(&(0..SLOT_LEN / PAGE).collect::<Vec<_>>());
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), all, "whole slot, conservatively");
    assert_eq!(log.tracked(&rig.slots).len(), 1);
    rig.dma_write(0x4000, &[1]);
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[4]), "exact again from then on");
}

#[test]
fn resizing_a_slot_between_reads_loses_no_write() {
    let Some(mut rig) = DirtyRig::new() else { return };
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, KVM_MEM_LOG_DIRTY_PAGES).expect("slot 0");
    load_stores(&rig, 0x1000, &[0x2000, 0x3000, 0x4000]);
    load_stores(&rig, 0x1100, &[0x2000, 0xe000]);
    let mut log = DirtyLog::start(&rig.slots).expect("start");
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[]));
    let mut vcpu = rig.slots.vm().create_vcpu(0).expect("vCPU");

    // Grow 16 → 32 pages between two reads: the guest and the device write before and after.
    common::run_protected(&mut vcpu, 0x1000, MAX_EXITS); // pages 2, 3, 4
    rig.dma_write(0x5000, &[1]); // page 5
    rig.slots.resize(0, 2 * SLOT_LEN).expect("grow");
    rig.dma_write(0x6000, &[1]); // page 6
    rig.dma_write(0x14000, &[1]); // page 20, in the new part
    common::run_protected(&mut vcpu, 0x1100, MAX_EXITS); // pages 2 (again) and 14
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[2, 3, 4, 5, 6, 14, 20]));
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[]));

    // Shrink 32 → 8 pages: writes to the pages kept are reported, those to the tail cut off are
    // not (that memory left the guest), and the bitmap has the new size.
    common::run_protected(&mut vcpu, 0x1000, MAX_EXITS); // pages 2, 3, 4
    rig.dma_write(0x7000, &[1]); // page 7
    rig.dma_write(0x1c000, &[1]); // page 28, cut off below
    rig.slots.resize(0, 8 * PAGE).expect("shrink");
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), vec![0b1001_1100]);
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), vec![0]);
    log.stop(&rig.slots).expect("stop");
}

#[test]
fn moving_a_slot_between_reads_loses_no_write() {
    let Some(mut rig) = DirtyRig::new() else { return };
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, KVM_MEM_LOG_DIRTY_PAGES).expect("slot 0");
    load_stores(&rig, 0x1000, &[0x2000, 0x3000, 0x4000]);
    load_stores(&rig, 0x1100, &[MB + 0x8000]);
    let mut log = DirtyLog::start(&rig.slots).expect("start");
    let mut vcpu = rig.slots.vm().create_vcpu(0).expect("vCPU");

    common::run_protected(&mut vcpu, 0x1000, MAX_EXITS); // pages 2, 3, 4
    rig.dma_write(0x5000, &[1]); // page 5 (its IOMMU dirty bit goes with the old mapping)
    rig.slots.move_slot(0, MB).expect("move to 1 MiB");
    rig.dma_write(MB + 0x6000, &[1]); // page 6 at the new place
    common::run_protected(&mut vcpu, MB + 0x1100, MAX_EXITS); // page 8 at the new place
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[2, 3, 4, 5, 6, 8]));
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[]));
    // Moving back and forth with nothing written reports nothing.
    rig.slots.move_slot(0, 0).expect("move back");
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[]));
}

#[test]
fn a_removed_slot_takes_its_dirty_pages_with_it() {
    let Some(mut rig) = DirtyRig::new() else { return };
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, KVM_MEM_LOG_DIRTY_PAGES).expect("slot 0");
    load_stores(&rig, 0x1000, &[0x2000, 0x3000]);
    let mut log = DirtyLog::start(&rig.slots).expect("start");
    let mut vcpu = rig.slots.vm().create_vcpu(0).expect("vCPU");
    common::run_protected(&mut vcpu, 0x1000, MAX_EXITS);
    rig.dma_write(0x5000, &[1]);
    // A move keeps the pages for the next read; the slot is removed before that read.
    rig.slots.move_slot(0, MB).expect("move");
    rig.slots.remove(0).expect("remove");
    assert!(matches!(log.read_and_clear(&rig.slots, 0), Err(DirtyError::NoSuchSlot(0))));
    // The same id over the same memory again: only what is written from now on is reported.
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, KVM_MEM_LOG_DIRTY_PAGES).expect("slot 0 again");
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[]));
    rig.dma_write(0x9000, &[1]);
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read"), bits(&[9]));
}

#[test]
fn a_log_only_reads_its_own_slots() {
    let Some(mut rig) = DirtyRig::new() else { return };
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, KVM_MEM_LOG_DIRTY_PAGES).expect("slot 0");
    let mut log = DirtyLog::start(&rig.slots).expect("start");
    let ctx = rig.slots.context().clone();
    let others = MemorySlots::new(rig.slots.vm().clone(), ctx.clone(), ctx.alloc_ioas());
    let e = log.read_and_clear(&others, 0).unwrap_err();
    assert!(matches!(e, DirtyError::WrongSlots { .. }), "{e}");
}
