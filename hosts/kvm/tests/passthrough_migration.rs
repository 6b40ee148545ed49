//! Live migration with a passthrough device behind a VT-d vIOMMU on real KVM: the slot's dirty
//! bitmap is exactly the union, in guest-physical pages, of what a real vCPU wrote (KVM's dirty
//! log) and what the passthrough device wrote through the guest's IOVAs — nested (the host
//! unit's stage-2 dirty bits, set through the guest's stage-1) or shadowed (the shadow IOAS's
//! dirty bits, translated back to guest pages) — read and cleared together, round after round,
//! also when the guest remaps, turns translation off, or the device is closed between reads.

mod common;

use common::vtd_guest::*;
use common::{Asm, Rig as MockRig, MB};
use ioasis::{IntentItem, PhysAddr, Target};
use ioasis_kvm::dirty::{DirtyError, DirtyLog, DIRTY_PAGE_SIZE};
use ioasis_kvm::passthrough::{Attached, Mode, Passthrough, PassthroughConfig, PassthroughError};
use ioasis_kvm::MemorySlots;
use ioasis_plugin_vtd::layout::qi;
use ioasis_plugin_vtd::layout::regs::{ecap, gcmd, off};
use ioasis_plugin_vtd::layout::tables::{fl, pasid_dir, pasid_entry, sl, sm_context, sm_root};
use ioasis_plugin_vtd::model::VtdModelConfig;
use kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;

/// Pages only the vCPU writes.
const V1: u64 = 0x30000;
const V2: u64 = 0x31000;
const V3: u64 = 0x32000;

/// The scalable host unit without ECAP.NEST: it tracks dirty pages but cannot nest, so a
/// passthrough behind it shadows.
fn scalable_without_nesting() -> VtdModelConfig {
    let s = VtdModelConfig::scalable();
    VtdModelConfig { ecap: s.ecap & !ecap::NEST, ..s }
}

fn rig(host: VtdModelConfig) -> Option<Rig> {
    common::vtd_guest::rig(host, KVM_MEM_LOG_DIRTY_PAGES)
}

fn migratable(r: &Rig) -> Passthrough {
    r.passthrough_with(PassthroughConfig { dirty_tracking: true }).expect("migratable passthrough")
}

/// The device writes `data` at `iova`.
fn dma(r: &Rig, iova: u64, data: &[u8]) {
    r.host_dma(iova, data).expect("device DMA write");
}

/// The vCPU stores a dword in each page of `gpas`.
fn vcpu_writes(r: &mut Rig, gpas: &[u64]) {
    let mut a = Asm::default();
    for (i, gpa) in gpas.iter().enumerate() {
        a.store_abs(*gpa as u32 + 0x40, 0x5a00 + i as u32);
    }
    a.hlt();
    assert!(r.run(None, &a).is_empty());
}

/// The guest-physical pages whose bits are set in a slot-0 bitmap, in order.
fn dirty(bitmap: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    for (i, w) in bitmap.iter().enumerate() {
        for b in 0..64 {
            if w & (1 << b) != 0 {
                out.push((i as u64 * 64 + b) * DIRTY_PAGE_SIZE);
            }
        }
    }
    out
}

