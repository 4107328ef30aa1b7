//! The `stripe` and `webhook` payment adapters against fake servers on loopback (axum on
//! 127.0.0.1:0), and their configuration. Every test is bounded by `within`.
//!
//! The fake Stripe keeps what real Stripe keeps for the properties under test: PaymentIntents
//! with their metadata, the saved response of each `Idempotency-Key` (replayed for a repeated
//! key instead of charging again), and the search by metadata. A script of behaviours lets a
//! test make the next POST fail with a 500 (not saved, nothing charged) or charge and then
//! stall past the client's timeout. Timeouts are 1 s against stalls of a minute, so a loaded
//! machine cannot turn a loopback round trip into a false timeout; a stalled handler is dropped
//! with the test's runtime.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use gyro::config::Config;
use gyro::rating::{Currency, MoneyMinor};
use gyro::settlement::payment::{
    AdapterKind, Card, CardBrand, ChargeOutcome, ChargeRequest, ConfiguredAdapter, CustomerRef,
    DeclineReason, GatewayCustomer, GatewayRefs, Iban, IdempotencyKey, PaymentAdapter, PaymentError,
    PaymentId, PaymentMethod, PaymentMethodId, Rejection, SepaDebit,
};

const STRIPE_KEY: &str = "sk_test_gyro_0123456789";
const WEBHOOK_SECRET: &str = "whsec_gyro_test";
const NOW: i64 = 1_700_000_000;

/// Every test's body runs under this bound, so a hung client or server fails the test.
async fn within<T>(body: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), body).await.expect("the test finished in time")
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("the fake server runs") });
    addr
}

/// The catalog's card number: the sandbox's instrument, never sent to a remote gateway.
const CARD_NUMBER: &str = "4242424242424242";

/// A card account saved at the gateway as `pm`.
fn card(pm: &str) -> (PaymentMethod, &str) {
    let method =
        PaymentMethod::Card(Card { token: CARD_NUMBER.into(), brand: CardBrand::Visa, last4: "4242".into() });
    (method, pm)
}

/// A SEPA debit account saved at the gateway as `pm`.
fn sepa(pm: &str) -> (PaymentMethod, &str) {
    let method = PaymentMethod::SepaDebit(SepaDebit {
        mandate: "MND-1".into(),
        iban: Iban::parse("DE89370400440532013000").expect("a valid IBAN"),
    });
    (method, pm)
}

/// A charge of the catalog's customer `c-alice`, who is `cus_alice` at the gateway.
fn charge(key: &str, (method, pm): (PaymentMethod, &str)) -> ChargeRequest {
    ChargeRequest {
        key: IdempotencyKey(key.into()),
        invoice_number: format!("GYR-2026-{key}"),
        customer: CustomerRef("c-alice".into()),
        amount: MoneyMinor(1234),
        currency: Currency::EUR,
        method,
        gateway: GatewayRefs {
            customer: Some(GatewayCustomer("cus_alice".into())),
            payment_method: Some(PaymentMethodId(pm.into())),
        },
    }
}

fn settlement(text: &str) -> gyro::settlement::SettlementConfig {
    Config::parse("test.toml", text).expect("a valid configuration").settlement
}

fn env_with(name: &'static str, value: &'static str) -> impl Fn(&str) -> Option<String> {
    move |asked| (asked == name).then(|| value.to_owned())
}

fn fixed_clock() -> i64 {
    NOW
}

// ---------------------------------------------------------------------------------------------
// The fake Stripe.

#[derive(Clone, Copy, Debug)]
enum Next {
    /// Answer 500 before doing anything (nothing saved, nothing charged).
    Fail500,
    /// Charge, save the answer, then wait this long before sending it.
    ChargeThenStall(Duration),
}

#[derive(Debug, Default)]
struct StripeBooks {
    /// Every POST that arrived, authorised or not.
    posts: usize,
    /// The form of every authorised POST with a key, in order.
    forms: Vec<HashMap<String, String>>,
    /// Every `Idempotency-Key` of every POST, in order.
    keys_seen: Vec<String>,
    /// The saved answer of each key.
    saved: HashMap<String, (StatusCode, Value)>,
    /// PaymentIntents: (the key in metadata, the intent).
    intents: Vec<(String, Value)>,
    script: VecDeque<Next>,
    searches: usize,
}

