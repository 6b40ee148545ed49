//! Xen as an ioasis unit: negotiation, HWPTs (domains), attach (assign) and detach (deassign).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use abi_stable::std_types::{RString, RVec};
use ioasis::abi::{
    DeviceInfo, ErrorCode, Fault, HostServicesBox, HwptKind, HwptRequest, ItemVerdict, PageResponse, PluginError,
    UnitDesc,
};
use ioasis::format::PtFormat;
use ioasis::plugin::{Driver, HwptDriver, NoViommu, UnitDriver};
use ioasis::{DeviceRef, Features, IntentCode, PageSizes, Pasid, UnitCaps};

use super::hwpt::DomainHwpt;
use super::negotiate::judge;
use super::plugin_error;
use crate::{DomId, PhysInfo, Sbdf, Xen, DOMID_FIRST_RESERVED, DOMID_INVALID};

/// The handles of blocking HWPTs start here (paging handles are domids, below 0x7ff0).
pub const BLOCKED_HANDLE: u64 = 1 << 32;

/// The backend: Xen, through one hypercall handle.
pub struct XenBackend {
    xen: Arc<Xen>,
    pci: PciView,
}

impl XenBackend {
    /// A backend issuing its domctls through `xen`; dom0's PCI devices are read from `pci`.
    pub fn new(xen: Arc<Xen>, pci: PciView) -> Self {
        Self { xen, pci }
    }
}

/// Where dom0 lists its PCI devices (Linux: `/sys/bus/pci/devices/SSSS:BB:DD.F`), to tell a
/// device that does not exist from one assigned elsewhere (Xen answers `-EINVAL` to both).
#[derive(Clone, Debug)]
pub struct PciView {
    root: std::path::PathBuf,
}

impl Default for PciView {
    fn default() -> Self {
        Self { root: "/sys/bus/pci/devices".into() }
    }
}

impl PciView {
    /// Devices listed under `root` (one entry per device, named `SSSS:BB:DD.F`).
    pub fn at(root: impl Into<std::path::PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Whether dom0 sees `sbdf`; `None` when the list itself is missing.
    pub fn present(&self, sbdf: Sbdf) -> Option<bool> {
        self.root.is_dir().then(|| self.root.join(sbdf.to_string()).exists())
    }
}

impl Driver for XenBackend {
    type Unit = XenUnit;

    fn probe(&self, desc: &UnitDesc, _host: HostServicesBox) -> Result<XenUnit, PluginError> {
        let physinfo = self.xen.physinfo().map_err(|e| plugin_error("physinfo", &e))?;
        let (major, minor) = self.xen.version();
        tracing::info!(unit = %desc.name, major, minor, capabilities = physinfo.capabilities, "Xen probed");
        let unit = XenUnit {
            xen: self.xen.clone(),
            segment: desc.segment,
            physinfo,
            pci: self.pci.clone(),
            version: (major, minor),
            assigned: Mutex::new(BTreeMap::new()),
            next_blocking: AtomicU64::new(BLOCKED_HANDLE),
        };
        Ok(unit)
    }
}

/// One PCI segment of devices whose DMA Xen's IOMMU driver translates.
pub struct XenUnit {
    xen: Arc<Xen>,
    segment: u16,
    physinfo: PhysInfo,
    pci: PciView,
    version: (u32, u32),
    /// Devices this unit assigned, and to which domain.
    assigned: Mutex<BTreeMap<Sbdf, DomId>>,
    next_blocking: AtomicU64,
}

fn err(code: ErrorCode, msg: impl Into<String>) -> PluginError {
    PluginError::new(code, msg)
}

impl XenUnit {
    fn sbdf(&self, dev: &DeviceInfo) -> Option<Sbdf> {
        match dev.dev {
            DeviceRef::Rid(r) => {
                let sid = r.source_id();
                Some(Sbdf { seg: self.segment, bus: (sid >> 8) as u8, devfn: sid as u8 })
            }
            DeviceRef::Sid(_) => None,
        }
    }

