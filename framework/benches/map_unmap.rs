//! Map + unmap of 2 MiB through the mock backend: linked in (`builtin`) against the same
//! backend loaded from its cdylib (`dynamic`), on the simulated bare-metal machine.
//!
//! - `map_unmap_2m`: IOVA and PA 2 MiB-aligned, so the backend writes one 2 MiB leaf.
//! - `map_unmap_2m_4k_pages`: PA shifted by 4 KiB, so it writes 512 4 KiB leaves.
//!
//! The mock page table frees a table page as soon as it holds no entry. A "keeper" 4 KiB
//! mapping in the next 2 MiB slot keeps the root, level-2 and level-1 tables alive, so the
//! measured loop allocates no table page for a 2 MiB leaf; the level-0 table that the 512
//! 4 KiB leaves fill is freed by every unmap and allocated again by every map. Setup checks both.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use ioasis::loader::{Plugin, Registry};
use ioasis::{Context, DeviceDesc, Intent, IntentItem, IoasId, Iova, PhysAddr, Prot, RequesterId, Target, UnmapMode};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_plugin_mock::format::cap;
use ioasis_plugin_mock::model::MockModel;

const MB: u64 = 1 << 20;
const LEN: u64 = 2 * MB;
const UNIT_BASE: u64 = 0xfed0_0000;
/// 1 GiB-aligned: the measured range is the first 2 MiB slot of one level-1 table.
const IOVA: u64 = 0x4000_0000;
/// 2 MiB-aligned DMA buffer.
const PA: u64 = 0x0800_0000;
/// The keeper: 4 KiB in the next 2 MiB slot, under the same level-1 table.
const KEEPER_IOVA: u64 = IOVA + LEN;
const KEEPER_PA: u64 = 0x1000_0000;

/// Where cargo put `lib<stem>.so`: next to the bench binary (`deps`) or one folder up.
fn cdylib(stem: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("bench binary path");
    let deps = exe.parent().expect("deps dir");
    let file = format!("lib{stem}.so");
    for dir in [deps, deps.parent().expect("profile dir")] {
        if dir.join(&file).exists() {
            return dir.join(&file);
        }
    }
    panic!("{file} was not built next to {}", deps.display());
}

/// One machine, one full-capability mock unit, one device attached to an IOAS with a single
/// paging HWPT, and the keeper mapped.
struct Bench {
    ctx: Context,
    ioas: IoasId,
    // Kept alive for the context's sake.
    _machine: Arc<Machine>,
    _plugin: Arc<Plugin>,
}

impl Bench {
    fn new(plugin: Arc<Plugin>) -> Self {
        let machine =
            Arc::new(Machine::new(MachineConfig { ram_bytes: 512 * MB, table_pool_bytes: 64 * MB }).expect("machine"));
        let ctx = Context::new(machine.clone());
        let base = PhysAddr(UNIT_BASE);
        machine.add_unit(base, 0x1000, Arc::new(MockModel::new(cap::FULL))).expect("unit window");
        ctx.add_unit(&plugin, "u0", base, 0, "").expect("probe");
        let dev = ctx.bind_device(DeviceDesc::pci("dev1", RequesterId::new(0, 0, 1, 0), "u0")).expect("bind");
        ctx.negotiate(dev, &Intent::new(vec![IntentItem::UntaggedDma])).expect("contract");
        let ioas = ctx.alloc_ioas();
        ctx.attach(dev, None, Target::Ioas(ioas)).expect("attach");
        assert!(ctx.attached_hwpt(dev, None).expect("device").is_some(), "a paging HWPT");
        ctx.map(ioas, Some(Iova(KEEPER_IOVA)), PhysAddr(KEEPER_PA), 0x1000, Prot::RW).expect("keeper");
        Bench { ctx, ioas, _machine: machine, _plugin: plugin }
    }

    fn map_unmap(&self, pa: u64) {
        let at = self.ctx.map(self.ioas, Some(Iova(IOVA)), PhysAddr(pa), LEN, Prot::RW).expect("map");
        let gone = self.ctx.unmap(self.ioas, at, LEN, UnmapMode::Exact).expect("unmap");
        debug_assert_eq!(gone, LEN);
    }

    /// Pre-warms once and checks how many table pages one map allocates.
    fn warm(&self, pa: u64, new_tables: u64) {
        self.map_unmap(pa);
        let before = self.ctx.table_pages();
        self.ctx.map(self.ioas, Some(Iova(IOVA)), PhysAddr(pa), LEN, Prot::RW).expect("map");
        assert_eq!(self.ctx.table_pages() - before, new_tables, "table pages one map allocates (pa {pa:#x})");
        self.ctx.unmap(self.ioas, Iova(IOVA), LEN, UnmapMode::Exact).expect("unmap");
        assert_eq!(self.ctx.table_pages(), before, "unmap frees what map allocated");
    }
}

fn plugins() -> [(&'static str, Arc<Plugin>); 2] {
    let builtin = Registry::with_builtins().expect("built-ins load").get("mock").expect("mock is built in");
    let dynamic = Arc::new(Plugin::load_as(&cdylib("ioasis_mock"), "mock-so").expect("load libioasis_mock.so"));
    assert!(matches!(dynamic.origin, ioasis::loader::Origin::Path(_)), "loaded from the cdylib");
    [("builtin", builtin), ("dynamic", dynamic)]
}

fn group(c: &mut Criterion, name: &str, pa: u64, new_tables: u64) {
    let mut g = c.benchmark_group(name);
    for (label, plugin) in plugins() {
        let b = Bench::new(plugin);
        b.warm(pa, new_tables);
        g.bench_function(label, |bencher| bencher.iter(|| b.map_unmap(black_box(pa))));
    }
    g.finish();
}

fn map_unmap_2m(c: &mut Criterion) {
    // One 2 MiB leaf in the kept level-1 table: no table page allocated.
    group(c, "map_unmap_2m", PA, 0);
}

fn map_unmap_2m_4k_pages(c: &mut Criterion) {
    // 512 4 KiB leaves in a level-0 table that each map allocates and each unmap frees.
    group(c, "map_unmap_2m_4k_pages", PA + 0x1000, 1);
}

criterion_group!(benches, map_unmap_2m, map_unmap_2m_4k_pages);
criterion_main!(benches);
