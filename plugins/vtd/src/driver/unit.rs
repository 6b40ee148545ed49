//! The VT-d unit: probe (VT-d spec 10.4 / 11.4), root, context and PASID tables (9.1-9.6),
//! attach, faults (7.1.3, 11.4.9) and page requests (7.5).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::{TD_CanDowncast, TD_Opaque};
use abi_stable::std_types::{RArc, ROption, RResult, RSlice, RString, RVec};
use ioasis::abi::{
    guard, guard_or, DeviceInfo, ErrorCode, Fault, HwptBox, HwptFlags, HwptKind, HwptRequest, Hwpt_TO, ItemVerdict,
    LogLevel, PageResponse, PluginError, Stage1Config, Unit, UnitDesc, ViommuBox, ViommuKind, ViommuRequest, Viommu_TO,
};
use ioasis::pt::Memory;
use ioasis::{
    DeviceRef, Features, IntentCode, IntentItem, Iova, PageSizes, Pasid, Prot, PtFormat, RequesterId, UnitCaps,
};
use serde::Deserialize;

use super::hwpt::{dev_tlb_all, HwptInner, SharedDid, Table, User, VtdHwpt};
use super::inv::{Desc, Invalidator};
use super::io::Io;
use super::pagetable::new_table;
use super::viommu::VtdViommu;
use crate::layout::fault::{frcd, frcd_lo, page_request, reason, reason_sm};
use crate::layout::qi;
use crate::layout::regs::{self, cap, ecap, fsts, gcmd, off, prs, rtaddr};
use crate::layout::tables::{context, pasid_dir, pasid_entry, root, sm_context, sm_root, ADDR, AGAWS};

/// Options a unit description may carry (`params` TOML).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VtdParams {
    /// Translation mode: `legacy` or `scalable` (default: scalable when the unit offers it).
    pub mode: Option<Mode>,
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

/// The widest PASID (20 bits): a PASID directory (9.5) of 2^14 entries, each leading to a
/// 64-entry PASID table (9.6).
const MAX_PASID_BITS: u32 = 20;

/// log2 of the PASID-directory entries for PASIDs of `bits` bits: at least one page (512
/// entries), at most 2^14 (9.4 PDTS = 7).
fn pdir_log2(bits: u32) -> u32 {
    bits.saturating_sub(6).clamp(9, 14)
}

