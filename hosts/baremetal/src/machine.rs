//! The simulated machine: RAM, a table-page pool, IOMMU units, and devices doing DMA.
//!
//! RAM and MMIO are separate address spaces here: RAM is `[0, ram_bytes)` and is reached through
//! [`PhysMemory`]; a unit's register window is reached only through [`Platform::mmio_read`] and
//! [`Platform::mmio_write`] with the window's base, so a window may sit at any address (even one
//! that is also a RAM address).

use std::sync::{Arc, RwLock};

use ioasis::abi::{Fault, HostError};
use ioasis::platform::{DmaRequest, DmaTarget, PhysMemory, Platform, UnitModel};
use ioasis::{DeviceRef, Iova, Pasid, PhysAddr, Prot, PAGE_SIZE};

use crate::pool::TablePool;
use crate::ram::{Ram, RamError};

/// Sizes of a [`Machine`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    /// Bytes of RAM (a non-zero multiple of 4 KiB, at most 64 GiB).
    pub ram_bytes: u64,
    /// Bytes at the top of RAM reserved for hardware table pages (a multiple of 4 KiB, at most
    /// `ram_bytes`). The rest of RAM, from address 0, is for DMA buffers.
    pub table_pool_bytes: u64,
}

impl Default for MachineConfig {
    /// 1 GiB of RAM, the top 64 MiB of it for tables.
    fn default() -> Self {
        Self { ram_bytes: 1 << 30, table_pool_bytes: 64 << 20 }
    }
}

/// Why a machine could not be built or a unit added.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// RAM could not be created.
    #[error(transparent)]
    Ram(#[from] RamError),
    /// The table pool is not a multiple of 4 KiB or larger than RAM.
    #[error("table pool of {pool:#x} bytes does not fit {ram:#x} bytes of RAM in 4 KiB pages")]
    BadPool {
        /// Requested pool size.
        pool: u64,
        /// RAM size.
        ram: u64,
    },
    /// The register window is empty or wraps around the address space.
    #[error("register window at {base} of {len:#x} bytes is invalid")]
    BadWindow {
        /// Window base.
        base: PhysAddr,
        /// Window length.
        len: u64,
    },
    /// The register window overlaps the window of a unit already added.
    #[error("register window at {base} of {len:#x} bytes overlaps RAM (0x0..{ram:#x})")]
    OverRam { base: PhysAddr, len: u64, ram: u64 },
    #[error("register window at {base} of {len:#x} bytes overlaps the unit at {other}")]
    Overlap {
        /// Window base.
        base: PhysAddr,
        /// Window length.
        len: u64,
        /// Base of the unit it overlaps.
        other: PhysAddr,
    },
}

/// Why a DMA did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// No unit has a register window at this base.
    #[error("no IOMMU unit at {0}")]
    NoUnit(PhysAddr),
    /// The unit refused the access (and recorded the fault as its spec says).
    #[error("DMA fault at {} ({}) for {}", .0.addr, Fault::reason_name(.0.reason), .0.dev)]
    Fault(Fault),
    /// The unit translated to an address that is not RAM (a master abort on real hardware).
    #[error("DMA reached an address outside RAM: {0}")]
    Memory(#[source] HostError),
    /// The access runs past the end of the 64-bit IOVA space.
    #[error("DMA of {len:#x} bytes at {iova} wraps around the IOVA space")]
    Wraps {
        /// Start of the access.
        iova: Iova,
        /// Length of the access.
        len: usize,
    },
    /// The unit returned a translation with no bytes left in the page (a model bug).
    #[error("the unit translated {0} to an empty page")]
    EmptyTranslation(Iova),
}

struct UnitSlot {
    base: PhysAddr,
    len: u64,
    model: Arc<dyn UnitModel>,
}

