//! The VT-d unit: probe (VT-d spec 10.4 / 11.4), capabilities and negotiation, HWPT and vIOMMU
//! allocation, shutdown, and the `Unit` implementation. Root and context tables are in
//! `context` (9.1-9.4), PASID tables in `pasid` (9.4-9.6), fault recording and the page
//! request queue in `fault` (7.1.3, 7.5, 11.4.9, 11.4.11), invalidation in `inv` (6.5).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use abi_stable::std_types::{ROption, RString, RVec};
use ioasis::abi::{
    DeviceInfo, ErrorCode, Fault, HwptBox, HwptFlags, HwptKind, HwptRequest, ItemVerdict, LogLevel, PageResponse,
    PluginError, Stage1Config, UnitDesc, ViommuKind, ViommuRequest,
};
use ioasis::plugin::UnitDriver;
use ioasis::pt::Memory;
use ioasis::{DeviceRef, Features, IntentCode, IntentItem, PageSizes, Pasid, PtFormat, UnitCaps};
use serde::Deserialize;

use super::hwpt::{HwptInner, SharedDid, Table, VtdHwpt};
use super::inv::{Desc, Invalidator};
use super::io::Io;
use super::pagetable::new_table;
use super::pasid::MAX_PASID_BITS;
use super::viommu::VtdViommu;
use crate::layout::qi;
use crate::layout::regs::{self, cap, ecap, fsts, gcmd, off, prs, rtaddr};
use crate::layout::tables::{pasid_entry, ADDR, AGAWS};

/// Options a unit description may carry (`params` TOML).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VtdParams {
    /// Translation mode: `legacy` or `scalable` (default: scalable when the unit offers it).
    pub mode: Option<Mode>,
    /// A deliberate bug, for the conformance suite's self-test only (see [`Defect`]).
    pub defect: Option<Defect>,
}

/// Deliberate bugs the driver can be told to have (`params = 'defect = "..."'`), each one of
/// the kind that ships in real kernels. They exist so that the conformance suite can check
/// that it catches them, each in the category where the bug belongs
/// (`ioasis_conformance::variants::VTD`). Test-only: never set one outside such tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Defect {
    /// Queued invalidation (6.5.2) without its invalidation-wait descriptor: the driver moves
    /// IQT and returns, as if the unit finished at once.
    MissingWaitDescriptor,
    /// The wait descriptor's status dword is never cleared and always gets the same data: the
    /// poll sees the previous batch's completion and returns before this batch is done.
    StaleWaitStatus,
    /// Page-selective invalidation with AM one too small (6.5.2.3): each descriptor covers
    /// half the pages it should.
    AddressMaskOffByOne,
    /// The fault reason of a fault record (11.4.9.3, FR bits 103:96) decoded as 4 bits: the
    /// scalable-mode reasons (Appendix A, 0x30 and up) turn into legacy ones.
    FaultReasonTruncated,
    /// PASID present of a page request (7.5.1.1, bit 8) tested at bit 9 (privilege mode
    /// requested): page requests lose their PASID, and their responses name none.
    PageRequestPasidDropped,
    /// The source id of a fault record with bus and devfn swapped.
    FaultSourceSwapped,
    /// Splitting a large leaf (9.8) gives the smaller leaves R|W, not the leaf's permissions.
    SplitLosesPermissions,
    /// Read-and-clear of the dirty bits does not invalidate the IOTLB afterwards: cached
    /// translations do not set D again.
    DirtyClearWithoutFlush,
    /// No context-cache invalidation (6.5.2.1) after a context entry changes (legacy mode).
    SkipContextCacheInvalidation,
    /// No PASID-cache invalidation (6.5.2.2) after a PASID entry is replaced or cleared.
    SkipPasidCacheInvalidation,
    /// A replace writes the new PASID entry before reading the old one's DID: the invalidation
    /// names the new domain, the old domain's cached entries survive.
    ReplaceInvalidatesNewDid,
    /// The PASID-directory index (9.5) taken from PASID bits 19:7, one bit off.
    PasidDirIndexOffByOne,
    /// A guest's stage-1 invalidation of a nested HWPT sent with its parent's DID.
    NestedInvalidationParentDid,
    /// The address-width check of map is off by one page: the last page of the aperture is
    /// refused.
    ApertureLastPageRefused,
    /// Scalable mode: the root entry's upper context-table pointer (9.2, devfn 128-255) is
    /// never set; those devices' entries go into the lower table.
    UpperContextTableIgnored,
}

