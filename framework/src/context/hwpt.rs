//! Allocating HWPTs and using them directly: dirty tracking, nested cache invalidation.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use abi_stable::std_types::{ROption, RVec};

use crate::abi::{CacheInvalidation, HwptFlags, HwptInfo, HwptKind, HwptRequest, Stage1Config, Translation};
use crate::addr::{AddressSpace, Iova};
use crate::error::{Error, Result};
use crate::format::PtFormat;
use crate::object::{FaultQueueId, HwptId, IoasId, UnitId, ViommuId};
use crate::prot::Prot;

use super::{bad_answer, lock, plugin_err, Context, HwptObj, IoasObj, UnitObj};

/// What HWPT to allocate.
#[derive(Clone, Debug)]
pub enum HwptSpec {
    /// A paging table kept in step with `ioas`.
    Paging {
        /// The IOAS it realises.
        ioas: IoasId,
        /// Dirty tracking, coherency.
        flags: HwptFlags,
        /// Where page requests go (sets [`HwptFlags::PAGE_FAULTS`]).
        fault_queue: Option<FaultQueueId>,
    },
    /// A user stage-1 over a paging parent.
    Nested {
        /// The paging parent.
        parent: HwptId,
        /// Format and root of the stage-1.
        format: PtFormat,
        /// The stage-1 root, an address in the parent's IOVA space.
        root: Iova,
        /// Format-specific words.
        words: Vec<u64>,
        /// Where page requests go.
        fault_queue: Option<FaultQueueId>,
    },
    /// A guest's stage-1 allocated in a vIOMMU, over the vIOMMU's parent (interface 0.3).
    NestedIn {
        /// The vIOMMU.
        viommu: ViommuId,
        /// Format of the stage-1.
        format: PtFormat,
        /// The stage-1 root, an address in the parent's IOVA space.
        root: Iova,
        /// Format-specific words.
        words: Vec<u64>,
        /// Where page requests go.
        fault_queue: Option<FaultQueueId>,
    },
    /// Blocks all DMA.
    Blocking,
    /// Untranslated DMA.
    Identity,
}

impl Context {
    /// Allocates a HWPT on `unit`. A paging HWPT gets every current mapping of its IOAS.
    pub fn alloc_hwpt(&self, unit: UnitId, spec: HwptSpec) -> Result<HwptId> {
        let _c = self.control();
        let unit = self.unit(unit)?;
        self.alloc_hwpt_locked(&unit, spec, false).map(|h| h.id)
    }

