//! VT-d vIOMMUs: one VM's slice of a unit (interface 0.3).
//!
//! A vIOMMU holds one domain id (3.4.2) that every nested HWPT allocated in it uses: the VM's
//! tag, as SMMUv3's VMID. It knows the VM's devices by the requester ids the guest gives them
//! (vDEVICEs) and runs the guest's own invalidation descriptors (6.5.2): PASID-based IOTLB
//! (6.5.2.4, the guest's DID replaced by the vIOMMU's) and PASID-based device-TLB (6.5.2.6, the
//! guest's requester id replaced by the physical one). The rest (context-cache, PASID-cache,
//! IOTLB, wait, interrupt entry cache) are the VMM's to emulate and are refused. Descriptors
//! come from the guest: every reserved bit, type, granularity and id is checked, the work is
//! one host descriptor per guest descriptor, and the batch ends with one wait.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

use abi_stable::std_types::ROption;
use ioasis::abi::{
    DeviceInfo, ErrorCode, HwQueueRequest, HwptFlags, HwptKind, InvalidateOutcome, LogLevel, PluginError, Stage1Config,
    ViommuFeatures, ViommuInfo, ViommuKind, VirtualCommand,
};
use ioasis::plugin::ViommuDriver;
use ioasis::DeviceRef;

use super::hwpt::{HwptInner, SharedDid, VtdHwpt};
use super::inv::Desc;
use super::unit::UnitCore;
use crate::layout::qi::{self, p_dev_tlb, p_iotlb};
use crate::layout::regs::{cap, ecap};

/// ADDR bits 63:12 of a descriptor's qword 1 (6.5.2.4, 6.5.2.6): an input address, not a
/// physical one.
const PAGE_ADDR: u64 = !0xfff;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A device the guest knows by a virtual requester id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Vdev {
    /// Its physical source id.
    sid: u16,
    /// Its device-TLB is enabled (ATS, ECAP.DT).
    ats: bool,
}

/// The vIOMMU's state.
pub struct ViommuInner {
    core: Arc<UnitCore>,
    unit: String,
    /// The VM's second stage.
    parent: Arc<HwptInner>,
    /// The VM's domain id.
    did: Arc<SharedDid>,
    /// The nested HWPTs allocated in it.
    nested: Mutex<Vec<Weak<HwptInner>>>,
    /// vDEVICEs by virtual requester id.
    vdevs: Mutex<HashMap<u16, Vdev>>,
}

/// The object handed to the host.
#[derive(Clone)]
pub struct VtdViommu(Arc<ViommuInner>);

/// A requester id as bus:dev.fn.
fn rid_name(rid: u16) -> String {
    format!("{:02x}:{:02x}.{}", rid >> 8, (rid >> 3) & 0x1f, rid & 7)
}

impl VtdViommu {
    pub(super) fn new(core: Arc<UnitCore>, unit: String, parent: Arc<HwptInner>, did: Arc<SharedDid>) -> Self {
        Self(Arc::new(ViommuInner {
            core,
            unit,
            parent,
            did,
            nested: Mutex::new(Vec::new()),
            vdevs: Mutex::new(HashMap::new()),
        }))
    }

    fn did(&self) -> u16 {
        self.0.did.did
    }

    fn sid_of(&self, dev: &DeviceInfo) -> Result<u16, PluginError> {
        match dev.dev {
            DeviceRef::Rid(r) if r.segment == self.0.core.segment => Ok(r.source_id()),
            DeviceRef::Rid(r) => Err(PluginError::invalid(format!(
                "{r} is on segment {}, unit {} serves segment {}",
                r.segment, self.0.unit, self.0.core.segment
            ))),
            DeviceRef::Sid(s) => {
                Err(PluginError::invalid(format!("VT-d names devices by PCI requester id, not stream id {s:#x}")))
            }
        }
    }

    fn do_alloc_nested(&self, flags: HwptFlags, s1: &Stage1Config) -> Result<VtdHwpt, PluginError> {
        let v = &self.0;
        v.core.check_flags(flags)?;
        let table = v.core.nested_table(v.parent.clone(), s1)?;
        let inner = v.core.new_hwpt(HwptKind::NESTED, flags, table, self.did(), Some(v.did.clone()));
        let mut nested = lock(&v.nested);
        nested.retain(|w| w.strong_count() > 0);
        nested.push(Arc::downgrade(&inner));
        Ok(VtdHwpt(inner))
    }