/// Translation table mode (11.4.6 RTADDR_REG.TTM).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Root and context entries of 9.1 / 9.3.
    Legacy,
    /// Scalable-mode root, context and PASID entries of 9.2 / 9.4-9.6.
    Scalable,
}

/// What the unit and its HWPTs share.
pub struct UnitCore {
    pub(super) io: Io,
    pub(super) inv: Invalidator,
    pub(super) cap: u64,
    pub(super) ecap: u64,
    ver: u32,
    pub(super) scalable: bool,
    /// AW of second-stage tables (9.3 / 9.6) and for pass-through (the largest SAGAW).
    pub(super) aw: u64,
    pub(super) pt_aw: u64,
    pub(super) levels: u32,
    /// Input address width of the tables (39 or 48, at most MGAW).
    pub(super) ias: u8,
    pub(super) sizes: PageSizes,
    pub(super) segment: u16,
    /// The deliberate bug the unit was told to have (conformance self-test only).
    pub(super) defect: Option<Defect>,
    dids: Mutex<DidAlloc>,
    next_handle: AtomicU64,
}

struct DidAlloc {
    /// Number of domain ids (CAP.ND).
    count: u32,
    used: HashSet<u16>,
    next: u32,
}

impl UnitCore {
    /// True when the unit was told to have `d`.
    pub(super) fn bug(&self, d: Defect) -> bool {
        self.defect == Some(d)
    }

    pub(super) fn has(&self, bit: u64) -> bool {
        self.ecap & bit != 0
    }

    /// Write-buffer flush (6.8) after table updates when CAP.RWBF asks for it.
    pub(super) fn write_buffer_flush(&self) -> Result<(), PluginError> {
        if self.cap & cap::RWBF == 0 {
            return Ok(());
        }
        self.io.gcmd(gcmd::WBF, 0, "write-buffer flush", |s| s & gcmd::WBF == 0)
    }

    /// A free domain id (3.4.2, CAP.ND). DID 0 is never used (reserved when CAP.CM is set).
    pub(super) fn alloc_did(&self) -> Result<u16, PluginError> {
        let mut d = self.dids.lock().unwrap_or_else(|p| p.into_inner());
        let count = d.count;
        for _ in 1..count {
            let id = d.next;
            d.next = if d.next + 1 >= count { 1 } else { d.next + 1 };
            if !d.used.contains(&(id as u16)) {
                d.used.insert(id as u16);
                return Ok(id as u16);
            }
        }
        Err(PluginError::new(ErrorCode::NO_MEMORY, format!("all {} domain ids are in use (CAP.ND)", count - 1)))
    }

    /// Domain ids in use now.
    #[cfg(test)]
    pub(super) fn dids_in_use(&self) -> usize {
        self.dids.lock().unwrap_or_else(|p| p.into_inner()).used.len()
    }

    pub(super) fn free_did(&self, did: u16) {
        self.dids.lock().unwrap_or_else(|p| p.into_inner()).used.remove(&did);
    }

    pub(super) fn pasid_bits(&self) -> u32 {
        if self.scalable && self.has(ecap::PASID) {
            ecap::pss(self.ecap).min(MAX_PASID_BITS)
        } else {
            0
        }
    }

    fn nesting(&self) -> bool {
        self.nesting_refusal().is_none()
    }

    /// Why the unit cannot nest a first stage over a second stage (3.8), naming the register
    /// bit: scalable mode (ECAP.SMTS), ECAP.NEST and first-stage translation (ECAP.FSTS).
    pub(super) fn nesting_refusal(&self) -> Option<String> {
        if self.ecap & ecap::SMTS == 0 {
            return Some("nesting needs scalable mode: ECAP.SMTS (bit 43) is 0".into());
        }
        if !self.scalable {
            return Some("nesting needs scalable mode: the unit runs in legacy mode (RTADDR.TTM = 00)".into());
        }
        if !self.has(ecap::NEST) {
            return Some("nested translation: ECAP.NEST (bit 26) is 0".into());
        }
        if !self.has(ecap::FSTS) {
            return Some("nested first stage: ECAP.FSTS (bit 47) is 0".into());
        }
        None
    }

