//! The mock unit's hardware model: what the unit of `SPEC.md` does with its registers and with
//! the DMA of the devices behind it.
//!
//! [`MockModel`] implements [`UnitModel`]. It reads the structures the driver wrote (device
//! table, PASID tables, descriptors, page tables) through the [`PhysMemory`] it is given, caches
//! them like hardware does, records faults in the fault queue, and sets A/D bits.
//!
//! Behaviour the spec leaves open, as this model settles it:
//! - With CTRL.EN clear, DMA passes through untranslated (`pa == iova`), nothing is cached and
//!   no fault is possible. Caches are not flushed when EN changes.
//! - Caches keep stale entries until an INV_CMD drops them: the IOTLB (by descriptor address
//!   and IOVA page), device entries (by device id), PASID entries (by device id and PASID) and
//!   descriptors (by address). An IOTLB hit reads no memory at all. Entries that are not valid
//!   (V or P clear) are never cached, and neither are faulting walks.
//! - INV_CMD range invalidation for a tag also drops every nested entry whose stage-2 parent
//!   is that tag (their IOVAs are stage-1 addresses the range cannot be compared with).
//! - INV_CMD with an unknown command does nothing and does not count in INV_DONE.
//! - Latency ([`MockModel::with_latency`], `latency = N` in the unit's TOML): with N > 0 an
//!   INV_CMD write only queues the command (with INV_ADDR, INV_SIZE and INV_TAG as they are at
//!   the write). Every register read counts down every queued command; a command completes
//!   (drops its cache entries, then counts in INV_DONE) at the N-th register read after its
//!   write, in the order written, before that read returns, so the N-th read of INV_DONE
//!   already shows it. Until then the caches stay stale: a driver that does not wait for
//!   INV_DONE translates through entries it meant to drop. DMA does not count. Page responses
//!   are not delayed: §1 gives them no completion register to wait for.
//! - A/D: the unit sets A on the leaf of every successful walk, and D on a write when the
//!   descriptor has DIRTY_EN (and CAP.DIRTY). An IOTLB entry made by a read walk of a
//!   dirty-tracking table does not answer writes: a write re-walks the tables (from memory,
//!   so the write sees the current tables) to set D, and replaces the entry.
//! - A page request (a NOT_PRESENT fault with PRI, §6) stays outstanding until a page response
//!   with its device id, PASID and group arrives, or an INV_CMD 3 for the device or an INV_CMD 4
//!   discards it. Meanwhile the model stands in for a device that waits for its answer: DMA
//!   from that device and PASID to that 4 KiB page gets the same page-request fault again,
//!   without a new record. A response that names no outstanding request changes nothing.
//! - Faults carry the DMA's IOVA. Device ids at or above 2^17, an unset DEVTAB, an invalid
//!   device entry and a descriptor pointer of 0 (device word 0 or last PASID level) are
//!   BLOCKED; PASID DMA without CAP.PASID / PASID_EN, beyond the PASID width or to an invalid
//!   PASID entry is BAD_PASID; a physical table pointer of 0, a LEAF bit at level 3, a large
//!   leaf the CAP has no page size for or that is misaligned, an output beyond CAP.OAS, an
//!   unknown TYPE or stage-1 format, and unreadable memory are BAD_ENTRY.
//! - Nested: stage-1 table entries are read at their stage-2 translation (which needs stage-2
//!   read permission); the final stage-1 output is translated with the DMA's access. A is set on
//!   the stage-1 leaf and on each stage-2 leaf used; D on both leaves of a write when the
//!   respective descriptor has DIRTY_EN. x86-64 stage-1 tables are writable only when RW is set
//!   at every level. A stage-1 table may sit at guest-physical 0.
//! - A fault in a stage-2 walk of a nested translation (reading a stage-1 entry, or translating
//!   the stage-1 output) is recorded with S2 (§6) and returned with [`Fault::IN_PARENT`].
//! - §7: VMTAB and the VCMDQ registers exist only with CAP.VIOMMU / CAP.VCMDQ (other units
//!   refuse them as unknown registers). The virtual command queue runs synchronously on the
//!   write of VCMDQ_PROD, at most 2^n commands, and only a VM's own nested descriptors (VMID in
//!   word 3) can be invalidated through it.
//! - Registers are accessed at their offset with width 4 or 8; a 4-byte access reaches the low
//!   half of a 64-bit register (a 4-byte write keeps its high half). Writes to read-only
//!   registers are ignored; write-only registers read as 0.

