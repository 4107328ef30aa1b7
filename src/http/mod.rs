//! The operations HTTP listener (issue 7): `/metrics`, `/healthz`, `/readyz`, and the admin
//! API under `/v1` (bearer token). Default 127.0.0.1:9464 (`[http] listen`).
//!
//! Owns: routing, authentication and the JSON error shape (`{"error": …, "field": …}` with a
//! 4xx naming what was wrong). Must not touch: Diameter (RAR/ASR after admin changes go through `net::Shared::send_request`, see `notify`), the ledger's or the engine's state
//! directly — it reads [`Metrics`], files the settlement worker wrote, and the engine's
//! read-only views; changes go through `Engine::admin` (and `Engine::forget_session`). Started before the journal is recovered, so a probe can tell "alive but
//! recovering" (`/healthz` 200, `/readyz` 503) from "dead".

mod accounts;
mod catalog;
mod notify;
mod sessions;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cc::Engine;
use crate::durable::ChargingJournal;
use crate::metrics::Metrics;

/// What the admin API works on, set once the journal is recovered (before: 503).
pub struct Backend {
    pub engine: Arc<Engine>,
    /// `None` without a data directory: changes are in memory only, like every charge then.
    pub journal: Option<Arc<ChargingJournal>>,
    /// The catalog in force, and catalog changes (reload, `PUT /v1/catalog`).
    pub catalogs: Arc<crate::durable::Catalogs>,
    /// SIGHUP's reload, for `POST /v1/reload` (`None`: nothing to reload, e.g. in tests).
    pub reload: Option<Arc<crate::reload::Reloader>>,
    /// The engine's monotonic origin (`Charging::now_from`): session deadlines are shown in
    /// Unix time.
    pub epoch: tokio::time::Instant,
    /// The Diameter server's shared state, through which RAR and ASR reach the client holding
    /// a session (`None`: no Diameter server, nothing is notified).
    pub net: Option<Arc<crate::net::Shared>>,
}

/// What `/readyz` waits for.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The journal has been recovered (or there is none) and the engine built.
    pub recovered: AtomicBool,
    /// The Diameter listener is bound.
    pub listening: AtomicBool,
}

impl Readiness {
    fn waiting_for(&self) -> Vec<&'static str> {
        let mut waiting = Vec::new();
        if !self.recovered.load(Ordering::Acquire) {
            waiting.push("journal recovery");
        }
        if !self.listening.load(Ordering::Acquire) {
            waiting.push("diameter listener");
        }
        waiting
    }
}

/// The listener's shared state.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<Readiness>,
    /// SHA-256 of the admin bearer token; `None`: the admin API is off.
    admin_token: Option<[u8; 32]>,
    /// `<data dir>/invoices`, when there is a data directory.
    invoices: Option<PathBuf>,
    /// Set by `gyro serve` after recovery.
    pub backend: Arc<OnceLock<Backend>>,
}

impl HttpState {
    pub fn new(metrics: Arc<Metrics>, ready: Arc<Readiness>) -> Self {
        Self { metrics, ready, admin_token: None, invoices: None, backend: Arc::new(OnceLock::new()) }
    }

    /// Turns the admin API on with `token` (at least 16 bytes: a token short enough to guess is
    /// refused at start-up, naming its source).
    pub fn with_admin_token(mut self, token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.len() < ADMIN_TOKEN_MIN_BYTES {
            return Err(format!("the admin token must be at least {ADMIN_TOKEN_MIN_BYTES} bytes"));
        }
        self.admin_token = Some(Sha256::digest(token.as_bytes()).into());
        Ok(self)
    }

    /// Serves the invoices the settlement worker wrote under `dir`.
    pub fn with_invoices(mut self, dir: PathBuf) -> Self {
        self.invoices = Some(dir);
        self
    }
}

const ADMIN_TOKEN_MIN_BYTES: usize = 16;
/// Invoices listed per page at most.
const INVOICES_PAGE_MAX: usize = 1_000;

