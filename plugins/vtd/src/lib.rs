//! The Intel VT-d backend: a driver that programs VT-d remapping units (legacy and scalable
//! mode), and a model of the hardware that reads what it writes.

mod driver;
pub mod factory;
pub mod layout;
pub mod model;

use ioasis::abi::{ModelFactoryBox, PluginError, PluginInfo};
use ioasis::plugin::{plugin_info, Plugin};

pub use driver::{Defect, Mode, VtdBackend, VtdParams};

/// The plugin's name.
pub const NAME: &str = "vtd";

/// The VT-d plugin.
pub struct Vtd;

impl Plugin for Vtd {
    type Driver = VtdBackend;

    fn info() -> PluginInfo {
        plugin_info(
            NAME,
            env!("CARGO_PKG_VERSION"),
            "ioasis project",
            "Intel VT-d remapping units (legacy and scalable mode)",
        )
    }

    fn driver() -> Result<VtdBackend, PluginError> {
        Ok(VtdBackend)
    }

    fn model() -> Option<ModelFactoryBox> {
        Some(ioasis::abi::export_model_factory(crate::factory::VtdModelFactory))
    }
}

ioasis::plugin_modules!(Vtd);

inventory::submit! {
    ioasis::loader::Builtin { name: NAME, root: root_module, ext_0_3: Some(ext_0_3), ext_0_4: Some(ext_0_4) }
}
