//! The plugin boundary: loading the mock from its .so, refusing incompatible plugins, panics.

mod common;

use std::sync::Arc;

use common::{cdylib, Rig, MB};
use ioasis::abi::ErrorCode;
use ioasis::loader::{LoadError, Origin, Plugin, Registry};
use ioasis::{Iova, PhysAddr, Prot, Target};
use ioasis_plugin_mock::format::cap;

#[test]
fn builtins_are_registered_with_their_origin() {
    let reg = Registry::with_builtins().unwrap();
    let mock = reg.get("mock").unwrap();
    assert_eq!(mock.origin, Origin::Builtin);
    assert_eq!(mock.interface, ioasis::abi::INTERFACE_VERSION);
    assert_eq!(mock.info.vendor, "ioasis project");
}

#[test]
fn the_mock_loaded_from_its_so_drives_a_unit() {
    let path = cdylib("ioasis_mock");
    let mut reg = Registry::with_builtins().unwrap();
    let loaded = reg.load(&path).unwrap();
    assert_eq!(loaded.origin, Origin::Path(path.clone()));
    assert_eq!(loaded.info.name, "mock");
    assert_eq!(loaded.name, "mock@libioasis_mock", "a second `mock` gets a unique name");
    let rig = Rig::with_units(&[cap::FULL], &loaded);
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    rig.ctx.map(ioas, Some(Iova(0x20_0000)), PhysAddr(0x40_0000), 2 * MB, Prot::RW).unwrap();
    rig.dma_write(0, 1, None, 0x20_0100, b"from the .so").unwrap();
    assert_eq!(rig.ram(0x40_0100, 12), b"from the .so");
    rig.ctx.teardown().unwrap();
    assert_eq!(rig.ctx.table_pages(), 0);
}

#[test]
fn load_dir_loads_plugins_and_reports_the_rest() {
    let dir = std::env::temp_dir().join(format!("ioasis-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(cdylib("ioasis_mock"), dir.join("libioasis_mock.so")).unwrap();
    std::fs::copy(cdylib("ioasis_fixture_abi_old"), dir.join("libold.so")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a plugin").unwrap();
    let mut reg = Registry::new();
    let (ok, failed) = reg.load_dir(&dir).unwrap();
    assert_eq!(ok.len(), 1);
    assert_eq!(failed.len(), 1);
    assert!(matches!(failed[0], LoadError::InterfaceMismatch { .. }));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_plugin_built_against_another_interface_is_refused_naming_both_versions() {
    let e = Plugin::load(&cdylib("ioasis_fixture_abi_old")).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, LoadError::InterfaceMismatch { .. }), "{msg}");
    let host = format!("speaks {}", ioasis::abi::INTERFACE_VERSION);
    assert!(msg.contains("interface 0.0") && msg.contains(&host), "{msg}");
}

#[test]
fn a_plugin_lying_about_its_interface_is_caught_by_the_abi_check() {
    let e = Plugin::load(&cdylib("ioasis_fixture_abi_liar")).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, LoadError::Abi { .. }), "{msg}");
    assert!(msg.contains("0.0.1") && msg.contains("0.1.0"), "abi_stable names both versions: {msg}");
}

#[test]
fn a_file_that_is_not_a_plugin_is_refused() {
    let e = Plugin::load(std::path::Path::new("/nonexistent/libnothing.so")).unwrap_err();
    assert!(matches!(e, LoadError::Open { .. }), "{e}");
}

#[test]
fn a_panic_inside_the_loaded_plugin_becomes_an_error() {
    let loaded = Arc::new(Plugin::load(&cdylib("ioasis_mock")).unwrap());
    let rig = Rig::with_params(&[cap::FULL], &loaded, "panic_on = \"map\"");
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    let e = rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(0), 0x1000, Prot::RW).unwrap_err();
    assert_eq!(e.plugin_code(), Some(ErrorCode::PANICKED), "{e}");
    assert!(e.to_string().contains("injected panic in map"), "{e}");
    // Nothing was recorded, and the process and the plugin carry on.
    assert!(rig.ctx.areas(ioas).unwrap().is_empty());
    rig.ctx.detach(dev, None).unwrap();
    rig.ctx.teardown().unwrap();
    assert_eq!(rig.ctx.table_pages(), 0);
}

#[test]
fn bad_unit_params_are_refused_at_probe() {
    let machine = Arc::new(ioasis_baremetal::Machine::new(Default::default()).unwrap());
    machine
        .add_unit(PhysAddr(common::UNIT_BASE), 0x1000, Arc::new(ioasis_plugin_mock::model::MockModel::new(cap::FULL)))
        .unwrap();
    let ctx = ioasis::Context::new(machine);
    let e = ctx.add_unit(&common::mock_plugin(), "u0", PhysAddr(common::UNIT_BASE), 0, "colour = 3").unwrap_err();
    assert_eq!(e.plugin_code(), Some(ErrorCode::INVALID), "{e}");
    // No unit behind the window at all: a host error, not a panic.
    let e = ctx.add_unit(&common::mock_plugin(), "u1", PhysAddr(0xdead_0000), 0, "").unwrap_err();
    assert_eq!(e.plugin_code(), Some(ErrorCode::HOST), "{e}");
}

/// The mock's cdylib as built against interface 0.2 (framework/fixtures/interface-0.2): it
/// loads into this host, drives a unit, and its units refuse the 0.3 vIOMMU with the default.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn a_plugin_built_against_interface_0_2_still_loads_and_refuses_what_it_lacks() {
    use ioasis::abi::{ViommuFlags, ViommuKind};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/interface-0.2/libioasis_mock_0_2.so");
    let old = Arc::new(Plugin::load(&path).unwrap());
    assert_eq!(old.interface, ioasis::abi::InterfaceVersion { major: 0, minor: 2 });
    const { assert!(ioasis::abi::INTERFACE_VERSION.minor > 2, "the host is newer than the plugin") };
    let rig = Rig::with_units(&[cap::FULL], &old);
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    rig.ctx.map(ioas, Some(Iova(0x20_0000)), PhysAddr(0x40_0000), 2 * MB, Prot::RW).unwrap();
    rig.dma_write(0, 1, None, 0x20_0100, b"built for 0.2").unwrap();
    assert_eq!(rig.ram(0x40_0100, 13), b"built for 0.2");
    let parent = rig.ctx.attached_hwpt(dev, None).unwrap().unwrap();
    let e = rig.ctx.alloc_viommu(parent, ViommuKind::MOCK, ViommuFlags::default()).unwrap_err();
    assert_eq!(e.plugin_code(), Some(ErrorCode::UNSUPPORTED), "{e}");
    assert!(e.to_string().contains("offers no vIOMMU objects"), "{e}");
    rig.ctx.teardown().unwrap();
    assert_eq!(rig.ctx.table_pages(), 0);
    // The same request to today's build of the same plugin, loaded from its .so, is granted:
    // its 0.3 extension was found and checked.
    let new = Arc::new(Plugin::load(&cdylib("ioasis_mock")).unwrap());
    assert!(new.ext_0_3().is_some());
    let rig = Rig::with_units(&[cap::FULL], &new);
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    let parent = rig.ctx.attached_hwpt(dev, None).unwrap().unwrap();
    rig.ctx.alloc_viommu(parent, ViommuKind::MOCK, ViommuFlags::default()).unwrap();
}
