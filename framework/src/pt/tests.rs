//! The walker on a toy format over an in-memory table pool, with allocation failures.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::*;

/// Bit 0 P, bit 1 R, bit 2 W, bit 6 D, bit 7 PS (large leaf), bits 51:12 address.
#[derive(Clone, Copy)]
struct Toy;

const P: u64 = 1;
const R: u64 = 2;
const W: u64 = 4;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;

impl Format for Toy {
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    fn present(&self, e: u64) -> bool {
        e & P != 0
    }
    fn is_leaf(&self, e: u64, level: u32) -> bool {
        // As in x86-64 paging, where bit 7 of a 4 KiB leaf is PAT: never set there.
        assert!(level > 0 || e & PS == 0, "PS in a 4 KiB leaf: {e:#x}");
        level == 0 || e & PS != 0
    }
    fn table(&self, table: u64) -> u64 {
        table | P
    }
    fn leaf_attrs(&self, prot: Prot) -> u64 {
        P | if prot.read() { R } else { 0 } | if prot.write() { W } else { 0 }
    }
    fn leaf(&self, attrs: u64, pa: u64, level: u32) -> u64 {
        attrs | pa | if level > 0 { PS } else { 0 }
    }
    fn attrs_of(&self, e: u64, _level: u32) -> u64 {
        e & !(Self::ADDR | PS)
    }
    fn leaf_addr(&self, e: u64, level: u32) -> u64 {
        e & Self::ADDR & !(span(level) - 1)
    }
    fn leaf_prot(&self, e: u64) -> Prot {
        let r = if e & R != 0 { Prot::READ } else { Prot::NONE };
        r | if e & W != 0 { Prot::WRITE } else { Prot::NONE }
    }
    fn dirty_bits(&self) -> u64 {
        D
    }
}

#[derive(Default)]
struct Pool {
    pages: BTreeMap<u64, Box<[u64; ENTRIES]>>,
    next: u64,
    allocs: u64,
    fail_at: Option<u64>,
}

#[derive(Default)]
struct Mem(RefCell<Pool>);

impl Mem {
    fn live(&self) -> usize {
        self.0.borrow().pages.len()
    }
    fn fail_at(&self, n: Option<u64>) {
        let mut p = self.0.borrow_mut();
        p.fail_at = n.map(|n| p.allocs + n);
    }
    fn set(&self, pa: u64, bits: u64) {
        let v = self.rd(pa).unwrap();
        self.wr(pa, v | bits).unwrap();
    }
}

impl Memory for Mem {
    fn rd(&self, pa: u64) -> Result<u64, PluginError> {
        let p = self.0.borrow();
        let page = p.pages.get(&(pa & !0xfff)).ok_or_else(|| PluginError::invalid("not a table page"))?;
        Ok(page[(pa as usize & 0xfff) / 8])
    }
    fn wr(&self, pa: u64, v: u64) -> Result<(), PluginError> {
        let mut p = self.0.borrow_mut();
        let page = p.pages.get_mut(&(pa & !0xfff)).ok_or_else(|| PluginError::invalid("not a table page"))?;
        page[(pa as usize & 0xfff) / 8] = v;
        Ok(())
    }
    fn and(&self, pa: u64, mask: u64) -> Result<u64, PluginError> {
        let v = self.rd(pa)?;
        self.wr(pa, v & mask)?;
        Ok(v)
    }
    fn read_table(&self, table: u64, buf: &mut [u8; 4096]) -> Result<(), PluginError> {
        for (i, c) in buf.chunks_exact_mut(8).enumerate() {
            c.copy_from_slice(&self.rd(table + i as u64 * 8)?.to_le_bytes());
        }
        Ok(())
    }
    fn alloc(&self) -> Result<u64, PluginError> {
        let mut p = self.0.borrow_mut();
        p.allocs += 1;
        if p.fail_at == Some(p.allocs) {
            return Err(PluginError::new(ErrorCode::NO_MEMORY, "injected"));
        }
        p.next += 1;
        let pa = 0x1_0000_0000 + p.next * 4096;
        p.pages.insert(pa, Box::new([0; ENTRIES]));
        Ok(pa)
    }
    fn free(&self, table: u64) {
        assert!(self.0.borrow_mut().pages.remove(&table).is_some(), "double free of {table:#x}");
    }
}

const MB: u64 = 1 << 20;
const GB: u64 = 1 << 30;

fn table(mem: &Mem, levels: u32, ias: u8) -> PageTable<Toy> {
    PageTable::new(mem, Geometry { levels, sizes: PageSizes::SZ_4K_2M_1G, ias }, Toy).unwrap()
}

