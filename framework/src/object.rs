//! Object ids: every object of a context has one, unique across kinds (as iommufd's are).

use std::fmt;

/// The id of any object in a context.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ObjectId(pub u32);

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
        pub struct $name(pub ObjectId);

        impl From<$name> for ObjectId {
            fn from(id: $name) -> ObjectId {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

typed_id!(
    /// A unit (one IOMMU instance) probed by a backend.
    UnitId
);
typed_id!(
    /// A device bound by the host adapter.
    DeviceId
);
typed_id!(
    /// An I/O address space.
    IoasId
);
typed_id!(
    /// A hardware page table.
    HwptId
);
typed_id!(
    /// A fault queue.
    FaultQueueId
);
typed_id!(
    /// A vIOMMU: one unit's slice for one VM.
    ViommuId
);
typed_id!(
    /// A vDEVICE: a device's virtual id in a vIOMMU.
    VdeviceId
);
typed_id!(
    /// A virtual event queue of a vIOMMU.
    VeventQueueId
);
typed_id!(
    /// A hardware-accelerated guest queue of a vIOMMU.
    HwQueueId
);
typed_id!(
    /// An access object: a software consumer of an IOAS (an emulated or mediated device).
    AccessId
);
