//! Running the suite in child processes, the way kselftest's harness runs each test in a child:
//! a plugin is foreign code, and a panic that aborts, a SIGSEGV or a call that never returns
//! must end as a failed case with its reason, not as a dead or hung run without a report.
//!
//! The parent ([`supervise`]) starts a child (a command that runs [`crate::run_observed`] with
//! [`ChildEvents`] as its observer: `ioasis conformance` does so with `--isolated-child`) and
//! reads one event line per case start and end. A case with no result within the time limit
//! gets its child killed; a child that dies in a case (signal or exit) fails that case with
//! how it died and the end of its stderr. Either way a new child resumes after that case
//! ([`crate::Options::after`]), so one bad case costs one case.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{CaseResult, Observer, Options, Outcome};

/// What starts an event line; anything else a child prints (a plugin writing to stdout) is
/// ignored.
const PREFIX: &str = "ioasis-event ";
/// Bytes of a child's stderr kept for the reason of a failure.
const STDERR_TAIL: usize = 2048;

/// Time limits of an isolated run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From a case's start to its result (setup, body and teardown).
    pub case: Duration,
    /// From the child's start to its first case (loading the plugin, probing).
    pub load: Duration,
}

impl Default for Limits {
    /// 300 s a case (the slowest case on QEMU takes some tens of seconds), 60 s to load.
    fn default() -> Self {
        Self { case: Duration::from_secs(300), load: Duration::from_secs(60) }
    }
}

/// One line a child sends.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
enum Event {
    Started { plugin: String, id: String },
    Finished(Wire),
}

/// A case result as it crosses the pipe (the parent knows the seed and platform).
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    plugin: String,
    category: String,
    case: String,
    millis: u64,
    selection: String,
    outcome: String,
    detail: String,
}

/// The exit status of a child that stopped after a case in which its plugin went out of
/// service (it panicked): the parent resumes after that case in a fresh process, with a fresh
/// load of the plugin.
pub const RESTART: u8 = 75;
const RESTART_STATUS: i32 = RESTART as i32;

/// The child's observer: an event line on stdout per case start and end, flushed at once so
/// that the parent has it even if the next case kills the process.
pub struct ChildEvents<W: Write> {
    out: W,
    /// The plugin went out of service and the run stopped: exit with [`RESTART`].
    pub restart: bool,
}

impl ChildEvents<std::io::Stdout> {
    /// Events on this process's stdout.
    pub fn stdout() -> Self {
        Self { out: std::io::stdout(), restart: false }
    }
}

impl<W: Write> ChildEvents<W> {
    fn send(&mut self, e: &Event) {
        if let Ok(json) = serde_json::to_string(e) {
            // A closed pipe means the parent is gone: nothing left to tell.
            let _ = writeln!(self.out, "{PREFIX}{json}").and_then(|()| self.out.flush());
        }
    }
}

impl<W: Write> Observer for ChildEvents<W> {
    fn started(&mut self, plugin: &str, id: &str) {
        self.send(&Event::Started { plugin: plugin.into(), id: id.into() });
    }

    fn finished(&mut self, r: &CaseResult) {
        let (outcome, detail) = match &r.outcome {
            Outcome::Passed(d) => ("passed", d),
            Outcome::Failed(d) => ("failed", d),
            Outcome::Skipped(d) => ("skipped", d),
        };
        self.send(&Event::Finished(Wire {
            plugin: r.plugin.clone(),
            category: r.category.clone(),
            case: r.case.clone(),
            millis: r.millis,
            selection: r.selection.clone(),
            outcome: outcome.into(),
            detail: detail.clone(),
        }));
    }

    fn out_of_service(&mut self, _plugin: &str, _why: &str) -> bool {
        self.restart = true;
        true
    }
}

/// How a supervised child's run ended, when it did not give results.
#[derive(Debug)]
pub enum Refused {
    /// The child exited with status 2 before any case: a usage or load error, in its words
    /// (the end of its stderr).
    Usage(String),
    /// The child could not be started.
    Spawn(String),
}

