//! Invalidation: register-based (VT-d spec 6.5.1: CCMD 11.4.7, IOTLB_REG 11.4.8) and queued
//! (6.5.2: the invalidation queue, IQH/IQT/IQA 11.4.10, and its descriptors).

use ioasis::platform::PhysMemory;
use ioasis::PhysAddr;

use super::cache::fm_ignore;
use super::{PageResponseRecord, State, VtdModel};
use crate::layout::qi;
use crate::layout::regs::{cap, ccmd_more, ecap, fsts, gcmd, iotlb_more, iqa, ICS_IWC, IQ_OFFSET_MASK};

/// A descriptor the unit refuses (sets FSTS.IQE).
struct Invalid;

/// The invalidation queue as IQA, IQH and IQT give it (11.4.10).
struct Queue {
    base: u64,
    /// Bytes.
    size: u64,
    /// Descriptor size in bytes (16, or 32 with IQA.DW).
    dsz: u64,
    wide: bool,
    tail: u64,
    head: u64,
}

/// Cache invalidations (6.5.2.1-6.5.2.7), which complete in any order up to a wait descriptor.
fn is_cache_invalidation(q0: u64) -> bool {
    matches!(
        qi::type_of(q0),
        qi::cc::TYPE | qi::iotlb::TYPE | qi::dev_tlb::TYPE | qi::p_iotlb::TYPE | qi::pc::TYPE | qi::p_dev_tlb::TYPE
    )
}

/// Descriptor granularity field G, bits 5:4 (6.5.2.x).
fn gran(q0: u64) -> u64 {
    (q0 >> 4) & 3
}

/// DID bits 31:16 of qword 0.
fn did(q0: u64) -> u16 {
    (q0 >> 16) as u16
}

/// PASID bits 51:32 of qword 0.
fn pasid(q0: u64) -> u32 {
    ((q0 >> 32) & 0xf_ffff) as u32
}

/// Fails when any bit outside `allowed` is set.
fn only(v: u64, allowed: u64) -> Result<(), Invalid> {
    if v & !allowed == 0 {
        Ok(())
    } else {
        Err(Invalid)
    }
}

/// Qword 0 bits every descriptor may use: type 3:0 and G 5:4.
const TYPE_G: u64 = 0x3f;
/// Qword 1 of an IOTLB / PASID-based IOTLB descriptor: ADDR 63:12, IH 6, AM 5:0.
const ADDR_IH_AM: u64 = !0xf80;

impl VtdModel {
    /// Context-cache invalidation of a CCMD value (11.4.7); returns the granularity done
    /// (CAIG), 0 when CIRG is invalid.
    pub(super) fn context_invalidate(&self, st: &mut State, v: u64) -> u64 {
        let c = &mut st.caches;
        match ccmd_more::cirg(v) {
            1 => c.cc_global(),
            2 => c.cc_domain(ccmd_more::did_of(v)),
            3 => c.cc_device(ccmd_more::sid_of(v), fm_ignore(ccmd_more::fm(v))),
            _ => return 0,
        }
        ccmd_more::cirg(v)
    }

    /// IOTLB invalidation of an IOTLB_REG value with IVA_REG (11.4.8); returns the granularity
    /// done (IAIG), 0 when IIRG is invalid. Page-selective without CAP.PSI, or with AM above
    /// CAP.MAMV, is done domain-selective.
    pub(super) fn iotlb_invalidate_reg(&self, st: &mut State, v: u64) -> u64 {
        let iva = st.regs.iva;
        let (addr, am) = (iva & !0xfff, (iva & 0x3f) as u32);
        let d = iotlb_more::did_of(v);
        let c = &mut st.caches;
        match iotlb_more::iirg(v) {
            1 => c.iotlb_global(),
            2 => c.iotlb_domain(d),
            3 if self.cfg.has_cap(cap::PSI) && am <= cap::mamv(self.cfg.cap) => c.iotlb_pages(d, addr, am),
            3 => {
                c.iotlb_domain(d);
                return 2;
            }
            _ => return 0,
        }
        iotlb_more::iirg(v)
    }

    /// The queue's geometry when it runs (enabled, no queue error pending); sets FSTS.IQE
    /// when IQA / IQH / IQT are unusable.
    fn queue(&self, st: &mut State) -> Option<Queue> {
        let r = &st.regs;
        if r.gsts & gcmd::QIE == 0 || r.fsts & fsts::IQE != 0 {
            return None;
        }
        let wide = r.iqa & iqa::DW != 0;
        let dsz: u64 = if wide { 32 } else { 16 };
        let size = 4096u64 << (r.iqa & 7);
        let q =
            Queue { base: r.iqa & !0xfff, size, dsz, wide, tail: r.iqt & IQ_OFFSET_MASK, head: r.iqh & IQ_OFFSET_MASK };
        let bad_queue = (wide && !self.cfg.has_ecap(ecap::SMTS)) || q.tail >= size || q.tail % dsz != 0;
        if bad_queue || q.head >= size || q.head % dsz != 0 {
            st.regs.fsts |= fsts::IQE;
            return None;
        }
        Some(q)
    }

