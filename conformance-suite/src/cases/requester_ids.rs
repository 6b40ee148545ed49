//! Requester ids across the whole id space: buses above 0, device/function numbers at and above
//! 0x80, the last bus and function; each device translates through its own entry and its faults
//! name it.

use ioasis::abi::Fault;
use ioasis::{DeviceRef, HwptSpec, Intent, IntentItem, Iova, PhysAddr, Prot, RequesterId, Target};

use super::{done, e};
use crate::bench::Need;
use crate::rig::{faulted, Rig};
use crate::Pass;

/// Functions whose ids differ only in the bits a table index can get wrong: the high bit of
/// devfn, the bus, both ends of each.
const RIDS: [RequesterId; 8] = [
    RequesterId::new(0, 0, 0x01, 0),
    RequesterId::new(0, 0, 0x0f, 7),
    RequesterId::new(0, 0, 0x10, 0),
    RequesterId::new(0, 0, 0x1f, 7),
    RequesterId::new(0, 1, 0x01, 0),
    RequesterId::new(0, 0x80, 0x10, 1),
    RequesterId::new(0, 0xfe, 0x01, 0),
    RequesterId::new(0, 0xff, 0x1f, 7),
];

pub(crate) fn across_buses_and_functions(r: &Rig, _: u64) -> Result<Pass, String> {
    for rid in RIDS {
        r.need(Need::DmaFrom(rid))?;
    }
    // Each function in its own IOAS, one page at the same IOVA onto its own page.
    let pa = |i: usize| 0x60_0000 + (i as u64) * 0x1000;
    let mut devs = Vec::new();
    let mut spaces = Vec::new();
    for (i, rid) in RIDS.iter().enumerate() {
        let id = r.bind_at(*rid, |_| {})?;
        r.ctx.negotiate(id, &Intent::new([IntentItem::UntaggedDma])).map_err(e)?;
        let ioas = r.ctx.alloc_ioas();
        r.ctx.map(ioas, Some(Iova(0x10_0000)), PhysAddr(pa(i)), 0x1000, Prot::RW).map_err(e)?;
        r.ctx.attach(id, None, Target::Ioas(ioas)).map_err(e)?;
        devs.push(id);
        spaces.push(ioas);
    }
    // Only after every function is attached: an entry one of them overwrote shows now.
    for (i, rid) in RIDS.iter().enumerate() {
        r.lands_at(*rid, None, 0x10_0010, pa(i) + 0x10, format!("{rid}").as_bytes())?;
    }
    r.ctx.poll_faults().map_err(e)?;
    r.ctx.take_fault_log();
    for rid in RIDS {
        let f = faulted(r.write_at(rid, None, 0x20_0000, b"x"), Fault::NOT_PRESENT, &format!("{rid}: DMA to nothing"))?;
        if f.dev != DeviceRef::Rid(rid) {
            return Err(format!("a fault of {rid} names {}", f.dev));
        }
        r.ctx.poll_faults().map_err(e)?;
        match r.ctx.take_fault_log().as_slice() {
            [f] if f.dev == DeviceRef::Rid(rid) => {}
            other => return Err(format!("a fault of {rid} was recorded as {other:?}")),
        }
    }
    // Detaching one leaves its neighbours in the table alone.
    r.ctx.detach(devs[2], None).map_err(e)?;
    if r.write_at(RIDS[2], None, 0x10_0010, b"x").is_ok() {
        return Err(format!("{} still translates after its detach", RIDS[2]));
    }
    for (i, rid) in RIDS.iter().enumerate().filter(|(i, _)| *i != 2) {
        r.lands_at(*rid, None, 0x10_0018, pa(i) + 0x18, b"still")?;
    }
    // Blocking one, then translating it again, leaves its neighbours alone too (devfn 0x80
    // sits right after 0x7f in a legacy context table).
    r.ctx.attach(devs[2], None, Target::Ioas(spaces[2])).map_err(e)?;
    if let Ok(blocking) = r.ctx.alloc_hwpt(r.unit, HwptSpec::Blocking) {
        r.ctx.replace(devs[2], None, Target::Hwpt(blocking)).map_err(e)?;
        if r.write_at(RIDS[2], None, 0x10_0010, b"x").is_ok() {
            return Err(format!("{} translates through a blocking HWPT", RIDS[2]));
        }
        for (i, rid) in RIDS.iter().enumerate().filter(|(i, _)| *i != 2) {
            r.lands_at(*rid, None, 0x10_0020, pa(i) + 0x20, b"blocked beside")?;
        }
        r.ctx.replace(devs[2], None, Target::Ioas(spaces[2])).map_err(e)?;
    }
    for (i, rid) in RIDS.iter().enumerate() {
        r.lands_at(*rid, None, 0x10_0028, pa(i) + 0x28, b"again")?;
    }
    done(format!("{} functions on buses 0 to 0xff, devfn 0x08 to 0xff: own entries, own faults", RIDS.len()))
}
