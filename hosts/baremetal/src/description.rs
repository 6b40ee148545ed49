//! Platform descriptions: the facts that DMAR, IVRS and IORT tables (and PCI config space) give
//! a real host, written in TOML, and the builder that turns them into a [`Machine`] with units
//! and a [`Context`] with the devices bound.
//!
//! ```toml
//! [machine]
//! ram = "512M"                 # RAM size
//! tables = "64M"               # table-page pool at the top of RAM
//! reserved = [{ start = 0xfee00000, last = 0xfeefffff, why = "x86 MSI window" }]
//!
//! [[unit]]                     # one IOMMU instance (a DRHD, an IVHD, an SMMU node)
//! name = "dmar0"
//! plugin = "mock"              # backend plugin, by registry name
//! base = 0xfed00000            # register window
//! segment = 0                  # PCI segment it serves (default 0)
//! model = { without = ["dirty"] }   # hardware-model keys (simulated units only)
//! params = ""                  # backend parameters (TOML text for the plugin)
//!
//! [[bridge]]                   # a root port or switch port, and the buses below it
//! name = "0000:00:1c.0"        # its own PCI address: segment and the bus it sits on
//! secondary = 1
//! subordinate = 3
//! acs = false                  # devices below it can reach each other without the IOMMU
//! parent = "0000:00:1b.0"      # optional; checked against the bus ranges
//!
//! [[device]]
//! name = "nic"
//! address = { rid = "0000:01:00.0" }   # or { sid = 0x100 } for a stream id
//! unit = "dmar0"               # optional when there is exactly one unit
//! acs = false                  # optional: this function has no ACS (multi-function devices)
//! pasid_bits = 20
//! ats = true
//! pri = false
//! dma_bits = 64
//! reserved = [{ start = 0xe0000, last = 0xfffff }]   # RMRR-like
//! ```
//!
//! ## Isolation
//!
//! A device's isolation fact is [`DeviceDesc::no_acs_below`]: devices that name the same
//! boundary must share one IOAS. The builder computes it from the topology:
//!
//! 1. A `no_acs_below` the device gives itself wins (it is taken as written).
//! 2. Otherwise, on the path of bridges from the root bus down to the device, the topmost bridge
//!    with `acs = false` is the boundary (its canonical `SSSS:BB:DD.F` name). `acs = false` on a
//!    bridge means "the devices below it may reach each other without passing the IOMMU"; for a
//!    switch whose downstream ports lack ACS, mark its upstream port.
//! 3. Otherwise, a PCI function that declares `acs = false` itself shares with the other
//!    functions of its device that do the same: the boundary is the device, `SSSS:BB:DD`.
//! 4. Otherwise the device is isolated (`None`).
//!
//! ## Topology rules
//!
//! Bridge names are PCI addresses. Bus ranges of two bridges of one segment are either disjoint
//! or nested, and a bridge whose range lies inside another's sits on a bus of that range. A
//! bridge's parent is the bridge with the smallest range covering the bus it sits on; a given
//! `parent` must be that bridge. When the file has bridges, every PCI device and bridge that is
//! not on bus 0 (the root bus) must sit on a bus some bridge covers. Devices need not be placed
//! on the exact secondary bus of a described bridge: intermediate switch ports may be left out.
//!
//! Every error names the file, the line and the key ([`ConfigError`]).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ioasis::config::{parse_size, ConfigError};
use ioasis::device::RegionDesc;
use ioasis::loader::Registry;
use ioasis::platform::ModelFactory;
use ioasis::{Context, DeviceAddress, DeviceDesc, DeviceId, IovaRange, PhysAddr, RequesterId, UnitId};
use serde::Deserialize;
use toml::Spanned;

use crate::dma::DmaDevice;
use crate::machine::{Machine, MachineConfig};

/// Where a description came from, for error positions.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    /// Its contents.
    pub text: String,
}

impl Source {
    /// An error about `key` at `span` of this file (at the top when `None`).
    pub fn error(&self, span: Option<Range<usize>>, key: &str, msg: impl Into<String>) -> ConfigError {
        ConfigError::at(&self.path, &self.text, span.map(|s| s.start), key, msg)
    }
}

