//! The driver's errors, typed, and the [`PluginError`] each becomes at the plugin boundary.

use ioasis::abi::{ErrorCode, PluginError};
use ioasis::DeviceRef;

/// What can go wrong in the driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The ID register does not say "ACMETINY" (acme spec §1).
    #[error("unit {unit} is not an acme-tiny unit (ID register {id:#x})")]
    NotAcme {
        /// The host's name for the unit.
        unit: String,
        /// What ID read.
        id: u64,
    },
    /// The unit description's `params` are not acme-tiny's.
    #[error("unit {unit}: bad acme-tiny params: {reason}")]
    BadParams {
        /// The host's name for the unit.
        unit: String,
        /// Why.
        reason: String,
    },
    /// A register did not reach the value the driver waited for.
    #[error("{what}: register {reg:#x} stuck at {value:#x}")]
    Timeout {
        /// What the driver waited for.
        what: &'static str,
        /// The register.
        reg: u64,
        /// Its last value.
        value: u64,
    },
    /// The unit dropped something (acme spec §1 STATUS).
    #[error("the unit reported {0}")]
    Hardware(&'static str),
    /// The unit lacks what was asked.
    #[error("the acme-tiny unit has no {0}")]
    Unsupported(String),
    /// A malformed request.
    #[error("{0}")]
    Invalid(String),
    /// The HWPT was made by another unit or another plugin.
    #[error("HWPT {0:#x} was not made by this acme-tiny unit")]
    ForeignHwpt(u64),
    /// Every domain id is in use (acme spec §2).
    #[error("all {0} domain ids are in use")]
    NoDomainId(u16),
    /// The device is not a PCI function on the unit's segment (acme spec §2).
    #[error("{0} is not a requester id on this unit's segment")]
    NotARequester(DeviceRef),
    /// Nothing attached there.
    #[error("{0} has nothing attached")]
    NotAttached(DeviceRef),
    /// The unit was shut down.
    #[error("the unit is shut down")]
    ShutDown,
    /// A host service, or the framework's page-table walker, failed.
    #[error(transparent)]
    Host(#[from] PluginError),
}

impl From<DriverError> for PluginError {
    fn from(e: DriverError) -> Self {
        let code = match &e {
            DriverError::Host(p) => return p.clone(),
            DriverError::NotAcme { .. } | DriverError::Hardware(_) => ErrorCode::HARDWARE,
            DriverError::BadParams { .. } | DriverError::Invalid(_) | DriverError::NotARequester(_) => {
                ErrorCode::INVALID
            }
            DriverError::Timeout { .. } => ErrorCode::TIMEOUT,
            DriverError::Unsupported(_) => ErrorCode::UNSUPPORTED,
            DriverError::ForeignHwpt(_) | DriverError::NotAttached(_) => ErrorCode::NOT_FOUND,
            DriverError::NoDomainId(_) => ErrorCode::NO_MEMORY,
            DriverError::ShutDown => ErrorCode::BUSY,
        };
        PluginError::new(code, e.to_string())
    }
}

/// The driver's results.
pub type Result<T, E = DriverError> = std::result::Result<T, E>;
