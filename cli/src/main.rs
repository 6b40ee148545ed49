//! `ioasis`: list plugins, negotiate an intent, run a scenario, run the conformance suite.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};
use ioasis::config::{self, ConfigError};
use ioasis::loader::{Plugin, Registry};
use ioasis::platform::ModelFactory;
use ioasis::{Context, DeviceDesc, Error, Intent, IntentItem, PhysAddr};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_conformance::{isolate, PlatformChoice, QemuProfile, Verdict};
use serde::Deserialize;
// The bundled backends, linked in: each registers itself (and its model) with `inventory`.
use {ioasis_plugin_mock as _, ioasis_plugin_vtd as _};

/// Exit status of a failed check (refused intent, failed step or case).
const FAILED: u8 = 1;
/// Exit status of bad usage or a bad file.
const USAGE: u8 = 2;
/// Exit status of a conformance run in which no case ran (all skipped, or none selected).
const NOTHING_RAN: u8 = 3;

/// The exit statuses, as `ioasis --help` prints them.
const EXIT_STATUS: &str = "\
Exit status:
  0  success: plugins listed; contract granted; every step passed; conformance: every case
     that ran passed (skips are allowed when at least one case ran)
  1  a check failed: intent refused (negotiate), a step failed (run), a case failed
     (conformance)
  2  usage or load error: bad arguments, a plugin that does not load or whose name is
     refused, a bad TOML file
  3  conformance only: nothing could run: every selected case was skipped (the reasons are
     printed), or --filter selected no case";

/// The exit statuses of `ioasis conformance`.
const CONFORMANCE_EXIT_STATUS: &str = "\
Exit status:
  0  every case that ran passed (skips are allowed when at least one case ran)
  1  some case failed
  2  usage or load error (bad arguments, a plugin that does not load, bad TOML)
  3  nothing could run: every selected case was skipped, for every plugin (the reasons are
     printed), or --filter selected no case
The results (human, --format json or junit, --junit FILE) are printed in every case but 2.";

