//! Driver tests against a fake unit: a register file that reflects GCMD into GSTS, completes
//! register-based invalidations at once and consumes the invalidation queue (recording each
//! descriptor and performing wait status writes), over a HashMap memory.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RSlice, RSliceMut, RStr, RString};
use ioasis::abi::{
    DeviceInfo, ErrorCode, HostError, HostServices, HostServices_TO, HwptFlags, HwptKind, HwptRequest, LogLevel, Unit,
    UnitDesc,
};
use ioasis::{AddressSpace, DeviceRef, Iova, PageSizes, Pasid, PhysAddr, Prot, RequesterId};

use super::io::Io;
use super::pagetable::new_table;
use super::unit::VtdUnit;
use crate::layout::qi;
use crate::layout::regs::{self, cap, ecap, fsts, gcmd, off};
use crate::layout::tables::{context, pasid_entry, sl, ADDR};

/// QEMU 7.2's intel-iommu registers (legacy): QI, PT, PSI, MAMV 18, 2M/1G, 39/48-bit.
const CAP: u64 = 0x00d2_008c_222f_0606;
const ECAP: u64 = 0xf42;
const MB: u64 = 1 << 20;

#[derive(Default)]
struct State {
    mem: HashMap<u64, u64>,
    live: HashSet<u64>,
    next_page: u64,
    /// Fail the allocation with this 1-based index.
    fail_at: Option<u64>,
    allocs: u64,
    regs: HashMap<u64, u64>,
    /// Every register write: (offset, width, value).
    writes: Vec<(u64, u8, u64)>,
    /// Every descriptor the queue consumed: [q0, q1].
    descs: Vec<[u64; 2]>,
}

#[derive(Clone, Default)]
struct Fake {
    s: Arc<Mutex<State>>,
    clock: Arc<AtomicU64>,
}

impl Fake {
    fn new(cap: u64, ecap: u64) -> Self {
        let f = Fake::default();
        {
            let mut s = f.s.lock().unwrap();
            s.next_page = 0x100_0000;
            s.regs.insert(off::VER, 0x10);
            s.regs.insert(off::CAP, cap);
            s.regs.insert(off::ECAP, ecap);
        }
        f
    }
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.s.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn host(&self) -> ioasis::abi::HostServicesBox {
        HostServices_TO::from_ptr(RArc::new(self.clone()), TD_Opaque)
    }
    fn rd(&self, pa: u64) -> u64 {
        *self.st().mem.get(&pa).unwrap_or(&0)
    }

    /// Consumes the queue from IQH to the new tail.
    fn run_queue(s: &mut State, tail: u64) {
        let iqa = *s.regs.get(&off::IQA).unwrap_or(&0);
        let size = if iqa & regs::iqa::DW != 0 { 32 } else { 16 };
        let base = iqa & !0xfff;
        let mut head = *s.regs.get(&off::IQH).unwrap_or(&0);
        while head != tail {
            let q0 = *s.mem.get(&(base + head)).unwrap_or(&0);
            let q1 = *s.mem.get(&(base + head + 8)).unwrap_or(&0);
            s.descs.push([q0, q1]);
            if qi::type_of(q0) == qi::wait::TYPE && q0 & qi::wait::SW != 0 {
                s.mem.insert(q1 & !7, q0 >> 32);
            }
            head = (head + size) % 4096;
        }
        s.regs.insert(off::IQH, head);
    }
}

fn ok<T>(v: T) -> RResult<T, HostError> {
    RResult::ROk(v)
}

