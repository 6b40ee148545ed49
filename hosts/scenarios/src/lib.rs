//! Scenarios that drive a host adapter through the public ioasis API only.
//!
//! Each scenario takes a [`GuestHost`] — bare metal, KVM or Xen — and the devices it may use,
//! and checks what hypervisor-side code relies on: a device's intent is negotiated before it is
//! attached, attaching it to a guest's IOAS makes the guest's space its DMA space, a guest
//! cannot be destroyed under an attached device, a device moves between guests only by
//! `replace`, and refusals say why. No host type appears in a scenario body, so one body runs on
//! every host; the host-specific checks (did Xen really assign the device?) live beside each
//! adapter.

use ioasis::guest::{Guest, GuestHost};
use ioasis::{DeviceId, Error, Intent, IntentItem, Target};

/// One scenario's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The scenario's name.
    pub name: &'static str,
    /// `Ok(note)` or `Err(what failed)`.
    pub result: Result<String, String>,
}

/// A scenario: a name and a body.
pub struct Scenario {
    /// Short name.
    pub name: &'static str,
    /// What it checks.
    pub about: &'static str,
    /// The body: `Ok(note)` when every check held.
    pub run: fn(&dyn GuestHost, &[DeviceId]) -> Result<String, String>,
}

/// Every scenario, in the order [`run_all`] runs them.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "attach-detach",
        about: "negotiate untagged DMA, attach to a guest's IOAS, guest busy while attached, detach, destroy",
        run: attach_detach,
    },
    Scenario {
        name: "move-between-guests",
        about: "a second attach is refused; replace moves the device to another guest",
        run: move_between_guests,
    },
    Scenario {
        name: "refusals-have-reasons",
        about: "every intent item is granted or refused with a reason; attach needs a grant",
        run: refusals_have_reasons,
    },
];

/// Runs every scenario on `host` with `devices` (at least two give every scenario something to
/// do). A scenario that fails leaves the host as it found it where it can (detach, destroy).
pub fn run_all(host: &dyn GuestHost, devices: &[DeviceId]) -> Vec<Outcome> {
    SCENARIOS.iter().map(|s| Outcome { name: s.name, result: (s.run)(host, devices) }).collect()
}

fn untagged() -> Intent {
    Intent { items: vec![IntentItem::UntaggedDma] }
}

fn first(devices: &[DeviceId]) -> Result<DeviceId, String> {
    devices.first().copied().ok_or_else(|| "the host offers no assignable device".to_string())
}

