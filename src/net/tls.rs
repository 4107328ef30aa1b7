//! Diameter over TLS/TCP with TLS at connect (RFC 6733 §13, port 5658 by §2.1): the rustls
//! server configuration read from `[diameter.tls]`, the handshake in the accepted connection's
//! task, and the DNS names of the client certificate that the peer layer compares with the
//! Origin-Host of the CER.
//!
//! Owns: reading and checking the PEM files (errors name the key and the file), the handshake
//! with its timeout, the certificate's names. Must not touch: the Diameter state machine (it
//! gets the names as data) or the framing (the connection task is the same as over TCP).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use x509_cert::der::asn1::ObjectIdentifier;
use x509_cert::der::{Decode, Tag, Tagged};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;

use super::connection::Connection;
use super::Shared;
use crate::config::DiameterTlsConfig;
use crate::limits::{TLS_HANDSHAKE_TIMEOUT_MS, TLS_PEM_FILE_MAX_BYTES};

/// id-ce-subjectAltName (RFC 5280 §4.2.1.6).
const SUBJECT_ALT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.17");
/// id-at-commonName (RFC 4519 §2.3).
const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// A `[diameter.tls]` file that cannot be used, naming the key and the file.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {}: {problem}", path.display())]
pub struct TlsConfigError {
    pub key: &'static str,
    pub path: PathBuf,
    pub problem: String,
}

/// Whether the client certificate is bound to the peer's Origin-Host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerIdentity {
    /// Any certificate the verifier accepted (or none, without `client_ca_file`) will do.
    Unchecked,
    /// The Origin-Host of the CER must be one of the certificate's DNS names (else 3010).
    MatchOriginHost,
}

