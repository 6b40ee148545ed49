//! Routing faults: page requests to the fault queue of the HWPT they hit, page responses back
//! to the unit; unrecoverable faults to the context's fault log.

use crate::abi::{Fault, PageResponse};
use crate::error::{Error, Result};
use crate::object::{DeviceId, FaultQueueId};

use super::{lock, plugin_err, Attachment, Context, PendingRequest};

/// Longest fault log kept; older records are dropped.
const FAULT_LOG_MAX: usize = 4096;
/// Records taken from a unit per call.
const BATCH: u32 = 256;
/// Batches [`Context::poll_faults`] takes from one unit per call: a unit that keeps reporting
/// (a fault storm, or a plugin that always answers a full batch) cannot hold the caller; the
/// rest waits for the next call.
pub const MAX_POLL_BATCHES: usize = 64;

/// A page request waiting for its response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedFault {
    /// What to pass to [`Context::respond`].
    pub cookie: u64,
    /// The device.
    pub device: DeviceId,
    /// The request.
    pub fault: Fault,
}

impl Context {
    /// Takes the recorded faults from every unit and routes them. Returns how many were read: at
    /// most [`MAX_POLL_BATCHES`] batches of 256 per unit, so one call ends however fast a unit
    /// reports; call again while it returns a full count. A plugin that answers more records
    /// than asked for is [`Error::BadAnswer`].
    pub fn poll_faults(&self) -> Result<usize> {
        // Routing looks at attachments: no attach, replace or detach may run meanwhile.
        let _c = self.control();
        let units: Vec<_> = self.read().units.values().cloned().collect();
        let mut total = 0;
        for u in units {
            for _ in 0..MAX_POLL_BATCHES {
                let batch = u.hw.read_faults(BATCH).into_result().map_err(|e| plugin_err(&u, "read_faults", e))?;
                let n = batch.len();
                if n > BATCH as usize {
                    return Err(super::bad_answer(&u, "read_faults", format!("{n} records for at most {BATCH}")));
                }
                total += n;
                for f in batch {
                    self.route(&u, f);
                }
                if n < BATCH as usize {
                    break;
                }
            }
        }
        Ok(total)
    }

    fn route(&self, unit: &std::sync::Arc<super::UnitObj>, f: Fault) {
        let dev = self
            .read()
            .devices
            .values()
            .find(|d| std::sync::Arc::ptr_eq(&d.unit, unit) && d.desc.info().dev.table_index() == f.dev.table_index())
            .cloned();
        let hwpt = dev.as_ref().and_then(|d| match lock(&d.attached).get(&f.pasid.into_option()) {
            Some(Attachment::Hwpt(h)) => Some(h.clone()),
            _ => None,
        });
        let queue = hwpt
            .as_ref()
            .and_then(|h| h.fault_queue.clone().or_else(|| h.parent.as_ref().and_then(|p| p.fault_queue.clone())));
        if !f.page_request {
            if let Some(d) = &dev {
                if self.route_vevent(d, hwpt.as_ref(), &f) {
                    return;
                }
            }
        }
        match (f.page_request, queue, dev) {
            (true, Some(q), Some(d)) => q.push(d.id, unit.clone(), f),
            (true, _, _) => {
                // Nobody handles it: answer at once so that the device does not wait forever.
                tracing::warn!(unit = %unit.name, dev = %f.dev, addr = %f.addr, "page request with no fault queue: responding invalid");
                let resp = PageResponse { dev: f.dev, pasid: f.pasid, group: f.group, code: PageResponse::INVALID };
                if let Err(e) = unit.hw.page_response(&resp).into_result() {
                    tracing::error!(unit = %unit.name, "page response failed: {e}");
                }
                self.log_fault(f);
            }
            (false, _, _) => {
                tracing::warn!(
                    unit = %unit.name, dev = %f.dev, addr = %f.addr,
                    reason = Fault::reason_name(f.reason), "DMA fault"
                );
                self.log_fault(f);
            }
        }
    }

    fn log_fault(&self, f: Fault) {
        let mut log = lock(&self.fault_log);
        if log.len() == FAULT_LOG_MAX {
            log.pop_front();
        }
        log.push_back(f);
    }

    /// Takes the page requests waiting in a fault queue.
    pub fn read_faults(&self, queue: FaultQueueId) -> Result<Vec<QueuedFault>> {
        Ok(lock(&self.queue(queue)?.events).drain(..).collect())
    }

    /// Answers a page request ([`PageResponse::SUCCESS`], `INVALID` or `FAILURE`). A request
    /// is answered once: a cookie that is not outstanding (answered already, or answered by the
    /// framework when its device or PASID was detached or replaced) is
    /// [`Error::NoSuchPageRequest`], and the unit sees nothing.
    pub fn respond(&self, queue: FaultQueueId, cookie: u64, code: u32) -> Result<()> {
        if !matches!(code, PageResponse::SUCCESS | PageResponse::INVALID | PageResponse::FAILURE) {
            return Err(Error::UnknownBits { what: "page response code", bits: code.into() });
        }
        let _c = self.control();
        let q = self.queue(queue)?;
        let PendingRequest { unit, mut resp, .. } =
            lock(&q.pending).remove(&cookie).ok_or(Error::NoSuchPageRequest { queue: queue.0, cookie })?;
        lock(&q.events).retain(|e| e.cookie != cookie);
        resp.code = code;
        unit.hw.page_response(&resp).into_result().map_err(|e| plugin_err(&unit, "page_response", e))
    }

    /// Answers [`PageResponse::INVALID`] to every outstanding page request `keep` says no to
    /// (read from the queue or not yet), in every fault queue, and drops them: their device or
    /// PASID no longer translates through the HWPT they faulted on (iommufd's
    /// `iommufd_auto_response_faults`). Call after the hardware switch.
    pub(super) fn abandon_page_requests(&self, keep: impl Fn(&PendingRequest) -> bool) {
        let queues: Vec<_> = self.read().queues.values().cloned().collect();
        for q in queues {
            for mut p in q.take_pending(&keep) {
                p.resp.code = PageResponse::INVALID;
                tracing::debug!(queue = %q.id, device = %p.device, pasid = ?p.pasid, group = p.resp.group,
                    "page request abandoned: responding invalid");
                if let Err(e) = p.unit.hw.page_response(&p.resp).into_result() {
                    tracing::error!(unit = %p.unit.name, "page response failed: {e}");
                }
            }
        }
    }
}
