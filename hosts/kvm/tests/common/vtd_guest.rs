//! A real vCPU guest behind a VT-d vIOMMU, with a passthrough device on a VT-d host unit: the
//! rig shared by the passthrough tests (`passthrough.rs`, `passthrough_migration.rs`).
//!
//! The host unit is the VT-d model (probed by the VT-d plugin) on the simulated machine, with
//! device 00:03.0 bound to it; guest RAM is slot 0 (GPA 0..512 KiB at machine 4 MiB) in the
//! slots' IOAS; the guest's vIOMMU is the VT-d model of the scalable generation at
//! [`VIOMMU_GPA`]. Guest programs are 32-bit protected-mode code built with [`Asm`].

use std::sync::Arc;

use ioasis::loader::Registry;
use ioasis::platform::PhysMemory;
use ioasis::{Context, DeviceDesc, DeviceId, DeviceRef, Iova, IovaRange, PhysAddr, RequesterId};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_kvm::passthrough::{Attached, Passthrough, PassthroughConfig, PassthroughError, SyncReport};
use ioasis_kvm::viommu::{GuestPhys, Viommu};
use ioasis_kvm::{MemorySlots, Vcpu};
use ioasis_plugin_vtd::layout::qi;
use ioasis_plugin_vtd::layout::regs::{gcmd, iotlb, iqa, off, rtaddr};
use ioasis_plugin_vtd::layout::tables::{context, root, sl};
use ioasis_plugin_vtd::model::{VtdModel, VtdModelConfig, WINDOW};
use kvm_ioctls::VcpuExit;

use super::{enter_protected_mode, vm_or_skip, Asm, MB, MSI_WINDOW, UNIT_BASE};

/// Guest-physical base of the vIOMMU's registers.
pub const VIOMMU_GPA: u64 = 0xfed9_0000;
/// Where slot 0's guest memory (GPA 0..512 KiB) lives in the machine's RAM.
pub const SLOT_PA: u64 = 4 * MB;
pub const SLOT_LEN: u64 = 512 << 10;
/// Where each guest program is loaded.
pub const CODE_GPA: u64 = 0x1000;
/// The passthrough device: 00:03.0 on the host, and the same requester id in the guest.
pub const DEV: RequesterId = RequesterId::new(0, 0, 3, 0);
/// IOVAs the guest's tables map for the device: beyond guest RAM, so that only a translation
/// through the guest's tables reaches memory.
pub const IOVA: u64 = 0x4000_0000;
pub const IOVA2: u64 = IOVA + 0x1000;
/// Data pages in guest RAM.
pub const BUF1: u64 = 0x20000;
pub const BUF2: u64 = 0x21000;
pub const BUF3: u64 = 0x22000;
/// Guest domain id.
pub const DID: u16 = 1;
pub const MAX_EXITS: usize = 10_000;

/// Scalable-mode structures (VT-d spec 9.2, 9.4-9.6), placed in guest RAM as firmware would.
pub const SM_ROOT: u64 = 0x8000;
pub const SM_CONTEXT: u64 = 0x9000;
pub const PASID_DIR: u64 = 0xa000;
/// Legacy structures (9.1, 9.3): root, context for bus 0.
pub const ROOT: u64 = 0x8000;
pub const CONTEXT: u64 = 0x9000;
/// The invalidation queue (one page of 256-bit descriptors) and the wait status dword.
pub const QUEUE: u64 = 0x14000;
pub const STATUS: u64 = 0x15000;

pub struct Rig {
    pub machine: Arc<Machine>,
    pub ctx: Arc<Context>,
    pub device: DeviceId,
    pub slots: MemorySlots,
    pub viommu: Viommu,
    pub vcpu: Vcpu,
}

/// The rig (see the module docs) with host unit `host` and slot 0 registered with KVM
/// `slot_flags` (e.g. `KVM_MEM_LOG_DIRTY_PAGES`). `None` when KVM is unusable.
pub fn rig(host: VtdModelConfig, slot_flags: u32) -> Option<Rig> {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let machine = Arc::new(Machine::new(MachineConfig { ram_bytes: 64 * MB, table_pool_bytes: 16 * MB }).unwrap());
    let vm = vm_or_skip(machine.clone())?;
    let ctx = Arc::new(Context::new(machine.clone()));
    ctx.add_platform_reserved(MSI_WINDOW, "x86 MSI window");
    let host_unit = Arc::new(VtdModel::new(host).expect("host VT-d model"));
    machine.add_unit(PhysAddr(UNIT_BASE), WINDOW, host_unit).expect("unit window");
    let plugin = Registry::with_builtins().expect("built-ins").get("vtd").expect("vtd is built in");
    ctx.add_unit(&plugin, "u0", PhysAddr(UNIT_BASE), 0, "").expect("probe");
    let device = ctx.bind_device(DeviceDesc::pci("nic", DEV, "u0")).expect("bind");
    let mut slots = MemorySlots::new(vm.clone(), ctx.clone(), ctx.alloc_ioas());
    slots.reserve(IovaRange::new(Iova(VIOMMU_GPA), Viommu::WINDOW).unwrap(), "vIOMMU").expect("reserve");
    slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, slot_flags).expect("slot 0");
    let model = Arc::new(VtdModel::new(VtdModelConfig::scalable()).expect("vIOMMU model"));
    let viommu = Viommu::new(VIOMMU_GPA, model, GuestPhys::of(&slots));
    let vcpu = vm.create_vcpu(0).expect("vCPU");
    Some(Rig { machine, ctx, device, slots, viommu, vcpu })
}

