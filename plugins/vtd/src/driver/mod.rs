//! The driver half of the VT-d backend: it programs a remapping unit only through
//! [`ioasis::abi::HostServices`], following the Intel VT-d Architecture Specification.
//!
//! - `io`: registers and memory, bounded polling.
//! - `inv`: queued (6.5.2) and register-based (6.5.1) invalidation.
//! - `pagetable`: second-stage tables (9.8).
//! - `hwpt`: domains and their tables, dirty tracking, nested invalidation.
//! - `unit`: probe, root/context/PASID tables, attach, faults and page requests.
//! - `viommu`: vIOMMUs (a VM's DID, its vDEVICEs, the guest's invalidation descriptors).

mod hwpt;
mod inv;
mod io;
mod pagetable;
#[cfg(test)]
mod tests;
mod unit;
mod viommu;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult};
use ioasis::abi::{guard, Backend, HostServicesBox, PluginError, UnitBox, UnitDesc, Unit_TO};

pub use unit::{Mode, VtdParams};

/// The VT-d backend.
pub struct VtdBackend;

impl Backend for VtdBackend {
    fn probe(&self, desc: &UnitDesc, host: HostServicesBox) -> RResult<UnitBox, PluginError> {
        guard("probe", || {
            let unit = unit::VtdUnit::probe(desc, io::Io::new(host))?;
            Ok(Unit_TO::from_ptr(RArc::new(unit), TD_Opaque))
        })
    }
}
