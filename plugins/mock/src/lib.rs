//! The mock backend: a software IOMMU unit with every capability, specified in `SPEC.md`.
//!
//! It is the reference for vendors: the driver half (`driver`) programs the unit only through
//! [`ioasis::abi::HostServices`] — registers, device table, PASID tables, HWPT descriptors, a
//! four-level page table, range invalidations and a fault queue — and the model half
//! ([`model::MockModel`]) reads those structures back as hardware would.

mod driver;
pub mod factory;
pub mod format;
pub mod model;

use abi_stable::prefix_type::WithMetadata;
use abi_stable::sabi_extern_fn;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult, RString};
use ioasis::abi::{
    guard, BackendBox, Backend_TO, PluginError, PluginExt03, PluginExt03_Ref, PluginExt04, PluginExt04_Ref, PluginInfo,
    PluginRoot, PluginRoot_Ref, INTERFACE_VERSION,
};

pub use driver::{Defect, MockBackend, MockParams};
pub use factory::{MockModelFactory, MockUnitConfig};

/// The plugin's name.
pub const NAME: &str = "mock";

#[sabi_extern_fn]
fn info() -> PluginInfo {
    PluginInfo {
        name: RString::from(NAME),
        version: RString::from(env!("CARGO_PKG_VERSION")),
        vendor: RString::from("ioasis project"),
        description: RString::from("software IOMMU with every capability (reference backend)"),
    }
}

#[sabi_extern_fn]
fn new_backend() -> RResult<BackendBox, PluginError> {
    guard("new_backend", || Ok(Backend_TO::from_ptr(RArc::new(MockBackend), TD_Opaque)))
}

const ROOT: &WithMetadata<PluginRoot> =
    &WithMetadata::new(PluginRoot { interface: INTERFACE_VERSION, info, new_backend });

/// The plugin's root module: what the cdylib exports and the built-in registration uses.
pub fn root_module() -> PluginRoot_Ref {
    PluginRoot_Ref(ROOT.static_as_prefix())
}

const EXT_0_3: &WithMetadata<PluginExt03> = &WithMetadata::new(PluginExt03 { alloc_viommu: driver::alloc_viommu });

/// The plugin's interface 0.3 extension (vIOMMU objects, spec §7).
pub fn ext_0_3() -> PluginExt03_Ref {
    PluginExt03_Ref(EXT_0_3.static_as_prefix())
}

#[sabi_extern_fn]
fn model_factory() -> ioasis::abi::ModelFactoryBox {
    ioasis::abi::export_model_factory(crate::factory::MockModelFactory)
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
