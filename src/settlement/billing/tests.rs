use super::*;
use crate::settlement::invoice::tests::sample;
use crate::settlement::invoice::PaymentMeans;

fn parse(text: &str) -> Result<PostgresConfig, String> {
    let c: PostgresConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    c.validate().map_err(|e| format!("{}: {e}", e.key()))?;
    Ok(c)
}

#[test]
fn off_by_default_and_bad_settings_are_named() {
    let c = parse("").unwrap();
    assert!(!c.enabled());
    assert_eq!(c.schema, "gyro");
    assert!(parse("url = \"postgresql://gyro@db.example.net:5432/billing\"").unwrap().enabled());
    assert!(parse("url = \"host=127.0.0.1 user=gyro dbname=billing\"").unwrap().enabled());
    for (text, key) in [
        ("url = \"postgresql://gyro:hunter2@db/billing\"", "settlement.postgres.url"),
        ("url = \"host=db password=hunter2\"", "settlement.postgres.url"),
        ("url = \"postgresql://db:notaport/x\"", "settlement.postgres.url"),
        ("schema = \"Gyro\"", "settlement.postgres.schema"),
        ("schema = \"1st\"", "settlement.postgres.schema"),
        ("schema = \"a\\\"; DROP TABLE x; --\"", "settlement.postgres.schema"),
        ("connect_timeout_ms = 0", "settlement.postgres.connect_timeout_ms"),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.starts_with(key), "{text}: {e}");
        assert!(!e.contains("hunter2"), "a password is never shown: {e}");
    }
}

#[test]
fn tls_modes_parse_and_default_by_host() {
    let mode = |text: &str| {
        let c = parse(text).unwrap();
        let url = c.url.clone().unwrap();
        c.tls_mode(&tokio_postgres::Config::from_str(&url).unwrap())
    };
    // Without `tls`: plain only where nothing crosses a network.
    for local in [
        "url = \"host=127.0.0.1 dbname=test\"",
        "url = \"postgresql://gyro@localhost/billing\"",
        "url = \"postgresql://gyro@[::1]:5432/billing\"",
        "url = \"host=/var/run/postgresql dbname=billing\"",
        "url = \"host=db.example.net hostaddr=127.0.0.1 dbname=billing\"",
    ] {
        assert_eq!(mode(local), PgTls::Disable, "{local}");
    }
    for remote in [
        "url = \"postgresql://gyro@db.example.net/billing\"",
        "url = \"host=10.0.0.5 dbname=billing\"",
        "url = \"host=localhost,db.example.net dbname=billing\"",
        "url = \"host=localhost hostaddr=10.0.0.5 dbname=billing\"",
    ] {
        assert_eq!(mode(remote), PgTls::VerifyFull, "{remote}");
    }
    // Chosen: whatever the host.
    let remote = "url = \"postgresql://gyro@db.example.net/billing\"";
    assert_eq!(mode(&format!("{remote}\ntls = \"disable\"")), PgTls::Disable);
    assert_eq!(mode(&format!("{remote}\ntls = \"require\"")), PgTls::Require);
    assert_eq!(
        mode("url = \"host=127.0.0.1\"\ntls = \"verify-full\"\nca_file = \"/ca.pem\""),
        PgTls::VerifyFull
    );

    for (text, key, says) in [
        ("tls = \"verify-ca\"", "tls", "unknown variant"),
        ("tls = \"Require\"", "tls", "unknown variant"),
        (
            &format!("{remote}\ntls = \"require\"\nca_file = \"/ca.pem\""),
            "settlement.postgres.ca_file",
            "verify-full",
        ),
        ("url = \"host=127.0.0.1\"\nca_file = \"/ca.pem\"", "settlement.postgres.ca_file", "verify-full"),
        (
            "url = \"postgresql://gyro@db.example.net/billing?sslmode=require\"",
            "settlement.postgres.url",
            "sslmode",
        ),
        ("url = \"host=db.example.net sslmode=disable\"", "settlement.postgres.url", "sslmode"),
        ("url = \"host=/var/run/postgresql\"\ntls = \"require\"", "settlement.postgres.tls", "Unix socket"),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.contains(key) && e.contains(says), "{text}: {e}");
    }
}

/// The local server of the development and CI machines (trust authentication); override with
/// `GYRO_TEST_PG_URL`.
fn test_url() -> String {
    std::env::var("GYRO_TEST_PG_URL").unwrap_or_else(|_| "host=127.0.0.1 port=5432 dbname=test".to_owned())
}

