//! `gyro serve` as a child process for the tests that kill it (durability, settlement):
//! started on a port the kernel picks, waited for (bounded) until it listens, stopped with
//! SIGKILL or SIGTERM. Included with `#[path]` by the tests that use it, so the others do not
//! compile it.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to start (a debug build recovering its journal on a busy machine).
pub const START_MAX: Duration = Duration::from_secs(30);

extern "C" {
    /// kill(2) from the C library std links anyway (no crate needed for one signal).
    fn kill(pid: i32, sig: i32) -> i32;
}

const SIGTERM: i32 = 15;
const SIGHUP: i32 = 1;

/// `gyro serve` as a child process; killed when dropped.
pub struct Gyro {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub started_in: Duration,
}

impl Gyro {
    /// Starts `gyro serve --config CONFIG --data-dir DATA` on a port the kernel picks, its
    /// output in `log`, and waits (bounded) until it listens.
    pub fn start(config: &Path, data: &Path, log: PathBuf) -> Self {
        Self::start_with_rust_log(config, data, log, Some("info"))
    }

    /// `start` with `RUST_LOG` set to `rust_log`, or unset (`None`) so the configuration's
    /// `[log] level` applies.
    pub fn start_with_rust_log(config: &Path, data: &Path, log: PathBuf, rust_log: Option<&str>) -> Self {
        let started = Instant::now();
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_gyro"));
        command.arg("serve").arg("--config").arg(config);
        command.args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"]);
        command.arg(data).env("NO_COLOR", "1");
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("gyro starts");
        loop {
            let text = read_log(&log);
            if let Some(addr) = listening_addr(&text) {
                return Self { child, addr, log, started_in: started.elapsed() };
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("gyro exited ({status}) before listening:\n{text}");
            }
            if started.elapsed() > START_MAX {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gyro did not listen within {START_MAX:?}:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL: no chance to flush or answer anything.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGHUP: reload (configuration, dictionaries, catalog).
    pub fn hangup(&self) {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: as in `terminate`.
        let r = unsafe { kill(pid, SIGHUP) };
        assert_eq!(r, 0, "SIGHUP delivered");
    }

    /// SIGTERM (graceful stop), then waits (bounded) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child, which has not been waited for, so the pid is still
        // its own; kill has no memory-safety preconditions.
        let r = unsafe { kill(pid, SIGTERM) };
        assert_eq!(r, 0, "SIGTERM delivered");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("gyro did not stop within 15 s of SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }
}

impl Drop for Gyro {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The log without ANSI colour sequences (tracing may colour even with NO_COLOR).
pub fn read_log(path: &Path) -> String {
    let raw = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `addr=` of the "gyro listening for HTTP" line (the operations listener).
pub fn http_addr(log: &str) -> Option<SocketAddr> {
    line_addr(log.lines().find(|l| l.contains("gyro listening for HTTP"))?)
}

/// `addr=` of the "gyro listening for Diameter" line.
pub fn listening_addr(log: &str) -> Option<SocketAddr> {
    line_addr(log.lines().find(|l| l.contains("gyro listening for Diameter"))?)
}

/// The `addr` field of a log line: `addr=…` in the human format, `"addr":"…"` in JSON.
fn line_addr(line: &str) -> Option<SocketAddr> {
    if let Some(at) = line.find("\"addr\":\"") {
        let rest = &line[at + "\"addr\":\"".len()..];
        return rest[..rest.find('"')?].parse().ok();
    }
    let at = line.find("addr=")? + "addr=".len();
    line[at..].split_whitespace().next()?.parse().ok()
}
