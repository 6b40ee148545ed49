//! A model of an Intel VT-d remapping unit: what the hardware does with its registers and with
//! the DMA of the devices behind it, as the VT-d specification (rev. 3.x/4.x) describes it.
//!
//! [`VtdModel`] implements [`UnitModel`]. It reads the structures the driver wrote (root and
//! context tables, PASID directories and tables, second- and first-stage paging structures,
//! invalidation descriptors) through the [`PhysMemory`] it is given, caches them like hardware
//! does, records faults in its fault-recording registers, writes page requests into the page
//! request queue and sets A/D bits.
//!
//! Behaviour the spec leaves open, as this model settles it:
//! - With GSTS.TES clear, DMA passes through untranslated (`pa == iova`); nothing is cached
//!   and no fault is possible. Caches are not flushed when TE, SRTP or QIE change.
//! - RTADDR is latched by GCMD.SRTP: translation uses the latched root table and TTM. TTM = 01
//!   without ECAP.SMTS, or TTM = 10/11, blocks every request (fault reason 0x1).
//! - Caches keep stale entries until invalidated (see `cache`): context entries by source id,
//!   PASID entries by source id and PASID, IOTLB entries by DID (+ PASID in scalable mode) and
//!   page. Only valid entries are cached; faults are never cached; CAP.CM is reported as
//!   configured but never acted upon (caching nothing not-present is allowed with CM = 1).
//!   Pass-through translations are not put in the IOTLB.
//! - Fault reasons: root / context entry not present → 0x1 / 0x2 ([`Fault::BLOCKED`]); a
//!   not-present paging entry → 0x5 (write) / 0x6 (read), as VT-d has no separate code for it,
//!   but [`Fault::NOT_PRESENT`] to ioasis; a present entry without the permission → 0x5 / 0x6
//!   ([`Fault::PERMISSION`]); an input beyond the address width (or a non-canonical first-stage
//!   input) → 0x4; unsupported context programming (TT, AW) → 0x3, reserved bits → 0xa / 0xb /
//!   0xc, unreadable structures → 0x7 / 0x8 / 0x9 / 0x50 / 0x58 ([`Fault::BAD_ENTRY`]). A
//!   request with PASID in legacy mode, to a scalable context without PASIDE, or beyond the
//!   PASID width → 0x3 ([`Fault::BAD_PASID`]); a PASID beyond the directory (PDTS) or a
//!   not-present PASID directory / table entry → 0x51 / 0x59 ([`Fault::BAD_PASID`], or
//!   [`Fault::BLOCKED`] for a request without PASID, which uses RID_PASID); an invalid PASID
//!   entry (PGTT unsupported, bad AW or FSPM) → 0x5b ([`Fault::BAD_ENTRY`]). The raw reason of
//!   every fault is in [`VtdModel::faults`].
//! - A fault is recorded unless FPD is set in its context, PASID-directory or PASID entry. The
//!   fault-recording register written is the first free one from the next index (round robin);
//!   with none free, FSTS.PFO is set and the fault dropped. FSTS.FRI names the oldest pending
//!   record. The record's address is the page address (bits 63:12); the returned [`Fault`] has
//!   the full address.
//! - Page requests: with ECAP.PRS, a not-present paging entry met by a request from a scalable
//!   context with PRE becomes a page request descriptor in the page request queue (one page per
//!   group, LPIG set) instead of a fault record. A full queue (or none set up) sets PRS.PRO and
//!   the fault is recorded as an ordinary one.
//! - Register-based invalidation is performed even while QIES is set. An invalidation queue
//!   error (unknown type, reserved bit, unsupported feature, AM above MAMV, unreadable
//!   descriptor or status address) sets FSTS.IQE and leaves IQH at the bad descriptor; while
//!   IQE is set nothing is fetched; clearing it resumes fetching.
//! - Completion latency ([`VtdModelConfig::latency`] N > 0): nothing completes at the write
//!   that starts it. A GCMD command shows in GSTS, a CCMD / IOTLB_REG invalidation takes effect
//!   and clears ICC / IVT, at the N-th register read after the write. The invalidation queue
//!   runs one batch per N reads: the descriptors from IQH up to and including the next wait
//!   descriptor (or IQT), the cache invalidations among them in reverse order (6.5.2: only a
//!   wait descriptor orders them), then the others (page group responses, the wait and its
//!   status write) in order; IQH moves past the batch. DMA does not advance anything: a driver
//!   that does not wait for completion translates through stale caches.
//! - Registers are accessed at their offset with width 4 or 8; a 4-byte access reaches either
//!   half of a 64-bit register. Writes to read-only registers are ignored; unknown offsets are
//!   [`HostError::BAD_REGISTER`].

mod cache;
mod config;
mod faults;
mod qi;
mod regs;
mod walk;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use ioasis::abi::{Fault, HostError};
use ioasis::platform::{DmaRequest, DmaTarget, GuestMapping, GuestStage1, ModelQueryError, PhysMemory, UnitModel};
use ioasis::{DeviceRef, Iova, Pasid, PhysAddr, Prot, PtFormat};

use crate::layout::fault::{reason, reason_more, reason_sm};
use crate::layout::regs::{cap, ecap, gcmd, rtaddr};
use crate::layout::tables::{context, pasid_dir, pasid_entry, root, sm_context, sm_root, ADDR, AGAWS};

