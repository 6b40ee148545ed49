//! Programmable DMA devices: a requester id or stream id behind a unit, an optional PASID and
//! optional ATS, reading and writing N bytes at an IOVA; and batches of DMA run in parallel
//! (rayon) to play many devices at once.
//!
//! ## ATS
//!
//! A device with ATS ([`DmaDevice::with_ats`]) keeps a small address translation cache (ATC,
//! the device-TLB) of page translations it obtained from its unit ([`Machine::translate`], the
//! model of an ATS translation request) and reuses them without asking the unit again. As on
//! real hardware, a cached translation outlives an unmap until the device-TLB is invalidated:
//! the host must call [`DmaDevice::invalidate_atc`] (or [`DmaDevice::flush_atc`]) after
//! unmapping or re-attaching. The mock unit has no device-TLB invalidation command yet, so
//! nothing does this for the host: the harness flushes ATCs itself where it uses ATS devices
//! (the scenario runner uses none). A translation is requested for the access at hand (read or
//! write), so a page read first and written later is translated twice, and the two grants make
//! one read-write entry; the unit sets the dirty bit when it
//! grants write permission, not on each cached write (a host tracking dirty pages through ATS
//! must invalidate the ATC after clearing dirty bits, as on real hardware).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use ioasis::{DeviceRef, Iova, IovaRange, Pasid, PhysAddr, Prot, PAGE_SIZE};
use rayon::prelude::*;

use crate::machine::{DmaError, Machine};

/// Translations an ATS device caches; the oldest is evicted first.
pub const ATC_ENTRIES: usize = 32;

/// One cached translation: `[iova, iova + len)` → `[pa, pa + len)` with `prot` granted.
#[derive(Clone, Copy, Debug)]
struct AtcEntry {
    iova: u64,
    len: u64,
    pa: u64,
    prot: Prot,
}

impl AtcEntry {
    fn hit(&self, iova: u64, access: Prot) -> bool {
        iova >= self.iova && iova - self.iova < self.len && self.prot.contains(access)
    }
}

#[derive(Debug, Default)]
struct Atc {
    entries: VecDeque<AtcEntry>,
    hits: u64,
    misses: u64,
}

/// Counters of a device's ATC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AtcStats {
    /// Translations cached now.
    pub entries: usize,
    /// Accesses (per translated piece) served from the cache.
    pub hits: u64,
    /// Translation requests sent to the unit.
    pub misses: u64,
}

/// A device's DMA engine: who it is on the bus, which unit its DMA goes through, the PASID its
/// requests carry and whether it caches translations (ATS). `Sync`: jobs of one device may run
/// in parallel.
#[derive(Debug)]
pub struct DmaDevice {
    dev: DeviceRef,
    unit_base: PhysAddr,
    pasid: Option<Pasid>,
    ats: bool,
    atc: Mutex<Atc>,
}

impl DmaDevice {
    /// A device `dev` whose DMA goes through the unit at `unit_base`: untagged, without ATS.
    pub fn new(dev: DeviceRef, unit_base: PhysAddr) -> Self {
        Self { dev, unit_base, pasid: None, ats: false, atc: Mutex::new(Atc::default()) }
    }

    /// The same device, its requests tagged with `pasid` (`None`: untagged).
    pub fn with_pasid(self, pasid: Option<Pasid>) -> Self {
        Self { pasid, atc: Mutex::new(Atc::default()), ..self }
    }

    /// The same device, with ATS on or off (an empty ATC either way).
    pub fn with_ats(self, ats: bool) -> Self {
        Self { ats, atc: Mutex::new(Atc::default()), ..self }
    }

    /// Requester id or stream id.
    pub fn dev(&self) -> DeviceRef {
        self.dev
    }

    /// Register window base of its unit.
    pub fn unit_base(&self) -> PhysAddr {
        self.unit_base
    }

    /// PASID of its requests.
    pub fn pasid(&self) -> Option<Pasid> {
        self.pasid
    }

    /// Whether it caches translations.
    pub fn ats(&self) -> bool {
        self.ats
    }

    fn atc(&self) -> MutexGuard<'_, Atc> {
        // The cache holds plain values; a poisoned one is still consistent.
        self.atc.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `data` at `iova` (memory ← device). Like real DMA it is not atomic: when a later
    /// page faults, the pages before it have been written.
    pub fn write(&self, machine: &Machine, iova: Iova, data: &[u8]) -> Result<(), DmaError> {
        if !self.ats {
            return machine.dma_write(self.unit_base, self.dev, self.pasid, iova, data);
        }
        self.ats_dma(machine, iova, data.len(), Prot::WRITE, |pa, off, n| machine.ram().write(pa, &data[off..off + n]))
    }

