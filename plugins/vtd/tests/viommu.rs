//! A VT-d vIOMMU driven through the framework over the VT-d hardware model: one VM's
//! stage-2, two devices known to the guest by virtual requester ids, nested HWPTs in the
//! vIOMMU sharing its domain id, the guest's own invalidation descriptors, faults routed to the
//! virtual event queue by stage, and a teardown that gives every table page and DID back.

use std::sync::Arc;

use ioasis::abi::{Fault, HwQueueKind, ViommuFlags, ViommuKind, VirtualCommand};
use ioasis::loader::Registry;
use ioasis::platform::ModelFactory;
use ioasis::{
    Context, DeviceDesc, DeviceRef, Error, HwptSpec, Intent, IntentItem, Iova, Pasid, PhysAddr, Prot, PtFormat,
    RequesterId, Target,
};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_plugin_vtd::factory::VtdModelFactory;
use ioasis_plugin_vtd::layout::qi::{self, p_dev_tlb, p_iotlb};

const BASE: u64 = 0xfed9_0000;
const MB: u64 = 1 << 20;
/// Where guest physical 0 really is.
const G2H: u64 = 64 * MB;
/// x86-64 paging entry bits (VT-d spec 9.7 first-stage).
const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;

/// Physical devices 00:04.0 and 00:05.0; the guest knows them as 01:00.0 and 01:08.0.
const A: u8 = 4;
const B: u8 = 5;
const VIRT_A: u64 = 0x0100;
const VIRT_B: u64 = 0x0108;

fn rid(dev: u8) -> DeviceRef {
    DeviceRef::Rid(RequesterId::new(0, 0, dev, 0))
}

fn machine(toml_cfg: &str) -> (Arc<Machine>, Context, ioasis::UnitId) {
    let machine = Arc::new(Machine::new(MachineConfig { ram_bytes: 256 * MB, table_pool_bytes: 32 * MB }).unwrap());
    let cfg: toml::Table = toml::from_str(toml_cfg).unwrap();
    let model = VtdModelFactory.build(&cfg).expect("model");
    machine.add_unit(PhysAddr(BASE), VtdModelFactory.window(), model).unwrap();
    let ctx = Context::new(machine.clone());
    let plugin = Registry::with_builtins().unwrap().get("vtd").unwrap();
    let unit = ctx.add_unit(&plugin, "dmar0", PhysAddr(BASE), 0, "").expect("probe");
    (machine, ctx, unit)
}

/// Writes a 4-level x86-64 chain in guest memory (tables at `root`, +0x1000, +0x2000, +0x3000)
/// mapping `iova` to guest physical `out`.
fn stage1(m: &Machine, root: u64, iova: u64, out: u64, write: bool) {
    for level in (0..4u32).rev() {
        let table = root + u64::from(3 - level) * 0x1000;
        let index = (iova >> (12 + 9 * level)) & 0x1ff;
        let entry = if level == 0 { out | P | US | if write { RW } else { 0 } } else { (table + 0x1000) | P | RW | US };
        m.ram().write(PhysAddr(G2H + table + index * 8), &entry.to_le_bytes()).unwrap();
    }
}

fn read(m: &Machine, dev: u8, pasid: Option<u32>, iova: u64) -> Option<[u8; 4]> {
    let mut b = [0u8; 4];
    m.dma_read(PhysAddr(BASE), rid(dev), pasid.map(Pasid), Iova(iova), &mut b).ok().map(|_| b)
}

fn put(m: &Machine, gpa: u64, data: &[u8]) {
    m.ram().write(PhysAddr(G2H + gpa), data).unwrap();
}

fn cmd(q0: u64, q1: u64) -> VirtualCommand {
    VirtualCommand { words: [q0, q1, 0, 0] }
}

fn nested_device(ctx: &Context, dev: u8) -> ioasis::DeviceId {
    let mut d = DeviceDesc::pci(&format!("dev{dev}"), RequesterId::new(0, 0, dev, 0), "dmar0");
    d.pasid_bits = 20;
    let id = ctx.bind_device(d).unwrap();
    let items = vec![
        IntentItem::UntaggedDma,
        IntentItem::PasidDma { width: 20 },
        IntentItem::NestedStage1 { format: PtFormat::X86_64 },
    ];
    ctx.negotiate(id, &Intent::new(items)).expect("contract");
    id
}

fn nested_in(viommu: ioasis::ViommuId, root: u64) -> HwptSpec {
    HwptSpec::NestedIn { viommu, format: PtFormat::X86_64, root: Iova(root), words: vec![], fault_queue: None }
}

