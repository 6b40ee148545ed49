//! Attach, replace and detach: a device (or one PASID of it) to an IOAS or a HWPT.

use std::sync::Arc;

use abi_stable::std_types::ROption;

use crate::abi::{HwptFlags, HwptKind};
use crate::addr::Pasid;
use crate::contract::{Contract, ContractKind};
use crate::error::{Error, Result};
use crate::intent::IntentItem;
use crate::object::{DeviceId, HwptId, IoasId};

use super::hwpt::HwptSpec;
use super::{lock, plugin_err, Attachment, Context, DeviceObj, HwptObj, IoasObj};

/// What to attach to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// An IOAS: the framework finds or makes a paging HWPT for the device's unit (or, for a
    /// software-table contract, sets up no hardware translation).
    Ioas(IoasId),
    /// A HWPT the caller allocated (paging, nested, blocking, identity).
    Hwpt(HwptId),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Attach,
    Replace,
}

/// Flags an automatic paging HWPT gets from a contract.
fn auto_flags(c: &Contract) -> HwptFlags {
    let mut f = 0;
    if c.grants(|i| *i == IntentItem::DirtyTracking) {
        f |= HwptFlags::DIRTY_TRACKING.0;
    }
    if c.grants(|i| *i == IntentItem::Coherency) {
        f |= HwptFlags::COHERENCY.0;
    }
    HwptFlags(f)
}

fn paging_grant(c: &Contract, dev: DeviceId, pasid: Option<Pasid>) -> Result<()> {
    let ok = match pasid {
        None => c.grants(|i| matches!(i, IntentItem::UntaggedDma | IntentItem::NestedStage1 { .. })),
        Some(_) => c.grants(|i| matches!(i, IntentItem::PasidIoas | IntentItem::PasidDma { .. } | IntentItem::Enqcmd)),
    };
    if ok {
        return Ok(());
    }
    let item = if pasid.is_some() { IntentItem::PasidIoas } else { IntentItem::UntaggedDma };
    Err(Error::NotGranted { device: dev.0, item })
}

/// Does `dev` use `ioas` through an attachment other than `except`?
fn uses_ioas(dev: &DeviceObj, ioas: IoasId, except: Option<Pasid>) -> bool {
    lock(&dev.attached).iter().any(|(p, a)| *p != except && a.ioas_id() == Some(ioas))
}

impl Context {
    /// Attaches a device's untagged DMA (`pasid` = `None`) or one PASID to `target`. Refused
    /// when something is attached there already (use [`Context::replace`]).
    pub fn attach(&self, device: DeviceId, pasid: Option<Pasid>, target: Target) -> Result<()> {
        self.set_attachment(device, pasid, target, Mode::Attach)
    }

    /// Replaces an attachment in one step: DMA sees the old or the new translation, never a
    /// blocked window. On error the old attachment stays.
    pub fn replace(&self, device: DeviceId, pasid: Option<Pasid>, target: Target) -> Result<()> {
        self.set_attachment(device, pasid, target, Mode::Replace)
    }

    /// What a device's untagged DMA or PASID is attached to (printable), if anything.
    pub fn attachment(&self, device: DeviceId, pasid: Option<Pasid>) -> Result<Option<String>> {
        Ok(lock(&self.device(device)?.attached).get(&pasid).map(|a| a.describe()))
    }

    /// The IOAS a device's untagged DMA or PASID translates through (a nested HWPT's is its
    /// parent's), if any.
    pub fn attached_ioas(&self, device: DeviceId, pasid: Option<Pasid>) -> Result<Option<IoasId>> {
        Ok(lock(&self.device(device)?.attached).get(&pasid).and_then(|a| a.ioas_id()))
    }

    /// The HWPT a device's untagged DMA or PASID goes through, if it is a hardware attachment.
    pub fn attached_hwpt(&self, device: DeviceId, pasid: Option<Pasid>) -> Result<Option<HwptId>> {
        Ok(lock(&self.device(device)?.attached).get(&pasid).and_then(|a| match a {
            Attachment::Hwpt(h) => Some(h.id),
            Attachment::Software(_) => None,
        }))
    }

