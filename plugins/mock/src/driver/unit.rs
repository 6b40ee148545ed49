//! The mock unit: probe, device and PASID tables (mock spec §2, §3), attach, faults.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use abi_stable::std_types::{ROption, RString, RVec};
use ioasis::abi::{
    DeviceInfo, ErrorCode, Fault, HwptBox, HwptFlags, HwptKind, HwptRequest, ItemVerdict, LogLevel, PageResponse,
    PluginError, UnitDesc, ViommuRequest,
};
use ioasis::plugin::UnitDriver;
use ioasis::pt::Memory;
use ioasis::{DeviceRef, Features, IntentCode, IntentItem, Iova, PageSizes, Pasid, Prot, PtFormat, UnitCaps};
use serde::Deserialize;

use super::hwpt::{HwptInner, MockHwpt, Table};
use super::io::Io;
use super::pagetable::new_table;
use crate::format::{cap, desc, devtab, fault, pasidtab, reg, ADDR_MASK, VALID};

/// Options a unit description may carry (`params` TOML).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockParams {
    /// Test hook: panic inside this operation (`map`, `unmap`, `attach`) to prove that panics
    /// stay inside the plugin.
    pub panic_on: Option<String>,
    /// Test hook: a deliberate bug, so that the conformance suite can prove it catches it.
    pub defect: Option<Defect>,
}

/// Deliberate bugs the mock can be told to have (`params = 'defect = "..."'`). They exist so
/// that the conformance suite's own tests can show that it fails a broken backend, each in the
/// category where the bug belongs. Never set outside such tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Defect {
    /// Unmap clears the entries but never invalidates the IOTLB.
    SkipIotlbInvalidation,
    /// Unmap stops one page before the end of the range.
    UnmapOffByOne,
    /// A failed map frees every new table but the last one.
    LeakOnError,
    /// Read-only mappings are made writable.
    IgnoreReadOnly,
    /// Faults are reported with the next device's source id.
    WrongFaultSource,
    /// Large pages are used whenever the IOVA allows, even when the physical address does not.
    MisalignedLargePage,
    /// Fault records lose their S2 bit (§6): stage-2 faults of a nested translation look like
    /// the guest's.
    Stage2FaultsUnflagged,
    /// Invalidations write INV_CMD and return without waiting for INV_DONE to count them (a
    /// unit with latency still translates through the stale entries).
    NoInvalidationWait,
    /// Each PASID table level is indexed with the bits of the level above it (§3).
    PasidTableOffByOne,
    /// Level-2 device-table entries are indexed by devfn bits 6:0: functions at and above devfn
    /// 0x80 share the entries of those below (§2).
    DevtabDevfnHighBitDropped,
    /// Page responses carry the response code in the group field and the group in the code
    /// field of PRESP_CMD (§1).
    PageResponseFieldsSwapped,
    /// Fault records' PASIDs are read with a 19-bit mask (§6): the upper half of the PASID
    /// space is reported as the lower.
    #[serde(rename = "fault-pasid-19-bits")]
    FaultPasid19Bits,
    /// A replace (attach over an existing attachment) rewrites the entry without the device
    /// invalidation (§1 INV_CMD 3).
    ReplaceSkipsDeviceInvalidation,
    /// Reading and clearing dirty bits clears the D bits but does not invalidate the IOTLB,
    /// whose entries then answer writes without setting D again.
    DirtyClearWithoutFlush,
    /// Turning dirty tracking on or off invalidates the HWPT's IOTLB entries but not the
    /// cached descriptor (§4 DIRTY_EN), so the unit keeps using the old one.
    DirtyEnableStaleDescriptor,
    /// Splitting a large page drops its D bit: the smaller pages lose the dirtiness.
    SplitLosesDirty,
    /// Splitting a large page drops its W bit: the smaller pages become read-only.
    SplitLosesWrite,
    /// Map refuses a range that ends at the last byte of the input space (an off-by-one in the
    /// driver's own aperture check).
    LastPageRefused,
}

/// What the unit and its HWPTs share.
pub struct UnitCore {
    pub(super) io: Io,
    pub(super) cap: u64,
    pub(super) params: MockParams,
}

