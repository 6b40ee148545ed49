//! Finding backends: built in (registered with `inventory`) or loaded from a `cdylib`.
//!
//! abi_stable's `RootModule::load_from*` caches one module per root type, so several plugins
//! behind one interface are loaded with `lib_header_from_path` + `init_root_module`. Before
//! abi_stable checks layouts, the loader reads the plain `IOASIS_PLUGIN_INTERFACE` symbol with
//! libloading, so that a plugin built against another interface is refused with both versions
//! named. Libraries are never unloaded.

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
    /// Unique name in its registry (the plugin's own name, made unique if two share it).
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
        let backend = (root.new_backend())()
            .into_result()
            .map_err(|error| LoadError::Backend { name: info.name.clone(), error })?;
        tracing::debug!(plugin = %info.name, %origin, "plugin ready");
        let model = ext_0_4.map(|e| Arc::new(HostModelFactory::new(&info.name, (e.model_factory())())));
        Ok(Plugin { name: info.name.clone(), info, origin, interface, backend, ext_0_3, model })
    }

    /// Loads a plugin from a shared library.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
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
        Self::from_root(root, ext_0_3, ext_0_4, Origin::Path(path.to_path_buf()))
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
        }
    }

    /// The backend object.
    pub fn backend(&self) -> &BackendBox {
        &self.backend
    }
}

fn abi_error(path: &Path, e: LibraryError) -> LoadError {
    match e {
        LibraryError::OpenError { err, .. } => LoadError::Open { path: path.into(), message: err.to_string() },
        other => LoadError::Abi { path: path.into(), message: other.to_string() },
    }
}

fn read_interface_symbol(path: &Path) -> Result<InterfaceVersion, LoadError> {
    // SAFETY: loading a library runs its initialisers; plugins are trusted code that the user
    // chose to load, as with any dynamic plugin system.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| LoadError::Open { path: path.into(), message: e.to_string() })?;
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
    // SAFETY: the library is loaded already (by the interface check and abi_stable); this only
    // takes another reference to it, which is leaked below like every plugin library.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| LoadError::Open { path: path.into(), message: e.to_string() })?;
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
            r.add(Plugin::from_root((b.root)(), b.ext_0_3.map(|f| f()), b.ext_0_4.map(|f| f()), Origin::Builtin)?);
        }
        Ok(r)
    }

    /// Adds a plugin; if its name is taken, it is registered as `name@file-stem` (or `name#n`).
    pub fn add(&mut self, mut plugin: Plugin) -> Arc<Plugin> {
        if self.get(&plugin.name).is_some() {
            let base = match &plugin.origin {
                Origin::Path(p) => {
                    format!("{}@{}", plugin.name, p.file_stem().and_then(|s| s.to_str()).unwrap_or("lib"))
                }
                Origin::Builtin | Origin::Host => plugin.name.clone(),
            };
            let mut name = base.clone();
            let mut n = 2;
            while self.get(&name).is_some() {
                name = format!("{base}#{n}");
                n += 1;
            }
            plugin.name = name;
        }
        let p = Arc::new(plugin);
        self.plugins.push(p.clone());
        p
    }

    /// Loads a plugin from a file and adds it.
    pub fn load(&mut self, path: &Path) -> Result<Arc<Plugin>, LoadError> {
        Ok(self.add(Plugin::load(path)?))
    }

    /// Loads every shared library (`*.so`, `*.dylib`, `*.dll`) in a directory. Returns what
    /// loaded and, separately, each file that did not with its error.
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
