//! Scenarios: a machine description (units, devices), then steps with expected results, run
//! on the simulated machine. What `ioasis run SCENARIO.toml` executes.
//!
//! ```toml
//! [machine]
//! ram = "512M"
//! tables = "64M"
//! reserved = [{ start = 0xfee00000, last = 0xfeefffff, why = "x86 MSI window" }]
//!
//! [[unit]]
//! name = "u0"
//! plugin = "mock"
//! base = 0xfed00000
//! model = { without = ["dirty"] }
//!
//! [[device]]
//! name = "nic"
//! address = { rid = "0000:00:01.0" }
//! unit = "u0"
//!
//! [[step]]
//! do = "negotiate"
//! device = "nic"
//! intent = [{ kind = "untagged-dma" }]
//!
//! [[step]]
//! do = "map"
//! ioas = "A"
//! iova = 0x100000
//! pa = 0x400000
//! len = 0x2000
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ioasis::config::{parse_size, ConfigError};
use ioasis::loader::Registry;
use ioasis::platform::{ModelFactory, Platform};
use ioasis::{
    Context, DeviceDesc, DeviceId, HwptId, HwptSpec, IntentItem, IoasId, Iova, IovaRange, Pasid, PhysAddr, Prot,
    PtFormat, Target, UnmapMode,
};
use serde::Deserialize;
use toml::Spanned;

use crate::machine::{DmaError, Machine, MachineConfig};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Sizes and platform-wide reserved regions.
    #[serde(default)]
    pub machine: MachineDesc,
    /// IOMMU units.
    #[serde(default)]
    pub unit: Vec<Spanned<UnitEntry>>,
    /// Devices behind them.
    #[serde(default)]
    pub device: Vec<Spanned<DeviceDesc>>,
    /// What to do, in order.
    #[serde(default)]
    pub step: Vec<Spanned<Step>>,
}

/// `[machine]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineDesc {
    /// RAM size (`"512M"`).
    #[serde(default = "default_ram")]
    pub ram: String,
    /// Table-page pool at the top of RAM.
    #[serde(default = "default_tables")]
    pub tables: String,
    /// Regions no device may map (x86 MSI window, ITS doorbells).
    #[serde(default)]
    pub reserved: Vec<ReservedDesc>,
}

impl Default for MachineDesc {
    fn default() -> Self {
        Self { ram: default_ram(), tables: default_tables(), reserved: Vec::new() }
    }
}

fn default_ram() -> String {
    "512M".into()
}
fn default_tables() -> String {
    "64M".into()
}

/// A platform-wide reserved region.
#[derive(Debug, Deserialize)]
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

/// `[[unit]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitEntry {
    /// Name devices refer to.
    pub name: String,
    /// Backend plugin (a registry name).
    pub plugin: String,
    /// Register window base.
    pub base: u64,
    /// PCI segment.
    #[serde(default)]
    pub segment: u16,
    /// Hardware model configuration (model-specific keys).
    #[serde(default)]
    pub model: toml::Table,
    /// Backend parameters (TOML text handed to the plugin).
    #[serde(default)]
    pub params: String,
}

