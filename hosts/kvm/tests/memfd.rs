//! Guest memory over memfd-backed machine RAM: a real vCPU, a device DMA through the IOAS, and
//! whoever maps the memfd (a vhost-user backend, the VMM's own vm-memory) see the same bytes.

mod common;

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use common::{vm_or_skip, Asm, DEV, MB, UNIT_BASE};
use ioasis::loader::Registry;
use ioasis::{Context, DeviceDesc, DeviceRef, Intent, IntentItem, Iova, PhysAddr, RequesterId, Target};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_kvm::{MemorySlots, VmMemoryError};
use ioasis_plugin_mock::format::cap;
use ioasis_plugin_mock::model::MockModel;
use nix::sys::mman::{MapFlags, ProtFlags};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

/// Where slot 0's guest memory lives in the machine's RAM (= offset in the memfd).
const SLOT_PA: u64 = 4 * MB;
const SLOT_LEN: u64 = 64 << 10;
const CODE_GPA: u64 = 0x1000;
const MAX_EXITS: usize = 16;

/// A memfd-backed machine with a mock unit, device 00:03.0 attached to the slots' IOAS, and a
/// KVM VM. `None` when KVM is unusable here (see `vm_or_skip`).
struct MemfdRig {
    machine: Arc<Machine>,
    slots: MemorySlots,
}

impl MemfdRig {
    fn new() -> Option<Self> {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let config = MachineConfig { ram_bytes: 64 * MB, table_pool_bytes: 16 * MB };
        let machine = Arc::new(Machine::new_memfd(config).expect("memfd machine"));
        let vm = vm_or_skip(machine.clone())?;
        let ctx = Arc::new(Context::new(machine.clone()));
        machine.add_unit(PhysAddr(UNIT_BASE), 0x1000, Arc::new(MockModel::new(cap::FULL))).expect("unit window");
        let plugin = Registry::with_builtins().expect("built-ins").get("mock").expect("mock is built in");
        ctx.add_unit(&plugin, "u0", PhysAddr(UNIT_BASE), 0, "").expect("probe");
        let device = ctx.bind_device(DeviceDesc::pci("nic", RequesterId::new(0, 0, DEV, 0), "u0")).expect("bind");
        ctx.negotiate(device, &Intent::new(vec![IntentItem::UntaggedDma])).expect("contract");
        let ioas = ctx.alloc_ioas();
        ctx.attach(device, None, Target::Ioas(ioas)).expect("attach");
        Some(Self { machine, slots: MemorySlots::new(vm, ctx, ioas) })
    }

    fn dma_write(&self, gpa: u64, data: &[u8]) {
        let rid = DeviceRef::Rid(RequesterId::new(0, 0, DEV, 0));
        self.machine.dma_write(PhysAddr(UNIT_BASE), rid, None, Iova(gpa), data).expect("DMA write");
    }

    fn dma_read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let rid = DeviceRef::Rid(RequesterId::new(0, 0, DEV, 0));
        let mut buf = vec![0; len];
        self.machine.dma_read(PhysAddr(UNIT_BASE), rid, None, Iova(gpa), &mut buf).expect("DMA read");
        buf
    }

    /// The memfd, as a vhost-user backend would get it (a duplicate descriptor).
    fn memfd(&self) -> File {
        let fd = self.machine.ram().memfd().expect("memfd-backed RAM");
        File::from(fd.try_clone_to_owned().expect("dup"))
    }
}

/// `mov eax, [from]; mov [to], eax` (32-bit flat protected mode).
fn copy_abs(asm: &mut Asm, from: u32, to: u32) -> &mut Asm {
    asm.0.push(0xa1);
    asm.0.extend(from.to_le_bytes());
    asm.0.push(0xa3);
    asm.0.extend(to.to_le_bytes());
    asm
}

