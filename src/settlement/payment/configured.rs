//! The adapter `[settlement.payment] adapter` names, its configuration sections
//! (`[settlement.stripe]`, `[settlement.webhook]`) and their secrets.
//!
//! # Secrets
//! A Stripe secret key or a webhook signing secret never sits in the configuration file: that
//! file is read by `gyro config check`, copied into tickets, and quoted in error messages.
//! It comes from a file (`secret_key_file`, `secret_file`; surrounding white space trimmed) or,
//! when no file is configured, from the environment (`GYRO_STRIPE_SECRET_KEY`,
//! `GYRO_WEBHOOK_SECRET`). A `secret_key` or `secret` key written in the file anyway is an
//! error that names it, and its value is never kept. [`Secret`]'s `Debug` prints no secret,
//! so neither does any `Debug` of an adapter.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::limits::{PAYMENT_HTTP_TIMEOUT_MS_MAX, PAYMENT_SECRET_MAX_BYTES};
use crate::settlement::SettlementConfig;

use super::http::Timeouts;
use super::stripe::Stripe;
use super::webhook::Webhook;
use super::{ChargeOutcome, ChargeRequest, IdempotencyKey, PaymentAdapter, PaymentError, Sandbox};

/// The environment variable read for the Stripe key when `secret_key_file` is not set.
pub const STRIPE_SECRET_ENV: &str = "GYRO_STRIPE_SECRET_KEY";
/// The environment variable read for the webhook secret when `secret_file` is not set.
pub const WEBHOOK_SECRET_ENV: &str = "GYRO_WEBHOOK_SECRET";

/// Which gateway charges `on_file` accounts.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdapterKind {
    /// The in-process simulated gateway (the default: zero configuration settles).
    #[default]
    Sandbox,
    Stripe,
    Webhook,
}

/// `[settlement.payment]`.
#[derive(Clone, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PaymentConfig {
    pub adapter: AdapterKind,
}

/// `[settlement.stripe]`.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StripeConfig {
    /// `https://api.stripe.com`, or a Stripe-compatible server (a mock, a proxy).
    pub base_url: String,
    /// A file holding the secret key; absent = `GYRO_STRIPE_SECRET_KEY`.
    pub secret_key_file: Option<PathBuf>,
    pub connect_timeout_ms: u64,
    /// The whole request, connection included; past it the outcome is unknown and looked up.
    pub timeout_ms: u64,
    /// Refused when present (see the module doc); the value is dropped unread.
    pub secret_key: Option<InlineSecret>,
}

impl Default for StripeConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.stripe.com".into(),
            secret_key_file: None,
            connect_timeout_ms: 3_000,
            timeout_ms: 30_000,
            secret_key: None,
        }
    }
}

/// `[settlement.webhook]`.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Where charges are POSTed; required when the adapter is `webhook`.
    pub url: Option<String>,
    /// Where `lookup` asks about a key (GET); absent = lookups answer "unknown".
    pub lookup_url: Option<String>,
    /// A file holding the signing secret; absent = `GYRO_WEBHOOK_SECRET`.
    pub secret_file: Option<PathBuf>,
    /// The whole request, connection included (the connection alone: at most 3 s of it).
    pub timeout_ms: u64,
    /// Refused when present (see the module doc); the value is dropped unread.
    pub secret: Option<InlineSecret>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self { url: None, lookup_url: None, secret_file: None, timeout_ms: 10_000, secret: None }
    }
}

/// A secret written in the configuration file. Deserializing it discards the value, so it is
/// never held, printed or compared; validation refuses it by name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InlineSecret;

impl<'de> Deserialize<'de> for InlineSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(deserializer)?;
        Ok(Self)
    }
}

