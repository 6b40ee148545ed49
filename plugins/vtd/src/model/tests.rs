//! Tables built by hand in a sparse test memory, checked against the model.

use std::cell::Cell;
use std::collections::HashMap;

use ioasis::{Iova, Pasid, RequesterId};

use super::*;
use crate::layout::fault::{frcd, reason_sm};
use crate::layout::qi;
use crate::layout::regs::{ccmd, fsts, iotlb, iqa, off, prs, ICS_IWC};
use crate::layout::tables::{fl, sl};

/// Sparse memory of u64 words below 4 GiB; absent words read as 0, or as a hash of their
/// address when `chaos` is set (hostile memory).
struct Mem {
    words: Mutex<HashMap<u64, u64>>,
    chaos: bool,
}

const LIMIT: u64 = 1 << 32;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Mem {
    fn new() -> Self {
        Self { words: Mutex::new(HashMap::new()), chaos: false }
    }
    fn check(pa: u64, len: u64) -> Result<(), HostError> {
        match pa.checked_add(len) {
            Some(end) if end <= LIMIT => Ok(()),
            _ => Err(HostError::new(HostError::BAD_ADDRESS, pa)),
        }
    }
    fn get(&self, w: &HashMap<u64, u64>, pa: u64) -> u64 {
        let chaos = || {
            // Mostly present, with addresses inside memory, so that walks go deep.
            let h = splitmix(pa);
            (h & 0xff00_0000_ffff_ffff) | if (h >> 40) & 7 != 0 { 1 } else { 0 }
        };
        w.get(&pa).copied().unwrap_or_else(|| if self.chaos { chaos() } else { 0 })
    }
    fn update(&self, pa: PhysAddr, f: impl FnOnce(u64) -> u64) -> Result<u64, HostError> {
        if !pa.is_aligned(8) {
            return Err(HostError::new(HostError::BAD_ADDRESS, pa.raw()));
        }
        Self::check(pa.raw(), 8)?;
        let mut w = self.words.lock().unwrap();
        let old = self.get(&w, pa.raw());
        w.insert(pa.raw(), f(old));
        Ok(old)
    }
    fn w(&self, pa: u64, v: u64) {
        self.write_u64(PhysAddr(pa), v).unwrap();
    }
    fn r(&self, pa: u64) -> u64 {
        self.read_u64(PhysAddr(pa)).unwrap()
    }
}

