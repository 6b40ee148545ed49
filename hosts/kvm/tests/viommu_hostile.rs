//! The vIOMMU's MMIO and DMA paths against a hostile guest, without `/dev/kvm`: a [`Viommu`]
//! over a [`GuestPhys`] view built from slots directly (no VM), with the VT-d model behind it.
//!
//! Random guest-physical addresses (in, around and far from the register window), access
//! lengths 0..16 and data, interleaved with random guest RAM contents (the tables the model
//! reads) and emulated-device DMA: nothing panics, a read fills exactly its buffer, accesses
//! outside the window are not claimed, and DMA errors are typed (never an empty translation).
//!
//! 256 cases; `PROPTEST_CASES=N cargo test -p ioasis-kvm --test viommu_hostile -- --ignored`
//! runs `long_run` with N cases (default 20 000).

use std::sync::Arc;

use ioasis::platform::{PhysMemory, UnitModel};
use ioasis::{DeviceRef, PhysAddr, RequesterId};
use ioasis_baremetal::{Machine, MachineConfig};
use ioasis_kvm::viommu::{GuestPhys, Viommu, ViommuDmaError};
use ioasis_kvm::Slot;
use ioasis_plugin_vtd::model::{VtdModel, VtdModelConfig};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const BASE: u64 = 0xfed9_0000;
const MB: u64 = 1 << 20;

/// What the guest, or a device, does.
#[derive(Clone, Debug)]
enum Op {
    MmioRead {
        gpa: u64,
        len: usize,
    },
    MmioWrite {
        gpa: u64,
        data: Vec<u8>,
    },
    /// The guest writes its RAM (tables, queues): `data` at guest-physical `gpa`.
    Ram {
        gpa: u64,
        data: Vec<u8>,
    },
    DmaRead {
        dev: u16,
        iova: u64,
        len: usize,
    },
    DmaWrite {
        dev: u16,
        iova: u64,
        len: usize,
    },
    /// The model's own accesses to guest memory, at any address (slot edges, the read-only
    /// slot, misaligned, wrapping).
    Phys {
        gpa: u64,
        len: usize,
        kind: u8,
    },
}

/// An address in the window (aligned or not), just around it, or anywhere.
fn gpa() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => (0u64..0x1000).prop_map(|o| BASE + o),
        3 => prop::sample::select(vec![0x0u64, 0x18, 0x1c, 0x20, 0x28, 0x34, 0x80, 0x88, 0x90, 0x9c, 0xc0, 0xc8, 0xd0, 0x400, 0x408, 0x500, 0x508])
            .prop_map(|o| BASE + o),
        1 => (0u64..32).prop_map(|o| BASE - 16 + o),
        1 => (0u64..32).prop_map(|o| BASE + 0x1000 - 16 + o),
        1 => any::<u64>(),
        1 => (0u64..16).prop_map(|o| u64::MAX - o),
        1 => (0u64..0x1000).prop_map(|o| u64::MAX - o),
        1 => 0u64..0x1000,
    ]
}

/// Register data: random, or commands (GCMD TE / SRTP / QIE, RTADDR / IQA pointers in RAM).
fn data(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), len),
        1 => (0u64..8, 0u64..4).prop_map(|(b, _)| ((b & 1) << 31 | (b >> 1 & 1) << 30 | (b >> 2 & 1) << 26).to_le_bytes()[..4].to_vec()),
        1 => (0u64..512, 0u64..0x1000).prop_map(|(p, low)| ((p * 4096) | (low & 0xc07)).to_le_bytes().to_vec()),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (gpa(), 0usize..16).prop_map(|(gpa, len)| Op::MmioRead { gpa, len }),
        4 => (gpa(), data(0..16)).prop_map(|(gpa, data)| Op::MmioWrite { gpa, data }),
        2 => (prop_oneof![0u64..2 * MB, any::<u64>()], prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(gpa, data)| Op::Ram { gpa, data }),
        1 => (any::<u16>(), prop_oneof![0u64..4 * MB, any::<u64>()], 0usize..0x3000).prop_map(|(dev, iova, len)| Op::DmaRead { dev, iova, len }),
        1 => (any::<u16>(), prop_oneof![0u64..4 * MB, any::<u64>()], 0usize..0x3000).prop_map(|(dev, iova, len)| Op::DmaWrite { dev, iova, len }),
        2 => (prop_oneof![(0u64..64).prop_map(|o| MB - 32 + o), (0u64..64).prop_map(|o| 2 * MB - 32 + o), (0u64..0x10010).prop_map(|o| (1 << 30) - 8 + o), any::<u64>()], 0usize..40, any::<u8>())
            .prop_map(|(gpa, len, kind)| Op::Phys { gpa, len, kind }),
    ]
}

