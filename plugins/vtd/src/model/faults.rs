//! Fault reporting: primary fault logging in the fault-recording registers (VT-d spec 7.2.1,
//! 11.4.9) and page requests in the page request queue (7.5.1, 11.4.11).

use ioasis::abi::Fault;
use ioasis::platform::{DmaRequest, PhysMemory};
use ioasis::{DeviceRef, PhysAddr};

use super::{Miss, State, VtdModel, FAULT_LOG};
use crate::layout::fault::{frcd, page_request};
use crate::layout::regs::{ecap, fsts, prs, PQ_OFFSET_MASK};

/// One fault as the model saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultDetail {
    /// What [`ioasis::platform::UnitModel::translate`] returned.
    pub fault: Fault,
    /// The VT-d fault reason (Appendix A; see `layout::fault::reason`).
    pub vtd_reason: u8,
    /// Written to a fault-recording register (false: FPD set, the records were full, or it
    /// became a page request).
    pub recorded: bool,
}

impl VtdModel {
    /// Reports a failed translation: a page request, or a fault record; returns the [`Fault`].
    pub(super) fn report(&self, st: &mut State, mem: &dyn PhysMemory, req: &DmaRequest, m: Miss) -> Fault {
        let sid = req.dev.table_index() as u16;
        let pasid = req.pasid.map(|p| p.0);
        let mut fault = Fault {
            dev: req.dev,
            pasid: req.pasid.into(),
            addr: req.iova,
            access: req.access,
            reason: m.fail.kind,
            page_request: false,
            group: 0,
        };
        let mut recorded = false;
        let not_present = m.fail.kind & Fault::REASON_MASK == Fault::NOT_PRESENT;
        let prq = m.pre && not_present && self.cfg.has_ecap(ecap::PRS);
        match prq.then(|| self.page_request(st, mem, sid, req)).flatten() {
            Some(group) => {
                // 7.5.1.1: a page request carries no reason, nor which stage missed.
                fault.reason = Fault::NOT_PRESENT;
                fault.page_request = true;
                fault.group = group;
            }
            None if !m.fpd => {
                recorded = record(st, sid, req.iova.raw(), m.fail.vtd, pasid, !req.access.write());
            }
            None => {}
        }
        if st.log.len() >= FAULT_LOG {
            st.log.pop_front();
        }
        st.log.push_back(FaultDetail { fault, vtd_reason: m.fail.vtd, recorded });
        fault
    }

    /// Writes a page request descriptor (7.5.1.1) at PQT; returns its group index, or None
    /// (PRS.PRO set) when the queue is full or not usable.
    fn page_request(&self, st: &mut State, mem: &dyn PhysMemory, sid: u16, req: &DmaRequest) -> Option<u32> {
        let r = &mut st.regs;
        let base = r.pqa & !0xfff;
        let size = 4096u64 << (r.pqa & 7);
        let (head, tail) = (r.pqh & PQ_OFFSET_MASK, r.pqt & PQ_OFFSET_MASK);
        if base == 0 || head >= size || tail >= size || (tail + page_request::SIZE) % size == head {
            r.prs |= prs::PRO;
            return None;
        }
        let group = st.next_group & 0x1ff;
        let rid = match req.dev {
            DeviceRef::Rid(r) => r.source_id(),
            DeviceRef::Sid(_) => sid,
        };
        let words = [
            page_request::q0(rid, req.pasid.map(|p| p.0)),
            page_request::q1(req.iova.raw(), group, req.access.read(), req.access.write(), true),
            0,
            0,
        ];
        for (i, w) in words.iter().enumerate() {
            // A queue that runs past the top of the address space cannot take the request:
            // like an unwritable one, PRO (11.4.11.4).
            let at = base.checked_add(tail + i as u64 * 8);
            if at.is_none_or(|at| mem.write_u64(PhysAddr(at), *w).is_err()) {
                st.regs.prs |= prs::PRO;
                return None;
            }
        }
        st.next_group = st.next_group.wrapping_add(1);
        let r = &mut st.regs;
        r.pqt = (tail + page_request::SIZE) % size;
        r.prs |= prs::PPR;
        Some(group)
    }
}

/// Primary fault logging (7.2.1): the first free record from the next index, round robin;
/// none free sets FSTS.PFO and drops the fault. Returns whether it was recorded.
fn record(st: &mut State, sid: u16, addr: u64, vtd: u8, pasid: Option<u32>, read: bool) -> bool {
    let r = &mut st.regs;
    let n = r.frcd.len();
    if n == 0 {
        r.fsts |= fsts::PFO;
        return false;
    }
    let pending_before = r.frcd.iter().any(|rec| rec[1] & frcd::F != 0);
    let Some(i) = (0..n).map(|k| (r.next_fr + k) % n).find(|&i| r.frcd[i][1] & frcd::F == 0) else {
        r.fsts |= fsts::PFO;
        return false;
    };
    r.frcd[i] = [addr & !0xfff, frcd::hi(sid, vtd, pasid, read)];
    r.next_fr = (i + 1) % n;
    if !pending_before {
        r.first_fr = i;
    }
    true
}
