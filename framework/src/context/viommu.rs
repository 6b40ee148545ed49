//! vIOMMUs, vDEVICEs, virtual event queues and hardware-accelerated guest queues (iommufd's
//! VIOMMU, VDEVICE, VEVENTQ and HW_QUEUE objects).
//!
//! A vIOMMU is created over a nesting-parent paging HWPT (the VM's stage-2); the VM's nested
//! HWPTs are allocated in it ([`HwptSpec::NestedIn`](super::HwptSpec::NestedIn)) and share its
//! tag. A vDEVICE gives a bound device the id the guest knows it by; the guest's invalidation
//! commands name those ids, and the backend maps them and refuses ids that are not the VM's.
//! Faults of nested translation (stage-1 faults, a bad guest configuration) of a device with a
//! vDEVICE reach the vIOMMU's event queue with the virtual id, in order, numbered, with a count
//! of events lost to overflow; faults in the stage-2 stay the host's.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use abi_stable::std_types::RResult;

use crate::abi::{
    no_viommu, Fault, HwQueueKind, HwQueueRequest, HwptKind, InvalidateOutcome, ViommuBox, ViommuFeatures, ViommuFlags,
    ViommuInfo, ViommuKind, ViommuRequest, VirtualCommand,
};
use crate::addr::{Iova, IovaRange, Pasid, PhysAddr, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::object::{DeviceId, HwQueueId, HwptId, VdeviceId, VeventQueueId, ViommuId};
use crate::prot::Prot;

use super::{lock, plugin_err, AccessOps, Context, DeviceObj, HwptObj, IoasObj, UnitObj};

/// Deepest virtual event queue.
pub const VEVENTQ_MAX_DEPTH: u32 = 1 << 16;
/// Most commands in one [`Context::viommu_invalidate`] call.
pub const INVALIDATE_MAX: usize = 1 << 16;

/// A vIOMMU.
pub(crate) struct ViommuObj {
    pub id: ViommuId,
    pub unit: Arc<UnitObj>,
    /// The nesting parent (stage-2).
    pub parent: Arc<HwptObj>,
    pub hw: ViommuBox,
    pub info: ViommuInfo,
}

/// A vDEVICE.
pub(crate) struct VdeviceObj {
    pub id: VdeviceId,
    pub viommu: Arc<ViommuObj>,
    pub device: Arc<DeviceObj>,
    pub virt_id: u64,
}

/// One fault of nested translation, as the VM sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualEvent {
    /// Sequence number: one per event the vIOMMU raised, lost ones included, so a gap
    /// shows where events were lost.
    pub seq: u32,
    /// The device's virtual id (its vDEVICE's), never the physical one.
    pub virt_id: u64,
    /// The PASID of the request, if it had one.
    pub pasid: Option<Pasid>,
    /// The faulting address (a stage-1 input address).
    pub addr: Iova,
    /// What the request wanted to do.
    pub access: Prot,
    /// Why it faulted ([`Fault`]'s reason codes).
    pub reason: u32,
}

/// What one read of a virtual event queue returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VirtualEvents {
    /// The events, oldest first.
    pub events: Vec<VirtualEvent>,
    /// Events lost because the queue was full, since the last read. They came after
    /// `events` (their sequence numbers follow the last one's).
    pub lost: u32,
}

/// A virtual event queue.
pub(crate) struct VeventQueue {
    pub id: VeventQueueId,
    pub viommu: Arc<ViommuObj>,
    pub depth: u32,
    pub state: Mutex<VeventState>,
}

#[derive(Default)]
pub(crate) struct VeventState {
    pub events: VecDeque<VirtualEvent>,
    pub next_seq: u32,
    pub lost: u32,
}

impl VeventQueue {
    fn push(&self, virt_id: u64, f: &Fault) {
        let mut s = lock(&self.state);
        let seq = s.next_seq;
        s.next_seq = s.next_seq.wrapping_add(1);
        if s.events.len() >= self.depth as usize {
            s.lost = s.lost.saturating_add(1);
            return;
        }
        s.events.push_back(VirtualEvent {
            seq,
            virt_id,
            pasid: f.pasid.into_option(),
            addr: f.addr,
            access: f.access,
            reason: f.reason,
        });
    }
}

