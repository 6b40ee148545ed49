//! Translation structures in memory (VT-d spec chapter 9, "Translation Structure Formats").

/// Bits 63:12 of an entry: a 4 KiB-aligned pointer. Host addresses are below 2^52.
pub const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// 9.1 Root entry (legacy mode, 128-bit; 256 entries in the 4 KiB root table, by bus).
pub mod root {
    use crate::layout::Word;

    /// Lower qword bit 0: present.
    pub const P: u64 = 1;
    /// Lower qword: context-table pointer.
    pub const fn lo(context_table: u64) -> u64 {
        Word::ZERO.flag(0, true).with(51, 12, context_table >> 12).get()
    }
    /// Entry offset for a bus.
    pub const fn offset(bus: u8) -> u64 {
        bus as u64 * 16
    }
}

/// 9.2 Scalable-mode root entry (128-bit): the lower context table serves devfn 0-127, the
/// upper one devfn 128-255.
pub mod sm_root {
    use crate::layout::Word;

    /// LP (lower qword bit 0) / UP (upper qword bit 0): present.
    pub const P: u64 = 1;
    /// A lower or upper qword: present, context-table pointer bits 63:12 (LCTP / UCTP).
    pub const fn half(context_table: u64) -> u64 {
        Word::ZERO.flag(0, true).with(51, 12, context_table >> 12).get()
    }
}

/// 9.3 Context entry (legacy mode, 128-bit; 256 per table, by devfn).
pub mod context {
    use crate::layout::Word;

    /// Lower qword bit 0: present.
    pub const P: u64 = 1;
    /// Lower qword bit 1: fault processing disable.
    pub const FPD: u64 = 1 << 1;
    /// Lower qword TT bits 3:2 = 00: untranslated requests through the second-level table.
    pub const TT_SL: u64 = 0;
    /// TT = 01: also translated requests (device-TLB).
    pub const TT_SL_DT: u64 = 1 << 2;
    /// TT = 10: pass-through.
    pub const TT_PT: u64 = 2 << 2;
    /// Mask of TT.
    pub const TT_MASK: u64 = 3 << 2;
    /// Upper qword AW bits 2:0: 1 = 39-bit 3-level, 2 = 48-bit 4-level, 3 = 57-bit 5-level.
    pub const AW_MASK: u64 = 7;
    /// Upper qword DID bits 23:8.
    pub const fn did(did: u16) -> u64 {
        (did as u64) << 8
    }
    /// A present lower qword: TT bits 3:2 (one of the `TT_*` values), second-level table
    /// pointer bits 63:12 (zero for pass-through).
    pub const fn lo(table: u64, tt: u64) -> u64 {
        Word::ZERO.flag(0, true).with(3, 2, tt >> 2).with(51, 12, table >> 12).get()
    }
    /// An upper qword: AW bits 2:0, DID bits 23:8.
    pub const fn hi(aw: u64, did: u16) -> u64 {
        Word::ZERO.with(2, 0, aw).with(23, 8, did as u64).get()
    }
    /// The DID field of an upper qword.
    pub const fn did_of(hi: u64) -> u16 {
        (hi >> 8) as u16
    }
    /// Entry offset for a devfn (legacy: 16 bytes).
    pub const fn offset(devfn: u8) -> u64 {
        devfn as u64 * 16
    }
}

/// 9.4 Scalable-mode context entry (256-bit; 128 per table, by devfn & 0x7f).
pub mod sm_context {
    use crate::layout::Word;

    /// Qword 0 bit 0: present.
    pub const P: u64 = 1;
    /// Qword 0 bit 1: fault processing disable.
    pub const FPD: u64 = 1 << 1;
    /// Qword 0 bit 2: device-TLB enable.
    pub const DTE: u64 = 1 << 2;
    /// Qword 0 bit 3: PASID enable (requests with PASID allowed).
    pub const PASIDE: u64 = 1 << 3;
    /// Qword 0 bit 4: page request enable.
    pub const PRE: u64 = 1 << 4;
    /// Qword 0 PDTS bits 11:9: the PASID directory has 2^(PDTS + 7) entries.
    pub const fn pdts(entries_log2: u32) -> u64 {
        ((entries_log2 as u64).saturating_sub(7) & 7) << 9
    }
    /// A present qword 0: DTE, PASIDE, PRE, PDTS for a directory of 2^`entries_log2` entries,
    /// PASID-directory pointer bits 63:12.
    pub const fn q0(pasid_dir: u64, entries_log2: u32, paside: bool, pre: bool, dte: bool) -> u64 {
        Word::ZERO
            .flag(0, true)
            .flag(2, dte)
            .flag(3, paside)
            .flag(4, pre)
            .with(11, 9, pdts(entries_log2) >> 9)
            .with(51, 12, pasid_dir >> 12)
            .get()
    }
    /// PASID-directory entries given by a qword 0.
    pub const fn pdir_entries(q0: u64) -> u64 {
        1 << (((q0 >> 9) & 7) + 7)
    }
    /// Qword 1 RID_PASID bits 19:0: the PASID used for requests without one.
    pub const RID_PASID_MASK: u64 = 0xf_ffff;
    /// Entry offset for a devfn (32 bytes, lower or upper table).
    pub const fn offset(devfn: u8) -> u64 {
        (devfn as u64 & 0x7f) * 32
    }
}

