//! # ioasis
//!
//! A device-centric, plugin-based IOMMU framework. A device states its [`Intent`]; the
//! framework negotiates it with the backend of the unit the device sits behind and answers with
//! a [`Contract`] or a [`Refusal`]. Address spaces (IOASes, [`IoasId`]) and hardware page tables (HWPTs)
//! live in a [`Context`], which owns every object by id.
//!
//! Backends are plugins behind a stable ABI ([`abi`]): built in (registered with `inventory`)
//! or loaded from a `cdylib` at run time ([`loader`]).

pub mod abi;
pub mod addr;
pub mod caps;
pub mod format;
pub mod ids;
pub mod intent;
pub mod prot;

pub use addr::{AddressSpace, DeviceRef, Iova, IovaRange, Pasid, PhysAddr, RequesterId, PAGE_SIZE};
pub use caps::{Features, PageSizes, UnitCaps};
pub use format::PtFormat;
pub use intent::{Intent, IntentCode, IntentItem};
pub use prot::Prot;
pub mod context;
pub mod contract;
pub mod device;
pub mod error;
pub mod guest;
pub mod ioas;
pub mod loader;
pub mod object;
pub mod platform;
pub mod plugin;
pub mod pt;
mod services;

pub use context::{AccessOps, Context, HwptSpec, Target, MAX_DIRTY_BITS, MAX_POLL_BATCHES};
pub use contract::{Contract, ContractKind, Refusal};
pub use device::{DeviceAddress, DeviceDesc};
pub use error::{Error, Result};
pub use ioas::{IovaRanges, UnmapMode};
pub use object::{
    AccessId, DeviceId, FaultQueueId, HwQueueId, HwptId, IoasId, ObjectId, UnitId, VdeviceId, VeventQueueId, ViommuId,
};
pub mod config;

/// The README's code examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