pub use cache::CacheStats;
use cache::{Caches, CtxEntry, IotlbEntry, PasidEntry, Stage};
pub use config::{ConfigError, VtdModelConfig};
pub use faults::FaultDetail;
use regs::Regs;
use walk::{Failure, FsTable, Leaf, SsTable};

/// Size of the register window.
pub const WINDOW: u64 = 0x1000;

/// A page group response the driver sent (invalidation descriptor type 0x9, VT-d spec
/// 6.5.2.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageResponseRecord {
    /// Requester id (qword 0 bits 31:16).
    pub rid: u16,
    /// PASID (qword 0 bits 51:32), when PASID present (bit 4) is set.
    pub pasid: Option<u32>,
    /// Page request group index (qword 1 bits 11:3).
    pub group: u32,
    /// Response code (qword 0 bits 15:12).
    pub code: u32,
    /// Last page in group (qword 1 bit 2).
    pub last: bool,
}

/// Most entries of the fault log kept for [`VtdModel::faults`].
const FAULT_LOG: usize = 1024;

/// Everything behind the one lock.
#[derive(Debug)]
struct State {
    regs: Regs,
    caches: Caches,
    responses: Vec<PageResponseRecord>,
    log: VecDeque<FaultDetail>,
    next_group: u32,
}

/// A model of one Intel VT-d remapping unit (see the module documentation).
#[derive(Debug)]
pub struct VtdModel {
    cfg: VtdModelConfig,
    state: Mutex<State>,
}

/// Locks a mutex; every critical section leaves its data consistent, so a poisoned lock is
/// still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A failed translation with what the fault handling needs.
#[derive(Clone, Copy, Debug)]
struct Miss {
    fail: Failure,
    /// Fault processing disabled (FPD in a context, PASID-directory or PASID entry).
    fpd: bool,
    /// The scalable context entry has PRE (page requests allowed).
    pre: bool,
}

impl From<Failure> for Miss {
    fn from(fail: Failure) -> Self {
        Self { fail, fpd: false, pre: false }
    }
}

/// How a request is translated, once the context (and PASID) entries are read.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Untranslated.
    PassThrough,
    /// Second stage only.
    Second(SsTable),
    /// First stage only.
    First(FsTable),
    /// First stage through second stage.
    Nested(FsTable, SsTable),
}

/// The result of reading the context (and PASID) structures.
#[derive(Clone, Copy, Debug)]
struct Resolved {
    mode: Mode,
    did: u16,
    /// IOTLB PASID tag (scalable mode).
    tag: Option<u32>,
    fpd: bool,
    pre: bool,
}

const fn fail(vtd: u8, kind: u32) -> Failure {
    Failure::new(vtd, kind)
}

/// Reads a structure word; `vtd` is the reason when memory refuses.
fn read(mem: &dyn PhysMemory, pa: Option<u64>, vtd: u8) -> Result<u64, Failure> {
    let pa = pa.ok_or(fail(vtd, Fault::BAD_ENTRY))?;
    mem.read_u64(PhysAddr(pa)).map_err(|_| fail(vtd, Fault::BAD_ENTRY))
}

/// An untranslated access: `pa == iova`, up to the next 1 GiB boundary.
fn passthrough(iova: u64) -> DmaTarget {
    let span = 1u64 << 30;
    DmaTarget { pa: PhysAddr(iova), remaining: span - (iova & (span - 1)) }
}

/// The target of `iova` in a cached page.
fn target(e: &IotlbEntry, iova: u64) -> DmaTarget {
    let off = iova & (e.size - 1);
    DmaTarget { pa: PhysAddr(e.pa | off), remaining: e.size - off }
}

/// Whether an IOTLB entry of `mode` may be cached: a nested entry only when its page lies
/// within the second stage's address width (3.7.1), since the IOTLB lookup checks first-stage
/// inputs only. Second-stage and first-stage inputs are checked before every lookup.
fn cacheable(mode: &Mode, e: &IotlbEntry) -> bool {
    match mode {
        Mode::Nested(_, ss) => ss.width >= 64 || e.size <= 1 << ss.width,
        _ => true,
    }
}

/// The permission fault of a translation for `access`, if any. A nested one names its stage
/// (Appendix A): the first stage's as SGN.5 / SGN.6, the second stage's as SSS.2, the host's.
fn entry_permission(e: &IotlbEntry, nested: bool, access: Prot) -> Result<(), Failure> {
    if !nested {
        return permission(e.prot, access);
    }
    if access.write() && !e.s1_prot.write() {
        return Err(fail(reason_sm::NO_WRITE, Fault::PERMISSION));
    }
    if access.read() && !e.s1_prot.read() {
        return Err(fail(reason_sm::NO_READ, Fault::PERMISSION));
    }
    // SSS.2 does not say whether the entry was absent or read-only (9.8: R = W = 0 is
    // not-present); the driver cannot tell from the record either, so both call it not-present.
    permission(e.prot, access).map_err(|_| fail(reason_sm::SS_PERMISSION, Fault::NOT_PRESENT | Fault::IN_PARENT))
}

