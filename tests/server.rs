//! Server tests over real loopback sockets: peer lifecycle, every error answer, isolation of a
//! misbehaving connection, the in-flight limit, duplicate replay and graceful shutdown.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use common::*;
use gyro::diameter::answer::begin_answer;
use gyro::diameter::encode::spec;
use gyro::diameter::{ApplicationId, AvpCode, AvpSpec, CommandCode, CommandFlags, Dictionary, ResultCode};
use gyro::net::{Application, Handled, LateReply, Reply, Request};

const CCR: CommandCode = CommandCode::CREDIT_CONTROL;
const CC: ApplicationId = ApplicationId::CREDIT_CONTROL;

/// Answers every request with 2001 and counts how often it ran.
#[derive(Default)]
struct Counting {
    calls: AtomicUsize,
}

impl Application for Counting {
    fn id(&self) -> ApplicationId {
        CC
    }
    fn handle(&self, req: &Request<'_>, out: &mut BytesMut, _reply: &Reply<'_>) -> Handled {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) as u32;
        let mut e = begin_answer(out, &req.msg, ResultCode::SUCCESS);
        if let Some(s) = req.msg.find(AvpCode::SESSION_ID) {
            e.raw(s.raw);
        }
        e.u32(spec::RESULT_CODE, 2001).str(spec::ORIGIN_HOST, "gyro.test").str(spec::ORIGIN_REALM, "test");
        e.u32(AvpSpec::mandatory(415), n);
        e.finish();
        Handled::Answered
    }
}

/// Keeps every request in flight forever.
#[derive(Default)]
struct Deferring {
    held: Mutex<Vec<LateReply>>,
}

impl Application for Deferring {
    fn id(&self) -> ApplicationId {
        CC
    }
    fn handle(&self, _req: &Request<'_>, _out: &mut BytesMut, reply: &Reply<'_>) -> Handled {
        self.held.lock().unwrap().push(reply.later());
        Handled::Deferred
    }
}

fn ccr(c: &mut Client, session: &str) -> bytes::Bytes {
    let req = c.request(CCR, CC, |e| {
        e.str(spec::DESTINATION_REALM, "test");
        e.u32(spec::AUTH_APPLICATION_ID, 4);
        e.str(AvpSpec::mandatory(461), "32251@3gpp.org");
        e.u32(AvpSpec::mandatory(416), 2);
        e.u32(AvpSpec::mandatory(415), 1);
    });
    with_session(req, session)
}

/// Rebuilds a message with a Session-Id as its first AVP.
fn with_session(b: bytes::Bytes, session: &str) -> bytes::Bytes {
    let m = msg(&b);
    let h = m.header;
    let mut out = BytesMut::new();
    let mut e =
        gyro::diameter::Encoder::new(&mut out, h.flags, h.command, h.application, h.hop_by_hop, h.end_to_end);
    e.str(spec::SESSION_ID, session);
    e.raw(m.body);
    e.finish();
    out.freeze()
}

#[tokio::test]
async fn cer_dwr_dpr() {
    let s = start(Options::default()).await;
    let mut c = Client::connect(s.addr).await;
    let cer = c.cer(&[4]);
    let cea = c.call(&cer).await;
    let m = msg(&cea);
    assert!(!m.header.flags.is_request());
    assert_eq!(m.header.command, CommandCode::CAPABILITIES_EXCHANGE);
    assert_eq!(m.header.hop_by_hop, msg(&cer).header.hop_by_hop);
    assert_eq!(m.header.end_to_end, msg(&cer).header.end_to_end);
    assert_eq!(m.u32(AvpCode::RESULT_CODE), Some(2001));
    assert_eq!(m.str(AvpCode::ORIGIN_HOST), Some("gyro.test"));
    assert_eq!(m.str(AvpCode::ORIGIN_REALM), Some("test"));
    assert_eq!(m.str(AvpCode::PRODUCT_NAME), Some("gyro"));
    assert_eq!(m.u32(AvpCode::AUTH_APPLICATION_ID), Some(4));
    assert_eq!(m.u32(AvpCode::SUPPORTED_VENDOR_ID), Some(10415));
    assert!(m.find(AvpCode::HOST_IP_ADDRESS).is_some());
    assert!(m.find(AvpCode::VENDOR_SPECIFIC_APPLICATION_ID).is_some());

    let dwr = c.dwr();
    let dwa = c.call(&dwr).await;
    assert_eq!(msg(&dwa).header.command, CommandCode::DEVICE_WATCHDOG);
    assert_eq!(result_code(&dwa), Some(2001));

    let dpr = c.request(CommandCode::DISCONNECT_PEER, ApplicationId::COMMON, |e| {
        e.u32(spec::DISCONNECT_CAUSE, 0);
    });
    let dpa = c.call(&dpr).await;
    assert_eq!(msg(&dpa).header.command, CommandCode::DISCONNECT_PEER);
    assert_eq!(result_code(&dpa), Some(2001));
    c.expect_closed().await;
}

