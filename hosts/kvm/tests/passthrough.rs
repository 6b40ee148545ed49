//! A passthrough device behind a VT-d vIOMMU on real KVM. A real vCPU guest programs the vIOMMU;
//! the device's DMA goes through the host's VT-d unit (the VT-d model on the simulated machine,
//! driven by the VT-d plugin). Where the host unit grants nesting, the guest's first-stage
//! tables become a nested HWPT over the memory slots' stage-2; where it does not, the guest's
//! tables are shadowed. Either way the DMA lands where the guest's tables say.

mod common;

use std::sync::Arc;

use common::{enter_protected_mode, vm_or_skip, Asm, MB, MSI_WINDOW, UNIT_BASE};
use ioasis::loader::Registry;
use ioasis::platform::{ModelQueryError, PhysMemory};
use ioasis::{Context, DeviceDesc, DeviceId, DeviceRef, Iova, IovaRange, PhysAddr, RequesterId};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_kvm::passthrough::{Attached, Mode, Passthrough, PassthroughError, SyncReport};
use ioasis_kvm::viommu::{GuestPhys, Viommu};
use ioasis_kvm::{MemorySlots, Vcpu};
use ioasis_plugin_vtd::layout::qi;
use ioasis_plugin_vtd::layout::regs::{gcmd, iotlb, iqa, off, rtaddr};
use ioasis_plugin_vtd::layout::tables::{context, fl, pasid_dir, pasid_entry, root, sl, sm_context, sm_root};
use ioasis_plugin_vtd::model::{VtdModel, VtdModelConfig, WINDOW};
use kvm_ioctls::VcpuExit;

/// Guest-physical base of the vIOMMU's registers.
const VIOMMU_GPA: u64 = 0xfed9_0000;
/// Where slot 0's guest memory (GPA 0..512 KiB) lives in the machine's RAM.
const SLOT_PA: u64 = 4 * MB;
const SLOT_LEN: u64 = 512 << 10;
/// Where each guest program is loaded.
const CODE_GPA: u64 = 0x1000;
/// The passthrough device: 00:03.0 on the host, and the same requester id in the guest.
const DEV: RequesterId = RequesterId::new(0, 0, 3, 0);
/// The IOVA the guest's tables map for the device: beyond guest RAM, so that only a
/// translation through the guest's tables reaches memory.
const IOVA: u64 = 0x4000_0000;
/// Data pages in guest RAM.
const BUF1: u64 = 0x20000;
const BUF2: u64 = 0x21000;
const BUF3: u64 = 0x22000;
/// Guest domain id.
const DID: u16 = 1;
const MAX_EXITS: usize = 10_000;

struct Rig {
    machine: Arc<Machine>,
    ctx: Arc<Context>,
    device: DeviceId,
    slots: MemorySlots,
    viommu: Viommu,
    vcpu: Vcpu,
}

/// A machine whose host unit is the VT-d model with capability registers `host` (probed by the
/// VT-d plugin), device 00:03.0 bound to it (not attached), guest memory slot 0 in the slots'
/// IOAS, and a VT-d vIOMMU of the scalable generation. `None` when KVM is unusable.
fn rig(host: VtdModelConfig) -> Option<Rig> {
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
    slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, 0).expect("slot 0");
    let model = Arc::new(VtdModel::new(VtdModelConfig::scalable()).expect("vIOMMU model"));
    let viommu = Viommu::new(VIOMMU_GPA, model, GuestPhys::of(&slots));
    let vcpu = vm.create_vcpu(0).expect("vCPU");
    Some(Rig { machine, ctx, device, slots, viommu, vcpu })
}

impl Rig {
    fn passthrough(&self) -> Passthrough {
        Passthrough::new(self.ctx.clone(), self.device, DeviceRef::Rid(DEV), self.slots.ioas(), &self.viommu)
            .expect("passthrough")
    }

    fn w(&self, gpa: u64, v: u64) {
        self.viommu.memory().write_u64(PhysAddr(gpa), v).expect("guest table write");
    }