/// A platform file: `[machine]`, `[[unit]]`, `[[bridge]]`, `[[device]]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformDesc {
    /// Sizes and platform-wide reserved regions.
    #[serde(default)]
    pub machine: MachineDesc,
    /// IOMMU units.
    #[serde(default)]
    pub unit: Vec<Spanned<UnitEntry>>,
    /// Root ports and switch ports, with the bus ranges below them.
    #[serde(default)]
    pub bridge: Vec<Spanned<BridgeEntry>>,
    /// Devices behind the units.
    #[serde(default)]
    pub device: Vec<Spanned<DeviceEntry>>,
    #[serde(skip)]
    source: Source,
}

/// `[machine]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineDesc {
    /// RAM size (`"512M"`; default 512 MiB).
    #[serde(default)]
    pub ram: Option<Spanned<String>>,
    /// Table-page pool at the top of RAM (default 64 MiB).
    #[serde(default)]
    pub tables: Option<Spanned<String>>,
    /// Regions no device may map (x86 MSI window, ITS doorbells).
    #[serde(default)]
    pub reserved: Vec<Spanned<ReservedDesc>>,
}

/// RAM when `[machine].ram` is absent.
pub const DEFAULT_RAM: &str = "512M";
/// Table pool when `[machine].tables` is absent.
pub const DEFAULT_TABLES: &str = "64M";

/// A platform-wide reserved region.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservedDesc {
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub last: u64,
    /// Why.
    #[serde(default)]
    pub why: String,
}

/// `[[unit]]`: one IOMMU instance.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitEntry {
    /// Name devices refer to.
    pub name: Spanned<String>,
    /// Backend plugin (a registry name).
    pub plugin: Spanned<String>,
    /// Register window base.
    pub base: Spanned<u64>,
    /// PCI segment the unit serves.
    #[serde(default)]
    pub segment: u16,
    /// Hardware model configuration (model-specific keys).
    #[serde(default)]
    pub model: Option<Spanned<toml::Table>>,
    /// Backend parameters (TOML text handed to the plugin).
    #[serde(default)]
    pub params: String,
}

/// `[[bridge]]`: a PCI-to-PCI bridge (root port, switch upstream or downstream port).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeEntry {
    /// Its own PCI address, `SSSS:BB:DD.F`: the segment and the bus it sits on.
    pub name: Spanned<String>,
    /// First bus below it.
    pub secondary: Spanned<u8>,
    /// Last bus below it.
    pub subordinate: Spanned<u8>,
    /// Whether ACS holds below it. `false`: devices below it may reach each other directly.
    pub acs: bool,
    /// The bridge above it (checked against the bus ranges).
    #[serde(default)]
    pub parent: Option<Spanned<String>>,
}

fn default_dma_bits() -> u8 {
    64
}

/// `[[device]]`: the keys of [`DeviceDesc`], plus `acs` for a PCI function without ACS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// A name for messages and later references.
    pub name: Spanned<String>,
    /// Requester id or stream id.
    pub address: Spanned<DeviceAddress>,
    /// Unit it sits behind; may be left out when there is exactly one unit.
    #[serde(default)]
    pub unit: Option<Spanned<String>>,
    /// Explicit isolation boundary; wins over what the topology gives.
    #[serde(default)]
    pub no_acs_below: Option<String>,
    /// `false`: this PCI function has no ACS and shares with its sibling functions that have
    /// none either.
    #[serde(default)]
    pub acs: Option<Spanned<bool>>,
    /// PASID width (0: no PASID capability; at most 20).
    #[serde(default)]
    pub pasid_bits: Option<Spanned<u8>>,
    /// The device has ATS.
    #[serde(default)]
    pub ats: bool,
    /// The device has PRI.
    #[serde(default)]
    pub pri: bool,
    /// Addressing width of its DMA engine.
    #[serde(default = "default_dma_bits")]
    pub dma_bits: u8,
    /// Regions the device must not have mapped (RMRR-like).
    #[serde(default)]
    pub reserved: Vec<Spanned<RegionDesc>>,
}

/// What a description says once checked: machine sizes, platform reserved regions and the
/// device descriptors with their isolation computed. Nothing is built yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// RAM and table-pool sizes.
    pub config: MachineConfig,
    /// Platform-wide reserved regions and why.
    pub reserved: Vec<(IovaRange, String)>,
    /// Every device, in file order, with `unit` filled in and `no_acs_below` computed.
    pub devices: Vec<DeviceDesc>,
}

