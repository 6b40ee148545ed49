//! A fresh machine with one unit of the plugin under test, and helpers the cases share.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use ioasis::abi::{Fault, HwptFlags};
use ioasis::loader::Plugin;
use ioasis::platform::PageResponseSeen;
use ioasis::{
    Context, DeviceDesc, DeviceId, DeviceRef, FaultQueueId, HwptId, HwptSpec, Intent, IntentItem, IoasId, PhysAddr,
    RequesterId, Target, UnitCaps, UnitId,
};
use ioasis_baremetal::dma::DmaJob;
use ioasis_baremetal::DmaError;

use crate::bench::{Bench, DmaFailure, Need, Sizes, Source};
use crate::Options;

/// Name of the unit under test.
pub const UNIT: &str = "unit0";

pub(crate) struct Rig {
    // Dropped before the bench: the context's teardown still reaches the machine.
    pub ctx: Context,
    pub unit: UnitId,
    pub caps: UnitCaps,
    bench: Box<dyn Bench>,
    /// The device bound for each requester id.
    bound: Mutex<HashMap<RequesterId, DeviceId>>,
    /// The first platform limit the case ran into.
    limit: Mutex<Option<String>>,
}

/// A PCI requester id 00:dev.0.
pub(crate) fn rid(dev: u8) -> DeviceRef {
    DeviceRef::Rid(pci(dev))
}

