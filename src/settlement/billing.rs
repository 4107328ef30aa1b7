//! Billing records in PostgreSQL, for finance to query (production mode; off by default).
//!
//! - `[settlement.postgres]` with a `url` turns it on. The tables live in their own schema
//!   (`schema`, default `gyro`): `invoices`, `invoice_lines`, `usage_records`, `payments`, and
//!   `schema_migrations`. Money is `bigint` minor units, quantities and VAT rates `numeric`: exact,
//!   as in the invoices themselves.
//! - **Versioned migrations** (`billing/NNNN_*.sql`, embedded): applied at connect in one
//!   transaction under a transaction-scoped advisory lock, so two gyro processes starting together
//!   do not both apply one; each applied version is a row of `schema_migrations`. A database
//!   whose version is newer than this gyro knows is refused (an older binary must not write into
//!   tables it does not understand).
//! - **Idempotent upserts**: the settlement worker may write the same step again after a crash
//!   (it journals a step only after doing it). An invoice is keyed by its number and its
//!   settlement key is unique; writing it again updates only what may change (status, paid and
//!   payable amounts, the documents) and never moves its status backwards (paid stays paid).
//!   The same number with another settlement key is refused: that would be a reused number.
//!   Lines and usage rows are insert-if-absent; a payment attempt is keyed by (invoice, attempt)
//!   and a partial unique index allows one successful charge per invoice.
//! - Password: `password_file` or `GYRO_PG_PASSWORD`, never in the URL (it would reach logs).
//! - TLS (`tls`, `ca_file`; module `tls`): `disable`, `require` or `verify-full`, as libpq's
//!   `sslmode`. Without `tls`, a loopback host or a Unix socket gets `disable` and any other host
//!   `verify-full`: across a network the password and the billing rows (names, addresses,
//!   amounts) must neither travel in clear nor reach an impostor, and a server that cannot do
//!   verified TLS then stops start-up with an error rather than quietly getting them. Plain TCP
//!   to a remote host stays possible, but only when asked for with `tls = "disable"`. The URL's
//!   own `sslmode` is refused, so the mode is said in one place.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls, Socket};

use super::invoice::{Invoice, PriceBasis};
use super::payment::configured::{secret, PaymentConfigError};
use crate::rating::MoneyMinor;

mod tls;

pub use tls::PgTls;

/// Where the PostgreSQL password comes from when `password_file` is not set.
pub const PG_PASSWORD_ENV: &str = "GYRO_PG_PASSWORD";

/// The migrations, in order. Append only: a released file is never edited.
const MIGRATIONS: &[(i32, &str, &str)] =
    &[(1, "billing records", include_str!("billing/0001_billing_records.sql"))];

/// `[settlement.postgres]`.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// `postgresql://user@host:port/database` or `host=… user=… dbname=…`; absent = off.
    pub url: Option<String>,
    /// The schema the tables live in (created if missing).
    pub schema: String,
    /// A file holding the password; absent = `GYRO_PG_PASSWORD` (or none, for trust/peer auth).
    pub password_file: Option<PathBuf>,
    pub connect_timeout_ms: u64,
    /// `disable`, `require` or `verify-full`; absent = by host (see the module doc and
    /// [`Self::tls_mode`]).
    pub tls: Option<PgTls>,
    /// PEM certificates trusted besides the web PKI roots (a private CA); `verify-full` only.
    pub ca_file: Option<PathBuf>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: None,
            schema: "gyro".into(),
            password_file: None,
            connect_timeout_ms: 5_000,
            tls: None,
            ca_file: None,
        }
    }
}

