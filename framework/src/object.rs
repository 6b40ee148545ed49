//! Object ids: every object of a context has one, unique across kinds (as iommufd's are).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// The id of any object in a context.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ObjectId(pub u64);

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Hands out a context's object ids: 64-bit, so that they never wrap in a process's life
/// (a 32-bit counter wraps after 2^32 allocations and hands out ids still in use).
#[derive(Debug)]
pub(crate) struct Ids(AtomicU64);

impl Ids {
    /// Ids from `first` on.
    pub(crate) const fn starting_at(first: u64) -> Self {
        Self(AtomicU64::new(first))
    }

    /// The next id.
    pub(crate) fn next(&self) -> ObjectId {
        ObjectId(self.0.fetch_add(1, Ordering::Relaxed))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_past_32_bits_without_repeating() {
        let ids = Ids::starting_at(u64::from(u32::MAX) - 1);
        let got: Vec<u64> = (0..4).map(|_| ids.next().0).collect();
        assert_eq!(got, [0xffff_fffe, 0xffff_ffff, 0x1_0000_0000, 0x1_0000_0001]);
        assert_eq!(ObjectId(0x1_0000_0000).to_string(), "#4294967296");
    }
}
