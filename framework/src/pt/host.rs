//! Table memory through a unit's host services: the [`Memory`] every backend's walker uses.
//!
//! A driver's access object implements `AsRef<HostServicesBox>` and is then a [`Memory`]:
//! entries are read and written as single u64s, dirty bits cleared atomically, whole tables
//! read in one call, and table pages allocated and freed through the host.

use abi_stable::std_types::RResult;

use super::Memory;
use crate::abi::{host_ok, ErrorCode, HostServicesBox, LogLevel, PluginError};
use crate::addr::PhysAddr;

/// Where a table page may lie: 4 KiB aligned, below 2^52 (the widest table pointer of the
/// formats the walker serves).
pub const TABLE_ADDR: u64 = 0x000f_ffff_ffff_f000;

impl<T: AsRef<HostServicesBox> + ?Sized> Memory for T {
    fn rd(&self, pa: u64) -> Result<u64, PluginError> {
        host_ok("read table entry", self.as_ref().read_u64(PhysAddr(pa)))
    }

    fn wr(&self, pa: u64, v: u64) -> Result<(), PluginError> {
        host_ok("write table entry", self.as_ref().write_u64(PhysAddr(pa), v))
    }

    fn and(&self, pa: u64, mask: u64) -> Result<u64, PluginError> {
        host_ok("update table entry", self.as_ref().fetch_and_u64(PhysAddr(pa), mask))
    }

    fn read_table(&self, table: u64, buf: &mut [u8; 4096]) -> Result<(), PluginError> {
        host_ok("read table", self.as_ref().read_phys(PhysAddr(table), buf.as_mut_slice().into()))
    }

    fn alloc(&self) -> Result<u64, PluginError> {
        let pa = host_ok("allocate table page", self.as_ref().alloc_table_page())?.0;
        if pa & !TABLE_ADDR != 0 {
            return Err(PluginError::new(ErrorCode::HOST, format!("host gave unusable page {pa:#x}")));
        }
        Ok(pa)
    }

    /// A failure here is a host bug: it is logged, not propagated.
    fn free(&self, table: u64) {
        if let RResult::RErr(e) = self.as_ref().free_table_page(PhysAddr(table)) {
            self.as_ref().log(LogLevel::Error, format!("freeing table page {table:#x}: {e}").as_str().into());
        }
    }
}
