//! Invalidation-queue descriptors (VT-d spec 6.5.2). 128-bit in legacy mode; 256-bit (the upper
//! two qwords zero for these types) when IQA.DW is set, as scalable mode requires.

use super::Word;

/// 6.5.2.1 Context-cache invalidate descriptor, type 0x1.
pub mod cc {
    use crate::layout::Word;

    /// Type.
    pub const TYPE: u64 = 0x1;
    /// G bits 5:4 = 01: global.
    pub const GLOBAL: u64 = 1 << 4;
    /// G = 10: domain-selective.
    pub const DOMAIN: u64 = 2 << 4;
    /// G = 11: device-selective.
    pub const DEVICE: u64 = 3 << 4;
    /// Qword 0: granularity, DID bits 31:16, SID bits 47:32, FM bits 49:48.
    pub const fn q0(gran: u64, did: u16, sid: u16) -> u64 {
        Word::ZERO.with(3, 0, TYPE).with(5, 4, gran >> 4).with(31, 16, did as u64).with(47, 32, sid as u64).get()
    }
}

/// 6.5.2.3 IOTLB invalidate descriptor, type 0x2.
pub mod iotlb {
    use crate::layout::Word;

    /// Type.
    pub const TYPE: u64 = 0x2;
    /// G bits 5:4 = 01: global.
    pub const GLOBAL: u64 = 1 << 4;
    /// G = 10: domain-selective.
    pub const DOMAIN: u64 = 2 << 4;
    /// G = 11: page-selective within domain.
    pub const PAGE: u64 = 3 << 4;
    /// DW bit 6, DR bit 7: drain writes/reads.
    pub const DRAIN: u64 = Word::ZERO.flag(6, true).flag(7, true).get();
    /// Qword 0: granularity and DID bits 31:16.
    pub const fn q0(gran: u64, did: u16) -> u64 {
        drained(gran, did, false)
    }
    /// Qword 0 with DW and DR set when `drain` (where CAP.DWD and CAP.DRD allow).
    pub const fn drained(gran: u64, did: u16, drain: bool) -> u64 {
        Word::ZERO.with(3, 0, TYPE).with(5, 4, gran >> 4).flag(6, drain).flag(7, drain).with(31, 16, did as u64).get()
    }
    /// Qword 1: ADDR bits 63:12, IH bit 6, AM bits 5:0 (2^AM pages, naturally aligned).
    pub const fn q1(addr: u64, am: u32) -> u64 {
        Word::ZERO.with(63, 12, addr >> 12).with(5, 0, am as u64).get()
    }
}

/// 6.5.2.5 Device-TLB invalidate descriptor, type 0x3.
pub mod dev_tlb {
    use crate::layout::Word;

    /// Type.
    pub const TYPE: u64 = 0x3;
    /// Qword 0: SID bits 47:32.
    pub const fn q0(sid: u16) -> u64 {
        Word::ZERO.with(3, 0, TYPE).with(47, 32, sid as u64).get()
    }
    /// Qword 1: ADDR bits 63:12, S bit 11 (size encoded in the address's low bits).
    pub const S: u64 = 1 << 11;
    /// Qword 1 for the whole address space: S with address bits 62:12 set (bit 63 clear).
    pub const ALL: u64 = Word::ZERO.flag(11, true).with(62, 12, !0).get();
}

/// 6.5.2.4 PASID-based IOTLB invalidate descriptor, type 0x6.
pub mod p_iotlb {
    use crate::layout::Word;

