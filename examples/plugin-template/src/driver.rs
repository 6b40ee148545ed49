//! The driver half: the backend, its units and their HWPTs, programming the acme-tiny unit of
//! `SPEC.md` only through the [`HostServicesBox`] the host gives each unit.

mod hwpt;
mod io;
mod unit;

use ioasis::abi::{HostServicesBox, PluginError, UnitDesc};
use ioasis::plugin::Driver;

pub use hwpt::AcmeHwpt;
pub use unit::{AcmeParams, AcmeUnit};

/// The acme-tiny backend.
pub struct AcmeBackend;

impl Driver for AcmeBackend {
    type Unit = AcmeUnit;

    fn probe(&self, desc: &UnitDesc, host: HostServicesBox) -> Result<AcmeUnit, PluginError> {
        Ok(unit::AcmeUnit::probe(desc, io::Io::new(host))?)
    }
}
