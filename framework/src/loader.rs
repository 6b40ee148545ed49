//! Finding backends: built in (registered with `inventory`) or loaded from a `cdylib`.
//!
//! abi_stable's `RootModule::load_from*` caches one module per root type, so several plugins
//! behind one interface are loaded with `lib_header_from_path` + `init_root_module`. Before
//! abi_stable checks layouts, the loader reads the plain `IOASIS_PLUGIN_INTERFACE` symbol with
//! libloading, so that a plugin built against another interface is refused with both versions
//! named. Libraries are never unloaded.
//!
//! # Plugin names
//!
//! A plugin is known by a name unique in its [`Registry`]. The names of the plugins bundled
//! with ioasis ([`RESERVED_NAMES`]) are reserved; a vendor's plugin is named
//! `<vendor>-<what>` (e.g. `acme-smmu`): lowercase letters, digits and dashes, at most
//! [`MAX_NAME_LEN`] characters ([`check_name`]). The loader refuses a plugin whose name is
//! malformed or reserved ([`LoadError::Name`]) and a plugin whose name another plugin of the
//! registry already has ([`LoadError::NameClash`]); [`Registry::load_as`] loads a plugin
//! under another name, e.g. an old build of a bundled plugin beside the built-in one.

mod file;
pub use file::{check_bytes as check_plugin_bytes, MAX_PLUGIN_BYTES};

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::library::{lib_header_from_path, LibraryError};

use crate::abi::{
    check_ext_0_3, check_ext_0_4, BackendBox, Ext03Export, Ext04Export, HostModelFactory, InterfaceVersion,
    PluginError, PluginExt03_Ref, PluginExt04_Ref, PluginRoot_Ref, EXT_0_3_SYMBOL, EXT_0_4_SYMBOL, INTERFACE_SYMBOL,
    INTERFACE_VERSION,
};
use crate::platform::ModelFactory;

/// A backend linked into the binary. Plugins register one with `inventory::submit!`.
pub struct Builtin {
    /// The plugin's name.
    pub name: &'static str,
    /// Its root module.
    pub root: fn() -> PluginRoot_Ref,
    /// Its interface 0.3 extension (vIOMMU objects), if it has one.
    pub ext_0_3: Option<fn() -> PluginExt03_Ref>,
    /// Its interface 0.4 extension (its hardware model), if it has one.
    pub ext_0_4: Option<fn() -> PluginExt04_Ref>,
}

inventory::collect!(Builtin);

/// Where a plugin came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Linked in and registered with `inventory`.
    Builtin,
    /// Loaded from a shared library.
    Path(PathBuf),
    /// Provided in-process by a host adapter (e.g. Xen, where the hypervisor owns the IOMMU
    /// and the backend speaks hypercalls rather than registers).
    Host,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Builtin => f.write_str("built-in"),
            Origin::Path(p) => write!(f, "{}", p.display()),
            Origin::Host => f.write_str("host adapter"),
        }
    }
}

/// The names of the plugins bundled with ioasis, built in or provided by a host adapter: a
/// loaded plugin cannot take them.
pub const RESERVED_NAMES: &[&str] = &["mock", "vtd", "smmuv3", "amdvi", "xen", "iommufd"];

/// The longest plugin name, in characters.
pub const MAX_NAME_LEN: usize = 32;

