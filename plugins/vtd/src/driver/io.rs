//! The driver's access to its unit: memory and registers through host services, with bounded
//! polling (VT-d spec 11.4: 32-bit registers are accessed with width 4, 64-bit ones with 8).

use abi_stable::std_types::RResult;
use ioasis::abi::{ErrorCode, HostServicesBox, LogLevel, PluginError};
use ioasis::pt::Memory;
use ioasis::PhysAddr;

use crate::layout::regs::{gcmd, off};
use crate::layout::tables::ADDR;

/// How long a register or status poll may take before the driver reports a timeout.
pub const POLL_TIMEOUT_NS: u64 = 200_000_000;

use ioasis::abi::host_ok as ok;

/// Memory and register access of one unit.
pub struct Io {
    host: HostServicesBox,
}

impl Io {
    /// Wraps the unit's host services.
    pub fn new(host: HostServicesBox) -> Self {
        Self { host }
    }

    /// `count` contiguous zeroed table pages (a PASID directory larger than a page).
    pub fn alloc_n(&self, count: u32) -> Result<u64, PluginError> {
        if count == 1 {
            return self.alloc();
        }
        let pa = ok("allocate table pages", self.host.alloc_table_pages(count))?.0;
        if pa & !ADDR != 0 {
            self.free_n(pa, count);
            return Err(PluginError::new(ErrorCode::HOST, format!("host gave unusable pages at {pa:#x}")));
        }
        Ok(pa)
    }

    /// Frees pages from [`Io::alloc_n`].
    pub fn free_n(&self, pa: u64, count: u32) {
        if count == 1 {
            return self.free(pa);
        }
        if let RResult::RErr(e) = self.host.free_table_pages(PhysAddr(pa), count) {
            self.log(LogLevel::Error, &format!("freeing {count} table pages at {pa:#x}: {e}"));
        }
    }

    /// Reads a 32-bit register.
    pub fn rd32(&self, offset: u64) -> Result<u32, PluginError> {
        ok("read register", self.host.mmio_read(offset, 4)).map(|v| v as u32)
    }

    /// Writes a 32-bit register.
    pub fn wr32(&self, offset: u64, v: u32) -> Result<(), PluginError> {
        ok("write register", self.host.mmio_write(offset, 4, v as u64))
    }

    /// Reads a 64-bit register.
    pub fn rd64(&self, offset: u64) -> Result<u64, PluginError> {
        ok("read register", self.host.mmio_read(offset, 8))
    }

    /// Writes a 64-bit register.
    pub fn wr64(&self, offset: u64, v: u64) -> Result<(), PluginError> {
        ok("write register", self.host.mmio_write(offset, 8, v))
    }

    /// Polls until `done()` returns a value, bounded by [`POLL_TIMEOUT_NS`].
    pub fn poll<T>(
        &self,
        what: &str,
        mut done: impl FnMut() -> Result<Option<T>, PluginError>,
    ) -> Result<T, PluginError> {
        let start = self.host.now_ns();
        loop {
            if let Some(v) = done()? {
                return Ok(v);
            }
            if self.host.now_ns().saturating_sub(start) > POLL_TIMEOUT_NS {
                return Err(PluginError::new(ErrorCode::TIMEOUT, format!("{what}: no completion in time")));
            }
            std::thread::yield_now();
        }
    }

    /// Issues a global command (11.4.4): writes the persistent GSTS bits (TE, QIE, ...) with
    /// `set` added and `clear` removed — never a one-shot bit read back — then polls GSTS until
    /// `done(gsts)`.
    pub fn gcmd(&self, set: u32, clear: u32, what: &str, done: impl Fn(u32) -> bool) -> Result<(), PluginError> {
        let sts = self.rd32(off::GSTS)?;
        let cmd = ((sts & !gcmd::ONE_SHOT) | set) & !clear;
        self.wr32(off::GCMD, cmd)?;
        self.poll(what, || Ok(done(self.rd32(off::GSTS)?).then_some(())))
    }

    /// Logs through the host.
    pub fn log(&self, level: LogLevel, msg: &str) {
        self.host.log(level, msg.into());
    }
}

/// Table memory for the framework's walker (`ioasis::pt::Memory`, through the host services).
impl AsRef<HostServicesBox> for Io {
    fn as_ref(&self) -> &HostServicesBox {
        &self.host
    }
}