#[test]
fn memfd_slot_is_shared_by_vcpu_device_and_the_memfd() {
    let Some(mut rig) = MemfdRig::new() else { return };
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, 0).expect("slot over memfd RAM");
    // The guest stores a word at 0x2000 and copies the word at 0x3000 to 0x4000.
    let mut asm = Asm::default();
    asm.store_abs(0x2000, 0x1122_3344);
    copy_abs(&mut asm, 0x3000, 0x4000).hlt();
    rig.machine.ram().write(PhysAddr(SLOT_PA + CODE_GPA), &asm.0).expect("load program");
    rig.dma_write(0x3000, b"dma!");

    let mut vcpu = rig.slots.vm().create_vcpu(0).expect("vCPU");
    common::run_protected(&mut vcpu, CODE_GPA, MAX_EXITS);
    assert_eq!(rig.dma_read(0x2000, 4), 0x1122_3344u32.to_le_bytes(), "vCPU write read back by DMA");
    assert_eq!(rig.dma_read(0x4000, 4), b"dma!", "DMA write read by the vCPU, copied, read back by DMA");

    // The memfd shows guest memory at file offset = machine-physical address ...
    let file = rig.memfd();
    let mut word = [0u8; 4];
    file.read_exact_at(&mut word, SLOT_PA + 0x2000).expect("read memfd");
    assert_eq!(u32::from_le_bytes(word), 0x1122_3344, "the vCPU's write is in the memfd");
    file.read_exact_at(&mut word, SLOT_PA + 0x4000).expect("read memfd");
    assert_eq!(&word, b"dma!");
    // ... and what its holder writes reaches the device and the vCPU.
    file.write_all_at(b"vhost", SLOT_PA + 0x3000).expect("write memfd");
    assert_eq!(rig.dma_read(0x3000, 5), b"vhost");
    common::run_protected(&mut vcpu, CODE_GPA, MAX_EXITS);
    assert_eq!(rig.dma_read(0x4000, 4), b"vhos", "the vCPU copied what the memfd holder wrote");
}

#[test]
fn the_view_of_memfd_slots_carries_the_file() {
    let Some(mut rig) = MemfdRig::new() else { return };
    rig.slots.add(0, 0, PhysAddr(SLOT_PA), SLOT_LEN, 0).expect("slot 0");
    rig.slots.add(1, MB, PhysAddr(8 * MB), SLOT_LEN, 0).expect("slot 1");
    let view = rig.slots.guest_memory().expect("view");
    let ram = rig.machine.ram();
    for (gpa, pa) in [(0, SLOT_PA), (MB, 8 * MB)] {
        let region = view.find_region(GuestAddress(gpa)).expect("region");
        let file = region.file_offset().expect("memfd regions carry their file offset");
        assert_eq!(file.start(), pa, "file offset = machine-physical address");
        assert_eq!(ram.memfd_phys_addr(file.file().as_fd(), file.start(), SLOT_LEN), Some(PhysAddr(pa)));
        assert_ne!(region.flags() & MapFlags::MAP_SHARED.bits(), 0);
    }
    // A write through the file of a region is seen through the view and by the device.
    let file = view.find_region(GuestAddress(MB)).unwrap().file_offset().unwrap().file();
    file.write_all_at(b"via file", 8 * MB + 0x10).expect("write");
    let mut buf = [0u8; 8];
    view.read_slice(&mut buf, GuestAddress(MB + 0x10)).expect("read view");
    assert_eq!(&buf, b"via file");
    assert_eq!(rig.dma_read(MB + 0x10, 8), b"via file");
}

