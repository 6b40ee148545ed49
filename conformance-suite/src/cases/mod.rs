//! The cases, a module per category.

mod capabilities;
mod concurrency;
mod dirty;
mod fail_nth;
mod faults;
mod invalidation;
mod map;
mod negotiation;
mod nested;
mod page_sizes;
mod pasid;
mod permissions;
mod teardown;

use crate::{Case, Pass};

/// Every case, in run order.
pub(crate) const ALL: &[Case] = &[
    Case { category: "capabilities", name: "widths-and-formats", run: capabilities::widths_and_formats },
    Case { category: "capabilities", name: "stable-across-reads", run: capabilities::stable_across_reads },
    Case { category: "negotiation", name: "grants-follow-capabilities", run: negotiation::grants_follow_capabilities },
    Case { category: "negotiation", name: "pasid-width-and-formats", run: negotiation::pasid_width_and_formats },
    Case { category: "negotiation", name: "shared-ioas-enforced", run: negotiation::shared_ioas_enforced },
    Case { category: "map-unmap", name: "random-ranges-by-dma", run: map::random_ranges_by_dma },
    Case { category: "map-unmap", name: "edge-cases-change-nothing", run: map::edge_cases_change_nothing },
    Case { category: "map-unmap", name: "unmap-exact-range", run: map::unmap_exact_range },
    Case { category: "map-unmap", name: "cut-keeps-the-rest", run: map::cut_keeps_the_rest },
    Case { category: "map-unmap", name: "iova-allocation", run: map::iova_allocation },
    Case { category: "map-unmap", name: "copy-between-ioases", run: map::copy_between_ioases },
    Case { category: "permissions", name: "read-only", run: permissions::read_only },
    Case { category: "permissions", name: "write-only", run: permissions::write_only },
    Case { category: "permissions", name: "survive-a-split", run: permissions::survive_a_split },
    Case { category: "page-sizes", name: "largest-page-and-split", run: page_sizes::largest_page_and_split },
    Case { category: "page-sizes", name: "alignment-limits-page-size", run: page_sizes::alignment_limits_page_size },
    Case { category: "page-sizes", name: "gigabyte-page", run: page_sizes::gigabyte_page },
    Case { category: "invalidation", name: "no-stale-iotlb", run: invalidation::no_stale_iotlb },
    Case { category: "invalidation", name: "replace-takes-effect", run: invalidation::replace_takes_effect },
    Case { category: "invalidation", name: "cut-warm-large-page", run: invalidation::cut_warm_large_page },
    Case { category: "faults", name: "not-present-recorded", run: faults::not_present_recorded },
    Case { category: "faults", name: "permission-recorded", run: faults::permission_recorded },
    Case { category: "faults", name: "blocked-device", run: faults::blocked_device },
    Case { category: "faults", name: "page-request-and-response", run: faults::page_request_and_response },
    Case { category: "pasid", name: "pasid-attach", run: pasid::pasid_attach },
    Case { category: "pasid", name: "pasid-fault-carries-pasid", run: pasid::pasid_fault_carries_pasid },
    Case { category: "nested", name: "x86-64-stage1-over-stage2", run: nested::x86_64_stage1_over_stage2 },
    Case { category: "nested", name: "needs-its-grant-and-faults", run: nested::needs_its_grant_and_faults },
    Case { category: "dirty", name: "writes-reported-and-cleared", run: dirty::writes_reported_and_cleared },
    Case { category: "dirty", name: "needs-a-dirty-hwpt", run: dirty::needs_a_dirty_hwpt },
    Case { category: "teardown", name: "no-table-page-left", run: teardown::no_table_page_left },
    Case { category: "teardown", name: "busy-objects-refused", run: teardown::busy_objects_refused },
    Case { category: "fail-nth", name: "map-and-cut", run: fail_nth::map_and_cut },
    Case { category: "fail-nth", name: "attach-and-alloc", run: fail_nth::attach_and_alloc },
    Case { category: "fail-nth", name: "pasid-attach", run: fail_nth::pasid_attach },
    Case { category: "concurrency", name: "threads-map-unmap-and-dma", run: concurrency::threads_map_unmap_and_dma },
    Case { category: "concurrency", name: "parallel-devices", run: concurrency::parallel_devices },
];

/// splitmix64: small, seedable, good enough to pick ranges.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Any displayable error as a case failure.
pub(crate) fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// A skip when the unit lacks something.
pub(crate) fn skip(why: impl Into<String>) -> Result<Pass, String> {
    Ok(Pass::Skip(why.into()))
}

/// A pass.
pub(crate) fn done(what: impl Into<String>) -> Result<Pass, String> {
    Ok(Pass::Done(what.into()))
}
