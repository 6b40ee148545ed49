//! The path firmware gives an operating system to the DMAR table: RSDP → XSDT → DMAR.
//!
//! On a PC the OS finds the Root System Description Pointer by scanning the BIOS read-only area
//! `0xE0000..=0xFFFFF` on 16-byte boundaries for `"RSD PTR "` (ACPI 6.x, 5.2.5.1). An ACPI 2.0+
//! RSDP (revision 2) points to the Extended System Description Table (5.2.8), whose entries are
//! the 64-bit guest-physical addresses of the other tables, the DMAR (VT-d chapter 8,
//! [`crate::dmar`]) among them.
//!
//! [`FirmwareBuilder`] lays the three out and writes them into guest memory (any vm-memory
//! [`GuestMemory`], e.g. [`MemorySlots::guest_memory`](crate::MemorySlots::guest_memory));
//! [`find_rsdp`], [`read_tables`] and [`find_dmar`] walk the same path back as a guest would.
//! The walk treats guest memory as hostile: every length is checked before it is used, every
//! address is read through the guest-memory bounds checks, and every loop has a fixed bound
//! (the scan, [`MAX_XSDT_ENTRIES`], [`MAX_TABLE_LEN`]).
//!
//! ```
//! use ioasis::{PhysAddr, RequesterId};
//! use ioasis_kvm::acpi::{find_dmar, FirmwareBuilder};
//! use ioasis_kvm::dmar::{Dmar, DmarUnit};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! let dmar = Dmar {
//!     host_address_width: 48,
//!     intr_remap: false,
//!     units: vec![DmarUnit { base: PhysAddr(0xfed9_0000), segment: 0, include_all: true, devices: vec![] }],
//!     rmrrs: vec![],
//! };
//! let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! let tables = FirmwareBuilder::new(0xe_0000)?.dmar(&dmar)?.build()?;
//! tables.write_to(&mem)?;
//! assert_eq!(find_dmar(&mem)?, (tables.tables[0].gpa, dmar));
//! # Ok::<(), ioasis_kvm::acpi::AcpiError>(())
//! ```

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::dmar::{Dmar, DmarError};

/// The BIOS read-only area an RSDP is searched in (5.2.5.1): first and last byte.
pub const BIOS_AREA: (u64, u64) = (0xe_0000, 0xf_ffff);
/// 5.2.5.3: bytes of an ACPI 2.0+ RSDP, and of the part the first checksum covers.
pub const RSDP_LEN: usize = 36;
const RSDP_V1_LEN: usize = 20;
/// 5.2.5.3: the RSDP signature, and the revision that has an XSDT.
const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
const RSDP_REVISION: u8 = 2;
/// 5.2.5.1: the RSDP sits on a 16-byte boundary.
const RSDP_ALIGN: u64 = 16;
/// 5.2.6: every system description table starts with this 36-byte header.
const SDT_HEADER_LEN: usize = 36;
/// 5.2.8: the XSDT's signature and revision; its entries are 8 bytes each.
const XSDT_SIGNATURE: &[u8; 4] = b"XSDT";
const XSDT_REVISION: u8 = 1;
const XSDT_ENTRY_LEN: usize = 8;
/// Where this builder puts tables: 16-byte aligned, one after the other.
const TABLE_ALIGN: u64 = 16;
/// The parser reads no table longer than this (a DMAR of a large machine is a few KiB).
pub const MAX_TABLE_LEN: u32 = 1 << 20;
/// The parser follows no more XSDT entries than this.
pub const MAX_XSDT_ENTRIES: usize = 256;
/// An RSDP length field larger than this is refused (ACPI 6.x defines 36).
const MAX_RSDP_LEN: u32 = 4096;

/// OEM fields of the tables built here (5.2.6).
const OEM_ID: &[u8; 6] = b"IOASIS";
const OEM_TABLE_ID: &[u8; 8] = b"IOASXSDT";
const CREATOR_ID: &[u8; 4] = b"IOAS";

