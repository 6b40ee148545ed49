//! A VT-d vIOMMU for a real KVM guest: the guest programs the unit through MMIO, the tables it
//! (its firmware) placed in guest RAM decide where an emulated device's DMA lands, and a DMA
//! to an unmapped IOVA shows up in the unit's fault-recording registers, read by the guest.

mod common;

use std::sync::Arc;

use common::{vm_or_skip, MB};
use ioasis::platform::{PhysMemory, UnitModel};
use ioasis::{Context, DeviceRef, Iova, IovaRange, PhysAddr, RequesterId};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_kvm::viommu::{GuestPhys, Viommu, ViommuDmaError};
use ioasis_kvm::{MemorySlots, Slot, Vcpu};
use ioasis_plugin_vtd::layout::fault::{frcd, reason};
use ioasis_plugin_vtd::layout::regs::{fsts, gcmd, off};
use ioasis_plugin_vtd::layout::tables::{context, root, sl};
use ioasis_plugin_vtd::model::{VtdModel, VtdModelConfig};
use kvm_ioctls::VcpuExit;

/// Guest-physical base of the vIOMMU's registers.
const VIOMMU_GPA: u64 = 0xfed9_0000;
/// Where slot 0's guest memory lives in the machine's RAM.
const SLOT_PA: u64 = 4 * MB;
const SLOT_LEN: u64 = 256 << 10;
const CODE_GPA: u64 = 0x1000;
/// Guest tables, as firmware placed them: root table, context table for bus 0, second-level
/// tables (4-level, 48-bit).
const ROOT_GPA: u64 = 0x10000;
const CONTEXT_GPA: u64 = 0x11000;
const SL_GPA: [u64; 4] = [0x12000, 0x13000, 0x14000, 0x15000];
/// The data buffer the device's IOVA maps to.
const BUF_GPA: u64 = 0x20000;
/// The IOVA the guest mapped (to `BUF_GPA`). It equals the root table's GPA on purpose: without
/// translation the DMA would land on the root table, not in the buffer.
const MAPPED_IOVA: u64 = 0x10000;
/// An IOVA the guest did not map.
const UNMAPPED_IOVA: u64 = 0x50000;
/// The emulated device: 00:03.0.
const DEV: RequesterId = RequesterId::new(0, 0, 3, 0);
/// What the device DMAs.
const PAYLOAD: [u8; 16] = *b"ioasis-viommu-ok";
/// Polling loops make an MMIO exit per iteration; the run loop never spins longer than this.
const MAX_EXITS: usize = 10_000;

/// Ports of the guest program.
const PORT_START_DMA: u16 = 0x20;
const PORT_SUM: u16 = 0x21;
const PORT_FSTS: u16 = 0x22;
const PORT_FRCD_HI: u16 = 0x23;
const PORT_FRCD_SID: u16 = 0x24;

