//! The VT-d hardware model against a hostile guest: property-based fuzzing through the public
//! [`UnitModel`] surface only.
//!
//! A KVM guest drives the model as its vIOMMU: it writes the registers and owns every structure
//! the model reads (root / context tables, scalable-mode context, PASID directory and PASID
//! entries, first- and second-stage paging structures, the invalidation queue and its
//! descriptors, the page request queue). Here the guest is [`GuestRam`], a small bounded RAM
//! (1 MiB at guest-physical 0; every access outside it is [`HostError::BAD_ADDRESS`]) that logs
//! every access the model makes. The properties build its contents (fully random pages, or
//! tables laid out as firmware would and then corrupted: bit flips, random values, pointers
//! outside RAM, self-referencing and cyclic pointers), program the registers (random sequences
//! over every register, GCMD with SRTP / TE / QIE, IQA / IQT, fault, IOTLB and page request
//! registers) and issue translations and queries. After every step they check:
//!
//! - nothing panics (run in debug: arithmetic overflow panics too);
//! - every call does bounded work: a translation reads at most the structure depth of the
//!   unit's modes (legacy: root + context + second stage; scalable: root, context, PASID
//!   directory and entry, then nested first stage through second stage), `guest_mappings`
//!   reads no more than its `limit` implies, `guest_stage1` reads at most the context and PASID
//!   structures, a register write reads at most one pass over the invalidation queue;
//! - the model writes guest memory only where the spec allows: A/D bits (9.7, 9.8) in paging
//!   entries the same translation just read, the status data of an invalidation wait
//!   descriptor (6.5.2.8) it just fetched to that descriptor's status address, a page request
//!   descriptor (7.5.1.1) at the page request queue's tail; queries and register reads never
//!   touch memory; every 64-bit access is aligned;
//! - results are typed: faults carry a known reason and the request's own device, PASID,
//!   address and access; targets are non-empty and do not wrap; enumerations are sorted,
//!   aligned, within `limit`; a page request moves PQT, a recorded fault sets FSTS.PPF, IQH
//!   stays in the queue and catches up with IQT unless FSTS.IQE;
//! - a reserved-bit fault (0xc) leaves the faulting entry's A/D flags alone.
//!
//! Two differential properties compare the model with itself: `guest_mappings` (legacy mode)
//! lists exactly what `translate` gives, and a unit that cached earlier translations answers
//! like a fresh unit while memory does not change (caches are invisible, 6.2).
//!
//! Units: the four presets, a 57-bit scalable unit with 5-level first stage, and random
//! CAP / ECAP values the model accepts. Bugs the properties found are kept as `regression_*`
//! tests at the end.
//!
//! Each property runs 128-256 cases (the whole file in about 5 s in debug on 2 cores). For a
//! deeper run, the `#[ignore]`d `long_run` runs every property with `PROPTEST_CASES` cases
//! (default 20 000; about 2 minutes per 8 000):
//!
//! ```text
//! PROPTEST_CASES=50000 cargo test -p ioasis-plugin-vtd --test hostile_guest -- --ignored
//! ```

use std::collections::BTreeMap;
use std::sync::Mutex;

use ioasis::abi::{Fault, HostError};
use ioasis::platform::{DmaRequest, ModelQueryError, PhysMemory, UnitModel};
use ioasis::{DeviceRef, Iova, Pasid, PhysAddr, Prot, PtFormat, RequesterId};
use ioasis_plugin_vtd::layout::regs::{cap, ecap, fsts, gcmd, off, off_more, rtaddr};
use ioasis_plugin_vtd::layout::tables::{fl, sl, ADDR};
use ioasis_plugin_vtd::model::{VtdModel, VtdModelConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

/// Guest RAM: 1 MiB at guest-physical 0.
const RAM: u64 = 1 << 20;
const PAGES: u64 = RAM / 4096;

// ---------------------------------------------------------------------------------------------
// Guest memory that logs what the model does with it.

/// One access the model made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    /// `read` of `len` bytes.
    Read { pa: u64, len: usize },
    /// `read_u64`, with the value when it succeeded.
    ReadU64 { pa: u64, value: Option<u64> },
    /// `write` of `len` bytes (`data`: the first 8 of them, little-endian).
    Write { pa: u64, len: usize, data: u64 },
    /// `write_u64`.
    WriteU64 { pa: u64, value: u64 },
    /// `fetch_or_u64`.
    FetchOr { pa: u64, bits: u64 },
    /// `fetch_and_u64`.
    FetchAnd { pa: u64, mask: u64 },
}

impl Access {
    fn is_read(&self) -> bool {
        matches!(self, Access::Read { .. } | Access::ReadU64 { .. })
    }
}

struct Inner {
    bytes: Vec<u8>,
    log: Vec<Access>,
    /// 64-bit accesses that were not 8-byte aligned (the trait requires alignment).
    misaligned: Vec<u64>,
}

/// A bounded guest RAM that logs every access.
struct GuestRam(Mutex<Inner>);

fn bad(pa: u64) -> HostError {
    HostError::new(HostError::BAD_ADDRESS, pa)
}