/// A first-stage failure of nested translation in scalable-mode terms (Appendix A): not
/// present SFS.2, reserved SFS.3, unreadable SFS.1, non-canonical SGN.1, an unusable FSPM in
/// the guest's PASID-entry fields SPT.4 as a bad configuration. Failures of the second stage
/// (already converted) pass.
fn nested_fs_failure(f: Failure) -> Failure {
    match f.vtd {
        reason::NO_READ | reason::NO_WRITE => fail(reason_sm::FS_NOT_PRESENT, Fault::NOT_PRESENT),
        reason::PAGING_RESERVED => fail(reason_sm::FS_RESERVED, Fault::BAD_ENTRY),
        reason::PAGING_ENTRY_ERROR => fail(reason_sm::FS_ENTRY_ERROR, Fault::BAD_ENTRY),
        reason::ADDRESS_BEYOND_AW => fail(reason_sm::NOT_CANONICAL, Fault::ADDRESS_SIZE),
        reason::PASID_ENTRY_INVALID => fail(reason::PASID_ENTRY_INVALID, Fault::BAD_CONFIG),
        _ => f,
    }
}

/// A second-stage failure of nested translation in scalable-mode terms (Appendix A), the
/// host's (IN_PARENT) except an address beyond the second stage's width, which the guest's
/// first stage produced (SFS.5; SFS.4, a bad first-stage pointer, for the root). `denied` is
/// the reason of an entry that denies the access (SFS.6-8 for first-stage structures, SSS.2
/// for the output).
fn nested_ss_failure(f: Failure, denied: u8, root: bool) -> Failure {
    let host = |vtd: u8, kind: u32| fail(vtd, kind | Fault::IN_PARENT);
    match f.vtd {
        reason::ADDRESS_BEYOND_AW if root => fail(reason_sm::FSPTPTR_INVALID, Fault::BAD_CONFIG),
        reason::ADDRESS_BEYOND_AW => fail(reason_sm::FS_ADDRESS_BEYOND, Fault::ADDRESS_SIZE),
        reason::NO_READ | reason::NO_WRITE => host(denied, Fault::NOT_PRESENT),
        reason::PAGING_RESERVED => host(reason_sm::SS_RESERVED, Fault::BAD_ENTRY),
        reason::CONTEXT_INVALID => host(reason_sm::SSPTPTR_INVALID, Fault::BAD_ENTRY),
        _ => host(reason_sm::SS_ENTRY_ERROR, Fault::BAD_ENTRY),
    }
}

/// The permission fault for `access` against `prot`, if any.
fn permission(prot: Prot, access: Prot) -> Result<(), Failure> {
    if access.write() && !prot.write() {
        return Err(fail(reason::NO_WRITE, Fault::PERMISSION));
    }
    if access.read() && !prot.read() {
        return Err(fail(reason::NO_READ, Fault::PERMISSION));
    }
    Ok(())
}

impl VtdModel {
    /// A unit with these capability registers, in its reset state.
    pub fn new(cfg: VtdModelConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let state = State {
            regs: Regs::new(cfg.nfr()),
            caches: Caches::new(cfg.cache_entries),
            responses: Vec::new(),
            log: VecDeque::new(),
            next_group: 0,
        };
        Ok(Self { cfg, state: Mutex::new(state) })
    }

    /// The capability registers.
    pub fn config(&self) -> VtdModelConfig {
        self.cfg
    }

    /// Page group responses received so far, oldest first (the first 4096 are kept).
    pub fn page_responses(&self) -> Vec<PageResponseRecord> {
        lock(&self.state).responses.clone()
    }

    /// The faults of the most recent translations (at most 1024), oldest first, each with its
    /// raw VT-d reason.
    pub fn faults(&self) -> Vec<FaultDetail> {
        lock(&self.state).log.iter().copied().collect()
    }

    /// Sizes and hit counts of the caches.
    pub fn cache_stats(&self) -> CacheStats {
        lock(&self.state).caches.stats()
    }

    /// Width of an AW / SAGAW value: (levels, bits), when the unit supports it.
    fn agaw(&self, aw: u64) -> Option<(u32, u32)> {
        let sagaw = cap::sagaw(self.cfg.cap);
        AGAWS
            .iter()
            .find(|&&(v, ..)| v == aw && sagaw & (1 << v) != 0)
            .map(|&(_, levels, bits)| (levels, bits.min(cap::mgaw(self.cfg.cap))))
    }

    /// Reads the context entry of `sid`: legacy (9.1, 9.3) or scalable (9.2, 9.4).
    fn context_entry(
        &self,
        st: &mut State,
        mem: &dyn PhysMemory,
        sid: u16,
        scalable: bool,
    ) -> Result<CtxEntry, Failure> {
        if let Some(e) = st.caches.context(sid, scalable) {
            return Ok(e);
        }
        let e = Self::read_context(mem, st.regs.root & ADDR, sid, scalable)?;
        st.caches.insert_context(sid, e);
        Ok(e)
    }

