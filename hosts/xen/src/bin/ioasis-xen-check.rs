//! `ioasis-xen-check`: runs ioasis on a Xen dom0 and prints what held, one line a check.
//!
//! ```text
//! ioasis-xen-check --device 0000:00:03.0 --device 0000:00:04.0 [--spare 0000:00:07.0]
//! ioasis-xen-check --shared --device 0000:01:01.0 --device 0000:01:02.0
//! ```
//!
//! Every line is `check <name> ok <note>` or `check <name> FAIL <why>` (and `scenario ...` for
//! the host-independent scenarios of `ioasis-host-scenarios`); the exit status is 1 when any
//! line says FAIL. With an IOMMU, the first device is assigned to a new domain through the
//! public ioasis API and Xen's own view is checked after each step; the second is assigned by
//! raw domctl (as another toolstack would) to show ioasis refusing it; `--spare` names a slot
//! with no device. Without an IOMMU, negotiation must refuse with Xen's reason. With `--shared`,
//! the two devices are ones Xen puts in one IOMMU group (e.g. behind a conventional PCI bridge),
//! and the checks are about the shared-IOAS constraint that `XEN_DOMCTL_get_device_group`
//! gives. This is the
//! program the real-Xen tests run in dom0 (`tests/on_xen.rs`); on a Xen host it can be run as
//! root in dom0 with the host's own (unused) devices.

use std::process::ExitCode;
use std::sync::Arc;

use ioasis::guest::GuestHost;
use ioasis::{DeviceId, Error, Intent, IntentItem, Target};
use ioasis_xen::{DomainConfig, Sbdf, Xen, XenHost, DOMID_INVALID};

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, kind: &str, name: &str, r: Result<String, String>) {
        match r {
            Ok(note) => println!("{kind} {name} ok {}", note.replace('\n', " | ")),
            Err(why) => {
                self.failed = true;
                println!("{kind} {name} FAIL {}", why.replace('\n', " | "));
            }
        }
    }
}

struct Args {
    devices: Vec<Sbdf>,
    spare: Option<Sbdf>,
    shared: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut devices = Vec::new();
    let mut spare = None;
    let mut shared = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--shared" {
            shared = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{a} needs a value"))?;
        let sbdf = value.parse::<Sbdf>().map_err(|e| format!("{value}: {e}"))?;
        match a.as_str() {
            "--device" => devices.push(sbdf),
            "--spare" => spare = Some(sbdf),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(Args { devices, spare, shared })
}

fn untagged() -> Intent {
    Intent::new(vec![IntentItem::UntaggedDma])
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("info").try_init();
    let Args { devices: sbdfs, spare, shared } = match parse_args() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("usage: ioasis-xen-check --device SBDF [--device SBDF] [--spare SBDF]: {e}");
            return ExitCode::from(2);
        }
    };
    let mut report = Report { failed: false };
    let xen = match Xen::open() {
        Ok(x) => Arc::new(x),
        Err(e) => {
            report.line("check", "open", Err(e.to_string()));
            return ExitCode::from(1);
        }
    };
    let (major, minor) = xen.version();
    let extra = xen.extraversion().unwrap_or_default();
    report.line("check", "open", Ok(format!("Xen {major}.{minor}{extra}")));
    let directio = match xen.physinfo() {
        Ok(p) => {
            report.line(
                "check",
                "physinfo",
                Ok(format!("capabilities {:#x} directio {}", p.capabilities, p.directio())),
            );
            p.directio()
        }
        Err(e) => {
            report.line("check", "physinfo", Err(e.to_string()));
            return ExitCode::from(1);
        }
    };
    let host = match XenHost::new(xen.clone()) {
        Ok(h) => h,
        Err(e) => {
            report.line("check", "host", Err(e.to_string()));
            return ExitCode::from(1);
        }
    };
    let mut devices = Vec::new();
    for (i, s) in sbdfs.iter().enumerate() {
        match host.bind_pci(&format!("dev{i}"), *s) {
            Ok(d) => devices.push(d),
            Err(e) => report.line("check", "bind", Err(format!("{s}: {e}"))),
        }
    }
    if devices.is_empty() {
        report.line("check", "devices", Err("no device given (--device SBDF)".into()));
        return ExitCode::from(1);
    }
    if directio && shared {
        shared_group(&mut report, &host, &xen, &devices, &sbdfs);
    } else if directio {
        with_iommu(&mut report, &host, &xen, &devices, &sbdfs, spare);
    } else {
        without_iommu(&mut report, &host, &devices);
    }
    if let Err(e) = host.context().teardown() {
        report.line("check", "teardown", Err(e.to_string()));
    }
    if report.failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn scenarios(report: &mut Report, host: &XenHost, devices: &[DeviceId]) {
    for o in ioasis_host_scenarios::run_all(host, devices) {
        report.line("scenario", o.name, o.result);
    }
}