/// Guest RAM: two adjacent 1 MiB slots at guest-physical 0 (machine 0 and 2 MiB) and a
/// read-only 64 KiB slot at 1 GiB.
fn viommu(scalable: bool, base: u64) -> Viommu {
    let machine = Arc::new(Machine::new(MachineConfig { ram_bytes: 4 * MB, table_pool_bytes: 0 }).expect("machine"));
    let slots = [
        Slot { id: 0, gpa: 0, pa: PhysAddr(0), len: MB, flags: 0 },
        Slot { id: 1, gpa: MB, pa: PhysAddr(2 * MB), len: MB, flags: 0 },
        Slot { id: 2, gpa: 1 << 30, pa: PhysAddr(3 * MB), len: 64 << 10, flags: kvm_bindings::KVM_MEM_READONLY },
    ];
    let cfg = if scalable { VtdModelConfig::scalable() } else { VtdModelConfig::legacy() };
    let model: Arc<dyn UnitModel> = Arc::new(VtdModel::new(cfg).expect("model"));
    Viommu::new(base, model, GuestPhys::new(machine, slots))
}

/// Where the window is: the usual place, or at the very top of the guest-physical space (the
/// window then ends at, or wraps past, 2^64), or at 0 (over guest RAM: a misconfigured VMM).
fn base(sel: u8) -> u64 {
    match sel % 8 {
        0 => u64::MAX - 0xfff,
        1 => u64::MAX - 0x7ff,
        2 => 0,
        _ => BASE,
    }
}

fn run(scalable: bool, sel: u8, ops: &[Op]) -> Result<(), TestCaseError> {
    let base = base(sel);
    let v = viommu(scalable, base);
    let in_window = |gpa: u64| gpa >= base && gpa - base < Viommu::WINDOW;
    for op in ops {
        match op {
            Op::MmioRead { gpa, len } => {
                let mut buf = vec![0x5a; *len];
                let claimed = v.handle_mmio_read(*gpa, &mut buf);
                prop_assert_eq!(claimed, in_window(*gpa));
                if !claimed {
                    prop_assert!(buf.iter().all(|&b| b == 0x5a), "an unclaimed read filled {buf:x?}");
                    continue;
                }
                // The model's own answer (reads have no side effects), or all ones.
                let direct = v.model().mmio_read(v.memory(), gpa - base, *len as u8).unwrap_or(u64::MAX);
                let want: Vec<u8> = (0..*len).map(|i| direct.to_le_bytes().get(i).copied().unwrap_or(0xff)).collect();
                prop_assert_eq!(buf, want);
            }
            Op::MmioWrite { gpa, data } => {
                prop_assert_eq!(v.handle_mmio_write(*gpa, data), in_window(*gpa));
            }
            Op::Ram { gpa, data } => {
                let _ = v.memory().write(PhysAddr(*gpa), data);
            }
            Op::DmaRead { dev, iova, len } => {
                let mut buf = vec![0; *len];
                check_dma(v.dma_read(rid(*dev), *iova, &mut buf))?;
            }
            Op::DmaWrite { dev, iova, len } => {
                check_dma(v.dma_write(rid(*dev), *iova, &vec![0xa5; *len]))?;
            }
            Op::Phys { gpa, len, kind } => {
                let (m, at) = (v.memory(), PhysAddr(*gpa));
                let ok = match kind % 6 {
                    0 => m.read(at, &mut vec![0; *len]).is_ok(),
                    1 => m.write(at, &vec![0x3c; *len]).is_ok(),
                    2 => m.read_u64(at).is_ok(),
                    3 => m.write_u64(at, u64::MAX).is_ok(),
                    4 => m.fetch_or_u64(at, 1).is_ok(),
                    _ => m.fetch_and_u64(at, !1).is_ok(),
                };
                // 64-bit accesses: aligned and inside one slot; writes never to the read-only one.
                let word = *gpa % 8 == 0 && (*gpa < 2 * MB || (kind % 6 == 2 && *gpa >> 16 == 1 << 14));
                if kind % 6 >= 2 {
                    prop_assert_eq!(ok, word, "64-bit access at {:#x} (kind {})", gpa, kind % 6);
                }
            }
        }
    }
    Ok(())
}

fn rid(sid: u16) -> DeviceRef {
    DeviceRef::Rid(RequesterId::new(0, (sid >> 8) as u8, ((sid >> 3) & 31) as u8, sid as u8 & 7))
}

fn check_dma(r: Result<(), ViommuDmaError>) -> Result<(), TestCaseError> {
    match r {
        Err(ViommuDmaError::EmptyTranslation(iova)) => Err(TestCaseError::fail(format!("empty translation at {iova}"))),
        Err(ViommuDmaError::Fault { fault, .. }) => {
            prop_assert!((1..=6).contains(&fault.reason), "{fault:?}");
            Ok(())
        }
        _ => Ok(()),
    }
}

fn property(cases: u32) {
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let strat = (any::<bool>(), any::<u8>(), prop::collection::vec(op(), 1..64));
    TestRunner::new(config).run(&strat, |(scalable, sel, ops)| run(scalable, sel, &ops)).unwrap();
}

#[test]
fn mmio_and_dma_never_panic() {
    property(256);
}

#[test]
#[ignore = "long run: PROPTEST_CASES=N cargo test -p ioasis-kvm --test viommu_hostile -- --ignored"]
fn long_run() {
    property(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000));
}