#[tokio::test]
async fn request_before_cer_is_refused() {
    let s = start(Options::default()).await;
    let mut c = Client::connect(s.addr).await;
    let dwr = c.dwr();
    let a = c.call(&dwr).await;
    assert_eq!(result_code(&a), Some(3010));
    assert!(msg(&a).header.flags.is_error());
    c.expect_closed().await;
}

#[tokio::test]
async fn no_common_application_gets_5010() {
    let s = start(Options::default()).await;
    let mut c = Client::connect(s.addr).await;
    let cer = c.cer(&[16_777_238]);
    let a = c.call(&cer).await;
    assert_eq!(result_code(&a), Some(5010));
    c.expect_closed().await;
}

#[tokio::test]
async fn allowlist_refuses_unknown_peer() {
    let s = start(Options { allowed_peers: Some(vec!["pgw.allowed".into()]), ..Options::default() }).await;
    let mut c = Client::connect(s.addr).await;
    let cer = c.cer(&[4]);
    let a = c.call(&cer).await;
    assert_eq!(result_code(&a), Some(3010));
    assert!(msg(&a).header.flags.is_error());
    c.expect_closed().await;

    let mut ok = Client::connect(s.addr).await;
    ok.origin_host = "PGW.allowed".into();
    let cer = ok.cer(&[4]);
    assert_eq!(result_code(&ok.call(&cer).await), Some(2001));
}

#[tokio::test]
async fn unknown_command_gets_3001_and_connection_stays_up() {
    let s = start(Options::default()).await;
    let mut c = Client::open(s.addr).await;
    let req = c.request(CommandCode(999), ApplicationId::COMMON, |_| {});
    let a = c.call(&req).await;
    assert_eq!(result_code(&a), Some(3001));
    assert!(msg(&a).header.flags.is_error());
    assert_eq!(msg(&a).header.command, CommandCode(999));
    let dwr = c.dwr();
    assert_eq!(result_code(&c.call(&dwr).await), Some(2001));
}

#[tokio::test]
async fn ccr_without_engine_gets_3007() {
    let s = start(Options::default()).await;
    let mut c = Client::open(s.addr).await;
    let req = ccr(&mut c, "s1");
    let a = c.call(&req).await;
    assert_eq!(result_code(&a), Some(3007));
    assert!(msg(&a).header.flags.is_error());
    assert_eq!(msg(&a).str(AvpCode::SESSION_ID), Some("s1"), "Session-Id echoed");
    // An application the peer never negotiated is 3007 too.
    let req = c.request(CCR, ApplicationId(16_777_238), |_| {});
    assert_eq!(result_code(&c.call(&req).await), Some(3007));
}

#[tokio::test]
async fn e_bit_on_request_gets_3008() {
    let s = start(Options::default()).await;
    let mut c = Client::open(s.addr).await;
    let mut req = c.dwr().to_vec();
    req[4] |= CommandFlags::ERROR;
    let a = c.call(&req).await;
    assert_eq!(result_code(&a), Some(3008));
    assert!(msg(&a).header.flags.is_error());
}

