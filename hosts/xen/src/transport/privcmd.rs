//! The real transport: Linux's `/dev/xen/privcmd` (IOCTL_PRIVCMD_HYPERCALL), with buffers from
//! `/dev/xen/hypercall` when the kernel has it (as libxencall does), else locked anonymous pages.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::num::NonZeroUsize;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::Arc;

use nix::sys::mman::{self, MapFlags, MmapAdvise, ProtFlags};

use super::{BufferMemory, HypercallBuffer, Transport};
use crate::error::XenError;

/// The privcmd device.
pub const PRIVCMD_PATH: &str = "/dev/xen/privcmd";
/// The hypercall-buffer device (Linux 4.18 and later).
pub const HYPERCALL_DEV_PATH: &str = "/dev/xen/hypercall";
/// xenfs's capability file: `control_d` in the control domain.
pub const CAPABILITIES_PATH: &str = "/proc/xen/capabilities";

/// Page size of x86-64 Xen; buffers are whole pages.
pub const PAGE_SIZE: usize = 4096;

// Linux include/uapi/xen/privcmd.h: struct privcmd_hypercall
/// The ioctl argument: hypercall number and five arguments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrivcmdHypercall {
    /// Hypercall number.
    pub op: u64,
    /// Arguments.
    pub arg: [u64; 5],
}

/// `_IOC(dir, type, nr, size)` of Linux's asm-generic/ioctl.h (x86 uses the generic encoding):
/// `dir << 30 | size << 16 | type << 8 | nr`.
const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | ((ty as u32) << 8) | nr as u32
}

/// `_IOC_NONE`.
const IOC_NONE: u32 = 0;

/// `IOCTL_PRIVCMD_HYPERCALL` = `_IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall))`.
pub const IOCTL_PRIVCMD_HYPERCALL: u32 = ioc(IOC_NONE, b'P', 0, size_of::<PrivcmdHypercall>());

nix::ioctl_readwrite_bad!(
    /// IOCTL_PRIVCMD_HYPERCALL on a privcmd file descriptor.
    privcmd_hypercall_ioctl,
    IOCTL_PRIVCMD_HYPERCALL,
    PrivcmdHypercall
);

/// Hypercalls through `/dev/xen/privcmd`.
#[derive(Debug)]
pub struct Privcmd {
    privcmd: File,
    hypercall_dev: Option<File>,
}

impl Privcmd {
    /// Opens the standard devices. [`XenError::Unavailable`] says why if this is not a Xen
    /// control domain (no privcmd device, or `/proc/xen/capabilities` without `control_d`).
    pub fn open() -> Result<Privcmd, XenError> {
        Privcmd::open_paths(Path::new(PRIVCMD_PATH), Path::new(HYPERCALL_DEV_PATH), Path::new(CAPABILITIES_PATH))
    }

