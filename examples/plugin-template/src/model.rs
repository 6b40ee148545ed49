//! The hardware model: what the acme-tiny unit of `SPEC.md` does with its registers and with
//! the DMA of the devices behind it. The conformance suite runs the driver against it.
//!
//! For the suite to mean something, the model behaves like hardware, not like the driver
//! hopes: it reads only what the driver wrote to memory and registers, keeps cached entries
//! (device entries and the IOTLB) however the tables change until a command drops them, lets
//! commands complete late (and take effect only then), records every refused DMA with its
//! requester id, address, access and reason, and sets A and D bits.
//!
//! What the spec leaves open, as this model settles it:
//! - A command completes on the `completion_polls`-th read of INV_DONE after it reached the
//!   head of the queue (0: at once, on the write of INV_CMD).
//! - An IOTLB entry made by a read does not answer a write until the walk for the write has set
//!   D: the write walks the tables again (from memory) and replaces the entry.
//! - A DMA with CTRL.EN clear is blocked; device ids beyond 16 bits are blocked and not recorded.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

use ioasis::abi::{Fault, HostError};
use ioasis::platform::{DmaRequest, DmaTarget, PhysMemory, UnitModel};
use ioasis::{PhysAddr, Prot};

use crate::layout::{cap, dte, fault, inv, pte, reg, ADDR_MASK};

/// Most entries each cache holds; past it an arbitrary entry is evicted.
const CAPACITY: usize = 4096;

const U32: u64 = 0xffff_ffff;

/// A unit's configuration (the keys of the model's TOML table).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// CAP.OAS: the output width (32..=52).
    pub oas: u8,
    /// Reads of INV_DONE a command takes to complete (§4); 0 completes at once.
    pub completion_polls: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self { oas: 48, completion_polls: 2 }
    }
}

/// Why a configuration is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// OAS out of range.
    #[error("oas {0} is not in 32..=52")]
    Oas(u8),
    /// A late completion so late that no driver would wait for it.
    #[error("completion_polls {0} is more than 1000")]
    CompletionPolls(u32),
}

impl ModelConfig {
    /// Checks the values.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !(32..=52).contains(&self.oas) {
            return Err(ConfigError::Oas(self.oas));
        }
        if self.completion_polls > 1000 {
            return Err(ConfigError::CompletionPolls(self.completion_polls));
        }
        Ok(())
    }
}

/// A command waiting to complete (§4).
#[derive(Clone, Copy, Debug)]
struct Pending {
    cmd: u64,
    addr: u64,
    size: u64,
    polls_left: u32,
}

/// The register file (§1).
#[derive(Debug, Default)]
struct Regs {
    ctrl: u64,
    status: u64,
    dt_base: u64,
    inv_addr: u64,
    inv_size: u64,
    inv_done: u64,
    fq_base: u64,
    fq_head: u64,
    fq_tail: u64,
    pending: VecDeque<Pending>,
}

/// One cached translation of a 4 KiB page.
#[derive(Clone, Copy, Debug)]
struct TlbEntry {
    pa: u64,
    prot: Prot,
    /// D is set in the leaf: a write may use the entry.
    dirty: bool,
}

/// The unit's caches (§4).
#[derive(Debug, Default)]
struct Caches {
    /// By (DID, IOVA page).
    iotlb: HashMap<(u16, u64), TlbEntry>,
    /// Device entries by requester id.
    dte: HashMap<u16, u64>,
}

fn insert_bounded<K: Hash + Eq + Copy, V>(map: &mut HashMap<K, V>, key: K, value: V) {
    if map.len() >= CAPACITY && !map.contains_key(&key) {
        if let Some(victim) = map.keys().next().copied() {
            map.remove(&victim);
        }
    }
    map.insert(key, value);
}

impl Caches {
    /// Runs a completed command (§4).
    fn run(&mut self, p: &Pending) {
        let id = inv::id(p.cmd);
        match p.cmd & inv::OP_MASK {
            inv::OP_IOTLB if p.size == 0 => self.iotlb.retain(|&(did, _), _| did != id),
            inv::OP_IOTLB => {
                let (first, last) = (p.addr, p.addr.saturating_add(p.size - 1));
                self.iotlb
                    .retain(|&(did, page), _| !(did == id && page.saturating_add(0xfff) >= first && page <= last));
            }
            inv::OP_DEVICE => {
                self.dte.remove(&id);
            }
            _ => {
                self.iotlb.clear();
                self.dte.clear();
            }
        }
    }
}

/// The acme-tiny unit's hardware model.
#[derive(Debug)]
pub struct AcmeModel {
    cap: u64,
    config: ModelConfig,
    regs: Mutex<Regs>,
    caches: Mutex<Caches>,
}

/// Locks a mutex; every critical section leaves its data consistent, so a poisoned lock is
/// still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A refused DMA: the §5 reason code.
type Reason = u64;

