//! A plugin file is checked before the dynamic loader sees it: a regular file (a FIFO would
//! block `dlopen` forever), of a sane size, and on ELF systems a shared object for this machine
//! whose segments and section headers lie inside the file (the dynamic loader maps a truncated
//! library without complaint, and the first touch past its end is a SIGBUS).

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Largest plugin file opened: 512 MiB (a debug build of a backend is some tens of MiB).
pub const MAX_PLUGIN_BYTES: u64 = 512 << 20;

/// Why `path` cannot be a plugin of this host, before any of it is loaded.
pub(super) fn check(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let size = meta.len();
    if size > MAX_PLUGIN_BYTES {
        return Err(format!("{size} bytes, more than the {MAX_PLUGIN_BYTES} a plugin may have"));
    }
    if cfg!(target_os = "linux") {
        let mut f = File::open(path).map_err(|e| e.to_string())?;
        elf::check(&mut f, size)?;
    }
    Ok(())
}

/// The header checks the loader makes of a plugin file, on its bytes: whether they can be a
/// whole shared object for this machine (for fuzzing the check without files).
pub fn check_bytes(bytes: &[u8]) -> Result<(), String> {
    if cfg!(target_os = "linux") {
        elf::check(&mut &bytes[..], bytes.len() as u64)
    } else {
        Ok(())
    }
}

/// The parts of the ELF format (System V gABI, "ELF Header" and "Program Header") that say
/// whether a file is a whole shared object for this machine.
mod elf {
    use super::*;

    const EHDR_LEN: usize = 64;
    const ET_DYN: u16 = 3;
    const PT_LOAD: u32 = 1;
    /// Program headers read at most (a shared object has about ten).
    const MAX_PHNUM: u16 = 512;