/// 9.5 Scalable-mode PASID directory entry (64-bit), indexed by PASID bits 19:6.
pub mod pasid_dir {
    use crate::layout::Word;

    /// Bit 0: present.
    pub const P: u64 = 1;
    /// Bit 1: fault processing disable.
    pub const FPD: u64 = 1 << 1;
    /// A present entry: PASID-table pointer bits 63:12.
    pub const fn entry(pasid_table: u64) -> u64 {
        Word::ZERO.flag(0, true).with(51, 12, pasid_table >> 12).get()
    }
    /// Entry offset for a PASID.
    pub const fn offset(pasid: u32) -> u64 {
        ((pasid as u64) >> 6) * 8
    }
}

/// 9.6 Scalable-mode PASID table entry (512-bit; 64 per 4 KiB table, by PASID bits 5:0).
pub mod pasid_entry {
    use crate::layout::Word;

    /// Size in bytes.
    pub const SIZE: u64 = 64;
    /// Qword 0 bit 0: present.
    pub const P: u64 = 1;
    /// Qword 0 bit 1: fault processing disable.
    pub const FPD: u64 = 1 << 1;
    /// Qword 0 AW bits 4:2 (as in the context entry).
    pub const fn aw(aw: u64) -> u64 {
        (aw & 7) << 2
    }
    /// Qword 0 PGTT bits 8:6 = 001: first-stage only.
    pub const PGTT_FS: u64 = 1 << 6;
    /// PGTT = 010: second-stage only.
    pub const PGTT_SS: u64 = 2 << 6;
    /// PGTT = 011: nested.
    pub const PGTT_NESTED: u64 = 3 << 6;
    /// PGTT = 100: pass-through.
    pub const PGTT_PT: u64 = 4 << 6;
    /// Mask of PGTT.
    pub const PGTT_MASK: u64 = 7 << 6;
    /// Qword 0 bit 9: second-stage accessed/dirty enable (SSADE; SLADE before 3.2).
    pub const SSADE: u64 = 1 << 9;
    /// A present qword 0: AW, PGTT (one of the `PGTT_*` values), SSADE, second-stage table
    /// pointer bits 63:12 (zero for first-stage only and pass-through).
    pub const fn q0(ss_table: u64, aw: u64, pgtt: u64, ssade: bool) -> u64 {
        Word::ZERO.flag(0, true).with(4, 2, aw).with(8, 6, pgtt >> 6).flag(9, ssade).with(51, 12, ss_table >> 12).get()
    }
    /// Qword 2: FSPM (one of the `FSPM_*` values), first-stage table pointer bits 63:12.
    pub const fn q2(fs_table: u64, fspm: u64) -> u64 {
        Word::ZERO.with(3, 2, fspm >> 2).with(51, 12, fs_table >> 12).get()
    }
    /// Qword 1 DID bits 15:0.
    pub const DID_MASK: u64 = 0xffff;
    /// Qword 1 bit 24: page snoop (PGSNP): force snoop on every access.
    pub const PGSNP: u64 = 1 << 24;
    /// Qword 2 FSPM bits 3:2 = 00: 4-level first-stage paging.
    pub const FSPM_4LEVEL: u64 = 0;
    /// FSPM = 01: 5-level.
    pub const FSPM_5LEVEL: u64 = 1 << 2;
    /// Entry offset for a PASID in its table.
    pub const fn offset(pasid: u32) -> u64 {
        (pasid as u64 & 0x3f) * SIZE
    }
}

/// 9.8 Second-stage (second-level) paging entry.
pub mod sl {
    use crate::layout::Word;