impl GuestRam {
    fn new(words: &BTreeMap<u64, u64>, random_pages: &[(u64, u64)]) -> Self {
        let mut bytes = vec![0u8; RAM as usize];
        for &(page, seed) in random_pages {
            let mut x = seed | 1;
            for chunk in bytes[(page % PAGES * 4096) as usize..][..4096].chunks_mut(8) {
                // xorshift64
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes());
            }
        }
        for (&pa, &v) in words {
            if pa % 8 == 0 && pa < RAM {
                bytes[pa as usize..pa as usize + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        Self(Mutex::new(Inner { bytes, log: Vec::new(), misaligned: Vec::new() }))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The accesses since the last call.
    fn take_log(&self) -> Vec<Access> {
        std::mem::take(&mut self.inner().log)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.inner().bytes.clone()
    }

    fn restore(&self, bytes: Vec<u8>) {
        self.inner().bytes = bytes;
    }

    fn misaligned(&self) -> Vec<u64> {
        self.inner().misaligned.clone()
    }

    fn span(pa: u64, len: usize) -> Result<std::ops::Range<usize>, HostError> {
        let end = pa.checked_add(len as u64).ok_or(bad(pa))?;
        if end > RAM {
            return Err(bad(pa));
        }
        Ok(pa as usize..end as usize)
    }

    fn word(&self, pa: u64, f: impl FnOnce(&mut [u8; 8], &mut Vec<Access>)) -> Result<u64, HostError> {
        let mut g = self.inner();
        if pa % 8 != 0 {
            g.misaligned.push(pa);
            return Err(bad(pa));
        }
        let r = Self::span(pa, 8)?;
        let Inner { bytes, log, .. } = &mut *g;
        let w: &mut [u8; 8] = (&mut bytes[r]).try_into().map_err(|_| bad(pa))?;
        let old = u64::from_le_bytes(*w);
        f(w, log);
        Ok(old)
    }
}

impl PhysMemory for GuestRam {
    fn read(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<(), HostError> {
        let mut g = self.inner();
        g.log.push(Access::Read { pa: pa.raw(), len: buf.len() });
        let r = Self::span(pa.raw(), buf.len())?;
        buf.copy_from_slice(&g.bytes[r]);
        Ok(())
    }

    fn write(&self, pa: PhysAddr, data: &[u8]) -> Result<(), HostError> {
        let mut g = self.inner();
        let mut first = [0u8; 8];
        let n = data.len().min(8);
        first[..n].copy_from_slice(&data[..n]);
        g.log.push(Access::Write { pa: pa.raw(), len: data.len(), data: u64::from_le_bytes(first) });
        let r = Self::span(pa.raw(), data.len())?;
        g.bytes[r].copy_from_slice(data);
        Ok(())
    }

    fn read_u64(&self, pa: PhysAddr) -> Result<u64, HostError> {
        let r = self.word(pa.raw(), |_, _| {});
        self.inner().log.push(Access::ReadU64 { pa: pa.raw(), value: r.ok() });
        r
    }

    fn write_u64(&self, pa: PhysAddr, value: u64) -> Result<(), HostError> {
        self.inner().log.push(Access::WriteU64 { pa: pa.raw(), value });
        self.word(pa.raw(), |w, _| *w = value.to_le_bytes()).map(|_| ())
    }

    fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> Result<u64, HostError> {
        self.inner().log.push(Access::FetchOr { pa: pa.raw(), bits });
        self.word(pa.raw(), |w, _| *w = (u64::from_le_bytes(*w) | bits).to_le_bytes())
    }

    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> Result<u64, HostError> {
        self.inner().log.push(Access::FetchAnd { pa: pa.raw(), mask });
        self.word(pa.raw(), |w, _| *w = (u64::from_le_bytes(*w) & mask).to_le_bytes())
    }
}

// ---------------------------------------------------------------------------------------------
// Units.

/// Puts `value` at bits `shift..shift+width` of `reg` (a CAP / ECAP field, 11.4.2 / 11.4.3).
fn field(reg: u64, shift: u32, width: u32, value: u64) -> u64 {
    let mask = ((1u64 << width) - 1) << shift;
    (reg & !mask) | ((value << shift) & mask)
}

/// The unit generations fuzzed: the four presets and a 57-bit scalable unit with 5-level
/// first-stage paging (CAP.FS5LP), caching mode and no page-selective invalidation.
fn unit(kind: u8) -> VtdModelConfig {
    match kind % 5 {
        0 => VtdModelConfig::legacy(),
        1 => VtdModelConfig::legacy_no_qi(),
        2 => VtdModelConfig::legacy_39bit_no_superpages(),
        3 => VtdModelConfig::scalable(),
        _ => {
            let s = VtdModelConfig::scalable();
            // 11.4.2: SAGAW bits 12:8 (39/48/57), MGAW bits 21:16 = 56, FS5LP bit 60, CM bit 7.
            let mut c = field(s.cap, 8, 5, 0b01110);
            c = field(c, 16, 6, 56);
            c = (c | cap::FS5LP | cap::CM) & !cap::PSI;
            VtdModelConfig { cap: c, ..s }
        }
    }
}

/// Most levels of a second-stage table the unit supports (SAGAW, 11.4.2).
fn ss_levels(c: &VtdModelConfig) -> u64 {
    let sagaw = cap::sagaw(c.cap);
    if sagaw & 8 != 0 {
        5
    } else if sagaw & 4 != 0 {
        4
    } else {
        3
    }
}

/// Most levels of a first-stage table (9.6 FSPM; 5 only with CAP.FS5LP).
fn fs_levels(c: &VtdModelConfig) -> u64 {
    if c.cap & cap::FS5LP != 0 {
        5
    } else {
        4
    }
}

fn has_ecap(c: &VtdModelConfig, bit: u64) -> bool {
    c.ecap & bit != 0
}

/// Most memory reads one translation may make: legacy (3.4.3) root entry (1) + context entry
/// (2) + one entry per second-stage level; scalable (3.4.4) root (1) + context (2) + PASID
/// directory entry (1) + PASID entry (4 qwords), then nested (3.8): per first-stage level the
/// second-stage walk of the entry's address for the read, the entry, and the second-stage
/// walk again for the A/D write, then the second-stage walk of the output.
fn translate_read_bound(c: &VtdModelConfig) -> u64 {
    let ss = ss_levels(c);
    if has_ecap(c, ecap::SMTS) {
        8 + fs_levels(c) * (2 * ss + 1) + ss
    } else {
        3 + ss
    }
}

// ---------------------------------------------------------------------------------------------
// Firmware-built tables.

/// Guest memory contents as 64-bit words, built like firmware would, then corrupted.
#[derive(Clone, Debug, Default)]
struct Image {
    words: BTreeMap<u64, u64>,
    next: u64,
    root: u64,
    /// Requests worth making: (source id, PASID, IOVA).
    targets: Vec<(u16, Option<u32>, u64)>,
}

/// Index of `iova` at `level` (9.7, 9.8: 9 bits per level above the 4 KiB offset).
fn index(iova: u64, level: u32) -> u64 {
    (iova >> (12 + 9 * (level - 1))) & 0x1ff
}

impl Image {
    fn new() -> Self {
        Self { next: 4096, ..Self::default() }
    }

    /// A fresh 4 KiB page (wrapping inside RAM when the image grows too big: more corruption).
    fn page(&mut self) -> u64 {
        let p = self.next;
        self.next = (self.next + 4096) % RAM;
        p
    }

    fn get(&self, pa: u64) -> u64 {
        self.words.get(&pa).copied().unwrap_or(0)
    }

    fn set(&mut self, pa: u64, v: u64) {
        self.words.insert(pa, v);
    }

    /// Maps `iova` in the `levels`-level table at `root`: non-leaf entries get `table`, the
    /// entry at `leaf_level` gets `leaf`.
    fn map(&mut self, root: u64, levels: u32, iova: u64, leaf_level: u32, table: u64, leaf: u64) {
        let mut t = root;
        for level in (leaf_level + 1..=levels).rev() {
            let at = t + index(iova, level) * 8;
            let e = self.get(at);
            t = if e != 0 {
                e & ADDR
            } else {
                let p = self.page();
                self.set(at, p | table);
                p
            };
            if t >= RAM {
                return;
            }
        }
        self.set(t + index(iova, leaf_level) * 8, leaf);
    }
}

/// One mapping a firmware-built table holds.
#[derive(Clone, Copy, Debug)]
struct MapSpec {
    iova: u64,
    pa: u64,
    /// 1 (4 KiB), 2 (2 MiB) or 3 (1 GiB).
    leaf_level: u32,
    /// Permission bits (sl::R / sl::W, or fl::RW).
    write: bool,
    read: bool,
}

/// One device's context as firmware would set it up.
#[derive(Clone, Debug)]
struct DevSpec {
    sid: u16,
    /// Legacy TT (9.3), or scalable PGTT (9.6) selector.
    mode: u8,
    /// AW selector (9.3 / 9.6).
    aw: u8,
    did: u16,
    fpd: bool,
    /// Scalable: PRE and SSADE.
    pre: bool,
    ssade: bool,
    /// Scalable: PASIDs with an entry (the first is RID_PASID).
    pasids: Vec<u32>,
    maps: Vec<MapSpec>,
}

fn map_spec() -> impl Strategy<Value = MapSpec> {
    (
        prop_oneof![0u64..(1 << 22), 0u64..(1 << 39), any::<u64>()],
        any::<u64>(),
        prop_oneof![4 => Just(1u32), 1 => Just(2u32), 1 => Just(3u32)],
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(iova, pa, leaf_level, write, read)| {
            let align = 1u64 << (12 + 9 * (leaf_level - 1));
            MapSpec { iova: iova & !(align - 1), pa: pa & ADDR & !(align - 1), leaf_level, write, read }
        })
}

fn dev_spec() -> impl Strategy<Value = DevSpec> {
    (
        prop_oneof![0u16..8, any::<u16>()],
        prop_oneof![3 => Just(0u8), 2 => any::<u8>()],
        prop_oneof![4 => Just(0u8), 1 => 0u8..5],
        any::<u16>(),
        prop::bool::weighted(0.2),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(prop_oneof![0u32..4, 0u32..300, 0u32..(1 << 20)], 1..3),
        prop::collection::vec(map_spec(), 0..6),
    )
        .prop_map(|(sid, mode, aw, did, fpd, pre, ssade, pasids, maps)| DevSpec {
            sid,
            mode,
            aw,
            did,
            fpd,
            pre,
            ssade,
            pasids,
            maps,
        })
}

/// AW (9.3) for a selector: mostly the supported 2 (48-bit), sometimes 1, 3 or invalid.
fn aw_of(sel: u8) -> (u64, u32) {
    match sel {
        0 | 1 => (2, 4),
        2 => (1, 3),
        3 => (3, 5),
        _ => (5, 4),
    }
}

/// Legacy tables (9.1 root, 9.3 context, 9.8 second-level).
fn legacy_image(devs: &[DevSpec]) -> Image {
    let mut im = Image::new();
    let root = im.page();
    im.root = root;
    for d in devs {
        let (bus, devfn) = (u64::from(d.sid >> 8), u64::from(d.sid & 0xff));
        let re = root + bus * 16;
        let ctx = match im.get(re) {
            0 => {
                let p = im.page();
                im.set(re, p | 1);
                p
            }
            e => e & ADDR,
        };
        let (aw, levels) = aw_of(d.aw);
        let table = im.page();
        // 9.3 lower qword: P bit 0, FPD bit 1, TT bits 3:2, SLPTPTR 63:12; upper: AW 2:0, DID 23:8.
        let tt = u64::from(d.mode % 4) << 2;
        im.set(ctx + devfn * 16, table | tt | if d.fpd { 2 } else { 0 } | 1);
        im.set(ctx + devfn * 16 + 8, aw | (u64::from(d.did) << 8));
        for m in &d.maps {
            let leaf = m.pa
                | if m.read { sl::R } else { 0 }
                | if m.write { sl::W } else { 0 }
                | if m.leaf_level > 1 { sl::PS } else { 0 };
            im.map(table, levels, m.iova, m.leaf_level, sl::R | sl::W, leaf);
            im.targets.push((d.sid, None, m.iova));
        }
    }
    im
}

/// Scalable-mode tables (9.2 root, 9.4 context, 9.5 PASID directory, 9.6 PASID entry, 9.7
/// first-stage, 9.8 second-stage). Nested entries' first-stage tables sit behind a second
/// stage that maps guest RAM 1:1 with a 2 MiB leaf.
fn scalable_image(devs: &[DevSpec]) -> Image {
    let mut im = Image::new();
    let root = im.page();
    im.root = root;
    for d in devs {
        let (bus, devfn) = (u64::from(d.sid >> 8), u64::from(d.sid & 0xff));
        // 9.2: lower context table pointer in qword 0 (devfn 0-127), upper in qword 1.
        let re = root + bus * 16 + if devfn >= 128 { 8 } else { 0 };
        let ctx = match im.get(re) {
            0 => {
                let p = im.page();
                im.set(re, p | 1);
                p
            }
            e => e & ADDR,
        };
        let pdir = im.page();
        let at = ctx + (devfn & 0x7f) * 32;
        // 9.4 qword 0: P 0, FPD 1, DTE 2, PASIDE 3, PRE 4, PDTS 11:9, PASIDDIRPTR 63:12.
        let pdts = u64::from(d.aw % 8) << 9;
        im.set(at, pdir | pdts | 1 << 3 | if d.pre { 1 << 4 } else { 0 } | if d.fpd { 2 } else { 0 } | 1);
        // Qword 1: RID_PASID bits 19:0.
        im.set(at + 8, u64::from(d.pasids[0] & 0xf_ffff));
        for (k, &pasid) in d.pasids.iter().enumerate() {
            let de = pdir + u64::from(pasid >> 6) * 8;
            let ptable = match im.get(de) {
                0 => {
                    let p = im.page();
                    im.set(de, p | 1);
                    p
                }
                e => e & ADDR,
            };
            let pe = ptable + u64::from(pasid & 63) * 64;
            let (aw, levels) = aw_of(d.aw);
            let (ss, fs) = (im.page(), im.page());
            // 9.6 PGTT bits 8:6: 001 first-stage, 010 second-stage, 011 nested, 100 pass-through.
            let pgtt = match (d.mode.wrapping_add(k as u8)) % 5 {
                0 | 4 => 1,
                1 => 2,
                2 => 3,
                _ => 4,
            };
            let fs5 = d.aw == 3;
            // Qword 0: P 0, FPD 1, AW 4:2, PGTT 8:6, SSADE 9, SSPTPTR 63:12.
            let q0 = ss | pgtt << 6 | aw << 2 | if d.ssade { 1 << 9 } else { 0 } | 1;
            im.set(pe, q0);
            im.set(pe + 8, u64::from(d.did));
            // Qword 2: FSPM 3:2 (00 4-level, 01 5-level), FSPTPTR 63:12.
            im.set(pe + 16, fs | if fs5 { 1 << 2 } else { 0 });
            let fl_levels = if fs5 { 5 } else { 4 };
            if pgtt == 3 {
                // The second stage maps guest RAM 1:1 (a 2 MiB leaf at IOVA 0).
                im.map(ss, levels, 0, 2, sl::R | sl::W, sl::R | sl::W | sl::PS);
            }
            for m in &d.maps {
                match pgtt {
                    2 => {
                        let leaf = m.pa
                            | if m.read { sl::R } else { 0 }
                            | if m.write { sl::W } else { 0 }
                            | if m.leaf_level > 1 { sl::PS } else { 0 };
                        im.map(ss, levels, m.iova, m.leaf_level, sl::R | sl::W, leaf);
                    }
                    _ => {
                        // Nested outputs are guest-physical: keep them in guest RAM.
                        let align = 1u64 << (12 + 9 * (m.leaf_level - 1));
                        let pa = if pgtt == 3 { (m.pa % RAM) & !(align - 1) } else { m.pa };
                        let leaf = pa
                            | fl::P
                            | fl::US
                            | if m.write { fl::RW } else { 0 }
                            | if m.leaf_level > 1 { fl::PS } else { 0 };
                        im.map(fs, fl_levels, m.iova, m.leaf_level, fl::P | fl::RW | fl::US, leaf);
                    }
                }
                let p = if k == 0 && pasid == d.pasids[0] && m.iova % 2 == 0 { None } else { Some(pasid) };
                im.targets.push((d.sid, p, m.iova));
            }
        }
    }
    im
}

/// A corruption of one word of a firmware-built image.
#[derive(Clone, Copy, Debug)]
enum Corrupt {
    /// Flip one bit.
    Flip(u8),
    /// Any value.
    Value(u64),
    /// A pointer (bits 63:12) somewhere else, the low bits kept.
    Pointer(u64),
    /// Point at the page holding the entry itself.
    SelfRef,
    /// Point back at the root table (a cycle through every level).
    ToRoot,
    /// Set reserved / ignored high bits (62:52).
    HighBits(u16),
}

/// A pointer the guest may write: mostly a page of RAM, sometimes just past it, anywhere, or
/// at the very top of the address space.
fn pointer() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => (0..PAGES).prop_map(|p| p * 4096),
        1 => (PAGES..PAGES + 4).prop_map(|p| p * 4096),
        1 => any::<u64>(),
        1 => Just(ADDR),
        1 => Just(!0xfff),
    ]
}

fn corrupt() -> impl Strategy<Value = Corrupt> {
    prop_oneof![
        3 => (0u8..64).prop_map(Corrupt::Flip),
        1 => any::<u64>().prop_map(Corrupt::Value),
        2 => pointer().prop_map(Corrupt::Pointer),
        1 => Just(Corrupt::SelfRef),
        1 => Just(Corrupt::ToRoot),
        1 => any::<u16>().prop_map(Corrupt::HighBits),
    ]
}

fn apply(im: &mut Image, corruptions: &[(usize, Corrupt)]) {
    for &(sel, c) in corruptions {
        let keys: Vec<u64> = im.words.keys().copied().collect();
        let Some(&pa) = keys.get(sel % keys.len().max(1)) else { return };
        let e = im.get(pa);
        let v = match c {
            Corrupt::Flip(b) => e ^ (1 << b),
            Corrupt::Value(v) => v,
            Corrupt::Pointer(p) => (p & !0xfff) | (e & 0xfff),
            Corrupt::SelfRef => (pa & !0xfff) | (e & 0xfff) | 3,
            Corrupt::ToRoot => im.root | (e & 0xfff) | 3,
            Corrupt::HighBits(h) => e | (u64::from(h & 0x7ff) << 52),
        };
        im.set(pa, v);
    }
}

// ---------------------------------------------------------------------------------------------
// Guest programs.

/// One thing the guest (or a device behind the unit, or the VMM) does.
#[derive(Clone, Debug)]
enum Step {
    /// A register write.
    Write { off: u64, width: u8, value: u64 },
    /// A register read.
    Read { off: u64, width: u8 },
    /// A DMA request.
    Translate { dev: DeviceRef, pasid: Option<u32>, iova: u64, access: Prot },
    /// `guest_mappings`.
    Mappings { dev: DeviceRef, pasid: Option<u32>, limit: usize },
    /// `guest_stage1`.
    Stage1 { dev: DeviceRef, pasid: Option<u32> },
}

/// Every register offset the model answers (11.4), for any unit preset.
const REGS: &[u64] = &[
    off::VER,
    off::CAP,
    off::ECAP,
    off::GCMD,
    off::GSTS,
    off::RTADDR,
    off::CCMD,
    off::FSTS,
    off::FECTL,
    off_more::FEDATA,
    off_more::FEADDR,
    off_more::FEUADDR,
    off::IQH,
    off::IQT,
    off::IQA,
    off::ICS,
    off_more::IECTL,
    off_more::IEDATA,
    off::PQH,
    off::PQT,
    off::PQA,
    off::PRS,
    off_more::PECTL,
    0xf0,
    0xf8,
    0x220,
    0x228,
    0x400,
    0x408,
    0x410,
    0x418,
    0x470,
    0x478,
    0x500,
    0x508,
];

/// A register value: random, or a meaningful command.
fn reg_value() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => any::<u64>(),
        // GCMD (11.4.4): TE 31, SRTP 30, QIE 26, in any combination.
        2 => (0u64..8).prop_map(|b| (b & 1) << 31 | (b >> 1 & 1) << 30 | (b >> 2 & 1) << 26),
        // RTADDR (11.4.6) / IQA (11.4.10.3) / PQA (11.4.11.3): a page, TTM / DW / QS bits.
        2 => (pointer(), 0u64..0x1000).prop_map(|(p, low)| p | (low & 0xc07)),
        // IQT / PQT: queue offsets, aligned or not, beyond small queues.
        2 => (0u64..0x8_0000).prop_map(|o| o & !0xf),
        1 => 0u64..0x100,
        // CCMD / IOTLB_REG invalidations: ICC / IVT bit 63 with a granularity.
        1 => (0u64..4, any::<u16>()).prop_map(|(g, d)| 1 << 63 | g << 61 | g << 60 | u64::from(d) << 32 | u64::from(d)),
        // FSTS / ICS / PRS / FRCD: write-1-to-clear.
        1 => Just(u64::MAX),
    ]
}