/// Runs a child per `make(after)` (the command that runs the cases after `after`, or all of
/// them) until every case has a result, within `limits`; `progress` sees each result. `label`
/// names the plugin in a failure before any case started (a plugin that dies or hangs while
/// loading fails a `load/load` case). `opts` gives the seed and platform of the results.
pub fn supervise(
    label: &str,
    mut make: impl FnMut(Option<&str>) -> Command,
    opts: &Options,
    limits: Limits,
    progress: &mut dyn FnMut(&CaseResult),
) -> Result<Vec<CaseResult>, Refused> {
    let mut results = Vec::new();
    let mut after = opts.after.clone();
    let mut plugin = label.to_string();
    let mut selection = String::new();
    loop {
        let mut cmd = make(after.as_deref());
        // Its own process group, so that a kill takes what it started too (QEMU, helpers).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| Refused::Spawn(format!("starting {:?}: {e}", cmd.get_program())))?;
        let mut run = watch(&mut child, limits);
        let status = child.wait().map_err(|e| Refused::Spawn(e.to_string()))?;
        let tail = run.stderr_tail();
        let mut push = |r: CaseResult, results: &mut Vec<CaseResult>| {
            progress(&r);
            results.push(r);
        };
        let mut last = None;
        for w in std::mem::take(&mut run.finished) {
            last = Some(format!("{}/{}", w.category, w.case));
            plugin = w.plugin.clone();
            selection = w.selection.clone();
            push(from_wire(w, opts), &mut results);
        }
        if let (None, None, Some(RESTART_STATUS), Some(last)) = (run.timed_out, &run.current, status.code(), last) {
            // The plugin went out of service in `last`: the rest runs in a fresh process.
            after = Some(last);
            continue;
        }
        let why = match (run.timed_out, status.success()) {
            (Some(limit), _) => format!("no result within {} s: it hangs (the process was killed)", limit.as_secs()),
            (None, true) => match run.current {
                // A clean end: every case has its result.
                None => return Ok(results),
                Some(_) => "the process ended in the middle of the case".to_string(),
            },
            (None, false) => format!("the process died: {}", describe(status)),
        };
        let why = if tail.is_empty() { why } else { format!("{why}; its stderr ended with:\n{tail}") };
        match run.current {
            Some((p, id)) => {
                let (category, case) = id.split_once('/').unwrap_or(("?", id.as_str()));
                let r = failed(&p, category, case, &selection, why, opts);
                after = Some(id.clone());
                plugin = p;
                push(r, &mut results);
            }
            None if results.is_empty() && run.timed_out.is_none() && status.code() == Some(2) => {
                return Err(Refused::Usage(tail));
            }
            None => {
                // Died or hung outside a case: while loading, or after the last result.
                let (category, case) = if results.is_empty() { ("load", "load") } else { ("process", "exit") };
                push(failed(&plugin, category, case, &selection, why, opts), &mut results);
                return Ok(results);
            }
        }
    }
}

/// What one child did.
struct Watched {
    finished: Vec<Wire>,
    /// The case started and not finished: `(plugin, id)`.
    current: Option<(String, String)>,
    /// The limit that ran out, when the child was killed.
    timed_out: Option<Duration>,
    stderr: Arc<Mutex<VecDeque<u8>>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Watched {
    fn stderr_tail(&mut self) -> String {
        if let Some(h) = self.stderr_reader.take() {
            let _ = h.join();
        }
        let bytes: Vec<u8> = self.stderr.lock().map(|b| b.iter().copied().collect()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

/// Reads `child`'s events until its stdout closes or a limit runs out (then kills it).
fn watch(child: &mut Child, limits: Limits) -> Watched {
    let stderr = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
    let stderr_reader = child.stderr.take().map(|mut pipe| {
        let keep = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                if let Ok(mut k) = keep.lock() {
                    k.extend(&buf[..n]);
                    let excess = k.len().saturating_sub(STDERR_TAIL);
                    k.drain(..excess);
                }
            }
        })
    });
    let mut w = Watched { finished: Vec::new(), current: None, timed_out: None, stderr, stderr_reader };
    let Some(stdout) = child.stdout.take() else { return w };
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut limit = limits.load;
    let mut deadline = Instant::now() + limit;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let Some(json) = line.strip_prefix(PREFIX) else { continue };
                match serde_json::from_str::<Event>(json) {
                    Ok(Event::Started { plugin, id }) => w.current = Some((plugin, id)),
                    Ok(Event::Finished(r)) => {
                        w.current = None;
                        w.finished.push(r);
                    }
                    Err(e) => tracing::warn!("unreadable event from the child: {e}: {json}"),
                }
                limit = limits.case;
                deadline = Instant::now() + limit;
            }
            Err(RecvTimeoutError::Disconnected) => return w,
            Err(RecvTimeoutError::Timeout) => {
                kill_group(child);
                w.timed_out = Some(limit);
                return w;
            }
        }
    }
}

