//! What the host hands to a plugin: memory for its tables, the unit's registers, a clock, a log.
//!
//! Each unit gets its own [`HostServices`] object, so MMIO offsets are relative to that unit's
//! register window. A plugin never touches memory except through it, which is what lets the
//! same plugin drive a simulated machine, a QEMU guest's RAM, or a real host.

use std::fmt;

use abi_stable::sabi_trait;
use abi_stable::std_types::{RArc, RResult, RSlice, RSliceMut, RStr};
use abi_stable::StableAbi;

use super::error::{ErrorCode, PluginError};
use crate::addr::PhysAddr;

/// Why a host service failed.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq)]
pub struct HostError {
    /// The kind of failure (see the constants).
    pub code: u32,
    /// The address concerned, if any.
    pub addr: u64,
}

impl HostError {
    /// No free page (or an injected allocation failure: the plugin cannot tell them apart).
    pub const NO_MEMORY: u32 = 1;
    /// The physical address is outside RAM.
    pub const BAD_ADDRESS: u32 = 2;
    /// The MMIO offset or width is not a register of this unit.
    pub const BAD_REGISTER: u32 = 3;
    /// The page given to `free_table_page` was not allocated.
    pub const NOT_ALLOCATED: u32 = 4;
    /// The platform is gone (QEMU exited, socket closed).
    pub const PLATFORM: u32 = 5;
    /// A write outside the table pages allocated to the unit (and not yet freed): a plugin
    /// writes only memory it owns.
    pub const NOT_OWNED: u32 = 6;

    /// An error of `code` at `addr`.
    pub const fn new(code: u32, addr: u64) -> Self {
        Self { code, addr }
    }

    /// The error a plugin reports for it while doing `what`: [`ErrorCode::NO_MEMORY`] for an
    /// allocation failure, [`ErrorCode::HOST`] otherwise.
    pub fn to_plugin(self, what: &str) -> PluginError {
        let code = if self.code == Self::NO_MEMORY { ErrorCode::NO_MEMORY } else { ErrorCode::HOST };
        PluginError::new(code, format!("{what}: {self}"))
    }
}

/// A host service's result as a plugin's: the error becomes [`HostError::to_plugin`]`(what)`.
pub fn host_ok<T>(what: &str, r: RResult<T, HostError>) -> Result<T, PluginError> {
    r.into_result().map_err(|e| e.to_plugin(what))
}

impl fmt::Debug for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Self::NO_MEMORY => write!(f, "out of table pages"),
            Self::BAD_ADDRESS => write!(f, "physical address {:#x} is not RAM", self.addr),
            Self::BAD_REGISTER => write!(f, "no register at MMIO offset {:#x}", self.addr),
            Self::NOT_ALLOCATED => write!(f, "page {:#x} was not allocated", self.addr),
            Self::PLATFORM => write!(f, "platform unavailable"),
            Self::NOT_OWNED => write!(f, "{:#x} is not in a table page allocated to this unit", self.addr),
            c => write!(f, "host error {c} at {:#x}", self.addr),
        }
    }
}

impl std::error::Error for HostError {}

/// Log levels, mapped onto `tracing` levels on the host side.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors.
    Error,
    /// Warnings.
    Warn,
    /// Information.
    Info,
    /// Debugging detail.
    Debug,
    /// Very detailed tracing.
    Trace,
}

/// Services a host gives to one unit's backend.
#[sabi_trait]
pub trait HostServices: Send + Sync + Clone {
    /// A zeroed, 4 KiB-aligned 4 KiB page for hardware tables.
    fn alloc_table_page(&self) -> RResult<PhysAddr, HostError>;
    /// Gives back a page from [`HostServices::alloc_table_page`].
    fn free_table_page(&self, page: PhysAddr) -> RResult<(), HostError>;
    /// `count` zeroed, physically contiguous, 4 KiB-aligned pages, for a table larger than a
    /// page (a VT-d PASID directory, an SMMU stream table). One allocation for fail-nth.
    fn alloc_table_pages(&self, count: u32) -> RResult<PhysAddr, HostError>;
    /// Gives back pages from [`HostServices::alloc_table_pages`].
    fn free_table_pages(&self, first: PhysAddr, count: u32) -> RResult<(), HostError>;
    /// Reads `buf.len()` bytes of physical memory at `pa`.
    fn read_phys(&self, pa: PhysAddr, buf: RSliceMut<'_, u8>) -> RResult<(), HostError>;
    /// Writes `data` to physical memory at `pa`.
    fn write_phys(&self, pa: PhysAddr, data: RSlice<'_, u8>) -> RResult<(), HostError>;
    /// Reads an aligned little-endian u64 (a table entry) atomically.
    fn read_u64(&self, pa: PhysAddr) -> RResult<u64, HostError>;
    /// Writes an aligned little-endian u64 (a table entry) atomically, as hardware sees it.
    fn write_u64(&self, pa: PhysAddr, value: u64) -> RResult<(), HostError>;
    /// Atomically clears the bits not in `mask` of the u64 at `pa`; returns the old value
    /// (clearing dirty bits while the unit may set them).
    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> RResult<u64, HostError>;
    /// Reads a register of `width` bytes (4 or 8) at `offset` in the unit's MMIO window.
    fn mmio_read(&self, offset: u64, width: u8) -> RResult<u64, HostError>;
    /// Writes a register of `width` bytes (4 or 8) at `offset` in the unit's MMIO window.
    fn mmio_write(&self, offset: u64, width: u8, value: u64) -> RResult<(), HostError>;
    /// A monotonic clock in nanoseconds, to bound polling loops.
    fn now_ns(&self) -> u64;
    /// Sends a line to the host's log (`tracing`).
    #[sabi(last_prefix_field)]
    fn log(&self, level: LogLevel, message: RStr<'_>);
}

/// The shareable trait object a plugin holds.
pub type HostServicesBox = HostServices_TO<'static, RArc<()>>;
