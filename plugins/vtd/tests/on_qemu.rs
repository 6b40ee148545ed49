//! The VT-d driver against QEMU's own intel-iommu (q35, QEMU 7.2), driven through qtest: the
//! plugin probes the unit, builds its tables in QEMU's guest RAM and enables translation; the
//! edu device's DMA through mapped IOVAs lands at the right physical pages (4 KiB and 2 MiB
//! mappings, read-only mappings refusing writes); DMA to an unmapped IOVA, to an IOVA that was
//! unmapped after a DMA warmed QEMU's IOTLB, and before attach faults with the right reason,
//! access and source id. Legacy and scalable mode (QEMU's `x-scalable-mode=on`).
//!
//! QEMU's model was written by other people: a DMA that lands where our tables say is an
//! independent check of the bit layouts and of the invalidation the driver sends.
//!
//! Prerequisite: `qemu-system-x86_64`. When it is missing the tests say why and pass, except
//! under `CI=true`, where a missing prerequisite fails them.

use std::sync::Arc;
use std::time::Instant;

use ioasis::abi::Fault;
use ioasis::loader::{Plugin, Registry};
use ioasis::platform::{PhysMemory, Platform};
use ioasis::{
    Context, DeviceDesc, DeviceId, DeviceRef, HwptId, Intent, IntentItem, IoasId, Iova, PhysAddr, Prot, Target,
    UnmapMode,
};
use ioasis_baremetal::qemu::{find_program, Arch, Edu, QemuConfig, QemuMachine};

/// QEMU's VT-d unit on q35.
const VTD: u64 = 0xfed9_0000;
const KB4: u64 = 4 << 10;
const MB2: u64 = 2 << 20;
/// Bytes per edu transfer (its longest).
const LEN: u32 = Edu::MAX_TRANSFER;

/// Address-field mask of root/context/PASID/paging entries (bits 51:12).
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// IOVA → guest-physical layout (256 MiB q35; the table pool is the top 16 MiB). Every IOVA is
/// also guest RAM, so an untranslated DMA would land there: the tests check it stays zero.
/// 4 KiB read-write: an IOVA page onto a physical page at another address.
const RW4K_IOVA: u64 = 0x0200_0000;
const RW4K_PA: u64 = 0x0300_5000;
/// 2 MiB read-write, both sides 2 MiB aligned: one superpage.
const SP_IOVA: u64 = 0x0400_0000;
const SP_PA: u64 = 0x0600_0000;
/// Where in the superpage the DMA goes (far from its start, not crossing its end).
const SP_OFF: u64 = 0x12_3450;
/// 4 KiB read-only.
const RO_IOVA: u64 = 0x0201_0000;
const RO_PA: u64 = 0x0310_0000;
/// Mapped, DMA'd through, then unmapped.
const STALE_IOVA: u64 = 0x0202_0000;
const STALE_PA: u64 = 0x0320_0000;
/// Mapped, DMA'd through, then its leaf cleared behind the driver's back (no invalidation).
const CTRL_IOVA: u64 = 0x0203_0000;
const CTRL_PA: u64 = 0x0330_0000;
/// Never mapped.
const HOLE_IOVA: u64 = 0x0204_0000;

/// True when QEMU is installed; otherwise skips (or, under `CI=true`, fails).
fn prerequisite() -> bool {
    let bin = Arch::X86Q35.qemu_binary();
    if find_program(bin).is_some() {
        return true;
    }
    let why = format!("{bin} is not installed (scripts/setup-debian.sh installs it)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("missing prerequisite under CI=true: {why}");
    }
    eprintln!("SKIP: {why}");
    false
}

fn plugin() -> Arc<Plugin> {
    // Links the crate in (its built-in registration only exists when something of it is used).
    std::hint::black_box(ioasis_plugin_vtd::root_module());
    Registry::with_builtins().expect("built-ins").get("vtd").expect("vtd is built in")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed) | 1).collect()
}

