//! PCI configuration space of a [`QemuMachine`]: x86 through the 0xcf8/0xcfc port pair, Arm
//! virt through ECAM at 0x3f00_0000 (`highmem=off`). The harness plays the firmware: it finds
//! devices on bus 0, sizes and assigns BARs, and enables decoding and bus mastering.

use ioasis::{PhysAddr, RequesterId};

use super::error::{QemuError, QemuResult};
use super::machine::{Arch, QemuMachine};

/// ECAM base of the virt machine with `highmem=off`.
const VIRT_ECAM: u64 = 0x3f00_0000;
/// The x86 configuration address and data ports.
const CONFIG_ADDRESS: u16 = 0xcf8;
const CONFIG_DATA: u16 = 0xcfc;
/// Config register offsets.
const REG_ID: u16 = 0x00;
const REG_COMMAND: u16 = 0x04;
const REG_HEADER: u16 = 0x0c;
const REG_BAR0: u16 = 0x10;
/// Command register: memory space decoding and bus mastering.
pub(crate) const COMMAND_MEMORY_MASTER: u16 = 0x6;

/// A memory BAR the harness assigned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    /// Guest physical base.
    pub base: PhysAddr,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// A 64-bit BAR (it also occupies the next BAR register).
    pub is_64: bool,
    /// Prefetchable.
    pub prefetchable: bool,
}

/// The PCI bus of a [`QemuMachine`] (segment 0).
#[derive(Clone, Copy, Debug)]
pub struct Pci<'m> {
    m: &'m QemuMachine,
}

impl<'m> Pci<'m> {
    pub(crate) fn new(m: &'m QemuMachine) -> Self {
        Self { m }
    }

    fn check(rid: RequesterId, reg: u16) -> QemuResult<()> {
        // The legacy port mechanism reaches 256 bytes; the harness uses the same limit on ECAM.
        if reg % 4 != 0 || reg >= 0x100 || rid.segment != 0 {
            return Err(QemuError::Config(format!("config register {reg:#x} of {rid} is not reachable")));
        }
        Ok(())
    }

    fn ecam(rid: RequesterId, reg: u16) -> u64 {
        VIRT_ECAM | u64::from(rid.bus) << 20 | u64::from(rid.devfn) << 12 | u64::from(reg)
    }

    fn cf8(rid: RequesterId, reg: u16) -> u32 {
        0x8000_0000 | u32::from(rid.bus) << 16 | u32::from(rid.devfn) << 8 | u32::from(reg)
    }

    /// Reads the config dword at `reg` (a multiple of 4 below 0x100) of `rid`. A function that
    /// does not exist reads as all ones.
    pub fn read_config(&self, rid: RequesterId, reg: u16) -> QemuResult<u32> {
        Self::check(rid, reg)?;
        self.m.with_qtest(|q| match self.m.arch() {
            Arch::X86Q35 => {
                q.outl(CONFIG_ADDRESS, Self::cf8(rid, reg))?;
                q.inl(CONFIG_DATA)
            }
            Arch::ArmVirt => q.readl(Self::ecam(rid, reg)),
        })
    }

    /// Writes the config dword at `reg` (a multiple of 4 below 0x100) of `rid`.
    pub fn write_config(&self, rid: RequesterId, reg: u16, value: u32) -> QemuResult<()> {
        Self::check(rid, reg)?;
        tracing::trace!(%rid, reg, value = format_args!("{value:#x}"), "PCI config write");
        self.m.with_qtest(|q| match self.m.arch() {
            Arch::X86Q35 => {
                q.outl(CONFIG_ADDRESS, Self::cf8(rid, reg))?;
                q.outl(CONFIG_DATA, value)
            }
            Arch::ArmVirt => q.writel(Self::ecam(rid, reg), value),
        })
    }

    /// Every function on bus 0: `(requester id, vendor id, device id)`.
    pub fn scan(&self) -> QemuResult<Vec<(RequesterId, u16, u16)>> {
        let mut found = Vec::new();
        for dev in 0..32u8 {
            for func in 0..8u8 {
                let rid = RequesterId::new(0, 0, dev, func);
                let id = self.read_config(rid, REG_ID)?;
                let vendor = (id & 0xffff) as u16;
                if vendor == 0xffff || vendor == 0 {
                    if func == 0 {
                        break;
                    }
                    continue;
                }
                found.push((rid, vendor, (id >> 16) as u16));
                // Bit 7 of the header type: multi-function device.
                if func == 0 && self.read_config(rid, REG_HEADER)? & (0x80 << 16) == 0 {
                    break;
                }
            }
        }
        Ok(found)
    }

