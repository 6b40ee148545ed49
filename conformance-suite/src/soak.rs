//! Soak: threads mapping, unmapping, attaching (and replacing, and detaching), DMA-ing and
//! creating and tearing down whole IOASes at once on one unit of a plugin, with the
//! invariants checked all along:
//!
//! - no wrong translation: a DMA write that succeeds lands at the physical address that one
//!   of the IOASes the device may be attached to maps its IOVA to, and nowhere else (a stale
//!   IOTLB entry under a reused tag, a table page freed before the invalidation, a torn entry
//!   all land it elsewhere);
//! - no leaked table page: after the teardown, none is allocated;
//! - no deadlock: the operations keep completing. A watchdog ends the process (status 101)
//!   after 30 s without any: deadlocked threads cannot be given back.
//!
//! `ioasis soak --seconds 600` is the long run; the tests run it for 2 s on each bundled plugin.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ioasis::loader::Plugin;
use ioasis::platform::ModelFactory;
use ioasis::{IntentItem, IoasId, Iova, PhysAddr, Prot, Target, UnmapMode};

use crate::bench::Simulated;
use crate::cases::Rng;
use crate::rig::Rig;
use crate::Options;

const MB: u64 = 1 << 20;

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

/// What a soak did.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    /// The plugin.
    pub plugin: String,
    /// How long it ran.
    pub seconds: f64,
    /// Maps and unmaps.
    pub maps: u64,
    /// Unmaps.
    pub unmaps: u64,
    /// Attaches, replaces and detaches.
    pub attaches: u64,
    /// DMA writes that landed (where they should have: checked).
    pub dma_landed: u64,
    /// DMA writes that faulted.
    pub dma_faulted: u64,
    /// Whole IOAS lifecycles (alloc, map, attach, DMA, detach, unmap, destroy).
    pub lifecycles: u64,
    /// Broken invariants (the first 20).
    pub violations: Vec<String>,
}

impl SoakReport {
    /// Operations of every kind per second.
    pub fn ops_per_second(&self) -> f64 {
        (self.maps + self.unmaps + self.attaches + self.dma_landed + self.dma_faulted + self.lifecycles) as f64
            / self.seconds.max(1e-9)
    }

    /// One line of figures.
    pub fn summary(&self) -> String {
        format!(
            "{}: {:.1} s: {} maps, {} unmaps, {} attaches/replaces/detaches, {} DMAs landed, {} faulted, {} IOAS \
             lifecycles; {:.0} operations/s; {} violation(s)",
            self.plugin,
            self.seconds,
            self.maps,
            self.unmaps,
            self.attaches,
            self.dma_landed,
            self.dma_faulted,
            self.lifecycles,
            self.ops_per_second(),
            self.violations.len()
        )
    }
}

/// Soaks one simulated unit of `plugin` (its model from `factory`, configured by `opts`) for
/// `duration`. `Err` when the unit cannot be set up or lacks untagged DMA.
pub fn soak(
    plugin: &Arc<Plugin>,
    factory: &dyn ModelFactory,
    opts: &Options,
    duration: Duration,
) -> Result<SoakReport, String> {
    let bench = Simulated::new(factory, opts)?;
    let rig = Rig::new(plugin, Box::new(bench), opts)?;
    let mut report = run(&rig, duration)?;
    report.plugin = plugin.name.clone();
    Ok(report)
}

fn run(rig: &Rig, run_for: Duration) -> Result<SoakReport, String> {
    let devices: Vec<_> = (1..=DEVICES).map(|d| rig.device(d, &[IntentItem::UntaggedDma])).collect::<Result<_, _>>()?;
    let churn_dev = rig.device(CHURN_DEV, &[IntentItem::UntaggedDma])?;
    let ioases = [rig.ctx.alloc_ioas(), rig.ctx.alloc_ioas()];
    for (i, d) in devices.iter().enumerate() {
        rig.ctx.attach(*d, None, Target::Ioas(ioases[i % 2])).map_err(|e| e.to_string())?;
    }
    let stop = AtomicBool::new(false);
    let counts = Counts::default();
    let violations = Mutex::new(Vec::<String>::new());
    let violation = |v: String| {
        let mut all = violations.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() < 20 {
            all.push(v);
        }
    };
    let started = Instant::now();
    std::thread::scope(|s| {
        // Mappers: each owns half the slots of both IOASes, so its maps and unmaps never race
        // each other's; every call must succeed.
        for m in 0..2u64 {
            let (stop, counts, violation) = (&stop, &counts, &violation);
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
            let (stop, counts, devices, violation) = (&stop, &counts, &devices, &violation);
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
            let (stop, counts, violation) = (&stop, &counts, &violation);
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
                    match rig.write(dev, None, iova, &tag) {
                        Err(_) => {
                            counts.dma_faults.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(()) => {
                            counts.dma_ok.fetch_add(1, Ordering::Relaxed);
                            if !BASE.iter().any(|b| rig.ram(b + iova, 8).is_ok_and(|r| r == tag)) {
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
            let (stop, counts, violation) = (&stop, &counts, &violation);
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
                        rig.write(CHURN_DEV, None, 0x1000, &tag).map_err(|e| format!("{e:?}"))?;
                        if rig.ram(CHURN_BASE + 0x1000, 8)? != tag {
                            return Err("the churn device's DMA landed elsewhere".into());
                        }
                        rig.ctx.detach(churn_dev, None).map_err(e)?;
                        rig.ctx.unmap(ioas, Iova(0), 4 * MB, UnmapMode::Exact).map_err(e)?;
                        rig.ctx.destroy(ioas).map_err(e)?;
                        if rig.write(CHURN_DEV, None, 0x1000, b"x").is_ok() {
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

    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut report = SoakReport {
        plugin: String::new(),
        seconds: started.elapsed().as_secs_f64(),
        maps: c(&counts.maps),
        unmaps: c(&counts.unmaps),
        attaches: c(&counts.attaches),
        dma_landed: c(&counts.dma_ok),
        dma_faulted: c(&counts.dma_faults),
        lifecycles: c(&counts.churns),
        violations: violations.into_inner().unwrap_or_else(|p| p.into_inner()),
    };
    if let Err(e) = rig.ctx.teardown() {
        report.violations.push(format!("teardown: {e}"));
    }
    if rig.table_pages() != 0 {
        report.violations.push(format!("{} table page(s) left after the teardown", rig.table_pages()));
    }
    Ok(report)
}