#[derive(Parser)]
#[command(
    name = "ioasis",
    version,
    about = "ioasis: a device-centric, plugin-based IOMMU framework",
    after_help = EXIT_STATUS
)]
struct Cli {
    /// Load a backend plugin from a shared library (repeatable). NAME=PATH loads it under NAME
    /// instead of its own name: needed for a build of a bundled plugin (`mock`, `vtd`, ...,
    /// whose names are reserved) or for two plugins with one name. A PATH with `=` in its
    /// file name is written with a `/` before the `=` (./a=b.so).
    #[arg(long = "plugin", value_name = "[NAME=]PATH", value_parser = plugin_arg, global = true)]
    plugins: Vec<PluginArg>,
    /// Load every plugin in a directory (repeatable).
    #[arg(long = "plugin-dir", value_name = "DIR", global = true)]
    plugin_dirs: Vec<PathBuf>,
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG also works.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List built-in and loaded plugins, where each came from, and what a simulated unit of
    /// each can do.
    Plugins,
    /// Negotiate a device's intent (TOML) with a plugin's unit; print the contract or refusal.
    Negotiate {
        /// The intent file.
        file: PathBuf,
    },
    /// Run a scenario (units, devices, intents, maps, DMA, expected results).
    Run {
        /// The scenario file.
        scenario: PathBuf,
    },
    /// Run the conformance suite against every built-in plugin, or only against the plugins
    /// given with --plugin / --plugin-dir.
    #[command(after_help = CONFORMANCE_EXIT_STATUS)]
    Conformance {
        /// Only cases whose `category/name` contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Seed of the random cases.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Backend parameters every unit is probed with (TOML text).
        #[arg(long, default_value = "")]
        unit_params: String,
        /// Hardware model configuration of the unit (TOML text, model-specific keys), e.g.
        /// 'without = ["dirty"]' for mock or 'generation = "legacy"' for vtd; use with --backend.
        #[arg(long, default_value = "")]
        unit_model: String,
        /// Only the plugins with these names (repeatable), e.g. --backend vtd.
        #[arg(long = "backend", value_name = "NAME")]
        backends: Vec<String>,
        /// Also write the results as JUnit XML to this file.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Where the cases run: a simulated machine with the plugin's own hardware model, or
        /// QEMU with the unit it emulates (needs qemu-system-x86_64).
        #[arg(long, value_enum, default_value_t = PlatformArg::Simulated)]
        platform: PlatformArg,
        /// The unit QEMU emulates, with --platform qemu (default: vtd-legacy).
        #[arg(long, value_enum, value_name = "PROFILE")]
        qemu_profile: Option<QemuProfileArg>,
        /// Run the suite on every deliberately broken variant of the selected plugins instead,
        /// and show which categories caught each; fails unless each is caught in its own.
        #[arg(long, conflicts_with_all = ["filter", "unit_params", "unit_model", "junit", "platform", "qemu_profile"])]
        self_test: bool,
        /// Where the cases run: `process` runs each plugin's cases in a child process, so that
        /// a plugin that panics, crashes or hangs fails its case (with how it died) and the
        /// rest still run; `none` runs them in this process.
        #[arg(long, value_enum, default_value_t = IsolationArg::Process)]
        isolation: IsolationArg,
        /// With --isolation process: seconds a case may take before its process is killed and
        /// the case fails as hung.
        #[arg(long, value_name = "SECS", default_value_t = 300)]
        case_timeout: u64,
        /// Internal: run as the child of an isolated run (event lines on stdout).
        #[arg(long, hide = true)]
        isolated_child: bool,
        /// Internal: run only the cases after this one (`category/name`).
        #[arg(long, hide = true, value_name = "ID")]
        after: Option<String>,
    },
    /// List the conformance suite's cases.
    Cases,
    /// Soak a simulated unit of each selected plugin: threads mapping, unmapping, attaching,
    /// DMA-ing and tearing down at once, every DMA checked to land where a mapping says; no
    /// table page may be left and no thread may stall. Prints the figures.
    Soak {
        /// How long, per plugin.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only the plugins with these names (repeatable).
        #[arg(long = "backend", value_name = "NAME")]
        backends: Vec<String>,
        /// Backend parameters the unit is probed with (TOML text).
        #[arg(long, default_value = "")]
        unit_params: String,
        /// Hardware model configuration of the unit (TOML text).
        #[arg(long, default_value = "")]
        unit_model: String,
    },
}

/// A `--plugin` argument: `PATH` or `NAME=PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PluginArg {
    /// The name to load it under, if not its own.
    name: Option<String>,
    /// The shared library.
    path: PathBuf,
}

/// Parses `PATH` or `NAME=PATH`: a `=` with no `/` before it separates a name.
fn plugin_arg(s: &str) -> Result<PluginArg, String> {
    let arg = match s.split_once('=') {
        Some((name, path)) if !name.contains('/') => {
            if name.is_empty() || path.is_empty() {
                return Err(format!("`{s}`: expected PATH or NAME=PATH"));
            }
            PluginArg { name: Some(name.to_string()), path: PathBuf::from(path) }
        }
        _ if s.is_empty() => return Err("expected PATH or NAME=PATH".to_string()),
        _ => PluginArg { name: None, path: PathBuf::from(s) },
    };
    Ok(arg)
}

#[derive(Clone, Copy, ValueEnum)]
enum PlatformArg {
    Simulated,
    Qemu,
}

#[derive(Clone, Copy, ValueEnum)]
enum QemuProfileArg {
    /// q35 with intel-iommu in legacy mode.
    VtdLegacy,
    /// q35 with intel-iommu in scalable mode (x-scalable-mode=on).
    VtdScalable,
}