    /// Reads the context entry of `sid` from memory (no cache), in the root table at `rt`.
    fn read_context(mem: &dyn PhysMemory, rt: u64, sid: u16, scalable: bool) -> Result<CtxEntry, Failure> {
        let (bus, devfn) = ((sid >> 8) as u8, sid as u8);
        let re_at = rt.checked_add(root::offset(bus));
        let e = if scalable {
            // 9.2: the lower context table serves devfn 0-127, the upper one 128-255.
            let half = if devfn >= 128 { 8 } else { 0 };
            let re = read(mem, re_at.and_then(|a| a.checked_add(half)), reason_more::ROOT_ENTRY_ERROR)?;
            if re & sm_root::P == 0 {
                return Err(fail(reason::ROOT_NOT_PRESENT, Fault::BLOCKED));
            }
            let at = (re & ADDR).checked_add(sm_context::offset(devfn));
            let lo = read(mem, at, reason_more::CONTEXT_ENTRY_ERROR)?;
            if lo & sm_context::P == 0 {
                return Err(fail(reason::CONTEXT_NOT_PRESENT, Fault::BLOCKED));
            }
            let hi = read(mem, at.and_then(|a| a.checked_add(8)), reason_more::CONTEXT_ENTRY_ERROR)?;
            CtxEntry { scalable, lo, hi }
        } else {
            let re = read(mem, re_at, reason_more::ROOT_ENTRY_ERROR)?;
            if re & root::P == 0 {
                return Err(fail(reason::ROOT_NOT_PRESENT, Fault::BLOCKED));
            }
            // 9.1: lower qword bits 11:1 are reserved.
            if re & 0xffe != 0 {
                return Err(fail(reason_more::ROOT_RESERVED, Fault::BAD_ENTRY));
            }
            let at = (re & ADDR).checked_add(context::offset(devfn));
            let lo = read(mem, at, reason_more::CONTEXT_ENTRY_ERROR)?;
            if lo & context::P == 0 {
                return Err(fail(reason::CONTEXT_NOT_PRESENT, Fault::BLOCKED));
            }
            let hi = read(mem, at.and_then(|a| a.checked_add(8)), reason_more::CONTEXT_ENTRY_ERROR)?;
            // 9.3: lower qword bits 11:4, upper qword bit 7 and bits 63:24 are reserved.
            if lo & 0xff0 != 0 || hi & 0xffff_ffff_ff00_0080 != 0 {
                return Err(fail(reason::CONTEXT_RESERVED, Fault::BAD_ENTRY));
            }
            CtxEntry { scalable, lo, hi }
        };
        Ok(e)
    }

    /// Legacy-mode translation setup (3.4.3, 9.3).
    fn resolve_legacy(
        &self,
        st: &mut State,
        mem: &dyn PhysMemory,
        sid: u16,
        req: &DmaRequest,
    ) -> Result<Resolved, Miss> {
        if req.pasid.is_some() {
            return Err(fail(reason::CONTEXT_INVALID, Fault::BAD_PASID).into());
        }
        let ce = self.context_entry(st, mem, sid, false)?;
        let fpd = ce.lo & context::FPD != 0;
        let miss = |f: Failure| Miss { fail: f, fpd, pre: false };
        let invalid = miss(fail(reason::CONTEXT_INVALID, Fault::BAD_ENTRY));
        let did = context::did_of(ce.hi);
        let mode = match ce.lo & context::TT_MASK {
            // 9.3: with TT = 10b, AW still names an address width the unit supports (SAGAW).
            context::TT_PT if self.cfg.has_ecap(ecap::PT) => {
                self.agaw(ce.hi & context::AW_MASK).ok_or(invalid)?;
                Mode::PassThrough
            }
            context::TT_SL => self.legacy_ss(&ce).ok_or(invalid)?,
            context::TT_SL_DT if self.cfg.has_ecap(ecap::DT) => self.legacy_ss(&ce).ok_or(invalid)?,
            _ => return Err(invalid),
        };
        Ok(Resolved { mode, did, tag: None, fpd, pre: false })
    }

    fn legacy_ss(&self, ce: &CtxEntry) -> Option<Mode> {
        let (levels, width) = self.agaw(ce.hi & context::AW_MASK)?;
        let sllps = cap::sllps(self.cfg.cap);
        Some(Mode::Second(SsTable { root: ce.lo & ADDR, levels, width, ad: false, sllps }))
    }

    /// Scalable-mode translation setup (3.4.4, 9.4-9.6).
    fn resolve_scalable(
        &self,
        st: &mut State,
        mem: &dyn PhysMemory,
        sid: u16,
        req: &DmaRequest,
    ) -> Result<Resolved, Miss> {
        let ce = self.context_entry(st, mem, sid, true)?;
        let mut fpd = ce.lo & sm_context::FPD != 0;
        let pre = ce.lo & sm_context::PRE != 0;
        let pss = ecap::pss(self.cfg.ecap);
        let pasid = match req.pasid {
            Some(p) => {
                let ok =
                    self.cfg.has_ecap(ecap::PASID) && ce.lo & sm_context::PASIDE != 0 && u64::from(p.0) >> pss == 0;
                if !ok {
                    return Err(Miss { fail: fail(reason::CONTEXT_INVALID, Fault::BAD_PASID), fpd, pre });
                }
                p.0
            }
            None => (ce.hi & sm_context::RID_PASID_MASK) as u32,
        };
        let absent = if req.pasid.is_some() { Fault::BAD_PASID } else { Fault::BLOCKED };
        let pe = match st.caches.pasid(sid, pasid) {
            Some(pe) => pe,
            None => {
                let miss = |f: Failure, fpd: bool| Miss { fail: f, fpd, pre };
                let (pe, dir_fpd) =
                    Self::read_pasid_entry(mem, &ce, pasid, absent).map_err(|(f, d)| miss(f, fpd || d))?;
                fpd |= dir_fpd;
                let q = pe.q;
                if q[0] & pasid_entry::P == 0 {
                    return Err(miss(fail(reason::PASID_NOT_PRESENT, absent), fpd || q[0] & pasid_entry::FPD != 0));
                }
                self.pasid_mode(&pe).map_err(|f| miss(f, fpd || q[0] & pasid_entry::FPD != 0))?;
                st.caches.insert_pasid(sid, pasid, pe);
                pe
            }
        };
        fpd |= pe.q[0] & pasid_entry::FPD != 0;
        let mode = self.pasid_mode(&pe).map_err(|f| Miss { fail: f, fpd, pre })?;
        Ok(Resolved { mode, did: pe.did(), tag: Some(pasid), fpd, pre })
    }

