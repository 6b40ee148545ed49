//! The suite checks itself: deliberately broken variants of the mock must each fail, in the
//! category where the bug belongs; the correct mock passes; a cut-down unit skips, not fails.

use std::collections::BTreeSet;

use ioasis::loader::Registry;
use ioasis_conformance::{run, Options, Outcome, Report};
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
        assert!(r.summary().contains("reproduce: ioasis conformance --filter"), "{}", r.summary());
    }
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