/// The routes (a function of its own so tests drive it without a socket).
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/v1/invoices", get(list_invoices))
        .route("/v1/invoices/{number}", get(get_invoice))
        .route("/v1/payments", get(list_payments))
        .route("/v1/dead-letters", get(list_dead_letters))
        .route("/v1/accounts", get(accounts::list).post(catalog::create_account))
        .route("/v1/accounts/{account}", get(accounts::get).patch(catalog::update_account))
        .route("/v1/accounts/{account}/close", post(catalog::close_account))
        .route("/v1/customers", get(catalog::list_customers).post(catalog::create_customer))
        .route("/v1/customers/{customer}", get(catalog::get_customer).patch(catalog::update_customer))
        .route(
            "/v1/catalog",
            get(catalog::get).put(catalog::put).layer(DefaultBodyLimit::max(catalog::CATALOG_BODY_MAX_BYTES)),
        )
        .route("/v1/reload", post(catalog::reload))
        .route("/v1/accounts/{account}/top-ups", post(accounts::top_up))
        .route("/v1/accounts/{account}/adjustments", post(accounts::adjust))
        .route("/v1/accounts/{account}/bar", post(accounts::bar))
        .route("/v1/accounts/{account}/unbar", post(accounts::unbar))
        .route("/v1/sessions", get(sessions::list))
        .route("/v1/sessions/{session_id}", get(sessions::get))
        .route("/v1/sessions/{session_id}/abort", post(sessions::abort))
        .route("/v1/plans", get(accounts::plans))
        .route(
            "/v1/plans/validate",
            post(accounts::validate).layer(DefaultBodyLimit::max(catalog::CATALOG_BODY_MAX_BYTES)),
        )
        .fallback(|uri: axum::http::Uri| async move {
            error(StatusCode::NOT_FOUND, format!("no such endpoint: {}", uri.path()), None)
        })
        .with_state(state)
}

/// Reloads what SIGHUP reloads (see `reload`), then sends the RARs of a price change; the
/// reloader logs the outcome. Returns whether it succeeded.
pub async fn reload(backend: &Backend, why: &'static str) -> bool {
    matches!(catalog::run_reload(backend, why).await, Ok(Ok(_)))
}

/// Serves `router(state)` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, state: HttpState, shutdown: CancellationToken) {
    let app = router(state);
    let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await });
    if let Err(e) = served.await {
        tracing::error!(error = %e, "the HTTP listener failed");
    }
}

/// The OpenAPI 3.1 document of this listener (checked against the routes by a test).
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let text = tokio::task::spawn_blocking(move || state.metrics.render()).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn readyz(State(state): State<HttpState>) -> Response {
    let waiting = state.ready.waiting_for();
    if waiting.is_empty() {
        (StatusCode::OK, Json(json!({ "ready": true }))).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "waiting_for": waiting })))
            .into_response()
    }
}

/// A JSON error body: what was wrong, and the field (query parameter, path segment, header)
/// that was.
fn error(status: StatusCode, message: String, field: Option<&'static str>) -> Response {
    ApiError { status, message, field, peer: None }.into_response()
}

/// An error answer, before it becomes a [`Response`] (small, so `Result`s stay cheap).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<&'static str>,
    /// The Diameter peer that could not be reached (RAR/ASR: 502, 504).
    peer: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>, field: Option<&'static str>) -> Self {
        Self { status, message: message.into(), field, peer: None }
    }

    fn with_peer(mut self, peer: &str) -> Self {
        self.peer = Some(peer.to_owned());
        self
    }

    fn bad_query(e: &axum::extract::rejection::QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, e.body_text(), Some("query"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message, "field": self.field });
        if let Some(peer) = self.peer {
            body["peer"] = json!(peer);
        }
        (self.status, Json(body)).into_response()
    }
}

/// A text body, or the reason there is none (too large: 413; not UTF-8: 400).
pub(crate) type TextBody = Result<String, axum::extract::rejection::StringRejection>;

/// The body of a `TextBody`, or the JSON error naming `body`.
pub(crate) fn text(body: TextBody) -> Result<String, ApiError> {
    body.map_err(|e| ApiError::new(e.status(), e.body_text(), Some("body")))
}