    /// Reads the PASID-table entry of `pasid` under scalable context entry `ce` from memory, no
    /// cache (9.4 PDTS, 9.5 directory entry, 9.6 table entry, its first four qwords): the entry,
    /// present or not, and the directory entry's FPD. A PASID beyond the directory or a
    /// not-present directory entry fails with reason 0x51 of class `absent`, an unreadable
    /// structure with 0x50 / 0x58; the error carries the FPD seen so far.
    fn read_pasid_entry(
        mem: &dyn PhysMemory,
        ce: &CtxEntry,
        pasid: u32,
        absent: u32,
    ) -> Result<(PasidEntry, bool), (Failure, bool)> {
        if u64::from(pasid >> 6) >= sm_context::pdir_entries(ce.lo) {
            return Err((fail(reason::PASID_DIR_NOT_PRESENT, absent), false));
        }
        let de_at = (ce.lo & ADDR).checked_add(pasid_dir::offset(pasid));
        let de = read(mem, de_at, reason_more::PASID_DIR_ERROR).map_err(|f| (f, false))?;
        let fpd = de & pasid_dir::FPD != 0;
        if de & pasid_dir::P == 0 {
            return Err((fail(reason::PASID_DIR_NOT_PRESENT, absent), fpd));
        }
        let at = (de & ADDR).checked_add(pasid_entry::offset(pasid));
        let mut q = [0u64; 4];
        for (i, w) in q.iter_mut().enumerate() {
            let a = at.and_then(|a| a.checked_add(i as u64 * 8));
            *w = read(mem, a, reason_more::PASID_TABLE_ERROR).map_err(|f| (f, fpd))?;
        }
        Ok((PasidEntry { q }, fpd))
    }

    /// The translation a PASID-table entry (9.6) asks for, if the unit supports it.
    fn pasid_mode(&self, pe: &PasidEntry) -> Result<Mode, Failure> {
        let invalid = fail(reason::PASID_ENTRY_INVALID, Fault::BAD_ENTRY);
        let [q0, _, q2, _] = pe.q;
        let ss = || -> Result<SsTable, Failure> {
            if !self.cfg.has_ecap(ecap::SSTS) {
                return Err(invalid);
            }
            let (levels, width) = self.agaw((q0 >> 2) & 7).ok_or(invalid)?;
            let ad = q0 & pasid_entry::SSADE != 0 && self.cfg.has_ecap(ecap::SSADS);
            Ok(SsTable { root: q0 & ADDR, levels, width, ad, sllps: cap::sllps(self.cfg.cap) })
        };
        let fs = || -> Result<FsTable, Failure> {
            if !self.cfg.has_ecap(ecap::FSTS) {
                return Err(invalid);
            }
            let levels = match q2 & (3 << 2) {
                pasid_entry::FSPM_4LEVEL => 4,
                pasid_entry::FSPM_5LEVEL if self.cfg.has_cap(cap::FS5LP) => 5,
                _ => return Err(invalid),
            };
            Ok(FsTable { root: q2 & ADDR, levels, gp1: self.cfg.has_cap(cap::FS1GP) })
        };
        match q0 & pasid_entry::PGTT_MASK {
            pasid_entry::PGTT_SS => Ok(Mode::Second(ss()?)),
            pasid_entry::PGTT_FS => Ok(Mode::First(fs()?)),
            // In a nested entry the first-stage fields (FSPTPTR, FSPM) are the guest's: an
            // unusable one is a bad guest configuration (SPT.4).
            pasid_entry::PGTT_NESTED if self.cfg.has_ecap(ecap::NEST) => {
                let fs = fs().map_err(|f| Failure::new(f.vtd, Fault::BAD_CONFIG))?;
                Ok(Mode::Nested(fs, ss()?))
            }
            // 9.6: pass-through keeps an AW the unit supports, as the context entry does.
            pasid_entry::PGTT_PT if self.cfg.has_ecap(ecap::PT) => {
                self.agaw((q0 >> 2) & 7).ok_or(invalid)?;
                Ok(Mode::PassThrough)
            }
            _ => Err(invalid),
        }
    }

