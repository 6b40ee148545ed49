//! What Xen grants a device, item by item, with Xen's reason for each refusal.

use abi_stable::std_types::RString;
use ioasis::abi::ItemVerdict;
use ioasis::IntentCode;

use super::libc_errno;
use crate::{PhysInfo, Sbdf, XenError};

/// Judges one item for `dev`. `assignable` is Xen's answer to `XEN_DOMCTL_test_assign_device`
/// for the device (asked once per negotiation, only when an item needs it).
pub(crate) fn judge(
    item: IntentCode,
    dev: Option<Sbdf>,
    physinfo: &PhysInfo,
    present: Option<bool>,
    assignable: &mut dyn FnMut() -> Result<(), XenError>,
) -> ItemVerdict {
    let verdict = |granted: bool, reason: String| ItemVerdict { item, granted, reason: RString::from(reason) };
    let refuse = |reason: &str| verdict(false, reason.to_string());
    match item.kind {
        IntentCode::UNTAGGED_DMA => {
            let Some(sbdf) = dev else {
                return refuse("Xen assigns PCI devices only; this device has no requester id");
            };
            if !physinfo.directio() {
                return refuse(
                    "Xen runs without an IOMMU: XEN_SYSCTL_physinfo does not report the directio capability",
                );
            }
            match assignable() {
                Ok(()) => verdict(true, format!("Xen can assign {sbdf} (test_assign_device: 0)")),
                Err(e) => verdict(false, refusal_reason(sbdf, &e, present)),
            }
        }
        IntentCode::PASID_DMA | IntentCode::PASID_IOAS => {
            refuse("Xen 4.17 programs the IOMMU for requester-id DMA only: no domctl installs PASID tables")
        }
        IntentCode::ENQCMD => refuse("Xen 4.17 has no vPASID translation for ENQCMD"),
        IntentCode::PAGE_FAULTS => {
            refuse("Xen handles IOMMU faults itself and forwards no recoverable page requests to dom0")
        }
        IntentCode::DIRTY_TRACKING => refuse(
            "Xen 4.17 gives dom0 no dirty log of device writes (log-dirty mode tracks CPU writes, not assigned-device DMA)",
        ),
        IntentCode::NESTED_STAGE1 => refuse("Xen 4.17 does not let dom0 install a guest's stage-1 tables"),
        IntentCode::COHERENCY => refuse("snoop control is Xen's own choice (iommu=snoop), not a per-device grant"),
        IntentCode::ATS => refuse("device-TLB use is Xen's own choice (iommu=ats), not a per-device grant"),
        IntentCode::IDENTITY => refuse("Xen gives no dom0 user untranslated DMA: a device is assigned to a domain"),
        _ => refuse("an intent item this Xen adapter does not know"),
    }
}

/// Xen's answer to test_assign_device, in words. Xen answers `-EINVAL` both for a device
/// assigned elsewhere and for one it does not know; `present` (does dom0 see the device, when
/// it can tell) tells them apart.
pub(crate) fn refusal_reason(sbdf: Sbdf, e: &XenError, present: Option<bool>) -> String {
    let why = match (e.errno(), present) {
        (Some(libc_errno::EOPNOTSUPP), _) => "Xen has no IOMMU enabled for device assignment",
        (Some(libc_errno::EINVAL), Some(false)) => "no such PCI device: dom0 sees none there and Xen knows none",
        (Some(libc_errno::EINVAL), Some(true)) => "Xen says it is assigned to a domain already",
        (Some(libc_errno::EINVAL), None) => {
            "Xen says it is assigned to a domain already, or it is not a PCI device Xen knows"
        }
        (Some(libc_errno::ENODEV), _) => "Xen knows no such PCI device",
        (Some(libc_errno::EBUSY), _) => "Xen says it is in use",
        _ => "Xen refused",
    };
    format!("{why}: test_assign_device({sbdf}) failed: {e}")
}