/// Reads a table word; unreadable memory is a bad entry.
fn read(mem: &dyn PhysMemory, pa: u64) -> Result<u64, Reason> {
    mem.read_u64(PhysAddr(pa)).map_err(|_| fault::BAD_ENTRY)
}

/// Where `iova` lands in the page at `pa`.
fn target(pa: u64, iova: u64) -> DmaTarget {
    let off = iova & 0xfff;
    DmaTarget { pa: PhysAddr(pa | off), remaining: 0x1000 - off }
}

/// Merges a register write of `width` into a 64-bit register.
fn merge(old: u64, width: u8, value: u64) -> u64 {
    if width == 4 {
        (old & !U32) | (value & U32)
    } else {
        value
    }
}

impl AcmeModel {
    /// A unit configured by `config`.
    pub fn new(config: ModelConfig) -> Result<Self, ConfigError> {
        config.check()?;
        Ok(Self {
            cap: cap::value(cap::IAS_BITS, config.oas),
            config,
            regs: Mutex::new(Regs::default()),
            caches: Mutex::new(Caches::default()),
        })
    }

    /// Counts one read of INV_DONE against the oldest pending command; runs it when due.
    fn tick(&self, r: &mut Regs) {
        let Some(head) = r.pending.front_mut() else { return };
        head.polls_left = head.polls_left.saturating_sub(1);
        if head.polls_left == 0 {
            self.complete(r);
        }
    }

    /// Completes the oldest pending command: it takes effect, and INV_DONE counts it.
    fn complete(&self, r: &mut Regs) {
        if let Some(p) = r.pending.pop_front() {
            lock(&self.caches).run(&p);
            r.inv_done = r.inv_done.wrapping_add(1);
        }
    }

    /// Translation with CTRL.EN set.
    fn walk(&self, mem: &dyn PhysMemory, req: &DmaRequest, dt_base: u64) -> Result<DmaTarget, Reason> {
        if req.pasid.is_some() {
            return Err(fault::BAD_PASID);
        }
        let rid = u16::try_from(req.dev.table_index()).map_err(|_| fault::BLOCKED)?;
        let iova = req.iova.raw();
        let write = req.access.write();
        let mut c = lock(&self.caches);
        let e = match c.dte.get(&rid) {
            Some(e) => *e,
            None => {
                let dt = dt_base & ADDR_MASK;
                if dt == 0 {
                    return Err(fault::BLOCKED);
                }
                let e = read(mem, dt + dte::offset(rid))?;
                if e & dte::V == 0 {
                    return Err(fault::BLOCKED);
                }
                if e & dte::RESERVED != 0 || e & ADDR_MASK == 0 {
                    return Err(fault::BAD_ENTRY);
                }
                insert_bounded(&mut c.dte, rid, e);
                e
            }
        };
        if iova >> cap::IAS_BITS != 0 {
            return Err(fault::ADDRESS_SIZE);
        }
        let key = (dte::did(e), iova & !0xfff);
        if let Some(t) = c.iotlb.get(&key) {
            if !t.prot.contains(req.access) {
                return Err(fault::PERMISSION);
            }
            if !write || t.dirty {
                return Ok(target(t.pa, iova));
            }
        }
        let mut table = e & ADDR_MASK;
        for level in (1..pte::LEVELS).rev() {
            let entry = read(mem, table + pte::offset(iova, level))?;
            if entry & pte::P == 0 {
                return Err(fault::NOT_PRESENT);
            }
            if entry & pte::RESERVED != 0 || entry & ADDR_MASK == 0 {
                return Err(fault::BAD_ENTRY);
            }
            table = entry & ADDR_MASK;
        }
        let at = table + pte::offset(iova, 0);
        let leaf = read(mem, at)?;
        if leaf & pte::P == 0 {
            return Err(fault::NOT_PRESENT);
        }
        let pa = leaf & ADDR_MASK;
        if leaf & pte::RESERVED != 0 || pa >> cap::oas(self.cap) != 0 {
            return Err(fault::BAD_ENTRY);
        }
        let r = if leaf & pte::R != 0 { Prot::READ } else { Prot::NONE };
        let w = if leaf & pte::W != 0 { Prot::WRITE } else { Prot::NONE };
        let prot = r | w;
        if !prot.contains(req.access) {
            return Err(fault::PERMISSION);
        }
        let bits = if write { pte::A | pte::D } else { pte::A };
        if leaf & bits != bits {
            mem.fetch_or_u64(PhysAddr(at), bits).map_err(|_| fault::BAD_ENTRY)?;
        }
        insert_bounded(&mut c.iotlb, key, TlbEntry { pa, prot, dirty: write || leaf & pte::D != 0 });
        Ok(target(pa, iova))
    }

