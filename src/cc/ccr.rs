//! The typed Credit-Control-Request (RFC 4006 §3.1, TS 32.299 §6.4.2): parsed once at the
//! boundary, so the engine never meets a missing Session-Id or an unknown request type.
//!
//! Parsing borrows every string from the message; lists are small vectors that stay inline for
//! the common case, so a CCR-U with one MSCC allocates nothing.

use smallvec::SmallVec;

use crate::catalog::SubscriptionKind;
use crate::diameter::{AvpRef, MessageRef, ResultCode, VendorId};
use crate::limits::MSCC_PER_REQUEST_MAX;

/// RFC 4006 §8.3 CC-Request-Type.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RequestType {
    Initial = 1,
    Update = 2,
    Termination = 3,
    Event = 4,
}

/// RFC 4006 §8.41 Requested-Action.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RequestedAction {
    DirectDebiting = 0,
    RefundAccount = 1,
    CheckBalance = 2,
    PriceEnquiry = 3,
}

/// RFC 4006 §8.27 Tariff-Change-Usage.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TariffChangeUsage {
    UnitBefore = 0,
    UnitAfter = 1,
    UnitIndeterminate = 2,
}

/// The unit AVPs of a Requested-, Used- or Granted-Service-Unit (RFC 4006 §8.17–§8.19).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Units {
    pub time: Option<u32>,
    pub total_octets: Option<u64>,
    pub input_octets: Option<u64>,
    pub output_octets: Option<u64>,
    pub specific: Option<u64>,
    /// RFC 4006 §8.22 CC-Money: Value-Digits × 10^Exponent in the ISO 4217 currency.
    pub money: Option<Money>,
}

/// A CC-Money / Unit-Value amount as received.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Money {
    pub value_digits: i64,
    pub exponent: i32,
    pub currency: Option<u16>,
}