#[test]
fn a_vms_devices_translate_through_nested_hwpts_of_one_viommu() {
    let (m, ctx, unit) = machine("generation = \"scalable\"");
    let before = ctx.table_pages();
    let a = nested_device(&ctx, A);
    let b = nested_device(&ctx, B);
    // The VM's stage-2: guest physical 0..16 MiB.
    let ioas = ctx.alloc_ioas();
    ctx.map(ioas, Some(Iova(0)), PhysAddr(G2H), 16 * MB, Prot::RW).unwrap();
    let s2 = ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: Default::default(), fault_queue: None }).unwrap();
    let v = ctx.alloc_viommu(s2, ViommuKind::VTD, ViommuFlags(0)).expect("vIOMMU");
    let info = ctx.viommu_info(v).unwrap();
    assert_eq!(info.kind, ViommuKind::VTD);
    assert_ne!(info.tag, 0, "a real domain id");
    assert_eq!(info.features.0, 0, "VT-d has no hardware queue");
    let va = ctx.alloc_vdevice(v, a, VIRT_A).unwrap();
    let vb = ctx.alloc_vdevice(v, b, VIRT_B).unwrap();
    assert_eq!(ctx.vdevice(va).unwrap(), (v, a, VIRT_A));

    // The guest's first stages: A's domain at GPA 0x1000 maps 0x4000_0000 → GPA 0x10_0000;
    // B's PASID 5 at GPA 0x10000 maps 0x4000_0000 → GPA 0x20_0000.
    stage1(&m, 0x1000, 0x4000_0000, 0x10_0000, true);
    stage1(&m, 0x1_0000, 0x4000_0000, 0x20_0000, true);
    let na = ctx.alloc_hwpt(unit, nested_in(v, 0x1000)).unwrap();
    let nb = ctx.alloc_hwpt(unit, nested_in(v, 0x1_0000)).unwrap();
    assert_eq!(ctx.hwpt_viommu(na).unwrap(), Some(v));
    ctx.attach(a, None, Target::Hwpt(na)).unwrap();
    // B's untagged DMA cannot use another first stage of the same DID at PASID 0 (the IOTLB
    // tags by DID and PASID): refused, with the reason.
    let e = ctx.attach(b, None, Target::Hwpt(nb)).unwrap_err().to_string();
    assert!(e.contains("tags first-stage translations by DID and PASID"), "{e}");
    ctx.attach(b, None, Target::Hwpt(na)).unwrap();
    ctx.attach(b, Some(Pasid(5)), Target::Hwpt(nb)).unwrap();

    put(&m, 0x10_0000, b"AAAA");
    put(&m, 0x20_0000, b"BBBB");
    put(&m, 0x30_0000, b"NEW!");
    assert_eq!(read(&m, A, None, 0x4000_0000), Some(*b"AAAA"));
    assert_eq!(read(&m, B, None, 0x4000_0000), Some(*b"AAAA"), "B untagged: the same guest domain");
    assert_eq!(read(&m, B, Some(5), 0x4000_0000), Some(*b"BBBB"), "B's PASID 5: its own first stage");

    // The guest moves A's page to GPA 0x30_0000: cached, the old one is still used...
    stage1(&m, 0x1000, 0x4000_0000, 0x30_0000, true);
    assert_eq!(read(&m, A, None, 0x4000_0000), Some(*b"AAAA"), "stale before the guest's invalidation");
    // ...until the guest's PASID-based IOTLB invalidation (its own DID 42, PASID 0, one page).
    let inv = cmd(p_iotlb::q0(p_iotlb::PAGE, 42, 0), 0x4000_0000);
    assert_eq!(ctx.viommu_invalidate(v, &[inv]).unwrap(), 1);
    assert_eq!(read(&m, A, None, 0x4000_0000), Some(*b"NEW!"));
    assert_eq!(read(&m, B, Some(5), 0x4000_0000), Some(*b"BBBB"));

    // A batch whose second descriptor names a virtual RID that is not the VM's: the first
    // (B's PASID 5 after the guest moved it) is done, the rest is not.
    stage1(&m, 0x1_0000, 0x4000_0000, 0x10_0000, true);
    assert_eq!(read(&m, B, Some(5), 0x4000_0000), Some(*b"BBBB"), "stale");
    let batch = [
        cmd(p_iotlb::q0(p_iotlb::PASID, 3, 5), 0),
        cmd(p_dev_tlb::q0(0x0200, 0, 0), 0),
        cmd(p_iotlb::q0(p_iotlb::PASID, 3, 0), 0),
    ];
    match ctx.viommu_invalidate(v, &batch) {
        Err(Error::Invalidation { handled, error, .. }) => {
            assert_eq!(handled, 1);
            assert!(error.message.contains("02:00.0 is not one of the VM's devices"), "{}", error.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(read(&m, B, Some(5), 0x4000_0000), Some(*b"AAAA"), "the command before it was done");
    // A descriptor the VMM emulates is refused by type, naming it.
    match ctx.viommu_invalidate(v, &[cmd(qi::pc::q0(qi::pc::PASID, 3, 5), 0)]) {
        Err(Error::Invalidation { handled: 0, error, .. }) => {
            assert!(error.message.contains("type 0x7 (PASID-cache invalidate"), "{}", error.message)
        }
        other => panic!("{other:?}"),
    }
    // A PASID none of the VM's devices use with the vIOMMU's nested HWPTs.
    let e = ctx.viommu_invalidate(v, &[cmd(p_iotlb::q0(p_iotlb::PASID, 3, 9), 0)]).unwrap_err();
    assert!(e.to_string().contains("PASID 0x9"), "{e}");
    // No hardware queue, with a reason.
    let e = ctx.alloc_hw_queue(v, HwQueueKind(1), 0, Iova(0x80_0000), 4096).unwrap_err().to_string();
    assert!(e.contains("no hardware-accelerated guest invalidation queue"), "{e}");

    // Destroying the vIOMMU's objects gives back every table page they used: PASID tables and
    // directories. Only bus 0's context table (9.4) stays, with the root, until shutdown.
    ctx.detach(b, Some(Pasid(5))).unwrap();
    ctx.detach(b, None).unwrap();
    ctx.detach(a, None).unwrap();
    ctx.destroy(va).unwrap();
    ctx.destroy(vb).unwrap();
    ctx.destroy(na).unwrap();
    ctx.destroy(nb).unwrap();
    ctx.destroy(v).unwrap();
    ctx.destroy(s2).unwrap();
    assert_eq!(ctx.table_pages(), before + 1, "every table page back but bus 0's context table");
    ctx.teardown().unwrap();
    assert_eq!(ctx.table_pages(), 0);
}

#[test]
fn faults_of_the_guests_first_stage_reach_the_virtual_event_queue_by_virtual_rid() {
    let (m, ctx, unit) = machine("generation = \"scalable\"");
    let a = nested_device(&ctx, A);
    let ioas = ctx.alloc_ioas();
    ctx.map(ioas, Some(Iova(0)), PhysAddr(G2H), 16 * MB, Prot::RW).unwrap();
    let s2 = ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: Default::default(), fault_queue: None }).unwrap();
    let v = ctx.alloc_viommu(s2, ViommuKind::VTD, ViommuFlags(0)).unwrap();
    ctx.alloc_vdevice(v, a, VIRT_A).unwrap();
    let q = ctx.alloc_veventq(v, 16).unwrap();
    stage1(&m, 0x1000, 0x4000_0000, 0x10_0000, true);
    // A first-stage output beyond the stage-2 mapping (GPA 0x200_0000 is not mapped).
    stage1(&m, 0x1000, 0x4000_1000, 0x200_0000, true);
    let na = ctx.alloc_hwpt(unit, nested_in(v, 0x1000)).unwrap();
    ctx.attach(a, None, Target::Hwpt(na)).unwrap();
    assert!(read(&m, A, None, 0x4000_0000).is_some());

    // A first-stage hole: the guest's fault, with the virtual RID.
    assert!(read(&m, A, None, 0x6000_0000).is_none());
    ctx.poll_faults().unwrap();
    let ev = ctx.read_vevents(q).unwrap();
    assert_eq!(ev.events.len(), 1, "{ev:?}");
    let e = &ev.events[0];
    assert_eq!(e.virt_id, VIRT_A, "the virtual RID, never the physical one");
    assert_eq!((e.addr, e.reason), (Iova(0x6000_0000), Fault::NOT_PRESENT));
    assert!(ctx.take_fault_log().is_empty(), "not the host's");

    // A stage-2 hole under a valid first stage: the host's (IN_PARENT), not the guest's.
    assert!(read(&m, A, None, 0x4000_1000).is_none());
    ctx.poll_faults().unwrap();
    assert!(ctx.read_vevents(q).unwrap().events.is_empty());
    let log = ctx.take_fault_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].dev, rid(A), "the host sees the physical RID");
    assert_eq!(log[0].reason, Fault::NOT_PRESENT | Fault::IN_PARENT);
    ctx.teardown().unwrap();
    assert_eq!(ctx.table_pages(), 0);
}

