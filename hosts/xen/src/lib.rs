//! ioasis Xen host adapter: ioasis on a Xen dom0, where the hypervisor owns the IOMMU.
//!
//! [`XenHost`] is the adapter: a [`ioasis::Context`] whose backend ([`backend`]) is Xen itself,
//! so attaching a device to a domain's IOAS is `XEN_DOMCTL_assign_device`, and negotiation
//! grants what Xen offers and refuses the rest with Xen's reasons.
//!
//! The bottom layer is typed Xen hypercalls.
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

pub mod backend;
mod host;

pub use abi::{InterfaceVersions, DOMID_FIRST_RESERVED, DOMID_INVALID, DOMID_IO, DOMID_SELF};
pub use error::XenError;
pub use host::{XenHost, PLUGIN_NAME};
pub use hypercall::{
    DomId, DomainConfig, DomainInfo, ParseSbdfError, PhysInfo, Sbdf, Xen, DESTROY_RETRY_LIMIT,
    MEMORY_MAPPING_CALL_LIMIT,
};
pub use transport::{BufferMemory, HypercallBuffer, Transport};
