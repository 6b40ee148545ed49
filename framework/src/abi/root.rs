//! The root module a plugin exports, and the interface version it was built against.

use std::fmt;

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RString};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

use super::error::PluginError;
use super::objects::BackendBox;

/// Version of the plugin interface. A plugin is accepted when the majors are equal and, while
/// the major is 0, when the plugin's minor is not older than [`OLDEST_COMPATIBLE`]'s: a minor
/// never changes a released type, it adds an extension module (see [`crate::abi::PluginExt03`]),
/// so an older plugin lacks only the modules of later minors.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceVersion {
    /// Incompatible changes.
    pub major: u16,
    /// Compatible additions (new prefix fields, new trait methods with defaults, new codes).
    pub minor: u16,
}

impl fmt::Display for InterfaceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl fmt::Debug for InterfaceVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl InterfaceVersion {
    /// True when a plugin built against `plugin` can be used by a host speaking `self`.
    pub fn accepts(self, plugin: InterfaceVersion) -> bool {
        self.major == plugin.major && (self.major != 0 || plugin.minor >= OLDEST_COMPATIBLE.minor)
    }
}

/// The interface version this build of the framework speaks. 0.3 added the vIOMMU objects
/// ([`crate::abi::PluginExt03`], [`crate::abi::Viommu`]), 0.4 the plugin's hardware model
/// ([`crate::abi::PluginExt04`]), each in an extension module.
pub const INTERFACE_VERSION: InterfaceVersion = InterfaceVersion { major: 0, minor: 4 };

/// The oldest interface whose plugins this host still loads: 0.2 (0.1 lacked
/// `HwptRequest::space`, a change of layout).
pub const OLDEST_COMPATIBLE: InterfaceVersion = InterfaceVersion { major: 0, minor: 2 };

/// Name of the plain C symbol (a `[u16; 2]`) that every plugin exports beside its root module,
/// so that the loader can name both versions before abi_stable checks any layout.
pub const INTERFACE_SYMBOL: &[u8] = b"IOASIS_PLUGIN_INTERFACE\0";

/// What a plugin says about itself.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    /// Short name: a bundled plugin's (`mock`, `vtd`, ...) or, for a vendor's plugin,
    /// `<vendor>-<what>` ([`crate::loader::check_name`]).
    pub name: RString,
    /// The plugin's own version.
    pub version: RString,
    /// Who ships it.
    pub vendor: RString,
    /// One line on what it drives.
    pub description: RString,
}

/// The root module of a plugin, frozen since 0.2 (abi_stable refuses a plugin whose root has
/// fewer fields than the host's): later versions add extension modules instead.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginRoot_Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginRoot {
    /// The interface version the plugin was built against.
    pub interface: InterfaceVersion,
    /// Who the plugin is.
    pub info: extern "C" fn() -> PluginInfo,
    /// Creates the backend. Called once per load.
    #[sabi(last_prefix_field)]
    pub new_backend: extern "C" fn() -> RResult<BackendBox, PluginError>,
}

impl RootModule for PluginRoot_Ref {
    declare_root_module_statics! {PluginRoot_Ref}
    const BASE_NAME: &'static str = "ioasis_plugin";
    const NAME: &'static str = "ioasis plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// Exports a plugin's root module from a `cdylib` crate.
///
/// `$root` is a `fn() -> PluginRoot_Ref` from the plugin's rlib (the same function that its
/// built-in registration uses), normally the `root_module` that
/// [`plugin_modules!`](crate::plugin_modules) made. The cdylib crate must depend on `abi_stable`.
/// Use it once per cdylib: the exported symbols have fixed names.
///
/// `ext_0_3 = f` (a `fn() -> PluginExt03_Ref`: the plugin's vIOMMU objects, interface 0.3) and
/// `ext_0_4 = g` (a `fn() -> PluginExt04_Ref`: its hardware model, interface 0.4) are optional;
/// a plugin without one has none of what it adds.
#[macro_export]
macro_rules! export_plugin {
    ($root:path $(, ext_0_3 = $e3:path)? $(, ext_0_4 = $e4:path)? $(,)?) => {
        /// The plugin's root module, exported for abi_stable's loader.
        #[::abi_stable::export_root_module]
        pub fn ioasis_plugin_root() -> $crate::abi::PluginRoot_Ref {
            $root()
        }

        /// The interface version, readable without abi_stable.
        #[no_mangle]
        pub static IOASIS_PLUGIN_INTERFACE: [u16; 2] =
            [$crate::abi::INTERFACE_VERSION.major, $crate::abi::INTERFACE_VERSION.minor];

        $(
            /// The plugin's interface 0.3 extension, with its layout for the loader's check.
            #[no_mangle]
            #[allow(improper_ctypes_definitions)]
            pub extern "C" fn ioasis_plugin_ext_0_3() -> $crate::abi::Ext03Export {
                $crate::abi::Ext03Export::of($e3())
            }
        )?

        $(
            /// The plugin's interface 0.4 extension (its hardware model), with its layout.
            #[no_mangle]
            #[allow(improper_ctypes_definitions)]
            pub extern "C" fn ioasis_plugin_ext_0_4() -> $crate::abi::Ext04Export {
                $crate::abi::Ext04Export::of($e4())
            }
        )?
    };
}