    fn pci(&self, dev: &DeviceInfo) -> Result<Sbdf, PluginError> {
        self.sbdf(dev).ok_or_else(|| err(ErrorCode::UNSUPPORTED, "Xen assigns PCI devices only (no stream ids)"))
    }

    fn assigned(&self) -> std::sync::MutexGuard<'_, BTreeMap<Sbdf, DomId>> {
        self.assigned.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn alloc(&self, req: &HwptRequest) -> Result<DomainHwpt, PluginError> {
        let hwpt = match req.kind {
            HwptKind::PAGING => {
                if req.flags.0 != 0 {
                    return Err(err(
                        ErrorCode::UNSUPPORTED,
                        format!(
                            "Xen takes no HWPT options (asked {:#x}: dirty tracking, coherency, page faults)",
                            req.flags.0
                        ),
                    ));
                }
                let Some(id) = req.space.guest_id() else {
                    return Err(err(
                        ErrorCode::INVALID,
                        "Xen owns the IOMMU: a paging HWPT must be a domain's guest-physical space \
                         (an IOAS of AddressSpace::guest(domid), as XenHost makes them)",
                    ));
                };
                let dom = DomId::try_from(id)
                    .ok()
                    .filter(|d| *d < DOMID_FIRST_RESERVED)
                    .ok_or_else(|| err(ErrorCode::INVALID, format!("{id} is not a Xen domain id")))?;
                self.xen.domain_info(dom).map_err(|e| plugin_error(&format!("domain {dom}"), &e))?;
                DomainHwpt::paging(self.xen.clone(), dom)
            }
            HwptKind::BLOCKING => {
                DomainHwpt::blocking(self.xen.clone(), self.next_blocking.fetch_add(1, Ordering::Relaxed))
            }
            HwptKind::NESTED => {
                return Err(err(ErrorCode::UNSUPPORTED, "Xen 4.17 does not let dom0 install a guest's stage-1 tables"))
            }
            HwptKind::IDENTITY => {
                return Err(err(ErrorCode::UNSUPPORTED, "Xen gives no dom0 user untranslated DMA"));
            }
            other => return Err(err(ErrorCode::INVALID, format!("unknown HWPT kind {}", other.0))),
        };
        Ok(hwpt)
    }

    fn deassign(&self, sbdf: Sbdf, dom: DomId) -> Result<(), PluginError> {
        self.xen
            .deassign_device(dom, sbdf)
            .map_err(|e| plugin_error(&format!("deassign {sbdf} from domain {dom}"), &e))?;
        self.assigned().remove(&sbdf);
        tracing::info!(%sbdf, dom, "device deassigned");
        Ok(())
    }

    fn assign(&self, sbdf: Sbdf, dom: DomId) -> Result<(), PluginError> {
        self.xen.test_assign_device(DOMID_INVALID, sbdf).map_err(|e| {
            let mut pe = plugin_error("test_assign_device", &e);
            pe.message = RString::from(super::negotiate::refusal_reason(sbdf, &e, self.pci.present(sbdf)));
            pe
        })?;
        self.xen.assign_device(dom, sbdf).map_err(|e| plugin_error(&format!("assign {sbdf} to domain {dom}"), &e))?;
        self.assigned().insert(sbdf, dom);
        tracing::info!(%sbdf, dom, "device assigned");
        Ok(())
    }

