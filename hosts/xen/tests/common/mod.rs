//! The real-Xen testbed: Debian's Xen 4.17 and a Linux dom0 booted under QEMU (TCG), running one
//! given program in dom0 and handing back what it printed.
//!
//! ```ignore
//! let Some(bed) = common::testbed_or_skip() else { return };
//! let run = bed.run(&RunSpec { program, args: vec!["--x"], iommu: true, devices: vec!["edu,addr=04.0"], timeout })?;
//! assert_eq!(run.exit_code(), 0);
//! for line in run.stdout_lines() { .. }
//! ```
//!
//! The program's stdout goes to dom0's second serial port (`/dev/ttyS1`), which QEMU writes to a
//! file of its own, framed by marker lines: Xen's and the kernel's messages never mix into it. Its
//! stderr goes to the console, so it shows in [`Run::log`]. When a run fails, or a test panics
//! while holding its [`Run`], the whole log is saved to `target/xen-logs/<test>-<time>.log`.
//!
//! Inputs come from `scripts/fetch-xen.sh` (see [`artifacts`]); nothing is downloaded here.
#![allow(dead_code)]

pub mod artifacts;
pub mod boot;
pub mod initramfs;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use artifacts::Artifacts;
use artifacts::{which, workspace_root};
use boot::{End, Qemu};
use initramfs::{MARK_EXIT, MARK_INIT, MARK_START};

/// Xen's command line by default. No `noreboot`: after a panic Xen then resets the machine, and
/// QEMU (`-no-reboot`) exits instead of idling until the timeout.
pub const XEN_ARGS: &str = "console=com1 com1=115200,8n1 dom0_mem=256M,max:256M iommu=verbose";
/// dom0's command line by default.
pub const DOM0_ARGS: &str = "console=hvc0 earlyprintk=xen";

/// Why the testbed could not be used or a run failed.
pub enum TestbedError {
    /// A prerequisite is missing (artifacts, QEMU): the test should skip, or fail under
    /// `CI=true` (see [`testbed_or_skip`]).
    Skip(String),
    /// The run could not be set up (program unreadable, ldd failed, ...).
    Setup(String),
    /// The machine did not get the program to its end: timeout, panic, QEMU error.
    Boot {
        reason: String,
        /// Where the whole log was saved.
        log: Option<PathBuf>,
        /// The console's last lines.
        tail: String,
    },
}

impl fmt::Display for TestbedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TestbedError::Skip(why) => write!(f, "Xen testbed unavailable: {why}"),
            TestbedError::Setup(why) => write!(f, "Xen testbed setup failed: {why}"),
            TestbedError::Boot { reason, log, tail } => {
                write!(f, "Xen run failed: {reason}")?;
                match log {
                    Some(p) => write!(f, "\nwhole log: {}", p.display())?,
                    None => write!(f, "\n(the log could not be saved)")?,
                }
                write!(f, "\nlast console lines:\n{tail}")
            }
        }
    }
}

// Debug as Display, so `fn test() -> Result<(), TestbedError>` and `expect` print it readably.
impl fmt::Debug for TestbedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for TestbedError {}

/// What to run in dom0 and on what machine.
#[derive(Clone, Debug)]
pub struct RunSpec<'a> {
    /// A host-built ELF; its shared libraries (as `ldd` lists them) go into the initramfs.
    pub program: PathBuf,
    pub args: Vec<&'a str>,
    /// Whether the machine has QEMU's emulated VT-d (`-device intel-iommu,intremap=on`).
    pub iommu: bool,
    /// QEMU `-device` values, e.g. `"edu,addr=04.0"`.
    pub devices: Vec<&'a str>,
    /// Wall-clock bound from QEMU's start; QEMU is killed past it.
    pub timeout: Duration,
}

impl Default for RunSpec<'_> {
    fn default() -> Self {
        RunSpec {
            program: PathBuf::new(),
            args: Vec::new(),
            iommu: true,
            devices: Vec::new(),
            timeout: Duration::from_secs(120),
        }
    }
}

