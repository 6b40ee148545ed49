//! [`XenHost`]: ioasis on a Xen dom0. Domains are guests whose guest-physical space is an IOAS;
//! PCI devices are bound through Xen's view of them; everything else is the public ioasis API.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ioasis::guest::GuestHost;
//! use ioasis::{Intent, IntentItem, Target};
//! use ioasis_xen::{Sbdf, Xen, XenHost};
//!
//! let host = XenHost::new(Arc::new(Xen::open()?))?;
//! let nic = host.bind_pci("nic", "0000:00:03.0".parse::<Sbdf>()?)?;
//! let ctx = host.context();
//! ctx.negotiate(nic, &Intent::new(vec![IntentItem::UntaggedDma]))?; // test_assign_device
//! let guest = host.create_guest("domU")?;                             // createdomain
//! ctx.attach(nic, None, Target::Ioas(guest.ioas))?;                   // assign_device
//! ctx.detach(nic, None)?;                                            // deassign_device
//! host.destroy_guest(guest)?;                                        // destroydomain
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ioasis::guest::{Guest, GuestHost};
use ioasis::loader::{Plugin, PluginInfoOwned};
use ioasis::{AddressSpace, Context, DeviceDesc, DeviceId, Error, PhysAddr, RequesterId, Result, UnitId};

use crate::abi::domctl::cdf;
use crate::backend::{PciView, XenBackend, XenPlatform};
use crate::{DomId, DomainConfig, Sbdf, Xen, XenError};

/// The name the Xen backend is registered under.
pub const PLUGIN_NAME: &str = "xen";

/// A domain this host knows.
#[derive(Clone, Copy, Debug)]
struct Domain {
    ioas: ioasis::IoasId,
    /// Created through this host (destroyed with the guest), or adopted (left running).
    created: bool,
}

/// ioasis on a Xen dom0 (see the module docs).
pub struct XenHost {
    xen: Arc<Xen>,
    ctx: Arc<Context>,
    plugin: Arc<Plugin>,
    units: Mutex<BTreeMap<u16, UnitId>>,
    devices: Mutex<Vec<DeviceId>>,
    domains: Mutex<BTreeMap<DomId, Domain>>,
    config: DomainConfig,
}