    /// Type.
    pub const TYPE: u64 = 0x6;
    /// G bits 5:4 = 10: all of one PASID.
    pub const PASID: u64 = 2 << 4;
    /// G = 11: page-selective within a PASID.
    pub const PAGE: u64 = 3 << 4;
    /// Qword 0 bits that may be set: type 3:0, G 5:4, DID 31:16, PASID 51:32 (15:6, 63:52 and
    /// the type extension 11:9 are reserved).
    pub const Q0_DEFINED: u64 = Word::ZERO.with(5, 0, !0).with(31, 16, !0).with(51, 32, !0).get();
    /// Qword 1 IH bit 6: invalidation hint (leaf entries only).
    pub const IH: u64 = 1 << 6;
    /// Qword 1 bits that may be set: AM 5:0, IH 6, ADDR 63:12 (11:7 are reserved).
    pub const Q1_DEFINED: u64 = !0xf80;
    /// Qword 0: granularity, DID bits 31:16, PASID bits 51:32.
    pub const fn q0(gran: u64, did: u16, pasid: u32) -> u64 {
        Word::ZERO.with(3, 0, TYPE).with(5, 4, gran >> 4).with(31, 16, did as u64).with(51, 32, pasid as u64).get()
    }
    /// DID bits 31:16 of qword 0.
    pub const fn did(q0: u64) -> u16 {
        (q0 >> 16) as u16
    }
    /// PASID bits 51:32 of qword 0.
    pub const fn pasid(q0: u64) -> u32 {
        ((q0 >> 32) & 0xf_ffff) as u32
    }
    /// AM bits 5:0 of qword 1: 2^AM pages.
    pub const fn am(q1: u64) -> u32 {
        (q1 & 0x3f) as u32
    }
}

/// 6.5.2.6 PASID-based device-TLB invalidate descriptor, type 0x8.
pub mod p_dev_tlb {
    use crate::layout::Word;

    /// Type.
    pub const TYPE: u64 = 0x8;
    /// Qword 0 bits that may be set: type 3:0, MIP 8:4 (invalidation queue depth), PFSID 15:12
    /// and 63:52, SID 31:16, PASID 51:32 (bits 11:9, the type extension, are reserved).
    pub const Q0_DEFINED: u64 =
        Word::ZERO.with(8, 0, !0).with(15, 12, !0).with(31, 16, !0).with(51, 32, !0).with(63, 52, !0).get();
    /// Qword 1 G bit 0: every PASID of the device.
    pub const G: u64 = 1;
    /// Qword 1 S bit 11: the size is encoded in the address's low bits.
    pub const S: u64 = 1 << 11;
    /// Qword 1 bits that may be set: G 0, S 11, ADDR 63:12 (10:1 are reserved).
    pub const Q1_DEFINED: u64 = !0x7fe;
    /// SID bits 31:16 of qword 0.
    pub const fn sid(q0: u64) -> u16 {
        (q0 >> 16) as u16
    }
    /// PASID bits 51:32 of qword 0.
    pub const fn pasid(q0: u64) -> u32 {
        ((q0 >> 32) & 0xf_ffff) as u32
    }
    /// Qword 0: SID, PASID and PFSID (the physical function's source id, the device's own for
    /// a PF), MIP 0 (queue depth 32).
    pub const fn q0(sid: u16, pasid: u32, pfsid: u16) -> u64 {
        Word::ZERO
            .with(3, 0, TYPE)
            .with(15, 12, pfsid as u64)
            .with(31, 16, sid as u64)
            .with(51, 32, pasid as u64)
            .with(63, 52, pfsid as u64 >> 4)
            .get()
    }
}

/// 6.5.2.2 PASID-cache invalidate descriptor, type 0x7.
pub mod pc {
    use crate::layout::Word;

    /// Type.
    pub const TYPE: u64 = 0x7;
    /// G bits 5:4 = 00: all PASIDs of a domain.
    pub const DOMAIN: u64 = 0;
    /// G = 01: one PASID of a domain.
    pub const PASID: u64 = 1 << 4;
    /// G = 11: global.
    pub const GLOBAL: u64 = 3 << 4;
    /// Qword 0: granularity, DID bits 31:16, PASID bits 51:32.
    pub const fn q0(gran: u64, did: u16, pasid: u32) -> u64 {
        Word::ZERO.with(3, 0, TYPE).with(5, 4, gran >> 4).with(31, 16, did as u64).with(51, 32, pasid as u64).get()
    }
}

/// 6.5.2.8 Invalidation wait descriptor, type 0x5.
pub mod wait {
    use crate::layout::Word;

