//! The driver's access to its unit: memory and registers through host services, with bounded
//! polling (mock spec §1).

use std::sync::Mutex;

use ioasis::abi::{ErrorCode, HostServicesBox, LogLevel, PluginError};

use super::unit::Defect;
use crate::format::reg;

/// How long a register poll may take before the driver reports a timeout.
pub const POLL_TIMEOUT_NS: u64 = 100_000_000;

use ioasis::abi::host_ok as ok;

/// Memory and register access of one unit.
pub struct Io {
    host: HostServicesBox,
    /// Serialises multi-register commands (INV_ADDR/SIZE/TAG then INV_CMD; PRESP_DEV then CMD).
    cmd: Mutex<()>,
    /// Defect `no-invalidation-wait`: write INV_CMD and return without waiting for INV_DONE.
    no_wait: bool,
}

impl Io {
    /// Wraps the unit's host services.
    pub fn new(host: HostServicesBox) -> Self {
        Self { host, cmd: Mutex::new(()), no_wait: false }
    }

    /// The same access with the invalidation defect of `defect`, if it is that one.
    pub fn with_defect(self, defect: Option<Defect>) -> Self {
        Self { no_wait: defect == Some(Defect::NoInvalidationWait), ..self }
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
        if self.no_wait {
            self.reg_wr(reg::INV_ADDR, addr)?;
            self.reg_wr(reg::INV_SIZE, size)?;
            self.reg_wr(reg::INV_TAG, tag)?;
            return self.reg_wr(reg::INV_CMD, cmd);
        }
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

/// Table memory for the framework's walker (`ioasis::pt::Memory`, through the host services).
impl AsRef<HostServicesBox> for Io {
    fn as_ref(&self) -> &HostServicesBox {
        &self.host
    }
}