#[tokio::test]
async fn avp_errors_get_the_right_result_code_and_failed_avp() {
    let s = start(Options::default()).await;
    let mut c = Client::open(s.addr).await;

    // 5001: unknown AVP with the M bit; Failed-AVP holds it.
    let req = c.request(CommandCode::DEVICE_WATCHDOG, ApplicationId::COMMON, |e| {
        e.u32(AvpSpec::mandatory(99_999), 7);
    });
    let a = c.call(&req).await;
    assert_eq!(result_code(&a), Some(5001));
    let (code, raw) = failed_avp(&a).unwrap();
    assert_eq!(code, 99_999);
    assert_eq!(&raw[8..12], &7u32.to_be_bytes());

    // Unknown AVP without the M bit: ignored.
    let req = c.request(CommandCode::DEVICE_WATCHDOG, ApplicationId::COMMON, |e| {
        e.u32(AvpSpec::optional(99_999), 7);
    });
    assert_eq!(result_code(&c.call(&req).await), Some(2001));

    // 5009: Origin-Host twice.
    let req = c.request(CommandCode::DEVICE_WATCHDOG, ApplicationId::COMMON, |e| {
        e.str(spec::ORIGIN_HOST, "again.test");
    });
    let a = c.call(&req).await;
    assert_eq!(result_code(&a), Some(5009));
    assert_eq!(failed_avp(&a).unwrap().0, 264);

    // 5005: DWR without Origin-Realm; Failed-AVP holds a zero-filled example.
    let (hbh, e2e) = c.ids();
    let mut b = BytesMut::new();
    let mut e = gyro::diameter::Encoder::new(
        &mut b,
        CommandFlags(CommandFlags::REQUEST),
        CommandCode::DEVICE_WATCHDOG,
        ApplicationId::COMMON,
        hbh,
        e2e,
    );
    e.str(spec::ORIGIN_HOST, "pgw.test");
    e.finish();
    let a = c.call(&b).await;
    assert_eq!(result_code(&a), Some(5005));
    let (code, raw) = failed_avp(&a).unwrap();
    assert_eq!(code, 296);
    assert_eq!(raw.len(), 9, "header + 1 zero byte, the minimum DiameterIdentity");
    assert!(msg(&a).str(AvpCode::ERROR_MESSAGE).unwrap().contains("Origin-Realm"));

    // 5004: an Origin-Host that is not a DiameterIdentity.
    let req = c.request(CommandCode::DEVICE_WATCHDOG, ApplicationId::COMMON, |e| {
        e.u32(spec::ORIGIN_STATE_ID, 1);
    });
    let mut bad = req.to_vec();
    let pos = bad.windows(8).position(|w| w == b"pgw.test").unwrap();
    bad[pos + 3] = b' ';
    let a = c.call(&bad).await;
    assert_eq!(result_code(&a), Some(5004));

    // 5014: an Unsigned32 with 3 bytes of data.
    let req = c.request(CommandCode::DEVICE_WATCHDOG, ApplicationId::COMMON, |e| {
        e.bytes(spec::ORIGIN_STATE_ID, &[0, 0, 1]);
    });
    let a = c.call(&req).await;
    assert_eq!(result_code(&a), Some(5014));
    assert_eq!(failed_avp(&a).unwrap().0, 278);

    // 5014: an AVP whose length runs past the message; the stream stays in sync.
    let mut bad = c.dwr().to_vec();
    let n = bad.len();
    bad.extend_from_slice(&[0, 0, 1, 22, 0x40, 0, 0, 200]);
    bad[1..4].copy_from_slice(&((n + 8) as u32).to_be_bytes()[1..]);
    let a = c.call(&bad).await;
    assert_eq!(result_code(&a), Some(5014));
    assert_eq!(failed_avp(&a).unwrap().0, 278, "code of the overrunning AVP");

    // 3009: Error-Message (M bit must not be set, RFC 6733 §7.3) with the M bit.
    let req = c.request(CommandCode::DEVICE_WATCHDOG, ApplicationId::COMMON, |e| {
        e.str(AvpSpec::mandatory(281), "oops");
    });
    assert_eq!(result_code(&c.call(&req).await), Some(3009));

    // After all of that the connection still works.
    let dwr = c.dwr();
    assert_eq!(result_code(&c.call(&dwr).await), Some(2001));
}

#[tokio::test]
async fn avp_not_allowed_gets_5008() {
    let s = start(Options { dictionary: Some(forbidding_dictionary()), ..Options::default() }).await;
    let mut c = Client::open(s.addr).await;
    let req = c.request(CommandCode(8_388_000), ApplicationId::COMMON, |e| {
        e.u32(spec::RESULT_CODE, 2001);
    });
    let a = c.call(&req).await;
    assert_eq!(result_code(&a), Some(5008));
    assert_eq!(failed_avp(&a).unwrap().0, 268);
}

/// The embedded dictionaries plus command 8388000 (application 0), whose requests must not
/// carry a Result-Code.
fn forbidding_dictionary() -> Dictionary {
    let extra = r#"<dictionary>
      <application id="0" name="Test">
        <command code="8388000" name="Test-Forbidden" short="TF">
          <request><rule avp="Origin-Host" min="1" max="1"/><rule avp="Result-Code" max="0"/></request>
          <answer><rule avp="Result-Code" min="1" max="1"/></answer>
        </command>
      </application>
    </dictionary>"#;
    let sources = gyro::diameter::dictionary::EMBEDDED
        .iter()
        .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
        .chain([("test.xml".to_owned(), extra.to_owned())]);
    Dictionary::from_sources(sources).unwrap()
}

