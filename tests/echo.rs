//! `gyro echo`, the benchmark responder, over loopback: every CCR form (I/U/T/E with 0, 1 and
//! 3 MSCCs, the single-service form, an MSCC without a Rating-Group, Proxy-Info) gets a CCA
//! that echoes the request's ids, Session-Id, type and number, carries the canned grant, and
//! validates against the embedded dictionary; 16 requests in flight come back matched by
//! Hop-by-Hop; `gyro ccr` decodes it; the binary starts, says what it is and stops on SIGTERM.
//! Every network step is bounded (`common::STEP`).

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use common::{start, Client, Options, TestServer, STEP};
use gyro::diameter::encode::spec;
use gyro::diameter::{
    validate_answer, ApplicationId, AvpCode, CommandCode, CommandFlags, Dictionary, Encoder, MessageRef,
};
use gyro::net::echo::{Echo, GRANTED_OCTETS, VALIDITY_TIME_S};
use gyro::tools::ccr::{avp, run, AnswerSummary, CcrArgs, CcrRequest, RequestType, Timestamp, Unit};

const CC: ApplicationId = ApplicationId::CREDIT_CONTROL;

async fn echo_server() -> TestServer {
    let echo = Arc::new(Echo::new(&common::local()));
    start(Options { applications: vec![echo], ..Options::default() }).await
}

fn request(request_type: RequestType, rating_groups: &[u32], single_service: bool) -> CcrRequest {
    let usage = single_service || !rating_groups.is_empty();
    CcrRequest {
        request_type,
        subscribers: vec!["e164:491700000001".parse().unwrap()],
        service_context: "32251@3gpp.org".into(),
        rating_groups: rating_groups.to_vec(),
        service_id: None,
        requested: (usage && request_type != RequestType::Terminate).then_some(0),
        used: (usage && request_type != RequestType::Initial).then_some(1_048_576),
        unit: Unit::Octets,
        reporting_reason: None,
        termination_cause: 1,
        action: None,
        timestamp: Timestamp::Omit,
    }
}

/// Checks everything the canned answer promises about `answer` to `request`.
fn check_answer(dict: &Dictionary, request: &Bytes, answer: &Bytes, rating_group: Option<u32>) {
    let q = MessageRef::parse(request).unwrap();
    let a = MessageRef::parse(answer).expect("a well-framed answer");
    if let Err(e) = validate_answer(dict, &a, &[CC]) {
        panic!("the CCA is invalid: {}", e.message(dict));
    }
    let (qh, ah) = (q.header, a.header);
    assert_eq!((ah.command, ah.application), (CommandCode::CREDIT_CONTROL, CC));
    assert_eq!((ah.hop_by_hop, ah.end_to_end), (qh.hop_by_hop, qh.end_to_end));
    // RFC 6733 §6.2: R cleared, P as in the request, no E on 2001.
    assert_eq!(ah.flags.0, qh.flags.0 & CommandFlags::PROXIABLE);
    // RFC 6733 §8.8: Session-Id first, byte for byte.
    let first = a.avps().next().unwrap().unwrap();
    assert_eq!(first.code, AvpCode::SESSION_ID);
    assert_eq!(first.raw, q.find(AvpCode::SESSION_ID).unwrap().raw);
    assert_eq!(a.u32(AvpCode::RESULT_CODE), Some(2001));
    assert_eq!(a.str(AvpCode::ORIGIN_HOST), Some("gyro.test"));
    assert_eq!(a.str(AvpCode::ORIGIN_REALM), Some("test"));
    assert_eq!(a.u32(AvpCode::AUTH_APPLICATION_ID), Some(4));
    for code in [avp::CC_REQUEST_TYPE.code, avp::CC_REQUEST_NUMBER.code] {
        assert_eq!(a.u32(code), q.u32(code), "AVP {code:?}");
    }
    assert_eq!(a.find_all(AvpCode::PROXY_INFO).count(), q.find_all(AvpCode::PROXY_INFO).count());
    for (x, y) in a.find_all(AvpCode::PROXY_INFO).zip(q.find_all(AvpCode::PROXY_INFO)) {
        assert_eq!(x.raw, y.raw);
    }
    let msccs: Vec<_> = a.find_all(avp::MULTIPLE_SERVICES_CREDIT_CONTROL.code).collect();
    assert_eq!(msccs.len(), 1, "exactly one MSCC");
    let members: Vec<_> = msccs[0].members().map_while(Result::ok).collect();
    let member = |code: AvpCode| members.iter().find(|m| m.code == code);
    let u32_of = |code: AvpCode| member(code).map(|m| u32::from_be_bytes(m.data.try_into().unwrap()));
    assert_eq!(u32_of(avp::RATING_GROUP.code), rating_group);
    assert_eq!(u32_of(AvpCode::RESULT_CODE), Some(2001));
    assert_eq!(u32_of(AvpCode(448)), Some(VALIDITY_TIME_S));
    // The tools' decoder reads the same grant.
    let summary = AnswerSummary::parse(&a);
    assert_eq!(summary.result.map(|r| r.0), Some(2001));
    assert_eq!(summary.mscc.len(), 1);
    assert_eq!(summary.mscc[0].rating_group, rating_group);
    assert_eq!(summary.mscc[0].granted.unwrap().total_octets, Some(GRANTED_OCTETS));
    assert_eq!(summary.granted, None, "the grant is in the MSCC, not at command level");
}

