//! PASID attach: one PASID of a device to its own IOAS.

use ioasis::abi::{Fault, HwptFlags, PageResponse};
use ioasis::{Features, HwptSpec, IntentItem, Iova, Pasid, PhysAddr, Prot, Target};

use super::{done, e, skip};
use crate::bench::Need;
use crate::rig::{any_fault, faulted, rid, Rig};
use crate::Pass;

pub(crate) fn pasid_attach(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::PASID) {
        return skip("the unit has no PASID support");
    }
    let top = (1u32 << r.caps.pasid_bits.min(20)) - 1;
    let dev = r.device(1, &[IntentItem::UntaggedDma, IntentItem::PasidIoas])?;
    let untagged = r.ctx.alloc_ioas();
    let tagged = r.ctx.alloc_ioas();
    r.ctx.map(untagged, Some(Iova(0x1000)), PhysAddr(0x10_0000), 0x1000, Prot::RW).map_err(e)?;
    r.ctx.map(tagged, Some(Iova(0x1000)), PhysAddr(0x20_0000), 0x1000, Prot::RW).map_err(e)?;
    r.ctx.attach(dev, None, Target::Ioas(untagged)).map_err(e)?;
    let pasids = [1, 4, 5, top];
    for p in pasids {
        r.ctx.attach(dev, Some(Pasid(p)), Target::Ioas(tagged)).map_err(e)?;
        r.lands(1, Some(p), 0x1008, 0x20_0008, &p.to_le_bytes())?;
    }
    // Attaching the later ones kept the earlier ones (they share PASID tables).
    for p in pasids {
        r.lands(1, Some(p), 0x1010, 0x20_0010, &p.to_le_bytes())?;
    }
    r.lands(1, None, 0x1008, 0x10_0008, b"untagged")?;
    any_fault(r.write(1, Some(6), 0x1008, b"x"), "a PASID that is not attached")?;
    r.ctx.detach(dev, Some(Pasid(5))).map_err(e)?;
    any_fault(r.write(1, Some(5), 0x1008, b"x"), "a detached PASID")?;
    // Its neighbours are untouched.
    r.lands(1, Some(4), 0x1010, 0x20_0010, b"next")?;
    r.lands(1, Some(top), 0x1010, 0x20_0010, b"still")?;
    r.lands(1, None, 0x1008, 0x10_0008, b"untagged")?;
    done(format!("PASIDs 1, 4, 5 and {top:#x} translate through their own IOAS, and a detach touches only its own"))
}

pub(crate) fn pasid_fault_carries_pasid(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::PASID) {
        return skip("the unit has no PASID support");
    }
    // Without PRI: its faults are records, never page requests.
    let dev = r.bind(2, |d| d.pasid_bits = 20)?;
    r.ctx.negotiate(dev, &ioasis::Intent::new([IntentItem::PasidIoas])).map_err(e)?;
    let ioas = r.ctx.alloc_ioas();
    r.ctx.attach(dev, Some(Pasid(9)), Target::Ioas(ioas)).map_err(e)?;
    let f = faulted(r.write(2, Some(9), 0x5000, b"x"), Fault::NOT_PRESENT, "DMA with PASID 9 to nothing")?;
    if f.pasid.into_option() != Some(Pasid(9)) || f.dev != rid(2) {
        return Err(format!("fault names {} PASID {:?}, expected {} PASID 9", f.dev, f.pasid, rid(2)));
    }
    // A PASID with nothing attached is the PASID's fault, not a missing page.
    let f = faulted(r.write(2, Some(10), 0x5000, b"x"), Fault::BAD_PASID, "DMA with PASID 10, never attached")?;
    if f.pasid.into_option() != Some(Pasid(10)) {
        return Err(format!("the fault of PASID 10 names PASID {:?}", f.pasid));
    }
    // Untagged DMA of a device attached only at a PASID has no attachment: blocked, and no
    // PASID's fault.
    let f = faulted(r.write(2, None, 0x5000, b"x"), Fault::BLOCKED, "untagged DMA, attached only at PASID 9")?;
    if f.pasid.is_some() {
        return Err(format!("the fault of untagged DMA names PASID {:?}", f.pasid));
    }
    r.ctx.poll_faults().map_err(e)?;
    let log = r.ctx.take_fault_log();
    let got: Vec<_> = log.iter().map(|f| (f.pasid.into_option(), f.reason)).collect();
    if got != [(Some(Pasid(9)), Fault::NOT_PRESENT), (Some(Pasid(10)), Fault::BAD_PASID), (None, Fault::BLOCKED)] {
        return Err(format!(
            "recorded faults {log:?}: expected PASID 9 not-present, PASID 10 bad-pasid, then untagged blocked"
        ));
    }
    done("the PASID and why are recorded with the fault; an unattached PASID is bad-pasid, untagged DMA blocked")
}

