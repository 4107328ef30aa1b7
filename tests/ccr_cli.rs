//! `gyro ccr` and the client peer under it, over loopback: the library entry point against an
//! in-process gyro server with a small echoing credit-control application, the client against
//! hand-driven fake servers (DWR while waiting, refused CER, stale answers, timeouts, DPR), and
//! the binary for exit codes and error texts. Every network step is bounded.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{start, Options, TestServer, STEP};
use gyro::diameter::answer::begin_answer;
use gyro::diameter::encode::spec;
use gyro::diameter::{
    frame, ApplicationId, AvpCode, AvpRef, CommandCode, CommandFlags, Encoder, MessageRef, ResultCode,
};
use gyro::net::client::{Client, ClientError, ClientIdentity, Closure, Step as ClientStep};
use gyro::net::{Application, Handled, Reply, Request};
use gyro::tools::ccr::{avp, run, CcrArgs, CcrError, Exchange, RequestType, RequestedAction, Unit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Subscriber the echo application refuses with 4012 CREDIT_LIMIT_REACHED.
const BROKE: &str = "491700000999";

/// Answers every CCR with a CCA: 2001 (4012 for `BROKE`), and a Granted-Service-Unit for the
/// command-level RSU and for each MSCC's RSU, echoing the requested units (a default amount
/// for an empty RSU). Keeps every request it saw.
#[derive(Default)]
struct EchoCcr {
    seen: Mutex<Vec<Bytes>>,
}

impl Application for EchoCcr {
    fn id(&self) -> ApplicationId {
        ApplicationId::CREDIT_CONTROL
    }

    fn handle(&self, req: &Request<'_>, out: &mut BytesMut, _reply: &Reply<'_>) -> Handled {
        self.seen.lock().unwrap().push(req.frame.clone());
        let msg = &req.msg;
        let broke = msg.find_all(avp::SUBSCRIPTION_ID.code).any(|s| {
            s.members()
                .map_while(Result::ok)
                .any(|m| m.code == avp::SUBSCRIPTION_ID_DATA.code && m.data == BROKE.as_bytes())
        });
        let result = if broke { ResultCode::CREDIT_LIMIT_REACHED } else { ResultCode::SUCCESS };
        let mut e = begin_answer(out, msg, result);
        e.raw(msg.find(AvpCode::SESSION_ID).expect("validated CCR").raw);
        e.u32(spec::RESULT_CODE, result.0);
        e.str(spec::ORIGIN_HOST, "gyro.test").str(spec::ORIGIN_REALM, "test");
        for code in [AvpCode::AUTH_APPLICATION_ID, avp::CC_REQUEST_TYPE.code, avp::CC_REQUEST_NUMBER.code] {
            e.raw(msg.find(code).expect("validated CCR").raw);
        }
        if let Some(rsu) = msg.find(avp::REQUESTED_SERVICE_UNIT.code) {
            write_gsu(&mut e, &rsu);
        }
        for mscc in msg.find_all(avp::MULTIPLE_SERVICES_CREDIT_CONTROL.code) {
            let g = e.begin_group(avp::MULTIPLE_SERVICES_CREDIT_CONTROL);
            let members = || mscc.members().map_while(Result::ok);
            if let Some(rsu) = members().find(|m| m.code == avp::REQUESTED_SERVICE_UNIT.code) {
                write_gsu(&mut e, &rsu);
            }
            if let Some(rg) = members().find(|m| m.code == avp::RATING_GROUP.code) {
                e.raw(rg.raw);
            }
            e.u32(spec::RESULT_CODE, result.0);
            e.end_group(g);
        }
        e.finish();
        Handled::Answered
    }
}

fn write_gsu(e: &mut Encoder<'_>, rsu: &AvpRef<'_>) {
    let g = e.begin_group(avp::GRANTED_SERVICE_UNIT);
    let mut any = false;
    for unit in rsu.members().map_while(Result::ok) {
        e.raw(unit.raw);
        any = true;
    }
    if !any {
        e.u64(avp::CC_TOTAL_OCTETS, 1_048_576);
    }
    e.end_group(g);
}

async fn echo_server() -> (TestServer, Arc<EchoCcr>) {
    let app = Arc::new(EchoCcr::default());
    let server = start(Options { applications: vec![app.clone()], ..Options::default() }).await;
    (server, app)
}

fn args(server: SocketAddr) -> CcrArgs {
    CcrArgs {
        server: server.to_string(),
        subscriber: vec!["e164:491700000001".parse().unwrap()],
        timeout_ms: STEP.as_millis() as u64,
        ..CcrArgs::new()
    }
}

/// Runs `gyro ccr` through the library, bounded; returns the result and what it printed.
async fn ccr(args: &CcrArgs) -> (Result<Vec<Exchange>, CcrError>, String) {
    let mut out = Vec::new();
    let result =
        tokio::time::timeout(STEP * 2, run(args, &mut out)).await.expect("gyro ccr finished in time");
    (result, String::from_utf8(out).unwrap())
}

fn u32_avp(msg: &MessageRef<'_>, code: AvpCode) -> Option<u32> {
    msg.u32(code)
}

#[tokio::test]
async fn single_initial_gets_its_quota_per_rating_group() {
    let (server, app) = echo_server().await;
    let a = CcrArgs { rg: vec![10, 20], requested: Some(0), expect: vec![2001], ..args(server.addr) };
    let (result, out) = ccr(&a).await;
    let exchanges = result.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(exchanges.len(), 1);
    let x = &exchanges[0];
    assert_eq!((x.request_type, x.number), (RequestType::Initial, 0));
    assert!(x.session_id.starts_with("ccr.gyro.test;"), "{}", x.session_id);
    assert_eq!(x.summary.result, Some(ResultCode::SUCCESS));
    let rgs: Vec<_> = x.summary.mscc.iter().map(|m| m.rating_group).collect();
    assert_eq!(rgs, [Some(10), Some(20)]);
    assert_eq!(x.summary.mscc[0].granted.unwrap().total_octets, Some(1_048_576));
    assert!(out.contains(">>> CCR initial #0 session=ccr.gyro.test;"), "{out}");
    assert!(out.contains("<<< Credit-Control-Answer code=272"), "{out}");
    assert!(
        out.contains(
            "=== 2001 DIAMETER_SUCCESS | rg=10 2001 DIAMETER_SUCCESS granted octets=1048576 | rg=20"
        ),
        "{out}"
    );
    // What the server received: one CCR-I, numbered 0, with Multiple-Services-Indicator.
    let seen = app.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    let m = MessageRef::parse(&seen[0]).unwrap();
    assert_eq!(m.header.flags, CommandFlags(CommandFlags::REQUEST | CommandFlags::PROXIABLE));
    assert_eq!(m.avps().next().unwrap().unwrap().code, AvpCode::SESSION_ID);
    assert_eq!(u32_avp(&m, avp::CC_REQUEST_TYPE.code), Some(1));
    assert_eq!(u32_avp(&m, avp::MULTIPLE_SERVICES_INDICATOR.code), Some(1));
    server.shutdown.cancel();
}

#[tokio::test]
async fn script_runs_a_whole_session_on_one_connection() {
    let (server, app) = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session.txt");
    let script = "\
# initial, two updates, terminate
initial rg=10 requested=0
update rg=10 used=1048576 requested=0
update rg=10 rg=20 used=2048 unit=time expect=2001
terminate rg=10 used=524288 reason=final
";
    std::fs::write(&path, script).unwrap();
    let a = CcrArgs { script: Some(path), session_id: Some("ccr.gyro.test;1;7".into()), ..args(server.addr) };
    let (result, out) = ccr(&a).await;
    let exchanges = result.unwrap_or_else(|e| panic!("{e}\n{out}"));
    let numbers: Vec<_> = exchanges.iter().map(|x| (x.request_type, x.number)).collect();
    assert_eq!(
        numbers,
        [
            (RequestType::Initial, 0),
            (RequestType::Update, 1),
            (RequestType::Update, 2),
            (RequestType::Terminate, 3)
        ]
    );
    assert!(exchanges.iter().all(|x| x.session_id == "ccr.gyro.test;1;7"));
    assert!(exchanges.iter().all(|x| x.summary.result == Some(ResultCode::SUCCESS)));
    assert!(out.contains("(") && out.contains("session.txt:5)"), "{out}");
    // One connection: the server saw all four, in order, with the same Session-Id.
    let seen = app.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    for (i, frame) in seen.iter().enumerate() {
        let m = MessageRef::parse(frame).unwrap();
        assert_eq!(m.str(AvpCode::SESSION_ID), Some("ccr.gyro.test;1;7"));
        assert_eq!(u32_avp(&m, avp::CC_REQUEST_NUMBER.code), Some(i as u32));
    }
    // The terminate reports usage with Reporting-Reason FINAL (vendor 10415) inside USU.
    let t = MessageRef::parse(&seen[3]).unwrap();
    assert_eq!(u32_avp(&t, AvpCode(295)), Some(1));
    let mscc = t.find(avp::MULTIPLE_SERVICES_CREDIT_CONTROL.code).unwrap();
    let usu = mscc.members().map_while(Result::ok).find(|m| m.code == avp::USED_SERVICE_UNIT.code).unwrap();
    let reason = usu.members().map_while(Result::ok).find(|m| m.code == avp::REPORTING_REASON.code).unwrap();
    assert_eq!((reason.vendor.0, reason.data), (10415, &2u32.to_be_bytes()[..]));
    server.shutdown.cancel();
}

#[tokio::test]
async fn event_with_requested_action() {
    let (server, app) = echo_server().await;
    let a = CcrArgs {
        request_type: Some(RequestType::Event),
        context: "32274@3gpp.org".into(),
        action: Some(RequestedAction::DirectDebit),
        unit: Unit::Events,
        requested: Some(1),
        timestamp: true,
        ..args(server.addr)
    };
    let (result, out) = ccr(&a).await;
    let exchanges = result.unwrap_or_else(|e| panic!("{e}\n{out}"));
    let g = exchanges[0].summary.granted.expect("command-level GSU");
    assert_eq!(g.service_units, Some(1));
    assert!(out.contains("=== 2001 DIAMETER_SUCCESS granted events=1"), "{out}");
    let seen = app.seen.lock().unwrap().clone();
    let m = MessageRef::parse(&seen[0]).unwrap();
    assert_eq!(u32_avp(&m, avp::CC_REQUEST_TYPE.code), Some(4));
    assert_eq!(u32_avp(&m, avp::REQUESTED_ACTION.code), Some(0));
    assert_eq!(m.str(AvpCode(461)), Some("32274@3gpp.org"));
    assert!(m.find(avp::EVENT_TIMESTAMP.code).is_some());
    assert!(m.find(avp::MULTIPLE_SERVICES_INDICATOR.code).is_none());
    server.shutdown.cancel();
}

#[tokio::test]
async fn expectation_mismatch_is_an_error_with_exit_code_1() {
    let (server, _app) = echo_server().await;
    let broke = vec![format!("e164:{BROKE}").parse().unwrap()];
    let a = CcrArgs { subscriber: broke.clone(), rg: vec![10], expect: vec![2001], ..args(server.addr) };
    let (result, out) = ccr(&a).await;
    let error = result.unwrap_err();
    assert!(matches!(&error, CcrError::Expectation { got: Some(ResultCode(4012)), .. }), "{error:?}");
    assert_eq!(error.exit_code(), 1);
    assert_eq!(error.to_string(), "Result-Code 4012 DIAMETER_CREDIT_LIMIT_REACHED, expected 2001");
    // The answer is still printed before the verdict.
    assert!(out.contains("=== 4012 DIAMETER_CREDIT_LIMIT_REACHED | rg=10 4012"), "{out}");

    // The same answer is fine when it is the one expected.
    let a = CcrArgs { subscriber: broke, expect: vec![2001, 4012], ..args(server.addr) };
    assert!(ccr(&a).await.0.is_ok());

    // In a script the failing line is named, and nothing after it is sent.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.txt");
    std::fs::write(
        &path,
        format!("initial expect=2001\nupdate subscriber=e164:{BROKE} expect=2001\nterminate\n"),
    )
    .unwrap();
    let a = CcrArgs { script: Some(path), ..args(server.addr) };
    let (result, _) = ccr(&a).await;
    let text = result.unwrap_err().to_string();
    assert!(
        text.ends_with("s.txt:2: Result-Code 4012 DIAMETER_CREDIT_LIMIT_REACHED, expected 2001"),
        "{text}"
    );
    server.shutdown.cancel();
}

#[tokio::test]
async fn gyro_without_the_engine_answers_3007() {
    // Today's `gyro serve` advertises application 4 but has no engine behind it.
    let server = start(Options::default()).await;
    let a = CcrArgs { expect: vec![2001], ..args(server.addr) };
    let (result, out) = ccr(&a).await;
    let error = result.unwrap_err();
    assert!(matches!(error, CcrError::Expectation { got: Some(ResultCode(3007)), .. }), "{error:?}");
    assert!(out.contains("=== 3007 DIAMETER_APPLICATION_UNSUPPORTED"), "{out}");
    server.shutdown.cancel();
}

// ---------------------------------------------------------------------------------------------
// The client against fake servers that misbehave on purpose.

fn identity() -> ClientIdentity {
    ClientIdentity { origin_host: "ccr.gyro.test".into(), origin_realm: "gyro.test".into() }
}

/// The server side of one raw connection.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn accept(listener: &TcpListener) -> Self {
        let (stream, _) = tokio::time::timeout(STEP, listener.accept()).await.unwrap().unwrap();
        Self { stream, buf: BytesMut::new() }
    }

    async fn recv(&mut self) -> Bytes {
        loop {
            if let Ok(Some(len)) = frame(&self.buf) {
                return self.buf.split_to(len).freeze();
            }
            let n = tokio::time::timeout(STEP, self.stream.read_buf(&mut self.buf)).await.unwrap().unwrap();
            assert!(n > 0, "client closed early");
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        tokio::time::timeout(STEP, self.stream.write_all(bytes)).await.unwrap().unwrap();
    }

    /// Answers `req` with `result` and Origin-Host/Realm, plus `extra`.
    async fn answer(&mut self, req: &[u8], result: ResultCode, extra: impl FnOnce(&mut Encoder<'_>)) {
        let msg = MessageRef::parse(req).unwrap();
        let mut buf = BytesMut::new();
        let mut e = begin_answer(&mut buf, &msg, result);
        e.u32(spec::RESULT_CODE, result.0)
            .str(spec::ORIGIN_HOST, "fake.test")
            .str(spec::ORIGIN_REALM, "test");
        extra(&mut e);
        e.finish();
        self.send(&buf).await;
    }

    async fn open(listener: &TcpListener) -> Self {
        let mut raw = Self::accept(listener).await;
        let cer = raw.recv().await;
        assert_eq!(MessageRef::parse(&cer).unwrap().header.command, CommandCode::CAPABILITIES_EXCHANGE);
        raw.answer(&cer, ResultCode::SUCCESS, |_| {}).await;
        raw
    }
}

fn base_request(command: CommandCode, hop_by_hop: u32) -> Bytes {
    let mut buf = BytesMut::new();
    let flags = CommandFlags(CommandFlags::REQUEST);
    let mut e = Encoder::new(&mut buf, flags, command, ApplicationId::COMMON, hop_by_hop, hop_by_hop);
    e.str(spec::ORIGIN_HOST, "fake.test").str(spec::ORIGIN_REALM, "test");
    e.finish();
    buf.freeze()
}

fn ccr_bytes(client: &mut Client) -> Bytes {
    let (hop_by_hop, end_to_end) = client.next_ids();
    let mut buf = BytesMut::new();
    let flags = CommandFlags(CommandFlags::REQUEST | CommandFlags::PROXIABLE);
    let mut e =
        Encoder::new(&mut buf, flags, CommandCode::CREDIT_CONTROL, ApplicationId(4), hop_by_hop, end_to_end);
    e.str(spec::SESSION_ID, "s;1;1");
    e.finish();
    buf.freeze()
}

fn hop_by_hop(b: &[u8]) -> u32 {
    MessageRef::parse(b).unwrap().header.hop_by_hop
}

#[tokio::test]
async fn client_answers_dwr_and_skips_stale_answers_while_waiting() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut raw = Raw::open(&listener).await;
        let ccr = raw.recv().await;
        // A watchdog from the server before the answer: the client must answer it.
        raw.send(&base_request(CommandCode::DEVICE_WATCHDOG, 0x7777)).await;
        let dwa = raw.recv().await;
        let m = MessageRef::parse(&dwa).unwrap();
        assert_eq!((m.header.command, m.header.hop_by_hop), (CommandCode::DEVICE_WATCHDOG, 0x7777));
        assert!(!m.header.flags.is_request());
        assert_eq!(m.u32(AvpCode::RESULT_CODE), Some(2001));
        // An answer to some other request, then the real one (marked by its Result-Code).
        let mut stale = ccr.to_vec();
        stale[12..16].copy_from_slice(&(hop_by_hop(&ccr) ^ 1).to_be_bytes());
        raw.answer(&stale, ResultCode::UNABLE_TO_COMPLY, |_| {}).await;
        raw.answer(&ccr, ResultCode::SUCCESS, |_| {}).await;
        // DPR from the client on close: answer DPA.
        let dpr = raw.recv().await;
        assert_eq!(MessageRef::parse(&dpr).unwrap().header.command, CommandCode::DISCONNECT_PEER);
        raw.answer(&dpr, ResultCode::SUCCESS, |_| {}).await;
    });
    let mut client = Client::connect(addr, identity(), STEP).await.unwrap();
    assert_eq!(client.server().origin_host, "fake.test");
    let req = ccr_bytes(&mut client);
    let answer = client.request(&req).await.unwrap();
    assert_eq!(hop_by_hop(&answer), hop_by_hop(&req));
    assert_eq!(MessageRef::parse(&answer).unwrap().u32(AvpCode::RESULT_CODE), Some(2001));
    tokio::time::timeout(STEP, client.close()).await.unwrap().unwrap();
    tokio::time::timeout(STEP, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn refused_cer_names_the_result_code() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut raw = Raw::accept(&listener).await;
        let cer = raw.recv().await;
        raw.answer(&cer, ResultCode::NO_COMMON_APPLICATION, |_| {}).await;
    });
    let error = Client::connect(addr, identity(), STEP).await.unwrap_err();
    assert!(matches!(error, ClientError::CerRefused { result: ResultCode(5010) }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "capabilities exchange refused: Result-Code 5010 DIAMETER_NO_COMMON_APPLICATION"
    );
    server.await.unwrap();
}

