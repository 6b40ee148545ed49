//! Access objects: software consumers of an IOAS (iommufd's `IOMMUFD_OBJ_ACCESS`), such as an
//! emulated or mediated device, or a VMM's vIOMMU model reading guest memory.
//!
//! An access pins pages of its IOAS ([`Context::access_pin`]) to use their physical addresses
//! for as long as it likes, or copies small amounts through the IOAS's areas
//! ([`Context::access_read`], [`Context::access_write`]). Pins are counted per 4 KiB page.
//!
//! ## Unmap over pinned pages
//! An unmap (and anything else that removes areas) first claims its range in the IOAS's
//! bookkeeping; from then on no page there can be pinned. If pages in the range are pinned,
//! each access holding some is asked to unpin through [`AccessOps::unmap`], called with no
//! framework lock held; then the pins are checked again. Pins left: the claim is aborted, the
//! unmap is refused with [`Error::Pinned`], and no backend has been called. No pins: the unmap
//! goes on as usual. With no pin on the IOAS the check is one emptiness test under the lock the
//! unmap takes anyway.
//!
//! Locks: an access's own state, then its IOAS's map lock. The unmap path takes the map lock
//! alone and never holds it while calling back.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::addr::{Iova, IovaRange, PhysAddr, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::ioas::{user_range, Area, IovaMap, UnmapPlan};
use crate::object::{AccessId, IoasId, ObjectId};
use crate::prot::Prot;

use super::{lock, Context, IoasObj};

/// The consumer behind an access object.
pub trait AccessOps: Send + Sync {
    /// `[iova, iova+len)` is about to go away (an unmap, or the access being moved to another
    /// IOAS or destroyed): unpin every page pinned there ([`Context::access_unpin`]), after
    /// finishing with it. Pages left pinned make the operation fail.
    ///
    /// Called with no framework lock held, from the thread doing the operation. It may call
    /// [`Context::access_unpin`], [`Context::access_read`] and the like, but not the context's
    /// control operations (create, destroy, replace, attach): a replace or destroy of the
    /// access itself calls it while holding the context's control lock.
    fn unmap(&self, iova: Iova, len: u64);
}

/// Most pages one [`Context::access_pin`] may pin (4 GiB).
pub const MAX_PIN_PAGES: u64 = 1 << 20;
/// Most bytes one [`Context::access_read`] or [`Context::access_write`] may copy.
pub const MAX_RW_BYTES: usize = 1 << 20;

/// An access object.
pub(crate) struct AccessObj {
    pub id: AccessId,
    pub ops: Arc<dyn AccessOps>,
    state: Mutex<AccessState>,
}

struct AccessState {
    ioas: Arc<IoasObj>,
    /// Destroyed: refuse everything (a caller may still hold the object).
    dead: bool,
}

impl AccessObj {
    /// The IOAS it uses now.
    pub fn ioas_id(&self) -> IoasId {
        lock(&self.state).ioas.id
    }
}

/// The pins of one IOAS's pages, and the accesses of the IOAS. Lives in the IOAS's
/// [`IovaMap`], under its lock, so that a claim and the pin check are one step.
#[derive(Default)]
pub(crate) struct Pins {
    /// (page IOVA, access) → pin count.
    pages: BTreeMap<(u64, ObjectId), u64>,
    /// The accesses using the IOAS, with their callbacks.
    ops: BTreeMap<ObjectId, Arc<dyn AccessOps>>,
}

impl fmt::Debug for Pins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pins").field("pages", &self.pages).field("accesses", &self.ops.keys()).finish()
    }
}

/// The first byte of the last page of `r`.
fn last_page(r: &IovaRange) -> u64 {
    r.last.0 & !(PAGE_SIZE - 1)
}

