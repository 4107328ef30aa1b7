//! Writing Credit-Control-Answers (RFC 4006 §3.2, TS 32.299 §6.4.3).

use bytes::BytesMut;

use crate::catalog::FinalUnitAction;
use crate::diameter::answer::{begin_answer, echo_proxy_info};
use crate::diameter::encode::spec;
use crate::diameter::{AvpSpec, Encoder, MessageRef, ResultCode};
use crate::rating::{Currency, MoneyMinor, UnitKind};

pub(crate) mod avp {
    use crate::diameter::AvpSpec;

    pub(crate) const CC_REQUEST_NUMBER: AvpSpec = AvpSpec::mandatory(415);
    pub(crate) const CC_REQUEST_TYPE: AvpSpec = AvpSpec::mandatory(416);
    pub(crate) const MSCC: AvpSpec = AvpSpec::mandatory(456);
    pub(crate) const GSU: AvpSpec = AvpSpec::mandatory(431);
    pub(crate) const RATING_GROUP: AvpSpec = AvpSpec::mandatory(432);
    pub(crate) const SERVICE_IDENTIFIER: AvpSpec = AvpSpec::mandatory(439);
    pub(crate) const VALIDITY_TIME: AvpSpec = AvpSpec::mandatory(448);
    pub(crate) const CC_TIME: AvpSpec = AvpSpec::mandatory(420);
    pub(crate) const CC_TOTAL_OCTETS: AvpSpec = AvpSpec::mandatory(421);
    pub(crate) const CC_SERVICE_SPECIFIC_UNITS: AvpSpec = AvpSpec::mandatory(417);
    pub(crate) const TARIFF_TIME_CHANGE: AvpSpec = AvpSpec::mandatory(451);
    pub(crate) const FINAL_UNIT_INDICATION: AvpSpec = AvpSpec::mandatory(430);
    pub(crate) const FINAL_UNIT_ACTION: AvpSpec = AvpSpec::mandatory(449);
    pub(crate) const REDIRECT_SERVER: AvpSpec = AvpSpec::mandatory(434);
    pub(crate) const REDIRECT_ADDRESS_TYPE: AvpSpec = AvpSpec::mandatory(433);
    pub(crate) const REDIRECT_SERVER_ADDRESS: AvpSpec = AvpSpec::mandatory(435);
    pub(crate) const FILTER_ID: AvpSpec = AvpSpec::mandatory(11);
    pub(crate) const RESTRICTION_FILTER_RULE: AvpSpec = AvpSpec::mandatory(438);
    pub(crate) const COST_INFORMATION: AvpSpec = AvpSpec::mandatory(423);
    pub(crate) const UNIT_VALUE: AvpSpec = AvpSpec::mandatory(445);
    pub(crate) const VALUE_DIGITS: AvpSpec = AvpSpec::mandatory(447);
    pub(crate) const EXPONENT: AvpSpec = AvpSpec::mandatory(429);
    pub(crate) const CURRENCY_CODE: AvpSpec = AvpSpec::mandatory(425);
    pub(crate) const CHECK_BALANCE_RESULT: AvpSpec = AvpSpec::mandatory(422);
    pub(crate) const REQUESTED_ACTION: AvpSpec = AvpSpec::mandatory(436);
    /// TS 32.299 §7.2.140 (vendor 10415).
    pub(crate) const REMAINING_BALANCE: AvpSpec = AvpSpec::tgpp(2021);
    pub(crate) const LOW_BALANCE_INDICATION: AvpSpec = AvpSpec::tgpp(2020);
    pub(crate) const TIME_QUOTA_THRESHOLD: AvpSpec = AvpSpec::tgpp(868);
    pub(crate) const VOLUME_QUOTA_THRESHOLD: AvpSpec = AvpSpec::tgpp(869);
    pub(crate) const UNIT_QUOTA_THRESHOLD: AvpSpec = AvpSpec::tgpp(1226);
    pub(crate) const QUOTA_HOLDING_TIME: AvpSpec = AvpSpec::tgpp(871);
}

/// Granted units of one MSCC.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Grant {
    pub unit: UnitKind,
    pub units: u64,
    /// Tariff-Time-Change as NTP seconds.
    pub tariff_time_change: Option<u32>,
}

