//! `tests/interop/smtp_sink.py` as a child process: aiosmtpd (PyPI, an independent SMTP server)
//! requiring STARTTLS and AUTH, each message it accepts parsed by Python's `email` package and
//! written as `<n>.json` with its parts beside it. Used by the SMTP exchange test
//! (`settlement::smtp::tests`) and by `tests/settlement.rs`, each including this file with
//! `#[path]`. Needs python3 with aiosmtpd (`.ci/run` installs it); without it a test fails,
//! never skips. Stopped (stdin closed, then killed) when dropped.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct SmtpSink {
    child: Child,
    pub port: u16,
    out: tempfile::TempDir,
}

impl SmtpSink {
    /// Starts the sink on 127.0.0.1 with this certificate and login; waits (≤ 30 s) until it
    /// listens.
    pub fn start(cert: &Path, key: &Path, user: &str, password: &str) -> Self {
        let out = tempfile::tempdir().unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()])
            .args(["--user", user, "--password", password, "--out", out.path().to_str().unwrap()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed for the SMTP tests (.ci/run installs aiosmtpd)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let Some(port) = line.trim().strip_prefix("READY ").and_then(|p| p.parse().ok()) else {
            let _ = child.kill();
            panic!(
                "the SMTP sink did not start (is aiosmtpd installed? `python3 -m pip install \
                 aiosmtpd`; .ci/run does it): {line:?}"
            );
        };
        Self { child, port, out }
    }

    /// The messages received so far, in order.
    pub fn received(&self) -> Vec<serde_json::Value> {
        (1..)
            .map_while(|n| std::fs::read_to_string(self.out.path().join(format!("{n}.json"))).ok())
            .map(|text| serde_json::from_str(&text).unwrap())
            .collect()
    }

    /// The `n`th message (from 1), waiting for it at most 20 s.
    pub fn wait_for(&self, n: usize) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(m) = self.received().into_iter().nth(n - 1) {
                return m;
            }
            assert!(Instant::now() < deadline, "message {n} never reached the SMTP server");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The decoded bytes of the attachment named `filename` of a received message.
    pub fn part(&self, record: &serde_json::Value, filename: &str) -> Vec<u8> {
        let part = record["parts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["filename"] == filename)
            .unwrap_or_else(|| panic!("no part named {filename} in {record}"));
        assert_eq!(part["disposition"], "attachment");
        std::fs::read(self.out.path().join(part["file"].as_str().unwrap())).unwrap()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
