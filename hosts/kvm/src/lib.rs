//! ioasis KVM host adapter: guest memory on a real `/dev/kvm` VM kept in step with an ioasis
//! IOAS, a vIOMMU for the guest, passthrough devices behind it, and the migration dirty log.
//!
//! The VM's guest RAM *is* a region of the simulated machine's host-physical RAM
//! ([`ioasis_baremetal::Machine`]): each memory slot registers a range of the machine's RAM with
//! `KVM_SET_USER_MEMORY_REGION`, and [`MemorySlots`] maps IOVA = guest-physical address to the
//! same physical range in one IOAS, so a real vCPU and the DMA devices attached to that IOAS
//! see the same bytes.
//!
//! A VMM embeds it like this: guest RAM mirrored into the stage-2 IOAS, a VT-d vIOMMU for the
//! guest, a passthrough NIC behind it (nested where the host unit grants it, shadowed
//! otherwise), the vCPU loop, and a migration round.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ioasis::loader::Registry;
//! use ioasis::{Context, DeviceDesc, DeviceRef, Iova, IovaRange, PhysAddr, RequesterId};
//! use ioasis_baremetal::{Machine, MachineConfig};
//! use ioasis_kvm::dirty::DirtyLog;
//! use ioasis_kvm::passthrough::{Passthrough, PassthroughConfig};
//! use ioasis_kvm::viommu::{GuestPhys, Viommu};
//! use ioasis_kvm::{MemorySlots, Vm};
//! use ioasis_plugin_vtd::model::{VtdModel, VtdModelConfig, WINDOW};
//! use kvm_ioctls::VcpuExit;
//!
//! const HOST_UNIT: u64 = 0xfed0_0000; // the host's IOMMU (machine address)
//! const VIOMMU_GPA: u64 = 0xfed9_0000; // the guest's VT-d (guest-physical)
//!
//! // The host: RAM, its VT-d unit (here the model, probed by the VT-d plugin), the NIC.
//! let machine = Arc::new(Machine::new(MachineConfig { ram_bytes: 1 << 30, table_pool_bytes: 16 << 20 })?);
//! let ctx = Arc::new(Context::new(machine.clone()));
//! machine.add_unit(PhysAddr(HOST_UNIT), WINDOW, Arc::new(VtdModel::new(VtdModelConfig::scalable())?))?;
//! let vtd = Registry::with_builtins()?.get("vtd").ok_or("the VT-d plugin is linked in")?;
//! ctx.add_unit(&vtd, "dmar0", PhysAddr(HOST_UNIT), 0, "")?;
//! let rid = RequesterId::new(0, 0, 3, 0);
//! let nic = ctx.bind_device(DeviceDesc::pci("nic", rid, "dmar0"))?;
//!
//! // Guest RAM: 256 MiB of host RAM at 64 MiB is guest-physical 0; the stage-2 IOAS follows it.
//! let vm = Arc::new(Vm::new(machine.clone())?);
//! let mut slots = MemorySlots::new(vm.clone(), ctx.clone(), ctx.alloc_ioas());
//! slots.reserve(IovaRange::new(Iova(VIOMMU_GPA), Viommu::WINDOW).ok_or("window")?, "vIOMMU registers")?;
//! let log_dirty = kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
//! slots.add(0, 0, PhysAddr(64 << 20), 256 << 20, log_dirty)?;
//!
//! // The guest's VT-d, and the NIC behind it, migratable (its writes reach the dirty log).
//! let guest_vtd = Arc::new(VtdModel::new(VtdModelConfig::scalable())?);
//! let viommu = Viommu::new(VIOMMU_GPA, guest_vtd, GuestPhys::of(&slots));
//! let config = PassthroughConfig { dirty_tracking: true };
//! let mut nic_pt = Passthrough::with_config(ctx.clone(), nic, DeviceRef::Rid(rid), slots.ioas(), &viommu, config)?;
//! println!("NIC behind the vIOMMU: {:?}", nic_pt.mode()); // Nested, or Shadow(reason)
//!
//! // The vCPU loop: the vIOMMU's MMIO goes to the model; after a guest write (a command or an
//! // invalidation) the host follows the guest's tables.
//! let mut vcpu = vm.create_vcpu(0)?;
//! let mut log = DirtyLog::start(&slots)?;
//! loop {
//!     match vcpu.fd().run()? {
//!         VcpuExit::MmioRead(gpa, data) => {
//!             if !viommu.handle_mmio_read(gpa, data) { /* the VMM's other devices */ }
//!         }
//!         VcpuExit::MmioWrite(gpa, data) => {
//!             if viommu.handle_mmio_write(gpa, data) {
//!                 nic_pt.sync(&viommu, &slots)?;
//!             }
//!         }
//!         VcpuExit::Hlt => break,
//!         _ => { /* the VMM's other devices */ }
//!     }
//!     // A migration round: the pages of slot 0 a vCPU or the NIC wrote since the last one.
//!     let dirty = log.read_and_clear(&slots, 0)?;
//!     let _resend = dirty.iter().map(|w| w.count_ones()).sum::<u32>();
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod acpi;
pub mod dirty;
pub mod dmar;
mod error;
pub mod host;
pub mod passthrough;
pub mod shadow;
mod slots;
pub mod viommu;
mod vm;

pub use error::{KvmError, SlotError};
pub use host::KvmHost;
pub use slots::{MachineRam, MemorySlots, Slot, SlotMemory, VmMemoryError};
pub use vm::{Vcpu, Vm};