impl Units {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Octets used: CC-Total-Octets, or input + output when only those are reported.
    pub fn octets(&self) -> Option<u64> {
        self.total_octets.or(match (self.input_octets, self.output_octets) {
            (None, None) => None,
            (i, o) => Some(i.unwrap_or(0).saturating_add(o.unwrap_or(0))),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct UsedUnits {
    pub units: Units,
    pub tariff_change: Option<TariffChangeUsage>,
    /// TS 32.299 §7.2.175 Reporting-Reason inside USU.
    pub reporting_reason: Option<u32>,
}

/// One Multiple-Services-Credit-Control (or the command-level single-service form).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Mscc<'a> {
    pub rating_group: Option<u32>,
    pub service_id: Option<u32>,
    /// `Some` when a Requested-Service-Unit is present (possibly empty: "grant what you
    /// decide", RFC 4006 §8.18).
    pub requested: Option<Units>,
    pub used: SmallVec<[UsedUnits; 1]>,
    /// TS 32.299 Reporting-Reason at MSCC level.
    pub reporting_reason: Option<u32>,
    /// The MSCC as received, for Failed-AVP.
    pub raw: &'a [u8],
}

/// A parsed CCR.
#[derive(Clone, Debug)]
pub struct Ccr<'a> {
    pub session_id: &'a str,
    pub origin_host: &'a str,
    pub origin_realm: &'a str,
    pub request_type: RequestType,
    pub request_number: u32,
    pub service_context: &'a str,
    /// The five-digit TS 32.299 context (32251 Gy, 32260 IMS, 32274 SMS, …), if recognisable.
    pub context: Option<u32>,
    pub subscriptions: SmallVec<[(SubscriptionKind, &'a str); 2]>,
    pub multiple_services: bool,
    pub msccs: SmallVec<[Mscc<'a>; 2]>,
    /// RSU/USU at command level (RFC 4006 single-service form), when no MSCC is present.
    pub single: Option<Mscc<'a>>,
    pub requested_action: Option<RequestedAction>,
    /// NTP seconds.
    pub event_timestamp: Option<u32>,
    pub termination_cause: Option<u32>,
    /// TS 32.299 §7.2.12 AoC-Request-Type: 0 NOT_REQUESTED, 1 AoC_FULL, 2 AoC_COST_ONLY,
    /// 3 AoC_TARIFF_ONLY.
    pub aoc_request_type: Option<u32>,
    /// RFC 4006 §8.49 User-Equipment-Info, as received (IMEISV, MAC, …), for records.
    pub user_equipment_info: Option<&'a [u8]>,
    /// TS 32.299 §7.2.200 Service-Information (PS-, IMS-, SMS-Information …), as received, for
    /// records and for rating rules that look inside it.
    pub service_information: Option<&'a [u8]>,
    /// A top-level Proxy-Info is present, which the answer must echo (RFC 6733 §6.2). Noted
    /// during the parse so that writing the answer scans the request again only when it has one.
    pub proxy_info: bool,
}

/// A CCR that is well-formed Diameter but cannot be charged as it stands.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CcrError {
    pub result: ResultCode,
    pub message: &'static str,
    pub failed_avp: Vec<u8>,
}

impl CcrError {
    fn at(result: ResultCode, message: &'static str, avp: &AvpRef<'_>) -> Self {
        Self { result, message, failed_avp: avp.raw.to_vec() }
    }
}

mod code {
    pub(super) const SUBSCRIPTION_ID: u32 = 443;
    pub(super) const SUBSCRIPTION_ID_TYPE: u32 = 450;
    pub(super) const SUBSCRIPTION_ID_DATA: u32 = 444;
    pub(super) const CC_REQUEST_TYPE: u32 = 416;
    pub(super) const CC_REQUEST_NUMBER: u32 = 415;
    pub(super) const SERVICE_CONTEXT_ID: u32 = 461;
    pub(super) const MULTIPLE_SERVICES_INDICATOR: u32 = 455;
    pub(super) const MSCC: u32 = 456;
    pub(super) const RSU: u32 = 437;
    pub(super) const USU: u32 = 446;
    pub(super) const RATING_GROUP: u32 = 432;
    pub(super) const SERVICE_IDENTIFIER: u32 = 439;
    pub(super) const CC_TIME: u32 = 420;
    pub(super) const CC_TOTAL_OCTETS: u32 = 421;
    pub(super) const CC_INPUT_OCTETS: u32 = 412;
    pub(super) const CC_OUTPUT_OCTETS: u32 = 414;
    pub(super) const CC_SERVICE_SPECIFIC_UNITS: u32 = 417;
    pub(super) const TARIFF_CHANGE_USAGE: u32 = 452;
    pub(super) const REQUESTED_ACTION: u32 = 436;
    pub(super) const EVENT_TIMESTAMP: u32 = 55;
    pub(super) const TERMINATION_CAUSE: u32 = 295;
    /// TS 32.299 Reporting-Reason (vendor 10415).
    pub(super) const REPORTING_REASON: u32 = 872;
    pub(super) const USER_EQUIPMENT_INFO: u32 = 458;
    pub(super) const PROXY_INFO: u32 = 284;
    pub(super) const CC_MONEY: u32 = 413;
    pub(super) const UNIT_VALUE: u32 = 445;
    pub(super) const VALUE_DIGITS: u32 = 447;
    pub(super) const EXPONENT: u32 = 429;
    pub(super) const CURRENCY_CODE: u32 = 425;
    /// TS 32.299 AoC-Request-Type (vendor 10415).
    pub(super) const AOC_REQUEST_TYPE: u32 = 2055;
    /// TS 32.299 Service-Information (vendor 10415).
    pub(super) const SERVICE_INFORMATION: u32 = 873;
}

fn u32_of(a: &AvpRef<'_>) -> Option<u32> {
    Some(u32::from_be_bytes(a.data.try_into().ok()?))
}

fn u64_of(a: &AvpRef<'_>) -> Option<u64> {
    Some(u64::from_be_bytes(a.data.try_into().ok()?))
}

fn str_of<'a>(a: &AvpRef<'a>) -> Option<&'a str> {
    crate::diameter::types::utf8(a.data).ok()
}

impl<'a> Ccr<'a> {
    /// Parses a CCR that already passed dictionary validation (so types and lengths are right
    /// and the command's required AVPs are present).
    pub fn parse(msg: &MessageRef<'a>) -> Result<Self, CcrError> {
        let mut session_id = None;
        let mut origin_host = "";
        let mut origin_realm = "";
        let mut request_type = None;
        let mut request_number = None;
        let mut service_context = None;
        let mut ccr = Self {
            session_id: "",
            origin_host: "",
            origin_realm: "",
            request_type: RequestType::Initial,
            request_number: 0,
            service_context: "",
            context: None,
            subscriptions: SmallVec::new(),
            multiple_services: false,
            msccs: SmallVec::new(),
            single: None,
            requested_action: None,
            event_timestamp: None,
            termination_cause: None,
            user_equipment_info: None,
            service_information: None,
            aoc_request_type: None,
            proxy_info: false,
        };
        let mut single = Mscc::default();
        for a in msg.avps().map_while(Result::ok) {
            if a.vendor == VendorId::TGPP && a.code.0 == code::SERVICE_INFORMATION {
                ccr.service_information = Some(a.raw);
            }
            if a.vendor == VendorId::TGPP && a.code.0 == code::AOC_REQUEST_TYPE {
                ccr.aoc_request_type = u32_of(&a);
            }
            if a.vendor != VendorId::IETF {
                continue;
            }
            match a.code.0 {
                263 => session_id = str_of(&a),
                264 => origin_host = str_of(&a).unwrap_or(""),
                296 => origin_realm = str_of(&a).unwrap_or(""),
                code::CC_REQUEST_TYPE => {
                    request_type = Some(match u32_of(&a) {
                        Some(1) => RequestType::Initial,
                        Some(2) => RequestType::Update,
                        Some(3) => RequestType::Termination,
                        Some(4) => RequestType::Event,
                        _ => {
                            return Err(CcrError::at(
                                ResultCode::INVALID_AVP_VALUE,
                                "unknown CC-Request-Type",
                                &a,
                            ))
                        }
                    })
                }
                code::CC_REQUEST_NUMBER => request_number = u32_of(&a),
                code::SERVICE_CONTEXT_ID => service_context = str_of(&a),
                code::SUBSCRIPTION_ID => {
                    if let Some(s) = subscription(&a)? {
                        ccr.subscriptions.push(s);
                    }
                }
                code::MULTIPLE_SERVICES_INDICATOR => ccr.multiple_services = u32_of(&a) == Some(1),
                code::MSCC => {
                    if ccr.msccs.len() == MSCC_PER_REQUEST_MAX {
                        return Err(CcrError::at(
                            ResultCode::AVP_OCCURS_TOO_MANY_TIMES,
                            "too many Multiple-Services-Credit-Control AVPs",
                            &a,
                        ));
                    }
                    ccr.msccs.push(mscc(&a)?);
                }
                code::RSU => single.requested = Some(units(&a)),
                code::USU => single.used.push(used(&a)),
                code::RATING_GROUP => single.rating_group = u32_of(&a),
                code::SERVICE_IDENTIFIER => single.service_id = u32_of(&a),
                code::REQUESTED_ACTION => {
                    ccr.requested_action = Some(match u32_of(&a) {
                        Some(0) => RequestedAction::DirectDebiting,
                        Some(1) => RequestedAction::RefundAccount,
                        Some(2) => RequestedAction::CheckBalance,
                        Some(3) => RequestedAction::PriceEnquiry,
                        _ => {
                            return Err(CcrError::at(
                                ResultCode::INVALID_AVP_VALUE,
                                "unknown Requested-Action",
                                &a,
                            ))
                        }
                    })
                }
                code::EVENT_TIMESTAMP => ccr.event_timestamp = u32_of(&a),
                code::TERMINATION_CAUSE => ccr.termination_cause = u32_of(&a),
                code::USER_EQUIPMENT_INFO => ccr.user_equipment_info = Some(a.raw),
                code::PROXY_INFO => ccr.proxy_info = true,
                _ => {}
            }
        }
        let missing = |message| CcrError { result: ResultCode::MISSING_AVP, message, failed_avp: Vec::new() };
        ccr.session_id = session_id.ok_or_else(|| missing("Session-Id missing"))?;
        ccr.request_type = request_type.ok_or_else(|| missing("CC-Request-Type missing"))?;
        ccr.request_number = request_number.ok_or_else(|| missing("CC-Request-Number missing"))?;
        ccr.service_context = service_context.ok_or_else(|| missing("Service-Context-Id missing"))?;
        ccr.origin_host = origin_host;
        ccr.origin_realm = origin_realm;
        ccr.context = context_number(ccr.service_context);
        if ccr.msccs.is_empty()
            && (single.requested.is_some() || !single.used.is_empty() || single.rating_group.is_some())
        {
            ccr.single = Some(single);
        }
        Ok(ccr)
    }

    /// The MSCCs, or the single-service form as one entry.
    pub fn services(&self) -> &[Mscc<'a>] {
        match &self.single {
            Some(s) => std::slice::from_ref(s),
            None => &self.msccs,
        }
    }
}

fn subscription<'a>(a: &AvpRef<'a>) -> Result<Option<(SubscriptionKind, &'a str)>, CcrError> {
    let mut kind = None;
    let mut data = None;
    for m in a.members().map_while(Result::ok) {
        match m.code.0 {
            code::SUBSCRIPTION_ID_TYPE => {
                let Some(k) = u32_of(&m).and_then(SubscriptionKind::from_wire) else {
                    return Err(CcrError::at(
                        ResultCode::INVALID_AVP_VALUE,
                        "unknown Subscription-Id-Type",
                        &m,
                    ));
                };
                kind = Some(k);
            }
            code::SUBSCRIPTION_ID_DATA => data = str_of(&m),
            _ => {}
        }
    }
    Ok(kind.zip(data))
}

fn units(a: &AvpRef<'_>) -> Units {
    let mut u = Units::default();
    for m in a.members().map_while(Result::ok).filter(|m| m.vendor == VendorId::IETF) {
        match m.code.0 {
            code::CC_TIME => u.time = u32_of(&m),
            code::CC_TOTAL_OCTETS => u.total_octets = u64_of(&m),
            code::CC_INPUT_OCTETS => u.input_octets = u64_of(&m),
            code::CC_OUTPUT_OCTETS => u.output_octets = u64_of(&m),
            code::CC_SERVICE_SPECIFIC_UNITS => u.specific = u64_of(&m),
            code::CC_MONEY => u.money = money(&m),
            _ => {}
        }
    }
    u
}

fn money(a: &AvpRef<'_>) -> Option<Money> {
    let mut out = Money { value_digits: 0, exponent: 0, currency: None };
    let mut seen = false;
    for m in a.members().map_while(Result::ok).filter(|m| m.vendor == VendorId::IETF) {
        match m.code.0 {
            code::UNIT_VALUE => {
                for v in m.members().map_while(Result::ok) {
                    match v.code.0 {
                        code::VALUE_DIGITS => {
                            out.value_digits = i64::from_be_bytes(v.data.try_into().ok()?);
                            seen = true;
                        }
                        code::EXPONENT => out.exponent = i32::from_be_bytes(v.data.try_into().ok()?),
                        _ => {}
                    }
                }
            }
            code::CURRENCY_CODE => out.currency = u32_of(&m).and_then(|c| u16::try_from(c).ok()),
            _ => {}
        }
    }
    seen.then_some(out)
}

fn used(a: &AvpRef<'_>) -> UsedUnits {
    let mut out = UsedUnits { units: units(a), ..UsedUnits::default() };
    for m in a.members().map_while(Result::ok) {
        match (m.code.0, m.vendor) {
            (code::TARIFF_CHANGE_USAGE, VendorId::IETF) => {
                out.tariff_change = match u32_of(&m) {
                    Some(0) => Some(TariffChangeUsage::UnitBefore),
                    Some(1) => Some(TariffChangeUsage::UnitAfter),
                    Some(2) => Some(TariffChangeUsage::UnitIndeterminate),
                    _ => None,
                }
            }
            (code::REPORTING_REASON, VendorId::TGPP) => out.reporting_reason = u32_of(&m),
            _ => {}
        }
    }
    out
}

fn mscc<'a>(a: &AvpRef<'a>) -> Result<Mscc<'a>, CcrError> {
    let mut out = Mscc { raw: a.raw, ..Mscc::default() };
    for m in a.members().map_while(Result::ok) {
        match (m.code.0, m.vendor) {
            (code::RATING_GROUP, VendorId::IETF) => out.rating_group = u32_of(&m),
            (code::SERVICE_IDENTIFIER, VendorId::IETF) => out.service_id = u32_of(&m),
            (code::RSU, VendorId::IETF) => out.requested = Some(units(&m)),
            (code::USU, VendorId::IETF) => out.used.push(used(&m)),
            (code::REPORTING_REASON, VendorId::TGPP) => out.reporting_reason = u32_of(&m),
            _ => {}
        }
    }
    Ok(out)
}