    /// Checks the options of a new HWPT against what the unit offers.
    pub(super) fn check_flags(&self, f: HwptFlags) -> Result<(), PluginError> {
        if f.contains(HwptFlags::DIRTY_TRACKING) && !self.dirty() {
            return Err(PluginError::unsupported("dirty tracking needs scalable mode and ECAP.SSADS"));
        }
        if f.contains(HwptFlags::PAGE_FAULTS) && !self.page_requests() {
            return Err(PluginError::unsupported("I/O page faults need ECAP.PRS (and scalable mode)"));
        }
        if f.contains(HwptFlags::COHERENCY) && !self.has(ecap::SC) {
            return Err(PluginError::unsupported("enforced coherency needs ECAP.SC"));
        }
        Ok(())
    }

    /// The nested table of a guest x86-64 first stage over `parent` (9.6 PGTT 011).
    pub(super) fn nested_table(&self, parent: Arc<HwptInner>, s1: &Stage1Config) -> Result<Table, PluginError> {
        if let Some(why) = self.nesting_refusal() {
            return Err(PluginError::unsupported(why));
        }
        if parent.kind != HwptKind::PAGING {
            return Err(PluginError::invalid("the parent of a nested HWPT must be a paging HWPT"));
        }
        if s1.format != PtFormat::X86_64 {
            return Err(PluginError::unsupported(format!("cannot nest a {} stage-1", s1.format)));
        }
        if s1.root.0 & !ADDR != 0 {
            return Err(PluginError::invalid(format!("stage-1 root {} is not page aligned", s1.root)));
        }
        // 9.6: FSPTPTR bits above the host address width are reserved.
        let mgaw = cap::mgaw(self.cap);
        if mgaw < 64 && s1.root.0 >> mgaw != 0 {
            return Err(PluginError::invalid(format!("stage-1 root {} is beyond the {mgaw}-bit MGAW", s1.root)));
        }
        Ok(Table::Nested { parent, s1_root: s1.root.0 })
    }

    /// A new HWPT with domain id `did` (owned, or shared through `shared`).
    pub(super) fn new_hwpt(
        self: &Arc<Self>,
        kind: HwptKind,
        flags: HwptFlags,
        table: Table,
        did: u16,
        shared: Option<Arc<SharedDid>>,
    ) -> Arc<HwptInner> {
        let inner = Arc::new(HwptInner {
            core: self.clone(),
            handle: self.next_handle.fetch_add(1, Ordering::Relaxed),
            did,
            kind,
            flags,
            table,
            lock: Mutex::new(()),
            dirty_on: AtomicBool::new(false),
            users: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            shared_did: shared,
        });
        if let Table::Nested { parent, .. } = &inner.table {
            lock(&parent.children).push(Arc::downgrade(&inner));
        }
        inner
    }

    pub(super) fn dirty(&self) -> bool {
        self.scalable && self.has(ecap::SSADS)
    }

    pub(super) fn page_requests(&self) -> bool {
        self.scalable && self.has(ecap::PRS)
    }
}

/// Per-device driver state.
#[derive(Default)]
pub(super) struct DevState {
    /// Context entry (legacy 128-bit, scalable 256-bit).
    pub(super) ctx_entry: u64,
    /// PASID directory (scalable mode): first page, and its 4 KiB pages.
    pub(super) pasid_dir: u64,
    /// Pages of the PASID directory.
    pub(super) pasid_dir_pages: u32,
    /// PASID table pages by directory index.
    pub(super) pasid_tables: HashMap<u64, u64>,
    /// The device-TLB is enabled (ATS).
    pub(super) ats: bool,
    /// What each PASID (None: untagged) is attached to.
    pub(super) attached: HashMap<Option<u32>, Arc<HwptInner>>,
}

