//! QEMU's `edu` PCI device (1234:11e8) as a DMA engine behind the IOMMU.
//!
//! Registers in BAR0 (8-byte accesses): 0x80 source, 0x88 destination, 0x90 count, 0x98
//! command (bit 0 start/busy, bit 1 set: edu buffer → RAM). The device's 4 KiB buffer sits at
//! 0x40000 on the device side. A transfer takes about 100 ms of QEMU's virtual clock; the
//! harness polls bit 0 with a wall-clock bound.
//!
//! A DMA that the IOMMU blocks still *completes* from edu's point of view: the bytes are
//! dropped (or read as garbage) and the IOMMU logs the fault in its own registers or queue.
//! Checking the result is the caller's job: compare memory and read the IOMMU's fault log.
//!
//! QEMU aborts (`hw_error`) on an edu DMA outside the buffer, so the harness refuses such a
//! transfer before it starts ([`QemuError::EduRange`]). QEMU 7.2's range check is off by one
//! (the end of the transfer must lie strictly inside the buffer) and refuses empty transfers:
//! a transfer is 1 to [`Edu::MAX_TRANSFER`] (4095) bytes and cannot reach the buffer's last
//! byte.

use std::time::{Duration, Instant};

use ioasis::{Iova, PhysAddr, RequesterId};

use super::error::{QemuError, QemuResult};
use super::machine::QemuMachine;
use super::pci::COMMAND_MEMORY_MASTER;

const REG_ID: u64 = 0x00;
const REG_SRC: u64 = 0x80;
const REG_DST: u64 = 0x88;
const REG_COUNT: u64 = 0x90;
const REG_CMD: u64 = 0x98;
const CMD_START: u64 = 1;
const CMD_TO_RAM: u64 = 2;
/// What edu's identification register reads (version 1.0).
const EDU_ID: u32 = 0x0100_00ed;
/// Sleep between two polls of the command register.
const POLL: Duration = Duration::from_millis(2);

/// Where the edu device is: its requester id and BAR0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EduInfo {
    /// Bus/device/function (segment 0).
    pub rid: RequesterId,
    /// The register window.
    pub bar0: PhysAddr,
}

/// The direction of an edu transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EduDirection {
    /// Guest memory → edu buffer (a DMA read by the device).
    ToDevice,
    /// Edu buffer → guest memory (a DMA write by the device).
    FromDevice,
}

/// The edu device of a [`QemuMachine`].
#[derive(Clone, Copy, Debug)]
pub struct Edu<'m> {
    m: &'m QemuMachine,
    info: EduInfo,
    timeout: Duration,
}

impl<'m> Edu<'m> {
    /// PCI vendor id.
    pub const VENDOR: u16 = 0x1234;
    /// PCI device id.
    pub const DEVICE: u16 = 0x11e8;
    /// The buffer's address on the device side.
    pub const BUFFER: u64 = 0x4_0000;
    /// The buffer's size.
    pub const BUFFER_SIZE: u32 = 4096;
    /// The longest transfer QEMU accepts (its range check is off by one).
    pub const MAX_TRANSFER: u32 = Self::BUFFER_SIZE - 1;
    /// The default bound on one transfer.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

    pub(crate) fn new(m: &'m QemuMachine, info: EduInfo) -> Self {
        Self { m, info, timeout: Self::DEFAULT_TIMEOUT }
    }

    /// Finds edu on bus 0, assigns BAR0, enables memory and bus mastering, and checks its id.
    pub(crate) fn setup(m: &QemuMachine) -> QemuResult<EduInfo> {
        let pci = m.pci();
        let rid = pci.find(Self::VENDOR, Self::DEVICE)?;
        let bar = pci.assign_bar0(rid)?;
        pci.enable(rid)?;
        let command = pci.command(rid)?;
        if command & COMMAND_MEMORY_MASTER != COMMAND_MEMORY_MASTER {
            return Err(QemuError::Bar { bdf: rid.to_string(), bar: 0, reason: format!("command reads {command:#x}") });
        }
        let id = m.with_qtest(|q| q.readl(bar.base.raw() + REG_ID))?;
        if id != EDU_ID {
            return Err(QemuError::Bar {
                bdf: rid.to_string(),
                bar: 0,
                reason: format!("edu id register at {} reads {id:#x}, not {EDU_ID:#x}", bar.base),
            });
        }
        Ok(EduInfo { rid, bar0: bar.base })
    }