impl UnitCore {
    pub(super) fn caps_ias(&self) -> u8 {
        cap::ias(self.cap)
    }
    fn page_sizes(&self) -> PageSizes {
        let mut s = 0;
        for (bit, size) in [(cap::PS_4K, 1u64 << 12), (cap::PS_2M, 1 << 21), (cap::PS_1G, 1 << 30)] {
            if self.cap & bit != 0 {
                s |= size;
            }
        }
        PageSizes(s)
    }
    pub(super) fn has(&self, bit: u64) -> bool {
        self.cap & bit != 0
    }
}

/// Per-device driver state.
#[derive(Default)]
struct DevState {
    /// Device table entry address (word 0; word 1 at +8).
    entry: u64,
    /// PASID table pages of this device (top first), freed with its last PASID.
    pasid_pages: Vec<u64>,
    /// What each PASID (None: untagged) is attached to.
    attached: HashMap<Option<u32>, Arc<HwptInner>>,
}

pub(super) struct Tables {
    /// Level-1 device table page.
    l1: u64,
    /// Level-2 pages by level-1 index.
    l2: HashMap<u64, u64>,
    devices: HashMap<u32, DevState>,
    fault_queue: u64,
    pub(super) shut_down: bool,
    /// §7: the VM table page (0 until the first vIOMMU) and the virtual-id table page of each
    /// VMID in use.
    pub(super) vm_table: u64,
    pub(super) vms: HashMap<u8, u64>,
    /// §7: the VMID whose vIOMMU holds the virtual command queue.
    pub(super) vcmdq_owner: Option<u8>,
}

/// A probed mock unit.
pub struct MockUnit {
    pub(super) core: Arc<UnitCore>,
    pub(super) name: String,
    pub(super) tables: Arc<Mutex<Tables>>,
}

fn refusal(item: IntentCode, reason: String) -> ItemVerdict {
    ItemVerdict { item, granted: false, reason: RString::from(reason) }
}

fn grant(item: IntentCode, detail: &str) -> ItemVerdict {
    ItemVerdict { item, granted: true, reason: RString::from(detail) }
}

impl MockUnit {
    /// Probes the unit: checks ID, reads CAP, installs the device table and fault queue, enables
    /// translation with every device blocked.
    pub fn probe(desc: &UnitDesc, io: Io) -> Result<Self, PluginError> {
        let params: MockParams = toml::from_str(desc.params.as_str())
            .map_err(|e| PluginError::invalid(format!("unit {}: bad mock params: {e}", desc.name)))?;
        let io = io.with_defect(params.defect);
        let id = io.reg_rd(reg::ID)?;
        if id != reg::ID_VALUE {
            return Err(PluginError::new(
                ErrorCode::HARDWARE,
                format!("unit {} is not a mock unit (ID register {id:#x})", desc.name),
            ));
        }
        let cap = io.reg_rd(reg::CAP)?;
        let l1 = io.alloc()?;
        let fq = match io.alloc() {
            Ok(p) => p,
            Err(e) => {
                io.free(l1);
                return Err(e);
            }
        };
        let enable = || -> Result<(), PluginError> {
            io.reg_wr(reg::DEVTAB, l1)?;
            io.reg_wr(reg::FQ_BASE, fq)?;
            io.reg_wr(reg::FQ_HEAD, 0)?;
            io.invalidate(reg::INV_ALL, 0, 0, 0)?;
            io.reg_wr(reg::CTRL, reg::CTRL_EN | reg::CTRL_FQEN)?;
            io.poll(reg::STATUS, "enable translation", |s| s & reg::STATUS_ENS != 0)?;
            Ok(())
        };
        if let Err(e) = enable() {
            io.free(fq);
            io.free(l1);
            return Err(e);
        }
        io.log(LogLevel::Info, &format!("mock unit {} enabled, CAP {cap:#x}", desc.name));
        Ok(Self {
            core: Arc::new(UnitCore { io, cap, params }),
            name: desc.name.to_string(),
            tables: Arc::new(Mutex::new(Tables {
                l1,
                l2: HashMap::new(),
                devices: HashMap::new(),
                fault_queue: fq,
                shut_down: false,
                vm_table: 0,
                vms: HashMap::new(),
                vcmdq_owner: None,
            })),
        })
    }

