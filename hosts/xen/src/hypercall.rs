//! The typed hypercall API: [`Xen`] and the values it takes and returns.

use std::fmt;
use std::str::FromStr;

use crate::abi::domctl::{
    self, cdf, dominf, x86_emu, ArchDomainConfig, Domctl, DomctlAssignDevice, DomctlCreateDomain, DomctlGetDeviceGroup,
    DomctlGetDomainInfo, DomctlIomemPermission, DomctlMemoryMapping,
};
use crate::abi::sysctl::{self, physcap, Sysctl, SysctlPhysinfo};
use crate::abi::{
    errno, release, version, InterfaceVersions, Layout, Payload, Pod, DOMID_FIRST_RESERVED, HYPERVISOR_DOMCTL,
    HYPERVISOR_SYSCTL, HYPERVISOR_XEN_VERSION,
};
use crate::error::XenError;
use crate::transport::privcmd::Privcmd;
use crate::transport::Transport;

/// A Xen domain id.
pub type DomId = u16;

/// How many times [`Xen::destroy_domain`] retries `-EAGAIN`/`-ERESTART`.
pub const DESTROY_RETRY_LIMIT: u32 = 64;

/// How many hypercalls one [`Xen::memory_mapping`] may make (continuations and splits).
pub const MEMORY_MAPPING_CALL_LIMIT: u32 = 1 << 16;

/// A PCI device as Xen's domctls name it: `machine_sbdf = seg << 16 | bus << 8 | devfn`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sbdf {
    /// PCI segment.
    pub seg: u16,
    /// Bus.
    pub bus: u8,
    /// Device (bits 7..3) and function (bits 2..0).
    pub devfn: u8,
}

impl Sbdf {
    /// From segment, bus, device (0..32) and function (0..8).
    pub fn new(seg: u16, bus: u8, dev: u8, func: u8) -> Sbdf {
        assert!(dev < 32 && func < 8, "PCI device {dev} function {func}");
        Sbdf { seg, bus, devfn: dev << 3 | func }
    }

    /// From Xen's `machine_sbdf`.
    pub fn from_raw(sbdf: u32) -> Sbdf {
        Sbdf { seg: (sbdf >> 16) as u16, bus: (sbdf >> 8) as u8, devfn: sbdf as u8 }
    }

    /// Xen's `machine_sbdf`.
    pub fn raw(self) -> u32 {
        u32::from(self.seg) << 16 | u32::from(self.bus) << 8 | u32::from(self.devfn)
    }

    /// Device number.
    pub fn dev(self) -> u8 {
        self.devfn >> 3
    }

    /// Function number.
    pub fn func(self) -> u8 {
        self.devfn & 7
    }
}

impl fmt::Display for Sbdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{}", self.seg, self.bus, self.dev(), self.func())
    }
}

/// Why a string is not a PCI address.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a PCI address (SSSS:BB:DD.F or BB:DD.F, hexadecimal)")]
pub struct ParseSbdfError {
    input: String,
}

impl FromStr for Sbdf {
    type Err = ParseSbdfError;

    /// Parses `SSSS:BB:DD.F` or `BB:DD.F` (segment 0), hexadecimal, as lspci prints them.
    fn from_str(s: &str) -> Result<Sbdf, ParseSbdfError> {
        let err = || ParseSbdfError { input: s.into() };
        let (head, func) = s.rsplit_once('.').ok_or_else(err)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (seg, bus, dev) = match parts[..] {
            [seg, bus, dev] => (seg, bus, dev),
            [bus, dev] => ("0", bus, dev),
            _ => return Err(err()),
        };
        let hex = |t: &str, max: u32| {
            if t.is_empty() || t.len() > 4 {
                return None;
            }
            u32::from_str_radix(t, 16).ok().filter(|&v| v <= max)
        };
        let seg = hex(seg, 0xffff).ok_or_else(err)?;
        let bus = hex(bus, 0xff).ok_or_else(err)?;
        let dev = hex(dev, 0x1f).ok_or_else(err)?;
        let func = hex(func, 7).ok_or_else(err)?;
        Ok(Sbdf::new(seg as u16, bus as u8, dev as u8, func as u8))
    }
}

/// The host, as `XEN_SYSCTL_physinfo` describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysInfo {
    /// `XEN_SYSCTL_PHYSCAP_*` bits.
    pub capabilities: u32,
    /// Architecture capability bits (none defined for x86 in 4.17).
    pub arch_capabilities: u32,
    /// Online CPUs.
    pub nr_cpus: u32,
    /// Largest possible CPU id.
    pub max_cpu_id: u32,
    /// Threads per core.
    pub threads_per_core: u32,
    /// Cores per socket.
    pub cores_per_socket: u32,
    /// Online NUMA nodes.
    pub nr_nodes: u32,
    /// Largest possible node id.
    pub max_node_id: u32,
    /// CPU frequency, kHz.
    pub cpu_khz: u32,
    /// Pages of RAM.
    pub total_pages: u64,
    /// Free pages.
    pub free_pages: u64,
    /// Pages waiting to be scrubbed.
    pub scrub_pages: u64,
    /// Claimed, not yet allocated pages.
    pub outstanding_pages: u64,
    /// Largest possible machine frame.
    pub max_mfn: u64,
    /// Hardware capability words.
    pub hw_cap: [u32; 8],
}

impl PhysInfo {
    fn from_raw(r: &SysctlPhysinfo) -> PhysInfo {
        PhysInfo {
            capabilities: r.capabilities,
            arch_capabilities: r.arch_capabilities,
            nr_cpus: r.nr_cpus,
            max_cpu_id: r.max_cpu_id,
            threads_per_core: r.threads_per_core,
            cores_per_socket: r.cores_per_socket,
            nr_nodes: r.nr_nodes,
            max_node_id: r.max_node_id,
            cpu_khz: r.cpu_khz,
            total_pages: r.total_pages,
            free_pages: r.free_pages,
            scrub_pages: r.scrub_pages,
            outstanding_pages: r.outstanding_pages,
            max_mfn: r.max_mfn,
            hw_cap: r.hw_cap,
        }
    }

    fn has(&self, bit: u32) -> bool {
        self.capabilities & bit != 0
    }

    /// HVM guests can be created.
    pub fn hvm(&self) -> bool {
        self.has(physcap::HVM)
    }

    /// PV guests can be created.
    pub fn pv(&self) -> bool {
        self.has(physcap::PV)
    }

    /// An IOMMU is enabled: devices can be assigned to guests.
    pub fn directio(&self) -> bool {
        self.has(physcap::DIRECTIO)
    }

    /// Hardware-assisted paging (EPT/NPT).
    pub fn hap(&self) -> bool {
        self.has(physcap::HAP)
    }

    /// Shadow paging.
    pub fn shadow(&self) -> bool {
        self.has(physcap::SHADOW)
    }

    /// HAP page tables can be shared with the IOMMU.
    pub fn iommu_hap_pt_share(&self) -> bool {
        self.has(physcap::IOMMU_HAP_PT_SHARE)
    }

    /// Processor trace for guests.
    pub fn vmtrace(&self) -> bool {
        self.has(physcap::VMTRACE)
    }

