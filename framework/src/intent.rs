//! What a device says it will do with DMA.
//!
//! An [`Intent`] is a list of [`IntentItem`]s. Only the device's driver knows them: a group
//! cannot guess that a device issues PASID-tagged TLPs, or that it is an mdev whose DMA goes
//! through a software table. The framework negotiates each item with the unit's backend and
//! answers with a [`crate::Contract`] or a [`crate::Refusal`].

use std::fmt;

use abi_stable::StableAbi;
use serde::{Deserialize, Serialize};

use crate::format::PtFormat;

/// One thing a device will do. Serialised in TOML as a table with a `kind` key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum IntentItem {
    /// DMA without a PASID (requester id only), translated by a paging table.
    UntaggedDma,
    /// PASID-tagged DMA using PASIDs of `width` bits.
    PasidDma {
        /// PASID width the device uses (1..=20).
        width: u8,
    },
    /// Mediated (mdev-like) DMA through a software table: no hardware translation is set up;
    /// the device's driver reads and writes the IOAS through the framework.
    SoftwareTable,
    /// One PASID of the device linked to an IOAS (PASID attach of a paging table).
    PasidIoas,
    /// ENQCMD submissions carrying a guest's vPASID, translated to a host PASID.
    Enqcmd,
    /// Recoverable I/O page faults (PRI): the device waits for a page response.
    PageFaults,
    /// Hardware dirty tracking of device writes (live migration).
    DirtyTracking,
    /// A guest-owned stage-1 of the given format, nested over a paging stage-2.
    NestedStage1 {
        /// The stage-1 page-table format.
        format: PtFormat,
    },
    /// Enforced cache coherency (no-snoop TLPs are snooped anyway).
    Coherency,
    /// Address Translation Services: the device caches translations (device-TLB).
    Ats,
    /// Untranslated (identity) DMA, for a trusted device.
    Identity,
}

impl fmt::Display for IntentItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntentItem::UntaggedDma => f.write_str("untagged DMA"),
            IntentItem::PasidDma { width } => write!(f, "PASID-tagged DMA ({width}-bit PASIDs)"),
            IntentItem::SoftwareTable => f.write_str("software table (mediated DMA)"),
            IntentItem::PasidIoas => f.write_str("PASID linked to an IOAS"),
            IntentItem::Enqcmd => f.write_str("ENQCMD with vPASID"),
            IntentItem::PageFaults => f.write_str("I/O page faults"),
            IntentItem::DirtyTracking => f.write_str("dirty tracking"),
            IntentItem::NestedStage1 { format } => write!(f, "nested stage-1 ({format})"),
            IntentItem::Coherency => f.write_str("enforced cache coherency"),
            IntentItem::Ats => f.write_str("ATS"),
            IntentItem::Identity => f.write_str("identity (untranslated) DMA"),
        }
    }
}

/// An intent item as it crosses the plugin boundary: an open numbered kind and one argument,
/// so that a plugin built against an older interface can refuse an item it does not know.
/// Kinds below `0x1_0000` are ioasis's; a vendor numbers its own [`IntentCode::vendor`] (see
/// [`crate::ids`]).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct IntentCode {
    /// Which item (see the `IntentCode::*` constants).
    pub kind: u32,
    /// Its argument (PASID width, stage-1 format id), or 0.
    pub arg: u64,
}

impl IntentCode {
    /// [`IntentItem::UntaggedDma`].
    pub const UNTAGGED_DMA: u32 = 1;
    /// [`IntentItem::PasidDma`]; `arg` is the width.
    pub const PASID_DMA: u32 = 2;
    /// [`IntentItem::SoftwareTable`].
    pub const SOFTWARE_TABLE: u32 = 3;
    /// [`IntentItem::PasidIoas`].
    pub const PASID_IOAS: u32 = 4;
    /// [`IntentItem::Enqcmd`].
    pub const ENQCMD: u32 = 5;
    /// [`IntentItem::PageFaults`].
    pub const PAGE_FAULTS: u32 = 6;
    /// [`IntentItem::DirtyTracking`].
    pub const DIRTY_TRACKING: u32 = 7;
    /// [`IntentItem::NestedStage1`]; `arg` is the format id.
    pub const NESTED_STAGE1: u32 = 8;
    /// [`IntentItem::Coherency`].
    pub const COHERENCY: u32 = 9;
    /// [`IntentItem::Ats`].
    pub const ATS: u32 = 10;
    /// [`IntentItem::Identity`].
    pub const IDENTITY: u32 = 11;

    /// Kind `n` of the vendor whose PCI-SIG vendor id is `pci_vendor` (see [`crate::ids`]).
    ///
    /// # Panics
    ///
    /// When `pci_vendor` is `0x0000` or `0xffff` (no vendor's id); in a `const`, a build error.
    pub const fn vendor(pci_vendor: u16, n: u16) -> u32 {
        crate::ids::vendor(pci_vendor, n)
    }

    /// True when the item's kind is a vendor's, not ioasis's.
    pub const fn is_vendor(self) -> bool {
        crate::ids::is_vendor(self.kind)
    }
}

