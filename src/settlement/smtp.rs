//! Sending settlement e-mails: by SMTP in production, as `.eml` files in the embedded run.
//!
//! - [`SmtpConfig`] is `[settlement.smtp]`. An empty `host` (the default) means no relay: the
//!   messages go to [`EmlDir`] in the data directory, so the zero-configuration run needs no
//!   mail server. With a host, `security` is `starttls` (RFC 3207, port 587, the default),
//!   `tls` (implicit TLS, RFC 8314 §3.3, port 465) or `none` (plain SMTP, port 25, allowed only
//!   to a relay on a loopback address and never with credentials: a password must not cross a
//!   network in clear text).
//! - The password comes from `password_file`, else the environment variable
//!   `GYRO_SMTP_PASSWORD`; a `password` written in the file is refused, as the payment
//!   adapters' secrets are.
//! - [`SmtpMailer`] is lettre's async SMTP client on rustls (the same TLS stack as the payment
//!   adapters: no OpenSSL). `ca_file` adds a private CA to the web PKI roots. The envelope
//!   sender is the seller's address; the recipient is the message's `To`.
//! - [`Mailer`] is what the settlement worker holds: one of the two, chosen by configuration.
//!   Delivery is at least once (a crash between the relay's 250 and the worker's journal record
//!   sends again); the Message-ID is stable per invoice and kind, so the resend is recognisable
//!   as the same message.
//!
//! Errors are split as SMTP splits them (RFC 5321 §4.2.1): a 4yz reply, a timeout or a broken
//! connection is [`SendError::Transient`] (retry later); a 5yz reply (bad recipient,
//! authentication refused, message refused) is [`SendError::Permanent`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;

use super::email::{EmlDir, Rendered};
use super::payment::configured::{secret, InlineSecret, PaymentConfigError, Secret};
use crate::limits::{SMTP_CA_FILE_MAX_BYTES, SMTP_TIMEOUT_MS_MAX};

/// Where the SMTP password comes from when `password_file` is not set.
pub const SMTP_PASSWORD_ENV: &str = "GYRO_SMTP_PASSWORD";

/// How the connection to the relay is protected.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS, which must succeed (RFC 3207); port 587.
    #[default]
    Starttls,
    /// TLS from the first byte (RFC 8314 §3.3); port 465.
    Tls,
    /// No encryption: a relay on this host only, without credentials; port 25.
    None,
}

impl SmtpSecurity {
    fn default_port(self) -> u16 {
        match self {
            Self::Starttls => 587,
            Self::Tls => 465,
            Self::None => 25,
        }
    }
}

/// `[settlement.smtp]`.
#[derive(Clone, PartialEq, Eq, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// The relay's host name or address; empty = write `.eml` files instead.
    pub host: String,
    /// Default: 587, 465 or 25 by `security`.
    pub port: Option<u16>,
    pub security: SmtpSecurity,
    /// Authenticate (PLAIN or LOGIN, over TLS only) as this user; absent = no AUTH.
    pub username: Option<String>,
    /// A file holding the password; absent = `GYRO_SMTP_PASSWORD`.
    pub password_file: Option<PathBuf>,
    /// A PEM file with more CA certificates to trust (a private relay's CA).
    pub ca_file: Option<PathBuf>,
    /// One SMTP exchange, connection included.
    pub timeout_ms: u64,
    /// Refused when present; the value is dropped unread.
    pub password: Option<InlineSecret>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: None,
            security: SmtpSecurity::default(),
            username: None,
            password_file: None,
            ca_file: None,
            timeout_ms: 30_000,
            password: None,
        }
    }
}

/// A problem with `[settlement.smtp]`; [`Self::key`] names the key.
#[derive(Debug, thiserror::Error)]
pub enum SmtpConfigError {
    #[error("must be a host name or an IP address (no scheme, port or spaces)")]
    Host,
    #[error("is 0")]
    Port,
    #[error("must be 1 to {SMTP_TIMEOUT_MS_MAX}")]
    Timeout,
    #[error(
        "\"none\" sends in clear text: allowed only to a relay on a loopback address \
         (127.0.0.1, ::1, localhost) and without a username"
    )]
    Plaintext,
    #[error("is set but settlement.smtp.host is empty")]
    NoHost { key: &'static str },
    #[error("is not an e-mail address, and it is the SMTP envelope's sender")]
    Sender,
    #[error("cannot use the CA file: {0}")]
    Ca(String),
    #[error("{0}")]
    Secret(PaymentConfigError),
}