/// A schema of this test's own, dropped at the end.
fn test_config() -> PostgresConfig {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    PostgresConfig {
        url: Some(test_url()),
        schema: format!("gyro_test_{}_{nanos}", std::process::id()),
        ..PostgresConfig::default()
    }
}

async fn count(db: &PgBilling, sql: &str) -> i64 {
    db.client().query_one(sql, &[]).await.unwrap().get(0)
}

/// Needs PostgreSQL on 127.0.0.1:5432 (database `test`): run by `.ci/run`, which checks that it
/// is up (`cargo test --lib settlement::billing -- --ignored`); without it, it fails, never skips.
#[tokio::test]
#[ignore = "needs PostgreSQL on 127.0.0.1:5432; .ci/run runs it"]
async fn billing_records_are_idempotent_monotonic_and_reconcile() {
    let config = test_config();
    let mut db = tokio::time::timeout(Duration::from_secs(20), PgBilling::connect(&config, |_| None))
        .await
        .expect("connect within 20 s")
        .unwrap_or_else(|e| panic!("PostgreSQL at {} must be running for this test: {e}", test_url()));
    // Connecting again finds the schema current and applies nothing.
    let again = PgBilling::connect(&config, |_| None).await.unwrap();
    drop(again);
    assert_eq!(count(&db, "SELECT count(*) FROM schema_migrations").await, 1);

    // An invoice written twice (a replayed worker step) is one invoice.
    let issued = sample();
    db.record_invoice(&issued, InvoiceStatus::Issued).await.unwrap();
    db.record_invoice(&issued, InvoiceStatus::Issued).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM invoices").await, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM invoice_lines").await, 3);
    assert_eq!(count(&db, "SELECT count(*) FROM usage_records").await, 3);
    let quantity: String = db
        .client()
        .query_one("SELECT quantity::text FROM invoice_lines WHERE name = 'data'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(quantity, "52.4288", "quantities are exact numerics");

    // Paid, then a stale "issued" write: it stays paid.
    let paid = issued.clone().mark_paid(PaymentMeans::Card { brand: "VISA".into(), last4: "4242".into() });
    db.record_invoice(&paid, InvoiceStatus::Paid).await.unwrap();
    db.record_invoice(&issued, InvoiceStatus::Issued).await.unwrap();
    let row =
        db.client().query_one("SELECT status, paid_minor, payable_minor FROM invoices", &[]).await.unwrap();
    let (status, paid_minor, payable): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((status.as_str(), paid_minor, payable), ("paid", paid.totals.collected().0, 0));

    // Payment attempts: a transient failure, then a success; recording the success again is
    // one row, and a second success for the invoice is refused by the database itself.
    let attempt = |n: u32, outcome: PaymentOutcome, id: Option<&'static str>| PaymentRecord {
        invoice_number: &paid.number,
        attempt: n,
        idempotency_key: &paid.settlement_key,
        outcome,
        payment_id: id,
        amount: paid.totals.collected(),
        currency: paid.currency.code,
        detail: None,
        at_unix_s: paid.issued_at_unix_s,
    };
    db.record_payment(&attempt(1, PaymentOutcome::Failed, None)).await.unwrap();
    db.record_payment(&attempt(2, PaymentOutcome::Succeeded, Some("pay_1"))).await.unwrap();
    db.record_payment(&attempt(2, PaymentOutcome::Succeeded, Some("pay_1"))).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM payments").await, 2);
    assert!(db.record_payment(&attempt(3, PaymentOutcome::Succeeded, Some("pay_2"))).await.is_err());

    // Reconciliation in SQL: Σ debits = Σ invoice totals = Σ charged, to the minor unit.
    let row = db
        .client()
        .query_one(
            "SELECT (SELECT sum(debited_minor) FROM usage_records)::bigint,
                    (SELECT sum(tax_inclusive_minor + rounding_minor) FROM invoices)::bigint,
                    (SELECT sum(amount_minor) FROM payments WHERE outcome IN ('succeeded', 'wallet'))::bigint",
            &[],
        )
        .await
        .unwrap();
    let (debited, invoiced, charged): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((debited, invoiced, charged), (94, 94, 94));

    // The same number for another settlement is a reused number: refused, nothing changed.
    let mut other = sample();
    other.settlement_key = "session-2".into();
    let e = db.record_invoice(&other, InvoiceStatus::Issued).await.unwrap_err();
    assert!(matches!(e, BillingError::NumberReused { .. }), "{e}");
    // And another number for a settled session is refused by the unique settlement key.
    let mut renumbered = sample();
    renumbered.number = "GYR-2026-999999".into();
    assert!(db.record_invoice(&renumbered, InvoiceStatus::Issued).await.is_err());
    assert_eq!(count(&db, "SELECT count(*) FROM invoices").await, 1);

    // A database migrated by a newer gyro is refused.
    db.client()
        .execute("INSERT INTO schema_migrations (version, name) VALUES (99, 'future')", &[])
        .await
        .unwrap();
    let e = PgBilling::connect(&config, |_| None).await.unwrap_err();
    assert!(matches!(e, BillingError::SchemaNewer { found: 99, .. }), "{e}");

    db.client().batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", config.schema)).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// TLS against a stand-in server: the PostgreSQL SSLRequest, then a rustls handshake with a