    /// Type.
    pub const TYPE: u64 = 0x5;
    /// IF bit 4: interrupt on completion.
    pub const IF: u64 = 1 << 4;
    /// SW bit 5: write status data to the status address.
    pub const SW: u64 = 1 << 5;
    /// FN bit 6: fence.
    pub const FN: u64 = 1 << 6;
    /// Qword 0: flags and status data bits 63:32.
    pub const fn q0(flags: u64, data: u32) -> u64 {
        Word::ZERO.with(3, 0, TYPE).with(6, 4, flags >> 4).with(63, 32, data as u64).get()
    }
    /// Qword 1: status address bits 63:2 (dword aligned).
    pub const fn q1(addr: u64) -> u64 {
        addr & !3
    }
}

/// 6.5.2.10 Page group response descriptor, type 0x9.
pub mod page_response {
    use crate::layout::Word;

    /// Type.
    pub const TYPE: u64 = 0x9;
    /// PASID present bit 4.
    pub const PASID_P: u64 = 1 << 4;
    /// Qword 0: response code bits 15:12, requester id bits 31:16, PASID bits 51:32.
    pub const fn q0(code: u32, rid: u16, pasid: Option<u32>) -> u64 {
        let w = Word::ZERO.with(3, 0, TYPE).with(15, 12, code as u64).with(31, 16, rid as u64);
        match pasid {
            Some(p) => w.flag(4, true).with(51, 32, p as u64).get(),
            None => w.get(),
        }
    }
    /// Qword 1: LPIG bit 2, page request group index bits 11:3.
    pub const fn q1(group: u32, last: bool) -> u64 {
        Word::ZERO.flag(2, last).with(11, 3, group as u64).get()
    }
}

/// What the descriptor of type `ty` (6.5.2) is called, for refusals.
pub const fn type_name(ty: u64) -> &'static str {
    match ty {
        0x1 => "context-cache invalidate (6.5.2.1)",
        0x2 => "IOTLB invalidate (6.5.2.3)",
        0x3 => "device-TLB invalidate (6.5.2.5)",
        0x4 => "interrupt entry cache invalidate (6.5.2.7)",
        0x5 => "invalidation wait (6.5.2.8)",
        0x6 => "PASID-based IOTLB invalidate (6.5.2.4)",
        0x7 => "PASID-cache invalidate (6.5.2.2)",
        0x8 => "PASID-based device-TLB invalidate (6.5.2.6)",
        0x9 => "page group response (6.5.2.10)",
        _ => "reserved type",
    }
}

/// The type of a descriptor (bits 3:0, and 11:9 extended).
pub const fn type_of(q0: u64) -> u64 {
    Word::ZERO.with(3, 0, q0).with(6, 4, q0 >> 9).get()
}