/// A problem with `[settlement.postgres]`; [`Self::key`] names the key.
#[derive(Debug, thiserror::Error)]
pub enum PostgresConfigError {
    #[error("is not a PostgreSQL connection string: {0}")]
    Url(String),
    #[error("holds a password: use settlement.postgres.password_file or {PG_PASSWORD_ENV}")]
    PasswordInUrl,
    #[error(
        "must be a lower-case SQL identifier: a-z, 0-9 and _, not starting with a digit, at most 63 bytes"
    )]
    Schema,
    #[error("must be 1 to 60000")]
    Timeout,
    #[error("{0}")]
    Secret(PaymentConfigError),
    #[error(
        "sets sslmode: say it with settlement.postgres.tls (\"disable\", \"require\" or \"verify-full\")"
    )]
    SslModeInUrl,
    #[error(
        "\"{0}\" over a Unix socket: PostgreSQL offers no TLS there; use tls = \"disable\" or a TCP host"
    )]
    TlsOverUnixSocket(&'static str),
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("is only used with tls = \"verify-full\" (\"require\" checks no certificate)")]
    CaWithoutVerify,
    #[error("{0}")]
    Ca(String),
}

impl PostgresConfigError {
    pub fn key(&self) -> &'static str {
        match self {
            Self::Url(_) | Self::PasswordInUrl => "settlement.postgres.url",
            Self::Schema => "settlement.postgres.schema",
            Self::Timeout => "settlement.postgres.connect_timeout_ms",
            Self::Secret(e) => e.key(),
            Self::SslModeInUrl => "settlement.postgres.url",
            Self::TlsOverUnixSocket(_) | Self::Tls(_) => "settlement.postgres.tls",
            Self::CaWithoutVerify | Self::Ca(_) => "settlement.postgres.ca_file",
        }
    }
}

impl PostgresConfig {
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// Checks the section without I/O.
    pub fn validate(&self) -> Result<(), PostgresConfigError> {
        let schema_ok = !self.schema.is_empty()
            && self.schema.len() <= 63
            && !self.schema.starts_with(|c: char| c.is_ascii_digit())
            && self.schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !schema_ok {
            return Err(PostgresConfigError::Schema);
        }
        if !(1..=60_000).contains(&self.connect_timeout_ms) {
            return Err(PostgresConfigError::Timeout);
        }
        if let Some(url) = &self.url {
            let parsed =
                tokio_postgres::Config::from_str(url).map_err(|e| PostgresConfigError::Url(e.to_string()))?;
            if parsed.get_password().is_some() {
                return Err(PostgresConfigError::PasswordInUrl);
            }
            // tokio-postgres keeps no trace of whether sslmode was given (it defaults to
            // "prefer"), so the text is where to look; no other option contains the word.
            if url.to_ascii_lowercase().contains("sslmode") {
                return Err(PostgresConfigError::SslModeInUrl);
            }
            let mode = self.tls_mode(&parsed);
            if mode != PgTls::Disable && parsed.get_hosts().iter().any(|h| matches!(h, Host::Unix(_))) {
                return Err(PostgresConfigError::TlsOverUnixSocket(mode.name()));
            }
            if self.ca_file.is_some() && mode != PgTls::VerifyFull {
                return Err(PostgresConfigError::CaWithoutVerify);
            }
        }
        Ok(())
    }

    /// `tls`, or by host when absent: `disable` when every host is a loopback address,
    /// `localhost` or a Unix socket, else `verify-full` (the module doc says why).
    pub fn tls_mode(&self, parsed: &tokio_postgres::Config) -> PgTls {
        if let Some(mode) = self.tls {
            return mode;
        }
        let local = |host: &Host| match host {
            Host::Unix(_) => true,
            Host::Tcp(name) => {
                let bare = name.trim_start_matches('[').trim_end_matches(']');
                name.eq_ignore_ascii_case("localhost")
                    || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }
        };
        // `hostaddr`, when given, is where the connection goes; `host` then only names it.
        let addrs_local = parsed.get_hostaddrs().iter().all(std::net::IpAddr::is_loopback);
        let hosts_local = !parsed.get_hostaddrs().is_empty() || parsed.get_hosts().iter().all(local);
        if addrs_local && hosts_local {
            PgTls::Disable
        } else {
            PgTls::VerifyFull
        }
    }
}