    /// Records a refused DMA in the fault queue (§5) and builds the fault to return.
    fn report(&self, mem: &dyn PhysMemory, req: &DmaRequest, reason: Reason) -> Fault {
        let mut r = lock(&self.regs);
        let base = r.fq_base & ADDR_MASK;
        if let (true, Ok(rid)) = (r.ctrl & reg::CTRL_FQ_EN != 0 && base != 0, u16::try_from(req.dev.table_index())) {
            let (head, tail) = (r.fq_head % fault::ENTRIES, r.fq_tail % fault::ENTRIES);
            if (tail + 1) % fault::ENTRIES == head {
                r.status |= reg::STATUS_FQ_OVF;
            } else {
                let rec = base + tail * fault::SIZE;
                let w0 = fault::word0(rid, req.access.read(), req.access.write(), reason);
                if mem.write_u64(PhysAddr(rec + 8), req.iova.raw()).is_ok() && mem.write_u64(PhysAddr(rec), w0).is_ok()
                {
                    r.fq_tail = (tail + 1) % fault::ENTRIES;
                }
            }
        }
        Fault {
            dev: req.dev,
            pasid: req.pasid.into(),
            addr: req.iova,
            access: req.access,
            reason: fault::to_framework(reason),
            page_request: false,
            group: 0,
        }
    }
}

impl UnitModel for AcmeModel {
    fn mmio_read(&self, _mem: &dyn PhysMemory, offset: u64, width: u8) -> Result<u64, HostError> {
        if width != 4 && width != 8 {
            return Err(HostError::new(HostError::BAD_REGISTER, offset));
        }
        let mut r = lock(&self.regs);
        let v = match offset {
            reg::ID => reg::ID_VALUE,
            reg::CAP => self.cap,
            reg::CTRL => r.ctrl,
            reg::STATUS => r.status,
            reg::DT_BASE => r.dt_base,
            reg::INV_ADDR => r.inv_addr,
            reg::INV_SIZE => r.inv_size,
            reg::INV_CMD => 0,
            reg::INV_DONE => {
                self.tick(&mut r);
                r.inv_done
            }
            reg::FQ_BASE => r.fq_base,
            reg::FQ_HEAD => r.fq_head,
            reg::FQ_TAIL => r.fq_tail,
            _ => return Err(HostError::new(HostError::BAD_REGISTER, offset)),
        };
        Ok(if width == 4 { v & U32 } else { v })
    }

    fn mmio_write(&self, _mem: &dyn PhysMemory, offset: u64, width: u8, value: u64) -> Result<(), HostError> {
        if width != 4 && width != 8 {
            return Err(HostError::new(HostError::BAD_REGISTER, offset));
        }
        let mut r = lock(&self.regs);
        match offset {
            reg::ID | reg::CAP | reg::INV_DONE | reg::FQ_TAIL => {}
            reg::CTRL => {
                r.ctrl = value & (reg::CTRL_EN | reg::CTRL_FQ_EN);
                r.status = (r.status & !reg::STATUS_ENS) | (value & reg::CTRL_EN);
            }
            reg::STATUS => r.status &= !(value & (reg::STATUS_FQ_OVF | reg::STATUS_INV_OVF)),
            reg::DT_BASE => r.dt_base = merge(r.dt_base, width, value),
            reg::INV_ADDR => r.inv_addr = merge(r.inv_addr, width, value),
            reg::INV_SIZE => r.inv_size = merge(r.inv_size, width, value),
            reg::INV_CMD => {
                if !matches!(value & inv::OP_MASK, inv::OP_IOTLB | inv::OP_DEVICE | inv::OP_ALL) {
                    return Ok(());
                }
                if r.pending.len() >= inv::MAX_PENDING {
                    r.status |= reg::STATUS_INV_OVF;
                    return Ok(());
                }
                let p = Pending {
                    cmd: value,
                    addr: r.inv_addr,
                    size: r.inv_size,
                    polls_left: self.config.completion_polls,
                };
                r.pending.push_back(p);
                if self.config.completion_polls == 0 {
                    self.complete(&mut r);
                }
            }
            reg::FQ_BASE => r.fq_base = merge(r.fq_base, width, value),
            reg::FQ_HEAD => r.fq_head = value % fault::ENTRIES,
            _ => return Err(HostError::new(HostError::BAD_REGISTER, offset)),
        }
        Ok(())
    }

    fn translate(&self, mem: &dyn PhysMemory, req: &DmaRequest) -> Result<DmaTarget, Fault> {
        let (ctrl, dt_base) = {
            let r = lock(&self.regs);
            (r.ctrl, r.dt_base)
        };
        let result = if ctrl & reg::CTRL_EN == 0 { Err(fault::BLOCKED) } else { self.walk(mem, req, dt_base) };
        // The cache lock is released: reporting takes the register lock.
        result.map_err(|reason| self.report(mem, req, reason))
    }
}

#[cfg(test)]
mod tests;