/// Why a name cannot be a loaded plugin's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// One of [`RESERVED_NAMES`].
    #[error("the name `{0}` is reserved for the plugin bundled with ioasis")]
    Reserved(String),
    /// Not of the form `<vendor>-<what>`.
    #[error("`{name}` is not a plugin name: {why} (a vendor plugin is named `<vendor>-<what>`: lowercase letters, digits and dashes, at most 32 characters, e.g. `acme-smmu`)")]
    Malformed {
        /// The name.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Checks that `name` can be a loaded plugin's: `<vendor>-<what>` (lowercase ASCII letters,
/// digits and dashes; starting with a letter; no empty part; at most [`MAX_NAME_LEN`]
/// characters) and not one of [`RESERVED_NAMES`]. Built-in plugins are exempt.
pub fn check_name(name: &str) -> Result<(), NameError> {
    let bad = |why| Err(NameError::Malformed { name: name.to_string(), why });
    if RESERVED_NAMES.contains(&name) {
        return Err(NameError::Reserved(name.to_string()));
    }
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("it is longer than 32 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return bad("it has a character other than a-z, 0-9 and -");
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return bad("it does not start with a letter");
    }
    if !name.contains('-') {
        return bad("it has no `-` between the vendor and the rest");
    }
    if name.ends_with('-') || name.contains("--") {
        return bad("it has an empty part between dashes");
    }
    Ok(())
}

/// Why a plugin was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be opened as a shared library.
    #[error("cannot open plugin {path}: {message}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The dynamic loader's message.
        message: String,
    },
    /// The library exports no ioasis interface symbol.
    #[error("{path} is not an ioasis plugin (no IOASIS_PLUGIN_INTERFACE symbol)")]
    NotAPlugin {
        /// The file.
        path: PathBuf,
    },
    /// Built against an interface this host does not speak.
    #[error("plugin {origin} was built against ioasis plugin interface {plugin}, this host speaks {host}")]
    InterfaceMismatch {
        /// Where it came from.
        origin: Origin,
        /// The plugin's interface version.
        plugin: InterfaceVersion,
        /// The host's interface version.
        host: InterfaceVersion,
    },
    /// abi_stable refused the root module (version or layout).
    #[error("plugin {path} is incompatible with this host: {message}")]
    Abi {
        /// The file.
        path: PathBuf,
        /// abi_stable's explanation.
        message: String,
    },
    /// The plugin could not create its backend.
    #[error("plugin {name} failed to start: {error}")]
    Backend {
        /// The plugin.
        name: String,
        /// Its error.
        error: PluginError,
    },
    /// The plugin's name (or the name it was to be loaded under) cannot be a loaded plugin's.
    #[error(
        "plugin {origin} refused: {error}; load it under another name (`--plugin NAME=PATH`, `Registry::load_as`)"
    )]
    Name {
        /// Where it came from.
        origin: Origin,
        /// What is wrong with the name.
        #[source]
        error: NameError,
    },
    /// Another plugin of the registry has the name already.
    #[error("two plugins named `{name}`: {first} and {second}; load one under another name (`--plugin NAME=PATH`, `Registry::load_as`)")]
    NameClash {
        /// The name.
        name: String,
        /// Where the plugin that has it came from.
        first: Origin,
        /// Where the plugin that asked for it came from.
        second: Origin,
    },
    /// The file cannot be a plugin of this host, found before it was opened: not a regular
    /// file, too large, not a whole shared object for this machine.
    #[error("{path} cannot be a plugin: {why}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A plugin directory could not be read.
    #[error("cannot read plugin directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A loaded backend plugin.
pub struct Plugin {
    /// Unique name in its registry: the plugin's own name ([`PluginInfoOwned::name`]), or the
    /// name it was loaded under ([`Plugin::load_as`]).
    pub name: String,
    /// What the plugin says about itself.
    pub info: PluginInfoOwned,
    /// Where it came from.
    pub origin: Origin,
    /// The interface version it was built against.
    pub interface: InterfaceVersion,
    pub(crate) backend: BackendBox,
    /// Its interface 0.3 extension: `None` for a plugin built against 0.2 or one without vIOMMUs.
    pub(crate) ext_0_3: Option<PluginExt03_Ref>,
    /// Its hardware model (interface 0.4): `None` for an older plugin or one without a model.
    pub(crate) model: Option<Arc<HostModelFactory>>,
    /// Set by the first call that panicked ([`Plugin::failed`]).
    failed: std::sync::OnceLock<String>,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).field("origin", &self.origin).finish()
    }
}

/// [`crate::abi::PluginInfo`] with Rust strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginInfoOwned {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Vendor.
    pub vendor: String,
    /// Description.
    pub description: String,
}

