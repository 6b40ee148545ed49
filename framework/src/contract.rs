//! The answer to an intent: a [`Contract`], or a [`Refusal`] listing every unmet item.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::RangeInclusive;

use crate::abi::ItemVerdict;
use crate::addr::{Iova, IovaRange};
use crate::caps::{PageSizes, UnitCaps};
use crate::device::DeviceDesc;
use crate::format::PtFormat;
use crate::intent::{Intent, IntentCode, IntentItem};
use crate::object::{DeviceId, UnitId};

/// What kind of translation the contract sets up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContractKind {
    /// A paging HWPT kept in step with an IOAS.
    Paging,
    /// A user stage-1 nested over a paging HWPT.
    Nested,
    /// No hardware table: the device's driver accesses the IOAS through the framework.
    Software,
    /// Untranslated DMA.
    Identity,
}

/// One granted item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The item.
    pub item: IntentItem,
    /// Detail from the backend (may be empty).
    pub note: String,
}

/// One unmet item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unmet {
    /// The item, or `None` for an item the framework could not even name (an unknown code).
    pub item: Option<IntentItem>,
    /// Why.
    pub reason: String,
}

/// The devices a device must share one IOAS with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedIoas {
    /// The bridge below which ACS is missing.
    pub boundary: String,
    /// The other devices bound now that sit below it.
    pub peers: Vec<(DeviceId, String)>,
}

/// What the framework and the backend grant a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contract {
    /// The device.
    pub device: DeviceId,
    /// Its unit.
    pub unit: UnitId,
    /// The backend plugin.
    pub plugin: String,
    /// Kind of translation.
    pub kind: ContractKind,
    /// Paging format of the unit.
    pub format: PtFormat,
    /// The stage-1 format, for nested contracts.
    pub stage1: Option<PtFormat>,
    /// Page sizes mappings use.
    pub page_sizes: PageSizes,
    /// The IOVA range the device can reach through the unit.
    pub aperture: IovaRange,
    /// PASIDs the device may use, when a PASID item was granted.
    pub pasids: Option<RangeInclusive<u32>>,
    /// Every item, granted.
    pub grants: Vec<Grant>,
    /// "These devices must share one IOAS", when the device cannot be isolated.
    pub shared_ioas: Option<SharedIoas>,
}

impl Contract {
    /// True when `pred` matches a granted item.
    pub fn grants(&self, pred: impl Fn(&IntentItem) -> bool) -> bool {
        self.grants.iter().any(|g| pred(&g.item))
    }
}

/// Why an intent was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The device.
    pub device: DeviceId,
    /// The device's name.
    pub name: String,
    /// Every unmet item with its reason.
    pub unmet: Vec<Unmet>,
    /// The items that would have been granted.
    pub granted: Vec<Grant>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "intent of device {} ({}) refused:", self.device, self.name)?;
        for u in &self.unmet {
            match &u.item {
                Some(i) => write!(f, "\n  - {i}: {}", u.reason)?,
                None => write!(f, "\n  - {}", u.reason)?,
            }
        }
        Ok(())
    }
}

impl fmt::Display for Contract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "contract for device {} on unit {} ({}):", self.device, self.unit, self.plugin)?;
        writeln!(f, "  kind:        {:?}", self.kind)?;
        writeln!(f, "  format:      {}", self.format)?;
        if let Some(s1) = self.stage1 {
            writeln!(f, "  stage-1:     {s1}")?;
        }
        writeln!(f, "  page sizes:  {}", self.page_sizes)?;
        writeln!(f, "  aperture:    {}", self.aperture)?;
        match &self.pasids {
            Some(r) => writeln!(f, "  PASIDs:      {:#x}..={:#x}", r.start(), r.end())?,
            None => writeln!(f, "  PASIDs:      none")?,
        }
        writeln!(f, "  granted:")?;
        for g in &self.grants {
            if g.note.is_empty() {
                writeln!(f, "    - {}", g.item)?;
            } else {
                writeln!(f, "    - {} ({})", g.item, g.note)?;
            }
        }
        if let Some(s) = &self.shared_ioas {
            let peers: Vec<String> = s.peers.iter().map(|(id, n)| format!("{id} {n}")).collect();
            writeln!(
                f,
                "  constraint:  cannot be isolated (no ACS below {}): must share one IOAS with [{}]",
                s.boundary,
                peers.join(", ")
            )?;
        }
        Ok(())
    }
}

/// The device-side reason an item cannot be granted, whatever the unit can do.
fn device_reason(dev: &DeviceDesc, item: &IntentItem) -> Option<String> {
    match *item {
        IntentItem::PasidDma { width } if width == 0 || width > 20 => {
            Some(format!("PASID width {width} is not in 1..=20"))
        }
        IntentItem::PasidDma { width } if dev.pasid_bits < width => {
            Some(format!("device supports {}-bit PASIDs, {width} asked", dev.pasid_bits))
        }
        IntentItem::PasidIoas | IntentItem::Enqcmd if dev.pasid_bits == 0 => {
            Some("device has no PASID capability".into())
        }
        IntentItem::PageFaults if !dev.pri => Some("device has no PRI capability".into()),
        IntentItem::Ats if !dev.ats => Some("device has no ATS capability".into()),
        _ => None,
    }
}

