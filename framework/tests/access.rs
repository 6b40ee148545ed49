//! Access objects on the simulated machine: pins, copies, unmap callbacks, replace, destroy,
//! teardown, and pins racing unmaps.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use common::{Rig, MB, UNIT_BASE};
use ioasis::{
    AccessId, AccessOps, Context, DeviceId, Error, IoasId, Iova, IovaRange, PhysAddr, Prot, Target, UnmapMode,
};
use ioasis_baremetal::Machine;

/// A rig whose context is shared (an access's callback holds it), with a mock device attached
/// to one IOAS.
struct Bench {
    machine: Arc<Machine>,
    ctx: Arc<Context>,
    dev: DeviceId,
    ioas: IoasId,
}

impl Bench {
    fn new() -> Self {
        let rig = Rig::new();
        let dev = rig.paging_device(1, 0, &[]);
        let ioas = rig.ctx.alloc_ioas();
        rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
        let Rig { machine, ctx, models: _ } = rig;
        Bench { machine, ctx: Arc::new(ctx), dev, ioas }
    }

    fn ram(&self, pa: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.machine.ram().read(PhysAddr(pa), &mut buf).unwrap();
        buf
    }

    fn write_ram(&self, pa: u64, data: &[u8]) {
        self.machine.ram().write(PhysAddr(pa), data).unwrap();
    }

    /// The attached device (00:01.0) reads through the IOMMU.
    fn dma_read(&self, iova: u64, len: usize) -> Result<Vec<u8>, ioasis_baremetal::DmaError> {
        let mut buf = vec![0u8; len];
        self.machine.dma_read(PhysAddr(UNIT_BASE), Rig::rid(1), None, Iova(iova), &mut buf)?;
        Ok(buf)
    }

    /// A new access on `ioas` with a recording callback.
    fn access(&self, ioas: IoasId) -> Arc<Consumer> {
        let c = Arc::new(Consumer::default());
        let id = self.ctx.create_access(ioas, c.clone()).unwrap();
        c.ctx.set(Arc::downgrade(&self.ctx)).unwrap();
        c.id.set(id).unwrap();
        c
    }
}

/// A consumer that records its callbacks and, when `cooperative`, unpins what it pinned in the
/// range asked.
#[derive(Default)]
struct Consumer {
    ctx: OnceLock<Weak<Context>>,
    id: OnceLock<AccessId>,
    calls: Mutex<Vec<(Iova, u64)>>,
    /// Pinned pages (page IOVA → count), as the consumer believes.
    held: Mutex<HashMap<u64, u32>>,
    stubborn: AtomicBool,
}

impl Consumer {
    fn id(&self) -> AccessId {
        *self.id.get().unwrap()
    }

    fn ctx(&self) -> Arc<Context> {
        self.ctx.get().unwrap().upgrade().unwrap()
    }

    fn pin(&self, iova: u64, len: u64, prot: Prot) -> ioasis::Result<Vec<PhysAddr>> {
        let pas = self.ctx().access_pin(self.id(), Iova(iova), len, prot)?;
        let mut held = self.held.lock().unwrap();
        for p in (iova..iova + len).step_by(4096) {
            *held.entry(p).or_insert(0) += 1;
        }
        Ok(pas)
    }

    /// Unpins one pin of page `page`, if the consumer still holds one.
    fn unpin_page(&self, page: u64) -> bool {
        let mut held = self.held.lock().unwrap();
        let Some(n) = held.get_mut(&page) else { return false };
        *n -= 1;
        if *n == 0 {
            held.remove(&page);
        }
        self.ctx().access_unpin(self.id(), Iova(page), 4096).expect("a held page unpins");
        true
    }

    fn calls(&self) -> Vec<(Iova, u64)> {
        self.calls.lock().unwrap().clone()
    }
}

