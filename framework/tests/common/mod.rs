//! What the scenario tests share: a simulated machine with mock units, and helpers.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use ioasis::loader::{Plugin, Registry};
use ioasis::{Context, DeviceDesc, DeviceId, Intent, IntentItem, Iova, PhysAddr, RequesterId};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_plugin_mock::format::cap;
use ioasis_plugin_mock::model::MockModel;

/// Register window of the first unit; further units follow at 0x1000 steps.
pub const UNIT_BASE: u64 = 0xfed0_0000;
pub const MB: u64 = 1 << 20;

/// The built-in mock plugin.
pub fn mock_plugin() -> Arc<Plugin> {
    let reg = Registry::with_builtins().expect("built-ins load");
    reg.get("mock").expect("mock is built in")
}

/// Where cargo put a cdylib of this workspace: next to the test binary's `deps` folder.
pub fn cdylib(stem: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps dir");
    let file = format!("lib{stem}.so");
    for dir in [deps.to_path_buf(), deps.parent().expect("profile dir").to_path_buf()] {
        if dir.join(&file).exists() {
            return dir.join(&file);
        }
    }
    panic!("{file} was not built next to {}", deps.display());
}

pub struct Rig {
    pub machine: Arc<Machine>,
    pub ctx: Context,
    pub models: Vec<Arc<MockModel>>,
}

impl Rig {
    /// A machine with one full-capability mock unit `u0`.
    pub fn new() -> Self {
        Self::with_units(&[cap::FULL], &mock_plugin())
    }

    /// One mock unit per CAP value (`u0`, `u1`, ...), driven by `plugin`.
    pub fn with_units(caps: &[u64], plugin: &Arc<Plugin>) -> Self {
        Self::with_params(caps, plugin, "")
    }

    pub fn with_params(caps: &[u64], plugin: &Arc<Plugin>, params: &str) -> Self {
        // 3.5 GiB (allocated as touched), below the units' registers: the largest maps are
        // 3 GiB from physical 0; the table pool is the top 64 MiB.
        let machine =
            Arc::new(Machine::new(MachineConfig { ram_bytes: 3584 * MB, table_pool_bytes: 64 * MB }).expect("machine"));
        let ctx = Context::new(machine.clone());
        let mut models = Vec::new();
        for (i, c) in caps.iter().enumerate() {
            let base = PhysAddr(UNIT_BASE + i as u64 * 0x1000);
            let model = Arc::new(MockModel::new(*c));
            machine.add_unit(base, 0x1000, model.clone()).expect("unit window");
            ctx.add_unit(plugin, &format!("u{i}"), base, 0, params).expect("probe");
            models.push(model);
        }
        Rig { machine, ctx, models }
    }

    pub fn unit_base(&self, i: usize) -> PhysAddr {
        PhysAddr(UNIT_BASE + i as u64 * 0x1000)
    }

    /// Binds a PCI device 00:dev.0 behind `unit` with PASID/ATS/PRI.
    pub fn device(&self, dev: u8, unit: usize) -> DeviceId {
        let mut d = DeviceDesc::pci(&format!("dev{dev}"), RequesterId::new(0, 0, dev, 0), &format!("u{unit}"));
        d.pasid_bits = 20;
        d.pri = true;
        d.ats = true;
        self.ctx.bind_device(d).expect("bind")
    }

    /// Binds and negotiates untagged DMA (plus `extra` items).
    pub fn paging_device(&self, dev: u8, unit: usize, extra: &[IntentItem]) -> DeviceId {
        let id = self.device(dev, unit);
        let mut items = vec![IntentItem::UntaggedDma];
        items.extend_from_slice(extra);
        self.ctx.negotiate(id, &Intent::new(items)).expect("contract");
        id
    }

    pub fn rid(dev: u8) -> ioasis::DeviceRef {
        ioasis::DeviceRef::Rid(RequesterId::new(0, 0, dev, 0))
    }

    /// DMA-writes `data` as device 00:dev.0 through unit `unit`.
    pub fn dma_write(
        &self,
        unit: usize,
        dev: u8,
        pasid: Option<u32>,
        iova: u64,
        data: &[u8],
    ) -> Result<(), ioasis_baremetal::DmaError> {
        self.machine.dma_write(self.unit_base(unit), Self::rid(dev), pasid.map(ioasis::Pasid), Iova(iova), data)
    }

    /// DMA-reads as device 00:dev.0 through unit `unit`.
    pub fn dma_read(
        &self,
        unit: usize,
        dev: u8,
        pasid: Option<u32>,
        iova: u64,
        len: usize,
    ) -> Result<Vec<u8>, ioasis_baremetal::DmaError> {
        let mut buf = vec![0u8; len];
        self.machine.dma_read(self.unit_base(unit), Self::rid(dev), pasid.map(ioasis::Pasid), Iova(iova), &mut buf)?;
        Ok(buf)
    }

    /// Reads RAM directly.
    pub fn ram(&self, pa: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.machine.ram().read(PhysAddr(pa), &mut buf).expect("ram read");
        buf
    }

    pub fn write_ram(&self, pa: u64, data: &[u8]) {
        self.machine.ram().write(PhysAddr(pa), data).expect("ram write");
    }
}

/// Builds a four-level mock-format stage-1 in guest memory at `root_gpa` (its four table pages
/// follow each other) mapping `iova` to `out_gpa` with `prot`; `gpa_to_pa` says where the guest
/// physical pages really are (the stage-2 the test set up).
pub fn write_stage1(rig: &Rig, gpa_to_pa: u64, root_gpa: u64, iova: u64, out_gpa: u64, prot: u64) {
    use ioasis_plugin_mock::format::pte;
    let tables = [root_gpa, root_gpa + 0x1000, root_gpa + 0x2000, root_gpa + 0x3000];
    for level in (0..4u32).rev() {
        let table = tables[(3 - level) as usize];
        let slot = table + pte::offset(iova, level);
        let entry = if level == 0 { pte::P | prot | out_gpa } else { pte::P | tables[(4 - level) as usize] };
        rig.write_ram(gpa_to_pa + slot, &entry.to_le_bytes());
    }
}