/// `gpas` sorted: what `dirty` should give.
fn pages(gpas: &[u64]) -> Vec<u64> {
    let mut v: Vec<u64> = gpas.iter().map(|g| g & !(DIRTY_PAGE_SIZE - 1)).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Reads slot 0 and checks it is exactly `want` (guest-physical pages), then that a second
/// read is empty: both halves were cleared.
#[track_caller]
fn round(log: &mut DirtyLog, slots: &MemorySlots, want: &[u64], what: &str) {
    let bitmap = log.read_and_clear(slots, 0).expect("read and clear");
    assert_eq!(bitmap.len() as u64, (SLOT_LEN / DIRTY_PAGE_SIZE).div_ceil(64));
    assert_eq!(dirty(&bitmap), pages(want), "{what}: exactly the union");
    let again = log.read_and_clear(slots, 0).expect("second read");
    assert_eq!(dirty(&again), [] as [u64; 0], "{what}: a second read is empty");
}

// ---- Scalable guest: first-stage tables, nested on the host. ----

const PASID_ENTRY: u64 = 0xb000;
/// The guest's x86-64 4-level first-stage tables: `IOVA` → `BUF1`, `IOVA2` → `BUF2`.
const FS: [u64; 4] = [0xc000, 0xd000, 0xe000, 0xf000];

fn scalable_firmware(r: &Rig) {
    r.w(SM_ROOT, SM_CONTEXT | sm_root::P);
    let ce = SM_CONTEXT + sm_context::offset(DEV.source_id() as u8);
    r.w(ce, PASID_DIR | sm_context::pdts(7) | sm_context::P);
    r.w(ce + 8, 0);
    r.w(PASID_DIR + pasid_dir::offset(0), PASID_ENTRY | pasid_dir::P);
    r.w(PASID_ENTRY + 8, u64::from(DID));
    r.w(PASID_ENTRY + 16, FS[0] | pasid_entry::FSPM_4LEVEL);
    r.w(PASID_ENTRY, pasid_entry::PGTT_FS | pasid_entry::P);
    // No A/D set by the guest: the host unit sets them on first use (guest memory writes).
    for (i, level) in (2..=4u32).rev().enumerate() {
        r.w(FS[i] + sl::index(IOVA, level) * 8, FS[i + 1] | fl::P | fl::RW | fl::US);
    }
    r.w(FS[3] + sl::index(IOVA, 1) * 8, BUF1 | fl::P | fl::RW | fl::US);
    r.w(FS[3] + sl::index(IOVA2, 1) * 8, BUF2 | fl::P | fl::RW | fl::US);
}

/// The guest points `IOVA` at `BUF3` in its stage-1 and invalidates (queued, PASID-based
/// IOTLB, 6.5.2.4, then a wait descriptor whose status the vIOMMU writes).
fn scalable_remap() -> Asm {
    let mut a = Asm::default();
    a.store64_abs((FS[3] + sl::index(IOVA, 1) * 8) as u32, BUF3 | fl::P | fl::RW | fl::US);
    let descs =
        [[qi::p_iotlb::q0(qi::p_iotlb::PASID, DID, 0), 0], [qi::wait::q0(qi::wait::SW, 1), qi::wait::q1(STATUS)]];
    for (i, d) in descs.iter().enumerate() {
        let at = QUEUE + 32 * i as u64;
        a.store64_abs(at as u32, d[0]).store64_abs(at as u32 + 8, d[1]);
    }
    a.mov_ebx(VIOMMU_GPA as u32).store(off::IQT as u32, 64);
    a.wait_eq_abs(STATUS as u32, 1).hlt();
    a
}

#[test]
fn nested_device_writes_and_vcpu_writes_merge_exactly() {
    let Some(mut r) = rig(VtdModelConfig::scalable()) else { return };
    scalable_firmware(&r);
    let mut pt = migratable(&r);
    assert_eq!(pt.mode(), &Mode::Nested, "the scalable host unit nests and tracks dirty pages");
    assert!(pt.config().dirty_tracking);

    // Nested mode allocates the stage-2 with the passthrough (its vIOMMU's parent), before the
    // device is attached: the log, started now, tracks it from its first round, so the first
    // round is exact, not "whole slot".
    let stage2 = pt.stage2_hwpt().expect("the vIOMMU's stage-2");
    let mut log = DirtyLog::start(&r.slots).expect("start dirty logging");
    assert_eq!(log.tracked(&r.slots), [stage2]);
    round(&mut log, &r.slots, &[], "nothing written");
    let first = pt.sync(&r.viommu, &r.slots).expect("sync");
    assert_eq!(first.attached, Attached::Stage2(stage2), "{first:?}");
    assert_eq!(log.tracked(&r.slots), [stage2]);

    // Round 1, translation off in the vIOMMU: the device writes guest-physical BUF1 and reads
    // BUF2 through the stage-2; the vCPU writes V1 and V2.
    dma(&r, BUF1 + 0x10, b"untranslated");
    assert_eq!(r.host_dma_read(BUF2, 4).expect("DMA read"), [0; 4]);
    vcpu_writes(&mut r, &[V1, V2]);
    round(&mut log, &r.slots, &[BUF1, V1, V2], "translation off");

    // The guest enables first-stage translation: nested (the stage-2 keeps the dirty bits).
    let reports = r.run(Some(&mut pt), &scalable_enable());
    let Attached::Nested(nested) = reports.last().expect("syncs").attached else { panic!("{reports:?}") };
    round(&mut log, &r.slots, &[], "enabling writes only registers");

    // Round 2: the device writes through IOVA (→ BUF1) for the first time. The host unit walks
    // the guest's stage-1 and sets A in each of its four entries and D in the leaf: writes to
    // the guest's table pages, which the stage-2 reports dirty too. The vCPU writes V3.
    dma(&r, IOVA + 0x20, b"nested-dma-lands");
    assert_eq!(r.guest_read(BUF1 + 0x20, 16), b"nested-dma-lands");
    vcpu_writes(&mut r, &[V3]);
    round(&mut log, &r.slots, &[BUF1, V3, FS[0], FS[1], FS[2], FS[3]], "first nested write");

    // Round 3: the same IOVA again (its stage-1 A/D are set: no table write; the host unit's
    // cached translation was dropped when the dirty bits were cleared, so its D is set again)
    // and IOVA2 (→ BUF2) for the first time (its leaf, in FS[3], gets A/D). The vCPU writes
    // BUF1 too: one bit.
    dma(&r, IOVA + 0x30, b"x");
    dma(&r, IOVA2 + 0x30, b"y");
    vcpu_writes(&mut r, &[BUF1]);
    round(&mut log, &r.slots, &[BUF1, BUF2, FS[3]], "second nested round");

    // Round 4: only device writes through cached, already-dirty-cleared translations.
    dma(&r, IOVA + 0x40, b"x");
    dma(&r, IOVA2 + 0x40, b"y");
    round(&mut log, &r.slots, &[BUF1, BUF2], "steady state");

    // Round 5: the guest remaps IOVA to BUF3 and invalidates; the sync forwards it. The vCPU
    // wrote the leaf (FS[3]) and the queue; the vIOMMU wrote the wait status (a VMM write,
    // not logged here). The device then writes BUF3.
    let reports = r.run(Some(&mut pt), &scalable_remap());
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].attached, Attached::Nested(nested));
    dma(&r, IOVA + 0x50, b"z");
    assert_eq!(r.guest_read(BUF3 + 0x50, 1), b"z");
    round(&mut log, &r.slots, &[FS[3], QUEUE, BUF3], "after a remap");

    // Round 6: the device writes, then the passthrough is closed before the read: the
    // stage-2's dirty bits are kept for the read, not lost with it.
    dma(&r, IOVA2, b"before close");
    pt.close().expect("close");
    round(&mut log, &r.slots, &[BUF2], "closed mid-round");
    assert!(r.ctx.hwpt_info(stage2).is_err(), "the stage-2 is destroyed");
    log.stop(&r.slots).expect("stop");
}

