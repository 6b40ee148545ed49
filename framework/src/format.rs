//! Page-table formats: which hardware layout a HWPT is built in.
//!
//! A format is an open set of numbered ids (not a Rust enum) so that a plugin built against an
//! older interface can still receive a newer id and refuse it by name.

use std::fmt;

use abi_stable::StableAbi;
use serde::{Deserialize, Serialize};

/// A page-table format id.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PtFormat(pub u32);

impl PtFormat {
    /// No hardware table (blocking, identity, software tables).
    pub const NONE: PtFormat = PtFormat(0);
    /// The mock backend's own four-level radix format (`plugins/mock/src/format.rs`).
    pub const MOCK: PtFormat = PtFormat(1);
    /// VT-d second-stage (second-level) paging structures, VT-d spec 9.8.
    pub const VTD_SECOND_LEVEL: PtFormat = PtFormat(2);
    /// VT-d first-stage, the x86-64 4/5-level format, VT-d spec 9.7 (a guest's stage-1).
    pub const X86_64: PtFormat = PtFormat(3);
    /// Armv8 VMSA stage-1 translation tables (SMMUv3 context descriptor, SMMUv3 spec 5.4).
    pub const ARM_LPAE_S1: PtFormat = PtFormat(4);
    /// Armv8 VMSA stage-2 translation tables (SMMUv3 STE S2, SMMUv3 spec 5.2).
    pub const ARM_LPAE_S2: PtFormat = PtFormat(5);
    /// AMD-Vi host page tables (v1 format), AMD IOMMU spec 2.2.3.
    pub const AMD_V1: PtFormat = PtFormat(6);
    /// AMD-Vi guest page tables behind GCR3 (v2, x86-64 format), AMD IOMMU spec 2.2.6.
    pub const AMD_V2: PtFormat = PtFormat(7);
    /// A guest's physical map that a hypervisor owns and the host cannot read (Xen's p2m, which
    /// Xen shares with, or mirrors into, the IOMMU's tables).
    pub const HYPERVISOR_P2M: PtFormat = PtFormat(8);

    const NAMES: [(PtFormat, &'static str); 9] = [
        (Self::NONE, "none"),
        (Self::MOCK, "mock"),
        (Self::VTD_SECOND_LEVEL, "vtd-sl"),
        (Self::X86_64, "x86-64"),
        (Self::ARM_LPAE_S1, "arm-lpae-s1"),
        (Self::ARM_LPAE_S2, "arm-lpae-s2"),
        (Self::AMD_V1, "amd-v1"),
        (Self::AMD_V2, "amd-v2"),
        (Self::HYPERVISOR_P2M, "hypervisor-p2m"),
    ];

    /// Short name, as used in TOML files and printed contracts.
    pub fn name(self) -> Option<&'static str> {
        Self::NAMES.iter().find(|(f, _)| *f == self).map(|(_, n)| *n)
    }

    /// Every name this interface version knows, for error messages.
    pub fn known_names() -> impl Iterator<Item = &'static str> {
        Self::NAMES.iter().map(|(_, n)| *n)
    }
}

impl fmt::Debug for PtFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for PtFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "format#{}", self.0),
        }
    }
}

impl std::str::FromStr for PtFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::NAMES.iter().find(|(_, n)| *n == s).map(|(f, _)| *f).ok_or_else(|| {
            let known: Vec<_> = Self::known_names().collect();
            format!("unknown page-table format `{s}` (known: {})", known.join(", "))
        })
    }
}

impl Serialize for PtFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PtFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}
