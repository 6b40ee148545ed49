//! Tables built by hand in a sparse test memory, checked against the model.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use ioasis::{DeviceRef, Iova, RequesterId};

use super::*;
use crate::format::x86;

/// Sparse memory of u64 words below `limit`; absent words read as 0, or as a hash of their
/// address when `chaos` is set (hostile memory).
struct Mem {
    words: Mutex<HashMap<u64, u64>>,
    limit: u64,
    chaos: Option<u64>,
    reads: AtomicU64,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Mem {
    fn new(limit: u64) -> Self {
        Self { words: Mutex::new(HashMap::new()), limit, chaos: None, reads: AtomicU64::new(0) }
    }
    fn check(&self, pa: u64, len: u64) -> Result<(), HostError> {
        match pa.checked_add(len) {
            Some(end) if end <= self.limit => Ok(()),
            _ => Err(HostError::new(HostError::BAD_ADDRESS, pa)),
        }
    }
    fn aligned(&self, pa: PhysAddr) -> Result<u64, HostError> {
        if !pa.is_aligned(8) {
            return Err(HostError::new(HostError::BAD_ADDRESS, pa.raw()));
        }
        self.check(pa.raw(), 8)?;
        Ok(pa.raw())
    }
    fn get(&self, w: &HashMap<u64, u64>, pa: u64) -> u64 {
        // Hostile words keep their addresses inside memory so that walks go deep.
        // Mostly present (bit 0), to get past the first level.
        let chaos = |seed| {
            let h = splitmix(pa ^ seed);
            let w = h & 0xff00_0000_ffff_ffff;
            if (h >> 40) & 7 != 0 {
                w | 1
            } else {
                w
            }
        };
        w.get(&pa).copied().unwrap_or_else(|| self.chaos.map_or(0, chaos))
    }
    fn update(&self, pa: PhysAddr, f: impl FnOnce(u64) -> u64) -> Result<u64, HostError> {
        let pa = self.aligned(pa)?;
        let mut w = self.words.lock().unwrap();
        let old = self.get(&w, pa);
        w.insert(pa, f(old));
        Ok(old)
    }
}

impl PhysMemory for Mem {
    fn read(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<(), HostError> {
        self.check(pa.raw(), buf.len() as u64)?;
        let w = self.words.lock().unwrap();
        for (i, b) in buf.iter_mut().enumerate() {
            let a = pa.raw() + i as u64;
            *b = (self.get(&w, a & !7) >> ((a % 8) * 8)) as u8;
        }
        Ok(())
    }
    fn write(&self, pa: PhysAddr, data: &[u8]) -> Result<(), HostError> {
        self.check(pa.raw(), data.len() as u64)?;
        let mut w = self.words.lock().unwrap();
        for (i, &b) in data.iter().enumerate() {
            let a = pa.raw() + i as u64;
            let shift = (a % 8) * 8;
            let old = self.get(&w, a & !7);
            w.insert(a & !7, (old & !(0xff << shift)) | (u64::from(b) << shift));
        }
        Ok(())
    }
    fn read_u64(&self, pa: PhysAddr) -> Result<u64, HostError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let pa = self.aligned(pa)?;
        Ok(self.get(&self.words.lock().unwrap(), pa))
    }
    fn write_u64(&self, pa: PhysAddr, value: u64) -> Result<(), HostError> {
        self.update(pa, |_| value).map(drop)
    }
    fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> Result<u64, HostError> {
        self.update(pa, |v| v | bits)
    }
    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> Result<u64, HostError> {
        self.update(pa, |v| v & mask)
    }
}

/// Guest-physical address 0 is host-physical `GUEST_PA` (stage-2 maps 16 MiB there).
const GUEST_PA: u64 = 0x2000_0000;
const FOUR_LEVELS: u64 = (4 << desc::LEVELS_SHIFT) | (48 << desc::IAS_SHIFT);

/// Where a table lives: physical memory, or guest-physical memory behind stage-2.
#[derive(Clone, Copy)]
enum Space {
    Phys,
    Guest,
}

struct Env {
    mem: Mem,
    model: MockModel,
    next: Cell<u64>,
    next_guest: Cell<u64>,
    devtab: u64,
    fq: u64,
}

impl Env {
    fn new() -> Self {
        Self::with_cap(cap::FULL)
    }

    fn with_cap(cap: u64) -> Self {
        let mut env = Self {
            mem: Mem::new(1 << 32),
            model: MockModel::new(cap),
            next: Cell::new(0x1000_0000),
            next_guest: Cell::new(0x10_0000),
            devtab: 0,
            fq: 0,
        };
        env.devtab = env.page();
        env.fq = env.page();
        env
    }

    fn page(&self) -> u64 {
        let p = self.next.get();
        self.next.set(p + 0x1000);
        p
    }

    fn alloc(&self, space: Space) -> u64 {
        match space {
            Space::Phys => self.page(),
            Space::Guest => {
                let p = self.next_guest.get();
                self.next_guest.set(p + 0x1000);
                p
            }
        }
    }

    fn r64(&self, pa: u64) -> u64 {
        self.mem.read_u64(PhysAddr(pa)).unwrap()
    }

    fn w64(&self, pa: u64, v: u64) {
        self.mem.write_u64(PhysAddr(pa), v).unwrap()
    }

    fn reg_w(&self, off: u64, v: u64) {
        self.model.mmio_write(&self.mem, off, 8, v).unwrap()
    }

    fn reg_r(&self, off: u64) -> u64 {
        self.model.mmio_read(&self.mem, off, 8).unwrap()
    }

    fn inv(&self, cmd: u64, tag: u64, addr: u64, size: u64) {
        let done = self.reg_r(reg::INV_DONE);
        self.reg_w(reg::INV_TAG, tag);
        self.reg_w(reg::INV_ADDR, addr);
        self.reg_w(reg::INV_SIZE, size);
        self.reg_w(reg::INV_CMD, cmd);
        // A unit with latency completes it within that many reads.
        let polls = (0..=self.model.latency()).map(|_| self.reg_r(reg::INV_DONE)).find(|&v| v != done);
        assert_eq!(polls, Some(done + 1));
    }

