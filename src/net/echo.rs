//! `gyro echo`: the benchmark responder, an `Application` (credit control, application 4) that
//! answers every CCR with the same canned Credit-Control-Answer and does no other work.
//!
//! It runs behind the very same `net::Server` as `gyro serve` (framing, CER/CEA, DWR, DPR,
//! dictionary validation, the in-flight limit, batched writes), so a load generator measured
//! against it shows the ceiling of the machine, the transport and the load generator itself;
//! gyro's rate divided by echo's is then what the charging work costs. It is not an OCS:
//! nothing is rated, reserved, charged or journaled, and every CCR is granted.
//!
//! The answer (RFC 4006 §3.2) is spliced from segments encoded once at start-up and the fields
//! copied from the request, in one walk over the request's top-level AVPs:
//!
//! ```text
//! header          command, application, Hop-by-Hop, End-to-End and P from the request
//! Session-Id      copied (RFC 6733 §8.8: first after the header)
//! Result-Code 2001, Origin-Host, Origin-Realm, Auth-Application-Id 4     pre-encoded
//! CC-Request-Type, CC-Request-Number                                     values copied
//! Multiple-Services-Credit-Control {
//!   Granted-Service-Unit { CC-Total-Octets 10 MiB }, Validity-Time 3600,
//!   Result-Code 2001 }                                                   pre-encoded
//!   Rating-Group     the request's first MSCC's, when it has one (the MSCC's length then
//!                    counts it: a second pre-encoded variant)
//! Proxy-Info*     copied in order (RFC 6733 §6.2), only when the request has any
//! ```
//!
//! The MSCC is sent whatever the request carried (none, several, or the single-service form):
//! a load generator needs a grant to continue its session, and one grant is the least work.

use bytes::BytesMut;

use super::{Application, Handled, Reply, Request};
use crate::diameter::answer::{begin_answer, echo_proxy_info, error_answer};
use crate::diameter::encode::spec;
use crate::diameter::{
    ApplicationId, AvpCode, AvpSpec, CommandCode, CommandFlags, Encoder, LocalIdentity, MessageRef,
    ResultCode,
};
use crate::limits::HEADER_SIZE_BYTES;

/// Octets granted in every answer's Granted-Service-Unit (RFC 4006 §8.23 CC-Total-Octets).
pub const GRANTED_OCTETS: u64 = 10 * 1024 * 1024;

/// Validity-Time of every grant, in seconds (RFC 4006 §8.33).
pub const VALIDITY_TIME_S: u32 = 3600;

/// RFC 4006 §8 AVPs the answer carries or the request is read for.
const CC_REQUEST_NUMBER: AvpSpec = AvpSpec::mandatory(415);
const CC_REQUEST_TYPE: AvpSpec = AvpSpec::mandatory(416);
const CC_TOTAL_OCTETS: AvpSpec = AvpSpec::mandatory(421);
const GRANTED_SERVICE_UNIT: AvpSpec = AvpSpec::mandatory(431);
const RATING_GROUP: AvpSpec = AvpSpec::mandatory(432);
const VALIDITY_TIME: AvpSpec = AvpSpec::mandatory(448);
const MSCC: AvpSpec = AvpSpec::mandatory(456);

/// Size of an Unsigned32 AVP without the V bit: the 8-byte header and 4 bytes of data.
const U32_AVP_BYTES: usize = crate::limits::AVP_HEADER_SIZE_BYTES + 4;

/// The canned-answer responder (see the module documentation).
pub struct Echo {
    /// Who answers, for the error answers of requests the canned answer cannot serve.
    local: LocalIdentity,
    /// Result-Code 2001, Origin-Host, Origin-Realm, Auth-Application-Id 4.
    identity: Box<[u8]>,
    /// The whole MSCC, for a request without a Rating-Group in its first MSCC.
    mscc: Box<[u8]>,
    /// The MSCC up to its Rating-Group, with a length that counts the Rating-Group AVP the
    /// answer appends (`U32_AVP_BYTES` more than `mscc`).
    mscc_before_rating_group: Box<[u8]>,
}

/// What the answer copies from one request.
#[derive(Default)]
struct Copied<'a> {
    session_id: Option<&'a [u8]>,
    request_type: Option<u32>,
    request_number: Option<u32>,
    rating_group: Option<u32>,
    proxy_info: bool,
}

impl Echo {
    /// Encodes the answer's fixed segments for this node's identity.
    pub fn new(local: &LocalIdentity) -> Self {
        let identity = body_of(|e| {
            e.u32(spec::RESULT_CODE, ResultCode::SUCCESS.0);
            e.str(spec::ORIGIN_HOST, &local.origin_host);
            e.str(spec::ORIGIN_REALM, &local.origin_realm);
            e.u32(spec::AUTH_APPLICATION_ID, ApplicationId::CREDIT_CONTROL.0);
        });
        let mscc = body_of(|e| write_mscc(e, None));
        let mut mscc_before_rating_group = body_of(|e| write_mscc(e, Some(0))).into_vec();
        mscc_before_rating_group.truncate(mscc_before_rating_group.len() - U32_AVP_BYTES);
        Self {
            local: local.clone(),
            identity,
            mscc,
            mscc_before_rating_group: mscc_before_rating_group.into_boxed_slice(),
        }
    }

