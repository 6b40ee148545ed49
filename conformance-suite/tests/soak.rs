//! The soak on each bundled plugin, for 2 s (`ioasis soak --seconds 600` is the long run):
//! every invariant holds while threads map, unmap, attach, DMA and tear down at once.

use std::time::Duration;

use ioasis::loader::Registry;
use ioasis_conformance::{soak, Options};
use ioasis_plugin_mock::MockModelFactory;
use ioasis_plugin_vtd::factory::VtdModelFactory;

fn soak_of(name: &str, factory: &dyn ioasis::platform::ModelFactory, model: &str) {
    let reg = Registry::with_builtins().unwrap();
    let plugin = reg.get(name).unwrap();
    let opts = Options { unit_model: toml::from_str(model).unwrap(), ..Default::default() };
    let r = soak(&plugin, factory, &opts, Duration::from_secs(2)).unwrap();
    println!("{}", r.summary());
    assert!(r.violations.is_empty(), "{}:\n{}", r.summary(), r.violations.join("\n"));
    assert!(r.dma_landed > 0 && r.dma_faulted > 0, "both outcomes were exercised: {}", r.summary());
    assert!(r.lifecycles > 0 && r.attaches > 0 && r.maps > 0, "{}", r.summary());
}

#[test]
fn the_mock_keeps_every_invariant_under_the_soak() {
    soak_of("mock", &MockModelFactory, "");
}

#[test]
fn vtd_keeps_every_invariant_under_the_soak_in_scalable_mode() {
    soak_of("vtd", &VtdModelFactory, "");
}

#[test]
fn vtd_keeps_every_invariant_under_the_soak_in_legacy_mode() {
    soak_of("vtd", &VtdModelFactory, "generation = \"legacy\"");
}
