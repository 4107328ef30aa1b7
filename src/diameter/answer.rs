//! Building answers: the common header rules and the RFC 6733 §7.2 error answer.

use std::net::IpAddr;

use bytes::BytesMut;

use super::codes::{AvpCode, ResultCode};
use super::encode::{spec, Encoder};
use super::header::CommandFlags;
use super::message::MessageRef;
use crate::limits::ERROR_MESSAGE_MAX_BYTES;

/// Who we are on the Diameter network; written into every message we originate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalIdentity {
    pub origin_host: String,
    pub origin_realm: String,
    pub host_ip_addresses: Vec<IpAddr>,
    pub vendor_id: u32,
    pub product_name: String,
    pub firmware_revision: u32,
    /// RFC 6733 §8.16: changes every time the node restarts with lost state.
    pub origin_state_id: u32,
}

/// Starts an answer to `req`: same command, application and ids; R and T cleared; P copied
/// (RFC 6733 §6.2: "The 'P' bit in the answer ... set to the same value as the one in the
/// request"); E set for protocol errors (3xxx).
pub fn begin_answer<'b>(buf: &'b mut BytesMut, req: &MessageRef<'_>, result: ResultCode) -> Encoder<'b> {
    let h = req.header;
    let mut flags = h.flags.0 & CommandFlags::PROXIABLE;
    if result.is_protocol_error() {
        flags |= CommandFlags::ERROR;
    }
    Encoder::new(buf, CommandFlags(flags), h.command, h.application, h.hop_by_hop, h.end_to_end)
}

/// AVPs echoed into an error answer so it also satisfies the command's own answer ABNF where
/// the request carried them (RFC 4006 §3.2 CCA needs Auth-Application-Id, CC-Request-Type and
/// CC-Request-Number).
const ECHOED: [AvpCode; 4] =
    [AvpCode::AUTH_APPLICATION_ID, AvpCode::ACCT_APPLICATION_ID, AvpCode(416), AvpCode(415)];

/// Writes an error answer to `req` (RFC 6733 §7.2):
/// `< Session-Id > { Origin-Host } { Origin-Realm } < Result-Code > [ Error-Message ]
///  [ Failed-AVP ] * [ Proxy-Info ]`.
pub fn error_answer(
    buf: &mut BytesMut,
    local: &LocalIdentity,
    req: &MessageRef<'_>,
    result: ResultCode,
    error_message: Option<&str>,
    failed_avp: Option<&[u8]>,
) -> usize {
    let mut e = begin_answer(buf, req, result);
    // RFC 6733 §8.8: Session-Id, when present, comes first.
    if let Some(sid) = req.find(AvpCode::SESSION_ID) {
        e.raw(sid.raw);
    }
    e.str(spec::ORIGIN_HOST, &local.origin_host);
    e.str(spec::ORIGIN_REALM, &local.origin_realm);
    e.u32(spec::RESULT_CODE, result.0);
    if !result.is_protocol_error() {
        for code in ECHOED {
            if let Some(a) = req.find(code) {
                e.raw(a.raw);
            }
        }
    }
    if let Some(text) = error_message {
        e.str(spec::ERROR_MESSAGE, truncate(text, ERROR_MESSAGE_MAX_BYTES));
    }
    if let Some(failed) = failed_avp.filter(|f| !f.is_empty()) {
        let g = e.begin_group(spec::FAILED_AVP);
        e.raw(failed);
        e.end_group(g);
    }
    echo_proxy_info(&mut e, req);
    e.finish()
}

/// RFC 6733 §6.2: "The Proxy-Info AVP ... MUST be ... copied from the request into the answer
/// in the same order".
pub fn echo_proxy_info(e: &mut Encoder<'_>, req: &MessageRef<'_>) {
    for p in req.find_all(AvpCode::PROXY_INFO) {
        e.raw(p.raw);
    }
}

/// Cuts a string at a character boundary at or below `max` bytes.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
