//! iommufd's semantics through the backend: a replace to the current target changes nothing,
//! outstanding page requests are answered when their device goes, the IOAS's IOVA alignment is
//! its HWPTs' smallest page, unknown flag bits are refused before the backend is asked, and
//! inverted or overlapping allowed ranges are refused.

use ioasis::abi::{HwptFlags, PageResponse};
use ioasis::{Error, Features, HwptSpec, Iova, IovaRange, PhysAddr, Prot, Target};

use super::{done, e, skip};
use crate::rig::{any_fault, Rig};
use crate::Pass;

pub(crate) fn replace_to_the_current_target(r: &Rig, _: u64) -> Result<Pass, String> {
    let (dev, ioas, hwpt) = r.attached(1)?;
    r.ctx.map(ioas, Some(Iova(0x10_0000)), PhysAddr(0x40_0000), 0x1000, Prot::RW).map_err(e)?;
    r.ctx.replace(dev, None, Target::Hwpt(hwpt)).map_err(e)?;
    r.ctx.replace(dev, None, Target::Ioas(ioas)).map_err(e)?;
    if r.ctx.attached_hwpt(dev, None).map_err(e)? != Some(hwpt) {
        return Err("a replace to the current IOAS moved the device to another HWPT".into());
    }
    if r.ctx.destroy(hwpt).is_ok() {
        return Err("after a replace to the same HWPT, the HWPT could be destroyed under the device".into());
    }
    r.lands(1, None, 0x10_0010, 0x40_0010, b"still")?;
    done("a replace to the current HWPT or IOAS is a no-op; the device stays a user")
}

pub(crate) fn outstanding_page_requests_answered(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.features.contains(Features::PAGE_FAULTS) {
        return skip("the unit has no page requests");
    }
    let (dev, _, h, q) = r.faulting(1)?;
    any_fault(r.read(1, None, 0x8000, 4), "DMA to a page not yet there")?;
    r.ctx.poll_faults().map_err(e)?;
    let events = r.ctx.read_faults(q).map_err(e)?;
    let [ev] = events.as_slice() else {
        return Err(format!("{} events in the fault queue, expected 1", events.len()));
    };
    r.ctx.detach(dev, None).map_err(e)?;
    match r.ctx.respond(q, ev.cookie, PageResponse::SUCCESS) {
        Err(Error::NoSuchPageRequest { .. }) => {}
        other => return Err(format!("a response after the device was detached gave {other:?}")),
    }
    // The unit still answers page requests after the framework's own response.
    r.ctx.attach(dev, None, Target::Hwpt(h)).map_err(e)?;
    any_fault(r.read(1, None, 0x9000, 4), "DMA to another missing page")?;
    r.ctx.poll_faults().map_err(e)?;
    let again = r.ctx.read_faults(q).map_err(e)?;
    if again.len() != 1 {
        return Err(format!("{} page requests after a re-attach, expected 1", again.len()));
    }
    r.ctx.respond(q, again[0].cookie, PageResponse::INVALID).map_err(e)?;
    done("a detach answers the device's outstanding request; a later response is refused")
}

pub(crate) fn iova_alignment_and_unknown_bits(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, hwpt) = r.attached(1)?;
    let min = r.ctx.hwpt_info(hwpt).map_err(e)?.page_sizes.min().ok_or("the HWPT maps with no page size")?;
    let ranges = r.ctx.iova_ranges(ioas).map_err(e)?;
    if ranges.alignment != min.max(4096) {
        return Err(format!("IOVA alignment {:#x}, but the HWPT's smallest page is {min:#x}", ranges.alignment));
    }
    let pages = r.table_pages();
    let bad = HwptFlags(1 << 31);
    match r.ctx.alloc_hwpt(r.unit, HwptSpec::Paging { ioas, flags: bad, fault_queue: None }) {
        Err(Error::UnknownBits { .. }) => {}
        other => return Err(format!("a HWPT with unknown flag bits gave {other:?}")),
    }
    match r.ctx.map(ioas, Some(Iova(0)), PhysAddr(0), 0x1000, Prot(8)) {
        Err(Error::UnknownBits { .. }) => {}
        other => return Err(format!("a map with unknown permission bits gave {other:?}")),
    }
    if r.table_pages() != pages {
        return Err("a refused request allocated table pages".into());
    }
    let inverted = IovaRange { start: Iova(0x20_0000), last: Iova(0x1f_ffff) };
    match r.ctx.set_allowed(ioas, Some(vec![inverted])) {
        Err(Error::InvertedRange { .. }) => {}
        other => return Err(format!("an inverted allowed range gave {other:?}")),
    }
    let (a, b) = (IovaRange::inclusive(0, 0x2f_ffff), IovaRange::inclusive(0x20_0000, 0x3f_ffff));
    let (Some(a), Some(b)) = (a, b) else { return Err("ranges".into()) };
    match r.ctx.set_allowed(ioas, Some(vec![a, b])) {
        Err(Error::OverlappingRanges { .. }) => {}
        other => return Err(format!("overlapping allowed ranges gave {other:?}")),
    }
    done(format!("IOVA alignment {:#x}; unknown bits refused before the backend", ranges.alignment))
}