fn without_iommu(report: &mut Report, host: &XenHost, devices: &[DeviceId]) {
    let r = match host.context().negotiate(devices[0], &untagged()) {
        Err(Error::Refused(r)) => Ok(r.unmet.iter().map(|u| u.reason.clone()).collect::<Vec<_>>().join("; ")),
        Err(e) => Err(format!("not a refusal: {e}")),
        Ok(c) => Err(format!("granted without an IOMMU: {c}")),
    };
    report.line("check", "refused-without-iommu", r);
    let r = match host.create_guest("no-iommu") {
        Ok(g) => {
            let attach = host.context().attach(devices[0], None, Target::Ioas(g.ioas));
            let destroyed = host.destroy_guest(g);
            match (attach, destroyed) {
                (Err(Error::NoContract { .. }), Ok(())) => Ok("attach refused: no contract".to_string()),
                (a, d) => Err(format!("attach {a:?}, destroy {d:?}")),
            }
        }
        Err(e) => Err(format!("create guest: {e}")),
    };
    report.line("check", "attach-refused-without-iommu", r);
}

fn with_iommu(
    report: &mut Report,
    host: &XenHost,
    xen: &Xen,
    devices: &[DeviceId],
    sbdfs: &[Sbdf],
    spare: Option<Sbdf>,
) {
    scenarios(report, host, devices);
    let ctx = host.context();
    let (dev, sbdf) = (devices[0], sbdfs[0]);

    // Assignment through ioasis is a real assignment: Xen's own queries see it.
    let guest = match host.create_guest("assigned") {
        Ok(g) => g,
        Err(e) => return report.line("check", "create-domain", Err(e.to_string())),
    };
    let dom = guest.id as u16;
    let r = xen.domain_info(dom).map(|i| format!("domain {dom} paused {}", i.paused())).map_err(|e| e.to_string());
    report.line("check", "create-domain", r);
    let r = ctx
        .negotiate(dev, &untagged())
        .and_then(|_| ctx.attach(dev, None, Target::Ioas(guest.ioas)))
        .map(|()| format!("{sbdf} attached to domain {dom}'s IOAS"))
        .map_err(|e| e.to_string());
    report.line("check", "attach", r);
    let r = match xen.test_assign_device(DOMID_INVALID, sbdf) {
        Err(e) if e.errno() == Some(22) => Ok(format!("test_assign_device now says {}", e.errno_name().unwrap_or("?"))),
        Err(e) => Err(format!("unexpected answer {e}")),
        Ok(()) => Err("Xen says the device is still free".into()),
    };
    report.line("check", "xen-sees-assignment", r);
    report.line("check", "mmio-passthrough", mmio_passthrough(host, guest.ioas, sbdf));
    let r = xen
        .device_group(dom, sbdf, 64)
        .map(|g| format!("{} other device(s) of its group in domain {dom}", g.len()))
        .map_err(|e| e.to_string());
    report.line("check", "device-group", r);
    let r = xen.deassign_device(0, sbdf);
    let r = match r {
        Err(e) => Ok(format!("dom0 cannot take it back behind ioasis's back: {}", e.errno_name().unwrap_or("?"))),
        Ok(()) => Err("deassign from dom0 succeeded although the device is in another domain".into()),
    };
    report.line("check", "owned-by-domain", r);

    // A device another toolstack assigned: ioasis refuses it with Xen's reason.
    if let (Some(&other), Some(&other_sbdf)) = (devices.get(1), sbdfs.get(1)) {
        report.line("check", "already-assigned", already_assigned(host, xen, other, other_sbdf));
    }
    // A slot with no device: Xen knows nothing of it.
    if let Some(s) = spare {
        let r = match host.bind_pci("spare", s) {
            Ok(d) => match ctx.negotiate(d, &untagged()) {
                Err(Error::Refused(r)) => Ok(r.unmet.iter().map(|u| u.reason.clone()).collect::<Vec<_>>().join("; ")),
                other => Err(format!("expected a refusal, got {other:?}")),
            },
            Err(e) => Err(e.to_string()),
        };
        report.line("check", "no-such-device", r);
    }
    // An unknown domain.
    let r = match host.adopt_domain(4000) {
        Err(e @ Error::Host { .. }) => Ok(e.to_string()),
        other => Err(format!("expected a host error, got {other:?}")),
    };
    report.line("check", "unknown-domain", r);

    let r = ctx.detach(dev, None).map_err(|e| e.to_string()).and_then(|()| {
        xen.test_assign_device(DOMID_INVALID, sbdf).map(|()| "free again".to_string()).map_err(|e| e.to_string())
    });
    report.line("check", "detach", r);
    let r = host.destroy_guest(guest).map_err(|e| e.to_string()).and_then(|()| match xen.domain_info(dom) {
        Err(e) if e.errno() == Some(3) => Ok(format!("domain {dom} gone ({})", e.errno_name().unwrap_or("?"))),
        other => Err(format!("domain {dom} still there: {other:?}")),
    });
    report.line("check", "destroy", r);
}

