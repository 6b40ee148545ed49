//! The capability registers a model is built with (VT-d spec 11.4.2 CAP_REG, 11.4.3 ECAP_REG),
//! their presets and their checks.

use super::WINDOW;
use crate::layout::regs::{cap, ecap};
use crate::layout::tables::AGAWS;

/// The capability registers of a modelled unit (VT-d spec 11.4.2 CAP_REG, 11.4.3 ECAP_REG).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdModelConfig {
    /// CAP_REG.
    pub cap: u64,
    /// ECAP_REG.
    pub ecap: u64,
    /// Completion latency, in register reads: 0 completes every command and invalidation at
    /// the register write that starts it. With N > 0, a global command (GCMD, 11.4.4) shows in
    /// GSTS, a register-based invalidation (CCMD.ICC 11.4.7, IOTLB_REG.IVT 11.4.8) takes effect
    /// and clears its bit, and the invalidation queue (6.5.2) runs its next batch (up to and
    /// including the next wait descriptor, its invalidations in reverse order), only at the
    /// N-th register read after; status writes of wait descriptors come with their batch. A
    /// global command written while the previous one is still in flight is dropped.
    pub latency: u32,
    /// Entries each cache (context, PASID, IOTLB; 6.2) holds before it evicts one; 0 caches
    /// nothing. A small cache re-reads entries from memory often, so a write that lands in a
    /// neighbour's entry shows, where a large one would hide it behind the cached copy.
    pub cache_entries: usize,
}

/// A configuration the model cannot run with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// CAP.SAGAW names no address width the model knows (39, 48 or 57 bits).
    #[error("CAP.SAGAW {0:#x} supports no 39-, 48- or 57-bit address width")]
    NoAddressWidth(u32),
    /// The fault-recording registers leave the window or overlap the fixed registers.
    #[error("fault-recording registers at {start:#x}..{end:#x} must lie within {min:#x}..{WINDOW:#x}")]
    FaultRegisters {
        /// CAP.FRO * 16.
        start: u64,
        /// End of the last record.
        end: u64,
        /// First offset free of fixed registers.
        min: u64,
    },
    /// The IOTLB registers leave the window or overlap the fixed registers.
    #[error("IOTLB registers at {start:#x}..{end:#x} must lie within {min:#x}..{WINDOW:#x}")]
    IotlbRegisters {
        /// ECAP.IRO * 16.
        start: u64,
        /// End of IOTLB_REG.
        end: u64,
        /// First offset free of fixed registers.
        min: u64,
    },
    /// The fault-recording and IOTLB registers overlap.
    #[error("fault-recording registers at {fro:#x} overlap the IOTLB registers at {iro:#x}")]
    Overlap {
        /// CAP.FRO * 16.
        fro: u64,
        /// ECAP.IRO * 16.
        iro: u64,
    },
}

/// Entries each cache holds by default.
pub const CACHE_ENTRIES: usize = 4096;

/// First register offset after the fixed registers the model answers (PEUADDR ends at 0xf0).
const FIXED_END: u64 = 0xf0;

/// Puts `value` into `cap` at bits `shift..shift+width`.
const fn field(reg: u64, shift: u32, width: u32, value: u64) -> u64 {
    let mask = ((1u64 << width) - 1) << shift;
    (reg & !mask) | ((value << shift) & mask)
}

impl VtdModelConfig {
    /// QEMU 7.2's intel-iommu in legacy mode: CAP 0x00d2008c222f0606, ECAP 0xf42 (QI, PT,
    /// IRO 0xf0; SAGAW 39/48, MGAW 48, ND 6, NFR 1 at FRO 0x220, SLLPS 2M+1G, PSI, MAMV 18).
    pub const fn legacy() -> Self {
        Self { cap: 0x00d2_008c_222f_0606, ecap: 0xf42, latency: 0, cache_entries: CACHE_ENTRIES }
    }

    /// An old unit: QEMU's legacy CAP, no queued invalidation (register-based only), no
    /// pass-through, IOTLB registers at 0xf0.
    pub const fn legacy_no_qi() -> Self {
        Self { cap: 0x00d2_008c_222f_0606, ecap: 0xf00, latency: 0, cache_entries: CACHE_ENTRIES }
    }

