//! vIOMMU objects: vDEVICEs, nested HWPTs in a vIOMMU, virtual event queues, hardware queues.

use ioasis::abi::{ErrorCode, Fault, HwQueueKind, HwptFlags, ViommuFeatures, ViommuFlags, ViommuKind};
use ioasis::{DeviceId, Error, HwptSpec, Intent, IntentItem, Iova, PhysAddr, Prot, PtFormat, Target, ViommuId};

use super::nested::{stage1, G2H};
use super::{done, e, skip};
use crate::rig::{any_fault, rid, Rig};
use crate::Pass;

/// The vIOMMU kind a unit of this paging format speaks.
pub(crate) fn kind_of(r: &Rig) -> Option<ViommuKind> {
    match r.caps.paging_format {
        PtFormat::MOCK => Some(ViommuKind::MOCK),
        PtFormat::VTD_SECOND_LEVEL => Some(ViommuKind::VTD),
        PtFormat::ARM_LPAE_S2 => Some(ViommuKind::SMMUV3),
        PtFormat::AMD_V1 => Some(ViommuKind::AMDVI),
        _ => None,
    }
}

/// A stage-2 of guest memory and a vIOMMU over it, or why the unit has none.
fn viommu(r: &Rig) -> Result<Result<(ViommuId, ioasis::HwptId), String>, String> {
    let Some(kind) = kind_of(r) else {
        return Ok(Err(format!("the unit cannot make a vIOMMU: no kind for {}", r.caps.paging_format)));
    };
    let ioas = r.ctx.alloc_ioas();
    r.ctx.map(ioas, Some(Iova(0)), PhysAddr(G2H), 16 << 20, Prot::RW).map_err(e)?;
    let spec = HwptSpec::Paging { ioas, flags: HwptFlags::default(), fault_queue: None };
    let parent = r.ctx.alloc_hwpt(r.unit, spec).map_err(e)?;
    match r.ctx.alloc_viommu(parent, kind, ViommuFlags::default()) {
        Ok(v) => Ok(Ok((v, parent))),
        Err(Error::Plugin { error, .. }) if error.code == ErrorCode::UNSUPPORTED && !error.message.is_empty() => {
            Ok(Err(format!("the unit cannot make a vIOMMU: {}", error.message)))
        }
        Err(other) => Err(format!("a vIOMMU was refused without an unsupported reason: {other}")),
    }
}

pub(crate) fn objects_and_teardown(r: &Rig, _: u64) -> Result<Pass, String> {
    let (v, parent) = match viommu(r)? {
        Ok(x) => x,
        Err(why) => return skip(why),
    };
    let a = r.device(1, &[IntentItem::UntaggedDma])?;
    let b = r.device(2, &[IntentItem::UntaggedDma])?;
    // Virtual ids at the ends of a small range: the guest's numbering, not the physical one.
    r.ctx.alloc_vdevice(v, a, 0x21).map_err(e)?;
    if r.ctx.alloc_vdevice(v, b, 0x21).is_ok() {
        return Err("one virtual id was given to two devices".into());
    }
    let vb = r.ctx.alloc_vdevice(v, b, 0x20).map_err(e)?;
    let info = r.ctx.viommu_info(v).map_err(e)?;
    if !info.features.contains(ViommuFeatures::HW_QUEUE) {
        match r.ctx.alloc_hw_queue(v, HwQueueKind::MOCK_VCMDQ, 0, Iova(1 << 20), 0x1000) {
            Ok(_) => return Err("a hardware queue was accepted by a vIOMMU that reports none".into()),
            Err(Error::Plugin { error, .. }) if !error.message.is_empty() => {}
            Err(other) => return Err(format!("a hardware queue was refused without the backend's reason: {other}")),
        }
    }
    if r.ctx.destroy(parent).is_ok() || r.ctx.destroy(v).is_ok() {
        return Err("a vIOMMU or its parent was destroyed while in use".into());
    }
    r.ctx.destroy(vb).map_err(e)?;
    // After its vDEVICE is gone, the id is free again.
    r.ctx.alloc_vdevice(v, b, 0x20).map_err(e)?;
    let q = r.ctx.alloc_veventq(v, 4).map_err(e)?;
    r.ctx.destroy(q).map_err(e)?;
    r.ctx.teardown().map_err(e)?;
    match r.table_pages() {
        0 => done(format!("vIOMMU tag {:#x}: vDEVICEs, queues and teardown behave", info.tag)),
        n => Err(format!("{n} table page(s) still allocated after tearing a vIOMMU down")),
    }
}

