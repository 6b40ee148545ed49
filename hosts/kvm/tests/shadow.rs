//! Shadow mappings on real KVM: a guest programs a VT-d vIOMMU (legacy tables its firmware
//! placed in guest RAM), and after each of its IOTLB invalidations the VMM syncs a host IOAS
//! so that a passthrough device, translated by the host's (mock) IOMMU unit, DMAs exactly
//! where the guest's tables say — and nowhere once the guest unmapped it, or outside guest RAM.

mod common;

use std::sync::Arc;

use common::{enter_protected_mode, vm_or_skip, MB, MSI_WINDOW, UNIT_BASE};
use ioasis::loader::Registry;
use ioasis::platform::{ModelQueryError, PhysMemory};
use ioasis::{
    Context, DeviceDesc, DeviceRef, Intent, IntentItem, Iova, IovaRange, PhysAddr, Prot, RequesterId, Target,
};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_kvm::shadow::{Shadow, ShadowError, ShadowMapping, SyncStats};
use ioasis_kvm::viommu::{GuestPhys, Viommu};
use ioasis_kvm::{MemorySlots, Vcpu};
use ioasis_plugin_mock::format::cap;
use ioasis_plugin_mock::model::MockModel;
use ioasis_plugin_vtd::layout::regs::{gcmd, iotlb, off};
use ioasis_plugin_vtd::layout::tables::{context, root, sl};
use ioasis_plugin_vtd::model::{VtdModel, VtdModelConfig};
use kvm_ioctls::VcpuExit;

/// Guest-physical base of the vIOMMU's registers.
const VIOMMU_GPA: u64 = 0xfed9_0000;
/// Where slot 0's guest memory (GPA 0..256 KiB) lives in the machine's RAM.
const SLOT_PA: u64 = 4 * MB;
const SLOT_LEN: u64 = 256 << 10;
const CODE_GPA: u64 = 0x1000;
/// Guest tables (legacy, 4-level): root, context for bus 0, second-level tables.
const ROOT_GPA: u64 = 0x8000;
const CONTEXT_GPA: u64 = 0x9000;
const SL_GPA: [u64; 4] = [0xa000, 0xb000, 0xc000, 0xd000];
/// The guest's DMA buffer, mapped at `MAPPED_IOVA`.
const BUF_GPA: u64 = 0x20000;
const MAPPED_IOVA: u64 = 0x10000;
/// The guest also maps this IOVA to a guest-physical address outside guest RAM (which is
/// machine RAM at `OUTSIDE_GPA` in a naive identity view: it must not be reached).
const OUTSIDE_IOVA: u64 = 0x11000;
const OUTSIDE_GPA: u64 = 16 * MB;
/// The passthrough device: 00:03.0, behind the vIOMMU in the guest and the mock unit on the host.
const DEV: RequesterId = RequesterId::new(0, 0, 3, 0);
const MAX_EXITS: usize = 10_000;

/// IOTLB_REG of the legacy preset (11.4.8.1): its upper half carries IVT.
fn iotlb_reg() -> u64 {
    VtdModelConfig::legacy().iro() + iotlb::REG
}

/// The guest program (32-bit flat protected mode) and the offset of its second entry point:
///
/// ```text
///         mov ebx, 0xfed90000                 ; vIOMMU registers
///         mov dword [ebx+RTADDR], ROOT_GPA    ; legacy mode (TTM = 00)
///         mov dword [ebx+RTADDR+4], 0
///         mov dword [ebx+GCMD], SRTP
/// .rtps:  test GSTS.RTPS / jz .rtps
///         mov dword [ebx+GCMD], TE
/// .tes:   test GSTS.TES / jz .tes
/// inval:  mov ebx, 0xfed90000                 ; second entry point
///         mov dword [ebx+IOTLB_REG], 0        ; global IOTLB invalidation (11.4.8.1)
///         mov dword [ebx+IOTLB_REG+4], (IVT | GLOBAL) >> 32
///         hlt
/// ```
fn program() -> (Vec<u8>, u64) {
    let le = |v: u32| v.to_le_bytes();
    let mut p = Vec::new();
    let store8 = |p: &mut Vec<u8>, disp: u8, imm: u32| {
        p.extend([0xc7, 0x43, disp]);
        p.extend(le(imm));
    };
    let poll = |p: &mut Vec<u8>, bit: u32| {
        p.extend([0x8b, 0x43, off::GSTS as u8, 0xa9]);
        p.extend(le(bit));
        p.extend([0x74, 0xf6]);
    };
    p.push(0xbb);
    p.extend(le(VIOMMU_GPA as u32));
    store8(&mut p, off::RTADDR as u8, ROOT_GPA as u32);
    store8(&mut p, off::RTADDR as u8 + 4, 0);
    store8(&mut p, off::GCMD as u8, gcmd::SRTP);
    poll(&mut p, gcmd::SRTP);
    store8(&mut p, off::GCMD as u8, gcmd::TE);
    poll(&mut p, gcmd::TE);
    let inval = p.len() as u64;
    p.push(0xbb);
    p.extend(le(VIOMMU_GPA as u32));
    // mov dword [ebx+disp32], imm32 (IOTLB_REG is beyond a signed 8-bit displacement).
    let store32 = |p: &mut Vec<u8>, disp: u32, imm: u32| {
        p.extend([0xc7, 0x83]);
        p.extend(le(disp));
        p.extend(le(imm));
    };
    store32(&mut p, iotlb_reg() as u32, 0);
    store32(&mut p, iotlb_reg() as u32 + 4, ((iotlb::IVT | iotlb::GLOBAL) >> 32) as u32);
    p.push(0xf4);
    (p, inval)
}