/// Items that cannot go together, whatever the unit can do.
fn conflicts(intent: &Intent) -> Vec<Unmet> {
    let mut out = Vec::new();
    let identity = intent.wants(|i| *i == IntentItem::Identity);
    for item in &intent.items {
        let clash = match item {
            IntentItem::DirtyTracking | IntentItem::PageFaults | IntentItem::NestedStage1 { .. } if identity => {
                Some("identity DMA has no page table to track, fault on or nest over")
            }
            _ => None,
        };
        if let Some(r) = clash {
            out.push(Unmet { item: Some(*item), reason: r.into() });
        }
    }
    let formats: BTreeSet<PtFormat> = intent
        .items
        .iter()
        .filter_map(|i| match i {
            IntentItem::NestedStage1 { format } => Some(*format),
            _ => None,
        })
        .collect();
    if formats.len() > 1 {
        out.push(Unmet { item: None, reason: "more than one nested stage-1 format asked".into() });
    }
    out
}

/// Inputs of a negotiation, gathered by the context.
pub(crate) struct Negotiation<'a> {
    pub device: DeviceId,
    pub desc: &'a DeviceDesc,
    pub unit: UnitId,
    pub plugin: &'a str,
    pub caps: &'a UnitCaps,
    pub shared: Option<SharedIoas>,
}

impl Negotiation<'_> {
    /// The items that go to the backend (the software table is the framework's own).
    pub fn backend_items(intent: &Intent) -> Vec<IntentCode> {
        intent.items.iter().filter(|i| **i != IntentItem::SoftwareTable).map(|i| IntentCode::from(*i)).collect()
    }

    /// Combines device facts, conflicts and the backend's verdicts.
    pub fn conclude(self, intent: &Intent, verdicts: &[ItemVerdict]) -> Result<Contract, Refusal> {
        let mut unmet = conflicts(intent);
        let mut grants = Vec::new();
        if intent.items.is_empty() {
            unmet.push(Unmet { item: None, reason: "the intent lists no DMA at all".into() });
        }
        for item in &intent.items {
            let code = IntentCode::from(*item);
            let dev_reason = device_reason(self.desc, item);
            let verdict = if *item == IntentItem::SoftwareTable {
                Some(Ok(String::new()))
            } else {
                match verdicts.iter().find(|v| v.item == code) {
                    Some(v) if v.granted => Some(Ok(v.reason.to_string())),
                    Some(v) => Some(Err(v.reason.to_string())),
                    None => None,
                }
            };
            match (dev_reason, verdict) {
                (Some(r), _) => unmet.push(Unmet { item: Some(*item), reason: r }),
                (None, None) => unmet.push(Unmet {
                    item: Some(*item),
                    reason: format!("backend {} gave no answer for it", self.plugin),
                }),
                (None, Some(Err(r))) => unmet.push(Unmet { item: Some(*item), reason: r }),
                (None, Some(Ok(note))) => grants.push(Grant { item: *item, note }),
            }
        }
        if !unmet.is_empty() {
            return Err(Refusal { device: self.device, name: self.desc.name.clone(), unmet, granted: grants });
        }
        let stage1 = intent.items.iter().find_map(|i| match i {
            IntentItem::NestedStage1 { format } => Some(*format),
            _ => None,
        });
        let hw = |i: &IntentItem| !matches!(i, IntentItem::SoftwareTable);
        let kind = if stage1.is_some() {
            ContractKind::Nested
        } else if intent.wants(|i| *i == IntentItem::Identity) {
            ContractKind::Identity
        } else if !intent.wants(hw) {
            ContractKind::Software
        } else {
            ContractKind::Paging
        };
        let width = intent
            .items
            .iter()
            .filter_map(|i| match i {
                IntentItem::PasidDma { width } => Some(*width),
                IntentItem::PasidIoas | IntentItem::Enqcmd => Some(self.desc.pasid_bits),
                _ => None,
            })
            .max()
            .map(|w| w.min(self.caps.pasid_bits).min(self.desc.pasid_bits));
        // PASID 0 is kept for untagged DMA (VT-d RID_PASID, SMMU SSID 0).
        let pasids = width.filter(|w| *w > 0).map(|w| 1..=((1u32 << w) - 1));
        let bits = self.caps.ias_bits.min(self.desc.dma_bits).min(64);
        let last = if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 };
        Ok(Contract {
            device: self.device,
            unit: self.unit,
            plugin: self.plugin.to_string(),
            kind,
            format: self.caps.paging_format,
            stage1,
            page_sizes: self.caps.page_sizes,
            aperture: IovaRange { start: Iova(0), last: Iova(last) },
            pasids,
            grants,
            shared_ioas: self.shared,
        })
    }
}
