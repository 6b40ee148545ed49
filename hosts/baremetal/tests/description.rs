//! Platform descriptions: topology → isolation, malformed files → errors with file, line and
//! key, and the bundled example platform.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ioasis::config::ConfigError;
use ioasis::loader::Registry;
use ioasis::platform::ModelFactory;
use ioasis::{DeviceAddress, Intent, IntentItem, Iova, PhysAddr, Prot, RequesterId, Target};
use ioasis_baremetal::description::PlatformDesc;
use ioasis_baremetal::scenario::{self, Scenario};
use ioasis_baremetal::{build, DmaDevice};
use ioasis_plugin_mock::MockModelFactory;

const UNIT: &str = "[[unit]]\nname = \"u0\"\nplugin = \"mock\"\nbase = 0xfed00000\n\n";

fn factories() -> Vec<&'static dyn ModelFactory> {
    vec![&MockModelFactory]
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn parse(text: &str) -> PlatformDesc {
    PlatformDesc::parse(Path::new("p.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

/// Device name → computed boundary.
fn isolation(text: &str) -> BTreeMap<String, Option<String>> {
    let r = parse(text).resolve().unwrap_or_else(|e| panic!("{e}"));
    r.devices.into_iter().map(|d| (d.name, d.no_acs_below)).collect()
}

/// The error a description gives, parsing or resolving.
fn error(text: &str) -> ConfigError {
    match PlatformDesc::parse(Path::new("p.toml"), text) {
        Err(e) => e,
        Ok(d) => d.resolve().expect_err("the description should be refused"),
    }
}

/// Asserts the error's line and key, and that its message contains `words`.
#[track_caller]
fn assert_error(e: &ConfigError, line: usize, key: &str, words: &str) {
    assert_eq!((e.line, e.key.as_str()), (line, key), "{e}");
    assert!(e.message.contains(words), "{e}");
    assert!(e.to_string().starts_with(&format!("p.toml:{line}:")), "{e}");
}

fn bridge(name: &str, sec: u8, sub: u8, acs: bool) -> String {
    format!("[[bridge]]\nname = \"{name}\"\nsecondary = {sec}\nsubordinate = {sub}\nacs = {acs}\n\n")
}

fn device(name: &str, rid: &str, extra: &str) -> String {
    format!("[[device]]\nname = \"{name}\"\naddress = {{ rid = \"{rid}\" }}\n{extra}\n")
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[test]
fn a_switch_without_acs_makes_its_devices_share_and_acs_ports_isolate() {
    let text = [
        UNIT.to_string(),
        bridge("0000:00:1c.0", 1, 1, true),
        bridge("0000:00:1d.0", 2, 5, true),
        bridge("0000:02:00.0", 3, 5, false),
        bridge("0000:03:00.0", 4, 4, true),
        bridge("0000:03:01.0", 5, 5, true),
        device("disk", "0000:01:00.0", ""),
        device("gpu", "0000:04:00.0", ""),
        device("nic", "0000:05:00.0", ""),
        device("igfx", "0000:00:02.0", ""),
    ]
    .concat();
    let iso = isolation(&text);
    assert_eq!(iso["gpu"], some("0000:02:00.0"));
    assert_eq!(iso["nic"], some("0000:02:00.0"));
    assert_eq!(iso["disk"], None);
    assert_eq!(iso["igfx"], None, "a root-complex integrated device is isolated");
}

#[test]
fn the_topmost_bridge_without_acs_is_the_boundary() {
    // A root port without ACS above a switch without ACS: everything below the root port shares.
    let text = [
        UNIT.to_string(),
        bridge("0000:00:1c.0", 1, 4, false),
        bridge("0000:01:00.0", 2, 4, false),
        bridge("0000:02:01.0", 3, 3, true),
        device("a", "0000:03:00.0", ""),
        device("b", "0000:01:00.1", ""),
    ]
    .concat();
    let iso = isolation(&text);
    assert_eq!(iso["a"], some("0000:00:1c.0"));
    assert_eq!(iso["b"], some("0000:00:1c.0"));
}

#[test]
fn functions_without_acs_share_their_device() {
    let text = [
        UNIT.to_string(),
        bridge("00:1c.0", 1, 1, true),
        device("fn0", "0000:01:00.0", "acs = false"),
        device("fn1", "0000:01:00.1", "acs = false"),
        device("fn2", "0000:01:00.2", "acs = true"),
        device("fn3", "0000:01:00.3", ""),
        device("other", "0000:00:03.0", "acs = false"),
    ]
    .concat();
    let iso = isolation(&text);
    assert_eq!(iso["fn0"], some("0000:01:00"));
    assert_eq!(iso["fn1"], some("0000:01:00"));
    assert_eq!(iso["fn2"], None, "a function with ACS stays isolated");
    assert_eq!(iso["fn3"], None);
    assert_eq!(iso["other"], some("0000:00:03"));
}

#[test]
fn an_explicit_boundary_wins_and_no_bridges_mean_a_flat_bus() {
    let text = [
        UNIT.to_string(),
        device("a", "0000:07:00.0", "no_acs_below = \"slot 3\""),
        device("b", "0000:08:00.0", ""),
        device("c", "0000:08:00.1", "acs = false"),
    ]
    .concat();
    let iso = isolation(&text);
    assert_eq!(iso["a"], some("slot 3"));
    assert_eq!(iso["b"], None);
    assert_eq!(iso["c"], some("0000:08:00"));
    // With bridges, the explicit name still wins over the computed one.
    let text = [UNIT.to_string(), bridge("0000:00:1c.0", 1, 1, false), device("a", "01:00.0", "no_acs_below = \"x\"")]
        .concat();
    assert_eq!(isolation(&text)["a"], some("x"));
}

#[test]
fn the_unit_may_be_left_out_when_there_is_one() {
    let text = [UNIT.to_string(), device("a", "0000:00:01.0", "")].concat();
    let r = parse(&text).resolve().unwrap();
    assert_eq!(r.devices[0].unit, "u0");
    assert_eq!(r.devices[0].address, DeviceAddress::Rid(RequesterId::new(0, 0, 1, 0)));
    let two =
        [UNIT.to_string(), UNIT.replace("u0", "u1").replace("0xfed00000", "0xfed01000"), device("a", "00:01.0", "")]
            .concat();
    assert_error(&error(&two), 12, "device[0].unit", "name one");
}

#[test]
fn overlapping_bridge_ranges_are_refused() {
    // Partial overlap.
    let text = [UNIT.to_string(), bridge("0000:00:1c.0", 1, 3, true), bridge("0000:00:1d.0", 3, 5, true)].concat();
    assert_error(&error(&text), 14, "bridge[1].secondary", "overlap");
    // Nested ranges, but the inner bridge does not sit below the outer one.
    let text = [UNIT.to_string(), bridge("0000:00:1c.0", 1, 5, true), bridge("0000:00:1d.0", 2, 2, true)].concat();
    assert_error(&error(&text), 14, "bridge[1].secondary", "without one bridge being below the other");
    // A bridge below another whose buses go past its parent's.
    let text = [UNIT.to_string(), bridge("0000:00:1c.0", 1, 2, true), bridge("0000:01:00.0", 2, 4, true)].concat();
    assert_error(&error(&text), 14, "bridge[1].secondary", "overlap");
    // A bridge below another, with buses outside its parent's range.
    let text = [UNIT.to_string(), bridge("0000:00:1c.0", 1, 2, true), bridge("0000:02:00.0", 4, 4, true)].concat();
    assert_error(&error(&text), 15, "bridge[1].subordinate", "go past those of bridge 0000:00:1c.0");
}

#[test]
fn malformed_bridges_are_refused_with_line_and_key() {
    let e = error(&[UNIT.to_string(), bridge("root port", 1, 1, true)].concat());
    assert_error(&e, 7, "bridge[0].name", "not a PCI address");
    let e = error(&[UNIT.to_string(), bridge("0000:00:1c.0", 4, 2, true)].concat());
    assert_error(&e, 9, "bridge[0].subordinate", "below secondary");
    let e = error(&[UNIT.to_string(), bridge("0000:03:00.0", 2, 2, true)].concat());
    assert_error(&e, 8, "bridge[0].secondary", "not above bus");
    let e = error(&[UNIT.to_string(), bridge("0000:00:1c.0", 1, 1, true), bridge("00:1c.0", 2, 2, true)].concat());
    assert_error(&e, 13, "bridge[1].name", "already given");
    // A bridge on a bus no bridge covers.
    let e = error(&[UNIT.to_string(), bridge("0000:00:1c.0", 1, 1, true), bridge("0000:07:00.0", 8, 8, true)].concat());
    assert_error(&e, 13, "bridge[1].name", "below no bridge");
    // An unknown key.
    let e = error(&[UNIT.to_string(), bridge("0000:00:1c.0", 1, 1, true).replace("acs =", "acs_enabled =")].concat());
    assert_eq!(e.line, 10, "{e}");
    assert!(e.key.starts_with("bridge[0]") && e.message.contains("acs_enabled"), "{e}");
    // `acs` is required.
    let e = error(&[UNIT.to_string(), bridge("0000:00:1c.0", 1, 1, true).replace("acs = true\n", "")].concat());
    assert!(e.key.starts_with("bridge[0]") && e.message.contains("acs"), "{e}");
}

#[test]
fn parents_must_exist_and_agree_with_the_bus_ranges() {
    let base = [UNIT.to_string(), bridge("0000:00:1c.0", 1, 3, true), bridge("0000:00:1d.0", 4, 4, true)].concat();
    let text = format!("{base}{}parent = \"0000:00:1e.0\"\n", bridge("0000:01:00.0", 2, 3, false));
    assert_error(&error(&text), 24, "bridge[2].parent", "no bridge named `0000:00:1e.0`");
    let text = format!("{base}{}parent = \"0000:00:1d.0\"\n", bridge("0000:01:00.0", 2, 3, false));
    assert_error(&error(&text), 24, "bridge[2].parent", "is below bridge 0000:00:1c.0");
    let text = format!("{base}{}parent = \"0000:00:1c.0\"\n", bridge("0000:01:00.0", 2, 3, false));
    parse(&text).resolve().unwrap();
}

#[test]
fn devices_are_checked_with_line_and_key() {
    let bridges = [UNIT.to_string(), bridge("0000:00:1c.0", 1, 1, true)].concat();
    // A bus no bridge covers.
    let e = error(&format!("{bridges}{}", device("lost", "0000:09:00.0", "")));
    assert_error(&e, 14, "device[0].address", "bus 0x09 is below no bridge");
    // A device where a bridge is.
    let e = error(&format!("{bridges}{}", device("port", "0000:00:1c.0", "")));
    assert_error(&e, 14, "device[0].address", "is a bridge");
    // An unknown unit.
    let e = error(&format!("{bridges}{}", device("a", "0000:01:00.0", "unit = \"u9\"")));
    assert_error(&e, 15, "device[0].unit", "no unit named `u9`");
    let e = error(&format!("{bridges}{}", device("a", "0001:01:00.0", "")));
    assert_error(&e, 13, "device[0].unit", "serves segment 0000, the device is in 0001");
    // `acs` on a stream-id device.
    let e = error(&format!("{bridges}[[device]]\nname = \"smmu-dev\"\naddress = {{ sid = 3 }}\nacs = false\n"));
    assert_error(&e, 15, "device[0].acs", "PCI functions");
    // A bad reserved region.
    let e =
        error(&format!("{bridges}{}", device("a", "0000:01:00.0", "reserved = [{ start = 0x2000, last = 0x1000 }]")));
    assert_error(&e, 15, "device[0].reserved[0].last", "below start");
    // A PASID width too wide.
    let e = error(&format!("{bridges}{}", device("a", "0000:01:00.0", "pasid_bits = 24")));
    assert_error(&e, 15, "device[0].pasid_bits", "> 20");
    // Two devices with one name.
    let e = error(&format!("{bridges}{}{}", device("a", "0000:01:00.0", ""), device("a", "0000:01:00.1", "")));
    assert_error(&e, 17, "device[1].name", "already given");
    // An unknown key and a malformed address come from the parser, with the key's line.
    let e = error(&format!("{bridges}{}", device("a", "0000:01:00.0", "colour = \"red\"")));
    assert_eq!(e.line, 15, "{e}");
    assert!(e.message.contains("colour"), "{e}");
    let e = error(&format!("{bridges}{}", device("a", "0000:01:20.0", "")));
    assert_eq!(e.line, 14, "{e}");
    assert!(e.key.starts_with("device[0].address"), "{e}");
}

#[test]
fn machine_keys_are_checked_with_line_and_key() {
    let e = error(&format!("[machine]\nram = \"1G\"\nreserved = [\n  {{ start = 0x10, last = 0x1 }},\n]\n{UNIT}"));
    assert_error(&e, 4, "machine.reserved[0].last", "below start");
    let e = error(&format!("[machine]\nram = \"12Q\"\n{UNIT}"));
    assert_error(&e, 2, "machine.ram", "unknown size suffix");
    let e = error(&format!("[machine]\nrom = \"1G\"\n{UNIT}"));
    assert_eq!(e.line, 2, "{e}");
    assert!(e.message.contains("rom"), "{e}");
    let e = error(&format!("{UNIT}{}", UNIT.replace("0xfed00000", "0xfed01000")));
    assert_error(&e, 7, "unit[1].name", "already given");
    let e = error(&UNIT.replace("0xfed00000", "\"high\""));
    assert_eq!((e.line, e.key.as_str()), (4, "unit[0].base"), "{e}");
}

#[test]
fn build_errors_name_the_unit_key() {
    let reg = Registry::with_builtins().unwrap();
    let desc = parse(&UNIT.replace("\"mock\"", "\"vtd9\""));
    let e = build(&desc, &reg, &factories()).unwrap_err();
    assert_error(&e, 3, "unit[0].plugin", "no plugin named `vtd9`");
    let desc = parse(&UNIT.replace("base = 0xfed00000", "base = 0xfed00000\nmodel = { without = [\"wings\"] }"));
    let e = build(&desc, &reg, &factories()).unwrap_err();
    assert_error(&e, 5, "unit[0].model", "unknown mock feature `wings`");
    let desc = parse(&format!("{UNIT}{}", UNIT.replace("u0", "u1")));
    let e = build(&desc, &reg, &factories()).unwrap_err();
    assert_error(&e, 9, "unit[1].base", "overlaps");
    let desc = parse(&format!("{UNIT}{}{}", device("a", "0000:00:01.0", ""), device("b", "0000:00:01.0", "")));
    let e = build(&desc, &reg, &factories()).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (10, "device[1]"), "{e}");
    assert!(e.message.contains("bound already"), "{e}");
}

#[test]
fn the_example_platform_loads_builds_and_isolates() {
    let path = repo().join("examples/platforms/two-root-ports.toml");
    let desc = PlatformDesc::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(desc.bridge.len(), 5);
    let r = desc.resolve().unwrap();
    let iso: BTreeMap<_, _> = r.devices.iter().map(|d| (d.name.as_str(), d.no_acs_below.as_deref())).collect();
    assert_eq!(
        iso,
        BTreeMap::from([("gpu", Some("0000:02:00.0")), ("nic", Some("0000:02:00.0")), ("nvme", None), ("igfx", None)])
    );
    assert_eq!(r.reserved.len(), 1);
    assert_eq!(r.reserved[0].1, "x86 MSI window");
    let igfx = r.devices.iter().find(|d| d.name == "igfx").unwrap();
    assert_eq!(igfx.reserved.len(), 1);
    assert_eq!(igfx.dma_bits, 39);

    let reg = Registry::with_builtins().unwrap();
    let built = build(&desc, &reg, &factories()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(built.units["dmar0"].base, PhysAddr(0xfed9_0000));
    assert_eq!(built.devices.len(), 4);
    let ctx = &built.ctx;
    let untagged = Intent::new([IntentItem::UntaggedDma]);
    for d in ["gpu", "nic", "nvme"] {
        ctx.negotiate(built.devices[d].id, &untagged).unwrap();
    }
    let (shared, other) = (ctx.alloc_ioas(), ctx.alloc_ioas());
    ctx.attach(built.devices["gpu"].id, None, Target::Ioas(shared)).unwrap();
    let e = ctx.attach(built.devices["nic"].id, None, Target::Ioas(other)).unwrap_err();
    assert!(e.to_string().contains("must share one IOAS"), "{e}");
    ctx.attach(built.devices["nic"].id, None, Target::Ioas(shared)).unwrap();
    ctx.attach(built.devices["nvme"].id, None, Target::Ioas(other)).unwrap();
    // The platform's MSI window is reserved once a device is attached.
    let e = ctx.map(shared, Some(Iova(0xfee0_0000)), PhysAddr(0x100_0000), 0x1000, Prot::RW).unwrap_err();
    assert!(e.to_string().contains("x86 MSI window"), "{e}");
    ctx.map(shared, Some(Iova(0x10_0000)), PhysAddr(0x100_0000), 0x1000, Prot::RW).unwrap();
    let nic = built.dma_device("nic").unwrap();
    nic.write(&built.machine, Iova(0x10_0010), b"through the switch").unwrap();
    let mut back = [0u8; 18];
    built.machine.ram().read(PhysAddr(0x100_0010), &mut back).unwrap();
    assert_eq!(&back, b"through the switch");
    let nvme = built.dma_device("nvme").unwrap();
    assert!(nvme.write(&built.machine, Iova(0x10_0010), b"x").is_err(), "the disk has its own IOAS");
    assert!(built.dma_device("nobody").is_none());
    let _: &DmaDevice = &nic;
    ctx.teardown().unwrap();
    assert_eq!(ctx.table_pages(), 0);
}

#[test]
fn the_example_scenarios_pass() {
    let reg = Registry::with_builtins().unwrap();
    for name in ["two-functions-without-acs.toml", "parallel-dma-behind-switch.toml"] {
        let path = repo().join("examples/scenarios").join(name);
        let report = scenario::run_file(&path, &reg, &factories()).unwrap_or_else(|e| panic!("{e}"));
        let failed: Vec<_> = report.steps.iter().filter(|s| !s.passed).collect();
        assert!(failed.is_empty(), "{name}: {failed:?}");
        assert!(report.steps.len() > 10, "{name}");
    }
}

#[test]
fn scenario_files_refuse_unknown_keys_and_mixed_platforms() {
    let reg = Registry::with_builtins().unwrap();
    let run = |text: &str| -> Result<scenario::Report, ConfigError> {
        let path = repo().join("examples/scenarios/inline.toml");
        let s: Scenario = ioasis::config::parse(&path, text)?;
        scenario::run(&path, text, &s, &reg, &factories()).map_err(|e| match e {
            scenario::ScenarioError::Config(c) => c,
        })
    };
    let e = run(&format!("{UNIT}[[step]]\ndo = \"alloc-ioas\"\nname = \"A\"\n\n[extras]\nx = 1\n")).unwrap_err();
    assert_eq!(e.line, 10, "{e}");
    assert!(e.message.contains("extras"), "{e}");
    let e = run(&format!("{UNIT}[[step]]\ndo = \"alloc-ioas\"\nname = \"A\"\ncolour = 1\n")).unwrap_err();
    // Steps are tagged by `do`: serde reads them whole, so the error points at the step.
    assert_eq!(e.line, 6, "{e}");
    assert!(e.key.starts_with("step[0]") && e.message.contains("colour"), "{e}");
    let e = run(&format!("platform = \"../platforms/two-root-ports.toml\"\n{UNIT}")).unwrap_err();
    assert_eq!((e.line, e.key.as_str()), (1, "platform"), "{e}");
    assert!(e.message.contains("`unit`"), "{e}");
    // Errors inside a platform file name that file.
    let e = run("platform = \"../platforms/missing.toml\"\n").unwrap_err();
    assert!(e.file.ends_with("platforms/missing.toml"), "{e}");
    // Bridges in a scenario compute isolation as in a platform file.
    let text =
        [UNIT.to_string(), bridge("0000:00:1c.0", 1, 1, false), device("a", "01:00.0", ""), device("b", "01:00.1", "")]
            .concat();
    let report = run(&format!(
        "{text}[[step]]\ndo = \"negotiate\"\ndevice = \"a\"\nintent = [{{ kind = \"untagged-dma\" }}]\n\n\
         [[step]]\ndo = \"negotiate\"\ndevice = \"b\"\nintent = [{{ kind = \"untagged-dma\" }}]\n\n\
         [[step]]\ndo = \"alloc-ioas\"\nname = \"A\"\n\n[[step]]\ndo = \"alloc-ioas\"\nname = \"B\"\n\n\
         [[step]]\ndo = \"attach\"\ndevice = \"a\"\nioas = \"A\"\n\n\
         [[step]]\ndo = \"attach\"\ndevice = \"b\"\nioas = \"B\"\nexpect = \"error:no ACS below 0000:00:1c.0\"\n"
    ))
    .unwrap();
    assert!(report.passed(), "{:?}", report.steps);
}

#[test]
fn a_dma_parallel_step_judges_each_job() {
    let reg = Registry::with_builtins().unwrap();
    let path = Path::new("inline.toml");
    let text = format!(
        "{UNIT}{}[[step]]\ndo = \"negotiate\"\ndevice = \"a\"\nintent = [{{ kind = \"untagged-dma\" }}]\n\n\
         [[step]]\ndo = \"alloc-ioas\"\nname = \"A\"\n\n\
         [[step]]\ndo = \"map\"\nioas = \"A\"\niova = 0x10000\npa = 0x100000\nlen = 0x10000\n\n\
         [[step]]\ndo = \"attach\"\ndevice = \"a\"\nioas = \"A\"\n\n\
         [[step]]\ndo = \"dma-parallel\"\njobs = [\n\
           {{ device = \"a\", iova = 0x10000, write = \"one\" }},\n\
           {{ device = \"a\", iova = 0x90000, write = \"two\" }},\n]\n\n\
         [[step]]\ndo = \"check-ram\"\npa = 0x100000\ndata = \"one\"\n\n\
         [[step]]\ndo = \"dma-parallel\"\njobs = [{{ device = \"a\", iova = 0x10000, write = \"x\", len = 1 }}]\n",
        device("a", "0000:00:01.0", "")
    );
    let s: Scenario = ioasis::config::parse(path, &text).unwrap();
    let report = scenario::run(path, &text, &s, &reg, &factories()).unwrap();
    let last = &report.steps[4..];
    assert!(!last[0].passed && last[0].detail.contains("job 2") && !last[0].detail.contains("job 1"), "{last:?}");
    assert!(last[0].detail.contains("expected ok, got fault"), "{last:?}");
    assert!(last[1].passed, "the first job landed although the second faulted: {last:?}");
    assert!(!last[2].passed && last[2].detail.contains("exactly one of"), "{last:?}");
    assert!(report.steps[..4].iter().all(|s| s.passed), "{:?}", report.steps);
}

#[test]
fn dma_steps_with_huge_lengths_fail_without_allocating() {
    let reg = Registry::with_builtins().unwrap();
    let path = Path::new("inline.toml");
    let text = format!(
        "{UNIT}{}[[step]]\ndo = \"negotiate\"\ndevice = \"a\"\nintent = [{{ kind = \"untagged-dma\" }}]\n\n\
         [[step]]\ndo = \"alloc-ioas\"\nname = \"A\"\n\n\
         [[step]]\ndo = \"attach\"\ndevice = \"a\"\nioas = \"A\"\n\n\
         [[step]]\ndo = \"dma-read\"\ndevice = \"a\"\niova = 0x10000\nlen = 0x7fffffffffffffff\n\n\
         [[step]]\ndo = \"dma-parallel\"\njobs = [{{ device = \"a\", iova = 0x10000, len = 0x7fffffffffffffff }}]\n\n\
         [[step]]\ndo = \"dma-read\"\ndevice = \"a\"\niova = 0x10000\nlen = 4\nexpect = \"fault\"\n",
        device("a", "0000:00:01.0", "")
    );
    let s: Scenario = ioasis::config::parse(path, &text).unwrap();
    let report = scenario::run(path, &text, &s, &reg, &factories()).unwrap();
    let st = &report.steps;
    assert!(!st[3].passed && st[3].detail.contains("more than a step may move"), "{st:?}");
    assert!(!st[4].passed && st[4].detail.contains("job 1") && st[4].detail.contains("more than"), "{st:?}");
    assert!(st[5].passed, "later steps still run: {st:?}");
}

#[test]
fn a_scenario_of_forty_thousand_steps_reports_each_line() {
    let reg = Registry::with_builtins().unwrap();
    let path = Path::new("inline.toml");
    let mut text = format!("{UNIT}{}", device("a", "0000:00:01.0", ""));
    let first = text.lines().count() + 1;
    for i in 0..40_000 {
        text.push_str(&format!("[[step]]\ndo = \"alloc-ioas\"\nname = \"I{i}\"\n"));
    }
    let s: Scenario = ioasis::config::parse(path, &text).unwrap();
    let report = scenario::run(path, &text, &s, &reg, &factories()).unwrap();
    assert_eq!(report.steps.len(), 40_000);
    assert!(report.passed());
    assert_eq!(report.steps[0].line, first);
    assert_eq!(report.steps[39_999].line, first + 3 * 39_999);
}
