//! `stripe`: a Stripe-compatible HTTP client.
//!
//! # One charge
//! `POST {base_url}/v1/payment_intents`, form-encoded, with the customer's saved payment method
//! created and confirmed in one request, off-session (the customer is not there to
//! authenticate): `amount` (minor units), `currency` (lower case), `customer` (the account's
//! `gateway_customer`, `cus_…`), `payment_method` (its `payment_method_id`, `pm_…`: a saved card
//! or a SEPA debit with its mandate), `payment_method_types[]` (`card` or `sepa_debit`), `confirm=true`,
//! `off_session=true`, and `metadata[idempotency_key]` and `metadata[invoice_number]`. The
//! headers carry the secret key as a bearer token and `Idempotency-Key` = the settlement's key,
//! so Stripe answers a repeated key with the first request's result and never charges twice.
//!
//! # What the answers mean
//! | answer | outcome |
//! |---|---|
//! | 2xx, `status: succeeded` | `Succeeded` with the PaymentIntent's id |
//! | 2xx, `status: processing` (SEPA: days to clear) | `Pending` with the id |
//! | 2xx, `requires_payment_method`, `requires_action`, `canceled` | `Declined` (the last error's decline code, or the status) |
//! | 402, or any `card_error` | `Declined` with `decline_code` (else `code`) |
//! | 400 `idempotency_error` | `KeyReused` |
//! | 408, 409, 425, 429, 5xx | `Transient` (a 5xx with `Stripe-Should-Retry: false`: `Unknown`) |
//! | any other 4xx | `Rejected` (bad request, bad key, unknown customer: never retried) |
//! | not sent: the account has no `gateway_customer` or `payment_method_id` | `Rejected` (`Rejection::Missing`) |
//! | refused or timed-out connection | `Transient` |
//! | timeout or reset after sending, an unreadable 2xx | `Unknown` |
//!
//! # Unknown outcomes
//! `lookup` searches `GET /v1/payment_intents/search?query=metadata['idempotency_key']:'KEY'`.
//! Stripe's search index lags writes (its documentation says data is usually searchable within
//! a minute), so a lookup right after a timeout can miss a charge that happened. That is safe:
//! the retry that follows carries the same `Idempotency-Key`, and Stripe answers it with the
//! saved result instead of charging again, for 24 hours; the retry policy's default span (about
//! ten minutes) stays well inside that window. Past it, the search has long caught up.

use serde::Deserialize;

use super::http::{self, Timeouts};
use super::{
    ChargeOutcome, ChargeRequest, DeclineCode, DeclineReason, IdempotencyKey, PaymentAdapter, PaymentError,
    PaymentId, PaymentMethod, Rejection, Secret,
};

/// The Stripe (or Stripe-compatible) gateway.
#[derive(Debug)]
pub struct Stripe {
    client: reqwest::Client,
    /// `base_url` without a trailing slash.
    base_url: String,
    secret_key: Secret,
}

impl Stripe {
    /// `base_url` is checked by the configuration (`settlement.stripe.base_url`); here it is
    /// only stripped of a trailing slash.
    pub fn new(base_url: &str, secret_key: Secret, timeouts: Timeouts) -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: http::client(timeouts)?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            secret_key,
        })
    }
}

impl PaymentAdapter for Stripe {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeOutcome, PaymentError> {
        // Checked per charge rather than at start-up: a catalog may hold many accounts, and one
        // without its references should cost its own invoice, not the whole service.
        let form = form(request).inspect_err(|error| {
            tracing::warn!(key = %request.key.0, %error, "stripe charge not sent");
        })?;
        let response = self
            .client
            .post(format!("{}/v1/payment_intents", self.base_url))
            .bearer_auth(self.secret_key.expose())
            .header("Idempotency-Key", &request.key.0)
            .form(&form)
            .send()
            .await
            .map_err(|error| http::send_failed(&error))?;
        let status = response.status();
        let should_retry = response
            .headers()
            .get("Stripe-Should-Retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.eq_ignore_ascii_case("true"));
        let body = http::body(response).await;
        let outcome = answer(status, should_retry, body.as_deref());
        if let Err(error) = &outcome {
            tracing::warn!(key = %request.key.0, status = status.as_u16(), %error, "stripe charge failed");
        }
        outcome
    }

