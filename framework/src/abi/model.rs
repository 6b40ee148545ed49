//! Interface 0.4: a plugin's hardware model across the plugin boundary.
//!
//! The conformance suite checks a plugin against the unit the plugin says it drives: its own
//! hardware model (the "model half", [`crate::platform::UnitModel`]). A plugin exports a
//! [`ModelFactoryObj`] in its 0.4 extension ([`PluginExt04`]); the host wraps it back into a
//! [`crate::platform::ModelFactory`] ([`HostModelFactory`]), so a vendor's `.so` gets the same
//! checks as the built-ins with no model compiled into the host. Both directions are generic
//! adapters here: a plugin hands over any `ModelFactory`, a host gets one back.
//!
//! Memory crosses the other way: every model call gets the host's physical memory as a
//! borrowed [`ModelMemory`] object. Panics in the model are caught on the plugin's side and
//! come back as errors (a register access as [`HostError::PLATFORM`], a DMA as a fault with
//! [`Fault::BAD_ENTRY`]).

use std::sync::Arc;

use abi_stable::sabi_trait;
use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RSlice, RSliceMut, RStr, RString, RVec};
use abi_stable::type_layout::TypeLayout;
use abi_stable::StableAbi;

use super::guard::guard_or;
use super::host::HostError;
use super::objects::Fault;
use crate::addr::{DeviceRef, Iova, Pasid, PhysAddr};
use crate::format::PtFormat;
use crate::platform::{
    DmaRequest, DmaTarget, GuestMapping, GuestStage1, ModelFactory, ModelQueryError, PhysMemory, UnitModel,
};
use crate::prot::Prot;

/// Physical memory, as the host lends it to a model for one call.
#[sabi_trait]
pub trait ModelMemory: Send + Sync {
    /// [`PhysMemory::read`].
    fn read(&self, pa: PhysAddr, buf: RSliceMut<'_, u8>) -> RResult<(), HostError>;
    /// [`PhysMemory::write`].
    fn write(&self, pa: PhysAddr, data: RSlice<'_, u8>) -> RResult<(), HostError>;
    /// [`PhysMemory::read_u64`].
    fn read_u64(&self, pa: PhysAddr) -> RResult<u64, HostError>;
    /// [`PhysMemory::write_u64`].
    fn write_u64(&self, pa: PhysAddr, value: u64) -> RResult<(), HostError>;
    /// [`PhysMemory::fetch_or_u64`].
    fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> RResult<u64, HostError>;
    /// [`PhysMemory::fetch_and_u64`].
    #[sabi(last_prefix_field)]
    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> RResult<u64, HostError>;
}

/// A borrowed [`ModelMemory`] object.
pub type ModelMemoryRef<'a> = ModelMemory_TO<'a, abi_stable::sabi_types::RRef<'a, ()>>;

/// [`DmaRequest`] across the boundary.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelDmaRequest {
    /// The requester.
    pub dev: DeviceRef,
    /// PASID prefix of the request, if any.
    pub pasid: ROption<Pasid>,
    /// Address on the bus.
    pub iova: Iova,
    /// Read or write.
    pub access: Prot,
}

/// [`DmaTarget`] across the boundary.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelDmaTarget {
    /// Physical address of the IOVA.
    pub pa: PhysAddr,
    /// Bytes to the end of the translated page.
    pub remaining: u64,
}

/// [`GuestMapping`] across the boundary.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelMapping {
    /// First IOVA of the page.
    pub iova: Iova,
    /// Output address.
    pub addr: PhysAddr,
    /// Page size.
    pub len: u64,
    /// Permissions.
    pub prot: Prot,
}

/// [`GuestStage1`] across the boundary.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct ModelStage1 {
    /// The stage-1 format.
    pub format: PtFormat,
    /// Root of the stage-1 tables.
    pub root: PhysAddr,
    /// Format-specific words.
    pub words: RVec<u64>,
}

/// [`ModelQueryError`] across the boundary: `kind` names the variant.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct ModelQueryFailure {
    /// 1 unsupported, 2 blocked, 3 too many, 4 bad entry, 5 untranslated, 6 unsupported mode.
    pub kind: u32,
    /// The limit (too many) or the address (bad entry).
    pub value: u64,
    /// The reason (unsupported mode).
    pub reason: RString,
}