    fn do_attach(&self, dev: &DeviceInfo, pasid: Option<Pasid>, hwpt: &DomainHwpt) -> Result<(), PluginError> {
        if pasid.is_some() {
            return Err(err(ErrorCode::UNSUPPORTED, "Xen 4.17 attaches whole devices, not PASIDs"));
        }
        let sbdf = self.pci(dev)?;
        let info = hwpt.info();
        let current = self.assigned().get(&sbdf).copied();
        match info.kind {
            HwptKind::BLOCKING => match current {
                Some(old) => self.deassign(sbdf, old),
                None => Ok(()),
            },
            HwptKind::PAGING => {
                let dom =
                    DomId::try_from(info.handle).map_err(|_| err(ErrorCode::INVALID, "not a HWPT of this Xen unit"))?;
                match current {
                    Some(old) if old == dom => Ok(()),
                    Some(old) => {
                        // Xen has no atomic reassignment between domains: deassign, then assign.
                        // DMA in between goes to Xen's quarantine (blocked), never to a wrong domain.
                        self.deassign(sbdf, old)?;
                        if let Err(e) = self.assign(sbdf, dom) {
                            if let Err(undo) = self.assign(sbdf, old) {
                                tracing::error!(%sbdf, old, error = %undo.message, "re-assigning after a failed move");
                            }
                            return Err(e);
                        }
                        Ok(())
                    }
                    None => self.assign(sbdf, dom),
                }
            }
            other => Err(err(ErrorCode::UNSUPPORTED, format!("Xen cannot attach a {} HWPT", other.name()))),
        }
    }
}

impl UnitDriver for XenUnit {
    type Hwpt = DomainHwpt;
    type Viommu = NoViommu<DomainHwpt>;

    fn caps(&self) -> UnitCaps {
        UnitCaps {
            model: RString::from(format!(
                "Xen {}.{} hypervisor-owned IOMMU (directio: {})",
                self.version.0,
                self.version.1,
                if self.physinfo.directio() { "yes" } else { "no" }
            )),
            paging_format: PtFormat::HYPERVISOR_P2M,
            page_sizes: PageSizes::SZ_4K,
            ias_bits: 52,
            oas_bits: 52,
            pasid_bits: 0,
            features: Features::default(),
            nested_formats: RVec::new(),
        }
    }

    fn negotiate(&self, dev: &DeviceInfo, items: &[IntentCode]) -> Vec<ItemVerdict> {
        let sbdf = self.sbdf(dev);
        let mut assignable = || match sbdf {
            Some(sbdf) => self.xen.test_assign_device(DOMID_INVALID, sbdf),
            None => Ok(()),
        };
        let present = sbdf.and_then(|s| self.pci.present(s));
        items.iter().map(|i| judge(*i, sbdf, &self.physinfo, present, &mut assignable)).collect()
    }

    fn alloc_hwpt(&self, req: &HwptRequest) -> Result<DomainHwpt, PluginError> {
        self.alloc(req)
    }

    fn attach(&self, dev: &DeviceInfo, pasid: Option<Pasid>, hwpt: &DomainHwpt) -> Result<(), PluginError> {
        self.do_attach(dev, pasid, hwpt)
    }

    fn detach(&self, dev: &DeviceInfo, pasid: Option<Pasid>) -> Result<(), PluginError> {
        if pasid.is_some() {
            return Err(err(ErrorCode::UNSUPPORTED, "Xen 4.17 attaches whole devices, not PASIDs"));
        }
        let sbdf = self.pci(dev)?;
        let current = self.assigned().get(&sbdf).copied();
        match current {
            Some(dom) => self.deassign(sbdf, dom),
            None => Ok(()),
        }
    }

    fn read_faults(&self, _max: u32) -> Result<Vec<Fault>, PluginError> {
        // Xen takes the IOMMU's fault records itself (its console log shows them).
        Ok(Vec::new())
    }

    fn page_response(&self, _resp: &PageResponse) -> Result<(), PluginError> {
        Err(err(ErrorCode::UNSUPPORTED, "Xen forwards no page requests to dom0"))
    }

    fn table_pages(&self) -> u64 {
        0
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        let held: Vec<(Sbdf, DomId)> = self.assigned().iter().map(|(s, d)| (*s, *d)).collect();
        for (sbdf, dom) in held {
            self.deassign(sbdf, dom)?;
        }
        Ok(())
    }
}
