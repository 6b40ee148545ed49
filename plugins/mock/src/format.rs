//! The mock unit's bit layouts, shared by the driver and the model (mock spec, `SPEC.md`).

/// §1: register offsets.
pub mod reg {
    /// §1 ID register.
    pub const ID: u64 = 0x000;
    /// §1 VERSION register.
    pub const VERSION: u64 = 0x008;
    /// §1.1 CAP register.
    pub const CAP: u64 = 0x010;
    /// §1 CTRL register.
    pub const CTRL: u64 = 0x018;
    /// §1 STATUS register.
    pub const STATUS: u64 = 0x020;
    /// §1 DEVTAB register.
    pub const DEVTAB: u64 = 0x028;
    /// §1 INV_ADDR register.
    pub const INV_ADDR: u64 = 0x030;
    /// §1 INV_SIZE register.
    pub const INV_SIZE: u64 = 0x038;
    /// §1 INV_TAG register.
    pub const INV_TAG: u64 = 0x040;
    /// §1 INV_CMD register.
    pub const INV_CMD: u64 = 0x048;
    /// §1 INV_DONE register.
    pub const INV_DONE: u64 = 0x050;
    /// §1 FQ_BASE register.
    pub const FQ_BASE: u64 = 0x060;
    /// §1 FQ_HEAD register.
    pub const FQ_HEAD: u64 = 0x068;
    /// §1 FQ_TAIL register.
    pub const FQ_TAIL: u64 = 0x070;
    /// §1 PRESP_DEV register.
    pub const PRESP_DEV: u64 = 0x080;
    /// §1 PRESP_CMD register.
    pub const PRESP_CMD: u64 = 0x088;
    /// §7 VMTAB register: the VM table page.
    pub const VMTAB: u64 = 0x090;
    /// §7 VCMDQ_BASE register: the guest queue's address (in the VM's stage-2) and log2 size.
    pub const VCMDQ_BASE: u64 = 0x0a0;
    /// §7 VCMDQ_VM register: VMID in bits 7:0, enable bit 63.
    pub const VCMDQ_VM: u64 = 0x0a8;
    /// §7 VCMDQ_PROD register: the guest's producer index.
    pub const VCMDQ_PROD: u64 = 0x0b0;
    /// §7 VCMDQ_CONS register: the unit's consumer index, bit 31 ERR.
    pub const VCMDQ_CONS: u64 = 0x0b8;
    /// §7 VCMDQ_CONS bit 31: the command at the consumer index was refused; the queue stopped.
    pub const VCMDQ_CONS_ERR: u64 = 1 << 31;
    /// §7 VCMDQ_VM bit 63: the queue is enabled.
    pub const VCMDQ_VM_EN: u64 = 1 << 63;
    /// Size of the register window.
    pub const WINDOW: u64 = 0x1000;

    /// §1 ID value: "IOASMOCK".
    pub const ID_VALUE: u64 = 0x494f_4153_4d4f_434b;
    /// §1 CTRL.EN.
    pub const CTRL_EN: u64 = 1 << 0;
    /// §1 CTRL.FQEN.
    pub const CTRL_FQEN: u64 = 1 << 1;
    /// §1 CTRL bit 2: write 1 to clear STATUS.FQOF.
    pub const CTRL_FQOF_CLEAR: u64 = 1 << 2;
    /// §1 STATUS.ENS.
    pub const STATUS_ENS: u64 = 1 << 0;
    /// §1 STATUS.FQOF.
    pub const STATUS_FQOF: u64 = 1 << 1;

    /// §1 INV_CMD 1: IOTLB entries of descriptor `INV_TAG` in `[INV_ADDR, +INV_SIZE)`.
    pub const INV_IOTLB_RANGE: u64 = 1;
    /// §1 INV_CMD 2: every IOTLB entry.
    pub const INV_IOTLB_ALL: u64 = 2;
    /// §1 INV_CMD 3: cached device entry, PASID entries and descriptors of device `INV_TAG`.
    pub const INV_DEVICE: u64 = 3;
    /// §1 INV_CMD 4: every cache.
    pub const INV_ALL: u64 = 4;
}