    /// The descriptor at byte offset `at` of the queue, or None when memory refuses.
    fn fetch(mem: &dyn PhysMemory, q: &Queue, at: u64) -> Option<[u64; 4]> {
        let mut d = [0u64; 4];
        for (i, w) in d.iter_mut().take((q.dsz / 8) as usize).enumerate() {
            *w = mem.read_u64(PhysAddr(q.base.checked_add(at + i as u64 * 8)?)).ok()?;
        }
        Some(d)
    }

    /// Fetches and runs descriptors from IQH up to IQT while queued invalidation is enabled and
    /// no queue error is pending (6.5.2). With completion latency, this only arms the queue:
    /// its batches run as registers are read ([`VtdModel::tick`]).
    pub(super) fn process_queue(&self, st: &mut State, mem: &dyn PhysMemory) {
        if self.cfg.latency > 0 {
            self.arm_queue(st);
            return;
        }
        let Some(q) = self.queue(st) else { return };
        let mut head = q.head;
        // At most one pass over the queue.
        for _ in 0..q.size / q.dsz {
            if head == q.tail {
                break;
            }
            let ok = Self::fetch(mem, &q, head).is_some_and(|d| self.run_descriptor(st, mem, &d, q.wide).is_ok());
            if !ok {
                st.regs.fsts |= fsts::IQE;
                return;
            }
            head = (head + q.dsz) % q.size;
            st.regs.iqh = head;
        }
    }

    /// Starts the latency count of the queue's next batch when it has work and none is counting.
    pub(super) fn arm_queue(&self, st: &mut State) {
        let r = &st.regs;
        let runs = r.gsts & gcmd::QIE != 0 && r.fsts & fsts::IQE == 0;
        if runs && r.qi_wait == 0 && r.iqh & IQ_OFFSET_MASK != r.iqt & IQ_OFFSET_MASK {
            st.regs.qi_wait = self.cfg.latency.max(1);
        }
    }

    /// Runs the queue's next batch under completion latency: the descriptors from IQH up to
    /// and including the next wait descriptor (or IQT). The cache invalidations run newest
    /// first (6.5.2 orders them only against a wait descriptor), then the other descriptors in
    /// order. An invalid or unreadable descriptor sets FSTS.IQE with IQH at it, and nothing
    /// after it but invalidations (which may always be done early) has run.
    pub(super) fn queue_batch(&self, st: &mut State, mem: &dyn PhysMemory) {
        let Some(q) = self.queue(st) else { return };
        let mut batch: Vec<(u64, Option<[u64; 4]>)> = Vec::new();
        let mut head = q.head;
        while head != q.tail && (batch.len() as u64) < q.size / q.dsz {
            let d = Self::fetch(mem, &q, head);
            batch.push((head, d));
            head = (head + q.dsz) % q.size;
            if d.is_none_or(|d| qi::type_of(d[0]) == qi::wait::TYPE) {
                break;
            }
        }
        let mut bad = None;
        for (i, (_, d)) in batch.iter().enumerate().rev() {
            match d {
                None => bad = Some(i),
                Some(d) if is_cache_invalidation(d[0]) && self.run_descriptor(st, mem, d, q.wide).is_err() => {
                    bad = Some(i)
                }
                Some(_) => {}
            }
        }
        for (i, (_, d)) in batch.iter().enumerate() {
            if bad.is_some_and(|b| i >= b) {
                break;
            }
            if let Some(d) = d.filter(|d| !is_cache_invalidation(d[0])) {
                if self.run_descriptor(st, mem, &d, q.wide).is_err() {
                    bad = Some(i);
                }
            }
        }
        match bad {
            Some(i) => {
                st.regs.iqh = batch[i].0;
                st.regs.fsts |= fsts::IQE;
            }
            None => st.regs.iqh = head,
        }
    }

