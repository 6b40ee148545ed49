//! The dom0 initramfs: an uncompressed "newc" cpio archive (the format Linux unpacks into its
//! rootfs) written here, with busybox, the Xen modules, the program under test, its shared
//! libraries and an `/init` script.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::artifacts::Artifacts;

/// Marker lines `/init` prints. The program's stdout goes to the second serial port, so these
/// frame it there; on the console they tell how far the boot got.
pub const MARK_INIT: &str = "@@ioasis-init";
pub const MARK_START: &str = "@@ioasis-program-start";
pub const MARK_EXIT: &str = "@@ioasis-program-exit";

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// A newc archive built in memory.
#[derive(Default)]
pub struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let name_len = name.len() + 1;
        let fields: [u32; 13] = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & S_IFMT == S_IFDIR { 2 } else { 1 },
            0, // mtime
            data.len() as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name_len as u32,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }

    /// Adds `path`'s parent folders that are not there yet (paths are relative, no leading `/`).
    fn parents(&mut self, path: &str) {
        let mut acc = String::new();
        let parts: Vec<&str> = path.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if self.dirs.insert(acc.clone()) {
                let name = acc.clone();
                self.entry(&name, S_IFDIR | 0o755, (0, 0), &[]);
            }
        }
    }

    pub fn dir(&mut self, path: &str) {
        let path = path.trim_start_matches('/');
        self.parents(path);
        if self.dirs.insert(path.to_string()) {
            self.entry(path, S_IFDIR | 0o755, (0, 0), &[]);
        }
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        let path = path.trim_start_matches('/');
        self.parents(path);
        self.entry(path, S_IFREG | perm, (0, 0), data);
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        let path = path.trim_start_matches('/');
        self.parents(path);
        self.entry(path, S_IFLNK | 0o777, (0, 0), target.as_bytes());
    }

    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        let path = path.trim_start_matches('/');
        self.parents(path);
        self.entry(path, S_IFCHR | perm, (major, minor), &[]);
    }

    /// The archive with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        // Linux reads initramfs in 512-byte blocks; pad as cpio(1) does.
        while self.buf.len() % 512 != 0 {
            self.buf.push(0);
        }
        self.buf
    }
}

/// The shared libraries `ldd` lists for `program`, with the dynamic loader: absolute paths.
/// Empty for a static program.
pub fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>, String> {
    let out = Command::new("ldd").arg(program).output().map_err(|e| format!("running ldd: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // Static executables: "not a dynamic executable" (glibc's ldd exits 1 for them).
        let all = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
        if all.contains("not a dynamic executable") || all.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(format!("ldd {}: {}", program.display(), all.trim()));
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(format!("ldd {}: {line}", program.display()));
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; "linux-vdso.so.1 (0x...)" has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The `/init` script. The program's stdout goes to `/dev/ttyS1` (QEMU's second serial port, a
/// file of its own on the host), framed by marker lines; its stderr goes to the console. The exit
/// status is reported on both.
fn init_script(modules: &[String], program: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    let modules = modules.join(" ");
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "{MARK_INIT}"
for m in {modules}; do
  insmod /lib/modules/$m || echo "@@ioasis-insmod-failed $m"
done
mkdir -p /proc/xen
mount -t xenfs xenfs /proc/xen || echo "@@ioasis-xenfs-failed"
out=/dev/ttyS1
[ -c $out ] || {{ echo "@@ioasis-no-ttyS1: program output on the console"; out=/dev/console; }}
stty -F $out raw -echo 2>/dev/null
echo "{MARK_START}" >$out
echo "{MARK_START}"
{program} {args} >$out
rc=$?
echo "{MARK_EXIT} $rc" >$out
echo "{MARK_EXIT} $rc"
sync
poweroff -f
"#,
        args = args.join(" ")
    )
}

/// The program's bytes without debug sections (`objcopy --strip-debug`): a debug build of a
/// Rust program is tens of MiB of DWARF, more than dom0's rootfs takes. The program itself is
/// unchanged; where objcopy is missing the bytes go in as they are.
fn without_debug_info(program: &Path) -> Result<Vec<u8>, String> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = std::env::temp_dir().join(format!("ioasis-xen-prog-{}-{n}", std::process::id()));
    let stripped = Command::new("objcopy").arg("--strip-debug").arg(program).arg(&out).status();
    let bytes = match stripped {
        Ok(s) if s.success() => std::fs::read(&out).map_err(|e| format!("reading {}: {e}", out.display())),
        _ => std::fs::read(program).map_err(|e| format!("reading {}: {e}", program.display())),
    };
    let _ = std::fs::remove_file(&out);
    bytes
}

/// The whole initramfs for one run.
pub fn build(art: &Artifacts, program: &Path, args: &[&str]) -> Result<Vec<u8>, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let mut cpio = Cpio::default();
    for d in ["bin", "dev", "proc", "sys", "tmp", "lib/modules", "prog"] {
        cpio.dir(d);
    }
    // The kernel opens /dev/console before it runs /init, before devtmpfs is mounted.
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.file("bin/busybox", 0o755, &read(&art.busybox)?);
    cpio.symlink("bin/sh", "busybox");
    let mut names = Vec::new();
    for m in &art.modules {
        let name = m.file_name().and_then(|n| n.to_str()).ok_or("bad module name")?.to_string();
        cpio.file(&format!("lib/modules/{name}"), 0o644, &read(m)?);
        names.push(name);
    }
    let prog_name = program.file_name().and_then(|n| n.to_str()).ok_or("bad program name")?;
    let prog_path = format!("/prog/{prog_name}");
    cpio.file(&prog_path, 0o755, &without_debug_info(program)?);
    for lib in shared_libraries(program)? {
        // At the path ldd gave: the loader's path is baked into the program, the libraries are
        // found in the default search folders. Symlinks are followed (the file's contents).
        cpio.file(lib.to_str().ok_or("bad library path")?, 0o755, &read(&lib)?);
    }
    cpio.file("init", 0o755, init_script(&names, &prog_path, args).as_bytes());
    Ok(cpio.finish())
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoting() {
        assert_eq!(super::shell_quote("a b"), "'a b'");
        assert_eq!(super::shell_quote("it's"), "'it'\\''s'");
    }
}
