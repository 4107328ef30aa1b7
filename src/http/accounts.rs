//! The admin API's accounts and plans (issue 7): read an account's balance, bundles and
//! status; top up, adjust, bar and unbar — each journaled like a CCR's change and answered
//! once durable; list plans and validate a catalog before loading it.
//!
//! Idempotency: every change carries the client's `key` (1–128 printable characters). The
//! ledger remembers keys, so a retry of the same request returns the first result and changes
//! nothing, and a different request under a used key is refused 409 (`field: "key"`). Bar and
//! unbar are idempotent by nature.

use std::str::FromStr;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};

use super::notify::{self, Trigger};
use super::{authorize, ApiError, Backend, HttpState};
use crate::catalog::{AccountStatus, Catalog, Funding, SubscriptionId};
use crate::cc::AdminOp;
use crate::ledger::{AccountId, AccountView, Reject};
use crate::rating::{Currency, MoneyMinor};
use crate::settlement::worker::StepLog;

/// Accounts listed per page at most.
const ACCOUNTS_PAGE_MAX: u32 = 1_000;
const KEY_MAX_BYTES: usize = 128;

/// The admin API's gate for a handler: the bearer token, then the backend (503 while the
/// journal is being recovered).
pub(super) fn admin<'s>(state: &'s HttpState, headers: &HeaderMap) -> Result<&'s Backend, ApiError> {
    authorize(state, headers)?;
    backend(state)
}

pub(super) fn backend(state: &HttpState) -> Result<&Backend, ApiError> {
    state.backend.get().ok_or_else(|| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not ready: the journal is being recovered", None)
    })
}

/// `{ref}`: the ledger's account number, or a subscription id as the catalog writes it
/// (`e164:491700000001`).
pub(super) fn account_of(backend: &Backend, reference: &str) -> Result<AccountId, ApiError> {
    let not_found =
        || ApiError::new(StatusCode::NOT_FOUND, format!("no account {reference}"), Some("account"));
    let id = if !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_digit()) {
        AccountId(reference.parse().map_err(|_| not_found())?)
    } else {
        let sub = SubscriptionId::parse(reference).map_err(|e| {
            let message =
                format!("not an account number or subscription id (e164:…, imsi:…): {reference:?}: {e}");
            ApiError::new(StatusCode::BAD_REQUEST, message, Some("account"))
        })?;
        backend.engine.ledger().lookup(sub.kind, &sub.data).ok_or_else(not_found)?
    };
    if backend.engine.ledger().view(id).is_none() {
        return Err(not_found());
    }
    Ok(id)
}

/// Minor units as the currency writes them (`1250` EUR → `"12.50"`).
pub(super) fn money(minor: i64, currency: Currency) -> String {
    Decimal::new(minor, u32::from(currency.exponent)).to_string()
}

pub(super) fn view_json(backend: &Backend, v: &AccountView) -> Value {
    let catalog = backend.catalogs.live().current();
    let spec = catalog.catalog.accounts.get(v.id.0 as usize);
    let subscriptions: Vec<String> =
        spec.map(|s| s.subscription_ids.iter().map(ToString::to_string).collect()).unwrap_or_default();
    json!({
        "id": v.id.0,
        "customer": v.customer,
        "subscription_ids": subscriptions,
        "currency": v.currency.code,
        "funding": match v.funding { Funding::Prepaid => "prepaid", Funding::OnFile => "on_file" },
        "status": match v.status {
            _ if spec.is_some_and(|s| s.closed) => "closed",
            AccountStatus::Active => "active",
            AccountStatus::Barred => "barred",
        },
        "balance": money(v.balance.0, v.currency),
        "credit_limit": money(v.credit_limit.0, v.currency),
        "reserved": money(v.reserved.0, v.currency),
        "available": money(v.available.0, v.currency),
        "reservations": v.reservations,
        "bundles": v.bundles.iter().map(|b| json!({
            "service": b.service,
            "remaining": b.remaining,
            "reserved": b.reserved,
        })).collect::<Vec<_>>(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// Accounts with a number above this one.
    after: Option<u32>,
    limit: Option<u32>,
}

/// `GET /v1/accounts?after=&limit=`: accounts in number order.
pub(super) async fn list(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::bad_query(&e))?;
    let limit = super::page_size(q.limit.map(|l| l as usize), ACCOUNTS_PAGE_MAX as usize)? as u32;
    let count = b.engine.ledger().stats().accounts;
    let first = q.after.map_or(0, |a| a.saturating_add(1));
    let last = first.saturating_add(limit).min(count);
    let accounts: Vec<Value> = (first..last)
        .filter_map(|id| b.engine.ledger().view(AccountId(id)))
        .map(|v| view_json(b, &v))
        .collect();
    let next = (last < count).then(|| last - 1);
    Ok(Json(json!({ "accounts": accounts, "next_after": next })).into_response())
}

/// `GET /v1/accounts/{ref}`.
pub(super) async fn get(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let id = account_of(b, &reference)?;
    let view = b.engine.ledger().view(id).expect("checked by account_of");
    Ok(Json(view_json(b, &view)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ChangeBody {
    /// A decimal in the account's currency: `"10.00"`. Top-ups: above 0; adjustments: not 0,
    /// negative debits.
    amount: String,
    /// The client's idempotency key.
    key: String,
    /// Free text for the log (adjustments).
    #[serde(default)]
    reason: Option<String>,
}

fn parse_body(body: Result<Json<ChangeBody>, JsonRejection>) -> Result<ChangeBody, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text(), Some("body")))?;
    let key_ok = !body.key.is_empty()
        && body.key.len() <= KEY_MAX_BYTES
        && body.key.bytes().all(|b| b.is_ascii_graphic());
    if !key_ok {
        let message = format!("key must be 1..={KEY_MAX_BYTES} printable ASCII characters without spaces");
        return Err(ApiError::new(StatusCode::BAD_REQUEST, message, Some("key")));
    }
    if body.reason.as_ref().is_some_and(|r| r.len() > 500) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "reason: at most 500 bytes", Some("reason")));
    }
    Ok(body)
}

