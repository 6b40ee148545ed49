//! Who may number what: the ranges of the open sets of numbered ids.
//!
//! Page-table formats ([`crate::PtFormat`]), vIOMMU kinds ([`crate::abi::ViommuKind`]),
//! hardware-queue kinds ([`crate::abi::HwQueueKind`]), error codes ([`crate::abi::ErrorCode`])
//! and intent kinds ([`crate::IntentCode`]) are open sets of `u32` ids, so that a plugin can
//! carry an id its host does not know yet. Two vendors must never pick the same id, so:
//!
//! | ids                              | belong to                                     |
//! |----------------------------------|-----------------------------------------------|
//! | `0x0000_0000..=0x0000_ffff`      | ioasis (the constants of each type)           |
//! | `(vendor << 16) \| n`, n: 16 bits | the vendor whose PCI-SIG vendor id is `vendor` |
//!
//! A vendor id is the company's PCI-SIG vendor id ([`pci`]: Intel `0x8086`, AMD `0x1022`,
//! Arm `0x13b5`, NVIDIA `0x10de`, ...), which PCI-SIG already keeps unique; `0x0000` and
//! `0xffff` are not vendor ids. A vendor numbers its own ids `n` as it likes. An id that a
//! host does not know prints as `vendor-<vendor>:<n>` (the vendor id in four hex digits, `n` in
//! decimal: `vendor-8086:1`), and [`crate::PtFormat`] parses that form back (TOML files).

use std::fmt;

/// The first vendor id: every id below belongs to ioasis.
pub const VENDOR_BASE: u32 = 0x1_0000;

/// PCI-SIG vendor ids of a few IOMMU vendors, for [`vendor`].
pub mod pci {
    /// Intel.
    pub const INTEL: u16 = 0x8086;
    /// AMD.
    pub const AMD: u16 = 0x1022;
    /// Arm.
    pub const ARM: u16 = 0x13b5;
    /// NVIDIA.
    pub const NVIDIA: u16 = 0x10de;
}

/// The id `n` of the vendor whose PCI-SIG vendor id is `pci_vendor`: `(pci_vendor << 16) | n`.
///
/// # Panics
///
/// When `pci_vendor` is `0x0000` or `0xffff`, which PCI-SIG gives no vendor (the id would be
/// ioasis's, or collide with every vendor's sentinel); in a `const` this is a build error.
pub const fn vendor(pci_vendor: u16, n: u16) -> u32 {
    assert!(pci_vendor != 0 && pci_vendor != 0xffff, "0x0000 and 0xffff are not PCI-SIG vendor ids");
    ((pci_vendor as u32) << 16) | n as u32
}

/// True when `id` is a vendor's (at or above [`VENDOR_BASE`]), false when it is ioasis's.
pub const fn is_vendor(id: u32) -> bool {
    id >= VENDOR_BASE
}

/// A vendor id's PCI-SIG vendor id and number; `None` for an ioasis id.
pub const fn vendor_parts(id: u32) -> Option<(u16, u16)> {
    if is_vendor(id) {
        Some(((id >> 16) as u16, id as u16))
    } else {
        None
    }
}

/// Prints an id that has no name: `vendor-<vendor>:<n>` for a vendor's, `<what>#<id>` for an
/// ioasis id this version does not know.
pub(crate) fn fmt_unnamed(f: &mut fmt::Formatter<'_>, what: &str, id: u32) -> fmt::Result {
    match vendor_parts(id) {
        Some((v, n)) => write!(f, "vendor-{v:04x}:{n}"),
        None => write!(f, "{what}#{id}"),
    }
}

/// Parses `vendor-<vendor>:<n>` (four hex digits, a decimal number) back into the id.
pub(crate) fn parse_vendor(s: &str) -> Option<u32> {
    let (v, n) = s.strip_prefix("vendor-")?.split_once(':')?;
    if v.len() != 4 {
        return None;
    }
    let v = u16::from_str_radix(v, 16).ok()?;
    let n: u16 = n.parse().ok()?;
    (v != 0 && v != 0xffff).then(|| vendor(v, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Shown(u32);
    impl fmt::Display for Shown {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            fmt_unnamed(f, "thing", self.0)
        }
    }

    #[test]
    fn vendor_ids_are_above_every_ioasis_id_and_split_back() {
        assert_eq!(vendor(pci::INTEL, 1), 0x8086_0001);
        assert_eq!(vendor(pci::NVIDIA, 0xffff), 0x10de_ffff);
        assert_eq!(vendor(0x0001, 0), VENDOR_BASE, "the smallest vendor id");
        assert!(is_vendor(vendor(pci::ARM, 0)) && !is_vendor(VENDOR_BASE - 1) && !is_vendor(0));
        assert_eq!(vendor_parts(vendor(pci::AMD, 7)), Some((pci::AMD, 7)));
        assert_eq!(vendor_parts(0xffff), None);
    }

    #[test]
    fn unnamed_ids_print_with_their_vendor_and_parse_back() {
        assert_eq!(Shown(vendor(pci::INTEL, 12)).to_string(), "vendor-8086:12");
        assert_eq!(Shown(vendor(pci::ARM, 0)).to_string(), "vendor-13b5:0");
        assert_eq!(Shown(42).to_string(), "thing#42");
        assert_eq!(parse_vendor("vendor-8086:12"), Some(vendor(pci::INTEL, 12)));
        assert_eq!(parse_vendor("vendor-13B5:0"), Some(vendor(pci::ARM, 0)));
        for bad in ["vendor-0000:1", "vendor-ffff:1", "vendor-8086", "vendor-808:1", "vendor-8086:70000", "x86-64"] {
            assert_eq!(parse_vendor(bad), None, "{bad}");
        }
    }

    #[test]
    #[should_panic(expected = "not PCI-SIG vendor ids")]
    fn vendor_zero_is_not_a_vendor() {
        let zero = std::hint::black_box(0);
        vendor(zero, 1);
    }
}
