//! The catalog file as serde sees it: every table rejects unknown keys, every default is here,
//! and money stays text until `load` parses it and can name the entry in an error.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCatalog {
    #[serde(default)]
    pub(super) plans: Vec<RawPlan>,
    #[serde(default)]
    pub(super) customers: Vec<RawCustomer>,
    #[serde(default)]
    pub(super) accounts: Vec<RawAccount>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan {
    pub(super) id: String,
    pub(super) name: Option<String>,
    pub(super) currency: String,
    #[serde(default)]
    pub(super) utc_offset_minutes: i32,
    pub(super) vat_rate: Option<Amount>,
    #[serde(default)]
    pub(super) services: Vec<RawService>,
    #[serde(default)]
    pub(super) bundles: Vec<RawBundle>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: String,
    #[serde(default)]
    pub(super) contexts: Vec<u32>,
    #[serde(default)]
    pub(super) rating_groups: Vec<u32>,
    #[serde(default)]
    pub(super) service_ids: Vec<u32>,
    pub(super) unit: RawUnit,
    pub(super) price: Amount,
    #[serde(default = "one")]
    pub(super) per: u64,
    #[serde(default = "one")]
    pub(super) increment: u64,
    pub(super) first_increment: Option<u64>,
    pub(super) connect_fee: Option<Amount>,
    pub(super) min_charge: Option<Amount>,
    pub(super) max_charge: Option<Amount>,
    pub(super) quota: u64,
    #[serde(default = "validity_time_default")]
    pub(super) validity_time: u32,
    #[serde(default)]
    pub(super) final_unit_action: RawFinalUnitAction,
    pub(super) redirect_address: Option<String>,
    pub(super) filter_id: Option<String>,
    #[serde(default)]
    pub(super) bands: Vec<RawBand>,
    #[serde(default)]
    pub(super) restriction_filter_rules: Vec<String>,
    pub(super) threshold_percent: Option<u8>,
    pub(super) quota_holding_time: Option<u32>,
}

fn one() -> u64 {
    1
}

/// RFC 4006 leaves Validity-Time to the server; an hour is what most OCS default to.
fn validity_time_default() -> u32 {
    3600
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawUnit {
    Time,
    Octets,
    Events,
}

#[derive(Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawFinalUnitAction {
    #[default]
    Terminate,
    Redirect,
    Restrict,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBand {
    pub(super) days: Option<Vec<String>>,
    pub(super) from: String,
    pub(super) to: String,
    pub(super) price: Amount,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBundle {
    pub(super) name: String,
    pub(super) service: String,
    pub(super) units: u64,
    pub(super) valid_days: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCustomer {
    pub(super) id: String,
    pub(super) name: String,
    #[serde(default)]
    pub(super) email: String,
    #[serde(default)]
    pub(super) address: String,
    pub(super) plan: String,
    #[serde(default)]
    pub(super) overrides: RawOverrides,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOverrides {
    pub(super) discount_percent: Option<Amount>,
    #[serde(default)]
    pub(super) services: Vec<RawServiceOverride>,
    #[serde(default)]
    pub(super) bundles: Vec<RawBundle>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServiceOverride {
    pub(super) name: String,
    pub(super) price: Option<Amount>,
    pub(super) connect_fee: Option<Amount>,
    pub(super) quota: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccount {
    pub(super) customer: String,
    #[serde(default)]
    pub(super) subscription_ids: Vec<String>,
    pub(super) funding: RawFunding,
    pub(super) balance: Option<Amount>,
    pub(super) credit_limit: Option<Amount>,
    #[serde(default)]
    pub(super) status: RawStatus,
    /// on_file: a card (for the sandbox, a test card number; see `payment::test_instruments`).
    pub(super) card: Option<String>,
    /// on_file: a SEPA direct-debit IBAN, with its `mandate` reference.
    pub(super) iban: Option<String>,
    pub(super) mandate: Option<String>,
    /// on_file with a card or iban: the customer's id at a remote gateway (Stripe `cus_…`).
    pub(super) gateway_customer: Option<String>,
    /// on_file with a card or iban: the saved payment method's id there (Stripe `pm_…`).
    pub(super) payment_method_id: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawFunding {
    Prepaid,
    OnFile,
}

#[derive(Deserialize, Clone, Copy, Default)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawStatus {
    #[default]
    Active,
    Barred,
}

/// A money or rate value as written: a string ("0.01") or an integer (5). Floats are refused
/// here, at parse time, because 0.1 in binary is not 0.1.
pub(super) struct Amount(pub(super) String);

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AmountVisitor)
    }
}

struct AmountVisitor;

impl Visitor<'_> for AmountVisitor {
    type Value = Amount;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decimal string such as \"0.01\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
        Ok(Amount(v.to_owned()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
        Ok(Amount(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
        Ok(Amount(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Amount, E> {
        Err(E::custom(format_args!(
            "{v} is a float; write money and rates as decimal strings, e.g. \"{v}\", so they stay exact"
        )))
    }
}