impl HostServices for Fake {
    fn alloc_table_page(&self) -> RResult<PhysAddr, HostError> {
        let mut s = self.st();
        s.allocs += 1;
        if s.fail_at == Some(s.allocs) {
            return RResult::RErr(HostError::new(HostError::NO_MEMORY, 0));
        }
        let p = s.next_page;
        s.next_page += 4096;
        s.live.insert(p);
        for i in 0..512 {
            s.mem.remove(&(p + i * 8));
        }
        ok(PhysAddr(p))
    }
    fn free_table_page(&self, page: PhysAddr) -> RResult<(), HostError> {
        if self.st().live.remove(&page.0) {
            ok(())
        } else {
            RResult::RErr(HostError::new(HostError::NOT_ALLOCATED, page.0))
        }
    }
    fn alloc_table_pages(&self, count: u32) -> RResult<PhysAddr, HostError> {
        let mut s = self.st();
        s.allocs += 1;
        if s.fail_at == Some(s.allocs) {
            return RResult::RErr(HostError::new(HostError::NO_MEMORY, 0));
        }
        let p = s.next_page;
        s.next_page += 4096 * u64::from(count);
        for page in 0..u64::from(count) {
            s.live.insert(p + page * 4096);
            for i in 0..512 {
                s.mem.remove(&(p + page * 4096 + i * 8));
            }
        }
        ok(PhysAddr(p))
    }
    fn free_table_pages(&self, first: PhysAddr, count: u32) -> RResult<(), HostError> {
        let mut s = self.st();
        let pages: Vec<u64> = (0..u64::from(count)).map(|i| first.0 + i * 4096).collect();
        if !pages.iter().all(|p| s.live.contains(p)) {
            return RResult::RErr(HostError::new(HostError::NOT_ALLOCATED, first.0));
        }
        for p in pages {
            s.live.remove(&p);
        }
        ok(())
    }
    fn read_phys(&self, pa: PhysAddr, mut buf: RSliceMut<'_, u8>) -> RResult<(), HostError> {
        let s = self.st();
        for (i, c) in buf.as_mut_slice().chunks_mut(8).enumerate() {
            let v = *s.mem.get(&(pa.0 + i as u64 * 8)).unwrap_or(&0);
            c.copy_from_slice(&v.to_le_bytes()[..c.len()]);
        }
        ok(())
    }
    fn write_phys(&self, pa: PhysAddr, data: RSlice<'_, u8>) -> RResult<(), HostError> {
        let mut s = self.st();
        for (i, c) in data.as_slice().chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            s.mem.insert(pa.0 + i as u64 * 8, u64::from_le_bytes(b));
        }
        ok(())
    }
    fn read_u64(&self, pa: PhysAddr) -> RResult<u64, HostError> {
        ok(self.rd(pa.0))
    }
    fn write_u64(&self, pa: PhysAddr, value: u64) -> RResult<(), HostError> {
        self.st().mem.insert(pa.0, value);
        ok(())
    }
    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> RResult<u64, HostError> {
        let mut s = self.st();
        let old = *s.mem.get(&pa.0).unwrap_or(&0);
        s.mem.insert(pa.0, old & mask);
        ok(old)
    }
    fn mmio_read(&self, offset: u64, width: u8) -> RResult<u64, HostError> {
        let v = *self.st().regs.get(&offset).unwrap_or(&0);
        ok(if width == 4 { v & 0xffff_ffff } else { v })
    }
    fn mmio_write(&self, offset: u64, width: u8, value: u64) -> RResult<(), HostError> {
        let mut s = self.st();
        s.writes.push((offset, width, value));
        let fro = cap::fro(CAP);
        match offset {
            off::GCMD => {
                let old = *s.regs.get(&off::GSTS).unwrap_or(&0) as u32;
                let v = value as u32;
                let mut sts = v & !gcmd::ONE_SHOT;
                if v & gcmd::SRTP != 0 || old & gcmd::SRTP != 0 {
                    sts |= gcmd::SRTP; // RTPS
                }
                s.regs.insert(off::GSTS, sts as u64);
            }
            off::CCMD => {
                s.regs.insert(off::CCMD, value & !regs::ccmd::ICC);
            }
            off::IQT => {
                s.regs.insert(off::IQT, value);
                Self::run_queue(&mut s, value);
            }
            off::FSTS => {
                let old = *s.regs.get(&off::FSTS).unwrap_or(&0);
                s.regs.insert(off::FSTS, old & !(value & 0x7f));
            }
            o if o == fro + 12 && width == 4 => {
                let hi = *s.regs.get(&(fro + 8)).unwrap_or(&0);
                if value & (1 << 31) != 0 {
                    s.regs.insert(fro + 8, hi & !(1 << 63));
                }
            }
            o if o == 0xf8 => {
                s.regs.insert(o, value & !regs::iotlb::IVT);
            }
            o => {
                s.regs.insert(o, value);
            }
        }
        ok(())
    }
    fn now_ns(&self) -> u64 {
        self.clock.fetch_add(1000, Ordering::Relaxed)
    }
    fn log(&self, _level: LogLevel, _message: RStr<'_>) {}
}

fn desc(params: &str) -> UnitDesc {
    UnitDesc { name: RString::from("dmar0"), mmio_base: PhysAddr(0xfed9_0000), segment: 0, params: params.into() }
}