#[tokio::test]
async fn every_ccr_form_gets_the_canned_answer_with_its_own_fields() {
    let s = echo_server().await;
    let dict = Dictionary::embedded().unwrap();
    let mut c = Client::open(s.addr).await;
    let forms: [(&[u32], bool, Option<u32>); 4] = [
        (&[], false, None),               // no MSCC, no units
        (&[], true, None),                // the single-service form: RSU/USU at command level
        (&[10], false, Some(10)),         // one MSCC
        (&[30, 10, 20], false, Some(30)), // three: the first one's Rating-Group
    ];
    for (i, (rgs, single, expected_rg)) in forms.iter().enumerate() {
        let session = format!("pgw.test;1;{i}");
        let types = [RequestType::Initial, RequestType::Update, RequestType::Update, RequestType::Terminate];
        for (number, t) in types.into_iter().enumerate() {
            let req = c.ccr(&session, number as u32, &request(t, rgs, *single));
            let answer = c.call(&req).await;
            check_answer(&dict, &req, &answer, *expected_rg);
        }
        let event = request(RequestType::Event, rgs, *single);
        let req = c.ccr(&format!("pgw.test;2;{i}"), 0, &event);
        check_answer(&dict, &req, &c.call(&req).await, *expected_rg);
    }
    s.shutdown.cancel();
}

#[tokio::test]
async fn an_mscc_without_a_rating_group_and_proxy_info_are_handled() {
    let s = echo_server().await;
    let dict = Dictionary::embedded().unwrap();
    let mut c = Client::open(s.addr).await;
    // The first MSCC names its service by Service-Identifier only; the second has a
    // Rating-Group, which must not be taken for the first's.
    let req = c.request(CommandCode::CREDIT_CONTROL, CC, |e: &mut Encoder<'_>| {
        e.str(spec::DESTINATION_REALM, "test");
        e.u32(spec::AUTH_APPLICATION_ID, 4);
        e.str(avp::SERVICE_CONTEXT_ID, "32251@3gpp.org");
        e.u32(avp::CC_REQUEST_TYPE, 2);
        e.u32(avp::CC_REQUEST_NUMBER, 7);
        let g = e.begin_group(avp::MULTIPLE_SERVICES_CREDIT_CONTROL);
        e.u32(avp::SERVICE_IDENTIFIER, 1);
        e.end_group(g);
        let g = e.begin_group(avp::MULTIPLE_SERVICES_CREDIT_CONTROL);
        e.u32(avp::RATING_GROUP, 99);
        e.end_group(g);
        for state in [&b"first"[..], b"second"] {
            let p = e.begin_group(spec::PROXY_INFO);
            e.str(gyro::diameter::AvpSpec::mandatory(280), "relay.test");
            e.bytes(gyro::diameter::AvpSpec::mandatory(33), state);
            e.end_group(p);
        }
    });
    let req = with_session(&req, "pgw.test;3;1");
    let answer = c.call(&req).await;
    check_answer(&dict, &req, &answer, None);
    assert_eq!(MessageRef::parse(&answer).unwrap().find_all(AvpCode::PROXY_INFO).count(), 2);
    s.shutdown.cancel();
}

/// Rebuilds a request with a Session-Id as its first AVP (RFC 6733 §8.8).
fn with_session(b: &Bytes, session: &str) -> Bytes {
    let m = MessageRef::parse(b).unwrap();
    let h = m.header;
    let mut out = BytesMut::new();
    let mut e = Encoder::new(&mut out, h.flags, h.command, h.application, h.hop_by_hop, h.end_to_end);
    e.str(spec::SESSION_ID, session);
    e.raw(m.body);
    e.finish();
    out.freeze()
}

#[tokio::test]
async fn sixteen_in_flight_come_back_matched_by_hop_by_hop() {
    const IN_FLIGHT: usize = 16;
    const TOTAL: usize = 512;
    let s = echo_server().await;
    let dict = Dictionary::embedded().unwrap();
    let mut c = Client::open(s.addr).await;
    let mut pending: HashMap<u32, (Bytes, Option<u32>)> = HashMap::new();
    let (mut sent, mut answered) = (0, 0);
    while answered < TOTAL {
        // Fill the window in one write, so the server reads several requests per read.
        let mut burst = BytesMut::new();
        while pending.len() < IN_FLIGHT && sent < TOTAL {
            let rgs: &[u32] = if sent % 3 == 0 { &[] } else { &[7, 8] };
            let session = format!("pgw.test;9;{}", sent % 40);
            let req = c.ccr(&session, sent as u32, &request(RequestType::Update, rgs, false));
            let hbh = MessageRef::parse(&req).unwrap().header.hop_by_hop;
            burst.extend_from_slice(&req);
            pending.insert(hbh, (req, rgs.first().copied()));
            sent += 1;
        }
        if !burst.is_empty() {
            c.send_raw(&burst).await;
        }
        let answer = c.recv().await.expect("an answer");
        let hbh = MessageRef::parse(&answer).unwrap().header.hop_by_hop;
        let (req, rg) = pending.remove(&hbh).expect("the answer's Hop-by-Hop is a request in flight");
        check_answer(&dict, &req, &answer, rg);
        answered += 1;
    }
    assert!(pending.is_empty());
    s.shutdown.cancel();
}