// ---- Legacy guest: second-level tables, shadowed on the host. ----

/// A legacy guest behind a migratable passthrough on host unit `host`, shadowed: rounds of
/// vCPU and device writes, exact each time. The dirty log starts before the passthrough's
/// first sync (`log_first`: its HWPTs are tracked as they are allocated, and the shadow
/// registers with the slots), or after the guest enabled translation (the log finds the
/// stage-2 and the registered shadow). Returns the passthrough's mode.
fn shadowed_device_writes_merge_exactly(host: VtdModelConfig, log_first: bool) -> Option<Mode> {
    let mut r = rig(host)?;
    legacy_firmware(&r, &[(IOVA, BUF1), (IOVA2, BUF2)]);
    let mut pt = migratable(&r);
    let mode = pt.mode().clone();
    let mut log = log_first.then(|| DirtyLog::start(&r.slots).expect("start dirty logging"));

    // The guest enables translation: the stage-2 (SRTP, translation still off), then the
    // shadow, each allocated with dirty tracking.
    let reports = r.run(Some(&mut pt), &legacy_enable());
    let mut log = log.take().unwrap_or_else(|| DirtyLog::start(&r.slots).expect("start dirty logging"));
    let shadow = pt.shadow_ioas().expect("shadow IOAS");
    let shadow_hwpt = pt.shadow_hwpt().expect("shadow HWPT");
    assert_eq!(reports.last().map(|x| x.attached), Some(Attached::Shadow(shadow)), "{reports:?}");
    assert_eq!(r.ctx.attached_hwpt(r.device, None).unwrap(), Some(shadow_hwpt));
    let stage2 = pt.stage2_hwpt().expect("stage-2");
    assert_eq!(log.tracked(&r.slots), [stage2, shadow_hwpt]);
    assert_eq!(pt.shadow().map(|s| s.mappings().count()), Some(2));
    round(&mut log, &r.slots, &[], "enabling writes only registers");

    // Round 1: the device writes through both guest IOVAs (shadow IOVA → machine page); the
    // shadow's dirty bits come back as the guest pages BUF1 and BUF2. A device read of BUF1
    // does not count. The vCPU writes V1 and BUF2.
    dma(&r, IOVA + 0x10, b"shadowed-dma-ok!");
    assert_eq!(r.guest_read(BUF1 + 0x10, 16), b"shadowed-dma-ok!");
    dma(&r, IOVA2 + 0xff0, &[7; 16]);
    vcpu_writes(&mut r, &[V1, BUF2]);
    round(&mut log, &r.slots, &[BUF1, BUF2, V1], "shadowed writes");

    // Round 2: a read through the shadow counts for nothing; a write does, again.
    assert_eq!(r.host_dma_read(IOVA + 0x10, 4).expect("DMA read"), b"shad");
    dma(&r, IOVA2, b"again");
    round(&mut log, &r.slots, &[BUF2], "second shadowed round");

    // Round 3: the device writes BUF1 through IOVA; then the guest remaps IOVA to BUF3 and
    // invalidates, and the sync unmaps the old shadow mapping — its dirty bit is read out
    // first and kept. The device then writes BUF3. The vCPU wrote the leaf (SL[3]).
    dma(&r, IOVA + 0x20, b"before the remap");
    let reports = r.run(Some(&mut pt), &legacy_remap(BUF3));
    let stats = reports[0].shadow.expect("shadow synced");
    assert_eq!((reports.len(), stats.mapped, stats.unmapped), (1, 1, 1), "{reports:?}");
    dma(&r, IOVA + 0x20, b"after the remap!");
    assert_eq!(r.guest_read(BUF3 + 0x20, 16), b"after the remap!");
    assert_eq!(r.guest_read(BUF1 + 0x20, 16), b"before the remap");
    round(&mut log, &r.slots, &[BUF1, BUF3, SL[3]], "a remap between reads");

    // Round 4: translation off in the guest: the device goes to the stage-2 and writes
    // guest-physical V2; the shadow (and the bits it holds) stays.
    dma(&r, IOVA2 + 0x40, b"s");
    let mut off_ = regs();
    off_.store(off::GCMD as u32, 0).hlt();
    assert_eq!(r.run(Some(&mut pt), &off_).last().map(|x| x.attached), Some(Attached::Stage2(stage2)));
    dma(&r, V2, b"gpa");
    round(&mut log, &r.slots, &[BUF2, V2], "shadow then stage-2");

    // Round 5: writes through the stage-2 and (back on) the shadow, then the passthrough is
    // closed before the read: both HWPTs' dirty bits are kept, not lost with them.
    dma(&r, V3, b"gpa");
    let mut on = regs();
    on.store(off::GCMD as u32, gcmd::TE).hlt();
    assert_eq!(r.run(Some(&mut pt), &on).last().map(|x| x.attached), Some(Attached::Shadow(shadow)));
    dma(&r, IOVA + 0x60, b"last");
    pt.close().expect("close");
    assert!(r.ctx.areas(shadow).is_err(), "the shadow IOAS is destroyed");
    round(&mut log, &r.slots, &[V3, BUF3], "closed mid-round");
    assert!(log.tracked(&r.slots).is_empty(), "nothing left to track");
    log.stop(&r.slots).expect("stop");
    Some(mode)
}

