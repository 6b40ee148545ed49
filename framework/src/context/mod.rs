//! The context: owns every object by id and tears them down in a safe order.
//!
//! A [`Context`] is `Send + Sync`. Control operations (bind, negotiate, allocate, attach,
//! detach, destroy) are serialised; map and unmap are not: threads map and unmap disjoint
//! ranges of one IOAS at the same time, each crossing into every backend once per range.

mod access;
mod attach;
mod fault;
mod hwpt;
mod map;
mod objects;
mod viommu;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use abi_stable::std_types::RString;

use crate::abi::{PluginError, UnitDesc};
use crate::addr::{AddressSpace, IovaRange, PhysAddr};
use crate::caps::UnitCaps;
use crate::contract::{Contract, Negotiation, SharedIoas};
use crate::device::DeviceDesc;
use crate::error::{Error, Result};
use crate::intent::Intent;
use crate::loader::Plugin;
use crate::object::{DeviceId, FaultQueueId, HwptId, IoasId, ObjectId, UnitId};
use crate::platform::{FailNth, Platform};
use crate::services::UnitServices;

pub(crate) use access::{AccessObj, Pins};
pub use access::{AccessOps, MAX_PIN_PAGES, MAX_RW_BYTES};
pub use attach::Target;
pub use fault::{QueuedFault, MAX_POLL_BATCHES};
pub use hwpt::{HwptSpec, MAX_DIRTY_BITS};
pub(crate) use objects::{Attachment, DeviceObj, FaultQueue, HwptObj, IoasObj, PendingRequest, UnitObj};
use viommu::{HwQueueObj, VdeviceObj, VeventQueue, ViommuObj};
pub use viommu::{VirtualEvent, VirtualEvents, INVALIDATE_MAX, VEVENTQ_MAX_DEPTH};

/// Every object of a context.
#[derive(Default)]
struct Objects {
    units: BTreeMap<ObjectId, Arc<UnitObj>>,
    devices: BTreeMap<ObjectId, Arc<DeviceObj>>,
    ioases: BTreeMap<ObjectId, Arc<IoasObj>>,
    hwpts: BTreeMap<ObjectId, Arc<HwptObj>>,
    queues: BTreeMap<ObjectId, Arc<FaultQueue>>,
    viommus: BTreeMap<ObjectId, Arc<ViommuObj>>,
    vdevices: BTreeMap<ObjectId, Arc<VdeviceObj>>,
    veventqs: BTreeMap<ObjectId, Arc<VeventQueue>>,
    hw_queues: BTreeMap<ObjectId, Arc<HwQueueObj>>,
    accesses: BTreeMap<ObjectId, Arc<AccessObj>>,
}

/// The root of the object model.
pub struct Context {
    platform: Arc<dyn Platform>,
    fail: Arc<FailNth>,
    next_id: crate::object::Ids,
    objects: RwLock<Objects>,
    control: Mutex<()>,
    platform_reserved: Mutex<Vec<(IovaRange, String)>>,
    fault_log: Mutex<std::collections::VecDeque<crate::abi::Fault>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Context {
    /// A context on `platform`.
    pub fn new(platform: Arc<dyn Platform>) -> Self {
        Self {
            platform,
            fail: Arc::new(FailNth::default()),
            next_id: crate::object::Ids::starting_at(1),
            objects: RwLock::new(Objects::default()),
            control: Mutex::new(()),
            platform_reserved: Mutex::new(Vec::new()),
            fault_log: Mutex::new(Default::default()),
        }
    }

    /// The allocation-failure injector shared by every unit of this context.
    pub fn fail_nth(&self) -> &FailNth {
        &self.fail
    }

    /// Table pages the platform has handed out now.
    pub fn table_pages(&self) -> u64 {
        self.platform.table_pages()
    }

    /// The platform.
    pub fn platform(&self) -> &Arc<dyn Platform> {
        &self.platform
    }

    /// A region no device may have mapped, for every device (x86's MSI window
    /// 0xFEE00000-0xFEEFFFFF, an ITS doorbell): applied to each IOAS a device attaches to.
    pub fn add_platform_reserved(&self, range: IovaRange, why: &str) {
        lock(&self.platform_reserved).push((range, why.to_string()));
    }

    fn new_id(&self) -> ObjectId {
        self.next_id.next()
    }

    fn read(&self) -> RwLockReadGuard<'_, Objects> {
        self.objects.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Objects> {
        self.objects.write().unwrap_or_else(|p| p.into_inner())
    }

    fn control(&self) -> MutexGuard<'_, ()> {
        lock(&self.control)
    }

