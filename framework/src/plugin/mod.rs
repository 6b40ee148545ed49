//! Writing a backend plugin: the Rust traits a plugin implements, and the glue that turns them
//! into the ABI's objects ([`crate::abi`]) with every entry point guarded.
//!
//! A plugin implements [`Plugin`] (who it is, how to make its driver) and the driver traits
//! ([`Driver`], [`UnitDriver`], [`HwptDriver`], [`ViommuDriver`]) in plain Rust: `Result`,
//! slices, `Option`, its own types. [`plugin_modules!`](crate::plugin_modules) makes its root
//! module and extension modules from them; the objects the host receives are the glue's
//! ([`Contained`]), which run each call of the plugin inside `catch_unwind`. So a plugin that
//! panics cannot unwind through an `extern "C"` boundary (which aborts the process): the call
//! returns [`ErrorCode::PANICKED`](crate::abi::ErrorCode::PANICKED), the plugin is marked
//! failed, and every later call on any object of that backend is refused with the first
//! panic's message, without entering the plugin again. Nothing a plugin author writes (or
//! forgets) takes that away.
//!
//! A plugin must be built with unwinding panics (Rust's default, not `panic = "abort"`).

mod contain;
mod entry;
#[cfg(test)]
mod tests;

use abi_stable::std_types::RString;

pub use contain::{backend_box, boxed_hwpt, hwpt_of, Contained, Health};
pub use entry::{alloc_viommu, info, model_factory, new_backend};

use crate::abi::{
    no_viommu, CacheInvalidation, DeviceInfo, Fault, HostServicesBox, HwQueueRequest, HwptFlags, HwptInfo, HwptRequest,
    InvalidateOutcome, ItemVerdict, ModelFactoryBox, PageResponse, PluginError, PluginInfo, Stage1Config, Translation,
    UnitDesc, ViommuInfo, ViommuRequest, VirtualCommand,
};
use crate::addr::{Iova, Pasid, PhysAddr};
use crate::caps::UnitCaps;
use crate::intent::IntentCode;
use crate::prot::Prot;

/// A plugin: who it is, its driver and (optionally) its hardware model.
pub trait Plugin: 'static {
    /// Its driver.
    type Driver: Driver;
    /// Who it is (the loader checks the name: [`crate::loader::check_name`]).
    fn info() -> PluginInfo;
    /// Makes the driver; called once per load.
    fn driver() -> Result<Self::Driver, PluginError>;
    /// The plugin's hardware model ([`crate::abi::export_model_factory`]), exported when the
    /// plugin registers its interface 0.4 extension; `None`: it has none.
    fn model() -> Option<ModelFactoryBox> {
        None
    }
}

/// [`PluginInfo`] from Rust strings.
pub fn plugin_info(name: &str, version: &str, vendor: &str, description: &str) -> PluginInfo {
    PluginInfo {
        name: RString::from(name),
        version: RString::from(version),
        vendor: RString::from(vendor),
        description: RString::from(description),
    }
}

/// A backend's driver: probes units.
pub trait Driver: Send + Sync + 'static {
    /// The units it drives.
    type Unit: UnitDriver;
    /// Probes the unit behind `host`: reads its registers, sets up its root structures and
    /// enables it with every device blocked.
    fn probe(&self, desc: &UnitDesc, host: HostServicesBox) -> Result<Self::Unit, PluginError>;
}

