//! The plugin's objects: a backend, the units it drives, and their hardware page tables.

use abi_stable::sabi_trait;
use abi_stable::std_types::{RArc, ROption, RResult, RSlice, RSliceMut, RString, RVec};
use abi_stable::StableAbi;

use super::error::PluginError;
use super::host::HostServicesBox;
use crate::addr::{AddressSpace, DeviceRef, Iova, IovaRange, Pasid, PhysAddr};
use crate::caps::{PageSizes, UnitCaps};
use crate::format::PtFormat;
use crate::intent::IntentCode;
use crate::prot::Prot;

/// A unit as firmware tables (DMAR, IVRS, IORT) describe it to the host.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct UnitDesc {
    /// The host's name for the unit (e.g. `dmar0`).
    pub name: RString,
    /// Base of the register window.
    pub mmio_base: PhysAddr,
    /// PCI segment the unit serves (VT-d, AMD-Vi).
    pub segment: u16,
    /// Backend-specific options, as TOML text (may be empty).
    pub params: RString,
}

/// A device as the backend needs to know it when negotiating or attaching.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// How the unit identifies it.
    pub dev: DeviceRef,
    /// PASID width the device supports; 0 when it has no PASID capability.
    pub pasid_bits: u8,
    /// The device has ATS.
    pub ats: bool,
    /// The device has PRI (page request interface).
    pub pri: bool,
    /// Addressing width of the device's DMA engine, in bits.
    pub dma_bits: u8,
}

/// A backend's answer to one intent item.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct ItemVerdict {
    /// The item asked for.
    pub item: IntentCode,
    /// Granted or not.
    pub granted: bool,
    /// Why not (empty when granted), or what was granted in detail.
    pub reason: RString,
}

/// Kinds of hardware page table.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HwptKind(pub u32);

impl HwptKind {
    /// A paging table kept in step with an IOAS.
    pub const PAGING: HwptKind = HwptKind(1);
    /// A user stage-1 nested over a paging parent.
    pub const NESTED: HwptKind = HwptKind(2);
    /// Blocks all DMA.
    pub const BLOCKING: HwptKind = HwptKind(3);
    /// Untranslated DMA.
    pub const IDENTITY: HwptKind = HwptKind(4);

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Self::PAGING => "paging",
            Self::NESTED => "nested",
            Self::BLOCKING => "blocking",
            Self::IDENTITY => "identity",
            _ => "unknown",
        }
    }
}

/// Options of a HWPT, fixed at allocation.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct HwptFlags(pub u32);

impl HwptFlags {
    /// The table must support dirty tracking.
    pub const DIRTY_TRACKING: HwptFlags = HwptFlags(1);
    /// Enforce cache coherency (snoop) on every mapping.
    pub const COHERENCY: HwptFlags = HwptFlags(2);
    /// Faults on this table are reported as recoverable I/O page faults.
    pub const PAGE_FAULTS: HwptFlags = HwptFlags(4);

    /// True when every bit of `other` is set.
    pub const fn contains(self, other: HwptFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A guest-owned stage-1, described in its format's own words (as iommufd's
/// `iommu_hwpt_vtd_s1`, `iommu_hwpt_arm_smmuv3` and `iommu_hwpt_amd_guest` do).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct Stage1Config {
    /// The stage-1 format.
    pub format: PtFormat,
    /// The stage-1 root, an address in the parent's IOVA space (guest physical).
    pub root: Iova,
    /// Format-specific words (address width, flags, raw descriptor words).
    pub words: RVec<u64>,
}

/// What to allocate.
#[repr(C)]
#[derive(StableAbi)]
pub struct HwptRequest {
    /// Kind of table.
    pub kind: HwptKind,
    /// Options.
    pub flags: HwptFlags,
    /// For nested tables: the paging parent (stage-2).
    pub parent: ROption<HwptBox>,
    /// For nested tables: the stage-1 description.
    pub stage1: ROption<Stage1Config>,
    /// For paging tables: whose address space the IOAS is (see [`AddressSpace`]).
    pub space: AddressSpace,
}

/// What a HWPT is, as the backend built it.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct HwptInfo {
    /// Kind.
    pub kind: HwptKind,
    /// Its page-table format.
    pub format: PtFormat,
    /// Page sizes it maps with.
    pub page_sizes: PageSizes,
    /// The IOVA range it can translate.
    pub aperture: IovaRange,
    /// Backend handle, unique per unit, used by `Unit::attach`.
    pub handle: u64,
}