/// A unit the builder created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltUnit {
    /// Its id in the context.
    pub id: UnitId,
    /// Its register window base.
    pub base: PhysAddr,
}

/// A device the builder bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltDevice {
    /// Its id in the context.
    pub id: DeviceId,
    /// The descriptor it was bound with (isolation computed).
    pub desc: DeviceDesc,
    /// Register window base of its unit, where its DMA goes.
    pub unit_base: PhysAddr,
}

/// A built platform: the machine, a context with every unit probed and every device bound, and
/// the names of the file mapped to ids.
pub struct Built {
    /// The simulated machine.
    pub machine: Arc<Machine>,
    /// The context on it.
    pub ctx: Context,
    /// Units by name.
    pub units: BTreeMap<String, BuiltUnit>,
    /// Devices by name.
    pub devices: BTreeMap<String, BuiltDevice>,
}

impl std::fmt::Debug for Built {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Built")
            .field("machine", &self.machine)
            .field("units", &self.units)
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

impl Built {
    /// A DMA engine for the device named `name` (untagged, without ATS); `None` for an
    /// unknown name.
    pub fn dma_device(&self, name: &str) -> Option<DmaDevice> {
        let d = self.devices.get(name)?;
        Some(DmaDevice::new(d.desc.address.into(), d.unit_base))
    }
}

impl PlatformDesc {
    /// Parses `text`, the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut desc: Self = ioasis::config::parse(path, text)?;
        desc.source = Source { path: path.to_path_buf(), text: text.to_string() };
        Ok(desc)
    }

