//! The VT-d bit layouts, shared by the driver and the model. Each item names its section of the
//! Intel Virtualization Technology for Directed I/O Architecture Specification.

pub mod fault;
pub mod qi;
pub mod regs;
pub mod tables;
mod word;

pub use word::Word;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_72_capabilities_decode_as_documented() {
        // QEMU 7.2's intel-iommu (legacy): CAP 0x00d2008c222f0606, ECAP 0xf42.
        let cap = 0x00d2_008c_222f_0606u64;
        let ecap = 0xf42u64;
        assert_eq!(regs::cap::nd(cap), 6);
        assert_eq!(regs::cap::sagaw(cap), 0b00110, "39- and 48-bit");
        assert_eq!(regs::cap::mgaw(cap), 48);
        assert_eq!(regs::cap::fro(cap), 0x220);
        assert_eq!(regs::cap::nfr(cap), 1);
        assert_eq!(regs::cap::sllps(cap), 0b0011, "2 MiB and 1 GiB");
        assert!(cap & regs::cap::PSI != 0);
        assert_eq!(regs::ecap::iro(ecap), 0xf0, "IOTLB registers at 0xf0, IOTLB_REG at 0xf8");
        assert!(ecap & regs::ecap::QI != 0);
        assert!(ecap & regs::ecap::PT != 0);
        assert!(ecap & regs::ecap::SMTS == 0);
    }

    #[test]
    fn descriptors_match_hand_encoded_values() {
        // IOTLB page-selective, DID 5, 2 MiB at 0x4020_0000 (AM 9).
        assert_eq!(qi::iotlb::q0(qi::iotlb::PAGE, 5), 0x0005_0032);
        assert_eq!(qi::iotlb::q1(0x4020_0000, 9), 0x4020_0009);
        // Context-cache device-selective, DID 1, SID 00:04.0 = 0x20.
        assert_eq!(qi::cc::q0(qi::cc::DEVICE, 1, 0x20), 0x0000_0020_0001_0031);
        // Wait with status write of 0xcafe.
        assert_eq!(qi::wait::q0(qi::wait::SW, 0xcafe), 0x0000_cafe_0000_0025);
        assert_eq!(qi::type_of(qi::pc::q0(qi::pc::PASID, 2, 7)), 0x7);
        // A fault record for SID 0x20, reason 6 (no read), PASID 3.
        let hi = fault::frcd::hi(0x20, 6, Some(3), true);
        assert_eq!(fault::frcd::sid(hi), 0x20);
        assert_eq!(fault::frcd::reason(hi), 6);
        assert_eq!(fault::frcd::pasid(hi), 3);
        assert!(hi & fault::frcd::PP != 0 && hi & fault::frcd::F != 0 && hi & fault::frcd::T_READ != 0);
    }

    #[test]
    fn table_indices() {
        use tables::*;
        assert_eq!(sl::index(0x4020_3000, 1), 3);
        assert_eq!(sl::index(0x4020_3000, 2), 1);
        assert_eq!(sl::index(0x4020_3000, 3), 1);
        assert_eq!(sl::span(3), 1 << 30);
        assert_eq!(context::offset(0x20), 0x200);
        assert_eq!(sm_context::offset(0x85), 5 * 32);
        assert_eq!(pasid_dir::offset(0x12345), (0x12345 >> 6) * 8);
        assert_eq!(pasid_entry::offset(0x12345), 5 * 64);
        assert_eq!(sm_context::pdir_entries(sm_context::pdts(14)), 1 << 14);
        assert_eq!(root::lo(0x1234_5000), 0x1234_5001);
    }

    #[test]
    fn entry_bits_match_the_spec_tables() {
        use tables::*;
        // 9.3: a legacy context entry for DID 0x2a, 4-level (AW=2), table at 0x1234_5000.
        let lo = 0x1234_5000 | context::TT_SL | context::P;
        let hi = context::did(0x2a) | 2;
        assert_eq!((lo, hi), (0x1234_5001, 0x2a02));
        assert_eq!(context::did_of(hi), 0x2a);
        // 9.4: scalable context entry with PASIDE + PRE, a 2^14-entry PASID directory.
        let q0 = 0x5000 | sm_context::pdts(14) | sm_context::PRE | sm_context::PASIDE | sm_context::P;
        assert_eq!(q0, 0x5000 | (7 << 9) | 0b11001);
        // 9.6: PASID entry, second-stage only, 4-level, SSADE, table at 0x9000.
        let pe0 = 0x9000 | pasid_entry::SSADE | pasid_entry::PGTT_SS | pasid_entry::aw(2) | pasid_entry::P;
        assert_eq!(pe0, 0x9000 | (1 << 9) | (2 << 6) | (2 << 2) | 1);
        // 9.8: a 2 MiB read-write leaf with snoop at 0x4020_0000, accessed and dirty.
        let leaf = 0x4020_0000 | sl::SNP | sl::D | sl::A | sl::PS | sl::W | sl::R;
        assert_eq!(leaf, 0x4020_0000 | 0xb83);
        assert!(sl::present(leaf) && !sl::present(sl::PS));
        // 7.5.1.1: a page request from 00:04.0, PASID 5, write, group 3, last.
        let q0 = fault::page_request::q0(0x20, Some(5));
        let q1 = fault::page_request::q1(0x7000, 3, false, true, true);
        assert_eq!((q0, q1), ((5 << 32) | (0x20 << 16) | (1 << 8) | 1, 0x7000 | (3 << 3) | 0b110));
        // 6.5.2.10: the response to it.
        assert_eq!(qi::page_response::q0(0, 0x20, Some(5)), (5 << 32) | (0x20 << 16) | (1 << 4) | 9);
    }
}
