//! The one error type of the QEMU platform.

use std::time::Duration;

use ioasis::abi::HostError;

/// Why a QEMU machine, its qtest session, its PCI bus or its edu device failed.
///
/// Every wait the harness makes is bounded, so a hung QEMU shows up as one of the timeout
/// variants, never as a hang. Once a qtest session has timed out or seen QEMU exit it is
/// unusable: later commands fail with [`QemuError::Broken`].
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// The QEMU binary could not be started.
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        /// The program that was run.
        program: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A local I/O operation of the harness failed (temporary files, the socket).
    #[error("{context}: {source}")]
    Io {
        /// What the harness was doing.
        context: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// QEMU did not connect to the qtest socket in time.
    #[error("QEMU did not connect to the qtest socket within {waited:?}; tail of its stderr:\n{stderr}")]
    ConnectTimeout {
        /// How long the harness waited.
        waited: Duration,
        /// The end of QEMU's stderr.
        stderr: String,
    },
    /// QEMU did not answer a command in time.
    #[error("no reply to qtest command `{command}` within {waited:?}")]
    ReplyTimeout {
        /// The command (truncated).
        command: String,
        /// How long the harness waited.
        waited: Duration,
    },
    /// QEMU answered `FAIL` (or `ERR`).
    #[error("qtest command `{command}` failed: {reply}")]
    Fail {
        /// The command (truncated).
        command: String,
        /// QEMU's answer.
        reply: String,
    },
    /// QEMU's answer could not be parsed.
    #[error("malformed reply to qtest command `{command}`: {reply:?}")]
    Malformed {
        /// The command (truncated).
        command: String,
        /// QEMU's answer (truncated).
        reply: String,
    },
    /// QEMU exited (or closed the socket).
    #[error("QEMU exited ({status}); tail of its stderr:\n{stderr}")]
    Exited {
        /// The exit status, when known.
        status: String,
        /// The end of QEMU's stderr.
        stderr: String,
    },
    /// The qtest session failed earlier and is out of step with QEMU.
    #[error("qtest session unusable after an earlier error: {0}")]
    Broken(String),
    /// The machine configuration is not usable.
    #[error("invalid QEMU configuration: {0}")]
    Config(String),
    /// No PCI function on bus 0 has this vendor and device id.
    #[error("no PCI device {vendor:04x}:{device:04x} on bus 0")]
    DeviceNotFound {
        /// Vendor id.
        vendor: u16,
        /// Device id.
        device: u16,
    },
    /// A BAR cannot be assigned (unimplemented, I/O, or no room left in the MMIO window).
    #[error("cannot assign BAR{bar} of {bdf}: {reason}")]
    Bar {
        /// The function (`BB:DD.F`).
        bdf: String,
        /// The BAR index.
        bar: u8,
        /// Why.
        reason: String,
    },
    /// An edu DMA was refused before it started (QEMU aborts on an out-of-range edu DMA).
    #[error("edu DMA of {len:#x} bytes at buffer offset {offset:#x} is empty or does not fit the edu buffer (at most 4095 bytes)")]
    EduRange {
        /// Offset in the edu buffer.
        offset: u32,
        /// Length.
        len: u32,
    },
    /// The edu device did not finish a DMA in time.
    #[error("edu DMA did not complete within {waited:?} (command register {cmd:#x})")]
    EduTimeout {
        /// How long the harness polled.
        waited: Duration,
        /// The last value of the command register.
        cmd: u64,
    },
}

impl QemuError {
    /// The [`HostError`] a plugin sees for this failure at `addr`: every failure of the QEMU
    /// session itself is [`HostError::PLATFORM`].
    pub fn to_host_error(&self, addr: u64) -> HostError {
        HostError::new(HostError::PLATFORM, addr)
    }
}

/// Result of the QEMU platform.
pub type QemuResult<T> = Result<T, QemuError>;
