//! The objects a context owns.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use crate::abi::{HwptBox, HwptFlags, HwptInfo, PageResponse, UnitBox};
use crate::addr::{AddressSpace, Pasid};
use crate::caps::UnitCaps;
use crate::contract::Contract;
use crate::device::DeviceDesc;
use crate::error::Result;
use crate::ioas::IovaMap;
use crate::loader::Plugin;
use crate::object::{DeviceId, FaultQueueId, HwptId, IoasId, UnitId};

use super::fault::QueuedFault;
use super::viommu::ViommuObj;
use super::{lock, plugin_err};

/// A probed unit.
pub(crate) struct UnitObj {
    pub id: UnitId,
    pub name: String,
    pub plugin: Arc<Plugin>,
    pub hw: UnitBox,
    pub caps: UnitCaps,
    #[allow(dead_code)]
    pub segment: u16,
    /// Where its registers are: one unit per window.
    pub mmio_base: crate::PhysAddr,
}

impl UnitObj {
    pub fn shutdown(&self) -> Result<()> {
        self.hw.shutdown().into_result().map_err(|e| plugin_err(self, "shutdown", e))
    }
}

/// What one PASID (or the untagged requester id) of a device is attached to.
#[derive(Clone)]
pub(crate) enum Attachment {
    /// A hardware page table.
    Hwpt(Arc<HwptObj>),
    /// A software table: no hardware translation; the driver accesses the IOAS.
    Software(Arc<IoasObj>),
}

impl Attachment {
    /// The IOAS behind it, if any (a nested HWPT's is its parent's).
    pub fn ioas_id(&self) -> Option<IoasId> {
        match self {
            Attachment::Hwpt(h) => h.ioas_id(),
            Attachment::Software(i) => Some(i.id),
        }
    }

    /// A printable name of the target.
    pub fn describe(&self) -> String {
        match self {
            Attachment::Hwpt(h) => match h.ioas_id() {
                Some(i) => format!("{} HWPT {} of IOAS {i}", h.info.kind.name(), h.id),
                None => format!("{} HWPT {}", h.info.kind.name(), h.id),
            },
            Attachment::Software(i) => format!("IOAS {} (software table)", i.id),
        }
    }

    /// Same target?
    pub fn same(&self, other: &Attachment) -> bool {
        match (self, other) {
            (Attachment::Hwpt(a), Attachment::Hwpt(b)) => Arc::ptr_eq(a, b),
            (Attachment::Software(a), Attachment::Software(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A bound device.
pub(crate) struct DeviceObj {
    pub id: DeviceId,
    pub desc: DeviceDesc,
    pub unit: Arc<UnitObj>,
    pub contract: Mutex<Option<Contract>>,
    pub attached: Mutex<BTreeMap<Option<Pasid>, Attachment>>,
}

impl DeviceObj {
    pub fn new(id: DeviceId, desc: DeviceDesc, unit: Arc<UnitObj>) -> Self {
        Self { id, desc, unit, contract: Mutex::new(None), attached: Mutex::new(BTreeMap::new()) }
    }
}

/// An IOAS: its IOVA bookkeeping and the paging HWPTs kept in step with it.
pub(crate) struct IoasObj {
    pub id: IoasId,
    /// Whose address space it is.
    pub space: AddressSpace,
    pub map: Mutex<IovaMap>,
    /// Map and unmap hold this for reading across their backend calls; adding or removing a
    /// HWPT holds it for writing, so a new HWPT sees every area exactly once.
    pub hwpts: RwLock<Vec<Arc<HwptObj>>>,
}

impl IoasObj {
    pub fn new(id: IoasId, space: AddressSpace) -> Self {
        Self { id, space, map: Mutex::new(IovaMap::default()), hwpts: RwLock::new(Vec::new()) }
    }

    pub fn remove_hwpt(&self, h: &Arc<HwptObj>) {
        self.hwpts.write().unwrap_or_else(|p| p.into_inner()).retain(|x| !Arc::ptr_eq(x, h));
    }
}

/// A HWPT.
pub(crate) struct HwptObj {
    pub id: HwptId,
    pub unit: Arc<UnitObj>,
    pub hw: HwptBox,
    pub info: HwptInfo,
    pub flags: HwptFlags,
    /// The IOAS a paging HWPT realises.
    pub ioas: Option<Arc<IoasObj>>,
    /// The paging parent of a nested HWPT.
    pub parent: Option<Arc<HwptObj>>,
    /// Made by an attach to an IOAS; destroyed with its last user.
    pub auto: bool,
    pub fault_queue: Option<Arc<FaultQueue>>,
    pub users: Mutex<BTreeSet<(DeviceId, Option<Pasid>)>>,
    /// The vIOMMU a nested HWPT was allocated in.
    pub viommu: Option<Arc<ViommuObj>>,
    /// Dirty tracking is on (only ever for a HWPT allocated with it).
    pub dirty_tracking: Mutex<bool>,
}

impl HwptObj {
    pub fn ioas_id(&self) -> Option<IoasId> {
        self.ioas.as_ref().map(|i| i.id).or_else(|| self.parent.as_ref().and_then(|p| p.ioas_id()))
    }
}

/// A page request read from a unit and not answered yet.
pub(crate) struct PendingRequest {
    /// The unit to answer.
    pub unit: Arc<UnitObj>,
    /// The response to send (its code is filled in when answered).
    pub resp: PageResponse,
    /// The device that issued it.
    pub device: DeviceId,
    /// The PASID of the request (`None`: untagged).
    pub pasid: Option<Pasid>,
}

/// A fault queue: page requests in, page responses out.
pub(crate) struct FaultQueue {
    pub id: FaultQueueId,
    pub events: Mutex<VecDeque<QueuedFault>>,
    /// Outstanding requests (delivered or not) by cookie.
    pub pending: Mutex<HashMap<u64, PendingRequest>>,
    pub next_cookie: Mutex<u64>,
}

impl FaultQueue {
    pub fn new(id: FaultQueueId) -> Self {
        Self {
            id,
            events: Mutex::new(VecDeque::new()),
            pending: Mutex::new(HashMap::new()),
            next_cookie: Mutex::new(1),
        }
    }

    pub fn push(&self, device: DeviceId, unit: Arc<UnitObj>, fault: crate::abi::Fault) {
        let cookie = {
            let mut c = lock(&self.next_cookie);
            *c += 1;
            *c
        };
        let resp = PageResponse { dev: fault.dev, pasid: fault.pasid, group: fault.group, code: PageResponse::SUCCESS };
        let pasid = fault.pasid.into_option();
        lock(&self.pending).insert(cookie, PendingRequest { unit, resp, device, pasid });
        lock(&self.events).push_back(QueuedFault { cookie, device, fault });
    }

    /// Takes the outstanding requests `keep` says no to, delivered or not, out of the queue.
    pub fn take_pending(&self, keep: impl Fn(&PendingRequest) -> bool) -> Vec<PendingRequest> {
        let mut pending = lock(&self.pending);
        let gone: Vec<u64> = pending.iter().filter(|(_, p)| !keep(p)).map(|(c, _)| *c).collect();
        lock(&self.events).retain(|e| !gone.contains(&e.cookie));
        let mut out: Vec<(u64, PendingRequest)> =
            gone.into_iter().filter_map(|c| pending.remove(&c).map(|p| (c, p))).collect();
        out.sort_by_key(|(c, _)| *c);
        out.into_iter().map(|(_, p)| p).collect()
    }
}
