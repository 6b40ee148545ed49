//! Fault recording (VT-d spec 7.1.3, fault-recording registers 11.4.9, reasons of Appendix
//! A) and the page request queue (7.5: page request descriptors 7.5.1, page group responses
//! 6.5.2.10, PQH/PQT/PQA/PRS 11.4.11).

use std::sync::atomic::Ordering;

use ioasis::abi::{Fault, LogLevel, PageResponse, PluginError};
use ioasis::pt::Memory;
use ioasis::{DeviceRef, Iova, Pasid, Prot, RequesterId};

use super::hwpt::Table;
use super::unit::{Defect, Tables, VtdUnit};
use crate::layout::fault::{frcd, frcd_lo, page_request, reason, reason_sm};
use crate::layout::qi;
use crate::layout::regs::{self, cap, fsts, off, prs};

impl VtdUnit {
    /// Maps a VT-d fault reason (Appendix A) to an ioasis reason. Reasons 5/6 cover both a
    /// not-present second-stage entry and missing permission: the table decides which.
    pub(super) fn fault_reason(&self, t: &Tables, sid: u16, pasid: Option<u32>, addr: u64, fr: u8) -> u32 {
        match fr {
            reason::ROOT_NOT_PRESENT | reason::CONTEXT_NOT_PRESENT => Fault::BLOCKED,
            reason::ADDRESS_BEYOND_AW => Fault::ADDRESS_SIZE,
            reason::NO_WRITE | reason::NO_READ => {
                let h = t.devices.get(&sid).and_then(|d| d.attached.get(&pasid.filter(|p| *p != 0)));
                match h.map(|h| &h.table) {
                    Some(Table::Paging(pt)) => match pt.walk(&self.core.io, addr) {
                        Ok(Some(_)) => Fault::PERMISSION,
                        _ => Fault::NOT_PRESENT,
                    },
                    Some(Table::Nested { .. }) => Fault::NOT_PRESENT,
                    _ => Fault::BLOCKED,
                }
            }
            reason::PASID_DIR_NOT_PRESENT | reason::PASID_NOT_PRESENT => {
                if pasid.is_some_and(|p| p != 0) {
                    Fault::BAD_PASID
                } else {
                    Fault::BLOCKED
                }
            }
            // Scalable-mode codes of nested and first-stage translation (Appendix A, SFS / SSS /
            // SGN): the guest's first stage, and the host's second stage (IN_PARENT).
            reason_sm::FS_NOT_PRESENT => Fault::NOT_PRESENT,
            reason_sm::FS_ENTRY_ERROR | reason_sm::FS_RESERVED => Fault::BAD_ENTRY,
            reason_sm::FSPTPTR_INVALID => Fault::BAD_CONFIG,
            reason_sm::FS_ADDRESS_BEYOND | reason_sm::NOT_CANONICAL => Fault::ADDRESS_SIZE,
            reason_sm::NO_WRITE | reason_sm::NO_READ => Fault::PERMISSION,
            // The record gives no guest-physical address to look up: a second-stage entry that
            // denies the access is reported as not present (VT-d second-stage entries have no
            // P bit: R = W = 0 is not-present, 9.8).
            reason_sm::SS_NO_READ_FS_ROOT
            | reason_sm::SS_NO_READ_FS_ENTRY
            | reason_sm::SS_NO_WRITE_FS_ENTRY
            | reason_sm::SS_PERMISSION => Fault::NOT_PRESENT | Fault::IN_PARENT,
            reason_sm::SS_ENTRY_ERROR | reason_sm::SS_RESERVED | reason_sm::SSPTPTR_INVALID => {
                Fault::BAD_ENTRY | Fault::IN_PARENT
            }
            // A PASID entry the unit finds invalid or with reserved bits set: in a nested entry the
            // guest's first-stage fields are what the host did not choose (9.6 FSPTPTR, FSPM).
            reason_sm::PASID_ENTRY_RESERVED | reason::PASID_ENTRY_INVALID if self.nested_at(t, sid, pasid) => {
                Fault::BAD_CONFIG
            }
            reason_sm::PASID_ENTRY_RESERVED | reason::PASID_ENTRY_INVALID => Fault::BAD_ENTRY,
            0x50..=0x5f => Fault::BAD_PASID,
            _ => Fault::BAD_ENTRY,
        }
    }

    /// True when what `sid` (PASID `pasid`) is attached to is a nested HWPT.
    pub(super) fn nested_at(&self, t: &Tables, sid: u16, pasid: Option<u32>) -> bool {
        let h = t.devices.get(&sid).and_then(|d| d.attached.get(&pasid.filter(|p| *p != 0)));
        h.is_some_and(|h| matches!(h.table, Table::Nested { .. }))
    }

    pub(super) fn rid(&self, sid: u16) -> DeviceRef {
        DeviceRef::Rid(RequesterId { segment: self.core.segment, bus: (sid >> 8) as u8, devfn: sid as u8 })
    }