impl fmt::Display for IntentCode {
    /// The item it decodes to, or its kind (`vendor-<vendor>:<n>`, `intent#<kind>`) and argument.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match IntentItem::try_from(*self) {
            Ok(item) => write!(f, "{item}"),
            Err(_) => {
                crate::ids::fmt_unnamed(f, "intent", self.kind)?;
                if self.arg != 0 {
                    write!(f, "({})", self.arg)?;
                }
                Ok(())
            }
        }
    }
}

impl From<IntentItem> for IntentCode {
    fn from(item: IntentItem) -> Self {
        let (kind, arg) = match item {
            IntentItem::UntaggedDma => (Self::UNTAGGED_DMA, 0),
            IntentItem::PasidDma { width } => (Self::PASID_DMA, width as u64),
            IntentItem::SoftwareTable => (Self::SOFTWARE_TABLE, 0),
            IntentItem::PasidIoas => (Self::PASID_IOAS, 0),
            IntentItem::Enqcmd => (Self::ENQCMD, 0),
            IntentItem::PageFaults => (Self::PAGE_FAULTS, 0),
            IntentItem::DirtyTracking => (Self::DIRTY_TRACKING, 0),
            IntentItem::NestedStage1 { format } => (Self::NESTED_STAGE1, format.0 as u64),
            IntentItem::Coherency => (Self::COHERENCY, 0),
            IntentItem::Ats => (Self::ATS, 0),
            IntentItem::Identity => (Self::IDENTITY, 0),
        };
        IntentCode { kind, arg }
    }
}

impl TryFrom<IntentCode> for IntentItem {
    type Error = IntentCode;
    /// Decodes a code; an unknown kind comes back as the error.
    fn try_from(c: IntentCode) -> Result<Self, IntentCode> {
        Ok(match c.kind {
            IntentCode::UNTAGGED_DMA => IntentItem::UntaggedDma,
            IntentCode::PASID_DMA => IntentItem::PasidDma { width: c.arg.min(255) as u8 },
            IntentCode::SOFTWARE_TABLE => IntentItem::SoftwareTable,
            IntentCode::PASID_IOAS => IntentItem::PasidIoas,
            IntentCode::ENQCMD => IntentItem::Enqcmd,
            IntentCode::PAGE_FAULTS => IntentItem::PageFaults,
            IntentCode::DIRTY_TRACKING => IntentItem::DirtyTracking,
            IntentCode::NESTED_STAGE1 => {
                IntentItem::NestedStage1 { format: PtFormat(c.arg.min(u32::MAX as u64) as u32) }
            }
            IntentCode::COHERENCY => IntentItem::Coherency,
            IntentCode::ATS => IntentItem::Ats,
            IntentCode::IDENTITY => IntentItem::Identity,
            _ => return Err(c),
        })
    }
}

/// Everything a device states about its DMA.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    /// The items, in the order the device listed them.
    pub items: Vec<IntentItem>,
}

impl Intent {
    /// An intent from its items.
    pub fn new(items: impl IntoIterator<Item = IntentItem>) -> Self {
        Self { items: items.into_iter().collect() }
    }
    /// True when the device asked for `item` (ignoring arguments for PASID widths/formats).
    pub fn wants(&self, pred: impl Fn(&IntentItem) -> bool) -> bool {
        self.items.iter().any(pred)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_kinds_are_kept() {
        let items = [
            IntentItem::UntaggedDma,
            IntentItem::PasidDma { width: 20 },
            IntentItem::SoftwareTable,
            IntentItem::PasidIoas,
            IntentItem::Enqcmd,
            IntentItem::PageFaults,
            IntentItem::DirtyTracking,
            IntentItem::NestedStage1 { format: PtFormat::X86_64 },
            IntentItem::Coherency,
            IntentItem::Ats,
            IntentItem::Identity,
        ];
        for item in items {
            assert_eq!(IntentItem::try_from(IntentCode::from(item)), Ok(item));
        }
        let future = IntentCode { kind: 999, arg: 7 };
        assert_eq!(IntentItem::try_from(future), Err(future));
        assert_eq!(future.to_string(), "intent#999(7)");
    }

    #[test]
    fn vendor_intent_kinds_print_with_their_vendor() {
        const ACME_TURBO: u32 = IntentCode::vendor(0x1234, 5);
        let code = IntentCode { kind: ACME_TURBO, arg: 0 };
        assert!(code.is_vendor() && !IntentCode::from(IntentItem::Ats).is_vendor());
        assert_eq!(IntentItem::try_from(code), Err(code));
        assert_eq!(code.to_string(), "vendor-1234:5");
        assert_eq!(IntentCode::from(IntentItem::Ats).to_string(), "ATS");
    }

    #[test]
    fn intent_parses_from_toml() {
        let text = r#"
            items = [
              { kind = "untagged-dma" },
              { kind = "pasid-dma", width = 20 },
              { kind = "nested-stage1", format = "x86-64" },
            ]
        "#;
        let intent: Intent = toml::from_str(text).unwrap();
        assert_eq!(intent.items[1], IntentItem::PasidDma { width: 20 });
        assert_eq!(intent.items[2], IntentItem::NestedStage1 { format: PtFormat::X86_64 });
        let bad = r#"items = [{ kind = "telepathy" }]"#;
        assert!(toml::from_str::<Intent>(bad).is_err());
    }
}