/// Checks the bearer token (RFC 6750 §2.1). Compares SHA-256 digests, so the comparison's
/// time says nothing about the token.
pub(crate) fn authorize(state: &HttpState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = state.admin_token else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the admin API is off: set http.admin_token_file or GYRO_ADMIN_TOKEN",
            None,
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| <[u8; 32]>::from(Sha256::digest(t.trim().as_bytes())));
    match given {
        Some(digest) if digest == expected => Ok(()),
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "wrong bearer token", Some("Authorization"))),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <token>`",
            Some("Authorization"),
        )),
    }
}

/// Invoice numbers as the worker names files: letters, digits, `-` and `_`, not starting with
/// `-` (so a number cannot escape the directory).
fn check_number(number: &str, field: &'static str) -> Result<(), ApiError> {
    let ok = !number.is_empty()
        && number.len() <= 64
        && !number.starts_with('-')
        && number.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        let message = format!("not an invoice number: {number:?} (letters, digits, '-', '_')");
        Err(ApiError::new(StatusCode::BAD_REQUEST, message, Some(field)))
    }
}

fn invoices_dir(state: &HttpState) -> Result<PathBuf, ApiError> {
    state.invoices.clone().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "no invoices: gyro runs without a data directory", None)
    })
}

fn internal(message: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message, None)
}

/// `limit` (default 100), checked against `max`: every list of the admin API pages alike.
fn page_size(limit: Option<usize>, max: usize) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(100);
    if limit == 0 || limit > max {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1..={max}"),
            Some("limit"),
        ));
    }
    Ok(limit)
}

/// A page's size (`limit`, default 100) and its start (`after`, an invoice number), checked.
fn page(limit: Option<usize>, after: Option<&str>) -> Result<usize, ApiError> {
    let limit = page_size(limit, INVOICES_PAGE_MAX)?;
    if let Some(after) = after {
        check_number(after, "after")?;
    }
    Ok(limit)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Invoice numbers after this one (the last of the previous page).
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/invoices?after=&limit=`: invoice summaries in number order.
async fn list_invoices(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::bad_query(&e))?;
    let limit = page(q.limit, q.after.as_deref())?;
    let dir = invoices_dir(&state)?;
    let listed = tokio::task::spawn_blocking(move || list(&dir, q.after.as_deref(), limit)).await;
    match listed {
        Ok(Ok(page)) => Ok(Json(page).into_response()),
        Ok(Err(e)) => Err(internal(format!("cannot list invoices: {e}"))),
        Err(e) => Err(internal(e.to_string())),
    }
}

