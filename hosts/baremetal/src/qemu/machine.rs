//! [`QemuMachine`]: a QEMU process with its guest RAM, MMIO and PCI bus behind the framework's
//! [`Platform`] interface.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ioasis::abi::HostError;
use ioasis::platform::{PhysMemory, Platform};
use ioasis::{PhysAddr, RequesterId, PAGE_SIZE};

use super::edu::{Edu, EduInfo};
use super::error::{QemuError, QemuResult};
use super::firmware;
use super::pci::Pci;
use super::process::{Process, ScratchDir};
use super::qtest::Qtest;
use crate::pool::TablePool;

/// The machine QEMU emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `qemu-system-x86_64 -machine q35`: PCI config through ports 0xcf8/0xcfc, RAM from 0
    /// (below 4 GiB up to 2.75 GiB or 2 GiB, the rest from 4 GiB).
    X86Q35,
    /// `qemu-system-aarch64 -machine virt,highmem=off -cpu cortex-a57`: PCI config through ECAM
    /// at 0x3f00_0000, RAM from 0x4000_0000.
    ArmVirt,
}

impl Arch {
    /// The QEMU binary for this machine.
    pub const fn qemu_binary(self) -> &'static str {
        match self {
            Self::X86Q35 => "qemu-system-x86_64",
            Self::ArmVirt => "qemu-system-aarch64",
        }
    }

    /// The PCI slot the edu device goes in by default (x86: 00:04.0; virt: 00:02.0, which is
    /// SMMUv3 StreamID 0x10).
    pub const fn default_edu_slot(self) -> u8 {
        match self {
            Self::X86Q35 => 4,
            Self::ArmVirt => 2,
        }
    }

    /// The window the harness assigns PCI memory BARs from: `[start, end)`. It avoids RAM,
    /// the IOAPIC, HPET, VT-d (0xfed9_0000), AMD-Vi (0xfed8_0000) and the MSI window on x86
    /// (q35's PCI hole, below 0xfec0_0000), and is the PCIe MMIO window on virt.
    pub const fn bar_window(self) -> (u64, u64) {
        match self {
            Self::X86Q35 => (0xe000_0000, 0xfec0_0000),
            Self::ArmVirt => (0x1000_0000, 0x3eff_0000),
        }
    }
}

/// The accelerator QEMU runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Accel {
    /// x86: KVM when `/dev/kvm` is usable, else TCG. aarch64: TCG.
    Auto,
    /// KVM.
    Kvm,
    /// TCG (emulation).
    Tcg,
}

/// How to start a [`QemuMachine`].
#[derive(Clone, Debug)]
pub struct QemuConfig {
    /// The machine.
    pub arch: Arch,
    /// Guest RAM in MiB.
    pub ram_mib: u64,
    /// `-device` arguments placed before the edu device, e.g. `intel-iommu,aw-bits=48` or
    /// `amd-iommu` (QEMU wants an IOMMU before the PCI devices behind it).
    pub extra_devices: Vec<String>,
    /// Extra `-machine` options, e.g. `iommu=smmuv3` on virt.
    pub machine_opts: Vec<String>,
    /// The accelerator.
    pub accel: Accel,
    /// MiB at the top of guest RAM handed out as table pages.
    pub table_pool_mib: u64,
    /// PCI slot (device number on bus 0) of the edu device.
    pub edu_slot: u8,
    /// The QEMU binary; `None`: [`Arch::qemu_binary`] from `PATH`.
    pub qemu_binary: Option<PathBuf>,
    /// Bound on QEMU's start (until it connects to the qtest socket).
    pub start_timeout: Duration,
    /// Bound on each qtest reply.
    pub reply_timeout: Duration,
}

impl QemuConfig {
    /// q35 with 256 MiB of RAM, no IOMMU, edu at 00:04.0.
    pub fn x86_q35() -> Self {
        Self::new(Arch::X86Q35, 256)
    }

    /// virt (highmem=off, cortex-a57, TCG) with 512 MiB of RAM, no IOMMU, edu at 00:02.0.
    pub fn arm_virt() -> Self {
        Self::new(Arch::ArmVirt, 512)
    }

