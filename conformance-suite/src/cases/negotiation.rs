//! The negotiation matrix: every intent item against the unit's capabilities, and the
//! shared-IOAS constraint.

use ioasis::abi::HwptFlags;
use ioasis::{Error, Features, HwptSpec, Intent, IntentItem, PtFormat, Target};

use super::{done, e, skip};
use crate::rig::Rig;
use crate::Pass;

pub(crate) fn grants_follow_capabilities(r: &Rig, _: u64) -> Result<Pass, String> {
    let c = &r.caps;
    let dev = r.bind(9, |d| {
        d.pasid_bits = 20;
        d.ats = true;
        d.pri = true;
    })?;
    let matrix = [
        (IntentItem::UntaggedDma, None),
        (IntentItem::PasidIoas, Some(Features::PASID)),
        (IntentItem::DirtyTracking, Some(Features::DIRTY_TRACKING)),
        (IntentItem::PageFaults, Some(Features::PAGE_FAULTS)),
        (IntentItem::Ats, Some(Features::ATS)),
        (IntentItem::Coherency, Some(Features::COHERENCY)),
        (IntentItem::Identity, Some(Features::IDENTITY)),
        (IntentItem::Enqcmd, Some(Features::ENQCMD.with(Features::PASID))),
    ];
    let mut checked = 0;
    for (item, needs) in matrix {
        let has = needs.is_none_or(|f| c.features.contains(f));
        match (r.ctx.negotiate(dev, &Intent::new([item])), has) {
            (Ok(_), true) => {}
            (Err(Error::Refused(why)), false) => {
                if why.unmet.len() != 1 || why.unmet[0].reason.trim().is_empty() {
                    return Err(format!("{item}: refusal without one clear reason: {why}"));
                }
            }
            (Ok(_), false) => {
                return Err(format!("{item} granted although the unit lacks {}", needs.unwrap_or_default()))
            }
            (Err(err), true) => return Err(format!("{item} refused although the unit reports it: {err}")),
            (Err(err), false) => return Err(format!("{item}: {err}")),
        }
        checked += 1;
    }
    // What the device lacks is refused whatever the unit has: ATS, page requests (PRI), PASIDs.
    let plain = r.bind(10, |d| {
        d.pasid_bits = 0;
        d.ats = false;
        d.pri = false;
    })?;
    for item in [IntentItem::Ats, IntentItem::PageFaults, IntentItem::PasidDma { width: 8 }] {
        match r.ctx.negotiate(plain, &Intent::new([item])) {
            Err(Error::Refused(why)) if why.unmet.len() == 1 => {}
            other => return Err(format!("{item} for a device without the capability: {other:?}")),
        }
    }
    // The options of a HWPT follow the capabilities as the intent items do.
    let ioas = r.ctx.alloc_ioas();
    for (flag, needs, what) in [
        (HwptFlags::DIRTY_TRACKING, Features::DIRTY_TRACKING, "dirty tracking"),
        (HwptFlags::COHERENCY, Features::COHERENCY, "enforced coherency"),
    ] {
        let has = c.features.contains(needs);
        match (r.ctx.alloc_hwpt(r.unit, HwptSpec::Paging { ioas, flags: flag, fault_queue: None }), has) {
            (Ok(h), true) => r.ctx.destroy(h).map_err(e)?,
            (Err(_), false) => {}
            (Ok(_), false) => return Err(format!("a HWPT with {what} allocated on a unit without it")),
            (Err(err), true) => return Err(format!("a HWPT with {what} refused on a unit with it: {err}")),
        }
    }
    r.ctx.destroy(ioas).map_err(e)?;
    // Everything at once (but identity, which excludes a page table): granted only if every
    // item is; the refusal lists each missing one.
    let together = || matrix.iter().filter(|(i, _)| *i != IntentItem::Identity);
    let all: Vec<IntentItem> = together().map(|(i, _)| *i).collect();
    let missing = together().filter(|(_, n)| n.is_some_and(|f| !c.features.contains(f))).count();
    match r.ctx.negotiate(dev, &Intent::new(all)) {
        Ok(_) if missing == 0 => {}
        Err(Error::Refused(why)) if why.unmet.len() == missing => {}
        other => return Err(format!("all items together: expected {missing} unmet item(s), got {other:?}")),
    }
    done(format!("{checked} items granted exactly when the unit reports them"))
}

