//! Invalidation (VT-d spec 6.5): through the invalidation queue when ECAP.QI is set (6.5.2),
//! else through the context-command and IOTLB registers (6.5.1, 11.4.7, 11.4.8).
//!
//! Callers build a batch of 128-bit descriptors; [`Invalidator::submit`] writes them (as 256-bit
//! descriptors with zero upper halves when IQA.DW is set), appends one invalidation-wait
//! descriptor with a status write (6.5.2.8), moves the tail once and polls the status dword.

use std::sync::Mutex;

use ioasis::abi::{ErrorCode, PluginError};
use ioasis::pt::Memory;

use super::io::Io;
use super::unit::Defect;
use crate::layout::qi;
use crate::layout::regs::{self, cap, ccmd, fsts, iqa, off};

/// One descriptor: its two low qwords (the upper two of a 256-bit descriptor are zero for
/// every type the driver sends).
pub type Desc = [u64; 2];

/// Most page-selective descriptors one range flush may use before it falls back to
/// domain-selective invalidation.
pub const MAX_PSI: usize = 64;

/// The invalidation queue (6.5.2): one 4 KiB page (IQA.QS = 0).
pub struct Queue {
    /// Queue page.
    pub base: u64,
    /// A driver-owned page whose first dword receives wait-descriptor status writes.
    pub status: u64,
    /// 256-bit descriptors (IQA.DW, scalable mode).
    pub wide: bool,
    /// Next free slot.
    tail: u64,
    /// Status data of the last wait descriptor.
    seq: u32,
}

impl Queue {
    /// Descriptor size in bytes.
    pub fn desc_size(&self) -> u64 {
        if self.wide {
            32
        } else {
            16
        }
    }
    fn slots(&self) -> u64 {
        4096 / self.desc_size()
    }
}

/// How the unit's caches are invalidated.
pub struct Invalidator {
    /// The queue, when queued invalidation is enabled.
    pub queue: Mutex<Option<Queue>>,
    /// CAP, for PSI / MAMV / drain bits.
    cap: u64,
    /// IOTLB register block (ECAP.IRO).
    iro: u64,
    /// The deliberate bug the unit was told to have (conformance self-test only).
    defect: Option<Defect>,
}

impl Invalidator {
    /// Register-based until [`Invalidator::enable_queue`].
    pub fn new(cap: u64, ecap: u64, defect: Option<Defect>) -> Self {
        Self { queue: Mutex::new(None), cap, iro: regs::ecap::iro(ecap), defect }
    }

    /// Programs IQA and IQT and enables queued invalidation (11.4.10, GCMD.QIE).
    pub fn enable_queue(&self, io: &Io, base: u64, status: u64, wide: bool) -> Result<(), PluginError> {
        io.wr64(off::IQT, 0)?;
        io.wr64(off::IQA, iqa::value(base, 0, wide))?;
        io.gcmd(regs::gcmd::QIE, 0, "enable queued invalidation", |s| s & regs::gcmd::QIE != 0)?;
        *self.lock() = Some(Queue { base, status, wide, tail: 0, seq: 0 });
        Ok(())
    }

