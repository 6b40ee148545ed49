//! DMA devices on the simulated machine with a mock unit: many devices in parallel, PASID DMA,
//! independent faults, and ATS translation caching.

use std::path::Path;

use ioasis::abi::Fault;
use ioasis::loader::Registry;
use ioasis::platform::ModelFactory;
use ioasis::{Intent, IntentItem, Iova, IovaRange, Pasid, PhysAddr, Prot, Target, UnmapMode};
use ioasis_baremetal::description::PlatformDesc;
use ioasis_baremetal::dma::ATC_ENTRIES;
use ioasis_baremetal::{build, run_parallel, Built, DmaDevice, DmaError, DmaJob, DmaOp};
use ioasis_plugin_mock::MockModelFactory;

const DEVICES: u64 = 8;
/// Each device's IOVA window and its physical home.
const WINDOW: u64 = 0x10_0000;
const IOVA0: u64 = 0x100_0000;
const PA0: u64 = 0x400_0000;

/// A machine with one mock unit and `DEVICES` PCI devices `d1`..`d8` at 00:01.0..00:08.0.
fn platform() -> Built {
    let mut text = String::from(
        "[machine]\nram = \"512M\"\ntables = \"64M\"\n\n[[unit]]\nname = \"u0\"\nplugin = \"mock\"\nbase = 0xfed00000\n\n",
    );
    for i in 1..=DEVICES {
        text +=
            &format!("[[device]]\nname = \"d{i}\"\naddress = {{ rid = \"0000:00:{i:02x}.0\" }}\npasid_bits = 20\n\n");
    }
    let desc = PlatformDesc::parse(Path::new("dma.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let factories: Vec<&dyn ModelFactory> = vec![&MockModelFactory];
    build(&desc, &Registry::with_builtins().unwrap(), &factories).unwrap_or_else(|e| panic!("{e}"))
}

/// Attaches every device's untagged DMA to one IOAS in which device `i` owns
/// `[IOVA0 + i*WINDOW, +WINDOW)` → `[PA0 + i*WINDOW, +WINDOW)`.
fn attach_all(b: &Built) -> ioasis::IoasId {
    let ctx = &b.ctx;
    let ioas = ctx.alloc_ioas();
    for i in 1..=DEVICES {
        let id = b.devices[&format!("d{i}")].id;
        ctx.negotiate(id, &Intent::new([IntentItem::UntaggedDma])).unwrap();
        ctx.attach(id, None, Target::Ioas(ioas)).unwrap();
        ctx.map(ioas, Some(Iova(IOVA0 + i * WINDOW)), PhysAddr(PA0 + i * WINDOW), WINDOW, Prot::RW).unwrap();
    }
    ioas
}

fn devices(b: &Built) -> Vec<DmaDevice> {
    (1..=DEVICES).map(|i| b.dma_device(&format!("d{i}")).unwrap()).collect()
}

fn pattern(dev: u64, job: u64, len: usize) -> Vec<u8> {
    (0..len).map(|k| (dev as usize * 31 + job as usize * 7 + k) as u8).collect()
}

fn ram(b: &Built, pa: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    b.machine.ram().read(PhysAddr(pa), &mut buf).unwrap();
    buf
}

#[test]
fn eight_devices_dma_in_parallel_through_one_unit() {
    let b = platform();
    attach_all(&b);
    let devs = devices(&b);
    // Four jobs per device, each 10000 bytes (crossing page boundaries) at its own offset.
    let len = 10_000usize;
    let mut jobs = Vec::new();
    for (n, d) in devs.iter().enumerate() {
        let i = n as u64 + 1;
        for j in 0..4u64 {
            let iova = Iova(IOVA0 + i * WINDOW + j * 0x4000 + 0x123);
            jobs.push(DmaJob { device: d, iova, op: DmaOp::Write(pattern(i, j, len)) });
        }
    }
    let results = run_parallel(&b.machine, &jobs);
    assert_eq!(results.len(), jobs.len());
    for r in &results {
        assert_eq!(r.as_ref().unwrap(), &Vec::<u8>::new());
    }
    for i in 1..=DEVICES {
        for j in 0..4u64 {
            assert_eq!(ram(&b, PA0 + i * WINDOW + j * 0x4000 + 0x123, len), pattern(i, j, len), "device {i} job {j}");
        }
    }
    // Read everything back in parallel, each device through its own window.
    let reads: Vec<DmaJob<'_>> =
        jobs.iter().map(|j| DmaJob { device: j.device, iova: j.iova, op: DmaOp::Read(len) }).collect();
    let back = run_parallel(&b.machine, &reads);
    for (job, r) in jobs.iter().zip(back) {
        let DmaOp::Write(data) = &job.op else { unreachable!() };
        assert_eq!(&r.unwrap(), data);
    }
    b.ctx.teardown().unwrap();
    assert_eq!(b.ctx.table_pages(), 0);
}

#[test]
fn a_fault_in_one_job_leaves_the_others_alone() {
    let b = platform();
    let ioas = attach_all(&b);
    let devs = devices(&b);
    // d3's window loses its second page.
    b.ctx.unmap(ioas, Iova(IOVA0 + 3 * WINDOW + 0x1000), 0x1000, UnmapMode::Cut).unwrap();
    let jobs: Vec<DmaJob<'_>> = devs
        .iter()
        .enumerate()
        .map(|(n, d)| {
            let i = n as u64 + 1;
            DmaJob { device: d, iova: Iova(IOVA0 + i * WINDOW + 0xff0), op: DmaOp::Write(pattern(i, 0, 0x40)) }
        })
        .collect();
    let results = run_parallel(&b.machine, &jobs);
    for (n, r) in results.iter().enumerate() {
        let i = n as u64 + 1;
        if i == 3 {
            let Err(DmaError::Fault(f)) = r else { panic!("d3 should fault: {r:?}") };
            assert_eq!(
                (f.addr, f.access, f.reason),
                (Iova(IOVA0 + 3 * WINDOW + 0x1000), Prot::WRITE, Fault::NOT_PRESENT)
            );
            // Not atomic: the part before the hole was written.
            assert_eq!(ram(&b, PA0 + 3 * WINDOW + 0xff0, 0x10), pattern(3, 0, 0x10));
        } else {
            r.as_ref().unwrap();
            assert_eq!(ram(&b, PA0 + i * WINDOW + 0xff0, 0x40), pattern(i, 0, 0x40), "device {i}");
        }
    }
    // A device outside every IOAS mapping faults too, and a wrapping access is refused before
    // any translation.
    let mut buf = [0u8; 4];
    assert!(matches!(devs[0].read(&b.machine, Iova(0x10), &mut buf), Err(DmaError::Fault(_))));
    assert!(matches!(devs[0].read(&b.machine, Iova(u64::MAX - 1), &mut buf), Err(DmaError::Wraps { .. })));
}

#[test]
fn pasid_dma_goes_through_the_pasid_attachment() {
    let b = platform();
    let ctx = &b.ctx;
    let d1 = b.devices["d1"].id;
    let intent = Intent::new([IntentItem::UntaggedDma, IntentItem::PasidDma { width: 20 }, IntentItem::PasidIoas]);
    ctx.negotiate(d1, &intent).unwrap();
    let (untagged, tagged) = (ctx.alloc_ioas(), ctx.alloc_ioas());
    ctx.map(untagged, Some(Iova(0x10_0000)), PhysAddr(0x100_0000), 0x1000, Prot::RW).unwrap();
    ctx.map(tagged, Some(Iova(0x10_0000)), PhysAddr(0x200_0000), 0x1000, Prot::RW).unwrap();
    ctx.attach(d1, None, Target::Ioas(untagged)).unwrap();
    ctx.attach(d1, Some(Pasid(5)), Target::Ioas(tagged)).unwrap();

    let plain = b.dma_device("d1").unwrap();
    let p5 = b.dma_device("d1").unwrap().with_pasid(Some(Pasid(5)));
    let p6 = b.dma_device("d1").unwrap().with_pasid(Some(Pasid(6)));
    assert_eq!(p5.pasid(), Some(Pasid(5)));
    let jobs = [
        DmaJob { device: &plain, iova: Iova(0x10_0100), op: DmaOp::Write(b"untagged".to_vec()) },
        DmaJob { device: &p5, iova: Iova(0x10_0100), op: DmaOp::Write(b"pasid 5".to_vec()) },
        DmaJob { device: &p6, iova: Iova(0x10_0100), op: DmaOp::Write(b"pasid 6".to_vec()) },
    ];
    let r = run_parallel(&b.machine, &jobs);
    r[0].as_ref().unwrap();
    r[1].as_ref().unwrap();
    let Err(DmaError::Fault(f)) = &r[2] else { panic!("PASID 6 is not attached: {:?}", r[2]) };
    assert_eq!(f.pasid.into_option(), Some(Pasid(6)));
    assert_eq!(ram(&b, 0x100_0100, 8), b"untagged");
    assert_eq!(ram(&b, 0x200_0100, 7), b"pasid 5");
    let mut buf = [0u8; 7];
    p5.read(&b.machine, Iova(0x10_0100), &mut buf).unwrap();
    assert_eq!(&buf, b"pasid 5");
}

#[test]
fn ats_caches_translations_until_invalidated() {
    let b = platform();
    let ioas = attach_all(&b);
    let d1 = b.dma_device("d1").unwrap().with_ats(true);
    assert!(d1.ats());
    let base = IOVA0 + WINDOW;
    // Four pages: four translation requests, then every access hits the ATC.
    d1.write(&b.machine, Iova(base + 0x10), &[0x5a; 0x4000 - 0x20]).unwrap();
    let s = d1.atc_stats();
    assert_eq!((s.entries, s.misses, s.hits), (4, 4, 0));
    d1.write(&b.machine, Iova(base + 0x800), &[0xa5; 0x3000]).unwrap();
    assert_eq!(d1.atc_stats().misses, 4);
    assert_eq!(d1.atc_stats().hits, 4);
    assert_eq!(ram(&b, PA0 + WINDOW + 0x800, 2), vec![0xa5, 0xa5]);
    assert_eq!(ram(&b, PA0 + WINDOW + 0x10, 2), vec![0x5a, 0x5a]);
    // A write grant does not serve a read (the unit did not say the page is readable): the page
    // is translated again for reading, and the two grants make one entry.
    let mut buf = [0u8; 2];
    d1.read(&b.machine, Iova(base + 0x10), &mut buf).unwrap();
    assert_eq!((buf, d1.atc_stats().misses, d1.atc_stats().entries), ([0x5a; 2], 5, 4));
    d1.write(&b.machine, Iova(base + 0x20), b"rw").unwrap();
    d1.read(&b.machine, Iova(base + 0x20), &mut buf).unwrap();
    assert_eq!((&buf, d1.atc_stats().misses), (b"rw", 5));
    d1.read(&b.machine, Iova(base + 0x8000), &mut buf).unwrap();
    d1.write(&b.machine, Iova(base + 0x8000), b"w").unwrap();
    assert_eq!((d1.atc_stats().misses, d1.atc_stats().entries), (7, 5));

    // The unit forgets the page; the device's ATC does not until the host invalidates it (the
    // mock unit has no device-TLB invalidation command).
    b.ctx.unmap(ioas, Iova(base), 0x1000, UnmapMode::Cut).unwrap();
    d1.write(&b.machine, Iova(base + 0x10), b"stale").unwrap();
    assert_eq!(ram(&b, PA0 + WINDOW + 0x10, 5), b"stale");
    d1.invalidate_atc(IovaRange::new(Iova(base), 0x1000).unwrap());
    assert_eq!(d1.atc_stats().entries, 4, "only the unmapped page's entry went");
    let e = d1.write(&b.machine, Iova(base + 0x10), b"x").unwrap_err();
    assert!(matches!(e, DmaError::Fault(f) if f.reason == Fault::NOT_PRESENT), "{e}");
    // Other pages are still cached.
    d1.write(&b.machine, Iova(base + 0x1000), b"ok").unwrap();
    d1.flush_atc();
    assert_eq!(d1.atc_stats().entries, 0);

    // The cache is bounded.
    for page in 0..(ATC_ENTRIES as u64 + 8) {
        d1.read(&b.machine, Iova(base + 0x1000 + page * 0x1000), &mut buf).unwrap();
    }
    assert_eq!(d1.atc_stats().entries, ATC_ENTRIES);
}

#[test]
fn ats_devices_dma_in_parallel() {
    let b = platform();
    attach_all(&b);
    let devs: Vec<DmaDevice> = devices(&b).into_iter().map(|d| d.with_ats(true)).collect();
    let jobs: Vec<DmaJob<'_>> = devs
        .iter()
        .enumerate()
        .flat_map(|(n, d)| {
            let i = n as u64 + 1;
            (0..8u64).map(move |j| DmaJob {
                device: d,
                iova: Iova(IOVA0 + i * WINDOW + j * 0x1000),
                op: DmaOp::Write(pattern(i, j, 0x1000)),
            })
        })
        .collect();
    for r in run_parallel(&b.machine, &jobs) {
        r.unwrap();
    }
    for (n, d) in devs.iter().enumerate() {
        let i = n as u64 + 1;
        assert_eq!(d.atc_stats().misses, 8, "one translation per page");
        for j in 0..8u64 {
            assert_eq!(ram(&b, PA0 + i * WINDOW + j * 0x1000, 0x1000), pattern(i, j, 0x1000));
        }
    }
}
