//! The backend and [`XenHost`] over the recorded-reply test double: what each ioasis operation
//! sends to Xen, and how Xen's answers come back as ioasis results. What Xen really does with
//! these domctls is checked on a real Xen (`tests/on_xen.rs`).

use std::sync::Arc;

use ioasis::guest::GuestHost;
use ioasis::{Error, Intent, IntentItem, Iova, PhysAddr, Prot, Target, UnmapMode};

use crate::abi::domctl::{
    cdf, cmd, DomctlAssignDevice, DomctlCreateDomain, DomctlGetDomainInfo, DomctlIomemPermission, DomctlMemoryMapping,
};
use crate::abi::sysctl::{self, physcap, SysctlPhysinfo};
use crate::backend::PciView;
use crate::transport::recorded::{sample_dom0_info, sample_physinfo, Exchange, Recorded, SAMPLE_CAPABILITIES};
use crate::{Sbdf, Xen, XenHost, DOMID_INVALID};

const NIC: &str = "0000:00:03.0";
const EINVAL: i32 = 22;
const ESRCH: i32 = 3;
const EBUSY: i32 = 16;
const EPERM: i32 = 1;

fn sbdf() -> Sbdf {
    NIC.parse().unwrap()
}

/// A host over a double that has served the handshake, the unit's probe and the device group
/// query of one bound device (with `caps` as physinfo's capabilities).
fn host_with(caps: u32) -> (XenHost, Recorded, ioasis::DeviceId) {
    let r = Recorded::xen_4_17();
    let xen = Arc::new(Xen::with_transport(Box::new(r.clone())).unwrap());
    let physinfo = SysctlPhysinfo { capabilities: caps, ..sample_physinfo() };
    // One physinfo for the host (the guests' CDF flags), one for the unit's probe.
    r.expect(Exchange::sysctl(sysctl::cmd::PHYSINFO).reply(&physinfo));
    let host = XenHost::with_pci_view(xen, pci_view()).unwrap();
    r.expect(Exchange::sysctl(sysctl::cmd::PHYSINFO).reply(&physinfo));
    r.expect(Exchange::domctl(cmd::GET_DEVICE_GROUP, 0));
    let dev = host.bind_pci("nic", sbdf()).unwrap();
    r.assert_done();
    (host, r, dev)
}

/// A dom0 PCI device list (a folder) holding only 0000:00:03.0.
fn pci_view() -> PciView {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("ioasis-xen-pci-{}-{n}", std::process::id()));
    std::fs::create_dir_all(root.join(NIC)).unwrap();
    PciView::at(root)
}

fn new_host() -> (XenHost, Recorded, ioasis::DeviceId) {
    host_with(SAMPLE_CAPABILITIES)
}

fn untagged() -> Intent {
    Intent::new(vec![IntentItem::UntaggedDma])
}

fn domain_info(dom: u16) -> DomctlGetDomainInfo {
    DomctlGetDomainInfo { domain: dom, ..sample_dom0_info() }
}

fn assign() -> DomctlAssignDevice {
    DomctlAssignDevice::pci(sbdf().raw(), 0)
}

#[test]
fn negotiation_asks_xen_and_refuses_what_xen_lacks_with_reasons() {
    let (host, r, dev) = new_host();
    r.expect(Exchange::domctl(cmd::TEST_ASSIGN_DEVICE, DOMID_INVALID).request(&assign()));
    let intent = Intent::new(vec![
        IntentItem::UntaggedDma,
        IntentItem::DirtyTracking,
        IntentItem::NestedStage1 { format: ioasis::PtFormat::X86_64 },
        IntentItem::Identity,
    ]);
    let Err(Error::Refused(refusal)) = host.context().negotiate(dev, &intent) else { panic!("must be refused") };
    r.assert_done();
    let text = refusal.to_string();
    assert!(text.contains("no dirty log of device writes"), "{text}");
    assert!(text.contains("stage-1 tables"), "{text}");
    assert!(text.contains("no dom0 user untranslated DMA"), "{text}");
    assert_eq!(refusal.granted.len(), 1, "untagged DMA would be granted: {text}");
    // Untagged DMA alone is a contract, after one test_assign_device.
    r.expect(Exchange::domctl(cmd::TEST_ASSIGN_DEVICE, DOMID_INVALID));
    let c = host.context().negotiate(dev, &untagged()).unwrap();
    assert!(c.to_string().contains("Xen can assign 0000:00:03.0"), "{c}");
    r.assert_done();
}