/// TS 32.299 §7.1.12: `[[[[ext.]MNC.]MCC.]R.]NNNNN@3gpp.org`, or a bare `NNNNN`. The service
/// is the last dot-separated label before the `@`.
///
/// Read byte by byte: the `str` split iterators and `parse` cost ~250 instructions on every
/// CCR for what is two short scans and five digits.
pub fn context_number(context: &str) -> Option<u32> {
    let bytes = context.as_bytes();
    let local = bytes.iter().position(|&b| b == b'@').map_or(bytes, |at| &bytes[..at]);
    let last = local.iter().rposition(|&b| b == b'.').map_or(local, |dot| &local[dot + 1..]);
    let digits: &[u8; 5] = last.try_into().ok()?;
    digits.iter().try_fold(0u32, |n, &d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
}

/// A stable 64-bit key of a Session-Id (FNV-1a), used for reservation keys and journal records.
pub fn session_key(session_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in session_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_numbers() {
        assert_eq!(context_number("32251@3gpp.org"), Some(32251));
        assert_eq!(context_number("10.262.01.R8.32260@3gpp.org"), Some(32260));
        assert_eq!(context_number("32274"), Some(32274));
        assert_eq!(context_number("version1.ccapp@example.com"), None);
        assert_eq!(context_number("3225@3gpp.org"), None);
        assert_eq!(context_number("322510@3gpp.org"), None);
        assert_eq!(context_number("3225a@3gpp.org"), None);
        assert_eq!(context_number("x.32251"), Some(32251));
        assert_eq!(context_number("32251@a@b"), Some(32251));
        assert_eq!(context_number(""), None);
    }

    /// The `str`-based reading this module used before the byte-level one.
    fn context_number_by_str(context: &str) -> Option<u32> {
        let local = context.split('@').next()?;
        let last = local.rsplit('.').next()?;
        if last.len() == 5 && last.bytes().all(|b| b.is_ascii_digit()) {
            last.parse().ok()
        } else {
            None
        }
    }

    proptest::proptest! {
        #[test]
        fn context_number_agrees_with_the_str_reading(s in "([0-9a-z]{0,6}[.@]){0,4}[0-9]{0,6}(@[a-z.]{0,8})?") {
            proptest::prop_assert_eq!(context_number(&s), context_number_by_str(&s));
        }

        #[test]
        fn context_number_agrees_on_any_text(s in "\\PC{0,24}") {
            proptest::prop_assert_eq!(context_number(&s), context_number_by_str(&s));
        }
    }

    #[test]
    fn parses_the_python_diameter_vectors() {
        let read =
            |n: &str| std::fs::read(format!("{}/tests/vectors/{n}.bin", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let bytes = read("ccr_u");
        let msg = MessageRef::parse(&bytes).unwrap();
        let ccr = Ccr::parse(&msg).unwrap();
        assert_eq!(ccr.request_type, RequestType::Update);
        assert_eq!(ccr.request_number, 1);
        assert_eq!(ccr.context, Some(32251));
        assert_eq!(
            ccr.subscriptions.as_slice(),
            &[(SubscriptionKind::E164, "491700000001"), (SubscriptionKind::Imsi, "262010000000001")]
        );
        assert_eq!(ccr.msccs.len(), 1);
        let m = &ccr.msccs[0];
        assert_eq!(m.rating_group, Some(10));
        assert_eq!(m.requested, Some(Units::default()));
        assert_eq!(m.used[0].units.octets(), Some(1_048_576));
        assert!(ccr.service_information.is_some_and(|s| s.len() > 12), "PS-Information kept");

        let bytes = read("ccr_t");
        let ccr = Ccr::parse(&MessageRef::parse(&bytes).unwrap()).unwrap();
        assert_eq!(ccr.request_type, RequestType::Termination);
        assert_eq!(ccr.msccs[0].used[0].reporting_reason, Some(2));

        let bytes = read("ccr_e_sms");
        let ccr = Ccr::parse(&MessageRef::parse(&bytes).unwrap()).unwrap();
        assert_eq!(ccr.request_type, RequestType::Event);
        assert_eq!(ccr.requested_action, Some(RequestedAction::DirectDebiting));
        assert_eq!(ccr.services()[0].requested.unwrap().specific, Some(1));
    }
}