/// A found set of artifacts and QEMU. The command lines can be changed before a run.
#[derive(Clone, Debug)]
pub struct Testbed {
    pub artifacts: Artifacts,
    pub qemu: PathBuf,
    /// Xen's command line ([`XEN_ARGS`] by default).
    pub xen_args: String,
    /// dom0's kernel command line ([`DOM0_ARGS`] by default). No commas (QEMU's `-initrd` list).
    pub dom0_args: String,
    pub memory_mib: u32,
}

/// A finished run: the program exited and `/init` reported its status.
pub struct Run {
    label: String,
    log: String,
    output: String,
    exit_code: i32,
    elapsed: Duration,
    init_after: Option<Duration>,
    saved: Mutex<Option<PathBuf>>,
}

impl Run {
    /// The lines the program wrote to stdout, without line ends.
    pub fn stdout_lines(&self) -> Vec<&str> {
        self.output.lines().collect()
    }

    /// The program's stdout.
    pub fn stdout(&self) -> &str {
        &self.output
    }

    /// The program's exit status as `/init` reported it (128 + N when killed by signal N).
    pub fn exit_code(&self) -> i32 {
        self.exit_code
    }

    /// The whole console: Xen, the dom0 kernel, `/init` and the program's stderr.
    pub fn log(&self) -> &str {
        &self.log
    }

    /// Wall time from QEMU's start to its exit.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Wall time from QEMU's start until `/init` started (within ~50 ms).
    pub fn init_after(&self) -> Option<Duration> {
        self.init_after
    }

    /// Saves the log under `target/xen-logs` (once) and returns its path.
    pub fn save_log(&self) -> Option<PathBuf> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        if saved.is_none() {
            let text = format!("{}\n==== program stdout ====\n{}", self.log, self.output);
            *saved = save_log(&self.label, &text);
        }
        saved.clone()
    }
}

impl Drop for Run {
    /// A test that panics while it holds the run (a failed assertion) keeps the log too.
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(p) = self.save_log() {
                let _ = writeln!(std::io::stderr(), "Xen console log saved to {}", p.display());
            }
        }
    }
}

/// The testbed, or `None` after saying why it is unavailable. Under `CI=true` an unavailable
/// testbed fails the test instead: CI must have run `scripts/fetch-xen.sh`.
pub fn testbed_or_skip() -> Option<Testbed> {
    match Testbed::prepare() {
        Ok(bed) => Some(bed),
        Err(TestbedError::Skip(why)) => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true");
            assert!(!ci, "CI=true but the Xen testbed is unavailable: {why}");
            // Straight to stderr, past libtest's capture, so the skip shows in a normal run.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: the Xen testbed is unavailable ({why}); under CI=true this is a failure"
            );
            None
        }
        Err(e) => panic!("{e}"),
    }
}

impl Testbed {
    /// Finds the artifacts of `scripts/fetch-xen.sh` and `qemu-system-x86_64`.
    pub fn prepare() -> Result<Self, TestbedError> {
        let artifacts = Artifacts::find().map_err(TestbedError::Skip)?;
        let qemu = which("qemu-system-x86_64").ok_or_else(|| {
            TestbedError::Skip("qemu-system-x86_64 is not on PATH (run scripts/setup-debian.sh)".into())
        })?;
        for p in [&artifacts.vmlinux, &artifacts.xen] {
            let s = p.to_string_lossy();
            if s.contains(',') || s.contains(' ') {
                return Err(TestbedError::Setup(format!(
                    "{s}: QEMU's -initrd list cannot hold a path with a comma or a space (set IOASIS_XEN_DIR)"
                )));
            }
        }
        Ok(Testbed {
            artifacts,
            qemu,
            xen_args: XEN_ARGS.to_string(),
            dom0_args: DOM0_ARGS.to_string(),
            memory_mib: 1024,
        })
    }

