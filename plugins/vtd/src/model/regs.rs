//! The register file (VT-d spec chapter 11) and its read/write semantics.

use ioasis::platform::PhysMemory;

use super::{State, VtdModel};
use crate::layout::fault::frcd;
use crate::layout::regs::{
    ccmd, ccmd_more, ecap, event_ctl, fsts, gcmd, iotlb, iotlb_more, off, off_more, prs, ICS_IWC, IQ_OFFSET_MASK,
    PQ_OFFSET_MASK,
};

const U32: u64 = 0xffff_ffff;

/// FSTS bits software clears by writing 1 (11.4.9.1): PFO, AFO (bit 2), APF (bit 3), IQE, ICE,
/// ITE.
const FSTS_RW1C: u32 = fsts::PFO | (1 << 2) | (1 << 3) | fsts::IQE | fsts::ICE | fsts::ITE;

/// The registers' state.
#[derive(Debug)]
pub(super) struct Regs {
    /// 11.4.5 GSTS (TES, RTPS, QIES; WBFS always clear).
    pub gsts: u32,
    /// 11.4.6 RTADDR as written.
    pub rtaddr: u64,
    /// RTADDR as latched by the last SRTP (the root table in use, with TTM).
    pub root: u64,
    /// 11.4.7 CCMD.
    pub ccmd: u64,
    /// 11.4.9.1 FSTS bits PFO, IQE, ICE, ITE (PPF and FRI are computed from the records).
    pub fsts: u32,
    /// 11.4.9.2 FECTL, FEDATA, FEADDR, FEUADDR.
    pub fe: [u32; 4],
    /// 11.4.10 IQH, IQT (byte offsets), IQA.
    pub iqh: u64,
    pub iqt: u64,
    pub iqa: u64,
    /// 11.4.10.4 ICS.
    pub ics: u32,
    /// 11.4.10 IECTL, IEDATA, IEADDR, IEUADDR.
    pub ie: [u32; 4],
    /// 11.4.11 PQH, PQT (byte offsets), PQA.
    pub pqh: u64,
    pub pqt: u64,
    pub pqa: u64,
    /// 11.4.11.4 PRS.
    pub prs: u32,
    /// 11.4.11 PECTL, PEDATA, PEADDR, PEUADDR.
    pub pe: [u32; 4],
    /// 11.4.8 IVA_REG and IOTLB_REG.
    pub iva: u64,
    pub iotlb: u64,
    /// 11.4.9.3 fault-recording registers: (low qword, high qword).
    pub frcd: Vec<[u64; 2]>,
    /// Index the next fault is recorded at (or after).
    pub next_fr: usize,
    /// Index of the oldest pending record (FSTS.FRI), when PPF.
    pub first_fr: usize,
    /// With completion latency: a GCMD write not yet acted on, and the reads it still takes.
    pub gcmd_pending: Option<(u32, u32)>,
    /// With completion latency: reads until the CCMD / IOTLB_REG invalidation in flight
    /// completes (0: none in flight).
    pub ccmd_wait: u32,
    pub iotlb_wait: u32,
    /// With completion latency: reads until the invalidation queue runs its next batch (0:
    /// idle).
    pub qi_wait: u32,
}

impl Regs {
    /// The reset state of a unit with `nfr` fault-recording registers.
    pub fn new(nfr: u32) -> Self {
        let ctl = [event_ctl::IM, 0, 0, 0];
        Self {
            gsts: 0,
            rtaddr: 0,
            root: 0,
            ccmd: 0,
            fsts: 0,
            fe: ctl,
            iqh: 0,
            iqt: 0,
            iqa: 0,
            ics: 0,
            ie: ctl,
            pqh: 0,
            pqt: 0,
            pqa: 0,
            prs: 0,
            pe: ctl,
            iva: 0,
            iotlb: 0,
            frcd: vec![[0; 2]; nfr as usize],
            next_fr: 0,
            first_fr: 0,
            gcmd_pending: None,
            ccmd_wait: 0,
            iotlb_wait: 0,
            qi_wait: 0,
        }
    }

    /// FSTS as read: the stored bits, PPF when a record is pending and FRI (11.4.9.1).
    pub fn fsts_value(&self) -> u32 {
        let n = self.frcd.len();
        let pending = (0..n).map(|i| (self.first_fr + i) % n).find(|&i| self.frcd[i][1] & frcd::F != 0);
        match pending {
            Some(i) => self.fsts | fsts::PPF | ((i as u32 & 0xff) << 8),
            None => self.fsts,
        }
    }
}

/// Index of an event register in its group of four (control, data, address, upper address).
fn event_index(offset: u64, base: u64) -> Option<usize> {
    let d = offset.checked_sub(base)?;
    (d < 16 && d % 4 == 0).then_some((d / 4) as usize)
}

