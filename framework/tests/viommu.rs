//! vIOMMU, vDEVICE, virtual event queue and hardware queue objects, on the mock (spec §7).

mod common;

use common::{mock_plugin, write_stage1, Rig, MB};
use ioasis::abi::{ErrorCode, Fault, HwQueueKind, HwptFlags, ViommuFeatures, ViommuFlags, ViommuKind, VirtualCommand};
use ioasis::platform::Platform;
use ioasis::{
    DeviceId, Error, HwptId, HwptSpec, IntentItem, IoasId, Iova, PhysAddr, Prot, PtFormat, Target, UnmapMode, ViommuId,
};
use ioasis_plugin_mock::format::{cap, pte, reg, vm};

/// Guest-physical [0, 16 MiB) is host-physical [64 MiB, 80 MiB).
const G2H: u64 = 64 * MB;
/// Where the guest's stage-1 tables start (guest-physical).
const S1_ROOT: u64 = 0x1000;
/// The stage-1 address the guest's device uses.
const VA: u64 = 0x4000_0000;

struct Vm {
    rig: Rig,
    devs: [DeviceId; 2],
    ioas: IoasId,
    parent: HwptId,
    viommu: ViommuId,
}

fn nested_device(rig: &Rig, dev: u8) -> DeviceId {
    rig.paging_device(dev, 0, &[IntentItem::NestedStage1 { format: PtFormat::MOCK }])
}

fn command(op: u64, virt: u64, pasid: Option<u32>, addr: u64, size: u64) -> VirtualCommand {
    let mut w0 = op | (virt << vm::VIRT_SHIFT);
    if let Some(p) = pasid {
        w0 |= vm::PASID_V | (u64::from(p) << vm::PASID_SHIFT);
    }
    VirtualCommand { words: [w0, addr, size, 0] }
}

/// A VM: its stage-2, a vIOMMU over it, devices 00:01.0 and 00:02.0 as the guest's 0x10 and 0x11.
fn vm_with(caps: u64) -> Vm {
    let rig = Rig::with_units(&[caps], &mock_plugin());
    let devs = [nested_device(&rig, 1), nested_device(&rig, 2)];
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(G2H), 16 * MB, Prot::RW).unwrap();
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let parent =
        rig.ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: None }).unwrap();
    let viommu = rig.ctx.alloc_viommu(parent, ViommuKind::MOCK, ViommuFlags::default()).unwrap();
    rig.ctx.alloc_vdevice(viommu, devs[0], 0x10).unwrap();
    rig.ctx.alloc_vdevice(viommu, devs[1], 0x11).unwrap();
    Vm { rig, devs, ioas, parent, viommu }
}

fn nested_in(vm: &Vm) -> HwptId {
    let unit = vm.rig.ctx.unit_by_name("u0").unwrap();
    let spec = HwptSpec::NestedIn {
        viommu: vm.viommu,
        format: PtFormat::MOCK,
        root: Iova(S1_ROOT),
        words: vec![],
        fault_queue: None,
    };
    vm.rig.ctx.alloc_hwpt(unit, spec).unwrap()
}

#[test]
fn nested_hwpts_in_a_viommu_share_its_vmid_and_translate() {
    let vm = vm_with(cap::FULL);
    let info = vm.rig.ctx.viommu_info(vm.viommu).unwrap();
    assert_eq!(info.kind, ViommuKind::MOCK);
    assert_eq!(info.tag, 1, "the first VMID");
    assert!(info.features.contains(ViommuFeatures::HW_QUEUE));
    assert_eq!(vm.rig.ctx.viommu_parent(vm.viommu).unwrap(), vm.parent);
    write_stage1(&vm.rig, G2H, S1_ROOT, VA, 0x10_0000, pte::R | pte::W);
    let h = nested_in(&vm);
    assert_eq!(vm.rig.ctx.hwpt_viommu(h).unwrap(), Some(vm.viommu));
    // Mock spec §4 word 3 [15:8]: the descriptor carries the VMID.
    let handle = vm.rig.ctx.hwpt_info(h).unwrap().handle;
    let w3 = u64::from_le_bytes(vm.rig.ram(handle + 24, 8).try_into().unwrap());
    assert_eq!((w3 >> 8) & 0xff, info.tag);
    vm.rig.ctx.attach(vm.devs[0], None, Target::Hwpt(h)).unwrap();
    vm.rig.dma_write(0, 1, None, VA + 0x10, b"in a vm").unwrap();
    assert_eq!(vm.rig.ram(G2H + 0x10_0010, 7), b"in a vm");
    // A second vIOMMU gets another VMID.
    let other = vm.rig.ctx.alloc_viommu(vm.parent, ViommuKind::MOCK, ViommuFlags::default()).unwrap();
    assert_eq!(vm.rig.ctx.viommu_info(other).unwrap().tag, 2);
}