impl PhysMemory for Mem {
    fn read(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<(), HostError> {
        Self::check(pa.raw(), buf.len() as u64)?;
        let w = self.words.lock().unwrap();
        for (i, b) in buf.iter_mut().enumerate() {
            let a = pa.raw() + i as u64;
            *b = (self.get(&w, a & !7) >> ((a % 8) * 8)) as u8;
        }
        Ok(())
    }
    fn write(&self, pa: PhysAddr, data: &[u8]) -> Result<(), HostError> {
        Self::check(pa.raw(), data.len() as u64)?;
        let mut w = self.words.lock().unwrap();
        for (i, b) in data.iter().enumerate() {
            let a = pa.raw() + i as u64;
            let shift = (a % 8) * 8;
            let old = self.get(&w, a & !7);
            w.insert(a & !7, (old & !(0xff << shift)) | (u64::from(*b) << shift));
        }
        Ok(())
    }
    fn read_u64(&self, pa: PhysAddr) -> Result<u64, HostError> {
        if !pa.is_aligned(8) {
            return Err(HostError::new(HostError::BAD_ADDRESS, pa.raw()));
        }
        Self::check(pa.raw(), 8)?;
        let w = self.words.lock().unwrap();
        Ok(self.get(&w, pa.raw()))
    }
    fn write_u64(&self, pa: PhysAddr, value: u64) -> Result<(), HostError> {
        self.update(pa, |_| value).map(|_| ())
    }
    fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> Result<u64, HostError> {
        self.update(pa, |o| o | bits)
    }
    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> Result<u64, HostError> {
        self.update(pa, |o| o & mask)
    }
}

/// A unit, its memory, and a page allocator for tables.
struct Rig {
    m: VtdModel,
    mem: Mem,
    next: Cell<u64>,
}

const ROOT: u64 = 0x1000;
const CTX: u64 = 0x2000;
const CTX_HI: u64 = 0x3000;

impl Rig {
    fn new(cfg: VtdModelConfig) -> Self {
        Self { m: VtdModel::new(cfg).unwrap(), mem: Mem::new(), next: Cell::new(0x10_0000) }
    }
    fn page(&self) -> u64 {
        let p = self.next.get();
        self.next.set(p + 0x1000);
        p
    }
    fn wr(&self, offset: u64, v: u64) {
        self.m.mmio_write(&self.mem, offset, 8, v).unwrap();
    }
    fn wr32(&self, offset: u64, v: u64) {
        self.m.mmio_write(&self.mem, offset, 4, v).unwrap();
    }
    fn rd(&self, offset: u64) -> u64 {
        self.m.mmio_read(&self.mem, offset, 8).unwrap()
    }
    fn rd32(&self, offset: u64) -> u32 {
        self.m.mmio_read(&self.mem, offset, 4).unwrap() as u32
    }
    /// Root table at ROOT in `ttm`, SRTP, TE.
    fn enable(&self, ttm: u64) {
        self.wr(off::RTADDR, ROOT | ttm);
        self.wr32(off::GCMD, u64::from(gcmd::SRTP));
        assert_ne!(self.rd32(off::GSTS) & gcmd::SRTP, 0, "RTPS");
        self.wr32(off::GCMD, u64::from(gcmd::TE));
        assert_ne!(self.rd32(off::GSTS) & gcmd::TE, 0, "TES");
    }
    /// A legacy context entry for bus 0 `devfn`: second-level table `slpt`, `aw`, `did`, `tt`.
    fn legacy_ctx(&self, devfn: u8, slpt: u64, aw: u64, did: u16, tt: u64) {
        self.mem.w(ROOT, root::lo(CTX));
        let at = CTX + context::offset(devfn);
        self.mem.w(at, slpt | tt | context::P);
        self.mem.w(at + 8, aw | context::did(did));
    }
    /// Maps `iova` to `pa` with a leaf at `leaf` level in a second-stage table at `root`.
    fn map_ss(&self, root: u64, levels: u32, iova: u64, pa: u64, leaf: u32, flags: u64) {
        let mut table = root;
        for level in (leaf + 1..=levels).rev() {
            let at = table + sl::index(iova, level) * 8;
            let e = self.mem.r(at);
            table = if e & (sl::R | sl::W) != 0 {
                e & ADDR
            } else {
                let p = self.page();
                self.mem.w(at, p | sl::R | sl::W);
                p
            };
        }
        let ps = if leaf > 1 { sl::PS } else { 0 };
        self.mem.w(table + sl::index(iova, leaf) * 8, pa | flags | ps);
    }
    /// The same for a first-stage (x86-64) table; `xlate` maps table addresses to memory.
    fn map_fs(&self, root: u64, iova: u64, pa: u64, leaf: u32, flags: u64, xlate: impl Fn(u64) -> u64) {
        let mut table = root;
        for level in (leaf + 1..=4).rev() {
            let at = xlate(table) + sl::index(iova, level) * 8;
            let e = self.mem.r(at);
            table = if e & fl::P != 0 {
                e & ADDR
            } else {
                let p = self.page();
                self.mem.w(at, p | fl::P | fl::RW | fl::US);
                p
            };
        }
        let ps = if leaf > 1 { fl::PS } else { 0 };
        self.mem.w(xlate(table) + sl::index(iova, leaf) * 8, pa | flags | ps);
    }
    fn dma(&self, devfn: u8, pasid: Option<u32>, iova: u64, access: Prot) -> Result<DmaTarget, Fault> {
        let req = DmaRequest {
            dev: DeviceRef::Rid(RequesterId::new(0, 0, devfn >> 3, devfn & 7)),
            pasid: pasid.map(Pasid),
            iova: Iova(iova),
            access,
        };
        self.m.translate(&self.mem, &req)
    }
    fn pa(&self, devfn: u8, pasid: Option<u32>, iova: u64, access: Prot) -> u64 {
        self.dma(devfn, pasid, iova, access).unwrap().pa.raw()
    }
    fn last_reason(&self) -> u8 {
        self.m.faults().last().unwrap().vtd_reason
    }
}

const DEV: u8 = 0x20; // 00:04.0

/// A legacy unit with device DEV on a 4-level table, DID 1.
fn legacy_rig(cfg: VtdModelConfig) -> (Rig, u64) {
    let r = Rig::new(cfg);
    let slpt = r.page();
    r.legacy_ctx(DEV, slpt, 2, 1, context::TT_SL);
    r.enable(rtaddr::TTM_LEGACY);
    (r, slpt)
}

#[test]
fn qemu_legacy_preset_registers() {
    let r = Rig::new(VtdModelConfig::legacy());
    assert_eq!(r.rd(off::CAP), 0x00d2_008c_222f_0606);
    assert_eq!(r.rd(off::ECAP), 0xf42);
    assert_eq!(r.rd32(off::CAP + 4), 0x00d2_008c);
    assert_eq!(r.rd32(off::VER), 0x10);
    assert_eq!(r.m.config().fro(), 0x220);
    assert_eq!(r.m.config().iro(), 0xf0);
    assert_eq!(r.rd(0x228), 0, "FRCD 0 high qword");
    assert_eq!(r.rd(0xf8), 0, "IOTLB_REG");
    assert!(r.m.mmio_read(&r.mem, 0x230, 8).is_err(), "only one fault record");
    assert!(r.m.mmio_read(&r.mem, 0x8, 2).is_err());
    assert_eq!(r.rd32(off::FECTL), event_ctl_im());
    // Read-only registers ignore writes.
    r.wr(off::CAP, 0);
    assert_eq!(r.rd(off::CAP), 0x00d2_008c_222f_0606);
    let s = Rig::new(VtdModelConfig::scalable());
    let (cap, ecap) = (s.rd(off::CAP), s.rd(off::ECAP));
    assert_eq!((cap::fro(cap), cap::nfr(cap), ecap::iro(ecap), ecap::pss(ecap)), (0x400, 8, 0x500, 20));
    assert_eq!(cap::sagaw(cap), 0b110);
    assert!(ecap & ecap::SMTS != 0 && ecap & ecap::PRS != 0 && ecap & ecap::SSADS != 0);
    let l39 = VtdModelConfig::legacy_39bit_no_superpages();
    assert_eq!((cap::sagaw(l39.cap), cap::mgaw(l39.cap), cap::sllps(l39.cap)), (0b10, 39, 0));
    assert_eq!(VtdModelConfig::legacy_no_qi().ecap & (ecap::QI | ecap::PT), 0);
}

fn event_ctl_im() -> u32 {
    crate::layout::regs::event_ctl::IM
}

#[test]
fn translation_off_passes_through() {
    let r = Rig::new(VtdModelConfig::legacy());
    assert_eq!(r.pa(DEV, None, 0x1234_5678, Prot::WRITE), 0x1234_5678);
}

#[test]
fn legacy_walks_4k_2m_1g() {
    let (r, slpt) = legacy_rig(VtdModelConfig::legacy());
    r.map_ss(slpt, 4, 0x1000, 0x8000_0000, 1, sl::R | sl::W);
    r.map_ss(slpt, 4, 0x4000_0000, 0x9000_0000 - 0x1000_0000 + 0x20_0000, 2, sl::R);
    r.map_ss(slpt, 4, 0x80_0000_0000, 0x1_0000_0000, 3, sl::R | sl::W);
    let t = r.dma(DEV, None, 0x1234, Prot::WRITE).unwrap();
    assert_eq!((t.pa.raw(), t.remaining), (0x8000_0234, 0xdcc));
    let t = r.dma(DEV, None, 0x4001_2345, Prot::READ).unwrap();
    assert_eq!((t.pa.raw(), t.remaining), (0x8021_2345, 0x20_0000 - 0x1_2345));
    assert_eq!(r.pa(DEV, None, 0x80_1234_5678, Prot::READ), 0x1_1234_5678);
    // Cached: a second access hits.
    let hits = r.m.cache_stats().iotlb_hits;
    r.pa(DEV, None, 0x1000, Prot::READ);
    assert_eq!(r.m.cache_stats().iotlb_hits, hits + 1);
    // Not present: reason 0x6 (read) but NOT_PRESENT to ioasis.
    let f = r.dma(DEV, None, 0x5000, Prot::READ).unwrap_err();
    assert_eq!((f.reason, r.last_reason()), (Fault::NOT_PRESENT, reason::NO_READ));
    // Misaligned 2 MiB leaf: reserved bits.
    r.map_ss(slpt, 4, 0x6000_0000, 0x8000_1000, 2, sl::R);
    assert_eq!(r.dma(DEV, None, 0x6000_0000, Prot::READ).unwrap_err().reason, Fault::BAD_ENTRY);
    assert_eq!(r.last_reason(), reason::PAGING_RESERVED);
}

#[test]
fn address_widths() {
    // AW 39 (3 levels) on the legacy unit.
    let r = Rig::new(VtdModelConfig::legacy());
    let slpt = r.page();
    r.legacy_ctx(DEV, slpt, 1, 1, context::TT_SL);
    r.enable(rtaddr::TTM_LEGACY);
    r.map_ss(slpt, 3, 0x40_0000_1000, 0x7000, 1, sl::R);
    assert_eq!(r.pa(DEV, None, 0x40_0000_1008, Prot::READ), 0x7008);
    let f = r.dma(DEV, None, 1 << 40, Prot::READ).unwrap_err();
    assert_eq!((f.reason, r.last_reason()), (Fault::ADDRESS_SIZE, reason::ADDRESS_BEYOND_AW));
    // AW 48 reaches it.
    let r = Rig::new(VtdModelConfig::legacy());
    let slpt = r.page();
    r.legacy_ctx(DEV, slpt, 2, 1, context::TT_SL);
    r.enable(rtaddr::TTM_LEGACY);
    r.map_ss(slpt, 4, 1 << 40, 0x7000, 1, sl::R);
    assert_eq!(r.pa(DEV, None, 1 << 40, Prot::READ), 0x7000);
    assert_eq!(r.dma(DEV, None, 1 << 48, Prot::READ).unwrap_err().reason, Fault::ADDRESS_SIZE);
    // AW 57 is not in SAGAW: invalid context.
    let r = Rig::new(VtdModelConfig::legacy());
    r.legacy_ctx(DEV, r.page(), 3, 1, context::TT_SL);
    r.enable(rtaddr::TTM_LEGACY);
    assert_eq!(r.dma(DEV, None, 0, Prot::READ).unwrap_err().reason, Fault::BAD_ENTRY);
    assert_eq!(r.last_reason(), reason::CONTEXT_INVALID);
    // The 39-bit unit has no AW 48 and no superpages.
    let r = Rig::new(VtdModelConfig::legacy_39bit_no_superpages());
    let slpt = r.page();
    r.legacy_ctx(DEV, slpt, 2, 1, context::TT_SL);
    r.enable(rtaddr::TTM_LEGACY);
    r.dma(DEV, None, 0, Prot::READ).unwrap_err();
    assert_eq!(r.last_reason(), reason::CONTEXT_INVALID);
    r.legacy_ctx(DEV, slpt, 1, 1, context::TT_SL);
    r.wr(off::CCMD, ccmd::ICC | ccmd::GLOBAL);
    r.map_ss(slpt, 3, 0x20_0000, 0x40_0000, 2, sl::R);
    r.dma(DEV, None, 0x20_0000, Prot::READ).unwrap_err();
    assert_eq!(r.last_reason(), reason::PAGING_RESERVED);
}

#[test]
fn context_faults_and_pass_through() {
    let r = Rig::new(VtdModelConfig::legacy());
    r.enable(rtaddr::TTM_LEGACY);
    assert_eq!(r.dma(DEV, None, 0, Prot::READ).unwrap_err().reason, Fault::BLOCKED);
    assert_eq!(r.last_reason(), reason::ROOT_NOT_PRESENT);
    r.mem.w(ROOT, root::lo(CTX));
    r.dma(DEV, None, 0, Prot::READ).unwrap_err();
    assert_eq!(r.last_reason(), reason::CONTEXT_NOT_PRESENT);
    r.legacy_ctx(DEV, 0, 2, 3, context::TT_PT);
    assert_eq!(r.pa(DEV, None, 0xabc_d000, Prot::WRITE), 0xabc_d000);
    // With a PASID: refused in legacy mode.
    assert_eq!(r.dma(DEV, Some(1), 0, Prot::READ).unwrap_err().reason, Fault::BAD_PASID);
    // Pass-through with an AW the unit does not support (SAGAW has no 5-level tables here).
    r.legacy_ctx(DEV, 0, 3, 3, context::TT_PT);
    r.wr(off::CCMD, ccmd::ICC | ccmd::GLOBAL);
    assert_eq!(r.dma(DEV, None, 0, Prot::READ).unwrap_err().reason, Fault::BAD_ENTRY);
    assert_eq!(r.last_reason(), reason::CONTEXT_INVALID);
    // Reserved bits in a context entry.
    r.mem.w(CTX + context::offset(DEV) + 8, 2 | (1 << 30));
    r.wr(off::CCMD, ccmd::ICC | ccmd::GLOBAL);
    r.dma(DEV, None, 0, Prot::READ).unwrap_err();
    assert_eq!(r.last_reason(), reason::CONTEXT_RESERVED);
    // No PT on the old unit.
    let r = Rig::new(VtdModelConfig::legacy_no_qi());
    r.legacy_ctx(DEV, 0, 2, 3, context::TT_PT);
    r.enable(rtaddr::TTM_LEGACY);
    assert_eq!(r.dma(DEV, None, 0, Prot::READ).unwrap_err().reason, Fault::BAD_ENTRY);
    assert_eq!(r.last_reason(), reason::CONTEXT_INVALID);
}

#[test]
fn permission_faults_are_recorded() {
    let (r, slpt) = legacy_rig(VtdModelConfig::scalable());
    r.map_ss(slpt, 4, 0x9000, 0x9000, 1, sl::R);
    r.map_ss(slpt, 4, 0xa000, 0xa000, 1, sl::W);
    let f = r.dma(DEV, None, 0x9010, Prot::WRITE).unwrap_err();
    assert_eq!((f.reason, f.addr, f.access, f.page_request), (Fault::PERMISSION, Iova(0x9010), Prot::WRITE, false));
    assert_eq!(r.last_reason(), reason::NO_WRITE);
    let fro = r.m.config().fro();
    let st = r.rd32(off::FSTS);
    assert!(st & fsts::PPF != 0);
    assert_eq!(fsts::fri(st), 0);
    assert_eq!(r.rd(fro), 0x9000);
    let hi = r.rd(fro + 8);
    assert_eq!((frcd::sid(hi), frcd::reason(hi)), (u16::from(DEV), reason::NO_WRITE));
    assert!(hi & frcd::F != 0 && hi & frcd::T_READ == 0 && hi & frcd::PP == 0);
    // A read of the write-only page goes to the next record.
    assert_eq!(r.dma(DEV, None, 0xa008, Prot::READ).unwrap_err().reason, Fault::PERMISSION);
    let hi = r.rd(fro + 24);
    assert_eq!(frcd::reason(hi), reason::NO_READ);
    assert!(hi & frcd::T_READ != 0);
    // Clearing F with a 4-byte write of the high dword; FRI moves to the next pending one.
    r.wr32(fro + 12, 1 << 31);
    assert_eq!(r.rd(fro + 8) & frcd::F, 0);
    assert_eq!(fsts::fri(r.rd32(off::FSTS)), 1);
    // A 4-byte write of the low dword of the high qword clears nothing.
    r.wr32(fro + 24, 0xffff_ffff);
    assert!(r.rd(fro + 24) & frcd::F != 0);
    r.wr(fro + 24, frcd::F);
    assert_eq!(r.rd32(off::FSTS) & fsts::PPF, 0);
}

#[test]
fn fault_overflow_sets_pfo() {
    let (r, _) = legacy_rig(VtdModelConfig::legacy());
    r.dma(DEV, None, 0x1000, Prot::READ).unwrap_err();
    r.dma(DEV, None, 0x2000, Prot::WRITE).unwrap_err();
    let st = r.rd32(off::FSTS);
    assert!(st & fsts::PFO != 0 && st & fsts::PPF != 0);
    assert_eq!(r.rd(0x220), 0x1000, "the first fault stays");
    let log = r.m.faults();
    assert!(log[0].recorded && !log[1].recorded);
    // RW1C: PFO clears, PPF (read-only) stays.
    r.wr32(off::FSTS, u64::from(fsts::PFO | fsts::PPF));
    let st = r.rd32(off::FSTS);
    assert!(st & fsts::PFO == 0 && st & fsts::PPF != 0);
    r.wr(0x228, frcd::F);
    r.dma(DEV, None, 0x3000, Prot::READ).unwrap_err();
    assert_eq!(r.rd(0x220), 0x3000);
}

#[test]
fn register_invalidation_drops_stale_entries() {
    let (r, slpt) = legacy_rig(VtdModelConfig::legacy_no_qi());
    let iro = r.m.config().iro();
    r.map_ss(slpt, 4, 0x4000, 0x10_4000, 1, sl::R | sl::W);
    assert_eq!(r.pa(DEV, None, 0x4000, Prot::READ), 0x10_4000);
    r.map_ss(slpt, 4, 0x4000, 0x20_4000, 1, sl::R | sl::W);
    assert_eq!(r.pa(DEV, None, 0x4000, Prot::READ), 0x10_4000, "stale until invalidated");
    // Page-selective for another domain: still stale.
    r.wr(iro, iotlb::iva(0x4000, 0));
    r.wr(iro + 8, iotlb::IVT | iotlb::PAGE | iotlb::did(2));
    assert_eq!(r.pa(DEV, None, 0x4000, Prot::READ), 0x10_4000);
    r.wr(iro + 8, iotlb::IVT | iotlb::PAGE | iotlb::did(1));
    let v = r.rd(iro + 8);
    assert_eq!(v & iotlb::IVT, 0);
    assert_eq!((v >> 57) & 3, 3, "IAIG page-selective");
    assert_eq!(r.pa(DEV, None, 0x4000, Prot::READ), 0x20_4000);
    // Unmapped, then a stale entry is still there until invalidated.
    r.mem.w(r.mem.r(r.mem.r(r.mem.r(slpt) & ADDR) & ADDR) & ADDR | (4 * 8), 0);
    assert!(r.dma(DEV, None, 0x4000, Prot::READ).is_ok());
    r.wr(iro + 8, iotlb::IVT | iotlb::DOMAIN | iotlb::did(1));
    assert_eq!(r.dma(DEV, None, 0x4000, Prot::READ).unwrap_err().reason, Fault::NOT_PRESENT);
    // Context cache: the device is detached but its cached context stays.
    r.map_ss(slpt, 4, 0x4000, 0x20_4000, 1, sl::R | sl::W);
    r.mem.w(CTX + context::offset(DEV), 0);
    r.wr(iro + 8, iotlb::IVT | iotlb::GLOBAL);
    assert!(r.dma(DEV, None, 0x4000, Prot::READ).is_ok());
    r.wr(off::CCMD, ccmd::ICC | ccmd::DEVICE | ccmd::sid(u16::from(DEV) + 1));
    assert!(r.dma(DEV, None, 0x4000, Prot::READ).is_ok());
    r.wr(off::CCMD, ccmd::ICC | ccmd::DEVICE | ccmd::sid(u16::from(DEV)));
    let v = r.rd(off::CCMD);
    assert_eq!((v & ccmd::ICC, (v >> 59) & 3), (0, 3));
    assert_eq!(r.dma(DEV, None, 0x4000, Prot::READ).unwrap_err().reason, Fault::BLOCKED);
}

/// Sets up a 4 KiB invalidation queue at `q` (256-bit descriptors when `wide`) and enables it.
fn enable_qi(r: &Rig, q: u64, wide: bool) {
    r.wr(off::IQA, iqa::value(q, 0, wide));
    r.wr(off::IQT, 0);
    r.wr32(off::GCMD, u64::from(gcmd::TE | gcmd::QIE));
    assert!(r.rd32(off::GSTS) & gcmd::QIE != 0);
}

/// Writes descriptors at IQT and moves IQT past them.
fn submit(r: &Rig, q: u64, wide: bool, descs: &[[u64; 2]]) {
    let dsz = if wide { 32 } else { 16 };
    let mut t = r.rd(off::IQT);
    for d in descs {
        r.mem.w(q + t, d[0]);
        r.mem.w(q + t + 8, d[1]);
        if wide {
            r.mem.w(q + t + 16, 0);
            r.mem.w(q + t + 24, 0);
        }
        t = (t + dsz) % 4096;
    }
    r.wr(off::IQT, t);
}

#[test]
fn queued_invalidation_with_wait_and_page_ranges() {
    let (r, slpt) = legacy_rig(VtdModelConfig::legacy());
    let q = r.page();
    enable_qi(&r, q, false);
    for i in 0..4u64 {
        r.map_ss(slpt, 4, 0x10_0000 + i * 0x1000, 0x100_0000 + i * 0x1000, 1, sl::R);
        r.pa(DEV, None, 0x10_0000 + i * 0x1000, Prot::READ);
        r.map_ss(slpt, 4, 0x10_0000 + i * 0x1000, 0x200_0000 + i * 0x1000, 1, sl::R);
    }
    let status = 0x5000;
    submit(
        &r,
        q,
        false,
        &[
            [qi::iotlb::q0(qi::iotlb::PAGE, 1), qi::iotlb::q1(0x10_2000, 1)],
            [qi::wait::q0(qi::wait::SW | qi::wait::IF, 0xcafe), qi::wait::q1(status)],
        ],
    );
    assert_eq!(r.mem.r(status) & 0xffff_ffff, 0xcafe);
    assert!(r.rd32(off::ICS) & ICS_IWC != 0);
    assert_eq!(r.rd(off::IQH), r.rd(off::IQT));
    // AM 1 at 0x10_2000 covers pages 2 and 3 only.
    let pas: Vec<u64> = (0..4).map(|i| r.pa(DEV, None, 0x10_0000 + i * 0x1000, Prot::READ)).collect();
    assert_eq!(pas, vec![0x100_0000, 0x100_1000, 0x200_2000, 0x200_3000]);
    r.wr32(off::ICS, u64::from(ICS_IWC));
    assert_eq!(r.rd32(off::ICS), 0);
    // Context-cache device-selective and a global IOTLB flush through the queue.
    r.mem.w(CTX + context::offset(DEV), 0);
    submit(
        &r,
        q,
        false,
        &[[qi::cc::q0(qi::cc::DEVICE, 1, u16::from(DEV)), 0], [qi::iotlb::q0(qi::iotlb::GLOBAL, 0), 0]],
    );
    assert_eq!(r.dma(DEV, None, 0x10_0000, Prot::READ).unwrap_err().reason, Fault::BLOCKED);
    // Disabling QI resets IQH.
    r.wr32(off::GCMD, u64::from(gcmd::TE));
    assert_eq!((r.rd32(off::GSTS) & gcmd::QIE, r.rd(off::IQH)), (0, 0));
}

#[test]
fn bad_descriptor_sets_iqe() {
    let (r, _) = legacy_rig(VtdModelConfig::legacy());
    let q = r.page();
    enable_qi(&r, q, false);
    let status = 0x5000;
    submit(
        &r,
        q,
        false,
        &[
            [qi::wait::q0(qi::wait::SW, 1), qi::wait::q1(status)],
            [0xf, 0],
            [qi::wait::q0(qi::wait::SW, 2), qi::wait::q1(status)],
        ],
    );
    assert!(r.rd32(off::FSTS) & fsts::IQE != 0);
    assert_eq!(r.rd(off::IQH), 16, "IQH stays at the bad descriptor");
    assert_eq!(r.mem.r(status), 1);
    // Reserved bits (IOTLB descriptor with qword 1 bit 8) are just as bad.
    r.mem.w(q + 16, qi::iotlb::q0(qi::iotlb::GLOBAL, 0));
    r.mem.w(q + 24, 1 << 8);
    r.wr32(off::FSTS, u64::from(fsts::IQE));
    assert!(r.rd32(off::FSTS) & fsts::IQE != 0);
    assert_eq!(r.rd(off::IQH), 16);
    // Fixed and cleared: fetching resumes.
    r.mem.w(q + 24, 0);
    r.wr32(off::FSTS, u64::from(fsts::IQE));
    assert_eq!(r.rd32(off::FSTS) & fsts::IQE, 0);
    assert_eq!(r.rd(off::IQH), 48);
    assert_eq!(r.mem.r(status), 2);
}

/// A scalable unit with DEV's scalable context (devfn `devfn`), a PASID directory of
/// 2^14 entries, and its PASID tables allocated on demand. Returns the directory.
fn scalable_rig(devfn: u8, ctx_flags: u64, rid_pasid: u32) -> (Rig, u64) {
    scalable_rig_with(VtdModelConfig::scalable(), devfn, ctx_flags, rid_pasid)
}

/// [`scalable_rig`] on a unit with capability registers `cfg`.
fn scalable_rig_with(cfg: VtdModelConfig, devfn: u8, ctx_flags: u64, rid_pasid: u32) -> (Rig, u64) {
    let r = Rig::new(cfg);
    let dir = r.page();
    // Lower context table for devfn < 128, upper for the rest (9.2).
    r.mem.w(ROOT, CTX | sm_root::P);
    r.mem.w(ROOT + 8, CTX_HI | sm_root::P);
    let table = if devfn >= 128 { CTX_HI } else { CTX };
    let at = table + sm_context::offset(devfn);
    r.mem.w(at, dir | sm_context::pdts(14) | ctx_flags | sm_context::P);
    r.mem.w(at + 8, u64::from(rid_pasid));
    r.enable(rtaddr::TTM_SCALABLE);
    (r, dir)
}

/// Writes PASID entry `pasid` under `dir`.
fn pasid_entry(r: &Rig, dir: u64, pasid: u32, q: [u64; 3]) {
    let de_at = dir + pasid_dir::offset(pasid);
    let mut de = r.mem.r(de_at);
    if de & pasid_dir::P == 0 {
        de = r.page() | pasid_dir::P;
        r.mem.w(de_at, de);
    }
    let at = (de & ADDR) + pasid_entry::offset(pasid);
    for (i, w) in q.iter().enumerate() {
        r.mem.w(at + 8 * i as u64, *w);
    }
}

const SDEV: u8 = 0x88; // 00:11.0, in the upper context table.

#[test]
fn scalable_second_stage_rid_pasid_and_pasid() {
    let (r, dir) = scalable_rig(SDEV, sm_context::PASIDE, 0);
    let ss = r.page();
    let q0 = ss | pasid_entry::aw(2) | pasid_entry::PGTT_SS | pasid_entry::P;
    pasid_entry(&r, dir, 0, [q0, 7, 0]);
    r.map_ss(ss, 4, 0x1000, 0x7000, 1, sl::R | sl::W);
    assert_eq!(r.pa(SDEV, None, 0x1008, Prot::WRITE), 0x7008);
    // PASID 0x45: directory entry 1, table entry 5, first-stage.
    let fs = r.page();
    pasid_entry(&r, dir, 0x45, [pasid_entry::PGTT_FS | pasid_entry::P, 9, fs | pasid_entry::FSPM_4LEVEL]);
    r.map_fs(fs, 0x7fff_0000_0000, 0x40_0000, 2, fl::P | fl::RW, |a| a);
    assert_eq!(r.pa(SDEV, Some(0x45), 0x7fff_0001_2345, Prot::WRITE), 0x41_2345);
    // Not present PASID: 0x59, and beyond the directory: 0x51.
    assert_eq!(r.dma(SDEV, Some(0x46), 0, Prot::READ).unwrap_err().reason, Fault::BAD_PASID);
    assert_eq!(r.last_reason(), reason::PASID_NOT_PRESENT);
    assert_eq!(r.dma(SDEV, Some(0x1000), 0, Prot::READ).unwrap_err().reason, Fault::BAD_PASID);
    assert_eq!(r.last_reason(), reason::PASID_DIR_NOT_PRESENT);
    // The RID_PASID entry missing blocks untagged DMA.
    let (r2, _) = scalable_rig(0x10, 0, 3);
    assert_eq!(r2.dma(0x10, None, 0, Prot::READ).unwrap_err().reason, Fault::BLOCKED);
    // Without PASIDE, tagged requests are refused.
    assert_eq!(r2.dma(0x10, Some(3), 0, Prot::READ).unwrap_err().reason, Fault::BAD_PASID);
    // An unsupported PGTT (0) is an invalid entry.
    pasid_entry(&r, dir, 0x47, [pasid_entry::P, 1, 0]);
    assert_eq!(r.dma(SDEV, Some(0x47), 0, Prot::READ).unwrap_err().reason, Fault::BAD_ENTRY);
    assert_eq!(r.last_reason(), reason::PASID_ENTRY_INVALID);
    // Fault records carry the PASID.
    let fro = r.m.config().fro();
    let hi = (0..8).map(|i| r.rd(fro + 16 * i + 8)).find(|h| frcd::pasid(*h) == 0x46).unwrap();
    assert!(hi & frcd::PP != 0);
    assert_eq!(frcd::reason(hi), reason::PASID_NOT_PRESENT);
}

#[test]
fn first_stage_permissions_and_ad_bits() {
    let (r, dir) = scalable_rig(SDEV, sm_context::PASIDE, 0);
    let fs = r.page();
    pasid_entry(&r, dir, 1, [pasid_entry::PGTT_FS | pasid_entry::P, 2, fs]);
    r.map_fs(fs, 0x1000, 0x3000, 1, fl::P | fl::RW, |a| a);
    r.map_fs(fs, 0x2000, 0x4000, 1, fl::P, |a| a);
    assert_eq!(r.pa(SDEV, Some(1), 0x1000, Prot::READ), 0x3000);
    let pml4e = r.mem.r(fs);
    assert!(pml4e & fl::A != 0);
    let leaf_at = |iova: u64| {
        let mut t = fs;
        for level in (2..=4).rev() {
            t = r.mem.r(t + sl::index(iova, level) * 8) & ADDR;
        }
        t + sl::index(iova, 1) * 8
    };
    let leaf = r.mem.r(leaf_at(0x1000));
    assert!(leaf & fl::A != 0 && leaf & fl::D == 0);
    // A write hit on a read-made entry re-walks to set D.
    assert_eq!(r.pa(SDEV, Some(1), 0x1000, Prot::WRITE), 0x3000);
    assert!(r.mem.r(leaf_at(0x1000)) & fl::D != 0);
    let f = r.dma(SDEV, Some(1), 0x2000, Prot::WRITE).unwrap_err();
    assert_eq!(f.reason, Fault::PERMISSION);
    assert_eq!(r.mem.r(leaf_at(0x2000)) & fl::D, 0);
    // Non-canonical input.
    assert_eq!(r.dma(SDEV, Some(1), 1 << 50, Prot::READ).unwrap_err().reason, Fault::ADDRESS_SIZE);
    // Stale until a PASID-based IOTLB invalidation of DID 2, PASID 1.
    r.map_fs(fs, 0x1000, 0x5000, 1, fl::P | fl::RW, |a| a);
    assert_eq!(r.pa(SDEV, Some(1), 0x1000, Prot::READ), 0x3000);
    let q = r.page();
    enable_qi(&r, q, true);
    submit(&r, q, true, &[[qi::iotlb::q0(qi::iotlb::GLOBAL, 0) & !0x30 | qi::iotlb::DOMAIN | (2 << 16), 0]]);
    assert_eq!(r.pa(SDEV, Some(1), 0x1000, Prot::READ), 0x3000, "IOTLB invalidation misses first-stage entries");
    submit(&r, q, true, &[[qi::p_iotlb::q0(qi::p_iotlb::PAGE, 2, 1), qi::iotlb::q1(0x1000, 0)]]);
    assert_eq!(r.pa(SDEV, Some(1), 0x1000, Prot::READ), 0x5000);
    // PASID cache: the entry changes to another table; stale until a PASID-cache invalidation.
    let fs2 = r.page();
    r.map_fs(fs2, 0x1000, 0x6000, 1, fl::P | fl::RW, |a| a);
    pasid_entry(&r, dir, 1, [pasid_entry::PGTT_FS | pasid_entry::P, 2, fs2]);
    submit(&r, q, true, &[[qi::p_iotlb::q0(qi::p_iotlb::PASID, 2, 1), 0]]);
    assert_eq!(r.pa(SDEV, Some(1), 0x1000, Prot::READ), 0x5000, "old PASID entry cached");
    submit(&r, q, true, &[[qi::pc::q0(qi::pc::PASID, 2, 1), 0], [qi::p_iotlb::q0(qi::p_iotlb::PASID, 2, 1), 0]]);
    assert_eq!(r.pa(SDEV, Some(1), 0x1000, Prot::READ), 0x6000);
    assert_eq!(r.rd32(off::FSTS) & fsts::IQE, 0);
}

#[test]
fn nested_translation() {
    let (r, dir) = scalable_rig(SDEV, sm_context::PASIDE, 0);
    let ss = r.page();
    // Second stage: GPA 0..1 GiB identity (where the first-stage tables live), and
    // GPA 1 GiB + 2 MiB → 0x7020_0000 (2 MiB).
    r.map_ss(ss, 4, 0, 0, 3, sl::R | sl::W);
    r.map_ss(ss, 4, 0x4020_0000, 0x7020_0000, 2, sl::R | sl::W);
    let fs = r.page();
    r.map_fs(fs, 0x1234_5000, 0x4020_0000 + 0x5000, 1, fl::P | fl::RW, |a| a);
    let q0 = ss | pasid_entry::aw(2) | pasid_entry::PGTT_NESTED | pasid_entry::SSADE | pasid_entry::P;
    pasid_entry(&r, dir, 0, [q0, 4, fs]);
    let t = r.dma(SDEV, None, 0x1234_5678, Prot::WRITE).unwrap();
    assert_eq!((t.pa.raw(), t.remaining), (0x7020_5678, 0x988));
    // SSADE: the second-stage leaf for the data has A and D.
    let l4 = r.mem.r(ss) & ADDR;
    let l3 = r.mem.r(l4 + 8) & ADDR;
    let leaf = r.mem.r(l3 + 8);
    assert!(leaf & sl::A != 0 && leaf & sl::D != 0, "{leaf:#x}");
    // The walk set A on the first-stage entries and D on the first-stage leaf: writes to the
    // guest memory under the 1 GiB identity leaf, which therefore has D too (3.8, 3.7.2).
    let id = r.mem.r(l4);
    assert!(id & sl::A != 0 && id & sl::D != 0, "{id:#x}");
    // A first-stage walk whose entries already have A (and D on the written leaf) only reads
    // them: the identity leaf gets A, not D.
    r.mem.w(l4, id & !(sl::A | sl::D));
    r.map_fs(fs, 0x1234_6000, 0x4020_0000 + 0x6000, 1, fl::P | fl::RW | fl::A | fl::D, |a| a);
    assert_eq!(r.pa(SDEV, None, 0x1234_6010, Prot::WRITE), 0x7020_6010);
    let id = r.mem.r(l4);
    assert!(id & sl::A != 0 && id & sl::D == 0, "{id:#x}");
    // A read through an entry without A sets it: that write is dirty too.
    r.map_fs(fs, 0x1234_7000, 0x4020_0000 + 0x7000, 1, fl::P | fl::RW, |a| a);
    assert_eq!(r.pa(SDEV, None, 0x1234_7000, Prot::READ), 0x7020_7000);
    assert!(r.mem.r(l4) & sl::D != 0);
    // A GPA the second stage lacks: not present, in the parent (Appendix A SSS.2).
    r.map_fs(fs, 0x2000_0000, 0x9000_0000, 1, fl::P | fl::RW, |a| a);
    let f = r.dma(SDEV, None, 0x2000_0000, Prot::READ).unwrap_err();
    assert_eq!(f.reason, Fault::NOT_PRESENT | Fault::IN_PARENT);
    assert_eq!(r.last_reason(), reason_sm::SS_PERMISSION);
    // An input the first stage lacks: the guest's (SFS.2), no IN_PARENT.
    let f = r.dma(SDEV, None, 0x3000_0000, Prot::READ).unwrap_err();
    assert_eq!((f.reason, r.last_reason()), (Fault::NOT_PRESENT, reason_sm::FS_NOT_PRESENT));
    // A first-stage leaf without RW, written: the guest's permission fault (SGN.5), also
    // from the IOTLB once the read cached it.
    r.map_fs(fs, 0x1234_8000, 0x4020_0000 + 0x8000, 1, fl::P | fl::A | fl::D, |a| a);
    assert_eq!(r.pa(SDEV, None, 0x1234_8000, Prot::READ), 0x7020_8000);
    let f = r.dma(SDEV, None, 0x1234_8000, Prot::WRITE).unwrap_err();
    assert_eq!((f.reason, r.last_reason()), (Fault::PERMISSION, reason_sm::NO_WRITE));
    // A second-stage leaf without W under a writable first-stage leaf: the host's (SSS.2).
    r.map_ss(ss, 4, 0x4060_0000, 0x7060_0000, 1, sl::R);
    r.map_fs(fs, 0x1234_9000, 0x4060_0000, 1, fl::P | fl::RW | fl::A | fl::D, |a| a);
    let f = r.dma(SDEV, None, 0x1234_9000, Prot::WRITE).unwrap_err();
    assert_eq!((f.reason, r.last_reason()), (Fault::NOT_PRESENT | Fault::IN_PARENT, reason_sm::SS_PERMISSION));
    // A non-canonical input: SGN.1, the guest's.
    let f = r.dma(SDEV, None, 0x0000_8000_0000_0000, Prot::READ).unwrap_err();
    assert_eq!((f.reason, r.last_reason()), (Fault::ADDRESS_SIZE, reason_sm::NOT_CANONICAL));
    // A first-stage root beyond the second stage's 48-bit width: a bad first-stage pointer
    // (SFS.4), the guest's configuration.
    pasid_entry(&r, dir, 5, [q0, 4, 1 << 50]);
    let f = r.dma(SDEV, Some(5), 0x1234_5000, Prot::READ).unwrap_err();
    assert_eq!((f.reason, r.last_reason()), (Fault::BAD_CONFIG, reason_sm::FSPTPTR_INVALID));
    // A first-stage paging mode the unit lacks (FSPM 5-level without CAP.FS5LP) in the
    // guest's fields: an invalid PASID entry (SPT.4), the guest's configuration.
    pasid_entry(&r, dir, 6, [q0, 4, fs | pasid_entry::FSPM_5LEVEL]);
    let f = r.dma(SDEV, Some(6), 0x1234_5000, Prot::READ).unwrap_err();
    assert_eq!((f.reason, r.last_reason()), (Fault::BAD_CONFIG, reason::PASID_ENTRY_INVALID));
    // An unusable second-stage field (AW 7) is the host's: a bad entry, not the guest's.
    pasid_entry(&r, dir, 7, [ss | pasid_entry::aw(7) | pasid_entry::PGTT_SS | pasid_entry::P, 4, 0]);
    let f = r.dma(SDEV, Some(7), 0x1000, Prot::READ).unwrap_err();
    assert_eq!((f.reason, r.last_reason()), (Fault::BAD_ENTRY, reason::PASID_ENTRY_INVALID));
}

#[test]
fn nested_first_stage_ad_updates_need_second_stage_write_permission() {
    let (r, dir) = scalable_rig(SDEV, 0, 0);
    let ss = r.page();
    // The first-stage tables live in GPA 0..1 GiB, mapped read-only by the second stage; the
    // data page GPA 1 GiB is writable.
    r.map_ss(ss, 4, 0, 0, 3, sl::R);
    r.map_ss(ss, 4, 0x4000_0000, 0x5000_0000, 1, sl::R | sl::W);
    let fs = r.page();
    r.map_fs(fs, 0x1000, 0x4000_0000, 1, fl::P | fl::RW, |a| a);
    let q0 = ss | pasid_entry::aw(2) | pasid_entry::PGTT_NESTED | pasid_entry::SSADE | pasid_entry::P;
    pasid_entry(&r, dir, 0, [q0, 4, fs]);
    // Setting A in the first-stage entries is a write the second stage does not permit: the
    // host's (SFS.8, IN_PARENT).
    let f = r.dma(SDEV, None, 0x1000, Prot::READ).unwrap_err();
    assert_eq!(f.reason, Fault::NOT_PRESENT | Fault::IN_PARENT);
    assert_eq!(r.last_reason(), reason_sm::SS_NO_WRITE_FS_ENTRY);
    assert_eq!(r.mem.r(fs) & fl::A, 0, "nothing was written");
    // With A (and D on the leaf) already set by the guest, the walk only reads: it succeeds.
    let mut t = fs;
    for level in (1..=4).rev() {
        let at = t + sl::index(0x1000, level) * 8;
        r.mem.w(at, r.mem.r(at) | fl::A | if level == 1 { fl::D } else { 0 });
        t = r.mem.r(at) & ADDR;
    }
    assert_eq!(r.pa(SDEV, None, 0x1000, Prot::WRITE), 0x5000_0000);
    let id = r.mem.r(r.mem.r(ss) & ADDR);
    assert!(id & sl::A != 0 && id & sl::D == 0, "{id:#x}");
}

#[test]
fn second_stage_ad_bits() {
    let (r, dir) = scalable_rig(SDEV, 0, 0);
    let ss = r.page();
    let q0 = ss | pasid_entry::aw(1) | pasid_entry::PGTT_SS | pasid_entry::SSADE | pasid_entry::P;
    pasid_entry(&r, dir, 0, [q0, 1, 0]);
    r.map_ss(ss, 3, 0x1000, 0x8000, 1, sl::R | sl::W);
    let leaf_at = || {
        let l2 = r.mem.r(ss) & ADDR;
        (r.mem.r(l2) & ADDR) + 8
    };
    r.pa(SDEV, None, 0x1000, Prot::READ);
    let e = r.mem.r(leaf_at());
    assert!(e & sl::A != 0 && e & sl::D == 0);
    assert!(r.mem.r(ss) & sl::A != 0);
    r.pa(SDEV, None, 0x1000, Prot::WRITE);
    assert!(r.mem.r(leaf_at()) & sl::D != 0);
    // Without SSADE nothing is set.
    let (r, dir) = scalable_rig(SDEV, 0, 0);
    let ss = r.page();
    pasid_entry(&r, dir, 0, [ss | pasid_entry::aw(1) | pasid_entry::PGTT_SS | pasid_entry::P, 1, 0]);
    r.map_ss(ss, 3, 0x1000, 0x8000, 1, sl::R | sl::W);
    r.pa(SDEV, None, 0x1000, Prot::WRITE);
    assert_eq!(r.mem.r(ss) & (sl::A | sl::D), 0);
}

#[test]
fn page_requests_go_to_the_queue() {
    let (r, dir) = scalable_rig(SDEV, sm_context::PASIDE | sm_context::PRE, 0);
    let fs = r.page();
    pasid_entry(&r, dir, 5, [pasid_entry::PGTT_FS | pasid_entry::P, 2, fs]);
    let prq = r.page();
    r.wr(off::PQA, prq); // One page: 128 descriptors.
    let f = r.dma(SDEV, Some(5), 0x7000_1234, Prot::WRITE).unwrap_err();
    assert!(f.page_request && f.reason == Fault::NOT_PRESENT);
    assert_eq!(r.rd(off::PQT), 32);
    assert!(r.rd32(off::PRS) & prs::PPR != 0);
    let q0 = r.mem.r(prq);
    assert_eq!(q0, page_request::q0(u16::from(SDEV), Some(5)));
    assert_eq!(r.mem.r(prq + 8), page_request::q1(0x7000_1000, f.group, false, true, true));
    assert_eq!(r.rd32(off::FSTS) & fsts::PPF, 0, "no fault record");
    // A response through the invalidation queue.
    let q = r.page();
    enable_qi(&r, q, true);
    submit(&r, q, true, &[[qi::page_response::q0(0, u16::from(SDEV), Some(5)), qi::page_response::q1(f.group, true)]]);
    let resp = r.m.page_responses();
    assert_eq!(resp, vec![PageResponseRecord { rid: 0x88, pasid: Some(5), group: f.group, code: 0, last: true }]);
    // A permission fault is not a page request.
    r.map_fs(fs, 0x1000, 0x2000, 1, fl::P, |a| a);
    assert!(!r.dma(SDEV, Some(5), 0x1000, Prot::WRITE).unwrap_err().page_request);
    // Fill the queue: 127 usable slots; the next sets PRO and is recorded as a fault.
    for i in 1..127 {
        assert!(r.dma(SDEV, Some(5), 0x8000_0000 + i * 0x1000, Prot::READ).unwrap_err().page_request);
    }
    let f = r.dma(SDEV, Some(5), 0x9000_0000, Prot::READ).unwrap_err();
    assert!(!f.page_request);
    assert!(r.rd32(off::PRS) & prs::PRO != 0);
    r.wr32(off::PRS, u64::from(prs::PRO | prs::PPR));
    assert_eq!(r.rd32(off::PRS), 0);
}

use crate::layout::fault::page_request;

#[test]
fn hostile_memory_and_registers_never_panic() {
    for cfg in [VtdModelConfig::scalable(), VtdModelConfig::legacy(), VtdModelConfig::legacy_39bit_no_superpages()] {
        for ttm in [rtaddr::TTM_LEGACY, rtaddr::TTM_SCALABLE, 2 << 10] {
            let mut r = Rig::new(cfg);
            r.mem.chaos = true;
            r.enable(ttm);
            for i in 0..400u64 {
                let h = splitmix(i ^ ttm);
                let pasid = (h & 1 != 0).then_some(((h >> 8) & 0xf_ffff) as u32);
                let access = [Prot::READ, Prot::WRITE, Prot::RW][(h % 3) as usize];
                let _ = r.dma((h >> 32) as u8, pasid, splitmix(h), access);
            }
            // Register writes with hostile values, including a hostile queue.
            for i in 0..200u64 {
                let h = splitmix(i.wrapping_mul(77));
                let offset = (h >> 52) & 0xff8;
                let _ = r.m.mmio_write(&r.mem, offset, if h & 1 != 0 { 8 } else { 4 }, splitmix(h));
                let _ = r.m.mmio_read(&r.mem, offset, 8);
            }
            r.wr(off::IQA, 0x1234_5000 | iqa::DW | 7);
            r.wr32(off::GCMD, u64::from(gcmd::TE | gcmd::QIE));
            r.wr(off::IQT, 0x7ffe0);
            let _ = r.dma(1, None, 0, Prot::READ);
        }
    }
}

// ---- guest_mappings: what a VMM shadows. ----

fn leaves(r: &Rig, devfn: u8, limit: usize) -> Result<Vec<(u64, u64, u64, Prot)>, ModelQueryError> {
    let dev = DeviceRef::Rid(RequesterId::new(0, 0, devfn >> 3, devfn & 7));
    let v = r.m.guest_mappings(&r.mem, dev, None, limit)?;
    Ok(v.into_iter().map(|g| (g.iova.raw(), g.addr.raw(), g.len, g.prot)).collect())
}

#[test]
fn guest_mappings_lists_legacy_leaves_from_memory() {
    let r = Rig::new(VtdModelConfig::legacy());
    let dev = DeviceRef::Rid(RequesterId::new(0, 0, DEV >> 3, DEV & 7));
    assert_eq!(r.m.guest_mappings(&r.mem, dev, None, 16), Err(ModelQueryError::Unsupported), "TE off");
    let (r, slpt) = legacy_rig(VtdModelConfig::legacy());
    assert_eq!(leaves(&r, DEV, 16), Ok(vec![]));
    r.map_ss(slpt, 4, 0x80_0000_0000, 0x1_0000_0000, 3, sl::R | sl::W);
    r.map_ss(slpt, 4, 0x1000, 0x8000_0000, 1, sl::R | sl::W);
    r.map_ss(slpt, 4, 0x4000_0000, 0x8020_0000, 2, sl::R);
    // A misaligned 2 MiB leaf is left out (translate faults on it); a write-only leaf is kept.
    r.map_ss(slpt, 4, 0x6000_0000, 0x8000_1000, 2, sl::R);
    r.map_ss(slpt, 4, 0x2000, 0x9000_0000, 1, sl::W);
    let want = vec![
        (0x1000, 0x8000_0000, 0x1000, Prot::RW),
        (0x2000, 0x9000_0000, 0x1000, Prot::WRITE),
        (0x4000_0000, 0x8020_0000, 0x20_0000, Prot::READ),
        (0x80_0000_0000, 0x1_0000_0000, 1 << 30, Prot::RW),
    ];
    assert_eq!(leaves(&r, DEV, 16), Ok(want.clone()));
    // The limit bounds the answer.
    assert_eq!(leaves(&r, DEV, 3), Err(ModelQueryError::TooMany { limit: 3 }));
    // Requests with PASID and devices without a context are blocked in legacy mode.
    assert_eq!(r.m.guest_mappings(&r.mem, dev, Some(Pasid(1)), 16), Err(ModelQueryError::Blocked));
    assert_eq!(leaves(&r, DEV + 1, 16), Err(ModelQueryError::Blocked));
    // Memory, not caches: translate caches 0x1000; the driver clears the leaf without
    // invalidating; the IOTLB still translates it, guest_mappings no longer lists it.
    r.pa(DEV, None, 0x1000, Prot::READ);
    let walks = r.m.cache_stats();
    r.mem.w(slpt_leaf(&r, slpt, 0x1000), 0);
    assert_eq!(r.pa(DEV, None, 0x1000, Prot::READ), 0x8000_0000, "stale IOTLB entry");
    assert_eq!(leaves(&r, DEV, 16), Ok(want[1..].to_vec()));
    assert_eq!(r.m.cache_stats().iotlb_hits, walks.iotlb_hits + 1, "guest_mappings used no cache");
    // Pass-through contexts have no leaves to list.
    r.legacy_ctx(DEV + 2, 0, 2, 2, context::TT_PT);
    assert_eq!(leaves(&r, DEV + 2, 16), Err(ModelQueryError::Unsupported));
}

/// The address of the 4 KiB leaf entry of `iova` in the 4-level table at `slpt`.
fn slpt_leaf(r: &Rig, slpt: u64, iova: u64) -> u64 {
    let mut table = slpt;
    for level in (2..=4).rev() {
        table = r.mem.r(table + sl::index(iova, level) * 8) & ADDR;
    }
    table + sl::index(iova, 1) * 8
}

#[test]
fn guest_mappings_of_hostile_tables_is_bounded() {
    // Every absent word reads as a mostly-present entry pointing somewhere: a table that is
    // all garbage. The walk must end, within the limit or with TooMany, and write nothing.
    let mut r = Rig::new(VtdModelConfig::legacy());
    r.mem.chaos = true;
    r.legacy_ctx(DEV, 0x40_0000, 2, 1, context::TT_SL);
    r.enable(rtaddr::TTM_LEGACY);
    let before = r.mem.words.lock().unwrap().len();
    for limit in [0, 1, 64, 1000] {
        match leaves(&r, DEV, limit) {
            Ok(v) => assert!(v.len() <= limit),
            Err(e) => assert!(matches!(e, ModelQueryError::TooMany { .. } | ModelQueryError::BadEntry { .. }), "{e}"),
        }
    }
    assert_eq!(r.mem.words.lock().unwrap().len(), before, "no A/D bits written");
    // A table pointing at itself at every level: depth is bounded by the levels.
    let r = Rig::new(VtdModelConfig::legacy());
    let slpt = r.page();
    r.legacy_ctx(DEV, slpt, 2, 1, context::TT_SL);
    r.enable(rtaddr::TTM_LEGACY);
    r.mem.w(slpt, slpt | sl::R | sl::W);
    let v = leaves(&r, DEV, 16).unwrap();
    assert_eq!(v, vec![(0, slpt, 0x1000, Prot::RW)], "the self-pointer read as a leaf at level 1");
}

// ---- guest_stage1: what a VMM nests. ----

fn stage1(r: &Rig, devfn: u8, pasid: Option<u32>) -> Result<GuestStage1, ModelQueryError> {
    let dev = DeviceRef::Rid(RequesterId::new(0, 0, devfn >> 3, devfn & 7));
    r.m.guest_stage1(&r.mem, dev, pasid.map(Pasid))
}

fn x86_64(root: u64) -> Result<GuestStage1, ModelQueryError> {
    Ok(GuestStage1 { format: PtFormat::X86_64, root: PhysAddr(root), words: vec![] })
}

/// The reason of an [`ModelQueryError::UnsupportedMode`].
fn mode_reason(e: Result<GuestStage1, ModelQueryError>) -> &'static str {
    match e {
        Err(ModelQueryError::UnsupportedMode { reason }) => reason,
        other => panic!("expected UnsupportedMode, got {other:?}"),
    }
}

