//! `__HYPERVISOR_sysctl` buffers: xen/include/public/sysctl.h of Xen 4.17, x86-64 layout.

use super::{Payload, Pod};

/// `XEN_SYSCTL_INTERFACE_VERSION` of the 4.17 headers.
pub const INTERFACE_VERSION_4_17: u32 = 0x15;

/// `XEN_SYSCTL_*` command numbers (`struct xen_sysctl.cmd`).
pub mod cmd {
    /// `XEN_SYSCTL_physinfo`.
    pub const PHYSINFO: u32 = 3;

    /// The header's name of a command this module knows, for messages.
    pub fn name(cmd: u32) -> &'static str {
        match cmd {
            PHYSINFO => "XEN_SYSCTL_physinfo",
            _ => "XEN_SYSCTL_(other)",
        }
    }
}

/// `XEN_SYSCTL_PHYSCAP_*`: `struct xen_sysctl_physinfo.capabilities`.
pub mod physcap {
    /// HVM guests are supported.
    pub const HVM: u32 = 1 << 0;
    /// PV guests are supported.
    pub const PV: u32 = 1 << 1;
    /// Devices can be given to guests behind an IOMMU.
    pub const DIRECTIO: u32 = 1 << 2;
    /// Hardware-assisted paging.
    pub const HAP: u32 = 1 << 3;
    /// Shadow paging.
    pub const SHADOW: u32 = 1 << 4;
    /// HAP page tables can be shared with the IOMMU.
    pub const IOMMU_HAP_PT_SHARE: u32 = 1 << 5;
    /// Processor trace for guests.
    pub const VMTRACE: u32 = 1 << 6;
    /// vPMU.
    pub const VPMU: u32 = 1 << 7;
    /// Grant table v1.
    pub const GNTTAB_V1: u32 = 1 << 8;
    /// Grant table v2.
    pub const GNTTAB_V2: u32 = 1 << 9;
    /// Highest capability of 4.17 (`XEN_SYSCTL_PHYSCAP_MAX`).
    pub const MAX: u32 = GNTTAB_V2;
}

// xen/include/public/sysctl.h: struct xen_sysctl
/// The sysctl buffer: header, then the command's member of the 128-byte union.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sysctl {
    /// `XEN_SYSCTL_*`.
    pub cmd: u32,
    /// Must equal the running Xen's `XEN_SYSCTL_INTERFACE_VERSION`, else Xen answers `-EACCES`.
    pub interface_version: u32,
    /// `u`: the command's structure.
    pub u: Payload,
}
// SAFETY: repr(C): u32, u32, 128-byte 8-aligned Pod at 8; size 136, no padding.
unsafe impl Pod for Sysctl {}

// xen/include/public/sysctl.h: struct xen_sysctl_physinfo
/// `XEN_SYSCTL_physinfo` reply.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SysctlPhysinfo {
    /// Threads per core.
    pub threads_per_core: u32,
    /// Cores per socket.
    pub cores_per_socket: u32,
    /// Online CPUs.
    pub nr_cpus: u32,
    /// Largest possible CPU id.
    pub max_cpu_id: u32,
    /// Online NUMA nodes.
    pub nr_nodes: u32,
    /// Largest possible node id.
    pub max_node_id: u32,
    /// CPU frequency, kHz.
    pub cpu_khz: u32,
    /// `XEN_SYSCTL_PHYSCAP_*`.
    pub capabilities: u32,
    /// Architecture-specific capabilities (none defined for x86 in 4.17).
    pub arch_capabilities: u32,
    /// `pad`.
    pub pad: u32,
    /// Pages of RAM.
    pub total_pages: u64,
    /// Free pages.
    pub free_pages: u64,
    /// Pages waiting to be scrubbed.
    pub scrub_pages: u64,
    /// Claimed, not yet allocated pages.
    pub outstanding_pages: u64,
    /// Largest possible MFN.
    pub max_mfn: u64,
    /// Hardware capability words.
    pub hw_cap: [u32; 8],
}
// SAFETY: repr(C): ten u32 (40 bytes), five u64 at 40..80, [u32; 8] at 80; size 112, no padding.
unsafe impl Pod for SysctlPhysinfo {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    // Expected values: printed by a C program (gcc, x86-64, -D__XEN_TOOLS__) compiled against
    // Xen 4.17's public headers (Debian 12 libxen-dev 4.17.7).

    #[test]
    fn interface_version_command_and_caps() {
        assert_eq!(INTERFACE_VERSION_4_17, 0x15);
        assert_eq!(cmd::PHYSINFO, 3);
        assert_eq!(cmd::name(3), "XEN_SYSCTL_physinfo");
        assert_eq!(
            [physcap::HVM, physcap::PV, physcap::DIRECTIO, physcap::HAP, physcap::SHADOW],
            [0x1, 0x2, 0x4, 0x8, 0x10]
        );
        assert_eq!([physcap::IOMMU_HAP_PT_SHARE, physcap::VMTRACE, physcap::VPMU], [0x20, 0x40, 0x80]);
        assert_eq!([physcap::GNTTAB_V1, physcap::GNTTAB_V2, physcap::MAX], [0x100, 0x200, 0x200]);
    }

    #[test]
    fn layout_xen_sysctl() {
        assert_eq!(size_of::<Sysctl>(), 136);
        assert_eq!(align_of::<Sysctl>(), 8);
        assert_eq!(offset_of!(Sysctl, cmd), 0);
        assert_eq!(offset_of!(Sysctl, interface_version), 4);
        assert_eq!(offset_of!(Sysctl, u), 8);
    }

    #[test]
    fn layout_xen_sysctl_physinfo() {
        type T = SysctlPhysinfo;
        assert_eq!(size_of::<T>(), 112);
        assert_eq!(align_of::<T>(), 8);
        assert_eq!(offset_of!(T, threads_per_core), 0);
        assert_eq!(offset_of!(T, cores_per_socket), 4);
        assert_eq!(offset_of!(T, nr_cpus), 8);
        assert_eq!(offset_of!(T, max_cpu_id), 12);
        assert_eq!(offset_of!(T, nr_nodes), 16);
        assert_eq!(offset_of!(T, max_node_id), 20);
        assert_eq!(offset_of!(T, cpu_khz), 24);
        assert_eq!(offset_of!(T, capabilities), 28);
        assert_eq!(offset_of!(T, arch_capabilities), 32);
        assert_eq!(offset_of!(T, pad), 36);
        assert_eq!(offset_of!(T, total_pages), 40);
        assert_eq!(offset_of!(T, free_pages), 48);
        assert_eq!(offset_of!(T, scrub_pages), 56);
        assert_eq!(offset_of!(T, outstanding_pages), 64);
        assert_eq!(offset_of!(T, max_mfn), 72);
        assert_eq!(offset_of!(T, hw_cap), 80);
    }
}