/// `[[step]]`: one operation and what it must give.
#[derive(Debug, Deserialize)]
#[serde(tag = "do", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Step {
    /// Negotiate a device's intent. `expect`: `granted` (default), `refused`, `refused:TEXT`.
    Negotiate {
        /// Device name.
        device: String,
        /// The items.
        intent: Vec<IntentItem>,
        /// Expected outcome.
        expect: Option<String>,
    },
    /// Make an IOAS named `name`.
    AllocIoas {
        /// Name for later steps.
        name: String,
    },
    /// Make a HWPT.
    AllocHwpt {
        /// Name for later steps.
        name: String,
        /// Unit name.
        unit: String,
        /// `paging`, `nested`, `identity`, `blocking`.
        kind: String,
        /// IOAS (paging).
        ioas: Option<String>,
        /// Allocate for dirty tracking (paging).
        #[serde(default)]
        dirty: bool,
        /// Parent HWPT (nested).
        parent: Option<String>,
        /// Stage-1 format (nested).
        format: Option<PtFormat>,
        /// Stage-1 root (nested).
        root: Option<u64>,
        /// `ok` (default), `error`, `error:TEXT`.
        expect: Option<String>,
    },
    /// Attach (or replace, or detach) a device or one PASID of it.
    Attach {
        /// Device name.
        device: String,
        /// PASID, for a PASID attach.
        pasid: Option<u32>,
        /// Target IOAS name.
        ioas: Option<String>,
        /// Target HWPT name.
        hwpt: Option<String>,
        /// Replace an existing attachment.
        #[serde(default)]
        replace: bool,
        /// Expected outcome.
        expect: Option<String>,
    },
    /// Detach.
    Detach {
        /// Device name.
        device: String,
        /// PASID.
        pasid: Option<u32>,
        /// Expected outcome.
        expect: Option<String>,
    },
    /// Map `[pa, pa+len)` at `iova` (or an allocated IOVA).
    Map {
        /// IOAS name.
        ioas: String,
        /// IOVA; allocated when absent.
        iova: Option<u64>,
        /// Physical address.
        pa: u64,
        /// Length.
        len: u64,
        /// `r`, `w`, `rw` (default `rw`).
        prot: Option<Prot>,
        /// Expected outcome.
        expect: Option<String>,
    },
    /// Unmap.
    Unmap {
        /// IOAS name.
        ioas: String,
        /// IOVA.
        iova: u64,
        /// Length.
        len: u64,
        /// `exact` (default) or `cut`.
        mode: Option<String>,
        /// Bytes that must be unmapped.
        bytes: Option<u64>,
        /// Expected outcome.
        expect: Option<String>,
    },
    /// A device writes `data` at `iova`. `expect`: `ok`, `fault`, `fault:REASON`.
    DmaWrite {
        /// Device name.
        device: String,
        /// PASID of the request.
        pasid: Option<u32>,
        /// Address.
        iova: u64,
        /// Bytes (UTF-8 text).
        data: String,
        /// Expected outcome.
        expect: Option<String>,
    },
    /// A device reads `len` bytes at `iova`; `data` is what it must read.
    DmaRead {
        /// Device name.
        device: String,
        /// PASID of the request.
        pasid: Option<u32>,
        /// Address.
        iova: u64,
        /// Expected bytes (UTF-8 text); its length is the read's length.
        data: Option<String>,
        /// Length when `data` is absent.
        len: Option<u64>,
        /// Expected outcome.
        expect: Option<String>,
    },
    /// RAM at `pa` must hold `data`.
    CheckRam {
        /// Address.
        pa: u64,
        /// Expected bytes (UTF-8 text).
        data: String,
    },
    /// Turn dirty tracking on or off.
    DirtyTracking {
        /// HWPT name (or the HWPT a device's untagged DMA uses, `device:NAME`).
        hwpt: String,
        /// On or off.
        enable: bool,
    },
    /// Read and clear dirty bits; `pages` are the indices that must be set.
    ReadDirty {
        /// HWPT name or `device:NAME`.
        hwpt: String,
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
        /// Granule (default 4096).
        page: Option<u64>,
        /// Pages that must be reported dirty, and no others.
        pages: Vec<u64>,
    },
    /// Tear everything down; `table_pages` must be left (default 0).
    Teardown {
        /// Table pages expected afterwards.
        table_pages: Option<u64>,
    },
}

/// One step's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepResult {
    /// 1-based step number.
    pub index: usize,
    /// Line of the step in the file.
    pub line: usize,
    /// What it did.
    pub what: String,
    /// Whether it gave what was expected.
    pub passed: bool,
    /// What happened.
    pub detail: String,
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Report {
    /// Every step, in order.
    pub steps: Vec<StepResult>,
}

impl Report {
    /// True when every step gave what was expected.
    pub fn passed(&self) -> bool {
        self.steps.iter().all(|s| s.passed)
    }
}

/// A scenario that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file is malformed or refers to things that do not exist.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

struct Names {
    devices: HashMap<String, (DeviceId, DeviceDesc)>,
    ioases: HashMap<String, IoasId>,
    hwpts: HashMap<String, HwptId>,
    units: HashMap<String, PhysAddr>,
}

/// Loads and runs a scenario file with the plugins of `registry` and the given model factories.
pub fn run_file(path: &Path, registry: &Registry, factories: &[&dyn ModelFactory]) -> Result<Report, ScenarioError> {
    let (scenario, text): (Scenario, String) = ioasis::config::load(path)?;
    run(path, &text, &scenario, registry, factories)
}

fn err(path: &Path, text: &str, span: std::ops::Range<usize>, key: &str, msg: impl Into<String>) -> ScenarioError {
    ScenarioError::Config(ConfigError::at(path, text, Some(span.start), key, msg))
}

