//! The suite checks itself: deliberately broken variants of the mock must each fail, in the
//! category where the bug belongs; the correct mock passes; a cut-down unit skips, not fails.

use std::collections::BTreeSet;

use ioasis::loader::Registry;
use ioasis_conformance::{run, self_test, self_test_of, variants, Options, Outcome, Report};
use ioasis_plugin_mock::MockModelFactory;
use ioasis_plugin_vtd::factory::VtdModelFactory;

fn suite(params: &str, model: &str) -> Report {
    suite_of(None, params, model)
}

/// The suite on one built-in plugin (`Some(name)`) or on all of them.
fn suite_of(plugin: Option<&str>, params: &str, model: &str) -> Report {
    let reg = Registry::with_builtins().unwrap();
    let plugins: Vec<_> = reg.iter().filter(|p| plugin.is_none_or(|n| p.name == n)).cloned().collect();
    let opts = Options {
        seed: 11,
        unit_params: params.to_string(),
        unit_model: toml::from_str(model).unwrap(),
        ..Default::default()
    };
    run(&plugins, &[&MockModelFactory, &VtdModelFactory], &opts, |_| {})
}

#[test]
fn the_correct_mock_passes() {
    let r = suite("", "");
    assert!(r.passed(), "{}", r.summary());
    assert!(r.results.iter().all(|c| matches!(c.outcome, Outcome::Passed(_))), "the full mock skips nothing");
}

#[test]
fn each_broken_variant_fails_in_its_category() {
    for v in ioasis_conformance::variants::all() {
        let r = suite_of(Some(v.plugin), &format!("defect = \"{}\"", v.defect), v.model);
        let failed: BTreeSet<String> = r
            .results
            .iter()
            .filter(|c| c.plugin == v.plugin && matches!(c.outcome, Outcome::Failed(_)))
            .map(|c| c.category.clone())
            .collect();
        assert!(
            failed.contains(v.category),
            "{} {}: expected a failure in {}, failed in {failed:?}\n{}",
            v.plugin,
            v.defect,
            v.category,
            r.summary()
        );
        assert!(!r.passed());
        assert!(r.summary().contains(&format!("FAILED {} {}/", v.plugin, v.category)), "{}", r.summary());
        let line =
            format!("reproduce: ioasis conformance --backend {} --unit-params 'defect = \"{}\"'", v.plugin, v.defect);
        assert!(r.summary().contains(&line), "{}", r.summary());
    }
}

#[test]
fn the_correct_mock_passes_on_a_unit_with_latency() {
    let r = suite_of(Some("mock"), "", "latency = 4");
    assert!(r.passed(), "{}", r.summary());
    assert!(r.results.iter().all(|c| matches!(c.outcome, Outcome::Passed(_))), "{}", r.summary());
}

#[test]
fn a_driver_that_does_not_wait_is_caught_only_on_a_late_unit() {
    let v = variants::MOCK.iter().find(|v| v.defect == "no-invalidation-wait").unwrap();
    assert_eq!(v.model, "latency = 4");
    let params = format!("defect = \"{}\"", v.defect);
    let prompt = suite_of(Some("mock"), &params, "");
    assert!(prompt.passed(), "without latency the bug does not show:\n{}", prompt.summary());
    let late = suite_of(Some("mock"), &params, v.model);
    assert!(late.summary().contains("FAILED mock invalidation/"), "{}", late.summary());
}

#[test]
fn the_self_test_catches_every_variant() {
    assert!(variants::MOCK.len() >= 14, "{} mock variants", variants::MOCK.len());
    let reg = Registry::with_builtins().unwrap();
    let plugins: Vec<_> = reg.iter().cloned().collect();
    let mut seen = 0;
    let results = self_test(&plugins, &[&MockModelFactory, &VtdModelFactory], 5, |_| seen += 1);
    assert_eq!(results.len(), variants::all().count());
    assert_eq!(seen, results.len());
    for r in &results {
        assert!(r.caught(), "{} {} not caught in {}: {:?}", r.plugin, r.variant, r.expected_category, r.caught_in);
    }
    // Only the plugins given are tested.
    let mock: Vec<_> = reg.iter().filter(|p| p.name == "mock").cloned().collect();
    let only = self_test(&mock, &[&MockModelFactory], 5, |_| {});
    assert_eq!(only.len(), variants::MOCK.len());
    assert!(only.iter().all(|r| r.plugin == "mock"));
}

#[test]
fn the_self_test_counts_no_catch_for_a_variant_that_cannot_run() {
    let reg = Registry::with_builtins().unwrap();
    let mock: Vec<_> = reg.iter().filter(|p| p.name == "mock").cloned().collect();
    let base = variants::Variant { plugin: "mock", defect: "", category: "map-unmap", bug: "", model: "" };
    let bad = [
        variants::Variant { defect: "no-such-defect", ..base },
        variants::Variant { defect: "unmap-off-by-one", model: "latency = [", ..base },
        variants::Variant { defect: "unmap-off-by-one", model: "teleport = true", ..base },
        variants::Variant { plugin: "nosuch", ..base },
    ];
    let results = self_test_of(&bad, &mock, &[&MockModelFactory], 1, |_| {});
    assert_eq!(results.len(), 3, "{results:?}");
    for r in &results {
        assert!(!r.caught(), "{r:?}");
        assert!(r.error.is_some(), "{r:?}");
    }
    // And a sound variant in the wrong category is missed, with where it was caught.
    let wrong = [variants::Variant { defect: "unmap-off-by-one", category: "dirty", ..base }];
    let r = &self_test_of(&wrong, &mock, &[&MockModelFactory], 1, |_| {})[0];
    assert!(!r.caught() && r.error.is_none() && r.caught_in == ["map-unmap"], "{r:?}");
}

#[test]
fn a_cut_down_unit_skips_what_it_lacks() {
    let r = suite_of(Some("mock"), "", r#"without = ["pasid", "nesting", "dirty", "page-faults"]"#);
    assert!(r.passed(), "{}", r.summary());
    let skipped: BTreeSet<String> = r
        .results
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Skipped(_)))
        .map(|c| format!("{}/{}", c.category, c.case))
        .collect();
    for case in ["pasid/pasid-attach", "nested/x86-64-stage1-over-stage2", "dirty/writes-reported-and-cleared"] {
        assert!(skipped.contains(case), "{case} not skipped: {skipped:?}");
    }
    // The negotiation matrix still runs, and checks the refusals.
    assert!(r
        .results
        .iter()
        .any(|c| c.case == "grants-follow-capabilities" && matches!(c.outcome, Outcome::Passed(_))));
}

#[test]
fn a_narrow_unit_with_small_pages_passes() {
    let r = suite_of(
        Some("mock"),
        "",
        r#"ias = 39
page_sizes = ["4K"]
pasid_bits = 8"#,
    );
    assert!(r.passed(), "{}", r.summary());
}