impl Rig {
    /// A passthrough of the device behind the vIOMMU.
    pub fn passthrough_with(&self, config: PassthroughConfig) -> Result<Passthrough, PassthroughError> {
        let dev = DeviceRef::Rid(DEV);
        Passthrough::with_config(self.ctx.clone(), self.device, dev, self.slots.ioas(), &self.viommu, config)
    }

    /// Firmware writes guest memory through the machine's RAM: not a guest write.
    pub fn w(&self, gpa: u64, v: u64) {
        self.viommu.memory().write_u64(PhysAddr(gpa), v).expect("guest table write");
    }

    pub fn guest_read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.viommu.memory().read(PhysAddr(gpa), &mut b).expect("guest read");
        b
    }

    /// The passthrough device DMAs `data` to `iova` through the host unit.
    pub fn host_dma(&self, iova: u64, data: &[u8]) -> Result<(), String> {
        let dev = DeviceRef::Rid(DEV);
        self.machine.dma_write(PhysAddr(UNIT_BASE), dev, None, Iova(iova), data).map_err(|e| e.to_string())
    }

    /// The device reads `len` bytes at `iova` through the host unit.
    pub fn host_dma_read(&self, iova: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; len];
        let dev = DeviceRef::Rid(DEV);
        self.machine.dma_read(PhysAddr(UNIT_BASE), dev, None, Iova(iova), &mut b).map_err(|e| e.to_string())?;
        Ok(b)
    }

    /// Loads `program` at `CODE_GPA` (not a guest write) and runs it in protected mode until
    /// `hlt`. MMIO goes to the vIOMMU; with `pt`, after each guest write of GCMD, of IQT or of
    /// IOTLB_REG's upper half (its commands and invalidations) the VMM syncs it. Returns every
    /// sync's report.
    pub fn run(&mut self, mut pt: Option<&mut Passthrough>, program: &Asm) -> Vec<SyncReport> {
        self.viommu.memory().write(PhysAddr(CODE_GPA), &program.0).expect("load program");
        enter_protected_mode(&mut self.vcpu, CODE_GPA);
        let iotlb_hi = VtdModelConfig::scalable().iro() + iotlb::REG + 4;
        let sync_on = [off::GCMD, off::IQT, iotlb_hi].map(|o| VIOMMU_GPA + o);
        let mut reports = Vec::new();
        for _ in 0..MAX_EXITS {
            match self.vcpu.fd().run().expect("KVM_RUN") {
                VcpuExit::MmioRead(addr, data) => {
                    assert!(self.viommu.handle_mmio_read(addr, data), "stray read {addr:#x}")
                }
                VcpuExit::MmioWrite(addr, data) => {
                    assert!(self.viommu.handle_mmio_write(addr, data), "stray write {addr:#x}");
                    if let (Some(pt), true) = (pt.as_deref_mut(), sync_on.contains(&addr)) {
                        reports.push(pt.sync(&self.viommu, &self.slots).expect("sync"));
                    }
                }
                VcpuExit::Hlt => return reports,
                other => panic!("unexpected exit {other:?}"),
            }
        }
        panic!("guest did not halt within {MAX_EXITS} exits");
    }
}

/// `mov ebx, vIOMMU registers`.
pub fn regs() -> Asm {
    let mut a = Asm::default();
    a.mov_ebx(VIOMMU_GPA as u32);
    a
}

pub fn report(attached: Attached, allocated: bool, invalidated: bool) -> SyncReport {
    SyncReport { attached, allocated, invalidated, shadow: None }
}

