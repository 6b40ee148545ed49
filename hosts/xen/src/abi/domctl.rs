//! `__HYPERVISOR_domctl` buffers: xen/include/public/domctl.h of Xen 4.17, x86-64 layout.
//!
//! Only the commands the adapter issues are mirrored. Padding is spelled out as fields so that
//! every structure is [`Pod`]; field names follow the header.

use super::{Payload, Pod};

/// `XEN_DOMCTL_INTERFACE_VERSION` of the 4.17 headers.
pub const INTERFACE_VERSION_4_17: u32 = 0x15;

/// `XEN_DOMCTL_*` command numbers (`struct xen_domctl.cmd`).
pub mod cmd {
    /// `XEN_DOMCTL_createdomain`.
    pub const CREATEDOMAIN: u32 = 1;
    /// `XEN_DOMCTL_destroydomain`.
    pub const DESTROYDOMAIN: u32 = 2;
    /// `XEN_DOMCTL_getdomaininfo`.
    pub const GETDOMAININFO: u32 = 5;
    /// `XEN_DOMCTL_iomem_permission`.
    pub const IOMEM_PERMISSION: u32 = 20;
    /// `XEN_DOMCTL_assign_device`.
    pub const ASSIGN_DEVICE: u32 = 37;
    /// `XEN_DOMCTL_memory_mapping`.
    pub const MEMORY_MAPPING: u32 = 39;
    /// `XEN_DOMCTL_test_assign_device`.
    pub const TEST_ASSIGN_DEVICE: u32 = 45;
    /// `XEN_DOMCTL_deassign_device`.
    pub const DEASSIGN_DEVICE: u32 = 47;
    /// `XEN_DOMCTL_get_device_group`.
    pub const GET_DEVICE_GROUP: u32 = 50;

    /// The header's name of a command this module knows, for messages.
    pub fn name(cmd: u32) -> &'static str {
        match cmd {
            CREATEDOMAIN => "XEN_DOMCTL_createdomain",
            DESTROYDOMAIN => "XEN_DOMCTL_destroydomain",
            GETDOMAININFO => "XEN_DOMCTL_getdomaininfo",
            IOMEM_PERMISSION => "XEN_DOMCTL_iomem_permission",
            ASSIGN_DEVICE => "XEN_DOMCTL_assign_device",
            MEMORY_MAPPING => "XEN_DOMCTL_memory_mapping",
            TEST_ASSIGN_DEVICE => "XEN_DOMCTL_test_assign_device",
            DEASSIGN_DEVICE => "XEN_DOMCTL_deassign_device",
            GET_DEVICE_GROUP => "XEN_DOMCTL_get_device_group",
            _ => "XEN_DOMCTL_(other)",
        }
    }
}

/// `XEN_DOMCTL_CDF_*`: `struct xen_domctl_createdomain.flags`.
pub mod cdf {
    /// An HVM guest (else PV).
    pub const HVM: u32 = 1 << 0;
    /// Use hardware-assisted paging.
    pub const HAP: u32 = 1 << 1;
    /// tboot memory-integrity over S3.
    pub const S3_INTEGRITY: u32 = 1 << 2;
    /// No out-of-sync shadow page tables.
    pub const OOS_OFF: u32 = 1 << 3;
    /// A xenstore domain.
    pub const XS_DOMAIN: u32 = 1 << 4;
    /// The domain may use the IOMMU (needed for any device assignment to it).
    pub const IOMMU: u32 = 1 << 5;
    /// Nested virtualisation.
    pub const NESTED_VIRT: u32 = 1 << 6;
    /// Expose the vPMU.
    pub const VPMU: u32 = 1 << 7;
    /// Highest flag of 4.17 (`XEN_DOMCTL_CDF_MAX`).
    pub const MAX: u32 = VPMU;
    /// Every flag 4.17 defines.
    pub const ALL: u32 = (MAX << 1) - 1;
}

/// `XEN_DOMCTL_IOMMU_no_sharept`: `struct xen_domctl_createdomain.iommu_opts`.
pub const IOMMU_NO_SHAREPT: u32 = 1 << 0;

/// `XEN_DOMCTL_GRANT_version_mask`: the low bits of `grant_opts` hold the maximum grant version.
pub const GRANT_VERSION_MASK: u32 = 0xf;

