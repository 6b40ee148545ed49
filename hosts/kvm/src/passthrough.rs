//! A passthrough device behind a vIOMMU (issue 5, item 2): the guest's tables become a nested
//! HWPT on the host where the host's backend grants nesting, and shadow mappings otherwise.
//!
//! The guest programs the vIOMMU ([`Viommu`]) as if the device were its own; the device's DMA
//! really goes through a host IOMMU unit. [`Passthrough::new`] asks that unit, through the
//! device's contract, for [`IntentItem::NestedStage1`] in the stage-1 format the vIOMMU offers
//! ([`UnitModel::guest_stage1_format`](ioasis::platform::UnitModel::guest_stage1_format)):
//!
//! - **Granted: [`Mode::Nested`].** The host's stage-2 is a paging HWPT of the memory slots'
//!   IOAS (IOVA = guest-physical), and over it a host vIOMMU ([`Context::alloc_viommu`], the
//!   VM's slice of the host unit: its domain id tags the VM's nested translations) in which the
//!   device has a vDEVICE with the requester id the guest knows it by.
//!   [`Passthrough::sync`] reads the stage-1 the guest programmed
//!   ([`UnitModel::guest_stage1`](ioasis::platform::UnitModel::guest_stage1)), puts it in a
//!   nested HWPT of that vIOMMU ([`HwptSpec::NestedIn`], a new one when its root or words
//!   changed), attaches the device to it and forwards the guest's invalidation as VT-d
//!   descriptors naming the guest's ids ([`Context::viommu_invalidate`]: a PASID-based IOTLB
//!   invalidation of the device's untagged requests and a PASID-based device-TLB invalidation
//!   of its guest requester id), so that translations the host unit cached from the guest's
//!   old entries drop. The host unit walks the guest's own tables: nothing is copied.
//! - **Refused: [`Mode::Shadow`]**, with the refusal's reason: the backend's refusal of the
//!   nesting, or of the vIOMMU. The device is attached to a host IOAS of its own that
//!   [`Shadow`] keeps in step with the guest's mappings.
//!
//! In both modes, [`Passthrough::sync`] follows what the vIOMMU does with the device's requests
//! without PASID:
//!
//! | the vIOMMU | the device is attached to |
//! |---|---|
//! | does not translate them (translation off, pass-through) | the stage-2 paging HWPT: DMA reaches guest-physical addresses |
//! | blocks them (no present context / PASID entry) | a blocking HWPT |
//! | translates them through a stage-1 (nested mode) | a nested HWPT over the stage-2 |
//! | translates them otherwise (e.g. VT-d legacy second-level tables), or in shadow mode | the shadow IOAS |
//!
//! The VMM calls [`Passthrough::sync`] after every guest operation that may change the device's
//! translation and that the guest must follow with an invalidation or a command: an IOTLB,
//! PASID-cache or context-cache invalidation (register-based, or the tail write of a queued
//! one), and a change of the vIOMMU's root pointer or translation enable; and after the VM's
//! memory slots changed (the shadow's machine addresses follow them; the stage-2 follows them
//! by itself). Between syncs the host keeps what it had, as the guest's real IOMMU would keep
//! its cached translations.
//!
//! **Fail closed.** The guest's structures are untrusted. When `sync` cannot follow them (a
//! malformed entry, a mode neither nesting nor the shadow can express, a stage-1 the host
//! refuses) or a host operation fails, it attaches the device to the blocking HWPT before it
//! returns the error, so the device never keeps a translation the guest has revoked.
//!
//! **Live migration.** [`Passthrough::with_config`] with [`PassthroughConfig::dirty_tracking`]
//! makes the device migratable: the intent also asks [`IntentItem::DirtyTracking`] (a refusal
//! is [`PassthroughError::NotMigratable`] with the backend's reason, never a silent
//! downgrade), and every HWPT the device writes guest memory through is allocated with
//! [`HwptFlags::DIRTY_TRACKING`]: the stage-2 (whose dirty bits the host unit also sets for
//! writes through the guest's stage-1, nested) and the shadow IOAS's HWPT (allocated
//! explicitly and kept for the shadow's life, unlike the automatic HWPT an attach to the IOAS
//! would make and drop whenever the device leaves it, taking its dirty bits along). A
//! [`DirtyLog`](crate::dirty::DirtyLog) of the slots then reports the device's writes in both
//! modes. A HWPT allocated while the log runs has tracking turned on before the device can use
//! it, and [`Passthrough::close`] keeps what the device wrote since the last read for the
//! next one.

