//! The `ioasis` binary end to end, on the bundled examples.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn ioasis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ioasis")).args(args).current_dir(root()).output().expect("runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A cdylib of the workspace (a dev-dependency), built beside this test binary's `deps` folder.
fn cdylib(stem: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let file = format!("lib{stem}.so");
    [deps.join(&file), deps.parent().unwrap().join(&file)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{file} is built (a dev-dependency)"))
}

fn mock_so() -> PathBuf {
    cdylib("ioasis_mock")
}

#[test]
fn plugins_lists_builtins_and_loaded_with_origin_and_capabilities() {
    let so = mock_so();
    let o = ioasis(&["plugins", "--plugin", &format!("mock-so={}", so.display())]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("mock  0.1.0  [built-in]"), "{t}");
    assert!(t.contains(&format!("mock-so  0.1.0  [{}]", so.display())), "{t}");
    assert!(t.contains("features: pasid,nesting,dirty,page-faults,ats,coherency,enqcmd,identity"), "{t}");
}

#[test]
fn negotiate_prints_a_contract_or_a_refusal() {
    let o = ioasis(&["negotiate", "examples/intents/nic-with-pasid.toml"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("PASIDs:      0x1..=0xffff"), "{t}");
    assert!(t.contains("- dirty tracking"), "{t}");
    let o = ioasis(&["negotiate", "examples/intents/accelerator-on-old-unit.toml"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("supports 16-bit PASIDs, 20 asked"), "{t}");
    assert!(t.contains("no nested translation"), "{t}");
    assert!(t.contains("(would grant: untagged DMA)"), "{t}");
}

#[test]
fn run_executes_a_scenario() {
    let o = ioasis(&["run", "examples/scenarios/two-functions-without-acs.toml"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("must share one IOAS"), "{t}");
    assert!(t.contains("0 failed"), "{t}");
}

#[test]
fn a_failing_step_fails_the_run() {
    let dir = std::env::temp_dir().join(format!("ioasis-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(
        &f,
        "[[unit]]\nname = \"u0\"\nplugin = \"mock\"\nbase = 0xfed00000\n\n[[step]]\ndo = \"alloc-ioas\"\nname = \"A\"\n\n\
         [[step]]\ndo = \"map\"\nioas = \"A\"\niova = 0x1000\npa = 0x1000\nlen = 0x1000\nexpect = \"error\"\n",
    )
    .unwrap();
    let o = ioasis(&["run", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("FAIL   2 (line  10)"), "{}", text(&o));
    // A malformed file names the file, the line and the key.
    std::fs::write(&f, "[[unit]]\nname = \"u0\"\nplugin = \"mock\"\nbase = \"high\"\n").unwrap();
    let o = ioasis(&["run", f.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains(&format!("{}:4:", f.display())) && t.contains("unit[0].base"), "{t}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refusing_an_incompatible_plugin_is_a_usage_error() {
    let o = ioasis(&["plugins", "--plugin", "/nonexistent/libx.so"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o).contains("/nonexistent/libx.so cannot be a plugin"), "{}", text(&o));
    assert!(text(&o).contains("No such file or directory"), "{}", text(&o));
    // The same in an isolated conformance run, where only the child opens the file.
    let old = cdylib("ioasis_fixture_abi_old").display().to_string();
    let o = ioasis(&["--plugin", &old, "conformance"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("was built against ioasis plugin interface 0.0, this host speaks"), "{}", text(&o));
}

#[test]
fn a_plugin_with_a_reserved_or_taken_name_is_refused_unless_renamed() {
    let so = mock_so();
    let so = so.to_str().unwrap();
    let o = ioasis(&["plugins", "--plugin", so]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("the name `mock` is reserved") && t.contains("--plugin NAME=PATH"), "{t}");
    let twice = format!("acme-mock={so}");
    let o = ioasis(&["plugins", "--plugin", &twice, "--plugin", &twice]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains(&format!("two plugins named `acme-mock`: {so} and {so}")), "{t}");
    let o = ioasis(&["plugins", "--plugin", &format!("Acme={so}")]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("`Acme` is not a plugin name"), "{}", text(&o));
}

#[test]
fn conformance_runs_over_the_bundled_plugins() {
    let o = ioasis(&["conformance", "--seed", "3"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("invalidation") && t.contains("teardown"), "{t}");
    let o = ioasis(&["conformance", "--format", "json", "--filter", "teardown"]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains("\"outcome\": \"passed\""), "{t}");
}

#[test]
fn conformance_fails_a_broken_backend_and_writes_junit() {
    let dir = std::env::temp_dir().join(format!("ioasis-junit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junit = dir.join("out.xml");
    let o =
        ioasis(&["conformance", "--unit-params", "defect = \"ignore-read-only\"", "--junit", junit.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("FAILED mock permissions/read-only"), "{t}");
    assert!(
        t.contains(
            "reproduce: ioasis conformance --backend mock --unit-params 'defect = \"ignore-read-only\"' \
             --filter permissions/read-only --seed 0"
        ),
        "{t}"
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(xml.contains("<testsuite name=\"mock\"") && xml.contains("<failure message="), "{xml}");
    std::fs::remove_dir_all(&dir).unwrap();
    let o = ioasis(&["cases"]);
    assert!(text(&o).contains("fail-nth/map-and-cut"), "{}", text(&o));
}

#[test]
fn conformance_self_test_runs_every_broken_variant() {
    let o = ioasis(&["conformance", "--self-test", "--format", "json", "--backend", "mock"]);
    let t = text(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {t}"));
    let rows = v.as_array().unwrap_or_else(|| panic!("not an array: {t}"));
    assert_eq!(rows.len(), ioasis_conformance::variants::MOCK.len(), "{t}");
    for row in rows {
        assert_eq!(row["plugin"], "mock", "{row}");
        let expected = row["expected_category"].as_str().unwrap_or_else(|| panic!("{row}"));
        let caught: Vec<&str> = row["caught_in"].as_array().unwrap().iter().filter_map(|c| c.as_str()).collect();
        assert!(caught.contains(&expected), "{} not caught in {expected}: {caught:?}", row["variant"]);
    }
    assert!(rows.iter().any(|r| r["variant"] == "no-invalidation-wait"), "{t}");
    assert_eq!(o.status.code(), Some(0), "{t}");
    let o = ioasis(&["conformance", "--self-test", "--backend", "mock"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("no-invalidation-wait") && t.contains("0 missed"), "{t}");
    let o = ioasis(&["conformance", "--self-test", "--filter", "map"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn conformance_runs_on_a_vendor_cdylib_alone() {
    let so = mock_so();
    let o = ioasis(&["conformance", "--plugin", &format!("mock-so={}", so.display()), "--filter", "map-unmap"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("pass mock-so map-unmap/"), "{t}");
    assert!(!t.contains("pass mock map-unmap/"), "built-ins must not run when a plugin is given: {t}");
}

#[test]
fn conformance_in_which_no_case_was_selected_fails_with_exit_3() {
    for format in ["human", "json"] {
        let o = ioasis(&["conformance", "--filter", "no-such-case", "--format", format]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(3), "{t}");
        assert!(t.contains("error: no case was selected (see `ioasis cases`)"), "{t}");
    }
    // The results are still printed: an empty JSON report.
    let o = ioasis(&["conformance", "--filter", "no-such-case", "--format", "json"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"results\": []"), "{}", text(&o));
}

#[test]
fn conformance_on_a_plugin_without_a_hardware_model_fails_with_exit_3_saying_so() {
    let so = cdylib("ioasis_fixture_vendor_acme");
    for format in ["human", "junit"] {
        let o = ioasis(&["conformance", "--plugin", so.to_str().unwrap(), "--filter", "map-unmap", "--format", format]);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(3), "{t}");
        assert!(
            t.contains(
                "error: nothing could run, every case was skipped: plugin `acme-iommu`: plugin `acme-iommu` \
                 exports no hardware model: it runs only"
            ),
            "{t}"
        );
    }
    // The JUnit report is still written, every case skipped.
    let o = ioasis(&["conformance", "--plugin", so.to_str().unwrap(), "--filter", "map-unmap", "--format", "junit"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("<skipped message=\"plugin `acme-iommu` exports no hardware model"),
        "{}",
        text(&o)
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("skipped=\"0\""), "{}", text(&o));
}

#[test]
fn conformance_documents_its_exit_statuses() {
    let o = ioasis(&["conformance", "--help"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for line in
        ["0  every case that ran passed", "1  some case failed", "2  usage or load error", "3  nothing could run"]
    {
        assert!(t.contains(line), "{line}: {t}");
    }
    let t = text(&ioasis(&["--help"]));
    assert!(t.contains("Exit status:") && t.contains("3  conformance only: nothing could run"), "{t}");
}

#[test]
fn conformance_runs_vtd_generations_by_name() {
    let o = ioasis(&[
        "conformance",
        "--backend",
        "vtd",
        "--unit-model",
        "generation = \"legacy-no-qi\"",
        "--filter",
        "invalidation",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("pass vtd invalidation/no-stale-iotlb"), "{t}");
    assert!(!t.contains(" mock "), "{t}");
    let o = ioasis(&["conformance", "--backend", "nosuch"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn conformance_runs_on_qemu_or_says_why_not() {
    // Without QEMU in PATH: a clear usage error.
    let empty = std::env::temp_dir().join(format!("ioasis-no-qemu-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ioasis"))
        .args(["conformance", "--platform", "qemu", "--filter", "capabilities"])
        .env("PATH", &empty)
        .current_dir(root())
        .output()
        .expect("runs");
    std::fs::remove_dir_all(&empty).unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("qemu-system-x86_64 is not installed"), "{}", text(&o));
    // Options that do not go together.
    let o = ioasis(&["conformance", "--qemu-profile", "vtd-scalable", "--filter", "capabilities"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = ioasis(&["conformance", "--platform", "qemu", "--unit-model", "generation = \"legacy\""]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    let bin = "qemu-system-x86_64";
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
    if !found {
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "missing prerequisite under CI=true: {bin}");
        eprintln!("SKIP: {bin} is not installed (scripts/setup-debian.sh installs it)");
        return;
    }
    let o =
        ioasis(&["conformance", "--platform", "qemu", "--qemu-profile", "vtd-scalable", "--filter", "capabilities"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("platform: QEMU vtd-scalable"), "{t}");
    assert!(t.contains("pass vtd capabilities/widths-and-formats: VT-d 1.0 scalable"), "{t}");
    assert!(
        t.contains("skip mock capabilities/widths-and-formats: QEMU profile vtd-scalable is for plugin `vtd`"),
        "{t}"
    );
}

/// The JUnit file of a run: complete (it ends its root element) with `n` test cases.
fn junit_is_complete(path: &Path, n: usize) -> String {
    let x = std::fs::read_to_string(path).expect("the JUnit file is written");
    assert!(x.trim_end().ends_with("</testsuites>"), "{x}");
    assert_eq!(x.matches("<testcase ").count(), n, "{x}");
    x
}

/// The fixture panics in `Hwpt::map` with no guard of its own: the framework's glue contains
/// the panic in the plugin's process, the plugin is out of service from then on, and each case
/// after it runs in a fresh child with a fresh load.
#[test]
fn a_plugin_that_panics_without_a_guard_fails_its_cases_and_the_run_survives() {
    let so = cdylib("ioasis_fixture_panics");
    let junit = std::env::temp_dir().join(format!("ioasis-panics-{}.xml", std::process::id()));
    let o = ioasis(&["--plugin", &so.display().to_string(), "conformance", "--junit", &junit.display().to_string()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("FAIL fixture-panics map-unmap/"), "{t}");
    assert!(t.contains("plugin panicked in map: fixture: map of"), "the panic is the reason: {t}");
    assert!(!t.contains("the process died") && !t.contains("not run"), "contained, and later cases ran: {t}");
    assert!(t.contains("pass fixture-panics negotiation/"), "cases that never map still pass: {t}");
    let failed = t.lines().filter(|l| l.contains("FAIL fixture-panics")).count();
    assert!(failed > 5, "every case that maps fails by itself, after a fresh start: {t}");
    let x = junit_is_complete(&junit, ioasis_cases());
    assert!(x.contains("plugin panicked in map"), "{x}");
    std::fs::remove_file(&junit).unwrap();
    // In one process (no isolation) the run survives too; after the first panic the plugin's
    // cases fail unrun, naming where it went out of service.
    let o = ioasis(&["--plugin", &so.display().to_string(), "conformance", "--isolation", "none"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("plugin panicked in map: fixture: map of"), "{t}");
    assert!(t.contains("not run: the plugin is out of service since case"), "{t}");
    assert!(t.contains("summary") || t.contains("passed"), "the summary is printed: {t}");
}

#[test]
fn a_plugin_that_never_returns_fails_its_cases_as_hung_and_the_run_ends() {
    let so = cdylib("ioasis_fixture_hangs");
    let junit = std::env::temp_dir().join(format!("ioasis-hangs-{}.xml", std::process::id()));
    let o = ioasis(&[
        "--plugin",
        &so.display().to_string(),
        "conformance",
        "--case-timeout",
        "2",
        "--junit",
        &junit.display().to_string(),
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("FAIL fixture-hangs dirty/writes-reported-and-cleared: no result within 2 s"), "{t}");
    assert!(t.contains("pass fixture-hangs map-unmap/"), "{t}");
    junit_is_complete(&junit, ioasis_cases());
    std::fs::remove_file(&junit).unwrap();
}

fn ioasis_cases() -> usize {
    let o = ioasis(&["cases"]);
    String::from_utf8_lossy(&o.stdout).lines().count()
}

#[test]
fn a_reproduce_line_reruns_the_same_failure() {
    // A broken VT-d driver on a legacy unit: the reproduce line must carry the backend, the
    // defect parameter and the unit model, or it reruns something else.
    let o = ioasis(&[
        "conformance",
        "--backend",
        "vtd",
        "--unit-params",
        "defect = \"skip-context-cache-invalidation\"",
        "--unit-model",
        "generation = \"legacy\"",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    let line = t.lines().find_map(|l| l.trim().strip_prefix("reproduce: ")).expect("a reproduce line");
    assert!(
        line.contains("--backend vtd") && line.contains("--unit-params") && line.contains("--unit-model"),
        "{line}"
    );
    let failed = t.lines().find(|l| l.starts_with("FAILED vtd ")).expect("a failure").to_string();
    let case = failed.split_whitespace().nth(2).unwrap().trim_end_matches(':').to_string();
    let bin = env!("CARGO_BIN_EXE_ioasis");
    let script = line.replacen("ioasis", &format!("'{bin}'"), 1);
    let again = Command::new("sh").args(["-c", &script]).current_dir(root()).output().unwrap();
    let t2 = text(&again);
    assert_eq!(again.status.code(), Some(1), "{script}\n{t2}");
    assert!(t2.contains(&format!("FAILED vtd {case}:")), "the same case fails: {script}\n{t2}");
    assert_eq!(t2.matches("\nFAILED ").count() + usize::from(t2.starts_with("FAILED ")), 1, "{t2}");
}

#[test]
fn a_bad_file_in_a_plugin_dir_is_a_warning_and_the_rest_run() {
    let dir = std::env::temp_dir().join(format!("ioasis-plugin-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(cdylib("ioasis_fixture_vendor_acme"), dir.join("libacme.so")).unwrap();
    std::fs::write(dir.join("libbroken.so"), b"not a library ".repeat(20)).unwrap();
    let full = std::fs::read(mock_so()).unwrap();
    std::fs::write(dir.join("libtruncated.so"), &full[..full.len() / 2]).unwrap();
    for isolation in ["process", "none"] {
        let o = ioasis(&["--plugin-dir", &dir.display().to_string(), "conformance", "--isolation", isolation]);
        let t = text(&o);
        assert!(t.contains("warning:") && t.contains("libbroken.so cannot be a plugin: not an ELF file"), "{t}");
        assert!(t.contains("libtruncated.so cannot be a plugin: truncated"), "{t}");
        // The good one ran: acme-iommu has no model, so its cases are skipped saying so.
        assert!(t.contains("acme-iommu"), "{isolation}: {t}");
        assert_eq!(o.status.code(), Some(3), "{isolation}: {t}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn soak_prints_its_figures_and_passes_on_the_bundled_plugins() {
    let o = ioasis(&["soak", "--seconds", "1", "--backend", "mock"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("mock: 1.0 s:") && t.contains("operations/s; 0 violation(s)"), "{t}");
    let o = ioasis(&["soak", "--seconds", "1", "--backend", "nope"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
