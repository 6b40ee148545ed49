//! The QEMU process and its scratch directory: started, waited for with a bound, killed and
//! reaped on drop.

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::error::{QemuError, QemuResult};

/// How long the harness waits for a killed QEMU to be reaped.
const REAP_BOUND: Duration = Duration::from_secs(5);
/// Sleep between two checks of a bounded wait.
const POLL: Duration = Duration::from_millis(5);

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> QemuError {
    let context = context.into();
    move |source| QemuError::Io { context, source }
}

/// A private directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub(crate) struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub(crate) fn new() -> QemuResult<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ioasis-qemu-{}-{n}", std::process::id()));
        // A stale directory of the same name (a previous process with this pid) is ours to drop.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(io(format!("creating {}", path.display())))?;
        Ok(Self { path })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn write(&self, name: &str, data: &[u8]) -> QemuResult<PathBuf> {
        let p = self.path.join(name);
        std::fs::write(&p, data).map_err(io(format!("writing {}", p.display())))?;
        Ok(p)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove the QEMU scratch directory");
        }
    }
}

/// A running QEMU. Killed (SIGKILL) and reaped on drop, with a bound on the wait.
#[derive(Debug)]
pub(crate) struct Process {
    child: Option<Child>,
    pid: u32,
    stderr_path: PathBuf,
    exit: Option<String>,
}

impl Process {
    /// Starts `cmd` with stdin closed and stdout and stderr going to `stderr_path`.
    pub(crate) fn spawn(mut cmd: Command, stderr_path: &Path) -> QemuResult<Self> {
        let program = cmd.get_program().to_string_lossy().into_owned();
        let log = std::fs::File::create(stderr_path).map_err(io(format!("creating {}", stderr_path.display())))?;
        let log2 = log.try_clone().map_err(io("duplicating the QEMU log file"))?;
        cmd.stdin(Stdio::null()).stdout(log2).stderr(log);
        tracing::debug!(command = ?cmd, "starting QEMU");
        let child = cmd.spawn().map_err(|source| QemuError::Spawn { program, source })?;
        let pid = child.id();
        Ok(Self { child: Some(child), pid, stderr_path: stderr_path.to_owned(), exit: None })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    pub(crate) fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The exit status if QEMU has exited (reaping it), else `None`.
    pub(crate) fn exited(&mut self) -> Option<String> {
        if self.exit.is_none() {
            if let Some(child) = self.child.as_mut() {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        self.exit = Some(status.to_string());
                        self.child = None;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(pid = self.pid, error = %e, "cannot query QEMU's status"),
                }
            }
        }
        self.exit.clone()
    }

    /// Waits (at most `timeout`) for QEMU to connect to `listener`, watching for an early exit.
    pub(crate) fn accept(&mut self, listener: &UnixListener, timeout: Duration) -> QemuResult<UnixStream> {
        listener.set_nonblocking(true).map_err(io("making the qtest listener non-blocking"))?;
        let start = Instant::now();
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).map_err(io("making the qtest socket blocking"))?;
                    tracing::debug!(pid = self.pid, waited = ?start.elapsed(), "QEMU connected to the qtest socket");
                    return Ok(stream);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(QemuError::Io { context: "accepting QEMU's qtest connection".into(), source: e }),
            }
            if let Some(status) = self.exited() {
                return Err(QemuError::Exited { status, stderr: super::stderr_tail(&self.stderr_path) });
            }
            if start.elapsed() >= timeout {
                self.kill();
                return Err(QemuError::ConnectTimeout {
                    waited: timeout,
                    stderr: super::stderr_tail(&self.stderr_path),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Kills QEMU and reaps it, waiting at most a few seconds.
    pub(crate) fn kill(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        if let Err(e) = child.kill() {
            tracing::warn!(pid = self.pid, error = %e, "cannot kill QEMU");
        }
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    tracing::debug!(pid = self.pid, %status, "QEMU stopped");
                    self.exit = Some(status.to_string());
                    return;
                }
                Ok(None) if start.elapsed() < REAP_BOUND => std::thread::sleep(POLL),
                Ok(None) => {
                    tracing::error!(pid = self.pid, "QEMU did not die within {REAP_BOUND:?} of SIGKILL");
                    return;
                }
                Err(e) => {
                    tracing::warn!(pid = self.pid, error = %e, "cannot reap QEMU");
                    return;
                }
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
