//! `xen-probe`: a tiny dom0 program for the real-Xen testbed's own tests. It prints what
//! `/proc/xen/capabilities` holds and the hypervisor's version, asked with a raw
//! `IOCTL_PRIVCMD_HYPERCALL` on `/dev/xen/privcmd` (no use of the crate's hypercall layer, so the
//! testbed is checked independently of it).
//!
//! Output, one fact a line: `capabilities <text>`, `xen_version <major>.<minor>`,
//! `xen_extraversion <text>`. Exit status 0 when every step worked, 1 otherwise (the failing step
//! is reported on stderr).

#[cfg(target_os = "linux")]
mod probe {
    use std::ffi::{c_int, c_ulong};
    use std::fs::{self, OpenOptions};
    use std::os::fd::AsRawFd;

    /// `__HYPERVISOR_xen_version` (xen/include/public/xen.h).
    const HYPERVISOR_XEN_VERSION: u64 = 17;
    /// `XENVER_version`: returns `major << 16 | minor`.
    const XENVER_VERSION: u64 = 0;
    /// `XENVER_extraversion`: fills a 16-byte buffer.
    const XENVER_EXTRAVERSION: u64 = 1;

    /// Linux's `struct privcmd_hypercall` (include/uapi/xen/privcmd.h).
    #[repr(C)]
    struct PrivcmdHypercall {
        op: u64,
        arg: [u64; 5],
    }

    /// `_IOC(_IOC_NONE, 'P', 0, sizeof(struct privcmd_hypercall))`.
    const IOCTL_PRIVCMD_HYPERCALL: c_ulong =
        ((std::mem::size_of::<PrivcmdHypercall>() as c_ulong) << 16) | ((b'P' as c_ulong) << 8);

    extern "C" {
        fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
    }

    fn hypercall(fd: c_int, op: u64, args: [u64; 5]) -> Result<i64, String> {
        let mut call = PrivcmdHypercall { op, arg: args };
        // SAFETY: `fd` is an open privcmd descriptor and `call` is a live, properly laid out
        // `struct privcmd_hypercall` for the duration of the call; any buffer the arguments point
        // at is owned by the caller and outlives this call.
        let rc = unsafe { ioctl(fd, IOCTL_PRIVCMD_HYPERCALL, &mut call as *mut PrivcmdHypercall) };
        if rc < 0 {
            Err(format!("IOCTL_PRIVCMD_HYPERCALL op {op}: {}", std::io::Error::last_os_error()))
        } else {
            Ok(i64::from(rc))
        }
    }

    pub fn run() -> Result<(), String> {
        let caps =
            fs::read_to_string("/proc/xen/capabilities").map_err(|e| format!("reading /proc/xen/capabilities: {e}"))?;
        println!("capabilities {}", caps.trim());

        let privcmd = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/xen/privcmd")
            .map_err(|e| format!("opening /dev/xen/privcmd: {e}"))?;
        let fd = privcmd.as_raw_fd();

        let v = hypercall(fd, HYPERVISOR_XEN_VERSION, [XENVER_VERSION, 0, 0, 0, 0])?;
        println!("xen_version {}.{}", v >> 16, v & 0xffff);

        let mut extra = [0u8; 16];
        hypercall(fd, HYPERVISOR_XEN_VERSION, [XENVER_EXTRAVERSION, extra.as_mut_ptr() as u64, 0, 0, 0])?;
        let end = extra.iter().position(|&b| b == 0).unwrap_or(extra.len());
        println!("xen_extraversion {}", String::from_utf8_lossy(&extra[..end]));
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn main() {
    if let Err(e) = probe::run() {
        eprintln!("xen-probe: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("xen-probe: Linux only");
    std::process::exit(1);
}
