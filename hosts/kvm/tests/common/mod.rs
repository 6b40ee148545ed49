//! Shared by the KVM tests: a simulated machine with one mock IOMMU unit, a real KVM VM whose
//! guest memory lives in the machine's RAM, and the prerequisite rule.
#![allow(dead_code)]

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
        ctx.negotiate(device, &Intent::new(vec![IntentItem::UntaggedDma])).expect("contract");
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