    fn new(arch: Arch, ram_mib: u64) -> Self {
        Self {
            arch,
            ram_mib,
            extra_devices: Vec::new(),
            machine_opts: Vec::new(),
            accel: Accel::Auto,
            table_pool_mib: 16,
            edu_slot: arch.default_edu_slot(),
            qemu_binary: None,
            start_timeout: Duration::from_secs(20),
            reply_timeout: Qtest::DEFAULT_TIMEOUT,
        }
    }

    /// The binary that will be run.
    pub fn program(&self) -> PathBuf {
        self.qemu_binary.clone().unwrap_or_else(|| PathBuf::from(self.arch.qemu_binary()))
    }

    /// The accelerator that will be used ([`Accel::Auto`] resolved).
    pub fn resolved_accel(&self) -> Accel {
        match (self.accel, self.arch) {
            (Accel::Auto, Arch::X86Q35) if super::kvm_usable() => Accel::Kvm,
            (Accel::Auto, _) => Accel::Tcg,
            (a, _) => a,
        }
    }

    fn validate(&self) -> QemuResult<()> {
        let bad = |s: String| Err(QemuError::Config(s));
        let max_ram_mib = match self.arch {
            Arch::X86Q35 => 1 << 20,
            // highmem=off: RAM must end below 4 GiB.
            Arch::ArmVirt => 3 << 10,
        };
        if self.ram_mib < 4 || self.ram_mib > max_ram_mib {
            return bad(format!("ram_mib {} is not in 4..={max_ram_mib}", self.ram_mib));
        }
        if self.table_pool_mib == 0 || self.table_pool_mib >= self.ram_mib / 2 {
            return bad(format!("table_pool_mib {} must be in 1..{}", self.table_pool_mib, self.ram_mib / 2));
        }
        if self.edu_slot == 0 || self.edu_slot >= 32 {
            return bad(format!("edu_slot {} must be in 1..32 (slot 0 is the host bridge)", self.edu_slot));
        }
        Ok(())
    }

    /// RAM as the guest sees it.
    fn ram_ranges(&self) -> Vec<RamRange> {
        let ram = self.ram_mib << 20;
        match self.arch {
            Arch::X86Q35 => {
                // pc_q35.c: low RAM ends at 2.75 GiB, or at 2 GiB when RAM is at least 2.75 GiB.
                let lowmem = if ram >= 0xb000_0000 { 0x8000_0000 } else { 0xb000_0000 };
                let below = ram.min(lowmem);
                // 0xa_0000..0x10_0000 is VGA and BIOS space, not RAM.
                let mut v = vec![RamRange { start: PhysAddr(0), len: 0xa_0000 }];
                if below > 0x10_0000 {
                    v.push(RamRange { start: PhysAddr(0x10_0000), len: below - 0x10_0000 });
                }
                if ram > below {
                    v.push(RamRange { start: PhysAddr(1 << 32), len: ram - below });
                }
                v
            }
            Arch::ArmVirt => vec![RamRange { start: PhysAddr(0x4000_0000), len: ram }],
        }
    }

    fn command(&self, program: &PathBuf, accel: Accel, socket: &str, bios: &str) -> Command {
        let mut cmd = Command::new(program);
        let mut machine = match self.arch {
            Arch::X86Q35 => "q35".to_owned(),
            Arch::ArmVirt => "virt,highmem=off".to_owned(),
        };
        for opt in &self.machine_opts {
            machine.push(',');
            machine.push_str(opt);
        }
        let accel = match accel {
            Accel::Kvm => "kvm",
            Accel::Tcg | Accel::Auto => "tcg",
        };
        cmd.args([
            "-qtest",
            &format!("unix:{socket}"),
            "-qtest-log",
            "none",
            "-display",
            "none",
            "-nodefaults",
            "-no-user-config",
        ]);
        cmd.args(["-machine", &machine, "-accel", accel]);
        if self.arch == Arch::ArmVirt {
            cmd.args(["-cpu", "cortex-a57"]);
        }
        cmd.args(["-m", &format!("{}M", self.ram_mib), "-bios", bios]);
        for dev in &self.extra_devices {
            cmd.args(["-device", dev]);
        }
        cmd.args(["-device", &format!("edu,addr={:02x}.0,dma_mask=0xffffffffffffffff", self.edu_slot)]);
        cmd
    }
}

