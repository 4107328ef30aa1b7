//! Sockets and tasks: the only module that owns I/O, timers and spawned tasks.
//!
//! Owns: the TCP and TLS listeners (`tls`), one task per connection (read → frame → peer → application →
//! batched write), connection and in-flight limits, transport-level duplicate replay and
//! graceful shutdown. Everything it calls below (`peer`, `diameter`) is sans-IO.

pub mod charging;
pub mod client;
mod connection;
pub mod echo;
pub mod metrics;
pub mod outgoing;
mod server;
pub mod tls;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::diameter::{ApplicationId, MessageRef};

pub use outgoing::{SendError, ServerAnswer, ServerCommand};
pub use server::{Server, ServerHandle, ServerLimits, Shared};

/// An application (credit control, a test responder) behind the peer layer.
///
/// `handle` runs inline on the connection task, so it must not block: it either writes the
/// answer into `out` at once, or keeps `reply` and sends the answer later (for example once a
/// journal record is durable). Answers may then leave out of order; peers match them by
/// Hop-by-Hop id (RFC 6733 §3).
pub trait Application: Send + Sync + 'static {
    fn id(&self) -> ApplicationId;
    fn handle(&self, req: &Request<'_>, out: &mut bytes::BytesMut, reply: &Reply<'_>) -> Handled;

    /// Whether this request starts new work (a new session, a one-shot event) rather than
    /// continuing work the server has already accepted. Under load new work is shed first
    /// (3004), so sessions in progress can still report usage and end.
    fn is_new_work(&self, _msg: &MessageRef<'_>) -> bool {
        false
    }

    /// Whether this request ends work (a session's last request): under overload it is shed
    /// last, because it frees what the session holds.
    fn is_ending(&self, _msg: &MessageRef<'_>) -> bool {
        false
    }

    /// Whether the application detects duplicate requests and replays its answers itself
    /// (RFC 6733 §5.5.4). If not, the connection layer does it by Origin-Host and End-to-End id.
    fn remembers_answers(&self) -> bool {
        false
    }
}

/// A validated request from an open peer.
pub struct Request<'a> {
    pub msg: MessageRef<'a>,
    /// The whole frame, for applications that keep it (e.g. in a journal record).
    pub frame: &'a Bytes,
    /// Origin-Host of the peer connection (from its CER).
    pub peer: &'a str,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Handled {
    /// The answer was written into `out` and may leave at once.
    Answered,
    /// The answer was written into `out`, and must not leave before `DurableWake::durable`
    /// has been told this sequence number (a journal LSN): the connection holds it until then.
    AfterDurable(u64),
    /// The application kept a [`LateReply`] and will send the answer through it.
    Deferred,
}

/// How an application answers a request other than at once.
pub struct Reply<'a> {
    tx: &'a mpsc::UnboundedSender<DeferredAnswer>,
    wake: &'a Arc<DurableWake>,
    key: Option<&'a (Arc<str>, u32)>,
}

impl Reply<'_> {
    /// A handle to send the answer later from anywhere (for `Handled::Deferred`).
    pub fn later(&self) -> LateReply {
        LateReply { tx: self.tx.clone(), key: self.key.cloned() }
    }

    /// The connection's durability waker: whoever makes the records durable that an answer
    /// returned as `Handled::AfterDurable` waits for tells it here.
    pub fn durable_waker(&self) -> &Arc<DurableWake> {
        self.wake
    }
}

/// Sends a deferred answer back to the connection that received the request.
#[derive(Debug)]
pub struct LateReply {
    tx: mpsc::UnboundedSender<DeferredAnswer>,
    /// Origin-Host and End-to-End id of the request, for the duplicate cache.
    key: Option<(Arc<str>, u32)>,
}

#[derive(Debug)]
struct DeferredAnswer {
    key: Option<(Arc<str>, u32)>,
    answer: Bytes,
}

impl LateReply {
    /// Sends the encoded answer. If the connection has gone, the answer is dropped: the peer
    /// will retransmit on another connection and the duplicate caches answer it.
    pub fn send(self, answer: Bytes) {
        let _ = self.tx.send(DeferredAnswer { key: self.key, answer });
    }
}

/// One per connection: tells the connection task how far the records its held answers wait
/// for are durable. The journal's writer thread calls it once per record; the connection is
/// woken at most once per batch however many of its answers the batch releases, and then
/// writes all of them in one write call — instead of one channel message, one wake-up and one
/// copy per answer.
#[derive(Debug, Default)]
pub struct DurableWake {
    /// The highest sequence number known durable.
    durable: AtomicU64,
    /// Set when the records can never become durable (the journal failed).
    failed: AtomicBool,
    /// Whether a wake-up is pending: the writer notifies only on the false → true edge.
    scheduled: AtomicBool,
    notify: Notify,
}

impl DurableWake {
    /// Everything up to `seq` is durable.
    pub fn durable(&self, seq: u64) {
        // SeqCst: the connection clears `scheduled` before it reads `durable`, and we raise
        // `durable` before we test `scheduled`, so either it sees the new value or it is woken.
        self.durable.fetch_max(seq, Ordering::SeqCst);
        self.schedule();
    }

    /// The records waited for will never be durable: held answers are dropped, unsent.
    pub fn failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
        self.schedule();
    }

    fn schedule(&self) {
        if !self.scheduled.swap(true, Ordering::SeqCst) {
            self.notify.notify_one();
        }
    }

    /// For the connection, once woken: (durable sequence number, whether the journal failed).
    fn take(&self) -> (u64, bool) {
        self.scheduled.store(false, Ordering::SeqCst);
        (self.durable.load(Ordering::SeqCst), self.failed.load(Ordering::SeqCst))
    }
}
