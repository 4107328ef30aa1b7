//! One connection's task: read, frame, run the peer state machine and the application, and
//! write every answer produced by one read in a single write call.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::metrics::Class;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::outgoing::{Outgoing, Pending};
use super::{DeferredAnswer, DurableWake, Handled, Reply, Request, Shared};
use crate::diameter::answer::error_answer;
use crate::diameter::codes::{AvpCode, ResultCode};
use crate::diameter::{frame_within, FrameError, MessageRef};
use crate::limits::{
    BEHIND_SHED_NEW_WORK_MS, BEHIND_SHED_UPDATES_MS, HEADER_SIZE_BYTES, READ_CHUNK_BYTES, WRITE_TIMEOUT_MS,
};
use crate::peer::{Action, Peer};

/// Generic over the byte stream: `TcpStream` for plain TCP, `TlsStream<TcpStream>` for TLS.
/// Each is monomorphised, so the plain path reads and writes the socket directly, as before.
pub(super) struct Connection<S> {
    stream: S,
    addr: SocketAddr,
    shared: Arc<Shared>,
    peer: Peer,
    /// `Shared::peer_version` when `peer`'s config was taken; checked once per read.
    peer_version: u64,
    rbuf: BytesMut,
    wbuf: BytesMut,
    in_flight: usize,
    tx: mpsc::UnboundedSender<DeferredAnswer>,
    rx: mpsc::UnboundedReceiver<DeferredAnswer>,
    /// Answers written but waiting for their journal records (`Handled::AfterDurable`), in the
    /// order they were written, which is the order of their sequence numbers.
    held: BytesMut,
    held_marks: VecDeque<Held>,
    wake: Arc<DurableWake>,
    /// Since when every read has filled the read buffer (the socket never drained), if it has.
    behind_since_ms: Option<u64>,
    /// What the queue delay sheds for the messages of the current read.
    shedding: Shedding,
    /// The peer's Origin-Host once its CER passed: shared by the duplicate-cache keys of its
    /// requests, and the name it is counted and registered under (metrics, `Shared::outgoing`).
    peer_host: Option<Arc<str>>,
    /// When the current read arrived: the start of its requests' latency.
    read_at: std::time::Instant,
    /// This connection's number in the registry of open peers (`Shared::outgoing`).
    id: u64,
    /// Requests the server sends on this link (RAR, ASR): the sender is registered under the
    /// peer's Origin-Host once its CER passed; one is kept here so the queue never closes.
    out_tx: mpsc::Sender<Outgoing>,
    out_rx: mpsc::Receiver<Outgoing>,
    /// Hop-by-Hop ids of those requests → their waiters.
    pending: Pending,
}

/// Queue-delay overload control. The in-flight limits see only requests the server has read;
/// when the server is short of CPU, requests queue in the socket instead, unseen, and their
/// latency grows without bound while the in-flight count stays low. A read that fills the whole
/// buffer means more is waiting; reads that do so without a break for a while mean requests
/// wait that long before they are even read (CoDel's signal: the queue did not empty within an
/// interval). Then new work, and later updates, are answered 3004 at once: a refusal costs a
/// fraction of the work, so the backlog drains and every request gets an answer in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Shedding {
    Nothing,
    NewWork,
    AllButEnding,
}

/// One answer in `held`: its length and what it waits for.
struct Held {
    seq: u64,
    len: usize,
    key: Option<(Arc<str>, u32)>,
    /// For metrics, counted when the answer is released.
    class: Class,
    received: std::time::Instant,
}

