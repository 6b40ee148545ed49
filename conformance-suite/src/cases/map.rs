//! Map and unmap semantics, checked by DMA.

use ioasis::abi::Fault;
use ioasis::{Error, Iova, PhysAddr, Prot, UnmapMode};

use super::{done, e, Rng};
use crate::rig::{faulted, Rig};
use crate::Pass;

pub(crate) fn random_ranges_by_dma(r: &Rig, seed: u64) -> Result<Pass, String> {
    let mut rng = Rng(seed);
    let (_, ioas, _) = r.attached(1)?;
    let top = 1u64 << r.caps.ias_bits.min(48);
    let mut maps = Vec::new();
    let mut next_pa = 0x100_0000u64;
    // (Fewer on a slow platform; each in the slot it has in the full run.)
    for i in 0..r.sizes().random_ranges.min(32) {
        let len = (1 + rng.below(1024)) * 4096;
        // Each range in its own 4 GiB slot (or a smaller one on narrow units).
        let slot = (top / 32).max(1 << 24);
        let iova = i * slot + (rng.below((slot - len) / 4096)) * 4096;
        let pa = next_pa + rng.below(2) * 4096;
        next_pa += (len + 4096).next_multiple_of(2 << 20);
        r.ctx.map(ioas, Some(Iova(iova)), PhysAddr(pa), len, Prot::RW).map_err(|x| format!("map {iova:#x}: {x}"))?;
        maps.push((iova, pa, len));
    }
    for (iova, pa, len) in &maps {
        for off in [0, rng.below(len / 8) * 8, len - 8] {
            r.lands(1, None, iova + off, pa + off, &(iova + off).to_le_bytes())?;
        }
    }
    for (iova, _, len) in maps.iter().step_by(2) {
        r.ctx.unmap(ioas, Iova(*iova), *len, UnmapMode::Exact).map_err(e)?;
        for off in [0, len - 8] {
            faulted(r.write(1, None, iova + off, b"unmapped"), Fault::NOT_PRESENT, "DMA to an unmapped range")?;
        }
    }
    for (iova, pa, len) in maps.iter().skip(1).step_by(2) {
        r.lands(1, None, iova + len - 8, pa + len - 8, b"kept-map")?;
    }
    done(format!("{} random ranges mapped and checked by DMA at both ends; half unmapped", maps.len()))
}

pub(crate) fn edge_cases_change_nothing(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, _) = r.attached(1)?;
    r.ctx.map(ioas, Some(Iova(0x10_0000)), PhysAddr(0x10_0000), 0x10_0000, Prot::RW).map_err(e)?;
    let pages = r.table_pages();
    let areas = r.ctx.areas(ioas).map_err(e)?;
    let beyond = if r.caps.ias_bits >= 64 { !0xfff_u64 } else { 1u64 << r.caps.ias_bits };
    let cases: [(&str, Result<Iova, Error>); 7] = [
        ("overlap", r.ctx.map(ioas, Some(Iova(0x18_0000)), PhysAddr(0), 0x10_0000, Prot::RW)),
        ("unaligned IOVA", r.ctx.map(ioas, Some(Iova(0x40_0800)), PhysAddr(0), 0x1000, Prot::RW)),
        ("unaligned PA", r.ctx.map(ioas, Some(Iova(0x40_0000)), PhysAddr(0x800), 0x1000, Prot::RW)),
        ("zero length", r.ctx.map(ioas, Some(Iova(0x40_0000)), PhysAddr(0), 0, Prot::RW)),
        ("no permission", r.ctx.map(ioas, Some(Iova(0x40_0000)), PhysAddr(0), 0x1000, Prot::NONE)),
        ("beyond the aperture", r.ctx.map(ioas, Some(Iova(beyond)), PhysAddr(0), 0x1000, Prot::RW)),
        ("64-bit overflow", r.ctx.map(ioas, Some(Iova(!0xfff_u64)), PhysAddr(0), 0x2000, Prot::RW)),
    ];
    for (what, got) in cases {
        if got.is_ok() {
            return Err(format!("{what}: map succeeded"));
        }
        if r.table_pages() != pages || r.ctx.areas(ioas).map_err(e)? != areas {
            return Err(format!("{what}: the refused map changed the tables or the areas"));
        }
    }
    r.lands(1, None, 0x10_0000, 0x10_0000, b"intact")?;
    match r.ctx.unmap(ioas, Iova(0x80_0000), 0x1000, UnmapMode::Cut) {
        Err(Error::NotMapped { .. }) => {}
        other => return Err(format!("unmap of nothing gave {other:?}")),
    }
    done("7 bad maps refused with nothing changed")
}