fn dev_of(sid: u16, raw: u32, kind: u8) -> DeviceRef {
    match kind % 8 {
        0 => DeviceRef::Sid(raw),
        1 => DeviceRef::Sid(u32::from(sid)),
        _ => {
            DeviceRef::Rid(RequesterId::new(kind as u16 & 3, (sid >> 8) as u8, ((sid >> 3) & 31) as u8, sid as u8 & 7))
        }
    }
}

fn access() -> impl Strategy<Value = Prot> {
    prop_oneof![Just(Prot::READ), Just(Prot::WRITE), Just(Prot::RW), Just(Prot::NONE), (0u32..16).prop_map(Prot)]
}

/// Steps aimed at `targets` (the requests firmware set up) as often as at random ones.
fn steps(targets: Vec<(u16, Option<u32>, u64)>, n: usize, writes: u32) -> impl Strategy<Value = Vec<Step>> {
    let t = if targets.is_empty() { vec![(0, None, 0)] } else { targets };
    let target = (
        prop::sample::select(t),
        any::<u16>(),
        any::<u32>(),
        any::<u8>(),
        prop_oneof![3 => Just(0u64), 1 => 0u64..0x3000],
        prop::bool::weighted(0.9),
    );
    let request = prop_oneof![
        3 => target.prop_map(|((sid, pasid, iova), rsid, raw, kind, delta, own)| {
            let sid = if own { sid } else { rsid };
            let pasid = if kind % 16 == 0 { Some(raw) } else { pasid };
            (dev_of(sid, raw, kind | 2), pasid, iova.wrapping_add(delta))
        }),
        1 => (any::<u16>(), any::<u32>(), any::<u8>(), prop::option::of(prop_oneof![0u32..300, any::<u32>()]), any::<u64>())
            .prop_map(|(sid, raw, kind, pasid, iova)| (dev_of(sid, raw, kind), pasid, iova)),
    ];
    let step = prop_oneof![
        writes => (prop_oneof![3 => prop::sample::select(REGS), 1 => 0u64..0x1010], prop_oneof![4 => Just(4u8), 4 => Just(8u8), 1 => 0u8..10], reg_value())
            .prop_map(|(off, width, value)| Step::Write { off, width, value }),
        1 => (prop_oneof![3 => prop::sample::select(REGS), 1 => 0u64..0x1010], 0u8..10).prop_map(|(off, width)| Step::Read { off, width }),
        6 => (request.clone(), access()).prop_map(|((dev, pasid, iova), access)| Step::Translate { dev, pasid, iova, access }),
        1 => (request.clone(), prop_oneof![0usize..8, 0usize..64]).prop_map(|((dev, pasid, _), limit)| Step::Mappings { dev, pasid: pasid.filter(|p| p % 4 == 1), limit }),
        1 => request.prop_map(|(dev, pasid, _)| Step::Stage1 { dev, pasid }),
    ];
    prop::collection::vec(step, 1..n)
}