/// A hardware-accelerated guest queue. Its pages stay pinned in the parent's IOAS while it
/// exists: the unit reads them.
pub(crate) struct HwQueueObj {
    pub id: HwQueueId,
    pub viommu: Arc<ViommuObj>,
    pub handle: u64,
    pub index: u32,
    pub ioas: Arc<IoasObj>,
}

impl Drop for HwQueueObj {
    fn drop(&mut self) {
        if let Err(e) = self.viommu.hw.free_hw_queue(self.handle).into_result() {
            tracing::error!(viommu = %self.viommu.id, "freeing hardware queue {}: {e}", self.id);
        }
        lock(&self.ioas.map).pins.release(self.id.0);
    }
}

/// The unmap callback of a hardware queue's pins: the unit reads the queue until it is
/// destroyed, so it cannot let go; the unmap is refused.
struct QueueHold(HwQueueId);

impl AccessOps for QueueHold {
    fn unmap(&self, iova: Iova, len: u64) {
        tracing::warn!(queue = %self.0, %iova, len, "unmap over a hardware queue's memory refused: destroy the queue first");
    }
}

impl Context {
    /// Creates a vIOMMU of `kind` over `parent`, a paging HWPT (the VM's stage-2), on the
    /// parent's unit. Refused, with the backend's reason, where the unit has none.
    pub fn alloc_viommu(&self, parent: HwptId, kind: ViommuKind, flags: ViommuFlags) -> Result<ViommuId> {
        let _c = self.control();
        if flags.0 & !ViommuFlags::KNOWN != 0 {
            return Err(Error::UnknownBits { what: "vIOMMU flags", bits: u64::from(flags.0 & !ViommuFlags::KNOWN) });
        }
        let parent = self.hwpt(parent)?;
        if parent.info.kind != HwptKind::PAGING {
            return Err(Error::Invalid(format!(
                "HWPT {} is {}, a vIOMMU's parent must be paging",
                parent.id,
                parent.info.kind.name()
            )));
        }
        let unit = parent.unit.clone();
        let req = ViommuRequest {
            kind,
            flags,
            parent: parent.hw.clone(),
            space: parent.ioas.as_ref().map_or(crate::AddressSpace::host(), |i| i.space),
        };
        let hw = match unit.plugin.ext_0_3() {
            Some(ext) => (ext.alloc_viommu())(&unit.hw, &req).into_result(),
            None => Err(no_viommu(&format!("plugin {} (interface {})", unit.plugin.name, unit.plugin.interface))),
        }
        .map_err(|e| plugin_err(&unit, "alloc_viommu", e))?;
        drop(req);
        let info = hw.info();
        if info.kind != kind || info.features.0 & !ViommuFeatures::KNOWN != 0 {
            return Err(Error::BadAnswer {
                plugin: unit.plugin.name.clone(),
                unit: unit.name.clone(),
                op: "alloc_viommu",
                what: format!("asked for a {kind} vIOMMU, got {info:?}"),
            });
        }
        let id = ViommuId(self.new_id());
        tracing::debug!(viommu = %id, unit = %unit.name, %kind, "vIOMMU allocated");
        self.write().viommus.insert(id.0, Arc::new(ViommuObj { id, unit, parent, hw, info }));
        Ok(id)
    }

    pub(crate) fn viommu(&self, id: ViommuId) -> Result<Arc<ViommuObj>> {
        self.read().viommus.get(&id.0).cloned().ok_or(Error::NoSuchObject { id: id.0, kind: "vIOMMU" })
    }

    /// What the backend built.
    pub fn viommu_info(&self, viommu: ViommuId) -> Result<ViommuInfo> {
        Ok(self.viommu(viommu)?.info.clone())
    }

    /// The vIOMMU's nesting parent.
    pub fn viommu_parent(&self, viommu: ViommuId) -> Result<HwptId> {
        Ok(self.viommu(viommu)?.parent.id)
    }