impl SmtpConfigError {
    /// The configuration key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            Self::Host => "settlement.smtp.host",
            Self::Port => "settlement.smtp.port",
            Self::Timeout => "settlement.smtp.timeout_ms",
            Self::Plaintext => "settlement.smtp.security",
            Self::NoHost { key } => key,
            Self::Sender => "settlement.seller.email",
            Self::Ca(_) => "settlement.smtp.ca_file",
            Self::Secret(e) => e.key(),
        }
    }
}

impl SmtpConfig {
    /// Whether e-mail goes to a relay (else to `.eml` files).
    pub fn enabled(&self) -> bool {
        !self.host.is_empty()
    }

    /// Checks the section without I/O (files and secrets are read by [`SmtpMailer::new`]).
    pub fn validate(&self) -> Result<(), SmtpConfigError> {
        if self.password.is_some() {
            return Err(SmtpConfigError::Secret(PaymentConfigError::Inline {
                key: "settlement.smtp.password",
                file_key: "settlement.smtp.password_file",
                env: SMTP_PASSWORD_ENV,
            }));
        }
        if !(1..=SMTP_TIMEOUT_MS_MAX).contains(&self.timeout_ms) {
            return Err(SmtpConfigError::Timeout);
        }
        if !self.enabled() {
            // Settings for a relay that is not there are a mistake, not a no-op.
            let stray = [
                (self.port.is_some(), "settlement.smtp.port"),
                (self.username.is_some(), "settlement.smtp.username"),
                (self.password_file.is_some(), "settlement.smtp.password_file"),
                (self.ca_file.is_some(), "settlement.smtp.ca_file"),
            ];
            return match stray.iter().find(|(set, _)| *set) {
                Some((_, key)) => Err(SmtpConfigError::NoHost { key }),
                None => Ok(()),
            };
        }
        let host_ok = self.host.len() <= 253
            && self.host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
        if !host_ok {
            return Err(SmtpConfigError::Host);
        }
        if self.port == Some(0) {
            return Err(SmtpConfigError::Port);
        }
        if self.security == SmtpSecurity::None && (self.username.is_some() || !is_loopback(&self.host)) {
            return Err(SmtpConfigError::Plaintext);
        }
        Ok(())
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Why a message was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Try again later: a 4yz reply, a timeout, a connection or TLS failure.
    #[error("transient: {0}")]
    Transient(String),
    /// Will not succeed as it is: a 5yz reply (recipient, authentication, content), or an
    /// address lettre cannot use.
    #[error("permanent: {0}")]
    Permanent(String),
}

/// An SMTP client for one relay.
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    sender: Address,
    relay: String,
    timeout: Duration,
}

impl std::fmt::Debug for SmtpMailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMailer").field("relay", &self.relay).field("sender", &self.sender).finish()
    }
}