fn dev(d: u8) -> DeviceInfo {
    DeviceInfo {
        dev: DeviceRef::Rid(RequesterId::new(0, 0, d, 0)),
        pasid_bits: 20,
        ats: false,
        pri: false,
        dma_bits: 64,
    }
}

fn paging(flags: HwptFlags) -> HwptRequest {
    HwptRequest {
        kind: HwptKind::PAGING,
        flags,
        parent: ROption::RNone,
        stage1: ROption::RNone,
        space: AddressSpace::host(),
    }
}

#[test]
fn probe_sets_root_then_enables_queue_then_translation() {
    let f = Fake::new(CAP, ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).expect("probe");
    let s = f.st();
    let pos = |pred: &dyn Fn(&(u64, u8, u64)) -> bool| s.writes.iter().position(pred).expect("write missing");
    let rtaddr = pos(&|w| w.0 == off::RTADDR);
    let srtp = pos(&|w| w.0 == off::GCMD && w.2 as u32 & gcmd::SRTP != 0);
    let iqa = pos(&|w| w.0 == off::IQA);
    let qie = pos(&|w| w.0 == off::GCMD && w.2 as u32 & gcmd::QIE != 0);
    let te = pos(&|w| w.0 == off::GCMD && w.2 as u32 & gcmd::TE != 0);
    assert!(rtaddr < srtp && srtp < iqa && iqa < qie && qie < te, "{:x?}", s.writes);
    // Legacy mode: TTM 00, 128-bit descriptors; the root pointer's page is a live table page.
    let (_, w, rt) = s.writes[rtaddr];
    assert_eq!(w, 8);
    assert_eq!(rt & regs::rtaddr::TTM_MASK, 0);
    assert!(s.live.contains(&(rt & !0xfff)));
    assert_eq!(s.regs[&off::IQA] & regs::iqa::DW, 0);
    // GCMD writes are 32-bit, and no one-shot bit is written back with TE.
    for &(o, w, v) in &s.writes {
        if o == off::GCMD {
            assert_eq!(w, 4);
        }
        if o == off::GCMD && v as u32 & gcmd::TE != 0 {
            assert_eq!(v as u32 & gcmd::ONE_SHOT, 0, "{v:#x}");
            assert_ne!(v as u32 & gcmd::QIE, 0, "QIE kept when TE is set");
        }
    }
    // Global context-cache and IOTLB invalidation, then a wait, through the queue.
    let types: Vec<u64> = s.descs.iter().map(|d| qi::type_of(d[0])).collect();
    assert_eq!(types, vec![qi::cc::TYPE, qi::iotlb::TYPE, qi::wait::TYPE]);
    assert_eq!(s.descs[0][0] & (3 << 4), qi::cc::GLOBAL);
    assert_eq!(s.regs[&off::GSTS] as u32 & (gcmd::TE | gcmd::QIE), gcmd::TE | gcmd::QIE);
    drop(s);
    let caps = unit.caps();
    assert_eq!(caps.ias_bits, 48);
    assert_eq!(caps.page_sizes, PageSizes::SZ_4K_2M_1G);
    assert_eq!(caps.pasid_bits, 0);
    assert_eq!(unit.table_pages(), 3, "root, queue, status page");
    unit.shutdown().unwrap();
    assert!(f.st().live.is_empty(), "shutdown frees everything");
}

#[test]
fn probe_refuses_units_without_a_usable_sagaw() {
    let f = Fake::new(CAP & !(0x1f << 8) | (1 << 8), ECAP); // SAGAW bit 0 (30-bit, 2-level): no usable width
    let e = VtdUnit::probe(&desc(""), Io::new(f.host())).err().expect("refused");
    assert_eq!(e.code, ErrorCode::UNSUPPORTED);
    assert!(e.message.contains("SAGAW"), "{}", e.message);
    assert!(f.st().live.is_empty());
    let e = VtdUnit::probe(&desc("mode = \"scalable\""), Io::new(Fake::new(CAP, ECAP).host())).err().unwrap();
    assert!(e.message.contains("ECAP.SMTS"), "{}", e.message);
    assert!(VtdUnit::probe(&desc("bogus = 1"), Io::new(Fake::new(CAP, ECAP).host())).is_err());
}