// ---------------------------------------------------------------------------------------------
// The invariants.

/// What a property reached, so that a run shows it exercised the paths that matter (printed
/// with `--nocapture`).
#[derive(Debug, Default)]
struct Coverage {
    translated: u64,
    faults: BTreeMap<u8, u64>,
    page_requests: u64,
    ad_updates: u64,
    wait_writes: u64,
    queue_reads: u64,
    mappings: u64,
    too_many: u64,
    stage1: u64,
}

thread_local! {
    static COVERAGE: std::cell::RefCell<Coverage> = std::cell::RefCell::default();
}

fn cover(f: impl FnOnce(&mut Coverage)) {
    COVERAGE.with(|c| f(&mut c.borrow_mut()));
}

/// The coverage of this thread's property so far, reset.
fn coverage(name: &str) -> Coverage {
    let c = COVERAGE.with(|c| std::mem::take(&mut *c.borrow_mut()));
    eprintln!("{name}: {c:?}");
    c
}

/// A unit and its guest.
struct Rig {
    cfg: VtdModelConfig,
    model: VtdModel,
    mem: GuestRam,
}

/// Every VT-d fault reason the model may report (Appendix A): the legacy ones, and the
/// scalable-mode ones of nested translation (SFS 0x70-0x77, SSS 0x78-0x7b, SGN 0x80, 0x85, 0x86).
const REASONS: &[u8] = &[
    0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7, 0x8, 0x9, 0xa, 0xb, 0xc, 0x50, 0x51, 0x58, 0x59, 0x5b, 0x70, 0x71, 0x72, 0x73,
    0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x80, 0x85, 0x86,
];

/// Reasons of a paging entry with a reserved field set (legacy, first stage, second stage).
const RESERVED_ENTRY: &[u8] = &[0xc, 0x72, 0x7a];

fn fail(msg: String) -> TestCaseError {
    TestCaseError::fail(msg)
}

impl Rig {
    fn new(cfg: VtdModelConfig, im: &Image, random_pages: &[(u64, u64)]) -> Self {
        let model = VtdModel::new(cfg).expect("a valid preset");
        Self { cfg, model, mem: GuestRam::new(&im.words, random_pages) }
    }

    fn reg(&self, off: u64) -> u64 {
        self.model.mmio_read(&self.mem, off, 8).unwrap_or(0)
    }

    fn reg32(&self, off: u64) -> u32 {
        self.model.mmio_read(&self.mem, off, 4).unwrap_or(0) as u32
    }

    /// Firmware's programming: root table, SRTP, then TE (and queued invalidation when QI).
    fn enable(&self, root: u64, ttm: u64, qi: Option<u64>) -> Result<(), TestCaseError> {
        self.run(&Step::Write { off: off::RTADDR, width: 8, value: root | ttm << 10 })?;
        self.run(&Step::Write { off: off::GCMD, width: 4, value: u64::from(gcmd::SRTP) })?;
        let mut cmd = gcmd::TE;
        if let Some(iqa) = qi {
            self.run(&Step::Write { off: off::IQA, width: 8, value: iqa })?;
            cmd |= gcmd::QIE;
        }
        self.run(&Step::Write { off: off::GCMD, width: 4, value: u64::from(cmd) })
    }

    /// Runs one step and checks every invariant on what it did.
    fn run(&self, step: &Step) -> Result<(), TestCaseError> {
        self.mem.take_log();
        match *step {
            Step::Write { off, width, value } => self.write(off, width, value)?,
            Step::Read { off, width } => {
                let r = self.model.mmio_read(&self.mem, off, width);
                if let Err(e) = r {
                    check_bad_register(e, off)?;
                }
                let log = self.mem.take_log();
                prop_assert!(log.is_empty(), "a register read touched memory: {log:?}");
            }
            Step::Translate { dev, pasid, iova, access } => self.translate(dev, pasid, iova, access)?,
            Step::Mappings { dev, pasid, limit } => {
                let r = self.model.guest_mappings(&self.mem, dev, pasid.map(Pasid), limit);
                let log = self.mem.take_log();
                no_writes(&log, "guest_mappings")?;
                let reads = log.len() as u64;
                // Root (1) + context (2) + 512 entries per table visited; a table is visited
                // only below a present entry, and at most 5 * limit + 64 of those are.
                let bound = 3 + 512 * (limit as u64 * 5 + 65);
                prop_assert!(reads <= bound, "guest_mappings(limit {limit}) read {reads} > {bound} entries");
                match r {
                    Ok(maps) => {
                        cover(|c| c.mappings += maps.len() as u64);
                        prop_assert!(maps.len() <= limit, "{} mappings over limit {limit}", maps.len());
                        let mut next = 0u128;
                        for m in &maps {
                            // A page size (4 KiB, 2 MiB, 1 GiB), or its part below the address width.
                            let page = matches!(m.len, 0x1000 | 0x20_0000 | 0x4000_0000);
                            let clipped = m.iova.raw() == 0 && m.len.is_power_of_two() && m.len < 0x4000_0000;
                            prop_assert!(page || clipped, "leaf size {:#x}", m.len);
                            prop_assert!(m.iova.raw() % m.len == 0 && m.addr.raw() % m.len == 0, "misaligned {m:?}");
                            prop_assert!(u128::from(m.iova.raw()) >= next, "unsorted or overlapping {maps:?}");
                            prop_assert!(m.prot != Prot::NONE && m.prot.0 & !3 == 0, "prot {m:?}");
                            next = u128::from(m.iova.raw()) + u128::from(m.len);
                        }
                    }
                    Err(ModelQueryError::TooMany { limit: l }) => {
                        cover(|c| c.too_many += 1);
                        prop_assert_eq!(l, limit);
                    }
                    Err(ModelQueryError::Unsupported | ModelQueryError::Blocked | ModelQueryError::BadEntry { .. }) => {
                    }
                    Err(e) => return Err(fail(format!("guest_mappings: unexpected {e:?}"))),
                }
            }
            Step::Stage1 { dev, pasid } => {
                let r = self.model.guest_stage1(&self.mem, dev, pasid.map(Pasid));
                let log = self.mem.take_log();
                no_writes(&log, "guest_stage1")?;
                // Root (1) + context (2) + PASID directory (1) + PASID entry (4).
                prop_assert!(log.len() <= 8, "guest_stage1 read {} words: {log:?}", log.len());
                match r {
                    Ok(s) => {
                        cover(|c| c.stage1 += 1);
                        // 9.6: FSPTPTR bits 63:12 of a 4-level first-stage entry, no words.
                        prop_assert!(s.format == PtFormat::X86_64, "{s:?}");
                        prop_assert!(s.root.raw() & 0xfff == 0 && s.words.is_empty(), "{s:?}");
                    }
                    Err(ModelQueryError::TooMany { .. } | ModelQueryError::Unsupported) => {
                        return Err(fail(format!("guest_stage1: {r:?}")));
                    }
                    Err(_) => {}
                }
            }
        }
        if has_ecap(&self.cfg, ecap::QI) {
            // 6.5.2: with queued invalidation enabled and no queue error, the unit has fetched
            // everything up to the tail.
            let (gsts, f) = (self.reg32(off::GSTS), self.reg32(off::FSTS));
            if gsts & gcmd::QIE != 0 && f & fsts::IQE == 0 {
                let (h, t) = (self.reg(off::IQH), self.reg(off::IQT));
                prop_assert_eq!(h, t, "QIES set, IQE clear, but IQH != IQT");
            }
        }
        let bad = self.mem.misaligned();
        prop_assert!(bad.is_empty(), "misaligned 64-bit accesses at {bad:x?}");
        // FSTS.FRI (11.4.9.1) names an existing record.
        let f = self.reg32(off::FSTS);
        prop_assert!(fsts::fri(f) < cap::nfr(self.cfg.cap), "FSTS {f:#x}");
        Ok(())
    }