    fn resolve(
        &self,
        dev: &Arc<DeviceObj>,
        c: &Contract,
        pasid: Option<Pasid>,
        target: Target,
    ) -> Result<(Attachment, Option<Arc<HwptObj>>)> {
        match target {
            Target::Ioas(id) => {
                let ioas = self.ioas(id)?;
                match c.kind {
                    ContractKind::Software => {
                        if pasid.is_some() {
                            return Err(Error::Invalid("a software table serves the whole device, not a PASID".into()));
                        }
                        Ok((Attachment::Software(ioas), None))
                    }
                    ContractKind::Identity => Err(Error::Invalid(format!(
                        "device {}'s contract is identity DMA: attach it to an identity HWPT",
                        dev.id
                    ))),
                    ContractKind::Paging | ContractKind::Nested => {
                        paging_grant(c, dev.id, pasid)?;
                        let flags = auto_flags(c);
                        let existing = ioas
                            .hwpts
                            .read()
                            .unwrap_or_else(|p| p.into_inner())
                            .iter()
                            .find(|h| Arc::ptr_eq(&h.unit, &dev.unit) && h.flags == flags && h.fault_queue.is_none())
                            .cloned();
                        match existing {
                            Some(h) => Ok((Attachment::Hwpt(h), None)),
                            None => {
                                let spec = HwptSpec::Paging { ioas: id, flags, fault_queue: None };
                                let h = self.alloc_hwpt_locked(&dev.unit, spec, true)?;
                                Ok((Attachment::Hwpt(h.clone()), Some(h)))
                            }
                        }
                    }
                }
            }
            Target::Hwpt(id) => {
                let h = self.hwpt(id)?;
                if !Arc::ptr_eq(&h.unit, &dev.unit) {
                    return Err(Error::Invalid(format!(
                        "HWPT {id} is on unit {}, device {} is behind unit {}",
                        h.unit.name, dev.id, dev.unit.name
                    )));
                }
                match h.info.kind {
                    HwptKind::PAGING => paging_grant(c, dev.id, pasid)?,
                    HwptKind::NESTED => {
                        let f = h.info.format;
                        if !c.grants(|i| *i == IntentItem::NestedStage1 { format: f }) {
                            return Err(Error::NotGranted {
                                device: dev.id.0,
                                item: IntentItem::NestedStage1 { format: f },
                            });
                        }
                    }
                    HwptKind::IDENTITY if !c.grants(|i| *i == IntentItem::Identity) => {
                        return Err(Error::NotGranted { device: dev.id.0, item: IntentItem::Identity });
                    }
                    _ => {}
                }
                Ok((Attachment::Hwpt(h), None))
            }
        }
    }

    /// Devices that cannot be isolated from each other must use one translation for their
    /// untagged DMA.
    fn check_shared(&self, dev: &DeviceObj, att: &Attachment) -> Result<()> {
        let Some(boundary) = dev.desc.no_acs_below.as_deref() else { return Ok(()) };
        if matches!(att, Attachment::Hwpt(h) if h.info.kind == HwptKind::BLOCKING) {
            return Ok(());
        }
        let peers: Vec<Arc<DeviceObj>> = self
            .read()
            .devices
            .values()
            .filter(|d| d.id != dev.id && Arc::ptr_eq(&d.unit, &dev.unit))
            .filter(|d| d.desc.no_acs_below.as_deref() == Some(boundary))
            .cloned()
            .collect();
        for p in peers {
            let theirs = lock(&p.attached).get(&None).cloned();
            let Some(theirs) = theirs else { continue };
            if matches!(&theirs, Attachment::Hwpt(h) if h.info.kind == HwptKind::BLOCKING) || theirs.same(att) {
                continue;
            }
            return Err(Error::MustShareIoas {
                device: dev.id.0,
                peer: p.id.0,
                boundary: boundary.to_string(),
                peer_target: theirs.describe(),
            });
        }
        Ok(())
    }

