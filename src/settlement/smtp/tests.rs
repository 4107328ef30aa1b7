#[path = "../../../tests/common/smtp_sink.rs"]
mod smtp_sink;

use std::time::{Duration, Instant};

use super::*;
use crate::settlement::email::{invoice_email, payment_confirmation, MessageKind};
use crate::settlement::invoice::tests::sample;
use crate::settlement::invoice::{Invoice, PaymentMeans};
use crate::settlement::payment::PaymentId;
use crate::settlement::render;
use smtp_sink::SmtpSink;

fn parse(text: &str) -> Result<SmtpConfig, String> {
    let c: SmtpConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    c.validate().map_err(|e| format!("{}: {e}", e.key()))?;
    Ok(c)
}

#[test]
fn without_a_host_there_is_no_relay_and_relay_settings_are_refused() {
    let c = parse("").unwrap();
    assert!(!c.enabled());
    assert_eq!(c, SmtpConfig::default());
    for (text, key) in [
        ("port = 587", "settlement.smtp.port"),
        ("username = \"u\"", "settlement.smtp.username"),
        ("ca_file = \"/ca.pem\"", "settlement.smtp.ca_file"),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.starts_with(key), "{text}: {e}");
    }
}

#[test]
fn bad_smtp_settings_are_named() {
    let ok = parse("host = \"smtp.example.com\"\nusername = \"gyro\"\n").unwrap();
    assert!(ok.enabled());
    assert_eq!((ok.security, ok.port, ok.timeout_ms), (SmtpSecurity::Starttls, None, 30_000));
    for (text, key) in [
        ("host = \"smtp.example.com\"\npassword = \"hunter2\"", "settlement.smtp.password"),
        ("host = \"smtp example\"", "settlement.smtp.host"),
        ("host = \"smtp.example.com\"\nport = 0", "settlement.smtp.port"),
        ("host = \"smtp.example.com\"\ntimeout_ms = 0", "settlement.smtp.timeout_ms"),
        ("host = \"smtp.example.com\"\ntimeout_ms = 300001", "settlement.smtp.timeout_ms"),
        // Clear text only to this host, and never with a password.
        ("host = \"smtp.example.com\"\nsecurity = \"none\"", "settlement.smtp.security"),
        ("host = \"127.0.0.1\"\nsecurity = \"none\"\nusername = \"u\"", "settlement.smtp.security"),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.starts_with(key), "{text}: {e}");
        assert!(!e.contains("hunter2"), "a secret is never shown: {e}");
    }
    assert!(parse("host = \"smtp.example.com\"\nsecurity = \"starttls2\"").is_err());
    let local = parse("host = \"::1\"\nsecurity = \"none\"").unwrap();
    assert_eq!(local.security.default_port(), 25);
    // The password is required once there is a username, from the file or the environment.
    let e = SmtpMailer::new(&ok, "billing@example.com", |_| None).unwrap_err();
    assert_eq!(e.key(), "settlement.smtp.password_file");
    assert!(e.to_string().contains(SMTP_PASSWORD_ENV), "{e}");
    let e = SmtpMailer::new(&ok, "not an address", |_| Some("pw".into())).unwrap_err();
    assert_eq!(e.key(), "settlement.seller.email");
    let mailer = SmtpMailer::new(&ok, "billing@example.com", |_| Some("pw".into())).unwrap();
    assert_eq!(mailer.relay(), "smtp.example.com:587");
    assert!(!format!("{mailer:?}").contains("pw"));
}

#[tokio::test]
async fn without_a_relay_messages_become_eml_files() {
    let dir = tempfile::tempdir().unwrap();
    let mailer = Mailer::Files(EmlDir::open(dir.path()).unwrap());
    let inv = sample();
    let message = invoice_email(&inv).unwrap();
    let at = mailer.deliver(&message).await.unwrap();
    assert_eq!(std::fs::read(&at).unwrap(), message.bytes);
    // Delivering again (a resend after a crash) gives the same file, the same bytes.
    assert_eq!(mailer.deliver(&message).await.unwrap(), at);
}

#[tokio::test]
async fn a_relay_that_never_answers_is_a_transient_failure_within_the_timeout() {
    // Accepts connections and says nothing: no greeting, ever.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let text = format!("host = \"127.0.0.1\"\nport = {port}\nsecurity = \"none\"\ntimeout_ms = 300\n");
    let mailer = SmtpMailer::new(&parse(&text).unwrap(), "billing@example.com", |_| None).unwrap();
    let message = invoice_email(&sample()).unwrap();
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(20), mailer.send(&message)).await;
    assert!(matches!(result, Ok(Err(SendError::Transient(_)))), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded by timeout_ms, not by the relay");
    silent.abort();
}