/// Runs a parsed scenario (`text` is the file's contents, for error positions).
pub fn run(
    path: &Path,
    text: &str,
    s: &Scenario,
    registry: &Registry,
    factories: &[&dyn ModelFactory],
) -> Result<Report, ScenarioError> {
    let top = |key: &str, msg: String| ScenarioError::Config(ConfigError::at(path, text, None, key, msg));
    let ram = parse_size(&s.machine.ram).map_err(|m| top("machine.ram", m))?;
    let tables = parse_size(&s.machine.tables).map_err(|m| top("machine.tables", m))?;
    let machine = Arc::new(
        Machine::new(MachineConfig { ram_bytes: ram, table_pool_bytes: tables })
            .map_err(|e| top("machine", e.to_string()))?,
    );
    let ctx = Context::new(machine.clone());
    for (i, r) in s.machine.reserved.iter().enumerate() {
        let range = IovaRange::inclusive(r.start, r.last)
            .ok_or_else(|| top(&format!("machine.reserved[{i}]"), "last is below start".into()))?;
        ctx.add_platform_reserved(range, if r.why.is_empty() { "platform reserved" } else { &r.why });
    }
    let mut names =
        Names { devices: HashMap::new(), ioases: HashMap::new(), hwpts: HashMap::new(), units: HashMap::new() };
    for (i, u) in s.unit.iter().enumerate() {
        let span = u.span();
        let u = u.get_ref();
        let key = format!("unit[{i}]");
        let plugin = registry.get(&u.plugin).ok_or_else(|| {
            err(path, text, span.clone(), &format!("{key}.plugin"), format!("no plugin named `{}`", u.plugin))
        })?;
        let factory = factories.iter().find(|f| f.plugin() == plugin.info.name).ok_or_else(|| {
            err(path, text, span.clone(), &key, format!("no hardware model for plugin `{}`", u.plugin))
        })?;
        let model = factory.build(&u.model).map_err(|m| err(path, text, span.clone(), &format!("{key}.model"), m))?;
        machine
            .add_unit(PhysAddr(u.base), factory.window(), model)
            .map_err(|e| err(path, text, span.clone(), &format!("{key}.base"), e.to_string()))?;
        ctx.add_unit(&plugin, &u.name, PhysAddr(u.base), u.segment, &u.params)
            .map_err(|e| err(path, text, span.clone(), &key, e.to_string()))?;
        names.units.insert(u.name.clone(), PhysAddr(u.base));
    }
    for (i, d) in s.device.iter().enumerate() {
        let span = d.span();
        let id = ctx
            .bind_device(d.get_ref().clone())
            .map_err(|e| err(path, text, span, &format!("device[{i}]"), e.to_string()))?;
        names.devices.insert(d.get_ref().name.clone(), (id, d.get_ref().clone()));
    }
    let mut report = Report::default();
    for (i, st) in s.step.iter().enumerate() {
        let (line, _) = ioasis::config::line_col(text, st.span().start);
        let (what, outcome) = step(&ctx, &machine, &mut names, st.get_ref());
        let (passed, detail) = match outcome {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        report.steps.push(StepResult { index: i + 1, line, what, passed, detail });
    }
    Ok(report)
}

/// Compares an outcome with an `expect` string: `ok`, `error`, `error:TEXT` (and the same
/// with other words for negotiate and DMA).
fn judge(
    expect: &Option<String>,
    ok_word: &str,
    err_word: &str,
    got: Result<String, String>,
) -> Result<String, String> {
    let want = expect.as_deref().unwrap_or(ok_word);
    match got {
        Ok(d) if want == ok_word => Ok(d),
        Ok(d) => Err(format!("expected {want}, got {ok_word} ({d})")),
        Err(e) => {
            let (word, text) = want.split_once(':').unwrap_or((want, ""));
            if word == err_word && e.contains(text) {
                Ok(format!("{err_word} as expected: {e}"))
            } else {
                Err(format!("expected {want}, got {err_word}: {e}"))
            }
        }
    }
}

fn lookup<T: Copy>(map: &HashMap<String, T>, kind: &str, name: &str) -> Result<T, String> {
    map.get(name).copied().ok_or_else(|| format!("no {kind} named `{name}` (steps define names before use)"))
}

fn hwpt_ref(ctx: &Context, names: &Names, r: &str) -> Result<HwptId, String> {
    if let Some(dev) = r.strip_prefix("device:") {
        let (id, _) = names.devices.get(dev).ok_or_else(|| format!("no device named `{dev}`"))?;
        return ctx
            .attached_hwpt(*id, None)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("device {dev} has no HWPT"));
    }
    lookup(&names.hwpts, "HWPT", r)
}

fn dma_outcome(r: Result<(), DmaError>) -> Result<String, String> {
    match r {
        Ok(()) => Ok(String::new()),
        Err(DmaError::Fault(f)) => Err(ioasis::abi::Fault::reason_name(f.reason).to_string()),
        Err(e) => Err(format!("platform error: {e}")),
    }
}

