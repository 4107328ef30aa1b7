//! Server-initiated requests after admin changes (issue 7): once a change is durable, the
//! clients holding the account's sessions are told.
//!
//! - Credit added (top-up, credit adjustment) or the account unbarred: RAR (RFC 4006 §5.5)
//!   to each open session whose last decision on some rating group was 4012
//!   CREDIT_LIMIT_REACHED or carried a Final-Unit-Indication (or whose last command-level
//!   answer was 4012), so the client asks again now rather than when its final units run out.
//! - Barred: ASR (RFC 6733 §8.5) to every open session of the account.
//!
//! The engine stays synchronous and sans-IO: it is only read (`Engine::sessions`) and, for an
//! answer 5002 DIAMETER_UNKNOWN_SESSION_ID, told to forget the session (journaled like the
//! sweep's "session gone"). Requests to different sessions go out concurrently; each is bounded
//! (`net::outgoing`). The outcome is reported in the admin response's `notified`.

use std::sync::Arc;

use serde_json::{json, Value};

use super::Backend;
use crate::cc::{Engine, NoJournal, SessionFilter, SessionState, SessionView};
use crate::diameter::ResultCode;
use crate::durable::ChargingJournal;
use crate::ledger::AccountId;
use crate::net::charging::Charging;
use crate::net::{SendError, ServerAnswer, ServerCommand, Shared};

/// Sessions of one account notified after one change at most (a list scans every shard).
const NOTIFY_SESSIONS_MAX: usize = 1_000;

/// What a change calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Trigger {
    /// Credit added or unbarred: RAR to sessions held back for lack of credit.
    Credit,
    /// Barred: ASR to every open session.
    Barred,
}

/// Whether a session's last decisions show it held back for lack of credit.
fn held_back(v: &SessionView) -> bool {
    let limit = ResultCode::CREDIT_LIMIT_REACHED;
    v.rating_groups.iter().any(|g| g.final_unit || g.last_decision.is_some_and(|d| d.result_code == limit))
        || v.answers.last().is_some_and(|a| a.result_code == limit)
}

/// Sends what `trigger` calls for to the account's open sessions; one JSON entry per session.
pub(super) async fn after_change(b: &Backend, account: AccountId, trigger: Trigger) -> Vec<Value> {
    let Some(net) = &b.net else { return Vec::new() };
    let engine = Arc::clone(&b.engine);
    let now = Charging::now_from(b.epoch);
    let filter = SessionFilter::Account(account);
    let Ok(views) =
        tokio::task::spawn_blocking(move || engine.sessions(now, filter, None, NOTIFY_SESSIONS_MAX)).await
    else {
        return Vec::new();
    };
    let (command, wanted): (ServerCommand, fn(&SessionView) -> bool) = match trigger {
        Trigger::Credit => (ServerCommand::ReAuth, held_back),
        Trigger::Barred => (ServerCommand::AbortSession, |_| true),
    };
    let mut tasks = tokio::task::JoinSet::new();
    for v in views.into_iter().filter(|v| v.state == SessionState::Open && wanted(v)) {
        let (Some(session_id), Some(host)) = (v.session_id, v.origin_host) else { continue };
        let (net, engine, journal, epoch) =
            (Arc::clone(net), Arc::clone(&b.engine), b.journal.clone(), b.epoch);
        tasks.spawn(async move {
            let outcome = send(&net, &engine, journal.as_deref(), epoch, &host, command, &session_id).await;
            entry(&session_id, command, &outcome)
        });
    }
    let mut notified = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(entry) = done {
            notified.push(entry);
        }
    }
    notified.sort_by(|a, b| a["session_id"].as_str().cmp(&b["session_id"].as_str()));
    notified
}

/// One `notified` entry: `result_code`, or `error` naming the peer.
pub(super) fn entry(
    session_id: &str,
    command: ServerCommand,
    outcome: &Result<ServerAnswer, SendError>,
) -> Value {
    match outcome {
        Ok(a) => {
            json!({ "session_id": session_id, "command": command.name(), "peer": a.peer, "result_code": a.result_code })
        }
        Err(e) => {
            json!({ "session_id": session_id, "command": command.name(), "peer": e.peer(), "error": e.to_string() })
        }
    }
}