    /// vPMU.
    pub fn vpmu(&self) -> bool {
        self.has(physcap::VPMU)
    }

    /// Grant table v1.
    pub fn gnttab_v1(&self) -> bool {
        self.has(physcap::GNTTAB_V1)
    }

    /// Grant table v2.
    pub fn gnttab_v2(&self) -> bool {
        self.has(physcap::GNTTAB_V2)
    }
}

/// What [`Xen::create_domain`] asks for (`struct xen_domctl_createdomain`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainConfig {
    /// Requested domain id; 0 (or a reserved id) lets Xen choose.
    pub domid: DomId,
    /// `XEN_DOMCTL_CDF_*` ([`cdf`]).
    pub flags: u32,
    /// `XEN_DOMCTL_IOMMU_*`.
    pub iommu_opts: u32,
    /// vCPUs (at least 1).
    pub max_vcpus: u32,
    /// Highest event-channel port.
    pub max_evtchn_port: u32,
    /// Grant-table frames; -1 = Xen's default.
    pub max_grant_frames: i32,
    /// Maptrack frames; -1 = Xen's default.
    pub max_maptrack_frames: i32,
    /// Maximum grant-table version (1 or 2; Xen refuses 0).
    pub max_grant_version: u32,
    /// Per-vCPU trace buffer bytes; 0 = none.
    pub vmtrace_size: u32,
    /// CPU pool; 0 = default.
    pub cpupool_id: u32,
    /// XSM security id.
    pub ssidref: u32,
    /// The 16-byte domain handle (a UUID for the toolstack).
    pub handle: [u8; 16],
    /// `XEN_X86_EMU_*` ([`x86_emu`]): 0 for PV.
    pub emulation_flags: u32,
    /// `XEN_X86_MSR_RELAXED` or 0.
    pub misc_flags: u32,
}

impl DomainConfig {
    /// A small PV domain that may use the IOMMU: one vCPU, `CDF_iommu`, no emulated devices,
    /// xl's limits (1023 event channels, Xen's default grant and maptrack frames), grant v1.
    /// Xen creates every domain paused and without memory.
    pub fn pv_with_iommu() -> DomainConfig {
        DomainConfig {
            domid: 0,
            flags: cdf::IOMMU,
            iommu_opts: 0,
            max_vcpus: 1,
            max_evtchn_port: 1023,
            max_grant_frames: -1,
            max_maptrack_frames: -1,
            max_grant_version: 1,
            vmtrace_size: 0,
            cpupool_id: 0,
            ssidref: 0,
            handle: [0; 16],
            emulation_flags: 0,
            misc_flags: 0,
        }
    }

    /// A small HVM domain with HAP that may use the IOMMU: as [`DomainConfig::pv_with_iommu`],
    /// plus `CDF_hvm | CDF_hap` and xl's HVM device model set (every `XEN_X86_EMU_*` but vPCI).
    /// Needs [`PhysInfo::hvm`] and [`PhysInfo::hap`].
    pub fn hvm_with_iommu() -> DomainConfig {
        DomainConfig {
            flags: cdf::HVM | cdf::HAP | cdf::IOMMU,
            emulation_flags: x86_emu::ALL & !x86_emu::VPCI,
            ..DomainConfig::pv_with_iommu()
        }
    }

    fn to_raw(self) -> DomctlCreateDomain {
        DomctlCreateDomain {
            ssidref: self.ssidref,
            handle: self.handle,
            flags: self.flags,
            iommu_opts: self.iommu_opts,
            max_vcpus: self.max_vcpus,
            max_evtchn_port: self.max_evtchn_port,
            max_grant_frames: self.max_grant_frames,
            max_maptrack_frames: self.max_maptrack_frames,
            grant_opts: self.max_grant_version & domctl::GRANT_VERSION_MASK,
            vmtrace_size: self.vmtrace_size,
            cpupool_id: self.cpupool_id,
            arch: ArchDomainConfig { emulation_flags: self.emulation_flags, misc_flags: self.misc_flags },
        }
    }
}

/// A domain as `XEN_DOMCTL_getdomaininfo` describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainInfo {
    /// Its id.
    pub domid: DomId,
    /// `XEN_DOMINF_*` ([`dominf`]) and the shutdown code.
    pub flags: u32,
    /// Pages it owns.
    pub tot_pages: u64,
    /// Its page limit.
    pub max_pages: u64,
    /// Claimed, not yet allocated pages.
    pub outstanding_pages: u64,
    /// Shared pages.
    pub shr_pages: u64,
    /// Paged-out pages.
    pub paged_pages: u64,
    /// GMFN of its shared-info page.
    pub shared_info_frame: u64,
    /// CPU time of all its vCPUs, ns.
    pub cpu_time: u64,
    /// Online vCPUs.
    pub nr_online_vcpus: u32,
    /// Highest vCPU id (`u32::MAX` if none).
    pub max_vcpu_id: u32,
    /// XSM security id.
    pub ssidref: u32,
    /// Its handle.
    pub handle: [u8; 16],
    /// Its CPU pool.
    pub cpupool: u32,
    /// Guest physical address width.
    pub gpaddr_bits: u8,
    /// `XEN_X86_EMU_*` it was created with.
    pub emulation_flags: u32,
    /// `XEN_X86_MSR_RELAXED` or 0.
    pub misc_flags: u32,
}

impl DomainInfo {
    fn from_raw(r: &DomctlGetDomainInfo) -> DomainInfo {
        DomainInfo {
            domid: r.domain,
            flags: r.flags,
            tot_pages: r.tot_pages,
            max_pages: r.max_pages,
            outstanding_pages: r.outstanding_pages,
            shr_pages: r.shr_pages,
            paged_pages: r.paged_pages,
            shared_info_frame: r.shared_info_frame,
            cpu_time: r.cpu_time,
            nr_online_vcpus: r.nr_online_vcpus,
            max_vcpu_id: r.max_vcpu_id,
            ssidref: r.ssidref,
            handle: r.handle,
            cpupool: r.cpupool,
            gpaddr_bits: r.gpaddr_bits,
            emulation_flags: r.arch_config.emulation_flags,
            misc_flags: r.arch_config.misc_flags,
        }
    }

    fn has(&self, bit: u32) -> bool {
        self.flags & bit != 0
    }

    /// Being destroyed (4.17 sets this once the domain is dead but still referenced).
    pub fn dying(&self) -> bool {
        self.has(dominf::DYING)
    }

    /// Paused by the control software (fresh domains are).
    pub fn paused(&self) -> bool {
        self.has(dominf::PAUSED)
    }

    /// An HVM guest.
    pub fn hvm(&self) -> bool {
        self.has(dominf::HVM_GUEST)
    }

    /// The guest has shut down.
    pub fn shutdown(&self) -> bool {
        self.has(dominf::SHUTDOWN)
    }

    /// The guest's shutdown code (meaningful if [`DomainInfo::shutdown`]).
    pub fn shutdown_code(&self) -> u32 {
        (self.flags >> dominf::SHUTDOWN_SHIFT) & dominf::SHUTDOWN_MASK
    }