/// The guest program (32-bit flat protected mode), assembled by hand:
///
/// ```text
///         mov ebx, 0xfed90000             ; vIOMMU registers
///         mov dword [ebx+0x20], ROOT_GPA  ; RTADDR (legacy mode: TTM = 00), low half
///         mov dword [ebx+0x24], 0         ; RTADDR high half
///         mov dword [ebx+0x18], SRTP      ; GCMD
/// .rtps:  mov eax, [ebx+0x1c]             ; GSTS
///         test eax, RTPS
///         jz .rtps
///         mov dword [ebx+0x18], TE        ; GCMD
/// .tes:   mov eax, [ebx+0x1c]
///         test eax, TES
///         jz .tes
///         out 0x20, al                    ; the emulated device DMAs
///         xor eax, eax                    ; sum the 16 bytes at BUF_GPA
///         xor ecx, ecx
///         mov esi, BUF_GPA
/// .sum:   movzx edx, byte [esi]
///         add eax, edx
///         inc esi
///         inc ecx
///         cmp ecx, 16
///         jne .sum
///         out 0x21, eax                   ; checksum
///         mov eax, [ebx+0x34]             ; FSTS
///         out 0x22, eax
///         mov eax, [ebx+0x22c]            ; fault record 0, bits 127:96 (F, T, reason)
///         out 0x23, eax
///         mov eax, [ebx+0x228]            ; fault record 0, bits 95:64 (source id)
///         out 0x24, eax
///         hlt
/// ```
fn program() -> Vec<u8> {
    let le = |v: u32| v.to_le_bytes();
    let mut p = Vec::new();
    p.push(0xbb);
    p.extend(le(VIOMMU_GPA as u32));
    let mov_store = |p: &mut Vec<u8>, disp: u8, imm: u32| {
        p.extend([0xc7, 0x43, disp]);
        p.extend(le(imm));
    };
    let poll = |p: &mut Vec<u8>, bit: u32| {
        p.extend([0x8b, 0x43, off::GSTS as u8, 0xa9]);
        p.extend(le(bit));
        p.extend([0x74, 0xf6]);
    };
    mov_store(&mut p, off::RTADDR as u8, ROOT_GPA as u32);
    mov_store(&mut p, off::RTADDR as u8 + 4, 0);
    mov_store(&mut p, off::GCMD as u8, gcmd::SRTP);
    poll(&mut p, gcmd::SRTP);
    mov_store(&mut p, off::GCMD as u8, gcmd::TE);
    poll(&mut p, gcmd::TE);
    p.extend([0xe6, PORT_START_DMA as u8]);
    p.extend([0x31, 0xc0, 0x31, 0xc9, 0xbe]);
    p.extend(le(BUF_GPA as u32));
    p.extend([0x0f, 0xb6, 0x16, 0x01, 0xd0, 0x46, 0x41, 0x83, 0xf9, 0x10, 0x75, 0xf4]);
    p.extend([0xe7, PORT_SUM as u8]);
    p.extend([0x8b, 0x43, off::FSTS as u8, 0xe7, PORT_FSTS as u8]);
    let fro = VtdModelConfig::legacy().fro() as u32;
    p.extend([0x8b, 0x83]);
    p.extend(le(fro + 12));
    p.extend([0xe7, PORT_FRCD_HI as u8]);
    p.extend([0x8b, 0x83]);
    p.extend(le(fro + 8));
    p.extend([0xe7, PORT_FRCD_SID as u8, 0xf4]);
    p
}

/// The machine, the VM's memory slots (slot 0 at GPA 0, the vIOMMU window reserved) and the
/// vIOMMU with a legacy VT-d model. `None` when KVM is unusable here (see `vm_or_skip`).
fn setup() -> Option<(Arc<Machine>, MemorySlots, Viommu, Arc<VtdModel>)> {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let machine = Arc::new(Machine::new(MachineConfig { ram_bytes: 64 * MB, table_pool_bytes: 16 * MB }).unwrap());
    let vm = vm_or_skip(machine.clone())?;
    let ctx = Arc::new(Context::new(machine.clone()));
    let ioas = ctx.alloc_ioas();
    let mut slots = MemorySlots::new(vm, ctx, ioas);
    slots.reserve(IovaRange::new(Iova(VIOMMU_GPA), Viommu::WINDOW).unwrap(), "vIOMMU").expect("reserve");
    slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, 0).expect("slot 0");
    let model = Arc::new(VtdModel::new(VtdModelConfig::legacy()).expect("VT-d model"));
    let viommu = Viommu::new(VIOMMU_GPA, model.clone(), GuestPhys::of(&slots));
    assert_eq!(viommu.window(), IovaRange::new(Iova(VIOMMU_GPA), 0x1000).unwrap());
    Some((machine, slots, viommu, model))
}