/// §1.1: CAP register fields.
pub mod cap {
    /// PASID support.
    pub const PASID: u64 = 1 << 0;
    /// Nested translation.
    pub const NEST: u64 = 1 << 1;
    /// Dirty bit tracking.
    pub const DIRTY: u64 = 1 << 2;
    /// Page requests (PRI).
    pub const PRI: u64 = 1 << 3;
    /// ATS / device-TLB.
    pub const ATS: u64 = 1 << 4;
    /// Enforced coherency.
    pub const COHERENCY: u64 = 1 << 5;
    /// ENQCMD vPASID translation.
    pub const ENQCMD: u64 = 1 << 6;
    /// Identity descriptors.
    pub const IDENTITY: u64 = 1 << 7;
    /// bits 12:8 PASID width.
    pub const PASID_BITS_SHIFT: u32 = 8;
    /// bits 23:16 IAS.
    pub const IAS_SHIFT: u32 = 16;
    /// bits 31:24 OAS.
    pub const OAS_SHIFT: u32 = 24;
    /// 4 KiB pages.
    pub const PS_4K: u64 = 1 << 32;
    /// 2 MiB pages.
    pub const PS_2M: u64 = 1 << 33;
    /// 1 GiB pages.
    pub const PS_1G: u64 = 1 << 34;
    /// Stage-1 format x86-64 can be nested.
    pub const S1_X86_64: u64 = 1 << 40;
    /// Stage-1 format mock can be nested.
    pub const S1_MOCK: u64 = 1 << 41;
    /// §7 vIOMMU: VM table, VMIDs and virtual-id tables.
    pub const VIOMMU: u64 = 1 << 42;
    /// §7 the virtual command queue (needs VIOMMU).
    pub const VCMDQ: u64 = 1 << 43;

    /// The PASID width field.
    pub const fn pasid_bits(cap: u64) -> u8 {
        ((cap >> PASID_BITS_SHIFT) & 0x1f) as u8
    }
    /// The IAS field.
    pub const fn ias(cap: u64) -> u8 {
        ((cap >> IAS_SHIFT) & 0xff) as u8
    }
    /// The OAS field.
    pub const fn oas(cap: u64) -> u8 {
        ((cap >> OAS_SHIFT) & 0xff) as u8
    }
    /// Every capability, 20-bit PASIDs, 48-bit IAS/OAS, all page sizes: the default unit.
    pub const FULL: u64 = PASID
        | NEST
        | DIRTY
        | PRI
        | ATS
        | COHERENCY
        | ENQCMD
        | IDENTITY
        | (20 << PASID_BITS_SHIFT)
        | (48 << IAS_SHIFT)
        | (48 << OAS_SHIFT)
        | PS_4K
        | PS_2M
        | PS_1G
        | S1_X86_64
        | S1_MOCK
        | VIOMMU
        | VCMDQ;
}

/// Bits bits 51:12: a 4 KiB-aligned physical address in any entry.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bit 0 of every entry: valid / present.
pub const VALID: u64 = 1 << 0;

/// §2: device table.
pub mod devtab {
    /// Level-1 entries per page.
    pub const L1_ENTRIES: u64 = 512;
    /// Level-2 entries per page (16 bytes each).
    pub const L2_ENTRIES: u64 = 256;
    /// Largest device id + 1.
    pub const MAX_IDS: u64 = L1_ENTRIES * L2_ENTRIES;
    /// Word 0 bit 1: PASID_EN.
    pub const PASID_EN: u64 = 1 << 1;
    /// Word 0 bit 2: PRI_EN.
    pub const PRI_EN: u64 = 1 << 2;
    /// Word 0 bit 3: ATS_EN.
    pub const ATS_EN: u64 = 1 << 3;
    /// Word 1 bits 4:0: PASID width.
    pub const PASID_BITS_MASK: u64 = 0x1f;

    /// Offset of the level-1 entry for `id` in the level-1 page.
    pub const fn l1_offset(id: u32) -> u64 {
        ((id as u64 >> 8) & 0x1ff) * 8
    }
    /// Offset of the level-2 entry for `id` in its level-2 page.
    pub const fn l2_offset(id: u32) -> u64 {
        (id as u64 & 0xff) * 16
    }
}

