//! Settlement: what happens to money after a session ends — the invoice, its number, the
//! charge, and the e-mails (issue 6).
//!
//! # What this module owns
//! - [`invoice`]: the EN 16931 invoice model — seller from `[settlement.seller]`, buyer from
//!   the catalog's customer, one line per rated service, VAT per plan with a breakdown per
//!   category, totals exact to the minor unit under one documented rounding rule per step, and
//!   the calculation rules (BR-CO-10..16, BR-S-08/09) checked on every invoice built.
//! - [`numbering`]: gapless numbers per series, as a pure state machine whose allocations are
//!   journal records, recovered by replay.
//! - [`render`]: JSON, UBL 2.1 XML (Peppol BIS Billing 3.0), and the e-mail's HTML and text.
//! - [`payment`]: the [`payment::PaymentAdapter`] trait (async, idempotent on a key, with
//!   `lookup` for unknown outcomes), the deterministic `sandbox` gateway with documented test
//!   cards and IBANs, and the retry policy (exponential backoff, full jitter, dead letter).
//! - [`email`]: RFC 5322 messages (lettre's builder) with stable Message-IDs, and the `.eml`
//!   directory that is the embedded run's mail transport.
//! - [`outbox`]: the pending settlements and the numbering state, and the journal entries that
//!   create (with the debit, written by `cc`), advance and end them.
//! - [`worker`]: the tokio task that settles each pending entry in order, journaling every step
//!   before acting on it; it owns order, retries and the exactly-once bookkeeping (invariant 6:
//!   one number, at most one successful charge, one confirmation per settled session).
//!
//! # What it must not touch
//! No `diameter`, no `cc`, and no clock: time comes in as Unix seconds (the worker's
//! `Clock`). Its I/O is at the edges: the worker's files, [`email::EmlDir`] and the sandbox's
//! books; the `stripe` and `webhook` adapters (`payment::stripe`, `payment::webhook`, HTTP
//! clients; the webhook's signature reads the system clock); [`smtp`] (the mail relay); and
//! [`billing`] (PostgreSQL). It reads the catalog and `rating`'s money types; the worker changes
//! the ledger only by the effect a journaled payment outcome names, and reaches the journal only
//! through `StepLog`.
//!
//! The worker is given the configured pieces by `gyro serve`: the adapter
//! ([`payment::ConfiguredAdapter`]), the [`smtp::Mailer`] and, when configured,
//! [`billing::PgBilling`].
//!
//! # Not yet here
//! Per-period aggregation, unbarring on payment, and the admin endpoints. See
//! ARCHITECTURE.md, "Settlement".

pub mod billing;
pub mod docsync;
pub mod email;
pub mod invoice;
pub mod numbering;
pub mod outbox;
pub mod payment;
pub mod render;
pub mod smtp;
pub mod worker;

use serde::Deserialize;

pub use invoice::{Invoice, InvoiceDraft, InvoiceError, PriceBasis, SellerConfig};
pub use numbering::{Sequences, SeriesConfig};
pub use payment::{ConfiguredAdapter, PaymentAdapter, RetryPolicy, Sandbox};

/// `[settlement]` in the configuration file. Every field has a default, so the embedded run
/// settles with no configuration at all (demo seller, `GYR-YYYY-NNNNNN` numbers, gross
/// prices, the sandbox, `.eml` files).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SettlementConfig {
    pub seller: SellerConfig,
    pub numbering: SeriesConfig,
    pub retry: RetryPolicy,
    /// Whether catalog prices include VAT (`gross`, the default) or not (`net`).
    pub price_basis: PriceBasis,
    /// `[settlement.payment]`: which gateway charges `on_file` accounts (default `sandbox`).
    pub payment: payment::configured::PaymentConfig,
    /// `[settlement.stripe]`: used when `payment.adapter = "stripe"`.
    pub stripe: payment::configured::StripeConfig,
    /// `[settlement.webhook]`: used when `payment.adapter = "webhook"`.
    pub webhook: payment::configured::WebhookConfig,
    /// `[settlement.smtp]`: the relay for e-mails; absent = `.eml` files in the data directory.
    pub smtp: smtp::SmtpConfig,
    /// `[settlement.postgres]`: billing records for finance; absent `url` = off.
    pub postgres: billing::PostgresConfig,
    /// One invoice per settled session (`session`, the default), or one per customer account
    /// and UTC `day` or `month`, made once the period has ended.
    pub aggregate: Aggregate,
    /// How long after a period ends its settlements are grouped: late entries (a session that
    /// expired in the period is settled when it is forgotten, `closed_retention_ms` later) must
    /// be in by then. Default 900 s.
    pub aggregate_delay_s: u64,
}