#[tokio::test]
async fn unanswered_request_times_out_and_dpr_from_the_server_closes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut raw = Raw::open(&listener).await;
        let _ignored = raw.recv().await;
        let _waited_for = raw.recv().await;
        raw.send(&base_request(CommandCode::DISCONNECT_PEER, 0x99)).await;
        let dpa = raw.recv().await;
        let m = MessageRef::parse(&dpa).unwrap();
        assert_eq!((m.header.command, m.header.hop_by_hop), (CommandCode::DISCONNECT_PEER, 0x99));
    });
    let mut client = Client::connect(addr, identity(), Duration::from_millis(300)).await.unwrap();
    let req = ccr_bytes(&mut client);
    let error = client.request(&req).await.unwrap_err();
    assert!(matches!(error, ClientError::Timeout { step: ClientStep::Answer, timeout_ms: 300 }), "{error:?}");
    let req = ccr_bytes(&mut client);
    let error = client.request(&req).await.unwrap_err();
    assert!(matches!(error, ClientError::Closed(Closure::PeerDisconnected)), "{error:?}");
    tokio::time::timeout(STEP, server).await.unwrap().unwrap();
    // Closing after the server's DPR sends nothing more and does not fail.
    tokio::time::timeout(STEP, client.close()).await.unwrap().unwrap();
}