#[test]
fn guest_stage1_reports_first_stage_pasid_entries_from_memory() {
    let r = Rig::new(VtdModelConfig::scalable());
    assert_eq!(r.m.guest_stage1_format(), Some(PtFormat::X86_64));
    assert_eq!(Rig::new(VtdModelConfig::legacy()).m.guest_stage1_format(), None, "no SMTS / FSTS");
    assert_eq!(stage1(&r, SDEV, None), Err(ModelQueryError::Untranslated), "TE off");
    let (r, dir) = scalable_rig(SDEV, sm_context::PASIDE, 0);
    assert_eq!(stage1(&r, SDEV, None), Err(ModelQueryError::Blocked), "RID_PASID entry not present");
    let fs = r.page();
    pasid_entry(&r, dir, 0, [pasid_entry::PGTT_FS | pasid_entry::P, 3, fs | pasid_entry::FSPM_4LEVEL]);
    assert_eq!(stage1(&r, SDEV, None), x86_64(fs));
    // A tagged request uses its own entry; the flag bits of qword 2 are not part of the root.
    let fs2 = r.page();
    pasid_entry(&r, dir, 0x45, [pasid_entry::PGTT_FS | pasid_entry::P, 3, fs2 | 0x1]);
    assert_eq!(stage1(&r, SDEV, Some(0x45)), x86_64(fs2));
    // Memory, not caches: translate caches the RID_PASID entry and the page; the guest points
    // the entry at another table without invalidating. DMA still uses the cached entry,
    // guest_stage1 reports the new root.
    r.map_fs(fs, 0x1000, 0x3000, 1, fl::P | fl::RW, |a| a);
    assert_eq!(r.pa(SDEV, None, 0x1000, Prot::READ), 0x3000);
    let fs3 = r.page();
    pasid_entry(&r, dir, 0, [pasid_entry::PGTT_FS | pasid_entry::P, 3, fs3]);
    assert_eq!(r.pa(SDEV, None, 0x1000, Prot::READ), 0x3000, "stale PASID entry and IOTLB");
    let stats = r.m.cache_stats();
    assert_eq!(stage1(&r, SDEV, None), x86_64(fs3));
    assert_eq!(r.m.cache_stats(), stats, "guest_stage1 used no cache");
    // Other translation types.
    let ss = r.page();
    pasid_entry(&r, dir, 1, [ss | pasid_entry::aw(2) | pasid_entry::PGTT_SS | pasid_entry::P, 3, 0]);
    assert!(mode_reason(stage1(&r, SDEV, Some(1))).contains("PGTT = 010"));
    let q0 = ss | pasid_entry::aw(2) | pasid_entry::PGTT_NESTED | pasid_entry::P;
    pasid_entry(&r, dir, 2, [q0, 3, fs]);
    assert!(mode_reason(stage1(&r, SDEV, Some(2))).contains("PGTT = 011"));
    pasid_entry(&r, dir, 3, [pasid_entry::aw(2) | pasid_entry::PGTT_PT | pasid_entry::P, 3, 0]);
    assert_eq!(stage1(&r, SDEV, Some(3)), Err(ModelQueryError::Untranslated), "pass-through");
    // 5-level first stage without CAP.FS5LP, and PGTT 000: entries translate faults on.
    pasid_entry(&r, dir, 4, [pasid_entry::PGTT_FS | pasid_entry::P, 3, fs | pasid_entry::FSPM_5LEVEL]);
    assert_eq!(stage1(&r, SDEV, Some(4)), Err(ModelQueryError::BadEntry { addr: 0 }));
    pasid_entry(&r, dir, 5, [pasid_entry::P, 3, fs]);
    assert_eq!(stage1(&r, SDEV, Some(5)), Err(ModelQueryError::BadEntry { addr: 0 }));
    // Not present, beyond the PASID width, devices without a context: blocked.
    pasid_entry(&r, dir, 6, [pasid_entry::PGTT_FS, 3, fs]);
    assert_eq!(stage1(&r, SDEV, Some(6)), Err(ModelQueryError::Blocked));
    assert_eq!(stage1(&r, SDEV, Some(7)), Err(ModelQueryError::Blocked), "PASID table entry never written");
    assert_eq!(stage1(&r, SDEV, Some(1 << 20)), Err(ModelQueryError::Blocked), "beyond ECAP.PSS");
    assert_eq!(stage1(&r, SDEV + 1, None), Err(ModelQueryError::Blocked), "no context entry");
    let far = DeviceRef::Sid(1 << 16);
    assert_eq!(r.m.guest_stage1(&r.mem, far, None), Err(ModelQueryError::Blocked));
    // Without PASIDE, tagged requests are blocked; untagged ones use RID_PASID 3.
    let (r2, dir2) = scalable_rig(0x10, 0, 3);
    pasid_entry(&r2, dir2, 3, [pasid_entry::PGTT_FS | pasid_entry::P, 3, fs]);
    assert_eq!(stage1(&r2, 0x10, None), x86_64(fs));
    assert_eq!(stage1(&r2, 0x10, Some(3)), Err(ModelQueryError::Blocked));
}