fn step(ctx: &Context, machine: &Machine, names: &mut Names, st: &Step) -> (String, Result<String, String>) {
    match st {
        Step::Negotiate { device, intent, expect } => {
            let what = format!("negotiate {device}");
            let got = (|| {
                let (id, _) = names.devices.get(device).ok_or_else(|| format!("no device named `{device}`"))?;
                ctx.negotiate(*id, &ioasis::Intent::new(intent.iter().copied()))
                    .map(|c| format!("{:?} contract, {} item(s) granted", c.kind, c.grants.len()))
                    .map_err(|e| e.to_string())
            })();
            (what, judge(expect, "granted", "refused", got))
        }
        Step::AllocIoas { name } => {
            let id = ctx.alloc_ioas();
            names.ioases.insert(name.clone(), id);
            (format!("alloc IOAS {name}"), Ok(format!("id {id}")))
        }
        Step::AllocHwpt { name, unit, kind, ioas, dirty, parent, format, root, expect } => {
            let what = format!("alloc {kind} HWPT {name} on {unit}");
            let got = (|| {
                let u = ctx.unit_by_name(unit).ok_or_else(|| format!("no unit named `{unit}`"))?;
                let spec = match kind.as_str() {
                    "paging" => HwptSpec::Paging {
                        ioas: lookup(&names.ioases, "IOAS", ioas.as_deref().ok_or("paging needs `ioas`")?)?,
                        flags: if *dirty { ioasis::abi::HwptFlags::DIRTY_TRACKING } else { Default::default() },
                        fault_queue: None,
                    },
                    "nested" => HwptSpec::Nested {
                        parent: lookup(&names.hwpts, "HWPT", parent.as_deref().ok_or("nested needs `parent`")?)?,
                        format: format.ok_or("nested needs `format`")?,
                        root: Iova(root.ok_or("nested needs `root`")?),
                        words: Vec::new(),
                        fault_queue: None,
                    },
                    "identity" => HwptSpec::Identity,
                    "blocking" => HwptSpec::Blocking,
                    other => return Err(format!("unknown HWPT kind `{other}`")),
                };
                let id = ctx.alloc_hwpt(u, spec).map_err(|e| e.to_string())?;
                names.hwpts.insert(name.clone(), id);
                Ok(format!("id {id}"))
            })();
            (what, judge(expect, "ok", "error", got))
        }
        Step::Attach { device, pasid, ioas, hwpt, replace, expect } => {
            let verb = if *replace { "replace" } else { "attach" };
            let to = ioas.as_deref().or(hwpt.as_deref()).unwrap_or("?");
            let what = match pasid {
                Some(p) => format!("{verb} {device} PASID {p:#x} -> {to}"),
                None => format!("{verb} {device} -> {to}"),
            };
            let got = (|| {
                let (id, _) = names.devices.get(device).ok_or_else(|| format!("no device named `{device}`"))?;
                let target = match (ioas, hwpt) {
                    (Some(i), None) => Target::Ioas(lookup(&names.ioases, "IOAS", i)?),
                    (None, Some(h)) => Target::Hwpt(lookup(&names.hwpts, "HWPT", h)?),
                    _ => return Err("give exactly one of `ioas` and `hwpt`".to_string()),
                };
                let p = pasid.map(Pasid);
                let r = if *replace { ctx.replace(*id, p, target) } else { ctx.attach(*id, p, target) };
                r.map(|()| String::new()).map_err(|e| e.to_string())
            })();
            (what, judge(expect, "ok", "error", got))
        }
        Step::Detach { device, pasid, expect } => {
            let got = (|| {
                let (id, _) = names.devices.get(device).ok_or_else(|| format!("no device named `{device}`"))?;
                ctx.detach(*id, pasid.map(Pasid)).map(|()| String::new()).map_err(|e| e.to_string())
            })();
            (format!("detach {device}"), judge(expect, "ok", "error", got))
        }
        Step::Map { ioas, iova, pa, len, prot, expect } => {
            let prot = prot.unwrap_or(Prot::RW);
            let what = match iova {
                Some(i) => format!("map {ioas} {i:#x}+{len:#x} -> {pa:#x} {prot}"),
                None => format!("map {ioas} (allocated)+{len:#x} -> {pa:#x} {prot}"),
            };
            let got = (|| {
                let id = lookup(&names.ioases, "IOAS", ioas)?;
                ctx.map(id, iova.map(Iova), PhysAddr(*pa), *len, prot)
                    .map(|i| format!("at {i}"))
                    .map_err(|e| e.to_string())
            })();
            (what, judge(expect, "ok", "error", got))
        }
        Step::Unmap { ioas, iova, len, mode, bytes, expect } => {
            let what = format!("unmap {ioas} {iova:#x}+{len:#x}");
            let got = (|| {
                let id = lookup(&names.ioases, "IOAS", ioas)?;
                let mode = match mode.as_deref() {
                    None | Some("exact") => UnmapMode::Exact,
                    Some("cut") => UnmapMode::Cut,
                    Some(m) => return Err(format!("unknown unmap mode `{m}` (exact, cut)")),
                };
                let n = ctx.unmap(id, Iova(*iova), *len, mode).map_err(|e| e.to_string())?;
                match bytes {
                    Some(b) if *b != n => Err(format!("unmapped {n:#x} bytes, expected {b:#x}")),
                    _ => Ok(format!("{n:#x} bytes")),
                }
            })();
            (what, judge(expect, "ok", "error", got))
        }
        Step::DmaWrite { device, pasid, iova, data, expect } => {
            let what = format!("{device} DMA write {} bytes at {iova:#x}", data.len());
            let got = match names.devices.get(device) {
                None => return (what, Err(format!("no device named `{device}`"))),
                Some((_, d)) => {
                    let base = names.units.get(&d.unit).copied().unwrap_or(PhysAddr(0));
                    dma_outcome(machine.dma_write(
                        base,
                        d.address.into(),
                        pasid.map(Pasid),
                        Iova(*iova),
                        data.as_bytes(),
                    ))
                }
            };
            (what, judge(expect, "ok", "fault", got))
        }
        Step::DmaRead { device, pasid, iova, data, len, expect } => {
            let n = data.as_ref().map_or(len.unwrap_or(1) as usize, |d| d.len());
            let what = format!("{device} DMA read {n} bytes at {iova:#x}");
            let got = match names.devices.get(device) {
                None => return (what, Err(format!("no device named `{device}`"))),
                Some((_, d)) => {
                    let base = names.units.get(&d.unit).copied().unwrap_or(PhysAddr(0));
                    let mut buf = vec![0u8; n];
                    dma_outcome(machine.dma_read(base, d.address.into(), pasid.map(Pasid), Iova(*iova), &mut buf))
                        .and_then(|_| match data {
                            Some(want) if want.as_bytes() != buf.as_slice() => {
                                Err(format!("read {:?}, expected {want:?}", String::from_utf8_lossy(&buf)))
                            }
                            _ => Ok(String::new()),
                        })
                }
            };
            (what, judge(expect, "ok", "fault", got))
        }
        Step::CheckRam { pa, data } => {
            let mut buf = vec![0u8; data.len()];
            let got = machine.ram().read(PhysAddr(*pa), &mut buf).map_err(|e| e.to_string()).and_then(|()| {
                if buf == data.as_bytes() {
                    Ok(String::new())
                } else {
                    Err(format!("RAM holds {:?}", String::from_utf8_lossy(&buf)))
                }
            });
            (format!("RAM at {pa:#x} holds {data:?}"), got)
        }
        Step::DirtyTracking { hwpt, enable } => {
            let got = hwpt_ref(ctx, names, hwpt)
                .and_then(|h| ctx.set_dirty_tracking(h, *enable).map_err(|e| e.to_string()))
                .map(|()| String::new());
            (format!("dirty tracking {} on {hwpt}", if *enable { "on" } else { "off" }), got)
        }
        Step::ReadDirty { hwpt, iova, len, page, pages } => {
            let page = page.unwrap_or(4096);
            let got = hwpt_ref(ctx, names, hwpt).and_then(|h| {
                let bm = ctx.read_dirty(h, Iova(*iova), *len, page, false).map_err(|e| e.to_string())?;
                let set: Vec<u64> = (0..len / page)
                    .filter(|i| bm.get((*i / 64) as usize).is_some_and(|w| w & (1 << (i % 64)) != 0))
                    .collect();
                if &set == pages {
                    Ok(format!("dirty pages {set:?}"))
                } else {
                    Err(format!("dirty pages {set:?}, expected {pages:?}"))
                }
            });
            (format!("read dirty {hwpt} {iova:#x}+{len:#x}"), got)
        }
        Step::Teardown { table_pages } => {
            let want = table_pages.unwrap_or(0);
            let got = ctx.teardown().map_err(|e| e.to_string()).and_then(|()| {
                let left = machine.table_pages();
                if left == want {
                    Ok(format!("{left} table page(s) left"))
                } else {
                    Err(format!("{left} table page(s) left, expected {want}"))
                }
            });
            ("teardown".to_string(), got)
        }
    }
}
