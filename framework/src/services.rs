//! The framework's [`HostServices`] object: a [`Platform`] seen through one unit's window.
//! A plugin reads any RAM (a guest's stage-1 tables, its queues) but writes only the table
//! pages allocated to its unit and not yet freed: a write anywhere else (a wrong index, a page
//! used after its free) is refused with [`HostError::NOT_OWNED`] and changes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
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
    owned: Arc<Owned>,
}

/// The runs of table pages a unit holds: first byte to length in bytes.
#[derive(Default)]
struct Owned(Mutex<BTreeMap<u64, u64>>);

impl Owned {
    fn runs(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u64>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, first: PhysAddr, count: u64) {
        self.runs().insert(first.raw(), count * PAGE);
    }

    /// Forgets `count` pages from `first`, the start of a run (the rest of it stays owned);
    /// returns the run as it was, for [`Owned::restore`].
    fn remove(&self, first: PhysAddr, count: u64) -> Option<(u64, u64)> {
        let mut runs = self.runs();
        let len = runs.remove(&first.raw())?;
        let freed = (count * PAGE).min(len);
        if freed < len {
            runs.insert(first.raw() + freed, len - freed);
        }
        Some((first.raw(), len))
    }

    /// Owns a run again after a free the platform refused.
    fn restore(&self, first: u64, len: u64) {
        let mut runs = self.runs();
        runs.retain(|&at, _| at < first || at >= first + len);
        runs.insert(first, len);
    }

    /// `len` bytes at `pa` lie in one run.
    fn check(&self, pa: PhysAddr, len: u64) -> Result<(), HostError> {
        let runs = self.runs();
        let inside = runs
            .range(..=pa.raw())
            .next_back()
            .is_some_and(|(&first, &n)| pa.raw().checked_add(len).is_some_and(|end| end <= first + n));
        if inside {
            Ok(())
        } else {
            Err(HostError::new(HostError::NOT_OWNED, pa.raw()))
        }
    }
}

const PAGE: u64 = 4096;

impl UnitServices {
    /// The trait object handed to the plugin.
    pub(crate) fn boxed(
        platform: Arc<dyn Platform>,
        mmio_base: PhysAddr,
        unit: &str,
        fail: Arc<FailNth>,
    ) -> HostServicesBox {
        let s = UnitServices { platform, mmio_base, unit: Arc::from(unit), fail, owned: Arc::default() };
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
        let page = self.platform.alloc_table_page();
        if let Ok(page) = page {
            self.owned.insert(page, 1);
        }
        page.into()
    }

    fn free_table_page(&self, page: PhysAddr) -> RResult<(), HostError> {
        self.free_table_pages(page, 1)
    }

    fn alloc_table_pages(&self, count: u32) -> RResult<PhysAddr, HostError> {
        if self.fail.should_fail() {
            tracing::debug!(unit = %self.unit, count, "injected table-pages allocation failure");
            return RResult::RErr(HostError::new(HostError::NO_MEMORY, 0));
        }
        let first = self.platform.alloc_table_pages(u64::from(count));
        if let Ok(first) = first {
            self.owned.insert(first, u64::from(count));
        }
        first.into()
    }

    fn free_table_pages(&self, first: PhysAddr, count: u32) -> RResult<(), HostError> {
        // Disowned before the platform may hand the pages to another allocation, so that a
        // concurrent allocation of the same pages is never disowned by this free.
        let count = u64::from(count);
        let disowned = self.owned.remove(first, count);
        let r = if count == 1 {
            self.platform.free_table_page(first)
        } else {
            self.platform.free_table_pages(first, count)
        };
        if r.is_err() {
            if let Some((at, len)) = disowned {
                self.owned.restore(at, len);
            }
        }
        r.into()
    }

    fn read_phys(&self, pa: PhysAddr, mut buf: RSliceMut<'_, u8>) -> RResult<(), HostError> {
        self.platform.read(pa, buf.as_mut_slice()).into()
    }

    fn write_phys(&self, pa: PhysAddr, data: RSlice<'_, u8>) -> RResult<(), HostError> {
        let data = data.as_slice();
        self.owned.check(pa, data.len() as u64).and_then(|()| self.platform.write(pa, data)).into()
    }

    fn read_u64(&self, pa: PhysAddr) -> RResult<u64, HostError> {
        self.platform.read_u64(pa).into()
    }

    fn write_u64(&self, pa: PhysAddr, value: u64) -> RResult<(), HostError> {
        self.owned.check(pa, 8).and_then(|()| self.platform.write_u64(pa, value)).into()
    }

    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> RResult<u64, HostError> {
        self.owned.check(pa, 8).and_then(|()| self.platform.fetch_and_u64(pa, mask)).into()
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::platform::PhysMemory;

    /// Memory as a map of u64s, table pages from a bump pointer.
    #[derive(Default)]
    struct Flat {
        mem: Mutex<HashMap<u64, u64>>,
        next: Mutex<u64>,
        refuse_free: std::sync::atomic::AtomicBool,
    }

    impl Flat {
        fn free(&self) -> Result<(), HostError> {
            if self.refuse_free.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(HostError::new(HostError::NOT_ALLOCATED, 0));
            }
            Ok(())
        }
    }

