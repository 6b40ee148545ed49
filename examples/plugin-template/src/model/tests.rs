//! The model against the spec, without a driver: stale IOTLB entries until a completed
//! command, late completion, fault records, A/D bits.

use std::collections::HashMap;
use std::sync::Mutex;

use ioasis::abi::{Fault, HostError};
use ioasis::platform::{DmaRequest, PhysMemory, UnitModel};
use ioasis::{DeviceRef, Iova, PhysAddr, Prot, RequesterId};

use super::{AcmeModel, ModelConfig};
use crate::layout::{dte, fault, inv, pte, reg};

/// Sparse memory of u64 words.
#[derive(Default)]
struct Mem(Mutex<HashMap<u64, u64>>);

impl Mem {
    fn get(&self, pa: u64) -> u64 {
        self.0.lock().unwrap().get(&pa).copied().unwrap_or(0)
    }
    fn set(&self, pa: u64, v: u64) {
        self.0.lock().unwrap().insert(pa, v);
    }
}

impl PhysMemory for Mem {
    fn read(&self, _: PhysAddr, _: &mut [u8]) -> Result<(), HostError> {
        Err(HostError::new(HostError::BAD_ADDRESS, 0))
    }
    fn write(&self, _: PhysAddr, _: &[u8]) -> Result<(), HostError> {
        Err(HostError::new(HostError::BAD_ADDRESS, 0))
    }
    fn read_u64(&self, pa: PhysAddr) -> Result<u64, HostError> {
        Ok(self.get(pa.0))
    }
    fn write_u64(&self, pa: PhysAddr, v: u64) -> Result<(), HostError> {
        self.set(pa.0, v);
        Ok(())
    }
    fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> Result<u64, HostError> {
        let old = self.get(pa.0);
        self.set(pa.0, old | bits);
        Ok(old)
    }
    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> Result<u64, HostError> {
        let old = self.get(pa.0);
        self.set(pa.0, old & mask);
        Ok(old)
    }
}

const DT: u64 = 0x10_0000;
const FQ: u64 = 0x20_0000;
const ROOT: u64 = 0x30_0000;
const RID: u16 = 0x4213;

/// A unit enabled with one device (bus 0x42) on a table mapping IOVA 0x5000 to 0x9000.
fn unit(polls: u32) -> (AcmeModel, Mem) {
    let m = AcmeModel::new(ModelConfig { completion_polls: polls, ..Default::default() }).unwrap();
    let mem = Mem::default();
    mem.set(DT + dte::offset(RID), dte::entry(ROOT, 7));
    mem.set(ROOT, pte::P | (ROOT + 0x1000));
    mem.set(ROOT + 0x1000, pte::P | (ROOT + 0x2000));
    mem.set(ROOT + 0x2000 + pte::offset(0x5000, 0), pte::P | pte::R | pte::W | 0x9000);
    for (r, v) in [(reg::DT_BASE, DT), (reg::FQ_BASE, FQ), (reg::CTRL, reg::CTRL_EN | reg::CTRL_FQ_EN)] {
        m.mmio_write(&mem, r, 8, v).unwrap();
    }
    (m, mem)
}

fn dma(m: &AcmeModel, mem: &Mem, iova: u64, access: Prot) -> Result<u64, Fault> {
    let dev = DeviceRef::Rid(RequesterId { segment: 0, bus: 0x42, devfn: 0x13 });
    let req = DmaRequest { dev, pasid: None, iova: Iova(iova), access };
    m.translate(mem, &req).map(|t| t.pa.0)
}

fn command(m: &AcmeModel, mem: &Mem, op: u64, id: u16, addr: u64, size: u64) {
    m.mmio_write(mem, reg::INV_ADDR, 8, addr).unwrap();
    m.mmio_write(mem, reg::INV_SIZE, 8, size).unwrap();
    m.mmio_write(mem, reg::INV_CMD, 8, inv::cmd(op, id)).unwrap();
}

#[test]
fn stale_until_a_completed_invalidation() {
    let (m, mem) = unit(2);
    assert_eq!(dma(&m, &mem, 0x5010, Prot::READ), Ok(0x9010));
    let leaf = ROOT + 0x2000 + pte::offset(0x5000, 0);
    assert_eq!(mem.get(leaf) & (pte::A | pte::D), pte::A, "a read sets A only");
    assert_eq!(dma(&m, &mem, 0x5018, Prot::WRITE), Ok(0x9018));
    assert_ne!(mem.get(leaf) & pte::D, 0, "a write sets D");
    mem.set(leaf, 0);
    assert_eq!(dma(&m, &mem, 0x5000, Prot::READ), Ok(0x9000), "the IOTLB keeps the entry");
    command(&m, &mem, inv::OP_IOTLB, 7, 0x5000, 0x1000);
    assert_eq!(dma(&m, &mem, 0x5000, Prot::READ), Ok(0x9000), "not complete: not in effect");
    assert_eq!(m.mmio_read(&mem, reg::INV_DONE, 8), Ok(0));
    assert_eq!(m.mmio_read(&mem, reg::INV_DONE, 8), Ok(1), "complete on the second read");
    assert_eq!(dma(&m, &mem, 0x5000, Prot::READ).unwrap_err().reason, Fault::NOT_PRESENT);
}

#[test]
fn faults_are_recorded_and_the_device_entry_is_cached() {
    let (m, mem) = unit(0);
    assert_eq!(dma(&m, &mem, 0x7000, Prot::WRITE).unwrap_err().reason, Fault::NOT_PRESENT);
    assert_eq!(dma(&m, &mem, 1 << 39, Prot::READ).unwrap_err().reason, Fault::ADDRESS_SIZE);
    assert_eq!(m.mmio_read(&mem, reg::FQ_TAIL, 8), Ok(2));
    assert_eq!(mem.get(FQ), fault::word0(RID, false, true, fault::NOT_PRESENT));
    assert_eq!(mem.get(FQ + 8), 0x7000);
    assert_eq!(fault::reason(mem.get(FQ + 16)), fault::ADDRESS_SIZE);
    // A cleared device entry still translates until a DEVICE command.
    mem.set(DT + dte::offset(RID), 0);
    assert!(dma(&m, &mem, 0x5000, Prot::READ).is_ok());
    command(&m, &mem, inv::OP_DEVICE, RID, 0, 0);
    assert_eq!(dma(&m, &mem, 0x5000, Prot::READ).unwrap_err().reason, Fault::BLOCKED);
}

#[test]
fn bad_registers_and_commands() {
    let (m, mem) = unit(1);
    assert!(m.mmio_read(&mem, 0x800, 8).is_err());
    assert!(m.mmio_read(&mem, reg::ID, 2).is_err());
    command(&m, &mem, 0xf, 0, 0, 0);
    assert_eq!(m.mmio_read(&mem, reg::INV_DONE, 8), Ok(0), "an unknown command never counts");
    for _ in 0..=inv::MAX_PENDING {
        command(&m, &mem, inv::OP_ALL, 0, 0, 0);
    }
    assert_ne!(m.mmio_read(&mem, reg::STATUS, 8).unwrap() & reg::STATUS_INV_OVF, 0);
    assert!(AcmeModel::new(ModelConfig { oas: 60, ..Default::default() }).is_err());
}
