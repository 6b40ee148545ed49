//! One QEMU boot of Xen and dom0, bounded in time: QEMU is killed when the run's time is up,
//! soon after a panic shows on the console, and whenever the handle is dropped.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Console lines after which the machine will not get to the end of the program.
const FATAL: &[&str] = &["Panic on CPU", "Kernel panic - not syncing", "Attempted to kill init"];
/// How long QEMU may go on after a fatal line, so the whole trace lands in the log.
const FATAL_GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(50);

/// A QEMU process that is killed (and reaped) when dropped.
pub struct Qemu {
    child: Option<Child>,
}

impl Qemu {
    /// Starts `cmd` with its stdout and stderr going to `own_output` (a file: a pipe nobody
    /// reads could fill up and stall QEMU).
    pub fn spawn(cmd: &mut Command, own_output: &Path) -> Result<Self, String> {
        let out = File::create(own_output).map_err(|e| format!("{}: {e}", own_output.display()))?;
        let err = out.try_clone().map_err(|e| format!("{}: {e}", own_output.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", cmd.get_program()))?;
        Ok(Qemu { child: Some(child) })
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How a boot ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// QEMU exited by itself with this status.
    Exited(Option<i32>),
    /// Killed when the time was up.
    TimedOut,
    /// Killed after a fatal console line (the line).
    Fatal(String),
}

pub struct Outcome {
    pub end: End,
    pub elapsed: Duration,
    /// When `marker` first showed on the console, from QEMU's start.
    pub marker_after: Option<Duration>,
}

/// Reads a file that another process appends to, from where the last read stopped.
struct Tail {
    path: PathBuf,
    pos: u64,
    text: String,
    partial: Vec<u8>,
}

impl Tail {
    fn new(path: &Path) -> Self {
        Tail { path: path.to_path_buf(), pos: 0, text: String::new(), partial: Vec::new() }
    }

    /// Appends what is new; returns the new text.
    fn poll(&mut self) -> &str {
        use std::io::{Seek, SeekFrom};
        let start = self.text.len();
        let Ok(mut f) = File::open(&self.path) else { return "" };
        if f.seek(SeekFrom::Start(self.pos)).is_err() {
            return "";
        }
        let mut buf = Vec::new();
        if let Ok(n) = f.read_to_end(&mut buf) {
            self.pos += n as u64;
            self.partial.extend_from_slice(&buf);
            // Keep an incomplete UTF-8 sequence for the next poll.
            let valid = match std::str::from_utf8(&self.partial) {
                Ok(_) => self.partial.len(),
                Err(e) if e.error_len().is_none() => e.valid_up_to(),
                Err(_) => self.partial.len(),
            };
            let chunk: Vec<u8> = self.partial.drain(..valid).collect();
            self.text.push_str(&String::from_utf8_lossy(&chunk));
        }
        &self.text[start..]
    }
}

/// Runs QEMU until it exits, the deadline passes or a fatal line shows in `console`.
pub fn watch(mut qemu: Qemu, console: &Path, marker: &str, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let mut tail = Tail::new(console);
    let mut marker_after = None;
    let mut fatal: Option<(String, Instant)> = None;
    // Lines can be split across polls: look at the new text plus the end of the old.
    let mut seen_len = 0usize;
    let end = loop {
        let exited = match qemu.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(status.code()),
            Some(Ok(None)) => None,
            Some(Err(_)) | None => Some(None),
        };
        tail.poll();
        let from = seen_len.saturating_sub(256);
        let from = (0..=from).rev().find(|&i| tail.text.is_char_boundary(i)).unwrap_or(0);
        let window = &tail.text[from..];
        if marker_after.is_none() && window.contains(marker) {
            marker_after = Some(start.elapsed());
        }
        if fatal.is_none() {
            if let Some(line) = FATAL.iter().find_map(|f| window.lines().find(|l| l.contains(f))) {
                fatal = Some((line.trim().to_string(), Instant::now()));
            }
        }
        seen_len = tail.text.len();
        if let Some(code) = exited {
            break End::Exited(code);
        }
        if let Some((line, at)) = &fatal {
            if at.elapsed() >= FATAL_GRACE {
                qemu.kill();
                break End::Fatal(line.clone());
            }
        }
        if start.elapsed() >= timeout {
            qemu.kill();
            break End::TimedOut;
        }
        std::thread::sleep(POLL);
    };
    let elapsed = start.elapsed();
    drop(qemu);
    Outcome { end, elapsed, marker_after }
}
