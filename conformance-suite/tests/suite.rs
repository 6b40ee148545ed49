//! The suite passes the mock backend and names failures with their reproduction.

use ioasis::loader::Registry;
use ioasis_conformance::{run, Options, Outcome};
use ioasis_plugin_mock::MockModelFactory;

#[test]
fn the_mock_passes_every_case() {
    let reg = Registry::with_builtins().unwrap();
    let plugins: Vec<_> = reg.iter().cloned().collect();
    let mut seen = 0;
    let report = run(&plugins, &[&MockModelFactory], &Options { seed: 7, ..Default::default() }, |_| seen += 1);
    assert!(report.passed(), "{}", report.summary());
    assert_eq!(seen, report.results.len());
    assert!(report.results.len() >= 25);
    assert!(report.summary().contains("map-unmap"));
}

#[test]
fn the_built_ins_bring_their_own_models() {
    // No model from the host: each built-in exports its own (interface 0.4).
    let reg = Registry::with_builtins().unwrap();
    let plugins: Vec<_> = reg.iter().cloned().collect();
    let report = run(&plugins, &[], &Options::default(), |_| {});
    assert!(report.passed(), "{}", report.summary());
    assert!(report.results.iter().any(|r| matches!(r.outcome, Outcome::Passed(_))));
    // A plugin without a model is skipped, never passed: tests/plugin_models.rs.
}

#[test]
fn the_filter_selects_cases() {
    let reg = Registry::with_builtins().unwrap();
    let plugins: Vec<_> = reg.iter().cloned().collect();
    let opts = Options { filter: Some("invalidation/no-stale".into()), seed: 1, ..Default::default() };
    let report = run(&plugins, &[&MockModelFactory], &opts, |_| {});
    assert_eq!(report.results.len(), 1);
    assert_eq!(
        report.results[0].reproduce(),
        "ioasis conformance --backend mock --filter invalidation/no-stale-iotlb --seed 1"
    );
}
