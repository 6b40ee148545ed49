//! PASID directories and tables (VT-d spec 9.4-9.6): the scalable-mode context entry that
//! points at a device's PASID directory, and the 512-bit PASID entries of its PASIDs.

use std::sync::Arc;

use ioasis::abi::{DeviceInfo, ErrorCode, HwptKind, PluginError};
use ioasis::pt::Memory;

use super::hwpt::{HwptInner, Table};
use super::unit::{Defect, DevState, Tables, VtdUnit};
use crate::layout::regs::ecap;
use crate::layout::tables::{pasid_dir, pasid_entry, sm_context};

/// The widest PASID (20 bits): a PASID directory (9.5) of 2^14 entries, each leading to a
/// 64-entry PASID table (9.6).
pub(super) const MAX_PASID_BITS: u32 = 20;

/// log2 of the PASID-directory entries for PASIDs of `bits` bits: at least one page (512
/// entries), at most 2^14 (9.4 PDTS = 7).
pub(super) fn pdir_log2(bits: u32) -> u32 {
    bits.saturating_sub(6).clamp(9, 14)
}

/// 4 KiB pages of a PASID directory of 2^`log2` 8-byte entries.
pub(super) fn pdir_pages(log2: u32) -> u32 {
    1 << (log2 - 9)
}

impl VtdUnit {
    /// The 512-bit PASID entry (9.6) for a HWPT, or `None` for blocking.
    pub(super) fn pasid_entry_for(&self, h: &HwptInner) -> Result<Option<[u64; 8]>, PluginError> {
        let c = &self.core;
        let mut e = [0u64; 8];
        match (&h.table, h.kind) {
            (_, HwptKind::BLOCKING) => return Ok(None),
            (_, HwptKind::IDENTITY) => {
                e[0] = pasid_entry::q0(0, c.pt_aw, pasid_entry::PGTT_PT, false);
            }
            (Table::Paging(pt), _) => {
                e[0] = pasid_entry::q0(pt.root, c.aw, pasid_entry::PGTT_SS, h.ssade());
            }
            (Table::Nested { parent, s1_root }, _) => {
                let pt = parent.paging()?;
                e[0] = pasid_entry::q0(pt.root, c.aw, pasid_entry::PGTT_NESTED, parent.ssade());
                e[2] = pasid_entry::q2(*s1_root, pasid_entry::FSPM_4LEVEL);
            }
            _ => return Err(PluginError::invalid("HWPT has no translation")),
        }
        e[1] = h.did as u64 & pasid_entry::DID_MASK;
        Ok(Some(e))
    }

