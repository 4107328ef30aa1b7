//! Dictionary-driven validation of a framed message (RFC 6733 §7).
//!
//! Validation walks the AVP tree once, borrowing every byte; occurrence counters live on the
//! stack, so a valid message costs no allocation. The first problem found wins; the error
//! carries the Result-Code, the AVP at fault and the bytes that go into Failed-AVP.

use super::avp::{avp_header_len, AvpFlags, AvpFrameError, AvpIter, AvpRef};
use super::codes::{ApplicationId, AvpCode, ResultCode, VendorId};
use super::dictionary::{CommandDef, Dictionary, Rule, RuleSet, RULES_PER_GROUP_MAX};
use super::message::MessageRef;
use super::types::{self, AvpType, ValueError};
use crate::limits::{AVPS_PER_MESSAGE_MAX, AVP_NESTING_DEPTH_MAX};

/// What is wrong with a message. Each maps to one Result-Code (RFC 6733 §7.1).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Violation {
    /// 3001: no application we know defines this command code.
    CommandUnsupported,
    /// 3007: the command is known, but not for an application this node supports.
    ApplicationUnsupported,
    /// 3008: the E bit on a request.
    InvalidHeaderBits,
    /// 3009: an AVP's flags contradict its definition.
    InvalidAvpBits,
    /// 5001: an AVP we do not know, with the M bit set.
    AvpUnsupported,
    /// 5004: the data does not hold a valid value of its type (or nesting is too deep).
    InvalidAvpValue,
    /// 5005: a required AVP is absent.
    MissingAvp,
    /// 5008: an AVP that must not appear in this command or group.
    AvpNotAllowed,
    /// 5009: more occurrences than allowed (or more AVPs than a message may carry).
    AvpOccursTooManyTimes,
    /// 5014: an AVP length that is wrong for the type or runs past its container.
    InvalidAvpLength,
}

impl Violation {
    pub fn result_code(self) -> ResultCode {
        match self {
            Self::CommandUnsupported => ResultCode::COMMAND_UNSUPPORTED,
            Self::ApplicationUnsupported => ResultCode::APPLICATION_UNSUPPORTED,
            Self::InvalidHeaderBits => ResultCode::INVALID_HDR_BITS,
            Self::InvalidAvpBits => ResultCode::INVALID_AVP_BITS,
            Self::AvpUnsupported => ResultCode::AVP_UNSUPPORTED,
            Self::InvalidAvpValue => ResultCode::INVALID_AVP_VALUE,
            Self::MissingAvp => ResultCode::MISSING_AVP,
            Self::AvpNotAllowed => ResultCode::AVP_NOT_ALLOWED,
            Self::AvpOccursTooManyTimes => ResultCode::AVP_OCCURS_TOO_MANY_TIMES,
            Self::InvalidAvpLength => ResultCode::INVALID_AVP_LENGTH,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::CommandUnsupported => "command code not supported",
            Self::ApplicationUnsupported => "application not supported for this command",
            Self::InvalidHeaderBits => "invalid header flags (E bit set on a request)",
            Self::InvalidAvpBits => "AVP flags contradict its definition",
            Self::AvpUnsupported => "unknown AVP with the M bit set",
            Self::InvalidAvpValue => "invalid AVP value",
            Self::MissingAvp => "missing AVP",
            Self::AvpNotAllowed => "AVP not allowed here",
            Self::AvpOccursTooManyTimes => "AVP occurs too many times",
            Self::InvalidAvpLength => "invalid AVP length",
        }
    }
}

/// A validation failure: the violation, the AVP it concerns and what goes into Failed-AVP.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Invalid {
    pub violation: Violation,
    pub avp: Option<(AvpCode, VendorId)>,
    /// The offending AVP (wrapped in its parent groups, RFC 6733 §7.5), or empty.
    pub failed_avp: Vec<u8>,
}

