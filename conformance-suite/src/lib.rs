//! The ioasis conformance suite: what a vendor runs against its plugin.
//!
//! Each case runs on a fresh simulated machine whose unit is the plugin's own hardware model
//! (a [`ModelFactory`] wired in by the binary), so the suite checks that the plugin programs
//! the unit the way the hardware reads it. Random cases are seeded and print their seed.
//!
//! This is the suite's first layer (capability reporting, map/unmap round trips checked by
//! DMA, teardown); the full category set grows with the harness issue.

mod cases;
mod report;
mod rig;

use std::sync::Arc;

use ioasis::loader::Plugin;
use ioasis::platform::ModelFactory;

pub use report::{CaseResult, Outcome, Report};

/// How to run the suite.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only cases whose `category/name` contains this text.
    pub filter: Option<String>,
    /// Seed of the random cases.
    pub seed: u64,
}

/// One case: a category, a name, and a body that returns a detail on success.
pub(crate) struct Case {
    pub category: &'static str,
    pub name: &'static str,
    pub run: fn(&rig::Rig, u64) -> Result<String, String>,
}

/// Runs every case against every plugin; `progress` sees each result as it comes.
pub fn run(
    plugins: &[Arc<Plugin>],
    factories: &[&dyn ModelFactory],
    opts: &Options,
    mut progress: impl FnMut(&CaseResult),
) -> Report {
    let mut report = Report::default();
    for plugin in plugins {
        let factory = factories.iter().find(|f| f.plugin() == plugin.info.name).copied();
        for case in cases::ALL {
            let id = format!("{}/{}", case.category, case.name);
            if opts.filter.as_deref().is_some_and(|f| !id.contains(f)) {
                continue;
            }
            let outcome = match factory {
                None => Outcome::Skipped(format!("no hardware model for plugin `{}`", plugin.info.name)),
                Some(f) => match rig::Rig::new(plugin, f) {
                    Err(e) => Outcome::Failed(format!("setting up the machine: {e}")),
                    Ok(r) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (case.run)(&r, opts.seed)))
                    {
                        Ok(Ok(d)) => Outcome::Passed(d),
                        Ok(Err(e)) => Outcome::Failed(e),
                        Err(_) => Outcome::Failed("the case panicked".into()),
                    },
                },
            };
            let result = CaseResult {
                plugin: plugin.name.clone(),
                category: case.category.to_string(),
                case: case.name.to_string(),
                seed: opts.seed,
                outcome,
            };
            progress(&result);
            report.results.push(result);
        }
    }
    report
}
