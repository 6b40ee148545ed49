//! What a unit can do, as its backend reads it from the hardware.

use std::fmt;

use abi_stable::std_types::{RString, RVec};
use abi_stable::StableAbi;

use crate::format::PtFormat;

/// A set of page sizes: bit `n` set means pages of `1 << n` bytes.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PageSizes(pub u64);

impl PageSizes {
    /// 4 KiB only.
    pub const SZ_4K: PageSizes = PageSizes(1 << 12);
    /// 4 KiB and 2 MiB.
    pub const SZ_4K_2M: PageSizes = PageSizes(0x20_1000);
    /// 4 KiB, 2 MiB and 1 GiB: the x86 and Arm 4 KiB-granule set.
    pub const SZ_4K_2M_1G: PageSizes = PageSizes((1 << 12) | (1 << 21) | (1 << 30));

    /// The smallest page size, or `None` for an empty set.
    pub fn min(self) -> Option<u64> {
        (self.0 != 0).then(|| 1u64 << self.0.trailing_zeros())
    }
    /// True when `size` is in the set.
    pub fn contains(self, size: u64) -> bool {
        size.is_power_of_two() && self.0 & size != 0
    }
    /// The sizes, smallest first.
    pub fn iter(self) -> impl Iterator<Item = u64> {
        (0..64).filter(move |b| self.0 & (1 << b) != 0).map(|b| 1u64 << b)
    }
    /// The common sizes of two sets.
    pub fn intersect(self, other: PageSizes) -> PageSizes {
        PageSizes(self.0 & other.0)
    }
}

impl fmt::Debug for PageSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for PageSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.iter().map(human_size).collect();
        f.write_str(&names.join(","))
    }
}

/// `4K`, `2M`, `1G`, ... for a power-of-two size.
pub fn human_size(size: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (unit, name) in UNITS {
        if size >= unit && size % unit == 0 {
            return format!("{}{}", size / unit, name);
        }
    }
    format!("{size}")
}

/// Feature bits of a unit. Open-ended: new bits are added at the top.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(pub u64);

impl Features {
    /// PASID-tagged DMA (VT-d scalable mode + ECAP.PASID; SMMUv3 SSID; AMD-Vi PASID/GCR3).
    pub const PASID: Features = Features(1 << 0);
    /// Nested translation: a user stage-1 over a paging stage-2.
    pub const NESTING: Features = Features(1 << 1);
    /// Hardware dirty bits on the paging table (VT-d SSADS, SMMUv3 HTTU, AMD-Vi HAD).
    pub const DIRTY_TRACKING: Features = Features(1 << 2);
    /// Recoverable I/O page faults (PCIe PRI / Page Request queue, SMMU stall).
    pub const PAGE_FAULTS: Features = Features(1 << 3);
    /// Device-TLB invalidation for ATS-capable devices.
    pub const ATS: Features = Features(1 << 4);
    /// Enforced cache coherency (snoop control: VT-d SC/SNP, SMMU coherent walk, AMD force coherency).
    pub const COHERENCY: Features = Features(1 << 5);
    /// ENQCMD with a host-translated vPASID.
    pub const ENQCMD: Features = Features(1 << 6);
    /// Identity (pass-through) translation.
    pub const IDENTITY: Features = Features(1 << 7);
    /// Every bit this interface version names, with a short name.
    pub const NAMED: [(Features, &'static str); 8] = [
        (Self::PASID, "pasid"),
        (Self::NESTING, "nesting"),
        (Self::DIRTY_TRACKING, "dirty"),
        (Self::PAGE_FAULTS, "page-faults"),
        (Self::ATS, "ats"),
        (Self::COHERENCY, "coherency"),
        (Self::ENQCMD, "enqcmd"),
        (Self::IDENTITY, "identity"),
    ];

    /// Every bit this interface version names: a unit reporting others is refused.
    pub const KNOWN: Features = Features(
        Self::PASID.0
            | Self::NESTING.0
            | Self::DIRTY_TRACKING.0
            | Self::PAGE_FAULTS.0
            | Self::ATS.0
            | Self::COHERENCY.0
            | Self::ENQCMD.0
            | Self::IDENTITY.0,
    );

    /// True when every bit of `other` is set.
    pub const fn contains(self, other: Features) -> bool {
        self.0 & other.0 == other.0
    }
    /// Union.
    pub const fn with(self, other: Features) -> Features {
        Features(self.0 | other.0)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Self::NAMED.iter().filter(|(b, _)| self.contains(*b)).map(|(_, n)| *n).collect();
        f.write_str(&names.join(","))
    }
}

/// The capabilities a backend read from one unit.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct UnitCaps {
    /// What the backend found ("mock unit rev 1", "VT-d 3.0 scalable", ...).
    pub model: RString,
    /// Format of the unit's paging (stage-2 or only-stage) tables.
    pub paging_format: PtFormat,
    /// Page sizes the paging format can map.
    pub page_sizes: PageSizes,
    /// Input (IOVA) address width in bits.
    pub ias_bits: u8,
    /// Output (physical) address width in bits.
    pub oas_bits: u8,
    /// PASID width in bits; 0 when the unit has no PASID support.
    pub pasid_bits: u8,
    /// Feature bits.
    pub features: Features,
    /// Stage-1 formats the unit can nest over its paging format.
    pub nested_formats: RVec<PtFormat>,
}

