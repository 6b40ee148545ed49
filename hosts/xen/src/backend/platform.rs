//! The framework's [`Platform`] on Xen: there is nothing for ioasis to reach.
//!
//! Xen keeps the IOMMU's tables, registers and queues in its own memory; dom0 sees none of it.
//! Every physical-memory, table-page and MMIO service is refused with
//! [`HostError::BAD_ADDRESS`] (or `BAD_REGISTER`), so a backend that expects hardware access
//! fails clearly instead of touching dom0's memory.

use ioasis::abi::HostError;
use ioasis::platform::{PhysMemory, Platform};
use ioasis::PhysAddr;

/// The platform of a Xen dom0 (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct XenPlatform;

fn refused(pa: PhysAddr) -> HostError {
    HostError { code: HostError::BAD_ADDRESS, addr: pa.raw() }
}

impl PhysMemory for XenPlatform {
    fn read(&self, pa: PhysAddr, _buf: &mut [u8]) -> Result<(), HostError> {
        Err(refused(pa))
    }
    fn write(&self, pa: PhysAddr, _data: &[u8]) -> Result<(), HostError> {
        Err(refused(pa))
    }
    fn read_u64(&self, pa: PhysAddr) -> Result<u64, HostError> {
        Err(refused(pa))
    }
    fn write_u64(&self, pa: PhysAddr, _value: u64) -> Result<(), HostError> {
        Err(refused(pa))
    }
    fn fetch_or_u64(&self, pa: PhysAddr, _bits: u64) -> Result<u64, HostError> {
        Err(refused(pa))
    }
    fn fetch_and_u64(&self, pa: PhysAddr, _mask: u64) -> Result<u64, HostError> {
        Err(refused(pa))
    }
}

impl Platform for XenPlatform {
    fn alloc_table_page(&self) -> Result<PhysAddr, HostError> {
        Err(HostError { code: HostError::NO_MEMORY, addr: 0 })
    }
    fn free_table_page(&self, page: PhysAddr) -> Result<(), HostError> {
        Err(HostError { code: HostError::NOT_ALLOCATED, addr: page.raw() })
    }
    fn alloc_table_pages(&self, _count: u64) -> Result<PhysAddr, HostError> {
        Err(HostError { code: HostError::NO_MEMORY, addr: 0 })
    }
    fn free_table_pages(&self, first: PhysAddr, _count: u64) -> Result<(), HostError> {
        Err(HostError { code: HostError::NOT_ALLOCATED, addr: first.raw() })
    }
    fn table_pages(&self) -> u64 {
        0
    }
    fn mmio_read(&self, base: PhysAddr, _offset: u64, _width: u8) -> Result<u64, HostError> {
        Err(HostError { code: HostError::BAD_REGISTER, addr: base.raw() })
    }
    fn mmio_write(&self, base: PhysAddr, _offset: u64, _width: u8, _value: u64) -> Result<(), HostError> {
        Err(HostError { code: HostError::BAD_REGISTER, addr: base.raw() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_is_refused_and_nothing_is_allocated() {
        let p = XenPlatform;
        assert_eq!(p.read_u64(PhysAddr(0x1000)).unwrap_err().code, HostError::BAD_ADDRESS);
        assert_eq!(p.alloc_table_page().unwrap_err().code, HostError::NO_MEMORY);
        assert_eq!(p.mmio_read(PhysAddr(0xfed9_0000), 0, 4).unwrap_err().code, HostError::BAD_REGISTER);
        assert_eq!(p.table_pages(), 0);
    }
}
