//! The KVM adapter as a [`GuestHost`]: a guest is a real KVM VM whose RAM is one memory slot,
//! and whose IOAS is kept in step with its slots (IOVA = guest-physical).
//!
//! Guest `n` (from 0) gets machine RAM `[ram_base + n * ram_per_guest, +ram_per_guest)` at
//! guest-physical 0. Destroying a guest refuses while anything is attached to its IOAS, then
//! removes its slot, destroys the IOAS and closes the VM.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ioasis::guest::{Guest, GuestHost};
use ioasis::{Context, DeviceId, Error, PhysAddr, Result};
use ioasis_baremetal::Machine;

use crate::{MemorySlots, Vm};

/// VMs on one simulated machine, as guests (see the module docs).
pub struct KvmHost {
    machine: Arc<Machine>,
    ctx: Arc<Context>,
    devices: Vec<DeviceId>,
    ram_base: u64,
    ram_per_guest: u64,
    max_guests: u64,
    guests: Mutex<BTreeMap<u64, MemorySlots>>,
}

fn host_err(op: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Host { host: "kvm", op, message: e.to_string() }
}

impl KvmHost {
    /// Guests on `machine`, whose devices (bound in `ctx`) may be given to guests; guest RAM is
    /// carved from `[ram_base, ram_base + max_guests * ram_per_guest)`.
    pub fn new(
        machine: Arc<Machine>,
        ctx: Arc<Context>,
        devices: Vec<DeviceId>,
        ram_base: u64,
        ram_per_guest: u64,
        max_guests: u64,
    ) -> Self {
        Self { machine, ctx, devices, ram_base, ram_per_guest, max_guests, guests: Mutex::new(BTreeMap::new()) }
    }

    /// Runs `f` on guest `id`'s memory slots (e.g. to add a slot or make a vCPU).
    pub fn with_slots<T>(&self, id: u64, f: impl FnOnce(&mut MemorySlots) -> T) -> Option<T> {
        self.guests.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&id).map(f)
    }
}

impl GuestHost for KvmHost {
    fn name(&self) -> &'static str {
        "kvm"
    }

    fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    fn assignable(&self) -> Vec<DeviceId> {
        self.devices.clone()
    }

    fn create_guest(&self, name: &str) -> Result<Guest> {
        let mut guests = self.guests.lock().unwrap_or_else(|p| p.into_inner());
        let id = (0..self.max_guests)
            .find(|i| !guests.contains_key(i))
            .ok_or_else(|| host_err("create guest", format!("all {} guest RAM regions are in use", self.max_guests)))?;
        let vm = Arc::new(Vm::new(self.machine.clone()).map_err(|e| host_err("create VM", e))?);
        let ioas = self.ctx.alloc_ioas();
        let mut slots = MemorySlots::new(vm, self.ctx.clone(), ioas);
        let pa = PhysAddr(self.ram_base + id * self.ram_per_guest);
        if let Err(e) = slots.add(0, 0, pa, self.ram_per_guest, 0) {
            let _ = self.ctx.destroy(ioas);
            return Err(host_err("add guest RAM slot", e));
        }
        tracing::info!(guest = id, name, %ioas, "KVM guest created");
        guests.insert(id, slots);
        Ok(Guest { id, ioas })
    }

    fn destroy_guest(&self, guest: Guest) -> Result<()> {
        let mut guests = self.guests.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slots) = guests.get_mut(&guest.id).filter(|s| s.ioas() == guest.ioas) else {
            return Err(Error::Invalid(format!("no guest {} with IOAS {} on this host", guest.id, guest.ioas)));
        };
        let users = self.ctx.ioas_hwpts(guest.ioas)?.len();
        if users > 0 {
            return Err(Error::Busy {
                what: "IOAS",
                id: guest.ioas.0,
                by: format!("{users} HWPT(s) of attached devices"),
            });
        }
        let ids: Vec<u32> = slots.slots().map(|s| s.id).collect();
        for id in ids {
            slots.remove(id).map_err(|e| host_err("remove guest slot", e))?;
        }
        self.ctx.destroy(guest.ioas)?;
        guests.remove(&guest.id);
        Ok(())
    }
}