#[tokio::test]
async fn new_peer_settings_apply_to_open_connections_and_later_cers() {
    let s = start(Options::default()).await;
    let mut old = Client::open(s.addr).await;
    let forbidden = |c: &mut Client| {
        c.request(CommandCode(8_388_000), ApplicationId::COMMON, |e| {
            e.u32(spec::RESULT_CODE, 2001);
        })
    };
    // The embedded dictionary does not know command 8388000.
    let req = forbidden(&mut old);
    assert_eq!(result_code(&old.call(&req).await), Some(3001));

    // A reload: a dictionary that knows it, and an allowlist without the open peer.
    let allowed = Some(vec!["pgw.new".to_owned()]);
    s.shared.set_peer_config(peer_config(forbidding_dictionary(), allowed));
    assert!(s.shared.peer_config().allowed_peers.is_some());

    // The open connection validates with the new dictionary from its next read on...
    let req = forbidden(&mut old);
    let a = old.call(&req).await;
    assert_eq!(result_code(&a), Some(5008), "validated with the new dictionary");
    assert_eq!(failed_avp(&a).unwrap().0, 268);
    // ... and stays open although its host is not in the new allowlist (checked at CER only).
    let dwr = old.dwr();
    assert_eq!(result_code(&old.call(&dwr).await), Some(2001));

    // A CER after the reload is checked against the new allowlist.
    let mut refused = Client::connect(s.addr).await;
    let cer = refused.cer(&[4]);
    assert_eq!(result_code(&refused.call(&cer).await), Some(3010));
    refused.expect_closed().await;
    let mut new = Client::connect(s.addr).await;
    new.origin_host = "pgw.new".into();
    new.exchange_capabilities().await;
    let req = forbidden(&mut new);
    assert_eq!(result_code(&new.call(&req).await), Some(5008));

    // The old connection still works after all that.
    let dwr = old.dwr();
    assert_eq!(result_code(&old.call(&dwr).await), Some(2001));
}

#[tokio::test]
async fn connections_per_peer_are_limited_at_cer() {
    let s = start(Options { connections_per_peer: 2, ..Options::default() }).await;
    let mut first = Client::open(s.addr).await;
    let mut second = Client::open(s.addr).await;

    // A third from the same Origin-Host (compared case-insensitively): CEA 5012, then close.
    let mut third = Client::connect(s.addr).await;
    third.origin_host = "PGW.Test".into();
    let cer = third.cer(&[4]);
    let cea = third.call(&cer).await;
    assert_eq!(result_code(&cea), Some(5012));
    assert!(!msg(&cea).header.flags.is_error(), "5012 is a permanent failure, not a protocol error");
    assert!(msg(&cea).str(AvpCode::ERROR_MESSAGE).unwrap().contains("too many connections"));
    third.expect_closed().await;
    assert_eq!(s.shared.metrics.peer_refused.load(Ordering::Relaxed), 1);

    // The first two keep working, and another host still connects.
    for c in [&mut first, &mut second] {
        let dwr = c.dwr();
        assert_eq!(result_code(&c.call(&dwr).await), Some(2001));
    }
    let mut other = Client::connect(s.addr).await;
    other.origin_host = "pgw.other".into();
    other.exchange_capabilities().await;

    // One of the two leaves (DPR): its slot is freed when its connection ends.
    let dpr = second.request(CommandCode::DISCONNECT_PEER, ApplicationId::COMMON, |e| {
        e.u32(spec::DISCONNECT_CAUSE, 0);
    });
    assert_eq!(result_code(&second.call(&dpr).await), Some(2001));
    second.expect_closed().await;
    // The client sees the close just before the server's task drops the connection.
    let mut accepted = false;
    for _ in 0..100 {
        let mut again = Client::connect(s.addr).await;
        let cer = again.cer(&[4]);
        match result_code(&again.call(&cer).await) {
            Some(2001) => {
                accepted = true;
                let dwr = again.dwr();
                assert_eq!(result_code(&again.call(&dwr).await), Some(2001));
                break;
            }
            Some(5012) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            other => panic!("unexpected CEA {other:?}"),
        }
    }
    assert!(accepted, "a slot freed by a closed connection is taken again");
    let dwr = first.dwr();
    assert_eq!(result_code(&first.call(&dwr).await), Some(2001));
}

#[tokio::test]
async fn corrupt_streams_are_answered_then_closed() {
    let s = start(Options::default()).await;
    // 5015: length not a multiple of 4.
    let mut c = Client::open(s.addr).await;
    let mut bad = c.dwr().to_vec();
    bad.push(0);
    let n = bad.len() as u32;
    bad[1..4].copy_from_slice(&n.to_be_bytes()[1..]);
    let a = c.call(&bad).await;
    assert_eq!(result_code(&a), Some(5015));
    c.expect_closed().await;

    // 5011: version 2.
    let mut c = Client::open(s.addr).await;
    let mut bad = c.dwr().to_vec();
    bad[0] = 2;
    let a = c.call(&bad).await;
    assert_eq!(result_code(&a), Some(5011));
    c.expect_closed().await;
}