#[test]
fn without_an_iommu_or_with_the_device_taken_untagged_dma_is_refused_with_xens_reason() {
    let (host, r, dev) = host_with(SAMPLE_CAPABILITIES & !physcap::DIRECTIO);
    let Err(Error::Refused(refusal)) = host.context().negotiate(dev, &untagged()) else { panic!() };
    assert!(refusal.to_string().contains("without an IOMMU"), "{refusal}");
    r.assert_done(); // no domctl needed to know that
                     // Xen refuses CDF_iommu without an IOMMU: guests are made without it.
    r.expect(Exchange::domctl(cmd::CREATEDOMAIN, 0).reply_domain(9));
    host.create_guest("plain").unwrap();
    let sent: DomctlCreateDomain = r.last_call().unwrap().payload_as().unwrap();
    assert_eq!(sent.flags & cdf::IOMMU, 0, "flags {:#x}", sent.flags);

    let (host, r, dev) = new_host();
    r.expect(Exchange::domctl(cmd::TEST_ASSIGN_DEVICE, DOMID_INVALID).fails(EINVAL));
    let Err(Error::Refused(refusal)) = host.context().negotiate(dev, &untagged()) else { panic!() };
    let text = refusal.to_string();
    assert!(text.contains("assigned to a domain already") && text.contains("EINVAL"), "{text}");
    r.assert_done();

    // The same -EINVAL for a slot dom0 sees no device in: no such device.
    r.expect(Exchange::domctl(cmd::GET_DEVICE_GROUP, 0).fails(EINVAL));
    let spare = host.bind_pci("spare", "0000:00:07.0".parse().unwrap()).unwrap();
    r.expect(Exchange::domctl(cmd::TEST_ASSIGN_DEVICE, DOMID_INVALID).fails(EINVAL));
    let Err(Error::Refused(refusal)) = host.context().negotiate(spare, &untagged()) else { panic!() };
    assert!(refusal.to_string().contains("no such PCI device"), "{refusal}");
    r.assert_done();
}

/// A negotiated device and a created domain 5.
fn ready() -> (XenHost, Recorded, ioasis::DeviceId, ioasis::guest::Guest) {
    let (host, r, dev) = new_host();
    r.expect(Exchange::domctl(cmd::TEST_ASSIGN_DEVICE, DOMID_INVALID));
    host.context().negotiate(dev, &untagged()).unwrap();
    r.expect(Exchange::domctl(cmd::CREATEDOMAIN, 0).reply_domain(5));
    let guest = host.create_guest("domU").unwrap();
    assert_eq!(guest.id, 5);
    let sent: DomctlCreateDomain = r.last_call().unwrap().payload_as().unwrap();
    assert_eq!(sent.flags & cdf::IOMMU, cdf::IOMMU, "a guest that can be given devices needs CDF_iommu");
    assert_eq!(host.context().ioas_space(guest.ioas).unwrap(), ioasis::AddressSpace::guest(5));
    r.assert_done();
    (host, r, dev, guest)
}

