//! `gyro load` as an operator runs it: the binary against `gyro serve` (a child process on a
//! provisioned catalog, on 127.0.0.1 and a port the kernel picks) and against a small fake
//! server in this file that answers with the wrong ids. Counts are checked, never times: every
//! run is bounded by its own options (duration, warm-up, --timeout-ms) and, as a guard against a
//! hang, by a deadline after which the child is killed and the test fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use gyro::catalog::Catalog;
use gyro::diameter::answer::begin_answer;
use gyro::diameter::encode::spec;
use gyro::diameter::{frame, AvpCode, CommandCode, CommandFlags, Encoder, MessageRef, ResultCode};
use serde_json::Value;

/// Guards against a hang only: far above what any run here needs.
const RUN_DEADLINE: Duration = Duration::from_secs(120);
const START_DEADLINE: Duration = Duration::from_secs(30);

const SUBSCRIBERS: &str = "200";

fn gyro_bin() -> &'static str {
    env!("CARGO_BIN_EXE_gyro")
}

/// Runs the binary to completion; kills it and fails if it outlives `RUN_DEADLINE`.
fn gyro(args: &[&str]) -> Output {
    let mut child = Command::new(gyro_bin())
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gyro starts");
    // Drain both pipes on threads so a chatty child never blocks on a full pipe.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gyro {args:?} still running after {RUN_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap() }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `gyro load ... --json`: the JSON object, after checking that it is all stdout holds and
/// that its counts add up.
fn load_json(args: &[&str]) -> Value {
    let mut all = vec!["load"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = gyro(&all);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "gyro {all:?}\nstdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout.lines().count(), 1, "one JSON object and nothing else on stdout:\n{stdout}");
    let j: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let n = |k: &str| j[k].as_u64().unwrap_or_else(|| panic!("{k} in {j}"));
    let by_code: u64 = j["result_codes"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(n("answers"), by_code, "answers = Σ result codes: {j}");
    assert_eq!(n("requests"), n("answers") + n("timeouts") + n("lost"), "every request ends once: {j}");
    let kinds: u64 =
        j["protocol_error_kinds"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(n("protocol_errors"), kinds, "{j}");
    let p = &j["latency_us"];
    let ps: Vec<u64> = ["p50", "p90", "p99", "p999", "max"].iter().map(|k| p[k].as_u64().unwrap()).collect();
    assert!(ps.windows(2).all(|w| w[0] <= w[1]), "percentiles in order: {p}");
    j
}

/// Every answer 2001, nothing lost, no protocol error.
fn assert_clean(j: &Value) {
    let answers = j["answers"].as_u64().unwrap();
    assert!(answers > 0, "{j}");
    assert_eq!(j["result_codes"], serde_json::json!({ "2001": answers }), "{j}");
    assert_eq!((j["protocol_errors"].as_u64(), j["timeouts"].as_u64()), (Some(0), Some(0)), "{j}");
    assert_eq!((j["lost"].as_u64(), j["sessions_dropped"].as_u64()), (Some(0), Some(0)), "{j}");
}

/// `gyro serve` on a provisioned catalog; killed when dropped.
struct Served {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Served {
    fn start(subscribers: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let catalog = dir.path().join("catalog.toml");
        let out =
            gyro(&["load", "provision", "--subscribers", subscribers, "--out", catalog.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let config = config_for(dir.path(), &catalog);
        let log = dir.path().join("serve.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut child = Command::new(gyro_bin())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--config",
            ])
            .arg(&config)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("gyro serve starts");
        let started = Instant::now();
        loop {
            let log_text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(addr) = listening_addr(&log_text) {
                return Self { child, addr, _dir: dir };
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("gyro serve exited ({status}) before listening:\n{log_text}");
            }
            if started.elapsed() > START_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gyro serve did not listen within {START_DEADLINE:?}:\n{log_text}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn server(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_for(dir: &Path, catalog: &Path) -> PathBuf {
    let config = dir.join("gyro.toml");
    std::fs::write(&config, format!("[charging]\ncatalog = {:?}\n", catalog.to_str().unwrap())).unwrap();
    config
}

/// The address in the "gyro listening for Diameter addr=..." log line.
fn listening_addr(log: &str) -> Option<SocketAddr> {
    let line = log.lines().find(|l| l.contains("gyro listening for Diameter"))?;
    let at = line.find("addr=")? + "addr=".len();
    line[at..].split_whitespace().next()?.parse().ok()
}

const SHORT_RUN: [&str; 6] = ["--duration", "2", "--warmup", "0.5", "--subscribers", SUBSCRIBERS];

#[test]
fn closed_loop_every_scenario_is_answered_2001() {
    let served = Served::start(SUBSCRIBERS);
    let server = served.server();
    for scenario in ["data", "voice", "sms", "mix"] {
        let mut args = vec!["--server", &server, "--scenario", scenario];
        args.extend_from_slice(&SHORT_RUN);
        let j = load_json(&args);
        assert_clean(&j);
        assert_eq!(j["scenario"], scenario);
        assert_eq!((j["connections"].as_u64(), j["in_flight"].as_u64()), (Some(4), Some(16)));
        assert!(j["offered_rate"].is_null(), "{j}");
        let bytes = j["mean_request_bytes"].as_f64().unwrap();
        assert!((300.0..700.0).contains(&bytes), "{scenario}: mean request {bytes} bytes");
    }
    // Two rating groups per data CCR, a Zipf skew, more sessions than in flight.
    let mut args =
        vec!["--server", &server, "--rating-groups", "2", "--skew", "zipf:1.1", "--sessions", "300"];
    args.extend_from_slice(&SHORT_RUN);
    let j = load_json(&args);
    assert_clean(&j);
    assert_eq!(j["sessions"], 300);
}

#[test]
fn open_loop_sends_the_scheduled_count_and_only_updates_sends_ccr_u() {
    let served = Served::start(SUBSCRIBERS);
    let server = served.server();
    // 200/s for 2 s after a 0.5 s warm-up: the schedule holds exactly 400 requests in the
    // window; every one is either sent or reported as due but not sent.
    let mut args = vec!["--server", &server, "--rate", "200"];
    args.extend_from_slice(&SHORT_RUN);
    let j = load_json(&args);
    assert_clean(&j);
    assert_eq!(j["offered_rate"], 200);
    let (requests, unsent) = (j["requests"].as_u64().unwrap(), j["unsent"].as_u64().unwrap());
    assert_eq!(requests + unsent, 400, "{j}");
    assert!(requests >= 300, "most of the schedule was sent: {j}");

    // --only-updates: 100 sessions opened first (not counted), then CCR-U only: every counted
    // request is a data CCR-U, whose template is 544 bytes.
    let mut args = vec!["--server", &server, "--only-updates", "--sessions", "100"];
    args.extend_from_slice(&SHORT_RUN);
    let j = load_json(&args);
    assert_clean(&j);
    assert_eq!(j["only_updates"], true);
    assert_eq!(j["mean_request_bytes"].as_f64(), Some(544.0), "{j}");

    // Subscribers the catalog does not know: every CCR-I is refused with 5030, counted, and
    // its session dropped (never updated).
    let mut args = vec!["--server", &server, "--first-msisdn", "491800000000"];
    args.extend_from_slice(&SHORT_RUN);
    let j = load_json(&args);
    let answers = j["answers"].as_u64().unwrap();
    assert!(answers > 0, "{j}");
    assert_eq!(j["result_codes"], serde_json::json!({ "5030": answers }), "{j}");
    assert!(j["sessions_dropped"].as_u64().unwrap() >= answers, "{j}");
    assert_eq!(j["protocol_errors"], 0, "{j}");
}

/// What the fake server does with the n-th CCR: four ways to answer wrongly.
fn bad_answer(out: &mut BytesMut, req: &MessageRef<'_>, n: u64) {
    let h = req.header;
    let session = req.find(AvpCode::SESSION_ID).unwrap().data;
    let (mut hbh, mut e2e, mut sid) = (h.hop_by_hop, h.end_to_end, session.to_vec());
    let mut with_result = true;
    match n % 4 {
        0 => hbh ^= 0x8000_0000,
        1 => sid = b"another.peer;1;2".to_vec(),
        2 => e2e ^= 0x0000_0100,
        _ => with_result = false,
    }
    let flags = CommandFlags(h.flags.0 & CommandFlags::PROXIABLE);
    let mut e = Encoder::new(out, flags, h.command, h.application, hbh, e2e);
    e.bytes(spec::SESSION_ID, &sid);
    if with_result {
        e.u32(spec::RESULT_CODE, 2001);
    }
    e.str(spec::ORIGIN_HOST, "fake.test").str(spec::ORIGIN_REALM, "test");
    e.finish();
}

/// A one-connection server: CEA 2001, a DWR of its own right after, then wrong answers to
/// every CCR, and DPA to DPR. Counts the CCRs and the DWAs it got.
fn fake_server(listener: TcpListener, ccrs: Arc<AtomicU64>, dwas: Arc<AtomicU64>) {
    let (mut stream, _) = listener.accept().unwrap();
    stream.set_read_timeout(Some(RUN_DEADLINE)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Ok(Some(len)) = frame(&buf) {
            let raw: Vec<u8> = buf.drain(..len).collect();
            let msg = MessageRef::parse(&raw).unwrap();
            let mut out = BytesMut::new();
            let command = msg.header.command;
            if !msg.header.flags.is_request() {
                if command == CommandCode::DEVICE_WATCHDOG {
                    dwas.fetch_add(1, Ordering::SeqCst);
                }
                continue;
            }
            match command {
                CommandCode::CAPABILITIES_EXCHANGE => {
                    let mut e = begin_answer(&mut out, &msg, ResultCode::SUCCESS);
                    e.u32(spec::RESULT_CODE, 2001);
                    e.str(spec::ORIGIN_HOST, "fake.test").str(spec::ORIGIN_REALM, "test");
                    e.ip(spec::HOST_IP_ADDRESS, "127.0.0.1".parse().unwrap());
                    e.u32(spec::VENDOR_ID, 0).str(spec::PRODUCT_NAME, "fake");
                    e.u32(spec::AUTH_APPLICATION_ID, 4);
                    e.finish();
                    // RFC 3539: a watchdog request the client must answer.
                    let flags = CommandFlags(CommandFlags::REQUEST);
                    let app = gyro::diameter::ApplicationId::COMMON;
                    let mut e = Encoder::new(&mut out, flags, CommandCode::DEVICE_WATCHDOG, app, 7, 7);
                    e.str(spec::ORIGIN_HOST, "fake.test").str(spec::ORIGIN_REALM, "test");
                    e.finish();
                }
                CommandCode::CREDIT_CONTROL => {
                    let n = ccrs.fetch_add(1, Ordering::SeqCst);
                    bad_answer(&mut out, &msg, n);
                }
                CommandCode::DISCONNECT_PEER => {
                    let mut e = begin_answer(&mut out, &msg, ResultCode::SUCCESS);
                    e.u32(spec::RESULT_CODE, 2001);
                    e.str(spec::ORIGIN_HOST, "fake.test").str(spec::ORIGIN_REALM, "test");
                    e.finish();
                    stream.write_all(&out).unwrap();
                    return;
                }
                _ => {}
            }
            stream.write_all(&out).unwrap();
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn wrong_answers_are_protocol_errors_and_the_run_still_ends() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (ccrs, dwas) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let server = {
        let (ccrs, dwas) = (Arc::clone(&ccrs), Arc::clone(&dwas));
        std::thread::spawn(move || fake_server(listener, ccrs, dwas))
    };
    let j = load_json(&[
        "--server",
        &addr,
        "--connections",
        "1",
        "--in-flight",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--timeout-ms",
        "200",
    ]);
    server.join().unwrap();
    assert_eq!(j["answers"], 0, "no answer was acceptable: {j}");
    let kinds = &j["protocol_error_kinds"];
    for kind in ["unknown_hop_by_hop", "wrong_session_id", "wrong_end_to_end", "malformed"] {
        assert!(kinds[kind].as_u64().unwrap() > 0, "{kind}: {j}");
    }
    // Each request got one wrong answer; the counted ones all timed out.
    assert!(j["timeouts"].as_u64().unwrap() > 0, "{j}");
    assert!(j["protocol_errors"].as_u64().unwrap() <= ccrs.load(Ordering::SeqCst), "{j}");
    assert_eq!(dwas.load(Ordering::SeqCst), 1, "the server's DWR was answered");
}

#[test]
fn provision_writes_a_catalog_that_gyro_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    let out = gyro(&["load", "provision", "--subscribers", "50", "--out", catalog.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("50 prepaid accounts, e164:491700000000 .. e164:491700000049"));
    let config = config_for(dir.path(), &catalog);
    let out = gyro(&["config", "check", config.to_str().unwrap()]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let c = Catalog::load(&catalog).unwrap();
    assert_eq!(c.accounts.len(), 50);
    assert_eq!(c.plans.len(), 1);
    let services: Vec<&str> = c.plans[0].services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(services, ["data", "voice", "sms"]);
}

#[test]
fn usage_errors_name_the_option() {
    let usage = |args: &[&str]| {
        let out = gyro(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: nothing on stdout");
        text(&out.stderr)
    };
    assert!(usage(&["load", "--rate", "0"]).contains("--rate 0: must be from 1"));
    let skew = usage(&["load", "--skew", "zipf:x"]);
    assert!(skew.contains("--skew") && skew.contains("zipf:S"), "{skew}");
    let mix = usage(&["load", "--scenario", "mix", "--mix", "data=x"]);
    assert!(mix.contains("--mix") && mix.contains("weight \"x\" of data"), "{mix}");
    let provision = usage(&["load", "provision", "--subscribers", "0", "--out", "/nonexistent/c.toml"]);
    assert!(provision.contains("--subscribers 0"), "{provision}");
    // Nothing listens on port 1 of loopback: the connection is refused, named, exit 2.
    let refused = usage(&["load", "--server", "127.0.0.1:1", "--connections", "1"]);
    assert!(refused.contains("connection 0 to 127.0.0.1:1"), "{refused}");
}
