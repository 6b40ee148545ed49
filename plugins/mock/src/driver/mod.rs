//! The driver half of the mock backend.

mod hwpt;
mod io;
mod pagetable;
mod unit;
mod viommu;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult};
use ioasis::abi::{guard, Backend, HostServicesBox, PluginError, UnitBox, UnitDesc, Unit_TO};

pub use unit::{Defect, MockParams};

/// The mock backend.
pub struct MockBackend;

impl Backend for MockBackend {
    fn probe(&self, desc: &UnitDesc, host: HostServicesBox) -> RResult<UnitBox, PluginError> {
        guard("probe", || {
            let unit = unit::MockUnit::probe(desc, io::Io::new(host))?;
            Ok(Unit_TO::from_ptr(RArc::new(unit), TD_Opaque))
        })
    }
}
