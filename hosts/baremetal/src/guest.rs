//! The bare-metal harness as a [`GuestHost`]: a guest is an IOAS of the simulated machine.
//!
//! There is no hypervisor here, so a "guest" is only its address space: an IOAS the caller fills
//! (with [`Context::map`]) and attaches devices to. It lets code written against [`GuestHost`]
//! run on the simulated machine exactly as on KVM or Xen.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ioasis::guest::{Guest, GuestHost};
use ioasis::{Context, DeviceId, Error, IoasId, Result};

/// Guests as IOASes of one [`Context`] (see the module docs).
pub struct BareMetalHost {
    ctx: Arc<Context>,
    devices: Vec<DeviceId>,
    guests: Mutex<BTreeMap<u64, IoasId>>,
    next: Mutex<u64>,
}

impl BareMetalHost {
    /// Guests in `ctx`, which may be given `devices` (bound in `ctx`).
    pub fn new(ctx: Arc<Context>, devices: Vec<DeviceId>) -> Self {
        Self { ctx, devices, guests: Mutex::new(BTreeMap::new()), next: Mutex::new(1) }
    }
}

impl GuestHost for BareMetalHost {
    fn name(&self) -> &'static str {
        "baremetal"
    }

    fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    fn assignable(&self) -> Vec<DeviceId> {
        self.devices.clone()
    }

    fn create_guest(&self, _name: &str) -> Result<Guest> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let id = *next;
        *next += 1;
        let ioas = self.ctx.alloc_ioas();
        self.guests.lock().unwrap_or_else(|p| p.into_inner()).insert(id, ioas);
        Ok(Guest { id, ioas })
    }

    fn destroy_guest(&self, guest: Guest) -> Result<()> {
        let mut guests = self.guests.lock().unwrap_or_else(|p| p.into_inner());
        if guests.get(&guest.id) != Some(&guest.ioas) {
            return Err(Error::Invalid(format!("no guest {} with IOAS {} on this host", guest.id, guest.ioas)));
        }
        self.ctx.destroy(guest.ioas)?;
        guests.remove(&guest.id);
        Ok(())
    }
}