    /// Walks the paging structures of `mode` for `iova`.
    fn walk(&self, mem: &dyn PhysMemory, mode: &Mode, iova: u64, access: Prot) -> Result<IotlbEntry, Failure> {
        let entry = |l: Leaf, stage| IotlbEntry {
            pa: l.base,
            size: l.size,
            prot: l.prot,
            dirty_done: l.dirty_done,
            stage,
            s1_prot: l.prot,
        };
        match mode {
            Mode::PassThrough => Err(fail(reason::CONTEXT_INVALID, Fault::BAD_ENTRY)),
            Mode::Second(ss) => Ok(entry(walk::walk_ss(mem, ss, iova, access)?, Stage::Second)),
            Mode::First(fs) => Ok(entry(walk::walk_fs(mem, fs, iova, access, &mut |a, _| Ok(a))?, Stage::First)),
            Mode::Nested(fs, ss) => {
                // 3.8: every first-stage structure is accessed at its second-stage translation:
                // read to fetch an entry, written to set its A/D flags (which, with SSADE, sets
                // the second-stage D of the guest page holding it, 3.7.2).
                // Failures carry the scalable-mode reasons of Appendix A: SFS for the first
                // stage, and for the second stage's translation of first-stage structures
                // (SFS.5-8); SSS for the second stage's translation of the output.
                let mut root = true;
                let mut through = |gpa: u64, how: Prot| {
                    let top = std::mem::replace(&mut root, false) && how == Prot::READ;
                    let fs_access = if how.write() {
                        reason_sm::SS_NO_WRITE_FS_ENTRY
                    } else if top {
                        reason_sm::SS_NO_READ_FS_ROOT
                    } else {
                        reason_sm::SS_NO_READ_FS_ENTRY
                    };
                    let l = walk::walk_ss(mem, ss, gpa, how).map_err(|f| nested_ss_failure(f, fs_access, top))?;
                    if permission(l.prot, how).is_err() {
                        return Err(fail(fs_access, Fault::NOT_PRESENT | Fault::IN_PARENT));
                    }
                    Ok(l.output(gpa))
                };
                let l1 = walk::walk_fs(mem, fs, iova, access, &mut through).map_err(nested_fs_failure)?;
                let gpa = l1.output(iova);
                let l2 = walk::walk_ss(mem, ss, gpa, access)
                    .map_err(|f| nested_ss_failure(f, reason_sm::SS_PERMISSION, false))?;
                let mut size = l1.size.min(l2.size);
                // 3.7.1: the entry must not cover second-stage inputs beyond the address width
                // (an MGAW below the page size's shift): the largest page that fits, at least
                // 4 KiB (`cacheable` keeps a 4 KiB page that does not fit out of the IOTLB).
                while size > 0x1000 && ss.width < 64 && size > 1 << ss.width {
                    size >>= 9;
                }
                Ok(IotlbEntry {
                    pa: l2.output(gpa) & !(size - 1),
                    size,
                    prot: Prot(l1.prot.0 & l2.prot.0),
                    dirty_done: l1.dirty_done && l2.dirty_done,
                    stage: Stage::Nested,
                    s1_prot: l1.prot,
                })
            }
        }
    }

    /// Translation with GSTS.TES set.
    fn translate_enabled(&self, st: &mut State, mem: &dyn PhysMemory, req: &DmaRequest) -> Result<DmaTarget, Miss> {
        let sid = match req.dev {
            DeviceRef::Rid(r) => r.source_id(),
            DeviceRef::Sid(s) => u16::try_from(s).map_err(|_| fail(reason::ROOT_NOT_PRESENT, Fault::BLOCKED))?,
        };
        let iova = req.iova.raw();
        let ttm = st.regs.root & rtaddr::TTM_MASK;
        let r = match ttm {
            rtaddr::TTM_LEGACY => self.resolve_legacy(st, mem, sid, req)?,
            rtaddr::TTM_SCALABLE if self.cfg.has_ecap(ecap::SMTS) => self.resolve_scalable(st, mem, sid, req)?,
            _ => return Err(fail(reason::ROOT_NOT_PRESENT, Fault::BLOCKED).into()),
        };
        let miss = |f: Failure| Miss { fail: f, fpd: r.fpd, pre: r.pre };
        if let Mode::PassThrough = r.mode {
            return Ok(passthrough(iova));
        }
        // The input checks come first: an IOTLB entry for a page that straddles the address
        // width (MGAW below the page size's shift) must not answer for inputs beyond it.
        match &r.mode {
            Mode::Second(ss) => walk::check_ss_input(ss, iova).map_err(miss)?,
            Mode::First(fs) => walk::check_fs_input(fs, iova).map_err(miss)?,
            Mode::Nested(fs, _) => walk::check_fs_input(fs, iova).map_err(|f| miss(nested_fs_failure(f)))?,
            Mode::PassThrough => {}
        }
        let nested = matches!(r.mode, Mode::Nested(..));
        if let Some(e) = st.caches.iotlb_lookup(r.did, r.tag, iova) {
            entry_permission(&e, nested, req.access).map_err(miss)?;
            if e.dirty_done || !req.access.write() {
                st.caches.count_hit();
                return Ok(target(&e, iova));
            }
        }
        st.caches.count_walk();
        let e = self.walk(mem, &r.mode, iova, req.access).map_err(miss)?;
        if cacheable(&r.mode, &e) {
            st.caches.iotlb_insert(r.did, r.tag, iova, e);
        }
        entry_permission(&e, nested, req.access).map_err(miss)?;
        Ok(target(&e, iova))
    }
}

/// Why a legacy-mode context with a second-level table has nothing to nest.
const LEGACY_SECOND_STAGE: &str = "legacy mode (RTADDR.TTM = 00) has second-stage tables only, no stage-1 to nest";

/// A failed context lookup as a [`ModelQueryError`].
fn query_error(f: Failure) -> ModelQueryError {
    if f.kind == Fault::BLOCKED {
        ModelQueryError::Blocked
    } else {
        ModelQueryError::BadEntry { addr: 0 }
    }
}

