//! The driver half of the VT-d backend: it programs a remapping unit only through
//! [`ioasis::abi::HostServices`], following the Intel VT-d Architecture Specification.
//!
//! - `io`: registers and memory, bounded polling.
//! - `inv`: queued (6.5.2) and register-based (6.5.1) invalidation.
//! - `pagetable`: second-stage tables (9.8).
//! - `hwpt`: domains and their tables, dirty tracking, nested invalidation.
//! - `unit`: probe, capabilities, negotiation, allocation, shutdown; the `Unit` implementation.
//! - `context`: root and context tables (9.1-9.4), attach and detach.
//! - `pasid`: PASID directories and tables (9.4-9.6), scalable-mode attach.
//! - `fault`: fault recording (7.1.3, 11.4.9) and the page request queue (7.5, 11.4.11).
//! - `viommu`: vIOMMUs (a VM's DID, its vDEVICEs, the guest's invalidation descriptors).

mod context;
mod fault;
mod hwpt;
mod inv;
mod io;
mod pagetable;
mod pasid;
#[cfg(test)]
mod tests;
mod unit;
mod viommu;

use abi_stable::sabi_extern_fn;
use abi_stable::sabi_trait::TD_CanDowncast;
use abi_stable::std_types::{RArc, RResult};
use ioasis::abi::{guard, Backend, HostServicesBox, PluginError, UnitBox, UnitDesc, Unit_TO, ViommuBox, ViommuRequest};

pub use unit::{Defect, Mode, VtdParams};

/// The VT-d backend.
pub struct VtdBackend;

impl Backend for VtdBackend {
    fn probe(&self, desc: &UnitDesc, host: HostServicesBox) -> RResult<UnitBox, PluginError> {
        guard("probe", || {
            let unit = unit::VtdUnit::probe(desc, io::Io::new(host))?;
            // Downcastable, so that the 0.3 extension can find its unit behind a `UnitBox`.
            Ok(Unit_TO::from_ptr(RArc::new(unit), TD_CanDowncast))
        })
    }
}

/// Interface 0.3: a vIOMMU on one of this plugin's units.
#[sabi_extern_fn]
pub(crate) fn alloc_viommu(unit: &UnitBox, req: &ViommuRequest) -> RResult<ViommuBox, PluginError> {
    match unit.obj.downcast_as::<unit::VtdUnit>() {
        Ok(u) => u.alloc_viommu(req),
        Err(_) => RResult::RErr(PluginError::not_found("the unit was not made by the VT-d plugin")),
    }
}