impl AccessOps for Consumer {
    fn unmap(&self, iova: Iova, len: u64) {
        self.calls.lock().unwrap().push((iova, len));
        if self.stubborn.load(Ordering::SeqCst) {
            return;
        }
        let Some(ctx) = self.ctx.get().and_then(Weak::upgrade) else { return };
        let mut held = self.held.lock().unwrap();
        let last = iova.0.saturating_add(len - 1);
        held.retain(|&page, n| {
            if page < iova.0 || page > last {
                return true;
            }
            for _ in 0..*n {
                ctx.access_unpin(self.id(), Iova(page), 4096).expect("the callback unpins a held page");
            }
            false
        });
    }
}

const IOVA: u64 = 0x10_0000;
/// Two areas adjacent in IOVA, apart in RAM: [IOVA, +8 KiB) → 4 MiB, [IOVA+8 KiB, +8 KiB) →
/// 9 MiB + 4 KiB.
fn two_areas(b: &Bench) {
    b.ctx.map(b.ioas, Some(Iova(IOVA)), PhysAddr(4 * MB), 0x2000, Prot::RW).unwrap();
    b.ctx.map(b.ioas, Some(Iova(IOVA + 0x2000)), PhysAddr(9 * MB + 0x1000), 0x2000, Prot::RW).unwrap();
}

#[test]
fn pin_gives_the_physical_pages_and_copies_go_through_the_areas() {
    let b = Bench::new();
    two_areas(&b);
    let a = b.access(b.ioas);
    let pas = a.pin(IOVA + 0x1000, 0x2000, Prot::READ).unwrap();
    assert_eq!(pas, vec![PhysAddr(4 * MB + 0x1000), PhysAddr(9 * MB + 0x1000)]);
    // What the RAM holds at those pages is what a read through the access sees.
    b.write_ram(4 * MB + 0x1ffc, b"abcd");
    b.write_ram(9 * MB + 0x1000, b"efgh");
    let mut buf = [0u8; 8];
    b.ctx.access_read(a.id(), Iova(IOVA + 0x1ffc), &mut buf).unwrap();
    assert_eq!(&buf, b"abcdefgh");
    // A write across the two areas lands in both RAM ranges, and the device reads it back.
    b.ctx.access_write(a.id(), Iova(IOVA + 0x1ffe), b"WXYZ").unwrap();
    assert_eq!(b.ram(4 * MB + 0x1ffe, 2), b"WX");
    assert_eq!(b.ram(9 * MB + 0x1000, 2), b"YZ");
    assert_eq!(b.dma_read(IOVA + 0x1ffc, 8).unwrap(), b"abWXYZgh");
    assert_eq!(b.ctx.access_pinned(a.id()).unwrap(), 2);
    assert_eq!(b.ctx.access_ioas(a.id()).unwrap(), b.ioas);
}