    async fn lookup(&self, key: &IdempotencyKey) -> Result<Option<ChargeOutcome>, PaymentError> {
        let response = self
            .client
            .get(format!("{}/v1/payment_intents/search", self.base_url))
            .bearer_auth(self.secret_key.expose())
            .query(&[("query", search_query(key)), ("limit", "10".to_owned())])
            .send()
            .await
            // A lookup that failed changed nothing: try it again later.
            .map_err(|_| PaymentError::Transient)?;
        let status = response.status();
        let body = http::body(response).await;
        if status.is_success() {
            let found: SearchResult = body
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .ok_or(PaymentError::Transient)?;
            return resolve(&found.data);
        }
        if status.is_server_error() || http::is_retry_later(status) {
            return Err(PaymentError::Transient);
        }
        Err(PaymentError::Rejected(Rejection::Status(status.as_u16())))
    }
}

/// The form of `POST /v1/payment_intents`, or `Rejected` when the account lacks a reference
/// Stripe needs. Never the catalog's card number or IBAN: Stripe charges only payment methods it
/// saved itself, and a raw card number must not leave gyro.
fn form(request: &ChargeRequest) -> Result<Vec<(&'static str, String)>, PaymentError> {
    let missing = |field| PaymentError::Rejected(Rejection::Missing { field });
    let customer = request.gateway.customer.as_ref().ok_or_else(|| missing("gateway_customer"))?;
    let payment_method =
        request.gateway.payment_method.as_ref().ok_or_else(|| missing("payment_method_id"))?;
    let kind = match request.method {
        PaymentMethod::Card(_) => "card",
        PaymentMethod::SepaDebit(_) => "sepa_debit",
    };
    Ok(vec![
        ("amount", request.amount.0.to_string()),
        ("currency", request.currency.code.to_ascii_lowercase()),
        ("customer", customer.0.clone()),
        ("payment_method", payment_method.0.clone()),
        ("payment_method_types[]", kind.to_owned()),
        ("confirm", "true".to_owned()),
        ("off_session", "true".to_owned()),
        ("metadata[idempotency_key]", request.key.0.clone()),
        ("metadata[invoice_number]", request.invoice_number.clone()),
    ])
}

/// Stripe's search language quotes strings in single quotes and escapes with a backslash.
fn search_query(key: &IdempotencyKey) -> String {
    let escaped = key.0.replace('\\', "\\\\").replace('\'', "\\'");
    format!("metadata['idempotency_key']:'{escaped}'")
}

/// The parts of a PaymentIntent we read.
#[derive(Debug, Deserialize)]
struct PaymentIntent {
    id: String,
    status: String,
    #[serde(default)]
    last_payment_error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    decline_code: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ApiError,
}

#[derive(Debug, Deserialize)]
struct SearchResult {
    data: Vec<PaymentIntent>,
}

impl ApiError {
    fn decline(&self) -> Option<DeclineReason> {
        self.decline_code.as_deref().or(self.code.as_deref()).map(DeclineReason::from_code)
    }
}

/// The outcome of a charge's HTTP answer (see the module doc's table).
fn answer(
    status: reqwest::StatusCode,
    should_retry: Option<bool>,
    body: Option<&[u8]>,
) -> Result<ChargeOutcome, PaymentError> {
    if status.is_success() {
        // The charge went through Stripe; if we cannot read what it says, only a lookup can.
        let intent: PaymentIntent =
            body.and_then(|b| serde_json::from_slice(b).ok()).ok_or(PaymentError::Unknown)?;
        return outcome(&intent).ok_or(PaymentError::Unknown);
    }
    if status.is_server_error() {
        // Stripe saves a 500 it produced while running the request and replays it for the same
        // key; `Stripe-Should-Retry: false` says so. The charge's fate is then unknown.
        return Err(if should_retry == Some(false) {
            PaymentError::Unknown
        } else {
            PaymentError::Transient
        });
    }
    if http::is_retry_later(status) {
        return Err(PaymentError::Transient);
    }
    let error = body.and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok()).map(|e| e.error);
    let kind = error.as_ref().and_then(|e| e.kind.as_deref());
    if status.as_u16() == 402 || kind == Some("card_error") {
        let reason = error.as_ref().and_then(ApiError::decline).unwrap_or(DeclineReason::CardDeclined);
        return Ok(ChargeOutcome::Declined { reason });
    }
    if kind == Some("idempotency_error") {
        return Err(PaymentError::KeyReused);
    }
    Err(PaymentError::Rejected(Rejection::Status(status.as_u16())))
}

