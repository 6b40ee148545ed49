//! The cases.

use ioasis::abi::Fault;
use ioasis::{Features, Intent, IntentItem, Iova, PhysAddr, Prot, Target, UnmapMode};
use ioasis_baremetal::DmaError;

use crate::rig::{Rig, UNIT_BASE};
use crate::Case;

/// Every case, in run order.
pub(crate) const ALL: &[Case] = &[
    Case { category: "capabilities", name: "widths-and-formats", run: widths_and_formats },
    Case { category: "negotiation", name: "grants-follow-capabilities", run: grants_follow_capabilities },
    Case { category: "map-unmap", name: "random-ranges-by-dma", run: random_ranges_by_dma },
    Case { category: "page-sizes", name: "largest-page-and-split", run: largest_page_and_split },
    Case { category: "invalidation", name: "no-stale-iotlb", run: no_stale_iotlb },
    Case { category: "teardown", name: "no-table-page-left", run: no_table_page_left },
];

/// splitmix64: small, seedable, good enough to pick ranges.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

fn widths_and_formats(r: &Rig, _: u64) -> Result<String, String> {
    let c = r.ctx.unit_caps(r.unit).map_err(e)?;
    if !(32..=64).contains(&c.ias_bits) || !(32..=64).contains(&c.oas_bits) {
        return Err(format!("address widths ias={} oas={} outside 32..=64", c.ias_bits, c.oas_bits));
    }
    if !c.page_sizes.contains(4096) {
        return Err(format!("page sizes {} lack 4 KiB", c.page_sizes));
    }
    if c.paging_format.name().is_none() {
        return Err(format!("paging format {} is not a known format", c.paging_format));
    }
    if c.pasid_bits > 20 || (c.pasid_bits > 0) != c.features.contains(Features::PASID) {
        return Err(format!("PASID width {} disagrees with features {}", c.pasid_bits, c.features));
    }
    if c.nested_formats.is_empty() == c.features.contains(Features::NESTING) {
        return Err(format!("nested formats {:?} disagree with features {}", c.nested_formats, c.features));
    }
    Ok(format!("{}: {} pages, {}-bit IOVA, features {}", c.model, c.page_sizes, c.ias_bits, c.features))
}

fn grants_follow_capabilities(r: &Rig, _: u64) -> Result<String, String> {
    let c = r.ctx.unit_caps(r.unit).map_err(e)?;
    let mut d = ioasis::DeviceDesc::pci("all", ioasis::RequesterId::new(0, 0, 9, 0), "unit0");
    d.pasid_bits = 20;
    d.ats = true;
    d.pri = true;
    let dev = r.ctx.bind_device(d).map_err(e)?;
    let matrix = [
        (IntentItem::PasidIoas, Features::PASID),
        (IntentItem::DirtyTracking, Features::DIRTY_TRACKING),
        (IntentItem::PageFaults, Features::PAGE_FAULTS),
        (IntentItem::Ats, Features::ATS),
        (IntentItem::Coherency, Features::COHERENCY),
        (IntentItem::Identity, Features::IDENTITY),
    ];
    for (item, feature) in matrix {
        let got = r.ctx.negotiate(dev, &Intent::new([item]));
        let has = c.features.contains(feature);
        match (got, has) {
            (Ok(_), true) => {}
            (Err(ioasis::Error::Refused(ref why)), false) if why.unmet.iter().all(|u| !u.reason.is_empty()) => {}
            (Ok(_), false) => return Err(format!("{item} granted although the unit lacks {feature}")),
            (Err(err), _) => return Err(format!("{item}: {err} (unit has {feature}: {has})")),
        }
    }
    Ok("each item granted exactly when the unit reports its feature".into())
}

fn random_ranges_by_dma(r: &Rig, seed: u64) -> Result<String, String> {
    let mut rng = Rng(seed);
    let dev = r.paging_device(1)?;
    let ioas = r.ctx.alloc_ioas();
    r.ctx.attach(dev, None, Target::Ioas(ioas)).map_err(e)?;
    let mut maps = Vec::new();
    let mut next_pa = 0x100_0000u64;
    for i in 0..32u64 {
        let pages = 1 + rng.below(1024);
        let len = pages * 4096;
        let iova = (i << 32) | (rng.below(512) << 21) | ((rng.below(2) * rng.below(512)) << 12);
        let pa = next_pa;
        next_pa += len.next_multiple_of(2 << 20);
        r.ctx.map(ioas, Some(Iova(iova)), PhysAddr(pa), len, Prot::RW).map_err(|x| format!("map {iova:#x}: {x}"))?;
        maps.push((iova, pa, len));
    }
    let dma = |iova: u64, tag: &[u8]| r.machine.dma_write(UNIT_BASE, Rig::rid(1), None, Iova(iova), tag);
    for (iova, pa, len) in &maps {
        let off = rng.below(len / 8) * 8;
        let tag = (iova + off).to_le_bytes();
        dma(iova + off, &tag).map_err(|x| format!("DMA to {:#x}: {x}", iova + off))?;
        let mut got = [0u8; 8];
        r.machine.ram().read(PhysAddr(pa + off), &mut got).map_err(e)?;
        if got != tag {
            return Err(format!("DMA to {:#x} did not land at {:#x}", iova + off, pa + off));
        }
    }
    for (iova, _, len) in maps.iter().step_by(2) {
        r.ctx.unmap(ioas, Iova(*iova), *len, UnmapMode::Exact).map_err(e)?;
        match dma(iova + len - 8, b"unmapped") {
            Err(DmaError::Fault(f)) if f.reason == Fault::NOT_PRESENT => {}
            other => return Err(format!("DMA to unmapped {:#x} gave {other:?}", iova + len - 8)),
        }
    }
    Ok(format!("{} random ranges mapped, checked by DMA, half unmapped", maps.len()))
}