/// Why a billing write failed. The worker retries: the rows are idempotent.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error("settlement.postgres: {0}")]
    Config(#[from] PostgresConfigError),
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("PostgreSQL: no connection within {0} ms")]
    ConnectTimeout(u64),
    /// The connection failed; `tls` is the mode in force, since a TLS failure (an untrusted
    /// certificate, a server without TLS) is the likely cause when the mode was not chosen.
    #[error("PostgreSQL (settlement.postgres.tls = \"{tls}\"): {}", chain(source))]
    Connect { tls: &'static str, source: tokio_postgres::Error },
    #[error(
        "the billing schema is at version {found}, newer than this gyro's {known}: upgrade gyro, \
         or point it at another schema"
    )]
    SchemaNewer { found: i32, known: i32 },
    #[error("invoice {number} is already recorded for another settlement ({existing}): a number must never be reused")]
    NumberReused { number: String, existing: String },
}

/// An error and its causes, "a: b: c": tokio-postgres shows only "error performing TLS
/// handshake", while the reason (an unknown issuer, a wrong name) is in the causes.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// Where an invoice stands. Only moves forward: `Issued` → `Paid` | `PaymentFailed` |
/// `DeadLetter`, and from those two to `Paid` (paid later, or by hand).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum InvoiceStatus {
    Issued,
    PaymentFailed,
    DeadLetter,
    Paid,
}

impl InvoiceStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::PaymentFailed => "payment_failed",
            Self::DeadLetter => "dead_letter",
            Self::Paid => "paid",
        }
    }
}

/// What one payment attempt came to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PaymentOutcome {
    Succeeded,
    /// Accepted, not yet final (a SEPA debit processing).
    Pending,
    Declined,
    /// Transient failure; tried again under the same key.
    Failed,
    /// Sent, no answer: looked up before any retry.
    Unknown,
    /// Paid from the prepaid wallet: no external charge.
    Wallet,
}

impl PaymentOutcome {
    fn name(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Pending => "pending",
            Self::Declined => "declined",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
            Self::Wallet => "wallet",
        }
    }
}

/// One payment attempt, as the worker journals it.
#[derive(Clone, Debug)]
pub struct PaymentRecord<'a> {
    pub invoice_number: &'a str,
    /// 1, 2, … per invoice.
    pub attempt: u32,
    pub idempotency_key: &'a str,
    pub outcome: PaymentOutcome,
    pub payment_id: Option<&'a str>,
    pub amount: MoneyMinor,
    pub currency: &'a str,
    /// A decline code or an error, for people.
    pub detail: Option<&'a str>,
    pub at_unix_s: i64,
}

/// The billing database.
pub struct PgBilling {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for PgBilling {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl std::fmt::Debug for PgBilling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgBilling")
    }
}

/// A 64-bit key for `pg_advisory_xact_lock`, per schema (FNV-1a of its name).
fn lock_key(schema: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"gyro-billing:".iter().chain(schema.as_bytes()) {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

/// Connects with `tls` within the timeout and spawns the connection's driver.
async fn spawn_connection<T>(
    pg: &tokio_postgres::Config,
    tls: T,
    timeout_ms: u64,
) -> Result<(Client, tokio::task::JoinHandle<()>), BillingError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = tokio::time::timeout(Duration::from_millis(timeout_ms), pg.connect(tls))
        .await
        .map_err(|_| BillingError::ConnectTimeout(timeout_ms))??;
    let connection = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "billing database connection ended");
        }
    });
    Ok((client, connection))
}