impl Plugin {
    fn from_root(
        root: PluginRoot_Ref,
        ext_0_3: Option<PluginExt03_Ref>,
        ext_0_4: Option<PluginExt04_Ref>,
        origin: Origin,
        rename: Option<&str>,
    ) -> Result<Self, LoadError> {
        let interface = root.interface();
        if !INTERFACE_VERSION.accepts(interface) {
            return Err(LoadError::InterfaceMismatch { origin, plugin: interface, host: INTERFACE_VERSION });
        }
        let raw = (root.info())();
        let info = PluginInfoOwned {
            name: raw.name.into_string(),
            version: raw.version.into_string(),
            vendor: raw.vendor.into_string(),
            description: raw.description.into_string(),
        };
        let name = rename.unwrap_or(&info.name).to_string();
        if let Origin::Path(_) = origin {
            check_name(&name).map_err(|error| LoadError::Name { origin: origin.clone(), error })?;
        }
        let backend = (root.new_backend())()
            .into_result()
            .map_err(|error| LoadError::Backend { name: info.name.clone(), error })?;
        tracing::debug!(plugin = %name, own_name = %info.name, %origin, "plugin ready");
        let model = ext_0_4.map(|e| Arc::new(HostModelFactory::new(&info.name, (e.model_factory())())));
        Ok(Plugin { name, info, origin, interface, backend, ext_0_3, model, failed: Default::default() })
    }

    /// Loads a plugin from a shared library, under its own name, which must be a vendor
    /// plugin's ([`check_name`]).
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        Self::load_inner(path, None)
    }

    /// Loads a plugin from a shared library under `name` instead of its own (which may then be
    /// anything, a bundled plugin's included): e.g. an old build of the mock as `mock-0-2`.
    /// `name` must be a vendor plugin's ([`check_name`]). [`PluginInfoOwned::name`] keeps the
    /// plugin's own name.
    pub fn load_as(path: &Path, name: &str) -> Result<Self, LoadError> {
        check_name(name).map_err(|error| LoadError::Name { origin: Origin::Path(path.to_path_buf()), error })?;
        Self::load_inner(path, Some(name))
    }

    fn load_inner(path: &Path, rename: Option<&str>) -> Result<Self, LoadError> {
        file::check(path).map_err(|why| LoadError::BadFile { path: path.into(), why })?;
        let interface = read_interface_symbol(path)?;
        if !INTERFACE_VERSION.accepts(interface) {
            return Err(LoadError::InterfaceMismatch {
                origin: Origin::Path(path.to_path_buf()),
                plugin: interface,
                host: INTERFACE_VERSION,
            });
        }
        let header = lib_header_from_path(path).map_err(|e| abi_error(path, e))?;
        let root = header.init_root_module::<PluginRoot_Ref>().map_err(|e| abi_error(path, e))?;
        let ext_0_3 = read_ext(path, EXT_0_3_SYMBOL, |e: Ext03Export| check_ext_0_3(&e).map(|()| e.module))?;
        let ext_0_4 = read_ext(path, EXT_0_4_SYMBOL, |e: Ext04Export| check_ext_0_4(&e).map(|()| e.module))?;
        Self::from_root(root, ext_0_3, ext_0_4, Origin::Path(path.to_path_buf()), rename)
    }

    /// The plugin's own hardware model (interface 0.4), for hosts that simulate its units (the
    /// conformance suite, the bare-metal harness); `None` for a plugin that exports none.
    pub fn model_factory(&self) -> Option<Arc<dyn ModelFactory>> {
        self.model.clone().map(|m| m as Arc<dyn ModelFactory>)
    }

    /// The plugin's interface 0.3 extension, if it has one.
    pub fn ext_0_3(&self) -> Option<PluginExt03_Ref> {
        self.ext_0_3
    }

    /// A backend that a host adapter provides in-process ([`Origin::Host`]): it speaks the
    /// same interface as a plugin, so the context treats it as one.
    pub fn from_host(info: PluginInfoOwned, backend: BackendBox) -> Self {
        Plugin {
            name: info.name.clone(),
            info,
            origin: Origin::Host,
            interface: INTERFACE_VERSION,
            backend,
            ext_0_3: None,
            model: None,
            failed: Default::default(),
        }
    }

    /// Why the plugin is out of service: the first of its calls that panicked (a
    /// [`ErrorCode::PANICKED`](crate::abi::ErrorCode::PANICKED) answer). Its backend refuses
    /// every later call ([`crate::plugin`]), and the host probes no unit with it.
    pub fn failed(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Notes a plugin's answer: a `PANICKED` error marks the plugin failed.
    pub(crate) fn note(&self, error: &PluginError) {
        if error.code == crate::abi::ErrorCode::PANICKED && self.failed.set(error.message.to_string()).is_ok() {
            tracing::error!(plugin = %self.name, "plugin failed: {}", error.message);
        }
    }

    /// The backend object.
    pub fn backend(&self) -> &BackendBox {
        &self.backend
    }
}