pub(super) struct Tables {
    pub(super) root: u64,
    /// Context tables by (bus, half): half 1 is the scalable upper table (devfn 128-255).
    pub(super) ctx: HashMap<(u8, u8), u64>,
    pub(super) devices: HashMap<u16, DevState>,
    /// Page request queue page.
    pub(super) prq: Option<u64>,
    pub(super) shut_down: bool,
}

/// A probed VT-d unit.
pub struct VtdUnit {
    pub(super) core: Arc<UnitCore>,
    pub(super) name: String,
    pub(super) tables: Mutex<Tables>,
    pub(super) warned_overflow: AtomicBool,
}

fn refusal(item: IntentCode, reason: impl Into<String>) -> ItemVerdict {
    ItemVerdict { item, granted: false, reason: RString::from(reason.into()) }
}

fn grant(item: IntentCode, detail: &str) -> ItemVerdict {
    ItemVerdict { item, granted: true, reason: RString::from(detail) }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The second-stage geometry SAGAW offers (11.4.2): (AW, levels, width). 4-level 48-bit tables
/// when the unit has them, else 5-level 57-bit, else 3-level 39-bit.
fn pick_agaw(sagaw: u32) -> Option<(u64, u32, u32)> {
    [AGAWS[1], AGAWS[2], AGAWS[0]].into_iter().find(|(aw, _, _)| sagaw & (1 << aw) != 0)
}

impl VtdUnit {
    /// Probes the unit (10.4, 11.4): reads VER/CAP/ECAP, picks the mode and address width,
    /// installs the root table, enables queued invalidation and page requests, invalidates
    /// every cache and enables translation with every device blocked.
    pub fn probe(desc: &UnitDesc, io: Io) -> Result<Self, PluginError> {
        let params: VtdParams = toml::from_str(desc.params.as_str())
            .map_err(|e| PluginError::invalid(format!("unit {}: bad vtd params: {e}", desc.name)))?;
        let ver = io.rd32(off::VER)?;
        let cap_r = io.rd64(off::CAP)?;
        let ecap_r = io.rd64(off::ECAP)?;
        let can_scalable = ecap_r & ecap::SMTS != 0 && ecap_r & ecap::SSTS != 0 && ecap_r & ecap::QI != 0;
        if params.mode == Some(Mode::Scalable) && !can_scalable {
            return Err(PluginError::unsupported(format!(
                "unit {}: scalable mode needs ECAP.SMTS, ECAP.SSTS and ECAP.QI (ECAP {ecap_r:#x})",
                desc.name
            )));
        }
        let scalable = can_scalable && params.mode != Some(Mode::Legacy);
        let sagaw = cap::sagaw(cap_r);
        let (aw, levels, width) = pick_agaw(sagaw).ok_or_else(|| {
            PluginError::unsupported(format!(
                "unit {}: CAP.SAGAW {sagaw:#b} offers neither 4-level 48-bit nor 3-level 39-bit tables",
                desc.name
            ))
        })?;
        let pt_aw = AGAWS.iter().rev().find(|(a, _, _)| sagaw & (1 << a) != 0).map_or(aw, |x| x.0);
        let ias = width.min(cap::mgaw(cap_r)) as u8;
        let mut sizes = 1u64 << 12;
        if cap::sllps(cap_r) & 1 != 0 {
            sizes |= 1 << 21;
        }
        if cap::sllps(cap_r) & 2 != 0 {
            sizes |= 1 << 30;
        }
        let nd = cap::nd(cap_r).min(6);
        let core = UnitCore {
            io,
            inv: Invalidator::new(cap_r, ecap_r, params.defect),
            cap: cap_r,
            ecap: ecap_r,
            ver,
            scalable,
            aw,
            pt_aw,
            levels,
            ias,
            sizes: PageSizes(sizes),
            segment: desc.segment,
            defect: params.defect,
            dids: Mutex::new(DidAlloc { count: 1 << (4 + 2 * nd), used: HashSet::new(), next: 1 }),
            next_handle: AtomicU64::new(1),
        };
        let mut pages = Vec::new();
        match Self::enable(&core, &mut pages) {
            Ok((root_table, prq)) => {
                core.io.log(
                    LogLevel::Info,
                    &format!(
                        "VT-d unit {} enabled: {} mode, {}-level {}-bit, CAP {cap_r:#x} ECAP {ecap_r:#x}",
                        desc.name,
                        if scalable { "scalable" } else { "legacy" },
                        levels,
                        ias
                    ),
                );
                Ok(Self {
                    core: Arc::new(core),
                    name: desc.name.to_string(),
                    tables: Mutex::new(Tables {
                        root: root_table,
                        ctx: HashMap::new(),
                        devices: HashMap::new(),
                        prq,
                        shut_down: false,
                    }),
                    warned_overflow: AtomicBool::new(false),
                })
            }
            Err(e) => {
                let _ = core.inv.disable_queue(&core.io);
                for p in pages {
                    core.io.free(p);
                }
                Err(e)
            }
        }
    }

    /// The enabling sequence; every page it allocates goes to `pages` for the error path.
    fn enable(c: &UnitCore, pages: &mut Vec<u64>) -> Result<(u64, Option<u64>), PluginError> {
        let io = &c.io;
        // Start from a quiet unit: translation and queued invalidation off (11.4.4).
        let sts = io.rd32(off::GSTS)?;
        if sts & gcmd::TE != 0 {
            io.gcmd(0, gcmd::TE, "disable translation", |s| s & gcmd::TE == 0)?;
        }
        if sts & gcmd::QIE != 0 {
            io.gcmd(0, gcmd::QIE, "disable queued invalidation", |s| s & gcmd::QIE == 0)?;
        }
        let root_table = io.alloc()?;
        pages.push(root_table);
        let ttm = if c.scalable { rtaddr::TTM_SCALABLE } else { rtaddr::TTM_LEGACY };
        io.wr64(off::RTADDR, root_table | ttm)?;
        io.gcmd(gcmd::SRTP, 0, "set root table pointer", |s| s & gcmd::SRTP != 0)?;
        if c.ecap & ecap::QI != 0 {
            let queue = io.alloc()?;
            pages.push(queue);
            let status = io.alloc()?;
            pages.push(status);
            c.inv.enable_queue(io, queue, status, c.scalable)?;
        }
        // 6.5: nothing cached may survive from before.
        let mut batch: Vec<Desc> = vec![[qi::cc::q0(qi::cc::GLOBAL, 0, 0), 0]];
        if c.scalable {
            batch.push([qi::pc::q0(qi::pc::GLOBAL, 0, 0), 0]);
        }
        batch.push([qi::iotlb::q0(qi::iotlb::GLOBAL, 0), 0]);
        c.write_buffer_flush()?;
        c.inv.submit(io, &batch)?;
        let mut prq = None;
        if c.page_requests() {
            let q = io.alloc()?;
            pages.push(q);
            io.wr64(off::PQH, 0)?;
            io.wr64(off::PQT, 0)?;
            io.wr64(off::PQA, regs::pqa::value(q, 0))?;
            io.wr32(off::PRS, prs::W1C)?;
            prq = Some(q);
        }
        // Stale fault records from before are not ours to report.
        io.wr32(off::FSTS, fsts::W1C)?;
        io.gcmd(gcmd::TE, 0, "enable translation", |s| s & gcmd::TE != 0)?;
        Ok((root_table, prq))
    }

    /// What the unit and its HWPTs share.
    #[cfg(test)]
    pub(super) fn core(&self) -> &Arc<UnitCore> {
        &self.core
    }

    pub(super) fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        lock(&self.tables)
    }

    fn judge(&self, dev: &DeviceInfo, code: IntentCode) -> ItemVerdict {
        let c = &self.core;
        let u = &self.name;
        let Ok(item) = IntentItem::try_from(code) else {
            return refusal(code, format!("unknown intent kind {} (vtd plugin speaks interface 0.1)", code.kind));
        };
        let pasid_ok = c.pasid_bits() > 0;
        match item {
            IntentItem::UntaggedDma => grant(code, "second-stage paging"),
            IntentItem::SoftwareTable => grant(code, "no hardware table needed"),
            IntentItem::PasidDma { .. } | IntentItem::PasidIoas if !pasid_ok => {
                refusal(code, format!("unit {u}: PASID needs scalable mode and ECAP.PASID"))
            }
            IntentItem::PasidDma { width } => {
                let bits = c.pasid_bits();
                if u32::from(width) > bits {
                    refusal(
                        code,
                        format!("unit {u} supports {bits}-bit PASIDs (ECAP.PSS, one-page directory), {width} asked"),
                    )
                } else {
                    grant(code, "")
                }
            }
            IntentItem::PasidIoas => grant(code, "PASID entry, second stage"),
            IntentItem::Enqcmd => {
                refusal(code, format!("unit {u}: ENQCMD vPASID translation is not supported by the vtd driver"))
            }
            IntentItem::PageFaults if !c.page_requests() => {
                refusal(code, format!("unit {u}: I/O page faults need ECAP.PRS (and scalable mode)"))
            }
            IntentItem::PageFaults if !dev.pri => refusal(code, format!("{} has no PRI capability", dev.dev)),
            IntentItem::PageFaults => grant(code, "page request queue"),
            IntentItem::DirtyTracking if !c.dirty() => {
                refusal(code, format!("unit {u}: dirty tracking needs scalable mode and ECAP.SSADS"))
            }
            IntentItem::DirtyTracking => grant(code, "SSADE"),
            IntentItem::Coherency if !c.has(ecap::SC) => {
                refusal(code, format!("unit {u}: enforced coherency needs ECAP.SC"))
            }
            IntentItem::Coherency => grant(code, "SNP"),
            IntentItem::Ats if !c.has(ecap::DT) => refusal(code, format!("unit {u}: ATS needs ECAP.DT")),
            IntentItem::Ats if !dev.ats => refusal(code, format!("{} has no ATS capability", dev.dev)),
            IntentItem::Ats => grant(code, "device-TLB"),
            IntentItem::Identity if !c.has(ecap::PT) => refusal(code, format!("unit {u}: identity needs ECAP.PT")),
            IntentItem::Identity => grant(code, "pass-through"),
            IntentItem::NestedStage1 { .. } if !c.nesting() => {
                refusal(code, format!("unit {u}: {}", c.nesting_refusal().unwrap_or_default()))
            }
            IntentItem::NestedStage1 { format } if format != PtFormat::X86_64 => {
                refusal(code, format!("unit {u} nests x86-64 first-stage tables only, not {format}"))
            }
            IntentItem::NestedStage1 { .. } => grant(code, "PGTT nested"),
        }
    }

    fn alloc(&self, req: &HwptRequest) -> Result<VtdHwpt, PluginError> {
        let c = &self.core;
        if self.tables().shut_down {
            return Err(PluginError::new(ErrorCode::BUSY, "unit is shut down"));
        }
        let f = req.flags;
        c.check_flags(f)?;
        let table = match req.kind {
            HwptKind::PAGING => None,
            HwptKind::BLOCKING => Some(Table::Fixed),
            HwptKind::IDENTITY if !c.has(ecap::PT) => {
                return Err(PluginError::unsupported("identity needs ECAP.PT"));
            }
            HwptKind::IDENTITY => Some(Table::Fixed),
            HwptKind::NESTED => {
                if let Some(why) = c.nesting_refusal() {
                    return Err(PluginError::unsupported(why));
                }
                let (ROption::RSome(parent), ROption::RSome(s1)) = (&req.parent, &req.stage1) else {
                    return Err(PluginError::invalid("a nested HWPT needs a parent and a stage-1"));
                };
                Some(c.nested_table(self.lookup(parent)?, s1)?)
            }
            other => return Err(PluginError::invalid(format!("unknown HWPT kind {}", other.0))),
        };
        let did = if req.kind == HwptKind::BLOCKING { 0 } else { c.alloc_did()? };
        let table = match table {
            Some(t) => t,
            None => {
                let snp = f.contains(HwptFlags::COHERENCY);
                match new_table(&c.io, c.levels, c.sizes, c.ias, snp, c.bug(Defect::SplitLosesPermissions)) {
                    Ok(t) => Table::Paging(t),
                    Err(e) => {
                        c.free_did(did);
                        return Err(e);
                    }
                }
            }
        };
        Ok(VtdHwpt(c.new_hwpt(req.kind, f, table, did, None)))
    }

    /// A vIOMMU (one VM's slice of the unit) over `req.parent`, this unit's second-stage
    /// paging HWPT, with a domain id of its own for the VM's nested HWPTs.
    pub(crate) fn do_alloc_viommu(&self, req: &ViommuRequest) -> Result<VtdViommu, PluginError> {
        let c = &self.core;
        if self.tables().shut_down {
            return Err(PluginError::new(ErrorCode::BUSY, "unit is shut down"));
        }
        if req.kind != ViommuKind::VTD {
            return Err(PluginError::unsupported(format!(
                "unit {}: VT-d makes vtd vIOMMUs, not {} ({})",
                self.name,
                req.kind.name(),
                req.kind.0
            )));
        }
        if let Some(why) = c.nesting_refusal() {
            return Err(PluginError::unsupported(format!("unit {}: a vIOMMU needs {why}", self.name)));
        }
        let parent = self.lookup(&req.parent)?;
        if parent.kind != HwptKind::PAGING || !matches!(parent.table, Table::Paging(_)) {
            return Err(PluginError::invalid(format!(
                "unit {}: a vIOMMU's parent must be a second-stage paging HWPT, not {}",
                self.name,
                parent.kind.name()
            )));
        }
        let did = c.alloc_did()?;
        let v = VtdViommu::new(c.clone(), self.name.clone(), parent, Arc::new(SharedDid { core: c.clone(), did }));
        c.io.log(LogLevel::Debug, &format!("unit {}: vIOMMU with DID {did}", self.name));
        Ok(v)
    }

    /// Our HWPT behind a box the host passed back (a parent), if this unit made it.
    pub(super) fn lookup(&self, hwpt: &HwptBox) -> Result<Arc<HwptInner>, PluginError> {
        self.own(ioasis::plugin::hwpt_of::<VtdHwpt>(hwpt)?)
    }

    /// The HWPT, if this unit (not another unit of the plugin) made it.
    pub(super) fn own(&self, h: &VtdHwpt) -> Result<Arc<HwptInner>, PluginError> {
        if Arc::ptr_eq(&h.0.core, &self.core) {
            Ok(h.0.clone())
        } else {
            Err(PluginError::not_found(format!("HWPT {:#x} was not made by unit {}", h.0.handle, self.name)))
        }
    }

    pub(super) fn sid_of(&self, dev: &DeviceInfo) -> Result<u16, PluginError> {
        match dev.dev {
            DeviceRef::Rid(r) if r.segment == self.core.segment => Ok(r.source_id()),
            DeviceRef::Rid(r) => Err(PluginError::invalid(format!(
                "{r} is on segment {}, unit {} serves segment {}",
                r.segment, self.name, self.core.segment
            ))),
            DeviceRef::Sid(s) => {
                Err(PluginError::invalid(format!("VT-d names devices by PCI requester id, not stream id {s:#x}")))
            }
        }
    }

    fn do_shutdown(&self) -> Result<(), PluginError> {
        let c = &self.core;
        let io = &c.io;
        let mut t = self.tables();
        if t.shut_down {
            return Ok(());
        }
        io.gcmd(0, gcmd::TE, "disable translation", |s| s & gcmd::TE == 0)?;
        let mut batch: Vec<Desc> = vec![[qi::cc::q0(qi::cc::GLOBAL, 0, 0), 0]];
        if c.scalable {
            batch.push([qi::pc::q0(qi::pc::GLOBAL, 0, 0), 0]);
        }
        batch.push([qi::iotlb::q0(qi::iotlb::GLOBAL, 0), 0]);
        c.inv.submit(io, &batch)?;
        if let Some((q, s)) = c.inv.disable_queue(io)? {
            io.free(q);
            io.free(s);
        }
        if let Some(q) = t.prq.take() {
            io.wr64(off::PQA, 0)?;
            io.free(q);
        }
        io.wr64(off::RTADDR, 0)?;
        for (_, st) in t.devices.drain() {
            for (_, h) in st.attached {
                h.remove_user(st.ctx_entry);
                for pg in st.pasid_tables.values() {
                    for i in 0..64 {
                        h.remove_user(pg + i * pasid_entry::SIZE);
                    }
                }
            }
            for (_, pg) in st.pasid_tables {
                io.free(pg);
            }
            if st.pasid_dir != 0 {
                io.free_n(st.pasid_dir, st.pasid_dir_pages);
            }
        }
        for (_, pg) in t.ctx.drain() {
            io.free(pg);
        }
        io.free(t.root);
        t.shut_down = true;
        Ok(())
    }
}

