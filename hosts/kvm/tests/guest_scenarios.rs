//! The host-independent scenarios (`ioasis-host-scenarios`) on real KVM: every guest is a KVM
//! VM whose RAM slot is mirrored into its IOAS; every scenario must pass.

mod common;

use std::sync::Arc;

use ioasis::guest::GuestHost;
use ioasis::loader::Registry;
use ioasis::{Context, DeviceDesc, PhysAddr, RequesterId};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_kvm::KvmHost;
use ioasis_plugin_mock::format::cap;
use ioasis_plugin_mock::model::MockModel;

use common::{MB, UNIT_BASE};

#[test]
fn every_host_scenario_passes_on_kvm() {
    let machine = Arc::new(Machine::new(MachineConfig { ram_bytes: 128 * MB, table_pool_bytes: 8 * MB }).unwrap());
    // Probe KVM once; skips (or fails under CI=true) when it is unusable.
    if common::vm_or_skip(machine.clone()).is_none() {
        return;
    }
    let ctx = Arc::new(Context::new(machine.clone()));
    machine.add_unit(PhysAddr(UNIT_BASE), 0x1000, Arc::new(MockModel::new(cap::FULL))).unwrap();
    let plugin = Registry::with_builtins().unwrap().get("mock").unwrap();
    ctx.add_unit(&plugin, "u0", PhysAddr(UNIT_BASE), 0, "").unwrap();
    let devices = (3..5)
        .map(|d| ctx.bind_device(DeviceDesc::pci(&format!("dev{d}"), RequesterId::new(0, 0, d, 0), "u0")).unwrap())
        .collect();
    let host = KvmHost::new(machine.clone(), ctx.clone(), devices, 32 * MB, 16 * MB, 4);
    let outcomes = ioasis_host_scenarios::run_all(&host, &host.assignable());
    for o in &outcomes {
        assert!(o.result.is_ok(), "{}: {:?}", o.name, o.result);
    }
    // Every guest was destroyed: its IOAS (and its slot's mapping) is gone.
    let g = host.create_guest("after").unwrap();
    assert_eq!(g.id, 0, "guest RAM region 0 is free again");
    assert_eq!(ctx.areas(g.ioas).unwrap().len(), 1, "one RAM slot mapped");
    host.destroy_guest(g).unwrap();
    ctx.teardown().unwrap();
}