impl From<QemuProfileArg> for QemuProfile {
    fn from(p: QemuProfileArg) -> Self {
        match p {
            QemuProfileArg::VtdLegacy => QemuProfile::VtdLegacy,
            QemuProfileArg::VtdScalable => QemuProfile::VtdScalable,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum IsolationArg {
    Process,
    None,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Human,
    Json,
    Junit,
}

/// The hardware models this binary can simulate units with.
/// The hardware models the plugins export (interface 0.4): none is compiled into the binary.
fn factories(reg: &Registry) -> Vec<Arc<dyn ModelFactory>> {
    reg.iter().filter_map(|p| p.model_factory()).collect()
}

/// The built-ins and, unless `builtins_only`, the plugins the command line loads.
fn registry(cli: &Cli, builtins_only: bool) -> Result<Registry, String> {
    let mut reg = Registry::with_builtins().map_err(|e| e.to_string())?;
    if builtins_only {
        return Ok(reg);
    }
    for p in &cli.plugins {
        match &p.name {
            Some(name) => reg.load_as(&p.path, name),
            None => reg.load(&p.path),
        }
        .map_err(|e| e.to_string())?;
    }
    for d in &cli.plugin_dirs {
        let (_, failed) = reg.load_dir(d).map_err(|e| e.to_string())?;
        for f in failed {
            eprintln!("warning: {f}");
        }
    }
    Ok(reg)
}

/// A machine with one simulated unit of `plugin`, built from `model` config.
fn simulated_unit(plugin: &Arc<Plugin>, model: &toml::Table) -> Result<(Context, ioasis::UnitId), String> {
    let factory = plugin.model_factory().ok_or_else(|| {
        format!("plugin `{}` exports no hardware model (interface 0.4): no unit to simulate", plugin.info.name)
    })?;
    let machine = Arc::new(Machine::new(MachineConfig::default()).map_err(|e| e.to_string())?);
    let base = PhysAddr(0xfed0_0000);
    machine.add_unit(base, factory.window(), factory.build(model)?).map_err(|e| e.to_string())?;
    let ctx = Context::new(machine);
    let unit = ctx.add_unit(plugin, "u0", base, 0, "").map_err(|e| e.to_string())?;
    Ok((ctx, unit))
}

fn plugins(reg: &Registry) -> ExitCode {
    for p in reg.iter() {
        println!("{}  {}  [{}]  interface {}", p.name, p.info.version, p.origin, p.interface);
        println!("    {} ({})", p.info.description, p.info.vendor);
        match simulated_unit(p, &Default::default()) {
            Ok((ctx, unit)) => match ctx.unit_caps(unit) {
                Ok(c) => {
                    let nests: Vec<String> = c.nested_formats.iter().map(|f| f.to_string()).collect();
                    println!("    unit:     {}", c.model);
                    println!(
                        "    paging:   {} with {} pages, {}-bit IOVA, {}-bit output",
                        c.paging_format, c.page_sizes, c.ias_bits, c.oas_bits
                    );
                    println!(
                        "    PASIDs:   {}",
                        if c.pasid_bits == 0 { "none".to_string() } else { format!("{} bits", c.pasid_bits) }
                    );
                    println!("    features: {}", c.features);
                    println!(
                        "    nests:    {}",
                        if nests.is_empty() { "nothing".to_string() } else { nests.join(", ") }
                    );
                }
                Err(e) => println!("    unit: {e}"),
            },
            Err(e) => println!("    capabilities: not shown ({e})"),
        }
    }
    ExitCode::SUCCESS
}

/// An intent file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NegotiateFile {
    /// Plugin name (default `mock`).
    plugin: Option<String>,
    /// The simulated unit's model configuration.
    #[serde(default)]
    unit: toml::Table,
    /// The device.
    device: DeviceDesc,
    /// What it will do.
    intent: Vec<IntentItem>,
}

fn negotiate(reg: &Registry, file: &Path) -> Result<ExitCode, String> {
    let (f, _): (NegotiateFile, String) = config::load(file).map_err(|e: ConfigError| e.to_string())?;
    let name = f.plugin.as_deref().unwrap_or("mock");
    let plugin = reg.get(name).ok_or_else(|| format!("no plugin named `{name}` (see `ioasis plugins`)"))?;
    let (ctx, _) = simulated_unit(&plugin, &f.unit).map_err(|e| format!("{}: unit: {e}", file.display()))?;
    let mut desc = f.device;
    desc.unit = "u0".into();
    let dev = ctx.bind_device(desc).map_err(|e| format!("{}: device: {e}", file.display()))?;
    match ctx.negotiate(dev, &Intent::new(f.intent)) {
        Ok(c) => {
            print!("{c}");
            Ok(ExitCode::SUCCESS)
        }
        Err(Error::Refused(r)) => {
            println!("{r}");
            if !r.granted.is_empty() {
                let g: Vec<String> = r.granted.iter().map(|g| g.item.to_string()).collect();
                println!("  (would grant: {})", g.join(", "));
            }
            Ok(ExitCode::from(FAILED))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn run(reg: &Registry, file: &Path) -> Result<ExitCode, String> {
    let models = factories(reg);
    let models: Vec<&dyn ModelFactory> = models.iter().map(|m| m.as_ref()).collect();
    let report = ioasis_baremetal::scenario::run_file(file, reg, &models).map_err(|e| e.to_string())?;
    for s in &report.steps {
        let mark = if s.passed { "ok  " } else { "FAIL" };
        let detail = if s.detail.is_empty() { String::new() } else { format!(": {}", s.detail) };
        println!("{mark} {:>3} (line {:>3}) {}{detail}", s.index, s.line, s.what);
    }
    let failed = report.steps.iter().filter(|s| !s.passed).count();
    println!("\n{} step(s), {} failed", report.steps.len(), failed);
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(FAILED) })
}

struct SuiteArgs<'a> {
    /// The `--plugin` and `--plugin-dir` arguments (none: the built-ins).
    plugin_args: &'a [PluginArg],
    plugin_dirs: &'a [PathBuf],
    only_loaded: bool,
    backends: &'a [String],
    filter: Option<String>,
    format: Format,
    seed: u64,
    unit_params: &'a str,
    unit_model: &'a str,
    junit: Option<&'a Path>,
    platform: PlatformArg,
    qemu_profile: Option<QemuProfileArg>,
    self_test: bool,
    isolation: IsolationArg,
    case_timeout: u64,
    isolated_child: bool,
    after: Option<String>,
}

fn conformance(reg: &Registry, a: SuiteArgs<'_>) -> Result<ExitCode, String> {
    // With --plugin or --plugin-dir, the suite runs on those plugins only (a vendor's build);
    // otherwise on every built-in one.
    let loaded: Vec<Arc<Plugin>> =
        reg.iter().filter(|p| !matches!(p.origin, ioasis::loader::Origin::Builtin)).cloned().collect();
    let mut plugins: Vec<Arc<Plugin>> = if a.only_loaded { loaded } else { reg.iter().cloned().collect() };
    // An isolated run's plugin files are opened in its children, which apply --backend.
    let files_in_children = a.only_loaded && a.isolation == IsolationArg::Process && !a.isolated_child && !a.self_test;
    if !a.backends.is_empty() && !files_in_children {
        plugins.retain(|p| a.backends.iter().any(|b| *b == p.name || *b == p.info.name));
        if plugins.is_empty() && !a.isolated_child {
            return Err(format!("no plugin named {} (see `ioasis plugins`)", a.backends.join(", ")));
        }
    }
    if a.self_test {
        return self_test(&plugins, a.format, a.seed);
    }
    let unit_model: toml::Table =
        toml::from_str(a.unit_model).map_err(|e| format!("--unit-model: {}", e.message().trim()))?;
    let platform = match (a.platform, a.qemu_profile) {
        (PlatformArg::Simulated, None) => PlatformChoice::Simulated,
        (PlatformArg::Simulated, Some(_)) => return Err("--qemu-profile needs --platform qemu".into()),
        (PlatformArg::Qemu, _) if !unit_model.is_empty() => {
            return Err("--unit-model configures a simulated unit; QEMU's unit is set by --qemu-profile".into())
        }
        (PlatformArg::Qemu, p) => PlatformChoice::Qemu(p.map_or(QemuProfile::VtdLegacy, QemuProfile::from)),
    };
    platform.available()?;
    let opts = ioasis_conformance::Options {
        filter: a.filter.clone(),
        seed: a.seed,
        unit_params: a.unit_params.into(),
        unit_model,
        platform,
        after: a.after.clone(),
    };
    if a.isolated_child {
        let mut events = isolate::ChildEvents::stdout();
        ioasis_conformance::run_observed(&plugins, &[], &opts, &mut events);
        return Ok(if events.restart { ExitCode::from(isolate::RESTART) } else { ExitCode::SUCCESS });
    }
    let human = matches!(a.format, Format::Human);
    if human && opts.platform != PlatformChoice::Simulated {
        println!("platform: {}", opts.platform);
    }
    let mut progress = |r: &ioasis_conformance::CaseResult| {
        if human {
            let (mark, detail) = match &r.outcome {
                ioasis_conformance::Outcome::Passed(d) => ("pass", d),
                ioasis_conformance::Outcome::Failed(d) => ("FAIL", d),
                ioasis_conformance::Outcome::Skipped(d) => ("skip", d),
            };
            println!("{mark} {} {}/{}: {detail}", r.plugin, r.category, r.case);
        }
    };
    let report = match a.isolation {
        IsolationArg::None => ioasis_conformance::run(&plugins, &[], &opts, &mut progress),
        IsolationArg::Process => isolated(&plugins, &a, &opts, &mut progress)?,
    };
    match a.format {
        Format::Human => println!("\n{}", report.summary()),
        Format::Json => println!("{}", report.to_json()),
        Format::Junit => print!("{}", report.to_junit()),
    }
    if let Some(path) = a.junit {
        std::fs::write(path, report.to_junit()).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(match report.verdict() {
        Verdict::Passed => ExitCode::SUCCESS,
        Verdict::Failed => ExitCode::from(FAILED),
        Verdict::NothingRan(why) => {
            eprintln!("error: {why}");
            ExitCode::from(NOTHING_RAN)
        }
    })
}

/// One child's worth of an isolated run: a built-in plugin or a plugin file.
struct Target {
    /// Names the plugin in a failure before any case ran.
    label: String,
    /// The options before `conformance` that select it.
    global: Vec<String>,
    /// Whether a load error ends the run (`--plugin`) or is a warning (a file of a directory).
    explicit: bool,
}

/// The suite with every plugin's cases in child processes of this binary
/// ([`ioasis_conformance::isolate`]). `builtins` are the built-ins selected; with `--plugin`
/// or `--plugin-dir`, the files are opened only in the children.
fn isolated(
    builtins: &[Arc<Plugin>],
    a: &SuiteArgs<'_>,
    opts: &ioasis_conformance::Options,
    progress: &mut dyn FnMut(&ioasis_conformance::CaseResult),
) -> Result<ioasis_conformance::Report, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this program for its children: {e}"))?;
    let mut targets = Vec::new();
    if a.only_loaded {
        for p in a.plugin_args {
            let spec = match &p.name {
                Some(n) => format!("{n}={}", p.path.display()),
                None => p.path.display().to_string(),
            };
            targets.push(Target {
                label: p.path.display().to_string(),
                global: vec!["--plugin".into(), spec],
                explicit: true,
            });
        }
        for d in a.plugin_dirs {
            let entries =
                std::fs::read_dir(d).map_err(|e| format!("cannot read plugin directory {}: {e}", d.display()))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("so" | "dylib" | "dll")))
                .collect();
            files.sort();
            for f in files {
                let path = f.display().to_string();
                targets.push(Target { label: path.clone(), global: vec!["--plugin".into(), path], explicit: false });
            }
        }
    } else {
        for p in builtins {
            targets.push(Target { label: p.name.clone(), global: Vec::new(), explicit: true });
        }
    }
    let limits = isolate::Limits { case: std::time::Duration::from_secs(a.case_timeout), ..Default::default() };
    let mut report = ioasis_conformance::Report::default();
    for t in targets {
        let make = |after: Option<&str>| {
            let mut c = std::process::Command::new(&exe);
            c.args(&t.global).args(["conformance", "--isolated-child", "--seed", &a.seed.to_string()]);
            if !a.only_loaded {
                c.args(["--backend", &t.label]);
            }
            for b in a.backends.iter().filter(|_| a.only_loaded) {
                c.args(["--backend", b]);
            }
            if let Some(f) = &a.filter {
                c.args(["--filter", f]);
            }
            if !a.unit_params.is_empty() {
                c.args(["--unit-params", a.unit_params]);
            }
            if !a.unit_model.is_empty() {
                c.args(["--unit-model", a.unit_model]);
            }
            if matches!(a.platform, PlatformArg::Qemu) {
                c.args(["--platform", "qemu"]);
            }
            if let Some(p) = a.qemu_profile {
                c.arg("--qemu-profile")
                    .arg(p.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default());
            }
            if let Some(after) = after {
                c.args(["--after", after]);
            }
            c
        };
        match isolate::supervise(&t.label, make, opts, limits, progress) {
            Ok(results) => report.results.extend(results),
            Err(isolate::Refused::Usage(why)) if t.explicit => {
                return Err(why.strip_prefix("error: ").unwrap_or(&why).to_string())
            }
            Err(isolate::Refused::Usage(why)) => eprintln!("warning: {}", why.strip_prefix("error: ").unwrap_or(&why)),
            Err(isolate::Refused::Spawn(why)) => return Err(why),
        }
    }
    Ok(report)
}