fn read(m: &QemuMachine, pa: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    m.read(PhysAddr(pa), &mut buf).unwrap_or_else(|e| panic!("read {pa:#x}+{len:#x}: {e:?}"));
    buf
}

fn write(m: &QemuMachine, pa: u64, data: &[u8]) {
    m.write(PhysAddr(pa), data).unwrap_or_else(|e| panic!("write {pa:#x}: {e:?}"));
}

fn assert_zero(m: &QemuMachine, pa: u64, len: usize, what: &str) {
    let got = read(m, pa, len);
    if let Some(i) = got.iter().position(|b| *b != 0) {
        panic!("{what}: byte {i} at {:#x} is {:#x}, expected untouched zero", pa + i as u64, got[i]);
    }
}

/// One QEMU with intel-iommu, the vtd plugin probed on it, edu bound and negotiated.
struct Rig {
    m: Arc<QemuMachine>,
    ctx: Context,
    edu: DeviceId,
    scalable: bool,
}

impl Rig {
    fn start(scalable: bool) -> Self {
        let dev = if scalable { "intel-iommu,aw-bits=48,x-scalable-mode=on" } else { "intel-iommu,aw-bits=48" };
        let config = QemuConfig { extra_devices: vec![dev.into()], ..QemuConfig::x86_q35() };
        let m = Arc::new(QemuMachine::start(config).unwrap_or_else(|e| panic!("QEMU did not start: {e}")));
        let ctx = Context::new(m.clone());
        // No params: the driver picks scalable mode when ECAP offers SMTS + SSTS + QI.
        let unit = ctx
            .add_unit(&plugin(), "dmar0", PhysAddr(VTD), 0, "")
            .unwrap_or_else(|e| panic!("probe of QEMU's VT-d failed: {e}\nQEMU stderr: {}", m.stderr_tail()));
        let caps = ctx.unit_caps(unit).unwrap();
        let mode = if scalable { "scalable" } else { "legacy" };
        assert!(caps.model.as_str().contains(mode), "driver chose the wrong mode: {}", caps.model);
        assert!(caps.page_sizes.contains(MB2), "QEMU's CAP.SLLPS offers 2 MiB pages: {caps:?}");
        let edu = ctx.bind_device(DeviceDesc::pci("edu", m.edu().requester_id(), "dmar0")).unwrap();
        ctx.negotiate(edu, &Intent::new([IntentItem::UntaggedDma])).expect("a contract for untagged DMA");
        Self { m, ctx, edu, scalable }
    }