/// Why tables could not be built, written, or found and read back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AcpiError {
    /// The RSDP must start on a 16-byte boundary and lie wholly in `0xE0000..=0xFFFFF`.
    #[error("RSDP at {0:#x} is not on a 16-byte boundary inside 0xe0000..=0xfffff")]
    RsdpPlacement(u64),
    /// The tables would overlap the RSDP, or run past the top of the address space.
    #[error("tables at {gpa:#x} ({len:#x} bytes) overlap the RSDP or wrap around")]
    Layout {
        /// Where the tables start.
        gpa: u64,
        /// Their total length.
        len: u64,
    },
    /// A table handed to the builder is not a well-formed system description table.
    #[error("table {index} given to the builder: {why}")]
    BadTable {
        /// Its position among the tables given.
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// The DMAR could not be built or parsed.
    #[error(transparent)]
    Dmar(#[from] DmarError),
    /// Guest memory cannot be read or written there.
    #[error("guest memory at {gpa:#x}+{len:#x} cannot be accessed")]
    Memory {
        /// Start of the access.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// No RSDP with a valid checksum in the BIOS area.
    #[error("no RSDP in 0xe0000..=0xfffff")]
    NoRsdp,
    /// The RSDP is older than ACPI 2.0: it has no XSDT.
    #[error("RSDP revision {0} has no XSDT (revision 2 or later needed)")]
    Revision(u8),
    /// A structure does not carry the signature it must.
    #[error("{what} at {gpa:#x}: bad signature {found:?}")]
    Signature {
        /// Which structure.
        what: &'static str,
        /// Where.
        gpa: u64,
        /// What was there (up to 8 bytes).
        found: Vec<u8>,
    },
    /// A structure's bytes do not sum to zero.
    #[error("{what} at {gpa:#x}: bad checksum")]
    Checksum {
        /// Which structure (`RSDP`, `RSDP (extended)`, `XSDT`).
        what: &'static str,
        /// Where.
        gpa: u64,
    },
    /// A length field is too small, too large, or not a whole number of entries.
    #[error("{what} at {gpa:#x}: bad length {len}")]
    Length {
        /// Which structure.
        what: &'static str,
        /// Where.
        gpa: u64,
        /// The length it claims.
        len: u64,
    },
    /// The XSDT lists more tables than [`MAX_XSDT_ENTRIES`].
    #[error("the XSDT lists {0} tables, more than this parser follows")]
    TooManyTables(usize),
    /// The XSDT lists no DMAR.
    #[error("no DMAR table in the XSDT")]
    NoDmar,
}

/// One structure placed in guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    /// Guest-physical address.
    pub gpa: u64,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// RSDP, XSDT and the tables it lists, laid out with their guest-physical addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirmwareTables {
    /// The RSDP (36 bytes, in the BIOS area).
    pub rsdp: Placed,
    /// The XSDT.
    pub xsdt: Placed,
    /// The tables, in XSDT order.
    pub tables: Vec<Placed>,
}

impl FirmwareTables {
    /// Every structure: RSDP, XSDT, then the tables.
    pub fn all(&self) -> impl Iterator<Item = &Placed> {
        [&self.rsdp, &self.xsdt].into_iter().chain(&self.tables)
    }

    /// Writes every structure into guest memory. All or nothing: when one does not fit in
    /// guest memory, nothing is written.
    pub fn write_to<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<(), AcpiError> {
        if let Some(p) =
            self.all().find(|p| !mem.check_range(GuestAddress(p.gpa), p.bytes.len(), vm_memory::Permissions::Write))
        {
            return Err(AcpiError::Memory { gpa: p.gpa, len: p.bytes.len() as u64 });
        }
        for p in self.all() {
            let len = p.bytes.len() as u64;
            mem.write_slice(&p.bytes, GuestAddress(p.gpa)).map_err(|_| AcpiError::Memory { gpa: p.gpa, len })?;
        }
        tracing::debug!(rsdp = self.rsdp.gpa, xsdt = self.xsdt.gpa, tables = self.tables.len(), "ACPI tables written");
        Ok(())
    }
}

/// Builds the RSDP → XSDT → tables chain (see the module docs).
#[derive(Clone, Debug)]
pub struct FirmwareBuilder {
    rsdp_gpa: u64,
    tables_gpa: Option<u64>,
    tables: Vec<Vec<u8>>,
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn align_up(v: u64, align: u64) -> Option<u64> {
    v.checked_add(align - 1).map(|v| v & !(align - 1))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        w.copy_from_slice(s);
    }
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        w.copy_from_slice(s);
    }
    u64::from_le_bytes(w)
}

impl FirmwareBuilder {
    /// Tables whose RSDP goes at `rsdp_gpa` (16-byte aligned, the whole 36 bytes inside
    /// `0xE0000..=0xFFFFF`). By default the XSDT and the tables follow the RSDP directly.
    pub fn new(rsdp_gpa: u64) -> Result<Self, AcpiError> {
        let end = rsdp_gpa.checked_add(RSDP_LEN as u64 - 1);
        if rsdp_gpa % RSDP_ALIGN != 0 || rsdp_gpa < BIOS_AREA.0 || end.is_none_or(|e| e > BIOS_AREA.1) {
            return Err(AcpiError::RsdpPlacement(rsdp_gpa));
        }
        Ok(Self { rsdp_gpa, tables_gpa: None, tables: Vec::new() })
    }

    /// Puts the XSDT and the tables from `gpa` on (rounded up to 16 bytes) instead.
    pub fn tables_at(mut self, gpa: u64) -> Self {
        self.tables_gpa = Some(gpa);
        self
    }

    /// Adds the DMAR describing `dmar`.
    pub fn dmar(self, dmar: &Dmar) -> Result<Self, AcpiError> {
        let bytes = dmar.to_bytes()?;
        self.table(bytes)
    }