fn host_err(op: &'static str, e: impl std::fmt::Display) -> Error {
    Error::Host { host: "xen", op, message: e.to_string() }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl XenHost {
    /// ioasis over `xen`: a context whose only backend is Xen itself. Guests are created as
    /// small paused PV domains with an IOMMU ([`DomainConfig::pv_with_iommu`]); where Xen runs
    /// without an IOMMU (no directio in physinfo, so Xen refuses `CDF_iommu`) they are created
    /// without one, and negotiation refuses to give them devices.
    pub fn new(xen: Arc<Xen>) -> Result<Self> {
        Self::with_pci_view(xen, PciView::default())
    }

    /// As [`XenHost::new`], with dom0's PCI device list read from `pci` (tests give a folder).
    pub fn with_pci_view(xen: Arc<Xen>, pci: PciView) -> Result<Self> {
        let physinfo = xen.physinfo().map_err(|e| host_err("physinfo", e))?;
        let mut config = DomainConfig::pv_with_iommu();
        if !physinfo.directio() {
            config.flags &= !cdf::IOMMU;
        }
        let backend = ioasis::plugin::backend_box(XenBackend::new(xen.clone(), pci));
        let (major, minor) = xen.version();
        let info = PluginInfoOwned {
            name: PLUGIN_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            vendor: "ioasis project".into(),
            description: format!("Xen {major}.{minor}: device assignment by domctl from dom0"),
        };
        let plugin = Arc::new(Plugin::from_host(info, backend));
        let ctx = Arc::new(Context::new(Arc::new(XenPlatform)));
        Ok(Self {
            xen,
            ctx,
            plugin,
            units: Mutex::new(BTreeMap::new()),
            devices: Mutex::new(Vec::new()),
            domains: Mutex::new(BTreeMap::new()),
            config,
        })
    }

    /// Guests made by [`GuestHost::create_guest`] use `config` from now on.
    pub fn set_domain_config(&mut self, config: DomainConfig) {
        self.config = config;
    }

    /// The hypercall handle.
    pub fn xen(&self) -> &Arc<Xen> {
        &self.xen
    }

    /// The unit for PCI segment `seg`, probed on first use.
    pub fn unit(&self, seg: u16) -> Result<UnitId> {
        let mut units = lock(&self.units);
        if let Some(u) = units.get(&seg) {
            return Ok(*u);
        }
        let u = self.ctx.add_unit(&self.plugin, &format!("xen-seg{seg:04x}"), PhysAddr(0), seg, "")?;
        units.insert(seg, u);
        Ok(u)
    }

    /// Binds PCI device `sbdf` (owned by dom0 now). Devices Xen puts in one IOMMU group
    /// (`XEN_DOMCTL_get_device_group`) must share an IOAS, and the context enforces it.
    pub fn bind_pci(&self, name: &str, sbdf: Sbdf) -> Result<DeviceId> {
        let unit = self.unit(sbdf.seg)?;
        let unit_name = self.ctx.units().into_iter().find(|(id, _, _)| *id == unit).map(|(_, n, _)| n);
        let mut desc = DeviceDesc::pci(
            name,
            RequesterId::new(sbdf.seg, sbdf.bus, sbdf.devfn >> 3, sbdf.devfn & 7),
            &unit_name.unwrap_or_default(),
        );
        desc.no_acs_below = self.group_boundary(sbdf);
        let id = self.ctx.bind_device(desc)?;
        lock(&self.devices).push(id);
        Ok(id)
    }

    /// The shared-IOAS boundary of `sbdf`: the group's smallest member, when Xen says the
    /// device shares its group with others.
    fn group_boundary(&self, sbdf: Sbdf) -> Option<String> {
        match self.xen.device_group(0, sbdf, 256) {
            Ok(peers) if peers.iter().any(|p| *p != sbdf) => {
                let first = peers.iter().copied().chain([sbdf]).min().unwrap_or(sbdf);
                tracing::info!(%sbdf, peers = peers.len(), group = %first, "device shares an IOMMU group");
                Some(format!("xen-group-{first}"))
            }
            Ok(_) => None,
            Err(e) => {
                // Without an IOMMU Xen has no groups; negotiation will refuse assignment anyway.
                tracing::debug!(%sbdf, error = %e, "no device group from Xen");
                None
            }
        }
    }

    /// Creates a domain with `config` (paused, never run by this host) and its IOAS.
    pub fn create_domain(&self, config: &DomainConfig) -> Result<Guest> {
        let dom = self.xen.create_domain(config).map_err(|e| host_err("create domain", e))?;
        let ioas = self.ctx.alloc_ioas_in(AddressSpace::guest(dom as u64));
        lock(&self.domains).insert(dom, Domain { ioas, created: true });
        tracing::info!(dom, %ioas, "domain created");
        Ok(Guest { id: dom as u64, ioas })
    }

    /// An IOAS for an existing domain (made by a toolstack); destroying the guest forgets the
    /// IOAS but leaves the domain alone.
    pub fn adopt_domain(&self, dom: DomId) -> Result<Guest> {
        self.xen.domain_info(dom).map_err(|e| match e {
            XenError::Hypercall { .. } => host_err("adopt domain", format!("no Xen domain {dom}: {e}")),
            other => host_err("adopt domain", other),
        })?;
        let mut domains = lock(&self.domains);
        if let Some(d) = domains.get(&dom) {
            return Ok(Guest { id: dom as u64, ioas: d.ioas });
        }
        let ioas = self.ctx.alloc_ioas_in(AddressSpace::guest(dom as u64));
        domains.insert(dom, Domain { ioas, created: false });
        Ok(Guest { id: dom as u64, ioas })
    }
}

impl GuestHost for XenHost {
    fn name(&self) -> &'static str {
        "xen"
    }

    fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    fn assignable(&self) -> Vec<DeviceId> {
        lock(&self.devices).clone()
    }

    fn create_guest(&self, name: &str) -> Result<Guest> {
        let g = self.create_domain(&self.config)?;
        tracing::info!(name, dom = g.id, "guest is a Xen domain");
        Ok(g)
    }

    fn destroy_guest(&self, guest: Guest) -> Result<()> {
        let mut domains = lock(&self.domains);
        let dom = DomId::try_from(guest.id).ok();
        let Some((dom, d)) =
            dom.and_then(|id| domains.get(&id).map(|d| (id, *d))).filter(|(_, d)| d.ioas == guest.ioas)
        else {
            return Err(Error::Invalid(format!("no guest {} with IOAS {} on this host", guest.id, guest.ioas)));
        };
        let users = self.ctx.ioas_hwpts(d.ioas)?.len();
        if users > 0 {
            return Err(Error::Busy { what: "IOAS", id: d.ioas.0, by: format!("{users} HWPT(s) of assigned devices") });
        }
        self.ctx.destroy(d.ioas)?;
        domains.remove(&dom);
        if d.created {
            self.xen.destroy_domain(dom).map_err(|e| host_err("destroy domain", e))?;
            tracing::info!(dom, "domain destroyed");
        }
        Ok(())
    }
}