    fn guest_read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.viommu.memory().read(PhysAddr(gpa), &mut b).expect("guest read");
        b
    }

    /// The passthrough device DMAs `data` to `iova` through the host unit.
    fn host_dma(&self, iova: u64, data: &[u8]) -> Result<(), String> {
        let dev = DeviceRef::Rid(DEV);
        self.machine.dma_write(PhysAddr(UNIT_BASE), dev, None, Iova(iova), data).map_err(|e| e.to_string())
    }

    /// Loads `program` at `CODE_GPA` and runs it in protected mode until `hlt`. MMIO goes to
    /// the vIOMMU; after each guest write of GCMD, of IQT or of IOTLB_REG's upper half (its
    /// commands and invalidations) the VMM syncs `pt`. Returns every sync's report.
    fn run(&mut self, pt: &mut Passthrough, program: &Asm) -> Vec<SyncReport> {
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
                    if sync_on.contains(&addr) {
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
fn regs() -> Asm {
    let mut a = Asm::default();
    a.mov_ebx(VIOMMU_GPA as u32);
    a
}

fn report(attached: Attached, allocated: bool, invalidated: bool) -> SyncReport {
    SyncReport { attached, allocated, invalidated, shadow: None }
}

// ---- Scalable mode: the guest's first-stage tables, nested. ----

/// Scalable-mode structures (VT-d spec 9.2, 9.4-9.6), placed in guest RAM as firmware would.
const SM_ROOT: u64 = 0x8000;
const SM_CONTEXT: u64 = 0x9000;
const PASID_DIR: u64 = 0xa000;
const PASID_TABLE: u64 = 0xb000;
/// The RID_PASID (0) entry the device's requests without PASID use.
const PASID_ENTRY: u64 = PASID_TABLE; // + pasid_entry::offset(0)
/// Two x86-64 4-level first-stage tables (9.7): A maps `IOVA` to `BUF1`, B maps it to `BUF3`.
const FS_A: [u64; 4] = [0xc000, 0xd000, 0xe000, 0xf000];
const FS_B: [u64; 4] = [0x10000, 0x11000, 0x12000, 0x13000];
/// The invalidation queue (one page of 256-bit descriptors) and the wait status dword.
const QUEUE: u64 = 0x14000;
const STATUS: u64 = 0x15000;

/// The leaf entry of `IOVA` in first-stage table `fs`.
fn fs_leaf(fs: &[u64; 4]) -> u64 {
    fs[3] + sl::index(IOVA, 1) * 8
}

fn scalable_firmware(r: &Rig) {
    r.w(SM_ROOT, SM_CONTEXT | sm_root::P); // lower context table: devfn 0-127
    let ce = SM_CONTEXT + sm_context::offset(DEV.source_id() as u8);
    r.w(ce, PASID_DIR | sm_context::pdts(7) | sm_context::P);
    r.w(ce + 8, 0); // RID_PASID 0
    r.w(PASID_DIR + pasid_dir::offset(0), PASID_TABLE | pasid_dir::P);
    r.w(PASID_ENTRY + 8, u64::from(DID));
    r.w(PASID_ENTRY + 16, FS_A[0] | pasid_entry::FSPM_4LEVEL);
    r.w(PASID_ENTRY, pasid_entry::PGTT_FS | pasid_entry::P);
    for (fs, out) in [(&FS_A, BUF1), (&FS_B, BUF3)] {
        for (i, level) in (2..=4u32).rev().enumerate() {
            r.w(fs[i] + sl::index(IOVA, level) * 8, fs[i + 1] | fl::P | fl::RW | fl::US);
        }
        r.w(fs_leaf(fs), out | fl::P | fl::RW | fl::US);
    }
}

/// The guest's driver: scalable root table, queued invalidation with 256-bit descriptors
/// (as scalable mode requires), then translation on.
fn scalable_enable() -> Asm {
    let mut a = regs();
    a.store(off::RTADDR as u32, (SM_ROOT | rtaddr::TTM_SCALABLE) as u32).store(off::RTADDR as u32 + 4, 0);
    a.store(off::GCMD as u32, gcmd::SRTP).wait_set(off::GSTS as u32, gcmd::SRTP);
    a.store(off::IQA as u32, iqa::value(QUEUE, 0, true) as u32).store(off::IQA as u32 + 4, 0);
    a.store(off::GCMD as u32, gcmd::QIE).wait_set(off::GSTS as u32, gcmd::QIE);
    a.store(off::GCMD as u32, gcmd::QIE | gcmd::TE).wait_set(off::GSTS as u32, gcmd::TE);
    a.hlt();
    a
}

/// Appends to `a`: the guest writes `descs` and a wait descriptor (status `n`) at the queue
/// tail `*tail`, moves IQT past them, and spins until the unit wrote the status.
fn queue_invalidation(a: &mut Asm, tail: &mut u64, descs: &[[u64; 2]], n: u32) {
    let wait = [qi::wait::q0(qi::wait::SW, n), qi::wait::q1(STATUS)];
    for d in descs.iter().chain([&wait]) {
        a.store64_abs((QUEUE + *tail) as u32, d[0]).store64_abs((QUEUE + *tail + 8) as u32, d[1]);
        *tail += 32;
    }
    a.mov_ebx(VIOMMU_GPA as u32).store(off::IQT as u32, *tail as u32);
    a.wait_eq_abs(STATUS as u32, n).hlt();
}

/// PASID-based IOTLB invalidation of everything of (DID, PASID 0) (6.5.2.4).
const P_IOTLB: [u64; 2] = [qi::p_iotlb::q0(qi::p_iotlb::PASID, DID, 0), 0];
/// PASID-cache invalidation of (DID, PASID 0) (6.5.2.2).
const PC: [u64; 2] = [qi::pc::q0(qi::pc::PASID, DID, 0), 0];

#[test]
fn guest_first_stage_is_nested_and_its_invalidations_reach_the_host_unit() {
    let Some(mut r) = rig(VtdModelConfig::scalable()) else { return };
    scalable_firmware(&r);
    let mut pt = r.passthrough();
    assert_eq!(pt.mode(), &Mode::Nested, "the scalable host unit grants nesting x86-64");
    assert_eq!(pt.attached(), Attached::Nothing);
    assert!(r.host_dma(BUF1, b"x").is_err(), "not attached yet: blocked");

    // Translation off in the vIOMMU: DMA goes to guest-physical addresses, through the stage-2.
    let first = pt.sync(&r.viommu, &r.slots).expect("sync");
    let stage2 = pt.stage2_hwpt().expect("stage-2 allocated");
    assert_eq!(first, report(Attached::Stage2(stage2), false, false));
    r.host_dma(BUF1 + 0x10, b"untranslated-dma").expect("DMA to a guest-physical address");
    assert_eq!(r.guest_read(BUF1 + 0x10, 16), b"untranslated-dma");
    assert!(r.host_dma(IOVA, b"x").is_err(), "IOVA is not guest RAM");

    // The guest enables scalable-mode translation; the syncs on its GCMD writes follow it.
    let reports = r.run(&mut pt, &scalable_enable());
    assert_eq!(reports.len(), 3, "SRTP, QIE, QIE|TE");
    assert!(reports[..2].iter().all(|x| *x == report(Attached::Stage2(stage2), false, false)), "{reports:?}");
    let Attached::Nested(nested) = reports[2].attached else { panic!("not nested: {reports:?}") };
    assert_eq!(reports[2], report(Attached::Nested(nested), true, true));
    assert_eq!(r.ctx.attached_hwpt(r.device, None).unwrap(), Some(nested));
    assert_eq!(r.ctx.hwpt_info(nested).unwrap().format, ioasis::PtFormat::X86_64);

    // Host DMA through the guest IOVA lands in the page the guest's stage-1 chose.
    r.host_dma(IOVA + 0x20, b"nested-dma-lands").expect("DMA through the nested HWPT");
    assert_eq!(r.guest_read(BUF1 + 0x20, 16), b"nested-dma-lands");
    let mut raw = [0u8; 16];
    r.machine.ram().read(PhysAddr(SLOT_PA + BUF1 + 0x20), &mut raw).unwrap();
    assert_eq!(&raw, b"nested-dma-lands", "the machine RAM behind the guest page");

    // The guest remaps: its stage-1 leaf now points at BUF2, not yet invalidated. The host unit
    // still uses its cached translation: without an invalidation the DMA lands in BUF1.
    let mut remap = Asm::default();
    remap.store64_abs(fs_leaf(&FS_A) as u32, BUF2 | fl::P | fl::RW | fl::US).hlt();
    assert_eq!(r.run(&mut pt, &remap), [], "no MMIO, no sync");
    r.host_dma(IOVA + 0x30, b"stale-translated").expect("DMA");
    assert_eq!(r.guest_read(BUF1 + 0x30, 16), b"stale-translated", "the host IOTLB caches");
    assert_eq!(r.guest_read(BUF2 + 0x30, 16), [0; 16]);

    // The guest invalidates (queued, PASID-based IOTLB); the sync only forwards an invalidation
    // (same root, same HWPT), and the DMA lands in the new page.
    let mut tail = 0;
    let mut inval = Asm::default();
    queue_invalidation(&mut inval, &mut tail, &[P_IOTLB], 1);
    assert_eq!(r.run(&mut pt, &inval), [report(Attached::Nested(nested), false, true)]);
    r.host_dma(IOVA + 0x40, b"after-invalidate").expect("DMA");
    assert_eq!(r.guest_read(BUF2 + 0x40, 16), b"after-invalidate");
    assert_eq!(r.guest_read(BUF1 + 0x40, 16), [0; 16]);

    // The guest points its PASID entry at another stage-1 table: a new nested HWPT replaces
    // the old one, which is freed.
    let mut switch = Asm::default();
    switch.store64_abs((PASID_ENTRY + 16) as u32, FS_B[0] | pasid_entry::FSPM_4LEVEL);
    queue_invalidation(&mut switch, &mut tail, &[PC, P_IOTLB], 2);
    let reports = r.run(&mut pt, &switch);
    let Attached::Nested(nested_b) = reports[0].attached else { panic!("not nested: {reports:?}") };
    assert_ne!(nested_b, nested);
    assert_eq!(reports, [report(Attached::Nested(nested_b), true, true)]);
    assert!(r.ctx.hwpt_info(nested).is_err(), "the old nested HWPT is destroyed");
    r.host_dma(IOVA + 0x50, b"other-root-table").expect("DMA");
    assert_eq!(r.guest_read(BUF3 + 0x50, 16), b"other-root-table");

    // A malformed PASID entry (PGTT 000, which the unit rejects): the sync fails closed, the
    // device is blocked and the nested HWPT freed.
    r.w(PASID_ENTRY, pasid_entry::P);
    let e = pt.sync(&r.viommu, &r.slots).unwrap_err();
    assert!(matches!(e, PassthroughError::Guest(ModelQueryError::BadEntry { .. })), "{e}");
    let Attached::Blocked(blocking) = pt.attached() else { panic!("not blocked: {:?}", pt.attached()) };
    assert!(r.ctx.hwpt_info(nested_b).is_err(), "the nested HWPT is destroyed");
    assert!(r.host_dma(IOVA + 0x50, b"blocked!").is_err());
    assert_eq!(r.guest_read(BUF3 + 0x50, 16), b"other-root-table");

    // The guest clears its PASID entry: blocked, through the same blocking HWPT.
    let mut clear = Asm::default();
    clear.store64_abs(PASID_ENTRY as u32, 0);
    queue_invalidation(&mut clear, &mut tail, &[PC, P_IOTLB], 3);
    assert_eq!(r.run(&mut pt, &clear), [report(Attached::Blocked(blocking), false, false)]);
    assert!(r.host_dma(IOVA + 0x50, b"blocked!").is_err());

    // The guest turns translation off: guest-physical addresses again.
    let mut off_ = regs();
    off_.store(off::GCMD as u32, gcmd::QIE).hlt();
    assert_eq!(r.run(&mut pt, &off_), [report(Attached::Stage2(stage2), false, false)]);
    r.host_dma(BUF2, b"translation-off!").expect("DMA");
    assert_eq!(r.guest_read(BUF2, 16), b"translation-off!");

    // Closing frees every HWPT it allocated.
    pt.close().expect("close");
    assert_eq!(r.ctx.attached_hwpt(r.device, None).unwrap(), None);
    assert!(r.ctx.hwpt_info(stage2).is_err() && r.ctx.hwpt_info(blocking).is_err());
    // A second passthrough of the device, nested again, then closed: no table page is left
    // behind by the cycle (the first close freed everything it allocated).
    let after_close = r.ctx.table_pages();
    let mut pt = r.passthrough();
    r.w(PASID_ENTRY, pasid_entry::PGTT_FS | pasid_entry::P);
    let mut on = regs();
    on.store(off::GCMD as u32, gcmd::QIE | gcmd::TE).hlt();
    let reports = r.run(&mut pt, &on);
    assert!(matches!(reports[..], [SyncReport { attached: Attached::Nested(_), allocated: true, .. }]), "{reports:?}");
    r.host_dma(IOVA + 0x60, b"nested-once-more").expect("DMA");
    assert_eq!(r.guest_read(BUF3 + 0x60, 16), b"nested-once-more");
    assert!(r.ctx.table_pages() > after_close);
    pt.close().expect("close");
    assert_eq!(r.ctx.table_pages(), after_close);
}

// ---- Legacy mode in the guest: second-level tables, shadowed. ----

/// Legacy structures (9.1, 9.3, 9.8): root, context for bus 0, 4-level second-level tables
/// mapping `IOVA` to `BUF1`.
const ROOT: u64 = 0x8000;
const CONTEXT: u64 = 0x9000;
const SL: [u64; 4] = [0xa000, 0xb000, 0xc000, 0xd000];

fn sl_leaf() -> u64 {
    SL[3] + sl::index(IOVA, 1) * 8
}

fn legacy_firmware(r: &Rig) {
    let sid = DEV.source_id();
    r.w(ROOT + root::offset((sid >> 8) as u8), root::lo(CONTEXT));
    let ce = CONTEXT + context::offset(sid as u8);
    r.w(ce + 8, context::did(DID) | 2); // AW 2: 48-bit, 4-level
    r.w(ce, SL[0] | context::TT_SL | context::P);
    for (i, level) in (2..=4u32).rev().enumerate() {
        r.w(SL[i] + sl::index(IOVA, level) * 8, SL[i + 1] | sl::R | sl::W);
    }
    r.w(sl_leaf(), BUF1 | sl::R | sl::W);
}

fn legacy_enable() -> Asm {
    let mut a = regs();
    a.store(off::RTADDR as u32, (ROOT | rtaddr::TTM_LEGACY) as u32).store(off::RTADDR as u32 + 4, 0);
    a.store(off::GCMD as u32, gcmd::SRTP).wait_set(off::GSTS as u32, gcmd::SRTP);
    a.store(off::GCMD as u32, gcmd::TE).wait_set(off::GSTS as u32, gcmd::TE);
    a.hlt();
    a
}

/// The guest maps `IOVA` to `BUF2` instead and invalidates its IOTLB globally (register-based,
/// 11.4.8.1: IOTLB_REG's upper half carries IVT and the granularity).
fn legacy_remap() -> Asm {
    let iotlb_reg = (VtdModelConfig::scalable().iro() + iotlb::REG) as u32;
    let mut a = Asm::default();
    a.store64_abs(sl_leaf() as u32, BUF2 | sl::R | sl::W);
    a.mov_ebx(VIOMMU_GPA as u32).store(iotlb_reg, 0).store(iotlb_reg + 4, ((iotlb::IVT | iotlb::GLOBAL) >> 32) as u32);
    a.hlt();
    a
}

/// A guest in legacy mode behind a passthrough on host unit `host`: DMA lands through the
/// shadow, before and after the guest remaps. Returns the passthrough's mode.
fn legacy_guest_is_shadowed(host: VtdModelConfig) -> Option<Mode> {
    let mut r = rig(host)?;
    legacy_firmware(&r);
    let mut pt = r.passthrough();
    let reports = r.run(&mut pt, &legacy_enable());
    let stage2 = pt.stage2_hwpt().expect("stage-2 for the untranslated start");
    assert_eq!(reports[0], report(Attached::Stage2(stage2), false, false), "SRTP: translation still off");
    let shadow = pt.shadow_ioas().expect("shadow IOAS");
    let stats = reports[1].shadow.expect("shadow synced");
    assert_eq!((reports[1].attached, stats.mapped, stats.skipped), (Attached::Shadow(shadow), 1, 0), "{reports:?}");
    assert!(!reports[1].invalidated && !reports[1].allocated);
    r.host_dma(IOVA + 0x10, b"shadowed-dma-ok!").expect("DMA through the shadow");
    assert_eq!(r.guest_read(BUF1 + 0x10, 16), b"shadowed-dma-ok!");

    let reports = r.run(&mut pt, &legacy_remap());
    let stats = reports[0].shadow.expect("shadow synced");
    assert_eq!((reports.len(), stats.mapped, stats.unmapped), (1, 1, 1), "{reports:?}");
    r.host_dma(IOVA + 0x20, b"remapped-shadow!").expect("DMA through the new shadow mapping");
    assert_eq!(r.guest_read(BUF2 + 0x20, 16), b"remapped-shadow!");
    assert_eq!(r.guest_read(BUF1 + 0x20, 16), [0; 16]);
    let mode = pt.mode().clone();
    pt.close().expect("close");
    assert!(r.ctx.hwpt_info(stage2).is_err());
    assert!(r.ctx.areas(shadow).is_err(), "the shadow IOAS is destroyed");
    Some(mode)
}

#[test]
fn host_unit_without_nesting_gives_shadow_mode_with_the_refusal_reason() {
    // QEMU 7.2's legacy unit: the VT-d driver runs it in legacy mode and refuses nesting.
    let Some(mode) = legacy_guest_is_shadowed(VtdModelConfig::legacy()) else { return };
    let Mode::Shadow(reason) = mode else { panic!("expected shadow mode, got {mode:?}") };
    assert!(reason.contains("scalable mode, ECAP.NEST and ECAP.FSTS"), "{reason}");
}

#[test]
fn nesting_host_shadows_a_guest_without_first_stage_tables() {
    // The host could nest, but a legacy-mode guest has no stage-1: shadowed all the same.
    let Some(mode) = legacy_guest_is_shadowed(VtdModelConfig::scalable()) else { return };
    assert_eq!(mode, Mode::Nested);
}