    /// Reads `buf.len()` bytes at `iova` (memory → device); on a fault at a later page, the
    /// start of `buf` has been filled.
    pub fn read(&self, machine: &Machine, iova: Iova, buf: &mut [u8]) -> Result<(), DmaError> {
        if !self.ats {
            return machine.dma_read(self.unit_base, self.dev, self.pasid, iova, buf);
        }
        let len = buf.len();
        self.ats_dma(machine, iova, len, Prot::READ, |pa, off, n| machine.ram().read(pa, &mut buf[off..off + n]))
    }

    /// Drops the cached translations that overlap `range` (a device-TLB invalidation).
    pub fn invalidate_atc(&self, range: IovaRange) {
        let mut atc = self.atc();
        atc.entries.retain(|e| {
            // `len` > 0 and the entry does not wrap: it was built from a translated page.
            let mine = IovaRange::new(Iova(e.iova), e.len);
            !mine.is_some_and(|m| m.overlaps(&range))
        });
    }

    /// Drops every cached translation.
    pub fn flush_atc(&self) {
        self.atc().entries.clear();
    }

    /// The ATC's counters.
    pub fn atc_stats(&self) -> AtcStats {
        let atc = self.atc();
        AtcStats { entries: atc.entries.len(), hits: atc.hits, misses: atc.misses }
    }

    /// The translation of `iova` for `access`: from the ATC, or requested from the unit and
    /// cached. Returns the physical address and the bytes left in the translated page.
    fn ats_translate(&self, machine: &Machine, iova: u64, access: Prot) -> Result<(u64, u64), DmaError> {
        {
            let mut atc = self.atc();
            if let Some(e) = atc.entries.iter().find(|e| e.hit(iova, access)).copied() {
                atc.hits += 1;
                let off = iova - e.iova;
                return Ok((e.pa + off, e.len - off));
            }
            atc.misses += 1;
        }
        let t = machine.translate(self.unit_base, self.dev, self.pasid, Iova(iova), access)?;
        if t.remaining == 0 {
            return Err(DmaError::EmptyTranslation(Iova(iova)));
        }
        // Translations have at least 4 KiB granules, so the translation holds from the start
        // of the 4 KiB page of `iova`.
        let back = iova % PAGE_SIZE;
        if let Some(pa_start) = t.pa.raw().checked_sub(back) {
            let mut entry = AtcEntry { iova: iova - back, len: t.remaining + back, pa: pa_start, prot: access };
            let mut atc = self.atc();
            // A grant for a page already cached replaces the old entry; when it translates the
            // same way, it adds its permission to the old one (a read grant and a write grant
            // of one page make one read-write entry).
            atc.entries.retain(|e| {
                let same_page = e.iova <= entry.iova && entry.iova - e.iova < e.len;
                if same_page && e.pa.checked_add(entry.iova - e.iova) == Some(entry.pa) {
                    entry.prot = entry.prot | e.prot;
                }
                !same_page
            });
            if atc.entries.len() >= ATC_ENTRIES {
                atc.entries.pop_front();
            }
            atc.entries.push_back(entry);
        }
        Ok((t.pa.raw(), t.remaining))
    }

    fn ats_dma(
        &self,
        machine: &Machine,
        iova: Iova,
        len: usize,
        access: Prot,
        mut copy: impl FnMut(PhysAddr, usize, usize) -> Result<(), ioasis::abi::HostError>,
    ) -> Result<(), DmaError> {
        if len > 0 && iova.raw().checked_add(len as u64 - 1).is_none() {
            return Err(DmaError::Wraps { iova, len });
        }
        let mut done = 0usize;
        while done < len {
            // Cannot wrap: checked above.
            let here = iova.raw() + done as u64;
            let (pa, remaining) = self.ats_translate(machine, here, access)?;
            let chunk = usize::try_from(remaining).unwrap_or(usize::MAX).min(len - done);
            copy(PhysAddr(pa), done, chunk).map_err(DmaError::Memory)?;
            done += chunk;
        }
        Ok(())
    }
}

/// What a [`DmaJob`] does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DmaOp {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Read this many bytes.
    Read(usize),
}

/// One DMA of a parallel batch.
#[derive(Clone, Debug)]
pub struct DmaJob<'a> {
    /// The device doing it.
    pub device: &'a DmaDevice,
    /// Where.
    pub iova: Iova,
    /// What.
    pub op: DmaOp,
}

/// Runs `jobs` in parallel on rayon's pool and returns their outcomes in job order: the bytes
/// read for a read, an empty vector for a write. Jobs are independent: a fault in one does not
/// stop or change the others. Jobs of one batch run in no particular order, so a read of bytes
/// another job of the batch writes may see them before or after.
pub fn run_parallel(machine: &Machine, jobs: &[DmaJob<'_>]) -> Vec<Result<Vec<u8>, DmaError>> {
    jobs.par_iter()
        .map(|j| match &j.op {
            DmaOp::Write(data) => j.device.write(machine, j.iova, data).map(|()| Vec::new()),
            DmaOp::Read(n) => {
                let mut buf = vec![0u8; *n];
                j.device.read(machine, j.iova, &mut buf).map(|()| buf)
            }
        })
        .collect()
}