#[tokio::test]
async fn misbehaving_connections_do_not_disturb_a_good_peer() {
    let s = start(Options { applications: vec![Arc::new(Counting::default())], ..Options::default() }).await;
    let mut good = Client::open(s.addr).await;

    let mut garbage = Client::connect(s.addr).await;
    garbage.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut half = Client::open(s.addr).await;
    let dwr = half.dwr();
    half.send_raw(&dwr[..dwr.len() / 2]).await;
    let mut huge = Client::open(s.addr).await;
    huge.send_raw(&[1, 0xff, 0xff, 0xfc, 0x80, 0, 1, 24]).await;
    huge.send_raw(&[0u8; 4096]).await;

    for i in 0..50 {
        let req = ccr(&mut good, &format!("good;{i}"));
        let a = good.call(&req).await;
        assert_eq!(result_code(&a), Some(2001));
        let dwr = good.dwr();
        assert_eq!(result_code(&good.call(&dwr).await), Some(2001));
    }
    garbage.expect_closed().await;
    huge.expect_closed().await;
    // The stalled peer is still connected (its watchdog will deal with it) and the rest of its
    // message completes normally.
    half.send_raw(&dwr[dwr.len() / 2..]).await;
    assert_eq!(result_code(&half.recv().await.unwrap()), Some(2001));
}

