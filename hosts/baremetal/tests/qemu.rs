//! The QEMU platform with the IOMMU off: guest RAM through qtest, PCI discovery, and edu DMA
//! RAM → buffer → RAM on x86 q35 and (when its QEMU is installed) Arm virt.
//!
//! Prerequisites: `qemu-system-x86_64` / `qemu-system-aarch64`. When one is missing the test
//! says why and passes, except under `CI=true`, where a missing prerequisite fails the test.

use std::time::Instant;

use ioasis::abi::HostError;
use ioasis::platform::{PhysMemory, Platform};
use ioasis::{Iova, PhysAddr};
use ioasis_baremetal::qemu::{find_program, Accel, Arch, Edu, QemuConfig, QemuError, QemuMachine};

/// True when `arch`'s QEMU is installed; otherwise skips (or, under CI, fails).
fn prerequisite(arch: Arch) -> bool {
    if find_program(arch.qemu_binary()).is_some() {
        return true;
    }
    let why = format!("{} is not installed (scripts/setup-debian.sh installs it)", arch.qemu_binary());
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("missing prerequisite under CI=true: {why}");
    }
    eprintln!("SKIP: {why}");
    false
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("ioasis_baremetal=debug").try_init();
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn dma_round_trip(config: QemuConfig) {
    init_tracing();
    let arch = config.arch;
    let t0 = Instant::now();
    let m = QemuMachine::start(config).unwrap_or_else(|e| panic!("QEMU did not start: {e}"));
    eprintln!("{arch:?}: QEMU ({:?}) ready in {:?}", m.accel(), m.started_in());
    assert!(m.is_running());

    // Config space: edu is where the command line put it, with BAR0 assigned and enabled.
    let edu = m.edu();
    let pci = m.pci();
    let rid = pci.find(Edu::VENDOR, Edu::DEVICE).unwrap();
    assert_eq!(rid, edu.requester_id());
    assert_eq!(rid.devfn >> 3, arch.default_edu_slot());
    assert_eq!(pci.read_config(rid, 0).unwrap(), 0x11e8_1234);
    assert_eq!(pci.read_config(rid, 0x10).unwrap() & !0xf, edu.bar0().raw() as u32);
    assert_eq!(pci.command(rid).unwrap() & 0x6, 0x6);
    assert_eq!(edu.id().unwrap(), 0x0100_00ed);
    let devices = pci.scan().unwrap();
    assert!(devices.iter().any(|&(r, v, _)| r.devfn == 0 && v != 0xffff), "a host bridge at 00:00.0: {devices:?}");
    if arch == Arch::ArmVirt {
        assert_eq!(edu.stream_id(), 0x10);
    }

    // Guest RAM through qtest.
    let ram = m.ram_ranges().iter().max_by_key(|r| r.len).copied().unwrap();
    let src = PhysAddr(ram.start.raw() + 0x20_0000);
    let dst = PhysAddr(ram.start.raw() + 0x30_0000);
    let data = pattern(4096, 7);
    m.write(src, &data).unwrap();
    m.write(dst, &[0u8; 4096]).unwrap();
    let mut back = vec![0u8; 4096];
    m.read(src, &mut back).unwrap();
    assert_eq!(back, data);
    m.write_u64(PhysAddr(dst.raw() + 0x1000), 0x0123_4567_89ab_cdef).unwrap();
    assert_eq!(m.read_u64(PhysAddr(dst.raw() + 0x1000)).unwrap(), 0x0123_4567_89ab_cdef);
    assert_eq!(m.fetch_or_u64(PhysAddr(dst.raw() + 0x1000), 0xf0).unwrap(), 0x0123_4567_89ab_cdef);
    assert_eq!(m.fetch_and_u64(PhysAddr(dst.raw() + 0x1000), 0xffff).unwrap(), 0x0123_4567_89ab_cdff);
    assert_eq!(m.read_u64(PhysAddr(dst.raw() + 0x1000)).unwrap(), 0xcdff);

    // edu DMA with the IOMMU off: IOVA = guest physical address.
    let t = Instant::now();
    let n = Edu::MAX_TRANSFER;
    edu.dma_to_device(Iova(src.raw()), n).unwrap();
    edu.dma_from_device(Iova(dst.raw()), n).unwrap();
    eprintln!("{arch:?}: two edu DMAs took {:?}", t.elapsed());
    m.read(dst, &mut back).unwrap();
    assert_eq!(back[..n as usize], data[..n as usize], "the DMA copy differs from the source");
    assert_eq!(back[n as usize], 0, "nothing beyond the transfer");
    // A partial transfer at a buffer offset lands exactly there.
    edu.dma(ioasis_baremetal::qemu::EduDirection::FromDevice, Iova(dst.raw() + 0x2000), 0x10, 0x20).unwrap();
    let mut small = [0u8; 0x30];
    m.read(PhysAddr(dst.raw() + 0x2000), &mut small).unwrap();
    assert_eq!(&small[..0x20], &data[0x10..0x30]);
    assert_eq!(&small[0x20..], &[0u8; 0x10]);
    assert!(matches!(edu.dma_to_device(Iova(src.raw()), 4096), Err(QemuError::EduRange { .. })));
    assert!(matches!(edu.dma_to_device(Iova(src.raw()), 0), Err(QemuError::EduRange { .. })));
    assert!(m.is_running(), "refused transfers never reach QEMU");

    // Table pages: zeroed, counted, double free refused.
    let (pool, pool_len) = m.table_pool();
    assert!(pool.raw() >= ram.start.raw() && pool.raw() + pool_len == ram.end());
    m.write(pool, &[0xa5; 4096]).unwrap();
    let page = m.alloc_table_page().unwrap();
    assert_eq!(page, pool);
    assert_eq!(m.read_u64(PhysAddr(page.raw() + 0xff8)).unwrap(), 0, "table page is zeroed");
    assert_eq!(m.table_pages(), 1);
    m.free_table_page(page).unwrap();
    assert_eq!(m.free_table_page(page).unwrap_err().code, HostError::NOT_ALLOCATED);
    assert_eq!(m.table_pages(), 0);

    // MMIO through the Platform interface (edu's registers stand in for a unit's).
    assert_eq!(m.mmio_read(edu.bar0(), 0, 4).unwrap(), 0x0100_00ed);
    m.mmio_write(edu.bar0(), 0x8, 4, 5).unwrap(); // factorial register
    assert_eq!(m.mmio_read(edu.bar0(), 0, 2).unwrap_err().code, HostError::BAD_REGISTER);

    // Bad addresses are errors, not panics.
    let beyond = PhysAddr(ram.end());
    assert_eq!(m.read_u64(beyond).unwrap_err().code, HostError::BAD_ADDRESS);
    assert_eq!(m.write(PhysAddr(ram.end() - 4), &[0; 8]).unwrap_err().code, HostError::BAD_ADDRESS);
    assert_eq!(m.read_u64(PhysAddr(src.raw() + 4)).unwrap_err().code, HostError::BAD_ADDRESS, "misaligned");
    assert_eq!(m.read(PhysAddr(u64::MAX - 2), &mut [0; 8]).unwrap_err().code, HostError::BAD_ADDRESS);

    // QEMU is gone after drop.
    let pid = m.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    drop(m);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "QEMU {pid} still exists after drop");
    eprintln!("{arch:?}: start + scenario + stop took {:?}", t0.elapsed());
}

