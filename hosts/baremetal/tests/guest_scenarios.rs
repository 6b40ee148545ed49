//! The host-independent scenarios (`ioasis-host-scenarios`) on the bare-metal harness: a mock
//! unit with two devices; every scenario must pass.

use std::sync::Arc;

use ioasis::guest::GuestHost;
use ioasis::loader::Registry;
use ioasis::{Context, DeviceDesc, PhysAddr, RequesterId};
use ioasis_baremetal::{BareMetalHost, Machine, MachineConfig};
use ioasis_plugin_mock::format::cap;
use ioasis_plugin_mock::model::MockModel;

const MB: u64 = 1 << 20;
const UNIT_BASE: u64 = 0xfed0_0000;

#[test]
fn every_host_scenario_passes_on_bare_metal() {
    let machine = Arc::new(Machine::new(MachineConfig { ram_bytes: 64 * MB, table_pool_bytes: 8 * MB }).unwrap());
    let ctx = Arc::new(Context::new(machine.clone()));
    machine.add_unit(PhysAddr(UNIT_BASE), 0x1000, Arc::new(MockModel::new(cap::FULL))).unwrap();
    let plugin = Registry::with_builtins().unwrap().get("mock").unwrap();
    ctx.add_unit(&plugin, "u0", PhysAddr(UNIT_BASE), 0, "").unwrap();
    let devices = (3..5)
        .map(|d| ctx.bind_device(DeviceDesc::pci(&format!("dev{d}"), RequesterId::new(0, 0, d, 0), "u0")).unwrap())
        .collect();
    let host = BareMetalHost::new(ctx.clone(), devices);
    let outcomes = ioasis_host_scenarios::run_all(&host, &host.assignable());
    assert_eq!(outcomes.len(), ioasis_host_scenarios::SCENARIOS.len());
    for o in &outcomes {
        assert!(o.result.is_ok(), "{}: {:?}", o.name, o.result);
    }
    // The mock grants all the refusal scenario asks for but page faults, which these devices
    // (no PRI capability) cannot use.
    let refusals = outcomes.iter().find(|o| o.name == "refusals-have-reasons").unwrap();
    assert_eq!(refusals.result.as_deref(), Ok("refused: I/O page faults: device has no PRI capability"));
    ctx.teardown().unwrap();
    assert_eq!(ctx.table_pages(), 0, "teardown freed every table page");
}