#[test]
fn attach_assigns_detach_deassigns_destroy_destroys() {
    let (host, r, dev, guest) = ready();
    let ctx = host.context();
    r.expect(Exchange::domctl(cmd::GETDOMAININFO, 5).reply(&domain_info(5)).reply_domain(5));
    r.expect(Exchange::domctl(cmd::TEST_ASSIGN_DEVICE, DOMID_INVALID).request(&assign()));
    r.expect(Exchange::domctl(cmd::ASSIGN_DEVICE, 5).request(&assign()));
    ctx.attach(dev, None, Target::Ioas(guest.ioas)).unwrap();
    r.assert_done();
    assert!(matches!(host.destroy_guest(guest), Err(Error::Busy { .. })), "busy while assigned");
    r.assert_done(); // and nothing was sent to Xen
    r.expect(Exchange::domctl(cmd::DEASSIGN_DEVICE, 5).request(&assign()));
    ctx.detach(dev, None).unwrap();
    r.expect(Exchange::domctl(cmd::DESTROYDOMAIN, 5));
    host.destroy_guest(guest).unwrap();
    r.assert_done();
}

#[test]
fn a_failed_assignment_is_a_typed_error_that_changes_nothing() {
    let (host, r, dev, guest) = ready();
    let ctx = host.context();
    r.expect(Exchange::domctl(cmd::GETDOMAININFO, 5).reply(&domain_info(5)).reply_domain(5));
    r.expect(Exchange::domctl(cmd::TEST_ASSIGN_DEVICE, DOMID_INVALID));
    r.expect(Exchange::domctl(cmd::ASSIGN_DEVICE, 5).fails(EBUSY));
    let e = ctx.attach(dev, None, Target::Ioas(guest.ioas)).unwrap_err();
    assert_eq!(e.plugin_code(), Some(ioasis::abi::ErrorCode::BUSY), "{e}");
    assert!(e.to_string().contains("assign 0000:00:03.0 to domain 5"), "{e}");
    assert_eq!(ctx.attached_ioas(dev, None).unwrap(), None);
    assert!(ctx.ioas_hwpts(guest.ioas).unwrap().is_empty(), "the auto HWPT was dropped");
    r.assert_done();
}

#[test]
fn an_unknown_domain_is_a_clear_error() {
    let (host, r, _) = new_host();
    r.expect(Exchange::domctl(cmd::GETDOMAININFO, 77).fails(ESRCH));
    let e = host.adopt_domain(77).unwrap_err();
    assert!(matches!(e, Error::Host { host: "xen", .. }), "{e:?}");
    assert!(e.to_string().contains("no Xen domain 77") && e.to_string().contains("ESRCH"), "{e}");
    r.assert_done();
}

#[test]
fn replace_moves_a_device_between_domains_by_deassign_then_assign() {
    let (host, r, dev, a) = ready();
    let ctx = host.context();
    r.expect(Exchange::domctl(cmd::GETDOMAININFO, 5).reply(&domain_info(5)).reply_domain(5));
    r.expect(Exchange::domctl(cmd::TEST_ASSIGN_DEVICE, DOMID_INVALID));
    r.expect(Exchange::domctl(cmd::ASSIGN_DEVICE, 5));
    ctx.attach(dev, None, Target::Ioas(a.ioas)).unwrap();
    r.expect(Exchange::domctl(cmd::CREATEDOMAIN, 0).reply_domain(6));
    let b = host.create_guest("b").unwrap();
    r.expect(Exchange::domctl(cmd::GETDOMAININFO, 6).reply(&domain_info(6)).reply_domain(6));
    r.expect(Exchange::domctl(cmd::DEASSIGN_DEVICE, 5));
    r.expect(Exchange::domctl(cmd::TEST_ASSIGN_DEVICE, DOMID_INVALID));
    r.expect(Exchange::domctl(cmd::ASSIGN_DEVICE, 6));
    ctx.replace(dev, None, Target::Ioas(b.ioas)).unwrap();
    assert_eq!(ctx.attached_ioas(dev, None).unwrap(), Some(b.ioas));
    r.assert_done();
}