/// Places the root, context and second-level tables in guest RAM as firmware would: device
/// 00:03.0 in DID 1, 4-level (AW = 2, which the legacy preset's SAGAW offers), IOVA
/// `MAPPED_IOVA` → `BUF_GPA` read-write; then the program.
fn firmware(mem: &GuestPhys) {
    let cfg = VtdModelConfig::legacy();
    assert!(ioasis_plugin_vtd::layout::regs::cap::sagaw(cfg.cap) & (1 << 2) != 0, "48-bit 4-level offered");
    let w = |gpa: u64, v: u64| mem.write_u64(PhysAddr(gpa), v).expect("table write");
    let sid = DEV.source_id();
    assert_eq!(sid, 0x18);
    w(ROOT_GPA + root::offset((sid >> 8) as u8), root::lo(CONTEXT_GPA));
    let ce = CONTEXT_GPA + context::offset(sid as u8);
    w(ce, SL_GPA[0] | context::TT_SL | context::P);
    w(ce + 8, context::did(1) | 2);
    for (i, level) in (2..=4u32).rev().enumerate() {
        w(SL_GPA[i] + sl::index(MAPPED_IOVA, level) * 8, SL_GPA[i + 1] | sl::R | sl::W);
    }
    w(SL_GPA[3] + sl::index(MAPPED_IOVA, 1) * 8, BUF_GPA | sl::R | sl::W);
    mem.write(PhysAddr(CODE_GPA), &program()).expect("load program");
}

/// What the guest reported.
#[derive(Debug, Default)]
struct Report {
    sum: Option<u32>,
    fsts: Option<u32>,
    frcd_hi: Option<u32>,
    frcd_sid: Option<u32>,
    dma: Vec<Result<(), String>>,
    mmio_reads: usize,
    mmio_writes: usize,
}

/// Runs the program in 32-bit flat protected mode until `hlt`: MMIO goes to the vIOMMU, and
/// port 0x20 makes the emulated device DMA `PAYLOAD` to `dma_iova` through it.
fn run(vcpu: &mut Vcpu, viommu: &Viommu, dma_iova: u64) -> Report {
    let fd = vcpu.fd();
    let mut sregs = fd.get_sregs().expect("get sregs");
    sregs.cr0 |= 1; // PE
    let code = kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x8,
        type_: 11, // execute/read, accessed
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        ..Default::default()
    };
    let data = kvm_bindings::kvm_segment { selector: 0x10, type_: 3, ..code }; // read/write, accessed
    sregs.cs = code;
    for seg in [&mut sregs.ds, &mut sregs.es, &mut sregs.ss, &mut sregs.fs, &mut sregs.gs] {
        *seg = data;
    }
    fd.set_sregs(&sregs).expect("set sregs");
    fd.set_regs(&kvm_bindings::kvm_regs { rip: CODE_GPA, rflags: 2, ..Default::default() }).expect("set regs");
    let mut r = Report::default();
    let word = |d: &[u8]| {
        let mut b = [0u8; 4];
        b[..d.len().min(4)].copy_from_slice(&d[..d.len().min(4)]);
        u32::from_le_bytes(b)
    };
    for _ in 0..MAX_EXITS {
        match fd.run().expect("KVM_RUN") {
            VcpuExit::MmioRead(addr, data) => {
                assert!(viommu.handle_mmio_read(addr, data), "stray read {addr:#x}");
                r.mmio_reads += 1;
            }
            VcpuExit::MmioWrite(addr, data) => {
                assert!(viommu.handle_mmio_write(addr, data), "stray write {addr:#x}");
                r.mmio_writes += 1;
            }
            VcpuExit::IoOut(PORT_START_DMA, _) => {
                let res = viommu.dma_write(DeviceRef::Rid(DEV), dma_iova, &PAYLOAD);
                if let Err(ViommuDmaError::Fault { fault, done }) = &res {
                    assert_eq!((fault.addr, fault.dev, done), (Iova(dma_iova), DeviceRef::Rid(DEV), &0));
                }
                r.dma.push(res.map_err(|e| e.to_string()));
            }
            VcpuExit::IoOut(PORT_SUM, d) => r.sum = Some(word(d)),
            VcpuExit::IoOut(PORT_FSTS, d) => r.fsts = Some(word(d)),
            VcpuExit::IoOut(PORT_FRCD_HI, d) => r.frcd_hi = Some(word(d)),
            VcpuExit::IoOut(PORT_FRCD_SID, d) => r.frcd_sid = Some(word(d)),
            VcpuExit::Hlt => return r,
            other => panic!("unexpected exit {other:?} (so far {r:?})"),
        }
    }
    panic!("guest did not halt within {MAX_EXITS} exits (so far {r:?})");
}