impl Invalid {
    fn bare(violation: Violation) -> Self {
        Self { violation, avp: None, failed_avp: Vec::new() }
    }

    fn at(violation: Violation, avp: &AvpRef<'_>) -> Self {
        Self { violation, avp: Some((avp.code, avp.vendor)), failed_avp: avp.raw.to_vec() }
    }

    pub fn result_code(&self) -> ResultCode {
        self.violation.result_code()
    }

    /// Error-Message text, naming the AVP by its dictionary name where known.
    pub fn message(&self, dict: &Dictionary) -> String {
        match self.avp {
            None => self.violation.describe().to_owned(),
            Some((code, vendor)) => {
                let name = dict.lookup(code, vendor).map(|i| dict.avp(i).name.as_str());
                match (name, vendor.0) {
                    (Some(n), 0) => format!("{}: {n} ({code})", self.violation.describe()),
                    (Some(n), v) => format!("{}: {n} ({code}, vendor {v})", self.violation.describe()),
                    (None, 0) => format!("{}: AVP {code}", self.violation.describe()),
                    (None, v) => format!("{}: AVP {code} vendor {v}", self.violation.describe()),
                }
            }
        }
    }
}

/// Validates a request against the dictionary and the applications this node supports, and
/// returns the command definition it matched.
pub fn validate_request<'d>(
    dict: &'d Dictionary,
    msg: &MessageRef<'_>,
    supported: &[ApplicationId],
) -> Result<&'d CommandDef, Invalid> {
    let h = msg.header;
    debug_assert!(h.flags.is_request());
    // RFC 6733 §3: "E(rror) – If set, the message contains a protocol error ... this bit MUST
    // NOT be set in request messages" → 3008 (§7.1.3).
    if h.flags.is_error() {
        return Err(Invalid::bare(Violation::InvalidHeaderBits));
    }
    let command = command_for(dict, msg, supported)?;
    check_body(dict, &command.request, msg.body)?;
    Ok(command)
}

/// Validates a message body. A top-level AVP that cannot be framed makes every judgement about
/// the other AVPs unsafe (a skipped padding shifts all that follows), so when content is wrong
/// the rest of the body is framed too, and 5014 wins over an earlier AVP's flags or value. On
/// the happy path the body is walked once.
fn check_body(dict: &Dictionary, rules: &RuleSet, body: &[u8]) -> Result<(), Invalid> {
    check_group(dict, rules, body, 0, &mut 0).map_err(|e| match check_framing(dict, body) {
        Err(framing) => framing,
        Ok(()) => e,
    })
}

fn check_framing(dict: &Dictionary, body: &[u8]) -> Result<(), Invalid> {
    for item in AvpIter::new(body) {
        item.map_err(|e| frame_invalid(dict, body, e))?;
    }
    Ok(())
}

/// Validates an answer we received; answers are never answered, so the caller only logs.
pub fn validate_answer<'d>(
    dict: &'d Dictionary,
    msg: &MessageRef<'_>,
    supported: &[ApplicationId],
) -> Result<&'d CommandDef, Invalid> {
    let command = command_for(dict, msg, supported)?;
    // RFC 6733 §7.2: an answer with the E bit follows the generic error format, not the
    // command's ABNF, so only its AVPs' framing and values are checked.
    let rules = if msg.header.flags.is_error() { &RuleSet::EMPTY } else { &command.answer };
    check_body(dict, rules, msg.body)?;
    Ok(command)
}

fn command_for<'d>(
    dict: &'d Dictionary,
    msg: &MessageRef<'_>,
    supported: &[ApplicationId],
) -> Result<&'d CommandDef, Invalid> {
    let h = msg.header;
    let Some(command) = dict.command(h.application, h.command) else {
        // RFC 6733 §7.1.3: 3001 when the command code is unknown; 3007 when it is known but
        // not for this application.
        let v = if dict.command_known(h.command) {
            Violation::ApplicationUnsupported
        } else {
            Violation::CommandUnsupported
        };
        return Err(Invalid::bare(v));
    };
    if !supported.contains(&h.application) {
        return Err(Invalid::bare(Violation::ApplicationUnsupported));
    }
    Ok(command)
}