    /// Adds the device's aperture and reserved regions to `ioas`.
    fn reserve_for(&self, dev: &DeviceObj, c: &Contract, ioas: &IoasObj) -> Result<()> {
        let owner = dev.id.0;
        let mut m = lock(&ioas.map);
        let platform = lock(&self.platform_reserved).clone();
        let mut result = m.add_aperture(owner, c.aperture);
        for (r, why) in &platform {
            result = result.and_then(|()| m.add_reserved(*r, why, Some(owner)));
        }
        for r in &dev.desc.reserved {
            let range =
                r.range().ok_or_else(|| Error::Invalid(format!("device {}: bad reserved region", dev.desc.name)));
            result =
                result.and_then(|()| m.add_reserved(range?, &format!("reserved by {}", dev.desc.name), Some(owner)));
        }
        if result.is_err() {
            m.remove_aperture(owner);
            m.remove_reserved(owner);
        }
        result
    }

    fn unreserve_for(&self, dev: &DeviceObj, ioas: IoasId) {
        if let Ok(i) = self.ioas(ioas) {
            let mut m = lock(&i.map);
            m.remove_aperture(dev.id.0);
            m.remove_reserved(dev.id.0);
        }
    }

    fn drop_auto(&self, h: &Arc<HwptObj>) {
        if h.auto && lock(&h.users).is_empty() {
            if let Some(ioas) = &h.ioas {
                ioas.remove_hwpt(h);
            }
            self.write().hwpts.remove(&h.id.0);
        }
    }

    /// Is `old` what `target` would attach the device to? A replace to it is a no-op, as
    /// iommufd's: the users, the reservations and the hardware stay as they are.
    fn is_current(&self, dev: &DeviceObj, c: &Contract, old: &Attachment, target: Target) -> bool {
        match (target, old) {
            (Target::Hwpt(id), Attachment::Hwpt(h)) => h.id == id,
            (Target::Ioas(id), Attachment::Software(i)) => i.id == id && c.kind == ContractKind::Software,
            (Target::Ioas(id), Attachment::Hwpt(h)) => {
                matches!(c.kind, ContractKind::Paging | ContractKind::Nested)
                    && h.info.kind == HwptKind::PAGING
                    && h.ioas.as_ref().is_some_and(|i| i.id == id)
                    && Arc::ptr_eq(&h.unit, &dev.unit)
                    && h.flags == auto_flags(c)
                    && h.fault_queue.is_none()
            }
            _ => false,
        }
    }