/// Kills `child` and everything in its process group.
fn kill_group(child: &mut Child) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    match i32::try_from(child.id()) {
        Ok(pid) => {
            if let Err(e) = killpg(Pid::from_raw(pid), Signal::SIGKILL) {
                tracing::warn!("killing the process group of {pid}: {e}");
                let _ = child.kill();
            }
        }
        Err(_) => {
            let _ = child.kill();
        }
    }
}

fn from_wire(w: Wire, opts: &Options) -> CaseResult {
    let outcome = match w.outcome.as_str() {
        "passed" => Outcome::Passed(w.detail),
        "skipped" => Outcome::Skipped(w.detail),
        "failed" => Outcome::Failed(w.detail),
        other => Outcome::Failed(format!("the child reported an unknown outcome `{other}`: {}", w.detail)),
    };
    CaseResult {
        plugin: w.plugin,
        category: w.category,
        case: w.case,
        seed: opts.seed,
        platform: opts.platform,
        millis: w.millis,
        selection: w.selection,
        outcome,
    }
}

fn failed(plugin: &str, category: &str, case: &str, selection: &str, why: String, opts: &Options) -> CaseResult {
    CaseResult {
        plugin: plugin.into(),
        category: category.into(),
        case: case.into(),
        seed: opts.seed,
        platform: opts.platform,
        millis: 0,
        selection: selection.into(),
        outcome: Outcome::Failed(why),
    }
}

