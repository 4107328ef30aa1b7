//! The admin API's sessions (issue 7): list an account's (or every) credit-control session
//! and inspect one by its Session-Id — its client (Origin-Host), state, and per rating group
//! the last grant, its hold, the usage so far and the last decision's Result-Code; and abort
//! one (ASR to the session's client, `POST /v1/sessions/{session_id}/abort`).
//!
//! A session ended by CCR-T is still shown, `"state": "closed"`, for the engine's
//! `closed_retention_ms` (default 10 minutes: retransmissions and late usage are answered
//! meanwhile); after that it is forgotten and `GET /v1/sessions/{session_id}` is 404.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::accounts::{account_of, admin, money};
use super::{notify, ApiError, Backend, HttpState};
use crate::cc::{AnswerView, Now, SessionCursor, SessionFilter, SessionState, SessionView};
use crate::net::charging::Charging;
use crate::net::{SendError, ServerCommand};
use crate::rating::UnitKind;

/// Sessions listed per page at most.
const SESSIONS_PAGE_MAX: usize = 1_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    /// An account number or subscription id (`e164:…`), as in `/v1/accounts/{account}`.
    account: Option<String>,
    /// The `next_after` of the previous page.
    after: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/sessions?account=&after=&limit=`: sessions in cursor order (their keyed hash:
/// arbitrary but stable, so pages do not repeat a session).
pub(super) async fn list(
    State(state): State<HttpState>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let Query(q) = query.map_err(|e| ApiError::bad_query(&e))?;
    let limit = super::page_size(q.limit, SESSIONS_PAGE_MAX)?;
    let after = match q.after.as_deref() {
        None => None,
        Some(a) => Some(a.parse::<SessionCursor>().map_err(|_| {
            let message = format!("not a session cursor (32 hex digits, a page's next_after): {a:?}");
            ApiError::new(StatusCode::BAD_REQUEST, message, Some("after"))
        })?),
    };
    let filter = match q.account.as_deref() {
        None => SessionFilter::All,
        Some(reference) => SessionFilter::Account(account_of(b, reference)?),
    };
    let engine = std::sync::Arc::clone(&b.engine);
    let now = Charging::now_from(b.epoch);
    // A scan of every shard: off the async workers.
    let mut views = tokio::task::spawn_blocking(move || engine.sessions(now, filter, after, limit + 1))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None))?;
    let more = views.len() > limit;
    views.truncate(limit);
    let next = more.then(|| views.last().map(|v| v.cursor.to_string())).flatten();
    let sessions: Vec<Value> = views.iter().map(view_json).collect();
    Ok(Json(json!({ "sessions": sessions, "next_after": next })).into_response())
}

/// The session's view, or a 404 naming `session_id`.
fn session_view(b: &Backend, now: Now, session_id: &str) -> Result<SessionView, ApiError> {
    b.engine.session(now, session_id).ok_or_else(|| {
        let message = format!("no session {session_id:?} (never opened, or ended and forgotten)");
        ApiError::new(StatusCode::NOT_FOUND, message, Some("session_id"))
    })
}

/// `GET /v1/sessions/{session_id}` (the path segment percent-decoded: Session-Ids hold `;`).
pub(super) async fn get(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(session_id): Path<String>,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let now = Charging::now_from(b.epoch);
    let view = session_view(b, now, &session_id)?;
    Ok(Json(view_json(&view)).into_response())
}

/// `POST /v1/sessions/{session_id}/abort`: ASR to the client holding the session (RFC 6733
/// §8.5), answered with the ASA's Result-Code; 5002 from the client forgets the session. 404
/// for an unknown session, 409 for one not open or without a known client, 502 when the peer
/// has no open connection (or lost it), 504 when it did not answer in time.
pub(super) async fn abort(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Path(session_id): Path<String>,
) -> Result<Response, ApiError> {
    let b = admin(&state, &headers)?;
    let now = Charging::now_from(b.epoch);
    let view = session_view(b, now, &session_id)?;
    if view.state != SessionState::Open {
        let message = format!("session {session_id:?} is {}, not open", view.state.as_str());
        return Err(ApiError::new(StatusCode::CONFLICT, message, Some("session_id")));
    }
    let (Some(host), Some(net)) = (view.origin_host.as_deref(), b.net.as_ref()) else {
        let message = format!("session {session_id:?} has no known client to send ASR to");
        return Err(ApiError::new(StatusCode::CONFLICT, message, Some("session_id")));
    };
    let command = ServerCommand::AbortSession;
    let outcome =
        notify::send(net, &b.engine, b.journal.as_deref(), b.epoch, host, command, &session_id).await;
    match outcome {
        Ok(a) => {
            let forgotten = a.result_code == Some(5002);
            tracing::info!(session_id, peer = host, result = ?a.result_code, "admin: session aborted");
            Ok(Json(json!({
                "session_id": session_id,
                "command": command.name(),
                "peer": a.peer,
                "result_code": a.result_code,
                "forgotten": forgotten,
            }))
            .into_response())
        }
        Err(e) => {
            let status = match e {
                SendError::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
                SendError::NotConnected { .. } | SendError::Closed { .. } => StatusCode::BAD_GATEWAY,
            };
            Err(ApiError::new(status, e.to_string(), None).with_peer(e.peer()))
        }
    }
}

fn unit_name(unit: UnitKind) -> &'static str {
    match unit {
        UnitKind::Time => "seconds",
        UnitKind::Octets => "octets",
        UnitKind::Events => "events",
    }
}

fn answer_json(a: &AnswerView) -> Value {
    json!({ "request_number": a.request_number, "result_code": a.result_code.0 })
}

fn view_json(v: &SessionView) -> Value {
    let rating_groups: Vec<Value> = v
        .rating_groups
        .iter()
        .map(|g| {
            json!({
                "rating_group": g.rating_group,
                "service": g.service,
                "unit": unit_name(g.unit),
                "granted_units": g.granted_units,
                "open": g.open,
                "from_bundle": g.from_bundle,
                "reserved": money(g.reserved.0, v.currency),
                "validity_deadline_unix_ms": g.validity_deadline_unix_ms,
                "used_units": g.used_units,
                "debited": money(g.debited.0, v.currency),
                "final_unit": g.final_unit,
                "last_decision": g.last_decision.as_ref().map(answer_json),
                "why": g.why,
            })
        })
        .collect();
    json!({
        "session_id": v.session_id,
        "origin_host": v.origin_host,
        "cursor": v.cursor.to_string(),
        "account": v.account.0,
        "currency": v.currency.code,
        "state": v.state.as_str(),
        "request_number": v.request_number,
        "deadline_unix_ms": v.deadline_unix_ms,
        "answers": v.answers.iter().map(answer_json).collect::<Vec<_>>(),
        "rating_groups": rating_groups,
    })
}
