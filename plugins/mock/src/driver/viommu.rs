//! The mock's vIOMMU (mock spec §7): a VMID, the VM's virtual-id table, nested HWPTs tagged
//! with the VMID, the guest's commands with virtual ids mapped to physical ones, and the
//! virtual command queue handed to the unit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use abi_stable::std_types::ROption;
use ioasis::abi::{
    DeviceInfo, ErrorCode, HwQueueKind, HwQueueRequest, HwptBox, HwptFlags, HwptKind, HwptRequest, InvalidateOutcome,
    PluginError, Stage1Config, ViommuFeatures, ViommuInfo, ViommuKind, ViommuRequest, VirtualCommand,
};
use ioasis::plugin::ViommuDriver;
use ioasis::pt::Memory;

use super::hwpt::{HwptInner, MockHwpt};
use super::unit::MockUnit;
use crate::format::{cap, reg, vm, ADDR_MASK, VALID};

/// A vIOMMU of a mock unit.
pub struct MockViommu(Arc<Inner>);

impl Clone for MockViommu {
    fn clone(&self) -> Self {
        MockViommu(self.0.clone())
    }
}

struct Inner {
    unit: MockUnit,
    /// The nesting parent the VM's nested HWPTs sit on.
    /// The nesting parent (kept alive: the VM table entry points at its descriptor).
    parent: HwptBox,
    vmid: u8,
    /// The VM's virtual-id table page (§7).
    ids_page: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Virtual id → physical device id.
    vdevs: HashMap<u64, u32>,
    /// Nested HWPTs allocated in this vIOMMU.
    nested: Vec<Weak<HwptInner>>,
    /// The virtual command queue, when handed to the unit: (handle = its index + 1).
    hw_queue: Option<u64>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl MockViommu {
    /// Creates a vIOMMU: a free VMID, its virtual-id table, its VM table entry (§7).
    pub fn alloc(unit: MockUnit, req: &ViommuRequest) -> Result<MockViommu, PluginError> {
        let c = unit.core.clone();
        if !c.has(cap::VIOMMU) {
            return Err(PluginError::unsupported(format!(
                "unit {} has no vIOMMU (CAP.VIOMMU, bit 42, clear)",
                unit.name
            )));
        }
        if !c.has(cap::NEST) {
            return Err(PluginError::unsupported(format!(
                "unit {} has no nested translation (CAP.NEST, bit 1, clear)",
                unit.name
            )));
        }
        if req.kind != ViommuKind::MOCK {
            return Err(PluginError::unsupported(format!(
                "a mock unit's vIOMMU speaks the mock's commands, not {}",
                req.kind.name()
            )));
        }
        if req.flags.0 != 0 {
            return Err(PluginError::invalid(format!("unknown vIOMMU flags {:#x}", req.flags.0)));
        }
        let parent_inner = unit.lookup(&req.parent)?;
        if parent_inner.kind != HwptKind::PAGING {
            return Err(PluginError::invalid("a vIOMMU's parent must be a paging HWPT"));
        }
        let io = &c.io;
        let mut t = unit.tables();
        let vmid = (1..=u8::MAX).find(|v| !t.vms.contains_key(v)).ok_or_else(|| {
            PluginError::new(ErrorCode::BUSY, format!("unit {}: all {} VMIDs in use", unit.name, vm::ENTRIES - 1))
        })?;
        let fresh_table = t.vm_table == 0;
        if fresh_table {
            t.vm_table = io.alloc()?;
        }
        let undo_table = |t: &mut super::unit::Tables| {
            if fresh_table {
                io.free(t.vm_table);
                t.vm_table = 0;
            }
        };
        let ids_page = match io.alloc() {
            Ok(p) => p,
            Err(e) => {
                undo_table(&mut t);
                return Err(e);
            }
        };
        let entry = t.vm_table + u64::from(vmid) * vm::ENTRY_SIZE;
        // §7: word 1 first, word 0 (with V) last; VMTAB once the table exists.
        let install = || -> Result<(), PluginError> {
            io.wr(entry + 8, parent_inner.desc & ADDR_MASK)?;
            io.wr(entry, VALID | ids_page)?;
            if fresh_table {
                io.reg_wr(reg::VMTAB, t.vm_table)?;
            }
            Ok(())
        };
        if let Err(e) = install() {
            let _ = io.wr(entry, 0);
            io.free(ids_page);
            undo_table(&mut t);
            return Err(e);
        }
        t.vms.insert(vmid, ids_page);
        drop(t);
        let inner = Inner { unit, parent: req.parent.clone(), vmid, ids_page, state: Mutex::new(State::default()) };
        Ok(MockViommu(Arc::new(inner)))
    }
}

impl Inner {
    fn name(&self) -> &str {
        &self.unit.name
    }

