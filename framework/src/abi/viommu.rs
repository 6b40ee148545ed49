//! Interface 0.3: the virtual IOMMU objects (iommufd's VIOMMU, VDEVICE, VEVENTQ and HW_QUEUE).
//!
//! A vIOMMU is one unit's slice for one VM: it is created over a nesting-parent paging HWPT
//! (the VM's stage-2), holds what every nested HWPT of that VM shares on the unit (SMMUv3's
//! VMID, AMD-Vi's guest domain ids, a VT-d domain id), and knows the VM's devices by the ids the
//! guest gives them (vDEVICEs: a virtual stream id, device id or RID). The guest's own
//! invalidation commands name those virtual ids; the backend maps them to physical ids and
//! refuses any id that is not one of the VM's.

use abi_stable::sabi_trait;
use abi_stable::std_types::{RArc, ROption, RResult, RSlice};
use abi_stable::StableAbi;

use super::error::PluginError;
use super::objects::{DeviceInfo, HwptBox, HwptFlags, Stage1Config};
use crate::addr::{AddressSpace, Iova, PhysAddr};

/// What kind of vIOMMU: the format of the guest's commands it takes. An open set of ids:
/// ioasis's below `0x1_0000`, a vendor's from [`ViommuKind::vendor`] (see [`crate::ids`]);
/// an unknown vendor kind prints as `vendor-<vendor>:<n>`.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ViommuKind(pub u32);

impl ViommuKind {
    /// The mock unit's virtual interface (plugins/mock/SPEC.md §7).
    pub const MOCK: ViommuKind = ViommuKind(1);
    /// Intel VT-d: invalidation descriptors as the guest writes them to its queue (VT-d spec 6.5.2).
    pub const VTD: ViommuKind = ViommuKind(2);
    /// Arm SMMUv3: command-queue entries (SMMUv3 spec 4.1).
    pub const SMMUV3: ViommuKind = ViommuKind(3);
    /// AMD-Vi: command-buffer entries (AMD IOMMU spec 2.4).
    pub const AMDVI: ViommuKind = ViommuKind(4);

    /// Kind `n` of the vendor whose PCI-SIG vendor id is `pci_vendor` (see [`crate::ids`]).
    ///
    /// # Panics
    ///
    /// When `pci_vendor` is `0x0000` or `0xffff` (no vendor's id); in a `const`, a build error.
    pub const fn vendor(pci_vendor: u16, n: u16) -> ViommuKind {
        ViommuKind(crate::ids::vendor(pci_vendor, n))
    }

    /// True when the kind is a vendor's, not ioasis's.
    pub const fn is_vendor(self) -> bool {
        crate::ids::is_vendor(self.0)
    }

    /// Short name (`unknown` for a kind this version does not know; its
    /// [`Display`](std::fmt::Display) says whose it is).
    pub fn name(self) -> &'static str {
        match self {
            Self::MOCK => "mock",
            Self::VTD => "vtd",
            Self::SMMUV3 => "smmuv3",
            Self::AMDVI => "amdvi",
            _ => "unknown",
        }
    }
}

impl std::fmt::Display for ViommuKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            "unknown" => crate::ids::fmt_unnamed(f, "viommu-kind", self.0),
            name => f.write_str(name),
        }
    }
}

/// Options of a vIOMMU. None are defined yet: the framework refuses any bit.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ViommuFlags(pub u32);

impl ViommuFlags {
    /// Every bit this interface version defines.
    pub const KNOWN: u32 = 0;
}

/// What to allocate.
#[repr(C)]
#[derive(StableAbi)]
pub struct ViommuRequest {
    /// Which command format the guest speaks.
    pub kind: ViommuKind,
    /// Options (none defined).
    pub flags: ViommuFlags,
    /// The nesting parent: a paging HWPT of this unit (the VM's stage-2).
    pub parent: HwptBox,
    /// Whose address space the parent's IOAS is.
    pub space: AddressSpace,
}

/// Features of a vIOMMU, as the backend built it.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ViommuFeatures(pub u64);

impl ViommuFeatures {
    /// The guest's command queue can be handed to the hardware ([`Viommu::alloc_hw_queue`]).
    pub const HW_QUEUE: ViommuFeatures = ViommuFeatures(1 << 0);
    /// Every bit this interface version defines.
    pub const KNOWN: u64 = Self::HW_QUEUE.0;

    /// True when every bit of `other` is set.
    pub const fn contains(self, other: ViommuFeatures) -> bool {
        self.0 & other.0 == other.0
    }
}

/// What a vIOMMU is, as the backend built it.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct ViommuInfo {
    /// Its kind.
    pub kind: ViommuKind,
    /// The id the hardware tags the VM's entries with (SMMUv3 VMID, a VT-d or AMD-Vi domain id).
    pub tag: u64,
    /// What it offers beyond vDEVICEs and invalidation.
    pub features: ViommuFeatures,
}

/// One command as the guest wrote it, in the vIOMMU kind's own format (16 or 32 bytes: unused
/// words are zero). The ids in it are the guest's (virtual).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VirtualCommand {
    /// The command's words, little-endian as in guest memory.
    pub words: [u64; 4],
}

/// How far a batch of guest commands got.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct InvalidateOutcome {
    /// Commands handled, in order, before `error` (all of them when there is none).
    pub handled: u32,
    /// Why command `handled` was refused (an unknown opcode, a virtual id that is not the
    /// VM's, reserved bits), if it was.
    pub error: ROption<PluginError>,
}