#[test]
fn other_commands_and_missing_fields_get_error_answers() {
    let echo = Echo::new(&common::local());
    // A Re-Auth-Request (application 4's server-to-client command) is not a CCR: 3001.
    let mut buf = BytesMut::new();
    let mut e = Encoder::new(&mut buf, CommandFlags(CommandFlags::REQUEST), CommandCode::RE_AUTH, CC, 1, 2);
    e.str(spec::SESSION_ID, "pgw.test;1;1");
    e.finish();
    let mut out = BytesMut::new();
    echo.answer(&MessageRef::parse(&buf).unwrap(), &mut out);
    let a = MessageRef::parse(&out).unwrap();
    assert_eq!(a.u32(AvpCode::RESULT_CODE), Some(3001));
    assert!(a.header.flags.is_error());

    // A CCR without CC-Request-Number (only a changed dictionary lets one through): 5005 with
    // an example of the AVP in Failed-AVP.
    let mut buf = BytesMut::new();
    let mut e =
        Encoder::new(&mut buf, CommandFlags(CommandFlags::REQUEST), CommandCode::CREDIT_CONTROL, CC, 3, 4);
    e.str(spec::SESSION_ID, "pgw.test;1;2");
    e.u32(avp::CC_REQUEST_TYPE, 1);
    e.finish();
    let mut out = BytesMut::new();
    echo.answer(&MessageRef::parse(&buf).unwrap(), &mut out);
    let a = MessageRef::parse(&out).unwrap();
    assert_eq!(a.u32(AvpCode::RESULT_CODE), Some(5005));
    let failed = a.find(AvpCode::FAILED_AVP).unwrap().members().next().unwrap().unwrap();
    assert_eq!((failed.code, failed.data), (avp::CC_REQUEST_NUMBER.code, &[0u8; 4][..]));
}

#[tokio::test]
async fn gyro_ccr_reads_the_canned_answer() {
    let s = echo_server().await;
    let args = CcrArgs {
        server: s.addr.to_string(),
        subscriber: vec!["e164:491700000001".parse().unwrap()],
        rg: vec![10, 20],
        requested: Some(0),
        expect: vec![2001],
        timeout_ms: STEP.as_millis() as u64,
        ..CcrArgs::new()
    };
    let mut out = Vec::new();
    let result = tokio::time::timeout(STEP * 2, run(&args, &mut out)).await.expect("gyro ccr in time");
    let out = String::from_utf8(out).unwrap();
    let exchanges = result.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(exchanges.len(), 1);
    assert!(
        out.contains("=== 2001 DIAMETER_SUCCESS | rg=10 2001 DIAMETER_SUCCESS granted octets=10485760"),
        "{out}"
    );
    s.shutdown.cancel();
}

/// The binary: `gyro echo --listen 127.0.0.1:0` logs where it listens and that it is not an
/// OCS, answers a CCR, and exits 0 on SIGTERM.
#[tokio::test]
async fn the_binary_serves_and_stops() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("echo.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gyro"))
        .args(["echo", "--listen", "127.0.0.1:0", "--workers", "1"])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("gyro echo starts");
    let started = std::time::Instant::now();
    let addr = loop {
        let text = read_log(&log);
        if let Some(addr) = listening_addr(&text) {
            assert!(text.contains("NOT AN OCS"), "{text}");
            break addr;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("gyro echo exited ({status}) before listening:\n{text}");
        }
        if started.elapsed() > STEP {
            let _ = child.kill();
            panic!("gyro echo did not listen within {STEP:?}:\n{text}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let mut c = Client::open(addr).await;
    let req = c.ccr("pgw.test;4;1", 0, &request(RequestType::Initial, &[10], false));
    let answer = c.call(&req).await;
    let a = MessageRef::parse(&answer).unwrap();
    assert_eq!(a.u32(AvpCode::RESULT_CODE), Some(2001));
    assert_eq!(a.str(AvpCode::ORIGIN_HOST), Some("gyro.localdomain"), "identity from the configuration");
    let term = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    let deadline = std::time::Instant::now() + STEP * 3;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("gyro echo did not stop after SIGTERM");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(status.success(), "{status}");
    let text = read_log(&log);
    assert!(text.contains("gyro echo stopped"), "{text}");
}

/// The log without ANSI colour sequences (tracing may colour even with NO_COLOR).
fn read_log(path: &std::path::Path) -> String {
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

/// `addr=` of the "gyro listening for Diameter" line.
fn listening_addr(log: &str) -> Option<std::net::SocketAddr> {
    let line = log.lines().find(|l| l.contains("gyro listening for Diameter"))?;
    let at = line.find("addr=")? + "addr=".len();
    line[at..].split_whitespace().next()?.parse().ok()
}