fn paid() -> Invoice {
    sample().mark_paid(PaymentMeans::Card { brand: "VISA".into(), last4: "4242".into() })
}

/// Needs python3 with aiosmtpd: run by `.ci/run`, which installs it
/// (`cargo test --lib settlement::smtp -- --ignored`); without it, it fails, never skips.
#[tokio::test]
#[ignore = "needs python3 and aiosmtpd (PyPI); .ci/run installs them and runs it"]
async fn a_real_smtp_exchange_with_starttls_and_auth_delivers_the_invoice_and_its_attachments() {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("a self-signed certificate");
    let keys = tempfile::tempdir().unwrap();
    let (cert, key, password_file) =
        (keys.path().join("cert.pem"), keys.path().join("key.pem"), keys.path().join("password"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let sink = SmtpSink::start(&cert, &key, "gyro", "s3cret");

    let text = format!(
        "host = \"127.0.0.1\"\nport = {}\nusername = \"gyro\"\npassword_file = \"{}\"\nca_file = \"{}\"\ntimeout_ms = 20000\n",
        sink.port,
        password_file.display(),
        cert.display()
    );
    let config = parse(&text).unwrap();
    let inv = paid();
    let mailer = Mailer::Smtp(Box::new(SmtpMailer::new(&config, &inv.seller.email, |_| None).unwrap()));

    // The invoice e-mail: over STARTTLS, authenticated, attachments byte for byte.
    let invoice = invoice_email(&inv).unwrap();
    let reply = mailer.deliver(&invoice).await.expect("the relay accepts the invoice e-mail");
    assert!(reply.contains("queued as sink-1"), "{reply}");
    let got = sink.wait_for(1);
    assert_eq!(got["tls"], true, "STARTTLS was used: {got}");
    assert_eq!((got["auth"].as_bool(), got["login"].as_str()), (Some(true), Some("gyro")));
    assert_eq!(got["mail_from"], inv.seller.email.as_str());
    assert_eq!(got["rcpt_tos"], serde_json::json!([inv.buyer.email]));
    assert_eq!(got["message_id"], invoice.message_id.as_str());
    assert_eq!(got["subject"], format!("Invoice {} (paid)", inv.number).as_str());
    assert_eq!(got["defects"], serde_json::json!([]), "Python's MIME parser found defects");
    let types: Vec<&str> =
        got["parts"].as_array().unwrap().iter().map(|p| p["content_type"].as_str().unwrap()).collect();
    assert_eq!(types, ["text/plain", "text/html", "application/xml", "application/json"]);
    assert_eq!(sink.part(&got, &format!("invoice-{}.xml", inv.number)), render::ubl(&inv));
    let json: serde_json::Value =
        serde_json::from_slice(&sink.part(&got, &format!("invoice-{}.json", inv.number))).unwrap();
    assert_eq!(json, render::json(&inv));

    // The payment confirmation, threaded under the invoice.
    let confirmation = payment_confirmation(&inv, &PaymentId("pay_1".into()), inv.issued_at_unix_s).unwrap();
    assert_eq!(confirmation.kind, MessageKind::PaymentConfirmation);
    mailer.deliver(&confirmation).await.expect("the relay accepts the confirmation");
    let got = sink.wait_for(2);
    assert_eq!(got["message_id"], confirmation.message_id.as_str());

    // A 5yz for the recipient is permanent, a 4yz transient; neither delivers anything.
    let mut to_refused = invoice.clone();
    to_refused.to = "bob@refuse.example".into();
    assert!(matches!(mailer.deliver(&to_refused).await, Err(SendError::Permanent(_))));
    let mut to_later = invoice.clone();
    to_later.to = "bob@later.example".into();
    let r = mailer.deliver(&to_later).await;
    assert!(matches!(r, Err(SendError::Transient(_))), "{r:?}");

    // A wrong password is refused by the server (535: permanent).
    std::fs::write(&password_file, "wrong").unwrap();
    let wrong = SmtpMailer::new(&config, &inv.seller.email, |_| None).unwrap();
    let r = wrong.send(&invoice).await;
    assert!(matches!(r, Err(SendError::Permanent(_))), "{r:?}");

    // Without the test CA the server's certificate is not trusted: nothing is sent in clear.
    let untrusted = SmtpConfig { ca_file: None, ..config.clone() };
    std::fs::write(&password_file, "s3cret").unwrap();
    let untrusted = SmtpMailer::new(&untrusted, &inv.seller.email, |_| None).unwrap();
    assert!(untrusted.send(&invoice).await.is_err());
    assert_eq!(sink.received().len(), 2, "only the two accepted messages arrived");
}