    /// Maps `iova` to `out` with a leaf at `level` in a four-level table of `fmt` rooted at
    /// `root` in `space`; returns the physical address of the leaf entry.
    fn map_in(&self, (space, fmt): (Space, Format), root: u64, iova: u64, out: u64, level: u32, flags: u64) -> u64 {
        let to_pa = |a: u64| match space {
            Space::Phys => a,
            Space::Guest => a + GUEST_PA,
        };
        let (table_bits, big) = match fmt {
            Format::Mock => (pte::P, pte::LEAF),
            Format::X86 => (x86::P | x86::RW, x86::PS),
        };
        let mut table = root;
        for l in (level + 1..4).rev() {
            let at = to_pa(table + pte::offset(iova, l));
            let e = self.r64(at);
            table = if e & pte::P != 0 {
                e & ADDR_MASK
            } else {
                let t = self.alloc(space);
                self.w64(at, t | table_bits);
                t
            };
        }
        let at = to_pa(table + pte::offset(iova, level));
        self.w64(at, out | flags | if level > 0 { big } else { 0 });
        at
    }

    fn map(&self, root: u64, iova: u64, pa: u64, level: u32, flags: u64) -> u64 {
        self.map_in((Space::Phys, Format::Mock), root, iova, pa, level, flags)
    }

    fn desc(&self, w: [u64; 4]) -> u64 {
        let d = self.page();
        for (i, v) in w.into_iter().enumerate() {
            self.w64(d + 8 * i as u64, v);
        }
        d
    }

    /// A paging descriptor with `flags` in word 0 and a fresh root: (descriptor, root).
    fn paging(&self, flags: u64) -> (u64, u64) {
        let root = self.page();
        (self.desc([desc::TYPE_PAGING | FOUR_LEVELS | flags, root, 0, 0]), root)
    }

    fn set_device(&self, id: u32, w0: u64, w1: u64) {
        let l1 = self.devtab + devtab::l1_offset(id);
        let mut e = self.r64(l1);
        if e & VALID == 0 {
            e = self.page() | VALID;
            self.w64(l1, e);
        }
        let at = (e & ADDR_MASK) + devtab::l2_offset(id);
        self.w64(at, w0);
        self.w64(at + 8, w1);
    }

    fn enable(&self) {
        self.reg_w(reg::DEVTAB, self.devtab);
        self.reg_w(reg::FQ_BASE, self.fq);
        self.reg_w(reg::CTRL, reg::CTRL_EN | reg::CTRL_FQEN);
    }

    fn dma(&self, id: u32, pasid: Option<u32>, iova: u64, access: Prot) -> Result<DmaTarget, Fault> {
        let req = DmaRequest { dev: DeviceRef::Sid(id), pasid: pasid.map(Pasid), iova: Iova(iova), access };
        self.model.translate(&self.mem, &req)
    }

    fn pa(&self, id: u32, pasid: Option<u32>, iova: u64, access: Prot) -> u64 {
        self.dma(id, pasid, iova, access).unwrap().pa.raw()
    }

    fn reason(&self, id: u32, pasid: Option<u32>, iova: u64, access: Prot) -> u32 {
        self.dma(id, pasid, iova, access).unwrap_err().reason
    }

