//! Typed errors of the KVM adapter.

use ioasis::IovaRange;

/// A failure of `/dev/kvm` itself.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` is missing, not accessible, or speaks an API this adapter does not know.
    #[error("KVM is unavailable: {0}")]
    Unavailable(String),
    /// A KVM ioctl failed.
    #[error("KVM ioctl {op} failed: errno {errno} ({})", std::io::Error::from_raw_os_error(*errno))]
    Ioctl {
        /// Which operation (e.g. `KVM_SET_USER_MEMORY_REGION`).
        op: &'static str,
        /// The OS error number.
        errno: i32,
    },
}

impl KvmError {
    /// Wraps a kvm-ioctls error of operation `op`.
    pub(crate) fn ioctl(op: &'static str, e: kvm_ioctls::Error) -> Self {
        KvmError::Ioctl { op, errno: e.errno() }
    }
}

/// Why a memory-slot operation was refused. A refused operation changes nothing: neither the
/// KVM slot table nor the IOAS.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// KVM refused the operation.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The IOAS refused the mapping or unmapping (e.g. a reserved region of an attached device,
    /// an aperture, or a backend failure).
    #[error("IOAS refused: {0}")]
    Ioas(#[from] ioasis::Error),
    /// A slot with this id already exists.
    #[error("memory slot {0} already exists")]
    SlotInUse(u32),
    /// No slot with this id.
    #[error("no memory slot {0}")]
    NoSuchSlot(u32),
    /// Zero length, not 4 KiB aligned, or wrapping around the address space.
    #[error("bad slot range: gpa {gpa:#x}, pa {pa:#x}, len {len:#x} (need non-zero, 4 KiB aligned, no wrap)")]
    BadRange {
        /// Guest-physical start.
        gpa: u64,
        /// Machine-physical start.
        pa: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The physical range is not inside the machine's RAM.
    #[error("physical range {pa:#x}+{len:#x} is not machine RAM")]
    NotRam {
        /// Machine-physical start.
        pa: u64,
        /// Length in bytes.
        len: u64,
    },
    /// The guest-physical range overlaps another slot.
    #[error("guest range {range} overlaps memory slot {other}")]
    Overlap {
        /// The refused guest-physical range.
        range: IovaRange,
        /// The slot already there.
        other: u32,
    },
    /// The guest-physical range overlaps a region the caller reserved.
    #[error("guest range {range} overlaps reserved region {reserved} ({why})")]
    Reserved {
        /// The refused guest-physical range.
        range: IovaRange,
        /// The reserved region.
        reserved: IovaRange,
        /// Why it is reserved.
        why: String,
    },
}