#[test]
fn probe_times_out_when_gsts_never_answers() {
    let f = Fake::new(CAP, ECAP);
    let io = Io::new(f.host());
    // A status bit that never comes: the poll gives up after POLL_TIMEOUT_NS of host clock.
    let r = io.poll("never", || Ok(None::<()>));
    assert_eq!(r.unwrap_err().code, ErrorCode::TIMEOUT);
    // A queue whose wait status is never written times out too.
    f.st().regs.insert(off::GSTS, 0);
    let e = io.gcmd(gcmd::TE, 0, "enable translation", |s| s & gcmd::QIE != 0).unwrap_err();
    assert_eq!(e.code, ErrorCode::TIMEOUT);
}

#[test]
fn two_mib_aligned_map_uses_a_ps_leaf_with_read_write() {
    let f = Fake::new(CAP, ECAP);
    let io = Io::new(f.host());
    let t = new_table(&io, 4, PageSizes::SZ_4K_2M_1G, 48, 0).unwrap();
    t.map(&io, 0x4000_0000 + 2 * MB, 0x8000_0000, 2 * MB, Prot::RW).unwrap();
    let leaf = t.walk(&io, 0x4000_0000 + 2 * MB + 0x1234).unwrap().expect("mapped");
    assert_eq!(leaf.span, 2 * MB);
    assert_eq!(leaf.value, 0x8000_0000 | sl::PS | sl::R | sl::W);
    assert_eq!(t.count_pages(&io).unwrap(), 3, "levels 4, 3, 2");
    // Read-only 4 KiB where only 4 KiB is aligned.
    t.map(&io, 0x1000, 0x9000_1000, 0x1000, Prot::READ).unwrap();
    let leaf = t.walk(&io, 0x1000).unwrap().unwrap();
    assert_eq!((leaf.span, leaf.value), (4096, 0x9000_1000 | sl::R));
    // Unmapping 4 KiB in the middle of the 2 MiB page splits it; the rest stays.
    assert_eq!(t.unmap(&io, 0x4000_0000 + 2 * MB + 0x3000, 0x1000).unwrap().bytes, 0x1000);
    assert!(t.walk(&io, 0x4000_0000 + 2 * MB + 0x3000).unwrap().is_none());
    let l = t.walk(&io, 0x4000_0000 + 2 * MB + 0x4000).unwrap().unwrap();
    assert_eq!((l.span, l.value & ADDR), (4096, 0x8000_4000));
    assert_eq!(t.unmap(&io, 0, 1 << 40).unwrap().bytes, 2 * MB - 0x1000 + 0x1000);
    assert_eq!(t.count_pages(&io).unwrap(), 1, "empty tables are freed");
    t.destroy(&io);
    assert!(f.st().live.is_empty());
}

#[test]
fn failed_map_leaves_no_table_page() {
    for fail in 1..=3 {
        let f = Fake::new(CAP, ECAP);
        let io = Io::new(f.host());
        let t = new_table(&io, 4, PageSizes::SZ_4K_2M_1G, 48, 0).unwrap();
        t.map(&io, 0x1000, 0x1000, 0x1000, Prot::RW).unwrap();
        let before = f.st().live.len();
        let allocs = f.st().allocs;
        f.st().fail_at = Some(allocs + fail);
        // 4 KiB at both ends of a 1 GiB span far away: needs 3 new tables on one side.
        let e = t.map(&io, (1 << 39) - 0x1000, 0x2000_0000, 0x2000, Prot::RW).unwrap_err();
        assert_eq!(e.code, ErrorCode::NO_MEMORY);
        assert_eq!(f.st().live.len(), before, "failure at allocation {fail}");
        assert!(t.walk(&io, (1 << 39) - 0x1000).unwrap().is_none());
        assert!(t.walk(&io, 0x1000).unwrap().is_some());
    }
}