/// A range of guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    /// First address.
    pub start: PhysAddr,
    /// Length in bytes.
    pub len: u64,
}

impl RamRange {
    /// One past the last address.
    pub const fn end(&self) -> u64 {
        self.start.0 + self.len
    }
    fn contains(&self, pa: u64, len: u64) -> bool {
        pa >= self.start.0 && pa.checked_add(len).is_some_and(|e| e <= self.end())
    }
}

/// A QEMU machine driven through qtest; implements [`Platform`].
///
/// The vCPU only halts (see [`firmware`]); the harness is the only agent touching guest RAM,
/// registers and PCI config space, besides the devices' DMA. `Send + Sync`: commands to QEMU are
/// serialized by a lock. QEMU is killed and reaped when the machine is dropped.
///
/// # Atomicity
/// [`PhysMemory::fetch_or_u64`] and [`PhysMemory::fetch_and_u64`] are a qtest `readq` then a
/// `writeq` under that lock: atomic against every other user of this machine, but not against
/// QEMU's own IOMMU model, which may set accessed/dirty bits in table entries while a DMA runs.
/// The harness never runs a DMA while it edits tables (an edu DMA is started and waited for in
/// one call), so the read-modify-write cannot lose a bit set by QEMU. A test that edits tables
/// from one thread while another runs a DMA would break that assumption.
pub struct QemuMachine {
    arch: Arch,
    accel: Accel,
    qtest: Mutex<Qtest>,
    process: Mutex<Process>,
    ram: Vec<RamRange>,
    pool: TablePool,
    bar_next: Mutex<u64>,
    edu: EduInfo,
    started_in: Duration,
    // Dropped last: QEMU is dead by then.
    dir: ScratchDir,
}