#[test]
fn guest_stage1_names_modes_it_cannot_express() {
    // 5-level first stage on a unit with CAP.FS5LP: valid, but not the 4-level x86-64 format.
    let cfg = VtdModelConfig { cap: VtdModelConfig::scalable().cap | cap::FS5LP, ..VtdModelConfig::scalable() };
    let (r, dir) = scalable_rig_with(cfg, SDEV, 0, 0);
    let fs = r.page();
    pasid_entry(&r, dir, 0, [pasid_entry::PGTT_FS | pasid_entry::P, 3, fs | pasid_entry::FSPM_5LEVEL]);
    assert!(mode_reason(stage1(&r, SDEV, None)).contains("FSPM = 01"));
    // Legacy mode on a scalable-capable unit: second-level contexts have nothing to nest,
    // pass-through contexts are untranslated, requests with PASID and missing or invalid
    // contexts as translate treats them.
    let (r, _) = legacy_rig(VtdModelConfig::scalable());
    assert!(mode_reason(stage1(&r, DEV, None)).contains("TTM = 00"));
    assert_eq!(stage1(&r, DEV, Some(1)), Err(ModelQueryError::Blocked));
    r.legacy_ctx(DEV + 1, 0, 2, 2, context::TT_PT);
    assert_eq!(stage1(&r, DEV + 1, None), Err(ModelQueryError::Untranslated));
    assert_eq!(stage1(&r, DEV + 2, None), Err(ModelQueryError::Blocked), "no context entry");
    r.legacy_ctx(DEV + 3, 0x5000, 2, 2, context::TT_MASK);
    assert_eq!(stage1(&r, DEV + 3, None), Err(ModelQueryError::BadEntry { addr: 0x5000 }), "TT = 11");
    // TTM = 01 on a unit without ECAP.SMTS blocks every request.
    let r = Rig::new(VtdModelConfig::legacy());
    r.enable(rtaddr::TTM_SCALABLE);
    assert_eq!(stage1(&r, DEV, None), Err(ModelQueryError::Blocked));
}

