//! A domain as a paging HWPT: map and unmap pass MMIO ranges through with
//! `XEN_DOMCTL_iomem_permission` and `XEN_DOMCTL_memory_mapping`.
//!
//! Xen's p2m is Xen's: dom0 cannot read it, so [`HwptDriver::translate`] answers from what this HWPT
//! asked Xen to map (Xen either did it or failed the call; nothing else changes it from here).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ioasis::abi::{CacheInvalidation, ErrorCode, HwptInfo, HwptKind, PluginError, Translation};
use ioasis::format::PtFormat;
use ioasis::plugin::HwptDriver;
use ioasis::{Iova, IovaRange, PageSizes, PhysAddr, Prot, PAGE_SIZE};

use super::plugin_error;
use crate::{DomId, Xen};

/// One range this HWPT asked Xen to map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Passthrough {
    pa: u64,
    len: u64,
}

struct Inner {
    xen: Arc<Xen>,
    info: HwptInfo,
    /// The domain (paging) or `None` (blocking).
    domid: Option<DomId>,
    /// Mapped ranges by IOVA (guest-physical); never overlapping.
    maps: Mutex<BTreeMap<u64, Passthrough>>,
}

/// A domain's guest-physical space, or the blocking table (see the module docs).
#[derive(Clone)]
pub struct DomainHwpt(Arc<Inner>);

/// Highest guest-physical address Xen's x86 p2m takes (52-bit frame numbers).
const APERTURE_LAST: u64 = (1 << 52) - 1;

fn unsupported(what: &str) -> PluginError {
    PluginError::new(ErrorCode::UNSUPPORTED, what)
}

impl DomainHwpt {
    pub(crate) fn paging(xen: Arc<Xen>, domid: DomId) -> Self {
        Self::new(xen, Some(domid), HwptKind::PAGING, domid as u64)
    }

    pub(crate) fn blocking(xen: Arc<Xen>, handle: u64) -> Self {
        Self::new(xen, None, HwptKind::BLOCKING, handle)
    }