    /// Another handle on the same unit (for its vIOMMUs).
    pub(super) fn handle(&self) -> MockUnit {
        MockUnit { core: self.core.clone(), name: self.name.clone(), tables: self.tables.clone() }
    }

    /// The HWPT attached to device `id` at `pasid` (None: untagged), if any.
    pub(super) fn attached(&self, id: u32, pasid: Option<u32>) -> Option<Arc<HwptInner>> {
        self.tables().devices.get(&id).and_then(|d| d.attached.get(&pasid).cloned())
    }

    pub(super) fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn judge(&self, dev: &DeviceInfo, code: IntentCode) -> ItemVerdict {
        let c = &self.core;
        let need = |bit: u64, what: &str| -> ItemVerdict {
            if c.has(bit) {
                grant(code, "")
            } else {
                refusal(code, format!("unit {} has no {what} (CAP bit clear)", self.name))
            }
        };
        let Ok(item) = IntentItem::try_from(code) else {
            return refusal(code, format!("unknown intent kind {} (mock plugin speaks interface 0.1)", code.kind));
        };
        match item {
            IntentItem::UntaggedDma => grant(code, "paging"),
            IntentItem::SoftwareTable => grant(code, "no hardware table needed"),
            IntentItem::PasidDma { width } => {
                let bits = cap::pasid_bits(c.cap);
                if !c.has(cap::PASID) {
                    refusal(code, format!("unit {} has no PASID support (CAP.PASID clear)", self.name))
                } else if width > bits {
                    refusal(code, format!("unit {} supports {bits}-bit PASIDs, {width} asked", self.name))
                } else {
                    grant(code, "")
                }
            }
            IntentItem::PasidIoas => need(cap::PASID, "PASID support"),
            IntentItem::Enqcmd if !c.has(cap::PASID) => {
                refusal(code, format!("ENQCMD needs PASID support, which unit {} lacks", self.name))
            }
            IntentItem::Enqcmd => need(cap::ENQCMD, "ENQCMD vPASID translation"),
            IntentItem::PageFaults => need(cap::PRI, "page request support"),
            IntentItem::DirtyTracking => need(cap::DIRTY, "dirty bit tracking"),
            IntentItem::Coherency => need(cap::COHERENCY, "enforced coherency"),
            IntentItem::Ats => need(cap::ATS, "device-TLB (ATS) support"),
            IntentItem::Identity => need(cap::IDENTITY, "identity descriptors"),
            IntentItem::NestedStage1 { format } => {
                let bit = match format {
                    PtFormat::X86_64 => cap::S1_X86_64,
                    PtFormat::MOCK => cap::S1_MOCK,
                    _ => 0,
                };
                if !c.has(cap::NEST) {
                    refusal(code, format!("unit {} has no nested translation (CAP.NEST clear)", self.name))
                } else if bit == 0 || !c.has(bit) {
                    refusal(code, format!("unit {} cannot nest a {format} stage-1", self.name))
                } else {
                    let _ = dev;
                    grant(code, "")
                }
            }
        }
    }

    pub(super) fn alloc(&self, req: &HwptRequest) -> Result<MockHwpt, PluginError> {
        self.alloc_in(req, 0)
    }

