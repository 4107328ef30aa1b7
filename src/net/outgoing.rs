//! Requests the server sends to a client peer (issue 7): RAR (RFC 4006 §5.5) and ASR
//! (RFC 6733 §8.5), addressed by the Origin-Host of the client that opened the session.
//!
//! Each connection whose CER passed is registered in `Shared` under its peer's Origin-Host
//! with the sender of a small queue its task reads beside the socket. The task writes the
//! request with a fresh Hop-by-Hop id from the peer layer's counter (the one DWR and DPR use)
//! and keeps Hop-by-Hop → waiter; an answer (R clear) with such an id resolves the waiter
//! instead of going to the peer layer. Answers to anything else (DWA, DPA, unknown ids) go to
//! the peer layer as before.
//!
//! Bounded: the answer is awaited `SERVER_REQUEST_TIMEOUT_MS`; on a timeout or a connection
//! that closed meanwhile the request is sent once more, with the T flag and the same
//! End-to-End id (RFC 6733 §5.5.4), on another open connection to the same peer, if it has
//! one. Then the caller gets an error naming the peer.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::Shared;
use crate::diameter::answer::LocalIdentity;
use crate::diameter::encode::{spec, AvpSpec};
use crate::diameter::{ApplicationId, AvpCode, CommandCode, CommandFlags, Encoder, MessageRef};
use crate::limits::{SERVER_REQUESTS_QUEUED_MAX, SERVER_REQUEST_TIMEOUT_MS};

/// RFC 6733 §8.12 Re-Auth-Request-Type.
const RE_AUTH_REQUEST_TYPE: AvpSpec = AvpSpec::mandatory(285);
/// RFC 4006 §5.5: the server asks the client only to re-authorize (a CCR-U), not to
/// re-authenticate the user.
const AUTHORIZE_ONLY: u32 = 0;

/// What the server asks of the client holding a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCommand {
    /// RAR: report usage and ask again (a CCR-U), e.g. after a top-up (RFC 4006 §5.5).
    ReAuth,
    /// ASR: end the session (RFC 6733 §8.5), e.g. the account was barred.
    AbortSession,
}

impl ServerCommand {
    pub fn code(self) -> CommandCode {
        match self {
            Self::ReAuth => CommandCode::RE_AUTH,
            Self::AbortSession => CommandCode::ABORT_SESSION,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::ReAuth => "RAR",
            Self::AbortSession => "ASR",
        }
    }
}

/// A request for one session, as queued to a connection's task.
pub(super) struct Outgoing {
    pub command: ServerCommand,
    pub session_id: String,
    pub end_to_end: u32,
    /// RFC 6733 §5.5.4: set on the second attempt.
    pub retransmit: bool,
    pub reply: oneshot::Sender<Bytes>,
}

/// Writes the request: RAR and ASR carry the same mandatory AVPs apart from
/// Re-Auth-Request-Type (dictionaries/base.xml, commands 258 and 274). Destination-Host and
/// -Realm are the peer's own, from its CER: the request goes to the client that holds the
/// session, over the link it opened.
pub(super) fn encode(
    out: &mut BytesMut,
    o: &Outgoing,
    local: &LocalIdentity,
    peer_host: &str,
    peer_realm: &str,
    hop_by_hop: u32,
) {
    let mut flags = CommandFlags::REQUEST | CommandFlags::PROXIABLE;
    if o.retransmit {
        flags |= CommandFlags::RETRANSMIT;
    }
    let mut e = Encoder::new(
        out,
        CommandFlags(flags),
        o.command.code(),
        ApplicationId::CREDIT_CONTROL,
        hop_by_hop,
        o.end_to_end,
    );
    // RFC 6733 §8.8: Session-Id first.
    e.str(spec::SESSION_ID, &o.session_id);
    e.str(spec::ORIGIN_HOST, &local.origin_host);
    e.str(spec::ORIGIN_REALM, &local.origin_realm);
    e.str(spec::DESTINATION_REALM, peer_realm);
    e.str(spec::DESTINATION_HOST, peer_host);
    e.u32(spec::AUTH_APPLICATION_ID, ApplicationId::CREDIT_CONTROL.0);
    if o.command == ServerCommand::ReAuth {
        e.u32(RE_AUTH_REQUEST_TYPE, AUTHORIZE_ONLY);
    }
    e.u32(spec::ORIGIN_STATE_ID, local.origin_state_id);
    e.finish();
}

/// The answer to a server-initiated request.
#[derive(Clone, Debug)]
pub struct ServerAnswer {
    /// The Result-Code, if the answer had one.
    pub result_code: Option<u32>,
    /// The Origin-Host that answered.
    pub peer: String,
    /// Whether it took the second attempt.
    pub retransmitted: bool,
}

/// Why a server-initiated request got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendError {
    /// No open connection from this Origin-Host.
    NotConnected { peer: String },
    /// No answer within the timeout, on either attempt.
    TimedOut { peer: String },
    /// The connection closed before the answer, and there was no other to retry on.
    Closed { peer: String },
}