    /// Device `id` attached (untagged) to a fresh paging descriptor: (descriptor, root).
    fn attached(&self, id: u32, desc_flags: u64, dev_flags: u64) -> (u64, u64) {
        let (d, root) = self.paging(desc_flags);
        self.set_device(id, d | VALID | dev_flags, 0);
        (d, root)
    }
}

const RW: u64 = pte::P | pte::R | pte::W;
const RO: u64 = pte::P | pte::R;

#[test]
fn registers_follow_section_1() {
    let env = Env::new();
    let m = &env.model;
    assert_eq!(env.reg_r(reg::ID), reg::ID_VALUE);
    assert_eq!(m.mmio_read(&env.mem, reg::ID, 4).unwrap(), reg::ID_VALUE & 0xffff_ffff);
    assert_eq!(env.reg_r(reg::VERSION), 1);
    assert_eq!(env.reg_r(reg::CAP), cap::FULL);
    // Read-only registers ignore writes.
    for off in [reg::ID, reg::VERSION, reg::CAP, reg::STATUS, reg::INV_DONE, reg::FQ_TAIL] {
        let before = env.reg_r(off);
        env.reg_w(off, 0x55);
        assert_eq!(env.reg_r(off), before, "register {off:#x}");
    }
    env.reg_w(reg::CTRL, reg::CTRL_EN);
    assert_eq!(env.reg_r(reg::STATUS) & reg::STATUS_ENS, reg::STATUS_ENS);
    env.reg_w(reg::CTRL, 0);
    assert_eq!(env.reg_r(reg::STATUS), 0);
    env.reg_w(reg::DEVTAB, 0x1234_5678_9000);
    m.mmio_write(&env.mem, reg::DEVTAB, 4, 0xabc0_0000).unwrap();
    assert_eq!(env.reg_r(reg::DEVTAB), 0x1234_abc0_0000);
    for off in [reg::INV_ADDR, reg::INV_SIZE, reg::INV_TAG, reg::FQ_BASE, reg::FQ_HEAD, reg::PRESP_DEV] {
        env.reg_w(off, 0x40);
        assert_eq!(env.reg_r(off), 0x40, "register {off:#x}");
    }
    // Bad offsets and widths.
    for (off, width) in [(0x058, 8), (0x004, 4), (0x1000, 8), (u64::MAX, 8), (reg::ID, 2), (reg::CTRL, 1)] {
        let e = m.mmio_read(&env.mem, off, width).unwrap_err();
        assert_eq!((e.code, e.addr), (HostError::BAD_REGISTER, off));
        let e = m.mmio_write(&env.mem, off, width, 0).unwrap_err();
        assert_eq!(e.code, HostError::BAD_REGISTER);
    }
    // Unknown commands do not complete.
    env.reg_w(reg::INV_CMD, 9);
    assert_eq!(env.reg_r(reg::INV_DONE), 0);
    env.reg_w(reg::INV_CMD, reg::INV_ALL);
    assert_eq!(env.reg_r(reg::INV_DONE), 1);
}

#[test]
fn disabled_unit_passes_dma_through() {
    let env = Env::new();
    let t = env.dma(5, Some(3), 0x1234_5678, Prot::WRITE).unwrap();
    assert_eq!(t.pa, PhysAddr(0x1234_5678));
    assert_eq!(t.remaining, (1 << 30) - 0x1234_5678);
    let t = env.dma(5, None, u64::MAX, Prot::READ).unwrap();
    assert_eq!((t.pa, t.remaining), (PhysAddr(u64::MAX), 1));
    assert_eq!(env.model.cache_stats(), CacheStats::default());
}

#[test]
fn translates_4k_and_2m_pages_and_sets_a() {
    let env = Env::new();
    let (_, root) = env.attached(0x0108, 0, 0);
    let small = env.map(root, 0x40_3000, 0x7000_0000, 0, RW);
    let big = env.map(root, 0x8000_0000, 0x6000_0000, 1, RO);
    env.enable();
    let t = env.dma(0x0108, None, 0x40_3abc, Prot::WRITE).unwrap();
    assert_eq!(t, DmaTarget { pa: PhysAddr(0x7000_0abc), remaining: 0x544 });
    assert_ne!(env.r64(small) & pte::A, 0);
    assert_eq!(env.r64(small) & pte::D, 0, "no DIRTY_EN");
    let t = env.dma(0x0108, None, 0x801f_0000, Prot::READ).unwrap();
    assert_eq!(t, DmaTarget { pa: PhysAddr(0x601f_0000), remaining: 0x1_0000 });
    assert_ne!(env.r64(big) & pte::A, 0);
    // Same device as a PCI requester id: bus 1, devfn 8.
    let req = DmaRequest {
        dev: DeviceRef::Rid(RequesterId::new(0, 1, 1, 0)),
        pasid: None,
        iova: Iova(0x40_3000),
        access: Prot::READ,
    };
    assert_eq!(env.model.translate(&env.mem, &req).unwrap().pa, PhysAddr(0x7000_0000));
    assert_eq!(env.reason(0x0108, None, 0x40_4000, Prot::READ), Fault::NOT_PRESENT);
    assert_eq!(env.reason(0x0108, None, 1 << 48, Prot::READ), Fault::ADDRESS_SIZE);
}

#[test]
fn one_gib_pages_and_page_size_caps() {
    let env = Env::new();
    let (_, root) = env.attached(1, 0, 0);
    env.map(root, 0x40_0000_0000, 0x1_0000_0000, 2, RW);
    env.enable();
    let t = env.dma(1, None, 0x40_0000_1000, Prot::READ).unwrap();
    assert_eq!((t.pa.raw(), t.remaining), (0x1_0000_1000, (1 << 30) - 0x1000));

    let env = Env::with_cap(cap::FULL & !cap::PS_1G);
    let (_, root) = env.attached(1, 0, 0);
    env.map(root, 0x40_0000_0000, 0x1_0000_0000, 2, RW);
    env.enable();
    assert_eq!(env.reason(1, None, 0x40_0000_0000, Prot::READ), Fault::BAD_ENTRY);
}

#[test]
fn permissions_are_checked() {
    let env = Env::new();
    let (_, root) = env.attached(2, 0, 0);
    env.map(root, 0x1000, 0x9000, 0, RO);
    env.map(root, 0x2000, 0xa000, 0, pte::P | pte::W);
    env.map(root, 0x3000, 0xb000, 0, pte::P);
    env.enable();
    assert_eq!(env.pa(2, None, 0x1000, Prot::READ), 0x9000);
    assert_eq!(env.reason(2, None, 0x1000, Prot::WRITE), Fault::PERMISSION);
    assert_eq!(env.reason(2, None, 0x1000, Prot::RW), Fault::PERMISSION);
    assert_eq!(env.pa(2, None, 0x2008, Prot::WRITE), 0xa008);
    assert_eq!(env.reason(2, None, 0x2000, Prot::READ), Fault::PERMISSION);
    assert_eq!(env.reason(2, None, 0x3000, Prot::READ), Fault::PERMISSION);
}

#[test]
fn blocked_identity_and_unattached_devices() {
    let env = Env::new();
    let blocking = env.desc([desc::TYPE_BLOCKING, 0, 0, 0]);
    let identity = env.desc([desc::TYPE_IDENTITY, 0, 0, 0]);
    env.set_device(1, blocking | VALID, 0);
    env.set_device(2, identity | VALID, 0);
    env.set_device(3, VALID, 0); // descriptor 0: blocked
    env.set_device(4, 0, 0); // not valid
    let bogus = env.desc([0xf, 0, 0, 0]);
    env.set_device(5, bogus | VALID, 0);
    // Before DEVTAB is set, everything is blocked.
    env.reg_w(reg::CTRL, reg::CTRL_EN);
    assert_eq!(env.reason(2, None, 0, Prot::READ), Fault::BLOCKED);
    env.enable();
    assert_eq!(env.reason(1, None, 0x1000, Prot::READ), Fault::BLOCKED);
    assert_eq!(env.pa(2, None, 0xdead_b000, Prot::WRITE), 0xdead_b000);
    assert_eq!(env.reason(2, None, 1 << 50, Prot::READ), Fault::ADDRESS_SIZE);
    assert_eq!(env.reason(3, None, 0x1000, Prot::READ), Fault::BLOCKED);
    assert_eq!(env.reason(4, None, 0x1000, Prot::READ), Fault::BLOCKED);
    assert_eq!(env.reason(5, None, 0x1000, Prot::READ), Fault::BAD_ENTRY);
    assert_eq!(env.reason(0x300, None, 0x1000, Prot::READ), Fault::BLOCKED, "no level-2 page");
    assert_eq!(env.reason(1 << 17, None, 0x1000, Prot::READ), Fault::BLOCKED, "id beyond the table");

    let env = Env::with_cap(cap::FULL & !cap::IDENTITY);
    let identity = env.desc([desc::TYPE_IDENTITY, 0, 0, 0]);
    env.set_device(2, identity | VALID, 0);
    env.enable();
    assert_eq!(env.reason(2, None, 0, Prot::READ), Fault::BAD_ENTRY);
}

/// Builds a three-level PASID table for `pasid` pointing at `desc`; returns the root.
fn pasid_table(env: &Env, root: Option<u64>, pasid: u32, desc: u64) -> u64 {
    let root = root.unwrap_or_else(|| env.page());
    let mut table = root;
    for level in (1..pasidtab::LEVELS).rev() {
        let at = table + pasidtab::offset(pasid, level);
        let e = env.r64(at);
        table = if e & VALID != 0 {
            e & ADDR_MASK
        } else {
            let t = env.page();
            env.w64(at, t | VALID);
            t
        };
    }
    env.w64(table + pasidtab::offset(pasid, 0), desc | VALID);
    root
}

#[test]
fn pasid_walk() {
    let env = Env::new();
    let (untagged, uroot) = env.paging(0);
    let (tagged, troot) = env.paging(0);
    env.map(uroot, 0x1000, 0x11000, 0, RW);
    env.map(troot, 0x1000, 0x22000, 0, RW);
    let pasid = 0xa_bcde;
    let proot = pasid_table(&env, None, pasid, tagged);
    pasid_table(&env, Some(proot), 7, 0); // valid entry, descriptor 0
    env.set_device(9, untagged | VALID | devtab::PASID_EN, proot | 20);
    env.set_device(10, untagged | VALID, proot | 20);
    env.set_device(11, untagged | VALID | devtab::PASID_EN, proot | 8);
    env.set_device(12, untagged | VALID | devtab::PASID_EN, 20);
    env.enable();
    assert_eq!(env.pa(9, None, 0x1000, Prot::READ), 0x11000);
    assert_eq!(env.pa(9, Some(pasid), 0x1000, Prot::READ), 0x22000);
    assert_eq!(env.reason(9, Some(pasid + 1), 0x1000, Prot::READ), Fault::BAD_PASID);
    assert_eq!(env.reason(9, Some(7), 0x1000, Prot::READ), Fault::BLOCKED);
    assert_eq!(env.reason(9, Some(1 << 20), 0x1000, Prot::READ), Fault::BAD_PASID);
    assert_eq!(env.reason(10, Some(pasid), 0x1000, Prot::READ), Fault::BAD_PASID, "PASID_EN clear");
    assert_eq!(env.reason(11, Some(pasid), 0x1000, Prot::READ), Fault::BAD_PASID, "beyond width");
    assert_eq!(env.reason(12, Some(pasid), 0x1000, Prot::READ), Fault::BAD_ENTRY, "no PASID table");
    // Valid entries are cached, even one with a blocked descriptor.
    assert_eq!(env.model.cache_stats().pasid_entries, 2);

    let env = Env::with_cap(cap::FULL & !cap::PASID);
    let (tagged, troot) = env.paging(0);
    env.map(troot, 0x1000, 0x22000, 0, RW);
    let proot = pasid_table(&env, None, 1, tagged);
    env.set_device(9, VALID | devtab::PASID_EN, proot | 20);
    env.enable();
    assert_eq!(env.reason(9, Some(1), 0x1000, Prot::READ), Fault::BAD_PASID);
}

/// A stage-2 mapping guest-physical `[0, 16 MiB)` to `GUEST_PA` in 2 MiB pages, and a nested
/// descriptor of stage-1 `format` over it: (nested descriptor, parent descriptor, stage-1 root
/// (guest-physical), parent root).
fn nested(env: &Env, s1_format: u64, nested_flags: u64, parent_flags: u64) -> (u64, u64, u64, u64) {
    let (parent, s2root) = env.paging(parent_flags);
    for i in 0..8u64 {
        env.map(s2root, i << 21, GUEST_PA + (i << 21), 1, RW);
    }
    let s1root = env.alloc(Space::Guest);
    let d = env.desc([desc::TYPE_NESTED | FOUR_LEVELS | nested_flags, s1root, parent, s1_format]);
    (d, parent, s1root, s2root)
}

#[test]
fn nested_mock_stage1() {
    let env = Env::new();
    let (d, parent, s1root, s2root) = nested(&env, desc::S1_MOCK, 0, 0);
    let leaf = env.map_in((Space::Guest, Format::Mock), s1root, 0x4000_0000, 0x80_0000, 0, RW);
    env.map_in((Space::Guest, Format::Mock), s1root, 0x4000_1000, 0x80_1000, 0, RO);
    env.map_in((Space::Guest, Format::Mock), s1root, 0x4000_2000, 0x100_0000, 0, RW); // beyond stage-2
    env.set_device(3, d | VALID, 0);
    env.enable();
    let t = env.dma(3, None, 0x4000_0010, Prot::WRITE).unwrap();
    assert_eq!(t, DmaTarget { pa: PhysAddr(GUEST_PA + 0x80_0010), remaining: 0xff0 });
    assert_ne!(env.r64(leaf) & pte::A, 0);
    assert_eq!(env.pa(3, None, 0x4000_1000, Prot::READ), GUEST_PA + 0x80_1000);
    assert_eq!(env.reason(3, None, 0x4000_1000, Prot::WRITE), Fault::PERMISSION);
    // §6: faults in the stage-2 walk carry S2 (IN_PARENT).
    assert_eq!(env.reason(3, None, 0x4000_2000, Prot::READ), Fault::NOT_PRESENT | Fault::IN_PARENT);
    // Stage-2 read-only: writes fail (the intersection), reads work.
    let s2leaf = env.map(s2root, 0x80_0000, GUEST_PA + 0x80_0000, 1, RO);
    env.inv(reg::INV_IOTLB_RANGE, parent, 0x80_0000, 0x20_0000);
    assert_eq!(env.reason(3, None, 0x4000_0000, Prot::WRITE), Fault::PERMISSION | Fault::IN_PARENT);
    assert_eq!(env.pa(3, None, 0x4000_0000, Prot::READ), GUEST_PA + 0x80_0000);
    assert_ne!(env.r64(s2leaf) & pte::A, 0);
    // A stage-2 hole under the stage-1 tables.
    env.w64(s2root + pte::offset(0, 3), 0);
    env.inv(reg::INV_ALL, 0, 0, 0);
    assert_eq!(env.reason(3, None, 0x4000_0000, Prot::READ), Fault::NOT_PRESENT | Fault::IN_PARENT);
}

#[test]
fn nested_x86_stage1() {
    let env = Env::new();
    let (d, _, s1root, _) = nested(&env, desc::S1_X86_64, desc::DIRTY_EN, 0);
    let rw = x86::P | x86::RW;
    let leaf = env.map_in((Space::Guest, Format::X86), s1root, 0x7000_0000, 0x40_0000, 0, rw);
    env.map_in((Space::Guest, Format::X86), s1root, 0x7000_1000, 0x40_1000, 0, x86::P);
    let big = env.map_in((Space::Guest, Format::X86), s1root, 0x8000_0000, 0x20_0000, 1, rw);
    env.set_device(4, d | VALID, 0);
    env.enable();
    assert_eq!(env.pa(4, None, 0x7000_0008, Prot::READ), GUEST_PA + 0x40_0008);
    assert_eq!(env.r64(leaf) & (x86::A | x86::D), x86::A);
    assert_eq!(env.pa(4, None, 0x7000_0008, Prot::WRITE), GUEST_PA + 0x40_0008);
    assert_eq!(env.r64(leaf) & (x86::A | x86::D), x86::A | x86::D);
    assert_eq!(env.pa(4, None, 0x7000_1000, Prot::READ), GUEST_PA + 0x40_1000);
    assert_eq!(env.reason(4, None, 0x7000_1000, Prot::WRITE), Fault::PERMISSION);
    let t = env.dma(4, None, 0x8001_0000, Prot::READ).unwrap();
    assert_eq!((t.pa.raw(), t.remaining), (GUEST_PA + 0x21_0000, 0x1f_0000));
    assert_ne!(env.r64(big) & x86::A, 0);
    // RW clear at an upper level makes the whole subtree read-only.
    let l3 = GUEST_PA + s1root + pte::offset(0x7000_0000, 3);
    env.w64(l3, env.r64(l3) & !x86::RW);
    env.inv(reg::INV_IOTLB_RANGE, d, 0, 0);
    assert_eq!(env.reason(4, None, 0x7000_0000, Prot::WRITE), Fault::PERMISSION);

    let env = Env::with_cap(cap::FULL & !cap::S1_X86_64);
    let (d, ..) = nested(&env, desc::S1_X86_64, 0, 0);
    env.set_device(4, d | VALID, 0);
    env.enable();
    assert_eq!(env.reason(4, None, 0x7000_0000, Prot::READ), Fault::BAD_ENTRY);
}

#[test]
fn dirty_bit_only_on_writes_with_dirty_en() {
    let env = Env::new();
    let (_, plain) = env.attached(1, 0, 0);
    let (desc2, tracked) = env.attached(2, desc::DIRTY_EN, 0);
    let p = env.map(plain, 0x1000, 0x5000, 0, RW);
    let t = env.map(tracked, 0x1000, 0x6000, 0, RW);
    env.enable();
    env.dma(1, None, 0x1000, Prot::WRITE).unwrap();
    assert_eq!(env.r64(p) & (pte::A | pte::D), pte::A);
    env.dma(2, None, 0x1000, Prot::READ).unwrap();
    assert_eq!(env.r64(t) & (pte::A | pte::D), pte::A, "a read does not dirty");
    // The cached entry came from a read walk: the write re-walks and sets D.
    env.dma(2, None, 0x1000, Prot::WRITE).unwrap();
    assert_eq!(env.r64(t) & (pte::A | pte::D), pte::A | pte::D);
    // Now the driver clears D (read_and_clear_dirty) and invalidates; the next write sets it.
    env.w64(t, env.r64(t) & !pte::D);
    env.dma(2, None, 0x1000, Prot::WRITE).unwrap();
    assert_eq!(env.r64(t) & pte::D, 0, "the IOTLB entry still says dirty: no write to memory");
    env.inv(reg::INV_IOTLB_RANGE, desc2, 0x1000, 0x1000);
    env.dma(2, None, 0x1000, Prot::WRITE).unwrap();
    assert_ne!(env.r64(t) & pte::D, 0);

    let env = Env::with_cap(cap::FULL & !cap::DIRTY);
    let (_, tracked) = env.attached(2, desc::DIRTY_EN, 0);
    let t = env.map(tracked, 0x1000, 0x6000, 0, RW);
    env.enable();
    env.dma(2, None, 0x1000, Prot::WRITE).unwrap();
    assert_eq!(env.r64(t) & pte::D, 0, "no CAP.DIRTY");
}

#[test]
fn stale_iotlb_entries_translate_until_invalidated() {
    let env = Env::new();
    let (d, root) = env.attached(1, 0, 0);
    let leaf = env.map(root, 0x10_0000, 0x30_0000, 0, RW);
    let big = env.map(root, 0x4000_0000, 0x8000_0000, 1, RW);
    env.enable();
    assert_eq!(env.pa(1, None, 0x10_0000, Prot::WRITE), 0x30_0000);
    assert_eq!(env.pa(1, None, 0x4010_0000, Prot::READ), 0x8010_0000);
    env.w64(leaf, 0);
    env.w64(big, 0);
    let reads = env.mem.reads.load(Ordering::Relaxed);
    assert_eq!(env.pa(1, None, 0x10_0000, Prot::WRITE), 0x30_0000, "stale entry");
    assert_eq!(env.pa(1, None, 0x4000_0000, Prot::READ), 0x8000_0000, "stale 2 MiB entry");
    assert_eq!(env.mem.reads.load(Ordering::Relaxed), reads, "hits read no memory");
    // Ranges that miss, or another tag, change nothing.
    env.inv(reg::INV_IOTLB_RANGE, d, 0x10_1000, 0x1000);
    env.inv(reg::INV_IOTLB_RANGE, d + 0x1000, 0, 0);
    assert_eq!(env.pa(1, None, 0x10_0000, Prot::READ), 0x30_0000);
    env.inv(reg::INV_IOTLB_RANGE, d, 0x10_0000, 0x1000);
    assert_eq!(env.reason(1, None, 0x10_0000, Prot::READ), Fault::NOT_PRESENT);
    assert_eq!(env.pa(1, None, 0x4000_0000, Prot::READ), 0x8000_0000);
    // A range touching one byte of the 2 MiB page drops it.
    env.inv(reg::INV_IOTLB_RANGE, d, 0x401f_ffff, 1);
    assert_eq!(env.reason(1, None, 0x4000_0000, Prot::READ), Fault::NOT_PRESENT);
    let stats = env.model.cache_stats();
    assert!(stats.iotlb_hits >= 4 && stats.walks >= 4, "{stats:?}");
}

#[test]
fn invalidations_complete_late_with_latency() {
    let mut env = Env::new();
    env.model = MockModel::new(cap::FULL).with_latency(3);
    assert_eq!(env.model.latency(), 3);
    let (d, root) = env.attached(1, 0, 0);
    let leaf = env.map(root, 0x10_0000, 0x30_0000, 0, RW);
    let other = env.map(root, 0x20_0000, 0x50_0000, 0, RW);
    env.enable();
    assert_eq!(env.pa(1, None, 0x10_0000, Prot::READ), 0x30_0000);
    assert_eq!(env.pa(1, None, 0x20_0000, Prot::READ), 0x50_0000);
    env.w64(leaf, 0);
    env.w64(other, 0);
    let done = env.reg_r(reg::INV_DONE);
    env.reg_w(reg::INV_TAG, d);
    env.reg_w(reg::INV_ADDR, 0x10_0000);
    env.reg_w(reg::INV_SIZE, 0x1000);
    env.reg_w(reg::INV_CMD, reg::INV_IOTLB_RANGE);
    // The command saw the registers as they were at its write.
    env.reg_w(reg::INV_ADDR, 0x20_0000);
    env.reg_w(reg::INV_CMD, 9);
    // Not done yet: DMA does not count, the entry is stale.
    for _ in 0..3 {
        assert_eq!(env.pa(1, None, 0x10_0000, Prot::READ), 0x30_0000, "stale until completion");
    }
    assert_eq!(env.reg_r(reg::INV_DONE), done);
    assert_eq!(env.reg_r(reg::CAP), cap::FULL, "any register read counts");
    assert_eq!(env.pa(1, None, 0x10_0000, Prot::READ), 0x30_0000);
    // The third read completes it, and already shows it.
    assert_eq!(env.reg_r(reg::INV_DONE), done + 1);
    assert_eq!(env.reason(1, None, 0x10_0000, Prot::READ), Fault::NOT_PRESENT);
    assert_eq!(env.pa(1, None, 0x20_0000, Prot::READ), 0x50_0000, "only the range written with the command");
    // Two commands in flight complete in order, each at its own count; unknown ones never.
    env.reg_w(reg::INV_CMD, reg::INV_IOTLB_ALL);
    env.reg_r(reg::ID);
    env.reg_w(reg::INV_CMD, reg::INV_ALL);
    assert_eq!(env.reg_r(reg::INV_DONE), done + 1);
    assert_eq!(env.reg_r(reg::INV_DONE), done + 2);
    assert_eq!(env.reason(1, None, 0x20_0000, Prot::READ), Fault::NOT_PRESENT);
    assert_eq!(env.reg_r(reg::INV_DONE), done + 3);
    for _ in 0..8 {
        assert_eq!(env.reg_r(reg::INV_DONE), done + 3);
    }
    // The driver's way: poll INV_DONE until it moves.
    env.inv(reg::INV_IOTLB_ALL, 0, 0, 0);
}

#[test]
fn iotlb_all_and_config_caches() {
    let env = Env::new();
    let (d1, r1) = env.attached(1, 0, 0);
    let (d2, r2) = env.paging(0);
    env.map(r1, 0x1000, 0x11000, 0, RW);
    env.map(r2, 0x1000, 0x22000, 0, RW);
    env.enable();
    assert_eq!(env.pa(1, None, 0x1000, Prot::READ), 0x11000);
    // Re-pointing the device needs a DEVICE invalidation.
    env.set_device(1, d2 | VALID, 0);
    assert_eq!(env.pa(1, None, 0x1000, Prot::READ), 0x11000);
    env.inv(reg::INV_DEVICE, 2, 0, 0);
    assert_eq!(env.pa(1, None, 0x1000, Prot::READ), 0x11000, "another device's invalidation");
    env.inv(reg::INV_DEVICE, 1, 0, 0);
    assert_eq!(env.pa(1, None, 0x1000, Prot::READ), 0x22000);
    // A changed descriptor is cached too, and its old translations live in the IOTLB.
    env.w64(d2 + 8, r1);
    env.inv(reg::INV_IOTLB_ALL, 0, 0, 0);
    assert_eq!(env.pa(1, None, 0x1000, Prot::READ), 0x22000, "descriptor still cached");
    env.inv(reg::INV_DEVICE, 1, 0, 0);
    assert_eq!(env.pa(1, None, 0x1000, Prot::READ), 0x22000, "IOTLB entry of the tag");
    env.inv(reg::INV_IOTLB_RANGE, d2, 0, 0);
    assert_eq!(env.pa(1, None, 0x1000, Prot::READ), 0x11000);
    // Invalid device entries are not cached.
    env.set_device(1, 0, 0);
    env.inv(reg::INV_ALL, 0, 0, 0);
    assert_eq!(env.reason(1, None, 0x1000, Prot::READ), Fault::BLOCKED);
    env.set_device(1, d1 | VALID, 0);
    assert_eq!(env.pa(1, None, 0x1000, Prot::READ), 0x11000);
    let s = env.model.cache_stats();
    assert_eq!((s.device_entries, s.descriptor_entries, s.iotlb_entries), (1, 1, 1));
    env.inv(reg::INV_ALL, 0, 0, 0);
    let s = env.model.cache_stats();
    assert_eq!((s.device_entries, s.descriptor_entries, s.iotlb_entries), (0, 0, 0));
}

#[test]
fn device_invalidation_drops_pasid_entries_and_nested_parents() {
    let env = Env::new();
    let (d, parent, s1root, _) = nested(&env, desc::S1_MOCK, 0, 0);
    env.map_in((Space::Guest, Format::Mock), s1root, 0x1000, 0x1000, 0, RW);
    let proot = pasid_table(&env, None, 5, d);
    env.set_device(6, VALID | devtab::PASID_EN, proot | 20);
    env.enable();
    assert_eq!(env.pa(6, Some(5), 0x1000, Prot::READ), GUEST_PA + 0x1000);
    let s = env.model.cache_stats();
    assert_eq!((s.device_entries, s.pasid_entries, s.descriptor_entries), (1, 1, 2));
    env.inv(reg::INV_DEVICE, 6, 0, 0);
    let s = env.model.cache_stats();
    assert_eq!((s.device_entries, s.pasid_entries, s.descriptor_entries), (0, 0, 0));
    // Stage-2 invalidation by the parent's tag drops the nested entries.
    assert_eq!(s.iotlb_entries, 1);
    env.inv(reg::INV_IOTLB_RANGE, parent, 0, 0x1000);
    assert_eq!(env.model.cache_stats().iotlb_entries, 0);
}

/// The record at `index` of the fault queue.
fn record(env: &Env, index: u64) -> [u64; 4] {
    let at = env.fq + index * fault::SIZE;
    [env.r64(at), env.r64(at + 8), env.r64(at + 16), env.r64(at + 24)]
}

#[test]
fn faults_are_queued() {
    let env = Env::new();
    let (_, root) = env.attached(0x1_2345, 0, 0);
    env.map(root, 0x1000, 0x9000, 0, RO);
    let proot = pasid_table(&env, None, 0x33, 0);
    env.set_device(0x77, VALID | devtab::PASID_EN, proot | 20);
    env.enable();
    let f = env.dma(0x1_2345, None, 0x1008, Prot::WRITE).unwrap_err();
    assert_eq!(
        f,
        Fault {
            dev: DeviceRef::Sid(0x1_2345),
            pasid: None.into(),
            addr: Iova(0x1008),
            access: Prot::WRITE,
            reason: Fault::PERMISSION,
            page_request: false,
            group: 0,
        }
    );
    assert_eq!(env.reg_r(reg::FQ_TAIL), 1);
    let w0 = 0x1_2345 | fault::WRITE | (u64::from(Fault::PERMISSION) << fault::REASON_SHIFT);
    assert_eq!(record(&env, 0), [w0, 0x1008, 0, 0]);
    env.dma(0x77, Some(0x33), 0xabc_d000, Prot::READ).unwrap_err();
    let w0 = 0x77
        | (0x33 << fault::PASID_SHIFT)
        | fault::PASID_V
        | fault::READ
        | (u64::from(Fault::BLOCKED) << fault::REASON_SHIFT);
    assert_eq!(record(&env, 1), [w0, 0xabc_d000, 0, 0]);
    assert_eq!(env.reg_r(reg::FQ_TAIL), 2);

    // Without FQEN nothing is queued, but the fault is still returned.
    env.reg_w(reg::CTRL, reg::CTRL_EN);
    assert_eq!(env.reason(0x1_2345, None, 0x5000, Prot::READ), Fault::NOT_PRESENT);
    assert_eq!(env.reg_r(reg::FQ_TAIL), 2);
}

#[test]
fn full_queue_sets_fqof() {
    let env = Env::new();
    env.attached(1, 0, 0);
    env.enable();
    for i in 0..127u64 {
        env.dma(1, None, i << 12, Prot::READ).unwrap_err();
    }
    assert_eq!(env.reg_r(reg::FQ_TAIL), 127);
    assert_eq!(env.reg_r(reg::STATUS) & reg::STATUS_FQOF, 0);
    env.dma(1, None, 0xdead_0000, Prot::READ).unwrap_err();
    assert_eq!(env.reg_r(reg::FQ_TAIL), 127);
    assert_ne!(env.reg_r(reg::STATUS) & reg::STATUS_FQOF, 0);
    assert_eq!(record(&env, 126)[1], 126 << 12);
    assert_eq!(record(&env, 127), [0; 4], "dropped");
    // The driver consumes everything and clears FQOF; the queue wraps.
    env.reg_w(reg::FQ_HEAD, 127);
    env.reg_w(reg::CTRL, reg::CTRL_EN | reg::CTRL_FQEN | reg::CTRL_FQOF_CLEAR);
    assert_eq!(env.reg_r(reg::STATUS), reg::STATUS_ENS);
    assert_eq!(env.reg_r(reg::CTRL), reg::CTRL_EN | reg::CTRL_FQEN);
    env.dma(1, None, 0xbeef_0000, Prot::READ).unwrap_err();
    env.dma(1, None, 0xbeef_1000, Prot::READ).unwrap_err();
    assert_eq!(env.reg_r(reg::FQ_TAIL), 1);
    assert_eq!(record(&env, 127)[1], 0xbeef_0000);
    assert_eq!(record(&env, 0)[1], 0xbeef_1000);
}

#[test]
fn page_requests_and_responses() {
    let env = Env::new();
    let (d, _) = env.paging(desc::PRI);
    env.set_device(1, d | VALID | devtab::PRI_EN | devtab::PASID_EN, pasid_table(&env, None, 4, d) | 20);
    env.set_device(2, d | VALID, 0); // no PRI_EN
    let (nopri, nroot) = env.paging(0);
    env.map(nroot, 0, 0x1000, 0, RO);
    env.set_device(3, nopri | VALID | devtab::PRI_EN, 0);
    env.enable();
    let f = env.dma(1, Some(4), 0x5000, Prot::WRITE).unwrap_err();
    assert!(f.page_request);
    assert_eq!(f.reason, Fault::NOT_PRESENT);
    let g = f.group;
    let rec = record(&env, 0);
    assert_ne!(rec[0] & fault::PAGE_REQ, 0);
    assert_eq!(rec[2], u64::from(g));
    let f2 = env.dma(1, None, 0x6000, Prot::READ).unwrap_err();
    assert!(f2.page_request);
    assert_ne!(f2.group, g);
    assert!(!env.dma(2, None, 0x5000, Prot::READ).unwrap_err().page_request, "no PRI_EN");
    assert!(!env.dma(3, None, 0x5000, Prot::READ).unwrap_err().page_request, "no PRI on the descriptor");
    let perm = env.dma(3, None, 0, Prot::WRITE).unwrap_err();
    assert!(!perm.page_request && perm.reason == Fault::PERMISSION);

    // §6.1: until answered, the device's retry of the page gets the same request, unrecorded.
    let tail = env.reg_r(reg::FQ_TAIL);
    let again = env.dma(1, Some(4), 0x5ff8, Prot::READ).unwrap_err();
    assert!(again.page_request && again.group == g && again.reason == Fault::NOT_PRESENT, "{again:?}");
    assert_eq!(env.reg_r(reg::FQ_TAIL), tail, "no new record");
    // A response naming another group, or the request without its PASID, answers nothing.
    env.reg_w(reg::PRESP_DEV, 1 | (4 << 32) | (1 << 63));
    env.reg_w(reg::PRESP_CMD, u64::from(g) + 100);
    env.reg_w(reg::PRESP_DEV, 1);
    env.reg_w(reg::PRESP_CMD, u64::from(g));
    assert_eq!(env.dma(1, Some(4), 0x5000, Prot::READ).unwrap_err().group, g);

    env.reg_w(reg::PRESP_DEV, 1 | (4 << 32) | (1 << 63));
    env.reg_w(reg::PRESP_CMD, u64::from(g));
    env.reg_w(reg::PRESP_DEV, 1);
    env.reg_w(reg::PRESP_CMD, u64::from(f2.group) | (0xf << 32));
    assert_eq!(
        env.model.page_responses(),
        vec![
            PageResponseRecord { dev_id: 1, pasid: Some(Pasid(4)), group: g + 100, code: 0 },
            PageResponseRecord { dev_id: 1, pasid: None, group: g, code: 0 },
            PageResponseRecord { dev_id: 1, pasid: Some(Pasid(4)), group: g, code: 0 },
            PageResponseRecord { dev_id: 1, pasid: None, group: f2.group, code: 0xf },
        ]
    );
    assert_eq!(UnitModel::page_responses(&env.model).map(|r| r.len()), Some(4));
    // Answered: the retry walks again (the page is still missing: a new request).
    let f3 = env.dma(1, Some(4), 0x5000, Prot::READ).unwrap_err();
    assert!(f3.page_request && f3.group != g, "{f3:?}");
    // A device invalidation discards the device's outstanding requests.
    env.inv(reg::INV_DEVICE, 1, 0, 0);
    let f4 = env.dma(1, Some(4), 0x5000, Prot::READ).unwrap_err();
    assert!(f4.page_request && f4.group != f3.group, "{f4:?}");
}

#[test]
fn malformed_entries_are_bad_entry() {
    let env = Env::new();
    let (d, root) = env.attached(1, 0, 0);
    env.enable();
    // A non-leaf pointer of 0 with P set.
    env.w64(root + pte::offset(0x1000, 3), pte::P);
    assert_eq!(env.reason(1, None, 0x1000, Prot::READ), Fault::BAD_ENTRY);
    // LEAF at level 3.
    env.w64(root + pte::offset(0x1000, 3), pte::P | pte::R | pte::LEAF);
    assert_eq!(env.reason(1, None, 0x1000, Prot::READ), Fault::BAD_ENTRY);
    // A misaligned 2 MiB leaf.
    env.w64(root + pte::offset(0x1000, 3), 0);
    env.map(root, 0x20_0000, 0x30_1000, 1, RW);
    assert_eq!(env.reason(1, None, 0x20_0000, Prot::READ), Fault::BAD_ENTRY);
    // A table beyond memory.
    env.map(root, 0x40_0000, 0, 1, RW);
    let l1 = env.r64(root + pte::offset(0x40_0000, 3)) & ADDR_MASK;
    let l2 = env.r64(l1 + pte::offset(0x40_0000, 2)) & ADDR_MASK;
    env.w64(l2 + pte::offset(0x40_0000, 1), (1 << 40) | pte::P);
    assert_eq!(env.reason(1, None, 0x40_0000, Prot::READ), Fault::BAD_ENTRY);
    // An output beyond OAS.
    env.map(root, 0x60_0000, 1 << 48, 1, RW);
    assert_eq!(env.reason(1, None, 0x60_0000, Prot::READ), Fault::BAD_ENTRY);
    // Bad levels / IAS in the descriptor.
    for w0 in [
        desc::TYPE_PAGING | (48 << desc::IAS_SHIFT),
        desc::TYPE_PAGING | (4 << desc::LEVELS_SHIFT) | (49 << desc::IAS_SHIFT),
    ] {
        env.w64(d, w0);
        env.inv(reg::INV_ALL, 0, 0, 0);
        assert_eq!(env.reason(1, None, 0x1000, Prot::READ), Fault::BAD_ENTRY);
    }
    // A 3-level table is fine, with a 39-bit IAS.
    env.w64(d, desc::TYPE_PAGING | (3 << desc::LEVELS_SHIFT) | (39 << desc::IAS_SHIFT));
    let t3 = env.page();
    env.w64(d + 8, t3);
    env.inv(reg::INV_ALL, 0, 0, 0);
    let l1 = env.page();
    let l0 = env.page();
    env.w64(t3 + pte::offset(0x1000, 2), l1 | pte::P);
    env.w64(l1 + pte::offset(0x1000, 1), l0 | pte::P);
    env.w64(l0 + pte::offset(0x1000, 0), 0x7000 | RW);
    assert_eq!(env.pa(1, None, 0x1000, Prot::READ), 0x7000);
    assert_eq!(env.reason(1, None, 1 << 39, Prot::READ), Fault::ADDRESS_SIZE);
    // Device table pointing outside memory.
    env.reg_w(reg::DEVTAB, 1 << 40);
    env.inv(reg::INV_ALL, 0, 0, 0);
    assert_eq!(env.reason(1, None, 0x1000, Prot::READ), Fault::BAD_ENTRY);
}

#[test]
fn hostile_memory_never_panics_and_walks_are_bounded() {
    let mut env = Env::new();
    let mut rng = 0x9e37_79b9u64;
    let mut next = move || {
        rng = splitmix(rng);
        rng
    };
    let mut outcomes: HashMap<u32, u32> = HashMap::new();
    for round in 0..256 {
        env.mem.chaos = Some(next());
        // Every other round: a valid device entry and descriptors over hostile tables.
        let skeleton = round % 2 == 0;
        if skeleton {
            let flags = FOUR_LEVELS | desc::DIRTY_EN | desc::PRI;
            let parent = env.desc([desc::TYPE_PAGING | flags, next() & 0xffff_f000, 0, 0]);
            let ty = [desc::TYPE_PAGING, desc::TYPE_NESTED][(next() % 2) as usize];
            let s1 = [desc::S1_MOCK, desc::S1_X86_64][(next() % 2) as usize];
            let d = env.desc([ty | flags, next() & 0xffff_f000, parent, s1]);
            let dev = d | VALID | devtab::PASID_EN | devtab::PRI_EN;
            env.set_device(1, dev, (next() & 0xffff_f000) | 20);
            env.reg_w(reg::DEVTAB, env.devtab);
        } else {
            env.reg_w(reg::DEVTAB, next() & 0xffff_ffff);
        }
        env.reg_w(reg::FQ_BASE, next() & 0xffff_f000);
        env.reg_w(reg::FQ_HEAD, next());
        env.reg_w(reg::CTRL, reg::CTRL_EN | reg::CTRL_FQEN);
        for _ in 0..64 {
            let id = if skeleton { 1 } else { (next() % (1 << 18)) as u32 };
            let pasid = (next() % 4 == 0).then(|| (next() % (1 << 21)) as u32);
            let access = [Prot::READ, Prot::WRITE, Prot::RW, Prot::NONE][(next() % 4) as usize];
            let iova = next() & [0xffff_ffff_ffff, u64::MAX][(next() % 2) as usize];
            let before = env.mem.reads.load(Ordering::Relaxed);
            match env.dma(id, pasid, iova, access) {
                Ok(t) => {
                    assert!(t.remaining > 0 && t.remaining <= 1 << 30);
                    *outcomes.entry(0).or_default() += 1;
                }
                Err(f) => *outcomes.entry(f.reason).or_default() += 1,
            }
            // Device entry, PASID entry, two descriptors, a nested walk.
            let reads = env.mem.reads.load(Ordering::Relaxed) - before;
            assert!(reads <= 3 + 3 + 4 + 4 + 4 * 5 + 4, "round {round}: {reads} reads");
        }
        env.inv(reg::INV_ALL, 0, 0, 0);
    }
    // The rounds went deep: translations succeeded and every kind of fault was seen.
    let walks = env.model.cache_stats().walks;
    assert!(walks > 1000, "{walks} walks, {outcomes:?}");
    for reason in [
        0,
        Fault::NOT_PRESENT,
        Fault::PERMISSION,
        Fault::BLOCKED,
        Fault::ADDRESS_SIZE,
        Fault::BAD_ENTRY,
        Fault::BAD_PASID,
    ] {
        assert!(outcomes.contains_key(&reason), "no outcome {reason}: {outcomes:?}");
    }
}

#[test]
fn nested_walks_are_bounded_and_cached() {
    let env = Env::new();
    let (d, ..) = nested(&env, desc::S1_MOCK, 0, 0);
    let s1root = env.r64(d + 8) & ADDR_MASK;
    env.map_in((Space::Guest, Format::Mock), s1root, 0x1000, 0x2000, 0, RW);
    env.set_device(1, d | VALID, 0);
    env.enable();
    let before = env.mem.reads.load(Ordering::Relaxed);
    env.dma(1, None, 0x1000, Prot::READ).unwrap();
    let reads = env.mem.reads.load(Ordering::Relaxed) - before;
    // Device entry (3), descriptors (8), four stage-1 levels each behind a three-level stage-2
    // walk (2 MiB leaves), and the final stage-2 walk.
    assert_eq!(reads, 3 + 8 + 4 * (3 + 1) + 3);
    let before = env.mem.reads.load(Ordering::Relaxed);
    env.dma(1, None, 0x1ff8, Prot::READ).unwrap();
    assert_eq!(env.mem.reads.load(Ordering::Relaxed), before);
}