#[test]
fn guest_programs_viommu_and_device_dma_lands_where_its_tables_say() {
    let Some((machine, slots, viommu, model)) = setup() else { return };
    firmware(viommu.memory());
    let mut vcpu = slots.vm().create_vcpu(0).expect("vCPU");
    let r = run(&mut vcpu, &viommu, MAPPED_IOVA);

    assert_eq!(r.dma, [Ok(())], "the device's DMA was translated");
    // RTADDR (two halves), GCMD twice; GSTS polled at least twice, FSTS, two FRCD dwords.
    assert_eq!(r.mmio_writes, 4, "{r:?}");
    assert!(r.mmio_reads >= 5, "{r:?}");
    let expected: u32 = PAYLOAD.iter().map(|&b| u32::from(b)).sum();
    assert_eq!(r.sum, Some(expected), "the guest summed the DMA'd bytes");
    assert_eq!(r.fsts.map(|f| f & fsts::PPF), Some(0), "no fault pending");
    assert_eq!(r.frcd_hi.map(|h| h >> 31), Some(0), "no fault recorded");
    assert!(model.faults().is_empty());
    // The bytes are at the buffer's machine address; the root table (GPA = the IOVA) is intact.
    let mut buf = [0u8; 16];
    machine.ram().read(PhysAddr(SLOT_PA + BUF_GPA), &mut buf).unwrap();
    assert_eq!(buf, PAYLOAD);
    let re = machine.ram().read_u64(PhysAddr(SLOT_PA + ROOT_GPA)).unwrap();
    assert_eq!(re, root::lo(CONTEXT_GPA));
    // The emulated device reads back through the vIOMMU too.
    let mut back = [0u8; 16];
    viommu.dma_read(DeviceRef::Rid(DEV), MAPPED_IOVA, &mut back).expect("DMA read");
    assert_eq!(back, PAYLOAD);
}

#[test]
fn dma_to_an_unmapped_iova_is_a_fault_the_guest_reads() {
    let Some((machine, slots, viommu, model)) = setup() else { return };
    firmware(viommu.memory());
    let mut vcpu = slots.vm().create_vcpu(0).expect("vCPU");
    let r = run(&mut vcpu, &viommu, UNMAPPED_IOVA);

    assert_eq!(r.dma.len(), 1);
    assert!(r.dma[0].is_err(), "the DMA faulted");
    assert_eq!(r.sum, Some(0), "nothing reached the buffer");
    let fsts = r.fsts.expect("FSTS reported");
    assert_ne!(fsts & fsts::PPF, 0, "FSTS.PPF: a primary fault is pending (FSTS {fsts:#x})");
    assert_eq!(fsts::fri(fsts), 0, "the first record holds it");
    let hi = u64::from(r.frcd_hi.expect("FRCD reported")) << 32 | u64::from(r.frcd_sid.expect("SID reported"));
    assert_ne!(hi & frcd::F, 0, "F set");
    // A not-present leaf met by a write: VT-d reason 0x5.
    assert_eq!(frcd::reason(hi), reason::NO_WRITE);
    assert_eq!(hi & frcd::T_READ, 0, "a write request");
    assert_eq!(frcd::sid(hi), DEV.source_id(), "the record names the device");
    let log = model.faults();
    assert_eq!(log.len(), 1);
    assert!(log[0].recorded);
    assert_eq!((log[0].vtd_reason, log[0].fault.reason), (reason::NO_WRITE, ioasis::abi::Fault::NOT_PRESENT));
    let mut buf = [0u8; 16];
    machine.ram().read(PhysAddr(SLOT_PA + BUF_GPA), &mut buf).unwrap();
    assert_eq!(buf, [0; 16]);
}

