//! Settlement e-mails as RFC 5322 messages (lettre's builder), and the `.eml` directory that
//! stands in for SMTP in the embedded run.
//!
//! - The invoice e-mail is `multipart/mixed`: a `multipart/alternative` (plain text, then HTML;
//!   RFC 2046 §5.1.4: the last part is the preferred one) and two attachments,
//!   `invoice-<number>.xml` (UBL) and `invoice-<number>.json`, base64-encoded.
//! - The payment confirmation and the payment-failed notice are `multipart/alternative`, and
//!   refer to the invoice e-mail (`In-Reply-To`, `References`) so mail clients thread them.
//! - Message-IDs are `<kind.number@seller-domain>`: the same invoice and kind always give the
//!   same id, so a resend after a crash is recognisable as the same message (and deduplicated
//!   by clients that do). MIME boundaries and the Date header are derived from the invoice too,
//!   so rendering the same message twice gives the same bytes.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Attachment, Body, Mailbox, MultiPart, SinglePart};
use lettre::Message;

use super::invoice::Invoice;
use super::payment::{DeclineReason, PaymentId};
use super::render;

/// Which message of a settlement.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MessageKind {
    Invoice,
    PaymentConfirmation,
    PaymentFailed,
}

impl MessageKind {
    /// The kind in Message-IDs and file names.
    pub fn slug(self) -> &'static str {
        match self {
            Self::Invoice => "invoice",
            Self::PaymentConfirmation => "payment-confirmation",
            Self::PaymentFailed => "payment-failed",
        }
    }
}

/// A rendered message, ready for SMTP or an `.eml` file.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Rendered {
    pub kind: MessageKind,
    pub invoice_number: String,
    /// With the angle brackets, as in the header.
    pub message_id: String,
    /// The envelope recipient.
    pub to: String,
    /// The whole message, CRLF line ends.
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// The customer's or the seller's address is not an RFC 5322 address (catalog or config).
    #[error("not an e-mail address: {0}")]
    Address(#[from] lettre::address::AddressError),
    /// lettre refused the message (a bug: every header we set is valid by construction).
    #[error("cannot build the message: {0}")]
    Build(#[from] lettre::error::Error),
}

/// `<kind.number@domain>` (RFC 5322 §3.6.4 `msg-id`; invoice numbers are letters, digits and
/// `-`, so they are valid `dot-atom-text`).
pub fn message_id(invoice_number: &str, kind: MessageKind, domain: &str) -> String {
    format!("<{}.{}@{}>", kind.slug(), invoice_number, domain)
}

/// The invoice e-mail, dated at the invoice's settlement time.
pub fn invoice_email(inv: &Invoice) -> Result<Rendered, EmailError> {
    let json = serde_json::to_vec_pretty(&render::json(inv)).expect("a JSON value always serializes");
    invoice_email_with(inv, render::ubl(inv), json)
}

/// [`invoice_email`] with the invoice already rendered as UBL (`xml`) and JSON: the worker
/// renders each invoice once, for its files and for this e-mail's attachments.
pub fn invoice_email_with(inv: &Invoice, xml: Vec<u8>, json: Vec<u8>) -> Result<Rendered, EmailError> {
    let kind = MessageKind::Invoice;
    let subject = if inv.is_paid() {
        format!("Invoice {} (paid)", inv.number)
    } else {
        format!("Invoice {}", inv.number)
    };
    let body = MultiPart::mixed()
        .boundary(boundary(inv, kind, "mixed"))
        .multipart(alternative(inv, kind, render::text_body(inv), render::html(inv)))
        .singlepart(attachment(format!("invoice-{}.xml", inv.number), xml, "application/xml"))
        .singlepart(attachment(format!("invoice-{}.json", inv.number), json, "application/json"));
    build(inv, kind, &subject, inv.issued_at_unix_s, body)
}

/// The payment confirmation, dated when the payment succeeded.
pub fn payment_confirmation(
    inv: &Invoice,
    payment: &PaymentId,
    paid_at_unix_s: i64,
) -> Result<Rendered, EmailError> {
    let kind = MessageKind::PaymentConfirmation;
    let amount = format!("{} {}", inv.amount(inv.totals.paid), inv.currency.code);
    let means = inv.payment.describe();
    let text = format!(
        "Dear {},\n\nwe received {amount} for invoice {} by {means}.\nPayment reference: {}.\n\nThank you,\n{}\n",
        inv.buyer.name, inv.number, payment.0, inv.seller.name
    );
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Payment received</title></head>\n\
         <body><p>Dear {},</p><p>we received <b>{}</b> for invoice {} by {}.<br>Payment reference: {}.</p>\
         <p>Thank you,<br>{}</p></body></html>\n",
        esc(&inv.buyer.name),
        esc(&amount),
        esc(&inv.number),
        esc(&means),
        esc(&payment.0),
        esc(&inv.seller.name)
    );
    let subject = format!("Payment received for invoice {}", inv.number);
    build(inv, kind, &subject, paid_at_unix_s, alternative(inv, kind, text, html))
}