/// A key or signing secret. `Debug` shows no part of it, and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A problem with the payment configuration; [`Self::key`] names the key.
#[derive(Debug, thiserror::Error)]
pub enum PaymentConfigError {
    #[error("must be an http:// or https:// URL with a host and no user name or password in it")]
    Url { key: &'static str },
    #[error("must be 1 to {PAYMENT_HTTP_TIMEOUT_MS_MAX}")]
    Timeout { key: &'static str },
    #[error("must not be more than settlement.stripe.timeout_ms")]
    ConnectTimeout,
    #[error("is required when settlement.payment.adapter = \"webhook\"")]
    WebhookUrlMissing,
    #[error("secrets are never written in the configuration file: use {file_key} or the environment variable {env}")]
    Inline { key: &'static str, file_key: &'static str, env: &'static str },
    #[error("no secret: set it to a file that holds it, or set the environment variable {env}")]
    SecretMissing { key: &'static str, env: &'static str },
    #[error("cannot read the secret: {source}")]
    SecretRead { key: &'static str, source: std::io::Error },
    #[error("the secret is empty, longer than {PAYMENT_SECRET_MAX_BYTES} bytes, or not UTF-8")]
    SecretInvalid { key: &'static str },
    #[error("the HTTP client cannot start: {source}")]
    Client { source: reqwest::Error },
}

impl PaymentConfigError {
    /// The configuration key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Url { key }
            | Self::Timeout { key }
            | Self::Inline { key, .. }
            | Self::SecretMissing { key, .. }
            | Self::SecretRead { key, .. }
            | Self::SecretInvalid { key } => key,
            Self::ConnectTimeout => "settlement.stripe.connect_timeout_ms",
            Self::WebhookUrlMissing => "settlement.webhook.url",
            Self::Client { .. } => "settlement.payment.adapter",
        }
    }
}

/// Checks `[settlement.payment]`, `[settlement.stripe]` and `[settlement.webhook]` without any
/// I/O (secrets are read by [`ConfiguredAdapter::build`]). Sections of adapters not chosen are
/// checked too, so switching adapters does not uncover old mistakes.
pub fn validate(config: &SettlementConfig) -> Result<(), PaymentConfigError> {
    let stripe = &config.stripe;
    if stripe.secret_key.is_some() {
        return Err(PaymentConfigError::Inline {
            key: "settlement.stripe.secret_key",
            file_key: "settlement.stripe.secret_key_file",
            env: STRIPE_SECRET_ENV,
        });
    }
    check_url(&stripe.base_url, "settlement.stripe.base_url")?;
    check_timeout(stripe.timeout_ms, "settlement.stripe.timeout_ms")?;
    check_timeout(stripe.connect_timeout_ms, "settlement.stripe.connect_timeout_ms")?;
    if stripe.timeout_ms < stripe.connect_timeout_ms {
        return Err(PaymentConfigError::ConnectTimeout);
    }
    let webhook = &config.webhook;
    if webhook.secret.is_some() {
        return Err(PaymentConfigError::Inline {
            key: "settlement.webhook.secret",
            file_key: "settlement.webhook.secret_file",
            env: WEBHOOK_SECRET_ENV,
        });
    }
    match &webhook.url {
        Some(url) => check_url(url, "settlement.webhook.url")?,
        None if config.payment.adapter == AdapterKind::Webhook => {
            return Err(PaymentConfigError::WebhookUrlMissing)
        }
        None => {}
    }
    if let Some(url) = &webhook.lookup_url {
        check_url(url, "settlement.webhook.lookup_url")?;
    }
    check_timeout(webhook.timeout_ms, "settlement.webhook.timeout_ms")
}

fn check_url(text: &str, key: &'static str) -> Result<(), PaymentConfigError> {
    let url = reqwest::Url::parse(text).map_err(|_| PaymentConfigError::Url { key })?;
    // Credentials in a URL would end up in logs and error messages.
    let shape = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none();
    if shape {
        Ok(())
    } else {
        Err(PaymentConfigError::Url { key })
    }
}

fn check_timeout(ms: u64, key: &'static str) -> Result<(), PaymentConfigError> {
    if (1..=PAYMENT_HTTP_TIMEOUT_MS_MAX).contains(&ms) {
        Ok(())
    } else {
        Err(PaymentConfigError::Timeout { key })
    }
}

/// The secret from `file` if set, else from the environment variable `env`.
pub(crate) fn secret(
    file: Option<&Path>,
    key: &'static str,
    env_name: &'static str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Secret, PaymentConfigError> {
    let text = match file {
        Some(path) => read_secret_file(path, key)?,
        None => env(env_name).ok_or(PaymentConfigError::SecretMissing { key, env: env_name })?,
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(PaymentConfigError::SecretInvalid { key });
    }
    Ok(Secret(trimmed.to_owned()))
}

fn read_secret_file(path: &Path, key: &'static str) -> Result<String, PaymentConfigError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|source| PaymentConfigError::SecretRead { key, source })?;
    let mut bytes = Vec::new();
    file.take(PAYMENT_SECRET_MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| PaymentConfigError::SecretRead { key, source })?;
    if PAYMENT_SECRET_MAX_BYTES < bytes.len() as u64 {
        return Err(PaymentConfigError::SecretInvalid { key });
    }
    String::from_utf8(bytes).map_err(|_| PaymentConfigError::SecretInvalid { key })
}

/// The system clock in Unix seconds: the webhook's signature time. This is the I/O edge of
/// settlement, like the sockets the HTTP adapters open.
fn system_unix_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The configured gateway. An enum rather than a `Box<dyn>`: the trait's futures are
/// `impl Future`, which a trait object cannot return, and there are three kinds.
#[derive(Debug)]
pub enum ConfiguredAdapter {
    Sandbox(Sandbox),
    Stripe(Stripe),
    Webhook(Webhook),
}

impl ConfiguredAdapter {
    /// The adapter `config` names, its secret read from the file or the process environment.
    /// `config` must have passed [`validate`].
    pub fn from_config(config: &SettlementConfig) -> Result<Self, PaymentConfigError> {
        Self::build(config, |name| std::env::var(name).ok(), system_unix_s)
    }

    /// As `from_config`, with the environment and the clock given (tests).
    pub fn build(
        config: &SettlementConfig,
        env: impl Fn(&str) -> Option<String>,
        clock: fn() -> i64,
    ) -> Result<Self, PaymentConfigError> {
        match config.payment.adapter {
            AdapterKind::Sandbox => Ok(Self::Sandbox(Sandbox::new())),
            AdapterKind::Stripe => {
                let s = &config.stripe;
                let key = secret(
                    s.secret_key_file.as_deref(),
                    "settlement.stripe.secret_key_file",
                    STRIPE_SECRET_ENV,
                    &env,
                )?;
                let timeouts = Timeouts { connect_ms: s.connect_timeout_ms, request_ms: s.timeout_ms };
                let stripe = Stripe::new(&s.base_url, key, timeouts)
                    .map_err(|source| PaymentConfigError::Client { source })?;
                Ok(Self::Stripe(stripe))
            }
            AdapterKind::Webhook => {
                let w = &config.webhook;
                let url = w.url.as_deref().ok_or(PaymentConfigError::WebhookUrlMissing)?;
                let key = secret(
                    w.secret_file.as_deref(),
                    "settlement.webhook.secret_file",
                    WEBHOOK_SECRET_ENV,
                    &env,
                )?;
                let timeouts = Timeouts { connect_ms: w.timeout_ms.min(3_000), request_ms: w.timeout_ms };
                let webhook = Webhook::new(url, w.lookup_url.as_deref(), key, timeouts, clock)
                    .map_err(|source| PaymentConfigError::Client { source })?;
                Ok(Self::Webhook(webhook))
            }
        }
    }

    pub fn kind(&self) -> AdapterKind {
        match self {
            Self::Sandbox(_) => AdapterKind::Sandbox,
            Self::Stripe(_) => AdapterKind::Stripe,
            Self::Webhook(_) => AdapterKind::Webhook,
        }
    }
}

impl PaymentAdapter for ConfiguredAdapter {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, PaymentError> {
        match self {
            Self::Sandbox(a) => a.charge(request).await,
            Self::Stripe(a) => a.charge(request).await,
            Self::Webhook(a) => a.charge(request).await,
        }
    }

    async fn lookup(&self, key: &IdempotencyKey) -> Result<Option<ChargeOutcome>, PaymentError> {
        match self {
            Self::Sandbox(a) => a.lookup(key).await,
            Self::Stripe(a) => a.lookup(key).await,
            Self::Webhook(a) => a.lookup(key).await,
        }
    }
}