#[test]
fn guest_stage1_of_hostile_structures_is_bounded_and_writes_nothing() {
    // Every absent word reads as a mostly-present entry pointing somewhere.
    let mut r = Rig::new(VtdModelConfig::scalable());
    r.mem.chaos = true;
    r.enable(rtaddr::TTM_SCALABLE);
    let before = r.mem.words.lock().unwrap().len();
    let mut found = 0;
    for devfn in 0..=255u8 {
        for pasid in [None, Some(0), Some(1), Some(0x45), Some(0xf_ffff), Some(1 << 20), Some(u32::MAX)] {
            match stage1(&r, devfn, pasid) {
                Ok(s) => {
                    assert_eq!((s.format, s.root.raw() & !ADDR, s.words.len()), (PtFormat::X86_64, 0, 0));
                    found += 1;
                }
                Err(e) => assert!(
                    matches!(
                        e,
                        ModelQueryError::Blocked
                            | ModelQueryError::BadEntry { .. }
                            | ModelQueryError::Untranslated
                            | ModelQueryError::UnsupportedMode { .. }
                    ),
                    "{e}"
                ),
            }
        }
    }
    assert!(found > 0, "some garbage reads as a first-stage entry: the deep path ran");
    assert_eq!(r.mem.words.lock().unwrap().len(), before, "nothing written");
}

