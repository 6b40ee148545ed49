//! The plugin ABI: everything that crosses between the host and a backend plugin.
//!
//! All of it is `abi_stable`: `#[repr(C)]` structures, `R*` collections, and `sabi_trait`
//! objects for the backend, its units and their HWPTs. The host gives each unit a
//! [`HostServices`] object; the plugin never touches memory or registers otherwise.

#![allow(non_camel_case_types, non_local_definitions)]

mod error;
mod ext;
mod guard;
mod host;
mod model;
mod objects;
mod root;
mod viommu;

pub use error::{ErrorCode, PluginError};
pub use ext::{check_ext_0_3, Ext03Export, PluginExt03, PluginExt03_Ref, EXT_0_3_SYMBOL};
pub use guard::{guard, guard_or};
pub use host::{host_ok, HostError, HostServices, HostServicesBox, HostServices_TO, LogLevel};
pub use model::{
    check_ext_0_4, export_model_factory, Ext04Export, HostModelFactory, Model, ModelBox, ModelDmaRequest,
    ModelDmaTarget, ModelFactoryBox, ModelFactoryObj, ModelFactoryObj_TO, ModelMapping, ModelMemory, ModelMemoryRef,
    ModelMemory_TO, ModelQueryFailure, ModelStage1, Model_TO, PluginExt04, PluginExt04_Ref, EXT_0_4_SYMBOL,
};
pub use objects::{
    Backend, BackendBox, Backend_TO, CacheInvalidation, DeviceInfo, Fault, Hwpt, HwptBox, HwptFlags, HwptInfo,
    HwptKind, HwptRequest, Hwpt_TO, ItemVerdict, PageResponse, Stage1Config, Translation, Unit, UnitBox, UnitDesc,
    Unit_TO,
};
pub use root::{
    InterfaceVersion, PluginInfo, PluginRoot, PluginRoot_Ref, INTERFACE_SYMBOL, INTERFACE_VERSION, OLDEST_COMPATIBLE,
};
pub use viommu::{
    no_viommu, HwQueueKind, HwQueueRequest, InvalidateOutcome, Viommu, ViommuBox, ViommuFeatures, ViommuFlags,
    ViommuInfo, ViommuKind, ViommuRequest, Viommu_TO, VirtualCommand,
};