#[test]
fn permissions_gaps_and_bounds_are_typed_and_change_nothing() {
    let b = Bench::new();
    b.ctx.map(b.ioas, Some(Iova(IOVA)), PhysAddr(4 * MB), 0x1000, Prot::RW).unwrap();
    b.ctx.map(b.ioas, Some(Iova(IOVA + 0x1000)), PhysAddr(5 * MB), 0x1000, Prot::READ).unwrap();
    b.ctx.map(b.ioas, Some(Iova(IOVA + 0x2000)), PhysAddr(6 * MB), 0x1000, Prot::WRITE).unwrap();
    // A hole at IOVA + 0x3000, then RW again.
    b.ctx.map(b.ioas, Some(Iova(IOVA + 0x4000)), PhysAddr(7 * MB), 0x1000, Prot::RW).unwrap();
    let a = b.access(b.ioas);
    let id = a.id();

    // Write over RW + read-only: refused at the read-only area, nothing written.
    let e = b.ctx.access_write(id, Iova(IOVA + 0xffe), b"1234").unwrap_err();
    match e {
        Error::Denied { range, area, prot, want } => {
            assert_eq!(range.start, Iova(IOVA + 0x1000));
            assert_eq!(area, IovaRange::new(Iova(IOVA + 0x1000), 0x1000).unwrap());
            assert_eq!((prot, want), (Prot::READ, Prot::WRITE));
        }
        other => panic!("expected Denied, got {other:?}"),
    }
    assert_eq!(b.ram(4 * MB + 0xffe, 2), [0, 0]);
    // Write-only area: no reads, no read pins.
    let mut buf = [0u8; 4];
    assert!(matches!(b.ctx.access_read(id, Iova(IOVA + 0x2000), &mut buf), Err(Error::Denied { .. })));
    assert!(matches!(a.pin(IOVA + 0x2000, 0x1000, Prot::READ), Err(Error::Denied { .. })));
    assert!(matches!(a.pin(IOVA, 0x2000, Prot::RW), Err(Error::Denied { .. })));
    a.pin(IOVA + 0x2000, 0x1000, Prot::WRITE).unwrap();
    a.unpin_page(IOVA + 0x2000);

    // Over the hole: the error names the first unmapped address; no partial pin survives.
    match a.pin(IOVA + 0x2000, 0x3000, Prot::WRITE) {
        Err(Error::NotMapped { range }) => assert_eq!(range.start, Iova(IOVA + 0x3000)),
        other => panic!("expected NotMapped, got {other:?}"),
    }
    assert_eq!(b.ctx.access_pinned(id).unwrap(), 0);
    // Two good pages, then the write-only area: refused, nothing pinned either.
    assert!(matches!(a.pin(IOVA, 0x3000, Prot::READ), Err(Error::Denied { .. })));
    assert_eq!(b.ctx.access_pinned(id).unwrap(), 0);
    assert!(matches!(b.ctx.access_read(id, Iova(IOVA + 0x2ffe), &mut buf), Err(Error::Denied { .. })));
    assert!(matches!(b.ctx.access_read(id, Iova(IOVA + 0x3ffe), &mut buf), Err(Error::NotMapped { .. })));
    // So the areas unmap without any callback.
    b.ctx.unmap(b.ioas, Iova(IOVA), 0x3000, UnmapMode::Exact).unwrap();
    assert!(a.calls().is_empty());

    // Bounds: checked before anything is allocated or looked up.
    let huge = (ioasis::context::MAX_PIN_PAGES + 1) * 4096;
    assert!(matches!(b.ctx.access_pin(id, Iova(0), huge, Prot::READ), Err(Error::TooLarge { .. })));
    assert!(matches!(b.ctx.access_pin(id, Iova(0x800), 0x1000, Prot::READ), Err(Error::Unaligned { .. })));
    assert!(matches!(b.ctx.access_pin(id, Iova(IOVA + 0x4000), 0, Prot::READ), Err(Error::ZeroLength)));
    assert!(matches!(b.ctx.access_pin(id, Iova(IOVA + 0x4000), 0x1000, Prot::NONE), Err(Error::Invalid(_))));
    let mut big = vec![0u8; ioasis::context::MAX_RW_BYTES + 1];
    assert!(matches!(b.ctx.access_read(id, Iova(IOVA + 0x4000), &mut big), Err(Error::TooLarge { .. })));
    assert!(matches!(b.ctx.access_write(id, Iova(u64::MAX - 1), b"abc"), Err(Error::Overflow { .. })));
    assert!(matches!(b.ctx.access_read(id, Iova(IOVA), &mut []), Err(Error::ZeroLength)));
    let gone = AccessId(ioasis::ObjectId(9999));
    assert!(matches!(b.ctx.access_pin(gone, Iova(IOVA + 0x4000), 0x1000, Prot::READ), Err(Error::NoSuchObject { .. })));
}

