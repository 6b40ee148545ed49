//! Access objects: a software consumer's pins hold the backend's translation in place.

use std::sync::{Arc, Mutex};

use ioasis::{AccessOps, Error, Iova, PhysAddr, Prot, UnmapMode};

use super::{done, e};
use crate::rig::{any_fault, Rig};
use crate::Pass;

/// Records what it is asked to unpin, and never does.
#[derive(Default)]
struct Stubborn(Mutex<Vec<(Iova, u64)>>);

impl AccessOps for Stubborn {
    fn unmap(&self, iova: Iova, len: u64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push((iova, len));
    }
}

pub(crate) fn pins_hold_the_translation(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, _) = r.attached(1)?;
    r.ctx.map(ioas, Some(Iova(0x20_0000)), PhysAddr(0x60_0000), 0x20_0000, Prot::RW).map_err(e)?;
    let ops = Arc::new(Stubborn::default());
    let acc = r.ctx.create_access(ioas, ops.clone()).map_err(e)?;
    let pages = r.ctx.access_pin(acc, Iova(0x3f_f000), 0x1000, Prot::RW).map_err(e)?;
    if pages != [PhysAddr(0x7f_f000)] {
        return Err(format!("the last page of the area pinned as {pages:?}"));
    }
    match r.ctx.unmap(ioas, Iova(0x20_0000), 0x20_0000, UnmapMode::Exact) {
        Err(Error::Pinned { .. }) => {}
        other => return Err(format!("an unmap over a pinned page gave {other:?}")),
    }
    if ops.0.lock().unwrap_or_else(|p| p.into_inner()).len() != 1 {
        return Err("the access was not asked to unpin before the unmap was refused".into());
    }
    // The refused unmap changed nothing: the backend still translates the whole area.
    r.lands(1, None, 0x3f_f008, 0x7f_f008, b"pinned")?;
    r.lands(1, None, 0x20_0000, 0x60_0000, b"first")?;
    r.ctx.access_unpin(acc, Iova(0x3f_f000), 0x1000).map_err(e)?;
    r.ctx.unmap(ioas, Iova(0x20_0000), 0x20_0000, UnmapMode::Exact).map_err(e)?;
    any_fault(r.read(1, None, 0x3f_f000, 4), "DMA after the unpinned area was unmapped")?;
    r.ctx.destroy(acc).map_err(e)?;
    done("an unmap over pins is refused before the backend changes anything")
}