    pub(super) fn alloc_hwpt_locked(&self, unit: &Arc<UnitObj>, spec: HwptSpec, auto: bool) -> Result<Arc<HwptObj>> {
        let mut ioas: Option<Arc<IoasObj>> = None;
        let mut parent: Option<Arc<HwptObj>> = None;
        let mut queue = None;
        if let HwptSpec::NestedIn { viommu, format, root, words, fault_queue } = spec {
            return self.alloc_nested_in(
                unit,
                viommu,
                Stage1Config { format, root, words: RVec::from(words) },
                fault_queue,
            );
        }
        let req = match spec {
            HwptSpec::Paging { ioas: id, mut flags, fault_queue } => {
                let known = HwptFlags::DIRTY_TRACKING.0 | HwptFlags::COHERENCY.0 | HwptFlags::PAGE_FAULTS.0;
                if flags.0 & !known != 0 {
                    return Err(Error::UnknownBits { what: "HWPT flags", bits: (flags.0 & !known).into() });
                }
                if flags.contains(HwptFlags::PAGE_FAULTS) && fault_queue.is_none() {
                    return Err(Error::UnknownBits {
                        what: "HWPT flags (PAGE_FAULTS comes with a fault queue)",
                        bits: HwptFlags::PAGE_FAULTS.0.into(),
                    });
                }
                let obj = self.ioas(id)?;
                let space = obj.space;
                ioas = Some(obj);
                if let Some(q) = fault_queue {
                    queue = Some(self.queue(q)?);
                    flags = HwptFlags(flags.0 | HwptFlags::PAGE_FAULTS.0);
                }
                HwptRequest { kind: HwptKind::PAGING, flags, parent: ROption::RNone, stage1: ROption::RNone, space }
            }
            HwptSpec::Nested { parent: pid, format, root, words, fault_queue } => {
                let p = self.hwpt(pid)?;
                if p.info.kind != HwptKind::PAGING {
                    return Err(Error::Invalid(format!(
                        "HWPT {pid} is {}, a nested parent must be paging",
                        p.info.kind.name()
                    )));
                }
                if !Arc::ptr_eq(&p.unit, unit) {
                    return Err(Error::Invalid(format!(
                        "parent HWPT {pid} is on unit {}, not {}",
                        p.unit.name, unit.name
                    )));
                }
                let mut flags = HwptFlags::default();
                if let Some(q) = fault_queue {
                    queue = Some(self.queue(q)?);
                    flags = HwptFlags::PAGE_FAULTS;
                }
                let req = HwptRequest {
                    kind: HwptKind::NESTED,
                    flags,
                    parent: ROption::RSome(p.hw.clone()),
                    stage1: ROption::RSome(Stage1Config { format, root, words: RVec::from(words) }),
                    space: p.ioas.as_ref().map_or(AddressSpace::host(), |i| i.space),
                };
                parent = Some(p);
                req
            }
            HwptSpec::Blocking => HwptRequest {
                kind: HwptKind::BLOCKING,
                flags: HwptFlags::default(),
                parent: ROption::RNone,
                stage1: ROption::RNone,
                space: AddressSpace::host(),
            },
            HwptSpec::NestedIn { .. } => unreachable!("handled above"),
            HwptSpec::Identity => HwptRequest {
                kind: HwptKind::IDENTITY,
                flags: HwptFlags::default(),
                parent: ROption::RNone,
                stage1: ROption::RNone,
                space: AddressSpace::host(),
            },
        };
        let (flags, kind) = (req.flags, req.kind);
        let hw = unit.hw.alloc_hwpt(&req).into_result().map_err(|e| plugin_err(unit, "alloc_hwpt", e))?;
        drop(req);
        let info = hw.info();
        // On a bad answer the returned HWPT is dropped here: the backend frees it.
        if info.kind != kind {
            return Err(bad_answer(
                unit,
                "alloc_hwpt",
                format!("a {} HWPT for a {} request", info.kind.name(), kind.name()),
            ));
        }
        if matches!(kind, HwptKind::PAGING | HwptKind::NESTED) && info.page_sizes.min().is_none() {
            return Err(bad_answer(unit, "alloc_hwpt", format!("a {} HWPT with no page size", kind.name())));
        }
        let obj = Arc::new(HwptObj {
            id: HwptId(self.new_id()),
            unit: unit.clone(),
            hw,
            info,
            flags,
            ioas: ioas.clone(),
            parent,
            auto,
            fault_queue: queue,
            users: Mutex::new(BTreeSet::new()),
            viommu: None,
            dirty_tracking: Mutex::new(false),
        });
        if let Some(ioas) = &ioas {
            let mut list = ioas.hwpts.write().unwrap_or_else(|p| p.into_inner());
            // No map or unmap runs now: replay every area into the new table.
            let areas: Vec<_> = lock(&ioas.map).areas().copied().collect();
            if let Some(a) = areas.iter().find(|a| !obj.info.aperture.contains_range(&a.range)) {
                return Err(Error::OutOfAperture { range: a.range, allowed: format!("[{}]", obj.info.aperture) });
            }
            // Every area must suit the new table's smallest page (iopt_check_iova_alignment).
            let align = obj.info.page_sizes.min().unwrap_or(crate::PAGE_SIZE);
            let off = |v: u64| v % align != 0;
            if let Some(a) = areas.iter().find(|a| off(a.range.start.0) || off(a.range.len()) || off(a.pa.0)) {
                return Err(Error::AreaUnaligned { area: a.range, pa: a.pa, align });
            }
            for (i, a) in areas.iter().enumerate() {
                if let Err(e) = obj.hw.map(a.range.start, a.pa, a.range.len(), a.prot).into_result() {
                    for done in &areas[..i] {
                        let _ = obj.hw.unmap(done.range.start, done.range.len());
                    }
                    return Err(plugin_err(unit, "map (replay)", e));
                }
            }
            list.push(obj.clone());
        }
        self.write().hwpts.insert(obj.id.0, obj.clone());
        Ok(obj)
    }