impl Pins {
    /// Pins of every access on the pages of `r`.
    fn in_range(&self, r: &IovaRange) -> impl Iterator<Item = (u64, ObjectId, u64)> + '_ {
        let lo = (r.start.0 & !(PAGE_SIZE - 1), ObjectId(0));
        let hi = (last_page(r), ObjectId(u64::MAX));
        self.pages.range(lo..=hi).map(|(&(p, a), &n)| (p, a, n))
    }

    /// An access holding a pin in one of `pieces`.
    fn holder_in(&self, pieces: &[Area]) -> Option<ObjectId> {
        if self.pages.is_empty() {
            return None;
        }
        pieces.iter().find_map(|a| self.in_range(&a.range).next().map(|(_, id, _)| id))
    }

    /// Is a page of `pieces` pinned? (The unmap path's check: one emptiness test when nothing
    /// is pinned on the IOAS.)
    pub fn any_in(&self, pieces: &[Area]) -> bool {
        self.holder_in(pieces).is_some()
    }

    /// The callbacks to call before `pieces` go: (access, callback, piece) for each piece in
    /// which the access holds a pin.
    fn holders(&self, pieces: &[Area]) -> Vec<(ObjectId, Arc<dyn AccessOps>, IovaRange)> {
        let mut out = Vec::new();
        for a in pieces {
            let mut ids: Vec<ObjectId> = self.in_range(&a.range).map(|(_, id, _)| id).collect();
            ids.sort_unstable();
            ids.dedup();
            for id in ids {
                match self.ops.get(&id) {
                    Some(ops) => out.push((id, ops.clone(), a.range)),
                    None => tracing::error!(access = %id, "pins of an access the IOAS does not know"),
                }
            }
        }
        out
    }

    /// From the first to the last page `access` has pinned.
    fn span_of(&self, access: ObjectId) -> Option<IovaRange> {
        let mut pages = self.pages.keys().filter(|(_, a)| *a == access).map(|(p, _)| *p);
        let first = pages.next()?;
        let last = pages.next_back().unwrap_or(first);
        Some(IovaRange { start: Iova(first), last: Iova(last + (PAGE_SIZE - 1)) })
    }

    /// Adds one pin of `access` on every page of `r` (checked by the caller).
    pub(super) fn pin(&mut self, access: ObjectId, r: &IovaRange) {
        let mut page = r.start.0;
        loop {
            *self.pages.entry((page, access)).or_insert(0) += 1;
            if page == last_page(r) {
                break;
            }
            page += PAGE_SIZE;
        }
    }

    /// Drops one pin of `access` on every page of `r`; all or nothing.
    fn unpin(&mut self, access: ObjectId, r: &IovaRange) -> Result<()> {
        let pages = (last_page(r) - r.start.0) / PAGE_SIZE + 1;
        let held = if pages > self.pages.len() as u64 {
            0
        } else {
            self.in_range(r).filter(|(_, a, _)| *a == access).count() as u64
        };
        if held != pages {
            return Err(Error::NotPinned { range: *r, access });
        }
        let mut page = r.start.0;
        loop {
            if let Some(n) = self.pages.get_mut(&(page, access)) {
                *n -= 1;
                if *n == 0 {
                    self.pages.remove(&(page, access));
                }
            }
            if page == last_page(r) {
                break;
            }
            page += PAGE_SIZE;
        }
        Ok(())
    }

    /// Forgets every pin of `access` (teardown).
    fn drop_access(&mut self, access: ObjectId) {
        self.pages.retain(|(_, a), _| *a != access);
    }

    /// A holder that is not an access object (a hardware queue the unit reads): its pins on
    /// `r` and a callback that cannot let go, so unmaps over `r` are refused while it lasts.
    pub(super) fn hold(&mut self, holder: ObjectId, r: &IovaRange, ops: Arc<dyn AccessOps>) {
        self.ops.insert(holder, ops);
        self.pin(holder, r);
    }

    /// Releases what [`Pins::hold`] took.
    pub(super) fn release(&mut self, holder: ObjectId) {
        self.drop_access(holder);
        self.ops.remove(&holder);
    }
}