    /// Runs one descriptor (6.5.2.1-6.5.2.10).
    fn run_descriptor(&self, st: &mut State, mem: &dyn PhysMemory, d: &[u64; 4], wide: bool) -> Result<(), Invalid> {
        let [q0, q1, q2, q3] = *d;
        let ty = qi::type_of(q0);
        // The types here use only the low 128 bits; the upper half of a 256-bit descriptor is
        // reserved, except for a page group response's private data.
        if wide && ty != qi::page_response::TYPE && (q2 | q3) != 0 {
            return Err(Invalid);
        }
        let scalable = self.cfg.has_ecap(ecap::SMTS);
        let c = &mut st.caches;
        match ty {
            qi::cc::TYPE => {
                // 6.5.2.1: G 5:4, DID 31:16, SID 47:32, FM 49:48.
                only(q0, TYPE_G | (0xffff << 16) | (0xffff << 32) | (3 << 48))?;
                only(q1, 0)?;
                match gran(q0) {
                    1 => c.cc_global(),
                    2 => c.cc_domain(did(q0)),
                    3 => c.cc_device((q0 >> 32) as u16, fm_ignore(q0 >> 48)),
                    _ => return Err(Invalid),
                }
            }
            qi::iotlb::TYPE => {
                // 6.5.2.3: G 5:4, DW 6, DR 7, DID 31:16; ADDR, IH, AM.
                only(q0, TYPE_G | 0xc0 | (0xffff << 16))?;
                only(q1, ADDR_IH_AM)?;
                let am = (q1 & 0x3f) as u32;
                match gran(q0) {
                    1 => c.iotlb_global(),
                    2 => c.iotlb_domain(did(q0)),
                    3 if am > cap::mamv(self.cfg.cap) => return Err(Invalid),
                    3 if self.cfg.has_cap(cap::PSI) => c.iotlb_pages(did(q0), q1 & !0xfff, am),
                    3 => c.iotlb_domain(did(q0)),
                    _ => return Err(Invalid),
                }
            }
            // 6.5.2.5 / 6.5.2.6: no device-TLB is modelled; accepted when ECAP.DT.
            0x3 | 0x8 if self.cfg.has_ecap(ecap::DT) => {}
            qi::wait::TYPE => {
                // 6.5.2.8: IF 4, SW 5, FN 6, PD 7, status data 63:32; status address 63:2.
                only(q0, 0xff | (U32 << 32))?;
                only(q1, !3)?;
                if q0 & qi::wait::SW != 0 {
                    let data = ((q0 >> 32) as u32).to_le_bytes();
                    mem.write(PhysAddr(q1 & !3), &data).map_err(|_| Invalid)?;
                }
                if q0 & qi::wait::IF != 0 {
                    st.regs.ics |= ICS_IWC;
                }
            }
            qi::p_iotlb::TYPE if scalable => {
                // 6.5.2.4: G 5:4, DID 31:16, PASID 51:32; ADDR, IH, AM.
                only(q0, TYPE_G | (0xffff << 16) | (0xf_ffff << 32))?;
                only(q1, ADDR_IH_AM)?;
                let am = (q1 & 0x3f) as u32;
                match gran(q0) {
                    2 => c.piotlb(did(q0), pasid(q0), None),
                    3 if am <= cap::mamv(self.cfg.cap) => c.piotlb(did(q0), pasid(q0), Some((q1 & !0xfff, am))),
                    _ => return Err(Invalid),
                }
            }
            qi::pc::TYPE if scalable => {
                // 6.5.2.2: G 5:4 (00 domain, 01 PASID, 11 global), DID 31:16, PASID 51:32.
                only(q0, TYPE_G | (0xffff << 16) | (0xf_ffff << 32))?;
                only(q1, 0)?;
                match gran(q0) {
                    0 => c.pc_invalidate(did(q0), None),
                    1 => c.pc_invalidate(did(q0), Some(pasid(q0))),
                    3 => c.pc_global(),
                    _ => return Err(Invalid),
                }
            }
            qi::page_response::TYPE if self.cfg.has_ecap(ecap::PRS) => {
                // 6.5.2.10: PASID present 4, response code 15:12, RID 31:16, PASID 51:32;
                // qword 1 LPIG 2, PRGI 11:3.
                only(q0, 0x1f | (0xf << 12) | (0xffff << 16) | (0xf_ffff << 32))?;
                let rec = PageResponseRecord {
                    rid: (q0 >> 16) as u16,
                    pasid: (q0 & qi::page_response::PASID_P != 0).then(|| pasid(q0)),
                    group: ((q1 >> 3) & 0x1ff) as u32,
                    code: ((q0 >> 12) & 0xf) as u32,
                    last: q1 & (1 << 2) != 0,
                };
                if st.responses.len() < super::cache::CAPACITY {
                    st.responses.push(rec);
                }
            }
            _ => return Err(Invalid),
        }
        Ok(())
    }
}

const U32: u64 = 0xffff_ffff;
