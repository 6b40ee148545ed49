//! The vendor's path: a plugin loaded from its .so brings its own hardware model (interface
//! 0.4), and the suite gives it the same results, case by case, as the built-in plugin, with no
//! model supplied by the host.

use std::path::PathBuf;
use std::sync::Arc;

use ioasis::loader::{Plugin, Registry};
use ioasis_conformance::{run, Options, Outcome, Report};
// The built-ins to compare with, linked in (they register themselves with inventory).
use {ioasis_plugin_mock as _, ioasis_plugin_vtd as _};

/// Where cargo put a cdylib of this workspace: next to the test binary's `deps` folder.
fn cdylib(stem: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir");
    let file = format!("lib{stem}.so");
    [deps.to_path_buf(), deps.parent().expect("profile dir").to_path_buf()]
        .into_iter()
        .map(|d| d.join(&file))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{file} was not built next to {}", deps.display()))
}

fn outcomes(r: &Report) -> Vec<(String, String, &'static str)> {
    r.results
        .iter()
        .map(|c| {
            let kind = match c.outcome {
                Outcome::Passed(_) => "passed",
                Outcome::Failed(_) => "failed",
                Outcome::Skipped(_) => "skipped",
            };
            (c.category.clone(), c.case.clone(), kind)
        })
        .collect()
}

fn suite(plugin: Arc<Plugin>, model: &str) -> Report {
    let opts = Options { seed: 5, unit_model: toml::from_str(model).unwrap(), ..Default::default() };
    // No model from the host: only what the plugin exports.
    run(&[plugin], &[], &opts, |_| {})
}

#[test]
fn a_loaded_plugin_brings_its_model_and_matches_the_built_in_case_by_case() {
    let builtins = Registry::with_builtins().unwrap();
    for (name, stem, model) in [
        ("mock", "ioasis_mock", ""),
        ("mock", "ioasis_mock", r#"without = ["dirty"]"#),
        ("vtd", "ioasis_vtd", ""),
        ("vtd", "ioasis_vtd", r#"generation = "legacy-no-qi""#),
    ] {
        let loaded = Arc::new(Plugin::load(&cdylib(stem)).unwrap());
        assert!(loaded.model_factory().is_some(), "{stem} exports its model");
        let from_so = suite(loaded, model);
        let built_in = suite(builtins.get(name).unwrap(), model);
        assert!(from_so.passed(), "{stem} with {model:?}: {}", from_so.summary());
        assert!(from_so.results.iter().any(|c| matches!(c.outcome, Outcome::Passed(_))), "{stem}: something ran");
        assert_eq!(outcomes(&from_so), outcomes(&built_in), "{stem} with {model:?}");
    }
}

#[test]
fn a_plugin_without_a_model_is_told_where_it_can_run() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../framework/fixtures/interface-0.2/libioasis_mock_0_2.so");
    let old = Arc::new(Plugin::load(&path).unwrap());
    assert!(old.model_factory().is_none());
    let r = suite(old, "");
    for c in &r.results {
        let Outcome::Skipped(why) = &c.outcome else { panic!("{}/{} ran without a model", c.category, c.case) };
        assert!(why.contains("exports no hardware model") && why.contains("--platform qemu"), "{why}");
    }
}