    fn new(xen: Arc<Xen>, domid: Option<DomId>, kind: HwptKind, handle: u64) -> Self {
        let info = HwptInfo {
            kind,
            format: if domid.is_some() { PtFormat::HYPERVISOR_P2M } else { PtFormat::NONE },
            page_sizes: PageSizes::SZ_4K,
            aperture: IovaRange { start: Iova(0), last: Iova(APERTURE_LAST) },
            handle,
        };
        Self(Arc::new(Inner { xen, info, domid, maps: Mutex::new(BTreeMap::new()) }))
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Passthrough>> {
        self.0.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn domid(&self) -> Result<DomId, PluginError> {
        self.0.domid.ok_or_else(|| unsupported("the blocking table maps nothing"))
    }

    fn do_map(&self, iova: Iova, pa: PhysAddr, len: u64, prot: Prot) -> Result<(), PluginError> {
        let dom = self.domid()?;
        if prot != Prot::RW {
            return Err(unsupported(
                "Xen maps passed-through ranges read-write only (XEN_DOMCTL_memory_mapping takes no permissions)",
            ));
        }
        if len == 0 || !iova.is_aligned(PAGE_SIZE) || !pa.is_aligned(PAGE_SIZE) || len % PAGE_SIZE != 0 {
            return Err(PluginError::new(ErrorCode::INVALID, "Xen maps whole 4 KiB frames"));
        }
        let last = iova.raw().checked_add(len - 1).filter(|l| *l <= APERTURE_LAST);
        let Some(last) = last else {
            return Err(PluginError::new(ErrorCode::OUT_OF_RANGE, "beyond Xen's 52-bit guest frame numbers"));
        };
        let mut maps = self.maps();
        if maps.range(..=last).next_back().is_some_and(|(s, m)| s + m.len > iova.raw()) {
            return Err(PluginError::new(ErrorCode::EXISTS, format!("{iova} is mapped already")));
        }
        let (gfn, mfn, nr) = (iova.raw() >> 12, pa.raw() >> 12, len >> 12);
        let xen = &self.0.xen;
        xen.iomem_permission(dom, mfn, nr, true).map_err(|e| plugin_error("iomem_permission", &e))?;
        if let Err(e) = xen.memory_mapping(dom, gfn, mfn, nr, true) {
            if let Err(undo) = xen.iomem_permission(dom, mfn, nr, false) {
                tracing::error!(dom, mfn, nr, error = %undo, "revoking iomem permission after a failed mapping");
            }
            return Err(plugin_error("memory_mapping", &e));
        }
        tracing::debug!(dom, gfn, mfn, nr, "MMIO passed through");
        maps.insert(iova.raw(), Passthrough { pa: pa.raw(), len });
        Ok(())
    }

    /// The pieces of mapped ranges inside `[start, end)`: (iova, pa, len).
    fn pieces(maps: &BTreeMap<u64, Passthrough>, start: u64, end: u64) -> Vec<(u64, u64, u64)> {
        let first = maps.range(..start).next_back().filter(|(s, m)| *s + m.len > start).map(|(s, _)| *s);
        let from = first.unwrap_or(start);
        maps.range(from..end)
            .map(|(s, m)| {
                let lo = (*s).max(start);
                let hi = (s + m.len).min(end);
                (lo, m.pa + (lo - s), hi - lo)
            })
            .collect()
    }

    fn do_unmap(&self, iova: Iova, len: u64) -> Result<u64, PluginError> {
        let dom = self.domid()?;
        let Some(end) = iova.raw().checked_add(len) else {
            return Err(PluginError::new(ErrorCode::OUT_OF_RANGE, "range overflows"));
        };
        if !iova.is_aligned(PAGE_SIZE) || len % PAGE_SIZE != 0 {
            return Err(PluginError::new(ErrorCode::INVALID, "Xen unmaps whole 4 KiB frames"));
        }
        let mut maps = self.maps();
        let pieces = Self::pieces(&maps, iova.raw(), end);
        let xen = &self.0.xen;
        for (i, &(gfn, mfn, n)) in pieces.iter().enumerate() {
            if let Err(e) = xen.memory_mapping(dom, gfn >> 12, mfn >> 12, n >> 12, false) {
                // All or nothing: put back what this call removed.
                for &(g, m, k) in &pieces[..i] {
                    if let Err(undo) = xen.memory_mapping(dom, g >> 12, m >> 12, k >> 12, true) {
                        tracing::error!(dom, gfn = g >> 12, error = %undo, "re-mapping after a failed unmap");
                    }
                }
                return Err(plugin_error("memory_mapping (remove)", &e));
            }
        }
        let mut total = 0;
        for &(g, m, n) in &pieces {
            if let Err(e) = xen.iomem_permission(dom, m >> 12, n >> 12, false) {
                tracing::warn!(dom, mfn = m >> 12, error = %e, "revoking iomem permission");
            }
            // Split the record around the removed piece.
            let (&s, &old) = maps.range(..=g).next_back().expect("a piece lies in a recorded range");
            maps.remove(&s);
            if s < g {
                maps.insert(s, Passthrough { pa: old.pa, len: g - s });
            }
            if g + n < s + old.len {
                maps.insert(g + n, Passthrough { pa: old.pa + (g + n - s), len: s + old.len - (g + n) });
            }
            total += n;
        }
        Ok(total)
    }

    fn do_translate(&self, iova: Iova) -> Option<Translation> {
        let maps = self.maps();
        let (s, m) = maps.range(..=iova.raw()).next_back()?;
        (iova.raw() < s + m.len).then(|| Translation {
            pa: PhysAddr(m.pa + (iova.raw() - s)),
            prot: Prot::RW,
            page_size: PAGE_SIZE,
        })
    }
}

impl HwptDriver for DomainHwpt {
    fn info(&self) -> HwptInfo {
        self.0.info.clone()
    }

    fn map(&self, iova: Iova, pa: PhysAddr, len: u64, prot: Prot) -> Result<(), PluginError> {
        self.do_map(iova, pa, len, prot)
    }

    fn unmap(&self, iova: Iova, len: u64) -> Result<u64, PluginError> {
        self.do_unmap(iova, len)
    }

    fn split(&self, _iova: Iova) -> Result<(), PluginError> {
        // Xen splits its own superpages when a frame range is removed.
        Ok(())
    }

    fn translate(&self, iova: Iova) -> Option<Translation> {
        self.do_translate(iova)
    }

    fn set_dirty_tracking(&self, _enable: bool) -> Result<(), PluginError> {
        Err(unsupported("Xen 4.17 gives dom0 no dirty log of device writes"))
    }

    fn read_and_clear_dirty(
        &self,
        _iova: Iova,
        _len: u64,
        _page_shift: u8,
        _bitmap: &mut [u64],
        _keep: bool,
    ) -> Result<(), PluginError> {
        Err(unsupported("Xen 4.17 gives dom0 no dirty log of device writes"))
    }

    fn invalidate(&self, _reqs: &[CacheInvalidation]) -> Result<u32, PluginError> {
        Err(unsupported("Xen keeps its IOTLB in step with the p2m itself; there is no stage-1 here"))
    }

    fn table_pages(&self) -> u64 {
        0
    }
}