/// `XEN_DOMINF_*`: `struct xen_domctl_getdomaininfo.flags`.
pub mod dominf {
    /// Scheduled to die.
    pub const DYING: u32 = 1 << 0;
    /// HVM guest.
    pub const HVM_GUEST: u32 = 1 << 1;
    /// The guest has shut down.
    pub const SHUTDOWN: u32 = 1 << 2;
    /// Paused by the control software.
    pub const PAUSED: u32 = 1 << 3;
    /// All vCPUs blocked.
    pub const BLOCKED: u32 = 1 << 4;
    /// A vCPU is running.
    pub const RUNNING: u32 = 1 << 5;
    /// Being debugged.
    pub const DEBUGGED: u32 = 1 << 6;
    /// A xenstore domain.
    pub const XS_DOMAIN: u32 = 1 << 7;
    /// Uses hardware-assisted paging.
    pub const HAP: u32 = 1 << 8;
    /// Mask of the shutdown code, after shifting by [`SHUTDOWN_SHIFT`].
    pub const SHUTDOWN_MASK: u32 = 255;
    /// Shift of the shutdown code.
    pub const SHUTDOWN_SHIFT: u32 = 16;
}

/// `XEN_INVALID_MAX_VCPU_ID`: `max_vcpu_id` of a domain without vCPUs.
pub const INVALID_MAX_VCPU_ID: u32 = !0;

/// `XEN_X86_EMU_*`: `struct xen_arch_domainconfig.emulation_flags` (x86).
pub mod x86_emu {
    /// Local APIC.
    pub const LAPIC: u32 = 1 << 0;
    /// HPET.
    pub const HPET: u32 = 1 << 1;
    /// ACPI PM timer and registers.
    pub const PM: u32 = 1 << 2;
    /// RTC.
    pub const RTC: u32 = 1 << 3;
    /// IO-APIC.
    pub const IOAPIC: u32 = 1 << 4;
    /// PIC.
    pub const PIC: u32 = 1 << 5;
    /// VGA.
    pub const VGA: u32 = 1 << 6;
    /// Emulated IOMMU.
    pub const IOMMU: u32 = 1 << 7;
    /// PIT.
    pub const PIT: u32 = 1 << 8;
    /// Use PIRQs.
    pub const USE_PIRQ: u32 = 1 << 9;
    /// vPCI.
    pub const VPCI: u32 = 1 << 10;
    /// All of them (`XEN_X86_EMU_ALL`).
    pub const ALL: u32 = 0x7ff;
}

/// `XEN_X86_MSR_RELAXED`: `struct xen_arch_domainconfig.misc_flags`.
pub const X86_MSR_RELAXED: u32 = 1 << 0;

/// `XEN_DOMCTL_DEV_PCI`: `struct xen_domctl_assign_device.dev`.
pub const DEV_PCI: u32 = 0;
/// `XEN_DOMCTL_DEV_DT`.
pub const DEV_DT: u32 = 1;
/// `XEN_DOMCTL_DEV_RDM_RELAXED`: `struct xen_domctl_assign_device.flags` (assign only).
pub const DEV_RDM_RELAXED: u32 = 1;

/// `DPCI_ADD_MAPPING`: `struct xen_domctl_memory_mapping.add_mapping`.
pub const DPCI_ADD_MAPPING: u32 = 1;
/// `DPCI_REMOVE_MAPPING`.
pub const DPCI_REMOVE_MAPPING: u32 = 0;

// xen/include/public/domctl.h: struct xen_domctl
/// The domctl buffer: header, then the command's member of the 128-byte union.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Domctl {
    /// `XEN_DOMCTL_*`.
    pub cmd: u32,
    /// Must equal the running Xen's `XEN_DOMCTL_INTERFACE_VERSION`, else Xen answers `-EACCES`.
    pub interface_version: u32,
    /// Target domain (in/out for createdomain and getdomaininfo).
    pub domain: u16,
    /// `_pad[3]`.
    pub _pad: [u16; 3],
    /// `u`: the command's structure.
    pub u: Payload,
}
// SAFETY: repr(C), fields at 0/4/8/10/16 with sizes 4/4/2/6/128 leave no padding (size 144,
// checked in the tests); all fields are Pod.
unsafe impl Pod for Domctl {}