use std::sync::{Arc, Mutex, Weak};

use ioasis::abi::{HwptFlags, ViommuFlags, ViommuKind, VirtualCommand};
use ioasis::platform::{GuestStage1, ModelQueryError};
use ioasis::{
    Context, DeviceId, DeviceRef, Error as IoasisError, HwptId, HwptSpec, Intent, IntentItem, IoasId, Iova, PtFormat,
    Target, UnitId, VdeviceId, ViommuId,
};

use crate::dirty::{self, DirtyState};
use crate::shadow::{Shadow, ShadowError, SyncStats};
use crate::viommu::{GuestPhys, Viommu};
use crate::MemorySlots;

/// What a [`Passthrough`] asks of the host beyond following the guest's translation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassthroughConfig {
    /// Make the device migratable: negotiate [`IntentItem::DirtyTracking`] and allocate the
    /// stage-2 and shadow HWPTs with [`HwptFlags::DIRTY_TRACKING`], so that a
    /// [`DirtyLog`](crate::dirty::DirtyLog) reports what the device writes (see the module
    /// documentation). Off by default: a device without it makes a dirty log refuse
    /// ([`DirtyError::Untracked`](crate::dirty::DirtyError::Untracked)).
    pub dirty_tracking: bool,
}

/// How the host follows the guest's translation, decided by negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The contract grants nesting the vIOMMU's stage-1 format: the guest's stage-1 tables are
    /// walked by the host unit, nested over the slots' stage-2.
    Nested,
    /// No nesting; shadow mappings. The reason is the host backend's refusal of
    /// [`IntentItem::NestedStage1`], or why it was not asked.
    Shadow(String),
}

/// What the device is attached to now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Nothing yet (before the first [`Passthrough::sync`]): the host unit blocks the device.
    Nothing,
    /// The stage-2 paging HWPT of the slots' IOAS: untranslated by the vIOMMU.
    Stage2(HwptId),
    /// A nested HWPT holding the guest's stage-1.
    Nested(HwptId),
    /// The shadow IOAS.
    Shadow(IoasId),
    /// The blocking HWPT.
    Blocked(HwptId),
}

/// What one [`Passthrough::sync`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// What the device is attached to now.
    pub attached: Attached,
    /// A new nested HWPT was allocated (the guest's stage-1 root or words changed, or it was
    /// the first).
    pub allocated: bool,
    /// The guest's stage-1 invalidation was forwarded to the host vIOMMU.
    pub invalidated: bool,
    /// What the shadow sync did, when the shadow was synced.
    pub shadow: Option<SyncStats>,
}

/// Why a [`Passthrough`] operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// The device's contract could not be negotiated even without nesting (it is attached, or
    /// its unit refuses untagged DMA).
    #[error("device {device}: negotiation failed: {source}")]
    Negotiate {
        /// The device.
        device: DeviceId,
        /// The framework's answer.
        #[source]
        source: IoasisError,
    },
    /// The device was to be migratable ([`PassthroughConfig::dirty_tracking`]) but its host
    /// unit refuses dirty tracking: live migration is impossible while it is passed through.
    #[error("device {device} cannot be made migratable: its host unit refuses dirty tracking: {reason}")]
    NotMigratable {
        /// The device.
        device: DeviceId,
        /// The backend's reason.
        reason: String,
    },
    /// [`Passthrough::sync`] was given memory slots of another IOAS than the stage-2.
    #[error("memory slots of IOAS {got} given; this passthrough's stage-2 is IOAS {want}")]
    WrongSlots {
        /// The stage-2 IOAS.
        want: IoasId,
        /// The slots' IOAS.
        got: IoasId,
    },
    /// The vIOMMU's structures for the device cannot be followed (malformed, or a mode neither
    /// nesting nor the shadow expresses).
    #[error("cannot follow the guest's translation: {0}")]
    Guest(ModelQueryError),
    /// The guest's stage-1 is in a format the contract does not nest.
    #[error("the guest's stage-1 is {got}, the contract nests {want}")]
    Format {
        /// The contract's stage-1 format.
        want: PtFormat,
        /// The guest's.
        got: PtFormat,
    },
    /// The host refused a nested HWPT for the guest's stage-1 (e.g. a root it cannot use).
    #[error("the host refused a nested HWPT for the guest's stage-1 at {root}: {source}")]
    Nest {
        /// The guest's stage-1 root.
        root: Iova,
        /// The framework's answer.
        #[source]
        source: IoasisError,
    },
    /// The shadow could not be synced.
    #[error("shadow sync failed: {0}")]
    Shadow(#[source] ShadowError),
    /// A host operation failed (allocate, attach, invalidate, destroy).
    #[error("{op}: {source}")]
    Host {
        /// The operation.
        op: &'static str,
        /// The framework's answer.
        #[source]
        source: IoasisError,
    },
}