    fn vdev_slot(&self, virt_id: u64) -> Result<u64, PluginError> {
        if virt_id >= vm::VIRT_IDS {
            return Err(PluginError::new(
                ErrorCode::OUT_OF_RANGE,
                format!("virtual id {virt_id:#x}: the mock's virtual-id table holds ids 0-{}", vm::VIRT_IDS - 1),
            ));
        }
        Ok(self.ids_page + virt_id * 8)
    }

    fn set_vdevice(&self, dev: &DeviceInfo, virt_id: u64) -> Result<(), PluginError> {
        let slot = self.vdev_slot(virt_id)?;
        let pdev = dev.dev.table_index();
        if u64::from(pdev) > vm::PDEV_MASK {
            return Err(PluginError::new(ErrorCode::OUT_OF_RANGE, format!("device id {pdev:#x} beyond 17 bits")));
        }
        let mut s = lock(&self.state);
        if s.vdevs.contains_key(&virt_id) {
            return Err(PluginError::new(ErrorCode::EXISTS, format!("virtual id {virt_id:#x} is in use")));
        }
        if s.vdevs.values().any(|&p| p == pdev) {
            return Err(PluginError::new(ErrorCode::EXISTS, format!("{} has a virtual id already", dev.dev)));
        }
        self.unit.core.io.wr(slot, VALID | (u64::from(pdev) << vm::PDEV_SHIFT))?;
        s.vdevs.insert(virt_id, pdev);
        Ok(())
    }

    fn clear_vdevice(&self, dev: &DeviceInfo) -> Result<(), PluginError> {
        let pdev = dev.dev.table_index();
        let mut s = lock(&self.state);
        let virt = s
            .vdevs
            .iter()
            .find(|(_, &p)| p == pdev)
            .map(|(v, _)| *v)
            .ok_or_else(|| PluginError::not_found(format!("{} has no virtual id here", dev.dev)))?;
        self.unit.core.io.wr(self.vdev_slot(virt)?, 0)?;
        s.vdevs.remove(&virt);
        Ok(())
    }

    fn alloc_nested(&self, flags: HwptFlags, stage1: &Stage1Config) -> Result<MockHwpt, PluginError> {
        let req = HwptRequest {
            kind: HwptKind::NESTED,
            flags,
            parent: ROption::RSome(self.parent.clone()),
            stage1: ROption::RSome(stage1.clone()),
            space: ioasis::AddressSpace::host(),
        };
        let h = self.unit.alloc_in(&req, self.vmid)?;
        let inner = self.unit.own(&h)?;
        let mut s = lock(&self.state);
        s.nested.retain(|w| w.strong_count() > 0);
        s.nested.push(Arc::downgrade(&inner));
        Ok(h)
    }

    /// One guest command (§7), its virtual id mapped through the VM's table.
    fn run(&self, cmd: &VirtualCommand) -> Result<(), PluginError> {
        let [w0, addr, size, w3] = cmd.words;
        let refuse = |why: String| Err(PluginError::invalid(why));
        if w0 & vm::W0_RESERVED != 0 || w3 != 0 {
            return refuse(format!("reserved bits set ({:#x}, {w3:#x})", w0 & vm::W0_RESERVED));
        }
        let op = w0 & vm::OP_MASK;
        if op == vm::OP_SYNC {
            return Ok(());
        }
        if op != vm::OP_STAGE1_RANGE && op != vm::OP_DEVICE {
            return refuse(format!("unknown opcode {op:#x}"));
        }
        let virt = w0 >> vm::VIRT_SHIFT;
        let pdev = *lock(&self.state)
            .vdevs
            .get(&virt)
            .ok_or_else(|| PluginError::not_found(format!("virtual id {virt:#x} is not one of the VM's devices")))?;
        let io = &self.unit.core.io;
        if op == vm::OP_DEVICE {
            return io.invalidate(reg::INV_DEVICE, u64::from(pdev), 0, 0);
        }
        if addr & 0xfff != 0 || size & 0xfff != 0 {
            return refuse(format!("unaligned range {addr:#x}+{size:#x}"));
        }
        let pasid = (w0 & vm::PASID_V != 0).then_some(((w0 >> vm::PASID_SHIFT) & 0xf_ffff) as u32);
        let h = self.unit.attached(pdev, pasid).ok_or_else(|| {
            PluginError::not_found(format!("virtual device {virt:#x} has nothing attached at {pasid:?}"))
        })?;
        let ours = lock(&self.state).nested.iter().any(|w| w.upgrade().is_some_and(|x| Arc::ptr_eq(&x, &h)));
        if !ours {
            return refuse(format!("virtual device {virt:#x} does not use a nested HWPT of this vIOMMU"));
        }
        io.invalidate(reg::INV_IOTLB_RANGE, h.desc, addr, size)
    }