    /// Adds a table given whole: a 36-byte header (5.2.6) whose length is the table's and whose
    /// bytes sum to zero. An RSDP or XSDT is refused (the builder makes those).
    pub fn table(mut self, bytes: Vec<u8>) -> Result<Self, AcpiError> {
        let index = self.tables.len();
        let bad = |why| AcpiError::BadTable { index, why };
        if bytes.len() < SDT_HEADER_LEN {
            return Err(bad("shorter than the 36-byte header"));
        }
        if u32_at(&bytes, 4) as usize != bytes.len() {
            return Err(bad("header length is not the table's length"));
        }
        if bytes.len() > MAX_TABLE_LEN as usize {
            return Err(bad("longer than MAX_TABLE_LEN"));
        }
        if sum(&bytes) != 0 {
            return Err(bad("bytes do not sum to zero"));
        }
        if &bytes[0..4] == XSDT_SIGNATURE || &bytes[0..4] == b"RSD " {
            return Err(bad("the builder makes the RSDP and XSDT itself"));
        }
        self.tables.push(bytes);
        Ok(self)
    }

    /// Lays the structures out: the XSDT at the tables' address, then each table, each on a
    /// 16-byte boundary; checksums filled in.
    pub fn build(&self) -> Result<FirmwareTables, AcpiError> {
        let rsdp_end = self.rsdp_gpa + RSDP_LEN as u64;
        let start = self.tables_gpa.unwrap_or(rsdp_end);
        let xsdt_gpa = align_up(start, TABLE_ALIGN).ok_or(AcpiError::Layout { gpa: start, len: 0 })?;
        let xsdt_len = SDT_HEADER_LEN + XSDT_ENTRY_LEN * self.tables.len();
        let wraps = AcpiError::Layout { gpa: xsdt_gpa, len: u64::MAX };
        let mut end = xsdt_gpa.checked_add(xsdt_len as u64).ok_or(wraps.clone())?;
        let mut tables = Vec::with_capacity(self.tables.len());
        for t in &self.tables {
            let gpa = align_up(end, TABLE_ALIGN).ok_or(wraps.clone())?;
            end = gpa.checked_add(t.len() as u64).ok_or(wraps.clone())?;
            tables.push(Placed { gpa, bytes: t.clone() });
        }
        if xsdt_gpa < rsdp_end && self.rsdp_gpa < end {
            return Err(AcpiError::Layout { gpa: xsdt_gpa, len: end - xsdt_gpa });
        }

        // 5.2.8: the XSDT is a header followed by one 64-bit address per table.
        let mut xsdt = Vec::with_capacity(xsdt_len);
        sdt_header(&mut xsdt, XSDT_SIGNATURE, xsdt_len, XSDT_REVISION);
        for t in &tables {
            xsdt.extend_from_slice(&t.gpa.to_le_bytes());
        }
        xsdt[9] = 0u8.wrapping_sub(sum(&xsdt));

        // 5.2.5.3: signature, checksum (first 20 bytes), OEM id, revision, RSDT address (none),
        // length, XSDT address, extended checksum (all 36 bytes), 3 reserved bytes.
        let mut rsdp = Vec::with_capacity(RSDP_LEN);
        rsdp.extend_from_slice(RSDP_SIGNATURE);
        rsdp.push(0);
        rsdp.extend_from_slice(OEM_ID);
        rsdp.push(RSDP_REVISION);
        rsdp.extend_from_slice(&0u32.to_le_bytes());
        rsdp.extend_from_slice(&(RSDP_LEN as u32).to_le_bytes());
        rsdp.extend_from_slice(&xsdt_gpa.to_le_bytes());
        rsdp.extend_from_slice(&[0; 4]);
        rsdp[8] = 0u8.wrapping_sub(sum(&rsdp[..RSDP_V1_LEN]));
        rsdp[32] = 0u8.wrapping_sub(sum(&rsdp));
        Ok(FirmwareTables {
            rsdp: Placed { gpa: self.rsdp_gpa, bytes: rsdp },
            xsdt: Placed { gpa: xsdt_gpa, bytes: xsdt },
            tables,
        })
    }
}

/// 5.2.6: signature, length, revision, checksum (0, patched by the caller), OEM id, OEM table
/// id, OEM revision, creator id, creator revision.
fn sdt_header(out: &mut Vec<u8>, signature: &[u8; 4], len: usize, revision: u8) {
    out.extend_from_slice(signature);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.push(revision);
    out.push(0);
    out.extend_from_slice(OEM_ID);
    out.extend_from_slice(OEM_TABLE_ID);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(CREATOR_ID);
    out.extend_from_slice(&1u32.to_le_bytes());
}

/// A table the XSDT lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundTable {
    /// Its signature.
    pub signature: [u8; 4],
    /// Its guest-physical address.
    pub gpa: u64,
    /// Its length as its header says (checked against [`MAX_TABLE_LEN`]).
    pub len: u32,
}

