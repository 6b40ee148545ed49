//! `__HYPERVISOR_xen_version` sub-operations: xen/include/public/version.h.
//!
//! The hypercall takes `(cmd, arg)`; `XENVER_version` needs no buffer (`arg` = NULL) and returns
//! `major << 16 | minor`; `XENVER_extraversion` fills a 16-byte string at `arg`.

/// `XENVER_version`.
pub const XENVER_VERSION: u64 = 0;
/// `XENVER_extraversion`.
pub const XENVER_EXTRAVERSION: u64 = 1;

/// `XEN_EXTRAVERSION_LEN`: size of `xen_extraversion_t`.
pub const EXTRAVERSION_LEN: usize = 16;

// xen/include/public/version.h: xen_extraversion_t
/// `xen_extraversion_t`: a NUL-terminated string such as `".7"` or `"-rc"`.
pub type ExtraVersion = [u8; EXTRAVERSION_LEN];

/// `(major, minor)` from the `XENVER_version` return value.
pub fn split_version(rc: u64) -> (u32, u32) {
    (((rc >> 16) & 0xffff) as u32, (rc & 0xffff) as u32)
}

/// The text of an extraversion buffer, up to its first NUL.
pub fn extraversion_text(raw: &ExtraVersion) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_version_h() {
        assert_eq!(XENVER_VERSION, 0);
        assert_eq!(XENVER_EXTRAVERSION, 1);
        assert_eq!(EXTRAVERSION_LEN, 16);
        assert_eq!(size_of::<ExtraVersion>(), 16);
    }

    #[test]
    fn decoding() {
        assert_eq!(split_version(0x0004_0011), (4, 17));
        let mut raw = [0u8; 16];
        raw[..2].copy_from_slice(b".7");
        assert_eq!(extraversion_text(&raw), ".7");
        assert_eq!(extraversion_text(&[b'x'; 16]), "x".repeat(16));
    }
}