#[test]
fn pins_are_counted_per_page() {
    let b = Bench::new();
    two_areas(&b);
    let a = b.access(b.ioas);
    let id = a.id();
    a.stubborn.store(true, Ordering::SeqCst);
    b.ctx.access_pin(id, Iova(IOVA), 0x2000, Prot::READ).unwrap();
    b.ctx.access_pin(id, Iova(IOVA + 0x1000), 0x1000, Prot::READ).unwrap();
    assert_eq!(b.ctx.access_pinned(id).unwrap(), 3);
    // Unpinning a range with a page not pinned is refused and unpins nothing.
    assert!(matches!(b.ctx.access_unpin(id, Iova(IOVA), 0x3000), Err(Error::NotPinned { .. })));
    assert_eq!(b.ctx.access_pinned(id).unwrap(), 3);
    b.ctx.access_unpin(id, Iova(IOVA), 0x2000).unwrap();
    // The page pinned twice is still pinned once: its area cannot go.
    let e = b.ctx.unmap(b.ioas, Iova(IOVA), 0x2000, UnmapMode::Exact).unwrap_err();
    assert!(matches!(e, Error::Pinned { access, .. } if access == id.0), "{e:?}");
    b.ctx.access_unpin(id, Iova(IOVA + 0x1000), 0x1000).unwrap();
    assert!(matches!(b.ctx.access_unpin(id, Iova(IOVA + 0x1000), 0x1000), Err(Error::NotPinned { .. })));
    assert_eq!(b.ctx.access_pinned(id).unwrap(), 0);
    b.ctx.unmap(b.ioas, Iova(IOVA), 0x2000, UnmapMode::Exact).unwrap();
}

#[test]
fn an_unmap_over_pins_calls_back_and_succeeds_once_unpinned() {
    let b = Bench::new();
    two_areas(&b);
    let a = b.access(b.ioas);
    let other = b.access(b.ioas);
    a.pin(IOVA + 0x1000, 0x1000, Prot::READ).unwrap();
    a.pin(IOVA + 0x2000, 0x1000, Prot::READ).unwrap();
    // Cut [IOVA + 0x1000, +8 KiB) out of both areas: the callback gets the piece of each area
    // that goes; the access with no pins there is not called.
    let bytes = b.ctx.unmap(b.ioas, Iova(IOVA + 0x1000), 0x2000, UnmapMode::Cut).unwrap();
    assert_eq!(bytes, 0x2000);
    assert_eq!(a.calls(), vec![(Iova(IOVA + 0x1000), 0x1000), (Iova(IOVA + 0x2000), 0x1000)]);
    assert!(other.calls().is_empty());
    assert_eq!(b.ctx.access_pinned(a.id()).unwrap(), 0);
    // The parts outside the range stay, for the device and for the access.
    b.write_ram(4 * MB, b"left");
    assert_eq!(b.dma_read(IOVA, 4).unwrap(), b"left");
    assert!(b.dma_read(IOVA + 0x1000, 4).is_err());
    let pas = a.pin(IOVA + 0x3000, 0x1000, Prot::RW).unwrap();
    assert_eq!(pas, vec![PhysAddr(9 * MB + 0x2000)]);
    // unmap_all goes through the callback too.
    assert_eq!(b.ctx.unmap_all(b.ioas).unwrap(), 0x2000);
    assert_eq!(a.calls().last(), Some(&(Iova(IOVA + 0x3000), 0x1000)));
    assert!(b.ctx.areas(b.ioas).unwrap().is_empty());
}

