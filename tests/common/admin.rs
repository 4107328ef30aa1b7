//! What the tests of `gyro serve`'s admin API and server-initiated requests share: starting
//! it with an admin token, bounded HTTP calls, CCRs from a raw client, answering gyro's own
//! requests (RAR, ASR). Included with `#[path = "common/admin.rs"] mod admin;` beside
//! `mod common;` and `mod serve;`.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gyro::diameter::encode::spec;
use gyro::diameter::{ApplicationId, AvpCode, CommandCode, CommandFlags, Encoder};
use gyro::tools::ccr::{CcrRequest, RequestType, Timestamp, Unit};

use super::common::{msg, Client};
use super::serve::{self, Gyro};

pub const TOKEN: &str = "test-admin-token-0123456789";
pub const MIB: u64 = 1_048_576;

pub fn start(dir: &Path) -> (Gyro, SocketAddr) {
    start_with(dir, "")
}

/// The configuration `start_with` writes: the admin token, then `extra` (TOML before the
/// `[http]` section, so top-level sections only).
pub fn write_config(dir: &Path, extra: &str) -> std::path::PathBuf {
    let token = dir.join("admin-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = dir.join("gyro.toml");
    std::fs::write(
        &config,
        format!("{extra}\n[http]\nadmin_token_file = {:?}\n", token.display().to_string()),
    )
    .unwrap();
    config
}

/// `gyro serve` on `dir/data` with the admin token and `extra` configuration.
pub fn start_with(dir: &Path, extra: &str) -> (Gyro, SocketAddr) {
    let config = write_config(dir, extra);
    let gyro = Gyro::start(&config, &dir.join("data"), dir.join("gyro.log"));
    let http = serve::http_addr(&gyro.log_text()).expect("the HTTP listener's address is logged");
    (gyro, http)
}

/// A bounded HTTP/1.1 request on loopback with the admin token: (status, JSON body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let (status, body) = http_text(addr, method, path, body);
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

/// `http` with the body as text (metrics, TOML).
pub fn http_text(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    request(addr, method, path, Some(TOKEN), body)
}

/// A minimal HTTP/1.1 request on loopback (bounded) with an optional bearer token: (status,
/// body). A body starting with `{` is sent as JSON, any other as TOML.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let content = body.map_or(String::new(), |b| {
        let kind = if b.starts_with('{') { "application/json" } else { "application/toml" };
        format!("Content-Type: {kind}\r\nContent-Length: {}\r\n", b.len())
    });
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: test\r\n{auth}{content}Connection: close\r\n\r\n{}",
        body.unwrap_or("")
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status line");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    // axum answers with Content-Length or chunked; de-chunk the simple case.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    (status, body)
}

/// `http` on a blocking thread, so the test's Diameter client can answer meanwhile.
pub fn http_async(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    body: Option<&str>,
) -> tokio::task::JoinHandle<(u16, serde_json::Value)> {
    let body = body.map(str::to_owned);
    tokio::task::spawn_blocking(move || http(addr, method, &path, body.as_deref()))
}

pub fn ccr(
    c: &mut Client,
    session_id: &str,
    number: u32,
    subscriber: &str,
    kind: RequestType,
    used: Option<u64>,
) -> Bytes {
    let req = CcrRequest {
        request_type: kind,
        subscribers: vec![subscriber.parse().unwrap()],
        service_context: "32251@3gpp.org".into(),
        rating_groups: vec![10],
        service_id: None,
        requested: (kind != RequestType::Terminate).then_some(0),
        used,
        unit: Unit::Octets,
        reporting_reason: None,
        termination_cause: 1,
        action: None,
        timestamp: Timestamp::Omit,
    };
    c.ccr(session_id, number, &req)
}

/// Sends a CCR and reads its CCA.
pub async fn exchange(
    c: &mut Client,
    session_id: &str,
    number: u32,
    subscriber: &str,
    kind: RequestType,
    used: Option<u64>,
) -> Bytes {
    let req = ccr(c, session_id, number, subscriber, kind, used);
    c.call(&req).await
}

/// The MSCC's Final-Unit-Indication (RFC 4006 §8.34), and its granted octets.
pub fn final_unit_and_grant(cca: &Bytes) -> (bool, Option<u64>) {
    let m = msg(cca);
    let mscc = m.find(AvpCode(456)).expect("an MSCC");
    let members: Vec<_> = mscc.members().map(Result::unwrap).collect();
    let fui = members.iter().any(|a| a.code == AvpCode(430));
    let granted = members.iter().find(|a| a.code == AvpCode(431)).and_then(|g| {
        g.members()
            .map(Result::unwrap)
            .find(|a| a.code == AvpCode(421))
            .map(|a| u64::from_be_bytes(a.data.try_into().unwrap()))
    });
    (fui, granted)
}

/// Reads the next message, which must be a request `command` from gyro for `session_id`,
/// addressed to this client; answers it with `result` and returns it.
pub async fn answer_request(c: &mut Client, command: CommandCode, session_id: &str, result: u32) -> Bytes {
    let req = c.recv().await.expect("a request from gyro");
    let m = msg(&req);
    let h = m.header;
    assert!(h.flags.is_request(), "a request");
    assert_eq!((h.command, h.application), (command, ApplicationId::CREDIT_CONTROL));
    // RFC 6733 §8.8: Session-Id first.
    let first = m.avps().next().unwrap().unwrap();
    assert_eq!((first.code, m.str(AvpCode::SESSION_ID)), (AvpCode::SESSION_ID, Some(session_id)));
    assert_eq!(m.str(AvpCode::DESTINATION_HOST), Some(c.origin_host.as_str()));
    assert_eq!(m.str(AvpCode::DESTINATION_REALM), Some("test"));
    assert!(m.str(AvpCode::ORIGIN_HOST).is_some() && m.str(AvpCode::ORIGIN_REALM).is_some());
    assert_eq!(m.u32(AvpCode::AUTH_APPLICATION_ID), Some(4));
    if command == CommandCode::RE_AUTH {
        assert_eq!(m.u32(AvpCode(285)), Some(0), "Re-Auth-Request-Type AUTHORIZE_ONLY");
    }
    let mut buf = BytesMut::new();
    let mut e = Encoder::new(
        &mut buf,
        CommandFlags(h.flags.0 & CommandFlags::PROXIABLE),
        h.command,
        h.application,
        h.hop_by_hop,
        h.end_to_end,
    );
    e.str(spec::SESSION_ID, session_id);
    e.u32(spec::RESULT_CODE, result);
    e.str(spec::ORIGIN_HOST, &c.origin_host.clone());
    e.str(spec::ORIGIN_REALM, "test");
    e.finish();
    c.send_raw(&buf).await;
    req
}