// ---- Without a vCPU: the guest-physical view and the MMIO dispatch rules. ----

fn machine() -> Arc<Machine> {
    Arc::new(Machine::new(MachineConfig { ram_bytes: 16 * MB, table_pool_bytes: 4 * MB }).unwrap())
}

fn slot(id: u32, gpa: u64, pa: u64, len: u64, flags: u32) -> Slot {
    Slot { id, gpa, pa: PhysAddr(pa), len, flags }
}

#[test]
fn guest_phys_resolves_through_slots_and_refuses_holes() {
    let m = machine();
    // GPA 0x10000..0x12000 at PA 1 MiB, GPA 0x12000..0x13000 at PA 3 MiB (adjacent, not
    // contiguous in the machine), a hole, then a read-only slot at GPA 0x20000.
    let ro = kvm_bindings::KVM_MEM_READONLY;
    let g = GuestPhys::new(
        m.clone(),
        [slot(1, 0x12000, 3 * MB, 0x1000, 0), slot(0, 0x10000, MB, 0x2000, 0), slot(2, 0x20000, 5 * MB, 0x1000, ro)],
    );
    assert_eq!(g.to_machine(0x11ff8, 8), Some(PhysAddr(MB + 0x1ff8)));
    assert_eq!(g.to_machine(0x11ff8, 9), None, "crosses a slot boundary");
    assert_eq!(g.to_machine(0x13000, 1), None);

    // A byte access across the adjacent slots goes to both machine ranges.
    g.write(PhysAddr(0x11ffc), &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    let mut a = [0u8; 4];
    m.ram().read(PhysAddr(MB + 0x1ffc), &mut a).unwrap();
    assert_eq!(a, [1, 2, 3, 4]);
    m.ram().read(PhysAddr(3 * MB), &mut a).unwrap();
    assert_eq!(a, [5, 6, 7, 8]);
    let mut b = [0u8; 8];
    g.read(PhysAddr(0x11ffc), &mut b).unwrap();
    assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8]);

    // Into the hole: refused, with the first unbacked address, and nothing written.
    let e = g.write(PhysAddr(0x12ffc), &[9; 8]).unwrap_err();
    assert_eq!((e.code, e.addr), (ioasis::abi::HostError::BAD_ADDRESS, 0x13000));
    m.ram().read(PhysAddr(3 * MB + 0xffc), &mut a).unwrap();
    assert_eq!(a, [0; 4], "a refused write changes nothing");
    assert!(g.read_u64(PhysAddr(0x40000)).is_err());
    assert!(g.read(PhysAddr(u64::MAX - 1), &mut b).is_err(), "wrap");

    // Read-only slot: readable, not writable.
    m.ram().write_u64(PhysAddr(5 * MB), 0xabcd).unwrap();
    assert_eq!(g.read_u64(PhysAddr(0x20000)).unwrap(), 0xabcd);
    assert!(g.write_u64(PhysAddr(0x20000), 1).is_err());
    assert!(g.fetch_or_u64(PhysAddr(0x20000), 1).is_err());
    g.write_u64(PhysAddr(0x10008), 0x10).unwrap();
    assert_eq!(g.fetch_or_u64(PhysAddr(0x10008), 1).unwrap(), 0x10);
    assert_eq!(g.fetch_and_u64(PhysAddr(0x10008), !0x10).unwrap(), 0x11);
    assert_eq!(m.ram().read_u64(PhysAddr(MB + 8)).unwrap(), 1);
}

