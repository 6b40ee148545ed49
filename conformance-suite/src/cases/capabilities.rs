//! Capability reporting: what the backend reads from the unit is coherent.

use ioasis::{Features, PtFormat};

use super::{done, e};
use crate::rig::Rig;
use crate::Pass;

pub(crate) fn widths_and_formats(r: &Rig, _: u64) -> Result<Pass, String> {
    let c = &r.caps;
    if !(32..=64).contains(&c.ias_bits) || !(32..=64).contains(&c.oas_bits) {
        return Err(format!("address widths ias={} oas={} outside 32..=64", c.ias_bits, c.oas_bits));
    }
    if !c.page_sizes.contains(4096) {
        return Err(format!("page sizes {} lack 4 KiB", c.page_sizes));
    }
    if c.page_sizes.iter().any(|s| s > 1 << c.ias_bits.min(63)) {
        return Err(format!("page sizes {} exceed the {}-bit input space", c.page_sizes, c.ias_bits));
    }
    // A vendor's own format is in the vendor range (`vendor-<vendor>:<n>`): no name here.
    if c.paging_format == PtFormat::NONE || (c.paging_format.name().is_none() && !c.paging_format.is_vendor()) {
        return Err(format!("paging format {} is neither a known format nor a vendor's", c.paging_format));
    }
    if c.pasid_bits > 20 || (c.pasid_bits > 0) != c.features.contains(Features::PASID) {
        return Err(format!("PASID width {} disagrees with features {}", c.pasid_bits, c.features));
    }
    if c.nested_formats.is_empty() == c.features.contains(Features::NESTING) {
        return Err(format!("nested formats {:?} disagree with features {}", c.nested_formats, c.features));
    }
    done(format!("{}: {} pages, {}-bit IOVA, features {}", c.model, c.page_sizes, c.ias_bits, c.features))
}

pub(crate) fn stable_across_reads(r: &Rig, _: u64) -> Result<Pass, String> {
    let again = r.ctx.unit_caps(r.unit).map_err(e)?;
    if again != r.caps {
        return Err(format!("capabilities changed between reads: {:?} then {again:?}", r.caps));
    }
    done("the same capabilities on every read")
}
