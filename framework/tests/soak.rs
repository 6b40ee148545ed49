//! Soak: threads mapping, unmapping, attaching (and replacing, and detaching), DMA-ing and
//! creating and tearing down whole IOASes at once, with the invariants checked all along:
//!
//! - no wrong translation: a DMA write that succeeds lands at the physical address that one
//!   of the IOASes the device may be attached to maps its IOVA to, and nowhere else;
//! - no leaked table page: after the teardown, none is allocated;
//! - no deadlock: the operations keep completing (a watchdog fails the run after 30 s without
//!   any).
//!
//! The short run (2 s) is part of the tests; the long one is
//! `IOASIS_SOAK_SECS=600 cargo test --release -p ioasis --test soak -- --nocapture`, which
//! prints the figures the README quotes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Rig, MB};
use ioasis::{IoasId, Iova, PhysAddr, Prot, Target, UnmapMode};

/// Devices that move between the two shared IOASes (00:01.0 to 00:04.0).
const DEVICES: u8 = 4;
/// The device of the churn thread, which has IOASes of its own.
const CHURN_DEV: u8 = 5;
/// Slots per IOAS: 2 MiB each, so that aligned maps use large pages.
const SLOTS: u64 = 32;
const SLOT: u64 = 2 * MB;
/// Where each shared IOAS's slots are backed: IOVA `x` of IOAS `i` is `BASE[i] + x`.
const BASE: [u64; 2] = [0x1000_0000, 0x2000_0000];
/// The churn IOASes' backing.
const CHURN_BASE: u64 = 0x3000_0000;
/// DMA threads; each writes only at its own offset of a page, so its tags are never
/// overwritten by another.
const DMA_THREADS: u64 = 2;

#[derive(Default)]
struct Counts {
    maps: AtomicU64,
    unmaps: AtomicU64,
    attaches: AtomicU64,
    dma_ok: AtomicU64,
    dma_faults: AtomicU64,
    churns: AtomicU64,
}

