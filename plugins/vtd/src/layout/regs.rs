//! Remapping-hardware registers (VT-d spec chapter 11, "Register Descriptions").

/// Offsets in the register window (VT-d spec 11.4).
pub mod off {
    /// 11.4.1 Version Register (32-bit).
    pub const VER: u64 = 0x000;
    /// 11.4.2 Capability Register.
    pub const CAP: u64 = 0x008;
    /// 11.4.3 Extended Capability Register.
    pub const ECAP: u64 = 0x010;
    /// 11.4.4 Global Command Register (32-bit).
    pub const GCMD: u64 = 0x018;
    /// 11.4.5 Global Status Register (32-bit).
    pub const GSTS: u64 = 0x01c;
    /// 11.4.6 Root Table Address Register.
    pub const RTADDR: u64 = 0x020;
    /// 11.4.7 Context Command Register.
    pub const CCMD: u64 = 0x028;
    /// 11.4.9.1 Fault Status Register (32-bit).
    pub const FSTS: u64 = 0x034;
    /// 11.4.9.2 Fault Event Control Register (32-bit).
    pub const FECTL: u64 = 0x038;
    /// 11.4.10.1 Invalidation Queue Head.
    pub const IQH: u64 = 0x080;
    /// 11.4.10.2 Invalidation Queue Tail.
    pub const IQT: u64 = 0x088;
    /// 11.4.10.3 Invalidation Queue Address.
    pub const IQA: u64 = 0x090;
    /// 11.4.10.4 Invalidation Completion Status (32-bit).
    pub const ICS: u64 = 0x09c;
    /// 11.4.11.1 Page Request Queue Head.
    pub const PQH: u64 = 0x0c0;
    /// 11.4.11.2 Page Request Queue Tail.
    pub const PQT: u64 = 0x0c8;
    /// 11.4.11.3 Page Request Queue Address.
    pub const PQA: u64 = 0x0d0;
    /// 11.4.11.4 Page Request Status (32-bit).
    pub const PRS: u64 = 0x0dc;
}

/// 11.4.2 CAP_REG fields.
pub mod cap {
    use crate::layout::Word;

    /// ND bits 2:0: domain ids supported = 2^(4 + 2*ND).
    pub const fn nd(cap: u64) -> u32 {
        (cap & 7) as u32
    }
    /// RWBF bit 4: write-buffer flushing required.
    pub const RWBF: u64 = 1 << 4;
    /// CM bit 7: caching mode (not-present entries may be cached).
    pub const CM: u64 = 1 << 7;
    /// SAGAW bits 12:8: bit 1 = 39-bit 3-level, bit 2 = 48-bit 4-level, bit 3 = 57-bit 5-level.
    pub const fn sagaw(cap: u64) -> u32 {
        ((cap >> 8) & 0x1f) as u32
    }
    /// MGAW bits 21:16: maximum guest address width - 1.
    pub const fn mgaw(cap: u64) -> u32 {
        ((cap >> 16) & 0x3f) as u32 + 1
    }
    /// FRO bits 33:24: fault-recording register offset, in 16-byte units.
    pub const fn fro(cap: u64) -> u64 {
        ((cap >> 24) & 0x3ff) * 16
    }
    /// SLLPS bits 37:34: bit 0 = 2 MiB, bit 1 = 1 GiB second-level pages.
    pub const fn sllps(cap: u64) -> u32 {
        ((cap >> 34) & 0xf) as u32
    }
    /// PSI bit 39: page-selective invalidation.
    pub const PSI: u64 = 1 << 39;
    /// NFR bits 47:40: number of fault-recording registers - 1.
    pub const fn nfr(cap: u64) -> u32 {
        ((cap >> 40) & 0xff) as u32 + 1
    }
    /// MAMV bits 53:48: maximum address-mask value for page-selective invalidation.
    pub const fn mamv(cap: u64) -> u32 {
        ((cap >> 48) & 0x3f) as u32
    }
    /// DWD bit 54, DRD bit 55: write/read draining.
    pub const DWD: u64 = 1 << 54;
    /// DWD and DRD.
    pub const DRAINING: u64 = Word::ZERO.with(55, 54, !0).get();
    /// DRD.
    pub const DRD: u64 = 1 << 55;
    /// FS1GP bit 56: first-stage 1 GiB pages.
    pub const FS1GP: u64 = 1 << 56;
    /// FS5LP bit 60: first-stage 5-level paging.
    pub const FS5LP: u64 = 1 << 60;
}