    /// Disables queued invalidation (GCMD.QIE clear) and forgets the queue; returns its pages.
    pub fn disable_queue(&self, io: &Io) -> Result<Option<(u64, u64)>, PluginError> {
        let mut q = self.lock();
        if q.is_some() {
            io.gcmd(0, regs::gcmd::QIE, "disable queued invalidation", |s| s & regs::gcmd::QIE == 0)?;
            io.wr64(off::IQA, 0)?;
        }
        Ok(q.take().map(|q| (q.base, q.status)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Queue>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when queued invalidation is on.
    pub fn queued(&self) -> bool {
        self.lock().is_some()
    }

    /// Runs a batch of descriptors and waits for its completion.
    pub fn submit(&self, io: &Io, batch: &[Desc]) -> Result<(), PluginError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut guard = self.lock();
        match guard.as_mut() {
            Some(q) => {
                // Leave room for the wait descriptor and one free slot (head == tail means empty).
                let room = (q.slots() - 2) as usize;
                for chunk in batch.chunks(room) {
                    Self::queue_chunk(io, q, chunk, self.defect)?;
                }
                Ok(())
            }
            None => {
                drop(guard);
                for d in batch {
                    self.register_based(io, d)?;
                }
                Ok(())
            }
        }
    }

    fn queue_chunk(io: &Io, q: &mut Queue, chunk: &[Desc], defect: Option<Defect>) -> Result<(), PluginError> {
        q.seq = q.seq.wrapping_add(1).max(1);
        let stale = defect == Some(Defect::StaleWaitStatus);
        let seq = if stale { 1 } else { q.seq };
        if !stale {
            io.wr(q.status, 0)?;
        }
        let wait = [qi::wait::q0(qi::wait::SW | qi::wait::FN, seq), qi::wait::q1(q.status)];
        let no_wait = defect == Some(Defect::MissingWaitDescriptor);
        let tail = if no_wait { None } else { Some(&wait) };
        for d in chunk.iter().chain(tail) {
            let slot = q.base + q.tail * q.desc_size();
            io.wr(slot + 8, d[1])?;
            if q.wide {
                io.wr(slot + 16, 0)?;
                io.wr(slot + 24, 0)?;
            }
            io.wr(slot, d[0])?;
            q.tail = (q.tail + 1) % q.slots();
        }
        // 11.4.10.2: IQT holds the byte offset of the next free descriptor.
        io.wr64(off::IQT, q.tail * q.desc_size())?;
        if no_wait {
            return Ok(());
        }
        let status = q.status;
        io.poll("invalidation wait", || {
            let s = io.rd32(off::FSTS)?;
            if s & fsts::INVALIDATION_ERRORS != 0 {
                let head = io.rd64(off::IQH).unwrap_or(0);
                return Err(PluginError::new(
                    ErrorCode::HARDWARE,
                    format!("invalidation queue error (FSTS {s:#x}, IQH {head:#x})"),
                ));
            }
            Ok((io.rd(status)? as u32 == seq).then_some(()))
        })
    }

    /// Register-based invalidation (6.5.1) of one descriptor's worth.
    fn register_based(&self, io: &Io, d: &Desc) -> Result<(), PluginError> {
        let ty = qi::type_of(d[0]);
        let gran = (d[0] >> 4) & 3;
        let did = (d[0] >> 16) as u16;
        match ty {
            qi::cc::TYPE => {
                let sid = (d[0] >> 32) as u16;
                let cirg = match gran {
                    1 => ccmd::GLOBAL,
                    2 => ccmd::DOMAIN,
                    _ => ccmd::DEVICE,
                };
                // 11.4.7: DID bits 15:0, SID bits 31:16.
                io.wr64(off::CCMD, ccmd::command(cirg, sid, did))?;
                io.poll("context-cache invalidation", || Ok((io.rd64(off::CCMD)? & ccmd::ICC == 0).then_some(())))
            }
            qi::iotlb::TYPE => {
                let iirg = match gran {
                    1 => regs::iotlb::GLOBAL,
                    2 => regs::iotlb::DOMAIN,
                    _ => regs::iotlb::PAGE,
                };
                if iirg == regs::iotlb::PAGE {
                    io.wr64(self.iro + regs::iotlb::IVA, regs::iotlb::iva(d[1], (d[1] & 0x3f) as u32))?;
                }
                let reg = self.iro + regs::iotlb::REG;
                io.wr64(reg, regs::iotlb::command(iirg, self.drains(), did))?;
                io.poll("IOTLB invalidation", || Ok((io.rd64(reg)? & regs::iotlb::IVT == 0).then_some(())))
            }
            qi::wait::TYPE => Ok(()),
            other => {
                Err(PluginError::unsupported(format!("descriptor type {other:#x} needs queued invalidation (ECAP.QI)")))
            }
        }
    }

    /// IOTLB descriptors (6.5.2.3) for `[iova, iova+len)` of domain `did`: naturally aligned
    /// 2^AM-page chunks when CAP.PSI allows (AM <= CAP.MAMV) and at most [`MAX_PSI`] are needed,
    /// else one domain-selective descriptor.
    pub fn iotlb_range(&self, did: u16, iova: u64, len: u64) -> Vec<Desc> {
        let drain = self.drains();
        match psi_chunks(self.cap, iova, len) {
            Some(chunks) => chunks
                .into_iter()
                .map(|(a, am)| [qi::iotlb::drained(qi::iotlb::PAGE, did, drain), qi::iotlb::q1(a, self.am(am))])
                .collect(),
            None => vec![[qi::iotlb::drained(qi::iotlb::DOMAIN, did, drain), 0]],
        }
    }

    /// Whether invalidations drain reads and writes: CAP.DWD or CAP.DRD (11.4.2).
    fn drains(&self) -> bool {
        self.cap & cap::DRAINING != 0
    }

    /// The AM field for a chunk of 2^`am` pages (one too small with the test-only defect).
    fn am(&self, am: u32) -> u32 {
        if self.defect == Some(Defect::AddressMaskOffByOne) {
            am.saturating_sub(1)
        } else {
            am
        }
    }

    /// PASID-based IOTLB descriptors (6.5.2.4) for one PASID of domain `did`.
    pub fn piotlb_range(&self, did: u16, pasid: u32, range: Option<(u64, u64)>) -> Vec<Desc> {
        match range.and_then(|(iova, len)| psi_chunks(self.cap, iova, len)) {
            Some(chunks) => chunks
                .into_iter()
                .map(|(a, am)| [qi::p_iotlb::q0(qi::p_iotlb::PAGE, did, pasid), qi::iotlb::q1(a, self.am(am))])
                .collect(),
            None => vec![[qi::p_iotlb::q0(qi::p_iotlb::PASID, did, pasid), 0]],
        }
    }
}

/// The naturally aligned (address, AM) chunks that cover `[iova, iova+len)`, or `None` when
/// page-selective invalidation is absent or would need more than [`MAX_PSI`] descriptors.
pub fn psi_chunks(cap_reg: u64, iova: u64, len: u64) -> Option<Vec<(u64, u32)>> {
    if cap_reg & cap::PSI == 0 || len == 0 {
        return None;
    }
    let mamv = cap::mamv(cap_reg);
    let mut out = Vec::new();
    let mut a = iova & !0xfff;
    let end = iova.checked_add(len)?.checked_add(0xfff)? & !0xfff;
    while a < end {
        let pages = (end - a) >> 12;
        let align = if a == 0 { 63 } else { (a >> 12).trailing_zeros() };
        let fit = 63 - pages.leading_zeros();
        let am = align.min(fit).min(mamv);
        out.push((a, am));
        if out.len() > MAX_PSI {
            return None;
        }
        a += 1u64 << (12 + am);
    }
    Some(out)
}
