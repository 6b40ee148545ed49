//! The cases, a module per category.

mod access;
mod capabilities;
mod concurrency;
mod dirty;
mod fail_nth;
mod faults;
mod identity;
mod invalidation;
mod map;
mod negotiation;
mod nested;
mod page_sizes;
mod pasid;
mod permissions;
mod requester_ids;
mod semantics;
mod teardown;
mod viommu;

use crate::{Case, Pass};

/// Every case, in run order.
pub(crate) const ALL: &[Case] = &[
    Case::new("capabilities", "widths-and-formats", capabilities::widths_and_formats),
    Case::new("capabilities", "stable-across-reads", capabilities::stable_across_reads),
    Case::new("negotiation", "grants-follow-capabilities", negotiation::grants_follow_capabilities),
    Case::new("negotiation", "pasid-width-and-formats", negotiation::pasid_width_and_formats),
    Case::new("negotiation", "shared-ioas-enforced", negotiation::shared_ioas_enforced),
    Case::new("map-unmap", "random-ranges-by-dma", map::random_ranges_by_dma),
    Case::new("map-unmap", "edge-cases-change-nothing", map::edge_cases_change_nothing),
    Case::new("map-unmap", "unmap-exact-range", map::unmap_exact_range),
    Case::new("map-unmap", "cut-keeps-the-rest", map::cut_keeps_the_rest),
    Case::new("map-unmap", "iova-allocation", map::iova_allocation),
    Case::new("map-unmap", "copy-between-ioases", map::copy_between_ioases).dma_from(2),
    Case::new("map-unmap", "aperture-and-level-ends", map::aperture_and_level_ends),
    Case::new("map-unmap", "aperture-ends", map::aperture_ends),
    Case::new("map-unmap", "high-devfn-translates", map::high_devfn_translates).dma_from(0x11),
    Case::new("permissions", "read-only", permissions::read_only),
    Case::new("permissions", "write-only", permissions::write_only),
    Case::new("permissions", "survive-a-split", permissions::survive_a_split),
    Case::new("page-sizes", "largest-page-and-split", page_sizes::largest_page_and_split),
    Case::new("page-sizes", "alignment-limits-page-size", page_sizes::alignment_limits_page_size),
    Case::new("page-sizes", "gigabyte-page", page_sizes::gigabyte_page),
    Case::new("invalidation", "no-stale-iotlb", invalidation::no_stale_iotlb),
    Case::new("invalidation", "replace-takes-effect", invalidation::replace_takes_effect),
    Case::new("invalidation", "cut-warm-large-page", invalidation::cut_warm_large_page),
    Case::new("faults", "not-present-recorded", faults::not_present_recorded).dma_from(0x0b),
    Case::new("faults", "permission-recorded", faults::permission_recorded).dma_from(0x0c),
    Case::new("faults", "blocked-device", faults::blocked_device).dma_from(0x0d),
    Case::new("identity", "untranslated-dma", identity::untranslated_dma),
    Case::new("identity", "blocking-hwpt", identity::blocking_hwpt),
    Case::new("identity", "leaving-identity", identity::leaving_identity),
    Case::new("faults", "page-request-and-response", faults::page_request_and_response),
    Case::new("faults", "page-requests-out-of-order", faults::page_requests_out_of_order),
    Case::new("requester-ids", "across-buses-and-functions", requester_ids::across_buses_and_functions),
    Case::new("pasid", "pasid-attach", pasid::pasid_attach),
    Case::new("pasid", "pasid-fault-carries-pasid", pasid::pasid_fault_carries_pasid).dma_from(2),
    Case::new("pasid", "widest-pasid-in-faults-and-page-requests", pasid::widest_pasid_in_faults_and_page_requests)
        .dma_from(2),
    Case::new("nested", "x86-64-stage1-over-stage2", nested::x86_64_stage1_over_stage2),
    Case::new("nested", "stage1-page-sizes", nested::stage1_page_sizes),
    Case::new("nested", "needs-its-grant-and-faults", nested::needs_its_grant_and_faults).dma_from(3),
    Case::new("nested", "pasid-nested-with-dirty-parent", nested::pasid_nested_with_dirty_parent),
    Case::new("semantics", "replace-to-the-current-target", semantics::replace_to_the_current_target),
    Case::new("semantics", "outstanding-page-requests-answered", semantics::outstanding_page_requests_answered),
    Case::new("semantics", "iova-alignment-and-unknown-bits", semantics::iova_alignment_and_unknown_bits),
    Case::new("access", "pins-hold-the-translation", access::pins_hold_the_translation),
    Case::new("viommu", "objects-and-teardown", viommu::objects_and_teardown),
    Case::new("viommu", "nested-faults-reach-the-event-queue", viommu::nested_faults_reach_the_event_queue).dma_from(4),
    Case::new("dirty", "writes-reported-and-cleared", dirty::writes_reported_and_cleared),
    Case::new("dirty", "needs-a-dirty-hwpt", dirty::needs_a_dirty_hwpt),
    Case::new("dirty", "split-keeps-dirty-bits", dirty::split_keeps_dirty_bits),
    Case::new("dirty", "through-a-nested-hwpt", dirty::through_a_nested_hwpt),
    Case::new("teardown", "no-table-page-left", teardown::no_table_page_left),
    Case::new("teardown", "busy-objects-refused", teardown::busy_objects_refused),
    Case::new("fail-nth", "map-and-cut", fail_nth::map_and_cut),
    Case::new("fail-nth", "attach-and-alloc", fail_nth::attach_and_alloc),
    Case::new("fail-nth", "pasid-attach", fail_nth::pasid_attach),
    Case::new("fail-nth", "viommu-and-nested", fail_nth::viommu_and_nested),
    Case::new("concurrency", "threads-map-unmap-and-dma", concurrency::threads_map_unmap_and_dma),
    Case::new("concurrency", "parallel-devices", concurrency::parallel_devices),
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