    /// Scalable attach (9.4-9.6): untagged DMA uses RID_PASID 0. A present PASID entry is
    /// replaced the way 6.5.3.3 asks for a 512-bit entry: clear P, invalidate the PASID cache,
    /// the IOTLB and the device-TLB for the old DID, write qwords 1-7, then qword 0 (P). DMA in
    /// that short window faults (PASID entry not present) rather than using a torn entry.
    pub(super) fn attach_scalable(
        &self,
        t: &mut Tables,
        dev: &DeviceInfo,
        sid: u16,
        pasid: Option<u32>,
        h: Arc<HwptInner>,
    ) -> Result<(), PluginError> {
        let c = &self.core;
        let io = &c.io;
        let p = match pasid {
            None => 0,
            Some(p) => {
                let bits = c.pasid_bits().min(u32::from(dev.pasid_bits));
                if c.pasid_bits() == 0 {
                    return Err(PluginError::unsupported("PASID needs scalable mode and ECAP.PASID"));
                }
                if p == 0 {
                    return Err(PluginError::invalid("PASID 0 is the RID_PASID of untagged DMA"));
                }
                if bits == 0 || p >= (1u32 << bits) {
                    return Err(PluginError::new(ErrorCode::OUT_OF_RANGE, format!("PASID {p:#x} beyond {bits} bits")));
                }
                p
            }
        };
        if let Some(shared) = &h.shared_did {
            // 6.2.1: first-stage (and nested) IOTLB entries are tagged by DID and PASID, not by
            // source id. Two different first stages of one vIOMMU (one DID) at the same PASID
            // would use each other's cached translations: refused.
            let clash = t.devices.iter().find_map(|(other, st)| {
                st.attached
                    .iter()
                    .filter(|(q, _)| (*other != sid || **q != pasid) && q.unwrap_or(0) == p)
                    .find(|(_, x)| x.shared_did.as_ref().is_some_and(|d| Arc::ptr_eq(d, shared)) && !Arc::ptr_eq(x, &h))
                    .map(|_| *other)
            });
            if let Some(other) = clash {
                return Err(PluginError::new(
                    ErrorCode::BUSY,
                    format!(
                        "PASID {p:#x} of {:02x}:{:02x}.{} uses another first stage of this vIOMMU (DID {}): the IOTLB tags first-stage translations by DID and PASID only (6.2.1)",
                        other >> 8,
                        (other >> 3) & 0x1f,
                        other & 7,
                        shared.did
                    ),
                ));
            }
        }
        let new = self.pasid_entry_for(&h)?;
        let (bus, devfn) = ((sid >> 8) as u8, sid as u8);
        let half = if c.bug(Defect::UpperContextTableIgnored) { 0 } else { devfn >> 7 };
        let ats = dev.ats && c.has(ecap::DT);
        // Allocate everything first, hook nothing until all allocations succeeded.
        let mut fresh: Vec<(u64, u32)> = Vec::new();
        let alloc = |fresh: &mut Vec<(u64, u32)>, count: u32| -> Result<u64, PluginError> {
            let pg = io.alloc_n(count)?;
            fresh.push((pg, count));
            Ok(pg)
        };
        // The directory covers the PASIDs this device can use.
        let dir_log2 = pdir_log2(c.pasid_bits().min(u32::from(dev.pasid_bits)));
        let pages = (|| -> Result<[Option<u64>; 3], PluginError> {
            let ctx = if t.ctx.contains_key(&(bus, half)) { None } else { Some(alloc(&mut fresh, 1)?) };
            let st = t.devices.get(&sid);
            let pdir = if st.is_some() { None } else { Some(alloc(&mut fresh, pdir_pages(dir_log2))?) };
            let idx = (p >> 6) as u64;
            let ptab =
                if st.is_some_and(|s| s.pasid_tables.contains_key(&idx)) { None } else { Some(alloc(&mut fresh, 1)?) };
            Ok([ctx, pdir, ptab])
        })();
        let [ctx_new, pdir_new, ptab_new] = match pages {
            Ok(x) => x,
            Err(e) => {
                for (pg, count) in fresh {
                    io.free_n(pg, count);
                }
                return Err(e);
            }
        };
        if let Some(ctx) = ctx_new {
            self.hook_ctx_table(t, bus, half, ctx)?;
        }
        let ctx = t.ctx[&(bus, half)];
        let mut batch = Vec::new();
        if let Some(pdir) = pdir_new {
            let entry = ctx + sm_context::offset(devfn);
            let q0 = sm_context::q0(pdir, dir_log2, c.has(ecap::PASID), c.has(ecap::PRS) && dev.pri, ats);
            // 9.4: RID_PASID (qword 1) = 0; qword 0 with P last.
            io.wr(entry + 8, 0)?;
            io.wr(entry + 16, 0)?;
            io.wr(entry + 24, 0)?;
            io.wr(entry, q0)?;
            let pasid_dir_pages = pdir_pages(dir_log2);
            t.devices.insert(
                sid,
                DevState { ctx_entry: entry, pasid_dir: pdir, pasid_dir_pages, ats, ..Default::default() },
            );
            batch.push(self.cc_device(0, sid));
        }
        let st = t.devices.get_mut(&sid).ok_or_else(|| PluginError::not_found("device state vanished"))?;
        let idx = (p >> 6) as u64;
        if let Some(pt) = ptab_new {
            let dir_off =
                if c.bug(Defect::PasidDirIndexOffByOne) { u64::from(p >> 7) * 8 } else { pasid_dir::offset(p) };
            io.wr(st.pasid_dir + dir_off, pasid_dir::entry(pt))?;
            st.pasid_tables.insert(idx, pt);
        }
        let entry = st.pasid_tables[&idx] + pasid_entry::offset(p);
        let old0 = io.rd(entry)?;
        if let Some(e) = &new {
            let same =
                (0..8).try_fold(true, |acc, i| Ok::<_, PluginError>(acc && io.rd(entry + 8 * i)? == e[i as usize]))?;
            if same {
                c.inv.submit(io, &batch)?;
                return self.record(st, pasid, h, entry, sid, ats);
            }
        }
        if old0 & pasid_entry::P != 0 {
            if let (true, Some(e)) = (c.bug(Defect::ReplaceInvalidatesNewDid), &new) {
                io.wr(entry + 8, e[1])?;
            }
            let old_did = (io.rd(entry + 8)? & pasid_entry::DID_MASK) as u16;
            io.wr(entry, old0 & !pasid_entry::P)?;
            c.write_buffer_flush()?;
            c.inv.submit(io, &self.drop_old(sid, Some(p), old_did, st.ats))?;
        }
        match new {
            Some(e) => {
                for i in (1..8).rev() {
                    io.wr(entry + 8 * i as u64, e[i])?;
                }
                io.wr(entry, e[0])?;
                c.write_buffer_flush()?;
                batch.extend(self.after_new(sid, Some(p), h.did));
            }
            None => {
                for i in 0..8u64 {
                    io.wr(entry + 8 * i, 0)?;
                }
            }
        }
        c.inv.submit(io, &batch)?;
        self.record(st, pasid, h, entry, sid, ats)
    }
}
