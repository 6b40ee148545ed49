//! A fresh machine with one unit of the plugin under test.

use std::sync::Arc;

use ioasis::loader::Plugin;
use ioasis::platform::{ModelFactory, Platform};
use ioasis::{Context, DeviceDesc, DeviceId, Intent, IntentItem, PhysAddr, RequesterId, UnitId};
use ioasis_baremetal::{Machine, MachineConfig};

/// Register window of the unit under test.
pub const UNIT_BASE: PhysAddr = PhysAddr(0xfed0_0000);

pub(crate) struct Rig {
    pub machine: Arc<Machine>,
    pub ctx: Context,
    pub unit: UnitId,
}

impl Rig {
    pub fn new(plugin: &Arc<Plugin>, factory: &dyn ModelFactory) -> Result<Self, String> {
        let machine = Arc::new(
            Machine::new(MachineConfig { ram_bytes: 1 << 30, table_pool_bytes: 64 << 20 })
                .map_err(|e| e.to_string())?,
        );
        let model = factory.build(&Default::default())?;
        machine.add_unit(UNIT_BASE, factory.window(), model).map_err(|e| e.to_string())?;
        let ctx = Context::new(machine.clone());
        let unit = ctx.add_unit(plugin, "unit0", UNIT_BASE, 0, "").map_err(|e| e.to_string())?;
        Ok(Rig { machine, ctx, unit })
    }

    /// A PCI device 00:dev.0 with untagged DMA negotiated.
    pub fn paging_device(&self, dev: u8) -> Result<DeviceId, String> {
        let d = DeviceDesc::pci(&format!("dev{dev}"), RequesterId::new(0, 0, dev, 0), "unit0");
        let id = self.ctx.bind_device(d).map_err(|e| e.to_string())?;
        self.ctx.negotiate(id, &Intent::new([IntentItem::UntaggedDma])).map_err(|e| e.to_string())?;
        Ok(id)
    }

    pub fn rid(dev: u8) -> ioasis::DeviceRef {
        ioasis::DeviceRef::Rid(RequesterId::new(0, 0, dev, 0))
    }

    pub fn table_pages(&self) -> u64 {
        self.machine.table_pages()
    }
}
