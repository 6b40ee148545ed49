//! The adapter's error type.

use crate::abi::{errno, InterfaceVersions, Release, RELEASES};

/// What can go wrong talking to Xen.
#[derive(Debug, thiserror::Error)]
pub enum XenError {
    /// A hypercall returned `-errno`.
    #[error("{op}{} failed: Xen returned -{name} (-{errno}){}",
        if context.is_empty() { String::new() } else { format!(" ({context})") },
        hint(*errno, op))]
    Hypercall {
        /// The operation, as the header names it (`XEN_DOMCTL_assign_device`, `XENVER_version`).
        op: &'static str,
        /// The positive errno number.
        errno: i32,
        /// Its symbolic name (`EBUSY`), or `"errno"` if unknown.
        name: &'static str,
        /// What the call was about (domain, device, range), for the message.
        context: String,
    },
    /// No Xen control interface here: the reason.
    #[error("Xen is not available: {0}")]
    Unavailable(String),
    /// The running Xen's interface versions are not ones this adapter has layouts for; nothing
    /// whose layout is unknown was sent.
    #[error(
        "Xen {}.{}{} speaks an interface this adapter has no layouts for: {reason} \
         (tried: {}; supported: {})",
        xen.0, xen.1, extraversion.as_deref().unwrap_or(""),
        tried.map_or_else(|| "nothing".to_string(), |t| t.to_string()),
        supported_list(supported))]
    InterfaceMismatch {
        /// The running Xen's `(major, minor)`.
        xen: (u32, u32),
        /// Its extraversion, if it could be read.
        extraversion: Option<String>,
        /// The interface versions sent in the probe, if any was sent.
        tried: Option<InterfaceVersions>,
        /// The releases the adapter has layouts for.
        supported: Vec<Release>,
        /// What went wrong.
        reason: String,
    },
    /// A caller's argument cannot be sent (zero-length range, reserved domain id, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Xen (or the transport) answered something the ABI does not allow.
    #[error("unexpected answer to {op}: {detail}")]
    Protocol {
        /// The operation.
        op: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A hypercall buffer could not be made or was accessed out of bounds.
    #[error("hypercall buffer: {0}")]
    Buffer(String),
    /// An operating-system call failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

fn supported_list(list: &[Release]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    list.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
}

fn hint(errno: i32, op: &str) -> &'static str {
    match errno {
        errno::EACCES if op.starts_with("XEN_DOMCTL") || op.starts_with("XEN_SYSCTL") => {
            " [wrong interface_version, or an XSM/FLASK denial]"
        }
        errno::EPERM => " [the calling domain is not privileged for this]",
        _ => "",
    }
}

impl XenError {
    /// A hypercall error for `-errno` from `op`.
    pub fn hypercall(op: &'static str, errno: i32, context: impl Into<String>) -> XenError {
        XenError::Hypercall { op, errno, name: errno::name(errno).unwrap_or("errno"), context: context.into() }
    }

    /// An interface mismatch for `xen`, listing the supported releases.
    pub fn mismatch(
        xen: (u32, u32),
        extraversion: Option<String>,
        tried: Option<InterfaceVersions>,
        reason: impl Into<String>,
    ) -> XenError {
        XenError::InterfaceMismatch { xen, extraversion, tried, supported: RELEASES.to_vec(), reason: reason.into() }
    }

    /// The errno of a hypercall error (or of an I/O error), if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            XenError::Hypercall { errno, .. } => Some(*errno),
            XenError::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }

    /// The symbolic name of [`XenError::errno`] (`"EBUSY"`).
    pub fn errno_name(&self) -> Option<&'static str> {
        self.errno().and_then(errno::name)
    }

    /// Whether this is a hypercall error with exactly `errno`.
    pub fn is_errno(&self, errno: i32) -> bool {
        matches!(self, XenError::Hypercall { errno: e, .. } if *e == errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypercall_error_message_and_helpers() {
        let e = XenError::hypercall("XEN_DOMCTL_assign_device", 16, "dom 3, 0000:00:03.0");
        assert_eq!(e.errno(), Some(16));
        assert_eq!(e.errno_name(), Some("EBUSY"));
        assert!(e.is_errno(errno::EBUSY));
        assert!(!e.is_errno(errno::EINVAL));
        assert_eq!(e.to_string(), "XEN_DOMCTL_assign_device (dom 3, 0000:00:03.0) failed: Xen returned -EBUSY (-16)");
        let e = XenError::hypercall("XEN_SYSCTL_physinfo", 13, "");
        assert!(e.to_string().contains("-EACCES (-13) [wrong interface_version"));
        let e = XenError::hypercall("XENVER_version", 4242, "");
        assert_eq!(e.to_string(), "XENVER_version failed: Xen returned -errno (-4242)");
    }

    #[test]
    fn mismatch_message_names_everything() {
        let e = XenError::mismatch((4, 18), Some(".0".into()), None, "unknown release");
        let s = e.to_string();
        assert!(s.contains("Xen 4.18.0"), "{s}");
        assert!(s.contains("tried: nothing"), "{s}");
        assert!(s.contains("Xen 4.17 (domctl 0x15, sysctl 0x15)"), "{s}");
        assert_eq!(e.errno(), None);
    }
}
