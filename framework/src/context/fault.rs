//! Routing faults: page requests to the fault queue of the HWPT they hit, page responses back
//! to the unit; unrecoverable faults to the context's fault log.

use crate::abi::{Fault, PageResponse};
use crate::error::{Error, Result};
use crate::object::{DeviceId, FaultQueueId};

use super::{lock, plugin_err, Attachment, Context};

/// Longest fault log kept; older records are dropped.
const FAULT_LOG_MAX: usize = 4096;
/// Records taken from a unit per call.
const BATCH: u32 = 256;

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
    /// Takes every recorded fault from every unit and routes it. Returns how many were read.
    pub fn poll_faults(&self) -> Result<usize> {
        let units: Vec<_> = self.read().units.values().cloned().collect();
        let mut total = 0;
        for u in units {
            loop {
                let batch = u.hw.read_faults(BATCH).into_result().map_err(|e| plugin_err(&u, "read_faults", e))?;
                let n = batch.len();
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

    /// Answers a page request ([`PageResponse::SUCCESS`], `INVALID` or `FAILURE`).
    pub fn respond(&self, queue: FaultQueueId, cookie: u64, code: u32) -> Result<()> {
        let q = self.queue(queue)?;
        let (unit, mut resp) = lock(&q.pending)
            .remove(&cookie)
            .ok_or_else(|| Error::Invalid(format!("no page request {cookie} waiting in fault queue {queue}")))?;
        resp.code = code;
        unit.hw.page_response(&resp).into_result().map_err(|e| plugin_err(&unit, "page_response", e))
    }
}