/// "killed by SIGSEGV", "exited with status 101".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => {
            let name = match sig {
                4 => "SIGILL",
                6 => "SIGABRT (an abort: a panic across the plugin boundary aborts)",
                7 => "SIGBUS",
                8 => "SIGFPE",
                9 => "SIGKILL",
                11 => "SIGSEGV",
                15 => "SIGTERM",
                _ => "",
            };
            if name.is_empty() {
                format!("killed by signal {sig}")
            } else {
                format!("killed by {name}")
            }
        }
        (None, None) => "ended without a status".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn line(e: &Event) -> String {
        format!("{PREFIX}{}", serde_json::to_string(e).unwrap())
    }

    fn wire(case: &str, outcome: &str) -> Event {
        Event::Finished(Wire {
            plugin: "p".into(),
            category: "c".into(),
            case: case.into(),
            millis: 1,
            selection: "--backend p".into(),
            outcome: outcome.into(),
            detail: "d".into(),
        })
    }

    fn start(case: &str) -> Event {
        Event::Started { plugin: "p".into(), id: format!("c/{case}") }
    }

    /// A child that prints `lines` (after the case given as `after`) and then runs `then`.
    fn script(all: &[(&str, &str)], after: Option<&str>, then: &str) -> Command {
        let mut out = String::new();
        let mut go = after.is_none();
        for (case, how) in all {
            if !go {
                go = after == Some(&format!("c/{case}")[..]);
                continue;
            }
            out += &format!("echo '{}'\n", line(&start(case)));
            match *how {
                "abort" => out += "echo 'plugin panicked in map' >&2; kill -ABRT $$\n",
                "hang" => out += "sleep 30\n",
                // The case fails with a contained panic; the plugin is out of service.
                "restart" => {
                    out += &format!("echo '{}'\nexit {RESTART}\n", line(&wire(case, "failed")));
                    break;
                }
                _ => out += &format!("echo '{}'\n", line(&wire(case, how))),
            }
        }
        out += then;
        sh(&out)
    }

    #[test]
    fn a_child_that_aborts_or_hangs_fails_that_case_and_the_rest_still_run() {
        let cases = [("a", "passed"), ("b", "abort"), ("c", "hang"), ("d", "skipped"), ("e", "failed")];
        let limits = Limits { case: Duration::from_millis(500), load: Duration::from_secs(10) };
        let mut seen = 0;
        let mut children = 0;
        let results = supervise(
            "label",
            |after| {
                children += 1;
                script(&cases, after, "")
            },
            &Options::default(),
            limits,
            &mut |_| seen += 1,
        )
        .unwrap();
        let got: Vec<(String, &str)> = results
            .iter()
            .map(|r| {
                let o = match r.outcome {
                    Outcome::Passed(_) => "passed",
                    Outcome::Failed(_) => "failed",
                    Outcome::Skipped(_) => "skipped",
                };
                (r.case.clone(), o)
            })
            .collect();
        let want = [("a", "passed"), ("b", "failed"), ("c", "failed"), ("d", "skipped"), ("e", "failed")];
        assert_eq!(got, want.map(|(c, o)| (c.to_string(), o)));
        assert_eq!((seen, children), (5, 3));
        let Outcome::Failed(why) = &results[1].outcome else { unreachable!() };
        assert!(why.contains("SIGABRT") && why.contains("plugin panicked in map"), "{why}");
        let Outcome::Failed(why) = &results[2].outcome else { unreachable!() };
        assert!(why.contains("no result within") && why.contains("hangs"), "{why}");
        assert_eq!(results[1].selection, "--backend p", "the reproduce line survives the crash");
    }

    #[test]
    fn a_child_whose_plugin_went_out_of_service_is_followed_by_a_fresh_one() {
        let cases = [("a", "passed"), ("b", "restart"), ("c", "passed"), ("d", "restart"), ("e", "passed")];
        let limits = Limits { case: Duration::from_secs(5), load: Duration::from_secs(10) };
        let mut afters = Vec::new();
        let results = supervise(
            "label",
            |after| {
                afters.push(after.map(str::to_string));
                script(&cases, after, "")
            },
            &Options::default(),
            limits,
            &mut |_| {},
        )
        .unwrap();
        let got: Vec<(&str, bool)> =
            results.iter().map(|r| (r.case.as_str(), matches!(r.outcome, Outcome::Failed(_)))).collect();
        assert_eq!(got, [("a", false), ("b", true), ("c", false), ("d", true), ("e", false)]);
        assert_eq!(afters, [None, Some("c/b".to_string()), Some("c/d".to_string())]);
        let Outcome::Failed(why) = &results[1].outcome else { unreachable!() };
        assert_eq!(why, "d", "the case's own failure, not a death");
    }

    #[test]
    fn a_child_that_dies_or_hangs_while_loading_fails_a_load_case_and_a_usage_error_is_refused() {
        let limits = Limits { case: Duration::from_secs(5), load: Duration::from_millis(300) };
        let opts = Options::default();
        for (script, why) in [("kill -SEGV $$", "SIGSEGV"), ("sleep 30", "no result within")] {
            let r = supervise("libx.so", |_| sh(script), &opts, limits, &mut |_| {}).unwrap();
            assert_eq!(r.len(), 1);
            assert_eq!((r[0].plugin.as_str(), r[0].category.as_str()), ("libx.so", "load"));
            assert!(matches!(&r[0].outcome, Outcome::Failed(w) if w.contains(why)), "{:?}", r[0].outcome);
        }
        let e = supervise("libx.so", |_| sh("echo 'error: no such plugin' >&2; exit 2"), &opts, limits, &mut |_| {})
            .unwrap_err();
        assert!(matches!(&e, Refused::Usage(m) if m.contains("no such plugin")), "{e:?}");
        // Output that is not an event is ignored; a clean end with no case is no result.
        let r = supervise("libx.so", |_| sh("echo hello"), &opts, limits, &mut |_| {}).unwrap();
        assert!(r.is_empty());
    }
}
