//! Devices as a host adapter describes them.

use serde::{Deserialize, Serialize};

use crate::abi::DeviceInfo;
use crate::addr::{DeviceRef, IovaRange, RequesterId};

/// How a device is named on its bus, in descriptors and TOML.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceAddress {
    /// A PCI requester id, written `SSSS:BB:DD.F`.
    Rid(#[serde(with = "rid_str")] RequesterId),
    /// An Arm stream id.
    Sid(u32),
}

mod rid_str {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::addr::RequesterId;

    pub fn serialize<S: Serializer>(r: &RequesterId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&r.to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RequesterId, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl From<DeviceAddress> for DeviceRef {
    fn from(a: DeviceAddress) -> Self {
        match a {
            DeviceAddress::Rid(r) => DeviceRef::Rid(r),
            DeviceAddress::Sid(s) => DeviceRef::Sid(s),
        }
    }
}

fn default_dma_bits() -> u8 {
    64
}

/// A reserved IOVA region in TOML: `{ start = 0xfee00000, last = 0xfeefffff }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionDesc {
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub last: u64,
}

impl RegionDesc {
    /// As a range, if well formed.
    pub fn range(&self) -> Option<IovaRange> {
        IovaRange::inclusive(self.start, self.last)
    }
}

/// What a host adapter knows about a device when it binds it: the facts DMAR/IVRS/IORT tables
/// and PCI config space give.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDesc {
    /// A name for messages.
    pub name: String,
    /// Requester id or stream id.
    pub address: DeviceAddress,
    /// Name of the unit the device sits behind.
    #[serde(default)]
    pub unit: String,
    /// When the device cannot be isolated from its peers: the name of the topmost bridge (or
    /// multi-function device) below which ACS is missing. Devices that give the same name here
    /// must share one IOAS. `None`: ACS holds on the whole path.
    #[serde(default)]
    pub no_acs_below: Option<String>,
    /// PASID width the device supports (0: no PASID capability).
    #[serde(default)]
    pub pasid_bits: u8,
    /// The device has ATS.
    #[serde(default)]
    pub ats: bool,
    /// The device has PRI.
    #[serde(default)]
    pub pri: bool,
    /// Addressing width of its DMA engine.
    #[serde(default = "default_dma_bits")]
    pub dma_bits: u8,
    /// Regions the device must not have mapped (RMRR-like, or its own MSI doorbell).
    #[serde(default)]
    pub reserved: Vec<RegionDesc>,
}

impl DeviceDesc {
    /// A plain PCI device behind `unit`, isolated, without PASID/ATS/PRI.
    pub fn pci(name: &str, rid: RequesterId, unit: &str) -> Self {
        Self {
            name: name.to_string(),
            address: DeviceAddress::Rid(rid),
            unit: unit.to_string(),
            no_acs_below: None,
            pasid_bits: 0,
            ats: false,
            pri: false,
            dma_bits: 64,
            reserved: Vec::new(),
        }
    }

    /// The ABI view the backend gets.
    pub fn info(&self) -> DeviceInfo {
        DeviceInfo {
            dev: self.address.into(),
            pasid_bits: self.pasid_bits,
            ats: self.ats,
            pri: self.pri,
            dma_bits: self.dma_bits,
        }
    }
}