/// A plugin's hardware model of one unit.
#[sabi_trait]
pub trait Model: Send + Sync {
    /// [`UnitModel::mmio_read`].
    fn mmio_read(&self, mem: ModelMemoryRef<'_>, offset: u64, width: u8) -> RResult<u64, HostError>;
    /// [`UnitModel::mmio_write`].
    fn mmio_write(&self, mem: ModelMemoryRef<'_>, offset: u64, width: u8, value: u64) -> RResult<(), HostError>;
    /// [`UnitModel::translate`].
    fn translate(&self, mem: ModelMemoryRef<'_>, req: &ModelDmaRequest) -> RResult<ModelDmaTarget, Fault>;
    /// [`UnitModel::guest_mappings`].
    fn guest_mappings(
        &self,
        mem: ModelMemoryRef<'_>,
        dev: DeviceRef,
        pasid: ROption<Pasid>,
        limit: u64,
    ) -> RResult<RVec<ModelMapping>, ModelQueryFailure>;
    /// [`UnitModel::guest_stage1_format`].
    fn guest_stage1_format(&self) -> ROption<PtFormat>;
    /// [`UnitModel::guest_stage1`].
    #[sabi(last_prefix_field)]
    fn guest_stage1(
        &self,
        mem: ModelMemoryRef<'_>,
        dev: DeviceRef,
        pasid: ROption<Pasid>,
    ) -> RResult<ModelStage1, ModelQueryFailure>;
}

/// A shareable model object.
pub type ModelBox = Model_TO<'static, RArc<()>>;

/// What builds a plugin's models.
#[sabi_trait]
pub trait ModelFactoryObj: Send + Sync {
    /// The register window size of a unit.
    fn window(&self) -> u64;
    /// One unit's model from its configuration (TOML text, model-specific keys; empty: the
    /// full unit).
    #[sabi(last_prefix_field)]
    fn build(&self, config: RStr<'_>) -> RResult<ModelBox, RString>;
}

/// A shareable factory object.
pub type ModelFactoryBox = ModelFactoryObj_TO<'static, RArc<()>>;

/// What interface 0.4 adds to a plugin: its hardware model. Frozen, like
/// [`super::PluginExt03`].
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginExt04_Ref)))]
#[sabi(missing_field(panic))]
pub struct PluginExt04 {
    /// The factory of the plugin's unit models.
    #[sabi(last_prefix_field)]
    pub model_factory: extern "C" fn() -> ModelFactoryBox,
}

/// What the 0.4 extension symbol returns: the module and its layout.
#[repr(C)]
pub struct Ext04Export {
    /// `<PluginExt04_Ref as StableAbi>::LAYOUT` as the plugin was built.
    pub layout: &'static TypeLayout,
    /// The module.
    pub module: PluginExt04_Ref,
}

/// Name of the function (`extern "C" fn() -> Ext04Export`) a 0.4 plugin with a model exports.
pub const EXT_0_4_SYMBOL: &[u8] = b"ioasis_plugin_ext_0_4\0";

impl Ext04Export {
    /// The export of `module`, with this build's layout.
    pub fn of(module: PluginExt04_Ref) -> Self {
        Self { layout: <PluginExt04_Ref as StableAbi>::LAYOUT, module }
    }
}

/// Checks a plugin's 0.4 extension against this host's layout.
pub fn check_ext_0_4(export: &Ext04Export) -> Result<(), String> {
    abi_stable::abi_stability::check_layout_compatibility(<PluginExt04_Ref as StableAbi>::LAYOUT, export.layout)
        .into_result()
        .map_err(|e| e.to_string())
}

// ---- The plugin's side: any ModelFactory / UnitModel as ABI objects. ----

/// A plugin's [`ModelFactory`] as the object its 0.4 extension returns.
pub fn export_model_factory<F: ModelFactory + 'static>(factory: F) -> ModelFactoryBox {
    ModelFactoryObj_TO::from_ptr(RArc::new(ExportedFactory(factory)), TD_Opaque)
}

struct ExportedFactory<F>(F);

impl<F: ModelFactory> ModelFactoryObj for ExportedFactory<F> {
    fn window(&self) -> u64 {
        guard_or("model window", 4096, || self.0.window())
    }

    fn build(&self, config: RStr<'_>) -> RResult<ModelBox, RString> {
        let built = guard_or("model build", Err("the model panicked while building".to_string()), || {
            let table: toml::Table =
                toml::from_str(config.as_str()).map_err(|e| format!("bad model configuration: {e}"))?;
            self.0.build(&table)
        });
        match built {
            Ok(m) => RResult::ROk(Model_TO::from_ptr(RArc::new(ExportedModel(m)), TD_Opaque)),
            Err(e) => RResult::RErr(RString::from(e)),
        }
    }
}

struct ExportedModel(Arc<dyn UnitModel>);

/// The host's memory, seen by the plugin's model as a [`PhysMemory`].
struct LentMemory<'a>(ModelMemoryRef<'a>);