impl<S> Drop for Connection<S> {
    /// Requests still in flight when the connection goes will never be answered on it (their
    /// answers are dropped); they no longer count against the server-wide limit.
    fn drop(&mut self) {
        self.shared.in_flight_total.fetch_sub(self.in_flight, Ordering::Relaxed);
        if let Some(host) = &self.peer_host {
            self.shared.metrics.peer_closed(host);
            // Waiters of requests in flight here see their channel close and retry elsewhere.
            self.shared.outgoing.deregister(host, self.id);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub(super) fn new(stream: S, addr: SocketAddr, shared: Arc<Shared>) -> Self {
        let now = shared.now_ms();
        // The version first: a reload between the two loads is seen again at the first read.
        let peer_version = shared.peer_version();
        let peer = Peer::new(shared.peer_config(), now, shared.next_seed());
        let (tx, rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = super::outgoing::queue();
        let id = shared.connection_ids.fetch_add(1, Ordering::Relaxed);
        Self {
            stream,
            addr,
            shared,
            peer,
            peer_version,
            rbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            wbuf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            in_flight: 0,
            tx,
            rx,
            held: BytesMut::new(),
            held_marks: VecDeque::new(),
            wake: Arc::new(DurableWake::default()),
            behind_since_ms: None,
            shedding: Shedding::Nothing,
            peer_host: None,
            read_at: std::time::Instant::now(),
            id,
            out_tx,
            out_rx,
            pending: Pending::default(),
        }
    }

    /// TLS with the identity check on: the client certificate's DNS names, which the peer layer
    /// compares with the Origin-Host of the CER.
    pub(super) fn bind_peer_identity(&mut self, names: Vec<String>) {
        self.peer.bind_certificate(names);
    }

    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        tracing::debug!(addr = %self.addr, "connection accepted");
        let mut disconnecting = false;
        loop {
            let deadline = self.deadline();
            self.rbuf.reserve(READ_CHUNK_BYTES);
            let room = self.rbuf.capacity() - self.rbuf.len();
            let action = tokio::select! {
                r = self.stream.read_buf(&mut self.rbuf) => match r {
                    Ok(0) => Action::Close,
                    Ok(n) => {
                        self.read_at = std::time::Instant::now();
                        self.queue_delay(n == room);
                        self.refresh_peer_config();
                        self.on_read()
                    }
                    Err(error) => {
                        tracing::debug!(addr = %self.addr, %error, "read failed");
                        Action::Close
                    }
                },
                () = self.wake.notify.notified(), if !self.held_marks.is_empty() => {
                    self.on_durable();
                    Action::Continue
                }
                Some(d) = self.rx.recv() => {
                    self.on_deferred(d);
                    while let Ok(d) = self.rx.try_recv() {
                        self.on_deferred(d);
                    }
                    Action::Continue
                }
                Some(o) = self.out_rx.recv(), if !disconnecting => {
                    self.on_outgoing(o);
                    while let Ok(o) = self.out_rx.try_recv() {
                        self.on_outgoing(o);
                    }
                    Action::Continue
                }
                () = tokio::time::sleep_until(deadline) => {
                    let now = self.shared.now_ms();
                    self.peer.poll(now, &mut self.wbuf)
                }
                () = shutdown.cancelled(), if !disconnecting => {
                    disconnecting = true;
                    let now = self.shared.now_ms();
                    self.peer.disconnect(now, &mut self.wbuf)
                }
            };
            if !self.flush().await || action == Action::Close {
                break;
            }
        }
        let _ = self.stream.shutdown().await;
        tracing::debug!(addr = %self.addr, peer = self.peer.remote().map(|r| r.origin_host.as_str()), "connection closed");
    }

    /// Takes the server's current peer settings if they were replaced (`Shared::set_peer_config`)
    /// since this connection took its own: one atomic load per read, no lock on the hot path.
    fn refresh_peer_config(&mut self) {
        let version = self.shared.peer_version();
        if version != self.peer_version {
            self.peer_version = version;
            self.peer.set_config(self.shared.peer_config());
            tracing::debug!(addr = %self.addr, version, "peer settings reloaded on an open connection");
        }
    }

    /// Tracks how long the socket has been backed up and what to shed for it.
    fn queue_delay(&mut self, filled: bool) {
        if !filled {
            self.behind_since_ms = None;
            self.shedding = Shedding::Nothing;
            return;
        }
        let now = self.shared.now_ms();
        let behind = now - *self.behind_since_ms.get_or_insert(now);
        let shedding = if behind >= BEHIND_SHED_UPDATES_MS {
            Shedding::AllButEnding
        } else if behind >= BEHIND_SHED_NEW_WORK_MS {
            Shedding::NewWork
        } else {
            Shedding::Nothing
        };
        if shedding > self.shedding {
            tracing::warn!(addr = %self.addr, behind_ms = behind, shedding = ?shedding, "requests queue unread; shedding load with 3004");
        }
        self.shedding = shedding;
    }

    fn deadline(&self) -> tokio::time::Instant {
        let ms = self.peer.next_deadline_ms().min(self.shared.now_ms() + 86_400_000);
        self.shared.epoch + Duration::from_millis(ms)
    }

    /// Writes everything buffered in one call. Returns false if the connection is dead.
    async fn flush(&mut self) -> bool {
        if self.wbuf.is_empty() {
            return true;
        }
        // A TLS stream may keep records in its buffer after write_all when the socket is full;
        // flush sends them (for a TcpStream it does nothing).
        let stream = &mut self.stream;
        let wbuf = &self.wbuf;
        let write = async move {
            stream.write_all(wbuf).await?;
            stream.flush().await
        };
        let ok = match tokio::time::timeout(Duration::from_millis(WRITE_TIMEOUT_MS), write).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                tracing::debug!(addr = %self.addr, %error, "write failed");
                false
            }
            Err(_) => {
                tracing::warn!(addr = %self.addr, "peer does not read its answers; closing");
                false
            }
        };
        self.wbuf.clear();
        ok
    }