    /// The QEMU command line for `spec`, with the initramfs at `initrd` and the console and
    /// program-output ports written to `console` and `output`.
    pub fn qemu_command(&self, spec: &RunSpec<'_>, initrd: &Path, console: &Path, output: &Path) -> Command {
        let mut cmd = Command::new(&self.qemu);
        cmd.args(["-machine", "q35,accel=tcg,kernel-irqchip=split"]);
        if spec.iommu {
            cmd.args(["-device", "intel-iommu,intremap=on"]);
        }
        cmd.args(["-cpu", "qemu64", "-smp", "1", "-m", &self.memory_mib.to_string()]);
        cmd.args(["-nic", "none", "-display", "none", "-monitor", "none", "-no-reboot"]);
        // COM1 is Xen's console (dom0's hvc0 goes through it); COM2 is dom0's ttyS1.
        cmd.arg("-serial").arg(format!("file:{}", console.display()));
        cmd.arg("-serial").arg(format!("file:{}", output.display()));
        cmd.arg("-kernel").arg(&self.artifacts.xen);
        cmd.arg("-append").arg(&self.xen_args);
        // Multiboot modules, comma-separated: the dom0 kernel with its command line, then the
        // initramfs.
        cmd.arg("-initrd").arg(format!("{} {},{}", self.artifacts.vmlinux.display(), self.dom0_args, initrd.display()));
        for d in &spec.devices {
            cmd.args(["-device", d]);
        }
        cmd
    }