/// What the walk from the RSDP found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundTables {
    /// Where the RSDP is.
    pub rsdp_gpa: u64,
    /// The RSDP's OEM id.
    pub oem_id: [u8; 6],
    /// Where the XSDT is.
    pub xsdt_gpa: u64,
    /// The tables it lists, in order.
    pub tables: Vec<FoundTable>,
}

/// Reads `len` bytes of guest memory at `gpa`, refusing a range that wraps or is not wholly
/// guest memory.
fn read<M: GuestMemory + ?Sized>(mem: &M, gpa: u64, len: usize) -> Result<Vec<u8>, AcpiError> {
    let err = AcpiError::Memory { gpa, len: len as u64 };
    gpa.checked_add(len as u64).ok_or(err.clone())?;
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(gpa)).map_err(|_| err)?;
    Ok(buf)
}

/// Scans the BIOS area on 16-byte boundaries for an RSDP whose first 20 bytes sum to zero, as
/// an OS does (5.2.5.1); the first one found. Candidates with a bad checksum are skipped.
pub fn find_rsdp<M: GuestMemory + ?Sized>(mem: &M) -> Result<u64, AcpiError> {
    let area = read(mem, BIOS_AREA.0, (BIOS_AREA.1 - BIOS_AREA.0 + 1) as usize)?;
    (0..area.len())
        .step_by(RSDP_ALIGN as usize)
        .find(|&off| area.get(off..off + RSDP_V1_LEN).is_some_and(|c| &c[..8] == RSDP_SIGNATURE && sum(c) == 0))
        .map(|off| BIOS_AREA.0 + off as u64)
        .ok_or(AcpiError::NoRsdp)
}

/// Walks from the RSDP at `rsdp_gpa` to the XSDT and lists the tables it names, checking the
/// RSDP's signature, revision, length and both checksums, the XSDT's signature, length and
/// checksum, and each listed table's header (readable, length within [`MAX_TABLE_LEN`]).
pub fn read_tables<M: GuestMemory + ?Sized>(mem: &M, rsdp_gpa: u64) -> Result<FoundTables, AcpiError> {
    let v1 = read(mem, rsdp_gpa, RSDP_V1_LEN)?;
    if &v1[..8] != RSDP_SIGNATURE {
        return Err(AcpiError::Signature { what: "RSDP", gpa: rsdp_gpa, found: v1[..8].to_vec() });
    }
    if sum(&v1) != 0 {
        return Err(AcpiError::Checksum { what: "RSDP", gpa: rsdp_gpa });
    }
    let revision = v1[15];
    if revision < RSDP_REVISION {
        return Err(AcpiError::Revision(revision));
    }
    let head = read(mem, rsdp_gpa, RSDP_LEN)?;
    let rsdp_len = u32_at(&head, 20);
    if !(RSDP_LEN as u32..=MAX_RSDP_LEN).contains(&rsdp_len) {
        return Err(AcpiError::Length { what: "RSDP", gpa: rsdp_gpa, len: rsdp_len.into() });
    }
    let whole = read(mem, rsdp_gpa, rsdp_len as usize)?;
    if sum(&whole) != 0 {
        return Err(AcpiError::Checksum { what: "RSDP (extended)", gpa: rsdp_gpa });
    }
    let mut oem_id = [0u8; 6];
    oem_id.copy_from_slice(&head[9..15]);
    let xsdt_gpa = u64_at(&head, 24);

    let header = read(mem, xsdt_gpa, SDT_HEADER_LEN)?;
    if &header[..4] != XSDT_SIGNATURE {
        return Err(AcpiError::Signature { what: "XSDT", gpa: xsdt_gpa, found: header[..4].to_vec() });
    }
    let xsdt_len = u32_at(&header, 4);
    let bad_len = AcpiError::Length { what: "XSDT", gpa: xsdt_gpa, len: xsdt_len.into() };
    let entries_len = (xsdt_len as usize).checked_sub(SDT_HEADER_LEN).ok_or(bad_len.clone())?;
    if xsdt_len > MAX_TABLE_LEN || entries_len % XSDT_ENTRY_LEN != 0 {
        return Err(bad_len);
    }
    let count = entries_len / XSDT_ENTRY_LEN;
    if count > MAX_XSDT_ENTRIES {
        return Err(AcpiError::TooManyTables(count));
    }
    let xsdt = read(mem, xsdt_gpa, xsdt_len as usize)?;
    if sum(&xsdt) != 0 {
        return Err(AcpiError::Checksum { what: "XSDT", gpa: xsdt_gpa });
    }
    let mut tables = Vec::with_capacity(count);
    for i in 0..count {
        let gpa = u64_at(&xsdt, SDT_HEADER_LEN + i * XSDT_ENTRY_LEN);
        let h = read(mem, gpa, SDT_HEADER_LEN)?;
        let len = u32_at(&h, 4);
        if !(SDT_HEADER_LEN as u32..=MAX_TABLE_LEN).contains(&len) {
            return Err(AcpiError::Length { what: "table", gpa, len: len.into() });
        }
        let mut signature = [0u8; 4];
        signature.copy_from_slice(&h[..4]);
        tables.push(FoundTable { signature, gpa, len });
    }
    Ok(FoundTables { rsdp_gpa, oem_id, xsdt_gpa, tables })
}