/// Sends `command` for one session and acts on the answer: 2001/2002 are fine; 5002 (the
/// client does not know the session) forgets it; anything else is logged (and counted by
/// `net::metrics`).
pub(super) async fn send(
    net: &Shared,
    engine: &Engine,
    journal: Option<&ChargingJournal>,
    epoch: tokio::time::Instant,
    host: &str,
    command: ServerCommand,
    session_id: &str,
) -> Result<ServerAnswer, SendError> {
    let outcome = net.send_request(host, command, session_id).await;
    match &outcome {
        Ok(a) => match a.result_code.map(ResultCode) {
            Some(ResultCode::SUCCESS | ResultCode::LIMITED_SUCCESS) => {
                tracing::info!(peer = host, session_id, command = command.name(), result = ?a.result_code, "answered");
            }
            Some(ResultCode::UNKNOWN_SESSION_ID) => {
                let now = Charging::now_from(epoch);
                let forgotten = match journal {
                    Some(j) => {
                        engine.forget_session(now, session_id, &mut crate::durable::Sink::new(j, None))
                    }
                    None => engine.forget_session(now, session_id, &mut NoJournal),
                };
                tracing::info!(
                    peer = host,
                    session_id,
                    command = command.name(),
                    forgotten,
                    "client does not know the session (5002): forgotten"
                );
            }
            other => {
                tracing::warn!(peer = host, session_id, command = command.name(), result = ?other.map(|r| r.0), "unexpected answer");
            }
        },
        Err(e) => tracing::warn!(peer = host, session_id, command = command.name(), error = %e, "no answer"),
    }
    outcome
}

/// Sessions told about one price change at most, and RARs in flight at once.
const REPRICE_SESSIONS_MAX: usize = 100_000;
const REPRICE_IN_FLIGHT_MAX: usize = 64;

/// After a catalog change repriced `accounts`: a RAR to each of their open sessions, so the
/// clients re-authorise and get grants priced by the new plan (issue 7; RFC 4006 §5.5). Sent in
/// the background, at most 64 at a time (a plan shared by a million subscribers must not open a
/// million requests at once); returns how many were queued. The outcome is logged and counted
/// by `net::metrics` per answer.
pub(super) fn after_reprice(b: &Backend, accounts: &[u32]) -> usize {
    let Some(net) = &b.net else { return 0 };
    if accounts.is_empty() {
        return 0;
    }
    let set: std::collections::HashSet<u32> = accounts.iter().copied().collect();
    let sessions = b.engine.open_sessions_of(|a| set.contains(&a.0), REPRICE_SESSIONS_MAX);
    let queued = sessions.len();
    let (net, engine, journal, epoch) = (Arc::clone(net), Arc::clone(&b.engine), b.journal.clone(), b.epoch);
    tokio::spawn(async move {
        let limit = Arc::new(tokio::sync::Semaphore::new(REPRICE_IN_FLIGHT_MAX));
        let mut tasks = tokio::task::JoinSet::new();
        for (session_id, host) in sessions {
            let Ok(permit) = Arc::clone(&limit).acquire_owned().await else { break };
            let (net, engine, journal) = (Arc::clone(&net), Arc::clone(&engine), journal.clone());
            tasks.spawn(async move {
                let outcome =
                    send(&net, &engine, journal.as_deref(), epoch, &host, ServerCommand::ReAuth, &session_id)
                        .await;
                drop(permit);
                outcome.is_ok()
            });
        }
        let (mut answered, mut unanswered) = (0usize, 0usize);
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(true) => answered += 1,
                _ => unanswered += 1,
            }
        }
        tracing::info!(
            answered,
            unanswered,
            "price change: RAR sent to the open sessions of repriced accounts"
        );
    });
    queued
}