#[test]
fn an_unmap_over_pins_left_pinned_fails_and_changes_nothing() {
    let b = Bench::new();
    two_areas(&b);
    let a = b.access(b.ioas);
    a.stubborn.store(true, Ordering::SeqCst);
    a.pin(IOVA + 0x3000, 0x1000, Prot::READ).unwrap();
    b.write_ram(9 * MB + 0x2000, b"pinned page");
    b.write_ram(4 * MB, b"other area");
    let before = b.ctx.areas(b.ioas).unwrap();
    let hwpt = b.ctx.attached_hwpt(b.dev, None).unwrap().unwrap();
    let t_before = b.ctx.translate(hwpt, Iova(IOVA + 0x3000)).unwrap();

    for (iova, len, mode) in [
        (IOVA, 0x4000, UnmapMode::Exact),
        (IOVA + 0x3000, 0x1000, UnmapMode::Cut),
        (IOVA + 0x2800 - 0x800, 0x2000, UnmapMode::Cut),
    ] {
        let e = b.ctx.unmap(b.ioas, Iova(iova), len, mode).unwrap_err();
        match e {
            Error::Pinned { range, access } => {
                assert_eq!(range, IovaRange::new(Iova(iova), len).unwrap());
                assert_eq!(access, a.id().0);
            }
            other => panic!("expected Pinned, got {other:?}"),
        }
    }
    let e = b.ctx.unmap_all(b.ioas).unwrap_err();
    assert!(matches!(e, Error::Pinned { range, .. } if range == IovaRange::FULL), "{e:?}");
    // Every refused unmap asked; each got the piece of the area holding the pin.
    assert_eq!(a.calls().len(), 4);
    assert!(a.calls().iter().all(|&(iova, len)| iova.0 <= IOVA + 0x3000 && IOVA + 0x3000 < iova.0 + len));

    // Nothing changed: areas, translation, DMA, and the area is whole (an exact unmap of it
    // would still see it uncut).
    assert_eq!(b.ctx.areas(b.ioas).unwrap(), before);
    assert_eq!(b.ctx.translate(hwpt, Iova(IOVA + 0x3000)).unwrap(), t_before);
    assert_eq!(b.dma_read(IOVA + 0x3000, 11).unwrap(), b"pinned page");
    assert_eq!(b.dma_read(IOVA, 10).unwrap(), b"other area");
    let mut buf = [0u8; 11];
    b.ctx.access_read(a.id(), Iova(IOVA + 0x3000), &mut buf).unwrap();
    assert_eq!(&buf, b"pinned page");
    // The area without pins unmaps; once unpinned, the other does too.
    b.ctx.unmap(b.ioas, Iova(IOVA), 0x2000, UnmapMode::Exact).unwrap();
    a.unpin_page(IOVA + 0x3000);
    b.ctx.unmap(b.ioas, Iova(IOVA + 0x2000), 0x2000, UnmapMode::Exact).unwrap();
    assert!(b.dma_read(IOVA + 0x3000, 4).is_err());
}

#[test]
fn replace_moves_the_access_once_it_unpinned() {
    let b = Bench::new();
    two_areas(&b);
    let second = b.ctx.alloc_ioas();
    b.ctx.map(second, Some(Iova(IOVA)), PhysAddr(12 * MB), 0x1000, Prot::READ).unwrap();
    b.write_ram(12 * MB, b"second");
    b.write_ram(4 * MB, b"first!");
    let a = b.access(b.ioas);
    let id = a.id();
    a.stubborn.store(true, Ordering::SeqCst);
    a.pin(IOVA, 0x1000, Prot::READ).unwrap();
    a.pin(IOVA + 0x2000, 0x1000, Prot::READ).unwrap();
    // Left pinned: refused, the access stays, pins and all.
    let e = b.ctx.access_replace_ioas(id, second).unwrap_err();
    assert!(matches!(e, Error::Pinned { access, .. } if access == id.0), "{e:?}");
    assert_eq!(a.calls(), vec![(Iova(IOVA), 0x3000)], "asked to unpin everything it pinned");
    assert_eq!(b.ctx.access_ioas(id).unwrap(), b.ioas);
    assert_eq!(b.ctx.access_pinned(id).unwrap(), 2);
    let mut buf = [0u8; 6];
    b.ctx.access_read(id, Iova(IOVA), &mut buf).unwrap();
    assert_eq!(&buf, b"first!");
    // A cooperative consumer unpins in the callback, and moves.
    a.stubborn.store(false, Ordering::SeqCst);
    b.ctx.access_replace_ioas(id, second).unwrap();
    assert_eq!(b.ctx.access_ioas(id).unwrap(), second);
    assert_eq!(b.ctx.access_pinned(id).unwrap(), 0);
    b.ctx.access_read(id, Iova(IOVA), &mut buf).unwrap();
    assert_eq!(&buf, b"second");
    // Read-only there.
    assert!(matches!(b.ctx.access_write(id, Iova(IOVA), b"x"), Err(Error::Denied { .. })));
    // Its pins are in the new IOAS now; the old one is free to unmap and destroy (the device
    // is detached first).
    a.pin(IOVA, 0x1000, Prot::READ).unwrap();
    b.ctx.unmap_all(b.ioas).unwrap();
    b.ctx.detach(b.dev, None).unwrap();
    b.ctx.destroy(b.ioas).unwrap();
    assert!(matches!(b.ctx.destroy(second), Err(Error::Busy { .. })));
    // Same IOAS: nothing to do.
    b.ctx.access_replace_ioas(id, second).unwrap();
    assert!(matches!(b.ctx.access_replace_ioas(id, b.ioas), Err(Error::NoSuchObject { .. })));
}

