//! Scenarios: a platform ([`crate::description`]: machine, units, bridges, devices), then steps
//! with expected results, run on the simulated machine. What `ioasis run SCENARIO.toml`
//! executes.
//!
//! The platform is given inline, with the keys of a platform file, or by naming one
//! (`platform = "../platforms/host.toml"`, relative to the scenario), never both.
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
//! [[bridge]]
//! name = "0000:00:1c.0"
//! secondary = 1
//! subordinate = 1
//! acs = true
//!
//! [[device]]
//! name = "nic"
//! address = { rid = "0000:01:00.0" }
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
//!
//! [[step]]
//! do = "dma-parallel"
//! jobs = [
//!     { device = "nic", iova = 0x100000, write = "hello" },
//!     { device = "nic", iova = 0x101000, len = 4 },
//!     { device = "nic", pasid = 3, iova = 0x100000, read = "hello", expect = "fault" },
//! ]
//! ```
//!
//! Device DMA in steps is untagged or carries the step's `pasid`; it never uses ATS (the mock
//! unit has no device-TLB invalidation, see [`crate::dma`]).

use std::collections::HashMap;
use std::path::Path;

use ioasis::config::ConfigError;
use ioasis::loader::Registry;
use ioasis::platform::{ModelFactory, Platform};
use ioasis::{Context, HwptId, HwptSpec, IntentItem, IoasId, Iova, Pasid, PhysAddr, Prot, PtFormat, Target, UnmapMode};
use serde::Deserialize;
use toml::Spanned;

use crate::description::{build, BuiltDevice, PlatformDesc, Source};
pub use crate::description::{BridgeEntry, DeviceEntry, MachineDesc, ReservedDesc, UnitEntry};
use crate::dma::{run_parallel, DmaDevice, DmaJob, DmaOp};
use crate::machine::{DmaError, Machine};

/// The whole file: a platform (given inline, or as a `platform` file) and the steps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// A platform file ([`PlatformDesc`]), relative to the scenario's directory. When given, the
    /// scenario has no `machine`, `unit`, `bridge` or `device` of its own.
    #[serde(default)]
    pub platform: Option<Spanned<String>>,
    /// Sizes and platform-wide reserved regions.
    #[serde(default)]
    pub machine: Option<MachineDesc>,
    /// IOMMU units.
    #[serde(default)]
    pub unit: Vec<Spanned<UnitEntry>>,
    /// Root ports and switch ports.
    #[serde(default)]
    pub bridge: Vec<Spanned<BridgeEntry>>,
    /// Devices behind the units.
    #[serde(default)]
    pub device: Vec<Spanned<DeviceEntry>>,
    /// What to do, in order.
    #[serde(default)]
    pub step: Vec<Spanned<Step>>,
}