fn already_assigned(host: &XenHost, xen: &Xen, dev: DeviceId, sbdf: Sbdf) -> Result<String, String> {
    let other = xen.create_domain(&DomainConfig::pv_with_iommu()).map_err(|e| format!("raw createdomain: {e}"))?;
    let result = (|| {
        xen.assign_device(other, sbdf).map_err(|e| format!("raw assign_device: {e}"))?;
        match host.context().negotiate(dev, &untagged()) {
            Err(Error::Refused(r)) => {
                let reasons = r.unmet.iter().map(|u| u.reason.clone()).collect::<Vec<_>>().join("; ");
                if reasons.contains("Xen says it is assigned to a domain already:") {
                    Ok(reasons)
                } else {
                    Err(format!("refused for another reason: {reasons}"))
                }
            }
            other => Err(format!("expected a refusal, got {other:?}")),
        }
    })();
    let _ = xen.deassign_device(other, sbdf);
    let _ = xen.destroy_domain(other);
    result
}

/// BAR 0 of `sbdf` as dom0's sysfs gives it: (start, length).
fn bar0(sbdf: Sbdf) -> Result<(u64, u64), String> {
    let path = format!("/sys/bus/pci/devices/{sbdf}/resource");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let first = text.lines().next().ok_or_else(|| format!("{path} is empty"))?;
    let mut f = first.split_whitespace().map(|w| u64::from_str_radix(w.trim_start_matches("0x"), 16));
    match (f.next(), f.next()) {
        (Some(Ok(start)), Some(Ok(end))) if end > start => Ok((start, end - start + 1)),
        _ => Err(format!("{path}: no memory BAR 0 in {first:?}")),
    }
}