/// 11.4.3 ECAP_REG fields.
pub mod ecap {
    /// C bit 0: page-walk coherency.
    pub const C: u64 = 1;
    /// QI bit 1: queued invalidation.
    pub const QI: u64 = 1 << 1;
    /// DT bit 2: device-TLB (ATS).
    pub const DT: u64 = 1 << 2;
    /// IR bit 3: interrupt remapping.
    pub const IR: u64 = 1 << 3;
    /// PT bit 6: pass-through.
    pub const PT: u64 = 1 << 6;
    /// SC bit 7: snoop control.
    pub const SC: u64 = 1 << 7;
    /// IRO bits 17:8: IOTLB register offset, in 16-byte units.
    pub const fn iro(ecap: u64) -> u64 {
        ((ecap >> 8) & 0x3ff) * 16
    }
    /// NEST bit 26: nested translation.
    pub const NEST: u64 = 1 << 26;
    /// PRS bit 29: page requests.
    pub const PRS: u64 = 1 << 29;
    /// PSS bits 39:35: PASID size supported - 1.
    pub const fn pss(ecap: u64) -> u32 {
        ((ecap >> 35) & 0x1f) as u32 + 1
    }
    /// PASID bit 40.
    pub const PASID: u64 = 1 << 40;
    /// SMTS bit 43: scalable-mode translation.
    pub const SMTS: u64 = 1 << 43;
    /// SSADS bit 45 (SLADS in older revisions): second-stage accessed/dirty.
    pub const SSADS: u64 = 1 << 45;
    /// SSTS bit 46 (SLTS): second-stage translation in scalable mode.
    pub const SSTS: u64 = 1 << 46;
    /// FSTS bit 47 (FLTS): first-stage translation in scalable mode.
    pub const FSTS: u64 = 1 << 47;
}

/// 11.4.4 GCMD_REG / 11.4.5 GSTS_REG bits (same positions).
pub mod gcmd {
    use crate::layout::Word;

    /// TE/TES bit 31: translation enable.
    pub const TE: u32 = 1 << 31;
    /// SRTP/RTPS bit 30: set root table pointer.
    pub const SRTP: u32 = 1 << 30;
    /// WBF/WBFS bit 27: write buffer flush.
    pub const WBF: u32 = 1 << 27;
    /// QIE/QIES bit 26: queued invalidation enable.
    pub const QIE: u32 = 1 << 26;
    /// Bits of GCMD that are one-shot commands, never kept when writing back GSTS.
    pub const ONE_SHOT: u32 = Word::ZERO.flag(30, true).flag(29, true).flag(27, true).flag(24, true).get() as u32;
}

/// 11.4.6 RTADDR_REG: TTM bits 11:10.
pub mod rtaddr {
    /// Legacy mode.
    pub const TTM_LEGACY: u64 = 0;
    /// Scalable mode.
    pub const TTM_SCALABLE: u64 = 1 << 10;
    /// Mask of TTM.
    pub const TTM_MASK: u64 = 3 << 10;
}

/// 11.4.7 CCMD_REG.
pub mod ccmd {
    use crate::layout::Word;

    /// ICC bit 63: invalidate context cache (cleared by hardware when done).
    pub const ICC: u64 = 1 << 63;
    /// CIRG bits 62:61 = 01: global.
    pub const GLOBAL: u64 = 1 << 61;
    /// CIRG = 10: domain-selective.
    pub const DOMAIN: u64 = 2 << 61;
    /// CIRG = 11: device-selective.
    pub const DEVICE: u64 = 3 << 61;
    /// SID bits 31:16.
    pub const fn sid(sid: u16) -> u64 {
        (sid as u64) << 16
    }
    /// A command: ICC, CIRG (one of the granularities above), SID bits 31:16, DID bits 15:0.
    pub const fn command(cirg: u64, sid: u16, did: u16) -> u64 {
        Word::ZERO.flag(63, true).with(62, 61, cirg >> 61).with(31, 16, sid as u64).with(15, 0, did as u64).get()
    }
}

/// 11.4.8 IOTLB registers at ECAP.IRO: IVA at +0, IOTLB at +8.
pub mod iotlb {
    use crate::layout::Word;