/// Called by an unmap whose claimed `plan` covers pinned pages: asks each holder to unpin
/// (without any lock held), then checks again. Pins left: the claim is aborted and the unmap
/// refused with [`Error::Pinned`].
pub(super) fn unpin_for_unmap(ioas: &IoasObj, plan: &UnmapPlan) -> Result<()> {
    let calls = lock(&ioas.map).pins.holders(&plan.gone);
    for (id, ops, r) in &calls {
        tracing::debug!(access = %id, ioas = %ioas.id, range = %r, "asking an access to unpin before an unmap");
        ops.unmap(r.start, r.len());
    }
    let mut m = lock(&ioas.map);
    if let Some(access) = m.pins.holder_in(&plan.gone) {
        m.abort_unmap(plan);
        tracing::debug!(%access, ioas = %ioas.id, range = %plan.range, "unmap refused: pages still pinned");
        return Err(Error::Pinned { range: plan.range, access });
    }
    Ok(())
}

fn rw_range(iova: Iova, len: usize) -> Result<IovaRange> {
    if len == 0 {
        return Err(Error::ZeroLength);
    }
    if len > MAX_RW_BYTES {
        return Err(Error::TooLarge { what: "access copy", len: len as u64, max: MAX_RW_BYTES as u64 });
    }
    IovaRange::new(iova, len as u64).ok_or(Error::Overflow { start: iova, len: len as u64 })
}

fn platform_err(op: &'static str) -> impl Fn(crate::abi::HostError) -> Error {
    move |e| Error::Host { host: "platform", op, message: e.to_string() }
}

impl Context {
    pub(crate) fn access_obj(&self, id: AccessId) -> Result<Arc<AccessObj>> {
        self.read().accesses.get(&id.0).cloned().ok_or(Error::NoSuchObject { id: id.0, kind: "access" })
    }

    /// Runs `f` on the bookkeeping of the IOAS `access` uses now, under its lock (and the
    /// access's, so that the access cannot move meanwhile).
    fn with_map<R>(&self, access: AccessId, f: impl FnOnce(&mut IovaMap) -> Result<R>) -> Result<R> {
        let a = self.access_obj(access)?;
        let st = lock(&a.state);
        if st.dead {
            return Err(Error::NoSuchObject { id: access.0, kind: "access" });
        }
        let mut m = lock(&st.ioas.map);
        f(&mut m)
    }

    /// A new access object on `ioas`; `ops` is told when pinned pages are about to go.
    pub fn create_access(&self, ioas: IoasId, ops: Arc<dyn AccessOps>) -> Result<AccessId> {
        let _c = self.control();
        let ioas = self.ioas(ioas)?;
        let id = AccessId(self.new_id());
        lock(&ioas.map).pins.ops.insert(id.0, ops.clone());
        tracing::debug!(access = %id, ioas = %ioas.id, "access created");
        let obj = AccessObj { id, ops, state: Mutex::new(AccessState { ioas, dead: false }) };
        self.write().accesses.insert(id.0, Arc::new(obj));
        Ok(id)
    }

    /// The IOAS an access uses.
    pub fn access_ioas(&self, access: AccessId) -> Result<IoasId> {
        Ok(self.access_obj(access)?.ioas_id())
    }

    /// Pins `[iova, iova+len)` (4 KiB-aligned, at most [`MAX_PIN_PAGES`] pages) for `prot`
    /// and returns the physical address of each of its pages, in order. The range must be
    /// mapped without a gap by areas that allow `prot` ([`Error::NotMapped`],
    /// [`Error::Denied`]), none of them being changed now ([`Error::InFlight`]). Each page
    /// gets one more pin: it stays mapped, at the same physical address, until unpinned as
    /// often as pinned. All or nothing.
    pub fn access_pin(&self, access: AccessId, iova: Iova, len: u64, prot: Prot) -> Result<Vec<PhysAddr>> {
        let r = user_range(iova, len)?;
        let pages = len / PAGE_SIZE;
        if pages > MAX_PIN_PAGES {
            return Err(Error::TooLarge { what: "pin", len, max: MAX_PIN_PAGES * PAGE_SIZE });
        }
        if prot.is_none() {
            return Err(Error::Invalid("a pin needs read or write permission".into()));
        }
        self.with_map(access, |m| {
            let pieces = m.covering(&r, prot, false)?;
            let mut out = Vec::with_capacity(pages as usize);
            for c in &pieces {
                out.extend((0..c.range.len() / PAGE_SIZE).map(|i| PhysAddr(c.pa.0 + i * PAGE_SIZE)));
            }
            m.pins.pin(access.0, &r);
            Ok(out)
        })
    }