    fn mode(&self) -> &'static str {
        if self.scalable {
            "scalable"
        } else {
            "legacy"
        }
    }

    fn mmio64(&self, off: u64) -> u64 {
        self.m.mmio_read(PhysAddr(VTD), off, 8).unwrap()
    }

    fn rd(&self, pa: u64) -> u64 {
        self.m.read_u64(PhysAddr(pa)).unwrap()
    }

    /// The faults the driver decoded since the last call.
    fn faults(&self) -> Vec<Fault> {
        self.ctx.poll_faults().unwrap();
        self.ctx.take_fault_log()
    }

    /// The pending fault record as QEMU wrote it (FSTS.PPF set): its upper and lower qwords,
    /// read from the registers before the driver consumes it (11.4.9.3).
    fn raw_fault(&self) -> Option<(u64, u64)> {
        let fsts = self.m.mmio_read(PhysAddr(VTD), 0x34, 4).unwrap();
        if fsts & 2 == 0 {
            return None;
        }
        let cap = self.mmio64(0x8);
        let (fro, nfr) = (((cap >> 24) & 0x3ff) * 16, ((cap >> 40) & 0xff) + 1);
        let rec = fro + 16 * (((fsts >> 8) & 0xff) % nfr);
        Some((self.mmio64(rec + 8), self.mmio64(rec)))
    }

    /// Expects at least one fault, the first of which (QEMU splits a blocked DMA into 4-byte
    /// accesses and compresses the records of one source) is this one; `hw_reason` lists the
    /// VT-d fault reasons (Appendix A) QEMU may record for it.
    fn expect_fault(&self, what: &str, iova: u64, access: Prot, reason: u32, hw_reason: &[u64]) {
        let (hi, lo) = self.raw_fault().unwrap_or_else(|| panic!("[{}] {what}: FSTS.PPF is clear", self.mode()));
        let rid = self.m.edu().requester_id();
        let fr = (hi >> 32) & 0xff;
        assert_eq!(hi >> 63, 1, "[{}] {what}: FRCD.F in {hi:#x}", self.mode());
        assert_eq!(hi & 0xffff, u64::from(rid.source_id()), "[{}] {what}: FRCD.SID in {hi:#x}", self.mode());
        assert_eq!(lo & !0xfff, iova & !0xfff, "[{}] {what}: FRCD.FI in {lo:#x}", self.mode());
        assert_eq!((hi >> 62) & 1 == 1, access == Prot::READ, "[{}] {what}: FRCD.T in {hi:#x}", self.mode());
        assert!(hw_reason.contains(&fr), "[{}] {what}: FRCD.FR {fr:#x} not in {hw_reason:#x?}", self.mode());
        let raw = format!("FR {fr:#x}, PP {}, PV {:#x}", (hi >> 31) & 1, (hi >> 40) & 0xf_ffff);
        let log = self.faults();
        let first = log.first().unwrap_or_else(|| panic!("[{}] {what}: no fault recorded", self.mode()));
        assert_eq!(first.dev, DeviceRef::Rid(rid), "[{}] {what}: source id of {first:?}", self.mode());
        assert_eq!(first.addr.raw() & !0xfff, iova & !0xfff, "[{}] {what}: address of {first:?}", self.mode());
        assert_eq!(first.access, access, "[{}] {what}: access of {first:?}", self.mode());
        assert_eq!(
            first.reason,
            reason,
            "[{}] {what}: reason {} of {first:?}, expected {}",
            self.mode(),
            Fault::reason_name(first.reason),
            Fault::reason_name(reason)
        );
        assert!(first.pasid.is_none(), "[{}] {what}: untagged DMA has no PASID: {first:?}", self.mode());
        assert!(!first.page_request, "[{}] {what}: {first:?}", self.mode());
        // Every further record is the same device (no stray faults from elsewhere).
        assert!(log.iter().all(|f| f.dev == first.dev), "[{}] {what}: {log:?}", self.mode());
        eprintln!(
            "[{}] {what}: fault {} (QEMU: {raw}; {} record(s)) at {} {:?} from {rid}",
            self.mode(),
            Fault::reason_name(first.reason),
            log.len(),
            first.addr,
            first.access
        );
    }

    fn expect_no_fault(&self, what: &str) {
        let log = self.faults();
        assert!(log.is_empty(), "[{}] {what}: unexpected faults {log:?}", self.mode());
    }

    /// The second-stage root QEMU uses for edu's untagged DMA, found from the registers and the
    /// tables in guest RAM (legacy: root → context entry; scalable: root → scalable context
    /// entry → PASID directory → PASID entry of RID_PASID 0), with the entry's checks.
    fn hw_sl_root(&self) -> u64 {
        let rid = self.m.edu().requester_id();
        let (pool, pool_len) = self.m.table_pool();
        let in_pool = |pa: u64, what: &str| {
            assert!(
                pa >= pool.raw() && pa < pool.raw() + pool_len,
                "[{}] {what} {pa:#x} is not a table page in QEMU's RAM",
                self.mode()
            );
        };
        // RTADDR (11.4.6): TTM in bits 11:10.
        let rtaddr = self.mmio64(0x20);
        assert_eq!((rtaddr >> 10) & 3, u64::from(self.scalable), "[{}] RTADDR.TTM {rtaddr:#x}", self.mode());
        let root = rtaddr & ADDR;
        in_pool(root, "root table");
        let root_lo =
            self.rd(root + 16 * u64::from(rid.bus) + 8 * u64::from(rid.devfn >> 7) * u64::from(self.scalable));
        assert_eq!(root_lo & 1, 1, "root entry present");
        let ctx = root_lo & ADDR;
        in_pool(ctx, "context table");
        if !self.scalable {
            // 9.3: lo = SLPTPTR | TT | P; hi = DID, AW (2 = 4-level, 48-bit).
            let entry = ctx + 16 * u64::from(rid.devfn);
            let (lo, hi) = (self.rd(entry), self.rd(entry + 8));
            assert_eq!(lo & 1, 1, "context entry present: {lo:#x}");
            assert_eq!((lo >> 2) & 3, 0, "TT = second-level only: {lo:#x}");
            assert_eq!(hi & 7, 2, "AW = 48-bit 4-level: {hi:#x}");
            assert_ne!((hi >> 8) & 0xffff, 0, "a non-zero DID: {hi:#x}");
            let sl = lo & ADDR;
            in_pool(sl, "second-stage root");
            sl
        } else {
            // 9.4: 256-bit entries, devfn 0-127 in the lower table.
            let entry = ctx + 32 * u64::from(rid.devfn & 0x7f);
            let q0 = self.rd(entry);
            assert_eq!(q0 & 1, 1, "scalable context entry present: {q0:#x}");
            let pdir = q0 & ADDR;
            in_pool(pdir, "PASID directory");
            let dir0 = self.rd(pdir);
            assert_eq!(dir0 & 1, 1, "PASID directory entry 0 present: {dir0:#x}");
            let ptab = dir0 & ADDR;
            in_pool(ptab, "PASID table");
            let (p0, p1) = (self.rd(ptab), self.rd(ptab + 8));
            assert_eq!(p0 & 1, 1, "PASID entry 0 present: {p0:#x}");
            assert_eq!((p0 >> 6) & 7, 2, "PGTT = second-stage only: {p0:#x}");
            assert_eq!((p0 >> 2) & 7, 2, "AW = 48-bit 4-level: {p0:#x}");
            assert_ne!(p1 & 0xffff, 0, "a non-zero DID: {p1:#x}");
            let sl = p0 & ADDR;
            in_pool(sl, "second-stage root");
            sl
        }
    }

    /// Walks the second-stage table in QEMU's RAM: (leaf entry address, leaf value, page size).
    fn hw_walk(&self, iova: u64) -> Option<(u64, u64, u64)> {
        let mut table = self.hw_sl_root();
        for level in (1..=4u32).rev() {
            let shift = 12 + 9 * (level - 1);
            let entry = table + 8 * ((iova >> shift) & 0x1ff);
            let v = self.rd(entry);
            if v & 3 == 0 {
                return None;
            }
            if level == 1 || v & (1 << 7) != 0 {
                return Some((entry, v, 1 << shift));
            }
            table = v & ADDR;
        }
        None
    }
}