/// `amount` in minor units of `currency`, refusing more decimals than it has.
fn minor_units(amount: &str, currency: Currency) -> Result<i64, ApiError> {
    let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, why, Some("amount"));
    let d = Decimal::from_str(amount.trim()).map_err(|_| bad(format!("not a decimal amount: {amount:?}")))?;
    if d.scale() > u32::from(currency.exponent) {
        return Err(bad(format!(
            "{amount} has more decimals than {} ({})",
            currency.code, currency.exponent
        )));
    }
    let minor = d * Decimal::from(10i64.pow(u32::from(currency.exponent)));
    i64::try_from(minor.trunc().mantissa() / 10i128.pow(minor.trunc().scale()))
        .map_err(|_| bad(format!("{amount} is out of range")))
}

/// The ledger key of a client's idempotency key: SipHash-1-3 of it under fixed keys (the
/// account and kind are not mixed in, so a key reused for another account or another kind of
/// change is recognised as reused, 409).
fn ledger_key(key: &str) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(0x6779_726f_6164_6d69, 0x6e2d_6b65_7973_2d31);
    h.write(key.as_bytes());
    h.finish()
}

fn reject(r: Reject) -> ApiError {
    match r {
        Reject::AccountNotFound => ApiError::new(StatusCode::NOT_FOUND, "no such account", Some("account")),
        Reject::AmountInvalid => {
            ApiError::new(StatusCode::BAD_REQUEST, "amount out of range for the ledger", Some("amount"))
        }
        Reject::KeyReused => {
            ApiError::new(StatusCode::CONFLICT, "the key was used for a different change", Some("key"))
        }
        other => ApiError::new(StatusCode::CONFLICT, format!("refused by the ledger: {other:?}"), None),
    }
}

/// Applies `op`, journals it and answers once it is durable (invariant 1, as for a CCR); then
/// tells the clients of the account's sessions what `trigger` calls for (RAR/ASR, see
/// `notify`) and lists them in `notified`.
async fn apply(
    b: &Backend,
    op: AdminOp,
    id: AccountId,
    what: &str,
    trigger: Option<Trigger>,
) -> Result<Response, ApiError> {
    let mut record = Vec::new();
    b.engine.admin(&op, &mut record).map_err(reject)?;
    if let Some(journal) = &b.journal {
        journal.append_step(&record).await.map_err(|e| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("the journal failed: {}", e.0), None)
        })?;
    }
    let view = b.engine.ledger().view(id).ok_or_else(|| reject(Reject::AccountNotFound))?;
    tracing::info!(account = id.0, ?op, "admin: {what}");
    let mut body = view_json(b, &view);
    if let Some(trigger) = trigger {
        body["notified"] = Value::Array(notify::after_change(b, id, trigger).await);
    }
    Ok(Json(body).into_response())
}

