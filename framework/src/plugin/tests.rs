//! The glue on a toy driver whose calls panic on demand: contained, marked, refused.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use abi_stable::std_types::{ROption, RString, RVec};

use super::contain::{hwpt_box, unit_box, Health};
use super::*;
use crate::abi::{ErrorCode, HwptBox, HwptKind, UnitBox};
use crate::addr::IovaRange;
use crate::caps::{Features, PageSizes};
use crate::format::PtFormat;

/// Counts the driver's calls that got in, and panics in the one named.
#[derive(Default)]
struct Script {
    panic_in: std::sync::Mutex<&'static str>,
    entered: AtomicU32,
    dropped: AtomicU32,
}

impl Script {
    fn enter(&self, what: &'static str) {
        self.entered.fetch_add(1, Ordering::SeqCst);
        if *self.panic_in.lock().unwrap() == what {
            panic!("toy: {what} panics");
        }
    }
}

struct ToyUnit(Arc<Script>);

#[derive(Clone)]
struct ToyHwpt(Arc<Script>);

impl Drop for ToyHwpt {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
        self.0.enter("drop");
    }
}

impl UnitDriver for ToyUnit {
    type Hwpt = ToyHwpt;
    type Viommu = NoViommu<ToyHwpt>;
    fn caps(&self) -> UnitCaps {
        self.0.enter("caps");
        UnitCaps {
            model: RString::from("toy"),
            paging_format: PtFormat::MOCK,
            page_sizes: PageSizes::SZ_4K,
            ias_bits: 48,
            oas_bits: 48,
            pasid_bits: 0,
            features: Features(0),
            nested_formats: RVec::new(),
        }
    }
    fn negotiate(&self, _: &DeviceInfo, items: &[IntentCode]) -> Vec<ItemVerdict> {
        self.0.enter("negotiate");
        items.iter().map(|&item| ItemVerdict { item, granted: true, reason: RString::new() }).collect()
    }
    fn alloc_hwpt(&self, _: &HwptRequest) -> Result<ToyHwpt, PluginError> {
        self.0.enter("alloc_hwpt");
        Ok(ToyHwpt(self.0.clone()))
    }
    fn attach(&self, _: &DeviceInfo, _: Option<Pasid>, _: &ToyHwpt) -> Result<(), PluginError> {
        self.0.enter("attach");
        Ok(())
    }
    fn detach(&self, _: &DeviceInfo, _: Option<Pasid>) -> Result<(), PluginError> {
        self.0.enter("detach");
        Ok(())
    }
    fn read_faults(&self, _: u32) -> Result<Vec<Fault>, PluginError> {
        self.0.enter("read_faults");
        Ok(Vec::new())
    }
    fn page_response(&self, _: &PageResponse) -> Result<(), PluginError> {
        self.0.enter("page_response");
        Ok(())
    }
    fn table_pages(&self) -> u64 {
        self.0.enter("table_pages");
        1
    }
    fn shutdown(&self) -> Result<(), PluginError> {
        self.0.enter("shutdown");
        Ok(())
    }
}

impl HwptDriver for ToyHwpt {
    fn info(&self) -> HwptInfo {
        self.0.enter("info");
        HwptInfo {
            kind: HwptKind::PAGING,
            format: PtFormat::MOCK,
            page_sizes: PageSizes::SZ_4K,
            aperture: IovaRange { start: Iova(0), last: Iova(u64::MAX) },
            handle: 1,
        }
    }
    fn map(&self, _: Iova, _: PhysAddr, _: u64, _: Prot) -> Result<(), PluginError> {
        self.0.enter("map");
        Ok(())
    }
    fn unmap(&self, _: Iova, len: u64) -> Result<u64, PluginError> {
        self.0.enter("unmap");
        Ok(len)
    }
    fn split(&self, _: Iova) -> Result<(), PluginError> {
        self.0.enter("split");
        Ok(())
    }
    fn translate(&self, iova: Iova) -> Option<Translation> {
        self.0.enter("translate");
        Some(Translation { pa: PhysAddr(iova.0), prot: Prot::RW, page_size: 4096 })
    }
    fn set_dirty_tracking(&self, _: bool) -> Result<(), PluginError> {
        self.0.enter("set_dirty_tracking");
        Ok(())
    }
    fn read_and_clear_dirty(&self, _: Iova, _: u64, _: u8, _: &mut [u64], _: bool) -> Result<(), PluginError> {
        self.0.enter("read_and_clear_dirty");
        Ok(())
    }
    fn invalidate(&self, reqs: &[CacheInvalidation]) -> Result<u32, PluginError> {
        self.0.enter("invalidate");
        Ok(reqs.len() as u32)
    }
    fn table_pages(&self) -> u64 {
        self.0.enter("hwpt table_pages");
        0
    }
}

fn toy() -> (Arc<Script>, Arc<Health>, UnitBox) {
    let script = Arc::new(Script::default());
    let health = Health::new();
    let unit = unit_box(ToyUnit(script.clone()), &health);
    (script, health, unit)
}

fn dev() -> DeviceInfo {
    DeviceInfo {
        dev: crate::DeviceRef::Rid(crate::RequesterId { segment: 0, bus: 0, devfn: 8 }),
        pasid_bits: 0,
        ats: false,
        pri: false,
        dma_bits: 64,
    }
}

fn paging() -> HwptRequest {
    HwptRequest {
        kind: HwptKind::PAGING,
        flags: HwptFlags::default(),
        parent: ROption::RNone,
        stage1: ROption::RNone,
        space: crate::AddressSpace::host(),
    }
}

