//! The driver's access to its unit: registers and memory through host services, bounded
//! polling, and invalidation commands (acme spec §1, §4).

use std::sync::Mutex;

use ioasis::abi::{host_ok, HostServicesBox, LogLevel};

use crate::error::{DriverError, Result};
use crate::layout::{inv, reg};

/// How long a register poll may take, unless the unit's params say otherwise.
pub const POLL_TIMEOUT_NS: u64 = 100_000_000;

/// Registers and memory of one unit.
pub struct Io {
    host: HostServicesBox,
    /// Serialises commands: INV_ADDR, INV_SIZE, INV_CMD, then the wait on INV_DONE.
    cmd: Mutex<()>,
    timeout_ns: u64,
}

impl Io {
    /// Wraps the unit's host services.
    pub fn new(host: HostServicesBox) -> Self {
        Self { host, cmd: Mutex::new(()), timeout_ns: POLL_TIMEOUT_NS }
    }

    /// Sets how long polls may take.
    pub fn set_timeout_ns(&mut self, ns: u64) {
        self.timeout_ns = ns;
    }

    /// Reads a register (always 8 bytes wide).
    pub fn reg_rd(&self, off: u64) -> Result<u64> {
        Ok(host_ok("read register", self.host.mmio_read(off, 8))?)
    }

    /// Writes a register.
    pub fn reg_wr(&self, off: u64, v: u64) -> Result<()> {
        Ok(host_ok("write register", self.host.mmio_write(off, 8, v))?)
    }

    /// Polls register `off` until `done(value)`, for at most the poll timeout.
    pub fn poll(&self, off: u64, what: &'static str, done: impl Fn(u64) -> bool) -> Result<u64> {
        let start = self.host.now_ns();
        loop {
            let v = self.reg_rd(off)?;
            if done(v) {
                return Ok(v);
            }
            if self.host.now_ns().saturating_sub(start) > self.timeout_ns {
                return Err(DriverError::Timeout { what, reg: off, value: v });
            }
            std::hint::spin_loop();
        }
    }

    /// Runs one command (§4) and waits for INV_DONE to count it: only then has it taken effect.
    pub fn invalidate(&self, op: u64, id: u16, addr: u64, size: u64) -> Result<()> {
        let _g = self.cmd.lock().unwrap_or_else(|p| p.into_inner());
        let before = self.reg_rd(reg::INV_DONE)?;
        self.reg_wr(reg::INV_ADDR, addr)?;
        self.reg_wr(reg::INV_SIZE, size)?;
        self.reg_wr(reg::INV_CMD, inv::cmd(op, id))?;
        self.poll(reg::INV_DONE, "invalidation", |v| v != before).map(|_| ()).inspect_err(|_| {
            if self.reg_rd(reg::STATUS).is_ok_and(|s| s & reg::STATUS_INV_OVF != 0) {
                self.log(LogLevel::Error, "the unit dropped an invalidation command (STATUS.INV_OVF)");
            }
        })
    }

    /// The host services themselves (contiguous allocations).
    pub fn host(&self) -> &HostServicesBox {
        &self.host
    }

    /// Logs through the host.
    pub fn log(&self, level: LogLevel, msg: &str) {
        self.host.log(level, msg.into());
    }
}

/// Table memory for the framework's walker: `ioasis::pt::Memory` is implemented for anything
/// that is `AsRef<HostServicesBox>`.
impl AsRef<HostServicesBox> for Io {
    fn as_ref(&self) -> &HostServicesBox {
        &self.host
    }
}