impl std::fmt::Debug for QemuMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuMachine")
            .field("arch", &self.arch)
            .field("accel", &self.accel)
            .field("pid", &self.pid())
            .field("ram", &self.ram)
            .field("pool", &self.pool)
            .field("edu", &self.edu)
            .field("dir", &self.dir.path())
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the state valid (a qtest session marks itself broken before
    // returning an error), so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl QemuMachine {
    /// Starts QEMU, waits (bounded) for it to connect, then finds the edu device, assigns its
    /// BAR0 and enables memory decoding and bus mastering.
    pub fn start(config: QemuConfig) -> QemuResult<Self> {
        config.validate()?;
        let t0 = Instant::now();
        let program = config.program();
        let accel = config.resolved_accel();
        let dir = ScratchDir::new()?;
        let image = match config.arch {
            Arch::X86Q35 => firmware::x86_halt(),
            Arch::ArmVirt => firmware::aarch64_halt(),
        };
        let bios = dir.write("halt.bin", &image)?;
        let socket = dir.path().join("qtest.sock");
        let (socket_s, bios_s) = (socket.to_string_lossy().into_owned(), bios.to_string_lossy().into_owned());
        if socket_s.contains(',') || bios_s.contains(',') {
            return Err(QemuError::Config(format!("temporary path {socket_s} contains a comma")));
        }
        let listener = UnixListener::bind(&socket)
            .map_err(|source| QemuError::Io { context: format!("listening on {socket_s}"), source })?;
        let cmd = config.command(&program, accel, &socket_s, &bios_s);
        let mut process = Process::spawn(cmd, &dir.path().join("qemu.log"))?;
        let stream = process.accept(&listener, config.start_timeout)?;
        drop(listener);
        let mut qtest = Qtest::new(stream, Some(process.stderr_path().to_owned()));
        qtest.set_timeout(config.reply_timeout);

        let ram = config.ram_ranges();
        let top = ram.last().copied().ok_or_else(|| QemuError::Config("no RAM".into()))?;
        let pool_bytes = config.table_pool_mib << 20;
        if pool_bytes > top.len {
            return Err(QemuError::Config(format!("table pool of {pool_bytes:#x} bytes does not fit {top:?}")));
        }
        let pool = TablePool::new(PhysAddr(top.end() - pool_bytes), pool_bytes / PAGE_SIZE);
        let mut machine = Self {
            arch: config.arch,
            accel,
            qtest: Mutex::new(qtest),
            process: Mutex::new(process),
            ram,
            pool,
            bar_next: Mutex::new(config.arch.bar_window().0),
            edu: EduInfo { rid: RequesterId::new(0, 0, config.edu_slot, 0), bar0: PhysAddr(0) },
            started_in: Duration::ZERO,
            dir,
        };
        machine.edu = Edu::setup(&machine)?;
        machine.started_in = t0.elapsed();
        tracing::info!(
            arch = ?machine.arch, accel = ?accel, pid = machine.pid(), edu = %machine.edu.rid,
            bar0 = %machine.edu.bar0, took = ?machine.started_in, "QEMU machine ready"
        );
        Ok(machine)
    }

    /// The machine type.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The accelerator QEMU runs with.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        lock(&self.process).pid()
    }

    /// How long [`QemuMachine::start`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// True while QEMU is running.
    pub fn is_running(&self) -> bool {
        lock(&self.process).exited().is_none()
    }

    /// Kills QEMU now (and reaps it); every later access fails with [`HostError::PLATFORM`].
    pub fn kill(&self) {
        lock(&self.process).kill();
    }

    /// The end of QEMU's stderr.
    pub fn stderr_tail(&self) -> String {
        super::stderr_tail(lock(&self.process).stderr_path())
    }

    /// Guest RAM.
    pub fn ram_ranges(&self) -> &[RamRange] {
        &self.ram
    }

    /// The table-page pool at the top of guest RAM: `(first address, size in bytes)`. DMA
    /// buffers belong elsewhere in RAM.
    pub fn table_pool(&self) -> (PhysAddr, u64) {
        (self.pool.base(), self.pool.capacity() * PAGE_SIZE)
    }

    /// The PCI bus (config space, device discovery, BAR assignment).
    pub fn pci(&self) -> Pci<'_> {
        Pci::new(self)
    }

    /// The edu DMA engine, set up by [`QemuMachine::start`].
    pub fn edu(&self) -> Edu<'_> {
        Edu::new(self, self.edu)
    }

    /// Runs `f` on the qtest session (raw access for backends and tests), holding the lock.
    pub fn with_qtest<T>(&self, f: impl FnOnce(&mut Qtest) -> QemuResult<T>) -> QemuResult<T> {
        f(&mut lock(&self.qtest))
    }

    /// Reserves `size` bytes (a power of two, aligned to itself) in [`Arch::bar_window`].
    pub(crate) fn reserve_mmio(&self, size: u64) -> Option<u64> {
        let (_, end) = self.arch.bar_window();
        let mut next = lock(&self.bar_next);
        let base = next.checked_next_multiple_of(size)?;
        let top = base.checked_add(size)?;
        if top > end {
            return None;
        }
        *next = top;
        Some(base)
    }

    fn host<T>(&self, addr: u64, r: QemuResult<T>) -> Result<T, HostError> {
        r.map_err(|e| {
            tracing::error!(addr = format_args!("{addr:#x}"), error = %e, "QEMU platform failure");
            e.to_host_error(addr)
        })
    }

    fn check_ram(&self, pa: PhysAddr, len: u64) -> Result<(), HostError> {
        if self.ram.iter().any(|r| r.contains(pa.raw(), len)) {
            Ok(())
        } else {
            Err(HostError::new(HostError::BAD_ADDRESS, pa.raw()))
        }
    }

    fn check_u64(&self, pa: PhysAddr) -> Result<(), HostError> {
        if !pa.is_aligned(8) {
            return Err(HostError::new(HostError::BAD_ADDRESS, pa.raw()));
        }
        self.check_ram(pa, 8)
    }

    fn mmio_addr(base: PhysAddr, offset: u64, width: u8) -> Result<u64, HostError> {
        let bad = HostError::new(HostError::BAD_REGISTER, offset);
        if !matches!(width, 4 | 8) || offset % u64::from(width) != 0 {
            return Err(bad);
        }
        base.raw().checked_add(offset).filter(|a| a.checked_add(u64::from(width) - 1).is_some()).ok_or(bad)
    }

    fn rmw(&self, pa: PhysAddr, f: impl FnOnce(u64) -> u64) -> Result<u64, HostError> {
        self.check_u64(pa)?;
        let r = self.with_qtest(|q| {
            let old = q.readq(pa.raw())?;
            q.writeq(pa.raw(), f(old))?;
            Ok(old)
        });
        self.host(pa.raw(), r)
    }
}