    /// Drops one pin of `access` on every page of `[iova, iova+len)` (4 KiB-aligned). Refused
    /// with [`Error::NotPinned`], unpinning nothing, unless the access pinned every page.
    pub fn access_unpin(&self, access: AccessId, iova: Iova, len: u64) -> Result<()> {
        let r = user_range(iova, len)?;
        self.with_map(access, |m| m.pins.unpin(access.0, &r))
    }

    /// Pages (with multiplicity) `access` has pinned now.
    pub fn access_pinned(&self, access: AccessId) -> Result<u64> {
        self.with_map(access, |m| Ok(m.pins.pages.iter().filter(|((_, a), _)| *a == access.0).map(|(_, n)| n).sum()))
    }

    /// Reads `buf.len()` bytes (1 to [`MAX_RW_BYTES`], any alignment) at `iova` of the access's
    /// IOAS from the platform's memory, without pinning. Every byte must be mapped by areas
    /// that allow reading; nothing is read otherwise.
    pub fn access_read(&self, access: AccessId, iova: Iova, buf: &mut [u8]) -> Result<()> {
        let r = rw_range(iova, buf.len())?;
        self.with_map(access, |m| {
            // Areas being unmapped are still mapped everywhere, and stay so while the lock is
            // held (the unmap commits under it).
            let pieces = m.covering(&r, Prot::READ, true)?;
            let mut off = 0usize;
            for c in &pieces {
                let n = c.range.len() as usize;
                self.platform.read(c.pa, &mut buf[off..off + n]).map_err(platform_err("access read"))?;
                off += n;
            }
            Ok(())
        })
    }

    /// Writes `data` (1 to [`MAX_RW_BYTES`] bytes, any alignment) at `iova` of the access's
    /// IOAS to the platform's memory, without pinning. Every byte must be mapped by areas that
    /// allow writing; nothing is written otherwise.
    pub fn access_write(&self, access: AccessId, iova: Iova, data: &[u8]) -> Result<()> {
        let r = rw_range(iova, data.len())?;
        self.with_map(access, |m| {
            let pieces = m.covering(&r, Prot::WRITE, true)?;
            let mut off = 0usize;
            for c in &pieces {
                let n = c.range.len() as usize;
                self.platform.write(c.pa, &data[off..off + n]).map_err(platform_err("access write"))?;
                off += n;
            }
            Ok(())
        })
    }

    /// Asks the access to unpin everything (its callback, with no lock of the access or its
    /// IOAS held) when it has pins.
    fn ask_unpin_all(&self, a: &AccessObj) {
        let span = {
            let st = lock(&a.state);
            let m = lock(&st.ioas.map);
            m.pins.span_of(a.id.0)
        };
        if let Some(r) = span {
            tracing::debug!(access = %a.id, range = %r, "asking an access to unpin everything");
            a.ops.unmap(r.start, r.len());
        }
    }

    /// Moves `access` to `new_ioas`. As iommufd does, the access's callback is first asked to
    /// unpin everything it pinned; pages still pinned then refuse the move
    /// ([`Error::Pinned`]) and the access stays where it was.
    pub fn access_replace_ioas(&self, access: AccessId, new_ioas: IoasId) -> Result<()> {
        let _c = self.control();
        let a = self.access_obj(access)?;
        let new = self.ioas(new_ioas)?;
        if a.ioas_id() == new.id {
            return Ok(());
        }
        self.ask_unpin_all(&a);
        let mut st = lock(&a.state);
        if st.dead {
            return Err(Error::NoSuchObject { id: access.0, kind: "access" });
        }
        {
            let mut m = lock(&st.ioas.map);
            if let Some(range) = m.pins.span_of(access.0) {
                return Err(Error::Pinned { range, access: access.0 });
            }
            m.pins.ops.remove(&access.0);
        }
        lock(&new.map).pins.ops.insert(access.0, a.ops.clone());
        tracing::debug!(%access, from = %st.ioas.id, to = %new.id, "access moved");
        st.ioas = new;
        Ok(())
    }