    /// Reads and parses a platform file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (mut desc, text): (Self, String) = ioasis::config::load(path)?;
        desc.source = Source { path: path.to_path_buf(), text };
        Ok(desc)
    }

    /// Assembles a description from parts parsed out of `source` (a scenario file does this).
    pub fn from_parts(
        source: Source,
        machine: MachineDesc,
        unit: Vec<Spanned<UnitEntry>>,
        bridge: Vec<Spanned<BridgeEntry>>,
        device: Vec<Spanned<DeviceEntry>>,
    ) -> Self {
        Self { machine, unit, bridge, device, source }
    }

    /// Where the description came from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Checks the description and computes every device's isolation, without building.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        let src = &self.source;
        let size = |v: &Option<Spanned<String>>, default: &str, key: &str| match v {
            None => parse_size(default).map_err(|m| src.error(None, key, m)),
            Some(s) => parse_size(s.get_ref()).map_err(|m| src.error(Some(s.span()), key, m)),
        };
        let ram_bytes = size(&self.machine.ram, DEFAULT_RAM, "machine.ram")?;
        let table_pool_bytes = size(&self.machine.tables, DEFAULT_TABLES, "machine.tables")?;
        let mut reserved = Vec::new();
        for (i, r) in self.machine.reserved.iter().enumerate() {
            let d = r.get_ref();
            let range = IovaRange::inclusive(d.start, d.last).ok_or_else(|| {
                src.error(Some(r.span()), &format!("machine.reserved[{i}].last"), "last is below start")
            })?;
            let why = if d.why.is_empty() { "platform reserved".to_string() } else { d.why.clone() };
            reserved.push((range, why));
        }
        self.check_units()?;
        let topo = Topology::new(src, &self.bridge)?;
        let mut devices = Vec::new();
        for (i, d) in self.device.iter().enumerate() {
            if let Some(j) =
                self.device[..i].iter().position(|p| p.get_ref().name.get_ref() == d.get_ref().name.get_ref())
            {
                let n = &d.get_ref().name;
                return Err(src.error(
                    Some(n.span()),
                    &format!("device[{i}].name"),
                    format!("a device named `{}` is already given (device[{j}])", n.get_ref()),
                ));
            }
            devices.push(self.resolve_device(&topo, i, d.get_ref())?);
        }
        Ok(Resolved { config: MachineConfig { ram_bytes, table_pool_bytes }, reserved, devices })
    }

    fn check_units(&self) -> Result<(), ConfigError> {
        for (i, u) in self.unit.iter().enumerate() {
            let n = &u.get_ref().name;
            if let Some(j) = self.unit[..i].iter().position(|p| p.get_ref().name.get_ref() == n.get_ref()) {
                return Err(self.source.error(
                    Some(n.span()),
                    &format!("unit[{i}].name"),
                    format!("a unit named `{}` is already given (unit[{j}])", n.get_ref()),
                ));
            }
        }
        Ok(())
    }

    fn resolve_device(&self, topo: &Topology, i: usize, d: &DeviceEntry) -> Result<DeviceDesc, ConfigError> {
        let src = &self.source;
        let key = |k: &str| format!("device[{i}].{k}");
        let (entry, span) = match &d.unit {
            Some(u) => {
                let entry = self.unit.iter().find(|e| e.get_ref().name.get_ref() == u.get_ref()).ok_or_else(|| {
                    src.error(Some(u.span()), &key("unit"), format!("no unit named `{}`", u.get_ref()))
                })?;
                (entry.get_ref(), u.span())
            }
            None => match self.unit.as_slice() {
                [only] => (only.get_ref(), d.name.span()),
                _ => {
                    return Err(src.error(
                        Some(d.name.span()),
                        &key("unit"),
                        format!("missing (the file has {} units; name one)", self.unit.len()),
                    ))
                }
            },
        };
        let unit = entry.name.get_ref().clone();
        if let DeviceAddress::Rid(rid) = d.address.get_ref() {
            if rid.segment != entry.segment {
                return Err(src.error(
                    Some(span),
                    &key("unit"),
                    format!("unit `{unit}` serves segment {:04x}, the device is in {:04x}", entry.segment, rid.segment),
                ));
            }
        }
        let pasid_bits = d.pasid_bits.as_ref().map_or(0, |p| *p.get_ref());
        if let Some(p) = d.pasid_bits.as_ref().filter(|p| *p.get_ref() > 20) {
            return Err(src.error(Some(p.span()), &key("pasid_bits"), format!("PASID width {} > 20", p.get_ref())));
        }
        let mut reserved = Vec::new();
        for (j, r) in d.reserved.iter().enumerate() {
            if r.get_ref().range().is_none() {
                return Err(src.error(Some(r.span()), &key(&format!("reserved[{j}].last")), "last is below start"));
            }
            reserved.push(*r.get_ref());
        }
        let computed = match *d.address.get_ref() {
            DeviceAddress::Sid(_) => {
                if let Some(acs) = &d.acs {
                    return Err(src.error(
                        Some(acs.span()),
                        &key("acs"),
                        "`acs` applies to PCI functions; a stream-id device gives `no_acs_below`",
                    ));
                }
                None
            }
            DeviceAddress::Rid(rid) => {
                let at = |msg: String| src.error(Some(d.address.span()), &key("address"), msg);
                if let Some(b) = topo.bridges.iter().find(|b| b.rid == rid) {
                    return Err(at(format!("{rid} is a bridge (bridge[{}]), not a device", b.index)));
                }
                let path = topo.path_to_bus(rid.segment, rid.bus).map_err(at)?;
                let function_acs = d.acs.as_ref().is_none_or(|a| *a.get_ref());
                match path.iter().find(|b| !b.acs) {
                    Some(b) => Some(b.rid.to_string()),
                    None if !function_acs => {
                        Some(format!("{:04x}:{:02x}:{:02x}", rid.segment, rid.bus, rid.devfn >> 3))
                    }
                    None => None,
                }
            }
        };
        let no_acs_below = d.no_acs_below.clone().or(computed);
        Ok(DeviceDesc {
            name: d.name.get_ref().clone(),
            address: *d.address.get_ref(),
            unit,
            no_acs_below,
            pasid_bits,
            ats: d.ats,
            pri: d.pri,
            dma_bits: d.dma_bits,
            reserved,
        })
    }
}

/// One checked bridge.
#[derive(Debug)]
struct Bridge {
    index: usize,
    rid: RequesterId,
    secondary: u8,
    subordinate: u8,
    acs: bool,
    parent: Option<usize>,
}

impl Bridge {
    fn covers(&self, segment: u16, bus: u8) -> bool {
        self.rid.segment == segment && (self.secondary..=self.subordinate).contains(&bus)
    }
}

