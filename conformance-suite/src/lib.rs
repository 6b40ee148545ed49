//! The ioasis conformance suite: what a vendor runs against its plugin.
//!
//! Each case runs on a fresh simulated machine whose unit is the plugin's own hardware model
//! (the [`ModelFactory`] it exports, interface 0.4), so the suite checks that the plugin programs the
//! unit the way the hardware reads it: real DMA, real faults, stale IOTLB entries kept until the
//! plugin invalidates them. Random cases are seeded; every failure prints the command that
//! reproduces it. A case that needs a capability the unit lacks is skipped, never passed.
//!
//! With [`PlatformChoice::Qemu`], each case runs on a fresh QEMU instead, against the unit QEMU
//! emulates (a model written by other people), with QEMU's `edu` device as the one DMA engine.
//! What QEMU cannot do (DMA from other devices, PASID-tagged, parallel or concurrent DMA) is a
//! platform limit: a case that runs into one is skipped with the limit named, never passed.

mod bench;
mod cases;
pub mod isolate;
mod report;
mod rig;
mod soak;
pub mod variants;

use std::sync::Arc;

use ioasis::loader::Plugin;
use ioasis::platform::ModelFactory;

pub use bench::{PlatformChoice, QemuProfile};
pub use report::{variant_table, variants_json, CaseResult, Outcome, Report, VariantResult, Verdict};
pub use soak::{soak, SoakReport};

/// How to run the suite.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only cases whose `category/name` contains this text.
    pub filter: Option<String>,
    /// Seed of the random cases.
    pub seed: u64,
    /// Backend parameters every unit is probed with (TOML text).
    pub unit_params: String,
    /// Hardware model configuration of the unit (model-specific keys; empty: the full unit).
    pub unit_model: toml::Table,
    /// Where the cases run.
    pub platform: PlatformChoice,
    /// Run only the cases after this one (`category/name`): how an isolated run resumes after
    /// a case that took its process down ([`isolate`]).
    pub after: Option<String>,
}

/// What a run reports as it goes.
pub trait Observer {
    /// `plugin` is about to run case `id` (`category/name`).
    fn started(&mut self, plugin: &str, id: &str) {
        let _ = (plugin, id);
    }
    /// A case ended.
    fn finished(&mut self, result: &CaseResult);
    /// The plugin went out of service in the case that just ended (it panicked:
    /// [`Plugin::failed`] says where); `true` stops the run there (a supervised child does, so
    /// that its parent resumes in a fresh process). Otherwise its remaining cases fail unrun.
    fn out_of_service(&mut self, plugin: &str, why: &str) -> bool {
        let _ = (plugin, why);
        false
    }
}

impl<F: FnMut(&CaseResult)> Observer for F {
    fn finished(&mut self, result: &CaseResult) {
        self(result)
    }
}

/// Single-quotes `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"/._-=:,+@".contains(&b)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The `ioasis` options that select `plugin` and its unit as `opts` configure it.
fn selection(plugin: &Plugin, opts: &Options) -> String {
    let mut args = match &plugin.origin {
        ioasis::loader::Origin::Path(path) => {
            let path = shell_quote(&path.display().to_string());
            if plugin.name == plugin.info.name {
                format!("--plugin {path}")
            } else {
                format!("--plugin {}={path}", plugin.name)
            }
        }
        _ => format!("--backend {}", shell_quote(&plugin.name)),
    };
    if !opts.unit_params.trim().is_empty() {
        args += &format!(" --unit-params {}", shell_quote(opts.unit_params.trim()));
    }
    if !opts.unit_model.is_empty() {
        let text = toml::to_string(&opts.unit_model).unwrap_or_default();
        args += &format!(" --unit-model {}", shell_quote(text.trim()));
    }
    args
}

/// What a case found when it did not fail.
pub(crate) enum Pass {
    /// Checked, with a detail.
    Done(String),
    /// Not applicable to this unit, with why.
    Skip(String),
}

/// A case body: `Err` is a failure with its explanation.
pub(crate) type CaseFn = fn(&rig::Rig, u64) -> Result<Pass, String>;

/// One case.
pub(crate) struct Case {
    pub category: &'static str,
    pub name: &'static str,
    /// The PCI device number (00:dma_dev.0) whose DMA the case drives; on QEMU the edu device
    /// sits there.
    pub dma_dev: u8,
    pub run: CaseFn,
}

