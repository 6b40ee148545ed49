//! Xen's hypercall ABI as the adapter uses it: hypercall numbers, the interface-version table,
//! and `#[repr(C)]` mirrors of the public-header structures (x86-64 layout of Xen 4.17).
//!
//! Every structure names the header and the C struct it mirrors; the layout tests in each
//! module compare `size_of`/`offset_of!` with the values a C compiler gives for those headers.
//!
//! Versioned layouts live here only: [`RELEASES`] maps a Xen release to the interface versions
//! it speaks and to the [`Layout`] whose structures this module defines. A later release is added
//! by one row in that table (and, if its buffers differ, a new [`Layout`] variant with its own
//! structures).

pub mod domctl;
pub mod errno;
pub mod sysctl;
pub mod version;

use std::fmt;

// xen/include/public/xen.h: hypercall numbers (x86).
/// `__HYPERVISOR_xen_version`.
pub const HYPERVISOR_XEN_VERSION: u64 = 17;
/// `__HYPERVISOR_sysctl`.
pub const HYPERVISOR_SYSCTL: u64 = 35;
/// `__HYPERVISOR_domctl`.
pub const HYPERVISOR_DOMCTL: u64 = 36;

// xen/include/public/xen.h: reserved domain ids.
/// First domain id that no ordinary domain can have.
pub const DOMID_FIRST_RESERVED: u16 = 0x7ff0;
/// The calling domain itself.
pub const DOMID_SELF: u16 = 0x7ff0;
/// The I/O domain: owner of quarantined devices and of I/O memory nobody else owns.
pub const DOMID_IO: u16 = 0x7ff1;
/// Xen itself.
pub const DOMID_XEN: u16 = 0x7ff2;
/// No domain; `XEN_DOMCTL_test_assign_device` with it asks "assigned to any domU?".
pub const DOMID_INVALID: u16 = 0x7ff4;

/// The `XEN_DOMCTL_INTERFACE_VERSION` and `XEN_SYSCTL_INTERFACE_VERSION` a buffer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InterfaceVersions {
    /// Value of `struct xen_domctl.interface_version`.
    pub domctl: u32,
    /// Value of `struct xen_sysctl.interface_version`.
    pub sysctl: u32,
}

impl fmt::Display for InterfaceVersions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "domctl {:#x}, sysctl {:#x}", self.domctl, self.sysctl)
    }
}

/// Which set of `#[repr(C)]` structures a release's buffers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// The structures of this module: Xen 4.17's public headers, x86-64.
    Xen417,
}

/// One Xen release this adapter has layouts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Release {
    /// `XENVER_version` major.
    pub major: u32,
    /// `XENVER_version` minor.
    pub minor: u32,
    /// The interface versions its domctl/sysctl buffers must carry.
    pub interface: InterfaceVersions,
    /// The structures its buffers use.
    pub layout: Layout,
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Xen {}.{} ({})", self.major, self.minor, self.interface)
    }
}

/// Every release the adapter knows, by `XENVER_version`. The numbers are those of the
/// release's `xen/include/public/domctl.h` and `sysctl.h`.
pub const RELEASES: &[Release] = &[Release {
    major: 4,
    minor: 17,
    interface: InterfaceVersions { domctl: 0x15, sysctl: 0x15 },
    layout: Layout::Xen417,
}];

/// The release entry for `major.minor`, if the adapter has layouts for it.
pub fn release(major: u32, minor: u32) -> Option<&'static Release> {
    RELEASES.iter().find(|r| r.major == major && r.minor == minor)
}

/// Plain data that can be copied to and from a hypercall buffer byte for byte.
///
/// # Safety
/// An implementor must be `#[repr(C)]` (or a primitive integer, or an array of `Pod`), hold no
/// padding bytes (every byte is part of a field; padding is spelled out as fields), hold no
/// pointers or references, and be valid for every bit pattern.
pub unsafe trait Pod: Copy + Send + Sync + 'static {}

// SAFETY: primitive integers have no padding and every bit pattern is a valid value.
unsafe impl Pod for u8 {}
// SAFETY: as above.
unsafe impl Pod for u16 {}
// SAFETY: as above.
unsafe impl Pod for u32 {}
// SAFETY: as above.
unsafe impl Pod for u64 {}
// SAFETY: as above.
unsafe impl Pod for i32 {}
// SAFETY: as above.
unsafe impl Pod for i64 {}
// SAFETY: `()` has size 0: no bytes, so no padding and no invalid values (an empty payload,
// as for XEN_DOMCTL_destroydomain).
unsafe impl Pod for () {}
// SAFETY: an array of padding-free, any-bit-pattern elements has neither padding nor invalid
// values (array elements are laid out contiguously at multiples of their size).
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// The bytes of `value`.
pub fn bytes_of<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: `T: Pod` has no padding bytes, so all `size_of::<T>()` bytes behind the reference
    // are initialised; the slice borrows `value` and so cannot outlive it.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// A `T` read from the first `size_of::<T>()` bytes of `bytes`, or `None` if there are fewer.
