//! A real machine as a second platform: QEMU driven through its qtest socket.
//!
//! [`QemuMachine`] starts QEMU (x86 q35 or Arm virt) with a firmware image that only halts the
//! vCPU ([`firmware`]), an `edu` PCI device as the DMA engine, and whatever IOMMU the caller
//! adds. It implements [`ioasis::platform::PhysMemory`] and [`ioasis::platform::Platform`] on the
//! guest's RAM and MMIO, so a backend written against the framework drives QEMU's IOMMU model
//! exactly as it drives the simulated [`crate::Machine`]. The harness listens on a unix socket;
//! QEMU connects with `-qtest unix:PATH` and [`Qtest`] speaks the text protocol.
//!
//! Every wait is bounded: QEMU's start, every qtest reply, an edu DMA, and reaping QEMU when the
//! machine is dropped. QEMU is killed on drop.
//!
//! ```no_run
//! use ioasis::{Iova, PhysAddr};
//! use ioasis::platform::PhysMemory;
//! use ioasis_baremetal::qemu::{QemuConfig, QemuMachine};
//!
//! let m = QemuMachine::start(QemuConfig::x86_q35())?;
//! m.write(PhysAddr(0x20_0000), b"hello")?;
//! let edu = m.edu();
//! edu.dma_to_device(Iova(0x20_0000), 5)?;
//! edu.dma_from_device(Iova(0x30_0000), 5)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod edu;
mod error;
pub mod firmware;
mod machine;
mod pci;
mod process;
mod qtest;

use std::path::{Path, PathBuf};

pub use edu::{Edu, EduDirection, EduInfo};
pub use error::{QemuError, QemuResult};
pub use machine::{Accel, Arch, QemuConfig, QemuMachine, RamRange};
pub use pci::{Bar, Pci};
pub use qtest::Qtest;

/// How much of QEMU's stderr an error message shows.
const STDERR_TAIL: u64 = 2048;

/// The last couple of KiB of a log file (empty if it cannot be read).
pub(crate) fn stderr_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(STDERR_TAIL)));
    let mut buf = Vec::new();
    let _ = f.take(STDERR_TAIL).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).trim_end().to_owned()
}

/// The path of `program` in `PATH` (or `program` itself if it contains a `/` and exists).
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// True when `/dev/kvm` can be opened for reading and writing (so `-accel kvm` can work).
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}