    /// The first function on bus 0 with this vendor and device id.
    pub fn find(&self, vendor: u16, device: u16) -> QemuResult<RequesterId> {
        self.scan()?
            .into_iter()
            .find(|&(_, v, d)| v == vendor && d == device)
            .map(|(rid, _, _)| rid)
            .ok_or(QemuError::DeviceNotFound { vendor, device })
    }

    /// Sizes memory BAR `bar` (0..6) of `rid` (all ones, read back) and assigns it an address
    /// in [`Arch::bar_window`], aligned to its size. Memory decoding is turned off while
    /// sizing; call [`Pci::enable`] afterwards.
    pub fn assign_bar(&self, rid: RequesterId, bar: u8) -> QemuResult<Bar> {
        let fail = |reason: String| QemuError::Bar { bdf: rid.to_string(), bar, reason };
        if bar >= 6 {
            return Err(fail("no such BAR".into()));
        }
        let reg = REG_BAR0 + 4 * u16::from(bar);
        let command = self.read_config(rid, REG_COMMAND)? & 0xffff;
        self.write_config(rid, REG_COMMAND, command & !0x3)?;
        let original = self.read_config(rid, reg)?;
        if original & 1 != 0 {
            return Err(fail("an I/O BAR".into()));
        }
        let is_64 = (original >> 1) & 3 == 2;
        if is_64 && bar == 5 {
            return Err(fail("a 64-bit BAR in the last slot".into()));
        }
        self.write_config(rid, reg, u32::MAX)?;
        let low = self.read_config(rid, reg)?;
        let mut mask = u64::from(low & !0xf);
        if is_64 {
            self.write_config(rid, reg + 4, u32::MAX)?;
            mask |= u64::from(self.read_config(rid, reg + 4)?) << 32;
        } else {
            mask |= 0xffff_ffff_0000_0000;
        }
        if mask & 0xffff_ffff == 0 && !is_64 {
            return Err(fail("not implemented (reads back 0)".into()));
        }
        let size = (!mask).wrapping_add(1);
        if size == 0 || !size.is_power_of_two() {
            return Err(fail(format!("bad size mask {mask:#x}")));
        }
        let base =
            self.m.reserve_mmio(size).ok_or_else(|| fail(format!("no room for {size:#x} bytes in the MMIO window")))?;
        self.write_config(rid, reg, base as u32)?;
        if is_64 {
            self.write_config(rid, reg + 4, (base >> 32) as u32)?;
        }
        let out = Bar { base: PhysAddr(base), size, is_64, prefetchable: original & 0x8 != 0 };
        tracing::debug!(%rid, bar, base = %out.base, size, "BAR assigned");
        Ok(out)
    }

    /// [`Pci::assign_bar`] for BAR0.
    pub fn assign_bar0(&self, rid: RequesterId) -> QemuResult<Bar> {
        self.assign_bar(rid, 0)
    }

    /// Sets memory decoding and bus mastering (command |= 0x6).
    pub fn enable(&self, rid: RequesterId) -> QemuResult<()> {
        let command = self.read_config(rid, REG_COMMAND)? & 0xffff;
        // The upper half is the status register (write-one-to-clear): write zeros there.
        self.write_config(rid, REG_COMMAND, command | u32::from(COMMAND_MEMORY_MASTER))
    }

    /// The command register.
    pub fn command(&self, rid: RequesterId) -> QemuResult<u16> {
        Ok((self.read_config(rid, REG_COMMAND)? & 0xffff) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_addresses() {
        let rid = RequesterId::new(0, 0, 2, 0);
        assert_eq!(Pci::ecam(rid, 0x10), 0x3f01_0010);
        assert_eq!(Pci::cf8(RequesterId::new(0, 0, 4, 0), 0x4), 0x8000_2004);
        assert!(Pci::check(rid, 0x2).is_err());
        assert!(Pci::check(rid, 0x100).is_err());
        assert!(Pci::check(rid, 0xfc).is_ok());
    }
}