    fn write(&self, off: u64, width: u8, value: u64) -> Result<(), TestCaseError> {
        let qi = has_ecap(&self.cfg, ecap::QI);
        let iqa = if qi { self.reg(off::IQA) } else { 0 };
        let head_ok = |iqa: u64, h: u64| {
            let dsz = if iqa & (1 << 11) != 0 { 32 } else { 16 };
            h < 4096 << (iqa & 7) && h % dsz == 0
        };
        let was_ok = qi && head_ok(iqa, self.reg(off::IQH));
        let r = self.model.mmio_write(&self.mem, off, width, value);
        let log = self.mem.take_log();
        if was_ok && self.reg(off::IQA) == iqa {
            // 11.4.10.1: IQH only ever points at a descriptor of the queue.
            let h = self.reg(off::IQH);
            prop_assert!(head_ok(iqa, h), "IQH {h:#x} outside the queue (IQA {iqa:#x})");
        }
        if let Err(e) = r {
            check_bad_register(e, off)?;
            prop_assert!(log.is_empty(), "a refused register write touched memory: {log:?}");
            return Ok(());
        }
        if log.is_empty() {
            return Ok(());
        }
        prop_assert!(qi, "a unit without QI touched memory on a register write: {log:?}");
        // 6.5.2, 11.4.10.3: the queue is 4 KiB << QS at IQA bits 63:12; one pass at most.
        let base = u128::from(iqa & !0xfff);
        let size = 4096u128 << (iqa & 7);
        let reads = log.iter().filter(|a| a.is_read()).count() as u128;
        cover(|c| c.queue_reads += reads as u64);
        prop_assert!(reads <= size / 8, "{reads} reads for a {size:#x}-byte queue");
        // Writes: only the status data of a wait descriptor (6.5.2.8: type 5, SW bit 5, data
        // 63:32; status address in qword 1 bits 63:2) fetched just before.
        for (i, a) in log.iter().enumerate() {
            match *a {
                Access::ReadU64 { pa, .. } => {
                    let pa = u128::from(pa);
                    prop_assert!(pa >= base && pa < base + size, "read {pa:#x} outside the queue at {base:#x}");
                }
                Access::Write { pa, len, data } => {
                    let q: Vec<u64> = log[..i]
                        .iter()
                        .rev()
                        .filter_map(|a| match a {
                            Access::ReadU64 { value, .. } => *value,
                            _ => None,
                        })
                        .take(4)
                        .collect();
                    // The last qwords read: (q3, q2,) q1, q0 of the descriptor.
                    let wide = iqa & (1 << 11) != 0;
                    let (q0, q1) = if wide { (q.get(3), q.get(2)) } else { (q.get(1), q.first()) };
                    let (Some(&q0), Some(&q1)) = (q0, q1) else {
                        return Err(fail(format!("write {a:?} with no descriptor fetched: {log:?}")));
                    };
                    prop_assert!(q0 & 0xf == 5 && q0 & (1 << 5) != 0, "write {a:?} after descriptor {q0:#x}");
                    prop_assert_eq!(pa, q1 & !3, "status address");
                    prop_assert_eq!(len, 4);
                    prop_assert_eq!(data, q0 >> 32, "status data");
                    cover(|c| c.wait_writes += 1);
                }
                other => return Err(fail(format!("a register write did {other:?}"))),
            }
        }
        Ok(())
    }

    fn translate(&self, dev: DeviceRef, pasid: Option<u32>, iova: u64, access: Prot) -> Result<(), TestCaseError> {
        let prq = has_ecap(&self.cfg, ecap::PRS);
        let (pqa, pqt) = if prq { (self.reg(off::PQA), self.reg(off::PQT)) } else { (0, 0) };
        let before = self.model.faults().len();
        let req = DmaRequest { dev, pasid: pasid.map(Pasid), iova: Iova(iova), access };
        let r = self.model.translate(&self.mem, &req);
        let log = self.mem.take_log();
        let reads = log.iter().filter(|a| a.is_read()).count() as u64;
        let bound = translate_read_bound(&self.cfg);
        prop_assert!(reads <= bound, "translate read {reads} > {bound} words: {log:?}");
        let mut pr_words = 0u64;
        for (i, a) in log.iter().enumerate() {
            match *a {
                Access::ReadU64 { .. } => {}
                // 9.8 (SSADE): A bit 8, D bit 9; 9.7: A bit 5, D bit 6 — on an entry this walk read.
                Access::FetchOr { pa, bits } => {
                    let ad = [sl::A, sl::A | sl::D, fl::A, fl::A | fl::D];
                    prop_assert!(ad.contains(&bits), "fetch_or {bits:#x} at {pa:#x}");
                    let read =
                        log[..i].iter().any(|b| matches!(*b, Access::ReadU64 { pa: p, value: Some(_) } if p == pa));
                    prop_assert!(read, "A/D set at {pa:#x}, which the walk never read: {log:?}");
                    prop_assert!(has_ecap(&self.cfg, ecap::SMTS), "A/D update in legacy mode");
                    cover(|c| c.ad_updates += 1);
                }
                // 7.5.1.1: a 32-byte page request descriptor at PQA + PQT (11.4.11).
                Access::WriteU64 { pa, .. } => {
                    prop_assert!(prq, "page request write without ECAP.PRS");
                    let at = (pqa & !0xfff) + (pqt & 0x7ffe0) + pr_words * 8;
                    prop_assert_eq!(pa, at, "page request word {} (PQA {:#x}, PQT {:#x})", pr_words, pqa, pqt);
                    pr_words += 1;
                    prop_assert!(pr_words <= 4);
                }
                other => return Err(fail(format!("translate did {other:?}"))),
            }
        }
        match r {
            Ok(t) => {
                cover(|c| c.translated += 1);
                prop_assert!(t.remaining >= 1 && t.remaining <= 1 << 30, "remaining {:#x}", t.remaining);
                prop_assert!(t.pa.raw().checked_add(t.remaining - 1).is_some(), "target wraps: {t:?}");
                prop_assert_eq!(self.model.faults().len(), before, "a fault logged for a success");
            }
            Err(f) => {
                prop_assert!((1..=7).contains(&(f.reason & Fault::REASON_MASK)), "reason {}", f.reason);
                prop_assert_eq!(f.reason & !(Fault::REASON_MASK | Fault::IN_PARENT), 0, "unknown flags");
                prop_assert_eq!(f.dev, dev);
                prop_assert_eq!(f.pasid, pasid.map(Pasid).into());
                prop_assert_eq!(f.addr, Iova(iova));
                prop_assert_eq!(f.access, access);
                prop_assert!(!f.page_request || (prq && f.reason == Fault::NOT_PRESENT), "{f:?}");
                prop_assert!(f.page_request == (pr_words == 4), "page request {f:?} after {pr_words} words");
                if f.page_request {
                    // 11.4.11.2 / 11.4.11.4: the tail moves past the descriptor, PPR is set.
                    let size = 4096 << (pqa & 7);
                    prop_assert_eq!(self.reg(off::PQT), ((pqt & 0x7ffe0) + 32) % size, "PQT after a page request");
                    prop_assert!(self.reg32(off::PRS) & 1 != 0, "PRS.PPR clear after a page request");
                }
                let last = self.model.faults().last().copied().ok_or_else(|| fail("fault not logged".into()))?;
                prop_assert_eq!(last.fault, f);
                prop_assert!(REASONS.contains(&last.vtd_reason), "VT-d reason {:#x}", last.vtd_reason);
                if last.recorded {
                    // 7.2.1, 11.4.9.1: a recorded fault is pending in a fault-recording register.
                    prop_assert!(self.reg32(off::FSTS) & fsts::PPF != 0, "recorded, but FSTS.PPF clear");
                    // 11.4.9.3 FRCD upper qword: SID 15:0, FR 39:32, F 63; lower: FI 63:12.
                    let (fro, nfr) = (self.cfg.fro(), u64::from(self.cfg.nfr()));
                    let found = (0..nfr).any(|i| {
                        let (lo, hi) = (self.reg(fro + 16 * i), self.reg(fro + 16 * i + 8));
                        hi >> 63 == 1
                            && hi as u16 == dev.table_index() as u16
                            && (hi >> 32) as u8 == last.vtd_reason
                            && lo == iova & !0xfff
                    });
                    prop_assert!(found, "no fault record for {f:?} (reason {:#x})", last.vtd_reason);
                }
                if RESERVED_ENTRY.contains(&last.vtd_reason) {
                    // 9.7 / 9.8: an entry with a reserved field set is not a valid entry: the
                    // walk stops at it (the last word read) and does not set its A/D flags.
                    let at = log.iter().rposition(|a| matches!(a, Access::ReadU64 { .. }));
                    if let Some(i) = at {
                        let Access::ReadU64 { pa, .. } = log[i] else { unreachable!() };
                        let touched = log[i..].iter().any(|a| matches!(*a, Access::FetchOr { pa: p, .. } if p == pa));
                        prop_assert!(!touched, "A/D set in the reserved-bit entry at {pa:#x}: {log:?}");
                    }
                }
                cover(|c| {
                    *c.faults.entry(last.vtd_reason).or_default() += 1;
                    c.page_requests += u64::from(f.page_request);
                });
            }
        }
        Ok(())
    }
}

fn check_bad_register(e: HostError, off: u64) -> Result<(), TestCaseError> {
    prop_assert_eq!(e, HostError::new(HostError::BAD_REGISTER, off));
    Ok(())
}

