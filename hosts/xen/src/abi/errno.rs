//! Xen's error numbers (xen/include/public/errno.h). On x86 they equal Linux's, so an errno that
//! comes back through the privcmd ioctl can be named with the same table.

/// Operation not permitted (also what the default XSM policy answers an unprivileged caller).
pub const EPERM: i32 = 1;
/// No such file or directory.
pub const ENOENT: i32 = 2;
/// No such domain (or process).
pub const ESRCH: i32 = 3;
/// Interrupted.
pub const EINTR: i32 = 4;
/// I/O error.
pub const EIO: i32 = 5;
/// No such device or address.
pub const ENXIO: i32 = 6;
/// Argument too big (memory_mapping: batch too large for the implementation).
pub const E2BIG: i32 = 7;
/// Bad file number.
pub const EBADF: i32 = 9;
/// Try again.
pub const EAGAIN: i32 = 11;
/// Out of memory.
pub const ENOMEM: i32 = 12;
/// Permission denied; for domctl/sysctl also "wrong interface_version" (or an XSM/FLASK denial).
pub const EACCES: i32 = 13;
/// Bad address.
pub const EFAULT: i32 = 14;
/// Device or resource busy.
pub const EBUSY: i32 = 16;
/// Already exists.
pub const EEXIST: i32 = 17;
/// Cross-device link.
pub const EXDEV: i32 = 18;
/// No such device.
pub const ENODEV: i32 = 19;
/// Invalid argument.
pub const EINVAL: i32 = 22;
/// No space left.
pub const ENOSPC: i32 = 28;
/// Result out of range.
pub const ERANGE: i32 = 34;
/// Deadlock would occur.
pub const EDEADLK: i32 = 35;
/// Not implemented.
pub const ENOSYS: i32 = 38;
/// No data available.
pub const ENODATA: i32 = 61;
/// Value too large.
pub const EOVERFLOW: i32 = 75;
/// Should be restarted (Xen's preemption code).
pub const ERESTART: i32 = 85;
/// Operation not supported.
pub const EOPNOTSUPP: i32 = 95;
/// Timed out.
pub const ETIMEDOUT: i32 = 110;

/// The symbolic name of an errno Xen (or Linux, for the same numbers on x86) returns.
pub fn name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        1 => "EPERM",
        2 => "ENOENT",
        3 => "ESRCH",
        4 => "EINTR",
        5 => "EIO",
        6 => "ENXIO",
        7 => "E2BIG",
        8 => "ENOEXEC",
        9 => "EBADF",
        10 => "ECHILD",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        18 => "EXDEV",
        19 => "ENODEV",
        20 => "ENOTDIR",
        21 => "EISDIR",
        22 => "EINVAL",
        23 => "ENFILE",
        24 => "EMFILE",
        25 => "ENOTTY",
        28 => "ENOSPC",
        30 => "EROFS",
        31 => "EMLINK",
        33 => "EDOM",
        34 => "ERANGE",
        35 => "EDEADLK",
        36 => "ENAMETOOLONG",
        37 => "ENOLCK",
        38 => "ENOSYS",
        39 => "ENOTEMPTY",
        61 => "ENODATA",
        62 => "ETIME",
        74 => "EBADMSG",
        75 => "EOVERFLOW",
        84 => "EILSEQ",
        85 => "ERESTART",
        88 => "ENOTSOCK",
        90 => "EMSGSIZE",
        95 => "EOPNOTSUPP",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        105 => "ENOBUFS",
        106 => "EISCONN",
        107 => "ENOTCONN",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_xen_errno_h() {
        assert_eq!([EPERM, ESRCH, E2BIG, EAGAIN, EACCES, EBUSY, EEXIST, ENODEV], [1, 3, 7, 11, 13, 16, 17, 19]);
        assert_eq!([EINVAL, ENOSPC, ENOSYS, ERESTART, EOPNOTSUPP], [22, 28, 38, 85, 95]);
        assert_eq!(name(EOPNOTSUPP), Some("EOPNOTSUPP"));
        assert_eq!(name(ERESTART), Some("ERESTART"));
        assert_eq!(name(25), Some("ENOTTY"));
        assert_eq!(name(4242), None);
    }

    #[test]
    fn names_agree_with_constants() {
        for (v, n) in [
            (EPERM, "EPERM"),
            (ENOENT, "ENOENT"),
            (ESRCH, "ESRCH"),
            (EINTR, "EINTR"),
            (EIO, "EIO"),
            (ENXIO, "ENXIO"),
            (E2BIG, "E2BIG"),
            (EBADF, "EBADF"),
            (EAGAIN, "EAGAIN"),
            (ENOMEM, "ENOMEM"),
            (EACCES, "EACCES"),
            (EFAULT, "EFAULT"),
            (EBUSY, "EBUSY"),
            (EEXIST, "EEXIST"),
            (EXDEV, "EXDEV"),
            (ENODEV, "ENODEV"),
            (EINVAL, "EINVAL"),
            (ENOSPC, "ENOSPC"),
            (ERANGE, "ERANGE"),
            (EDEADLK, "EDEADLK"),
            (ENOSYS, "ENOSYS"),
            (ENODATA, "ENODATA"),
            (EOVERFLOW, "EOVERFLOW"),
            (ERESTART, "ERESTART"),
            (EOPNOTSUPP, "EOPNOTSUPP"),
            (ETIMEDOUT, "ETIMEDOUT"),
        ] {
            assert_eq!(name(v), Some(n));
        }
    }
}
