//! The framework's [`HostServices`] object: a [`Platform`] seen through one unit's window.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult, RSlice, RSliceMut, RStr};

use crate::abi::{HostError, HostServices, HostServicesBox, HostServices_TO, LogLevel};
use crate::addr::PhysAddr;
use crate::platform::{FailNth, Platform};

/// A unit's view of the platform.
#[derive(Clone)]
pub(crate) struct UnitServices {
    platform: Arc<dyn Platform>,
    mmio_base: PhysAddr,
    unit: Arc<str>,
    fail: Arc<FailNth>,
}

impl UnitServices {
    /// The trait object handed to the plugin.
    pub(crate) fn boxed(
        platform: Arc<dyn Platform>,
        mmio_base: PhysAddr,
        unit: &str,
        fail: Arc<FailNth>,
    ) -> HostServicesBox {
        let s = UnitServices { platform, mmio_base, unit: Arc::from(unit), fail };
        HostServices_TO::from_ptr(RArc::new(s), TD_Opaque)
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl HostServices for UnitServices {
    fn alloc_table_page(&self) -> RResult<PhysAddr, HostError> {
        if self.fail.should_fail() {
            tracing::debug!(unit = %self.unit, "injected table-page allocation failure");
            return RResult::RErr(HostError::new(HostError::NO_MEMORY, 0));
        }
        self.platform.alloc_table_page().into()
    }

    fn free_table_page(&self, page: PhysAddr) -> RResult<(), HostError> {
        self.platform.free_table_page(page).into()
    }

    fn alloc_table_pages(&self, count: u32) -> RResult<PhysAddr, HostError> {
        if self.fail.should_fail() {
            tracing::debug!(unit = %self.unit, count, "injected table-pages allocation failure");
            return RResult::RErr(HostError::new(HostError::NO_MEMORY, 0));
        }
        self.platform.alloc_table_pages(u64::from(count)).into()
    }

    fn free_table_pages(&self, first: PhysAddr, count: u32) -> RResult<(), HostError> {
        self.platform.free_table_pages(first, u64::from(count)).into()
    }

    fn read_phys(&self, pa: PhysAddr, mut buf: RSliceMut<'_, u8>) -> RResult<(), HostError> {
        self.platform.read(pa, buf.as_mut_slice()).into()
    }

    fn write_phys(&self, pa: PhysAddr, data: RSlice<'_, u8>) -> RResult<(), HostError> {
        self.platform.write(pa, data.as_slice()).into()
    }

    fn read_u64(&self, pa: PhysAddr) -> RResult<u64, HostError> {
        self.platform.read_u64(pa).into()
    }

    fn write_u64(&self, pa: PhysAddr, value: u64) -> RResult<(), HostError> {
        self.platform.write_u64(pa, value).into()
    }

    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> RResult<u64, HostError> {
        self.platform.fetch_and_u64(pa, mask).into()
    }

    fn mmio_read(&self, offset: u64, width: u8) -> RResult<u64, HostError> {
        self.platform.mmio_read(self.mmio_base, offset, width).into()
    }

    fn mmio_write(&self, offset: u64, width: u8, value: u64) -> RResult<(), HostError> {
        self.platform.mmio_write(self.mmio_base, offset, width, value).into()
    }

    fn now_ns(&self) -> u64 {
        epoch().elapsed().as_nanos() as u64
    }

    fn log(&self, level: LogLevel, message: RStr<'_>) {
        let unit = &*self.unit;
        let msg = message.as_str();
        match level {
            LogLevel::Error => tracing::error!(target: "ioasis::plugin", unit, "{msg}"),
            LogLevel::Warn => tracing::warn!(target: "ioasis::plugin", unit, "{msg}"),
            LogLevel::Info => tracing::info!(target: "ioasis::plugin", unit, "{msg}"),
            LogLevel::Debug => tracing::debug!(target: "ioasis::plugin", unit, "{msg}"),
            LogLevel::Trace => tracing::trace!(target: "ioasis::plugin", unit, "{msg}"),
        }
    }
}