/// A change's account, amount in minor units of its currency, and body, checked.
fn change(
    b: &Backend,
    reference: &str,
    body: Result<Json<ChangeBody>, JsonRejection>,
) -> Result<(AccountId, i64, ChangeBody), ApiError> {
    let body = parse_body(body)?;
    let id = account_of(b, reference)?;
    let currency = b.engine.ledger().view(id).ok_or_else(|| reject(Reject::AccountNotFound))?.currency;
    let amount = minor_units(&body.amount, currency)?;
    Ok((id, amount, body))
}

/// `POST /v1/accounts/{ref}/top-ups` `{"amount": "10.00", "key": "…"}`.
pub(super) async fn top_up(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
    body: Result<Json<ChangeBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let (id, amount, body) = change(b, &reference, body)?;
    if amount <= 0 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "a top-up must be above 0", Some("amount")));
    }
    let op = AdminOp::TopUp { account: id, key: ledger_key(&body.key), amount: MoneyMinor(amount) };
    apply(b, op, id, "top-up", Some(Trigger::Credit)).await
}

/// `POST /v1/accounts/{ref}/adjustments` `{"amount": "-2.50", "key": "…", "reason": "…"}`:
/// a credit, or a debit allowed into overdraft.
pub(super) async fn adjust(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
    body: Result<Json<ChangeBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let (id, amount, body) = change(b, &reference, body)?;
    let key = ledger_key(&body.key);
    let op = match amount {
        0 => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "an adjustment of 0 changes nothing",
                Some("amount"),
            ))
        }
        a if a > 0 => AdminOp::TopUp { account: id, key, amount: MoneyMinor(a) },
        a => AdminOp::Debit { account: id, key, amount: MoneyMinor(-a) },
    };
    let reason = body.reason.unwrap_or_default();
    let trigger = matches!(op, AdminOp::TopUp { .. }).then_some(Trigger::Credit);
    apply(b, op, id, &format!("adjustment ({reason})"), trigger).await
}

/// `POST /v1/accounts/{ref}/bar` and `/unbar`.
async fn set_status(
    state: HttpState,
    headers: HeaderMap,
    reference: String,
    status: AccountStatus,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let id = account_of(b, &reference)?;
    if status == AccountStatus::Active && super::catalog::is_closed(b, id) {
        let message = format!("account {} is closed: a closed account is never unbarred", id.0);
        return Err(ApiError::new(StatusCode::CONFLICT, message, Some("account")));
    }
    let (what, trigger) = if status == AccountStatus::Barred {
        ("barred", Trigger::Barred)
    } else {
        ("unbarred", Trigger::Credit)
    };
    apply(b, AdminOp::Status { account: id, status }, id, what, Some(trigger)).await
}

pub(super) async fn bar(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    set_status(state, headers, reference, AccountStatus::Barred).await
}

pub(super) async fn unbar(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    set_status(state, headers, reference, AccountStatus::Active).await
}

/// `GET /v1/plans`: the catalog's plans and their services.
pub(super) async fn plans(State(state): State<HttpState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let catalog = b.catalogs.live().current();
    let plans: Vec<Value> = catalog
        .catalog
        .plans
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "name": p.name,
                "currency": p.currency.code,
                "vat_rate": p.vat_rate.to_string(),
                "services": p.services.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
                "bundles": p.bundles.len(),
            })
        })
        .collect();
    Ok(Json(json!({ "plans": plans, "catalog_digest": catalog.digest })).into_response())
}

/// `POST /v1/plans/validate` with a catalog's TOML as the body: whether gyro would load it,
/// and if not the first problem, naming the field. Nothing is loaded.
pub(super) async fn validate(
    State(state): State<HttpState>,
    headers: HeaderMap,
    body: super::TextBody,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = super::text(body)?;
    match Catalog::from_toml("request body", &body) {
        Ok(c) => {
            // Whether it may also replace the catalog in force (`PUT /v1/catalog`, a reload).
            let change = state.backend.get().map(|b| {
                let now = b.catalogs.live().current();
                crate::catalog::check_change("request body", &now.catalog, &now.packages, &c, &c.packages())
            });
            Ok(Json(json!({
                "valid": true,
                "plans": c.plans.len(),
                "customers": c.customers.len(),
                "accounts": c.accounts.len(),
                "digest": crate::durable::catalog_digest(&body),
                "change_allowed": change.as_ref().map(Result::is_ok),
                "change_error": change.and_then(Result::err).map(|e| e.to_string()),
            }))
            .into_response())
        }
        Err(e) => Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string(), Some("catalog"))),
    }
}