/// Reads GSTS until `bit` shows, returning how many reads it took (at most 16).
fn reads_until_gsts(r: &Rig, bit: u32) -> u32 {
    (1..=16).find(|_| r.rd32(off::GSTS) & bit != 0).unwrap_or(u32::MAX)
}

#[test]
fn latency_delays_commands_and_register_invalidation() {
    let r = Rig::new(VtdModelConfig::legacy_no_qi().with_latency(3));
    let slpt = r.page();
    r.legacy_ctx(DEV, slpt, 2, 1, context::TT_SL);
    r.wr(off::RTADDR, ROOT | rtaddr::TTM_LEGACY);
    r.wr32(off::GCMD, u64::from(gcmd::SRTP));
    assert_eq!(reads_until_gsts(&r, gcmd::SRTP), 3, "RTPS at the third read");
    r.wr32(off::GCMD, u64::from(gcmd::TE));
    // Until TES shows, DMA is untranslated.
    assert_eq!(r.pa(DEV, None, 0x4000, Prot::READ), 0x4000);
    assert_eq!(reads_until_gsts(&r, gcmd::TE), 3, "TES at the third read");
    let iro = r.m.config().iro();
    r.map_ss(slpt, 4, 0x4000, 0x10_4000, 1, sl::R | sl::W);
    assert_eq!(r.pa(DEV, None, 0x4000, Prot::READ), 0x10_4000);
    r.map_ss(slpt, 4, 0x4000, 0x20_4000, 1, sl::R | sl::W);
    r.wr(iro + 8, iotlb::IVT | iotlb::DOMAIN | iotlb::did(1));
    // A driver that does not poll IVT sees the stale entry.
    assert_eq!(r.pa(DEV, None, 0x4000, Prot::READ), 0x10_4000, "stale before IVT clears");
    assert_ne!(r.rd(iro + 8) & iotlb::IVT, 0);
    assert_ne!(r.rd(iro + 8) & iotlb::IVT, 0);
    assert_eq!(r.pa(DEV, None, 0x4000, Prot::READ), 0x10_4000, "still stale after two reads");
    let v = r.rd(iro + 8);
    assert_eq!((v & iotlb::IVT, (v >> 57) & 3), (0, 2), "IVT clear, IAIG domain at the third read");
    assert_eq!(r.pa(DEV, None, 0x4000, Prot::READ), 0x20_4000);
    // The context cache likewise.
    r.mem.w(CTX + context::offset(DEV), 0);
    r.wr(off::CCMD, ccmd::ICC | ccmd::DEVICE | ccmd::sid(u16::from(DEV)));
    assert!(r.dma(DEV, None, 0x4000, Prot::READ).is_ok(), "cached context entry before ICC clears");
    let reads = (1..=16).find(|_| r.rd(off::CCMD) & ccmd::ICC == 0);
    assert_eq!(reads, Some(3));
    assert_eq!(r.dma(DEV, None, 0x4000, Prot::READ).unwrap_err().reason, Fault::BLOCKED);
}

