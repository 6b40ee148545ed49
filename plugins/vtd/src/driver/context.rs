//! Root and context tables (VT-d spec 9.1-9.4): context tables hooked into root entries,
//! legacy context entries (9.3) and the attach/detach paths that change them, with the
//! context-cache and IOTLB invalidations each change needs (6.5.3.3).

use std::sync::Arc;

use ioasis::abi::{DeviceInfo, ErrorCode, HwptKind, PluginError};
use ioasis::pt::Memory;

use super::hwpt::{dev_tlb_all, HwptInner, Table, User, VtdHwpt};
use super::inv::Desc;
use super::unit::{Defect, DevState, Tables, VtdUnit};
use crate::layout::qi;
use crate::layout::regs::{cap, ecap};
use crate::layout::tables::{context, pasid_entry, root, sm_root};

impl VtdUnit {
    /// Context-cache invalidation for one device (6.5.2.1) with the DID the spec asks for:
    /// DID 0 for a not-present to present change under caching mode.
    pub(super) fn cc_device(&self, did: u16, sid: u16) -> Desc {
        [qi::cc::q0(qi::cc::DEVICE, did, sid), 0]
    }

    /// Descriptors that drop what the unit cached for an entry that used domain `did`.
    pub(super) fn drop_old(&self, sid: u16, pasid: Option<u32>, did: u16, ats: bool) -> Vec<Desc> {
        let mut b = match pasid {
            None if self.core.bug(Defect::SkipContextCacheInvalidation) => vec![],
            None => vec![self.cc_device(did, sid)],
            Some(_) if self.core.bug(Defect::SkipPasidCacheInvalidation) => vec![],
            Some(p) => vec![[qi::pc::q0(qi::pc::PASID, did, p), 0]],
        };
        b.push([qi::iotlb::q0(qi::iotlb::DOMAIN, did), 0]);
        if let Some(p) = pasid {
            b.push([qi::p_iotlb::q0(qi::p_iotlb::PASID, did, p), 0]);
        }
        if ats {
            b.push(dev_tlb_all(sid));
        }
        b
    }

    /// Descriptors after an entry became present with domain `did`.
    pub(super) fn after_new(&self, sid: u16, pasid: Option<u32>, did: u16) -> Vec<Desc> {
        let cm = self.core.cap & cap::CM != 0;
        let mut b = match pasid {
            None if self.core.bug(Defect::SkipContextCacheInvalidation) => vec![],
            None => vec![self.cc_device(if cm { 0 } else { did }, sid)],
            Some(p) => vec![[qi::pc::q0(qi::pc::PASID, did, p), 0]],
        };
        if cm {
            b.push([qi::iotlb::q0(qi::iotlb::DOMAIN, did), 0]);
        }
        b
    }

    pub(super) fn do_attach(&self, dev: &DeviceInfo, pasid: Option<u32>, hwpt: &VtdHwpt) -> Result<(), PluginError> {
        let h = self.own(hwpt)?;
        let sid = self.sid_of(dev)?;
        let mut t = self.tables();
        if t.shut_down {
            return Err(PluginError::new(ErrorCode::BUSY, "unit is shut down"));
        }
        if self.core.scalable {
            self.attach_scalable(&mut t, dev, sid, pasid, h)
        } else {
            if pasid.is_some() {
                return Err(PluginError::unsupported("PASID needs scalable mode and ECAP.PASID"));
            }
            self.attach_legacy(&mut t, dev, sid, h)
        }
    }

    /// The context table for (bus, half), allocated and hooked into the root entry when missing.
    pub(super) fn ctx_table(&self, t: &mut Tables, bus: u8, half: u8) -> Result<(u64, bool), PluginError> {
        if let Some(p) = t.ctx.get(&(bus, half)) {
            return Ok((*p, false));
        }
        Ok((self.core.io.alloc()?, true))
    }

    pub(super) fn hook_ctx_table(&self, t: &mut Tables, bus: u8, half: u8, table: u64) -> Result<(), PluginError> {
        let io = &self.core.io;
        let entry = t.root + root::offset(bus);
        let half = if self.core.bug(Defect::UpperContextTableIgnored) { 0 } else { half };
        if self.core.scalable {
            // 9.2: lower context table pointer in qword 0, upper in qword 1.
            io.wr(entry + 8 * half as u64, sm_root::half(table))?;
        } else {
            io.wr(entry + 8, 0)?;
            io.wr(entry, root::lo(table))?;
        }
        t.ctx.insert((bus, half), table);
        Ok(())
    }