/// One passthrough device behind a vIOMMU (see the module documentation).
pub struct Passthrough {
    ctx: Arc<Context>,
    device: DeviceId,
    /// The device as the vIOMMU sees it (its requester id in the guest).
    guest_dev: DeviceRef,
    unit: UnitId,
    stage2: IoasId,
    config: PassthroughConfig,
    mode: Mode,
    /// The contract's stage-1 format (nested mode).
    format: Option<PtFormat>,
    /// The stage-2 paging HWPT of `stage2` on the device's unit, allocated once (in nested
    /// mode when the passthrough is made, for its vIOMMU).
    parent: Option<HwptId>,
    /// Dirty tracking was set up for `parent` (on its first use, with the slots).
    parent_tracked: bool,
    /// Nested mode: the host vIOMMU over `parent` and the device's vDEVICE in it.
    viommu: Option<(ViommuId, VdeviceId)>,
    /// The blocking HWPT, allocated once.
    blocking: Option<HwptId>,
    /// The nested HWPT and the stage-1 it holds, while the device is attached to it.
    nested: Option<(HwptId, GuestStage1)>,
    /// The shadow (its IOAS allocated when first needed) and its paging HWPT.
    shadow: Option<(Shadow, HwptId)>,
    attached: Attached,
    /// The dirty state of the memory slots last synced with.
    dirty: Option<Weak<Mutex<DirtyState>>>,
}

impl std::fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passthrough")
            .field("device", &self.device)
            .field("guest_dev", &self.guest_dev)
            .field("mode", &self.mode)
            .field("config", &self.config)
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

/// A failed host operation.
fn host(op: &'static str) -> impl FnOnce(IoasisError) -> PassthroughError {
    move |source| PassthroughError::Host { op, source }
}

/// The guest's id of a device: its requester id (bus << 8 | devfn) or stream id.
fn virt_id(dev: DeviceRef) -> u64 {
    match dev {
        DeviceRef::Rid(r) => u64::from(r.source_id()),
        DeviceRef::Sid(s) => u64::from(s),
    }
}

/// The kind of host vIOMMU that takes a guest's invalidations for a guest stage-1 of `format`:
/// an x86-64 first stage is a VT-d guest's (scalable mode, PGTT nested).
fn viommu_kind(format: PtFormat) -> Option<ViommuKind> {
    (format == PtFormat::X86_64).then_some(ViommuKind::VTD)
}

/// The guest's invalidation after it changed the first stage of `guest_dev`'s untagged
/// requests, as VT-d descriptors (spec 6.5.2) naming the guest's ids: a PASID-based IOTLB
/// invalidation (6.5.2.4, type 6h, G 5:4 = 10b: all of one PASID, DID 31:16, PASID 51:32) of
/// PASID 0 (the requests without PASID, RID_PASID; the DID is the guest's, which the vIOMMU
/// replaces with the VM's), and a PASID-based device-TLB invalidation (6.5.2.6, type 8h, SID
/// 31:16 = the guest's requester id, PASID 51:32; qword 1: G bit 0 every PASID, S bit 11 with
/// address bits 62:12 set: the whole address space).
fn vtd_guest_invalidation(guest_dev: DeviceRef) -> [VirtualCommand; 2] {
    const P_IOTLB: u64 = 0x6;
    const G_PASID: u64 = 2 << 4;
    const P_DEV_TLB: u64 = 0x8;
    let sid = virt_id(guest_dev) & 0xffff;
    [
        VirtualCommand { words: [P_IOTLB | G_PASID, 0, 0, 0] },
        VirtualCommand { words: [P_DEV_TLB | (sid << 16), 0x7fff_ffff_ffff_f000 | (1 << 11) | 1, 0, 0] },
    ]
}