fn abi_error(path: &Path, e: LibraryError) -> LoadError {
    match e {
        LibraryError::OpenError { err, .. } => LoadError::Open { path: path.into(), message: full_message(&*err) },
        other => LoadError::Abi { path: path.into(), message: other.to_string() },
    }
}

/// An error's message with every cause's: libloading's `Error` says only "dlopen failed" and
/// keeps the dynamic loader's own words (dlerror()) in its source.
fn full_message(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        cause = c.source();
    }
    message
}

/// Opens a library with libloading, keeping the dynamic loader's message on failure.
fn open(path: &Path) -> Result<libloading::Library, LoadError> {
    // SAFETY: loading a library runs its initialisers; plugins are trusted code that the user
    // chose to load, as with any dynamic plugin system.
    unsafe { libloading::Library::new(path) }
        .map_err(|e| LoadError::Open { path: path.into(), message: full_message(&e) })
}

fn read_interface_symbol(path: &Path) -> Result<InterfaceVersion, LoadError> {
    let lib = open(path)?;
    // SAFETY: the symbol, when present, is a `[u16; 2]` static written by `export_plugin!`;
    // we copy it out before anything else happens.
    let version = unsafe { lib.get::<*const [u16; 2]>(INTERFACE_SYMBOL) }
        .ok()
        // SAFETY: the library stays loaded (it is leaked below), so the static is valid.
        .map(|sym| unsafe { **sym });
    // Plugins are never unloaded: abi_stable keeps references into them.
    std::mem::forget(lib);
    let [major, minor] = version.ok_or_else(|| LoadError::NotAPlugin { path: path.into() })?;
    Ok(InterfaceVersion { major, minor })
}

/// An extension module the plugin exports under `symbol` (an `extern "C" fn() -> E`),
/// layout-checked by `check`; `None` when the plugin exports none.
fn read_ext<E, M>(
    path: &Path,
    symbol: &[u8],
    check: impl FnOnce(E) -> Result<M, String>,
) -> Result<Option<M>, LoadError> {
    // The library is loaded already (by the interface check and abi_stable): this only takes
    // another reference to it, which is leaked below like every plugin library.
    let lib = open(path)?;
    // SAFETY: the symbol, when present, is the `extern "C" fn() -> E` that `export_plugin!`
    // writes for this extension; the library stays loaded, so the function and what it
    // returns (statics of the library) stay valid.
    let export = unsafe { lib.get::<extern "C" fn() -> E>(symbol) }.ok().map(|f| f());
    std::mem::forget(lib);
    let Some(export) = export else { return Ok(None) };
    check(export).map(Some).map_err(|message| LoadError::Abi { path: path.into(), message })
}

/// The plugins a host uses, by unique name.
#[derive(Default)]
pub struct Registry {
    plugins: Vec<Arc<Plugin>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry with every built-in backend linked into this binary.
    pub fn with_builtins() -> Result<Self, LoadError> {
        let mut r = Self::new();
        let mut builtins: Vec<&Builtin> = inventory::iter::<Builtin>.into_iter().collect();
        builtins.sort_by_key(|b| b.name);
        for b in builtins {
            r.add(Plugin::from_root(
                (b.root)(),
                b.ext_0_3.map(|f| f()),
                b.ext_0_4.map(|f| f()),
                Origin::Builtin,
                None,
            )?)?;
        }
        Ok(r)
    }

