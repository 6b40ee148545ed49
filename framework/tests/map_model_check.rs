//! Property test: random map/unmap sequences through the context and the mock backend agree,
//! page by page, with a plain reference model; and nothing leaks.

mod common;

use std::collections::BTreeMap;

use common::Rig;
use ioasis::{Error, Iova, PhysAddr, Prot, Target, UnmapMode};
use proptest::prelude::*;

/// The window the ops play in: 8 MiB of IOVA, so 2 MiB pages occur.
const PAGES: u64 = 2048;

#[derive(Clone, Debug)]
enum Op {
    Map { page: u64, pages: u64, pa_page: u64, big: bool },
    Unmap { page: u64, pages: u64, cut: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..PAGES, 1..600u64, 0..4096u64, any::<bool>()).prop_map(|(page, pages, pa_page, big)| Op::Map {
            page,
            pages,
            pa_page,
            big
        }),
        (0..PAGES, 1..800u64, any::<bool>()).prop_map(|(page, pages, cut)| Op::Unmap { page, pages, cut }),
    ]
}

/// Reference: areas as (first page, pages, first physical page).
#[derive(Default)]
struct Reference {
    areas: BTreeMap<u64, (u64, u64)>,
}

impl Reference {
    fn overlapping(&self, first: u64, last: u64) -> Vec<(u64, u64, u64)> {
        self.areas.iter().filter(|(s, (n, _))| **s <= last && *s + n > first).map(|(s, (n, p))| (*s, *n, *p)).collect()
    }

    fn pa_of(&self, page: u64) -> Option<u64> {
        self.areas.range(..=page).next_back().filter(|(s, (n, _))| page < *s + n).map(|(s, (_, p))| p + (page - s))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_ops_match_the_reference(ops in proptest::collection::vec(op(), 1..24)) {
        let rig = Rig::new();
        let dev = rig.paging_device(1, 0, &[]);
        let ioas = rig.ctx.alloc_ioas();
        rig.ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
        let hwpt = rig.ctx.attached_hwpt(dev, None).unwrap().unwrap();
        let baseline = rig.ctx.table_pages();
        let mut reference = Reference::default();
        for op in &ops {
            match *op {
                Op::Map { page, pages, pa_page, big } => {
                    // `big`: whole 2 MiB frames on both sides, so the backend uses 2 MiB pages.
                    let (page, pages, pa_page) =
                        if big { (page & !511, (pages % 3 + 1) * 512, pa_page & !511) } else { (page, pages, pa_page) };
                    let pages = pages.min(PAGES - page);
                    let r = rig.ctx.map(ioas, Some(Iova(page << 12)), PhysAddr(0x1000_0000 + (pa_page << 12)), pages << 12, Prot::RW);
                    let clash = !reference.overlapping(page, page + pages - 1).is_empty();
                    match r {
                        Ok(_) => {
                            prop_assert!(!clash, "map over an existing area succeeded: {op:?}");
                            reference.areas.insert(page, (pages, pa_page));
                        }
                        Err(Error::Exists { .. }) => prop_assert!(clash, "spurious overlap: {op:?}"),
                        Err(e) => prop_assert!(false, "{op:?}: {e}"),
                    }
                }
                Op::Unmap { page, pages, cut } => {
                    let pages = pages.min(PAGES - page);
                    let (first, last) = (page, page + pages - 1);
                    let hit = reference.overlapping(first, last);
                    let mode = if cut { UnmapMode::Cut } else { UnmapMode::Exact };
                    let r = rig.ctx.unmap(ioas, Iova(page << 12), pages << 12, mode);
                    let cuts = hit.iter().any(|(s, n, _)| *s < first || s + n - 1 > last);
                    match r {
                        Err(Error::NotMapped { .. }) => prop_assert!(hit.is_empty()),
                        Err(Error::CutsArea { .. }) => prop_assert!(!cut && cuts),
                        Err(e) => prop_assert!(false, "{op:?}: {e}"),
                        Ok(bytes) => {
                            prop_assert!(!hit.is_empty() && (cut || !cuts), "{op:?}");
                            let mut gone = 0;
                            for (s, n, p) in hit {
                                reference.areas.remove(&s);
                                if s < first {
                                    reference.areas.insert(s, (first - s, p));
                                }
                                if s + n - 1 > last {
                                    reference.areas.insert(last + 1, (s + n - 1 - last, p + (last + 1 - s)));
                                }
                                gone += (s + n - 1).min(last) + 1 - s.max(first);
                            }
                            prop_assert_eq!(bytes, gone << 12);
                        }
                    }
                }
            }
        }
        for page in 0..PAGES {
            let t = rig.ctx.translate(hwpt, Iova(page << 12)).unwrap();
            let want = reference.pa_of(page).map(|p| 0x1000_0000 + (p << 12));
            prop_assert_eq!(t.map(|t| t.pa.0), want, "page {:#x}", page);
        }
        rig.ctx.unmap_all(ioas).unwrap();
        prop_assert_eq!(rig.ctx.table_pages(), baseline, "empty tables were not all freed");
    }
}