impl PgBilling {
    /// Connects (password from the file, else from `env`), then brings the schema up to date.
    pub async fn connect(
        config: &PostgresConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, BillingError> {
        let (client, connection) = Self::open(config, env).await?;
        let mut billing = Self { client, connection };
        billing.migrate(&config.schema).await?;
        // Validated identifier: safe to put in the statement (identifiers cannot be parameters).
        billing.client.batch_execute(&format!("SET search_path TO \"{}\"", config.schema)).await?;
        Ok(billing)
    }

    /// The connection alone (TLS as configured), its driver spawned; no schema work. Dropping the
    /// handle does not end the connection: abort it.
    pub async fn open(
        config: &PostgresConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Client, tokio::task::JoinHandle<()>), BillingError> {
        config.validate()?;
        let url = config.url.as_deref().ok_or(PostgresConfigError::Url("no url".into()))?;
        let mut pg =
            tokio_postgres::Config::from_str(url).map_err(|e| PostgresConfigError::Url(e.to_string()))?;
        let timeout = Duration::from_millis(config.connect_timeout_ms);
        pg.connect_timeout(timeout);
        pg.application_name("gyro");
        match secret(
            config.password_file.as_deref(),
            "settlement.postgres.password_file",
            PG_PASSWORD_ENV,
            &env,
        ) {
            Ok(password) => {
                pg.password(password.expose());
            }
            // No password anywhere: trust or peer authentication.
            Err(PaymentConfigError::SecretMissing { .. }) => {}
            Err(e) => return Err(PostgresConfigError::Secret(e).into()),
        }
        let mode = config.tls_mode(&pg);
        let connected = match mode {
            PgTls::Disable => {
                pg.ssl_mode(SslMode::Disable);
                spawn_connection(&pg, NoTls, config.connect_timeout_ms).await
            }
            PgTls::Require | PgTls::VerifyFull => {
                // Require, never "prefer": a server that declines TLS must fail the connection,
                // not receive the password in clear.
                pg.ssl_mode(SslMode::Require);
                let tls = tls::client_config(mode, config.ca_file.as_deref())?;
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls);
                spawn_connection(&pg, tls, config.connect_timeout_ms).await
            }
        };
        connected.map_err(|e| match e {
            BillingError::Db(source) => BillingError::Connect { tls: mode.name(), source },
            other => other,
        })
    }