#[test]
fn a_unit_without_nesting_refuses_a_viommu_naming_the_bit() {
    // The scalable preset without ECAP.NEST (bit 26).
    let ecap = ioasis_plugin_vtd::model::VtdModelConfig::scalable().ecap & !(1 << 26);
    let (_m, ctx, unit) = machine(&format!("generation = \"scalable\"\necap = {ecap}"));
    let ioas = ctx.alloc_ioas();
    let s2 = ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: Default::default(), fault_queue: None }).unwrap();
    let e = ctx.alloc_viommu(s2, ViommuKind::VTD, ViommuFlags(0)).unwrap_err().to_string();
    assert!(e.contains("ECAP.NEST (bit 26) is 0"), "{e}");
    // A legacy unit: no scalable mode.
    let (_m, ctx, unit) = machine("generation = \"legacy\"");
    let ioas = ctx.alloc_ioas();
    let s2 = ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: Default::default(), fault_queue: None }).unwrap();
    let e = ctx.alloc_viommu(s2, ViommuKind::VTD, ViommuFlags(0)).unwrap_err().to_string();
    assert!(e.contains("ECAP.SMTS (bit 43) is 0"), "{e}");
    // The wrong kind.
    let (_m, ctx, unit) = machine("generation = \"scalable\"");
    let ioas = ctx.alloc_ioas();
    let s2 = ctx.alloc_hwpt(unit, HwptSpec::Paging { ioas, flags: Default::default(), fault_queue: None }).unwrap();
    let e = ctx.alloc_viommu(s2, ViommuKind::SMMUV3, ViommuFlags(0)).unwrap_err().to_string();
    assert!(e.contains("not smmuv3"), "{e}");
}