impl SendError {
    pub fn peer(&self) -> &str {
        match self {
            Self::NotConnected { peer } | Self::TimedOut { peer } | Self::Closed { peer } => peer,
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotConnected { peer } => write!(f, "peer {peer} has no open connection"),
            Self::TimedOut { peer } => {
                write!(f, "peer {peer} did not answer within {SERVER_REQUEST_TIMEOUT_MS} ms (sent twice if it could be)")
            }
            Self::Closed { peer } => write!(f, "the connection to peer {peer} closed before it answered"),
        }
    }
}

impl std::error::Error for SendError {}

/// One open connection: its number and the sender of its queue.
type Link = (u64, mpsc::Sender<Outgoing>);

/// Open connections by their peer's Origin-Host (lower case: DiameterIdentity is compared
/// case-insensitively, as DNS names are).
#[derive(Default)]
pub(super) struct Registry {
    peers: Mutex<HashMap<String, Vec<Link>>>,
}

impl Registry {
    /// Registers connection `id` under `host` unless `host` already has `max` open connections
    /// (`diameter.connections_per_peer_max`); returns whether it did. Checked and registered
    /// under one lock, so concurrent CERs from one host never exceed `max` together.
    pub(super) fn try_register(&self, host: &str, id: u64, tx: mpsc::Sender<Outgoing>, max: usize) -> bool {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let conns = peers.entry(host.to_ascii_lowercase()).or_default();
        if conns.len() >= max {
            // The entry is never left empty: a refused host has `max` ≥ 1 links already.
            return false;
        }
        conns.push((id, tx));
        true
    }

    pub(super) fn deregister(&self, host: &str, id: u64) {
        let mut peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = host.to_ascii_lowercase();
        if let Some(conns) = peers.get_mut(&key) {
            conns.retain(|(c, _)| *c != id);
            if conns.is_empty() {
                peers.remove(&key);
            }
        }
    }

    /// A connection to `host` other than `except`: the first registered (the oldest link).
    fn pick(&self, host: &str, except: Option<u64>) -> Option<Link> {
        let peers = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let conns = peers.get(&host.to_ascii_lowercase())?;
        conns.iter().find(|(c, _)| Some(*c) != except).map(|(c, tx)| (*c, tx.clone()))
    }
}

/// The queue a connection's task reads its outgoing requests from.
pub(super) fn queue() -> (mpsc::Sender<Outgoing>, mpsc::Receiver<Outgoing>) {
    mpsc::channel(SERVER_REQUESTS_QUEUED_MAX)
}

/// Hop-by-Hop → waiter, per connection. Waiters that gave up (timed out) are dropped when the
/// next request is sent, so the map stays as small as the requests in flight.
#[derive(Default)]
pub(super) struct Pending {
    waiters: HashMap<u32, oneshot::Sender<Bytes>>,
}

impl Pending {
    pub(super) fn insert(&mut self, hop_by_hop: u32, reply: oneshot::Sender<Bytes>) {
        self.waiters.retain(|_, w| !w.is_closed());
        self.waiters.insert(hop_by_hop, reply);
    }

    /// Takes `frame` if it answers one of our requests; returns whether it did.
    pub(super) fn resolve(&mut self, msg: &MessageRef<'_>, frame: &Bytes) -> bool {
        if msg.header.flags.is_request() {
            return false;
        }
        match self.waiters.remove(&msg.header.hop_by_hop) {
            Some(w) => {
                let _ = w.send(frame.clone());
                true
            }
            None => false,
        }
    }
}

impl Shared {
    /// Sends `command` for `session_id` to the peer `host` and waits for its answer (bounded;
    /// one retransmission on another connection, see the module's comment).
    pub async fn send_request(
        &self,
        host: &str,
        command: ServerCommand,
        session_id: &str,
    ) -> Result<ServerAnswer, SendError> {
        let end_to_end = self.next_seed() as u32;
        self.metrics.server_request_sent(command);
        let mut tried = None;
        let mut last = SendError::NotConnected { peer: host.to_owned() };
        for attempt in 0..2 {
            let Some((id, tx)) = self.outgoing.pick(host, tried) else { break };
            tried = Some(id);
            let (reply, answer) = oneshot::channel();
            let o = Outgoing {
                command,
                session_id: session_id.to_owned(),
                end_to_end,
                retransmit: attempt > 0,
                reply,
            };
            if tx.try_send(o).is_err() {
                last = SendError::Closed { peer: host.to_owned() };
                continue;
            }
            match tokio::time::timeout(Duration::from_millis(SERVER_REQUEST_TIMEOUT_MS), answer).await {
                Ok(Ok(frame)) => {
                    let result_code = MessageRef::parse(&frame).and_then(|m| m.u32(AvpCode::RESULT_CODE));
                    self.metrics.server_answer(command, result_code);
                    return Ok(ServerAnswer {
                        result_code,
                        peer: host.to_owned(),
                        retransmitted: attempt > 0,
                    });
                }
                Ok(Err(_)) => last = SendError::Closed { peer: host.to_owned() },
                Err(_) => last = SendError::TimedOut { peer: host.to_owned() },
            }
            tracing::debug!(peer = host, command = command.name(), error = %last, "no answer; retrying once on another connection");
        }
        self.metrics.server_unanswered.fetch_add(1, Ordering::Relaxed);
        Err(last)
    }
}
