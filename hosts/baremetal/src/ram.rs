//! Simulated physical memory: one sparse mapping, anonymous or of a memfd.
//!
//! Physical address 0 is the first byte of the mapping, and RAM is contiguous up to
//! [`Ram::len`]. The mapping is `MAP_NORESERVE`, so a 64 GiB machine costs only the pages that
//! are actually touched. By default it is private and anonymous ([`Ram::new`]); a VMM that hands
//! guest memory to another process (a vhost-user backend) builds it over a memfd instead
//! ([`Ram::new_memfd`]): a sparse shared-memory file mapped `MAP_SHARED`, whose descriptor
//! [`Ram::memfd`] lends out.

use std::num::NonZeroUsize;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use ioasis::abi::HostError;
use ioasis::{PhysAddr, PAGE_SIZE};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, mmap_anonymous, munmap, MapFlags, ProtFlags};

/// Largest RAM a [`Ram`] may have: 64 GiB.
pub const MAX_RAM_BYTES: u64 = 64 << 30;

/// Why RAM could not be created.
#[derive(Debug, thiserror::Error)]
pub enum RamError {
    /// The size is zero, not a multiple of 4 KiB, or above [`MAX_RAM_BYTES`].
    #[error("RAM size {0:#x} is not a non-zero multiple of 4 KiB up to 64 GiB")]
    BadSize(u64),
    /// The kernel refused the mapping.
    #[error("cannot map {bytes:#x} bytes of RAM: {source}")]
    Map {
        /// Requested size.
        bytes: u64,
        /// The `mmap` error.
        source: nix::Error,
    },
    /// The memfd behind RAM could not be created or sized.
    #[error("cannot create the {bytes:#x}-byte memfd for RAM ({op}): {source}")]
    Memfd {
        /// Requested size.
        bytes: u64,
        /// The call that failed (`memfd_create`, `ftruncate`).
        op: &'static str,
        /// Its error.
        source: nix::Error,
    },
}

/// Physical memory of a simulated machine, backed by one private anonymous mapping or one
/// shared mapping of a memfd.
///
/// Every access is bounds-checked and reports [`HostError::BAD_ADDRESS`] instead of panicking.
/// The u64 accessors are atomic (and require 8-byte alignment); byte accesses are plain copies,
/// so a byte access racing with another access to the same bytes sees a mix of old and new data,
/// exactly like two bus masters racing on real memory.
pub struct Ram {
    base: NonNull<u8>,
    len: u64,
    /// The memfd the mapping shows, for memfd-backed RAM. Closed after `Drop` unmaps.
    memfd: Option<OwnedFd>,
}

// SAFETY: `Ram` owns its mapping exclusively (the pointer is never handed out), and all access
// to the mapped bytes goes through atomics or bounds-checked copies, so moving it to another
// thread is sound.
unsafe impl Send for Ram {}
// SAFETY: shared access only reads/writes the mapping through bounds-checked raw copies and
// atomics; the mapping stays valid until `Drop`, which needs exclusive ownership.
unsafe impl Sync for Ram {}

impl std::fmt::Debug for Ram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ram")
            .field("len", &format_args!("{:#x}", self.len))
            .field("memfd", &self.memfd.is_some())
            .finish()
    }
}

impl Ram {
    /// Maps `bytes` of RAM (a non-zero multiple of 4 KiB, at most [`MAX_RAM_BYTES`]): a private
    /// anonymous mapping.
    pub fn new(bytes: u64) -> Result<Self, RamError> {
        let len = Self::check_size(bytes)?;
        // SAFETY: a fresh anonymous mapping at an address the kernel chooses cannot alias any
        // existing Rust object; we pass a valid non-zero length and no fixed address.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        }
        .map_err(|source| RamError::Map { bytes, source })?;
        tracing::debug!(bytes, "mapped simulated RAM (anonymous)");
        Ok(Self { base: ptr.cast(), len: bytes, memfd: None })
    }

