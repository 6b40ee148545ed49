//! A KVM virtual machine whose guest memory lives in a simulated machine's RAM.

use std::sync::Arc;

use ioasis_baremetal::Machine;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::KvmError;

/// A KVM VM created on `/dev/kvm`, keeping the [`Machine`] whose RAM backs its guest memory
/// alive for as long as the VM.
///
/// Field order matters: the VM file descriptor is dropped (and the kernel forgets the memory
/// slots, unless a [`Vcpu`] still holds the VM) before the machine's RAM can be unmapped.
pub struct Vm {
    vm: VmFd,
    kvm: Kvm,
    machine: Arc<Machine>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("machine", &self.machine).finish_non_exhaustive()
    }
}

impl Vm {
    /// Opens `/dev/kvm` and creates a VM whose guest memory will come from `machine`'s RAM.
    ///
    /// Fails with [`KvmError::Unavailable`] when `/dev/kvm` cannot be opened or has an
    /// unexpected API version, and with [`KvmError::Ioctl`] when creating the VM fails.
    pub fn new(machine: Arc<Machine>) -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(|e| KvmError::Unavailable(format!("cannot open /dev/kvm: {e}")))?;
        let api = kvm.get_api_version();
        if api != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(KvmError::Unavailable(format!(
                "/dev/kvm speaks API version {api}, expected {}",
                kvm_bindings::KVM_API_VERSION
            )));
        }
        let vm = kvm.create_vm().map_err(|e| KvmError::ioctl("KVM_CREATE_VM", e))?;
        tracing::info!(api, nr_memslots = kvm.get_nr_memslots(), "KVM VM created");
        Ok(Self { vm, kvm, machine })
    }

    /// The machine whose RAM backs guest memory.
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The KVM VM file descriptor (for ioctls this adapter does not wrap yet).
    pub fn fd(&self) -> &VmFd {
        &self.vm
    }

    /// How many memory slots KVM supports for this VM.
    pub fn nr_memslots(&self) -> usize {
        self.kvm.get_nr_memslots()
    }

    /// Creates vCPU `id`. The returned [`Vcpu`] keeps the machine's RAM alive too, since the
    /// kernel keeps the VM (and its memory slots) while a vCPU file descriptor is open.
    pub fn create_vcpu(&self, id: u64) -> Result<Vcpu, KvmError> {
        let fd = self.vm.create_vcpu(id).map_err(|e| KvmError::ioctl("KVM_CREATE_VCPU", e))?;
        tracing::debug!(id, "vCPU created");
        Ok(Vcpu { fd, _machine: self.machine.clone() })
    }
}

/// A vCPU of a [`Vm`]. Dropped before the machine's RAM it may access (field order).
pub struct Vcpu {
    fd: VcpuFd,
    _machine: Arc<Machine>,
}

impl std::fmt::Debug for Vcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vcpu").finish_non_exhaustive()
    }
}

impl Vcpu {
    /// The vCPU file descriptor: registers, `run`.
    pub fn fd(&mut self) -> &mut VcpuFd {
        &mut self.fd
    }
}
