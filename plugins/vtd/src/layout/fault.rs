//! Fault records (VT-d spec 11.4.9.3, 7.1.3) and page requests (7.5.1).

/// 11.4.9.3 Fault Recording Register, upper qword (at offset +8 of each 16-byte record).
pub mod frcd {
    use crate::layout::Word;

    /// SID bits 15:0.
    pub const fn sid(hi: u64) -> u16 {
        hi as u16
    }
    /// PP bit 31: PASID present.
    pub const PP: u64 = 1 << 31;
    /// FR bits 39:32: fault reason.
    pub const fn reason(hi: u64) -> u8 {
        (hi >> 32) as u8
    }
    /// PV bits 59:40: PASID value.
    pub const fn pasid(hi: u64) -> u32 {
        ((hi >> 40) & 0xf_ffff) as u32
    }
    /// T1 bit 62: 1 = read request, 0 = write request.
    pub const T_READ: u64 = 1 << 62;
    /// F bit 63: fault (software writes 1 to clear).
    pub const F: u64 = 1 << 63;
    /// An upper qword from its fields.
    pub const fn hi(sid: u16, reason: u8, pasid: Option<u32>, read: bool) -> u64 {
        let w = Word::ZERO.with(15, 0, sid as u64).with(39, 32, reason as u64).flag(62, read).flag(63, true);
        match pasid {
            Some(p) => w.flag(31, true).with(59, 40, p as u64).get(),
            None => w.get(),
        }
    }
}

/// Fault reasons (VT-d spec Appendix A) used by the driver and the model.
pub mod reason {
    /// Root entry not present (legacy).
    pub const ROOT_NOT_PRESENT: u8 = 0x1;
    /// Context entry not present.
    pub const CONTEXT_NOT_PRESENT: u8 = 0x2;
    /// Invalid programming of a context entry.
    pub const CONTEXT_INVALID: u8 = 0x3;
    /// Input address above the address width.
    pub const ADDRESS_BEYOND_AW: u8 = 0x4;
    /// Write to a page without write permission.
    pub const NO_WRITE: u8 = 0x5;
    /// Read of a page without read permission.
    pub const NO_READ: u8 = 0x6;
    /// Error reading a paging entry (next-level address invalid).
    pub const PAGING_ENTRY_ERROR: u8 = 0x7;
    /// Reserved field set in a context entry.
    pub const CONTEXT_RESERVED: u8 = 0xb;
    /// Reserved field set in a paging entry.
    pub const PAGING_RESERVED: u8 = 0xc;
    /// PASID directory entry not present (scalable mode).
    pub const PASID_DIR_NOT_PRESENT: u8 = 0x51;
    /// PASID table entry not present.
    pub const PASID_NOT_PRESENT: u8 = 0x59;
    /// Invalid PASID table entry.
    pub const PASID_ENTRY_INVALID: u8 = 0x5b;
}

/// Scalable-mode fault reasons of nested and first-stage translation (VT-d spec Appendix A,
/// the SFS, SSS and SGN conditions).
pub mod reason_sm {
    /// SFS.1: error reading a first-stage paging entry.
    pub const FS_ENTRY_ERROR: u8 = 0x70;
    /// SFS.2: present bit clear in a first-stage paging entry.
    pub const FS_NOT_PRESENT: u8 = 0x71;
    /// SFS.3: reserved field set in a present first-stage paging entry.
    pub const FS_RESERVED: u8 = 0x72;
    /// SFS.4: error accessing the first-stage root (FSPTPTR of the PASID entry invalid).
    pub const FSPTPTR_INVALID: u8 = 0x73;
    /// SFS.5: in nested translation, an address in a first-stage entry (or FSPTPTR) beyond
    /// the second stage's address width.
    pub const FS_ADDRESS_BEYOND: u8 = 0x74;
    /// SFS.6: in nested translation, the second stage gives no read of the first-stage root.
    pub const SS_NO_READ_FS_ROOT: u8 = 0x75;
    /// SFS.7: in nested translation, the second stage gives no read of a first-stage entry.
    pub const SS_NO_READ_FS_ENTRY: u8 = 0x76;
    /// SFS.8: in nested translation, the second stage gives no write of a first-stage entry
    /// whose accessed/dirty flag needs setting.
    pub const SS_NO_WRITE_FS_ENTRY: u8 = 0x77;
    /// SSS.1: error reading a second-stage paging entry.
    pub const SS_ENTRY_ERROR: u8 = 0x78;
    /// SSS.2: read/write permission error in a second-stage paging entry (R = W = 0 is
    /// not-present).
    pub const SS_PERMISSION: u8 = 0x79;
    /// SSS.3: reserved field set in a second-stage paging entry.
    pub const SS_RESERVED: u8 = 0x7a;
    /// SSS.4: invalid second-stage table pointer.
    pub const SSPTPTR_INVALID: u8 = 0x7b;
    /// SGN.1: input address not canonical for first-stage translation.
    pub const NOT_CANONICAL: u8 = 0x80;
    /// SGN.5: write request to a page without write permission.
    pub const NO_WRITE: u8 = 0x85;
    /// SGN.6: read request to a page without read permission.
    pub const NO_READ: u8 = 0x86;
    /// SPT.3: reserved field set in a present PASID-table entry.
    pub const PASID_ENTRY_RESERVED: u8 = 0x5a;
}