fn largest_page_and_split(r: &Rig, _: u64) -> Result<String, String> {
    let c = r.ctx.unit_caps(r.unit).map_err(e)?;
    let big = c.page_sizes.iter().filter(|s| *s <= 1 << 21).max().unwrap_or(4096);
    let dev = r.paging_device(1)?;
    let ioas = r.ctx.alloc_ioas();
    r.ctx.attach(dev, None, Target::Ioas(ioas)).map_err(e)?;
    let h = r.ctx.attached_hwpt(dev, None).map_err(e)?.ok_or("no HWPT after attach")?;
    r.ctx.map(ioas, Some(Iova(0x4000_0000)), PhysAddr(0x400_0000), 2 * big, Prot::RW).map_err(e)?;
    let t = r.ctx.translate(h, Iova(0x4000_0000)).map_err(e)?.ok_or("no translation")?;
    if t.page_size != big {
        return Err(format!("a {big:#x}-aligned map used {:#x} pages", t.page_size));
    }
    r.ctx.unmap(ioas, Iova(0x4000_1000), 0x1000, UnmapMode::Cut).map_err(e)?;
    for probe in [0x4000_0000u64, 0x4000_2000, 0x4000_0000 + big] {
        r.machine
            .dma_write(UNIT_BASE, Rig::rid(1), None, Iova(probe), b"kept")
            .map_err(|x| format!("{probe:#x}: {x}"))?;
    }
    if r.machine.dma_write(UNIT_BASE, Rig::rid(1), None, Iova(0x4000_1000), b"gone").is_ok() {
        return Err("the cut-out page still translates".into());
    }
    Ok(format!("{:#x} pages used and split around a 4 KiB hole", big))
}

fn no_stale_iotlb(r: &Rig, _: u64) -> Result<String, String> {
    let dev = r.paging_device(1)?;
    let ioas = r.ctx.alloc_ioas();
    r.ctx.attach(dev, None, Target::Ioas(ioas)).map_err(e)?;
    let at = Iova(0x10_0000);
    r.ctx.map(ioas, Some(at), PhysAddr(0x20_0000), 0x1000, Prot::RW).map_err(e)?;
    r.machine.dma_write(UNIT_BASE, Rig::rid(1), None, at, b"warm").map_err(e)?;
    r.ctx.unmap(ioas, at, 0x1000, UnmapMode::Exact).map_err(e)?;
    if r.machine.dma_write(UNIT_BASE, Rig::rid(1), None, at, b"stale").is_ok() {
        return Err("a stale IOTLB entry translated after unmap".into());
    }
    r.ctx.map(ioas, Some(at), PhysAddr(0x30_0000), 0x1000, Prot::RW).map_err(e)?;
    r.machine.dma_write(UNIT_BASE, Rig::rid(1), None, at, b"new!").map_err(e)?;
    let mut got = [0u8; 4];
    r.machine.ram().read(PhysAddr(0x30_0000), &mut got).map_err(e)?;
    if &got != b"new!" {
        return Err("after remap the DMA went to the old page".into());
    }
    Ok("unmap and remap took effect at once".into())
}

fn no_table_page_left(r: &Rig, _: u64) -> Result<String, String> {
    let dev = r.paging_device(1)?;
    let ioas = r.ctx.alloc_ioas();
    r.ctx.attach(dev, None, Target::Ioas(ioas)).map_err(e)?;
    r.ctx.map(ioas, Some(Iova(0)), PhysAddr(0), 5 << 20, Prot::RW).map_err(e)?;
    r.ctx.map(ioas, Some(Iova(1 << 40)), PhysAddr(0), 0x3000, Prot::READ).map_err(e)?;
    r.ctx.teardown().map_err(e)?;
    match r.table_pages() {
        0 => Ok("teardown freed every table page".into()),
        n => Err(format!("{n} table page(s) still allocated after teardown")),
    }
}