    /// Adds a plugin; refused with [`LoadError::NameClash`] when another has its name.
    pub fn add(&mut self, plugin: Plugin) -> Result<Arc<Plugin>, LoadError> {
        if let Some(first) = self.get(&plugin.name) {
            return Err(LoadError::NameClash { name: plugin.name, first: first.origin.clone(), second: plugin.origin });
        }
        let p = Arc::new(plugin);
        self.plugins.push(p.clone());
        Ok(p)
    }

    /// Loads a plugin from a file ([`Plugin::load`]) and adds it.
    pub fn load(&mut self, path: &Path) -> Result<Arc<Plugin>, LoadError> {
        self.add(Plugin::load(path)?)
    }

    /// Loads a plugin from a file under `name` ([`Plugin::load_as`]) and adds it.
    pub fn load_as(&mut self, path: &Path, name: &str) -> Result<Arc<Plugin>, LoadError> {
        if let Some(first) = self.get(name) {
            // Refused before the library is opened.
            return Err(LoadError::NameClash {
                name: name.to_string(),
                first: first.origin.clone(),
                second: Origin::Path(path.to_path_buf()),
            });
        }
        self.add(Plugin::load_as(path, name)?)
    }

    /// Loads every shared library (`*.so`, `*.dylib`, `*.dll`) in a directory. Returns what
    /// loaded and, separately, each file that did not with its error (a malformed, reserved or
    /// clashing name included).
    pub fn load_dir(&mut self, dir: &Path) -> Result<(Vec<Arc<Plugin>>, Vec<LoadError>), LoadError> {
        let entries = std::fs::read_dir(dir).map_err(|source| LoadError::Dir { path: dir.into(), source })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("so" | "dylib" | "dll")))
            .collect();
        paths.sort();
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for p in paths {
            match self.load(&p) {
                Ok(pl) => ok.push(pl),
                Err(e) => failed.push(e),
            }
        }
        Ok((ok, failed))
    }

    /// Looks a plugin up by its unique name.
    pub fn get(&self, name: &str) -> Option<Arc<Plugin>> {
        self.plugins.iter().find(|p| p.name == name).cloned()
    }

    /// Every plugin, in the order added.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Plugin>> {
        self.plugins.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_plugin_names_are_accepted() {
        for name in ["acme-smmu", "intel-vtd5", "mock-0-2", "a-b", "nvidia-tegra241-cmdqv"] {
            assert_eq!(check_name(name), Ok(()), "{name}");
        }
        assert_eq!(check_name(&format!("acme-{}", "x".repeat(27))), Ok(()), "32 characters");
    }

    #[test]
    fn reserved_and_malformed_names_are_refused_with_why() {
        for name in RESERVED_NAMES {
            assert_eq!(check_name(name), Err(NameError::Reserved(name.to_string())));
        }
        let cases = [
            ("", "empty"),
            ("acme", "no `-`"),
            ("Acme-smmu", "a-z, 0-9"),
            ("acme_smmu", "a-z, 0-9"),
            ("acme-smmü", "a-z, 0-9"),
            ("acme smmu", "a-z, 0-9"),
            ("0acme-smmu", "start with a letter"),
            ("-acme-smmu", "start with a letter"),
            ("acme-", "empty part"),
            ("acme--smmu", "empty part"),
        ];
        for (name, why) in cases {
            let e = check_name(name).unwrap_err();
            assert!(matches!(e, NameError::Malformed { .. }) && e.to_string().contains(why), "{name}: {e}");
        }
        let long = format!("acme-{}", "x".repeat(28));
        assert!(check_name(&long).unwrap_err().to_string().contains("longer than 32"), "33 characters");
    }

    #[test]
    fn a_file_that_is_not_elf_is_refused_before_dlopen() {
        let dir = std::env::temp_dir().join(format!("ioasis-loader-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("libgarbage.so");
        std::fs::write(&garbage, vec![0x5a; 4096]).unwrap();
        let e = Plugin::load(&garbage).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        let msg = e.to_string();
        assert!(matches!(e, LoadError::BadFile { .. }), "{msg}");
        assert!(msg.contains("not an ELF file") && msg.contains("libgarbage.so"), "{msg}");
    }
}