    /// Boots, runs `spec.program` in dom0 and returns once QEMU is gone. Boots are serialized
    /// (one at a time on this machine, across test processes): each takes a core for ~10 s.
    pub fn run(&self, spec: &RunSpec<'_>) -> Result<Run, TestbedError> {
        let label = test_label(&spec.program);
        if self.dom0_args.contains(',') {
            return Err(TestbedError::Setup("dom0_args must not contain a comma".into()));
        }
        let initrd = initramfs::build(&self.artifacts, &spec.program, &spec.args).map_err(TestbedError::Setup)?;

        let runs = workspace_root().join("target/xen-runs");
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = runs.join(format!("{label}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| TestbedError::Setup(format!("{}: {e}", dir.display())))?;
        let _cleanup = RemoveOnDrop(dir.clone());
        let (cpio, console, output, qemu_out) =
            (dir.join("initrd.cpio"), dir.join("console.log"), dir.join("program.log"), dir.join("qemu.out"));
        fs::write(&cpio, &initrd).map_err(|e| TestbedError::Setup(format!("{}: {e}", cpio.display())))?;
        let mut cmd = self.qemu_command(spec, &cpio, &console, &output);

        let outcome = {
            let _lock = BootLock::take(&runs.join(".boot.lock"));
            let qemu = Qemu::spawn(&mut cmd, &qemu_out).map_err(TestbedError::Setup)?;
            boot::watch(qemu, &console, MARK_INIT, spec.timeout)
        };

        let clean = |b: Vec<u8>| String::from_utf8_lossy(&b).replace('\r', "");
        let log = clean(fs::read(&console).unwrap_or_default());
        let port = clean(fs::read(&output).unwrap_or_default());
        let qemu_said = clean(fs::read(&qemu_out).unwrap_or_default());

        // The program's output: on ttyS1, or on the console when /init found no ttyS1.
        let framed = if port.contains(MARK_START) { &port } else { &log };
        let program = frame(framed);
        let failure = match (&outcome.end, &program) {
            (End::Exited(_), Some((_, Some(_)))) => None,
            (End::Exited(code), _) => Some(format!(
                "QEMU exited (status {code:?}) after {:.1} s before /init reported the program's exit{}",
                outcome.elapsed.as_secs_f64(),
                if outcome.marker_after.is_none() { "; /init never started" } else { "" }
            )),
            (End::TimedOut, _) => Some(format!(
                "timed out after {:.1} s{}",
                spec.timeout.as_secs_f64(),
                if outcome.marker_after.is_none() { "; /init never started" } else { "" }
            )),
            (End::Fatal(line), _) => Some(format!("fatal console line: {line}")),
        };
        if let Some(reason) = failure {
            let text = format!(
                "{log}\n==== program stdout (ttyS1) ====\n{port}\n==== QEMU's own output ====\n{qemu_said}\n==== QEMU command ====\n{cmd:?}\n"
            );
            let saved = save_log(&label, &text);
            let tail = last_lines(&log, 30);
            return Err(TestbedError::Boot { reason, log: saved, tail });
        }
        let (out, code) = program.expect("checked above");
        Ok(Run {
            label,
            log,
            output: out,
            exit_code: code.expect("checked above"),
            elapsed: outcome.elapsed,
            init_after: outcome.marker_after,
            saved: Mutex::new(None),
        })
    }
}

/// The text between the start marker's line and the exit marker, and the status after it.
fn frame(text: &str) -> Option<(String, Option<i32>)> {
    let start = text.find(MARK_START)?;
    let body_start = text[start..].find('\n').map(|i| start + i + 1).unwrap_or(text.len());
    let body = &text[body_start..];
    match body.rfind(MARK_EXIT) {
        Some(end) => {
            let status = body[end + MARK_EXIT.len()..].split_whitespace().next().and_then(|s| s.parse().ok());
            Some((body[..end].to_string(), status))
        }
        None => Some((body.to_string(), None)),
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The running test's name (libtest names each test's thread after it), else the program's.
fn test_label(program: &Path) -> String {
    let name = std::thread::current().name().filter(|n| *n != "main").map(str::to_string).unwrap_or_else(|| {
        program.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into())
    });
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' }).collect()
}

/// Writes `text` to `target/xen-logs/<label>-<UTC time>.log`.
fn save_log(label: &str, text: &str) -> Option<PathBuf> {
    let dir = workspace_root().join("target/xen-logs");
    fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{label}-{}.log", utc_stamp(SystemTime::now())));
    fs::write(&path, text).ok()?;
    Some(path.canonicalize().unwrap_or(path))
}

/// `YYYYMMDDTHHMMSS.mmmZ` in UTC.
fn utc_stamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian, eras of 400 years).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// An exclusive `flock` on a file under `target/`, so that boots from parallel tests and from
/// other test processes on this machine do not compete for its two cores. Released on drop
/// (the descriptor closes). Without the lock file the boot goes on unserialized.
struct BootLock(Option<File>);

impl BootLock {
    fn take(path: &Path) -> Self {
        const LOCK_EX: std::ffi::c_int = 2;
        extern "C" {
            fn flock(fd: std::ffi::c_int, operation: std::ffi::c_int) -> std::ffi::c_int;
        }
        use std::os::fd::AsRawFd;
        let Ok(file) = OpenOptions::new().create(true).truncate(false).write(true).open(path) else {
            return BootLock(None);
        };
        loop {
            // SAFETY: `file` is open for the whole call; flock only takes the descriptor and a
            // flag and touches no memory of ours.
            let rc = unsafe { flock(file.as_raw_fd(), LOCK_EX) };
            if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break;
            }
        }
        BootLock(Some(file))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn stamps_are_utc_dates() {
        assert_eq!(super::utc_stamp(UNIX_EPOCH), "19700101T000000.000Z");
        // 2024-02-29 12:34:56.789 UTC (a leap day).
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(super::utc_stamp(t), "20240229T123456.789Z");
    }

    #[test]
    fn output_is_cut_between_the_markers() {
        use super::initramfs::{MARK_EXIT, MARK_START};
        let text = format!("noise\n{MARK_START}\na\nb\n{MARK_EXIT} 3\n");
        assert_eq!(super::frame(&text), Some(("a\nb\n".to_string(), Some(3))));
        // A last line without its newline still ends before the marker.
        let text = format!("{MARK_START}\nx{MARK_EXIT} 0\n");
        assert_eq!(super::frame(&text), Some(("x".to_string(), Some(0))));
        assert_eq!(super::frame("no markers"), None);
    }
}
