//! TLS to PostgreSQL: `[settlement.postgres] tls` and `ca_file` turned into a rustls client
//! configuration for `tokio-postgres-rustls`.
//!
//! On rustls with ring, the stack the payment adapters and the SMTP client already use: one TLS
//! implementation in the binary and no OpenSSL. The modes mean what libpq's `sslmode` of the same
//! name means, so an operator's expectations carry over:
//!
//! - `disable`: plain TCP.
//! - `require`: encrypted, the server's certificate *not* checked (as libpq's `require` without
//!   a root certificate). It stops a passive listener, not an impostor; the handshake's own
//!   signatures are still verified, so the session is at least bound to the key the server
//!   presented.
//! - `verify-full`: the certificate must chain to Mozilla's roots (webpki-roots) or to a
//!   certificate of `ca_file`, and name the host of the URL (a DNS name or an IP address).
//!
//! Not done: client certificates (`sslcert`/`sslkey`), libpq's `verify-ca` (a chain without the
//! name check), and revocation (CRLs, OCSP).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{self, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;

use super::PostgresConfigError;
use crate::limits::POSTGRES_CA_FILE_MAX_BYTES;

/// `[settlement.postgres] tls`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgTls {
    Disable,
    Require,
    VerifyFull,
}

impl PgTls {
    pub fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// The rustls configuration for `mode`, trusting `ca_file`'s certificates besides the web PKI
/// roots. Not for `Disable`, which connects without TLS.
pub(super) fn client_config(
    mode: PgTls,
    ca_file: Option<&Path>,
) -> Result<ClientConfig, PostgresConfigError> {
    assert!(mode != PgTls::Disable, "tls = \"disable\" connects without a TLS configuration");
    let provider = Arc::new(crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| PostgresConfigError::Tls(e.to_string()))?;
    if mode == PgTls::Require {
        let verifier = Arc::new(EncryptOnly(provider));
        return Ok(builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth());
    }
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| ca_error(path, &e))?;
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

fn ca_error(path: &Path, error: &dyn std::fmt::Display) -> PostgresConfigError {
    PostgresConfigError::Ca(format!("{}: {error}", path.display()))
}

/// Every certificate in a PEM file (at least one).
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, PostgresConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ca_error(path, &e))?;
    if POSTGRES_CA_FILE_MAX_BYTES < bytes.len() as u64 {
        return Err(ca_error(path, &"too large for a CA bundle"));
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_error(path, &e))?;
    if certs.is_empty() {
        return Err(ca_error(path, &"no certificate in it"));
    }
    Ok(certs)
}

/// `require`: any certificate is accepted, but the handshake signatures must verify against the
/// key in it, with the provider's algorithms.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
