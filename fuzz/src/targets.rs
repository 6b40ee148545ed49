//! The targets: what an attacker or a careless user controls.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use ioasis::loader::Registry;
use ioasis::platform::{ModelFactory, Platform};
use ioasis::{Context, DeviceDesc, DeviceRef, Intent, IntentItem, Iova, Pasid, PhysAddr, Prot, RequesterId};
use ioasis_baremetal::{description, scenario, Machine, MachineConfig};
use ioasis_plugin_mock::MockModelFactory;
use ioasis_plugin_vtd::factory::VtdModelFactory;
use serde::Deserialize;

/// One fuzz target.
pub struct Target {
    /// Its name on the command line.
    pub name: &'static str,
    /// What it feeds and to what.
    pub about: &'static str,
    /// Inputs to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// One case: `true` when the input was used, `false` when it was refused with an error.
    pub one: fn(&[u8]) -> bool,
}

/// Every target.
pub static TARGETS: &[Target] = &[
    Target {
        name: "platform-toml",
        about: "platform files: parse, resolve and build the machine",
        seeds: || vec![include_bytes!("../../examples/platforms/two-root-ports.toml").to_vec()],
        one: platform,
    },
    Target {
        name: "scenario-toml",
        about: "scenario files: parse, build and run every step",
        seeds: || {
            vec![
                include_bytes!("../../examples/scenarios/two-functions-without-acs.toml").to_vec(),
                include_bytes!("../../examples/scenarios/parallel-dma-behind-switch.toml").to_vec(),
            ]
        },
        one: scenario,
    },
    Target {
        name: "intent-toml",
        about: "intent files: parse, bind the device and negotiate with a simulated unit",
        seeds: || {
            vec![
                include_bytes!("../../examples/intents/nic-with-pasid.toml").to_vec(),
                include_bytes!("../../examples/intents/accelerator-on-old-unit.toml").to_vec(),
            ]
        },
        one: intent,
    },
    Target {
        name: "plugin-file",
        about: "the loader's check of a plugin file before dlopen",
        seeds: plugin_seeds,
        one: |b| ioasis::loader::check_plugin_bytes(b).is_ok(),
    },
    Target {
        name: "vtd-vs-mock",
        about: "random API calls on VT-d and on the mock, whose results and DMA must agree",
        seeds: api_seeds,
        one: vtd_against_mock,
    },
    Target {
        name: "vtd-model",
        about: "the VT-d model: hostile register writes, table memory and DMA requests",
        seeds: model_seeds,
        one: |b| model(&VtdModelFactory, b),
    },
    Target {
        name: "mock-model",
        about: "the mock's model: hostile register writes, table memory and DMA requests",
        seeds: model_seeds,
        one: |b| model(&MockModelFactory, b),
    },
];

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| Registry::with_builtins().expect("the built-in plugins register"))
}

const FACTORIES: &[&dyn ModelFactory] = &[&MockModelFactory, &VtdModelFactory];

fn text(b: &[u8]) -> Option<&str> {
    std::str::from_utf8(b).ok()
}

fn platform(b: &[u8]) -> bool {
    let Some(t) = text(b) else { return false };
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/platforms/fuzz.toml"));
    let Ok(desc) = description::PlatformDesc::parse(path, t) else { return false };
    description::build(&desc, registry(), FACTORIES).is_ok()
}

/// Steps a fuzzed scenario may have (more only makes a case slower).
const MAX_STEPS: usize = 64;

fn scenario(b: &[u8]) -> bool {
    let Some(t) = text(b) else { return false };
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/scenarios/fuzz.toml"));
    let Ok(s) = ioasis::config::parse::<scenario::Scenario>(path, t) else { return false };
    if s.step.len() > MAX_STEPS {
        return false;
    }
    scenario::run(path, t, &s, registry(), FACTORIES).is_ok()
}

/// An intent file, as `ioasis negotiate` reads it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IntentFile {
    plugin: Option<String>,
    #[serde(default)]
    unit: toml::Table,
    device: DeviceDesc,
    intent: Vec<IntentItem>,
}

fn intent(b: &[u8]) -> bool {
    let Some(t) = text(b) else { return false };
    let Ok(f) = ioasis::config::parse::<IntentFile>(Path::new("fuzz.toml"), t) else { return false };
    let name = f.plugin.as_deref().unwrap_or("mock");
    let (Some(plugin), Some(factory)) = (registry().get(name), FACTORIES.iter().find(|f| f.plugin() == name)) else {
        return false;
    };
    let Ok(model) = factory.build(&f.unit) else { return false };
    let Ok(machine) = Machine::new(MachineConfig { ram_bytes: 64 << 20, table_pool_bytes: 16 << 20 }) else {
        return false;
    };
    let machine = Arc::new(machine);
    let base = PhysAddr(0xfed0_0000);
    if machine.add_unit(base, factory.window(), model).is_err() {
        return false;
    }
    let ctx = Context::new(machine);
    let Ok(_) = ctx.add_unit(&plugin, "u0", base, 0, "") else { return false };
    let mut desc = f.device;
    desc.unit = "u0".into();
    let Ok(dev) = ctx.bind_device(desc) else { return false };
    let _ = ctx.negotiate(dev, &Intent::new(f.intent));
    ctx.teardown().is_ok()
}

