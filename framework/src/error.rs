//! The framework's errors. Each is typed and carries the addresses involved; an operation
//! that fails changes nothing.

use crate::abi::PluginError;
use crate::addr::{Iova, IovaRange, Pasid, PhysAddr};
use crate::contract::Refusal;
use crate::intent::IntentItem;
use crate::object::ObjectId;
use crate::prot::Prot;

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No object with that id.
    #[error("no {kind} with id {id}")]
    NoSuchObject {
        /// The id.
        id: ObjectId,
        /// The kind that was expected.
        kind: &'static str,
    },
    /// The object is in use.
    #[error("{what} {id} is in use: {by}")]
    Busy {
        /// Kind.
        what: &'static str,
        /// The id.
        id: ObjectId,
        /// By whom.
        by: String,
    },
    /// A zero-length range.
    #[error("zero-length range")]
    ZeroLength,
    /// An address or length is not aligned.
    #[error("{what} {value:#x} is not aligned to {align:#x}")]
    Unaligned {
        /// Which value.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The required alignment.
        align: u64,
    },
    /// The range runs past the top of the 64-bit space.
    #[error("range {start}+{len:#x} overflows the 64-bit address space")]
    Overflow {
        /// Start.
        start: Iova,
        /// Length.
        len: u64,
    },
    /// Outside every allowed range of the IOAS (device apertures, user limits).
    #[error("range {range} is outside the IOAS's allowed ranges {allowed}")]
    OutOfAperture {
        /// The range asked for.
        range: IovaRange,
        /// The allowed ranges, printed.
        allowed: String,
    },
    /// Overlaps a reserved region.
    #[error("range {range} overlaps reserved region {region} ({why})")]
    Reserved {
        /// The range asked for.
        range: IovaRange,
        /// The reserved region.
        region: IovaRange,
        /// Where the reservation comes from.
        why: String,
    },
    /// Overlaps an existing mapping.
    #[error("range {range} overlaps the mapped area {area}")]
    Exists {
        /// The range asked for.
        range: IovaRange,
        /// The area in the way.
        area: IovaRange,
    },
    /// Nothing mapped in the range.
    #[error("nothing is mapped in {range}")]
    NotMapped {
        /// The range.
        range: IovaRange,
    },
    /// An exact unmap would cut an area.
    #[error("unmapping {range} would cut the area {area} (use a cutting unmap)")]
    CutsArea {
        /// The range.
        range: IovaRange,
        /// The area it cuts.
        area: IovaRange,
    },
    /// No free IOVA range of that size.
    #[error("no free IOVA range of {len:#x} bytes")]
    NoSpace {
        /// Length asked for.
        len: u64,
    },
    /// Another operation is changing the range now.
    #[error("range {range} is being changed by another operation")]
    InFlight {
        /// The range.
        range: IovaRange,
    },
    /// The backend refused the device's intent.
    #[error("{0}")]
    Refused(Box<Refusal>),
    /// The device has not negotiated a contract yet.
    #[error("device {device} has no contract: negotiate its intent first")]
    NoContract {
        /// The device.
        device: ObjectId,
    },
    /// The device's contract does not cover this use.
    #[error("device {device}'s contract does not grant {item}")]
    NotGranted {
        /// The device.
        device: ObjectId,
        /// What is missing.
        item: IntentItem,
    },
    /// Devices that cannot be isolated must share one IOAS.
    #[error(
        "device {device} cannot be isolated from device {peer} (no ACS below {boundary}): \
         they must share one IOAS, and {peer} uses {peer_target}"
    )]
    MustShareIoas {
        /// The device being attached.
        device: ObjectId,
        /// The peer already attached elsewhere.
        peer: ObjectId,
        /// The bridge below which ACS is missing.
        boundary: String,
        /// What the peer is attached to.
        peer_target: String,
    },
    /// The PASID is beyond the contract's range.
    #[error("PASID {pasid} is outside the device's contract range {range}")]
    PasidOutOfRange {
        /// The PASID.
        pasid: Pasid,
        /// The contract's range, printed.
        range: String,
    },
    /// Not attached there.
    #[error("device {device} has nothing attached at {what}")]
    NotAttached {
        /// The device.
        device: ObjectId,
        /// Untagged or the PASID.
        what: String,
    },
    /// The request is inconsistent (wrong HWPT kind, missing parent, unknown unit...).
    #[error("{0}")]
    Invalid(String),
    /// A backend failed; everything the framework changed for the operation was rolled back.
    #[error("plugin {plugin} (unit {unit}) failed in {op}: {error}")]
    Plugin {
        /// The plugin.
        plugin: String,
        /// The unit.
        unit: String,
        /// The operation.
        op: &'static str,
        /// The plugin's error.
        error: PluginError,
    },
    /// The plugin panicked in an earlier call and is out of service ([`crate::loader::Plugin::failed`]).
    #[error("plugin {plugin} failed earlier and is out of service: {why}")]
    PluginFailed {
        /// The plugin.
        plugin: String,
        /// Its first panic.
        why: String,
    },
    /// A range whose start lies above its last address.
    #[error("range {start:#x}..={last:#x} is inverted (start above last)")]
    InvertedRange {
        /// Its start.
        start: u64,
        /// Its last address.
        last: u64,
    },
    /// Two ranges of one list overlap.
    #[error("ranges {first} and {second} overlap")]
    OverlappingRanges {
        /// One.
        first: IovaRange,
        /// The other.
        second: IovaRange,
    },
    /// Flag or code bits this version does not know (iommufd's EOPNOTSUPP).
    #[error("unknown bits {bits:#x} in {what}")]
    UnknownBits {
        /// Which field.
        what: &'static str,
        /// The bits (or the code) not understood.
        bits: u64,
    },
    /// A backend answered something the framework cannot use; whatever it returned was
    /// released and nothing was changed.
    #[error("plugin {plugin} (unit {unit}) answered {op} badly: {what}")]
    BadAnswer {
        /// The plugin.
        plugin: String,
        /// The unit.
        unit: String,
        /// The operation.
        op: &'static str,
        /// What was wrong with the answer.
        what: String,
    },
    /// The virtual id names another device of the vIOMMU already.
    #[error("virtual id {virt_id:#x} of vIOMMU {viommu} is device {device}'s")]
    VirtualIdInUse {
        /// The vIOMMU.
        viommu: ObjectId,
        /// The virtual id.
        virt_id: u64,
        /// The device that has it.
        device: ObjectId,
    },
    /// The backend refused a guest command; the ones before it were carried out.
    #[error("plugin {plugin} (unit {unit}) refused guest command {handled}: {error}")]
    Invalidation {
        /// Commands handled before the refused one (its index).
        handled: u32,
        /// The plugin.
        plugin: String,
        /// The unit.
        unit: String,
        /// Why.
        error: PluginError,
    },
    /// No page request with that cookie is outstanding in the fault queue (answered already,
    /// or answered by the framework when its device was detached).
    #[error("no page request {cookie} is outstanding in fault queue {queue}")]
    NoSuchPageRequest {
        /// The fault queue.
        queue: ObjectId,
        /// The cookie.
        cookie: u64,
    },
    /// Dirty bits are read only while the HWPT tracks them.
    #[error("HWPT {hwpt} is not tracking dirty pages")]
    DirtyTrackingOff {
        /// The HWPT.
        hwpt: ObjectId,
    },
    /// A new HWPT's smallest page does not fit an area already mapped in its IOAS.
    #[error("area {area} (at {pa}) of the IOAS is not aligned to {align:#x}, the smallest page of the new HWPT")]
    AreaUnaligned {
        /// The area.
        area: IovaRange,
        /// Its physical address.
        pa: PhysAddr,
        /// The alignment the new HWPT needs.
        align: u64,
    },
    /// A host adapter (KVM, Xen, bare metal) failed outside any backend: creating or
    /// destroying a guest, reading the platform. Nothing was changed.
    #[error("{host} host failed in {op}: {message}")]
    Host {
        /// Which host adapter.
        host: &'static str,
        /// The operation.
        op: &'static str,
        /// What went wrong, in the host's words.
        message: String,
    },
    /// An area does not allow the access asked for (an access object's pin, read or write).
    #[error("{want} access to {range} refused: the area {area} is {prot}")]
    Denied {
        /// The part of the request the area covers (its start is the first refused address).
        range: IovaRange,
        /// The area.
        area: IovaRange,
        /// The area's permissions.
        prot: Prot,
        /// What was asked for.
        want: Prot,
    },
    /// Physical memory that may not be mapped for devices: outside RAM, or the host's own
    /// table pages. Nothing was changed.
    #[error("cannot map {pa}+{len:#x} for devices: {why}")]
    NotDmaMemory {
        /// Start of the physical range.
        pa: crate::PhysAddr,
        /// Its length.
        len: u64,
        /// Why, in the host's words.
        why: String,
    },
    /// Another unit's register window starts at that address.
    #[error("unit {unit} has its registers at {base} already")]
    WindowInUse {
        /// The register window's base.
        base: crate::PhysAddr,
        /// The unit there.
        unit: String,
    },
    /// A request is larger than one call may ask for.
    #[error("{what} of {len:#x} is more than one call allows ({max:#x})")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The size asked for.
        len: u64,
        /// The most one call allows.
        max: u64,
    },
    /// Pages in the range are pinned by an access object, whose unmap callback left them
    /// pinned. Nothing was changed.
    #[error("{range} has pages pinned by access {access}")]
    Pinned {
        /// The range of the operation refused.
        range: IovaRange,
        /// An access that holds pins there.
        access: ObjectId,
    },
    /// Unpinning pages the access has not pinned. Nothing was unpinned.
    #[error("access {access} has not pinned every page of {range}")]
    NotPinned {
        /// The range asked for.
        range: IovaRange,
        /// The access.
        access: ObjectId,
    },
}

impl Error {
    /// The plugin error code, when a backend failed.
    pub fn plugin_code(&self) -> Option<crate::abi::ErrorCode> {
        match self {
            Error::Plugin { error, .. } => Some(error.code),
            _ => None,
        }
    }
}