    /// Offset of IVA_REG from IRO.
    pub const IVA: u64 = 0;
    /// Offset of IOTLB_REG from IRO.
    pub const REG: u64 = 8;
    /// IVT bit 63: invalidate (cleared by hardware when done).
    pub const IVT: u64 = 1 << 63;
    /// IIRG bits 61:60 = 01: global.
    pub const GLOBAL: u64 = 1 << 60;
    /// IIRG = 10: domain-selective.
    pub const DOMAIN: u64 = 2 << 60;
    /// IIRG = 11: page-selective within domain.
    pub const PAGE: u64 = 3 << 60;
    /// DR bit 49, DW bit 48: drain reads/writes.
    pub const DRAIN: u64 = Word::ZERO.flag(49, true).flag(48, true).get();
    /// DID bits 47:32.
    pub const fn did(did: u16) -> u64 {
        (did as u64) << 32
    }
    /// A command: IVT, IIRG (one of the granularities above), DR and DW when `drain`, DID.
    pub const fn command(iirg: u64, drain: bool, did: u16) -> u64 {
        Word::ZERO
            .flag(63, true)
            .with(61, 60, iirg >> 60)
            .flag(49, drain)
            .flag(48, drain)
            .with(47, 32, did as u64)
            .get()
    }
    /// IVA_REG: address bits 63:12, IH bit 6, AM bits 5:0.
    pub const fn iva(addr: u64, am: u32) -> u64 {
        Word::ZERO.with(63, 12, addr >> 12).with(5, 0, am as u64).get()
    }
}

/// 11.4.9.1 FSTS_REG bits.
pub mod fsts {
    use crate::layout::Word;

    /// PFO bit 0: primary fault overflow.
    pub const PFO: u32 = 1;
    /// PPF bit 1: primary pending fault.
    pub const PPF: u32 = 1 << 1;
    /// IQE bit 4: invalidation queue error.
    pub const IQE: u32 = 1 << 4;
    /// ICE bit 5: invalidation completion error.
    pub const ICE: u32 = 1 << 5;
    /// ITE bit 6: invalidation time-out error.
    pub const ITE: u32 = 1 << 6;
    /// The write-1-to-clear bits: PFO and the invalidation errors (PPF is read-only).
    pub const W1C: u32 = Word::ZERO.flag(0, true).with(6, 4, !0).get() as u32;
    /// The invalidation errors: IQE, ICE and ITE (bits 6:4).
    pub const INVALIDATION_ERRORS: u32 = Word::ZERO.with(6, 4, !0).get() as u32;
    /// FRI bits 15:8: index of the first pending fault record.
    pub const fn fri(fsts: u32) -> u32 {
        (fsts >> 8) & 0xff
    }
}

/// 11.4.10.3 IQA_REG: address bits 63:12, DW bit 11 (256-bit descriptors), QS bits 2:0.
pub mod iqa {
    use crate::layout::Word;

    /// DW: 256-bit descriptors (scalable mode).
    pub const DW: u64 = 1 << 11;
    /// QS: 2^QS pages of 4 KiB.
    pub const fn value(base: u64, qs: u32, wide: bool) -> u64 {
        Word::ZERO.with(63, 12, base >> 12).flag(11, wide).with(2, 0, qs as u64).get()
    }
}

/// 11.4.10.4 ICS_REG: IWC bit 0.
pub const ICS_IWC: u32 = 1;

/// 11.4.11.4 PRS_REG: PPR bit 0, PRO bit 1.
pub mod prs {
    use crate::layout::Word;

    /// Pending page request.
    pub const PPR: u32 = 1;
    /// Page request overflow.
    pub const PRO: u32 = 1 << 1;
    /// The write-1-to-clear bits: PPR and PRO.
    pub const W1C: u32 = Word::ZERO.flag(0, true).flag(1, true).get() as u32;
}

/// 11.4.11.3 PQA_REG: page request queue base bits 63:12, PQS bits 2:0 (2^PQS 4 KiB pages).
pub mod pqa {
    use crate::layout::Word;

    /// The register value for a queue at `base` of 2^`pqs` pages.
    pub const fn value(base: u64, pqs: u32) -> u64 {
        Word::ZERO.with(63, 12, base >> 12).with(2, 0, pqs as u64).get()
    }
}

