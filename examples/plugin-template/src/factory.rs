//! Building acme-tiny unit models from TOML, for hosts that simulate units (the conformance
//! suite): the plugin exports this factory (interface 0.4).

use std::sync::Arc;

use ioasis::platform::{ModelFactory, UnitModel};

use crate::layout::reg;
use crate::model::{AcmeModel, ModelConfig};

/// Builds [`AcmeModel`]s. Keys: `oas` (default 48) and `completion_polls` (default 2).
pub struct AcmeModelFactory;

impl ModelFactory for AcmeModelFactory {
    fn plugin(&self) -> &str {
        crate::NAME
    }

    fn build(&self, config: &toml::Table) -> Result<Arc<dyn UnitModel>, String> {
        let cfg: ModelConfig =
            config.clone().try_into().map_err(|e: toml::de::Error| format!("acme-tiny unit: {}", e.message()))?;
        let model = AcmeModel::new(cfg).map_err(|e| format!("acme-tiny unit: {e}"))?;
        Ok(Arc::new(model))
    }

    fn window(&self) -> u64 {
        reg::WINDOW
    }
}