#[test]
fn latency_drops_a_command_written_before_the_previous_one_is_done() {
    let r = Rig::new(VtdModelConfig::legacy_no_qi().with_latency(3));
    r.wr(off::RTADDR, ROOT | rtaddr::TTM_LEGACY);
    r.wr32(off::GCMD, u64::from(gcmd::SRTP));
    r.wr32(off::GCMD, u64::from(gcmd::TE));
    assert_eq!(reads_until_gsts(&r, gcmd::SRTP), 3);
    assert!((0..16).all(|_| r.rd32(off::GSTS) & gcmd::TE == 0), "TE came while SRTP was in flight: dropped");
}

/// Writes descriptors at queue offset `t` and moves IQT past them, without reading a register.
fn submit_at(r: &Rig, q: u64, t: u64, descs: &[[u64; 2]]) -> u64 {
    let mut t = t;
    for d in descs {
        r.mem.w(q + t, d[0]);
        r.mem.w(q + t + 8, d[1]);
        t = (t + 16) % 4096;
    }
    r.wr(off::IQT, t);
    t
}

#[test]
fn latency_runs_the_queue_a_batch_at_a_time_out_of_order() {
    let r = Rig::new(VtdModelConfig::legacy().with_latency(2));
    let slpt = r.page();
    r.legacy_ctx(DEV, slpt, 2, 1, context::TT_SL);
    r.wr(off::RTADDR, ROOT | rtaddr::TTM_LEGACY);
    r.wr32(off::GCMD, u64::from(gcmd::SRTP));
    assert_eq!(reads_until_gsts(&r, gcmd::SRTP), 2);
    let q = r.page();
    r.wr(off::IQA, iqa::value(q, 0, false));
    r.wr(off::IQT, 0);
    r.wr32(off::GCMD, u64::from(gcmd::TE | gcmd::QIE));
    assert_eq!(reads_until_gsts(&r, gcmd::QIE), 2);
    for i in 0..4u64 {
        r.map_ss(slpt, 4, 0x10_0000 + i * 0x1000, 0x100_0000 + i * 0x1000, 1, sl::R);
        r.pa(DEV, None, 0x10_0000 + i * 0x1000, Prot::READ);
        r.map_ss(slpt, 4, 0x10_0000 + i * 0x1000, 0x200_0000 + i * 0x1000, 1, sl::R);
    }
    let pa = |i: u64| r.pa(DEV, None, 0x10_0000 + i * 0x1000, Prot::READ);
    let psi = |i: u64| [qi::iotlb::q0(qi::iotlb::PAGE, 1), qi::iotlb::q1(0x10_0000 + i * 0x1000, 0)];
    let wait = |data: u32| [qi::wait::q0(qi::wait::SW, data), qi::wait::q1(0x5000)];
    // Two batches in one IQT write: nothing runs at the write.
    let t = submit_at(&r, q, 0, &[psi(0), wait(1), psi(1), wait(2)]);
    assert_eq!((pa(0), pa(1), r.mem.r(0x5000)), (0x100_0000, 0x100_1000, 0), "nothing done at the IQT write");
    r.rd32(off::FSTS);
    assert_eq!(pa(0), 0x100_0000, "one read is not enough");
    assert_eq!(r.rd(off::IQH), 32, "the first batch ran at the second read");
    assert_eq!((pa(0), pa(1), r.mem.r(0x5000)), (0x200_0000, 0x100_1000, 1));
    r.rd32(off::FSTS);
    assert_eq!(r.rd(off::IQH), t, "the second batch");
    assert_eq!((pa(1), r.mem.r(0x5000)), (0x200_1000, 2));
    // Before a wait, invalidations complete in any order: here the later one ran although the
    // earlier one (a reserved bit set) stops the queue.
    let bad = [qi::iotlb::q0(qi::iotlb::PAGE, 1), qi::iotlb::q1(0x10_2000, 0) | (1 << 8)];
    submit_at(&r, q, t, &[bad, psi(3), wait(3)]);
    r.rd32(off::FSTS);
    assert!(r.rd32(off::FSTS) & fsts::IQE != 0);
    assert_eq!(r.rd(off::IQH), t, "IQH at the bad descriptor");
    assert_eq!((pa(2), pa(3), r.mem.r(0x5000)), (0x100_2000, 0x200_3000, 2), "no status write past the error");
}