/// More register offsets (VT-d spec 11.4) that the model answers.
pub mod off_more {
    /// 11.4.9 Fault Event Data Register (32-bit).
    pub const FEDATA: u64 = 0x03c;
    /// 11.4.9 Fault Event Address Register (32-bit).
    pub const FEADDR: u64 = 0x040;
    /// 11.4.9 Fault Event Upper Address Register (32-bit).
    pub const FEUADDR: u64 = 0x044;
    /// 11.4.10 Invalidation Event Control Register (32-bit).
    pub const IECTL: u64 = 0x0a0;
    /// 11.4.10 Invalidation Event Data Register (32-bit).
    pub const IEDATA: u64 = 0x0a4;
    /// 11.4.10 Invalidation Event Address Register (32-bit).
    pub const IEADDR: u64 = 0x0a8;
    /// 11.4.10 Invalidation Event Upper Address Register (32-bit).
    pub const IEUADDR: u64 = 0x0ac;
    /// 11.4.11 Page Request Event Control Register (32-bit).
    pub const PECTL: u64 = 0x0e0;
    /// 11.4.11 Page Request Event Data Register (32-bit).
    pub const PEDATA: u64 = 0x0e4;
    /// 11.4.11 Page Request Event Address Register (32-bit).
    pub const PEADDR: u64 = 0x0e8;
    /// 11.4.11 Page Request Event Upper Address Register (32-bit).
    pub const PEUADDR: u64 = 0x0ec;
}

/// 11.4.9.2 FECTL_REG (and the same layout in IECTL 11.4.10, PECTL 11.4.11).
pub mod event_ctl {
    /// IM bit 31: interrupt mask (set at reset).
    pub const IM: u32 = 1 << 31;
    /// IP bit 30: interrupt pending.
    pub const IP: u32 = 1 << 30;
}

/// 11.4.7 CCMD_REG fields beyond the layout above.
pub mod ccmd_more {
    /// CIRG bits 62:61 of a CCMD value.
    pub const fn cirg(v: u64) -> u64 {
        (v >> 61) & 3
    }
    /// CAIG bits 60:59: the granularity hardware actually used.
    pub const fn caig(g: u64) -> u64 {
        (g & 3) << 59
    }
    /// Mask of CAIG.
    pub const CAIG_MASK: u64 = 3 << 59;
    /// FM bits 33:32: function mask for device-selective invalidation.
    pub const fn fm(v: u64) -> u64 {
        (v >> 32) & 3
    }
    /// SID bits 31:16.
    pub const fn sid_of(v: u64) -> u16 {
        (v >> 16) as u16
    }
    /// DID bits 15:0.
    pub const fn did_of(v: u64) -> u16 {
        v as u16
    }
}

/// 11.4.8.1 IOTLB_REG fields beyond the layout above.
pub mod iotlb_more {
    /// IIRG bits 61:60 of an IOTLB_REG value.
    pub const fn iirg(v: u64) -> u64 {
        (v >> 60) & 3
    }
    /// IAIG bits 58:57: the granularity hardware actually used.
    pub const fn iaig(g: u64) -> u64 {
        (g & 3) << 57
    }
    /// Mask of IAIG.
    pub const IAIG_MASK: u64 = 3 << 57;
    /// DID bits 47:32.
    pub const fn did_of(v: u64) -> u16 {
        (v >> 32) as u16
    }
}

/// 11.4.10.1-2 IQH_REG / IQT_REG: QH/QT bits 18:4, a byte offset into the queue.
pub const IQ_OFFSET_MASK: u64 = 0x7fff0;

/// 11.4.11.1-2 PQH_REG / PQT_REG: PQH/PQT bits 18:5, a byte offset into the queue.
pub const PQ_OFFSET_MASK: u64 = 0x7ffe0;