/// A simulated machine: RAM, a pool of table pages at the top of it, and IOMMU units (hardware
/// models) with their register windows. `Send + Sync`; share it as `Arc<Machine>`, which
/// coerces to `Arc<dyn Platform>`.
pub struct Machine {
    ram: Ram,
    pool: TablePool,
    units: RwLock<Vec<UnitSlot>>,
    /// DMA in flight holds it shared, from its first translation to its last byte; a
    /// register access holds it exclusively. So when a driver sees an invalidation complete
    /// (by a register access, or by the status the unit writes during one), no walk or access
    /// that began before it is still going on: the guarantee real units give (VT-d drains
    /// reads and writes at invalidation completion; SMMUv3 CMD_SYNC; AMD-Vi COMPLETION_WAIT)
    /// and on which a driver relies when it frees table pages after an invalidation.
    drain: RwLock<()>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let units: Vec<(PhysAddr, u64)> = self.units_read().iter().map(|u| (u.base, u.len)).collect();
        f.debug_struct("Machine").field("ram", &self.ram).field("pool", &self.pool).field("units", &units).finish()
    }
}

impl Machine {
    /// Builds a machine with `config.ram_bytes` of RAM, the top `config.table_pool_bytes` of it
    /// being the table-page pool, and no units.
    ///
    /// RAM is a private anonymous mapping ([`Ram::new`]); see [`Machine::new_memfd`] for RAM
    /// another process can map.
    pub fn new(config: MachineConfig) -> Result<Self, MachineError> {
        Self::build(config, Ram::new)
    }

    /// Like [`Machine::new`], with RAM backed by a memfd mapped shared ([`Ram::new_memfd`]), so
    /// a VMM can hand guest memory to another process ([`Ram::memfd`]). Still sparse.
    pub fn new_memfd(config: MachineConfig) -> Result<Self, MachineError> {
        Self::build(config, Ram::new_memfd)
    }

    fn build(config: MachineConfig, ram: fn(u64) -> Result<Ram, RamError>) -> Result<Self, MachineError> {
        let MachineConfig { ram_bytes, table_pool_bytes } = config;
        if table_pool_bytes % PAGE_SIZE != 0 || table_pool_bytes > ram_bytes {
            return Err(MachineError::BadPool { pool: table_pool_bytes, ram: ram_bytes });
        }
        let ram = ram(ram_bytes)?;
        let pool = TablePool::new(PhysAddr(ram_bytes - table_pool_bytes), table_pool_bytes / PAGE_SIZE);
        tracing::info!(ram_bytes, table_pool_bytes, memfd = ram.memfd().is_some(), "simulated machine created");
        Ok(Self { ram, pool, units: RwLock::new(Vec::new()), drain: RwLock::new(()) })
    }

    fn units_read(&self) -> std::sync::RwLockReadGuard<'_, Vec<UnitSlot>> {
        // The unit list is only ever pushed to, so a poisoned lock still holds a valid list.
        self.units.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The machine's RAM.
    pub fn ram(&self) -> &Ram {
        &self.ram
    }

    /// The table-page pool: `(first address, size in bytes)`. DMA buffers belong below it.
    pub fn table_pool(&self) -> (PhysAddr, u64) {
        (self.pool.base(), self.pool.capacity() * PAGE_SIZE)
    }

    /// Adds a unit whose register window is `[base, base+len)`; windows may not overlap.
    pub fn add_unit(&self, base: PhysAddr, len: u64, model: Arc<dyn UnitModel>) -> Result<(), MachineError> {
        let last =
            len.checked_sub(1).and_then(|l| base.raw().checked_add(l)).ok_or(MachineError::BadWindow { base, len })?;
        if base.raw() < self.ram.len() {
            return Err(MachineError::OverRam { base, len, ram: self.ram.len() });
        }
        let mut units = self.units.write().unwrap_or_else(|e| e.into_inner());
        for u in units.iter() {
            // Both windows are non-empty and do not wrap, so `base + len - 1` cannot overflow.
            let u_last = u.base.raw() + (u.len - 1);
            if base.raw() <= u_last && u.base.raw() <= last {
                return Err(MachineError::Overlap { base, len, other: u.base });
            }
        }
        units.push(UnitSlot { base, len, model });
        tracing::debug!(%base, len, "unit added");
        Ok(())
    }