fn hwpt_of(r: &Rig, ioas: IoasId) -> HwptId {
    let hwpt = r.ctx.attached_hwpt(r.edu, None).unwrap().expect("edu is attached to a HWPT");
    assert_eq!(r.ctx.ioas_hwpts(ioas).unwrap(), vec![hwpt]);
    hwpt
}

fn proof(scalable: bool) {
    let t0 = Instant::now();
    let r = Rig::start(scalable);
    let mode = r.mode();
    let m = &*r.m;
    let edu = m.edu();
    eprintln!("[{mode}] QEMU ({:?}) up and unit probed in {:?}", m.accel(), t0.elapsed());
    // Translation is on (GSTS.TE) and no stale fault is pending.
    let gsts = m.mmio_read(PhysAddr(VTD), 0x1c, 4).unwrap();
    assert_ne!(gsts & (1 << 31), 0, "[{mode}] GSTS.TE after probe: {gsts:#x}");
    r.expect_no_fault("after probe");

    // Blocked before attach: no root entry for bus 0 yet (QEMU: reason 0x1). Its read gets nothing, its
    // write is dropped; both fault.
    let p1 = pattern(LEN as usize, 11);
    write(m, RW4K_PA, &p1);
    edu.dma_to_device(Iova(RW4K_PA), 16).unwrap();
    r.expect_fault("DMA read before attach", RW4K_PA, Prot::READ, Fault::BLOCKED, &[1]);
    edu.dma_from_device(Iova(HOLE_IOVA), 16).unwrap();
    assert_zero(m, HOLE_IOVA, 16, "DMA write before attach");
    r.expect_fault("DMA write before attach", HOLE_IOVA, Prot::WRITE, Fault::BLOCKED, &[1]);

    // Map, then attach: the driver writes the context (and PASID) entries.
    let ioas = r.ctx.alloc_ioas();
    let map = |iova: u64, pa: u64, len: u64, prot: Prot| {
        r.ctx.map(ioas, Some(Iova(iova)), PhysAddr(pa), len, prot).unwrap_or_else(|e| panic!("map {iova:#x}: {e}"))
    };
    map(RW4K_IOVA, RW4K_PA, KB4, Prot::RW);
    map(SP_IOVA, SP_PA, MB2, Prot::RW);
    map(RO_IOVA, RO_PA, KB4, Prot::READ);
    map(STALE_IOVA, STALE_PA, KB4, Prot::RW);
    map(CTRL_IOVA, CTRL_PA, KB4, Prot::RW);
    r.ctx.attach(r.edu, None, Target::Ioas(ioas)).unwrap();
    let hwpt = hwpt_of(&r, ioas);

    // The driver's view and the tables in QEMU's RAM agree: 4 KiB leaves, one 2 MiB leaf.
    for (iova, pa, size, prot) in [
        (RW4K_IOVA, RW4K_PA, KB4, Prot::RW),
        (SP_IOVA + SP_OFF, SP_PA + SP_OFF, MB2, Prot::RW),
        (RO_IOVA + 0x10, RO_PA + 0x10, KB4, Prot::READ),
    ] {
        let t = r.ctx.translate(hwpt, Iova(iova)).unwrap().unwrap_or_else(|| panic!("{iova:#x} translates"));
        assert_eq!((t.pa, t.page_size, t.prot), (PhysAddr(pa), size, prot), "[{mode}] translate {iova:#x}");
        let (_, leaf, span) = r.hw_walk(iova).unwrap_or_else(|| panic!("[{mode}] no leaf for {iova:#x} in RAM"));
        assert_eq!(span, size, "[{mode}] leaf size for {iova:#x}: {leaf:#x}");
        assert_eq!((leaf & ADDR & !(span - 1)) + (iova & (span - 1)), pa, "[{mode}] leaf {leaf:#x}");
        assert_eq!(leaf & 3, u64::from(prot.0), "[{mode}] leaf {leaf:#x} permission bits (R=0, W=1)");
    }
    assert!(r.ctx.translate(hwpt, Iova(HOLE_IOVA)).unwrap().is_none());
    assert!(r.hw_walk(HOLE_IOVA).is_none());

    // 4 KiB read, 2 MiB write: RAM[RW4K_PA] → edu → RAM[SP_PA + SP_OFF].
    let t = Instant::now();
    write(m, RW4K_PA, &p1);
    edu.dma_to_device(Iova(RW4K_IOVA), LEN).unwrap();
    edu.dma_from_device(Iova(SP_IOVA + SP_OFF), LEN).unwrap();
    assert_eq!(read(m, SP_PA + SP_OFF, LEN as usize), p1, "[{mode}] DMA through the 2 MiB page");
    assert_zero(m, SP_PA + SP_OFF - 16, 16, "before the 2 MiB target");
    assert_zero(m, SP_PA + SP_OFF + u64::from(LEN), 16, "after the 2 MiB target");
    assert_zero(m, SP_IOVA + SP_OFF, LEN as usize, "the untranslated address of the 2 MiB target");
    // 2 MiB read, 4 KiB write: RAM[SP_PA + 0x1f_f000] → edu → RAM[RW4K_PA].
    let p2 = pattern(LEN as usize, 77);
    write(m, SP_PA + 0x1f_f000, &p2);
    edu.dma_to_device(Iova(SP_IOVA + 0x1f_f000), LEN).unwrap();
    edu.dma_from_device(Iova(RW4K_IOVA), LEN).unwrap();
    assert_eq!(read(m, RW4K_PA, LEN as usize), p2, "[{mode}] DMA through the 4 KiB page");
    assert_zero(m, RW4K_IOVA, KB4 as usize, "the untranslated address of the 4 KiB target");
    r.expect_no_fault("DMA through 4 KiB and 2 MiB mappings");
    eprintln!("[{mode}] four DMAs through 4 KiB and 2 MiB mappings took {:?}", t.elapsed());

    // Read-only: edu's write is refused and faults, its read works. The write comes first,
    // while QEMU's IOTLB holds nothing for the page: QEMU 7.2 checks permissions (and reports
    // reason 5) only when it walks the table; a write that hits a cached read-only entry is
    // dropped without a fault record (checked last).
    let p3 = pattern(LEN as usize, 200);
    write(m, RO_PA, &p3);
    edu.dma_to_device(Iova(SP_IOVA + SP_OFF), LEN).unwrap(); // edu holds p1
    edu.dma_from_device(Iova(RO_IOVA), LEN).unwrap();
    assert_eq!(read(m, RO_PA, LEN as usize), p3, "[{mode}] a DMA write changed a read-only page");
    assert_zero(m, RO_IOVA, KB4 as usize, "the untranslated address of the read-only page");
    r.expect_fault("DMA write to a read-only IOVA", RO_IOVA, Prot::WRITE, Fault::PERMISSION, &[5]);
    edu.dma_to_device(Iova(RO_IOVA), LEN).unwrap();
    edu.dma_from_device(Iova(RW4K_IOVA), LEN).unwrap();
    assert_eq!(read(m, RW4K_PA, LEN as usize), p3, "[{mode}] DMA read of the read-only page");
    r.expect_no_fault("DMA read of a read-only page");
    edu.dma_to_device(Iova(SP_IOVA + SP_OFF), LEN).unwrap(); // edu holds p1
    edu.dma_from_device(Iova(RO_IOVA), LEN).unwrap();
    assert_eq!(read(m, RO_PA, LEN as usize), p3, "[{mode}] a DMA write changed a cached read-only page");
    let warm = r.faults();
    eprintln!("[{mode}] DMA write to a read-only IOVA with a warm IOTLB: dropped, {} fault record(s)", warm.len());
    edu.dma_to_device(Iova(RO_IOVA), LEN).unwrap(); // edu holds p3 again

    // Never mapped: both directions fault, nothing lands.
    edu.dma_from_device(Iova(HOLE_IOVA + 0x800), 64).unwrap();
    assert_zero(m, HOLE_IOVA, KB4 as usize, "the untranslated address of an unmapped IOVA");
    r.expect_fault("DMA write to an unmapped IOVA", HOLE_IOVA, Prot::WRITE, Fault::NOT_PRESENT, &[5]);
    edu.dma_to_device(Iova(HOLE_IOVA), 64).unwrap();
    r.expect_fault("DMA read of an unmapped IOVA", HOLE_IOVA, Prot::READ, Fault::NOT_PRESENT, &[6]);

    // Negative control: QEMU's IOTLB keeps a translation after the leaf is cleared without an
    // invalidation, so the unmap check below really tests the driver's invalidation.
    edu.dma_to_device(Iova(RW4K_IOVA), LEN).unwrap(); // edu holds p3
    edu.dma_from_device(Iova(CTRL_IOVA), 16).unwrap();
    assert_eq!(read(m, CTRL_PA, 16), p3[..16], "[{mode}] DMA through the control page");
    let (leaf_pa, leaf, _) = r.hw_walk(CTRL_IOVA).expect("control leaf");
    m.write_u64(PhysAddr(leaf_pa), 0).unwrap();
    write(m, CTRL_PA, &[0; 16]);
    edu.dma_from_device(Iova(CTRL_IOVA), 16).unwrap();
    let cached = read(m, CTRL_PA, 16) == p3[..16];
    m.write_u64(PhysAddr(leaf_pa), leaf).unwrap();
    assert!(cached, "[{mode}] QEMU did not use its IOTLB: the stale-translation check below would prove nothing");
    r.expect_no_fault("DMA through a cached translation");

    // Mapped, DMA'd through (IOTLB warm), unmapped: the driver's invalidation must stop it.
    edu.dma_from_device(Iova(STALE_IOVA), LEN).unwrap();
    assert_eq!(read(m, STALE_PA, LEN as usize), p3, "[{mode}] DMA before unmap");
    write(m, STALE_PA, &vec![0; LEN as usize]);
    r.ctx.unmap(ioas, Iova(STALE_IOVA), KB4, UnmapMode::Exact).unwrap();
    assert!(r.ctx.translate(hwpt, Iova(STALE_IOVA)).unwrap().is_none());
    assert!(r.hw_walk(STALE_IOVA).is_none(), "[{mode}] the leaf is gone from QEMU's RAM");
    edu.dma_from_device(Iova(STALE_IOVA), LEN).unwrap();
    assert_zero(m, STALE_PA, LEN as usize, "DMA after unmap (stale IOTLB entry)");
    r.expect_fault("DMA write after unmap", STALE_IOVA, Prot::WRITE, Fault::NOT_PRESENT, &[5]);
    // The 2 MiB page too, with a warm IOTLB entry for it.
    edu.dma_from_device(Iova(SP_IOVA + SP_OFF), 32).unwrap();
    r.ctx.unmap(ioas, Iova(SP_IOVA), MB2, UnmapMode::Exact).unwrap();
    write(m, SP_PA + SP_OFF, &[0; 32]);
    edu.dma_from_device(Iova(SP_IOVA + SP_OFF), 32).unwrap();
    assert_zero(m, SP_PA + SP_OFF, 32, "DMA after unmap of the 2 MiB page");
    r.expect_fault("DMA write after unmap of a 2 MiB page", SP_IOVA + SP_OFF, Prot::WRITE, Fault::NOT_PRESENT, &[5]);
    // What is still mapped still works.
    edu.dma_from_device(Iova(RW4K_IOVA + 0x100), 32).unwrap();
    assert_eq!(read(m, RW4K_PA + 0x100, 32), p3[..32], "[{mode}] DMA after the unmaps");
    r.expect_no_fault("DMA through a mapping that stayed");

    // Teardown gives every table page back and turns translation off.
    let Rig { m, ctx, .. } = r;
    ctx.teardown().unwrap();
    assert_eq!(m.table_pages(), 0, "[{mode}] table pages left after teardown");
    let gsts = m.mmio_read(PhysAddr(VTD), 0x1c, 4).unwrap();
    assert_eq!(gsts & (1 << 31), 0, "[{mode}] GSTS.TE after teardown: {gsts:#x}");
    assert!(m.is_running(), "[{mode}] QEMU is still alive: {}", m.stderr_tail());
    drop(ctx);
    eprintln!("[{mode}] whole proof took {:?}", t0.elapsed());
}

#[test]
fn legacy_mode_on_qemu_intel_iommu() {
    if prerequisite() {
        proof(false);
    }
}

#[test]
fn scalable_mode_on_qemu_intel_iommu() {
    if prerequisite() {
        proof(true);
    }
}