impl Case {
    /// A case whose DMA comes from device 1.
    pub const fn new(category: &'static str, name: &'static str, run: CaseFn) -> Self {
        Self { category, name, dma_dev: 1, run }
    }

    /// The same case with its DMA from device `dev`.
    pub const fn dma_from(self, dev: u8) -> Self {
        Self { dma_dev: dev, ..self }
    }
}

/// How a plugin's cases get their machine.
#[derive(Clone, Copy)]
enum Bed<'a> {
    Simulated(&'a dyn ModelFactory),
    Qemu(QemuProfile),
}

/// The `category/name` of every case, in run order.
pub fn case_names() -> Vec<String> {
    cases::ALL.iter().map(|c| format!("{}/{}", c.category, c.name)).collect()
}

/// Runs every case against every plugin; `progress` sees each result as it comes.
pub fn run(
    plugins: &[Arc<Plugin>],
    factories: &[&dyn ModelFactory],
    opts: &Options,
    mut progress: impl FnMut(&CaseResult),
) -> Report {
    run_observed(plugins, factories, opts, &mut progress)
}

/// [`run`], telling `observer` also when each case starts.
pub fn run_observed(
    plugins: &[Arc<Plugin>],
    factories: &[&dyn ModelFactory],
    opts: &Options,
    observer: &mut dyn Observer,
) -> Report {
    let mut report = Report::default();
    for plugin in plugins {
        let selection = selection(plugin, opts);
        let mut resumed = opts.after.is_none();
        // A model the host supplies for the plugin first (in-process, it shows the suite what
        // the interface does not carry, such as the page responses the unit received); else
        // the plugin's own (interface 0.4).
        let own = plugin.model_factory();
        let factory = factories.iter().find(|f| f.plugin() == plugin.info.name).copied().or(own.as_deref());
        let bed = match opts.platform {
            PlatformChoice::Simulated => factory.map(Bed::Simulated).ok_or_else(|| {
                let old = if plugin.interface.minor < 4 {
                    format!(" (built against interface {}; models came in 0.4)", plugin.interface)
                } else {
                    String::new()
                };
                format!(
                    "plugin `{}` exports no hardware model{old}: it runs only on a platform with real or emulated \
                     hardware, such as --platform qemu",
                    plugin.info.name
                )
            }),
            PlatformChoice::Qemu(p) if p.plugin() == plugin.info.name => Ok(Bed::Qemu(p)),
            PlatformChoice::Qemu(p) => Err(format!(
                "QEMU profile {} is for plugin `{}`; QEMU emulates no unit for `{}`",
                p.name(),
                p.plugin(),
                plugin.info.name
            )),
        };
        // The case in which the plugin went out of service, and why.
        let mut out_of_service: Option<(String, String)> = None;
        for case in cases::ALL {
            let id = format!("{}/{}", case.category, case.name);
            if opts.filter.as_deref().is_some_and(|f| !id.contains(f)) {
                continue;
            }
            if !resumed {
                resumed = opts.after.as_deref() == Some(id.as_str());
                continue;
            }
            observer.started(&plugin.name, &id);
            let started = std::time::Instant::now();
            let outcome = match (&bed, &out_of_service) {
                (_, Some((since, why))) => {
                    Outcome::Failed(format!("not run: the plugin is out of service since case {since} ({why})"))
                }
                (Err(why), None) => Outcome::Skipped(why.clone()),
                (Ok(bed), None) => run_case(plugin, *bed, opts, case),
            };
            let result = CaseResult {
                plugin: plugin.name.clone(),
                category: case.category.to_string(),
                case: case.name.to_string(),
                seed: opts.seed,
                platform: opts.platform,
                millis: started.elapsed().as_millis() as u64,
                selection: selection.clone(),
                outcome,
            };
            observer.finished(&result);
            report.results.push(result);
            if let (None, Some(why)) = (&out_of_service, plugin.failed()) {
                if observer.out_of_service(&plugin.name, why) {
                    return report;
                }
                out_of_service = Some((id, why.to_string()));
            }
        }
    }
    report
}

/// How a case that could not get its machine fails.
const SETUP_FAILED: &str = "setting up the machine";

