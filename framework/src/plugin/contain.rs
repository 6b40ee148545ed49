//! The glue objects: a plugin's driver objects behind the ABI's traits, each call guarded.

use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use abi_stable::sabi_trait::TD_CanDowncast;
use abi_stable::std_types::{RArc, ROption, RResult, RSlice, RSliceMut, RString, RVec};

use super::{Driver, HwptDriver, UnitDriver, ViommuDriver};
use crate::abi::{
    Backend, CacheInvalidation, DeviceInfo, ErrorCode, Fault, HostServicesBox, HwQueueRequest, Hwpt, HwptBox,
    HwptFlags, HwptInfo, HwptKind, HwptRequest, Hwpt_TO, InvalidateOutcome, ItemVerdict, PageResponse, PluginError,
    Stage1Config, Translation, Unit, UnitBox, UnitDesc, Unit_TO, Viommu, ViommuBox, ViommuFeatures, ViommuInfo,
    ViommuKind, Viommu_TO, VirtualCommand,
};
use crate::addr::{Iova, IovaRange, Pasid, PhysAddr};
use crate::caps::{Features, PageSizes, UnitCaps};
use crate::format::PtFormat;
use crate::intent::IntentCode;
use crate::prot::Prot;

/// Whether one backend instance (and every object it made) still works: the first panic in
/// any of its calls marks it failed for good.
#[derive(Debug, Default)]
pub struct Health {
    failed: OnceLock<String>,
}

impl Health {
    /// A working backend's.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The first panic's message, once one happened.
    pub fn failed(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Runs `body` unless the backend failed earlier; a panic marks it failed.
    pub(super) fn call<R>(
        &self,
        what: &'static str,
        body: impl FnOnce() -> Result<R, PluginError>,
    ) -> Result<R, PluginError> {
        if let Some(first) = self.failed() {
            return Err(refused(what, first));
        }
        match catch_unwind(AssertUnwindSafe(body)) {
            Ok(r) => r,
            Err(payload) => Err(self.panicked(what, payload)),
        }
    }

    /// [`Health::call`] for a call without an error channel: `fallback` answers instead.
    pub(super) fn value<R>(
        &self,
        what: &'static str,
        fallback: impl FnOnce(PluginError) -> R,
        body: impl FnOnce() -> R,
    ) -> R {
        match self.call(what, || Ok(body())) {
            Ok(v) => v,
            Err(e) => fallback(e),
        }
    }

    fn panicked(&self, what: &str, payload: Box<dyn std::any::Any + Send>) -> PluginError {
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string());
        let first = format!("panicked in {what}: {msg}");
        let _ = self.failed.set(first.clone());
        PluginError::new(
            ErrorCode::PANICKED,
            format!("plugin {first}; the plugin is marked failed and refuses every later call"),
        )
    }
}

fn refused(what: &str, first: &str) -> PluginError {
    PluginError::new(ErrorCode::PANICKED, format!("{what} refused: the plugin failed earlier ({first})"))
}

/// One of a plugin's objects as the host holds it: the plugin's own value and its backend's
/// [`Health`]. Every ABI call runs guarded, through the health.
pub struct Contained<T> {
    inner: ManuallyDrop<T>,
    health: Arc<Health>,
}

impl<T> Contained<T> {
    fn new(inner: T, health: &Arc<Health>) -> Self {
        Self { inner: ManuallyDrop::new(inner), health: health.clone() }
    }
}

impl<T: Clone> Clone for Contained<T> {
    fn clone(&self) -> Self {
        Self::new((*self.inner).clone(), &self.health)
    }
}

impl<T> Drop for Contained<T> {
    fn drop(&mut self) {
        // A failed plugin's objects are left as they are: their state is suspect, and their
        // teardown is plugin code that could panic again.
        if self.health.failed().is_some() {
            return;
        }
        let inner = &mut self.inner;
        let dropped = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `inner` is dropped here once, in `drop`, and never used afterwards.
            unsafe { ManuallyDrop::drop(inner) }
        }));
        if let Err(payload) = dropped {
            self.health.panicked("drop", payload);
        }
    }
}

/// The plugin's HWPT behind a [`HwptBox`] the host passed back (a nested HWPT's parent, a
/// vIOMMU's parent); refused when it is not one this plugin made.
pub fn hwpt_of<H: HwptDriver>(b: &HwptBox) -> Result<&H, PluginError> {
    b.obj
        .downcast_as::<Contained<H>>()
        .map(|c| &*c.inner)
        .map_err(|_| PluginError::invalid("the HWPT was not made by this plugin"))
}