/// 7.5.1.1 Page request descriptor (256-bit).
pub mod page_request {
    use crate::layout::Word;

    /// Size in bytes.
    pub const SIZE: u64 = 32;
    /// Qword 0 type bits 7:0 = 1: page request.
    pub const TYPE: u64 = 0x1;
    /// Qword 0 bit 8: PASID present.
    pub const PASID_P: u64 = 1 << 8;
    /// Qword 0: requester id bits 31:16, PASID bits 51:32.
    pub const fn q0(rid: u16, pasid: Option<u32>) -> u64 {
        let w = Word::ZERO.with(7, 0, TYPE).with(31, 16, rid as u64);
        match pasid {
            Some(p) => w.flag(8, true).with(51, 32, p as u64).get(),
            None => w.get(),
        }
    }
    /// Qword 1 bit 0: read requested; bit 1: write requested; bit 2: last in group.
    pub const RD: u64 = 1;
    /// Write requested.
    pub const WR: u64 = 1 << 1;
    /// Last page in group.
    pub const LPIG: u64 = 1 << 2;
    /// Qword 1: group index bits 11:3, address bits 63:12.
    pub const fn q1(addr: u64, group: u32, read: bool, write: bool, last: bool) -> u64 {
        Word::ZERO.flag(0, read).flag(1, write).flag(2, last).with(11, 3, group as u64).with(63, 12, addr >> 12).get()
    }
}

/// 11.4.9.3 Fault Recording Register, lower qword.
pub mod frcd_lo {
    /// FI bits 63:12: the faulting page address (bits 11:0 are reserved).
    pub const fn fi(lo: u64) -> u64 {
        lo & !0xfff
    }
}

/// More fault reasons (VT-d spec Appendix A) that the model reports.
pub mod reason_more {
    /// Error reading a root entry.
    pub const ROOT_ENTRY_ERROR: u8 = 0x8;
    /// Error reading a context entry.
    pub const CONTEXT_ENTRY_ERROR: u8 = 0x9;
    /// Reserved field set in a present root entry.
    pub const ROOT_RESERVED: u8 = 0xa;
    /// Error reading a PASID directory entry (scalable mode).
    pub const PASID_DIR_ERROR: u8 = 0x50;
    /// Error reading a PASID table entry (scalable mode).
    pub const PASID_TABLE_ERROR: u8 = 0x58;
}

/// Fault records and page requests against the bit positions of 11.4.9.3 and 7.5.1.1, as
/// literals.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_records_encode_and_decode_each_field_in_place() {
        assert_eq!((frcd::PP, frcd::T_READ, frcd::F), (1 << 31, 1 << 62, 1 << 63));
        let hi = frcd::hi(0x1234, 0x5b, Some(0x12345), true);
        assert_eq!(hi, 0xc123_455b_8000_1234);
        assert_eq!((frcd::sid(hi), frcd::reason(hi), frcd::pasid(hi)), (0x1234, 0x5b, 0x12345));
        assert_eq!(frcd::hi(0xffff, 0x6, None, false), 0x8000_0006_0000_ffff);
        assert_eq!(frcd::hi(0, 0, Some(0x1f_ffff), false), 0x8fff_ff00_8000_0000);
        assert_eq!(frcd::pasid(u64::MAX), 0xf_ffff);
        assert_eq!(frcd_lo::fi(0x1234_5678_9abc), 0x1234_5678_9000);
    }

    #[test]
    fn page_requests_encode_each_field_in_place() {
        use page_request::*;
        assert_eq!((SIZE, TYPE, PASID_P, RD, WR, LPIG), (32, 0x1, 0x100, 0x1, 0x2, 0x4));
        assert_eq!(q0(0x1234, Some(0x12345)), 0x0001_2345_1234_0101);
        assert_eq!(q0(0xffff, Some(0x1f_ffff)), 0x000f_ffff_ffff_0101);
        assert_eq!(q0(0xffff, None), 0xffff_0001);
        assert_eq!(q1(0x1234_5678_9abc, 0x1ff, true, false, true), 0x1234_5678_9ffd);
        assert_eq!(q1(0, 0x3ff, false, true, false), 0xffa);
    }
}