impl Scenario {
    /// The platform the scenario runs on: its own keys, or the `platform` file it names.
    /// `path` and `text` are the scenario file and its contents, for error positions.
    pub fn platform_desc(&self, path: &Path, text: &str) -> Result<PlatformDesc, ConfigError> {
        let Some(file) = &self.platform else {
            let source = Source { path: path.to_path_buf(), text: text.to_string() };
            return Ok(PlatformDesc::from_parts(
                source,
                self.machine.clone().unwrap_or_default(),
                self.unit.clone(),
                self.bridge.clone(),
                self.device.clone(),
            ));
        };
        let own = [
            ("machine", self.machine.is_some()),
            ("unit", !self.unit.is_empty()),
            ("bridge", !self.bridge.is_empty()),
            ("device", !self.device.is_empty()),
        ];
        if let Some((key, _)) = own.iter().find(|(_, given)| *given) {
            return Err(ConfigError::at(
                path,
                text,
                Some(file.span().start),
                "platform",
                format!("a scenario with a `platform` file gives no `{key}` of its own"),
            ));
        }
        let dir = path.parent().unwrap_or(Path::new(""));
        PlatformDesc::load(&dir.join(file.get_ref()))
    }
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
    /// Several DMAs at once, run in parallel (rayon); each job is judged on its own. Jobs of
    /// one step run in no particular order, so a job should not read what another one writes.
    DmaParallel {
        /// The jobs.
        jobs: Vec<ParallelJob>,
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

/// One job of a `dma-parallel` step: a write (`write`) or a read (`read` with the expected
/// bytes, or `len`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelJob {
    /// Device name.
    pub device: String,
    /// PASID of the requests.
    pub pasid: Option<u32>,
    /// Address.
    pub iova: u64,
    /// Bytes to write (UTF-8 text).
    pub write: Option<String>,
    /// Bytes the read must return (UTF-8 text); its length is the read's length.
    pub read: Option<String>,
    /// Length of a read whose bytes are not checked.
    pub len: Option<u64>,
    /// `ok` (default), `fault`, `fault:REASON`.
    pub expect: Option<String>,
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
    devices: HashMap<String, BuiltDevice>,
    ioases: HashMap<String, IoasId>,
    hwpts: HashMap<String, HwptId>,
}

/// Loads and runs a scenario file with the plugins of `registry` and the given model factories.
pub fn run_file(path: &Path, registry: &Registry, factories: &[&dyn ModelFactory]) -> Result<Report, ScenarioError> {
    let (scenario, text): (Scenario, String) = ioasis::config::load(path)?;
    run(path, &text, &scenario, registry, factories)
}

/// Runs a parsed scenario (`text` is the file's contents, for error positions).
pub fn run(
    path: &Path,
    text: &str,
    s: &Scenario,
    registry: &Registry,
    factories: &[&dyn ModelFactory],
) -> Result<Report, ScenarioError> {
    let desc = s.platform_desc(path, text)?;
    let built = build(&desc, registry, factories)?;
    let mut names =
        Names { devices: built.devices.into_iter().collect(), ioases: HashMap::new(), hwpts: HashMap::new() };
    let (ctx, machine) = (&built.ctx, &built.machine);
    let mut report = Report::default();
    let lines = ioasis::config::LineIndex::new(text);
    for (i, st) in s.step.iter().enumerate() {
        let (line, _) = lines.line_col(st.span().start);
        let (what, outcome) = step(ctx, machine, &mut names, st.get_ref());
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
        let id = names.devices.get(dev).map(|d| &d.id).ok_or_else(|| format!("no device named `{dev}`"))?;
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

/// The DMA engine of a named device (untagged or with `pasid`; the scenario uses no ATS).
fn dma_device(names: &Names, device: &str, pasid: Option<u32>) -> Result<DmaDevice, String> {
    let d = names.devices.get(device).ok_or_else(|| format!("no device named `{device}`"))?;
    Ok(DmaDevice::new(d.desc.address.into(), d.unit_base).with_pasid(pasid.map(Pasid)))
}

/// Checks what a read returned against the expected text, if any.
fn check_read(want: &Option<String>, buf: &[u8]) -> Result<String, String> {
    match want {
        Some(want) if want.as_bytes() != buf => {
            Err(format!("read {:?}, expected {want:?}", String::from_utf8_lossy(buf)))
        }
        _ => Ok(String::new()),
    }
}

/// Bytes one DMA of a step may move: 16 MiB. A scenario checks translations, not bandwidth; a
/// larger length is refused before any buffer is allocated.
pub const MAX_STEP_DMA_BYTES: u64 = 16 << 20;
/// Jobs one `dma-parallel` step may run.
pub const MAX_PARALLEL_JOBS: usize = 256;

fn dma_len(n: u64) -> Result<usize, String> {
    if n > MAX_STEP_DMA_BYTES {
        return Err(format!("a DMA of {n:#x} bytes is more than a step may move ({MAX_STEP_DMA_BYTES:#x})"));
    }
    Ok(n as usize)
}

/// Runs a `dma-parallel` step: every job at once, then each judged against its `expect`.
fn dma_parallel(machine: &Machine, names: &Names, jobs: &[ParallelJob]) -> Result<String, String> {
    if jobs.len() > MAX_PARALLEL_JOBS {
        return Err(format!("{} jobs: a step runs at most {MAX_PARALLEL_JOBS}", jobs.len()));
    }
    let mut devices = Vec::with_capacity(jobs.len());
    let mut ops = Vec::with_capacity(jobs.len());
    for (i, j) in jobs.iter().enumerate() {
        devices.push(dma_device(names, &j.device, j.pasid).map_err(|e| format!("job {}: {e}", i + 1))?);
        ops.push(match (&j.write, &j.read, j.len) {
            (Some(w), None, None) => DmaOp::Write(w.as_bytes().to_vec()),
            (None, Some(r), None) => DmaOp::Read(r.len()),
            (None, None, Some(n)) => DmaOp::Read(dma_len(n).map_err(|e| format!("job {}: {e}", i + 1))?),
            _ => return Err(format!("job {}: give exactly one of `write`, `read` and `len`", i + 1)),
        });
    }
    let batch: Vec<DmaJob<'_>> =
        devices.iter().zip(jobs).zip(ops).map(|((device, j), op)| DmaJob { device, iova: Iova(j.iova), op }).collect();
    let results = run_parallel(machine, &batch);
    let mut failed = Vec::new();
    for (i, (j, r)) in jobs.iter().zip(results).enumerate() {
        let got = match r {
            Ok(buf) => check_read(&j.read, &buf),
            Err(e) => dma_outcome(Err(e)),
        };
        if let Err(e) = judge(&j.expect, "ok", "fault", got) {
            failed.push(format!("job {} ({} at {:#x}): {e}", i + 1, j.device, j.iova));
        }
    }
    if failed.is_empty() {
        Ok(format!("{} job(s) as expected", jobs.len()))
    } else {
        Err(failed.join("; "))
    }
}

fn step(ctx: &Context, machine: &Machine, names: &mut Names, st: &Step) -> (String, Result<String, String>) {
    match st {
        Step::Negotiate { device, intent, expect } => {
            let what = format!("negotiate {device}");
            let got = (|| {
                let id =
                    names.devices.get(device).map(|d| &d.id).ok_or_else(|| format!("no device named `{device}`"))?;
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
                let id =
                    names.devices.get(device).map(|d| &d.id).ok_or_else(|| format!("no device named `{device}`"))?;
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
                let id =
                    names.devices.get(device).map(|d| &d.id).ok_or_else(|| format!("no device named `{device}`"))?;
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
            let got = match dma_device(names, device, *pasid) {
                Err(e) => return (what, Err(e)),
                Ok(d) => dma_outcome(d.write(machine, Iova(*iova), data.as_bytes())),
            };
            (what, judge(expect, "ok", "fault", got))
        }
        Step::DmaRead { device, pasid, iova, data, len, expect } => {
            let n = data.as_ref().map_or(len.unwrap_or(1), |d| d.len() as u64);
            let what = format!("{device} DMA read {n} bytes at {iova:#x}");
            let n = match dma_len(n) {
                Ok(n) => n,
                Err(e) => return (what, Err(e)),
            };
            let got = match dma_device(names, device, *pasid) {
                Err(e) => return (what, Err(e)),
                Ok(d) => {
                    let mut buf = vec![0u8; n];
                    dma_outcome(d.read(machine, Iova(*iova), &mut buf)).and_then(|_| check_read(data, &buf))
                }
            };
            (what, judge(expect, "ok", "fault", got))
        }
        Step::DmaParallel { jobs } => {
            let what = format!("{} DMA job(s) in parallel", jobs.len());
            (what, dma_parallel(machine, names, jobs))
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
