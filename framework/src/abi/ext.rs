//! Interface extensions: what a minor version adds, in a module of its own.
//!
//! abi_stable checks every type a plugin hands over against the host's layout and accepts a
//! plugin whose prefix types (the root module, trait vtables) have *more* fields than the
//! host's, never fewer. A host that grew `Unit` could not load a plugin built before it. So the
//! types of a released interface never change, and a minor version's additions live in an
//! extension module that the plugin exports under a symbol named for that version
//! ([`EXT_0_3_SYMBOL`]). The loader looks it up with libloading, checks its layout, and a
//! plugin without it (built against 0.2) simply has none: its units refuse what it would add.

use abi_stable::std_types::RResult;
use abi_stable::type_layout::TypeLayout;
use abi_stable::StableAbi;

use super::error::PluginError;
use super::objects::UnitBox;
use super::viommu::{ViommuBox, ViommuRequest};

/// What interface 0.3 adds to a plugin: the vIOMMU objects of its units. Frozen: a later
/// version adds a module of its own.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginExt03_Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginExt03 {
    /// Creates a vIOMMU on `unit` (one of this plugin's units: the plugin downcasts it) over a
    /// nesting-parent paging HWPT. A unit without them refuses with the reason (the register
    /// bits it lacks).
    #[sabi(last_prefix_field)]
    pub alloc_viommu: extern "C" fn(unit: &UnitBox, req: &ViommuRequest) -> RResult<ViommuBox, PluginError>,
}

/// What the 0.3 extension symbol returns: the module and its layout, which the loader checks
/// against its own before using the module.
#[repr(C)]
pub struct Ext03Export {
    /// `<PluginExt03_Ref as StableAbi>::LAYOUT` as the plugin was built.
    pub layout: &'static TypeLayout,
    /// The module.
    pub module: PluginExt03_Ref,
}

/// Name of the function (`extern "C" fn() -> Ext03Export`) a 0.3 plugin exports.
pub const EXT_0_3_SYMBOL: &[u8] = b"ioasis_plugin_ext_0_3\0";

impl Ext03Export {
    /// The export of `module`, with this build's layout.
    pub fn of(module: PluginExt03_Ref) -> Self {
        Self { layout: <PluginExt03_Ref as StableAbi>::LAYOUT, module }
    }
}

/// Checks a plugin's 0.3 extension against this host's layout.
pub fn check_ext_0_3(export: &Ext03Export) -> Result<(), String> {
    abi_stable::abi_stability::check_layout_compatibility(<PluginExt03_Ref as StableAbi>::LAYOUT, export.layout)
        .into_result()
        .map_err(|e| e.to_string())
}