    /// A 39-bit unit without superpages: QEMU's legacy unit with SAGAW 39 only, MGAW 39 and
    /// SLLPS 0.
    pub const fn legacy_39bit_no_superpages() -> Self {
        let mut c = Self::legacy().cap;
        c = field(c, 8, 5, 0b00010); // SAGAW: 39-bit only.
        c = field(c, 16, 6, 38); // MGAW - 1.
        c = field(c, 34, 4, 0); // SLLPS.
        Self { cap: c, ecap: Self::legacy().ecap, latency: 0, cache_entries: CACHE_ENTRIES }
    }

    /// A modern scalable-mode unit: SMTS, SSTS, FSTS, NEST, PRS, SSADS, PASID (20 bits), QI,
    /// DT, PT, SC, C; SAGAW 39/48, MGAW 48, SLLPS 2M+1G, FS1GP, PSI, MAMV 18, ND 6 (16-bit
    /// DIDs), 8 fault records at FRO 0x400, IOTLB registers at IRO 0x500.
    pub const fn scalable() -> Self {
        let mut c = 0u64;
        c = field(c, 0, 3, 6); // ND: 2^16 domains.
        c = field(c, 8, 5, 0b00110); // SAGAW 39/48.
        c = field(c, 16, 6, 47); // MGAW 48.
        c = field(c, 24, 10, 0x400 / 16); // FRO.
        c = field(c, 34, 4, 0b11); // SLLPS 2M + 1G.
        c |= cap::PSI;
        c = field(c, 40, 8, 7); // NFR 8.
        c = field(c, 48, 6, 18); // MAMV.
        c |= cap::DWD | cap::DRD | cap::FS1GP;
        let mut e = ecap::C | ecap::QI | ecap::DT | ecap::PT | ecap::SC;
        e = field(e, 8, 10, 0x500 / 16); // IRO.
        e |= ecap::NEST | ecap::PRS | ecap::PASID | ecap::SMTS | ecap::SSADS | ecap::SSTS | ecap::FSTS;
        e = field(e, 35, 5, 19); // PSS: 20-bit PASIDs.
        Self { cap: c, ecap: e, latency: 0, cache_entries: CACHE_ENTRIES }
    }

    /// Offset of the first fault-recording register (CAP.FRO * 16).
    pub const fn fro(&self) -> u64 {
        cap::fro(self.cap)
    }

    /// Number of fault-recording registers (CAP.NFR + 1).
    pub const fn nfr(&self) -> u32 {
        cap::nfr(self.cap)
    }

    /// Offset of the IOTLB registers (ECAP.IRO * 16): IVA_REG there, IOTLB_REG at +8.
    pub const fn iro(&self) -> u64 {
        ecap::iro(self.ecap)
    }

    /// Checks that the model can run with these registers.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let sagaw = cap::sagaw(self.cap);
        if !AGAWS.iter().any(|&(aw, ..)| sagaw & (1 << aw) != 0) {
            return Err(ConfigError::NoAddressWidth(sagaw));
        }
        let (fro, fend) = (self.fro(), self.fro() + u64::from(self.nfr()) * 16);
        if fro < FIXED_END || fend > WINDOW {
            return Err(ConfigError::FaultRegisters { start: fro, end: fend, min: FIXED_END });
        }
        let (iro, iend) = (self.iro(), self.iro() + 16);
        if iro < FIXED_END || iend > WINDOW {
            return Err(ConfigError::IotlbRegisters { start: iro, end: iend, min: FIXED_END });
        }
        if iro < fend && fro < iend {
            return Err(ConfigError::Overlap { fro, iro });
        }
        Ok(())
    }

    /// The same unit with caches of `entries` (see [`VtdModelConfig::cache_entries`]).
    pub const fn with_cache_entries(self, entries: usize) -> Self {
        Self { cache_entries: entries, ..self }
    }

    /// The same unit with completion `latency` (see [`VtdModelConfig::latency`]).
    pub const fn with_latency(self, latency: u32) -> Self {
        Self { latency, ..self }
    }

    pub(super) fn has_cap(&self, bit: u64) -> bool {
        self.cap & bit != 0
    }

    pub(super) fn has_ecap(&self, bit: u64) -> bool {
        self.ecap & bit != 0
    }
}

impl Default for VtdModelConfig {
    /// [`VtdModelConfig::scalable`].
    fn default() -> Self {
        Self::scalable()
    }
}