// xen/include/public/arch-x86/xen.h: struct xen_arch_domainconfig
/// x86 part of a domain's configuration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchDomainConfig {
    /// `XEN_X86_EMU_*`.
    pub emulation_flags: u32,
    /// `XEN_X86_MSR_RELAXED`.
    pub misc_flags: u32,
}
// SAFETY: repr(C), two u32, no padding.
unsafe impl Pod for ArchDomainConfig {}

// xen/include/public/domctl.h: struct xen_domctl_createdomain
/// `XEN_DOMCTL_createdomain` request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomctlCreateDomain {
    /// XSM security id.
    pub ssidref: u32,
    /// `xen_domain_handle_t`: the domain's 16-byte handle (a UUID for the toolstack).
    pub handle: [u8; 16],
    /// `XEN_DOMCTL_CDF_*`.
    pub flags: u32,
    /// `XEN_DOMCTL_IOMMU_*`.
    pub iommu_opts: u32,
    /// Number of vCPUs (at least 1).
    pub max_vcpus: u32,
    /// Highest event-channel port.
    pub max_evtchn_port: u32,
    /// Grant-table frames; negative = Xen's default.
    pub max_grant_frames: i32,
    /// Maptrack frames; negative = Xen's default.
    pub max_maptrack_frames: i32,
    /// Low 4 bits: maximum grant-table version (1 or 2; 0 is refused).
    pub grant_opts: u32,
    /// Per-vCPU trace buffer bytes; 0 = none.
    pub vmtrace_size: u32,
    /// CPU pool; 0 = the default pool.
    pub cpupool_id: u32,
    /// Architecture part.
    pub arch: ArchDomainConfig,
}
// SAFETY: repr(C), 4-byte fields and a 16-byte u8 array at 4-aligned offsets; size 64 equals the
// sum of field sizes (checked in the tests), so no padding.
unsafe impl Pod for DomctlCreateDomain {}

// xen/include/public/domctl.h: struct xen_domctl_getdomaininfo
/// `XEN_DOMCTL_getdomaininfo` reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomctlGetDomainInfo {
    /// The domain described (4.17 may describe the next existing one, see the adapter).
    pub domain: u16,
    /// `pad1`.
    pub pad1: u16,
    /// `XEN_DOMINF_*` and the shutdown code.
    pub flags: u32,
    /// Pages the domain owns.
    pub tot_pages: u64,
    /// Its page limit.
    pub max_pages: u64,
    /// Pages claimed but not yet allocated.
    pub outstanding_pages: u64,
    /// Shared pages.
    pub shr_pages: u64,
    /// Paged-out pages.
    pub paged_pages: u64,
    /// GMFN of its shared-info page.
    pub shared_info_frame: u64,
    /// Running time of all vCPUs, ns.
    pub cpu_time: u64,
    /// Online vCPUs.
    pub nr_online_vcpus: u32,
    /// Highest vCPU id ([`INVALID_MAX_VCPU_ID`] if none).
    pub max_vcpu_id: u32,
    /// XSM security id.
    pub ssidref: u32,
    /// `xen_domain_handle_t`.
    pub handle: [u8; 16],
    /// CPU pool.
    pub cpupool: u32,
    /// Guest physical address width.
    pub gpaddr_bits: u8,
    /// `pad2[7]`.
    pub pad2: [u8; 7],
    /// The architecture configuration it was created with.
    pub arch_config: ArchDomainConfig,
}
// SAFETY: repr(C); offsets 0,2,4,8..64 (u64s),64,68,72,76(+16),92,96,97(+7),104(+8) tile the
// 112 bytes exactly (checked in the tests), so no padding.
unsafe impl Pod for DomctlGetDomainInfo {}

// xen/include/public/domctl.h: struct xen_domctl_assign_device, its union `u`
/// The `u` union of `struct xen_domctl_assign_device`. Its `pci` arm is `machine_sbdf` at 0; its
/// `dt` arm is `size` at 0 (same bytes) and the guest handle `path` at 8. Mirrored as the larger
/// `dt` shape with named padding; the adapter only uses the `pci` arm.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AssignDeviceU {
    /// `u.pci.machine_sbdf` (= `u.dt.size`): `seg << 16 | bus << 8 | devfn`.
    pub machine_sbdf: u32,
    /// Padding before `u.dt.path`.
    pub _pad: u32,
    /// `u.dt.path` (`XEN_GUEST_HANDLE_64(char)`); zero for PCI.
    pub dt_path: u64,
}
// SAFETY: repr(C): u32, u32, u64 at 0/4/8, size 16, no padding.
unsafe impl Pod for AssignDeviceU {}