    /// Allocates a HWPT; a nested one gets `vmid` in its descriptor (§4 word 3, §7).
    pub(super) fn alloc_in(&self, req: &HwptRequest, vmid: u8) -> Result<MockHwpt, PluginError> {
        let c = &self.core;
        let io = &c.io;
        if self.tables().shut_down {
            return Err(PluginError::new(ErrorCode::BUSY, "unit is shut down"));
        }
        let f = req.flags;
        if f.contains(HwptFlags::DIRTY_TRACKING) && !c.has(cap::DIRTY) {
            return Err(PluginError::unsupported("unit has no dirty tracking"));
        }
        if f.contains(HwptFlags::PAGE_FAULTS) && !c.has(cap::PRI) {
            return Err(PluginError::unsupported("unit has no page requests"));
        }
        if f.contains(HwptFlags::COHERENCY) && !c.has(cap::COHERENCY) {
            return Err(PluginError::unsupported("unit cannot enforce coherency"));
        }
        let mut w0 = (4u64 << desc::LEVELS_SHIFT) | ((c.caps_ias() as u64) << desc::IAS_SHIFT);
        if f.contains(HwptFlags::COHERENCY) {
            w0 |= desc::COHERENT;
        }
        if f.contains(HwptFlags::PAGE_FAULTS) {
            w0 |= desc::PRI;
        }
        let (ty, table, w1, w2, w3) = match req.kind {
            HwptKind::PAGING => (desc::TYPE_PAGING, None, 0, 0, 0),
            HwptKind::IDENTITY if !c.has(cap::IDENTITY) => {
                return Err(PluginError::unsupported("unit has no identity descriptors"))
            }
            HwptKind::IDENTITY => (desc::TYPE_IDENTITY, Some(Table::Fixed), 0, 0, 0),
            HwptKind::BLOCKING => (desc::TYPE_BLOCKING, Some(Table::Fixed), 0, 0, 0),
            HwptKind::NESTED => {
                if !c.has(cap::NEST) {
                    return Err(PluginError::unsupported("unit has no nested translation"));
                }
                let (ROption::RSome(parent), ROption::RSome(s1)) = (&req.parent, &req.stage1) else {
                    return Err(PluginError::invalid("a nested HWPT needs a parent and a stage-1"));
                };
                let parent = self.lookup(parent)?;
                if parent.kind != HwptKind::PAGING {
                    return Err(PluginError::invalid("the parent of a nested HWPT must be a paging HWPT"));
                }
                let (bit, fmt) = match s1.format {
                    PtFormat::X86_64 => (cap::S1_X86_64, desc::S1_X86_64),
                    PtFormat::MOCK => (cap::S1_MOCK, desc::S1_MOCK),
                    other => return Err(PluginError::unsupported(format!("cannot nest a {other} stage-1"))),
                };
                if !c.has(bit) {
                    return Err(PluginError::unsupported(format!("unit cannot nest a {} stage-1", s1.format)));
                }
                if s1.root.0 & !ADDR_MASK != 0 {
                    return Err(PluginError::invalid(format!("stage-1 root {} is not page aligned", s1.root)));
                }
                let w2 = parent.desc;
                (
                    desc::TYPE_NESTED,
                    Some(Table::Nested { parent, format: s1.format }),
                    s1.root.0,
                    w2,
                    fmt | (u64::from(vmid) << desc::VMID_SHIFT),
                )
            }
            other => return Err(PluginError::invalid(format!("unknown HWPT kind {}", other.0))),
        };
        let dpage = io.alloc()?;
        let table = match table {
            Some(t) => t,
            None => match new_table(io, c.page_sizes(), c.caps_ias(), c.params.defect) {
                Ok(t) => Table::Paging(t),
                Err(e) => {
                    io.free(dpage);
                    return Err(e);
                }
            },
        };
        let w1 = match &table {
            Table::Paging(t) => t.root,
            _ => w1,
        };
        // §4: words 1-3 first, word 0 (with TYPE) last.
        let write = || -> Result<(), PluginError> {
            io.wr(dpage + 8, w1)?;
            io.wr(dpage + 16, w2)?;
            io.wr(dpage + 24, w3)?;
            io.wr(dpage, w0 | ty)
        };
        let inner = Arc::new(HwptInner {
            core: self.core.clone(),
            desc: dpage,
            kind: req.kind,
            flags: f,
            table,
            lock: Mutex::new(()),
            children: Mutex::new(Vec::new()),
        });
        // On error, dropping `inner` frees the descriptor and table pages.
        write()?;
        if let Table::Nested { parent, .. } = &inner.table {
            parent.children.lock().unwrap_or_else(|p| p.into_inner()).push(Arc::downgrade(&inner));
        }
        Ok(MockHwpt(inner))
    }