/// The register bits the model does not check (it shares these constants), against the bit
/// numbers of 11.4 as literals: the spec is the only oracle for them besides QEMU.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_sit_where_11_4_puts_them() {
        assert_eq!((cap::RWBF, cap::CM, cap::PSI), (0x10, 0x80, 0x80_0000_0000));
        assert_eq!((cap::DWD, cap::DRD), (0x0040_0000_0000_0000, 0x0080_0000_0000_0000));
        assert_eq!((cap::FS1GP, cap::FS5LP), (0x0100_0000_0000_0000, 0x1000_0000_0000_0000));
        assert_eq!((ecap::C, ecap::QI, ecap::DT, ecap::IR, ecap::PT, ecap::SC), (0x1, 0x2, 0x4, 0x8, 0x40, 0x80));
        assert_eq!((ecap::NEST, ecap::PRS, ecap::PASID), (0x400_0000, 0x2000_0000, 0x100_0000_0000));
        assert_eq!((ecap::SMTS, ecap::SSADS, ecap::SSTS, ecap::FSTS), (1 << 43, 1 << 45, 1 << 46, 1 << 47));
        assert_eq!((gcmd::TE, gcmd::SRTP, gcmd::WBF, gcmd::QIE), (0x8000_0000, 0x4000_0000, 0x0800_0000, 0x0400_0000));
        assert_eq!(gcmd::ONE_SHOT, 0x6900_0000, "SRTP, SFL (29), WBF and SIRTP (24)");
        assert_eq!((rtaddr::TTM_LEGACY, rtaddr::TTM_SCALABLE, rtaddr::TTM_MASK), (0, 0x400, 0xc00));
        assert_eq!((ccmd::ICC, ccmd::GLOBAL, ccmd::DOMAIN, ccmd::DEVICE), (1 << 63, 1 << 61, 2 << 61, 3 << 61));
        assert_eq!(ccmd::DOMAIN, 0x4000_0000_0000_0000);
        assert_eq!((iotlb::IVT, iotlb::GLOBAL, iotlb::DOMAIN, iotlb::PAGE), (1 << 63, 1 << 60, 2 << 60, 3 << 60));
        assert_eq!(iotlb::GLOBAL, 0x1000_0000_0000_0000);
        assert_eq!(iotlb::DRAIN, 0x0003_0000_0000_0000);
    }

    #[test]
    fn status_and_queue_registers_sit_where_11_4_puts_them() {
        assert_eq!((fsts::PFO, fsts::PPF, fsts::IQE, fsts::ICE, fsts::ITE), (1, 2, 0x10, 0x20, 0x40));
        assert_eq!((fsts::fri(0xffff_ab00), fsts::fri(0xff)), (0xab, 0));
        assert_eq!(
            (iqa::DW, iqa::value(0x1234_5fff, 7, true), iqa::value(0x1000, 0xf, false)),
            (0x800, 0x1234_5807, 0x1007)
        );
        assert_eq!((ICS_IWC, prs::PPR, prs::PRO, prs::W1C), (1, 1, 2, 3));
        assert_eq!((fsts::INVALIDATION_ERRORS, fsts::W1C, cap::DRAINING), (0x70, 0x71, 0x00c0_0000_0000_0000));
        assert_eq!((pqa::value(0x1234_5fff, 0), pqa::value(0x1000, 0xb)), (0x1234_5000, 0x1003));
        assert_eq!((event_ctl::IM, event_ctl::IP), (0x8000_0000, 0x4000_0000));
        assert_eq!((IQ_OFFSET_MASK, PQ_OFFSET_MASK), (0x7fff0, 0x7ffe0));
        assert_eq!((ccmd::sid(0xffff), iotlb::did(0xffff)), (0xffff_0000, 0xffff_0000_0000));
        assert_eq!((iotlb::IVA, iotlb::REG), (0, 8));
        assert_eq!(iotlb::iva(0x1234_5fff, 0x41), 0x1234_5001);
        assert_eq!(ccmd::command(ccmd::DEVICE, 0xabcd, 0x1234), 0xe000_0000_abcd_1234);
        assert_eq!(iotlb::command(iotlb::PAGE, true, 0xabcd), 0xb003_abcd_0000_0000);
        assert_eq!(iotlb::command(iotlb::GLOBAL, false, 1), 0x9000_0001_0000_0000);
    }

    #[test]
    fn command_registers_decode_each_field_in_place() {
        use ccmd_more::{caig, cirg, fm, sid_of, CAIG_MASK};
        let v = 0xdead_bee0_0000_0000 | (2 << 32) | (0xabcd << 16) | 0x1234;
        assert_eq!((cirg(v), fm(v), sid_of(v), ccmd_more::did_of(v)), (2, 2, 0xabcd, 0x1234));
        assert_eq!((cirg(3 << 61), fm(u64::MAX), ccmd_more::did_of(u64::MAX)), (3, 3, 0xffff));
        assert_eq!(
            (caig(1), caig(6), CAIG_MASK),
            (0x0800_0000_0000_0000, 0x1000_0000_0000_0000, 0x1800_0000_0000_0000)
        );
        use iotlb_more::{iaig, iirg, IAIG_MASK};
        assert_eq!((iirg(u64::MAX), iirg(2 << 60), iotlb_more::did_of(0xabcd_0000_0000)), (3, 2, 0xabcd));
        assert_eq!(
            (iaig(1), iaig(7), IAIG_MASK),
            (0x0200_0000_0000_0000, 0x0600_0000_0000_0000, 0x0600_0000_0000_0000)
        );
    }
}
