//! How hypercalls reach Xen: the [`Transport`] trait, the buffers Xen reads and writes, the real
//! transport over `/dev/xen/privcmd` ([`privcmd::Privcmd`]) and a recorded-reply test double
//! ([`recorded::Recorded`]).

pub mod privcmd;
pub mod recorded;

use std::fmt;
use std::sync::Arc;

use crate::abi::{bytes_of, from_bytes, Pod};
use crate::error::XenError;

/// A way to issue Xen hypercalls.
pub trait Transport: Send + Sync {
    /// Issues hypercall `op` with raw arguments. Returns Xen's return value (>= 0), or the
    /// positive errno of a negative return as `Err`.
    fn hypercall(&self, op: u64, args: [u64; 5]) -> Result<i64, i32>;

    /// A zeroed buffer of at least `len` bytes that Xen may read and write during hypercalls;
    /// freed when the last [`HypercallBuffer`] handle to it is dropped.
    fn buffer(&self, len: usize) -> Result<HypercallBuffer, XenError>;
}

/// Memory behind a [`HypercallBuffer`]. Implementations own the memory and give bounded,
/// copying access only; the address they report must stay fixed for their whole life.
pub trait BufferMemory: Send + Sync + fmt::Debug {
    /// The address Xen is given for the first byte.
    fn addr(&self) -> u64;
    /// Usable length in bytes.
    fn len(&self) -> usize;
    /// Whether there are no usable bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copies `out.len()` bytes starting at `offset` into `out`. The caller has checked bounds.
    fn read_at(&self, offset: usize, out: &mut [u8]);
    /// Copies `data` to `offset`. The caller has checked bounds.
    fn write_at(&self, offset: usize, data: &[u8]);
}

/// A buffer for hypercall arguments, with bounds-checked typed access.
#[derive(Clone, Debug)]
pub struct HypercallBuffer {
    mem: Arc<dyn BufferMemory>,
}

impl HypercallBuffer {
    /// Wraps transport memory.
    pub fn new(mem: Arc<dyn BufferMemory>) -> HypercallBuffer {
        HypercallBuffer { mem }
    }

    /// Usable length in bytes.
    pub fn len(&self) -> usize {
        self.mem.len()
    }

    /// Whether the buffer has no usable bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The address to give Xen (a guest handle or a hypercall argument).
    pub fn addr(&self) -> u64 {
        self.mem.addr()
    }

    /// The address of byte `offset` (which must be inside the buffer).
    pub fn addr_at(&self, offset: usize) -> Result<u64, XenError> {
        self.check(offset, 0)?;
        Ok(self.addr() + offset as u64)
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), XenError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(XenError::Buffer(format!(
                "access of {len} bytes at offset {offset} outside a {}-byte buffer",
                self.len()
            ))),
        }
    }

    /// Copies `value` to `offset`.
    pub fn write<T: Pod>(&mut self, offset: usize, value: &T) -> Result<(), XenError> {
        self.write_bytes(offset, bytes_of(value))
    }

    /// Reads a `T` from `offset`.
    pub fn read<T: Pod>(&self, offset: usize) -> Result<T, XenError> {
        let mut tmp = vec![0u8; size_of::<T>()];
        self.read_bytes(offset, &mut tmp)?;
        Ok(from_bytes(&tmp).expect("tmp holds exactly size_of::<T>() bytes"))
    }

    /// Copies `data` to `offset`.
    pub fn write_bytes(&mut self, offset: usize, data: &[u8]) -> Result<(), XenError> {
        self.check(offset, data.len())?;
        self.mem.write_at(offset, data);
        Ok(())
    }

    /// Copies `out.len()` bytes from `offset`.
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<(), XenError> {
        self.check(offset, out.len())?;
        self.mem.read_at(offset, out);
        Ok(())
    }

    /// Zeroes the whole buffer.
    pub fn zero(&mut self) {
        let zeros = vec![0u8; self.len()];
        self.mem.write_at(0, &zeros);
    }
}

#[cfg(test)]
mod tests {
    use super::recorded::Recorded;
    use super::*;

    #[test]
    fn typed_access_is_bounds_checked() {
        let t = Recorded::new();
        let mut b = t.buffer(16).unwrap();
        assert_eq!(b.len(), 16);
        assert!(!b.is_empty());
        b.write(8, &0xaabb_ccdd_u32).unwrap();
        assert_eq!(b.read::<u32>(8).unwrap(), 0xaabb_ccdd);
        assert_eq!(b.read::<u64>(0).unwrap(), 0);
        assert!(matches!(b.write(12, &0u64), Err(XenError::Buffer(_))));
        assert!(b.read::<u64>(usize::MAX).is_err());
        assert_eq!(b.addr_at(16).unwrap(), b.addr() + 16);
        assert!(b.addr_at(17).is_err());
        b.zero();
        assert_eq!(b.read::<u32>(8).unwrap(), 0);
    }
}
