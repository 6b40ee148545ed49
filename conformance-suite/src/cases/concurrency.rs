//! Concurrent map/unmap and DMA from several threads.

use ioasis::{Iova, PhysAddr, Prot, UnmapMode};

use super::{done, e, Rng};
use crate::bench::Need;
use crate::rig::Rig;
use crate::Pass;

pub(crate) fn threads_map_unmap_and_dma(r: &Rig, seed: u64) -> Result<Pass, String> {
    r.need(Need::ConcurrentDma)?;
    let (_, ioas, _) = r.attached(1)?;
    let results: Vec<Result<usize, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4u64)
            .map(|t| {
                s.spawn(move || -> Result<usize, String> {
                    let mut rng = Rng(seed ^ (t + 1));
                    let mut live = 0;
                    for i in 0..48u64 {
                        let iova = (t << 34) | (i << 22) | (rng.below(2) << 21);
                        let len = (1 + rng.below(16)) << 12;
                        let pa = 0x400_0000 + ((t * 48 + i) << 16);
                        r.ctx.map(ioas, Some(Iova(iova)), PhysAddr(pa), len, Prot::RW).map_err(e)?;
                        r.lands(1, None, iova + len - 8, pa + len - 8, &iova.to_le_bytes())?;
                        if rng.below(2) == 0 {
                            r.ctx.unmap(ioas, Iova(iova), len, UnmapMode::Exact).map_err(e)?;
                            if r.write(1, None, iova, b"gone").is_ok() {
                                return Err(format!("thread {t}: DMA to {iova:#x} worked after unmap"));
                            }
                        } else {
                            live += 1;
                        }
                    }
                    Ok(live)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a thread panicked".into()))).collect()
    });
    let mut live = 0;
    for r in results {
        live += r?;
    }
    let areas = r.ctx.areas(ioas).map_err(e)?.len();
    if areas != live {
        return Err(format!("{areas} areas left, the threads kept {live}"));
    }
    for a in r.ctx.areas(ioas).map_err(e)? {
        r.lands(1, None, a.range.start.0, a.pa.0, b"final")?;
    }
    done(format!("4 threads, 192 maps with DMA, {live} kept"))
}

pub(crate) fn parallel_devices(r: &Rig, seed: u64) -> Result<Pass, String> {
    use ioasis_baremetal::dma::{DmaDevice, DmaJob, DmaOp};
    r.need(Need::ParallelDma)?;
    let (_, ioas, _) = r.attached(1)?;
    let mut devices = Vec::new();
    for d in 2..10u8 {
        let id = r.device(d, &[ioasis::IntentItem::UntaggedDma])?;
        r.ctx.attach(id, None, ioasis::Target::Ioas(ioas)).map_err(e)?;
        devices.push(DmaDevice::new(crate::rig::rid(d), r.unit_base()));
    }
    let mut rng = Rng(seed);
    r.ctx.map(ioas, Some(Iova(0)), PhysAddr(0x800_0000), 8 << 20, Prot::RW).map_err(e)?;
    let jobs: Vec<DmaJob<'_>> = devices
        .iter()
        .enumerate()
        .flat_map(|(i, d)| {
            let base = (i as u64) << 20;
            let off = rng.below(0xf_0000) & !7;
            [DmaJob { device: d, iova: Iova(base + off), op: DmaOp::Write(vec![i as u8 + 1; 0x3000]) }]
        })
        .collect();
    // Meanwhile another thread maps and unmaps elsewhere in the same IOAS.
    let results = std::thread::scope(|s| {
        let churn = s.spawn(|| -> Result<(), String> {
            for i in 0..64u64 {
                let at = Iova((1 << 32) + (i << 21));
                r.ctx.map(ioas, Some(at), PhysAddr(0x1000_0000), 0x20_0000, Prot::RW).map_err(e)?;
                r.ctx.unmap(ioas, at, 0x20_0000, UnmapMode::Exact).map_err(e)?;
            }
            Ok(())
        });
        let out = r.parallel(&jobs);
        (out, churn.join().unwrap_or_else(|_| Err("the mapping thread panicked".into())))
    });
    results.1?;
    for (job, res) in jobs.iter().zip(results.0?) {
        res.map_err(|x| format!("parallel DMA to {}: {x}", job.iova))?;
        let DmaOp::Write(data) = &job.op else { continue };
        if r.ram(0x800_0000 + job.iova.0, data.len())? != *data {
            return Err(format!("parallel DMA to {} did not land", job.iova));
        }
    }
    done(format!("{} devices DMA in parallel (rayon) while another thread maps and unmaps", devices.len()))
}