/// `ioasis conformance --self-test`: every broken variant of `plugins`, and where it was caught.
fn self_test(plugins: &[Arc<Plugin>], format: Format, seed: u64) -> Result<ExitCode, String> {
    let human = matches!(format, Format::Human);
    let results = ioasis_conformance::self_test(plugins, &[], seed, |r| {
        if human {
            let mark = if r.caught() { "caught" } else { "MISSED" };
            println!("{mark} {} {}: caught in [{}]", r.plugin, r.variant, r.caught_in.join(", "));
        }
    });
    if results.is_empty() {
        return Err("no broken variant for the selected plugins".into());
    }
    match format {
        Format::Human => println!("\n{}", ioasis_conformance::variant_table(&results)),
        Format::Json => println!("{}", ioasis_conformance::variants_json(&results)),
        Format::Junit => return Err("--self-test prints a table (human) or JSON, not JUnit".into()),
    }
    Ok(if results.iter().all(|r| r.caught()) { ExitCode::SUCCESS } else { ExitCode::from(FAILED) })
}

/// `ioasis soak`: the soak on each selected plugin's simulated unit.
fn soak(
    reg: &Registry,
    only_loaded: bool,
    backends: &[String],
    seconds: u64,
    unit_params: &str,
    unit_model: &str,
) -> Result<ExitCode, String> {
    let unit_model: toml::Table =
        toml::from_str(unit_model).map_err(|e| format!("--unit-model: {}", e.message().trim()))?;
    let opts = ioasis_conformance::Options { unit_params: unit_params.into(), unit_model, ..Default::default() };
    let selected: Vec<&Arc<Plugin>> = reg
        .iter()
        .filter(|p| !only_loaded || !matches!(p.origin, ioasis::loader::Origin::Builtin))
        .filter(|p| backends.is_empty() || backends.iter().any(|b| *b == p.name || *b == p.info.name))
        .collect();
    if selected.is_empty() {
        return Err("no plugin selected (see `ioasis plugins`)".into());
    }
    let mut failed = false;
    for p in selected {
        let factory = p
            .model_factory()
            .ok_or_else(|| format!("plugin `{}` exports no hardware model: nothing to soak", p.name))?;
        let r = ioasis_conformance::soak(p, factory.as_ref(), &opts, std::time::Duration::from_secs(seconds))?;
        println!("{}", r.summary());
        for v in &r.violations {
            println!("  VIOLATION {v}");
        }
        failed |= !r.violations.is_empty();
    }
    Ok(if failed { ExitCode::from(FAILED) } else { ExitCode::SUCCESS })
}

