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

use ioasis::abi::{HostServicesBox, PluginError, UnitDesc};
use ioasis::plugin::Driver;

pub(crate) use unit::VtdUnit;
pub use unit::{Defect, Mode, VtdParams};

/// The VT-d backend.
pub struct VtdBackend;

impl Driver for VtdBackend {
    type Unit = VtdUnit;

    fn probe(&self, desc: &UnitDesc, host: HostServicesBox) -> Result<VtdUnit, PluginError> {
        unit::VtdUnit::probe(desc, io::Io::new(host))
    }
}