impl SmtpMailer {
    /// A client for the relay `config` names (which must have passed
    /// [`SmtpConfig::validate`] and be [`SmtpConfig::enabled`]), sending as `sender` (the
    /// seller's address). Reads the CA file and the password (from the file, else from `env`).
    pub fn new(
        config: &SmtpConfig,
        sender: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, SmtpConfigError> {
        config.validate()?;
        let sender: Address = sender.parse().map_err(|_| SmtpConfigError::Sender)?;
        let port = config.port.unwrap_or(config.security.default_port());
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.as_str())
            .port(port)
            .timeout(Some(Duration::from_millis(config.timeout_ms)));
        if config.security != SmtpSecurity::None {
            let mut tls = TlsParameters::builder(config.host.clone());
            if let Some(path) = &config.ca_file {
                for cert in read_ca_file(path)? {
                    tls = tls.add_root_certificate(cert);
                }
            }
            let tls = tls.build_rustls().map_err(|e| SmtpConfigError::Ca(e.to_string()))?;
            builder = builder.tls(match config.security {
                SmtpSecurity::Starttls => Tls::Required(tls),
                _ => Tls::Wrapper(tls),
            });
        }
        if let Some(user) = &config.username {
            let password = secret(
                config.password_file.as_deref(),
                "settlement.smtp.password_file",
                SMTP_PASSWORD_ENV,
                &env,
            )
            .map_err(SmtpConfigError::Secret)?;
            builder = builder.credentials(Credentials::new(user.clone(), expose(password)));
        }
        Ok(Self {
            transport: builder.build(),
            sender,
            relay: format!("{}:{port}", config.host),
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    /// Sends one message; returns the relay's reply to the end of data (its queue id, usually).
    pub async fn send(&self, message: &Rendered) -> Result<String, SendError> {
        let to: Address = message
            .to
            .parse()
            .map_err(|e| SendError::Permanent(format!("recipient {:?}: {e}", message.to)))?;
        let envelope = Envelope::new(Some(self.sender.clone()), vec![to])
            .map_err(|e| SendError::Permanent(format!("envelope: {e}")))?;
        // lettre's timeout bounds the connection and each socket operation on a plain stream,
        // not the whole exchange over TLS (a relay that stops answering after AUTH held it for
        // the relay's own 300 s in a test), so the exchange as a whole is bounded here too.
        let sent = tokio::time::timeout(self.timeout, self.transport.send_raw(&envelope, &message.bytes));
        match sent.await {
            Ok(Ok(reply)) => Ok(reply.message().collect::<Vec<_>>().join(" ")),
            Ok(Err(e)) if e.is_permanent() => Err(SendError::Permanent(e.to_string())),
            Ok(Err(e)) => Err(SendError::Transient(e.to_string())),
            Err(_) => Err(SendError::Transient(format!(
                "{}: no answer within {} ms",
                self.relay,
                self.timeout.as_millis()
            ))),
        }
    }

    /// `host:port`, for logs.
    pub fn relay(&self) -> &str {
        &self.relay
    }
}

fn expose(secret: Secret) -> String {
    secret.expose().to_owned()
}

/// Every certificate in a PEM file.
fn read_ca_file(path: &Path) -> Result<Vec<Certificate>, SmtpConfigError> {
    let text = std::fs::read(path).map_err(|e| SmtpConfigError::Ca(format!("{}: {e}", path.display())))?;
    if text.len() as u64 > SMTP_CA_FILE_MAX_BYTES {
        return Err(SmtpConfigError::Ca(format!("{}: too large for a CA bundle", path.display())));
    }
    let text = String::from_utf8(text)
        .map_err(|_| SmtpConfigError::Ca(format!("{}: not a PEM file", path.display())))?;
    const END: &str = "-----END CERTIFICATE-----";
    let mut certs = Vec::new();
    for block in text.split_inclusive(END).filter(|b| b.contains(END)) {
        let cert = Certificate::from_pem(block.trim_start().as_bytes())
            .map_err(|e| SmtpConfigError::Ca(format!("{}: {e}", path.display())))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(SmtpConfigError::Ca(format!("{}: no certificate in it", path.display())));
    }
    Ok(certs)
}

/// Where settlement e-mails go: a relay, or `.eml` files.
#[derive(Debug)]
pub enum Mailer {
    Files(EmlDir),
    /// Boxed: the client (pool, TLS parameters) is many times the size of a directory path.
    Smtp(Box<SmtpMailer>),
}

impl Mailer {
    /// Delivers `message`; returns where it went (a file path or the relay's reply).
    pub async fn deliver(&self, message: &Rendered) -> Result<String, SendError> {
        match self {
            Self::Files(dir) => dir
                .write(message)
                .map(|p| p.display().to_string())
                .map_err(|e| SendError::Transient(format!("{}: {e}", dir.dir().display()))),
            Self::Smtp(smtp) => smtp.send(message).await,
        }
    }
}

#[cfg(test)]
mod tests;