#[test]
fn shadowed_device_on_a_host_unit_without_nesting() {
    let Some(mode) = shadowed_device_writes_merge_exactly(scalable_without_nesting(), true) else { return };
    let Mode::Shadow(reason) = mode else { panic!("expected shadow mode, got {mode:?}") };
    assert!(reason.contains("ECAP.NEST"), "{reason}");
}

#[test]
fn shadowed_legacy_guest_on_a_nesting_host_unit() {
    // Nested mode, but a legacy guest has no stage-1: shadowed, and tracked the same way.
    let Some(mode) = shadowed_device_writes_merge_exactly(VtdModelConfig::scalable(), false) else { return };
    assert_eq!(mode, Mode::Nested);
}

#[test]
fn refused_dirty_tracking_is_a_typed_error_not_a_downgrade() {
    // QEMU 7.2's legacy unit: legacy mode has no second-stage A/D, so no dirty tracking.
    let Some(r) = rig(VtdModelConfig::legacy()) else { return };
    let e = r.passthrough_with(PassthroughConfig { dirty_tracking: true }).unwrap_err();
    let PassthroughError::NotMigratable { device, reason } = &e else { panic!("{e}") };
    assert_eq!(*device, r.device);
    assert!(reason.contains("dirty tracking needs scalable mode and ECAP.SSADS"), "{e}");
    // Without it, the same device is passed through (shadowed), just not migratable.
    let pt = r.passthrough_with(PassthroughConfig::default()).expect("not migratable");
    assert!(matches!(pt.mode(), Mode::Shadow(_)));
    assert!(!pt.config().dirty_tracking);
}