impl StripeBooks {
    /// PaymentIntents that moved (or are moving) money.
    fn charges(&self) -> usize {
        let moved = |i: &&(String, Value)| matches!(i.1["status"].as_str(), Some("succeeded" | "processing"));
        self.intents.iter().filter(moved).count()
    }
}

type Books = Arc<Mutex<StripeBooks>>;

fn fake_stripe(books: Books) -> Router {
    Router::new()
        .route("/v1/payment_intents", post(stripe_create))
        .route("/v1/payment_intents/search", get(stripe_search))
        .with_state(books)
}

fn authorised(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {STRIPE_KEY}"))
}

async fn stripe_create(
    State(books): State<Books>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    books.lock().expect("books").posts += 1;
    if !authorised(&headers) {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({"error": {"type": "invalid_request_error"}})))
            .into_response();
    }
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let (answer, stall) = {
        let mut b = books.lock().expect("books");
        b.keys_seen.push(key.clone());
        b.forms.push(form.clone());
        if let Some((status, body)) = b.saved.get(&key) {
            // A repeated key: Stripe replays the saved answer and charges nothing.
            let mut replay = (*status, axum::Json(body.clone())).into_response();
            replay.headers_mut().insert("idempotent-replayed", "true".parse().expect("a header value"));
            return replay;
        }
        let stall = match b.script.pop_front() {
            Some(Next::Fail500) => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({"error": {"type": "api_error"}})),
                )
                    .into_response()
            }
            Some(Next::ChargeThenStall(d)) => Some(d),
            None => None,
        };
        let answer = stripe_decide(&mut b, &key, &form);
        b.saved.insert(key, answer.clone());
        (answer, stall)
    };
    if let Some(d) = stall {
        tokio::time::sleep(d).await;
    }
    (answer.0, axum::Json(answer.1)).into_response()
}

/// What Stripe would do with the form: the payment method decides.
fn stripe_decide(b: &mut StripeBooks, key: &str, form: &HashMap<String, String>) -> (StatusCode, Value) {
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
    let well_formed = field("confirm") == "true"
        && field("off_session") == "true"
        && field("amount").parse::<i64>().is_ok_and(|a| 0 < a)
        && field("currency") == "eur"
        && field("customer") == "cus_alice"
        && field("payment_method").starts_with("pm_")
        && field("metadata[idempotency_key]") == key
        && matches!(field("payment_method_types[]"), "card" | "sepa_debit");
    if !well_formed || field("payment_method") == "pm_missing" {
        let error = json!({"error": {"type": "invalid_request_error", "code": "resource_missing"}});
        return (StatusCode::BAD_REQUEST, error);
    }
    let id = format!("pi_{}", b.intents.len() + 1);
    let status = match field("payment_method") {
        "pm_card_declined" => "requires_payment_method",
        "pm_sepa" => "processing",
        _ => "succeeded",
    };
    let mut intent = json!({
        "id": id, "object": "payment_intent", "status": status,
        "amount": field("amount").parse::<i64>().unwrap_or(0), "currency": field("currency"),
        "metadata": {"idempotency_key": key},
    });
    if status == "requires_payment_method" {
        let error =
            json!({"type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds"});
        intent["last_payment_error"] = error.clone();
        b.intents.push((key.to_owned(), intent.clone()));
        let mut body = json!({"error": error});
        body["error"]["payment_intent"] = intent;
        return (StatusCode::PAYMENT_REQUIRED, body);
    }
    b.intents.push((key.to_owned(), intent.clone()));
    (StatusCode::OK, intent)
}

