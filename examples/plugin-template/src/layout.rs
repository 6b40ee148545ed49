//! Every bit layout of the acme-tiny unit, in one place: `SPEC.md` ("acme spec") beside this
//! crate is the hardware specification, and each item names its section. The driver and the
//! model both use these, and nothing else, so that they cannot disagree on a bit.

use ioasis::PtFormat;

/// The output-address bits of table pointers, leaves and base registers (§2, §3): [51:12].
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Acme's PCI-SIG vendor id (an example: use your own). It numbers Acme's page-table formats
/// in the vendor range of ioasis's ids (`ioasis::ids`).
pub const PCI_VENDOR: u16 = 0x1234;

/// The paging format the unit's caps report: acme-tiny's tables (§3), Acme's format 1. It
/// prints as `vendor-1234:1`.
pub const FORMAT: PtFormat = PtFormat::vendor(PCI_VENDOR, 1);

/// §1: registers (offsets in the 4 KiB window) and their bits.
pub mod reg {
    /// Size of the register window.
    pub const WINDOW: u64 = 0x1000;
    /// ID, read-only: the bytes "ACMETINY".
    pub const ID: u64 = 0x000;
    /// The value of ID.
    pub const ID_VALUE: u64 = 0x594e_4954_454d_4341;
    /// CAP, read-only (§1.1).
    pub const CAP: u64 = 0x008;
    /// CTRL.
    pub const CTRL: u64 = 0x010;
    /// CTRL bit 0: translate.
    pub const CTRL_EN: u64 = 1 << 0;
    /// CTRL bit 1: record faults in the queue.
    pub const CTRL_FQ_EN: u64 = 1 << 1;
    /// STATUS (bits 1 and 2 write-1-to-clear).
    pub const STATUS: u64 = 0x018;
    /// STATUS bit 0: EN latched.
    pub const STATUS_ENS: u64 = 1 << 0;
    /// STATUS bit 1: a fault record was dropped.
    pub const STATUS_FQ_OVF: u64 = 1 << 1;
    /// STATUS bit 2: a command was dropped.
    pub const STATUS_INV_OVF: u64 = 1 << 2;
    /// DT_BASE: the device table (§2).
    pub const DT_BASE: u64 = 0x020;
    /// INV_ADDR: first IOVA of a range invalidation (§4).
    pub const INV_ADDR: u64 = 0x028;
    /// INV_SIZE: its length in bytes, 0 for all (§4).
    pub const INV_SIZE: u64 = 0x030;
    /// INV_CMD, write-only: queues a command (§4).
    pub const INV_CMD: u64 = 0x038;
    /// INV_DONE, read-only: commands completed (§4).
    pub const INV_DONE: u64 = 0x040;
    /// FQ_BASE: the fault queue page (§5).
    pub const FQ_BASE: u64 = 0x048;
    /// FQ_HEAD: the driver's consumer index (§5).
    pub const FQ_HEAD: u64 = 0x050;
    /// FQ_TAIL, read-only: the unit's producer index (§5).
    pub const FQ_TAIL: u64 = 0x058;
}

/// §1.1: the CAP register.
pub mod cap {
    /// The input width this revision has (three levels of §3).
    pub const IAS_BITS: u8 = 39;

    /// CAP with `ias` in [7:0] and `oas` in [15:8].
    pub const fn value(ias: u8, oas: u8) -> u64 {
        ias as u64 | (oas as u64) << 8
    }
    /// CAP[7:0].
    pub const fn ias(cap: u64) -> u8 {
        cap as u8
    }
    /// CAP[15:8].
    pub const fn oas(cap: u64) -> u8 {
        (cap >> 8) as u8
    }
}

/// §2: the device table.
pub mod dte {
    use super::ADDR_MASK;

    /// Entries: one per 16-bit requester id.
    pub const ENTRIES: u64 = 1 << 16;
    /// Bytes per entry.
    pub const SIZE: u64 = 8;
    /// 4 KiB pages of the table (physically contiguous).
    pub const PAGES: u32 = (ENTRIES * SIZE / 4096) as u32;
    /// Bit 0 V.
    pub const V: u64 = 1 << 0;
    /// [11:1], reserved.
    pub const RESERVED: u64 = 0xffe;
    /// [63:52] DID.
    pub const DID_SHIFT: u32 = 52;
    /// DIDs are 12 bits; 0 is never given out by the driver.
    pub const DID_MAX: u16 = 0xfff;

    /// The byte offset of requester id `rid`'s entry.
    pub const fn offset(rid: u16) -> u64 {
        rid as u64 * SIZE
    }
    /// A valid entry: the table at `root`, tagged `did`.
    pub const fn entry(root: u64, did: u16) -> u64 {
        V | (root & ADDR_MASK) | ((did as u64 & DID_MAX as u64) << DID_SHIFT)
    }
    /// The DID of an entry.
    pub const fn did(e: u64) -> u16 {
        (e >> DID_SHIFT) as u16 & DID_MAX
    }
}

