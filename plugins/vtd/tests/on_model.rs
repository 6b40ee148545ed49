//! The VT-d driver on the VT-d hardware model: DMA through a probed unit in legacy and scalable
//! mode, and the conformance suite.

use std::sync::Arc;

use ioasis::loader::{Plugin, Registry};
use ioasis::platform::ModelFactory;
use ioasis::{
    Context, DeviceDesc, DeviceRef, Features, Intent, IntentItem, Iova, Pasid, PhysAddr, Prot, RequesterId, Target,
};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_conformance::{Options, Outcome};
use ioasis_plugin_vtd::factory::VtdModelFactory;

const BASE: u64 = 0xfed9_0000;
const MB: u64 = 1 << 20;

fn plugin() -> Arc<Plugin> {
    Registry::with_builtins().expect("built-ins").get("vtd").expect("vtd is built in")
}

fn model_config(generation: &str) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("generation".into(), toml::Value::String(generation.into()));
    t
}

fn machine(generation: &str, params: &str) -> (Arc<Machine>, Context, ioasis::UnitId) {
    let machine = Arc::new(Machine::new(MachineConfig { ram_bytes: 512 * MB, table_pool_bytes: 64 * MB }).unwrap());
    let model = VtdModelFactory.build(&model_config(generation)).expect("model");
    machine.add_unit(PhysAddr(BASE), VtdModelFactory.window(), model).unwrap();
    let ctx = Context::new(machine.clone());
    let unit = ctx.add_unit(&plugin(), "dmar0", PhysAddr(BASE), 0, params).expect("probe");
    (machine, ctx, unit)
}

fn rid(dev: u8) -> DeviceRef {
    DeviceRef::Rid(RequesterId::new(0, 0, dev, 0))
}

