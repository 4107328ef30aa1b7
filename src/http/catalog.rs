//! The admin API's catalog (issue 7): live reload, the catalog in force (read, load), and
//! customers and accounts created, updated and closed — each a catalog change installed through
//! `durable::Catalogs` (validated as a file is, checked against the catalog in force, stored,
//! journaled, answered once durable). After a change, the clients of sessions whose prices
//! changed get a RAR, and of a closed account's sessions an ASR.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use super::accounts::{account_of, admin};
use super::notify::{self, Trigger};
use super::{ApiError, Backend, HttpState};
use crate::catalog::{Edit, EditError};
use crate::durable::{InstallError, Installation};
use crate::net::charging::Charging;
use crate::reload::{ReloadError, ReloadReport};

/// Largest catalog `PUT /v1/catalog` takes (a million accounts is ≈ 100 MB of TOML: load
/// such a catalog as a file and reload).
pub(super) const CATALOG_BODY_MAX_BYTES: usize = 64 << 20;

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn install_error(e: InstallError) -> ApiError {
    match e {
        InstallError::Refused(e) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string(), Some("catalog"))
        }
        InstallError::Edit(e) => edit_error(e),
        InstallError::Store(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
        InstallError::Journal(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e, None),
    }
}

fn installation_json(b: &Backend, i: &Installation) -> Value {
    let rar = notify::after_reprice(b, &i.repriced);
    json!({
        "version": i.digest,
        "previous": i.previous,
        "changed": !i.unchanged,
        "accounts_added": i.accounts_added,
        "accounts_repriced": i.repriced.len(),
        "sessions_reauthorized": rar,
    })
}

/// Installs `text` as the new catalog on a blocking thread.
async fn install(b: &Backend, name: &'static str, text: String) -> Result<Installation, ApiError> {
    let catalogs = std::sync::Arc::clone(&b.catalogs);
    let now = Charging::now_from(b.epoch);
    tokio::task::spawn_blocking(move || catalogs.install(name, &text, now))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?
        .map_err(install_error)
}

/// `POST /v1/reload`: what SIGHUP does (configuration, dictionaries, catalog), answered with
/// what changed, or 422 naming what was refused (nothing changed then).
pub(super) async fn reload(State(state): State<HttpState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    match run_reload(b, "admin API").await? {
        Ok(report) => Ok(json_response(StatusCode::OK, report)),
        Err(ReloadError::Busy) => {
            Err(ApiError::new(StatusCode::CONFLICT, ReloadError::Busy.to_string(), Some("reload")))
        }
        Err(ReloadError::Catalog(InstallError::Refused(e))) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("catalog: {e}"),
            Some("charging.catalog"),
        )),
        Err(e @ (ReloadError::Config(_) | ReloadError::Dictionaries(_))) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string(), Some(e.field())))
        }
        Err(ReloadError::Catalog(e)) => Err(install_error(e)),
    }
}

/// Reloads on a blocking thread; once done, RAR to the sessions of repriced accounts. The
/// outer error: the reload task failed (a bug); the inner one: the reload was refused.
pub(crate) async fn run_reload(
    b: &Backend,
    why: &'static str,
) -> Result<Result<Value, ReloadError>, ApiError> {
    let Some(reloader) = b.reload.clone() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "this server has no reload", None));
    };
    let done = tokio::task::spawn_blocking(move || reloader.reload(why))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?;
    Ok(done.map(|report| report_json(b, &report)))
}

/// The reload's JSON answer; sends the RARs of a price change.
fn report_json(b: &Backend, r: &ReloadReport) -> Value {
    json!({
        "catalog": installation_json(b, &r.catalog),
        "dictionaries": { "version": r.versions.dictionaries, "changed": r.dictionaries_changed },
        "config": { "version": r.versions.config },
        "allowed_peers_changed": r.allowed_peers_changed,
        "log_level_changed": r.log_level_changed,
        "restart_required": r.restart_required,
    })
}

