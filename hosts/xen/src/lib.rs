//! ioasis Xen host adapter, bottom layer: typed Xen hypercalls.
//!
//! [`Xen`] issues `__HYPERVISOR_xen_version`, `__HYPERVISOR_sysctl` and `__HYPERVISOR_domctl`
//! through a [`Transport`]: the real one is Linux's `/dev/xen/privcmd`
//! ([`transport::privcmd::Privcmd`]); unit tests use a recorded-reply test double
//! ([`transport::recorded::Recorded`]). Buffers are `#[repr(C)]` mirrors of Xen 4.17's public
//! headers ([`abi`]); the interface versions are discovered at run time and a Xen whose layouts
//! are unknown is refused with [`XenError::InterfaceMismatch`] before any domctl/sysctl is sent.

pub mod abi;
pub mod error;
pub mod hypercall;
pub mod transport;

// backend modules: added by the backend engineer

pub use abi::{InterfaceVersions, DOMID_INVALID, DOMID_IO, DOMID_SELF};
pub use error::XenError;
pub use hypercall::{
    DomId, DomainConfig, DomainInfo, ParseSbdfError, PhysInfo, Sbdf, Xen, DESTROY_RETRY_LIMIT,
    MEMORY_MAPPING_CALL_LIMIT,
};
pub use transport::{BufferMemory, HypercallBuffer, Transport};