pub(crate) fn pasid_width_and_formats(r: &Rig, _: u64) -> Result<Pass, String> {
    let c = &r.caps;
    let dev = r.bind(9, |d| d.pasid_bits = 20)?;
    let mut notes = Vec::new();
    if c.pasid_bits > 0 {
        let ok = r.ctx.negotiate(dev, &Intent::new([IntentItem::PasidDma { width: c.pasid_bits }])).map_err(e)?;
        let want = 1..=((1u32 << c.pasid_bits) - 1);
        if ok.pasids != Some(want.clone()) {
            return Err(format!("PASID range {:?}, expected {want:?}", ok.pasids));
        }
        // A device that asks for fewer bits gets them: PASIDs below its width.
        let narrow = c.pasid_bits.min(5);
        let ok = r.ctx.negotiate(dev, &Intent::new([IntentItem::PasidDma { width: narrow }])).map_err(e)?;
        if ok.pasids != Some(1..=((1u32 << narrow) - 1)) {
            return Err(format!("{narrow}-bit PASIDs asked: granted range {:?}", ok.pasids));
        }
        if c.pasid_bits < 20
            && r.ctx.negotiate(dev, &Intent::new([IntentItem::PasidDma { width: c.pasid_bits + 1 }])).is_ok()
        {
            return Err(format!("{}-bit PASIDs granted on a {}-bit unit", c.pasid_bits + 1, c.pasid_bits));
        }
        notes.push(format!("{}-bit PASIDs", c.pasid_bits));
    }
    for f in [PtFormat::X86_64, PtFormat::ARM_LPAE_S1, PtFormat::AMD_V2, PtFormat::MOCK] {
        let want = c.nested_formats.contains(&f);
        let got = r.ctx.negotiate(dev, &Intent::new([IntentItem::NestedStage1 { format: f }]));
        match (got, want) {
            (Ok(k), true) if k.stage1 == Some(f) => notes.push(format!("nests {f}")),
            (Err(Error::Refused(_)), false) => {}
            (got, _) => return Err(format!("nested {f}: unit lists {:?}, negotiation gave {got:?}", c.nested_formats)),
        }
    }
    if notes.is_empty() {
        return skip("the unit has neither PASIDs nor nesting");
    }
    done(notes.join(", "))
}

pub(crate) fn shared_ioas_enforced(r: &Rig, _: u64) -> Result<Pass, String> {
    let mk = |f: u8| -> Result<_, String> {
        let id = r.bind(0x10 + f, |d| d.no_acs_below = Some("0000:00:1c.0".into()))?;
        let c = r.ctx.negotiate(id, &Intent::new([IntentItem::UntaggedDma])).map_err(e)?;
        Ok((id, c))
    };
    let (a, _) = mk(0)?;
    let (b, cb) = mk(1)?;
    let shared = cb.shared_ioas.ok_or("the contract does not state the shared-IOAS constraint")?;
    if shared.peers.iter().all(|(p, _)| *p != a) {
        return Err(format!("peers {:?} do not list the other function", shared.peers));
    }
    let one = r.ctx.alloc_ioas();
    let two = r.ctx.alloc_ioas();
    r.ctx.attach(a, None, Target::Ioas(one)).map_err(e)?;
    match r.ctx.attach(b, None, Target::Ioas(two)) {
        Err(Error::MustShareIoas { .. }) => {}
        other => return Err(format!("attaching the peer to another IOAS gave {other:?}")),
    }
    r.ctx.attach(b, None, Target::Ioas(one)).map_err(e)?;
    done("peers without ACS share one IOAS; splitting them is refused")
}