/// The checked bridge tree.
#[derive(Debug)]
struct Topology {
    bridges: Vec<Bridge>,
}

impl Topology {
    fn new(src: &Source, entries: &[Spanned<BridgeEntry>]) -> Result<Self, ConfigError> {
        let mut bridges: Vec<Bridge> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let b = e.get_ref();
            let key = |k: &str| format!("bridge[{i}].{k}");
            let rid: RequesterId =
                b.name.get_ref().parse().map_err(|m: String| src.error(Some(b.name.span()), &key("name"), m))?;
            if let Some(other) = bridges.iter().find(|o| o.rid == rid) {
                return Err(src.error(
                    Some(b.name.span()),
                    &key("name"),
                    format!("bridge {rid} is already given (bridge[{}])", other.index),
                ));
            }
            let (sec, sub) = (*b.secondary.get_ref(), *b.subordinate.get_ref());
            if sec <= rid.bus {
                return Err(src.error(
                    Some(b.secondary.span()),
                    &key("secondary"),
                    format!("secondary bus {sec:#04x} is not above bus {:#04x}, where the bridge sits", rid.bus),
                ));
            }
            if sub < sec {
                return Err(src.error(
                    Some(b.subordinate.span()),
                    &key("subordinate"),
                    format!("subordinate bus {sub:#04x} is below secondary bus {sec:#04x}"),
                ));
            }
            for o in bridges.iter().filter(|o| o.rid.segment == rid.segment) {
                let disjoint = sub < o.secondary || o.subordinate < sec;
                let inside_other = o.secondary <= sec && sub <= o.subordinate && o.covers(rid.segment, rid.bus);
                let other_inside = sec <= o.secondary && o.subordinate <= sub && (sec..=sub).contains(&o.rid.bus);
                if !(disjoint || inside_other || other_inside) {
                    return Err(src.error(
                        Some(b.secondary.span()),
                        &key("secondary"),
                        format!(
                            "buses {sec:#04x}..={sub:#04x} overlap those of bridge {} (bridge[{}], \
                             {:#04x}..={:#04x}) without one bridge being below the other",
                            o.rid, o.index, o.secondary, o.subordinate
                        ),
                    ));
                }
            }
            bridges.push(Bridge { index: i, rid, secondary: sec, subordinate: sub, acs: b.acs, parent: None });
        }
        // Every pair is disjoint or properly nested, so the smallest covering range is the parent.
        for i in 0..bridges.len() {
            let (seg, bus) = (bridges[i].rid.segment, bridges[i].rid.bus);
            let parent = Self::smallest_cover(&bridges, seg, bus);
            let entry = entries[i].get_ref();
            let key = |k: &str| format!("bridge[{i}].{k}");
            if parent.is_none() && bus != 0 {
                return Err(src.error(
                    Some(entry.name.span()),
                    &key("name"),
                    format!("bus {bus:#04x} is below no bridge (only bus 0 is a root bus)"),
                ));
            }
            if let Some(p) = parent.map(|p| &bridges[p]) {
                let b = &bridges[i];
                if b.secondary < p.secondary || p.subordinate < b.subordinate {
                    return Err(src.error(
                        Some(entry.subordinate.span()),
                        &key("subordinate"),
                        format!(
                            "buses {:#04x}..={:#04x} go past those of bridge {} above it ({:#04x}..={:#04x})",
                            b.secondary, b.subordinate, p.rid, p.secondary, p.subordinate
                        ),
                    ));
                }
            }
            if let Some(p) = &entry.parent {
                let given: Option<usize> =
                    p.get_ref().parse::<RequesterId>().ok().and_then(|r| bridges.iter().position(|b| b.rid == r));
                let given = given.ok_or_else(|| {
                    src.error(Some(p.span()), &key("parent"), format!("no bridge named `{}`", p.get_ref()))
                })?;
                if Some(given) != parent {
                    let actual = parent.map_or("the root bus".to_string(), |x| format!("bridge {}", bridges[x].rid));
                    return Err(src.error(
                        Some(p.span()),
                        &key("parent"),
                        format!("bus {bus:#04x}, where the bridge sits, is below {actual}, not `{}`", p.get_ref()),
                    ));
                }
            }
            bridges[i].parent = parent;
        }
        Ok(Self { bridges })
    }

    fn smallest_cover(bridges: &[Bridge], segment: u16, bus: u8) -> Option<usize> {
        bridges
            .iter()
            .enumerate()
            .filter(|(_, b)| b.covers(segment, bus))
            .min_by_key(|(_, b)| b.subordinate - b.secondary)
            .map(|(i, _)| i)
    }

    /// The bridges from the root bus down to `bus`, topmost first.
    fn path_to_bus(&self, segment: u16, bus: u8) -> Result<Vec<&Bridge>, String> {
        let mut path = Vec::new();
        let mut at = Self::smallest_cover(&self.bridges, segment, bus);
        if at.is_none() && bus != 0 && !self.bridges.is_empty() {
            return Err(format!("bus {bus:#04x} is below no bridge (only bus 0 is a root bus)"));
        }
        while let Some(i) = at {
            path.push(&self.bridges[i]);
            at = self.bridges[i].parent;
        }
        path.reverse();
        Ok(path)
    }
}

