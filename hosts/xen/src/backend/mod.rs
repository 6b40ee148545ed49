//! ioasis's backend interface spoken in Xen's terms: on Xen the hypervisor owns the IOMMU, so
//! the "unit" is Xen itself, reached by domctl from dom0.
//!
//! | ioasis | Xen |
//! |---|---|
//! | IOAS of a guest ([`ioasis::AddressSpace::guest`]) | the domain's guest-physical space (its p2m) |
//! | paging HWPT on that IOAS | the domain (handle = domid) |
//! | map / unmap | `XEN_DOMCTL_iomem_permission` + `XEN_DOMCTL_memory_mapping` (MMIO passthrough) |
//! | attach | `XEN_DOMCTL_test_assign_device`, then `XEN_DOMCTL_assign_device` |
//! | detach, attach to a blocking HWPT | `XEN_DOMCTL_deassign_device` |
//! | must-share-IOAS | `XEN_DOMCTL_get_device_group` |
//!
//! Negotiation grants what Xen offers — requester-id DMA for a device Xen can assign — and
//! refuses the rest with Xen's reason. The backend is an in-process backend
//! ([`ioasis::loader::Plugin::from_host`]): it needs the hypercall handle, which no plugin
//! loaded from a file could be given.

mod hwpt;
mod negotiate;
mod platform;
mod unit;

#[cfg(test)]
mod tests;

pub use platform::XenPlatform;
pub use unit::{PciView, XenBackend, BLOCKED_HANDLE};

use ioasis::abi::{ErrorCode, PluginError};

use crate::XenError;

/// A hypercall failure as the plugin error the framework reports, with an error code chosen
/// from Xen's errno.
pub(crate) fn plugin_error(what: &str, e: &XenError) -> PluginError {
    let code = match e.errno() {
        Some(libc_errno::ESRCH) | Some(libc_errno::ENODEV) | Some(libc_errno::ENOENT) => ErrorCode::NOT_FOUND,
        Some(libc_errno::EBUSY) | Some(libc_errno::EEXIST) => ErrorCode::BUSY,
        Some(libc_errno::EINVAL) => ErrorCode::INVALID,
        Some(libc_errno::EOPNOTSUPP) | Some(libc_errno::ENOSYS) => ErrorCode::UNSUPPORTED,
        Some(libc_errno::ENOMEM) | Some(libc_errno::ENOSPC) => ErrorCode::NO_MEMORY,
        Some(_) => ErrorCode::HARDWARE,
        None => ErrorCode::HOST,
    };
    PluginError::new(code, format!("{what}: {e}"))
}

/// The errno values Xen returns (Xen uses Linux's numbering on x86).
pub(crate) mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const ESRCH: i32 = 3;
    pub const ENOMEM: i32 = 12;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const ENODEV: i32 = 19;
    pub const EINVAL: i32 = 22;
    pub const ENOSPC: i32 = 28;
    pub const ENOSYS: i32 = 38;
    pub const EOPNOTSUPP: i32 = 95;
}