#[tokio::test]
async fn connection_refused_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let error = Client::connect(addr, identity(), STEP).await.unwrap_err();
    assert!(matches!(error, ClientError::Connect { .. }), "{error:?}");
}

// ---------------------------------------------------------------------------------------------
// The binary: exit codes and error texts.

fn gyro(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gyro")).args(args).output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (out.status.code(), text(out.stdout), text(out.stderr))
}

#[test]
fn usage_errors_exit_2_and_name_the_option() {
    let (code, _, err) = gyro(&["ccr", "--type", "update"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--number is required with --type update"), "{err}");

    let (code, _, err) = gyro(&["ccr", "--rgg", "10"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--rgg"), "{err}");

    let (code, _, err) = gyro(&["ccr", "--subscriber", "msisdn:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--subscriber") && err.contains("TYPE:DATA"), "{err}");

    // The script is checked before anything is sent, so no server is needed for this.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.txt");
    std::fs::write(&path, "initial rg=10\nupdate rg=10 used=1\nupdate rgg=10\n").unwrap();
    let (code, _, err) = gyro(&["ccr", "--script", path.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("script.txt:3: unknown key \"rgg\""), "{err}");
}

#[test]
fn unreachable_server_exits_2() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let (code, _, err) = gyro(&["ccr", "--server", &addr, "--timeout-ms", "2000"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("cannot connect"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_talks_to_a_server_and_exits_by_expectation() {
    let (server, _app) = echo_server().await;
    let addr = server.addr.to_string();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            gyro(&args)
        })
    };
    let base = ["ccr", "--server", &addr, "--rg", "10", "--requested", "0", "--subscriber"];
    let mut ok: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    ok.extend(["e164:491700000001".into(), "--expect".into(), "2001".into()]);
    let (code, out, err) = tokio::time::timeout(STEP * 2, run(ok)).await.unwrap().unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("=== 2001 DIAMETER_SUCCESS | rg=10"), "{out}");

    let mut refused: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    refused.extend([format!("e164:{BROKE}"), "--expect".into(), "2001".into()]);
    let (code, out, err) = tokio::time::timeout(STEP * 2, run(refused)).await.unwrap().unwrap();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("Result-Code 4012 DIAMETER_CREDIT_LIMIT_REACHED, expected 2001"), "{err}");
    server.shutdown.cancel();
}