impl UnitDriver for VtdUnit {
    type Hwpt = VtdHwpt;
    type Viommu = VtdViommu;

    fn caps(&self) -> UnitCaps {
        {
            {
                let c = &self.core;
                let mut features = Features(0);
                for (on, f) in [
                    (c.pasid_bits() > 0, Features::PASID),
                    (c.nesting(), Features::NESTING),
                    (c.dirty(), Features::DIRTY_TRACKING),
                    (c.page_requests(), Features::PAGE_FAULTS),
                    (c.has(ecap::DT), Features::ATS),
                    (c.has(ecap::SC), Features::COHERENCY),
                    (c.has(ecap::PT), Features::IDENTITY),
                ] {
                    if on {
                        features = features.with(f);
                    }
                }
                let mut nested = RVec::new();
                if c.nesting() {
                    nested.push(PtFormat::X86_64);
                }
                UnitCaps {
                    model: RString::from(format!(
                        "VT-d {}.{} {} (CAP {:#x}, ECAP {:#x})",
                        (c.ver >> 4) & 0xf,
                        c.ver & 0xf,
                        if c.scalable { "scalable" } else { "legacy" },
                        c.cap,
                        c.ecap
                    )),
                    paging_format: PtFormat::VTD_SECOND_LEVEL,
                    page_sizes: c.sizes,
                    ias_bits: c.ias,
                    oas_bits: cap::mgaw(c.cap) as u8,
                    pasid_bits: c.pasid_bits() as u8,
                    features,
                    nested_formats: nested,
                }
            }
        }
    }