#[test]
fn virtual_ids_are_unique_and_a_device_has_one() {
    let vm = vm_with(cap::FULL);
    let ctx = &vm.rig.ctx;
    let third = nested_device(&vm.rig, 3);
    let e = ctx.alloc_vdevice(vm.viommu, third, 0x10).unwrap_err();
    assert!(matches!(e, Error::VirtualIdInUse { virt_id: 0x10, .. }), "{e}");
    let e = ctx.alloc_vdevice(vm.viommu, vm.devs[0], 0x20).unwrap_err();
    assert!(matches!(e, Error::Busy { .. }), "{e}");
    // The mock's virtual-id table holds ids 0-511: the last one works, the next is refused.
    let vd = ctx.alloc_vdevice(vm.viommu, third, 511).unwrap();
    assert_eq!(ctx.vdevice(vd).unwrap(), (vm.viommu, third, 511));
    ctx.destroy(vd).unwrap();
    let e = ctx.alloc_vdevice(vm.viommu, third, 512).unwrap_err();
    assert_eq!(e.plugin_code(), Some(ErrorCode::OUT_OF_RANGE), "{e}");
    // A device with a vDEVICE cannot be unbound.
    assert!(matches!(ctx.destroy(vm.devs[1]), Err(Error::Busy { .. })));
    // Unknown flag bits are refused before the backend is asked.
    let e = ctx.alloc_viommu(vm.parent, ViommuKind::MOCK, ViommuFlags(1)).unwrap_err();
    assert!(matches!(e, Error::UnknownBits { .. }), "{e}");
    // A vIOMMU's parent must be paging.
    let blocking = ctx.alloc_hwpt(ctx.unit_by_name("u0").unwrap(), HwptSpec::Blocking).unwrap();
    assert!(ctx.alloc_viommu(blocking, ViommuKind::MOCK, ViommuFlags::default()).is_err());
    // And a mock unit speaks only mock commands.
    let e = ctx.alloc_viommu(vm.parent, ViommuKind::VTD, ViommuFlags::default()).unwrap_err();
    assert_eq!(e.plugin_code(), Some(ErrorCode::UNSUPPORTED), "{e}");
}

#[test]
fn guest_commands_name_virtual_ids_and_an_unknown_one_stops_the_batch() {
    let vm = vm_with(cap::FULL);
    let ctx = &vm.rig.ctx;
    write_stage1(&vm.rig, G2H, S1_ROOT, VA, 0x10_0000, pte::R | pte::W);
    let h = nested_in(&vm);
    ctx.attach(vm.devs[0], None, Target::Hwpt(h)).unwrap();
    vm.rig.dma_write(0, 1, None, VA, b"one").unwrap();
    // The guest remaps: stale until it invalidates.
    write_stage1(&vm.rig, G2H, S1_ROOT, VA, 0x20_0000, pte::R | pte::W);
    vm.rig.dma_write(0, 1, None, VA + 8, b"stale").unwrap();
    assert_eq!(vm.rig.ram(G2H + 0x10_0008, 5), b"stale");
    // Command 0 invalidates for virtual device 0x10; command 1 names 0x99, not the VM's.
    let cmds = [
        command(vm::OP_STAGE1_RANGE, 0x10, None, VA, 0x1000),
        command(vm::OP_STAGE1_RANGE, 0x99, None, VA, 0x1000),
        command(vm::OP_SYNC, 0, None, 0, 0),
    ];
    let e = ctx.viommu_invalidate(vm.viommu, &cmds).unwrap_err();
    let Error::Invalidation { handled, ref error, .. } = e else { panic!("{e}") };
    assert_eq!(handled, 1, "{e}");
    assert!(error.message.contains("0x99"), "{e}");
    // Command 0 was carried out.
    vm.rig.dma_write(0, 1, None, VA + 16, b"fresh").unwrap();
    assert_eq!(vm.rig.ram(G2H + 0x20_0010, 5), b"fresh");
    // The physical id of a device does not work as a virtual one.
    let by_phys = command(vm::OP_DEVICE, 0x0008, None, 0, 0);
    assert!(matches!(ctx.viommu_invalidate(vm.viommu, &[by_phys]), Err(Error::Invalidation { handled: 0, .. })));
    // Reserved bits and unknown opcodes are refused; a whole good batch reports its count.
    let reserved = VirtualCommand { words: [vm::OP_SYNC | 0x200, 0, 0, 0] };
    assert!(matches!(ctx.viommu_invalidate(vm.viommu, &[reserved]), Err(Error::Invalidation { .. })));
    let unknown = VirtualCommand { words: [0x7f, 0, 0, 0] };
    assert!(matches!(ctx.viommu_invalidate(vm.viommu, &[unknown]), Err(Error::Invalidation { .. })));
    let good = [command(vm::OP_DEVICE, 0x10, None, 0, 0), command(vm::OP_STAGE1_RANGE, 0x10, None, 0, 0)];
    assert_eq!(ctx.viommu_invalidate(vm.viommu, &good).unwrap(), 2);
    // Virtual device 0x11 is the VM's but uses no nested HWPT of this vIOMMU.
    let idle = command(vm::OP_STAGE1_RANGE, 0x11, None, 0, 0);
    assert!(matches!(ctx.viommu_invalidate(vm.viommu, &[idle]), Err(Error::Invalidation { handled: 0, .. })));
}