#[test]
fn legacy_attach_writes_the_context_entry() {
    let f = Fake::new(CAP, ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let h = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    h.map(Iova(0x10000), PhysAddr(0x20_0000), 0x4000, Prot::RW).unwrap();
    let d = dev(4);
    unit.attach(&d, ROption::RNone, &h).unwrap();
    let rt = f.st().regs[&off::RTADDR] & !0xfff;
    let root_lo = f.rd(rt); // bus 0
    assert_eq!(root_lo & 1, 1);
    let ctx = root_lo & ADDR;
    let lo = f.rd(ctx + 0x20 * 16);
    let hi = f.rd(ctx + 0x20 * 16 + 8);
    // DID 1, AW 2 (48-bit, 4-level), SLPTPTR, TT 00, P.
    assert_eq!(hi, 2 | (1 << 8));
    assert_eq!(lo & !ADDR, context::P);
    let slpt = lo & ADDR;
    assert!(f.st().live.contains(&slpt));
    // The second-stage walk from SLPTPTR gives the mapping.
    let mut t = slpt;
    for level in (2..=4).rev() {
        t = f.rd(t + sl::index(0x10000, level) * 8) & ADDR;
    }
    assert_eq!(f.rd(t + sl::index(0x10000, 1) * 8), 0x20_0000 | sl::R | sl::W);
    // The context cache was invalidated for 00:04.0 with DID 1.
    let s = f.st();
    assert!(s.descs.iter().any(|x| x[0] == qi::cc::q0(qi::cc::DEVICE, 1, 0x20)), "{:x?}", s.descs);
    drop(s);
    // PASID attach needs scalable mode.
    let e = unit.attach(&d, ROption::RSome(Pasid(3)), &h).unwrap_err();
    assert_eq!(e.code, ErrorCode::UNSUPPORTED);
    assert!(e.message.contains("scalable"));
    // Detach blocks: P clear, then the old domain's IOTLB is flushed.
    f.st().descs.clear();
    unit.detach(&d, ROption::RNone).unwrap();
    assert_eq!(f.rd(ctx + 0x20 * 16) & context::P, 0);
    assert!(f.st().descs.iter().any(|x| x[0] == qi::iotlb::q0(qi::iotlb::DOMAIN, 1)));
    drop(h);
    unit.shutdown().unwrap();
    assert!(f.st().live.is_empty());
}

#[test]
fn unmap_sends_one_page_selective_batch_with_a_wait() {
    let f = Fake::new(CAP, ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let h = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    h.map(Iova(0x10000), PhysAddr(0x20_0000), 0x4000, Prot::RW).unwrap();
    unit.attach(&dev(4), ROption::RNone, &h).unwrap();
    f.st().descs.clear();
    assert_eq!(h.unmap(Iova(0x10000), 0x4000).unwrap(), 0x4000);
    let s = f.st();
    assert_eq!(s.descs.len(), 2, "{:x?}", s.descs);
    // CAP.DWD/DRD are set: the descriptor drains writes and reads.
    assert_eq!(s.descs[0], [qi::iotlb::q0(qi::iotlb::PAGE, 1) | qi::iotlb::DRAIN, qi::iotlb::q1(0x10000, 2)]);
    assert_eq!(qi::type_of(s.descs[1][0]), qi::wait::TYPE);
    assert_ne!(s.descs[1][0] & qi::wait::SW, 0);
    // A range that is not one aligned chunk is split into naturally aligned ones.
    assert_eq!(super::inv::psi_chunks(CAP, 0x3000, 0x6000), Some(vec![(0x3000, 0), (0x4000, 2), (0x8000, 0)]));
    assert_eq!(super::inv::psi_chunks(CAP & !cap::PSI, 0, 0x1000), None);
}

#[test]
fn caching_mode_invalidates_after_map_and_plain_units_do_not() {
    for (cap_value, expect) in [(CAP | cap::CM, true), (CAP & !cap::CM, false)] {
        let f = Fake::new(cap_value, ECAP);
        let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
        let h = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
        unit.attach(&dev(4), ROption::RNone, &h).unwrap();
        f.st().descs.clear();
        h.map(Iova(0x40_0000), PhysAddr(0x20_0000), 0x2000, Prot::RW).unwrap();
        let s = f.st();
        let iotlb: Vec<_> = s.descs.iter().filter(|d| qi::type_of(d[0]) == qi::iotlb::TYPE).collect();
        if expect {
            // 6.1: not-present entries may be cached under CM, so the new range is invalidated.
            assert_eq!(iotlb.len(), 1, "{:x?}", s.descs);
            assert_eq!(iotlb[0][1], qi::iotlb::q1(0x40_0000, 1));
        } else {
            assert!(iotlb.is_empty(), "no invalidation for a not-present to present change: {:x?}", s.descs);
        }
    }
}

#[test]
fn register_based_invalidation_without_qi() {
    let f = Fake::new(CAP, ECAP & !ecap::QI);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    assert_eq!(unit.table_pages(), 1);
    let h = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    h.map(Iova(0x10000), PhysAddr(0x20_0000), 0x1000, Prot::RW).unwrap();
    unit.attach(&dev(4), ROption::RNone, &h).unwrap();
    f.st().writes.clear();
    h.unmap(Iova(0x10000), 0x1000).unwrap();
    let s = f.st();
    let iro = ecap::iro(ECAP);
    assert_eq!(s.writes[0], (iro, 8, 0x10000), "IVA: address, AM 0");
    let (o, w, v) = s.writes[1];
    assert_eq!((o, w), (iro + 8, 8));
    assert_eq!(v & (regs::iotlb::IVT | (3 << 60)), regs::iotlb::IVT | regs::iotlb::PAGE);
    assert_eq!((v >> 32) as u16, 1, "DID 1");
}

#[test]
fn faults_are_decoded_and_cleared() {
    let f = Fake::new(CAP, ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let fro = cap::fro(CAP);
    {
        let mut s = f.st();
        s.regs.insert(off::FSTS, (fsts::PPF | fsts::PFO) as u64);
        s.regs.insert(fro, 0x7700_0000);
        s.regs.insert(fro + 8, crate::layout::fault::frcd::hi(0x58, 0x4, None, true) | (0xffff << 40));
    }
    let faults = unit.read_faults(8).unwrap();
    assert_eq!(faults.len(), 1);
    let x = faults[0];
    assert_eq!(x.dev, DeviceRef::Rid(RequesterId::new(0, 0, 0xb, 0)));
    assert_eq!(x.addr, Iova(0x7700_0000));
    assert_eq!(x.access, Prot::READ);
    assert_eq!(x.reason, ioasis::abi::Fault::ADDRESS_SIZE);
    assert!(x.pasid.is_none(), "PP clear: the PASID field is ignored");
    let s = f.st();
    assert_eq!(s.regs[&(fro + 8)] >> 63, 0, "F cleared");
    assert!(s.writes.contains(&(off::FSTS, 4, fsts::PFO as u64)));
}

const SM_ECAP: u64 = ECAP
    | ecap::SMTS
    | ecap::SSTS
    | ecap::FSTS
    | ecap::NEST
    | ecap::PASID
    | ecap::SSADS
    | ecap::PRS
    | ecap::SC
    | ecap::DT
    | (19 << 35);

#[test]
fn scalable_attach_writes_pasid_entries() {
    let f = Fake::new(CAP, SM_ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    assert_eq!(f.st().regs[&off::RTADDR] & regs::rtaddr::TTM_MASK, regs::rtaddr::TTM_SCALABLE);
    assert_ne!(f.st().regs[&off::IQA] & regs::iqa::DW, 0);
    let caps = unit.caps();
    assert_eq!(caps.pasid_bits, 20, "a multi-page PASID directory reaches 20 bits");
    assert_eq!(caps.nested_formats.as_slice(), &[ioasis::PtFormat::X86_64]);
    let h = unit.alloc_hwpt(&paging(HwptFlags::DIRTY_TRACKING)).unwrap();
    let d = dev(4);
    unit.attach(&d, ROption::RNone, &h).unwrap();
    unit.attach(&d, ROption::RSome(Pasid(0x45)), &h).unwrap();
    let rt = f.st().regs[&off::RTADDR] & !0xfff;
    let ctx = f.rd(rt) & ADDR;
    let q0 = f.rd(ctx + 4 * 8 * 32);
    assert_eq!(q0 & 1, 1);
    let pdir = q0 & ADDR;
    let pt1 = f.rd(pdir + 8) & ADDR;
    let e = pt1 + 5 * 64;
    let e0 = f.rd(e);
    assert_eq!(e0 & pasid_entry::PGTT_MASK, pasid_entry::PGTT_SS);
    assert_eq!(e0 & 1, 1);
    assert_eq!(e0 & pasid_entry::SSADE, 0);
    assert_eq!(f.rd(e + 8), 1, "DID 1");
    h.set_dirty_tracking(true).unwrap();
    assert_ne!(f.rd(e) & pasid_entry::SSADE, 0);
    let pt0 = f.rd(pdir) & ADDR;
    assert_ne!(f.rd(pt0) & pasid_entry::SSADE, 0, "RID_PASID entry too");
    unit.detach(&d, ROption::RSome(Pasid(0x45))).unwrap();
    assert_eq!(f.rd(e), 0);
    unit.detach(&d, ROption::RNone).unwrap();
    assert_eq!(f.rd(ctx + 4 * 8 * 32), 0);
    drop(h);
    unit.shutdown().unwrap();
    assert!(f.st().live.is_empty());
}
