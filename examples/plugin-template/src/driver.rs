//! The driver half: the backend, its units and their HWPTs, programming the acme-tiny unit of
//! `SPEC.md` only through the [`HostServicesBox`] the host gives each unit.

mod hwpt;
mod io;
mod unit;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult};
use ioasis::abi::{guard, Backend, HostServicesBox, PluginError, UnitBox, UnitDesc, Unit_TO};

pub use unit::AcmeParams;

/// The acme-tiny backend.
pub struct AcmeBackend;

impl Backend for AcmeBackend {
    fn probe(&self, desc: &UnitDesc, host: HostServicesBox) -> RResult<UnitBox, PluginError> {
        guard("probe", || {
            let unit = unit::AcmeUnit::probe(desc, io::Io::new(host))?;
            Ok(Unit_TO::from_ptr(RArc::new(unit), TD_Opaque))
        })
    }
}