struct Setup {
    machine: Arc<Machine>,
    slots: MemorySlots,
    viommu: Viommu,
    shadow: Shadow,
}

/// A machine with a host mock IOMMU unit; device 00:03.0 bound to it and attached to the
/// shadow IOAS; guest memory slot 0 (in the slots' own IOAS); the legacy VT-d vIOMMU.
fn setup() -> Option<Setup> {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let machine = Arc::new(Machine::new(MachineConfig { ram_bytes: 64 * MB, table_pool_bytes: 16 * MB }).unwrap());
    let vm = vm_or_skip(machine.clone())?;
    let ctx = Arc::new(Context::new(machine.clone()));
    ctx.add_platform_reserved(MSI_WINDOW, "x86 MSI window");
    machine.add_unit(PhysAddr(UNIT_BASE), 0x1000, Arc::new(MockModel::new(cap::FULL))).expect("unit window");
    let plugin = Registry::with_builtins().expect("built-ins").get("mock").expect("mock is built in");
    ctx.add_unit(&plugin, "u0", PhysAddr(UNIT_BASE), 0, "").expect("probe");
    let device = ctx.bind_device(DeviceDesc::pci("nic", DEV, "u0")).expect("bind");
    ctx.negotiate(device, &Intent::new(vec![IntentItem::UntaggedDma])).expect("contract");
    let shadow_ioas = ctx.alloc_ioas();
    ctx.attach(device, None, Target::Ioas(shadow_ioas)).expect("attach");
    let mut slots = MemorySlots::new(vm, ctx.clone(), ctx.alloc_ioas());
    slots.reserve(IovaRange::new(Iova(VIOMMU_GPA), Viommu::WINDOW).unwrap(), "vIOMMU").expect("reserve");
    slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, 0).expect("slot 0");
    let model = Arc::new(VtdModel::new(VtdModelConfig::legacy()).expect("VT-d model"));
    let viommu = Viommu::new(VIOMMU_GPA, model, GuestPhys::of(&slots));
    Some(Setup { machine, slots, viommu, shadow: Shadow::new(ctx, shadow_ioas) })
}

/// The leaf entry of `iova` in the guest's second-level tables.
fn leaf_gpa(iova: u64) -> u64 {
    SL_GPA[3] + sl::index(iova, 1) * 8
}

/// Firmware: root → context (00:03.0, DID 1, AW 4-level) → second-level tables mapping
/// `MAPPED_IOVA` → `BUF_GPA` and `OUTSIDE_IOVA` → `OUTSIDE_GPA`, read-write; then the program.
fn firmware(mem: &GuestPhys) -> u64 {
    let w = |gpa: u64, v: u64| mem.write_u64(PhysAddr(gpa), v).expect("table write");
    let sid = DEV.source_id();
    w(ROOT_GPA + root::offset((sid >> 8) as u8), root::lo(CONTEXT_GPA));
    let ce = CONTEXT_GPA + context::offset(sid as u8);
    w(ce, SL_GPA[0] | context::TT_SL | context::P);
    w(ce + 8, context::did(1) | 2);
    for (i, level) in (2..=4u32).rev().enumerate() {
        w(SL_GPA[i] + sl::index(MAPPED_IOVA, level) * 8, SL_GPA[i + 1] | sl::R | sl::W);
    }
    w(leaf_gpa(MAPPED_IOVA), BUF_GPA | sl::R | sl::W);
    w(leaf_gpa(OUTSIDE_IOVA), OUTSIDE_GPA | sl::R | sl::W);
    let (code, inval) = program();
    mem.write(PhysAddr(CODE_GPA), &code).expect("load program");
    CODE_GPA + inval
}

/// Runs the guest from `rip` until `hlt`; MMIO goes to the vIOMMU, and after each write of
/// IOTLB_REG's upper half (the invalidation command) the VMM syncs the shadow. Returns the
/// stats of every sync.
fn run(vcpu: &mut Vcpu, s: &mut Setup, rip: u64) -> Vec<SyncStats> {
    enter_protected_mode(vcpu, rip);
    let fd = vcpu.fd();
    let mut syncs = Vec::new();
    let dev = DeviceRef::Rid(DEV);
    for _ in 0..MAX_EXITS {
        match fd.run().expect("KVM_RUN") {
            VcpuExit::MmioRead(addr, data) => assert!(s.viommu.handle_mmio_read(addr, data), "stray read {addr:#x}"),
            VcpuExit::MmioWrite(addr, data) => {
                assert!(s.viommu.handle_mmio_write(addr, data), "stray write {addr:#x}");
                if addr == VIOMMU_GPA + iotlb_reg() + 4 {
                    syncs.push(s.shadow.sync(&s.viommu, &s.slots, dev).expect("sync"));
                }
            }
            VcpuExit::Hlt => return syncs,
            other => panic!("unexpected exit {other:?}"),
        }
    }
    panic!("guest did not halt within {MAX_EXITS} exits");
}