mod cache;
mod walk;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use ioasis::abi::{Fault, HostError};
use ioasis::platform::{DmaRequest, DmaTarget, PageResponseSeen, PhysMemory, UnitModel};
use ioasis::{Pasid, PhysAddr, Prot};

use crate::format::{cap, desc, devtab, fault, pasidtab, pte, reg, vm, ADDR_MASK, VALID};

pub use cache::CacheStats;
use cache::{Caches, Descriptor, DevEntry, IotlbEntry};
use walk::{Format, Reason, Table};

/// A page response the driver sent through PRESP_DEV / PRESP_CMD (mock spec §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageResponseRecord {
    /// PRESP_DEV bits 31:0: the device id.
    pub dev_id: u32,
    /// PRESP_DEV bits 51:32, when bit 63 is set.
    pub pasid: Option<Pasid>,
    /// PRESP_CMD bits 31:0: the page request group.
    pub group: u32,
    /// PRESP_CMD bits 35:32: the response code.
    pub code: u32,
}

/// Register file (mock spec §1).
#[derive(Debug, Default)]
struct Regs {
    ctrl: u64,
    status: u64,
    devtab: u64,
    inv_addr: u64,
    inv_size: u64,
    inv_tag: u64,
    inv_done: u64,
    fq_base: u64,
    fq_head: u64,
    fq_tail: u64,
    presp_dev: u64,
    vmtab: u64,
    vcmdq_base: u64,
    vcmdq_vm: u64,
    vcmdq_prod: u64,
    vcmdq_cons: u64,
    /// INV_CMD commands written but not completed yet (only with latency).
    pending: VecDeque<PendingInvalidation>,
}

/// An INV_CMD command waiting for its completion (see the latency note in the module doc).
#[derive(Clone, Copy, Debug)]
struct PendingInvalidation {
    cmd: u64,
    addr: u64,
    size: u64,
    tag: u64,
    /// Register reads until it completes.
    reads_left: u32,
}

const U32: u64 = 0xffff_ffff;

/// The mock unit's hardware model (mock spec, `SPEC.md`).
#[derive(Debug)]
pub struct MockModel {
    cap: u64,
    regs: Mutex<Regs>,
    caches: Mutex<Caches>,
    responses: Mutex<Vec<PageResponseRecord>>,
    next_group: AtomicU32,
    /// Register reads an invalidation takes to complete (0: at once).
    latency: u32,
    /// Page requests not answered yet: (device id, PASID, 4 KiB page) → group.
    outstanding: Mutex<HashMap<RequestKey, u32>>,
}

/// An outstanding page request: device id, PASID, 4 KiB page.
type RequestKey = (u32, Option<u32>, u64);

/// Most outstanding page requests the model remembers (past it the oldest-looking is dropped).
const OUTSTANDING_MAX: usize = 4096;

impl Default for MockModel {
    /// A unit with every capability ([`cap::FULL`]).
    fn default() -> Self {
        Self::new(cap::FULL)
    }
}

/// Locks a mutex; every critical section leaves its data consistent, so a poisoned lock (a
/// panic elsewhere while holding it) is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why the translation failed, and whether the fault may become a page request.
struct Failure {
    reason: Reason,
    /// The device entry has PRI_EN and the faulting descriptor has PRI.
    pri: bool,
}

impl From<Reason> for Failure {
    fn from(reason: Reason) -> Self {
        Self { reason, pri: false }
    }
}

impl MockModel {
    /// A unit reporting `cap` in its CAP register (§1.1) and behaving accordingly.
    pub fn new(cap: u64) -> Self {
        Self {
            cap,
            regs: Mutex::new(Regs::default()),
            caches: Mutex::new(Caches::default()),
            responses: Mutex::new(Vec::new()),
            next_group: AtomicU32::new(1),
            latency: 0,
            outstanding: Mutex::new(HashMap::new()),
        }
    }

    /// The same unit, completing each INV_CMD only at the `latency`-th register read after its
    /// write (0: at once; see the module doc).
    pub fn with_latency(self, latency: u32) -> Self {
        Self { latency, ..self }
    }

    /// Register reads an invalidation takes to complete.
    pub fn latency(&self) -> u32 {
        self.latency
    }