// xen/include/public/domctl.h: struct xen_domctl_assign_device
/// `XEN_DOMCTL_assign_device`, `_test_assign_device` and `_deassign_device` request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomctlAssignDevice {
    /// `XEN_DOMCTL_DEV_*`.
    pub dev: u32,
    /// `XEN_DOMCTL_DEV_RDM_RELAXED` or 0 (must be 0 for test and deassign).
    pub flags: u32,
    /// The device.
    pub u: AssignDeviceU,
}
// SAFETY: repr(C): u32, u32, 16-byte Pod at 8; size 24, no padding.
unsafe impl Pod for DomctlAssignDevice {}

impl DomctlAssignDevice {
    /// A PCI device by its `machine_sbdf`.
    pub fn pci(machine_sbdf: u32, flags: u32) -> Self {
        DomctlAssignDevice { dev: DEV_PCI, flags, u: AssignDeviceU { machine_sbdf, ..Default::default() } }
    }
}

// xen/include/public/domctl.h: struct xen_domctl_get_device_group
/// `XEN_DOMCTL_get_device_group` request and reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomctlGetDeviceGroup {
    /// In: the device, `seg << 16 | bus << 8 | devfn`.
    pub machine_sbdf: u32,
    /// In: room in `sdev_array`, in entries.
    pub max_sdevs: u32,
    /// Out: entries written.
    pub num_sdevs: u32,
    /// Padding before the 8-aligned handle.
    pub _pad: u32,
    /// In: `XEN_GUEST_HANDLE_64(uint32)`, address of the `u32` array Xen fills. Each entry is
    /// `bus << 16 | devfn << 8` (segment implied, the queried one).
    pub sdev_array: u64,
}
// SAFETY: repr(C): four u32 then a u64 at 16; size 24, no padding.
unsafe impl Pod for DomctlGetDeviceGroup {}

// xen/include/public/domctl.h: struct xen_domctl_memory_mapping
/// `XEN_DOMCTL_memory_mapping` request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomctlMemoryMapping {
    /// First guest frame.
    pub first_gfn: u64,
    /// First machine frame.
    pub first_mfn: u64,
    /// Number of frames (> 0).
    pub nr_mfns: u64,
    /// [`DPCI_ADD_MAPPING`] or [`DPCI_REMOVE_MAPPING`].
    pub add_mapping: u32,
    /// `padding`.
    pub padding: u32,
}
// SAFETY: repr(C): three u64, two u32; size 32, no padding.
unsafe impl Pod for DomctlMemoryMapping {}

// xen/include/public/domctl.h: struct xen_domctl_iomem_permission
/// `XEN_DOMCTL_iomem_permission` request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomctlIomemPermission {
    /// First machine frame.
    pub first_mfn: u64,
    /// Number of frames (> 0).
    pub nr_mfns: u64,
    /// Non-zero: allow; zero: deny.
    pub allow_access: u8,
    /// The C struct's tail padding (its size is rounded up to 8).
    pub _pad: [u8; 7],
}
// SAFETY: repr(C): two u64, u8, [u8; 7]; size 24, no padding.
unsafe impl Pod for DomctlIomemPermission {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    // Expected values: printed by a C program (gcc, x86-64, -D__XEN_TOOLS__) compiled against
    // Xen 4.17's public headers (Debian 12 libxen-dev 4.17.7).

    #[test]
    fn interface_version_and_commands() {
        assert_eq!(INTERFACE_VERSION_4_17, 0x15);
        assert_eq!(cmd::CREATEDOMAIN, 1);
        assert_eq!(cmd::DESTROYDOMAIN, 2);
        assert_eq!(cmd::GETDOMAININFO, 5);
        assert_eq!(cmd::IOMEM_PERMISSION, 20);
        assert_eq!(cmd::ASSIGN_DEVICE, 37);
        assert_eq!(cmd::MEMORY_MAPPING, 39);
        assert_eq!(cmd::TEST_ASSIGN_DEVICE, 45);
        assert_eq!(cmd::DEASSIGN_DEVICE, 47);
        assert_eq!(cmd::GET_DEVICE_GROUP, 50);
        assert_eq!(cmd::name(cmd::ASSIGN_DEVICE), "XEN_DOMCTL_assign_device");
    }