pub(crate) fn unmap_exact_range(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, _) = r.attached(1)?;
    let base = 0x100_0000u64;
    for (i, len) in [0x1000u64, 0x3000, 0x20_0000, 0x20_3000].iter().enumerate() {
        let iova = base + (i as u64) * 0x100_0000;
        let pa = 0x200_0000 + (i as u64) * 0x100_0000;
        r.ctx.map(ioas, Some(Iova(iova)), PhysAddr(pa), *len, Prot::RW).map_err(e)?;
        r.ctx.map(ioas, Some(Iova(iova + len)), PhysAddr(pa + len), 0x1000, Prot::RW).map_err(e)?;
        let gone = r.ctx.unmap(ioas, Iova(iova), *len, UnmapMode::Exact).map_err(e)?;
        if gone != *len {
            return Err(format!("unmap of {len:#x} bytes reported {gone:#x}"));
        }
        for off in [0, len - 0x1000, len - 8] {
            faulted(
                r.write(1, None, iova + off, b"x"),
                Fault::NOT_PRESENT,
                &format!("{len:#x} range, offset {off:#x}"),
            )?;
        }
        r.lands(1, None, iova + len, pa + len, b"neighbour")?;
    }
    done("first, last and only pages of 4K..2M+12K ranges unmapped exactly; neighbours kept")
}

pub(crate) fn cut_keeps_the_rest(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, _) = r.attached(1)?;
    r.ctx.map(ioas, Some(Iova(0x4000_0000)), PhysAddr(0x400_0000), 0x40_0000, Prot::RW).map_err(e)?;
    if !matches!(r.ctx.unmap(ioas, Iova(0x4000_3000), 0x2000, UnmapMode::Exact), Err(Error::CutsArea { .. })) {
        return Err("an exact unmap that cuts an area was not refused".into());
    }
    r.ctx.unmap(ioas, Iova(0x4000_3000), 0x2000, UnmapMode::Cut).map_err(e)?;
    for off in [0x3000u64, 0x4000] {
        faulted(r.write(1, None, 0x4000_0000 + off, b"x"), Fault::NOT_PRESENT, "cut-out page")?;
    }
    for off in [0u64, 0x2ff8, 0x5000, 0x1f_f000, 0x20_0000, 0x3f_fff8] {
        r.lands(1, None, 0x4000_0000 + off, 0x400_0000 + off, b"kept")?;
    }
    let areas = r.ctx.areas(ioas).map_err(e)?.len();
    if areas != 2 {
        return Err(format!("the cut left {areas} areas, expected 2"));
    }
    done("a cut leaves both sides mapped")
}

pub(crate) fn iova_allocation(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, h) = r.attached(1)?;
    let mut got: Vec<(u64, u64, u64)> = Vec::new();
    for (i, (pa, len)) in [(0x20_0000u64, 0x20_0000u64), (0x1000, 0x3000), (0x40_0000, 0x40_0000), (0x9000, 0x1000)]
        .into_iter()
        .enumerate()
    {
        let at = r.ctx.map(ioas, None, PhysAddr(pa), len, Prot::RW).map_err(e)?.0;
        let align = (1u64 << pa.trailing_zeros().min(30)).min(1 << (63 - len.leading_zeros()));
        if at % align != 0 {
            return Err(format!("allocation {i} at {at:#x} is not {align:#x}-aligned"));
        }
        if got.iter().any(|(a, l, _)| at < a + l && *a < at + len) {
            return Err(format!("allocation {i} at {at:#x} overlaps an earlier one"));
        }
        got.push((at, len, pa));
    }
    for (at, len, pa) in &got {
        r.lands(1, None, at + len - 8, pa + len - 8, b"alloc'd!")?;
    }
    let big = r.ctx.translate(h, Iova(got[0].0)).map_err(e)?.ok_or("no translation")?;
    if r.caps.page_sizes.contains(2 << 20) && big.page_size != 2 << 20 {
        return Err("an allocated IOVA for a 2 MiB-aligned buffer did not get a 2 MiB page".into());
    }
    done("allocated IOVAs are aligned for large pages and never overlap")
}

pub(crate) fn copy_between_ioases(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, src, _) = r.attached(1)?;
    let (_, dst, _) = r.attached(2)?;
    r.ctx.map(src, Some(Iova(0x10_0000)), PhysAddr(0x60_0000), 0x20_0000, Prot::RW).map_err(e)?;
    r.ctx.map(src, Some(Iova(0x30_0000)), PhysAddr(0x90_0000), 0x1000, Prot::READ).map_err(e)?;
    let at = r.ctx.copy(src, Iova(0x10_0000), 0x20_1000, dst, None).map_err(e)?.0;
    r.lands(2, None, at + 0x10, 0x60_0010, b"copied")?;
    faulted(r.write(2, None, at + 0x20_0000, b"x"), Fault::PERMISSION, "write to a copied read-only page")?;
    let before = r.ctx.areas(dst).map_err(e)?;
    if r.ctx.copy(src, Iova(0x10_0000), 0x40_0000, dst, None).is_ok() {
        return Err("copying a range with a hole succeeded".into());
    }
    if r.ctx.areas(dst).map_err(e)? != before {
        return Err("a refused copy changed the destination".into());
    }
    done("copies keep pages and permissions; a copy with a hole is refused")
}