/// Builds what `desc` describes: the machine, each unit's model (from the factory of its
/// plugin) in its window, each unit probed by its plugin, platform reserved regions, and every
/// device bound with its isolation computed.
pub fn build(desc: &PlatformDesc, registry: &Registry, factories: &[&dyn ModelFactory]) -> Result<Built, ConfigError> {
    let src = &desc.source;
    let resolved = desc.resolve()?;
    let machine = Arc::new(Machine::new(resolved.config).map_err(|e| {
        let span = desc.machine.ram.as_ref().map(|r| r.span());
        src.error(span, "machine", e.to_string())
    })?);
    let ctx = Context::new(machine.clone());
    for (range, why) in &resolved.reserved {
        ctx.add_platform_reserved(*range, why);
    }
    let mut units = BTreeMap::new();
    for (i, u) in desc.unit.iter().enumerate() {
        let span = u.span();
        let u = u.get_ref();
        let key = |k: &str| format!("unit[{i}].{k}");
        let plugin = registry.get(u.plugin.get_ref()).ok_or_else(|| {
            src.error(Some(u.plugin.span()), &key("plugin"), format!("no plugin named `{}`", u.plugin.get_ref()))
        })?;
        let factory = factories.iter().find(|f| f.plugin() == plugin.info.name).ok_or_else(|| {
            src.error(
                Some(u.plugin.span()),
                &key("plugin"),
                format!("no hardware model for plugin `{}`", u.plugin.get_ref()),
            )
        })?;
        let empty = toml::Table::new();
        let (model_cfg, model_span) = match &u.model {
            Some(m) => (m.get_ref(), m.span()),
            None => (&empty, span.clone()),
        };
        let model = factory.build(model_cfg).map_err(|m| src.error(Some(model_span), &key("model"), m))?;
        let base = PhysAddr(*u.base.get_ref());
        machine
            .add_unit(base, factory.window(), model)
            .map_err(|e| src.error(Some(u.base.span()), &key("base"), e.to_string()))?;
        let id = ctx
            .add_unit(&plugin, u.name.get_ref(), base, u.segment, &u.params)
            .map_err(|e| src.error(Some(span.clone()), &format!("unit[{i}]"), e.to_string()))?;
        tracing::debug!(unit = %u.name.get_ref(), %base, "unit built");
        units.insert(u.name.get_ref().clone(), BuiltUnit { id, base });
    }
    let mut devices = BTreeMap::new();
    for (i, (entry, d)) in desc.device.iter().zip(resolved.devices).enumerate() {
        let unit_base = units.get(&d.unit).map(|u: &BuiltUnit| u.base).ok_or_else(|| {
            src.error(Some(entry.span()), &format!("device[{i}].unit"), format!("no unit named `{}`", d.unit))
        })?;
        let id = ctx
            .bind_device(d.clone())
            .map_err(|e| src.error(Some(entry.span()), &format!("device[{i}]"), e.to_string()))?;
        tracing::debug!(device = %d.name, boundary = ?d.no_acs_below, "device bound");
        devices.insert(d.name.clone(), BuiltDevice { id, desc: d, unit_base });
    }
    Ok(Built { machine, ctx, units, devices })
}
