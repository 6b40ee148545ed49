//! Answers from a backend that the framework cannot use are refused with a typed error naming
//! the plugin, and leave nothing behind: a wrapper around the mock that lies about one thing.

mod common;

use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RSlice, RSliceMut, RVec};
use common::{mock_plugin, MB, UNIT_BASE};
use ioasis::abi::{
    Backend, Backend_TO, CacheInvalidation, DeviceInfo, Fault, HostServicesBox, Hwpt, HwptBox, HwptInfo, HwptKind,
    HwptRequest, Hwpt_TO, ItemVerdict, PageResponse, PluginError, Translation, Unit, UnitBox, UnitDesc, Unit_TO,
};
use ioasis::loader::{Plugin, PluginInfoOwned};
use ioasis::{Context, Error, Features, HwptSpec, IntentCode, Iova, PageSizes, Pasid, PhysAddr, Prot, UnitCaps};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_plugin_mock::format::cap;
use ioasis_plugin_mock::model::MockModel;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lie {
    /// Unknown feature bits in the caps.
    Features,
    /// A nested HWPT for a paging request.
    Kind,
    /// A paging HWPT with no page size.
    NoPageSizes,
    /// Unknown permission bits in a translation.
    TranslateProt,
    /// Always a full batch of faults: a unit that never runs dry.
    EndlessFaults,
    /// One fault more than asked for.
    TooManyFaults,
}

fn fake_fault(i: u32) -> Fault {
    Fault {
        dev: ioasis::DeviceRef::Rid(ioasis::RequesterId::new(0, 0, 1, 0)),
        pasid: ROption::RNone,
        addr: Iova(u64::from(i) << 12),
        access: Prot::READ,
        reason: Fault::NOT_PRESENT,
        page_request: false,
        group: 0,
    }
}

struct LyingBackend {
    inner: Arc<Plugin>,
    lie: Lie,
}

impl Backend for LyingBackend {
    fn probe(&self, desc: &UnitDesc, host: HostServicesBox) -> RResult<UnitBox, PluginError> {
        let lie = self.lie;
        self.inner
            .backend()
            .probe(desc, host)
            .map(|inner| Unit_TO::from_ptr(RArc::new(LyingUnit { inner, lie }), TD_Opaque))
    }
}

struct LyingUnit {
    inner: UnitBox,
    lie: Lie,
}

impl Unit for LyingUnit {
    fn caps(&self) -> UnitCaps {
        let mut c = self.inner.caps();
        if self.lie == Lie::Features {
            c.features = Features(c.features.0 | 1 << 40);
        }
        c
    }
    fn negotiate(&self, dev: &DeviceInfo, items: RSlice<'_, IntentCode>) -> RVec<ItemVerdict> {
        self.inner.negotiate(dev, items)
    }
    fn alloc_hwpt(&self, req: &HwptRequest) -> RResult<HwptBox, PluginError> {
        let lie = self.lie;
        self.inner.alloc_hwpt(req).map(|inner| Hwpt_TO::from_ptr(RArc::new(LyingHwpt { inner, lie }), TD_Opaque))
    }
    fn attach(&self, dev: &DeviceInfo, pasid: ROption<Pasid>, hwpt: &HwptBox) -> RResult<(), PluginError> {
        self.inner.attach(dev, pasid, hwpt)
    }
    fn detach(&self, dev: &DeviceInfo, pasid: ROption<Pasid>) -> RResult<(), PluginError> {
        self.inner.detach(dev, pasid)
    }
    fn read_faults(&self, max: u32) -> RResult<RVec<Fault>, PluginError> {
        match self.lie {
            Lie::EndlessFaults => RResult::ROk((0..max).map(fake_fault).collect()),
            Lie::TooManyFaults => RResult::ROk((0..=max).map(fake_fault).collect()),
            _ => self.inner.read_faults(max),
        }
    }
    fn page_response(&self, resp: &PageResponse) -> RResult<(), PluginError> {
        self.inner.page_response(resp)
    }
    fn table_pages(&self) -> u64 {
        self.inner.table_pages()
    }
    fn shutdown(&self) -> RResult<(), PluginError> {
        self.inner.shutdown()
    }
}

#[derive(Clone)]
struct LyingHwpt {
    inner: HwptBox,
    lie: Lie,
}

impl Hwpt for LyingHwpt {
    fn info(&self) -> HwptInfo {
        let mut i = self.inner.info();
        match self.lie {
            Lie::Kind => i.kind = HwptKind::NESTED,
            Lie::NoPageSizes => i.page_sizes = PageSizes(0),
            _ => {}
        }
        i
    }
    fn map(&self, iova: Iova, pa: PhysAddr, len: u64, prot: Prot) -> RResult<(), PluginError> {
        self.inner.map(iova, pa, len, prot)
    }
    fn unmap(&self, iova: Iova, len: u64) -> RResult<u64, PluginError> {
        self.inner.unmap(iova, len)
    }
    fn split(&self, iova: Iova) -> RResult<(), PluginError> {
        self.inner.split(iova)
    }
    fn translate(&self, iova: Iova) -> ROption<Translation> {
        let lie = self.lie;
        self.inner.translate(iova).map(|mut t| {
            if lie == Lie::TranslateProt {
                t.prot = Prot(t.prot.0 | 0x40);
            }
            t
        })
    }
    fn set_dirty_tracking(&self, enable: bool) -> RResult<(), PluginError> {
        self.inner.set_dirty_tracking(enable)
    }
    fn read_and_clear_dirty(
        &self,
        iova: Iova,
        len: u64,
        page_shift: u8,
        bitmap: RSliceMut<'_, u64>,
        keep: bool,
    ) -> RResult<(), PluginError> {
        self.inner.read_and_clear_dirty(iova, len, page_shift, bitmap, keep)
    }
    fn invalidate(&self, reqs: RSlice<'_, CacheInvalidation>) -> RResult<u32, PluginError> {
        self.inner.invalidate(reqs)
    }
    fn table_pages(&self) -> u64 {
        self.inner.table_pages()
    }
}

