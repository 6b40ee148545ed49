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
fn a_plugin_without_a_model_is_skipped_not_passed() {
    let reg = Registry::with_builtins().unwrap();
    let plugins: Vec<_> = reg.iter().cloned().collect();
    let report = run(&plugins, &[], &Options::default(), |_| {});
    assert!(report.results.iter().all(|r| matches!(r.outcome, Outcome::Skipped(_))));
}

#[test]
fn the_filter_selects_cases() {
    let reg = Registry::with_builtins().unwrap();
    let plugins: Vec<_> = reg.iter().cloned().collect();
    let opts = Options { filter: Some("invalidation/no-stale".into()), seed: 1, ..Default::default() };
    let report = run(&plugins, &[&MockModelFactory], &opts, |_| {});
    assert_eq!(report.results.len(), 1);
    assert_eq!(report.results[0].reproduce(), "ioasis conformance --filter invalidation/no-stale-iotlb --seed 1");
}