/// Finds the RSDP ([`find_rsdp`]), walks to the XSDT ([`read_tables`]) and parses the first
/// DMAR it lists ([`Dmar::parse`]: signature, checksum and every structure length checked).
/// Returns the DMAR's guest-physical address and contents.
pub fn find_dmar<M: GuestMemory + ?Sized>(mem: &M) -> Result<(u64, Dmar), AcpiError> {
    let found = read_tables(mem, find_rsdp(mem)?)?;
    let t = found.tables.iter().find(|t| &t.signature == b"DMAR").ok_or(AcpiError::NoDmar)?;
    let bytes = read(mem, t.gpa, t.len as usize)?;
    Ok((t.gpa, Dmar::parse(&bytes)?))
}

#[cfg(test)]
mod tests {
    use ioasis::{PhysAddr, RequesterId};
    use proptest::prelude::*;
    use vm_memory::GuestMemoryMmap;

    use super::*;
    use crate::dmar::{DmarUnit, Rmrr};

    const RSDP: u64 = 0xe_0000;

    fn dmar() -> Dmar {
        Dmar {
            host_address_width: 48,
            intr_remap: true,
            units: vec![DmarUnit {
                base: PhysAddr(0xfed9_0000),
                segment: 0,
                include_all: true,
                devices: vec![RequesterId::new(0, 0, 3, 0)],
            }],
            rmrrs: vec![Rmrr {
                segment: 0,
                base: 0xe_0000,
                limit: 0xf_ffff,
                devices: vec![RequesterId::new(0, 0, 2, 0)],
            }],
        }
    }