fn plugin_seeds() -> Vec<Vec<u8>> {
    // This test or fuzz binary itself: a real ELF file (a position-independent executable is
    // of type ET_DYN too), cut to what the engine handles.
    let mut seeds = Vec::new();
    if let Ok(exe) = std::env::current_exe().and_then(std::fs::read) {
        seeds.push(exe[..exe.len().min(crate::engine::MAX_INPUT)].to_vec());
    }
    seeds.push(minimal_shared_object());
    seeds
}

/// The smallest file the check accepts: an ELF header of a 64-bit little-endian shared object
/// for this machine and one loadable segment, the whole file.
fn minimal_shared_object() -> Vec<u8> {
    let machine: u16 = if cfg!(target_arch = "aarch64") { 183 } else { 62 };
    let mut b = vec![0u8; 64 + 56];
    b[..4].copy_from_slice(b"\x7fELF");
    (b[4], b[5], b[6]) = (2, 1, 1);
    b[16..18].copy_from_slice(&3u16.to_le_bytes());
    b[18..20].copy_from_slice(&machine.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes());
    b[54..56].copy_from_slice(&56u16.to_le_bytes());
    b[56..58].copy_from_slice(&1u16.to_le_bytes());
    b[64..68].copy_from_slice(&1u32.to_le_bytes());
    b[96..104].copy_from_slice(&120u64.to_le_bytes());
    b
}

fn model_seeds() -> Vec<Vec<u8>> {
    // Programs of 17-byte operations; the engine makes them hostile.
    let mut seeds = vec![Vec::new()];
    let mut p = Vec::new();
    for (op, off, val) in [(0u8, 0x18u64, 0x8000_0000u64), (2, 0x1000, 0x3), (3, 0x1000, 0x4000), (1, 0x1c, 0)] {
        p.push(op);
        p.extend_from_slice(&off.to_le_bytes());
        p.extend_from_slice(&val.to_le_bytes());
    }
    seeds.push(p);
    seeds
}

/// Runs a program of operations on a fresh unit of `factory`'s model: each operation is an
/// opcode byte and two 64-bit values: register writes and reads at any offset, writes of any
/// value anywhere in (a small) RAM, which the model takes for tables and queues, and DMA
/// requests from any requester, PASID and address. The model must refuse or fault, never panic
/// or walk without end.
fn model(factory: &dyn ModelFactory, b: &[u8]) -> bool {
    const RAM: u64 = 4 << 20;
    let Ok(machine) = Machine::new(MachineConfig { ram_bytes: RAM, table_pool_bytes: 1 << 20 }) else { return false };
    let Ok(model) = factory.build(&toml::Table::new()) else { return false };
    let base = PhysAddr(0xfed0_0000);
    let window = factory.window();
    if machine.add_unit(base, window, model).is_err() {
        return false;
    }
    for op in b.chunks_exact(17) {
        let a = u64::from_le_bytes(op[1..9].try_into().unwrap_or_default());
        let v = u64::from_le_bytes(op[9..17].try_into().unwrap_or_default());
        match op[0] % 5 {
            0 => {
                let _ = machine.mmio_write(base, (a % window) & !7, if v & 1 == 0 { 8 } else { 4 }, v);
            }
            1 => {
                let _ = machine.mmio_read(base, (a % window) & !7, 8);
            }
            2 => {
                let _ = machine.ram().write_u64(PhysAddr((a % RAM) & !7), v);
            }
            _ => {
                let rid = RequesterId::new(0, (v >> 8) as u8, (v >> 3) as u8 & 0x1f, v as u8 & 7);
                let pasid = (v & (1 << 40) != 0).then_some(Pasid((v >> 16) as u32 & 0xf_ffff));
                let access = if v & (1 << 41) != 0 { Prot::WRITE } else { Prot::READ };
                let _ = machine.translate(base, DeviceRef::Rid(rid), pasid, Iova(a), access);
            }
        }
    }
    true
}

/// One side of the differential target: a context on a simulated unit of `plugin`.
struct Side {
    machine: Arc<Machine>,
    ctx: Context,
    devices: Vec<ioasis::DeviceId>,
    ioases: Vec<ioasis::IoasId>,
}

const DIFF_BASE: PhysAddr = PhysAddr(0xfed0_0000);
const DIFF_DEVICES: u8 = 3;