impl VtdModel {
    /// The second-stage table a request of `sid` without PASID is translated through, read
    /// from memory (no cache): legacy mode only (3.4.3, 9.1, 9.3).
    fn query_table(&self, mem: &dyn PhysMemory, sid: u16) -> Result<SsTable, ModelQueryError> {
        let (root, gsts) = {
            let st = lock(&self.state);
            (st.regs.root, st.regs.gsts)
        };
        if gsts & gcmd::TE == 0 {
            // Untranslated: pa == iova, no leaves to enumerate.
            return Err(ModelQueryError::Unsupported);
        }
        match root & rtaddr::TTM_MASK {
            rtaddr::TTM_LEGACY => {}
            rtaddr::TTM_SCALABLE if self.cfg.has_ecap(ecap::SMTS) => return Err(ModelQueryError::Unsupported),
            _ => return Err(ModelQueryError::Blocked),
        }
        let ce = Self::read_context(mem, root & ADDR, sid, false).map_err(query_error)?;
        match ce.lo & context::TT_MASK {
            context::TT_PT if self.cfg.has_ecap(ecap::PT) => Err(ModelQueryError::Unsupported),
            context::TT_SL => self.legacy_table(&ce),
            context::TT_SL_DT if self.cfg.has_ecap(ecap::DT) => self.legacy_table(&ce),
            _ => Err(ModelQueryError::BadEntry { addr: ce.lo & ADDR }),
        }
    }

    fn legacy_table(&self, ce: &CtxEntry) -> Result<SsTable, ModelQueryError> {
        match self.legacy_ss(ce) {
            Some(Mode::Second(t)) => Ok(t),
            _ => Err(ModelQueryError::BadEntry { addr: ce.lo & ADDR }),
        }
    }

    /// Why legacy mode (3.4.3, 9.3) gives no stage-1 for `sid`: its pass-through contexts are
    /// untranslated, its other contexts have second-stage tables only.
    fn query_legacy_stage1(&self, mem: &dyn PhysMemory, rt: u64, sid: u16, pasid: Option<Pasid>) -> ModelQueryError {
        let ce = match Self::read_context(mem, rt, sid, false) {
            Ok(ce) => ce,
            Err(f) => return query_error(f),
        };
        if pasid.is_some() {
            // 3.4.3: legacy mode has no requests with PASID (they fault, reason 0x3).
            return ModelQueryError::Blocked;
        }
        match ce.lo & context::TT_MASK {
            context::TT_PT if self.cfg.has_ecap(ecap::PT) => ModelQueryError::Untranslated,
            context::TT_SL => ModelQueryError::UnsupportedMode { reason: LEGACY_SECOND_STAGE },
            context::TT_SL_DT if self.cfg.has_ecap(ecap::DT) => {
                ModelQueryError::UnsupportedMode { reason: LEGACY_SECOND_STAGE }
            }
            _ => ModelQueryError::BadEntry { addr: ce.lo & ADDR },
        }
    }

    /// The first-stage table a request of `sid` (with `pasid`, or untagged through the context
    /// entry's RID_PASID) is translated through, read from memory, not the caches (3.4.4;
    /// scalable root 9.2, context 9.4, PASID directory 9.5 and PASID entry 9.6).
    fn query_stage1(
        &self,
        mem: &dyn PhysMemory,
        sid: u16,
        pasid: Option<Pasid>,
    ) -> Result<GuestStage1, ModelQueryError> {
        let (root, gsts) = {
            let st = lock(&self.state);
            (st.regs.root, st.regs.gsts)
        };
        if gsts & gcmd::TE == 0 {
            return Err(ModelQueryError::Untranslated);
        }
        match root & rtaddr::TTM_MASK {
            rtaddr::TTM_SCALABLE if self.cfg.has_ecap(ecap::SMTS) => {}
            rtaddr::TTM_LEGACY => return Err(self.query_legacy_stage1(mem, root & ADDR, sid, pasid)),
            // TTM = 01 without ECAP.SMTS, or 10/11: every request is blocked.
            _ => return Err(ModelQueryError::Blocked),
        }
        let ce = Self::read_context(mem, root & ADDR, sid, true).map_err(query_error)?;
        let pasid = match pasid {
            Some(p) => {
                // 9.4: requests with PASID need ECAP.PASID, PASIDE and a PASID within ECAP.PSS.
                let pss = ecap::pss(self.cfg.ecap);
                let ok =
                    self.cfg.has_ecap(ecap::PASID) && ce.lo & sm_context::PASIDE != 0 && u64::from(p.0) >> pss == 0;
                if !ok {
                    return Err(ModelQueryError::Blocked);
                }
                p.0
            }
            None => (ce.hi & sm_context::RID_PASID_MASK) as u32,
        };
        let (pe, _) = Self::read_pasid_entry(mem, &ce, pasid, Fault::BLOCKED).map_err(|(f, _)| query_error(f))?;
        if pe.q[0] & pasid_entry::P == 0 {
            return Err(ModelQueryError::Blocked);
        }
        // An entry translate would fault on (PGTT or FSPM the unit lacks, a bad AW): 0x5b.
        let mode = self.pasid_mode(&pe).map_err(|_| ModelQueryError::BadEntry { addr: 0 })?;
        match mode {
            // 9.6 FSPM = 00, 4-level: what the x86-64 stage-1 format of a nested HWPT is.
            Mode::First(fs) if fs.levels == 4 => {
                Ok(GuestStage1 { format: PtFormat::X86_64, root: PhysAddr(fs.root), words: Vec::new() })
            }
            Mode::First(_) => Err(ModelQueryError::UnsupportedMode {
                reason: "5-level first-stage paging (PASID entry FSPM = 01): the x86-64 stage-1 format nests 4-level tables only",
            }),
            Mode::Second(_) => Err(ModelQueryError::UnsupportedMode {
                reason: "second-stage only translation (PASID entry PGTT = 010) has no stage-1 to nest",
            }),
            Mode::Nested(..) => Err(ModelQueryError::UnsupportedMode {
                reason: "nested translation in the guest (PASID entry PGTT = 011): its stage-1 outputs are not guest-physical",
            }),
            Mode::PassThrough => Err(ModelQueryError::Untranslated),
        }
    }
}