    /// The model of the unit whose window starts at `base`.
    pub fn unit(&self, base: PhysAddr) -> Option<Arc<dyn UnitModel>> {
        self.units_read().iter().find(|u| u.base == base).map(|u| Arc::clone(&u.model))
    }

    /// The model and window length of the unit at `base`, or `BAD_REGISTER` for `base`.
    fn unit_for_mmio(&self, base: PhysAddr, offset: u64) -> Result<Arc<dyn UnitModel>, HostError> {
        let units = self.units_read();
        let slot = units.iter().find(|u| u.base == base).ok_or(HostError::new(HostError::BAD_REGISTER, base.raw()))?;
        if offset >= slot.len {
            return Err(HostError::new(HostError::BAD_REGISTER, offset));
        }
        Ok(Arc::clone(&slot.model))
    }

    /// Asks the unit at `unit_base` to translate one access, as a device's DMA engine would.
    pub fn translate(
        &self,
        unit_base: PhysAddr,
        dev: DeviceRef,
        pasid: Option<Pasid>,
        iova: Iova,
        access: Prot,
    ) -> Result<DmaTarget, DmaError> {
        let model = self.unit(unit_base).ok_or(DmaError::NoUnit(unit_base))?;
        let req = DmaRequest { dev, pasid, iova, access };
        let _in_flight = self.drain.read().unwrap_or_else(|p| p.into_inner());
        model.translate(self, &req).map_err(DmaError::Fault)
    }

    /// Runs `copy(pa, offset_in_buffer, len)` on every translated piece of the `len` bytes from
    /// `start.iova`.
    fn dma(
        &self,
        unit_base: PhysAddr,
        start: DmaRequest,
        len: usize,
        mut copy: impl FnMut(PhysAddr, usize, usize) -> Result<(), HostError>,
    ) -> Result<(), DmaError> {
        let DmaRequest { dev, pasid, iova, access } = start;
        let model = self.unit(unit_base).ok_or(DmaError::NoUnit(unit_base))?;
        if len > 0 && iova.raw().checked_add(len as u64 - 1).is_none() {
            return Err(DmaError::Wraps { iova, len });
        }
        let _in_flight = self.drain.read().unwrap_or_else(|p| p.into_inner());
        let mut done = 0usize;
        while done < len {
            // Cannot wrap: checked above.
            let here = Iova(iova.raw() + done as u64);
            let req = DmaRequest { dev, pasid, iova: here, access };
            let target = model.translate(self, &req).map_err(|f| {
                tracing::debug!(%dev, iova = %here, reason = Fault::reason_name(f.reason), "DMA fault");
                DmaError::Fault(f)
            })?;
            if target.remaining == 0 {
                return Err(DmaError::EmptyTranslation(here));
            }
            let chunk = usize::try_from(target.remaining).unwrap_or(usize::MAX).min(len - done);
            copy(target.pa, done, chunk).map_err(DmaError::Memory)?;
            done += chunk;
        }
        Ok(())
    }

    /// A device writes `data` to `iova` through the unit at `unit_base` (memory ← device).
    ///
    /// The access is split at every translated page boundary and each piece is translated
    /// separately with [`Prot::WRITE`]. Like real DMA it is not atomic: when a later piece
    /// faults, the pieces before it have already been written.
    pub fn dma_write(
        &self,
        unit_base: PhysAddr,
        dev: DeviceRef,
        pasid: Option<Pasid>,
        iova: Iova,
        data: &[u8],
    ) -> Result<(), DmaError> {
        let start = DmaRequest { dev, pasid, iova, access: Prot::WRITE };
        self.dma(unit_base, start, data.len(), |pa, off, n| self.ram.write(pa, &data[off..off + n]))
    }