/// The TLS side of a listener: the rustls acceptor and the identity policy.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: TlsAcceptor,
    identity: PeerIdentity,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl TlsServer {
    /// Reads the certificate chain, the key and the client CAs of `[diameter.tls]`.
    ///
    /// TLS 1.2 and 1.3 with rustls' default (safe) suites on the ring provider. With
    /// `client_ca_file` every client must present a certificate chaining to one of its CAs
    /// (mutual TLS); without it, clients are not asked for one.
    pub fn load(cfg: &DiameterTlsConfig) -> Result<Self, TlsConfigError> {
        let cert_path = cfg.cert_file.as_deref().expect("TLS is configured: cert_file is set");
        let key_path = cfg.key_file.as_deref().expect("TLS is configured: key_file is set");
        let chain = read_certificates("diameter.tls.cert_file", cert_path)?;
        let key = read_key(key_path)?;
        let provider = Arc::new(default_provider());
        let fail = |key, path: &Path, problem: String| TlsConfigError { key, path: path.to_owned(), problem };
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| fail("diameter.tls.cert_file", cert_path, e.to_string()))?;
        let builder = match &cfg.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca_path) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certificates("diameter.tls.client_ca_file", ca_path)? {
                    roots
                        .add(cert)
                        .map_err(|e| fail("diameter.tls.client_ca_file", ca_path, e.to_string()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| fail("diameter.tls.client_ca_file", ca_path, e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        // rustls checks that the key is the one the leaf certificate certifies.
        let config = builder.with_single_cert(chain, key).map_err(|e| {
            fail("diameter.tls.key_file", key_path, format!("does not fit diameter.tls.cert_file: {e}"))
        })?;
        let identity = if cfg.peer_identity_required() {
            PeerIdentity::MatchOriginHost
        } else {
            PeerIdentity::Unchecked
        };
        Ok(Self { acceptor: TlsAcceptor::from(Arc::new(config)), identity })
    }

    pub fn identity(&self) -> PeerIdentity {
        self.identity
    }

    /// Runs one accepted TCP connection: the handshake (bounded by `TLS_HANDSHAKE_TIMEOUT_MS`
    /// and by shutdown), then the same connection task as plain TCP over the TLS stream.
    pub(super) async fn serve(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) {
        // RFC 6733 §5.6: the TLS handshake comes before any Diameter message, so the CER and
        // CEA are protected; a client that sends a CER in clear fails the handshake here.
        let handshake =
            tokio::time::timeout(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS), self.acceptor.accept(tcp));
        let stream = tokio::select! {
            r = handshake => match r {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::warn!(%addr, %error, "TLS handshake failed; connection closed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%addr, timeout_ms = TLS_HANDSHAKE_TIMEOUT_MS, "TLS handshake timed out; connection closed");
                    return;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let session = stream.get_ref().1;
        let leaf = session.peer_certificates().and_then(<[_]>::first);
        let names = leaf.map(|c| certificate_names(c)).unwrap_or_default();
        tracing::info!(
            %addr,
            tls = true,
            version = ?session.protocol_version(),
            subject = leaf.map(|c| certificate_subject(c)).as_deref().unwrap_or("(no client certificate)"),
            ?names,
            "TLS connection accepted"
        );
        let mut connection = Connection::new(stream, addr, shared);
        if self.identity == PeerIdentity::MatchOriginHost {
            connection.bind_peer_identity(names);
        }
        connection.run(shutdown).await;
    }
}

/// The DNS names a certificate is for: its subjectAltName dNSName entries, or, when it has
/// none, the common names of its subject (the older convention still met in operator PKIs).
/// A certificate that cannot be parsed has no names, so it matches no Origin-Host.
pub fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok(cert) = x509_cert::Certificate::from_der(der) else {
        return Vec::new();
    };
    let tbs = &cert.tbs_certificate;
    let mut names = Vec::new();
    for ext in tbs.extensions.iter().flatten().filter(|e| e.extn_id == SUBJECT_ALT_NAME) {
        if let Ok(san) = SubjectAltName::from_der(ext.extn_value.as_bytes()) {
            for name in san.0 {
                if let GeneralName::DnsName(dns) = name {
                    names.push(dns.as_str().to_owned());
                }
            }
        }
    }
    if names.is_empty() {
        for atv in tbs.subject.0.iter().flat_map(|rdn| rdn.0.iter()).filter(|a| a.oid == COMMON_NAME) {
            let text = matches!(atv.value.tag(), Tag::Utf8String | Tag::PrintableString | Tag::Ia5String);
            if let (true, Ok(cn)) = (text, std::str::from_utf8(atv.value.value())) {
                names.push(cn.to_owned());
            }
        }
    }
    names
}

/// The certificate's subject as an RFC 4514 string, for logs.
pub fn certificate_subject(der: &[u8]) -> String {
    x509_cert::Certificate::from_der(der)
        .map_or_else(|_| "(unparsable certificate)".to_owned(), |c| c.tbs_certificate.subject.to_string())
}

/// Reads a PEM file (bounded), naming `key` and the file in errors.
fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    let fail = |problem: String| TlsConfigError { key, path: path.to_owned(), problem };
    let size = std::fs::metadata(path).map_err(|e| fail(format!("cannot read: {e}")))?.len();
    if TLS_PEM_FILE_MAX_BYTES < size {
        return Err(fail(format!("{size} bytes, more than {TLS_PEM_FILE_MAX_BYTES} for a PEM file")));
    }
    std::fs::read(path).map_err(|e| fail(format!("cannot read: {e}")))
}

/// Every certificate in a PEM file (at least one).
fn read_certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let bytes = read_pem(key, path)?;
    let fail = |problem: String| TlsConfigError { key, path: path.to_owned(), problem };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate (BEGIN CERTIFICATE) in it".into()));
    }
    Ok(certs)
}

/// The first private key in a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let key = "diameter.tls.key_file";
    let bytes = read_pem(key, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsConfigError {
        key,
        path: path.to_owned(),
        problem: format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) in it: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn names_come_from_dns_subject_alt_names_before_the_common_name() {
        let mut p = rcgen::CertificateParams::new(vec!["pgw.test".into(), "pgw2.test".into()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "ignored.test");
        assert_eq!(certificate_names(&cert(p)), ["pgw.test", "pgw2.test"]);
    }

    #[test]
    fn without_dns_names_the_common_name_counts() {
        let mut p = rcgen::CertificateParams::new(Vec::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "pgw.test");
        let der = cert(p);
        assert_eq!(certificate_names(&der), ["pgw.test"]);
        assert!(certificate_subject(&der).contains("CN=pgw.test"), "{}", certificate_subject(&der));
    }

    #[test]
    fn garbage_has_no_names() {
        assert!(certificate_names(b"not a certificate").is_empty());
        assert!(certificate_names(&[]).is_empty());
    }
}
