//! The driver half of the mock backend.

mod hwpt;
mod io;
mod pagetable;
mod unit;
mod viommu;

use ioasis::abi::{HostServicesBox, PluginError, UnitDesc};
use ioasis::plugin::Driver;

pub(crate) use unit::MockUnit;
pub use unit::{Defect, MockParams};

/// The mock backend.
pub struct MockBackend;

impl Driver for MockBackend {
    type Unit = MockUnit;

    fn probe(&self, desc: &UnitDesc, host: HostServicesBox) -> Result<MockUnit, PluginError> {
        unit::MockUnit::probe(desc, io::Io::new(host))
    }
}