    /// A device reads `buf.len()` bytes at `iova` through the unit at `unit_base` (memory →
    /// device).
    ///
    /// Split and translated per page like [`Machine::dma_write`], with [`Prot::READ`]; when a
    /// later piece faults, the start of `buf` has already been filled.
    pub fn dma_read(
        &self,
        unit_base: PhysAddr,
        dev: DeviceRef,
        pasid: Option<Pasid>,
        iova: Iova,
        buf: &mut [u8],
    ) -> Result<(), DmaError> {
        let len = buf.len();
        let start = DmaRequest { dev, pasid, iova, access: Prot::READ };
        self.dma(unit_base, start, len, |pa, off, n| self.ram.read(pa, &mut buf[off..off + n]))
    }
}

impl PhysMemory for Machine {
    fn read(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<(), HostError> {
        self.ram.read(pa, buf)
    }
    fn write(&self, pa: PhysAddr, data: &[u8]) -> Result<(), HostError> {
        self.ram.write(pa, data)
    }
    fn read_u64(&self, pa: PhysAddr) -> Result<u64, HostError> {
        self.ram.read_u64(pa)
    }
    fn write_u64(&self, pa: PhysAddr, value: u64) -> Result<(), HostError> {
        self.ram.write_u64(pa, value)
    }
    fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> Result<u64, HostError> {
        self.ram.fetch_or_u64(pa, bits)
    }
    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> Result<u64, HostError> {
        self.ram.fetch_and_u64(pa, mask)
    }
}

impl Platform for Machine {
    fn alloc_table_page(&self) -> Result<PhysAddr, HostError> {
        self.alloc_table_pages(1)
    }
    fn free_table_page(&self, page: PhysAddr) -> Result<(), HostError> {
        self.free_table_pages(page, 1)
    }
    fn alloc_table_pages(&self, count: u64) -> Result<PhysAddr, HostError> {
        let first = self.pool.alloc_run(count)?;
        if let Err(e) = self.ram.zero(first, count * PAGE_SIZE) {
            // The pool lies inside RAM by construction; give the pages back anyway.
            let _ = self.pool.free_run(first, count);
            return Err(e);
        }
        tracing::trace!(%first, count, "table pages allocated");
        Ok(first)
    }
    fn free_table_pages(&self, first: PhysAddr, count: u64) -> Result<(), HostError> {
        self.pool
            .free_run(first, count)
            .inspect_err(|_| tracing::warn!(%first, count, "free of pages that are not allocated"))?;
        tracing::trace!(%first, count, "table pages freed");
        Ok(())
    }
    fn table_pages(&self) -> u64 {
        self.pool.allocated()
    }
    fn mmio_read(&self, base: PhysAddr, offset: u64, width: u8) -> Result<u64, HostError> {
        // The lock is released before calling the model, so a model may take its time.
        let model = self.unit_for_mmio(base, offset)?;
        let _drained = self.drain.write().unwrap_or_else(|p| p.into_inner());
        model.mmio_read(self, offset, width)
    }
    fn mmio_write(&self, base: PhysAddr, offset: u64, width: u8, value: u64) -> Result<(), HostError> {
        let model = self.unit_for_mmio(base, offset)?;
        let _drained = self.drain.write().unwrap_or_else(|p| p.into_inner());
        model.mmio_write(self, offset, width, value)
    }

