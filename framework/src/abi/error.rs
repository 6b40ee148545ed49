//! The error a plugin returns across the boundary.

use std::fmt;

use abi_stable::std_types::RString;
use abi_stable::StableAbi;

/// What kind of failure a plugin reports. An open set of numbered codes: ioasis's below
/// `0x1_0000`, a vendor's from [`ErrorCode::vendor`] (see [`crate::ids`]); an unknown vendor
/// code prints as `vendor-<vendor>:<n>`.
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

    /// Code `n` of the vendor whose PCI-SIG vendor id is `pci_vendor` (see [`crate::ids`]).
    ///
    /// # Panics
    ///
    /// When `pci_vendor` is `0x0000` or `0xffff` (no vendor's id); in a `const`, a build error.
    pub const fn vendor(pci_vendor: u16, n: u16) -> ErrorCode {
        ErrorCode(crate::ids::vendor(pci_vendor, n))
    }

    /// True when the code is a vendor's, not ioasis's.
    pub const fn is_vendor(self) -> bool {
        crate::ids::is_vendor(self.0)
    }

    /// Short name of the code (`unknown` for a code this version does not know; its
    /// [`Display`](fmt::Display) says whose it is).
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
        match self.name() {
            "unknown" => crate::ids::fmt_unnamed(f, "code", self.0),
            name => f.write_str(name),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_codes_print_with_their_vendor() {
        let acme = ErrorCode::vendor(0x1234, 3);
        assert!(acme.is_vendor() && !ErrorCode::HOST.is_vendor());
        assert_eq!(acme.to_string(), "vendor-1234:3");
        assert_eq!(ErrorCode(77).to_string(), "code#77");
        assert_eq!(ErrorCode::BUSY.to_string(), "busy");
        assert_eq!(PluginError::new(acme, "queue stalled").to_string(), "queue stalled (vendor-1234:3)");
    }
}