    /// Counts one register read down for every queued invalidation, and completes those that
    /// are due (in order). Takes the register lock held by the caller and gives it back.
    fn tick<'a>(&'a self, mut r: MutexGuard<'a, Regs>) -> MutexGuard<'a, Regs> {
        if r.pending.is_empty() {
            return r;
        }
        for p in r.pending.iter_mut() {
            p.reads_left = p.reads_left.saturating_sub(1);
        }
        let mut due = Vec::new();
        while r.pending.front().is_some_and(|p| p.reads_left == 0) {
            due.extend(r.pending.pop_front());
        }
        if due.is_empty() {
            return r;
        }
        // Never hold the register lock while taking the cache lock.
        drop(r);
        let done = due.iter().filter(|p| self.invalidate(p.cmd, p.addr, p.size, p.tag)).count() as u64;
        let mut r = lock(&self.regs);
        r.inv_done = r.inv_done.wrapping_add(done);
        r
    }

    /// The CAP register.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// Page responses received so far, oldest first.
    pub fn page_responses(&self) -> Vec<PageResponseRecord> {
        lock(&self.responses).clone()
    }

    /// Sizes and hit counts of the caches.
    pub fn cache_stats(&self) -> CacheStats {
        lock(&self.caches).stats()
    }

    fn has(&self, bit: u64) -> bool {
        self.cap & bit != 0
    }

    /// Runs INV_CMD `cmd`; false for an unknown command.
    fn invalidate(&self, cmd: u64, addr: u64, size: u64, tag: u64) -> bool {
        let mut c = lock(&self.caches);
        match cmd {
            reg::INV_IOTLB_RANGE => c.invalidate_iotlb_range(tag, addr, size),
            reg::INV_IOTLB_ALL => c.invalidate_iotlb_all(),
            // A tag that is no device id matches nothing.
            reg::INV_DEVICE => {
                if let Ok(id) = u32::try_from(tag) {
                    c.invalidate_device(id);
                    lock(&self.outstanding).retain(|&(dev, _, _), _| dev != id);
                }
            }
            reg::INV_ALL => {
                c.invalidate_all();
                lock(&self.outstanding).clear();
            }
            _ => return false,
        }
        true
    }

    /// Reads the device entry of `id` (§2), from the cache or memory.
    fn device_entry(&self, c: &mut Caches, mem: &dyn PhysMemory, devtab_reg: u64, id: u32) -> Result<DevEntry, Reason> {
        if let Some(e) = c.device(id) {
            return Ok(e);
        }
        let root = devtab_reg & ADDR_MASK;
        if u64::from(id) >= devtab::MAX_IDS || root == 0 {
            return Err(Fault::BLOCKED);
        }
        let l1 = read(mem, root + devtab::l1_offset(id))?;
        if l1 & VALID == 0 {
            return Err(Fault::BLOCKED);
        }
        let l2 = l1 & ADDR_MASK;
        if l2 == 0 {
            return Err(Fault::BAD_ENTRY);
        }
        let at = l2 + devtab::l2_offset(id);
        let e = DevEntry { w0: read(mem, at)?, w1: read(mem, at + 8)? };
        if e.w0 & VALID == 0 {
            return Err(Fault::BLOCKED);
        }
        c.insert_device(id, e);
        Ok(e)
    }

    /// The descriptor address for `pasid` of device `id` (§3), from the cache or memory.
    fn pasid_descriptor(
        &self,
        c: &mut Caches,
        mem: &dyn PhysMemory,
        id: u32,
        dev: &DevEntry,
        pasid: u32,
    ) -> Result<u64, Reason> {
        let width = (dev.w1 & devtab::PASID_BITS_MASK).min(u64::from(cap::pasid_bits(self.cap)));
        if !self.has(cap::PASID) || dev.w0 & devtab::PASID_EN == 0 || u64::from(pasid) >> width != 0 {
            return Err(Fault::BAD_PASID);
        }
        if let Some(e) = c.pasid(id, pasid) {
            return Ok(e & ADDR_MASK);
        }
        let mut table = dev.w1 & ADDR_MASK;
        for level in (0..pasidtab::LEVELS).rev() {
            if table == 0 {
                return Err(Fault::BAD_ENTRY);
            }
            let e = read(mem, table + pasidtab::offset(pasid, level))?;
            if e & VALID == 0 {
                return Err(Fault::BAD_PASID);
            }
            if level == 0 {
                c.insert_pasid(id, pasid, e);
                return Ok(e & ADDR_MASK);
            }
            table = e & ADDR_MASK;
        }
        Err(Fault::BAD_ENTRY)
    }