#[test]
fn largest_pages_split_unmap_and_free() {
    let mem = Mem::default();
    let t = table(&mem, 4, 48);
    // 1 GiB + 2 MiB + 4 KiB, each aligned to itself.
    t.map(&mem, GB, 4 * GB, GB + 2 * MB + 4096, Prot::RW).unwrap();
    assert_eq!(t.translate(&mem, GB + 0x1234).unwrap(), Some((4 * GB + 0x1234, Prot::RW, GB)));
    assert_eq!(t.translate(&mem, 2 * GB + 0x1234).unwrap().unwrap().2, 2 * MB);
    assert_eq!(t.translate(&mem, 2 * GB + 2 * MB).unwrap().unwrap().2, 4096);
    let page = Translation { pa: PhysAddr(5 * GB + 2 * MB + 0xff8), prot: Prot::RW, page_size: 4096 };
    assert_eq!(t.translation(&mem, 2 * GB + 2 * MB + 0xff8), Some(page));
    assert_eq!(t.translation(&mem, 2 * GB + 2 * MB + 4096), None, "unmapped");
    assert_eq!(t.translation(&mem, 1 << 48), None, "outside the aperture");
    assert_eq!(t.count_pages(&mem).unwrap(), 4);
    let e = t.map(&mem, 2 * GB + 2 * MB, 0, 4096, Prot::READ).unwrap_err();
    assert_eq!(e.code, ErrorCode::EXISTS);
    // A 4 KiB hole in the 1 GiB page: split to 2 MiB, then 4 KiB, around it.
    let u = t.unmap(&mem, GB + 3 * MB, 4096).unwrap();
    assert_eq!((u.bytes, u.flush, u.freed.len()), (4096, Some((GB + 3 * MB, 4096)), 0));
    u.freed.release(&mem);
    assert_eq!(t.translate(&mem, GB + 3 * MB).unwrap(), None);
    assert_eq!(t.translate(&mem, GB + 3 * MB + 4096).unwrap(), Some((4 * GB + 3 * MB + 4096, Prot::RW, 4096)));
    assert_eq!(t.translate(&mem, GB + 5 * MB).unwrap().unwrap().2, 2 * MB);
    // Splitting never changes a translation and is idempotent at a leaf boundary.
    t.split(&mem, GB + 8 * MB + 4096).unwrap();
    let pages = t.count_pages(&mem).unwrap();
    t.split(&mem, GB + 8 * MB + 4096).unwrap();
    assert_eq!(t.count_pages(&mem).unwrap(), pages);
    assert_eq!(t.translate(&mem, GB + 8 * MB + 4096).unwrap(), Some((4 * GB + 8 * MB + 4096, Prot::RW, 4096)));
    // Nothing mapped: no flush.
    let u = t.unmap(&mem, 8 * GB, 4096).unwrap();
    assert_eq!((u.bytes, u.flush, u.freed.is_empty()), (0, None, true));
    u.freed.release(&mem);
    let live = mem.live();
    let u = t.unmap(&mem, 0, 1 << 40).unwrap();
    assert_eq!(u.bytes, GB + 2 * MB + 4096 - 4096);
    assert_eq!(t.count_pages(&mem).unwrap(), 1, "empty tables are unlinked");
    // Unlinked, not freed: the unit may reach them until the backend's invalidation is done.
    assert_eq!(mem.live(), live, "nothing is freed before the invalidation");
    assert_eq!((u.freed.len(), u.freed.is_empty()), (live - 1, false));
    u.freed.release(&mem);
    assert_eq!(mem.live(), 1, "released after it");
    t.destroy(&mem);
    assert_eq!(mem.live(), 0);
}

#[test]
fn every_allocation_failure_changes_nothing() {
    for n in 1..=12 {
        let mem = Mem::default();
        let t = table(&mem, 4, 48);
        t.map(&mem, 0, 0, 4 * MB, Prot::RW).unwrap();
        let before = (mem.live(), t.translate(&mem, MB).unwrap());
        mem.fail_at(Some(n));
        // Unaligned PA: 4 KiB leaves under new tables on both sides of a 512 GiB boundary.
        let r = t.map(&mem, (512 * GB) - 8 * MB, 0x1000, 16 * MB, Prot::READ);
        if r.is_ok() {
            // 1 + 4 tables below 512 GiB, 2 + 4 above.
            assert_eq!(n, 12, "map needs 11 new tables");
            continue;
        }
        assert_eq!(r.unwrap_err().code, ErrorCode::NO_MEMORY);
        assert_eq!((mem.live(), t.translate(&mem, MB).unwrap()), before, "allocation {n}");
        assert_eq!(t.translate(&mem, 512 * GB - 8 * MB).unwrap(), None);
        // An unmap that must split a 2 MiB leaf fails whole too.
        mem.fail_at(Some(1));
        assert_eq!(t.unmap(&mem, MB, 4096).unwrap_err().code, ErrorCode::NO_MEMORY);
        assert_eq!((mem.live(), t.translate(&mem, MB).unwrap()), before);
        mem.fail_at(None);
        t.destroy(&mem);
        assert_eq!(mem.live(), 0);
    }
}