    fn invalidate(&self, cmds: &[VirtualCommand]) -> InvalidateOutcome {
        for (i, c) in cmds.iter().enumerate() {
            if let Err(e) = self.run(c) {
                return InvalidateOutcome { handled: i as u32, error: ROption::RSome(e) };
            }
        }
        InvalidateOutcome { handled: cmds.len() as u32, error: ROption::RNone }
    }

    fn alloc_hw_queue(&self, req: &HwQueueRequest) -> Result<u64, PluginError> {
        let c = &self.unit.core;
        if !c.has(cap::VCMDQ) {
            return Err(PluginError::unsupported(format!(
                "unit {} has no virtual command queue (CAP.VCMDQ, bit 43, clear)",
                self.name()
            )));
        }
        if req.kind != HwQueueKind::MOCK_VCMDQ || req.index != 0 {
            return Err(PluginError::unsupported(format!(
                "the mock has one virtual command queue (kind {}, index 0)",
                HwQueueKind::MOCK_VCMDQ.0
            )));
        }
        let entries = req.len / vm::CMD_SIZE;
        let log2 = u64::from(entries.trailing_zeros());
        if !entries.is_power_of_two() || log2 > vm::CMDQ_MAX_LOG2 || req.iova.0 % req.len != 0 {
            return Err(PluginError::invalid(format!(
                "a virtual command queue is 2^n (n <= {}) commands of 32 bytes, aligned: {} bytes at {}",
                vm::CMDQ_MAX_LOG2,
                req.len,
                req.iova
            )));
        }
        let mut s = lock(&self.state);
        if s.hw_queue.is_some() {
            return Err(PluginError::new(ErrorCode::BUSY, "the virtual command queue is in use"));
        }
        let mut t = self.unit.tables();
        if t.vcmdq_owner.is_some() {
            return Err(PluginError::new(
                ErrorCode::BUSY,
                format!("unit {}'s virtual command queue is in use", self.name()),
            ));
        }
        let io = &c.io;
        io.reg_wr(reg::VCMDQ_VM, 0)?;
        io.reg_wr(reg::VCMDQ_BASE, (req.iova.0 & ADDR_MASK) | log2)?;
        io.reg_wr(reg::VCMDQ_VM, reg::VCMDQ_VM_EN | u64::from(self.vmid))?;
        t.vcmdq_owner = Some(self.vmid);
        s.hw_queue = Some(1);
        Ok(1)
    }

    fn free_hw_queue(&self, handle: u64) -> Result<(), PluginError> {
        let mut s = lock(&self.state);
        if s.hw_queue != Some(handle) {
            return Err(PluginError::not_found(format!("no hardware queue {handle}")));
        }
        let mut t = self.unit.tables();
        let io = &self.unit.core.io;
        io.reg_wr(reg::VCMDQ_VM, 0)?;
        io.reg_wr(reg::VCMDQ_BASE, 0)?;
        t.vcmdq_owner = None;
        s.hw_queue = None;
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if lock(&self.state).hw_queue.is_some() {
            let _ = self.free_hw_queue(1);
        }
        let io = &self.unit.core.io;
        let mut t = self.unit.tables();
        if t.shut_down {
            return;
        }
        let _ = io.wr(t.vm_table + u64::from(self.vmid) * vm::ENTRY_SIZE, 0);
        let _ = io.invalidate(reg::INV_ALL, 0, 0, 0);
        if let Some(p) = t.vms.remove(&self.vmid) {
            io.free(p);
        }
        if t.vms.is_empty() && t.vm_table != 0 {
            let _ = io.reg_wr(reg::VMTAB, 0);
            io.free(t.vm_table);
            t.vm_table = 0;
        }
    }
}

impl ViommuDriver for MockViommu {
    type Hwpt = MockHwpt;

    fn info(&self) -> ViommuInfo {
        let features =
            if self.0.unit.core.has(cap::VCMDQ) { ViommuFeatures::HW_QUEUE } else { ViommuFeatures::default() };
        ViommuInfo { kind: ViommuKind::MOCK, tag: u64::from(self.0.vmid), features }
    }

    fn alloc_nested(&self, flags: HwptFlags, stage1: &Stage1Config) -> Result<MockHwpt, PluginError> {
        self.0.alloc_nested(flags, stage1)
    }

    fn set_vdevice(&self, dev: &DeviceInfo, virt_id: u64) -> Result<(), PluginError> {
        self.0.set_vdevice(dev, virt_id)
    }

    fn clear_vdevice(&self, dev: &DeviceInfo) -> Result<(), PluginError> {
        self.0.clear_vdevice(dev)
    }

    fn invalidate(&self, cmds: &[VirtualCommand]) -> InvalidateOutcome {
        self.0.invalidate(cmds)
    }

    fn alloc_hw_queue(&self, req: &HwQueueRequest) -> Result<u64, PluginError> {
        self.0.alloc_hw_queue(req)
    }

    fn free_hw_queue(&self, handle: u64) -> Result<(), PluginError> {
        self.0.free_hw_queue(handle)
    }
}