fn check_group(
    dict: &Dictionary,
    rules: &RuleSet,
    buf: &[u8],
    depth: usize,
    total: &mut usize,
) -> Result<(), Invalid> {
    debug_assert!(rules.len() <= RULES_PER_GROUP_MAX);
    // Saturating u8 counters: a max above 254 behaves as unbounded, which no RFC rule needs.
    let mut counts = [0u8; RULES_PER_GROUP_MAX];
    for item in AvpIter::new(buf) {
        let avp = item.map_err(|e| frame_invalid(dict, buf, e))?;
        *total += 1;
        if *total > AVPS_PER_MESSAGE_MAX {
            return Err(Invalid::at(Violation::AvpOccursTooManyTimes, &avp));
        }
        let Some(index) = dict.lookup(avp.code, avp.vendor) else {
            // RFC 6733 §4.1: an unrecognised AVP with the M bit set "MUST" be rejected with
            // 5001; without it the AVP "MAY" be ignored, which we do.
            if avp.flags.is_mandatory() {
                return Err(Invalid::at(Violation::AvpUnsupported, &avp));
            }
            continue;
        };
        let hot = dict.hot(index);
        // RFC 6733 §7.1.3 3009: flags "inconsistent with the AVP's definition". We are strict
        // only about the M bit on IETF AVPs that must not carry it; 3GPP senders differ in
        // practice (go-diameter#105), and rejecting a known AVP for its flags breaks interop.
        if avp.vendor == VendorId::IETF && avp.flags.is_mandatory() && hot.must_not_mandatory {
            return Err(Invalid::at(Violation::InvalidAvpBits, &avp));
        }
        if let Some(pos) = rules.slot(index) {
            counts[pos] = counts[pos].saturating_add(1);
            let max = rules.rules()[pos].max;
            if max == 0 {
                return Err(Invalid::at(Violation::AvpNotAllowed, &avp));
            }
            if u16::from(counts[pos]) > max {
                return Err(Invalid::at(Violation::AvpOccursTooManyTimes, &avp));
            }
        }
        check_value(dict, &avp, hot, index, depth, total)?;
    }
    for pos in rules.required() {
        let rule = &rules.rules()[pos];
        if u16::from(counts[pos]) < rule.min {
            return Err(missing(dict, rule));
        }
    }
    Ok(())
}

fn check_value(
    dict: &Dictionary,
    avp: &AvpRef<'_>,
    hot: super::dictionary::HotAvp,
    index: super::dictionary::AvpIndex,
    depth: usize,
    total: &mut usize,
) -> Result<(), Invalid> {
    let ty = hot.ty;
    if ty == AvpType::Grouped {
        if depth + 1 >= AVP_NESTING_DEPTH_MAX {
            return Err(Invalid::at(Violation::InvalidAvpValue, avp));
        }
        let def = dict.avp(index);
        return check_group(dict, &def.rules, avp.data, depth + 1, total).map_err(|inner| wrap(avp, inner));
    }
    if ty == AvpType::Enumerated {
        let Ok(bytes) = <[u8; 4]>::try_from(avp.data) else {
            return Err(Invalid::at(Violation::InvalidAvpLength, avp));
        };
        let v = i32::from_be_bytes(bytes);
        // Enumerations are open-world unless the dictionary lists values and the sender
        // insists (M bit): then an unknown value is 5004 (RFC 6733 §4.3.1 Enumerated).
        if avp.flags.is_mandatory() && hot.has_enums && dict.avp(index).enum_name(v).is_none() {
            return Err(Invalid::at(Violation::InvalidAvpValue, avp));
        }
        return Ok(());
    }
    match types::check_value(ty, avp.data) {
        Ok(()) => Ok(()),
        Err(ValueError::Length { .. }) => Err(Invalid::at(Violation::InvalidAvpLength, avp)),
        Err(ValueError::Value { .. }) => Err(Invalid::at(Violation::InvalidAvpValue, avp)),
    }
}