    /// All its vCPUs are blocked.
    pub fn blocked(&self) -> bool {
        self.has(dominf::BLOCKED)
    }

    /// A vCPU is running.
    pub fn running(&self) -> bool {
        self.has(dominf::RUNNING)
    }

    /// Uses hardware-assisted paging.
    pub fn hap(&self) -> bool {
        self.has(dominf::HAP)
    }
}

/// A connection to Xen's control interface. `Send + Sync`: every call builds its own buffers.
pub struct Xen {
    transport: Box<dyn Transport>,
    version: (u32, u32),
    interface: InterfaceVersions,
    layout: Layout,
}

impl fmt::Debug for Xen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Xen")
            .field("version", &self.version)
            .field("interface", &self.interface)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

fn dom_ctx(dom: DomId) -> String {
    format!("dom {dom}")
}

fn dev_ctx(dom: DomId, dev: Sbdf) -> String {
    format!("dom {dom}, {dev}")
}

impl Xen {
    /// Opens `/dev/xen/privcmd` and discovers the interface versions.
    pub fn open() -> Result<Xen, XenError> {
        Xen::with_transport(Box::new(Privcmd::open()?))
    }

    /// Over any transport (the recorded test double in unit tests). Reads `XENVER_version`,
    /// looks the release up in [`crate::abi::RELEASES`], then probes `XEN_SYSCTL_physinfo` and
    /// `XEN_DOMCTL_getdomaininfo` of dom0 with that release's interface versions. An unknown
    /// release, or `-EACCES` from a probe, is [`XenError::InterfaceMismatch`]; no buffer of an
    /// unknown layout is ever sent.
    pub fn with_transport(transport: Box<dyn Transport>) -> Result<Xen, XenError> {
        let rc = transport
            .hypercall(HYPERVISOR_XEN_VERSION, [version::XENVER_VERSION, 0, 0, 0, 0])
            .map_err(|e| XenError::hypercall("XENVER_version", e, ""))?;
        let (major, minor) = version::split_version(rc as u64);
        let Some(rel) = release(major, minor) else {
            let extra = read_extraversion(transport.as_ref()).ok();
            return Err(XenError::mismatch(
                (major, minor),
                extra,
                None,
                "this release is not in the adapter's table of known layouts, so no domctl or \
                 sysctl was sent",
            ));
        };
        let xen = Xen { transport, version: (major, minor), interface: rel.interface, layout: rel.layout };
        xen.probe()?;
        tracing::info!(major, minor, domctl = xen.interface.domctl, sysctl = xen.interface.sysctl, "connected to Xen");
        Ok(xen)
    }

    fn probe(&self) -> Result<(), XenError> {
        let refused = |e: XenError, what: &str| -> XenError {
            match e.errno() {
                Some(errno::EACCES) => XenError::mismatch(
                    self.version,
                    self.extraversion().ok(),
                    Some(self.interface),
                    format!("{what} was refused with -EACCES (wrong interface_version)"),
                ),
                Some(errno::EPERM) => XenError::Unavailable(format!(
                    "{what} was refused with -EPERM: this domain is not privileged (not dom0?)"
                )),
                _ => e,
            }
        };
        self.physinfo().map_err(|e| refused(e, "probe XEN_SYSCTL_physinfo"))?;
        self.getdomaininfo_raw(0).map_err(|e| refused(e, "probe XEN_DOMCTL_getdomaininfo of dom0"))?;
        Ok(())
    }

    /// The running Xen's `(major, minor)`.
    pub fn version(&self) -> (u32, u32) {
        self.version
    }

    /// The interface versions every buffer carries.
    pub fn interface(&self) -> InterfaceVersions {
        self.interface
    }

    /// The structure layout in use.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// `XENVER_extraversion` (".7" for 4.17.7).
    pub fn extraversion(&self) -> Result<String, XenError> {
        read_extraversion(self.transport.as_ref())
    }

    /// `XEN_SYSCTL_physinfo`.
    pub fn physinfo(&self) -> Result<PhysInfo, XenError> {
        let (_, reply) = self.sysctl(sysctl::cmd::PHYSINFO, &SysctlPhysinfo::default(), "")?;
        Ok(PhysInfo::from_raw(&reply.u.get::<SysctlPhysinfo>()))
    }

    /// `XEN_DOMCTL_createdomain`; returns the new domain's id. The domain is paused.
    pub fn create_domain(&self, cfg: &DomainConfig) -> Result<DomId, XenError> {
        if cfg.max_vcpus == 0 {
            return Err(XenError::InvalidArgument("a domain needs at least one vCPU".into()));
        }
        let req = cfg.to_raw();
        let ctx = format!("requested dom {}, flags {:#x}", cfg.domid, cfg.flags);
        let (_, reply) = self.domctl(domctl::cmd::CREATEDOMAIN, cfg.domid, &req, &ctx)?;
        let dom = reply.domain;
        if dom == 0 || dom >= DOMID_FIRST_RESERVED {
            return Err(XenError::Protocol {
                op: "XEN_DOMCTL_createdomain",
                detail: format!("success with domain id {dom:#x}"),
            });
        }
        tracing::info!(dom, flags = cfg.flags, "created domain");
        Ok(dom)
    }