#[test]
fn destroy_rules() {
    let b = Bench::new();
    two_areas(&b);
    let spare = b.ctx.alloc_ioas();
    let a = b.access(spare);
    // An IOAS with an access cannot be destroyed.
    let e = b.ctx.destroy(spare).unwrap_err();
    assert!(matches!(e, Error::Busy { what: "IOAS", .. }), "{e:?}");
    b.ctx.destroy(a.id()).unwrap();
    b.ctx.destroy(spare).unwrap();
    assert!(matches!(b.ctx.access_ioas(a.id()), Err(Error::NoSuchObject { .. })));
    assert!(matches!(b.ctx.destroy(a.id()), Err(Error::NoSuchObject { .. })));

    let a = b.access(b.ioas);
    let id = a.id();
    a.stubborn.store(true, Ordering::SeqCst);
    a.pin(IOVA, 0x2000, Prot::READ).unwrap();
    // Left pinned after its callback: refused, the access and its pins stay.
    let e = b.ctx.destroy(id).unwrap_err();
    assert!(matches!(e, Error::Busy { what: "access", .. }), "{e:?}");
    assert_eq!(a.calls(), vec![(Iova(IOVA), 0x2000)]);
    assert_eq!(b.ctx.access_pinned(id).unwrap(), 2);
    assert!(matches!(b.ctx.unmap_all(b.ioas), Err(Error::Pinned { .. })));
    // Unpinned by the callback: destroyed, and the areas are free to go.
    a.stubborn.store(false, Ordering::SeqCst);
    b.ctx.destroy(id).unwrap();
    assert!(matches!(b.ctx.access_pin(id, Iova(IOVA), 0x1000, Prot::READ), Err(Error::NoSuchObject { .. })));
    assert_eq!(b.ctx.unmap_all(b.ioas).unwrap(), 0x4000);
}

#[test]
fn teardown_frees_everything_even_with_pins_left() {
    let b = Bench::new();
    two_areas(&b);
    let a = b.access(b.ioas);
    a.stubborn.store(true, Ordering::SeqCst);
    a.pin(IOVA, 0x4000, Prot::RW).unwrap();
    let spare = b.ctx.alloc_ioas();
    let _idle = b.access(spare);
    assert!(b.ctx.table_pages() > 0);
    b.ctx.teardown().unwrap();
    assert_eq!(b.ctx.table_pages(), 0);
    assert!(matches!(b.ctx.access_ioas(a.id()), Err(Error::NoSuchObject { .. })));
    assert_eq!(a.calls(), vec![(Iova(IOVA), 0x4000)], "teardown asked before dropping the pins");
}

/// A small xorshift, so the race test needs no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const SLOTS: u64 = 8;
const SLOT_PAGES: u64 = 4;
const RACE_PA: u64 = 32 * MB;

fn slot_range(s: u64) -> (u64, u64) {
    (IOVA + s * SLOT_PAGES * 4096, SLOT_PAGES * 4096)
}