/// A page of invoice summaries from `<number>.json` files (sorted by number: numbers of one
/// series are zero-padded, so name order is issue order).
fn list(dir: &std::path::Path, after: Option<&str>, limit: usize) -> std::io::Result<serde_json::Value> {
    let mut numbers: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
        .filter(|n| after.is_none_or(|a| n.as_str() > a))
        .collect();
    numbers.sort();
    let more = numbers.len() > limit;
    numbers.truncate(limit);
    let mut items = Vec::with_capacity(numbers.len());
    for number in &numbers {
        let Ok(bytes) = std::fs::read(dir.join(format!("{number}.json"))) else { continue };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        items.push(json!({
            "number": v["number"],
            "issue_date": v["issue_date"],
            "buyer_id": v["buyer"]["id"],
            "currency": v["currency"],
            "total": v["totals"]["tax_inclusive_amount"],
            "payable": v["totals"]["payable_amount"],
            "paid": v["paid"],
        }));
    }
    let next = if more { numbers.last().cloned() } else { None };
    Ok(json!({ "invoices": items, "next_after": next }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaymentsQuery {
    after: Option<String>,
    limit: Option<usize>,
    /// `paid`, `payment_failed`, `dead_letter` or `issued` (open, no payment method).
    status: Option<String>,
}

const STATUSES: [&str; 4] = ["paid", "payment_failed", "dead_letter", "issued"];

/// `GET /v1/payments?status=&after=&limit=`: each settled invoice's payment (status, gateway
/// payment id or decline, amount), from the settlement index, in number order.
async fn list_payments(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<PaymentsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::bad_query(&e))?;
    if let Some(status) = &q.status {
        if !STATUSES.contains(&status.as_str()) {
            let message = format!("status must be one of {}, not {status:?}", STATUSES.join(", "));
            return Err(ApiError::new(StatusCode::BAD_REQUEST, message, Some("status")));
        }
    }
    payments_page(&state, q).await
}

/// `GET /v1/dead-letters?after=&limit=`: payments given up after their last attempt (the
/// invoices stay open), as `/v1/payments?status=dead_letter`.
async fn list_dead_letters(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::bad_query(&e))?;
    payments_page(
        &state,
        PaymentsQuery { after: q.after, limit: q.limit, status: Some("dead_letter".into()) },
    )
    .await
}

async fn payments_page(state: &HttpState, q: PaymentsQuery) -> Result<Response, ApiError> {
    let limit = page(q.limit, q.after.as_deref())?;
    let path = invoices_dir(state)?.join(crate::settlement::worker::INDEX_FILE);
    let read = tokio::task::spawn_blocking(move || match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        other => other,
    })
    .await
    .map_err(|e| internal(e.to_string()))?
    .map_err(|e| internal(format!("cannot read the settlement index: {e}")))?;
    // The last line per number wins (a delivery repeated after a crash appends it again).
    let mut by_number = std::collections::BTreeMap::new();
    for line in read.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if let Some(number) = v["number"].as_str() {
            by_number.insert(number.to_owned(), v);
        }
    }
    let mut items: Vec<serde_json::Value> = by_number
        .into_iter()
        .filter(|(n, _)| q.after.as_deref().is_none_or(|a| n.as_str() > a))
        .filter(|(_, v)| q.status.as_deref().is_none_or(|s| v["status"] == s))
        .map(|(_, v)| v)
        .take(limit + 1)
        .collect();
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().and_then(|v| v["number"].as_str()).map(str::to_owned) } else { None };
    Ok(Json(json!({ "payments": items, "next_after": next })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetQuery {
    /// `json` (default) or `ubl` (the UBL 2.1 XML).
    format: Option<String>,
}

/// `GET /v1/invoices/{number}?format=json|ubl`: the invoice document as archived.
async fn get_invoice(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(number): Path<String>,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::bad_query(&e))?;
    check_number(&number, "number")?;
    let (ext, content_type) = match q.format.as_deref().unwrap_or("json") {
        "json" => ("json", "application/json"),
        "ubl" => ("xml", "application/xml"),
        other => {
            let message = format!("format must be json or ubl, not {other:?}");
            return Err(ApiError::new(StatusCode::BAD_REQUEST, message, Some("format")));
        }
    };
    let path = invoices_dir(&state)?.join(format!("{number}.{ext}"));
    let read = tokio::task::spawn_blocking(move || std::fs::read(&path)).await;
    match read.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string()))) {
        Ok(bytes) => Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ApiError::new(StatusCode::NOT_FOUND, format!("no invoice {number}"), Some("number")))
        }
        Err(e) => Err(internal(format!("cannot read invoice {number}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn call(router: Router, path: &str, token: Option<&str>) -> (StatusCode, serde_json::Value) {
        let mut request = Request::get(path);
        if let Some(t) = token {
            request = request.header("Authorization", format!("Bearer {t}"));
        }
        let response = router.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    fn state() -> HttpState {
        HttpState::new(Arc::new(Metrics::new()), Arc::new(Readiness::default()))
    }

    #[tokio::test]
    async fn readyz_names_what_it_waits_for_until_both_are_up() {
        let s = state();
        let (status, body) = call(router(s.clone()), "/readyz", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["waiting_for"], serde_json::json!(["journal recovery", "diameter listener"]));
        s.ready.recovered.store(true, Ordering::Release);
        let (_, body) = call(router(s.clone()), "/readyz", None).await;
        assert_eq!(body["waiting_for"], serde_json::json!(["diameter listener"]));
        s.ready.listening.store(true, Ordering::Release);
        assert_eq!(call(router(s.clone()), "/readyz", None).await.0, StatusCode::OK);
        assert_eq!(call(router(s), "/healthz", None).await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn the_admin_api_is_off_without_a_token_and_unready_before_recovery() {
        let (status, body) = call(router(state()), "/v1/accounts/0", Some("anything-at-all-here")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body["error"].as_str().unwrap().contains("GYRO_ADMIN_TOKEN"), "{body}");
        let s = state().with_admin_token("0123456789abcdef").unwrap();
        let (status, body) = call(router(s.clone()), "/v1/accounts/0", Some("0123456789abcdef")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body["error"].as_str().unwrap().contains("recovered"), "{body}");
        // No data directory: no invoices to serve, said as such.
        let (status, body) = call(router(s), "/v1/invoices", Some("0123456789abcdef")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(body["error"].as_str().unwrap().contains("data directory"), "{body}");
    }

    #[test]
    fn a_short_admin_token_is_refused() {
        let err = state().with_admin_token("short").err().unwrap();
        assert!(err.contains("at least 16 bytes"), "{err}");
    }
}