    fn check_dma_memory(&self, pa: PhysAddr, len: u64) -> Result<(), String> {
        let (pool, pool_len) = self.table_pool();
        ioasis::platform::check_dma_memory_in(&[(0, self.ram.len())], (pool.raw(), pool_len), pa, len)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A unit that maps every IOVA to `iova + offset` in 4 KiB pages, faulting at and above
    /// `fault_from`, with one plain register at offset 0.
    struct Shift {
        offset: u64,
        fault_from: u64,
        reg: Mutex<u64>,
    }

    impl UnitModel for Shift {
        fn mmio_read(&self, _mem: &dyn PhysMemory, offset: u64, _width: u8) -> Result<u64, HostError> {
            match offset {
                0 => Ok(*self.reg.lock().unwrap()),
                _ => Err(HostError::new(HostError::BAD_REGISTER, offset)),
            }
        }
        fn mmio_write(&self, _mem: &dyn PhysMemory, offset: u64, _width: u8, value: u64) -> Result<(), HostError> {
            match offset {
                0 => {
                    *self.reg.lock().unwrap() = value;
                    Ok(())
                }
                _ => Err(HostError::new(HostError::BAD_REGISTER, offset)),
            }
        }
        fn translate(&self, _mem: &dyn PhysMemory, req: &DmaRequest) -> Result<DmaTarget, Fault> {
            if req.iova.raw() >= self.fault_from {
                return Err(Fault {
                    dev: req.dev,
                    pasid: req.pasid.into(),
                    addr: req.iova,
                    access: req.access,
                    reason: Fault::NOT_PRESENT,
                    page_request: false,
                    group: 0,
                });
            }
            let pa = PhysAddr(req.iova.raw() + self.offset);
            Ok(DmaTarget { pa, remaining: PAGE_SIZE - (pa.raw() % PAGE_SIZE) })
        }
    }

    const DEV: DeviceRef = DeviceRef::Sid(7);
    const UNIT: PhysAddr = PhysAddr(0xfed0_0000);

    fn machine(offset: u64, fault_from: u64) -> Arc<Machine> {
        let m = Machine::new(MachineConfig { ram_bytes: 1 << 24, table_pool_bytes: 1 << 20 }).unwrap();
        let model = Arc::new(Shift { offset, fault_from, reg: Mutex::new(0) });
        m.add_unit(UNIT, 0x1000, model).unwrap();
        Arc::new(m)
    }

    #[test]
    fn machine_is_a_shareable_platform() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Machine>();
        let p: Arc<dyn Platform> = machine(0, u64::MAX);
        assert_eq!(p.table_pages(), 0);
    }

    #[test]
    fn config_is_checked() {
        let bad = |ram_bytes, table_pool_bytes| Machine::new(MachineConfig { ram_bytes, table_pool_bytes });
        assert!(matches!(bad(1 << 20, 1 << 21), Err(MachineError::BadPool { .. })));
        assert!(matches!(bad(1 << 20, 100), Err(MachineError::BadPool { .. })));
        assert!(matches!(bad(0, 0), Err(MachineError::Ram(RamError::BadSize(0)))));
        assert!(matches!(bad(65 << 30, 0), Err(MachineError::Ram(RamError::BadSize(_)))));
        let m = Machine::new(MachineConfig::default()).unwrap();
        assert_eq!(m.table_pool(), (PhysAddr((1 << 30) - (64 << 20)), 64 << 20));
    }

    #[test]
    fn register_windows_stay_off_ram_and_each_other() {
        let m = Machine::new(MachineConfig { ram_bytes: 1 << 24, table_pool_bytes: 1 << 20 }).unwrap();
        let model = || Arc::new(Shift { offset: 0, fault_from: u64::MAX, reg: Mutex::new(0) });
        for base in [0, 0x1000, (1 << 24) - 0x1000] {
            let e = m.add_unit(PhysAddr(base), 0x1000, model()).unwrap_err();
            assert!(matches!(e, MachineError::OverRam { .. }), "{base:#x}: {e}");
        }
        m.add_unit(PhysAddr(1 << 24), 0x1000, model()).expect("the first page past RAM");
        let e = m.add_unit(PhysAddr(1 << 24), 0x1000, model()).unwrap_err();
        assert!(matches!(e, MachineError::Overlap { .. }), "{e}");
        let e = m.add_unit(PhysAddr((1 << 24) + 0x800), 0x1000, model()).unwrap_err();
        assert!(matches!(e, MachineError::Overlap { .. }), "{e}");
        assert!(matches!(m.add_unit(PhysAddr(u64::MAX), 2, model()), Err(MachineError::BadWindow { .. })));
    }