/// Dies quietly on a closed pipe (`ioasis plugins | head`), as command-line tools do, instead
/// of panicking in `println!`.
fn default_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: restoring the default disposition installs no Rust handler; it runs before any
    // thread is spawned.
    if let Err(e) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        eprintln!("warning: cannot restore SIGPIPE: {e}");
    }
}

fn main() -> ExitCode {
    default_sigpipe();
    let cli = Cli::parse();
    let level = match cli.verbose {
        // The suite provokes DMA faults on purpose: don't log them as warnings.
        0 if matches!(cli.command, Command::Conformance { .. }) => "error",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    // An isolated conformance run opens plugin files only in its children.
    let builtins_only = matches!(
        &cli.command,
        Command::Conformance { isolation: IsolationArg::Process, isolated_child: false, self_test: false, .. }
    );
    let reg = match registry(&cli, builtins_only) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let result = match &cli.command {
        Command::Plugins => Ok(plugins(&reg)),
        Command::Negotiate { file } => negotiate(&reg, file),
        Command::Run { scenario } => run(&reg, scenario),
        Command::Conformance {
            filter,
            format,
            seed,
            unit_params,
            unit_model,
            backends,
            junit,
            platform,
            qemu_profile,
            self_test,
            isolation,
            case_timeout,
            isolated_child,
            after,
        } => conformance(
            &reg,
            SuiteArgs {
                plugin_args: &cli.plugins,
                plugin_dirs: &cli.plugin_dirs,
                only_loaded: !cli.plugins.is_empty() || !cli.plugin_dirs.is_empty(),
                backends,
                filter: filter.clone(),
                format: *format,
                seed: *seed,
                unit_params,
                unit_model,
                junit: junit.as_deref(),
                platform: *platform,
                qemu_profile: *qemu_profile,
                self_test: *self_test,
                isolation: *isolation,
                case_timeout: *case_timeout,
                isolated_child: *isolated_child,
                after: after.clone(),
            },
        ),
        Command::Soak { seconds, backends, unit_params, unit_model } => soak(
            &reg,
            !cli.plugins.is_empty() || !cli.plugin_dirs.is_empty(),
            backends,
            *seconds,
            unit_params,
            unit_model,
        ),
        Command::Cases => {
            ioasis_conformance::case_names().iter().for_each(|c| println!("{c}"));
            Ok(ExitCode::SUCCESS)
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e}");
        ExitCode::from(USAGE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_args_are_a_path_or_a_name_and_a_path() {
        let arg = |name: Option<&str>, path: &str| PluginArg { name: name.map(str::to_string), path: path.into() };
        assert_eq!(plugin_arg("../x.so"), Ok(arg(None, "../x.so")));
        assert_eq!(plugin_arg("libx.so"), Ok(arg(None, "libx.so")));
        assert_eq!(
            plugin_arg("mock-old=../old/libioasis_mock.so"),
            Ok(arg(Some("mock-old"), "../old/libioasis_mock.so"))
        );
        assert_eq!(plugin_arg("acme-a=x=y.so"), Ok(arg(Some("acme-a"), "x=y.so")));
        assert_eq!(plugin_arg("./a=b.so"), Ok(arg(None, "./a=b.so")), "a `/` before the `=`: a path");
        assert_eq!(plugin_arg("/opt/a=b/x.so"), Ok(arg(None, "/opt/a=b/x.so")));
        for bad in ["", "=x.so", "acme-a="] {
            assert!(plugin_arg(bad).is_err(), "{bad}");
        }
    }
}