    fn set_attachment(&self, device: DeviceId, pasid: Option<Pasid>, target: Target, mode: Mode) -> Result<()> {
        let _c = self.control();
        let dev = self.device(device)?;
        let contract = lock(&dev.contract).clone().ok_or(Error::NoContract { device: device.0 })?;
        let old = lock(&dev.attached).get(&pasid).cloned();
        match (mode, &old) {
            (Mode::Attach, Some(a)) => {
                return Err(Error::Busy {
                    what: "device",
                    id: device.0,
                    by: format!("already attached to {} (use replace)", a.describe()),
                })
            }
            (Mode::Replace, None) => {
                return Err(Error::NotAttached { device: device.0, what: pasid_name(pasid) });
            }
            _ => {}
        }
        if let Some(p) = pasid {
            match &contract.pasids {
                None => return Err(Error::NotGranted { device: device.0, item: IntentItem::PasidIoas }),
                Some(r) if !r.contains(&p.0) => {
                    return Err(Error::PasidOutOfRange {
                        pasid: p,
                        range: format!("{:#x}..={:#x}", r.start(), r.end()),
                    })
                }
                _ => {}
            }
        }
        if let Some(old) = &old {
            if mode == Mode::Replace && self.is_current(&dev, &contract, old, target) {
                tracing::debug!(device = %device, pasid = ?pasid, ?target, "replace to the current target: nothing to do");
                return Ok(());
            }
        }
        let (att, fresh) = self.resolve(&dev, &contract, pasid, target)?;
        let undo_fresh = |ctx: &Context| {
            if let Some(h) = &fresh {
                ctx.drop_auto(h);
            }
        };
        if pasid.is_none() {
            if let Err(e) = self.check_shared(&dev, &att) {
                undo_fresh(self);
                return Err(e);
            }
        }
        let new_ioas = att.ioas_id();
        let mut reserved_new = false;
        if let Some(id) = new_ioas {
            let old_ioas = old.as_ref().and_then(|o| o.ioas_id());
            if old_ioas != Some(id) && !uses_ioas(&dev, id, pasid) {
                let ioas = self.ioas(id)?;
                if let Err(e) = self.reserve_for(&dev, &contract, &ioas) {
                    undo_fresh(self);
                    return Err(e);
                }
                reserved_new = true;
            }
        }
        let info = dev.desc.info();
        let p = ROption::from(pasid);
        let hw = match (&att, &old) {
            (Attachment::Hwpt(h), _) => {
                dev.unit.hw.attach(&info, p, &h.hw).into_result().map_err(|e| plugin_err(&dev.unit, "attach", e))
            }
            (Attachment::Software(_), Some(Attachment::Hwpt(_))) => {
                dev.unit.hw.detach(&info, p).into_result().map_err(|e| plugin_err(&dev.unit, "detach", e))
            }
            (Attachment::Software(_), _) => Ok(()),
        };
        if let Err(e) = hw {
            if reserved_new {
                if let Some(id) = new_ioas {
                    self.unreserve_for(&dev, id);
                }
            }
            undo_fresh(self);
            return Err(e);
        }
        if let Attachment::Hwpt(h) = &att {
            lock(&h.users).insert((device, pasid));
        }
        lock(&dev.attached).insert(pasid, att);
        if let Some(old) = old {
            self.forget(&dev, pasid, &old);
            self.abandon_page_requests(|p| p.device != device || p.pasid != pasid);
        }
        tracing::debug!(device = %device, pasid = ?pasid, ?target, "attached");
        Ok(())
    }

    /// Bookkeeping after an attachment went away (detached or replaced).
    fn forget(&self, dev: &DeviceObj, pasid: Option<Pasid>, old: &Attachment) {
        if let Attachment::Hwpt(h) = old {
            lock(&h.users).remove(&(dev.id, pasid));
        }
        if let Some(id) = old.ioas_id() {
            let still =
                lock(&dev.attached).get(&pasid).and_then(|a| a.ioas_id()) == Some(id) || uses_ioas(dev, id, pasid);
            if !still {
                self.unreserve_for(dev, id);
            }
        }
        if let Attachment::Hwpt(h) = old {
            self.drop_auto(h);
        }
    }

    /// Detaches a device's untagged DMA or one PASID: the unit blocks it.
    pub fn detach(&self, device: DeviceId, pasid: Option<Pasid>) -> Result<()> {
        let _c = self.control();
        let dev = self.device(device)?;
        let old = lock(&dev.attached)
            .get(&pasid)
            .cloned()
            .ok_or_else(|| Error::NotAttached { device: device.0, what: pasid_name(pasid) })?;
        if let Attachment::Hwpt(_) = &old {
            let info = dev.desc.info();
            dev.unit
                .hw
                .detach(&info, ROption::from(pasid))
                .into_result()
                .map_err(|e| plugin_err(&dev.unit, "detach", e))?;
        }
        lock(&dev.attached).remove(&pasid);
        self.forget(&dev, pasid, &old);
        self.abandon_page_requests(|p| p.device != device || p.pasid != pasid);
        Ok(())
    }
}

fn pasid_name(pasid: Option<Pasid>) -> String {
    match pasid {
        None => "untagged DMA".into(),
        Some(p) => format!("PASID {p}"),
    }
}