    /// Bit 0: read.
    pub const R: u64 = 1;
    /// Bit 1: write.
    pub const W: u64 = 1 << 1;
    /// Bit 2: execute (requests with execute permission).
    pub const X: u64 = 1 << 2;
    /// Bit 7: page size (a 2 MiB leaf at level 2, a 1 GiB leaf at level 3).
    pub const PS: u64 = 1 << 7;
    /// Bit 8: accessed (when SSADE).
    pub const A: u64 = 1 << 8;
    /// Bit 9: dirty (when SSADE, leaves only).
    pub const D: u64 = 1 << 9;
    /// Bit 11: snoop behaviour (with ECAP.SC).
    pub const SNP: u64 = 1 << 11;
    /// Index of `iova` at `level` (1 = 4 KiB leaves, 2 = 2 MiB, 3 = 1 GiB, 4, 5).
    pub const fn index(iova: u64, level: u32) -> u64 {
        (iova >> (12 + 9 * (level - 1))) & 0x1ff
    }
    /// Bytes covered by one entry at `level`.
    pub const fn span(level: u32) -> u64 {
        1 << (12 + 9 * (level - 1))
    }
    /// A non-leaf entry: R and W (the leaves below decide), next table bits 51:12.
    pub const fn table(next: u64) -> u64 {
        Word::ZERO.flag(0, true).flag(1, true).with(51, 12, next >> 12).get()
    }
    /// The attribute bits of a leaf: R, W, SNP.
    pub const fn attrs(read: bool, write: bool, snoop: bool) -> u64 {
        Word::ZERO.flag(0, read).flag(1, write).flag(11, snoop).get()
    }
    /// A leaf: attribute bits (any but PS and the address), PS for a large page, address bits
    /// 51:12.
    pub const fn leaf(attrs: u64, pa: u64, large: bool) -> u64 {
        Word::of(attrs).flag(7, large).with(51, 12, pa >> 12).get()
    }
    /// The bits of a leaf besides PS and the address.
    pub const fn attrs_of(e: u64) -> u64 {
        e & !super::ADDR & !PS
    }
    /// A present entry has R or W set.
    pub const fn present(e: u64) -> bool {
        e & R != 0 || e & W != 0
    }
}

/// 9.7 First-stage paging entry (the x86-64 format).
pub mod fl {
    /// Bit 0: present.
    pub const P: u64 = 1;
    /// Bit 1: read/write.
    pub const RW: u64 = 1 << 1;
    /// Bit 2: user/supervisor.
    pub const US: u64 = 1 << 2;
    /// Bit 5: accessed.
    pub const A: u64 = 1 << 5;
    /// Bit 6: dirty.
    pub const D: u64 = 1 << 6;
    /// Bit 7: page size.
    pub const PS: u64 = 1 << 7;
    /// Bit 63: execute disable.
    pub const XD: u64 = 1 << 63;
}

/// Address widths (9.3 AW, 11.4.2 SAGAW): (AW value, levels, width in bits).
pub const AGAWS: [(u64, u32, u32); 3] = [(1, 3, 39), (2, 4, 48), (3, 5, 57)];