    /// A minimal well-formed table with signature `sig` and `extra` body bytes.
    fn table(sig: &[u8; 4], extra: usize) -> Vec<u8> {
        let mut t = Vec::new();
        sdt_header(&mut t, sig, SDT_HEADER_LEN + extra, 1);
        t.extend((0..extra).map(|i| i as u8));
        t[9] = 0u8.wrapping_sub(sum(&t));
        t
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn written(tables: &FirmwareTables) -> GuestMemoryMmap {
        let mem = memory();
        tables.write_to(&mem).unwrap();
        mem
    }

    #[test]
    fn tables_that_do_not_fit_are_refused_and_nothing_is_written() {
        // The last RSDP slot of the BIOS area, with the tables after it: past 1 MiB of RAM.
        let t = FirmwareBuilder::new(0xf_ffd0).unwrap().dmar(&dmar()).unwrap().build().unwrap();
        let mem = memory();
        let e = t.write_to(&mem).unwrap_err();
        assert!(matches!(e, AcpiError::Memory { gpa, len } if gpa + len > 1 << 20), "{e}");
        let mut top = [0u8; 16];
        mem.read_slice(&mut top, GuestAddress(0xf_ffd0)).unwrap();
        assert_eq!(top, [0; 16], "the RSDP that fitted was not written either");
    }

    fn standard() -> FirmwareTables {
        FirmwareBuilder::new(RSDP).unwrap().dmar(&dmar()).unwrap().table(table(b"APIC", 8)).unwrap().build().unwrap()
    }

    fn poke(mem: &GuestMemoryMmap, gpa: u64, bytes: &[u8]) {
        mem.write_slice(bytes, GuestAddress(gpa)).unwrap();
    }

    /// Makes the `len` bytes at `gpa` sum to zero again by adjusting the byte at `gpa + at`.
    fn fix_sum(mem: &GuestMemoryMmap, gpa: u64, len: usize, at: u64) {
        poke(mem, gpa + at, &[0]);
        let mut b = vec![0u8; len];
        mem.read_slice(&mut b, GuestAddress(gpa)).unwrap();
        poke(mem, gpa + at, &[0u8.wrapping_sub(sum(&b))]);
    }

    #[test]
    fn layout_matches_the_spec_byte_for_byte() {
        let t = standard();
        let r = &t.rsdp.bytes;
        assert_eq!((t.rsdp.gpa, r.len()), (RSDP, 36));
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert_eq!(&r[9..15], b"IOASIS");
        assert_eq!(r[15], 2, "revision 2: ACPI 2.0+, has an XSDT");
        assert_eq!(&r[16..20], &[0; 4], "no RSDT");
        assert_eq!(u32::from_le_bytes(r[20..24].try_into().unwrap()), 36);
        assert_eq!(u64::from_le_bytes(r[24..32].try_into().unwrap()), 0xe_0030, "XSDT right after, 16-aligned");
        assert_eq!(&r[33..36], &[0; 3]);
        assert_eq!(sum(&r[..20]), 0, "checksum over the first 20 bytes");
        assert_eq!(sum(r), 0, "extended checksum over all 36");
        assert_ne!(r[8], 0);

        let x = &t.xsdt.bytes;
        assert_eq!((t.xsdt.gpa, x.len()), (0xe_0030, 36 + 2 * 8));
        assert_eq!(&x[0..4], b"XSDT");
        assert_eq!(u32::from_le_bytes(x[4..8].try_into().unwrap()), 52);
        assert_eq!(x[8], 1, "XSDT revision");
        assert_eq!(&x[10..16], b"IOASIS");
        assert_eq!(&x[16..24], b"IOASXSDT");
        assert_eq!(&x[28..32], b"IOAS");
        assert_eq!(sum(x), 0);
        // Entries: the DMAR at the next 16-byte boundary after the XSDT (0xe0064 → 0xe0070),
        // then the APIC table after the 104-byte DMAR (0xe00d8 → 0xe00e0).
        assert_eq!(u64::from_le_bytes(x[36..44].try_into().unwrap()), 0xe_0070);
        assert_eq!(u64::from_le_bytes(x[44..52].try_into().unwrap()), 0xe_00e0);
        assert_eq!(t.tables[0], Placed { gpa: 0xe_0070, bytes: dmar().to_bytes().unwrap() });
        assert_eq!(t.tables[1], Placed { gpa: 0xe_00e0, bytes: table(b"APIC", 8) });

        // Tables elsewhere (rounded up to 16 bytes); the RSDP stays in the BIOS area.
        let t = FirmwareBuilder::new(0xf_0000).unwrap().tables_at(0x7_0001).dmar(&dmar()).unwrap().build().unwrap();
        assert_eq!((t.rsdp.gpa, t.xsdt.gpa, t.tables[0].gpa), (0xf_0000, 0x7_0010, 0x7_0040));
        assert_eq!(u64::from_le_bytes(t.rsdp.bytes[24..32].try_into().unwrap()), 0x7_0010);
    }

    #[test]
    fn the_walk_finds_what_was_written() {
        let t = standard();
        let mem = written(&t);
        assert_eq!(find_rsdp(&mem).unwrap(), RSDP);
        let found = read_tables(&mem, RSDP).unwrap();
        assert_eq!(found.oem_id, *b"IOASIS");
        assert_eq!(found.xsdt_gpa, 0xe_0030);
        let want = vec![
            FoundTable { signature: *b"DMAR", gpa: 0xe_0070, len: 104 },
            FoundTable { signature: *b"APIC", gpa: 0xe_00e0, len: 44 },
        ];
        assert_eq!(found.tables, want);
        assert_eq!(find_dmar(&mem).unwrap(), (0xe_0070, dmar()));
        // A stray "RSD PTR " with a bad checksum earlier in the area is skipped, as an OS does.
        let t = FirmwareBuilder::new(0xe_1000).unwrap().dmar(&dmar()).unwrap().build().unwrap();
        let mem = written(&t);
        poke(&mem, 0xe_0010, b"RSD PTR \x01");
        assert_eq!(find_rsdp(&mem).unwrap(), 0xe_1000);
        assert_eq!(find_dmar(&mem).unwrap().1, dmar());
    }

    #[test]
    fn bad_placements_and_tables_are_refused() {
        for gpa in [0xe_0008, 0xd_fff0, 0xf_fff0, 0x10_0000, 0, u64::MAX - 15] {
            assert_eq!(FirmwareBuilder::new(gpa).unwrap_err(), AcpiError::RsdpPlacement(gpa), "{gpa:#x}");
        }
        FirmwareBuilder::new(0xf_ffd0).expect("the last 16-byte boundary that fits 36 bytes");
        let b = || FirmwareBuilder::new(RSDP).unwrap();
        assert!(matches!(b().tables_at(0xe_0010).build(), Err(AcpiError::Layout { .. })), "over the RSDP");
        assert!(matches!(
            b().tables_at(0xd_fff0).table(table(b"APIC", 64)).unwrap().build(),
            Err(AcpiError::Layout { .. })
        ));
        assert!(matches!(b().tables_at(u64::MAX - 40).build(), Err(AcpiError::Layout { .. })), "wraps");
        let bad = |t: Vec<u8>| b().table(t).unwrap_err();
        assert!(matches!(bad(vec![0; 10]), AcpiError::BadTable { index: 0, .. }));
        let mut t = table(b"APIC", 8);
        t[20] ^= 1;
        assert!(matches!(bad(t), AcpiError::BadTable { why: "bytes do not sum to zero", .. }));
        let mut t = table(b"APIC", 8);
        t.push(0);
        assert!(matches!(bad(t), AcpiError::BadTable { why: "header length is not the table's length", .. }));
        assert!(matches!(bad(table(b"XSDT", 0)), AcpiError::BadTable { .. }));
        let mut d = dmar();
        d.host_address_width = 7;
        assert!(matches!(b().dmar(&d), Err(AcpiError::Dmar(DmarError::Invalid(_)))));
        assert!(matches!(
            standard().write_to(&GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap()),
            Err(AcpiError::Memory { gpa: RSDP, len: 36 })
        ));
    }

    #[test]
    fn corrupted_walks_are_typed_errors() {
        let t = standard();
        let xsdt = t.xsdt.gpa;
        let dmar_gpa = t.tables[0].gpa;
        let fresh = || written(&t);
        let sig = |what, gpa| move |e: &AcpiError| matches!(e, AcpiError::Signature { what: w, gpa: g, .. } if *w == what && *g == gpa);

        assert_eq!(find_rsdp(&memory()).unwrap_err(), AcpiError::NoRsdp);
        let small: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0xe_1000)]).unwrap();
        assert!(matches!(find_rsdp(&small), Err(AcpiError::Memory { gpa: 0xe_0000, .. })), "BIOS area not memory");

        // RSDP: checksum, signature, revision, extended checksum, length.
        let m = fresh();
        poke(&m, RSDP + 9, b"X");
        assert_eq!(find_rsdp(&m).unwrap_err(), AcpiError::NoRsdp, "a bad checksum is no RSDP");
        assert_eq!(read_tables(&m, RSDP).unwrap_err(), AcpiError::Checksum { what: "RSDP", gpa: RSDP });
        assert!(sig("RSDP", RSDP + 16)(&read_tables(&m, RSDP + 16).unwrap_err()));
        let m = fresh();
        poke(&m, RSDP + 15, &[0]);
        fix_sum(&m, RSDP, 20, 8);
        assert_eq!(find_dmar(&m).unwrap_err(), AcpiError::Revision(0));
        let m = fresh();
        poke(&m, RSDP + 33, &[1]);
        assert_eq!(find_dmar(&m).unwrap_err(), AcpiError::Checksum { what: "RSDP (extended)", gpa: RSDP });
        for len in [20u32, 5000] {
            let m = fresh();
            poke(&m, RSDP + 20, &len.to_le_bytes());
            assert_eq!(find_dmar(&m).unwrap_err(), AcpiError::Length { what: "RSDP", gpa: RSDP, len: len.into() });
        }
        // RSDP → XSDT pointer outside guest memory, or to something that is not an XSDT.
        for (to, want) in [
            (2u64 << 20, AcpiError::Memory { gpa: 2 << 20, len: 36 }),
            (u64::MAX - 8, AcpiError::Memory { gpa: u64::MAX - 8, len: 36 }),
        ] {
            let m = fresh();
            poke(&m, RSDP + 24, &to.to_le_bytes());
            fix_sum(&m, RSDP, 36, 32);
            assert_eq!(find_dmar(&m).unwrap_err(), want);
        }
        let m = fresh();
        poke(&m, RSDP + 24, &dmar_gpa.to_le_bytes());
        fix_sum(&m, RSDP, 36, 32);
        assert!(sig("XSDT", dmar_gpa)(&find_dmar(&m).unwrap_err()));

        // XSDT: length too small, not whole entries, too large, too many entries, checksum.
        for len in [35u32, 37, MAX_TABLE_LEN + 4] {
            let m = fresh();
            poke(&m, xsdt + 4, &len.to_le_bytes());
            assert_eq!(find_dmar(&m).unwrap_err(), AcpiError::Length { what: "XSDT", gpa: xsdt, len: len.into() });
        }
        let m = fresh();
        poke(&m, xsdt + 4, &(36u32 + 8 * 300).to_le_bytes());
        assert_eq!(find_dmar(&m).unwrap_err(), AcpiError::TooManyTables(300));
        let m = fresh();
        poke(&m, xsdt + 40, &[0x55]);
        assert_eq!(find_dmar(&m).unwrap_err(), AcpiError::Checksum { what: "XSDT", gpa: xsdt });
        // XSDT entries: outside memory, a table whose length is impossible, no DMAR.
        let m = fresh();
        poke(&m, xsdt + 36, &(3u64 << 20).to_le_bytes());
        fix_sum(&m, xsdt, 52, 9);
        assert_eq!(find_dmar(&m).unwrap_err(), AcpiError::Memory { gpa: 3 << 20, len: 36 });
        let m = fresh();
        poke(&m, dmar_gpa + 4, &8u32.to_le_bytes());
        assert_eq!(find_dmar(&m).unwrap_err(), AcpiError::Length { what: "table", gpa: dmar_gpa, len: 8 });
        let m = fresh();
        poke(&m, dmar_gpa, b"SSDT");
        assert_eq!(find_dmar(&m).unwrap_err(), AcpiError::NoDmar);
        // The DMAR itself: its own checksum, and a structure running past its end.
        let m = fresh();
        poke(&m, dmar_gpa + 56, &[0x11]);
        assert_eq!(find_dmar(&m).unwrap_err(), AcpiError::Dmar(DmarError::Checksum));
        let m = fresh();
        poke(&m, dmar_gpa + 4, &(2u32 << 20).to_le_bytes());
        assert!(matches!(find_dmar(&m).unwrap_err(), AcpiError::Length { .. } | AcpiError::Memory { .. }));
    }

    #[test]
    fn no_single_corrupted_byte_changes_the_dmar_read() {
        let t = standard();
        let want = find_dmar(&written(&t)).unwrap();
        let end = t.tables[1].gpa; // up to the APIC table, whose body the walk does not read
        for gpa in RSDP..end {
            for flip in [0x01u8, 0x80] {
                let mem = written(&t);
                let mut b = [0u8];
                mem.read_slice(&mut b, GuestAddress(gpa)).unwrap();
                poke(&mem, gpa, &[b[0] ^ flip]);
                if let Ok(got) = find_dmar(&mem) {
                    assert_eq!(got, want, "byte {gpa:#x} ^ {flip:#x} changed what was read");
                }
            }
        }
    }

    fn arb_dmar() -> impl Strategy<Value = Dmar> {
        let rid = (any::<u8>(), 0u8..32, 0u8..8).prop_map(|(b, d, f)| RequesterId::new(0, b, d, f));
        let unit = (any::<u32>(), proptest::collection::vec(rid.clone(), 0..4)).prop_map(|(base, devices)| DmarUnit {
            base: PhysAddr(u64::from(base) << 12),
            segment: 0,
            include_all: false,
            devices,
        });
        let rmrr =
            (0u64..1 << 20, 1u64..16, proptest::collection::vec(rid, 0..3)).prop_map(|(page, pages, devices)| Rmrr {
                segment: 0,
                base: page << 12,
                limit: ((page + pages) << 12) - 1,
                devices,
            });
        (32u8..=64, any::<bool>(), proptest::collection::vec(unit, 0..4), proptest::collection::vec(rmrr, 0..3))
            .prop_map(|(host_address_width, intr_remap, units, rmrrs)| Dmar {
                host_address_width,
                intr_remap,
                units,
                rmrrs,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Any DMAR, behind an RSDP at any legal place, is found and read back as built.
        #[test]
        fn any_table_round_trips(d in arb_dmar(), slot in 0u64..0x1ffd, elsewhere in proptest::option::of(0u64..0xd_0000)) {
            let mut b = FirmwareBuilder::new(RSDP + slot * 16).unwrap();
            if let Some(at) = elsewhere {
                b = b.tables_at(at);
            }
            let t = b.table(table(b"FACP", 12)).unwrap().dmar(&d).unwrap().build().unwrap();
            let mem = memory();
            match t.write_to(&mem) {
                Ok(()) => prop_assert_eq!(find_dmar(&mem).unwrap(), (t.tables[1].gpa, d)),
                // The layout runs past the test's 1 MiB of guest memory: refused, nothing written.
                Err(AcpiError::Memory { gpa, len }) => {
                    prop_assert!(gpa + len > 1 << 20, "refused a structure that fits: {gpa:#x}+{len:#x}");
                    prop_assert!(find_rsdp(&mem).is_err(), "a refused write left an RSDP behind");
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }

        /// Random corruption of the bytes (and the pointers) on the path never panics: the walk
        /// ends in a table or in a typed error.
        #[test]
        fn corruption_never_panics(
            writes in proptest::collection::vec((0u64..0x140, any::<u8>()), 1..12),
            pointer in proptest::option::of((prop_oneof![Just(24u64), Just(0x30 + 36), Just(0x30 + 44)], any::<u64>())),
            rsdp_len in proptest::option::of(any::<u32>()),
            fix in any::<bool>(),
        ) {
            let t = standard();
            let mem = written(&t);
            for (off, byte) in writes {
                poke(&mem, RSDP + off, &[byte]);
            }
            if let Some((off, to)) = pointer {
                poke(&mem, RSDP + off, &to.to_le_bytes());
            }
            if let Some(len) = rsdp_len {
                poke(&mem, RSDP + 20, &len.to_le_bytes());
                fix_sum(&mem, RSDP, 20, 8);
            }
            if fix {
                // Checksums made right again, so the walk goes past them to the fields.
                fix_sum(&mem, RSDP, 20, 8);
                fix_sum(&mem, RSDP, 36, 32);
                fix_sum(&mem, t.xsdt.gpa, 52, 9);
                fix_sum(&mem, t.tables[0].gpa, 104, 9);
            }
            if let Err(e) = find_dmar(&mem) {
                prop_assert!(!e.to_string().is_empty());
            }
            let _ = read_tables(&mem, RSDP);
        }
    }
}