impl Default for SettlementConfig {
    fn default() -> Self {
        Self {
            seller: SellerConfig::default(),
            numbering: SeriesConfig::default(),
            retry: RetryPolicy::default(),
            price_basis: PriceBasis::default(),
            payment: payment::configured::PaymentConfig::default(),
            stripe: payment::configured::StripeConfig::default(),
            webhook: payment::configured::WebhookConfig::default(),
            smtp: smtp::SmtpConfig::default(),
            postgres: billing::PostgresConfig::default(),
            aggregate: Aggregate::Session,
            aggregate_delay_s: 900,
        }
    }
}

/// `[settlement] aggregate`: what one invoice covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// One invoice per session or event (the default: the customer's money moves at once).
    #[default]
    Session,
    /// One invoice per account per UTC day.
    Day,
    /// One invoice per account per UTC calendar month.
    Month,
}

impl Aggregate {
    /// The end (exclusive, Unix seconds) of the period holding `unix_s`; `None` per session.
    pub fn period_end(self, unix_s: u64) -> Option<u64> {
        match self {
            Self::Session => None,
            Self::Day => Some((unix_s / 86_400 + 1) * 86_400),
            Self::Month => {
                let d = invoice::Date::from_unix_s(i64::try_from(unix_s).unwrap_or(i64::MAX));
                let (year, month) = if d.month == 12 { (d.year + 1, 1) } else { (d.year, d.month + 1) };
                let next = invoice::Date { year, month, day: 1 }.to_unix_s();
                Some(u64::try_from(next).unwrap_or(0))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_need_no_configuration_and_keys_are_checked() {
        let config: SettlementConfig = toml::from_str("").expect("empty settlement table");
        assert_eq!(config, SettlementConfig::default());
        assert_eq!(config.numbering.validate(), Ok(()));
        assert_eq!(config.retry.validate(), Ok(()));
        let custom: SettlementConfig = toml::from_str(
            "price_basis = \"net\"\n[seller]\nname = \"Op AG\"\nvat_id = \"ATU12345678\"\ncountry_code = \"AT\"\n\
             [numbering]\nprefix = \"OP\"\n[retry]\nattempts_max = 3\n",
        )
        .expect("custom settlement table");
        assert_eq!(custom.price_basis, PriceBasis::Net);
        assert_eq!((custom.seller.name.as_str(), custom.seller.city.as_str()), ("Op AG", "Berlin"));
        assert_eq!((custom.numbering.prefix.as_str(), custom.numbering.digits), ("OP", 6));
        assert_eq!(custom.retry.attempts_max, 3);
        assert!(toml::from_str::<SettlementConfig>("[seller]\nnmae = \"typo\"\n").is_err());
        let day: SettlementConfig = toml::from_str("aggregate = \"day\"\naggregate_delay_s = 60\n").unwrap();
        assert_eq!((day.aggregate, day.aggregate_delay_s), (Aggregate::Day, 60));
        let week = toml::from_str::<SettlementConfig>("aggregate = \"week\"\n").unwrap_err().to_string();
        assert!(week.contains("aggregate") && week.contains("session"), "{week}");
    }

    #[test]
    fn periods_end_at_utc_midnight_and_the_first_of_the_next_month() {
        // 2026-11-27T07:00:00Z.
        let t = 1_795_762_800;
        assert_eq!(Aggregate::Session.period_end(t), None);
        assert_eq!(Aggregate::Day.period_end(t), Some(1_795_824_000), "2026-11-28T00:00:00Z");
        assert_eq!(Aggregate::Month.period_end(t), Some(1_796_083_200), "2026-12-01T00:00:00Z");
        // December rolls into January; the last second of a month is still in it.
        let dec = invoice::Date { year: 2026, month: 12, day: 31 }.to_unix_s() as u64 + 86_399;
        assert_eq!(Aggregate::Month.period_end(dec), Some(1_798_761_600), "2027-01-01T00:00:00Z");
        for days in [-1_000_000i64, -1, 0, 1, 59, 60, 20_000, 1_000_000] {
            let d = invoice::Date::from_unix_s(days * 86_400);
            assert_eq!(d.to_unix_s(), days * 86_400, "{d:?}");
        }
    }
}