impl VtdModel {
    /// A 32-bit register's value, or None when `offset` is none.
    fn reg32(&self, st: &State, offset: u64) -> Option<u32> {
        let r = &st.regs;
        let v = match offset {
            off::VER => {
                if self.cfg.has_ecap(ecap::SMTS) {
                    0x30
                } else {
                    0x10
                }
            }
            // GCMD is write-only: it reads 0.
            off::GCMD => 0,
            off::GSTS => r.gsts,
            off::FSTS => r.fsts_value(),
            off::ICS => r.ics,
            off::PRS => r.prs,
            o => {
                if let Some(i) = event_index(o, off::FECTL) {
                    r.fe[i]
                } else if let Some(i) = event_index(o, off_more::IECTL) {
                    r.ie[i]
                } else if let Some(i) = event_index(o, off_more::PECTL).filter(|_| self.cfg.has_ecap(ecap::PRS)) {
                    r.pe[i]
                } else {
                    return None;
                }
            }
        };
        Some(v)
    }

    /// A fault-recording register: (record index, high qword?) of an 8-aligned offset.
    fn frcd_at(&self, offset: u64) -> Option<(usize, bool)> {
        let d = offset.checked_sub(self.cfg.fro())?;
        let i = usize::try_from(d / 16).ok()?;
        (i < self.cfg.nfr() as usize && d % 8 == 0).then_some((i, d % 16 == 8))
    }

    /// A 64-bit register's value, or None when `offset` (8-aligned) is none.
    fn reg64(&self, st: &State, offset: u64) -> Option<u64> {
        let r = &st.regs;
        let iro = self.cfg.iro();
        let prq = self.cfg.has_ecap(ecap::PRS);
        let qi = self.cfg.has_ecap(ecap::QI);
        let v = match offset {
            off::CAP => self.cfg.cap,
            off::ECAP => self.cfg.ecap,
            off::RTADDR => r.rtaddr,
            off::CCMD => r.ccmd,
            off::IQH if qi => r.iqh,
            off::IQT if qi => r.iqt,
            off::IQA if qi => r.iqa,
            off::PQH if prq => r.pqh,
            off::PQT if prq => r.pqt,
            off::PQA if prq => r.pqa,
            o if o == iro + iotlb::IVA => r.iva,
            o if o == iro + iotlb::REG => r.iotlb,
            o => {
                let (i, hi) = self.frcd_at(o)?;
                r.frcd.get(i)?[usize::from(hi)]
            }
        };
        Some(v)
    }

    /// One register read's worth of progress under completion latency: a pending global
    /// command, register-based invalidation or queue batch whose count runs out completes.
    pub(super) fn tick(&self, st: &mut State, mem: &dyn PhysMemory) {
        if let Some((v, n)) = st.regs.gcmd_pending {
            if n <= 1 {
                st.regs.gcmd_pending = None;
                self.gcmd(st, mem, v);
            } else {
                st.regs.gcmd_pending = Some((v, n - 1));
            }
        }
        if st.regs.ccmd_wait > 0 {
            st.regs.ccmd_wait -= 1;
            if st.regs.ccmd_wait == 0 {
                let v = st.regs.ccmd;
                let g = self.context_invalidate(st, v);
                st.regs.ccmd = (v & !ccmd::ICC & !ccmd_more::CAIG_MASK) | ccmd_more::caig(g);
            }
        }
        if st.regs.iotlb_wait > 0 {
            st.regs.iotlb_wait -= 1;
            if st.regs.iotlb_wait == 0 {
                let v = st.regs.iotlb;
                let g = self.iotlb_invalidate_reg(st, v);
                st.regs.iotlb = (v & !iotlb::IVT & !iotlb_more::IAIG_MASK) | iotlb_more::iaig(g);
            }
        }
        if st.regs.qi_wait > 0 {
            st.regs.qi_wait -= 1;
            if st.regs.qi_wait == 0 {
                self.queue_batch(st, mem);
                self.arm_queue(st);
            }
        }
    }

    /// A register read of `width` bytes.
    pub(super) fn read_reg(&self, st: &State, offset: u64, width: u8) -> Option<u64> {
        match width {
            4 if offset % 4 == 0 => {
                if let Some(v) = self.reg32(st, offset) {
                    return Some(u64::from(v));
                }
                let v = self.reg64(st, offset & !7)?;
                Some(if offset & 4 != 0 { v >> 32 } else { v & U32 })
            }
            8 if offset % 8 == 0 => self.reg64(st, offset),
            _ => None,
        }
    }

    /// A register write of `width` bytes; None when `offset` is no register.
    pub(super) fn write_reg(
        &self,
        st: &mut State,
        mem: &dyn PhysMemory,
        offset: u64,
        width: u8,
        value: u64,
    ) -> Option<()> {
        match width {
            4 if offset % 4 == 0 => {
                if self.reg32(st, offset).is_some() {
                    self.write32(st, mem, offset, value as u32);
                    return Some(());
                }
                let base = offset & !7;
                self.reg64(st, base)?;
                let shift = (offset & 4) * 8;
                self.write64(st, mem, base, (value & U32) << shift, U32 << shift);
                Some(())
            }
            8 if offset % 8 == 0 => {
                self.reg64(st, offset)?;
                self.write64(st, mem, offset, value, u64::MAX);
                Some(())
            }
            _ => None,
        }
    }