/// What a nested HWPT's stage-1 cache invalidation covers.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheInvalidation {
    /// [`CacheInvalidation::ALL`], [`CacheInvalidation::RANGE`] or [`CacheInvalidation::PASID`].
    pub scope: u32,
    /// The PASID / ASID the guest tagged the entries with.
    pub tag: u32,
    /// Start of the range, for `RANGE`.
    pub iova: Iova,
    /// Length of the range, for `RANGE`.
    pub len: u64,
    /// Only leaf entries changed (no table pages freed).
    pub leaf_only: bool,
}

impl CacheInvalidation {
    /// Everything this stage-1 cached.
    pub const ALL: u32 = 1;
    /// `[iova, iova+len)` for `tag`.
    pub const RANGE: u32 = 2;
    /// Everything for `tag`.
    pub const PASID: u32 = 3;
}

/// A fault recorded by a unit.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// Which device.
    pub dev: DeviceRef,
    /// The PASID of the request, if it had one.
    pub pasid: ROption<Pasid>,
    /// The faulting address.
    pub addr: Iova,
    /// What the request wanted to do.
    pub access: Prot,
    /// Why it faulted (see the constants).
    pub reason: u32,
    /// True for a recoverable page request (needs a [`PageResponse`]); false for a record.
    pub page_request: bool,
    /// Page request group index (PRGI) to answer, for page requests.
    pub group: u32,
}

impl Fault {
    /// No translation for the address.
    pub const NOT_PRESENT: u32 = 1;
    /// The mapping's permissions forbid the access.
    pub const PERMISSION: u32 = 2;
    /// The device is blocked (no attachment).
    pub const BLOCKED: u32 = 3;
    /// Address beyond the table's input width.
    pub const ADDRESS_SIZE: u32 = 4;
    /// Malformed table entry (reserved bits set, bad pointer).
    pub const BAD_ENTRY: u32 = 5;
    /// The PASID is not set up for the device.
    pub const BAD_PASID: u32 = 6;
    /// The guest's configuration of a nested translation is malformed (its stage-1
    /// descriptor, context descriptor or PASID entry), interface 0.3.
    pub const BAD_CONFIG: u32 = 7;
    /// Flag on a reason: the fault happened in the nesting parent's (stage-2) walk, so it is
    /// the host's and never the guest's, interface 0.3.
    pub const IN_PARENT: u32 = 1 << 16;
    /// The reason code without its flags.
    pub const REASON_MASK: u32 = 0xffff;

    /// Short name of a reason code.
    pub fn reason_name(reason: u32) -> &'static str {
        match reason & Self::REASON_MASK {
            Self::NOT_PRESENT => "not-present",
            Self::PERMISSION => "permission",
            Self::BLOCKED => "blocked",
            Self::ADDRESS_SIZE => "address-size",
            Self::BAD_ENTRY => "bad-entry",
            Self::BAD_PASID => "bad-pasid",
            Self::BAD_CONFIG => "bad-config",
            _ => "unknown",
        }
    }
}

/// The answer to a page request.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageResponse {
    /// Which device.
    pub dev: DeviceRef,
    /// PASID of the request.
    pub pasid: ROption<Pasid>,
    /// The group being answered.
    pub group: u32,
    /// [`PageResponse::SUCCESS`], [`PageResponse::INVALID`] or [`PageResponse::FAILURE`].
    pub code: u32,
}

impl PageResponse {
    /// The page is there now: retry.
    pub const SUCCESS: u32 = 0;
    /// The request is invalid: the device gets an error for it.
    pub const INVALID: u32 = 1;
    /// Unrecoverable: the device should stop issuing requests.
    pub const FAILURE: u32 = 0xf;
}

