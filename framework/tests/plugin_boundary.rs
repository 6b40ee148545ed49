//! The plugin boundary: loading the mock from its .so, refusing incompatible plugins, panics.

mod common;

use std::sync::Arc;

use common::{cdylib, Rig, MB};
use ioasis::abi::ErrorCode;
use ioasis::loader::{LoadError, NameError, Origin, Plugin, Registry};
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
    let loaded = reg.load_as(&path, "mock-so").unwrap();
    assert_eq!(loaded.origin, Origin::Path(path.clone()));
    assert_eq!(loaded.info.name, "mock", "the plugin's own name is kept");
    assert_eq!(loaded.name, "mock-so");
    assert!(reg.get("mock").is_some_and(|m| m.origin == Origin::Builtin));
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
fn a_plugin_with_a_reserved_name_is_refused_unless_renamed() {
    let path = cdylib("ioasis_mock");
    // Without built-ins too: the name is reserved, not merely taken.
    let e = Registry::new().load(&path).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(&e, LoadError::Name { error: NameError::Reserved(n), .. } if n == "mock"), "{msg}");
    assert!(msg.contains("reserved") && msg.contains("--plugin NAME=PATH"), "{msg}");
    // Renaming to a reserved or malformed name does not get round it.
    let e = Registry::new().load_as(&path, "vtd").unwrap_err();
    assert!(matches!(e, LoadError::Name { error: NameError::Reserved(_), .. }), "{e}");
    let e = Registry::new().load_as(&path, "Mock_2").unwrap_err();
    assert!(matches!(e, LoadError::Name { error: NameError::Malformed { .. }, .. }), "{e}");
}

#[test]
fn a_vendor_plugin_loads_under_its_own_name() {
    let path = cdylib("ioasis_fixture_vendor_acme");
    let mut reg = Registry::with_builtins().unwrap();
    let acme = reg.load(&path).unwrap();
    assert_eq!((acme.name.as_str(), acme.info.name.as_str()), ("acme-iommu", "acme-iommu"));
    assert_eq!(acme.origin, Origin::Path(path));
}

#[test]
fn a_name_clash_is_an_error_naming_both_origins() {
    let path = cdylib("ioasis_mock");
    let mut reg = Registry::new();
    reg.load_as(&path, "acme-one").unwrap();
    let e = reg.load_as(&path, "acme-one").unwrap_err();
    let msg = e.to_string();
    match &e {
        LoadError::NameClash { name, first, second } => {
            assert_eq!(name, "acme-one");
            assert_eq!(*first, Origin::Path(path.clone()));
            assert_eq!(*second, Origin::Path(path.clone()));
        }
        other => panic!("not a clash: {other}"),
    }
    assert!(msg.contains("two plugins named `acme-one`") && msg.contains(&path.display().to_string()), "{msg}");
    assert_eq!(reg.iter().count(), 1, "nothing was renamed behind the user's back");
    // A plugin added directly, built-in names included, clashes the same way.
    let mut reg = Registry::with_builtins().unwrap();
    let e = reg.add(Plugin::load_as(&path, "acme-two").unwrap()).map(|_| ());
    assert!(e.is_ok());
    let e = reg.load_as(&path, "acme-two").unwrap_err();
    assert!(matches!(e, LoadError::NameClash { .. }), "{e}");
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
    assert_eq!(ok.len(), 0);
    assert_eq!(failed.len(), 2);
    assert!(matches!(failed[0], LoadError::Name { error: NameError::Reserved(_), .. }), "{}", failed[0]);
    assert!(matches!(failed[1], LoadError::InterfaceMismatch { .. }), "{}", failed[1]);
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
    assert!(matches!(e, LoadError::BadFile { .. }), "{e}");
    assert!(e.to_string().contains("No such file or directory"), "{e}");
}

