//! The suite checks itself: deliberately broken variants of the mock must each fail, in the
//! category where the bug belongs; the correct mock passes; a cut-down unit skips, not fails.

use std::collections::BTreeSet;

use ioasis::loader::Registry;
use ioasis_conformance::{run, Options, Outcome, Report};
use ioasis_plugin_mock::MockModelFactory;

fn suite(params: &str, model: &str) -> Report {
    let reg = Registry::with_builtins().unwrap();
    let plugins: Vec<_> = reg.iter().cloned().collect();
    let opts = Options {
        seed: 11,
        unit_params: params.to_string(),
        unit_model: toml::from_str(model).unwrap(),
        ..Default::default()
    };
    run(&plugins, &[&MockModelFactory], &opts, |_| {})
}

fn failed_categories(r: &Report) -> BTreeSet<String> {
    r.results.iter().filter(|c| matches!(c.outcome, Outcome::Failed(_))).map(|c| c.category.clone()).collect()
}

#[test]
fn the_correct_mock_passes() {
    let r = suite("", "");
    assert!(r.passed(), "{}", r.summary());
    assert!(r.results.iter().all(|c| matches!(c.outcome, Outcome::Passed(_))), "the full mock skips nothing");
}

#[test]
fn each_broken_variant_fails_in_its_category() {
    let variants = [
        ("skip-iotlb-invalidation", "invalidation"),
        ("unmap-off-by-one", "map-unmap"),
        ("leak-on-error", "fail-nth"),
        ("ignore-read-only", "permissions"),
        ("wrong-fault-source", "faults"),
        ("misaligned-large-page", "page-sizes"),
        ("stage2-faults-unflagged", "viommu"),
    ];
    for (defect, category) in variants {
        let r = suite(&format!("defect = \"{defect}\""), "");
        let failed = failed_categories(&r);
        assert!(
            failed.contains(category),
            "{defect}: expected a failure in {category}, failed in {failed:?}\n{}",
            r.summary()
        );
        assert!(!r.passed());
        assert!(r.summary().contains(&format!("FAILED mock {category}/")), "{}", r.summary());
        assert!(r.summary().contains("reproduce: ioasis conformance --filter"), "{}", r.summary());
    }
}

#[test]
fn a_cut_down_unit_skips_what_it_lacks() {
    let r = suite("", r#"without = ["pasid", "nesting", "dirty", "page-faults"]"#);
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
    let r = suite(
        "",
        r#"ias = 39
page_sizes = ["4K"]
pasid_bits = 8"#,
    );
    assert!(r.passed(), "{}", r.summary());
}
