use super::*;
use crate::settlement::invoice::tests::sample;
use crate::settlement::invoice::PaymentMeans;
use crate::settlement::payment::{DeclineReason, PaymentId};
use crate::settlement::render;

/// 2026-03-14 12:00:05 UTC.
const PAID_AT: i64 = 1_773_489_605;

fn paid() -> Invoice {
    sample().mark_paid(PaymentMeans::Card { brand: "VISA".into(), last4: "4242".into() })
}

/// A MIME entity: unfolded headers (lower-case names) and the raw body.
struct Entity {
    headers: Vec<(String, String)>,
    body: String,
}

impl Entity {
    fn parse(text: &str) -> Self {
        let (head, body) = text.split_once("\r\n\r\n").expect("a blank line ends the headers");
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with(' ') || line.starts_with('\t') {
                let last = headers.last_mut().expect("a continuation follows a header");
                last.1.push(' ');
                last.1.push_str(line.trim());
            } else {
                let (name, value) = line.split_once(':').expect("name: value");
                headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        Self { headers, body: body.to_owned() }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The parts of a multipart body, by its boundary parameter.
    fn parts(&self) -> Vec<Self> {
        let content_type = self.header("content-type").expect("a content type");
        let boundary = content_type
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))
            .expect("a boundary")
            .trim_matches('"');
        let delimiter = format!("--{boundary}");
        let mut sections: Vec<&str> = self.body.split(delimiter.as_str()).collect();
        let epilogue = sections.pop().expect("a closing delimiter");
        assert!(epilogue.starts_with("--"), "the last delimiter closes the multipart");
        sections.remove(0); // the preamble
        sections
            .iter()
            .map(|s| Self::parse(s.strip_prefix("\r\n").expect("CRLF after the delimiter")))
            .collect()
    }

    /// The body as text, whatever transfer encoding lettre chose for it.
    fn text(&self) -> String {
        let bytes = match self.header("content-transfer-encoding") {
            Some("base64") => base64_decode(&self.body),
            Some("quoted-printable") => quoted_printable_decode(&self.body),
            _ => self.body.clone().into_bytes(),
        };
        String::from_utf8(bytes).expect("UTF-8 text")
    }

    fn decoded(&self) -> Vec<u8> {
        assert_eq!(self.header("content-transfer-encoding"), Some("base64"));
        base64_decode(&self.body)
    }
}

/// RFC 2045 §6.7: `=XX` is a byte, `=` at the end of a line a soft break.
fn quoted_printable_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' if bytes[i + 1..].starts_with(b"\r\n") => i += 3,
            b'=' => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ASCII");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::new();
    for chunk in clean.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&b| b != b'=').collect();
        let mut acc = 0u32;
        for (i, &b) in data.iter().enumerate() {
            acc |= value(b) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..data.len()]);
    }
    out
}

#[test]
fn the_invoice_email_has_text_html_and_both_attachments() {
    let inv = paid();
    let message = invoice_email(&inv).expect("renders");
    let text = String::from_utf8(message.bytes.clone()).expect("7-bit message");
    let top = Entity::parse(&text);
    assert_eq!(top.header("message-id"), Some("<invoice.GYR-2026-000001@gyro.example>"));
    assert_eq!(top.header("subject"), Some("Invoice GYR-2026-000001 (paid)"));
    assert_eq!(top.header("date"), Some("Sat, 14 Mar 2026 12:00:00 +0000"));
    assert_eq!(top.header("mime-version"), Some("1.0"));
    assert!(top.header("from").expect("From").contains("<billing@gyro.example>"));
    assert!(top.header("to").expect("To").contains("<bob@example.org>"));
    assert!(top.header("content-type").expect("type").starts_with("multipart/mixed"));
    let parts = top.parts();
    assert_eq!(parts.len(), 3);
    assert!(parts[0].header("content-type").expect("type").starts_with("multipart/alternative"));
    let alternatives = parts[0].parts();
    assert_eq!(alternatives.len(), 2);
    assert!(alternatives[0].header("content-type").expect("type").starts_with("text/plain"));
    assert!(alternatives[1].header("content-type").expect("type").starts_with("text/html"));
    assert!(alternatives[0].text().contains("Total with VAT: 0.94 EUR"));
    assert!(alternatives[1].text().contains("<h1>Invoice GYR-2026-000001</h1>"));
    let xml = &parts[1];
    assert!(xml.header("content-disposition").expect("attachment").contains("invoice-GYR-2026-000001.xml"));
    assert!(xml.header("content-type").expect("type").starts_with("application/xml"));
    assert_eq!(xml.decoded(), render::ubl(&inv));
    let json = &parts[2];
    assert!(json.header("content-disposition").expect("attachment").contains("invoice-GYR-2026-000001.json"));
    let value: serde_json::Value = serde_json::from_slice(&json.decoded()).expect("JSON");
    assert_eq!(value, render::json(&inv));
}

