//! A passthrough device behind a VT-d vIOMMU on real KVM. A real vCPU guest programs the vIOMMU;
//! the device's DMA goes through the host's VT-d unit (the VT-d model on the simulated machine,
//! driven by the VT-d plugin). Where the host unit grants nesting, the guest's first-stage
//! tables become a nested HWPT over the memory slots' stage-2; where it does not, the guest's
//! tables are shadowed. Either way the DMA lands where the guest's tables say.

mod common;

use common::vtd_guest::*;
use common::Asm;
use ioasis::platform::ModelQueryError;
use ioasis::PhysAddr;
use ioasis_kvm::passthrough::{Attached, Mode, Passthrough, PassthroughConfig, PassthroughError, SyncReport};
use ioasis_plugin_vtd::layout::regs::{gcmd, off};
use ioasis_plugin_vtd::layout::tables::{fl, pasid_dir, pasid_entry, sl, sm_context, sm_root};
use ioasis_plugin_vtd::model::VtdModelConfig;

/// A passthrough of the device, not migratable.
fn passthrough(r: &Rig) -> Passthrough {
    r.passthrough_with(PassthroughConfig::default()).expect("passthrough")
}

// ---- Scalable mode: the guest's first-stage tables, nested. ----

const PASID_TABLE: u64 = 0xb000;
/// The RID_PASID (0) entry the device's requests without PASID use.
const PASID_ENTRY: u64 = PASID_TABLE; // + pasid_entry::offset(0)
/// Two x86-64 4-level first-stage tables (9.7): A maps `IOVA` to `BUF1`, B maps it to `BUF3`.
const FS_A: [u64; 4] = [0xc000, 0xd000, 0xe000, 0xf000];
const FS_B: [u64; 4] = [0x10000, 0x11000, 0x12000, 0x13000];

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

#[test]
fn guest_first_stage_is_nested_and_its_invalidations_reach_the_host_unit() {
    let Some(mut r) = rig(VtdModelConfig::scalable(), 0) else { return };
    scalable_firmware(&r);
    let mut pt = passthrough(&r);
    assert_eq!(pt.mode(), &Mode::Nested, "the scalable host unit grants nesting x86-64");
    assert_eq!(pt.attached(), Attached::Nothing);
    // A host vIOMMU over the stage-2, with the device known by the requester id the guest
    // gives it.
    let viommu = pt.viommu().expect("a host vIOMMU");
    let vdevice = pt.vdevice().expect("a vDEVICE");
    assert_eq!(r.ctx.vdevice(vdevice).unwrap(), (viommu, r.device, u64::from(DEV.source_id())));
    assert_eq!(r.ctx.viommu_info(viommu).unwrap().kind, ioasis::abi::ViommuKind::VTD);
    assert_eq!(Some(r.ctx.viommu_parent(viommu).unwrap()), pt.stage2_hwpt());
    assert!(r.host_dma(BUF1, b"x").is_err(), "not attached yet: blocked");

    // Translation off in the vIOMMU: DMA goes to guest-physical addresses, through the stage-2.
    let first = pt.sync(&r.viommu, &r.slots).expect("sync");
    let stage2 = pt.stage2_hwpt().expect("stage-2 allocated");
    assert_eq!(first, report(Attached::Stage2(stage2), false, false));
    r.host_dma(BUF1 + 0x10, b"untranslated-dma").expect("DMA to a guest-physical address");
    assert_eq!(r.guest_read(BUF1 + 0x10, 16), b"untranslated-dma");
    assert!(r.host_dma(IOVA, b"x").is_err(), "IOVA is not guest RAM");

    // The guest enables scalable-mode translation; the syncs on its GCMD writes follow it.
    let reports = r.run(Some(&mut pt), &scalable_enable());
    assert_eq!(reports.len(), 3, "SRTP, QIE, QIE|TE");
    assert!(reports[..2].iter().all(|x| *x == report(Attached::Stage2(stage2), false, false)), "{reports:?}");
    let Attached::Nested(nested) = reports[2].attached else { panic!("not nested: {reports:?}") };
    assert_eq!(reports[2], report(Attached::Nested(nested), true, true));
    assert_eq!(r.ctx.attached_hwpt(r.device, None).unwrap(), Some(nested));
    assert_eq!(r.ctx.hwpt_info(nested).unwrap().format, ioasis::PtFormat::X86_64);
    assert_eq!(r.ctx.hwpt_viommu(nested).unwrap(), Some(viommu), "the nested HWPT is the vIOMMU's");

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
    assert_eq!(r.run(Some(&mut pt), &remap), [], "no MMIO, no sync");
    r.host_dma(IOVA + 0x30, b"stale-translated").expect("DMA");
    assert_eq!(r.guest_read(BUF1 + 0x30, 16), b"stale-translated", "the host IOTLB caches");
    assert_eq!(r.guest_read(BUF2 + 0x30, 16), [0; 16]);

    // The guest invalidates (queued, PASID-based IOTLB); the sync only forwards an invalidation
    // (same root, same HWPT), and the DMA lands in the new page.
    let mut tail = 0;
    let mut inval = Asm::default();
    queue_invalidation(&mut inval, &mut tail, &[P_IOTLB], 1);
    assert_eq!(r.run(Some(&mut pt), &inval), [report(Attached::Nested(nested), false, true)]);
    r.host_dma(IOVA + 0x40, b"after-invalidate").expect("DMA");
    assert_eq!(r.guest_read(BUF2 + 0x40, 16), b"after-invalidate");
    assert_eq!(r.guest_read(BUF1 + 0x40, 16), [0; 16]);

    // The guest points its PASID entry at another stage-1 table: a new nested HWPT replaces
    // the old one, which is freed.
    let mut switch = Asm::default();
    switch.store64_abs((PASID_ENTRY + 16) as u32, FS_B[0] | pasid_entry::FSPM_4LEVEL);
    queue_invalidation(&mut switch, &mut tail, &[PC, P_IOTLB], 2);
    let reports = r.run(Some(&mut pt), &switch);
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
    assert_eq!(r.run(Some(&mut pt), &clear), [report(Attached::Blocked(blocking), false, false)]);
    assert!(r.host_dma(IOVA + 0x50, b"blocked!").is_err());

    // The guest turns translation off: guest-physical addresses again.
    let mut off_ = regs();
    off_.store(off::GCMD as u32, gcmd::QIE).hlt();
    assert_eq!(r.run(Some(&mut pt), &off_), [report(Attached::Stage2(stage2), false, false)]);
    r.host_dma(BUF2, b"translation-off!").expect("DMA");
    assert_eq!(r.guest_read(BUF2, 16), b"translation-off!");

    // Closing frees every HWPT it allocated, the vDEVICE and the vIOMMU.
    pt.close().expect("close");
    assert_eq!(r.ctx.attached_hwpt(r.device, None).unwrap(), None);
    assert!(r.ctx.hwpt_info(stage2).is_err() && r.ctx.hwpt_info(blocking).is_err());
    assert!(r.ctx.vdevice(vdevice).is_err() && r.ctx.viommu_info(viommu).is_err());
    // A second passthrough of the device, nested again, then closed: no table page is left
    // behind by the cycle (the first close freed everything it allocated).
    let after_close = r.ctx.table_pages();
    let mut pt = passthrough(&r);
    r.w(PASID_ENTRY, pasid_entry::PGTT_FS | pasid_entry::P);
    let mut on = regs();
    on.store(off::GCMD as u32, gcmd::QIE | gcmd::TE).hlt();
    let reports = r.run(Some(&mut pt), &on);
    assert!(matches!(reports[..], [SyncReport { attached: Attached::Nested(_), allocated: true, .. }]), "{reports:?}");
    r.host_dma(IOVA + 0x60, b"nested-once-more").expect("DMA");
    assert_eq!(r.guest_read(BUF3 + 0x60, 16), b"nested-once-more");
    assert!(r.ctx.table_pages() > after_close);
    pt.close().expect("close");
    assert_eq!(r.ctx.table_pages(), after_close);
}

