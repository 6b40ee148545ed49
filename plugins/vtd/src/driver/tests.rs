//! Driver tests against a fake unit: a register file that reflects GCMD into GSTS, completes
//! register-based invalidations at once and consumes the invalidation queue (recording each
//! descriptor and performing wait status writes), over a HashMap memory.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RSlice, RSliceMut, RStr, RString};
use ioasis::abi::{
    DeviceInfo, ErrorCode, HostError, HostServices, HostServices_TO, HwptFlags, HwptKind, HwptRequest, LogLevel,
    UnitDesc,
};
use ioasis::{AddressSpace, DeviceRef, Iova, PageSizes, Pasid, PhysAddr, Prot, RequesterId};

use super::hwpt::VtdHwpt;
use super::io::Io;
use super::pagetable::new_table;
use super::unit::VtdUnit;
use super::viommu::VtdViommu;
use crate::layout::qi;
use crate::layout::regs::{self, cap, ecap, fsts, gcmd, off};
use crate::layout::tables::{context, pasid_entry, sl, ADDR};
use ioasis::plugin::{boxed_hwpt, HwptDriver, UnitDriver, ViommuDriver};

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
    /// Every message logged through the host.
    logs: Vec<(LogLevel, String)>,
    /// Every 8-byte table write: (address, value).
    mem_writes: Vec<(u64, u64)>,
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

impl State {
    /// Like the framework's host services: a driver writes only live table pages.
    fn owns(&self, pa: u64, len: u64) -> bool {
        len > 0 && (pa & !0xfff..pa + len).step_by(4096).all(|p| self.live.contains(&p))
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
        if !s.owns(pa.0, data.len() as u64) {
            return RResult::RErr(HostError::new(HostError::NOT_OWNED, pa.0));
        }
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
        let mut s = self.st();
        if !s.owns(pa.0, 8) {
            return RResult::RErr(HostError::new(HostError::NOT_OWNED, pa.0));
        }
        s.mem.insert(pa.0, value);
        s.mem_writes.push((pa.0, value));
        ok(())
    }
    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> RResult<u64, HostError> {
        let mut s = self.st();
        if !s.owns(pa.0, 8) {
            return RResult::RErr(HostError::new(HostError::NOT_OWNED, pa.0));
        }
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
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        self.st().logs.push((level, message.to_string()));
    }
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
fn probe_quiets_a_unit_left_enabled_before_programming_it() {
    let f = Fake::new(CAP, ECAP);
    // As firmware or an earlier kernel left it: translating, queued invalidation on.
    f.st().regs.insert(off::GSTS, u64::from(gcmd::TE | gcmd::QIE));
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).expect("probe");
    let s = f.st();
    let gcmds: Vec<u32> = s.writes.iter().filter(|w| w.0 == off::GCMD).map(|w| w.2 as u32).collect();
    assert_eq!(gcmds[..2], [gcmd::QIE, 0], "TE off first, then QIE: {gcmds:x?}");
    let rtaddr = s.writes.iter().position(|w| w.0 == off::RTADDR).unwrap();
    let second = s.writes.iter().enumerate().filter(|(_, w)| w.0 == off::GCMD).nth(1).unwrap().0;
    assert!(second < rtaddr, "quiet before the root table is set");
    assert_eq!(s.regs[&off::GSTS] as u32 & (gcmd::TE | gcmd::QIE), gcmd::TE | gcmd::QIE);
    drop(s);
    unit.shutdown().unwrap();
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
    let t = new_table(&io, 4, PageSizes::SZ_4K_2M_1G, 48, false, false).unwrap();
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
    let done = t.unmap(&io, 0, 1 << 40).unwrap();
    assert_eq!(done.bytes, 2 * MB - 0x1000 + 0x1000);
    assert_eq!(t.count_pages(&io).unwrap(), 1, "empty tables are unlinked");
    // One level-3 table, two level-2 and two level-1 ones (the split and the 4 KiB map).
    assert_eq!(done.freed.len(), 5, "and handed back, to free after the invalidation");
    done.freed.release(&io);
    t.destroy(&io);
    assert!(f.st().live.is_empty());
}

