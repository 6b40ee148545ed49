//! ioasis KVM host adapter (first slice of issue 5): guest memory on a real `/dev/kvm` VM kept
//! in step with an ioasis IOAS.
//!
//! The VM's guest RAM *is* a region of the simulated machine's host-physical RAM
//! ([`ioasis_baremetal::Machine`]): each memory slot registers a range of the machine's RAM with
//! `KVM_SET_USER_MEMORY_REGION`, and [`MemorySlots`] maps IOVA = guest-physical address to the
//! same physical range in one IOAS, so a real vCPU and the DMA devices attached to that IOAS
//! see the same bytes.
//!
//! ```no_run
//! use std::sync::Arc;
//! use ioasis::{Context, PhysAddr};
//! use ioasis_baremetal::{Machine, MachineConfig};
//! use ioasis_kvm::{MemorySlots, Vm};
//!
//! let machine = Arc::new(Machine::new(MachineConfig::default())?);
//! let ctx = Arc::new(Context::new(machine.clone()));
//! let vm = Arc::new(Vm::new(machine)?);
//! let ioas = ctx.alloc_ioas();
//! let mut slots = MemorySlots::new(vm.clone(), ctx.clone(), ioas);
//! // Guest-physical 0..16 MiB is machine RAM at 64 MiB; devices in `ioas` DMA to IOVA = GPA.
//! slots.add(0, 0, PhysAddr(64 << 20), 16 << 20, 0)?;
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