    #[test]
    fn flag_values() {
        assert_eq!([cdf::HVM, cdf::HAP, cdf::S3_INTEGRITY, cdf::OOS_OFF], [0x1, 0x2, 0x4, 0x8]);
        assert_eq!([cdf::XS_DOMAIN, cdf::IOMMU, cdf::NESTED_VIRT, cdf::VPMU, cdf::MAX], [0x10, 0x20, 0x40, 0x80, 0x80]);
        assert_eq!(cdf::ALL, 0xff);
        assert_eq!(IOMMU_NO_SHAREPT, 1);
        assert_eq!(GRANT_VERSION_MASK, 0xf);
        assert_eq!([dominf::DYING, dominf::HVM_GUEST, dominf::SHUTDOWN, dominf::PAUSED], [0x1, 0x2, 0x4, 0x8]);
        assert_eq!(
            [dominf::BLOCKED, dominf::RUNNING, dominf::DEBUGGED, dominf::XS_DOMAIN, dominf::HAP],
            [0x10, 0x20, 0x40, 0x80, 0x100]
        );
        assert_eq!((dominf::SHUTDOWN_MASK, dominf::SHUTDOWN_SHIFT), (0xff, 16));
        assert_eq!(INVALID_MAX_VCPU_ID, 0xffff_ffff);
        assert_eq!(
            [x86_emu::LAPIC, x86_emu::HPET, x86_emu::PM, x86_emu::RTC, x86_emu::IOAPIC],
            [0x1, 0x2, 0x4, 0x8, 0x10]
        );
        assert_eq!(
            [x86_emu::PIC, x86_emu::VGA, x86_emu::IOMMU, x86_emu::PIT, x86_emu::USE_PIRQ],
            [0x20, 0x40, 0x80, 0x100, 0x200]
        );
        assert_eq!((x86_emu::VPCI, x86_emu::ALL), (0x400, 0x7ff));
        assert_eq!(X86_MSR_RELAXED, 1);
        assert_eq!((DEV_PCI, DEV_DT, DEV_RDM_RELAXED), (0, 1, 1));
        assert_eq!((DPCI_ADD_MAPPING, DPCI_REMOVE_MAPPING), (1, 0));
    }

    #[test]
    fn layout_xen_domctl() {
        assert_eq!(size_of::<Domctl>(), 144);
        assert_eq!(align_of::<Domctl>(), 8);
        assert_eq!(offset_of!(Domctl, cmd), 0);
        assert_eq!(offset_of!(Domctl, interface_version), 4);
        assert_eq!(offset_of!(Domctl, domain), 8);
        assert_eq!(offset_of!(Domctl, _pad), 10);
        assert_eq!(offset_of!(Domctl, u), 16);
        assert_eq!(size_of::<Payload>(), 128);
    }

    #[test]
    fn layout_xen_arch_domainconfig() {
        assert_eq!(size_of::<ArchDomainConfig>(), 8);
        assert_eq!(offset_of!(ArchDomainConfig, emulation_flags), 0);
        assert_eq!(offset_of!(ArchDomainConfig, misc_flags), 4);
    }

    #[test]
    fn layout_xen_domctl_createdomain() {
        type T = DomctlCreateDomain;
        assert_eq!(size_of::<T>(), 64);
        assert_eq!(offset_of!(T, ssidref), 0);
        assert_eq!(offset_of!(T, handle), 4);
        assert_eq!(offset_of!(T, flags), 20);
        assert_eq!(offset_of!(T, iommu_opts), 24);
        assert_eq!(offset_of!(T, max_vcpus), 28);
        assert_eq!(offset_of!(T, max_evtchn_port), 32);
        assert_eq!(offset_of!(T, max_grant_frames), 36);
        assert_eq!(offset_of!(T, max_maptrack_frames), 40);
        assert_eq!(offset_of!(T, grant_opts), 44);
        assert_eq!(offset_of!(T, vmtrace_size), 48);
        assert_eq!(offset_of!(T, cpupool_id), 52);
        assert_eq!(offset_of!(T, arch), 56);
    }

