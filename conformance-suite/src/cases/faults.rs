//! Faults: address, source id, access and reason recorded; page requests answered.

use ioasis::abi::{Fault, PageResponse};
use ioasis::{DeviceRef, Features, IntentItem, Iova, PhysAddr, Prot, Target};

use super::{done, e, skip};
use crate::rig::{any_fault, faulted, rid, Rig};
use crate::Pass;

/// The one fault the unit recorded since the last poll.
fn recorded(r: &Rig) -> Result<Fault, String> {
    r.ctx.poll_faults().map_err(e)?;
    let log = r.ctx.take_fault_log();
    match log.as_slice() {
        [f, ..] => Ok(*f),
        [] => Err("the unit recorded no fault".into()),
    }
}

fn check(f: &Fault, dev: u8, addr: u64, access: Prot, reason: u32) -> Result<(), String> {
    if f.dev != rid(dev) {
        return Err(format!("fault source {}, expected {}", f.dev, rid(dev)));
    }
    // Some units record the exact address, others only its page (a VT-d fault record keeps
    // bits 63:12, VT-d spec 11.4.9.3): both are right.
    if f.addr != Iova(addr) && f.addr != Iova(addr & !0xfff) {
        return Err(format!("fault address {}, expected {addr:#x} (or its page)", f.addr));
    }
    if f.access != access {
        return Err(format!("fault access {}, expected {access}", f.access));
    }
    if f.reason != reason {
        return Err(format!("fault reason {}, expected {}", Fault::reason_name(f.reason), Fault::reason_name(reason)));
    }
    Ok(())
}

pub(crate) fn not_present_recorded(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, _, _) = r.attached(0x0b)?;
    faulted(r.write(0x0b, None, 0x1234_5000, b"x"), Fault::NOT_PRESENT, "DMA to nothing")?;
    check(&recorded(r)?, 0x0b, 0x1234_5000, Prot::WRITE, Fault::NOT_PRESENT)?;
    faulted(r.read(0x0b, None, 0x7700_0ff0, 4), Fault::NOT_PRESENT, "DMA read of nothing")?;
    check(&recorded(r)?, 0x0b, 0x7700_0ff0, Prot::READ, Fault::NOT_PRESENT)?;
    done("source id, address, access and reason recorded")
}

pub(crate) fn permission_recorded(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, _) = r.attached(0x0c)?;
    r.ctx.map(ioas, Some(Iova(0x9000)), PhysAddr(0x9000), 0x1000, Prot::READ).map_err(e)?;
    faulted(r.write(0x0c, None, 0x9010, b"x"), Fault::PERMISSION, "write to read-only")?;
    check(&recorded(r)?, 0x0c, 0x9010, Prot::WRITE, Fault::PERMISSION)?;
    done("permission fault recorded")
}

pub(crate) fn blocked_device(r: &Rig, _: u64) -> Result<Pass, String> {
    let dev = r.device(0x0d, &[IntentItem::UntaggedDma])?;
    let f = any_fault(r.write(0x0d, None, 0x1000, b"x"), "DMA of a bound but unattached device")?;
    if f.dev != rid(0x0d) {
        return Err(format!("fault source {}, expected {}", f.dev, rid(0x0d)));
    }
    let ioas = r.ctx.alloc_ioas();
    r.ctx.attach(dev, None, Target::Ioas(ioas)).map_err(e)?;
    r.ctx.map(ioas, Some(Iova(0x1000)), PhysAddr(0x1000), 0x1000, Prot::RW).map_err(e)?;
    r.lands(0x0d, None, 0x1000, 0x1000, b"ok")?;
    r.ctx.detach(dev, None).map_err(e)?;
    any_fault(r.write(0x0d, None, 0x1000, b"x"), "DMA after detach")?;
    done("unattached and detached devices are blocked")
}

pub(crate) fn page_request_and_response(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::PAGE_FAULTS) {
        return skip("the unit has no page requests");
    }
    let (dev, ioas, _, q) = r.faulting(1)?;
    any_fault(r.read(1, None, 0x8000, 4), "DMA to a page not yet there")?;
    r.ctx.poll_faults().map_err(e)?;
    let events = r.ctx.read_faults(q).map_err(e)?;
    let [ev] = events.as_slice() else {
        return Err(format!("{} events in the fault queue, expected 1", events.len()));
    };
    if !ev.fault.page_request || ev.device != dev || ev.fault.addr != Iova(0x8000) {
        return Err(format!("unexpected event {ev:?}"));
    }
    if ev.fault.pasid.is_some() {
        return Err(format!("the page request of untagged DMA names PASID {:?}", ev.fault.pasid));
    }
    // A read asks for read access only (VT-d 7.5.1.1 RD/WR, PCIe PRI): a handler that maps
    // what was asked for must not be told to make the page writable.
    if ev.fault.access != Prot::READ {
        return Err(format!("the page request of a DMA read asks for {}, expected r-", ev.fault.access));
    }
    r.ctx.map(ioas, Some(Iova(0x8000)), PhysAddr(0x9000), 0x1000, Prot::RW).map_err(e)?;
    let seen = r.page_responses().map_or(0, |s| s.len());
    r.ctx.respond(q, ev.cookie, PageResponse::SUCCESS).map_err(e)?;
    answered(r, rid(1), &ev.fault, seen)?;
    if r.ctx.respond(q, ev.cookie, PageResponse::SUCCESS).is_ok() {
        return Err("a page request was answered twice".into());
    }
    r.read(1, None, 0x8000, 4).map_err(|x| format!("DMA after the response: {x}"))?;
    done("page request queued with its address; answered once")
}