    /// Frames and handles every whole message in the read buffer.
    fn on_read(&mut self) -> Action {
        loop {
            match frame_within(&self.rbuf, self.shared.message_size_max) {
                Ok(None) => return Action::Continue,
                Ok(Some(len)) => {
                    let f = self.rbuf.split_to(len).freeze();
                    if self.on_frame(&f) == Action::Close {
                        return Action::Close;
                    }
                }
                Err(e) => {
                    self.on_corrupt(e);
                    return Action::Close;
                }
            }
        }
    }

    /// The stream cannot be framed any more: answer if the header allows it, then close
    /// (RFC 6733 §7.1.5: 5011 for an unsupported version, 5015 for a bad message length).
    fn on_corrupt(&mut self, e: FrameError) {
        tracing::warn!(addr = %self.addr, error = %e, "corrupt stream; closing connection");
        if self.rbuf.len() < HEADER_SIZE_BYTES || self.rbuf[4] & 0x80 == 0 {
            return;
        }
        let mut header = [0u8; HEADER_SIZE_BYTES];
        header.copy_from_slice(&self.rbuf[..HEADER_SIZE_BYTES]);
        header[0] = 1;
        header[1..4].copy_from_slice(&[0, 0, HEADER_SIZE_BYTES as u8]);
        let Some(msg) = MessageRef::parse(&header) else { return };
        let text = e.to_string();
        error_answer(&mut self.wbuf, &self.peer.config().local, &msg, e.result_code(), Some(&text), None);
    }

    fn on_frame(&mut self, f: &Bytes) -> Action {
        let Some(msg) = MessageRef::parse(f) else {
            // `frame` guarantees the slice is exactly one message.
            debug_assert!(false, "framed message did not parse");
            return Action::Close;
        };
        let now = self.shared.now_ms();
        if self.pending.resolve(&msg, f) {
            // The answer to a RAR or ASR we sent: its waiter has it.
            self.peer.note_traffic(now);
            return Action::Continue;
        }
        let start = self.wbuf.len();
        // RFC 6733 §5.3: the peer layer decides the CER; the count of open connections per
        // Origin-Host is the registry's (`diameter.connections_per_peer_max`). Admitted = opened
        // and registered in one step under the registry's lock, so two CERs racing on two
        // connections cannot both take the last slot; `Drop` deregisters exactly once.
        let (shared, id, out_tx) = (&self.shared, self.id, &self.out_tx);
        let mut admit = |host: &str| {
            let admitted =
                shared.outgoing.try_register(host, id, out_tx.clone(), shared.connections_per_peer_max);
            if !admitted {
                shared.metrics.peer_refused.fetch_add(1, Ordering::Relaxed);
            }
            admitted
        };
        let action = match self.peer.handle_admitting(now, &msg, &mut self.wbuf, &mut admit) {
            Action::Dispatch => {
                self.dispatch(now, &msg, f);
                Action::Continue
            }
            other => other,
        };
        // Answers written now (the peer layer's, refusals, replays, answers from memory); held
        // ones are counted when released.
        if msg.header.flags.is_request() && self.wbuf.len() > start {
            self.shared.metrics.answered(Class::of(&msg), &self.wbuf[start..], self.read_at);
        }
        if self.peer_host.is_none() {
            if let Some(remote) = self.peer.remote() {
                let host: Arc<str> = Arc::from(remote.origin_host.as_str());
                self.shared.metrics.peer_opened(&host);
                // Registered for outgoing requests (and counted against the per-peer limit)
                // when it was admitted, above.
                self.peer_host = Some(host);
            }
        }
        action
    }