    impl PhysMemory for Flat {
        fn read(&self, _pa: PhysAddr, buf: &mut [u8]) -> Result<(), HostError> {
            buf.fill(0);
            Ok(())
        }
        fn write(&self, pa: PhysAddr, _data: &[u8]) -> Result<(), HostError> {
            self.write_u64(pa, 0)
        }
        fn read_u64(&self, pa: PhysAddr) -> Result<u64, HostError> {
            Ok(*self.mem.lock().unwrap().get(&pa.raw()).unwrap_or(&0))
        }
        fn write_u64(&self, pa: PhysAddr, value: u64) -> Result<(), HostError> {
            self.mem.lock().unwrap().insert(pa.raw(), value);
            Ok(())
        }
        fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> Result<u64, HostError> {
            let old = self.read_u64(pa)?;
            self.write_u64(pa, old | bits).map(|()| old)
        }
        fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> Result<u64, HostError> {
            let old = self.read_u64(pa)?;
            self.write_u64(pa, old & mask).map(|()| old)
        }
    }

    impl Platform for Flat {
        fn alloc_table_page(&self) -> Result<PhysAddr, HostError> {
            self.alloc_table_pages(1)
        }
        fn free_table_page(&self, _page: PhysAddr) -> Result<(), HostError> {
            self.free()
        }
        fn alloc_table_pages(&self, count: u64) -> Result<PhysAddr, HostError> {
            let mut next = self.next.lock().unwrap();
            *next += 0x10_0000;
            let first = *next;
            *next += count * PAGE;
            Ok(PhysAddr(first))
        }
        fn free_table_pages(&self, _first: PhysAddr, _count: u64) -> Result<(), HostError> {
            self.free()
        }
        fn table_pages(&self) -> u64 {
            0
        }
        fn mmio_read(&self, _base: PhysAddr, _offset: u64, _width: u8) -> Result<u64, HostError> {
            Ok(0)
        }
        fn mmio_write(&self, _base: PhysAddr, _offset: u64, _width: u8, _value: u64) -> Result<(), HostError> {
            Ok(())
        }
    }

    #[test]
    fn a_plugin_writes_only_the_table_pages_its_unit_holds() {
        let flat = Arc::new(Flat::default());
        let s = UnitServices::boxed(flat.clone(), PhysAddr(0), "u", Arc::new(FailNth::default()));
        let refused = |r: RResult<(), HostError>, at: u64| match r {
            RResult::RErr(e) => assert_eq!((e.code, e.addr), (HostError::NOT_OWNED, at), "{e}"),
            RResult::ROk(()) => panic!("a write at {at:#x} was let through"),
        };
        let one = s.alloc_table_page().unwrap();
        let run = s.alloc_table_pages(3).unwrap();
        for pa in [one.raw(), one.raw() + 0xff8, run.raw(), run.raw() + 3 * PAGE - 8] {
            s.write_u64(PhysAddr(pa), 7).unwrap();
            assert_eq!(s.fetch_and_u64(PhysAddr(pa), 3).unwrap(), 7);
        }
        s.write_phys(PhysAddr(run.raw() + 0xffc), [0u8; 8][..].into()).unwrap();
        // Past a page's end, straddling it, below it, and in memory nobody allocated.
        for pa in [one.raw() + PAGE, one.raw() + 0xffc, one.raw() - 8, run.raw() + 3 * PAGE, 0x1000] {
            refused(s.write_u64(PhysAddr(pa), 1), pa);
            refused(s.fetch_and_u64(PhysAddr(pa), 0).map(|_| ()), pa);
        }
        refused(s.write_phys(PhysAddr(run.raw() + 3 * PAGE - 4), [0u8; 8][..].into()), run.raw() + 3 * PAGE - 4);
        assert_eq!(flat.read_u64(one).unwrap(), 3, "nothing written by the refusals");
        // Reads go anywhere (a guest's tables, its queues).
        assert_eq!(s.read_u64(PhysAddr(0x1000)).unwrap(), 0);
        // A free the platform refuses keeps the page the plugin's.
        flat.refuse_free.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(s.free_table_page(one).is_err());
        s.write_u64(PhysAddr(one.raw() + 0xff8), 1).unwrap();
        flat.refuse_free.store(false, std::sync::atomic::Ordering::Relaxed);
        // A freed page is no longer the plugin's; freeing the head of a run keeps the rest.
        s.free_table_page(one).unwrap();
        refused(s.write_u64(one, 1), one.raw());
        s.free_table_pages(run, 1).unwrap();
        refused(s.write_u64(run, 1), run.raw());
        s.write_u64(PhysAddr(run.raw() + PAGE), 1).unwrap();
    }
}