/// The first and last page of the aperture, the last entry of each table level, and DMA across
/// the 2 MiB, 1 GiB and 512 GiB boundaries.
pub(crate) fn aperture_and_level_ends(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, h) = r.attached(1)?;
    let last = r.ctx.hwpt_info(h).map_err(e)?.aperture.last.0;
    let ias_last = if r.caps.ias_bits >= 64 { u64::MAX } else { (1u64 << r.caps.ias_bits) - 1 };
    if last != ias_last {
        return Err(format!(
            "the HWPT's aperture ends at {last:#x}, the unit's {}-bit IAS at {ias_last:#x}",
            r.caps.ias_bits
        ));
    }
    let mut pa = 0x70_0000u64;
    let mut checked = Vec::new();
    // One page each: the first and the last of the aperture, and the IOVA whose index is the
    // last entry (511) of each level below the top.
    let mut pages = vec![0u64, last & !0xfff];
    pages.extend((0..4u32).map(|level| 0x1ffu64 << (12 + 9 * level)).filter(|&iova| iova < last));
    for iova in pages {
        r.ctx.map(ioas, Some(Iova(iova)), PhysAddr(pa), 0x1000, Prot::RW).map_err(|x| format!("map {iova:#x}: {x}"))?;
        r.lands(1, None, iova, pa, &iova.to_le_bytes())?;
        r.lands(1, None, iova + 0xff8, pa + 0xff8, b"lastword")?;
        checked.push(iova);
        pa += 0x1000;
    }
    // Two pages across a boundary of each level (the third: away from the pages above), one
    // DMA across it.
    for level in 1..4u32 {
        let boundary = 3u64 << (12 + 9 * level);
        if boundary + 0xfff > last {
            break;
        }
        r.ctx
            .map(ioas, Some(Iova(boundary - 0x1000)), PhysAddr(pa), 0x2000, Prot::RW)
            .map_err(|x| format!("map across {boundary:#x}: {x}"))?;
        r.lands(1, None, boundary - 8, pa + 0xff8, b"across a boundary")?;
        checked.push(boundary);
        pa += 0x2000;
    }
    // Beyond the aperture nothing can be mapped.
    if last < u64::MAX && r.ctx.map(ioas, Some(Iova(last + 1)), PhysAddr(pa), 0x1000, Prot::RW).is_ok() {
        return Err(format!("a page beyond the aperture ({:#x}) was mapped", last + 1));
    }
    done(format!("pages at {checked:#x?} translate, up to the aperture's last byte {last:#x}"))
}

pub(crate) fn aperture_ends(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, h) = r.attached(1)?;
    let aperture = r.ctx.hwpt_info(h).map_err(e)?.aperture;
    let (first, last) = (aperture.start.0.next_multiple_of(0x1000), aperture.last.0 & !0xfff);
    for (iova, pa) in [(first, 0x30_0000u64), (last, 0x30_1000)] {
        r.ctx.map(ioas, Some(Iova(iova)), PhysAddr(pa), 0x1000, Prot::RW).map_err(|x| format!("map {iova:#x}: {x}"))?;
        r.lands(1, None, iova + 0xff8, pa + 0xff8, b"the end!")?;
    }
    done(format!("the first and the last page of the aperture ({first:#x}, {last:#x}) map and translate"))
}

/// Device 00:11.0 is devfn 0x88: in VT-d scalable mode it is in the upper context table
/// (devfn 128-255) of its bus, device 00:01.0 (devfn 0x08) in the lower one at the same slot.
pub(crate) fn high_devfn_translates(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, low, _) = r.attached(0x01)?;
    let (_, high, _) = r.attached(0x11)?;
    r.ctx.map(low, Some(Iova(0x10_0000)), PhysAddr(0x50_0000), 0x1000, Prot::RW).map_err(e)?;
    r.ctx.map(high, Some(Iova(0x10_0000)), PhysAddr(0x58_0000), 0x1000, Prot::RW).map_err(e)?;
    r.lands(0x11, None, 0x10_0010, 0x58_0010, b"devfn 0x88")?;
    done("devfn 0x88 translates through its own IOAS next to devfn 0x08")
}