#[test]
fn a_vmm_mapping_of_the_memfd_is_adopted() {
    let Some(mut rig) = MemfdRig::new() else { return };
    // The VMM maps the memfd itself (its own shared mapping) as guest memory at GPA 0 and 1 MiB.
    let ranges = [
        (GuestAddress(0), SLOT_LEN as usize, Some(FileOffset::new(rig.memfd(), SLOT_PA))),
        (GuestAddress(MB), SLOT_LEN as usize, Some(FileOffset::new(rig.memfd(), 8 * MB))),
    ];
    let vmm: GuestMemoryMmap = GuestMemoryMmap::from_ranges_with_files(ranges).expect("VMM guest memory");
    assert!(rig.machine.ram().phys_addr_of(vmm.find_region(GuestAddress(0)).unwrap().as_ptr(), 1).is_none());

    let ids = rig.slots.adopt(&vmm, 3, 0).expect("adopt");
    assert_eq!(ids, [3, 4]);
    let got: Vec<_> = rig.slots.slots().map(|s| (s.id, s.gpa, s.pa, s.len)).collect();
    assert_eq!(got, [(3, 0, PhysAddr(SLOT_PA), SLOT_LEN), (4, MB, PhysAddr(8 * MB), SLOT_LEN)]);

    // VMM → device and vCPU; vCPU and device → VMM.
    vmm.write_slice(b"vmm!", GuestAddress(MB + 0x3000)).expect("VMM write");
    assert_eq!(rig.dma_read(MB + 0x3000, 4), b"vmm!");
    let mut asm = Asm::default();
    asm.store_abs(0x2000, 0xdead_beef);
    copy_abs(&mut asm, MB as u32 + 0x3000, MB as u32 + 0x4000).hlt();
    vmm.write_slice(&asm.0, GuestAddress(CODE_GPA)).expect("load program through the VMM's memory");
    let mut vcpu = rig.slots.vm().create_vcpu(0).expect("vCPU");
    common::run_protected(&mut vcpu, CODE_GPA, MAX_EXITS);
    assert_eq!(vmm.read_obj::<u32>(GuestAddress(0x2000)).unwrap(), 0xdead_beef, "vCPU write seen by the VMM");
    assert_eq!(vmm.read_obj::<u32>(GuestAddress(MB + 0x4000)).unwrap(), u32::from_le_bytes(*b"vmm!"));
    rig.dma_write(0x5000, b"device");
    let mut buf = [0u8; 6];
    vmm.read_slice(&mut buf, GuestAddress(0x5000)).unwrap();
    assert_eq!(&buf, b"device", "DMA seen by the VMM");
}

#[test]
fn private_or_foreign_vmm_memory_is_refused() {
    let Some(mut rig) = MemfdRig::new() else { return };
    let ioas = rig.slots.ioas();
    // A private (copy-on-write) mapping of the memfd: its writes would never reach the machine.
    let region = MmapRegionBuilder::<()>::new(SLOT_LEN as usize)
        .with_file_offset(FileOffset::new(rig.memfd(), SLOT_PA))
        .with_mmap_prot((ProtFlags::PROT_READ | ProtFlags::PROT_WRITE).bits())
        .with_mmap_flags((MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE).bits())
        .build()
        .expect("private mapping");
    let private = GuestMemoryMmap::from_regions(vec![GuestRegionMmap::new(region, GuestAddress(0)).unwrap()]).unwrap();
    let e = rig.slots.adopt(&private, 0, 0).unwrap_err();
    assert!(matches!(e, VmMemoryError::PrivateMapping { gpa: 0 }), "{e}");
    // Another memfd (not the machine's), shared.
    let other = Machine::new_memfd(MachineConfig { ram_bytes: 16 * MB, table_pool_bytes: 0 }).expect("other");
    let other_file = File::from(other.ram().memfd().unwrap().try_clone_to_owned().unwrap());
    let ranges = [(GuestAddress(0), SLOT_LEN as usize, Some(FileOffset::new(other_file, 0)))];
    let foreign: GuestMemoryMmap = GuestMemoryMmap::from_ranges_with_files(ranges).unwrap();
    let e = rig.slots.adopt(&foreign, 0, 0).unwrap_err();
    assert!(matches!(e, VmMemoryError::Foreign { gpa: 0, len: SLOT_LEN }), "{e}");
    // The machine's memfd but past the end of RAM.
    let ranges = [(GuestAddress(0), SLOT_LEN as usize, Some(FileOffset::new(rig.memfd(), 64 * MB)))];
    let past: GuestMemoryMmap = GuestMemoryMmap::from_ranges_with_files(ranges).unwrap();
    assert!(matches!(rig.slots.adopt(&past, 0, 0), Err(VmMemoryError::Foreign { .. })));
    assert_eq!(rig.slots.slots().count(), 0);
    assert!(rig.slots.context().areas(ioas).unwrap().is_empty(), "nothing mapped");
}