/// 4 KiB pages of a PASID directory of 2^`log2` 8-byte entries.
fn pdir_pages(log2: u32) -> u32 {
    1 << (log2 - 9)
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
    aw: u64,
    pt_aw: u64,
    levels: u32,
    /// Input address width of the tables (39 or 48, at most MGAW).
    pub(super) ias: u8,
    sizes: PageSizes,
    pub(super) segment: u16,
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

    fn pasid_bits(&self) -> u32 {
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

    fn dirty(&self) -> bool {
        self.scalable && self.has(ecap::SSADS)
    }

    fn page_requests(&self) -> bool {
        self.scalable && self.has(ecap::PRS)
    }
}

/// Per-device driver state.
#[derive(Default)]
struct DevState {
    /// Context entry (legacy 128-bit, scalable 256-bit).
    ctx_entry: u64,
    /// PASID directory (scalable mode): first page, and its 4 KiB pages.
    pasid_dir: u64,
    /// Pages of the PASID directory.
    pasid_dir_pages: u32,
    /// PASID table pages by directory index.
    pasid_tables: HashMap<u64, u64>,
    /// The device-TLB is enabled (ATS).
    ats: bool,
    /// What each PASID (None: untagged) is attached to.
    attached: HashMap<Option<u32>, Arc<HwptInner>>,
}

struct Tables {
    root: u64,
    /// Context tables by (bus, half): half 1 is the scalable upper table (devfn 128-255).
    ctx: HashMap<(u8, u8), u64>,
    devices: HashMap<u16, DevState>,
    /// Page request queue page.
    prq: Option<u64>,
    shut_down: bool,
}

/// A probed VT-d unit.
pub struct VtdUnit {
    core: Arc<UnitCore>,
    name: String,
    tables: Mutex<Tables>,
    warned_overflow: AtomicBool,
}

fn refusal(item: IntentCode, reason: impl Into<String>) -> ItemVerdict {
    ItemVerdict { item, granted: false, reason: RString::from(reason.into()) }
}

fn grant(item: IntentCode, detail: &str) -> ItemVerdict {
    ItemVerdict { item, granted: true, reason: RString::from(detail) }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
            inv: Invalidator::new(cap_r, ecap_r),
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
            io.wr32(off::PRS, prs::PPR | prs::PRO)?;
            prq = Some(q);
        }
        // Stale fault records from before are not ours to report.
        io.wr32(off::FSTS, fsts::PFO | fsts::IQE | fsts::ICE | fsts::ITE)?;
        io.gcmd(gcmd::TE, 0, "enable translation", |s| s & gcmd::TE != 0)?;
        Ok((root_table, prq))
    }

    /// What the unit and its HWPTs share.
    #[cfg(test)]
    pub(super) fn core(&self) -> &Arc<UnitCore> {
        &self.core
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
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

    fn alloc(&self, req: &HwptRequest) -> Result<HwptBox, PluginError> {
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
                let snp = if f.contains(HwptFlags::COHERENCY) { crate::layout::tables::sl::SNP } else { 0 };
                match new_table(&c.io, c.levels, c.sizes, c.ias, snp) {
                    Ok(t) => Table::Paging(t),
                    Err(e) => {
                        c.free_did(did);
                        return Err(e);
                    }
                }
            }
        };
        let inner = c.new_hwpt(req.kind, f, table, did, None);
        Ok(Hwpt_TO::from_ptr(RArc::new(VtdHwpt(inner)), TD_CanDowncast))
    }

    /// A vIOMMU (one VM's slice of the unit) over `req.parent`, this unit's second-stage
    /// paging HWPT, with a domain id of its own for the VM's nested HWPTs.
    pub(crate) fn do_alloc_viommu(&self, req: &ViommuRequest) -> Result<ViommuBox, PluginError> {
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
        Ok(Viommu_TO::from_ptr(RArc::new(v), TD_Opaque))
    }

    /// Finds our HWPT behind a host object.
    fn lookup(&self, hwpt: &HwptBox) -> Result<Arc<HwptInner>, PluginError> {
        let handle = hwpt.info().handle;
        match hwpt.obj.downcast_as::<VtdHwpt>().ok() {
            Some(h) if Arc::ptr_eq(&h.0.core, &self.core) && h.0.handle == handle => Ok(h.0.clone()),
            _ => Err(PluginError::not_found(format!(
                "HWPT {handle:#x} was not made by unit {} of this plugin",
                self.name
            ))),
        }
    }

    fn sid_of(&self, dev: &DeviceInfo) -> Result<u16, PluginError> {
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

    /// Context-cache invalidation for one device (6.5.2.1) with the DID the spec asks for:
    /// DID 0 for a not-present to present change under caching mode.
    fn cc_device(&self, did: u16, sid: u16) -> Desc {
        [qi::cc::q0(qi::cc::DEVICE, did, sid), 0]
    }

    /// Descriptors that drop what the unit cached for an entry that used domain `did`.
    fn drop_old(&self, sid: u16, pasid: Option<u32>, did: u16, ats: bool) -> Vec<Desc> {
        let mut b = match pasid {
            None => vec![self.cc_device(did, sid)],
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
    fn after_new(&self, sid: u16, pasid: Option<u32>, did: u16) -> Vec<Desc> {
        let cm = self.core.cap & cap::CM != 0;
        let mut b = match pasid {
            None => vec![self.cc_device(if cm { 0 } else { did }, sid)],
            Some(p) => vec![[qi::pc::q0(qi::pc::PASID, did, p), 0]],
        };
        if cm {
            b.push([qi::iotlb::q0(qi::iotlb::DOMAIN, did), 0]);
        }
        b
    }

    fn do_attach(&self, dev: &DeviceInfo, pasid: Option<u32>, hwpt: &HwptBox) -> Result<(), PluginError> {
        let h = self.lookup(hwpt)?;
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
    fn ctx_table(&self, t: &mut Tables, bus: u8, half: u8) -> Result<(u64, bool), PluginError> {
        if let Some(p) = t.ctx.get(&(bus, half)) {
            return Ok((*p, false));
        }
        Ok((self.core.io.alloc()?, true))
    }

    fn hook_ctx_table(&self, t: &mut Tables, bus: u8, half: u8, table: u64) -> Result<(), PluginError> {
        let io = &self.core.io;
        let entry = t.root + root::offset(bus);
        if self.core.scalable {
            // 9.2: lower context table pointer in qword 0, upper in qword 1.
            io.wr(entry + 8 * half as u64, (table & ADDR) | sm_root::P)?;
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
    fn attach_legacy(&self, t: &mut Tables, dev: &DeviceInfo, sid: u16, h: Arc<HwptInner>) -> Result<(), PluginError> {
        let c = &self.core;
        let io = &c.io;
        let (bus, devfn) = ((sid >> 8) as u8, sid as u8);
        let ats = dev.ats && c.has(ecap::DT);
        let new = match (&h.table, h.kind) {
            (_, HwptKind::BLOCKING) => None,
            (_, HwptKind::IDENTITY) => Some((context::TT_PT | context::P, c.pt_aw | context::did(h.did))),
            (Table::Paging(pt), _) => {
                let tt = if ats { context::TT_SL_DT } else { context::TT_SL };
                Some(((pt.root & ADDR) | tt | context::P, c.aw | context::did(h.did)))
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
        if let Some((lo, hi)) = new {
            if old_lo == lo && old_hi == hi {
                return self.record(st, None, h, entry, sid, ats);
            }
        }
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
    fn record(
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

    /// The 512-bit PASID entry (9.6) for a HWPT, or `None` for blocking.
    fn pasid_entry_for(&self, h: &HwptInner) -> Result<Option<[u64; 8]>, PluginError> {
        let c = &self.core;
        let mut e = [0u64; 8];
        match (&h.table, h.kind) {
            (_, HwptKind::BLOCKING) => return Ok(None),
            (_, HwptKind::IDENTITY) => {
                e[0] = pasid_entry::aw(c.pt_aw) | pasid_entry::PGTT_PT | pasid_entry::P;
            }
            (Table::Paging(pt), _) => {
                e[0] = (pt.root & ADDR) | pasid_entry::aw(c.aw) | pasid_entry::PGTT_SS | pasid_entry::P;
                if h.ssade() {
                    e[0] |= pasid_entry::SSADE;
                }
            }
            (Table::Nested { parent, s1_root }, _) => {
                let pt = parent.paging()?;
                e[0] = (pt.root & ADDR) | pasid_entry::aw(c.aw) | pasid_entry::PGTT_NESTED | pasid_entry::P;
                if parent.ssade() {
                    e[0] |= pasid_entry::SSADE;
                }
                e[2] = (s1_root & ADDR) | pasid_entry::FSPM_4LEVEL;
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
    fn attach_scalable(
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
        let half = devfn >> 7;
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
            let mut q0 = (pdir & ADDR) | sm_context::pdts(dir_log2) | sm_context::P;
            if c.has(ecap::PASID) {
                q0 |= sm_context::PASIDE;
            }
            if c.has(ecap::PRS) && dev.pri {
                q0 |= sm_context::PRE;
            }
            if ats {
                q0 |= sm_context::DTE;
            }
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
            io.wr(st.pasid_dir + pasid_dir::offset(p), (pt & ADDR) | pasid_dir::P)?;
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

    fn do_detach(&self, dev: &DeviceInfo, pasid: Option<u32>) -> Result<(), PluginError> {
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

    /// Maps a VT-d fault reason (Appendix A) to an ioasis reason. Reasons 5/6 cover both a
    /// not-present second-stage entry and missing permission: the table decides which.
    fn fault_reason(&self, t: &Tables, sid: u16, pasid: Option<u32>, addr: u64, fr: u8) -> u32 {
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
    fn nested_at(&self, t: &Tables, sid: u16, pasid: Option<u32>) -> bool {
        let h = t.devices.get(&sid).and_then(|d| d.attached.get(&pasid.filter(|p| *p != 0)));
        h.is_some_and(|h| matches!(h.table, Table::Nested { .. }))
    }

    fn rid(&self, sid: u16) -> DeviceRef {
        DeviceRef::Rid(RequesterId { segment: self.core.segment, bus: (sid >> 8) as u8, devfn: sid as u8 })
    }

    fn do_read_faults(&self, max: u32) -> Result<Vec<Fault>, PluginError> {
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
                // PASID 0 is the RID_PASID of untagged DMA (9.4; attach refuses it as a PASID).
                // QEMU 7.2 in scalable mode records untagged DMA with PP=1 and PASID 0: that
                // is untagged DMA, not a PASID the host could have attached.
                let pasid = (hi & frcd::PP != 0).then(|| frcd::pasid(hi)).filter(|p| !(c.scalable && *p == 0));
                let addr = frcd_lo::fi(lo);
                let access = if hi & frcd::T_READ != 0 { Prot::READ } else { Prot::WRITE };
                let r = self.fault_reason(&t, sid, pasid, addr, frcd::reason(hi));
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
    fn drain_page_requests(&self, q: u64, max: u32, out: &mut Vec<Fault>) -> Result<(), PluginError> {
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
            let pasid = (q0 & page_request::PASID_P != 0).then_some(((q0 >> 32) & 0xf_ffff) as u32);
            let mut access = Prot::NONE;
            if q1 & page_request::RD != 0 {
                access = access | Prot::READ;
            }
            if q1 & page_request::WR != 0 {
                access = access | Prot::WRITE;
            }
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
        if s & (prs::PRO | prs::PPR) != 0 && head == tail {
            io.wr32(off::PRS, s & (prs::PRO | prs::PPR))?;
        }
        Ok(())
    }

    fn do_page_response(&self, resp: &PageResponse) -> Result<(), PluginError> {
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

impl VtdUnit {
    /// Interface 0.3's `alloc_viommu` (the plugin's `PluginExt03`), also what tests call.
    pub(crate) fn alloc_viommu(&self, req: &ViommuRequest) -> RResult<ViommuBox, PluginError> {
        guard("alloc_viommu", || self.do_alloc_viommu(req))
    }
}

impl Unit for VtdUnit {
    fn caps(&self) -> UnitCaps {
        guard_or(
            "caps",
            UnitCaps {
                model: RString::from("VT-d"),
                paging_format: PtFormat::VTD_SECOND_LEVEL,
                page_sizes: PageSizes::SZ_4K,
                ias_bits: 39,
                oas_bits: 39,
                pasid_bits: 0,
                features: Features(0),
                nested_formats: RVec::new(),
            },
            || {
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
            },
        )
    }

    fn negotiate(&self, dev: &DeviceInfo, items: RSlice<'_, IntentCode>) -> RVec<ItemVerdict> {
        guard_or("negotiate", RVec::new(), || items.iter().map(|c| self.judge(dev, *c)).collect())
    }

    fn alloc_hwpt(&self, req: &HwptRequest) -> RResult<HwptBox, PluginError> {
        guard("alloc_hwpt", || self.alloc(req))
    }

    fn attach(&self, dev: &DeviceInfo, pasid: ROption<Pasid>, hwpt: &HwptBox) -> RResult<(), PluginError> {
        guard("attach", || self.do_attach(dev, pasid.into_option().map(|p| p.0), hwpt))
    }

    fn detach(&self, dev: &DeviceInfo, pasid: ROption<Pasid>) -> RResult<(), PluginError> {
        guard("detach", || self.do_detach(dev, pasid.into_option().map(|p| p.0)))
    }

    fn read_faults(&self, max: u32) -> RResult<RVec<Fault>, PluginError> {
        guard("read_faults", || self.do_read_faults(max).map(RVec::from))
    }

    fn page_response(&self, resp: &PageResponse) -> RResult<(), PluginError> {
        guard("page_response", || self.do_page_response(resp))
    }

    fn table_pages(&self) -> u64 {
        guard_or("table_pages", 0, || {
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
        })
    }

    fn shutdown(&self) -> RResult<(), PluginError> {
        guard("shutdown", || self.do_shutdown())
    }
}