    /// Writes the answer to a validated request into `out`.
    pub fn answer(&self, req: &MessageRef<'_>, out: &mut BytesMut) {
        if req.header.command != CommandCode::CREDIT_CONTROL {
            // RFC 6733 §7.1.3: application 4's other commands (RAR, ASR) are the server's to
            // send, not to receive.
            let text = "the echo responder answers Credit-Control requests only";
            error_answer(out, &self.local, req, ResultCode::COMMAND_UNSUPPORTED, Some(text), None);
            return;
        }
        let c = copy(req);
        let (Some(session_id), Some(request_type), Some(request_number)) =
            (c.session_id, c.request_type, c.request_number)
        else {
            // Dictionary validation requires all three (RFC 4006 §3.1), so only a dictionary
            // that changed the CCR's rules gets here.
            missing(&self.local, req, out, &c);
            return;
        };
        let mut e = begin_answer(out, req, ResultCode::SUCCESS);
        e.raw(session_id);
        e.raw(&self.identity);
        e.u32(CC_REQUEST_TYPE, request_type);
        e.u32(CC_REQUEST_NUMBER, request_number);
        match c.rating_group {
            Some(rg) => {
                e.raw(&self.mscc_before_rating_group);
                e.u32(RATING_GROUP, rg);
            }
            None => {
                e.raw(&self.mscc);
            }
        }
        if c.proxy_info {
            echo_proxy_info(&mut e, req);
        }
        e.finish();
    }
}

impl Application for Echo {
    fn id(&self) -> ApplicationId {
        ApplicationId::CREDIT_CONTROL
    }

    /// The answer depends only on the request, so a retransmission (RFC 6733 §5.5.4) gets the
    /// same answer by being answered again; the connection's duplicate cache would only add
    /// the copy and lock that `gyro serve`, whose engine remembers its own answers, skips too.
    fn remembers_answers(&self) -> bool {
        true
    }

    fn handle(&self, req: &Request<'_>, out: &mut BytesMut, _reply: &Reply<'_>) -> Handled {
        self.answer(&req.msg, out);
        Handled::Answered
    }
}

/// The one walk over the request's top-level AVPs.
fn copy<'a>(req: &MessageRef<'a>) -> Copied<'a> {
    let mut c = Copied::default();
    let mut first_mscc = true;
    for avp in req.avps().map_while(Result::ok) {
        if avp.vendor.0 != 0 {
            continue;
        }
        match avp.code {
            AvpCode::SESSION_ID if c.session_id.is_none() => c.session_id = Some(avp.raw),
            code if code == CC_REQUEST_TYPE.code => c.request_type = be_u32(avp.data),
            code if code == CC_REQUEST_NUMBER.code => c.request_number = be_u32(avp.data),
            code if code == MSCC.code && first_mscc => {
                first_mscc = false;
                c.rating_group = avp
                    .members()
                    .map_while(Result::ok)
                    .find(|m| m.code == RATING_GROUP.code && m.vendor.0 == 0)
                    .and_then(|m| be_u32(m.data));
            }
            AvpCode::PROXY_INFO => c.proxy_info = true,
            _ => {}
        }
    }
    c
}

fn be_u32(data: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(data.try_into().ok()?))
}

fn write_mscc(e: &mut Encoder<'_>, rating_group: Option<u32>) {
    let g = e.begin_group(MSCC);
    let gsu = e.begin_group(GRANTED_SERVICE_UNIT);
    e.u64(CC_TOTAL_OCTETS, GRANTED_OCTETS);
    e.end_group(gsu);
    e.u32(VALIDITY_TIME, VALIDITY_TIME_S);
    // TS 32.299 §7.2.128: the per-service outcome.
    e.u32(spec::RESULT_CODE, ResultCode::SUCCESS.0);
    // Last, so the variant without it is a prefix of this one.
    if let Some(rg) = rating_group {
        e.u32(RATING_GROUP, rg);
    }
    e.end_group(g);
}

/// The AVP bytes `write` encodes, without a message header.
fn body_of(write: impl FnOnce(&mut Encoder<'_>)) -> Box<[u8]> {
    let mut buf = BytesMut::new();
    let mut e = Encoder::new(
        &mut buf,
        CommandFlags(0),
        CommandCode::CREDIT_CONTROL,
        ApplicationId::CREDIT_CONTROL,
        0,
        0,
    );
    write(&mut e);
    e.finish();
    buf[HEADER_SIZE_BYTES..].into()
}

/// RFC 6733 §7.1.5 5005 with Failed-AVP holding "an example of the missing AVP" (§7.5): the
/// first one missing, with zero-filled data of its minimum length.
fn missing(local: &LocalIdentity, req: &MessageRef<'_>, out: &mut BytesMut, c: &Copied<'_>) {
    let (code, data_len, name) = if c.session_id.is_none() {
        (AvpCode::SESSION_ID, 0, "Session-Id")
    } else if c.request_type.is_none() {
        (CC_REQUEST_TYPE.code, 4, "CC-Request-Type")
    } else {
        (CC_REQUEST_NUMBER.code, 4, "CC-Request-Number")
    };
    let mut example = [0u8; U32_AVP_BYTES];
    let length = crate::limits::AVP_HEADER_SIZE_BYTES + data_len;
    example[..4].copy_from_slice(&code.0.to_be_bytes());
    example[4] = crate::diameter::AvpFlags::MANDATORY;
    example[5..8].copy_from_slice(&(length as u32).to_be_bytes()[1..]);
    let text = format!("missing AVP: {name}");
    error_answer(out, local, req, ResultCode::MISSING_AVP, Some(&text), Some(&example[..length]));
}
