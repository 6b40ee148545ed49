//! The driver's access to its unit: memory and registers through host services, with bounded
//! polling (mock spec §1).

use std::sync::Mutex;

use abi_stable::std_types::RResult;
use ioasis::abi::{ErrorCode, HostError, HostServicesBox, LogLevel, PluginError};
use ioasis::pt::Memory;
use ioasis::PhysAddr;

use crate::format::{reg, ADDR_MASK};

/// How long a register poll may take before the driver reports a timeout.
pub const POLL_TIMEOUT_NS: u64 = 100_000_000;

/// A host error as the driver reports it.
pub fn host_err(what: &str, e: HostError) -> PluginError {
    let code = if e.code == HostError::NO_MEMORY { ErrorCode::NO_MEMORY } else { ErrorCode::HOST };
    PluginError::new(code, format!("{what}: {e}"))
}

fn ok<T>(what: &str, r: RResult<T, HostError>) -> Result<T, PluginError> {
    r.into_result().map_err(|e| host_err(what, e))
}

/// Memory and register access of one unit.
pub struct Io {
    host: HostServicesBox,
    /// Serialises multi-register commands (INV_ADDR/SIZE/TAG then INV_CMD; PRESP_DEV then CMD).
    cmd: Mutex<()>,
}

impl Io {
    /// Wraps the unit's host services.
    pub fn new(host: HostServicesBox) -> Self {
        Self { host, cmd: Mutex::new(()) }
    }

    /// Reads a table entry.
    pub fn rd(&self, pa: u64) -> Result<u64, PluginError> {
        ok("read table entry", self.host.read_u64(PhysAddr(pa)))
    }

    /// Writes a table entry.
    pub fn wr(&self, pa: u64, v: u64) -> Result<(), PluginError> {
        ok("write table entry", self.host.write_u64(PhysAddr(pa), v))
    }

    /// A zeroed table page.
    pub fn alloc(&self) -> Result<u64, PluginError> {
        let pa = ok("allocate table page", self.host.alloc_table_page())?.0;
        if pa & !ADDR_MASK != 0 {
            return Err(PluginError::new(ErrorCode::HOST, format!("host gave unaligned page {pa:#x}")));
        }
        Ok(pa)
    }

    /// Frees a table page. A failure here is a host bug: it is logged, not propagated.
    pub fn free(&self, pa: u64) {
        if let RResult::RErr(e) = self.host.free_table_page(PhysAddr(pa)) {
            self.log(LogLevel::Error, &format!("freeing table page {pa:#x}: {e}"));
        }
    }

    /// Reads a register.
    pub fn reg_rd(&self, off: u64) -> Result<u64, PluginError> {
        ok("read register", self.host.mmio_read(off, 8))
    }

    /// Writes a register.
    pub fn reg_wr(&self, off: u64, v: u64) -> Result<(), PluginError> {
        ok("write register", self.host.mmio_write(off, 8, v))
    }

    /// Polls register `off` until `done(value)`, bounded by [`POLL_TIMEOUT_NS`].
    pub fn poll(&self, off: u64, what: &str, done: impl Fn(u64) -> bool) -> Result<u64, PluginError> {
        let start = self.host.now_ns();
        loop {
            let v = self.reg_rd(off)?;
            if done(v) {
                return Ok(v);
            }
            if self.host.now_ns().saturating_sub(start) > POLL_TIMEOUT_NS {
                return Err(PluginError::new(ErrorCode::TIMEOUT, format!("{what}: register {off:#x} stuck at {v:#x}")));
            }
            std::hint::spin_loop();
        }
    }

    /// Runs one invalidation command (§1 INV_*) and waits for INV_DONE to count it.
    pub fn invalidate(&self, cmd: u64, tag: u64, addr: u64, size: u64) -> Result<(), PluginError> {
        let _g = self.cmd.lock().unwrap_or_else(|p| p.into_inner());
        let before = self.reg_rd(reg::INV_DONE)?;
        self.reg_wr(reg::INV_ADDR, addr)?;
        self.reg_wr(reg::INV_SIZE, size)?;
        self.reg_wr(reg::INV_TAG, tag)?;
        self.reg_wr(reg::INV_CMD, cmd)?;
        self.poll(reg::INV_DONE, "invalidation", |v| v != before)?;
        Ok(())
    }

    /// Sends a page response (§1 PRESP_*).
    pub fn page_response(&self, dev_word: u64, cmd_word: u64) -> Result<(), PluginError> {
        let _g = self.cmd.lock().unwrap_or_else(|p| p.into_inner());
        self.reg_wr(reg::PRESP_DEV, dev_word)?;
        self.reg_wr(reg::PRESP_CMD, cmd_word)
    }

    /// Logs through the host.
    pub fn log(&self, level: LogLevel, msg: &str) {
        self.host.log(level, msg.into());
    }
}

/// Page-table memory for the framework's walker.
impl Memory for Io {
    fn rd(&self, pa: u64) -> Result<u64, PluginError> {
        Io::rd(self, pa)
    }
    fn wr(&self, pa: u64, v: u64) -> Result<(), PluginError> {
        Io::wr(self, pa, v)
    }
    fn and(&self, pa: u64, mask: u64) -> Result<u64, PluginError> {
        ok("update table entry", self.host.fetch_and_u64(PhysAddr(pa), mask))
    }
    fn read_table(&self, table: u64, buf: &mut [u8; 4096]) -> Result<(), PluginError> {
        ok("read table", self.host.read_phys(PhysAddr(table), buf.as_mut_slice().into()))
    }
    fn alloc(&self) -> Result<u64, PluginError> {
        Io::alloc(self)
    }
    fn free(&self, table: u64) {
        Io::free(self, table)
    }
}
