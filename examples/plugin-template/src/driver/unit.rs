//! The unit: probe, the device table (acme spec §2), attach and detach, the fault queue (§5).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use abi_stable::std_types::{ROption, RResult, RString, RVec};
use ioasis::abi::{
    host_ok, DeviceInfo, Fault, HwptFlags, HwptKind, HwptRequest, ItemVerdict, LogLevel, PageResponse, PluginError,
    UnitDesc,
};
use ioasis::plugin::{NoViommu, UnitDriver};
use ioasis::pt::Memory;
use ioasis::{
    DeviceRef, Features, IntentCode, IntentItem, Iova, PageSizes, Pasid, PhysAddr, Prot, RequesterId, UnitCaps,
};
use serde::Deserialize;

use super::hwpt::{AcmeHwpt, HwptInner};
use super::io::Io;
use crate::error::{DriverError, Result};
use crate::layout::{cap, dte, fault, inv, reg, FORMAT};

/// Options a unit description may carry (its `params`, TOML).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeParams {
    /// How long the driver waits for the unit (enable, invalidation), in milliseconds.
    pub poll_timeout_ms: Option<u64>,
}

/// What the unit and its HWPTs share.
pub struct Core {
    pub(super) io: Io,
    cap: u64,
    name: String,
    segment: u16,
    /// Domain ids in use (§2).
    dids: Mutex<BTreeSet<u16>>,
    handles: AtomicU64,
}

impl Core {
    /// The lowest free domain id (1..=4095).
    pub(super) fn alloc_did(&self) -> Result<u16> {
        let mut used = lock(&self.dids);
        let did = (1..=dte::DID_MAX).find(|d| !used.contains(d)).ok_or(DriverError::NoDomainId(dte::DID_MAX))?;
        used.insert(did);
        Ok(did)
    }

    pub(super) fn free_did(&self, did: u16) {
        lock(&self.dids).remove(&did);
    }