/// The notice that a charge was declined (the account is barred until the invoice is paid).
pub fn payment_failed(inv: &Invoice, reason: DeclineReason, at_unix_s: i64) -> Result<Rendered, EmailError> {
    let kind = MessageKind::PaymentFailed;
    let amount = format!("{} {}", inv.amount(inv.totals.payable), inv.currency.code);
    let text = format!(
        "Dear {},\n\nwe could not collect {amount} for invoice {} by {} ({}).\n\
         Your service is suspended until the invoice is paid.\n\n{}\n",
        inv.buyer.name,
        inv.number,
        inv.payment.describe(),
        reason.code(),
        inv.seller.name
    );
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Payment failed</title></head>\n\
         <body><p>Dear {},</p><p>we could not collect <b>{}</b> for invoice {} by {} ({}).</p>\
         <p>Your service is suspended until the invoice is paid.</p><p>{}</p></body></html>\n",
        esc(&inv.buyer.name),
        esc(&amount),
        esc(&inv.number),
        esc(&inv.payment.describe()),
        esc(reason.code()),
        esc(&inv.seller.name)
    );
    let subject = format!("Payment failed for invoice {}", inv.number);
    build(inv, kind, &subject, at_unix_s, alternative(inv, kind, text, html))
}

fn esc(value: &str) -> String {
    quick_xml::escape::escape(value).into_owned()
}

/// A boundary that cannot occur in the parts: `=_` never appears in base64 or
/// quoted-printable output (RFC 2045 §6.7 note 8), and invoice numbers are `[A-Za-z0-9-]`.
fn boundary(inv: &Invoice, kind: MessageKind, level: &str) -> String {
    format!("=_gyro_{}_{}_{}", kind.slug(), inv.number, level)
}

fn alternative(inv: &Invoice, kind: MessageKind, text: String, html: String) -> MultiPart {
    MultiPart::alternative()
        .boundary(boundary(inv, kind, "alt"))
        .singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(text))
        .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(html))
}

fn attachment(name: String, bytes: Vec<u8>, mime: &str) -> SinglePart {
    let content_type = ContentType::parse(mime).expect("a constant MIME type parses");
    let body =
        Body::new_with_encoding(bytes, ContentTransferEncoding::Base64).expect("base64 can carry any bytes");
    Attachment::new(name).body(body, content_type)
}

/// Checks what can make an invoice's e-mails unbuildable — the seller's and the buyer's
/// addresses — without building one (the worker checks this before numbering an invoice).
pub fn check_addresses(inv: &Invoice) -> Result<(), EmailError> {
    inv.seller.email.parse::<lettre::Address>()?;
    inv.buyer.email.parse::<lettre::Address>()?;
    Ok(())
}

fn build(
    inv: &Invoice,
    kind: MessageKind,
    subject: &str,
    at_unix_s: i64,
    body: MultiPart,
) -> Result<Rendered, EmailError> {
    let domain = inv.seller.email_domain();
    let from = Mailbox::new(Some(inv.seller.name.clone()), inv.seller.email.parse()?);
    let to = Mailbox::new(Some(inv.buyer.name.clone()), inv.buyer.email.parse()?);
    let id = message_id(&inv.number, kind, domain);
    let date = UNIX_EPOCH + Duration::from_secs(u64::try_from(at_unix_s).unwrap_or(0));
    let mut builder = Message::builder()
        .from(from)
        .to(to)
        .subject(subject)
        .date(date)
        .message_id(Some(id.clone()))
        .user_agent("gyro".into());
    if kind != MessageKind::Invoice {
        let invoice_id = message_id(&inv.number, MessageKind::Invoice, domain);
        builder = builder.in_reply_to(invoice_id.clone()).references(invoice_id);
    }
    let message = builder.multipart(body)?;
    Ok(Rendered {
        kind,
        invoice_number: inv.number.clone(),
        message_id: id,
        to: inv.buyer.email.clone(),
        bytes: message.formatted(),
    })
}

/// The embedded default "mail transport": each message is a file `<number>.<kind>.eml` in a
/// directory, written atomically (temporary file, fsync, rename, directory fsync), so a reader
/// never sees half a message and a crash leaves either the old file or the new one. Writing the
/// same message again replaces the file with identical bytes.
#[derive(Clone, Debug)]
pub struct EmlDir {
    dir: PathBuf,
}

impl EmlDir {
    /// Creates the directory if needed.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<number>.<kind>.eml`, or `None` when the number could escape the directory or clash
    /// with a temporary file (only `[A-Za-z0-9_-]` is accepted, not starting with `-`).
    pub fn file_name(invoice_number: &str, kind: MessageKind) -> Option<String> {
        let safe = !invoice_number.is_empty()
            && !invoice_number.starts_with('-')
            && invoice_number.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        safe.then(|| format!("{invoice_number}.{}.eml", kind.slug()))
    }

    /// Stores a message, synced; returns its path.
    pub fn write(&self, message: &Rendered) -> io::Result<PathBuf> {
        self.write_with(message, true)
    }

    /// Stores a message; without `sync`, the caller makes it durable later (the worker's
    /// group sync, [`super::docsync::DocSync`]) — a reader still never sees half a message.
    pub fn write_with(&self, message: &Rendered, sync: bool) -> io::Result<PathBuf> {
        let name = Self::file_name(&message.invoice_number, message.kind).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "invoice number unfit for a file name")
        })?;
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&message.bytes)?;
        if sync {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, &path)?;
        if sync {
            fs::File::open(&self.dir)?.sync_all()?;
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests;