    fn alloc_nested_in(
        &self,
        unit: &Arc<UnitObj>,
        viommu: ViommuId,
        stage1: Stage1Config,
        fault_queue: Option<FaultQueueId>,
    ) -> Result<Arc<HwptObj>> {
        let v = self.viommu(viommu)?;
        if !Arc::ptr_eq(&v.unit, unit) {
            return Err(Error::Invalid(format!("vIOMMU {viommu} is on unit {}, not {}", v.unit.name, unit.name)));
        }
        let (queue, flags) = match fault_queue {
            Some(q) => (Some(self.queue(q)?), HwptFlags::PAGE_FAULTS),
            None => (None, HwptFlags::default()),
        };
        let hw = v.hw.alloc_nested(flags, &stage1).into_result().map_err(|e| plugin_err(unit, "alloc_nested", e))?;
        let info = hw.info();
        if info.kind != HwptKind::NESTED || info.format != stage1.format {
            return Err(Error::BadAnswer {
                plugin: unit.plugin.name.clone(),
                unit: unit.name.clone(),
                op: "alloc_nested",
                what: format!("asked for a nested {} HWPT, got {} {}", stage1.format, info.kind.name(), info.format),
            });
        }
        let obj = Arc::new(HwptObj {
            id: HwptId(self.new_id()),
            unit: unit.clone(),
            hw,
            info,
            flags,
            ioas: None,
            parent: Some(v.parent.clone()),
            auto: false,
            fault_queue: queue,
            users: Mutex::new(BTreeSet::new()),
            viommu: Some(v),
            dirty_tracking: Mutex::new(false),
        });
        self.write().hwpts.insert(obj.id.0, obj.clone());
        Ok(obj)
    }

    /// The vIOMMU a nested HWPT was allocated in, if any.
    pub fn hwpt_viommu(&self, hwpt: HwptId) -> Result<Option<ViommuId>> {
        Ok(self.hwpt(hwpt)?.viommu.as_ref().map(|v| v.id))
    }

    /// What the backend built.
    pub fn hwpt_info(&self, hwpt: HwptId) -> Result<HwptInfo> {
        Ok(self.hwpt(hwpt)?.info.clone())
    }

    /// Table pages the backends say this context's units and HWPTs hold, summed: with the
    /// context alone on its platform, what [`Context::table_pages`] counts if each backend
    /// accounts for every page it allocated (the conformance suite checks it after each case).
    pub fn accounted_table_pages(&self) -> u64 {
        let (units, hwpts): (Vec<_>, Vec<_>) = {
            let o = self.read();
            (o.units.values().cloned().collect(), o.hwpts.values().cloned().collect())
        };
        units.iter().map(|u| u.hw.table_pages()).sum::<u64>() + hwpts.iter().map(|h| h.hw.table_pages()).sum::<u64>()
    }

    /// Table pages a HWPT holds, as its backend counts them.
    pub fn hwpt_table_pages(&self, hwpt: HwptId) -> Result<u64> {
        Ok(self.hwpt(hwpt)?.hw.table_pages())
    }

    /// The HWPT's translation of one address, read from its table.
    pub fn translate(&self, hwpt: HwptId, iova: Iova) -> Result<Option<Translation>> {
        let h = self.hwpt(hwpt)?;
        let t = h.hw.translate(iova).into_option();
        if let Some(t) = &t {
            if t.prot.0 & !Prot::RW.0 != 0 {
                return Err(bad_answer(&h.unit, "translate", format!("unknown permission bits {:#x}", t.prot.0)));
            }
        }
        Ok(t)
    }

    /// The HWPTs that realise an IOAS (paging tables kept in step with it).
    pub fn ioas_hwpts(&self, ioas: IoasId) -> Result<Vec<HwptId>> {
        let ioas = self.ioas(ioas)?;
        let list = ioas.hwpts.read().unwrap_or_else(|p| p.into_inner());
        Ok(list.iter().map(|h| h.id).collect())
    }

    /// Turns dirty tracking on or off (the HWPT must be allocated with
    /// [`HwptFlags::DIRTY_TRACKING`]). Turning it on starts clean: the dirty bits of every area
    /// of the IOAS are cleared first, so that nothing written before is ever reported. Setting
    /// the state it has already is a no-op.
    pub fn set_dirty_tracking(&self, hwpt: HwptId, enable: bool) -> Result<()> {
        let _c = self.control();
        let h = self.hwpt(hwpt)?;
        if !h.flags.contains(HwptFlags::DIRTY_TRACKING) {
            return Err(Error::Invalid(format!("HWPT {hwpt} was not allocated with dirty tracking")));
        }
        let mut on = lock(&h.dirty_tracking);
        if *on == enable {
            return Ok(());
        }
        if enable {
            clear_dirty(&h)?;
        }
        h.hw.set_dirty_tracking(enable).into_result().map_err(|e| plugin_err(&h.unit, "set_dirty_tracking", e))?;
        *on = enable;
        tracing::debug!(%hwpt, enable, "dirty tracking");
        Ok(())
    }