    /// Our HWPT behind a box the host passed back (a parent), if this unit made it.
    pub(super) fn lookup(&self, hwpt: &HwptBox) -> Result<Arc<HwptInner>, PluginError> {
        self.own(ioasis::plugin::hwpt_of::<MockHwpt>(hwpt)?)
    }

    /// The HWPT, if this unit (not another unit of the plugin) made it.
    pub(super) fn own(&self, m: &MockHwpt) -> Result<Arc<HwptInner>, PluginError> {
        if Arc::ptr_eq(&m.0.core, &self.core) {
            Ok(m.0.clone())
        } else {
            Err(PluginError::not_found(format!("HWPT {:#x} was not made by unit {}", m.0.desc, self.name)))
        }
    }

    /// The device's entry, creating its level-2 page if needed (§2).
    fn dev_entry(&self, t: &mut Tables, id: u32) -> Result<u64, PluginError> {
        if id as u64 >= devtab::MAX_IDS {
            return Err(PluginError::new(
                ErrorCode::OUT_OF_RANGE,
                format!("device id {id:#x} beyond the device table"),
            ));
        }
        if let Some(d) = t.devices.get(&id) {
            return Ok(d.entry);
        }
        let l1_idx = devtab::l1_offset(id);
        let l2 = match t.l2.get(&l1_idx) {
            Some(p) => *p,
            None => {
                let p = self.core.io.alloc()?;
                if let Err(e) = self.core.io.wr(t.l1 + l1_idx, VALID | p) {
                    self.core.io.free(p);
                    return Err(e);
                }
                t.l2.insert(l1_idx, p);
                p
            }
        };
        let entry = l2
            + if self.core.params.defect == Some(Defect::DevtabDevfnHighBitDropped) {
                devtab::l2_offset(id & !0x80)
            } else {
                devtab::l2_offset(id)
            };
        t.devices.insert(id, DevState { entry, ..Default::default() });
        Ok(entry)
    }

    /// Offset of `pasid`'s entry in its table at `level` (§3).
    fn pasid_offset(&self, pasid: u32, level: u32) -> u64 {
        match self.core.params.defect {
            Some(Defect::PasidTableOffByOne) => pasidtab::offset(pasid, level + 1),
            _ => pasidtab::offset(pasid, level),
        }
    }

    /// The PASID table slot for `pasid`, building missing levels (§3).
    fn pasid_slot(&self, st: &mut DevState, pasid: u32, bits: u8) -> Result<u64, PluginError> {
        let io = &self.core.io;
        let mut fresh = Vec::new();
        let result = (|| {
            if st.pasid_pages.is_empty() {
                let root = io.alloc()?;
                fresh.push(root);
                st.pasid_pages.push(root);
                io.wr(st.entry + 8, root | (bits as u64 & devtab::PASID_BITS_MASK))?;
            }
            let mut table = st.pasid_pages[0];
            for level in (1..pasidtab::LEVELS).rev() {
                let slot = table + self.pasid_offset(pasid, level);
                let e = io.rd(slot)?;
                table = if e & VALID != 0 {
                    e & ADDR_MASK
                } else {
                    let t = io.alloc()?;
                    fresh.push(t);
                    st.pasid_pages.push(t);
                    io.wr(slot, VALID | t)?;
                    t
                };
            }
            Ok(table + self.pasid_offset(pasid, 0))
        })();
        if result.is_err() {
            // Unhook and free what this call built: its levels hold nothing yet.
            for &p in fresh.iter().rev() {
                st.pasid_pages.retain(|x| *x != p);
                self.unhook_pasid_page(st, p);
                io.free(p);
            }
        }
        result
    }

    fn unhook_pasid_page(&self, st: &DevState, page: u64) {
        let io = &self.core.io;
        if st.pasid_pages.is_empty() {
            let _ = io.wr(st.entry + 8, 0);
            return;
        }
        for &t in &st.pasid_pages {
            for i in 0..512u64 {
                if io.rd(t + i * 8).is_ok_and(|e| e & VALID != 0 && e & ADDR_MASK == page) {
                    let _ = io.wr(t + i * 8, 0);
                }
            }
        }
    }

