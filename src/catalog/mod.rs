//! The catalog: price plans, customers (with their package = plan + overrides) and accounts,
//! loaded from a TOML file, validated, and turned into per-customer packages.
//!
//! This module owns the file format and its validation; it uses `rating` (currencies, rates,
//! `Rate::check`) and must not touch balances, sessions or I/O beyond reading the file. The
//! types from `Catalog` to `AccountSpec` are the contract `ledger` and `cc` code against.
//!
//! Everything below is also `src/catalog/README.md`.
//!
#![doc = include_str!("README.md")]

mod change;
mod edit;
mod load;
mod package;
mod raw;
mod save;
mod validate;

use std::fmt;
use std::sync::Arc;

use rust_decimal::Decimal;

use crate::rating::{Currency, Rate, RateError};

pub use change::{accounts_repriced, check_change, Installed, Live};
pub use edit::{Edit, EditError};
pub use package::{discounted, DISCOUNT_SCALE};
pub use validate::BALANCE_MAX;

#[derive(Clone, Debug, PartialEq)]
pub struct Catalog {
    pub plans: Vec<Plan>,
    pub customers: Vec<Customer>,
    pub accounts: Vec<AccountSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub currency: Currency,
    /// Fixed offset for time bands (no DST rules; documented).
    pub utc_offset_minutes: i32,
    /// VAT for invoices (settlement issue).
    pub vat_rate: Decimal,
    pub services: Vec<Service>,
    pub bundles: Vec<BundleSpec>,
}

/// One priced service of a plan, and how quota for it is granted.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub name: String,
    /// Service-Context-Id numbers it applies to (32251 Gy, 32260 IMS, 32274 SMS, 32275 MMTel,
    /// 32276 VCS); empty = any.
    pub contexts: Vec<u32>,
    /// Rating-Groups it applies to; empty = any.
    pub rating_groups: Vec<u32>,
    /// Service-Identifiers it applies to; empty = any.
    pub service_ids: Vec<u32>,
    pub rate: Rate,
    /// Default grant size in the rate's units.
    pub quota: u64,
    /// Validity-Time sent with grants, seconds.
    pub validity_time_s: u32,
    /// What the client does when the final units are used (RFC 4006 §8.34).
    pub final_unit_action: FinalUnitAction,
    /// RFC 4006 §8.36 Restriction-Filter-Rule (IPFilterRule, e.g. `permit out ip from any to
    /// 192.0.2.10`) sent with a RESTRICT_ACCESS Final-Unit-Indication, beside Filter-Id.
    pub restriction_filter_rules: Vec<String>,
    /// TS 32.299 §7.2.214/§7.2.196/§7.2.218 Volume-/Time-/Unit-Quota-Threshold, as a percentage
    /// of each grant: the client reports when the *remaining* units fall to this share (the Gy
    /// meaning; open5gs#3113), so the next grant arrives before the current one runs out.
    pub threshold_percent: Option<u8>,
    /// TS 32.299 §7.2.152 Quota-Holding-Time, seconds: the client returns an idle grant after
    /// this long without traffic.
    pub quota_holding_time_s: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalUnitAction {
    Terminate,
    Redirect { address: String },
    Restrict { filter_id: String },
}

/// A bundle (free allowance) granted with a plan or an override: `units` of `service`, used
/// before money, valid for `valid_days` from account creation.
#[derive(Clone, Debug, PartialEq)]
pub struct BundleSpec {
    pub name: String,
    pub service: String,
    pub units: u64,
    pub valid_days: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Customer {
    pub id: String,
    pub name: String,
    pub email: String,
    pub address: String,
    pub plan: String,
    pub overrides: Overrides,
}

/// A customer's own deviations from the plan, without copying it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// Applied to every price and connect fee of the plan.
    pub discount_percent: Option<Decimal>,
    pub services: Vec<ServiceOverride>,
    pub bundles: Vec<BundleSpec>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceOverride {
    /// The plan service this overrides (by name).
    pub name: String,
    pub price: Option<Decimal>,
    pub connect_fee: Option<Decimal>,
    pub quota: Option<u64>,
}

/// The effective prices for one customer: the plan with the overrides applied. Customers
/// without overrides share their plan's package (`Arc`).
#[derive(Clone, Debug, PartialEq)]
pub struct Package {
    pub plan_id: String,
    pub currency: Currency,
    pub utc_offset_minutes: i32,
    pub services: Vec<Service>,
    pub bundles: Vec<BundleSpec>,
}

pub type SharedPackage = Arc<Package>;

/// RFC 4006 §8.47 Subscription-Id-Type values.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum SubscriptionKind {
    E164 = 0,
    Imsi = 1,
    SipUri = 2,
    Nai = 3,
    Private = 4,
}

