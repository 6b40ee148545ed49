//! Shared by the KVM tests: a simulated machine with one mock IOMMU unit, a real KVM VM whose
//! guest memory lives in the machine's RAM, the prerequisite rule, and what guest programs need
//! (32-bit protected mode, a tiny assembler).
#![allow(dead_code)]

pub mod vtd_guest;

use std::io::Write;
use std::sync::Arc;

use ioasis::loader::Registry;
use ioasis::{
    Context, DeviceDesc, DeviceId, DeviceRef, Intent, IntentItem, Iova, IovaRange, PhysAddr, RequesterId, Target,
};
use ioasis_baremetal::{DmaError, Machine, MachineConfig};
use ioasis_kvm::{KvmError, MemorySlots, Vm};
use ioasis_plugin_mock::format::cap;
use ioasis_plugin_mock::model::MockModel;

pub const MB: u64 = 1 << 20;
/// Register window of the mock unit (outside guest RAM's physical range).
pub const UNIT_BASE: u64 = 0xfed0_0000;
/// The x86 MSI window, reserved by the platform.
pub const MSI_WINDOW: IovaRange = IovaRange { start: Iova(0xfee0_0000), last: Iova(0xfeef_ffff) };
/// The device's bus/dev/fn: 00:03.0.
pub const DEV: u8 = 3;

pub struct Rig {
    pub machine: Arc<Machine>,
    pub ctx: Arc<Context>,
    pub model: Arc<MockModel>,
    pub device: DeviceId,
    pub slots: MemorySlots,
}

/// The VM, or `None` (after saying why) when KVM is unusable here. Under `CI=true` an unusable
/// KVM fails the test instead.
pub fn vm_or_skip(machine: Arc<Machine>) -> Option<Arc<Vm>> {
    match Vm::new(machine) {
        Ok(vm) => Some(Arc::new(vm)),
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            let why = match &e {
                KvmError::Unavailable(w) => w.clone(),
                other => other.to_string(),
            };
            assert!(!ci, "CI=true but KVM is unusable: {why}");
            // Straight to stderr, past libtest's capture, so the skip shows in a normal run.
            let _ =
                writeln!(std::io::stderr(), "SKIPPED: KVM is unusable here ({why}); under CI=true this is a failure");
            None
        }
    }
}

impl Rig {
    /// A machine of `ram` bytes with the MSI window reserved, a mock unit, device 00:03.0 negotiated for untagged DMA and
    /// attached to the slots' IOAS, and a KVM VM. `None` when KVM is unusable (see
    /// [`vm_or_skip`]).
    pub fn new(ram: u64) -> Option<Self> {
        Self::with_intent(ram, &[IntentItem::UntaggedDma])
    }

    /// [`Rig::new`] with the device negotiated for `items` instead of untagged DMA alone.
    pub fn with_intent(ram: u64, items: &[IntentItem]) -> Option<Self> {
        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let machine =
            Arc::new(Machine::new(MachineConfig { ram_bytes: ram, table_pool_bytes: 16 * MB }).expect("machine"));
        let vm = vm_or_skip(machine.clone())?;
        let ctx = Arc::new(Context::new(machine.clone()));
        // x86's MSI window: applied to the IOAS when the device attaches.
        ctx.add_platform_reserved(MSI_WINDOW, "x86 MSI window");
        let model = Arc::new(MockModel::new(cap::FULL));
        machine.add_unit(PhysAddr(UNIT_BASE), 0x1000, model.clone()).expect("unit window");
        let plugin = Registry::with_builtins().expect("built-ins").get("mock").expect("mock is built in");
        ctx.add_unit(&plugin, "u0", PhysAddr(UNIT_BASE), 0, "").expect("probe");
        let device = ctx.bind_device(DeviceDesc::pci("nic", RequesterId::new(0, 0, DEV, 0), "u0")).expect("bind");
        ctx.negotiate(device, &Intent::new(items.to_vec())).expect("contract");
        let ioas = ctx.alloc_ioas();
        ctx.attach(device, None, Target::Ioas(ioas)).expect("attach");
        let slots = MemorySlots::new(vm, ctx.clone(), ioas);
        Some(Rig { machine, ctx, model, device, slots })
    }

    pub fn dma_write(&self, iova: u64, data: &[u8]) -> Result<(), DmaError> {
        let rid = DeviceRef::Rid(RequesterId::new(0, 0, DEV, 0));
        self.machine.dma_write(PhysAddr(UNIT_BASE), rid, None, Iova(iova), data)
    }