pub(super) fn backend<D: Driver>(d: D, health: &Arc<Health>) -> Contained<D> {
    Contained::new(d, health)
}

/// A driver as the backend object of a host that provides one in-process
/// ([`crate::loader::Plugin::from_host`]), every call guarded as a plugin's are.
pub fn backend_box<D: Driver>(d: D) -> crate::abi::BackendBox {
    crate::abi::Backend_TO::from_ptr(RArc::new(backend(d, &Health::new())), abi_stable::sabi_trait::TD_Opaque)
}

pub(super) fn unit_box<U: UnitDriver>(u: U, health: &Arc<Health>) -> UnitBox {
    Unit_TO::from_ptr(RArc::new(Contained::new(u, health)), TD_CanDowncast)
}

/// A HWPT as the ABI object the host holds, with a backend health of its own: for a plugin's
/// tests, which drive its objects without a host (e.g. to build a `ViommuRequest`).
pub fn boxed_hwpt<H: HwptDriver>(h: H) -> HwptBox {
    hwpt_box(h, &Health::new())
}

pub(super) fn hwpt_box<H: HwptDriver>(h: H, health: &Arc<Health>) -> HwptBox {
    Hwpt_TO::from_ptr(RArc::new(Contained::new(h, health)), TD_CanDowncast)
}

/// The plugin's unit behind a [`UnitBox`] (interface 0.3's `alloc_viommu` gets one).
pub(super) fn unit_of<U: UnitDriver>(b: &UnitBox) -> Result<&Contained<U>, PluginError> {
    b.obj.downcast_as::<Contained<U>>().map_err(|_| PluginError::invalid("the unit was not made by this plugin"))
}

impl<U: UnitDriver> Contained<U> {
    pub(super) fn alloc_viommu(&self, req: &crate::abi::ViommuRequest) -> Result<ViommuBox, PluginError> {
        let v = self.health.call("alloc_viommu", || self.inner.alloc_viommu(req))?;
        Ok(Viommu_TO::from_ptr(RArc::new(Contained::new(v, &self.health)), TD_CanDowncast))
    }
}

impl<D: Driver> Backend for Contained<D> {
    fn probe(&self, desc: &UnitDesc, host: HostServicesBox) -> RResult<UnitBox, PluginError> {
        self.health.call("probe", || self.inner.probe(desc, host)).map(|u| unit_box(u, &self.health)).into()
    }
}

/// The capabilities of a unit whose plugin failed: nothing at all, which the host refuses.
fn no_caps(e: PluginError) -> UnitCaps {
    UnitCaps {
        model: RString::from(e.message.as_str()),
        paging_format: PtFormat::NONE,
        page_sizes: PageSizes(0),
        ias_bits: 0,
        oas_bits: 0,
        pasid_bits: 0,
        features: Features(0),
        nested_formats: RVec::new(),
    }
}

impl<U: UnitDriver> Unit for Contained<U> {
    fn caps(&self) -> UnitCaps {
        self.health.value("caps", no_caps, || self.inner.caps())
    }

    fn negotiate(&self, dev: &DeviceInfo, items: RSlice<'_, IntentCode>) -> RVec<ItemVerdict> {
        let refuse_all = |e: PluginError| {
            items
                .iter()
                .map(|&item| ItemVerdict { item, granted: false, reason: RString::from(e.message.as_str()) })
                .collect()
        };
        self.health.value("negotiate", refuse_all, || RVec::from(self.inner.negotiate(dev, items.as_slice())))
    }

    fn alloc_hwpt(&self, req: &HwptRequest) -> RResult<HwptBox, PluginError> {
        self.health.call("alloc_hwpt", || self.inner.alloc_hwpt(req)).map(|h| hwpt_box(h, &self.health)).into()
    }

    fn attach(&self, dev: &DeviceInfo, pasid: ROption<Pasid>, hwpt: &HwptBox) -> RResult<(), PluginError> {
        self.health.call("attach", || self.inner.attach(dev, pasid.into_option(), hwpt_of(hwpt)?)).into()
    }

    fn detach(&self, dev: &DeviceInfo, pasid: ROption<Pasid>) -> RResult<(), PluginError> {
        self.health.call("detach", || self.inner.detach(dev, pasid.into_option())).into()
    }

    fn read_faults(&self, max: u32) -> RResult<RVec<Fault>, PluginError> {
        self.health.call("read_faults", || self.inner.read_faults(max).map(RVec::from)).into()
    }