    pub(crate) fn unit(&self, id: UnitId) -> Result<Arc<UnitObj>> {
        self.read().units.get(&id.0).cloned().ok_or(Error::NoSuchObject { id: id.0, kind: "unit" })
    }

    pub(crate) fn device(&self, id: DeviceId) -> Result<Arc<DeviceObj>> {
        self.read().devices.get(&id.0).cloned().ok_or(Error::NoSuchObject { id: id.0, kind: "device" })
    }

    pub(crate) fn ioas(&self, id: IoasId) -> Result<Arc<IoasObj>> {
        self.read().ioases.get(&id.0).cloned().ok_or(Error::NoSuchObject { id: id.0, kind: "IOAS" })
    }

    pub(crate) fn hwpt(&self, id: HwptId) -> Result<Arc<HwptObj>> {
        self.read().hwpts.get(&id.0).cloned().ok_or(Error::NoSuchObject { id: id.0, kind: "HWPT" })
    }

    pub(crate) fn queue(&self, id: FaultQueueId) -> Result<Arc<FaultQueue>> {
        self.read().queues.get(&id.0).cloned().ok_or(Error::NoSuchObject { id: id.0, kind: "fault queue" })
    }

    /// Probes a unit with a plugin's backend: `name` as firmware calls it, its register window
    /// at `mmio_base`, backend-specific `params` (TOML text).
    pub fn add_unit(
        &self,
        plugin: &Arc<Plugin>,
        name: &str,
        mmio_base: PhysAddr,
        segment: u16,
        params: &str,
    ) -> Result<UnitId> {
        let _c = self.control();
        if self.read().units.values().any(|u| u.name == name) {
            return Err(Error::Invalid(format!("a unit named {name} exists already")));
        }
        if let Some(u) = self.read().units.values().find(|u| u.mmio_base == mmio_base) {
            return Err(Error::WindowInUse { base: mmio_base, unit: u.name.clone() });
        }
        if let Some(why) = plugin.failed() {
            return Err(Error::PluginFailed { plugin: plugin.name.clone(), why: why.to_string() });
        }
        let desc = UnitDesc { name: RString::from(name), mmio_base, segment, params: RString::from(params) };
        let services = UnitServices::boxed(self.platform.clone(), mmio_base, name, self.fail.clone());
        let hw = plugin.backend().probe(&desc, services).into_result().map_err(|error| {
            plugin.note(&error);
            Error::Plugin { plugin: plugin.name.clone(), unit: name.to_string(), op: "probe", error }
        })?;
        let caps = hw.caps();
        if let Err(what) = caps.check() {
            if let Err(e) = hw.shutdown().into_result() {
                tracing::error!(unit = name, "shutdown of a refused unit failed: {e}");
            }
            return Err(Error::BadAnswer { plugin: plugin.name.clone(), unit: name.to_string(), op: "caps", what });
        }
        let id = UnitId(self.new_id());
        tracing::info!(unit = name, plugin = %plugin.name, model = %caps.model, "unit probed");
        let unit =
            Arc::new(UnitObj { id, name: name.to_string(), plugin: plugin.clone(), hw, caps, segment, mmio_base });
        self.write().units.insert(id.0, unit);
        Ok(id)
    }

    /// The capabilities a unit's backend read from it.
    pub fn unit_caps(&self, id: UnitId) -> Result<UnitCaps> {
        Ok(self.unit(id)?.caps.clone())
    }