fn run_case(plugin: &Arc<Plugin>, bed: Bed<'_>, opts: &Options, case: &Case) -> Outcome {
    let bench: Result<Box<dyn bench::Bench>, String> = match bed {
        Bed::Simulated(f) => bench::Simulated::new(f, opts).map(|b| Box::new(b) as _),
        Bed::Qemu(p) => bench::Qemu::start(p, case.dma_dev).map(|b| Box::new(b) as _),
    };
    let rig = match bench.and_then(|b| rig::Rig::new(plugin, b, opts)) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("{SETUP_FAILED}: {e}")),
    };
    let body = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.run)(&rig, opts.seed)));
    let outcome = match body {
        Ok(Ok(Pass::Done(d))) => Outcome::Passed(d),
        Ok(Ok(Pass::Skip(d))) => Outcome::Skipped(d),
        Ok(Err(e)) => Outcome::Failed(e),
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            Outcome::Failed(format!("the case panicked: {}", msg.unwrap_or_default()))
        }
    };
    // A case that ran into a platform limit could not check what it is for: skipped, whatever
    // it returned.
    let outcome = match rig.limit_hit() {
        Some(why) => Outcome::Skipped(format!("platform limit: {why}")),
        None => outcome,
    };
    // The backend's own count of its table pages (units and HWPTs) must be the host's: a
    // driver that loses track of a page leaks it at teardown, or frees one twice.
    let outcome = match outcome {
        Outcome::Passed(d) => match (rig.ctx.accounted_table_pages(), rig.table_pages()) {
            (said, held) if said == held => Outcome::Passed(d),
            (said, held) => Outcome::Failed(format!(
                "the plugin accounts for {said} table page(s) (units and HWPTs), the host handed out {held}"
            )),
        },
        other => other,
    };
    // Every case ends with a teardown that must leave no table page behind.
    match (outcome, rig.ctx.teardown()) {
        (Outcome::Passed(d), Ok(())) if rig.table_pages() == 0 => Outcome::Passed(d),
        (Outcome::Passed(_), Ok(())) => {
            Outcome::Failed(format!("teardown left {} table page(s) allocated", rig.table_pages()))
        }
        (Outcome::Passed(_), Err(e)) => Outcome::Failed(format!("teardown failed: {e}")),
        (other, _) => other,
    }
}

/// The suite's self-test: runs the whole suite on every broken variant
/// ([`variants::all`]) whose plugin is among `plugins`, each with its `defect` parameter and
/// unit model, and records the categories that failed. `progress` sees each result as it
/// comes. Every variant should be caught in its expected category
/// ([`VariantResult::caught`]).
pub fn self_test(
    plugins: &[Arc<Plugin>],
    factories: &[&dyn ModelFactory],
    seed: u64,
    progress: impl FnMut(&VariantResult),
) -> Vec<VariantResult> {
    self_test_of(variants::all(), plugins, factories, seed, progress)
}

/// [`self_test`] on the variants given.
pub fn self_test_of<'v>(
    variants: impl IntoIterator<Item = &'v variants::Variant>,
    plugins: &[Arc<Plugin>],
    factories: &[&dyn ModelFactory],
    seed: u64,
    mut progress: impl FnMut(&VariantResult),
) -> Vec<VariantResult> {
    let mut out = Vec::new();
    for v in variants {
        let Some(plugin) = plugins.iter().find(|p| p.name == v.plugin || p.info.name == v.plugin) else {
            continue;
        };
        let mut result = VariantResult {
            plugin: v.plugin.to_string(),
            variant: v.defect.to_string(),
            expected_category: v.category.to_string(),
            caught_in: Vec::new(),
            error: None,
        };
        match toml::from_str::<toml::Table>(v.model) {
            Err(e) => result.error = Some(format!("its unit model `{}`: {}", v.model, e.message().trim())),
            Ok(unit_model) => {
                let opts = Options {
                    seed,
                    unit_params: format!("defect = \"{}\"", v.defect),
                    unit_model,
                    ..Default::default()
                };
                let report = run(std::slice::from_ref(plugin), factories, &opts, |_| {});
                // A variant the plugin cannot even be set up with (a misspelt defect) fails
                // every case: that is no catch.
                let setup = report.results.iter().find_map(|r| match &r.outcome {
                    Outcome::Failed(why) if why.starts_with(SETUP_FAILED) => Some(why.clone()),
                    _ => None,
                });
                result.error = setup.map(|why| format!("{}/{}: {why}", v.plugin, v.defect));
                let mut caught: Vec<String> = report
                    .results
                    .iter()
                    .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
                    .map(|r| r.category.clone())
                    .collect();
                caught.sort();
                caught.dedup();
                result.caught_in = caught;
            }
        }
        progress(&result);
        out.push(result);
    }
    out
}