    fn do_attach(&self, dev: &DeviceInfo, pasid: Option<u32>, hwpt: &MockHwpt) -> Result<(), PluginError> {
        if self.core.params.panic_on.as_deref() == Some("attach") {
            panic!("mock: injected panic in attach (params.panic_on)");
        }
        let h = self.own(hwpt)?;
        let io = &self.core.io;
        let id = dev.dev.table_index();
        let mut t = self.tables();
        if t.shut_down {
            return Err(PluginError::new(ErrorCode::BUSY, "unit is shut down"));
        }
        let had_entry = t.devices.contains_key(&id);
        let entry = self.dev_entry(&mut t, id)?;
        let mut flags = VALID;
        if dev.pri && self.core.has(cap::PRI) {
            flags |= devtab::PRI_EN;
        }
        if dev.ats && self.core.has(cap::ATS) {
            flags |= devtab::ATS_EN;
        }
        let st = t.devices.get_mut(&id).ok_or_else(|| PluginError::not_found("device state vanished"))?;
        let result = match pasid {
            None => {
                let w0 = io.rd(entry)?;
                // §2 word 0: one store switches the descriptor (atomic replace).
                io.wr(entry, (w0 & devtab::PASID_EN) | flags | h.desc)
            }
            Some(p) => {
                if !self.core.has(cap::PASID) {
                    return Err(PluginError::unsupported("unit has no PASID support"));
                }
                let bits = dev.pasid_bits.min(cap::pasid_bits(self.core.cap));
                if bits == 0 || p >= (1u32 << bits) {
                    return Err(PluginError::new(ErrorCode::OUT_OF_RANGE, format!("PASID {p:#x} beyond {bits} bits")));
                }
                self.pasid_slot(st, p, bits).and_then(|slot| {
                    io.wr(slot, VALID | h.desc)?;
                    let w0 = io.rd(entry)?;
                    let keep = w0 & ADDR_MASK;
                    io.wr(entry, keep | flags | devtab::PASID_EN)
                })
            }
        };
        let replace = st.attached.contains_key(&pasid);
        let skip = replace && self.core.params.defect == Some(Defect::ReplaceSkipsDeviceInvalidation);
        match result.and_then(|()| if skip { Ok(()) } else { io.invalidate(reg::INV_DEVICE, id as u64, 0, 0) }) {
            Ok(()) => {
                st.attached.insert(pasid, h);
                Ok(())
            }
            Err(e) => {
                if !had_entry && st.attached.is_empty() && st.pasid_pages.is_empty() {
                    let _ = io.wr(entry, 0);
                    t.devices.remove(&id);
                }
                Err(e)
            }
        }
    }

    fn do_detach(&self, dev: &DeviceInfo, pasid: Option<u32>) -> Result<(), PluginError> {
        let io = &self.core.io;
        let id = dev.dev.table_index();
        let mut t = self.tables();
        let st = t
            .devices
            .get_mut(&id)
            .filter(|s| s.attached.contains_key(&pasid))
            .ok_or_else(|| PluginError::not_found(format!("{} has nothing attached there", dev.dev)))?;
        match pasid {
            None => {
                let w0 = io.rd(st.entry)?;
                io.wr(st.entry, w0 & !ADDR_MASK)?;
            }
            Some(p) => {
                let mut table = st.pasid_pages[0];
                for level in (1..pasidtab::LEVELS).rev() {
                    table = io.rd(table + self.pasid_offset(p, level))? & ADDR_MASK;
                }
                io.wr(table + self.pasid_offset(p, 0), 0)?;
            }
        }
        io.invalidate(reg::INV_DEVICE, id as u64, 0, 0)?;
        st.attached.remove(&pasid);
        if !st.attached.keys().any(Option::is_some) && !st.pasid_pages.is_empty() {
            // Last PASID gone: drop the PASID table (§3) and PASID_EN.
            let w0 = io.rd(st.entry)?;
            io.wr(st.entry, w0 & !devtab::PASID_EN)?;
            io.wr(st.entry + 8, 0)?;
            io.invalidate(reg::INV_DEVICE, id as u64, 0, 0)?;
            for p in st.pasid_pages.drain(..) {
                io.free(p);
            }
        }
        if st.attached.is_empty() {
            io.wr(st.entry, 0)?;
            t.devices.remove(&id);
        }
        Ok(())
    }