#[test]
fn pins_race_unmaps_without_an_unmap_ever_taking_a_pinned_page() {
    let b = Arc::new(Bench::new());
    for s in 0..SLOTS {
        let (iova, len) = slot_range(s);
        b.ctx.map(b.ioas, Some(Iova(iova)), PhysAddr(RACE_PA + iova - IOVA), len, Prot::RW).unwrap();
    }
    let a = b.access(b.ioas);
    let stop = Arc::new(AtomicBool::new(false));
    let pins_ok = Arc::new(AtomicU64::new(0));
    let (done_tx, done_rx) = std::sync::mpsc::channel();

    let mut pinners = Vec::new();
    for t in 0..2u64 {
        let (a, stop, pins_ok) = (a.clone(), stop.clone(), pins_ok.clone());
        pinners.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1));
            while !stop.load(Ordering::SeqCst) {
                let page = IOVA + rng.below(SLOTS * SLOT_PAGES) * 4096;
                let pages = 1 + rng.below(2).min((SLOT_PAGES - 1) - (page - IOVA) / 4096 % SLOT_PAGES);
                match a.pin(page, pages * 4096, Prot::READ) {
                    Ok(pas) => {
                        // The page is where the slot maps it (slots are always mapped there).
                        for (i, pa) in pas.iter().enumerate() {
                            assert_eq!(pa.0, RACE_PA + page - IOVA + i as u64 * 4096);
                        }
                        pins_ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(Error::NotMapped { .. } | Error::InFlight { .. }) => {}
                    Err(e) => panic!("pin: {e}"),
                }
                if rng.below(3) == 0 {
                    let held: Vec<u64> = a.held.lock().unwrap().keys().copied().collect();
                    if !held.is_empty() {
                        a.unpin_page(held[rng.below(held.len() as u64) as usize]);
                    }
                }
            }
        }));
    }

    let unmapper = {
        let (b, a) = (b.clone(), a.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(0x1234_5678);
            let mut mapped = [true; SLOTS as usize];
            let (mut ok, mut refused) = (0u32, 0u32);
            for _ in 0..2000 {
                let s = rng.below(SLOTS);
                let (iova, len) = slot_range(s);
                if !mapped[s as usize] {
                    b.ctx.map(b.ioas, Some(Iova(iova)), PhysAddr(RACE_PA + iova - IOVA), len, Prot::RW).unwrap();
                    mapped[s as usize] = true;
                    continue;
                }
                a.stubborn.store(rng.below(2) == 0, Ordering::SeqCst);
                match b.ctx.unmap(b.ioas, Iova(iova), len, UnmapMode::Exact) {
                    Ok(_) => {
                        // No page of the range may be pinned: the consumer holds none there,
                        // and the framework agrees (a pin of it now fails).
                        let held = a.held.lock().unwrap();
                        assert!(
                            !held.keys().any(|&p| p >= iova && p < iova + len),
                            "an unmap of {iova:#x}+{len:#x} succeeded over pinned pages"
                        );
                        mapped[s as usize] = false;
                        ok += 1;
                    }
                    Err(Error::Pinned { .. }) => {
                        let areas = b.ctx.areas(b.ioas).unwrap();
                        assert!(areas.iter().any(|x| x.range == IovaRange::new(Iova(iova), len).unwrap()));
                        refused += 1;
                    }
                    Err(e) => panic!("unmap: {e}"),
                }
            }
            a.stubborn.store(false, Ordering::SeqCst);
            (ok, refused)
        })
    };
    std::thread::spawn(move || {
        let r = unmapper.join();
        let _ = done_tx.send(r);
    });
    let result = done_rx.recv_timeout(Duration::from_secs(120)).expect("no deadlock: the unmapper finishes");
    let (ok, refused) = result.expect("the unmapper's checks hold");
    stop.store(true, Ordering::SeqCst);
    for p in pinners {
        p.join().expect("the pinners' checks hold");
    }
    assert!(ok > 0 && refused > 0 && pins_ok.load(Ordering::SeqCst) > 0, "ok {ok} refused {refused}");
    // Every pin the consumer holds is one the framework counts, and unpinning them all leaves
    // nothing pinned.
    let held: Vec<(u64, u32)> = a.held.lock().unwrap().iter().map(|(&p, &n)| (p, n)).collect();
    let total: u64 = held.iter().map(|&(_, n)| u64::from(n)).sum();
    assert_eq!(b.ctx.access_pinned(a.id()).unwrap(), total);
    for (p, n) in held {
        for _ in 0..n {
            assert!(a.unpin_page(p));
        }
    }
    assert_eq!(b.ctx.access_pinned(a.id()).unwrap(), 0);
    b.ctx.unmap_all(b.ioas).unwrap();
}