    /// As [`Privcmd::open`], with the three paths given.
    pub fn open_paths(privcmd: &Path, hypercall_dev: &Path, capabilities: &Path) -> Result<Privcmd, XenError> {
        if !privcmd.exists() {
            let xenfs = if capabilities.parent().is_some_and(|p| p.exists()) {
                ""
            } else {
                " and there is no /proc/xen (xenfs)"
            };
            return Err(XenError::Unavailable(format!(
                "{} does not exist{xenfs}: this system is not running as a Xen domain, or the \
                 xen-privcmd driver is not loaded",
                privcmd.display()
            )));
        }
        match std::fs::read_to_string(capabilities) {
            Ok(caps) if !caps.split_whitespace().any(|c| c == "control_d") => {
                return Err(XenError::Unavailable(format!(
                    "{} reads {:?}, without control_d: this domain is not Xen's control domain \
                     (dom0), so domctl/sysctl would be refused",
                    capabilities.display(),
                    caps.trim()
                )));
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                path = %capabilities.display(),
                error = %e,
                "cannot read Xen capabilities (xenfs not mounted?); trying privcmd anyway"
            ),
        }
        let privcmd_file = OpenOptions::new().read(true).write(true).open(privcmd).map_err(|e| match e.kind() {
            ErrorKind::PermissionDenied => {
                XenError::Unavailable(format!("cannot open {}: {e} (root is needed)", privcmd.display()))
            }
            _ => XenError::Io(e),
        })?;
        let hypercall_file = match OpenOptions::new().read(true).write(true).open(hypercall_dev) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::debug!(
                    path = %hypercall_dev.display(),
                    error = %e,
                    "no hypercall-buffer device; using locked anonymous pages"
                );
                None
            }
        };
        tracing::debug!(path = %privcmd.display(), "opened privcmd");
        Ok(Privcmd { privcmd: privcmd_file, hypercall_dev: hypercall_file })
    }

    fn map_hypercall_dev(dev: &File, map_len: NonZeroUsize) -> nix::Result<NonNull<u8>> {
        // SAFETY: a fresh shared mapping of the hypercall device at a kernel-chosen address;
        // it aliases no Rust object. Ownership passes to `MmapMemory`, which unmaps it.
        let p = unsafe {
            mman::mmap(None, map_len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, dev, 0)
        }?;
        Ok(p.cast())
    }

    fn map_locked_anonymous(map_len: NonZeroUsize) -> Result<NonNull<u8>, XenError> {
        // SAFETY: a fresh private anonymous mapping at a kernel-chosen address; it aliases no
        // Rust object. Ownership passes to `MmapMemory` (or it is unmapped below on error).
        let p = unsafe {
            mman::mmap_anonymous(None, map_len, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_PRIVATE)
        }
        .map_err(|e| XenError::Buffer(format!("mmap of {map_len} bytes: {e}")))?;
        // SAFETY: `p` is the start of the `map_len`-byte mapping made above.
        if let Err(e) = unsafe { mman::madvise(p, map_len.get(), MmapAdvise::MADV_DONTFORK) } {
            tracing::warn!(error = %e, "madvise(MADV_DONTFORK) on a hypercall buffer failed");
        }
        // SAFETY: as above; locking keeps the pages resident while Xen accesses them.
        if let Err(e) = unsafe { mman::mlock(p, map_len.get()) } {
            // SAFETY: unmapping the mapping made above, which nothing else refers to.
            let _ = unsafe { mman::munmap(p, map_len.get()) };
            return Err(XenError::Buffer(format!("mlock of {map_len} bytes: {e} (RLIMIT_MEMLOCK too small?)")));
        }
        Ok(p.cast())
    }
}

impl Transport for Privcmd {
    fn hypercall(&self, op: u64, args: [u64; 5]) -> Result<i64, i32> {
        let mut call = PrivcmdHypercall { op, arg: args };
        // SAFETY: the fd is an open privcmd device and `call` is a valid, exclusively borrowed
        // `struct privcmd_hypercall` for the duration of the ioctl. Pointer arguments inside it
        // are the caller's hypercall buffers, which stay mapped while the caller holds them.
        let rc = unsafe { privcmd_hypercall_ioctl(self.privcmd.as_raw_fd(), &mut call) };
        match rc {
            Ok(v) => Ok(i64::from(v)),
            Err(errno) => Err(errno as i32),
        }
    }

    fn buffer(&self, len: usize) -> Result<HypercallBuffer, XenError> {
        let pages = len.max(1).div_ceil(PAGE_SIZE);
        let map_len = pages
            .checked_mul(PAGE_SIZE)
            .and_then(NonZeroUsize::new)
            .ok_or_else(|| XenError::Buffer(format!("buffer of {len} bytes is too large")))?;
        let (ptr, locked) = match &self.hypercall_dev {
            Some(dev) => match Privcmd::map_hypercall_dev(dev, map_len) {
                Ok(p) => (p, false),
                Err(e) => {
                    tracing::warn!(error = %e, "mmap of the hypercall device failed; falling back");
                    (Privcmd::map_locked_anonymous(map_len)?, true)
                }
            },
            None => (Privcmd::map_locked_anonymous(map_len)?, true),
        };
        let mem = MmapMemory { ptr, map_len: map_len.get(), locked };
        // Fresh mappings are zero-filled by the kernel.
        Ok(HypercallBuffer::new(Arc::new(mem)))
    }
}

/// A page-aligned mapping owned by one buffer; unmapped on drop.
#[derive(Debug)]
struct MmapMemory {
    ptr: NonNull<u8>,
    map_len: usize,
    locked: bool,
}

// SAFETY: the mapping is plain process memory owned by this value; all access goes through
// `read_at`/`write_at` copies (no references are handed out), so moving or sharing the owner
// between threads is sound.
unsafe impl Send for MmapMemory {}
// SAFETY: as above.
unsafe impl Sync for MmapMemory {}

impl BufferMemory for MmapMemory {
    fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    fn len(&self) -> usize {
        self.map_len
    }