/// §3: page-table entries.
pub mod pte {
    /// Levels: IOVA[38:30], [29:21], [20:12].
    pub const LEVELS: u32 = 3;
    /// Bit 0 P.
    pub const P: u64 = 1 << 0;
    /// Bit 1 R.
    pub const R: u64 = 1 << 1;
    /// Bit 2 W.
    pub const W: u64 = 1 << 2;
    /// Bit 5 A, set by the unit.
    pub const A: u64 = 1 << 5;
    /// Bit 6 D, set by the unit on a write.
    pub const D: u64 = 1 << 6;
    /// [4:3], [11:7] and [63:52]: reserved.
    pub const RESERVED: u64 = 0xfff0_0000_0000_0f98;

    /// The byte offset of `iova`'s entry in its table at `level`.
    pub const fn offset(iova: u64, level: u32) -> u64 {
        ((iova >> (12 + 9 * level)) & 0x1ff) * 8
    }
}

/// §4: INV_CMD.
pub mod inv {
    /// [3:0] OP 1: IOTLB entries of DID = ID in [INV_ADDR, +INV_SIZE).
    pub const OP_IOTLB: u64 = 1;
    /// OP 2: the cached device entry of requester id ID.
    pub const OP_DEVICE: u64 = 2;
    /// OP 3: every cached entry.
    pub const OP_ALL: u64 = 3;
    /// [3:0].
    pub const OP_MASK: u64 = 0xf;
    /// [31:16] ID.
    pub const ID_SHIFT: u32 = 16;
    /// Most commands pending at once.
    pub const MAX_PENDING: usize = 16;

    /// The INV_CMD value of `op` on `id`.
    pub const fn cmd(op: u64, id: u16) -> u64 {
        op | (id as u64) << ID_SHIFT
    }
    /// The ID field.
    pub const fn id(cmd: u64) -> u16 {
        (cmd >> ID_SHIFT) as u16
    }
}

/// §5: the fault queue.
pub mod fault {
    /// Records in the queue page.
    pub const ENTRIES: u64 = 256;
    /// Bytes per record.
    pub const SIZE: u64 = 16;
    /// Word 0 bit 16: a read.
    pub const READ: u64 = 1 << 16;
    /// Word 0 bit 17: a write.
    pub const WRITE: u64 = 1 << 17;
    /// Word 0 [27:24]: the reason.
    pub const REASON_SHIFT: u32 = 24;
    /// Reason 1.
    pub const NOT_PRESENT: u64 = 1;
    /// Reason 2.
    pub const PERMISSION: u64 = 2;
    /// Reason 3.
    pub const BLOCKED: u64 = 3;
    /// Reason 4.
    pub const ADDRESS_SIZE: u64 = 4;
    /// Reason 5.
    pub const BAD_ENTRY: u64 = 5;
    /// Reason 6.
    pub const BAD_PASID: u64 = 6;

    /// Word 0 of a record.
    pub const fn word0(rid: u16, read: bool, write: bool, reason: u64) -> u64 {
        rid as u64 | if read { READ } else { 0 } | if write { WRITE } else { 0 } | (reason & 0xf) << REASON_SHIFT
    }
    /// The reason of word 0.
    pub const fn reason(w0: u64) -> u64 {
        (w0 >> REASON_SHIFT) & 0xf
    }
    /// A reason as the framework's `Fault` reason code (driver and model agree through this).
    pub const fn to_framework(reason: u64) -> u32 {
        use ioasis::abi::Fault;
        match reason {
            NOT_PRESENT => Fault::NOT_PRESENT,
            PERMISSION => Fault::PERMISSION,
            BLOCKED => Fault::BLOCKED,
            ADDRESS_SIZE => Fault::ADDRESS_SIZE,
            BAD_PASID => Fault::BAD_PASID,
            _ => Fault::BAD_ENTRY,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_do_not_overlap() {
        assert_eq!(pte::RESERVED & (ADDR_MASK | pte::P | pte::R | pte::W | pte::A | pte::D), 0);
        assert_eq!(pte::RESERVED | ADDR_MASK | pte::P | pte::R | pte::W | pte::A | pte::D, u64::MAX);
        assert_eq!(dte::RESERVED & (ADDR_MASK | dte::V), 0);
        assert_eq!(dte::did(dte::entry(0x5000, 0xabc)), 0xabc);
        assert_eq!(dte::PAGES, 128);
        assert_eq!(fault::ENTRIES * fault::SIZE, 4096);
        assert_eq!(&reg::ID_VALUE.to_le_bytes(), b"ACMETINY");
        assert_eq!(cap::ias(cap::value(39, 48)), 39);
        assert_eq!(cap::oas(cap::value(39, 48)), 48);
        assert_eq!(inv::id(inv::cmd(inv::OP_IOTLB, 0x123)), 0x123);
    }
}