#[test]
fn mmio_outside_the_window_is_not_ours_and_refused_widths_read_all_ones() {
    let m = machine();
    let model: Arc<dyn UnitModel> = Arc::new(VtdModel::new(VtdModelConfig::legacy()).unwrap());
    let v = Viommu::new(VIOMMU_GPA, model, GuestPhys::new(m, [slot(0, 0, MB, 0x10000, 0)]));
    let mut d4 = [0u8; 4];
    assert!(!v.handle_mmio_read(VIOMMU_GPA - 4, &mut d4));
    assert!(!v.handle_mmio_read(VIOMMU_GPA + 0x1000, &mut d4));
    assert!(!v.handle_mmio_write(VIOMMU_GPA + 0x1000, &d4));
    // CAP, 8 bytes and as two 4-byte halves.
    let cap = VtdModelConfig::legacy().cap;
    let mut d8 = [0u8; 8];
    assert!(v.handle_mmio_read(VIOMMU_GPA + off::CAP, &mut d8));
    assert_eq!(u64::from_le_bytes(d8), cap);
    assert!(v.handle_mmio_read(VIOMMU_GPA + off::CAP + 4, &mut d4));
    assert_eq!(u32::from_le_bytes(d4), (cap >> 32) as u32);
    // A 2-byte read the model refuses reads as all ones; an unknown register too.
    let mut d2 = [0u8; 2];
    assert!(v.handle_mmio_read(VIOMMU_GPA + off::GSTS, &mut d2));
    assert_eq!(d2, [0xff; 2]);
    assert!(v.handle_mmio_read(VIOMMU_GPA + 0xff0, &mut d4));
    assert_eq!(d4, [0xff; 4]);
    // A refused write is ignored: a 2-byte GCMD write does not enable translation.
    assert!(v.handle_mmio_write(VIOMMU_GPA + off::GCMD + 2, &[0x00, 0x80]));
    assert!(v.handle_mmio_read(VIOMMU_GPA + off::GSTS, &mut d4));
    assert_eq!(u32::from_le_bytes(d4) & gcmd::TE, 0);
    // RTADDR written as two halves reads back as one 64-bit value.
    assert!(v.handle_mmio_write(VIOMMU_GPA + off::RTADDR, &0x1234_5000u32.to_le_bytes()));
    assert!(v.handle_mmio_write(VIOMMU_GPA + off::RTADDR + 4, &0x1u32.to_le_bytes()));
    assert!(v.handle_mmio_read(VIOMMU_GPA + off::RTADDR, &mut d8));
    assert_eq!(u64::from_le_bytes(d8), 0x1_1234_5000);
    // Translation off: DMA passes through to GPA = IOVA; outside guest RAM it is a memory error.
    v.dma_write(DeviceRef::Rid(DEV), 0x800, &[7; 4]).unwrap();
    let mut b = [0u8; 4];
    v.memory().read(PhysAddr(0x800), &mut b).unwrap();
    assert_eq!(b, [7; 4]);
    let e = v.dma_write(DeviceRef::Rid(DEV), 0xfffe, &[1; 4]).unwrap_err();
    assert!(matches!(e, ViommuDmaError::Memory { done: 0, .. }), "{e}");
    let e = v.dma_read(DeviceRef::Rid(DEV), u64::MAX - 1, &mut b).unwrap_err();
    assert!(matches!(e, ViommuDmaError::Wraps { .. }), "{e}");
}