impl PhysMemory for QemuMachine {
    fn read(&self, pa: PhysAddr, buf: &mut [u8]) -> Result<(), HostError> {
        self.check_ram(pa, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let r = self.with_qtest(|q| q.read(pa.raw(), buf));
        self.host(pa.raw(), r)
    }

    fn write(&self, pa: PhysAddr, data: &[u8]) -> Result<(), HostError> {
        self.check_ram(pa, data.len() as u64)?;
        if data.is_empty() {
            return Ok(());
        }
        let r = self.with_qtest(|q| q.write(pa.raw(), data));
        self.host(pa.raw(), r)
    }

    fn read_u64(&self, pa: PhysAddr) -> Result<u64, HostError> {
        self.check_u64(pa)?;
        let r = self.with_qtest(|q| q.readq(pa.raw()));
        self.host(pa.raw(), r)
    }

    fn write_u64(&self, pa: PhysAddr, value: u64) -> Result<(), HostError> {
        self.check_u64(pa)?;
        let r = self.with_qtest(|q| q.writeq(pa.raw(), value));
        self.host(pa.raw(), r)
    }

    /// A read-modify-write through qtest; see the type's "Atomicity" section.
    fn fetch_or_u64(&self, pa: PhysAddr, bits: u64) -> Result<u64, HostError> {
        self.rmw(pa, |old| old | bits)
    }

    /// A read-modify-write through qtest; see the type's "Atomicity" section.
    fn fetch_and_u64(&self, pa: PhysAddr, mask: u64) -> Result<u64, HostError> {
        self.rmw(pa, |old| old & mask)
    }
}

impl Platform for QemuMachine {
    fn alloc_table_page(&self) -> Result<PhysAddr, HostError> {
        self.alloc_table_pages(1)
    }

    fn free_table_page(&self, page: PhysAddr) -> Result<(), HostError> {
        self.free_table_pages(page, 1)
    }

    fn alloc_table_pages(&self, count: u64) -> Result<PhysAddr, HostError> {
        let first = self.pool.alloc_run(count)?;
        let r = self.with_qtest(|q| q.memset(first.raw(), count * PAGE_SIZE, 0));
        if let Err(e) = self.host(first.raw(), r) {
            let _ = self.pool.free_run(first, count);
            return Err(e);
        }
        tracing::trace!(%first, count, "table pages allocated");
        Ok(first)
    }

    fn free_table_pages(&self, first: PhysAddr, count: u64) -> Result<(), HostError> {
        self.pool
            .free_run(first, count)
            .inspect_err(|_| tracing::warn!(%first, count, "free of pages that are not allocated"))?;
        tracing::trace!(%first, count, "table pages freed");
        Ok(())
    }

    fn table_pages(&self) -> u64 {
        self.pool.allocated()
    }

    fn mmio_read(&self, base: PhysAddr, offset: u64, width: u8) -> Result<u64, HostError> {
        let addr = Self::mmio_addr(base, offset, width)?;
        let r = self.with_qtest(|q| if width == 4 { q.readl(addr).map(u64::from) } else { q.readq(addr) });
        self.host(addr, r)
    }

    fn mmio_write(&self, base: PhysAddr, offset: u64, width: u8, value: u64) -> Result<(), HostError> {
        let addr = Self::mmio_addr(base, offset, width)?;
        if width == 4 && value > u64::from(u32::MAX) {
            return Err(HostError::new(HostError::BAD_REGISTER, offset));
        }
        let r = self.with_qtest(|q| if width == 4 { q.writel(addr, value as u32) } else { q.writeq(addr, value) });
        self.host(addr, r)
    }

