//! The driver half of the mock backend.

mod hwpt;
mod io;
mod pagetable;
mod unit;
mod viommu;

use abi_stable::sabi_extern_fn;
use abi_stable::sabi_trait::TD_CanDowncast;
use abi_stable::std_types::{RArc, RResult};
use ioasis::abi::{guard, Backend, HostServicesBox, PluginError, UnitBox, UnitDesc, Unit_TO, ViommuBox, ViommuRequest};

pub use unit::{Defect, MockParams};

/// The mock backend.
pub struct MockBackend;

impl Backend for MockBackend {
    fn probe(&self, desc: &UnitDesc, host: HostServicesBox) -> RResult<UnitBox, PluginError> {
        guard("probe", || {
            let unit = unit::MockUnit::probe(desc, io::Io::new(host))?;
            // Downcastable, so that the 0.3 extension can find its unit behind a `UnitBox`.
            Ok(Unit_TO::from_ptr(RArc::new(unit), TD_CanDowncast))
        })
    }
}

/// Interface 0.3: a vIOMMU on one of this plugin's units (mock spec §7).
#[sabi_extern_fn]
pub(crate) fn alloc_viommu(unit: &UnitBox, req: &ViommuRequest) -> RResult<ViommuBox, PluginError> {
    guard("alloc_viommu", || {
        let unit = unit
            .obj
            .downcast_as::<unit::MockUnit>()
            .map_err(|_| PluginError::not_found("the unit was not made by the mock plugin"))?;
        viommu::MockViommu::alloc(unit.handle(), req)
    })
}