// certificate made here. Nothing after the handshake is PostgreSQL, so the client's connection
// fails either way; the server reports whether the handshake completed.

/// A CA named `ca`, and a server certificate it signed for `names`, with the server's key.
struct Pki {
    ca_pem: String,
    server: rustls::pki_types::CertificateDer<'static>,
    key: rustls::pki_types::PrivatePkcs8KeyDer<'static>,
}

fn pki(ca: &str, names: &[&str]) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, ca);
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let server = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    Pki { ca_pem: ca.pem(), server: server.der().clone(), key: key.serialize_der().into() }
}

/// What the stand-in saw of one connection.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Handshake,
    HandshakeFailed,
    /// It answered 'N' (no TLS); the client sent this many bytes after that (a startup message
    /// in clear, had it fallen back).
    PlainAfterNo(usize),
}

/// Serves one connection: `Some(pki)` accepts the SSLRequest and handshakes with its certificate,
/// `None` declines TLS.
async fn stand_in(pki: Option<Pki>) -> (u16, tokio::task::JoinHandle<Seen>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        stream.read_exact(&mut request).await.unwrap();
        // SSLRequest: length 8, then the code 1234 << 16 | 5679 (PostgreSQL protocol, 55.2.10).
        assert_eq!(request, [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f], "an SSLRequest first");
        let Some(pki) = pki else {
            stream.write_all(b"N").await.unwrap();
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
            return Seen::PlainAfterNo(rest.len());
        };
        stream.write_all(b"S").await.unwrap();
        let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.server], pki.key.into())
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        match acceptor.accept(stream).await {
            Ok(_) => Seen::Handshake,
            Err(_) => Seen::HandshakeFailed,
        }
    });
    (port, served)
}

/// Connects to the stand-in at `host`; the result of `open` and what the server saw.
async fn try_tls(
    host: &str,
    tls: PgTls,
    ca_pem: Option<&str>,
    pki: Option<Pki>,
) -> (Result<(), String>, Seen) {
    let (port, served) = stand_in(pki).await;
    let ca = ca_pem.map(|pem| {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, pem.as_bytes()).unwrap();
        f
    });
    let config = PostgresConfig {
        url: Some(format!("host={host} hostaddr=127.0.0.1 port={port} user=gyro dbname=billing")),
        tls: Some(tls),
        ca_file: ca.as_ref().map(|f| f.path().to_owned()),
        ..PostgresConfig::default()
    };
    let opened = tokio::time::timeout(Duration::from_secs(20), PgBilling::open(&config, |_| None))
        .await
        .expect("open answers within 20 s");
    let result = match opened {
        Ok((_, connection)) => {
            connection.abort();
            Ok(())
        }
        Err(e) => Err(e.to_string()),
    };
    let seen = tokio::time::timeout(Duration::from_secs(20), served).await.unwrap().unwrap();
    (result, seen)
}

#[tokio::test]
async fn verify_full_trusts_only_the_configured_ca_and_the_right_name() {
    // The right CA and name: the handshake completes (the stand-in is no PostgreSQL after it).
    let right = pki("Right CA", &["localhost", "127.0.0.1"]);
    let ca = right.ca_pem.clone();
    let (result, seen) = try_tls("localhost", PgTls::VerifyFull, Some(&ca), Some(right)).await;
    assert_eq!(seen, Seen::Handshake, "{result:?}");
    assert!(result.is_err(), "not a PostgreSQL server after the handshake");

    // A certificate from another CA: refused by the client.
    let (other, server) = (pki("Other CA", &["localhost"]), pki("Server's CA", &["localhost"]));
    let (result, seen) = try_tls("localhost", PgTls::VerifyFull, Some(&other.ca_pem), Some(server)).await;
    assert_eq!(seen, Seen::HandshakeFailed);
    let e = result.unwrap_err();
    assert!(e.contains("verify-full") && e.contains("UnknownIssuer"), "{e}");

    // No ca_file: only the web PKI roots, which did not sign it.
    let (result, seen) =
        try_tls("localhost", PgTls::VerifyFull, None, Some(pki("A CA", &["localhost"]))).await;
    assert_eq!(seen, Seen::HandshakeFailed, "{result:?}");
    // Same names, another key: a forged CA of the same name does not pass either.
    let (impostor, server) = (pki("Same CA", &["localhost"]), pki("Same CA", &["localhost"]));
    let (result, seen) = try_tls("localhost", PgTls::VerifyFull, Some(&impostor.ca_pem), Some(server)).await;
    assert_eq!(seen, Seen::HandshakeFailed);
    assert!(result.unwrap_err().contains("BadSignature"));

    // The right CA, but the certificate names another host.
    let elsewhere = pki("Right CA", &["db.example.net"]);
    let ca = elsewhere.ca_pem.clone();
    let (result, seen) = try_tls("localhost", PgTls::VerifyFull, Some(&ca), Some(elsewhere)).await;
    assert_eq!(seen, Seen::HandshakeFailed);
    let e = result.unwrap_err();
    assert!(e.contains("not valid for name \"localhost\""), "{e}");
}