#[test]
fn x86_q35_edu_dma_with_iommu_off() {
    if prerequisite(Arch::X86Q35) {
        dma_round_trip(QemuConfig::x86_q35());
    }
}

#[test]
fn x86_q35_under_tcg() {
    if prerequisite(Arch::X86Q35) {
        dma_round_trip(QemuConfig { accel: Accel::Tcg, ..QemuConfig::x86_q35() });
    }
}

#[test]
fn arm_virt_edu_dma_with_iommu_off() {
    if prerequisite(Arch::ArmVirt) {
        dma_round_trip(QemuConfig::arm_virt());
    }
}

#[test]
fn a_dead_qemu_is_a_platform_error() {
    if !prerequisite(Arch::X86Q35) {
        return;
    }
    init_tracing();
    let m = QemuMachine::start(QemuConfig::x86_q35()).unwrap();
    let ram = m.ram_ranges()[1];
    m.kill();
    assert!(!m.is_running());
    let t = Instant::now();
    assert_eq!(m.read_u64(ram.start).unwrap_err().code, HostError::PLATFORM);
    assert_eq!(m.mmio_read(m.edu().bar0(), 0, 4).unwrap_err().code, HostError::PLATFORM);
    assert_eq!(m.alloc_table_page().unwrap_err().code, HostError::PLATFORM);
    assert_eq!(m.table_pages(), 0, "a failed allocation gives its page back");
    assert!(matches!(m.edu().dma_to_device(Iova(ram.start.raw()), 16), Err(QemuError::Broken(_))));
    assert!(t.elapsed().as_secs() < 5, "errors are immediate, not timeouts");
}

#[test]
fn a_qemu_that_refuses_its_command_line_is_an_exit_with_stderr() {
    if !prerequisite(Arch::X86Q35) {
        return;
    }
    let config = QemuConfig { extra_devices: vec!["no-such-device".into()], ..QemuConfig::x86_q35() };
    match QemuMachine::start(config) {
        Err(QemuError::Exited { stderr, .. }) => assert!(stderr.contains("no-such-device"), "{stderr}"),
        other => panic!("expected an exit, got {other:?}"),
    }
}

/// With an IOMMU present but not enabled, DMA bypasses it; its registers read as QEMU 7.2's.
fn iommu_present_but_off(config: QemuConfig, unit: PhysAddr, reg: u64, expect: u64, width: u8) {
    init_tracing();
    let m = QemuMachine::start(config).unwrap_or_else(|e| panic!("QEMU did not start: {e}"));
    assert_eq!(m.mmio_read(unit, reg, width).unwrap(), expect);
    let ram = m.ram_ranges().iter().max_by_key(|r| r.len).copied().unwrap();
    let (src, dst) = (ram.start.raw() + 0x10_0000, ram.start.raw() + 0x18_0000);
    let data = pattern(256, 99);
    m.write(PhysAddr(src), &data).unwrap();
    m.edu().dma_to_device(Iova(src), 256).unwrap();
    m.edu().dma_from_device(Iova(dst), 256).unwrap();
    let mut back = vec![0u8; 256];
    m.read(PhysAddr(dst), &mut back).unwrap();
    assert_eq!(back, data);
}

#[test]
fn x86_q35_with_vtd_present_but_off() {
    if prerequisite(Arch::X86Q35) {
        let config = QemuConfig { extra_devices: vec!["intel-iommu,aw-bits=48".into()], ..QemuConfig::x86_q35() };
        // VT-d CAP register (offset 8).
        iommu_present_but_off(config, PhysAddr(0xfed9_0000), 0x8, 0x00d2_008c_222f_0606, 8);
    }
}

#[test]
fn arm_virt_with_smmuv3_present_but_off() {
    if prerequisite(Arch::ArmVirt) {
        let config = QemuConfig { machine_opts: vec!["iommu=smmuv3".into()], ..QemuConfig::arm_virt() };
        // SMMU_IDR0 (offset 0).
        iommu_present_but_off(config, PhysAddr(0x0905_0000), 0x0, 0x0d40_101a, 4);
    }
}