    fn do_read_faults(&self, max: u32) -> Result<Vec<Fault>, PluginError> {
        let io = &self.core.io;
        let t = self.tables();
        let status = io.reg_rd(reg::STATUS)?;
        if status & reg::STATUS_FQOF != 0 {
            io.log(LogLevel::Warn, &format!("unit {}: fault queue overflowed, faults were lost", self.name));
            io.reg_wr(reg::CTRL, reg::CTRL_EN | reg::CTRL_FQEN | reg::CTRL_FQOF_CLEAR)?;
        }
        let mut head = (io.reg_rd(reg::FQ_HEAD)? as u32) % fault::ENTRIES;
        let tail = (io.reg_rd(reg::FQ_TAIL)? as u32) % fault::ENTRIES;
        let mut out = Vec::new();
        while head != tail && (out.len() as u32) < max {
            let rec = t.fault_queue + head as u64 * fault::SIZE;
            let w0 = io.rd(rec)?;
            let addr = io.rd(rec + 8)?;
            let group = io.rd(rec + 16)? as u32;
            let w3 = io.rd(rec + 24)?;
            let devid = w0 as u32;
            let mask = if self.core.params.defect == Some(Defect::FaultPasid19Bits) { 0x7ffff } else { 0xfffff };
            let pasid = (w0 & fault::PASID_V != 0).then_some(Pasid(((w0 >> fault::PASID_SHIFT) & mask) as u32));
            let access = Prot::new(w0 & fault::READ != 0, w0 & fault::WRITE != 0);
            out.push(Fault {
                dev: self.device_of(&t, devid),
                pasid: pasid.into(),
                addr: Iova(addr),
                access,
                reason: (w0 >> fault::REASON_SHIFT) as u32 | self.stage2_flag(w3),
                page_request: w0 & fault::PAGE_REQ != 0,
                group,
            });
            head = (head + 1) % fault::ENTRIES;
        }
        io.reg_wr(reg::FQ_HEAD, head as u64)?;
        Ok(out)
    }

    /// [`Fault::IN_PARENT`] when a record's word 3 has S2 (§6).
    fn stage2_flag(&self, w3: u64) -> u32 {
        let defect = self.core.params.defect == Some(Defect::Stage2FaultsUnflagged);
        if w3 & fault::S2 != 0 && !defect {
            Fault::IN_PARENT
        } else {
            0
        }
    }

    /// The mock unit sees only table indices; rebuild a requester id on segment 0.
    fn device_of(&self, _t: &Tables, id: u32) -> DeviceRef {
        let id = if self.core.params.defect == Some(Defect::WrongFaultSource) { id.wrapping_add(1) } else { id };
        if id <= 0xffff {
            DeviceRef::Rid(ioasis::RequesterId { segment: 0, bus: (id >> 8) as u8, devfn: id as u8 })
        } else {
            DeviceRef::Sid(id)
        }
    }

    fn do_shutdown(&self) -> Result<(), PluginError> {
        let io = &self.core.io;
        let mut t = self.tables();
        if t.shut_down {
            return Ok(());
        }
        io.reg_wr(reg::CTRL, 0)?;
        io.poll(reg::STATUS, "disable translation", |s| s & reg::STATUS_ENS == 0)?;
        io.reg_wr(reg::DEVTAB, 0)?;
        io.reg_wr(reg::FQ_BASE, 0)?;
        io.invalidate(reg::INV_ALL, 0, 0, 0)?;
        for (_, st) in t.devices.drain() {
            for p in st.pasid_pages {
                io.free(p);
            }
        }
        for (_, p) in t.l2.drain() {
            io.free(p);
        }
        if t.vm_table != 0 {
            io.reg_wr(reg::VMTAB, 0)?;
            io.free(t.vm_table);
            t.vm_table = 0;
        }
        for (_, p) in t.vms.drain() {
            io.free(p);
        }
        io.free(t.l1);
        io.free(t.fault_queue);
        t.shut_down = true;
        Ok(())
    }
}