/// The guest's driver: scalable root table, queued invalidation with 256-bit descriptors
/// (as scalable mode requires), then translation on.
pub fn scalable_enable() -> Asm {
    let mut a = regs();
    a.store(off::RTADDR as u32, (SM_ROOT | rtaddr::TTM_SCALABLE) as u32).store(off::RTADDR as u32 + 4, 0);
    a.store(off::GCMD as u32, gcmd::SRTP).wait_set(off::GSTS as u32, gcmd::SRTP);
    a.store(off::IQA as u32, iqa::value(QUEUE, 0, true) as u32).store(off::IQA as u32 + 4, 0);
    a.store(off::GCMD as u32, gcmd::QIE).wait_set(off::GSTS as u32, gcmd::QIE);
    a.store(off::GCMD as u32, gcmd::QIE | gcmd::TE).wait_set(off::GSTS as u32, gcmd::TE);
    a.hlt();
    a
}

/// The guest's driver in legacy mode: root table, then translation on.
pub fn legacy_enable() -> Asm {
    let mut a = regs();
    a.store(off::RTADDR as u32, (ROOT | rtaddr::TTM_LEGACY) as u32).store(off::RTADDR as u32 + 4, 0);
    a.store(off::GCMD as u32, gcmd::SRTP).wait_set(off::GSTS as u32, gcmd::SRTP);
    a.store(off::GCMD as u32, gcmd::TE).wait_set(off::GSTS as u32, gcmd::TE);
    a.hlt();
    a
}

/// Appends to `a`: the guest writes `descs` and a wait descriptor (status `n`) at the queue
/// tail `*tail`, moves IQT past them, and spins until the unit wrote the status.
pub fn queue_invalidation(a: &mut Asm, tail: &mut u64, descs: &[[u64; 2]], n: u32) {
    let wait = [qi::wait::q0(qi::wait::SW, n), qi::wait::q1(STATUS)];
    for d in descs.iter().chain([&wait]) {
        a.store64_abs((QUEUE + *tail) as u32, d[0]).store64_abs((QUEUE + *tail + 8) as u32, d[1]);
        *tail += 32;
    }
    a.mov_ebx(VIOMMU_GPA as u32).store(off::IQT as u32, *tail as u32);
    a.wait_eq_abs(STATUS as u32, n).hlt();
}

/// PASID-based IOTLB invalidation of everything of (DID, PASID 0) (6.5.2.4).
pub const P_IOTLB: [u64; 2] = [qi::p_iotlb::q0(qi::p_iotlb::PASID, DID, 0), 0];
/// PASID-cache invalidation of (DID, PASID 0) (6.5.2.2).
pub const PC: [u64; 2] = [qi::pc::q0(qi::pc::PASID, DID, 0), 0];

/// Legacy 4-level second-level tables (VT-d spec 9.8), shared by every IOVA the guest maps
/// (they all sit in one 2 MiB region).
pub const SL: [u64; 4] = [0xa000, 0xb000, 0xc000, 0xd000];

/// The leaf entry of `iova` in [`SL`].
pub fn sl_leaf(iova: u64) -> u64 {
    SL[3] + sl::index(iova, 1) * 8
}

/// Legacy-mode structures as firmware would place them (9.1, 9.3, 9.8): the root entry of bus
/// 0, the device's context entry (domain [`DID`], 48-bit AW, second-level translation), and
/// [`SL`] mapping each `(iova, gpa)` of `maps` read-write.
pub fn legacy_firmware(r: &Rig, maps: &[(u64, u64)]) {
    let sid = DEV.source_id();
    r.w(ROOT + root::offset((sid >> 8) as u8), root::lo(CONTEXT));
    let ce = CONTEXT + context::offset(sid as u8);
    r.w(ce + 8, context::did(DID) | 2); // AW 2: 48-bit, 4-level
    r.w(ce, SL[0] | context::TT_SL | context::P);
    for (i, level) in (2..=4u32).rev().enumerate() {
        r.w(SL[i] + sl::index(IOVA, level) * 8, SL[i + 1] | sl::R | sl::W);
    }
    for (iova, gpa) in maps {
        r.w(sl_leaf(*iova), gpa | sl::R | sl::W);
    }
}

/// The guest maps `IOVA` to `to` instead and invalidates its IOTLB globally (register-based,
/// 11.4.8.1: IOTLB_REG's upper half carries IVT and the granularity).
pub fn legacy_remap(to: u64) -> Asm {
    let iotlb_reg = (VtdModelConfig::scalable().iro() + iotlb::REG) as u32;
    let mut a = Asm::default();
    a.store64_abs(sl_leaf(IOVA) as u32, to | sl::R | sl::W);
    a.mov_ebx(VIOMMU_GPA as u32).store(iotlb_reg, 0).store(iotlb_reg + 4, ((iotlb::IVT | iotlb::GLOBAL) >> 32) as u32);
    a.hlt();
    a
}
