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

use ioasis::abi::{ModelFactoryBox, PluginError, PluginInfo};
use ioasis::plugin::{plugin_info, Plugin};

pub use driver::AcmeBackend;
pub use factory::AcmeModelFactory;

/// The plugin's name: `<vendor>-<what>`, lowercase, unique among the plugins a host loads.
pub const NAME: &str = "acme-tiny";

/// The plugin. Its driver is written in plain Rust against [`ioasis::plugin`]'s traits; the
/// framework's glue makes the ABI objects and guards every entry point, so a panic anywhere in
/// the driver becomes an error and puts the plugin out of service instead of aborting the host.
pub struct AcmeTiny;

impl Plugin for AcmeTiny {
    type Driver = AcmeBackend;

    fn info() -> PluginInfo {
        plugin_info(
            NAME,
            env!("CARGO_PKG_VERSION"),
            "Acme",
            "acme-tiny IOMMU: 4 KiB paging, 16-bit requester ids (plugin template)",
        )
    }

    fn driver() -> Result<AcmeBackend, PluginError> {
        Ok(AcmeBackend)
    }

    /// The hardware model, for the conformance suite (interface 0.4).
    fn model() -> Option<ModelFactoryBox> {
        Some(ioasis::abi::export_model_factory(AcmeModelFactory))
    }
}

// `root_module()`, `ext_0_3()` and `ext_0_4()`, every entry point guarded.
ioasis::plugin_modules!(AcmeTiny);

// Optional: a host that links this crate (the rlib) has the plugin built in.
inventory::submit! {
    ioasis::loader::Builtin { name: NAME, root: root_module, ext_0_3: None, ext_0_4: Some(ext_0_4) }
}

// The cdylib's exports: the root module, the interface version, the 0.4 extension. (No
// `ext_0_3`: the unit has no vIOMMU.)
ioasis::export_plugin!(crate::root_module, ext_0_4 = crate::ext_0_4);
