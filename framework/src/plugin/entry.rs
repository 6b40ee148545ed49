//! The plugin's module functions, generic over its [`Plugin`] type; [`crate::plugin_modules!`]
//! puts them in its root and extension modules. Each is `extern "C"` and guarded.

use std::panic::{catch_unwind, AssertUnwindSafe};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult, RString};

use super::contain::{backend, unit_of, Health};
use super::Plugin;
use crate::abi::{
    guard_or, BackendBox, Backend_TO, ErrorCode, ModelFactoryBox, ModelFactoryObj, ModelFactoryObj_TO, PluginError,
    PluginInfo, UnitBox, ViommuBox, ViommuRequest,
};

/// The root module's `info`: a panic gives a name the loader refuses.
pub extern "C" fn info<P: Plugin>() -> PluginInfo {
    let failed = || super::plugin_info("!panicked-in-info", "", "", "the plugin panicked while naming itself");
    guard_or("info", failed(), P::info)
}

/// The root module's `new_backend`: a new backend instance, with its own [`Health`].
pub extern "C" fn new_backend<P: Plugin>() -> RResult<BackendBox, PluginError> {
    let health = Health::new();
    health
        .call("new_backend", P::driver)
        .map(|d| Backend_TO::from_ptr(RArc::new(backend(d, &health)), TD_Opaque))
        .into()
}

/// Interface 0.3's `alloc_viommu`, on one of the plugin's units.
pub extern "C" fn alloc_viommu<P: Plugin>(unit: &UnitBox, req: &ViommuRequest) -> RResult<ViommuBox, PluginError> {
    type UnitOf<P> = <<P as Plugin>::Driver as super::Driver>::Unit;
    // `unit_of` and the glue's own code do not panic; the plugin's call is guarded inside.
    let made = catch_unwind(AssertUnwindSafe(|| unit_of::<UnitOf<P>>(unit).and_then(|u| u.alloc_viommu(req))));
    made.unwrap_or_else(|_| Err(PluginError::new(ErrorCode::PANICKED, "alloc_viommu panicked"))).into()
}

/// Interface 0.4's `model_factory`: the plugin's model, or (for a plugin that has none or
/// panics making it) a factory that refuses to build one.
pub extern "C" fn model_factory<P: Plugin>() -> ModelFactoryBox {
    guard_or("model_factory", None, P::model)
        .unwrap_or_else(|| ModelFactoryObj_TO::from_ptr(RArc::new(NoModel), TD_Opaque))
}

struct NoModel;

impl ModelFactoryObj for NoModel {
    fn window(&self) -> u64 {
        4096
    }
    fn build(&self, _: abi_stable::std_types::RStr<'_>) -> RResult<crate::abi::ModelBox, RString> {
        RResult::RErr(RString::from("the plugin has no hardware model"))
    }
}