    /// The descriptor at `addr` (§4), from the cache or memory.
    fn descriptor(&self, c: &mut Caches, mem: &dyn PhysMemory, addr: u64) -> Result<Descriptor, Reason> {
        if let Some(d) = c.descriptor(addr) {
            return Ok(d);
        }
        if addr == 0 || addr % desc::SIZE != 0 {
            return Err(Fault::BAD_ENTRY);
        }
        let d = [read(mem, addr)?, read(mem, addr + 8)?, read(mem, addr + 16)?, read(mem, addr + 24)?];
        c.insert_descriptor(addr, d);
        Ok(d)
    }

    /// The page table of a paging descriptor (a physical table).
    fn paging_table(&self, d: &Descriptor) -> Result<Table, Reason> {
        if d[0] & desc::TYPE_MASK != desc::TYPE_PAGING || d[1] & ADDR_MASK == 0 {
            return Err(Fault::BAD_ENTRY);
        }
        Ok(Table {
            root: d[1] & ADDR_MASK,
            levels: ((d[0] >> desc::LEVELS_SHIFT) & 0xff) as u32,
            ias: ((d[0] >> desc::IAS_SHIFT) & 0xff) as u32,
            format: Format::Mock,
            dirty: d[0] & desc::DIRTY_EN != 0 && self.has(cap::DIRTY),
            oas: Some(u32::from(cap::oas(self.cap))).filter(|&o| o > 0),
        })
    }

    /// Walks the tables of a paging or nested descriptor for `iova`.
    fn walk_hwpt(
        &self,
        c: &mut Caches,
        mem: &dyn PhysMemory,
        d: &Descriptor,
        iova: u64,
        access: Prot,
    ) -> Result<IotlbEntry, Reason> {
        c.count_walk();
        if d[0] & desc::TYPE_MASK == desc::TYPE_PAGING {
            let t = self.paging_table(d)?;
            let l = walk::walk(mem, self.cap, &t, iova, access, &mut physical)?;
            return Ok(IotlbEntry { pa: l.base, size: l.size, prot: l.prot, dirty_done: l.dirty_done, parent: None });
        }
        // Nested (the caller checked the type).
        let parent = d[2] & ADDR_MASK;
        if !self.has(cap::NEST) || parent == 0 {
            return Err(Fault::BAD_ENTRY);
        }
        let pd = self.descriptor(c, mem, parent)?;
        let s2 = self.paging_table(&pd)?;
        let format = match d[3] & 0xff {
            desc::S1_MOCK if self.has(cap::S1_MOCK) => Format::Mock,
            desc::S1_X86_64 if self.has(cap::S1_X86_64) => Format::X86,
            _ => return Err(Fault::BAD_ENTRY),
        };
        let s1 = Table {
            root: d[1] & ADDR_MASK,
            levels: ((d[0] >> desc::LEVELS_SHIFT) & 0xff) as u32,
            ias: ((d[0] >> desc::IAS_SHIFT) & 0xff) as u32,
            format,
            dirty: d[0] & desc::DIRTY_EN != 0 && self.has(cap::DIRTY),
            oas: None,
        };
        // Every stage-1 entry is read at its stage-2 translation.
        // §6: a fault in a stage-2 walk is flagged S2 (the host's, not the guest's).
        let s2_fault = |r: Reason| r | Fault::IN_PARENT;
        let mut through_s2 = |gpa: u64| {
            walk::walk(mem, self.cap, &s2, gpa, Prot::READ, &mut physical).map(|l| l.output(gpa)).map_err(s2_fault)
        };
        let l1 = walk::walk(mem, self.cap, &s1, iova, access, &mut through_s2)?;
        let gpa = l1.output(iova);
        let l2 = walk::walk(mem, self.cap, &s2, gpa, access, &mut physical).map_err(s2_fault)?;
        let size = l1.size.min(l2.size);
        Ok(IotlbEntry {
            pa: l2.output(gpa) & !(size - 1),
            size,
            prot: Prot(l1.prot.0 & l2.prot.0),
            dirty_done: l1.dirty_done && l2.dirty_done,
            parent: Some(parent),
        })
    }