/// §3: PASID table.
pub mod pasidtab {
    /// Levels.
    pub const LEVELS: u32 = 3;
    /// Offset of the entry for `pasid` in the table of `level` (2 = top, 0 = last).
    pub const fn offset(pasid: u32, level: u32) -> u64 {
        ((pasid as u64 >> (9 * level)) & 0x1ff) * 8
    }
}

/// §4: HWPT descriptor.
pub mod desc {
    /// Size in bytes.
    pub const SIZE: u64 = 64;
    /// Word 0 bits 3:0 TYPE: paging.
    pub const TYPE_PAGING: u64 = 1;
    /// TYPE: nested.
    pub const TYPE_NESTED: u64 = 2;
    /// TYPE: identity.
    pub const TYPE_IDENTITY: u64 = 3;
    /// TYPE: blocking.
    pub const TYPE_BLOCKING: u64 = 4;
    /// Word 0 mask of TYPE.
    pub const TYPE_MASK: u64 = 0xf;
    /// Word 0 bit 4: DIRTY_EN.
    pub const DIRTY_EN: u64 = 1 << 4;
    /// Word 0 bit 5: COHERENT.
    pub const COHERENT: u64 = 1 << 5;
    /// Word 0 bit 6: PRI.
    pub const PRI: u64 = 1 << 6;
    /// Word 0 bits 15:8: levels.
    pub const LEVELS_SHIFT: u32 = 8;
    /// Word 0 bits 23:16: IAS.
    pub const IAS_SHIFT: u32 = 16;
    /// Word 3 bits 15:8: the VMID of the vIOMMU a nested descriptor belongs to (§7), 0 for none.
    pub const VMID_SHIFT: u32 = 8;
    /// Word 3 stage-1 format: mock.
    pub const S1_MOCK: u64 = 1;
    /// Word 3 stage-1 format: x86-64.
    pub const S1_X86_64: u64 = 3;
}

/// §5: page-table entries.
pub mod pte {
    /// Levels.
    pub const LEVELS: u32 = 4;
    /// Bit 0 P.
    pub const P: u64 = 1 << 0;
    /// Bit 1 R.
    pub const R: u64 = 1 << 1;
    /// Bit 2 W.
    pub const W: u64 = 1 << 2;
    /// Bit 3 LEAF (levels 1, 2).
    pub const LEAF: u64 = 1 << 3;
    /// Bit 5 A.
    pub const A: u64 = 1 << 5;
    /// Bit 6 D.
    pub const D: u64 = 1 << 6;

    /// Shift of the index at `level` (0 = 4 KiB pages).
    pub const fn shift(level: u32) -> u32 {
        12 + 9 * level
    }
    /// Bytes covered by one entry at `level`.
    pub const fn span(level: u32) -> u64 {
        1u64 << shift(level)
    }
    /// Offset of `iova`'s entry in its table at `level`.
    pub const fn offset(iova: u64, level: u32) -> u64 {
        ((iova >> shift(level)) & 0x1ff) * 8
    }
    /// True when an entry at `level` is a leaf.
    pub const fn is_leaf(entry: u64, level: u32) -> bool {
        level == 0 || entry & LEAF != 0
    }
}

/// x86-64 stage-1 entries (VT-d spec 9.7, Intel SDM vol. 3 4.5) as the model walks them.
pub mod x86 {
    /// Present.
    pub const P: u64 = 1 << 0;
    /// Writable.
    pub const RW: u64 = 1 << 1;
    /// Accessed.
    pub const A: u64 = 1 << 5;
    /// Dirty.
    pub const D: u64 = 1 << 6;
    /// Page size (a 2 MiB or 1 GiB leaf at levels 1, 2).
    pub const PS: u64 = 1 << 7;
}

