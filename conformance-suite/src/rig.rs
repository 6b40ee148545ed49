//! A fresh machine with one unit of the plugin under test, and helpers the cases share.

use std::sync::Arc;

use ioasis::abi::Fault;
use ioasis::loader::Plugin;
use ioasis::platform::{ModelFactory, Platform};
use ioasis::{
    Context, DeviceDesc, DeviceId, DeviceRef, HwptId, Intent, IntentItem, IoasId, Iova, Pasid, PhysAddr, RequesterId,
    Target, UnitCaps, UnitId,
};
use ioasis_baremetal::{DmaError, Machine, MachineConfig};

use crate::Options;

/// Register window of the unit under test.
pub const UNIT_BASE: PhysAddr = PhysAddr(0xfed0_0000);
/// Name of the unit under test.
pub const UNIT: &str = "unit0";

pub(crate) struct Rig {
    pub machine: Arc<Machine>,
    pub ctx: Context,
    pub unit: UnitId,
    pub caps: UnitCaps,
}

/// A PCI requester id 00:dev.0.
pub(crate) fn rid(dev: u8) -> DeviceRef {
    DeviceRef::Rid(RequesterId::new(0, 0, dev, 0))
}

impl Rig {
    pub fn new(plugin: &Arc<Plugin>, factory: &dyn ModelFactory, opts: &Options) -> Result<Self, String> {
        let machine = Arc::new(
            Machine::new(MachineConfig { ram_bytes: 1 << 30, table_pool_bytes: 64 << 20 })
                .map_err(|e| e.to_string())?,
        );
        let model = factory.build(&opts.unit_model)?;
        machine.add_unit(UNIT_BASE, factory.window(), model).map_err(|e| e.to_string())?;
        let ctx = Context::new(machine.clone());
        let unit = ctx.add_unit(plugin, UNIT, UNIT_BASE, 0, &opts.unit_params).map_err(|e| e.to_string())?;
        let caps = ctx.unit_caps(unit).map_err(|e| e.to_string())?;
        Ok(Rig { machine, ctx, unit, caps })
    }

    /// Binds PCI device 00:dev.0 behind the unit, shaped by `shape`.
    pub fn bind(&self, dev: u8, shape: impl FnOnce(&mut DeviceDesc)) -> Result<DeviceId, String> {
        let mut d = DeviceDesc::pci(&format!("dev{dev}"), RequesterId::new(0, 0, dev, 0), UNIT);
        shape(&mut d);
        self.ctx.bind_device(d).map_err(|e| e.to_string())
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

    /// 00:dev.0 with untagged DMA, attached to a new IOAS: (device, IOAS, its paging HWPT).
    pub fn attached(&self, dev: u8) -> Result<(DeviceId, IoasId, HwptId), String> {
        let id = self.device(dev, &[IntentItem::UntaggedDma])?;
        let ioas = self.ctx.alloc_ioas();
        self.ctx.attach(id, None, Target::Ioas(ioas)).map_err(|e| e.to_string())?;
        let hwpt = self.ctx.attached_hwpt(id, None).map_err(|e| e.to_string())?.ok_or("attach made no HWPT")?;
        Ok((id, ioas, hwpt))
    }

    /// Device 00:dev.0 writes `data` at `iova`.
    pub fn write(&self, dev: u8, pasid: Option<u32>, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        self.machine.dma_write(UNIT_BASE, rid(dev), pasid.map(Pasid), Iova(iova), data)
    }

    /// Device 00:dev.0 reads `len` bytes at `iova`.
    pub fn read(&self, dev: u8, pasid: Option<u32>, iova: u64, len: usize) -> Result<Vec<u8>, DmaError> {
        let mut buf = vec![0; len];
        self.machine.dma_read(UNIT_BASE, rid(dev), pasid.map(Pasid), Iova(iova), &mut buf)?;
        Ok(buf)
    }

    /// RAM at `pa`.
    pub fn ram(&self, pa: u64, len: usize) -> Result<Vec<u8>, String> {
        let mut buf = vec![0; len];
        self.machine.ram().read(PhysAddr(pa), &mut buf).map_err(|e| e.to_string())?;
        Ok(buf)
    }

    /// Writes RAM at `pa`.
    pub fn put(&self, pa: u64, data: &[u8]) -> Result<(), String> {
        self.machine.ram().write(PhysAddr(pa), data).map_err(|e| e.to_string())
    }

    /// A write of `data` at `iova` must land at `pa`.
    pub fn lands(&self, dev: u8, pasid: Option<u32>, iova: u64, pa: u64, data: &[u8]) -> Result<(), String> {
        self.write(dev, pasid, iova, data).map_err(|e| format!("DMA write to {iova:#x}: {e}"))?;
        let got = self.ram(pa, data.len())?;
        if got != data {
            return Err(format!("DMA write to {iova:#x} did not land at {pa:#x}"));
        }
        Ok(())
    }

    pub fn table_pages(&self) -> u64 {
        self.machine.table_pages()
    }
}

/// The fault a DMA must have raised, with the reason wanted.
pub(crate) fn faulted<T: std::fmt::Debug>(r: Result<T, DmaError>, reason: u32, what: &str) -> Result<Fault, String> {
    match r {
        Err(DmaError::Fault(f)) if f.reason == reason => Ok(f),
        Err(DmaError::Fault(f)) => Err(format!(
            "{what}: fault reason {}, expected {}",
            Fault::reason_name(f.reason),
            Fault::reason_name(reason)
        )),
        other => Err(format!("{what}: expected a {} fault, got {other:?}", Fault::reason_name(reason))),
    }
}

/// Any fault.
pub(crate) fn any_fault<T: std::fmt::Debug>(r: Result<T, DmaError>, what: &str) -> Result<Fault, String> {
    match r {
        Err(DmaError::Fault(f)) => Ok(f),
        other => Err(format!("{what}: expected a fault, got {other:?}")),
    }
}