#[test]
fn failed_map_leaves_no_table_page() {
    for fail in 1..=3 {
        let f = Fake::new(CAP, ECAP);
        let io = Io::new(f.host());
        let t = new_table(&io, 4, PageSizes::SZ_4K_2M_1G, 48, false, false).unwrap();
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
    unit.attach(&d, None, &h).unwrap();
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
    let e = unit.attach(&d, Some(Pasid(3)), &h).unwrap_err();
    assert_eq!(e.code, ErrorCode::UNSUPPORTED);
    assert!(e.message.contains("scalable"));
    // A replace (6.5.3.3): P cleared with the rest of the lower qword kept, the caches
    // dropped, then the upper qword, then the lower one with P.
    let h2 = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    let at = ctx + 0x20 * 16;
    f.st().mem_writes.clear();
    unit.attach(&d, None, &h2).unwrap();
    let writes: Vec<(u64, u64)> = f.st().mem_writes.iter().copied().filter(|w| w.0 == at || w.0 == at + 8).collect();
    let (lo2, hi2) = (f.rd(at), f.rd(at + 8));
    assert_eq!(writes, [(at, lo & !context::P), (at + 8, hi2), (at, lo2)]);
    assert_eq!(context::did_of(hi2), 2);
    // Back to h: the same again, from h2's entry.
    unit.attach(&d, None, &h).unwrap();
    // Detach blocks: P clear, then the old domain's IOTLB is flushed.
    f.st().descs.clear();
    unit.detach(&d, None).unwrap();
    assert_eq!(f.rd(ctx + 0x20 * 16) & context::P, 0);
    assert!(f.st().descs.iter().any(|x| x[0] == qi::iotlb::q0(qi::iotlb::DOMAIN, 1)));
    // A first attach writes the upper qword, then the lower: nothing to clear before.
    let d5 = dev(5);
    f.st().mem_writes.clear();
    unit.attach(&d5, None, &h).unwrap();
    let at5 = ctx + 0x28 * 16;
    let writes: Vec<u64> = f.st().mem_writes.iter().filter(|w| w.0 == at5 || w.0 == at5 + 8).map(|w| w.0).collect();
    assert_eq!(writes, [at5 + 8, at5]);
    unit.detach(&d5, None).unwrap();
    drop(h2);
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
    unit.attach(&dev(4), None, &h).unwrap();
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
    // MAMV 0: one descriptor a page, at most MAX_PSI of them, then domain-selective.
    let one_page = (CAP & !(0x3f << 48)) | cap::PSI;
    let max = super::inv::MAX_PSI as u64;
    assert_eq!(super::inv::psi_chunks(one_page, 0x1000, max * 0x1000).map(|c| c.len()), Some(max as usize));
    assert_eq!(super::inv::psi_chunks(one_page, 0x1000, (max + 1) * 0x1000), None);
    assert_eq!(super::inv::psi_chunks(CAP, 0x1000, 0), None, "nothing to invalidate");
}

#[test]
fn caching_mode_invalidates_after_map_and_plain_units_do_not() {
    for (cap_value, expect) in [(CAP | cap::CM, true), (CAP & !cap::CM, false)] {
        let f = Fake::new(cap_value, ECAP);
        let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
        let h = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
        unit.attach(&dev(4), None, &h).unwrap();
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
    unit.attach(&dev(4), None, &h).unwrap();
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
    let warned = |s: &State| s.logs.iter().filter(|(l, m)| *l == LogLevel::Warn && m.contains("overflowed")).count();
    assert_eq!(warned(&s), 1, "{:?}", s.logs);
    drop(s);
    // Without PPF there is nothing to read, whatever a record says.
    {
        let mut s = f.st();
        s.regs.insert(off::FSTS, 0);
        s.regs.insert(fro + 8, crate::layout::fault::frcd::hi(0x58, 0x4, None, true));
    }
    assert!(unit.read_faults(8).unwrap().is_empty());
    // Warned once: a later overflow is cleared without another message.
    f.st().regs.insert(off::FSTS, fsts::PFO as u64);
    assert!(unit.read_faults(8).unwrap().is_empty());
    assert_eq!(warned(&f.st()), 1);
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
fn page_requests_are_drained_at_most_max_at_a_time_and_ppr_cleared_when_empty() {
    use crate::layout::fault::page_request;
    let f = Fake::new(CAP, SM_ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let q = f.st().regs[&off::PQA] & !0xfff;
    {
        let mut s = f.st();
        for i in 0..3u64 {
            s.mem.insert(q + i * 32, page_request::q0(0x20, Some(5 + i as u32)));
            s.mem.insert(q + i * 32 + 8, page_request::q1(0x1000 * (i + 1), 7 + i as u32, true, false, true));
        }
        s.regs.insert(off::PQT, 96);
        s.regs.insert(off::PRS, u64::from(regs::prs::PPR));
        s.writes.clear();
    }
    let first = unit.read_faults(2).unwrap();
    assert_eq!(
        first.iter().map(|x| (x.pasid.into_option(), x.group)).collect::<Vec<_>>(),
        [(Some(Pasid(5)), 7), (Some(Pasid(6)), 8)]
    );
    assert_eq!((first[1].addr, first[1].access, first[1].page_request), (Iova(0x2000), Prot::READ, true));
    {
        let s = f.st();
        assert_eq!(s.regs[&off::PQH], 64, "two consumed");
        assert!(!s.writes.iter().any(|w| w.0 == off::PRS), "requests still queued: PPR stays");
    }
    let rest = unit.read_faults(8).unwrap();
    assert_eq!(rest.iter().map(|x| x.group).collect::<Vec<_>>(), [9]);
    let s = f.st();
    assert_eq!(s.regs[&off::PQH], 96);
    assert!(s.writes.contains(&(off::PRS, 4, u64::from(regs::prs::PPR))), "queue empty: PPR cleared");
}

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
    unit.attach(&d, None, &h).unwrap();
    unit.attach(&d, Some(Pasid(0x45)), &h).unwrap();
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
    unit.detach(&d, Some(Pasid(0x45))).unwrap();
    assert_eq!(f.rd(e), 0);
    unit.detach(&d, None).unwrap();
    assert_eq!(f.rd(ctx + 4 * 8 * 32), 0);
    drop(h);
    unit.shutdown().unwrap();
    assert!(f.st().live.is_empty());
}

#[test]
fn a_pasid_beyond_the_devices_width_is_refused() {
    let f = Fake::new(CAP, SM_ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let h = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    let narrow = DeviceInfo { pasid_bits: 5, ..dev(4) };
    assert_eq!(unit.attach(&narrow, Some(Pasid(32)), &h).unwrap_err().code, ErrorCode::OUT_OF_RANGE);
    unit.attach(&narrow, Some(Pasid(31)), &h).unwrap();
    let none = DeviceInfo { pasid_bits: 0, ..dev(5) };
    assert_eq!(unit.attach(&none, Some(Pasid(1)), &h).unwrap_err().code, ErrorCode::OUT_OF_RANGE);
    unit.detach(&narrow, Some(Pasid(31))).unwrap();
}

#[test]
fn domain_ids_stay_within_cap_nd_and_are_reused() {
    // ND 0: 16 domain ids, DID 0 never handed out.
    let f = Fake::new(CAP & !7, ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let c = &unit.core;
    let mut dids: Vec<u16> = (0..15).map(|_| c.alloc_did().unwrap()).collect();
    let e = c.alloc_did().unwrap_err();
    assert_eq!(e.code, ErrorCode::NO_MEMORY, "{e}");
    dids.sort_unstable();
    assert_eq!(dids, (1..16).collect::<Vec<u16>>());
    c.free_did(7);
    assert_eq!(c.alloc_did().unwrap(), 7);
    c.free_did(15);
    c.free_did(1);
    let again = [c.alloc_did().unwrap(), c.alloc_did().unwrap()];
    assert!(again.contains(&1) && again.contains(&15), "{again:?}");
    assert!(c.alloc_did().is_err());
}

#[test]
fn a_pasid_directory_covers_the_pasids_of_the_device() {
    use super::pasid::{pdir_log2, pdir_pages};
    // 9.4/9.5: PASID bits 19:6 index the directory; at least a page, at most 2^14 entries.
    assert_eq!([0, 15, 16, 17, 20, 24].map(pdir_log2), [9, 9, 10, 11, 14, 14]);
    assert_eq!([9, 10, 14].map(pdir_pages), [1, 2, 32]);
}

#[test]
fn dirty_tracking_reaches_only_the_entries_a_hwpt_still_owns() {
    let f = Fake::new(CAP, SM_ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let (h1, h2) = (
        unit.alloc_hwpt(&paging(HwptFlags::DIRTY_TRACKING)).unwrap(),
        unit.alloc_hwpt(&paging(HwptFlags::DIRTY_TRACKING)).unwrap(),
    );
    let d = dev(4);
    unit.attach(&d, Some(Pasid(0x45)), &h1).unwrap();
    unit.attach(&d, Some(Pasid(0x45)), &h2).unwrap();
    let e = pasid_entry_at(&f, 0x20, 0x45);
    let entry = f.rd(e);
    assert_eq!((entry & pasid_entry::P, entry & pasid_entry::SSADE), (1, 0));
    // h1 lost its only user to h2: turning its tracking on must leave h2's entry alone.
    h1.set_dirty_tracking(true).unwrap();
    assert_eq!(f.rd(e), entry, "the entry is h2's now");
    // On twice is on.
    h2.set_dirty_tracking(true).unwrap();
    h2.set_dirty_tracking(true).unwrap();
    assert_ne!(f.rd(e) & pasid_entry::SSADE, 0);
    h2.set_dirty_tracking(false).unwrap();
    assert_eq!(f.rd(e), entry);
    // After the unit shut down, its PASID tables are gone: the HWPTs no longer reach them.
    unit.attach(&d, None, &h2).unwrap();
    unit.attach(&dev(5), Some(Pasid(0x7f)), &h2).unwrap();
    unit.shutdown().unwrap();
    h2.set_dirty_tracking(true).unwrap();
    h1.set_dirty_tracking(false).unwrap();
}

// ---- vIOMMUs (interface 0.3). ----

use ioasis::abi::{Fault, HwQueueKind, HwQueueRequest, Stage1Config, ViommuKind, ViommuRequest, VirtualCommand};
use ioasis::PtFormat;

use crate::layout::qi::{p_dev_tlb, p_iotlb};

fn viommu_req(parent: &VtdHwpt, kind: ViommuKind) -> ViommuRequest {
    ViommuRequest {
        kind,
        flags: ioasis::abi::ViommuFlags(0),
        parent: boxed_hwpt(parent.clone()),
        space: AddressSpace::host(),
    }
}

fn stage1(root: u64) -> Stage1Config {
    Stage1Config { format: PtFormat::X86_64, root: Iova(root), words: Default::default() }
}

fn alloc_viommu(unit: &VtdUnit, parent: &VtdHwpt) -> VtdViommu {
    unit.alloc_viommu(&viommu_req(parent, ViommuKind::VTD)).expect("vIOMMU")
}

fn cmd(q0: u64, q1: u64) -> VirtualCommand {
    VirtualCommand { words: [q0, q1, 0, 0] }
}

/// The PASID entry (its first three qwords) of `devfn`'s PASID `pasid` (0: RID_PASID).
fn pasid_entry_at(f: &Fake, devfn: u8, pasid: u64) -> u64 {
    let rt = f.st().regs[&off::RTADDR] & !0xfff;
    let ctx = f.rd(rt) & ADDR;
    let pdir = f.rd(ctx + u64::from(devfn) * 32) & ADDR;
    let pt = f.rd(pdir + (pasid >> 6) * 8) & ADDR;
    pt + (pasid & 63) * 64
}

fn pasid_entry_of(f: &Fake, devfn: u8, pasid: u64) -> (u64, u64, u64) {
    let e = pasid_entry_at(f, devfn, pasid);
    (f.rd(e), f.rd(e + 8), f.rd(e + 16))
}

#[test]
fn viommu_nested_hwpts_share_its_did_which_goes_with_the_last_of_them() {
    let f = Fake::new(CAP, SM_ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let s2 = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    let base = unit.core().dids_in_use();
    let v = alloc_viommu(&unit, &s2);
    let info = v.info();
    assert_eq!(info.kind, ViommuKind::VTD);
    assert_eq!(info.features.0, 0, "no hardware queue");
    assert_eq!(unit.core().dids_in_use(), base + 1, "the vIOMMU holds one DID");
    let n1 = v.alloc_nested(HwptFlags::default(), &stage1(0x1000)).unwrap();
    let n2 = v.alloc_nested(HwptFlags::default(), &stage1(0x8000)).unwrap();
    assert_eq!(unit.core().dids_in_use(), base + 1, "nested HWPTs allocate none");
    unit.attach(&dev(4), None, &n1).unwrap();
    // Another first stage of the same DID at the same PASID would share IOTLB entries: refused,
    // nothing changed.
    let e = unit.attach(&dev(5), None, &n2).unwrap_err();
    assert_eq!(e.code, ErrorCode::BUSY);
    assert!(e.message.contains("PASID 0x0 of 00:04.0 uses another first stage"), "{}", e.message);
    assert_eq!(pasid_entry_of(&f, 0x28, 0).0, 0, "nothing written for 00:05.0");
    unit.attach(&dev(5), None, &n1).unwrap();
    unit.attach(&dev(5), Some(Pasid(3)), &n2).unwrap();
    for (devfn, pasid, root) in [(0x20, 0, 0x1000), (0x28, 0, 0x1000), (0x28, 3, 0x8000)] {
        let (e0, e1, e2) = pasid_entry_of(&f, devfn, pasid);
        assert_eq!(e0 & pasid_entry::PGTT_MASK, pasid_entry::PGTT_NESTED);
        assert_eq!(e1 & pasid_entry::DID_MASK, info.tag, "every entry tagged with the vIOMMU's DID");
        assert_eq!(e2 & ADDR, root, "the guest's first stage");
    }
    // The vIOMMU goes first: its DID stays while nested HWPTs use it.
    drop(v);
    assert_eq!(unit.core().dids_in_use(), base + 1);
    unit.detach(&dev(4), None).unwrap();
    unit.detach(&dev(5), Some(Pasid(3))).unwrap();
    unit.detach(&dev(5), None).unwrap();
    drop(n1);
    assert_eq!(unit.core().dids_in_use(), base + 1);
    drop(n2);
    assert_eq!(unit.core().dids_in_use(), base, "the last user returned the DID");
    drop(s2);
    assert_eq!(unit.core().dids_in_use(), 0);
    unit.shutdown().unwrap();
    assert!(f.st().live.is_empty());
}

#[test]
fn alloc_viommu_refusals_name_what_is_missing() {
    // No ECAP.NEST.
    let f = Fake::new(CAP, SM_ECAP & !ecap::NEST);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let s2 = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    let e = unit.alloc_viommu(&viommu_req(&s2, ViommuKind::VTD)).err().unwrap();
    assert_eq!(e.code, ErrorCode::UNSUPPORTED);
    assert!(e.message.contains("ECAP.NEST (bit 26) is 0"), "{}", e.message);
    assert_eq!(unit.core().dids_in_use(), 1, "nothing allocated");
    // No first-stage translation.
    let f = Fake::new(CAP, SM_ECAP & !ecap::FSTS);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let s2 = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    let e = unit.alloc_viommu(&viommu_req(&s2, ViommuKind::VTD)).err().unwrap();
    assert!(e.message.contains("ECAP.FSTS (bit 47) is 0"), "{}", e.message);
    // A legacy unit.
    let f = Fake::new(CAP, ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let s2 = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    let e = unit.alloc_viommu(&viommu_req(&s2, ViommuKind::VTD)).err().unwrap();
    assert!(e.message.contains("ECAP.SMTS (bit 43) is 0"), "{}", e.message);
    // A scalable unit driven in legacy mode.
    let f = Fake::new(CAP, SM_ECAP);
    let unit = VtdUnit::probe(&desc("mode = \"legacy\""), Io::new(f.host())).unwrap();
    let s2 = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    let e = unit.alloc_viommu(&viommu_req(&s2, ViommuKind::VTD)).err().unwrap();
    assert!(e.message.contains("legacy mode"), "{}", e.message);
    // A nesting unit: the wrong kind, a parent that is not a second-stage paging HWPT.
    let f = Fake::new(CAP, SM_ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let s2 = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    let e = unit.alloc_viommu(&viommu_req(&s2, ViommuKind::SMMUV3)).err().unwrap();
    assert!(e.message.contains("not smmuv3"), "{}", e.message);
    let blocking = HwptRequest { kind: HwptKind::BLOCKING, ..paging(HwptFlags::default()) };
    let b = unit.alloc_hwpt(&blocking).unwrap();
    let e = unit.alloc_viommu(&viommu_req(&b, ViommuKind::VTD)).err().unwrap();
    assert!(e.message.contains("second-stage paging HWPT"), "{}", e.message);
    let other = Fake::new(CAP, SM_ECAP);
    let unit2 = VtdUnit::probe(&desc(""), Io::new(other.host())).unwrap();
    let foreign = unit2.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    assert!(unit.alloc_viommu(&viommu_req(&foreign, ViommuKind::VTD)).is_err());
    assert_eq!(unit.core().dids_in_use(), 1, "only the paging HWPT's");
    // No hardware queue, with a reason.
    let v = alloc_viommu(&unit, &s2);
    let q = HwQueueRequest { kind: HwQueueKind(1), index: 0, iova: Iova(0), pa: PhysAddr(0), len: 4096 };
    let e = v.alloc_hw_queue(&q).unwrap_err();
    assert_eq!(e.code, ErrorCode::UNSUPPORTED);
    assert!(e.message.contains("no hardware-accelerated guest invalidation queue"), "{}", e.message);
    assert_eq!(v.free_hw_queue(1).unwrap_err().code, ErrorCode::NOT_FOUND, "no queue to free");
    // A stage-1 root with reserved bits above MGAW, or unaligned.
    assert!(v.alloc_nested(HwptFlags::default(), &stage1(1 << 50)).is_err());
    assert!(v.alloc_nested(HwptFlags::default(), &stage1(0x1008)).is_err());
}

/// A vIOMMU with device 00:04.0 (ATS) as virtual 01:02.0 and device 00:05.0 as virtual 01:03.0,
/// each on a nested HWPT (untagged: PASID 0), and device 00:06.0 attached but with no vDEVICE.
fn viommu_rig() -> (Fake, VtdUnit, VtdViommu, Vec<VtdHwpt>) {
    let f = Fake::new(CAP, SM_ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let s2 = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    let v = alloc_viommu(&unit, &s2);
    let n = v.alloc_nested(HwptFlags::default(), &stage1(0x1000)).unwrap();
    let ats = DeviceInfo { ats: true, ..dev(4) };
    unit.attach(&ats, None, &n).unwrap();
    unit.attach(&dev(5), None, &n).unwrap();
    v.set_vdevice(&ats, 0x0110).unwrap();
    v.set_vdevice(&dev(5), 0x0118).unwrap();
    f.st().descs.clear();
    (f, unit, v, vec![s2, n])
}

#[test]
fn guest_invalidations_are_mapped_to_the_vms_ids_and_end_with_one_wait() {
    let (f, _unit, v, _h) = viommu_rig();
    let tag = v.info().tag as u16;
    // The DID the unit tags the VM's translations with: the one in the devices' PASID entries.
    assert_eq!(pasid_entry_of(&f, 0x20, 0).1 & pasid_entry::DID_MASK, u64::from(tag));
    assert_ne!(tag, 1, "the parent HWPT took DID 1");
    let cmds = [
        // The guest's DID 7, all of PASID 0.
        cmd(p_iotlb::q0(p_iotlb::PASID, 7, 0), 0),
        // Page-selective, 2 pages at 0x4000_2000, IH.
        cmd(p_iotlb::q0(p_iotlb::PAGE, 9, 0), 0x4000_2000 | p_iotlb::IH | 1),
        // The device-TLB of virtual 01:02.0, every PASID, all addresses.
        cmd(p_dev_tlb::q0(0x0110, 0, 0x0110), 0x7fff_ffff_ffff_f000 | p_dev_tlb::S | p_dev_tlb::G),
        // Virtual 01:03.0 has no device-TLB: nothing to send.
        cmd(p_dev_tlb::q0(0x0118, 0, 0), 0),
    ];
    let out = v.invalidate(&cmds);
    assert_eq!((out.handled, out.error.into_option()), (4, None));
    let s = f.st();
    let expect = [
        [p_iotlb::q0(p_iotlb::PASID, tag, 0), 0],
        [p_iotlb::q0(p_iotlb::PAGE, tag, 0), 0x4000_2000 | p_iotlb::IH | 1],
        [p_dev_tlb::q0(0x20, 0, 0x20), 0x7fff_ffff_ffff_f000 | p_dev_tlb::S | p_dev_tlb::G],
    ];
    assert_eq!(&s.descs[..3], &expect[..], "{:x?}", s.descs);
    assert_eq!(s.descs.len(), 4);
    assert_eq!(qi::type_of(s.descs[3][0]), qi::wait::TYPE, "one wait ends the batch");
}

#[test]
fn without_page_selective_invalidation_a_guest_page_range_becomes_all_of_its_pasid() {
    let f = Fake::new(CAP & !cap::PSI, SM_ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let s2 = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    let v = alloc_viommu(&unit, &s2);
    let n = v.alloc_nested(HwptFlags::default(), &stage1(0x1000)).unwrap();
    unit.attach(&dev(4), None, &n).unwrap();
    f.st().descs.clear();
    let out = v.invalidate(&[cmd(p_iotlb::q0(p_iotlb::PAGE, 9, 0), 0x4000_2000 | 1)]);
    assert_eq!((out.handled, out.error.into_option().is_none()), (1, true));
    let tag = v.info().tag as u16;
    assert_eq!(f.st().descs[0], [p_iotlb::q0(p_iotlb::PASID, tag, 0), 0]);
}

#[test]
fn a_refused_guest_descriptor_stops_the_batch_after_the_ones_before_it() {
    let (f, _unit, v, _h) = viommu_rig();
    let tag = v.info().tag as u16;
    let good = cmd(p_iotlb::q0(p_iotlb::PASID, 1, 0), 0);
    let run = |bad: VirtualCommand| {
        f.st().descs.clear();
        let out = v.invalidate(&[good, bad, good]);
        let e = out.error.into_option().expect("refused");
        assert_eq!(out.handled, 1, "{}", e.message);
        let s = f.st();
        assert_eq!(s.descs.len(), 2, "the first command and a wait: {:x?}", s.descs);
        assert_eq!(s.descs[0], [p_iotlb::q0(p_iotlb::PASID, tag, 0), 0]);
        e.message.to_string()
    };
    let m = run(cmd(p_dev_tlb::q0(0x0300, 0, 0), 0));
    assert!(m.contains("virtual requester id 03:00.0 is not one of the VM's devices"), "{m}");
    let m = run(cmd(qi::cc::q0(qi::cc::GLOBAL, 0, 0), 0));
    assert!(m.contains("type 0x1 (context-cache invalidate"), "{m}");
    let m = run(cmd(qi::pc::q0(qi::pc::PASID, 1, 0), 0));
    assert!(m.contains("PASID-cache invalidate"), "{m}");
    let m = run(cmd(qi::iotlb::q0(qi::iotlb::GLOBAL, 0), 0));
    assert!(m.contains("type 0x2 (IOTLB invalidate"), "{m}");
    let m = run(cmd(qi::wait::q0(qi::wait::SW, 1), 0x1000));
    assert!(m.contains("invalidation wait"), "{m}");
    let m = run(cmd(0x4, 0));
    assert!(m.contains("interrupt entry cache"), "{m}");
    let m = run(cmd(0x3 | (0x20 << 32), 0));
    assert!(m.contains("device-TLB invalidate (6.5.2.5)"), "{m}");
    // Reserved bits, reserved granularities, PASIDs that are not the VM's, AM beyond MAMV.
    let m = run(cmd(p_iotlb::q0(p_iotlb::PASID, 1, 0) | (1 << 12), 0));
    assert!(m.contains("reserved bits 0x1000 set in qword 0"), "{m}");
    let m = run(cmd(p_iotlb::q0(p_iotlb::PAGE, 1, 0), 0x4000_0000 | (1 << 8)));
    assert!(m.contains("reserved bits 0x100 set in qword 1"), "{m}");
    let m = run(VirtualCommand { words: [p_iotlb::q0(p_iotlb::PASID, 1, 0), 0, 0, 1] });
    assert!(m.contains("bits 255:128"), "{m}");
    let m = run(cmd(p_iotlb::q0(0, 1, 0), 0));
    assert!(m.contains("granularity 0 is reserved"), "{m}");
    let m = run(cmd(p_iotlb::q0(p_iotlb::PASID, 1, 9), 0));
    assert!(m.contains("PASID 0x9 is not one the VM's devices use"), "{m}");
    let m = run(cmd(p_iotlb::q0(p_iotlb::PAGE, 1, 0), 0x4000_0000 | 19));
    assert!(m.contains("above CAP.MAMV 18"), "{m}");
    let m = run(cmd(p_iotlb::q0(p_iotlb::PAGE, 1, 0), 0x4000_1000 | 1));
    assert!(m.contains("not aligned"), "{m}");
    let m = run(cmd(p_dev_tlb::q0(0x0110, 0, 0), 0x2));
    assert!(m.contains("reserved bits 0x2 set in qword 1"), "{m}");
    let m = run(VirtualCommand { words: [p_dev_tlb::q0(0x0110, 0, 0), 0, 4, 4] });
    assert!(m.contains("bits 255:128 (qword 2 0x4, qword 3 0x4)"), "{m}");
    // AM at CAP.MAMV is the largest that is allowed.
    let out = v.invalidate(&[cmd(p_iotlb::q0(p_iotlb::PAGE, 1, 0), 0x4000_0000 | 18)]);
    assert_eq!((out.handled, out.error.into_option().map(|e| e.message.to_string())), (1, None));
    // A cleared vDEVICE is unknown from then on.
    v.clear_vdevice(&DeviceInfo { ats: true, ..dev(4) }).unwrap();
    let m = run(cmd(p_dev_tlb::q0(0x0110, 0, 0), 0));
    assert!(m.contains("not one of the VM's devices"), "{m}");
    // Virtual ids are 16-bit requester ids, each names one device.
    assert!(v.set_vdevice(&dev(6), 0x1_0000).is_err());
    assert!(v.set_vdevice(&dev(6), 0x0118).is_err());
    assert!(v.set_vdevice(&dev(5), 0x0120).is_err());
    v.set_vdevice(&dev(6), 0x0120).unwrap();
}

#[test]
fn nested_fault_records_name_the_stage_and_the_guests_configuration() {
    let (f, unit, _v, _h) = viommu_rig();
    let fro = cap::fro(CAP);
    let decode_at = |sid: u16, pasid: Option<u32>, fr: u8| {
        {
            let mut s = f.st();
            s.regs.insert(off::FSTS, fsts::PPF as u64);
            s.regs.insert(fro, 0x4000_0000);
            s.regs.insert(fro + 8, crate::layout::fault::frcd::hi(sid, fr, pasid, true));
            s.writes.clear();
        }
        let faults = unit.read_faults(8).unwrap();
        assert_eq!(faults.len(), 1);
        assert!(!f.st().writes.iter().any(|w| w.0 == off::FSTS), "PPF without PFO: no overflow to clear");
        faults[0].reason
    };
    let decode = |fr: u8| decode_at(0x20, None, fr);
    use crate::layout::fault::reason_sm as sm;
    assert_eq!(decode(sm::FS_NOT_PRESENT), Fault::NOT_PRESENT);
    assert_eq!(decode(sm::FS_RESERVED), Fault::BAD_ENTRY);
    assert_eq!(decode(sm::NO_WRITE), Fault::PERMISSION);
    assert_eq!(decode(sm::NOT_CANONICAL), Fault::ADDRESS_SIZE);
    assert_eq!(decode(sm::FSPTPTR_INVALID), Fault::BAD_CONFIG);
    assert_eq!(decode(crate::layout::fault::reason::PASID_ENTRY_INVALID), Fault::BAD_CONFIG);
    for fr in [sm::SS_PERMISSION, sm::SS_NO_READ_FS_ROOT, sm::SS_NO_READ_FS_ENTRY, sm::SS_NO_WRITE_FS_ENTRY] {
        assert_eq!(decode(fr), Fault::NOT_PRESENT | Fault::IN_PARENT, "{fr:#x}");
    }
    assert_eq!(decode(sm::SS_RESERVED), Fault::BAD_ENTRY | Fault::IN_PARENT);
    // Legacy permission codes on a nested attachment: the guest's table decides, not present.
    use crate::layout::fault::reason;
    assert_eq!(decode(reason::NO_WRITE), Fault::NOT_PRESENT);
    // The same records for a device with nothing nested (nothing attached at all): an invalid
    // PASID entry is the host's, not the guest's configuration.
    assert_eq!(decode_at(0x21, None, reason::NO_READ), Fault::BLOCKED);
    assert_eq!(decode_at(0x21, None, reason::PASID_ENTRY_INVALID), Fault::BAD_ENTRY);
    assert_eq!(decode_at(0x21, None, sm::PASID_ENTRY_RESERVED), Fault::BAD_ENTRY);
    assert_eq!(decode_at(0x20, Some(7), reason::PASID_NOT_PRESENT), Fault::BAD_PASID);
    assert_eq!(decode_at(0x20, Some(7), reason::PASID_ENTRY_INVALID), Fault::BAD_ENTRY, "PASID 7 is not nested");
    assert_eq!(decode_at(0x20, Some(0), reason::PASID_NOT_PRESENT), Fault::BLOCKED, "PASID 0 is RID_PASID");
    assert_eq!(decode(crate::layout::fault::reason_more::PASID_DIR_ERROR), Fault::BAD_PASID);
}

#[test]
fn a_device_on_another_segment_is_refused_by_the_unit_and_its_viommu() {
    let elsewhere = DeviceInfo { dev: DeviceRef::Rid(RequesterId::new(1, 0, 4, 0)), ..dev(4) };
    let f = Fake::new(CAP, ECAP);
    let unit = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
    let h = unit.alloc_hwpt(&paging(HwptFlags::default())).unwrap();
    let e = unit.attach(&elsewhere, None, &h).unwrap_err();
    assert!(e.message.contains("segment 1"), "{e:?}");
    let (_f, _unit, v, _n) = viommu_rig();
    let e = v.set_vdevice(&elsewhere, 0x0120).unwrap_err();
    assert!(e.message.contains("segment 1"), "{e:?}");
}

/// Scalable mode needs all of ECAP.SMTS, ECAP.SSTS and ECAP.QI (9.4, 6.5.2): a unit short of
/// any one is driven in legacy mode, and asking for scalable mode on it is refused.
#[test]
fn scalable_mode_needs_smts_ssts_and_qi_together() {
    let caps = |u: &VtdUnit| u.caps().features.contains(ioasis::Features::PASID);
    let full = VtdUnit::probe(&desc(""), Io::new(Fake::new(CAP, SM_ECAP).host())).unwrap();
    assert!(full.core.scalable && caps(&full));
    for missing in [ecap::SMTS, ecap::SSTS, ecap::QI] {
        let f = Fake::new(CAP, SM_ECAP & !missing);
        let u = VtdUnit::probe(&desc(""), Io::new(f.host())).unwrap();
        assert!(!u.core.scalable && !caps(&u), "ECAP without {missing:#x} gave scalable mode");
        let e = VtdUnit::probe(&desc("mode = \"scalable\""), Io::new(Fake::new(CAP, SM_ECAP & !missing).host()));
        assert!(e.err().is_some_and(|e| e.message.contains("ECAP.SMTS, ECAP.SSTS and ECAP.QI")));
    }
}