    /// Legacy attach (9.3). A present entry is replaced through a short blocked window:
    /// a 128-bit entry cannot be written atomically, and a torn mix of old DID and new table
    /// (or the reverse) would let translations of one domain be cached under the other's DID.
    /// So: clear P, invalidate the context cache and the old domain's IOTLB, write the upper
    /// qword (AW, DID), then the lower one with P last (6.5.3.3 guidance). DMA in that window
    /// faults (context entry not present) instead of using a wrong table.
    pub(super) fn attach_legacy(
        &self,
        t: &mut Tables,
        dev: &DeviceInfo,
        sid: u16,
        h: Arc<HwptInner>,
    ) -> Result<(), PluginError> {
        let c = &self.core;
        let io = &c.io;
        let (bus, devfn) = ((sid >> 8) as u8, sid as u8);
        let ats = dev.ats && c.has(ecap::DT);
        let new = match (&h.table, h.kind) {
            (_, HwptKind::BLOCKING) => None,
            (_, HwptKind::IDENTITY) => Some((context::lo(0, context::TT_PT), context::hi(c.pt_aw, h.did))),
            (Table::Paging(pt), _) => {
                let tt = if ats { context::TT_SL_DT } else { context::TT_SL };
                Some((context::lo(pt.root, tt), context::hi(c.aw, h.did)))
            }
            _ => return Err(PluginError::unsupported("nested translation needs scalable mode")),
        };
        let (ctx, fresh) = self.ctx_table(t, bus, 0)?;
        if fresh {
            self.hook_ctx_table(t, bus, 0, ctx)?;
        }
        let entry = ctx + context::offset(devfn);
        let st = t.devices.entry(sid).or_insert_with(|| DevState { ctx_entry: entry, ..Default::default() });
        let old_lo = io.rd(entry)?;
        let old_hi = io.rd(entry + 8)?;
        if old_lo & context::P != 0 {
            io.wr(entry, old_lo & !context::P)?;
            c.write_buffer_flush()?;
            c.inv.submit(io, &self.drop_old(sid, None, context::did_of(old_hi), st.ats))?;
        }
        match new {
            Some((lo, hi)) => {
                io.wr(entry + 8, hi)?;
                io.wr(entry, lo)?;
                c.write_buffer_flush()?;
                c.inv.submit(io, &self.after_new(sid, None, h.did))?;
            }
            None => {
                io.wr(entry, 0)?;
                io.wr(entry + 8, 0)?;
            }
        }
        self.record(st, None, h, entry, sid, ats)
    }

    /// Notes an attachment in the device state and the HWPT's users.
    pub(super) fn record(
        &self,
        st: &mut DevState,
        pasid: Option<u32>,
        h: Arc<HwptInner>,
        entry: u64,
        sid: u16,
        ats: bool,
    ) -> Result<(), PluginError> {
        if let Some(old) = st.attached.get(&pasid) {
            old.remove_user(entry);
        }
        st.ats = ats;
        if matches!(h.kind, HwptKind::PAGING | HwptKind::NESTED) {
            let p = if self.core.scalable { Some(pasid.unwrap_or(0)) } else { None };
            h.add_user(User { sid, pasid: p, entry, ats });
        }
        st.attached.insert(pasid, h);
        Ok(())
    }

    pub(super) fn do_detach(&self, dev: &DeviceInfo, pasid: Option<u32>) -> Result<(), PluginError> {
        let c = &self.core;
        let io = &c.io;
        let sid = self.sid_of(dev)?;
        let mut t = self.tables();
        let st = t
            .devices
            .get_mut(&sid)
            .filter(|s| s.attached.contains_key(&pasid))
            .ok_or_else(|| PluginError::not_found(format!("{} has nothing attached there", dev.dev)))?;
        let entry = if c.scalable {
            let p = pasid.unwrap_or(0);
            let e = st.pasid_tables.get(&((p >> 6) as u64)).map(|pt| pt + pasid_entry::offset(p));
            e.ok_or_else(|| PluginError::not_found("PASID table vanished"))?
        } else {
            st.ctx_entry
        };
        let v0 = io.rd(entry)?;
        if v0 & 1 != 0 {
            // 9.3 / 9.6: P first, then the rest; then drop what the unit cached.
            io.wr(entry, 0)?;
            let words = if c.scalable { 8 } else { 2 };
            for i in 1..words {
                io.wr(entry + 8 * i, 0)?;
            }
            let did = st.attached.get(&pasid).map_or(0, |h| h.did);
            let p = c.scalable.then_some(pasid.unwrap_or(0));
            c.write_buffer_flush()?;
            c.inv.submit(io, &self.drop_old(sid, p, did, st.ats))?;
        }
        if let Some(h) = st.attached.remove(&pasid) {
            h.remove_user(entry);
        }
        if st.attached.is_empty() {
            if c.scalable {
                // Last attachment gone: the context entry and the PASID tables go too (9.4).
                io.wr(st.ctx_entry, 0)?;
                c.write_buffer_flush()?;
                c.inv.submit(io, &[self.cc_device(0, sid)])?;
                for (_, pg) in st.pasid_tables.drain() {
                    io.free(pg);
                }
                io.free_n(st.pasid_dir, st.pasid_dir_pages);
            }
            t.devices.remove(&sid);
        }
        Ok(())
    }
}