/// The decision for one MSCC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MsccAnswer<'p> {
    pub rating_group: Option<u32>,
    pub service_id: Option<u32>,
    pub result: ResultCode,
    pub grant: Option<Grant>,
    pub validity_time_s: Option<u32>,
    pub final_unit: Option<&'p FinalUnitAction>,
    /// Restriction-Filter-Rules for a RESTRICT_ACCESS final unit.
    pub final_unit_rules: &'p [String],
    /// Remaining units at which the client should report (TS 32.299 quota thresholds).
    pub threshold: Option<u32>,
    pub quota_holding_time_s: Option<u32>,
}

impl MsccAnswer<'_> {
    /// 2001 for the service, nothing granted yet.
    pub fn success(rating_group: Option<u32>, service_id: Option<u32>) -> Self {
        Self {
            rating_group,
            service_id,
            result: ResultCode::SUCCESS,
            grant: None,
            validity_time_s: None,
            final_unit: None,
            final_unit_rules: &[],
            threshold: None,
            quota_holding_time_s: None,
        }
    }
}

/// Money for Cost-Information / Remaining-Balance.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Amount {
    pub money: MoneyMinor,
    pub currency: Currency,
}

/// Everything a CCA carries besides the echoed header fields.
#[derive(Clone, Debug, Default)]
pub struct Answer<'p> {
    pub msccs: smallvec::SmallVec<[MsccAnswer<'p>; 2]>,
    /// Present for the single-service form (units at command level).
    pub single: Option<MsccAnswer<'p>>,
    pub cost: Option<Amount>,
    pub remaining_balance: Option<Amount>,
    pub low_balance: bool,
    pub check_balance_enough: Option<bool>,
    pub requested_action: Option<u32>,
}

/// What identifies a CCA besides the request's header: who answers, and the echoed session
/// fields (RFC 4006 §3.2).
#[derive(Clone, Copy, Debug)]
pub struct Echo<'a> {
    pub origin_host: &'a str,
    pub origin_realm: &'a str,
    pub session_id: &'a str,
    pub request_type: u32,
    pub request_number: u32,
    /// The request carries Proxy-Info to echo (`Ccr::proxy_info`).
    pub proxy_info: bool,
}

/// Writes a CCA for `req` with command-level `result`.
pub fn write(
    out: &mut BytesMut,
    req: &MessageRef<'_>,
    echo: Echo<'_>,
    result: ResultCode,
    answer: &Answer<'_>,
) {
    let mut e = begin_answer(out, req, result);
    e.str(spec::SESSION_ID, echo.session_id);
    e.u32(spec::RESULT_CODE, result.0);
    e.str(spec::ORIGIN_HOST, echo.origin_host);
    e.str(spec::ORIGIN_REALM, echo.origin_realm);
    e.u32(spec::AUTH_APPLICATION_ID, 4);
    e.u32(avp::CC_REQUEST_TYPE, echo.request_type);
    e.u32(avp::CC_REQUEST_NUMBER, echo.request_number);
    if let Some(s) = &answer.single {
        // RFC 4006 §3.2 single-service form: GSU, Validity-Time and FUI at command level.
        write_units(&mut e, s);
    }
    for m in &answer.msccs {
        let g = e.begin_group(avp::MSCC);
        write_units(&mut e, m);
        if let Some(rg) = m.rating_group {
            e.u32(avp::RATING_GROUP, rg);
        }
        if let Some(sid) = m.service_id {
            e.u32(avp::SERVICE_IDENTIFIER, sid);
        }
        if let (Some(t), Some(g)) = (m.threshold, m.grant) {
            let spec = match g.unit {
                UnitKind::Time => avp::TIME_QUOTA_THRESHOLD,
                UnitKind::Octets => avp::VOLUME_QUOTA_THRESHOLD,
                UnitKind::Events => avp::UNIT_QUOTA_THRESHOLD,
            };
            e.u32(spec, t);
        }
        if let Some(q) = m.quota_holding_time_s {
            e.u32(avp::QUOTA_HOLDING_TIME, q);
        }
        // TS 32.299 §7.2.128: Result-Code inside MSCC, the per-service outcome.
        e.u32(spec::RESULT_CODE, m.result.0);
        e.end_group(g);
    }
    if let Some(action) = answer.requested_action {
        e.u32(avp::REQUESTED_ACTION, action);
    }
    if let Some(enough) = answer.check_balance_enough {
        // RFC 4006 §8.6: 0 ENOUGH_CREDIT, 1 NO_CREDIT.
        e.u32(avp::CHECK_BALANCE_RESULT, if enough { 0 } else { 1 });
    }
    if let Some(cost) = answer.cost {
        let g = e.begin_group(avp::COST_INFORMATION);
        unit_value(&mut e, cost);
        e.u32(avp::CURRENCY_CODE, u32::from(cost.currency.numeric));
        e.end_group(g);
    }
    if let Some(rb) = answer.remaining_balance {
        let g = e.begin_group(avp::REMAINING_BALANCE);
        unit_value(&mut e, rb);
        e.u32(avp::CURRENCY_CODE, u32::from(rb.currency.numeric));
        e.end_group(g);
        e.u32(avp::LOW_BALANCE_INDICATION, u32::from(answer.low_balance));
    }
    if echo.proxy_info {
        echo_proxy_info(&mut e, req);
    }
    e.finish();
}