    #[test]
    fn dma_memory_is_ram_outside_the_table_pool() {
        let m = machine(0, u64::MAX);
        let (pool, len) = m.table_pool();
        assert_eq!(m.check_dma_memory(PhysAddr(0), pool.raw()), Ok(()), "all RAM below the pool");
        assert!(m.check_dma_memory(pool, 0x1000).unwrap_err().contains("table-page pool"));
        assert!(m.check_dma_memory(PhysAddr(pool.raw() - 0x1000), 0x2000).unwrap_err().contains("pool"));
        assert!(m.check_dma_memory(PhysAddr(pool.raw() + len), 0x1000).unwrap_err().contains("not inside RAM"));
        assert!(m.check_dma_memory(PhysAddr(u64::MAX - 0xfff), 0x2000).unwrap_err().contains("wraps"));
    }

    #[test]
    fn memfd_machine_does_dma_and_checks_its_config() {
        let bad = Machine::new_memfd(MachineConfig { ram_bytes: 1 << 20, table_pool_bytes: 1 << 21 });
        assert!(matches!(bad, Err(MachineError::BadPool { .. })));
        let bad = Machine::new_memfd(MachineConfig { ram_bytes: 3, table_pool_bytes: 0 });
        assert!(matches!(bad, Err(MachineError::Ram(RamError::BadSize(3)))));
        assert!(machine(0, u64::MAX).ram().memfd().is_none(), "the default stays anonymous");

        let m = Machine::new_memfd(MachineConfig { ram_bytes: 1 << 24, table_pool_bytes: 1 << 20 }).unwrap();
        m.add_unit(UNIT, 0x1000, Arc::new(Shift { offset: 0x1000, fault_from: u64::MAX, reg: Mutex::new(0) })).unwrap();
        m.dma_write(UNIT, DEV, None, Iova(0x2ffe), b"shared").unwrap();
        let file = std::fs::File::from(m.ram().memfd().expect("memfd").try_clone_to_owned().unwrap());
        let mut b = [0u8; 6];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut b, 0x3ffe).unwrap();
        assert_eq!(&b, b"shared", "DMA landed in the memfd at file offset = PA");
        let page = m.alloc_table_page().unwrap();
        assert_eq!(page, PhysAddr((1 << 24) - (1 << 20)));
        assert_eq!(m.table_pages(), 1);
    }

    #[test]
    fn table_pages_are_zeroed_counted_and_checked() {
        let m = Machine::new(MachineConfig { ram_bytes: 1 << 20, table_pool_bytes: 2 * PAGE_SIZE }).unwrap();
        let a = m.alloc_table_page().unwrap();
        assert_eq!(a, PhysAddr((1 << 20) - 2 * PAGE_SIZE));
        m.write_u64(PhysAddr(a.raw() + 0xff8), u64::MAX).unwrap();
        let b = m.alloc_table_page().unwrap();
        assert_eq!(m.table_pages(), 2);
        assert_eq!(m.alloc_table_page().unwrap_err().code, HostError::NO_MEMORY);
        m.free_table_page(a).unwrap();
        assert_eq!(m.free_table_page(a).unwrap_err().code, HostError::NOT_ALLOCATED);
        assert_eq!(m.free_table_page(PhysAddr(0)).unwrap_err().code, HostError::NOT_ALLOCATED);
        assert_eq!(m.table_pages(), 1);
        let again = m.alloc_table_page().unwrap();
        assert_eq!(again, a);
        assert_eq!(m.read_u64(PhysAddr(a.raw() + 0xff8)).unwrap(), 0, "recycled page is zeroed");
        m.free_table_page(b).unwrap();
        m.free_table_page(again).unwrap();
        assert_eq!(m.table_pages(), 0);
    }

