//! The DMAR behind RSDP → XSDT in real guest memory: laid out through the slots' vm-memory
//! view, found again by the host-side walk, and followed by a real vCPU from the RSDP to the
//! vIOMMU's register base.

mod common;

use common::{enter_protected_mode, Rig, MB};
use ioasis::{PhysAddr, RequesterId};
use ioasis_kvm::acpi::{find_dmar, find_rsdp, FirmwareBuilder};
use ioasis_kvm::dmar::{Dmar, DmarUnit};
use kvm_ioctls::VcpuExit;
use vm_memory::{Bytes, GuestAddress};

const RSDP_GPA: u64 = 0xe_0000;
const VIOMMU_BASE: u64 = 0xfed9_0000;
const EINTR: i32 = 4;
const MAX_EXITS: usize = 16;

/// The guest follows the pointers as an OS does (32-bit flat protected mode, paging off):
/// `mov eax, [RSDP+24]` (XSDT address), `mov eax, [eax+36]` (first XSDT entry: the DMAR),
/// `mov eax, [eax+56]` (first DRHD's register base: 48-byte DMAR header + 8), `out 0x10, eax`,
/// `hlt`.
fn walker() -> Vec<u8> {
    let mut p = vec![0xa1];
    p.extend(((RSDP_GPA + 24) as u32).to_le_bytes());
    p.extend([0x8b, 0x40, 36, 0x8b, 0x40, 56, 0xe7, 0x10, 0xf4]);
    p
}

#[test]
fn a_guest_walks_from_the_rsdp_to_the_viommu() {
    let Some(mut rig) = Rig::new(64 * MB) else { return };
    rig.slots.add(0, 0, PhysAddr(4 * MB), MB, 0).expect("slot: the first MiB, BIOS area included");
    let dmar = Dmar {
        host_address_width: 48,
        intr_remap: false,
        units: vec![DmarUnit {
            base: PhysAddr(VIOMMU_BASE),
            segment: 0,
            include_all: true,
            devices: vec![RequesterId::new(0, 0, 3, 0)],
        }],
        rmrrs: vec![],
    };
    let view = rig.slots.guest_memory().expect("view");
    let tables = FirmwareBuilder::new(RSDP_GPA).unwrap().dmar(&dmar).unwrap().build().unwrap();
    tables.write_to(&view).expect("write tables");

    assert_eq!(find_rsdp(&view).unwrap(), RSDP_GPA);
    assert_eq!(find_dmar(&view).unwrap(), (tables.tables[0].gpa, dmar));
    assert_eq!(rig.ram(4 * MB + RSDP_GPA, 8), b"RSD PTR ", "in machine RAM at the slot's PA");

    view.write_slice(&walker(), GuestAddress(0x1000)).expect("load program");
    let mut vcpu = rig.slots.vm().create_vcpu(0).expect("vCPU");
    enter_protected_mode(&mut vcpu, 0x1000);
    let mut out = None;
    for _ in 0..MAX_EXITS {
        match vcpu.fd().run() {
            Ok(VcpuExit::IoOut(0x10, data)) => out = Some(data.to_vec()),
            Ok(VcpuExit::Hlt) => break,
            Err(e) if e.errno() == EINTR => continue,
            Ok(other) => panic!("unexpected exit {other:?}"),
            Err(e) => panic!("KVM_RUN: {e}"),
        }
    }
    let out = out.expect("the guest reported a register base");
    assert_eq!(out, (VIOMMU_BASE as u32).to_le_bytes(), "RSDP → XSDT → DMAR → DRHD base");
}