/// §6: fault record.
pub mod fault {
    /// Bytes per record.
    pub const SIZE: u64 = 32;
    /// Records in the queue page.
    pub const ENTRIES: u32 = 128;
    /// Word 0 bits 51:32 PASID shift.
    pub const PASID_SHIFT: u32 = 32;
    /// Word 0 bit 52 PASID valid.
    pub const PASID_V: u64 = 1 << 52;
    /// Word 0 bit 53 page request.
    pub const PAGE_REQ: u64 = 1 << 53;
    /// Word 0 bit 54 write.
    pub const WRITE: u64 = 1 << 54;
    /// Word 0 bit 55 read.
    pub const READ: u64 = 1 << 55;
    /// Word 0 bits 63:56 reason shift.
    pub const REASON_SHIFT: u32 = 56;
    /// Word 3 bit 0 S2: the fault happened in the stage-2 walk of a nested translation.
    pub const S2: u64 = 1 << 0;
}

/// §7: the virtual interface (vIOMMUs).
pub mod vm {
    /// VM table entries (one page of 16-byte entries, indexed by VMID; VMID 0 is never used).
    pub const ENTRIES: u64 = 256;
    /// VM table entry size.
    pub const ENTRY_SIZE: u64 = 16;
    /// Virtual-id table entries (one page of 8-byte entries, indexed by virtual id).
    pub const VIRT_IDS: u64 = 512;
    /// Virtual-id entry bits 48:32: the physical device id.
    pub const PDEV_SHIFT: u32 = 32;
    /// Virtual-id entry mask of the physical device id (17 bits).
    pub const PDEV_MASK: u64 = 0x1_ffff;
    /// Bytes per virtual command.
    pub const CMD_SIZE: u64 = 32;
    /// Largest log2 of the virtual command queue's entries (a 4 KiB page holds 128).
    pub const CMDQ_MAX_LOG2: u64 = 7;

    /// Command word 0 bits 7:0: the opcode.
    pub const OP_MASK: u64 = 0xff;
    /// Opcode 1: stage-1 IOTLB entries of the virtual device (and PASID) in `[word 1, +word 2)`
    /// (word 2 = 0: all of them).
    pub const OP_STAGE1_RANGE: u64 = 1;
    /// Opcode 2: the virtual device's cached configuration (device and PASID entries).
    pub const OP_DEVICE: u64 = 2;
    /// Opcode 3: no operation (a completion point).
    pub const OP_SYNC: u64 = 3;
    /// Command word 0 bit 8: the PASID field is valid.
    pub const PASID_V: u64 = 1 << 8;
    /// Command word 0 bits 31:12: the PASID.
    pub const PASID_SHIFT: u32 = 12;
    /// Command word 0 bits 63:32: the virtual id.
    pub const VIRT_SHIFT: u32 = 32;
    /// Command word 0 bits that are reserved (11:9).
    pub const W0_RESERVED: u64 = 0xe00;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_the_spec() {
        // §5: IOVA 0x0000_8040_2010_3000 -> indices 1, 1, 1, 0x103 & 0x1ff... computed by hand.
        let iova = (1u64 << 39) | (1 << 30) | (1 << 21) | (3 << 12);
        assert_eq!(pte::offset(iova, 3), 8);
        assert_eq!(pte::offset(iova, 2), 8);
        assert_eq!(pte::offset(iova, 1), 8);
        assert_eq!(pte::offset(iova, 0), 24);
        assert_eq!(pte::span(1), 2 << 20);
        assert_eq!(pte::span(2), 1 << 30);
        // §2: id 0x01ff -> level-1 slot 1, level-2 slot 0xff (16 bytes each).
        assert_eq!(devtab::l1_offset(0x01ff), 8);
        assert_eq!(devtab::l2_offset(0x01ff), 0xff * 16);
        // §3: PASID 0xfffff -> 3, 511, 511.
        assert_eq!(pasidtab::offset(0xfffff, 2), 3 * 8);
        assert_eq!(pasidtab::offset(0xfffff, 1), 511 * 8);
        assert_eq!(pasidtab::offset(0xfffff, 0), 511 * 8);
        assert_eq!(cap::pasid_bits(cap::FULL), 20);
        assert_eq!(cap::ias(cap::FULL), 48);
    }
}