fn no_writes(log: &[Access], what: &str) -> Result<(), TestCaseError> {
    prop_assert!(log.iter().all(Access::is_read), "{what} wrote memory: {log:?}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The properties.

/// A guest image: firmware-built (legacy or scalable), corrupted, with random pages over it.
#[derive(Clone, Debug)]
struct Guest {
    kind: u8,
    scalable: bool,
    devs: Vec<DevSpec>,
    corruptions: Vec<(usize, Corrupt)>,
    random_pages: Vec<(u64, u64)>,
    /// RTADDR TTM (11.4.6): mostly the image's, sometimes any.
    ttm: Option<u64>,
    /// IQA for queued invalidation, when enabled.
    iqa: Option<u64>,
    /// PQA (11.4.11.3) for a page request queue, when set up.
    pqa: Option<u64>,
    /// Random CAP / ECAP (fault-recording and IOTLB registers kept in the window), used when
    /// the model accepts them.
    raw: Option<(u64, u64)>,
}

impl Guest {
    fn unit(&self) -> VtdModelConfig {
        match self.raw {
            Some((c, e)) => {
                // 11.4.2 FRO bits 33:24 = 0x200 / 16, NFR bits 47:40 < 128; 11.4.3 IRO bits
                // 17:8 = 0xc00 / 16: both register blocks inside the 4 KiB window.
                let c = field(field(c, 24, 10, 0x20), 47, 1, 0);
                let cfg = VtdModelConfig { cap: c, ecap: field(e, 8, 10, 0xc0), ..VtdModelConfig::legacy() };
                if VtdModel::new(cfg).is_ok() {
                    cfg
                } else {
                    unit(self.kind)
                }
            }
            None => unit(self.kind),
        }
    }

    fn image(&self) -> Image {
        // Mostly the unit's own mode; sometimes the other one (a confused or hostile guest).
        let smts = has_ecap(&self.unit(), ecap::SMTS);
        let scalable = if self.kind >= 0xe0 { self.scalable } else { smts };
        let mut im = if scalable { scalable_image(&self.devs) } else { legacy_image(&self.devs) };
        apply(&mut im, &self.corruptions);
        im
    }
}

fn guest(corrupted: bool, random: bool) -> impl Strategy<Value = Guest> {
    let max_c = if corrupted { 12 } else { 1 };
    let max_r = if random { 4 } else { 1 };
    (
        any::<u8>(),
        any::<bool>(),
        prop::collection::vec(dev_spec(), 1..4),
        prop::collection::vec((any::<usize>(), corrupt()), 0..max_c),
        prop::collection::vec((0..PAGES, any::<u64>()), 0..max_r),
        prop::option::weighted(0.1, 0u64..4),
        prop::option::weighted(
            0.3,
            (0..PAGES, 0u64..3, any::<bool>()).prop_map(|(p, qs, dw)| (p * 4096) | qs | u64::from(dw) << 11),
        ),
        prop::option::weighted(
            0.7,
            (prop_oneof![8 => (PAGES - 8..PAGES).prop_map(|p| p * 4096), 1 => pointer()], 0u64..2)
                .prop_map(|(p, qs)| p | qs),
        ),
        prop::option::weighted(0.25, any::<(u64, u64)>()),
    )
        .prop_map(|(kind, scalable, devs, corruptions, random_pages, ttm, iqa, pqa, raw)| Guest {
            kind,
            scalable,
            devs,
            corruptions,
            random_pages,
            ttm,
            iqa,
            pqa,
            raw,
        })
}

/// Runs `guest` and `steps` on a fresh unit, checking every step.
fn run_guest(g: &Guest, steps: &[Step]) -> Result<(), TestCaseError> {
    let cfg = g.unit();
    let im = g.image();
    let rig = Rig::new(cfg, &im, &g.random_pages);
    let scalable = has_ecap(&cfg, ecap::SMTS) && (g.kind < 0xe0 || g.scalable);
    let ttm = g.ttm.unwrap_or(if scalable { rtaddr::TTM_SCALABLE >> 10 } else { 0 });
    rig.enable(im.root, ttm, g.iqa.filter(|_| has_ecap(&cfg, ecap::QI)))?;
    if let Some(pqa) = g.pqa.filter(|_| has_ecap(&cfg, ecap::PRS)) {
        rig.run(&Step::Write { off: off::PQA, width: 8, value: pqa })?;
    }
    for s in steps {
        rig.run(s)?;
    }
    Ok(())
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig { cases: n, failure_persistence: None, max_shrink_iters: 4096, ..ProptestConfig::default() }
}

/// Firmware-built tables with corruptions, random programming and requests.
fn prop_corrupted_tables(cases_n: u32) -> Coverage {
    let strat = guest(true, false).prop_flat_map(|g| {
        let targets = g.image().targets;
        (Just(g), steps(targets, 40, 2))
    });
    TestRunner::new(cases(cases_n)).run(&strat, |(g, s)| run_guest(&g, &s)).unwrap();
    coverage("corrupted_tables")
}

/// Fully random pages under (and over) the tables.
fn prop_random_memory(cases_n: u32) -> Coverage {
    let strat = guest(false, true).prop_flat_map(|mut g| {
        // Random pages over the whole low RAM, including the root table's page.
        g.random_pages.push((1, u64::from(g.kind).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        let targets = g.image().targets;
        (Just(g), steps(targets, 30, 2))
    });
    TestRunner::new(cases(cases_n)).run(&strat, |(g, s)| run_guest(&g, &s)).unwrap();
    coverage("random_memory")
}

/// Uncorrupted firmware tables: the same invariants, and translations that succeed.
fn prop_clean_tables(cases_n: u32) -> Coverage {
    let strat = guest(false, false).prop_flat_map(|g| {
        let targets = g.image().targets;
        (Just(Guest { corruptions: vec![], random_pages: vec![], ..g }), steps(targets, 40, 1))
    });
    TestRunner::new(cases(cases_n)).run(&strat, |(g, s)| run_guest(&g, &s)).unwrap();
    coverage("clean_tables")
}

#[test]
fn corrupted_tables() {
    prop_corrupted_tables(256);
}

#[test]
fn random_memory() {
    prop_random_memory(256);
}

#[test]
fn clean_tables() {
    prop_clean_tables(128);
}

/// `PROPTEST_CASES` (default 20 000) cases of every property.
#[test]
#[ignore = "long run: PROPTEST_CASES=N cargo test -p ioasis-plugin-vtd --test hostile_guest -- --ignored"]
fn long_run() {
    let n = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    prop_corrupted_tables(n);
    prop_random_memory(n);
    prop_clean_tables(n / 4);
    prop_queue(n);
    prop_mappings_agree(n / 4);
    prop_caches_transparent(n / 2, false);
    prop_caches_transparent(n / 2, true);
}

/// One invalidation descriptor (6.5.2): any type (including the extended bits 11:9), fields
/// mostly well-formed, sometimes reserved bits; wait descriptors with status addresses in RAM,
/// in the queue itself, just past RAM or anywhere.
fn descriptor() -> impl Strategy<Value = [u64; 4]> {
    let ty = prop_oneof![8 => 0u64..16, 1 => (1u64..8).prop_map(|x| x << 9 | 0x5)];
    (
        ty,
        0u64..4,
        prop_oneof![3 => Just(0x000f_ffff_ffff_0000u64), 1 => Just(u64::MAX)],
        any::<u64>(),
        prop_oneof![
            2 => (pointer(), 0u64..0x1000).prop_map(|(p, o)| p | o),
            1 => any::<u64>(),
            1 => (0u64..0x4000).prop_map(|o| o & !3),
            1 => 0u64..64,
        ],
        prop_oneof![6 => Just([0u64, 0]), 1 => any::<[u64; 2]>()],
        any::<u8>(),
    )
        .prop_map(|(ty, g, mask, fields, q1, hi, flags)| {
            let mut q0 = ty | g << 4 | (fields & mask & !0xfff);
            if ty == 5 {
                // 6.5.2.8: IF 4, SW 5, FN 6, PD 7; status data 63:32.
                q0 = ty | u64::from(flags & 0xf0) | (fields & mask & !0xffff_ffff) | (fields << 32);
            }
            [q0, q1, hi[0], hi[1]]
        })
}

/// A well-formed descriptor of a random type (6.5.2.1-6.5.2.10), its fields random.
fn good_descriptor() -> impl Strategy<Value = [u64; 4]> {
    (
        0u8..8,
        any::<u64>(),
        any::<u64>(),
        1u64..4,
        0u64..19,
        prop_oneof![
            3 => (0..PAGES * 1024).prop_map(|d| d * 4),
            1 => (0u64..0x4000).prop_map(|o| o & !3),
            1 => any::<u64>().prop_map(|a| a & !3),
        ],
    )
        .prop_map(|(ty, a, b, g, am, status)| {
            // Fields: DID 31:16, SID / PASID from bit 32, G 5:4.
            let did = a & 0xffff_0000;
            let pasid = (a >> 12 & 0xf_ffff) << 32;
            match ty {
                // 6.5.2.1 context-cache: G 01/10/11, DID, SID 47:32, FM 49:48.
                0 => [0x1 | g << 4 | did | (a & 0x3_ffff_0000_0000), 0, 0, 0],
                // 6.5.2.3 IOTLB: G, DR/DW 7:6, DID; ADDR 63:12, IH 6, AM 5:0.
                1 => [0x2 | g << 4 | (b & 0xc0) | did, (b & !0xfff) | (b & 0x40) | am, 0, 0],
                // 6.5.2.8 wait: IF 4, SW 5, FN 6; status data 63:32; status address 63:2.
                2 | 3 => [0x5 | (b & 0x70) | (a << 32), status, 0, 0],
                // 6.5.2.4 PASID-based IOTLB: G 10/11, DID, PASID 51:32.
                4 => [0x6 | (2 + (g & 1)) << 4 | did | pasid, (b & !0xfff) | am, 0, 0],
                // 6.5.2.2 PASID cache: G 00/01/11.
                5 => [0x7 | [0, 1, 3][g as usize % 3] << 4 | did | pasid, 0, 0, 0],
                // 6.5.2.10 page group response: PASID present 4, code 15:12, RID 31:16, PASID;
                // LPIG 2, PRGI 11:3; private data in the upper half.
                6 => [0x9 | (b & 0x10) | (b & 0xf000) | did | pasid, b & 0xffc, a, b],
                // 6.5.2.5 device-TLB (valid with ECAP.DT).
                _ => [0x3 | (a & 0xffff_0000_0000), b & !0x7fe, 0, 0],
            }
        })
}

/// What the guest does to its invalidation queue.
#[derive(Clone, Debug)]
enum QueueOp {
    /// IQT: any offset (misaligned, beyond the queue, wrapping behind IQH).
    Tail(u64),
    /// GCMD with or without QIE (TE kept).
    Enable(bool),
    /// FSTS: clear IQE (write 1).
    ClearIqe,
    /// IQA: any value.
    Iqa(u64),
    /// Any other register write.
    Other(u64, u8, u64),
}

fn queue_op() -> impl Strategy<Value = QueueOp> {
    prop_oneof![
        6 => prop_oneof![3 => (0u64..0x400).prop_map(|o| o & !0xf), 1 => 0u64..0x80000, 1 => any::<u64>()].prop_map(QueueOp::Tail),
        1 => any::<bool>().prop_map(QueueOp::Enable),
        2 => Just(QueueOp::ClearIqe),
        1 => (pointer(), 0u64..0x1000).prop_map(|(p, low)| QueueOp::Iqa(p | (low & 0x807))),
        1 => (prop::sample::select(REGS), prop_oneof![Just(4u8), Just(8u8)], reg_value()).prop_map(|(o, w, v)| QueueOp::Other(o, w, v)),
    ]
}

#[derive(Clone, Debug)]
struct Queue {
    kind: u8,
    /// IQA (11.4.10.3): base page, DW bit 11, QS bits 2:0.
    iqa: u64,
    descriptors: Vec<[u64; 4]>,
    ops: Vec<QueueOp>,
}

fn queue() -> impl Strategy<Value = Queue> {
    (
        any::<u8>(),
        prop_oneof![8 => (1..PAGES).prop_map(|p| p * 4096), 1 => pointer()],
        0u64..8,
        any::<bool>(),
        prop::collection::vec(prop_oneof![8 => good_descriptor(), 1 => descriptor()], 0..48),
        prop::collection::vec(queue_op(), 1..24),
    )
        .prop_map(|(kind, base, qs, dw, descriptors, ops)| Queue {
            kind,
            iqa: base | qs | u64::from(dw) << 11,
            descriptors,
            ops,
        })
}

fn run_queue(q: &Queue) -> Result<(), TestCaseError> {
    // The units with queued invalidation (ECAP.QI); one without, now and then.
    let cfg = unit([0, 2, 3, 4, 3, 4, 0][q.kind as usize % 7] + u8::from(q.kind == 0xff));
    let mut im = Image::new();
    let dsz = if q.iqa & (1 << 11) != 0 { 32 } else { 16 };
    let base = q.iqa & !0xfff;
    for (i, d) in q.descriptors.iter().enumerate() {
        for (k, &w) in d.iter().enumerate().take(dsz / 8) {
            if let Some(at) = base.checked_add((i * dsz + k * 8) as u64) {
                im.set(at, w);
            }
        }
    }
    let rig = Rig::new(cfg, &im, &[]);
    rig.enable(0, 0, Some(q.iqa))?;
    for op in &q.ops {
        let step = match *op {
            QueueOp::Tail(t) => Step::Write { off: off::IQT, width: 8, value: t },
            QueueOp::Enable(on) => {
                Step::Write { off: off::GCMD, width: 4, value: u64::from(gcmd::TE | if on { gcmd::QIE } else { 0 }) }
            }
            QueueOp::ClearIqe => Step::Write { off: off::FSTS, width: 4, value: u64::from(fsts::IQE) },
            QueueOp::Iqa(v) => Step::Write { off: off::IQA, width: 8, value: v },
            QueueOp::Other(o, w, v) => Step::Write { off: o, width: w, value: v },
        };
        rig.run(&step)?;
    }
    Ok(())
}

/// The invalidation queue: random descriptors, tails and queue programming.
fn prop_queue(cases_n: u32) -> Coverage {
    TestRunner::new(cases(cases_n)).run(&queue(), |q| run_queue(&q)).unwrap();
    coverage("queue")
}

#[test]
fn invalidation_queue() {
    prop_queue(256);
}

/// Legacy mode on a fresh unit: what `guest_mappings` enumerates is exactly what translation
/// gives (9.8 walk vs enumeration), for the enumerated pages and for random addresses.
fn run_mappings_agree(g: &Guest, probes: &[(u64, u64)]) -> Result<(), TestCaseError> {
    // Any unit, in legacy mode (RTADDR.TTM = 00, which every unit has).
    let cfg = if g.raw.is_some() { g.unit() } else { unit(g.kind % 3) };
    let mut im = legacy_image(&g.devs);
    apply(&mut im, &g.corruptions);
    let rig = Rig::new(cfg, &im, &g.random_pages);
    rig.enable(im.root, 0, None)?;
    for d in &g.devs {
        let dev = dev_of(d.sid, 0, 2);
        let Ok(maps) = rig.model.guest_mappings(&rig.mem, dev, None, 4096) else { continue };
        cover(|c| c.mappings += maps.len() as u64);
        for (m, &(_, off)) in maps.iter().zip(probes) {
            let off = off % m.len;
            let access = if m.prot.read() { Prot::READ } else { Prot::WRITE };
            let req = DmaRequest { dev, pasid: None, iova: Iova(m.iova.raw() + off), access };
            let t = rig.model.translate(&rig.mem, &req);
            cover(|c| c.translated += 1);
            prop_assert_eq!(t.map(|t| t.pa.raw()), Ok(m.addr.raw() + off), "enumerated {:?}", m);
        }
        for &(iova, _) in probes {
            let req = DmaRequest { dev, pasid: None, iova: Iova(iova), access: Prot::READ };
            if let Ok(t) = rig.model.translate(&rig.mem, &req) {
                let hit = maps.iter().find(|m| iova.wrapping_sub(m.iova.raw()) < m.len);
                let Some(m) = hit else { return Err(fail(format!("{iova:#x} translates to {t:?}, not enumerated"))) };
                prop_assert_eq!(t.pa.raw(), m.addr.raw() + (iova - m.iova.raw()));
            }
        }
        rig.mem.take_log();
    }
    Ok(())
}

fn prop_mappings_agree(cases_n: u32) -> Coverage {
    let strat = (
        guest(true, false).prop_map(|g| Guest { scalable: false, ..g }),
        prop::collection::vec((prop_oneof![0u64..(1 << 22), 0u64..(1 << 39), any::<u64>()], any::<u64>()), 16),
    )
        .prop_flat_map(|(g, mut probes)| {
            let targets = legacy_image(&g.devs).targets;
            for (k, t) in targets.iter().enumerate().take(8) {
                probes[k].0 = t.2.wrapping_add(probes[k].1 % 0x2000);
            }
            (Just(g), Just(probes))
        });
    TestRunner::new(cases(cases_n)).run(&strat, |(g, p)| run_mappings_agree(&g, &p)).unwrap();
    coverage("mappings_agree")
}

#[test]
fn mappings_agree_with_translation() {
    prop_mappings_agree(128);
}

// ---------------------------------------------------------------------------------------------
// Regressions: bugs the properties found, minimized.

/// Device 00:00.2 (SID 0) in domain 1 with the 48-bit, 4-level AW, RID_PASID only, nothing
/// else set, and `maps`: the base of the regression tests' single-device images.
fn device0(mode: u8, maps: Vec<MapSpec>) -> DevSpec {
    DevSpec { sid: 0, mode, aw: 0, did: 1, fpd: false, pre: false, ssade: false, pasids: vec![0], maps }
}

/// `cfg` with an MGAW of `width` bits (11.4.2: CAP bits 21:16 hold width - 1).
fn with_mgaw(cfg: VtdModelConfig, width: u64) -> VtdModelConfig {
    VtdModelConfig { cap: field(cfg.cap, 16, 6, width - 1), ..cfg }
}

/// A read without PASID by device 00:00.2 at `iova`: the output address or the fault reason.
fn read_dma(rig: &Rig, iova: u64) -> Result<u64, u32> {
    let req = DmaRequest { dev: dev_of(0, 0, 2), pasid: None, iova: Iova(iova), access: Prot::READ };
    rig.model.translate(&rig.mem, &req).map(|t| t.pa.raw()).map_err(|f| f.reason)
}

/// `corrupted_tables` (a bit flip made a second-stage 2 MiB leaf misaligned): the walk set the
/// leaf's A flag (SSADE) and then faulted on its reserved address bits (9.8, reason 0xc). An
/// entry with a reserved field set is not used, so its A/D flags stay as the guest wrote them.
#[test]
fn regression_reserved_large_leaf_gets_no_ad() {
    // PGTT = 010, second-stage only
    let spec = DevSpec {
        ssade: true,
        ..device0(1, vec![MapSpec { iova: 0, pa: 0x20_0000, leaf_level: 2, write: true, read: true }])
    };
    let mut im = scalable_image(&[spec]);
    // The leaf: the only entry with R, W and PS (9.8); bit 12 is reserved in a 2 MiB leaf.
    let (&at, &e) = im.words.iter().find(|(_, &e)| e & sl::PS != 0 && e & 3 == 3).expect("the leaf");
    let bad = e | 0x1000;
    im.set(at, bad);
    let rig = Rig::new(unit(3), &im, &[]);
    rig.enable(im.root, 1, None).unwrap();
    for access in [Prot::READ, Prot::WRITE] {
        let step = Step::Translate { dev: dev_of(0, 0, 2), pasid: None, iova: 0x1234, access };
        rig.run(&step).unwrap();
        let f = rig.model.faults().last().copied().expect("a fault");
        assert_eq!((f.fault.reason, f.vtd_reason), (Fault::BAD_ENTRY, 0xc));
        assert_eq!(rig.mem.read_u64(PhysAddr(at)).unwrap(), bad, "A/D set in a reserved-bit leaf");
    }
}

/// Found reading the page-request path while writing the properties: a page request queue
/// whose base plus tail passes the top of the address space (PQA 11.4.11.3 near 2^64) could
/// not take the request, and the model fell back to a fault record without setting PRS.PRO,
/// unlike every other unusable-queue case (11.4.11.4; the model documentation).
#[test]
fn regression_unwritable_page_request_queue_sets_pro() {
    // PGTT = 001, first-stage only, with an empty table: not present
    let spec = DevSpec { pre: true, ..device0(0, vec![]) };
    let im = scalable_image(&[spec]);
    let rig = Rig::new(unit(3), &im, &[]);
    rig.enable(im.root, 1, None).unwrap();
    rig.run(&Step::Write { off: off::PQA, width: 8, value: 0xffff_ffff_ffff_f000 | 7 }).unwrap();
    rig.run(&Step::Write { off: off::PQT, width: 8, value: 0x1000 }).unwrap();
    rig.run(&Step::Translate { dev: dev_of(0, 0, 2), pasid: None, iova: 0x5000, access: Prot::READ }).unwrap();
    let f = rig.model.faults().last().copied().expect("a fault");
    assert_eq!((f.fault.reason, f.fault.page_request, f.recorded), (Fault::NOT_PRESENT, false, true));
    // 11.4.11.4 PRS: PRO bit 1.
    assert_ne!(rig.reg32(off::PRS) & 2, 0, "PRS.PRO not set");
}

/// While the tables do not change, the caches are invisible (6.2): every translation of a
/// unit that has cached earlier ones equals that of a fresh unit, which walks everything, on
/// the same memory (restored between the two, so that A/D updates and fault handling of one
/// do not reach the other). DIDs are distinct per device (6.2.3: one domain, one table).
///
/// With `constant` memory (every translation's A/D updates undone), any guest memory, however
/// corrupted, must give the same: a cache may only ever differ from memory that changed.
fn run_caches_transparent(
    g: &Guest,
    reqs: &[(usize, Option<u32>, u64, Prot)],
    constant: bool,
) -> Result<(), TestCaseError> {
    let cfg = g.unit();
    let im = g.image();
    let rig = Rig::new(cfg, &im, &g.random_pages);
    let scalable = has_ecap(&cfg, ecap::SMTS) && (g.kind < 0xe0 || g.scalable);
    let ttm = if scalable { 1 } else { 0 };
    rig.enable(im.root, ttm, None)?;
    let fresh = || -> Result<VtdModel, TestCaseError> {
        let m = VtdModel::new(cfg).map_err(|e| fail(e.to_string()))?;
        let w = |off, v| m.mmio_write(&rig.mem, off, 8, v).map_err(|e| fail(e.to_string()));
        w(off::RTADDR, im.root | ttm << 10)?;
        m.mmio_write(&rig.mem, off::GCMD, 4, u64::from(gcmd::SRTP)).map_err(|e| fail(e.to_string()))?;
        m.mmio_write(&rig.mem, off::GCMD, 4, u64::from(gcmd::TE)).map_err(|e| fail(e.to_string()))?;
        Ok(m)
    };
    let targets = if im.targets.is_empty() { vec![(0, None, 0)] } else { im.targets.clone() };
    for &(k, pasid, delta, access) in reqs {
        let (sid, tp, iova) = targets[k % targets.len()];
        let req = DmaRequest {
            dev: dev_of(sid, 0, 2),
            pasid: pasid.or(tp).map(Pasid),
            iova: Iova(iova.wrapping_add(delta)),
            access,
        };
        let before = rig.mem.snapshot();
        let cached = rig.model.translate(&rig.mem, &req);
        let after = rig.mem.snapshot();
        rig.mem.restore(before.clone());
        let model = fresh()?;
        let walked = model.translate(&rig.mem, &req);
        rig.mem.restore(if constant { before } else { after });
        let reason = |m: &VtdModel| m.faults().last().map(|f| f.vtd_reason);
        match (cached, walked) {
            (Ok(a), Ok(b)) => {
                cover(|c| c.translated += 1);
                prop_assert_eq!(a, b, "{:?}", req);
            }
            (Err(a), Err(b)) => {
                cover(|c| *c.faults.entry(reason(&model).unwrap_or(0)).or_default() += 1);
                prop_assert_eq!(a.reason, b.reason, "{:?}", req);
                prop_assert_eq!(reason(&rig.model), reason(&model), "{:?}", req);
            }
            (a, b) => return Err(fail(format!("{req:?}: cached {a:?}, fresh {b:?}"))),
        }
    }
    rig.mem.take_log();
    Ok(())
}

fn prop_caches_transparent(cases_n: u32, constant: bool) -> Coverage {
    let strat = (
        guest(constant, constant),
        prop::collection::vec(
            (
                any::<usize>(),
                prop::option::weighted(0.1, 0u32..300),
                prop_oneof![3 => Just(0u64), 1 => 0u64..0x3000],
                access(),
            ),
            1..40,
        ),
    )
        .prop_map(|(mut g, reqs)| {
            let mut seen = std::collections::BTreeSet::new();
            g.devs.retain(|d| seen.insert(d.sid));
            // Pairwise at least 3 bits apart: no single corruption makes two domains one.
            for (i, d) in g.devs.iter_mut().enumerate() {
                d.did = 7 << (3 * i);
            }
            (g, reqs)
        });
    TestRunner::new(cases(cases_n)).run(&strat, |(g, r)| run_caches_transparent(&g, &r, constant)).unwrap();
    coverage("caches_transparent")
}

#[test]
fn caches_are_transparent_while_tables_stay() {
    prop_caches_transparent(128, false);
}

#[test]
fn caches_are_transparent_over_corrupted_constant_memory() {
    prop_caches_transparent(128, true);
}

/// `caches_are_transparent_while_tables_stay` (a unit with MGAW 5, CAP bits 21:16 = 4): a
/// 4 KiB translation cached for IOVA 0 answered IOVA 0x20, which is beyond the 5-bit address
/// width and must fault with 0x4 (3.7.1) as a walk does; the IOTLB lookup came before the
/// width check.
#[test]
fn regression_iotlb_hit_beyond_address_width() {
    let cfg = with_mgaw(VtdModelConfig::legacy(), 5);
    // TT = 00, second-level
    let spec = device0(0, vec![MapSpec { iova: 0, pa: 0, leaf_level: 1, write: true, read: true }]);
    let im = legacy_image(&[spec]);
    let rig = Rig::new(cfg, &im, &[]);
    rig.enable(im.root, 0, None).unwrap();
    let dma = |iova| read_dma(&rig, iova);
    assert_eq!(dma(0x10), Ok(0x10));
    assert_eq!(dma(0x20), Err(Fault::ADDRESS_SIZE));
}

/// `caches_are_transparent_while_tables_stay` (a scalable unit with MGAW 16): a nested
/// translation through a first-stage and a second-stage 2 MiB leaf was cached as one 2 MiB
/// page, which then answered IOVAs whose second-stage input (guest-physical 0x10000 and up)
/// is beyond the 16-bit second-stage width and must fault with 0x4 (3.7.1, 3.8).
#[test]
fn regression_nested_iotlb_entry_beyond_second_stage_width() {
    let cfg = with_mgaw(VtdModelConfig::scalable(), 16);
    // PGTT = 011, nested; the second stage maps guest RAM 1:1 with a 2 MiB leaf
    let spec = device0(2, vec![MapSpec { iova: 0, pa: 0, leaf_level: 2, write: true, read: true }]);
    let im = scalable_image(&[spec]);
    assert!(im.next < 0x1_0000, "the tables lie below the 16-bit second-stage width");
    let rig = Rig::new(cfg, &im, &[]);
    rig.enable(im.root, 1, None).unwrap();
    let dma = |iova| read_dma(&rig, iova);
    assert_eq!(dma(0x10), Ok(0x10));
    assert_eq!(dma(0x1_0000), Err(Fault::ADDRESS_SIZE));
    assert_eq!(dma(0x20), Ok(0x20));
}

/// `mappings_agree_with_translation` (a unit with a small MGAW): `guest_mappings` reported a
/// 1 GiB leaf at IOVA 0 whole, though translation faults (0x4, 3.7.1) on its inputs beyond the
/// address width; the enumeration now reports the part below the width.
#[test]
fn regression_mappings_clip_a_leaf_at_the_address_width() {
    let cfg = with_mgaw(VtdModelConfig::legacy(), 28);
    let spec = device0(0, vec![MapSpec { iova: 0, pa: 0x4000_0000, leaf_level: 3, write: true, read: true }]);
    let im = legacy_image(&[spec]);
    let rig = Rig::new(cfg, &im, &[]);
    rig.enable(im.root, 0, None).unwrap();
    let maps = rig.model.guest_mappings(&rig.mem, dev_of(0, 0, 2), None, 16).unwrap();
    assert_eq!(maps.len(), 1);
    assert_eq!((maps[0].iova, maps[0].addr, maps[0].len), (Iova(0), PhysAddr(0x4000_0000), 1 << 28));
    let req = DmaRequest { dev: dev_of(0, 0, 2), pasid: None, iova: Iova(1 << 28), access: Prot::READ };
    assert_eq!(rig.model.translate(&rig.mem, &req).map_err(|f| f.reason), Err(Fault::ADDRESS_SIZE));
}