    #[test]
    fn mmio_is_routed_by_base() {
        let m = machine(0, u64::MAX);
        m.mmio_write(UNIT, 0, 8, 42).unwrap();
        assert_eq!(m.mmio_read(UNIT, 0, 8).unwrap(), 42);
        let e = m.mmio_read(PhysAddr(0xfee0_0000), 0, 8).unwrap_err();
        assert_eq!((e.code, e.addr), (HostError::BAD_REGISTER, 0xfee0_0000));
        let e = m.mmio_write(UNIT, 0x1000, 4, 0).unwrap_err();
        assert_eq!((e.code, e.addr), (HostError::BAD_REGISTER, 0x1000));
        // Inside the window but not a register: the model says so.
        assert_eq!(m.mmio_read(UNIT, 8, 8).unwrap_err().code, HostError::BAD_REGISTER);
        // A base inside another unit's window is not a unit either.
        assert_eq!(m.mmio_read(PhysAddr(UNIT.raw() + 8), 0, 8).unwrap_err().code, HostError::BAD_REGISTER);
    }

    #[test]
    fn unit_windows_may_not_overlap() {
        let m = machine(0, u64::MAX);
        let model = || Arc::new(Shift { offset: 0, fault_from: 0, reg: Mutex::new(0) });
        let overlap = m.add_unit(PhysAddr(UNIT.raw() + 0xfff), 0x1000, model());
        assert!(matches!(overlap, Err(MachineError::Overlap { other: UNIT, .. })));
        assert!(matches!(m.add_unit(PhysAddr(UNIT.raw() - 0x800), 0x801, model()), Err(MachineError::Overlap { .. })));
        assert!(matches!(m.add_unit(PhysAddr(0), 0, model()), Err(MachineError::BadWindow { .. })));
        assert!(matches!(m.add_unit(PhysAddr(u64::MAX), 2, model()), Err(MachineError::BadWindow { .. })));
        m.add_unit(PhysAddr(UNIT.raw() + 0x1000), 0x1000, model()).unwrap();
        m.add_unit(PhysAddr(u64::MAX), 1, model()).unwrap();
    }

    #[test]
    fn dma_lands_in_ram_across_pages() {
        let m = machine(0x10_0000, u64::MAX);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        m.dma_write(UNIT, DEV, None, Iova(0x0ff0), &data).unwrap();
        let mut back = vec![0u8; data.len()];
        m.read(PhysAddr(0x10_0ff0), &mut back).unwrap();
        assert_eq!(back, data);
        let mut again = vec![0u8; data.len()];
        m.dma_read(UNIT, DEV, None, Iova(0x0ff0), &mut again).unwrap();
        assert_eq!(again, data);
        m.dma_write(UNIT, DEV, None, Iova(0), &[]).unwrap();
        let t = m.translate(UNIT, DEV, None, Iova(0x1234), Prot::READ).unwrap();
        assert_eq!(t, DmaTarget { pa: PhysAddr(0x10_1234), remaining: 0xdcc });
    }

    #[test]
    fn dma_faults_are_returned() {
        let m = machine(0, 0x2000);
        // The first page is written, then the second faults.
        let err = m.dma_write(UNIT, DEV, Some(Pasid(3)), Iova(0x1ffc), &[0xab; 8]).unwrap_err();
        let DmaError::Fault(f) = err else { panic!("expected a fault, got {err}") };
        assert_eq!((f.dev, f.addr, f.access, f.reason), (DEV, Iova(0x2000), Prot::WRITE, Fault::NOT_PRESENT));
        assert_eq!(f.pasid.into_option(), Some(Pasid(3)));
        assert_eq!(m.read_u64(PhysAddr(0x1ff8)).unwrap(), 0xabab_abab_0000_0000);
        let mut buf = [0u8; 4];
        assert!(matches!(m.dma_read(UNIT, DEV, None, Iova(0x5000), &mut buf), Err(DmaError::Fault(_))));
        assert!(matches!(m.dma_read(PhysAddr(0), DEV, None, Iova(0), &mut buf), Err(DmaError::NoUnit(_))));
        assert!(matches!(m.dma_read(UNIT, DEV, None, Iova(u64::MAX - 1), &mut buf), Err(DmaError::Wraps { .. })));
    }

