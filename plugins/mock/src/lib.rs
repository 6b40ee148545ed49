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

use ioasis::abi::{ModelFactoryBox, PluginError, PluginInfo};
use ioasis::plugin::{plugin_info, Plugin};

pub use driver::{Defect, MockBackend, MockParams};
pub use factory::{MockModelFactory, MockUnitConfig};

/// The plugin's name.
pub const NAME: &str = "mock";

/// The mock plugin.
pub struct Mock;

impl Plugin for Mock {
    type Driver = MockBackend;

    fn info() -> PluginInfo {
        plugin_info(
            NAME,
            env!("CARGO_PKG_VERSION"),
            "ioasis project",
            "software IOMMU with every capability (reference backend)",
        )
    }

    fn driver() -> Result<MockBackend, PluginError> {
        Ok(MockBackend)
    }

    fn model() -> Option<ModelFactoryBox> {
        Some(ioasis::abi::export_model_factory(crate::factory::MockModelFactory))
    }
}

ioasis::plugin_modules!(Mock);

inventory::submit! {
    ioasis::loader::Builtin { name: NAME, root: root_module, ext_0_3: Some(ext_0_3), ext_0_4: Some(ext_0_4) }
}