#[tokio::test]
async fn in_flight_limit_answers_3004() {
    let app = Arc::new(Deferring::default());
    let s = start(Options { applications: vec![app.clone()], in_flight_max: 4, ..Options::default() }).await;
    let mut c = Client::open(s.addr).await;
    let mut batch = Vec::new();
    for i in 0..6 {
        batch.extend_from_slice(&ccr(&mut c, &format!("s;{i}")));
    }
    c.send_raw(&batch).await;
    for _ in 0..2 {
        let a = c.recv().await.unwrap();
        assert_eq!(result_code(&a), Some(3004));
        assert!(msg(&a).header.flags.is_error());
    }
    assert_eq!(app.held.lock().unwrap().len(), 4);
    // Answering one frees a slot.
    let reply = app.held.lock().unwrap().pop().unwrap();
    let mut b = BytesMut::new();
    let req = ccr(&mut c, "late");
    let mut e = begin_answer(&mut b, &msg(&req), ResultCode::SUCCESS);
    e.u32(spec::RESULT_CODE, 2001);
    e.finish();
    reply.send(b.freeze());
    let a = c.recv().await.unwrap();
    assert_eq!(result_code(&a), Some(2001));
    let req = ccr(&mut c, "s;after");
    c.send_raw(&req).await;
    // The freed slot admits the next request: it is dispatched, not answered 3004.
    tokio::time::timeout(STEP, async {
        while app.held.lock().unwrap().len() < 4 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
}

/// Answers at once, but each answer waits for "record" n (its request's number), as the
/// charging engine's answers wait for their journal records; the test plays the journal.
#[derive(Default)]
struct Holding {
    wake: Mutex<Option<Arc<gyro::net::DurableWake>>>,
    next: AtomicUsize,
}

impl Application for Holding {
    fn id(&self) -> ApplicationId {
        CC
    }
    fn handle(&self, req: &Request<'_>, out: &mut BytesMut, reply: &Reply<'_>) -> Handled {
        *self.wake.lock().unwrap() = Some(Arc::clone(reply.durable_waker()));
        let n = self.next.fetch_add(1, Ordering::SeqCst) as u32 + 1;
        let mut e = begin_answer(out, &req.msg, ResultCode::SUCCESS);
        e.u32(spec::RESULT_CODE, 2001).str(spec::ORIGIN_HOST, "gyro.test").str(spec::ORIGIN_REALM, "test");
        e.u32(AvpSpec::mandatory(415), n);
        e.finish();
        Handled::AfterDurable(u64::from(n))
    }
}

/// Expects nothing to arrive for a while.
async fn silence(c: &mut Client) {
    let quiet = tokio::time::timeout(std::time::Duration::from_millis(300), c.recv()).await;
    assert!(quiet.is_err(), "an answer left before its record was durable");
}

#[tokio::test]
async fn held_answers_leave_once_durable_and_are_dropped_if_never() {
    let app = Arc::new(Holding::default());
    let s = start(Options { applications: vec![app.clone()], in_flight_max: 3, ..Options::default() }).await;
    let mut c = Client::open(s.addr).await;
    let mut batch = Vec::new();
    for i in 0..3 {
        batch.extend_from_slice(&ccr(&mut c, &format!("s;{i}")));
    }
    c.send_raw(&batch).await;
    silence(&mut c).await;
    let wake = app.wake.lock().unwrap().clone().unwrap();
    // Records 1 and 2 durable: their answers leave, in order, and only they.
    wake.durable(2);
    for n in 1..=2 {
        let a = c.recv().await.unwrap();
        assert_eq!(msg(&a).u32(AvpCode(415)), Some(n));
    }
    silence(&mut c).await;
    // The journal fails: answer 3 is never sent, and no longer counts in flight, so three more
    // requests are all taken (with 3 in flight, a fourth would get 3004).
    wake.failed();
    silence(&mut c).await;
    let mut batch = Vec::new();
    for i in 3..6 {
        batch.extend_from_slice(&ccr(&mut c, &format!("s;{i}")));
    }
    c.send_raw(&batch).await;
    silence(&mut c).await;
    assert_eq!(app.next.load(Ordering::SeqCst), 6, "every request reached the application");
}

/// Like `Deferring`, and CCR-I/CCR-E count as new work (as for the charging engine).
#[derive(Default)]
struct DeferringTyped(Deferring);

impl Application for DeferringTyped {
    fn id(&self) -> ApplicationId {
        CC
    }
    fn handle(&self, req: &Request<'_>, out: &mut BytesMut, reply: &Reply<'_>) -> Handled {
        self.0.handle(req, out, reply)
    }
    fn is_new_work(&self, msg: &gyro::diameter::MessageRef<'_>) -> bool {
        msg.find(AvpCode(416)).is_some_and(|a| a.data == 1u32.to_be_bytes() || a.data == 4u32.to_be_bytes())
    }
}

fn ccr_of_type(c: &mut Client, session: &str, request_type: u32) -> bytes::Bytes {
    let req = c.request(CCR, CC, |e| {
        e.str(spec::DESTINATION_REALM, "test");
        e.u32(spec::AUTH_APPLICATION_ID, 4);
        e.str(AvpSpec::mandatory(461), "32251@3gpp.org");
        e.u32(AvpSpec::mandatory(416), request_type);
        e.u32(AvpSpec::mandatory(415), 0);
    });
    with_session(req, session)
}

#[tokio::test]
async fn server_wide_limit_sheds_new_sessions_before_updates() {
    let app = Arc::new(DeferringTyped::default());
    // 4 in flight across the server; new work is refused from 3 (75 %) on.
    let opts = Options { applications: vec![app.clone()], in_flight_total: 4, ..Options::default() };
    let s = start(opts).await;
    let mut c = Client::open(s.addr).await;
    let held = |n: usize| {
        let app = Arc::clone(&app);
        async move {
            tokio::time::timeout(STEP, async {
                while app.0.held.lock().unwrap().len() < n {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .unwrap()
        }
    };
    for i in 0..3 {
        let req = ccr_of_type(&mut c, &format!("u;{i}"), 2);
        c.send_raw(&req).await;
    }
    held(3).await;
    // A new session is shed at 75 % ...
    let req = ccr_of_type(&mut c, "new", 1);
    c.send_raw(&req).await;
    let a = c.recv().await.unwrap();
    assert_eq!(result_code(&a), Some(3004));
    assert!(msg(&a).header.flags.is_error());
    // ... while an update of an open session is still served, up to the limit ...
    let req = ccr_of_type(&mut c, "u;3", 2);
    c.send_raw(&req).await;
    held(4).await;
    // ... and beyond it everything gets 3004.
    let req = ccr_of_type(&mut c, "u;4", 3);
    c.send_raw(&req).await;
    assert_eq!(result_code(&c.recv().await.unwrap()), Some(3004));
    assert_eq!(s.shared.shed.load(Ordering::Relaxed), 2);
    // Requests still in flight on a closed connection stop counting.
    drop(c);
    tokio::time::timeout(STEP, async {
        while s.shared.in_flight_total.load(Ordering::Relaxed) != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the closed connection's requests no longer count");
    let mut c = Client::open(s.addr).await;
    let req = ccr_of_type(&mut c, "new;2", 1);
    c.send_raw(&req).await;
    held(5).await;
}

/// Panics on every request.
struct Panicking;

impl Application for Panicking {
    fn id(&self) -> ApplicationId {
        CC
    }
    fn handle(&self, _req: &Request<'_>, out: &mut BytesMut, _reply: &Reply<'_>) -> Handled {
        out.extend_from_slice(b"half an answer");
        panic!("bug in the application");
    }
}

#[tokio::test]
async fn application_panic_gets_5012_and_connection_stays_up() {
    let s = start(Options { applications: vec![Arc::new(Panicking)], ..Options::default() }).await;
    let mut c = Client::open(s.addr).await;
    let req = ccr(&mut c, "boom");
    let a = c.call(&req).await;
    assert_eq!(result_code(&a), Some(5012));
    assert!(!msg(&a).header.flags.is_error(), "5012 is a permanent failure, not a protocol error");
    let dwr = c.dwr();
    assert_eq!(result_code(&c.call(&dwr).await), Some(2001));
}

#[tokio::test]
async fn duplicate_request_gets_the_original_answer() {
    let app = Arc::new(Counting::default());
    let s = start(Options { applications: vec![app.clone()], ..Options::default() }).await;
    let mut c = Client::open(s.addr).await;
    let req = ccr(&mut c, "dup;1");
    let first = c.call(&req).await;
    // Retransmission on another connection, with the T flag and a new Hop-by-Hop id.
    let mut again = req.to_vec();
    again[4] |= CommandFlags::RETRANSMIT;
    again[12..16].copy_from_slice(&0xabcd_ef01u32.to_be_bytes());
    let mut c2 = Client::open(s.addr).await;
    let second = c2.call(&again).await;
    assert_eq!(app.calls.load(Ordering::SeqCst), 1, "processed once");
    assert_eq!(msg(&second).header.hop_by_hop, 0xabcd_ef01);
    assert_eq!(&first[..12], &second[..12]);
    assert_eq!(&first[16..], &second[16..]);
    // A different End-to-End id is a new request.
    let req2 = ccr(&mut c, "dup;1");
    c.call(&req2).await;
    assert_eq!(app.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn transport_duplicates_are_replayed_and_counted() {
    // `Counting` keeps the default `remembers_answers() == false`: the connection's duplicate
    // cache (RFC 6733 §5.5.4, Origin-Host + End-to-End) answers for it.
    let app = Arc::new(Counting::default());
    let s = start(Options { applications: vec![app.clone()], ..Options::default() }).await;
    let replayed = || s.shared.metrics.replayed.load(Ordering::Relaxed);
    let before = replayed();
    let mut c = Client::open(s.addr).await;
    let req = ccr(&mut c, "replay;1");
    let first = c.call(&req).await;
    assert_eq!(result_code(&first), Some(2001));
    assert_eq!(replayed(), before, "a first request is not a replay");
    // The same request again on the same connection, T flag set (RFC 6733 §3), same ids.
    let mut again = req.to_vec();
    again[4] |= CommandFlags::RETRANSMIT;
    let second = c.call(&again).await;
    assert_eq!(app.calls.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(second, first, "the same answer, byte for byte (its ids are the request's)");
    assert_eq!(replayed(), before + 1, "the replay is counted once");
}

/// Answers 2001 after burning `per_request` of the connection's thread: a server short of CPU.
struct Slow {
    per_request: std::time::Duration,
}

impl Application for Slow {
    fn id(&self) -> ApplicationId {
        CC
    }
    fn handle(&self, req: &Request<'_>, out: &mut BytesMut, _reply: &Reply<'_>) -> Handled {
        std::thread::sleep(self.per_request);
        let mut e = begin_answer(out, &req.msg, ResultCode::SUCCESS);
        e.u32(spec::RESULT_CODE, 2001).str(spec::ORIGIN_HOST, "gyro.test").str(spec::ORIGIN_REALM, "test");
        e.finish();
        Handled::Answered
    }
    fn is_new_work(&self, msg: &gyro::diameter::MessageRef<'_>) -> bool {
        msg.find(AvpCode(416)).is_some_and(|a| a.data == 1u32.to_be_bytes())
    }
    fn is_ending(&self, msg: &gyro::diameter::MessageRef<'_>) -> bool {
        msg.find(AvpCode(416)).is_some_and(|a| a.data == 3u32.to_be_bytes())
    }
}

/// Requests queued unread in the socket (the in-flight count never sees them) are shed by
/// their queue delay: after a while of reads that never drain the socket, new sessions get
/// 3004 at once, later updates too, terminations never; every request is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_in_the_socket_are_shed_by_queue_delay() {
    let app = Arc::new(Slow { per_request: std::time::Duration::from_micros(300) });
    let s = start(Options { applications: vec![app], ..Options::default() }).await;
    let mut c = Client::open(s.addr).await;
    // 3000 requests (≈ 0.5 MB) at once: 0.9 s of work if none were shed. Types cycle
    // I, U, T so each kind arrives all along the backlog.
    let (n, types) = (3000usize, [1u32, 2, 3]);
    let mut batch = Vec::new();
    let mut kind_of = std::collections::HashMap::new();
    for i in 0..n {
        let req = ccr_of_type(&mut c, &format!("q;{i}"), types[i % 3]);
        kind_of.insert(msg(&req).header.hop_by_hop, types[i % 3]);
        batch.extend_from_slice(&req);
    }
    let (mut rd, mut wr) = c.stream.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        wr.write_all(&batch).await.unwrap();
        wr
    });
    let mut buf = BytesMut::new();
    let mut counts = std::collections::HashMap::<(u32, u32), usize>::new();
    let mut first_3004 = None;
    let mut got = 0;
    while got < n {
        use tokio::io::AsyncReadExt;
        while let Ok(Some(len)) = gyro::diameter::frame(&buf) {
            let a = buf.split_to(len).freeze();
            let m = msg(&a);
            let rc = m.u32(AvpCode::RESULT_CODE).unwrap();
            *counts.entry((kind_of[&m.header.hop_by_hop], rc)).or_default() += 1;
            if rc == 3004 && first_3004.is_none() {
                first_3004 = Some(got);
            }
            got += 1;
        }
        if got < n {
            let read = tokio::time::timeout(STEP, rd.read_buf(&mut buf)).await.expect("answers keep coming");
            assert!(read.unwrap() > 0, "the server closed the connection");
        }
    }
    let _wr = writer.await.unwrap();
    let count = |kind, rc| counts.get(&(kind, rc)).copied().unwrap_or(0);
    assert!(first_3004.unwrap_or(0) > 100, "the first requests are served normally: {counts:?}");
    assert!(count(1, 3004) > 0, "new sessions were shed: {counts:?}");
    assert_eq!(count(3, 3004), 0, "terminations are never shed by queue delay: {counts:?}");
    assert_eq!(count(1, 3004) + count(1, 2001), n / 3);
    assert!(count(1, 3004) > count(2, 3004), "new work goes first: {counts:?}");
}

#[tokio::test]
async fn graceful_shutdown_sends_dpr_and_drains() {
    let s = start(Options::default()).await;
    let mut c = Client::open(s.addr).await;
    s.shutdown.cancel();
    let dpr = c.recv().await.expect("DPR");
    let m = msg(&dpr);
    assert!(m.header.flags.is_request());
    assert_eq!(m.header.command, CommandCode::DISCONNECT_PEER);
    assert_eq!(m.u32(AvpCode::DISCONNECT_CAUSE), Some(0));
    let mut b = BytesMut::new();
    let mut e = begin_answer(&mut b, &m, ResultCode::SUCCESS);
    e.u32(spec::RESULT_CODE, 2001).str(spec::ORIGIN_HOST, "pgw.test").str(spec::ORIGIN_REALM, "test");
    e.finish();
    c.send_raw(&b).await;
    c.expect_closed().await;
    tokio::time::timeout(STEP, s.task).await.expect("server stopped in time").unwrap();
    // No new connections are accepted.
    assert!(tokio::net::TcpStream::connect(s.addr).await.is_err());
}

#[tokio::test]
async fn charging_over_tcp_with_the_demo_catalog() {
    use gyro::catalog::Catalog;
    use gyro::cc::{Engine, EngineConfig};
    use gyro::ledger::Ledger;
    use gyro::net::charging::Charging;

    let engine = Arc::new(Engine::new(EngineConfig::new(&local()), Arc::new(Ledger::new())));
    let charging = Arc::new(Charging::new(Arc::clone(&engine)));
    engine.load_catalog(&Catalog::demo(), charging.now().mono_ms).unwrap();
    let s = start(Options { applications: vec![charging], ..Options::default() }).await;
    let mut c = Client::open(s.addr).await;
    let ccr_i = |c: &mut Client, msisdn: &str| {
        let req = c.request(CCR, CC, |e| {
            e.str(spec::DESTINATION_REALM, "test");
            e.u32(spec::AUTH_APPLICATION_ID, 4);
            e.str(AvpSpec::mandatory(461), "32251@3gpp.org");
            e.u32(AvpSpec::mandatory(416), 1);
            e.u32(AvpSpec::mandatory(415), 0);
            let g = e.begin_group(AvpSpec::mandatory(443));
            e.u32(AvpSpec::mandatory(450), 0).str(AvpSpec::mandatory(444), msisdn);
            e.end_group(g);
            let m = e.begin_group(AvpSpec::mandatory(456));
            let r = e.begin_group(AvpSpec::mandatory(437));
            e.end_group(r);
            e.u32(AvpSpec::mandatory(432), 10);
            e.end_group(m);
        });
        with_session(req, &format!("pgw.test;1;{msisdn}"))
    };
    // Bob (card on file) gets a full 10 MiB grant; Carol (empty wallet) gets 4012; Dave is barred.
    let bob = ccr_i(&mut c, "491700000002");
    let a = c.call(&bob).await;
    assert_eq!(result_code(&a), Some(2001));
    let m = msg(&a);
    let mscc = m.find(AvpCode(456)).unwrap();
    let gsu = mscc.members().map_while(Result::ok).find(|x| x.code.0 == 431).unwrap();
    let octets = gsu.members().map_while(Result::ok).find(|x| x.code.0 == 421).unwrap();
    assert_eq!(u64::from_be_bytes(octets.data.try_into().unwrap()), 10 * 1024 * 1024);
    let carol = ccr_i(&mut c, "491700000003");
    assert_eq!(result_code(&c.call(&carol).await), Some(4012));
    let dave = ccr_i(&mut c, "491700000004");
    assert_eq!(result_code(&c.call(&dave).await), Some(4010));
    // The same CCR-I again, on another connection with a new End-to-End id: answered once.
    let mut again = bob.to_vec();
    again[16..20].copy_from_slice(&0x0bad_cafeu32.to_be_bytes());
    let mut c2 = Client::open(s.addr).await;
    let replay = c2.call(&again).await;
    assert_eq!(result_code(&replay), Some(2001));
    assert_eq!(msg(&replay).header.end_to_end, 0x0bad_cafe);
    assert_eq!(engine.open_sessions(), 1);
    assert!(engine.ledger().check_conservation());
}