#[test]
fn hostile_registers_with_latency_never_panic() {
    for cfg in [VtdModelConfig::scalable(), VtdModelConfig::legacy(), VtdModelConfig::legacy_no_qi()] {
        let mut r = Rig::new(cfg.with_latency(2));
        r.mem.chaos = true;
        r.wr(off::RTADDR, ROOT);
        // (No IQA without ECAP.QI.)
        let _ = r.m.mmio_write(&r.mem, off::IQA, 8, 0x1234_5000 | iqa::DW);
        r.wr32(off::GCMD, u64::from(gcmd::SRTP));
        r.wr32(off::GCMD, u64::from(gcmd::TE | gcmd::QIE));
        for i in 0..600u64 {
            let h = splitmix(i.wrapping_mul(31));
            let offset = (h >> 52) & 0xff8;
            let _ = r.m.mmio_write(&r.mem, offset, if h & 1 != 0 { 8 } else { 4 }, splitmix(h));
            if h & 2 != 0 {
                let _ = r.m.mmio_write(&r.mem, off::IQT, 8, (h >> 20) & 0xfe0);
            }
            for _ in 0..(h >> 8) % 4 {
                let _ = r.m.mmio_read(&r.mem, (h >> 40) & 0xff8, 8);
            }
            let _ = r.dma((h >> 32) as u8, None, splitmix(h), Prot::READ);
        }
    }
}
