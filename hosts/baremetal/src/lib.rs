//! # ioasis-baremetal
//!
//! A simulated machine for the ioasis framework: sparse RAM ([`Ram`]), a pool of table pages at
//! the top of it ([`TablePool`]), and IOMMU units given as hardware models
//! ([`ioasis::platform::UnitModel`]) with their register windows. [`Machine`] implements
//! [`ioasis::platform::Platform`] for the framework and lets tests play devices doing DMA
//! through a unit ([`Machine::dma_write`], [`Machine::dma_read`]), or many devices at once
//! ([`dma`]). A platform is described in TOML ([`description`]) and scenarios run steps on it
//! ([`scenario`]).
//!
//! Physical address 0 is the first byte of RAM; RAM is `[0, ram_bytes)`.

mod machine;
mod pool;
mod ram;

pub mod description;
pub mod dma;
pub mod guest;
pub mod qemu;
pub mod scenario;

pub use description::{build, Built, BuiltDevice, BuiltUnit, PlatformDesc, Resolved};
pub use dma::{run_parallel, AtcStats, DmaDevice, DmaJob, DmaOp};
pub use guest::BareMetalHost;
pub use machine::{DmaError, Machine, MachineConfig, MachineError};
pub use pool::TablePool;
pub use ram::{Ram, RamError, MAX_RAM_BYTES};
