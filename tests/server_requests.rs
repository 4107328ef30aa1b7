//! Server-initiated requests (issue 7): `gyro serve` sends RAR (RFC 4006 §5.5) to the client
//! holding a session held back for lack of credit when the account is topped up, ASR
//! (RFC 6733 §8.5) when it is barred or an operator aborts the session, and forgets a session
//! its client answers 5002. A raw Diameter client (tests/common) on loopback plays the PGW;
//! the admin API is called over HTTP from a blocking thread while the client answers. Every
//! step is bounded (`common::STEP`, the HTTP client's timeouts).

#[path = "common/admin.rs"]
mod admin;
mod common;
#[path = "common/serve.rs"]
mod serve;

use std::time::Duration;

use admin::{answer_request, exchange, final_unit_and_grant, http_async, start, MIB};
use common::{msg, result_code, Client};
use gyro::diameter::CommandCode;
use gyro::tools::ccr::RequestType;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rar_after_a_top_up_reaches_the_client_and_the_next_ccr_u_is_granted() {
    let dir = tempfile::tempdir().unwrap();
    let (gyro, api) = start(dir.path());
    let mut c = Client::open(gyro.addr).await;
    let (erin, id) = ("e164:491700000005", "pgw.test;1;erin");
    // 0.50 EUR at 0.10 EUR per MiB: less than one quota, so a final unit with a redirect.
    let cca = exchange(&mut c, id, 0, erin, RequestType::Initial, None).await;
    assert_eq!(result_code(&cca), Some(2001));
    let (fui, granted) = final_unit_and_grant(&cca);
    assert!(fui, "Erin's grant is her last: Final-Unit-Indication");
    let last = granted.expect("a grant");
    assert!(last <= 5 * MIB, "{last}");

    // The decision trace says why the grant is her last.
    let (_, session) = http_async(api, "GET", "/v1/sessions/pgw.test%3B1%3Berin".into(), None).await.unwrap();
    let why = session["rating_groups"][0]["why"].as_str().unwrap_or_default();
    assert!(why.starts_with("final unit"), "{session}");

    let topped = http_async(
        api,
        "POST",
        format!("/v1/accounts/{erin}/top-ups"),
        Some(r#"{"amount":"10.00","key":"t1"}"#),
    );
    answer_request(&mut c, CommandCode::RE_AUTH, id, 2001).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), topped).await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["balance"], "10.50", "{body}");
    let notified = &body["notified"];
    assert_eq!(notified.as_array().map(Vec::len), Some(1), "{body}");
    assert_eq!(
        (
            notified[0]["session_id"].as_str(),
            notified[0]["command"].as_str(),
            notified[0]["result_code"].as_u64()
        ),
        (Some(id), Some("RAR"), Some(2001)),
        "{body}"
    );

    // RFC 4006 §5.5: the client re-authorizes with a CCR-U and is granted a full quota again.
    let cca = exchange(&mut c, id, 1, erin, RequestType::Update, Some(last)).await;
    assert_eq!(result_code(&cca), Some(2001));
    let (fui, granted) = final_unit_and_grant(&cca);
    assert!(!fui, "no final unit after the top-up");
    assert!(granted.is_some_and(|g| g > last), "a larger grant: {granted:?} after {last}");

    // A top-up of an account whose sessions are not held back sends nothing.
    let (status, body) = http_async(
        api,
        "POST",
        format!("/v1/accounts/{erin}/top-ups"),
        Some(r#"{"amount":"1.00","key":"t2"}"#),
    )
    .await
    .unwrap();
    assert_eq!((status, body["notified"].as_array().map(Vec::len)), (200, Some(0)), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asr_when_the_account_is_barred() {
    let dir = tempfile::tempdir().unwrap();
    let (gyro, api) = start(dir.path());
    let mut c = Client::open(gyro.addr).await;
    let (alice, id) = ("e164:491700000001", "pgw.test;1;alice");
    let cca = exchange(&mut c, id, 0, alice, RequestType::Initial, None).await;
    assert_eq!(result_code(&cca), Some(2001));

    let barred = http_async(api, "POST", format!("/v1/accounts/{alice}/bar"), None);
    answer_request(&mut c, CommandCode::ABORT_SESSION, id, 2001).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), barred).await.unwrap().unwrap();
    assert_eq!((status, body["status"].as_str()), (200, Some("barred")), "{body}");
    assert_eq!(
        (body["notified"][0]["command"].as_str(), body["notified"][0]["result_code"].as_u64()),
        (Some("ASR"), Some(2001)),
        "{body}"
    );
    // The client ends the session as asked (RFC 4006 §5.6: CCR-T after ASA).
    let cca = exchange(&mut c, id, 1, alice, RequestType::Terminate, Some(MIB)).await;
    assert_eq!(result_code(&cca), Some(2001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_abort_answered_5002_forgets_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let (gyro, api) = start(dir.path());
    let mut c = Client::open(gyro.addr).await;
    let (bob, id) = ("e164:491700000002", "pgw.test;1;bob");
    let path = "/v1/sessions/pgw.test%3B1%3Bbob";
    let cca = exchange(&mut c, id, 0, bob, RequestType::Initial, None).await;
    assert_eq!(result_code(&cca), Some(2001));

    let aborted = http_async(api, "POST", format!("{path}/abort"), None);
    answer_request(&mut c, CommandCode::ABORT_SESSION, id, 5002).await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), aborted).await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["result_code"].as_u64(), body["forgotten"].as_bool()),
        (Some(5002), Some(true)),
        "{body}"
    );
    let (status, body) = http_async(api, "GET", path.to_owned(), None).await.unwrap();
    assert_eq!((status, body["field"].as_str()), (404, Some("session_id")), "{body}");
    // Its hold was released with it.
    let (_, account) = http_async(api, "GET", format!("/v1/accounts/{bob}"), None).await.unwrap();
    assert_eq!(account["reserved"], "0.00", "{account}");
    let (status, body) = http_async(api, "POST", format!("{path}/abort"), None).await.unwrap();
    assert_eq!((status, body["field"].as_str()), (404, Some("session_id")), "{body}");

    // A client that is gone: 502 naming the peer.
    let mut gone = Client::connect(gyro.addr).await;
    gone.origin_host = "pgw2.test".into();
    gone.exchange_capabilities().await;
    let id2 = "pgw2.test;1;bob";
    let cca = exchange(&mut gone, id2, 0, bob, RequestType::Initial, None).await;
    assert_eq!(result_code(&cca), Some(2001));
    drop(gone);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) =
        http_async(api, "POST", "/v1/sessions/pgw2.test%3B1%3Bbob/abort".into(), None).await.unwrap();
    assert_eq!((status, body["peer"].as_str()), (502, Some("pgw2.test")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_asr_is_sent_again_on_another_connection_with_the_t_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (gyro, api) = start(dir.path());
    // Two links from the same client (RFC 6733 §5.5.4 failover): the first, the oldest, gets
    // the request first and never answers.
    let mut first = Client::open(gyro.addr).await;
    let mut second = Client::open(gyro.addr).await;
    let (bob, id) = ("e164:491700000002", "pgw.test;1;retry");
    let cca = exchange(&mut first, id, 0, bob, RequestType::Initial, None).await;
    assert_eq!(result_code(&cca), Some(2001));

    let aborted = http_async(api, "POST", "/v1/sessions/pgw.test%3B1%3Bretry/abort".into(), None);
    let unanswered = first.recv().await.expect("the ASR on the first link");
    assert_eq!(msg(&unanswered).header.command, CommandCode::ABORT_SESSION);
    assert!(!msg(&unanswered).header.flags.is_retransmit());
    // gyro waits SERVER_REQUEST_TIMEOUT_MS (5 s) before it tries the other link; `recv` waits
    // 5 s at most, so most of that wait is spent here.
    tokio::time::sleep(Duration::from_millis(gyro::limits::SERVER_REQUEST_TIMEOUT_MS - 1_000)).await;
    let again = answer_request(&mut second, CommandCode::ABORT_SESSION, id, 2001).await;
    let (h0, h1) = (msg(&unanswered).header, msg(&again).header);
    assert!(h1.flags.is_retransmit(), "T flag on the retransmission");
    assert_eq!(h1.end_to_end, h0.end_to_end, "the same End-to-End id");
    let (status, body) = tokio::time::timeout(Duration::from_secs(20), aborted).await.unwrap().unwrap();
    assert_eq!((status, body["result_code"].as_u64()), (200, Some(2001)), "{body}");
}
