//! The real-Xen testbed's own tests: Xen 4.17 and a Linux dom0 under QEMU run `xen-probe`
//! (src/bin/xen-probe.rs) with and without an emulated VT-d. They skip (pass, saying why) when
//! `scripts/fetch-xen.sh` has not been run or QEMU is missing, except under `CI=true`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{testbed_or_skip, RunSpec};

fn probe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xen-probe"))
}

/// Asserts what xen-probe prints on a working dom0.
fn assert_probe_output(run: &common::Run) {
    let lines = run.stdout_lines();
    assert_eq!(run.exit_code(), 0, "xen-probe failed; its stdout: {lines:?}");
    assert!(lines.contains(&"capabilities control_d"), "stdout: {lines:?}");
    assert!(lines.contains(&"xen_version 4.17"), "stdout: {lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("xen_extraversion .")), "stdout: {lines:?}");
    // Nothing but the program's own lines: no console noise slipped in.
    assert!(
        lines.iter().all(|l| ["capabilities ", "xen_version ", "xen_extraversion "].iter().any(|p| l.starts_with(p))),
        "stdout: {lines:?}"
    );
}

#[test]
fn dom0_program_runs_with_the_iommu() {
    let Some(bed) = testbed_or_skip() else { return };
    let run = bed
        .run(&RunSpec {
            program: probe(),
            args: vec![],
            iommu: true,
            devices: vec!["e1000,addr=03.0", "edu,addr=04.0"],
            timeout: Duration::from_secs(120),
        })
        .expect("boot with VT-d");
    eprintln!("boot with VT-d: {:.1} s in all, /init after {:?}", run.elapsed().as_secs_f64(), run.init_after());
    assert_probe_output(&run);
    assert!(run.log().contains("I/O virtualisation enabled"), "Xen did not enable the IOMMU");
    assert!(run.log().contains("Interrupt Remapping enabled"), "Xen did not enable interrupt remapping");
}

#[test]
fn dom0_program_runs_without_an_iommu() {
    let Some(bed) = testbed_or_skip() else { return };
    let run = bed
        .run(&RunSpec {
            program: probe(),
            args: vec![],
            iommu: false,
            devices: vec![],
            timeout: Duration::from_secs(120),
        })
        .expect("boot without an IOMMU");
    eprintln!("boot without an IOMMU: {:.1} s in all, /init after {:?}", run.elapsed().as_secs_f64(), run.init_after());
    assert_probe_output(&run);
    assert!(run.log().contains("I/O virtualisation disabled"), "Xen enabled an IOMMU that is not there");
}

/// Arguments reach the program intact (spaces, quotes), its exit status comes back, its stderr
/// lands in the console log and not in its stdout, and a long stdout arrives whole. The program
/// is the host's /bin/sh (a dynamically linked ELF: its libraries are copied in).
#[test]
fn arguments_exit_status_and_stderr() {
    let Some(bed) = testbed_or_skip() else { return };
    let script = r#"printf '%s\n' "$@"; echo "to stderr" >&2; i=0; while [ $i -lt 2000 ]; do echo "line $i"; i=$((i+1)); done; exit 7"#;
    let run = bed
        .run(&RunSpec {
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c", script, "sh", "a b", "it's", ""],
            iommu: false,
            devices: vec![],
            timeout: Duration::from_secs(120),
        })
        .expect("boot");
    eprintln!(
        "boot with 2000 lines of output: {:.1} s in all, /init after {:?}",
        run.elapsed().as_secs_f64(),
        run.init_after()
    );
    assert_eq!(run.exit_code(), 7);
    let lines = run.stdout_lines();
    assert_eq!(&lines[..3], &["a b", "it's", ""]);
    let numbered: Vec<String> = (0..2000).map(|i| format!("line {i}")).collect();
    assert_eq!(&lines[3..], &numbered[..]);
    assert!(run.log().contains("to stderr"));
}

/// A boot that does not finish in time is killed at the deadline, and the error names the saved
/// log.
#[test]
fn a_run_past_its_timeout_is_killed_and_its_log_saved() {
    let Some(bed) = testbed_or_skip() else { return };
    let err = bed
        .run(&RunSpec {
            program: probe(),
            args: vec![],
            iommu: false,
            devices: vec![],
            timeout: Duration::from_secs(2),
        })
        .err()
        .expect("a 2 s run cannot reach /init");
    let common::TestbedError::Boot { reason, log, .. } = &err else { panic!("unexpected error: {err}") };
    assert!(reason.contains("timed out"), "{reason}");
    let log = log.as_ref().expect("log saved");
    eprintln!("saved: {}", log.display());
    let text = std::fs::read_to_string(log).expect("saved log");
    assert!(text.contains("(XEN)"), "the saved log has no Xen console output");
    assert!(err.to_string().contains(&log.display().to_string()));
    // Deliberate failure: do not leave its log for CI to keep.
    std::fs::remove_file(log).expect("remove the saved log");
}