    /// Gives `device` (behind the vIOMMU's unit) the id `virt_id` in `viommu`. A virtual id
    /// names one device in a vIOMMU, and a device has at most one vDEVICE.
    pub fn alloc_vdevice(&self, viommu: ViommuId, device: DeviceId, virt_id: u64) -> Result<VdeviceId> {
        let _c = self.control();
        let v = self.viommu(viommu)?;
        let dev = self.device(device)?;
        if !Arc::ptr_eq(&dev.unit, &v.unit) {
            return Err(Error::Invalid(format!(
                "device {device} is behind unit {}, vIOMMU {viommu} is on unit {}",
                dev.unit.name, v.unit.name
            )));
        }
        {
            let o = self.read();
            if let Some(x) = o.vdevices.values().find(|x| x.device.id == device) {
                return Err(Error::Busy {
                    what: "device",
                    id: device.0,
                    by: format!("vDEVICE {} (virtual id {:#x} in vIOMMU {})", x.id, x.virt_id, x.viommu.id),
                });
            }
            if let Some(x) = o.vdevices.values().find(|x| x.viommu.id == viommu && x.virt_id == virt_id) {
                return Err(Error::VirtualIdInUse { viommu: viommu.0, virt_id, device: x.device.id.0 });
            }
        }
        v.hw.set_vdevice(&dev.desc.info(), virt_id).into_result().map_err(|e| plugin_err(&v.unit, "set_vdevice", e))?;
        let id = VdeviceId(self.new_id());
        self.write().vdevices.insert(id.0, Arc::new(VdeviceObj { id, viommu: v, device: dev, virt_id }));
        Ok(id)
    }

    /// The virtual id of a vDEVICE, and its device.
    pub fn vdevice(&self, vdevice: VdeviceId) -> Result<(ViommuId, DeviceId, u64)> {
        let o = self.read();
        let x = o.vdevices.get(&vdevice.0).ok_or(Error::NoSuchObject { id: vdevice.0, kind: "vDEVICE" })?;
        Ok((x.viommu.id, x.device.id, x.virt_id))
    }

    /// Runs the guest's commands (in the vIOMMU kind's format, naming virtual ids) in order.
    /// Returns how many were handled: all of them, or [`Error::Invalidation`] with the count
    /// handled before the one refused (as iommufd's `entry_num`).
    pub fn viommu_invalidate(&self, viommu: ViommuId, cmds: &[VirtualCommand]) -> Result<u32> {
        let v = self.viommu(viommu)?;
        if cmds.len() > INVALIDATE_MAX {
            return Err(Error::Invalid(format!("{} commands in one call (at most {INVALIDATE_MAX})", cmds.len())));
        }
        let InvalidateOutcome { handled, error } = v.hw.invalidate(cmds.into());
        if handled as usize > cmds.len() {
            return Err(Error::BadAnswer {
                plugin: v.unit.plugin.name.clone(),
                unit: v.unit.name.clone(),
                op: "invalidate",
                what: format!("handled {handled} of {} commands", cmds.len()),
            });
        }
        match error.into_option() {
            None if handled as usize == cmds.len() => Ok(handled),
            None => Err(Error::BadAnswer {
                plugin: v.unit.plugin.name.clone(),
                unit: v.unit.name.clone(),
                op: "invalidate",
                what: format!("handled {handled} of {} commands without an error", cmds.len()),
            }),
            Some(error) => Err(Error::Invalidation {
                handled,
                plugin: v.unit.plugin.name.clone(),
                unit: v.unit.name.clone(),
                error,
            }),
        }
    }

    /// A virtual event queue for `viommu`, holding up to `depth` events (1..=65536). One per
    /// vIOMMU.
    pub fn alloc_veventq(&self, viommu: ViommuId, depth: u32) -> Result<VeventQueueId> {
        let _c = self.control();
        let v = self.viommu(viommu)?;
        if depth == 0 || depth > VEVENTQ_MAX_DEPTH {
            return Err(Error::Invalid(format!("event queue depth {depth} (1..={VEVENTQ_MAX_DEPTH})")));
        }
        let mut o = self.write();
        if let Some(q) = o.veventqs.values().find(|q| q.viommu.id == viommu) {
            return Err(Error::Busy { what: "vIOMMU", id: viommu.0, by: format!("event queue {}", q.id) });
        }
        let id = VeventQueueId(self.new_id());
        o.veventqs.insert(id.0, Arc::new(VeventQueue { id, viommu: v, depth, state: Mutex::default() }));
        Ok(id)
    }

    /// Takes the events waiting in a virtual event queue, and the count of those lost since
    /// the last read. Call [`Context::poll_faults`] first to route what the units recorded.
    pub fn read_vevents(&self, queue: VeventQueueId) -> Result<VirtualEvents> {
        let q = self
            .read()
            .veventqs
            .get(&queue.0)
            .cloned()
            .ok_or(Error::NoSuchObject { id: queue.0, kind: "virtual event queue" })?;
        let mut s = lock(&q.state);
        Ok(VirtualEvents { events: s.events.drain(..).collect(), lost: std::mem::take(&mut s.lost) })
    }