    fn dispatch(&mut self, now: u64, msg: &MessageRef<'_>, f: &Bytes) {
        let h = msg.header;
        let local = &self.peer.config().local;
        let Some(app) = self.shared.application(h.application).cloned() else {
            let text = format!("application {} is not served by this node", h.application.0);
            error_answer(&mut self.wbuf, local, msg, ResultCode::APPLICATION_UNSUPPORTED, Some(&text), None);
            return;
        };
        // RFC 6733 §5.5.4: a request with an Origin-Host and End-to-End id we answered within
        // the window is a duplicate; replay the answer and do not process it again. An
        // application that remembers its own answers (credit control, by Session-Id and
        // CC-Request-Number, which also catches a retransmission with a fresh End-to-End id)
        // does this itself; remembering each answer twice would cost a copy per request.
        let origin_host = if app.remembers_answers() { None } else { msg.str(AvpCode::ORIGIN_HOST) };
        if let Some(host) = origin_host {
            if let Some(answer) = self.shared.dedupe.lookup(now, host, h.end_to_end) {
                tracing::debug!(
                    peer = host,
                    e2e = h.end_to_end,
                    t_flag = h.flags.is_retransmit(),
                    "duplicate request; answer replayed"
                );
                crate::replay::answer_again(&answer, &h, &mut self.wbuf);
                self.shared.metrics.replayed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if self.in_flight >= self.shared.in_flight_max {
            // Never drop silently: the client learns at once and may try another server.
            error_answer(
                &mut self.wbuf,
                local,
                msg,
                ResultCode::TOO_BUSY,
                Some("too many requests in flight on this connection"),
                None,
            );
            return;
        }
        // Overload control, server-wide (RFC 6733 §7.1.3 DIAMETER_TOO_BUSY: the client may try
        // another server): above the shedding mark new work is refused, above the limit
        // everything is. Work already accepted (CCR-U/T of open sessions) is shed last, because
        // refusing it strands usage that already happened.
        let total = self.shared.in_flight_total.load(Ordering::Relaxed);
        let overloaded = total >= self.shared.in_flight_total_max
            || (total >= self.shared.shed_new_work_at && app.is_new_work(msg))
            || match self.shedding {
                Shedding::Nothing => false,
                Shedding::NewWork => app.is_new_work(msg),
                Shedding::AllButEnding => !app.is_ending(msg),
            };
        if overloaded {
            self.shared.shed.fetch_add(1, Ordering::Relaxed);
            error_answer(
                &mut self.wbuf,
                local,
                msg,
                ResultCode::TOO_BUSY,
                Some("server busy: new sessions are refused first"),
                None,
            );
            return;
        }
        let key = origin_host.map(|host| (self.host_key(host), h.end_to_end));
        let reply = Reply { tx: &self.tx, wake: &self.wake, key: key.as_ref() };
        let peer = self.peer.remote().map_or("", |r| r.origin_host.as_str());
        let req = Request { msg: *msg, frame: f, peer };
        let start = self.wbuf.len();
        self.in_flight += 1;
        self.shared.in_flight_total.fetch_add(1, Ordering::Relaxed);
        // A bug in an application must cost one answer, not the connection (and with it every
        // other request in flight on it): RFC 6733 §7.1.5 5012 is the answer for internal
        // failures. The closure only borrows the write buffer, which is cut back on failure.
        let wbuf = &mut self.wbuf;
        let handled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| app.handle(&req, wbuf, &reply)));
        let handled = handled.unwrap_or_else(|_| {
            tracing::error!(
                command = h.command.0,
                application = h.application.0,
                "application panicked; answered 5012"
            );
            self.wbuf.truncate(start);
            error_answer(
                &mut self.wbuf,
                &self.peer.config().local,
                msg,
                ResultCode::UNABLE_TO_COMPLY,
                Some("internal error"),
                None,
            );
            Handled::Answered
        });
        match handled {
            Handled::Answered => {
                self.in_flight -= 1;
                self.shared.in_flight_total.fetch_sub(1, Ordering::Relaxed);
                if let Some((host, e2e)) = key {
                    let answer = Bytes::copy_from_slice(&self.wbuf[start..]);
                    self.shared.dedupe.insert(now, &host, e2e, answer);
                }
            }
            Handled::AfterDurable(seq) => {
                // Kept aside, not in the write buffer: it leaves when its record is durable
                // (ARCHITECTURE.md, invariant 1), in one write with the others released then.
                self.held.extend_from_slice(&self.wbuf[start..]);
                let (class, received) = (Class::of(msg), self.read_at);
                self.held_marks.push_back(Held { seq, len: self.wbuf.len() - start, key, class, received });
                self.wbuf.truncate(start);
            }
            Handled::Deferred => {}
        }
    }