/// RFC 6733 §7.5: for an error inside a Grouped AVP, "the Failed-AVP MAY contain the grouped
/// AVP, which in turn contains the single offending AVP".
fn wrap(parent: &AvpRef<'_>, mut inner: Invalid) -> Invalid {
    if inner.failed_avp.is_empty() {
        return inner;
    }
    let header_len = avp_header_len(parent.flags);
    let padded = (inner.failed_avp.len() + 3) & !3;
    let mut out = Vec::with_capacity(header_len + padded);
    out.extend_from_slice(&parent.raw[..header_len]);
    let length = (header_len + padded) as u32;
    out[5..8].copy_from_slice(&length.to_be_bytes()[1..]);
    out.extend_from_slice(&inner.failed_avp);
    out.resize(header_len + padded, 0);
    inner.failed_avp = out;
    inner
}

/// RFC 6733 §7.5: for a missing AVP, Failed-AVP holds "an example of the missing AVP complete
/// with the Vendor-Id if applicable. The value field of the missing AVP should be of correct
/// minimum length and contain zeroes."
fn missing(dict: &Dictionary, rule: &Rule) -> Invalid {
    let def = dict.avp(rule.avp);
    let flags = AvpFlags(def.must.0 & (AvpFlags::VENDOR | AvpFlags::MANDATORY));
    let failed_avp = example_avp(def.code, flags, def.vendor, def.ty.min_len());
    Invalid { violation: Violation::MissingAvp, avp: Some((def.code, def.vendor)), failed_avp }
}

fn example_avp(code: AvpCode, flags: AvpFlags, vendor: VendorId, data_len: usize) -> Vec<u8> {
    let header_len = avp_header_len(flags);
    let length = header_len + data_len;
    let mut out = Vec::with_capacity(length);
    out.extend_from_slice(&code.0.to_be_bytes());
    out.push(flags.0);
    out.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
    if flags.is_vendor() {
        out.extend_from_slice(&vendor.0.to_be_bytes());
    }
    out.resize(length, 0);
    out
}

/// RFC 6733 §7.1.5 5014: "In cases where the erroneous AVP length value exceeds the message
/// length or is less than the minimum AVP header length, it is sufficient to include the
/// offending AVP header and a zero filled payload of the minimum required length for the
/// payload space of that AVP type." The copy carries a consistent length so the answer itself
/// stays well-formed.
fn frame_invalid(dict: &Dictionary, buf: &[u8], e: AvpFrameError) -> Invalid {
    let (code, vendor, offset) = match e {
        AvpFrameError::LengthTooShort { code, vendor, offset, .. }
        | AvpFrameError::Overrun { code, vendor, offset, .. } => (code, vendor, offset),
        AvpFrameError::TruncatedHeader { remaining } => {
            let at = buf.len() - remaining;
            let Some(b) = buf.get(at..at + 4) else {
                return Invalid::bare(Violation::InvalidAvpLength);
            };
            (AvpCode(u32::from_be_bytes([b[0], b[1], b[2], b[3]])), VendorId(0), at)
        }
    };
    let flags_byte = buf.get(offset + 4).copied().unwrap_or(0);
    let mut flags = AvpFlags(flags_byte & (AvpFlags::VENDOR | AvpFlags::MANDATORY | AvpFlags::PROTECTED));
    if buf.len() < offset + 12 {
        flags.0 &= !AvpFlags::VENDOR;
    }
    let min = dict.lookup(code, vendor).map_or(0, |i| dict.avp(i).ty.min_len());
    Invalid {
        violation: Violation::InvalidAvpLength,
        avp: Some((code, vendor)),
        failed_avp: example_avp(code, flags, vendor, min),
    }
}
