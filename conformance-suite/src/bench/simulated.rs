//! The simulated machine: RAM, a table-page pool and the plugin's own hardware model as the
//! unit; any requester id can DMA, with or without a PASID, from any number of threads.

use std::sync::Arc;

use ioasis::platform::{ModelFactory, PageResponseSeen, Platform, UnitModel};
use ioasis::{Context, DeviceRef, Iova, Pasid, PhysAddr};
use ioasis_baremetal::dma::{run_parallel, DmaJob};
use ioasis_baremetal::{Machine, MachineConfig};

use super::{Bench, DmaFailure, Need, Sizes, Source};
use crate::Options;

/// Register window of the unit under test.
const UNIT_BASE: PhysAddr = PhysAddr(0xfed0_0000);

pub(crate) struct Simulated {
    machine: Arc<Machine>,
    /// The unit's model, for what the unit saw (page responses).
    model: Arc<dyn UnitModel>,
}

impl Simulated {
    /// 2 GiB of RAM (the top 64 MiB are the table pool; the gigabyte-page cases map the first
    /// GiB) and one unit built by `factory`.
    pub fn new(factory: &dyn ModelFactory, opts: &Options) -> Result<Self, String> {
        let machine = Arc::new(
            Machine::new(MachineConfig { ram_bytes: 2 << 30, table_pool_bytes: 64 << 20 })
                .map_err(|e| e.to_string())?,
        );
        let model = factory.build(&opts.unit_model)?;
        machine.add_unit(UNIT_BASE, factory.window(), model.clone()).map_err(|e| e.to_string())?;
        Ok(Self { machine, model })
    }
}

impl Bench for Simulated {
    fn platform(&self) -> Arc<dyn Platform> {
        self.machine.clone()
    }

    fn unit_base(&self) -> PhysAddr {
        UNIT_BASE
    }

    fn limit(&self, _: Need) -> Option<String> {
        None
    }

    fn sizes(&self) -> Sizes {
        Sizes { random_ranges: 32 }
    }

    fn dma_write(&self, _: &Context, src: Source, iova: u64, data: &[u8]) -> Result<(), DmaFailure> {
        self.machine
            .dma_write(UNIT_BASE, DeviceRef::Rid(src.rid), src.pasid.map(Pasid), Iova(iova), data)
            .map_err(DmaFailure::Dma)
    }

    fn dma_read(&self, _: &Context, src: Source, iova: u64, len: usize) -> Result<Vec<u8>, DmaFailure> {
        let mut buf = vec![0; len];
        self.machine
            .dma_read(UNIT_BASE, DeviceRef::Rid(src.rid), src.pasid.map(Pasid), Iova(iova), &mut buf)
            .map_err(DmaFailure::Dma)?;
        Ok(buf)
    }

    fn page_responses(&self) -> Option<Vec<PageResponseSeen>> {
        self.model.page_responses()
    }

    fn dma_parallel(&self, jobs: &[DmaJob<'_>]) -> Result<Vec<Result<Vec<u8>, DmaFailure>>, DmaFailure> {
        Ok(run_parallel(&self.machine, jobs).into_iter().map(|r| r.map_err(DmaFailure::Dma)).collect())
    }
}