/// A PaymentIntent's state as an outcome; `None` for states an off-session, automatically
/// captured intent should never be in after confirmation (`requires_confirmation`,
/// `requires_capture`, anything new).
fn outcome(intent: &PaymentIntent) -> Option<ChargeOutcome> {
    let payment_id = PaymentId(intent.id.clone());
    match intent.status.as_str() {
        "succeeded" => Some(ChargeOutcome::Succeeded { payment_id }),
        "processing" => Some(ChargeOutcome::Pending { payment_id }),
        "requires_payment_method" | "requires_action" | "canceled" => {
            let reason = intent
                .last_payment_error
                .as_ref()
                .and_then(ApiError::decline)
                .unwrap_or_else(|| DeclineReason::Other(DeclineCode(intent.status.clone())));
            Some(ChargeOutcome::Declined { reason })
        }
        _ => None,
    }
}

/// What the PaymentIntents found under one key say. There is normally one; should a second
/// exist (created by hand in the dashboard, say), a success wins over a pending one, and that
/// over a decline, so a charge that happened is never reported as missing.
fn resolve(found: &[PaymentIntent]) -> Result<Option<ChargeOutcome>, PaymentError> {
    let outcomes: Vec<ChargeOutcome> = found.iter().filter_map(outcome).collect();
    let rank = |o: &ChargeOutcome| match o {
        ChargeOutcome::Succeeded { .. } => 0,
        ChargeOutcome::Pending { .. } => 1,
        ChargeOutcome::Declined { .. } => 2,
    };
    if let Some(best) = outcomes.iter().min_by_key(|o| rank(o)) {
        return Ok(Some(best.clone()));
    }
    // Intents exist but none in a state we can read: not "nothing found".
    if found.is_empty() {
        Ok(None)
    } else {
        Err(PaymentError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rating::{Currency, MoneyMinor};
    use crate::settlement::payment::{Card, CustomerRef, GatewayCustomer, GatewayRefs, PaymentMethodId};

    fn status(code: u16) -> reqwest::StatusCode {
        reqwest::StatusCode::from_u16(code).expect("a valid status")
    }

    #[test]
    fn answers_map_to_outcomes() {
        let ok = |body: &str| answer(status(200), None, Some(body.as_bytes()));
        assert_eq!(
            ok(r#"{"id":"pi_1","status":"succeeded"}"#),
            Ok(ChargeOutcome::Succeeded { payment_id: PaymentId("pi_1".into()) })
        );
        assert_eq!(
            ok(r#"{"id":"pi_2","status":"processing"}"#),
            Ok(ChargeOutcome::Pending { payment_id: PaymentId("pi_2".into()) })
        );
        assert_eq!(
            ok(
                r#"{"id":"pi_3","status":"requires_payment_method","last_payment_error":{"type":"card_error","code":"card_declined","decline_code":"do_not_honor"}}"#
            ),
            Ok(ChargeOutcome::Declined { reason: DeclineReason::Other(DeclineCode("do_not_honor".into())) })
        );
        assert_eq!(ok(r#"{"id":"pi_4","status":"requires_capture"}"#), Err(PaymentError::Unknown));
        assert_eq!(ok("not json"), Err(PaymentError::Unknown));
        assert_eq!(answer(status(200), None, None), Err(PaymentError::Unknown));
        let declined =
            r#"{"error":{"type":"card_error","code":"card_declined","decline_code":"insufficient_funds"}}"#;
        assert_eq!(
            answer(status(402), None, Some(declined.as_bytes())),
            Ok(ChargeOutcome::Declined { reason: DeclineReason::InsufficientFunds })
        );
        assert_eq!(
            answer(status(402), None, None),
            Ok(ChargeOutcome::Declined { reason: DeclineReason::CardDeclined })
        );
        let reused = r#"{"error":{"type":"idempotency_error"}}"#;
        assert_eq!(answer(status(400), None, Some(reused.as_bytes())), Err(PaymentError::KeyReused));
        let rejected = |code| Err(PaymentError::Rejected(Rejection::Status(code)));
        assert_eq!(answer(status(400), None, Some(b"{}")), rejected(400));
        assert_eq!(answer(status(401), None, None), rejected(401));
        assert_eq!(answer(status(429), None, None), Err(PaymentError::Transient));
        assert_eq!(answer(status(409), None, None), Err(PaymentError::Transient));
        assert_eq!(answer(status(503), None, None), Err(PaymentError::Transient));
        assert_eq!(answer(status(500), Some(true), None), Err(PaymentError::Transient));
        assert_eq!(answer(status(500), Some(false), None), Err(PaymentError::Unknown));
    }

    #[test]
    fn the_form_carries_the_charge_the_key_and_the_saved_method_never_the_card_number() {
        let mut request = ChargeRequest {
            key: IdempotencyKey("set_1".into()),
            invoice_number: "GYR-2026-000001".into(),
            customer: CustomerRef("c-alice".into()),
            amount: MoneyMinor(1234),
            currency: Currency::EUR,
            method: PaymentMethod::Card(Card {
                token: "4242424242424242".into(),
                brand: super::super::CardBrand::Visa,
                last4: "4242".into(),
            }),
            gateway: GatewayRefs {
                customer: Some(GatewayCustomer("cus_9".into())),
                payment_method: Some(PaymentMethodId("pm_card".into())),
            },
        };
        let form = form(&request).expect("both references are there");
        let get = |k: &str| form.iter().find(|(name, _)| *name == k).map(|(_, v)| v.as_str());
        assert!(form.iter().all(|(_, v)| !v.contains("4242424242424242") && v != "c-alice"));
        assert_eq!(get("amount"), Some("1234"));
        assert_eq!(get("currency"), Some("eur"));
        assert_eq!(get("customer"), Some("cus_9"));
        assert_eq!(get("payment_method"), Some("pm_card"));
        assert_eq!(get("payment_method_types[]"), Some("card"));
        assert_eq!((get("confirm"), get("off_session")), (Some("true"), Some("true")));
        assert_eq!(get("metadata[idempotency_key]"), Some("set_1"));
        assert_eq!(search_query(&IdempotencyKey("a'b\\c".into())), r"metadata['idempotency_key']:'a\'b\\c'");
        let missing = |field| Err(PaymentError::Rejected(Rejection::Missing { field }));
        request.gateway.payment_method = None;
        assert_eq!(super::form(&request), missing("payment_method_id"));
        request.gateway.customer = None;
        assert_eq!(super::form(&request), missing("gateway_customer"));
    }

    #[test]
    fn lookup_prefers_a_success_and_tells_nothing_from_unreadable() {
        let intent = |id: &str, status: &str| PaymentIntent {
            id: id.into(),
            status: status.into(),
            last_payment_error: None,
        };
        assert_eq!(resolve(&[]), Ok(None));
        assert_eq!(
            resolve(&[intent("pi_a", "canceled"), intent("pi_b", "succeeded")]),
            Ok(Some(ChargeOutcome::Succeeded { payment_id: PaymentId("pi_b".into()) }))
        );
        assert_eq!(resolve(&[intent("pi_c", "requires_confirmation")]), Err(PaymentError::Unknown));
    }
}