impl Side {
    fn new(plugin: &str, factory: &dyn ModelFactory) -> Option<Self> {
        let machine = Arc::new(Machine::new(MachineConfig { ram_bytes: 256 << 20, table_pool_bytes: 32 << 20 }).ok()?);
        machine.add_unit(DIFF_BASE, factory.window(), factory.build(&toml::Table::new()).ok()?).ok()?;
        let ctx = Context::new(machine.clone());
        ctx.add_unit(&registry().get(plugin)?, "u0", DIFF_BASE, 0, "").ok()?;
        let mut devices = Vec::new();
        for d in 1..=DIFF_DEVICES {
            let dev = ctx.bind_device(DeviceDesc::pci("d", RequesterId::new(0, 0, d, 0), "u0")).ok()?;
            ctx.negotiate(dev, &Intent::new([IntentItem::UntaggedDma])).ok()?;
            devices.push(dev);
        }
        let ioases = vec![ctx.alloc_ioas(), ctx.alloc_ioas()];
        Some(Self { machine, ctx, devices, ioases })
    }

    /// Applies `op` and says what came of it, in terms both backends must agree on.
    fn apply(&self, op: &[u8]) -> String {
        let a = u64::from_le_bytes(op[1..9].try_into().unwrap_or_default());
        let b = u64::from_le_bytes(op[9..17].try_into().unwrap_or_default());
        let ioas = self.ioases[(b & 1) as usize];
        let dev = self.devices[(b >> 1) as usize % self.devices.len()];
        // Addresses in a few MiB, in units that make 4 KiB, 2 MiB and unaligned cases likely.
        let unit = [0x1000u64, 0x20_0000, 0x800][(b >> 8) as usize % 3];
        let iova = (a & 0x3f) * unit;
        let len = (((a >> 10) & 0xf) + 1) * unit;
        let pa = 0x100_0000 + ((a >> 20) & 0x3f) * unit;
        let kind = |r: Result<String, ioasis::Error>| match r {
            Ok(v) => format!("ok {v}"),
            // The error's kind, not its words: backends word their refusals differently.
            Err(e) => format!("error {}", format!("{e:?}").split([' ', '(', '{']).next().unwrap_or_default()),
        };
        match op[0] % 6 {
            0 => {
                let prot = [Prot::READ, Prot::WRITE, Prot::RW][(b >> 4) as usize % 3];
                kind(self.ctx.map(ioas, Some(Iova(iova)), PhysAddr(pa), len, prot).map(|i| format!("{i}")))
            }
            1 => {
                let mode = if b & 0x10 != 0 { ioasis::UnmapMode::Cut } else { ioasis::UnmapMode::Exact };
                kind(self.ctx.unmap(ioas, Iova(iova), len, mode).map(|n| n.to_string()))
            }
            2 => kind(self.ctx.attach(dev, None, ioasis::Target::Ioas(ioas)).map(|()| String::new())),
            3 => kind(self.ctx.replace(dev, None, ioasis::Target::Ioas(ioas)).map(|()| String::new())),
            4 => kind(self.ctx.detach(dev, None).map(|()| String::new())),
            _ => {
                let rid = RequesterId::new(0, 0, 1 + (b >> 1) as u8 % DIFF_DEVICES, 0);
                let access = if b & 0x20 != 0 { Prot::WRITE } else { Prot::READ };
                // Where each kind of map would have put this slot.
                let probes = [0x1000u64, 0x20_0000, 0x800].map(|u| (a & 0x3f) * u + (a >> 40) % u);
                let seen: Vec<String> = probes
                    .iter()
                    .map(|&at| match self.machine.translate(DIFF_BASE, DeviceRef::Rid(rid), None, Iova(at), access) {
                        Ok(t) => format!("dma at {}", t.pa),
                        Err(_) => "dma faults".to_string(),
                    })
                    .collect();
                seen.join(", ")
            }
        }
    }
}

/// The same random API calls on VT-d and on the mock (the reference): every result and every
/// DMA translation must agree. A backend that maps a page too few, keeps a stale entry, or
/// refuses what the other takes, disagrees.
fn vtd_against_mock(b: &[u8]) -> bool {
    let (Some(mock), Some(vtd)) = (Side::new("mock", &MockModelFactory), Side::new("vtd", &VtdModelFactory)) else {
        return false;
    };
    for (i, op) in b.chunks_exact(17).take(64).enumerate() {
        let (want, got) = (mock.apply(op), vtd.apply(op));
        if std::env::var_os("IOASIS_FUZZ_TRACE").is_some() {
            eprintln!("{i}: {want}");
        }
        assert_eq!(got, want, "operation {i} ({op:02x?}): VT-d and the mock disagree");
    }
    let (m, v) = (mock.ctx.teardown(), vtd.ctx.teardown());
    assert!(m.is_ok() && v.is_ok(), "teardown: mock {m:?}, VT-d {v:?}");
    assert_eq!(vtd.ctx.table_pages(), 0, "VT-d left table pages");
    true
}

/// Programs of random API calls: a map and an attach first, so that DMA has somewhere to go.
fn api_seeds() -> Vec<Vec<u8>> {
    let mut rng = crate::engine::Rng::new(0x5eed);
    (0..8)
        .map(|_| {
            let mut p = vec![0u8; 17 * 40];
            for b in p.iter_mut() {
                *b = rng.next_u64() as u8;
            }
            (p[0], p[17]) = (0, 2);
            p
        })
        .collect()
}