/// The reasons a refusal gives for `item`, joined, if it lists it.
fn unmet(r: &ioasis::Refusal, item: IntentItem) -> Option<String> {
    let reasons: Vec<&str> = r.unmet.iter().filter(|u| u.item == Some(item)).map(|u| u.reason.as_str()).collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

impl Passthrough {
    /// [`Passthrough::with_config`] with the default configuration: not migratable.
    pub fn new(
        ctx: Arc<Context>,
        device: DeviceId,
        guest_dev: DeviceRef,
        stage2: IoasId,
        viommu: &Viommu,
    ) -> Result<Self, PassthroughError> {
        Self::with_config(ctx, device, guest_dev, stage2, viommu, PassthroughConfig::default())
    }

    /// Negotiates `device`'s contract for the passthrough: untagged DMA, nesting the stage-1
    /// format `viommu` offers, and with [`PassthroughConfig::dirty_tracking`] dirty tracking.
    /// `device` is bound to its host unit and not attached; `guest_dev` is how the vIOMMU sees
    /// it; `stage2` is the IOAS of the VM's [`MemorySlots`] (IOVA = guest-physical). When the
    /// backend refuses only the nesting, the contract is renegotiated without it and the mode
    /// is [`Mode::Shadow`] with the backend's reason. When it refuses dirty tracking that was
    /// asked for, this fails with [`PassthroughError::NotMigratable`] and the backend's
    /// reason. Nothing is attached until the first [`Passthrough::sync`].
    pub fn with_config(
        ctx: Arc<Context>,
        device: DeviceId,
        guest_dev: DeviceRef,
        stage2: IoasId,
        viommu: &Viommu,
        config: PassthroughConfig,
    ) -> Result<Self, PassthroughError> {
        let mut base = vec![IntentItem::UntaggedDma];
        if config.dirty_tracking {
            base.push(IntentItem::DirtyTracking);
        }
        let negotiate = |extra: Option<IntentItem>| {
            let items = base.iter().copied().chain(extra).collect::<Vec<_>>();
            match ctx.negotiate(device, &Intent::new(items)) {
                Err(IoasisError::Refused(r)) if config.dirty_tracking => match unmet(&r, IntentItem::DirtyTracking) {
                    Some(reason) => Err(PassthroughError::NotMigratable { device, reason }),
                    None => Err(PassthroughError::Negotiate { device, source: IoasisError::Refused(r) }),
                },
                other => other.map_err(|source| PassthroughError::Negotiate { device, source }),
            }
        };
        let (contract, mode, format) = match viommu.model().guest_stage1_format() {
            None => {
                let c = negotiate(None)?;
                (c, Mode::Shadow("the vIOMMU offers no stage-1 format to nest".into()), None)
            }
            Some(format) => {
                let nest = IntentItem::NestedStage1 { format };
                match negotiate(Some(nest)) {
                    Ok(c) => (c, Mode::Nested, Some(format)),
                    Err(PassthroughError::Negotiate { source: IoasisError::Refused(r), .. })
                        if r.unmet.iter().all(|u| u.item == Some(nest)) =>
                    {
                        let reason = r.unmet.iter().map(|u| u.reason.as_str()).collect::<Vec<_>>().join("; ");
                        let c = negotiate(None)?;
                        (c, Mode::Shadow(reason), None)
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let mut pt = Self {
            ctx: ctx.clone(),
            device,
            guest_dev,
            unit: contract.unit,
            stage2,
            config,
            mode,
            format,
            parent: None,
            parent_tracked: false,
            viommu: None,
            blocking: None,
            nested: None,
            shadow: None,
            attached: Attached::Nothing,
            dirty: None,
        };
        if let (Mode::Nested, Some(format)) = (&pt.mode, format) {
            if let Err(reason) = pt.build_viommu(format)? {
                // The unit nests but has no vIOMMU for the VM: shadowed, as without nesting.
                negotiate(None)?;
                pt.mode = Mode::Shadow(reason);
                pt.format = None;
            }
        }
        tracing::debug!(%device, mode = ?pt.mode, ?config, viommu = ?pt.viommu, "passthrough negotiated");
        Ok(pt)
    }

    /// Nested mode: the stage-2 paging HWPT, a host vIOMMU over it and the device's vDEVICE
    /// with its guest id. `Ok(Err(reason))`: the unit refuses the vIOMMU (nothing is left
    /// allocated); `Err`: a host operation failed.
    fn build_viommu(&mut self, format: PtFormat) -> Result<Result<(), String>, PassthroughError> {
        let Some(kind) = viommu_kind(format) else {
            return Ok(Err(format!("no host vIOMMU takes the invalidations of a {format} guest stage-1")));
        };
        let spec = HwptSpec::Paging { ioas: self.stage2, flags: self.flags(), fault_queue: None };
        let parent = self.ctx.alloc_hwpt(self.unit, spec).map_err(host("allocate the stage-2 HWPT"))?;
        let v = match self.ctx.alloc_viommu(parent, kind, ViommuFlags(0)) {
            Ok(v) => v,
            Err(e) => {
                let _ = self.ctx.destroy(parent);
                return Ok(Err(e.to_string()));
            }
        };
        match self.ctx.alloc_vdevice(v, self.device, virt_id(self.guest_dev)) {
            Ok(vd) => {
                self.parent = Some(parent);
                self.viommu = Some((v, vd));
                Ok(Ok(()))
            }
            Err(e) => {
                let _ = self.ctx.destroy(v);
                let _ = self.ctx.destroy(parent);
                Err(PassthroughError::Host { op: "give the device its guest id in the vIOMMU", source: e })
            }
        }
    }

    /// Nested mode: the host vIOMMU.
    pub fn viommu(&self) -> Option<ViommuId> {
        self.viommu.map(|(v, _)| v)
    }

    /// Nested mode: the device's vDEVICE in the host vIOMMU (its guest requester id).
    pub fn vdevice(&self) -> Option<VdeviceId> {
        self.viommu.map(|(_, d)| d)
    }

    /// The configuration it was made with.
    pub fn config(&self) -> PassthroughConfig {
        self.config
    }

    /// How the host follows the guest's translation.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// What the device is attached to now.
    pub fn attached(&self) -> Attached {
        self.attached
    }

    /// The host device.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The stage-2 paging HWPT, once allocated.
    pub fn stage2_hwpt(&self) -> Option<HwptId> {
        self.parent
    }

    /// The shadow IOAS, once allocated.
    pub fn shadow_ioas(&self) -> Option<IoasId> {
        self.shadow.as_ref().map(|(s, _)| s.ioas())
    }

    /// The shadow IOAS's paging HWPT (the device's when attached to the shadow), once
    /// allocated.
    pub fn shadow_hwpt(&self) -> Option<HwptId> {
        self.shadow.as_ref().map(|(_, h)| *h)
    }

    /// The shadow, once allocated.
    pub fn shadow(&self) -> Option<&Shadow> {
        self.shadow.as_ref().map(|(s, _)| s)
    }

    /// Flags of the stage-2 and shadow HWPTs.
    fn flags(&self) -> HwptFlags {
        if self.config.dirty_tracking {
            HwptFlags::DIRTY_TRACKING
        } else {
            HwptFlags::default()
        }
    }

    /// A paging HWPT of `ioas` on the device's unit, with [`Passthrough::flags`]; when
    /// migratable, with tracking on at once if `slots`' dirty log runs.
    fn alloc_paging(&self, slots: &MemorySlots, ioas: IoasId, what: &'static str) -> Result<HwptId, PassthroughError> {
        let spec = HwptSpec::Paging { ioas, flags: self.flags(), fault_queue: None };
        let h = self.ctx.alloc_hwpt(self.unit, spec).map_err(host(what))?;
        if self.config.dirty_tracking {
            if let Err(e) = dirty::track_early(slots, ioas, h) {
                let _ = self.ctx.destroy(h);
                return Err(PassthroughError::Host { op: "turn dirty tracking on", source: e });
            }
        }
        Ok(h)
    }

    /// Brings the device's host translation in step with what the vIOMMU does with its
    /// requests without PASID now (see the module documentation for when to call it). Reads
    /// the guest's structures through the current memory `slots`, which must be the stage-2's.
    ///
    /// Fails closed: on any error but [`PassthroughError::WrongSlots`] the device is attached
    /// to the blocking HWPT before the error returns (should even that fail, it is logged and
    /// [`Passthrough::attached`] says what the device kept).
    pub fn sync(&mut self, viommu: &Viommu, slots: &MemorySlots) -> Result<SyncReport, PassthroughError> {
        if slots.ioas() != self.stage2 {
            return Err(PassthroughError::WrongSlots { want: self.stage2, got: slots.ioas() });
        }
        self.dirty = Some(Arc::downgrade(slots.dirty_handle()));
        let mem = GuestPhys::of(slots);
        let query = viommu.model().guest_stage1(&mem, self.guest_dev, None);
        let result = match (&self.mode, query) {
            (_, Err(ModelQueryError::Untranslated)) => self.use_stage2(slots),
            (Mode::Nested, Ok(s1)) => self.use_nested(s1, slots),
            (Mode::Nested, Err(ModelQueryError::Blocked)) => self.block().map(|_| self.report()),
            // A translation the guest's stage-1 cannot express (e.g. legacy second-level
            // tables): shadowed, as without nesting.
            (Mode::Nested, Err(ModelQueryError::Unsupported | ModelQueryError::UnsupportedMode { .. }))
            | (Mode::Shadow(_), _) => self.use_shadow(viommu, slots),
            (Mode::Nested, Err(e)) => Err(PassthroughError::Guest(e)),
        };
        match result {
            Ok(r) => {
                tracing::debug!(device = %self.device, report = ?r, "passthrough synced");
                Ok(r)
            }
            Err(e) => {
                tracing::warn!(device = %self.device, error = %e, "cannot follow the guest; blocking the device");
                if let Err(b) = self.block() {
                    tracing::error!(device = %self.device, error = %b, attached = ?self.attached, "cannot block the device");
                }
                Err(e)
            }
        }
    }

    /// Detaches the device and frees what this passthrough allocated (HWPTs, the shadow IOAS).
    /// While a [`DirtyLog`](crate::dirty::DirtyLog) of the slots runs, what the device wrote
    /// since its last read (dirty bits of the stage-2 and the shadow, which die with them) is
    /// read out first and kept for its next read.
    pub fn close(mut self) -> Result<(), PassthroughError> {
        if self.attached != Attached::Nothing {
            self.ctx.detach(self.device, None).map_err(host("detach"))?;
            self.attached = Attached::Nothing;
        }
        if let (Some(p), Some(state)) = (self.parent, self.dirty.as_ref().and_then(Weak::upgrade)) {
            dirty::keep_hwpt(&self.ctx, &mut dirty::lock(&state), p, self.stage2)
                .map_err(host("keep the stage-2's dirty pages"))?;
        }
        if let Some((mut s, h)) = self.shadow.take() {
            s.release().map_err(PassthroughError::Shadow)?;
            self.ctx.destroy(h).map_err(host("destroy the shadow HWPT"))?;
            self.ctx.destroy(s.ioas()).map_err(host("destroy the shadow IOAS"))?;
        }
        if let Some((h, _)) = self.nested.take() {
            self.ctx.destroy(h).map_err(host("destroy the nested HWPT"))?;
        }
        if let Some((v, vd)) = self.viommu.take() {
            self.ctx.destroy(vd).map_err(host("destroy the vDEVICE"))?;
            self.ctx.destroy(v).map_err(host("destroy the vIOMMU"))?;
        }
        for h in [self.blocking.take(), self.parent.take()].into_iter().flatten() {
            self.ctx.destroy(h).map_err(host("destroy HWPT"))?;
        }
        Ok(())
    }

    fn report(&self) -> SyncReport {
        SyncReport { attached: self.attached, allocated: false, invalidated: false, shadow: None }
    }

    /// Attaches the device to `target` (or replaces its attachment), unless it is there.
    fn switch(&mut self, to: Attached) -> Result<(), PassthroughError> {
        if self.attached == to {
            return Ok(());
        }
        let target = match to {
            Attached::Nothing => return Ok(()),
            Attached::Stage2(h) | Attached::Nested(h) | Attached::Blocked(h) => Target::Hwpt(h),
            Attached::Shadow(ioas) => match &self.shadow {
                Some((s, h)) if s.ioas() == ioas => Target::Hwpt(*h),
                _ => Target::Ioas(ioas),
            },
        };
        let result = if self.attached == Attached::Nothing {
            self.ctx.attach(self.device, None, target)
        } else {
            self.ctx.replace(self.device, None, target)
        };
        result.map_err(host("attach"))?;
        self.attached = to;
        // A nested HWPT no longer attached holds a stage-1 the guest left: freed.
        if let Some((h, _)) = self.nested.as_ref().filter(|(h, _)| to != Attached::Nested(*h)) {
            let h = *h;
            self.nested = None;
            self.ctx.destroy(h).map_err(host("destroy the old nested HWPT"))?;
        }
        Ok(())
    }

    fn parent(&mut self, slots: &MemorySlots) -> Result<HwptId, PassthroughError> {
        if let Some(h) = self.parent {
            if !self.parent_tracked && self.config.dirty_tracking {
                // Allocated with the vIOMMU, before the slots were known: tracking on (if the
                // dirty log runs) before the device first uses it.
                dirty::track_early(slots, self.stage2, h)
                    .map_err(|e| PassthroughError::Host { op: "turn dirty tracking on", source: e })?;
            }
            self.parent_tracked = true;
            return Ok(h);
        }
        let h = self.alloc_paging(slots, self.stage2, "allocate the stage-2 HWPT")?;
        self.parent = Some(h);
        self.parent_tracked = true;
        Ok(h)
    }

    fn use_stage2(&mut self, slots: &MemorySlots) -> Result<SyncReport, PassthroughError> {
        let parent = self.parent(slots)?;
        self.switch(Attached::Stage2(parent))?;
        Ok(self.report())
    }

    fn block(&mut self) -> Result<(), PassthroughError> {
        let h = match self.blocking {
            Some(h) => h,
            None => {
                let h = self.ctx.alloc_hwpt(self.unit, HwptSpec::Blocking).map_err(host("allocate a blocking HWPT"))?;
                self.blocking = Some(h);
                h
            }
        };
        self.switch(Attached::Blocked(h))
    }

    fn use_nested(&mut self, s1: GuestStage1, slots: &MemorySlots) -> Result<SyncReport, PassthroughError> {
        if self.format != Some(s1.format) {
            let want = self.format.unwrap_or(PtFormat::NONE);
            return Err(PassthroughError::Format { want, got: s1.format });
        }
        self.parent(slots)?;
        let Some((viommu, _)) = self.viommu else {
            return Err(PassthroughError::Guest(ModelQueryError::Unsupported));
        };
        let mut report = self.report();
        let hwpt = match &self.nested {
            Some((h, held)) if *held == s1 => *h,
            _ => {
                let root = Iova(s1.root.raw());
                let spec =
                    HwptSpec::NestedIn { viommu, format: s1.format, root, words: s1.words.clone(), fault_queue: None };
                let h =
                    self.ctx.alloc_hwpt(self.unit, spec).map_err(|source| PassthroughError::Nest { root, source })?;
                // The device moves from the old one (if any) to the new one, then the old goes.
                let old = self.nested.replace((h, s1));
                if let Err(e) = self.switch(Attached::Nested(h)) {
                    self.nested = old;
                    let _ = self.ctx.destroy(h);
                    return Err(e);
                }
                if let Some((old, _)) = old {
                    self.ctx.destroy(old).map_err(host("destroy the old nested HWPT"))?;
                }
                report.allocated = true;
                h
            }
        };
        self.switch(Attached::Nested(hwpt))?;
        // The guest invalidated: drop what the host unit cached from its stage-1, through the
        // vIOMMU, in the guest's terms.
        let cmds = vtd_guest_invalidation(self.guest_dev);
        self.ctx.viommu_invalidate(viommu, &cmds).map_err(host("forward the guest's invalidation"))?;
        report.invalidated = true;
        report.attached = self.attached;
        Ok(report)
    }

    fn use_shadow(&mut self, viommu: &Viommu, slots: &MemorySlots) -> Result<SyncReport, PassthroughError> {
        let shadow = match self.shadow.take() {
            Some(s) => s,
            None => {
                // The shadow's HWPT, allocated before anything is mapped or attached (with
                // tracking on if a dirty log runs) and kept for the shadow's life.
                let ioas = self.ctx.alloc_ioas();
                match self.alloc_paging(slots, ioas, "allocate the shadow HWPT") {
                    Ok(h) => (Shadow::new(self.ctx.clone(), ioas), h),
                    Err(e) => {
                        let _ = self.ctx.destroy(ioas);
                        return Err(e);
                    }
                }
            }
        };
        let (shadow, _) = self.shadow.insert(shadow);
        // Mappings first, then the device.
        let stats = shadow.sync(viommu, slots, self.guest_dev).map_err(PassthroughError::Shadow)?;
        let ioas = shadow.ioas();
        self.switch(Attached::Shadow(ioas))?;
        Ok(SyncReport { shadow: Some(stats), ..self.report() })
    }
}