impl PhysMemory for LentMemory<'_> {
    fn read(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<(), HostError> {
        self.0.read(pa, buf.into()).into_result()
    }
    fn write(&self, pa: PhysAddr, data: &[u8]) -> Result<(), HostError> {
        self.0.write(pa, data.into()).into_result()
    }
    fn read_u64(&self, pa: PhysAddr) -> Result<u64, HostError> {
        self.0.read_u64(pa).into_result()
    }
    fn write_u64(&self, pa: PhysAddr, value: u64) -> Result<(), HostError> {
        self.0.write_u64(pa, value).into_result()
    }
    fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> Result<u64, HostError> {
        self.0.fetch_or_u64(pa, bits).into_result()
    }
    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> Result<u64, HostError> {
        self.0.fetch_and_u64(pa, mask).into_result()
    }
}

const PANICKED: HostError = HostError::new(HostError::PLATFORM, 0);

fn query_failure(e: ModelQueryError) -> ModelQueryFailure {
    let (kind, value, reason) = match e {
        ModelQueryError::Unsupported => (1, 0, ""),
        ModelQueryError::Blocked => (2, 0, ""),
        ModelQueryError::TooMany { limit } => (3, limit as u64, ""),
        ModelQueryError::BadEntry { addr } => (4, addr, ""),
        ModelQueryError::Untranslated => (5, 0, ""),
        ModelQueryError::UnsupportedMode { reason } => (6, 0, reason),
    };
    ModelQueryFailure { kind, value, reason: RString::from(reason) }
}

impl Model for ExportedModel {
    fn mmio_read(&self, mem: ModelMemoryRef<'_>, offset: u64, width: u8) -> RResult<u64, HostError> {
        let mem = LentMemory(mem);
        guard_or("model mmio_read", Err(PANICKED), || self.0.mmio_read(&mem, offset, width)).into()
    }

    fn mmio_write(&self, mem: ModelMemoryRef<'_>, offset: u64, width: u8, value: u64) -> RResult<(), HostError> {
        let mem = LentMemory(mem);
        guard_or("model mmio_write", Err(PANICKED), || self.0.mmio_write(&mem, offset, width, value)).into()
    }

    fn translate(&self, mem: ModelMemoryRef<'_>, req: &ModelDmaRequest) -> RResult<ModelDmaTarget, Fault> {
        let mem = LentMemory(mem);
        let r = DmaRequest { dev: req.dev, pasid: req.pasid.into_option(), iova: req.iova, access: req.access };
        let panicked = Fault {
            dev: req.dev,
            pasid: req.pasid,
            addr: req.iova,
            access: req.access,
            reason: Fault::BAD_ENTRY,
            page_request: false,
            group: 0,
        };
        guard_or("model translate", Err(panicked), || self.0.translate(&mem, &r))
            .map(|t| ModelDmaTarget { pa: t.pa, remaining: t.remaining })
            .into()
    }

    fn guest_mappings(
        &self,
        mem: ModelMemoryRef<'_>,
        dev: DeviceRef,
        pasid: ROption<Pasid>,
        limit: u64,
    ) -> RResult<RVec<ModelMapping>, ModelQueryFailure> {
        let mem = LentMemory(mem);
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let r = guard_or("model guest_mappings", Err(ModelQueryError::Unsupported), || {
            self.0.guest_mappings(&mem, dev, pasid.into_option(), limit)
        });
        match r {
            Ok(v) => RResult::ROk(
                v.into_iter().map(|m| ModelMapping { iova: m.iova, addr: m.addr, len: m.len, prot: m.prot }).collect(),
            ),
            Err(e) => RResult::RErr(query_failure(e)),
        }
    }

    fn guest_stage1_format(&self) -> ROption<PtFormat> {
        guard_or("model guest_stage1_format", None, || self.0.guest_stage1_format()).into()
    }

    fn guest_stage1(
        &self,
        mem: ModelMemoryRef<'_>,
        dev: DeviceRef,
        pasid: ROption<Pasid>,
    ) -> RResult<ModelStage1, ModelQueryFailure> {
        let mem = LentMemory(mem);
        let r = guard_or("model guest_stage1", Err(ModelQueryError::Unsupported), || {
            self.0.guest_stage1(&mem, dev, pasid.into_option())
        });
        match r {
            Ok(s) => RResult::ROk(ModelStage1 { format: s.format, root: s.root, words: RVec::from(s.words) }),
            Err(e) => RResult::RErr(query_failure(e)),
        }
    }
}

// ---- The host's side: a plugin's factory and models as ModelFactory / UnitModel. ----

/// A plugin's exported model factory as a [`ModelFactory`].
pub struct HostModelFactory {
    plugin: String,
    factory: ModelFactoryBox,
}

impl HostModelFactory {
    /// The factory `factory` of the plugin named `plugin`.
    pub fn new(plugin: &str, factory: ModelFactoryBox) -> Self {
        Self { plugin: plugin.to_string(), factory }
    }
}

impl ModelFactory for HostModelFactory {
    fn plugin(&self) -> &str {
        &self.plugin
    }