/// Kinds of hardware-accelerated guest queue (iommufd's HW_QUEUE types). An open set of ids:
/// ioasis's below `0x1_0000`, a vendor's from [`HwQueueKind::vendor`] (see [`crate::ids`]);
/// an unknown vendor kind prints as `vendor-<vendor>:<n>`.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HwQueueKind(pub u32);

impl HwQueueKind {
    /// The mock unit's virtual command queue (plugins/mock/SPEC.md §7).
    pub const MOCK_VCMDQ: HwQueueKind = HwQueueKind(1);
    /// NVIDIA Tegra241 CMDQV virtual command queue (an SMMUv3 extension).
    pub const TEGRA241_VCMDQ: HwQueueKind = HwQueueKind(2);
    /// AMD-Vi hardware-accelerated vIOMMU command buffer.
    pub const AMD_VIOMMU_CMDBUF: HwQueueKind = HwQueueKind(3);

    /// Kind `n` of the vendor whose PCI-SIG vendor id is `pci_vendor` (see [`crate::ids`]).
    ///
    /// # Panics
    ///
    /// When `pci_vendor` is `0x0000` or `0xffff` (no vendor's id); in a `const`, a build error.
    pub const fn vendor(pci_vendor: u16, n: u16) -> HwQueueKind {
        HwQueueKind(crate::ids::vendor(pci_vendor, n))
    }

    /// True when the kind is a vendor's, not ioasis's.
    pub const fn is_vendor(self) -> bool {
        crate::ids::is_vendor(self.0)
    }

    /// Short name (`unknown` for a kind this version does not know; its
    /// [`Display`](std::fmt::Display) says whose it is).
    pub fn name(self) -> &'static str {
        match self {
            Self::MOCK_VCMDQ => "mock-vcmdq",
            Self::TEGRA241_VCMDQ => "tegra241-vcmdq",
            Self::AMD_VIOMMU_CMDBUF => "amd-viommu-cmdbuf",
            _ => "unknown",
        }
    }
}

impl std::fmt::Display for HwQueueKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            "unknown" => crate::ids::fmt_unnamed(f, "hw-queue-kind", self.0),
            name => f.write_str(name),
        }
    }
}

/// A guest queue to hand to the hardware: memory the guest owns, at `iova` in the parent's
/// IOAS, which the framework found physically contiguous at `pa` and keeps mapped while the
/// queue exists.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwQueueRequest {
    /// Kind of queue.
    pub kind: HwQueueKind,
    /// Which of the vIOMMU's queues (0 for the first).
    pub index: u32,
    /// Where the guest put it (guest physical: an IOVA of the parent).
    pub iova: Iova,
    /// Where it is in host memory.
    pub pa: PhysAddr,
    /// Its size in bytes (a power of two, at least 4 KiB).
    pub len: u64,
}

/// A backend's vIOMMU: one unit's slice for one VM.
#[sabi_trait]
pub trait Viommu: Send + Sync + Clone {
    /// What it is.
    fn info(&self) -> ViommuInfo;
    /// Allocates a nested HWPT (the guest's stage-1 over this vIOMMU's parent) that shares the
    /// vIOMMU's tag.
    fn alloc_nested(&self, flags: HwptFlags, stage1: &Stage1Config) -> RResult<HwptBox, PluginError>;
    /// `dev` is the guest's device `virt_id` from now on.
    fn set_vdevice(&self, dev: &DeviceInfo, virt_id: u64) -> RResult<(), PluginError>;
    /// Forgets `dev`'s virtual id; commands naming it are refused from now on.
    fn clear_vdevice(&self, dev: &DeviceInfo) -> RResult<(), PluginError>;
    /// Runs the guest's commands in order, mapping their virtual ids to physical ones, and
    /// waits for the hardware to complete them; stops at the first one it refuses.
    fn invalidate(&self, cmds: RSlice<'_, VirtualCommand>) -> InvalidateOutcome;
    /// Hands a guest command queue to the hardware. Returns the backend's handle for it.
    fn alloc_hw_queue(&self, req: &HwQueueRequest) -> RResult<u64, PluginError>;
    /// Takes a queue back from the hardware (the guest's memory is no longer read after this).
    #[sabi(last_prefix_field)]
    fn free_hw_queue(&self, handle: u64) -> RResult<(), PluginError>;
}

/// A shareable vIOMMU object.
pub type ViommuBox = Viommu_TO<'static, RArc<()>>;

/// The refusal of a unit whose plugin has no vIOMMU objects (no 0.3 extension: built against
/// an interface before 0.3, which had none, or without them).
pub fn no_viommu(what: &str) -> PluginError {
    PluginError::unsupported(format!("{what}: this backend offers no vIOMMU objects"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_kinds_print_with_their_vendor() {
        const TEGRA_NEXT: HwQueueKind = HwQueueKind::vendor(crate::ids::pci::NVIDIA, 2);
        assert_eq!(TEGRA_NEXT, HwQueueKind(0x10de_0002));
        assert!(TEGRA_NEXT.is_vendor() && !HwQueueKind::TEGRA241_VCMDQ.is_vendor());
        assert_eq!(TEGRA_NEXT.to_string(), "vendor-10de:2");
        assert_eq!(HwQueueKind::TEGRA241_VCMDQ.to_string(), "tegra241-vcmdq");
        assert_eq!(HwQueueKind(9).to_string(), "hw-queue-kind#9");
        let arm = ViommuKind::vendor(crate::ids::pci::ARM, 1);
        assert!(arm.is_vendor() && !ViommuKind::SMMUV3.is_vendor());
        assert_eq!(arm.to_string(), "vendor-13b5:1");
        assert_eq!(ViommuKind::VTD.to_string(), "vtd");
        assert_eq!(ViommuKind(5).to_string(), "viommu-kind#5");
    }
}