    fn do_set_vdevice(&self, dev: &DeviceInfo, virt_id: u64) -> Result<(), PluginError> {
        let sid = self.sid_of(dev)?;
        let virt = u16::try_from(virt_id).map_err(|_| {
            PluginError::new(ErrorCode::OUT_OF_RANGE, format!("virtual id {virt_id:#x} is not a 16-bit requester id"))
        })?;
        let mut vdevs = lock(&self.0.vdevs);
        if let Some(x) = vdevs.get(&virt) {
            return Err(PluginError::new(
                ErrorCode::EXISTS,
                format!("virtual requester id {} is device {} already", rid_name(virt), rid_name(x.sid)),
            ));
        }
        if let Some((v, _)) = vdevs.iter().find(|(_, x)| x.sid == sid) {
            return Err(PluginError::new(
                ErrorCode::EXISTS,
                format!("device {} is virtual {} already", rid_name(sid), rid_name(*v)),
            ));
        }
        let ats = dev.ats && self.0.core.has(ecap::DT);
        vdevs.insert(virt, Vdev { sid, ats });
        self.0.core.io.log(
            LogLevel::Debug,
            &format!("unit {}: vDEVICE {} is device {}", self.0.unit, rid_name(virt), rid_name(sid)),
        );
        Ok(())
    }

    fn do_clear_vdevice(&self, dev: &DeviceInfo) -> Result<(), PluginError> {
        let sid = self.sid_of(dev)?;
        let mut vdevs = lock(&self.0.vdevs);
        let virt = vdevs
            .iter()
            .find(|(_, x)| x.sid == sid)
            .map(|(v, _)| *v)
            .ok_or_else(|| PluginError::not_found(format!("device {} has no virtual id here", rid_name(sid))))?;
        vdevs.remove(&virt);
        Ok(())
    }

    /// The PASIDs (0: RID_PASID, untagged DMA) that devices use with this vIOMMU's nested HWPTs.
    fn pasids(&self) -> HashSet<u32> {
        let nested: Vec<_> = lock(&self.0.nested).iter().filter_map(Weak::upgrade).collect();
        nested.iter().flat_map(|h| h.users()).filter_map(|u| u.pasid).collect()
    }

    /// The host descriptor for guest descriptor `n` (or `None`: nothing to do), or why it is
    /// refused.
    fn host_desc(
        &self,
        n: usize,
        cmd: &VirtualCommand,
        pasids: &HashSet<u32>,
        vdevs: &HashMap<u16, Vdev>,
    ) -> Result<Option<Desc>, PluginError> {
        let [q0, q1, q2, q3] = cmd.words;
        let ty = qi::type_of(q0);
        let reserved = |what: &str, bits: u64| {
            PluginError::invalid(format!(
                "descriptor {n}: {}: reserved bits {bits:#x} set in {what}",
                qi::type_name(ty)
            ))
        };
        let c = &self.0.core;
        match ty {
            p_iotlb::TYPE | p_dev_tlb::TYPE if q2 != 0 || q3 != 0 => Err(PluginError::invalid(format!(
                "descriptor {n}: {}: reserved bits set in bits 255:128 (qword 2 {q2:#x}, qword 3 {q3:#x})",
                qi::type_name(ty)
            ))),
            p_iotlb::TYPE => {
                // 6.5.2.4: the guest's DID is its own; the VM's translations carry the vIOMMU's.
                if q0 & !p_iotlb::Q0_DEFINED != 0 {
                    return Err(reserved("qword 0", q0 & !p_iotlb::Q0_DEFINED));
                }
                if q1 & !p_iotlb::Q1_DEFINED != 0 {
                    return Err(reserved("qword 1", q1 & !p_iotlb::Q1_DEFINED));
                }
                let pasid = p_iotlb::pasid(q0);
                if !pasids.contains(&pasid) {
                    return Err(PluginError::new(
                        ErrorCode::NOT_FOUND,
                        format!(
                            "descriptor {n}: PASID {pasid:#x} is not one the VM's devices use with this vIOMMU's \
                             nested HWPTs"
                        ),
                    ));
                }
                let did = self.did();
                match q0 & (3 << 4) {
                    p_iotlb::PASID => Ok(Some([p_iotlb::q0(p_iotlb::PASID, did, pasid), 0])),
                    p_iotlb::PAGE => {
                        let am = p_iotlb::am(q1);
                        let mamv = cap::mamv(c.cap);
                        if am > mamv {
                            return Err(PluginError::new(
                                ErrorCode::OUT_OF_RANGE,
                                format!("descriptor {n}: AM {am} is above CAP.MAMV {mamv}"),
                            ));
                        }
                        let addr = q1 & PAGE_ADDR;
                        if addr & ((1u64 << (12 + am)) - 1) != 0 {
                            return Err(PluginError::invalid(format!(
                                "descriptor {n}: address {addr:#x} is not aligned to its 2^{am} pages"
                            )));
                        }
                        if c.cap & cap::PSI == 0 {
                            // No page-selective invalidation: all of the PASID (a superset).
                            return Ok(Some([p_iotlb::q0(p_iotlb::PASID, did, pasid), 0]));
                        }
                        // Reserved bits were refused above: qword 1 is ADDR, IH and AM.
                        Ok(Some([p_iotlb::q0(p_iotlb::PAGE, did, pasid), q1]))
                    }
                    g => Err(PluginError::invalid(format!(
                        "descriptor {n}: {}: granularity {} is reserved",
                        qi::type_name(ty),
                        g >> 4
                    ))),
                }
            }
            p_dev_tlb::TYPE => {
                // 6.5.2.6: SID is the guest's requester id of the device. Qword 0 has no
                // reserved bits but the type extension (11:9), which makes it another type.
                if q1 & !p_dev_tlb::Q1_DEFINED != 0 {
                    return Err(reserved("qword 1", q1 & !p_dev_tlb::Q1_DEFINED));
                }
                let virt = p_dev_tlb::sid(q0);
                let Some(d) = vdevs.get(&virt) else {
                    return Err(PluginError::new(
                        ErrorCode::NOT_FOUND,
                        format!(
                            "descriptor {n}: virtual requester id {} is not one of the VM's devices",
                            rid_name(virt)
                        ),
                    ));
                };
                if !d.ats {
                    // No device-TLB to invalidate.
                    return Ok(None);
                }
                let pasid = p_dev_tlb::pasid(q0);
                // Reserved bits were refused above: qword 1 is ADDR, S and G.
                Ok(Some([p_dev_tlb::q0(d.sid, pasid, d.sid), q1]))
            }
            _ => Err(PluginError::unsupported(format!(
                "descriptor {n}: type {ty:#x} ({}) is the VMM's to emulate, not a vIOMMU's to run",
                qi::type_name(ty)
            ))),
        }
    }