#[test]
fn stage1_faults_reach_the_event_queue_with_the_virtual_id_in_order_and_losses_are_counted() {
    let vm = vm_with(cap::FULL);
    let ctx = &vm.rig.ctx;
    write_stage1(&vm.rig, G2H, S1_ROOT, VA, 0x10_0000, pte::R);
    let h = nested_in(&vm);
    ctx.attach(vm.devs[1], None, Target::Hwpt(h)).unwrap();
    let q = ctx.alloc_veventq(vm.viommu, 2).unwrap();
    assert!(matches!(ctx.alloc_veventq(vm.viommu, 2), Err(Error::Busy { .. })), "one queue per vIOMMU");
    assert!(ctx.alloc_veventq(vm.viommu, 0).is_err());
    // A write to a read-only stage-1 page: a stage-1 permission fault of device 00:02.0.
    assert!(vm.rig.dma_write(0, 2, None, VA, b"x").is_err());
    ctx.poll_faults().unwrap();
    let got = ctx.read_vevents(q).unwrap();
    assert_eq!(got.lost, 0);
    assert_eq!(got.events.len(), 1);
    let ev = &got.events[0];
    assert_eq!(
        (ev.seq, ev.virt_id, ev.addr, ev.access, ev.reason),
        (0, 0x11, Iova(VA), Prot::WRITE, Fault::PERMISSION)
    );
    assert!(ctx.fault_log().is_empty(), "the guest's fault is not the host's");
    // A stage-1 output outside the stage-2: a fault in the parent's walk, the host's.
    write_stage1(&vm.rig, G2H, S1_ROOT, VA + 0x8000, 0x4000_0000, pte::R | pte::W);
    assert!(vm.rig.dma_read(0, 2, None, VA + 0x8000, 4).is_err());
    ctx.poll_faults().unwrap();
    assert!(ctx.read_vevents(q).unwrap().events.is_empty());
    let log = ctx.take_fault_log();
    assert_eq!(log.len(), 1);
    assert_ne!(log[0].reason & Fault::IN_PARENT, 0);
    assert_eq!(log[0].dev, Rig::rid(2), "the host sees the physical id");
    // Four stage-1 faults into a queue of two: two kept, two counted as lost.
    for i in 0..4u64 {
        assert!(vm.rig.dma_write(0, 2, None, VA + 0x1000 * (i + 1), b"y").is_err());
    }
    ctx.poll_faults().unwrap();
    let got = ctx.read_vevents(q).unwrap();
    assert_eq!(got.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(got.events[1].addr, Iova(VA + 0x2000));
    assert_eq!(got.lost, 2);
    assert!(vm.rig.dma_write(0, 2, None, VA, b"z").is_err());
    ctx.poll_faults().unwrap();
    let got = ctx.read_vevents(q).unwrap();
    assert_eq!((got.events.len(), got.events[0].seq, got.lost), (1, 5, 0), "the lost events kept their numbers");
    // Without its vDEVICE the device's faults are the host's.
    ctx.detach(vm.devs[1], None).unwrap();
    let vd = ctx.alloc_vdevice(vm.viommu, nested_device(&vm.rig, 3), 0x12).unwrap();
    ctx.destroy(vd).unwrap();
    let third = ctx.vdevice(vd);
    assert!(third.is_err(), "destroyed");
}

#[test]
fn the_virtual_command_queue_runs_guest_commands_in_hardware() {
    let vm = vm_with(cap::FULL);
    let ctx = &vm.rig.ctx;
    write_stage1(&vm.rig, G2H, S1_ROOT, VA, 0x10_0000, pte::R | pte::W);
    let h = nested_in(&vm);
    ctx.attach(vm.devs[0], None, Target::Hwpt(h)).unwrap();
    vm.rig.dma_write(0, 1, None, VA, b"one").unwrap();
    // The guest's queue: 4 KiB (128 commands) at guest-physical 1 MiB.
    let qgpa = MB;
    let e = ctx.alloc_hw_queue(vm.viommu, HwQueueKind::MOCK_VCMDQ, 0, Iova(qgpa + 0x800), 0x1000).unwrap_err();
    assert!(matches!(e, Error::Unaligned { .. }), "{e}");
    let hq = ctx.alloc_hw_queue(vm.viommu, HwQueueKind::MOCK_VCMDQ, 0, Iova(qgpa), 0x1000).unwrap();
    assert!(ctx.alloc_hw_queue(vm.viommu, HwQueueKind::MOCK_VCMDQ, 0, Iova(2 * MB), 0x1000).is_err());
    let base = vm.rig.unit_base(0);
    let write_cmd = |i: u64, c: VirtualCommand| {
        for (k, w) in c.words.iter().enumerate() {
            vm.rig.write_ram(G2H + qgpa + i * 32 + k as u64 * 8, &w.to_le_bytes());
        }
    };
    // The guest remaps, queues an invalidation naming its own id, and rings the doorbell.
    write_stage1(&vm.rig, G2H, S1_ROOT, VA, 0x20_0000, pte::R | pte::W);
    write_cmd(0, command(vm::OP_STAGE1_RANGE, 0x10, None, VA, 0x1000));
    write_cmd(1, command(vm::OP_SYNC, 0, None, 0, 0));
    vm.rig.machine.mmio_write(base, reg::VCMDQ_PROD, 4, 2).unwrap();
    assert_eq!(vm.rig.machine.mmio_read(base, reg::VCMDQ_CONS, 4).unwrap(), 2);
    vm.rig.dma_write(0, 1, None, VA + 4, b"fresh").unwrap();
    assert_eq!(vm.rig.ram(G2H + 0x20_0004, 5), b"fresh");
    // A command naming a device that is not the VM's stops the queue there, with ERR.
    write_cmd(2, command(vm::OP_SYNC, 0, None, 0, 0));
    write_cmd(3, command(vm::OP_DEVICE, 0x55, None, 0, 0));
    write_cmd(4, command(vm::OP_SYNC, 0, None, 0, 0));
    vm.rig.machine.mmio_write(base, reg::VCMDQ_PROD, 4, 5).unwrap();
    assert_eq!(vm.rig.machine.mmio_read(base, reg::VCMDQ_CONS, 4).unwrap(), 3 | reg::VCMDQ_CONS_ERR);
    // The unit reads the queue from the VM's memory: it cannot be unmapped while the queue exists.
    let e = ctx.unmap(vm.ioas, Iova(qgpa), 0x1000, UnmapMode::Cut).unwrap_err();
    assert!(matches!(e, Error::Pinned { .. }), "{e}");
    assert!(matches!(ctx.unmap_all(vm.ioas), Err(Error::Pinned { .. })));
    ctx.destroy(hq).unwrap();
    assert_eq!(vm.rig.machine.mmio_read(base, reg::VCMDQ_VM, 8).unwrap() & reg::VCMDQ_VM_EN, 0, "queue disabled");
    ctx.unmap(vm.ioas, Iova(qgpa), 0x1000, UnmapMode::Cut).unwrap();
    // A queue over memory that is not mapped is refused.
    let e = ctx.alloc_hw_queue(vm.viommu, HwQueueKind::MOCK_VCMDQ, 0, Iova(qgpa), 0x1000).unwrap_err();
    assert!(matches!(e, Error::NotMapped { .. }), "{e}");
}

#[test]
fn a_unit_without_the_bits_refuses_with_a_reason() {
    let rig = Rig::with_units(&[cap::FULL & !cap::VIOMMU], &mock_plugin());
    let ioas = rig.ctx.alloc_ioas();
    let unit = rig.ctx.unit_by_name("u0").unwrap();
    let parent =
        rig.ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: None }).unwrap();
    let e = rig.ctx.alloc_viommu(parent, ViommuKind::MOCK, ViommuFlags::default()).unwrap_err();
    assert_eq!(e.plugin_code(), Some(ErrorCode::UNSUPPORTED));
    assert!(e.to_string().contains("CAP.VIOMMU"), "{e}");

    let vm = vm_with(cap::FULL & !cap::VCMDQ);
    assert!(!vm.rig.ctx.viommu_info(vm.viommu).unwrap().features.contains(ViommuFeatures::HW_QUEUE));
    let e = vm.rig.ctx.alloc_hw_queue(vm.viommu, HwQueueKind::MOCK_VCMDQ, 0, Iova(MB), 0x1000).unwrap_err();
    assert_eq!(e.plugin_code(), Some(ErrorCode::UNSUPPORTED));
    assert!(e.to_string().contains("CAP.VCMDQ"), "{e}");
}