    #[test]
    fn dma_outside_ram_is_an_error() {
        let m = machine(1 << 24, u64::MAX);
        let err = m.dma_write(UNIT, DEV, None, Iova(0), &[1]).unwrap_err();
        assert!(matches!(err, DmaError::Memory(e) if e.code == HostError::BAD_ADDRESS));
    }

    /// The mock unit's model behind the machine: tables in table pages, DMA through them.
    #[test]
    fn dma_through_the_mock_unit() {
        use ioasis_plugin_mock::format::{desc, devtab, pte, reg, VALID};
        use ioasis_plugin_mock::model::MockModel;

        let m = Machine::new(MachineConfig { ram_bytes: 1 << 26, table_pool_bytes: 1 << 22 }).unwrap();
        m.add_unit(UNIT, reg::WINDOW, Arc::new(MockModel::default())).unwrap();
        let p: &dyn Platform = &m;
        assert_eq!(p.mmio_read(UNIT, reg::ID, 8).unwrap(), reg::ID_VALUE);
        // Passthrough before enabling.
        m.dma_write(UNIT, DEV, None, Iova(0x1000), b"plain").unwrap();
        let page = || p.alloc_table_page().unwrap().raw();
        let (l1, l2, d, fq) = (page(), page(), page(), page());
        let tables: Vec<u64> = (0..4).map(|_| page()).collect();
        p.write_u64(PhysAddr(l1 + devtab::l1_offset(7)), l2 | VALID).unwrap();
        p.write_u64(PhysAddr(l2 + devtab::l2_offset(7)), d | VALID).unwrap();
        let w0 = desc::TYPE_PAGING | desc::DIRTY_EN | (4 << desc::LEVELS_SHIFT) | (48 << desc::IAS_SHIFT);
        p.write_u64(PhysAddr(d), w0).unwrap();
        p.write_u64(PhysAddr(d + 8), tables[3]).unwrap();
        let iova = 0x12_3000u64;
        for level in (1..4).rev() {
            let at = tables[level as usize] + pte::offset(iova, level);
            p.write_u64(PhysAddr(at), tables[level as usize - 1] | pte::P).unwrap();
        }
        let leaf = PhysAddr(tables[0] + pte::offset(iova, 0));
        p.write_u64(leaf, 0x20_0000 | pte::P | pte::R | pte::W).unwrap();
        p.mmio_write(UNIT, reg::DEVTAB, 8, l1).unwrap();
        p.mmio_write(UNIT, reg::FQ_BASE, 8, fq).unwrap();
        p.mmio_write(UNIT, reg::CTRL, 4, reg::CTRL_EN | reg::CTRL_FQEN).unwrap();

        m.dma_write(UNIT, DEV, None, Iova(iova + 0xffe), b"hello").unwrap_err();
        let mut back = [0u8; 2];
        m.read(PhysAddr(0x20_0ffe), &mut back).unwrap();
        assert_eq!(&back, b"he", "the first page was written before the fault");
        assert_ne!(p.read_u64(leaf).unwrap() & pte::D, 0);
        assert_eq!(p.mmio_read(UNIT, reg::FQ_TAIL, 4).unwrap(), 1);
        assert_eq!(p.read_u64(PhysAddr(fq + 8)).unwrap(), iova + 0x1000);
        assert_eq!(p.table_pages(), 8);
    }
}