    /// Destroys an access (the caller holds the control lock). Its callback is first asked to
    /// unpin everything; pins left refuse the destroy ([`Error::Busy`]), unless `force`
    /// (teardown), which drops them.
    pub(super) fn destroy_access(&self, a: &AccessObj, force: bool) -> Result<()> {
        self.ask_unpin_all(a);
        {
            let mut st = lock(&a.state);
            if !st.dead {
                let mut m = lock(&st.ioas.map);
                if let Some(r) = m.pins.span_of(a.id.0) {
                    if !force {
                        return Err(Error::Busy {
                            what: "access",
                            id: a.id.0,
                            by: format!("pages pinned in {r} (its unmap callback left them)"),
                        });
                    }
                    tracing::warn!(access = %a.id, range = %r, "teardown drops pins an access left");
                    m.pins.drop_access(a.id.0);
                }
                m.pins.ops.remove(&a.id.0);
                drop(m);
                st.dead = true;
            }
        }
        self.write().accesses.remove(&a.id.0);
        tracing::debug!(access = %a.id, "access destroyed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, len: u64) -> IovaRange {
        IovaRange::new(Iova(start), len).unwrap()
    }

    #[test]
    fn pins_count_per_page_and_unpin_is_all_or_nothing() {
        let mut p = Pins::default();
        let a = ObjectId(1);
        let b = ObjectId(2);
        p.pin(a, &r(0x1000, 0x2000));
        p.pin(a, &r(0x2000, 0x1000));
        p.pin(b, &r(0x3000, 0x1000));
        // b has not pinned 0x2000: refused, nothing changes.
        assert!(matches!(p.unpin(b, &r(0x2000, 0x2000)), Err(Error::NotPinned { .. })));
        assert_eq!(p.pages.len(), 3);
        p.unpin(a, &r(0x1000, 0x2000)).unwrap();
        // 0x2000 was pinned twice by a: once more.
        assert_eq!(p.span_of(a), Some(r(0x2000, 0x1000)));
        assert!(matches!(p.unpin(a, &r(0x1000, 0x1000)), Err(Error::NotPinned { .. })));
        p.unpin(a, &r(0x2000, 0x1000)).unwrap();
        assert_eq!(p.span_of(a), None);
        assert_eq!(p.span_of(b), Some(r(0x3000, 0x1000)));
        // A range far larger than the table is refused without walking it.
        assert!(matches!(p.unpin(b, &IovaRange::FULL), Err(Error::NotPinned { .. })));
    }

    #[test]
    fn the_unmap_check_sees_only_pins_in_the_pieces() {
        let mut p = Pins::default();
        let piece = |start, len| Area::new(r(start, len), PhysAddr(0), Prot::RW);
        assert!(!p.any_in(&[piece(0, 1 << 30)]));
        p.pin(ObjectId(7), &r(0x5000, 0x1000));
        assert!(!p.any_in(&[piece(0, 0x5000), piece(0x6000, 0x1000)]));
        assert!(p.any_in(&[piece(0, 0x1000), piece(0x5000, 0x1000)]));
        assert_eq!(p.holder_in(&[piece(0x4000, 0x3000)]), Some(ObjectId(7)));
        // At the top of the space.
        p.pin(ObjectId(8), &r(u64::MAX - 0xfff, 0x1000));
        assert_eq!(p.holder_in(&[piece(u64::MAX - 0x1fff, 0x2000)]), Some(ObjectId(8)));
        p.unpin(ObjectId(8), &r(u64::MAX - 0xfff, 0x1000)).unwrap();
    }
}