    /// Maps `bytes` of RAM (a non-zero multiple of 4 KiB, at most [`MAX_RAM_BYTES`]) backed by a
    /// memfd: `memfd_create`, `ftruncate` to `bytes` (a sparse file: pages are allocated when
    /// first touched), then one `MAP_SHARED | MAP_NORESERVE` mapping of the whole file. Physical
    /// address `pa` is file offset `pa`, so another process that maps the descriptor
    /// ([`Ram::memfd`]) sees the same bytes.
    pub fn new_memfd(bytes: u64) -> Result<Self, RamError> {
        let len = Self::check_size(bytes)?;
        let fd = memfd_create(c"ioasis-ram", MFdFlags::MFD_CLOEXEC).map_err(|source| RamError::Memfd {
            bytes,
            op: "memfd_create",
            source,
        })?;
        let size = i64::try_from(bytes).map_err(|_| RamError::BadSize(bytes))?;
        nix::unistd::ftruncate(&fd, size).map_err(|source| RamError::Memfd { bytes, op: "ftruncate", source })?;
        // SAFETY: a fresh shared mapping of our own new memfd, at an address the kernel chooses,
        // cannot alias any existing Rust object; the file is exactly `len` bytes long and the
        // mapping starts at offset 0. Nobody else has the descriptor yet.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED | MapFlags::MAP_NORESERVE,
                &fd,
                0,
            )
        }
        .map_err(|source| RamError::Map { bytes, source })?;
        tracing::debug!(bytes, "mapped simulated RAM (memfd)");
        Ok(Self { base: ptr.cast(), len: bytes, memfd: Some(fd) })
    }

    fn check_size(bytes: u64) -> Result<NonZeroUsize, RamError> {
        if bytes == 0 || bytes % PAGE_SIZE != 0 || bytes > MAX_RAM_BYTES {
            return Err(RamError::BadSize(bytes));
        }
        usize::try_from(bytes).ok().and_then(NonZeroUsize::new).ok_or(RamError::BadSize(bytes))
    }

    /// The memfd behind RAM (file offset = physical address), or `None` for anonymous RAM.
    ///
    /// A VMM hands it (e.g. over a unix socket, as vhost-user does) to a process that maps it
    /// `MAP_SHARED` to reach guest memory. Whatever that process writes bypasses this type's
    /// accessors and every IOMMU: it is as trusted as the VMM.
    pub fn memfd(&self) -> Option<BorrowedFd<'_>> {
        self.memfd.as_ref().map(|fd| fd.as_fd())
    }

    /// The physical address of host range `[host, host+len)` when it lies entirely inside this
    /// RAM's mapping (the inverse of [`Ram::host_range`]); `None` otherwise.
    pub fn phys_addr_of(&self, host: *const u8, len: u64) -> Option<PhysAddr> {
        let off = (host as usize).checked_sub(self.base.as_ptr() as usize)?;
        let pa = PhysAddr(u64::try_from(off).ok()?);
        self.contains(pa, len).then_some(pa)
    }

    /// The physical address of `[offset, offset+len)` of `file` when `file` is this RAM's memfd
    /// (the same open file: same device and inode) and the range lies in RAM; `None` otherwise,
    /// and always `None` for anonymous RAM.
    pub fn memfd_phys_addr(&self, file: BorrowedFd<'_>, offset: u64, len: u64) -> Option<PhysAddr> {
        let ours = nix::sys::stat::fstat(self.memfd.as_ref()?).ok()?;
        let theirs = nix::sys::stat::fstat(file).ok()?;
        let same = (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino);
        let pa = PhysAddr(offset);
        (same && self.contains(pa, len)).then_some(pa)
    }

    /// Size of RAM in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// RAM is never empty; present for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when `[pa, pa+len)` lies entirely in RAM.
    pub fn contains(&self, pa: PhysAddr, len: u64) -> bool {
        pa.raw().checked_add(len).is_some_and(|end| end <= self.len)
    }

    /// A pointer to `[pa, pa+len)` after checking that it is RAM.
    fn ptr(&self, pa: PhysAddr, len: u64) -> Result<*mut u8, HostError> {
        if !self.contains(pa, len) {
            return Err(HostError::new(HostError::BAD_ADDRESS, pa.raw()));
        }
        let off = usize::try_from(pa.raw()).map_err(|_| HostError::new(HostError::BAD_ADDRESS, pa.raw()))?;
        // SAFETY: `off + len <= self.len`, the size of the mapping, so the result stays inside
        // (or one past the end of) the same allocation.
        Ok(unsafe { self.base.as_ptr().add(off) })
    }

    /// The host address of `[pa, pa+len)` after checking that it lies in RAM; `None` otherwise.
    ///
    /// This is for a VMM that registers part of RAM with a hypervisor as guest memory (e.g.
    /// `KVM_SET_USER_MEMORY_REGION`), so that a vCPU and simulated DMA see the same bytes. The
    /// pointer is valid for `len` bytes for as long as this `Ram` lives; `Ram` itself never
    /// dereferences it. A caller that hands it to KVM must keep the `Ram` alive longer than the
    /// VM (and every vCPU of it) and must only access the bytes through raw copies or atomics,
    /// never through Rust references, as the rest of this type does.
    pub fn host_range(&self, pa: PhysAddr, len: u64) -> Option<NonNull<u8>> {
        self.ptr(pa, len).ok().and_then(NonNull::new)
    }

    /// The atomic u64 at `pa` (8-byte aligned, in RAM).
    fn atomic(&self, pa: PhysAddr) -> Result<&AtomicU64, HostError> {
        if !pa.is_aligned(8) {
            return Err(HostError::new(HostError::BAD_ADDRESS, pa.raw()));
        }
        let p = self.ptr(pa, 8)?;
        // SAFETY: `p` points to 8 bytes inside the mapping, 8-byte aligned (the mapping is
        // page-aligned and `pa` is a multiple of 8). The mapping lives as long as `self`, and
        // every other access to these bytes is either atomic or a raw copy (never a Rust
        // reference), so handing out a shared `&AtomicU64` for `self`'s lifetime is sound.
        Ok(unsafe { AtomicU64::from_ptr(p.cast::<u64>()) })
    }

    /// Reads `buf.len()` bytes at `pa`.
    pub fn read(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<(), HostError> {
        let src = self.ptr(pa, buf.len() as u64)?;
        // SAFETY: `src` is valid for `buf.len()` bytes (checked above); `buf` is a distinct Rust
        // allocation (the mapping is never exposed as a slice), so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Writes `data` at `pa`.
    pub fn write(&self, pa: PhysAddr, data: &[u8]) -> Result<(), HostError> {
        let dst = self.ptr(pa, data.len() as u64)?;
        // SAFETY: `dst` is valid for `data.len()` bytes (checked above) and cannot overlap
        // `data`, which is not part of the mapping.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    /// Sets `[pa, pa+len)` to zero.
    pub fn zero(&self, pa: PhysAddr, len: u64) -> Result<(), HostError> {
        let dst = self.ptr(pa, len)?;
        let n = usize::try_from(len).map_err(|_| HostError::new(HostError::BAD_ADDRESS, pa.raw()))?;
        // SAFETY: `dst` is valid for `len` bytes of the mapping (checked above).
        unsafe { std::ptr::write_bytes(dst, 0, n) };
        Ok(())
    }

    /// Reads the aligned u64 at `pa` atomically.
    pub fn read_u64(&self, pa: PhysAddr) -> Result<u64, HostError> {
        Ok(self.atomic(pa)?.load(Ordering::SeqCst))
    }

    /// Writes the aligned u64 at `pa` atomically.
    pub fn write_u64(&self, pa: PhysAddr, value: u64) -> Result<(), HostError> {
        self.atomic(pa)?.store(value, Ordering::SeqCst);
        Ok(())
    }

    /// ORs `bits` into the aligned u64 at `pa` atomically; returns the old value.
    pub fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> Result<u64, HostError> {
        Ok(self.atomic(pa)?.fetch_or(bits, Ordering::SeqCst))
    }

    /// ANDs `mask` into the aligned u64 at `pa` atomically; returns the old value.
    pub fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> Result<u64, HostError> {
        Ok(self.atomic(pa)?.fetch_and(mask, Ordering::SeqCst))
    }
}

impl Drop for Ram {
    fn drop(&mut self) {
        // `new` checked that the length fits a usize.
        let len = usize::try_from(self.len).unwrap_or(usize::MAX);
        // SAFETY: `base`/`len` describe exactly the mapping made in `new` or `new_memfd` (a memfd
        // stays open until after this), and no reference into it outlives `self` (atomics
        // borrow `self`).
        if let Err(e) = unsafe { munmap(self.base.cast(), len) } {
            tracing::error!(error = %e, "munmap of simulated RAM failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(Ram::new(0), Err(RamError::BadSize(0))));
        assert!(matches!(Ram::new(4095), Err(RamError::BadSize(_))));
        assert!(matches!(Ram::new(MAX_RAM_BYTES + PAGE_SIZE), Err(RamError::BadSize(_))));
        assert!(matches!(Ram::new(u64::MAX), Err(RamError::BadSize(_))));
        let ram = Ram::new(PAGE_SIZE).unwrap();
        assert_eq!(ram.len(), PAGE_SIZE);
    }

    #[test]
    fn sixty_four_gib_is_sparse() {
        let ram = Ram::new(MAX_RAM_BYTES).unwrap();
        let top = PhysAddr(MAX_RAM_BYTES - 8);
        ram.write_u64(top, 0xfeed).unwrap();
        assert_eq!(ram.read_u64(top).unwrap(), 0xfeed);
        assert_eq!(ram.read_u64(PhysAddr(1 << 35)).unwrap(), 0);
    }

    #[test]
    fn bad_addresses_are_errors() {
        let ram = Ram::new(2 * PAGE_SIZE).unwrap();
        let bad = |e: HostError, addr: u64| e.code == HostError::BAD_ADDRESS && e.addr == addr;
        let mut buf = [0u8; 16];
        assert!(bad(ram.read(PhysAddr(2 * PAGE_SIZE - 8), &mut buf).unwrap_err(), 2 * PAGE_SIZE - 8));
        assert!(bad(ram.write(PhysAddr(u64::MAX - 4), &buf).unwrap_err(), u64::MAX - 4));
        assert!(bad(ram.read_u64(PhysAddr(2 * PAGE_SIZE)).unwrap_err(), 2 * PAGE_SIZE));
        assert!(bad(ram.read_u64(PhysAddr(u64::MAX - 7)).unwrap_err(), u64::MAX - 7));
        assert!(bad(ram.write_u64(PhysAddr(4), 1).unwrap_err(), 4));
        assert!(bad(ram.fetch_or_u64(PhysAddr(3), 1).unwrap_err(), 3));
        assert!(bad(ram.fetch_and_u64(PhysAddr(9), 1).unwrap_err(), 9));
        assert!(ram.zero(PhysAddr(PAGE_SIZE), PAGE_SIZE + 1).is_err());
        // The whole of RAM, and empty accesses at its end, are fine.
        ram.read(PhysAddr(2 * PAGE_SIZE), &mut []).unwrap();
        ram.zero(PhysAddr(0), 2 * PAGE_SIZE).unwrap();
    }

    #[test]
    fn host_range_is_bounds_checked() {
        let ram = Ram::new(2 * PAGE_SIZE).unwrap();
        let base = ram.host_range(PhysAddr(0), 2 * PAGE_SIZE).unwrap();
        let second = ram.host_range(PhysAddr(PAGE_SIZE), PAGE_SIZE).unwrap();
        assert_eq!(second.as_ptr() as usize - base.as_ptr() as usize, PAGE_SIZE as usize);
        assert!(ram.host_range(PhysAddr(PAGE_SIZE), PAGE_SIZE + 1).is_none());
        assert!(ram.host_range(PhysAddr(u64::MAX - 4), 8).is_none());
        ram.write(PhysAddr(PAGE_SIZE), &[0x5a]).unwrap();
        // SAFETY: `second` points to at least one byte of the live mapping (checked above), and
        // no Rust reference to those bytes exists.
        assert_eq!(unsafe { second.as_ptr().read() }, 0x5a);
    }

    #[test]
    fn memfd_ram_is_sparse_shared_and_lent() {
        use std::os::unix::fs::FileExt;

        assert!(matches!(Ram::new_memfd(0), Err(RamError::BadSize(0))));
        assert!(matches!(Ram::new_memfd(MAX_RAM_BYTES + PAGE_SIZE), Err(RamError::BadSize(_))));
        assert!(Ram::new(PAGE_SIZE).unwrap().memfd().is_none(), "anonymous RAM has no memfd");

        let ram = Ram::new_memfd(MAX_RAM_BYTES).unwrap();
        let top = PhysAddr(MAX_RAM_BYTES - 8);
        ram.write_u64(top, 0xfeed_f00d).unwrap();
        ram.write(PhysAddr(0x1234), b"memfd").unwrap();
        let fd = ram.memfd().expect("memfd-backed RAM lends its memfd");
        let file = std::fs::File::from(fd.try_clone_to_owned().unwrap());
        let meta = file.metadata().unwrap();
        assert_eq!(std::os::unix::fs::MetadataExt::size(&meta), MAX_RAM_BYTES, "file is RAM-sized");
        // Sparse: two touched pages, not 64 GiB (allow a little slack for the kernel).
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 <= 64 * PAGE_SIZE, "{meta:?}");
        // The file shows what RAM holds (file offset = physical address) ...
        let mut b = [0u8; 8];
        file.read_exact_at(&mut b, top.raw()).unwrap();
        assert_eq!(u64::from_le_bytes(b), 0xfeed_f00d);
        let mut b = [0u8; 5];
        file.read_exact_at(&mut b, 0x1234).unwrap();
        assert_eq!(&b, b"memfd");
        // ... and RAM shows what is written through the file.
        file.write_all_at(b"back", 0x5000).unwrap();
        let mut b = [0u8; 4];
        ram.read(PhysAddr(0x5000), &mut b).unwrap();
        assert_eq!(&b, b"back");
    }

    #[test]
    fn host_and_file_addresses_map_back_to_physical() {
        let ram = Ram::new_memfd(4 * PAGE_SIZE).unwrap();
        let host = ram.host_range(PhysAddr(PAGE_SIZE), 2 * PAGE_SIZE).unwrap();
        assert_eq!(ram.phys_addr_of(host.as_ptr(), 2 * PAGE_SIZE), Some(PhysAddr(PAGE_SIZE)));
        assert_eq!(ram.phys_addr_of(host.as_ptr(), 3 * PAGE_SIZE), Some(PhysAddr(PAGE_SIZE)));
        assert_eq!(ram.phys_addr_of(host.as_ptr(), 3 * PAGE_SIZE + 1), None, "runs past RAM");
        let below = (host.as_ptr() as usize - 2 * PAGE_SIZE as usize) as *const u8;
        assert_eq!(ram.phys_addr_of(below, 1), None, "below RAM");
        let other = [0u8; 16];
        assert_eq!(ram.phys_addr_of(other.as_ptr(), 16), None);

        let fd = ram.memfd().unwrap();
        assert_eq!(ram.memfd_phys_addr(fd, 2 * PAGE_SIZE, PAGE_SIZE), Some(PhysAddr(2 * PAGE_SIZE)));
        assert_eq!(ram.memfd_phys_addr(fd, 2 * PAGE_SIZE, 3 * PAGE_SIZE), None, "runs past RAM");
        // A duplicate descriptor is the same file; another memfd is not.
        let dup = fd.try_clone_to_owned().unwrap();
        assert_eq!(ram.memfd_phys_addr(dup.as_fd(), 0, PAGE_SIZE), Some(PhysAddr(0)));
        let other = Ram::new_memfd(4 * PAGE_SIZE).unwrap();
        assert_eq!(ram.memfd_phys_addr(other.memfd().unwrap(), 0, PAGE_SIZE), None);
        let anon = Ram::new(4 * PAGE_SIZE).unwrap();
        assert_eq!(anon.memfd_phys_addr(fd, 0, PAGE_SIZE), None, "anonymous RAM has no file");
    }

    #[test]
    fn bytes_and_words_agree() {
        let ram = Ram::new(PAGE_SIZE).unwrap();
        ram.write(PhysAddr(8), &0x1122_3344_5566_7788u64.to_le_bytes()).unwrap();
        assert_eq!(ram.read_u64(PhysAddr(8)).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(ram.fetch_or_u64(PhysAddr(8), 0xff00_0000_0000_0000).unwrap(), 0x1122_3344_5566_7788);
        assert_eq!(ram.fetch_and_u64(PhysAddr(8), 0xffff).unwrap(), 0xff22_3344_5566_7788);
        let mut b = [0u8; 3];
        ram.read(PhysAddr(8), &mut b).unwrap();
        assert_eq!(b, [0x88, 0x77, 0]);
        ram.zero(PhysAddr(0), PAGE_SIZE).unwrap();
        assert_eq!(ram.read_u64(PhysAddr(8)).unwrap(), 0);
    }
}