/// Every entry field against the bit positions of chapter 9's tables, as literals: a bit moved,
/// a field widened or an index mis-shifted changes a value here even where the model, which
/// shares these constants, would agree with the driver.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_context_entries_sit_where_9_1_to_9_4_put_them() {
        assert_eq!(ADDR, 0x000f_ffff_ffff_f000);
        assert_eq!((root::P, sm_root::P), (1, 1));
        assert_eq!(root::lo(0xfff0_0000_1234_5fff), 0x0000_0000_1234_5001);
        assert_eq!((root::offset(0), root::offset(1), root::offset(255)), (0, 16, 0xff0));
        use context::*;
        assert_eq!((P, FPD, TT_SL, TT_SL_DT, TT_PT, TT_MASK, AW_MASK), (1, 2, 0, 4, 8, 0xc, 7));
        assert_eq!((did(0xffff), did(0x1234)), (0xff_ff00, 0x12_3400));
        assert_eq!(did_of(0xdead_beef_ff12_3400), 0x1234);
        assert_eq!((offset(0), offset(0x80), offset(255)), (0, 0x800, 0xff0));
    }

    #[test]
    fn scalable_mode_entries_sit_where_9_4_to_9_6_put_them() {
        assert_eq!(
            (
                sm_context::P,
                sm_context::FPD,
                sm_context::DTE,
                sm_context::PASIDE,
                sm_context::PRE,
                sm_context::RID_PASID_MASK
            ),
            (1, 2, 4, 8, 0x10, 0xf_ffff)
        );
        assert_eq!(
            (sm_context::pdts(7), sm_context::pdts(8), sm_context::pdts(14), sm_context::pdts(20)),
            (0, 0x200, 0xe00, 0xa00)
        );
        assert_eq!(sm_context::pdts(3), 0, "fewer than 2^7 entries still encodes the smallest directory");
        assert_eq!(
            (
                sm_context::pdir_entries(0),
                sm_context::pdir_entries(0x200),
                sm_context::pdir_entries(0xe00),
                sm_context::pdir_entries(u64::MAX)
            ),
            (128, 256, 1 << 14, 1 << 14)
        );
        assert_eq!(
            (sm_context::offset(0), sm_context::offset(0x7f), sm_context::offset(0x80), sm_context::offset(0xff)),
            (0, 0xfe0, 0, 0xfe0)
        );
        assert_eq!((pasid_dir::P, pasid_dir::FPD), (1, 2));
        assert_eq!((pasid_dir::offset(0x3f), pasid_dir::offset(0x40), pasid_dir::offset(0xf_ffff)), (0, 8, 0x1_fff8));
        assert_eq!(
            (pasid_entry::SIZE, pasid_entry::P, pasid_entry::FPD, pasid_entry::aw(2), pasid_entry::aw(0xf)),
            (64, 1, 2, 8, 0x1c)
        );
        assert_eq!(
            (
                pasid_entry::PGTT_FS,
                pasid_entry::PGTT_SS,
                pasid_entry::PGTT_NESTED,
                pasid_entry::PGTT_PT,
                pasid_entry::PGTT_MASK
            ),
            (0x40, 0x80, 0xc0, 0x100, 0x1c0)
        );
        assert_eq!(
            (
                pasid_entry::SSADE,
                pasid_entry::DID_MASK,
                pasid_entry::PGSNP,
                pasid_entry::FSPM_4LEVEL,
                pasid_entry::FSPM_5LEVEL
            ),
            (0x200, 0xffff, 0x100_0000, 0, 4)
        );
        assert_eq!((pasid_entry::offset(0), pasid_entry::offset(0x3f), pasid_entry::offset(0x40)), (0, 0xfc0, 0));
    }

    #[test]
    fn entries_are_built_with_each_field_in_place() {
        assert_eq!(sm_root::half(0xfff0_0000_1234_5fff), 0x1234_5001);
        assert_eq!(context::lo(0x1234_5000, context::TT_SL_DT), 0x1234_5005);
        assert_eq!((context::lo(0, context::TT_PT), context::hi(2, 0xabcd)), (0x9, 0xab_cd02));
        assert_eq!(sm_context::q0(0x1234_5000, 14, true, true, true), 0x1234_5e1d);
        assert_eq!(sm_context::q0(0x1000, 8, false, false, true), 0x1205);
        assert_eq!(sm_context::q0(0x1000, 7, true, false, false), 0x1009);
        assert_eq!(sm_context::q0(0x1000, 7, false, true, false), 0x1011);
        assert_eq!(pasid_dir::entry(0x1234_5fff), 0x1234_5001);
        assert_eq!(pasid_entry::q0(0x1234_5000, 2, pasid_entry::PGTT_NESTED, true), 0x1234_52c9);
        assert_eq!(pasid_entry::q0(0, 1, pasid_entry::PGTT_PT, false), 0x105);
        assert_eq!(pasid_entry::q2(0x1234_5fff, pasid_entry::FSPM_5LEVEL), 0x1234_5004);
        assert_eq!(sl::table(0x1234_5000), 0x1234_5003);
        assert_eq!((sl::attrs(true, false, true), sl::attrs(false, true, false)), (0x801, 0x2));
        assert_eq!(sl::leaf(0x803, 0x4000_0000, true), 0x4000_0883);
        assert_eq!(sl::leaf(0x201, 0x1000, false), 0x1201);
        assert_eq!(sl::attrs_of(0xfff0_0000_1234_5a83), 0xfff0_0000_0000_0a03);
    }

    #[test]
    fn paging_entries_sit_where_9_7_and_9_8_put_them() {
        assert_eq!((sl::R, sl::W, sl::X, sl::PS, sl::A, sl::D, sl::SNP), (1, 2, 4, 0x80, 0x100, 0x200, 0x800));
        assert_eq!((sl::index(0x1ff << 12, 1), sl::index(1 << 21, 2), sl::index(u64::MAX, 5)), (0x1ff, 1, 0x1ff));
        assert_eq!((sl::index(0x8000_0000_0000, 4), sl::index(0x4000_0000, 3)), (0x100, 1));
        assert_eq!((sl::span(1), sl::span(2), sl::span(3), sl::span(5)), (0x1000, 0x20_0000, 0x4000_0000, 1 << 48));
        assert!(sl::present(sl::R) && sl::present(sl::W) && !sl::present(sl::X | sl::PS | sl::D));
        assert_eq!((fl::P, fl::RW, fl::US, fl::A, fl::D, fl::PS, fl::XD), (1, 2, 4, 0x20, 0x40, 0x80, 1 << 63));
        assert_eq!(AGAWS, [(1, 3, 39), (2, 4, 48), (3, 5, 57)]);
    }
}