/// Checks that the newest page response the unit saw (when the bench can see them) answers
/// `f` of the device at `source`; returns how many responses the unit has seen.
pub(crate) fn answered(r: &Rig, source: DeviceRef, f: &Fault, seen_before: usize) -> Result<Option<usize>, String> {
    let Some(seen) = r.page_responses() else { return Ok(None) };
    let new = seen.get(seen_before..).unwrap_or_default();
    let [resp] = new else {
        return Err(format!("the unit got {} page responses for one answer: {new:?}", new.len()));
    };
    let want = (source.table_index(), f.pasid.into_option(), f.group);
    if (resp.source, resp.pasid, resp.group) != want {
        return Err(format!(
            "the unit got a page response for device {:#x} PASID {:?} group {:#x}, the request was device {:#x} \
             PASID {:?} group {:#x}",
            resp.source, resp.pasid, resp.group, want.0, want.1, want.2
        ));
    }
    Ok(Some(seen.len()))
}

pub(crate) fn page_requests_out_of_order(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::PAGE_FAULTS) {
        return skip("the unit has no page requests");
    }
    let (dev, ioas, _, q) = r.faulting(1)?;
    // Three pages not there yet: three groups outstanding at once.
    let pages = [0x8000u64, 0x2_0000, 0x40_0000];
    // The group index each request went out with, as the unit tells its device.
    let mut issued = Vec::new();
    for p in pages {
        let f = any_fault(r.read(1, None, p + 0x10, 4), "DMA to a page not yet there")?;
        if !f.page_request {
            return Err(format!("DMA to {p:#x} gave a fault record, not a page request: {f:?}"));
        }
        issued.push(f.group);
    }
    r.ctx.poll_faults().map_err(e)?;
    let events = r.ctx.read_faults(q).map_err(e)?;
    if events.len() != pages.len() {
        return Err(format!("{} events in the fault queue, expected {}: {events:?}", events.len(), pages.len()));
    }
    for ((ev, p), group) in events.iter().zip(pages).zip(&issued) {
        if !ev.fault.page_request || ev.device != dev || ev.fault.addr.0 & !0xfff != p {
            return Err(format!("event {ev:?}, expected a page request of the device at {p:#x}"));
        }
        if ev.fault.group != *group {
            return Err(format!(
                "the page request at {p:#x} went out with group {group:#x}; the driver read group {:#x}",
                ev.fault.group
            ));
        }
    }
    let mut groups: Vec<u32> = events.iter().map(|ev| ev.fault.group).collect();
    groups.sort_unstable();
    groups.dedup();
    if groups.len() != pages.len() {
        return Err(format!("outstanding page requests share group indices: {events:?}"));
    }
    let mut seen = r.page_responses().map_or(0, |s| s.len());
    let mut checked = false;
    let mut answered_pages = Vec::new();
    // Answered out of order: the last first, then the first, then the middle one.
    for i in [2usize, 0, 1] {
        let (ev, page) = (&events[i], pages[i]);
        let pa = 0x50_0000 + (i as u64) * 0x1000;
        r.put(pa + 0x10, &page.to_le_bytes())?;
        r.ctx.map(ioas, Some(Iova(page)), PhysAddr(pa), 0x1000, Prot::RW).map_err(e)?;
        r.ctx.respond(q, ev.cookie, PageResponse::SUCCESS).map_err(e)?;
        if let Some(n) = answered(r, rid(1), &ev.fault, seen)? {
            seen = n;
            checked = true;
        }
        answered_pages.push(page);
        // The answered pages translate; the others still fault.
        for p in pages {
            let got = r.read(1, None, p + 0x10, 8);
            match (answered_pages.contains(&p), got) {
                (true, Ok(b)) if b == p.to_le_bytes() => {}
                (true, other) => return Err(format!("DMA to {p:#x} after its answer gave {other:?}")),
                (false, Err(_)) => {}
                (false, Ok(_)) => return Err(format!("DMA to {p:#x} worked before its request was answered")),
            }
        }
    }
    done(if checked {
        "three groups outstanding, answered out of order; the unit got each answer with its group"
    } else {
        "three groups outstanding, answered out of order (the bench cannot see the unit's responses)"
    })
}