    /// Reads the dirty bits of `[iova, iova+len)` into a bitmap (bit `i` = page `i` of
    /// `page_size` bytes) and clears them unless `keep`. Refused
    /// ([`Error::DirtyTrackingOff`]) while the HWPT is not tracking; the range must lie in the
    /// HWPT's aperture ([`Error::OutOfAperture`]) and cover at most [`MAX_DIRTY_BITS`] pages
    /// ([`Error::TooLarge`]), checked before the bitmap is allocated.
    pub fn read_dirty(&self, hwpt: HwptId, iova: Iova, len: u64, page_size: u64, keep: bool) -> Result<Vec<u64>> {
        let h = self.hwpt(hwpt)?;
        if !*lock(&h.dirty_tracking) {
            return Err(Error::DirtyTrackingOff { hwpt: hwpt.0 });
        }
        if !page_size.is_power_of_two() || page_size < crate::PAGE_SIZE {
            return Err(Error::Unaligned { what: "dirty page size", value: page_size, align: crate::PAGE_SIZE });
        }
        let range = crate::ioas::user_range(iova, len)?;
        if iova.0 % page_size != 0 || len % page_size != 0 {
            return Err(Error::Unaligned { what: "dirty range", value: iova.0 | len, align: page_size });
        }
        if !h.info.aperture.contains_range(&range) {
            return Err(Error::OutOfAperture { range, allowed: format!("[{}]", h.info.aperture) });
        }
        let pages = len / page_size;
        if pages > MAX_DIRTY_BITS {
            return Err(Error::TooLarge { what: "dirty bitmap (pages)", len: pages, max: MAX_DIRTY_BITS });
        }
        let words = usize::try_from(pages.div_ceil(64)).map_err(|_| Error::Invalid("bitmap too large".into()))?;
        let mut bitmap = vec![0u64; words];
        let shift = page_size.trailing_zeros() as u8;
        h.hw.read_and_clear_dirty(iova, len, shift, bitmap.as_mut_slice().into(), keep)
            .into_result()
            .map_err(|e| plugin_err(&h.unit, "read_and_clear_dirty", e))?;
        Ok(bitmap)
    }

    /// Passes stage-1 cache invalidations of a nested HWPT to its backend. Returns how many
    /// requests were handled.
    pub fn invalidate(&self, hwpt: HwptId, reqs: &[CacheInvalidation]) -> Result<u32> {
        let h = self.hwpt(hwpt)?;
        if h.info.kind != HwptKind::NESTED {
            return Err(Error::Invalid(format!("HWPT {hwpt} is {}, not nested", h.info.kind.name())));
        }
        if let Some(r) = reqs
            .iter()
            .find(|r| !matches!(r.scope, CacheInvalidation::ALL | CacheInvalidation::RANGE | CacheInvalidation::PASID))
        {
            return Err(Error::UnknownBits { what: "cache invalidation scope", bits: r.scope.into() });
        }
        h.hw.invalidate(reqs.into()).into_result().map_err(|e| plugin_err(&h.unit, "invalidate", e))
    }
}

/// Pages one [`Context::read_dirty`] call reports on: 2^30, a 128 MiB bitmap (4 TiB of IOVA at
/// 4 KiB pages). Larger ranges are read in several calls.
pub const MAX_DIRTY_BITS: u64 = 1 << 30;

/// Bytes of IOVA cleared per backend call when dirty tracking goes on: 1 GiB, so that the
/// scratch bitmap is 4096 words at 4 KiB pages however large the areas are.
const CLEAR_CHUNK: u64 = 1 << 30;

/// Clears `h`'s dirty bits over every area of its IOAS, with no map or unmap running.
fn clear_dirty(h: &HwptObj) -> Result<()> {
    let Some(ioas) = &h.ioas else { return Ok(()) };
    let _no_map = ioas.hwpts.write().unwrap_or_else(|p| p.into_inner());
    let areas: Vec<_> = lock(&ioas.map).areas().map(|a| a.range).collect();
    let shift = crate::addr::PAGE_SHIFT as u8;
    let mut scratch = vec![0u64; (CLEAR_CHUNK >> shift).div_ceil(64) as usize];
    for r in areas {
        let mut at = r.start.0;
        let mut left = r.len();
        while left > 0 {
            let n = left.min(CLEAR_CHUNK);
            let words = (n >> shift).div_ceil(64) as usize;
            h.hw.read_and_clear_dirty(Iova(at), n, shift, (&mut scratch[..words]).into(), false)
                .into_result()
                .map_err(|e| plugin_err(&h.unit, "read_and_clear_dirty", e))?;
            at = at.wrapping_add(n);
            left -= n;
        }
    }
    Ok(())
}
