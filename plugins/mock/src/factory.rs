//! Building mock unit models from TOML, for hosts that simulate units.

use std::sync::Arc;

use ioasis::platform::{ModelFactory, UnitModel};
use serde::Deserialize;

use crate::format::cap;
use crate::model::MockModel;

/// A mock unit's hardware configuration: the full unit, minus what is listed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockUnitConfig {
    /// Features the unit lacks: `pasid`, `nesting`, `dirty`, `page-faults`, `ats`, `coherency`,
    /// `enqcmd`, `identity`.
    #[serde(default)]
    pub without: Vec<String>,
    /// PASID width (default 20).
    pub pasid_bits: Option<u8>,
    /// Input address width (default 48).
    pub ias: Option<u8>,
    /// Output address width (default 48).
    pub oas: Option<u8>,
    /// Page sizes (default `["4K", "2M", "1G"]`).
    pub page_sizes: Option<Vec<String>>,
    /// Register reads an INV_CMD takes to complete (default 0: at once; at most
    /// [`MAX_LATENCY`]). See [`MockModel::with_latency`].
    pub latency: Option<u32>,
}

/// The largest `latency` a configuration may ask for.
pub const MAX_LATENCY: u32 = 1024;

impl MockUnitConfig {
    /// The CAP register value (mock spec §1.1) this configuration gives.
    pub fn cap(&self) -> Result<u64, String> {
        let mut c = cap::FULL;
        for w in &self.without {
            c &= !match w.as_str() {
                "pasid" => cap::PASID,
                "nesting" => cap::NEST,
                "dirty" => cap::DIRTY,
                "page-faults" => cap::PRI,
                "ats" => cap::ATS,
                "coherency" => cap::COHERENCY,
                "enqcmd" => cap::ENQCMD,
                "identity" => cap::IDENTITY,
                other => return Err(format!("unknown mock feature `{other}`")),
            };
        }
        if let Some(b) = self.pasid_bits {
            if b > 20 {
                return Err(format!("pasid_bits {b} > 20"));
            }
            c = (c & !(0x1f << cap::PASID_BITS_SHIFT)) | ((b as u64) << cap::PASID_BITS_SHIFT);
        }
        for (v, shift, what) in [(self.ias, cap::IAS_SHIFT, "ias"), (self.oas, cap::OAS_SHIFT, "oas")] {
            if let Some(v) = v {
                if !(32..=57).contains(&v) {
                    return Err(format!("{what} {v} is not in 32..=57"));
                }
                c = (c & !(0xff << shift)) | ((v as u64) << shift);
            }
        }
        if let Some(sizes) = &self.page_sizes {
            c &= !(cap::PS_4K | cap::PS_2M | cap::PS_1G);
            for s in sizes {
                c |= match s.as_str() {
                    "4K" => cap::PS_4K,
                    "2M" => cap::PS_2M,
                    "1G" => cap::PS_1G,
                    other => return Err(format!("the mock unit has no `{other}` pages (4K, 2M, 1G)")),
                };
            }
            if c & cap::PS_4K == 0 {
                return Err("4K pages cannot be left out".into());
            }
        }
        Ok(c)
    }

    /// The invalidation latency this configuration gives (mock spec §1, INV_DONE).
    pub fn latency(&self) -> Result<u32, String> {
        match self.latency.unwrap_or(0) {
            n if n > MAX_LATENCY => Err(format!("latency {n} > {MAX_LATENCY}")),
            n => Ok(n),
        }
    }
}

/// Builds [`MockModel`]s.
pub struct MockModelFactory;

impl ModelFactory for MockModelFactory {
    fn plugin(&self) -> &str {
        crate::NAME
    }

    fn build(&self, config: &toml::Table) -> Result<Arc<dyn UnitModel>, String> {
        let cfg: MockUnitConfig = config.clone().try_into().map_err(|e: toml::de::Error| e.message().to_string())?;
        Ok(Arc::new(MockModel::new(cfg.cap()?).with_latency(cfg.latency()?)))
    }

    fn window(&self) -> u64 {
        crate::format::reg::WINDOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_gives_the_cap_value() {
        let full = MockUnitConfig::default().cap().unwrap();
        assert_eq!(full, cap::FULL);
        let c =
            MockUnitConfig { without: vec!["dirty".into(), "pasid".into()], pasid_bits: Some(8), ..Default::default() };
        let v = c.cap().unwrap();
        assert_eq!(v & (cap::DIRTY | cap::PASID), 0);
        assert_eq!(cap::pasid_bits(v), 8);
        let bad = MockUnitConfig { without: vec!["teleport".into()], ..Default::default() };
        assert!(bad.cap().unwrap_err().contains("teleport"));
        let no4k = MockUnitConfig { page_sizes: Some(vec!["2M".into()]), ..Default::default() };
        assert!(no4k.cap().is_err());
        assert_eq!(MockUnitConfig::default().latency(), Ok(0));
        let slow: MockUnitConfig = toml::from_str("latency = 4").unwrap();
        assert_eq!(slow.latency(), Ok(4));
        let too_slow: MockUnitConfig = toml::from_str("latency = 5000").unwrap();
        assert!(too_slow.latency().unwrap_err().contains("5000"));
        assert!(toml::from_str::<MockUnitConfig>("latency = -1").is_err());
    }
}
