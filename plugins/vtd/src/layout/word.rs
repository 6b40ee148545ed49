//! A register value or a descriptor qword built field by field, in the spec's own "bits hi:lo"
//! notation, so that each layout reads like the table it comes from.

/// A 64-bit word under construction. Every field is masked to its width, and no two fields
/// may overlap: setting bits that are already set is a layout bug, caught when the word is
/// built (at compile time for a constant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Word(u64);

impl Word {
    /// No field set.
    pub const ZERO: Word = Word(0);

    /// A word with `bits` already set.
    pub const fn of(bits: u64) -> Word {
        Word(bits)
    }

    /// Bits `hi:lo` set to `value`, masked to the field's width.
    pub const fn with(self, hi: u32, lo: u32, value: u64) -> Word {
        let width = hi - lo + 1;
        let ones = if width == 64 { u64::MAX } else { (1 << width) - 1 };
        let mask = ones << lo;
        assert!(self.0 & mask == 0, "a field overlaps one set before");
        Word(self.0 | ((value << lo) & mask))
    }

    /// Bit `n` set when `on`.
    pub const fn flag(self, n: u32, on: bool) -> Word {
        self.with(n, n, on as u64)
    }

    /// The word.
    pub const fn get(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_masked_to_their_width_and_placed_at_their_low_bit() {
        assert_eq!(Word::ZERO.with(3, 0, 0x1f).get(), 0xf);
        assert_eq!(Word::ZERO.with(31, 16, 0x1_2345).get(), 0x2345_0000);
        assert_eq!(Word::ZERO.with(63, 0, u64::MAX).get(), u64::MAX);
        assert_eq!(Word::ZERO.with(63, 63, 3).get(), 1 << 63);
        assert_eq!(Word::ZERO.with(7, 4, 0xa).with(3, 0, 0x5).get(), 0xa5);
        assert_eq!(Word::ZERO.flag(0, true).flag(5, false).flag(6, true).get(), 0x41);
        assert_eq!(Word::of(0x8001).with(14, 1, !0).get(), 0xffff);
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn overlapping_fields_are_a_layout_bug() {
        let _ = Word::ZERO.with(15, 8, 1).with(8, 0, 0);
    }
}
