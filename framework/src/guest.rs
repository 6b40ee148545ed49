//! Guests as host adapters make them: the interface hypervisor-side code uses on every host.
//!
//! A guest's physical address space is an IOAS. On KVM the VMM builds its tables (IOVA = guest
//! physical, kept in step with the memory slots); on Xen the hypervisor owns it (a domain's p2m)
//! and the IOAS is allocated with [`crate::AddressSpace::guest`]; on the bare-metal harness it is
//! a plain IOAS. Code written against [`GuestHost`] — create a guest, negotiate a device's
//! intent, attach it to the guest's IOAS, detach, destroy — runs unchanged on all of them.

use std::sync::Arc;

use crate::context::Context;
use crate::error::Result;
use crate::object::{DeviceId, IoasId};

/// A guest a host adapter created.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guest {
    /// The host's id of the guest (a Xen domid, a KVM VM number).
    pub id: u64,
    /// The IOAS that is the guest's physical address space.
    pub ioas: IoasId,
}

/// What a host adapter offers hypervisor-side code.
pub trait GuestHost {
    /// The host's name (`kvm`, `xen`, `baremetal`), for messages.
    fn name(&self) -> &'static str;
    /// The context every device and IOAS of this host lives in.
    fn context(&self) -> &Arc<Context>;
    /// Devices the host can give to guests, bound in [`GuestHost::context`].
    fn assignable(&self) -> Vec<DeviceId>;
    /// Creates a guest (not running) whose physical space is a new IOAS.
    fn create_guest(&self, name: &str) -> Result<Guest>;
    /// Destroys a guest. Refused ([`crate::Error::Busy`]) while devices are attached to its IOAS.
    fn destroy_guest(&self, guest: Guest) -> Result<()>;
}