    /// Translation with CTRL.EN set.
    fn translate_enabled(&self, mem: &dyn PhysMemory, req: &DmaRequest, devtab_reg: u64) -> Result<DmaTarget, Failure> {
        let id = req.dev.table_index();
        let iova = req.iova.raw();
        let mut c = lock(&self.caches);
        let dev = self.device_entry(&mut c, mem, devtab_reg, id)?;
        let desc_addr = match req.pasid {
            None => dev.w0 & ADDR_MASK,
            Some(p) => self.pasid_descriptor(&mut c, mem, id, &dev, p.0)?,
        };
        if desc_addr == 0 {
            return Err(Fault::BLOCKED.into());
        }
        let d = self.descriptor(&mut c, mem, desc_addr)?;
        let pri = dev.w0 & devtab::PRI_EN != 0 && d[0] & desc::PRI != 0 && self.has(cap::PRI);
        let fail = |reason| Failure { reason, pri };
        match d[0] & desc::TYPE_MASK {
            desc::TYPE_BLOCKING => Err(fail(Fault::BLOCKED)),
            desc::TYPE_IDENTITY if self.has(cap::IDENTITY) => {
                let oas = u32::from(cap::oas(self.cap));
                if oas > 0 && oas < 64 && iova >> oas != 0 {
                    return Err(fail(Fault::ADDRESS_SIZE));
                }
                Ok(passthrough(iova))
            }
            desc::TYPE_PAGING | desc::TYPE_NESTED => {
                if let Some(e) = c.iotlb_lookup(desc_addr, iova) {
                    if !e.prot.contains(req.access) {
                        return Err(fail(Fault::PERMISSION));
                    }
                    if e.dirty_done || !req.access.write() {
                        c.count_hit();
                        return Ok(target(&e, iova));
                    }
                }
                let e = self.walk_hwpt(&mut c, mem, &d, iova, req.access).map_err(fail)?;
                c.iotlb_insert(desc_addr, iova, e);
                Ok(target(&e, iova))
            }
            _ => Err(fail(Fault::BAD_ENTRY)),
        }
    }

    /// §7: runs the virtual command queue from VCMDQ_CONS up to VCMDQ_PROD; stops with ERR at a
    /// command it refuses or cannot read.
    fn run_vcmdq(&self, mem: &dyn PhysMemory) {
        let (base, vmreg, prod, cons, vmtab, devtab_reg) = {
            let r = lock(&self.regs);
            (r.vcmdq_base, r.vcmdq_vm, r.vcmdq_prod, r.vcmdq_cons, r.vmtab, r.devtab)
        };
        if vmreg & reg::VCMDQ_VM_EN == 0 || cons & reg::VCMDQ_CONS_ERR != 0 {
            return;
        }
        let log2 = (base & 0x1f).min(vm::CMDQ_MAX_LOG2);
        let n = 1u64 << log2;
        let (mut idx, end) = (cons % n, prod % n);
        let vmid = vmreg & 0xff;
        let mut c = lock(&self.caches);
        let vm_entry = (|| -> Result<(u64, Table), Reason> {
            let table = vmtab & ADDR_MASK;
            if vmid == 0 || table == 0 {
                return Err(Fault::BAD_ENTRY);
            }
            let at = table + vmid * vm::ENTRY_SIZE;
            let (w0, w1) = (read(mem, at)?, read(mem, at + 8)?);
            if w0 & VALID == 0 {
                return Err(Fault::BAD_ENTRY);
            }
            let d = self.descriptor(&mut c, mem, w1 & ADDR_MASK)?;
            Ok((w0 & ADDR_MASK, self.paging_table(&d)?))
        })();
        let mut err = vm_entry.is_err();
        if let Ok((ids, s2)) = vm_entry {
            // At most n commands: the indices are modulo n.
            for _ in 0..n {
                if idx == end {
                    break;
                }
                let gpa = (base & ADDR_MASK) + idx * vm::CMD_SIZE;
                let done = walk::walk(mem, self.cap, &s2, gpa, Prot::READ, &mut physical)
                    .map(|l| l.output(gpa))
                    .and_then(|pa| Ok([read(mem, pa)?, read(mem, pa + 8)?, read(mem, pa + 16)?, read(mem, pa + 24)?]))
                    .map_err(|_| ())
                    .and_then(|words| self.virtual_command(&mut c, mem, devtab_reg, vmid, ids, words));
                if done.is_err() {
                    err = true;
                    break;
                }
                idx = (idx + 1) % n;
            }
        }
        drop(c);
        let mut r = lock(&self.regs);
        r.vcmdq_cons = idx | if err { reg::VCMDQ_CONS_ERR } else { 0 };
    }