#[test]
fn objects_are_destroyed_in_order_and_teardown_frees_everything() {
    let vm = vm_with(cap::FULL);
    let ctx = &vm.rig.ctx;
    let idle = ctx.table_pages();
    let h = nested_in(&vm);
    let q = ctx.alloc_veventq(vm.viommu, 8).unwrap();
    let hq = ctx.alloc_hw_queue(vm.viommu, HwQueueKind::MOCK_VCMDQ, 0, Iova(MB), 0x1000).unwrap();
    assert!(matches!(ctx.destroy(vm.parent), Err(Error::Busy { .. })), "the vIOMMU holds its parent");
    assert!(matches!(ctx.destroy(vm.viommu), Err(Error::Busy { .. })));
    ctx.destroy(h).unwrap();
    ctx.destroy(q).unwrap();
    ctx.destroy(hq).unwrap();
    assert!(matches!(ctx.alloc_vdevice(vm.viommu, vm.devs[0], 0x30), Err(Error::Busy { .. })));
    assert!(matches!(ctx.destroy(vm.viommu), Err(Error::Busy { .. })), "vDEVICEs hold it");
    ctx.teardown().unwrap();
    assert_eq!(ctx.table_pages(), 0);
    assert!(idle > 0);
}

#[test]
fn a_failed_allocation_at_any_point_leaves_nothing_behind() {
    let rig = Rig::new();
    let ctx = &rig.ctx;
    let ioas = ctx.alloc_ioas();
    let unit = ctx.unit_by_name("u0").unwrap();
    let parent =
        ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: None }).unwrap();
    let dev = nested_device(&rig, 1);
    let before = ctx.table_pages();
    // The first vIOMMU allocates the VM table and its virtual-id table: fail each in turn.
    for n in 1..=2 {
        ctx.fail_nth().arm(n);
        let e = ctx.alloc_viommu(parent, ViommuKind::MOCK, ViommuFlags::default()).unwrap_err();
        ctx.fail_nth().disarm();
        assert_eq!(e.plugin_code(), Some(ErrorCode::NO_MEMORY), "{e}");
        assert_eq!(ctx.table_pages(), before, "after failing allocation {n}");
    }
    ctx.fail_nth().arm(3);
    let v = ctx.alloc_viommu(parent, ViommuKind::MOCK, ViommuFlags::default()).unwrap();
    ctx.fail_nth().disarm();
    assert_eq!(ctx.table_pages(), before + 2);
    ctx.alloc_vdevice(v, dev, 7).unwrap();
    // A nested HWPT in it: its descriptor page.
    ctx.fail_nth().arm(1);
    let spec =
        HwptSpec::NestedIn { viommu: v, format: PtFormat::MOCK, root: Iova(0), words: vec![], fault_queue: None };
    assert!(ctx.alloc_hwpt(unit, spec.clone()).is_err());
    ctx.fail_nth().disarm();
    assert_eq!(ctx.table_pages(), before + 2);
    let h = ctx.alloc_hwpt(unit, spec).unwrap();
    ctx.destroy(h).unwrap();
    ctx.teardown().unwrap();
    assert_eq!(ctx.table_pages(), 0);
}