    fn read_at(&self, offset: usize, out: &mut [u8]) {
        assert!(offset <= self.map_len && out.len() <= self.map_len - offset);
        // SAFETY: the range is inside the live mapping (asserted above) and `out` is a distinct
        // Rust buffer; the mapping is only ever accessed by copies like this one (and by Xen
        // during a synchronous hypercall, never concurrently with a copy by this process).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(offset), out.as_mut_ptr(), out.len()) };
    }

    fn write_at(&self, offset: usize, data: &[u8]) {
        assert!(offset <= self.map_len && data.len() <= self.map_len - offset);
        // SAFETY: as in `read_at`, with source and destination swapped.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len()) };
    }
}

impl Drop for MmapMemory {
    fn drop(&mut self) {
        if self.locked {
            // SAFETY: the range is the mapping this value owns.
            let _ = unsafe { mman::munlock(self.ptr.cast(), self.map_len) };
        }
        // SAFETY: the mapping this value owns; nothing refers to it after this drop.
        if let Err(e) = unsafe { mman::munmap(self.ptr.cast(), self.map_len) } {
            tracing::warn!(error = %e, "munmap of a hypercall buffer failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn layout_privcmd_hypercall() {
        // Linux include/uapi/xen/privcmd.h (as shipped in Xen 4.17's xen/sys/privcmd.h), x86-64.
        assert_eq!(size_of::<PrivcmdHypercall>(), 48);
        assert_eq!(align_of::<PrivcmdHypercall>(), 8);
        assert_eq!(offset_of!(PrivcmdHypercall, op), 0);
        assert_eq!(offset_of!(PrivcmdHypercall, arg), 8);
    }

    #[test]
    fn ioctl_number() {
        // IOCTL_PRIVCMD_HYPERCALL as printed by gcc from the header: 0x305000.
        assert_eq!(IOCTL_PRIVCMD_HYPERCALL, 0x0030_5000);
    }

    #[test]
    fn missing_privcmd_is_unavailable() {
        let dir = std::env::temp_dir().join(format!("ioasis-xen-test-{}", std::process::id()));
        let err = Privcmd::open_paths(
            &dir.join("privcmd"),
            &dir.join("hypercall"),
            &dir.join("proc-xen").join("capabilities"),
        )
        .unwrap_err();
        let XenError::Unavailable(why) = err else {
            panic!("expected Unavailable, got {err:?}");
        };
        assert!(why.contains("privcmd does not exist"), "{why}");
        assert!(why.contains("no /proc/xen"), "{why}");
    }

    #[test]
    fn domu_capabilities_are_unavailable() {
        let dir = std::env::temp_dir().join(format!("ioasis-xen-caps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake_privcmd = dir.join("privcmd");
        std::fs::write(&fake_privcmd, b"").unwrap();
        let caps = dir.join("capabilities");
        std::fs::write(&caps, b"\n").unwrap();
        let err = Privcmd::open_paths(&fake_privcmd, &dir.join("hypercall"), &caps).unwrap_err();
        std::fs::remove_dir_all(&dir).ok();
        let XenError::Unavailable(why) = err else {
            panic!("expected Unavailable, got {err:?}");
        };
        assert!(why.contains("without control_d"), "{why}");
    }

    #[test]
    fn anonymous_buffers_are_page_multiples_and_zeroed() {
        // Buffers need no Xen: exercise the fallback path over a regular file as "privcmd".
        let dir = std::env::temp_dir().join(format!("ioasis-xen-buf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake_privcmd = dir.join("privcmd");
        std::fs::write(&fake_privcmd, b"").unwrap();
        let caps = dir.join("capabilities");
        std::fs::write(&caps, b"control_d\n").unwrap();
        let t = Privcmd::open_paths(&fake_privcmd, &dir.join("hypercall"), &caps).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let mut b = t.buffer(200).unwrap();
        assert_eq!(b.len(), PAGE_SIZE);
        assert_eq!(b.addr() % PAGE_SIZE as u64, 0);
        assert_eq!(b.read::<[u64; 4]>(PAGE_SIZE - 32).unwrap(), [0; 4]);
        b.write(100, &0x1234_5678u32).unwrap();
        assert_eq!(b.read::<u32>(100).unwrap(), 0x1234_5678);
        assert_eq!(t.buffer(PAGE_SIZE + 1).unwrap().len(), 2 * PAGE_SIZE);
        // A regular file is not privcmd: the ioctl fails with ENOTTY, reported as an errno.
        assert_eq!(t.hypercall(17, [0; 5]), Err(25));
    }
}
