//! Diameter over TLS (RFC 6733 §13) over loopback, with certificates made here by rcgen: TLS
//! without client certificates, mutual TLS, a certificate from another CA, a certificate for
//! another host than the CER's Origin-Host, plain TCP on the TLS port, and start-up errors that
//! name the key and the file. Every step is bounded by `STEP`.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use common::*;
use gyro::catalog::Catalog;
use gyro::cc::{Engine, EngineConfig};
use gyro::config::DiameterTlsConfig;
use gyro::diameter::encode::spec;
use gyro::diameter::{ApplicationId, AvpSpec, CommandCode, Dictionary};
use gyro::ledger::Ledger;
use gyro::net::charging::Charging;
use gyro::net::tls::TlsServer;
use gyro::net::{Server, ServerLimits, Shared};
use gyro::peer::PeerConfig;
use rcgen::{BasicConstraints, Certificate, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// A certificate and its key.
struct Issued {
    cert: Certificate,
    key: KeyPair,
}

/// The test PKI: a CA, the server's certificate for gyro.test, a client certificate for
/// client.test, one for other.test (same CA) and one for client.test from another CA.
struct Pki {
    ca: Issued,
    server: Issued,
    client: Issued,
    other_name: Issued,
    other_ca_client: Issued,
    dir: tempfile::TempDir,
}

fn new_ca(name: &str) -> Issued {
    let mut p = CertificateParams::new(Vec::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    Issued { cert: p.self_signed(&key).unwrap(), key }
}

fn issue(by: &Issued, name: &str, usage: ExtendedKeyUsagePurpose) -> Issued {
    let mut p = CertificateParams::new(vec![name.to_owned()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    Issued { cert: p.signed_by(&key, &by.cert, &by.key).unwrap(), key }
}

impl Pki {
    fn new() -> Self {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let ca = new_ca("gyro test CA");
        let other = new_ca("another CA");
        let dir = tempfile::tempdir().unwrap();
        let pki = Self {
            server: issue(&ca, "gyro.test", ServerAuth),
            client: issue(&ca, "client.test", ClientAuth),
            other_name: issue(&ca, "other.test", ClientAuth),
            other_ca_client: issue(&other, "client.test", ClientAuth),
            ca,
            dir,
        };
        std::fs::write(pki.path("server.pem"), pki.server.cert.pem()).unwrap();
        std::fs::write(pki.path("server.key"), pki.server.key.serialize_pem()).unwrap();
        std::fs::write(pki.path("ca.pem"), pki.ca.cert.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `[diameter.tls]` for these files; `client_ca` turns mutual TLS on.
    fn config(&self, client_ca: bool) -> DiameterTlsConfig {
        DiameterTlsConfig {
            cert_file: Some(self.path("server.pem")),
            key_file: Some(self.path("server.key")),
            client_ca_file: client_ca.then(|| self.path("ca.pem")),
            ..DiameterTlsConfig::default()
        }
    }

    /// Connects over TLS, trusting our CA, presenting `client` if given.
    async fn connect(
        &self,
        addr: SocketAddr,
        client: Option<&Issued>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.cert.der().clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let key = PrivateKeyDer::try_from(c.key.serialize_der()).unwrap();
                let chain: Vec<CertificateDer<'static>> = vec![c.cert.der().clone()];
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        };
        let tcp = tokio::time::timeout(STEP, TcpStream::connect(addr)).await.unwrap().unwrap();
        let name = ServerName::try_from("gyro.test").unwrap();
        let connect = TlsConnector::from(Arc::new(config)).connect(name, tcp);
        tokio::time::timeout(STEP, connect).await.expect("handshake in time")
    }
}

/// A server with the credit-control engine on the demo catalog, listening on plain TCP and TLS.
struct TlsTestServer {
    plain: SocketAddr,
    tls: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start_tls(tls: &DiameterTlsConfig) -> TlsTestServer {
    let engine = Arc::new(Engine::new(EngineConfig::new(&local()), Arc::new(Ledger::new())));
    let charging = Arc::new(Charging::new(Arc::clone(&engine)));
    engine.load_catalog(&Catalog::demo(), charging.now().mono_ms).unwrap();
    let peer = Arc::new(PeerConfig {
        local: local(),
        dictionary: Arc::new(Dictionary::embedded().unwrap()),
        applications: vec![ApplicationId::CREDIT_CONTROL],
        allowed_peers: None,
        watchdog_interval_ms: 30_000,
    });
    let shared = Arc::new(Shared::new(peer, vec![charging], ServerLimits::default()));
    let mut server = Server::new(shared);
    let plain = server.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let tls = server.listen_tls("127.0.0.1:0".parse().unwrap(), TlsServer::load(tls).unwrap()).await.unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.run(shutdown.clone()));
    TlsTestServer { plain, tls, shutdown, task }
}

impl TlsTestServer {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(STEP, self.task).await.expect("server stopped in time").unwrap();
    }
}

/// Rebuilds a message with a Session-Id as its first AVP.
fn with_session(b: Bytes, session: &str) -> Bytes {
    let m = msg(&b);
    let h = m.header;
    let mut out = BytesMut::new();
    let mut e =
        gyro::diameter::Encoder::new(&mut out, h.flags, h.command, h.application, h.hop_by_hop, h.end_to_end);
    e.str(spec::SESSION_ID, session);
    e.raw(m.body);
    e.finish();
    out.freeze()
}

/// A CCR-I for a demo subscriber asking for quota in rating group 10.
fn ccr_i<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(c: &mut Client<S>, msisdn: &str) -> Bytes {
    let req = c.request(CommandCode::CREDIT_CONTROL, ApplicationId::CREDIT_CONTROL, |e| {
        e.str(spec::DESTINATION_REALM, "test");
        e.u32(spec::AUTH_APPLICATION_ID, 4);
        e.str(AvpSpec::mandatory(461), "32251@3gpp.org");
        e.u32(AvpSpec::mandatory(416), 1);
        e.u32(AvpSpec::mandatory(415), 0);
        let g = e.begin_group(AvpSpec::mandatory(443));
        e.u32(AvpSpec::mandatory(450), 0).str(AvpSpec::mandatory(444), msisdn);
        e.end_group(g);
        let m = e.begin_group(AvpSpec::mandatory(456));
        let r = e.begin_group(AvpSpec::mandatory(437));
        e.end_group(r);
        e.u32(AvpSpec::mandatory(432), 10);
        e.end_group(m);
    });
    let host = c.origin_host.clone();
    with_session(req, &format!("{host};1;{msisdn}"))
}

/// CER/CEA 2001 then a CCR-I answered 2001, over TLS as `origin_host`.
async fn charge_over(stream: TlsStream<TcpStream>, origin_host: &str, msisdn: &str) {
    let mut c = Client::over(stream);
    c.origin_host = origin_host.to_owned();
    c.exchange_capabilities().await;
    let ccr = ccr_i(&mut c, msisdn);
    assert_eq!(result_code(&c.call(&ccr).await), Some(2001));
}

/// The server refused the connection: the handshake failed, or (TLS 1.3, where the client
/// finishes before the server has checked its certificate) the first read finds an alert or
/// the end of the stream, and never a Diameter answer.
async fn expect_refused(connected: std::io::Result<TlsStream<TcpStream>>) {
    let Ok(mut stream) = connected else { return };
    let mut c = Client::over(tokio::io::empty());
    let cer = c.cer(&[4]);
    let _ = tokio::time::timeout(STEP, stream.write_all(&cer)).await.expect("write in time");
    let mut buf = [0u8; 64];
    match tokio::time::timeout(STEP, stream.read(&mut buf)).await.expect("refused in time") {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("the server answered {n} bytes to a refused client"),
    }
}

#[tokio::test]
async fn tls_without_client_certificates_serves_cer_and_ccr_beside_plain_tcp() {
    let pki = Pki::new();
    let s = start_tls(&pki.config(false)).await;
    let stream = pki.connect(s.tls, None).await.expect("handshake");
    assert!(stream.get_ref().1.peer_certificates().is_some());
    charge_over(stream, "pgw.test", "491700000002").await;
    // Plain TCP on its own port keeps working alongside.
    let mut c = Client::open(s.plain).await;
    let ccr = ccr_i(&mut c, "491700000001");
    assert_eq!(result_code(&c.call(&ccr).await), Some(2001));
    s.stop().await;
}

#[tokio::test]
async fn mutual_tls_with_a_certificate_for_the_origin_host_is_open() {
    let pki = Pki::new();
    let s = start_tls(&pki.config(true)).await;
    let stream = pki.connect(s.tls, Some(&pki.client)).await.expect("handshake");
    // The Origin-Host compares case-insensitively with the certificate's DNS name.
    charge_over(stream, "Client.Test", "491700000002").await;
    s.stop().await;
}

#[tokio::test]
async fn mutual_tls_refuses_a_certificate_from_another_ca_and_no_certificate() {
    let pki = Pki::new();
    let s = start_tls(&pki.config(true)).await;
    expect_refused(pki.connect(s.tls, Some(&pki.other_ca_client)).await).await;
    expect_refused(pki.connect(s.tls, None).await).await;
    // The server goes on serving good clients.
    let stream = pki.connect(s.tls, Some(&pki.client)).await.expect("handshake");
    charge_over(stream, "client.test", "491700000002").await;
    s.stop().await;
}

#[tokio::test]
async fn a_certificate_for_another_host_than_the_origin_host_gets_3010_and_close() {
    let pki = Pki::new();
    let s = start_tls(&pki.config(true)).await;
    let stream = pki.connect(s.tls, Some(&pki.other_name)).await.expect("the certificate itself is valid");
    let mut c = Client::over(stream);
    c.origin_host = "client.test".into();
    let cer = c.cer(&[4]);
    c.send_raw(&cer).await;
    let cea = c.recv().await.expect("CEA");
    assert_eq!(result_code(&cea), Some(3010));
    assert!(msg(&cea).header.flags.is_error(), "3xxx answers carry the E bit");
    c.expect_closed().await;
    s.stop().await;
}

#[tokio::test]
async fn require_peer_identity_false_accepts_any_certificate_of_the_ca() {
    let pki = Pki::new();
    let cfg = DiameterTlsConfig { require_peer_identity: Some(false), ..pki.config(true) };
    let s = start_tls(&cfg).await;
    let stream = pki.connect(s.tls, Some(&pki.other_name)).await.expect("handshake");
    charge_over(stream, "client.test", "491700000002").await;
    s.stop().await;
}

#[tokio::test]
async fn plain_tcp_on_the_tls_port_fails_the_handshake_and_others_are_served() {
    let pki = Pki::new();
    let s = start_tls(&pki.config(false)).await;
    // A client that connects and says nothing holds a slot, not the accept loop.
    let _stalled = TcpStream::connect(s.tls).await.unwrap();
    let mut clear = Client::connect(s.tls).await;
    let cer = clear.cer(&[4]);
    clear.send_raw(&cer).await;
    let mut got = Vec::new();
    let read = clear.stream.read_to_end(&mut got);
    let _ = tokio::time::timeout(STEP, read).await.expect("closed in time");
    // At most a TLS alert (content type 21), never a Diameter answer (version 1).
    assert!(got.first().is_none_or(|b| *b == 21), "{got:?}");
    let stream = pki.connect(s.tls, None).await.expect("handshake");
    charge_over(stream, "pgw.test", "491700000002").await;
    s.stop().await;
}

#[test]
fn unusable_files_are_named_with_their_key() {
    let pki = Pki::new();
    let error = |cfg: &DiameterTlsConfig| TlsServer::load(cfg).unwrap_err().to_string();
    let missing = DiameterTlsConfig { cert_file: Some(pki.path("nope.pem")), ..pki.config(false) };
    let e = error(&missing);
    assert!(e.contains("diameter.tls.cert_file") && e.contains("nope.pem"), "{e}");
    std::fs::write(pki.path("junk.pem"), "not PEM at all\n").unwrap();
    let junk = DiameterTlsConfig { key_file: Some(pki.path("junk.pem")), ..pki.config(false) };
    let e = error(&junk);
    assert!(e.contains("diameter.tls.key_file") && e.contains("junk.pem"), "{e}");
    let junk_ca = DiameterTlsConfig { client_ca_file: Some(pki.path("junk.pem")), ..pki.config(false) };
    let e = error(&junk_ca);
    assert!(e.contains("diameter.tls.client_ca_file") && e.contains("junk.pem"), "{e}");
    // The client's key beside the server's certificate: they do not belong together.
    std::fs::write(pki.path("client.key"), pki.client.key.serialize_pem()).unwrap();
    let mismatch = DiameterTlsConfig { key_file: Some(pki.path("client.key")), ..pki.config(false) };
    let e = error(&mismatch);
    assert!(e.contains("diameter.tls.key_file") && e.contains("client.key"), "{e}");
    assert!(TlsServer::load(&pki.config(true)).is_ok());
}

/// Interop with another TLS stack: `openssl s_client` (OpenSSL, not rustls) presents the
/// client certificate, verifies gyro's for gyro.test, carries a CER in and the CEA out. Needs the
/// `openssl` command, which a fresh machine may lack: `.ci/run` installs it and runs this.
#[tokio::test]
#[ignore = "needs the openssl command; run by .ci/run"]
async fn openssl_s_client_gets_cea_2001_over_mutual_tls() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};

    let pki = Pki::new();
    std::fs::write(pki.path("client.pem"), pki.client.cert.pem()).unwrap();
    std::fs::write(pki.path("client.key"), pki.client.key.serialize_pem()).unwrap();
    let s = start_tls(&pki.config(true)).await;
    let path = |name: &str| pki.path(name).to_str().unwrap().to_owned();
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &s.tls.to_string(), "-servername", "gyro.test"])
        .args(["-verify_hostname", "gyro.test", "-verify_return_error", "-CAfile", &path("ca.pem")])
        .args(["-cert", &path("client.pem"), "-key", &path("client.key")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed (the interop check needs it)");
    let mut c = Client::over(tokio::io::empty());
    c.origin_host = "client.test".into();
    let cer = c.cer(&[4]);
    child.stdin.as_mut().unwrap().write_all(&cer).unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Ok(Some(n)) = gyro::diameter::frame(&buf) {
                return Some(Bytes::copy_from_slice(&buf[..n]));
            }
            match stdout.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    let cea = tokio::time::timeout(STEP, read).await;
    let _ = child.kill();
    let _ = child.wait();
    let cea = cea.expect("CEA in time").unwrap().expect("a CEA through openssl");
    assert_eq!(result_code(&cea), Some(2001));
    s.stop().await;
}
