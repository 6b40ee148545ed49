//! Permissions: the unit enforces what the mapping allows.

use ioasis::abi::Fault;
use ioasis::{Iova, PhysAddr, Prot};

use super::{done, e};
use crate::rig::{faulted, Rig};
use crate::Pass;

pub(crate) fn read_only(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, _) = r.attached(1)?;
    r.ctx.map(ioas, Some(Iova(0x10_0000)), PhysAddr(0x20_0000), 0x20_0000, Prot::READ).map_err(e)?;
    r.put(0x20_0040, b"readable")?;
    let got = r.read(1, None, 0x10_0040, 8).map_err(e)?;
    if got != b"readable" {
        return Err("a read through a read-only mapping returned the wrong bytes".into());
    }
    faulted(r.write(1, None, 0x10_0040, b"written!"), Fault::PERMISSION, "write to a read-only mapping")?;
    if r.ram(0x20_0040, 8)? != b"readable" {
        return Err("a refused write changed memory".into());
    }
    done("read allowed, write refused with a permission fault")
}

pub(crate) fn write_only(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, _) = r.attached(1)?;
    r.ctx.map(ioas, Some(Iova(0x10_0000)), PhysAddr(0x20_0000), 0x1000, Prot::WRITE).map_err(e)?;
    r.lands(1, None, 0x10_0010, 0x20_0010, b"w")?;
    faulted(r.read(1, None, 0x10_0010, 1), Fault::PERMISSION, "read of a write-only mapping")?;
    done("write allowed, read refused with a permission fault")
}

pub(crate) fn survive_a_split(r: &Rig, _: u64) -> Result<Pass, String> {
    let (_, ioas, _) = r.attached(1)?;
    r.ctx.map(ioas, Some(Iova(0x4000_0000)), PhysAddr(0x400_0000), 0x40_0000, Prot::READ).map_err(e)?;
    r.ctx.unmap(ioas, Iova(0x4010_0000), 0x1000, ioasis::UnmapMode::Cut).map_err(e)?;
    for off in [0u64, 0x10_1000, 0x20_0000] {
        faulted(r.write(1, None, 0x4000_0000 + off, b"x"), Fault::PERMISSION, "write to a split read-only page")?;
        r.read(1, None, 0x4000_0000 + off, 4).map_err(e)?;
    }
    // Read-write stays read-write: a split keeps every permission, not only the lack of one.
    r.ctx.map(ioas, Some(Iova(0x8000_0000)), PhysAddr(0x800_0000), 0x40_0000, Prot::RW).map_err(e)?;
    r.ctx.unmap(ioas, Iova(0x8010_0000), 0x1000, ioasis::UnmapMode::Cut).map_err(e)?;
    for off in [0u64, 0x10_1000, 0x1f_fff8, 0x20_0000] {
        r.lands(1, None, 0x8000_0000 + off, 0x800_0000 + off, b"rw")?;
        r.read(1, None, 0x8000_0000 + off, 4).map_err(e)?;
    }
    done("read-only stays read-only, and read-write read-write, after large pages are split")
}