/// Maps the device's BAR 0 into the domain's IOAS at the same address (iomem_permission +
/// memory_mapping), checks the translation, and unmaps it again.
fn mmio_passthrough(host: &XenHost, ioas: ioasis::IoasId, sbdf: Sbdf) -> Result<String, String> {
    let (start, len) = bar0(sbdf)?;
    let ctx = host.context();
    let iova = ctx
        .map(ioas, Some(ioasis::Iova(start)), ioasis::PhysAddr(start), len, ioasis::Prot::RW)
        .map_err(|e| format!("map BAR 0 {start:#x}+{len:#x}: {e}"))?;
    let hwpt = ctx.ioas_hwpts(ioas).map_err(|e| e.to_string())?.first().copied().ok_or("no HWPT for the IOAS")?;
    let t = ctx.translate(hwpt, iova).map_err(|e| e.to_string())?;
    if t.map(|t| t.pa.raw()) != Some(start) {
        return Err(format!("translation of {iova} is {t:?}"));
    }
    let n = ctx.unmap(ioas, iova, len, ioasis::UnmapMode::Exact).map_err(|e| format!("unmap BAR 0: {e}"))?;
    Ok(format!("BAR 0 {start:#x}+{len:#x} mapped and unmapped ({n:#x} bytes)"))
}

/// Two devices Xen groups together: the contract names the peer, attaching them to two
/// domains is refused by ioasis before Xen is asked, one domain takes both, and Xen's
/// `get_device_group` on that domain then lists the peer.
fn shared_group(report: &mut Report, host: &XenHost, xen: &Xen, devices: &[DeviceId], sbdfs: &[Sbdf]) {
    let ([a, b], [sa, sb]) = (devices, sbdfs) else {
        return report.line("check", "shared-args", Err("--shared needs exactly two devices".into()));
    };
    let ctx = host.context();
    let r = ctx.negotiate(*a, &untagged()).map_err(|e| e.to_string()).and_then(|c| match c.shared_ioas {
        Some(s) if s.peers.iter().any(|(p, _)| p == b) => {
            Ok(format!("{sa} must share an IOAS with {sb} ({})", s.boundary))
        }
        other => Err(format!("contract names no shared IOAS with {sb}: {other:?}")),
    });
    report.line("check", "group-in-contract", r);
    if let Err(e) = ctx.negotiate(*b, &untagged()) {
        return report.line("check", "negotiate-peer", Err(e.to_string()));
    }
    let (x, y) = match (host.create_guest("x"), host.create_guest("y")) {
        (Ok(x), Ok(y)) => (x, y),
        (x, y) => return report.line("check", "create-domains", Err(format!("{x:?} {y:?}"))),
    };
    let r = ctx.attach(*a, None, Target::Ioas(x.ioas)).map_err(|e| e.to_string());
    report.line("check", "attach-first", r.map(|()| format!("{sa} assigned to domain {}", x.id)));
    let r = match ctx.attach(*b, None, Target::Ioas(y.ioas)) {
        Err(e @ Error::MustShareIoas { .. }) => match xen.test_assign_device(DOMID_INVALID, *sb) {
            Ok(()) => Ok(format!("refused before Xen was asked: {e}")),
            Err(x) => Err(format!("refused, but Xen says {sb} is taken: {x}")),
        },
        other => Err(format!("expected MustShareIoas, got {other:?}")),
    };
    report.line("check", "peer-elsewhere-refused", r);
    let r = ctx.attach(*b, None, Target::Ioas(x.ioas)).map_err(|e| e.to_string()).and_then(|()| {
        let dom = x.id as u16;
        match xen.device_group(dom, *sa, 64) {
            Ok(g) if g.contains(sb) => Ok(format!("get_device_group(domain {dom}, {sa}) lists {sb}")),
            other => Err(format!("get_device_group(domain {dom}, {sa}) = {other:?}")),
        }
    });
    report.line("check", "peer-same-domain", r);
    let r = ctx
        .detach(*a, None)
        .and_then(|()| ctx.detach(*b, None))
        .and_then(|()| host.destroy_guest(x))
        .and_then(|()| host.destroy_guest(y))
        .map(|()| "both detached, both domains destroyed".to_string())
        .map_err(|e| e.to_string());
    report.line("check", "shared-cleanup", r);
}