/// The widest PASID (2^width - 1), and one of alternating bits below it, in a fault record and
/// in a page request and its response: a field decoded too narrow, shifted or unmasked shows
/// in one of the two.
pub(crate) fn widest_pasid_in_faults_and_page_requests(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::PASID) {
        return skip("the unit has no PASID support");
    }
    r.need(Need::PasidDma)?;
    let top = (1u32 << r.caps.pasid_bits.min(20)) - 1;
    let mut pasids = vec![top];
    if 0x5_5555 & top > 0 && 0x5_5555 & top != top {
        pasids.push(0x5_5555 & top);
    }
    let pri = r.caps.features.contains(Features::PAGE_FAULTS);
    let items: &[IntentItem] =
        if pri { &[IntentItem::PasidIoas, IntentItem::PageFaults] } else { &[IntentItem::PasidIoas] };
    let dev = r.device(2, items)?;
    let ioas = r.ctx.alloc_ioas();
    r.ctx.map(ioas, Some(Iova(0x1000)), PhysAddr(0x30_0000), 0x1000, Prot::READ).map_err(e)?;
    for &p in &pasids {
        r.ctx.attach(dev, Some(Pasid(p)), Target::Ioas(ioas)).map_err(e)?;
    }
    r.ctx.poll_faults().map_err(e)?;
    r.ctx.take_fault_log();
    for &p in &pasids {
        for (what, iova) in [("DMA to nothing", 0x5000u64), ("a write to a read-only page", 0x1008)] {
            let f = any_fault(r.write(2, Some(p), iova, b"x"), &format!("{what} with PASID {p:#x}"))?;
            if f.pasid.into_option() != Some(Pasid(p)) || f.dev != rid(2) {
                return Err(format!(
                    "{what}: the fault names {} PASID {:?}, expected {} PASID {p:#x}",
                    f.dev,
                    f.pasid,
                    rid(2)
                ));
            }
            r.ctx.poll_faults().map_err(e)?;
            let log = r.ctx.take_fault_log();
            match log.as_slice() {
                [f] if f.pasid.into_option() == Some(Pasid(p)) && f.dev == rid(2) => {}
                other => {
                    return Err(format!("{what}: the unit recorded {other:?}, expected one fault with PASID {p:#x}"))
                }
            }
        }
    }
    let names = pasids.iter().map(|p| format!("{p:#x}")).collect::<Vec<_>>().join(" and ");
    if !pri {
        return done(format!("PASIDs {names} recorded with their faults (the unit has no page requests)"));
    }
    // The same PASIDs through a HWPT that turns faults into page requests.
    let q = r.ctx.alloc_fault_queue();
    let spec = HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: Some(q) };
    let h = r.ctx.alloc_hwpt(r.unit, spec).map_err(e)?;
    for (i, &p) in pasids.iter().enumerate() {
        let (iova, pa) = (0x6000 + 0x1000 * i as u64, 0x31_0000 + 0x1000 * i as u64);
        r.ctx.replace(dev, Some(Pasid(p)), Target::Hwpt(h)).map_err(e)?;
        any_fault(r.read(2, Some(p), iova, 4), &format!("DMA with PASID {p:#x} to a page not yet there"))?;
        r.ctx.poll_faults().map_err(e)?;
        let events = r.ctx.read_faults(q).map_err(e)?;
        let [ev] = events.as_slice() else {
            return Err(format!("{} events in the fault queue, expected 1: {events:?}", events.len()));
        };
        if !ev.fault.page_request || ev.fault.pasid.into_option() != Some(Pasid(p)) || ev.device != dev {
            return Err(format!("the page request of PASID {p:#x} arrived as {ev:?}"));
        }
        r.ctx.map(ioas, Some(Iova(iova)), PhysAddr(pa), 0x1000, Prot::RW).map_err(e)?;
        let seen = r.page_responses().map_or(0, |s| s.len());
        r.ctx.respond(q, ev.cookie, PageResponse::SUCCESS).map_err(e)?;
        super::faults::answered(r, rid(2), &ev.fault, seen)?;
        r.lands(2, Some(p), iova + 8, pa + 8, b"answered")?;
    }
    done(format!("PASIDs {names} in fault records, page requests and their responses"))
}