    /// The same device with another bound on each transfer.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// Where the device is.
    pub fn info(&self) -> EduInfo {
        self.info
    }

    /// The requester id its DMA carries (VT-d / AMD-Vi source id: `rid.source_id()`).
    pub fn requester_id(&self) -> RequesterId {
        self.info.rid
    }

    /// Its SMMUv3 StreamID on the virt machine (the requester id, bus << 8 | devfn).
    pub fn stream_id(&self) -> u32 {
        u32::from(self.info.rid.source_id())
    }

    /// BAR0.
    pub fn bar0(&self) -> PhysAddr {
        self.info.bar0
    }

    /// The identification register (0x010000ed).
    pub fn id(&self) -> QemuResult<u32> {
        self.m.with_qtest(|q| q.readl(self.info.bar0.raw() + REG_ID))
    }

    /// Copies `len` bytes (1 to [`Edu::MAX_TRANSFER`]) at `iova` into the start of the edu
    /// buffer (the device reads memory).
    pub fn dma_to_device(&self, iova: Iova, len: u32) -> QemuResult<Duration> {
        self.dma(EduDirection::ToDevice, iova, 0, len)
    }

    /// Copies the first `len` bytes (1 to [`Edu::MAX_TRANSFER`]) of the edu buffer to `iova` (the
    /// device writes memory).
    pub fn dma_from_device(&self, iova: Iova, len: u32) -> QemuResult<Duration> {
        self.dma(EduDirection::FromDevice, iova, 0, len)
    }

    /// One transfer of `len` bytes between `iova` and the buffer at `offset` (`offset + len` at
    /// most [`Edu::MAX_TRANSFER`], `len` not 0); returns how long it took. Waits (bounded) for a transfer already running, then starts this one and polls
    /// the command register until the device is idle, at most [`Edu::with_timeout`]'s bound.
    pub fn dma(&self, dir: EduDirection, iova: Iova, offset: u32, len: u32) -> QemuResult<Duration> {
        if len == 0 || offset.checked_add(len).is_none_or(|end| end > Self::MAX_TRANSFER) {
            return Err(QemuError::EduRange { offset, len });
        }
        let bar = self.info.bar0.raw();
        let start = Instant::now();
        self.wait_idle(start)?;
        let buffer = Self::BUFFER + u64::from(offset);
        let (src, dst, cmd) = match dir {
            EduDirection::ToDevice => (iova.raw(), buffer, CMD_START),
            EduDirection::FromDevice => (buffer, iova.raw(), CMD_START | CMD_TO_RAM),
        };
        tracing::debug!(?dir, %iova, offset, len, rid = %self.info.rid, "edu DMA");
        self.m.with_qtest(|q| {
            q.writeq(bar + REG_SRC, src)?;
            q.writeq(bar + REG_DST, dst)?;
            q.writeq(bar + REG_COUNT, u64::from(len))?;
            q.writeq(bar + REG_CMD, cmd)
        })?;
        self.wait_idle(start)?;
        let took = start.elapsed();
        tracing::debug!(?took, "edu DMA done");
        Ok(took)
    }

    /// True while a transfer runs.
    pub fn busy(&self) -> QemuResult<bool> {
        Ok(self.m.with_qtest(|q| q.readq(self.info.bar0.raw() + REG_CMD))? & CMD_START != 0)
    }

    fn wait_idle(&self, start: Instant) -> QemuResult<()> {
        loop {
            let cmd = self.m.with_qtest(|q| q.readq(self.info.bar0.raw() + REG_CMD))?;
            if cmd & CMD_START == 0 {
                return Ok(());
            }
            if start.elapsed() >= self.timeout {
                return Err(QemuError::EduTimeout { waited: self.timeout, cmd });
            }
            std::thread::sleep(POLL);
        }
    }
}