#[test]
fn mmio_maps_through_iomem_permission_and_memory_mapping_all_or_nothing() {
    let (host, r, dev, guest) = ready();
    let ctx = host.context();
    r.expect(Exchange::domctl(cmd::GETDOMAININFO, 5).reply(&domain_info(5)).reply_domain(5));
    r.expect(Exchange::domctl(cmd::TEST_ASSIGN_DEVICE, DOMID_INVALID));
    r.expect(Exchange::domctl(cmd::ASSIGN_DEVICE, 5));
    ctx.attach(dev, None, Target::Ioas(guest.ioas)).unwrap();
    // A BAR of 128 KiB at machine 0xfebc0000, at guest-physical 0xf000_0000.
    let perm = DomctlIomemPermission { first_mfn: 0xfebc0, nr_mfns: 32, allow_access: 1, _pad: [0; 7] };
    let add = DomctlMemoryMapping { first_gfn: 0xf0000, first_mfn: 0xfebc0, nr_mfns: 32, add_mapping: 1, padding: 0 };
    r.expect(Exchange::domctl(cmd::IOMEM_PERMISSION, 5).request(&perm));
    r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).request(&add));
    ctx.map(guest.ioas, Some(Iova(0xf000_0000)), PhysAddr(0xfebc_0000), 0x2_0000, Prot::RW).unwrap();
    r.assert_done();
    let hwpt = ctx.ioas_hwpts(guest.ioas).unwrap()[0];
    let t = ctx.translate(hwpt, Iova(0xf000_1008)).unwrap().unwrap();
    assert_eq!(t.pa, PhysAddr(0xfebc_1008));

    // A second BAR whose mapping Xen refuses: permission granted, then revoked; nothing mapped.
    r.expect(Exchange::domctl(cmd::IOMEM_PERMISSION, 5));
    r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).fails(EPERM));
    let revoke = DomctlIomemPermission { first_mfn: 0xfeb00, nr_mfns: 1, allow_access: 0, _pad: [0; 7] };
    r.expect(Exchange::domctl(cmd::IOMEM_PERMISSION, 5).request(&revoke));
    let e = ctx.map(guest.ioas, Some(Iova(0xf100_0000)), PhysAddr(0xfeb0_0000), 0x1000, Prot::RW).unwrap_err();
    assert!(e.to_string().contains("EPERM"), "{e}");
    r.assert_done();
    assert_eq!(ctx.areas(guest.ioas).unwrap().len(), 1);

    // Read-only is refused before Xen is asked.
    let e = ctx.map(guest.ioas, Some(Iova(0xf200_0000)), PhysAddr(0xfea0_0000), 0x1000, Prot::READ).unwrap_err();
    assert!(e.to_string().contains("read-write only"), "{e}");

    // Unmapping the middle page of the BAR removes one frame and keeps the rest.
    let del = DomctlMemoryMapping { first_gfn: 0xf0001, first_mfn: 0xfebc1, nr_mfns: 1, add_mapping: 0, padding: 0 };
    r.expect(Exchange::domctl(cmd::MEMORY_MAPPING, 5).request(&del));
    r.expect(Exchange::domctl(cmd::IOMEM_PERMISSION, 5));
    assert_eq!(ctx.unmap(guest.ioas, Iova(0xf000_1000), 0x1000, UnmapMode::Cut).unwrap(), 0x1000);
    r.assert_done();
    assert_eq!(ctx.translate(hwpt, Iova(0xf000_1000)).unwrap(), None);
    assert_eq!(ctx.translate(hwpt, Iova(0xf000_2000)).unwrap().unwrap().pa, PhysAddr(0xfebc_2000));
}

#[test]
fn host_space_ioases_and_nested_tables_are_refused_by_xen() {
    let (host, r, dev) = new_host();
    let ctx = host.context();
    r.expect(Exchange::domctl(cmd::TEST_ASSIGN_DEVICE, DOMID_INVALID));
    ctx.negotiate(dev, &untagged()).unwrap();
    let plain = ctx.alloc_ioas();
    let e = ctx.attach(dev, None, Target::Ioas(plain)).unwrap_err();
    assert!(e.to_string().contains("must be a domain's guest-physical space"), "{e}");
    r.assert_done();
}