    /// From the start of the lowest RAM range to the end of the highest, holes included: the
    /// holes are the legacy VGA window and the PCI hole, which a device may reach too (legacy
    /// identity maps, peer to peer); the table pool is not.
    fn check_dma_memory(&self, pa: PhysAddr, len: u64) -> Result<(), String> {
        let (first, last) = (self.ram.first(), self.ram.last());
        let ram: Vec<(u64, u64)> =
            first.zip(last).map(|(f, l)| (f.start.raw(), l.start.raw() + l.len - f.start.raw())).into_iter().collect();
        let (pool, pool_len) = self.table_pool();
        ioasis::platform::check_dma_memory_in(&ram, (pool.raw(), pool_len), pa, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q35_ram_layout() {
        let mut c = QemuConfig::x86_q35();
        let r = c.ram_ranges();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1], RamRange { start: PhysAddr(0x10_0000), len: (256 << 20) - 0x10_0000 });
        c.ram_mib = 4096;
        let r = c.ram_ranges();
        assert_eq!(r[1].end(), 0x8000_0000);
        assert_eq!(r[2], RamRange { start: PhysAddr(1 << 32), len: 2 << 30 });
        c.ram_mib = 2048;
        assert_eq!(c.ram_ranges().len(), 2);
    }

    #[test]
    fn virt_ram_layout_and_config_checks() {
        let c = QemuConfig::arm_virt();
        assert_eq!(c.ram_ranges(), vec![RamRange { start: PhysAddr(0x4000_0000), len: 512 << 20 }]);
        assert_eq!(c.resolved_accel(), Accel::Tcg);
        let mut bad = c.clone();
        bad.ram_mib = 4096;
        assert!(matches!(bad.validate(), Err(QemuError::Config(_))));
        let mut bad = c.clone();
        bad.edu_slot = 0;
        assert!(matches!(bad.validate(), Err(QemuError::Config(_))));
        let mut bad = c;
        bad.table_pool_mib = 256;
        assert!(matches!(bad.validate(), Err(QemuError::Config(_))));
    }

    #[test]
    fn command_line() {
        let mut c = QemuConfig::arm_virt();
        c.machine_opts.push("iommu=smmuv3".into());
        let cmd = c.command(&c.program(), Accel::Tcg, "/s", "/b");
        let args: Vec<String> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let line = args.join(" ");
        assert!(line.contains("-machine virt,highmem=off,iommu=smmuv3 -accel tcg -cpu cortex-a57"), "{line}");
        assert!(line.contains("-qtest unix:/s"), "{line}");
        assert!(line.ends_with("-bios /b -device edu,addr=02.0,dma_mask=0xffffffffffffffff"), "{line}");
    }

    #[test]
    fn a_missing_binary_is_a_spawn_error() {
        let mut c = QemuConfig::x86_q35();
        c.qemu_binary = Some(PathBuf::from("/nonexistent/qemu-system-x86_64"));
        assert!(matches!(QemuMachine::start(c), Err(QemuError::Spawn { .. })));
    }

    #[test]
    fn a_qemu_that_never_connects_is_a_bounded_wait() {
        use std::os::unix::fs::PermissionsExt;
        let dir = ScratchDir::new().unwrap();
        let fake = dir.write("fake-qemu", b"#!/bin/sh\necho fake qemu starting >&2\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c = QemuConfig::x86_q35();
        c.qemu_binary = Some(fake);
        c.start_timeout = Duration::from_millis(300);
        let t = Instant::now();
        match QemuMachine::start(c) {
            Err(QemuError::ConnectTimeout { stderr, .. }) => assert!(stderr.contains("fake qemu"), "{stderr}"),
            other => panic!("expected a connect timeout, got {other:?}"),
        }
        assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    }

    #[test]
    fn mmio_width_and_offset_are_checked() {
        let code = |r: Result<u64, HostError>| r.unwrap_err().code;
        assert_eq!(code(QemuMachine::mmio_addr(PhysAddr(0x1000), 0, 2)), HostError::BAD_REGISTER);
        assert_eq!(code(QemuMachine::mmio_addr(PhysAddr(0x1000), 4, 8)), HostError::BAD_REGISTER);
        assert_eq!(code(QemuMachine::mmio_addr(PhysAddr(u64::MAX - 3), 0, 8)), HostError::BAD_REGISTER);
        assert_eq!(QemuMachine::mmio_addr(PhysAddr(0x1000), 8, 8).unwrap(), 0x1008);
    }
}