impl UnitModel for VtdModel {
    fn mmio_read(&self, mem: &dyn PhysMemory, offset: u64, width: u8) -> Result<u64, HostError> {
        let mut st = lock(&self.state);
        if self.cfg.latency > 0 {
            self.tick(&mut st, mem);
        }
        self.read_reg(&st, offset, width).ok_or(HostError::new(HostError::BAD_REGISTER, offset))
    }

    fn mmio_write(&self, mem: &dyn PhysMemory, offset: u64, width: u8, value: u64) -> Result<(), HostError> {
        let mut st = lock(&self.state);
        self.write_reg(&mut st, mem, offset, width, value).ok_or(HostError::new(HostError::BAD_REGISTER, offset))
    }

    fn translate(&self, mem: &dyn PhysMemory, req: &DmaRequest) -> Result<DmaTarget, Fault> {
        let mut st = lock(&self.state);
        if st.regs.gsts & gcmd::TE == 0 {
            return Ok(passthrough(req.iova.raw()));
        }
        self.translate_enabled(&mut st, mem, req).map_err(|m| self.report(&mut st, mem, req, m))
    }

    /// Legacy mode (RTADDR.TTM = 00): the leaves of the device's second-level table (root entry
    /// 9.1 → context entry 9.3 → second-level entries 9.8), read from memory, not the caches, and
    /// without setting A/D bits. A request with PASID, or a device the root / context tables do
    /// not cover, is [`ModelQueryError::Blocked`]; translation disabled, pass-through contexts and
    /// scalable mode are [`ModelQueryError::Unsupported`].
    fn guest_mappings(
        &self,
        mem: &dyn PhysMemory,
        dev: DeviceRef,
        pasid: Option<Pasid>,
        limit: usize,
    ) -> Result<Vec<GuestMapping>, ModelQueryError> {
        let sid = match dev {
            DeviceRef::Rid(r) => r.source_id(),
            DeviceRef::Sid(s) => u16::try_from(s).map_err(|_| ModelQueryError::Blocked)?,
        };
        let t = self.query_table(mem, sid)?;
        if pasid.is_some() {
            // 3.4.3: legacy mode has no requests with PASID (they fault, reason 0x3).
            return Err(ModelQueryError::Blocked);
        }
        let leaves = walk::leaves_ss(mem, &t, limit).map_err(|_| ModelQueryError::TooMany { limit })?;
        Ok(leaves
            .into_iter()
            .map(|(iova, l)| GuestMapping { iova: Iova(iova), addr: PhysAddr(l.base), len: l.size, prot: l.prot })
            .collect())
    }

    /// [`PtFormat::X86_64`] when the unit has scalable mode with first-stage tables
    /// (ECAP.SMTS and ECAP.FSTS, 11.4.3).
    fn guest_stage1_format(&self) -> Option<PtFormat> {
        (self.cfg.has_ecap(ecap::SMTS) && self.cfg.has_ecap(ecap::FSTS)).then_some(PtFormat::X86_64)
    }

    /// Scalable mode (RTADDR.TTM = 01) only: the device's PASID entry (9.6; untagged requests
    /// use the context entry's RID_PASID) with PGTT = 001, first-stage only, and FSPM = 00
    /// (4-level) gives an x86-64 stage-1 rooted at the entry's first-stage pointer (qword 2
    /// bits 63:12), with no words. Read from memory, not the caches, without side effects.
    ///
    /// Translation disabled and pass-through (a legacy context with TT = 10, or PGTT = 100) are
    /// [`ModelQueryError::Untranslated`]; a not-present root, context, PASID-directory or PASID
    /// entry, a PASID beyond the directory, or a request with PASID the mode or context does
    /// not allow is [`ModelQueryError::Blocked`]; legacy second-level contexts, second-stage-only
    /// and nested PASID entries and 5-level first-stage tables are
    /// [`ModelQueryError::UnsupportedMode`]; unreadable structures and entries the unit would
    /// reject are [`ModelQueryError::BadEntry`].
    /// Page group responses from the invalidation queue (VT-d 6.5.2.9), as the suite compares
    /// them with the requests: the source is the requester id, the table index of a PCI device.
    fn page_responses(&self) -> Option<Vec<ioasis::platform::PageResponseSeen>> {
        let seen = |r: &PageResponseRecord| ioasis::platform::PageResponseSeen {
            source: u32::from(r.rid),
            pasid: r.pasid.map(ioasis::Pasid),
            group: r.group,
            code: r.code,
        };
        Some(lock(&self.state).responses.iter().map(seen).collect())
    }

    fn guest_stage1(
        &self,
        mem: &dyn PhysMemory,
        dev: DeviceRef,
        pasid: Option<Pasid>,
    ) -> Result<GuestStage1, ModelQueryError> {
        let sid = match dev {
            DeviceRef::Rid(r) => r.source_id(),
            DeviceRef::Sid(s) => u16::try_from(s).map_err(|_| ModelQueryError::Blocked)?,
        };
        self.query_stage1(mem, sid, pasid)
    }
}