    fn do_invalidate(&self, cmds: &[VirtualCommand]) -> InvalidateOutcome {
        let pasids = self.pasids();
        let vdevs = lock(&self.0.vdevs).clone();
        let mut batch = Vec::with_capacity(cmds.len());
        let mut refused = None;
        for (n, cmd) in cmds.iter().enumerate() {
            match self.host_desc(n, cmd, &pasids, &vdevs) {
                Ok(Some(d)) => batch.push(d),
                Ok(None) => {}
                Err(e) => {
                    refused = Some((n, e));
                    break;
                }
            }
        }
        let c = &self.0.core;
        // The descriptors before the refused one are done: one wait ends the batch.
        if let Err(e) = c.inv.submit(&c.io, &batch) {
            return InvalidateOutcome { handled: 0, error: ROption::RSome(e) };
        }
        match refused {
            None => InvalidateOutcome { handled: cmds.len() as u32, error: ROption::RNone },
            Some((n, e)) => {
                c.io.log(LogLevel::Debug, &format!("unit {}: guest invalidation refused: {}", self.0.unit, e.message));
                InvalidateOutcome { handled: n as u32, error: ROption::RSome(e) }
            }
        }
    }
}

impl ViommuDriver for VtdViommu {
    type Hwpt = VtdHwpt;

    fn info(&self) -> ViommuInfo {
        ViommuInfo { kind: ViommuKind::VTD, tag: u64::from(self.did()), features: ViommuFeatures(0) }
    }

    fn alloc_nested(&self, flags: HwptFlags, stage1: &Stage1Config) -> Result<VtdHwpt, PluginError> {
        self.do_alloc_nested(flags, stage1)
    }

    fn set_vdevice(&self, dev: &DeviceInfo, virt_id: u64) -> Result<(), PluginError> {
        self.do_set_vdevice(dev, virt_id)
    }

    fn clear_vdevice(&self, dev: &DeviceInfo) -> Result<(), PluginError> {
        self.do_clear_vdevice(dev)
    }

    fn invalidate(&self, cmds: &[VirtualCommand]) -> InvalidateOutcome {
        self.do_invalidate(cmds)
    }

    fn alloc_hw_queue(&self, req: &HwQueueRequest) -> Result<u64, PluginError> {
        Err(PluginError::unsupported(format!(
            "unit {}: VT-d has no hardware-accelerated guest invalidation queue (no CAP_REG/ECAP_REG bit \
             offers one; queue {} of kind {} refused): the VMM emulates the guest's queue and passes its \
             descriptors to invalidate",
            self.0.unit, req.index, req.kind.0
        )))
    }

    fn free_hw_queue(&self, handle: u64) -> Result<(), PluginError> {
        Err(PluginError::not_found(format!("unit {}: no hardware queue {handle:#x}", self.0.unit)))
    }
}