#[test]
fn slot_changes_after_the_view_was_made_are_seen_by_the_next_dma() {
    let Some((machine, mut slots, viommu, _model)) = setup() else { return };
    // Translation is off (the guest never enabled it): a device's IOVA is guest-physical.
    let dev = DeviceRef::Rid(DEV);
    let gone = |r: Result<(), ViommuDmaError>, at: u64| match r {
        Err(ViommuDmaError::Memory { source, .. }) => {
            assert_eq!((source.code, source.addr), (ioasis::abi::HostError::BAD_ADDRESS, at))
        }
        other => panic!("expected a master abort at {at:#x}, got {other:?}"),
    };
    gone(viommu.dma_write(dev, 0x10_0010, b"new slot"), 0x10_0010);

    // A slot added after the view: seen at once, without `set_memory`.
    slots.add(1, 0x10_0000, PhysAddr(8 * MB), 0x1_0000, 0).unwrap();
    viommu.dma_write(dev, 0x10_0010, b"new slot").unwrap();
    let mut buf = [0u8; 8];
    machine.ram().read(PhysAddr(8 * MB + 0x10), &mut buf).unwrap();
    assert_eq!(&buf, b"new slot");

    // Moved: the old place is gone, the new one has the same bytes.
    slots.move_slot(1, 0x20_0000).unwrap();
    gone(viommu.dma_read(dev, 0x10_0010, &mut buf), 0x10_0010);
    let mut back = [0u8; 8];
    viommu.dma_read(dev, 0x20_0010, &mut back).unwrap();
    assert_eq!(&back, b"new slot");
    assert_eq!(viommu.memory().read_u64(PhysAddr(0x20_0010)).unwrap(), u64::from_le_bytes(*b"new slot"));

    // Removed: gone for byte and 64-bit accesses alike.
    slots.remove(1).unwrap();
    gone(viommu.dma_read(dev, 0x20_0010, &mut back), 0x20_0010);
    assert!(viommu.memory().fetch_or_u64(PhysAddr(0x20_0010), 1).is_err());

    // A read-only slot added later: readable, not writable (the IOAS maps it read-only).
    machine.ram().write(PhysAddr(9 * MB), b"rom data").unwrap();
    slots.add(2, 0x30_0000, PhysAddr(9 * MB), 0x1000, kvm_bindings::KVM_MEM_READONLY).unwrap();
    viommu.dma_read(dev, 0x30_0000, &mut back).unwrap();
    assert_eq!(&back, b"rom data");
    gone(viommu.dma_write(dev, 0x30_0000, b"scribble"), 0x30_0000);
    assert!(viommu.memory().fetch_or_u64(PhysAddr(0x30_0000), 1).is_err());
    assert!(viommu.memory().write_u64(PhysAddr(0x30_0000), 1).is_err());
    machine.ram().read(PhysAddr(9 * MB), &mut back).unwrap();
    assert_eq!(&back, b"rom data", "nothing written");
    assert_eq!(viommu.memory().resolve(0x30_0000, 0x1000), Some((PhysAddr(9 * MB), ioasis::Prot::READ)));
    assert_eq!(viommu.memory().resolve(0x100, 8), Some((PhysAddr(SLOT_PA + 0x100), ioasis::Prot::RW)));

    // The view's access object lives as long as the view; its IOAS cannot go meanwhile.
    let ctx = slots.context().clone();
    let access = viommu.memory().access().expect("a view over the slots' IOAS");
    assert_eq!(ctx.access_ioas(access).unwrap(), slots.ioas());
    assert!(matches!(ctx.destroy(slots.ioas()), Err(ioasis::Error::Busy { .. })));
    drop(viommu);
    assert!(matches!(ctx.access_ioas(access), Err(ioasis::Error::NoSuchObject { .. })));
}

#[test]
fn a_slot_removed_during_atomic_updates_waits_for_them_instead_of_failing() {
    let Some((_machine, mut slots, viommu, _model)) = setup() else { return };
    slots.add(1, 0x10_0000, PhysAddr(8 * MB), 0x1000, 0).unwrap();
    let mem = viommu.memory().clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let updater = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut done = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                // A/D-bit style updates; they fail while the slot is away.
                if mem.fetch_or_u64(PhysAddr(0x10_0008), 1 << (done % 64)).is_ok() {
                    done += 1;
                }
                let _ = mem.fetch_and_u64(PhysAddr(0x10_0008), !0);
            }
            done
        })
    };
    // Every removal goes through the access's callback, which waits for the update in flight:
    // none is refused for a page pinned by it.
    for _ in 0..300 {
        slots.remove(1).expect("removing the slot waits for the atomic update in flight");
        slots.add(1, 0x10_0000, PhysAddr(8 * MB), 0x1000, 0).unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let done = updater.join().unwrap();
    assert!(done > 0, "updates ran while the slot came and went");
}
