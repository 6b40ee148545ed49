//! Access permissions of a mapping, and of a DMA request.

use std::fmt;
use std::ops::BitOr;

use abi_stable::StableAbi;
use serde::{Deserialize, Serialize};

/// Read/write permission bits (a mapping's rights, or what a DMA asks for).
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Prot(pub u32);

impl Prot {
    /// No access.
    pub const NONE: Prot = Prot(0);
    /// Device may read (DMA to the device, memory → device).
    pub const READ: Prot = Prot(1);
    /// Device may write (DMA from the device, device → memory).
    pub const WRITE: Prot = Prot(2);
    /// Both.
    pub const RW: Prot = Prot(3);

    /// Read and/or write.
    pub const fn new(read: bool, write: bool) -> Prot {
        Prot(read as u32 + 2 * write as u32)
    }
    /// True when every bit of `other` is set in `self`.
    pub const fn contains(self, other: Prot) -> bool {
        self.0 & other.0 == other.0
    }
    /// True when no access bit is set.
    pub const fn is_none(self) -> bool {
        self.0 & 3 == 0
    }
    /// Readable.
    pub const fn read(self) -> bool {
        self.0 & 1 != 0
    }
    /// Writable.
    pub const fn write(self) -> bool {
        self.0 & 2 != 0
    }
}

impl BitOr for Prot {
    type Output = Prot;
    fn bitor(self, rhs: Prot) -> Prot {
        Prot(self.0 | rhs.0)
    }
}

impl fmt::Debug for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Prot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = if self.read() { "r" } else { "-" };
        let w = if self.write() { "w" } else { "-" };
        write!(f, "{r}{w}")
    }
}

impl Serialize for Prot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Prot {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Prot {
    type Err = String;
    /// Accepts `r`, `w`, `rw` (also `ro`, `wo`, `read`, `write`, `read-write`).
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "r" | "ro" | "read" | "r-" => Prot::READ,
            "w" | "wo" | "write" | "-w" => Prot::WRITE,
            "rw" | "read-write" => Prot::RW,
            _ => return Err(format!("`{s}` is not a permission (expected r, w or rw)")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PageSizes;

    #[test]
    fn new_sets_exactly_the_named_rights() {
        assert_eq!(
            [Prot::new(false, false), Prot::new(true, false), Prot::new(false, true), Prot::new(true, true)],
            [Prot::NONE, Prot::READ, Prot::WRITE, Prot::RW]
        );
        assert_eq!(PageSizes::SZ_4K_2M.iter().collect::<Vec<_>>(), [0x1000, 0x20_0000]);
    }
}