fn dma_lands(generation: &str, params: &str) {
    let (m, ctx, unit) = machine(generation, params);
    let mut d = DeviceDesc::pci("nic", RequesterId::new(0, 0, 4, 0), "dmar0");
    d.pasid_bits = 20;
    let nic = ctx.bind_device(d).unwrap();
    let caps = ctx.unit_caps(unit).unwrap();
    let pasid = caps.features.contains(Features::PASID);
    let mut items = vec![IntentItem::UntaggedDma];
    if pasid {
        items.push(IntentItem::PasidIoas);
    }
    ctx.negotiate(nic, &Intent::new(items)).expect("contract");
    // Blocked before attach.
    assert!(m.dma_write(PhysAddr(BASE), rid(4), None, Iova(0x40_0010), b"early").is_err());
    let ioas = ctx.alloc_ioas();
    ctx.map(ioas, Some(Iova(0x40_0000)), PhysAddr(0x80_0000), 2 * MB, Prot::RW).unwrap();
    ctx.attach(nic, None, Target::Ioas(ioas)).unwrap();
    m.dma_write(PhysAddr(BASE), rid(4), None, Iova(0x40_0010), b"hello").expect("DMA write");
    let mut buf = [0u8; 5];
    m.ram().read(PhysAddr(0x80_0010), &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    let mut back = [0u8; 5];
    m.dma_read(PhysAddr(BASE), rid(4), None, Iova(0x40_0010), &mut back).expect("DMA read");
    assert_eq!(&back, b"hello");
    // Unmap: the cached translation is gone.
    ctx.unmap(ioas, Iova(0x40_0000), 2 * MB, ioasis::UnmapMode::Exact).unwrap();
    assert!(m.dma_write(PhysAddr(BASE), rid(4), None, Iova(0x40_0010), b"stale").is_err());
    ctx.poll_faults().unwrap();
    let log = ctx.take_fault_log();
    assert!(log.iter().any(|f| f.dev == rid(4) && f.addr.0 & !0xfff == 0x40_0000), "{log:?}");
    if pasid {
        let tagged = ctx.alloc_ioas();
        ctx.map(tagged, Some(Iova(0x1000)), PhysAddr(0x20_0000), 0x1000, Prot::RW).unwrap();
        ctx.attach(nic, Some(Pasid(7)), Target::Ioas(tagged)).unwrap();
        m.dma_write(PhysAddr(BASE), rid(4), Some(Pasid(7)), Iova(0x1008), b"pasid").expect("PASID DMA");
        m.ram().read(PhysAddr(0x20_0008), &mut buf).unwrap();
        assert_eq!(&buf, b"pasid");
    }
    ctx.teardown().unwrap();
}

#[test]
fn dma_lands_in_legacy_mode() {
    dma_lands("legacy", "");
}

#[test]
fn dma_lands_with_register_based_invalidation() {
    dma_lands("legacy-no-qi", "");
}

#[test]
fn dma_lands_in_scalable_mode() {
    dma_lands("scalable", "");
}

#[test]
fn dma_lands_in_legacy_mode_on_a_scalable_unit() {
    dma_lands("scalable", "mode = \"legacy\"");
}

/// The whole conformance suite on one model generation: every case passes or is skipped for a
/// capability the generation lacks.
fn conformance(generation: &str) {
    let opts = Options { seed: 1, unit_model: model_config(generation), ..Default::default() };
    let report = ioasis_conformance::run(&[plugin()], &[&VtdModelFactory], &opts, |_| {});
    assert!(report.passed(), "[{generation}]\n{}", report.summary());
    assert!(report.results.iter().any(|r| matches!(r.outcome, Outcome::Passed(_))));
}

#[test]
fn conformance_legacy() {
    conformance("legacy");
}

#[test]
fn conformance_scalable() {
    conformance("scalable");
}

/// Units whose caches hold one entry, or none: every translation re-reads its entries from
/// memory, so a write that lands in a neighbour's entry (the wrong half of a 128-bit entry, an
/// index off by one) breaks the neighbour at once instead of hiding behind its cached copy.
#[test]
fn conformance_with_tiny_caches() {
    for generation in ["legacy", "scalable"] {
        for entries in [0, 1] {
            let mut unit_model = model_config(generation);
            unit_model.insert("cache_entries".into(), toml::Value::Integer(entries));
            let opts = Options { seed: 1, unit_model, ..Default::default() };
            let report = ioasis_conformance::run(&[plugin()], &[&VtdModelFactory], &opts, |_| {});
            assert!(report.passed(), "[{generation}, {entries} entries]\n{}", report.summary());
        }
    }
}

/// A scalable-capable unit driven in legacy mode offers only what legacy mode can do (no
/// PASID, dirty tracking or nesting: those need scalable-mode tables), and all of it passes.
#[test]
fn conformance_legacy_mode_on_a_scalable_unit() {
    let opts = Options {
        seed: 1,
        unit_model: model_config("scalable"),
        unit_params: "mode = \"legacy\"".into(),
        ..Default::default()
    };
    let report = ioasis_conformance::run(&[plugin()], &[&VtdModelFactory], &opts, |_| {});
    assert!(report.passed(), "{}", report.summary());
}

#[test]
fn conformance_legacy_without_queued_invalidation() {
    conformance("legacy-no-qi");
}

#[test]
fn conformance_legacy_39bit_without_superpages() {
    conformance("legacy-39bit");
}

/// A unit that offers only 5-level, 57-bit second-stage tables (SAGAW bit 3, MGAW 57): the
/// driver builds 5-level tables and the whole suite passes on them.
#[test]
fn conformance_on_a_57_bit_five_level_unit() {
    let legacy = 0x00d2_008c_222f_0606u64;
    let cap = (legacy & !(0x1f << 8) & !(0x3f << 16)) | (0b01000 << 8) | (56 << 16);
    let mut model = model_config("legacy");
    model.insert("cap".into(), toml::Value::Integer(cap as i64));
    let opts = Options { seed: 5, unit_model: model, ..Default::default() };
    let report = ioasis_conformance::run(&[plugin()], &[&VtdModelFactory], &opts, |_| {});
    assert!(report.passed(), "{}", report.summary());
    let caps = report.results.iter().find(|r| r.case == "widths-and-formats").expect("ran");
    assert!(matches!(&caps.outcome, Outcome::Passed(d) if d.contains("57-bit IOVA")), "{caps:?}");
}

/// The whole suite on every generation with completion latency: the driver waits for every
/// command and invalidation it depends on.
#[test]
fn conformance_with_completion_latency() {
    for generation in ["scalable", "legacy", "legacy-no-qi", "legacy-39bit"] {
        let mut model = model_config(generation);
        model.insert("latency".into(), toml::Value::Integer(3));
        let opts = Options { seed: 1, unit_model: model, ..Default::default() };
        let report = ioasis_conformance::run(&[plugin()], &[&VtdModelFactory], &opts, |_| {});
        assert!(report.passed(), "[{generation}, latency 3]\n{}", report.summary());
        assert!(report.results.iter().any(|r| matches!(r.outcome, Outcome::Passed(_))));
    }
}

/// Each deliberately broken VT-d driver (its `defect` parameter) fails the suite in the category
/// that owns the bug; the same check as the suite's self-test, here so that the VT-d crate's own
/// tests notice when a defect switch stops switching anything.
#[test]
fn each_broken_vtd_variant_is_caught_in_its_category() {
    let vtd: Vec<_> = ioasis_conformance::variants::all().filter(|v| v.plugin == "vtd").collect();
    assert!(vtd.len() >= 15, "{} VT-d variants", vtd.len());
    let results = ioasis_conformance::self_test_of(vtd, &[plugin()], &[&VtdModelFactory], 11, |_| {});
    for r in &results {
        assert!(r.error.is_none(), "{}: {:?}", r.variant, r.error);
        assert!(
            r.caught_in.contains(&r.expected_category),
            "{} caught in {:?}, expected {}",
            r.variant,
            r.caught_in,
            r.expected_category
        );
    }
}

/// A scalable unit without 1 GiB first-stage pages (CAP.FS1GP clear, VT-d 11.4.2): nested
/// HWPTs must not offer them, and the suite's stage-1 page-size case checks that they fault.
#[test]
fn conformance_scalable_without_first_stage_gigabyte_pages() {
    use ioasis_plugin_vtd::layout::regs::cap;
    let config = ioasis_plugin_vtd::model::VtdModelConfig::scalable();
    let mut model = model_config("scalable");
    model.insert("cap".into(), toml::Value::Integer((config.cap & !cap::FS1GP) as i64));
    let opts = Options { seed: 1, unit_model: model, filter: Some("nested/".into()), ..Default::default() };
    let report = ioasis_conformance::run(&[plugin()], &[&VtdModelFactory], &opts, |_| {});
    assert!(report.passed(), "{}", report.summary());
    let sizes = report.results.iter().find(|r| r.case == "stage1-page-sizes").expect("the case ran");
    assert!(
        matches!(&sizes.outcome, Outcome::Passed(d) if d.contains("(4K,2M)")),
        "only 4 KiB and 2 MiB first-stage pages: {:?}",
        sizes.outcome
    );
}

/// An unmap of a HWPT with 300 ATS devices invalidates each one's device TLB: more
/// descriptors than the invalidation queue holds (256 slots), so the batch goes in chunks, each
/// with its wait, none overrunning the descriptors the unit has not read yet (6.5.2).
#[test]
fn an_invalidation_batch_larger_than_the_queue_goes_in_chunks() {
    for generation in ["legacy", "scalable"] {
        let (m, ctx, _unit) = machine(generation, "");
        let ioas = ctx.alloc_ioas();
        ctx.map(ioas, Some(Iova(0x40_0000)), PhysAddr(0x80_0000), 2 * MB, Prot::RW).unwrap();
        let mut rids = Vec::new();
        for i in 0..300u32 {
            let rid = RequesterId::new(0, 1 + (i / 256) as u8, ((i % 256) >> 3) as u8, (i & 7) as u8);
            let mut d = DeviceDesc::pci(&format!("d{i}"), rid, "dmar0");
            d.ats = true;
            let dev = ctx.bind_device(d).unwrap();
            ctx.negotiate(dev, &Intent::new(vec![IntentItem::UntaggedDma])).unwrap();
            ctx.attach(dev, None, Target::Ioas(ioas)).unwrap();
            rids.push(rid);
        }
        for rid in [rids[0], rids[299]] {
            m.dma_write(PhysAddr(BASE), DeviceRef::Rid(rid), None, Iova(0x40_0010), b"x").expect("DMA lands");
        }
        ctx.unmap(ioas, Iova(0x40_0000), 2 * MB, ioasis::UnmapMode::Exact).expect("the batch completes");
        for rid in [rids[0], rids[150], rids[299]] {
            let r = m.dma_write(PhysAddr(BASE), DeviceRef::Rid(rid), None, Iova(0x40_0010), b"y");
            assert!(r.is_err(), "[{generation}] {rid}: DMA after the unmap");
        }
        ctx.teardown().unwrap();
    }
}