    /// §7: one virtual command of VMID `vmid`, its virtual id looked up in the table at `ids`.
    fn virtual_command(
        &self,
        c: &mut Caches,
        mem: &dyn PhysMemory,
        devtab_reg: u64,
        vmid: u64,
        ids: u64,
        [w0, addr, size, w3]: [u64; 4],
    ) -> Result<(), ()> {
        if w0 & vm::W0_RESERVED != 0 || w3 != 0 {
            return Err(());
        }
        let op = w0 & vm::OP_MASK;
        if op == vm::OP_SYNC {
            return Ok(());
        }
        let virt = w0 >> vm::VIRT_SHIFT;
        if (op != vm::OP_STAGE1_RANGE && op != vm::OP_DEVICE) || virt >= vm::VIRT_IDS {
            return Err(());
        }
        let e = read(mem, ids + virt * 8).map_err(|_| ())?;
        if e & VALID == 0 {
            return Err(());
        }
        let pdev = ((e >> vm::PDEV_SHIFT) & vm::PDEV_MASK) as u32;
        if op == vm::OP_DEVICE {
            c.invalidate_device(pdev);
            return Ok(());
        }
        if addr & 0xfff != 0 || size & 0xfff != 0 {
            return Err(());
        }
        let dev = self.device_entry(c, mem, devtab_reg, pdev).map_err(|_| ())?;
        let desc_addr = if w0 & vm::PASID_V != 0 {
            let pasid = ((w0 >> vm::PASID_SHIFT) & 0xf_ffff) as u32;
            self.pasid_descriptor(c, mem, pdev, &dev, pasid).map_err(|_| ())?
        } else {
            dev.w0 & ADDR_MASK
        };
        let d = self.descriptor(c, mem, desc_addr).map_err(|_| ())?;
        // Only the VM's own nested descriptors (§4 word 3 VMID).
        if d[0] & desc::TYPE_MASK != desc::TYPE_NESTED || (d[3] >> desc::VMID_SHIFT) & 0xff != vmid {
            return Err(());
        }
        c.invalidate_iotlb_range(desc_addr, addr, size);
        Ok(())
    }

    /// Records a fault (§6) and builds the [`Fault`] to return.
    fn report(&self, mem: &dyn PhysMemory, req: &DmaRequest, f: Failure) -> Fault {
        let page_request = f.pri && f.reason == Fault::NOT_PRESENT;
        let group = if page_request { self.next_group.fetch_add(1, Ordering::Relaxed) } else { 0 };
        let mut regs = lock(&self.regs);
        let base = regs.fq_base & ADDR_MASK;
        if regs.ctrl & reg::CTRL_FQEN != 0 && base != 0 {
            let n = u64::from(fault::ENTRIES);
            let (head, tail) = (regs.fq_head % n, regs.fq_tail % n);
            if (tail + 1) % n == head {
                regs.status |= reg::STATUS_FQOF;
            } else {
                let mut w0 = u64::from(req.dev.table_index()) | (u64::from(f.reason & 0xff) << fault::REASON_SHIFT);
                if let Some(p) = req.pasid {
                    w0 |= (u64::from(p.0 & 0xf_ffff) << fault::PASID_SHIFT) | fault::PASID_V;
                }
                if page_request {
                    w0 |= fault::PAGE_REQ;
                }
                if req.access.write() {
                    w0 |= fault::WRITE;
                }
                if req.access.read() {
                    w0 |= fault::READ;
                }
                // Within the 4 KiB page at `base` (< 2^52): no overflow.
                let rec = base + tail * fault::SIZE;
                let w3 = if f.reason & Fault::IN_PARENT != 0 { fault::S2 } else { 0 };
                let words = [(8, req.iova.raw()), (16, u64::from(group)), (24, w3), (0, w0)];
                if words.iter().all(|&(off, v)| mem.write_u64(PhysAddr(rec + off), v).is_ok()) {
                    regs.fq_tail = (tail + 1) % n;
                    if page_request {
                        let mut o = lock(&self.outstanding);
                        if o.len() >= OUTSTANDING_MAX {
                            if let Some(k) = o.keys().next().copied() {
                                o.remove(&k);
                            }
                        }
                        o.insert(outstanding_key(req), group);
                    }
                }
            }
        }
        Fault {
            dev: req.dev,
            pasid: req.pasid.into(),
            addr: req.iova,
            access: req.access,
            reason: f.reason,
            page_request,
            group,
        }
    }
}