    pub fn ram(&self, pa: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.machine.ram().read(PhysAddr(pa), &mut buf).expect("ram read");
        buf
    }
}

/// Runs `vcpu` in flat protected mode from `rip` until `hlt`, bounded by `max_exits`; any other
/// exit is a test failure. A signal interrupting `KVM_RUN` (EINTR) runs it again.
pub fn run_protected(vcpu: &mut ioasis_kvm::Vcpu, rip: u64, max_exits: usize) {
    const EINTR: i32 = 4;
    enter_protected_mode(vcpu, rip);
    for _ in 0..max_exits {
        match vcpu.fd().run() {
            Ok(kvm_ioctls::VcpuExit::Hlt) => return,
            Err(e) if e.errno() == EINTR => continue,
            Ok(other) => panic!("unexpected exit {other:?}"),
            Err(e) => panic!("KVM_RUN: {e}"),
        }
    }
    panic!("guest did not halt within {max_exits} exits");
}

/// Puts the vCPU in 32-bit flat protected mode (CR0.PE, flat 4 GiB code and data segments,
/// no GDT in guest memory needed) at `rip`, paging off: linear = guest-physical.
pub fn enter_protected_mode(vcpu: &mut ioasis_kvm::Vcpu, rip: u64) {
    let fd = vcpu.fd();
    let mut sregs = fd.get_sregs().expect("get sregs");
    sregs.cr0 |= 1; // PE
    let code = kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x8,
        type_: 11,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        ..Default::default()
    };
    let data = kvm_bindings::kvm_segment { selector: 0x10, type_: 3, ..code };
    sregs.cs = code;
    for seg in [&mut sregs.ds, &mut sregs.es, &mut sregs.ss, &mut sregs.fs, &mut sregs.gs] {
        *seg = data;
    }
    fd.set_sregs(&sregs).expect("set sregs");
    fd.set_regs(&kvm_bindings::kvm_regs { rip, rflags: 2, ..Default::default() }).expect("set regs");
}

/// A tiny assembler for 32-bit protected-mode guest programs (flat segments, paging off).
#[derive(Default)]
pub struct Asm(pub Vec<u8>);

impl Asm {
    /// `mov ebx, imm32`.
    pub fn mov_ebx(&mut self, imm: u32) -> &mut Self {
        self.0.push(0xbb);
        self.0.extend(imm.to_le_bytes());
        self
    }

    /// `mov dword [ebx+disp32], imm32`.
    pub fn store(&mut self, disp: u32, imm: u32) -> &mut Self {
        self.0.extend([0xc7, 0x83]);
        self.0.extend(disp.to_le_bytes());
        self.0.extend(imm.to_le_bytes());
        self
    }

    /// `mov dword [addr32], imm32`.
    pub fn store_abs(&mut self, addr: u32, imm: u32) -> &mut Self {
        self.0.extend([0xc7, 0x05]);
        self.0.extend(addr.to_le_bytes());
        self.0.extend(imm.to_le_bytes());
        self
    }

    /// Stores the 64-bit `value` at `addr` as two dwords, low first.
    pub fn store64_abs(&mut self, addr: u32, value: u64) -> &mut Self {
        self.store_abs(addr, value as u32).store_abs(addr + 4, (value >> 32) as u32)
    }

    /// Spins until a bit of `mask` is set in the dword at `[ebx+disp32]`:
    /// `1: mov eax, [ebx+disp32]; test eax, mask; jz 1b`.
    pub fn wait_set(&mut self, disp: u32, mask: u32) -> &mut Self {
        self.0.extend([0x8b, 0x83]);
        self.0.extend(disp.to_le_bytes());
        self.0.push(0xa9);
        self.0.extend(mask.to_le_bytes());
        self.0.extend([0x74, (-13i8) as u8]);
        self
    }

    /// Spins until the dword at `addr32` equals `value`:
    /// `1: mov eax, [addr32]; cmp eax, value; jne 1b`.
    pub fn wait_eq_abs(&mut self, addr: u32, value: u32) -> &mut Self {
        self.0.push(0xa1);
        self.0.extend(addr.to_le_bytes());
        self.0.push(0x3d);
        self.0.extend(value.to_le_bytes());
        self.0.extend([0x75, (-12i8) as u8]);
        self
    }

    /// `hlt`.
    pub fn hlt(&mut self) -> &mut Self {
        self.0.push(0xf4);
        self
    }
}
