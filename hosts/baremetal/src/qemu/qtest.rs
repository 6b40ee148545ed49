//! A client of QEMU's qtest text protocol (QEMU's `docs/devel/qtest.rst`).
//!
//! One command per line; QEMU answers `OK [value]`, `FAIL reason` or `ERR reason`, and may send
//! asynchronous `IRQ ...` lines in between, which the client skips. Every reply is awaited with
//! a deadline ([`Qtest::timeout`]); a late or missing reply is [`QemuError::ReplyTimeout`], after
//! which the session is out of step with QEMU and refuses further commands
//! ([`QemuError::Broken`]).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::error::{QemuError, QemuResult};

/// Largest chunk moved by one `read`/`write` command (the reply is twice as long in hex).
const CHUNK: usize = 32 * 1024;
/// How much of a command or reply an error message keeps.
const SHOWN: usize = 96;

/// A qtest session over a connected unix socket.
#[derive(Debug)]
pub struct Qtest {
    stream: UnixStream,
    pending: Vec<u8>,
    timeout: Duration,
    stderr_path: Option<PathBuf>,
    broken: Option<String>,
}

fn shown(s: &str) -> String {
    match s.char_indices().nth(SHOWN) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

fn parse_hex(s: &str) -> Option<u64> {
    let digits = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"))?;
    u64::from_str_radix(digits, 16).ok()
}

impl Qtest {
    /// The default bound on every reply.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

    /// A session over `stream`, the connection QEMU made to the harness's socket. When QEMU
    /// exits, the tail of `stderr_path` (where its stderr goes) is put in the error.
    pub fn new(stream: UnixStream, stderr_path: Option<PathBuf>) -> Self {
        Self { stream, pending: Vec::new(), timeout: Self::DEFAULT_TIMEOUT, stderr_path, broken: None }
    }

    /// The bound on each reply.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the bound on each reply (a zero duration is raised to 1 ms).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.max(Duration::from_millis(1));
    }

    /// True once the session failed and refuses commands.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    fn exited(&self) -> QemuError {
        let stderr = self.stderr_path.as_deref().map(super::stderr_tail).unwrap_or_default();
        QemuError::Exited { status: "qtest socket closed".into(), stderr }
    }

    fn io_error(&self, context: &str, e: std::io::Error) -> QemuError {
        match e.kind() {
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => self.exited(),
            _ => QemuError::Io { context: context.into(), source: e },
        }
    }

    /// Sends `cmd` and returns what follows `OK` in the answer (trimmed, possibly empty).
    pub fn command(&mut self, cmd: &str) -> QemuResult<String> {
        if let Some(why) = &self.broken {
            return Err(QemuError::Broken(why.clone()));
        }
        let result = self.exchange(cmd);
        if let Err(e) = &result {
            if !matches!(e, QemuError::Fail { .. } | QemuError::Malformed { .. }) {
                tracing::error!(error = %e, "qtest session broken");
                self.broken = Some(e.to_string());
            }
        }
        result
    }

    fn exchange(&mut self, cmd: &str) -> QemuResult<String> {
        tracing::trace!(command = %shown(cmd), "qtest");
        let mut line = Vec::with_capacity(cmd.len() + 1);
        line.extend_from_slice(cmd.as_bytes());
        line.push(b'\n');
        self.stream.set_write_timeout(Some(self.timeout)).map_err(|e| self.io_error("qtest socket", e))?;
        if let Err(e) = self.stream.write_all(&line) {
            return Err(match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                    QemuError::ReplyTimeout { command: shown(cmd), waited: self.timeout }
                }
                _ => self.io_error("writing to the qtest socket", e),
            });
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            let reply = self.read_line(cmd, deadline)?;
            if reply.starts_with("IRQ") {
                tracing::trace!(line = %reply, "qtest asynchronous line skipped");
                continue;
            }
            let (word, rest) = reply.split_once(' ').unwrap_or((reply.as_str(), ""));
            return match word {
                "OK" => Ok(rest.trim().to_owned()),
                "FAIL" | "ERR" => Err(QemuError::Fail { command: shown(cmd), reply: shown(&reply) }),
                _ => Err(QemuError::Malformed { command: shown(cmd), reply: shown(&reply) }),
            };
        }
    }

    /// The next full line, waiting at most until `deadline`.
    fn read_line(&mut self, cmd: &str, deadline: Instant) -> QemuResult<String> {
        let mut buf = [0u8; 16 * 1024];
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.pending[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + pos;
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line[..end]);
                return Ok(text.trim_end_matches('\r').to_owned());
            }
            scanned = self.pending.len();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QemuError::ReplyTimeout { command: shown(cmd), waited: self.timeout });
            }
            self.stream.set_read_timeout(Some(left)).map_err(|e| self.io_error("qtest socket", e))?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(self.exited()),
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(e) => return Err(self.io_error("reading the qtest socket", e)),
            }
        }
    }

    fn value(&mut self, cmd: &str) -> QemuResult<u64> {
        let reply = self.command(cmd)?;
        parse_hex(&reply).ok_or_else(|| QemuError::Malformed { command: shown(cmd), reply: shown(&reply) })
    }

    fn narrow<T: TryFrom<u64>>(&mut self, cmd: &str) -> QemuResult<T> {
        let v = self.value(cmd)?;
        T::try_from(v).map_err(|_| QemuError::Malformed { command: shown(cmd), reply: format!("{v:#x}") })
    }

    /// Reads a byte of guest physical memory (RAM or MMIO).
    pub fn readb(&mut self, addr: u64) -> QemuResult<u8> {
        self.narrow(&format!("readb {addr:#x}"))
    }
    /// Reads a 16-bit little-endian value.
    pub fn readw(&mut self, addr: u64) -> QemuResult<u16> {
        self.narrow(&format!("readw {addr:#x}"))
    }
    /// Reads a 32-bit little-endian value.
    pub fn readl(&mut self, addr: u64) -> QemuResult<u32> {
        self.narrow(&format!("readl {addr:#x}"))
    }
    /// Reads a 64-bit little-endian value (one 8-byte access).
    pub fn readq(&mut self, addr: u64) -> QemuResult<u64> {
        self.value(&format!("readq {addr:#x}"))
    }
    /// Writes a byte of guest physical memory (RAM or MMIO).
    pub fn writeb(&mut self, addr: u64, value: u8) -> QemuResult<()> {
        self.command(&format!("writeb {addr:#x} {value:#x}")).map(drop)
    }
    /// Writes a 16-bit little-endian value.
    pub fn writew(&mut self, addr: u64, value: u16) -> QemuResult<()> {
        self.command(&format!("writew {addr:#x} {value:#x}")).map(drop)
    }
    /// Writes a 32-bit little-endian value.
    pub fn writel(&mut self, addr: u64, value: u32) -> QemuResult<()> {
        self.command(&format!("writel {addr:#x} {value:#x}")).map(drop)
    }
    /// Writes a 64-bit little-endian value (one 8-byte access).
    pub fn writeq(&mut self, addr: u64, value: u64) -> QemuResult<()> {
        self.command(&format!("writeq {addr:#x} {value:#x}")).map(drop)
    }

    /// Reads `buf.len()` bytes at `addr` (`read ADDR LEN`, answered in hex), in chunks.
    pub fn read(&mut self, addr: u64, buf: &mut [u8]) -> QemuResult<()> {
        for (i, chunk) in buf.chunks_mut(CHUNK).enumerate() {
            let at = addr.wrapping_add((i * CHUNK) as u64);
            let cmd = format!("read {at:#x} {:#x}", chunk.len());
            let reply = self.command(&cmd)?;
            let bad = || QemuError::Malformed { command: shown(&cmd), reply: shown(&reply) };
            let hex = reply.strip_prefix("0x").ok_or_else(bad)?.as_bytes();
            if hex.len() != 2 * chunk.len() {
                return Err(bad());
            }
            for (byte, pair) in chunk.iter_mut().zip(hex.chunks_exact(2)) {
                let s = std::str::from_utf8(pair).map_err(|_| bad())?;
                *byte = u8::from_str_radix(s, 16).map_err(|_| bad())?;
            }
        }
        Ok(())
    }

    /// Writes `data` at `addr` (`write ADDR LEN 0xHEX`), in chunks.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> QemuResult<()> {
        use std::fmt::Write as _;
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            let at = addr.wrapping_add((i * CHUNK) as u64);
            let mut cmd = String::with_capacity(40 + 2 * chunk.len());
            // Writing into a String cannot fail.
            let _ = write!(cmd, "write {at:#x} {:#x} 0x", chunk.len());
            for b in chunk {
                let _ = write!(cmd, "{b:02x}");
            }
            self.command(&cmd)?;
        }
        Ok(())
    }

    /// Sets `len` bytes at `addr` to `byte` (`memset ADDR LEN BYTE`).
    pub fn memset(&mut self, addr: u64, len: u64, byte: u8) -> QemuResult<()> {
        if len == 0 {
            return Ok(());
        }
        self.command(&format!("memset {addr:#x} {len:#x} {byte:#x}")).map(drop)
    }

    /// Reads an I/O port byte.
    pub fn inb(&mut self, port: u16) -> QemuResult<u8> {
        self.narrow(&format!("inb {port:#x}"))
    }
    /// Reads an I/O port word.
    pub fn inw(&mut self, port: u16) -> QemuResult<u16> {
        self.narrow(&format!("inw {port:#x}"))
    }
    /// Reads an I/O port dword.
    pub fn inl(&mut self, port: u16) -> QemuResult<u32> {
        self.narrow(&format!("inl {port:#x}"))
    }
    /// Writes an I/O port byte.
    pub fn outb(&mut self, port: u16, value: u8) -> QemuResult<()> {
        self.command(&format!("outb {port:#x} {value:#x}")).map(drop)
    }
    /// Writes an I/O port word.
    pub fn outw(&mut self, port: u16, value: u16) -> QemuResult<()> {
        self.command(&format!("outw {port:#x} {value:#x}")).map(drop)
    }
    /// Writes an I/O port dword.
    pub fn outl(&mut self, port: u16, value: u32) -> QemuResult<()> {
        self.command(&format!("outl {port:#x} {value:#x}")).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::thread;

    use super::*;

    /// A fake QEMU: answers each line with the next canned answer (`None`: stay silent).
    fn fake(answers: Vec<Option<&'static str>>) -> (Qtest, thread::JoinHandle<Vec<String>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let server = thread::spawn(move || {
            let mut seen = Vec::new();
            let mut reader = BufReader::new(theirs.try_clone().unwrap());
            let mut out = theirs;
            for answer in answers {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                seen.push(line.trim_end().to_owned());
                match answer {
                    Some(a) => out.write_all(a.as_bytes()).unwrap(),
                    None => thread::sleep(Duration::from_millis(300)),
                }
            }
            seen
        });
        (Qtest::new(ours, None), server)
    }

    #[test]
    fn commands_and_replies() {
        let (mut q, server) = fake(vec![
            Some("IRQ raise 3\nOK 0x00000000000000ab\n"),
            Some("OK\n"),
            Some("OK 0x0a0bff\n"),
            Some("OK\n"),
            Some("OK 0x12345678\n"),
            Some("FAIL\n"),
            Some("OK zz\n"),
            Some("OK 0x1ff\n"),
        ]);
        assert_eq!(q.readq(0x1000).unwrap(), 0xab);
        q.writel(0x2000, 7).unwrap();
        let mut buf = [0u8; 3];
        q.read(0x3000, &mut buf).unwrap();
        assert_eq!(buf, [0x0a, 0x0b, 0xff]);
        q.write(0x4000, &[1, 0xfe]).unwrap();
        assert_eq!(q.inl(0xcfc).unwrap(), 0x1234_5678);
        assert!(matches!(q.readb(0), Err(QemuError::Fail { .. })));
        assert!(matches!(q.readb(0), Err(QemuError::Malformed { .. })));
        assert!(matches!(q.readb(0), Err(QemuError::Malformed { .. })), "0x1ff does not fit a byte");
        assert!(!q.is_broken(), "FAIL and malformed replies keep the session in step");
        let seen = server.join().unwrap();
        assert_eq!(seen[0], "readq 0x1000");
        assert_eq!(seen[1], "writel 0x2000 0x7");
        assert_eq!(seen[2], "read 0x3000 0x3");
        assert_eq!(seen[3], "write 0x4000 0x2 0x01fe");
        assert_eq!(seen[4], "inl 0xcfc");
    }

    #[test]
    fn a_silent_qemu_times_out_and_breaks_the_session() {
        let (mut q, server) = fake(vec![None]);
        q.set_timeout(Duration::from_millis(50));
        let t = Instant::now();
        assert!(matches!(q.readl(0), Err(QemuError::ReplyTimeout { .. })));
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(matches!(q.readl(0), Err(QemuError::Broken(_))));
        server.join().unwrap();
    }

    #[test]
    fn a_closed_socket_is_an_exit() {
        let (mut q, server) = fake(vec![]);
        server.join().unwrap();
        let err = q.readl(0).unwrap_err();
        assert!(matches!(err, QemuError::Exited { .. }), "{err}");
    }
}