/// The key of a page request in [`MockModel::outstanding`]: device id, PASID, 4 KiB page.
fn outstanding_key(req: &DmaRequest) -> RequestKey {
    (req.dev.table_index(), req.pasid.map(|p| p.0), req.iova.raw() & !0xfff)
}

/// Tables at physical addresses are read where they are.
fn physical(pa: u64) -> Result<u64, Reason> {
    Ok(pa)
}

/// Reads a table word; unreadable memory is a malformed entry.
fn read(mem: &dyn PhysMemory, pa: u64) -> Result<u64, Reason> {
    mem.read_u64(PhysAddr(pa)).map_err(|_| Fault::BAD_ENTRY)
}

/// An untranslated access: `pa == iova`, up to the next 1 GiB boundary.
fn passthrough(iova: u64) -> DmaTarget {
    let span = pte::span(2);
    DmaTarget { pa: PhysAddr(iova), remaining: span - (iova & (span - 1)) }
}

/// The target of `iova` in a cached page.
fn target(e: &IotlbEntry, iova: u64) -> DmaTarget {
    let off = iova & (e.size - 1);
    DmaTarget { pa: PhysAddr(e.pa | off), remaining: e.size - off }
}

/// Merges a register write of `width` into a 64-bit register.
fn merge(old: u64, width: u8, value: u64) -> u64 {
    if width == 4 {
        (old & !U32) | (value & U32)
    } else {
        value
    }
}

impl UnitModel for MockModel {
    fn mmio_read(&self, _mem: &dyn PhysMemory, offset: u64, width: u8) -> Result<u64, HostError> {
        if width != 4 && width != 8 {
            return Err(HostError::new(HostError::BAD_REGISTER, offset));
        }
        let r = self.tick(lock(&self.regs));
        let v = match offset {
            reg::ID => reg::ID_VALUE,
            reg::VERSION => 1,
            reg::CAP => self.cap,
            reg::CTRL => r.ctrl,
            reg::STATUS => r.status,
            reg::DEVTAB => r.devtab,
            reg::INV_ADDR => r.inv_addr,
            reg::INV_SIZE => r.inv_size,
            reg::INV_TAG => r.inv_tag,
            reg::INV_CMD | reg::PRESP_CMD => 0,
            reg::INV_DONE => r.inv_done,
            reg::FQ_BASE => r.fq_base,
            reg::FQ_HEAD => r.fq_head,
            reg::FQ_TAIL => r.fq_tail,
            reg::PRESP_DEV => r.presp_dev,
            reg::VMTAB if self.has(cap::VIOMMU) => r.vmtab,
            reg::VCMDQ_BASE if self.has(cap::VCMDQ) => r.vcmdq_base,
            reg::VCMDQ_VM if self.has(cap::VCMDQ) => r.vcmdq_vm,
            reg::VCMDQ_PROD if self.has(cap::VCMDQ) => r.vcmdq_prod,
            reg::VCMDQ_CONS if self.has(cap::VCMDQ) => r.vcmdq_cons,
            _ => return Err(HostError::new(HostError::BAD_REGISTER, offset)),
        };
        Ok(if width == 4 { v & U32 } else { v })
    }