    /// Applies the migrations this database lacks; returns the version it is at.
    async fn migrate(&mut self, schema: &str) -> Result<i32, BillingError> {
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        let tx = self.client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(schema)]).await?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
             SET LOCAL search_path TO \"{schema}\";
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());"
        ))
        .await?;
        let found: i32 =
            tx.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await?.get(0);
        if found > known {
            return Err(BillingError::SchemaNewer { found, known });
        }
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
            tx.batch_execute(sql).await?;
            tx.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[version, name])
                .await?;
            tracing::info!(schema, version, name, "billing schema migrated");
        }
        tx.commit().await?;
        Ok(known)
    }

    /// Writes the invoice, its lines and its usage rows (again: the same rows), with `status`.
    pub async fn record_invoice(&mut self, inv: &Invoice, status: InvoiceStatus) -> Result<(), BillingError> {
        let t = &inv.totals;
        let basis = match inv.basis {
            PriceBasis::Gross => "gross",
            PriceBasis::Net => "net",
        };
        let ubl = String::from_utf8_lossy(&super::render::ubl(inv)).into_owned();
        let document = super::render::json(inv).to_string();
        let tx = self.client.transaction().await?;
        let updated = tx
            .execute(
                "INSERT INTO invoices (number, series, settlement_key, issued_at, issue_date, due_date, currency,
                     customer_id, customer_name, customer_email, price_basis, line_extension_minor,
                     tax_exclusive_minor, tax_minor, tax_inclusive_minor, rounding_minor, paid_minor,
                     payable_minor, payment_means_code, payment_means, status, ubl, document)
                 VALUES ($1, $2, $3, to_timestamp($4::bigint), $5::text::date, $6::text::date, $7, $8, $9, $10, $11,
                     $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23::text::jsonb)
                 ON CONFLICT (number) DO UPDATE SET
                     paid_minor = EXCLUDED.paid_minor, payable_minor = EXCLUDED.payable_minor,
                     payment_means_code = EXCLUDED.payment_means_code, payment_means = EXCLUDED.payment_means,
                     status = EXCLUDED.status, ubl = EXCLUDED.ubl, document = EXCLUDED.document, updated_at = now()
                 WHERE invoices.settlement_key = EXCLUDED.settlement_key
                   AND (invoices.status <> 'paid' OR EXCLUDED.status = 'paid')",
                &[
                    &inv.number,
                    &inv.series,
                    &inv.settlement_key,
                    &inv.issued_at_unix_s,
                    &inv.issue_date.to_string(),
                    &inv.due_date.to_string(),
                    &inv.currency.code,
                    &inv.buyer.id,
                    &inv.buyer.name,
                    &inv.buyer.email,
                    &basis,
                    &t.line_extension.0,
                    &t.tax_exclusive.0,
                    &t.tax.0,
                    &t.tax_inclusive.0,
                    &t.rounding.0,
                    &t.paid.0,
                    &t.payable.0,
                    &inv.payment.code(),
                    &inv.payment.describe(),
                    &status.name(),
                    &ubl,
                    &document,
                ],
            )
            .await?;
        if updated == 0 {
            // Either a paid invoice written again as unpaid (a stale step: nothing to do) or the
            // number belongs to another settlement.
            let existing: String = tx
                .query_one("SELECT settlement_key FROM invoices WHERE number = $1", &[&inv.number])
                .await?
                .get(0);
            if existing != inv.settlement_key {
                return Err(BillingError::NumberReused { number: inv.number.clone(), existing });
            }
        }
        for line in &inv.lines {
            let line_id = i32::try_from(line.id).unwrap_or(i32::MAX);
            let rating_group = line.rating_group.map(i64::from);
            let quantity = line.quantity.to_string();
            tx.execute(
                "INSERT INTO invoice_lines (invoice_number, line_id, name, rating_group, quantity, unit_code,
                     net_minor, debited_minor, vat_category, vat_rate)
                 VALUES ($1, $2, $3, $4, $5::text::numeric, $6, $7, $8, $9, $10::text::numeric)
                 ON CONFLICT (invoice_number, line_id) DO NOTHING",
                &[
                    &inv.number,
                    &line_id,
                    &line.name,
                    &rating_group,
                    &quantity,
                    &line.unit.code(),
                    &line.net.0,
                    &line.debited.0,
                    &line.vat.category.code(),
                    &line.vat.rate.to_string(),
                ],
            )
            .await?;
            tx.execute(
                "INSERT INTO usage_records (settlement_key, line_id, invoice_number, customer_id, service,
                     rating_group, quantity, unit_code, debited_minor, currency, settled_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7::text::numeric, $8, $9, $10, to_timestamp($11::bigint))
                 ON CONFLICT (settlement_key, line_id) DO NOTHING",
                &[
                    &inv.settlement_key,
                    &line_id,
                    &inv.number,
                    &inv.buyer.id,
                    &line.name,
                    &rating_group,
                    &quantity,
                    &line.unit.code(),
                    &line.debited.0,
                    &inv.currency.code,
                    &inv.issued_at_unix_s,
                ],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Writes one payment attempt (again: the newer outcome of the same attempt wins).
    pub async fn record_payment(&self, p: &PaymentRecord<'_>) -> Result<(), BillingError> {
        let attempt = i32::try_from(p.attempt).unwrap_or(i32::MAX);
        self.client
            .execute(
                "INSERT INTO payments (invoice_number, attempt, idempotency_key, outcome, payment_id,
                     amount_minor, currency, detail, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, to_timestamp($9::bigint))
                 ON CONFLICT (invoice_number, attempt) DO UPDATE SET
                     outcome = EXCLUDED.outcome, payment_id = EXCLUDED.payment_id, detail = EXCLUDED.detail,
                     at = EXCLUDED.at",
                &[
                    &p.invoice_number,
                    &attempt,
                    &p.idempotency_key,
                    &p.outcome.name(),
                    &p.payment_id,
                    &p.amount.0,
                    &p.currency,
                    &p.detail,
                    &p.at_unix_s,
                ],
            )
            .await?;
        Ok(())
    }

    /// The client, for queries of the caller's own (tests, admin reads).
    pub fn client(&self) -> &Client {
        &self.client
    }
}

#[cfg(test)]
mod tests;
