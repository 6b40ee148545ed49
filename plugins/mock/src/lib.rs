//! The mock backend: a software IOMMU unit with every capability, specified in `SPEC.md`.
//!
//! It is the reference for vendors: the driver half (`driver`) programs the unit only through
//! [`ioasis::abi::HostServices`] — registers, device table, PASID tables, HWPT descriptors, a
//! four-level page table, range invalidations and a fault queue — and the model half
//! ([`model::MockModel`]) reads those structures back as hardware would.

pub mod format;
pub mod model;
