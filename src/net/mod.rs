//! Sockets and tasks: the only module that owns I/O, timers and spawned tasks.
//!
//! Owns: the TCP listener, one task per connection (read → frame → peer → application →
//! batched write), connection and in-flight limits, transport-level duplicate replay and
//! graceful shutdown. Everything it calls below (`peer`, `diameter`) is sans-IO.

pub mod charging;
pub mod client;
mod connection;
pub mod echo;
mod server;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::diameter::{ApplicationId, MessageRef};

pub use server::{Server, ServerHandle, ServerLimits, Shared};

/// An application (credit control, a test responder) behind the peer layer.
///
/// `handle` runs inline on the connection task, so it must not block: it either writes the
/// answer into `out` at once, or keeps `reply` and sends the answer later (for example once a
/// journal record is durable). Answers may then leave out of order; peers match them by
/// Hop-by-Hop id (RFC 6733 §3).
pub trait Application: Send + Sync + 'static {
    fn id(&self) -> ApplicationId;
    fn handle(&self, req: &Request<'_>, out: &mut bytes::BytesMut, reply: Reply) -> Handled;

    /// Whether this request starts new work (a new session, a one-shot event) rather than
    /// continuing work the server has already accepted. Under load new work is shed first
    /// (3004), so sessions in progress can still report usage and end.
    fn is_new_work(&self, _msg: &MessageRef<'_>) -> bool {
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
    /// The answer was written into `out`.
    Answered,
    /// The application kept the `Reply` and will send the answer through it.
    Deferred,
}

/// Sends a deferred answer back to the connection that received the request.
#[derive(Debug)]
pub struct Reply {
    tx: mpsc::UnboundedSender<DeferredAnswer>,
    /// Origin-Host and End-to-End id of the request, for the duplicate cache.
    key: Option<(std::sync::Arc<str>, u32)>,
}

#[derive(Debug)]
struct DeferredAnswer {
    key: Option<(std::sync::Arc<str>, u32)>,
    answer: Bytes,
}

impl Reply {
    /// Sends the encoded answer. If the connection has gone, the answer is dropped: the peer
    /// will retransmit on another connection and the duplicate caches answer it.
    pub fn send(self, answer: Bytes) {
        let _ = self.tx.send(DeferredAnswer { key: self.key, answer });
    }
}