    #[test]
    fn layout_xen_domctl_getdomaininfo() {
        type T = DomctlGetDomainInfo;
        assert_eq!(size_of::<T>(), 112);
        assert_eq!(align_of::<T>(), 8);
        assert_eq!(offset_of!(T, domain), 0);
        assert_eq!(offset_of!(T, pad1), 2);
        assert_eq!(offset_of!(T, flags), 4);
        assert_eq!(offset_of!(T, tot_pages), 8);
        assert_eq!(offset_of!(T, max_pages), 16);
        assert_eq!(offset_of!(T, outstanding_pages), 24);
        assert_eq!(offset_of!(T, shr_pages), 32);
        assert_eq!(offset_of!(T, paged_pages), 40);
        assert_eq!(offset_of!(T, shared_info_frame), 48);
        assert_eq!(offset_of!(T, cpu_time), 56);
        assert_eq!(offset_of!(T, nr_online_vcpus), 64);
        assert_eq!(offset_of!(T, max_vcpu_id), 68);
        assert_eq!(offset_of!(T, ssidref), 72);
        assert_eq!(offset_of!(T, handle), 76);
        assert_eq!(offset_of!(T, cpupool), 92);
        assert_eq!(offset_of!(T, gpaddr_bits), 96);
        assert_eq!(offset_of!(T, pad2), 97);
        assert_eq!(offset_of!(T, arch_config), 104);
    }

    #[test]
    fn layout_xen_domctl_assign_device() {
        type T = DomctlAssignDevice;
        assert_eq!(size_of::<T>(), 24);
        assert_eq!(align_of::<T>(), 8);
        assert_eq!(offset_of!(T, dev), 0);
        assert_eq!(offset_of!(T, flags), 4);
        assert_eq!(offset_of!(T, u), 8);
        assert_eq!(size_of::<AssignDeviceU>(), 16);
        // u.pci.machine_sbdf and u.dt.size at 8, u.dt.path at 16.
        assert_eq!(offset_of!(T, u) + offset_of!(AssignDeviceU, machine_sbdf), 8);
        assert_eq!(offset_of!(T, u) + offset_of!(AssignDeviceU, dt_path), 16);
    }

    #[test]
    fn layout_xen_domctl_get_device_group() {
        type T = DomctlGetDeviceGroup;
        assert_eq!(size_of::<T>(), 24);
        assert_eq!(align_of::<T>(), 8);
        assert_eq!(offset_of!(T, machine_sbdf), 0);
        assert_eq!(offset_of!(T, max_sdevs), 4);
        assert_eq!(offset_of!(T, num_sdevs), 8);
        assert_eq!(offset_of!(T, sdev_array), 16);
    }

    #[test]
    fn layout_xen_domctl_memory_mapping() {
        type T = DomctlMemoryMapping;
        assert_eq!(size_of::<T>(), 32);
        assert_eq!(offset_of!(T, first_gfn), 0);
        assert_eq!(offset_of!(T, first_mfn), 8);
        assert_eq!(offset_of!(T, nr_mfns), 16);
        assert_eq!(offset_of!(T, add_mapping), 24);
        assert_eq!(offset_of!(T, padding), 28);
    }

    #[test]
    fn layout_xen_domctl_iomem_permission() {
        type T = DomctlIomemPermission;
        assert_eq!(size_of::<T>(), 24);
        assert_eq!(align_of::<T>(), 8);
        assert_eq!(offset_of!(T, first_mfn), 0);
        assert_eq!(offset_of!(T, nr_mfns), 8);
        assert_eq!(offset_of!(T, allow_access), 16);
    }

    #[test]
    fn payload_members_land_at_union_offset() {
        let mut d = Domctl {
            cmd: cmd::ASSIGN_DEVICE,
            interface_version: INTERFACE_VERSION_4_17,
            domain: 7,
            ..Default::default()
        };
        d.u.set(&DomctlAssignDevice::pci(0x0000_0318, 0));
        let bytes = super::super::bytes_of(&d);
        assert_eq!(&bytes[0..4], &37u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &0x15u32.to_le_bytes());
        assert_eq!(&bytes[8..10], &7u16.to_le_bytes());
        // dev (PCI = 0), flags 0, machine_sbdf at union offset 8 = buffer offset 24.
        assert_eq!(&bytes[16..24], &[0; 8]);
        assert_eq!(&bytes[24..28], &0x318u32.to_le_bytes());
        assert_eq!(d.u.get::<DomctlAssignDevice>().u.machine_sbdf, 0x318);
    }
}
