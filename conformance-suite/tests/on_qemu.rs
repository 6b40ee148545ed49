//! The suite on QEMU: the VT-d plugin against QEMU 7.2's own intel-iommu, legacy and scalable
//! mode, with the edu device as the DMA engine. No case may fail; what QEMU cannot do (PASID,
//! nesting, dirty bits, page requests; parallel or concurrent DMA) is skipped with its reason.
//!
//! Prerequisite: `qemu-system-x86_64`. When it is missing the tests say why and pass, except
//! under `CI=true`, where a missing prerequisite fails them.

use std::time::Instant;

use ioasis::loader::Registry;
use ioasis_conformance::{run, Options, Outcome, PlatformChoice, QemuProfile, Report};
use ioasis_plugin_mock::MockModelFactory;

/// Cases that must pass on each profile (everything but what QEMU 7.2's VT-d lacks).
const AT_LEAST_PASSED: usize = 27;

/// True when QEMU is installed; otherwise skips (or, under `CI=true`, fails).
fn prerequisite(profile: QemuProfile) -> bool {
    match PlatformChoice::Qemu(profile).available() {
        Ok(()) => true,
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("missing prerequisite under CI=true: {why}")
        }
        Err(why) => {
            eprintln!("SKIP: {why}");
            false
        }
    }
}

fn suite(profile: QemuProfile, filter: Option<&str>) -> Report {
    // Links the crate in (its built-in registration only exists when something of it is used).
    std::hint::black_box(ioasis_plugin_vtd::root_module());
    let reg = Registry::with_builtins().expect("built-ins");
    let plugins: Vec<_> = reg.iter().cloned().collect();
    assert!(plugins.iter().any(|p| p.name == "vtd"), "vtd is built in");
    let opts = Options {
        seed: 11,
        filter: filter.map(String::from),
        platform: PlatformChoice::Qemu(profile),
        ..Default::default()
    };
    run(&plugins, &[&MockModelFactory], &opts, |r| {
        eprintln!("[{}] {} {}/{} ({} ms): {:?}", profile.name(), r.plugin, r.category, r.case, r.millis, r.outcome)
    })
}

fn whole_suite_on(profile: QemuProfile) {
    if !prerequisite(profile) {
        return;
    }
    let t = Instant::now();
    let report = suite(profile, None);
    let took = t.elapsed();
    let name = profile.name();
    assert!(report.passed(), "[{name}] {}", report.summary());
    // The mock has no QEMU profile: every case of it is skipped, saying so.
    for r in report.results.iter().filter(|r| r.plugin == "mock") {
        match &r.outcome {
            Outcome::Skipped(why) if why.contains("QEMU emulates no unit for `mock`") => {}
            other => panic!("[{name}] mock {}/{}: {other:?}", r.category, r.case),
        }
    }
    let vtd: Vec<_> = report.results.iter().filter(|r| r.plugin == "vtd").collect();
    let passed = vtd.iter().filter(|r| matches!(r.outcome, Outcome::Passed(_))).count();
    let mut skipped = String::new();
    for r in &vtd {
        if let Outcome::Skipped(why) = &r.outcome {
            skipped.push_str(&format!("\n  {}/{}: {why}", r.category, r.case));
            // A skip on QEMU is a capability QEMU's unit lacks or a named platform limit.
            assert!(
                why.starts_with("the unit has")
                    || why.starts_with("the unit cannot")
                    || why.starts_with("platform limit:"),
                "[{name}] {}/{} skipped for an unexpected reason: {why}",
                r.category,
                r.case
            );
        }
    }
    eprintln!("[{name}] {passed} of {} vtd cases passed on QEMU in {took:?}; skipped:{skipped}", vtd.len());
    assert!(passed >= AT_LEAST_PASSED, "[{name}] only {passed} cases passed:\n{}", report.summary());
    for must in ["concurrency/threads-map-unmap-and-dma", "concurrency/parallel-devices"] {
        let r = vtd.iter().find(|r| format!("{}/{}", r.category, r.case) == must).expect("the case ran");
        assert!(
            matches!(&r.outcome, Outcome::Skipped(why) if why.starts_with("platform limit:")),
            "[{name}] {must} must be skipped as a platform limit: {:?}",
            r.outcome
        );
    }
}

#[test]
fn the_suite_passes_on_qemu_vtd_legacy() {
    whole_suite_on(QemuProfile::VtdLegacy);
}

#[test]
fn the_suite_passes_on_qemu_vtd_scalable() {
    whole_suite_on(QemuProfile::VtdScalable);
}

#[test]
fn a_failure_on_qemu_reproduces_on_qemu() {
    if !prerequisite(QemuProfile::VtdLegacy) {
        return;
    }
    // A probe that cannot succeed (an unknown backend parameter) fails every case at setup;
    // the command that reproduces it names the platform.
    let opts = Options {
        filter: Some("capabilities/stable".into()),
        unit_params: "no_such_parameter = 1".into(),
        platform: PlatformChoice::Qemu(QemuProfile::VtdLegacy),
        ..Default::default()
    };
    std::hint::black_box(ioasis_plugin_vtd::root_module());
    let reg = Registry::with_builtins().expect("built-ins");
    let vtd = reg.get("vtd").expect("vtd is built in");
    let report = run(&[vtd], &[], &opts, |_| {});
    let [r] = report.results.as_slice() else { panic!("{report:?}") };
    assert!(matches!(r.outcome, Outcome::Failed(_)), "{r:?}");
    assert_eq!(
        r.reproduce(),
        "ioasis conformance --backend vtd --unit-params 'no_such_parameter = 1' --filter capabilities/stable-across-reads \
         --seed 0 --platform qemu --qemu-profile vtd-legacy"
    );
}