/// One IOMMU instance ([`crate::abi::Unit`] says what each call must do).
pub trait UnitDriver: Send + Sync + 'static {
    /// Its hardware page tables.
    type Hwpt: HwptDriver;
    /// Its vIOMMUs ([`NoViommu`] for a unit without them).
    type Viommu: ViommuDriver<Hwpt = Self::Hwpt>;
    /// The capabilities read from the unit's registers at probe.
    fn caps(&self) -> UnitCaps;
    /// Judges each intent item, with a reason for every refusal.
    fn negotiate(&self, dev: &DeviceInfo, items: &[IntentCode]) -> Vec<ItemVerdict>;
    /// Allocates a HWPT (a nested one's parent is found with [`hwpt_of`]).
    fn alloc_hwpt(&self, req: &HwptRequest) -> Result<Self::Hwpt, PluginError>;
    /// Points the device (or one PASID of it) at `hwpt`, replacing what it used in one step.
    fn attach(&self, dev: &DeviceInfo, pasid: Option<Pasid>, hwpt: &Self::Hwpt) -> Result<(), PluginError>;
    /// Blocks the device's (or the PASID's) DMA and forgets the attachment.
    fn detach(&self, dev: &DeviceInfo, pasid: Option<Pasid>) -> Result<(), PluginError>;
    /// Takes up to `max` recorded faults and page requests.
    fn read_faults(&self, max: u32) -> Result<Vec<Fault>, PluginError>;
    /// Answers a page request.
    fn page_response(&self, resp: &PageResponse) -> Result<(), PluginError>;
    /// Table pages the unit holds outside its HWPTs.
    fn table_pages(&self) -> u64;
    /// Disables translation and frees the unit's own structures. Called once, last.
    fn shutdown(&self) -> Result<(), PluginError>;
    /// Creates a vIOMMU over a nesting-parent paging HWPT (`req.parent`: [`hwpt_of`]); a unit
    /// without them refuses, as this default does.
    fn alloc_viommu(&self, req: &ViommuRequest) -> Result<Self::Viommu, PluginError> {
        let _ = req;
        Err(no_viommu("alloc_viommu"))
    }
}

/// A hardware page table ([`crate::abi::Hwpt`] says what each call must do).
pub trait HwptDriver: Send + Sync + Clone + 'static {
    /// What it is.
    fn info(&self) -> HwptInfo;
    /// Maps `[iova, iova+len)` to `[pa, pa+len)`, all or nothing.
    fn map(&self, iova: Iova, pa: PhysAddr, len: u64, prot: Prot) -> Result<(), PluginError>;
    /// Unmaps `[iova, iova+len)`; returns the bytes that were mapped.
    fn unmap(&self, iova: Iova, len: u64) -> Result<u64, PluginError>;
    /// Makes `iova` a boundary between leaf entries without changing any translation.
    fn split(&self, iova: Iova) -> Result<(), PluginError>;
    /// The translation of one address, read from the table.
    fn translate(&self, iova: Iova) -> Option<Translation>;
    /// Turns dirty tracking on or off.
    fn set_dirty_tracking(&self, enable: bool) -> Result<(), PluginError>;
    /// Reports (and unless `keep`, clears) the dirty pages of `[iova, iova+len)` in `bitmap`.
    fn read_and_clear_dirty(
        &self,
        iova: Iova,
        len: u64,
        page_shift: u8,
        bitmap: &mut [u64],
        keep: bool,
    ) -> Result<(), PluginError>;
    /// Invalidates a nested HWPT's stage-1 caches; returns how many requests were handled.
    fn invalidate(&self, reqs: &[CacheInvalidation]) -> Result<u32, PluginError>;
    /// Table pages this HWPT holds.
    fn table_pages(&self) -> u64;
}

/// A vIOMMU ([`crate::abi::Viommu`] says what each call must do).
pub trait ViommuDriver: Send + Sync + Clone + 'static {
    /// The unit's HWPT type, which its nested HWPTs are.
    type Hwpt: HwptDriver;
    /// What it is.
    fn info(&self) -> ViommuInfo;
    /// Allocates a nested HWPT over the vIOMMU's parent.
    fn alloc_nested(&self, flags: HwptFlags, stage1: &Stage1Config) -> Result<Self::Hwpt, PluginError>;
    /// `dev` is the guest's device `virt_id` from now on.
    fn set_vdevice(&self, dev: &DeviceInfo, virt_id: u64) -> Result<(), PluginError>;
    /// Forgets `dev`'s virtual id.
    fn clear_vdevice(&self, dev: &DeviceInfo) -> Result<(), PluginError>;
    /// Runs the guest's commands in order; stops at the first one it refuses.
    fn invalidate(&self, cmds: &[VirtualCommand]) -> InvalidateOutcome;
    /// Hands a guest command queue to the hardware; returns its handle.
    fn alloc_hw_queue(&self, req: &HwQueueRequest) -> Result<u64, PluginError>;
    /// Takes a queue back from the hardware.
    fn free_hw_queue(&self, handle: u64) -> Result<(), PluginError>;
}