pub(crate) fn nested_faults_reach_the_event_queue(r: &Rig, _: u64) -> Result<Pass, String> {
    if !r.caps.nested_formats.contains(&PtFormat::X86_64) {
        return skip("the unit cannot nest an x86-64 stage-1");
    }
    let (v, _) = match viommu(r)? {
        Ok(x) => x,
        Err(why) => return skip(why),
    };
    // Without PRI: every fault is a record (a page request cannot tell the stages apart).
    let item = IntentItem::NestedStage1 { format: PtFormat::X86_64 };
    let plain = |dev: u8| -> Result<DeviceId, String> {
        let id = r.bind(dev, |d| d.pasid_bits = 20)?;
        r.ctx.negotiate(id, &Intent::new([item])).map_err(e)?;
        Ok(id)
    };
    let a = plain(1)?;
    let b = plain(4)?;
    // Virtual ids the other way round from the physical order, so a mix-up shows.
    r.ctx.alloc_vdevice(v, a, 0x41).map_err(e)?;
    r.ctx.alloc_vdevice(v, b, 0x40).map_err(e)?;
    let q = r.ctx.alloc_veventq(v, 16).map_err(e)?;
    // Stage-1: 0x4000_0000 read-only to guest 1 MiB; 0x4000_1000 to a guest page beyond the stage-2.
    stage1(r, 0x1000, 0x4000_0000, 0x10_0000, false)?;
    stage1(r, 0x1000, 0x4000_1000, 0x4000_0000, true)?;
    let spec = HwptSpec::NestedIn {
        viommu: v,
        format: PtFormat::X86_64,
        root: Iova(0x1000),
        words: vec![],
        fault_queue: None,
    };
    let h = r.ctx.alloc_hwpt(r.unit, spec).map_err(e)?;
    r.ctx.attach(a, None, Target::Hwpt(h)).map_err(e)?;
    r.ctx.attach(b, None, Target::Hwpt(h)).map_err(e)?;
    r.put(G2H + 0x10_0000, b"guest")?;
    if r.read(1, None, 0x4000_0000, 5).map_err(e)? != b"guest" {
        return Err("DMA through a nested HWPT of the vIOMMU read the wrong page".into());
    }
    r.ctx.poll_faults().map_err(e)?;
    r.ctx.take_fault_log();
    // A stage-1 permission fault: the guest's, with the device's virtual id.
    any_fault(r.write(1, None, 0x4000_0000, b"w"), "a write through a read-only stage-1 entry")?;
    r.ctx.poll_faults().map_err(e)?;
    let got = r.ctx.read_vevents(q).map_err(e)?;
    let host = r.ctx.take_fault_log();
    match got.events.as_slice() {
        [ev] if ev.virt_id == 0x41 && ev.addr == Iova(0x4000_0000) && ev.access.write() => {}
        other => {
            return Err(format!(
                "a stage-1 fault of the device with virtual id 0x41 reached the event queue as {other:?} \
                 (host log {host:?})"
            ))
        }
    }
    // A fault in the stage-2 walk is the host's.
    any_fault(r.read(1, None, 0x4000_1000, 4), "DMA to a guest page outside the stage-2")?;
    r.ctx.poll_faults().map_err(e)?;
    let got = r.ctx.read_vevents(q).map_err(e)?;
    let host = r.ctx.take_fault_log();
    if !got.events.is_empty() {
        return Err(format!("a stage-2 fault reached the guest's event queue: {:?}", got.events));
    }
    match host.as_slice() {
        [f] if f.reason & Fault::IN_PARENT != 0 && f.dev == rid(1) => {}
        other => return Err(format!("a stage-2 fault of device 1 was logged as {other:?}, not as a stage-2 fault")),
    }
    done("stage-1 faults carry the virtual id to the VM; stage-2 faults stay the host's")
}
