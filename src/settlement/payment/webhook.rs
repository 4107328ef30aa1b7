//! `webhook`: a signed JSON POST to the operator's own billing system.
//!
//! # The request
//! `POST {url}` with `Content-Type: application/json` and this body:
//!
//! ```json
//! {"type": "charge", "idempotency_key": "…", "invoice_id": "GYR-2026-000001",
//!  "amount_minor": 1234, "currency": "EUR", "customer": "…",
//!  "gateway_customer": "cus_…", "payment_method_id": "pm_…",
//!  "payment_means": {"type": "card", "brand": "VISA", "last4": "4242"}}
//! ```
//!
//! (`customer` is the catalog's customer id; `gateway_customer` and `payment_method_id` are the
//! account's catalog keys of those names, each present only if the account has it. `payment_means`
//! for SEPA: `{"type": "sepa_debit", "mandate", "iban_masked"}`; neither the card number nor the
//! whole IBAN is ever sent.) Headers: `Idempotency-Key` (the settlement's key: the receiver
//! must treat a repeated key as the same charge) and `Gyro-Signature: t=<unix seconds>,v1=<hex
//! HMAC-SHA256(secret, "<t>.<body>")>`, Stripe's scheme: the receiver recomputes the HMAC over
//! the raw body, compares in constant time, and refuses timestamps older than a few minutes
//! ([`verify`] does all three), so a captured request cannot be replayed later.
//!
//! # What the answers mean
//! 2xx: accepted, `Succeeded` (with the body's `payment_id` if it is JSON that has one, else
//! `webhook:<invoice id>`). 402: `Declined`, with the body's `decline_code` if any. 408, 409,
//! 425, 429 and 5xx: `Transient`. Any other 4xx: `Rejected`, never retried. A refused
//! connection: `Transient`; a timeout or reset after sending: `Unknown`.
//!
//! # Lookup
//! With `lookup_url`, `lookup` sends `GET {lookup_url}?idempotency_key=KEY`, signed over an
//! empty body: 200 is a charge made (as for the POST), 402 a decline, 404 nothing under that
//! key. Without it `lookup` answers `Err(Unknown)`: the worker can only resend under the same
//! key, which the receiver's idempotency makes safe.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::http::{self, Timeouts};
use super::{
    ChargeOutcome, ChargeRequest, DeclineReason, IdempotencyKey, PaymentAdapter, PaymentError, PaymentId,
    PaymentMethod, Rejection, Secret,
};

/// The name of the signature header.
pub const SIGNATURE_HEADER: &str = "Gyro-Signature";

/// The webhook gateway.
#[derive(Debug)]
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    lookup_url: Option<String>,
    secret: Secret,
    /// Unix seconds for the signature's `t` (the system clock; fixed in tests).
    clock: fn() -> i64,
}

impl Webhook {
    /// The URLs are checked by the configuration (`settlement.webhook.url`, `lookup_url`).
    pub fn new(
        url: &str,
        lookup_url: Option<&str>,
        secret: Secret,
        timeouts: Timeouts,
        clock: fn() -> i64,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: http::client(timeouts)?,
            url: url.to_owned(),
            lookup_url: lookup_url.map(str::to_owned),
            secret,
            clock,
        })
    }
}

impl PaymentAdapter for Webhook {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, PaymentError> {
        let body = body(request);
        let signature = sign(self.secret.expose().as_bytes(), (self.clock)(), &body);
        let response = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", &request.key.0)
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(|error| http::send_failed(&error))?;
        let status = response.status();
        let body = http::body(response).await;
        let outcome = answer(status, body.as_deref(), &request.invoice_number);
        if let Err(error) = &outcome {
            tracing::warn!(key = %request.key.0, status = status.as_u16(), %error, "webhook charge failed");
        }
        outcome
    }

    async fn lookup(&self, key: &IdempotencyKey) -> Result<Option<ChargeOutcome>, PaymentError> {
        let Some(url) = &self.lookup_url else {
            return Err(PaymentError::Unknown);
        };
        let signature = sign(self.secret.expose().as_bytes(), (self.clock)(), b"");
        let response = self
            .client
            .get(url)
            .query(&[("idempotency_key", &key.0)])
            .header("Idempotency-Key", &key.0)
            .header(SIGNATURE_HEADER, signature)
            .send()
            .await
            .map_err(|_| PaymentError::Transient)?;
        let status = response.status();
        if status.as_u16() == 404 {
            return Ok(None);
        }
        let body = http::body(response).await;
        answer(status, body.as_deref(), &format!("key:{}", key.0)).map(Some)
    }
}