    fn negotiate(&self, dev: &DeviceInfo, items: &[IntentCode]) -> Vec<ItemVerdict> {
        items.iter().map(|c| self.judge(dev, *c)).collect()
    }

    fn alloc_hwpt(&self, req: &HwptRequest) -> Result<VtdHwpt, PluginError> {
        self.alloc(req)
    }

    fn attach(&self, dev: &DeviceInfo, pasid: Option<Pasid>, hwpt: &VtdHwpt) -> Result<(), PluginError> {
        self.do_attach(dev, pasid.map(|p| p.0), hwpt)
    }

    fn detach(&self, dev: &DeviceInfo, pasid: Option<Pasid>) -> Result<(), PluginError> {
        self.do_detach(dev, pasid.map(|p| p.0))
    }

    fn read_faults(&self, max: u32) -> Result<Vec<Fault>, PluginError> {
        self.do_read_faults(max)
    }

    fn page_response(&self, resp: &PageResponse) -> Result<(), PluginError> {
        self.do_page_response(resp)
    }

    fn table_pages(&self) -> u64 {
        let t = self.tables();
        if t.shut_down {
            return 0;
        }
        let queue = if self.core.inv.queued() { 2 } else { 0 };
        let devs: u64 = t
            .devices
            .values()
            .map(|d| d.pasid_tables.len() as u64 + if d.pasid_dir != 0 { u64::from(d.pasid_dir_pages) } else { 0 })
            .sum();
        1 + t.ctx.len() as u64 + queue + u64::from(t.prq.is_some()) + devs
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        self.do_shutdown()
    }

    /// A vIOMMU (one VM's slice of the unit), interface 0.3.
    fn alloc_viommu(&self, req: &ViommuRequest) -> Result<VtdViommu, PluginError> {
        self.do_alloc_viommu(req)
    }
}