    fn write32(&self, st: &mut State, mem: &dyn PhysMemory, offset: u64, v: u32) {
        let r = &mut st.regs;
        match offset {
            off::GCMD if self.cfg.latency > 0 => {
                // Software must wait for one command's status before the next command (11.4.4):
                // a unit still busy with the earlier one drops the later one, so a driver that
                // does not wait finds its command never done.
                if st.regs.gcmd_pending.is_none() {
                    st.regs.gcmd_pending = Some((v, self.cfg.latency));
                }
            }
            off::GCMD => self.gcmd(st, mem, v),
            off::FSTS => {
                let had_iqe = r.fsts & fsts::IQE != 0;
                r.fsts &= !(v & FSTS_RW1C);
                if had_iqe && r.fsts & fsts::IQE == 0 {
                    self.process_queue(st, mem);
                }
            }
            off::ICS => r.ics &= !(v & ICS_IWC),
            off::PRS => r.prs &= !(v & (prs::PPR | prs::PRO)),
            o => {
                // Control registers keep IM only (IP is hardware's); the others are plain RW.
                let keep = |i: usize| if i == 0 { v & event_ctl::IM } else { v };
                if let Some(i) = event_index(o, off::FECTL) {
                    r.fe[i] = keep(i);
                } else if let Some(i) = event_index(o, off_more::IECTL) {
                    r.ie[i] = keep(i);
                } else if let Some(i) = event_index(o, off_more::PECTL) {
                    r.pe[i] = keep(i);
                }
                // VER, GSTS: read-only.
            }
        }
    }

    /// GCMD (11.4.4): each command bit acts, its status shows in GSTS at once.
    fn gcmd(&self, st: &mut State, mem: &dyn PhysMemory, v: u32) {
        let r = &mut st.regs;
        if v & gcmd::SRTP != 0 {
            r.root = r.rtaddr;
            r.gsts |= gcmd::SRTP;
        }
        // WBF: the flush completes at once, WBFS is never seen set.
        if v & gcmd::TE != 0 {
            r.gsts |= gcmd::TE;
        } else {
            r.gsts &= !gcmd::TE;
        }
        let enabled = r.gsts & gcmd::QIE != 0;
        if v & gcmd::QIE != 0 && !enabled && self.cfg.has_ecap(ecap::QI) && r.iqa != 0 {
            r.gsts |= gcmd::QIE;
            self.process_queue(st, mem);
        } else if v & gcmd::QIE == 0 && enabled {
            // 11.4.10.1: IQH is reset when queued invalidation is disabled.
            r.gsts &= !gcmd::QIE;
            r.iqh = 0;
            r.qi_wait = 0;
        }
    }

    fn write64(&self, st: &mut State, mem: &dyn PhysMemory, offset: u64, v: u64, mask: u64) {
        let merge = |old: u64| (old & !mask) | (v & mask);
        let iro = self.cfg.iro();
        let r = &mut st.regs;
        match offset {
            off::RTADDR => r.rtaddr = merge(r.rtaddr),
            off::CCMD => {
                let new = merge(r.ccmd);
                if v & mask & ccmd::ICC != 0 && self.cfg.latency > 0 {
                    r.ccmd = new;
                    r.ccmd_wait = self.cfg.latency;
                } else if v & mask & ccmd::ICC != 0 {
                    let g = self.context_invalidate(st, new);
                    st.regs.ccmd = (new & !ccmd::ICC & !ccmd_more::CAIG_MASK) | ccmd_more::caig(g);
                } else {
                    r.ccmd = new & !ccmd::ICC;
                }
            }
            off::IQT => {
                r.iqt = merge(r.iqt) & IQ_OFFSET_MASK;
                self.process_queue(st, mem);
            }
            off::IQA => r.iqa = merge(r.iqa),
            off::PQH => r.pqh = merge(r.pqh) & PQ_OFFSET_MASK,
            off::PQT => r.pqt = merge(r.pqt) & PQ_OFFSET_MASK,
            off::PQA => r.pqa = merge(r.pqa),
            o if o == iro + iotlb::IVA => r.iva = merge(r.iva),
            o if o == iro + iotlb::REG => {
                let new = merge(r.iotlb);
                if v & mask & iotlb::IVT != 0 && self.cfg.latency > 0 {
                    r.iotlb = new;
                    r.iotlb_wait = self.cfg.latency;
                } else if v & mask & iotlb::IVT != 0 {
                    let g = self.iotlb_invalidate_reg(st, new);
                    st.regs.iotlb = (new & !iotlb::IVT & !iotlb_more::IAIG_MASK) | iotlb_more::iaig(g);
                } else {
                    r.iotlb = new & !iotlb::IVT;
                }
            }
            o => {
                // Fault-recording registers: only F (high qword bit 63) is writable, RW1C.
                if let Some((i, true)) = self.frcd_at(o) {
                    if v & mask & frcd::F != 0 {
                        if let Some(rec) = r.frcd.get_mut(i) {
                            rec[1] &= !frcd::F;
                        }
                    }
                }
                // CAP, ECAP, IQH, low qwords of fault records: read-only.
            }
        }
    }
}