/// Files that cannot be plugins are refused before the dynamic loader maps them, saying why
/// (a truncated library would be mapped and SIGBUS on first touch; a FIFO would block dlopen);
/// a shared object that the dynamic loader refuses keeps its words (dlerror()).
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_env = "gnu"))]
#[test]
fn bad_plugin_files_are_refused_in_words_that_say_why() {
    let real = std::fs::read(cdylib("ioasis_mock")).unwrap();
    // A 32-bit ELF (another architecture): the same bytes with EI_CLASS = ELFCLASS32.
    let mut class32 = real.clone();
    class32[4] = 1;
    let mut arm = real.clone();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes());
    // A library with a dependency that is not there: libgcc_s.so.1, which every Rust cdylib
    // needs, renamed in its dynamic string table (same length, so nothing else moves).
    let needed = b"libgcc_s.so.1\0";
    let at = real.windows(needed.len()).position(|w| w == needed).expect("the cdylib needs libgcc_s.so.1");
    let mut missing_dep = real.clone();
    missing_dep[at..at + needed.len()].copy_from_slice(b"libnothere.so\0");
    let bad_file: [(&str, Vec<u8>, &str); 5] = [
        ("libgarbage.so", b"this is not an ELF file, just text long enough to be read".repeat(8), "not an ELF file"),
        ("libshort.so", real[..32].to_vec(), "too short"),
        ("libtruncated.so", real[..real.len() * 6 / 10].to_vec(), "truncated"),
        ("libclass32.so", class32, "class 1"),
        ("libarm.so", arm, "built for AArch64, this host is x86-64"),
    ];
    let dir = std::env::temp_dir().join(format!("ioasis-dlopen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, bytes, words) in bad_file {
        let path = dir.join(file);
        std::fs::write(&path, bytes).unwrap();
        let e = Plugin::load(&path).unwrap_err();
        assert!(matches!(e, LoadError::BadFile { .. }), "{file}: {e}");
        let msg = e.to_string();
        assert!(msg.contains(words) && msg.contains(&path.display().to_string()), "{file}: {msg}");
    }
    let path = dir.join("libmissingdep.so");
    std::fs::write(&path, missing_dep).unwrap();
    let e = Plugin::load(&path).unwrap_err();
    assert!(matches!(e, LoadError::Open { .. }), "{e}");
    assert!(e.to_string().contains("libnothere.so: cannot open shared object file: No such file or directory"), "{e}");
    // A FIFO named like a library: refused at once, not a dlopen that blocks forever.
    let fifo = dir.join("libfifo.so");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    let e = Plugin::load(&fifo).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    // A directory of them and one good plugin: the good one loads, each bad one is named.
    std::fs::copy(cdylib("ioasis_fixture_vendor_acme"), dir.join("libacme.so")).unwrap();
    let mut reg = Registry::new();
    let (ok, failed) = reg.load_dir(&dir).unwrap();
    assert_eq!(ok.len(), 1, "{failed:?}");
    assert_eq!(failed.len(), 7, "{failed:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The mock's `panic_on` has no guard of its own around it: the framework's glue
/// ([`ioasis::plugin`]) contains the panic, and the plugin is out of service from then on.
#[test]
fn a_panic_inside_the_loaded_plugin_becomes_an_error_and_the_plugin_is_out_of_service() {
    let loaded = Arc::new(Plugin::load_as(&cdylib("ioasis_mock"), "mock-so").unwrap());
    let rig = Rig::with_params(&[cap::FULL], &loaded, "panic_on = \"map\"");
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    assert!(loaded.failed().is_none());
    let e = rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(0), 0x1000, Prot::RW).unwrap_err();
    assert_eq!(e.plugin_code(), Some(ErrorCode::PANICKED), "{e}");
    assert!(e.to_string().contains("injected panic in map"), "{e}");
    // Nothing was recorded; the plugin is marked failed, on both sides of the boundary.
    assert!(rig.ctx.areas(ioas).unwrap().is_empty());
    assert!(loaded.failed().is_some_and(|why| why.contains("injected panic in map")), "{:?}", loaded.failed());
    // Every later call is refused without entering the plugin, naming the first panic.
    let e = rig.ctx.detach(dev, None).unwrap_err();
    assert_eq!(e.plugin_code(), Some(ErrorCode::PANICKED), "{e}");
    assert!(e.to_string().contains("failed earlier (panicked in map"), "{e}");
    let e = rig.ctx.add_unit(&loaded, "u9", PhysAddr(common::UNIT_BASE + 0x10_0000), 0, "").unwrap_err();
    assert!(matches!(e, ioasis::Error::PluginFailed { .. }), "{e}");
    // The host forgets its objects all the same; the process carries on.
    let e = rig.ctx.teardown().unwrap_err();
    assert_eq!(e.plugin_code(), Some(ErrorCode::PANICKED), "{e}");
    assert!(rig.ctx.areas(ioas).is_err());
    // Another load of the same library is a new backend, in service.
    let again = Arc::new(Plugin::load_as(&cdylib("ioasis_mock"), "mock-so-2").unwrap());
    let rig = Rig::with_params(&[cap::FULL], &again, "");
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(0), 0x1000, Prot::RW).unwrap();
    assert!(again.failed().is_none());
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
/// loads into this host (under another name: `mock` is the built-in's), drives a unit, and its
/// units refuse the 0.3 vIOMMU with the default.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[test]
fn a_plugin_built_against_interface_0_2_still_loads_and_refuses_what_it_lacks() {
    use ioasis::abi::{ViommuFlags, ViommuKind};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/interface-0.2/libioasis_mock_0_2.so");
    let e = Plugin::load(&path).unwrap_err();
    assert!(matches!(e, LoadError::Name { error: NameError::Reserved(_), .. }), "{e}");
    let old = Arc::new(Plugin::load_as(&path, "mock-0-2").unwrap());
    assert_eq!((old.name.as_str(), old.info.name.as_str()), ("mock-0-2", "mock"));
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
    let new = Arc::new(Plugin::load_as(&cdylib("ioasis_mock"), "mock-0-3").unwrap());
    assert!(new.ext_0_3().is_some());
    let rig = Rig::with_units(&[cap::FULL], &new);
    let dev = rig.paging_device(1, 0, &[]);
    let ioas = rig.ctx.alloc_ioas();
    rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
    let parent = rig.ctx.attached_hwpt(dev, None).unwrap().unwrap();
    rig.ctx.alloc_viommu(parent, ViommuKind::MOCK, ViommuFlags::default()).unwrap();
}