    #[cfg(target_arch = "x86_64")]
    const MACHINE: Option<(u16, &str)> = Some((62, "x86-64"));
    #[cfg(target_arch = "aarch64")]
    const MACHINE: Option<(u16, &str)> = Some((183, "AArch64"));
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    const MACHINE: Option<(u16, &str)> = None;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
    }

    fn machine_name(m: u16) -> String {
        match m {
            3 => "i386".into(),
            40 => "ARM".into(),
            62 => "x86-64".into(),
            183 => "AArch64".into(),
            243 => "RISC-V".into(),
            other => format!("machine {other}"),
        }
    }

    /// Checks the header of a 64-bit little-endian ELF shared object of `size` bytes.
    pub(super) fn check(f: &mut impl Read, size: u64) -> Result<(), String> {
        let mut h = [0u8; EHDR_LEN];
        if size < EHDR_LEN as u64 {
            return Err(format!("{size} bytes is too short for an ELF shared object"));
        }
        f.read_exact(&mut h).map_err(|e| format!("reading its ELF header: {e}"))?;
        if h[..4] != *b"\x7fELF" {
            return Err("not an ELF file".into());
        }
        if h[4] != 2 || h[5] != 1 {
            return Err(format!(
                "an ELF file of class {} and data encoding {}, not 64-bit little-endian like this host",
                h[4], h[5]
            ));
        }
        let e_type = u16_at(&h, 16);
        if e_type != ET_DYN {
            return Err(format!("an ELF file of type {e_type}, not a shared object (3)"));
        }
        let e_machine = u16_at(&h, 18);
        if let Some((want, name)) = MACHINE {
            if e_machine != want {
                return Err(format!("built for {}, this host is {name}", machine_name(e_machine)));
            }
        }
        let (phoff, shoff) = (u64_at(&h, 32), u64_at(&h, 40));
        let (phentsize, phnum) = (u16_at(&h, 54), u16_at(&h, 56));
        let (shentsize, shnum) = (u16_at(&h, 58), u16_at(&h, 60));
        let inside = |off: u64, len: u64| off.checked_add(len).is_some_and(|end| end <= size);
        if phnum == 0 || phnum > MAX_PHNUM || usize::from(phentsize) < 56 || phoff < EHDR_LEN as u64 {
            return Err(format!("its program headers ({phnum} of {phentsize} bytes at {phoff:#x}) are malformed"));
        }
        let ph_len = u64::from(phnum) * u64::from(phentsize);
        if !inside(phoff, ph_len) {
            return Err(format!("truncated: its program headers end past its {size} bytes"));
        }
        if shnum > 0 && !inside(shoff, u64::from(shnum) * u64::from(shentsize)) {
            return Err(format!("truncated: its section headers end past its {size} bytes"));
        }
        // Program headers follow the ELF header in every linker's output; read up to them.
        let mut rest = vec![0u8; (phoff - EHDR_LEN as u64 + ph_len) as usize];
        f.read_exact(&mut rest).map_err(|e| format!("reading its program headers: {e}"))?;
        let ph = &rest[(phoff - EHDR_LEN as u64) as usize..];
        for i in 0..usize::from(phnum) {
            let e = &ph[i * usize::from(phentsize)..];
            if u32_at(e, 0) == PT_LOAD {
                let (off, filesz) = (u64_at(e, 8), u64_at(e, 32));
                if !inside(off, filesz) {
                    return Err(format!(
                        "truncated: segment {i} ({filesz:#x} bytes at {off:#x}) ends past its {size} bytes"
                    ));
                }
            }
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A minimal ELF header and one PT_LOAD program header.
        fn image(machine: u16, e_type: u16, seg_off: u64, seg_len: u64) -> Vec<u8> {
            let mut b = vec![0u8; 64 + 56];
            b[..4].copy_from_slice(b"\x7fELF");
            (b[4], b[5], b[6]) = (2, 1, 1);
            b[16..18].copy_from_slice(&e_type.to_le_bytes());
            b[18..20].copy_from_slice(&machine.to_le_bytes());
            b[32..40].copy_from_slice(&64u64.to_le_bytes());
            b[54..56].copy_from_slice(&56u16.to_le_bytes());
            b[56..58].copy_from_slice(&1u16.to_le_bytes());
            b[64..68].copy_from_slice(&PT_LOAD.to_le_bytes());
            b[72..80].copy_from_slice(&seg_off.to_le_bytes());
            b[96..104].copy_from_slice(&seg_len.to_le_bytes());
            b
        }

        fn run(b: &[u8]) -> Result<(), String> {
            check(&mut &b[..], b.len() as u64)
        }

        #[test]
        fn whole_shared_objects_for_this_machine_pass_and_the_rest_say_why() {
            let Some((m, _)) = MACHINE else { return };
            assert_eq!(run(&image(m, ET_DYN, 0, 120)), Ok(()));
            assert!(run(&image(m, ET_DYN, 0, 121)).unwrap_err().contains("truncated: segment 0"));
            assert!(run(&image(m, ET_DYN, u64::MAX, 2)).unwrap_err().contains("truncated"));
            assert!(run(&image(m, 2, 0, 120)).unwrap_err().contains("not a shared object"));
            let other = if m == 62 { 183 } else { 62 };
            assert!(run(&image(other, ET_DYN, 0, 120)).unwrap_err().contains("built for"));
            let mut b = image(m, ET_DYN, 0, 120);
            b[4] = 1;
            assert!(run(&b).unwrap_err().contains("class 1"));
            b[0] = 0;
            assert_eq!(run(&b), Err("not an ELF file".into()));
            assert!(run(&b[..10]).unwrap_err().contains("too short"));
            let mut b = image(m, ET_DYN, 0, 120);
            b[56..58].copy_from_slice(&0u16.to_le_bytes());
            assert!(run(&b).unwrap_err().contains("program headers"));
            let mut b = image(m, ET_DYN, 0, 120);
            b[60..62].copy_from_slice(&3u16.to_le_bytes());
            b[58..60].copy_from_slice(&64u16.to_le_bytes());
            b[40..48].copy_from_slice(&64u64.to_le_bytes());
            assert!(run(&b).unwrap_err().contains("section headers"));
        }
    }
}