#[tokio::test]
async fn require_encrypts_without_checking_and_never_falls_back_to_plain() {
    // Any certificate will do for `require`.
    let (result, seen) =
        try_tls("localhost", PgTls::Require, None, Some(pki("Any CA", &["elsewhere.example"]))).await;
    assert_eq!(seen, Seen::Handshake, "{result:?}");
    // A server that declines TLS gets nothing more, in either mode.
    for tls in [PgTls::Require, PgTls::VerifyFull] {
        let (result, seen) = try_tls("localhost", tls, None, None).await;
        assert_eq!(seen, Seen::PlainAfterNo(0), "{tls:?}");
        assert!(result.unwrap_err().contains(tls.name()));
    }
}

#[tokio::test]
async fn a_bad_ca_file_is_named() {
    for (pem, says) in [
        ("", "no certificate"),
        ("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n", ""),
    ] {
        let (port, _served) = stand_in(None).await;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, pem.as_bytes()).unwrap();
        let config = PostgresConfig {
            url: Some(format!("host=localhost port={port}")),
            tls: Some(PgTls::VerifyFull),
            ca_file: Some(f.path().to_owned()),
            ..PostgresConfig::default()
        };
        let Err(BillingError::Config(e)) = PgBilling::open(&config, |_| None).await else {
            panic!("a bad ca_file must be refused before connecting");
        };
        assert_eq!(e.key(), "settlement.postgres.ca_file");
        assert!(e.to_string().contains(says), "{e}");
    }
}

/// Against the local server, which must have `ssl = on` (its certificate being Debian's
/// self-signed `ssl-cert-snakeoil` for `localhost`; `GYRO_TEST_PG_CA` names another): `require`
/// and `verify-full` with that certificate as `ca_file` are encrypted connections (as
/// `pg_stat_ssl` sees them), `disable` is not, and `verify-full` without it is refused.
#[tokio::test]
#[ignore = "needs PostgreSQL with ssl = on at 127.0.0.1:5432; .ci/run runs it"]
async fn tls_to_the_local_server() {
    let ca =
        std::env::var("GYRO_TEST_PG_CA").unwrap_or_else(|_| "/etc/ssl/certs/ssl-cert-snakeoil.pem".into());
    // The certificate names `localhost`; hostaddr keeps the connection on 127.0.0.1.
    let url = format!("host=localhost hostaddr=127.0.0.1 port=5432 dbname=test user={}", pg_user());
    let config = |tls, ca_file: Option<&str>| PostgresConfig {
        url: Some(url.clone()),
        tls: Some(tls),
        ca_file: ca_file.map(PathBuf::from),
        ..PostgresConfig::default()
    };
    let encrypted = |tls, ca_file| {
        let config = config(tls, ca_file);
        async move {
            let (client, connection) = PgBilling::open(&config, |_| None).await?;
            let row =
                client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await?;
            connection.abort();
            Ok::<bool, BillingError>(row.get(0))
        }
    };
    assert!(!encrypted(PgTls::Disable, None).await.unwrap());
    assert!(encrypted(PgTls::Require, None).await.unwrap(), "is ssl on in the local server?");
    assert!(encrypted(PgTls::VerifyFull, Some(&ca)).await.unwrap());
    let e = encrypted(PgTls::VerifyFull, None).await.unwrap_err().to_string();
    assert!(e.contains("invalid peer certificate"), "{e}");
}

/// The user of the local test server: `GYRO_TEST_PG_USER`, else `postgres`.
fn pg_user() -> String {
    std::env::var("GYRO_TEST_PG_USER").unwrap_or_else(|_| "postgres".into())
}