#[test]
fn dirty_bits_are_read_and_cleared_per_page() {
    let mem = Mem::default();
    let t = table(&mem, 3, 39);
    t.map(&mem, 0, 0, 4 * MB + 8192, Prot::RW).unwrap();
    let two_m = t.walk(&mem, 2 * MB).unwrap().unwrap();
    let small = t.walk(&mem, 4 * MB + 4096).unwrap().unwrap();
    mem.set(two_m.entry_pa, D);
    mem.set(small.entry_pa, D);
    let mut bm = [0u64; 64 * 17];
    let range = t.read_and_clear_dirty(&mem, 0, 4 * MB + 8192, 12, &mut bm, true).unwrap();
    assert_eq!(range, None, "kept: nothing to flush");
    assert!(bm[8..16].iter().all(|w| *w == u64::MAX) && bm[16] == 2 && bm[..8].iter().all(|w| *w == 0));
    let mut bm2 = [0u64; 64 * 17];
    let range = t.read_and_clear_dirty(&mem, 0, 4 * MB + 8192, 12, &mut bm2, false).unwrap();
    assert_eq!((range, bm2), (Some((0, 4 * MB + 8192)), bm));
    assert_eq!(mem.rd(two_m.entry_pa).unwrap() & D, 0);
    let mut bm3 = [0u64; 64 * 17];
    assert_eq!(t.read_and_clear_dirty(&mem, 0, 4 * MB + 8192, 12, &mut bm3, false).unwrap(), None);
    assert_eq!(t.read_and_clear_dirty(&mem, 0, 4096, 11, &mut bm3, false).unwrap_err().code, ErrorCode::INVALID);
    let invalid = |iova: u64, len: u64, shift: u8, bm: &mut [u64]| {
        t.read_and_clear_dirty(&mem, iova, len, shift, bm, false).unwrap_err().code == ErrorCode::INVALID
    };
    assert!(invalid(0x1000, 2 * MB, 21, &mut bm3), "IOVA not aligned to the page size");
    assert!(invalid(0, 0x3000, 13, &mut bm3), "length not a whole number of pages");
    assert!(invalid(0, 4 * MB + 8192, 12, &mut [0u64; 16]), "1,026 pages, a 1,024-bit bitmap");
    t.read_and_clear_dirty(&mem, 0, 4 * MB, 12, &mut [0u64; 16], false).unwrap();
    // Beyond the 39-bit aperture.
    assert_eq!(t.map(&mem, 1 << 39, 0, 4096, Prot::RW).unwrap_err().code, ErrorCode::OUT_OF_RANGE);
    assert_eq!(t.walk(&mem, 1 << 39).unwrap(), None);
    t.destroy(&mem);
    assert_eq!(mem.live(), 0);
}

#[test]
fn ranges_are_checked_before_anything_is_touched() {
    let mem = Mem::default();
    let t = table(&mem, 4, 48);
    let bad = |iova: u64, len: u64| t.map(&mem, iova, 0x10_0000, len, Prot::RW).unwrap_err().code;
    assert_eq!(bad(0x1800, 0x1000), ErrorCode::INVALID, "IOVA not 4 KiB aligned");
    assert_eq!(bad(0x1000, 0x1800), ErrorCode::INVALID, "length not 4 KiB granular");
    assert_eq!(bad(0x1000, 0), ErrorCode::INVALID, "empty");
    assert_eq!(bad(!0xfff, 0x2000), ErrorCode::INVALID, "wraps");
    assert_eq!(bad((1 << 48) - 0x1000, 0x2000), ErrorCode::OUT_OF_RANGE, "ends beyond 48 bits");
    assert_eq!(mem.live(), 1, "only the root");
    // The last page of the aperture is the caller's.
    t.map(&mem, (1 << 48) - 0x1000, 0x10_0000, 0x1000, Prot::READ).unwrap();
    assert_eq!(t.translate(&mem, (1 << 48) - 8).unwrap().map(|x| x.0), Some(0x10_0ff8));
    assert_eq!(t.translate(&mem, 1 << 48).unwrap(), None);
    // Output addresses: 4 KiB aligned, up to the format's last page.
    let top = Toy::ADDR;
    assert_eq!(t.map(&mem, 0x2000, 0x1_0800, 0x1000, Prot::RW).unwrap_err().code, ErrorCode::INVALID);
    assert_eq!(t.map(&mem, 0x2000, top, 0x2000, Prot::RW).unwrap_err().code, ErrorCode::INVALID);
    t.map(&mem, 0x2000, top, 0x1000, Prot::RW).unwrap();
    assert_eq!(t.translate(&mem, 0x2008).unwrap().map(|x| x.0), Some(top + 8));
    // A 64-bit input space has no "beyond".
    let wide = table(&mem, 4, 64);
    assert_eq!(wide.translate(&mem, 1 << 63).unwrap(), None);
    wide.map(&mem, 0x1000, 0x1000, 0x1000, Prot::READ).unwrap();
}

