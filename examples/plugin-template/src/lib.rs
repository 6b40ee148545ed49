//! acme-tiny: an ioasis backend plugin for a deliberately small IOMMU, and the template a
//! vendor copies to write a plugin for its own unit.
//!
//! - `SPEC.md`: the unit's hardware specification; [`layout`]: every bit of it.
//! - [`driver`]: the plugin proper ([`ioasis::abi::Backend`], `Unit`, `Hwpt`), programming the
//!   unit only through the host services it is given, with the framework's page-table walker.
//! - [`model`]: the unit itself, as the conformance suite runs the driver against it
//!   ([`ioasis::platform::UnitModel`]), exported by [`factory`] (interface 0.4).
//! - Below: the root module, the 0.4 extension, and the export that makes the cdylib a plugin.

pub mod driver;
pub mod error;
pub mod factory;
pub mod layout;
pub mod model;

use abi_stable::prefix_type::WithMetadata;
use abi_stable::sabi_extern_fn;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult, RString};
use ioasis::abi::{
    guard, BackendBox, Backend_TO, ModelFactoryBox, PluginError, PluginExt04, PluginExt04_Ref, PluginInfo, PluginRoot,
    PluginRoot_Ref, INTERFACE_VERSION,
};

pub use driver::AcmeBackend;
pub use factory::AcmeModelFactory;

/// The plugin's name: `<vendor>-<what>`, lowercase, unique among the plugins a host loads.
pub const NAME: &str = "acme-tiny";

#[sabi_extern_fn]
fn info() -> PluginInfo {
    PluginInfo {
        name: RString::from(NAME),
        version: RString::from(env!("CARGO_PKG_VERSION")),
        vendor: RString::from("Acme"),
        description: RString::from("acme-tiny IOMMU: 4 KiB paging, 16-bit requester ids (plugin template)"),
    }
}

#[sabi_extern_fn]
fn new_backend() -> RResult<BackendBox, PluginError> {
    guard("new_backend", || Ok(Backend_TO::from_ptr(RArc::new(AcmeBackend), TD_Opaque)))
}

const ROOT: &WithMetadata<PluginRoot> =
    &WithMetadata::new(PluginRoot { interface: INTERFACE_VERSION, info, new_backend });

/// The plugin's root module.
pub fn root_module() -> PluginRoot_Ref {
    PluginRoot_Ref(ROOT.static_as_prefix())
}

#[sabi_extern_fn]
fn model_factory() -> ModelFactoryBox {
    ioasis::abi::export_model_factory(AcmeModelFactory)
}

const EXT_0_4: &WithMetadata<PluginExt04> = &WithMetadata::new(PluginExt04 { model_factory });

/// The plugin's interface 0.4 extension: its hardware model, for the conformance suite.
pub fn ext_0_4() -> PluginExt04_Ref {
    PluginExt04_Ref(EXT_0_4.static_as_prefix())
}

// Optional: a host that links this crate (the rlib) has the plugin built in.
inventory::submit! {
    ioasis::loader::Builtin { name: NAME, root: root_module, ext_0_3: None, ext_0_4: Some(ext_0_4) }
}

// The cdylib's exports: the root module, the interface version, the 0.4 extension. (No
// `ext_0_3`: the unit has no vIOMMU.)
ioasis::export_plugin!(crate::root_module, ext_0_4 = crate::ext_0_4);