impl SubscriptionKind {
    /// The kind for a Subscription-Id-Type value on the wire.
    pub fn from_wire(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::E164,
            1 => Self::Imsi,
            2 => Self::SipUri,
            3 => Self::Nai,
            4 => Self::Private,
            _ => return None,
        })
    }
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct SubscriptionId {
    pub kind: SubscriptionKind,
    pub data: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Funding {
    /// A wallet: sessions are denied (4012) when it runs out.
    Prepaid,
    /// A card or bank mandate: usage up to the credit limit, settled per session.
    OnFile,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AccountStatus {
    Active,
    /// Service denied (4010) until unbarred.
    Barred,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AccountSpec {
    pub customer: String,
    pub subscription_ids: Vec<SubscriptionId>,
    pub funding: Funding,
    /// Wallet balance (prepaid) in the plan's currency.
    pub balance: Decimal,
    /// How far an on_file account may go below zero.
    pub credit_limit: Decimal,
    pub status: AccountStatus,
    /// How an on_file account pays its invoices (`card`, or `iban` + `mandate`); `None` leaves
    /// its invoices open (issued, not charged).
    pub payment: Option<crate::settlement::payment::PaymentMethod>,
    /// The account's ids at a remote gateway (`gateway_customer`, `payment_method_id`); only with
    /// a `payment`. The `stripe` adapter needs both, the sandbox neither.
    pub gateway: crate::settlement::payment::GatewayRefs,
    /// Closed for good (`POST /v1/accounts/{ref}/close`): its ledger account is barred and stays
    /// so; its position, balance and subscription ids stay (accounts are never removed).
    pub closed: bool,
}

/// Longest Subscription-Id-Data we accept in a catalog.
pub const SUBSCRIPTION_ID_MAX_BYTES: usize = 255;

impl SubscriptionId {
    /// Parses the catalog form `kind:value` (`e164:491700000001`, `imsi:262010000000001`,
    /// `sip:alice@ims.example.org`, `nai:alice@example.org`, `private:x`). A SIP URI keeps its
    /// scheme in `data`, as Subscription-Id-Data carries it (RFC 4006 §8.48).
    pub fn parse(text: &str) -> Result<Self, SubscriptionIdError> {
        let (kind, value) = text.split_once(':').ok_or(SubscriptionIdError::NoKind)?;
        let (kind, data) = match kind {
            "e164" => (SubscriptionKind::E164, value),
            "imsi" => (SubscriptionKind::Imsi, value),
            "sip" | "sips" => (SubscriptionKind::SipUri, text),
            "nai" => (SubscriptionKind::Nai, value),
            "private" => (SubscriptionKind::Private, value),
            _ => return Err(SubscriptionIdError::UnknownKind),
        };
        if value.is_empty() {
            return Err(SubscriptionIdError::Empty);
        }
        if SUBSCRIPTION_ID_MAX_BYTES < data.len() {
            return Err(SubscriptionIdError::TooLong);
        }
        if data.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(SubscriptionIdError::Whitespace);
        }
        let digits = data.bytes().all(|b| b.is_ascii_digit());
        match kind {
            SubscriptionKind::E164 if !digits || 15 < data.len() => return Err(SubscriptionIdError::E164),
            SubscriptionKind::Imsi if !digits || !(6..=15).contains(&data.len()) => {
                return Err(SubscriptionIdError::Imsi)
            }
            _ => {}
        }
        Ok(Self { kind, data: data.to_owned() })
    }
}

impl std::str::FromStr for SubscriptionId {
    type Err = SubscriptionIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The catalog form, which `parse` reads back.
impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            SubscriptionKind::E164 => write!(f, "e164:{}", self.data),
            SubscriptionKind::Imsi => write!(f, "imsi:{}", self.data),
            SubscriptionKind::SipUri => f.write_str(&self.data),
            SubscriptionKind::Nai => write!(f, "nai:{}", self.data),
            SubscriptionKind::Private => write!(f, "private:{}", self.data),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum SubscriptionIdError {
    #[error("expected kind:value, e.g. e164:491700000001")]
    NoKind,
    #[error("the kind must be e164, imsi, sip, nai or private")]
    UnknownKind,
    #[error("the value is empty")]
    Empty,
    #[error("longer than {SUBSCRIPTION_ID_MAX_BYTES} bytes")]
    TooLong,
    #[error("contains spaces or control characters")]
    Whitespace,
    #[error("an E.164 number is 1 to 15 digits, without '+'")]
    E164,
    #[error("an IMSI is 6 to 15 digits")]
    Imsi,
}

/// Why a catalog could not be loaded. `Invalid` names the file and the entry
/// (`plans[1] "mobile-basic" services[2] "voice"`) and says what is wrong in `problem`, which
/// callers may match on; the text is for people.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    /// TOML syntax, an unknown key, a value of the wrong type (the message has line and column).
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("{origin}: {entry}: {problem}")]
    Invalid { origin: String, entry: String, problem: Problem },
}

/// What is wrong with one catalog entry.
#[derive(Clone, PartialEq, Eq, Debug, thiserror::Error)]
pub enum Problem {
    #[error("{field} \"{text}\" is not a decimal number (write e.g. \"0.01\")")]
    NotDecimal { field: &'static str, text: String },
    #[error(transparent)]
    Rate(#[from] RateError),
    #[error("{field} \"{value}\" must be {expected}")]
    OutOfRange { field: &'static str, value: String, expected: &'static str },
    #[error("{field} must be ≥ 1")]
    Zero { field: &'static str },
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("duplicate {what} \"{id}\" (first at {first})")]
    Duplicate { what: &'static str, id: String, first: String },
    #[error("unknown currency \"{0}\" (an ISO 4217 code such as \"EUR\")")]
    UnknownCurrency(String),
    #[error("unknown plan \"{0}\"")]
    UnknownPlan(String),
    #[error("unknown customer \"{0}\"")]
    UnknownCustomer(String),
    #[error("unknown service \"{service}\" (plan \"{plan}\" has no such service)")]
    UnknownService { service: String, plan: String },
    #[error("subscription id \"{id}\" is already on {first}")]
    SubscriptionInTwoAccounts { id: String, first: String },
    #[error("subscription id \"{text}\": {reason}")]
    BadSubscriptionId { text: String, reason: SubscriptionIdError },
    #[error("{field} \"{text}\" is not a time HH:MM from 00:00 to 24:00")]
    BadTime { field: &'static str, text: String },
    #[error("\"{0}\" is not a day (mon, tue, wed, thu, fri, sat, sun)")]
    BadDay(String),
    #[error("{field} is required when final_unit_action is \"{action}\"")]
    MissingFinalUnitDetail { field: &'static str, action: &'static str },
    #[error("{field} is only used with final_unit_action \"{}\", not \"{action}\"",
        if *field == "filter_id" { "restrict" } else { "redirect" })]
    UnusedFinalUnitDetail { field: &'static str, action: &'static str },
    #[error("{field} \"{value}\" has more decimal places than {currency} has ({exponent})")]
    TooPreciseForCurrency { field: &'static str, value: Decimal, currency: &'static str, exponent: u8 },
    #[error("credit_limit \"{value}\" applies to on_file accounts only (this one is prepaid)")]
    CreditLimitOnPrepaid { value: Decimal },
    #[error("balance \"{balance}\" is below -credit_limit (credit_limit \"{credit_limit}\")")]
    BelowCreditLimit { balance: Decimal, credit_limit: Decimal },
    #[error("email \"{0}\" does not look like an address")]
    BadEmail(String),
    #[error("{field}: {reason}")]
    BadPaymentMethod { field: &'static str, reason: crate::settlement::payment::MethodError },
    #[error("{field} is a payment method, for on_file accounts only (this one is prepaid)")]
    PaymentMethodOnPrepaid { field: &'static str },
    #[error("card and iban are two payment methods; give one")]
    TwoPaymentMethods,
    #[error("{field} is required with {with}")]
    Requires { field: &'static str, with: &'static str },
    #[error("{field} must be printable ASCII without spaces, at most {max} bytes (a gateway's id, e.g. \"cus_…\" or \"pm_…\")", max = crate::limits::GATEWAY_REF_MAX_BYTES)]
    BadGatewayRef { field: &'static str },
    #[error("{field} identifies a saved payment method at the gateway: it needs funding = \"on_file\" and a card or iban")]
    GatewayRefWithoutMethod { field: &'static str },
    // Changes to the catalog in force (`check_change`).
    #[error("{in_force} accounts are in force and the new catalog has {now}: accounts cannot be removed or reordered (accounts are matched by position; close one instead)")]
    AccountRemoved { in_force: usize, now: usize },
    #[error("{field} of an account in force cannot change (it was {was}); close the account and add a new one at the end")]
    AccountChanged { field: &'static str, was: String },
    #[error("{field} is an opening value (it was {was}); a running account's is changed through the admin API (top-ups, adjustments, bar/unbar)")]
    OpeningValueChanged { field: &'static str, was: String },
    #[error("a closed account stays closed (closed = true cannot be removed)")]
    Reopened,
    #[error("the currency of accounts in force cannot change (was {was}, now {now})")]
    CurrencyChanged { was: String, now: String },
    #[error("services[{index}] was \"{was}\" and is now {}: open sessions and pending invoices refer to services by position; add new services after the old ones", now.as_ref().map_or("missing".to_owned(), |n| format!("\"{n}\"")))]
    ServiceMoved { index: usize, was: String, now: Option<String> },
}

#[cfg(test)]
mod tests;