/// The vIOMMU type of a unit that has none: no value of it exists.
pub struct NoViommu<H>(std::convert::Infallible, std::marker::PhantomData<fn() -> H>);

impl<H> Clone for NoViommu<H> {
    fn clone(&self) -> Self {
        match self.0 {}
    }
}

impl<H: HwptDriver> ViommuDriver for NoViommu<H> {
    type Hwpt = H;
    fn info(&self) -> ViommuInfo {
        match self.0 {}
    }
    fn alloc_nested(&self, _: HwptFlags, _: &Stage1Config) -> Result<H, PluginError> {
        match self.0 {}
    }
    fn set_vdevice(&self, _: &DeviceInfo, _: u64) -> Result<(), PluginError> {
        match self.0 {}
    }
    fn clear_vdevice(&self, _: &DeviceInfo) -> Result<(), PluginError> {
        match self.0 {}
    }
    fn invalidate(&self, _: &[VirtualCommand]) -> InvalidateOutcome {
        match self.0 {}
    }
    fn alloc_hw_queue(&self, _: &HwQueueRequest) -> Result<u64, PluginError> {
        match self.0 {}
    }
    fn free_hw_queue(&self, _: u64) -> Result<(), PluginError> {
        match self.0 {}
    }
}

/// Makes a plugin's root module and extension modules from its [`Plugin`] type, every entry
/// point guarded: `root_module()`, `ext_0_3()` (its vIOMMUs) and `ext_0_4()` (its model), for
/// its built-in registration ([`crate::loader::Builtin`]) and its cdylib's
/// [`export_plugin!`](crate::export_plugin). A plugin without a model does not register
/// `ext_0_4`.
#[macro_export]
macro_rules! plugin_modules {
    ($plugin:ty) => {
        /// The plugin's root module: what the cdylib exports and the built-in registration uses.
        pub fn root_module() -> $crate::abi::PluginRoot_Ref {
            const ROOT: &::abi_stable::prefix_type::WithMetadata<$crate::abi::PluginRoot> =
                &::abi_stable::prefix_type::WithMetadata::new($crate::abi::PluginRoot {
                    interface: $crate::abi::INTERFACE_VERSION,
                    info: $crate::plugin::info::<$plugin>,
                    new_backend: $crate::plugin::new_backend::<$plugin>,
                });
            $crate::abi::PluginRoot_Ref(ROOT.static_as_prefix())
        }

        /// The plugin's interface 0.3 extension: vIOMMUs on its units.
        pub fn ext_0_3() -> $crate::abi::PluginExt03_Ref {
            const EXT: &::abi_stable::prefix_type::WithMetadata<$crate::abi::PluginExt03> =
                &::abi_stable::prefix_type::WithMetadata::new($crate::abi::PluginExt03 {
                    alloc_viommu: $crate::plugin::alloc_viommu::<$plugin>,
                });
            $crate::abi::PluginExt03_Ref(EXT.static_as_prefix())
        }

        /// The plugin's interface 0.4 extension: its hardware model, so that hosts check the
        /// plugin against the unit it drives without a model compiled into them.
        pub fn ext_0_4() -> $crate::abi::PluginExt04_Ref {
            const EXT: &::abi_stable::prefix_type::WithMetadata<$crate::abi::PluginExt04> =
                &::abi_stable::prefix_type::WithMetadata::new($crate::abi::PluginExt04 {
                    model_factory: $crate::plugin::model_factory::<$plugin>,
                });
            $crate::abi::PluginExt04_Ref(EXT.static_as_prefix())
        }
    };
}