/// Cleans up after a scenario whatever happened: detaches `dev` and destroys `guests`.
fn cleanup(host: &dyn GuestHost, dev: DeviceId, guests: &[Guest]) {
    let ctx = host.context();
    if let Ok(Some(_)) = ctx.attachment(dev, None) {
        let _ = ctx.detach(dev, None);
    }
    for g in guests {
        let _ = host.destroy_guest(*g);
    }
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn attach_detach(host: &dyn GuestHost, devices: &[DeviceId]) -> Result<String, String> {
    let dev = first(devices)?;
    let ctx = host.context();
    let guest = host.create_guest("scenario-attach").map_err(|e| format!("create guest: {e}"))?;
    let body = || -> Result<String, String> {
        let contract = ctx.negotiate(dev, &untagged()).map_err(|e| format!("negotiate untagged DMA: {e}"))?;
        ctx.attach(dev, None, Target::Ioas(guest.ioas)).map_err(|e| format!("attach: {e}"))?;
        let now = ctx.attached_ioas(dev, None).map_err(|e| e.to_string())?;
        check(now == Some(guest.ioas), || format!("attached IOAS is {now:?}, not the guest's {}", guest.ioas))?;
        match host.destroy_guest(guest) {
            Err(Error::Busy { .. }) => {}
            Err(e) => return Err(format!("destroying a guest with a device attached: wrong error {e}")),
            Ok(()) => return Err("a guest with a device attached was destroyed".into()),
        }
        ctx.detach(dev, None).map_err(|e| format!("detach: {e}"))?;
        let now = ctx.attached_ioas(dev, None).map_err(|e| e.to_string())?;
        check(now.is_none(), || format!("still attached to {now:?} after detach"))?;
        host.destroy_guest(guest).map_err(|e| format!("destroy guest: {e}"))?;
        Ok(format!("contract: {contract}"))
    };
    let r = body();
    if r.is_err() {
        cleanup(host, dev, &[guest]);
    }
    r
}

fn move_between_guests(host: &dyn GuestHost, devices: &[DeviceId]) -> Result<String, String> {
    let dev = first(devices)?;
    let ctx = host.context();
    let a = host.create_guest("scenario-a").map_err(|e| format!("create guest a: {e}"))?;
    let b = match host.create_guest("scenario-b") {
        Ok(b) => b,
        Err(e) => {
            cleanup(host, dev, &[a]);
            return Err(format!("create guest b: {e}"));
        }
    };
    let body = || -> Result<String, String> {
        ctx.negotiate(dev, &untagged()).map_err(|e| format!("negotiate: {e}"))?;
        ctx.attach(dev, None, Target::Ioas(a.ioas)).map_err(|e| format!("attach to a: {e}"))?;
        match ctx.attach(dev, None, Target::Ioas(b.ioas)) {
            Err(Error::Busy { .. }) => {}
            Err(e) => return Err(format!("second attach: wrong error {e}")),
            Ok(()) => return Err("a second attach succeeded without replace".into()),
        }
        let now = ctx.attached_ioas(dev, None).map_err(|e| e.to_string())?;
        check(now == Some(a.ioas), || format!("a refused attach changed the attachment to {now:?}"))?;
        ctx.replace(dev, None, Target::Ioas(b.ioas)).map_err(|e| format!("replace a -> b: {e}"))?;
        let now = ctx.attached_ioas(dev, None).map_err(|e| e.to_string())?;
        check(now == Some(b.ioas), || format!("after replace attached to {now:?}, not b"))?;
        host.destroy_guest(a).map_err(|e| format!("destroy a (nothing attached): {e}"))?;
        ctx.detach(dev, None).map_err(|e| format!("detach: {e}"))?;
        host.destroy_guest(b).map_err(|e| format!("destroy b: {e}"))?;
        Ok("attach, refused second attach, replace, detach".into())
    };
    let r = body();
    if r.is_err() {
        cleanup(host, dev, &[a, b]);
    }
    r
}

fn refusals_have_reasons(host: &dyn GuestHost, devices: &[DeviceId]) -> Result<String, String> {
    let dev = first(devices)?;
    let ctx = host.context();
    let items = vec![IntentItem::UntaggedDma, IntentItem::DirtyTracking, IntentItem::PageFaults];
    let mut refused = Vec::new();
    for item in &items {
        match ctx.negotiate(dev, &Intent { items: vec![*item] }) {
            Ok(_) => {}
            Err(Error::Refused(r)) => {
                check(!r.unmet.is_empty(), || format!("{item} refused with no unmet item named"))?;
                for u in &r.unmet {
                    let it = u.item.map_or_else(|| "an unknown item".to_string(), |i| i.to_string());
                    check(!u.reason.trim().is_empty(), || format!("{it} refused without a reason"))?;
                    refused.push(format!("{it}: {}", u.reason));
                }
            }
            Err(e) => return Err(format!("negotiating {item}: not a refusal but {e}")),
        }
    }
    // Whatever the host refused, attach honours the device's contract (the last one granted; a
    // refused negotiation changes nothing): without untagged DMA in it, attach is refused.
    let guest = host.create_guest("scenario-refusals").map_err(|e| format!("create guest: {e}"))?;
    let _ = ctx.negotiate(dev, &untagged());
    let contract = ctx.contract(dev).map_err(|e| e.to_string())?;
    let granted = contract.is_some_and(|c| c.grants(|i| *i == IntentItem::UntaggedDma));
    let r = match ctx.attach(dev, None, Target::Ioas(guest.ioas)) {
        Ok(()) if granted => ctx.detach(dev, None).map_err(|e| format!("detach: {e}")),
        Ok(()) => Err("attach succeeded although untagged DMA was refused".into()),
        Err(e) if granted => Err(format!("attach after a granted contract failed: {e}")),
        Err(_) => Ok(()),
    };
    let d = host.destroy_guest(guest).map_err(|e| format!("destroy guest: {e}"));
    r.and(d)?;
    Ok(if refused.is_empty() { "everything granted".into() } else { format!("refused: {}", refused.join("; ")) })
}