#[test]
fn rendering_again_gives_the_same_message_and_id() {
    let inv = paid();
    let a = invoice_email(&inv).expect("renders");
    let b = invoice_email(&inv).expect("renders");
    assert_eq!(a, b, "a resend is byte for byte the same message");
    assert_eq!(a.message_id, message_id("GYR-2026-000001", MessageKind::Invoice, "gyro.example"));
    let confirmation = payment_confirmation(&inv, &PaymentId("sbx_pay_1".into()), PAID_AT).expect("renders");
    assert_ne!(confirmation.message_id, a.message_id);
    let mut other = inv.clone();
    other.number = "GYR-2026-000002".into();
    assert_ne!(invoice_email(&other).expect("renders").message_id, a.message_id);
}

#[test]
fn the_confirmation_and_the_failure_notice_thread_under_the_invoice() {
    let inv = paid();
    let confirmation = payment_confirmation(&inv, &PaymentId("sbx_pay_1".into()), PAID_AT).expect("renders");
    let top = Entity::parse(std::str::from_utf8(&confirmation.bytes).expect("7-bit"));
    assert_eq!(top.header("message-id"), Some("<payment-confirmation.GYR-2026-000001@gyro.example>"));
    assert_eq!(top.header("in-reply-to"), Some("<invoice.GYR-2026-000001@gyro.example>"));
    assert_eq!(top.header("references"), Some("<invoice.GYR-2026-000001@gyro.example>"));
    assert_eq!(top.header("date"), Some("Sat, 14 Mar 2026 12:00:05 +0000"));
    let parts = top.parts();
    assert_eq!(parts.len(), 2);
    assert!(parts[0]
        .text()
        .contains("we received 0.94 EUR for invoice GYR-2026-000001 by VISA card ending in 4242"));
    assert!(parts[1].text().contains("Bob &lt;Example&gt; &amp; Co"));

    let unpaid = sample();
    let failed = payment_failed(&unpaid, DeclineReason::InsufficientFunds, PAID_AT).expect("renders");
    let top = Entity::parse(std::str::from_utf8(&failed.bytes).expect("7-bit"));
    assert_eq!(top.header("message-id"), Some("<payment-failed.GYR-2026-000001@gyro.example>"));
    assert!(top.parts()[0].text().contains("insufficient_funds"));
}

#[test]
fn a_bad_customer_address_is_an_error_not_a_panic() {
    let mut inv = paid();
    inv.buyer.email = "not an address".into();
    assert!(matches!(invoice_email(&inv), Err(EmailError::Address(_))));
}

#[test]
fn eml_files_are_written_atomically_under_stable_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = EmlDir::open(dir.path().join("mail")).expect("creates the directory");
    let inv = paid();
    let message = invoice_email(&inv).expect("renders");
    let path = out.write(&message).expect("writes");
    assert_eq!(path.file_name().and_then(|n| n.to_str()), Some("GYR-2026-000001.invoice.eml"));
    assert_eq!(fs::read(&path).expect("reads"), message.bytes);
    // A resend replaces the file with the same bytes and leaves no temporary file behind.
    out.write(&message).expect("writes again");
    let confirmation = payment_confirmation(&inv, &PaymentId("sbx_pay_1".into()), PAID_AT).expect("renders");
    out.write(&confirmation).expect("writes");
    let mut names: Vec<String> = fs::read_dir(out.dir())
        .expect("lists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["GYR-2026-000001.invoice.eml", "GYR-2026-000001.payment-confirmation.eml"]);
    for bad in ["", "../x", "a/b", "-x", ".hidden"] {
        assert_eq!(EmlDir::file_name(bad, MessageKind::Invoice), None, "{bad:?}");
        let mut m = message.clone();
        m.invoice_number = bad.into();
        assert_eq!(out.write(&m).map_err(|e| e.kind()), Err(io::ErrorKind::InvalidInput));
    }
}