    /// Finds a unit by name.
    pub fn unit_by_name(&self, name: &str) -> Option<UnitId> {
        self.read().units.values().find(|u| u.name == name).map(|u| u.id)
    }

    /// Every unit: id, name, plugin name.
    pub fn units(&self) -> Vec<(UnitId, String, String)> {
        self.read().units.values().map(|u| (u.id, u.name.clone(), u.plugin.name.clone())).collect()
    }

    /// Binds a device, as a host adapter does when it takes a device over.
    pub fn bind_device(&self, desc: DeviceDesc) -> Result<DeviceId> {
        let _c = self.control();
        let unit = self
            .read()
            .units
            .values()
            .find(|u| u.name == desc.unit)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("device {}: no unit named {}", desc.name, desc.unit)))?;
        let info = desc.info();
        if self.read().devices.values().any(|d| Arc::ptr_eq(&d.unit, &unit) && d.desc.info().dev == info.dev) {
            return Err(Error::Invalid(format!("device {} behind unit {} is bound already", info.dev, unit.name)));
        }
        if desc.pasid_bits > 20 {
            return Err(Error::Invalid(format!("device {}: PASID width {} > 20", desc.name, desc.pasid_bits)));
        }
        if !(12..=64).contains(&desc.dma_bits) {
            return Err(Error::Invalid(format!(
                "device {}: DMA address width {} is not in 12..=64",
                desc.name, desc.dma_bits
            )));
        }
        let id = DeviceId(self.new_id());
        self.write().devices.insert(id.0, Arc::new(DeviceObj::new(id, desc, unit)));
        Ok(id)
    }

    /// The devices bound now that cannot be isolated from `dev`.
    fn peers_of(&self, dev: &DeviceObj) -> Option<SharedIoas> {
        let boundary = dev.desc.no_acs_below.clone()?;
        let peers = self
            .read()
            .devices
            .values()
            .filter(|d| d.id != dev.id && Arc::ptr_eq(&d.unit, &dev.unit))
            .filter(|d| d.desc.no_acs_below.as_deref() == Some(boundary.as_str()))
            .map(|d| (d.id, d.desc.name.clone()))
            .collect();
        Some(SharedIoas { boundary, peers })
    }

    /// Negotiates a device's intent with its unit's backend. On success the contract is the
    /// device's from now on; a refusal lists every unmet item ([`Error::Refused`]).
    pub fn negotiate(&self, device: DeviceId, intent: &Intent) -> Result<Contract> {
        let _c = self.control();
        let dev = self.device(device)?;
        if !lock(&dev.attached).is_empty() {
            return Err(Error::Busy { what: "device", id: device.0, by: "attachments (detach first)".into() });
        }
        let items = Negotiation::backend_items(intent);
        let info = dev.desc.info();
        let verdicts = dev.unit.hw.negotiate(&info, items.as_slice().into()).into_vec();
        let n = Negotiation {
            device,
            desc: &dev.desc,
            unit: dev.unit.id,
            plugin: &dev.unit.plugin.name,
            caps: &dev.unit.caps,
            shared: self.peers_of(&dev),
        };
        match n.conclude(intent, &verdicts) {
            Ok(c) => {
                *lock(&dev.contract) = Some(c.clone());
                Ok(c)
            }
            Err(r) => Err(Error::Refused(Box::new(r))),
        }
    }

    /// The device's contract, if it has one.
    pub fn contract(&self, device: DeviceId) -> Result<Option<Contract>> {
        Ok(lock(&self.device(device)?.contract).clone())
    }

    /// A new, empty IOAS in the host's own address space.
    pub fn alloc_ioas(&self) -> IoasId {
        self.alloc_ioas_in(AddressSpace::host())
    }

    /// A new, empty IOAS that is `space` (a guest's physical space, for a host adapter whose
    /// hypervisor owns the IOMMU). Backends see `space` when they allocate its paging HWPTs.
    pub fn alloc_ioas_in(&self, space: AddressSpace) -> IoasId {
        let id = IoasId(self.new_id());
        self.write().ioases.insert(id.0, Arc::new(IoasObj::new(id, space)));
        id
    }

    /// Whose address space `ioas` is.
    pub fn ioas_space(&self, ioas: IoasId) -> Result<AddressSpace> {
        Ok(self.ioas(ioas)?.space)
    }

    /// A fault queue: page requests on HWPTs allocated with it arrive here.
    pub fn alloc_fault_queue(&self) -> FaultQueueId {
        let id = FaultQueueId(self.new_id());
        self.write().queues.insert(id.0, Arc::new(FaultQueue::new(id)));
        id
    }

    /// Destroys an object. Refused ([`Error::Busy`]) while anything uses it.
    pub fn destroy(&self, id: impl Into<ObjectId>) -> Result<()> {
        let id = id.into();
        let _c = self.control();
        let access = self.read().accesses.get(&id).cloned();
        if let Some(a) = access {
            return self.destroy_access(&a, false);
        }
        let mut o = self.write();
        if let Some(d) = o.devices.get(&id) {
            if !lock(&d.attached).is_empty() {
                return Err(Error::Busy { what: "device", id, by: "attachments".into() });
            }
            if let Some(v) = o.vdevices.values().find(|v| v.device.id.0 == id) {
                return Err(Error::Busy { what: "device", id, by: format!("vDEVICE {}", v.id) });
            }
            o.devices.remove(&id);
            return Ok(());
        }
        if let Some(h) = o.hwpts.get(&id).cloned() {
            let users = lock(&h.users).len();
            if users > 0 {
                return Err(Error::Busy { what: "HWPT", id, by: format!("{users} attachment(s)") });
            }
            if o.hwpts.values().any(|c| c.parent.as_ref().is_some_and(|p| p.id.0 == id)) {
                return Err(Error::Busy { what: "HWPT", id, by: "nested HWPTs".into() });
            }
            if let Some(v) = o.viommus.values().find(|v| v.parent.id.0 == id) {
                return Err(Error::Busy { what: "HWPT", id, by: format!("vIOMMU {}", v.id) });
            }
            if let Some(ioas) = &h.ioas {
                ioas.remove_hwpt(&h);
            }
            o.hwpts.remove(&id);
            return Ok(());
        }
        if let Some(i) = o.ioases.get(&id) {
            if let Some(a) = o.accesses.values().find(|a| a.ioas_id() == i.id) {
                return Err(Error::Busy { what: "IOAS", id, by: format!("access {}", a.id) });
            }
            let users = o.hwpts.values().filter(|h| h.ioas.as_ref().is_some_and(|x| x.id.0 == id)).count()
                + o.devices.values().filter(|d| lock(&d.attached).values().any(|a| a.ioas_id() == Some(i.id))).count();
            if users > 0 {
                return Err(Error::Busy { what: "IOAS", id, by: format!("{users} HWPT(s) or device(s)") });
            }
            o.ioases.remove(&id);
            return Ok(());
        }
        if o.queues.contains_key(&id) {
            if o.hwpts.values().any(|h| h.fault_queue.as_ref().is_some_and(|q| q.id.0 == id)) {
                return Err(Error::Busy { what: "fault queue", id, by: "HWPTs".into() });
            }
            o.queues.remove(&id);
            return Ok(());
        }
        if let Some(v) = o.viommus.get(&id) {
            let users = o.hwpts.values().filter(|h| h.viommu.as_ref().is_some_and(|x| x.id == v.id)).count()
                + o.vdevices.values().filter(|x| x.viommu.id == v.id).count()
                + o.veventqs.values().filter(|x| x.viommu.id == v.id).count()
                + o.hw_queues.values().filter(|x| x.viommu.id == v.id).count();
            if users > 0 {
                return Err(Error::Busy {
                    what: "vIOMMU",
                    id,
                    by: format!("{users} nested HWPT(s), vDEVICE(s), event or hardware queue(s)"),
                });
            }
            o.viommus.remove(&id);
            return Ok(());
        }
        if let Some(v) = o.vdevices.get(&id).cloned() {
            if let Err(e) = v.viommu.hw.clear_vdevice(&v.device.desc.info()).into_result() {
                return Err(plugin_err(&v.viommu.unit, "clear_vdevice", e));
            }
            o.vdevices.remove(&id);
            return Ok(());
        }
        if o.veventqs.remove(&id).is_some() || o.hw_queues.remove(&id).is_some() {
            return Ok(());
        }
        if o.units.contains_key(&id) {
            if o.devices.values().any(|d| d.unit.id.0 == id) || o.hwpts.values().any(|h| h.unit.id.0 == id) {
                return Err(Error::Busy { what: "unit", id, by: "devices or HWPTs".into() });
            }
            let u = o.units.remove(&id).expect("checked above");
            drop(o);
            return u.shutdown();
        }
        Err(Error::NoSuchObject { id, kind: "object" })
    }

    /// Tears everything down in a safe order: detach every device (PASIDs first), destroy
    /// accesses (their pins dropped after asking them to unpin), hardware and event queues,
    /// vDEVICEs, nested HWPTs, vIOMMUs, then paging HWPTs, IOASes, devices, fault queues, and
    /// shut units down.
    /// Returns the first backend error; the teardown goes on regardless.
    pub fn teardown(&self) -> Result<()> {
        let mut first: Option<Error> = None;
        let devices: Vec<Arc<DeviceObj>> = self.read().devices.values().cloned().collect();
        for d in devices {
            let mut keys: Vec<_> = lock(&d.attached).keys().copied().collect();
            keys.sort_by_key(|k| k.is_none());
            for pasid in keys {
                if let Err(e) = self.detach(d.id, pasid) {
                    first.get_or_insert(e);
                }
            }
        }
        let accesses: Vec<Arc<AccessObj>> = self.read().accesses.values().cloned().collect();
        for a in accesses {
            let _c = self.control();
            if let Err(e) = self.destroy_access(&a, true) {
                first.get_or_insert(e);
            }
        }
        let _c = self.control();
        // Whatever a failed detach left outstanding is answered before the units go.
        self.abandon_page_requests(|_| false);
        let mut o = self.write();
        o.hw_queues.clear();
        o.veventqs.clear();
        for (_, v) in std::mem::take(&mut o.vdevices) {
            if let Err(e) = v.viommu.hw.clear_vdevice(&v.device.desc.info()).into_result() {
                first.get_or_insert(plugin_err(&v.viommu.unit, "clear_vdevice", e));
            }
        }
        let nested: Vec<ObjectId> = o.hwpts.values().filter(|h| h.parent.is_some()).map(|h| h.id.0).collect();
        for id in nested {
            o.hwpts.remove(&id);
        }
        o.viommus.clear();
        for (_, h) in std::mem::take(&mut o.hwpts) {
            if let Some(ioas) = &h.ioas {
                ioas.remove_hwpt(&h);
            }
        }
        o.accesses.clear();
        o.ioases.clear();
        o.devices.clear();
        o.queues.clear();
        let units = std::mem::take(&mut o.units);
        drop(o);
        for (_, u) in units {
            if let Err(e) = u.shutdown() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The unrecoverable faults logged so far, oldest first, without draining them.
    pub fn fault_log(&self) -> Vec<crate::abi::Fault> {
        lock(&self.fault_log).iter().copied().collect()
    }

    /// Unrecoverable faults the units recorded (read by [`Context::poll_faults`]); drained.
    pub fn take_fault_log(&self) -> Vec<crate::abi::Fault> {
        lock(&self.fault_log).drain(..).collect()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::error!("teardown: {e}");
        }
    }
}

pub(crate) fn plugin_err(unit: &UnitObj, op: &'static str, error: PluginError) -> Error {
    unit.plugin.note(&error);
    Error::Plugin { plugin: unit.plugin.name.clone(), unit: unit.name.clone(), op, error }
}

/// A backend's answer to `op` that the framework cannot use.
pub(crate) fn bad_answer(unit: &UnitObj, op: &'static str, what: String) -> Error {
    Error::BadAnswer { plugin: unit.plugin.name.clone(), unit: unit.name.clone(), op, what }
}