    fn page_response(&self, resp: &PageResponse) -> RResult<(), PluginError> {
        self.health.call("page_response", || self.inner.page_response(resp)).into()
    }

    fn table_pages(&self) -> u64 {
        self.health.value("table_pages", |_| 0, || self.inner.table_pages())
    }

    fn shutdown(&self) -> RResult<(), PluginError> {
        self.health.call("shutdown", || self.inner.shutdown()).into()
    }
}

/// What a HWPT of a failed plugin says it is: a blocking table with an empty aperture.
fn no_hwpt_info(_: PluginError) -> HwptInfo {
    HwptInfo {
        kind: HwptKind::BLOCKING,
        format: PtFormat::NONE,
        page_sizes: PageSizes(0),
        aperture: IovaRange { start: Iova(0), last: Iova(0) },
        handle: u64::MAX,
    }
}

impl<H: HwptDriver> Hwpt for Contained<H> {
    fn info(&self) -> HwptInfo {
        self.health.value("info", no_hwpt_info, || self.inner.info())
    }

    fn map(&self, iova: Iova, pa: PhysAddr, len: u64, prot: Prot) -> RResult<(), PluginError> {
        self.health.call("map", || self.inner.map(iova, pa, len, prot)).into()
    }

    fn unmap(&self, iova: Iova, len: u64) -> RResult<u64, PluginError> {
        self.health.call("unmap", || self.inner.unmap(iova, len)).into()
    }

    fn split(&self, iova: Iova) -> RResult<(), PluginError> {
        self.health.call("split", || self.inner.split(iova)).into()
    }

    fn translate(&self, iova: Iova) -> ROption<Translation> {
        self.health.value("translate", |_| None, || self.inner.translate(iova)).into()
    }

    fn set_dirty_tracking(&self, enable: bool) -> RResult<(), PluginError> {
        self.health.call("set_dirty_tracking", || self.inner.set_dirty_tracking(enable)).into()
    }

    fn read_and_clear_dirty(
        &self,
        iova: Iova,
        len: u64,
        page_shift: u8,
        mut bitmap: RSliceMut<'_, u64>,
        keep: bool,
    ) -> RResult<(), PluginError> {
        self.health
            .call("read_and_clear_dirty", || {
                self.inner.read_and_clear_dirty(iova, len, page_shift, bitmap.as_mut_slice(), keep)
            })
            .into()
    }

    fn invalidate(&self, reqs: RSlice<'_, CacheInvalidation>) -> RResult<u32, PluginError> {
        self.health.call("invalidate", || self.inner.invalidate(reqs.as_slice())).into()
    }

    fn table_pages(&self) -> u64 {
        self.health.value("table_pages", |_| 0, || self.inner.table_pages())
    }
}

impl<V: ViommuDriver> Viommu for Contained<V> {
    fn info(&self) -> ViommuInfo {
        let none = |_| ViommuInfo { kind: ViommuKind(0), tag: 0, features: ViommuFeatures::default() };
        self.health.value("viommu info", none, || self.inner.info())
    }

    fn alloc_nested(&self, flags: HwptFlags, stage1: &Stage1Config) -> RResult<HwptBox, PluginError> {
        self.health
            .call("alloc_nested", || self.inner.alloc_nested(flags, stage1))
            .map(|h| hwpt_box(h, &self.health))
            .into()
    }

    fn set_vdevice(&self, dev: &DeviceInfo, virt_id: u64) -> RResult<(), PluginError> {
        self.health.call("set_vdevice", || self.inner.set_vdevice(dev, virt_id)).into()
    }

    fn clear_vdevice(&self, dev: &DeviceInfo) -> RResult<(), PluginError> {
        self.health.call("clear_vdevice", || self.inner.clear_vdevice(dev)).into()
    }

    fn invalidate(&self, cmds: RSlice<'_, VirtualCommand>) -> InvalidateOutcome {
        let none = |e| InvalidateOutcome { handled: 0, error: ROption::RSome(e) };
        self.health.value("viommu invalidate", none, || self.inner.invalidate(cmds.as_slice()))
    }

    fn alloc_hw_queue(&self, req: &HwQueueRequest) -> RResult<u64, PluginError> {
        self.health.call("alloc_hw_queue", || self.inner.alloc_hw_queue(req)).into()
    }

    fn free_hw_queue(&self, handle: u64) -> RResult<(), PluginError> {
        self.health.call("free_hw_queue", || self.inner.free_hw_queue(handle)).into()
    }
}