/// A backend's hardware page table.
#[sabi_trait]
pub trait Hwpt: Send + Sync + Clone {
    /// What it is.
    fn info(&self) -> HwptInfo;
    /// Maps `[iova, iova+len)` to `[pa, pa+len)` with `prot`, using the largest pages that the
    /// alignment of both addresses allows. All or nothing: on error nothing is mapped and no
    /// table page is left allocated. Ends with one batched IOTLB invalidation.
    fn map(&self, iova: Iova, pa: PhysAddr, len: u64, prot: Prot) -> RResult<(), PluginError>;
    /// Unmaps every translation in `[iova, iova+len)`, splitting large pages that the range
    /// cuts. Returns the bytes that were mapped. All or nothing.
    fn unmap(&self, iova: Iova, len: u64) -> RResult<u64, PluginError>;
    /// Makes `iova` a boundary between leaf entries (splits a large page across it) without
    /// changing any translation, so that a later unmap there needs no allocation.
    fn split(&self, iova: Iova) -> RResult<(), PluginError>;
    /// The translation of one address, read from the table (not from any cache).
    fn translate(&self, iova: Iova) -> ROption<Translation>;
    /// Turns hardware dirty tracking on or off.
    fn set_dirty_tracking(&self, enable: bool) -> RResult<(), PluginError>;
    /// Sets bit `i` of `bitmap` when page `i` (of `1 << page_shift` bytes) from `iova` was
    /// written, and clears the dirty bits unless `keep` (one invalidation for the range).
    fn read_and_clear_dirty(
        &self,
        iova: Iova,
        len: u64,
        page_shift: u8,
        bitmap: RSliceMut<'_, u64>,
        keep: bool,
    ) -> RResult<(), PluginError>;
    /// Invalidates a nested HWPT's stage-1 caches after the guest changed its tables.
    /// Returns how many requests were handled.
    fn invalidate(&self, reqs: RSlice<'_, CacheInvalidation>) -> RResult<u32, PluginError>;
    /// Table pages this HWPT holds.
    #[sabi(last_prefix_field)]
    fn table_pages(&self) -> u64;
}

/// One translation, as read from a table.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of `iova`.
    pub pa: PhysAddr,
    /// Permissions.
    pub prot: Prot,
    /// Size of the leaf page that holds it.
    pub page_size: u64,
}

/// A shareable HWPT object.
pub type HwptBox = Hwpt_TO<'static, RArc<()>>;

/// One IOMMU instance driven by a backend.
#[sabi_trait]
pub trait Unit: Send + Sync {
    /// The capabilities read from the unit's registers at probe.
    fn caps(&self) -> UnitCaps;
    /// Judges each intent item against the unit, with a reason for every refusal.
    fn negotiate(&self, dev: &DeviceInfo, items: RSlice<'_, IntentCode>) -> RVec<ItemVerdict>;
    /// Allocates a HWPT.
    fn alloc_hwpt(&self, req: &HwptRequest) -> RResult<HwptBox, PluginError>;
    /// Points the device (or one PASID of it) at `hwpt`, replacing whatever it used before in
    /// one step: DMA sees either the old or the new table, never a blocked window.
    fn attach(&self, dev: &DeviceInfo, pasid: ROption<Pasid>, hwpt: &HwptBox) -> RResult<(), PluginError>;
    /// Blocks the device's (or the PASID's) DMA and forgets the attachment.
    fn detach(&self, dev: &DeviceInfo, pasid: ROption<Pasid>) -> RResult<(), PluginError>;
    /// Takes up to `max` recorded faults and page requests from the unit.
    fn read_faults(&self, max: u32) -> RResult<RVec<Fault>, PluginError>;
    /// Answers a page request.
    fn page_response(&self, resp: &PageResponse) -> RResult<(), PluginError>;
    /// Table pages the unit holds outside its HWPTs (root, device and PASID tables, queues).
    fn table_pages(&self) -> u64;
    /// Disables translation and frees the unit's own structures. Called once, last.
    #[sabi(last_prefix_field)]
    fn shutdown(&self) -> RResult<(), PluginError>;
}

/// A shareable unit object.
pub type UnitBox = Unit_TO<'static, RArc<()>>;

/// A backend: one plugin's driver, able to probe units.
#[sabi_trait]
pub trait Backend: Send + Sync {
    /// Probes the unit behind `host`: reads its registers, sets up its root structures and
    /// enables it with every device blocked.
    #[sabi(last_prefix_field)]
    fn probe(&self, desc: &UnitDesc, host: HostServicesBox) -> RResult<UnitBox, PluginError>;
}

/// A shareable backend object.
pub type BackendBox = Backend_TO<'static, RArc<()>>;