    /// Hands the guest's command queue at `[iova, iova+len)` of the vIOMMU's parent (mapped,
    /// physically contiguous, writable, `len` a power of two of at least 4 KiB and `iova`
    /// aligned to it) to the hardware. Refused, with the backend's reason, where the vIOMMU
    /// has no hardware queues. The range cannot be unmapped while the queue exists.
    pub fn alloc_hw_queue(
        &self,
        viommu: ViommuId,
        kind: HwQueueKind,
        index: u32,
        iova: Iova,
        len: u64,
    ) -> Result<HwQueueId> {
        let _c = self.control();
        let v = self.viommu(viommu)?;
        if !len.is_power_of_two() || len < PAGE_SIZE || iova.0 % len != 0 {
            return Err(Error::Unaligned { what: "hardware queue", value: iova.0 | len, align: len.max(PAGE_SIZE) });
        }
        if !v.info.features.contains(ViommuFeatures::HW_QUEUE) {
            // Ask the backend anyway: its refusal carries the reason (the register bit missing).
            let probe = HwQueueRequest { kind, index, iova, pa: PhysAddr(0), len };
            return Err(match v.hw.alloc_hw_queue(&probe) {
                RResult::RErr(e) => plugin_err(&v.unit, "alloc_hw_queue", e),
                RResult::ROk(h) => {
                    let _ = v.hw.free_hw_queue(h);
                    Error::BadAnswer {
                        plugin: v.unit.plugin.name.clone(),
                        unit: v.unit.name.clone(),
                        op: "alloc_hw_queue",
                        what: "accepted a hardware queue on a vIOMMU that says it has none".into(),
                    }
                }
            });
        }
        if self.read().hw_queues.values().any(|q| q.viommu.id == viommu && q.index == index) {
            return Err(Error::Busy { what: "vIOMMU", id: viommu.0, by: format!("hardware queue {index}") });
        }
        let ioas = v.parent.ioas.clone().ok_or_else(|| Error::Invalid("the vIOMMU's parent has no IOAS".into()))?;
        let range = IovaRange::new(iova, len).ok_or(Error::Overflow { start: iova, len })?;
        let id = HwQueueId(self.new_id());
        // Resolve and pin under the IOAS's lock, so that no unmap can slip in before the pin.
        let pa = {
            let mut m = lock(&ioas.map);
            let pieces = m.covering(&range, Prot::RW, false)?;
            let contiguous = pieces.windows(2).all(|w| w[0].pa.0 + w[0].range.len() == w[1].pa.0);
            let first = pieces.first().ok_or(Error::NotMapped { range })?;
            if !contiguous {
                return Err(Error::Invalid(format!("hardware queue {range} is not physically contiguous")));
            }
            m.pins.hold(id.0, &range, Arc::new(QueueHold(id)));
            first.pa
        };
        let req = HwQueueRequest { kind, index, iova, pa, len };
        let handle = match v.hw.alloc_hw_queue(&req).into_result() {
            Ok(h) => h,
            Err(e) => {
                lock(&ioas.map).pins.release(id.0);
                return Err(plugin_err(&v.unit, "alloc_hw_queue", e));
            }
        };
        self.write().hw_queues.insert(id.0, Arc::new(HwQueueObj { id, viommu: v, handle, index, ioas }));
        Ok(id)
    }

    /// Routes an unrecoverable fault to the event queue of the vIOMMU its device's nested
    /// HWPT belongs to, with the device's virtual id. Returns false when the fault is the
    /// host's (no vIOMMU, no vDEVICE, no queue, or a fault in the stage-2).
    pub(super) fn route_vevent(&self, dev: &DeviceObj, hwpt: Option<&Arc<HwptObj>>, f: &Fault) -> bool {
        if f.reason & Fault::IN_PARENT != 0 {
            return false;
        }
        let Some(v) = hwpt.and_then(|h| h.viommu.as_ref()) else { return false };
        let o = self.read();
        let Some(vd) = o.vdevices.values().find(|x| x.device.id == dev.id && x.viommu.id == v.id) else {
            return false;
        };
        let Some(q) = o.veventqs.values().find(|q| q.viommu.id == v.id) else { return false };
        q.push(vd.virt_id, f);
        true
    }
}
