//! Firmware images that only halt the vCPU, so that no BIOS touches the devices and the
//! harness owns the machine through qtest. QEMU's own firmware would enumerate PCI, program
//! BARs and possibly the IOMMU; these images do nothing at all.

/// x86: a 64 KiB image whose reset vector (offset 0xfff0, i.e. 0xffff_fff0) is
/// `cli; 1: hlt; jmp 1b`. With interrupts disabled the vCPU stays halted.
pub fn x86_halt() -> Vec<u8> {
    const SIZE: usize = 64 * 1024;
    const RESET: usize = 0xfff0;
    let mut image = vec![0u8; SIZE];
    // cli (FA); hlt (F4); jmp rel8 -3 (EB FD), back to the hlt.
    image[RESET..RESET + 4].copy_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]);
    image
}

/// aarch64: a 4 KiB image with `1: wfi; b 1b` at address 0 (the virt machine's flash, where
/// the vCPU starts).
pub fn aarch64_halt() -> Vec<u8> {
    const WFI: u32 = 0xd503_207f;
    // B with imm26 = -1 (one instruction back): 0b000101 << 26 | (0x3ff_ffff & -1).
    const B_BACK_ONE: u32 = 0x1400_0000 | 0x03ff_ffff;
    let mut image = vec![0u8; 4096];
    image[0..4].copy_from_slice(&WFI.to_le_bytes());
    image[4..8].copy_from_slice(&B_BACK_ONE.to_le_bytes());
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_reset_vector_halts() {
        let img = x86_halt();
        assert_eq!(img.len(), 0x10000);
        assert_eq!(&img[0xfff0..0xfff4], &[0xfa, 0xf4, 0xeb, 0xfd]);
        // The jmp lands on the hlt: next ip 0xfff4, minus 3.
        assert_eq!(0xfff4_i32 + i32::from(img[0xfff3] as i8), 0xfff1);
    }

    #[test]
    fn aarch64_loops_on_wfi() {
        let img = aarch64_halt();
        assert_eq!(&img[0..8], &[0x7f, 0x20, 0x03, 0xd5, 0xff, 0xff, 0xff, 0x17]);
    }
}
