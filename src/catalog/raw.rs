//! The catalog file as serde sees it: every table rejects unknown keys, every default is here,
//! and money stays text until `load` parses it and can name the entry in an error.
//!
//! The same structs serialize (`save`): a field at its default is skipped, so the written file
//! is what a person would write, and reading it back applies the same default.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCatalog {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) plans: Vec<RawPlan>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) customers: Vec<RawCustomer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) accounts: Vec<RawAccount>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan {
    pub(super) id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) name: Option<String>,
    pub(super) currency: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(super) utc_offset_minutes: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) vat_rate: Option<Amount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) services: Vec<RawService>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) bundles: Vec<RawBundle>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) contexts: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) rating_groups: Vec<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) service_ids: Vec<u32>,
    pub(super) unit: RawUnit,
    pub(super) price: Amount,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub(super) per: u64,
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub(super) increment: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) first_increment: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) connect_fee: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) min_charge: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) max_charge: Option<Amount>,
    pub(super) quota: u64,
    #[serde(default = "validity_time_default", skip_serializing_if = "is_validity_time_default")]
    pub(super) validity_time: u32,
    #[serde(default, skip_serializing_if = "RawFinalUnitAction::is_terminate")]
    pub(super) final_unit_action: RawFinalUnitAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) redirect_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) filter_id: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) restriction_filter_rules: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) threshold_percent: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) quota_holding_time: Option<u32>,
    // Last: an array of tables, written after the service's own keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) bands: Vec<RawBand>,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn is_validity_time_default(s: &u32) -> bool {
    *s == validity_time_default()
}

/// RFC 4006 leaves Validity-Time to the server; an hour is what most OCS default to.
fn validity_time_default() -> u32 {
    3600
}

#[derive(Deserialize, Serialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawUnit {
    Time,
    Octets,
    Events,
}

#[derive(Deserialize, Serialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawFinalUnitAction {
    #[default]
    Terminate,
    Redirect,
    Restrict,
}

impl RawFinalUnitAction {
    fn is_terminate(&self) -> bool {
        *self == Self::Terminate
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBand {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) days: Option<Vec<String>>,
    pub(super) from: String,
    pub(super) to: String,
    pub(super) price: Amount,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBundle {
    pub(super) name: String,
    pub(super) service: String,
    pub(super) units: u64,
    pub(super) valid_days: u32,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCustomer {
    pub(super) id: String,
    pub(super) name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) email: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) address: String,
    pub(super) plan: String,
    #[serde(default, skip_serializing_if = "RawOverrides::is_empty")]
    pub(super) overrides: RawOverrides,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) discount_percent: Option<Amount>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) services: Vec<RawServiceOverride>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) bundles: Vec<RawBundle>,
}

impl RawOverrides {
    fn is_empty(&self) -> bool {
        self.discount_percent.is_none() && self.services.is_empty() && self.bundles.is_empty()
    }
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServiceOverride {
    pub(super) name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) price: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) connect_fee: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) quota: Option<u64>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccount {
    pub(super) customer: String,
    #[serde(default)]
    pub(super) subscription_ids: Vec<String>,
    pub(super) funding: RawFunding,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) balance: Option<Amount>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) credit_limit: Option<Amount>,
    #[serde(default, skip_serializing_if = "RawStatus::is_active")]
    pub(super) status: RawStatus,
    /// Closed for good (the admin API's close): barred, and never reopened.
    #[serde(default, skip_serializing_if = "is_false")]
    pub(super) closed: bool,
    /// on_file: a card (for the sandbox, a test card number; see `payment::test_instruments`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) card: Option<String>,
    /// on_file: a SEPA direct-debit IBAN, with its `mandate` reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) iban: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) mandate: Option<String>,
    /// on_file with a card or iban: the customer's id at a remote gateway (Stripe `cus_…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) gateway_customer: Option<String>,
    /// on_file with a card or iban: the saved payment method's id there (Stripe `pm_…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) payment_method_id: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawFunding {
    Prepaid,
    OnFile,
}

#[derive(Deserialize, Serialize, Clone, Copy, Default)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawStatus {
    #[default]
    Active,
    Barred,
}

impl RawStatus {
    fn is_active(&self) -> bool {
        matches!(self, Self::Active)
    }
}

/// A money or rate value as written: a string ("0.01") or an integer (5). Floats are refused
/// here, at parse time, because 0.1 in binary is not 0.1.
pub(super) struct Amount(pub(super) String);

/// Always a string, even for a whole number: the form the README asks people to write.
impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

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

fn is_false(v: &bool) -> bool {
    !*v
}