    fn build(&self, config: &toml::Table) -> Result<Arc<dyn UnitModel>, String> {
        let text = toml::to_string(config).map_err(|e| format!("model configuration: {e}"))?;
        match self.factory.build(RStr::from(text.as_str())) {
            RResult::ROk(m) => Ok(Arc::new(HostModel(m))),
            RResult::RErr(e) => Err(e.into_string()),
        }
    }

    fn window(&self) -> u64 {
        self.factory.window()
    }
}

/// A plugin's exported model as a [`UnitModel`].
struct HostModel(ModelBox);

/// The host's memory lent to the model for one call.
struct Lend<'a>(&'a dyn PhysMemory);

impl ModelMemory for Lend<'_> {
    fn read(&self, pa: PhysAddr, mut buf: RSliceMut<'_, u8>) -> RResult<(), HostError> {
        self.0.read(pa, buf.as_mut_slice()).into()
    }
    fn write(&self, pa: PhysAddr, data: RSlice<'_, u8>) -> RResult<(), HostError> {
        self.0.write(pa, data.as_slice()).into()
    }
    fn read_u64(&self, pa: PhysAddr) -> RResult<u64, HostError> {
        self.0.read_u64(pa).into()
    }
    fn write_u64(&self, pa: PhysAddr, value: u64) -> RResult<(), HostError> {
        self.0.write_u64(pa, value).into()
    }
    fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> RResult<u64, HostError> {
        self.0.fetch_or_u64(pa, bits).into()
    }
    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> RResult<u64, HostError> {
        self.0.fetch_and_u64(pa, mask).into()
    }
}

fn query_error(f: ModelQueryFailure) -> ModelQueryError {
    match f.kind {
        2 => ModelQueryError::Blocked,
        3 => ModelQueryError::TooMany { limit: usize::try_from(f.value).unwrap_or(usize::MAX) },
        4 => ModelQueryError::BadEntry { addr: f.value },
        5 => ModelQueryError::Untranslated,
        // The reason crosses as text; the host's error keeps a static one.
        6 => ModelQueryError::UnsupportedMode { reason: "the plugin's model cannot express this translation" },
        _ => ModelQueryError::Unsupported,
    }
}

impl UnitModel for HostModel {
    fn mmio_read(&self, mem: &dyn PhysMemory, offset: u64, width: u8) -> Result<u64, HostError> {
        let lend = Lend(mem);
        self.0.mmio_read(ModelMemory_TO::from_ptr(&lend, TD_Opaque), offset, width).into_result()
    }

    fn mmio_write(&self, mem: &dyn PhysMemory, offset: u64, width: u8, value: u64) -> Result<(), HostError> {
        let lend = Lend(mem);
        self.0.mmio_write(ModelMemory_TO::from_ptr(&lend, TD_Opaque), offset, width, value).into_result()
    }

    fn translate(&self, mem: &dyn PhysMemory, req: &DmaRequest) -> Result<DmaTarget, Fault> {
        let lend = Lend(mem);
        let r = ModelDmaRequest { dev: req.dev, pasid: req.pasid.into(), iova: req.iova, access: req.access };
        self.0
            .translate(ModelMemory_TO::from_ptr(&lend, TD_Opaque), &r)
            .into_result()
            .map(|t| DmaTarget { pa: t.pa, remaining: t.remaining })
    }

    fn guest_mappings(
        &self,
        mem: &dyn PhysMemory,
        dev: DeviceRef,
        pasid: Option<Pasid>,
        limit: usize,
    ) -> Result<Vec<GuestMapping>, ModelQueryError> {
        let lend = Lend(mem);
        let r = self.0.guest_mappings(ModelMemory_TO::from_ptr(&lend, TD_Opaque), dev, pasid.into(), limit as u64);
        match r.into_result() {
            Ok(v) if v.len() > limit => Err(ModelQueryError::TooMany { limit }),
            Ok(v) => Ok(v
                .into_iter()
                .map(|m| GuestMapping { iova: m.iova, addr: m.addr, len: m.len, prot: m.prot })
                .collect()),
            Err(f) => Err(query_error(f)),
        }
    }

    fn guest_stage1_format(&self) -> Option<PtFormat> {
        self.0.guest_stage1_format().into_option()
    }

    fn guest_stage1(
        &self,
        mem: &dyn PhysMemory,
        dev: DeviceRef,
        pasid: Option<Pasid>,
    ) -> Result<GuestStage1, ModelQueryError> {
        let lend = Lend(mem);
        match self.0.guest_stage1(ModelMemory_TO::from_ptr(&lend, TD_Opaque), dev, pasid.into()).into_result() {
            Ok(s) => Ok(GuestStage1 { format: s.format, root: s.root, words: s.words.into_vec() }),
            Err(f) => Err(query_error(f)),
        }
    }
}