/// The JSON body of a charge (see the module doc).
pub fn body(request: &ChargeRequest) -> Vec<u8> {
    let means = match &request.method {
        // Not the card's `token`: from the catalog it is the card number, which is the sandbox's
        // to see and nobody else's; a receiver identifies the method by `payment_method_id`.
        PaymentMethod::Card(card) => serde_json::json!({
            "type": "card",
            "brand": card.brand.name(),
            "last4": card.last4,
        }),
        PaymentMethod::SepaDebit(sepa) => serde_json::json!({
            "type": "sepa_debit",
            "mandate": sepa.mandate,
            "iban_masked": sepa.iban.masked(),
        }),
    };
    let mut body = serde_json::json!({
        "type": "charge",
        "idempotency_key": request.key.0,
        "invoice_id": request.invoice_number,
        "amount_minor": request.amount.0,
        "currency": request.currency.code,
        "customer": request.customer.0,
        "payment_means": means,
    });
    // Absent rather than null when the account has none: a receiver that does not use them
    // sees the body it saw before they existed.
    if let Some(customer) = &request.gateway.customer {
        body["gateway_customer"] = customer.0.clone().into();
    }
    if let Some(method) = &request.gateway.payment_method {
        body["payment_method_id"] = method.0.clone().into();
    }
    body.to_string().into_bytes()
}

/// The `Gyro-Signature` value: `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// Why a receiver refuses a signature.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("the header is not t=<unix seconds>,v1=<hex>")]
    Malformed,
    #[error("the timestamp is outside the tolerance")]
    Stale,
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// What a receiver does with a `Gyro-Signature` header (for the operator's side, and the
/// tests): the timestamp within `tolerance_s` of `now`, and one `v1` equal to the HMAC of
/// `"<t>.<body>"`, compared in constant time.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_unix_s: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => signatures.push(unhex(v).ok_or(SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if tolerance_s < (now_unix_s - t).abs() {
        return Err(SignatureError::Stale);
    }
    let matches = signatures.iter().any(|signature| {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
        mac.update(t.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.verify_slice(signature).is_ok()
    });
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

/// The outcome of an HTTP answer (see the module doc); `fallback` names the payment when the
/// body has no `payment_id`.
fn answer(
    status: reqwest::StatusCode,
    body: Option<&[u8]>,
    fallback: &str,
) -> Result<ChargeOutcome, PaymentError> {
    let json = body.and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
    let field =
        |name: &str| json.as_ref().and_then(|j| j.get(name)).and_then(|v| v.as_str()).map(str::to_owned);
    if status.is_success() {
        let payment_id = PaymentId(field("payment_id").unwrap_or_else(|| format!("webhook:{fallback}")));
        return Ok(ChargeOutcome::Succeeded { payment_id });
    }
    if status.as_u16() == 402 {
        let reason =
            field("decline_code").map_or(DeclineReason::CardDeclined, |c| DeclineReason::from_code(&c));
        return Ok(ChargeOutcome::Declined { reason });
    }
    if status.is_server_error() || http::is_retry_later(status) {
        return Err(PaymentError::Transient);
    }
    Err(PaymentError::Rejected(Rejection::Status(status.as_u16())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_an_independent_hmac() {
        // python3: hmac.new(b"whsec_test", b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest()
        let header = sign(b"whsec_test", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(header, format!("t=1700000000,v1={}", EXPECTED_HEX));
        assert_eq!(verify(b"whsec_test", &header, br#"{"a":1}"#, 1_700_000_100, 300), Ok(()));
        assert_eq!(
            verify(b"whsec_test", &header, br#"{"a":2}"#, 1_700_000_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &header, br#"{"a":1}"#, 1_700_000_100, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"whsec_test", &header, br#"{"a":1}"#, 1_700_001_000, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(verify(b"whsec_test", "v1=00", b"", 0, 300), Err(SignatureError::Malformed));
        assert_eq!(verify(b"whsec_test", "t=1,v1=zz", b"", 1, 300), Err(SignatureError::Malformed));
    }

    const EXPECTED_HEX: &str = "38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789";

    #[test]
    fn answers_map_to_outcomes() {
        let status = |c| reqwest::StatusCode::from_u16(c).expect("valid");
        assert_eq!(
            answer(status(202), Some(br#"{"payment_id":"bill_7"}"#), "INV-1"),
            Ok(ChargeOutcome::Succeeded { payment_id: PaymentId("bill_7".into()) })
        );
        assert_eq!(
            answer(status(204), None, "INV-1"),
            Ok(ChargeOutcome::Succeeded { payment_id: PaymentId("webhook:INV-1".into()) })
        );
        assert_eq!(
            answer(status(402), Some(br#"{"decline_code":"insufficient_funds"}"#), "INV-1"),
            Ok(ChargeOutcome::Declined { reason: DeclineReason::InsufficientFunds })
        );
        assert_eq!(answer(status(400), None, "INV-1"), Err(PaymentError::Rejected(Rejection::Status(400))));
        assert_eq!(answer(status(429), None, "INV-1"), Err(PaymentError::Transient));
        assert_eq!(answer(status(502), None, "INV-1"), Err(PaymentError::Transient));
    }
}