    fn mmio_write(&self, mem: &dyn PhysMemory, offset: u64, width: u8, value: u64) -> Result<(), HostError> {
        if width != 4 && width != 8 {
            return Err(HostError::new(HostError::BAD_REGISTER, offset));
        }
        let mut r = lock(&self.regs);
        match offset {
            reg::ID | reg::VERSION | reg::CAP | reg::STATUS | reg::INV_DONE | reg::FQ_TAIL => {}
            reg::CTRL => {
                r.ctrl = value & (reg::CTRL_EN | reg::CTRL_FQEN);
                r.status = (r.status & !reg::STATUS_ENS) | (value & reg::CTRL_EN);
                if value & reg::CTRL_FQOF_CLEAR != 0 {
                    r.status &= !reg::STATUS_FQOF;
                }
            }
            reg::DEVTAB => r.devtab = merge(r.devtab, width, value),
            reg::INV_ADDR => r.inv_addr = merge(r.inv_addr, width, value),
            reg::INV_SIZE => r.inv_size = merge(r.inv_size, width, value),
            reg::INV_TAG => r.inv_tag = merge(r.inv_tag, width, value),
            reg::FQ_BASE => r.fq_base = merge(r.fq_base, width, value),
            reg::FQ_HEAD => r.fq_head = value & U32,
            reg::PRESP_DEV => r.presp_dev = merge(r.presp_dev, width, value),
            reg::VMTAB if self.has(cap::VIOMMU) => r.vmtab = merge(r.vmtab, width, value),
            reg::VCMDQ_BASE if self.has(cap::VCMDQ) => r.vcmdq_base = merge(r.vcmdq_base, width, value),
            reg::VCMDQ_VM if self.has(cap::VCMDQ) => {
                // §7: writing VCMDQ_VM clears ERR.
                r.vcmdq_vm = merge(r.vcmdq_vm, width, value);
                r.vcmdq_cons &= !reg::VCMDQ_CONS_ERR;
            }
            reg::VCMDQ_CONS if self.has(cap::VCMDQ) => {}
            reg::VCMDQ_PROD if self.has(cap::VCMDQ) => {
                r.vcmdq_prod = value & U32;
                drop(r);
                self.run_vcmdq(mem);
            }
            reg::INV_CMD if self.latency > 0 => {
                let cmd = value & U32;
                // An unknown command does nothing and never completes.
                if (reg::INV_IOTLB_RANGE..=reg::INV_ALL).contains(&cmd) {
                    let (addr, size, tag) = (r.inv_addr, r.inv_size, r.inv_tag);
                    r.pending.push_back(PendingInvalidation { cmd, addr, size, tag, reads_left: self.latency });
                }
            }
            reg::INV_CMD => {
                let (addr, size, tag) = (r.inv_addr, r.inv_size, r.inv_tag);
                // Never hold the register lock while taking the cache lock.
                drop(r);
                if self.invalidate(value & U32, addr, size, tag) {
                    let mut r = lock(&self.regs);
                    r.inv_done = r.inv_done.wrapping_add(1);
                }
            }
            reg::PRESP_CMD => {
                let v = if width == 4 { value & U32 } else { value };
                let dev = r.presp_dev;
                drop(r);
                let pasid = (dev >> 63 != 0).then_some(Pasid(((dev >> 32) & 0xf_ffff) as u32));
                let rec = PageResponseRecord {
                    dev_id: (dev & U32) as u32,
                    pasid,
                    group: (v & U32) as u32,
                    code: ((v >> 32) & 0xf) as u32,
                };
                lock(&self.outstanding)
                    .retain(|&(d, p, _), g| !(d == rec.dev_id && p == rec.pasid.map(|x| x.0) && *g == rec.group));
                lock(&self.responses).push(rec);
            }
            _ => return Err(HostError::new(HostError::BAD_REGISTER, offset)),
        }
        Ok(())
    }

    fn page_responses(&self) -> Option<Vec<PageResponseSeen>> {
        let seen = |r: &PageResponseRecord| PageResponseSeen {
            source: r.dev_id,
            pasid: r.pasid,
            group: r.group,
            code: r.code,
        };
        Some(lock(&self.responses).iter().map(seen).collect())
    }

    fn translate(&self, mem: &dyn PhysMemory, req: &DmaRequest) -> Result<DmaTarget, Fault> {
        let (ctrl, devtab_reg) = {
            let r = lock(&self.regs);
            (r.ctrl, r.devtab)
        };
        if ctrl & reg::CTRL_EN == 0 {
            return Ok(passthrough(req.iova.raw()));
        }
        // The device waits for the answer to its page request before it retries the page.
        if let Some(&group) = lock(&self.outstanding).get(&outstanding_key(req)) {
            return Err(Fault {
                dev: req.dev,
                pasid: req.pasid.into(),
                addr: req.iova,
                access: req.access,
                reason: Fault::NOT_PRESENT,
                page_request: true,
                group,
            });
        }
        self.translate_enabled(mem, req, devtab_reg).map_err(|f| self.report(mem, req, f))
    }
}