#[test]
fn a_passthrough_not_made_migratable_makes_the_log_refuse() {
    // Nested: the stage-2 cannot track.
    let Some(r) = rig(VtdModelConfig::scalable()) else { return };
    scalable_firmware(&r);
    let mut pt = r.passthrough_with(PassthroughConfig::default()).expect("passthrough");
    let report = pt.sync(&r.viommu, &r.slots).expect("sync");
    let e = DirtyLog::start(&r.slots).unwrap_err();
    let stage2 = pt.stage2_hwpt().expect("stage-2");
    assert_eq!(report.attached, Attached::Stage2(stage2));
    assert!(matches!(e, DirtyError::Untracked { hwpt, ioas, .. } if hwpt == stage2 && ioas == r.slots.ioas()), "{e}");
    pt.close().expect("close");

    // Shadowed: the shadow IOAS's HWPT cannot track. The guest enables translation before the
    // VMM's first sync, so the device has no stage-2: the shadow is what the log refuses.
    let Some(mut r) = rig(scalable_without_nesting()) else { return };
    legacy_firmware(&r, &[(IOVA, BUF1), (IOVA2, BUF2)]);
    let mut pt = r.passthrough_with(PassthroughConfig::default()).expect("passthrough");
    r.run(None, &legacy_enable());
    let report = pt.sync(&r.viommu, &r.slots).expect("sync");
    let (shadow, hwpt) = (pt.shadow_ioas().expect("shadow"), pt.shadow_hwpt().expect("shadow HWPT"));
    assert_eq!((report.attached, pt.stage2_hwpt()), (Attached::Shadow(shadow), None));
    let e = DirtyLog::start(&r.slots).unwrap_err();
    assert!(matches!(e, DirtyError::Untracked { hwpt: h, ioas, .. } if h == hwpt && ioas == shadow), "{e}");
    // Once the passthrough is closed, nothing untracked is left.
    pt.close().expect("close");
    DirtyLog::start(&r.slots).expect("start").stop(&r.slots).expect("stop");
}

#[test]
fn a_hwpt_arriving_mid_round_makes_every_logging_slot_whole_once() {
    // A HWPT the log did not see arrive (here: an automatic one, made by an attach) has
    // unknown writes before its tracking started: the next read of each logging slot, not only
    // the first slot read, reports it whole; the reads after that are exact.
    let Some(mut rig) = MockRig::with_intent(64 * MB, &[IntentItem::UntaggedDma, IntentItem::DirtyTracking]) else {
        return;
    };
    let (ctx, device) = (rig.ctx.clone(), rig.device);
    ctx.detach(device, None).expect("detach");
    let len = 64 << 10;
    rig.slots.add(0, 0, PhysAddr(4 * MB), len, KVM_MEM_LOG_DIRTY_PAGES).expect("slot 0");
    rig.slots.add(1, MB, PhysAddr(8 * MB), len, KVM_MEM_LOG_DIRTY_PAGES).expect("slot 1");
    let mut log = DirtyLog::start(&rig.slots).expect("start");
    ctx.attach(device, None, Target::Ioas(rig.slots.ioas())).expect("attach");
    rig.dma_write(MB + 0x3000, &[1]).expect("DMA");
    let whole = vec![(1u64 << (len / DIRTY_PAGE_SIZE)) - 1];
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read 0"), whole, "slot 0 whole");
    assert_eq!(log.read_and_clear(&rig.slots, 1).expect("read 1"), whole, "slot 1 whole too");
    rig.dma_write(MB + 0x4000, &[1]).expect("DMA");
    assert_eq!(log.read_and_clear(&rig.slots, 0).expect("read 0"), [0]);
    assert_eq!(log.read_and_clear(&rig.slots, 1).expect("read 1"), [1 << 4]);
}