    /// Moves the held answers whose records are durable to the write buffer; drops them all
    /// if the journal failed (they will never be durable: the peer times out and fails over,
    /// and they stop counting against the in-flight limits).
    fn on_durable(&mut self) {
        let (durable, failed) = self.wake.take();
        let now = self.shared.now_ms();
        let mut bytes = 0;
        let mut released = 0;
        while let Some(h) = self.held_marks.front() {
            if h.seq > durable {
                break;
            }
            let h = self.held_marks.pop_front().expect("front exists");
            if let Some((host, e2e)) = &h.key {
                let answer = Bytes::copy_from_slice(&self.held[bytes..bytes + h.len]);
                self.shared.dedupe.insert(now, host, *e2e, answer);
            }
            self.shared.metrics.answered(h.class, &self.held[bytes..bytes + h.len], h.received);
            bytes += h.len;
            released += 1;
        }
        self.wbuf.extend_from_slice(&self.held[..bytes]);
        self.held.advance(bytes);
        if failed && !self.held_marks.is_empty() {
            tracing::error!(
                addr = %self.addr,
                answers = self.held_marks.len(),
                "journal failed: answers whose records are not durable are withheld"
            );
            released += self.held_marks.len();
            self.held_marks.clear();
            self.held.clear();
        }
        debug_assert!(self.in_flight >= released);
        self.in_flight = self.in_flight.saturating_sub(released);
        self.shared.in_flight_total.fetch_sub(released, Ordering::Relaxed);
    }

    fn on_deferred(&mut self, d: DeferredAnswer) {
        debug_assert!(self.in_flight > 0);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.shared.in_flight_total.fetch_sub(1, Ordering::Relaxed);
        if let Some((host, e2e)) = &d.key {
            self.shared.dedupe.insert(self.shared.now_ms(), host, *e2e, d.answer.clone());
        }
        self.wbuf.extend_from_slice(&d.answer);
    }

    /// Writes a request the server sends (RAR, ASR) and remembers its waiter by Hop-by-Hop id.
    /// Only registered (open) connections receive any, so the peer is known.
    fn on_outgoing(&mut self, o: Outgoing) {
        let Some(remote) = self.peer.remote() else { return };
        let (host, realm) = (remote.origin_host.clone(), remote.origin_realm.clone());
        let hop_by_hop = self.peer.next_hop_by_hop();
        super::outgoing::encode(&mut self.wbuf, &o, &self.peer.config().local, &host, &realm, hop_by_hop);
        tracing::debug!(peer = %host, command = o.command.name(), session_id = %o.session_id, hop_by_hop, t_flag = o.retransmit, "request sent");
        self.pending.insert(hop_by_hop, o.reply);
    }

    /// The duplicate-cache key for a request's Origin-Host: the peer's own host is shared, a
    /// relayed request's host is copied. (Requests are dispatched only once the peer is open,
    /// and `peer_host` is set in the frame that opened it.)
    fn host_key(&self, host: &str) -> Arc<str> {
        match &self.peer_host {
            Some(h) if h.eq_ignore_ascii_case(host) => Arc::clone(h),
            _ => Arc::from(host),
        }
    }
}
