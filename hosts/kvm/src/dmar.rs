//! The ACPI DMAR table that describes a vIOMMU to the guest, as firmware describes a real one
//! (VT-d spec chapter 8, "BIOS Considerations"): the register base of each remapping unit, the
//! devices in its scope, and the reserved memory regions (RMRRs) devices still use.
//!
//! [`Dmar::to_bytes`] lays the table out byte for byte; [`Dmar::parse`] reads one back with every
//! length checked, for tests and for tables a VMM receives from elsewhere.

use ioasis::{PhysAddr, RequesterId};

/// 8.1: the table header is the 36-byte ACPI header plus host address width, flags, reserved.
const HEADER_LEN: usize = 48;
/// 8.3: DRHD structure type and fixed length.
const DRHD_TYPE: u16 = 0;
const DRHD_LEN: usize = 16;
/// 8.4: RMRR structure type and fixed length.
const RMRR_TYPE: u16 = 1;
const RMRR_LEN: usize = 24;
/// 8.3.1: device scope fixed length, and the PCI endpoint type.
const SCOPE_LEN: usize = 6;
const SCOPE_PCI_ENDPOINT: u8 = 1;
/// 8.3 DRHD flags bit 0: INCLUDE_PCI_ALL.
const INCLUDE_PCI_ALL: u8 = 1;
/// 8.1 DMAR flags bit 0: INTR_REMAP.
const INTR_REMAP: u8 = 1;

/// One remapping unit (DRHD, 8.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmarUnit {
    /// Guest-physical base of its registers.
    pub base: PhysAddr,
    /// PCI segment it serves.
    pub segment: u16,
    /// It serves every PCI device of the segment not claimed by another unit (must be listed
    /// after the other units of its segment).
    pub include_all: bool,
    /// PCI endpoints it serves (besides `include_all`).
    pub devices: Vec<RequesterId>,
}

/// A reserved memory region that devices use (RMRR, 8.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rmrr {
    /// PCI segment.
    pub segment: u16,
    /// First address (4 KiB aligned).
    pub base: u64,
    /// Last address (inclusive; ends a 4 KiB page).
    pub limit: u64,
    /// The endpoints that use it.
    pub devices: Vec<RequesterId>,
}

/// The whole table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dmar {
    /// DMA physical addressing width of the platform, in bits.
    pub host_address_width: u8,
    /// Interrupt remapping is supported.
    pub intr_remap: bool,
    /// Remapping units.
    pub units: Vec<DmarUnit>,
    /// Reserved memory regions.
    pub rmrrs: Vec<Rmrr>,
}

/// A table that cannot be built or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmarError {
    /// The table or one of its structures is shorter than its header says.
    #[error("DMAR table truncated at byte {0}")]
    Truncated(usize),
    /// Not a DMAR table.
    #[error("bad signature {0:?}")]
    Signature([u8; 4]),
    /// The bytes do not sum to zero.
    #[error("bad checksum")]
    Checksum,
    /// A field has a value the format cannot hold.
    #[error("{0}")]
    Invalid(String),
}

fn scope_bytes(out: &mut Vec<u8>, rid: RequesterId) {
    // 8.3.1: type, length, flags, reserved, enumeration id, start bus, path (device, function).
    out.extend_from_slice(&[
        SCOPE_PCI_ENDPOINT,
        (SCOPE_LEN + 2) as u8,
        0,
        0,
        0,
        rid.bus,
        rid.devfn >> 3,
        rid.devfn & 7,
    ]);
}

fn put_len(out: &mut [u8], at: usize, len: usize) -> Result<(), DmarError> {
    let v = u16::try_from(len).map_err(|_| DmarError::Invalid(format!("structure of {len} bytes")))?;
    out[at..at + 2].copy_from_slice(&v.to_le_bytes());
    Ok(())
}