impl UnitDriver for MockUnit {
    type Hwpt = MockHwpt;
    type Viommu = super::viommu::MockViommu;

    fn caps(&self) -> UnitCaps {
        let c = &self.core;
        let mut features = Features(0);
        for (bit, f) in [
            (cap::PASID, Features::PASID),
            (cap::NEST, Features::NESTING),
            (cap::DIRTY, Features::DIRTY_TRACKING),
            (cap::PRI, Features::PAGE_FAULTS),
            (cap::ATS, Features::ATS),
            (cap::COHERENCY, Features::COHERENCY),
            (cap::ENQCMD, Features::ENQCMD),
            (cap::IDENTITY, Features::IDENTITY),
        ] {
            if c.has(bit) {
                features = features.with(f);
            }
        }
        let mut nested = RVec::new();
        if c.has(cap::NEST) && c.has(cap::S1_X86_64) {
            nested.push(PtFormat::X86_64);
        }
        if c.has(cap::NEST) && c.has(cap::S1_MOCK) {
            nested.push(PtFormat::MOCK);
        }
        UnitCaps {
            model: RString::from(format!("mock unit rev 1 (CAP {:#x})", c.cap)),
            paging_format: PtFormat::MOCK,
            page_sizes: c.page_sizes(),
            ias_bits: cap::ias(c.cap),
            oas_bits: cap::oas(c.cap),
            pasid_bits: if c.has(cap::PASID) { cap::pasid_bits(c.cap) } else { 0 },
            features,
            nested_formats: nested,
        }
    }

    fn negotiate(&self, dev: &DeviceInfo, items: &[IntentCode]) -> Vec<ItemVerdict> {
        items.iter().map(|c| self.judge(dev, *c)).collect()
    }

    fn alloc_hwpt(&self, req: &HwptRequest) -> Result<MockHwpt, PluginError> {
        self.alloc(req)
    }

    fn attach(&self, dev: &DeviceInfo, pasid: Option<Pasid>, hwpt: &MockHwpt) -> Result<(), PluginError> {
        self.do_attach(dev, pasid.map(|p| p.0), hwpt)
    }

    fn detach(&self, dev: &DeviceInfo, pasid: Option<Pasid>) -> Result<(), PluginError> {
        self.do_detach(dev, pasid.map(|p| p.0))
    }

    fn read_faults(&self, max: u32) -> Result<Vec<Fault>, PluginError> {
        self.do_read_faults(max)
    }

    fn page_response(&self, resp: &PageResponse) -> Result<(), PluginError> {
        let mut dev_word = resp.dev.table_index() as u64;
        if let ROption::RSome(p) = resp.pasid {
            dev_word |= ((p.0 as u64) << 32) | (1 << 63);
        }
        let cmd = if self.core.params.defect == Some(Defect::PageResponseFieldsSwapped) {
            resp.code as u64 | ((resp.group as u64 & 0xf) << 32)
        } else {
            resp.group as u64 | ((resp.code as u64 & 0xf) << 32)
        };
        self.core.io.page_response(dev_word, cmd)
    }

    fn table_pages(&self) -> u64 {
        let t = self.tables();
        if t.shut_down {
            return 0;
        }
        2 + t.l2.len() as u64
            + t.devices.values().map(|d| d.pasid_pages.len() as u64).sum::<u64>()
            + u64::from(t.vm_table != 0)
            + t.vms.len() as u64
    }

    fn shutdown(&self) -> Result<(), PluginError> {
        self.do_shutdown()
    }

    /// A vIOMMU on this unit (mock spec §7).
    fn alloc_viommu(&self, req: &ViommuRequest) -> Result<super::viommu::MockViommu, PluginError> {
        super::viommu::MockViommu::alloc(self.handle(), req)
    }
}
