//! Where the testbed's inputs are: the files `scripts/fetch-xen.sh` leaves in its cache folder,
//! and QEMU on `PATH`. Nothing is downloaded here.

use std::path::{Path, PathBuf};

/// The workspace root (two levels above this package).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// What `scripts/fetch-xen.sh` produced.
#[derive(Clone, Debug)]
pub struct Artifacts {
    pub dir: PathBuf,
    /// Xen as a multiboot ELF.
    pub xen: PathBuf,
    /// The dom0 kernel, an uncompressed ELF.
    pub vmlinux: PathBuf,
    /// A static busybox.
    pub busybox: PathBuf,
    /// The Xen modules, each after the modules it depends on.
    pub modules: Vec<PathBuf>,
    /// The packages they came from (`versions`).
    pub versions: String,
}

impl Artifacts {
    /// The cache folder: `$IOASIS_XEN_DIR`, else `<workspace>/target/xen-guest` (the script's
    /// default too).
    pub fn dir() -> PathBuf {
        match std::env::var_os("IOASIS_XEN_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => workspace_root().join("target/xen-guest"),
        }
    }

    /// Finds every file, or says which is missing.
    pub fn find() -> Result<Self, String> {
        let dir = Self::dir();
        let hint = "run scripts/fetch-xen.sh";
        let need = |name: &str| -> Result<PathBuf, String> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!("{} is missing ({hint})", p.display()))
            }
        };
        need(".done")?;
        let xen = need("xen.elf")?;
        let vmlinux = need("vmlinux")?;
        let busybox = need("busybox")?;
        let order = need("modules/order")?;
        let order = std::fs::read_to_string(&order).map_err(|e| format!("{}: {e}", order.display()))?;
        let modules = order
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|m| need(&format!("modules/{m}")))
            .collect::<Result<Vec<_>, _>>()?;
        let versions = std::fs::read_to_string(dir.join("versions"))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Artifacts { dir, xen, vmlinux, busybox, modules, versions })
    }
}

/// The first executable `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
