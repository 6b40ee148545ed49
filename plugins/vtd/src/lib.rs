//! The Intel VT-d backend: a driver that programs VT-d remapping units (legacy and scalable
//! mode), and a model of the hardware that reads what it writes.

mod driver;
pub mod factory;
pub mod layout;
pub mod model;

use abi_stable::prefix_type::WithMetadata;
use abi_stable::sabi_extern_fn;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult, RString};
use ioasis::abi::{
    guard, BackendBox, Backend_TO, PluginError, PluginExt03, PluginExt03_Ref, PluginExt04, PluginExt04_Ref, PluginInfo,
    PluginRoot, PluginRoot_Ref, INTERFACE_VERSION,
};

pub use driver::{Defect, Mode, VtdBackend, VtdParams};

/// The plugin's name.
pub const NAME: &str = "vtd";

#[sabi_extern_fn]
fn info() -> PluginInfo {
    PluginInfo {
        name: RString::from(NAME),
        version: RString::from(env!("CARGO_PKG_VERSION")),
        vendor: RString::from("ioasis project"),
        description: RString::from("Intel VT-d remapping units (legacy and scalable mode)"),
    }
}

#[sabi_extern_fn]
fn new_backend() -> RResult<BackendBox, PluginError> {
    guard("new_backend", || Ok(Backend_TO::from_ptr(RArc::new(VtdBackend), TD_Opaque)))
}

const ROOT: &WithMetadata<PluginRoot> =
    &WithMetadata::new(PluginRoot { interface: INTERFACE_VERSION, info, new_backend });

/// The plugin's root module: what the cdylib exports and the built-in registration uses.
pub fn root_module() -> PluginRoot_Ref {
    PluginRoot_Ref(ROOT.static_as_prefix())
}

const EXT_0_3: &WithMetadata<PluginExt03> = &WithMetadata::new(PluginExt03 { alloc_viommu: driver::alloc_viommu });

/// The plugin's interface 0.3 extension (vIOMMU objects over nested translation).
pub fn ext_0_3() -> PluginExt03_Ref {
    PluginExt03_Ref(EXT_0_3.static_as_prefix())
}

#[sabi_extern_fn]
fn model_factory() -> ioasis::abi::ModelFactoryBox {
    ioasis::abi::export_model_factory(crate::factory::VtdModelFactory)
}

const EXT_0_4: &WithMetadata<PluginExt04> = &WithMetadata::new(PluginExt04 { model_factory });

/// The plugin's interface 0.4 extension: its hardware model, so that hosts check the plugin
/// against the unit it drives without a model compiled into them.
pub fn ext_0_4() -> PluginExt04_Ref {
    PluginExt04_Ref(EXT_0_4.static_as_prefix())
}

inventory::submit! {
    ioasis::loader::Builtin { name: NAME, root: root_module, ext_0_3: Some(ext_0_3), ext_0_4: Some(ext_0_4) }
}