// ---- Legacy mode in the guest: second-level tables, shadowed. ----

/// A guest in legacy mode behind a passthrough on host unit `host`: DMA lands through the
/// shadow, before and after the guest remaps. Returns the passthrough's mode.
fn legacy_guest_is_shadowed(host: VtdModelConfig) -> Option<Mode> {
    let mut r = rig(host, 0)?;
    legacy_firmware(&r, &[(IOVA, BUF1)]);
    let mut pt = passthrough(&r);
    let reports = r.run(Some(&mut pt), &legacy_enable());
    let stage2 = pt.stage2_hwpt().expect("stage-2 for the untranslated start");
    assert_eq!(reports[0], report(Attached::Stage2(stage2), false, false), "SRTP: translation still off");
    let shadow = pt.shadow_ioas().expect("shadow IOAS");
    let stats = reports[1].shadow.expect("shadow synced");
    assert_eq!((reports[1].attached, stats.mapped, stats.skipped), (Attached::Shadow(shadow), 1, 0), "{reports:?}");
    assert!(!reports[1].invalidated && !reports[1].allocated);
    r.host_dma(IOVA + 0x10, b"shadowed-dma-ok!").expect("DMA through the shadow");
    assert_eq!(r.guest_read(BUF1 + 0x10, 16), b"shadowed-dma-ok!");

    let reports = r.run(Some(&mut pt), &legacy_remap(BUF2));
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
    assert!(reason.contains("nesting needs scalable mode: ECAP.SMTS (bit 43) is 0"), "{reason}");
}

#[test]
fn nesting_host_shadows_a_guest_without_first_stage_tables() {
    // The host could nest, but a legacy-mode guest has no stage-1: shadowed all the same.
    let Some(mode) = legacy_guest_is_shadowed(VtdModelConfig::scalable()) else { return };
    assert_eq!(mode, Mode::Nested);
}
