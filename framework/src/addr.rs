//! Typed addresses and identifiers that cross the plugin boundary.
//!
//! Every type here is `#[repr(C)]` or `#[repr(transparent)]` and derives `StableAbi`, so a plugin
//! built by a vendor sees exactly the same layout as the host.

use std::fmt;

use abi_stable::StableAbi;
use serde::{Deserialize, Serialize};

/// Size of the smallest page every backend supports.
pub const PAGE_SIZE: u64 = 4096;
/// `log2(PAGE_SIZE)`.
pub const PAGE_SHIFT: u32 = 12;

macro_rules! address_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[repr(transparent)]
        #[derive(
            StableAbi, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The raw address.
            pub const fn raw(self) -> u64 {
                self.0
            }
            /// `self + off`, or `None` on overflow.
            pub const fn checked_add(self, off: u64) -> Option<Self> {
                match self.0.checked_add(off) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }
            /// True when the address is a multiple of `align` (a power of two).
            pub const fn is_aligned(self, align: u64) -> bool {
                self.0 & (align - 1) == 0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:#x})", stringify!($name), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

address_type!(
    /// An I/O virtual address: what a device puts on the bus.
    Iova
);
address_type!(
    /// A host physical address: what the IOMMU translates to, and where table pages live.
    PhysAddr
);

/// A process address space id (PCIe PASID, SMMU SubstreamID). At most 20 bits on every spec.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Pasid(pub u32);

impl Pasid {
    /// Widest PASID any of the three specs allows.
    pub const MAX_BITS: u8 = 20;
}

impl fmt::Debug for Pasid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pasid({:#x})", self.0)
    }
}

impl fmt::Display for Pasid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A PCI requester id: segment, bus, device, function.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequesterId {
    /// PCI segment group.
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device (bits 7:3) and function (bits 2:0).
    pub devfn: u8,
}

impl RequesterId {
    /// Builds a requester id from its parts; `dev` < 32, `func` < 8.
    pub const fn new(segment: u16, bus: u8, dev: u8, func: u8) -> Self {
        Self { segment, bus, devfn: (dev << 3) | (func & 7) }
    }
    /// The 16-bit source id that VT-d and AMD-Vi tables are indexed by (bus << 8 | devfn).
    pub const fn source_id(self) -> u16 {
        ((self.bus as u16) << 8) | self.devfn as u16
    }
}

impl fmt::Debug for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for RequesterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04x}:{:02x}:{:02x}.{}", self.segment, self.bus, self.devfn >> 3, self.devfn & 7)
    }
}

impl std::str::FromStr for RequesterId {
    type Err = String;
    /// Parses `SSSS:BB:DD.F` or `BB:DD.F` (segment 0).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a PCI address (expected [SSSS:]BB:DD.F)");
        let parts: Vec<&str> = s.split(':').collect();
        let (seg, bus, rest) = match parts.as_slice() {
            [bus, rest] => ("0", *bus, *rest),
            [seg, bus, rest] => (*seg, *bus, *rest),
            _ => return Err(bad()),
        };
        let (dev, func) = rest.split_once('.').ok_or_else(bad)?;
        let segment = u16::from_str_radix(seg, 16).map_err(|_| bad())?;
        let bus = u8::from_str_radix(bus, 16).map_err(|_| bad())?;
        let dev = u8::from_str_radix(dev, 16).map_err(|_| bad())?;
        let func = func.parse::<u8>().map_err(|_| bad())?;
        if dev >= 32 || func >= 8 {
            return Err(bad());
        }
        Ok(Self::new(segment, bus, dev, func))
    }
}

/// How a unit identifies a device's DMA: a PCI requester id (VT-d, AMD-Vi) or a stream id
/// (SMMUv3; for PCI devices behind an SMMU the stream id is derived from the requester id
/// through the IORT mapping, which the host adapter has already applied).
#[repr(C, u8)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeviceRef {
    /// PCI requester id.
    Rid(RequesterId),
    /// Arm stream id.
    Sid(u32),
}

impl DeviceRef {
    /// The index a unit's device table is looked up by.
    pub const fn table_index(self) -> u32 {
        match self {
            DeviceRef::Rid(r) => r.source_id() as u32,
            DeviceRef::Sid(s) => s,
        }
    }
}

impl fmt::Debug for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRef::Rid(r) => write!(f, "{r}"),
            DeviceRef::Sid(s) => write!(f, "sid {s:#x}"),
        }
    }
}

/// A half-open IOVA range `[start, start + len)`, checked against overflow at construction.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IovaRange {
    /// First address.
    pub start: Iova,
    /// Last address (inclusive), so that a range can reach `u64::MAX`.
    pub last: Iova,
}