/// `GET /v1/catalog`: the catalog in force as TOML (the file format; `ETag` its version).
pub(super) async fn get(State(state): State<HttpState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let c = b.catalogs.live().current();
    let text = c.catalog.to_toml();
    Ok((
        [(header::CONTENT_TYPE, "application/toml".to_owned()), (header::ETAG, format!("\"{}\"", c.digest))],
        text,
    )
        .into_response())
}

/// `PUT /v1/catalog` with a catalog's TOML: installs it (price plans loaded). 422 names the
/// entry when it is invalid or may not replace the one in force.
pub(super) async fn put(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: super::TextBody,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let body = super::text(body)?;
    let done = install(b, "admin API", body).await?;
    tracing::info!(version = %done.digest, changed = !done.unchanged, "admin: catalog loaded");
    Ok(json_response(StatusCode::OK, installation_json(b, &done)))
}

fn edit_error(e: EditError) -> ApiError {
    let status = match e {
        EditError::NoCustomer(_) | EditError::NoAccount(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    ApiError::new(status, e.to_string(), Some(e.field()))
}

/// Makes `edit` on the catalog in force (journaled) on a blocking thread.
async fn edit(b: &Backend, edit: Edit) -> Result<Installation, ApiError> {
    let catalogs = std::sync::Arc::clone(&b.catalogs);
    let now = Charging::now_from(b.epoch);
    tokio::task::spawn_blocking(move || catalogs.edit(&edit, now))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?
        .map_err(install_error)
}

/// A JSON body, or the rejection as a JSON error naming `body` (400 syntax, 413 too large,
/// 415 without `Content-Type: application/json`).
type JsonBody = Result<axum::Json<Value>, axum::extract::rejection::JsonRejection>;

fn json_body(body: JsonBody) -> Result<Value, ApiError> {
    body.map(|axum::Json(v)| v).map_err(|e| ApiError::new(e.status(), e.body_text(), Some("body")))
}

fn customer_json(b: &Backend, id: &str) -> Option<Value> {
    let c = b.catalogs.live().current();
    let customer = c.customer(id)?;
    let accounts: Vec<usize> =
        c.catalog.accounts.iter().enumerate().filter(|(_, a)| a.customer == id).map(|(i, _)| i).collect();
    Some(json!({
        "id": customer.id,
        "name": customer.name,
        "email": customer.email,
        "address": customer.address,
        "plan": customer.plan,
        "overrides": !customer.overrides.is_empty(),
        "accounts": accounts,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CustomersQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/customers?after=&limit=`: customers in id order.
pub(super) async fn list_customers(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<CustomersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::bad_query(&e))?;
    let limit = super::page_size(q.limit, 1_000)?;
    let c = b.catalogs.live().current();
    let mut ids: Vec<&str> = c
        .catalog
        .customers
        .iter()
        .map(|c| c.id.as_str())
        .filter(|id| q.after.as_deref().is_none_or(|a| *id > a))
        .collect();
    ids.sort_unstable();
    let more = ids.len() > limit;
    ids.truncate(limit);
    let items: Vec<Value> = ids.iter().filter_map(|id| customer_json(b, id)).collect();
    let next = if more { ids.last().map(|s| (*s).to_owned()) } else { None };
    Ok(json_response(StatusCode::OK, json!({ "customers": items, "next_after": next })))
}

/// `GET /v1/customers/{id}`.
pub(super) async fn get_customer(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let v = customer_json(b, &id).ok_or_else(|| edit_error(EditError::NoCustomer(id)))?;
    Ok(json_response(StatusCode::OK, v))
}

/// `POST /v1/customers` with the catalog's customer keys (`id`, `name`, `email`, `address`,
/// `plan`, `overrides`): 201.
pub(super) async fn create_customer(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let v = json_body(body)?;
    let id = v.get("id").and_then(Value::as_str).unwrap_or_default().to_owned();
    if b.catalogs.live().current().customer(&id).is_some() {
        return Err(ApiError::new(StatusCode::CONFLICT, format!("customer {id:?} exists"), Some("id")));
    }
    let done = edit(b, Edit::AddCustomer { body: v }).await?;
    tracing::info!(customer = %id, version = %done.digest, "admin: customer created");
    Ok(json_response(StatusCode::CREATED, customer_body(b, &id, &done)))
}

/// `PATCH /v1/customers/{id}`: a JSON merge patch (RFC 7396) of the customer's keys. A new plan
/// or overrides reprice the customer's accounts: their open sessions get a RAR.
pub(super) async fn update_customer(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let v = json_body(body)?;
    let done = edit(b, Edit::UpdateCustomer { id: id.clone(), patch: v }).await?;
    tracing::info!(customer = %id, version = %done.digest, "admin: customer updated");
    Ok(json_response(StatusCode::OK, customer_body(b, &id, &done)))
}

/// The customer's JSON (as `GET /v1/customers/{id}`), plus the catalog change.
fn customer_body(b: &Backend, id: &str, done: &Installation) -> Value {
    let mut out = customer_json(b, id).unwrap_or_else(|| json!({ "id": id }));
    out["catalog"] = installation_json(b, done);
    out
}

/// The account's JSON (as `GET /v1/accounts/{ref}`), plus the catalog change.
fn account_body(b: &Backend, id: crate::ledger::AccountId, done: &Installation) -> Value {
    let mut out = match b.engine.ledger().view(id) {
        Some(v) => super::accounts::view_json(b, &v),
        None => json!({ "id": id.0 }),
    };
    out["catalog"] = installation_json(b, done);
    out
}

/// `POST /v1/accounts` with the catalog's account keys (`customer`, `subscription_ids`,
/// `funding`, `balance`, `credit_limit`, `card` / `iban` + `mandate`, gateway refs): 201 with
/// the new account (its number is its place in the catalog).
pub(super) async fn create_account(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let v = json_body(body)?;
    let done = edit(b, Edit::AddAccount { body: v }).await?;
    // From this change, not the catalog in force now: another edit may have followed.
    let id = crate::ledger::AccountId(u32::try_from(done.accounts - 1).expect("fewer than 2^32 accounts"));
    tracing::info!(account = id.0, version = %done.digest, "admin: account created");
    Ok(json_response(StatusCode::CREATED, account_body(b, id, &done)))
}

/// `PATCH /v1/accounts/{ref}`: a JSON merge patch of the account's catalog keys. Payment
/// details may change; opening values (balance, credit limit, status), customer, funding and
/// subscription ids are refused with 422 naming them (top-ups, adjustments, bar/unbar change a
/// running account).
pub(super) async fn update_account(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let id = account_of(b, &reference)?;
    let v = json_body(body)?;
    let done = edit(b, Edit::UpdateAccount { index: id.0 as usize, patch: v }).await?;
    tracing::info!(account = id.0, version = %done.digest, "admin: account updated");
    Ok(json_response(StatusCode::OK, account_body(b, id, &done)))
}

/// `POST /v1/accounts/{ref}/close`: closed for good — barred (the next CCR-I is 4010), an ASR
/// to each open session, never unbarred. Its balance, pending settlements and subscription ids
/// stay (an account is never removed: the journal refers to it by position).
pub(super) async fn close_account(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let id = account_of(b, &reference)?;
    let done = edit(b, Edit::CloseAccount { index: id.0 as usize }).await?;
    tracing::info!(account = id.0, version = %done.digest, "admin: account closed");
    let mut body = account_body(b, id, &done);
    body["notified"] = Value::Array(notify::after_change(b, id, Trigger::Barred).await);
    Ok(json_response(StatusCode::OK, body))
}

/// Whether the catalog in force says `id` is closed (unbar refuses it).
pub(super) fn is_closed(b: &Backend, id: crate::ledger::AccountId) -> bool {
    b.catalogs.live().current().catalog.accounts.get(id.0 as usize).is_some_and(|a| a.closed)
}