/// The passthrough device DMAs `data` to `iova` through the host unit.
fn host_dma(machine: &Machine, iova: u64, data: &[u8]) -> Result<(), String> {
    machine.dma_write(PhysAddr(UNIT_BASE), DeviceRef::Rid(DEV), None, Iova(iova), data).map_err(|e| e.to_string())
}

fn guest_read(mem: &GuestPhys, gpa: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    mem.read(PhysAddr(gpa), &mut b).expect("guest read");
    b
}

#[test]
fn host_ioas_shadows_the_guests_viommu_mappings() {
    let Some(mut s) = setup() else { return };
    let inval = firmware(s.viommu.memory());
    let dev = DeviceRef::Rid(DEV);
    // Translation still off in the vIOMMU: nothing to shadow (the device would belong in the
    // slots' IOAS); the shadow IOAS stays empty.
    let e = s.shadow.sync(&s.viommu, &s.slots, dev).unwrap_err();
    assert!(matches!(e, ShadowError::Query(ModelQueryError::Unsupported)), "{e}");
    assert!(host_dma(&s.machine, MAPPED_IOVA, b"x").is_err());

    // The guest enables translation and invalidates; the VMM syncs.
    let mut vcpu = s.slots.vm().create_vcpu(0).expect("vCPU");
    let syncs = run(&mut vcpu, &mut s, CODE_GPA);
    assert_eq!(syncs, [SyncStats { mapped: 1, unmapped: 0, kept: 0, skipped: 1 }], "outside guest RAM: skipped");
    let want = ShadowMapping {
        iova: Iova(MAPPED_IOVA),
        gpa: BUF_GPA,
        pa: PhysAddr(SLOT_PA + BUF_GPA),
        len: 0x1000,
        prot: Prot::RW,
    };
    assert_eq!(s.shadow.mappings().copied().collect::<Vec<_>>(), [want]);

    // The passthrough device's DMA through the host unit lands in the guest's buffer.
    host_dma(&s.machine, MAPPED_IOVA, b"shadowed-dma-ok!").expect("host DMA through the shadow");
    assert_eq!(&guest_read(s.viommu.memory(), BUF_GPA), b"shadowed-dma-ok!");
    // The mapping outside guest RAM was not shadowed: the host DMA faults, the machine RAM the
    // guest-physical address would name in an identity view is untouched.
    assert!(host_dma(&s.machine, OUTSIDE_IOVA, b"must-not-land!!!").is_err());
    let mut raw = [0u8; 16];
    s.machine.ram().read(PhysAddr(OUTSIDE_GPA), &mut raw).unwrap();
    assert_eq!(raw, [0; 16]);

    // A sync without a change keeps everything.
    assert_eq!(
        s.shadow.sync(&s.viommu, &s.slots, dev).unwrap(),
        SyncStats { kept: 1, skipped: 1, ..Default::default() }
    );

    // The guest clears its leaf and invalidates: after the sync the host mapping is gone.
    s.viommu.memory().write_u64(PhysAddr(leaf_gpa(MAPPED_IOVA)), 0).unwrap();
    let syncs = run(&mut vcpu, &mut s, inval);
    assert_eq!(syncs, [SyncStats { unmapped: 1, skipped: 1, ..Default::default() }]);
    assert_eq!(s.shadow.mappings().count(), 0);
    assert!(host_dma(&s.machine, MAPPED_IOVA, b"after-the-unmap!").is_err(), "the host DMA faults");
    assert_eq!(&guest_read(s.viommu.memory(), BUF_GPA), b"shadowed-dma-ok!", "the buffer is unchanged");

    // The guest maps the IOVA again, to another page, read-only: shadowed anew.
    s.viommu.memory().write_u64(PhysAddr(leaf_gpa(MAPPED_IOVA)), (BUF_GPA + 0x1000) | sl::R).unwrap();
    let syncs = run(&mut vcpu, &mut s, inval);
    assert_eq!(syncs, [SyncStats { mapped: 1, skipped: 1, ..Default::default() }]);
    let again = s.shadow.mappings().copied().collect::<Vec<_>>();
    assert_eq!(
        again,
        [ShadowMapping { gpa: BUF_GPA + 0x1000, pa: PhysAddr(SLOT_PA + BUF_GPA + 0x1000), prot: Prot::READ, ..want }]
    );
    assert!(host_dma(&s.machine, MAPPED_IOVA, b"read-only-now!!!").is_err(), "a write to a read-only mapping");
    let mut back = [0u8; 4];
    s.machine.dma_read(PhysAddr(UNIT_BASE), dev, None, Iova(MAPPED_IOVA), &mut back).expect("host DMA read");
}
