//! Building VT-d unit models from TOML, for hosts that simulate units.
//!
//! Keys: `generation` (`"scalable"`, the default, `"legacy"`, `"legacy-no-qi"` or
//! `"legacy-39bit"`), optional `cap` / `ecap` integers that replace the preset's CAP_REG /
//! ECAP_REG (VT-d spec 11.4.2, 11.4.3) entirely, and `latency`, the register reads a command
//! or an invalidation takes to complete ([`VtdModelConfig::latency`], default 0: at once).

use std::sync::Arc;

use ioasis::platform::{ModelFactory, UnitModel};
use serde::Deserialize;

use crate::model::{VtdModel, VtdModelConfig, WINDOW};

/// Which preset a unit starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Generation {
    /// [`VtdModelConfig::scalable`].
    #[default]
    Scalable,
    /// [`VtdModelConfig::legacy`] (QEMU 7.2's intel-iommu).
    Legacy,
    /// [`VtdModelConfig::legacy_no_qi`].
    LegacyNoQi,
    /// [`VtdModelConfig::legacy_39bit_no_superpages`].
    #[serde(rename = "legacy-39bit")]
    Legacy39bit,
}

/// A VT-d unit's hardware configuration, as a host's TOML gives it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VtdUnitConfig {
    /// The preset.
    #[serde(default)]
    pub generation: Generation,
    /// CAP_REG override.
    pub cap: Option<u64>,
    /// ECAP_REG override.
    pub ecap: Option<u64>,
    /// Completion latency in register reads ([`VtdModelConfig::latency`]).
    #[serde(default)]
    pub latency: u32,
    /// Entries per cache ([`VtdModelConfig::cache_entries`]; default 4096).
    pub cache_entries: Option<usize>,
}

impl VtdUnitConfig {
    /// The capability registers this configuration gives.
    pub fn model_config(&self) -> VtdModelConfig {
        let base = match self.generation {
            Generation::Scalable => VtdModelConfig::scalable(),
            Generation::Legacy => VtdModelConfig::legacy(),
            Generation::LegacyNoQi => VtdModelConfig::legacy_no_qi(),
            Generation::Legacy39bit => VtdModelConfig::legacy_39bit_no_superpages(),
        };
        VtdModelConfig {
            cap: self.cap.unwrap_or(base.cap),
            ecap: self.ecap.unwrap_or(base.ecap),
            latency: self.latency,
            cache_entries: self.cache_entries.unwrap_or(base.cache_entries),
        }
    }
}

/// Builds [`VtdModel`]s (plugin `vtd`, a 4 KiB register window).
#[derive(Clone, Copy, Debug, Default)]
pub struct VtdModelFactory;

impl ModelFactory for VtdModelFactory {
    fn plugin(&self) -> &str {
        "vtd"
    }

    fn build(&self, config: &toml::Table) -> Result<Arc<dyn UnitModel>, String> {
        let cfg: VtdUnitConfig =
            config.clone().try_into().map_err(|e: toml::de::Error| format!("vtd unit: {}", e.message()))?;
        let model = VtdModel::new(cfg.model_config()).map_err(|e| format!("vtd unit: {e}"))?;
        Ok(Arc::new(model))
    }

    fn window(&self) -> u64 {
        WINDOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        s.parse().unwrap()
    }

    #[test]
    fn presets_and_overrides() {
        let f = VtdModelFactory;
        assert_eq!(f.plugin(), "vtd");
        assert_eq!(f.window(), 0x1000);
        assert!(f.build(&toml::Table::new()).is_ok());
        for g in ["scalable", "legacy", "legacy-no-qi", "legacy-39bit"] {
            assert!(f.build(&table(&format!("generation = \"{g}\""))).is_ok(), "{g}");
        }
        let c: VtdUnitConfig = table("generation = \"legacy\"\necap = 0xf00").try_into().unwrap();
        assert_eq!(c.model_config(), VtdModelConfig::legacy_no_qi());
        let c: VtdUnitConfig = table("latency = 3").try_into().unwrap();
        assert_eq!(c.model_config(), VtdModelConfig::scalable().with_latency(3));
    }

    #[test]
    fn clear_errors() {
        let f = VtdModelFactory;
        let e = f.build(&table("generation = \"ancient\"")).err().unwrap();
        assert!(e.contains("ancient") || e.contains("variant"), "{e}");
        let e = f.build(&table("colour = 1")).err().unwrap();
        assert!(e.contains("colour"), "{e}");
        // FRO 0 would put the fault records over the fixed registers.
        let e = f.build(&table("generation = \"legacy\"\ncap = 0x0600")).err().unwrap();
        assert!(e.contains("fault-recording"), "{e}");
        // SAGAW 0.
        let e = f.build(&table("cap = 0x22000000")).err().unwrap();
        assert!(e.contains("SAGAW"), "{e}");
    }
}