/// RFC 4006 §8.8 Unit-Value: Value-Digits × 10^Exponent; minor units have exponent
/// −(currency exponent).
fn unit_value(e: &mut Encoder<'_>, amount: Amount) {
    let g = e.begin_group(avp::UNIT_VALUE);
    e.i64(avp::VALUE_DIGITS, amount.money.0);
    e.i32(avp::EXPONENT, -i32::from(amount.currency.exponent));
    e.end_group(g);
}

fn write_units(e: &mut Encoder<'_>, m: &MsccAnswer<'_>) {
    if let Some(grant) = m.grant {
        let g = e.begin_group(avp::GSU);
        if let Some(t) = grant.tariff_time_change {
            e.u32(avp::TARIFF_TIME_CHANGE, t);
        }
        match grant.unit {
            UnitKind::Time => {
                e.u32(avp::CC_TIME, u32::try_from(grant.units).unwrap_or(u32::MAX));
            }
            UnitKind::Octets => {
                e.u64(avp::CC_TOTAL_OCTETS, grant.units);
            }
            UnitKind::Events => {
                e.u64(avp::CC_SERVICE_SPECIFIC_UNITS, grant.units);
            }
        }
        e.end_group(g);
    }
    if let Some(v) = m.validity_time_s {
        e.u32(avp::VALIDITY_TIME, v);
    }
    if let Some(fua) = m.final_unit {
        // RFC 4006 §8.34 Final-Unit-Indication.
        let g = e.begin_group(avp::FINAL_UNIT_INDICATION);
        match fua {
            FinalUnitAction::Terminate => {
                e.u32(avp::FINAL_UNIT_ACTION, 0);
            }
            FinalUnitAction::Redirect { address } => {
                e.u32(avp::FINAL_UNIT_ACTION, 1);
                let r = e.begin_group(avp::REDIRECT_SERVER);
                // RFC 4006 §8.38: Redirect-Address-Type 2 = URL.
                e.u32(avp::REDIRECT_ADDRESS_TYPE, 2);
                e.str(avp::REDIRECT_SERVER_ADDRESS, address);
                e.end_group(r);
            }
            FinalUnitAction::Restrict { filter_id } => {
                e.u32(avp::FINAL_UNIT_ACTION, 2);
                for rule in m.final_unit_rules {
                    e.str(avp::RESTRICTION_FILTER_RULE, rule);
                }
                e.str(avp::FILTER_ID, filter_id);
            }
        }
        e.end_group(g);
    }
}

/// Unit AVP spec for a unit kind (used by tests and tools).
pub fn unit_spec(unit: UnitKind) -> AvpSpec {
    match unit {
        UnitKind::Time => avp::CC_TIME,
        UnitKind::Octets => avp::CC_TOTAL_OCTETS,
        UnitKind::Events => avp::CC_SERVICE_SPECIFIC_UNITS,
    }
}
