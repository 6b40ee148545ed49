//! Deliberately broken backends: each variant is a bundled plugin with a `defect` parameter
//! (`--unit-params 'defect = "..."'`), the unit model it runs on (`--unit-model`), and the
//! category of the suite that must catch it. The suite's self-test ([`crate::self_test`]) runs
//! every variant; none may pass.

/// One broken variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Variant {
    /// The plugin it breaks (`mock`, `vtd`).
    pub plugin: &'static str,
    /// The value of its `defect` parameter.
    pub defect: &'static str,
    /// The category whose cases must fail on it.
    pub category: &'static str,
    /// The bug, as a kernel changelog would name it.
    pub bug: &'static str,
    /// The unit model it runs on (TOML text, as `--unit-model` takes it; "" for the default
    /// unit): some bugs show only on a unit that behaves a certain way.
    pub model: &'static str,
}

/// The mock's broken variants (plugins/mock/src/driver/unit.rs, `Defect`).
pub const MOCK: &[Variant] = &[
    Variant {
        plugin: "mock",
        defect: "skip-iotlb-invalidation",
        category: "invalidation",
        bug: "unmap forgets the IOTLB invalidation",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "unmap-off-by-one",
        category: "map-unmap",
        bug: "unmap stops a page short",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "leak-on-error",
        category: "fail-nth",
        bug: "a failed map leaks a table page",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "ignore-read-only",
        category: "permissions",
        bug: "read-only mappings are writable",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "wrong-fault-source",
        category: "faults",
        bug: "faults name the next device",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "misaligned-large-page",
        category: "page-sizes",
        bug: "a large page where only the IOVA is aligned",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "stage2-faults-unflagged",
        category: "viommu",
        bug: "stage-2 faults of nested translation reach the guest",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "no-invalidation-wait",
        category: "invalidation",
        bug: "invalidations are not waited for (INV_DONE never polled)",
        model: "latency = 4",
    },
    Variant {
        plugin: "mock",
        defect: "pasid-table-off-by-one",
        category: "pasid",
        bug: "each PASID table level is indexed with the bits of the level above",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "devtab-devfn-high-bit-dropped",
        category: "requester-ids",
        bug: "device table entries indexed by devfn[6:0]: functions 0x80 and up alias those below",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "page-response-fields-swapped",
        category: "faults",
        bug: "page responses carry the code in the group field",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "fault-pasid-19-bits",
        category: "pasid",
        bug: "fault records' PASIDs read with a 19-bit mask",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "replace-skips-device-invalidation",
        category: "invalidation",
        bug: "replace rewrites the device entry without invalidating the cached one",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "dirty-clear-without-flush",
        category: "dirty",
        bug: "clearing dirty bits does not flush the IOTLB",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "dirty-enable-stale-descriptor",
        category: "dirty",
        bug: "turning dirty tracking on leaves the cached descriptor without DIRTY_EN",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "split-loses-dirty",
        category: "dirty",
        bug: "splitting a large page drops its dirty bit",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "split-loses-write",
        category: "permissions",
        bug: "splitting a large page makes the smaller pages read-only",
        model: "",
    },
    Variant {
        plugin: "mock",
        defect: "last-page-refused",
        category: "map-unmap",
        bug: "the last page of the aperture cannot be mapped",
        model: "",
    },
];

/// The VT-d driver's broken variants (plugins/vtd, `Defect` in its unit parameters), on the
/// scalable-mode model unless `model` says otherwise.
pub const VTD: &[Variant] = &[
    Variant {
        plugin: "vtd",
        defect: "missing-wait-descriptor",
        category: "invalidation",
        bug: "queued invalidation returns without a wait descriptor",
        model: "latency = 3",
    },
    Variant {
        plugin: "vtd",
        defect: "stale-wait-status",
        category: "invalidation",
        bug: "the wait poll sees the previous batch's status",
        model: "latency = 3",
    },
    Variant {
        plugin: "vtd",
        defect: "address-mask-off-by-one",
        category: "map-unmap",
        bug: "page-selective invalidation with AM one too small",
        model: "",
    },
    Variant {
        plugin: "vtd",
        defect: "fault-reason-truncated",
        category: "viommu",
        bug: "fault reason decoded as 4 bits loses scalable-mode reasons",
        model: "",
    },
    Variant {
        plugin: "vtd",
        defect: "page-request-pasid-dropped",
        category: "pasid",
        bug: "page request PASID-present tested at the wrong bit",
        model: "",
    },
    Variant {
        plugin: "vtd",
        defect: "fault-source-swapped",
        category: "faults",
        bug: "fault record source id with bus and devfn swapped",
        model: "",
    },
    Variant {
        plugin: "vtd",
        defect: "split-loses-permissions",
        category: "permissions",
        bug: "a split large page's leaves are read-write",
        model: "",
    },
    Variant {
        plugin: "vtd",
        defect: "dirty-clear-without-flush",
        category: "dirty",
        bug: "dirty bits cleared without an IOTLB flush",
        model: "",
    },
    Variant {
        plugin: "vtd",
        defect: "skip-context-cache-invalidation",
        category: "invalidation",
        bug: "no context-cache invalidation after a context entry change",
        model: "generation = \"legacy\"",
    },
    Variant {
        plugin: "vtd",
        defect: "skip-pasid-cache-invalidation",
        category: "invalidation",
        bug: "no PASID-cache invalidation after a PASID entry change",
        model: "",
    },
    Variant {
        plugin: "vtd",
        defect: "replace-invalidates-new-did",
        category: "invalidation",
        bug: "replace reads the DID to flush after writing the new entry",
        model: "",
    },
    Variant {
        plugin: "vtd",
        defect: "pasid-dir-index-off-by-one",
        category: "pasid",
        bug: "PASID directory indexed by PASID bits 19:7",
        model: "",
    },
    Variant {
        plugin: "vtd",
        defect: "nested-invalidation-parent-did",
        category: "nested",
        bug: "a guest's stage-1 invalidation names the parent's DID",
        model: "",
    },
    Variant {
        plugin: "vtd",
        defect: "aperture-last-page-refused",
        category: "map-unmap",
        bug: "the address-width check refuses the last page",
        model: "",
    },
    Variant {
        plugin: "vtd",
        defect: "upper-context-table-ignored",
        category: "map-unmap",
        bug: "devfn 128-255 share the lower scalable context table",
        model: "",
    },
];

/// Every broken variant, the mock's first.
pub fn all() -> impl Iterator<Item = &'static Variant> {
    MOCK.iter().chain(VTD.iter())
}