impl UnitCaps {
    /// Whether these capabilities can exist: known feature bits, address widths in 12..=64,
    /// a PASID width of at most 20, and at least one page size, none below 4 KiB. The first
    /// thing wrong when not.
    pub fn check(&self) -> Result<(), String> {
        let unknown = self.features.0 & !Features::KNOWN.0;
        if unknown != 0 {
            return Err(format!("unknown feature bits {unknown:#x}"));
        }
        for (what, bits) in [("input", self.ias_bits), ("output", self.oas_bits)] {
            if !(12..=64).contains(&bits) {
                return Err(format!("{what} address width {bits} is not in 12..=64"));
            }
        }
        if self.pasid_bits > 20 {
            return Err(format!("PASID width {} is above 20", self.pasid_bits));
        }
        if self.page_sizes.0 == 0 || self.page_sizes.0 & 0xfff != 0 {
            return Err(format!("page sizes {:#x}: none, or some below 4 KiB", self.page_sizes.0));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_capabilities_are_named() {
        let good = UnitCaps {
            model: "t".into(),
            paging_format: PtFormat(0),
            page_sizes: PageSizes::SZ_4K_2M_1G,
            ias_bits: 48,
            oas_bits: 52,
            pasid_bits: 20,
            features: Features::PASID,
            nested_formats: RVec::new(),
        };
        assert_eq!(good.check(), Ok(()));
        let bad = |f: &dyn Fn(&mut UnitCaps)| {
            let mut c = good.clone();
            f(&mut c);
            c.check().unwrap_err()
        };
        assert!(bad(&|c| c.ias_bits = 255).contains("input address width 255"));
        assert!(bad(&|c| c.ias_bits = 11).contains("input"));
        assert!(bad(&|c| c.oas_bits = 0).contains("output address width 0"));
        assert!(bad(&|c| c.oas_bits = 65).contains("output"));
        assert!(bad(&|c| c.pasid_bits = 21).contains("PASID"));
        assert!(bad(&|c| c.page_sizes = PageSizes(1)).contains("below 4 KiB"));
        assert!(bad(&|c| c.page_sizes = PageSizes(0)).contains("none"));
        assert!(bad(&|c| c.features = Features(1 << 60)).contains("unknown feature"));
        // The boundaries themselves are fine.
        for (i, o) in [(12, 12), (64, 64)] {
            let mut c = good.clone();
            (c.ias_bits, c.oas_bits) = (i, o);
            assert_eq!(c.check(), Ok(()));
        }
    }

    #[test]
    fn page_sizes_iterate_and_name() {
        let s = PageSizes::SZ_4K_2M_1G;
        assert_eq!(s.min(), Some(4096));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1 << 12, 1 << 21, 1 << 30]);
        assert_eq!(s.to_string(), "4K,2M,1G");
        assert!(s.contains(1 << 21));
        assert!(!s.contains(3 << 20));
        assert_eq!(PageSizes(0).min(), None);
    }

    #[test]
    fn known_features_are_the_named_ones() {
        let named = Features::NAMED.iter().fold(Features(0), |a, (b, _)| a.with(*b));
        assert_eq!(Features::KNOWN, named);
    }
}