    pub(super) fn next_handle(&self) -> u64 {
        self.handles.fetch_add(1, Ordering::Relaxed) + 1
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct State {
    /// The device table: [`dte::PAGES`] contiguous pages.
    dt: u64,
    /// The fault queue page.
    fq: u64,
    /// What each requester id is attached to.
    attached: HashMap<u16, Arc<HwptInner>>,
    shut_down: bool,
}

/// A probed acme-tiny unit.
pub struct AcmeUnit {
    core: Arc<Core>,
    state: Mutex<State>,
}

fn verdict(item: IntentCode, granted: bool, reason: String) -> ItemVerdict {
    ItemVerdict { item, granted, reason: RString::from(reason) }
}

impl AcmeUnit {
    /// Checks ID, reads CAP, installs the device table and the fault queue, and enables
    /// translation with every device blocked.
    pub fn probe(desc: &UnitDesc, mut io: Io) -> Result<Self> {
        let unit = desc.name.to_string();
        let params: AcmeParams = toml::from_str(desc.params.as_str())
            .map_err(|e| DriverError::BadParams { unit: unit.clone(), reason: e.message().to_string() })?;
        if let Some(ms) = params.poll_timeout_ms {
            io.set_timeout_ns(ms.saturating_mul(1_000_000));
        }
        let id = io.reg_rd(reg::ID)?;
        if id != reg::ID_VALUE {
            return Err(DriverError::NotAcme { unit, id });
        }
        let cap = io.reg_rd(reg::CAP)?;
        if cap::ias(cap) != cap::IAS_BITS || !(32..=52).contains(&cap::oas(cap)) {
            return Err(DriverError::Hardware("a CAP this driver does not know (§1.1)"));
        }
        let dt = host_ok("allocate the device table", io.host().alloc_table_pages(dte::PAGES))?.0;
        let fq = match io.alloc() {
            Ok(p) => p,
            Err(e) => {
                free_pages(&io, dt);
                return Err(e.into());
            }
        };
        let enable = || -> Result<()> {
            io.reg_wr(reg::DT_BASE, dt)?;
            io.reg_wr(reg::FQ_BASE, fq)?;
            io.reg_wr(reg::FQ_HEAD, 0)?;
            io.invalidate(inv::OP_ALL, 0, 0, 0)?;
            io.reg_wr(reg::CTRL, reg::CTRL_EN | reg::CTRL_FQ_EN)?;
            io.poll(reg::STATUS, "enable translation", |s| s & reg::STATUS_ENS != 0)?;
            Ok(())
        };
        if let Err(e) = enable() {
            let _ = io.reg_wr(reg::CTRL, 0);
            let _ = io.reg_wr(reg::DT_BASE, 0);
            let _ = io.reg_wr(reg::FQ_BASE, 0);
            io.free(fq);
            free_pages(&io, dt);
            return Err(e);
        }
        io.log(LogLevel::Info, &format!("acme-tiny unit {unit} enabled, CAP {cap:#x}"));
        let core = Core {
            io,
            cap,
            name: unit,
            segment: desc.segment,
            dids: Mutex::new(BTreeSet::new()),
            handles: AtomicU64::new(0),
        };
        Ok(Self {
            core: Arc::new(core),
            state: Mutex::new(State { dt, fq, attached: HashMap::new(), shut_down: false }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn judge(&self, code: IntentCode) -> ItemVerdict {
        let Ok(item) = IntentItem::try_from(code) else {
            return verdict(code, false, format!("unknown intent kind {}: acme-tiny does not know it", code.kind));
        };
        match item {
            IntentItem::UntaggedDma => verdict(code, true, "4 KiB paging".into()),
            IntentItem::SoftwareTable => verdict(code, true, "no hardware table needed".into()),
            other => verdict(code, false, format!("unit {} (acme-tiny) has no {other}", self.core.name)),
        }
    }

    fn alloc(&self, req: &HwptRequest) -> Result<AcmeHwpt> {
        if self.state().shut_down {
            return Err(DriverError::ShutDown);
        }
        for (flag, what) in [
            (HwptFlags::DIRTY_TRACKING, "dirty tracking"),
            (HwptFlags::PAGE_FAULTS, "page requests"),
            (HwptFlags::COHERENCY, "enforced coherency"),
        ] {
            if req.flags.contains(flag) {
                return Err(DriverError::Unsupported(what.into()));
            }
        }
        let inner = match req.kind {
            HwptKind::PAGING => HwptInner::paging(&self.core)?,
            HwptKind::BLOCKING => HwptInner::blocking(&self.core),
            HwptKind::IDENTITY => return Err(DriverError::Unsupported("identity (pass-through) translation".into())),
            HwptKind::NESTED => return Err(DriverError::Unsupported("nested translation".into())),
            other => return Err(DriverError::Invalid(format!("unknown HWPT kind {}", other.0))),
        };
        Ok(AcmeHwpt(Arc::new(inner)))
    }

    /// The HWPT, if this unit (not another unit of the plugin) made it.
    fn own(&self, h: &AcmeHwpt) -> Result<Arc<HwptInner>> {
        if Arc::ptr_eq(&h.0.core, &self.core) {
            Ok(h.0.clone())
        } else {
            Err(DriverError::ForeignHwpt(h.0.handle))
        }
    }

    /// The requester id of a device on this unit's segment (§2).
    fn rid(&self, dev: &DeviceInfo) -> Result<u16> {
        match dev.dev {
            DeviceRef::Rid(r) if r.segment == self.core.segment => Ok(r.source_id()),
            other => Err(DriverError::NotARequester(other)),
        }
    }

    fn do_attach(&self, dev: &DeviceInfo, pasid: Option<Pasid>, hwpt: &AcmeHwpt) -> Result<()> {
        if pasid.is_some() {
            return Err(DriverError::Unsupported("PASID support".into()));
        }
        let h = self.own(hwpt)?;
        let rid = self.rid(dev)?;
        let mut st = self.state();
        if st.shut_down {
            return Err(DriverError::ShutDown);
        }
        let io = &self.core.io;
        let at = st.dt + dte::offset(rid);
        let entry = match &h.table {
            Some(t) => dte::entry(t.root, h.did),
            None => 0,
        };
        let old = io.rd(at)?;
        // §2: one 8-byte store switches root and DID together (an atomic replace).
        io.wr(at, entry)?;
        if let Err(e) = io.invalidate(inv::OP_DEVICE, rid, 0, 0) {
            let _ = io.wr(at, old);
            return Err(e);
        }
        st.attached.insert(rid, h);
        Ok(())
    }

    fn do_detach(&self, dev: &DeviceInfo, pasid: Option<Pasid>) -> Result<()> {
        if pasid.is_some() {
            return Err(DriverError::NotAttached(dev.dev));
        }
        let rid = self.rid(dev)?;
        let mut st = self.state();
        if !st.attached.contains_key(&rid) {
            return Err(DriverError::NotAttached(dev.dev));
        }
        let io = &self.core.io;
        io.wr(st.dt + dte::offset(rid), 0)?;
        io.invalidate(inv::OP_DEVICE, rid, 0, 0)?;
        st.attached.remove(&rid);
        Ok(())
    }

    fn do_read_faults(&self, max: u32) -> Result<Vec<Fault>> {
        let io = &self.core.io;
        let st = self.state();
        if st.shut_down {
            return Ok(Vec::new());
        }
        if io.reg_rd(reg::STATUS)? & reg::STATUS_FQ_OVF != 0 {
            io.log(LogLevel::Warn, &format!("unit {}: the fault queue overflowed, faults were lost", self.core.name));
            io.reg_wr(reg::STATUS, reg::STATUS_FQ_OVF)?;
        }
        let mut head = io.reg_rd(reg::FQ_HEAD)? % fault::ENTRIES;
        let tail = io.reg_rd(reg::FQ_TAIL)? % fault::ENTRIES;
        let mut out = Vec::new();
        while head != tail && out.len() < max as usize {
            let rec = st.fq + head * fault::SIZE;
            let (w0, addr) = (io.rd(rec)?, io.rd(rec + 8)?);
            out.push(self.fault_of(w0, addr));
            head = (head + 1) % fault::ENTRIES;
        }
        io.reg_wr(reg::FQ_HEAD, head)?;
        Ok(out)
    }

    /// A §5 record as the framework's [`Fault`].
    fn fault_of(&self, w0: u64, addr: u64) -> Fault {
        let rid = w0 as u16;
        let read = if w0 & fault::READ != 0 { Prot::READ } else { Prot::NONE };
        let write = if w0 & fault::WRITE != 0 { Prot::WRITE } else { Prot::NONE };
        let reason = fault::to_framework(fault::reason(w0));
        Fault {
            dev: DeviceRef::Rid(RequesterId { segment: self.core.segment, bus: (rid >> 8) as u8, devfn: rid as u8 }),
            pasid: ROption::RNone,
            addr: Iova(addr),
            access: read | write,
            reason,
            page_request: false,
            group: 0,
        }
    }

    fn do_shutdown(&self) -> Result<()> {
        let io = &self.core.io;
        let mut st = self.state();
        if st.shut_down {
            return Ok(());
        }
        io.reg_wr(reg::CTRL, 0)?;
        io.poll(reg::STATUS, "disable translation", |s| s & reg::STATUS_ENS == 0)?;
        io.reg_wr(reg::DT_BASE, 0)?;
        io.reg_wr(reg::FQ_BASE, 0)?;
        io.invalidate(inv::OP_ALL, 0, 0, 0)?;
        st.attached.clear();
        free_pages(io, st.dt);
        io.free(st.fq);
        st.shut_down = true;
        Ok(())
    }
}

/// Frees the device table; a failure is the host's bug, logged.
fn free_pages(io: &Io, dt: u64) {
    if let RResult::RErr(e) = io.host().free_table_pages(PhysAddr(dt), dte::PAGES) {
        io.log(LogLevel::Error, &format!("freeing the device table at {dt:#x}: {e}"));
    }
}

impl UnitDriver for AcmeUnit {
    type Hwpt = AcmeHwpt;
    // No vIOMMU: the default `alloc_viommu` refuses.
    type Viommu = NoViommu<AcmeHwpt>;

    fn caps(&self) -> UnitCaps {
        let c = &self.core;
        let caps = |model: RString| UnitCaps {
            model,
            paging_format: FORMAT,
            page_sizes: PageSizes::SZ_4K,
            ias_bits: cap::ias(c.cap),
            oas_bits: cap::oas(c.cap),
            pasid_bits: 0,
            features: Features(0),
            nested_formats: RVec::new(),
        };
        caps(RString::from(format!("acme-tiny rev 1 (CAP {:#x})", c.cap)))
    }

    fn negotiate(&self, _dev: &DeviceInfo, items: &[IntentCode]) -> Vec<ItemVerdict> {
        items.iter().map(|c| self.judge(*c)).collect()
    }

    fn alloc_hwpt(&self, req: &HwptRequest) -> std::result::Result<AcmeHwpt, PluginError> {
        Ok(self.alloc(req)?)
    }

    fn attach(&self, dev: &DeviceInfo, pasid: Option<Pasid>, hwpt: &AcmeHwpt) -> std::result::Result<(), PluginError> {
        Ok(self.do_attach(dev, pasid, hwpt)?)
    }

    fn detach(&self, dev: &DeviceInfo, pasid: Option<Pasid>) -> std::result::Result<(), PluginError> {
        Ok(self.do_detach(dev, pasid)?)
    }

    fn read_faults(&self, max: u32) -> std::result::Result<Vec<Fault>, PluginError> {
        Ok(self.do_read_faults(max)?)
    }

    fn page_response(&self, _resp: &PageResponse) -> std::result::Result<(), PluginError> {
        Err(DriverError::Unsupported("page requests".into()).into())
    }

    fn table_pages(&self) -> u64 {
        if self.state().shut_down {
            0
        } else {
            u64::from(dte::PAGES) + 1
        }
    }

    fn shutdown(&self) -> std::result::Result<(), PluginError> {
        Ok(self.do_shutdown()?)
    }
}