impl IovaRange {
    /// `[start, start+len)`; `None` for a zero length or when the end overflows 64 bits.
    pub fn new(start: Iova, len: u64) -> Option<Self> {
        if len == 0 {
            return None;
        }
        let last = start.0.checked_add(len - 1)?;
        Some(Self { start, last: Iova(last) })
    }
    /// `[first, last]`; `None` when `last < first`.
    pub fn inclusive(first: u64, last: u64) -> Option<Self> {
        (last >= first).then_some(Self { start: Iova(first), last: Iova(last) })
    }
    /// The whole 64-bit space.
    pub const FULL: Self = Self { start: Iova(0), last: Iova(u64::MAX) };
    /// Length in bytes (saturates at `u64::MAX` for the full space).
    pub fn len(&self) -> u64 {
        (self.last.0 - self.start.0).saturating_add(1)
    }
    /// A range is never empty; present for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// One past the end, or `None` if the range reaches the top of the space.
    pub fn end(&self) -> Option<u64> {
        self.last.0.checked_add(1)
    }
    /// True when `other` lies entirely inside `self`.
    pub fn contains_range(&self, other: &IovaRange) -> bool {
        other.start >= self.start && other.last <= self.last
    }
    /// True when the two ranges share an address.
    pub fn overlaps(&self, other: &IovaRange) -> bool {
        self.start <= other.last && other.start <= self.last
    }
    /// The common part, if any.
    pub fn intersect(&self, other: &IovaRange) -> Option<IovaRange> {
        let start = self.start.max(other.start);
        let last = self.last.min(other.last);
        (start <= last).then_some(IovaRange { start, last })
    }
}

impl fmt::Debug for IovaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}..={:#x}]", self.start.0, self.last.0)
    }
}

impl fmt::Display for IovaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_at_top_of_space_does_not_overflow() {
        let r = IovaRange::new(Iova(u64::MAX - 4095), 4096).unwrap();
        assert_eq!(r.last, Iova(u64::MAX));
        assert_eq!(r.end(), None);
        assert!(IovaRange::new(Iova(u64::MAX - 4095), 4097).is_none());
        assert!(IovaRange::new(Iova(0), 0).is_none());
        assert_eq!(IovaRange::FULL.len(), u64::MAX);
    }

    #[test]
    fn requester_id_parses_and_prints() {
        let r: RequesterId = "0000:01:1f.7".parse().unwrap();
        assert_eq!(r, RequesterId::new(0, 1, 0x1f, 7));
        assert_eq!(r.source_id(), 0x01ff);
        assert_eq!(r.to_string(), "0000:01:1f.7");
        let short: RequesterId = "3:00.1".parse().unwrap();
        assert_eq!(short, RequesterId::new(0, 3, 0, 1));
        assert!("00:20.0".parse::<RequesterId>().is_err());
        assert!("zz".parse::<RequesterId>().is_err());
    }

    #[test]
    fn ranges_intersect_and_overlap() {
        let a = IovaRange::inclusive(0x1000, 0x1fff).unwrap();
        let b = IovaRange::inclusive(0x1800, 0x2fff).unwrap();
        assert!(a.overlaps(&b));
        assert_eq!(a.intersect(&b), IovaRange::inclusive(0x1800, 0x1fff));
        let c = IovaRange::inclusive(0x2000, 0x2fff).unwrap();
        assert!(!a.overlaps(&c));
        assert!(a.intersect(&c).is_none());
    }
}

/// Whose address space an IOAS is.
///
/// Most IOASes are the host's own: ioasis builds the HWPTs from the IOAS's mappings. A host
/// adapter whose hypervisor owns the IOMMU (Xen: a domain's guest-physical space, which the
/// hypervisor's p2m defines) names the guest here, so that a backend realising the IOAS in
/// hypervisor terms knows which guest a paging HWPT belongs to. Backends that build their own
/// tables may ignore it.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct AddressSpace {
    /// [`AddressSpace::HOST`] or [`AddressSpace::GUEST`].
    pub kind: u32,
    /// The host adapter's id of the guest (a Xen domid, a VM number); 0 for the host.
    pub id: u64,
}

impl AddressSpace {
    /// The host's own space: mappings come only from the IOAS.
    pub const HOST: u32 = 0;
    /// A guest's physical space, owned by a hypervisor.
    pub const GUEST: u32 = 1;

    /// The host's own space.
    pub const fn host() -> Self {
        Self { kind: Self::HOST, id: 0 }
    }

    /// Guest `id`'s physical space.
    pub const fn guest(id: u64) -> Self {
        Self { kind: Self::GUEST, id }
    }

    /// The guest's id, when this is a guest's space.
    pub const fn guest_id(self) -> Option<u64> {
        if self.kind == Self::GUEST {
            Some(self.id)
        } else {
            None
        }
    }
}

impl fmt::Display for AddressSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.guest_id() {
            Some(id) => write!(f, "guest {id}"),
            None if self.kind == Self::HOST => f.write_str("host"),
            None => write!(f, "space kind {}", self.kind),
        }
    }
}
