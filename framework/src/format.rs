//! Page-table formats: which hardware layout a HWPT is built in.
//!
//! A format is an open set of numbered ids (not a Rust enum) so that a plugin built against an
//! older interface can still receive a newer id and refuse it by name. Ids below `0x1_0000`
//! are ioasis's; a vendor numbers its own formats [`PtFormat::vendor`] (see [`crate::ids`]).

use std::fmt;

use abi_stable::StableAbi;
use serde::{Deserialize, Serialize};

/// A page-table format id: ioasis's constants below `0x1_0000`, a vendor's from
/// [`PtFormat::vendor`] above (see [`crate::ids`]). Printed and parsed by name (`x86-64`);
/// a vendor's format as `vendor-<vendor>:<n>` (`vendor-8086:1`).
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

    /// Format `n` of the vendor whose PCI-SIG vendor id is `pci_vendor` (see [`crate::ids`]),
    /// e.g. `const ACME_S1: PtFormat = PtFormat::vendor(0x1234, 1);`.
    ///
    /// # Panics
    ///
    /// When `pci_vendor` is `0x0000` or `0xffff` (no vendor's id); in a `const`, a build error.
    pub const fn vendor(pci_vendor: u16, n: u16) -> PtFormat {
        PtFormat(crate::ids::vendor(pci_vendor, n))
    }

    /// True when the format is a vendor's, not ioasis's.
    pub const fn is_vendor(self) -> bool {
        crate::ids::is_vendor(self.0)
    }

    /// A vendor format's PCI-SIG vendor id and number; `None` for one of ioasis's.
    pub const fn vendor_parts(self) -> Option<(u16, u16)> {
        crate::ids::vendor_parts(self.0)
    }

    /// Short name, as used in TOML files and printed contracts (`None` for a vendor's format
    /// or one this version does not know: those print as `vendor-<vendor>:<n>` or `format#<id>`).
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
            None => crate::ids::fmt_unnamed(f, "format", self.0),
        }
    }
}

impl std::str::FromStr for PtFormat {
    type Err = String;
    /// A name, or a vendor's format as `vendor-<vendor>:<n>` (`vendor-8086:1`).
    fn from_str(s: &str) -> Result<Self, String> {
        let named = Self::NAMES.iter().find(|(_, n)| *n == s).map(|(f, _)| *f);
        named.or_else(|| crate::ids::parse_vendor(s).map(PtFormat)).ok_or_else(|| {
            let known: Vec<_> = Self::known_names().collect();
            format!(
                "unknown page-table format `{s}` (known: {}; a vendor's: vendor-<PCI vendor id, 4 hex digits>:<n>)",
                known.join(", ")
            )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_formats_are_numbered_by_pci_vendor_and_print_and_parse_as_such() {
        const ACME_S1: PtFormat = PtFormat::vendor(0x1234, 1);
        assert_eq!(ACME_S1, PtFormat(0x1234_0001));
        assert!(ACME_S1.is_vendor() && !PtFormat::X86_64.is_vendor() && !PtFormat(0xffff).is_vendor());
        assert_eq!(ACME_S1.vendor_parts(), Some((0x1234, 1)));
        assert_eq!(ACME_S1.to_string(), "vendor-1234:1");
        assert_eq!("vendor-1234:1".parse::<PtFormat>(), Ok(ACME_S1));
        assert_eq!(PtFormat(99).to_string(), "format#99", "an ioasis id this version does not know");
        assert!("vendor-0000:1".parse::<PtFormat>().is_err());
        // Every ioasis format is below the vendor range.
        assert!(PtFormat::NAMES.iter().all(|(f, _)| !f.is_vendor()));
    }
}
