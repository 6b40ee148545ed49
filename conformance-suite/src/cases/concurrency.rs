//! Concurrent map/unmap and DMA from several threads.

use ioasis::{Iova, PhysAddr, Prot, UnmapMode};

use super::{done, e, Rng};
use crate::rig::Rig;
use crate::Pass;

pub(crate) fn threads_map_unmap_and_dma(r: &Rig, seed: u64) -> Result<Pass, String> {
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
