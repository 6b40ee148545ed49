//! The machine a case runs on: the simulated one with the plugin's own hardware model, or QEMU
//! with the unit it emulates. A bench gives the platform the context runs on, and the DMA,
//! with its faults, that the cases check the plugin by.

mod qemu;
mod simulated;

use std::fmt;
use std::sync::Arc;

use ioasis::platform::{PageResponseSeen, Platform};
use ioasis::{Context, DeviceId, PhysAddr, RequesterId};
use ioasis_baremetal::dma::DmaJob;
use ioasis_baremetal::DmaError;
use serde::Serialize;

pub(crate) use qemu::Qemu;
pub(crate) use simulated::Simulated;

/// Where the suite runs its cases.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlatformChoice {
    /// A fresh simulated machine per case whose unit is the plugin's own hardware model.
    #[default]
    Simulated,
    /// A fresh QEMU per case with the unit QEMU emulates for the plugin.
    Qemu(QemuProfile),
}

impl PlatformChoice {
    /// The `ioasis conformance` options that select this platform (empty for the default).
    pub fn cli_args(&self) -> String {
        match self {
            Self::Simulated => String::new(),
            Self::Qemu(p) => format!(" --platform qemu --qemu-profile {}", p.name()),
        }
    }

    /// Whether the platform can run here: for QEMU, that its binary is installed.
    pub fn available(&self) -> Result<(), String> {
        match self {
            Self::Simulated => Ok(()),
            Self::Qemu(p) => qemu::available(*p),
        }
    }
}

impl fmt::Display for PlatformChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Simulated => f.write_str("simulated"),
            Self::Qemu(p) => write!(f, "QEMU {}", p.name()),
        }
    }
}

/// A unit QEMU emulates, and how it is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum QemuProfile {
    /// q35 with `intel-iommu,aw-bits=48`: VT-d in legacy mode.
    VtdLegacy,
    /// q35 with `intel-iommu,aw-bits=48,x-scalable-mode=on`: VT-d in scalable mode (second
    /// stage only).
    VtdScalable,
}

impl QemuProfile {
    /// Every profile.
    pub const ALL: [Self; 2] = [Self::VtdLegacy, Self::VtdScalable];

    /// Its name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::VtdLegacy => "vtd-legacy",
            Self::VtdScalable => "vtd-scalable",
        }
    }

    /// The plugin that drives this unit.
    pub const fn plugin(self) -> &'static str {
        match self {
            Self::VtdLegacy | Self::VtdScalable => "vtd",
        }
    }
}

/// Something a case needs that not every bench can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Need {
    /// DMA from the PCI function with this requester id.
    DmaFrom(RequesterId),
    /// PASID-tagged DMA.
    PasidDma,
    /// Many devices DMA-ing at once.
    ParallelDma,
    /// DMA of a device whose identity (pass-through) attachment was just replaced.
    LeaveIdentity,
    /// DMA from several threads at once.
    ConcurrentDma,
}

/// How big the expensive cases are on a bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sizes {
    /// Ranges of `map-unmap/random-ranges-by-dma`.
    pub random_ranges: u64,
}

/// Who does a DMA.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Source {
    /// The PCI function (00:dev.0 for most cases).
    pub rid: RequesterId,
    /// The PASID its requests carry.
    pub pasid: Option<u32>,
    /// The device object bound for it, if any.
    pub id: Option<DeviceId>,
}

/// Why a DMA a case asked for did not complete.
#[derive(Debug)]
pub(crate) enum DmaFailure {
    /// What the DMA itself gave: a fault the unit recorded, or another error of the machine.
    Dma(DmaError),
    /// The bench cannot do this DMA (the case ends as skipped, naming the limit).
    Limit(String),
    /// The bench itself failed (QEMU, or the staging it needs).
    Bench(String),
}

impl fmt::Display for DmaFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dma(e) => write!(f, "{e}"),
            Self::Limit(why) => write!(f, "platform limit: {why}"),
            Self::Bench(why) => write!(f, "the machine failed: {why}"),
        }
    }
}

/// A machine the cases run on.
pub(crate) trait Bench: Send + Sync {
    /// The platform the context runs on.
    fn platform(&self) -> Arc<dyn Platform>;
    /// Register window of the unit under test.
    fn unit_base(&self) -> PhysAddr;
    /// `None` when the bench can do `need`, else why not.
    fn limit(&self, need: Need) -> Option<String>;
    /// How big the expensive cases are here.
    fn sizes(&self) -> Sizes;
    /// `src` writes `data` at `iova` (memory ← device).
    fn dma_write(&self, ctx: &Context, src: Source, iova: u64, data: &[u8]) -> Result<(), DmaFailure>;
    /// `src` reads `len` bytes at `iova` (memory → device).
    fn dma_read(&self, ctx: &Context, src: Source, iova: u64, len: usize) -> Result<Vec<u8>, DmaFailure>;
    /// Runs `jobs` at once; their outcomes in job order (the bytes read, or empty for a write).
    fn dma_parallel(&self, jobs: &[DmaJob<'_>]) -> Result<Vec<Result<Vec<u8>, DmaFailure>>, DmaFailure>;
    /// The page responses the unit received, oldest first, when the bench can see them.
    fn page_responses(&self) -> Option<Vec<PageResponseSeen>> {
        None
    }
}
