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
];

/// The VT-d driver's broken variants (plugins/vtd, `defect` in its unit parameters).
pub const VTD: &[Variant] = &[];

/// Every broken variant, the mock's first.
pub fn all() -> impl Iterator<Item = &'static Variant> {
    MOCK.iter().chain(VTD.iter())
}