/// Each descriptor against the bit positions of its table in the spec (6.5.2), as literals:
/// a field moved, widened or left unmasked changes a value here.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn granularities_and_flags_sit_where_6_5_2_puts_them() {
        assert_eq!((cc::TYPE, cc::GLOBAL, cc::DOMAIN, cc::DEVICE), (0x1, 0x10, 0x20, 0x30));
        assert_eq!((iotlb::TYPE, iotlb::GLOBAL, iotlb::DOMAIN, iotlb::PAGE), (0x2, 0x10, 0x20, 0x30));
        assert_eq!(iotlb::DRAIN, 0xc0);
        assert_eq!((dev_tlb::TYPE, dev_tlb::S, dev_tlb::ALL), (0x3, 0x800, 0x7fff_ffff_ffff_f800));
        assert_eq!((p_iotlb::TYPE, p_iotlb::PASID, p_iotlb::PAGE, p_iotlb::IH), (0x6, 0x20, 0x30, 0x40));
        assert_eq!(p_iotlb::Q0_DEFINED, 0x000f_ffff_ffff_003f);
        assert_eq!(p_iotlb::Q1_DEFINED, 0xffff_ffff_ffff_f07f);
        assert_eq!((p_dev_tlb::TYPE, p_dev_tlb::G, p_dev_tlb::S), (0x8, 0x1, 0x800));
        assert_eq!(p_dev_tlb::Q0_DEFINED, 0xffff_ffff_ffff_f1ff);
        assert_eq!(p_dev_tlb::Q1_DEFINED, 0xffff_ffff_ffff_f801);
        assert_eq!((pc::TYPE, pc::DOMAIN, pc::PASID, pc::GLOBAL), (0x7, 0x00, 0x10, 0x30));
        assert_eq!((wait::TYPE, wait::IF, wait::SW, wait::FN), (0x5, 0x10, 0x20, 0x40));
        assert_eq!((page_response::TYPE, page_response::PASID_P), (0x9, 0x10));
    }

    #[test]
    fn descriptors_encode_each_field_in_place_and_masked() {
        assert_eq!(cc::q0(cc::DEVICE, 0xabcd, 0x1234), 0x0000_1234_abcd_0031);
        assert_eq!(iotlb::q0(iotlb::PAGE, 0xabcd), 0xabcd_0032);
        assert_eq!(iotlb::drained(iotlb::DOMAIN, 0xabcd, true), 0xabcd_00e2);
        assert_eq!(iotlb::q1(0x1234_5678_9fff, 9), 0x1234_5678_9009);
        assert_eq!(iotlb::q1(0, 0x47), 0x07);
        assert_eq!(dev_tlb::q0(0x1234), 0x0000_1234_0000_0003);
        assert_eq!(p_iotlb::q0(p_iotlb::PAGE, 0xabcd, 0x12345), 0x0001_2345_abcd_0036);
        assert_eq!(p_iotlb::q0(p_iotlb::PASID, 1, 0x12_3456), 0x0002_3456_0001_0026);
        assert_eq!(p_dev_tlb::q0(0x1234, 0x12345, 0xabcd), 0xabc1_2345_1234_d008);
        assert_eq!(pc::q0(pc::PASID, 0xabcd, 0x12345), 0x0001_2345_abcd_0017);
        assert_eq!(wait::q0(wait::SW | wait::FN, 0xdead_beef), 0xdead_beef_0000_0065);
        assert_eq!(wait::q1(0x1234_5677), 0x1234_5674);
        assert_eq!(page_response::q0(0xa, 0x1234, Some(0x12345)), 0x0001_2345_1234_a019);
        assert_eq!(page_response::q0(0x1f, 0xffff, None), 0xffff_f009);
        assert_eq!(page_response::q1(0x1ff, true), 0xffc);
        assert_eq!(page_response::q1(0x3ff, false), 0xff8);
    }

    #[test]
    fn fields_decode_from_where_they_are_encoded() {
        let q0 = 0xabc1_2345_1234_d008;
        assert_eq!((p_dev_tlb::sid(q0), p_dev_tlb::pasid(q0)), (0x1234, 0x12345));
        assert_eq!(p_dev_tlb::pasid(u64::MAX), 0xf_ffff);
        let q0 = 0x0001_2345_abcd_0036;
        assert_eq!((p_iotlb::did(q0), p_iotlb::pasid(q0)), (0xabcd, 0x12345));
        assert_eq!(p_iotlb::pasid(u64::MAX), 0xf_ffff);
        assert_eq!(p_iotlb::am(0x1234_5000 | 0x7f), 0x3f);
        assert_eq!(type_of(0xe07), 0x77);
        assert_eq!(type_of(0x1ff6), 0x76, "bits 8:4 are not the type");
        let names: Vec<&str> = (0x1..=0x9).map(type_name).collect();
        let sections =
            ["6.5.2.1", "6.5.2.3", "6.5.2.5", "6.5.2.7", "6.5.2.8", "6.5.2.4", "6.5.2.2", "6.5.2.6", "6.5.2.10"];
        for (name, section) in names.iter().zip(sections) {
            assert!(name.ends_with(&format!("({section})")), "{name}: {section}");
        }
        assert_eq!(type_name(0x6), "PASID-based IOTLB invalidate (6.5.2.4)");
        assert_eq!((type_name(0x0), type_name(0x16)), ("reserved type", "reserved type"));
    }
}