    pub(super) fn do_read_faults(&self, max: u32) -> Result<Vec<Fault>, PluginError> {
        let c = &self.core;
        let io = &c.io;
        let t = self.tables();
        let mut out = Vec::new();
        let status = io.rd32(off::FSTS)?;
        if status & fsts::PPF != 0 {
            // 7.1.3 / 11.4.9.3: records from FRI on, circular over NFR records.
            let nfr = cap::nfr(c.cap);
            let mut i = fsts::fri(status) % nfr;
            for _ in 0..nfr {
                if out.len() as u32 >= max {
                    break;
                }
                let rec = cap::fro(c.cap) + u64::from(i) * 16;
                let hi = io.rd64(rec + 8)?;
                if hi & frcd::F == 0 {
                    break;
                }
                let lo = io.rd64(rec)?;
                let sid = frcd::sid(hi);
                let sid = if c.bug(Defect::FaultSourceSwapped) { sid.swap_bytes() } else { sid };
                // PASID 0 is the RID_PASID of untagged DMA (9.4; attach refuses it as a PASID).
                // QEMU 7.2 in scalable mode records untagged DMA with PP=1 and PASID 0: that
                // is untagged DMA, not a PASID the host could have attached.
                let pasid = (hi & frcd::PP != 0).then(|| frcd::pasid(hi)).filter(|p| !(c.scalable && *p == 0));
                let addr = frcd_lo::fi(lo);
                let access = if hi & frcd::T_READ != 0 { Prot::READ } else { Prot::WRITE };
                let fr = if c.bug(Defect::FaultReasonTruncated) { frcd::reason(hi) & 0xf } else { frcd::reason(hi) };
                let r = self.fault_reason(&t, sid, pasid, addr, fr);
                out.push(Fault {
                    dev: self.rid(sid),
                    pasid: pasid.map(Pasid).into(),
                    addr: Iova(addr),
                    access,
                    reason: r,
                    page_request: false,
                    group: 0,
                });
                // F is RW1C: bit 31 of the record's top dword.
                io.wr32(rec + 12, 1 << 31)?;
                i = (i + 1) % nfr;
            }
        }
        if status & fsts::PFO != 0 {
            if !self.warned_overflow.swap(true, Ordering::Relaxed) {
                io.log(LogLevel::Warn, &format!("unit {}: fault recording overflowed, faults were lost", self.name));
            }
            io.wr32(off::FSTS, fsts::PFO)?;
        }
        if let Some(q) = t.prq {
            self.drain_page_requests(q, max, &mut out)?;
        }
        Ok(out)
    }

    /// Page requests (7.5.1) from the page request queue.
    pub(super) fn drain_page_requests(&self, q: u64, max: u32, out: &mut Vec<Fault>) -> Result<(), PluginError> {
        let io = &self.core.io;
        let mut head = (io.rd64(off::PQH)? & regs::PQ_OFFSET_MASK) % 4096;
        let tail = (io.rd64(off::PQT)? & regs::PQ_OFFSET_MASK) % 4096;
        let start = head;
        while head != tail && (out.len() as u32) < max {
            let q0 = io.rd(q + head)?;
            let q1 = io.rd(q + head + 8)?;
            head = (head + page_request::SIZE) % 4096;
            if q0 & 0xff != page_request::TYPE {
                continue;
            }
            // 7.5.1.1: PASID present is bit 8 (bit 9 is privilege-mode requested).
            let pp = if self.core.bug(Defect::PageRequestPasidDropped) { 1 << 9 } else { page_request::PASID_P };
            let pasid = (q0 & pp != 0).then_some(((q0 >> 32) & 0xf_ffff) as u32);
            let access = Prot::new(q1 & page_request::RD != 0, q1 & page_request::WR != 0);
            out.push(Fault {
                dev: self.rid((q0 >> 16) as u16),
                pasid: pasid.map(Pasid).into(),
                addr: Iova(q1 & !0xfff),
                access,
                reason: Fault::NOT_PRESENT,
                page_request: true,
                group: ((q1 >> 3) & 0x1ff) as u32,
            });
        }
        if head != start {
            io.wr64(off::PQH, head)?;
        }
        let s = io.rd32(off::PRS)?;
        if s & prs::W1C != 0 && head == tail {
            io.wr32(off::PRS, s & prs::W1C)?;
        }
        Ok(())
    }

    pub(super) fn do_page_response(&self, resp: &PageResponse) -> Result<(), PluginError> {
        let c = &self.core;
        if !c.page_requests() {
            return Err(PluginError::unsupported("I/O page faults need ECAP.PRS (and scalable mode)"));
        }
        let DeviceRef::Rid(r) = resp.dev else {
            return Err(PluginError::invalid("VT-d names devices by PCI requester id"));
        };
        let pasid = resp.pasid.into_option().map(|p| p.0);
        // 6.5.2.10 page group response, followed by the batch's wait descriptor.
        let d = [qi::page_response::q0(resp.code, r.source_id(), pasid), qi::page_response::q1(resp.group, true)];
        c.inv.submit(&c.io, &[d])
    }
}