impl Dmar {
    /// The table's bytes, checksum included.
    pub fn to_bytes(&self) -> Result<Vec<u8>, DmarError> {
        if !(32..=64).contains(&self.host_address_width) {
            return Err(DmarError::Invalid(format!("host address width {}", self.host_address_width)));
        }
        for (i, u) in self.units.iter().enumerate() {
            if u.include_all && self.units[i + 1..].iter().any(|v| v.segment == u.segment) {
                return Err(DmarError::Invalid(format!(
                    "an INCLUDE_PCI_ALL unit must be the last of segment {} (VT-d 8.3)",
                    u.segment
                )));
            }
        }
        let mut t = Vec::with_capacity(256);
        // 8.1 / ACPI: signature, length (patched), revision 1, checksum (patched), OEM id and
        // table id, OEM revision, creator id and revision.
        t.extend_from_slice(b"DMAR");
        t.extend_from_slice(&[0; 4]);
        t.push(1);
        t.push(0);
        t.extend_from_slice(b"IOASIS");
        t.extend_from_slice(b"IOASVIOM");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"IOAS");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.push(self.host_address_width - 1);
        t.push(if self.intr_remap { INTR_REMAP } else { 0 });
        t.extend_from_slice(&[0; 10]);
        for u in &self.units {
            let start = t.len();
            t.extend_from_slice(&DRHD_TYPE.to_le_bytes());
            t.extend_from_slice(&[0, 0]);
            t.push(if u.include_all { INCLUDE_PCI_ALL } else { 0 });
            t.push(0); // Size: one 4 KiB register page.
            t.extend_from_slice(&u.segment.to_le_bytes());
            t.extend_from_slice(&u.base.raw().to_le_bytes());
            for d in &u.devices {
                scope_bytes(&mut t, *d);
            }
            let len = t.len() - start;
            put_len(&mut t, start + 2, len)?;
        }
        for r in &self.rmrrs {
            if r.base % 4096 != 0 || (r.limit + 1) % 4096 != 0 || r.limit < r.base {
                return Err(DmarError::Invalid(format!("RMRR {:#x}..={:#x} is not page granular", r.base, r.limit)));
            }
            let start = t.len();
            t.extend_from_slice(&RMRR_TYPE.to_le_bytes());
            t.extend_from_slice(&[0, 0, 0, 0]);
            t.extend_from_slice(&r.segment.to_le_bytes());
            t.extend_from_slice(&r.base.to_le_bytes());
            t.extend_from_slice(&r.limit.to_le_bytes());
            for d in &r.devices {
                scope_bytes(&mut t, *d);
            }
            let len = t.len() - start;
            put_len(&mut t, start + 2, len)?;
        }
        let len = u32::try_from(t.len()).map_err(|_| DmarError::Invalid("table too long".into()))?;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        let sum = t.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        t[9] = 0u8.wrapping_sub(sum);
        Ok(t)
    }

    /// Reads a table back, checking signature, checksum and every length.
    pub fn parse(b: &[u8]) -> Result<Dmar, DmarError> {
        let get = |at: usize, n: usize| b.get(at..at + n).ok_or(DmarError::Truncated(at));
        let u16_at = |at: usize| get(at, 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
        let u64_at = |at: usize| get(at, 8).map(|s| u64::from_le_bytes(s.try_into().unwrap_or([0; 8])));
        let sig: [u8; 4] = get(0, 4)?.try_into().unwrap_or([0; 4]);
        if &sig != b"DMAR" {
            return Err(DmarError::Signature(sig));
        }
        let len = get(4, 4).map(|s| u32::from_le_bytes(s.try_into().unwrap_or([0; 4])) as usize)?;
        if len < HEADER_LEN || len > b.len() {
            return Err(DmarError::Truncated(len.min(b.len())));
        }
        let b = &b[..len];
        if b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) != 0 {
            return Err(DmarError::Checksum);
        }
        let mut d = Dmar {
            host_address_width: b[36].wrapping_add(1),
            intr_remap: b[37] & INTR_REMAP != 0,
            units: Vec::new(),
            rmrrs: Vec::new(),
        };
        let mut at = HEADER_LEN;
        while at < len {
            let kind = u16_at(at)?;
            let slen = u16_at(at + 2)? as usize;
            let end = at.checked_add(slen).filter(|e| *e <= len).ok_or(DmarError::Truncated(at))?;
            let fixed = match kind {
                DRHD_TYPE => DRHD_LEN,
                RMRR_TYPE => RMRR_LEN,
                _ => slen, // a structure this reader does not know: skipped whole
            };
            if slen < fixed.max(4) {
                return Err(DmarError::Truncated(at));
            }
            let mut devices = Vec::new();
            let mut s = at + fixed;
            while s < end {
                let (ty, sl) =
                    (*b.get(s).ok_or(DmarError::Truncated(s))?, *b.get(s + 1).ok_or(DmarError::Truncated(s))? as usize);
                if sl < SCOPE_LEN || s + sl > end {
                    return Err(DmarError::Truncated(s));
                }
                if ty == SCOPE_PCI_ENDPOINT && sl == SCOPE_LEN + 2 {
                    // DRHD and RMRR both keep their segment at offset 6.
                    let segment = u16_at(at + 6)?;
                    devices.push(RequesterId::new(segment, b[s + 5], b[s + 6], b[s + 7]));
                }
                s += sl;
            }
            match kind {
                DRHD_TYPE => d.units.push(DmarUnit {
                    base: PhysAddr(u64_at(at + 8)?),
                    segment: u16_at(at + 6)?,
                    include_all: b[at + 4] & INCLUDE_PCI_ALL != 0,
                    devices,
                }),
                RMRR_TYPE => d.rmrrs.push(Rmrr {
                    segment: u16_at(at + 6)?,
                    base: u64_at(at + 8)?,
                    limit: u64_at(at + 16)?,
                    devices,
                }),
                _ => {}
            }
            at = end;
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Dmar {
        Dmar {
            host_address_width: 48,
            intr_remap: false,
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

    #[test]
    fn layout_matches_the_spec_byte_for_byte() {
        let t = sample().to_bytes().unwrap();
        assert_eq!(&t[0..4], b"DMAR");
        // 48-byte header + DRHD (16 + one 8-byte scope) + RMRR (24 + one 8-byte scope).
        assert_eq!(t.len(), 48 + 24 + 32);
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 104);
        assert_eq!(t[8], 1, "revision");
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0, "checksum");
        assert_eq!(t[36], 47, "host address width - 1");
        // DRHD at 48: type 0, length 24, INCLUDE_PCI_ALL, size 0, segment 0, base.
        assert_eq!(&t[48..56], &[0, 0, 24, 0, 1, 0, 0, 0]);
        assert_eq!(&t[56..64], &0xfed9_0000u64.to_le_bytes());
        // Device scope: PCI endpoint, length 8, start bus 0, path (device 3, function 0).
        assert_eq!(&t[64..72], &[1, 8, 0, 0, 0, 0, 3, 0]);
        // RMRR at 72: type 1, length 32, reserved, segment, base, limit, scope 00:02.0.
        assert_eq!(&t[72..80], &[1, 0, 32, 0, 0, 0, 0, 0]);
        assert_eq!(&t[80..88], &0xe_0000u64.to_le_bytes());
        assert_eq!(&t[88..96], &0xf_ffffu64.to_le_bytes());
        assert_eq!(&t[96..104], &[1, 8, 0, 0, 0, 0, 2, 0]);
    }

    #[test]
    fn parse_round_trips_and_refuses_bad_tables() {
        let t = sample().to_bytes().unwrap();
        assert_eq!(Dmar::parse(&t).unwrap(), sample());
        let mut bad = t.clone();
        bad[60] ^= 1;
        assert_eq!(Dmar::parse(&bad), Err(DmarError::Checksum));
        assert!(matches!(Dmar::parse(&t[..40]), Err(DmarError::Truncated(_))));
        assert!(matches!(Dmar::parse(b"APIC"), Err(DmarError::Truncated(_)) | Err(DmarError::Signature(_))));
        // A structure length running past the table.
        let mut over = t.clone();
        over[50] = 200;
        let sum = over.iter().take(9).chain(over.iter().skip(10)).fold(0u8, |a, b| a.wrapping_add(*b));
        over[9] = 0u8.wrapping_sub(sum);
        assert!(matches!(Dmar::parse(&over), Err(DmarError::Truncated(48))));
        // Every prefix of the table is refused without a panic.
        for n in 0..t.len() {
            assert!(Dmar::parse(&t[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn include_all_units_come_last_in_their_segment() {
        let mut d = sample();
        d.units.push(DmarUnit { base: PhysAddr(0xfed9_1000), segment: 0, include_all: false, devices: vec![] });
        assert!(matches!(d.to_bytes(), Err(DmarError::Invalid(_))));
        d.units.swap(0, 1);
        assert!(d.to_bytes().is_ok());
        d.rmrrs[0].limit = 0xf_fffe;
        assert!(matches!(d.to_bytes(), Err(DmarError::Invalid(_))));
    }
}
