//! ioasis on a real Xen 4.17: `ioasis-xen-check` (src/bin/ioasis-xen-check.rs) runs in dom0 of
//! Xen under QEMU (TCG, emulated VT-d) and drives the adapter through the public ioasis API.
//! Skips (saying why) without `scripts/fetch-xen.sh`'s artifacts or QEMU, except under `CI=true`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{testbed_or_skip, Run, RunSpec};

fn check() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ioasis-xen-check"))
}

/// The `check`/`scenario` lines with the given status, by name.
fn lines<'a>(run: &'a Run, status: &str) -> Vec<(&'a str, &'a str)> {
    run.stdout_lines()
        .into_iter()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            let (_kind, name, st, note) = (parts.next()?, parts.next()?, parts.next()?, parts.next().unwrap_or(""));
            (st == status).then_some((name, note))
        })
        .collect()
}

fn note<'a>(run: &'a Run, name: &str) -> &'a str {
    lines(run, "ok").into_iter().find(|(n, _)| *n == name).map(|(_, note)| note).unwrap_or_else(|| {
        panic!("no passing `{name}` line; stdout: {:#?}", run.stdout_lines());
    })
}

#[test]
fn devices_are_really_assigned_to_a_domain_through_ioasis() {
    let Some(bed) = testbed_or_skip() else { return };
    let run = bed
        .run(&RunSpec {
            program: check(),
            args: vec!["--device", "0000:00:03.0", "--device", "0000:00:04.0", "--spare", "0000:00:07.0"],
            iommu: true,
            devices: vec!["e1000,addr=03.0", "edu,addr=04.0"],
            timeout: Duration::from_secs(180),
        })
        .expect("boot with VT-d");
    eprintln!("real Xen with VT-d: {:.1} s\n{}", run.elapsed().as_secs_f64(), run.stdout());
    assert_eq!(lines(&run, "FAIL"), vec![], "failing checks; stdout: {:#?}", run.stdout_lines());
    assert_eq!(run.exit_code(), 0);
    assert!(note(&run, "open").starts_with("Xen 4.17"));
    assert!(note(&run, "physinfo").ends_with("directio true"));
    // The host-independent scenarios, the same bodies as on bare metal and KVM.
    for s in ioasis_host_scenarios::SCENARIOS {
        note(&run, s.name);
    }
    assert!(note(&run, "refusals-have-reasons").contains("dirty tracking: Xen 4.17 gives dom0 no dirty log"));
    assert!(note(&run, "create-domain").contains("paused true"));
    assert!(note(&run, "xen-sees-assignment").contains("EINVAL"));
    assert!(note(&run, "mmio-passthrough").contains("mapped and unmapped"));
    assert!(note(&run, "owned-by-domain").contains("EINVAL"));
    assert!(note(&run, "already-assigned").contains("assigned to a domain already"));
    assert!(note(&run, "no-such-device").contains("no such PCI device"));
    assert!(note(&run, "unknown-domain").contains("no Xen domain 4000"));
    assert_eq!(note(&run, "detach"), "free again");
    assert!(note(&run, "destroy").contains("ESRCH"));
    // Xen's log agrees: the device went to the domain and came back.
    assert!(run.log().contains("I/O virtualisation enabled"));
}

#[test]
fn without_an_iommu_assignment_is_refused_with_xens_reason() {
    let Some(bed) = testbed_or_skip() else { return };
    let run = bed
        .run(&RunSpec {
            program: check(),
            args: vec!["--device", "0000:00:03.0"],
            iommu: false,
            devices: vec!["e1000,addr=03.0"],
            timeout: Duration::from_secs(180),
        })
        .expect("boot without an IOMMU");
    assert_eq!(lines(&run, "FAIL"), vec![], "failing checks; stdout: {:#?}", run.stdout_lines());
    assert!(note(&run, "physinfo").ends_with("directio false"));
    assert!(note(&run, "refused-without-iommu").contains("Xen runs without an IOMMU"));
    assert!(note(&run, "attach-refused-without-iommu").contains("no contract"));
}

#[test]
fn devices_xen_groups_together_must_share_one_domain() {
    let Some(bed) = testbed_or_skip() else { return };
    let run = bed
        .run(&RunSpec {
            program: check(),
            args: vec!["--shared", "--device", "0000:01:01.0", "--device", "0000:01:02.0"],
            iommu: true,
            // A conventional PCI bridge: VT-d sees the bridge's requester id for both devices,
            // so Xen puts them in one group.
            devices: vec![
                "pci-bridge,id=br1,chassis_nr=1,addr=05.0",
                "edu,bus=br1,addr=01.0",
                "e1000,bus=br1,addr=02.0",
            ],
            timeout: Duration::from_secs(180),
        })
        .expect("boot with VT-d and a PCI bridge");
    eprintln!("real Xen, one group behind a PCI bridge: {:.1} s\n{}", run.elapsed().as_secs_f64(), run.stdout());
    assert_eq!(lines(&run, "FAIL"), vec![], "failing checks; stdout: {:#?}", run.stdout_lines());
    assert_eq!(run.exit_code(), 0);
    assert!(note(&run, "group-in-contract").contains("must share an IOAS with 0000:01:02.0"));
    assert!(note(&run, "peer-elsewhere-refused").contains("refused before Xen was asked"));
    assert!(note(&run, "peer-same-domain").contains("lists 0000:01:02.0"));
    note(&run, "shared-cleanup");
}
