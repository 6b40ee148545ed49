//! The error a plugin returns across the boundary.

use std::fmt;

use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// What kind of failure a plugin reports. An open set of numbered codes.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// A table page (or other memory) could not be allocated.
    pub const NO_MEMORY: ErrorCode = ErrorCode(1);
    /// An argument is malformed (unaligned, zero length, unknown kind).
    pub const INVALID: ErrorCode = ErrorCode(2);
    /// The unit cannot do this.
    pub const UNSUPPORTED: ErrorCode = ErrorCode(3);
    /// The object is in use.
    pub const BUSY: ErrorCode = ErrorCode(4);
    /// A hardware status bit did not change in time.
    pub const TIMEOUT: ErrorCode = ErrorCode(5);
    /// The unit reported an error (bad register value, queue error).
    pub const HARDWARE: ErrorCode = ErrorCode(6);
    /// The plugin panicked; it caught the panic at the boundary.
    pub const PANICKED: ErrorCode = ErrorCode(7);
    /// No such object (HWPT handle, attachment, mapping).
    pub const NOT_FOUND: ErrorCode = ErrorCode(8);
    /// Outside the unit's address width or the HWPT's aperture.
    pub const OUT_OF_RANGE: ErrorCode = ErrorCode(9);
    /// Something is already mapped or attached there.
    pub const EXISTS: ErrorCode = ErrorCode(10);
    /// A host service (memory, MMIO) failed for a reason other than allocation.
    pub const HOST: ErrorCode = ErrorCode(11);

    /// Short name of the code.
    pub fn name(self) -> &'static str {
        match self {
            Self::NO_MEMORY => "no-memory",
            Self::INVALID => "invalid",
            Self::UNSUPPORTED => "unsupported",
            Self::BUSY => "busy",
            Self::TIMEOUT => "timeout",
            Self::HARDWARE => "hardware",
            Self::PANICKED => "panicked",
            Self::NOT_FOUND => "not-found",
            Self::OUT_OF_RANGE => "out-of-range",
            Self::EXISTS => "exists",
            Self::HOST => "host",
            _ => "unknown",
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error returned by a plugin.
#[repr(C)]
#[derive(StableAbi, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// The kind of failure.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: RString,
}

impl PluginError {
    /// An error of `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: RString::from(message.into()) }
    }
    /// [`ErrorCode::NO_MEMORY`].
    pub fn no_memory(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NO_MEMORY, message)
    }
    /// [`ErrorCode::INVALID`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::INVALID, message)
    }
    /// [`ErrorCode::UNSUPPORTED`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::UNSUPPORTED, message)
    }
    /// [`ErrorCode::NOT_FOUND`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NOT_FOUND, message)
    }
}

impl fmt::Debug for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for PluginError {}