async fn stripe_search(
    State(books): State<Books>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !authorised(&headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let q = query.get("query").map(String::as_str).unwrap_or("");
    let Some(key) = q.strip_prefix("metadata['idempotency_key']:'").and_then(|k| k.strip_suffix('\'')) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let key = key.replace("\\'", "'").replace("\\\\", "\\");
    let mut b = books.lock().expect("books");
    b.searches += 1;
    let data: Vec<Value> = b.intents.iter().filter(|(k, _)| *k == key).map(|(_, i)| i.clone()).collect();
    axum::Json(json!({"object": "search_result", "data": data, "has_more": false})).into_response()
}

async fn stripe_setup(timeout_ms: u64) -> (ConfiguredAdapter, Books) {
    let books = Books::default();
    let addr = serve(fake_stripe(books.clone())).await;
    let config = settlement(&format!(
        "[settlement.payment]\nadapter = \"stripe\"\n[settlement.stripe]\nbase_url = \"http://{addr}/\"\n\
         connect_timeout_ms = {connect_ms}\ntimeout_ms = {timeout_ms}\n",
        connect_ms = timeout_ms.min(500)
    ));
    let adapter =
        ConfiguredAdapter::build(&config, env_with("GYRO_STRIPE_SECRET_KEY", STRIPE_KEY), fixed_clock)
            .expect("the stripe adapter builds");
    assert_eq!(adapter.kind(), AdapterKind::Stripe);
    (adapter, books)
}

// ---------------------------------------------------------------------------------------------
// Stripe tests.

#[tokio::test]
async fn stripe_card_charge_succeeds_with_the_key_in_header_and_metadata() {
    within(async {
        let (stripe, books) = stripe_setup(5_000).await;
        let outcome = stripe.charge(&charge("k1", card("pm_card_visa"))).await;
        assert_eq!(outcome, Ok(ChargeOutcome::Succeeded { payment_id: PaymentId("pi_1".into()) }));
        let b = books.lock().expect("books");
        assert_eq!(b.keys_seen, ["k1"]);
        assert_eq!(b.charges(), 1);
        assert_eq!(b.intents[0].1["metadata"]["idempotency_key"], "k1");
    })
    .await;
}

/// The catalog's account, as the worker turns it into a charge: `customer` is the catalog's id,
/// `gateway` the account's `gateway_customer` and `payment_method_id`.
fn catalog_charge(key: &str, account_keys: &str) -> ChargeRequest {
    let text = format!(
        "[[plans]]\nid = \"p\"\ncurrency = \"EUR\"\n[[plans.services]]\nname = \"data\"\nunit = \"octets\"\n\
         price = \"0.01\"\nquota = 1000\n[[customers]]\nid = \"c-alice\"\nname = \"Alice\"\nplan = \"p\"\n\
         [[accounts]]\ncustomer = \"c-alice\"\nsubscription_ids = [\"e164:491700000001\"]\nfunding = \"on_file\"\n\
         {account_keys}\n"
    );
    let catalog = gyro::catalog::Catalog::from_toml("catalog.toml", &text).expect("a valid catalog");
    let account = &catalog.accounts[0];
    ChargeRequest {
        key: IdempotencyKey(key.into()),
        invoice_number: format!("GYR-2026-{key}"),
        customer: CustomerRef(account.customer.clone()),
        amount: MoneyMinor(1234),
        currency: Currency::EUR,
        method: account.payment.clone().expect("a payment method"),
        gateway: account.gateway.clone(),
    }
}

#[tokio::test]
async fn stripe_form_carries_the_accounts_gateway_customer_and_payment_method() {
    within(async {
        let (stripe, books) = stripe_setup(5_000).await;
        let card = format!(
            "card = \"{CARD_NUMBER}\"\ngateway_customer = \"cus_alice\"\npayment_method_id = \"pm_card_visa\""
        );
        let outcome = stripe.charge(&catalog_charge("k1", &card)).await;
        assert_eq!(outcome, Ok(ChargeOutcome::Succeeded { payment_id: PaymentId("pi_1".into()) }));
        let sepa = "iban = \"DE89370400440532013000\"\nmandate = \"MND-1\"\n\
                    gateway_customer = \"cus_alice\"\npayment_method_id = \"pm_sepa\"";
        let pending = stripe.charge(&catalog_charge("k2", sepa)).await;
        assert_eq!(pending, Ok(ChargeOutcome::Pending { payment_id: PaymentId("pi_2".into()) }));
        let b = books.lock().expect("books");
        let field = |i: usize, k: &str| b.forms[i].get(k).cloned().unwrap_or_default();
        assert_eq!(
            (field(0, "customer"), field(0, "payment_method")),
            ("cus_alice".into(), "pm_card_visa".into())
        );
        assert_eq!(field(0, "payment_method_types[]"), "card");
        assert_eq!(
            (field(1, "customer"), field(1, "payment_method")),
            ("cus_alice".into(), "pm_sepa".into())
        );
        assert_eq!(field(1, "payment_method_types[]"), "sepa_debit");
        for form in &b.forms {
            let values: Vec<&String> = form.values().collect();
            assert!(
                values.iter().all(|v| !v.contains(CARD_NUMBER) && !v.contains("DE8937") && *v != "c-alice"),
                "neither the card number, the IBAN nor the catalog's customer id is sent: {form:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn stripe_without_a_gateway_reference_is_rejected_and_nothing_is_sent() {
    within(async {
        let (stripe, books) = stripe_setup(5_000).await;
        let card = format!("card = \"{CARD_NUMBER}\"");
        for (keys, missing) in [
            (format!("{card}\npayment_method_id = \"pm_card_visa\""), "gateway_customer"),
            (format!("{card}\ngateway_customer = \"cus_alice\""), "payment_method_id"),
            (card.clone(), "gateway_customer"),
        ] {
            let outcome = stripe.charge(&catalog_charge("k1", &keys)).await;
            let expected = PaymentError::Rejected(Rejection::Missing { field: missing });
            assert_eq!(outcome, Err(expected), "{keys}");
            assert!(!expected.is_retryable());
            assert!(expected.to_string().contains(missing), "the message names the field: {expected}");
        }
        let b = books.lock().expect("books");
        assert_eq!((b.posts, b.searches), (0, 0), "no request reached the gateway");
    })
    .await;
}

#[tokio::test]
async fn stripe_decline_carries_the_decline_code() {
    within(async {
        let (stripe, books) = stripe_setup(5_000).await;
        let outcome = stripe.charge(&charge("k1", card("pm_card_declined"))).await;
        assert_eq!(outcome, Ok(ChargeOutcome::Declined { reason: DeclineReason::InsufficientFunds }));
        assert_eq!(books.lock().expect("books").charges(), 0);
        // The decline is the key's final answer: asked again, the same decline, no charge.
        let again = stripe.charge(&charge("k1", card("pm_card_declined"))).await;
        assert_eq!(again, outcome);
        assert_eq!(stripe.lookup(&IdempotencyKey("k1".into())).await, Ok(Some(outcome.expect("declined"))));
    })
    .await;
}

#[tokio::test]
async fn stripe_500_is_transient_and_the_retry_with_the_same_key_charges_once() {
    within(async {
        let (stripe, books) = stripe_setup(5_000).await;
        books.lock().expect("books").script.push_back(Next::Fail500);
        let request = charge("k1", card("pm_card_visa"));
        assert_eq!(stripe.charge(&request).await, Err(PaymentError::Transient));
        assert!(PaymentError::Transient.is_retryable());
        let outcome = stripe.charge(&request).await;
        assert!(matches!(outcome, Ok(ChargeOutcome::Succeeded { .. })), "{outcome:?}");
        let b = books.lock().expect("books");
        assert_eq!(b.keys_seen, ["k1", "k1"], "the retry carries the same Idempotency-Key");
        assert_eq!(b.charges(), 1);
    })
    .await;
}

#[tokio::test]
async fn stripe_timeout_after_charging_is_unknown_and_lookup_finds_the_charge() {
    within(async {
        let (stripe, books) = stripe_setup(1_000).await;
        books.lock().expect("books").script.push_back(Next::ChargeThenStall(Duration::from_secs(60)));
        let request = charge("k1", card("pm_card_visa"));
        assert_eq!(stripe.charge(&request).await, Err(PaymentError::Unknown));
        // The worker's rule: look up before any retry; found, so no retry.
        let found = stripe.lookup(&request.key).await;
        assert_eq!(found, Ok(Some(ChargeOutcome::Succeeded { payment_id: PaymentId("pi_1".into()) })));
        {
            let b = books.lock().expect("books");
            assert_eq!((b.searches, b.charges(), b.keys_seen.len()), (1, 1, 1));
        }
        // Even a retry (had the search lagged) is answered from the saved result.
        let retry = stripe.charge(&request).await;
        assert_eq!(retry.ok(), found.expect("found"));
        assert_eq!(books.lock().expect("books").charges(), 1);
        assert_eq!(stripe.lookup(&IdempotencyKey("never".into())).await, Ok(None));
    })
    .await;
}

#[tokio::test]
async fn stripe_duplicate_result_sent_twice_is_one_charge_with_one_outcome() {
    within(async {
        let (stripe, books) = stripe_setup(5_000).await;
        let request = charge("k1", card("pm_card_visa"));
        let first = stripe.charge(&request).await;
        let second = stripe.charge(&request).await;
        assert!(matches!(first, Ok(ChargeOutcome::Succeeded { .. })), "{first:?}");
        assert_eq!(first, second, "the replayed answer is the same outcome");
        let b = books.lock().expect("books");
        assert_eq!((b.keys_seen.len(), b.charges()), (2, 1));
    })
    .await;
}

#[tokio::test]
async fn stripe_sepa_processing_is_pending() {
    within(async {
        let (stripe, books) = stripe_setup(5_000).await;
        let request = charge("k1", sepa("pm_sepa"));
        let pending = Ok(ChargeOutcome::Pending { payment_id: PaymentId("pi_1".into()) });
        assert_eq!(stripe.charge(&request).await, pending);
        assert_eq!(stripe.lookup(&request.key).await, pending.map(Some));
        assert_eq!(books.lock().expect("books").charges(), 1);
    })
    .await;
}

#[tokio::test]
async fn stripe_400_is_rejected_and_not_retryable() {
    within(async {
        let (stripe, books) = stripe_setup(5_000).await;
        let outcome = stripe.charge(&charge("k1", card("pm_missing"))).await;
        assert_eq!(outcome, Err(PaymentError::Rejected(Rejection::Status(400))));
        assert!(!PaymentError::Rejected(Rejection::Status(400)).is_retryable());
        assert_eq!(books.lock().expect("books").charges(), 0);
    })
    .await;
}

#[tokio::test]
async fn stripe_wrong_key_is_rejected_and_a_dead_server_is_transient() {
    within(async {
        let books = Books::default();
        let addr = serve(fake_stripe(books.clone())).await;
        let config = settlement(&format!(
            "[settlement.payment]\nadapter = \"stripe\"\n[settlement.stripe]\nbase_url = \"http://{addr}\"\n"
        ));
        let wrong = ConfiguredAdapter::build(&config, env_with("GYRO_STRIPE_SECRET_KEY", "sk_wrong"), fixed_clock)
            .expect("builds");
        assert_eq!(wrong.charge(&charge("k1", card("pm_card_visa"))).await, Err(PaymentError::Rejected(Rejection::Status(401))));
        // Nothing listens on a port just released: the connection is refused, nothing was sent.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
            l.local_addr().expect("bound")
        };
        let config = settlement(&format!(
            "[settlement.payment]\nadapter = \"stripe\"\n[settlement.stripe]\nbase_url = \"http://{closed}\"\n"
        ));
        let dead = ConfiguredAdapter::build(&config, env_with("GYRO_STRIPE_SECRET_KEY", STRIPE_KEY), fixed_clock)
            .expect("builds");
        assert_eq!(dead.charge(&charge("k1", card("pm_card_visa"))).await, Err(PaymentError::Transient));
        assert_eq!(dead.lookup(&IdempotencyKey("k1".into())).await, Err(PaymentError::Transient));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// The fake billing system behind the webhook.

#[derive(Debug, Default)]
struct BillingBooks {
    /// Status codes to answer the next POSTs with (after verifying); empty = 200.
    script: VecDeque<StatusCode>,
    /// How long to wait before answering the next POST.
    stall: Option<Duration>,
    /// Verified requests: (Idempotency-Key, body).
    received: Vec<(String, Value)>,
    /// Keys accepted (2xx), with the payment id given.
    accepted: HashMap<String, String>,
    bad_signatures: usize,
}

type Billing = Arc<Mutex<BillingBooks>>;

/// The receiver's check, written here from the documented scheme rather than with gyro's own
/// `verify`: `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, within 5 minutes.
fn signature_ok(headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(header) = headers.get("gyro-signature").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let parts: HashMap<&str, &str> = header.split(',').filter_map(|p| p.split_once('=')).collect();
    let (Some(t), Some(v1)) = (parts.get("t"), parts.get("v1")) else {
        return false;
    };
    let Ok(t_value) = t.parse::<i64>() else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    (NOW - t_value).abs() <= 300 && expected == *v1
}

async fn billing_post(State(books): State<Billing>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if !signature_ok(&headers, &body) {
        books.lock().expect("books").bad_signatures += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let json: Value = serde_json::from_slice(&body).expect("the body is JSON");
    let (status, stall) = {
        let mut b = books.lock().expect("books");
        b.received.push((key.clone(), json));
        let status = b.script.pop_front().unwrap_or(StatusCode::OK);
        if status.is_success() {
            let id = format!("bill_{}", b.accepted.len() + 1);
            b.accepted.entry(key.clone()).or_insert(id);
        }
        (status, b.stall.take())
    };
    if let Some(d) = stall {
        tokio::time::sleep(d).await;
    }
    let id = books.lock().expect("books").accepted.get(&key).cloned();
    (status, axum::Json(json!({"payment_id": id}))).into_response()
}

async fn billing_lookup(
    State(books): State<Billing>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !signature_ok(&headers, b"") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let key = query.get("idempotency_key").cloned().unwrap_or_default();
    match books.lock().expect("books").accepted.get(&key) {
        Some(id) => axum::Json(json!({"payment_id": id})).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn webhook_setup(
    timeout_ms: u64,
    with_lookup: bool,
    secret: &'static str,
) -> (ConfiguredAdapter, Billing) {
    let books = Billing::default();
    let app = Router::new()
        .route("/bill", post(billing_post))
        .route("/bill/lookup", get(billing_lookup))
        .with_state(books.clone());
    let addr = serve(app).await;
    let lookup =
        if with_lookup { format!("lookup_url = \"http://{addr}/bill/lookup\"\n") } else { String::new() };
    let config = settlement(&format!(
        "[settlement.payment]\nadapter = \"webhook\"\n[settlement.webhook]\nurl = \"http://{addr}/bill\"\n\
         {lookup}timeout_ms = {timeout_ms}\n"
    ));
    let adapter = ConfiguredAdapter::build(&config, env_with("GYRO_WEBHOOK_SECRET", secret), fixed_clock)
        .expect("the webhook adapter builds");
    assert_eq!(adapter.kind(), AdapterKind::Webhook);
    (adapter, books)
}

// ---------------------------------------------------------------------------------------------
// Webhook tests.

#[tokio::test]
async fn webhook_signed_post_is_verified_and_2xx_is_accepted() {
    within(async {
        let (webhook, books) = webhook_setup(5_000, false, WEBHOOK_SECRET).await;
        let outcome = webhook.charge(&charge("k1", card("pm_card_visa"))).await;
        assert_eq!(outcome, Ok(ChargeOutcome::Succeeded { payment_id: PaymentId("bill_1".into()) }));
        let (key, body) = {
            let b = books.lock().expect("books");
            assert_eq!(b.bad_signatures, 0);
            b.received[0].clone()
        };
        assert_eq!(key, "k1");
        assert_eq!(body["invoice_id"], "GYR-2026-k1");
        assert_eq!(body["amount_minor"], 1234);
        assert_eq!(body["currency"], "EUR");
        assert_eq!(body["customer"], "c-alice");
        assert_eq!(body["gateway_customer"], "cus_alice");
        assert_eq!(body["payment_method_id"], "pm_card_visa");
        assert_eq!(body["payment_means"], json!({"type": "card", "brand": "VISA", "last4": "4242"}));
        assert!(!body.to_string().contains(CARD_NUMBER), "the card number is never sent: {body}");
        // SEPA: the IBAN only masked.
        webhook.charge(&charge("k2", sepa("pm_sepa"))).await.expect("accepted");
        // Without gateway references the body simply has no such keys.
        let mut bare = charge("k3", card("pm_unused"));
        bare.gateway = GatewayRefs::default();
        webhook.charge(&bare).await.expect("accepted");
        let b = books.lock().expect("books");
        assert_eq!(b.received[1].1["payment_means"]["iban_masked"], "DE89**************3000");
        assert_eq!(b.received[1].1["payment_method_id"], "pm_sepa");
        assert!(!b.received[1].1.to_string().contains("DE89370400440532013000"));
        let bare = b.received[2].1.as_object().expect("an object");
        assert!(
            !bare.contains_key("gateway_customer") && !bare.contains_key("payment_method_id"),
            "{bare:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn webhook_with_the_wrong_secret_fails_verification_and_is_rejected() {
    within(async {
        let (webhook, books) = webhook_setup(5_000, false, "whsec_wrong").await;
        let outcome = webhook.charge(&charge("k1", card("pm_card_visa"))).await;
        assert_eq!(outcome, Err(PaymentError::Rejected(Rejection::Status(401))));
        assert_eq!(books.lock().expect("books").bad_signatures, 1);
    })
    .await;
}

#[tokio::test]
async fn webhook_500_is_transient_then_accepted_under_the_same_key() {
    within(async {
        let (webhook, books) = webhook_setup(5_000, false, WEBHOOK_SECRET).await;
        books.lock().expect("books").script.push_back(StatusCode::INTERNAL_SERVER_ERROR);
        let request = charge("k1", card("pm_card_visa"));
        assert_eq!(webhook.charge(&request).await, Err(PaymentError::Transient));
        assert!(matches!(webhook.charge(&request).await, Ok(ChargeOutcome::Succeeded { .. })));
        let b = books.lock().expect("books");
        let keys: Vec<&str> = b.received.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["k1", "k1"]);
        assert_eq!(b.accepted.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn webhook_4xx_is_rejected() {
    within(async {
        let (webhook, books) = webhook_setup(5_000, false, WEBHOOK_SECRET).await;
        books.lock().expect("books").script.push_back(StatusCode::UNPROCESSABLE_ENTITY);
        let outcome = webhook.charge(&charge("k1", card("pm_card_visa"))).await;
        assert_eq!(outcome, Err(PaymentError::Rejected(Rejection::Status(422))));
    })
    .await;
}

#[tokio::test]
async fn webhook_timeout_is_unknown_and_lookup_resolves_it_when_configured() {
    within(async {
        let (webhook, books) = webhook_setup(1_000, true, WEBHOOK_SECRET).await;
        books.lock().expect("books").stall = Some(Duration::from_secs(60));
        let request = charge("k1", card("pm_card_visa"));
        assert_eq!(webhook.charge(&request).await, Err(PaymentError::Unknown));
        assert_eq!(
            webhook.lookup(&request.key).await,
            Ok(Some(ChargeOutcome::Succeeded { payment_id: PaymentId("bill_1".into()) }))
        );
        assert_eq!(webhook.lookup(&IdempotencyKey("never".into())).await, Ok(None));
        assert_eq!(books.lock().expect("books").received.len(), 1, "no second POST");

        // Without a lookup URL the adapter cannot tell.
        let (blind, books) = webhook_setup(1_000, false, WEBHOOK_SECRET).await;
        books.lock().expect("books").stall = Some(Duration::from_secs(60));
        assert_eq!(blind.charge(&request).await, Err(PaymentError::Unknown));
        assert_eq!(blind.lookup(&request.key).await, Err(PaymentError::Unknown));
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Configuration.

fn config_error(text: &str) -> String {
    Config::parse("g.toml", text).expect_err("an invalid configuration").to_string()
}

#[test]
fn zero_config_is_the_sandbox() {
    let config = settlement("");
    assert_eq!(config.payment.adapter, AdapterKind::Sandbox);
    assert_eq!(config.stripe.base_url, "https://api.stripe.com");
    let adapter = ConfiguredAdapter::build(&config, |_| None, fixed_clock).expect("no secret needed");
    assert_eq!(adapter.kind(), AdapterKind::Sandbox);
}

#[test]
fn bad_payment_keys_are_named() {
    let cases = [
        ("[settlement.payment]\nadapter = \"paypal\"\n", "adapter"),
        ("[settlement.payment]\nadaptor = \"stripe\"\n", "adaptor"),
        ("[settlement.stripe]\nbase_url = \"ftp://api.example\"\n", "settlement.stripe.base_url"),
        ("[settlement.stripe]\nbase_url = \"not a url\"\n", "settlement.stripe.base_url"),
        ("[settlement.stripe]\nbase_url = \"https://user:pw@api.example\"\n", "settlement.stripe.base_url"),
        ("[settlement.stripe]\ntimeout_ms = 0\n", "settlement.stripe.timeout_ms"),
        ("[settlement.stripe]\ntimeout_ms = 999999\n", "settlement.stripe.timeout_ms"),
        ("[settlement.stripe]\nconnect_timeout_ms = 0\n", "settlement.stripe.connect_timeout_ms"),
        (
            "[settlement.stripe]\nconnect_timeout_ms = 5000\ntimeout_ms = 1000\n",
            "settlement.stripe.connect_timeout_ms",
        ),
        ("[settlement.payment]\nadapter = \"webhook\"\n", "settlement.webhook.url"),
        ("[settlement.webhook]\nurl = \"mailto:x@example.com\"\n", "settlement.webhook.url"),
        (
            "[settlement.webhook]\nurl = \"https://b.example\"\nlookup_url = \"b\"\n",
            "settlement.webhook.lookup_url",
        ),
        ("[settlement.webhook]\ntimeout_ms = 0\n", "settlement.webhook.timeout_ms"),
    ];
    for (text, key) in cases {
        let e = config_error(text);
        assert!(e.contains(key), "{text}: {e}");
    }
}

#[test]
fn secrets_written_in_the_file_are_refused_and_never_shown() {
    let e = config_error("[settlement.stripe]\nsecret_key = \"sk_live_SUPERSECRET\"\n");
    assert!(e.contains("settlement.stripe.secret_key"), "{e}");
    assert!(e.contains("GYRO_STRIPE_SECRET_KEY") && e.contains("secret_key_file"), "{e}");
    assert!(!e.contains("SUPERSECRET"), "{e}");
    let e = config_error("[settlement.webhook]\nsecret = \"whsec_SUPERSECRET\"\n");
    assert!(e.contains("settlement.webhook.secret") && !e.contains("SUPERSECRET"), "{e}");
}

#[test]
fn secrets_come_from_a_file_or_the_environment_and_debug_redacts_them() {
    let stripe = settlement("[settlement.payment]\nadapter = \"stripe\"\n");
    let e = ConfiguredAdapter::build(&stripe, |_| None, fixed_clock).expect_err("no secret");
    assert_eq!(e.key(), "settlement.stripe.secret_key_file");
    assert!(e.to_string().contains("GYRO_STRIPE_SECRET_KEY"), "{e}");
    let from_env =
        ConfiguredAdapter::build(&stripe, env_with("GYRO_STRIPE_SECRET_KEY", "sk_env_SECRET"), fixed_clock)
            .expect("the key from the environment");
    assert!(!format!("{from_env:?}").contains("sk_env_SECRET"), "{from_env:?}");

    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("stripe.key");
    std::fs::write(&path, "sk_file_SECRET\n").expect("written");
    let with_file = settlement(&format!(
        "[settlement.payment]\nadapter = \"stripe\"\n[settlement.stripe]\nsecret_key_file = \"{}\"\n",
        path.display()
    ));
    let adapter = ConfiguredAdapter::build(&with_file, |_| None, fixed_clock).expect("the key from the file");
    let debug = format!("{adapter:?}");
    assert!(!debug.contains("sk_file_SECRET") && debug.contains("redacted"), "{debug}");

    std::fs::write(&path, "  \n").expect("written");
    let e = ConfiguredAdapter::build(&with_file, |_| None, fixed_clock).expect_err("an empty secret");
    assert_eq!(e.key(), "settlement.stripe.secret_key_file");
    let missing = settlement(&format!(
        "[settlement.payment]\nadapter = \"stripe\"\n[settlement.stripe]\nsecret_key_file = \"{}\"\n",
        dir.path().join("absent").display()
    ));
    let e = ConfiguredAdapter::build(&missing, |_| None, fixed_clock).expect_err("no file");
    assert_eq!(e.key(), "settlement.stripe.secret_key_file");

    let webhook = settlement("[settlement.payment]\nadapter = \"webhook\"\n[settlement.webhook]\nurl = \"https://b.example/charge\"\n");
    let e = ConfiguredAdapter::build(&webhook, |_| None, fixed_clock).expect_err("no secret");
    assert_eq!(e.key(), "settlement.webhook.secret_file");
    let adapter =
        ConfiguredAdapter::build(&webhook, env_with("GYRO_WEBHOOK_SECRET", "whsec_env_SECRET"), fixed_clock)
            .expect("the secret from the environment");
    assert!(!format!("{adapter:?}").contains("whsec_env_SECRET"));
}