/// The PCI function 00:dev.0.
pub(crate) const fn pci(dev: u8) -> RequesterId {
    RequesterId::new(0, 0, dev, 0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Rig {
    /// A context on `bench`'s platform with the plugin's unit probed.
    pub fn new(plugin: &std::sync::Arc<Plugin>, bench: Box<dyn Bench>, opts: &Options) -> Result<Self, String> {
        let ctx = Context::new(bench.platform());
        let unit = ctx.add_unit(plugin, UNIT, bench.unit_base(), 0, &opts.unit_params).map_err(|e| e.to_string())?;
        let caps = ctx.unit_caps(unit).map_err(|e| e.to_string())?;
        Ok(Rig { ctx, unit, caps, bench, bound: Mutex::default(), limit: Mutex::default() })
    }

    /// Err (the case ends, and is reported as skipped) when this platform cannot do `need`.
    pub fn need(&self, need: Need) -> Result<(), String> {
        match self.bench.limit(need) {
            None => Ok(()),
            Some(why) => {
                let msg = format!("platform limit: {why}");
                self.hit(why);
                Err(msg)
            }
        }
    }

    /// Records a platform limit the case ran into (the first one is kept).
    fn hit(&self, why: String) {
        lock(&self.limit).get_or_insert(why);
    }

    /// The platform limit the case ran into, if any.
    pub fn limit_hit(&self) -> Option<String> {
        lock(&self.limit).clone()
    }

    /// How big the expensive cases are on this platform.
    pub fn sizes(&self) -> Sizes {
        self.bench.sizes()
    }

    /// Register window of the unit under test.
    pub fn unit_base(&self) -> PhysAddr {
        self.bench.unit_base()
    }

    /// Binds PCI device 00:dev.0 behind the unit, shaped by `shape`.
    pub fn bind(&self, dev: u8, shape: impl FnOnce(&mut DeviceDesc)) -> Result<DeviceId, String> {
        self.bind_at(pci(dev), shape)
    }

    /// Binds the PCI function `rid` (any bus, device and function) behind the unit.
    pub fn bind_at(&self, rid: RequesterId, shape: impl FnOnce(&mut DeviceDesc)) -> Result<DeviceId, String> {
        let name = format!("pci{:02x}-{:02x}", rid.bus, rid.devfn);
        let mut d = DeviceDesc::pci(&name, rid, UNIT);
        shape(&mut d);
        let id = self.ctx.bind_device(d).map_err(|e| e.to_string())?;
        lock(&self.bound).insert(rid, id);
        Ok(id)
    }

    /// Binds 00:dev.0 (with PASID/ATS/PRI) and negotiates `items`.
    pub fn device(&self, dev: u8, items: &[IntentItem]) -> Result<DeviceId, String> {
        let id = self.bind(dev, |d| {
            d.pasid_bits = 20;
            d.ats = true;
            d.pri = true;
        })?;
        self.ctx.negotiate(id, &Intent::new(items.iter().copied())).map_err(|e| e.to_string())?;
        Ok(id)
    }

    /// 00:dev.0 with untagged DMA and page requests, attached to a paging HWPT of a new IOAS
    /// whose page requests go to a new fault queue: (device, IOAS, HWPT, queue).
    pub fn faulting(&self, dev: u8) -> Result<(DeviceId, IoasId, HwptId, FaultQueueId), String> {
        let id = self.device(dev, &[IntentItem::UntaggedDma, IntentItem::PageFaults])?;
        let ioas = self.ctx.alloc_ioas();
        let q = self.ctx.alloc_fault_queue();
        let spec = HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: Some(q) };
        let h = self.ctx.alloc_hwpt(self.unit, spec).map_err(|e| e.to_string())?;
        self.ctx.attach(id, None, Target::Hwpt(h)).map_err(|e| e.to_string())?;
        Ok((id, ioas, h, q))
    }

    /// 00:dev.0 with untagged DMA, attached to a new IOAS: (device, IOAS, its paging HWPT).
    pub fn attached(&self, dev: u8) -> Result<(DeviceId, IoasId, HwptId), String> {
        let id = self.device(dev, &[IntentItem::UntaggedDma])?;
        let ioas = self.ctx.alloc_ioas();
        self.ctx.attach(id, None, Target::Ioas(ioas)).map_err(|e| e.to_string())?;
        let hwpt = self.ctx.attached_hwpt(id, None).map_err(|e| e.to_string())?.ok_or("attach made no HWPT")?;
        Ok((id, ioas, hwpt))
    }

    fn source(&self, rid: RequesterId, pasid: Option<u32>) -> Source {
        Source { rid, pasid, id: lock(&self.bound).get(&rid).copied() }
    }

    fn noted<T>(&self, r: Result<T, DmaFailure>) -> Result<T, DmaFailure> {
        if let Err(DmaFailure::Limit(why)) = &r {
            self.hit(why.clone());
        }
        r
    }

    /// Device 00:dev.0 writes `data` at `iova`.
    pub fn write(&self, dev: u8, pasid: Option<u32>, iova: u64, data: &[u8]) -> Result<(), DmaFailure> {
        self.write_at(pci(dev), pasid, iova, data)
    }

    /// Device 00:dev.0 reads `len` bytes at `iova`.
    pub fn read(&self, dev: u8, pasid: Option<u32>, iova: u64, len: usize) -> Result<Vec<u8>, DmaFailure> {
        self.read_at(pci(dev), pasid, iova, len)
    }

    /// The PCI function `rid` writes `data` at `iova`.
    pub fn write_at(&self, rid: RequesterId, pasid: Option<u32>, iova: u64, data: &[u8]) -> Result<(), DmaFailure> {
        self.noted(self.bench.dma_write(&self.ctx, self.source(rid, pasid), iova, data))
    }

    /// The PCI function `rid` reads `len` bytes at `iova`.
    pub fn read_at(&self, rid: RequesterId, pasid: Option<u32>, iova: u64, len: usize) -> Result<Vec<u8>, DmaFailure> {
        self.noted(self.bench.dma_read(&self.ctx, self.source(rid, pasid), iova, len))
    }

    /// Runs `jobs` at once (see [`Need::ParallelDma`]).
    pub fn parallel(&self, jobs: &[DmaJob<'_>]) -> Result<Vec<Result<Vec<u8>, DmaFailure>>, String> {
        self.noted(self.bench.dma_parallel(jobs)).map_err(|e| e.to_string())
    }

    /// RAM at `pa`.
    pub fn ram(&self, pa: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut buf = vec![0; len];
        self.ctx.platform().read(PhysAddr(pa), &mut buf).map_err(|e| e.to_string())?;
        Ok(buf)
    }

    /// Writes RAM at `pa`.
    pub fn put(&self, pa: u64, data: &[u8]) -> Result<(), String> {
        self.ctx.platform().write(PhysAddr(pa), data).map_err(|e| e.to_string())
    }

    /// A write of `data` at `iova` must land at `pa`.
    pub fn lands(&self, dev: u8, pasid: Option<u32>, iova: u64, pa: u64, data: &[u8]) -> Result<(), String> {
        self.lands_at(pci(dev), pasid, iova, pa, data)
    }

    /// A write of `data` at `iova` by the PCI function `rid` must land at `pa`.
    pub fn lands_at(
        &self,
        rid: RequesterId,
        pasid: Option<u32>,
        iova: u64,
        pa: u64,
        data: &[u8],
    ) -> Result<(), String> {
        self.write_at(rid, pasid, iova, data).map_err(|e| format!("{rid}: DMA write to {iova:#x}: {e}"))?;
        let got = self.ram(pa, data.len())?;
        if got != data {
            return Err(format!("DMA write to {iova:#x} did not land at {pa:#x}"));
        }
        Ok(())
    }

    /// The page responses the unit received, oldest first, when the bench can see them.
    pub fn page_responses(&self) -> Option<Vec<PageResponseSeen>> {
        self.bench.page_responses()
    }

    pub fn table_pages(&self) -> u64 {
        self.ctx.table_pages()
    }
}

/// The fault a DMA must have raised, with the reason wanted.
pub(crate) fn faulted<T: std::fmt::Debug>(r: Result<T, DmaFailure>, reason: u32, what: &str) -> Result<Fault, String> {
    match r {
        Err(DmaFailure::Dma(DmaError::Fault(f))) if f.reason == reason => Ok(f),
        Err(DmaFailure::Dma(DmaError::Fault(f))) => Err(format!(
            "{what}: fault reason {}, expected {}",
            Fault::reason_name(f.reason),
            Fault::reason_name(reason)
        )),
        other => Err(format!("{what}: expected a {} fault, got {}", Fault::reason_name(reason), shown(&other))),
    }
}

/// Any fault.
pub(crate) fn any_fault<T: std::fmt::Debug>(r: Result<T, DmaFailure>, what: &str) -> Result<Fault, String> {
    match r {
        Err(DmaFailure::Dma(DmaError::Fault(f))) => Ok(f),
        other => Err(format!("{what}: expected a fault, got {}", shown(&other))),
    }
}

/// A DMA result as a failure message shows it.
fn shown<T: std::fmt::Debug>(r: &Result<T, DmaFailure>) -> String {
    match r {
        // Dma(..) keeps the shape the simulated suite always printed.
        Err(DmaFailure::Dma(e)) => format!("Err({e:?})"),
        Err(other) => format!("Err({other})"),
        Ok(v) => format!("Ok({v:?})"),
    }
}