fn liar(lie: Lie) -> Arc<Plugin> {
    let mock = mock_plugin();
    let backend = Backend_TO::from_ptr(RArc::new(LyingBackend { inner: mock, lie }), TD_Opaque);
    let info = PluginInfoOwned {
        name: "liar".into(),
        version: "0".into(),
        vendor: "tests".into(),
        description: "the mock, lying".into(),
    };
    Arc::new(Plugin::from_host(info, backend))
}

/// A machine with one full mock unit, not probed yet.
fn machine() -> (Arc<Machine>, Context) {
    let machine =
        Arc::new(Machine::new(MachineConfig { ram_bytes: 512 * MB, table_pool_bytes: 64 * MB }).expect("machine"));
    machine.add_unit(PhysAddr(UNIT_BASE), 0x1000, Arc::new(MockModel::new(cap::FULL))).expect("unit window");
    let ctx = Context::new(machine.clone());
    (machine, ctx)
}

fn is_bad_answer(e: &Error, op: &str) -> bool {
    matches!(e, Error::BadAnswer { plugin, unit, op: o, .. } if plugin == "liar" && unit == "u0" && *o == op)
}

#[test]
fn a_unit_with_unknown_feature_bits_is_refused_and_shut_down() {
    let (_m, ctx) = machine();
    let e = ctx.add_unit(&liar(Lie::Features), "u0", PhysAddr(UNIT_BASE), 0, "").unwrap_err();
    assert!(is_bad_answer(&e, "caps"), "{e}");
    assert!(ctx.units().is_empty());
    assert_eq!(ctx.table_pages(), 0, "the probed unit was shut down");
}

#[test]
fn a_hwpt_of_the_wrong_kind_or_without_page_sizes_is_refused_and_freed() {
    for (lie, what) in [(Lie::Kind, "kind"), (Lie::NoPageSizes, "page sizes")] {
        let (_m, ctx) = machine();
        let unit = ctx.add_unit(&liar(lie), "u0", PhysAddr(UNIT_BASE), 0, "").unwrap();
        let ioas = ctx.alloc_ioas();
        ctx.map(ioas, Some(Iova(0)), PhysAddr(0x100_0000), 2 * MB, Prot::RW).unwrap();
        let pages = ctx.table_pages();
        let spec = HwptSpec::Paging { ioas, flags: Default::default(), fault_queue: None };
        let e = ctx.alloc_hwpt(unit, spec).unwrap_err();
        assert!(is_bad_answer(&e, "alloc_hwpt"), "{what}: {e}");
        assert!(ctx.ioas_hwpts(ioas).unwrap().is_empty(), "{what}");
        assert_eq!(ctx.table_pages(), pages, "{what}: the HWPT the backend returned was freed");
        // Blocking and identity HWPTs map nothing: no page size is fine for them.
        if lie == Lie::NoPageSizes {
            ctx.alloc_hwpt(unit, HwptSpec::Blocking).unwrap();
            ctx.alloc_hwpt(unit, HwptSpec::Identity).unwrap();
        }
    }
}

#[test]
fn a_translation_with_unknown_permission_bits_is_refused() {
    let (_m, ctx) = machine();
    let unit = ctx.add_unit(&liar(Lie::TranslateProt), "u0", PhysAddr(UNIT_BASE), 0, "").unwrap();
    let ioas = ctx.alloc_ioas();
    let spec = HwptSpec::Paging { ioas, flags: Default::default(), fault_queue: None };
    let h = ctx.alloc_hwpt(unit, spec).unwrap();
    assert_eq!(ctx.translate(h, Iova(0x1000)).unwrap(), None, "nothing mapped: nothing to check");
    ctx.map(ioas, Some(Iova(0)), PhysAddr(0x100_0000), 0x1000, Prot::RW).unwrap();
    let e = ctx.translate(h, Iova(0)).unwrap_err();
    assert!(is_bad_answer(&e, "translate"), "{e}");
}

#[test]
fn a_unit_that_never_runs_out_of_faults_does_not_hold_the_poller() {
    let (_m, ctx) = machine();
    ctx.add_unit(&liar(Lie::EndlessFaults), "u0", PhysAddr(UNIT_BASE), 0, "").unwrap();
    // Each call ends with a bounded count; the fault log stays bounded too.
    for _ in 0..3 {
        let n = ctx.poll_faults().unwrap();
        assert_eq!(n, ioasis::MAX_POLL_BATCHES * 256);
    }
    let log = ctx.take_fault_log();
    assert!(!log.is_empty() && log.len() <= 4096, "{}", log.len());
}

#[test]
fn more_faults_than_asked_for_is_a_bad_answer() {
    let (_m, ctx) = machine();
    ctx.add_unit(&liar(Lie::TooManyFaults), "u0", PhysAddr(UNIT_BASE), 0, "").unwrap();
    let e = ctx.poll_faults().unwrap_err();
    assert!(is_bad_answer(&e, "read_faults"), "{e}");
}