#[test]
fn a_panic_is_an_error_and_every_later_call_is_refused_without_entering_the_plugin() {
    let (script, health, unit) = toy();
    let h: HwptBox = unit.alloc_hwpt(&paging()).unwrap();
    unit.attach(&dev(), ROption::RNone, &h).unwrap();
    *script.panic_in.lock().unwrap() = "map";
    let e = h.map(Iova(0), PhysAddr(0), 4096, Prot::RW).unwrap_err();
    assert_eq!(e.code, ErrorCode::PANICKED);
    assert!(e.message.contains("panicked in map: toy: map panics"), "{}", e.message);
    assert_eq!(health.failed(), Some("panicked in map: toy: map panics"));
    *script.panic_in.lock().unwrap() = "";
    let entered = script.entered.load(Ordering::SeqCst);
    // Calls with an error channel: refused, naming the first panic.
    for e in [
        h.unmap(Iova(0), 4096).map(|_| ()).unwrap_err(),
        h.split(Iova(0)).unwrap_err(),
        unit.detach(&dev(), ROption::RNone).unwrap_err(),
        unit.alloc_hwpt(&paging()).map(|_| ()).unwrap_err(),
        unit.read_faults(4).map(|_| ()).unwrap_err(),
        unit.shutdown().unwrap_err(),
    ] {
        assert_eq!(e.code, ErrorCode::PANICKED);
        assert!(e.message.contains("refused: the plugin failed earlier (panicked in map"), "{}", e.message);
    }
    // Calls without one: conservative answers.
    assert!(h.translate(Iova(0)).is_none());
    assert_eq!(h.table_pages(), 0);
    assert_eq!(unit.caps().ias_bits, 0, "no capabilities, which the host refuses");
    let v = unit.negotiate(&dev(), [IntentCode { kind: 1, arg: 0 }, IntentCode { kind: 2, arg: 0 }].as_slice().into());
    assert_eq!(v.len(), 2);
    assert!(v.iter().all(|v| !v.granted && v.reason.contains("failed earlier")), "{v:?}");
    assert_eq!(script.entered.load(Ordering::SeqCst), entered, "nothing entered the plugin");
    // Its objects are not torn down: their state is suspect.
    drop(h);
    assert_eq!(script.dropped.load(Ordering::SeqCst), 0);
}

#[test]
fn panics_in_calls_without_an_error_channel_and_in_drop_are_contained_too() {
    for what in ["caps", "negotiate", "translate", "table_pages", "info", "drop"] {
        let (script, health, unit) = toy();
        let h = unit.alloc_hwpt(&paging()).unwrap();
        *script.panic_in.lock().unwrap() = what;
        match what {
            "caps" => assert_eq!(unit.caps().ias_bits, 0),
            "negotiate" => {
                assert!(!unit.negotiate(&dev(), [IntentCode { kind: 1, arg: 0 }].as_slice().into())[0].granted)
            }
            "translate" => assert!(h.translate(Iova(0)).is_none()),
            "table_pages" => assert_eq!(unit.table_pages(), 0),
            "info" => assert_eq!(h.info().kind, HwptKind::BLOCKING),
            // The last box of a HWPT goes: the driver's value drops, and panics.
            _ => drop(unit.alloc_hwpt(&paging()).unwrap()),
        }
        assert!(health.failed().is_some_and(|w| w.contains(what)), "{what}: {:?}", health.failed());
        assert!(h.map(Iova(0), PhysAddr(0), 4096, Prot::RW).is_err(), "{what}");
    }
}

#[test]
fn a_working_plugin_sees_its_own_types_and_a_foreign_hwpt_is_refused() {
    let (script, health, unit) = toy();
    let h = unit.alloc_hwpt(&paging()).unwrap();
    assert_eq!(h.unmap(Iova(0), 8192).unwrap(), 8192);
    assert!(hwpt_of::<ToyHwpt>(&h).is_ok());
    // A HWPT of another plugin's type (or another backend's glue) is not this one's.
    let other = hwpt_box(ForeignHwpt, &Health::new());
    let e = unit.attach(&dev(), ROption::RNone, &other).unwrap_err();
    assert_eq!(e.code, ErrorCode::INVALID, "{e:?}");
    assert!(health.failed().is_none());
    // Dropping the last box of a HWPT drops the driver's value, once.
    drop(h);
    assert_eq!(script.dropped.load(Ordering::SeqCst), 1);
}

#[derive(Clone)]
struct ForeignHwpt;

impl HwptDriver for ForeignHwpt {
    fn info(&self) -> HwptInfo {
        HwptInfo {
            kind: HwptKind::BLOCKING,
            format: PtFormat::NONE,
            page_sizes: PageSizes(0),
            aperture: IovaRange { start: Iova(0), last: Iova(0) },
            handle: 9,
        }
    }
    fn map(&self, _: Iova, _: PhysAddr, _: u64, _: Prot) -> Result<(), PluginError> {
        Ok(())
    }
    fn unmap(&self, _: Iova, _: u64) -> Result<u64, PluginError> {
        Ok(0)
    }
    fn split(&self, _: Iova) -> Result<(), PluginError> {
        Ok(())
    }
    fn translate(&self, _: Iova) -> Option<Translation> {
        None
    }
    fn set_dirty_tracking(&self, _: bool) -> Result<(), PluginError> {
        Ok(())
    }
    fn read_and_clear_dirty(&self, _: Iova, _: u64, _: u8, _: &mut [u64], _: bool) -> Result<(), PluginError> {
        Ok(())
    }
    fn invalidate(&self, _: &[CacheInvalidation]) -> Result<u32, PluginError> {
        Ok(0)
    }
    fn table_pages(&self) -> u64 {
        0
    }
}