pub fn from_bytes<T: Pod>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the source holds at least `size_of::<T>()` initialised bytes (checked above),
    // `read_unaligned` needs no alignment, and every bit pattern is a valid `T` (`T: Pod`).
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// A `T` whose bytes are all zero.
pub fn zeroed<T: Pod>() -> T {
    // SAFETY: every bit pattern, the all-zero one included, is a valid `T` (`T: Pod`).
    unsafe { std::mem::zeroed() }
}

/// The 128-byte `u` union of `struct xen_domctl` and of `struct xen_sysctl` (its `pad[128]` arm
/// sets the size; the 64-bit members set 8-byte alignment). A command's payload struct is copied
/// over its start with [`Payload::set`] and read back with [`Payload::get`].
#[repr(C, align(8))]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Payload(pub [u8; PAYLOAD_LEN]);

/// Size of the `u` union of `struct xen_domctl` and `struct xen_sysctl` (`uint8_t pad[128]`).
pub const PAYLOAD_LEN: usize = 128;

// SAFETY: `repr(C, align(8))` around `[u8; 128]`: size 128 (a multiple of 8), so no padding, and
// any byte values are valid.
unsafe impl Pod for Payload {}

impl Payload {
    /// All zero.
    pub const fn zero() -> Payload {
        Payload([0; PAYLOAD_LEN])
    }

    /// A payload holding `value` at its start, zero after it.
    pub fn of<T: Pod>(value: &T) -> Payload {
        let mut p = Payload::zero();
        p.set(value);
        p
    }

    /// Copies `value` over the start of the payload (the union member for the command).
    pub fn set<T: Pod>(&mut self, value: &T) {
        const { assert!(size_of::<T>() <= PAYLOAD_LEN && align_of::<T>() <= 8) };
        self.0[..size_of::<T>()].copy_from_slice(bytes_of(value));
    }

    /// Reads the union member `T` from the start of the payload.
    pub fn get<T: Pod>(&self) -> T {
        const { assert!(size_of::<T>() <= PAYLOAD_LEN && align_of::<T>() <= 8) };
        from_bytes(&self.0).expect("payload is larger than T (checked at compile time)")
    }
}

impl Default for Payload {
    fn default() -> Self {
        Payload::zero()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let used = self.0.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        write!(f, "Payload({:02x?}", &self.0[..used])?;
        if used < PAYLOAD_LEN {
            write!(f, " + {} zero bytes", PAYLOAD_LEN - used)?;
        }
        write!(f, ")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypercall_numbers_match_xen_h() {
        // Values printed from xen/include/public/xen.h of 4.17.
        assert_eq!(HYPERVISOR_XEN_VERSION, 0x11);
        assert_eq!(HYPERVISOR_SYSCTL, 0x23);
        assert_eq!(HYPERVISOR_DOMCTL, 0x24);
        assert_eq!(DOMID_FIRST_RESERVED, 0x7ff0);
        assert_eq!(DOMID_SELF, 0x7ff0);
        assert_eq!(DOMID_IO, 0x7ff1);
        assert_eq!(DOMID_XEN, 0x7ff2);
        assert_eq!(DOMID_INVALID, 0x7ff4);
    }

    #[test]
    fn release_table_has_417_with_header_versions() {
        let r = release(4, 17).expect("4.17 is known");
        // XEN_DOMCTL_INTERFACE_VERSION and XEN_SYSCTL_INTERFACE_VERSION of 4.17's headers.
        assert_eq!(r.interface.domctl, 0x15);
        assert_eq!(r.interface.sysctl, 0x15);
        assert_eq!(r.layout, Layout::Xen417);
        assert!(release(4, 16).is_none());
        assert!(release(4, 18).is_none());
        assert_eq!(r.to_string(), "Xen 4.17 (domctl 0x15, sysctl 0x15)");
    }

    #[test]
    fn pod_round_trip() {
        let v: [u32; 3] = [1, 0xdead_beef, 3];
        let b = bytes_of(&v);
        assert_eq!(b.len(), 12);
        assert_eq!(from_bytes::<[u32; 3]>(b), Some(v));
        assert_eq!(from_bytes::<u64>(&b[..7]), None);
        assert_eq!(zeroed::<u64>(), 0);
    }

    #[test]
    fn payload_is_the_128_byte_union() {
        assert_eq!(size_of::<Payload>(), 128);
        assert_eq!(align_of::<Payload>(), 8);
        let p = Payload::of(&0x1122_3344_5566_7788u64);
        assert_eq!(p.get::<u64>(), 0x1122_3344_5566_7788);
        assert_eq!(p.get::<[u32; 2]>(), [0x5566_7788, 0x1122_3344]);
        assert!(p.0[8..].iter().all(|&b| b == 0));
        assert!(format!("{p:?}").contains("+ 120 zero bytes"));
    }
}