    /// `XEN_DOMCTL_destroydomain`, retried on `-EAGAIN`/`-ERESTART` up to
    /// [`DESTROY_RETRY_LIMIT`] times.
    pub fn destroy_domain(&self, dom: DomId) -> Result<(), XenError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.domctl(domctl::cmd::DESTROYDOMAIN, dom, &(), &dom_ctx(dom)) {
                Ok(_) => {
                    tracing::info!(dom, attempts, "destroyed domain");
                    return Ok(());
                }
                Err(e)
                    if (e.is_errno(errno::EAGAIN) || e.is_errno(errno::ERESTART)) && attempts < DESTROY_RETRY_LIMIT =>
                {
                    tracing::debug!(dom, attempts, error = %e, "destroy in progress, retrying");
                    std::thread::yield_now();
                }
                Err(XenError::Hypercall { op, errno, name, .. })
                    if errno == errno::EAGAIN || errno == errno::ERESTART =>
                {
                    return Err(XenError::Hypercall {
                        op,
                        errno,
                        name,
                        context: format!("dom {dom}, still busy after {attempts} attempts"),
                    });
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `XEN_DOMCTL_getdomaininfo` of `dom`. Xen 4.17 answers for the next existing domain when
    /// `dom` does not exist; that is reported as `-ESRCH` here.
    pub fn domain_info(&self, dom: DomId) -> Result<DomainInfo, XenError> {
        let raw = self.getdomaininfo_raw(dom)?;
        if raw.domain != dom {
            return Err(XenError::hypercall(
                "XEN_DOMCTL_getdomaininfo",
                errno::ESRCH,
                format!("dom {dom} absent; Xen described dom {} instead", raw.domain),
            ));
        }
        Ok(DomainInfo::from_raw(&raw))
    }

    fn getdomaininfo_raw(&self, dom: DomId) -> Result<DomctlGetDomainInfo, XenError> {
        let (_, reply) =
            self.domctl(domctl::cmd::GETDOMAININFO, dom, &DomctlGetDomainInfo::default(), &dom_ctx(dom))?;
        Ok(reply.u.get::<DomctlGetDomainInfo>())
    }

    /// `XEN_DOMCTL_test_assign_device`: Ok if `dev` exists and is free (owned by dom0 or
    /// quarantined). `dom` = [`crate::abi::DOMID_INVALID`] asks without a target domain.
    pub fn test_assign_device(&self, dom: DomId, dev: Sbdf) -> Result<(), XenError> {
        self.assign_op(domctl::cmd::TEST_ASSIGN_DEVICE, dom, dev)
    }

    /// `XEN_DOMCTL_assign_device` of PCI `dev` to `dom` (flags 0).
    pub fn assign_device(&self, dom: DomId, dev: Sbdf) -> Result<(), XenError> {
        self.assign_op(domctl::cmd::ASSIGN_DEVICE, dom, dev)?;
        tracing::info!(dom, %dev, "assigned device");
        Ok(())
    }

    /// `XEN_DOMCTL_deassign_device` of PCI `dev` from `dom` (it returns to dom0 or quarantine).
    pub fn deassign_device(&self, dom: DomId, dev: Sbdf) -> Result<(), XenError> {
        self.assign_op(domctl::cmd::DEASSIGN_DEVICE, dom, dev)?;
        tracing::info!(dom, %dev, "deassigned device");
        Ok(())
    }

    fn assign_op(&self, cmd: u32, dom: DomId, dev: Sbdf) -> Result<(), XenError> {
        let req = DomctlAssignDevice::pci(dev.raw(), 0);
        self.domctl(cmd, dom, &req, &dev_ctx(dom, dev))?;
        Ok(())
    }

    /// `XEN_DOMCTL_get_device_group`: the other devices owned by `dom` that share `dev`'s IOMMU
    /// group (`dev` itself is not listed), at most `max`.
    pub fn device_group(&self, dom: DomId, dev: Sbdf, max: u32) -> Result<Vec<Sbdf>, XenError> {
        let array_len =
            (max as usize).checked_mul(4).ok_or_else(|| XenError::InvalidArgument(format!("max {max} too large")))?;
        let array = self.transport.buffer(array_len.max(4))?;
        let req = DomctlGetDeviceGroup {
            machine_sbdf: dev.raw(),
            max_sdevs: max,
            sdev_array: array.addr(),
            ..Default::default()
        };
        let (_, reply) = self.domctl(domctl::cmd::GET_DEVICE_GROUP, dom, &req, &dev_ctx(dom, dev))?;
        let out = reply.u.get::<DomctlGetDeviceGroup>();
        if out.num_sdevs > max {
            return Err(XenError::Protocol {
                op: "XEN_DOMCTL_get_device_group",
                detail: format!("{} entries for room of {max}", out.num_sdevs),
            });
        }
        (0..out.num_sdevs as usize)
            .map(|i| {
                // Entries are `bus << 16 | devfn << 8`; the segment is the queried one.
                let e: u32 = array.read(i * 4)?;
                Ok(Sbdf { seg: dev.seg, bus: (e >> 16) as u8, devfn: (e >> 8) as u8 })
            })
            .collect()
    }

    /// `XEN_DOMCTL_memory_mapping` of `nr` frames, `first_gfn` → `first_mfn`, add or remove.
    /// Follows Xen's partial progress (a positive return = frames done) and halves the batch on
    /// `-E2BIG`, within [`MEMORY_MAPPING_CALL_LIMIT`] calls. If adding fails part way, what was
    /// added is removed again before the error is returned.
    pub fn memory_mapping(
        &self,
        dom: DomId,
        first_gfn: u64,
        first_mfn: u64,
        nr: u64,
        add: bool,
    ) -> Result<(), XenError> {
        check_range("memory_mapping", first_mfn, nr)?;
        check_range("memory_mapping", first_gfn, nr)?;
        match self.memory_mapping_loop(dom, first_gfn, first_mfn, nr, add) {
            Ok(()) => Ok(()),
            Err((done, e)) if add && done > 0 => {
                let undo = self.memory_mapping_loop(dom, first_gfn, first_mfn, done, false);
                match (e, undo) {
                    (XenError::Hypercall { op, errno, name, context }, Ok(())) => Err(XenError::Hypercall {
                        op,
                        errno,
                        name,
                        context: format!("{context}; the {done} frames mapped were unmapped"),
                    }),
                    (e, Ok(())) => Err(e),
                    (e, Err((_, undo_err))) => {
                        tracing::error!(dom, done, error = %undo_err, "undoing a partial mapping failed");
                        Err(e)
                    }
                }
            }
            Err((_, e)) => Err(e),
        }
    }

    fn memory_mapping_loop(
        &self,
        dom: DomId,
        first_gfn: u64,
        first_mfn: u64,
        nr: u64,
        add: bool,
    ) -> Result<(), (u64, XenError)> {
        let mut done = 0u64;
        let mut batch = nr;
        let mut calls = 0u32;
        while done < nr {
            calls += 1;
            if calls > MEMORY_MAPPING_CALL_LIMIT {
                return Err((
                    done,
                    XenError::Protocol {
                        op: "XEN_DOMCTL_memory_mapping",
                        detail: format!("{done} of {nr} frames after {MEMORY_MAPPING_CALL_LIMIT} calls"),
                    },
                ));
            }
            let this = batch.min(nr - done);
            let req = DomctlMemoryMapping {
                first_gfn: first_gfn + done,
                first_mfn: first_mfn + done,
                nr_mfns: this,
                add_mapping: if add { domctl::DPCI_ADD_MAPPING } else { domctl::DPCI_REMOVE_MAPPING },
                padding: 0,
            };
            let ctx = format!(
                "dom {dom}, gfn {:#x} -> mfn {:#x}, {this} frames, {}",
                req.first_gfn,
                req.first_mfn,
                if add { "add" } else { "remove" }
            );
            match self.domctl(domctl::cmd::MEMORY_MAPPING, dom, &req, &ctx) {
                Ok((0, _)) => done += this,
                Ok((rc, _)) if (rc as u64) < this => {
                    tracing::debug!(dom, done, rc, this, "memory_mapping partial progress");
                    done += rc as u64;
                }
                Ok((rc, _)) => {
                    return Err((
                        done,
                        XenError::Protocol {
                            op: "XEN_DOMCTL_memory_mapping",
                            detail: format!("returned {rc} for a batch of {this} frames"),
                        },
                    ))
                }
                Err(e) if e.is_errno(errno::E2BIG) && this > 1 => batch = this / 2,
                Err(e) => return Err((done, e)),
            }
        }
        Ok(())
    }

    /// `XEN_DOMCTL_iomem_permission`: allow or deny `dom` access to `nr` machine frames.
    pub fn iomem_permission(&self, dom: DomId, first_mfn: u64, nr: u64, allow: bool) -> Result<(), XenError> {
        check_range("iomem_permission", first_mfn, nr)?;
        let req = DomctlIomemPermission { first_mfn, nr_mfns: nr, allow_access: u8::from(allow), _pad: [0; 7] };
        let ctx = format!("dom {dom}, mfn {first_mfn:#x}+{nr}, {}", if allow { "allow" } else { "deny" });
        self.domctl(domctl::cmd::IOMEM_PERMISSION, dom, &req, &ctx)?;
        Ok(())
    }

    /// Issues domctl `cmd` with `payload`; returns Xen's return value and the buffer after it.
    fn domctl<T: Pod>(&self, cmd: u32, dom: DomId, payload: &T, ctx: &str) -> Result<(i64, Domctl), XenError> {
        let op = domctl::cmd::name(cmd);
        let req = Domctl {
            cmd,
            interface_version: self.interface.domctl,
            domain: dom,
            _pad: [0; 3],
            u: Payload::of(payload),
        };
        let mut buf = self.transport.buffer(size_of::<Domctl>())?;
        buf.write(0, &req)?;
        let rc = self.transport.hypercall(HYPERVISOR_DOMCTL, [buf.addr(), 0, 0, 0, 0]);
        tracing::debug!(op, dom, ?rc, "domctl");
        let rc = rc.map_err(|e| XenError::hypercall(op, e, ctx))?;
        Ok((rc, buf.read(0)?))
    }

    /// Issues sysctl `cmd` with `payload`; returns Xen's return value and the buffer after it.
    fn sysctl<T: Pod>(&self, cmd: u32, payload: &T, ctx: &str) -> Result<(i64, Sysctl), XenError> {
        let op = sysctl::cmd::name(cmd);
        let req = Sysctl { cmd, interface_version: self.interface.sysctl, u: Payload::of(payload) };
        let mut buf = self.transport.buffer(size_of::<Sysctl>())?;
        buf.write(0, &req)?;
        let rc = self.transport.hypercall(HYPERVISOR_SYSCTL, [buf.addr(), 0, 0, 0, 0]);
        tracing::debug!(op, ?rc, "sysctl");
        let rc = rc.map_err(|e| XenError::hypercall(op, e, ctx))?;
        Ok((rc, buf.read(0)?))
    }
}

fn check_range(what: &str, first: u64, nr: u64) -> Result<(), XenError> {
    if nr == 0 {
        return Err(XenError::InvalidArgument(format!("{what} of zero frames")));
    }
    if first.checked_add(nr - 1).is_none() {
        return Err(XenError::InvalidArgument(format!("{what}: frames {first:#x}+{nr} wrap around")));
    }
    Ok(())
}

fn read_extraversion(t: &dyn Transport) -> Result<String, XenError> {
    let buf = t.buffer(version::EXTRAVERSION_LEN)?;
    t.hypercall(HYPERVISOR_XEN_VERSION, [version::XENVER_EXTRAVERSION, buf.addr(), 0, 0, 0])
        .map_err(|e| XenError::hypercall("XENVER_extraversion", e, ""))?;
    Ok(version::extraversion_text(&buf.read(0)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::domctl::cmd;
    use crate::abi::{bytes_of, DOMID_INVALID};
    use crate::transport::recorded::{sample_physinfo, Exchange, Recorded, SAMPLE_CAPABILITIES};

    fn xen(r: &Recorded) -> Xen {
        Xen::with_transport(Box::new(r.clone())).expect("handshake")
    }

    /// A connected adapter over a double that has served the 4.17 handshake.
    fn connected() -> (Xen, Recorded) {
        let r = Recorded::xen_4_17();
        let x = xen(&r);
        r.assert_done();
        (x, r)
    }

    fn sbdf(s: &str) -> Sbdf {
        s.parse().unwrap()
    }

    #[test]
    fn xen_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Xen>();
        check::<XenError>();
    }

    #[test]
    fn handshake_discovers_417_and_probes_with_its_versions() {
        let (x, r) = connected();
        assert_eq!(x.version(), (4, 17));
        assert_eq!(x.interface(), InterfaceVersions { domctl: 0x15, sysctl: 0x15 });
        assert_eq!(x.layout(), Layout::Xen417);
        let calls = r.calls();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].op, 17);
        assert_eq!(calls[0].args, [0; 5], "XENVER_version with a NULL argument");
        assert_eq!((calls[1].op, calls[1].cmd), (35, 3));
        assert_eq!(calls[1].interface_version, Some(0x15));
        assert_eq!((calls[2].op, calls[2].cmd), (36, 5));
        assert_eq!(calls[2].interface_version, Some(0x15));
        assert_eq!(calls[2].domain, Some(0));
        assert!(format!("{x:?}").contains("Xen417"));
    }

    #[test]
    fn unknown_release_is_a_mismatch_and_sends_no_domctl() {
        for (major, minor) in [(4, 18), (4, 16), (5, 0)] {
            let r = Recorded::new();
            r.expect(Exchange::xen_version(version::XENVER_VERSION).returns(i64::from(major << 16 | minor)));
            r.expect(Exchange::xen_version(version::XENVER_EXTRAVERSION).write_arg(b".1-rc\0".to_vec()));
            let err = Xen::with_transport(Box::new(r.clone())).unwrap_err();
            r.assert_done();
            assert!(r.calls().iter().all(|c| c.op == HYPERVISOR_XEN_VERSION));
            let XenError::InterfaceMismatch { xen, extraversion, tried, supported, .. } = &err else {
                panic!("expected InterfaceMismatch, got {err:?}");
            };
            assert_eq!(*xen, (major, minor));
            assert_eq!(extraversion.as_deref(), Some(".1-rc"));
            assert_eq!(*tried, None);
            assert_eq!(supported.len(), 1);
            let msg = err.to_string();
            assert!(msg.contains(&format!("Xen {major}.{minor}.1-rc")), "{msg}");
            assert!(msg.contains("supported: Xen 4.17 (domctl 0x15, sysctl 0x15)"), "{msg}");
        }
    }

    fn handshake_failing_at(step: usize, errno: i32) -> (Result<Xen, XenError>, Recorded) {
        let r = Recorded::new();
        let mut hs = Recorded::handshake(4, 17);
        hs.truncate(step + 1);
        let last = hs.pop().unwrap();
        r.expect_all(hs);
        r.expect(Exchange { reply_payload: None, reply_domain: None, ..last.fails(errno) });
        if errno == errno::EACCES {
            r.expect(Exchange::xen_version(version::XENVER_EXTRAVERSION).write_arg(b".7\0".to_vec()));
        }
        let res = Xen::with_transport(Box::new(r.clone()));
        (res, r)
    }

    #[test]
    fn eacces_from_either_probe_is_a_mismatch() {
        for step in [1, 2] {
            let (res, r) = handshake_failing_at(step, errno::EACCES);
            r.assert_done();
            let err = res.unwrap_err();
            let XenError::InterfaceMismatch { xen, tried, reason, .. } = &err else {
                panic!("expected InterfaceMismatch, got {err:?}");
            };
            assert_eq!(*xen, (4, 17));
            assert_eq!(*tried, Some(InterfaceVersions { domctl: 0x15, sysctl: 0x15 }));
            let probe = if step == 1 { "XEN_SYSCTL_physinfo" } else { "XEN_DOMCTL_getdomaininfo" };
            assert!(reason.contains(probe), "{reason}");
            assert!(err.to_string().contains("Xen 4.17.7"), "{err}");
        }
    }

    #[test]
    fn eperm_from_probe_is_unavailable_and_other_errors_pass_through() {
        let (res, _) = handshake_failing_at(1, errno::EPERM);
        assert!(matches!(res, Err(XenError::Unavailable(ref s)) if s.contains("not privileged")), "{res:?}");
        let (res, _) = handshake_failing_at(2, errno::EFAULT);
        assert!(res.unwrap_err().is_errno(errno::EFAULT));
        let (res, _) = handshake_failing_at(0, errno::ENOSYS);
        let err = res.unwrap_err();
        assert!(err.is_errno(errno::ENOSYS));
        assert!(err.to_string().starts_with("XENVER_version failed"), "{err}");
    }

    #[test]
    fn open_without_xen_is_unavailable() {
        if Path::new("/dev/xen/privcmd").exists() {
            eprintln!("skipped: this machine has /dev/xen/privcmd");
            return;
        }
        let err = Xen::open().unwrap_err();
        let XenError::Unavailable(why) = &err else {
            panic!("expected Unavailable, got {err:?}");
        };
        assert!(why.contains("/dev/xen/privcmd does not exist"), "{why}");
        assert!(err.to_string().starts_with("Xen is not available: "));
    }

    use std::path::Path;

    #[test]
    fn extraversion() {
        let (x, r) = connected();
        r.expect(Exchange::xen_version(version::XENVER_EXTRAVERSION).write_arg(b".7\0".to_vec()));
        assert_eq!(x.extraversion().unwrap(), ".7");
        let c = r.last_call().unwrap();
        assert_ne!(c.args[1], 0, "a buffer address is passed");
        r.expect(Exchange::xen_version(version::XENVER_EXTRAVERSION).fails(errno::EFAULT));
        assert!(x.extraversion().unwrap_err().is_errno(errno::EFAULT));
    }

    #[test]
    fn physinfo_decodes_and_names_capabilities() {
        let (x, r) = connected();
        let raw = SysctlPhysinfo {
            capabilities: 0x3ff,
            hw_cap: [1, 2, 3, 4, 5, 6, 7, 8],
            scrub_pages: 9,
            outstanding_pages: 10,
            ..sample_physinfo()
        };
        r.expect(Exchange::sysctl(sysctl::cmd::PHYSINFO).reply(&raw));
        let p = x.physinfo().unwrap();
        assert_eq!(p.nr_cpus, 1);
        assert_eq!(p.max_cpu_id, 0);
        assert_eq!(p.total_pages, 0x4_0000);
        assert_eq!(p.free_pages, 0x2_0000);
        assert_eq!(p.scrub_pages, 9);
        assert_eq!(p.outstanding_pages, 10);
        assert_eq!(p.hw_cap, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(p.cpu_khz, 2_000_000);
        assert!(p.hvm() && p.pv() && p.directio() && p.hap() && p.shadow());
        assert!(p.iommu_hap_pt_share() && p.vmtrace() && p.vpmu());
        assert!(p.gnttab_v1() && p.gnttab_v2());

        // The testbed's 0x307: hvm, pv, directio, gnttab v1/v2; no hap, no shadow.
        r.expect(Exchange::sysctl(sysctl::cmd::PHYSINFO).reply(&sample_physinfo()));
        let p = x.physinfo().unwrap();
        assert_eq!(p.capabilities, SAMPLE_CAPABILITIES);
        assert!(p.hvm() && p.pv() && p.directio() && p.gnttab_v1() && p.gnttab_v2());
        assert!(!p.hap() && !p.shadow() && !p.iommu_hap_pt_share() && !p.vpmu());
    }

    #[test]
    fn create_pv_domain_encodes_every_field() {
        let (x, r) = connected();
        let want = DomctlCreateDomain {
            ssidref: 0,
            handle: [0; 16],
            flags: 0x20,
            iommu_opts: 0,
            max_vcpus: 1,
            max_evtchn_port: 1023,
            max_grant_frames: -1,
            max_maptrack_frames: -1,
            grant_opts: 1,
            vmtrace_size: 0,
            cpupool_id: 0,
            arch: ArchDomainConfig { emulation_flags: 0, misc_flags: 0 },
        };
        r.expect(Exchange::domctl(cmd::CREATEDOMAIN, 0).request(&want).reply_domain(5));
        assert_eq!(x.create_domain(&DomainConfig::pv_with_iommu()).unwrap(), 5);
        let c = r.last_call().unwrap();
        assert_eq!((c.op, c.cmd, c.domain), (36, 1, Some(0)));
        assert_eq!(c.payload_as::<DomctlCreateDomain>(), Some(want));
        // Nothing but the struct is in the union.
        assert!(c.payload.unwrap().0[64..].iter().all(|&b| b == 0));
    }

    #[test]
    fn create_hvm_domain_and_explicit_fields() {
        let (x, r) = connected();
        let cfg = DomainConfig {
            domid: 42,
            handle: *b"0123456789abcdef",
            ssidref: 7,
            max_vcpus: 2,
            max_grant_version: 2,
            cpupool_id: 3,
            misc_flags: domctl::X86_MSR_RELAXED,
            ..DomainConfig::hvm_with_iommu()
        };
        r.expect(Exchange::domctl(cmd::CREATEDOMAIN, 42).reply_domain(42));
        assert_eq!(x.create_domain(&cfg).unwrap(), 42);
        let sent = r.last_call().unwrap().payload_as::<DomctlCreateDomain>().unwrap();
        assert_eq!(sent.flags, 0x23, "hvm | hap | iommu");
        assert_eq!(sent.arch.emulation_flags, 0x3ff, "XEN_X86_EMU_ALL without vPCI");
        assert_eq!(sent.arch.misc_flags, 1);
        assert_eq!(sent.handle, *b"0123456789abcdef");
        assert_eq!((sent.ssidref, sent.max_vcpus, sent.grant_opts, sent.cpupool_id), (7, 2, 2, 3));
    }

    #[test]
    fn create_domain_errors() {
        let (x, r) = connected();
        r.expect(Exchange::domctl(cmd::CREATEDOMAIN, 0).fails(errno::EINVAL));
        let err = x.create_domain(&DomainConfig::hvm_with_iommu()).unwrap_err();
        assert!(err.is_errno(errno::EINVAL));
        assert!(err.to_string().contains("XEN_DOMCTL_createdomain (requested dom 0, flags 0x23)"));
        // Success without a domain id is not something Xen does.
        r.expect(Exchange::domctl(cmd::CREATEDOMAIN, 0));
        assert!(matches!(x.create_domain(&DomainConfig::pv_with_iommu()), Err(XenError::Protocol { .. })));
        // Zero vCPUs is refused before anything is sent.
        let cfg = DomainConfig { max_vcpus: 0, ..DomainConfig::pv_with_iommu() };
        assert!(matches!(x.create_domain(&cfg), Err(XenError::InvalidArgument(_))));
        r.assert_done();
    }

    #[test]
    fn destroy_retries_eagain_and_erestart() {
        let (x, r) = connected();
        r.expect(Exchange::domctl(cmd::DESTROYDOMAIN, 5).fails(errno::EAGAIN));
        r.expect(Exchange::domctl(cmd::DESTROYDOMAIN, 5).fails(errno::ERESTART));
        r.expect(Exchange::domctl(cmd::DESTROYDOMAIN, 5));
        x.destroy_domain(5).unwrap();
        r.assert_done();
        let c = r.last_call().unwrap();
        assert_eq!((c.cmd, c.domain, c.interface_version), (2, Some(5), Some(0x15)));
        assert_eq!(c.payload.unwrap(), Payload::zero());
    }

    #[test]
    fn destroy_retry_is_bounded_and_other_errors_are_immediate() {
        let (x, r) = connected();
        for _ in 0..DESTROY_RETRY_LIMIT {
            r.expect(Exchange::domctl(cmd::DESTROYDOMAIN, 5).fails(errno::EAGAIN));
        }
        let err = x.destroy_domain(5).unwrap_err();
        r.assert_done();
        assert!(err.is_errno(errno::EAGAIN));
        assert!(err.to_string().contains("after 64 attempts"), "{err}");
        r.expect(Exchange::domctl(cmd::DESTROYDOMAIN, 9).fails(errno::ESRCH));
        assert!(x.destroy_domain(9).unwrap_err().is_errno(errno::ESRCH));
        r.assert_done();
    }

    #[test]
    fn domain_info_decodes_and_rejects_the_next_domain() {
        let (x, r) = connected();
        let raw = DomctlGetDomainInfo {
            domain: 5,
            flags: dominf::PAUSED | dominf::DYING | dominf::SHUTDOWN | 3 << 16,
            tot_pages: 1,
            max_pages: 2,
            outstanding_pages: 3,
            shr_pages: 4,
            paged_pages: 5,
            shared_info_frame: 6,
            cpu_time: 7,
            nr_online_vcpus: 1,
            max_vcpu_id: 0,
            ssidref: 8,
            handle: [9; 16],
            cpupool: 10,
            gpaddr_bits: 36,
            arch_config: ArchDomainConfig { emulation_flags: 0x3ff, misc_flags: 1 },
            ..Default::default()
        };
        r.expect(Exchange::domctl(cmd::GETDOMAININFO, 5).reply(&raw).reply_domain(5));
        let i = x.domain_info(5).unwrap();
        assert_eq!(i.domid, 5);
        assert!(i.paused() && i.dying() && i.shutdown() && !i.hvm() && !i.running());
        assert!(!i.blocked() && !i.hap());
        assert_eq!(i.shutdown_code(), 3);
        assert_eq!((i.tot_pages, i.max_pages, i.outstanding_pages), (1, 2, 3));
        assert_eq!((i.shr_pages, i.paged_pages, i.shared_info_frame), (4, 5, 6));
        assert_eq!((i.cpu_time, i.nr_online_vcpus, i.max_vcpu_id), (7, 1, 0));
        assert_eq!((i.ssidref, i.handle, i.cpupool, i.gpaddr_bits), (8, [9; 16], 10, 36));
        assert_eq!((i.emulation_flags, i.misc_flags), (0x3ff, 1));

        // 4.17 answers for the next existing domain: dom 6 asked, dom 7 described.
        let next = DomctlGetDomainInfo { domain: 7, ..raw };
        r.expect(Exchange::domctl(cmd::GETDOMAININFO, 6).reply(&next).reply_domain(7));
        let err = x.domain_info(6).unwrap_err();
        assert!(err.is_errno(errno::ESRCH), "{err}");
        assert!(err.to_string().contains("Xen described dom 7"), "{err}");
        r.expect(Exchange::domctl(cmd::GETDOMAININFO, 9).fails(errno::ESRCH));
        assert!(x.domain_info(9).unwrap_err().is_errno(errno::ESRCH));
        r.assert_done();
    }

    #[test]
    fn assign_family_encodes_pci_device() {
        let (x, r) = connected();
        let dev = sbdf("0001:02:03.4");
        let want = DomctlAssignDevice::pci(0x0001_021c, 0);
        assert_eq!(bytes_of(&want)[..12], [0, 0, 0, 0, 0, 0, 0, 0, 0x1c, 0x02, 0x01, 0x00]);
        r.expect(Exchange::domctl(cmd::TEST_ASSIGN_DEVICE, DOMID_INVALID).request(&want));
        r.expect(Exchange::domctl(cmd::ASSIGN_DEVICE, 5).request(&want));
        r.expect(Exchange::domctl(cmd::DEASSIGN_DEVICE, 5).request(&want));
        x.test_assign_device(DOMID_INVALID, dev).unwrap();
        x.assign_device(5, dev).unwrap();
        x.deassign_device(5, dev).unwrap();
        r.assert_done();
        let cmds: Vec<_> = r.calls()[3..].iter().map(|c| (c.cmd, c.domain)).collect();
        assert_eq!(cmds, [(45, Some(0x7ff4)), (37, Some(5)), (47, Some(5))]);
        for c in &r.calls()[3..] {
            assert_eq!(c.interface_version, Some(0x15));
            assert_eq!(c.payload_as::<DomctlAssignDevice>(), Some(want));
        }
    }

    #[test]
    fn assign_errors_keep_op_errno_and_device() {
        let (x, r) = connected();
        let dev = sbdf("00:03.0");
        for (cmd, e) in [
            (cmd::TEST_ASSIGN_DEVICE, errno::EINVAL),
            (cmd::ASSIGN_DEVICE, errno::EBUSY),
            (cmd::ASSIGN_DEVICE, errno::EOPNOTSUPP),
            (cmd::DEASSIGN_DEVICE, errno::ENODEV),
            (cmd::ASSIGN_DEVICE, errno::EPERM),
        ] {
            r.expect(Exchange::domctl(cmd, 5).fails(e));
            let err = match cmd {
                cmd::TEST_ASSIGN_DEVICE => x.test_assign_device(5, dev),
                cmd::ASSIGN_DEVICE => x.assign_device(5, dev),
                _ => x.deassign_device(5, dev),
            }
            .unwrap_err();
            assert_eq!(err.errno(), Some(e));
            let XenError::Hypercall { op, name, context, .. } = &err else {
                panic!("{err:?}");
            };
            assert_eq!(*op, domctl::cmd::name(cmd));
            assert_eq!(Some(*name), errno::name(e));
            assert_eq!(context, "dom 5, 0000:00:03.0");
        }
        r.assert_done();
    }

    #[test]
    fn device_group_reads_the_guest_handle_array() {
        let (x, r) = connected();
        let dev = sbdf("0002:00:03.0");
        let reply = DomctlGetDeviceGroup { machine_sbdf: dev.raw(), max_sdevs: 8, num_sdevs: 2, ..Default::default() };
        // Xen's entries: bus << 16 | devfn << 8.
        let entries: Vec<u8> = [0x00_20_00u32, 0x05_09_00].iter().flat_map(|e| e.to_le_bytes()).collect();
        r.expect(Exchange::domctl(cmd::GET_DEVICE_GROUP, 0).reply(&reply).write_handle(16, entries));
        let group = x.device_group(0, dev, 8).unwrap();
        assert_eq!(group, [sbdf("0002:00:04.0"), sbdf("0002:05:01.1")]);
        let sent = r.last_call().unwrap().payload_as::<DomctlGetDeviceGroup>().unwrap();
        assert_eq!((sent.machine_sbdf, sent.max_sdevs, sent.num_sdevs), (0x2_0018, 8, 0));
        assert_ne!(sent.sdev_array, 0);

        let empty = DomctlGetDeviceGroup { num_sdevs: 0, ..reply };
        r.expect(Exchange::domctl(cmd::GET_DEVICE_GROUP, 0).reply(&empty));
        assert!(x.device_group(0, dev, 8).unwrap().is_empty());

        let too_many = DomctlGetDeviceGroup { num_sdevs: 9, ..reply };
        r.expect(Exchange::domctl(cmd::GET_DEVICE_GROUP, 0).reply(&too_many));
        assert!(matches!(x.device_group(0, dev, 8), Err(XenError::Protocol { .. })));
        r.expect(Exchange::domctl(cmd::GET_DEVICE_GROUP, 0).fails(errno::EOPNOTSUPP));
        assert!(x.device_group(0, dev, 8).unwrap_err().is_errno(errno::EOPNOTSUPP));
        r.assert_done();
    }

    fn mapping(gfn: u64, mfn: u64, nr: u64, add: bool) -> DomctlMemoryMapping {
        DomctlMemoryMapping { first_gfn: gfn, first_mfn: mfn, nr_mfns: nr, add_mapping: u32::from(add), padding: 0 }
    }

    #[test]
    fn memory_mapping_single_call_and_remove() {
        let (x, r) = connected();
        r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).request(&mapping(0x100, 0xfe000, 16, true)));
        x.memory_mapping(5, 0x100, 0xfe000, 16, true).unwrap();
        r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).request(&mapping(0x100, 0xfe000, 16, false)));
        x.memory_mapping(5, 0x100, 0xfe000, 16, false).unwrap();
        r.assert_done();
    }

    #[test]
    fn memory_mapping_continues_after_partial_progress() {
        let (x, r) = connected();
        r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).request(&mapping(0x100, 0xfe000, 100, true)).returns(40));
        r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).request(&mapping(0x128, 0xfe028, 60, true)).returns(59));
        r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).request(&mapping(0x163, 0xfe063, 1, true)));
        x.memory_mapping(5, 0x100, 0xfe000, 100, true).unwrap();
        r.assert_done();
    }

    #[test]
    fn memory_mapping_halves_on_e2big() {
        let (x, r) = connected();
        r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).request(&mapping(0, 0x1000, 100, true)).fails(errno::E2BIG));
        r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).request(&mapping(0, 0x1000, 50, true)));
        r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).request(&mapping(50, 0x1032, 50, true)));
        x.memory_mapping(5, 0, 0x1000, 100, true).unwrap();
        r.assert_done();
        // E2BIG for a single frame is a real error.
        r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).fails(errno::E2BIG));
        assert!(x.memory_mapping(5, 0, 0x1000, 1, false).unwrap_err().is_errno(errno::E2BIG));
    }

    #[test]
    fn memory_mapping_failure_after_progress_undoes_the_added_part() {
        let (x, r) = connected();
        r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).returns(4));
        r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).request(&mapping(4, 0x1004, 6, true)).fails(errno::EPERM));
        r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).request(&mapping(0, 0x1000, 4, false)));
        let err = x.memory_mapping(5, 0, 0x1000, 10, true).unwrap_err();
        r.assert_done();
        assert!(err.is_errno(errno::EPERM));
        assert!(err.to_string().contains("the 4 frames mapped were unmapped"), "{err}");
    }

    #[test]
    fn memory_mapping_rejects_bad_ranges_and_replies() {
        let (x, r) = connected();
        assert!(matches!(x.memory_mapping(5, 0, 0, 0, true), Err(XenError::InvalidArgument(_))));
        assert!(matches!(x.memory_mapping(5, 0, u64::MAX, 2, true), Err(XenError::InvalidArgument(_))));
        r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).returns(10));
        assert!(matches!(x.memory_mapping(5, 0, 0x1000, 10, false), Err(XenError::Protocol { .. })));
        r.assert_done();
    }

    #[test]
    fn iomem_permission_encoding() {
        let (x, r) = connected();
        let allow = DomctlIomemPermission { first_mfn: 0xfe000, nr_mfns: 32, allow_access: 1, _pad: [0; 7] };
        r.expect(Exchange::domctl(cmd::IOMEM_PERMISSION, 5).request(&allow));
        x.iomem_permission(5, 0xfe000, 32, true).unwrap();
        let deny = DomctlIomemPermission { allow_access: 0, ..allow };
        r.expect(Exchange::domctl(cmd::IOMEM_PERMISSION, 5).request(&deny).fails(errno::EPERM));
        let err = x.iomem_permission(5, 0xfe000, 32, false).unwrap_err();
        assert!(err.is_errno(errno::EPERM));
        assert!(err.to_string().contains("mfn 0xfe000+32, deny"), "{err}");
        assert!(matches!(x.iomem_permission(5, 1, 0, true), Err(XenError::InvalidArgument(_))));
        r.assert_done();
    }

    #[test]
    fn sbdf_text_and_raw_forms() {
        let d = Sbdf::new(0, 0, 3, 0);
        assert_eq!(d.to_string(), "0000:00:03.0");
        assert_eq!(d.raw(), 0x18);
        assert_eq!(Sbdf::from_raw(0x0001_021c), sbdf("0001:02:03.4"));
        assert_eq!(sbdf("0001:02:03.4").raw(), 0x0001_021c);
        assert_eq!(sbdf("ff:1f.7"), Sbdf { seg: 0, bus: 0xff, devfn: 0xff });
        assert_eq!((sbdf("ff:1f.7").dev(), sbdf("ff:1f.7").func()), (0x1f, 7));
        assert_eq!(sbdf("FFFF:aB:00.1").to_string(), "ffff:ab:00.1");
        for bad in ["", "00:03", "00:20.0", "00:03.8", "1:2:3:4.0", "10000:00:00.0", "0:0:x.0", "00:03.0.1"] {
            let e = bad.parse::<Sbdf>().unwrap_err();
            assert!(e.to_string().contains("is not a PCI address"), "{bad}");
        }
        let mut v = vec![sbdf("00:04.0"), sbdf("00:03.1"), sbdf("00:03.0")];
        v.sort();
        assert_eq!(v, [sbdf("00:03.0"), sbdf("00:03.1"), sbdf("00:04.0")]);
    }

    #[test]
    fn domain_config_defaults() {
        let pv = DomainConfig::pv_with_iommu();
        assert_eq!(pv.flags, cdf::IOMMU);
        assert_eq!((pv.domid, pv.max_vcpus, pv.emulation_flags), (0, 1, 0));
        let hvm = DomainConfig::hvm_with_iommu();
        assert_eq!(hvm.flags, cdf::HVM | cdf::HAP | cdf::IOMMU);
        assert_eq!(hvm.emulation_flags & x86_emu::VPCI, 0);
    }
}