#[test]
fn a_failed_map_clears_the_leaves_it_wrote_into_existing_tables() {
    let mem = Mem::default();
    let t = table(&mem, 4, 48);
    // A 4 KiB page: tables down to level 0 exist for [0, 2 MiB).
    t.map(&mem, 0x1000, 0x1000, 0x1000, Prot::RW).unwrap();
    let live = mem.live();
    // The rest of that 2 MiB (existing table, no allocation), then past it, where the next
    // level-0 table cannot be allocated.
    mem.fail_at(Some(1));
    let e = t.map(&mem, 0x2000, 0x10_0000, 2 * MB, Prot::RW).unwrap_err();
    assert_eq!(e.code, ErrorCode::NO_MEMORY);
    mem.fail_at(None);
    for iova in [0x2000, 0x10_0000, 2 * MB - 0x1000] {
        assert_eq!(t.translate(&mem, iova).unwrap(), None, "{iova:#x} was rolled back");
    }
    assert_eq!(t.translate(&mem, 0x1000).unwrap().map(|x| x.0), Some(0x1000), "what was there stays");
    assert_eq!(mem.live(), live);
}

#[test]
fn large_leaves_split_only_where_a_range_cuts_them() {
    let mem = Mem::default();
    let t = table(&mem, 4, 48);
    // A 2 MiB leaf at IOVA 0 and a 1 GiB leaf at 1 GiB.
    t.map(&mem, 0, 0x4000_0000, 2 * MB, Prot::RW).unwrap();
    t.map(&mem, GB, 2 * GB, GB, Prot::READ).unwrap();
    let pages = t.count_pages(&mem).unwrap();
    // At a leaf's own boundary nothing is split, and nothing needs allocating.
    mem.fail_at(Some(1));
    t.split(&mem, GB).unwrap();
    t.split(&mem, 2 * MB).unwrap();
    assert_eq!(t.count_pages(&mem).unwrap(), pages);
    let u = t.unmap(&mem, GB, GB).unwrap();
    assert_eq!((u.bytes, u.flush), (GB, Some((GB, GB))));
    u.freed.release(&mem);
    mem.fail_at(None);
    // The first page of the aperture, cut out of its 2 MiB leaf: the rest stays.
    let u = t.unmap(&mem, 0, 0x1000).unwrap();
    assert_eq!(u.bytes, 0x1000);
    u.freed.release(&mem);
    assert_eq!(t.translate(&mem, 0).unwrap(), None);
    assert_eq!(t.translate(&mem, 0x1008).unwrap(), Some((0x4000_1008, Prot::RW, 0x1000)));
    assert_eq!(t.translate(&mem, 2 * MB - 8).unwrap(), Some((0x4000_0000 + 2 * MB - 8, Prot::RW, 0x1000)));
}

#[test]
fn a_split_that_fails_half_way_puts_the_large_leaf_back() {
    let mem = Mem::default();
    let t = table(&mem, 4, 48);
    t.map(&mem, GB, 2 * GB, GB, Prot::RW).unwrap();
    let live = mem.live();
    // 1 GiB -> 2 MiB takes one table, 2 MiB -> 4 KiB the second, which fails.
    mem.fail_at(Some(2));
    assert_eq!(t.split(&mem, GB + 3 * MB + 0x1000).unwrap_err().code, ErrorCode::NO_MEMORY);
    assert_eq!(mem.live(), live, "the first table is freed");
    assert_eq!(t.translate(&mem, GB + 3 * MB).unwrap(), Some((2 * GB + 3 * MB, Prot::RW, GB)));
    mem.fail_at(Some(2));
    assert_eq!(t.unmap(&mem, GB + 3 * MB, 0x1000).unwrap_err().code, ErrorCode::NO_MEMORY);
    assert_eq!(mem.live(), live);
    assert_eq!(t.translate(&mem, GB + 3 * MB).unwrap().map(|x| x.2), Some(GB));
}