impl Counts {
    fn total(&self) -> u64 {
        [&self.maps, &self.unmaps, &self.attaches, &self.dma_ok, &self.dma_faults, &self.churns]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// A small xorshift generator: each thread has its own, seeded from its index.
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

fn secs() -> u64 {
    std::env::var("IOASIS_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2)
}

#[test]
fn maps_attaches_dma_and_teardown_at_once_keep_every_invariant() {
    let rig = Rig::new();
    let devices: Vec<_> = (1..=DEVICES).map(|d| rig.paging_device(d, 0, &[])).collect();
    let churn_dev = rig.paging_device(CHURN_DEV, 0, &[]);
    let ioases = [rig.ctx.alloc_ioas(), rig.ctx.alloc_ioas()];
    for (i, d) in devices.iter().enumerate() {
        rig.ctx.attach(*d, None, Target::Ioas(ioases[i % 2])).unwrap();
    }
    let stop = AtomicBool::new(false);
    let counts = Counts::default();
    let violations = Mutex::new(Vec::<String>::new());
    let violation = |v: String| {
        let mut all = violations.lock().unwrap();
        if all.len() < 20 {
            all.push(v);
        }
    };
    let started = Instant::now();
    let run_for = Duration::from_secs(secs());

    std::thread::scope(|s| {
        // Mappers: each owns half the slots of both IOASes, so its maps and unmaps never race
        // each other's; every call must succeed.
        for m in 0..2u64 {
            let (rig, stop, counts, violation) = (&rig, &stop, &counts, &violation);
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9 + m);
                let mut mapped = [[false; SLOTS as usize]; 2];
                while !stop.load(Ordering::Relaxed) {
                    let i = rng.below(2) as usize;
                    let slot = rng.below(SLOTS / 2) * 2 + m;
                    let iova = slot * SLOT;
                    // Sometimes the whole 2 MiB (a large page), sometimes 4 KiB pages of it.
                    let len = if rng.below(2) == 0 { SLOT } else { SLOT / 2 };
                    let r = if mapped[i][slot as usize] {
                        counts.unmaps.fetch_add(1, Ordering::Relaxed);
                        rig.ctx.unmap(ioases[i], Iova(iova), SLOT, UnmapMode::Cut).map(|_| ())
                    } else {
                        counts.maps.fetch_add(1, Ordering::Relaxed);
                        let pa = BASE[i] + iova;
                        rig.ctx.map(ioases[i], Some(Iova(iova)), PhysAddr(pa), len, Prot::RW).map(|_| ())
                    };
                    match r {
                        Ok(()) => mapped[i][slot as usize] ^= true,
                        Err(e) => violation(format!("mapper {m}: IOAS {i} slot {slot}: {e}")),
                    }
                }
            });
        }
        // The attacher: moves devices between the IOASes (a replace), or detaches them.
        {
            let (rig, stop, counts, devices, violation) = (&rig, &stop, &counts, &devices, &violation);
            s.spawn(move || {
                let mut rng = Rng(0x51ed_270b);
                // Only this thread changes the attachments: it knows which devices have one.
                let mut attached = [true; DEVICES as usize];
                while !stop.load(Ordering::Relaxed) {
                    let i = rng.below(u64::from(DEVICES)) as usize;
                    let d = devices[i];
                    let r = match (rng.below(5), attached[i]) {
                        (0, true) => rig.ctx.detach(d, None).map(|()| attached[i] = false),
                        (0, false) => Ok(()),
                        (n, true) => rig.ctx.replace(d, None, Target::Ioas(ioases[(n % 2) as usize])),
                        (n, false) => {
                            rig.ctx.attach(d, None, Target::Ioas(ioases[(n % 2) as usize])).map(|()| attached[i] = true)
                        }
                    };
                    counts.attaches.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = r {
                        violation(format!("attacher: {e}"));
                    }
                }
            });
        }
        // DMA: a unique tag at the thread's own offset; where it lands is checked.
        for t in 0..DMA_THREADS {
            let (rig, stop, counts, violation) = (&rig, &stop, &counts, &violation);
            s.spawn(move || {
                let mut rng = Rng(0x2545_f491 + t);
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let dev = 1 + rng.below(u64::from(DEVICES)) as u8;
                    let slot = rng.below(SLOTS);
                    let page = rng.below(SLOT / 4096);
                    let iova = slot * SLOT + page * 4096 + t * 64;
                    n += 1;
                    let tag = (t << 56 | n).to_le_bytes();
                    match rig.dma_write(0, dev, None, iova, &tag) {
                        Err(_) => {
                            counts.dma_faults.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(()) => {
                            counts.dma_ok.fetch_add(1, Ordering::Relaxed);
                            if !BASE.iter().any(|b| rig.ram(b + iova, 8) == tag) {
                                violation(format!(
                                    "DMA of device {dev} at {iova:#x} succeeded but landed at neither IOAS's page"
                                ));
                            }
                        }
                    }
                }
            });
        }
        // Churn: whole IOASes made, used and destroyed.
        {
            let (rig, stop, counts, violation) = (&rig, &stop, &counts, &violation);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let r = (|| -> Result<(), String> {
                        let ioas: IoasId = rig.ctx.alloc_ioas();
                        let e = |e: ioasis::Error| e.to_string();
                        rig.ctx.map(ioas, Some(Iova(0)), PhysAddr(CHURN_BASE), 4 * MB, Prot::RW).map_err(e)?;
                        rig.ctx.attach(churn_dev, None, Target::Ioas(ioas)).map_err(e)?;
                        let tag = n.to_le_bytes();
                        rig.dma_write(0, CHURN_DEV, None, 0x1000, &tag).map_err(|e| e.to_string())?;
                        if rig.ram(CHURN_BASE + 0x1000, 8) != tag {
                            return Err("the churn device's DMA landed elsewhere".into());
                        }
                        rig.ctx.detach(churn_dev, None).map_err(e)?;
                        rig.ctx.unmap(ioas, Iova(0), 4 * MB, UnmapMode::Exact).map_err(e)?;
                        rig.ctx.destroy(ioas).map_err(e)?;
                        if rig.dma_write(0, CHURN_DEV, None, 0x1000, b"x").is_ok() {
                            return Err("DMA after detach and destroy succeeded".into());
                        }
                        Ok(())
                    })();
                    counts.churns.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = r {
                        violation(format!("churn {n}: {e}"));
                    }
                }
            });
        }
        // Watchdog and clock: operations must keep completing.
        let mut last = (counts.total(), Instant::now());
        while started.elapsed() < run_for {
            std::thread::sleep(Duration::from_millis(50));
            let now = counts.total();
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(30) {
                eprintln!("soak: no operation completed for 30 s: a deadlock");
                std::process::exit(101);
            }
        }
        stop.store(true, Ordering::Relaxed);
    });

    let elapsed = started.elapsed().as_secs_f64();
    let v = violations.lock().unwrap();
    assert!(v.is_empty(), "{} violation(s), the first ones:\n{}", v.len(), v.join("\n"));
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "soak: {elapsed:.1} s: {} maps, {} unmaps, {} attaches/replaces/detaches, {} DMAs landed, {} faulted, {} IOAS \
         lifecycles; {:.0} operations/s",
        c(&counts.maps),
        c(&counts.unmaps),
        c(&counts.attaches),
        c(&counts.dma_ok),
        c(&counts.dma_faults),
        c(&counts.churns),
        counts.total() as f64 / elapsed
    );
    assert!(c(&counts.dma_ok) > 0 && c(&counts.dma_faults) > 0, "both outcomes were exercised");
    assert!(c(&counts.churns) > 0 && c(&counts.attaches) > 0);
    rig.ctx.teardown().unwrap();
    assert_eq!(rig.ctx.table_pages(), 0, "no table page left");
    let pool_in_use = ioasis::platform::Platform::table_pages(rig.machine.as_ref());
    assert_eq!(pool_in_use, 0, "the machine's pool has every page back");
}
